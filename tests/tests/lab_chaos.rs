//! The lab's chaos experiments (`mesh chaos`), one test each, on a 4-node lab in two zones
//! (node0, node1 | node2, node3; 100 µs added RTT inside a zone, 400 µs across): every test
//! prints the verdict and asserts that the hypothesis holds and the facts it rests on, as read
//! back from Kafka, ZooKeeper and the agents' membership events. Bounds come from the
//! product's and the lab's settings (session timeout, backoff, windows) and from each run's own
//! noise, as the verdict's figures state them.

use std::time::{Duration, Instant};

use anyhow::Result;
use meshprobe_lab::chaos::{self, Experiment, Verdict};
use meshprobe_lab::{Lab, LabSpec};

fn lab() -> Result<Option<Lab>> {
    Lab::up(LabSpec::new(4)?.zoned(2, Duration::from_micros(100), Duration::from_micros(400))?)
}

/// Runs `exp` on a fresh lab and prints its verdict; `None` when the lab cannot run here.
fn experiment(test: &str, exp: Experiment) -> Result<Option<Verdict>> {
    let t0 = Instant::now();
    let Some(mut lab) = lab()? else {
        return Ok(None);
    };
    eprintln!("{test}: lab up in {:.1?}", t0.elapsed());
    let t1 = Instant::now();
    let res = chaos::run(&mut lab, &exp, &mut |line| {
        eprintln!("[{:6.1}s] {line}", t1.elapsed().as_secs_f64())
    });
    let v = match res {
        Ok(v) => v,
        Err(e) => {
            eprintln!("{}", lab.cluster.diagnostics());
            return Err(e);
        }
    };
    eprintln!("{v}");
    eprintln!(
        "{test}: experiment {:.1?}, total {:.1?}",
        t1.elapsed(),
        t0.elapsed()
    );
    if !v.holds {
        eprintln!("{}", lab.cluster.diagnostics());
    }
    lab.shutdown(Duration::from_secs(15))?;
    Ok(Some(v))
}

fn fig(v: &Verdict, k: &str) -> f64 {
    let x = v.figure(k);
    assert!(!x.is_nan(), "figure {k} missing from the verdict:\n{v}");
    x
}

/// The lab library does not link the product; its copy of the product's constant must agree.
#[test]
fn lab_constants_match_the_product() {
    assert_eq!(chaos::BACKOFF_CAP, meshprobe::discovery::BACKOFF_CAP);
}

#[test]
fn chaos_kill_agent() -> Result<()> {
    let Some(v) = experiment("chaos_kill_agent", Experiment::KillAgent { node: 2 })? else {
        return Ok(());
    };
    assert!(v.holds, "{v}");
    // The others: nothing missing, nothing lost, nothing twice.
    assert_eq!(fig(&v, "others_gaps"), 0.0, "{v}");
    assert_eq!(fig(&v, "others_lost"), 0.0, "{v}");
    assert_eq!(fig(&v, "duplicates"), 0.0, "{v}");
    // Loss towards node2 was counted only until its session expired (CONN_TIMEOUT +
    // REMOVAL_SLACK).
    assert!(
        fig(&v, "removed_after_s.max") <= fig(&v, "removal_bound_s"),
        "{v}"
    );
    assert_eq!(fig(&v, "lost_after_removal"), 0.0, "{v}");
    for peer in ["node0", "node1", "node3"] {
        assert!(fig(&v, &format!("lost_towards_x.{peer}")) > 0.0, "{v}");
    }
    // Nothing node2 had already reported was lost; once registered again it was measured by
    // the end of the next window.
    assert_eq!(fig(&v, "x_gaps_before_kill"), 0.0, "{v}");
    assert!(fig(&v, "x_windows_missing") >= 1.0, "{v}");
    assert!(
        fig(&v, "recovered_windows.max") <= chaos::RECOVERY_WINDOWS as f64,
        "{v}"
    );
    Ok(())
}

#[test]
fn chaos_zk_outage() -> Result<()> {
    let Some(v) = experiment("chaos_zk_outage", Experiment::ZkOutage { secs: 20 })? else {
        return Ok(());
    };
    assert!(v.holds, "{v}");
    assert!(fig(&v, "outage_windows") >= 10.0, "{v}");
    assert_eq!(fig(&v, "gaps"), 0.0, "{v}");
    assert_eq!(fig(&v, "windows_without_replies"), 0.0, "{v}");
    assert_eq!(fig(&v, "lost"), 0.0, "{v}");
    assert_eq!(fig(&v, "duplicates"), 0.0, "{v}");
    // BACKOFF_CAP + CONN_TIMEOUT.
    let bound = fig(&v, "reregister_bound_s");
    assert!(fig(&v, "agents_ready_s") <= bound, "{v}");
    assert!(fig(&v, "members_back_s") <= bound, "{v}");
    Ok(())
}

#[test]
fn chaos_broker_outage() -> Result<()> {
    let Some(v) = experiment("chaos_broker_outage", Experiment::BrokerOutage { secs: 30 })? else {
        return Ok(());
    };
    assert!(v.holds, "{v}");
    // After the broker returned, no window summary is missing and none is there twice.
    assert_eq!(fig(&v, "gaps"), 0.0, "{v}");
    assert_eq!(fig(&v, "duplicates"), 0.0, "{v}");
    assert_eq!(fig(&v, "kafka_dropped"), 0.0, "{v}");
    assert!(fig(&v, "buffered_windows") >= 14.0, "{v}");
    assert!(fig(&v, "delivered_after_s").is_finite(), "{v}");
    Ok(())
}

#[test]
fn chaos_link_delay() -> Result<()> {
    let exp = Experiment::LinkDelay {
        a: 0,
        b: 2,
        rtt: Duration::from_millis(2),
    };
    let Some(v) = experiment("chaos_link_delay", exp)? else {
        return Ok(());
    };
    assert!(v.holds, "{v}");
    // The rise is the added RTT within NOISE_K × the pair's own window-to-window spread.
    let added = fig(&v, "added_us");
    for p in ["node0->node2", "node2->node0"] {
        let rise = fig(&v, &format!("rise_us.{p}"));
        let tol = fig(&v, &format!("rise_tolerance_us.{p}"));
        assert!(
            (rise - added).abs() <= tol,
            "{p} rose {rise} µs for {added} µs added (±{tol} µs)\n{v}"
        );
    }
    assert!(fig(&v, "rise_window.max") <= 2.0, "{v}");
    // Every other pair during, and every pair after the restore, moved less than its own
    // tolerance.
    assert!(fig(&v, "others_max_excess_us") <= 0.0, "{v}");
    assert!(fig(&v, "restored_max_excess_us") <= 0.0, "{v}");
    Ok(())
}

#[test]
fn chaos_link_loss() -> Result<()> {
    let exp = Experiment::LinkLoss {
        a: 1,
        b: 3,
        pct: 20.0,
    };
    let Some(v) = experiment("chaos_link_loss", exp)? else {
        return Ok(());
    };
    assert!(v.holds, "{v}");
    for p in ["node1->node3", "node3->node1"] {
        let obs = fig(&v, &format!("loss_pct.{p}"));
        let sigma = fig(&v, &format!("sigma_pct.{p}"));
        assert!((obs - 20.0).abs() <= 4.0 * sigma, "{p}: {obs} %\n{v}");
    }
    // The rule's counter is read after it stopped dropping: one lost probe per drop, exactly.
    let (dropped, lost) = (fig(&v, "nft_dropped"), fig(&v, "lost_total"));
    assert!(dropped > 0.0 && lost == dropped, "{v}");
    assert_eq!(fig(&v, "others_lost"), 0.0, "{v}");
    assert_eq!(fig(&v, "lost_after_restore"), 0.0, "{v}");
    Ok(())
}

#[test]
fn chaos_partition() -> Result<()> {
    let Some(v) = experiment(
        "chaos_partition",
        Experiment::Partition { node: 1, secs: 15 },
    )?
    else {
        return Ok(());
    };
    assert!(v.holds, "{v}");
    assert!(
        fig(&v, "removed_after_s.max") <= fig(&v, "removal_bound_s"),
        "{v}"
    );
    assert_eq!(fig(&v, "lost_after_removal"), 0.0, "{v}");
    assert_eq!(fig(&v, "x_gaps"), 0.0, "{v}");
    assert_eq!(fig(&v, "x_received_during"), 0.0, "{v}");
    assert_eq!(fig(&v, "others_received_from_x_during"), 0.0, "{v}");
    assert_eq!(fig(&v, "others_gaps"), 0.0, "{v}");
    assert_eq!(fig(&v, "others_lost"), 0.0, "{v}");
    assert_eq!(fig(&v, "duplicates"), 0.0, "{v}");
    // Registered again within BACKOFF_CAP + CONN_TIMEOUT of healing, then measured by the end
    // of the next window.
    assert!(
        fig(&v, "registered_after_s") <= fig(&v, "reregister_bound_s"),
        "{v}"
    );
    assert!(
        fig(&v, "recovered_windows.max") <= chaos::RECOVERY_WINDOWS as f64,
        "{v}"
    );
    Ok(())
}
