//! TC programs that stamp STAMP test packets with kernel timestamps, in place.
//!
//! - egress, source port is a Session-Sender's: T1 into the Timestamp field;
//! - egress, source port is a Session-Reflector's: T3 into the Timestamp field;
//! - ingress, destination is a Session-Reflector: T2 block into the request's MBZ octets;
//! - ingress, destination is a Session-Sender: T4 block into the reply's Extra Padding TLV
//!   (or into the `T4_FALLBACK` map when the reply has no room).
//!
//! Every program returns `TC_ACT_UNSPEC` (TCX_NEXT) so other programs on the hook still run.
//! A packet that is not UDP to or from a registered port leaves after a handful of loads.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_RECOMPUTE_CSUM, TC_ACT_UNSPEC},
    helpers::{bpf_ktime_get_ns, bpf_ktime_get_tai_ns, bpf_loop, bpf_skb_load_bytes},
    macros::{classifier, map},
    maps::{Array, HashMap, LruHashMap, PerCpuArray},
    programs::TcContext,
};
use aya_log_ebpf::debug;
use probe_common::{
    Config, DelayConfig, DelayDstKey, RxStamp, SentT1, StampKey, counter, port, wire,
};

#[map(name = "PORTS")]
static PORTS: Array<u8> = Array::with_max_entries(port::MAP_ENTRIES, 0);

#[map(name = "CONFIG")]
static CONFIG: Array<Config> = Array::with_max_entries(1, 0);

#[map(name = "COUNTERS")]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

#[map(name = "T4_FALLBACK")]
static T4_FALLBACK: LruHashMap<StampKey, RxStamp> = LruHashMap::with_max_entries(16384, 0);

/// T1 of each request the sender role stamped, by `SentT1::slot`.
#[map(name = "T1_SENT")]
static T1_SENT: Array<SentT1> = Array::with_max_entries(SentT1::ENTRIES, 0);

#[map(name = "DELAY")]
static DELAY: Array<DelayConfig> = Array::with_max_entries(1, 0);

/// Per-destination hold times of the delay element (ns), consulted when `DelayConfig::PER_DST`
/// is set.
#[map(name = "DELAY_DST")]
static DELAY_DST: HashMap<DelayDstKey, u64> =
    HashMap::with_max_entries(DelayDstKey::MAX_ENTRIES, 0);

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
const IPPROTO_UDP: u8 = 17;
const IPV6_HLEN: usize = 40;
const UDP_HLEN: usize = 8;
const NSEC_PER_SEC: u64 = 1_000_000_000;
/// IPv6 extension headers walked before giving up (hop-by-hop, routing, destination options).
const IPV6_MAX_EXT: usize = 4;
/// Upper bound on bpf_loop iterations of the delay element (each takes tens of ns).
const DELAY_MAX_LOOPS: u32 = 1 << 22;
/// `__sk_buff.tstamp_type` for a CLOCK_REALTIME receive stamp (BPF_SKB_CLOCK_REALTIME).
const SKB_CLOCK_REALTIME: u8 = 0;
const SKB_CLOCK_TAI: u8 = 2;

#[inline(always)]
fn count(idx: u32) {
    if let Some(c) = COUNTERS.get_ptr_mut(idx) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe { *c += 1 };
    }
}

/// Bounds-checked pointer into the linear packet data. A header of an IP packet that is not
/// there (truncated, or not in the linear area) is counted as `ERR_PULL`.
#[inline(always)]
fn ptr_at<T>(ctx: &TcContext, off: usize) -> Option<*const T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + off + core::mem::size_of::<T>() > end {
        count(counter::ERR_PULL);
        return None;
    }
    Some((start + off) as *const T)
}

/// Where the UDP header starts and which ports it carries.
struct Udp {
    l4: usize,
    src: u16,
    dst: u16,
    /// IPv4 "more fragments" set on a first fragment.
    fragment: bool,
}

/// Finds the UDP header. `None` for anything else: that is the fast path out.
#[inline(always)]
fn parse_udp(ctx: &TcContext) -> Option<Udp> {
    // skb->protocol is the L3 protocol in network order; TC sees the Ethernet header.
    let proto = u16::from_be(unsafe { (*ctx.skb.skb).protocol } as u16);
    let l4;
    let mut fragment = false;
    if proto == ETH_P_IP {
        let vihl: u8 = unsafe { *ptr_at(ctx, ETH_HLEN)? };
        let l4proto: u8 = unsafe { *ptr_at(ctx, ETH_HLEN + 9)? };
        if l4proto != IPPROTO_UDP {
            return None;
        }
        let frag = u16::from_be(unsafe { *ptr_at::<u16>(ctx, ETH_HLEN + 6)? });
        if frag & 0x1fff != 0 {
            return None; // later fragment: no UDP header here
        }
        fragment = frag & 0x2000 != 0;
        let ihl = ((vihl & 0x0f) as usize) * 4;
        if ihl < 20 {
            count(counter::SKIP_BAD_IHL);
            return None;
        }
        l4 = ETH_HLEN + ihl;
    } else if proto == ETH_P_IPV6 {
        let mut next: u8 = unsafe { *ptr_at(ctx, ETH_HLEN + 6)? };
        let mut off = ETH_HLEN + IPV6_HLEN;
        let mut found = next == IPPROTO_UDP;
        if !found {
            for _ in 0..IPV6_MAX_EXT {
                match next {
                    // hop-by-hop, routing, destination options: (next, len in 8-octet units - 1)
                    0 | 43 | 60 => {
                        let hdr: [u8; 2] = unsafe { *ptr_at(ctx, off)? };
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
                        count(counter::SKIP_FRAGMENT);
                        return None;
                    }
                    _ => return None,
                }
            }
            if !found {
                if matches!(next, 0 | 43 | 60) {
                    count(counter::SKIP_IPV6_EXT);
                }
                return None;
            }
        }
        l4 = off;
    } else {
        return None;
    }
    let ports: [u16; 2] = unsafe { *ptr_at(ctx, l4)? };
    Some(Udp {
        l4,
        src: u16::from_be(ports[0]),
        dst: u16::from_be(ports[1]),
        fragment,
    })
}

#[inline(always)]
fn port_flags(p: u16) -> u8 {
    match PORTS.get(p as u32) {
        Some(f) => *f,
        None => 0,
    }
}

/// Payload offset and length of a probe, or `None` (counted) if it cannot be a STAMP packet.
#[inline(always)]
fn probe_payload(ctx: &TcContext, udp: &Udp) -> Option<(usize, usize)> {
    if udp.fragment {
        count(counter::SKIP_FRAGMENT);
        return None;
    }
    let len: u16 = match ctx.load::<u16>(udp.l4 + 4) {
        Ok(v) => u16::from_be(v),
        Err(_) => {
            count(counter::ERR_LOAD);
            return None;
        }
    };
    let len = len as usize;
    let payload = udp.l4 + UDP_HLEN;
    // UDP length must cover a base packet and must not claim more than the skb holds.
    if len < UDP_HLEN + wire::BASE_LEN || udp.l4 + len > ctx.len() as usize {
        count(counter::SKIP_SHORT);
        return None;
    }
    Some((payload, len - UDP_HLEN))
}

#[inline(always)]
fn tai_now() -> u64 {
    unsafe { bpf_ktime_get_tai_ns() }
}

#[inline(always)]
fn split_ptp(ns: u64) -> (u32, u32) {
    ((ns / NSEC_PER_SEC) as u32, (ns % NSEC_PER_SEC) as u32)
}

/// Ones'-complement difference that turns a checksum over `old` into one over `new`: the
/// 32-bit unfolded sum of !old and new words, as `bpf_csum_diff` computes it, inline (one
/// helper call fewer after the clock read).
#[inline(always)]
fn csum_delta<const N: usize>(old: &[u32; N], new: &[u32; N]) -> u32 {
    let mut acc: u64 = 0;
    let mut i = 0;
    while i < N {
        acc += (!old[i]) as u64 + new[i] as u64;
        i += 1;
    }
    acc = (acc & 0xffff_ffff) + (acc >> 32);
    acc = (acc & 0xffff_ffff) + (acc >> 32);
    acc as u32
}

/// The bytes and checksum field a rewrite replaces, read before the clock.
struct Before<const N: usize> {
    off: usize,
    csum_off: usize,
    old: [u32; N],
    /// BPF_F_RECOMPUTE_CSUM when the UDP checksum is 0 (none): skb->csum must then follow.
    store_flags: u64,
}

#[inline(always)]
fn prepare<const N: usize>(ctx: &TcContext, off: usize, csum_off: usize) -> Option<Before<N>> {
    let mut old = [0u32; N];
    // A constant length: the verifier rejects a length that might be zero.
    let rc = unsafe {
        bpf_skb_load_bytes(
            ctx.skb.skb as *const _,
            off as u32,
            old.as_mut_ptr() as *mut core::ffi::c_void,
            (N * 4) as u32,
        )
    };
    if rc != 0 {
        count(counter::ERR_LOAD);
        return None;
    }
    let Ok(csum) = ctx.load::<u16>(csum_off) else {
        count(counter::ERR_LOAD);
        return None;
    };
    let store_flags = if csum == 0 {
        BPF_F_RECOMPUTE_CSUM as u64
    } else {
        0
    };
    // Warm what runs after the clock read (helper code, skb writability, the checksum's cache
    // line) with no-op calls: the same bytes written back, and a checksum change of 0. Cold,
    // each costs hundreds of ns that would otherwise sit between the stamp and the wire.
    if ctx.store(off, &old, 0).is_err() {
        count(counter::ERR_STORE);
        return None;
    }
    if ctx
        .l4_csum_replace(csum_off, 0, 0, BPF_F_MARK_MANGLED_0 as u64)
        .is_err()
    {
        count(counter::ERR_CSUM);
        return None;
    }
    Some(Before {
        off,
        csum_off,
        old,
        store_flags,
    })
}

/// Writes `new` over the prepared bytes and fixes the UDP checksum by the difference.
///
/// `bpf_l4_csum_replace` handles every checksum state: full checksum (field updated),
/// CHECKSUM_PARTIAL (field holds only the pseudo-header sum: left alone, the payload is summed
/// later), and IPv4 checksum 0 (BPF_F_MARK_MANGLED_0: left at 0, and a result of 0 becomes
/// 0xffff). The field and the payload change together, so a CHECKSUM_COMPLETE sum stays valid;
/// only when the field is 0 (no checksum) must skb->csum follow the payload change.
#[inline(always)]
fn commit<const N: usize>(ctx: &mut TcContext, b: &Before<N>, new: &[u32; N]) -> bool {
    if ctx.store(b.off, new, b.store_flags).is_err() {
        count(counter::ERR_STORE);
        return false;
    }
    let diff = csum_delta(&b.old, new);
    if ctx
        .l4_csum_replace(b.csum_off, 0, diff as u64, BPF_F_MARK_MANGLED_0 as u64)
        .is_err()
    {
        count(counter::ERR_CSUM);
        return false;
    }
    true
}

/// Writes the current TAI time into the Timestamp field (T1 or T3). Everything that does not
/// need the time happens before the clock is read, so the stamp is as close to the wire as TC
/// gets.
#[inline(always)]
fn stamp_egress(ctx: &mut TcContext, udp: &Udp, which: u32) {
    let Some((payload, _)) = probe_payload(ctx, udp) else {
        return;
    };
    let Some(before) = prepare::<2>(ctx, payload + wire::TIMESTAMP, udp.l4 + 6) else {
        return;
    };
    let (s, n) = split_ptp(tai_now());
    if commit(ctx, &before, &[s.to_be(), n.to_be()]) {
        count(which);
    }
}

/// The earliest trustworthy receive time in TAI, and where it came from.
#[inline(always)]
fn rx_time(ctx: &TcContext) -> (u64, u8) {
    let now = tai_now();
    let Some(cfg) = CONFIG.get(0) else {
        count(counter::ERR_MAP);
        return (now, RxStamp::SOURCE_TC_NOW);
    };
    if cfg.flags & Config::USE_SKB_RX_TSTAMP != 0 {
        let (ts, ty) = unsafe { ((*ctx.skb.skb).tstamp, (*ctx.skb.skb).tstamp_type) };
        let tai = match ty {
            SKB_CLOCK_REALTIME if ts != 0 => (ts as i64).wrapping_add(cfg.tai_offset_ns) as u64,
            SKB_CLOCK_TAI if ts != 0 => ts,
            _ => 0,
        };
        // Only an earlier stamp from the last second counts: anything else is not an RX stamp.
        if tai != 0 && tai <= now && now - tai < NSEC_PER_SEC {
            count(counter::RX_SKB_TSTAMP_USED);
            return (tai, RxStamp::SOURCE_SKB_RX);
        }
    }
    (now, RxStamp::SOURCE_TC_NOW)
}

#[inline(always)]
fn rx_block(ctx: &TcContext) -> RxStamp {
    let (t, source) = rx_time(ctx);
    let hw = unsafe { (*ctx.skb.skb).hwtstamp };
    if hw != 0 {
        count(counter::RX_HW_TSTAMP_SEEN);
    }
    let (s, n) = split_ptp(t);
    RxStamp {
        secs: s.to_be(),
        nsecs: n.to_be(),
        hw_hi: ((hw >> 32) as u32).to_be(),
        hw_lo: (hw as u32).to_be(),
        magic: RxStamp::MAGIC.to_be(),
        source,
        _pad: 0,
    }
}

#[inline(always)]
fn block_words(b: &RxStamp) -> [u32; 5] {
    // SAFETY: RxStamp is 20 bytes of plain integers, align 4.
    unsafe { core::mem::transmute_copy(b) }
}

/// Reflector ingress: T2 block into the request's MBZ octets.
#[inline(always)]
fn stamp_t2(ctx: &mut TcContext, udp: &Udp) {
    let Some((payload, _)) = probe_payload(ctx, udp) else {
        return;
    };
    let Some(before) = prepare::<5>(ctx, payload + wire::REQUEST_RX_STAMP, udp.l4 + 6) else {
        return;
    };
    if commit(ctx, &before, &block_words(&rx_block(ctx))) {
        count(counter::T2_STAMPED);
    }
}

/// Sender ingress: T4 block into the reply's echoed Extra Padding TLV, or into the map.
#[inline(always)]
fn stamp_t4(ctx: &mut TcContext, udp: &Udp) {
    let Some((payload, len)) = probe_payload(ctx, udp) else {
        return;
    };
    let block = rx_block(ctx);
    // In-band when the reply echoes our Extra Padding TLV with room for the block.
    if len >= wire::MIN_PROBE_LEN
        && let Ok(tlv) = ctx.load::<[u8; 4]>(payload + wire::TLV_START)
        && tlv[1] == wire::TLV_TYPE_EXTRA_PADDING
        && u16::from_be_bytes([tlv[2], tlv[3]]) as usize >= RxStamp::LEN
    {
        if let Some(before) = prepare::<5>(ctx, payload + wire::REPLY_RX_STAMP, udp.l4 + 6)
            && commit(ctx, &before, &block_words(&block))
        {
            count(counter::T4_STAMPED);
        }
        return;
    }
    let seq = match ctx.load::<u32>(payload + wire::SENDER_SEQ) {
        Ok(v) => u32::from_be(v),
        Err(_) => {
            count(counter::ERR_LOAD);
            return;
        }
    };
    let key = StampKey {
        port: udp.dst,
        _pad: 0,
        seq,
    };
    if T4_FALLBACK.insert(key, block, 0).is_err() {
        count(counter::ERR_MAP);
        return;
    }
    count(counter::T4_STAMPED);
    count(counter::T4_TO_MAP);
}

#[classifier]
pub fn meshprobe_egress(mut ctx: TcContext) -> i32 {
    if let Some(udp) = parse_udp(&ctx) {
        let f = port_flags(udp.src);
        if f != 0 {
            if f & port::SENDER != 0 {
                debug!(&ctx, "T1 sport={}", udp.src);
                stamp_egress(&mut ctx, &udp, counter::T1_STAMPED);
            } else if f & port::REFLECTOR != 0 {
                stamp_egress(&mut ctx, &udp, counter::T3_STAMPED);
            }
        }
    }
    TC_ACT_UNSPEC
}

#[classifier]
pub fn meshprobe_ingress(mut ctx: TcContext) -> i32 {
    if let Some(udp) = parse_udp(&ctx) {
        let f = port_flags(udp.dst);
        if f != 0 {
            if f & port::REFLECTOR != 0 {
                stamp_t2(&mut ctx, &udp);
            } else if f & port::SENDER != 0 {
                debug!(&ctx, "T4 dport={}", udp.dst);
                stamp_t4(&mut ctx, &udp);
            }
        }
    }
    TC_ACT_UNSPEC
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
/// packet that is not IP, or whose header is not in the linear data (counted as `ERR_PULL`).
#[inline(always)]
fn dst_key(ctx: &TcContext) -> Option<DelayDstKey> {
    let proto = u16::from_be(unsafe { (*ctx.skb.skb).protocol } as u16);
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

/// Delay element for tests and labs (this kernel has no netem): holds each matching packet for
/// the configured time by spinning with bpf_loop, on whatever hook it is attached to. The time
/// is the packet's destination's entry in `DELAY_DST` when there is one (`PER_DST` set), else
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
        match parse_udp(&ctx) {
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
        counter::DELAY_HELD
    } else {
        counter::DELAY_CUT_SHORT
    });
    if hit {
        count(counter::DELAY_DST_HIT);
    }
    TC_ACT_UNSPEC
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
