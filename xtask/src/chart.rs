//! `cargo xtask chart`: the Helm chart's tests (charts/meshprobe/tests/test_chart.py) with
//! Helm's own SDK (PyPI `helm-python-sdk`) and the Kubernetes schemas (`kubernetes-validate`).
//!
//! They run in a cached venv ([`crate::venv`]) built from the pinned
//! `charts/meshprobe/tests/requirements.txt`.

use anyhow::Result;

use crate::{
    util::{self, Workspace},
    venv::{self, Venv},
};

/// The chart, relative to the workspace root.
const CHART_DIR: &str = "charts/meshprobe";

const VENV: Venv = Venv {
    name: "chart-venv",
    requirements: "charts/meshprobe/tests/requirements.txt",
    imports: "helm_python, kubernetes_validate, yaml",
};

pub fn run(ws: &Workspace) -> Result<()> {
    let tests = ws.root.join(CHART_DIR).join("tests");
    let venv = VENV.ensure(ws)?;
    util::run(
        ws.command(venv::bin(&venv, "python"))
            // No __pycache__ in the work tree.
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .args(["-m", "unittest", "discover", "-v", "-s"])
            .arg(&tests)
            .args(["-p", "test_*.py"]),
    )
}
