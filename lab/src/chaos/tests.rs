use super::*;

#[test]
fn command_lines_parse_with_defaults() {
    use Experiment::*;
    let delay = |a, b, us| LinkDelay {
        a,
        b,
        rtt: Duration::from_micros(us),
    };
    let loss = |a, b, pct| LinkLoss { a, b, pct };
    for (line, e) in [
        ("kill-agent node2", KillAgent { node: 2 }),
        ("zk-outage", ZkOutage { secs: 20 }),
        ("broker-outage", BrokerOutage { secs: 30 }),
        ("broker-outage 45s", BrokerOutage { secs: 45 }),
        ("link-delay node0 2", delay(0, 2, 2000)),
        ("link-delay 1 3 500us", delay(1, 3, 500)),
        ("link-loss node3 node1", loss(3, 1, 20.0)),
        ("partition node1", Partition { node: 1, secs: 15 }),
        ("partition 1 8", Partition { node: 1, secs: 8 }),
    ] {
        assert_eq!(line.parse::<Experiment>().unwrap(), e, "{line}");
    }
    // The other entry points.
    let kill3 = Experiment::parse("kill-agent", &["3"]).unwrap();
    assert_eq!(kill3, KillAgent { node: 3 });
    let zk = Experiment::parse::<&str>("zk-outage", &[]).unwrap();
    assert_eq!(zk, ZkOutage { secs: 20 });
    let e = Experiment::from_args(&["link-loss", "0", "1", "5%"]).unwrap();
    assert_eq!(e, loss(0, 1, 5.0));
    for e in NAMES {
        assert!(USAGE.contains(e));
    }
}

#[test]
fn bad_command_lines_say_why() {
    let err = |s: &str| format!("{:#}", s.parse::<Experiment>().unwrap_err());
    assert!(err("kill-agent").contains("usage: kill-agent NODE"));
    assert!(err("kill-agent web1").contains("node2 or 2"));
    assert!(err("link-delay 0 0").contains("same node"));
    assert!(err("link-delay 0 1 1s").contains("at most 200ms"));
    assert!(err("link-delay 0 1 2").contains("2ms"));
    assert!(err("link-loss 0 1 150").contains("between 0% and 100%"));
    assert!(err("zk-outage 0").contains("between 1 and 600"));
    assert!(err("zk-outage 1.5s").contains("whole seconds"));
    assert!(err("partition 1 2 3").contains("3 argument"));
    assert!(err("reboot").contains("unknown chaos experiment"));
    assert!(format!("{:#}", Experiment::from_args::<&str>(&[]).unwrap_err()).contains("which"));
}

#[test]
fn display_round_trips_and_hypotheses_have_numbers() {
    for s in [
        "kill-agent node2",
        "zk-outage 20s",
        "broker-outage 30s",
        "link-delay node0 node2 +2ms",
        "link-loss node0 node2 20%",
        "partition node1 15s",
    ] {
        let e: Experiment = s.replace('+', "").parse().unwrap();
        assert_eq!(e.to_string(), s);
        let h = e.hypothesis();
        assert!(h.chars().any(|c| c.is_ascii_digit()), "{h}");
    }
    assert!(
        Experiment::KillAgent { node: 2 }
            .hypothesis()
            .contains("CONN_TIMEOUT 4 s")
    );
    assert!(
        Experiment::LinkDelay {
            a: 0,
            b: 2,
            rtt: Duration::from_millis(2)
        }
        .hypothesis()
        .contains("by 2ms from the first full window")
    );
}

#[test]
fn verdict_prints_findings_and_reason() {
    let mut j = Judge::default();
    j.note("node0→node1: 3 lost");
    j.fig("lost", 3.0);
    j.check(true, "a fine thing");
    j.check(false, "zero loss (3 lost)");
    let v = j.verdict(&Experiment::ZkOutage { secs: 20 }, "h".into());
    assert!(!v.holds);
    let s = v.to_string();
    assert!(s.contains("hypothesis: h"), "{s}");
    assert!(s.contains("  - node0→node1: 3 lost"), "{s}");
    assert!(s.contains("lost=3"), "{s}");
    assert!(
        s.ends_with("VERDICT: does not hold — NOT zero loss (3 lost)"),
        "{s}"
    );
    assert_eq!(v.figure("lost"), 3.0);
    assert!(v.figure("nothing").is_nan());
    let mut j = Judge::default();
    j.check(true, "a");
    j.check(true, "b");
    let v = j.verdict(&Experiment::ZkOutage { secs: 20 }, "h".into());
    assert!(v.holds);
    assert!(v.to_string().ends_with("VERDICT: holds — a; b"));
}

#[test]
fn ranges_compress_runs() {
    assert_eq!(ranges(&[3, 4, 5, 9, 11, 12]), "3..=5, 9, 11..=12");
    assert_eq!(ranges(&[]), "none");
}
