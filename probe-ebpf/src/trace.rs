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
//! base packet of the port's mode; the key is read at that mode's offsets. Nothing is written to
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
    Skip,
    skb::{KAddr, L3From, dev_netns_ifindex, skb_dev, skb_udp},
};

/// The running kernel's struct offsets, set by the loader before load
/// (`trace::names::GLOBAL_KERNEL_OFFSETS`): frozen `.rodata`.
#[unsafe(no_mangle)]
static KERNEL_OFFSETS: KernelOffsets = KernelOffsets {
    skb_head: 0,
    skb_data: 0,
    skb_len: 0,
    skb_protocol: 0,
    skb_network_header: 0,
    skb_transport_header: 0,
    skb_sk: 0,
    skb_dev: 0,
    sock_num: 0,
    sock_cookie: 0,
    dev_ifindex: 0,
    dev_net: 0,
    net_inum: 0,
    skb_data_len: 0,
    _pad: [0; 2],
};

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

/// Emits one event for the skb if it is a probe packet on a traced port. `dev`: the device the
/// tracepoint names (`None`: the skb's own).
#[inline(always)]
fn trace(skb: KAddr, dev: Option<KAddr>, from: L3From, at: u8) {
    // First, before the parse: the instant is the tracepoint's, not the end of our reads (a
    // score of probe reads took ~1 µs on this VM). One helper call per packet: tests only.
    // SAFETY: a helper call without arguments.
    let now = unsafe { bpf_ktime_get_tai_ns() };
    let o = offsets();
    let Some(u) = skb_udp(skb, &o, from, note) else {
        return;
    };
    let (src_mode, dst_mode) = (port_mode(u.src), port_mode(u.dst));
    let (mode, k) = match (src_mode, dst_mode) {
        (0, 0) => return,
        (0, m) => (m, kind::REQUEST),
        (m, 0) => (m, kind::REPLY),
        _ => {
            count(counter::SKIP_BOTH_PORTS);
            return;
        }
    };
    if u.fragment {
        count(counter::SKIP_FRAGMENT);
        return;
    }
    let (base, ssid_at, seq_at) = match (mode, k) {
        (port::AUTH, kind::REQUEST) => (auth_wire::BASE_LEN, auth_wire::SSID, auth_wire::SEQ),
        (port::AUTH, _) => (auth_wire::BASE_LEN, auth_wire::SSID, auth_wire::SENDER_SEQ),
        (_, kind::REQUEST) => (wire::BASE_LEN, wire::SSID, wire::SEQ),
        _ => (wire::BASE_LEN, wire::SSID, wire::SENDER_SEQ),
    };
    if (u.payload_len as usize) < base {
        count(counter::SKIP_SHORT);
        return;
    }
    let (Some(ssid), Some(seq)) = (u.be16(ssid_at), u.be32(seq_at)) else {
        count(counter::ERR_READ);
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
        sport: u.src,
        dport: u.dst,
        ssid,
        point: at,
        kind: k,
        _pad: 0,
    };
    match EVENTS.output::<TraceEvent>(ev, 0) {
        Ok(()) => count(counter::EVENTS),
        Err(_) => count(counter::DROP_RING_FULL),
    }
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
