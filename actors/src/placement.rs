//! Where copies of a backup series live: weighted rendezvous hashing.
//!
//! For the key (origin node, path), every candidate peer gets a score from
//! `sha256(peer id ‖ key)`, scaled by its weight; the `r` highest scores
//! hold the series. Every node computes the same answer from the same
//! membership, without talking to anyone, and a peer joining or leaving
//! moves only the keys whose top `r` it enters or leaves.
//!
//! The weight is free space rounded down to a power of two of GiB (at least
//! 1): a node with twice the free space takes about twice the keys, but
//! everyday changes in free space do not move keys around. Free space is
//! what each node says of itself, so no weight counts for more than
//! [`MAX_OVER_MEDIAN`] times the median of all: a node that claims
//! boundless space (a liar, or a broken disk probe) takes a few times its
//! share of the keys, not every key.

use sha2::{Digest as _, Sha256};

/// A peer that may hold copies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    pub peer_id: String,
    pub name: String,
    pub free_bytes: u64,
}

/// The weight of a peer with `free_bytes` of free space.
pub fn weight(free_bytes: u64) -> u64 {
    let gib = free_bytes >> 30;
    if gib <= 1 {
        1
    } else {
        1 << (63 - gib.leading_zeros())
    }
}

/// The rendezvous score of `peer_id` for the series (node, path).
pub fn score(peer_id: &str, node: &str, path: &str, weight: u64) -> f64 {
    let mut h = Sha256::new();
    for part in [peer_id, node, path] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part.as_bytes());
    }
    let d: [u8; 32] = h.finalize().into();
    let x = u64::from_be_bytes(d[..8].try_into().unwrap_or_default());
    // Uniform in (0, 1); weighted rendezvous: w / -ln(u).
    let u = ((x >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    weight as f64 / -u.ln()
}

/// No candidate weighs more than this many times the median weight.
pub const MAX_OVER_MEDIAN: u64 = 4;

/// The greatest weight a candidate counts for among `candidates`.
pub fn weight_cap(candidates: &[Candidate]) -> u64 {
    let mut w: Vec<u64> = candidates.iter().map(|c| weight(c.free_bytes)).collect();
    if w.is_empty() {
        return u64::MAX;
    }
    let mid = w.len() / 2;
    let (_, median, _) = w.select_nth_unstable(mid);
    median.saturating_mul(MAX_OVER_MEDIAN)
}

/// Every candidate but the origin, best first.
pub fn rank<'a>(node: &str, path: &str, candidates: &'a [Candidate]) -> Vec<&'a Candidate> {
    let cap = weight_cap(candidates);
    let mut v: Vec<(f64, &Candidate)> = candidates
        .iter()
        .filter(|c| c.name != node)
        .map(|c| (score(&c.peer_id, node, path, weight(c.free_bytes).min(cap)), c))
        .collect();
    v.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| a.1.peer_id.cmp(&b.1.peer_id)));
    v.dedup_by(|a, b| a.1.peer_id == b.1.peer_id);
    v.into_iter().map(|(_, c)| c).collect()
}

/// The `r` holders of (node, path): fewer when fewer candidates exist.
pub fn holders<'a>(node: &str, path: &str, candidates: &'a [Candidate], r: usize) -> Vec<&'a Candidate> {
    let mut v = rank(node, path, candidates);
    v.truncate(r);
    v
}

/// Who copies series (node, path) to the offsite bucket: its own node
/// while it is a candidate, else the first of its holders that is. Every
/// node computes the same answer; when the one elected leaves, the next
/// takes over.
pub fn uploader<'a>(node: &str, path: &str, candidates: &'a [Candidate], r: usize) -> Option<&'a Candidate> {
    uploaders(node, path, candidates, r).into_iter().next()
}

/// The uploader of (node, path) ([`uploader`]), then who stands in for it
/// when it lags: its own node while a candidate, then its holders in order.
pub fn uploaders<'a>(node: &str, path: &str, candidates: &'a [Candidate], r: usize) -> Vec<&'a Candidate> {
    let mut v: Vec<&Candidate> = candidates.iter().filter(|c| c.name == node).take(1).collect();
    v.extend(holders(node, path, candidates, r.max(1)));
    v
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use super::*;

    fn peers(n: usize) -> Vec<Candidate> {
        (0..n)
            .map(|i| Candidate { peer_id: format!("12D3KooPeer{i:03}"), name: format!("n{i}"), free_bytes: 100 << 30 })
            .collect()
    }

    fn names(v: &[&Candidate]) -> BTreeSet<String> {
        v.iter().map(|c| c.name.clone()).collect()
    }

    #[test]
    fn the_uploader_is_the_origin_then_its_first_holder() {
        let p = peers(5);
        assert_eq!(uploader("n2", "/srv", &p, 2).unwrap().name, "n2");
        let without: Vec<Candidate> = p.iter().filter(|c| c.name != "n2").cloned().collect();
        let first = holders("n2", "/srv", &without, 2)[0].name.clone();
        assert_eq!(uploader("n2", "/srv", &without, 2).unwrap().name, first);
        let rest: Vec<Candidate> = without.iter().filter(|c| c.name != first).cloned().collect();
        let next = uploader("n2", "/srv", &rest, 2).unwrap().name.clone();
        assert_ne!(next, first);
        assert!(uploader("n2", "/srv", &[], 2).is_none());
    }

    #[test]
    fn weight_is_a_power_of_two_of_gib() {
        assert_eq!(weight(0), 1);
        assert_eq!(weight(1 << 30), 1);
        assert_eq!(weight(3 << 30), 2);
        assert_eq!(weight(100 << 30), 64);
        assert_eq!(weight(127 << 30), 64);
        assert_eq!(weight(128 << 30), 128);
    }

    #[test]
    fn deterministic_and_independent_of_input_order() {
        let p = peers(7);
        let mut rev = p.clone();
        rev.reverse();
        for i in 0..200 {
            let path = format!("/srv/app{i}");
            assert_eq!(names(&holders("n2", &path, &p, 3)), names(&holders("n2", &path, &rev, 3)));
        }
    }

    #[test]
    fn never_the_origin_and_fewer_when_the_mesh_is_small() {
        let p = peers(3);
        for i in 0..100 {
            let h = holders("n1", &format!("/d{i}"), &p, 3);
            assert_eq!(h.len(), 2);
            assert!(h.iter().all(|c| c.name != "n1"));
        }
        assert!(holders("n0", "/x", &p[..1], 3).is_empty());
    }

    #[test]
    fn balanced_across_nodes() {
        let p = peers(5);
        let mut count: BTreeMap<String, usize> = BTreeMap::new();
        let keys = 2000;
        for i in 0..keys {
            let origin = format!("n{}", i % 5);
            for c in holders(&origin, &format!("/data/{i}"), &p, 3) {
                *count.entry(c.name.clone()).or_default() += 1;
            }
        }
        // 2000 keys × 3 copies over 5 nodes: 1200 each on average.
        for (n, c) in &count {
            assert!((1080..=1320).contains(c), "{n} holds {c} of 6000 copies: {count:?}");
        }
    }

    #[test]
    fn a_leave_moves_only_the_keys_it_held_and_a_join_only_the_keys_it_takes() {
        let before = peers(6);
        let after_leave: Vec<Candidate> = before.iter().filter(|c| c.name != "n3").cloned().collect();
        let mut after_join = before.clone();
        after_join.push(Candidate { peer_id: "12D3KooNew".into(), name: "new".into(), free_bytes: 100 << 30 });
        let (mut moved_leave, mut moved_join) = (0, 0);
        for i in 0..1000 {
            let path = format!("/k{i}");
            let b = names(&holders("n0", &path, &before, 3));
            let l = names(&holders("n0", &path, &after_leave, 3));
            if b.contains("n3") {
                // Exactly n3 is replaced.
                assert_eq!(b.difference(&l).collect::<Vec<_>>(), vec!["n3"]);
                moved_leave += 1;
            } else {
                assert_eq!(b, l, "key {path} moved though n3 did not hold it");
            }
            let j = names(&holders("n0", &path, &after_join, 3));
            if j.contains("new") {
                assert_eq!(j.difference(&b).collect::<Vec<_>>(), vec!["new"]);
                moved_join += 1;
            } else {
                assert_eq!(b, j, "key {path} moved though the new node does not take it");
            }
        }
        // n3 held about 3/5 of the keys; the newcomer takes about 3/6.
        assert!((500..=700).contains(&moved_leave), "{moved_leave}");
        assert!((400..=600).contains(&moved_join), "{moved_join}");
    }

    #[test]
    fn more_free_space_takes_more_keys() {
        let mut p = peers(4);
        p[0].free_bytes = 400 << 30; // weight 256 against 64
        let mut n0 = 0;
        for i in 0..2000 {
            if holders("origin", &format!("/w{i}"), &p, 1)[0].name == "n0" {
                n0 += 1;
            }
        }
        // Weights 4:1:1:1 → n0 wins about 4/7 of single-holder keys.
        assert!((1000..=1300).contains(&n0), "{n0}");
    }

    #[test]
    fn a_node_that_claims_boundless_space_takes_a_few_shares_not_every_key() {
        let mut p = peers(20);
        p[7].free_bytes = u64::MAX; // the liar
        let (mut liar, keys, r) = (0, 2000, 3);
        for i in 0..keys {
            if holders("origin", &format!("/x{i}"), &p, r).iter().any(|c| c.name == "n7") {
                liar += 1;
            }
        }
        // Honest share: 3 of 20 holders, 300 of 2000 keys. Uncapped, the
        // liar would hold every key; capped at 4× the median, at most
        // about 4 × 3/23 of them.
        assert!(liar < 4 * keys * r / (20 + 3), "{liar} of {keys}");
        assert!(liar > keys * r / 20, "still more than an honest share: {liar}");
    }
}
