//! Packet parsing shared by the probe's programs (src/main.rs) and the delay element's
//! (src/delay.rs, the delay-ebpf object), and for tracing programs the skb parse of [`skb`]
//! (the tracepoint reference, src/trace.rs): one place for each rule. Everything is `inline(always)`, so each program's
//! fast path stays as short as its own copy would be.
//!
//! Nothing here owns a map: a parse that gives up says why through the caller's `note`, which
//! counts it in the caller's own counters (or ignores it).
#![no_std]

use aya_ebpf::programs::TcContext;

pub mod skb;

/// The panic handler of every BPF object of the workspace (the verifier rejects a panic path
/// anyway). Only on the BPF target: the host builds this library with std.
#[cfg(all(target_arch = "bpf", not(test)))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

pub const ETH_HLEN: usize = 14;
pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86DD;
pub const IPPROTO_UDP: u8 = 17;
pub const IPV6_HLEN: usize = 40;
pub const UDP_HLEN: usize = 8;
/// IPv6 extension headers walked before giving up (hop-by-hop, routing, destination options).
pub const IPV6_MAX_EXT: usize = 4;

/// Why a parse gave up on a packet that may have been one it wanted.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    /// An IP or UDP header not in the linear data (truncated, or paged).
    Pull,
    /// IPv4 header length field out of range.
    BadIhl,
    /// IPv6 fragment header: the UDP header may not be here.
    Fragment,
    /// IPv6 extension header chain longer than we walk.
    Ipv6Ext,
}

/// `skb->protocol` in host order: the L3 protocol (TC sees the Ethernet header).
#[inline(always)]
pub fn l3_proto(ctx: &TcContext) -> u16 {
    // SAFETY: a read of the context the verifier allows for TC programs.
    u16::from_be(unsafe { (*ctx.skb.skb).protocol } as u16)
}

/// Bounds-checked pointer into the linear packet data; `None` when the `T` at `off` is not
/// there (the caller counts it as a `Skip::Pull`).
#[inline(always)]
pub fn ptr_at<T>(ctx: &TcContext, off: usize) -> Option<*const T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + off + core::mem::size_of::<T>() > end {
        return None;
    }
    Some((start + off) as *const T)
}

/// `ptr_at`, with a miss reported to `note` (the same test, so the same code as a caller's own
/// counting copy).
#[inline(always)]
pub fn ptr_at_noted<T>(ctx: &TcContext, off: usize, note: &impl Fn(Skip)) -> Option<*const T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + off + core::mem::size_of::<T>() > end {
        // Keeps the in-bounds path the straight line, as it was in each program's own copy.
        core::hint::cold_path();
        note(Skip::Pull);
        return None;
    }
    Some((start + off) as *const T)
}

/// Where the UDP header starts and which ports it carries.
pub struct Udp {
    pub l4: usize,
    pub src: u16,
    pub dst: u16,
    /// IPv4 "more fragments" set on a first fragment.
    pub fragment: bool,
}

/// Finds the UDP header. `None` for anything else: that is the fast path out.
#[inline(always)]
pub fn parse_udp(ctx: &TcContext, note: impl Fn(Skip)) -> Option<Udp> {
    let proto = l3_proto(ctx);
    let l4;
    let mut fragment = false;
    if proto == ETH_P_IP {
        // The protocol first: its bounds check covers the version/IHL octet too.
        let l4proto: u8 = unsafe { *ptr_at_noted(ctx, ETH_HLEN + 9, &note)? };
        if l4proto != IPPROTO_UDP {
            return None;
        }
        let vihl: u8 = unsafe { *ptr_at_noted(ctx, ETH_HLEN, &note)? };
        let frag = u16::from_be(unsafe { *ptr_at_noted::<u16>(ctx, ETH_HLEN + 6, &note)? });
        if frag & 0x1fff != 0 {
            return None; // later fragment: no UDP header here
        }
        fragment = frag & 0x2000 != 0;
        let ihl = ((vihl & 0x0f) as usize) * 4;
        if ihl < 20 {
            note(Skip::BadIhl);
            return None;
        }
        l4 = ETH_HLEN + ihl;
    } else if proto == ETH_P_IPV6 {
        let mut next: u8 = unsafe { *ptr_at_noted(ctx, ETH_HLEN + 6, &note)? };
        let mut off = ETH_HLEN + IPV6_HLEN;
        let mut found = next == IPPROTO_UDP;
        if !found {
            for _ in 0..IPV6_MAX_EXT {
                match next {
                    // hop-by-hop, routing, destination options: (next, len in 8-octet units - 1)
                    0 | 43 | 60 => {
                        let hdr: [u8; 2] = unsafe { *ptr_at_noted(ctx, off, &note)? };
                        next = hdr[0];
                        off += (hdr[1] as usize + 1) * 8;
                        if next == IPPROTO_UDP {
                            found = true;
                            break;
                        }
                    }
                    44 => {
                        // Fragment header: count only if it would have been ours; we cannot
                        // know the ports without the first fragment, so count generally.
                        note(Skip::Fragment);
                        return None;
                    }
                    _ => return None,
                }
            }
            if !found {
                if matches!(next, 0 | 43 | 60) {
                    note(Skip::Ipv6Ext);
                }
                return None;
            }
        }
        l4 = off;
    } else {
        return None;
    }
    let ports: [u16; 2] = unsafe { *ptr_at_noted(ctx, l4, &note)? };
    Some(Udp {
        l4,
        src: u16::from_be(ports[0]),
        dst: u16::from_be(ports[1]),
        fragment,
    })
}

/// Reading the kernel's own structs from a tracing program (tp_btf). Rust BPF has no CO-RE:
/// the member offsets come from the running kernel's BTF (`probe_common::KernelOffsets`),
/// through a frozen read-only global whose values the verifier knows, so a member load at
/// `base + offset` is a constant-offset access it checks against the BTF type.
pub mod kernel {
    use aya_ebpf::helpers::bpf_probe_read_kernel;
    use probe_common::KernelOffsets;

    use super::{ETH_P_IP, ETH_P_IPV6, IPPROTO_UDP, IPV6_HLEN, UDP_HLEN};

    /// One offset of the global (`&GLOBAL.field`), read so that the compiler keeps the load
    /// the verifier resolves (a plain read of a `static` would be folded to its built-in zero).
    #[inline(always)]
    pub fn off(field: &u16) -> u16 {
        // SAFETY: a reference to a u16.
        unsafe { core::ptr::read_volatile(field) }
    }

    /// BTF-typed direct load of the member at `off` of the kernel struct at `base` (a pointer
    /// the verifier tracks by type: a tracepoint argument, or a pointer member loaded this
    /// way). `off` must be a value the verifier knows ([`off`]). A fault reads 0.
    ///
    /// # Safety
    /// `base` is such a pointer, `off` the offset of a member of type `T` in its struct.
    #[inline(always)]
    pub unsafe fn member<T: Copy>(base: *const u8, off: u16) -> T {
        unsafe { *(base.add(off as usize) as *const T) }
    }

    /// A `T` at any kernel address (`bpf_probe_read_kernel`); `None` on a fault.
    #[inline(always)]
    pub fn read<T>(addr: u64) -> Option<T> {
        // SAFETY: the helper checks the address.
        unsafe { bpf_probe_read_kernel(addr as *const T) }.ok()
    }

    /// The header offsets of an skb (all from `head`, as the kernel keeps them).
    pub struct SkbHeaders {
        /// Kernel address of the buffer.
        pub head: u64,
        /// `data − head`: where the packet starts (the MAC header at transmit).
        pub data: u64,
        /// Bytes in the packet from `data`, linear and paged.
        pub len: u32,
        /// `skb->protocol`, host order.
        pub protocol: u16,
        pub network: u16,
        pub transport: u16,
    }

    /// # Safety
    /// `skb` is a BTF-typed `struct sk_buff *` (see [`member`]).
    #[inline(always)]
    pub unsafe fn headers(skb: *const u8, o: &'static KernelOffsets) -> SkbHeaders {
        let (head, data, len, protocol, network, transport) = (
            off(&o.skb_head),
            off(&o.skb_data),
            off(&o.skb_len),
            off(&o.skb_protocol),
            off(&o.skb_network_header),
            off(&o.skb_transport_header),
        );
        // SAFETY: members of the skb at their BTF offsets.
        unsafe {
            let head: u64 = member(skb, head);
            let data: u64 = member(skb, data);
            SkbHeaders {
                head,
                data: data.wrapping_sub(head),
                len: member(skb, len),
                protocol: u16::from_be(member(skb, protocol)),
                network: member(skb, network),
                transport: member(skb, transport),
            }
        }
    }

    /// `skb_shinfo(skb)->gso_size`: non-zero for an skb that holds more than one datagram.
    ///
    /// # Safety
    /// As [`headers`].
    #[inline(always)]
    pub unsafe fn gso_size(
        skb: *const u8,
        h: &SkbHeaders,
        o: &'static KernelOffsets,
    ) -> Option<u16> {
        // 64-bit kernels keep `end` as an offset from `head`.
        let end = off(&o.skb_end);
        // SAFETY: a member of the skb at its BTF offset.
        let end: u32 = unsafe { member(skb, end) };
        read(h.head + end as u64 + off(&o.shinfo_gso_size) as u64)
    }

    /// Why an skb is not a whole UDP datagram.
    #[derive(Clone, Copy, PartialEq, Eq)]
    pub enum NotUdp {
        /// A read of the headers faulted.
        Read,
        /// Not IPv4/IPv6 carrying UDP right after the IP header (or the headers disagree
        /// with the skb's offsets), a fragment, or a UDP length that is not the rest of the
        /// skb.
        Shape,
    }

    /// A whole UDP datagram, as the skb holds it.
    pub struct UdpDatagram {
        /// Kernel address of the UDP payload.
        pub payload: u64,
        pub payload_len: usize,
        pub src: u16,
        pub dst: u16,
        /// IP source and destination, 16 octets in network order; IPv4 as `::ffff:a.b.c.d`.
        pub saddr: [u8; 16],
        pub daddr: [u8; 16],
    }

    #[inline(always)]
    fn v4_mapped(a: &[u8]) -> [u8; 16] {
        let mut m = [0u8; 16];
        m[10] = 0xff;
        m[11] = 0xff;
        m[12] = a[0];
        m[13] = a[1];
        m[14] = a[2];
        m[15] = a[3];
        m
    }

    /// The skb as one unfragmented UDP datagram (no IPv6 extension headers: our probes have
    /// none), from its network and transport header offsets; every length is checked against
    /// the skb's.
    #[inline(always)]
    pub fn udp_datagram(h: &SkbHeaders) -> Result<UdpDatagram, NotUdp> {
        if h.transport <= h.network || (h.network as u64) < h.data {
            return Err(NotUdp::Shape);
        }
        let ip_len = (h.transport - h.network) as usize;
        let nh = h.head + h.network as u64;
        let (saddr, daddr) = if h.protocol == ETH_P_IP {
            let ip: [u8; 20] = read(nh).ok_or(NotUdp::Read)?;
            let frag = u16::from_be_bytes([ip[6], ip[7]]) & 0x3fff;
            if ip[0] >> 4 != 4
                || ((ip[0] & 0x0f) as usize) * 4 != ip_len
                || ip[9] != IPPROTO_UDP
                || frag != 0
            {
                return Err(NotUdp::Shape);
            }
            (v4_mapped(&ip[12..16]), v4_mapped(&ip[16..20]))
        } else if h.protocol == ETH_P_IPV6 {
            let ip: [u8; IPV6_HLEN] = read(nh).ok_or(NotUdp::Read)?;
            if ip[0] >> 4 != 6 || ip_len != IPV6_HLEN || ip[6] != IPPROTO_UDP {
                return Err(NotUdp::Shape);
            }
            let mut s = [0u8; 16];
            let mut d = [0u8; 16];
            s.copy_from_slice(&ip[8..24]);
            d.copy_from_slice(&ip[24..40]);
            (s, d)
        } else {
            return Err(NotUdp::Shape);
        };
        let th = h.head + h.transport as u64;
        let udp: [u8; UDP_HLEN] = read(th).ok_or(NotUdp::Read)?;
        let len = u16::from_be_bytes([udp[4], udp[5]]) as u64;
        // The datagram is the rest of the skb, exactly.
        if len < UDP_HLEN as u64 || h.transport as u64 - h.data + len != h.len as u64 {
            return Err(NotUdp::Shape);
        }
        Ok(UdpDatagram {
            payload: th + UDP_HLEN as u64,
            payload_len: len as usize - UDP_HLEN,
            src: u16::from_be_bytes([udp[0], udp[1]]),
            dst: u16::from_be_bytes([udp[2], udp[3]]),
            saddr,
            daddr,
        })
    }
}
