//! Layouts shared by the eBPF programs and userspace: one definition of each.
//!
//! Map values are `#[repr(C)]` with explicit widths and explicit padding (no bool, enum or
//! Option), so both sides agree byte for byte. `aya::Pod` is implemented behind the `user`
//! feature.
#![no_std]

/// IANA-assigned STAMP port (RFC 8762 §4.1).
pub const STAMP_DEFAULT_PORT: u16 = 862;

/// Byte offsets from the start of the UDP payload of a STAMP test packet, RFC 8762 §4.2.1 /
/// §4.3.1 (unauthenticated mode) with the RFC 8972 SSID. Multi-byte fields are big-endian.
pub mod wire {
    /// Base packet length, sender and reflector alike.
    pub const BASE_LEN: usize = 44;

    pub const SEQ: usize = 0;
    /// Sender: T1. Reflector: T3.
    pub const TIMESTAMP: usize = 4;
    pub const ERROR_ESTIMATE: usize = 12;
    pub const SSID: usize = 14;

    // Session-Sender test packet: 16..44 is MBZ on the wire.
    pub const REQ_MBZ: usize = 16;

    // Session-Reflector test packet.
    /// T2.
    pub const RECEIVE_TIMESTAMP: usize = 16;
    pub const SENDER_SEQ: usize = 24;
    pub const SENDER_TIMESTAMP: usize = 28;
    pub const SENDER_ERROR_ESTIMATE: usize = 36;
    pub const REPLY_MBZ1: usize = 38;
    pub const SENDER_TTL: usize = 40;
    pub const REPLY_MBZ2: usize = 41;

    /// RFC 8972 TLVs start after the base packet.
    pub const TLV_START: usize = BASE_LEN;
    /// STAMP TLV header: Flags(1) Type(1) Length(2).
    pub const TLV_HEADER_LEN: usize = 4;
    /// RFC 8972 §4.1 Extra Padding TLV.
    pub const TLV_TYPE_EXTRA_PADDING: u8 = 1;

    /// Where the sender-ingress program writes T4 in a reply: inside the value of an Extra
    /// Padding TLV that starts at `TLV_START` (the reflector echoes our padding).
    pub const REPLY_RX_STAMP: usize = TLV_START + TLV_HEADER_LEN;
    /// Where the reflector-ingress program writes T2 in a request: its MBZ octets.
    pub const REQUEST_RX_STAMP: usize = REQ_MBZ;

    /// Smallest request meshprobe sends: base + Extra Padding TLV big enough for a stamp block.
    pub const MIN_PROBE_LEN: usize = REPLY_RX_STAMP + super::RxStamp::LEN;

    /// Where our requests carry `Config::probe_tag` (4 octets, big-endian): the first octets of
    /// the Extra Padding value, which the reflector echoes and where the reply's T4 block goes.
    pub const PROBE_TAG: usize = REPLY_RX_STAMP;
    /// A request shorter than this has no room for the tag (base-length probes, 48..51 octets).
    pub const PROBE_TAG_END: usize = PROBE_TAG + 4;
    /// The shortest UDP payload that can carry one of our datagrams encapsulated (IP-in-UDP
    /// with no tunnel header: IPv4 20 + UDP 8 + base packet). A datagram of our socket shorter
    /// than this is our own probe, not a tunnel's outer packet: it needs no tag.
    pub const MIN_ENCAPSULATED: usize = 20 + 8 + BASE_LEN;
    const _: () = assert!(PROBE_TAG_END <= MIN_ENCAPSULATED);

    /// Error Estimate bits (RFC 4656 §4.1.2): S(1) Z(1) Scale(6) Multiplier(8).
    pub const EE_S: u16 = 0x8000;
    pub const EE_Z: u16 = 0x4000;
}

/// Byte offsets of the authenticated-mode STAMP test packets (RFC 8762 §4.2.2 Figure 4 and
/// §4.3.2 Figure 6, SSID per RFC 8972 §3), from the start of the UDP payload. Big-endian.
///
/// The HMAC (RFC 8762 §4.4: HMAC-SHA-256 truncated to 128 bits) covers every octet before it,
/// so nothing in `0..HMAC` may change after signing: the programs write no stamp into these
/// packets (`port::AUTH`).
pub mod auth_wire {
    /// Base packet length, sender and reflector alike.
    pub const BASE_LEN: usize = 112;

    pub const SEQ: usize = 0;
    // 4..16: MBZ (12 octets).
    /// Sender: T1. Reflector: T3.
    pub const TIMESTAMP: usize = 16;
    pub const ERROR_ESTIMATE: usize = 24;
    /// RFC 8972 §3: the first two octets of the MBZ that follows the Error Estimate.
    pub const SSID: usize = 26;

    // Session-Sender: 28..96 MBZ (68 octets after the SSID; 70 with it).
    pub const REQ_MBZ: usize = 28;

    // Session-Reflector: 28..32 MBZ.
    /// T2.
    pub const RECEIVE_TIMESTAMP: usize = 32;
    // 40..48 MBZ.
    pub const SENDER_SEQ: usize = 48;
    // 52..64 MBZ.
    pub const SENDER_TIMESTAMP: usize = 64;
    pub const SENDER_ERROR_ESTIMATE: usize = 72;
    // 74..80 MBZ.
    pub const SENDER_TTL: usize = 80;
    // 81..96 MBZ.

    /// HMAC over octets `0..HMAC`, both packet kinds.
    pub const HMAC: usize = 96;
    pub const HMAC_LEN: usize = 16;

    /// RFC 8972 TLVs start after the base packet (after its HMAC).
    pub const TLV_START: usize = BASE_LEN;
    /// Where our requests carry `Config::probe_tag`: the start of an Extra Padding value right
    /// after the base packet (as in open mode, one header further on).
    pub const PROBE_TAG: usize = TLV_START + super::wire::TLV_HEADER_LEN;
    pub const PROBE_TAG_END: usize = PROBE_TAG + 4;
    /// The shortest UDP payload that can carry one of our authenticated datagrams encapsulated
    /// (IPv4 20 + UDP 8 + base packet); see `wire::MIN_ENCAPSULATED`.
    pub const MIN_ENCAPSULATED: usize = 20 + 8 + BASE_LEN;
    const _: () = assert!(PROBE_TAG_END <= MIN_ENCAPSULATED);
    const _: () = assert!(HMAC + HMAC_LEN == BASE_LEN);
    const _: () = assert!(SENDER_TTL < HMAC && REQ_MBZ < HMAC);

    /// RFC 8972 §4.8 HMAC TLV type (IANA STAMP TLV registry).
    pub const TLV_TYPE_HMAC: u8 = 8;
}

/// Receive stamp block written in-band by the ingress programs (local only: it is written after
/// the packet has left the wire). All multi-byte fields hold big-endian values, as on the wire.
///
/// The block is trusted by its `key`, a per-load random secret (`Config::block_key`) that never
/// leaves the host: octets an attacker put where a block goes (in a packet the programs
/// skipped, e.g. a fragment) cannot carry it.
///
/// 20 octets, align 4, no implicit padding.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RxStamp {
    /// TAI seconds (PTPv2 truncated, low 32 bits), big-endian.
    pub secs: u32,
    /// Nanoseconds (low 30 bits) and one of `RxStamp::SOURCE_*` (top 2 bits), big-endian.
    pub nsecs: u32,
    /// Raw NIC hardware receive stamp (`__sk_buff.hwtstamp`, the NIC's own clock), high and
    /// low 32 bits, big-endian; zero when the NIC gave none.
    pub hw_hi: u32,
    pub hw_lo: u32,
    /// `Config::block_key` of the programs that wrote the block, big-endian.
    pub key: u32,
}

impl RxStamp {
    pub const LEN: usize = 20;
    /// Where the source sits in `nsecs` (nanoseconds are below 10^9 < 2^30).
    pub const SOURCE_SHIFT: u32 = 30;
    pub const NSECS_MASK: u32 = (1 << Self::SOURCE_SHIFT) - 1;
    /// `bpf_ktime_get_tai_ns()` taken when the TC program ran.
    pub const SOURCE_TC_NOW: u8 = 1;
    /// The kernel's software RX stamp (`skb->tstamp`, taken when the packet was queued to the
    /// stack, before TC), converted from CLOCK_REALTIME to TAI. Earlier than `SOURCE_TC_NOW`.
    pub const SOURCE_SKB_RX: u8 = 2;

    /// `nsecs` in host order: nanoseconds with the source on top.
    pub const fn pack_nsecs(nsecs: u32, source: u8) -> u32 {
        (nsecs & Self::NSECS_MASK) | ((source as u32) << Self::SOURCE_SHIFT)
    }
}

const _: () = assert!(core::mem::size_of::<RxStamp>() == RxStamp::LEN);

/// Flags in the `PORTS` map (one `u8` per UDP port, indexed by the port in host order), and
/// roles in the `SOCKETS` map (socket cookie → one of these).
pub mod port {
    /// Local port of a meshprobe Session-Sender socket: stamp T1 at egress, T4 at ingress.
    pub const SENDER: u8 = 1;
    /// Local port of a meshprobe Session-Reflector: stamp T2 at ingress, T3 at egress.
    pub const REFLECTOR: u8 = 2;
    /// With `SENDER` or `REFLECTOR`: the port speaks STAMP authenticated mode (or may, for an
    /// `optional` reflector). Its packets are never written to: the HMAC covers the stamps. The
    /// sender role records T1 in `T1_SENT` and T4 in `T4_FALLBACK` (keys read at the
    /// `auth_wire` offsets); the reflector role stamps nothing (T2 from the socket's RX stamp,
    /// T3 from userspace, both before signing).
    pub const AUTH: u8 = 4;
    pub const MAP_ENTRIES: u32 = 65536;
}

/// Most entries of the `SOCKETS` map: meshprobe's own probe sockets (one per `ping` session,
/// one sender and one reflector socket per agent).
pub const SOCKETS_MAX_ENTRIES: u32 = 1024;

/// Value of the single-entry `CONFIG` array map.
///
/// 32 octets, align 8, no implicit padding.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// CLOCK_TAI − CLOCK_REALTIME in ns (the kernel's TAI offset), for converting `skb->tstamp`.
    pub tai_offset_ns: i64,
    /// CLOCK_TAI − CLOCK_MONOTONIC in ns, kept current by userspace: what the programs add to
    /// `bpf_ktime_get_ns` in `kernel_clock::MONOTONIC` mode (unused in `TAI` mode).
    pub mono_to_tai_ns: i64,
    /// `CFG_*` bits.
    pub flags: u32,
    /// Per-load random tag our requests carry at `wire::PROBE_TAG` (big-endian on the wire),
    /// echoed in replies: what tells our probes from other datagrams with our socket or port
    /// (a tunnel's outer packet keeps the inner packet's socket). Public: it is on the wire.
    pub probe_tag: u32,
    /// Per-load random secret written into every `RxStamp` (`RxStamp::key`); never on the
    /// wire, never equal to `probe_tag`.
    pub block_key: u32,
    pub _pad: u32,
}

const _: () = assert!(core::mem::size_of::<Config>() == 32);

impl Config {
    /// Prefer the kernel's software RX stamp (`skb->tstamp`) when it is earlier than now.
    pub const USE_SKB_RX_TSTAMP: u32 = 1;
}

/// Which clock the programs read for their stamps: the value of their read-only global
/// `names::GLOBAL_KERNEL_CLOCK` (a `u8`), set by userspace before load. The verifier knows a
/// frozen read-only global's value and never looks at the branch of the other clock, so a
/// kernel without `bpf_ktime_get_tai_ns` (before 6.1) loads the programs in `MONOTONIC` mode.
pub mod kernel_clock {
    /// `bpf_ktime_get_tai_ns` (Linux ≥ 6.1).
    pub const TAI: u8 = 0;
    /// `bpf_ktime_get_ns` (CLOCK_MONOTONIC) + `Config::mono_to_tai_ns`.
    pub const MONOTONIC: u8 = 1;
}

/// `__sk_buff` fields newer than the oldest kernel the programs load on: bits of the programs'
/// read-only global `names::GLOBAL_SKB_FIELDS`, set by userspace before load. Like
/// `kernel_clock`, the verifier knows the value and never checks the access to a field that is
/// off; an older kernel refuses any access to it ("invalid bpf_context access").
pub mod skb_fields {
    /// `__sk_buff.hwtstamp` (Linux ≥ 5.16); without it the RX hardware stamp reads as 0.
    pub const HWTSTAMP: u8 = 1;
    /// `__sk_buff.tstamp_type` (Linux ≥ 5.18); without it `tstamp` at TC ingress is taken as
    /// CLOCK_REALTIME (before 5.18 it held nothing else there; the "earlier and within a
    /// second" rule still applies).
    pub const TSTAMP_TYPE: u8 = 2;
    pub const ALL: u8 = HWTSTAMP | TSTAMP_TYPE;
}

/// Key of the `T4_FALLBACK` LRU map: replies too short to carry T4 in-band (a reflector that
/// did not echo our Extra Padding TLV) get their T4 here instead.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct StampKey {
    /// Local (sender) UDP port, host order.
    pub port: u16,
    /// SSID of the reply, host order.
    pub ssid: u16,
    /// Session-Sender Sequence Number echoed in the reply, host order.
    pub seq: u32,
}

/// Value of the `T1_SENT` array map: T1 of a request as the egress program stamped it, so the
/// sender takes T1 from its own record, never from the reflector's echo. The slot is
/// `SentT1::slot(port, ssid, seq)`; a slot reused before its reply came back holds another key,
/// and userspace then has no record for that probe.
///
/// 24 octets, align 8, no implicit padding. Host byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SentT1 {
    /// TAI nanoseconds written into the request's Timestamp field (TC egress).
    pub t1: u64,
    /// TAI nanoseconds when the request was handed to the driver (`names::PROG_HANDOFF`, at
    /// `net_dev_start_xmit`); 0 when no hand-off stamp was taken.
    pub handoff: u64,
    pub seq: u32,
    /// Local (sender) UDP port.
    pub port: u16,
    pub ssid: u16,
}

impl SentT1 {
    pub const ENTRIES: u32 = 1 << 16;

    /// The slot of a request: consecutive sequence numbers of one session take consecutive
    /// slots from a point that depends on the SSID and port (both random), so sessions
    /// collide only when their windows of in-flight probes overlap.
    pub const fn slot(port: u16, ssid: u16, seq: u32) -> u32 {
        let base = (ssid as u32).wrapping_mul(0x9e37_79b9) ^ ((port as u32) << 16);
        base.wrapping_add(seq) & (Self::ENTRIES - 1)
    }
}

const _: () = assert!(core::mem::size_of::<SentT1>() == 24);

/// Key of the `FOLLOW_UP` LRU map: one reflector session, as its replies are addressed.
///
/// The hand-off program (`names::PROG_HANDOFF`) records there, per session, the driver
/// hand-off correction of the last reply the reflector sent; the reflector carries it to the
/// sender in its next reply (the follow-up TLV), since a tracepoint cannot write the packet.
///
/// 24 octets, align 2, no implicit padding.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FollowUpKey {
    /// The sender's address (the reply's destination), 16 octets in network order; IPv4 as an
    /// IPv4-mapped IPv6 address (`::ffff:a.b.c.d`).
    pub addr: [u8; 16],
    /// The sender's UDP port (the reply's destination port), host order.
    pub port: u16,
    /// The reflector's own UDP port (the reply's source port), host order.
    pub local_port: u16,
    /// SSID of the reply, host order.
    pub ssid: u16,
    pub _pad: u16,
}

const _: () = assert!(core::mem::size_of::<FollowUpKey>() == 24);

/// Value of the `FOLLOW_UP` map: the hand-off correction of one reply.
///
/// 16 octets, align 8, no implicit padding. Host byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FollowUp {
    /// The T3 the reply carried (TC egress stamp), TAI ns.
    pub t3: u64,
    /// Session-Sender Sequence Number the reply answered.
    pub sender_seq: u32,
    /// Hand-off time − `t3`, ns (never negative; a larger gap than `MAX_CORRECTION_NS` is not
    /// recorded).
    pub correction_ns: u32,
}

impl FollowUp {
    pub const ENTRIES: u32 = 16384;
    /// A correction this large is not a hand-off delay (a clock step, a stale slot).
    pub const MAX_CORRECTION_NS: u32 = 100_000_000;
}

const _: () = assert!(core::mem::size_of::<FollowUp>() == 16);

/// Offsets (octets) of the kernel struct members the tracing programs read, from the running
/// kernel's BTF (`btf_offsets::from_sys`, `user` feature): the programs are built once, the
/// layouts differ by kernel. The programs' read-only global `names::GLOBAL_KERNEL_OFFSETS`,
/// set before load. An offset of 0 for a member that is not at 0 means "not resolved".
///
/// 32 octets, align 2, no implicit padding.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelOffsets {
    /// `sk_buff.head` (pointer).
    pub skb_head: u16,
    /// `sk_buff.data` (pointer).
    pub skb_data: u16,
    /// `sk_buff.len` (u32).
    pub skb_len: u16,
    /// `sk_buff.protocol` (__be16).
    pub skb_protocol: u16,
    /// `sk_buff.network_header` (u16, from `head`).
    pub skb_network_header: u16,
    /// `sk_buff.transport_header` (u16, from `head`).
    pub skb_transport_header: u16,
    /// `sk_buff.sk` (pointer).
    pub skb_sk: u16,
    /// `sk_buff.dev` (pointer).
    pub skb_dev: u16,
    /// `sock.__sk_common.skc_num` (u16, local port, host order).
    pub sock_num: u16,
    /// `sock.__sk_common.skc_cookie` (atomic64; the `SO_COOKIE` value once it was read).
    pub sock_cookie: u16,
    /// `net_device.ifindex` (int).
    pub dev_ifindex: u16,
    /// `net_device.nd_net.net` (pointer).
    pub dev_net: u16,
    /// `net.ns.inum` (u32: the network namespace's inode number).
    pub net_inum: u16,
    /// `sk_buff.end` (u32 on 64-bit kernels: the offset of `skb_shared_info` from `head`).
    pub skb_end: u16,
    /// `skb_shared_info.gso_size` (u16; non-zero: a GSO skb, more than one datagram).
    pub shinfo_gso_size: u16,
    /// `sk_buff.data_len` (u32: the paged part of `len`; `len - data_len` is linear).
    pub skb_data_len: u16,
}

const _: () = assert!(core::mem::size_of::<KernelOffsets>() == 32);

impl KernelOffsets {
    /// All zero: what the programs' global holds until userspace sets it (a program that
    /// needs the offsets is then not loaded).
    pub const UNRESOLVED: Self = Self {
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
        skb_end: 0,
        shinfo_gso_size: 0,
        skb_data_len: 0,
    };
}

/// [`KernelOffsets`] from the running kernel's BTF (`/sys/kernel/btf/vmlinux`).
#[cfg(feature = "user")]
pub mod btf_offsets {
    extern crate std;
    use std::{format, string::String, vec::Vec};

    use super::KernelOffsets;

    pub const VMLINUX: &str = "/sys/kernel/btf/vmlinux";

    struct Bytes(Vec<u8>);

    impl btfparse::Readable for Bytes {
        fn read(&self, offset: u64, buffer: &mut [u8]) -> btfparse::Result<()> {
            let o = usize::try_from(offset).ok();
            match o.and_then(|o| self.0.get(o..o.checked_add(buffer.len())?)) {
                Some(src) => {
                    buffer.copy_from_slice(src);
                    Ok(())
                }
                None => Err(btfparse::Error::new(
                    btfparse::ErrorKind::IOError,
                    "read past the end of the BTF",
                )),
            }
        }
    }

    /// Why the offsets could not be resolved (the tracing programs are then not loaded).
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct OffsetsError(pub String);

    impl core::fmt::Display for OffsetsError {
        fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
            f.write_str(&self.0)
        }
    }

    impl std::error::Error for OffsetsError {}

    /// From the running kernel's BTF.
    pub fn from_sys() -> Result<KernelOffsets, OffsetsError> {
        let btf =
            std::fs::read(VMLINUX).map_err(|e| OffsetsError(format!("reading {VMLINUX}: {e}")))?;
        from_btf(btf)
    }

    /// From a BTF blob (the kernel's, or a test's).
    pub fn from_btf(btf: Vec<u8>) -> Result<KernelOffsets, OffsetsError> {
        let bytes = Bytes(btf);
        let ti = btfparse::TypeInformation::new(&bytes)
            .map_err(|e| OffsetsError(format!("parsing BTF: {e:?}")))?;
        let off = |ty: &str, path: &str| -> Result<u16, OffsetsError> {
            let id = ti
                .id_of(ty)
                .ok_or_else(|| OffsetsError(format!("BTF has no type {ty}")))?;
            match ti.offset_of(id, path) {
                Ok((_, btfparse::Offset::ByteOffset(o))) => u16::try_from(o)
                    .map_err(|_| OffsetsError(format!("{ty}.{path} at {o}: beyond 64 KiB"))),
                Ok((_, other)) => Err(OffsetsError(format!("{ty}.{path} is {other:?}"))),
                Err(e) => Err(OffsetsError(format!("{ty}.{path}: {e:?}"))),
            }
        };
        Ok(KernelOffsets {
            skb_head: off("sk_buff", "head")?,
            skb_data: off("sk_buff", "data")?,
            skb_len: off("sk_buff", "len")?,
            skb_protocol: off("sk_buff", "protocol")?,
            skb_network_header: off("sk_buff", "network_header")?,
            skb_transport_header: off("sk_buff", "transport_header")?,
            skb_sk: off("sk_buff", "sk")?,
            skb_dev: off("sk_buff", "dev")?,
            sock_num: off("sock", "__sk_common.skc_num")?,
            sock_cookie: off("sock", "__sk_common.skc_cookie")?,
            dev_ifindex: off("net_device", "ifindex")?,
            dev_net: off("net_device", "nd_net.net")?,
            net_inum: off("net", "ns.inum")?,
            skb_end: off("sk_buff", "end")?,
            shinfo_gso_size: off("skb_shared_info", "gso_size")?,
            skb_data_len: off("sk_buff", "data_len")?,
        })
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn this_kernel_resolves() {
            let Ok(btf) = std::fs::read(VMLINUX) else {
                std::eprintln!("SKIPPED: no {VMLINUX} on this machine");
                return;
            };
            let o = from_btf(btf).expect("offsets");
            // Pointers are 8-aligned; head precedes data; the header offsets are neighbours.
            assert_eq!(o.skb_head % 8, 0);
            assert_eq!(o.skb_data, o.skb_head + 8);
            assert!(o.skb_sk != o.skb_dev);
            assert!(o.sock_cookie > o.sock_num);
            assert!(o.skb_end > o.skb_transport_header && o.shinfo_gso_size > 0);
            // `unsigned int len, data_len;`
            assert_eq!(o.skb_data_len, o.skb_len + 4);
        }

        #[test]
        fn garbage_is_an_error() {
            assert!(from_btf(std::vec![0u8; 64]).is_err());
        }
    }
}

/// Who a Session-Reflector may answer: the rules the ingress program and the reflector share.
pub mod policy {
    /// Lowest source port a request may come from. Below it live well-known services (echo,
    /// chargen, DNS, NTP, STAMP's own 862) whose answer to a spoofed request would start a loop
    /// or an amplification (CVE-2024-2169), and port 0, which no socket sends from.
    pub const MIN_SRC_PORT: u16 = 1024;

    /// A request from this source port is never answered (nor stamped): it is privileged, or it
    /// is one of our reflector ports (two reflectors must never talk to each other).
    pub const fn refused_src_port(src: u16, src_is_reflector_port: bool) -> bool {
        src < MIN_SRC_PORT || src_is_reflector_port
    }
}

/// Per-CPU counters (`COUNTERS` per-CPU array map, one `u64` per index).
pub mod counter {
    pub const T1_STAMPED: u32 = 0;
    pub const T2_STAMPED: u32 = 1;
    pub const T3_STAMPED: u32 = 2;
    pub const T4_STAMPED: u32 = 3;
    /// T4 went to the fallback map (reply without room in-band).
    pub const T4_TO_MAP: u32 = 4;
    /// An ingress stamp used the kernel's earlier software RX stamp.
    pub const RX_SKB_TSTAMP_USED: u32 = 5;
    /// An ingress probe carried a NIC hardware RX stamp.
    pub const RX_HW_TSTAMP_SEEN: u32 = 6;
    // Skips and errors on packets addressed to a probe port.
    /// Payload shorter than the STAMP base packet, or UDP length beyond the packet.
    pub const SKIP_SHORT: u32 = 7;
    /// IPv4 fragment (or IPv6 fragment header): the STAMP header may not be here.
    pub const SKIP_FRAGMENT: u32 = 8;
    /// IPv6 extension header chain longer than we walk, or of a kind we do not walk.
    pub const SKIP_IPV6_EXT: u32 = 9;
    /// IPv4 header length field out of range.
    pub const SKIP_BAD_IHL: u32 = 10;
    /// An IP or UDP header not in the packet's linear data (truncated, or paged): not parsed.
    pub const ERR_PULL: u32 = 11;
    pub const ERR_LOAD: u32 = 12;
    pub const ERR_STORE: u32 = 13;
    pub const ERR_CSUM: u32 = 14;
    pub const ERR_MAP: u32 = 15;
    // Ownership skips: a datagram on a probe port that is not meshprobe's (left untouched).
    /// Egress: the sending socket is not one of ours (`SOCKETS`).
    pub const SKIP_NOT_OUR_SOCKET: u32 = 16;
    /// Sender role: our socket's datagram (egress) or a reply (ingress, no in-band rewrite)
    /// without our probe tag.
    pub const SKIP_NO_TAG: u32 = 17;
    /// Ingress: not addressed to this host at link level (`skb->pkt_type != PACKET_HOST`).
    pub const SKIP_NOT_HOST: u32 = 18;
    /// Ingress: destination address not local (forwarded or routed to a pod).
    pub const SKIP_NOT_LOCAL: u32 = 19;
    /// Reflector ingress: source port refused (`policy::refused_src_port`).
    pub const SKIP_SRC_PORT: u32 = 20;
    /// A probe on an authenticated-mode port (`port::AUTH`): left unwritten (its HMAC covers
    /// the stamps). Sender role: T1/T4 were recorded in the maps instead (also counted in
    /// `T1_STAMPED` / `T4_TO_MAP`).
    pub const SKIP_AUTH: u32 = 21;
    // The driver hand-off program (`names::PROG_HANDOFF`): its own stamps and skips, counted
    // once a datagram's socket port is a probe port.
    /// Sender: the hand-off time of a request went into its `T1_SENT` record.
    pub const HANDOFF_T1: u32 = 22;
    /// Reflector: the hand-off correction of a reply went into `FOLLOW_UP`.
    pub const HANDOFF_FOLLOW_UP: u32 = 23;
    /// The sending socket has a probe port but is not one of ours (`SOCKETS`).
    pub const HANDOFF_SKIP_NOT_OUR_SOCKET: u32 = 24;
    /// A GSO skb (more than one datagram): a probe is one segment.
    pub const HANDOFF_SKIP_GSO: u32 = 25;
    /// Not a whole, unfragmented UDP datagram of the socket's port with room for a STAMP
    /// packet, or a request without our probe tag.
    pub const HANDOFF_SKIP_NOT_PROBE: u32 = 26;
    /// Sender: the request's `T1_SENT` slot holds another request (or another T1).
    pub const HANDOFF_SKIP_NO_RECORD: u32 = 27;
    /// The hand-off time precedes the TC stamp or follows it by more than
    /// `FollowUp::MAX_CORRECTION_NS` (a clock step, a stale stamp).
    pub const HANDOFF_SKIP_CORRECTION: u32 = 28;
    /// Reflector in authenticated mode: replies are signed in userspace, no follow-up.
    pub const HANDOFF_SKIP_AUTH: u32 = 29;
    /// A read of kernel memory (`bpf_probe_read_kernel`) failed, or a header or payload field
    /// lay beyond the skb's linear data.
    pub const HANDOFF_ERR_READ: u32 = 30;
    /// A later hand-off of a packet already handed off once: the same skb sent on by another
    /// device (a kernel that keeps the socket on a packet forwarded through a veth peer's
    /// namespace). The first hand-off, where it left the host, stands.
    pub const HANDOFF_SKIP_AGAIN: u32 = 31;
    pub const COUNT: u32 = 32;

    /// Names for display, indexed by counter.
    pub const NAMES: [&str; COUNT as usize] = [
        "t1_stamped",
        "t2_stamped",
        "t3_stamped",
        "t4_stamped",
        "t4_to_map",
        "rx_skb_tstamp_used",
        "rx_hw_tstamp_seen",
        "skip_short",
        "skip_fragment",
        "skip_ipv6_ext",
        "skip_bad_ihl",
        "err_pull",
        "err_load",
        "err_store",
        "err_csum",
        "err_map",
        "skip_not_our_socket",
        "skip_no_tag",
        "skip_not_host",
        "skip_not_local",
        "skip_src_port",
        "skip_auth",
        "handoff_t1",
        "handoff_follow_up",
        "handoff_skip_not_our_socket",
        "handoff_skip_gso",
        "handoff_skip_not_probe",
        "handoff_skip_no_record",
        "handoff_skip_correction",
        "handoff_skip_auth",
        "handoff_err_read",
        "handoff_skip_again",
    ];
}

/// The lab/test delay element (`meshprobe-delay`, its own BPF object `delay-ebpf`): layouts,
/// names and counters. Not part of the probe's object.
pub mod delay {
    /// Value of the single-entry `DELAY` array map used by the test/lab delay element.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct DelayConfig {
        /// Hold each matching packet this long (0 = pass through).
        pub delay_ns: u64,
        /// Only hold UDP packets to or from this port (0 = every packet).
        pub udp_port: u16,
        /// `DelayConfig::*` bits.
        pub flags: u16,
        pub _pad: [u8; 4],
    }

    impl DelayConfig {
        /// The `DELAY_DST` map has entries: look up each (matching) packet's destination there
        /// first, and hold it for that time if found (else for `delay_ns`). Without this bit the
        /// map is not consulted, so a plain `--delay` pays nothing for it.
        pub const PER_DST: u16 = 1;
    }

    const _: () = assert!(core::mem::size_of::<DelayConfig>() == 16);

    /// Key of the `DELAY_DST` hash map: a packet's IP destination address, 16 octets in network
    /// order; IPv4 as an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`). The value is the hold time
    /// in nanoseconds (`u64`, host order).
    ///
    /// 16 octets, align 1, no padding.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
    pub struct DelayDstKey {
        pub addr: [u8; 16],
    }

    impl DelayDstKey {
        /// Most entries of the `DELAY_DST` map.
        pub const MAX_ENTRIES: u32 = 1024;

        /// `::ffff:a.b.c.d` for an IPv4 address given as its four octets.
        pub const fn v4(o: [u8; 4]) -> Self {
            Self {
                addr: [
                    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, o[0], o[1], o[2], o[3],
                ],
            }
        }

        pub const fn v6(addr: [u8; 16]) -> Self {
            Self { addr }
        }
    }

    const _: () = assert!(core::mem::size_of::<DelayDstKey>() == 16);

    /// Names of the programs and maps in the delay element's BPF object.
    pub mod names {
        pub const PROG_DELAY: &str = "meshprobe_delay";
        pub const MAP_DELAY: &str = "DELAY";
        pub const MAP_DELAY_DST: &str = "DELAY_DST";
        pub const MAP_COUNTERS: &str = "DELAY_COUNTERS";
    }

    /// Per-CPU counters of the delay element (`DELAY_COUNTERS`, one `u64` per index).
    pub mod counter {
        /// Packets held, and holds cut short by the loop bound.
        pub const HELD: u32 = 0;
        pub const CUT_SHORT: u32 = 1;
        /// Packets whose hold time came from the `DELAY_DST` map (also counted in `HELD` or
        /// `CUT_SHORT`).
        pub const DST_HIT: u32 = 2;
        pub const COUNT: u32 = 3;

        /// Names for display, indexed by counter.
        pub const NAMES: [&str; COUNT as usize] =
            ["delay_held", "delay_cut_short", "delay_dst_hit"];
    }
}

/// The tracepoint reference (`trace-ebpf`, loaded by `meshprobe-tracer`; tests and bench
/// only, never the `meshprobe` binary): per-probe instants at the driver hand-off and at the
/// receive entry, without cloning the skb as a capture tap does.
pub mod trace {
    /// Where an event was taken: the kernel tracepoint (`tp_btf/NAME`).
    pub mod point {
        /// `net_dev_start_xmit`: the driver hand-off, after the packet taps of `xmit_one`.
        pub const XMIT: u8 = 1;
        /// `netif_rx`: a packet queued to the backlog (veth, tunnels), before the taps.
        pub const NETIF_RX: u8 = 2;
        /// `netif_receive_skb`: the stack's entry, before the taps (later than `NETIF_RX` for
        /// one packet that passes both).
        pub const RECEIVE_SKB: u8 = 3;
        /// `napi_gro_receive_entry`: a NIC driver's NAPI hand-over, before GRO.
        pub const GRO_RECEIVE: u8 = 4;

        pub const fn name(p: u8) -> &'static str {
            match p {
                XMIT => "xmit",
                NETIF_RX => "netif_rx",
                RECEIVE_SKB => "netif_receive_skb",
                GRO_RECEIVE => "napi_gro_receive",
                _ => "unknown",
            }
        }

        /// A receive point (the others are the hand-off).
        pub const fn is_rx(p: u8) -> bool {
            matches!(p, NETIF_RX | RECEIVE_SKB | GRO_RECEIVE)
        }
    }

    /// `TraceEvent::kind`: which STAMP packet, by the traced port's side.
    pub mod kind {
        /// Destination port traced: a Session-Sender's request (key: SSID, Sequence Number).
        pub const REQUEST: u8 = 1;
        /// Source port traced: a Session-Reflector's reply (key: SSID, Session-Sender Sequence
        /// Number).
        pub const REPLY: u8 = 2;
        /// ICMP / ICMPv6 echo request (key: identifier in `ssid`, sequence in `seq`), traced
        /// when the global `names::GLOBAL_ICMP_ECHO` is set.
        pub const ECHO_REQUEST: u8 = 3;
        /// ICMP / ICMPv6 echo reply (key as `ECHO_REQUEST`).
        pub const ECHO_REPLY: u8 = 4;

        pub const fn name(k: u8) -> &'static str {
            match k {
                REQUEST => "request",
                REPLY => "reply",
                ECHO_REQUEST => "echo_request",
                ECHO_REPLY => "echo_reply",
                _ => "unknown",
            }
        }
    }

    /// Values of the `TRACE_PORTS` array (one `u8` per UDP port, host order): the STAMP layout
    /// the port speaks, so that the key is read at the right offsets.
    pub mod port {
        /// Unauthenticated mode (`wire`).
        pub const OPEN: u8 = 1;
        /// Authenticated mode (`auth_wire`).
        pub const AUTH: u8 = 2;
        /// Not STAMP: a UDP ping-pong whose payload starts with a 64-bit big-endian message
        /// sequence (sockperf); its low 32 bits go in `seq`, `ssid` is 0.
        pub const SEQ64: u8 = 3;
    }

    /// One probe packet seen at one point. Ring buffer record of `names::MAP_EVENTS`.
    ///
    /// 32 octets, align 8, no implicit padding. Host byte order.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct TraceEvent {
        /// `bpf_ktime_get_tai_ns()` when the tracepoint fired (CLOCK_TAI).
        pub tai_ns: u64,
        /// Inode of the device's network namespace (`dev->nd_net.net->ns.inum`).
        pub netns: u32,
        pub ifindex: u32,
        /// Sequence Number (request) or Session-Sender Sequence Number (reply).
        pub seq: u32,
        pub sport: u16,
        pub dport: u16,
        pub ssid: u16,
        /// One of `point::*`.
        pub point: u8,
        /// One of `kind::*`.
        pub kind: u8,
        pub _pad: u32,
    }

    const _: () = assert!(core::mem::size_of::<TraceEvent>() == 32);

    /// Bytes of the `EVENTS` ring buffer: 32768 events of 32 octets (+ 8 of header each).
    pub const RING_BYTES: u32 = 1 << 21;

    /// Per-CPU counters (`TRACE_COUNTERS`, one `u64` per index). Only packets to or from a
    /// traced port reach any of them.
    pub mod counter {
        /// Events written to the ring buffer.
        pub const EVENTS: u32 = 0;
        /// Ring buffer full: the event was lost.
        pub const DROP_RING_FULL: u32 = 1;
        /// UDP payload shorter than the STAMP base packet of the port's mode (8 octets for
        /// `port::SEQ64`), or ICMP echo header beyond the linear data.
        pub const SKIP_SHORT: u32 = 2;
        /// IPv4 or IPv6 fragment.
        pub const SKIP_FRAGMENT: u32 = 3;
        /// IPv6 extension header chain longer than we walk.
        pub const SKIP_IPV6_EXT: u32 = 4;
        /// IPv4 header length field out of range.
        pub const SKIP_BAD_IHL: u32 = 5;
        /// A kernel read failed (`bpf_probe_read_kernel`), or a header lies beyond the skb.
        pub const ERR_READ: u32 = 6;
        /// Both ports traced: neither a request nor a reply of ours.
        pub const SKIP_BOTH_PORTS: u32 = 7;
        pub const COUNT: u32 = 8;

        pub const NAMES: [&str; COUNT as usize] = [
            "events",
            "drop_ring_full",
            "skip_short",
            "skip_fragment",
            "skip_ipv6_ext",
            "skip_bad_ihl",
            "err_read",
            "skip_both_ports",
        ];
    }

    /// Names of the programs, maps and globals of the `trace-ebpf` object.
    pub mod names {
        pub const PROG_XMIT: &str = "meshprobe_trace_xmit";
        pub const PROG_NETIF_RX: &str = "meshprobe_trace_netif_rx";
        pub const PROG_RECEIVE_SKB: &str = "meshprobe_trace_receive_skb";
        pub const PROG_GRO_RECEIVE: &str = "meshprobe_trace_gro_receive";
        /// (program, tracepoint) of every program of the object.
        pub const PROGRAMS: [(&str, &str); 4] = [
            (PROG_XMIT, "net_dev_start_xmit"),
            (PROG_NETIF_RX, "netif_rx"),
            (PROG_RECEIVE_SKB, "netif_receive_skb"),
            (PROG_GRO_RECEIVE, "napi_gro_receive_entry"),
        ];
        pub const MAP_EVENTS: &str = "EVENTS";
        pub const MAP_PORTS: &str = "TRACE_PORTS";
        pub const MAP_COUNTERS: &str = "TRACE_COUNTERS";
        /// `KernelOffsets`, as in the probe's object (`super::super::names`).
        pub const GLOBAL_KERNEL_OFFSETS: &str = super::super::names::GLOBAL_KERNEL_OFFSETS;
        /// A `u8`: 1 = trace ICMP / ICMPv6 echo requests and replies too.
        pub const GLOBAL_ICMP_ECHO: &str = "TRACE_ICMP_ECHO";
    }
}

/// Names of the programs and maps in the probe's BPF object.
pub mod names {
    pub const PROG_EGRESS: &str = "meshprobe_egress";
    pub const PROG_INGRESS: &str = "meshprobe_ingress";
    pub const MAP_PORTS: &str = "PORTS";
    pub const MAP_SOCKETS: &str = "SOCKETS";
    pub const MAP_CONFIG: &str = "CONFIG";
    pub const MAP_COUNTERS: &str = "COUNTERS";
    pub const MAP_T4_FALLBACK: &str = "T4_FALLBACK";
    pub const MAP_T1_SENT: &str = "T1_SENT";
    pub const MAP_FOLLOW_UP: &str = "FOLLOW_UP";
    /// The driver hand-off program (`tp_btf/net_dev_start_xmit`).
    pub const PROG_HANDOFF: &str = "meshprobe_handoff";
    /// The read-only global with the kernel's struct offsets (`KernelOffsets`).
    pub const GLOBAL_KERNEL_OFFSETS: &str = "KERNEL_OFFSETS";
    /// The read-only global that selects the clock (`kernel_clock`).
    pub const GLOBAL_KERNEL_CLOCK: &str = "KERNEL_CLOCK";
    /// The read-only global with the `skb_fields` bits the kernel has.
    pub const GLOBAL_SKB_FIELDS: &str = "SKB_FIELDS";
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain `repr(C)` integer structs with explicit padding fields.
    unsafe impl aya::Pod for super::RxStamp {}
    unsafe impl aya::Pod for super::Config {}
    unsafe impl aya::Pod for super::StampKey {}
    unsafe impl aya::Pod for super::SentT1 {}
    unsafe impl aya::Pod for super::FollowUpKey {}
    unsafe impl aya::Pod for super::FollowUp {}
    unsafe impl aya::Pod for super::KernelOffsets {}
    unsafe impl aya::Pod for super::trace::TraceEvent {}
    unsafe impl aya::Pod for super::delay::DelayConfig {}
    unsafe impl aya::Pod for super::delay::DelayDstKey {}
}
