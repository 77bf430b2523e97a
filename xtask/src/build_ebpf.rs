//! `cargo xtask build-ebpf`: build the BPF objects (the probe's, the delay element's, the
//! tracer's) on their own, for inspection (`llvm-objdump`, `bpftool`) and for the eBPF lint. The binaries do
//! not use these objects: their build.rs build and embed fresh ones through aya-build.

use std::process::Command;

use anyhow::Result;

use crate::util::{self, Workspace};

pub const EBPF_PACKAGE: &str = "probe-ebpf";
pub const BPF_TARGET: &str = "bpfel-unknown-none";

/// `cargo +nightly <subcommand> -p probe-ebpf --release --target bpfel-unknown-none
/// -Z build-std=core`, with the rustflags aya-build uses (so the object matches the embedded
/// one, BTF included, and build and clippy share one build cache).
pub fn nightly_cargo(ws: &Workspace, subcommand: &str) -> Command {
    let mut cmd = ws.cargo();
    cmd.env(
        "RUSTFLAGS",
        format!(
            "--cfg=bpf_target_arch=\"{}\" -Cdebuginfo=2 -Clink-arg=--btf",
            std::env::consts::ARCH
        ),
    )
    .args([
        "+nightly",
        subcommand,
        "-p",
        EBPF_PACKAGE,
        "--release",
        "--target",
        BPF_TARGET,
        "-Z",
        "build-std=core",
    ]);
    cmd
}

pub fn run(ws: &Workspace) -> Result<()> {
    util::run(&mut nightly_cargo(ws, "build"))?;
    // Its two programs' objects: the probe's and the delay element's.
    for object in ["probe-ebpf", "delay-ebpf"] {
        let object = ws.target_dir.join(BPF_TARGET).join("release").join(object);
        let size = util::file_size(&object)?;
        println!("[build-ebpf] {} ({size} bytes)", object.display());
    }
    Ok(())
}
