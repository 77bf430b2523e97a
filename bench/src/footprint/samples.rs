//! The agent's RSS and CPU sampled every second after the warm-up, their thirds, the table
//! and the goals.

use std::time::{Duration, Instant};

use anyhow::Result;
use meshprobe_harness::agent::Agent;

use super::{FLAT_CPU_REL, FLAT_RSS_MB, PEERS, WINDOW_S};
use crate::numbers::{max, mean};
use crate::report::{ScenarioReport, Table};
use crate::sample::procfs::{ProcSample, sample_process, user_sys_ticks};
use crate::scenario::pause;

pub(super) struct Thirds {
    pub(super) first: f64,
    pub(super) last: f64,
}

/// Means of the first and the last third of `v`, thirds rounded down to whole windows of
/// [`WINDOW_S`] samples (at least one window each when there are two).
pub(super) fn thirds(v: &[f64]) -> Thirds {
    let windows = v.len() / WINDOW_S;
    let n = if windows >= 2 {
        (windows / 3).max(1) * WINDOW_S
    } else {
        v.len() / 3
    };
    if n == 0 {
        return Thirds {
            first: f64::NAN,
            last: f64::NAN,
        };
    }
    Thirds {
        first: mean(&v[..n]),
        last: mean(&v[v.len() - n..]),
    }
}

/// What the samples after the warm-up gave.
pub(super) struct Samples {
    pub(super) rss_mb: Vec<f64>,
    /// Per second, % of one core (schedstat).
    pub(super) cpu_pct: Vec<f64>,
    /// Over the whole span, % of one core (schedstat).
    pub(super) cpu_sched: f64,
    /// Context switches per second.
    pub(super) switches: f64,
    pub(super) rss_t: Thirds,
    pub(super) cpu_t: Thirds,
    /// Probes sent per second, % of them answered (agent metrics).
    pub(super) rate: f64,
    pub(super) answered: f64,
    /// utime and stime over the samples, ticks.
    pub(super) ticks: (u64, u64),
}

impl Samples {
    /// Waits `warmup` s, then samples the agent `pid` every second for `secs` s.
    pub(super) fn take(agent: &Agent, pid: u32, warmup: u64, secs: u64) -> Result<Samples> {
        pause(Duration::from_secs(warmup))?;
        let sent0 = agent.metric("meshprobe_probes_sent")?.unwrap_or(0.0);
        let recv0 = agent.metric("meshprobe_probes_received")?.unwrap_or(0.0);
        let ticks0 = user_sys_ticks(pid)?;
        let mut samples: Vec<ProcSample> = vec![sample_process(pid)?];
        let start = Instant::now();
        for k in 1..=secs {
            let next = start + Duration::from_secs(k);
            pause(next.saturating_duration_since(Instant::now()))?;
            samples.push(sample_process(pid)?);
        }
        let ticks1 = user_sys_ticks(pid)?;
        let sent1 = agent.metric("meshprobe_probes_sent")?.unwrap_or(0.0);
        let recv1 = agent.metric("meshprobe_probes_received")?.unwrap_or(0.0);
        let rss_mb: Vec<f64> = samples.iter().map(|s| s.rss_kib as f64 / 1024.0).collect();
        // Per-second CPU from schedstat: at a few % of a core, utime+stime ticks (10 ms each)
        // quantise a 1 s sample to whole percent, too coarse to compare thirds.
        let cpu_pct: Vec<f64> = samples
            .windows(2)
            .map(|w| {
                let dt = (w[1].at - w[0].at).as_secs_f64();
                (w[1].cpu_ns - w[0].cpu_ns) as f64 / 1e9 / dt * 100.0
            })
            .collect();
        let (first, last) = (samples[0], samples[samples.len() - 1]);
        let span = (last.at - first.at).as_secs_f64();
        Ok(Samples {
            rss_t: thirds(&rss_mb),
            cpu_t: thirds(&cpu_pct),
            rss_mb,
            cpu_pct,
            cpu_sched: (last.cpu_ns - first.cpu_ns) as f64 / 1e9 / span * 100.0,
            switches: (last.switches - first.switches) as f64 / span,
            rate: (sent1 - sent0) / secs as f64,
            answered: if sent1 > sent0 {
                (recv1 - recv0) / (sent1 - sent0) * 100.0
            } else {
                0.0
            },
            ticks: (ticks1.0 - ticks0.0, ticks1.1 - ticks0.1),
        })
    }

    pub(super) fn rss_flat(&self) -> bool {
        self.rss_t.last - self.rss_t.first <= FLAT_RSS_MB
    }

    pub(super) fn cpu_flat(&self) -> bool {
        self.cpu_t.last <= self.cpu_t.first * (1.0 + FLAT_CPU_REL) + 0.1
    }

    /// The table of RSS and CPU and the notes on the load.
    pub(super) fn render(&self, rep: &mut ScenarioReport) {
        let Samples {
            rss_mb,
            cpu_pct,
            cpu_sched,
            switches,
            rss_t,
            cpu_t,
            rate,
            answered,
            ..
        } = self;
        let (rss_flat, cpu_flat) = (self.rss_flat(), self.cpu_flat());
        let mut table = Table::new("", &["", "mean", "max", "first third → last third", "flat"]);
        table.row([
            "RSS".to_string(),
            format!("{:.1} MB", mean(rss_mb)),
            format!("{:.1} MB", max(rss_mb)),
            format!("{:.1} → {:.1} MB", rss_t.first, rss_t.last),
            if rss_flat { "yes" } else { "no" }.to_string(),
        ]);
        table.row([
            "CPU (% of one core)".to_string(),
            format!("{cpu_sched:.2} %"),
            format!("{:.1} %", max(cpu_pct)),
            format!("{:.2} → {:.2} %", cpu_t.first, cpu_t.last),
            if cpu_flat { "yes" } else { "no" }.to_string(),
        ]);
        rep.tables.push(table);
        rep.note(format!(
            "Load: {rate:.0} probes/s sent during the samples, {answered:.1} % answered (agent \
             metrics). CPU from the scheduler's own accounting (schedstat, all threads): \
             {cpu_sched:.2} % of a core, {:.1} µs per probe. Context switches: {switches:.0} per \
             second, {:.2} per probe. MB = 2^20 octets.",
            cpu_sched / 100.0 / rate.max(1.0) * 1e6,
            switches / rate.max(1.0)
        ));
        if *rate < PEERS as f64 * 0.9 {
            rep.note(format!(
                "The agent sent only {rate:.0} probes/s to {PEERS} peers at 1/s: it did not keep up \
                 with the load asked for."
            ));
        }
    }

    /// The three goals: RSS, CPU, flat.
    pub(super) fn goals(
        &self,
        rep: &mut ScenarioReport,
        rss_met: bool,
        cpu_met: bool,
        flat: bool,
        cause_rss: Option<String>,
        cause_cpu: Option<String>,
    ) {
        let Samples {
            rss_mb,
            cpu_sched,
            rss_t,
            cpu_t,
            ..
        } = self;
        rep.goal(
            "RSS",
            "≤ 25 MB",
            format!("max {:.1} MB, mean {:.1} MB", max(rss_mb), mean(rss_mb)),
            rss_met,
            cause_rss,
        );
        rep.goal(
            "CPU",
            "≤ 1 % of a core",
            format!("{cpu_sched:.2} %"),
            cpu_met,
            cause_cpu,
        );
        rep.goal(
            "flat",
            "no growth",
            format!(
                "RSS {:+.2} MB, CPU {:+.2} pp (last − first third)",
                rss_t.last - rss_t.first,
                cpu_t.last - cpu_t.first
            ),
            flat,
            Some(format!(
                "RSS {:.1} → {:.1} MB, CPU {:.2} → {:.2} %",
                rss_t.first, rss_t.last, cpu_t.first, cpu_t.last
            )),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thirds_of_windows() {
        let t = thirds(&[1.0, 1.0, 5.0, 9.0, 3.0, 3.0]);
        assert_eq!((t.first, t.last), (1.0, 3.0));
        // 20 samples: two windows, first vs last window.
        let v: Vec<f64> = (0..20).map(|i| if i < 10 { 1.0 } else { 2.0 }).collect();
        let t = thirds(&v);
        assert_eq!((t.first, t.last), (1.0, 2.0));
    }
}
