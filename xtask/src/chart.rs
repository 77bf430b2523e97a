//! `cargo xtask chart`: the Helm chart's tests (charts/meshprobe/tests/test_chart.py) with
//! Helm's own SDK (PyPI `helm-python-sdk`) and the Kubernetes schemas (`kubernetes-validate`).
//!
//! They run in a venv cached at `$XDG_CACHE_HOME/meshprobe/chart-venv` (else
//! `~/.cache/meshprobe/chart-venv`), built from the pinned `tests/requirements.txt` and rebuilt
//! only when that file or the Python interpreter changes (a stamp file in the venv records
//! both). Needs `python3` with the venv module (Debian: python3-venv, which `cargo xtask
//! setup` installs).

use std::{
    path::{Path, PathBuf},
    time::Instant,
};

use anyhow::{Context as _, Result, bail};

use crate::util::{self, Workspace};

/// The chart, relative to the workspace root.
const CHART_DIR: &str = "charts/meshprobe";
/// What the venv was built from: the requirements file and the interpreter.
const STAMP: &str = "meshprobe-requirements.stamp";

pub fn run(ws: &Workspace) -> Result<()> {
    let chart = ws.root.join(CHART_DIR);
    let tests = chart.join("tests");
    let requirements = tests.join("requirements.txt");
    let venv = venv_dir()?;
    ensure_venv(ws, &venv, &requirements)?;
    util::run(
        ws.command(venv.join("bin").join("python"))
            // No __pycache__ in the work tree.
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .args(["-m", "unittest", "discover", "-v", "-s"])
            .arg(&tests)
            .args(["-p", "test_*.py"]),
    )
}

/// `$XDG_CACHE_HOME/meshprobe/chart-venv`, else `~/.cache/meshprobe/chart-venv`.
fn venv_dir() -> Result<PathBuf> {
    let cache = match std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        Some(c) => PathBuf::from(c),
        None => PathBuf::from(std::env::var_os("HOME").context("HOME is not set")?).join(".cache"),
    };
    Ok(cache.join("meshprobe").join("chart-venv"))
}

/// The interpreter the venv is made with, and its version line.
fn python3(ws: &Workspace) -> Result<(PathBuf, String)> {
    let python = which::which("python3")
        .context("python3 not found: install it (Debian: apt-get install python3 python3-venv)")?;
    let version = util::probe_stdout(ws.command(&python).args([
        "-c",
        "import sys; print(sys.executable, sys.version.split()[0])",
    ]))
    .with_context(|| format!("{} does not run", python.display()))?;
    Ok((python, version))
}

/// What the stamp says for these requirements and this interpreter.
fn stamp_text(requirements: &str, python_version: &str) -> String {
    format!("python {python_version}\n{requirements}")
}

fn ensure_venv(ws: &Workspace, venv: &Path, requirements: &Path) -> Result<()> {
    let wanted = std::fs::read_to_string(requirements)
        .with_context(|| format!("cannot read {}", requirements.display()))?;
    let (python, version) = python3(ws)?;
    let stamp = stamp_text(&wanted, &version);
    let venv_python = venv.join("bin").join("python");
    let current = std::fs::read_to_string(venv.join(STAMP)).unwrap_or_default();
    if current == stamp
        && util::probe(
            ws.command(&venv_python)
                .args(["-c", "import helm_python, kubernetes_validate, yaml"]),
        )
        .is_some_and(|o| o.status.success())
    {
        println!("[chart] venv {} (cached)", venv.display());
        return Ok(());
    }
    let why = if current.is_empty() {
        "not built yet"
    } else if current != stamp {
        "requirements or interpreter changed"
    } else {
        "its packages do not import"
    };
    println!(
        "[chart] venv {}: {why}; building it with {version}...",
        venv.display()
    );
    let start = Instant::now();
    if venv.exists() {
        std::fs::remove_dir_all(venv)
            .with_context(|| format!("cannot remove the old venv {}", venv.display()))?;
    }
    if let Some(parent) = venv.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    let out = util::probe(ws.command(&python).args(["-m", "venv"]).arg(venv))
        .context("cannot run python3 -m venv")?;
    if !out.status.success() {
        bail!(
            "`{} -m venv {}` failed: {} (Debian: apt-get install python3-venv, or run \
             `cargo xtask setup`)",
            python.display(),
            venv.display(),
            util::first_error_line(&out)
        );
    }
    util::run(
        ws.command(&venv_python)
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "--no-input",
                "-r",
            ])
            .arg(requirements),
    )
    .context("installing the chart test requirements (PyPI)")?;
    // Last: a venv whose install failed is rebuilt next time.
    std::fs::write(venv.join(STAMP), &stamp)
        .with_context(|| format!("cannot write {}", venv.join(STAMP).display()))?;
    println!(
        "[chart] venv built in {:.1}s",
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stamp_changes_with_requirements_and_interpreter() {
        let a = stamp_text("helm-python-sdk==0.2.2\n", "/usr/bin/python3 3.11.2");
        assert_ne!(
            a,
            stamp_text("helm-python-sdk==0.2.3\n", "/usr/bin/python3 3.11.2")
        );
        assert_ne!(
            a,
            stamp_text("helm-python-sdk==0.2.2\n", "/usr/bin/python3 3.12.1")
        );
        assert_eq!(
            a,
            stamp_text("helm-python-sdk==0.2.2\n", "/usr/bin/python3 3.11.2")
        );
    }
}
