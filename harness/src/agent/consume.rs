//! `meshprobe consume --json` against the cluster's broker.

use super::*;

/// Runs `BIN consume --kafka-bootstrap-servers BOOTSTRAP --kafka-topic TOPIC --json ARGS` in
/// `ns` to completion (at most 120 s) and returns its JSON lines. Fails unless it exits 0.
pub fn consume(
    bin: &Path,
    ns: &Netns,
    bootstrap: &str,
    topic: &str,
    args: &[&str],
) -> Result<Vec<Value>> {
    let mut argv: Vec<&str> = vec![
        bin.to_str().expect("utf-8 binary path"),
        "consume",
        "--kafka-bootstrap-servers",
        bootstrap,
        "--kafka-topic",
        topic,
        "--json",
    ];
    argv.extend_from_slice(args);
    let mut cmd = ns.command(&argv);
    remove_agent_env(&mut cmd);
    let out = run_with_timeout(cmd, Duration::from_secs(120))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "meshprobe consume {bootstrap} {topic} {args:?} exited {}; stderr:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(stdout.lines().filter_map(parse_json_line).collect())
}
