//! The tracepoint reference: `meshprobe-tracer` (tests and bench only) prints one event per probe
//! packet at the driver hand-off (`net_dev_start_xmit`) and at the receive entries (`netif_rx`,
//! `netif_receive_skb`, `napi_gro_receive_entry`), machine-wide, on CLOCK_TAI, without
//! cloning the skb as a capture tap does. [`crate::reference::trace_times`] turns the events of
//! two interfaces into per-probe instants.
//!
//! Where it sits against a capture on the same interface (the kernel's code order, veth):
//! - out: `xmit_one` runs the taps (`dev_queue_xmit_nit`, which stamps the capture's copy)
//!   before `trace_net_dev_start_xmit`, so the trace is later by the tap's own work;
//! - in: `netif_rx_internal` stamps the skb (`net_timestamp_check`, the time a capture then
//!   reports) right before `trace_netif_rx`, so the trace is later by a few instructions.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use nix::sys::signal::Signal;
use serde::Deserialize;

use crate::child::ChildGuard;
use crate::child::READY_TIMEOUT;
use crate::netns::Netns;

/// Time given to packets still on their way to reach a tracepoint before the tracer stops
/// (as a capture's [`crate::capture::DRAIN`]).
pub const DRAIN: Duration = crate::capture::DRAIN;

/// One probe packet at one tracepoint (a `{"type":"trace",...}` line).
#[derive(Clone, Debug, Deserialize)]
pub struct Event {
    /// CLOCK_TAI ns when the tracepoint fired.
    pub tai_ns: u64,
    /// "xmit", or a receive point: "netif_rx", "netif_receive_skb", "napi_gro_receive".
    pub point: String,
    /// "request" (to a traced port) or "reply" (from it); "echo_request" or "echo_reply"
    /// (ICMP, with `--icmp-echo`: `ssid` is the identifier, ports 0).
    pub kind: String,
    pub netns: u32,
    pub ifindex: u32,
    pub sport: u16,
    pub dport: u16,
    pub ssid: u16,
    /// Sequence Number (request) or Session-Sender Sequence Number (reply).
    pub seq: u32,
}

impl Event {
    pub fn is_xmit(&self) -> bool {
        self.point == "xmit"
    }

    pub fn site(&self) -> Site {
        Site {
            netns: self.netns,
            ifindex: self.ifindex,
        }
    }
}

/// An interface of a namespace as the tracepoints name it: the device's network namespace
/// (inode) and index.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Site {
    pub netns: u32,
    pub ifindex: u32,
}

impl Site {
    /// `iface` of `ns`.
    pub fn of(ns: &Netns, iface: &str) -> Result<Site> {
        use std::os::unix::fs::MetadataExt as _;
        let path = format!("/run/netns/{}", ns.name());
        let ino = std::fs::metadata(&path)
            .with_context(|| format!("stat {path}"))?
            .ino();
        let name = iface.to_string();
        let ifindex = ns
            .enter(move || nix::net::if_::if_nametoindex(name.as_str()))?
            .with_context(|| format!("ifindex of {iface} in {}", ns.name()))?;
        Ok(Site {
            netns: u32::try_from(ino).context("netns inode beyond 32 bits")?,
            ifindex,
        })
    }
}

/// What a stopped tracer saw.
#[derive(Debug, Default)]
pub struct TraceResult {
    pub events: Vec<Event>,
    /// The programs' per-CPU counters, summed (`probe_common::trace::counter::NAMES`).
    pub counters: BTreeMap<String, u64>,
    /// The tracepoints it attached.
    pub points: Vec<String>,
}

impl TraceResult {
    /// Events lost to a full ring buffer.
    pub fn dropped(&self) -> u64 {
        self.counters.get("drop_ring_full").copied().unwrap_or(0)
    }
}

/// A running `meshprobe-tracer` (in the caller's namespace: the tracepoints see them all).
pub struct Tracer {
    child: ChildGuard,
    /// The tracepoints it attached.
    pub points: Vec<String>,
}

impl Tracer {
    /// Starts `tracer_bin ARGS` (`--port P`, `--auth-port P`, `--seq64-port P`,
    /// `--icmp-echo`) and waits until its programs are attached.
    pub fn start(tracer_bin: &Path, args: &[String]) -> Result<Tracer> {
        let mut cmd = std::process::Command::new(tracer_bin);
        cmd.args(args);
        let mut child = ChildGuard::spawn(cmd, "meshprobe-tracer")?;
        let ready = child
            .wait_json(READY_TIMEOUT, |v| v["type"] == "ready")
            .context("meshprobe-tracer ready line")?;
        if ready["clock"] != "tai" {
            bail!("meshprobe-tracer ready line without clock tai: {ready}");
        }
        let points = ready["points"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|p| p.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        Ok(Tracer { child, points })
    }

    /// Waits [`DRAIN`], stops the tracer (SIGINT: it drains its ring buffer first) and returns
    /// every event it printed.
    pub fn stop(mut self) -> Result<TraceResult> {
        std::thread::sleep(DRAIN);
        let fin = self
            .child
            .stop_with(Signal::SIGINT, Duration::from_secs(10))?;
        if !fin.status.success() {
            bail!(
                "meshprobe-tracer exited {}; stderr:\n{}",
                fin.status,
                fin.stderr_text()
            );
        }
        let mut out = TraceResult {
            points: std::mem::take(&mut self.points),
            ..Default::default()
        };
        let mut summary = false;
        for v in fin.json_lines() {
            match v["type"].as_str() {
                Some("trace") => out.events.push(
                    serde_json::from_value(v.clone()).with_context(|| format!("trace line {v}"))?,
                ),
                Some("trace_summary") => {
                    summary = true;
                    if let Some(m) = v["counters"].as_object() {
                        for (k, n) in m {
                            out.counters.insert(k.clone(), n.as_u64().unwrap_or(0));
                        }
                    }
                }
                _ => {}
            }
        }
        if !summary {
            bail!(
                "meshprobe-tracer printed no trace_summary; stderr:\n{}",
                fin.stderr_text()
            );
        }
        Ok(out)
    }
}
