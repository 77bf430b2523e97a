//! Where the agent's CPU per probe goes: user space (perf or utime/stime), the stamping
//! programs (kernel accounting less its floor), the rest of the kernel; its table and the CPU
//! goal's cause.

use std::path::Path;
use std::time::Instant;

use anyhow::Result;
use serde::Serialize;

use super::samples::Samples;
use super::{GOAL_CPU_PCT, PEERS};
use crate::profile::{self, Runs, Split, StatsWindow, ebpf_per_context, us_share};
use crate::report::{ScenarioReport, Table};
use crate::scenario::progress;

/// The goal as CPU per probe, µs: 1 % of a core over [`PEERS`] probes/s.
pub(super) const GOAL_US_PER_PROBE: f64 = GOAL_CPU_PCT / 100.0 / PEERS as f64 * 1e6;

/// The agent's cost per probe sent, over the samples.
#[derive(Clone, Copy, Debug)]
pub(super) struct PerProbe {
    /// µs of CPU (schedstat, all threads).
    pub(super) total: f64,
    /// Context switches (wake-ups).
    pub(super) switches: f64,
    /// Syscalls (strace -c, when it ran).
    pub(super) syscalls: Option<f64>,
}

/// The user-mode share of the agent's CPU: perf's user samples over user + kernel when it
/// recorded (`modes`: kernel %, user %, BPF %), else utime / (utime + stime) (`ticks`); and
/// whether it came from perf.
pub(super) fn user_share(modes: Option<(f64, f64, f64)>, ticks: (u64, u64)) -> (f64, bool) {
    match modes {
        Some((k, u, _)) if k + u > 0.0 => (u / (k + u), true),
        _ if ticks.0 + ticks.1 > 0 => (ticks.0 as f64 / (ticks.0 + ticks.1) as f64, false),
        _ => (f64::NAN, false),
    }
}

/// A bpf_stats window's sample: when, probes sent so far (agent metric), the agent's
/// sum_exec_runtime (ns).
pub(super) type Mark = (Instant, f64, u64);

/// The stamping programs during the bpf_stats window and the split of the agent's CPU.
#[derive(Debug, Serialize)]
pub(super) struct Decomp {
    pub(super) stats_s: f64,
    /// Probes sent during the window.
    pub(super) probes: f64,
    /// Per hook (order of [`profile::HOOKS`]): meshprobe's program, the empty program's floor.
    pub(super) runs: [Runs; 4],
    pub(super) floor: Option<[Runs; 4]>,
    pub(super) floor_error: Option<String>,
    /// The agent's µs of CPU per probe with the accounting on.
    pub(super) us_per_probe_stats_on: f64,
    /// µs per probe in eBPF on the agent's and on the reflector's CPU, as the kernel accounts
    /// it and less the floor.
    pub(super) ebpf_raw: [f64; 2],
    pub(super) ebpf_net: [f64; 2],
    pub(super) split: Split,
}

impl Decomp {
    /// Runs per probe and ns per run of hook `i` (above the floor when it is known).
    fn ns_text(&self, i: usize) -> String {
        let raw = self.runs[i].ns_per_run();
        let floor = self.floor.map_or(f64::NAN, |f| f[i].ns_per_run());
        if floor.is_finite() {
            format!(
                "{:.2} runs/probe at {:.0} ns ({raw:.0} − floor {floor:.0})",
                self.runs_per_probe(i),
                raw - floor
            )
        } else {
            format!(
                "{:.2} runs/probe at {raw:.0} ns (floor unknown)",
                self.runs_per_probe(i)
            )
        }
    }

    pub(super) fn runs_per_probe(&self, i: usize) -> f64 {
        self.runs[i].run_cnt as f64 / self.probes
    }
}

pub(super) fn decompose(w: &StatsWindow<Mark>, total: f64, user_share: f64) -> Decomp {
    let stats_s = (w.b.0 - w.a.0).as_secs_f64();
    let probes = w.b.1 - w.a.1;
    let floor = w.floor.as_ref().ok().map(|f| f.0);
    let floor_ns = floor.map_or([0.0; 4], |f| f.map(|r| r.ns_per_run()));
    let ebpf_net = ebpf_per_context(&w.runs, &floor_ns, probes);
    Decomp {
        stats_s,
        probes,
        runs: w.runs,
        floor,
        floor_error: w.floor.as_ref().err().cloned(),
        us_per_probe_stats_on: w.b.2.saturating_sub(w.a.2) as f64 / 1000.0 / probes,
        ebpf_raw: ebpf_per_context(&w.runs, &[0.0; 4], probes),
        ebpf_net,
        split: Split::new(total, user_share, ebpf_net[0]),
    }
}

/// The breakdown table and its notes.
pub(super) fn render(
    rep: &mut ScenarioReport,
    d: &Decomp,
    w: &StatsWindow<Mark>,
    pp: PerProbe,
    s: &Samples,
    modes: Option<(f64, f64, f64)>,
) {
    rep.tables.push(breakdown_table(d, pp, s, modes));
    rep.note(ebpf_note(d, w));
}

/// µs of CPU per probe by part, with how each part was measured.
fn breakdown_table(
    d: &Decomp,
    pp: PerProbe,
    samples: &Samples,
    modes: Option<(f64, f64, f64)>,
) -> Table {
    let (cpu_sched, rate, switches, ticks) = (
        samples.cpu_sched,
        samples.rate,
        samples.switches,
        samples.ticks,
    );
    let s = d.split;
    let ns = |i: usize| d.ns_text(i);
    let mut table = Table::new(
        &format!(
            "Where the agent's CPU per probe goes ({rate:.0} probes/s sent, {cpu_sched:.2} % of \
             a core): µs of CPU per probe and share of the total"
        ),
        &["", "µs / probe", "measured by"],
    );
    table.row([
        "agent user space (meshprobe + libc)".to_string(),
        us_share(s.user, s.total),
        match modes {
            Some((k, u, _)) if s.user.is_finite() && u + k > 0.0 => format!(
                "perf record (cpu-clock, 999 Hz, 10 s): {u:.0} % of samples in user mode, \
                 {k:.0} % in the kernel"
            ),
            _ => format!(
                "utime/stime over the samples: {} / {} ticks",
                ticks.0, ticks.1
            ),
        },
    ]);
    table.row([
        "eBPF programs on the agent's CPU (T1: A's meshprobe_egress; T2: B's \
         meshprobe_ingress, run in the agent's send context)"
            .to_string(),
        us_share(s.ebpf, s.total),
        format!(
            "kernel.bpf_stats_enabled=1, {:.1} s, {}: T1 {}; T2 {}",
            d.stats_s,
            if d.floor.is_some() {
                "less an empty program's floor"
            } else {
                "floor included"
            },
            ns(0),
            ns(1)
        ),
    ]);
    table.row([
        "rest of the kernel (UDP/IP/veth, route lookups for 1000 destinations, syscalls, \
         wake-ups/context switches)"
            .to_string(),
        us_share(s.rest, s.total),
        "total − user space − eBPF".to_string(),
    ]);
    table.row([
        "total".to_string(),
        format!("{:.2} µs", s.total),
        format!(
            "schedstat CPU of all threads over the samples / probes sent (goal: ≤ \
             {GOAL_US_PER_PROBE:.0} µs)"
        ),
    ]);
    table.row([
        "wake-ups (context switches)".to_string(),
        format!("{:.2} per probe", pp.switches),
        format!("{switches:.0} per second, voluntary + involuntary, all threads"),
    ]);
    table.row([
        "syscalls".to_string(),
        pp.syscalls
            .map_or("—".to_string(), |v| format!("{v:.2} per probe")),
        "strace -c -f, 5 s (only when a goal is missed; slows the agent while attached)"
            .to_string(),
    ]);
    table
}

/// The eBPF time on both CPUs, the window's probes, and what the accounting cost.
fn ebpf_note(d: &Decomp, w: &StatsWindow<Mark>) -> String {
    let s = d.split;
    let ns = |i: usize| d.ns_text(i);
    let floor_rate = w
        .floor
        .as_ref()
        .ok()
        .map(|(_, a, b)| (b.1 - a.1) / (b.0 - a.0).as_secs_f64());
    format!(
        "eBPF per probe: {:.2} µs on the agent's CPU as the kernel accounts it, {:.2} µs above \
         the floor; on the reflector's CPU (T3: B's egress, {}; T4: A's ingress, the agent's own \
         program, run in the reflector's send context, {}) {:.2} µs above the floor, not \
         charged to the agent. {} probes sent in the {:.1} s window ({:.0}/s{}); with the \
         accounting on the agent used {:.2} µs per probe against {:.2} µs with it off.",
        d.ebpf_raw[0],
        d.ebpf_net[0],
        ns(2),
        ns(3),
        d.ebpf_net[1],
        d.probes,
        d.stats_s,
        d.probes / d.stats_s,
        match (floor_rate, &d.floor_error) {
            (Some(r), _) => format!("; {r:.0}/s during the floor's window"),
            (None, Some(e)) => format!("; no floor: {e}"),
            (None, None) => String::new(),
        },
        d.us_per_probe_stats_on,
        s.total,
    )
}

/// The CPU verdict's cause: the measured cost per probe and where it goes (`split`, with
/// whether user space came from perf), then `tail`.
pub(super) fn cpu_cause(
    cpu_sched: f64,
    rate: f64,
    pp: PerProbe,
    split: Option<(Split, bool)>,
    tail: &str,
) -> String {
    let mut out = format!(
        "{cpu_sched:.2} % of a core for {rate:.0} probes/s = {:.1} µs per probe (the goal \
         allows {GOAL_US_PER_PROBE:.0} µs)",
        pp.total
    );
    if let Some((s, perf)) = split {
        out += &format!(
            ": {} agent user space (meshprobe + libc, {}), {} eBPF programs on the agent's CPU \
             (T1 and B's T2, kernel accounting less its floor), {} the rest of the kernel \
             (UDP/IP/veth, route lookups for 1000 destinations, syscalls, wake-ups); the \
             kernel's part alone is {:.1} µs{}",
            us_share(s.user, s.total),
            if perf { "perf samples" } else { "utime/stime" },
            us_share(s.ebpf, s.total),
            us_share(s.rest, s.total),
            s.ebpf + s.rest,
            if s.ebpf + s.rest > GOAL_US_PER_PROBE {
                ", more than the goal allows by itself"
            } else {
                ""
            },
        );
    }
    out += &format!("; {:.2} context switches per probe", pp.switches);
    if let Some(v) = pp.syscalls {
        out += &format!(", {v:.2} syscalls per probe");
    }
    format!("{out}; {tail}")
}

/// The decomposition of the agent's CPU per probe from the accounting's `window` (a note
/// when it failed): (user share, whether from perf, the decomposition).
pub(super) fn decompose_cpu(
    rep: &mut ScenarioReport,
    window: Result<StatsWindow<Mark>>,
    perf_data: &Path,
    s: &Samples,
    per_probe: PerProbe,
) -> (f64, bool, Option<Decomp>) {
    let modes = if perf_data.exists() {
        profile::perf_modes(perf_data)
            .map_err(|e| progress(format!("footprint: perf report failed: {e:#}")))
            .ok()
    } else {
        None
    };
    let (user_share, user_from_perf) = user_share(modes, s.ticks);
    let decomp = match window {
        Ok(w) => {
            let d = decompose(&w, per_probe.total, user_share);
            render(rep, &d, &w, per_probe, s, modes);
            Some(d)
        }
        Err(e) => {
            rep.note(format!(
                "The decomposition of the agent's CPU per probe failed: {e:#}"
            ));
            None
        }
    };
    (user_share, user_from_perf, decomp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_space_share() {
        assert_eq!(user_share(Some((75.0, 25.0, 1.0)), (1, 1)), (0.25, true));
        assert_eq!(user_share(None, (30, 90)), (0.25, false));
        assert_eq!(user_share(Some((0.0, 0.0, 0.0)), (1, 3)), (0.25, false));
        assert!(user_share(None, (0, 0)).0.is_nan());
    }

    #[test]
    fn cause_text() {
        assert_eq!(GOAL_US_PER_PROBE, 10.0);
        let pp = PerProbe {
            total: 31.0,
            switches: 0.25,
            syscalls: Some(1.5),
        };
        let cause = |pp, split| cpu_cause(3.1, 1000.0, pp, split, "x");
        let c = cause(pp, Some((Split::new(31.0, 0.2, 0.62), true)));
        assert!(
            c.starts_with("3.10 % of a core for 1000 probes/s = 31.0 µs per probe (the goal allows 10 µs): 6.20 µs (20 %) agent user space (meshprobe + libc, perf samples), 0.62 µs (2 %) eBPF"),
            "{c}"
        );
        assert!(c.contains("24.18 µs (78 %) the rest of the kernel"), "{c}");
        assert!(
            c.contains("the kernel's part alone is 24.8 µs, more than the goal allows by itself;"),
            "{c}"
        );
        assert!(
            c.ends_with("; 0.25 context switches per probe, 1.50 syscalls per probe; x"),
            "{c}"
        );
        let c = cause(pp, Some((Split::new(9.0, 0.5, 0.5), false)));
        assert!(c.contains("utime/stime"), "{c}");
        assert!(c.contains("the kernel's part alone is 4.5 µs;"), "{c}");
        let c = cause(
            PerProbe {
                syscalls: None,
                ..pp
            },
            None,
        );
        assert_eq!(
            c,
            "3.10 % of a core for 1000 probes/s = 31.0 µs per probe (the goal allows 10 µs); \
             0.25 context switches per probe; x"
        );
    }
}
