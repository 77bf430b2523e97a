//! `meshprobe-delay`: the lab/test delay element (the kernel here has no netem). Holds each
//! packet on an interface for a time with its own TC program (probe-ebpf/src/delay.rs, object delay-ebpf), attached through
//! meshprobe's machinery. Not part of the `meshprobe` binary.
use std::{net::IpAddr, process::ExitCode, time::Duration};

use anyhow::{Result, bail};
use clap::Parser;
use meshprobe::{
    cli::{Ready, announce, run_main, stop_signal},
    ebpf::{Attached, Direction, LoadOptions},
    sink::json::emit_json,
};
use probe_common::delay::{DelayConfig, DelayDstKey, counter, names};

/// The delay element's BPF object, built from this source tree with the probe's (build.rs).
static DELAY_OBJECT: &[u8] = aya::include_bytes_aligned!(env!("DELAY_EBPF_OBJECT"));

/// The longest hold, per packet: the packet is held by spinning on a CPU.
const MAX_HOLD: Duration = Duration::from_millis(100);

/// Lab/test delay element (no netem here): hold each packet on an interface for a time.
#[derive(Parser)]
#[command(name = "meshprobe-delay", version)]
struct DelayArgs {
    /// Interface to delay packets on.
    #[arg(short = 'I', long = "interface", required = true)]
    interface: String,
    /// How long to hold each packet (e.g. 500us); with --to, packets to other destinations.
    /// Default 0 (pass); give --delay, --to, or both.
    #[arg(long, value_parser = humantime::parse_duration)]
    delay: Option<Duration>,
    /// Hold packets to ADDR (IPv4 or IPv6 destination address) for DUR instead, e.g.
    /// `--to 198.18.0.12=250us --to fd00::12=250us`. Repeatable; DUR 0 exempts ADDR.
    #[arg(long = "to", value_name = "ADDR=DUR")]
    to: Vec<String>,
    /// Delay ingress instead of egress.
    #[arg(long)]
    ingress: bool,
    /// Only UDP packets to or from this port.
    #[arg(long)]
    udp_port: Option<u16>,
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    run_main("meshprobe-delay", delay(DelayArgs::parse()))
}

/// The `DELAY_DST` key of an address: IPv4 (and IPv4-mapped IPv6) as `::ffff:a.b.c.d`, the
/// form the program builds from an IPv4 header.
fn delay_dst_key(addr: IpAddr) -> DelayDstKey {
    match addr {
        IpAddr::V4(a) => DelayDstKey::v4(a.octets()),
        IpAddr::V6(a) => match a.to_ipv4_mapped() {
            Some(v4) => DelayDstKey::v4(v4.octets()),
            None => DelayDstKey::v6(a.octets()),
        },
    }
}

/// `--to ADDR=DUR` → (address, duration), or an error naming the argument.
fn parse_to(arg: &str) -> Result<(IpAddr, Duration)> {
    let Some((addr, dur)) = arg.split_once('=') else {
        bail!("--to {arg}: expected ADDR=DUR, e.g. --to 198.18.0.12=250us");
    };
    let addr = addr.trim();
    let ip: IpAddr = addr
        .strip_prefix('[')
        .and_then(|a| a.strip_suffix(']'))
        .unwrap_or(addr)
        .parse()
        .map_err(|_| anyhow::anyhow!("--to {arg}: `{addr}` is not an IPv4 or IPv6 address"))?;
    let d = humantime::parse_duration(dur.trim()).map_err(|e| {
        anyhow::anyhow!("--to {arg}: `{dur}` is not a duration ({e}); e.g. 250us, 1ms")
    })?;
    if d > MAX_HOLD {
        bail!("--to {arg}: at most 100ms (the packet is held by spinning on a CPU)");
    }
    Ok((ip, d))
}

/// Fills `DELAY_DST`: packets to each address are held for its duration instead of
/// `DelayConfig::delay_ns`. The program consults the map only once `DelayConfig::PER_DST` is
/// set, so this comes first, then `DELAY`.
fn set_delay_to(att: &mut Attached, entries: &[(IpAddr, Duration)]) -> Result<()> {
    let kv = entries.iter().map(|&(addr, d)| {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        (delay_dst_key(addr), ns)
    });
    Ok(att.hash_insert(names::MAP_DELAY_DST, kv)?)
}

async fn delay(a: DelayArgs) -> Result<()> {
    let base = a.delay.unwrap_or(Duration::ZERO);
    if base > MAX_HOLD {
        bail!("--delay {base:?}: at most 100ms (the packet is held by spinning on a CPU)");
    }
    if a.delay.is_none() && a.to.is_empty() {
        bail!("give --delay DUR, --to ADDR=DUR (repeatable), or both");
    }
    let mut to: Vec<(IpAddr, Duration)> = Vec::with_capacity(a.to.len());
    for arg in &a.to {
        let (ip, d) = parse_to(arg)?;
        let key = delay_dst_key(ip);
        if let Some((prev, _)) = to.iter().find(|(p, _)| delay_dst_key(*p) == key) {
            bail!("--to {arg}: destination {prev} is given twice");
        }
        to.push((ip, d));
    }
    if to.len() > DelayDstKey::MAX_ENTRIES as usize {
        bail!(
            "--to: {} destinations, at most {}",
            to.len(),
            DelayDstKey::MAX_ENTRIES
        );
    }
    let mut stop = stop_signal()?;
    let dir = if a.ingress {
        Direction::Ingress
    } else {
        Direction::Egress
    };
    let mut att = Attached::load(
        DELAY_OBJECT,
        std::slice::from_ref(&a.interface),
        &[(names::PROG_DELAY, dir)],
        &LoadOptions::default(),
    )?;
    // Entries first: the program reads the map only once PER_DST is set.
    set_delay_to(&mut att, &to)?;
    att.array_set(
        names::MAP_DELAY,
        0,
        DelayConfig {
            delay_ns: base.as_nanos() as u64,
            udp_port: a.udp_port.unwrap_or(0),
            flags: if to.is_empty() {
                0
            } else {
                DelayConfig::PER_DST
            },
            _pad: [0; 4],
        },
    )?;
    announce(
        a.json,
        Ready {
            kind: "ready",
            role: "delay",
            port: a.udp_port,
            timestamping: "n/a",
            kernel_clock: None,
            handoff: None,
            interfaces: att.interfaces(),
        },
    );
    let _ = stop.changed().await;
    let counters = att
        .per_cpu_sums(names::MAP_COUNTERS, &counter::NAMES)
        .unwrap_or_default();
    if a.json {
        emit_json(&serde_json::json!({
            "type": "delay_summary",
            "held": counters.get("delay_held"),
            "cut_short": counters.get("delay_cut_short"),
            "dst_hit": counters.get("delay_dst_hit"),
        }));
    } else {
        println!(
            "held {} packets ({} cut short)",
            counters.get("delay_held").unwrap_or(&0),
            counters.get("delay_cut_short").unwrap_or(&0)
        );
    }
    att.detach();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delay_dst_keys_map_ipv4_into_ipv6() {
        let v4 = delay_dst_key("198.18.0.12".parse().unwrap());
        assert_eq!(
            v4.addr,
            [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 198, 18, 0, 12]
        );
        assert_eq!(delay_dst_key("::ffff:198.18.0.12".parse().unwrap()), v4);
        let v6 = delay_dst_key("fd00::12".parse().unwrap());
        assert_eq!(v6.addr[0..2], [0xfd, 0]);
        assert_eq!(v6.addr[15], 0x12);
    }
}
