//! The judge: every check an experiment makes, kept with its evidence.

use super::*;

/// Collects findings, figures and checks.
#[derive(Default)]
pub(super) struct Judge {
    pub(super) findings: Vec<String>,
    pub(super) figures: BTreeMap<String, f64>,
    pub(super) checks: Vec<(bool, String)>,
}

impl Judge {
    pub(super) fn note(&mut self, s: impl Into<String>) {
        self.findings.push(s.into());
    }

    pub(super) fn fig(&mut self, k: impl Into<String>, v: f64) {
        self.figures.insert(k.into(), v);
    }

    pub(super) fn check(&mut self, ok: bool, what: impl Into<String>) -> bool {
        self.checks.push((ok, what.into()));
        ok
    }

    pub(super) fn verdict(self, exp: &Experiment, hypothesis: String) -> Verdict {
        let holds = self.checks.iter().all(|(ok, _)| *ok);
        let reason = if self.checks.is_empty() {
            "nothing was checked".to_string()
        } else {
            // Every check when it holds, else the failed ones.
            let shown = self.checks.iter().filter(|(ok, _)| holds || !ok);
            let shown = shown.map(|(ok, s)| if *ok { s.clone() } else { format!("NOT {s}") });
            shown.collect::<Vec<_>>().join("; ")
        };
        Verdict {
            experiment: exp.to_string(),
            hypothesis,
            holds: holds && !self.checks.is_empty(),
            reason,
            findings: self.findings,
            figures: self.figures,
        }
    }
}
