//! Attach/detach lifecycle: a clean SIGTERM leaves no TC attachment behind, and the next start
//! removes the clsact filters a crashed (SIGKILLed) predecessor left — without touching those of
//! a live meshprobe.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use meshprobe_harness::{Family, Netns, TestEnv, TwoHosts};
use nix::sys::signal::Signal;

/// Our filters on `iface`'s egress and ingress clsact hooks, as `tc` lists them.
fn our_filters(ns: &Netns, iface: &str) -> Result<usize> {
    let mut n = 0;
    for dir in ["egress", "ingress"] {
        let out = ns.output(["tc", "filter", "show", "dev", iface, dir])?;
        n += String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.contains("meshprobe_"))
            .count();
    }
    Ok(n)
}

#[test]
fn crashed_predecessor_filters_are_removed_and_clean_exit_leaves_nothing() -> Result<()> {
    let Some(env) = TestEnv::acquire(
        "crashed_predecessor_filters_are_removed_and_clean_exit_leaves_nothing",
        &["tc"],
    )?
    else {
        return Ok(());
    };
    let t = TwoHosts::new()?;
    let b_if = TwoHosts::B_IF;
    let peer = t.b_addr(Family::V4).to_string();

    // A live clsact reflector on another port: a successor must never remove its filters.
    let live = env
        .mp
        .reflect(&t.b, &["--attach", "clsact", "-I", b_if, "-p", "8620"])?;
    ensure!(
        our_filters(&t.b, b_if)? == 2,
        "live reflector: expected 2 filters"
    );

    // A second one is killed with SIGKILL: its two filters stay behind.
    let mut crashed = env.mp.reflect(&t.b, &["--attach", "clsact", "-I", b_if])?;
    ensure!(
        our_filters(&t.b, b_if)? == 4,
        "two reflectors: expected 4 filters"
    );
    crashed.child.signal(Signal::SIGKILL)?;
    crashed.child.wait_exit(Duration::from_secs(5))?;
    let left = our_filters(&t.b, b_if)?;
    ensure!(
        left == 4,
        "after SIGKILL, {left} filters (clsact filters outlive the process)"
    );

    // The successor cleans up the dead one's filters, keeps the live one's, adds its own.
    let successor = env.mp.reflect(&t.b, &["--attach", "clsact", "-I", b_if])?;
    let stderr = successor.child.stderr_text();
    ensure!(
        stderr.contains("removed 2 TC attachment(s) left by crashed"),
        "successor did not report removing the 2 leftovers; stderr:\n{stderr}"
    );
    ensure!(
        our_filters(&t.b, b_if)? == 4,
        "live 2 + successor 2 expected"
    );
    // Both still work: the successor answers with kernel stamps.
    let run = env.mp.ping(
        &t.a,
        &[&peer, "-c", "3", "-i", "50ms"],
        Duration::from_secs(20),
    )?;
    ensure!(
        run.summary()?.received == 3,
        "successor answered {:?}",
        run.summary()?
    );
    ensure!(
        run.probes.iter().all(|p| p.t2_ns > 0 && p.t3_ns > p.t2_ns),
        "successor's replies lack kernel T2/T3"
    );

    // Clean exits detach everything.
    successor.stop()?;
    live.stop()?;
    let left = our_filters(&t.b, b_if)?;
    ensure!(left == 0, "after clean exits, {left} filters remain");
    Ok(())
}

#[test]
fn interfaces_without_ethernet_header_are_skipped_or_refused() -> Result<()> {
    let Some(env) = TestEnv::acquire(
        "interfaces_without_ethernet_header_are_skipped_or_refused",
        &[],
    )?
    else {
        return Ok(());
    };
    let t = TwoHosts::new()?;
    // A tun device has no link-layer header (ARPHRD_NONE): the programs would misparse it.
    t.b.run(["ip", "tuntap", "add", "dev", "mptun0", "mode", "tun"])?;
    t.b.run(["ip", "addr", "add", "198.19.9.1/24", "dev", "mptun0"])?;
    t.b.run(["ip", "link", "set", "mptun0", "up"])?;

    // Default interface choice: tun skipped with a warning, the rest stamped.
    let refl = env.mp.reflect(&t.b, &[])?;
    let ifs = refl.ready["interfaces"].clone();
    ensure!(
        ifs == serde_json::json!(["lo", TwoHosts::B_IF]),
        "reflector attached to {ifs}"
    );
    let stderr = refl.child.stderr_text();
    ensure!(
        stderr.contains("mptun0: no Ethernet header"),
        "no warning about mptun0: {stderr}"
    );
    refl.stop()?;

    // Named explicitly: refused with a message that says why, and socket timestamps instead.
    let bin = env.mp.bin.to_str().context("binary path")?;
    let out = t.b.output([
        bin,
        "ping",
        "198.18.0.1",
        "-c",
        "1",
        "-W",
        "200ms",
        "-I",
        "mptun0",
    ])?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        stderr.contains("interface `mptun0` has no Ethernet header"),
        "explicit -I mptun0 was not refused clearly: {stderr}"
    );
    Ok(())
}
