//! The mesh's health after a fault: which pairs recovered, which windows were lost.

use super::*;

/// Problems of `pairs` in `range`: missing windows, windows without replies, lost probes (for
/// pairs not in `lossy`), duplicates.
#[derive(Default)]
pub(super) struct Health {
    pub(super) gaps: Vec<(Pair, Vec<u64>)>,
    pub(super) silent: Vec<(Pair, Vec<u64>)>,
    pub(super) lost: Vec<(Pair, u64, u64)>,
    pub(super) dups: Vec<(Pair, u64, usize)>,
    pub(super) sent: u64,
    pub(super) windows: u64,
}

impl Health {
    pub(super) fn of(
        w: &Windows,
        pairs: &[Pair],
        range: RangeInclusive<u64>,
        lossy: &dyn Fn(&Pair) -> bool,
    ) -> Health {
        if range.is_empty() {
            return Health::default();
        }
        let mut h = Health {
            windows: range.end() - range.start() + 1,
            ..Health::default()
        };
        let dups = w.duplicates();
        for p in pairs {
            let g = w.gaps(p, range.clone());
            if !g.is_empty() {
                h.gaps.push((p.clone(), g));
            }
            let silent: Vec<u64> = w
                .of(p, range.clone())
                .iter()
                .filter(|o| o.received == 0)
                .map(|o| o.seq)
                .collect();
            if !silent.is_empty() {
                h.silent.push((p.clone(), silent));
            }
            let (sent, lost) = w.loss(p, range.clone());
            h.sent += sent;
            if lost > 0 && !lossy(p) {
                h.lost.push((p.clone(), sent, lost));
            }
            let mine = dups.iter().filter(|(q, s, _)| q == p && range.contains(s));
            h.dups.extend(mine.cloned());
        }
        h
    }

    pub(super) fn gap_count(&self) -> usize {
        self.gaps.iter().map(|(_, g)| g.len()).sum()
    }

    pub(super) fn silent_count(&self) -> usize {
        self.silent.iter().map(|(_, g)| g.len()).sum()
    }

    pub(super) fn lost_count(&self) -> u64 {
        self.lost.iter().map(|(_, _, l)| l).sum()
    }

    pub(super) fn clean(&self) -> bool {
        self.gaps.is_empty()
            && self.silent.is_empty()
            && self.lost.is_empty()
            && self.dups.is_empty()
    }

    /// One line per problem, or nothing when clean.
    pub(super) fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (p, g) in &self.gaps {
            out.push(format!("{}: no summary in windows {}", arrow(p), ranges(g)));
        }
        for (p, g) in &self.silent {
            out.push(format!("{}: no reply in windows {}", arrow(p), ranges(g)));
        }
        for (p, s, l) in &self.lost {
            out.push(format!(
                "{}: {l} of {s} probes lost ({:.1} %)",
                arrow(p),
                pct(*s, *l)
            ));
        }
        for (p, s, n) in &self.dups {
            out.push(format!("{}: window {s} summarised {n} times", arrow(p)));
        }
        out
    }

    pub(super) fn describe(&self, what: &str, range: &RangeInclusive<u64>) -> String {
        if self.clean() {
            format!(
                "{what}: one summary with replies in each of windows {range:?} ({} windows), \
                 0 of {} probes lost",
                self.windows, self.sent
            )
        } else {
            format!("{what}, windows {range:?}: {}", self.problems().join("; "))
        }
    }
}

impl Judge {
    /// Figures `gaps`, `windows_without_replies`, `lost` and `duplicates` of `h`.
    pub(super) fn health_figs(&mut self, h: &Health) {
        self.fig("gaps", h.gap_count() as f64);
        self.fig("windows_without_replies", h.silent_count() as f64);
        self.fig("lost", h.lost_count() as f64);
        self.fig("duplicates", h.dups.len() as f64);
    }

    /// Exactly one summary per pair of `h` and window of `range`.
    pub(super) fn summarised_once(&mut self, h: &Health, range: &RangeInclusive<u64>) {
        self.check(
            h.gaps.is_empty() && h.dups.is_empty(),
            format!(
                "exactly one summary per pair and window {range:?}: {} missing, {} duplicated",
                h.gap_count(),
                h.dups.len()
            ),
        );
    }

    /// The pairs `rest` (`what`) the fault should not touch are clean over `range`, but for
    /// `lossy` ones' loss: a finding, `others_lost`, a check.
    pub(super) fn untouched(
        &mut self,
        w: &Windows,
        rest: &[Pair],
        range: RangeInclusive<u64>,
        lossy: &dyn Fn(&Pair) -> bool,
        what: &str,
    ) -> Health {
        let h = Health::of(w, rest, range.clone(), lossy);
        self.fig("others_lost", h.lost_count() as f64);
        self.note(h.describe(what, &range));
        self.check(
            h.clean(),
            format!(
                "{what}: {} missing windows, {} lost probes",
                h.gap_count(),
                h.lost_count()
            ),
        );
        h
    }

    /// Everybody but `xid` is [`untouched`](Judge::untouched) over `range` (`others_gaps`,
    /// `others_lost`), and no window is summarised twice anywhere on the topic (`duplicates`).
    pub(super) fn bystanders(
        &mut self,
        w: &Windows,
        pairs: &[Pair],
        xid: &str,
        range: RangeInclusive<u64>,
    ) {
        let rest: Vec<Pair> = pairs
            .iter()
            .filter(|p| !involves(p, xid))
            .cloned()
            .collect();
        let what = format!("the {} pairs not involving {xid}", rest.len());
        let h = self.untouched(w, &rest, range, &|_| false, &what);
        self.fig("others_gaps", h.gap_count() as f64);
        let dups = w.duplicates();
        self.fig("duplicates", dups.len() as f64);
        self.check(
            dups.is_empty(),
            format!("{} windows summarised twice on the topic", dups.len()),
        );
    }

    /// Median p50 of `p` in each of the `phases` (before, during, after), in µs, as
    /// `before_us.<pair>`, `during_us.<pair>`, `after_us.<pair>`; `None` if a phase has none.
    pub(super) fn medians(
        &mut self,
        w: &Windows,
        p: &Pair,
        phases: &[RangeInclusive<u64>; 3],
    ) -> Option<[f64; 3]> {
        let m = phases.each_ref().map(|r| w.median_p50_us(p, r.clone()));
        let [Some(before), Some(during), Some(after)] = m else {
            return None;
        };
        self.fig(format!("before_us.{}", key(p)), before);
        self.fig(format!("during_us.{}", key(p)), during);
        self.fig(format!("after_us.{}", key(p)), after);
        Some([before, during, after])
    }
}
