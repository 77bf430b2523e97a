//! `cargo xtask test`: everything CI runs, in order, stopping at the first failed step:
//! setup, build, lint, unit + property tests, root integration tests (network namespaces), and
//! the guest set on Debian's 6.1 kernel ([`guest`]). `--kernel NAME`: setup, build, guest set.

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};

use crate::{
    build, build_ebpf, guest, lint, setup,
    util::{self, Workspace},
};

const SKIP_BANNER: &str = "\
################################################################################
##  SKIPPED root integration tests: not root                                  ##
##  They create network namespaces and attach eBPF programs, which needs      ##
##  root. Run `cargo xtask test` as root to include them (CI runs as root).   ##
################################################################################";

pub fn run(ws: &Workspace, kernel: Option<&str>) -> Result<()> {
    let mut done: Vec<(&str, Duration)> = Vec::new();
    let mut step = |name: &'static str, f: &mut dyn FnMut() -> Result<()>| -> Result<()> {
        println!("\n==> [test] {name}");
        let start = Instant::now();
        f().with_context(|| format!("test step `{name}` failed"))?;
        done.push((name, start.elapsed()));
        Ok(())
    };

    step("setup", &mut || setup::run(ws))?;
    let mut bin = None;
    step("build", &mut || {
        bin = Some(build::build_release(ws)?);
        Ok(())
    })?;
    let bin = bin.expect("build step sets the binary path");
    if let Some(name) = kernel {
        step("guest tests", &mut || guest::run(ws, name, &bin))?;
        return report(&done, true);
    }
    step("lint", &mut || lint::run(ws))?;
    step("chart tests", &mut || crate::chart::run(ws))?;
    step("unit + property tests", &mut || {
        util::run(ws.cargo().args([
            "test",
            "--workspace",
            "--exclude",
            "meshprobe-tests",
            "--exclude",
            build_ebpf::EBPF_PACKAGE,
        ]))
    })?;

    let root = util::is_root();
    if root {
        step("root integration tests", &mut || {
            // The lab CLI test drives `cargo xtask mesh`'s binary.
            let lab = build::tool(ws, "meshprobe-lab")?;
            util::run(
                ws.cargo()
                    .env("MESHPROBE_BIN", &bin)
                    .env("MESHPROBE_LAB", &lab)
                    .args([
                        "test",
                        "-p",
                        "meshprobe-tests",
                        "--release",
                        "--no-fail-fast",
                        "--",
                        // Tests print what they measured; CI logs should show it.
                        "--nocapture",
                    ])
                    .arg("--test-threads=1"),
            )
        })?;
        step("guest tests", &mut || {
            guest::run(ws, guest::CI_KERNEL, &bin)
        })?;
    } else {
        println!("\n{SKIP_BANNER}");
    }
    report(&done, root)
}

fn report(done: &[(&str, Duration)], root: bool) -> Result<()> {
    println!("\n[test] passed:");
    for (name, took) in done {
        println!("[test]   {name:<26} {:>7.1}s", took.as_secs_f64());
    }
    if !root {
        println!("{SKIP_BANNER}");
    }
    Ok(())
}
