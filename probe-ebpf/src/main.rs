//! TC programs that stamp STAMP test packets with kernel timestamps, in place.
//!
//! - egress, source port is a Session-Sender's: T1 into the Timestamp field;
//! - egress, source port is a Session-Reflector's: T3 into the Timestamp field;
//! - ingress, destination is a Session-Reflector: T2 block into the request's MBZ octets;
//! - ingress, destination is a Session-Sender: T4 block into the reply's Extra Padding TLV
//!   (or into the `T4_FALLBACK` map when the reply has no room).
//!
//! A port in authenticated mode (`port::AUTH`) is never written to: the HMAC covers the stamps.
//! Its sender role records T1 in `T1_SENT` and T4 in `T4_FALLBACK` only; its reflector role
//! stamps nothing (userspace takes T2 from the socket's RX stamp and T3 before signing).
//!
//! The driver hand-off program (`meshprobe_handoff`, tp_btf `net_dev_start_xmit`, after the
//! TC hook and the capture taps, just before the driver) cannot write the packet: for a
//! request of ours it adds the hand-off time to the request's `T1_SENT` record; for a reply of
//! our reflector it records the correction (hand-off − T3) in `FOLLOW_UP`, which the reflector
//! carries in its next reply.
//!
//! Every TC program returns `TC_ACT_UNSPEC` (TCX_NEXT) so other programs on the hook still run.
//! A packet that is not UDP to or from a registered port leaves after a handful of loads.
//!
//! The programs touch only meshprobe's own packets. The port (`PORTS`) is a prefilter, never
//! enough on its own; each skip below is counted:
//! - egress: the sending socket's cookie is in `SOCKETS` with that role (a forwarded packet or
//!   another process's datagram from the same port has another socket, or none); sender role:
//!   a request with room for it must carry our `Config::probe_tag` (a VXLAN/Geneve outer packet
//!   keeps the inner packet's socket and may hash its source port onto ours);
//! - ingress: addressed to this host at link level (`PACKET_HOST`) and to a local address (FIB
//!   lookup: never forwarded, routed-to-pod or bridged traffic); reflector role: a source port
//!   the reflector may answer (`policy::refused_src_port`); sender role: the in-band T4 only
//!   into a reply echoing our tag, anything else gets at most a `T4_FALLBACK` entry.
//!
//! Receive stamp blocks carry `Config::block_key`, a secret, so userspace never trusts octets
//! that an attacker placed where a block goes in a packet these programs skipped.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::{
        BPF_F_MARK_MANGLED_0, BPF_F_RECOMPUTE_CSUM, BPF_FIB_LKUP_RET_FWD_DISABLED,
        BPF_FIB_LKUP_RET_NOT_FWDED, TC_ACT_UNSPEC, bpf_fib_lookup as FibParams,
    },
    helpers::{
        bpf_fib_lookup, bpf_get_socket_cookie, bpf_ktime_get_ns, bpf_ktime_get_tai_ns,
        bpf_skb_load_bytes,
    },
    macros::{btf_tracepoint, classifier, map},
    maps::{Array, HashMap, LruHashMap, PerCpuArray},
    programs::{BtfTracePointContext, TcContext},
};
use aya_log_ebpf::debug;
use probe_common::{
    Config, FollowUp, FollowUpKey, KernelOffsets, RxStamp, SOCKETS_MAX_ENTRIES, SentT1, StampKey,
    auth_wire, counter, kernel_clock, policy, port, skb_fields, wire,
};
use probe_ebpf::{
    ETH_HLEN, ETH_P_IP, IPPROTO_UDP, Skip, UDP_HLEN, Udp,
    skb::{self, KAddr, L3From, SkbUdp, btf_load},
};

/// The clock of every stamp (`probe_common::kernel_clock`): a read-only global userspace sets
/// before load (`names::GLOBAL_KERNEL_CLOCK`). Frozen `.rodata`: the verifier knows its value,
/// explores only that clock's branch and removes the other, so a kernel without
/// `bpf_ktime_get_tai_ns` never sees that call in `MONOTONIC` mode.
#[unsafe(no_mangle)]
static KERNEL_CLOCK: u8 = kernel_clock::TAI;

/// The `__sk_buff` fields this kernel has (`probe_common::skb_fields`), set by userspace before
/// load (`names::GLOBAL_SKB_FIELDS`); frozen `.rodata` like `KERNEL_CLOCK`.
#[unsafe(no_mangle)]
static SKB_FIELDS: u8 = skb_fields::ALL;

#[inline(always)]
fn has_skb_field(bit: u8) -> bool {
    // SAFETY: a u8 global; volatile so that the compiler keeps the load the verifier resolves.
    unsafe { core::ptr::read_volatile(&SKB_FIELDS) & bit != 0 }
}

/// The kernel's struct member offsets (`names::GLOBAL_KERNEL_OFFSETS`), set by userspace
/// before load from the kernel's BTF; frozen `.rodata`, so the hand-off program's member loads
/// are at offsets the verifier knows. All zero (unresolved) here: the program is then not
/// loaded.
#[unsafe(no_mangle)]
static KERNEL_OFFSETS: KernelOffsets = KernelOffsets::UNRESOLVED;

#[map(name = "PORTS")]
static PORTS: Array<u8> = Array::with_max_entries(port::MAP_ENTRIES, 0);

/// meshprobe's own probe sockets: socket cookie (`SO_COOKIE`) → role (`port::*`).
#[map(name = "SOCKETS")]
static SOCKETS: HashMap<u64, u8> = HashMap::with_max_entries(SOCKETS_MAX_ENTRIES, 0);

#[map(name = "CONFIG")]
static CONFIG: Array<Config> = Array::with_max_entries(1, 0);

#[map(name = "COUNTERS")]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

#[map(name = "T4_FALLBACK")]
static T4_FALLBACK: LruHashMap<StampKey, RxStamp> = LruHashMap::with_max_entries(16384, 0);

/// T1 of each request the sender role stamped, by `SentT1::slot`.
#[map(name = "T1_SENT")]
static T1_SENT: Array<SentT1> = Array::with_max_entries(SentT1::ENTRIES, 0);

/// The hand-off correction of each reflector session's last reply (`FollowUpKey`), which the
/// reflector carries in its next reply (read and deleted by userspace).
#[map(name = "FOLLOW_UP")]
static FOLLOW_UP: LruHashMap<FollowUpKey, FollowUp> =
    LruHashMap::with_max_entries(FollowUp::ENTRIES, 0);

const NSEC_PER_SEC: u64 = 1_000_000_000;
/// `__sk_buff.tstamp_type` for a CLOCK_REALTIME receive stamp (BPF_SKB_CLOCK_REALTIME).
const SKB_CLOCK_REALTIME: u8 = 0;
const SKB_CLOCK_TAI: u8 = 2;
/// `skb->pkt_type` of a frame addressed to this host's link-level address.
const PACKET_HOST: u32 = 0;
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

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
    probe_ebpf::ptr_at_noted(ctx, off, &note)
}

/// Counts what the shared parser gave up on.
#[inline(always)]
fn note(s: Skip) {
    count(match s {
        Skip::Pull => counter::ERR_PULL,
        Skip::BadIhl => counter::SKIP_BAD_IHL,
        Skip::Fragment => counter::SKIP_FRAGMENT,
        Skip::Ipv6Ext => counter::SKIP_IPV6_EXT,
    });
}

#[inline(always)]
fn parse_udp(ctx: &TcContext) -> Option<Udp> {
    probe_ebpf::parse_udp(ctx, note)
}

#[inline(always)]
fn port_flags(p: u16) -> u8 {
    match PORTS.get(p as u32) {
        Some(f) => *f,
        None => 0,
    }
}

#[inline(always)]
fn config() -> Option<&'static Config> {
    let c = CONFIG.get(0);
    if c.is_none() {
        count(counter::ERR_MAP);
    }
    c
}

/// Egress: the role (among `flags`, the source port's) of the socket that sent this packet,
/// 0 when the socket is not one of ours (counted).
#[inline(always)]
fn our_socket_role(ctx: &TcContext, flags: u8) -> u8 {
    // 0 for a packet without a socket (forwarded): never in the map.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.skb.skb as *mut _) };
    // SAFETY: a u8 map value, read once.
    let role = match unsafe { SOCKETS.get(cookie) } {
        Some(r) => *r & flags,
        None => 0,
    };
    if role == 0 {
        count(counter::SKIP_NOT_OUR_SOCKET);
    }
    role
}

/// Ingress: the packet is for this host, link and network level. A frame for another MAC
/// (bridged to a pod, promiscuous capture) is not `PACKET_HOST`; a packet routed through this
/// host (to a pod, a VM, another node) is not a local destination in the FIB. The FIB is the
/// kernel's own answer, so nothing has to be kept in sync with the host's addresses.
#[inline(always)]
fn for_this_host(ctx: &TcContext, udp: &Udp) -> bool {
    // SAFETY: reads of the context the verifier allows for TC programs.
    let (pkt_type, ifindex, proto) = unsafe {
        let skb = &*ctx.skb.skb;
        (skb.pkt_type, skb.ifindex, u16::from_be(skb.protocol as u16))
    };
    if pkt_type != PACKET_HOST {
        count(counter::SKIP_NOT_HOST);
        return false;
    }
    // SAFETY: a plain C struct of integers; all-zero is its empty value.
    let mut p: FibParams = unsafe { core::mem::zeroed() };
    p.l4_protocol = IPPROTO_UDP;
    p.sport = udp.src.to_be();
    p.dport = udp.dst.to_be();
    p.ifindex = ifindex;
    if proto == ETH_P_IP {
        let Some(a) = ptr_at::<[u32; 2]>(ctx, ETH_HLEN + 12) else {
            return false;
        };
        // SAFETY: bounds checked by ptr_at.
        let a = unsafe { *a };
        p.family = AF_INET;
        p.__bindgen_anon_3.ipv4_src = a[0];
        p.__bindgen_anon_4.ipv4_dst = a[1];
    } else {
        let Some(a) = ptr_at::<[u32; 8]>(ctx, ETH_HLEN + 8) else {
            return false;
        };
        // SAFETY: bounds checked by ptr_at.
        let a = unsafe { *a };
        p.family = AF_INET6;
        p.__bindgen_anon_3.ipv6_src = [a[0], a[1], a[2], a[3]];
        p.__bindgen_anon_4.ipv6_dst = [a[4], a[5], a[6], a[7]];
    }
    let rc = unsafe {
        bpf_fib_lookup(
            ctx.skb.skb as *mut _,
            &mut p,
            core::mem::size_of::<FibParams>() as i32,
            0,
        )
    };
    // NOT_FWDED: a local (or broadcast) route. FWD_DISABLED: the interface does not forward,
    // so the kernel delivers the packet locally or drops it; it never goes on to anyone else.
    // Anything else (a unicast route, no route, an error) is not for us.
    if rc == BPF_FIB_LKUP_RET_NOT_FWDED as i64 || rc == BPF_FIB_LKUP_RET_FWD_DISABLED as i64 {
        return true;
    }
    count(counter::SKIP_NOT_LOCAL);
    false
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

/// The programs read CLOCK_MONOTONIC and add `Config::mono_to_tai_ns` (no TAI helper).
#[inline(always)]
fn monotonic_clock() -> bool {
    // SAFETY: a u8 global; volatile so that the compiler keeps the load the verifier resolves.
    unsafe { core::ptr::read_volatile(&KERNEL_CLOCK) == kernel_clock::MONOTONIC }
}

/// The current TAI time: `bpf_ktime_get_tai_ns`, or in monotonic mode `bpf_ktime_get_ns` +
/// `mono_to_tai_ns` (`Config::mono_to_tai_ns`; ignored in TAI mode).
#[inline(always)]
fn tai_now(mono_to_tai_ns: i64) -> u64 {
    if monotonic_clock() {
        unsafe { bpf_ktime_get_ns() }.wrapping_add(mono_to_tai_ns as u64)
    } else {
        unsafe { bpf_ktime_get_tai_ns() }
    }
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

/// Reflector egress: writes the current TAI time into the reply's Timestamp field (T3).
/// Everything that does not need the time happens before the clock is read, so the stamp is as
/// close to the wire as TC gets.
#[inline(always)]
fn stamp_t3(ctx: &mut TcContext, udp: &Udp) {
    let Some((payload, _)) = probe_payload(ctx, udp) else {
        return;
    };
    // The offset only where the clock needs it: TAI mode reads no map here.
    let mono_to_tai_ns = if monotonic_clock() {
        let Some(cfg) = config() else {
            return;
        };
        cfg.mono_to_tai_ns
    } else {
        0
    };
    let Some(before) = prepare::<2>(ctx, payload + wire::TIMESTAMP, udp.l4 + 6) else {
        return;
    };
    let (s, n) = split_ptp(tai_now(mono_to_tai_ns));
    if commit(ctx, &before, &[s.to_be(), n.to_be()]) {
        count(counter::T3_STAMPED);
    }
}

/// Loads a big-endian field of the payload (a load error is counted).
#[inline(always)]
fn load_be<T: Copy>(ctx: &TcContext, off: usize) -> Option<T> {
    match ctx.load::<T>(off) {
        Ok(v) => Some(v),
        Err(_) => {
            count(counter::ERR_LOAD);
            None
        }
    }
}

/// Sender egress: T1 into a request of ours, and T1 into `T1_SENT` so userspace has its own
/// record of it. A request with room for the probe tag must carry ours: this is what tells our
/// request from a tunnel's outer packet that kept our socket (one without room for the tag is
/// shorter than any packet that could encapsulate one of ours, `wire::MIN_ENCAPSULATED`).
#[inline(always)]
fn stamp_t1(ctx: &mut TcContext, udp: &Udp) {
    let Some((payload, len)) = probe_payload(ctx, udp) else {
        return;
    };
    let Some(cfg) = config() else {
        return;
    };
    if len >= wire::PROBE_TAG_END {
        let Some(tag) = load_be::<u32>(ctx, payload + wire::PROBE_TAG) else {
            return;
        };
        if u32::from_be(tag) != cfg.probe_tag {
            count(counter::SKIP_NO_TAG);
            return;
        }
    }
    // Everything but the clock read and the stores before the clock.
    let Some(seq) = load_be::<u32>(ctx, payload + wire::SEQ) else {
        return;
    };
    let Some(ssid) = load_be::<u16>(ctx, payload + wire::SSID) else {
        return;
    };
    let (seq, ssid) = (u32::from_be(seq), u16::from_be(ssid));
    let record = T1_SENT.get_ptr_mut(SentT1::slot(udp.src, ssid, seq));
    let Some(before) = prepare::<2>(ctx, payload + wire::TIMESTAMP, udp.l4 + 6) else {
        return;
    };
    let now = tai_now(cfg.mono_to_tai_ns);
    let (s, n) = split_ptp(now);
    if commit(ctx, &before, &[s.to_be(), n.to_be()]) {
        count(counter::T1_STAMPED);
        if let Some(r) = record {
            // SAFETY: an array slot; a concurrent writer of the same slot is another request
            // of the same session, and userspace checks the key it reads back.
            unsafe {
                *r = SentT1 {
                    t1: now,
                    handoff: 0,
                    seq,
                    port: udp.src,
                    ssid,
                }
            };
        }
    }
}

/// The earliest trustworthy receive time in TAI, and where it came from.
#[inline(always)]
fn rx_time(ctx: &TcContext, cfg: &Config) -> (u64, u8) {
    let now = tai_now(cfg.mono_to_tai_ns);
    if cfg.flags & Config::USE_SKB_RX_TSTAMP != 0 {
        let ts = unsafe { (*ctx.skb.skb).tstamp };
        let ty = if has_skb_field(skb_fields::TSTAMP_TYPE) {
            unsafe { (*ctx.skb.skb).tstamp_type }
        } else {
            SKB_CLOCK_REALTIME
        };
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
fn rx_block(ctx: &TcContext, cfg: &Config) -> RxStamp {
    let (t, source) = rx_time(ctx, cfg);
    let hw = if has_skb_field(skb_fields::HWTSTAMP) {
        unsafe { (*ctx.skb.skb).hwtstamp }
    } else {
        0
    };
    if hw != 0 {
        count(counter::RX_HW_TSTAMP_SEEN);
    }
    let (s, n) = split_ptp(t);
    RxStamp {
        secs: s.to_be(),
        nsecs: RxStamp::pack_nsecs(n, source).to_be(),
        hw_hi: ((hw >> 32) as u32).to_be(),
        hw_lo: (hw as u32).to_be(),
        key: cfg.block_key.to_be(),
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
    let Some(cfg) = config() else {
        return;
    };
    let Some(before) = prepare::<5>(ctx, payload + wire::REQUEST_RX_STAMP, udp.l4 + 6) else {
        return;
    };
    if commit(ctx, &before, &block_words(&rx_block(ctx, cfg))) {
        count(counter::T2_STAMPED);
    }
}

/// Sender ingress: T4 block into the reply's echoed Extra Padding TLV when it echoes our probe
/// tag there, else into the map (a reply without room: a reflector that does not echo our
/// padding). A datagram with room but without our tag is not rewritten (counted): it gets at
/// most a map entry, which userspace reads only for a reply it has validated.
#[inline(always)]
fn stamp_t4(ctx: &mut TcContext, udp: &Udp) {
    let Some((payload, len)) = probe_payload(ctx, udp) else {
        return;
    };
    let Some(cfg) = config() else {
        return;
    };
    let block = rx_block(ctx, cfg);
    let mut ours = true;
    if len >= wire::MIN_PROBE_LEN
        && let Ok(tlv) = ctx.load::<[u8; 4]>(payload + wire::TLV_START)
        && tlv[1] == wire::TLV_TYPE_EXTRA_PADDING
        && u16::from_be_bytes([tlv[2], tlv[3]]) as usize >= RxStamp::LEN
    {
        if let Ok(tag) = ctx.load::<u32>(payload + wire::PROBE_TAG)
            && u32::from_be(tag) == cfg.probe_tag
        {
            if let Some(before) = prepare::<5>(ctx, payload + wire::REPLY_RX_STAMP, udp.l4 + 6)
                && commit(ctx, &before, &block_words(&block))
            {
                count(counter::T4_STAMPED);
            }
            return;
        }
        count(counter::SKIP_NO_TAG);
        ours = false;
    }
    let Some(seq) = load_be::<u32>(ctx, payload + wire::SENDER_SEQ) else {
        return;
    };
    let Some(ssid) = load_be::<u16>(ctx, payload + wire::SSID) else {
        return;
    };
    let key = StampKey {
        port: udp.dst,
        ssid: u16::from_be(ssid),
        seq: u32::from_be(seq),
    };
    if T4_FALLBACK.insert(key, block, 0).is_err() {
        count(counter::ERR_MAP);
        return;
    }
    if ours {
        count(counter::T4_STAMPED);
        count(counter::T4_TO_MAP);
    }
}

/// Sender egress, authenticated mode: T1 into `T1_SENT` only. The request carries the
/// userspace T1 it was signed with; its HMAC covers that field, so the packet stays as it is.
/// The probe tag check is open mode's, one TLV header further on (`auth_wire::PROBE_TAG`).
#[inline(always)]
fn record_t1(ctx: &TcContext, udp: &Udp) {
    let Some((payload, len)) = probe_payload(ctx, udp) else {
        return;
    };
    let Some(cfg) = config() else {
        return;
    };
    count(counter::SKIP_AUTH);
    if len < auth_wire::BASE_LEN {
        count(counter::SKIP_SHORT);
        return;
    }
    if len >= auth_wire::PROBE_TAG_END {
        let Some(tag) = load_be::<u32>(ctx, payload + auth_wire::PROBE_TAG) else {
            return;
        };
        if u32::from_be(tag) != cfg.probe_tag {
            count(counter::SKIP_NO_TAG);
            return;
        }
    }
    let Some(seq) = load_be::<u32>(ctx, payload + auth_wire::SEQ) else {
        return;
    };
    let Some(ssid) = load_be::<u16>(ctx, payload + auth_wire::SSID) else {
        return;
    };
    let (seq, ssid) = (u32::from_be(seq), u16::from_be(ssid));
    let Some(r) = T1_SENT.get_ptr_mut(SentT1::slot(udp.src, ssid, seq)) else {
        count(counter::ERR_MAP);
        return;
    };
    let now = tai_now(cfg.mono_to_tai_ns);
    // SAFETY: as in `stamp_t1`.
    unsafe {
        *r = SentT1 {
            t1: now,
            handoff: 0,
            seq,
            port: udp.src,
            ssid,
        }
    };
    count(counter::T1_STAMPED);
}

/// Sender ingress, authenticated mode: T4 into `T4_FALLBACK` only, keyed at the authenticated
/// reply's offsets (an `optional` sender's open reply, shorter than that, at open mode's).
/// Userspace reads an entry only for a reply it has verified and validated.
#[inline(always)]
fn record_t4(ctx: &TcContext, udp: &Udp) {
    let Some((payload, len)) = probe_payload(ctx, udp) else {
        return;
    };
    let Some(cfg) = config() else {
        return;
    };
    let block = rx_block(ctx, cfg);
    count(counter::SKIP_AUTH);
    let (seq_at, ssid_at) = if len >= auth_wire::BASE_LEN {
        (auth_wire::SENDER_SEQ, auth_wire::SSID)
    } else {
        (wire::SENDER_SEQ, wire::SSID)
    };
    let Some(seq) = load_be::<u32>(ctx, payload + seq_at) else {
        return;
    };
    let Some(ssid) = load_be::<u16>(ctx, payload + ssid_at) else {
        return;
    };
    let key = StampKey {
        port: udp.dst,
        ssid: u16::from_be(ssid),
        seq: u32::from_be(seq),
    };
    if T4_FALLBACK.insert(key, block, 0).is_err() {
        count(counter::ERR_MAP);
        return;
    }
    count(counter::T4_STAMPED);
    count(counter::T4_TO_MAP);
}

/// A datagram from a probe port: stamped only if one of our sockets sent it, in its role.
#[inline(always)]
fn egress_probe(ctx: &mut TcContext, udp: &Udp, flags: u8) {
    let role = our_socket_role(ctx, flags);
    if role & port::SENDER != 0 {
        debug!(ctx, "T1 sport={}", udp.src);
        if role & port::AUTH != 0 {
            record_t1(ctx, udp);
        } else {
            stamp_t1(ctx, udp);
        }
    } else if role & port::REFLECTOR != 0 {
        if role & port::AUTH != 0 {
            // T3 is signed with the reply in userspace.
            count(counter::SKIP_AUTH);
        } else {
            stamp_t3(ctx, udp);
        }
    }
}

/// A datagram to a probe port: stamped only if it is for this host and fits the role.
#[inline(always)]
fn ingress_probe(ctx: &mut TcContext, udp: &Udp, flags: u8) {
    if !for_this_host(ctx, udp) {
        return;
    }
    if flags & port::REFLECTOR != 0 {
        // What the reflector will not answer is not stamped either.
        if policy::refused_src_port(udp.src, port_flags(udp.src) & port::REFLECTOR != 0) {
            count(counter::SKIP_SRC_PORT);
            return;
        }
        if flags & port::AUTH != 0 {
            // The sender's HMAC covers the octets T2 would go into.
            count(counter::SKIP_AUTH);
            return;
        }
        stamp_t2(ctx, udp);
    } else if flags & port::SENDER != 0 {
        debug!(ctx, "T4 dport={}", udp.dst);
        if flags & port::AUTH != 0 {
            record_t4(ctx, udp);
        } else {
            stamp_t4(ctx, udp);
        }
    }
}

#[classifier]
pub fn meshprobe_egress(mut ctx: TcContext) -> i32 {
    if let Some(udp) = parse_udp(&ctx) {
        let f = port_flags(udp.src);
        if f != 0 {
            egress_probe(&mut ctx, &udp, f);
        }
    }
    TC_ACT_UNSPEC
}

#[classifier]
pub fn meshprobe_ingress(mut ctx: TcContext) -> i32 {
    if let Some(udp) = parse_udp(&ctx) {
        let f = port_flags(udp.dst);
        if f != 0 {
            ingress_probe(&mut ctx, &udp, f);
        }
    }
    TC_ACT_UNSPEC
}

/// `now − tc` when the hand-off time `now` is not before the TC stamp `tc` and within
/// `FollowUp::MAX_CORRECTION_NS` of it (else counted): the one rule for both roles.
#[inline(always)]
fn handoff_correction(now: u64, tc: u64) -> Option<u32> {
    match now.checked_sub(tc) {
        Some(d) if d <= FollowUp::MAX_CORRECTION_NS as u64 => Some(d as u32),
        _ => {
            count(counter::HANDOFF_SKIP_CORRECTION);
            None
        }
    }
}

/// A payload field (a fault is counted; the offsets are within the payload length checked
/// before).
#[inline(always)]
fn kread<T: Copy>(d: &SkbUdp, off: usize) -> Option<T> {
    let v = d.at(off);
    if v.is_none() {
        count(counter::HANDOFF_ERR_READ);
    }
    v
}

/// TAI ns from a STAMP timestamp as written on the wire (PTPv2 truncated, big-endian).
#[inline(always)]
fn ptp_ns(ts: [u8; 8]) -> u64 {
    let s = u32::from_be_bytes([ts[0], ts[1], ts[2], ts[3]]) as u64;
    let n = u32::from_be_bytes([ts[4], ts[5], ts[6], ts[7]]) as u64;
    s * NSEC_PER_SEC + n
}

/// Sender: the hand-off time `now` into the `T1_SENT` record of a request of ours, when the
/// record is this request's: same (seq, port, ssid), and in open mode the T1 the request
/// carries (the TC stamp). The probe tag as the TC program checks it, at the mode's offsets.
#[inline(always)]
fn handoff_t1(d: &SkbUdp, auth: bool, cfg: &Config, now: u64) {
    let (base, tag_at, ssid_at) = if auth {
        (auth_wire::BASE_LEN, auth_wire::PROBE_TAG, auth_wire::SSID)
    } else {
        (wire::BASE_LEN, wire::PROBE_TAG, wire::SSID)
    };
    let len = d.payload_len as usize;
    if len < base {
        count(counter::HANDOFF_SKIP_NOT_PROBE);
        return;
    }
    if len >= tag_at + 4 {
        let Some(tag) = kread::<[u8; 4]>(d, tag_at) else {
            return;
        };
        if u32::from_be_bytes(tag) != cfg.probe_tag {
            count(counter::HANDOFF_SKIP_NOT_PROBE);
            return;
        }
    }
    // Seq (0..4) and, in open mode, T1 (4..12) sit together at the start.
    let Some(head) = kread::<[u8; 12]>(d, 0) else {
        return;
    };
    let Some(ssid) = kread::<[u8; 2]>(d, ssid_at) else {
        return;
    };
    let seq = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
    let ssid = u16::from_be_bytes(ssid);
    let Some(r) = T1_SENT.get_ptr_mut(SentT1::slot(d.src, ssid, seq)) else {
        count(counter::ERR_MAP);
        return;
    };
    // SAFETY: an array slot; a concurrent writer is another request of the same session,
    // and userspace checks the key it reads back.
    let rec = unsafe { &mut *r };
    let t1_matches = auth
        || ptp_ns([
            head[4], head[5], head[6], head[7], head[8], head[9], head[10], head[11],
        ]) == rec.t1;
    if rec.seq != seq || rec.port != d.src || rec.ssid != ssid || rec.t1 == 0 || !t1_matches {
        count(counter::HANDOFF_SKIP_NO_RECORD);
        return;
    }
    if rec.handoff != 0 {
        count(counter::HANDOFF_SKIP_AGAIN);
        return;
    }
    if handoff_correction(now, rec.t1).is_some() {
        rec.handoff = now;
        count(counter::HANDOFF_T1);
    }
}

/// Reflector (open mode): the hand-off correction of this reply (hand-off time `now` − the T3
/// that TC egress wrote into it) into `FOLLOW_UP`, keyed by the session the reply goes to.
#[inline(always)]
fn handoff_follow_up(d: &SkbUdp, now: u64) {
    if (d.payload_len as usize) < wire::BASE_LEN {
        count(counter::HANDOFF_SKIP_NOT_PROBE);
        return;
    }
    let Some(p) = kread::<[u8; wire::BASE_LEN]>(d, 0) else {
        return;
    };
    let t = wire::TIMESTAMP;
    let t3 = ptp_ns([
        p[t],
        p[t + 1],
        p[t + 2],
        p[t + 3],
        p[t + 4],
        p[t + 5],
        p[t + 6],
        p[t + 7],
    ]);
    let Some(correction_ns) = handoff_correction(now, t3) else {
        return;
    };
    // The session's address: the reply's destination, in the `FollowUpKey` form.
    let Some((_, daddr)) = d.addrs() else {
        count(counter::HANDOFF_ERR_READ);
        return;
    };
    let q = wire::SENDER_SEQ;
    let key = FollowUpKey {
        addr: daddr,
        port: d.dst,
        local_port: d.src,
        ssid: u16::from_be_bytes([p[wire::SSID], p[wire::SSID + 1]]),
        _pad: 0,
    };
    let value = FollowUp {
        t3,
        sender_seq: u32::from_be_bytes([p[q], p[q + 1], p[q + 2], p[q + 3]]),
        correction_ns,
    };
    // SAFETY: a map value read once.
    if let Some(e) = unsafe { FOLLOW_UP.get(key) }
        && e.sender_seq == value.sender_seq
        && e.t3 == t3
    {
        count(counter::HANDOFF_SKIP_AGAIN);
        return;
    }
    if FOLLOW_UP.insert(key, value, 0).is_err() {
        count(counter::ERR_MAP);
        return;
    }
    count(counter::HANDOFF_FOLLOW_UP);
}

/// A datagram handed to the driver by a socket with a probe port (`flags`).
#[inline(always)]
fn handoff_probe(skb: *const u8, sk: *const u8, num: u16, flags: u8) {
    let o = &KERNEL_OFFSETS;
    // SAFETY: `sk` is the skb's `struct sock *`, loaded by BTF type; the cookie is the one
    // `SO_COOKIE` set when userspace registered the socket.
    let cookie: u64 = unsafe { btf_load(sk, skb::off(&o.sock_cookie)) };
    // SAFETY: a u8 map value, read once.
    let role = match unsafe { SOCKETS.get(cookie) } {
        Some(r) => *r & flags,
        None => 0,
    };
    if role == 0 {
        count(counter::HANDOFF_SKIP_NOT_OUR_SOCKET);
        return;
    }
    if role & port::SENDER == 0 && role & port::AUTH != 0 {
        // Our authenticated reflector: T3 is signed with the reply in userspace.
        count(counter::HANDOFF_SKIP_AUTH);
        return;
    }
    let Some(cfg) = config() else {
        return;
    };
    // The hand-off time: first, before the reads of the skb and the payload (a score of kernel
    // reads took ~1 µs), so the instant is the tracepoint's.
    let now = tai_now(cfg.mono_to_tai_ns);
    // SAFETY: `skb` is the tracepoint's BTF-typed `struct sk_buff *`.
    match unsafe { skb::gso_size(skb, o) } {
        Some(0) => {}
        Some(_) => {
            count(counter::HANDOFF_SKIP_GSO);
            return;
        }
        None => {
            count(counter::HANDOFF_ERR_READ);
            return;
        }
    }
    // SAFETY: a global; volatile so that the compiler keeps the loads the verifier resolves.
    let offsets = unsafe { core::ptr::read_volatile(o) };
    // A header beyond the linear data (or a faulting read) is a read error; the rest of what
    // the parse gives up on is not a probe (nor is what it passes over without a word).
    let noted = core::cell::Cell::new(false);
    let d = skb::skb_udp(skb as KAddr, &offsets, L3From::Network, |s| {
        noted.set(true);
        count(match s {
            Skip::Pull => counter::HANDOFF_ERR_READ,
            Skip::BadIhl | Skip::Fragment | Skip::Ipv6Ext => counter::HANDOFF_SKIP_NOT_PROBE,
        });
    });
    let Some(d) = d else {
        if !noted.get() {
            count(counter::HANDOFF_SKIP_NOT_PROBE);
        }
        return;
    };
    // The socket's own whole datagram (not a first fragment, not a tunnel's outer packet that
    // kept the socket).
    if d.fragment || d.src != num {
        count(counter::HANDOFF_SKIP_NOT_PROBE);
        return;
    }
    if role & port::SENDER != 0 {
        handoff_t1(&d, role & port::AUTH != 0, cfg, now);
    } else {
        handoff_follow_up(&d, now);
    }
}

/// Driver hand-off of every packet of the host: out at the first of no socket, a socket
/// whose port is not a probe port.
#[btf_tracepoint(function = "net_dev_start_xmit")]
pub fn meshprobe_handoff(ctx: BtfTracePointContext) -> i32 {
    let skb: *const u8 = ctx.arg(0);
    let o = &KERNEL_OFFSETS;
    // SAFETY: the tracepoint's first argument is the skb, typed by BTF.
    let sk: *const u8 = unsafe { btf_load(skb, skb::off(&o.skb_sk)) };
    if sk.is_null() {
        return 0;
    }
    // SAFETY: `sk` typed by BTF (loaded from `skb->sk`).
    let num: u16 = unsafe { btf_load(sk, skb::off(&o.sock_num)) };
    let f = port_flags(num);
    if f != 0 {
        handoff_probe(skb, sk, num, f);
    }
    0
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
