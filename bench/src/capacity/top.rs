//! Where the time goes at the highest offered rate: `perf stat` (syscalls, context switches),
//! `strace -c` and `perf record` of both processes while the sender runs unbounded.

use std::path::Path;
use std::time::Duration;

use anyhow::Result;
use nix::sys::signal::Signal;
use serde_json::{Value, json};

use super::decompose::{WHO, perf_profile};
use super::measure::{Use, stamps_of, usage};
use super::plan::plan_step;
use super::step::Pair;
use super::{RATES, Settings};
use crate::numbers::fmt_rate;
use crate::profile::{PerfStat, both, parse_strace, per_probe_breakdown, perf_stat, strace_counts};
use crate::report::ScenarioReport;
use crate::scenario::{pause, progress};

/// What the profile at the top step found.
pub(super) struct TopProfile {
    /// The offered rate, probes/s.
    pub(super) top: u64,
    /// The sender's achieved rate (t1) while perf stat ran.
    pub(super) rate: f64,
    pub(super) sender: Use,
    pub(super) reflector: Use,
    /// perf stat's readings and the rates, for the JSON.
    pub(super) data: Value,
    pub(super) syscalls_per_probe: [f64; 2],
    pub(super) switches_per_probe: [f64; 2],
    /// strace's syscalls per probe by name.
    pub(super) breakdown: [String; 2],
    /// % of perf record's samples in the kernel.
    pub(super) kernel_share: [f64; 2],
}

/// Runs the sender at the highest offered rate and profiles both processes, in this order:
/// perf stat (with the CPU and rates around it), strace, perf record; evidence into `rep`.
pub(super) fn profile_top(
    rep: &mut ScenarioReport,
    pair: &Pair,
    set: &Settings,
    dir: &Path,
) -> Result<TopProfile> {
    let top = *RATES.last().expect("rates");
    progress(format!(
        "capacity: profiling at {} probes/s offered",
        fmt_rate(top as f64)
    ));
    let (prof_s, rpid) = (set.prof_s, pair.reflector_pid);
    let (mut ping, spid, sc) = pair.start_ping(top, 0)?;
    pause(Duration::from_secs_f64(set.settle))?;
    let p0 = pair.sample(spid, &sc)?;
    let r0 = stamps_of(pair.reflector_counters)?.0[1];
    let stats = both(|i| perf_stat([spid, rpid][i], prof_s as f64));
    let p1 = pair.sample(spid, &sc)?;
    let r1 = stamps_of(pair.reflector_counters)?.0[1];
    let prof_secs = (p1.at - p0.at).as_secs_f64();
    let prof_rate = p1.t1.saturating_sub(p0.t1) as f64 / prof_secs;
    let prof_refl_rate = r1.saturating_sub(r0) as f64 / prof_secs;
    let mut prof = TopProfile {
        top,
        rate: prof_rate,
        sender: usage(p0.sender, p1.sender, prof_secs),
        reflector: usage(p0.reflector, p1.reflector, prof_secs),
        data: json!({ "rate": prof_rate, "reflector_rate": prof_refl_rate }),
        syscalls_per_probe: [f64::NAN; 2],
        switches_per_probe: [f64::NAN; 2],
        breakdown: [String::new(), String::new()],
        kernel_share: [f64::NAN; 2],
    };
    prof.perf_stat_evidence(rep, stats, prof_refl_rate, prof_s);
    prof.strace(rep, [spid, rpid], prof_s);
    prof.perf_record(rep, [spid, rpid], prof_s, dir);
    let _ = ping.stop_with(Signal::SIGINT, Duration::from_secs(5));
    drop(ping);
    drop(sc);
    Ok(prof)
}

impl TopProfile {
    /// Syscalls and context switches per probe from perf stat of both processes (`stats`).
    fn perf_stat_evidence(
        &mut self,
        rep: &mut ScenarioReport,
        stats: [Result<PerfStat>; 2],
        refl_rate: f64,
        prof_s: u64,
    ) {
        let mut evidence_rows = Vec::new();
        let [ps, pr] = stats;
        for (i, (who, r, rate)) in [("sender", &ps, self.rate), ("reflector", &pr, refl_rate)]
            .into_iter()
            .enumerate()
        {
            match r {
                Ok(p) => {
                    let probes = rate * p.elapsed_s;
                    self.syscalls_per_probe[i] = p.syscalls / probes;
                    self.switches_per_probe[i] = p.switches / probes;
                    evidence_rows.push(format!(
                        "{who}: {:.0} syscalls/s, {:.2} per probe; {:.0} context switches/s, \
                         {:.3} per probe; task-clock {:.2} cores ({:.0} probes/s over {:.2} s)",
                        p.syscalls / p.elapsed_s,
                        self.syscalls_per_probe[i],
                        p.switches / p.elapsed_s,
                        self.switches_per_probe[i],
                        p.task_clock_ms / 1000.0 / p.elapsed_s,
                        rate,
                        p.elapsed_s
                    ));
                    self.data[who] = json!(p);
                }
                Err(e) => evidence_rows.push(format!("{who}: perf stat failed: {e:#}")),
            }
        }
        rep.evidence.push((
            format!(
                "perf stat at {} probes/s offered ({} sessions), {prof_s} s",
                fmt_rate(self.top as f64),
                plan_step(self.top).0
            ),
            evidence_rows.join("\n"),
        ));
    }

    /// `strace -c -f` of both processes: the syscalls per probe by name.
    fn strace(&mut self, rep: &mut ScenarioReport, pids: [u32; 2], prof_s: u64) {
        let traces = both(|i| strace_counts(pids[i], prof_s, 14));
        for (i, (who, r)) in ["sender", "reflector"].into_iter().zip(traces).enumerate() {
            match r {
                Ok(s) => {
                    self.breakdown[i] =
                        per_probe_breakdown(&parse_strace(&s), self.syscalls_per_probe[i]);
                    rep.evidence
                        .push((format!("strace -c -f of the {who}, {prof_s} s"), s));
                }
                Err(e) => rep.note(format!("strace of the {who} failed: {e:#}")),
            }
        }
    }

    /// `perf record` of both processes: the kernel's share of the samples, top symbols.
    fn perf_record(&mut self, rep: &mut ScenarioReport, pids: [u32; 2], prof_s: u64, dir: &Path) {
        let profiles = both(|i| perf_profile(pids[i], prof_s, dir, WHO[i]));
        for (i, (who, r)) in ["sender", "reflector"]
            .into_iter()
            .zip(profiles)
            .enumerate()
        {
            match r {
                Ok((k, txt)) => {
                    self.kernel_share[i] = k;
                    rep.evidence.push((
                        format!(
                            "perf record -e cpu-clock -g of the {who}, {prof_s} s: {k:.0} % of \
                             samples in the kernel; top symbols"
                        ),
                        txt,
                    ));
                }
                Err(e) => rep.note(format!("perf record of the {who} failed: {e:#}")),
            }
        }
    }
}
