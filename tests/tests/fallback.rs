//! Without the eBPF programs meshprobe still measures, with socket timestamps
//! (SO_TIMESTAMPING software), and says so on every summary — never silently.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use meshprobe_harness::child::{parse_json_line, run_with_timeout};
use meshprobe_harness::{Family, Netns, TestEnv, TwoHosts};
use serde_json::Value;

/// Runs `meshprobe ping --json ARGS` in `ns`, optionally as an unprivileged user, and returns
/// its JSON lines and stderr. Exit status must be 0.
fn ping(ns: &Netns, bin: &str, prefix: &[&str], args: &[&str]) -> Result<(Vec<Value>, String)> {
    let mut argv: Vec<&str> = prefix.to_vec();
    argv.extend([bin, "ping", "--json"]);
    argv.extend_from_slice(args);
    let out = run_with_timeout(ns.command(&argv), Duration::from_secs(30))?;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    ensure!(
        out.status.success(),
        "ping {argv:?} exited {}: {stderr}",
        out.status
    );
    let lines = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(parse_json_line)
        .collect();
    Ok((lines, stderr))
}

fn check_socket_run(label: &str, lines: &[Value], stderr: &str, count: u64) -> Result<()> {
    let ready = lines
        .iter()
        .find(|v| v["type"] == "ready")
        .context("no ready line")?;
    ensure!(ready["timestamping"] == "socket", "{label}: ready {ready}");
    let sum = lines
        .iter()
        .find(|v| v["type"] == "summary")
        .context("no summary")?;
    ensure!(sum["timestamping"] == "socket", "{label}: summary {sum}");
    let note = sum["note"].as_str().unwrap_or_default();
    ensure!(
        note.contains("SOCKET TIMESTAMPS") && note.contains("SO_TIMESTAMPING"),
        "{label}: the summary does not say it fell back: {note:?}"
    );
    ensure!(sum["received"] == count, "{label}: {sum}");
    ensure!(
        stderr.to_lowercase().contains("socket timestamps"),
        "{label}: no warning on stderr: {stderr}"
    );
    let probes: Vec<&Value> = lines.iter().filter(|v| v["type"] == "probe").collect();
    ensure!(
        probes.len() as u64 == count,
        "{label}: {} probe lines",
        probes.len()
    );
    for p in probes {
        ensure!(p["timestamping"] == "socket", "{label}: probe {p}");
        // Socket stamps: the TX stamp from the error queue, the RX stamp from the cmsg.
        ensure!(
            p["t1_source"] == "tx_software",
            "{label}: T1 from {}",
            p["t1_source"]
        );
        ensure!(
            p["t4_source"] == "socket",
            "{label}: T4 from {}",
            p["t4_source"]
        );
        let (net, app) = (p["network_rtt_ns"].as_i64(), p["app_rtt_ns"].as_i64());
        ensure!(
            matches!((net, app), (Some(n), Some(a)) if n > 0 && n < a),
            "{label}: network {net:?} app {app:?}"
        );
    }
    eprintln!("{label}: {count} probes over socket timestamps; note: {note}");
    Ok(())
}

#[test]
fn no_ebpf_and_unprivileged_fall_back_to_socket_timestamps_and_say_so() -> Result<()> {
    let Some(env) = TestEnv::acquire(
        "no_ebpf_and_unprivileged_fall_back_to_socket_timestamps_and_say_so",
        &["setpriv"],
    )?
    else {
        return Ok(());
    };
    let t = TwoHosts::new()?;
    let bin = env.mp.bin.to_str().context("binary path")?.to_string();
    let peer = t.b_addr(Family::V4).to_string();

    // 1. --no-ebpf on the sender, against a kernel-stamping reflector.
    let refl = env.mp.reflect(&t.b, &[])?;
    let (lines, stderr) = ping(
        &t.a,
        &bin,
        &[],
        &[&peer, "-c", "5", "-i", "20ms", "--no-ebpf"],
    )?;
    check_socket_run("--no-ebpf", &lines, &stderr, 5)?;

    // 2. No privilege at all: user nobody, no capabilities. Loading BPF fails; it must say so.
    let nobody = [
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "--inh-caps=-all",
    ];
    let (lines, stderr) = ping(&t.a, &bin, &nobody, &[&peer, "-c", "5", "-i", "20ms"])?;
    check_socket_run("unprivileged", &lines, &stderr, 5)?;
    let sum = refl.stop()?;
    ensure!(sum["replies"] == 10, "reflector {sum}");
    Ok(())
}
