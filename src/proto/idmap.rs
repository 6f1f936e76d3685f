//! Maps keyed by integer ids on the data path (a tunnel connection's streams, the origin's
//! services, the edge's carriers), hashed with one folded multiplication instead of std's
//! SipHash (docs/design.md §2.8, "Id maps").

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};

/// A map keyed by a stream id (or another integer id the process hands out): see
/// [`IdHashing`]. For integer keys only: it is no hash for strings or for keys a client
/// picks.
pub type IdMap<K, V> = HashMap<K, V, IdHashing>;

/// The hashing of the maps the data path looks up several times per read (a connection's
/// streams, the origin's services, the edge's carriers): one folded multiplication instead of
/// std's SipHash, which was 3.7 % of the origin's instructions moving ssh's bytes
/// (docs/design.md §2.8, "Id maps"). Keys are integers this process hands out or the peer's stream ids,
/// which the origin only accepts increasing (`mux`'s OPEN), from one authenticated peer;
/// the seed is random per map all the same, so a peer cannot aim ids at one bucket.
#[derive(Clone)]
pub struct IdHashing {
    seed: u64,
}

impl Default for IdHashing {
    fn default() -> Self {
        IdHashing {
            seed: RandomState::new().hash_one(0x5eed_u64),
        }
    }
}

#[cfg(test)]
impl IdHashing {
    fn with_seed(seed: u64) -> Self {
        IdHashing { seed }
    }
}

impl BuildHasher for IdHashing {
    type Hasher = IdHasher;
    fn build_hasher(&self) -> IdHasher {
        IdHasher(self.seed)
    }
}

/// [`IdHashing`]'s hasher: the seeded key times 2^64/φ as a 128-bit product, its two halves
/// XORed (foldhash's folded multiply), so that every bit of the key reaches the low bits the
/// map takes its bucket from and the top seven it takes a tag from. (A plain 64-bit product
/// leaves its low bits to the key's low bits alone: a reviewer's simulation found seeds that
/// left half the buckets empty for sequential ids.)
pub struct IdHasher(u64);

impl Hasher for IdHasher {
    fn write(&mut self, bytes: &[u8]) {
        // Integer keys use the methods below; this serves any other key, eight bytes a step
        // (the last one zero-padded, no length: not for strings).
        for chunk in bytes.chunks(8) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(b));
        }
    }
    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }
    fn write_u64(&mut self, n: u64) {
        let product = u128::from(self.0 ^ n) * 0x9e37_79b9_7f4a_7c15;
        self.0 = product as u64 ^ (product >> 64) as u64;
    }
    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_hashing_spreads_sequential_stream_ids_over_buckets_and_tags() {
        // The ids a connection's streams take (odd, increasing), as hashbrown uses a hash:
        // the low bits pick the bucket, the top seven are the tag it compares first. Fixed
        // seeds (64 of them, the reviewer's bad ones for the plain product among them), so
        // the test is the same every run; maps take theirs from `RandomState`.
        let ids: Vec<u32> = (0..4096).map(|i| 2 * i + 1).collect();
        let mut seeds = vec![0x8a73_9c35_d25d_adcf, 0x82ca_2190_698f_69c2, 0, u64::MAX];
        let mut x = 0x1234_5678_9abc_def1_u64;
        while seeds.len() < 64 {
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            seeds.push(x);
        }
        for seed in seeds {
            let h = IdHashing::with_seed(seed);
            let mut buckets = vec![0u32; 4096];
            let mut tags = [0u32; 128];
            for &id in &ids {
                let x = h.hash_one(id);
                buckets[(x & 4095) as usize] += 1;
                tags[(x >> 57) as usize] += 1;
            }
            // 4096 keys in 4096 buckets: a random hash leaves about 1/e empty, none crowded.
            let empty = buckets.iter().filter(|&&n| n == 0).count();
            assert!(
                (1200..1750).contains(&empty),
                "seed {seed:#x}: {empty} empty"
            );
            assert!(
                buckets.iter().all(|&n| n <= 12),
                "seed {seed:#x}: a crowded bucket"
            );
            assert!(
                tags.iter().all(|&n| (16..=48).contains(&n)),
                "seed {seed:#x}: tags"
            );
        }
        // Another map, another seed: the same id hashes elsewhere. Keys that differ only in
        // their high bits (a u64 counter far along) spread too.
        let h = IdHashing::default();
        let high: std::collections::HashSet<u64> =
            (0..64u64).map(|i| h.hash_one(i << 50) & 4095).collect();
        assert!(
            high.len() > 48,
            "{} buckets for 64 high-bit keys",
            high.len()
        );
        let other = IdHashing::default();
        assert!(ids.iter().any(|&id| h.hash_one(id) != other.hash_one(id)));
        // A map of them works like any other.
        let mut m: IdMap<u32, u32> = IdMap::default();
        for &id in &ids {
            m.insert(id, id * 3);
        }
        assert!(ids.iter().all(|id| m[id] == id * 3) && m.len() == ids.len());
    }
}
