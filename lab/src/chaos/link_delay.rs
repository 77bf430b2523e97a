//! link-delay: one link gets slower by a known delay, and only that link.

use super::*;

/// Each window's p50 of `p` in `r` (ns), one run per window: a summary carries no spread of
/// its own, so the noise a [`Shift`] of these sees is the drift between windows.
pub(super) fn window_runs(w: &Windows, p: &Pair, r: RangeInclusive<u64>) -> Vec<Vec<i64>> {
    w.of(p, r)
        .iter()
        .filter_map(|o| o.p50_ns)
        .map(|v| vec![v])
        .collect()
}

/// `|shift| − tolerance` in µs: above 0, the shift is outside the pair's own noise.
pub(super) fn excess_us(s: &Shift) -> f64 {
    (s.added.abs() - s.tolerance()) as f64 / 1e3
}

pub(super) fn link_delay(
    lab: &mut Lab,
    c: &mut Ctx,
    (a, b): (usize, usize),
    add: Duration,
) -> Result<()> {
    let Ctx(_, base, pairs, log, j) = c;
    let old = lab.spec.shape(a, b);
    let new = Shape {
        rtt: old.rtt + add,
        ..old
    };
    let what = format!(
        "{} → {} of added RTT",
        fmt_duration(old.rtt),
        fmt_duration(new.rtt)
    );
    let (s, ()) = change_link(lab, log, (a, b), [old, new], DELAY_WINDOWS, &what, |_| ())?;
    let (c0, c1, r0, r1) = (s.on, s.on1, s.off, s.off1);
    let phases = [base.clone(), c1 + 1..=c1 + DELAY_WINDOWS, r1 + 1..=r1 + 2];
    let range = *base.start()..=r1 + 2;
    let w = read_complete(lab, pairs, range.clone())?;

    let add_ns = add.as_nanos() as i64;
    let add_us = add_ns as f64 / 1e3;
    j.fig("added_us", add_us);
    // Median shift of `p` from the baseline to phase `k` (1 during, 2 after), against the noise
    // of those windows themselves.
    let shift = |p: &Pair, k: usize| -> Option<Shift> {
        let runs = |r: &RangeInclusive<u64>| window_runs(&w, p, r.clone());
        Shift::of(&runs(&phases[0]), &runs(&phases[k]))
    };
    // What a defect would do to a pair that should not move: the restored pair keeping the
    // added RTT; another pair getting a hold meant for this one, half the RTT (one way).
    let (if_kept, if_leaked) = (add_ns, add_ns / 2);
    let (pa, pb) = (pair(a, b), pair(b, a));
    let mut max_err: f64 = 0.0;
    let mut max_rise_w: f64 = 0.0;
    let mut max_restored: f64 = 0.0;
    let mut restored_excess = f64::NEG_INFINITY;
    let mut restored_bad = Vec::new();
    // The first window of `p` in `r` whose p50 (µs) passes `test`.
    let first = |p: &Pair, r: RangeInclusive<u64>, test: &dyn Fn(f64) -> bool| {
        w.of(p, r)
            .iter()
            .find(|o| o.p50_ns.is_some_and(|v| test(v as f64 / 1000.0)))
            .map(|o| o.seq)
    };
    for p in [&pa, &pb] {
        let (Some([before, dur, aft]), Some(rise), Some(back)) =
            (j.medians(&w, p, &phases), shift(p, 1), shift(p, 2))
        else {
            j.note(format!("{}: no p50 in some phase", arrow(p)));
            j.check(false, format!("{} measured in every phase", arrow(p)));
            continue;
        };
        let err = (rise.added - add_ns).abs() as f64 / add_ns as f64 * 100.0;
        max_err = max_err.max(err);
        // Risen: p50 shows at least half of the added RTT.
        let rose = first(p, c0..=*phases[1].end(), &|us| us - before >= add_us / 2.0);
        let fell = first(p, r0..=*phases[2].end(), &|us| us - before < add_us / 2.0);
        max_rise_w = max_rise_w.max(rose.map_or(f64::INFINITY, |f| f.saturating_sub(c0) as f64));
        max_restored = max_restored.max((aft - before).abs());
        restored_excess = restored_excess.max(excess_us(&back));
        j.fig(format!("rise_us.{}", key(p)), rise.added as f64 / 1e3);
        j.fig(
            format!("rise_tolerance_us.{}", key(p)),
            rise.tolerance() as f64 / 1e3,
        );
        j.note(format!(
            "{}: median p50 {before:.0} µs before, {dur:.0} µs during, {aft:.0} µs after; \
             during: {} ({err:.1} % off the {add_us:.0} µs added); after: {}; rose in window {} \
             (change in window {c0}), fell back in window {}",
            arrow(p),
            rise.report(),
            back.report(),
            rose.map_or("never".into(), |f| f.to_string()),
            fell.map_or("never".into(), |f| f.to_string())
        ));
        let timely = rose.is_some_and(|f| f <= c1 + 1);
        match rise.check_added(add_ns, add_ns * DELAY_SLACK_PCT / 100, &arrow(p)) {
            Ok(()) => j.check(
                timely,
                format!(
                    "{} rose by the added {} (measured +{:.0} µs, tolerance ±{:.0} µs) from \
                     window +{} after the change",
                    arrow(p),
                    fmt_duration(add),
                    rise.added as f64 / 1e3,
                    rise.tolerance() as f64 / 1e3,
                    rose.map_or("never".into(), |f| (f - c0).to_string())
                ),
            ),
            Err(e) => j.check(false, format!("{e:#}")),
        };
        if let Err(e) = back.check_unchanged(if_kept, &format!("{} after the restore", arrow(p))) {
            restored_bad.push(format!("{e:#}"));
        }
    }
    j.fig("rise_err_pct.max", max_err);
    j.fig("rise_window.max", max_rise_w);

    // Every other pair, during and after, against its own noise.
    let mut max_shift: f64 = 0.0;
    let mut max_after: f64 = 0.0;
    let mut others_excess = f64::NEG_INFINITY;
    let mut others_bad = Vec::new();
    let mut lines = Vec::new();
    for p in pairs.iter().filter(|p| **p != pa && **p != pb) {
        let (Some([before, dur, aft]), Some(during), Some(after)) =
            (j.medians(&w, p, &phases), shift(p, 1), shift(p, 2))
        else {
            others_bad.push(format!("{}: no p50 in some phase", arrow(p)));
            continue;
        };
        max_shift = max_shift.max((dur - before).abs());
        max_after = max_after.max((aft - before).abs());
        others_excess = others_excess.max(excess_us(&during));
        restored_excess = restored_excess.max(excess_us(&after));
        lines.push(format!(
            "{} {before:.0}/{dur:.0}/{aft:.0} (±{:.0}/±{:.0})",
            arrow(p),
            during.tolerance() as f64 / 1e3,
            after.tolerance() as f64 / 1e3
        ));
        if let Err(e) = during.check_unchanged(if_leaked, &format!("{} during", arrow(p))) {
            others_bad.push(format!("{e:#}"));
        }
        if let Err(e) = after.check_unchanged(if_leaked, &format!("{} after the restore", arrow(p)))
        {
            restored_bad.push(format!("{e:#}"));
        }
    }
    j.note(format!(
        "other pairs, median p50 µs before/during/after (tolerance during/after, {NOISE_K}× the \
         spread of their window p50s): {}",
        lines.join(", ")
    ));
    j.fig("others_max_shift_us", max_shift);
    j.fig("restored_max_shift_us", max_after.max(max_restored));
    j.fig("others_max_excess_us", others_excess);
    j.fig("restored_max_excess_us", restored_excess);
    j.check(
        others_bad.is_empty(),
        if others_bad.is_empty() {
            format!(
                "the {} other pairs stayed within their noise during the change (largest move \
                 {max_shift:.0} µs)",
                pairs.len() - 2
            )
        } else {
            others_bad.join("; ")
        },
    );
    j.check(
        restored_bad.is_empty(),
        if restored_bad.is_empty() {
            format!(
                "all pairs back within their noise after the restore (largest move \
                 {:.0} µs)",
                max_after.max(max_restored)
            )
        } else {
            restored_bad.join("; ")
        },
    );
    let h = Health::of(&w, pairs, range.clone(), &|_| false);
    if !h.clean() {
        j.note(h.describe(&format!("all {} pairs", pairs.len()), &range));
    }
    j.summarised_once(&h, &range);
    Ok(())
}
