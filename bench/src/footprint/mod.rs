//! Scenario 5: what one agent costs its host when it probes 1000 peers at 1 probe/s each.
//!
//! The peers are 1000 addresses (198.19.0.1 ... 198.19.3.250) on the veth of one namespace B,
//! answered by one `meshprobe reflect`; A routes 198.19.0.0/16 through B and runs the agent
//! with those 1000 static peers (MESHPROBE_PEERS_FILE). Every second the agent's VmRSS and
//! utime+stime are sampled from /proc. When a goal is missed, the agent is profiled (perf,
//! syscall counts with strace, CPU per thread) and the report shows what was found.
//!
//! Apart: [`samples`] (the per-second samples and their thirds), [`missed`] (the profile
//! taken when a goal is missed), [`decomp`] (where the CPU of a probe goes).

mod decomp;
mod missed;
mod samples;

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use meshprobe_harness::agent::{Agent, AgentConfig};
use meshprobe_harness::services::TempDir;
use meshprobe_harness::{Meshprobe, TwoHosts};
use serde_json::json;

use crate::cluster::ip_batch;
use crate::numbers::max;
use crate::profile::bpf_stats_window;
use crate::report::ScenarioReport;
use crate::sample::procfs::thread_totals;
use crate::scenario::{Ctx, progress};
use decomp::{PerProbe, cpu_cause, decompose_cpu};
use missed::Missed;
use samples::Samples;

const PEERS: usize = 1000;
const GOAL_RSS_MB: f64 = 25.0;
const GOAL_CPU_PCT: f64 = 1.0;
/// Flat: the last third's mean may exceed the first third's by at most this much (RSS), or by
/// this fraction plus 0.1 percentage points (CPU).
const FLAT_RSS_MB: f64 = 1.0;
const FLAT_CPU_REL: f64 = 0.10;
/// The agent's window: thirds are made of whole windows, so that each holds the same number
/// of window ends (when 1000 summaries are written at once).
const WINDOW_S: usize = 10;

fn peer_addr(i: usize) -> String {
    format!("198.19.{}.{}", i / 250, i % 250 + 1)
}

pub fn run(ctx: &Ctx, rep: &mut ScenarioReport) -> Result<()> {
    let env = match ctx.env("bench footprint", &["ping"])? {
        Ok(e) => e,
        Err(why) => {
            rep.skip(why);
            return Ok(());
        }
    };
    let secs = ctx.pick(20u64, 60);
    let warmup = ctx.pick(5u64, 10);
    // The decomposition: a bpf_stats window, then the floor's.
    let (dec_s, floor_s) = ctx.pick((5.0, 3.0), (10.0, 5.0));
    describe(rep, secs, warmup, dec_s, floor_s);
    let t = TwoHosts::new()?;
    let scratch = TempDir::new("bench-footprint")?;
    let peers_file = add_peers(&t, scratch.path())?;
    let refl = env.mp.reflect(&t.b, &["-I", TwoHosts::B_IF])?;
    let agent = start_agent(&env.mp, &t, &peers_file)?;
    let pid = agent.pid().context("agent pid")?;
    progress(format!(
        "footprint: warm-up {warmup} s, then {secs} s of samples"
    ));
    let s = Samples::take(&agent, pid, warmup, secs)?;
    s.render(rep);
    let rss_met = max(&s.rss_mb) <= GOAL_RSS_MB;
    let cpu_met = s.cpu_sched <= GOAL_CPU_PCT;
    let flat = s.rss_flat() && s.cpu_flat();

    // The stamping programs' share, bpf_stats on.
    progress(format!(
        "footprint: {dec_s} s with kernel.bpf_stats_enabled=1, {floor_s} s for its floor"
    ));
    let rpid = refl.child.pid().context("reflector pid")?;
    let window = bpf_stats_window([pid, rpid], &t, dec_s, floor_s, || {
        let at = Instant::now();
        let sent = agent.metric("meshprobe_probes_sent")?.unwrap_or(0.0);
        Ok((at, sent, thread_totals(pid)?.0))
    });

    // Profile when a goal is missed, while the agent still runs.
    let perf_data = scratch.path().join("perf.data");
    let miss = if !cpu_met || !rss_met || !flat {
        Missed::profile(rep, pid, &s, scratch.path(), &perf_data)?
    } else {
        Missed::default()
    };

    // Where the CPU of one probe goes.
    let per_probe = PerProbe {
        total: s.cpu_sched / 100.0 / s.rate.max(1.0) * 1e6,
        switches: s.switches / s.rate.max(1.0),
        syscalls: miss.syscalls_per_probe,
    };
    let (user_share, user_from_perf, decomp) =
        decompose_cpu(rep, window, &perf_data, &s, per_probe);
    let cause_cpu = (!cpu_met).then(|| {
        let tail = format!(
            "busiest thread: {}; perf's top symbol: {} (profile below)",
            miss.busiest.unwrap_or_else(|| "?".into()),
            miss.top_sym.unwrap_or_else(|| "n/a".into())
        );
        cpu_cause(
            s.cpu_sched,
            s.rate,
            per_probe,
            decomp.as_ref().map(|d| (d.split, user_from_perf)),
            &tail,
        )
    });
    s.goals(rep, rss_met, cpu_met, flat, miss.cause_rss, cause_cpu);
    rep.data = json!({
        "peers": PEERS,
        "seconds": secs,
        "warmup_seconds": warmup,
        "probes_per_second": s.rate,
        "answered_pct": s.answered,
        "rss_mb": s.rss_mb,
        "cpu_pct_per_second": s.cpu_pct,
        "cpu_pct_schedstat": s.cpu_sched,
        "context_switches_per_second": s.switches,
        "rss_thirds_mb": [s.rss_t.first, s.rss_t.last],
        "cpu_thirds_pct": [s.cpu_t.first, s.cpu_t.last],
        "us_per_probe": per_probe.total,
        "syscalls_per_probe": per_probe.syscalls,
        "user_share": user_share,
        "user_share_from_perf": user_from_perf,
        "decomposition": decomp,
    });
    drop(agent);
    let _ = refl.stop();
    Ok(())
}

/// The method lines.
fn describe(rep: &mut ScenarioReport, secs: u64, warmup: u64, dec_s: f64, floor_s: f64) {
    rep.method(format!(
        "one `meshprobe agent` in A with {PEERS} static peers (MESHPROBE_PEERS_FILE), \
         interval 1s (jitter 10 %), window 10s, `--output json` to the harness (1000 summaries \
         per window), no ZooKeeper, no Kafka"
    ));
    rep.method(format!(
        "the peers: {PEERS} addresses 198.19.0.1–198.19.3.250/16 on B's veth, one `meshprobe \
         reflect` in B answers them all (from B's primary address; the agent matches replies \
         by SSID); A routes 198.19.0.0/16 via B"
    ));
    rep.method(format!(
        "after a {warmup} s warm-up, VmRSS (/proc/PID/status) and CPU time of all threads \
         (the scheduler's schedstat, ns) sampled every second for {secs} s; flat = the mean \
         of the last third (whole 10 s windows) exceeds the first third's by at most \
         {FLAT_RSS_MB} MB RSS and by at most {:.0} % + 0.1 percentage points CPU",
        FLAT_CPU_REL * 100.0
    ));
    rep.method(format!(
        "where the agent's CPU per probe goes, after the samples: {dec_s} s with \
         kernel.bpf_stats_enabled=1 (restored afterwards): run_time_ns/run_cnt of the stamping \
         programs (fdinfo of the agent and the reflector), then {floor_s} s more with an empty \
         program added on each of the four hooks (the accounting's own floor, subtracted); on \
         a veth the receive path of a packet runs in the sender's context, so the agent's CPU \
         carries T1 (its egress) and T2 (B's ingress); user space = the share of user-mode \
         perf samples when the agent was profiled, else utime/stime over the samples; total = \
         the samples' schedstat CPU per probe sent; rest of the kernel = total − user − eBPF"
    ));
}

/// The peers' addresses on B's veth, A's route to them, and the peers file naming them.
fn add_peers(t: &TwoHosts, scratch: &Path) -> Result<PathBuf> {
    let addrs: Vec<String> = (0..PEERS)
        .map(|i| format!("addr add {}/16 dev {}", peer_addr(i), TwoHosts::B_IF))
        .collect();
    ip_batch(&t.b, &addrs, scratch)?;
    t.a.run([
        "ip",
        "route",
        "add",
        "198.19.0.0/16",
        "via",
        &TwoHosts::B4.to_string(),
    ])?;
    let peers_file = scratch.join("peers.txt");
    let text: String = (0..PEERS)
        .map(|i| format!("peer{i:04}={}\n", peer_addr(i)))
        .collect();
    std::fs::write(&peers_file, text)?;
    Ok(peers_file)
}

/// The agent in A with the peers file, every peer on its pinglist; its ready line checked for
/// kernel stamps.
fn start_agent(mp: &Meshprobe, t: &TwoHosts, peers_file: &Path) -> Result<Agent> {
    let mut cfg = AgentConfig::new()
        .env("MESHPROBE_PEERS_FILE", peers_file.display())
        // The per-peer cost is what this scenario measures: every peer on the pinglist (by
        // default an agent probes at most 128; scenario `scale` measures that).
        .env("MESHPROBE_PINGLIST_FULL_MESH_MAX", PEERS.to_string())
        .env("MESHPROBE_PINGLIST_MAX_PEERS", PEERS.to_string())
        .env("MESHPROBE_INTERVAL", "1s")
        .env("MESHPROBE_WINDOW", "10s")
        .env("MESHPROBE_ADMIN_LISTEN", "127.0.0.1:9862");
    cfg.drop_probe_lines = true;
    let agent = Agent::start(&mp.bin, &t.a, "footprint", &cfg)?;
    let ready = agent.ready.clone().unwrap_or_default();
    mp.check_timestamping("agent", &ready, &agent.stderr_tail(20))?;
    Ok(agent)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_plan() {
        assert_eq!(peer_addr(0), "198.19.0.1");
        assert_eq!(peer_addr(249), "198.19.0.250");
        assert_eq!(peer_addr(250), "198.19.1.1");
        assert_eq!(peer_addr(999), "198.19.3.250");
    }
}
