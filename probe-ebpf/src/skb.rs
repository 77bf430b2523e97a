//! Parsing a `struct sk_buff` from a tracing program (tp_btf), where there is no packet context:
//! every byte is read with `bpf_probe_read_kernel` at an address computed from the skb, and the
//! struct's member offsets come from the running kernel's BTF (`KernelOffsets`, a frozen
//! read-only global of the caller's object: Rust BPF has no CO-RE).
//!
//! Bounds: each read of packet bytes is checked against the linear data of the skb
//! (`data .. data + len - data_len`) right before it is made; a header or payload beyond it is
//! a `Skip::Pull`. The caller matches ports first: everything after the ports is for packets to
//! or from its ports only.
//!
//! The one parser of an skb for every tracing program: the tracepoint reference (src/trace.rs)
//! and the probe's driver hand-off program (src/main.rs). The hand-off's path for every other
//! packet of the host (socket, port, cookie) does not read this way: it loads the members
//! directly through its BTF-typed pointers ([`btf_load`]), as does its GSO check
//! ([`gso_size`]).
use aya_ebpf::helpers::bpf_probe_read_kernel;
use probe_common::KernelOffsets;

use crate::{ETH_P_IP, ETH_P_IPV6, IPPROTO_UDP, IPV6_HLEN, IPV6_MAX_EXT, Skip, UDP_HLEN};

/// A kernel address (a pointer the program must not dereference itself).
pub type KAddr = u64;

/// One `T` at kernel address `addr`; `None` when the read faults.
#[inline(always)]
pub fn read<T: Copy>(addr: KAddr) -> Option<T> {
    // SAFETY: bpf_probe_read_kernel copies into our stack value and reports a faulting read.
    unsafe { bpf_probe_read_kernel(addr as *const T) }.ok()
}

/// One `T` at `base + off` (an skb or device member at a BTF offset).
#[inline(always)]
pub fn member<T: Copy>(base: KAddr, off: u16) -> Option<T> {
    read(base + off as u64)
}

/// One offset of a frozen `KernelOffsets` global (`&GLOBAL.field`), read so that the compiler
/// keeps the load the verifier resolves (a plain read of a `static` would be folded to its
/// built-in zero). A value the verifier knows, as [`btf_load`] needs.
#[inline(always)]
pub fn off(field: &u16) -> u16 {
    // SAFETY: a reference to a u16.
    unsafe { core::ptr::read_volatile(field) }
}

/// BTF-typed direct load of the member at `off` of the kernel struct at `base` (a pointer the
/// verifier tracks by type: a tracepoint argument, or a pointer member loaded this way): one
/// instruction, no helper call. `off` must be a value the verifier knows ([`off`]). A fault
/// reads 0.
///
/// # Safety
/// `base` is such a pointer, `off` the offset of a member of type `T` in its struct.
#[inline(always)]
pub unsafe fn btf_load<T: Copy>(base: *const u8, off: u16) -> T {
    unsafe { *(base.add(off as usize) as *const T) }
}

/// `skb_shinfo(skb)->gso_size` of the BTF-typed `struct sk_buff *` at `skb`: non-zero for an
/// skb that holds more than one datagram. `None` when the read faults. `o` is the frozen
/// global itself (its offsets are read with [`off`]).
///
/// # Safety
/// As [`btf_load`].
#[inline(always)]
pub unsafe fn gso_size(skb: *const u8, o: &'static KernelOffsets) -> Option<u16> {
    let (head, end) = (off(&o.skb_head), off(&o.skb_end));
    // SAFETY: members of the skb at their BTF offsets.
    let (head, end): (KAddr, u32) = unsafe { (btf_load(skb, head), btf_load(skb, end)) };
    // 64-bit kernels keep `end` as an offset from `head`.
    read(head + end as u64 + off(&o.shinfo_gso_size) as u64)
}

/// Where the L3 header starts at the tracepoint.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum L3From {
    /// `skb->head + skb->network_header`: the transmit path, where `data` is at the link
    /// header (set by the IP layer; valid for any device type).
    Network,
    /// `skb->data`: the receive path once the driver ran `eth_type_trans` (it pulled the link
    /// header; `network_header` is reset only later, in `__netif_receive_skb_core`).
    Data,
}

/// The UDP datagram of an skb.
pub struct SkbUdp {
    /// `ETH_P_IP` or `ETH_P_IPV6`.
    pub proto: u16,
    /// The L3 header's kernel address.
    pub l3: KAddr,
    pub src: u16,
    pub dst: u16,
    /// IPv4 "more fragments" set on a first fragment.
    pub fragment: bool,
    /// The UDP payload's kernel address.
    pub payload: KAddr,
    /// Octets of payload inside the linear data, at most what the UDP length field says.
    pub payload_len: u32,
}

impl SkbUdp {
    /// (source, destination) address, 16 octets each in network order; IPv4 as
    /// `::ffff:a.b.c.d` (the `FollowUpKey` / `DelayDstKey` form). Within the linear data: the
    /// parse read the protocol octets past them.
    #[inline(always)]
    pub fn addrs(&self) -> Option<([u8; 16], [u8; 16])> {
        if self.proto == ETH_P_IP {
            let a: [[u8; 4]; 2] = read(self.l3 + 12)?;
            let m = |o: [u8; 4]| {
                [
                    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, o[0], o[1], o[2], o[3],
                ]
            };
            Some((m(a[0]), m(a[1])))
        } else {
            let a: [[u8; 16]; 2] = read(self.l3 + 8)?;
            Some((a[0], a[1]))
        }
    }

    /// The `T` at payload offset `off` (octets as they are on the wire), inside the payload;
    /// `None` beyond it or when the read faults.
    #[inline(always)]
    pub fn at<T: Copy>(&self, off: usize) -> Option<T> {
        if off + core::mem::size_of::<T>() > self.payload_len as usize {
            return None;
        }
        read::<T>(self.payload + off as u64)
    }

    /// Big-endian `u16` at payload offset `off`, inside the payload.
    #[inline(always)]
    pub fn be16(&self, off: usize) -> Option<u16> {
        self.at::<u16>(off).map(u16::from_be)
    }

    /// Big-endian `u32` at payload offset `off`, inside the payload.
    #[inline(always)]
    pub fn be32(&self, off: usize) -> Option<u32> {
        self.at::<u32>(off).map(u32::from_be)
    }
}

/// The transport header of an skb.
pub struct SkbL4 {
    /// `ETH_P_IP` or `ETH_P_IPV6`.
    pub proto: u16,
    /// The L3 header's kernel address.
    pub l3: KAddr,
    /// IP protocol / IPv6 next header of the transport header.
    pub next: u8,
    /// The transport header's kernel address.
    pub l4: KAddr,
    /// End of the linear data.
    pub end: KAddr,
    /// IPv4 "more fragments" set on a first fragment.
    pub fragment: bool,
}

impl SkbL4 {
    /// `n` octets at `at` lie inside the linear data.
    #[inline(always)]
    pub fn has(&self, at: KAddr, n: u64) -> bool {
        at + n <= self.end
    }
}

/// Finds the transport header of the skb at `skb` (IPv4, or IPv6 past at most
/// `IPV6_MAX_EXT` extension headers). `None` for anything else and for a later fragment (the
/// fast path out, not noted) and for a packet it gave up on (noted: `Skip::Pull` for a header
/// beyond the linear data or a faulting read, as in `parse_udp`).
#[inline(always)]
pub fn skb_l4(skb: KAddr, o: &KernelOffsets, from: L3From, note: impl Fn(Skip)) -> Option<SkbL4> {
    let proto = u16::from_be(member::<u16>(skb, o.skb_protocol)?);
    if proto != ETH_P_IP && proto != ETH_P_IPV6 {
        return None;
    }
    let data: KAddr = member(skb, o.skb_data)?;
    let len: u32 = member(skb, o.skb_len)?;
    let paged: u32 = member(skb, o.skb_data_len)?;
    // The linear data; a header past it is not parsed.
    let end = data + len.saturating_sub(paged) as u64;
    let l3 = match from {
        L3From::Data => data,
        L3From::Network => {
            let head: KAddr = member(skb, o.skb_head)?;
            let nh: u16 = member(skb, o.skb_network_header)?;
            // 0xffff: not set. The header must lie within the data (at or after its start).
            if nh == u16::MAX || head + (nh as u64) < data {
                note(Skip::Pull);
                return None;
            }
            head + nh as u64
        }
    };
    // `n` octets at `at` inside the linear data, read; else noted as a pull.
    let get = |at: KAddr, n: u64| at + n <= end;
    let mut fragment = false;
    let (next, l4);
    if proto == ETH_P_IP {
        if !get(l3, 20) {
            note(Skip::Pull);
            return None;
        }
        let h: [u8; 10] = read(l3).or_else(|| {
            note(Skip::Pull);
            None
        })?;
        let frag = u16::from_be_bytes([h[6], h[7]]);
        if frag & 0x1fff != 0 {
            return None; // later fragment: no transport header here
        }
        fragment = frag & 0x2000 != 0;
        let ihl = ((h[0] & 0x0f) as u64) * 4;
        if ihl < 20 {
            note(Skip::BadIhl);
            return None;
        }
        next = h[9];
        l4 = l3 + ihl;
    } else {
        if !get(l3, IPV6_HLEN as u64) {
            note(Skip::Pull);
            return None;
        }
        let mut nh: u8 = read(l3 + 6).or_else(|| {
            note(Skip::Pull);
            None
        })?;
        let mut off = l3 + IPV6_HLEN as u64;
        for _ in 0..IPV6_MAX_EXT {
            match nh {
                // hop-by-hop, routing, destination options: (next, len in 8-octet units - 1)
                0 | 43 | 60 => {
                    if !get(off, 2) {
                        note(Skip::Pull);
                        return None;
                    }
                    let hdr: [u8; 2] = read(off).or_else(|| {
                        note(Skip::Pull);
                        None
                    })?;
                    nh = hdr[0];
                    off += (hdr[1] as u64 + 1) * 8;
                }
                44 => {
                    note(Skip::Fragment);
                    return None;
                }
                _ => break,
            }
        }
        if matches!(nh, 0 | 43 | 60 | 44) {
            note(Skip::Ipv6Ext);
            return None;
        }
        next = nh;
        l4 = off;
    }
    Some(SkbL4 {
        proto,
        l3,
        next,
        l4,
        end,
        fragment,
    })
}

/// Finds the UDP datagram of the skb at `skb`: [`skb_l4`], then the UDP header. `None` for
/// anything else.
#[inline(always)]
pub fn skb_udp(skb: KAddr, o: &KernelOffsets, from: L3From, note: impl Fn(Skip)) -> Option<SkbUdp> {
    let t = skb_l4(skb, o, from, &note)?;
    if t.next != IPPROTO_UDP {
        return None;
    }
    udp_of(&t, note)
}

/// The UDP datagram at the transport header `t` (its protocol already checked).
#[inline(always)]
pub fn udp_of(t: &SkbL4, note: impl Fn(Skip)) -> Option<SkbUdp> {
    if !t.has(t.l4, UDP_HLEN as u64) {
        note(Skip::Pull);
        return None;
    }
    let udp: [u16; 3] = read(t.l4).or_else(|| {
        note(Skip::Pull);
        None
    })?;
    let payload = t.l4 + UDP_HLEN as u64;
    // What the UDP length says, cut to the linear data.
    let said = (u16::from_be(udp[2]) as u64).saturating_sub(UDP_HLEN as u64);
    let have = t.end.saturating_sub(payload);
    Some(SkbUdp {
        proto: t.proto,
        l3: t.l3,
        src: u16::from_be(udp[0]),
        dst: u16::from_be(udp[1]),
        fragment: t.fragment,
        payload,
        payload_len: said.min(have) as u32,
    })
}

/// `(netns inode, ifindex)` of the `struct net_device` at `dev`.
#[inline(always)]
pub fn dev_netns_ifindex(dev: KAddr, o: &KernelOffsets) -> Option<(u32, u32)> {
    let ifindex: i32 = member(dev, o.dev_ifindex)?;
    let net: KAddr = member(dev, o.dev_net)?;
    let inum: u32 = member(net, o.net_inum)?;
    Some((inum, ifindex as u32))
}

/// The skb's device (`skb->dev`).
#[inline(always)]
pub fn skb_dev(skb: KAddr, o: &KernelOffsets) -> Option<KAddr> {
    member(skb, o.skb_dev)
}
