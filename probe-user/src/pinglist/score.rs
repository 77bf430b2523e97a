//! The fixed hashes behind every pinglist choice.
//!
//! All three are xxh3-64 (seed 0) of a byte string that starts with a one-byte tag, so the
//! three uses never collide by construction, followed by length-prefixed fields
//! (`le32(len) ‖ bytes`, UTF-8), so distinct field tuples never encode alike:
//!
//! | use | bytes hashed |
//! |---|---|
//! | pick score of `peer` for `prober` | `"p" ‖ le32(|prober|) ‖ prober ‖ le32(|peer|) ‖ peer` |
//! | duty score of `node` for destination zone `zone` | `"z" ‖ le32(|node|) ‖ node ‖ le32(|zone|) ‖ zone` |
//! | ring position of `node` | `"r" ‖ le32(|node|) ‖ node` |
//!
//! Higher scores win; ties (a 64-bit collision) are broken by the node id, larger first, so
//! every order is total and every agent computes the same one.
use xxhash_rust::xxh3::xxh3_64;

const PICK: u8 = b'p';
const DUTY: u8 = b'z';
const RING: u8 = b'r';

/// A score with its tie-breaker: compares by score, then by id.
pub type Key<'a> = (u64, &'a str);

/// Scores many second fields against one first field without re-encoding the first.
pub struct Scorer {
    buf: Vec<u8>,
    prefix: usize,
}

impl Scorer {
    fn new(tag: u8, first: &str) -> Scorer {
        let mut buf = Vec::with_capacity(1 + 8 + first.len() + 64);
        buf.push(tag);
        push_field(&mut buf, first);
        let prefix = buf.len();
        Scorer { buf, prefix }
    }

    /// Pick scores of candidate peers for `prober`.
    pub fn pick(prober: &str) -> Scorer {
        Scorer::new(PICK, prober)
    }

    /// Duty scores of `node` for destination zones.
    pub fn duty(node: &str) -> Scorer {
        Scorer::new(DUTY, node)
    }

    pub fn score(&mut self, second: &str) -> u64 {
        self.buf.truncate(self.prefix);
        push_field(&mut self.buf, second);
        xxh3_64(&self.buf)
    }
}

/// Duty score of `node` for destination zone `zone` (one-off; [`Scorer::duty`] for many).
pub fn duty(node: &str, zone: &str) -> u64 {
    Scorer::duty(node).score(zone)
}

/// Position of `node` on the guard ring.
pub fn ring(node: &str) -> u64 {
    let mut buf = Vec::with_capacity(1 + 4 + node.len());
    buf.push(RING);
    push_field(&mut buf, node);
    xxh3_64(&buf)
}

fn push_field(buf: &mut Vec<u8>, s: &str) {
    // Ids and zone names are bounded far below 4 GiB by discovery; saturate anyway.
    let len = u32::try_from(s.len()).unwrap_or(u32::MAX);
    buf.extend_from_slice(&len.to_le_bytes());
    buf.extend_from_slice(s.as_bytes());
}

/// The `n` largest keys, largest first (all of them when there are fewer).
pub fn top<'a>(mut keys: Vec<(Key<'a>, u32)>, n: usize) -> Vec<(Key<'a>, u32)> {
    if keys.len() > n {
        if n == 0 {
            return Vec::new();
        }
        keys.select_nth_unstable_by(n - 1, |a, b| b.0.cmp(&a.0));
        keys.truncate(n);
    }
    keys.sort_unstable_by(|a, b| b.0.cmp(&a.0));
    keys
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodings_are_fixed() {
        // Pinned values: a change here changes every agent's pinglist (a protocol change).
        let mut buf = vec![b'p'];
        buf.extend_from_slice(&1u32.to_le_bytes());
        buf.extend_from_slice(b"a");
        buf.extend_from_slice(&2u32.to_le_bytes());
        buf.extend_from_slice(b"bc");
        assert_eq!(Scorer::pick("a").score("bc"), xxh3_64(&buf));
        // Length prefixes keep ("ab","c") and ("a","bc") apart.
        assert_ne!(Scorer::pick("ab").score("c"), Scorer::pick("a").score("bc"));
        assert_ne!(Scorer::pick("a").score("b"), duty("a", "b"));
        assert_eq!(ring("a"), xxh3_64(&[b'r', 1, 0, 0, 0, b'a']));
    }

    #[test]
    fn scorer_reuse_matches_one_off() {
        let mut s = Scorer::duty("node-1");
        assert_eq!(s.score("eu-1a"), duty("node-1", "eu-1a"));
        assert_eq!(s.score("x"), duty("node-1", "x"));
        assert_eq!(s.score("eu-1a"), duty("node-1", "eu-1a"));
    }

    #[test]
    fn top_orders_and_bounds() {
        let keys = vec![((3, "c"), 0), ((9, "a"), 1), ((3, "d"), 2), ((1, "z"), 3)];
        let t = top(keys.clone(), 3);
        assert_eq!(
            t.iter().map(|k| k.1).collect::<Vec<_>>(),
            vec![1, 2, 0],
            "score first, then id"
        );
        assert_eq!(top(keys.clone(), 10).len(), 4);
        assert!(top(keys, 0).is_empty());
    }
}
