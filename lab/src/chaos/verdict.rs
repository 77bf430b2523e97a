//! What an experiment concludes, and the lab's timing it is judged by.

use super::*;

/// What an experiment found.
#[derive(Clone, Debug)]
pub struct Verdict {
    /// The experiment as on the command line (`kill-agent node2`).
    pub experiment: String,
    pub hypothesis: String,
    pub holds: bool,
    /// Why: every check when it holds, the failed checks when it does not.
    pub reason: String,
    /// What the mesh saw: pairs, windows, times, counts.
    pub findings: Vec<String>,
    /// The numbers the checks were made of, by name (see each experiment's figures in [`run`]).
    pub figures: BTreeMap<String, f64>,
}

impl Verdict {
    /// A figure, or NaN when the experiment did not produce it.
    pub fn figure(&self, name: &str) -> f64 {
        self.figures.get(name).copied().unwrap_or(f64::NAN)
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "== chaos: {}", self.experiment)?;
        writeln!(f, "hypothesis: {}", self.hypothesis)?;
        writeln!(f, "findings:")?;
        for x in &self.findings {
            writeln!(f, "  - {x}")?;
        }
        if !self.figures.is_empty() {
            // Wrapped at about 100 columns.
            let mut line = String::from("figures:");
            for (k, v) in &self.figures {
                let item = format!(" {k}={}", fmt_num(*v));
                if line.len() + item.len() > 100 && line.len() > "figures:".len() {
                    writeln!(f, "{line}")?;
                    line = String::from("        ");
                }
                line.push_str(&item);
            }
            writeln!(f, "{line}")?;
        }
        write!(
            f,
            "VERDICT: {} — {}",
            if self.holds { "holds" } else { "does not hold" },
            self.reason
        )
    }
}

pub(super) fn fmt_num(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.0}")
    } else {
        format!("{v:.3}")
    }
}

/// The lab's timing settings that hypotheses and bounds depend on.
#[derive(Clone, Copy, Debug)]
pub(super) struct Timing {
    pub(super) window: Duration,
    pub(super) interval: Duration,
    pub(super) conn_timeout: Duration,
    pub(super) probe_timeout: Duration,
}

impl Timing {
    pub(super) fn of(lab: &Lab) -> Timing {
        let cfg = lab.agent_config(0);
        let conn = cfg
            .env
            .get("CONN_TIMEOUT")
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(10);
        let probe_timeout = cfg
            .env
            .get("MESHPROBE_TIMEOUT")
            .and_then(|s| humantime::parse_duration(s).ok())
            .unwrap_or(Duration::from_secs(1));
        Timing {
            window: lab.spec.window,
            interval: lab.spec.interval,
            conn_timeout: Duration::from_secs(conn),
            probe_timeout,
        }
    }
}
