//! Where T2 and T4 come from with no packet capture on the host (a capture turns the kernel's
//! receive stamping on by itself, so the capture-based tests cannot tell).
//!
//! By default a kernel-mode meshprobe asks for software RX stamps, so the ingress programs
//! take T2 and T4 from the skb's receive stamp (`skb_rx`), taken when the packet entered the
//! stack. With `--no-sw-rx-stamps` on both ends they are taken at the TC hook (`tc`), unless
//! another process on the host keeps receive stamping on (chrony, ptp4l, a tcpdump), which
//! the test reports instead of failing on.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use meshprobe_harness::scenario::ping_timeout;
use meshprobe_harness::{Family, PingRun, TestEnv, TwoHosts};
use serde_json::Value;

const COUNT: u32 = 200;

/// One reflector in B and one `ping -c COUNT -i 1ms` from A, both with `extra` flags.
fn run(env: &TestEnv, t: &TwoHosts, extra: &[&str]) -> Result<(PingRun, Value)> {
    let refl = env.mp.reflect(&t.b, extra)?;
    let peer = t.b_addr(Family::V4).to_string();
    let count = COUNT.to_string();
    let mut args = vec![peer.as_str(), "-c", &count, "-i", "1ms", "-W", "500ms"];
    args.extend_from_slice(extra);
    let timeout = ping_timeout(COUNT, Duration::from_millis(1), Duration::from_millis(500));
    let run = env.mp.ping(&t.a, &args, timeout)?;
    let sum = refl.stop()?;
    let s = run.summaries.first().context("no summary")?;
    ensure!(
        s.timestamping == "kernel" && sum["timestamping"] == "kernel",
        "{extra:?}: not kernel mode (sender {}, reflector {})",
        s.timestamping,
        sum["timestamping"]
    );
    ensure!(
        s.received == u64::from(COUNT) && run.probes.len() == COUNT as usize,
        "{extra:?}: {} of {COUNT} answered, {} probe lines",
        s.received,
        run.probes.len()
    );
    Ok((run, sum))
}

fn t4_sources(run: &PingRun) -> BTreeMap<&str, usize> {
    let mut m = BTreeMap::new();
    for p in &run.probes {
        *m.entry(p.t4_source.as_str()).or_default() += 1;
    }
    m
}

fn counter(sum: &Value, name: &str) -> u64 {
    sum["ebpf_counters"][name].as_u64().unwrap_or(0)
}

#[test]
fn kernel_mode_takes_t2_t4_from_the_skb_receive_stamp_by_default() -> Result<()> {
    let Some(env) = TestEnv::acquire(
        "kernel_mode_takes_t2_t4_from_the_skb_receive_stamp_by_default",
        &[],
    )?
    else {
        return Ok(());
    };
    let t = TwoHosts::new()?;

    // Opted out first, so that nothing of ours still holds receive stamping on.
    let (off, off_sum) = run(&env, &t, &["--no-sw-rx-stamps"])?;
    let off_src = t4_sources(&off);
    let off_t2_skb = counter(&off_sum, "rx_skb_tstamp_used");
    eprintln!(
        "--no-sw-rx-stamps: T4 sources {off_src:?}, reflector T2 from the skb stamp {off_t2_skb} \
         of {}",
        counter(&off_sum, "t2_stamped")
    );
    if off_src.contains_key("skb_rx") || off_t2_skb > 0 {
        eprintln!(
            "NOTE: received packets were stamped although meshprobe did not ask: another \
             process on this host keeps the kernel's receive stamping on"
        );
    }

    let (on, on_sum) = run(&env, &t, &[])?;
    let on_src = t4_sources(&on);
    let (t2, t2_skb) = (
        counter(&on_sum, "t2_stamped"),
        counter(&on_sum, "rx_skb_tstamp_used"),
    );
    eprintln!("default: T4 sources {on_src:?}, reflector T2 from the skb stamp {t2_skb} of {t2}");
    ensure!(
        on_src.get("skb_rx") == Some(&(COUNT as usize)),
        "default: every T4 should be the skb receive stamp, got {on_src:?}"
    );
    ensure!(
        t2 >= u64::from(COUNT) && t2_skb == t2,
        "default: the reflector took {t2_skb} of {t2} T2 stamps from the skb receive stamp"
    );
    Ok(())
}
