//! Packet parsing shared by the probe's programs (src/main.rs) and the delay element's
//! (src/delay.rs, the delay-ebpf object), and for tracing programs the skb parse of [`skb`]
//! (the tracepoint reference, src/trace.rs, and the probe's driver hand-off program): one place
//! for each rule. Everything is `inline(always)`, so each program's fast path stays as short as
//! its own copy would be.
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
