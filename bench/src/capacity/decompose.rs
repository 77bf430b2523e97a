//! Where the CPU of one probe goes at the capacity step's offered rate: perf's user/kernel
//! samples, the stamping programs' run time from the kernel's accounting less an empty
//! program's floor, the rest of the kernel by difference.

use std::path::Path;
use std::time::Duration;

use anyhow::Result;
use nix::sys::signal::Signal;
use serde::Serialize;

use super::measure::{Sample, usage};
use super::step::{Pair, Step};
use crate::numbers::fmt_rate;
use crate::profile::{self, Runs, Split, StatsWindow, both, bpf_stats_window, ebpf_per_context};
use crate::sample::held_map::HeldMap;
use crate::scenario::{pause, progress};

/// `perf record -g` of `pid` for `secs` seconds: (kernel share of samples, top symbols).
pub(super) fn perf_profile(pid: u32, secs: u64, dir: &Path, tag: &str) -> Result<(f64, String)> {
    let data = dir.join(format!("perf-{tag}.data"));
    profile::perf_record(pid, secs, 1999, &data)?;
    let kernel = profile::perf_kernel_share(&data)?;
    Ok((kernel, profile::perf_top(&data, "1.5", 18)?))
}

pub(super) const WHO: [&str; 2] = ["sender", "reflector"];

/// perf's % of samples in the kernel, in user space, inside the BPF programs, per process.
type PerfModes = [Option<(f64, f64, f64)>; 2];

/// (title, text) entries for the report's evidence.
type Evidence = Vec<(String, String)>;

/// The decomposition at one offered rate.
#[derive(Debug, Serialize)]
pub(super) struct Decomposition {
    pub(super) rate: u64,
    /// Probes/s (t1) during the bpf_stats window.
    pub(super) stats_rate: f64,
    pub(super) stats_s: f64,
    /// Per hook (order of [`HOOKS`](crate::profile::HOOKS)): meshprobe's program, the empty
    /// program's floor.
    pub(super) runs: [Runs; 4],
    pub(super) floor: Option<[Runs; 4]>,
    pub(super) floor_rate: f64,
    /// µs CPU per probe of both processes with bpf_stats on.
    pub(super) us_per_probe_stats_on: [f64; 2],
    /// perf at the rate (stats off): % of samples in kernel, user, BPF programs.
    pub(super) perf: PerfModes,
    pub(super) perf_rate: f64,
    /// From the capacity step: CPU per probe, user share by utime/stime.
    pub(super) step_total: [f64; 2],
    pub(super) step_user_share_ticks: [f64; 2],
    /// The user share used (perf if it ran, else utime/stime).
    pub(super) user_share: [f64; 2],
    pub(super) user_from_perf: bool,
    /// µs per probe in eBPF per context, as the kernel accounts it and less the floor.
    pub(super) ebpf_raw: [f64; 2],
    pub(super) ebpf_net: [f64; 2],
    pub(super) splits: [Split; 2],
}

impl Decomposition {
    pub(super) fn total(&self) -> Split {
        self.splits[0].add(self.splits[1])
    }
    /// Program runs per probe at each hook.
    pub(super) fn runs_per_probe(&self, i: usize) -> f64 {
        let probes = self.stats_rate * self.stats_s;
        self.runs[i].run_cnt as f64 / probes
    }

    /// Puts together perf's reading (`perf` at `perf_rate`), the accounting's window `w` and
    /// the capacity `step`'s CPU per probe.
    fn build(step: &Step, perf: PerfModes, perf_rate: f64, w: StatsWindow<Sample>) -> Self {
        let (a, b, runs) = (&w.a, &w.b, w.runs);
        let stats_s = (b.at - a.at).as_secs_f64();
        let stats_rate = b.t1.saturating_sub(a.t1) as f64 / stats_s;
        let on = [
            usage(a.sender, b.sender, stats_s).cores / stats_rate * 1e6,
            usage(a.reflector, b.reflector, stats_s).cores / stats_rate * 1e6,
        ];
        let mut floor = None;
        let mut floor_rate = f64::NAN;
        match &w.floor {
            Ok((f, a, b)) => {
                floor_rate = b.t1.saturating_sub(a.t1) as f64 / (b.at - a.at).as_secs_f64();
                floor = Some(*f);
            }
            Err(e) => progress(format!(
                "capacity: could not attach the empty programs: {e}"
            )),
        }
        let probes = stats_rate * stats_s;
        let floor_ns = floor.map_or([0.0; 4], |f| f.map(|r| r.ns_per_run()));
        let ebpf_raw = ebpf_per_context(&runs, &[0.0; 4], probes);
        let ebpf_net = ebpf_per_context(&runs, &floor_ns, probes);
        let step_total = [
            step.sender.cores / step.achieved * 1e6,
            step.reflector.cores / step.achieved * 1e6,
        ];
        let step_user_share_ticks = [1.0 - step.sender.sys_share, 1.0 - step.reflector.sys_share];
        let user_from_perf = perf.iter().all(Option::is_some);
        let mut user_share = step_user_share_ticks;
        let mut splits = [Split::default(); 2];
        for i in 0..2 {
            if user_from_perf && let Some((k, u, _)) = perf[i] {
                user_share[i] = u / (k + u);
            }
            splits[i] = Split::new(step_total[i], user_share[i], ebpf_net[i]);
        }
        Decomposition {
            rate: step.offered,
            stats_rate,
            stats_s,
            runs,
            floor,
            floor_rate,
            us_per_probe_stats_on: on,
            perf,
            perf_rate,
            step_total,
            step_user_share_ticks,
            user_share,
            user_from_perf,
            ebpf_raw,
            ebpf_net,
            splits,
        }
    }
}

impl Pair<'_> {
    /// Runs the sender at `step`'s offered rate (same pinning, `-c 0`) and measures where its
    /// CPU goes: perf record of both processes (bpf_stats as found), then `secs` with
    /// `kernel.bpf_stats_enabled=1` for the programs' run time, then `floor_s` more with an
    /// empty program added on each of the four hooks (the accounting's floor).
    pub(super) fn decompose(
        &self,
        step: &Step,
        secs: f64,
        floor_s: f64,
        settle: f64,
        scratch: &Path,
    ) -> Result<(Decomposition, Evidence)> {
        let rate = step.offered;
        let (mut ping, spid, sc) = self.start_ping(rate, 0)?;
        let pids = [spid, self.reflector_pid];
        let result = (|| -> Result<(Decomposition, Evidence)> {
            pause(Duration::from_secs_f64(settle))?;
            // perf record, bpf_stats off (as during the steps).
            let (perf, perf_rate, evidence) = self.perf_modes_at(rate, spid, &sc, secs, scratch)?;
            // The programs' run time, bpf_stats on, then the accounting's floor.
            let w = bpf_stats_window(pids, self.t, secs, floor_s, || self.sample(spid, &sc))?;
            Ok((Decomposition::build(step, perf, perf_rate, w), evidence))
        })();
        let _ = ping.stop_with(Signal::SIGINT, Duration::from_secs(5));
        drop(sc);
        result
    }

    /// `perf record` of both processes for `secs` (rounded up) while the sender `spid` offers
    /// `rate`: each one's user/kernel/BPF shares, the rate while recorded, and the evidence.
    fn perf_modes_at(
        &self,
        rate: u64,
        spid: u32,
        sc: &HeldMap,
        secs: f64,
        scratch: &Path,
    ) -> Result<(PerfModes, f64, Evidence)> {
        let pids = [spid, self.reflector_pid];
        let mut evidence = Vec::new();
        let psecs = secs.ceil() as u64;
        let a = self.sample(spid, sc)?;
        let profiles = both(|i| -> Result<(String, (f64, f64, f64))> {
            let tag = format!("{}-capacity", WHO[i]);
            let (_, txt) = perf_profile(pids[i], psecs, scratch, &tag)?;
            let modes = profile::perf_modes(&scratch.join(format!("perf-{tag}.data")))?;
            Ok((txt, modes))
        });
        let b = self.sample(spid, sc)?;
        let perf_rate = b.t1.saturating_sub(a.t1) as f64 / (b.at - a.at).as_secs_f64();
        let mut perf = [None, None];
        for (i, r) in profiles.into_iter().enumerate() {
            match r {
                Ok((txt, m)) => {
                    perf[i] = Some(m);
                    evidence.push((
                        format!(
                            "perf record -e cpu-clock -g of the {} at the capacity step ({} \
                             probes/s offered), {psecs} s: {:.0} % of samples in the kernel, \
                             {:.0} % in user space, {:.1} % inside the BPF programs (with \
                             their helpers); top symbols",
                            WHO[i],
                            fmt_rate(rate as f64),
                            m.0,
                            m.1,
                            m.2
                        ),
                        txt,
                    ));
                }
                Err(e) => progress(format!(
                    "capacity: perf record of the {} failed: {e:#}",
                    WHO[i]
                )),
            }
        }
        Ok((perf, perf_rate, evidence))
    }
}
