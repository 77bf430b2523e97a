//! The fixed hashes behind every pinglist choice (xxh3-64 of the `xxhash-rust` crate).
//!
//! The first field is encoded as a one-byte tag, so the uses never collide by construction,
//! then `le32(len) ‖ UTF-8 bytes`; its hash seeds the hash of the second field, so scoring many
//! candidates against one node hashes each candidate's bytes in place (no concatenation):
//!
//! | use | value |
//! |---|---|
//! | pick score of `peer` for `prober` | `xxh3_64_with_seed(peer, xxh3_64("p" ‖ le32(len prober) ‖ prober))` |
//! | duty score of `node` for destination zone `zone` | `xxh3_64_with_seed(zone, xxh3_64("z" ‖ le32(len node) ‖ node))` |
//! | ring position of `node` | `xxh3_64("r" ‖ le32(len node) ‖ node)` |
//!
//! Higher scores win; ties (a 64-bit collision) are broken by the node id, larger first, so
//! every order is total and every agent computes the same one.
use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

const PICK: u8 = b'p';
const DUTY: u8 = b'z';
const RING: u8 = b'r';

/// A score with its tie-breaker: compares by score, then by id.
pub type Key<'a> = (u64, &'a str);

/// Scores many second fields against one first field.
pub struct Scorer {
    seed: u64,
}

impl Scorer {
    /// Pick scores of candidate peers for `prober`.
    pub fn pick(prober: &str) -> Scorer {
        Scorer {
            seed: tagged(PICK, prober),
        }
    }

    /// Duty scores of `node` for destination zones.
    pub fn duty(node: &str) -> Scorer {
        Scorer {
            seed: tagged(DUTY, node),
        }
    }

    pub fn score(&self, second: &str) -> u64 {
        xxh3_64_with_seed(second.as_bytes(), self.seed)
    }
}

/// Duty score of `node` for destination zone `zone` (one-off; [`Scorer::duty`] for many).
pub fn duty(node: &str, zone: &str) -> u64 {
    Scorer::duty(node).score(zone)
}

/// Position of `node` on the guard ring.
pub fn ring(node: &str) -> u64 {
    tagged(RING, node)
}

/// `xxh3_64(tag ‖ le32(len s) ‖ s)`.
fn tagged(tag: u8, s: &str) -> u64 {
    let mut buf = Vec::with_capacity(1 + 4 + s.len());
    buf.push(tag);
    // Ids and zone names are bounded far below 4 GiB by discovery; saturate anyway.
    buf.extend_from_slice(&u32::try_from(s.len()).unwrap_or(u32::MAX).to_le_bytes());
    buf.extend_from_slice(s.as_bytes());
    xxh3_64(&buf)
}

/// The `n` largest keys seen, kept sorted largest first: one comparison for most candidates,
/// no buffer of them all.
pub struct Top<'a> {
    n: usize,
    best: Vec<(Key<'a>, u32)>,
}

impl<'a> Top<'a> {
    pub fn new(n: usize) -> Top<'a> {
        Top {
            n,
            best: Vec::with_capacity(n.min(256)),
        }
    }

    pub fn push(&mut self, key: Key<'a>, item: u32) {
        if self.best.len() == self.n {
            match self.best.last() {
                Some(last) if key > last.0 => {
                    self.best.pop();
                }
                _ => return,
            }
        }
        let at = self.best.partition_point(|b| b.0 > key);
        self.best.insert(at, (key, item));
    }

    /// The kept keys, largest first.
    pub fn into_vec(self) -> Vec<(Key<'a>, u32)> {
        self.best
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PINNED_RING: u64 = 6_916_074_331_827_627_214;
    const PINNED_PICK: u64 = 8_828_923_814_048_733_468;

    #[test]
    fn encodings_are_fixed() {
        // A change here changes every agent's pinglist (a protocol change).
        let seed = xxh3_64(&[b'p', 1, 0, 0, 0, b'a']);
        assert_eq!(
            Scorer::pick("a").score("bc"),
            xxh3_64_with_seed(b"bc", seed)
        );
        let seed = xxh3_64(&[b'z', 2, 0, 0, 0, b'n', b'1']);
        assert_eq!(duty("n1", "eu"), xxh3_64_with_seed(b"eu", seed));
        assert_eq!(ring("a"), xxh3_64(&[b'r', 1, 0, 0, 0, b'a']));
        // Pinned values, so a change of the hash crate cannot go unnoticed.
        assert_eq!(ring("node-1"), PINNED_RING);
        assert_eq!(Scorer::pick("node-1").score("node-2"), PINNED_PICK);
        // Fields do not run together, uses do not collide.
        assert_ne!(Scorer::pick("ab").score("c"), Scorer::pick("a").score("bc"));
        assert_ne!(Scorer::pick("a").score("b"), duty("a", "b"));
    }

    #[test]
    fn scorer_reuse_matches_one_off() {
        let s = Scorer::duty("node-1");
        assert_eq!(s.score("eu-1a"), duty("node-1", "eu-1a"));
        assert_eq!(s.score("x"), duty("node-1", "x"));
        assert_eq!(s.score("eu-1a"), duty("node-1", "eu-1a"));
    }

    #[test]
    fn top_orders_and_bounds() {
        let keys = [((3, "c"), 0), ((9, "a"), 1), ((3, "d"), 2), ((1, "z"), 3)];
        let top = |n| {
            let mut t = Top::new(n);
            for (k, i) in keys {
                t.push(k, i);
            }
            t.into_vec().iter().map(|k| k.1).collect::<Vec<_>>()
        };
        assert_eq!(top(3), vec![1, 2, 0], "score first, then id");
        assert_eq!(top(10), vec![1, 2, 0, 3]);
        assert!(top(0).is_empty());
    }
}
