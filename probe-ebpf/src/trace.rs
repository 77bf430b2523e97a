//! The tracepoint reference (tests and bench only; loaded by `meshprobe-tracer`, never by
//! `meshprobe`): per-probe instants on the kernel's own tracepoints, without cloning the skb as
//! an AF_PACKET tap does.
//!
//! - `tp_btf/net_dev_start_xmit` (skb, dev): the driver hand-off in `xmit_one`, after
//!   `dev_queue_xmit_nit` (the taps), so later than a capture's egress stamp;
//! - `tp_btf/netif_rx` (skb): a packet queued to the backlog (veth's `__netif_rx`), before
//!   `__netif_receive_skb_core` runs the taps, so earlier than a capture's ingress stamp;
//! - `tp_btf/netif_receive_skb` and `tp_btf/napi_gro_receive_entry`: the receive entries of a
//!   NIC driver (and, for veth, a second, later event of the same packet). The collector keeps
//!   the earliest receive event of each packet.
//!
//! A packet matches by content: UDP (no later fragment), one port in `TRACE_PORTS` (the
//! destination for a request, the source for a reply), a payload at least as long as the STAMP
//! base packet of the port's mode; the key is read at that mode's offsets. For the bench's
//! other contenders: a port in `SEQ64` mode (sockperf: a 64-bit sequence first), and ICMP /
//! ICMPv6 echoes when `TRACE_ICMP_ECHO` is set (key: identifier and sequence). Nothing is written to
//! the packet. Each skip of a packet on a traced port, and each event lost to a full ring
//! buffer, is counted per CPU.
#![no_std]
#![no_main]

use aya_ebpf::{
    helpers::bpf_ktime_get_tai_ns,
    macros::{btf_tracepoint, map},
    maps::{Array, PerCpuArray, RingBuf},
    programs::BtfTracePointContext,
};
use probe_common::{
    KernelOffsets, auth_wire,
    trace::{TraceEvent, counter, kind, point, port},
    wire,
};
use probe_ebpf::{
    ETH_P_IP, IPPROTO_UDP, Skip,
    skb::{KAddr, L3From, SkbL4, dev_netns_ifindex, read, skb_dev, skb_l4, udp_of},
};

/// The running kernel's struct offsets, set by the loader before load
/// (`trace::names::GLOBAL_KERNEL_OFFSETS`): frozen `.rodata`.
#[unsafe(no_mangle)]
static KERNEL_OFFSETS: KernelOffsets = KernelOffsets::UNRESOLVED;

/// Trace ICMP / ICMPv6 echo requests and replies (`trace::names::GLOBAL_ICMP_ECHO`), set by
/// the loader; frozen `.rodata`.
#[unsafe(no_mangle)]
static TRACE_ICMP_ECHO: u8 = 0;

const IPPROTO_ICMP: u8 = 1;
const IPPROTO_ICMPV6: u8 = 58;

/// `trace::port::*` per UDP port (host order); 0 = not traced.
#[map(name = "TRACE_PORTS")]
static TRACE_PORTS: Array<u8> = Array::with_max_entries(65536, 0);

#[map(name = "TRACE_COUNTERS")]
static TRACE_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

#[map(name = "EVENTS")]
static EVENTS: RingBuf = RingBuf::with_byte_size(probe_common::trace::RING_BYTES, 0);

#[inline(always)]
fn count(idx: u32) {
    if let Some(c) = TRACE_COUNTERS.get_ptr_mut(idx) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe { *c += 1 };
    }
}

#[inline(always)]
fn offsets() -> KernelOffsets {
    // SAFETY: a global; volatile so that the compiler keeps the loads the verifier resolves.
    unsafe { core::ptr::read_volatile(&KERNEL_OFFSETS) }
}

#[inline(always)]
fn port_mode(p: u16) -> u8 {
    TRACE_PORTS.get(p as u32).copied().unwrap_or(0)
}

/// Counts a parse that gave up on a packet (the port is not known yet: it may not be ours,
/// but a header we could not read may hide one that is).
#[inline(always)]
fn note(s: Skip) {
    count(match s {
        Skip::Pull => counter::ERR_READ,
        Skip::BadIhl => counter::SKIP_BAD_IHL,
        Skip::Fragment => counter::SKIP_FRAGMENT,
        Skip::Ipv6Ext => counter::SKIP_IPV6_EXT,
    });
}

/// Emits one event for the skb if it is a probe packet on a traced port (or an ICMP echo, when
/// traced). `dev`: the device the tracepoint names (`None`: the skb's own).
#[inline(always)]
fn trace(skb: KAddr, dev: Option<KAddr>, from: L3From, at: u8) {
    // First, before the parse: the instant is the tracepoint's, not the end of our reads (a
    // score of probe reads took ~1 µs on this VM). One helper call per packet: tests only.
    // SAFETY: a helper call without arguments.
    let now = unsafe { bpf_ktime_get_tai_ns() };
    let o = offsets();
    let Some(t) = skb_l4(skb, &o, from, note) else {
        return;
    };
    let key = if t.next == IPPROTO_UDP {
        udp_key(&t)
    } else if (t.next == IPPROTO_ICMP || t.next == IPPROTO_ICMPV6) && icmp_echo_traced() {
        echo_key(&t)
    } else {
        return;
    };
    let Some((k, sport, dport, ssid, seq)) = key else {
        return;
    };
    let Some(dev) = dev.or_else(|| skb_dev(skb, &o)) else {
        count(counter::ERR_READ);
        return;
    };
    let Some((netns, ifindex)) = dev_netns_ifindex(dev, &o) else {
        count(counter::ERR_READ);
        return;
    };
    let ev = TraceEvent {
        tai_ns: now,
        netns,
        ifindex,
        seq,
        sport,
        dport,
        ssid,
        point: at,
        kind: k,
        _pad: 0,
    };
    // No wake-up: waking the reader from here (an irq_work, a self-IPI: a VM exit on a guest)
    // would delay the very packet being timed, and every program after this one on the
    // tracepoint; the reader polls instead.
    match EVENTS.output::<TraceEvent>(ev, aya_ebpf::bindings::BPF_RB_NO_WAKEUP as u64) {
        Ok(()) => count(counter::EVENTS),
        Err(_) => count(counter::DROP_RING_FULL),
    }
}

#[inline(always)]
fn icmp_echo_traced() -> bool {
    // SAFETY: a u8 global; volatile so that the compiler keeps the load the verifier resolves.
    unsafe { core::ptr::read_volatile(&TRACE_ICMP_ECHO) != 0 }
}

/// (kind, sport, dport, ssid, seq) of a UDP datagram on a traced port; `None` (counted when
/// the port is traced) for anything else.
#[inline(always)]
fn udp_key(t: &SkbL4) -> Option<(u8, u16, u16, u16, u32)> {
    let u = udp_of(t, note)?;
    let (src_mode, dst_mode) = (port_mode(u.src), port_mode(u.dst));
    let (mode, k) = match (src_mode, dst_mode) {
        (0, 0) => return None,
        (0, m) => (m, kind::REQUEST),
        (m, 0) => (m, kind::REPLY),
        _ => {
            count(counter::SKIP_BOTH_PORTS);
            return None;
        }
    };
    if u.fragment {
        count(counter::SKIP_FRAGMENT);
        return None;
    }
    let (base, ssid_at, seq_at) = match (mode, k) {
        (port::SEQ64, _) => (8, 0, 4),
        (port::AUTH, kind::REQUEST) => (auth_wire::BASE_LEN, auth_wire::SSID, auth_wire::SEQ),
        (port::AUTH, _) => (auth_wire::BASE_LEN, auth_wire::SSID, auth_wire::SENDER_SEQ),
        (_, kind::REQUEST) => (wire::BASE_LEN, wire::SSID, wire::SEQ),
        _ => (wire::BASE_LEN, wire::SSID, wire::SENDER_SEQ),
    };
    if (u.payload_len as usize) < base {
        count(counter::SKIP_SHORT);
        return None;
    }
    // SEQ64: no SSID; the sequence's low half (octets 4..8).
    let ssid = if mode == port::SEQ64 {
        Some(0)
    } else {
        u.be16(ssid_at)
    };
    let (Some(ssid), Some(seq)) = (ssid, u.be32(seq_at)) else {
        count(counter::ERR_READ);
        return None;
    };
    Some((k, u.src, u.dst, ssid, seq))
}

/// (kind, 0, 0, identifier, sequence) of an ICMP / ICMPv6 echo request or reply.
#[inline(always)]
fn echo_key(t: &SkbL4) -> Option<(u8, u16, u16, u16, u32)> {
    // Type, code, checksum, identifier, sequence: 8 octets.
    if !t.has(t.l4, 8) {
        count(counter::SKIP_SHORT);
        return None;
    }
    let Some(h) = read::<[u8; 8]>(t.l4) else {
        count(counter::ERR_READ);
        return None;
    };
    let (req, rep) = if t.proto == ETH_P_IP {
        (8, 0)
    } else {
        (128, 129)
    };
    let k = if h[0] == req {
        kind::ECHO_REQUEST
    } else if h[0] == rep {
        kind::ECHO_REPLY
    } else {
        return None;
    };
    let id = u16::from_be_bytes([h[4], h[5]]);
    let seq = u16::from_be_bytes([h[6], h[7]]) as u32;
    Some((k, 0, 0, id, seq))
}

#[btf_tracepoint(function = "net_dev_start_xmit")]
pub fn meshprobe_trace_xmit(ctx: BtfTracePointContext) -> i32 {
    let skb: KAddr = ctx.arg(0);
    let dev: KAddr = ctx.arg(1);
    trace(skb, Some(dev), L3From::Network, point::XMIT);
    0
}

#[btf_tracepoint(function = "netif_rx")]
pub fn meshprobe_trace_netif_rx(ctx: BtfTracePointContext) -> i32 {
    trace(ctx.arg(0), None, L3From::Data, point::NETIF_RX);
    0
}

#[btf_tracepoint(function = "netif_receive_skb")]
pub fn meshprobe_trace_receive_skb(ctx: BtfTracePointContext) -> i32 {
    trace(ctx.arg(0), None, L3From::Data, point::RECEIVE_SKB);
    0
}

#[btf_tracepoint(function = "napi_gro_receive_entry")]
pub fn meshprobe_trace_gro_receive(ctx: BtfTracePointContext) -> i32 {
    trace(ctx.arg(0), None, L3From::Data, point::GRO_RECEIVE);
    0
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
