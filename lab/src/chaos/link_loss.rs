//! link-loss: one link loses a known share of packets, and only that link.

use super::*;

pub(super) fn link_loss(
    lab: &mut Lab,
    c: &mut Ctx,
    (a, b): (usize, usize),
    loss: f64,
) -> Result<()> {
    let Ctx(t, base, pairs, log, j) = c;
    let (lo, hi) = (a.min(b), a.max(b));
    let old = lab.spec.shape(lo, hi);
    let new = Shape {
        loss_pct: loss,
        ..old
    };
    let lossy = expected_loss(lab.spec.clone());
    let what = format!("dropping {loss} % {}→{}", node_name(lo), node_name(hi));
    // The rule stops dropping before its counter is read: the count is final.
    let read = |lab: &Lab| lab.links.stop_loss(lab.star(), lo, hi);
    let (s, dropped) = change_link(lab, log, (lo, hi), [old, new], LOSS_WINDOWS, &what, read)?;
    let (c0, c1, r0, r1) = (s.on, s.on1, s.off, s.off1);
    let dropped = dropped?.context("the nft loss rule has no counter")?;
    let last = r1 + 2;
    let w = read_complete(lab, pairs, *base.start()..=last)?;

    let full = c1 + 1..=r0 - 1;
    let p = loss / 100.0;
    let mut in_bound = true;
    let (req, rep) = (pair(lo, hi), pair(hi, lo));
    for (pr, crossing) in [(&req, "its requests"), (&rep, "its replies")] {
        let (sent, lost) = w.loss(pr, full.clone());
        let obs = pct(sent, lost);
        let sigma = if sent == 0 {
            f64::INFINITY
        } else {
            (p * (1.0 - p) / sent as f64).sqrt() * 100.0
        };
        in_bound &= sent > 0 && (obs - loss).abs() <= LOSS_SIGMAS * sigma;
        j.fig(format!("loss_pct.{}", key(pr)), obs);
        j.fig(format!("sigma_pct.{}", key(pr)), sigma);
        j.note(format!(
            "{}: {lost} of {sent} probes lost in windows {full:?} = {obs:.1} % (set {loss} %, \
             σ {sigma:.1} %, {:+.1} σ); {crossing} cross the rule",
            arrow(pr),
            (obs - loss) / sigma,
        ));
    }
    j.check(
        in_bound,
        format!("both directions lost {loss} % within {LOSS_SIGMAS:.0} σ over windows {full:?}"),
    );
    // Every packet the rule dropped is one lost probe (a dropped request or a dropped reply).
    let lost_both = |r: RangeInclusive<u64>| w.loss(&req, r.clone()).1 + w.loss(&rep, r).1;
    let around = c0..=r1 + 1;
    let lost_total = lost_both(around.clone());
    j.fig("nft_dropped", dropped as f64);
    j.fig("lost_total", lost_total as f64);
    j.note(format!(
        "the nft rule dropped {dropped} packets; the two directions counted {lost_total} lost \
         probes in windows {around:?} (probes time out after {:.0} s)",
        secs(t.probe_timeout)
    ));
    if old.loss_pct == 0.0 {
        // Only probe traffic is UDP between nodes, each probe crosses the rule once each way
        // (a dropped request or a dropped reply), and the count was read after the rule
        // stopped: one lost probe per dropped packet, exactly.
        j.check(
            lost_total == dropped,
            format!("every dropped packet is a lost probe: {lost_total} lost vs {dropped} dropped"),
        );
        let after_restore = lost_both(r1 + 2..=last);
        j.fig("lost_after_restore", after_restore as f64);
        j.check(
            after_restore == 0,
            format!(
                "{after_restore} probes lost in window(s) {}, a window after the restore",
                ranges(&(r1 + 2..=last).collect::<Vec<_>>())
            ),
        );
    }
    let rest: Vec<Pair> = pairs
        .iter()
        .filter(|p| **p != req && **p != rep)
        .cloned()
        .collect();
    let what = format!("the {} other pairs", rest.len());
    j.untouched(&w, &rest, *base.start()..=last, &lossy, &what);
    Ok(())
}
