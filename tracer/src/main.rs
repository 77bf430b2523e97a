//! `meshprobe-tracer`: the tracepoint reference, for tests and the bench (never part of the
//! `meshprobe` binary). Attaches the `trace-ebpf` programs (probe-ebpf/src/trace.rs) to the
//! kernel's `net_dev_start_xmit` and receive-entry tracepoints, machine-wide, and prints one JSON
//! line per probe packet seen (`{"type":"trace",...}`, CLOCK_TAI) until SIGINT/SIGTERM, then a
//! `trace_summary` with its per-CPU counters summed.
//!
//! The tracepoints see every namespace: the reader picks a host's events by the (netns inode,
//! ifindex) of its interface.
use std::process::ExitCode;

use anyhow::Result;
use aya::{
    Btf, Ebpf, EbpfLoader,
    maps::{Array, MapData, PerCpuArray, RingBuf},
    programs::BtfTracePoint,
};
use clap::Parser;
use meshprobe::{
    cli::{run_main, stop_signal},
    sink::json::emit_json,
};
use probe_common::{
    btf_offsets,
    trace::{TraceEvent, counter, kind, names, point, port},
};

/// How often the ring is read: 2 MiB of 32-octet events is 65 536 events, far more than the
/// bench's rates (a few thousand probe packets per second) produce in this time.
const POLL: std::time::Duration = std::time::Duration::from_millis(5);

/// The tracepoint reference's BPF object, built from this source tree with the probe's
/// (build.rs).
static TRACE_OBJECT: &[u8] = aya::include_bytes_aligned!(env!("TRACE_EBPF_OBJECT"));

/// Tests and bench only: per-probe instants on the kernel's tracepoints (driver hand-off,
/// receive entry), as JSON lines.
#[derive(Parser)]
#[command(name = "meshprobe-tracer", version)]
struct TracerArgs {
    /// A STAMP port in unauthenticated mode (requests to it, replies from it). Repeatable.
    #[arg(long = "port")]
    ports: Vec<u16>,
    /// A STAMP port in authenticated mode (RFC 8762 §4.2.2 layouts). Repeatable.
    #[arg(long = "auth-port")]
    auth_port: Vec<u16>,
    /// A UDP ping-pong port whose payload starts with a 64-bit sequence (sockperf; the bench's
    /// contender). Repeatable.
    #[arg(long = "seq64-port")]
    seq64_port: Vec<u16>,
    /// Trace ICMP / ICMPv6 echo requests and replies too (ping; key: identifier, sequence).
    #[arg(long)]
    icmp_echo: bool,
}

#[derive(Debug, thiserror::Error)]
enum TracerError {
    #[error("kernel struct offsets from BTF: {0}")]
    Offsets(#[from] btf_offsets::OffsetsError),
    #[error("loading the trace object (needs root; bpf_ktime_get_tai_ns needs Linux >= 6.1): {0}")]
    Load(#[from] aya::EbpfError),
    #[error("reading the kernel's BTF: {0}")]
    Btf(#[from] aya::BtfError),
    #[error("the trace object has no {0}")]
    Missing(&'static str),
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        source: aya::maps::MapError,
    },
    #[error("program {name} at tracepoint {tp}: {source}")]
    Program {
        name: &'static str,
        tp: &'static str,
        source: aya::programs::ProgramError,
    },
    #[error("no receive tracepoint attached: {0}")]
    NoReceive(String),
}

fn main() -> ExitCode {
    run_main("meshprobe-tracer", tracer(TracerArgs::parse()))
}

/// Loads and attaches every program it can. The hand-off (`net_dev_start_xmit`) and one
/// receive entry are required; the others are extra receive points. Returns the attached
/// tracepoints.
fn attach(ebpf: &mut Ebpf) -> Result<Vec<&'static str>, TracerError> {
    let btf = Btf::from_sys_fs()?;
    let mut attached = Vec::new();
    let mut failed = Vec::new();
    for (i, (name, tp)) in names::PROGRAMS.into_iter().enumerate() {
        let r = (|| {
            let p: &mut BtfTracePoint = ebpf
                .program_mut(name)
                .ok_or(TracerError::Missing(name))?
                .try_into()
                .map_err(|source| TracerError::Program { name, tp, source })?;
            p.load(tp, &btf)
                .map_err(|source| TracerError::Program { name, tp, source })?;
            p.attach()
                .map_err(|source| TracerError::Program { name, tp, source })?;
            Ok::<_, TracerError>(())
        })();
        match r {
            Ok(()) => attached.push(tp),
            // The first is the hand-off: without it there is no reference.
            Err(e) if i == 0 => return Err(e),
            Err(e) => failed.push(e.to_string()),
        }
    }
    if attached.len() < 2 {
        return Err(TracerError::NoReceive(failed.join("; ")));
    }
    for f in &failed {
        eprintln!("meshprobe-tracer: not attached: {f}");
    }
    Ok(attached)
}

/// One event as its JSON line (the harness's `trace::Event`).
fn event_json(e: &TraceEvent) -> serde_json::Value {
    serde_json::json!({
        "type": "trace",
        "tai_ns": e.tai_ns,
        "point": point::name(e.point),
        "kind": kind::name(e.kind),
        "netns": e.netns,
        "ifindex": e.ifindex,
        "sport": e.sport,
        "dport": e.dport,
        "ssid": e.ssid,
        "seq": e.seq,
    })
}

/// Writes out every event in the ring buffer; returns how many.
fn drain(ring: &mut RingBuf<MapData>, out: &mut impl std::io::Write) -> usize {
    let mut n = 0;
    while let Some(item) = ring.next() {
        if item.len() < size_of::<TraceEvent>() {
            continue;
        }
        // SAFETY: the program submits whole `TraceEvent`s; read unaligned from the ring.
        let e: TraceEvent = unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
        let _ = writeln!(out, "{}", event_json(&e));
        n += 1;
    }
    let _ = out.flush();
    n
}

async fn tracer(a: TracerArgs) -> Result<()> {
    if a.ports.is_empty() && a.auth_port.is_empty() && a.seq64_port.is_empty() && !a.icmp_echo {
        anyhow::bail!("nothing to trace: give --port, --auth-port, --seq64-port or --icmp-echo");
    }
    let offsets = btf_offsets::from_sys().map_err(TracerError::from)?;
    let mut stop = stop_signal()?;
    let icmp = u8::from(a.icmp_echo);
    let mut ebpf = EbpfLoader::new()
        .override_global(names::GLOBAL_KERNEL_OFFSETS, &offsets, true)
        .override_global(names::GLOBAL_ICMP_ECHO, &icmp, true)
        .load(TRACE_OBJECT)
        .map_err(TracerError::from)?;
    {
        let map = ebpf
            .map_mut(names::MAP_PORTS)
            .ok_or(TracerError::Missing(names::MAP_PORTS))?;
        let mut ports: Array<_, u8> = Array::try_from(map).map_err(|source| TracerError::Map {
            name: names::MAP_PORTS,
            source,
        })?;
        let modes = a
            .ports
            .iter()
            .map(|&p| (p, port::OPEN))
            .chain(a.auth_port.iter().map(|&p| (p, port::AUTH)))
            .chain(a.seq64_port.iter().map(|&p| (p, port::SEQ64)));
        for (p, mode) in modes {
            ports
                .set(p as u32, mode, 0)
                .map_err(|source| TracerError::Map {
                    name: names::MAP_PORTS,
                    source,
                })?;
        }
    }
    let points = attach(&mut ebpf)?;
    let ring_map = ebpf
        .take_map(names::MAP_EVENTS)
        .ok_or(TracerError::Missing(names::MAP_EVENTS))?;
    let ring = RingBuf::try_from(ring_map).map_err(|source| TracerError::Map {
        name: names::MAP_EVENTS,
        source,
    })?;
    let mut ring = ring;
    emit_json(&serde_json::json!({
        "type": "ready",
        "role": "tracer",
        "clock": "tai",
        "points": points,
        "ports": a.ports,
        "auth_ports": a.auth_port,
        "seq64_ports": a.seq64_port,
        "icmp_echo": a.icmp_echo,
    }));
    let stdout = std::io::stdout();
    let mut events = 0usize;
    // The programs submit without waking us (a wake-up from the tracepoint would delay the
    // packet it times): read the ring on a timer instead.
    let mut tick = tokio::time::interval(POLL);
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            _ = tick.tick() => events += drain(&mut ring, &mut stdout.lock()),
        }
    }
    // Events submitted before the signal.
    events += drain(&mut ring, &mut stdout.lock());
    let map = ebpf
        .map(names::MAP_COUNTERS)
        .ok_or(TracerError::Missing(names::MAP_COUNTERS))?;
    let arr: PerCpuArray<_, u64> =
        PerCpuArray::try_from(map).map_err(|source| TracerError::Map {
            name: names::MAP_COUNTERS,
            source,
        })?;
    let mut counters = serde_json::Map::new();
    for (i, name) in counter::NAMES.iter().enumerate() {
        let sum: u64 = arr.get(&(i as u32), 0).map(|v| v.iter().sum()).unwrap_or(0);
        counters.insert((*name).into(), sum.into());
    }
    emit_json(&serde_json::json!({
        "type": "trace_summary",
        "printed": events,
        "counters": counters,
    }));
    Ok(())
}
