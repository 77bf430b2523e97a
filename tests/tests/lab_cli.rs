//! Issue 4: `cargo xtask mesh down` leaves nothing behind — no namespace, link, qdisc, process,
//! temp dir or state dir — even after an `up` whose client and supervisor were SIGKILLed
//! halfway (namespaces created, services and some agents running); it is safe to run twice;
//! and `up` after such a crash cleans first and comes up.
//!
//! Drives the real command line: the lab binary `cargo xtask mesh` hands over to
//! (`MESHPROBE_LAB`, set by `cargo xtask test`, else target/{release,debug}/meshprobe-lab),
//! with `MESHPROBE_BIN`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Result, bail, ensure};
use meshprobe_harness::child::run_with_timeout;
use meshprobe_harness::meshprobe::{find_binary, workspace_root};
use meshprobe_harness::netns::{list_namespaces, owner_pid};
use meshprobe_harness::{env, services};

const STATE_DIR: &str = "/run/meshprobe-mesh";

fn lab_bin() -> Option<PathBuf> {
    match std::env::var_os("MESHPROBE_LAB") {
        Some(p) => Some(PathBuf::from(p)),
        None => ["target/release/meshprobe-lab", "target/debug/meshprobe-lab"]
            .into_iter()
            .map(|p| workspace_root().join(p))
            .find(|p| p.is_file()),
    }
    .filter(|p| p.is_file())
}

/// Everything the lab could leave behind, as comparable text.
#[derive(Debug, PartialEq, Eq)]
struct Footprint {
    namespaces: BTreeSet<String>,
    root_links: BTreeSet<String>,
    root_qdiscs: BTreeSet<String>,
    processes: BTreeSet<String>,
    temp_dirs: BTreeSet<String>,
    state_dir: bool,
}

fn lines_of(argv: &[&str]) -> Result<BTreeSet<String>> {
    let mut cmd = Command::new(argv[0]);
    cmd.args(&argv[1..]);
    let out = run_with_timeout(cmd, Duration::from_secs(20))?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect())
}

/// Lab processes (agents, delay elements, ZooKeeper, the broker, supervisors) that nobody
/// alive owns: supervisors, and processes in a namespace of a dead harness process or in a
/// namespace with no name any more. Processes of other live harness runs are not counted.
fn lab_processes() -> BTreeSet<String> {
    use std::os::unix::fs::MetadataExt;
    let mut named: BTreeMap<u64, String> = BTreeMap::new();
    for e in std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
    {
        if let Ok(m) = std::fs::metadata(e.path()) {
            named.insert(m.ino(), e.file_name().to_string_lossy().into_owned());
        }
    }
    let root_ns = std::fs::metadata("/proc/1/ns/net")
        .map(|m| m.ino())
        .unwrap_or(0);
    let mut out = BTreeSet::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(raw) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&raw).replace('\0', " ");
        if cmd.contains("meshprobe-lab") && cmd.contains("mesh serve") {
            out.insert(format!("{pid} {}", cmd.trim()));
            continue;
        }
        let argv: Vec<String> = String::from_utf8_lossy(&raw)
            .split('\0')
            .map(str::to_string)
            .collect();
        let prog = argv
            .first()
            .map(|a| a.rsplit('/').next().unwrap_or(""))
            .unwrap_or("");
        let sub = argv.get(1).map(String::as_str).unwrap_or("");
        let lab = (prog == "meshprobe" && sub == "agent")
            || prog == "meshprobe-delay"
            || (prog == "tansu" && sub == "broker")
            || cmd.contains("QuorumPeerMain");
        let Ok(ns) = std::fs::metadata(e.path().join("ns/net")).map(|m| m.ino()) else {
            continue;
        };
        if !lab || ns == root_ns {
            continue;
        }
        let owner_alive = named
            .get(&ns)
            .and_then(|n| owner_pid(n))
            .is_some_and(|p| Path::new(&format!("/proc/{p}")).exists());
        if !owner_alive {
            out.insert(format!("{pid} {}", cmd.trim()));
        }
    }
    out
}

/// Agents running in namespaces of harness process `owner`.
fn agents_of(owner: u32) -> usize {
    use std::os::unix::fs::MetadataExt;
    let mut inodes = BTreeSet::new();
    for e in std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
    {
        if owner_pid(&e.file_name().to_string_lossy()) == Some(owner)
            && let Ok(m) = std::fs::metadata(e.path())
        {
            inodes.insert(m.ino());
        }
    }
    let mut n = 0;
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        let ns = std::fs::metadata(e.path().join("ns/net")).map(|m| m.ino());
        if cmd.contains("meshprobe agent") && ns.is_ok_and(|i| inodes.contains(&i)) {
            n += 1;
        }
    }
    n
}

fn footprint() -> Result<Footprint> {
    // Link names only: counters and flags change on their own.
    let root_links = lines_of(&["ip", "-o", "link", "show"])?
        .into_iter()
        .filter_map(|l| l.split(':').nth(1).map(|s| s.trim().to_string()))
        .collect();
    let temp_dirs = std::fs::read_dir(std::env::temp_dir())?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("meshprobe-tests-"))
        // Temp dirs of live harness processes (other tests) are theirs.
        .filter(|n| {
            !n.trim_start_matches("meshprobe-tests-")
                .split('-')
                .next()
                .and_then(|p| p.parse::<u32>().ok())
                .is_some_and(|p| Path::new(&format!("/proc/{p}")).exists())
        })
        .collect();
    Ok(Footprint {
        // Namespaces of live harness processes (other tests) are theirs, not leftovers.
        namespaces: list_namespaces()?
            .into_iter()
            .filter(|n| !owner_pid(n).is_some_and(|p| Path::new(&format!("/proc/{p}")).exists()))
            .collect(),
        root_links,
        root_qdiscs: lines_of(&["tc", "qdisc", "show"])?,
        processes: lab_processes(),
        temp_dirs,
        state_dir: Path::new(STATE_DIR).exists(),
    })
}

fn lab(bin: &Path, mp: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(bin);
    c.arg("mesh").args(args).env("MESHPROBE_BIN", mp);
    c
}

fn run_ok(bin: &Path, mp: &Path, args: &[&str]) -> Result<String> {
    let out = run_with_timeout(lab(bin, mp, args), Duration::from_secs(240))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("$ meshprobe-lab mesh {}\n{text}", args.join(" "));
    ensure!(
        out.status.success(),
        "meshprobe-lab mesh {args:?} exited {}",
        out.status
    );
    Ok(text)
}

fn supervisor_pid() -> Option<u32> {
    std::fs::read_to_string(Path::new(STATE_DIR).join("supervisor.pid"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Starts `mesh up` and SIGKILLs it and its supervisor once the supervisor's namespaces exist
/// and at least `agents` agents run in them (halfway: the others may still be starting).
/// Returns the dead supervisor's pid.
fn crash_halfway(bin: &Path, mp: &Path, nodes: usize, agents: usize) -> Result<u32> {
    let mut client: Child = lab(bin, mp, &["up", "--nodes", &nodes.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let deadline = Instant::now() + Duration::from_secs(120);
    let pid = loop {
        if let Some(pid) = supervisor_pid() {
            let running = agents_of(pid);
            let ns = list_namespaces()?
                .iter()
                .filter(|n| owner_pid(n) == Some(pid))
                .count();
            if running >= agents && ns > 0 {
                break pid;
            }
        }
        if let Some(st) = client.try_wait()? {
            bail!("mesh up exited ({st}) before it was halfway");
        }
        if Instant::now() > deadline {
            let _ = client.kill();
            bail!("mesh up did not get halfway within 120 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    client.kill()?;
    client.wait()?;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )?;
    let gone = services::wait_until(Duration::from_secs(10), Duration::from_millis(50), || {
        !Path::new(&format!("/proc/{pid}")).exists()
    });
    ensure!(gone, "supervisor {pid} survived SIGKILL");
    Ok(pid)
}

/// Whatever happens in the test, no lab stays up.
struct DownOnDrop(PathBuf, PathBuf);

impl Drop for DownOnDrop {
    fn drop(&mut self) {
        let _ = run_with_timeout(lab(&self.0, &self.1, &["down"]), Duration::from_secs(120));
    }
}

#[test]
fn down_after_a_crashed_up_leaves_nothing_and_up_cleans_first() -> Result<()> {
    let test = "lab_cli";
    if let Some(why) = env::missing_prerequisite(&["tc", "nft"])
        .or_else(services::zookeeper_missing)
        .or_else(services::tansu_missing)
    {
        env::skip(test, &why);
        return Ok(());
    }
    let Some(bin) = lab_bin() else {
        if std::env::var_os("CI").is_some() {
            bail!("lab binary not found (MESHPROBE_LAB or target/release/meshprobe-lab)");
        }
        env::skip(
            test,
            "lab binary not built (cargo build --release -p meshprobe-lab)",
        );
        return Ok(());
    };
    let Some(mp) = find_binary()? else {
        env::skip(test, "meshprobe binary not built");
        return Ok(());
    };
    if supervisor_pid().is_some_and(|p| Path::new(&format!("/proc/{p}")).exists()) {
        env::skip(
            test,
            "a lab is up on this machine (cargo xtask mesh down first)",
        );
        return Ok(());
    }
    // Leftovers of earlier dead processes are not this test's business: start clean.
    meshprobe_harness::netns::sweep_stale_namespaces();
    services::sweep_stale_temp_dirs();
    let before = footprint()?;
    let _down = DownOnDrop(bin.clone(), mp.clone());

    // 1. A crash halfway leaves things behind; `down` removes them all, twice safely.
    let pid = crash_halfway(&bin, &mp, 3, 1)?;
    let mid = footprint()?;
    let left: Vec<&String> = mid
        .namespaces
        .iter()
        .filter(|n| owner_pid(n) == Some(pid))
        .collect();
    eprintln!("after SIGKILL of client and supervisor {pid}: namespaces left {left:?}");
    ensure!(
        !left.is_empty(),
        "the crash left no namespace: the test checks nothing"
    );
    let out = run_ok(&bin, &mp, &["down"])?;
    ensure!(
        out.contains("removed"),
        "down did not say what it removed: {out}"
    );
    assert_eq!(footprint()?, before, "mesh down left something behind");
    let out = run_ok(&bin, &mp, &["down"])?;
    ensure!(out.contains("nothing left"), "second down: {out}");
    assert_eq!(footprint()?, before);

    // 2. `up` after a crash sweeps first and comes up; then `down` restores the machine.
    let pid = crash_halfway(&bin, &mp, 2, 1)?;
    let out = run_ok(&bin, &mp, &["up", "--nodes", "2"])?;
    ensure!(out.contains("node1"), "status after up: {out}");
    let stale: Vec<String> = list_namespaces()?
        .into_iter()
        .filter(|n| owner_pid(n) == Some(pid))
        .collect();
    ensure!(
        stale.is_empty(),
        "up did not clean the crashed lab: {stale:?}"
    );
    let status = run_ok(&bin, &mp, &["status"])?;
    ensure!(
        status.matches(" yes").count() == 2,
        "both agents should be in ZooKeeper: {status}"
    );
    ensure!(
        status.contains("topic offsets: partition 0:"),
        "status shows no topic offsets: {status}"
    );
    run_ok(&bin, &mp, &["down"])?;
    assert_eq!(footprint()?, before, "down after up left something behind");
    Ok(())
}

/// Bad flags fail before anything is created, with a message naming the flag.
#[test]
fn bad_lab_flags_are_refused_up_front() -> Result<()> {
    let Some(bin) = lab_bin() else {
        env::skip("lab_cli flags", "lab binary not built");
        return Ok(());
    };
    if !env::is_root() {
        env::skip("lab_cli flags", "needs root");
        return Ok(());
    }
    let mp = PathBuf::from("/nonexistent/meshprobe");
    for (args, want) in [
        (vec!["up", "--nodes", "1"], "2 to"),
        (vec!["up", "--delay", "300ms"], "at most 200ms"),
        (vec!["up", "--zones", "9"], "--zones 9"),
        (
            vec!["up", "--window", "100ms", "--interval", "100ms"],
            "--window",
        ),
        (vec!["up", "--matrix", "/nonexistent.matrix"], "matrix file"),
    ] {
        let out = run_with_timeout(lab(&bin, &mp, &args), Duration::from_secs(30))?;
        let err = String::from_utf8_lossy(&out.stderr);
        eprintln!("meshprobe-lab mesh {args:?}: {}", err.trim());
        ensure!(!out.status.success(), "{args:?} was accepted");
        ensure!(
            err.contains(want),
            "{args:?}: error does not mention {want:?}: {err}"
        );
        ensure!(
            !Path::new(STATE_DIR).exists(),
            "{args:?} created the state dir"
        );
    }
    let out = run_with_timeout(lab(&bin, &mp, &["status"]), Duration::from_secs(30))?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success() && err.contains("no lab is up"),
        "status without a lab: {err}"
    );
    Ok(())
}
