//! Cached Python venvs for tools that come from PyPI (the chart tests' Helm SDK, the guest
//! runner's virtme-ng). Each lives at `$XDG_CACHE_HOME/meshprobe/<name>` (else
//! `~/.cache/meshprobe/<name>`), is built from a pinned requirements file and rebuilt only when
//! that file or the Python interpreter changes (a stamp file in the venv records both), or when
//! its packages no longer import. Needs `python3` with the venv module (Debian: python3-venv,
//! which `cargo xtask setup` installs).

use std::{
    path::{Path, PathBuf},
    time::Instant,
};

use anyhow::{Context as _, Result, bail};

use crate::util::{self, Workspace};

/// What the venv was built from: the requirements file and the interpreter.
const STAMP: &str = "meshprobe-requirements.stamp";

/// One cached venv.
pub struct Venv {
    /// Directory name under the cache, and the tag of progress lines.
    pub name: &'static str,
    /// Pinned requirements, relative to the workspace root.
    pub requirements: &'static str,
    /// Python modules that must import for the venv to count as built.
    pub imports: &'static str,
}

impl Venv {
    /// Builds the venv when needed; returns its directory.
    pub fn ensure(&self, ws: &Workspace) -> Result<PathBuf> {
        let venv = util::cache_dir()?.join(self.name);
        let requirements = ws.root.join(self.requirements);
        let wanted = std::fs::read_to_string(&requirements)
            .with_context(|| format!("cannot read {}", requirements.display()))?;
        let (python, version) = python3(ws)?;
        let stamp = stamp_text(&wanted, &version);
        let venv_python = venv.join("bin").join("python");
        let current = std::fs::read_to_string(venv.join(STAMP)).unwrap_or_default();
        let tag = self.name;
        if current == stamp
            && util::probe(
                ws.command(&venv_python)
                    .args(["-c", &format!("import {}", self.imports)]),
            )
            .is_some_and(|o| o.status.success())
        {
            println!("[{tag}] venv {} (cached)", venv.display());
            return Ok(venv);
        }
        let why = if current.is_empty() {
            "not built yet"
        } else if current != stamp {
            "requirements or interpreter changed"
        } else {
            "its packages do not import"
        };
        println!(
            "[{tag}] venv {}: {why}; building it with {version}...",
            venv.display()
        );
        let start = Instant::now();
        if venv.exists() {
            std::fs::remove_dir_all(&venv)
                .with_context(|| format!("cannot remove the old venv {}", venv.display()))?;
        }
        if let Some(parent) = venv.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        let out = util::probe(ws.command(&python).args(["-m", "venv"]).arg(&venv))
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
                .arg(&requirements),
        )
        .with_context(|| format!("installing {} (PyPI)", self.requirements))?;
        // Last: a venv whose install failed is rebuilt next time.
        std::fs::write(venv.join(STAMP), &stamp)
            .with_context(|| format!("cannot write {}", venv.join(STAMP).display()))?;
        println!(
            "[{tag}] venv built in {:.1}s",
            start.elapsed().as_secs_f64()
        );
        Ok(venv)
    }
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

/// `bin/NAME` of a venv.
pub fn bin(venv: &Path, name: &str) -> PathBuf {
    venv.join("bin").join(name)
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
