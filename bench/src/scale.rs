//! Scenario 8: one agent among 10 000 members. The members are registered in a real
//! ZooKeeper by a light client (the `scale_members` example of meshprobe-tests, the product's
//! own layout) and answered by one `meshprobe reflect` holding their whole address range
//! (`meshprobe_harness::synthetic`); the agent reaches ZooKeeper through a counting proxy
//! (`meshprobe_harness::zkproxy`), so its ZooKeeper bytes are measured on the wire.
//!
//! Measured: peers on its pinglist, probes/s, CPU % of a core and RSS over a steady interval,
//! ZooKeeper bytes at start and per join/leave (pings excluded), and how soon a new member
//! placed in the agent's rack (so the function assigns it to the agent) is probed: its znode's
//! ctime to the first probe captured on the reflector's link.

use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::cluster::znode_ctime_ms;
use crate::sample::procfs::sample_process;
use anyhow::{Context, Result, bail};
use meshprobe_harness::ChildGuard;
use meshprobe_harness::agent::{Cluster, HEARTBEAT_PATH, ZK_PORT};
use meshprobe_harness::capture::Capture;
use meshprobe_harness::synthetic::{self, Shape};
use meshprobe_harness::topo::Family;
use meshprobe_harness::zkproxy::CountingProxy;
use nix::sys::signal::Signal;
use serde_json::{Value, json};

use crate::numbers::{fmt_ms, max, mean, median};
use crate::report::{ScenarioReport, Table};
use crate::scenario::{Ctx, pause, progress};

const SHAPE: Shape = Shape::TEN_THOUSAND;
const FAMILY: Family = Family::V4;
const GOAL_PEERS: usize = 128;
const GOAL_CPU_PCT: f64 = 1.0;
const GOAL_RSS_MB: f64 = 25.0;
const GOAL_START_B_PER_MEMBER: f64 = 200.0;
const GOAL_CHANGE_B: f64 = 300.0;
const GOAL_PROBE_MS: f64 = 2000.0;
const INTERVAL: &str = "1s";
const WINDOW: &str = "10s";
/// How long after a join its first probe is looked for: the goal plus one probe interval.
const PROBE_WAIT: Duration = Duration::from_secs(3);
const SYNC_TIMEOUT: Duration = Duration::from_secs(90);
const PROXY_PORT: u16 = ZK_PORT + 1;
const JOINER: &str = "syn-joiner";

/// The agent's pinglist (`GET /pinglist`): members, peers.
fn pinglist(lab: &Cluster) -> Result<Value> {
    let (status, body) = lab.agent(0).http_get("/pinglist")?;
    if status != 200 {
        bail!(
            "GET /pinglist answered {status} (the agent has no pinglist endpoint: issue 14's \
             wiring is not in this build?): {body}"
        );
    }
    serde_json::from_str(&body).with_context(|| format!("/pinglist: {body}"))
}

fn on_pinglist(v: &Value, id: &str) -> bool {
    v["peers"]
        .as_array()
        .is_some_and(|ps| ps.iter().any(|p| p["node_id"] == id))
}

struct Trial {
    first_probe_ms: Option<f64>,
    join_bytes: u64,
    leave_bytes: u64,
    on_pinglist: bool,
}

pub fn run(ctx: &Ctx, rep: &mut ScenarioReport) -> Result<()> {
    if let Some(why) = meshprobe_harness::services::zookeeper_missing() {
        rep.skip(why);
        return Ok(());
    }
    let trials = ctx.pick(1, 3);
    let steady = Duration::from_secs(ctx.pick(10, 30));
    let members = SHAPE.members();
    describe(rep, members, trials, steady);
    progress("scale: building the member registrar (scale_members example)");
    let registrar_bin = crate::scenario::build_example("meshprobe-tests", "scale_members")?;
    let Some(mut lab) = Cluster::acquire("bench scale", 2, FAMILY, true, false)? else {
        rep.skip("a prerequisite is missing (see the SKIP line)");
        return Ok(());
    };
    lab.env.mp = meshprobe_harness::Meshprobe::new(&ctx.bin);
    let core_ip = lab.star.core_ip(FAMILY);
    let zk = std::net::SocketAddr::new(core_ip, ZK_PORT);
    let proxy = CountingProxy::start(
        lab.star.core(),
        std::net::SocketAddr::new(core_ip, PROXY_PORT),
        zk,
    )?;
    synthetic::answer_all(lab.star.node(1), FAMILY)?;
    let refl_if = lab.star.node_if(1);
    let reflector = lab.env.mp.reflect(lab.star.node(1), &["-I", &refl_if])?;
    synthetic::route_via(lab.star.node(0), lab.node_ip(1))?;

    let zone = synthetic::zone_name(0);
    let rack = format!("{zone}-rack-bench");
    let zk_cs = zk.to_string();
    let (mut registrar, reg_s) = register(&lab, &registrar_bin, &zk_cs, &zone, &rack)?;
    let synced = start_agent(&mut lab, &proxy, &zone, &rack)?;
    let steady = Steady::measure(&lab, synced.pid, steady)?;
    let joins = Joins {
        lab: &lab,
        proxy: &proxy,
        refl_if: &refl_if,
        zk_cs: &zk_cs,
        agent_ip: synced.agent_ip,
        joiner_addr: synthetic::address(members, FAMILY),
    };
    let mut runs = Vec::new();
    for trial in 0..trials {
        progress(format!("scale: join/leave {}/{trials}", trial + 1));
        runs.push(joins.trial(&mut registrar)?);
    }
    lab.stop_agents(Duration::from_secs(15))?;
    registrar.signal(Signal::SIGTERM)?;
    let _ = registrar.wait_exit(Duration::from_secs(15));
    drop(reflector);

    let m = Measured {
        members,
        reg_s,
        synced,
        steady,
        runs,
    };
    rep.tables.push(m.table());
    m.goals(rep, trials);
    rep.data = m.data();
    Ok(())
}

/// The method lines.
fn describe(rep: &mut ScenarioReport, members: usize, trials: usize, steady: Duration) {
    rep.method(format!(
        "{members} synthetic members ({} zones × {} racks × {}) registered in ZooKeeper 3.8 by a \
         light client with the product's layout (member znode + topology index entry, one \
         multi each); their addresses (198.19.0.0/16) answered by one `meshprobe reflect` \
         holding the range as a local route; one agent (its own rack in zone 0), interval \
         {INTERVAL}, window {WINDOW}, default pinglist settings",
        SHAPE.zones, SHAPE.racks, SHAPE.per_rack
    ));
    rep.method(
        "ZooKeeper bytes: a counting TCP proxy between the agent and ZooKeeper splits frames \
         and leaves out pings; at start: everything until the pinglist covers every member; \
         per change: from the registration (or deletion) until 2-3 s later",
    );
    rep.method(format!(
        "CPU % of a core (scheduler accounting of every thread, /proc/PID/task/*/schedstat) and \
         VmRSS over {} s of steady probing after a 10 s warm-up; probes/s from the agent's \
         meshprobe_probes_sent",
        steady.as_secs()
    ));
    rep.method(format!(
        "{trials} join(s) of a member in the agent's rack: its znode's ctime to the first probe \
         to its address captured on the reflector's link (tcpdump, same host clock), then its \
         leave"
    ));
}

/// Registers the members with the light client (which stays, to join and leave one on
/// signals); returns it and how long the registration took (s).
fn register(
    lab: &Cluster,
    registrar_bin: &Path,
    zk_cs: &str,
    zone: &str,
    rack: &str,
) -> Result<(ChildGuard, f64)> {
    let members = SHAPE.members();
    progress(format!("scale: registering {members} members"));
    let (z, r, n) = (
        SHAPE.zones.to_string(),
        SHAPE.racks.to_string(),
        SHAPE.per_rack.to_string(),
    );
    let exe = registrar_bin.to_string_lossy().into_owned();
    let mut registrar =
        lab.star
            .core()
            .spawn([exe.as_str(), zk_cs, &z, &r, &n, "v4", zone, rack])?;
    let ready = registrar.wait_json(Duration::from_secs(120), |v| v["type"] == "ready")?;
    let reg_s = ready["seconds"].as_f64().unwrap_or(f64::NAN);
    Ok((registrar, reg_s))
}

/// The agent once its pinglist covers every member.
struct Synced {
    pid: u32,
    agent_ip: IpAddr,
    /// Members on the pinglist (the agent included).
    total: usize,
    /// Agent start to pinglist complete, s.
    synced_s: f64,
    /// ZooKeeper bytes until then, pings and events excluded.
    start_bytes: u64,
    peers: usize,
}

/// Starts the agent (through the counting proxy) and waits until its pinglist counts every
/// member.
fn start_agent(lab: &mut Cluster, proxy: &CountingProxy, zone: &str, rack: &str) -> Result<Synced> {
    let members = SHAPE.members();
    let mut cfg = lab
        .config(0)
        .env("SERVERS_ZK", proxy.connect_string())
        .env("MESHPROBE_ZONE", zone)
        .env("MESHPROBE_RACK", rack)
        .env("MESHPROBE_INTERVAL", INTERVAL)
        .env("MESHPROBE_WINDOW", WINDOW)
        .env("MESHPROBE_PEER_GRACE", WINDOW);
    cfg.drop_probe_lines = true;
    progress("scale: starting the agent");
    let started = Instant::now();
    lab.start_agent_with(0, &cfg)?;
    let agent_ip = lab.node_ip(0);
    let pid = lab.agent(0).pid().context("agent pid")?;
    let total = members + 1;
    let deadline = Instant::now() + SYNC_TIMEOUT;
    let list = loop {
        let v = pinglist(lab)?;
        if v["members"].as_u64() == Some(total as u64) {
            break v;
        }
        if Instant::now() > deadline {
            bail!(
                "the agent's pinglist counts {} members after {SYNC_TIMEOUT:?}, not {total}",
                v["members"]
            );
        }
        pause(Duration::from_millis(100))?;
    };
    let synced_s = started.elapsed().as_secs_f64();
    let t = proxy.client(agent_ip);
    Ok(Synced {
        pid,
        agent_ip,
        total,
        synced_s,
        start_bytes: t.work_bytes() - t.to_client.event_bytes,
        peers: list["peers"].as_array().map_or(0, Vec::len),
    })
}

/// CPU, RSS and probes/s over the steady interval.
struct Steady {
    /// % of a core (schedstat).
    cpu_pct: f64,
    rss_mb: Vec<f64>,
    /// Probes sent per second.
    rate: f64,
}

impl Steady {
    /// After a 10 s warm-up, samples the agent `pid` every second for `steady`.
    fn measure(lab: &Cluster, pid: u32, steady: Duration) -> Result<Steady> {
        progress(format!("scale: steady probing ({} s)", steady.as_secs()));
        pause(Duration::from_secs(10))?;
        let sent0 = lab.agent(0).metric("meshprobe_probes_sent")?.unwrap_or(0.0);
        let mut samples = vec![sample_process(pid)?];
        let end = Instant::now() + steady;
        while Instant::now() < end {
            pause(Duration::from_secs(1))?;
            samples.push(sample_process(pid)?);
        }
        let sent1 = lab.agent(0).metric("meshprobe_probes_sent")?.unwrap_or(0.0);
        let (a, b) = (&samples[0], &samples[samples.len() - 1]);
        let secs = (b.at - a.at).as_secs_f64();
        Ok(Steady {
            cpu_pct: (b.cpu_ns - a.cpu_ns) as f64 / 1e9 / secs * 100.0,
            rss_mb: samples.iter().map(|s| s.rss_kib as f64 / 1024.0).collect(),
            rate: (sent1 - sent0) / secs,
        })
    }
}

/// What a join/leave trial needs.
struct Joins<'a> {
    lab: &'a Cluster,
    proxy: &'a CountingProxy,
    refl_if: &'a str,
    zk_cs: &'a str,
    agent_ip: IpAddr,
    joiner_addr: IpAddr,
}

impl Joins<'_> {
    /// One join of a member in the agent's rack (first probe captured, ZooKeeper bytes), then
    /// its leave.
    fn trial(&self, registrar: &mut ChildGuard) -> Result<Trial> {
        let Joins {
            lab,
            proxy,
            refl_if,
            zk_cs,
            agent_ip,
            joiner_addr,
        } = *self;
        let cap = Capture::start_filter(
            lab.star.node(1),
            refl_if,
            &format!(
                "udp and dst port {} and dst host {joiner_addr}",
                meshprobe_harness::STAMP_PORT
            ),
        )?;
        let before = proxy.client(agent_ip);
        registrar.signal(Signal::SIGUSR1)?;
        registrar.wait_json(Duration::from_secs(30), |v| v["type"] == "joined")?;
        pause(PROBE_WAIT)?;
        let packets = cap.stop()?.packets;
        let joined = proxy.client(agent_ip).since(&before);
        let ctime = znode_ctime_ms(
            lab.star.core(),
            zk_cs,
            &format!("{HEARTBEAT_PATH}/{JOINER}"),
        )?;
        let on = on_pinglist(&pinglist(lab)?, JOINER);
        let first = packets
            .iter()
            .filter(|p| p.src.ip() == agent_ip)
            .map(|p| p.ts_ns)
            .min()
            .map(|ts| (i128::from(ts) - i128::from(ctime) * 1_000_000) as f64 / 1e6);
        let before = proxy.client(agent_ip);
        registrar.signal(Signal::SIGUSR2)?;
        registrar.wait_json(Duration::from_secs(30), |v| v["type"] == "left")?;
        pause(Duration::from_secs(2))?;
        let left = proxy.client(agent_ip).since(&before);
        Ok(Trial {
            first_probe_ms: first,
            join_bytes: joined.work_bytes(),
            leave_bytes: left.work_bytes(),
            on_pinglist: on,
        })
    }
}

/// Everything the verdict and the report use.
struct Measured {
    members: usize,
    reg_s: f64,
    synced: Synced,
    steady: Steady,
    runs: Vec<Trial>,
}

impl Measured {
    fn start_per_member(&self) -> f64 {
        self.synced.start_bytes as f64 / self.synced.total as f64
    }

    /// First-probe delays of the trials that saw one, ms.
    fn probe_ms(&self) -> Vec<f64> {
        self.runs.iter().filter_map(|t| t.first_probe_ms).collect()
    }

    fn table(&self) -> Table {
        let (members, reg_s) = (self.members, self.reg_s);
        let Synced {
            total,
            synced_s,
            start_bytes,
            peers,
            ..
        } = self.synced;
        let Steady {
            cpu_pct,
            ref rss_mb,
            rate,
        } = self.steady;
        let runs = &self.runs;
        let start_per_member = self.start_per_member();
        let probe_ms = self.probe_ms();
        let mut table = Table::new(
            &format!("One agent among {total} members"),
            &["", "measured"],
        );
        table.row([
            "members registered (light client)".to_string(),
            format!("{members} in {reg_s:.1} s"),
        ]);
        table.row([
            "agent ready to pinglist complete".to_string(),
            format!("{synced_s:.1} s"),
        ]);
        table.row(["peers on the pinglist".to_string(), peers.to_string()]);
        table.row(["probes/s".to_string(), format!("{rate:.0}")]);
        table.row(["CPU".to_string(), format!("{cpu_pct:.2} % of a core")]);
        table.row([
            "RSS".to_string(),
            format!("mean {:.1} MB, max {:.1} MB", mean(rss_mb), max(rss_mb)),
        ]);
        table.row([
            "ZooKeeper at start (no pings)".to_string(),
            format!("{start_bytes} B = {start_per_member:.1} B/member"),
        ]);
        table.row([
            "ZooKeeper per join / leave (no pings)".to_string(),
            runs.iter()
                .map(|t| format!("{} / {} B", t.join_bytes, t.leave_bytes))
                .collect::<Vec<_>>()
                .join(", "),
        ]);
        table.row([
            "join to first probe (ctime to capture)".to_string(),
            if probe_ms.is_empty() {
                "—".into()
            } else {
                format!(
                    "median {}, max {}",
                    fmt_ms(median(&probe_ms)),
                    fmt_ms(max(&probe_ms))
                )
            },
        ]);
        table
    }

    /// The six goals.
    fn goals(&self, rep: &mut ScenarioReport, trials: usize) {
        let Synced {
            total,
            start_bytes,
            peers,
            ..
        } = self.synced;
        let Steady {
            cpu_pct,
            ref rss_mb,
            rate,
        } = self.steady;
        let runs = &self.runs;
        let start_per_member = self.start_per_member();
        let changes: Vec<f64> = runs
            .iter()
            .flat_map(|t| [t.join_bytes as f64, t.leave_bytes as f64])
            .collect();
        let probe_ms = self.probe_ms();
        let unprobed = runs.iter().filter(|t| t.first_probe_ms.is_none()).count();
        let off_list = runs.iter().filter(|t| !t.on_pinglist).count();
        rep.goal(
            "peers probed",
            "≤ 128",
            peers.to_string(),
            peers <= GOAL_PEERS,
            Some(format!("{peers} peers on the pinglist")),
        );
        rep.goal(
            "CPU",
            "≤ 1 % of a core",
            format!("{cpu_pct:.2} %"),
            cpu_pct <= GOAL_CPU_PCT,
            Some(format!("{cpu_pct:.2} % for {rate:.0} probes/s")),
        );
        rep.goal(
            "RSS",
            "≤ 25 MB",
            format!("{:.1} MB", max(rss_mb)),
            max(rss_mb) <= GOAL_RSS_MB,
            Some(format!("max {:.1} MB", max(rss_mb))),
        );
        rep.goal(
            "ZooKeeper at start",
            "≤ 200 B/member",
            format!("{start_per_member:.1} B/member"),
            start_per_member <= GOAL_START_B_PER_MEMBER,
            Some(format!("{start_bytes} B for {total} members")),
        );
        rep.goal(
            "ZooKeeper per change",
            "≤ 300 B",
            format!("max {:.0} B", max(&changes)),
            max(&changes) <= GOAL_CHANGE_B,
            Some(format!("joins and leaves: {changes:?} B")),
        );
        let probe_met = unprobed == 0 && !probe_ms.is_empty() && max(&probe_ms) <= GOAL_PROBE_MS;
        rep.goal(
            "new member probed",
            "≤ 2 s",
            if unprobed > 0 {
                format!("{unprobed} of {trials} joins not probed within {PROBE_WAIT:?}")
            } else {
                format!("max {}", fmt_ms(max(&probe_ms)))
            },
            probe_met,
            Some(format!(
                "{unprobed} join(s) unprobed within {PROBE_WAIT:?} ({off_list} not on the \
                 pinglist); delays {probe_ms:?} ms"
            )),
        );
    }

    fn data(&self) -> Value {
        let Synced {
            total,
            synced_s,
            start_bytes,
            peers,
            ..
        } = self.synced;
        let Steady {
            cpu_pct,
            ref rss_mb,
            rate,
        } = self.steady;
        let (reg_s, runs) = (self.reg_s, &self.runs);
        let start_per_member = self.start_per_member();
        json!({
            "members": total, "registration_s": reg_s, "sync_s": synced_s, "peers": peers,
            "probes_per_s": rate, "cpu_pct": cpu_pct, "rss_mb": rss_mb,
            "zk_start_bytes": start_bytes, "zk_start_bytes_per_member": start_per_member,
            "trials": runs.iter().map(|t| json!({
                "first_probe_ms": t.first_probe_ms, "join_bytes": t.join_bytes,
                "leave_bytes": t.leave_bytes, "on_pinglist": t.on_pinglist,
            })).collect::<Vec<_>>(),
        })
    }
}
