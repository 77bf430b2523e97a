//! Scenario 4: the probe capacity of one sender/reflector pair.
//!
//! One `meshprobe ping` in A (pinned to one CPU) sends to one `meshprobe reflect` in B (pinned
//! to the other) over the harness veth, both with kernel stamps. The offered rate is stepped
//! up; a step is one ping run of `-c N` probes (several sessions in the one process, i.e.
//! the peer named several times, when one session's interval would be shorter than
//! [`MIN_INTERVAL_NS`]). Per step:
//!
//! - the four stamps from the eBPF counters of both processes (`COUNTERS`: t1/t4 by the
//!   sender's programs, t2/t3 by the reflector's), read through map descriptors this process
//!   holds, so the sender's totals are read after it exited and stopped changing them;
//! - sent/received/lost from the sender's summaries;
//! - over a steady window in the middle of the run: the achieved rate (t1 counter), CPU of
//!   both processes (schedstat nanoseconds; user/system split from utime/stime), context
//!   switches, and the CPU of the ksoftirqd threads of both CPUs.
//!
//! The capacity is the highest achieved rate of a step with at most 0.1 % of its probes
//! missing a stamp or a reply. At the capacity step's offered rate the CPU per probe is then
//! decomposed (user space from perf samples, the four stamping programs from the kernel's
//! accounting with `kernel.bpf_stats_enabled=1` less an empty program's floor, the rest of the
//! kernel by difference), and at the highest offered rate the pair is profiled (perf stat
//! syscall and context-switch counts, strace -c, perf record) for where the time goes.
//!
//! The phases are apart: [`plan`] (a step's sessions and judgement), [`measure`] (readings
//! of one instant), [`step`] (one step's run), [`decompose`] and [`top`] (the two profiles),
//! [`render`] (tables), [`verdict`] (notes and goal), [`method`] (method lines).

mod decompose;
mod measure;
mod method;
mod plan;
mod render;
mod step;
mod top;
mod verdict;

use std::path::Path;

use anyhow::{Context, Result};
use meshprobe_harness::services::TempDir;
use meshprobe_harness::{Meshprobe, Reflector, TwoHosts};
use serde_json::json;

use crate::numbers::fmt_rate;
use crate::report::ScenarioReport;
use crate::sample::held_map::HeldMap;
use crate::sample::procfs::ksoftirqd_pid;
use crate::scenario::{Ctx, progress};
use decompose::Decomposition;
use plan::pick_capacity;
use step::{Pair, Step};

const GOAL_PER_CORE: f64 = 200_000.0;
/// At most this fraction of a step's probes may lack a stamp or a reply.
const MAX_MISSING: f64 = 0.001;
/// Offered rates, probes/s.
const RATES: [u64; 6] = [10_000, 20_000, 50_000, 100_000, 200_000, 400_000];
/// The shortest interval one session is asked for; faster steps use more sessions.
const MIN_INTERVAL_NS: u64 = 20_000;
/// Probes' reply timeout (`-W`).
const TIMEOUT_S: u64 = 1;
const SENDER_CPU: usize = 0;
const REFLECTOR_CPU: usize = 1;

/// The run's settings: CPUs and the lengths of the phases (quick or full).
#[derive(Clone, Copy, Debug)]
struct Settings {
    scpu: usize,
    rcpu: usize,
    /// Online CPUs (one: sender and reflector share it).
    cpus: usize,
    settle: f64,
    window: f64,
    prof_s: u64,
    /// The decomposition at the capacity step: bpf_stats window, then the floor's.
    dec_s: f64,
    floor_s: f64,
}

impl Settings {
    fn new(ctx: &Ctx) -> Settings {
        let cpus = meshprobe_harness::load::online_cpus();
        let (scpu, rcpu) = if cpus >= 2 {
            (SENDER_CPU, REFLECTOR_CPU)
        } else {
            (0, 0)
        };
        Settings {
            scpu,
            rcpu,
            cpus,
            settle: ctx.pick(0.3, 0.5),
            window: ctx.pick(1.2, 4.0),
            prof_s: ctx.pick(2u64, 3),
            dec_s: ctx.pick(1.5, 3.0),
            floor_s: ctx.pick(1.0, 2.0),
        }
    }
}

pub fn run(ctx: &Ctx, rep: &mut ScenarioReport) -> Result<()> {
    let env = match ctx.env("bench capacity", &["taskset"])? {
        Ok(e) => e,
        Err(why) => {
            rep.skip(why);
            return Ok(());
        }
    };
    let set = Settings::new(ctx);
    method::describe(rep, &set);

    let t = TwoHosts::new()?;
    let scratch = TempDir::new("bench-capacity")?;
    let mp = &env.mp;
    let refl = start_reflector(mp, &t, &set)?;
    let rpid = refl.child.pid().context("reflector pid")?;
    let refl_counters = HeldMap::of_process(rpid, "COUNTERS")?;
    let pair = Pair {
        mp,
        cpus: [set.scpu, set.rcpu],
        t: &t,
        sender_cpu: set.scpu.to_string(),
        reflector_pid: rpid,
        reflector_counters: &refl_counters,
        ksoft: ksoftirqd_pids([set.scpu, set.rcpu]),
    };

    let steps = run_steps(&pair, &set)?;
    rep.tables.extend(render::step_tables(&steps));
    let oks: Vec<(bool, f64)> = steps.iter().map(|s| (s.holds, s.achieved)).collect();
    let cap = pick_capacity(&oks);
    let decomp = cap.and_then(|i| decompose_at(rep, &pair, &steps[i], &set, scratch.path()));
    let prof = top::profile_top(rep, &pair, &set, scratch.path())?;
    let refl_sum = refl.stop()?;

    verdict::judge(rep, &set, &steps, cap, decomp.as_ref(), &prof, &refl_sum);
    rep.data = json!({
        "sender_cpu": set.scpu,
        "reflector_cpu": set.rcpu,
        "settle_s": set.settle,
        "window_s": set.window,
        "steps": steps,
        "capacity_step": cap.map(|i| steps[i].offered),
        "capacity_rate": cap.map(|i| steps[i].achieved),
        "per_core": cap.map(|i| steps[i].per_core()),
        "profile": prof.data,
        "profile_kernel_sample_pct": prof.kernel_share,
        "decomposition": decomp,
        "reflector_summary": refl_sum,
    });
    Ok(())
}

/// The reflector in B, pinned; the pair's capacity is measured from one source, so no reply
/// budget is in the way.
fn start_reflector(mp: &Meshprobe, t: &TwoHosts, set: &Settings) -> Result<Reflector> {
    let rcpu_s = set.rcpu.to_string();
    mp.reflect_under(
        &t.b,
        &["taskset", "-c", &rcpu_s],
        &[
            "-I",
            TwoHosts::B_IF,
            "--budget-per-source",
            "off",
            "--budget-total",
            "off",
        ],
    )
}

/// The ksoftirqd threads of `cpus`, each once.
fn ksoftirqd_pids(cpus: [usize; 2]) -> Vec<u32> {
    let mut ksoft = Vec::new();
    for c in cpus {
        if let Some(p) = ksoftirqd_pid(c)
            && !ksoft.contains(&p)
        {
            ksoft.push(p);
        }
    }
    ksoft
}

/// Every step of [`RATES`], in order.
fn run_steps(pair: &Pair, set: &Settings) -> Result<Vec<Step>> {
    let mut steps: Vec<Step> = Vec::new();
    for rate in RATES {
        progress(format!(
            "capacity: {} probes/s offered",
            fmt_rate(rate as f64)
        ));
        let s = pair.run_step(rate, set.settle, set.window)?;
        progress(format!(
            "capacity: achieved {} /s, {} of {} incomplete, sender {:.0} % reflector {:.0} %",
            fmt_rate(s.achieved),
            s.missing,
            s.sent,
            s.sender.cores * 100.0,
            s.reflector.cores * 100.0
        ));
        steps.push(s);
    }
    Ok(steps)
}

/// Where the CPU of one probe goes at the capacity step `step`: rendered into `rep`, or a note
/// when it failed.
fn decompose_at(
    rep: &mut ScenarioReport,
    pair: &Pair,
    step: &Step,
    set: &Settings,
    scratch: &Path,
) -> Option<Decomposition> {
    progress(format!(
        "capacity: where the CPU goes at {} probes/s offered",
        fmt_rate(step.offered as f64)
    ));
    match pair.decompose(step, set.dec_s, set.floor_s, set.settle, scratch) {
        Ok((d, ev)) => {
            render::render_decomposition(rep, &d, step);
            rep.evidence.extend(ev);
            Some(d)
        }
        Err(e) => {
            rep.note(format!(
                "The decomposition of the CPU at the capacity step failed: {e:#}"
            ));
            None
        }
    }
}
