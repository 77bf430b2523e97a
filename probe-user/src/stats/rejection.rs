//! What became of replies that did not count: the reasons `probe::session` gives.
use serde::Serialize;

/// Why a reply was not counted. The label set is fixed (Prometheus label, JSON key).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Rejection {
    /// Not a STAMP reply.
    Malformed,
    /// Not from the address and port the probe went to.
    WrongSource,
    /// An SSID none of our sessions uses.
    UnknownSession,
    /// A sequence number never sent, or too old to be remembered.
    NotInFlight,
    /// A copy of a reply already counted, received after its probe's deadline.
    Replayed,
    /// The echoed T1 differs from the one we recorded at send.
    T1Mismatch,
    /// No record of T1, and the echo lies outside our own send..receive interval.
    T1Implausible,
    /// Reflected stamps that cannot be: T3 < T2, turnaround over the timeout, network RTT
    /// negative or longer than the app RTT.
    BadStamps,
    /// Authenticated mode: the reply's HMAC verifies under no key we hold (or, `required`,
    /// the reply is not authenticated at all).
    Auth,
}

impl Rejection {
    pub const ALL: [Rejection; 9] = [
        Rejection::Malformed,
        Rejection::WrongSource,
        Rejection::UnknownSession,
        Rejection::NotInFlight,
        Rejection::Replayed,
        Rejection::T1Mismatch,
        Rejection::T1Implausible,
        Rejection::BadStamps,
        Rejection::Auth,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Rejection::Malformed => "malformed",
            Rejection::WrongSource => "wrong_source",
            Rejection::UnknownSession => "unknown_session",
            Rejection::NotInFlight => "not_in_flight",
            Rejection::Replayed => "replayed",
            Rejection::T1Mismatch => "t1_mismatch",
            Rejection::T1Implausible => "t1_implausible",
            Rejection::BadStamps => "bad_stamps",
            Rejection::Auth => "auth",
        }
    }
}

/// Rejections by reason, for a summary (every reason present, zeros included).
#[derive(Clone, Debug, Default)]
pub struct RejectionCounts([u64; Rejection::ALL.len()]);

impl RejectionCounts {
    pub fn add(&mut self, r: Rejection) {
        self.0[r as usize] += 1;
    }

    pub fn get(&self, r: Rejection) -> u64 {
        self.0[r as usize]
    }

    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }
}

impl Serialize for RejectionCounts {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap as _;
        let mut m = s.serialize_map(Some(Rejection::ALL.len()))?;
        for r in Rejection::ALL {
            m.serialize_entry(r.label(), &self.get(r))?;
        }
        m.end()
    }
}
