//! `cargo xtask setup`: make this machine able to build, lint and test meshprobe.
//!
//! Idempotent: every step first checks whether its requirement is met and installs only what
//! is missing, printing one progress line per step. To add a requirement (ZooKeeper, Tansu,
//! ...), write a `check` and an `install` function and append a [`Step`] to [`STEPS`]; a plain
//! Debian package only needs a line in [`APT_PACKAGES`].
//!
//! Never runs `cargo update`: Cargo.lock pins aya-build 0.2.0 (newer aya releases need a newer
//! rustc than the one available here).

use std::{
    ffi::OsString,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};

use crate::util::{self, Workspace};

/// Debian packages the integration tests and the demo use: (package, a binary it provides).
/// The binary is what gets checked on systems without dpkg.
const APT_PACKAGES: &[(&str, &str)] = &[
    ("tcpdump", "tcpdump"),     // captures: checksums and stamps on the wire
    ("stress-ng", "stress-ng"), // CPU/scheduler load while probing
    ("ethtool", "ethtool"),     // toggling tx checksum offload on veths
    ("nftables", "nft"),        // packet filtering (loss) in the lab
    ("iproute2", "ip"),         // netns, veth, addresses
    ("iputils-ping", "ping"),   // reachability checks
    // ZooKeeper 3.8 for the agent tests (jars in /usr/share/java, run by the test harness);
    // it pulls in a JRE. slf4j-simple.jar (libslf4j-java) lets it log to a file.
    ("default-jre-headless", "java"),
    ("zookeeper", "java"),
    ("libslf4j-java", "java"),
    // The Helm chart tests run in a Python venv (`cargo xtask chart`).
    ("python3-venv", "python3"),
    // setcap: the capability test gives a copy of the binary file capabilities.
    ("libcap2-bin", "setcap"),
    // rdkafka's "ssl" feature builds librdkafka against the system OpenSSL (found through
    // pkg-config). libssl-dev has no binary: without dpkg, pkg-config stands for both.
    ("libssl-dev", "pkg-config"),
    ("pkg-config", "pkg-config"),
    // The guest kernels (`cargo xtask test --kernel`): qemu runs them through virtme-ng (from
    // PyPI, in a cached venv), which needs modprobe and a static busybox for its initramfs.
    ("qemu-system-x86", "qemu-system-x86_64"),
    ("kmod", "kmod"),
    ("busybox-static", "busybox"),
];

/// What only `cargo xtask bench` needs on top of [`APT_PACKAGES`] (installed by
/// [`bench_tools`], never by `setup`/`test`): the contenders and loads the benchmarks run.
pub const BENCH_APT_PACKAGES: &[(&str, &str)] = &[
    ("iputils-ping", "ping"),   // precision: the kernel-stamped ICMP contender
    ("sockperf", "sockperf"),   // precision and fast path: UDP/TCP ping-pong
    ("stress-ng", "stress-ng"), // precision under full CPU load
    ("iperf3", "iperf3"),       // fast path and eBPF cost: TCP/UDP traffic
    ("bpftool", "bpftool"),     // eBPF cost: program names behind the fds
    ("strace", "strace"),       // footprint: syscall counts when a goal is missed
    ("linux-perf", "perf"),     // footprint and capacity: where the CPU goes (samples, counts)
];

/// bpf-linker release built when it is missing: the one tested here (features `llvm-21`,
/// `llvm-22`, `llvm-23`), pinned with `--locked` so a fresh machine builds what was tested.
const BPF_LINKER_VERSION: &str = "0.13.0";

/// Tansu (Kafka-protocol broker for the agent tests), pinned like bpf-linker. `libsql` gives
/// the SQLite storage engine (`sqlite://`), the only one that keeps the broker's data across a
/// restart on a local machine (`dynostore` offers `s3://` and `memory://` only); the tests stop
/// and restart the broker and audit that nothing was lost.
const TANSU_VERSION: &str = "0.6.0";
const TANSU_FEATURES: &[&str] = &["dynostore", "libsql"];

/// Outcome of a step's check.
enum State {
    /// Requirement met; the text says what was found (a version, a list).
    Present(String),
    /// Requirement not met; the text says why.
    Missing(String),
}

struct Step {
    name: &'static str,
    check: fn(&Workspace) -> Result<State>,
    install: fn(&Workspace) -> Result<()>,
}

const STEPS: &[Step] = &[
    Step {
        name: "apt packages",
        check: apt_check,
        install: apt_install,
    },
    Step {
        name: "rustfmt + clippy (stable)",
        check: stable_components_check,
        install: stable_components_install,
    },
    Step {
        name: "nightly toolchain",
        check: nightly_check,
        install: nightly_install,
    },
    Step {
        name: "rust-src (nightly)",
        check: rust_src_check,
        install: rust_src_install,
    },
    Step {
        name: "clippy (nightly)",
        check: nightly_clippy_check,
        install: nightly_clippy_install,
    },
    Step {
        name: "bpf-linker",
        check: bpf_linker_check,
        install: bpf_linker_install,
    },
    Step {
        name: "tansu",
        check: tansu_check,
        install: tansu_install,
    },
];

pub fn run(ws: &Workspace) -> Result<()> {
    for step in STEPS {
        let tag = format!("[setup] {}", step.name);
        match (step.check)(ws).with_context(|| format!("{tag}: check failed"))? {
            State::Present(what) => println!("{tag}: installed {what} (cached)"),
            State::Missing(why) => {
                println!("{tag}: {why}; installing...");
                (step.install)(ws).with_context(|| format!("{tag}: install failed"))?;
                match (step.check)(ws)? {
                    State::Present(what) => println!("{tag}: installed {what}"),
                    State::Missing(why) => bail!("{tag}: still missing after install: {why}"),
                }
            }
        }
    }
    println!("[setup] done");
    Ok(())
}

// ---- apt packages -------------------------------------------------------------------------

fn has_dpkg() -> bool {
    which::which("dpkg").is_ok()
}

fn apt_missing(ws: &Workspace) -> Vec<&'static str> {
    apt_missing_of(ws, APT_PACKAGES)
}

/// The packages of `list` that are not installed.
fn apt_missing_of(ws: &Workspace, list: &[(&'static str, &str)]) -> Vec<&'static str> {
    let dpkg = has_dpkg();
    list.iter()
        .filter(|(pkg, bin)| {
            if dpkg {
                // `dpkg -s` also succeeds for removed-but-not-purged packages: read Status.
                let status = util::probe(ws.command("dpkg").args(["-s", pkg]));
                !status.is_some_and(|out| {
                    out.status.success()
                        && String::from_utf8_lossy(&out.stdout)
                            .lines()
                            .any(|l| l.starts_with("Status:") && l.ends_with(" installed"))
                })
            } else {
                which::which(bin).is_err()
            }
        })
        .map(|(pkg, _)| *pkg)
        .collect()
}

fn apt_check(ws: &Workspace) -> Result<State> {
    let missing = apt_missing(ws);
    Ok(if missing.is_empty() {
        let all: Vec<_> = APT_PACKAGES.iter().map(|(p, _)| *p).collect();
        State::Present(all.join(" "))
    } else {
        State::Missing(format!("missing {}", missing.join(" ")))
    })
}

fn apt_install(ws: &Workspace) -> Result<()> {
    apt_install_list(ws, &apt_missing(ws))
}

/// The bench's tools ([`BENCH_APT_PACKAGES`]): installs what is missing, one progress line
/// like the other steps.
pub fn bench_tools(ws: &Workspace) -> Result<()> {
    let tag = "[setup] bench tools";
    let missing = apt_missing_of(ws, BENCH_APT_PACKAGES);
    let all: Vec<_> = BENCH_APT_PACKAGES.iter().map(|(p, _)| *p).collect();
    if missing.is_empty() {
        println!("{tag}: installed {} (cached)", all.join(" "));
        return Ok(());
    }
    println!("{tag}: missing {}; installing...", missing.join(" "));
    apt_install_list(ws, &missing).with_context(|| format!("{tag}: install failed"))?;
    let still = apt_missing_of(ws, BENCH_APT_PACKAGES);
    if !still.is_empty() {
        bail!("{tag}: still missing after install: {}", still.join(" "));
    }
    println!("{tag}: installed {}", all.join(" "));
    Ok(())
}

fn apt_install_list(ws: &Workspace, missing: &[&str]) -> Result<()> {
    if !has_dpkg() || which::which("apt-get").is_err() {
        bail!(
            "not a Debian-like system (no dpkg/apt-get): install the packages providing {} \
             with your package manager",
            missing.join(" ")
        );
    }
    // Root installs directly; otherwise sudo if there is one; else say what to run.
    let sudo = if util::is_root() {
        false
    } else if which::which("sudo").is_ok() {
        true
    } else {
        bail!(
            "not root and no sudo: run as root `apt-get update && apt-get install -y {}`",
            missing.join(" ")
        );
    };
    let apt = |args: &[&str]| {
        let mut cmd = if sudo {
            let mut c = ws.command("sudo");
            c.args(["env", "DEBIAN_FRONTEND=noninteractive", "apt-get"]);
            c
        } else {
            let mut c = ws.command("apt-get");
            c.env("DEBIAN_FRONTEND", "noninteractive");
            c
        };
        cmd.args(args);
        cmd
    };
    util::run(&mut apt(&["update"]))?;
    let mut install = apt(&["install", "-y", "--no-install-recommends"]);
    install.args(missing);
    util::run(&mut install)
}

// ---- Rust toolchains ----------------------------------------------------------------------

fn runs(ws: &Workspace, program: &str, args: &[&str]) -> Option<String> {
    util::probe_stdout(ws.command(program).args(args))
}

fn stable_components_check(ws: &Workspace) -> Result<State> {
    // The toolchain that plain `cargo` selects in the workspace (stable).
    let fmt = runs(ws, "cargo", &["fmt", "--version"]);
    let clippy = runs(ws, "cargo", &["clippy", "--version"]);
    Ok(match (fmt, clippy) {
        (Some(f), Some(c)) => State::Present(format!("{f}, {c}")),
        _ => State::Missing("`cargo fmt`/`cargo clippy` not available".into()),
    })
}

fn stable_components_install(ws: &Workspace) -> Result<()> {
    util::run(
        ws.command("rustup")
            .args(["component", "add", "rustfmt", "clippy"]),
    )
}

/// `rustc +nightly -vV` output, if the nightly toolchain works.
fn nightly_version(ws: &Workspace) -> Option<String> {
    runs(ws, "rustc", &["+nightly", "-vV"])
}

fn version_field<'a>(vv: &'a str, key: &str) -> Option<&'a str> {
    vv.lines().find_map(|l| l.strip_prefix(key)).map(str::trim)
}

fn nightly_check(ws: &Workspace) -> Result<State> {
    if which::which("rustup").is_err() {
        bail!("rustup not found: install it from https://rustup.rs (the eBPF crate needs nightly)");
    }
    Ok(match nightly_version(ws) {
        Some(vv) => State::Present(format!(
            "{} (LLVM {})",
            version_field(&vv, "release:").unwrap_or("?"),
            version_field(&vv, "LLVM version:").unwrap_or("?"),
        )),
        None => State::Missing("`rustc +nightly` does not run".into()),
    })
}

fn nightly_install(ws: &Workspace) -> Result<()> {
    util::run(ws.command("rustup").args([
        "toolchain",
        "install",
        "nightly",
        "--profile",
        "minimal",
    ]))
    .context(
        "the nightly toolchain is required to build the eBPF crate (-Z build-std) and could \
             not be installed (offline?); install it with `rustup toolchain install nightly`",
    )
}

fn nightly_component_installed(ws: &Workspace, component: &str) -> bool {
    runs(
        ws,
        "rustup",
        &["component", "list", "--toolchain", "nightly", "--installed"],
    )
    .is_some_and(|list| {
        list.lines()
            .any(|l| l.trim() == component || l.trim().starts_with(&format!("{component}-")))
    })
}

fn rust_src_check(ws: &Workspace) -> Result<State> {
    Ok(if nightly_component_installed(ws, "rust-src") {
        State::Present("rust-src".into())
    } else {
        State::Missing("not installed (needed by -Z build-std=core)".into())
    })
}

fn rust_src_install(ws: &Workspace) -> Result<()> {
    util::run(
        ws.command("rustup")
            .args(["component", "add", "rust-src", "--toolchain", "nightly"]),
    )
}

fn nightly_clippy_check(ws: &Workspace) -> Result<State> {
    Ok(
        match runs(ws, "cargo", &["+nightly", "clippy", "--version"]) {
            Some(v) => State::Present(v),
            None => State::Missing("not installed (lints the eBPF crate)".into()),
        },
    )
}

fn nightly_clippy_install(ws: &Workspace) -> Result<()> {
    util::run(
        ws.command("rustup")
            .args(["component", "add", "clippy", "--toolchain", "nightly"]),
    )
}

// ---- bpf-linker ---------------------------------------------------------------------------

/// The nightly's sysroot and LLVM major version: bpf-linker must link that very libLLVM.
fn nightly_llvm(ws: &Workspace) -> Result<(PathBuf, u32)> {
    let sysroot = runs(ws, "rustc", &["+nightly", "--print", "sysroot"])
        .context("`rustc +nightly --print sysroot` failed")?;
    let vv = nightly_version(ws).context("`rustc +nightly -vV` failed")?;
    let llvm = version_field(&vv, "LLVM version:")
        .context("`rustc +nightly -vV` prints no `LLVM version:` line")?;
    let major = llvm
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .with_context(|| format!("cannot parse LLVM version {llvm:?}"))?;
    Ok((PathBuf::from(sysroot), major))
}

/// bpf-linker on PATH, else where `cargo install` puts binaries ($CARGO_INSTALL_ROOT/bin,
/// else $CARGO_HOME/bin, else ~/.cargo/bin).
fn find_bpf_linker() -> Option<PathBuf> {
    which::which("bpf-linker").ok().or_else(|| {
        let env = |k| std::env::var_os(k).map(PathBuf::from);
        let root = env("CARGO_INSTALL_ROOT")
            .or_else(|| env("CARGO_HOME"))
            .or_else(|| env("HOME").map(|h| h.join(".cargo")))?;
        let p = root.join("bin").join("bpf-linker");
        p.is_file().then_some(p)
    })
}

/// LD_LIBRARY_PATH with the nightly's lib dir first. rustup puts it there when rustc runs
/// bpf-linker as its linker, so this is the environment the binary really runs in; it also
/// covers a binary whose RUNPATH points at an LLVM_PREFIX folder that has since gone away.
fn nightly_ld_library_path(sysroot: &Path) -> OsString {
    let mut paths = vec![sysroot.join("lib")];
    if let Some(old) = std::env::var_os("LD_LIBRARY_PATH") {
        paths.extend(std::env::split_paths(&old));
    }
    std::env::join_paths(paths).unwrap_or_default()
}

fn bpf_linker_check(ws: &Workspace) -> Result<State> {
    let Some(bin) = find_bpf_linker() else {
        return Ok(State::Missing("not found on PATH".into()));
    };
    let mut cmd = ws.command(&bin);
    cmd.arg("--version");
    if let Ok((sysroot, _)) = nightly_llvm(ws) {
        cmd.env("LD_LIBRARY_PATH", nightly_ld_library_path(&sysroot));
    }
    let Some(out) = util::probe(&mut cmd) else {
        return Ok(State::Missing(format!(
            "{} cannot be executed",
            bin.display()
        )));
    };
    if !out.status.success() {
        return Ok(State::Missing(format!(
            "{} does not run ({}), rebuilding it against the nightly's LLVM",
            bin.display(),
            util::first_error_line(&out)
        )));
    }
    let version = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .last()
        .unwrap_or("?")
        .to_owned();
    let note = if which::which("bpf-linker").is_err() {
        format!(" at {} (add its folder to PATH)", bin.display())
    } else {
        String::new()
    };
    Ok(State::Present(format!("{version}{note}")))
}

/// Builds bpf-linker against the nightly's own libLLVM: a prefix folder whose
/// `lib/libLLVM.so` points at `<sysroot>/lib/libLLVM.so.<MAJOR>.*-rust-*`.
fn bpf_linker_install(ws: &Workspace) -> Result<()> {
    let (sysroot, major) = nightly_llvm(ws)?;
    let lib_dir = sysroot.join("lib");
    let wanted = format!("libLLVM.so.{major}.");
    let libllvm = std::fs::read_dir(&lib_dir)
        .with_context(|| format!("cannot read {}", lib_dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&wanted) && n.contains("-rust-"))
        })
        .with_context(|| {
            format!(
                "no {wanted}*-rust-* in {} (is the nightly toolchain complete?)",
                lib_dir.display()
            )
        })?;

    // `libLLVM.so` is what the build links against (-lLLVM); the second link, named like the
    // library's soname, lets the installed binary load it through its RUNPATH (this folder)
    // without rustup's LD_LIBRARY_PATH. The folder lives beside the cargo installation, not in
    // this checkout's target/, so the RUNPATH stays valid after `cargo clean` or in a new clone.
    let prefix = cargo_home()?.join("meshprobe-llvm-prefix");
    let prefix_lib = prefix.join("lib");
    std::fs::create_dir_all(&prefix_lib)
        .with_context(|| format!("cannot create {}", prefix_lib.display()))?;
    let soname = libllvm
        .file_name()
        .context("libLLVM path has no file name")?;
    for name in [std::ffi::OsStr::new("libLLVM.so"), soname] {
        let link = prefix_lib.join(name);
        if link.symlink_metadata().is_ok() {
            std::fs::remove_file(&link)
                .with_context(|| format!("cannot replace {}", link.display()))?;
        }
        std::os::unix::fs::symlink(&libllvm, &link)
            .with_context(|| format!("cannot link {} -> {}", link.display(), libllvm.display()))?;
    }
    println!(
        "[setup] bpf-linker: LLVM_PREFIX {} -> {}",
        prefix.display(),
        libllvm.display()
    );

    let mut cmd = ws.cargo();
    cmd.env("LLVM_PREFIX", &prefix).args([
        "install",
        "bpf-linker",
        "--version",
        BPF_LINKER_VERSION,
        "--locked",
        "--no-default-features",
        "--features",
        &format!("llvm-{major}"),
    ]);
    // A binary that is there but does not run (an LLVM that went away) gets replaced.
    if find_bpf_linker().is_some() {
        cmd.arg("--force");
    }
    util::run(&mut cmd)
}

/// `$CARGO_HOME`, else `~/.cargo`.
fn cargo_home() -> anyhow::Result<std::path::PathBuf> {
    if let Some(h) = std::env::var_os("CARGO_HOME") {
        return Ok(h.into());
    }
    let home = std::env::var_os("HOME").context("neither CARGO_HOME nor HOME is set")?;
    Ok(std::path::Path::new(&home).join(".cargo"))
}

// ---- tansu --------------------------------------------------------------------------------

/// Where `cargo install` puts binaries: $CARGO_INSTALL_ROOT, else $CARGO_HOME, else ~/.cargo.
fn cargo_install_root() -> Result<PathBuf> {
    match std::env::var_os("CARGO_INSTALL_ROOT") {
        Some(r) => Ok(r.into()),
        None => cargo_home(),
    }
}

/// tansu on PATH, else in the cargo install root's bin/.
fn find_tansu() -> Option<PathBuf> {
    which::which("tansu").ok().or_else(|| {
        let p = cargo_install_root().ok()?.join("bin").join("tansu");
        p.is_file().then_some(p)
    })
}

/// The features `cargo install` recorded for tansu in `<root>/.crates2.json`, if it installed
/// it. (The file is compact JSON: `{"installs":{"tansu 0.6.0 (registry+...)":{...,
/// "features":["dynostore"],...}}}`; read by hand, xtask has no JSON parser.)
fn tansu_installed_features() -> Option<Vec<String>> {
    let path = cargo_install_root().ok()?.join(".crates2.json");
    let text = std::fs::read_to_string(path).ok()?;
    let entry = &text[text.find("\"tansu ")?..];
    let entry = &entry[..entry.find('}').unwrap_or(entry.len())];
    let list = &entry[entry.find("\"features\":[")? + "\"features\":[".len()..];
    let list = &list[..list.find(']')?];
    Some(
        list.split(',')
            .map(|f| f.trim().trim_matches('"').to_owned())
            .filter(|f| !f.is_empty())
            .collect(),
    )
}

fn tansu_check(ws: &Workspace) -> Result<State> {
    let Some(bin) = find_tansu() else {
        return Ok(State::Missing("not found on PATH".into()));
    };
    let Some(version) = util::probe_stdout(ws.command(&bin).arg("--version")) else {
        return Ok(State::Missing(format!(
            "{} --version does not run",
            bin.display()
        )));
    };
    // A tansu that cargo installed without the storage the tests need gets rebuilt; one
    // installed some other way is taken as it is.
    if let Some(features) = tansu_installed_features() {
        let missing: Vec<_> = TANSU_FEATURES
            .iter()
            .filter(|f| !features.iter().any(|g| g == *f))
            .collect();
        if !missing.is_empty() {
            return Ok(State::Missing(format!(
                "{} was built without feature(s) {missing:?}",
                bin.display()
            )));
        }
    }
    let note = if which::which("tansu").is_err() {
        format!(" at {} (add its folder to PATH)", bin.display())
    } else {
        String::new()
    };
    Ok(State::Present(format!("{}{note}", version.trim())))
}

/// `cargo install tansu` (about 10 minutes; cached in the cargo install root afterwards).
fn tansu_install(ws: &Workspace) -> Result<()> {
    let mut cmd = ws.cargo();
    cmd.args([
        "install",
        "tansu",
        "--version",
        TANSU_VERSION,
        "--locked",
        "--features",
        &TANSU_FEATURES.join(","),
    ]);
    if find_tansu().is_some() {
        cmd.arg("--force");
    }
    util::run(&mut cmd)
}
