//! The report's tables of the steps and of the decomposition, and the number formats.

use super::decompose::{Decomposition, WHO};
use super::step::Step;
use crate::numbers::fmt_rate;
use crate::profile::{HOOKS, Split, us_share};
use crate::report::{ScenarioReport, Table};

/// A table of one row per step: the offered rate, then `cells` of the step.
fn per_step_table<const N: usize>(
    title: &str,
    header: [&str; N],
    steps: &[Step],
    cells: impl Fn(&Step) -> [String; N],
) -> Table {
    let mut table = Table::new(title, &[&["offered /s"][..], &header[..]].concat());
    for s in steps {
        table.row(std::iter::once(fmt_rate(s.offered as f64)).chain(cells(s)));
    }
    table
}

pub(super) fn fmt_interval(ns: u64) -> String {
    if ns.is_multiple_of(1000) {
        format!("{} µs", ns / 1000)
    } else {
        format!("{:.1} µs", ns as f64 / 1000.0)
    }
}

/// The two per-step tables: CPU and rates, then the stamps against probes sent and received.
pub(super) fn step_tables(steps: &[Step]) -> [Table; 2] {
    [step_table(steps), stamps_table(steps)]
}

fn step_table(steps: &[Step]) -> Table {
    per_step_table(
        "Per step (CPU over the window; % = of one core; user/kernel split of each process in \
         brackets):",
        [
            "sessions × interval",
            "achieved /s",
            "sent",
            "lost %",
            "incomplete %",
            "sender CPU",
            "reflector CPU",
            "ksoftirqd",
            "whole CPUs s / r busy (irq+softirq; steal)",
            "ctx switches / probe (s + r)",
            "µs CPU / probe",
            "probes/s per core",
            "holds",
        ],
        steps,
        |s| {
            [
                format!("{} × {}", s.sessions, fmt_interval(s.interval_ns)),
                fmt_rate(s.achieved),
                format!(
                    "{}{}",
                    s.sent,
                    if s.cut {
                        format!(" (stopped at deadline, {} unresolved)", s.unresolved)
                    } else {
                        String::new()
                    }
                ),
                format!("{:.3}", s.pct(s.sent.saturating_sub(s.received))),
                format!("{:.3}", s.pct(s.missing)),
                format!(
                    "{:.0} % ({:.0}/{:.0})",
                    s.sender.cores * 100.0,
                    (1.0 - s.sender.sys_share) * 100.0,
                    s.sender.sys_share * 100.0
                ),
                format!(
                    "{:.0} % ({:.0}/{:.0})",
                    s.reflector.cores * 100.0,
                    (1.0 - s.reflector.sys_share) * 100.0,
                    s.reflector.sys_share * 100.0
                ),
                format!("{:.1} %", s.ksoftirqd_cores * 100.0),
                format!(
                    "{:.0} / {:.0} % ({:.0}/{:.0}; {:.0}/{:.0})",
                    s.cpu_sender.busy * 100.0,
                    s.cpu_reflector.busy * 100.0,
                    s.cpu_sender.irq * 100.0,
                    s.cpu_reflector.irq * 100.0,
                    s.cpu_sender.steal * 100.0,
                    s.cpu_reflector.steal * 100.0
                ),
                format!(
                    "{:.2} + {:.2}",
                    s.sender.switches_per_s / s.achieved,
                    s.reflector.switches_per_s / s.achieved
                ),
                format!("{:.2}", s.us_per_probe()),
                fmt_rate(s.per_core()),
                if s.holds { "yes" } else { "no" }.to_string(),
            ]
        },
    )
}

fn stamps_table(steps: &[Step]) -> Table {
    per_step_table(
        "Stamps per step (t1/t4 sender's programs, t2/t3 reflector's) against probes sent and \
         replies received:",
        [
            "sent",
            "t1",
            "t2",
            "t3",
            "t4",
            "received",
            "lost (timeout)",
            "stamp errors",
        ],
        steps,
        |s| {
            [
                s.sent.to_string(),
                s.stamps[0].to_string(),
                s.stamps[1].to_string(),
                s.stamps[2].to_string(),
                s.stamps[3].to_string(),
                s.received.to_string(),
                s.lost.to_string(),
                s.stamp_errors.to_string(),
            ]
        },
    )
}

/// The decomposition's tables and notes.
pub(super) fn render_decomposition(rep: &mut ScenarioReport, d: &Decomposition, step: &Step) {
    rep.tables.push(cpu_table(d, step));
    rep.tables.push(programs_table(d));
    rep.note(ebpf_note(d));
    rep.note(user_note(d));
}

/// µs of CPU per probe by part (user, eBPF, rest of the kernel), per process and both.
fn cpu_table(d: &Decomposition, step: &Step) -> Table {
    let t = d.total();
    let [s, r] = d.splits;
    let mut table = Table::new(
        &format!(
            "Where the CPU of one probe goes at the capacity step ({} probes/s offered, {} \
             achieved): µs of CPU per probe and share of the column's total",
            fmt_rate(d.rate as f64),
            fmt_rate(step.achieved)
        ),
        &["", "sender", "reflector", "both processes"],
    );
    // A row of shares: `part` of each column's split, of that column's total.
    let shares = |label: String, part: fn(&Split) -> f64| {
        let cell = |x: &Split| us_share(part(x), x.total);
        [label, cell(&s), cell(&r), cell(&t)]
    };
    table.row(shares(
        "user space (meshprobe's code, libc, vDSO)".to_string(),
        |x| x.user,
    ));
    table.row(shares(
        format!(
            "eBPF programs ({}; sender's CPU: T1, T2; reflector's: T3, T4)",
            if d.floor.is_some() {
                "kernel accounting less its floor"
            } else {
                "kernel accounting"
            }
        ),
        |x| x.ebpf,
    ));
    table.row(shares(
        "rest of the kernel (UDP/IP/veth path, syscalls, wake-ups)".to_string(),
        |x| x.rest,
    ));
    table.row([
        "total (the step's schedstat CPU / achieved rate)".to_string(),
        format!("{:.2} µs", s.total),
        format!("{:.2} µs", r.total),
        format!("{:.2} µs", t.total),
    ]);
    table
}

/// The four stamping programs: runs per probe, ns per run, the floor, what is above it.
fn programs_table(d: &Decomposition) -> Table {
    let probes = d.stats_rate * d.stats_s;
    let mut progs = Table::new(
        &format!(
            "The stamping programs at {} probes/s offered ({:.1} s with \
             kernel.bpf_stats_enabled=1, {} probes/s achieved; floor: an empty program on the \
             same hook, same window length, {} probes/s):",
            fmt_rate(d.rate as f64),
            d.stats_s,
            fmt_rate(d.stats_rate),
            fmt_rate(d.floor_rate)
        ),
        &[
            "stamp",
            "hook (program of)",
            "runs on the CPU of",
            "runs / probe",
            "ns / run (kernel accounting)",
            "empty program (floor), ns / run",
            "above the floor, ns / run",
            "µs / probe above the floor",
        ],
    );
    for (i, h) in HOOKS.iter().enumerate() {
        let ns = d.runs[i].ns_per_run();
        let floor = d.floor.map_or(f64::NAN, |f| f[i].ns_per_run());
        let net = if floor.is_finite() { ns - floor } else { ns };
        progs.row([
            h.stamp.to_string(),
            format!(
                "{} {} ({})",
                if h.holder == 0 { "A" } else { "B" },
                h.prog,
                WHO[h.holder]
            ),
            WHO[h.context].to_string(),
            format!("{:.3}", d.runs_per_probe(i)),
            format!("{ns:.0}"),
            if floor.is_finite() {
                format!("{floor:.0}")
            } else {
                "—".into()
            },
            format!("{net:.0}"),
            format!("{:.3}", net * d.runs[i].run_cnt as f64 / probes / 1000.0),
        ]);
    }
    progs
}

/// How the eBPF share was measured, and what the accounting itself cost.
fn ebpf_note(d: &Decomposition) -> String {
    let on = d.us_per_probe_stats_on;
    format!(
        "eBPF: each probe is four stamped packets' worth of program runs (T1 at the sender's \
         egress, T2 at the reflector's ingress, T3 at its egress, T4 at the sender's ingress); \
         the runs per probe above are what the kernel counted. On a veth the receive path of a \
         packet (TC ingress included) runs in the softirq of the CPU that sent it, charged to \
         the sending task, so T2 is on the sender's CPU and T4 on the reflector's. The kernel's \
         accounting adds a clock read pair to every run it times: an empty program on the same \
         hook measures that floor, and the table uses the programs' time above it ({:.2} µs per \
         probe as reported, {:.2} µs above the floor). With the accounting on, the pair used \
         {:.2} µs per probe (sender {:.2}, reflector {:.2}) against {:.2} µs with it off.",
        d.ebpf_raw[0] + d.ebpf_raw[1],
        d.ebpf_net[0] + d.ebpf_net[1],
        on[0] + on[1],
        on[0],
        on[1],
        d.step_total[0] + d.step_total[1],
    )
}

/// Where the user share comes from (perf or utime/stime), and perf's view of the BPF share.
fn user_note(d: &Decomposition) -> String {
    let share = |i: usize| d.user_share[i] * 100.0;
    let ticks = |i: usize| d.step_user_share_ticks[i] * 100.0;
    let perf_txt = match d.perf {
        [Some(ps), Some(pr)] => format!(
            "; perf's samples at the same rate ({} probes/s achieved while recorded, \
             accounting off) put {:.0} % (sender) and {:.0} % (reflector) in user space, \
             {:.0} % / {:.0} % in the kernel, and {:.1} % / {:.1} % inside the BPF programs \
             with the helpers they call, i.e. {:.2} / {:.2} µs per probe (against {:.2} / {:.2} \
             from the accounting above its floor)",
            fmt_rate(d.perf_rate),
            ps.1,
            pr.1,
            ps.0,
            pr.0,
            ps.2,
            pr.2,
            ps.2 / 100.0 * d.step_total[0],
            pr.2 / 100.0 * d.step_total[1],
            d.ebpf_net[0],
            d.ebpf_net[1],
        ),
        _ => String::new(),
    };
    format!(
        "User space vs kernel: the table's user share is {} — sender {:.0} %, reflector {:.0} % \
         of each process's CPU; utime/stime over the step's window say {:.0} % and {:.0} %{perf_txt}.",
        if d.user_from_perf {
            "perf record's (cpu-clock samples at 1999 Hz, user-mode samples over user + kernel)"
        } else {
            "utime/stime's (perf did not run)"
        },
        share(0),
        share(1),
        ticks(0),
        ticks(1),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(fmt_rate(1234567.4), "1 234 567");
        assert_eq!(fmt_rate(999.0), "999");
        assert_eq!(fmt_interval(20_000), "20 µs");
    }
}
