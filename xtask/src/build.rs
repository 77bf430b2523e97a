//! `cargo xtask build`: setup, then the release `meshprobe` binary and beside it the lab/test
//! delay element `meshprobe-delay` and the tests' tracepoint reference `meshprobe-tracer`
//! (their build.rs build and embed their eBPF objects with the nightly toolchain).

use std::path::PathBuf;

use anyhow::Result;

use crate::{
    setup,
    util::{self, Workspace},
};

pub fn run(ws: &Workspace) -> Result<PathBuf> {
    setup::run(ws)?;
    build_release(ws)
}

/// `cargo build --release -p probe-user -p meshprobe-delay -p meshprobe-tracer`; returns
/// meshprobe's absolute path (the harness finds the other two beside it).
pub fn build_release(ws: &Workspace) -> Result<PathBuf> {
    util::run(ws.cargo().args([
        "build",
        "--release",
        "-p",
        "probe-user",
        "-p",
        "meshprobe-delay",
        "-p",
        "meshprobe-tracer",
    ]))?;
    let bin = ws.meshprobe_bin();
    let size = util::file_size(&bin)?;
    println!("[build] {} ({size} bytes)", bin.display());
    Ok(bin)
}

/// `cargo build --release -p PACKAGE` for a tool of this workspace whose binary has the
/// package's name (the lab, the bench); returns the binary's absolute path.
pub fn tool(ws: &Workspace, package: &str) -> Result<PathBuf> {
    util::run(ws.cargo().args(["build", "--release", "-p", package]))?;
    Ok(ws.target_dir.join("release").join(package))
}
