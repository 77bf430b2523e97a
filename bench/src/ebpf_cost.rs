//! Scenario 2: what meshprobe's TC programs cost per packet, from the kernel's own
//! accounting. With `kernel.bpf_stats_enabled=1` the kernel adds each program run's time to
//! the program's `run_time_ns` and counts it in `run_cnt`; a phase with only one kind of
//! traffic gives, from the deltas, the mean time per packet of that kind.
//!
//! Two namespaces on a veth. Non-probe phases: a `meshprobe reflect` on each side holds the
//! programs (egress and ingress) on its veth, and iperf3 sends TCP, then small UDP datagrams
//! to iperf3's port. Probe phase: the reflector in B stays, the one in A is replaced by a
//! `meshprobe ping` sending kernel-stamped probes at 1000/s, so all four stamps are taken.
//!
//! The accounting itself has a floor (the dispatch and the clock reads around each run): an
//! empty program (`return TC_ACT_UNSPEC`) on every hook, measured the same way in the same
//! phases, shows it beside meshprobe's figures.
//!
//! The driver hand-off program (tp_btf `net_dev_start_xmit`) runs for every packet the host
//! transmits, in every namespace: its run count is the host's, and its floor an empty program
//! on the same tracepoint.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::sample::bpf_stats::{
    BpfStatsGuard, EmptyRawTp, EmptyTcProg, ProgStats, find_prog, process_progs,
};
use anyhow::{Context, Result, bail};
use meshprobe_harness::meshprobe::READY_TIMEOUT;
use meshprobe_harness::{ChildGuard, Meshprobe, TwoHosts};
use nix::sys::signal::Signal;
use serde_json::json;

use crate::report::{ScenarioReport, Table};
use crate::scenario::{Ctx, pause, progress};

const GOAL_NS: f64 = 60.0;
/// The hand-off program's non-probe cost above the empty program on its tracepoint (issue 18).
const HANDOFF_GOAL_NS: f64 = 30.0;
const PROGS: [&str; 3] = ["meshprobe_egress", "meshprobe_ingress", "meshprobe_handoff"];
/// Index of the hand-off program in [`PROGS`] and [`EMPTY`].
const HANDOFF: usize = 2;
/// Row label of the empty programs, per hook.
const EMPTY: [&str; 3] = [
    "empty program, egress",
    "empty program, ingress",
    "empty program, net_dev_start_xmit",
];
/// A cell with fewer packets than this is shown but not judged (a cold mean of a few).
const MIN_PACKETS: u64 = 1000;
const IPERF_PORT: &str = "5201";

/// Deltas of one phase: (side, program) -> (run_time_ns, run_cnt).
type Deltas = BTreeMap<(&'static str, &'static str), (u64, u64)>;

/// The programs of the process `pid`; the hand-off program `None` where it is not loaded.
fn read(pid: u32, names: &mut BTreeMap<u32, String>) -> Result<Vec<Option<ProgStats>>> {
    let progs = process_progs(pid, names)?;
    let mut out = Vec::new();
    for (i, n) in PROGS.iter().enumerate() {
        match find_prog(&progs, n) {
            Ok(p) => out.push(Some(p.clone())),
            Err(_) if i == HANDOFF => out.push(None),
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

/// An empty program on a TC hook or on the hand-off tracepoint.
enum Empty {
    Tc(EmptyTcProg),
    Tp(EmptyRawTp),
}

impl Empty {
    fn stats(&self) -> Result<(u64, u64)> {
        match self {
            Empty::Tc(e) => e.stats(),
            Empty::Tp(e) => e.stats(),
        }
    }
}

/// The empty programs: (side, hook index into [`EMPTY`], program).
type Empties = Vec<(&'static str, usize, Empty)>;

/// Runs `traffic` between two readings of the programs of `holders` (side, pid) and of the
/// empty programs.
fn phase(
    holders: &[(&'static str, u32)],
    empties: &Empties,
    names: &mut BTreeMap<u32, String>,
    traffic: impl FnOnce() -> Result<serde_json::Value>,
) -> Result<(Deltas, serde_json::Value)> {
    let mut before = Vec::new();
    for (_, pid) in holders {
        before.push(read(*pid, names)?);
    }
    let mut empty_before = Vec::new();
    for (_, _, e) in empties {
        empty_before.push(e.stats()?);
    }
    let info = traffic()?;
    let mut d = Deltas::new();
    for ((side, pid), b) in holders.iter().zip(before) {
        let after = read(*pid, names)?;
        for (i, n) in PROGS.iter().enumerate() {
            let (Some(a), Some(b)) = (&after[i], &b[i]) else {
                continue;
            };
            if a.id != b.id {
                bail!("{side}'s {n} changed program id during the phase");
            }
            d.insert((side, n), a.delta(b));
        }
    }
    for ((side, hook, e), b) in empties.iter().zip(empty_before) {
        let a = e.stats()?;
        d.insert(
            (side, EMPTY[*hook]),
            (a.0.saturating_sub(b.0), a.1.saturating_sub(b.1)),
        );
    }
    Ok((d, info))
}

pub fn iperf_server(t: &TwoHosts) -> Result<ChildGuard> {
    let b4 = TwoHosts::B4.to_string();
    let mut g =
        t.b.spawn(["iperf3", "-s", "--forceflush", "-B", &b4, "-p", IPERF_PORT])?;
    for _ in 0..50 {
        if let Some(l) = g.next_line(Duration::from_millis(100))
            && l.contains("listening")
        {
            return Ok(g);
        }
        if !g.is_running() {
            bail!("iperf3 server exited: {}", g.stderr_text());
        }
    }
    bail!("iperf3 server not listening within 5 s")
}

/// `iperf3 -c B ARGS -J` from A; the JSON result.
pub fn iperf_client(t: &TwoHosts, args: &[&str]) -> Result<serde_json::Value> {
    let b4 = TwoHosts::B4.to_string();
    let mut argv = vec!["iperf3", "-c", &b4, "-p", IPERF_PORT, "-J"];
    argv.extend_from_slice(args);
    let out = t.a.output(&argv)?;
    let text = String::from_utf8_lossy(&out.stdout);
    let v: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("iperf3 {args:?}: no JSON result: {text}"))?;
    if !out.status.success() {
        bail!("iperf3 {args:?} failed: {}", v["error"]);
    }
    Ok(v)
}

fn ns_per(d: (u64, u64)) -> Option<f64> {
    (d.1 > 0).then(|| d.0 as f64 / d.1 as f64)
}

pub fn run(ctx: &Ctx, rep: &mut ScenarioReport) -> Result<()> {
    let env = match ctx.env("bench ebpf-cost", &["iperf3", "bpftool"])? {
        Ok(e) => e,
        Err(why) => {
            rep.skip(why);
            return Ok(());
        }
    };
    let secs = ctx.pick(3, 10);
    let stats = BpfStatsGuard::enable()?;
    let stats_before = stats.previous().to_string();
    describe(rep, secs, &stats_before);
    let t = TwoHosts::new()?;
    let empties = attach_empties(&t)?;
    let _server = iperf_server(&t)?;
    let mp = &env.mp;
    let refl_b = mp.reflect(&t.b, &["-I", TwoHosts::B_IF])?;
    let mut refl_a = mp.reflect(&t.a, &["-I", TwoHosts::A_IF])?;
    let pid_b = refl_b.child.pid().context("reflector B pid")?;
    let pid_a = refl_a.child.pid().context("reflector A pid")?;
    let mut names = BTreeMap::new();
    let holders = [("A", pid_a), ("B", pid_b)];
    let traffic = Traffic::measure(&t, &holders, &empties, &mut names, secs)?;

    // Probe phase: the sender replaces A's reflector.
    refl_a.child.stop()?;
    drop(refl_a);
    let (probe, summary) = probe_phase(mp, &t, pid_b, &empties, &mut names, secs)?;
    let refl_sum = refl_b.stop()?;
    drop(empties);
    drop(stats);

    let Traffic {
        tcp,
        udp,
        tcp_gbps,
        udp_pkts,
    } = traffic;
    let (table, data_rows, worst, handoff) = programs_table(&probe, &tcp, &udp);
    rep.tables.push(table);
    let probes_sent = summary["sent"].as_u64().unwrap_or(0);
    let probes_received = summary["received"].as_u64().unwrap_or(0);
    rep.note(format!(
        "Traffic: TCP {tcp_gbps:.2} Gbit/s (TCP segments pass TC as GSO/GRO batches, so a \
         \"packet\" there is one skb); UDP {udp_pkts} datagrams; probes {probes_sent} sent, \
         {probes_received} answered (reflector: {} requests, {} replies).",
        refl_sum["requests"], refl_sum["replies"]
    ));
    rep.note(
        "A non-probe packet takes meshprobe's shortest path: read skb->protocol and the IP \
         protocol (TCP: done); for UDP also the ports and one array-map lookup of the port \
         (probe-ebpf/src/main.rs, parse_udp and port_flags). A probe packet is stamped: clock \
         read, loads, stores and checksum fix-ups."
            .to_string(),
    );
    rep.note(
        "The hand-off program (tp_btf net_dev_start_xmit) runs for every packet the host \
         transmits, every namespace included (other processes' traffic during a phase too): \
         it reads skb->sk and leaves at once without a socket; with one, it looks the socket's \
         local port up in the same port array (non-probe: done). Its floor is an empty \
         program on the same tracepoint (`return 0`, raw tracepoint: the same dispatch)."
            .to_string(),
    );
    let (worst_ns, floor) = judge(rep, worst)?;
    let handoff_above = judge_handoff(rep, handoff);
    rep.data = json!({
        "phase_seconds": secs,
        "bpf_stats_enabled_before": stats_before,
        "tcp_gbit_s": tcp_gbps,
        "udp_datagrams": udp_pkts,
        "probes_sent": probes_sent,
        "probes_received": probes_received,
        "programs": data_rows,
        "worst_non_probe_ns": worst_ns,
        "floor_ns_same_hook": floor,
        "handoff_worst_non_probe_above_floor_ns": handoff_above,
    });
    Ok(())
}

/// The method lines.
fn describe(rep: &mut ScenarioReport, secs: u64, stats_before: &str) {
    rep.method(format!(
        "kernel.bpf_stats_enabled=1 for the scenario (it was {stats_before}; restored \
         afterwards); per program the deltas of run_time_ns and run_cnt (/proc/PID/fdinfo of \
         the process holding it) over a phase with one kind of traffic only"
    ));
    rep.method(
        "A ⟷ B on a veth (harness TwoHosts); meshprobe's programs attached with -I to the veth \
         only (TCX); beside them on every hook an empty program (`return TC_ACT_UNSPEC`, \
         attached first) measured the same way: the floor of the accounting itself; the \
         hand-off program (one per meshprobe process, host-wide on the tracepoint \
         net_dev_start_xmit) beside an empty raw tracepoint program there",
    );
    rep.method(
        "the hand-off program's packets are every packet transmitted on the host during the \
         phase, so its non-probe cells hold the phase's traffic in both directions plus \
         whatever else the host sent",
    );
    rep.method(format!(
        "non-probe phases ({secs} s each): `meshprobe reflect` in A and in B hold the \
         programs; iperf3 A→B TCP at full rate, then iperf3 UDP both ways at once (--bidir), \
         64-octet datagrams at 20 Mbit/s each way to port {IPERF_PORT} (parsed down to the UDP \
         port, looked up, passed)"
    ));
    rep.method(format!(
        "probe phase ({secs} s): `meshprobe ping -i 1ms` in A (its own programs stamp T1/T4) \
         to the reflector in B (T2/T3); cells of fewer than {MIN_PACKETS} packets are shown \
         but not judged"
    ));
}

/// An empty program on both hooks of both sides' veth, and one on the hand-off tracepoint
/// per side (each side's process holds a hand-off program, host-wide).
fn attach_empties(t: &TwoHosts) -> Result<Empties> {
    let mut empties: Empties = Vec::new();
    for (side, ns, ifname) in [("A", &t.a, TwoHosts::A_IF), ("B", &t.b, TwoHosts::B_IF)] {
        for (hook, ingress) in [(0, false), (1, true)] {
            let e = EmptyTcProg::attach(ns, ifname, ingress)?;
            empties.push((side, hook, Empty::Tc(e)));
        }
        empties.push((side, HANDOFF, Empty::Tp(EmptyRawTp::attach()?)));
    }
    Ok(empties)
}

/// The non-probe phases: TCP, then UDP to another port.
struct Traffic {
    tcp: Deltas,
    udp: Deltas,
    tcp_gbps: f64,
    udp_pkts: u64,
}

impl Traffic {
    /// Both phases, `secs` each, with the programs held by the reflectors `holders`.
    fn measure(
        t: &TwoHosts,
        holders: &[(&'static str, u32)],
        empties: &Empties,
        names: &mut BTreeMap<u32, String>,
        secs: u64,
    ) -> Result<Traffic> {
        let s = secs.to_string();
        progress(format!("ebpf-cost: TCP phase ({secs} s)"));
        let (tcp, tcp_info) = phase(holders, empties, names, || iperf_client(t, &["-t", &s]))?;
        let tcp_gbps = tcp_info["end"]["sum_received"]["bits_per_second"]
            .as_f64()
            .unwrap_or(0.0)
            / 1e9;
        progress(format!("ebpf-cost: UDP phase ({secs} s)"));
        let (udp, udp_info) = phase(holders, empties, names, || {
            iperf_client(t, &["-u", "--bidir", "-b", "20M", "-l", "64", "-t", &s])
        })?;
        let udp_pkts = udp_info["end"]["sum"]["packets"].as_u64().unwrap_or(0)
            + udp_info["end"]["sum_bidir_reverse"]["packets"]
                .as_u64()
                .unwrap_or(0);
        Ok(Traffic {
            tcp,
            udp,
            tcp_gbps,
            udp_pkts,
        })
    }
}

/// The probe phase: `meshprobe ping -i 1ms` in A to the reflector `pid_b` for `secs`; the
/// deltas and the ping's summary.
fn probe_phase(
    mp: &Meshprobe,
    t: &TwoHosts,
    pid_b: u32,
    empties: &Empties,
    names: &mut BTreeMap<u32, String>,
    secs: u64,
) -> Result<(Deltas, serde_json::Value)> {
    progress(format!("ebpf-cost: probe phase ({secs} s)"));
    let b4 = TwoHosts::B4.to_string();
    let mut ping = mp.ping_spawn(
        &t.a,
        &[
            "--json",
            "-q",
            "-c",
            "0",
            "-i",
            "1ms",
            "-I",
            TwoHosts::A_IF,
            &b4,
        ],
    )?;
    let ready = ping
        .wait_json(READY_TIMEOUT, |v| v["type"] == "ready")
        .context("meshprobe ping ready line")?;
    mp.check_timestamping("meshprobe ping", &ready, &ping.stderr_text())?;
    let pid_ping = ping.pid().context("ping pid")?;
    let (probe, _) = phase(&[("A", pid_ping), ("B", pid_b)], empties, names, || {
        pause(Duration::from_secs(secs))?;
        Ok(json!({}))
    })?;
    let fin = ping.stop_with(Signal::SIGINT, Duration::from_secs(5))?;
    let summary = fin
        .json_lines()
        .into_iter()
        .find(|v| v["type"] == "summary")
        .unwrap_or_default();
    Ok((probe, summary))
}

/// The worst non-probe cell: (ns, where, floor of that hook and phase).
type Worst = (f64, String, Option<f64>);

/// The table of ns per packet by program and phase, its JSON rows, the worst non-probe cell
/// of the TC programs that is judged, and the hand-off program's worst non-probe cell.
fn programs_table(
    probe: &Deltas,
    tcp: &Deltas,
    udp: &Deltas,
) -> (Table, Vec<serde_json::Value>, Option<Worst>, Option<Worst>) {
    let mut table = Table::new(
        "Mean time per packet in each program (run_time_ns / run_cnt), packets in brackets:",
        &[
            "program",
            "probe packets",
            "non-probe: TCP (iperf3)",
            "non-probe: UDP to another port",
        ],
    );
    let cell = |d: &Deltas, k: (&'static str, &'static str)| match d.get(&k) {
        Some(&v) => match ns_per(v) {
            Some(ns) => format!("{ns:.1} ns ({})", v.1),
            None => "no packets".into(),
        },
        None => "—".into(),
    };
    let judged = |d: &Deltas, k| {
        d.get(&k)
            .copied()
            .filter(|v| v.1 >= MIN_PACKETS)
            .and_then(ns_per)
    };
    let mut data_rows = Vec::new();
    // (ns, where, floor of that hook and phase)
    let mut worst: Option<Worst> = None;
    let mut handoff: Option<Worst> = None;
    for (side, role) in [("A", "sender"), ("B", "reflector")] {
        for (hook, p) in PROGS.iter().enumerate() {
            for label in [*p, EMPTY[hook]] {
                let k = (side, label);
                let name = if label == *p {
                    format!("{side} ({role}) {label}")
                } else {
                    format!("{side} {label} (accounting floor)")
                };
                table.row([name, cell(probe, k), cell(tcp, k), cell(udp, k)]);
                data_rows.push(json!({
                    "side": side, "program": label,
                    "probe": probe.get(&k), "tcp": tcp.get(&k), "udp_other_port": udp.get(&k),
                    "ns_per_packet": {
                        "probe": probe.get(&k).copied().and_then(ns_per),
                        "tcp": tcp.get(&k).copied().and_then(ns_per),
                        "udp_other_port": udp.get(&k).copied().and_then(ns_per),
                    },
                }));
            }
            let w = if hook == HANDOFF {
                &mut handoff
            } else {
                &mut worst
            };
            for (kind, d) in [("TCP", tcp), ("UDP", udp)] {
                if let Some(ns) = judged(d, (side, *p))
                    && w.as_ref().is_none_or(|(w, _, _)| ns > *w)
                {
                    *w = Some((
                        ns,
                        format!("{side} {p}, {kind}"),
                        judged(d, (side, EMPTY[hook])),
                    ));
                }
            }
        }
    }
    (table, data_rows, worst, handoff)
}

/// The hand-off program's goal: its worst non-probe cell above the empty program on the same
/// tracepoint in the same phase. `None` (said) when it did not run.
fn judge_handoff(rep: &mut ScenarioReport, worst: Option<Worst>) -> Option<f64> {
    let Some((ns, at, floor)) = worst else {
        rep.note(format!(
            "the hand-off program did not run ({} not loaded: see the processes' start-up \
             line); no figure",
            PROGS[HANDOFF]
        ));
        return None;
    };
    let floor = floor?;
    let above = ns - floor;
    rep.goal(
        "non-probe packet, hand-off program above the empty program on its tracepoint",
        "≤ 30 ns",
        format!("{above:.1} ns ({at}: {ns:.1} ns, floor {floor:.1} ns)"),
        above <= HANDOFF_GOAL_NS,
        None,
    );
    Some(above)
}

/// The goal from the worst cell: (its ns, the floor on its hook).
fn judge(rep: &mut ScenarioReport, worst: Option<Worst>) -> Result<(f64, Option<f64>)> {
    let Some((worst_ns, worst_where, floor)) = worst else {
        bail!("no non-probe phase put {MIN_PACKETS} packets through a program");
    };
    let met = worst_ns <= GOAL_NS;
    let cause = match floor {
        Some(f) => format!(
            "{worst_ns:.1} ns in {worst_where}; an empty program on the same hook measures \
             {f:.1} ns (the accounting's own floor), so meshprobe's work is about {:.1} ns of it",
            worst_ns - f
        ),
        None => format!("{worst_ns:.1} ns in {worst_where}"),
    };
    rep.goal(
        "non-probe packet, worst program",
        "≤ 60 ns",
        format!("{worst_ns:.1} ns ({worst_where})"),
        met,
        Some(cause),
    );
    Ok((worst_ns, floor))
}
