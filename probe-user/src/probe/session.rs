//! The Session-Sender core that `meshprobe ping` and the agent's prober share: random SSID and
//! initial sequence number, the in-flight table, reply validation, turning a valid reply into a
//! [`Measurement`], and the loss / duplicate / late / reordered classification. Sockets,
//! schedules and statistics stay with the callers; every rule about replies lives here.
//!
//! What a reply must be to count (anything else is a [`Rejection`], counted by reason, and never
//! a sample, a duplicate or a late reply):
//! - authenticated mode (see [`encode_probe`], [`decode_reply`]): an HMAC that verifies under
//!   our current or next key (`required`), or that or an open reply (`optional`, counted);
//! - from the address and port the probe went to (IPv4-mapped IPv6 compares equal to IPv4);
//! - with our SSID (0 is accepted for RFC 8762-only reflectors, after the address check);
//! - for a sequence number we sent and still remember;
//! - with T1 as we recorded it (kernel mode), or, without a record, an echo between our own
//!   send and receive times;
//! - with sane reflected stamps: T2 ≤ T3, turnaround ≤ the timeout, 0 ≤ network RTT ≤ app RTT.
//!
//! Classification of a valid reply:
//! - first reply to an outstanding probe: a sample (reordered if a later probe was answered
//!   first);
//! - another copy of an answered probe's reply, received before that probe's deadline (send +
//!   timeout): a duplicate (the network duplicated it). A copy after the deadline is a replay:
//!   rejected as `replayed`;
//! - first reply to a probe already declared lost: late (the probe stays lost); any further copy
//!   is `replayed`.
//!
//! The two-step T3 (see `wire::follow_up`): our reflector carries the hand-off correction of
//! its reply N in reply N+1. So the newest sample of a session whose reflector filled our
//! follow-up TLV is held; the next first reply of the session releases it, corrected when that
//! reply's follow-up reports on it (and the correction passes `corrected`), else as it is.
//! A held sample is also released when its probe's deadline passes ([`Session::expire`]) and on
//! [`Session::drain`]: every sample comes out once. Replies without our filled TLV (a third
//! party's echo with U set, a probe too small to carry it, authenticated mode) are released at
//! once. Classification (sample, duplicate, late, reordered) is per reply, as before.
use std::{
    collections::{HashMap, VecDeque},
    net::SocketAddr,
    time::Duration,
};

use rand::Rng as _;
use tokio::time::Instant;

use crate::stats::Figures;
pub use crate::stats::{Rejection, RejectionCounts};

use super::{StampSource, Stamping, rx_time};
use crate::{
    auth::{Auth, Mode, Verified},
    net::{ProbeSocket, canonical},
    wire::{
        ErrorEstimate, FollowUpSeen, ReflectorPacket, SenderPacket, Timestamp, TimestampFormat,
        WireError,
    },
};

/// Random draws before the SSID allocator falls back to a scan.
const SSID_DRAWS: usize = 64;

/// A random non-zero SSID that `in_use` does not hold (RFC 8972 §3; random so that an
/// off-path host cannot guess it). Bounded: a few random draws, then one scan of the whole
/// space from a random point; `None` when all 65 535 are in use.
pub fn alloc_ssid(in_use: impl Fn(u16) -> bool) -> Option<u16> {
    let mut rng = rand::rng();
    for _ in 0..SSID_DRAWS {
        let s = rng.random_range(1..=u16::MAX);
        if !in_use(s) {
            return Some(s);
        }
    }
    let start: u16 = rng.random_range(1..=u16::MAX);
    (0..u16::MAX)
        .map(|i| ((u32::from(start) - 1 + u32::from(i)) % u32::from(u16::MAX) + 1) as u16)
        .find(|&s| !in_use(s))
}

/// The four timestamps of one answered probe and the figures derived from them.
#[derive(Clone, Copy, Debug)]
pub struct Measurement {
    pub t1: u64,
    pub t2: u64,
    pub t3: u64,
    pub t4: u64,
    pub t1_source: StampSource,
    /// What our reflector's follow-up TLV said; `Unspecified` without one.
    pub t2_source: StampSource,
    /// `Handoff` / `HwTx` once a follow-up corrected T3; `Tc` from our reflector without one;
    /// `Unspecified` from a reflector that did not fill our follow-up TLV.
    pub t3_source: StampSource,
    pub t4_source: StampSource,
    /// (T4 − T1) − (T3 − T2).
    pub network_rtt: i64,
    /// T3 − T2: the reflector's think time.
    pub turnaround: i64,
    /// User-space send to user-space receive.
    pub app_rtt: i64,
    /// app RTT − (T4 − T1): the sender's own stack and scheduling.
    pub stack_overhead: i64,
}

impl Measurement {
    /// What the statistics keep of it.
    pub fn figures(&self) -> Figures {
        Figures {
            network_rtt: self.network_rtt,
            turnaround: self.turnaround,
            app_rtt: self.app_rtt,
            stack_overhead: self.stack_overhead,
        }
    }
}

/// One received datagram on a sender socket.
pub struct Reply<'a> {
    pub payload: &'a [u8],
    pub from: SocketAddr,
    /// Kernel software RX stamp of the reply (socket), CLOCK_REALTIME.
    pub rx_sw_realtime_ns: Option<u64>,
    /// User-space clock (TAI) at receive.
    pub app_rx_tai: u64,
}

impl<'a> Reply<'a> {
    /// A datagram as the socket gave it, read at `app_rx_tai`.
    pub fn received(payload: &'a [u8], rx: &crate::net::Received, app_rx_tai: u64) -> Self {
        Self {
            payload,
            from: rx.from,
            rx_sw_realtime_ns: rx.rx_sw_realtime_ns,
            app_rx_tai,
        }
    }
}

/// What validating a reply needs from the caller besides the session.
pub struct ReplyEnv<'a> {
    pub st: &'a Stamping,
    /// The sender socket's local port: with the SSID and sequence number, the key of the
    /// kernel's T1 record and T4 fallback map (unique: SSIDs are unique per socket).
    pub lport: u16,
    /// Look T4 up in the kernel's fallback map when the reply has no in-band block (ping). The
    /// agent turns on its socket's RX stamps instead (the same skb stamp, no system call per
    /// reply).
    pub t4_map: bool,
    pub tx_stamps: &'a mut TxStamps,
    /// Our requests went out signed (authenticated mode): their T1 field is the userspace
    /// stamp they were signed with, so the kernel's own record is T1 and the echo is not
    /// compared with it.
    pub signed_t1: bool,
}

/// One answered probe, ready to be reported (after the two-step, see the module
/// documentation).
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    pub seq: u32,
    pub m: Measurement,
    /// A later probe was answered first.
    pub reordered: bool,
    pub app_tx_tai: u64,
    /// The request's TTL / Hop Limit at the reflector, from the reply.
    pub ttl: u8,
    /// The reply's UDP payload octets.
    pub len: usize,
}

/// The samples one reply released, oldest first: the held one, and its own when it is not
/// held in turn.
#[derive(Debug, Default)]
pub struct Released([Option<Sample>; 2]);

impl Released {
    fn push(&mut self, s: Sample) {
        let free = self.0.iter_mut().find(|x| x.is_none());
        debug_assert!(free.is_some(), "a reply releases at most two samples");
        if let Some(slot) = free {
            *slot = Some(s);
        }
    }
}

impl IntoIterator for Released {
    type Item = Sample;
    type IntoIter = std::iter::Flatten<std::array::IntoIter<Option<Sample>, 2>>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter().flatten()
    }
}

/// What a reply's follow-up TLV did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FollowUpUse {
    /// Nothing to apply: no correction, or one for a sample not held.
    None,
    /// Corrected the held sample's T3.
    Applied,
    /// Malformed, or a correction that fails `corrected`: not used (counted).
    Ignored,
}

/// A reply that counts.
#[derive(Debug)]
pub enum Outcome {
    /// First reply to an outstanding probe. Its sample is held or released (`released`).
    Sample {
        seq: u32,
        /// A later probe was answered first.
        reordered: bool,
        /// Kernel mode without a T1 record: the echo was used (it lay within our own send and
        /// receive times).
        t1_unrecorded: bool,
        follow_up: FollowUpUse,
        /// Samples to report now, oldest first.
        released: Released,
    },
    /// Another copy of an answered probe's reply, within its deadline.
    Duplicate { seq: u32 },
    /// The first reply to a probe already declared lost.
    Late { seq: u32 },
}

/// A probe whose deadline passed without a reply.
#[derive(Clone, Copy, Debug)]
pub struct Lost {
    pub seq: u32,
    pub app_tx_tai: u64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum State {
    #[default]
    Unused,
    Outstanding,
    Answered,
    TimedOut,
    /// Timed out, then answered late once.
    LateAnswered,
}

#[derive(Clone, Copy, Default)]
struct Slot {
    seq: u32,
    state: State,
    tx_key: u32,
    app_tx_tai: u64,
    /// Send + timeout.
    deadline: Option<Instant>,
}

/// The newest sample, waiting for the follow-up in the next reply until its probe's deadline.
struct Held {
    sample: Sample,
    deadline: Instant,
}

/// The agent keeps per-peer memory fixed: its configuration refuses a timeout / interval at or
/// above this (a session's ring then stays at most 1024 slots).
pub const AGENT_MAX_IN_FLIGHT: usize = 512;

/// Slots of the smallest ring: 64 probes of memory (at 1 probe/s, a minute).
const MIN_SLOTS: usize = 64;

/// One Session-Sender session: one peer, one SSID.
pub struct Session {
    peer: SocketAddr,
    ssid: u16,
    timeout: Duration,
    next_seq: u32,
    /// The last `slots.len()` sequence numbers sent, at `seq % len`. Grows (doubles) rather
    /// than overwrite an outstanding probe, so its size follows timeout / interval.
    slots: Vec<Slot>,
    /// Outstanding probes in send order with their deadlines (send + timeout, so also in
    /// deadline order); entries answered meanwhile are dropped lazily.
    deadlines: VecDeque<(u32, Instant)>,
    outstanding: usize,
    highest_answered: Option<u32>,
    held: Option<Held>,
}

impl Session {
    /// A session with a random initial sequence number; its ring holds at least the probes
    /// `timeout / interval` keeps in flight.
    pub fn new(peer: SocketAddr, ssid: u16, timeout: Duration, interval: Duration) -> Self {
        Self::with_first_seq(peer, ssid, timeout, interval, rand::rng().random())
    }

    fn with_first_seq(
        peer: SocketAddr,
        ssid: u16,
        timeout: Duration,
        interval: Duration,
        first_seq: u32,
    ) -> Self {
        let in_flight = timeout.as_nanos() / interval.as_nanos().max(1);
        let len = (2 * in_flight.min(1 << 20) as usize + 2)
            .next_power_of_two()
            .max(MIN_SLOTS);
        Self {
            peer: canonical(peer),
            ssid,
            timeout,
            next_seq: first_seq,
            slots: vec![Slot::default(); len],
            deadlines: VecDeque::new(),
            outstanding: 0,
            highest_answered: None,
            held: None,
        }
    }

    pub fn ssid(&self) -> u16 {
        self.ssid
    }

    /// The sequence number the next probe gets.
    pub fn next_seq(&self) -> u32 {
        self.next_seq
    }

    /// Probes sent and neither answered nor timed out.
    pub fn in_flight(&self) -> bool {
        self.outstanding > 0
    }

    /// When the oldest outstanding probe times out, or the held sample is due (whichever
    /// comes first).
    pub fn next_deadline(&self) -> Option<Instant> {
        let probe = self.deadlines.front().map(|&(_, d)| d);
        let held = self.held.as_ref().map(|h| h.deadline);
        match (probe, held) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The held sample, if any, for a session that stops: nothing is left unreported.
    pub fn drain(&mut self) -> Option<Sample> {
        self.held.take().map(|h| h.sample)
    }

    fn index(&self, seq: u32) -> usize {
        seq as usize & (self.slots.len() - 1)
    }

    fn slot(&self, seq: u32) -> Option<&Slot> {
        let s = &self.slots[self.index(seq)];
        (s.seq == seq && s.state != State::Unused).then_some(s)
    }

    fn slot_mut(&mut self, seq: u32) -> Option<&mut Slot> {
        let i = self.index(seq);
        let s = &mut self.slots[i];
        (s.seq == seq && s.state != State::Unused).then_some(s)
    }

    /// Doubles the ring, keeping every slot at its new index.
    fn grow(&mut self) {
        let mut slots = vec![Slot::default(); self.slots.len() * 2];
        let mask = slots.len() - 1;
        for s in self.slots.iter().filter(|s| s.state != State::Unused) {
            slots[s.seq as usize & mask] = *s;
        }
        self.slots = slots;
    }

    /// Registers the next probe (sent at `app_tx_tai`, socket TX stamp key `tx_key`); returns
    /// its sequence number.
    pub fn sent(&mut self, app_tx_tai: u64, tx_key: u32, deadline: Instant) -> u32 {
        let seq = self.next_seq;
        while self.slots[self.index(seq)].state == State::Outstanding {
            self.grow();
        }
        let i = self.index(seq);
        self.slots[i] = Slot {
            seq,
            state: State::Outstanding,
            tx_key,
            app_tx_tai,
            deadline: Some(deadline),
        };
        self.deadlines.push_back((seq, deadline));
        self.outstanding += 1;
        self.next_seq = seq.wrapping_add(1);
        seq
    }

    /// Declares an outstanding probe lost now (the kernel refused to send it); false if it is
    /// not outstanding.
    pub fn fail(&mut self, seq: u32) -> bool {
        let Some(s) = self.slot_mut(seq).filter(|s| s.state == State::Outstanding) else {
            return false;
        };
        s.state = State::TimedOut;
        self.outstanding -= 1;
        self.trim();
        true
    }

    /// Declares every outstanding probe whose deadline is `now` or earlier lost; `lost` gets
    /// each, oldest first. Returns the held sample when its own deadline has passed too (no
    /// follow-up came in time).
    #[must_use = "a released sample must be reported"]
    pub fn expire(
        &mut self,
        now: Instant,
        tx_stamps: &mut TxStamps,
        mut lost: impl FnMut(Lost),
    ) -> Option<Sample> {
        while let Some(&(seq, deadline)) = self.deadlines.front() {
            let i = self.index(seq);
            let s = &mut self.slots[i];
            let outstanding = s.seq == seq && s.state == State::Outstanding;
            if outstanding && deadline > now {
                break;
            }
            self.deadlines.pop_front();
            if !outstanding {
                continue;
            }
            s.state = State::TimedOut;
            self.outstanding -= 1;
            tx_stamps.forget(s.tx_key);
            lost(Lost {
                seq,
                app_tx_tai: s.app_tx_tai,
            });
        }
        self.held.take_if(|h| h.deadline <= now).map(|h| h.sample)
    }

    /// Drops resolved probes from the front of the deadline queue.
    fn trim(&mut self) {
        while let Some(&(seq, _)) = self.deadlines.front() {
            if self
                .slot(seq)
                .is_some_and(|s| s.state == State::Outstanding)
            {
                break;
            }
            self.deadlines.pop_front();
        }
    }

    /// Checks that the reply comes from this session's peer and carries its SSID.
    pub fn owns(&self, from: SocketAddr, rep: &ReflectorPacket) -> Result<(), Rejection> {
        let from = canonical(from);
        if from.ip() != self.peer.ip() || from.port() != self.peer.port() {
            return Err(Rejection::WrongSource);
        }
        // RFC 8762-only reflectors leave the SSID octets zero: accepted from the right source.
        if rep.ssid != self.ssid && rep.ssid != 0 {
            return Err(Rejection::UnknownSession);
        }
        Ok(())
    }

    /// Validates and classifies a decoded reply (see the module documentation).
    pub fn reply(
        &mut self,
        r: &Reply<'_>,
        rep: &ReflectorPacket,
        env: &mut ReplyEnv<'_>,
    ) -> Result<Outcome, Rejection> {
        self.owns(r.from, rep)?;
        let seq = rep.sender_seq;
        let slot = *self.slot(seq).ok_or(Rejection::NotInFlight)?;
        let past_deadline = r.app_rx_tai
            > slot
                .app_tx_tai
                .saturating_add(self.timeout.as_nanos() as u64);
        match slot.state {
            State::LateAnswered => return Err(Rejection::Replayed),
            State::Answered if past_deadline => return Err(Rejection::Replayed),
            _ => {}
        }
        let (t1, t1_unrecorded) = self.t1(rep, &slot, r, env)?;
        let m = measure(env.st, rep, r, &slot, t1, env)?;
        check_stamps(&m, self.timeout)?;
        let s = self.slot_mut(seq).expect("looked up above");
        let out = match s.state {
            State::Outstanding => {
                s.state = State::Answered;
                self.outstanding -= 1;
                // Wrapping comparison: seq is older than the highest answered one.
                let reordered = self
                    .highest_answered
                    .is_some_and(|h| (h.wrapping_sub(seq) as i32) > 0);
                if !reordered {
                    self.highest_answered = Some(seq);
                }
                self.trim();
                let sample = Sample {
                    seq,
                    m,
                    reordered,
                    app_tx_tai: slot.app_tx_tai,
                    ttl: rep.sender_ttl,
                    len: r.payload.len(),
                };
                let mut released = Released::default();
                let follow_up = self.two_step(
                    sample,
                    slot.deadline,
                    FollowUpSeen::of(&rep.tlvs),
                    &mut released,
                );
                Outcome::Sample {
                    seq,
                    reordered,
                    t1_unrecorded,
                    follow_up,
                    released,
                }
            }
            State::Answered => Outcome::Duplicate { seq },
            State::TimedOut => {
                s.state = State::LateAnswered;
                Outcome::Late { seq }
            }
            State::LateAnswered | State::Unused => unreachable!("handled above"),
        };
        Ok(out)
    }

    /// The two-step (module documentation): `fu` of the reply that produced `sample` applies
    /// to the held sample, which it releases; `sample` is held when our reflector filled its
    /// follow-up TLV, else released with it.
    fn two_step(
        &mut self,
        mut sample: Sample,
        deadline: Option<Instant>,
        fu: FollowUpSeen,
        out: &mut Released,
    ) -> FollowUpUse {
        let mut used = match fu {
            FollowUpSeen::Malformed => FollowUpUse::Ignored,
            _ => FollowUpUse::None,
        };
        if let Some(Held { sample: mut h, .. }) = self.held.take() {
            if let FollowUpSeen::Ours(v) = fu
                && v.prev_sender_seq == h.seq
                && let Some(source) = StampSource::from_follow_up_t3(v.prev_t3_source)
            {
                match corrected(&h.m, v.correction_ns, source, self.timeout) {
                    Some(m) => {
                        h.m = m;
                        used = FollowUpUse::Applied;
                    }
                    None => used = FollowUpUse::Ignored,
                }
            }
            out.push(h);
        }
        match (fu, deadline) {
            (FollowUpSeen::Ours(v), Some(deadline)) => {
                sample.m.t2_source = StampSource::from_follow_up_t2(v.t2_source);
                sample.m.t3_source = StampSource::Tc;
                self.held = Some(Held { sample, deadline });
            }
            _ => out.push(sample),
        }
        used
    }

    /// T1 of the reply's probe (see [`choose_t1`]).
    fn t1(
        &self,
        rep: &ReflectorPacket,
        slot: &Slot,
        r: &Reply<'_>,
        env: &mut ReplyEnv<'_>,
    ) -> Result<T1, Rejection> {
        let kernel = env.st.is_kernel();
        let tx = env.tx_stamps.take(slot.tx_key).unwrap_or_default();
        let tx_sw = tx.sw.map(|rt| env.st.realtime_to_tai(rt));
        // The NIC's clock is taken to be TAI only when the user says so.
        let tx_hw = tx.hw.filter(|_| env.st.hw_tx_stamps);
        let recorded = if kernel {
            env.st
                .sent_t1(env.lport, self.ssid, rep.sender_seq)
                .map(|s| RecordedT1 {
                    hw: tx_hw,
                    ..RecordedT1::from_sent(&s)
                })
        } else {
            None
        };
        let app = (slot.app_tx_tai, r.app_rx_tai);
        if env.signed_t1 {
            let t1 = match recorded {
                Some(rec) => rec.measured(),
                None => socket_t1(app, tx_sw, tx_hw),
            };
            return Ok((t1, false));
        }
        choose_t1(kernel, recorded, rep.sender_timestamp, app, (tx_sw, tx_hw))
    }
}

/// Appends the probe `seq` of session `ssid`, sent at `app_tx` (TAI), `size` octets, framed
/// for `auth`:
/// - open mode: T1 is zero in kernel mode (the egress program writes it), else `app_tx`;
/// - authenticated mode: signed with the current key, T1 = `app_tx`. The HMAC covers T1, so
///   the egress program leaves it and records its own T1 in `T1_SENT` (the T1 we measure with).
#[allow(clippy::too_many_arguments)]
pub fn encode_probe(
    auth: &Auth,
    kernel: bool,
    seq: u32,
    ssid: u16,
    app_tx: u64,
    ee: ErrorEstimate,
    size: usize,
    tag: u32,
    out: &mut Vec<u8>,
) -> Result<(), WireError> {
    match auth.ring() {
        Some(ring) => {
            let t1 = Timestamp::from_ptp_ns(app_tx);
            let pkt = SenderPacket::probe_auth(seq, ssid, t1, ee, size, tag)?;
            ring.sign(|key| pkt.encode_auth(key, out));
        }
        None => {
            let t1 = if kernel {
                Timestamp::default()
            } else {
                Timestamp::from_ptp_ns(app_tx)
            };
            SenderPacket::probe(seq, ssid, t1, ee, size, tag)?.encode(out);
        }
    }
    Ok(())
}

/// A reply as the Session-Sender reads it.
#[derive(Debug)]
pub struct Decoded {
    pub packet: ReflectorPacket,
    /// Accepted without authentication (`optional`): counted by the caller.
    pub unauthenticated: bool,
}

/// Decodes a reply for `auth`: open mode as is; authenticated mode verifies the HMAC (current
/// key, then next) before anything else is read. `required`: a reply that does not verify is
/// `Rejection::Auth`. `optional`: one that does not verify is read as an open reply.
pub fn decode_reply(auth: &Auth, payload: &[u8]) -> Result<Decoded, Rejection> {
    let Some(ring) = auth.ring() else {
        return ReflectorPacket::decode(payload)
            .map(|packet| Decoded {
                packet,
                unauthenticated: false,
            })
            .map_err(|_| Rejection::Malformed);
    };
    match ring.verify(payload) {
        // RFC 8972 §4.8: TLVs that fail their HMAC TLV are not to be trusted; ours carry
        // nothing we use, but a reply claiming integrity it lacks is not authentic.
        Verified::Ok {
            tlvs_ok: Some(false),
        } => Err(Rejection::Auth),
        Verified::Ok { .. } => ReflectorPacket::decode_auth(payload)
            .map(|packet| Decoded {
                packet,
                unauthenticated: false,
            })
            .map_err(|_| Rejection::Malformed),
        Verified::Bad if auth.mode == Mode::Required => Err(Rejection::Auth),
        // An open reflector reads the octets after its 44-octet base in our 112-octet request
        // as TLVs, and the HMAC there usually as a malformed one (echoed with M): lenient.
        Verified::Bad => ReflectorPacket::decode_lenient(payload)
            .map(|l| Decoded {
                packet: l.packet,
                unauthenticated: true,
            })
            .map_err(|_| Rejection::Malformed),
    }
}

/// T1, where it came from, and whether it is an unrecorded echo.
type T1 = ((u64, StampSource), bool);

/// The kernel's record of one of our requests (`T1_SENT`): the TC egress stamp the request
/// carries, and the driver hand-off time when the hand-off program took it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordedT1 {
    pub tc: u64,
    pub handoff: Option<u64>,
    /// The NIC's hardware TX stamp of the request (`--hw-tx-stamps`), taken to be TAI.
    pub hw: Option<u64>,
}

impl RecordedT1 {
    pub fn from_sent(s: &probe_common::SentT1) -> Self {
        Self {
            tc: s.t1,
            handoff: (s.handoff != 0).then_some(s.handoff),
            hw: None,
        }
    }

    /// The T1 we measure with, the latest trustworthy stamp on the way out: the NIC's TX
    /// stamp (on the wire), else the hand-off time (where the packet leaves the host), else the
    /// TC stamp. A later stamp counts only when it follows the TC stamp by at most
    /// `FollowUp::MAX_CORRECTION_NS` (the bound the reflector's corrections obey too).
    pub fn measured(&self) -> (u64, StampSource) {
        let after_tc = |t: u64| {
            t.checked_sub(self.tc)
                .is_some_and(|d| d <= u64::from(probe_common::FollowUp::MAX_CORRECTION_NS))
        };
        match (self.hw, self.handoff) {
            (Some(h), _) if after_tc(h) => (h, StampSource::HwTx),
            (_, Some(h)) if after_tc(h) => (h, StampSource::Handoff),
            _ => (self.tc, StampSource::Tc),
        }
    }
}

/// T1 and its source. Kernel mode: our own record of the egress stamp, which the echo must
/// equal (the TC stamp), measured at the hand-off when the record has it
/// ([`RecordedT1::measured`]); without a record (slot reused, or a program that keeps none) the echo, if it lies
/// within our own (send, receive) times. Socket mode, or a zero echo in kernel mode (the probe
/// left through an interface without our program): the TX software stamp, else the
/// user-space send time. (The driver's TX software stamp is not used when TC stamps exist: on
/// veth it comes after the packet taps, whose work it then includes.)
fn choose_t1(
    kernel: bool,
    recorded: Option<RecordedT1>,
    echo: Timestamp,
    (app_tx, app_rx): (u64, u64),
    (tx_sw_tai, tx_hw): (Option<u64>, Option<u64>),
) -> Result<T1, Rejection> {
    if kernel {
        if let Some(rec) = recorded {
            if Timestamp::from_ptp_ns(rec.tc) != echo {
                return Err(Rejection::T1Mismatch);
            }
            return Ok((rec.measured(), false));
        }
        if !echo.is_zero() {
            let t1 = echo.to_ns(TimestampFormat::Ptp);
            if t1 < app_tx || t1 > app_rx {
                return Err(Rejection::T1Implausible);
            }
            return Ok(((t1, StampSource::Tc), true));
        }
    }
    Ok((socket_t1((app_tx, app_rx), tx_sw_tai, tx_hw), false))
}

/// T1 without a kernel record: the NIC's TX stamp when it lies within our own send and receive
/// times (a stamp from another clock or packet does not), else the TX software stamp, else the
/// user-space send time.
fn socket_t1(
    (app_tx, app_rx): (u64, u64),
    tx_sw_tai: Option<u64>,
    tx_hw: Option<u64>,
) -> (u64, StampSource) {
    match (tx_hw, tx_sw_tai) {
        (Some(h), _) if (app_tx..=app_rx).contains(&h) => (h, StampSource::HwTx),
        (_, Some(t)) => (t, StampSource::TxSoftware),
        _ => (app_tx, StampSource::App),
    }
}

/// Derives T2..T4 and the RTT figures of a reply whose T1 is known.
fn measure(
    st: &Stamping,
    rep: &ReflectorPacket,
    r: &Reply<'_>,
    slot: &Slot,
    (t1, t1_source): (u64, StampSource),
    env: &ReplyEnv<'_>,
) -> Result<Measurement, Rejection> {
    // T2, T3: the reflector's clock, in the format its Error Estimate announces.
    let fmt = rep.error_estimate.format();
    let t2 = rep.receive_timestamp.to_ns(fmt);
    let t3 = rep.timestamp.to_ns(fmt);
    // T4: in-band block, else the fallback map, else the socket stamp.
    let (mut t4, mut t4_source) = rx_time(
        st,
        st.reply_rx_stamp(r.payload),
        r.rx_sw_realtime_ns,
        r.app_rx_tai,
    );
    if st.is_kernel()
        && env.t4_map
        && matches!(t4_source, StampSource::Socket | StampSource::App)
        && let Some(b) = st
            .kernel()
            .and_then(|mut k| k.take_t4(env.lport, rep.ssid, rep.sender_seq))
    {
        t4 = crate::wire::rx_stamp_from_block(&b).tai_ns;
        t4_source = StampSource::Map;
    }
    // Stamps far from each other (garbage) must not overflow the arithmetic.
    let diff = |a: u64, b: u64| i64::try_from(i128::from(a) - i128::from(b));
    let turnaround = diff(t3, t2).map_err(|_| Rejection::BadStamps)?;
    let t4_t1 = diff(t4, t1).map_err(|_| Rejection::BadStamps)?;
    let app_rtt = diff(r.app_rx_tai, slot.app_tx_tai).map_err(|_| Rejection::BadStamps)?;
    Ok(Measurement {
        t1,
        t2,
        t3,
        t4,
        t1_source,
        t2_source: StampSource::Unspecified,
        t3_source: StampSource::Unspecified,
        t4_source,
        network_rtt: t4_t1 - turnaround,
        turnaround,
        app_rtt,
        stack_overhead: app_rtt - t4_t1,
    })
}

/// `m` with T3 moved `correction_ns` later (to where `source` took it), or `None` when the
/// correction is not believable: beyond `FollowUp::MAX_CORRECTION_NS`, or stamps that then fail
/// [`check_stamps`] (the hand-off precedes the wire: the network RTT stays ≥ 0).
fn corrected(
    m: &Measurement,
    correction_ns: u32,
    source: StampSource,
    timeout: Duration,
) -> Option<Measurement> {
    if correction_ns > probe_common::FollowUp::MAX_CORRECTION_NS {
        return None;
    }
    let c = i64::from(correction_ns);
    let n = Measurement {
        t3: m.t3.checked_add(u64::from(correction_ns))?,
        t3_source: source,
        network_rtt: m.network_rtt - c,
        turnaround: m.turnaround + c,
        ..*m
    };
    check_stamps(&n, timeout).ok().map(|()| n)
}

/// Reflected stamps that a real reflector cannot produce.
fn check_stamps(m: &Measurement, timeout: Duration) -> Result<(), Rejection> {
    let timeout = timeout.as_nanos().min(i64::MAX as u128) as i64;
    let ok = m.turnaround >= 0
        && m.turnaround <= timeout
        && m.network_rtt >= 0
        && m.network_rtt <= m.app_rtt;
    if ok {
        Ok(())
    } else {
        Err(Rejection::BadStamps)
    }
}

/// Entries kept before TX stamps of probes that were never answered are dropped.
const TX_STAMPS_MAX: usize = 65_536;

/// The socket's TX stamps (software in socket mode, the NIC's with `--hw-tx-stamps`) by
/// SO_TIMESTAMPING OPT_ID key, and the key the next send gets (one per datagram sent on the
/// socket).
#[derive(Default)]
pub struct TxStamps {
    map: HashMap<u32, crate::net::StampPair>,
    next_key: u32,
}

impl TxStamps {
    /// The key of the next datagram sent on the socket.
    pub fn next_key(&mut self) -> u32 {
        let k = self.next_key;
        self.next_key = k.wrapping_add(1);
        k
    }

    /// Collects the stamps the socket has reported since the last call.
    pub fn absorb(&mut self, sock: &ProbeSocket) {
        self.map.extend(sock.drain_tx_stamps());
        // Stamps of probes that were never answered must not pile up.
        if self.map.len() > TX_STAMPS_MAX {
            self.map.clear();
        }
    }

    fn take(&mut self, key: u32) -> Option<crate::net::StampPair> {
        self.map.remove(&key)
    }

    fn forget(&mut self, key: u32) {
        self.map.remove(&key);
    }
}

#[cfg(test)]
mod tests;
