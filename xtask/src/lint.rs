//! `cargo xtask lint`: rustfmt, clippy on the userspace crates, clippy on the eBPF crates.
//! Runs all three and fails if any failed, naming them.

use anyhow::{Result, bail};

use crate::{
    build_ebpf,
    util::{self, Workspace},
};

pub fn run(ws: &Workspace) -> Result<()> {
    let mut failed = Vec::new();

    let mut fmt = ws.cargo();
    fmt.args(["fmt", "--all", "--check"]);

    // Every member except the eBPF crate (= the default members): probe-ebpf is no_std/no_main
    // for bpfel-unknown-none and is linted below with its own target and toolchain.
    let mut clippy = ws.cargo();
    clippy.args([
        "clippy",
        "--workspace",
        "--exclude",
        build_ebpf::EBPF_PACKAGE,
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]);

    let mut clippy_ebpf = build_ebpf::nightly_cargo(ws, "clippy");
    clippy_ebpf.args(["--", "-D", "warnings"]);

    for (name, mut cmd) in [
        ("rustfmt", fmt),
        ("clippy", clippy),
        ("clippy (eBPF, nightly)", clippy_ebpf),
    ] {
        println!("[lint] {name}");
        if let Err(e) = util::run(&mut cmd) {
            println!("[lint] {name}: FAILED: {e:#}");
            failed.push(name);
        }
    }
    if !failed.is_empty() {
        bail!("lint failed: {}", failed.join(", "));
    }
    println!("[lint] all clean");
    Ok(())
}
