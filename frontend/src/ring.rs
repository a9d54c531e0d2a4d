//! Which shard owns a proxy: rendezvous (highest-random-weight) hashing.
//!
//! Every live shard gets a score for a proxy's node id; the highest score
//! owns the proxy:
//!
//! ```text
//!   owner(node) = argmax over live shards s of  (score(s, node), s)
//!   score(s, node) = xxh3_64_with_seed(le32(len(s)) ‖ s ‖ node, RING_SEED)
//! ```
//!
//! Rendezvous hashing needs no virtual nodes and no shared ring layout: any
//! frontend that knows the same set of shard ids computes the same owner.
//! When a shard leaves, exactly the proxies it owned move (each to the shard
//! with its next-highest score); when a shard joins, it takes exactly the
//! proxies for which it now scores highest, about 1/N of them, and nothing
//! else moves. Excluding a shard locally (say, one whose stream just failed)
//! therefore picks the same owner as a membership without it.
//!
//! ## The hash, and why it must never change
//! Every frontend of a fleet, whatever its release, must agree on owners:
//! during a rolling upgrade two frontends that disagreed would bounce
//! proxies between shards. The score is therefore a fixed function of its
//! inputs, not `std`'s randomly keyed `DefaultHasher` nor anything whose
//! output a dependency upgrade may change:
//!
//! - **XXH3-64 with a fixed seed** ([`RING_SEED`], the ASCII bytes of
//!   `meshplan` read as a little-endian `u64`). XXH3's output is frozen by
//!   its specification (xxHash 0.8.0 onward; the values pinned in
//!   `score_is_release_stable` were cross-checked against the reference C
//!   implementation), it is already the project's
//!   content hash (resource versions), it is fast enough to score every
//!   shard per stream on each membership change, and its avalanche quality
//!   gives the balance the tests below check. A keyed PRF such as SipHash
//!   would only add something if the key were secret; a fleet-wide key
//!   every frontend must share is not, so it buys no resistance to crafted
//!   node ids and costs speed.
//! - The shard id is length-prefixed, so `("ab", "c")` and `("a", "bc")`
//!   hash different bytes.
//! - `score_is_release_stable` pins known scores: if it fails, the ring
//!   changed, which is a breaking change to the fleet, not a test to update.
//!
//! Ties (astronomically rare) go to the greater shard id, so the owner is a
//! total function of the inputs.

use std::sync::Arc;

/// The seed of the ring's hash: `b"meshplan"` as a little-endian `u64`.
/// Part of the wire contract between frontends; never change it.
pub const RING_SEED: u64 = u64::from_le_bytes(*b"meshplan");

/// The score of a shard for a node id; the highest score owns the node.
pub fn score(shard_id: &str, node_id: &str) -> u64 {
    let mut input = Vec::with_capacity(4 + shard_id.len() + node_id.len());
    input.extend_from_slice(&(shard_id.len() as u32).to_le_bytes());
    input.extend_from_slice(shard_id.as_bytes());
    input.extend_from_slice(node_id.as_bytes());
    xxhash_rust::xxh3::xxh3_64_with_seed(&input, RING_SEED)
}

/// The set of shards that may own proxies, and the owner of each node id.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ShardRing {
    /// Sorted, without duplicates.
    shards: Vec<Arc<str>>,
}

impl ShardRing {
    pub fn new<I, S>(shard_ids: I) -> ShardRing
    where
        I: IntoIterator<Item = S>,
        S: Into<Arc<str>>,
    {
        let mut shards: Vec<Arc<str>> = shard_ids.into_iter().map(Into::into).collect();
        shards.sort();
        shards.dedup();
        ShardRing { shards }
    }

    /// The shard that owns `node_id`; `None` when the ring is empty.
    pub fn owner(&self, node_id: &str) -> Option<&Arc<str>> {
        self.owner_excluding(node_id, |_| false)
    }

    /// The owner among the shards for which `excluded` is false: the same
    /// shard a ring without them would pick.
    pub fn owner_excluding(&self, node_id: &str, mut excluded: impl FnMut(&str) -> bool) -> Option<&Arc<str>> {
        self.shards
            .iter()
            .filter(|s| !excluded(s))
            .map(|s| (score(s, node_id), s))
            .max_by(|a, b| a.cmp(b))
            .map(|(_, s)| s)
    }

    pub fn shards(&self) -> &[Arc<str>] {
        &self.shards
    }

    pub fn contains(&self, shard_id: &str) -> bool {
        self.shards.binary_search_by(|s| (**s).cmp(shard_id)).is_ok()
    }

    pub fn len(&self) -> usize {
        self.shards.len()
    }

    pub fn is_empty(&self) -> bool {
        self.shards.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    const NODES: usize = 100_000;

    fn node(i: usize) -> String {
        format!(
            "sidecar~10.{}.{}.{}~pod-{i}.ns-{}~ns-{}.svc.cluster.local",
            i >> 16 & 255,
            i >> 8 & 255,
            i & 255,
            i % 37,
            i % 37
        )
    }

    fn shards(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("shard-{i}")).collect()
    }

    fn owners(ring: &ShardRing) -> Vec<Arc<str>> {
        (0..NODES).map(|i| ring.owner(&node(i)).expect("a shard").clone()).collect()
    }

    #[test]
    fn score_is_release_stable() {
        // Changing these values changes every proxy's owner in a mixed-release fleet.
        assert_eq!(RING_SEED, 0x6e61_6c70_6873_656d);
        let node = "sidecar~10.1.2.3~reviews-v1-7f9c.default~default.svc.cluster.local";
        assert_eq!(score("shard-a", node), 0xc9d2_8d27_718b_e2a5, "{:#x}", score("shard-a", node));
        assert_eq!(score("shard-b", node), 0x3d7b_2099_31fb_b003, "{:#x}", score("shard-b", node));
        assert_ne!(score("ab", "c"), score("a", "bc"));
    }

    #[test]
    fn owner_is_deterministic_and_independent_of_order() {
        let a = ShardRing::new(["s1", "s2", "s3"]);
        let b = ShardRing::new(["s3", "s1", "s2", "s1"]);
        assert_eq!(a, b);
        for i in 0..1000 {
            assert_eq!(a.owner(&node(i)), b.owner(&node(i)));
        }
        assert_eq!(ShardRing::default().owner("x"), None);
        assert!(a.contains("s2") && !a.contains("s4"));
    }

    #[test]
    fn load_is_balanced() {
        for n in [2, 3, 5, 8] {
            let ring = ShardRing::new(shards(n));
            let mut load: HashMap<Arc<str>, usize> = HashMap::new();
            for owner in owners(&ring) {
                *load.entry(owner).or_default() += 1;
            }
            let ideal = NODES as f64 / n as f64;
            for (shard, count) in &load {
                let off = (*count as f64 - ideal).abs() / ideal;
                assert!(off < 0.03, "{n} shards: {shard} owns {count}, ideal {ideal:.0}");
            }
            assert_eq!(load.len(), n);
        }
    }

    #[test]
    fn only_the_leaving_shards_proxies_move() {
        let all = shards(5);
        let before = owners(&ShardRing::new(all.clone()));
        let leaving = "shard-2";
        let after = owners(&ShardRing::new(all.iter().filter(|s| *s != leaving).cloned()));
        let mut moved = 0;
        for (b, a) in before.iter().zip(&after) {
            if &**b == leaving {
                moved += 1;
                assert_ne!(&**a, leaving);
            } else {
                assert_eq!(b, a, "a proxy of a staying shard moved");
            }
        }
        let ideal = NODES as f64 / 5.0;
        assert!((moved as f64 - ideal).abs() / ideal < 0.03, "moved {moved}, ideal {ideal:.0}");
    }

    #[test]
    fn a_joining_shard_takes_its_share_and_nothing_else_moves() {
        for n in [1, 2, 4, 9] {
            let before = owners(&ShardRing::new(shards(n)));
            let after = owners(&ShardRing::new(shards(n + 1)));
            let joined = format!("shard-{n}");
            let mut moved = 0;
            for (b, a) in before.iter().zip(&after) {
                if b != a {
                    assert_eq!(**a, *joined, "a proxy moved between two old shards");
                    moved += 1;
                }
            }
            let ideal = NODES as f64 / (n + 1) as f64;
            assert!((moved as f64 - ideal).abs() / ideal < 0.03, "{n}+1 shards: moved {moved}, ideal {ideal:.0}");
        }
    }

    #[test]
    fn excluding_a_shard_picks_the_owner_of_the_ring_without_it() {
        let full = ShardRing::new(shards(4));
        let without = ShardRing::new(shards(4).into_iter().filter(|s| s != "shard-1"));
        for i in 0..10_000 {
            let node = node(i);
            assert_eq!(full.owner_excluding(&node, |s| s == "shard-1"), without.owner(&node));
        }
    }
}
