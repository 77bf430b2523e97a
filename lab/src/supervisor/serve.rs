//! The lab supervisor (`meshprobe-lab mesh serve`, started by `mesh up` in its own session): owns
//! the [`Lab`] and answers requests on the control socket until `down`, SIGTERM or SIGINT;
//! then stops the agents (they deregister and flush) and drops the lab, which removes every
//! namespace, process and temp dir.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::{Duration, Instant};

use crate::{Lab, node_name};
use anyhow::{Context, Result, bail};
use meshprobe_harness::interrupt;

use super::control::{self, Reply, Request, State};
use super::{UpArgs, state_dir};

const HEALTH_EVERY: Duration = Duration::from_secs(5);

pub fn run(a: &UpArgs) -> Result<()> {
    interrupt::install()?;
    let spec = a.spec()?;
    let dir = state_dir();
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join(control::PID_FILE), std::process::id().to_string())?;
    println!(
        "[supervisor] pid {}: building the lab\n{}",
        std::process::id(),
        spec.describe()
    );
    let Some(mut lab) = Lab::up(spec)? else {
        bail!("cannot run the lab (the SKIP line above says why)");
    };
    lab.write_expected(&dir.join(control::EXPECTED_FILE))?;
    let sock = dir.join(control::SOCKET);
    let _ = std::fs::remove_file(&sock);
    let listener =
        UnixListener::bind(&sock).with_context(|| format!("binding {}", sock.display()))?;
    listener.set_nonblocking(true)?;
    let state = State {
        core_ns: lab.star().core().name().to_string(),
        node_ns: (0..lab.spec.nodes)
            .map(|i| lab.star().node(i).name().to_string())
            .collect(),
        bootstrap: lab.bootstrap(),
        zookeeper: lab.cluster.zk().connect_string(),
        topic: lab.topic().to_string(),
        meshprobe_bin: lab.bin().display().to_string(),
    };
    std::fs::write(
        dir.join(control::READY_FILE),
        serde_json::to_string_pretty(&state)?,
    )?;
    let started = Instant::now();
    println!("[supervisor] lab up; listening on {}", sock.display());
    let mut last_health = Instant::now();
    let mut reported_unhealthy = false;
    loop {
        if interrupt::interrupted() {
            println!("[supervisor] signal: stopping");
            break;
        }
        match listener.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(false)?;
                match serve_one(&mut lab, s, started) {
                    Ok(true) => break,
                    Ok(false) => {}
                    Err(e) => println!("[supervisor] request failed: {e:#}"),
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => return Err(e).context("accepting on the control socket"),
        }
        if last_health.elapsed() >= HEALTH_EVERY {
            last_health = Instant::now();
            match lab.check() {
                Err(e) if !reported_unhealthy => {
                    println!("[supervisor] unhealthy: {e:#}");
                    reported_unhealthy = true;
                }
                Ok(()) => reported_unhealthy = false,
                Err(_) => {}
            }
        }
    }
    for f in [control::READY_FILE, control::SOCKET, control::PID_FILE] {
        let _ = std::fs::remove_file(dir.join(f));
    }
    let r = lab.shutdown(Duration::from_secs(10));
    drop(lab);
    println!("[supervisor] lab removed");
    r
}

/// Answers one connection; `Ok(true)` when the lab should stop.
fn serve_one(lab: &mut Lab, s: UnixStream, started: Instant) -> Result<bool> {
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut line = String::new();
    BufReader::new(&s).read_line(&mut line)?;
    let req: Request = serde_json::from_str(line.trim()).context("bad request")?;
    let mut w = s;
    let mut send = |r: Reply| -> Result<()> {
        let mut l = serde_json::to_string(&r)?;
        l.push('\n');
        // The client may have gone (Ctrl-C on `mesh status`): keep serving.
        let _ = w.write_all(l.as_bytes());
        Ok(())
    };
    let mut out = |t: &str| {
        let _ = send(Reply::Line(t.to_string()));
    };
    let (stop, res) = match req {
        Request::Status => (false, status(lab, started, &mut out)),
        Request::Logs { target } => (false, logs(lab, &target, &mut out)),
        Request::Chaos { args } => {
            // Experiments also go to the supervisor log, for the record.
            let mut logged = |t: &str| {
                println!("{t}");
                out(t);
            };
            (false, super::chaos::run(lab, &args, &mut logged))
        }
        Request::Down => {
            out(
                "[supervisor] stopping agents, delay elements, broker, ZooKeeper; deleting namespaces",
            );
            (true, Ok(()))
        }
    };
    let done = match &res {
        Ok(()) => Reply::Done {
            ok: true,
            error: None,
        },
        Err(e) => Reply::Done {
            ok: false,
            error: Some(format!("{e:#}")),
        },
    };
    send(done)?;
    Ok(stop)
}

fn status(lab: &mut Lab, started: Instant, out: &mut dyn FnMut(&str)) -> Result<()> {
    let spec = lab.spec.clone();
    out(&format!(
        "lab: {} nodes, {}, window {}, interval {}, up {}",
        spec.nodes,
        spec.family.label(),
        humantime::format_duration(spec.window),
        humantime::format_duration(spec.interval),
        humantime::format_duration(Duration::from_secs(started.elapsed().as_secs()))
    ));
    let zk_ok = lab
        .cluster
        .zk()
        .four_letter("ruok")
        .map(|r| r == "imok")
        .unwrap_or(false);
    let broker_ok = lab.cluster.kafka_mut().is_running();
    out(&format!(
        "core namespace {}: ZooKeeper {} ({}), broker {} ({}), topic {}",
        lab.star().core().name(),
        lab.cluster.zk().connect_string(),
        if zk_ok { "serving" } else { "DOWN" },
        lab.bootstrap(),
        if broker_ok { "running" } else { "DOWN" },
        lab.topic()
    ));
    let members = lab.zk_members().unwrap_or_default();
    out(&format!(
        "{:<8} {:<8} {:<22} {:<22} {:<14} {}",
        "node", "zone", "address", "namespace", "agent", "in ZooKeeper"
    ));
    for i in 0..spec.nodes {
        let name = node_name(i);
        let agent = match lab.cluster.agents.get_mut(&i) {
            Some(a) => {
                if a.is_running() {
                    format!("pid {}", a.pid().unwrap_or(0))
                } else {
                    "EXITED".into()
                }
            }
            None => "not running".into(),
        };
        out(&format!(
            "{:<8} {:<8} {:<22} {:<22} {:<14} {}",
            name,
            if spec.zones[i].is_empty() {
                "-"
            } else {
                &spec.zones[i]
            },
            lab.cluster.node_ip(i).to_string(),
            lab.star().node(i).name(),
            agent,
            if members.contains(&name) { "yes" } else { "no" }
        ));
    }
    let parts = lab.links.partitioned().to_vec();
    if !parts.is_empty() {
        out(&format!(
            "partitioned: {}",
            parts
                .iter()
                .map(|&i| node_name(i))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    out("injected (added RTT per pair, loss where set):");
    for l in spec.describe().lines() {
        out(&format!("  {l}"));
    }
    match lab.kafka_windows() {
        Ok(w) => {
            let total: usize = w
                .by_pair
                .values()
                .map(|m| m.values().map(Vec::len).sum::<usize>())
                .sum();
            let now = lab.window_now();
            let newest = w.max_seq();
            out(&format!(
                "topic {}: {total} window summaries from {} pairs; newest window {} ({})",
                lab.topic(),
                w.by_pair.len(),
                newest.map_or("-".into(), |s| s.to_string()),
                newest.map_or("none yet".into(), |s| format!(
                    "{} window(s) before the one in progress",
                    now.saturating_sub(s)
                ))
            ));
        }
        Err(e) => out(&format!("topic {}: cannot read it: {e:#}", lab.topic())),
    }
    match lab.topic_offsets() {
        Ok(parts) => out(&format!(
            "topic offsets: {}",
            parts
                .iter()
                .map(|(p, n, next)| format!("partition {p}: {n} records, next offset {next}"))
                .collect::<Vec<_>>()
                .join("; ")
        )),
        Err(e) => out(&format!("topic offsets: cannot read them: {e:#}")),
    }
    Ok(())
}

fn logs(lab: &mut Lab, target: &str, out: &mut dyn FnMut(&str)) -> Result<()> {
    let text = match target {
        "zookeeper" | "zk" => lab.cluster.zk().log_tail(100_000),
        "broker" | "kafka" | "tansu" => lab.cluster.kafka().stderr_text(),
        t => {
            let i = t
                .strip_prefix("node")
                .unwrap_or(t)
                .parse::<usize>()
                .ok()
                .filter(|&i| i < lab.spec.nodes)
                .with_context(|| {
                    format!(
                        "no log {t:?}: node0..node{}, zookeeper, broker or supervisor",
                        lab.spec.nodes - 1
                    )
                })?;
            match lab.cluster.agents.get(&i) {
                Some(a) => a.stderr_text(),
                None => bail!("{} runs no agent now", node_name(i)),
            }
        }
    };
    for l in text.lines() {
        out(l);
    }
    Ok(())
}
