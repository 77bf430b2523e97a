//! HDR histograms as bytes, for `ZoneSummary.network_rtt_hdr`: HdrHistogram's own portable "V2
//! deflate" serialization (any HdrHistogram implementation reads it), so consumers can merge
//! the histograms of many agents exactly. The one place that writes and reads the format.
//!
//! The bytes come from the network (Kafka): [`decode`] bounds the input, what it inflates to,
//! the precision and the counts before the crate's decoder sees them (that decoder allocates
//! what the header asks for and adds counts unchecked).
use std::io::Read as _;

use hdrhistogram::{
    Counter, Histogram,
    serialization::{Deserializer, Serializer as _, V2DeflateSerializer},
};

/// Largest encoded histogram accepted (meshprobe's are a few hundred bytes).
pub const MAX_ENCODED: usize = 64 * 1024;
/// Largest inflated payload accepted.
pub const MAX_INFLATED: usize = 1024 * 1024;
/// Highest precision accepted: meshprobe records 3 significant digits; 3 keeps a histogram
/// over the whole u64 range under half a MiB of counters.
pub const MAX_SIGFIG: u32 = 3;
/// Most samples one histogram may hold (far above any window's probes; keeps sums of many
/// histograms far from overflowing).
pub const MAX_COUNT: u64 = 1 << 40;

/// The format's cookies (V2 with the "word size" bits set, as every implementation writes).
const V2_COOKIE: u32 = 0x1c84_9313;
const V2_DEFLATE_COOKIE: u32 = 0x1c84_9314;
/// cookie, payload length, normalizing offset, significant digits (u32 each), lowest and
/// highest trackable value (u64 each), integer-to-double ratio (f64).
const V2_HEADER: usize = 40;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HdrError {
    #[error("histogram of {0} bytes (at most {MAX_ENCODED})")]
    TooLong(usize),
    #[error("not a V2 deflate histogram: {0}")]
    Format(&'static str),
    #[error("histogram inflates to more than {MAX_INFLATED} bytes")]
    Inflated,
    #[error("histogram with {0} significant digits (at most {MAX_SIGFIG})")]
    Precision(u32),
    #[error("histogram counts out of range (at most {MAX_COUNT} samples)")]
    Counts,
    #[error("histogram decoding failed: {0}")]
    Decode(String),
    #[error("histogram encoding failed: {0}")]
    Encode(String),
}

/// The V2 deflate bytes of `h`.
pub fn encode<T: Counter>(h: &Histogram<T>) -> Result<Vec<u8>, HdrError> {
    let mut out = Vec::new();
    V2DeflateSerializer::new()
        .serialize(h, &mut out)
        .map_err(|e| HdrError::Encode(e.to_string()))?;
    Ok(out)
}

/// A histogram from V2 deflate bytes, validated and bounded (see the module doc); it resizes
/// itself when more is added to it.
pub fn decode(bytes: &[u8]) -> Result<Histogram<u64>, HdrError> {
    if bytes.len() > MAX_ENCODED {
        return Err(HdrError::TooLong(bytes.len()));
    }
    if be_u32(bytes, 0) != Some(V2_DEFLATE_COOKIE) {
        return Err(HdrError::Format("bad cookie"));
    }
    let len = be_u32(bytes, 4).ok_or(HdrError::Format("short header"))? as usize;
    let deflated = bytes
        .get(8..)
        .filter(|d| d.len() == len)
        .ok_or(HdrError::Format("length does not match"))?;
    let mut inner = Vec::new();
    flate2::read::ZlibDecoder::new(deflated)
        .take(MAX_INFLATED as u64 + 1)
        .read_to_end(&mut inner)
        .map_err(|_| HdrError::Format("bad deflate stream"))?;
    if inner.len() > MAX_INFLATED {
        return Err(HdrError::Inflated);
    }
    if be_u32(&inner, 0) != Some(V2_COOKIE) || inner.len() < V2_HEADER {
        return Err(HdrError::Format("bad inner header"));
    }
    let payload = be_u32(&inner, 4).unwrap_or(0) as usize;
    if payload != inner.len() - V2_HEADER {
        return Err(HdrError::Format("inner length does not match"));
    }
    let sigfig = be_u32(&inner, 12).unwrap_or(0);
    if sigfig > MAX_SIGFIG {
        return Err(HdrError::Precision(sigfig));
    }
    check_counts(&inner[V2_HEADER..])?;
    let mut h: Histogram<u64> = Deserializer::new()
        .deserialize(&mut &inner[..])
        .map_err(|e| HdrError::Decode(e.to_string()))?;
    h.auto(true);
    Ok(h)
}

fn be_u32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// Walks the payload's zig-zag LEB128 numbers (a count, or minus a run of empty counters) and
/// rejects what the decoder would overflow on: runs and counts it cannot hold, too many samples.
fn check_counts(payload: &[u8]) -> Result<(), HdrError> {
    let mut total: u64 = 0;
    let mut i = 0;
    while i < payload.len() {
        // Up to 9 bytes: 8 of 7 bits, the 9th with all 8 (the format's varint).
        let mut v: u64 = 0;
        let mut k = 0;
        loop {
            let b = *payload
                .get(i + k)
                .ok_or(HdrError::Format("truncated number"))?;
            if k == 8 {
                v |= u64::from(b) << 56;
                k += 1;
                break;
            }
            v |= u64::from(b & 0x7f) << (7 * k);
            k += 1;
            if b & 0x80 == 0 {
                break;
            }
        }
        i += k;
        let n = ((v >> 1) as i64) ^ -((v & 1) as i64);
        if n == i64::MIN {
            return Err(HdrError::Counts);
        }
        if n > 0 {
            total = total.saturating_add(n as u64);
            if total > MAX_COUNT {
                return Err(HdrError::Counts);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use super::*;

    fn hist(values: &[u64]) -> Histogram<u64> {
        let mut h = Histogram::new(3).unwrap();
        for &v in values {
            h.record(v).unwrap();
        }
        h
    }

    #[test]
    fn round_trips_and_merges_grow() {
        let h = hist(&[45_300, 46_000, 50_000, 1_250_000]);
        let bytes = encode(&h).unwrap();
        assert!(bytes.len() < 200, "{} bytes", bytes.len());
        let back = decode(&bytes).unwrap();
        assert_eq!(back.len(), 4);
        assert_eq!(back.value_at_quantile(0.5), h.value_at_quantile(0.5));
        assert_eq!(back.max(), h.max());
        // A decoded histogram takes larger values than its own range.
        let mut back = back;
        back.add(hist(&[60_000_000_000])).unwrap();
        assert_eq!(back.len(), 5);
        // A u32 histogram (as the agent's windows keep them) reads back as u64.
        let mut small: Histogram<u32> = Histogram::new(3).unwrap();
        small.record(7).unwrap();
        assert_eq!(decode(&encode(&small).unwrap()).unwrap().len(), 1);
    }

    /// The V2 deflate wrapper around raw inner bytes.
    fn wrap(inner: &[u8]) -> Vec<u8> {
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        z.write_all(inner).unwrap();
        let deflated = z.finish().unwrap();
        let mut out = V2_DEFLATE_COOKIE.to_be_bytes().to_vec();
        out.extend((deflated.len() as u32).to_be_bytes());
        out.extend(deflated);
        out
    }

    fn header(payload_len: u32, sigfig: u32) -> Vec<u8> {
        let mut b = V2_COOKIE.to_be_bytes().to_vec();
        b.extend(payload_len.to_be_bytes());
        b.extend(0u32.to_be_bytes());
        b.extend(sigfig.to_be_bytes());
        b.extend(1u64.to_be_bytes());
        b.extend(2048u64.to_be_bytes());
        b.extend(1.0f64.to_be_bytes());
        b
    }

    #[test]
    fn rejects_hostile_bytes() {
        let good = encode(&hist(&[1, 2, 3])).unwrap();
        assert_eq!(decode(&good[..7]), Err(HdrError::Format("short header")));
        assert_eq!(
            decode(&good[..good.len() - 1]),
            Err(HdrError::Format("length does not match"))
        );
        assert_eq!(decode(b"garbage!"), Err(HdrError::Format("bad cookie")));
        assert_eq!(
            decode(&vec![0; MAX_ENCODED + 1]),
            Err(HdrError::TooLong(MAX_ENCODED + 1))
        );
        // A payload length of 4 GiB in the header: refused before anything is allocated.
        let mut h = header(u32::MAX, 3);
        h.push(2);
        assert_eq!(
            decode(&wrap(&h)),
            Err(HdrError::Format("inner length does not match"))
        );
        // Precision that would take hundreds of MiB.
        let mut h = header(1, 5);
        h.push(2);
        assert_eq!(decode(&wrap(&h)), Err(HdrError::Precision(5)));
        // A deflate bomb.
        let bomb = wrap(&vec![0u8; MAX_INFLATED + 10]);
        assert!(bomb.len() < MAX_ENCODED);
        assert_eq!(decode(&bomb), Err(HdrError::Inflated));
        // A count the decoder's negation overflows on (zig-zag of i64::MIN), and too many samples.
        let mut h = header(9, 3);
        h.extend([0xff; 9]);
        assert_eq!(decode(&wrap(&h)), Err(HdrError::Counts));
        // Two counts of 2^40 (zig-zag 2^41, six LEB128 bytes each): more samples than allowed.
        let big = [0x80, 0x80, 0x80, 0x80, 0x80, 0x40];
        let mut h = header(12, 3);
        h.extend(big);
        h.extend(big);
        assert_eq!(decode(&wrap(&h)), Err(HdrError::Counts));
        // A truncated number.
        let mut h = header(1, 3);
        h.push(0x80);
        assert_eq!(decode(&wrap(&h)), Err(HdrError::Format("truncated number")));
    }
}
