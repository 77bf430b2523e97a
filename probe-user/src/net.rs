//! UDP sockets for probes: software RX/TX timestamps (SO_TIMESTAMPING), the received TTL and
//! destination address (IP_PKTINFO / IPV6_RECVPKTINFO), read from control messages; batched
//! receive and send (recvmmsg/sendmmsg), optionally from a chosen local address; interface
//! discovery.
use std::{
    collections::BTreeSet,
    io::{self, IoSlice, IoSliceMut},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket},
    os::fd::{AsFd as _, AsRawFd as _},
    sync::atomic::{AtomicBool, Ordering},
};

use nix::{
    cmsg_space,
    errno::Errno,
    sys::{
        socket::{
            ControlMessage, ControlMessageOwned, MsgFlags, MultiHeaders, RecvMsg,
            SockaddrLike as _, SockaddrStorage, TimestampingFlag, recvmmsg, recvmsg, sendmmsg,
            setsockopt, sockopt,
        },
        time::TimeSpec,
    },
};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::{Interest, unix::AsyncFd};

/// One received datagram and what the kernel told us about it.
#[derive(Debug, Clone, Copy)]
pub struct Received {
    pub len: usize,
    pub from: SocketAddr,
    /// Kernel software RX stamp, CLOCK_REALTIME ns.
    pub rx_sw_realtime_ns: Option<u64>,
    /// The NIC's raw hardware RX stamp (its own clock), when the socket asked for hardware
    /// stamps (`SockStamps::hw`) and the NIC gave one.
    pub rx_hw_ns: Option<u64>,
    /// IPv4 TTL or IPv6 hop limit of the packet.
    pub ttl: Option<u8>,
    /// Destination address of the IP header (IP_PKTINFO / IPV6_PKTINFO), IPv4-mapped ones
    /// as IPv4.
    pub dst: Option<IpAddr>,
    /// IPv4 only: the local address the kernel would answer from (`ipi_spec_dst`). For a
    /// unicast packet to a local address it equals `dst`; for a broadcast or multicast one it
    /// is the receiving interface's address.
    pub spec_dst: Option<Ipv4Addr>,
    /// Interface the datagram arrived on.
    pub ifindex: Option<u32>,
}

impl Received {
    /// The address this datagram was sent to, as the source of an answer: a reply leaves from
    /// exactly the address the request reached (multi-homed hosts). `None` when the kernel
    /// did not say.
    pub fn reply_source(&self) -> Option<Source> {
        let addr = self.dst?;
        // An IPv6 link-local address names a local address only with its interface.
        let ifindex = match addr {
            IpAddr::V6(v6) if v6.is_unicast_link_local() => self.ifindex.unwrap_or(0),
            _ => 0,
        };
        Some(Source { addr, ifindex })
    }
}

/// A local address to send from (IP_PKTINFO `ipi_spec_dst` / IPV6_PKTINFO), and for an IPv6
/// link-local one its interface (0: any).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Source {
    pub addr: IpAddr,
    pub ifindex: u32,
}

/// Which software timestamps a probe socket asks the kernel to take.
#[derive(Debug, Clone, Copy, Default)]
pub struct SockStamps {
    /// TX software stamps (socket mode's T1), read back with `drain_tx_stamps`.
    pub tx: bool,
    /// RX software stamps. Asking for them turns on the kernel's host-wide `netstamp_needed`
    /// switch: every packet the host receives, in every namespace, then pays a clock read.
    /// Kernel mode asks for them by default (the ingress program reads the stamp from the
    /// skb, see `Stamping::sock_stamps`); with `--no-sw-rx-stamps` it asks only to be told of
    /// stamps that exist and turns them on with `ensure_rx_stamps` when a packet arrives
    /// without its in-band stamp.
    pub rx: bool,
    /// NIC hardware TX stamps (`--hw-tx-stamps`), read back with `drain_tx_stamps`, raw (the
    /// NIC's clock). The NIC must have hardware timestamping turned on (ptp4l or
    /// `hwstamp_ctl` do; see [`hw_timestamping`]); without it none are reported.
    pub hw_tx: bool,
    /// NIC hardware RX stamps reported with each datagram (`Received::rx_hw_ns`), raw.
    pub hw_rx: bool,
}

/// The stamps of one SO_TIMESTAMPING control message: software (CLOCK_REALTIME ns) and the
/// NIC's raw hardware stamp (ns of its clock); either may be absent (0 in the message).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StampPair {
    pub sw: Option<u64>,
    pub hw: Option<u64>,
}

impl StampPair {
    fn of(t: &nix::sys::socket::Timestamps) -> Self {
        Self {
            sw: ts_ns(&t.system),
            hw: ts_ns(&t.hw_raw),
        }
    }
}

pub struct ProbeSocket {
    io: AsyncFd<UdpSocket>,
    /// The stamps asked for at bind; `rx` may be turned on later (`rx_stamps`).
    stamps: SockStamps,
    rx_stamps: AtomicBool,
}

/// Datagrams one `recv_batch` call reads at most.
pub const BATCH: usize = 32;

/// Reusable buffers for `ProbeSocket::recv_batch`: `BATCH` datagrams of up to `len` octets.
pub struct RecvBatch {
    bufs: Vec<Vec<u8>>,
    /// One entry per datagram read, aligned with `bufs`; `None` for one without a source
    /// address (it cannot be answered or matched).
    got: Vec<Option<Received>>,
}

impl RecvBatch {
    pub fn new(len: usize) -> Self {
        Self {
            bufs: vec![vec![0u8; len]; BATCH],
            got: Vec::with_capacity(BATCH),
        }
    }

    /// The datagrams of the last call, with their payloads.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], Received)> {
        self.got
            .iter()
            .zip(&self.bufs)
            .filter_map(|(r, b)| r.map(|r| (&b[..r.len.min(b.len())], r)))
    }

    pub fn len(&self) -> usize {
        self.got.len()
    }

    pub fn is_empty(&self) -> bool {
        self.got.is_empty()
    }
}

fn ts_ns(ts: &TimeSpec) -> Option<u64> {
    let ns = ts.tv_sec() as i128 * 1_000_000_000 + ts.tv_nsec() as i128;
    (ns > 0).then_some(ns as u64)
}

/// Maps an IPv4-mapped IPv6 address back to IPv4.
pub fn canonical(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), v6.port()),
            None => addr,
        },
        v4 => v4,
    }
}

impl std::os::fd::AsRawFd for ProbeSocket {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.io.get_ref().as_raw_fd()
    }
}

impl ProbeSocket {
    /// Binds a UDP socket with TTL reporting and the software timestamps of `stamps`; stamps
    /// the kernel took anyway are always reported. Binding `::` accepts IPv4 as well (dual
    /// stack).
    pub fn bind(addr: SocketAddr, stamps: SockStamps) -> io::Result<Self> {
        let domain = if addr.is_ipv6() {
            Domain::IPV6
        } else {
            Domain::IPV4
        };
        let s = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))?;
        if addr.is_ipv6() {
            s.set_only_v6(false)?;
        }
        s.set_nonblocking(true)?;
        // Probes must not wait behind a small default buffer at high rates.
        let _ = s.set_recv_buffer_size(4 << 20);
        s.bind(&addr.into())?;
        setsockopt(&s, sockopt::Timestamping, &stamp_flags(stamps)).map_err(io::Error::from)?;
        // TTL of IPv4 packets (also IPv4-mapped ones on a dual-stack socket), hop limit of IPv6.
        let _ = setsockopt(&s, sockopt::Ipv4RecvTtl, &true);
        if addr.is_ipv6() {
            let _ = setsockopt(&s, sockopt::Ipv6RecvHopLimit, &true);
        }
        // Destination address of each datagram (the reflector answers only unicast requests to
        // a local address, from that address). A dual-stack socket reports IP_PKTINFO for its
        // IPv4 datagrams too, which carries `ipi_spec_dst`.
        setsockopt(&s, sockopt::Ipv4PacketInfo, &true).map_err(io::Error::from)?;
        if addr.is_ipv6() {
            setsockopt(&s, sockopt::Ipv6RecvPacketInfo, &true).map_err(io::Error::from)?;
        }
        let udp: UdpSocket = s.into();
        Ok(Self {
            // SAFETY: the AsyncFd owns the socket, so the fd stays valid while registered.
            io: unsafe { AsyncFd::register_with_interest(udp, Interest::READABLE) }
                .map_err(|e| io::Error::other(e.to_string()))?,
            stamps,
            rx_stamps: AtomicBool::new(stamps.rx),
        })
    }

    /// Turns RX software stamps on (once): for packets that reach the socket without the TC
    /// program's in-band stamp. Returns true when this call turned them on.
    pub fn ensure_rx_stamps(&self) -> bool {
        if self.rx_stamps.swap(true, Ordering::Relaxed) {
            return false;
        }
        let flags = stamp_flags(SockStamps {
            rx: true,
            ..self.stamps
        });
        if let Err(e) = setsockopt(self.io.get_ref(), sockopt::Timestamping, &flags) {
            tracing::warn!("turning on RX software timestamps: {e}");
        }
        true
    }

    pub fn rx_stamps(&self) -> bool {
        self.rx_stamps.load(Ordering::Relaxed)
    }

    /// A socket connected to `peer`, on an ephemeral port of the matching family.
    pub fn connect(peer: SocketAddr, stamps: SockStamps) -> io::Result<Self> {
        let local = match peer {
            SocketAddr::V4(_) => SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0),
            SocketAddr::V6(_) => SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0),
        };
        let s = Self::bind(local, stamps)?;
        s.io.get_ref().connect(peer)?;
        Ok(s)
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.io.get_ref().local_addr()
    }

    pub async fn send_to(&self, buf: &[u8], to: SocketAddr) -> io::Result<usize> {
        loop {
            match self.io.get_ref().send_to(buf, to) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    // UDP send buffers rarely fill; yield and retry rather than spin.
                    tokio::task::yield_now().await;
                }
                r => return r,
            }
        }
    }

    pub async fn send(&self, buf: &[u8]) -> io::Result<usize> {
        loop {
            match self.io.get_ref().send(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => tokio::task::yield_now().await,
                r => return r,
            }
        }
    }

    /// Receives one datagram with its control messages.
    pub async fn recv(&self, buf: &mut [u8]) -> io::Result<Received> {
        loop {
            let mut guard = self.io.readable().await?;
            match guard.try_io(|inner| recv_one(inner.get_ref().as_raw_fd(), buf)) {
                Ok(r) => return r,
                Err(_would_block) => continue,
            }
        }
    }

    /// Receives up to `BATCH` datagrams with one system call (waiting for the first).
    pub async fn recv_batch(&self, batch: &mut RecvBatch) -> io::Result<usize> {
        loop {
            let mut guard = self.io.readable().await?;
            match guard.try_io(|inner| recv_many(inner.get_ref().as_raw_fd(), batch)) {
                Ok(Ok(n)) => {
                    if n < BATCH {
                        // Fewer than asked for: the queue is empty, so the next call would
                        // only meet EAGAIN. (Readiness that arrived since is kept by tokio.)
                        guard.clear_ready();
                    }
                    return Ok(n);
                }
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
    }

    /// Sends `msgs` with as few system calls as the kernel allows (sendmmsg). A datagram the
    /// kernel refuses (no route, unreachable) is reported to `on_error` with its index and
    /// the rest are still sent.
    pub async fn send_batch(
        &self,
        msgs: &[(&[u8], SocketAddr)],
        on_error: impl FnMut(usize, io::Error),
    ) {
        let msgs: Vec<(&[u8], SocketAddr, Option<Source>)> =
            msgs.iter().map(|&(b, to)| (b, to, None)).collect();
        self.send_batch_from(&msgs, on_error).await
    }

    /// Like [`ProbeSocket::send_batch`], each datagram from its own local address (`None`:
    /// the kernel picks). Consecutive datagrams from the same address share a system call.
    pub async fn send_batch_from(
        &self,
        msgs: &[(&[u8], SocketAddr, Option<Source>)],
        mut on_error: impl FnMut(usize, io::Error),
    ) {
        let fd = self.io.get_ref().as_raw_fd();
        let mut start = 0;
        while start < msgs.len() {
            let from = msgs[start].2;
            let run = msgs[start..]
                .iter()
                .take(BATCH)
                .take_while(|m| m.2 == from)
                .count();
            match send_many(fd, &msgs[start..start + run], from) {
                Ok(0) => tokio::task::yield_now().await,
                Ok(n) => start += n,
                // UDP send buffers rarely fill; yield and retry rather than spin.
                Err(Errno::EAGAIN) => tokio::task::yield_now().await,
                Err(Errno::EINTR) => {}
                // The first datagram of the chunk was refused: report it, go on.
                Err(e) => {
                    on_error(start, io::Error::from(e));
                    start += 1;
                }
            }
        }
    }

    /// Reads every pending TX stamp from the error queue: (OPT_ID key, its stamps). The
    /// software and the hardware stamp of one datagram come as two messages with one key;
    /// they are merged here.
    pub fn drain_tx_stamps(&self) -> Vec<(u32, StampPair)> {
        let mut out = Vec::new();
        if !self.stamps.tx && !self.stamps.hw_tx {
            return out;
        }
        let fd = self.io.get_ref().as_fd().as_raw_fd();
        for _ in 0..1024 {
            let mut data = [0u8; 64];
            let mut iov = [IoSliceMut::new(&mut data)];
            let mut cmsg = cmsg_space!(
                nix::sys::socket::Timestamps,
                libc::sock_extended_err,
                libc::sockaddr_in6
            );
            let Ok(msg) = recvmsg::<SockaddrStorage>(
                fd,
                &mut iov,
                Some(&mut cmsg),
                MsgFlags::MSG_ERRQUEUE | MsgFlags::MSG_DONTWAIT,
            ) else {
                break;
            };
            let mut stamp = None;
            let mut key = None;
            if let Ok(cmsgs) = msg.cmsgs() {
                for c in cmsgs {
                    match c {
                        ControlMessageOwned::ScmTimestampsns(t) => stamp = Some(StampPair::of(&t)),
                        ControlMessageOwned::Ipv4RecvErr(e, _)
                        | ControlMessageOwned::Ipv6RecvErr(e, _)
                            if e.ee_origin == libc::SO_EE_ORIGIN_TIMESTAMPING =>
                        {
                            key = Some(e.ee_data);
                        }
                        _ => {}
                    }
                }
            }
            if let (Some(k), Some(t)) = (key, stamp) {
                merge_tx_stamp(&mut out, k, t);
            }
        }
        out
    }
}

/// Adds the stamps of `key` to `out`, into the entry the other kind of stamp of the same
/// datagram already made (the kernel reports software and hardware TX stamps separately).
fn merge_tx_stamp(out: &mut Vec<(u32, StampPair)>, key: u32, t: StampPair) {
    // The two reports of one datagram are close together: look back a few entries only.
    if let Some((_, p)) = out.iter_mut().rev().take(8).find(|(k, _)| *k == key) {
        p.sw = p.sw.or(t.sw);
        p.hw = p.hw.or(t.hw);
    } else {
        out.push((key, t));
    }
}

fn stamp_flags(stamps: SockStamps) -> TimestampingFlag {
    // SOFTWARE alone only reports stamps; RX_SOFTWARE/TX_SOFTWARE make the kernel take them.
    let mut flags = TimestampingFlag::SOF_TIMESTAMPING_SOFTWARE;
    if stamps.rx {
        flags |= TimestampingFlag::SOF_TIMESTAMPING_RX_SOFTWARE;
    }
    if stamps.tx {
        flags |= TimestampingFlag::SOF_TIMESTAMPING_TX_SOFTWARE;
    }
    // RAW_HARDWARE reports hardware stamps; TX/RX_HARDWARE ask the driver to take them (the
    // NIC must also have them turned on: SIOCSHWTSTAMP, see `hw_timestamping`).
    if stamps.hw_tx {
        flags |= TimestampingFlag::SOF_TIMESTAMPING_TX_HARDWARE
            | TimestampingFlag::SOF_TIMESTAMPING_RAW_HARDWARE;
    }
    if stamps.hw_rx {
        flags |= TimestampingFlag::SOF_TIMESTAMPING_RX_HARDWARE
            | TimestampingFlag::SOF_TIMESTAMPING_RAW_HARDWARE;
    }
    if stamps.tx || stamps.hw_tx {
        // A key per datagram sent, and no copy of the packet on the error queue.
        flags |= TimestampingFlag::SOF_TIMESTAMPING_OPT_ID
            | TimestampingFlag::SOF_TIMESTAMPING_OPT_TSONLY;
    }
    flags
}

/// The NIC's hardware timestamping setting (SIOCGHWTSTAMP), as ptp4l or `hwstamp_ctl` left it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HwTimestamping {
    /// TX stamps on (`HWTSTAMP_TX_ON` or a one-step mode).
    pub tx: bool,
    /// RX stamps for our probes (a filter that takes every packet: `HWTSTAMP_FILTER_ALL`;
    /// PTP-only filters do not stamp STAMP packets).
    pub rx: bool,
}

impl HwTimestamping {
    /// From `hwtstamp_config.tx_type` and `rx_filter` (linux/net_tstamp.h).
    pub fn from_config(tx_type: libc::c_int, rx_filter: libc::c_int) -> Self {
        const HWTSTAMP_TX_OFF: libc::c_int = 0;
        const HWTSTAMP_FILTER_ALL: libc::c_int = 1;
        Self {
            tx: tx_type != HWTSTAMP_TX_OFF,
            rx: rx_filter == HWTSTAMP_FILTER_ALL,
        }
    }
}

/// Reads `iface`'s hardware timestamping setting. An interface without hardware stamps
/// (veth, most virtual NICs) answers EOPNOTSUPP or EINVAL: an error, said as it is.
pub fn hw_timestamping(iface: &str) -> io::Result<HwTimestamping> {
    let mut cfg = libc::hwtstamp_config {
        flags: 0,
        tx_type: 0,
        rx_filter: 0,
    };
    // SAFETY: an all-zero ifreq is valid; the name fits (checked) and stays NUL-terminated.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    let name = iface.as_bytes();
    if name.is_empty() || name.len() >= req.ifr_name.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("interface name {iface:?}"),
        ));
    }
    for (d, s) in req.ifr_name.iter_mut().zip(name) {
        *d = *s as libc::c_char;
    }
    req.ifr_ifru.ifru_data = (&mut cfg as *mut libc::hwtstamp_config).cast();
    let sock = Socket::new(Domain::IPV4, Type::DGRAM, None)?;
    // SAFETY: SIOCGHWTSTAMP reads the name and writes a hwtstamp_config through ifru_data,
    // which points at `cfg`, alive for the call.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGHWTSTAMP as _, &mut req) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(HwTimestamping::from_config(cfg.tx_type, cfg.rx_filter))
}

/// One sendmmsg call: how many of `chunk` the kernel took. Every datagram of the chunk leaves
/// from `from` (one control message shared by all, as sendmmsg takes it).
fn send_many(
    fd: std::os::fd::RawFd,
    chunk: &[(&[u8], SocketAddr, Option<Source>)],
    from: Option<Source>,
) -> Result<usize, Errno> {
    let iovs: Vec<[IoSlice<'_>; 1]> = chunk.iter().map(|(b, ..)| [IoSlice::new(b)]).collect();
    let addrs: Vec<Option<SockaddrStorage>> = chunk
        .iter()
        .map(|(_, a, _)| Some(SockaddrStorage::from(*a)))
        .collect();
    // The headers' control length is their buffer's capacity: sized for exactly the one
    // message sent, since the kernel rejects a trailing empty control header.
    let (v4, v6);
    let (cmsgs, space) = match from {
        None => (Vec::new(), None),
        Some(Source {
            addr: IpAddr::V4(a),
            ifindex,
        }) => {
            v4 = libc::in_pktinfo {
                ipi_ifindex: ifindex as libc::c_int,
                ipi_spec_dst: libc::in_addr {
                    s_addr: u32::from(a).to_be(),
                },
                ipi_addr: libc::in_addr { s_addr: 0 },
            };
            (
                vec![ControlMessage::Ipv4PacketInfo(&v4)],
                Some(cmsg_space!(libc::in_pktinfo)),
            )
        }
        Some(Source {
            addr: IpAddr::V6(a),
            ifindex,
        }) => {
            v6 = libc::in6_pktinfo {
                ipi6_addr: libc::in6_addr {
                    s6_addr: a.octets(),
                },
                ipi6_ifindex: ifindex,
            };
            (
                vec![ControlMessage::Ipv6PacketInfo(&v6)],
                Some(cmsg_space!(libc::in6_pktinfo)),
            )
        }
    };
    let mut hdrs = MultiHeaders::<SockaddrStorage>::preallocate(chunk.len(), space);
    let sent = sendmmsg(fd, &mut hdrs, &iovs, &addrs, &cmsgs, MsgFlags::MSG_DONTWAIT)?;
    Ok(sent.count())
}

fn recv_many(fd: std::os::fd::RawFd, batch: &mut RecvBatch) -> io::Result<usize> {
    batch.got.clear();
    // Fresh headers for every call: the kernel writes each message's used control length
    // back into its header, and nix does not restore it, so reused headers would truncate
    // a later message's timestamp (MSG_CTRUNC) after a message that carried only its TTL.
    let cmsg = recv_cmsg_space();
    let mut hdrs = MultiHeaders::<SockaddrStorage>::preallocate(BATCH, Some(cmsg));
    let mut iovs: Vec<[IoSliceMut<'_>; 1]> = batch
        .bufs
        .iter_mut()
        .map(|b| [IoSliceMut::new(b)])
        .collect();
    let res = recvmmsg(fd, &mut hdrs, iovs.iter_mut(), MsgFlags::MSG_DONTWAIT, None)
        .map_err(io::Error::from)?;
    for msg in res {
        batch.got.push(parse_received(&msg));
    }
    if batch.got.is_empty() {
        return Err(io::ErrorKind::WouldBlock.into());
    }
    Ok(batch.got.len())
}

/// Room for every control message a probe socket asks for: stamps, TTL/hop limit, and both
/// packet-info kinds (a dual-stack socket gets both for an IPv4 datagram).
fn recv_cmsg_space() -> Vec<u8> {
    cmsg_space!(
        nix::sys::socket::Timestamps,
        libc::c_int,
        libc::c_int,
        libc::in_pktinfo,
        libc::in6_pktinfo
    )
}

/// Source and destination address, stamps and TTL of one received datagram.
fn parse_received(msg: &RecvMsg<'_, '_, SockaddrStorage>) -> Option<Received> {
    let from = msg.address.and_then(|a| {
        a.as_sockaddr_in()
            .map(|v4| SocketAddr::from(std::net::SocketAddrV4::from(*v4)))
            .or_else(|| {
                a.as_sockaddr_in6()
                    .map(|v6| SocketAddr::from(std::net::SocketAddrV6::from(*v6)))
            })
    })?;
    let mut rx = StampPair::default();
    let mut ttl = None;
    let (mut dst, mut spec_dst, mut ifindex) = (None, None, None);
    let mut dst4 = None;
    if let Ok(cmsgs) = msg.cmsgs() {
        for c in cmsgs {
            match c {
                ControlMessageOwned::ScmTimestampsns(t) => rx = StampPair::of(&t),
                ControlMessageOwned::Ipv4Ttl(t) => ttl = u8::try_from(t).ok(),
                ControlMessageOwned::Ipv6HopLimit(h) => ttl = u8::try_from(h).ok(),
                ControlMessageOwned::Ipv4PacketInfo(i) => {
                    dst4 = Some(Ipv4Addr::from(u32::from_be(i.ipi_addr.s_addr)));
                    spec_dst = Some(Ipv4Addr::from(u32::from_be(i.ipi_spec_dst.s_addr)));
                    ifindex = u32::try_from(i.ipi_ifindex).ok();
                }
                ControlMessageOwned::Ipv6PacketInfo(i) => {
                    let a = Ipv6Addr::from(i.ipi6_addr.s6_addr);
                    dst = Some(a.to_ipv4_mapped().map_or(IpAddr::V6(a), IpAddr::V4));
                    ifindex = ifindex.or(Some(i.ipi6_ifindex));
                }
                _ => {}
            }
        }
    }
    // IP_PKTINFO is the more precise of the two for an IPv4 datagram.
    if let Some(d) = dst4 {
        dst = Some(IpAddr::V4(d));
    }
    Some(Received {
        len: msg.bytes,
        from: canonical(from),
        rx_sw_realtime_ns: rx.sw,
        rx_hw_ns: rx.hw,
        ttl,
        dst,
        spec_dst,
        ifindex,
    })
}

fn recv_one(fd: std::os::fd::RawFd, buf: &mut [u8]) -> io::Result<Received> {
    let mut iov = [IoSliceMut::new(buf)];
    let mut cmsg = recv_cmsg_space();
    let msg = recvmsg::<SockaddrStorage>(fd, &mut iov, Some(&mut cmsg), MsgFlags::MSG_DONTWAIT)
        .map_err(io::Error::from)?;
    parse_received(&msg).ok_or_else(|| io::Error::other("datagram without a source address"))
}

/// ARPHRD_* of an interface (`/sys/class/net/IF/type`).
pub fn link_type(iface: &str) -> Option<u16> {
    std::fs::read_to_string(format!("/sys/class/net/{iface}/type"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Whether TC programs see an Ethernet header on this interface, as the stamping programs
/// expect: Ethernet (ARPHRD_ETHER = 1) and loopback (ARPHRD_LOOPBACK = 772).
pub fn has_ethernet_header(iface: &str) -> bool {
    matches!(link_type(iface), Some(1 | 772))
}

/// This host's IP addresses with their prefix lengths, on every interface.
pub fn local_addresses() -> io::Result<Vec<(IpAddr, u8)>> {
    let mut out = Vec::new();
    for ifa in nix::ifaddrs::getifaddrs().map_err(io::Error::from)? {
        let (Some(a), Some(m)) = (ifa.address, ifa.netmask) else {
            continue;
        };
        if let (Some(a), Some(m)) = (a.as_sockaddr_in(), m.as_sockaddr_in()) {
            out.push((IpAddr::V4(a.ip()), u32::from(m.ip()).count_ones() as u8));
        } else if let (Some(a), Some(m)) = (a.as_sockaddr_in6(), m.as_sockaddr_in6()) {
            out.push((IpAddr::V6(a.ip()), u128::from(m.ip()).count_ones() as u8));
        }
    }
    Ok(out)
}

/// Interfaces that are up, have an address, and carry an Ethernet header (loopback included).
/// Others (WireGuard, tun, ipip: no link-layer header) are left out with a warning.
pub fn up_interfaces() -> io::Result<Vec<String>> {
    let mut set = BTreeSet::new();
    for ifa in nix::ifaddrs::getifaddrs().map_err(io::Error::from)? {
        let up = ifa.flags.contains(nix::net::if_::InterfaceFlags::IFF_UP);
        if up
            && ifa.address.is_some_and(|a| {
                a.family().is_some_and(|f| {
                    matches!(
                        f,
                        nix::sys::socket::AddressFamily::Inet
                            | nix::sys::socket::AddressFamily::Inet6
                    )
                })
            })
        {
            set.insert(ifa.interface_name);
        }
    }
    Ok(set
        .into_iter()
        .filter(|i| {
            let ok = has_ethernet_header(i);
            if !ok {
                tracing::warn!(
                    "{i}: no Ethernet header (link type {:?}); not stamped there",
                    link_type(i)
                );
            }
            ok
        })
        .collect())
}

/// The interface the kernel would use to reach `peer` (by the source address it picks).
pub fn route_interface(peer: SocketAddr) -> io::Result<String> {
    let probe = match peer {
        SocketAddr::V4(_) => UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?,
        SocketAddr::V6(_) => UdpSocket::bind((Ipv6Addr::UNSPECIFIED, 0))?,
    };
    probe.connect(peer)?;
    let local = probe.local_addr()?.ip();
    if local.is_loopback() {
        return Ok("lo".into());
    }
    for ifa in nix::ifaddrs::getifaddrs().map_err(io::Error::from)? {
        let Some(a) = ifa.address else { continue };
        let ip = a
            .as_sockaddr_in()
            .map(|s| IpAddr::V4(s.ip()))
            .or_else(|| a.as_sockaddr_in6().map(|s| IpAddr::V6(s.ip())));
        if ip == Some(local) {
            // Traffic to one of our own addresses goes over loopback.
            if ip == Some(peer.ip()) {
                return Ok("lo".into());
            }
            return Ok(ifa.interface_name);
        }
    }
    Err(io::Error::new(
        io::ErrorKind::NotFound,
        format!("no interface holds {local}, the source address for {peer}"),
    ))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn local() -> SocketAddr {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0)
    }

    #[tokio::test]
    async fn batches_arrive_whole_and_in_order_and_a_refused_datagram_does_not_stop_the_rest() {
        let stamps = SockStamps::default();
        let a = ProbeSocket::bind(local(), stamps).unwrap();
        let b = ProbeSocket::bind(local(), stamps).unwrap();
        let to = b.local_addr().unwrap();
        let payloads: Vec<Vec<u8>> = (0..40u8).map(|i| vec![i; 44 + usize::from(i)]).collect();
        // An IPv6 destination on an IPv4 socket is refused by the kernel (EAFNOSUPPORT).
        let bad = SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), to.port());
        let mut msgs: Vec<(&[u8], SocketAddr)> = payloads.iter().map(|p| (&p[..], to)).collect();
        msgs.insert(3, (&payloads[0][..], bad));
        let mut refused = Vec::new();
        a.send_batch(&msgs, |i, _| refused.push(i)).await;
        assert_eq!(refused, vec![3]);
        let mut batch = RecvBatch::new(2048);
        let mut got = Vec::new();
        while got.len() < payloads.len() {
            let n = tokio::time::timeout(Duration::from_secs(5), b.recv_batch(&mut batch))
                .await
                .expect("datagrams arrive")
                .unwrap();
            assert!(n <= BATCH);
            assert_eq!(n, batch.len());
            for (p, rx) in batch.iter() {
                assert_eq!(rx.from, a.local_addr().unwrap());
                assert_eq!(rx.len, p.len());
                assert!(rx.ttl.is_some());
                got.push(p.to_vec());
            }
        }
        assert_eq!(got, payloads);
    }

    #[tokio::test]
    async fn the_destination_is_reported_and_a_reply_leaves_from_it() {
        // Two local addresses (127.0.0.0/8 is all local) and IPv6 on one dual-stack socket.
        let stamps = SockStamps::default();
        let server = ProbeSocket::bind("[::]:0".parse().unwrap(), stamps).unwrap();
        let port = server.local_addr().unwrap().port();
        let mut batch = RecvBatch::new(2048);
        for (client, dst) in [
            ("127.0.0.1:0", "127.0.0.1"),
            ("127.0.0.1:0", "127.0.0.2"),
            ("[::1]:0", "::1"),
        ] {
            let c = ProbeSocket::bind(client.parse().unwrap(), stamps).unwrap();
            let dst: IpAddr = dst.parse().unwrap();
            c.send_to(&[1u8; 44], SocketAddr::new(dst, port))
                .await
                .unwrap();
            tokio::time::timeout(Duration::from_secs(5), server.recv_batch(&mut batch))
                .await
                .expect("request arrives")
                .unwrap();
            let (_, rx) = batch.iter().next().unwrap();
            assert_eq!(rx.dst, Some(dst));
            assert!(rx.ifindex.is_some());
            if let IpAddr::V4(d) = dst {
                assert_eq!(rx.spec_dst, Some(d), "unicast: spec_dst is the destination");
            }
            let src = rx.reply_source();
            server
                .send_batch_from(&[(&[2u8; 44][..], rx.from, src)], |_, e| panic!("{e}"))
                .await;
            let mut buf = [0u8; 64];
            let got = tokio::time::timeout(Duration::from_secs(5), c.recv(&mut buf))
                .await
                .expect("reply arrives")
                .unwrap();
            assert_eq!(got.from, SocketAddr::new(dst, port), "reply from {dst}");
        }
    }

    #[tokio::test]
    async fn rx_stamps_are_reported_once_turned_on_in_every_batch() {
        let a = ProbeSocket::bind(local(), SockStamps::default()).unwrap();
        let b = ProbeSocket::bind(local(), SockStamps::default()).unwrap();
        assert!(!b.rx_stamps());
        assert!(b.ensure_rx_stamps());
        assert!(!b.ensure_rx_stamps(), "only the first call turns them on");
        let to = b.local_addr().unwrap();
        let mut batch = RecvBatch::new(2048);
        // The kernel turns its stamping switch on from a work item: allow it a moment, then
        // every datagram of every later batch must carry its stamp.
        let mut stamped_rounds = 0;
        let mut stamp = None;
        for _ in 0..200 {
            a.send_batch(&[(&[7u8; 44][..], to), (&[8u8; 60][..], to)], |_, e| {
                panic!("{e}")
            })
            .await;
            let mut seen = 0;
            while seen < 2 {
                tokio::time::timeout(Duration::from_secs(5), b.recv_batch(&mut batch))
                    .await
                    .expect("datagrams arrive")
                    .unwrap();
                for (_, rx) in batch.iter() {
                    seen += 1;
                    match (rx.rx_sw_realtime_ns, stamped_rounds) {
                        (Some(t), _) => stamp = Some(t),
                        (None, 0) => {}
                        (None, _) => panic!("a datagram after stamping began has no stamp"),
                    }
                }
            }
            if stamp.is_some() {
                stamped_rounds += 1;
                if stamped_rounds == 20 {
                    break;
                }
            } else {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        assert_eq!(stamped_rounds, 20, "stamps never began");
        let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_REALTIME).unwrap();
        let now = ts_ns(&now).unwrap();
        let stamp = stamp.unwrap();
        assert!(
            stamp <= now && now - stamp < 5_000_000_000,
            "{stamp} vs {now}"
        );
    }

    #[test]
    fn software_and_hardware_reports_of_one_datagram_merge_into_one_entry() {
        let mut out = Vec::new();
        let sw = |t| StampPair {
            sw: Some(t),
            hw: None,
        };
        let hw = |t| StampPair {
            sw: None,
            hw: Some(t),
        };
        merge_tx_stamp(&mut out, 7, sw(100));
        merge_tx_stamp(&mut out, 8, sw(200));
        merge_tx_stamp(&mut out, 7, hw(150));
        merge_tx_stamp(&mut out, 9, hw(350));
        assert_eq!(
            out,
            vec![
                (
                    7,
                    StampPair {
                        sw: Some(100),
                        hw: Some(150)
                    }
                ),
                (8, sw(200)),
                (9, hw(350)),
            ]
        );
        // A second report of a kind already known keeps the first.
        merge_tx_stamp(&mut out, 8, sw(999));
        assert_eq!(out[1], (8, sw(200)));
    }

    #[test]
    fn hardware_stamps_are_asked_for_only_where_configured() {
        use TimestampingFlag as F;
        let f = stamp_flags(SockStamps::default());
        assert_eq!(f, F::SOF_TIMESTAMPING_SOFTWARE);
        let f = stamp_flags(SockStamps {
            hw_tx: true,
            ..Default::default()
        });
        assert!(f.contains(F::SOF_TIMESTAMPING_TX_HARDWARE | F::SOF_TIMESTAMPING_RAW_HARDWARE));
        assert!(f.contains(F::SOF_TIMESTAMPING_OPT_ID | F::SOF_TIMESTAMPING_OPT_TSONLY));
        assert!(!f.contains(F::SOF_TIMESTAMPING_TX_SOFTWARE));
        assert!(!f.contains(F::SOF_TIMESTAMPING_RX_HARDWARE));
        let f = stamp_flags(SockStamps {
            hw_rx: true,
            rx: true,
            ..Default::default()
        });
        assert!(f.contains(F::SOF_TIMESTAMPING_RX_HARDWARE | F::SOF_TIMESTAMPING_RAW_HARDWARE));
        assert!(!f.contains(F::SOF_TIMESTAMPING_OPT_ID));
    }

    #[test]
    fn the_nic_setting_reads_as_tx_and_rx() {
        // linux/net_tstamp.h: HWTSTAMP_TX_OFF 0, _ON 1, _ONESTEP_SYNC 2; HWTSTAMP_FILTER_NONE
        // 0, _ALL 1, PTP_V2_EVENT 12.
        assert_eq!(
            HwTimestamping::from_config(1, 1),
            HwTimestamping { tx: true, rx: true }
        );
        assert_eq!(
            HwTimestamping::from_config(0, 12),
            HwTimestamping {
                tx: false,
                rx: false
            }
        );
        assert!(HwTimestamping::from_config(2, 0).tx);
    }

    #[test]
    fn an_interface_without_hardware_stamps_says_so() {
        // Loopback has no hardware timestamping: the ioctl fails, it is not read as "off".
        let e = hw_timestamping("lo").expect_err("lo has no hardware stamps");
        assert!(
            matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP | libc::EINVAL)),
            "{e}"
        );
        assert_eq!(
            hw_timestamping("").unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
        assert_eq!(
            hw_timestamping(&"x".repeat(16)).unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
    }

    #[tokio::test]
    async fn a_hardware_stamp_request_on_a_nic_without_them_reports_software_stamps_only() {
        // What a user without such a NIC gets: the socket binds, software stamps still come,
        // no hardware stamp is invented.
        let stamps = SockStamps {
            tx: true,
            rx: true,
            hw_tx: true,
            hw_rx: true,
        };
        let a = ProbeSocket::bind(local(), stamps).unwrap();
        let b = ProbeSocket::bind(local(), stamps).unwrap();
        let to = b.local_addr().unwrap();
        let mut buf = [0u8; 16];
        // The kernel turns host-wide RX stamping on a little after the first socket asks
        // (a deferred static key): send until a datagram comes stamped, a bounded number of
        // times.
        let mut stamped = None;
        for _ in 0..50 {
            a.send_to(b"probe", to).await.unwrap();
            let rx = tokio::time::timeout(Duration::from_secs(5), b.recv(&mut buf))
                .await
                .expect("datagram arrives")
                .unwrap();
            assert_eq!(rx.rx_hw_ns, None, "no NIC here: no hardware stamp");
            if rx.rx_sw_realtime_ns.is_some() {
                stamped = Some(rx);
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(stamped.is_some(), "software RX stamps never began");
        let mut tx = Vec::new();
        for _ in 0..500 {
            tx.extend(a.drain_tx_stamps());
            if tx.iter().any(|(_, p)| p.sw.is_some()) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(tx.iter().any(|(_, p)| p.sw.is_some()), "{tx:?}");
        assert!(tx.iter().all(|(_, p)| p.hw.is_none()), "{tx:?}");
    }
}
