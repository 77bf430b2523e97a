//! `demo`, `mesh …` and `bench …`: set up and build what they run, then replace this process
//! with the lab's or the bench's binary (same arguments), so Ctrl-C and exit codes are theirs.

use std::os::unix::process::CommandExt as _;
use std::path::Path;

use anyhow::{Context as _, Result};

use crate::{
    build, setup,
    util::{self, Workspace},
};

pub fn demo(ws: &Workspace, args: &[String]) -> Result<()> {
    let bin = build::run(ws)?;
    exec(ws, "meshprobe-lab", &["demo"], args, Some(&bin))
}

pub fn mesh(ws: &Workspace, args: &[String]) -> Result<()> {
    // Only `up` starts agents; a binary passed in (the test suite does) is used as it is.
    let passed_in = std::env::var_os("MESHPROBE_BIN").is_some_and(|p| Path::new(&p).is_file());
    let bin = if args.first().is_some_and(|a| a == "up") && !passed_in {
        Some(build::run(ws)?)
    } else {
        None
    };
    exec(ws, "meshprobe-lab", &["mesh"], args, bin.as_deref())
}

pub fn bench(ws: &Workspace, args: &[String]) -> Result<()> {
    let only_reads = args
        .iter()
        .any(|a| ["--no-build", "--list", "--help", "-h"].contains(&a.as_str()));
    let bin = if only_reads {
        None
    } else {
        // stdout carries the report only: setup and build talk on stderr.
        Some(util::stdout_to_stderr(|| {
            let bin = build::run(ws)?;
            setup::bench_tools(ws)?;
            Ok(bin)
        })?)
    };
    let path = util::stdout_to_stderr(|| build::tool(ws, "meshprobe-bench"))?;
    exec_built(ws, &path, &[], args, bin.as_deref())
}

/// Builds PACKAGE, then becomes its binary with `lead` + `args`.
fn exec(
    ws: &Workspace,
    package: &str,
    lead: &[&str],
    args: &[String],
    meshprobe_bin: Option<&Path>,
) -> Result<()> {
    let path = build::tool(ws, package)?;
    exec_built(ws, &path, lead, args, meshprobe_bin)
}

fn exec_built(
    ws: &Workspace,
    path: &Path,
    lead: &[&str],
    args: &[String],
    meshprobe_bin: Option<&Path>,
) -> Result<()> {
    let mut cmd = ws.command(path);
    cmd.args(lead).args(args);
    if let Some(bin) = meshprobe_bin {
        cmd.env("MESHPROBE_BIN", bin);
    }
    let err = cmd.exec();
    Err(err).with_context(|| format!("could not start {}", path.display()))
}
