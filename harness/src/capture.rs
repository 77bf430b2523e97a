//! tcpdump captures as an independent kernel reference, decoded with pcap-file and pnet.

use std::fs::File;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use nix::sys::signal::Signal;
use pcap_file::pcap::PcapReader;
use pcap_file::{DataLink, TsResolution};
use pnet::packet::Packet as _;
use pnet::packet::ethernet::{EtherTypes, EthernetPacket};
use pnet::packet::ip::IpNextHeaderProtocols;
use pnet::packet::ipv4::Ipv4Packet;
use pnet::packet::ipv6::Ipv6Packet;

use crate::child::ChildGuard;
use crate::netns::Netns;

/// Set to keep the pcap files (their paths are printed) for a look with tcpdump/wireshark.
pub const KEEP_PCAP_ENV: &str = "MESHPROBE_KEEP_PCAP";

/// Time given to packets still on their way to reach the tap before tcpdump is stopped.
pub const DRAIN: Duration = Duration::from_millis(300);

/// Safety limit on waiting for tcpdump to read every packet its socket received (see
/// [`Capture::stop`]); past it the capture stops anyway, as it would without the check.
pub const CATCH_UP_LIMIT: Duration = Duration::from_secs(10);

static SEQ: AtomicU32 = AtomicU32::new(0);

/// One captured UDP packet.
#[derive(Clone, Debug)]
pub struct Packet {
    /// Capture timestamp (CLOCK_REALTIME of the capturing host), nanoseconds since the epoch.
    pub ts_ns: u64,
    pub src: SocketAddr,
    pub dst: SocketAddr,
    /// UDP length field.
    pub udp_len: u16,
    /// UDP checksum field as on the wire.
    pub checksum: u16,
    /// UDP payload as captured (at most `udp_len - 8` octets, less when truncated).
    pub payload: Vec<u8>,
    /// The capture holds the whole UDP datagram (not cut by the snap length).
    pub complete: bool,
    /// IPv4 TTL or IPv6 hop limit.
    pub ttl: u8,
    /// UDP header and payload as captured, for checksum checks.
    segment: Vec<u8>,
}

/// Ones'-complement sum of `data` (big-endian 16-bit words) added to `acc`.
pub fn csum_add(mut acc: u32, data: &[u8]) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        acc = acc.wrapping_add(u16::from_be_bytes([c[0], c[1]]) as u32);
        acc = (acc & 0xffff) + (acc >> 16);
    }
    if let [last] = chunks.remainder() {
        acc = acc.wrapping_add((*last as u32) << 8);
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc
}

/// Folds a 32-bit accumulator to 16 bits.
pub fn csum_fold(mut acc: u32) -> u16 {
    while acc >> 16 != 0 {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// Unfolded ones'-complement sum of the UDP pseudo-header.
pub fn pseudo_header_sum(src: IpAddr, dst: IpAddr, udp_len: u32) -> u32 {
    let mut acc = 0u32;
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            acc = csum_add(acc, &s.octets());
            acc = csum_add(acc, &d.octets());
            acc = csum_add(acc, &[0, 17]);
            acc = csum_add(acc, &(udp_len as u16).to_be_bytes());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            acc = csum_add(acc, &s.octets());
            acc = csum_add(acc, &d.octets());
            acc = csum_add(acc, &udp_len.to_be_bytes());
            acc = csum_add(acc, &[0, 0, 0, 17]);
        }
        _ => panic!("mixed address families"),
    }
    acc
}

/// The UDP checksum to put on the wire for `segment` (header with checksum field zeroed or
/// not: the field at offset 6 is ignored).
pub fn udp_checksum(src: IpAddr, dst: IpAddr, segment: &[u8]) -> u16 {
    let mut acc = pseudo_header_sum(src, dst, segment.len() as u32);
    acc = csum_add(acc, &segment[..6.min(segment.len())]);
    if segment.len() > 8 {
        acc = csum_add(acc, &segment[8..]);
    }
    let c = !csum_fold(acc);
    if c == 0 { 0xffff } else { c }
}

impl Packet {
    pub fn is_ipv6(&self) -> bool {
        self.src.is_ipv6()
    }

    /// IPv4 with checksum field 0: "no checksum" (RFC 768); never valid on IPv6.
    pub fn checksum_absent(&self) -> bool {
        self.checksum == 0 && !self.is_ipv6()
    }

    /// The UDP checksum verifies over pseudo-header, header and payload (an absent IPv4
    /// checksum counts as valid). `false` when the capture is incomplete.
    pub fn checksum_ok(&self) -> bool {
        if self.checksum_absent() {
            return true;
        }
        if !self.complete || self.checksum == 0 {
            return false;
        }
        let mut acc = pseudo_header_sum(self.src.ip(), self.dst.ip(), self.udp_len as u32);
        acc = csum_add(acc, &self.segment[..self.udp_len as usize]);
        csum_fold(acc) == 0xffff
    }

    /// The checksum field holds only the folded pseudo-header sum: what a locally generated
    /// CHECKSUM_PARTIAL packet carries before the device (or nobody, on veth) finishes it.
    pub fn checksum_is_partial(&self) -> bool {
        self.checksum
            == csum_fold(pseudo_header_sum(
                self.src.ip(),
                self.dst.ip(),
                self.udp_len as u32,
            ))
    }

    /// Big-endian u16 at payload offset `off`.
    pub fn be16(&self, off: usize) -> Option<u16> {
        Some(u16::from_be_bytes(
            self.payload.get(off..off + 2)?.try_into().ok()?,
        ))
    }

    /// Big-endian u32 at payload offset `off`.
    pub fn be32(&self, off: usize) -> Option<u32> {
        Some(u32::from_be_bytes(
            self.payload.get(off..off + 4)?.try_into().ok()?,
        ))
    }
}

/// Decodes one Ethernet frame; `None` unless it is a UDP packet (first fragment or whole).
pub fn decode_frame(ts_ns: u64, frame: &[u8]) -> Option<Packet> {
    let eth = EthernetPacket::new(frame)?;
    let (src, dst, ttl, l4): (IpAddr, IpAddr, u8, Vec<u8>) = match eth.get_ethertype() {
        EtherTypes::Ipv4 => {
            let ip = Ipv4Packet::new(eth.payload())?;
            if ip.get_next_level_protocol() != IpNextHeaderProtocols::Udp
                || ip.get_fragment_offset() != 0
            {
                return None;
            }
            let hl = ip.get_header_length() as usize * 4;
            let total = ip.get_total_length() as usize;
            let bytes = eth.payload();
            let end = total.min(bytes.len());
            if hl < 20 || hl > end {
                return None;
            }
            (
                ip.get_source().into(),
                ip.get_destination().into(),
                ip.get_ttl(),
                bytes[hl..end].to_vec(),
            )
        }
        EtherTypes::Ipv6 => {
            let ip = Ipv6Packet::new(eth.payload())?;
            if ip.get_next_header() != IpNextHeaderProtocols::Udp {
                return None;
            }
            let bytes = eth.payload();
            let end = (40 + ip.get_payload_length() as usize).min(bytes.len());
            (
                ip.get_source().into(),
                ip.get_destination().into(),
                ip.get_hop_limit(),
                bytes[40.min(end)..end].to_vec(),
            )
        }
        _ => return None,
    };
    if l4.len() < 8 {
        return None;
    }
    let sport = u16::from_be_bytes([l4[0], l4[1]]);
    let dport = u16::from_be_bytes([l4[2], l4[3]]);
    let udp_len = u16::from_be_bytes([l4[4], l4[5]]);
    let checksum = u16::from_be_bytes([l4[6], l4[7]]);
    let complete = udp_len as usize >= 8 && l4.len() >= udp_len as usize;
    let pay_end = (udp_len as usize).clamp(8, l4.len());
    Some(Packet {
        ts_ns,
        src: SocketAddr::new(src, sport),
        dst: SocketAddr::new(dst, dport),
        udp_len,
        checksum,
        payload: l4[8..pay_end].to_vec(),
        complete,
        ttl,
        segment: l4,
    })
}

/// Reads every UDP packet of a nanosecond-resolution Ethernet pcap file.
pub fn read_pcap(path: &Path) -> Result<Vec<Packet>> {
    read_pcap_with(path, decode_frame)
}

/// Every frame of a nanosecond-resolution Ethernet pcap file with its capture time (ns since
/// the epoch), whatever the protocol.
pub fn read_pcap_frames(path: &Path) -> Result<Vec<(u64, Vec<u8>)>> {
    read_pcap_with(path, |ts, data| Some((ts, data.to_vec())))
}

/// `keep(capture time ns, frame)` of every frame of a nanosecond-resolution Ethernet pcap
/// file, where it says `Some`.
fn read_pcap_with<T>(path: &Path, mut keep: impl FnMut(u64, &[u8]) -> Option<T>) -> Result<Vec<T>> {
    let f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut r = PcapReader::new(f).with_context(|| format!("pcap header of {}", path.display()))?;
    if r.header().ts_resolution != TsResolution::NanoSecond {
        bail!(
            "{}: microsecond pcap; the harness needs nanosecond timestamps",
            path.display()
        );
    }
    if r.header().datalink != DataLink::ETHERNET {
        bail!(
            "{}: datalink {:?}, expected Ethernet",
            path.display(),
            r.header().datalink
        );
    }
    let mut out = Vec::new();
    while let Some(p) = r.next_packet() {
        let p = p.with_context(|| format!("reading {}", path.display()))?;
        if let Some(v) = keep(p.timestamp.as_nanos() as u64, &p.data) {
            out.push(v);
        }
    }
    Ok(out)
}

/// One-way delays of the packets of `rx` that also appear in `tx` (same addresses, ports and
/// payload; the first such packet of `tx`): `rx` capture time minus `tx` capture time, in
/// the order of `rx`. Captures on one machine share CLOCK_REALTIME, so across namespaces the
/// difference needs no clock synchronisation. Give every packet a unique payload.
pub fn one_way_delays<'a>(tx: &[Packet], rx: &'a [Packet]) -> Vec<(&'a Packet, i64)> {
    let mut sent: std::collections::HashMap<(SocketAddr, SocketAddr, &[u8]), u64> =
        std::collections::HashMap::new();
    for p in tx {
        sent.entry((p.src, p.dst, p.payload.as_slice()))
            .or_insert(p.ts_ns);
    }
    rx.iter()
        .filter_map(|p| {
            let t = sent.get(&(p.src, p.dst, p.payload.as_slice()))?;
            Some((p, p.ts_ns as i64 - *t as i64))
        })
        .collect()
}

/// Result of a stopped capture.
#[derive(Debug)]
pub struct CaptureResult {
    pub packets: Vec<Packet>,
    /// tcpdump's "N packets dropped by kernel" at exit.
    pub dropped_by_kernel: u64,
}

/// What a capture stopped with [`Capture::stop_frames`] saw: every frame, whatever the
/// protocol.
#[derive(Debug, Default)]
pub struct Frames {
    /// (capture time, CLOCK_REALTIME ns; the frame as captured, cut at the snap length).
    pub frames: Vec<(u64, Vec<u8>)>,
    /// tcpdump's "N packets dropped by kernel" at exit.
    pub dropped_by_kernel: u64,
}

impl Frames {
    /// `decode(capture time, frame)` of every frame where it says `Some` (e.g.
    /// [`decode_frame`] for the UDP packets).
    pub fn decode<T>(&self, decode: impl Fn(u64, &[u8]) -> Option<T>) -> Vec<T> {
        self.frames
            .iter()
            .filter_map(|(ts, fr)| decode(*ts, fr))
            .collect()
    }
}

/// Kernel buffer of [`Capture::start`] and [`Capture::start_filter`], KiB.
pub const BUFFER_KIB: u32 = 8192;

/// A running `tcpdump -w` on one interface of one namespace (nanosecond stamps, both
/// directions, 256-octet snap length). [`Capture::stop`] decodes the UDP packets;
/// [`Capture::stop_frames`] returns every frame raw, whatever the protocol (e.g. ICMP).
pub struct Capture {
    child: ChildGuard,
    path: PathBuf,
    iface: String,
}

impl Capture {
    /// Starts capturing UDP packets to or from `port` on `iface` in `ns`, and returns once
    /// tcpdump says it is listening.
    pub fn start(ns: &Netns, iface: &str, port: u16) -> Result<Capture> {
        Self::start_filter(ns, iface, &format!("udp port {port}"))
    }

    /// Like [`Capture::start`] with an arbitrary pcap filter expression.
    pub fn start_filter(ns: &Netns, iface: &str, filter: &str) -> Result<Capture> {
        Self::start_buffered(ns, iface, filter, BUFFER_KIB)
    }

    /// Like [`Capture::start_filter`] with `buffer_kib` of kernel buffer (`tcpdump -B`).
    pub fn start_buffered(
        ns: &Netns,
        iface: &str,
        filter: &str,
        buffer_kib: u32,
    ) -> Result<Capture> {
        let path = std::env::temp_dir().join(format!(
            "{}-{}-{}-{iface}.pcap",
            ns.name(),
            std::process::id(),
            SEQ.fetch_add(1, Ordering::SeqCst)
        ));
        let p = path.to_string_lossy().into_owned();
        let buf = buffer_kib.to_string();
        let mut argv = vec![
            "tcpdump",
            "-i",
            iface,
            "-n",
            "-w",
            &p,
            "-Z",
            "root",
            "--immediate-mode",
            "--time-stamp-precision=nano",
            "-Q",
            "inout",
            "-B",
            &buf,
            "-s",
            "256",
        ];
        argv.extend(filter.split_whitespace());
        let child = ns.spawn(&argv)?;
        // Built first so that Drop removes the file even when tcpdump never gets ready.
        let mut cap = Capture {
            child,
            path,
            iface: iface.to_string(),
        };
        cap.child
            .wait_stderr("listening on", Duration::from_secs(10))?;
        Ok(cap)
    }

    pub fn iface(&self) -> &str {
        &self.iface
    }

    /// Stops tcpdump with SIGINT (so it flushes and closes the file) and decodes the UDP
    /// packets of the file. Waits [`DRAIN`] first, then until tcpdump has read every packet
    /// its socket received (at most [`CATCH_UP_LIMIT`]): SIGINT ends its loop at once, so
    /// packets still in the ring would be missing from the file, however short the wait was
    /// (a descheduled tcpdump falls behind by any amount).
    pub fn stop(mut self) -> Result<CaptureResult> {
        let dropped_by_kernel = self.halt()?;
        Ok(CaptureResult {
            packets: read_pcap(&self.path)?,
            dropped_by_kernel,
        })
    }

    /// Like [`Capture::stop`], returning every frame of the file undecoded.
    pub fn stop_frames(mut self) -> Result<Frames> {
        let dropped_by_kernel = self.halt()?;
        Ok(Frames {
            frames: read_pcap_frames(&self.path)?,
            dropped_by_kernel,
        })
    }

    /// Waits [`DRAIN`] and for tcpdump to catch up, stops it with SIGINT and returns its "N
    /// packets dropped by kernel".
    fn halt(&mut self) -> Result<u64> {
        std::thread::sleep(DRAIN);
        self.catch_up();
        let fin = self
            .child
            .stop_with(Signal::SIGINT, Duration::from_secs(5))?;
        // The exit report comes last (the SIGUSR1 reports before it carry the same words).
        Ok(fin
            .stderr
            .iter()
            .rev()
            .find_map(|l| tcpdump_count(l, "dropped by kernel"))
            .unwrap_or(0))
    }

    /// Asks tcpdump for its counts (SIGUSR1) until every packet that passed the filter was
    /// either written or dropped by the kernel, i.e. its ring is empty. Gives up silently
    /// after [`CATCH_UP_LIMIT`] or on any error: the stop then goes ahead as it always did.
    /// (On `lo` libpcap skips the outgoing copy of each packet, so the counts never meet
    /// there: the harness captures on veth only.)
    fn catch_up(&mut self) {
        let deadline = std::time::Instant::now() + CATCH_UP_LIMIT;
        while std::time::Instant::now() < deadline {
            if self.child.signal(Signal::SIGUSR1).is_err() {
                return;
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let Ok(line) = self.child.wait_stderr("received by filter", left) else {
                return;
            };
            let count = |what| tcpdump_count(&line, what);
            match (
                count("captured"),
                count("received by filter"),
                count("dropped by kernel"),
            ) {
                (Some(c), Some(r), Some(d)) if c + d >= r => return,
                (Some(_), Some(_), Some(_)) => std::thread::sleep(Duration::from_millis(20)),
                _ => return,
            }
        }
        eprintln!(
            "harness: tcpdump on {} did not catch up within {CATCH_UP_LIMIT:?}; stopping it anyway",
            self.iface
        );
    }
}

/// The number tcpdump reports before `what` ("captured", "received by filter", "dropped by
/// kernel") in one of its statistics lines: the exit report ("12 packets captured", one per
/// line) or a SIGUSR1 one ("tcpdump: 12 packets captured, 14 packets received by filter, 0
/// packets dropped by kernel").
fn tcpdump_count(line: &str, what: &str) -> Option<u64> {
    line.split(',').find_map(|part| {
        let part = part.trim();
        let part = part.strip_prefix("tcpdump:").unwrap_or(part).trim_start();
        let (n, rest) = part.split_once(' ')?;
        let rest = rest
            .strip_prefix("packets ")
            .or(rest.strip_prefix("packet "))?;
        (rest == what).then(|| n.parse().ok())?
    })
}

impl Drop for Capture {
    fn drop(&mut self) {
        let _ = self.child.stop_with(Signal::SIGINT, Duration::from_secs(2));
        if std::env::var_os(KEEP_PCAP_ENV).is_some() {
            eprintln!("harness: kept {}", self.path.display());
        } else {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}
