//! The verdict: the first step that failed, where the sender saturated, the profile's
//! numbers, the cause of a missed goal and the goal itself.

use serde_json::Value;

use super::decompose::Decomposition;
use super::measure::{CpuUse, Use};
use super::step::Step;
use super::top::TopProfile;
use super::{GOAL_PER_CORE, RATES, Settings, TIMEOUT_S};
use crate::numbers::fmt_rate;
use crate::profile::{Split, us_share};
use crate::report::ScenarioReport;

/// The notes of the verdict and the goal, in the report's order.
pub(super) fn judge(
    rep: &mut ScenarioReport,
    set: &Settings,
    steps: &[Step],
    cap: Option<usize>,
    decomp: Option<&Decomposition>,
    p: &TopProfile,
    refl_sum: &Value,
) {
    let first_fail = first_fail(rep, steps);
    let saturation = saturation(steps, set);
    if let Some(t) = &saturation {
        rep.note(format!(
            "The first step the sender did not keep up with: {t}; above it the achieved rate is \
             what the pair managed, not the schedule."
        ));
    }
    rep.note(profile_note(p));
    rep.note(format!(
        "Reflector over the whole scenario: {} requests, {} replies, {} send errors.",
        refl_sum["requests"], refl_sum["replies"], refl_sum["send_errors"]
    ));
    let cause_tail = cause_tail(first_fail, saturation.as_deref(), decomp, p);
    goal(rep, steps, cap, &cause_tail);
}

/// The first step that did not hold, noted with where its probes were lost.
fn first_fail<'a>(rep: &mut ScenarioReport, steps: &'a [Step]) -> Option<&'a Step> {
    let first_fail = steps.iter().find(|s| !s.holds);
    if let Some(f) = first_fail {
        rep.note(format!(
            "First step that did not hold: {} offered, {} achieved, {} of {} probes incomplete \
             ({:.3} %): stamps t1..t4 {:?}, {} replies, {} lost after {TIMEOUT_S} s; lost: {}.",
            fmt_rate(f.offered as f64),
            fmt_rate(f.achieved),
            f.missing,
            f.sent,
            f.pct(f.missing),
            f.stamps,
            f.received,
            f.lost,
            loss_stages(f.sent, f.stamps, f.received)
        ));
    }
    first_fail
}

/// The first step the sender did not keep up with, and which CPU was busy.
fn saturation(steps: &[Step], set: &Settings) -> Option<String> {
    let (scpu, rcpu) = (set.scpu, set.rcpu);
    let saturated = steps.iter().find(|s| s.achieved < s.offered as f64 * 0.95);
    saturated.map(|s| {
        let busy = |u: &Use, c: &CpuUse| u.cores >= 0.9 || c.busy >= 0.9;
        let which = match (
            busy(&s.sender, &s.cpu_sender),
            busy(&s.reflector, &s.cpu_reflector),
        ) {
            (true, true) => "both CPUs saturated",
            (true, false) => "the sender's CPU saturated",
            (false, true) => "the reflector's CPU saturated",
            (false, false) => "neither CPU saturated by these readings",
        };
        format!(
            "at {} probes/s offered the pair achieved {} ({which}: sender process {:.0} % of a \
             core, CPU {scpu} {:.0} % busy; reflector process {:.0} %, CPU {rcpu} {:.0} % busy)",
            fmt_rate(s.offered as f64),
            fmt_rate(s.achieved),
            s.sender.cores * 100.0,
            s.cpu_sender.busy * 100.0,
            s.reflector.cores * 100.0,
            s.cpu_reflector.busy * 100.0,
        )
    })
}

/// The profile at the top step in one note: CPU, kernel shares, syscalls and switches.
fn profile_note(p: &TopProfile) -> String {
    format!(
        "Profile at the top step ({} probes/s offered, {} achieved): sender {:.0} % of a core, \
         reflector {:.0} %; kernel share of the CPU (utime/stime) sender {:.0} %, reflector {:.0} %; perf \
         samples in the kernel: sender {:.0} %, reflector {:.0} %. Syscalls per probe: sender \
         {:.2}, reflector {:.2}; context switches per probe: sender {:.3}, reflector {:.3}.",
        fmt_rate(p.top as f64),
        fmt_rate(p.rate),
        p.sender.cores * 100.0,
        p.reflector.cores * 100.0,
        p.sender.sys_share * 100.0,
        p.reflector.sys_share * 100.0,
        p.kernel_share[0],
        p.kernel_share[1],
        p.syscalls_per_probe[0],
        p.syscalls_per_probe[1],
        p.switches_per_probe[0],
        p.switches_per_probe[1],
    )
}

/// What the goal's verdict gives as the cause: where the CPU goes, saturation, the first
/// failed step, syscalls.
fn cause_tail(
    first_fail: Option<&Step>,
    saturation: Option<&str>,
    decomp: Option<&Decomposition>,
    p: &TopProfile,
) -> String {
    let kern = {
        let (s, r) = (p.sender.sys_share, p.reflector.sys_share);
        (s * p.sender.cores + r * p.reflector.cores) / (p.sender.cores + p.reflector.cores)
    };
    let syscalls = format!(
        "at the top step {:.2} syscalls per probe in the sender ({}) and {:.2} in the reflector \
         ({}), {:.3} / {:.3} context switches per probe (perf stat), {:.0} % of the two \
         processes' CPU in the kernel (utime/stime)",
        p.syscalls_per_probe[0],
        or_na(&p.breakdown[0]),
        p.syscalls_per_probe[1],
        or_na(&p.breakdown[1]),
        p.switches_per_probe[0],
        p.switches_per_probe[1],
        kern * 100.0,
    );
    let where_it_goes = match decomp {
        Some(d) => {
            let runs: f64 = (0..4).map(|i| d.runs_per_probe(i)).sum();
            let t = d.total();
            // Mean ns per run above the floor over the four hooks.
            let ns = if runs > 0.0 {
                t.ebpf * 1000.0 / runs
            } else {
                f64::NAN
            };
            cause_split(t, runs, ns, d.floor.is_some())
        }
        None => "the CPU per probe was not decomposed (see the notes)".to_string(),
    };
    let fail = first_fail.map(|f| {
        format!(
            "the {} probes/s step did not hold ({:.3} % incomplete; lost {})",
            fmt_rate(f.offered as f64),
            f.pct(f.missing),
            loss_stages(f.sent, f.stamps, f.received)
        )
    });
    [
        Some(where_it_goes),
        saturation.map(str::to_string),
        fail,
        Some(syscalls),
    ]
    .into_iter()
    .flatten()
    .collect::<Vec<_>>()
    .join("; ")
}

/// The capacity note and the goal (per core over both processes).
fn goal(rep: &mut ScenarioReport, steps: &[Step], cap: Option<usize>, cause_tail: &str) {
    match cap {
        Some(i) => {
            let s = &steps[i];
            let per_core = s.per_core();
            let met = per_core >= GOAL_PER_CORE;
            rep.note(format!(
                "Capacity: {} probes/s (the {} probes/s step), {:.3} % incomplete; CPU {:.0} % \
                 (sender) + {:.0} % (reflector) of a core = {:.2} µs per probe, i.e. {:.2} % of a \
                 core per 1000 probes/s. Per core, two readings: over both processes (the \
                 strict one, judged against the goal) {} probes/s per core; per process {} \
                 probes/s per core (sender) and {} (reflector). With ksoftirqd ({:.1} %) \
                 counted too, {} probes/s per core.",
                fmt_rate(s.achieved),
                fmt_rate(s.offered as f64),
                s.pct(s.missing),
                s.sender.cores * 100.0,
                s.reflector.cores * 100.0,
                s.us_per_probe(),
                s.us_per_probe() / 10.0,
                fmt_rate(per_core),
                fmt_rate(s.achieved / s.sender.cores),
                fmt_rate(s.achieved / s.reflector.cores),
                s.ksoftirqd_cores * 100.0,
                fmt_rate(s.achieved / (s.cores() + s.ksoftirqd_cores)),
            ));
            rep.goal(
                "probes/s per core",
                "≥ 200 000 (≤ 0.1 % incomplete)",
                format!(
                    "{} per core over both processes (capacity {} probes/s at {:.0} % + {:.0} % \
                     of a core, {:.2} µs CPU per probe); per process: {} (sender), {} \
                     (reflector)",
                    fmt_rate(per_core),
                    fmt_rate(s.achieved),
                    s.sender.cores * 100.0,
                    s.reflector.cores * 100.0,
                    s.us_per_probe(),
                    fmt_rate(s.achieved / s.sender.cores),
                    fmt_rate(s.achieved / s.reflector.cores),
                ),
                met,
                Some(format!(
                    "{} per core counted over both processes, {} short of the goal; {cause_tail}",
                    fmt_rate(per_core),
                    fmt_rate(GOAL_PER_CORE - per_core),
                )),
            );
        }
        None => rep.goal(
            "probes/s per core",
            "≥ 200 000 (≤ 0.1 % incomplete)",
            "no step held",
            false,
            Some(format!(
                "even {} probes/s left more than 0.1 % of probes incomplete; {cause_tail}",
                fmt_rate(RATES[0] as f64)
            )),
        ),
    }
}

/// The cause sentence of the verdict: where the CPU of a probe goes, both processes together.
fn cause_split(t: Split, runs_per_probe: f64, ns_per_run: f64, floor_known: bool) -> String {
    let allowed = 1e6 / GOAL_PER_CORE;
    let kernel = t.ebpf + t.rest;
    format!(
        "of {:.2} µs of CPU per probe (both processes), {} is user space (meshprobe's own code, \
         libc, the vDSO), {} its eBPF programs ({:.1} stamping program runs per probe at {:.0} ns \
         each{}), {} the rest of the kernel (the UDP/IP/veth path of the request and the reply, \
         syscall entry/exit, wake-ups); the goal allows {allowed:.2} µs per probe, and the \
         kernel's part alone (eBPF + rest) is {kernel:.2} µs{}",
        t.total,
        us_share(t.user, t.total),
        us_share(t.ebpf, t.total),
        runs_per_probe,
        ns_per_run,
        if floor_known {
            ", less the accounting's floor"
        } else {
            " as the kernel accounts them (floor included)"
        },
        us_share(t.rest, t.total),
        if kernel > allowed {
            ", more than that by itself"
        } else {
            ""
        },
    )
}

/// Where a step's incomplete probes were lost, from the successive counts sent → t1 → t2 → t3
/// → t4 → received: "(n) stage" for each drop, e.g. "37102 between T2 and T3 (at the
/// reflector: stamped on arrival, never answered)".
fn loss_stages(sent: u64, stamps: [u64; 4], received: u64) -> String {
    const STAGES: [&str; 5] = [
        "before T1 (never left the sender)",
        "between T1 and T2 (on the way out)",
        "between T2 and T3 (at the reflector: stamped on arrival, never answered)",
        "between T3 and T4 (on the way back)",
        "between T4 and the sender's socket (stamped on arrival, never read)",
    ];
    let counts = [sent, stamps[0], stamps[1], stamps[2], stamps[3], received];
    let parts: Vec<String> = (0..5)
        .filter(|&i| counts[i] > counts[i + 1])
        .map(|i| format!("{} {}", counts[i] - counts[i + 1], STAGES[i]))
        .collect();
    if parts.is_empty() {
        "none".into()
    } else {
        parts.join(", ")
    }
}

/// `t`, or "n/a" when empty.
fn or_na(t: &str) -> String {
    if t.is_empty() {
        "n/a".to_string()
    } else {
        t.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_split() {
        let c = cause_split(Split::new(7.0, 0.1, 0.4), 4.0, 100.0, true);
        assert!(c.starts_with("of 7.00 µs of CPU per probe"), "{c}");
        assert!(c.contains("0.70 µs (10 %) is user space"), "{c}");
        assert!(c.contains("0.40 µs (6 %) its eBPF programs (4.0 stamping program runs"));
        assert!(c.contains("5.90 µs (84 %) the rest of the kernel"), "{c}");
        assert!(
            c.contains("(eBPF + rest) is 6.30 µs, more than that by itself"),
            "{c}"
        );
        let c = cause_split(Split::new(4.0, 0.5, 0.4), 4.0, 100.0, false);
        assert!(c.ends_with("is 2.00 µs"), "{c}");
        assert!(c.contains("floor included"), "{c}");
    }

    #[test]
    fn not_available() {
        assert_eq!(or_na(""), "n/a");
        assert_eq!(or_na("x"), "x");
    }

    #[test]
    fn where_probes_were_lost() {
        assert_eq!(loss_stages(10, [10; 4], 10), "none");
        assert_eq!(
            loss_stages(100, [100, 100, 90, 90], 90),
            "10 between T2 and T3 (at the reflector: stamped on arrival, never answered)"
        );
        assert_eq!(
            loss_stages(100, [99, 99, 99, 99], 97),
            "1 before T1 (never left the sender), 2 between T4 and the sender's socket \
             (stamped on arrival, never read)"
        );
    }
}
