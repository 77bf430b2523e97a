use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::*;
use crate::wire::{
    ErrorEstimate, FollowUpValue, MIN_FOLLOW_UP_PROBE_LEN, ReflectParams, SenderPacket, Tlv,
    follow_up::{t2_source, t3_source},
    reflect,
};

const TIMEOUT: Duration = Duration::from_secs(1);
const MS: u64 = 1_000_000;

fn socket_mode() -> Stamping {
    Stamping {
        kernel: None,
        fallback_reason: None,
        tai_offset_ns: 37_000_000_000,
        synchronized: false,
        hw_rx_stamps: false,
        hw_tx_stamps: false,
        sw_rx_stamps: true,
        probe_tag: 1,
        block_key: 2,
        untrusted_blocks: Default::default(),
    }
}

fn peer() -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(198, 18, 0, 2)), 862)
}

fn session(first_seq: u32) -> Session {
    Session::with_first_seq(
        peer(),
        0x1234,
        TIMEOUT,
        Duration::from_millis(100),
        first_seq,
    )
}

/// A reply of a well-behaved reflector: T2 and T3 `turnaround` apart.
fn reply_to(ssid: u16, seq: u32, t2: u64, turnaround: u64) -> ReflectorPacket {
    let req = SenderPacket::probe(
        seq,
        ssid,
        Timestamp::default(),
        ErrorEstimate::default(),
        44,
        0,
    )
    .expect("base packet");
    reflect(
        &req,
        &ReflectParams {
            timestamp: Timestamp::from_ptp_ns(t2 + turnaround),
            error_estimate: ErrorEstimate::for_error_ns(1_000.0, false, true),
            receive_timestamp: Timestamp::from_ptp_ns(t2),
            sender_ttl: 64,
        },
    )
}

struct Harness {
    st: Stamping,
    tx: TxStamps,
    s: Session,
    t0: u64,
}

impl Harness {
    fn new(first_seq: u32) -> Self {
        Self {
            st: socket_mode(),
            tx: TxStamps::default(),
            s: session(first_seq),
            t0: 1_000_000 * MS,
        }
    }

    /// Sends a probe at t0 + `at_ms`.
    fn send(&mut self, at_ms: u64) -> u32 {
        let key = self.tx.next_key();
        self.s
            .sent(self.t0 + at_ms * MS, key, Instant::now() + TIMEOUT)
    }

    /// A reply to `seq` sent at `sent_ms`, received at t0 + `rx_ms`, from `from`.
    fn recv(
        &mut self,
        from: SocketAddr,
        rep: &ReflectorPacket,
        rx_ms: u64,
    ) -> Result<Outcome, Rejection> {
        let payload = rep.to_bytes();
        let r = Reply {
            payload: &payload,
            from,
            rx_sw_realtime_ns: None,
            app_rx_tai: self.t0 + rx_ms * MS,
        };
        let mut env = ReplyEnv {
            st: &self.st,
            t4_map: false,
            lport: 40_000,
            tx_stamps: &mut self.tx,
            signed_t1: false,
        };
        self.s.reply(&r, rep, &mut env)
    }
}

fn kind(o: &Result<Outcome, Rejection>) -> Result<&'static str, Rejection> {
    match o {
        Ok(Outcome::Sample {
            reordered: false, ..
        }) => Ok("sample"),
        Ok(Outcome::Sample {
            reordered: true, ..
        }) => Ok("reordered"),
        Ok(Outcome::Duplicate { .. }) => Ok("duplicate"),
        Ok(Outcome::Late { .. }) => Ok("late"),
        Err(e) => Err(*e),
    }
}

#[test]
fn sequence_numbers_start_at_random() {
    let a: Vec<u32> = (0..8)
        .map(|_| Session::new(peer(), 1, TIMEOUT, TIMEOUT).next_seq())
        .collect();
    assert!(a.iter().any(|&s| s != a[0]), "8 sessions, one start: {a:?}");
}

#[test]
fn samples_duplicates_reordering_and_late_replies() {
    let mut h = Harness::new(u32::MAX - 1); // wraps across the sequence space
    let seqs: Vec<u32> = (0..4).map(|i| h.send(i * 10)).collect();
    assert_eq!(seqs, vec![u32::MAX - 1, u32::MAX, 0, 1]);
    let rep = |s: u32| reply_to(0x1234, s, 5_000, 1_000);
    assert_eq!(kind(&h.recv(peer(), &rep(seqs[0]), 20)), Ok("sample"));
    assert_eq!(kind(&h.recv(peer(), &rep(seqs[2]), 30)), Ok("sample"));
    assert_eq!(kind(&h.recv(peer(), &rep(seqs[1]), 31)), Ok("reordered"));
    // A network duplicate: same reply again within the probe's deadline.
    assert_eq!(kind(&h.recv(peer(), &rep(seqs[1]), 40)), Ok("duplicate"));
    // The same copy after the deadline is a replay, not a duplicate.
    assert_eq!(
        kind(&h.recv(peer(), &rep(seqs[0]), 2_000)),
        Err(Rejection::Replayed)
    );
    assert!(h.s.in_flight());
    assert!(h.s.fail(seqs[3]), "refused at send: lost now");
    assert!(!h.s.fail(seqs[3]));
    assert!(!h.s.in_flight());
    assert_eq!(kind(&h.recv(peer(), &rep(seqs[3]), 500)), Ok("late"));
    assert_eq!(
        kind(&h.recv(peer(), &rep(seqs[3]), 501)),
        Err(Rejection::Replayed),
        "a late reply counts once"
    );
    assert_eq!(
        kind(&h.recv(peer(), &rep(7), 50)),
        Err(Rejection::NotInFlight)
    );
}

#[test]
fn expiry_reports_lost_probes_oldest_first() {
    let mut h = Harness::new(10);
    let now = Instant::now();
    let key = h.tx.next_key();
    let a = h.s.sent(h.t0, key, now);
    let b = h.s.sent(h.t0, key, now + TIMEOUT);
    let c = h.s.sent(h.t0, key, now);
    assert_eq!(
        kind(&h.recv(peer(), &reply_to(0x1234, a, 1, 1), 5)),
        Ok("sample")
    );
    let mut lost = Vec::new();
    // Socket mode to a plain reflector: nothing is held.
    assert!(h.s.expire(now, &mut h.tx, |l| lost.push(l.seq)).is_none());
    assert_eq!(
        lost,
        Vec::<u32>::new(),
        "b is due later and blocks the queue"
    );
    assert_eq!(h.s.next_deadline(), Some(now + TIMEOUT));
    assert!(
        h.s.expire(now + TIMEOUT, &mut h.tx, |l| lost.push(l.seq))
            .is_none()
    );
    assert_eq!(lost, vec![b, c]);
    assert!(!h.s.in_flight());
    assert_eq!(h.s.next_deadline(), None);
}

#[test]
fn replies_from_elsewhere_or_another_session_are_rejected() {
    let mut h = Harness::new(0);
    let seq = h.send(0);
    let other = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(198, 18, 7, 77)), 862);
    let rep = reply_to(0x1234, seq, 5_000, 1_000);
    assert_eq!(kind(&h.recv(other, &rep, 1)), Err(Rejection::WrongSource));
    let wrong_port = SocketAddr::new(peer().ip(), 863);
    assert_eq!(
        kind(&h.recv(wrong_port, &rep, 1)),
        Err(Rejection::WrongSource)
    );
    assert_eq!(
        kind(&h.recv(peer(), &reply_to(0x4321, seq, 5_000, 1_000), 1)),
        Err(Rejection::UnknownSession)
    );
    assert!(h.s.in_flight(), "rejections leave the probe in flight");
    // IPv4-mapped IPv6 is the same source; SSID 0 (RFC 8762-only reflector) is accepted.
    let mapped = SocketAddr::new(
        IpAddr::V6(Ipv4Addr::new(198, 18, 0, 2).to_ipv6_mapped()),
        862,
    );
    assert_eq!(
        kind(&h.recv(mapped, &reply_to(0, seq, 5_000, 1_000), 1)),
        Ok("sample")
    );
    let v6 = SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), 862);
    assert_eq!(kind(&h.recv(v6, &rep, 1)), Err(Rejection::WrongSource));
}

#[test]
fn impossible_reflected_stamps_are_rejected() {
    let mut h = Harness::new(0);
    // T3 before T2.
    let seq = h.send(0);
    let mut rep = reply_to(0x1234, seq, 5_000, 1_000);
    rep.timestamp = Timestamp::from_ptp_ns(4_000);
    assert_eq!(kind(&h.recv(peer(), &rep, 10)), Err(Rejection::BadStamps));
    // Turnaround beyond the timeout.
    let rep = reply_to(0x1234, seq, 5_000, 2_000 * MS);
    assert_eq!(kind(&h.recv(peer(), &rep, 10)), Err(Rejection::BadStamps));
    // Turnaround longer than the whole exchange: negative network RTT.
    let rep = reply_to(0x1234, seq, 5_000, 11 * MS);
    assert_eq!(kind(&h.recv(peer(), &rep, 10)), Err(Rejection::BadStamps));
    // Garbage far apart must not overflow.
    let mut rep = reply_to(0x1234, seq, 0, 0);
    rep.timestamp = Timestamp::from_ptp_ns(u64::from(u32::MAX) * 1_000_000_000);
    assert_eq!(kind(&h.recv(peer(), &rep, 10)), Err(Rejection::BadStamps));
    let rep = reply_to(0x1234, seq, 5_000, 9 * MS);
    match h.recv(peer(), &rep, 10) {
        Ok(Outcome::Sample { released, .. }) => {
            let m = released.into_iter().next().expect("released at once").m;
            assert_eq!((m.app_rtt, m.turnaround), (10 * MS as i64, 9 * MS as i64));
            assert_eq!(m.network_rtt, MS as i64);
            assert_eq!(m.t1_source, StampSource::App);
        }
        other => panic!("{other:?}"),
    }
}

fn tc(ns: u64) -> RecordedT1 {
    RecordedT1 {
        tc: ns,
        handoff: None,
        hw: None,
    }
}

#[test]
fn t1_is_the_handoff_time_when_recorded_and_the_echo_is_checked_against_tc() {
    let app = (1_000, 2_000);
    let echo = |ns| Timestamp::from_ptp_ns(ns);
    let rec = RecordedT1 {
        tc: 1_500,
        handoff: Some(1_700),
        hw: None,
    };
    assert_eq!(
        choose_t1(true, Some(rec), echo(1_500), app, (None, None)),
        Ok(((1_700, StampSource::Handoff), false))
    );
    // The echo is the TC stamp, never the hand-off time.
    assert_eq!(
        choose_t1(true, Some(rec), echo(1_700), app, (None, None)),
        Err(Rejection::T1Mismatch)
    );
    // Equal to TC is a hand-off stamp still; before TC is not one (a stale record): TC.
    let same = RecordedT1 {
        handoff: Some(1_500),
        ..rec
    };
    assert_eq!(same.measured(), (1_500, StampSource::Handoff));
    let before = RecordedT1 {
        handoff: Some(1_499),
        ..rec
    };
    assert_eq!(
        choose_t1(true, Some(before), echo(1_500), app, (None, None)),
        Ok(((1_500, StampSource::Tc), false))
    );
    // A record without a hand-off time (program off, or not taken): TC.
    assert_eq!(tc(1_500).measured(), (1_500, StampSource::Tc));
    // From the kernel's record: 0 means "not taken".
    let sent = |handoff| probe_common::SentT1 {
        t1: 1_500,
        handoff,
        seq: 1,
        port: 2,
        ssid: 3,
    };
    assert_eq!(RecordedT1::from_sent(&sent(0)), tc(1_500));
    assert_eq!(RecordedT1::from_sent(&sent(1_700)), rec);
}

#[test]
fn t1_comes_from_our_record_and_an_unrecorded_echo_must_be_plausible() {
    let app = (1_000, 2_000);
    let echo = |ns| Timestamp::from_ptp_ns(ns);
    // Kernel mode, recorded: the record, which the echo must equal.
    assert_eq!(
        choose_t1(true, Some(tc(1_500)), echo(1_500), app, (None, None)),
        Ok(((1_500, StampSource::Tc), false))
    );
    assert_eq!(
        choose_t1(true, Some(tc(1_500)), echo(1_501), app, (None, None)),
        Err(Rejection::T1Mismatch)
    );
    assert_eq!(
        choose_t1(
            true,
            Some(tc(1_500)),
            Timestamp::default(),
            app,
            (None, None)
        ),
        Err(Rejection::T1Mismatch)
    );
    // No record: the echo within our own send and receive times, flagged.
    assert_eq!(
        choose_t1(true, None, echo(1_200), app, (None, None)),
        Ok(((1_200, StampSource::Tc), true))
    );
    for bad in [999, 2_001, 1] {
        assert_eq!(
            choose_t1(true, None, echo(bad), app, (None, None)),
            Err(Rejection::T1Implausible),
            "{bad}"
        );
    }
    // A zero echo (no program on the way out): our own send time.
    assert_eq!(
        choose_t1(true, None, Timestamp::default(), app, (None, None)),
        Ok(((1_000, StampSource::App), false))
    );
    // Socket mode ignores the echo.
    assert_eq!(
        choose_t1(false, None, echo(5), app, (Some(1_100), None)),
        Ok(((1_100, StampSource::TxSoftware), false))
    );
}

#[test]
fn t1_is_the_nics_tx_stamp_when_it_follows_the_kernels_stamps() {
    let app = (1_000, 2_000);
    let echo = Timestamp::from_ptp_ns(1_500);
    let rec = |hw| RecordedT1 {
        tc: 1_500,
        handoff: Some(1_700),
        hw,
    };
    // On the wire after the hand-off: the NIC's stamp.
    assert_eq!(
        choose_t1(true, Some(rec(Some(1_900))), echo, app, (None, Some(1_900))),
        Ok(((1_900, StampSource::HwTx), false))
    );
    // Before the TC stamp (another clock, or not TAI): not this packet's; the hand-off.
    assert_eq!(rec(Some(1_499)).measured(), (1_700, StampSource::Handoff));
    // Far after it (beyond the correction bound): not trusted either.
    let far = 1_500 + u64::from(probe_common::FollowUp::MAX_CORRECTION_NS) + 1;
    assert_eq!(rec(Some(far)).measured(), (1_700, StampSource::Handoff));
    // The echo is still checked against TC.
    assert_eq!(
        choose_t1(
            true,
            Some(rec(Some(1_900))),
            Timestamp::from_ptp_ns(1_900),
            app,
            (None, None)
        ),
        Err(Rejection::T1Mismatch)
    );
    // Socket mode: the NIC's stamp within our own send and receive times, else software.
    assert_eq!(
        choose_t1(false, None, echo, app, (Some(1_100), Some(1_300))),
        Ok(((1_300, StampSource::HwTx), false))
    );
    assert_eq!(
        choose_t1(false, None, echo, app, (Some(1_100), Some(2_001))),
        Ok(((1_100, StampSource::TxSoftware), false))
    );
    assert_eq!(
        choose_t1(false, None, echo, app, (None, Some(999))),
        Ok(((1_000, StampSource::App), false))
    );
}

#[test]
fn ring_grows_instead_of_forgetting_outstanding_probes() {
    let mut h = Harness::new(0);
    let n = 3 * MIN_SLOTS as u32;
    let seqs: Vec<u32> = (0..n).map(|_| h.send(0)).collect();
    for &s in seqs.iter().rev() {
        assert!(
            matches!(
                kind(&h.recv(peer(), &reply_to(0x1234, s, 1, 1), 1)),
                Ok("sample" | "reordered")
            ),
            "seq {s}"
        );
    }
    assert!(!h.s.in_flight());
    // Once answered, old numbers are forgotten as the ring is reused.
    for _ in 0..h.s.slots.len() {
        let s = h.send(0);
        h.recv(peer(), &reply_to(0x1234, s, 1, 1), 1)
            .expect("fresh");
    }
    assert_eq!(
        kind(&h.recv(peer(), &reply_to(0x1234, 0, 1, 1), 1)),
        Err(Rejection::NotInFlight)
    );
}

#[test]
fn ssid_allocation_is_random_non_zero_unique_and_bounded() {
    let mut used = std::collections::HashSet::new();
    for _ in 0..1000 {
        let s = alloc_ssid(|s| used.contains(&s)).expect("space left");
        assert_ne!(s, 0);
        assert!(used.insert(s), "{s} handed out twice");
    }
    // Nearly full: the scan finds the one free value; full: None, without spinning.
    let free = 4242;
    assert_eq!(alloc_ssid(|s| s != free), Some(free));
    assert_eq!(alloc_ssid(|_| true), None);
}

#[test]
fn rejection_counts_serialize_every_reason() {
    let mut c = RejectionCounts::default();
    c.add(Rejection::WrongSource);
    c.add(Rejection::WrongSource);
    let v = serde_json::to_value(&c).unwrap();
    assert_eq!(v["wrong_source"], 2);
    assert_eq!(v["t1_mismatch"], 0);
    assert_eq!(v.as_object().unwrap().len(), Rejection::ALL.len());
    assert_eq!(c.total(), 2);
}

mod authenticated {
    use super::super::{decode_reply, encode_probe};
    use crate::{
        auth::{Auth, Key, KeyRing, Keys, Mode},
        stats::Rejection,
        wire::{ErrorEstimate, ReflectParams, SenderPacket, reflect},
    };

    fn key(b: u8) -> Key {
        Key::parse(
            &format!("{b:02x}").repeat(16),
            "K",
            std::path::Path::new("k"),
        )
        .unwrap()
    }

    fn auth(mode: Mode, current: u8, next: Option<u8>) -> Auth {
        Auth {
            mode,
            keys: Some(KeyRing::fixed(Keys {
                current: key(current),
                next: next.map(key),
            })),
        }
    }

    /// The reply a reflector holding `k` sends to our probe.
    fn reply(k: Option<u8>) -> Vec<u8> {
        let req =
            SenderPacket::probe_auth(5, 77, Default::default(), ErrorEstimate::default(), 112, 1)
                .unwrap();
        let rep = reflect(&req, &ReflectParams::default());
        let mut out = Vec::new();
        match k {
            Some(k) => rep.encode_auth(key(k).bytes(), &mut out),
            None => rep.encode(&mut out),
        }
        out
    }

    #[test]
    fn probes_are_signed_with_the_current_key_and_carry_the_send_time() {
        let a = auth(Mode::Required, 1, Some(2));
        let mut out = Vec::new();
        let ee = ErrorEstimate::for_error_ns(1_000.0, false, true);
        encode_probe(&a, true, 5, 77, 1_000_000_007, ee, 68, 9, &mut out).unwrap();
        assert_eq!(out.len(), 112);
        assert!(crate::wire::auth::base_hmac_ok(&out, key(1).bytes()));
        let p = SenderPacket::decode_auth(&out).unwrap().packet;
        assert_eq!((p.seq, p.ssid, p.timestamp_ns()), (5, 77, 1_000_000_007));
    }

    #[test]
    fn required_rejects_what_does_not_verify_under_current_or_next() {
        let a = auth(Mode::Required, 1, Some(2));
        assert!(!decode_reply(&a, &reply(Some(1))).unwrap().unauthenticated);
        assert_eq!(decode_reply(&a, &reply(Some(2))).unwrap().packet.ssid, 77);
        assert_eq!(
            decode_reply(&a, &reply(Some(3))).unwrap_err(),
            Rejection::Auth
        );
        assert_eq!(decode_reply(&a, &reply(None)).unwrap_err(), Rejection::Auth);
    }

    #[test]
    fn optional_accepts_open_replies_and_says_so() {
        let a = auth(Mode::Optional, 1, None);
        assert!(!decode_reply(&a, &reply(Some(1))).unwrap().unauthenticated);
        let open = decode_reply(&a, &reply(None)).unwrap();
        assert!(open.unauthenticated);
        assert_eq!(open.packet.sender_seq, 5);
        assert!(
            !decode_reply(&Auth::OFF, &reply(None))
                .unwrap()
                .unauthenticated
        );
    }
}

mod two_step {
    use super::*;

    /// A reply to a probe that carried our follow-up TLV: `fu` is what our reflector filled
    /// in (`None`: a third-party reflector, which echoes it with U set).
    fn reply_fu(seq: u32, t2: u64, turnaround: u64, fu: Option<FollowUpValue>) -> ReflectorPacket {
        let req = SenderPacket::probe(
            seq,
            0x1234,
            Timestamp::default(),
            ErrorEstimate::default(),
            MIN_FOLLOW_UP_PROBE_LEN,
            1,
        )
        .expect("probe");
        let mut rep = reflect(
            &req,
            &ReflectParams {
                timestamp: Timestamp::from_ptp_ns(t2 + turnaround),
                error_estimate: ErrorEstimate::for_error_ns(1_000.0, false, true),
                receive_timestamp: Timestamp::from_ptp_ns(t2),
                sender_ttl: 64,
            },
        );
        match fu {
            Some(v) => assert!(rep.set_follow_up(&v)),
            None => {
                // A third party: U set, value echoed (zero, as we sent it).
                let t = rep.tlvs.iter_mut().find(|t| t.is_follow_up()).unwrap();
                *t = Tlv::follow_up_request();
            }
        }
        rep
    }

    fn fu(prev: u32, correction_ns: u32, t3: u8) -> Option<FollowUpValue> {
        Some(FollowUpValue {
            prev_sender_seq: prev,
            correction_ns,
            prev_t3_source: t3,
            t2_source: t2_source::SKB_RX,
        })
    }

    /// Nothing to report on yet (first reply of the session).
    fn fu_none() -> Option<FollowUpValue> {
        fu(0, 0, t3_source::NONE)
    }

    /// The reply's outcome as (kind, follow-up use, released samples).
    fn answered(o: Result<Outcome, Rejection>) -> (FollowUpUse, Vec<Sample>) {
        match o {
            Ok(Outcome::Sample {
                follow_up,
                released,
                ..
            }) => (follow_up, released.into_iter().collect()),
            other => panic!("not a sample: {other:?}"),
        }
    }

    #[test]
    fn the_next_reply_corrects_the_held_sample() {
        let mut h = Harness::new(100);
        let a = h.send(0);
        let b = h.send(10);
        // a: 4 ms exchange, 1 ms turnaround: network RTT 3 ms. Held, nothing released.
        let (used, out) = answered(h.recv(peer(), &reply_fu(a, 5_000, MS, fu_none()), 4));
        assert_eq!((used, out.len()), (FollowUpUse::None, 0));
        assert!(h.s.next_deadline().is_some());
        // b reports on a: its T3 left the host 700 ns after TC.
        let (used, out) = answered(h.recv(
            peer(),
            &reply_fu(b, 9_000, MS, fu(a, 700, t3_source::HANDOFF)),
            14,
        ));
        assert_eq!(used, FollowUpUse::Applied);
        assert_eq!(out.len(), 1);
        let m = out[0].m;
        assert_eq!(out[0].seq, a);
        assert_eq!(m.t3, 5_000 + MS + 700);
        assert_eq!(m.turnaround, MS as i64 + 700);
        assert_eq!(m.network_rtt, 3 * MS as i64 - 700);
        assert_eq!(m.t3_source, StampSource::Handoff);
        assert_eq!(m.t2_source, StampSource::SkbRx);
        // b is held in turn; a stop releases it, with its TC T3.
        let b_out = h.s.drain().expect("held");
        assert_eq!(b_out.seq, b);
        assert_eq!(b_out.m.t3_source, StampSource::Tc);
        assert_eq!(b_out.m.network_rtt, 3 * MS as i64);
        assert!(h.s.drain().is_none(), "released once");
    }

    #[test]
    fn a_nic_stamp_says_so() {
        let mut h = Harness::new(0);
        let a = h.send(0);
        let b = h.send(10);
        answered(h.recv(peer(), &reply_fu(a, 5_000, MS, fu_none()), 4));
        let (used, out) = answered(h.recv(
            peer(),
            &reply_fu(b, 9_000, MS, fu(a, 50, t3_source::HW_TX)),
            14,
        ));
        assert_eq!(used, FollowUpUse::Applied);
        assert_eq!(out[0].m.t3_source, StampSource::HwTx);
    }

    #[test]
    fn unbelievable_or_foreign_corrections_are_ignored() {
        // The second reply's follow-up: (seq it reports on, back from the held one;
        // correction; T3 source), and what becomes of it.
        let cases = [
            // Beyond the bound.
            (
                (
                    0,
                    probe_common::FollowUp::MAX_CORRECTION_NS + 1,
                    t3_source::HANDOFF,
                ),
                FollowUpUse::Ignored,
            ),
            // Larger than the network RTT (3 ms): the hand-off would follow the wire.
            (
                (0, 3 * MS as u32 + 1, t3_source::HANDOFF),
                FollowUpUse::Ignored,
            ),
            // About another probe (the held one's reply was not the reflector's last).
            ((1, 700, t3_source::HANDOFF), FollowUpUse::None),
            // No correction to give.
            ((0, 700, t3_source::NONE), FollowUpUse::None),
        ];
        for (i, ((back, c, src), want)) in cases.into_iter().enumerate() {
            let mut h = Harness::new(7);
            let a = h.send(0);
            let b = h.send(10);
            answered(h.recv(peer(), &reply_fu(a, 5_000, MS, fu_none()), 4));
            let second = fu(a.wrapping_sub(back), c, src);
            let (used, out) = answered(h.recv(peer(), &reply_fu(b, 9_000, MS, second), 14));
            assert_eq!(used, want, "case {i}");
            assert_eq!(
                out.len(),
                1,
                "case {i}: the held sample comes out as it was"
            );
            assert_eq!(out[0].m.t3_source, StampSource::Tc, "case {i}");
            assert_eq!(out[0].m.network_rtt, 3 * MS as i64, "case {i}");
        }
    }

    #[test]
    fn a_malformed_follow_up_is_ignored_and_counted() {
        let mut h = Harness::new(7);
        let a = h.send(0);
        let b = h.send(10);
        answered(h.recv(peer(), &reply_fu(a, 5_000, MS, fu_none()), 4));
        let mut rep = reply_fu(b, 9_000, MS, fu(a, 700, t3_source::HANDOFF));
        let t = rep.tlvs.iter_mut().find(|t| t.is_follow_up()).unwrap();
        t.flags |= Tlv::M;
        let (used, out) = answered(h.recv(peer(), &rep, 14));
        assert_eq!(used, FollowUpUse::Ignored);
        // Both released: a as it was, b at once (not our reflector's filled TLV).
        assert_eq!(out.iter().map(|s| s.seq).collect::<Vec<_>>(), vec![a, b]);
        assert_eq!(out[0].m.t3_source, StampSource::Tc);
        assert_eq!(out[1].m.t3_source, StampSource::Unspecified);
        assert!(h.s.drain().is_none());
    }

    #[test]
    fn a_third_party_echo_is_released_at_once_with_unspecified_sources() {
        let mut h = Harness::new(3);
        let a = h.send(0);
        let (used, out) = answered(h.recv(peer(), &reply_fu(a, 5_000, MS, None), 4));
        assert_eq!(used, FollowUpUse::None);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].m.t2_source, StampSource::Unspecified);
        assert_eq!(out[0].m.t3_source, StampSource::Unspecified);
        assert_eq!(
            out[0].m.network_rtt,
            3 * MS as i64,
            "T3 as the reflector gave it"
        );
        assert!(h.s.drain().is_none());
        // A probe too small for the TLV: the same.
        let b = h.send(10);
        let (_, out) = answered(h.recv(peer(), &reply_to(0x1234, b, 1, 1), 14));
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].m.t3_source, StampSource::Unspecified);
    }

    #[test]
    fn a_held_sample_is_released_at_its_deadline() {
        let mut h = Harness::new(0);
        let now = Instant::now();
        let key = h.tx.next_key();
        let a = h.s.sent(h.t0, key, now + TIMEOUT);
        answered(h.recv(peer(), &reply_fu(a, 5_000, MS, fu_none()), 4));
        assert!(!h.s.in_flight());
        assert_eq!(
            h.s.next_deadline(),
            Some(now + TIMEOUT),
            "the held sample's deadline"
        );
        assert!(
            h.s.expire(now, &mut h.tx, |_| panic!("nothing lost"))
                .is_none()
        );
        let s =
            h.s.expire(now + TIMEOUT, &mut h.tx, |_| panic!("nothing lost"));
        assert_eq!(
            s.map(|s| (s.seq, s.m.t3_source)),
            Some((a, StampSource::Tc))
        );
        assert_eq!(h.s.next_deadline(), None);
        assert!(h.s.drain().is_none());
    }

    #[test]
    fn every_sample_comes_out_once_whatever_the_network_does() {
        let mut h = Harness::new(u32::MAX - 3);
        let seqs: Vec<u32> = (0..8).map(|i| h.send(i * 10)).collect();
        // Replies: 0, 2 (1 reordered later), 1, 1 again (duplicate), 3 lost, 4..7 with
        // follow-ups on the previous reply the reflector sent.
        let order = [0usize, 2, 1, 1, 4, 5, 6, 7];
        let mut outcomes = Vec::new();
        let mut released = Vec::new();
        let mut prev: Option<u32> = None;
        for (k, &i) in order.iter().enumerate() {
            let f = match prev {
                Some(p) => fu(p, 100, t3_source::HANDOFF),
                None => fu_none(),
            };
            let o = h.recv(peer(), &reply_fu(seqs[i], 5_000, MS, f), 80 + k as u64);
            outcomes.push(kind(&o));
            if let Ok(Outcome::Sample { released: r, .. }) = o {
                released.extend(r);
            }
            prev = Some(seqs[i]);
        }
        assert_eq!(
            outcomes,
            [
                "sample",
                "sample",
                "reordered",
                "duplicate",
                "sample",
                "sample",
                "sample",
                "sample"
            ]
            .map(Ok)
        );
        let mut lost = Vec::new();
        let now = Instant::now() + 2 * TIMEOUT;
        released.extend(h.s.expire(now, &mut h.tx, |l| lost.push(l.seq)));
        released.extend(h.s.drain());
        assert_eq!(lost, vec![seqs[3]]);
        let mut got: Vec<u32> = released.iter().map(|s| s.seq).collect();
        got.sort_unstable();
        let mut want: Vec<u32> = [0, 1, 2, 4, 5, 6, 7].map(|i| seqs[i]).to_vec();
        want.sort_unstable();
        assert_eq!(got, want, "each answered probe once");
        // Corrected by the next first reply, which reports on it: 0 (by 2), 2 (by 1), 1 (by 4:
        // the duplicate in between changes nothing), 4, 5, 6; not the last (7).
        let handoff = released
            .iter()
            .filter(|s| s.m.t3_source == StampSource::Handoff)
            .count();
        assert_eq!(handoff, 6);
        assert!(released.iter().all(|s| s.reordered == (s.seq == seqs[1])));
    }
}
