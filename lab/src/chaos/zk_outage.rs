//! zk-outage: ZooKeeper stops and comes back; probing goes on.

use super::*;

pub(super) fn zk_outage(lab: &mut Lab, c: &mut Ctx, secs_: u64) -> Result<()> {
    let Ctx(t, base, pairs, log, j) = c;
    let n = lab.spec.nodes;
    let marks = agent_marks(lab, 0..n);
    let mut sessions_before = BTreeMap::new();
    let stop = format!("ZooKeeper stopped for {secs_} s");
    let (span, ()) = fault(
        lab,
        [&stop, "ZooKeeper started again"],
        log,
        |lab| {
            sessions_before = znode_sessions(lab);
            lab.cluster.zk_mut().stop();
            Ok(())
        },
        |lab, _| hold(lab, Duration::from_secs(secs_), |_| {}),
        |lab| {
            let r = lab.cluster.zk_mut().start_again();
            r.context("starting ZooKeeper again")
        },
    )?;
    let (stop_w, end_w, back_at) = (span.on, span.off, span.off_at);

    // Per agent: when its /readyz says registered again. Membership: complete, and staying
    // complete for a session timeout (a session that is not resumed in time expires, and its
    // znode goes). Then whose session was resumed and who registered in a new one.
    let ids: Vec<String> = (0..n).map(node_name).collect();
    let settle = t.conn_timeout + Duration::from_secs(1);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut complete_since: Option<Instant> = None;
    let mut ready: BTreeMap<usize, Instant> = BTreeMap::new();
    loop {
        let now = Instant::now();
        match lab.zk_members() {
            Ok(m) if ids.iter().all(|i| m.contains(i)) => {
                complete_since.get_or_insert(now);
            }
            _ => complete_since = None,
        }
        for i in 0..n {
            if !ready.contains_key(&i)
                && lab
                    .cluster
                    .agent(i)
                    .http_get("/readyz")
                    .is_ok_and(|(s, _)| s == 200)
            {
                ready.insert(i, Instant::now());
            }
        }
        let settled = complete_since.is_some_and(|c| now - c >= settle);
        if (settled && ready.len() == n) || now >= deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let sessions_after = znode_sessions(lab);
    let mut replaced = 0;
    let mut per_node = Vec::new();
    let mut ready_max: f64 = 0.0;
    for (i, id) in ids.iter().enumerate() {
        let r = ready
            .get(&i)
            .map(|r| secs(r.saturating_duration_since(back_at)));
        ready_max = ready_max.max(r.unwrap_or(f64::INFINITY));
        let how = match (sessions_before.get(id), sessions_after.get(id)) {
            (Some(b), Some(a)) if a == b => "session resumed".to_string(),
            (_, Some(_)) => {
                replaced += 1;
                "session expired, registered in a new one".to_string()
            }
            (_, None) => "not registered".to_string(),
        };
        per_node.push(format!(
            "{id} {how}, /readyz 200 {}",
            r.map_or("never".into(), |r| format!("at +{r:.1} s"))
        ));
    }
    let members_back = complete_since.map(|c| secs(c.saturating_duration_since(back_at)));
    let back = members_back.unwrap_or(f64::INFINITY).max(ready_max);
    j.fig("members_back_s", members_back.unwrap_or(f64::NAN));
    j.fig("agents_ready_s", ready_max);
    j.fig("sessions_replaced", replaced as f64);
    j.note(format!(
        "after ZooKeeper's return ({} s session timeout): {}; ZooKeeper listed all {n} znodes {}",
        secs(t.conn_timeout),
        per_node.join("; "),
        members_back.map_or("never for good".into(), |s| format!(
            "in every poll from +{s:.1} s on (every 0.2 s; a znode replaced between two polls \
             is not seen)"
        )),
    ));
    let bound = reregister_bound(t.conn_timeout);
    j.fig("reregister_bound_s", secs(bound));
    j.check(
        back <= secs(bound),
        format!(
            "all agents registered again {back:.1} s after ZooKeeper's return (bound {:.0} s, \
             BACKOFF_CAP + CONN_TIMEOUT)",
            secs(bound)
        ),
    );

    // What the agents made of it: a peer whose znode was replaced is removed and added back
    // (within the grace period the same probe session goes on).
    let mut events = Vec::new();
    let mut removed_events = 0;
    let mut max_readd: f64 = 0.0;
    let mut not_readded = Vec::new();
    for i in 0..n {
        let evs = lab.cluster.agent(i).events_since(marks[&i]);
        for (k, e) in evs.iter().enumerate() {
            if e.kind() != "peer_removed" {
                continue;
            }
            removed_events += 1;
            let y = e.v["node_id"].as_str().unwrap_or("?");
            match evs[k + 1..]
                .iter()
                .find(|f| f.kind() == "peer_added" && f.v["node_id"] == y)
            {
                Some(f) => {
                    let gap = secs(f.at - e.at);
                    max_readd = max_readd.max(gap);
                    events.push(format!(
                        "{} dropped {y} at +{:.1} s and added it back {:.0} ms later",
                        node_name(i),
                        secs(e.at.saturating_duration_since(back_at)),
                        gap * 1000.0
                    ));
                }
                None => not_readded.push(format!("{}: {y}", node_name(i))),
            }
        }
    }
    j.fig("peer_removed_events", removed_events as f64);
    j.fig("peer_readded_max_s", max_readd);
    j.note(if events.is_empty() {
        "no agent reported peer_removed during or after the outage".to_string()
    } else {
        format!(
            "membership events (times from ZooKeeper's return): {}",
            events.join(", ")
        )
    });
    j.check(
        not_readded.is_empty(),
        format!(
            "every peer dropped after the return was added back{}",
            listed(&not_readded, |s| format!(" (not: {s})"))
        ),
    );

    let last = end_w + 2;
    let range = *base.start()..=last;
    let w = read_complete(lab, pairs, range.clone())?;
    j.fig("outage_windows", (end_w - stop_w + 1) as f64);
    let h = Health::of(&w, pairs, range.clone(), &|_| false);
    j.health_figs(&h);
    j.note(format!(
        "outage windows {stop_w}..={end_w} (stopped in {stop_w}, back in {end_w})"
    ));
    j.note(h.describe(&format!("all {} pairs", pairs.len()), &range));
    j.check(
        h.gaps.is_empty() && h.silent.is_empty(),
        format!(
            "probing never paused: every pair has replies in each of windows {}..={last} \
             ({} missing, {} without replies)",
            base.start(),
            h.gap_count(),
            h.silent_count()
        ),
    );
    j.check(h.lost.is_empty(), format!("{} probes lost", h.lost_count()));
    j.check(
        h.dups.is_empty(),
        format!("{} windows summarised twice", h.dups.len()),
    );
    Ok(())
}
