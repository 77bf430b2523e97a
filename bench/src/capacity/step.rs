//! One step: the pair that runs it (sender started per step, reflector for the whole
//! scenario) and what a step measured.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use meshprobe_harness::meshprobe::READY_TIMEOUT;
use meshprobe_harness::{ChildGuard, Meshprobe, TwoHosts};
use nix::sys::signal::Signal;
use serde::Serialize;

use super::TIMEOUT_S;
use super::measure::{CpuUse, Sample, Use, cpu_use, sample, stamps_of, usage};
use super::plan::{holds, missing, plan_step};
use crate::sample::held_map::HeldMap;
use crate::scenario::pause;

#[derive(Debug, Serialize)]
pub(super) struct Step {
    pub(super) offered: u64,
    pub(super) sessions: u64,
    pub(super) interval_ns: u64,
    /// Probes asked for (`-c` per session × sessions).
    pub(super) count: u64,
    pub(super) sent: u64,
    pub(super) received: u64,
    pub(super) lost: u64,
    /// Neither answered nor timed out when the sender was stopped (only when it had to be).
    pub(super) unresolved: u64,
    /// The run had to be stopped at its deadline.
    pub(super) cut: bool,
    /// t1..t4 stamped for this step's probes.
    pub(super) stamps: [u64; 4],
    /// Any err_* counter of either side during the step.
    pub(super) stamp_errors: u64,
    pub(super) missing: u64,
    pub(super) holds: bool,
    /// Window: seconds, achieved rate (t1 counter), CPU.
    pub(super) window_s: f64,
    pub(super) achieved: f64,
    pub(super) sender: Use,
    pub(super) reflector: Use,
    /// Both ksoftirqd threads, fraction of one core.
    pub(super) ksoftirqd_cores: f64,
    /// The sender's and the reflector's CPU as a whole (/proc/stat), anyone's work.
    pub(super) cpu_sender: CpuUse,
    pub(super) cpu_reflector: CpuUse,
}

impl Step {
    pub(super) fn pct(&self, n: u64) -> f64 {
        if self.sent == 0 {
            f64::NAN
        } else {
            n as f64 / self.sent as f64 * 100.0
        }
    }
    pub(super) fn cores(&self) -> f64 {
        self.sender.cores + self.reflector.cores
    }
    /// µs of CPU (sender + reflector) per probe.
    pub(super) fn us_per_probe(&self) -> f64 {
        self.cores() / self.achieved * 1e6
    }
    /// Achieved rate per core used by the two processes.
    pub(super) fn per_core(&self) -> f64 {
        self.achieved / self.cores()
    }
}

pub(super) struct Pair<'a> {
    pub(super) mp: &'a Meshprobe,
    pub(super) cpus: [usize; 2],
    pub(super) t: &'a TwoHosts,
    pub(super) sender_cpu: String,
    pub(super) reflector_pid: u32,
    pub(super) reflector_counters: &'a HeldMap,
    pub(super) ksoft: Vec<u32>,
}

impl Pair<'_> {
    /// Starts `meshprobe ping` (pinned) offering `rate`, `count` probes in all (0: until
    /// stopped); returns it with its pid and its COUNTERS map.
    pub(super) fn start_ping(&self, rate: u64, count: u64) -> Result<(ChildGuard, u32, HeldMap)> {
        let (sessions, interval_ns) = plan_step(rate);
        let per_session = count.div_ceil(sessions).to_string();
        let interval = format!("{interval_ns}ns");
        let w = format!("{TIMEOUT_S}s");
        let b4 = TwoHosts::B4.to_string();
        let mut args = vec![
            "--json",
            "-q",
            "-c",
            &per_session,
            "-i",
            &interval,
            "-W",
            &w,
            "-I",
            TwoHosts::A_IF,
        ];
        for _ in 0..sessions {
            args.push(&b4);
        }
        let mut ping =
            self.mp
                .ping_spawn_under(&self.t.a, &["taskset", "-c", &self.sender_cpu], &args)?;
        let ready = ping
            .wait_json(READY_TIMEOUT, |v| v["type"] == "ready")
            .context("meshprobe ping ready line")?;
        self.mp
            .check_timestamping("meshprobe ping", &ready, &ping.stderr_text())?;
        let pid = ping.pid().context("ping pid")?;
        let counters = HeldMap::of_process(pid, "COUNTERS")?;
        Ok((ping, pid, counters))
    }

    /// Both processes, both CPUs and the sender's t1 counter now (sender `spid`, its map
    /// `sc`).
    pub(super) fn sample(&self, spid: u32, sc: &HeldMap) -> Result<Sample> {
        sample(spid, self.reflector_pid, self.cpus, &self.ksoft, sc)
    }

    /// One step at `rate`: a run of the sender measured over `window` seconds after `settle`.
    pub(super) fn run_step(&self, rate: u64, settle: f64, window: f64) -> Result<Step> {
        let (sessions, interval_ns) = plan_step(rate);
        let run_s = settle + window + 0.3;
        let count = ((rate as f64 * run_s) as u64).div_ceil(sessions) * sessions;
        let (refl0, refl_err0) = stamps_of(self.reflector_counters)?;
        let (mut ping, spid, sc) = self.start_ping(rate, count)?;
        pause(Duration::from_secs_f64(settle))?;
        let a = self.sample(spid, &sc)?;
        pause(Duration::from_secs_f64(window))?;
        let b = self.sample(spid, &sc)?;
        // A sender slower than offered takes longer; bounded, then stopped.
        let deadline = Duration::from_secs_f64(run_s + (run_s * 4.0).max(5.0) + TIMEOUT_S as f64);
        let started = a.at - Duration::from_secs_f64(settle);
        let left = deadline.saturating_sub(started.elapsed());
        let (fin, cut) = match ping.wait_exit(left) {
            Ok(f) => (f, false),
            Err(_) if !ping.is_running() => bail!("meshprobe ping ended without output"),
            Err(_) => (
                ping.stop_with(Signal::SIGINT, Duration::from_secs(5))?,
                true,
            ),
        };
        if !fin.status.success() {
            bail!(
                "meshprobe ping at {rate}/s exited {}; stderr:\n{}",
                fin.status,
                fin.stderr_text()
            );
        }
        let (sent, received, lost) = summed_summaries(&fin, rate, sessions)?;
        // Replies still on their way to a stopped sender: none when it ran to its count.
        pause(Duration::from_millis(50))?;
        let (s_stamps, s_err) = stamps_of(&sc)?;
        let (refl1, refl_err1) = stamps_of(self.reflector_counters)?;
        let stamps = [
            s_stamps[0],
            refl1[1].saturating_sub(refl0[1]),
            refl1[2].saturating_sub(refl0[2]),
            s_stamps[3],
        ];
        let unresolved = sent.saturating_sub(received + lost);
        // A run stopped at its deadline leaves probes unresolved that did not fail: they are
        // left out of the judgement (and shown).
        let judged_sent = if cut { sent - unresolved } else { sent };
        let miss = missing(judged_sent, received, stamps);
        let secs = (b.at - a.at).as_secs_f64();
        let ksoftirqd_cores = b.ksoftirqd_ns.saturating_sub(a.ksoftirqd_ns) as f64 / 1e9 / secs;
        Ok(Step {
            offered: rate,
            sessions,
            interval_ns,
            count,
            sent,
            received,
            lost,
            unresolved,
            cut,
            stamps,
            stamp_errors: s_err + refl_err1.saturating_sub(refl_err0),
            missing: miss,
            holds: holds(judged_sent, miss),
            window_s: secs,
            achieved: b.t1.saturating_sub(a.t1) as f64 / secs,
            sender: usage(a.sender, b.sender, secs),
            reflector: usage(a.reflector, b.reflector, secs),
            ksoftirqd_cores,
            cpu_sender: cpu_use(a.cpus[0], b.cpus[0]),
            cpu_reflector: cpu_use(a.cpus[1], b.cpus[1]),
        })
    }
}

/// (sent, received, lost) summed over the summaries of a sender's `sessions` sessions; an
/// error when one is missing.
fn summed_summaries(
    fin: &meshprobe_harness::child::Finished,
    rate: u64,
    sessions: u64,
) -> Result<(u64, u64, u64)> {
    let (mut sent, mut received, mut lost) = (0, 0, 0);
    let mut summaries = 0;
    for v in fin.json_lines() {
        if v["type"] == "summary" {
            summaries += 1;
            sent += v["sent"].as_u64().unwrap_or(0);
            received += v["received"].as_u64().unwrap_or(0);
            lost += v["lost"].as_u64().unwrap_or(0);
        }
    }
    if summaries != sessions {
        bail!(
            "meshprobe ping at {rate}/s printed {summaries} summaries for {sessions} \
             sessions; stderr:\n{}",
            fin.stderr_text()
        );
    }
    Ok((sent, received, lost))
}
