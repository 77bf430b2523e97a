//! UDP sockets for probes: software RX/TX timestamps (SO_TIMESTAMPING) and the received TTL,
//! read from control messages; interface discovery.
use std::{
    collections::BTreeSet,
    io::{self, IoSliceMut},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket},
    os::fd::{AsFd as _, AsRawFd as _},
};

use nix::{
    cmsg_space,
    sys::{
        socket::{
            ControlMessageOwned, MsgFlags, SockaddrLike as _, SockaddrStorage, TimestampingFlag,
            recvmsg, setsockopt, sockopt,
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
    /// IPv4 TTL or IPv6 hop limit of the packet.
    pub ttl: Option<u8>,
}

pub struct ProbeSocket {
    io: AsyncFd<UdpSocket>,
    tx_stamps: bool,
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

impl ProbeSocket {
    /// Binds a UDP socket with RX software timestamps and TTL reporting; with `tx_stamps`, TX
    /// software timestamps too (read back with `drain_tx_stamps`). Binding `::` accepts IPv4
    /// as well (dual stack).
    pub fn bind(addr: SocketAddr, tx_stamps: bool) -> io::Result<Self> {
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
        let mut flags = TimestampingFlag::SOF_TIMESTAMPING_RX_SOFTWARE
            | TimestampingFlag::SOF_TIMESTAMPING_SOFTWARE;
        if tx_stamps {
            flags |= TimestampingFlag::SOF_TIMESTAMPING_TX_SOFTWARE
                | TimestampingFlag::SOF_TIMESTAMPING_OPT_ID
                | TimestampingFlag::SOF_TIMESTAMPING_OPT_TSONLY;
        }
        setsockopt(&s, sockopt::Timestamping, &flags).map_err(io::Error::from)?;
        // TTL of IPv4 packets (also IPv4-mapped ones on a dual-stack socket), hop limit of IPv6.
        let _ = setsockopt(&s, sockopt::Ipv4RecvTtl, &true);
        if addr.is_ipv6() {
            let _ = setsockopt(&s, sockopt::Ipv6RecvHopLimit, &true);
        }
        let udp: UdpSocket = s.into();
        Ok(Self {
            // SAFETY: the AsyncFd owns the socket, so the fd stays valid while registered.
            io: unsafe { AsyncFd::register_with_interest(udp, Interest::READABLE) }
                .map_err(|e| io::Error::other(e.to_string()))?,
            tx_stamps,
        })
    }

    /// A socket connected to `peer`, on an ephemeral port of the matching family.
    pub fn connect(peer: SocketAddr, tx_stamps: bool) -> io::Result<Self> {
        let local = match peer {
            SocketAddr::V4(_) => SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0),
            SocketAddr::V6(_) => SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0),
        };
        let s = Self::bind(local, tx_stamps)?;
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

    /// Reads every pending TX software stamp from the error queue: (OPT_ID key, realtime ns).
    pub fn drain_tx_stamps(&self) -> Vec<(u32, u64)> {
        let mut out = Vec::new();
        if !self.tx_stamps {
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
                        ControlMessageOwned::ScmTimestampsns(t) => stamp = ts_ns(&t.system),
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
                out.push((k, t));
            }
        }
        out
    }
}

fn recv_one(fd: std::os::fd::RawFd, buf: &mut [u8]) -> io::Result<Received> {
    let mut iov = [IoSliceMut::new(buf)];
    let mut cmsg = cmsg_space!(nix::sys::socket::Timestamps, libc::c_int, libc::c_int);
    let msg = recvmsg::<SockaddrStorage>(fd, &mut iov, Some(&mut cmsg), MsgFlags::MSG_DONTWAIT)
        .map_err(io::Error::from)?;
    let len = msg.bytes;
    let from = msg
        .address
        .and_then(|a| {
            a.as_sockaddr_in()
                .map(|v4| SocketAddr::from(std::net::SocketAddrV4::from(*v4)))
                .or_else(|| {
                    a.as_sockaddr_in6()
                        .map(|v6| SocketAddr::from(std::net::SocketAddrV6::from(*v6)))
                })
        })
        .ok_or_else(|| io::Error::other("datagram without a source address"))?;
    let mut rx = None;
    let mut ttl = None;
    if let Ok(cmsgs) = msg.cmsgs() {
        for c in cmsgs {
            match c {
                ControlMessageOwned::ScmTimestampsns(t) => rx = ts_ns(&t.system),
                ControlMessageOwned::Ipv4Ttl(t) => ttl = u8::try_from(t).ok(),
                ControlMessageOwned::Ipv6HopLimit(h) => ttl = u8::try_from(h).ok(),
                _ => {}
            }
        }
    }
    Ok(Received {
        len,
        from: canonical(from),
        rx_sw_realtime_ns: rx,
        ttl,
    })
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
