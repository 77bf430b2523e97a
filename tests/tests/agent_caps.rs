//! The Helm chart's capability set (charts/meshprobe/values.yaml,
//! `securityContext.capabilities.add`) is exactly what `meshprobe agent` needs for kernel
//! timestamps: with those capabilities alone (`setpriv`: bounding set, inheritable and ambient
//! sets, everything else dropped) it stamps in the kernel and measures a peer, as uid 0 and as
//! a non-root uid; without any one of them it breaks (falls back to socket timestamps, or
//! cannot listen on its port). And how a non-root container gets them: a non-root process
//! without ambient capabilities (what Kubernetes runs) has none after exec, unless the binary
//! carries file capabilities, which no_new_privs (allowPrivilegeEscalation: false) blocks.
//!
//! Topology: TwoHosts; a kernel-stamping reflector (root) in B, the agent under test in A with
//! B as its static peer.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use meshprobe_harness::agent::{Agent, AgentConfig, num};
use meshprobe_harness::services::TempDir;
use meshprobe_harness::{Family, TestEnv, TwoHosts};

/// The chart's values, whose capability list this test proves.
const VALUES_YAML: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../charts/meshprobe/values.yaml"
);

/// The unprivileged uid the non-root runs use (nobody).
const NOBODY: u32 = 65534;

/// `securityContext.capabilities.add` of values.yaml: the flow list on the first `add:` line
/// after `capabilities:`.
fn chart_caps() -> Result<Vec<String>> {
    let text = std::fs::read_to_string(VALUES_YAML).with_context(|| VALUES_YAML.to_string())?;
    let mut in_caps = false;
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with('#') {
            continue;
        }
        if t == "capabilities:" {
            in_caps = true;
        } else if in_caps && let Some(list) = t.strip_prefix("add:") {
            let list = list.trim();
            let inner = list
                .strip_prefix('[')
                .and_then(|l| l.strip_suffix(']'))
                .with_context(|| format!("{VALUES_YAML}: `add:` is not a [flow, list]: {t}"))?;
            let caps: Vec<String> = inner
                .split(',')
                .map(|c| c.trim().trim_matches('"').to_string())
                .filter(|c| !c.is_empty())
                .collect();
            ensure!(!caps.is_empty(), "{VALUES_YAML}: empty capability list");
            return Ok(caps);
        }
    }
    bail!("{VALUES_YAML}: no securityContext.capabilities.add")
}

/// `+bpf,+net_admin` for setpriv, after `-all`.
fn setpriv_caps(caps: &[String]) -> String {
    let mut s = String::from("-all");
    for c in caps {
        s.push_str(",+");
        s.push_str(&c.to_ascii_lowercase());
    }
    s
}

/// How the agent is started.
struct Creds<'a> {
    uid: u32,
    /// Bounding set (what a container may ever have).
    bounding: &'a [String],
    /// Inheritable + ambient: what survives exec for a non-root uid without file capabilities.
    ambient: &'a [String],
    /// Exec the binary from a second, capability-less process, optionally with no_new_privs:
    /// what a container runtime does for a non-root user.
    second_stage: Option<bool>,
}

/// Writes an executable wrapper that runs `bin` under `creds`; [`Agent::spawn`] runs it in
/// place of the binary (`wrapper agent --output json ...`).
fn wrapper(dir: &Path, name: &str, bin: &Path, creds: &Creds) -> Result<PathBuf> {
    let mut cmd = format!(
        "exec setpriv --reuid={uid} --regid={uid} --clear-groups --bounding-set={b} \
         --inh-caps={a} --ambient-caps={a} --",
        uid = creds.uid,
        b = setpriv_caps(creds.bounding),
        a = setpriv_caps(creds.ambient),
    );
    match creds.second_stage {
        None => {}
        Some(false) => cmd.push_str(" setpriv --"),
        Some(true) => cmd.push_str(" setpriv --no-new-privs --"),
    }
    let path = dir.join(name);
    std::fs::write(
        &path,
        format!("#!/bin/sh\n{cmd} '{}' \"$@\"\n", bin.display()),
    )?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
    Ok(path)
}

/// What a run came to.
#[derive(Debug, PartialEq)]
enum Outcome {
    /// Kernel timestamps, and a summary of the peer with replies stamped in the kernel;
    /// `handoff`: the ready line says the driver hand-off program is on.
    Kernel { handoff: bool },
    /// Running and measuring, on socket timestamps (the reason is in its log).
    Socket(String),
    /// Exited before its ready line.
    Refused(String),
}

fn run_agent(
    t: &TwoHosts,
    wrapper: &Path,
    label: &str,
    port: u16,
    admin_port: u16,
) -> Result<Outcome> {
    let peer = format!("b={}", t.b_addr(Family::V4));
    let cfg = AgentConfig::new()
        .env("MESHPROBE_PEERS", &peer)
        .env("MESHPROBE_INTERVAL", "100ms")
        .env("MESHPROBE_WINDOW", "1s")
        .env("MESHPROBE_SHUTDOWN_GRACE", "1s")
        .env("REGISTER_LISTENER_PORT", port)
        .env("MESHPROBE_ADMIN_LISTEN", format!("[::]:{admin_port}"));
    let mut a = Agent::spawn(wrapper, &t.a, label, &cfg)?;
    let ready = match a.wait_ready(Duration::from_secs(20)) {
        Ok(r) => r,
        Err(e) => {
            if a.is_running() {
                return Err(e);
            }
            let why = a
                .stderr_text()
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or_default()
                .to_string();
            return Ok(Outcome::Refused(why));
        }
    };
    // Measures the peer either way: a summary with replies.
    let sum = a
        .wait_for(Duration::from_secs(15), |e| {
            e.kind() == "summary" && e.v["dst"] == "b" && num(&e.v, "received") > 0
        })
        .with_context(|| format!("{label}: no summary of peer b with replies"))?;
    let mode = ready["timestamping"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let outcome = match mode.as_str() {
        "kernel" => {
            ensure!(
                sum.v["timestamping"] == "TIMESTAMPING_KERNEL",
                "{label}: ready says kernel, the summary {}",
                sum.v
            );
            ensure!(
                a.metric_value("meshprobe_kernel_timestamps")? == 1.0,
                "{label}: /metrics disagrees"
            );
            let handoff = ready["handoff"] == "on";
            let state = if handoff { "on" } else { "off" };
            let metrics = a.metrics()?;
            ensure!(
                metrics.lines().any(|l| l.starts_with("meshprobe_handoff{")
                    && l.contains(&format!("state=\"{state}\""))
                    && l.ends_with(" 1")),
                "{label}: /metrics disagrees with the ready line on the hand-off ({state}): {}",
                metrics
                    .lines()
                    .filter(|l| l.starts_with("meshprobe_handoff"))
                    .collect::<Vec<_>>()
                    .join(" | ")
            );
            Outcome::Kernel { handoff }
        }
        "socket" => {
            let why = a
                .stderr_text()
                .lines()
                .find(|l| l.contains("kernel timestamps unavailable"))
                .unwrap_or_default()
                .to_string();
            Outcome::Socket(why)
        }
        other => bail!("{label}: ready line says timestamping {other:?}"),
    };
    a.sigterm()?;
    let st = a.wait_exit(Duration::from_secs(10))?;
    ensure!(st.success(), "{label}: exit {st}");
    Ok(outcome)
}

/// The test environment, the topology, a directory uid 65534 can read, the chart's set.
type Setup = (TestEnv, TwoHosts, TempDir, Vec<String>);

fn setup(test: &str) -> Result<Option<Setup>> {
    let Some(env) = TestEnv::acquire(test, &["setpriv", "setcap", "ping"])? else {
        return Ok(None);
    };
    let caps = chart_caps()?;
    eprintln!("chart capabilities ({VALUES_YAML}): {caps:?}");
    let t = TwoHosts::new()?;
    let dir = TempDir::new("caps")?;
    // uid 65534 runs wrappers and binaries from here.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
    Ok(Some((env, t, dir, caps)))
}

#[test]
fn chart_capabilities_suffice_as_root_and_as_non_root() -> Result<()> {
    let Some((env, t, dir, caps)) = setup("chart_capabilities_suffice_as_root_and_as_non_root")?
    else {
        return Ok(());
    };
    let _refl = env.mp.reflect(&t.b, &[])?;
    for uid in [0, NOBODY] {
        let creds = Creds {
            uid,
            bounding: &caps,
            ambient: &caps,
            second_stage: None,
        };
        let w = wrapper(dir.path(), &format!("uid{uid}"), &env.mp.bin, &creds)?;
        let got = run_agent(&t, &w, &format!("uid-{uid}"), 862, 9862)?;
        eprintln!("uid {uid}, capabilities {caps:?} (ambient): {got:?}");
        // The chart's set covers the hand-off program too (tracing: CAP_BPF + CAP_PERFMON).
        ensure!(
            got == Outcome::Kernel { handoff: true },
            "uid {uid} with the chart's capabilities: {got:?}"
        );
    }
    Ok(())
}

#[test]
fn each_chart_capability_is_needed() -> Result<()> {
    let Some((env, t, dir, caps)) = setup("each_chart_capability_is_needed")? else {
        return Ok(());
    };
    let _refl = env.mp.reflect(&t.b, &[])?;
    for (i, dropped) in caps.iter().enumerate() {
        let rest: Vec<String> = caps.iter().filter(|c| *c != dropped).cloned().collect();
        let creds = Creds {
            uid: 0,
            bounding: &rest,
            ambient: &rest,
            second_stage: None,
        };
        let w = wrapper(dir.path(), &format!("without{i}"), &env.mp.bin, &creds)?;
        let got = run_agent(&t, &w, &format!("no-{dropped}"), 862, 9862)?;
        eprintln!("uid 0 without {dropped}: {got:?}");
        ensure!(
            !matches!(got, Outcome::Kernel { .. }),
            "the agent still stamps in the kernel without {dropped}: drop it from \
             securityContext.capabilities.add in {VALUES_YAML}"
        );
        if dropped == "NET_BIND_SERVICE" {
            // Only for the port below 1024: above it, the others are enough.
            ensure!(
                matches!(&got, Outcome::Refused(why) if why.contains("862")),
                "without NET_BIND_SERVICE: {got:?}"
            );
            let high = run_agent(&t, &w, "no-NET_BIND_SERVICE-port-8862", 8862, 9862)?;
            eprintln!("uid 0 without NET_BIND_SERVICE, REGISTER_LISTENER_PORT=8862: {high:?}");
            ensure!(
                matches!(high, Outcome::Kernel { .. }),
                "listener port 8862 without NET_BIND_SERVICE: {high:?}"
            );
        } else {
            ensure!(
                matches!(got, Outcome::Socket(_)),
                "without {dropped}: {got:?}"
            );
        }
    }
    Ok(())
}

/// What a non-root container gets: the capabilities in its bounding set only (Kubernetes sets
/// no ambient capabilities), exec'd from a process that holds none.
#[test]
fn non_root_without_ambient_capabilities_needs_file_capabilities() -> Result<()> {
    let Some((env, t, dir, caps)) =
        setup("non_root_without_ambient_capabilities_needs_file_capabilities")?
    else {
        return Ok(());
    };
    let _refl = env.mp.reflect(&t.b, &[])?;
    let none: Vec<String> = Vec::new();
    // The image's binary: file capabilities = the chart's set (charts/Dockerfile).
    let fcap = dir.path().join("meshprobe-fcaps");
    std::fs::copy(&env.mp.bin, &fcap)?;
    std::fs::set_permissions(&fcap, std::fs::Permissions::from_mode(0o755))?;
    let spec = format!(
        "{}+ep",
        caps.iter()
            .map(|c| format!("cap_{}", c.to_ascii_lowercase()))
            .collect::<Vec<_>>()
            .join(",")
    );
    let out = std::process::Command::new("setcap")
        .arg(&spec)
        .arg(&fcap)
        .output()?;
    ensure!(
        out.status.success(),
        "setcap {spec}: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let fewer = &caps[..caps.len() - 1];
    #[derive(PartialEq)]
    enum Want {
        Kernel,
        NoKernel,
        ExecRefused,
    }
    struct Case<'a> {
        label: &'a str,
        bin: &'a Path,
        bounding: &'a [String],
        no_new_privs: bool,
        port: u16,
        want: Want,
    }
    let cases = [
        // No file capabilities: nothing survives exec (port 8862: it could not bind 862).
        Case {
            label: "plain binary",
            bin: &env.mp.bin,
            bounding: &caps,
            no_new_privs: false,
            port: 8862,
            want: Want::NoKernel,
        },
        // File capabilities, exec allowed to gain them (allowPrivilegeEscalation: true).
        Case {
            label: "file capabilities",
            bin: &fcap,
            bounding: &caps,
            no_new_privs: false,
            port: 862,
            want: Want::Kernel,
        },
        // File capabilities under no_new_privs (allowPrivilegeEscalation: false).
        Case {
            label: "file capabilities + no_new_privs",
            bin: &fcap,
            bounding: &caps,
            no_new_privs: true,
            port: 862,
            want: Want::NoKernel,
        },
        // File capabilities beyond the bounding set: the kernel refuses the exec.
        Case {
            label: "file capabilities, one missing from the bounding set",
            bin: &fcap,
            bounding: fewer,
            no_new_privs: false,
            port: 862,
            want: Want::ExecRefused,
        },
    ];
    for (i, c) in cases.into_iter().enumerate() {
        let (label, bounding, port) = (c.label, c.bounding, c.port);
        let creds = Creds {
            uid: NOBODY,
            bounding,
            ambient: &none,
            second_stage: Some(c.no_new_privs),
        };
        let w = wrapper(dir.path(), &format!("pod{i}"), c.bin, &creds)?;
        let got = run_agent(&t, &w, &format!("nonroot-{i}"), port, 9862)?;
        eprintln!("uid {NOBODY}, bounding set {bounding:?}, {label}: {got:?}");
        let ok = match c.want {
            Want::Kernel => matches!(got, Outcome::Kernel { .. }),
            Want::NoKernel => !matches!(got, Outcome::Kernel { .. }),
            Want::ExecRefused => {
                matches!(&got, Outcome::Refused(why) if why.contains("Operation not permitted"))
            }
        };
        ensure!(ok, "{label}: {got:?}");
    }
    Ok(())
}
