//! Delay element for tests and labs (this kernel has no netem): a TC program that holds each
//! matching packet for a configured time by spinning with bpf_loop. Its own object, so the
//! probe's object carries none of it.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::TC_ACT_UNSPEC,
    helpers::{bpf_ktime_get_ns, bpf_loop},
    macros::{classifier, map},
    maps::{Array, HashMap, PerCpuArray},
    programs::TcContext,
};
use probe_common::delay::{DelayConfig, DelayDstKey, counter};
use probe_ebpf::{ETH_HLEN, ETH_P_IP, ETH_P_IPV6, l3_proto, parse_udp, ptr_at};

#[map(name = "DELAY")]
static DELAY: Array<DelayConfig> = Array::with_max_entries(1, 0);

/// Per-destination hold times (ns), consulted when `DelayConfig::PER_DST` is set.
#[map(name = "DELAY_DST")]
static DELAY_DST: HashMap<DelayDstKey, u64> =
    HashMap::with_max_entries(DelayDstKey::MAX_ENTRIES, 0);

#[map(name = "DELAY_COUNTERS")]
static DELAY_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

/// Upper bound on bpf_loop iterations (each takes tens of ns).
const DELAY_MAX_LOOPS: u32 = 1 << 22;

#[inline(always)]
fn count(idx: u32) {
    if let Some(c) = DELAY_COUNTERS.get_ptr_mut(idx) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe { *c += 1 };
    }
}

struct Hold {
    start: u64,
    delay: u64,
}

extern "C" fn hold_step(_i: u64, ctx: *mut core::ffi::c_void) -> i64 {
    // SAFETY: bpf_loop hands back the pointer we gave it.
    let h = unsafe { &*(ctx as *const Hold) };
    let now = unsafe { bpf_ktime_get_ns() };
    if now.wrapping_sub(h.start) >= h.delay {
        1
    } else {
        0
    }
}

/// The IP destination address as a `DELAY_DST` key (IPv4 as `::ffff:a.b.c.d`); `None` for a
/// packet that is not IP, or whose header is not in the linear data.
#[inline(always)]
fn dst_key(ctx: &TcContext) -> Option<DelayDstKey> {
    let proto = l3_proto(ctx);
    if proto == ETH_P_IP {
        // IPv4 destination address: octets 16..20 of the header.
        let a: [u8; 4] = unsafe { *ptr_at(ctx, ETH_HLEN + 16)? };
        Some(DelayDstKey::v4(a))
    } else if proto == ETH_P_IPV6 {
        // IPv6 destination address: octets 24..40 of the fixed header.
        let a: [u8; 16] = unsafe { *ptr_at(ctx, ETH_HLEN + 24)? };
        Some(DelayDstKey::v6(a))
    } else {
        None
    }
}

/// Holds each matching packet, on whatever hook it is attached to. The time is the packet's
/// destination's entry in `DELAY_DST` when there is one (`PER_DST` set), else
/// `DELAY[0].delay_ns`; 0 passes the packet at once.
#[classifier]
pub fn meshprobe_delay(ctx: TcContext) -> i32 {
    let start = unsafe { bpf_ktime_get_ns() };
    let Some(cfg) = DELAY.get(0) else {
        return TC_ACT_UNSPEC;
    };
    let per_dst = cfg.flags & DelayConfig::PER_DST != 0;
    if cfg.delay_ns == 0 && !per_dst {
        return TC_ACT_UNSPEC;
    }
    if cfg.udp_port != 0 {
        // A packet the parser gives up on is not held, and not counted: nothing to report.
        match parse_udp(&ctx, |_| ()) {
            Some(u) if u.src == cfg.udp_port || u.dst == cfg.udp_port => {}
            _ => return TC_ACT_UNSPEC,
        }
    }
    let mut delay = cfg.delay_ns;
    let mut hit = false;
    if per_dst
        && let Some(key) = dst_key(&ctx)
        && let Some(d) = DELAY_DST.get_ptr(key)
    {
        // SAFETY: a u64 map value; userspace writes the entries before it sets PER_DST.
        delay = unsafe { *d };
        hit = true;
    }
    if delay == 0 {
        return TC_ACT_UNSPEC;
    }
    let mut hold = Hold { start, delay };
    unsafe {
        bpf_loop(
            DELAY_MAX_LOOPS,
            hold_step as *mut core::ffi::c_void,
            &mut hold as *mut Hold as *mut core::ffi::c_void,
            0,
        );
    }
    let now = unsafe { bpf_ktime_get_ns() };
    count(if now.wrapping_sub(start) >= delay {
        counter::HELD
    } else {
        counter::CUT_SHORT
    });
    if hit {
        count(counter::DST_HIT);
    }
    TC_ACT_UNSPEC
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
