//! kill-agent and partition: a node goes away and comes back.

use super::*;

/// Node x away from the mesh: gone at `at` (in the middle of window `from`) by `words[0]` ("the
/// kill"), back at `back_at` (in window `back`) by `words[1]` ("the restart"); and what
/// ZooKeeper and the peers made of it.
pub(super) struct Away {
    pub(super) x: usize,
    pub(super) xid: String,
    pub(super) others: Vec<usize>,
    pub(super) words: [&'static str; 2],
    pub(super) clock: Clock,
    pub(super) at: Instant,
    pub(super) from: u64,
    pub(super) back_at: Instant,
    pub(super) back: u64,
    /// When x's znode was seen gone.
    pub(super) gone_at: Option<Instant>,
    /// Each peer's peer_removed x while x was away, and peer_added x once it was back.
    pub(super) removed: BTreeMap<usize, Option<Instant>>,
    pub(super) added: BTreeMap<usize, Option<Instant>>,
    pub(super) registered_at: Option<Instant>,
}

impl Away {
    /// x's znode, and each peer's loss towards x while x was away, which stops at its
    /// peer_removed: `lost_towards_x.<peer>`, `removed_after_s.<peer>` and `.max`,
    /// `lost_after_removal`. `extra` adds to a peer's finding.
    pub(super) fn judge_peers(
        &self,
        j: &mut Judge,
        w: &Windows,
        t: &Timing,
        extra: impl Fn(&Pair) -> String,
    ) {
        let (xid, fault) = (&self.xid, self.words[0]);
        j.note(match self.gone_at {
            Some(g) => format!(
                "{xid}'s znode was deleted {:.1} s after {fault} (session timeout {:.0} s)",
                secs(g - self.at),
                secs(t.conn_timeout)
            ),
            None => format!("{xid}'s znode was not deleted while {xid} was away"),
        });
        let (mut max, mut lost_after, mut all) = (0f64, 0, true);
        for &i in &self.others {
            let p = pair(i, self.x);
            let (sent, lost) = w.loss(&p, self.from..=self.back);
            j.fig(format!("lost_towards_x.{}", p.0), lost as f64);
            let rows: Vec<String> = w
                .of(&p, self.from..=self.back)
                .iter()
                .map(|o| format!("{} {}/{}", o.seq, o.lost, o.sent))
                .collect();
            let head = format!(
                "{}: {lost} of {sent} probes lost in windows {}..={} (≈{:.1} s of probing; \
                 lost/sent by window, a loss counting in the window its {:.0} s timeout ends: {})",
                arrow(&p),
                self.from,
                self.back,
                lost as f64 * secs(t.interval),
                secs(t.probe_timeout),
                rows.join(" ")
            );
            let Some(r) = self.removed[&i] else {
                all = false;
                j.note(format!(
                    "{head}; never reported peer_removed {xid}{}",
                    extra(&p)
                ));
                continue;
            };
            let after = secs(r - self.at);
            max = max.max(after);
            j.fig(format!("removed_after_s.{}", p.0), after);
            let rw = self.clock.window_of(r);
            let later = rw + 1..=self.back;
            let (late_sent, late) = w.loss(&p, later.clone());
            lost_after += late;
            j.note(format!(
                "{head}; removed {xid} {after:.1} s after {fault} (window {rw}); windows {}..={}: \
                 {late_sent} probes sent, {late} lost, no summary in windows {}{}",
                rw + 1,
                self.back,
                ranges(&w.gaps(&p, later)),
                extra(&p)
            ));
        }
        let bound = removal_bound(t.conn_timeout);
        j.fig("removed_after_s.max", max);
        j.fig("removal_bound_s", secs(bound));
        j.fig("lost_after_removal", lost_after as f64);
        j.check(
            all && max <= secs(bound),
            format!(
                "every peer dropped {xid} within {max:.1} s of {fault} (bound {:.0} s)",
                secs(bound)
            ),
        );
        j.check(
            lost_after == 0,
            format!("{lost_after} probes to {xid} counted lost after peer_removed"),
        );
    }

    /// x back: registered again (`registered_after_s`), added by the peers, and every pair
    /// involving it measured again within [`RECOVERY_WINDOWS`] windows of the window in which
    /// it registered (`recovered_windows.<pair>` and `.max`: windows from that one to the
    /// pair's first with replies since `back`). Returns how long after `back_at` the last of
    /// those windows ended.
    pub(super) fn judge_return(&self, j: &mut Judge, w: &Windows, pairs: &[Pair]) -> f64 {
        let bound = RECOVERY_WINDOWS;
        let (xid, undo) = (&self.xid, self.words[1]);
        let since = |i: Option<Instant>| i.map(|i| secs(i - self.back_at));
        match since(self.registered_at) {
            Some(s) => {
                j.fig("registered_after_s", s);
                j.note(format!(
                    "{xid} registered in ZooKeeper again {s:.1} s after {undo}"
                ));
            }
            None => j.note(format!("{xid} did not register again after {undo}")),
        }
        let adds: Vec<String> = self
            .others
            .iter()
            .map(|&i| match since(self.added[&i]) {
                Some(s) => format!("{} {s:.1} s", node_name(i)),
                None => format!("{} never", node_name(i)),
            })
            .collect();
        j.note(format!(
            "peer_added {xid} after {undo}: {}",
            adds.join(", ")
        ));
        // Windows are counted from the one in which x registered again (a pair x already
        // measured before that, such as x's own rows after a partition, counts as +0).
        let reg_w = self.registered_at.map(|r| self.clock.window_of(r));
        let from = reg_w.unwrap_or(self.back);
        let (mut max_k, mut last, mut rec, mut never) = (None, None, Vec::new(), Vec::new());
        for p in pairs.iter().filter(|p| involves(p, xid)) {
            match w.first_received(p, self.back) {
                Some(f) => {
                    let k = f.saturating_sub(from);
                    max_k = max_k.max(Some(k));
                    last = last.max(Some(f));
                    j.fig(format!("recovered_windows.{}", key(p)), k as f64);
                    rec.push(format!("{} window {f} (+{k})", arrow(p)));
                }
                None => never.push(arrow(p)),
            }
        }
        let max_s = last.map_or(0.0, |f| self.clock.secs_to_end_of(self.back_at, f));
        let max_k = max_k.unwrap_or(0);
        j.fig("recovered_windows.max", max_k as f64);
        j.note(format!(
            "{undo} in window {}, registered again in window {}; first window with replies \
             since {undo}: {}{}",
            self.back,
            reg_w.map_or("-".into(), |r| r.to_string()),
            rec.join(", "),
            listed(&never, |s| format!("; never: {s}"))
        ));
        j.check(
            self.registered_at.is_some() && never.is_empty() && max_k <= bound,
            format!(
                "every pair involving {xid} measured again by window +{max_k} after the one in \
                 which it registered again ({max_s:.1} s after {undo}; bound +{bound})"
            ),
        );
        max_s
    }
}

pub(super) fn kill_agent(lab: &mut Lab, c: &mut Ctx, x: usize) -> Result<()> {
    let Ctx(t, base, pairs, log, j) = c;
    let n = lab.spec.nodes;
    let xid = node_name(x);
    let clock = Clock::new(t.window);
    let others: Vec<usize> = (0..n).filter(|&i| i != x).collect();
    let marks = agent_marks(lab, others.iter().copied());

    let kill_w = at_mid_window(lab);
    let kill_at = Instant::now();
    lab.kill9_agent(x)?;
    log(&format!("SIGKILL {xid}'s agent in window {kill_w}"));

    // Its znode goes when the session expires; then every peer drops it.
    let gone_at = wait_members(lab, t.conn_timeout * 3 + Duration::from_secs(10), |m| {
        !m.contains(&xid)
    });
    let removed = wait_peers(lab, &marks, ["peer_removed", &xid], kill_at, 10);
    let last_removed = removed.values().flatten().max().copied();
    // Down for KILL_DOWN_WINDOWS, and with one whole window after the one in which the last
    // peer dropped it (their grace period is over by its end: the mesh without it is recorded,
    // and the restart is a new peer for them, not a resumed one): the middle of the window
    // after that.
    let len = lab.spec.window.as_nanos() as u64;
    let kill_tai = clock.tai_of(kill_at);
    let target = (kill_tai + KILL_DOWN_WINDOWS * len)
        .max(last_removed.map_or(0, |r| (clock.window_of(r) + 2) * len + len / 2));
    std::thread::sleep(Duration::from_nanos(target.saturating_sub(tai_now_ns())));

    let marks = agent_marks(lab, others.iter().copied());
    let restart_w = lab.window_now();
    let restart_at = Instant::now();
    log(&format!("restarting {xid}'s agent in window {restart_w}"));
    lab.start_agent(x)?;
    let ready_s = lab
        .cluster
        .agent(x)
        .ready_at()
        .map(|r| secs(r - restart_at));
    let registered_at = wait_members(lab, Duration::from_secs(30), |m| m.contains(&xid));
    let added = wait_peers(lab, &marks, ["peer_added", &xid], restart_at, 20);

    // Read up to the window the recovery is judged by (counted from the registration).
    let end =
        registered_at.map_or(restart_w, |r| clock.window_of(r).max(restart_w)) + RECOVERY_WINDOWS;
    let w = read_after(lab, end, |w| reached(w, pairs, end))?;
    let away = Away {
        x,
        xid: xid.clone(),
        others,
        words: ["the kill", "the restart"],
        clock,
        at: kill_at,
        from: kill_w,
        back_at: restart_at,
        back: restart_w,
        gone_at,
        removed,
        added,
        registered_at,
    };
    away.judge_peers(j, &w, t, |_| String::new());

    // The node's own rows: nothing already closed was lost; the windows it was dead are missing
    // (from the kill to its first window back, or to the end).
    let mut x_missing = BTreeSet::new();
    let mut x_gaps_before = 0;
    for &i in &away.others {
        let p = pair(x, i);
        x_gaps_before += w.gaps(&p, *base.start()..=kill_w - 1).len();
        let back = w.of(&p, kill_w..=u64::MAX).first().map(|o| o.seq);
        x_missing.extend(w.gaps(&p, kill_w..=back.map_or(end, |f| f - 1)));
    }
    let x_missing: Vec<u64> = x_missing.into_iter().collect();
    j.fig("x_windows_missing", x_missing.len() as f64);
    j.fig("x_gaps_before_kill", x_gaps_before as f64);
    j.note(format!(
        "{xid}'s own rows: windows {} never reported (the window in progress at the kill was \
         not flushed; the agent was down until window {restart_w}); {x_gaps_before} windows \
         before the kill missing",
        ranges(&x_missing)
    ));
    j.check(
        x_gaps_before == 0,
        format!("{x_gaps_before} windows of {xid} closed before the kill missing from Kafka"),
    );

    // Recovery.
    j.note(format!(
        "restarted in window {restart_w}: ready line after {}",
        ready_s.map_or("?".into(), |s| format!("{s:.1} s"))
    ));
    let max_s = away.judge_return(j, &w, pairs);
    j.fig("recovered_s.max", max_s);
    j.bystanders(&w, pairs, &xid, *base.start()..=end);
    Ok(())
}

pub(super) fn partition(lab: &mut Lab, c: &mut Ctx, x: usize, secs_: u64) -> Result<()> {
    let Ctx(t, base, pairs, log, j) = c;
    let n = lab.spec.nodes;
    let xid = node_name(x);
    let clock = Clock::new(t.window);
    let others: Vec<usize> = (0..n).filter(|&i| i != x).collect();
    let marks = agent_marks(lab, 0..n);

    let mut gone_at: Option<Instant> = None;
    let steps = [
        format!("{xid} partitioned for {secs_} s"),
        format!("{xid} reconnected"),
    ];
    let (span, ()) = fault(
        lab,
        steps.each_ref().map(String::as_str),
        log,
        |lab| lab.partition(x, true),
        |lab, _| {
            hold(lab, Duration::from_secs(secs_), |lab| {
                if gone_at.is_none() && lab.zk_members().is_ok_and(|m| !m.contains(&xid)) {
                    gone_at = Some(Instant::now());
                }
            })
        },
        |lab| lab.partition(x, false),
    )?;
    let (p_w, p_at, h_w, h_at) = (span.on, span.on_at, span.off, span.off_at);

    // Registration first, polled alone (it is judged against a bound; a read of Kafka takes a
    // while), then the buffered rows (their time is only reported, and includes that wait).
    let x_rows: Vec<Pair> = others.iter().map(|&i| pair(x, i)).collect();
    let registered_at = wait_members(lab, KAFKA_WAIT, |m| m.contains(&xid));
    let (_, delivered_at) = wait_kafka(lab, KAFKA_WAIT, |w| complete(w, &x_rows, p_w..=h_w - 1))?;
    let added = wait_peers(lab, &marks, ["peer_added", &xid], h_at, 20);
    // Read up to the window the recovery is judged by (counted from the registration).
    let end = registered_at.map_or(h_w, |r| clock.window_of(r).max(h_w)) + RECOVERY_WINDOWS;
    let w = read_after(lab, end, |w| reached(w, pairs, end))?;
    // The peers' peer_removed (printed by now), if it came before the healing.
    let mut removed = wait_peers(lab, &marks, ["peer_removed", &xid], p_at, 0);
    removed
        .values_mut()
        .for_each(|r| *r = r.filter(|&at| at < h_at));
    let away = Away {
        x,
        xid: xid.clone(),
        others,
        words: ["the cut", "healing"],
        clock,
        at: p_at,
        from: p_w,
        back_at: h_at,
        back: h_w,
        gone_at,
        removed,
        added,
        registered_at,
    };

    // The others towards x: no reply while it was wholly cut off.
    let inside = p_w + 1..=h_w - 1;
    let replies = |p: &Pair| -> u64 { w.of(p, inside.clone()).iter().map(|o| o.received).sum() };
    away.judge_peers(j, &w, t, |p| {
        format!("; {} replies in windows {inside:?}", replies(p),)
    });
    let others_received: u64 = away.others.iter().map(|&i| replies(&pair(i, x))).sum();
    j.fig("others_received_from_x_during", others_received as f64);
    j.check(
        others_received == 0,
        format!(
            "the others got {others_received} replies from {xid} in windows {inside:?}, while it \
             was cut off",
        ),
    );

    // x's own rows.
    let x_events: Vec<String> = lab
        .cluster
        .agent(x)
        .events_since(marks[&x])
        .iter()
        .filter(|e| e.kind().starts_with("peer_"))
        .map(|e| {
            format!(
                "{} {} at +{:.1} s",
                e.kind(),
                e.v["node_id"].as_str().unwrap_or("?"),
                secs(e.at.saturating_duration_since(p_at))
            )
        })
        .collect();
    let mut x_gaps = 0;
    let mut x_received = 0;
    let mut x_rows_text = Vec::new();
    for p in &x_rows {
        let g = w.gaps(p, *base.start()..=end);
        x_gaps += g.len();
        let got = replies(p);
        x_received += got;
        let (sent, lost) = w.loss(p, inside.clone());
        x_rows_text.push(format!(
            "{} sent {sent}, lost {lost}, {got} replies, missing windows {}",
            arrow(p),
            ranges(&g)
        ));
    }
    j.fig("x_gaps", x_gaps as f64);
    j.fig("x_received_during", x_received as f64);
    let delivered_s = delivered_at.map(|d| secs(d - h_at));
    j.fig("x_delivered_after_s", delivered_s.unwrap_or(f64::NAN));
    j.note(format!(
        "{xid}'s rows in windows {inside:?} (wholly cut off): {}; its summaries of windows \
         {p_w}..={} were on the topic {} after healing; its own membership events: {}",
        x_rows_text.join("; "),
        h_w - 1,
        delivered_s.map_or("never".into(), |s| format!("{s:.1} s")),
        if x_events.is_empty() {
            "none".into()
        } else {
            x_events.join(", ")
        }
    ));
    j.check(
        x_gaps == 0 && delivered_at.is_some(),
        format!(
            "{xid}'s rows complete across the partition (windows {}..={end}): {x_gaps} missing",
            base.start()
        ),
    );
    j.check(
        x_received == 0,
        format!("{xid} got {x_received} replies while cut off"),
    );

    // Recovery: registered again within the bound (ZooKeeper was out of x's reach as long as
    // the partition lasted), then measured.
    let bound = reregister_bound(t.conn_timeout);
    let reg_s = registered_at.map(|r| secs(r.saturating_duration_since(h_at)));
    j.fig("reregister_bound_s", secs(bound));
    j.check(
        reg_s.is_some_and(|s| s <= secs(bound)),
        format!(
            "{xid} registered again {} after healing (bound {:.0} s, BACKOFF_CAP + CONN_TIMEOUT)",
            reg_s.map_or("never".into(), |s| format!("{s:.1} s")),
            secs(bound)
        ),
    );
    away.judge_return(j, &w, pairs);
    j.bystanders(&w, pairs, &xid, *base.start()..=end);
    Ok(())
}
