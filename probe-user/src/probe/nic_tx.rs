//! The reflector's NIC hardware TX stamps (`--hw-tx-stamps`), fed into the same two-step path
//! as the driver hand-off: the follow-up TLV of reply N+1 carries reply N's correction, here
//! NIC TX stamp − the TC T3 the reply carried (`FollowUp::t3`, recorded by the hand-off
//! program), source `t3_source::HW_TX`.
//!
//! The kernel numbers the datagrams a socket sends (SO_TIMESTAMPING OPT_ID: 0, 1, 2, … for
//! each datagram it accepted) and reports each TX stamp with that number. So every reply the
//! kernel took gets the next number here, in send order; the stamp that comes back with a
//! number is that reply's. Both tables are bounded: a NIC that never reports cannot make them
//! grow.
use std::collections::HashMap;

use probe_common::{FollowUp, FollowUpKey};

/// Entries kept in each table before it is emptied (stamps that never came, sessions gone).
const MAX_ENTRIES: usize = 16_384;

#[derive(Default)]
pub struct NicTxStamps {
    /// The OPT_ID number the kernel gives the next datagram sent.
    next_key: u32,
    /// OPT_ID number → the reply's session and the sender sequence number it answered.
    sent: HashMap<u32, (FollowUpKey, u32)>,
    /// Per session: the sender sequence number of its last stamped reply and the NIC's TX
    /// stamp of it (taken to be TAI).
    stamped: HashMap<FollowUpKey, (u32, u64)>,
}

impl NicTxStamps {
    /// A datagram the kernel accepted: `reply` is its session and sender sequence number,
    /// `None` for one that carries no follow-up (it still takes a number).
    pub fn sent(&mut self, reply: Option<(FollowUpKey, u32)>) {
        let k = self.next_key;
        self.next_key = k.wrapping_add(1);
        if let Some(r) = reply {
            if self.sent.len() >= MAX_ENTRIES {
                self.sent.clear();
            }
            self.sent.insert(k, r);
        }
    }

    /// The NIC stamps the socket reported: (OPT_ID number, hardware stamp).
    pub fn absorb(&mut self, stamps: impl IntoIterator<Item = (u32, Option<u64>)>) {
        for (k, hw) in stamps {
            let Some((session, seq)) = self.sent.remove(&k) else {
                continue;
            };
            if let Some(hw) = hw {
                if self.stamped.len() >= MAX_ENTRIES {
                    self.stamped.clear();
                }
                self.stamped.insert(session, (seq, hw));
            }
        }
    }

    /// The NIC correction of the session's previous reply `prev` (the hand-off program's
    /// record of it): NIC stamp − its TC T3, when the NIC stamped that very reply, after TC and
    /// within `FollowUp::MAX_CORRECTION_NS` (a PHC not on TAI fails this). Taken once.
    pub fn correction(&mut self, session: &FollowUpKey, prev: &FollowUp) -> Option<u32> {
        let (seq, hw) = self.stamped.remove(session)?;
        if seq != prev.sender_seq {
            return None;
        }
        hw.checked_sub(prev.t3)
            .and_then(|d| u32::try_from(d).ok())
            .filter(|&d| d <= FollowUp::MAX_CORRECTION_NS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(ssid: u16) -> FollowUpKey {
        FollowUpKey {
            ssid,
            port: 40_000,
            local_port: 862,
            ..FollowUpKey::default()
        }
    }

    fn prev(seq: u32, t3: u64) -> FollowUp {
        FollowUp {
            t3,
            sender_seq: seq,
            correction_ns: 700,
        }
    }

    #[test]
    fn a_stamp_goes_to_the_reply_the_kernel_numbered_in_send_order() {
        let mut n = NicTxStamps::default();
        n.sent(Some((session(1), 10))); // number 0
        n.sent(None); // 1: a reply without a follow-up
        n.sent(Some((session(2), 20))); // 2
        n.absorb([(2, Some(5_300)), (0, Some(1_900)), (1, Some(9))]);
        assert_eq!(n.correction(&session(1), &prev(10, 1_000)), Some(900));
        assert_eq!(n.correction(&session(2), &prev(20, 5_000)), Some(300));
        // Taken once.
        assert_eq!(n.correction(&session(1), &prev(10, 1_000)), None);
    }

    #[test]
    fn a_stamp_of_another_reply_or_clock_is_not_used() {
        let mut n = NicTxStamps::default();
        n.sent(Some((session(1), 10)));
        n.absorb([(0, Some(1_900))]);
        // The hand-off record is of a later reply (the stamp of 10 came, 11's did not).
        assert_eq!(n.correction(&session(1), &prev(11, 1_000)), None);
        for (hw, t3) in [
            (999, 1_000),                                                // before TC
            (1_000 + u64::from(FollowUp::MAX_CORRECTION_NS) + 1, 1_000), // too far after
        ] {
            n.sent(Some((session(1), 12)));
            n.absorb([(n.next_key - 1, Some(hw))]);
            assert_eq!(n.correction(&session(1), &prev(12, t3)), None, "{hw}");
        }
        // A software-only report (no NIC stamp) leaves nothing.
        n.sent(Some((session(3), 1)));
        n.absorb([(n.next_key - 1, None)]);
        assert_eq!(n.correction(&session(3), &prev(1, 0)), None);
        // Unknown numbers are ignored.
        n.absorb([(12_345, Some(1))]);
    }

    #[test]
    fn the_tables_stay_bounded() {
        let mut n = NicTxStamps::default();
        for i in 0..(3 * MAX_ENTRIES as u32) {
            n.sent(Some((session(i as u16), i)));
        }
        assert!(n.sent.len() <= MAX_ENTRIES);
        let keys: Vec<u32> = n.sent.keys().copied().collect();
        n.absorb(keys.into_iter().map(|k| (k, Some(1))));
        assert!(n.stamped.len() <= MAX_ENTRIES);
        // The numbering wraps as the kernel's does.
        n.next_key = u32::MAX;
        n.sent(None);
        assert_eq!(n.next_key, 0);
    }
}
