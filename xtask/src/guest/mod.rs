//! `cargo xtask test --kernel NAME`: a chosen set of the root integration tests, run inside a
//! guest that boots one of the kernels users run ([`kernel::KERNELS`]) with virtme-ng, on this
//! machine's own root file system (read-only) and binaries. `cargo xtask test` runs the same
//! set on [`CI_KERNEL`] after the host's tests.
//!
//! The test binaries are built on the host (`cargo test --no-run`) and run in the guest as
//! they are; their output comes back as the test runner's usual lines.

mod kernel;
mod vm;

use std::{collections::BTreeMap, path::PathBuf, time::Duration};

use anyhow::{Context as _, Result, bail};

use crate::{
    util::{self, Workspace},
    venv::{self, Venv},
};

/// The guest kernel `cargo xtask test` (and so CI) runs the set on.
pub const CI_KERNEL: &str = "debian-6.1";

/// One test binary of `tests/tests/` (with an optional name filter) and what it proves on a
/// guest kernel.
struct GuestTest {
    binary: &'static str,
    filter: &'static str,
    proves: &'static str,
}

/// What runs in the guest. Timings under TCG (two emulated CPUs) are in the README.
const SET: &[GuestTest] = &[
    GuestTest {
        binary: "lifecycle",
        filter: "",
        proves: "programs load and attach (clsact below 6.6) and leave nothing behind",
    },
    GuestTest {
        binary: "correctness",
        filter: "",
        proves: "kernel stamps agree with the capture reference, idle and under load",
    },
    GuestTest {
        binary: "kernel_clock",
        filter: "",
        proves: "the monotonic-clock fallback (kernels without the TAI helper)",
    },
    GuestTest {
        binary: "handoff",
        filter: "",
        proves: "T1 at the driver hand-off (tp_btf, offsets from the kernel BTF), or a loud skip",
    },
    GuestTest {
        binary: "transparency",
        filter: "",
        proves: "non-probe traffic untouched, checksums right on the wire",
    },
    GuestTest {
        binary: "safety_foreign",
        filter: "",
        proves: "foreign datagrams on probe ports are not rewritten",
    },
    GuestTest {
        binary: "loss",
        filter: "",
        proves: "loss is reported exactly",
    },
    GuestTest {
        binary: "malformed",
        filter: "",
        proves: "malformed requests are dropped and counted",
    },
    GuestTest {
        binary: "delay",
        filter: "",
        proves: "added delay shows in the network RTT: the delay element and netem agree",
    },
    GuestTest {
        binary: "trace_reference",
        filter: "ipv4",
        proves: "the tracepoint reference (tp_btf, BTF offsets) against the capture, leg by leg",
    },
    GuestTest {
        binary: "agent_rx_stamps",
        filter: "",
        proves: "two agents and the broker: where each T4 comes from, RX stamps switched on once",
    },
    GuestTest {
        binary: "agent_mesh",
        filter: "ipv4",
        proves: "agents with ZooKeeper and the broker discover each other and measure delays",
    },
];

/// virtme-ng, pinned in `xtask/guest-requirements.txt`.
const VENV: Venv = Venv {
    name: "guest-venv",
    requirements: "xtask/guest-requirements.txt",
    imports: "virtme_ng",
};

/// Modules the tests use, loaded before them: the guest has no udev to load them on demand
/// (a missing one is reported and the test that needs it says why it failed).
const MODULES: &[&str] = &[
    "tun",
    "veth",
    "bridge",
    "dummy",
    "sch_netem",
    "sch_htb",
    "sch_tbf",
    "sch_ingress",
    "cls_bpf",
    "nf_tables",
];

/// Whole-guest limit: a hung guest must not hold CI.
const LIMIT: Duration = Duration::from_secs(25 * 60);

/// Runs the set on the guest kernel `name`. `bin` is the release meshprobe binary (the lab's,
/// the delay element's and the tracer's are beside it).
pub fn run(ws: &Workspace, name: &str, bin: &std::path::Path) -> Result<()> {
    let k = kernel::find(name)?;
    if !util::is_root() {
        bail!("the guest tests run the root integration tests: run as root");
    }
    let unpacked = kernel::fetch(ws, k)?;
    let venv = VENV.ensure(ws)?;
    let binaries = test_binaries(ws)?;
    let lab = crate::build::tool(ws, "meshprobe-lab")?;
    let work = ws.target_dir.join("guest").join(k.name);
    std::fs::create_dir_all(&work).with_context(|| format!("cannot create {}", work.display()))?;
    let script = work.join("run.sh");
    let (accel, why) = vm::choose_accel()?;
    std::fs::write(
        &script,
        script_text(
            &binaries,
            bin,
            &lab,
            &work,
            accel.time_scale(),
            k.cannot_run,
        )?,
    )?;
    make_executable(&script)?;

    println!(
        "[guest] {} ({}, {}) under {accel} ({why}); {} test binaries",
        k.name,
        unpacked.release,
        k.who,
        SET.len()
    );
    let status = vm::boot(
        ws,
        &vm::Boot {
            vng: &venv::bin(&venv, "vng"),
            vmlinuz: &unpacked.vmlinuz,
            accel,
            work: &work,
            script: &script,
            cpus: 2,
            memory: "4G",
            limit: LIMIT,
        },
    )?;
    match status.strip_prefix("failed:") {
        None if status == "ok" => {
            println!(
                "[guest] {}: {} test binaries passed, {} cannot run on it (said above)",
                k.name,
                SET.len() - k.cannot_run.len(),
                k.cannot_run.len()
            );
            Ok(())
        }
        Some(list) => bail!("on {} ({}): failed:{list}", k.name, unpacked.release),
        None => bail!("the guest wrote an unknown status `{status}`"),
    }
}

/// The integration test executables, by name, from `cargo test --no-run` (built here if
/// needed): `Executable tests/NAME.rs (PATH)` lines.
fn test_binaries(ws: &Workspace) -> Result<BTreeMap<String, PathBuf>> {
    let mut cmd = ws.cargo();
    cmd.args(["test", "-p", "meshprobe-tests", "--release", "--no-run"]);
    println!("+ {}", util::display(&cmd));
    let out = cmd.output().context("cannot run cargo test --no-run")?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        bail!("cargo test --no-run failed:\n{stderr}");
    }
    let found = parse_executables(&stderr, &ws.root);
    for t in SET {
        if !found.contains_key(t.binary) {
            bail!(
                "no test binary `{}` in tests/tests/ (guest set out of date)",
                t.binary
            );
        }
    }
    Ok(found)
}

fn parse_executables(cargo_stderr: &str, root: &std::path::Path) -> BTreeMap<String, PathBuf> {
    cargo_stderr
        .lines()
        .filter_map(|l| {
            let rest = l.trim().strip_prefix("Executable tests/")?;
            let (name, path) = rest.split_once(".rs (")?;
            let path = PathBuf::from(path.strip_suffix(')')?);
            Some((
                name.to_owned(),
                if path.is_absolute() {
                    path
                } else {
                    root.join(path)
                },
            ))
        })
        .collect()
}

/// `s` as one single-quoted shell word (a quote inside becomes `'\''`).
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The guest's job: load the modules, run each test binary one test at a time, write
/// `output.log` as it goes and `status` (`ok` or `failed: NAME…`) last.
fn script_text(
    binaries: &BTreeMap<String, PathBuf>,
    bin: &std::path::Path,
    lab: &std::path::Path,
    work: &std::path::Path,
    time_scale: u32,
    cannot_run: &[(&str, &str)],
) -> Result<String> {
    let q = |p: &std::path::Path| -> Result<String> {
        Ok(sh_quote(p.to_str().context("non-UTF-8 path")?))
    };
    let mut s = String::from("#!/bin/bash\n# Written by `cargo xtask test --kernel`.\n");
    s += &format!("exec >{} 2>&1\n", q(&work.join(vm::OUTPUT))?);
    s += &format!("cd {}\n", q(work)?);
    s += "echo \"[guest] kernel $(uname -r), $(nproc) CPUs\"\n";
    s += &format!(
        "for m in {}; do modprobe \"$m\" || echo \"[guest] module $m: not loaded\"; done\n",
        MODULES.join(" ")
    );
    s += &format!(
        "export MESHPROBE_BIN={} MESHPROBE_LAB={} CI=1 MESHPROBE_TEST_TIME_SCALE={time_scale}\n",
        q(bin)?,
        q(lab)?
    );
    s += "failed=''\n";
    for t in SET {
        if let Some((_, why)) = cannot_run.iter().find(|(b, _)| *b == t.binary) {
            s += &format!(
                "echo; echo {}\n",
                sh_quote(&format!(
                    "[guest] ##### SKIPPED {} on this kernel: {why}",
                    t.binary
                ))
            );
            continue;
        }
        let exe = q(&binaries[t.binary])?;
        s += &format!(
            "echo; echo {}\n",
            sh_quote(&format!(
                "[guest] === {} {}: {}",
                t.binary, t.filter, t.proves
            ))
        );
        s += "start=$SECONDS\n";
        s += &format!(
            "if {exe} --nocapture --test-threads=1 {}; then r=passed; else r=FAILED; \
             failed=\"$failed {}\"; fi\n",
            t.filter, t.binary
        );
        s += &format!(
            "echo \"[guest] {} $r in $((SECONDS - start)) s\"\n",
            t.binary
        );
    }
    s += &format!(
        "if [ -z \"$failed\" ]; then echo ok >{st}; else echo \"failed:$failed\" >{st}; fi\n",
        st = q(&work.join(vm::STATUS))?
    );
    Ok(s)
}

fn make_executable(p: &std::path::Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755))
        .with_context(|| format!("cannot chmod {}", p.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn executables_are_read_from_cargo_output() {
        let err = "   Compiling x\n  Executable unittests src/lib.rs (target/release/deps/h-1)\n  \
                   Executable tests/loss.rs (target/release/deps/loss-807e)\n  \
                   Executable tests/agent_mesh.rs (/abs/deps/agent_mesh-8d45)\n";
        let m = parse_executables(err, std::path::Path::new("/w"));
        assert_eq!(m.len(), 2);
        assert_eq!(m["loss"], PathBuf::from("/w/target/release/deps/loss-807e"));
        assert_eq!(m["agent_mesh"], PathBuf::from("/abs/deps/agent_mesh-8d45"));
    }

    #[test]
    fn a_quote_in_a_word_stays_in_the_word() {
        let out = std::process::Command::new("bash")
            .arg("-c")
            .arg(format!("printf %s {}", sh_quote("it's 'quoted' $HOME")))
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8(out.stdout).unwrap(),
            "it's 'quoted' $HOME"
        );
    }

    #[test]
    fn the_script_runs_every_test_and_writes_a_status() {
        let bins = SET
            .iter()
            .map(|t| {
                (
                    t.binary.to_owned(),
                    PathBuf::from(format!("/t/{}", t.binary)),
                )
            })
            .collect();
        let p = std::path::Path::new;
        let s = script_text(
            &bins,
            p("/b/meshprobe"),
            p("/b/meshprobe-lab"),
            p("/w"),
            4,
            &[("loss", "no reason")],
        )
        .unwrap();
        assert!(s.contains("SKIPPED loss on this kernel: no reason"));
        assert!(!s.contains("'/t/loss' --nocapture"));
        assert!(s.contains("MESHPROBE_TEST_TIME_SCALE=4"));
        for t in SET.iter().filter(|t| t.binary != "loss") {
            assert!(
                s.contains(&format!("'/t/{}' --nocapture", t.binary)),
                "{}",
                t.binary
            );
        }
        assert!(s.contains("exec >'/w/output.log'"));
        assert!(s.contains(">'/w/status'"));
        assert!(s.contains("modprobe"));
    }
}
