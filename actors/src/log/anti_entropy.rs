//! The anti-entropy answer: which records of a [`MeshState`] a peer's
//! digest lacks, and when a bucket has been quiet long enough to send.

use std::collections::{BTreeMap, BTreeSet};

use super::crdt::cbor;
use super::mesh::{MeshState, StateDigest};
use super::records::{Record, RecordKey, BUCKETS};

/// When each bucket of a state last changed, as far as its owner noticed:
/// anti-entropy answers only buckets that have been quiet for a while,
/// since a recent change is most likely still travelling by gossip to the
/// node that asks (sending it would double the traffic for nothing). A node
/// that asks eagerly (just started, or catching up) gets every differing
/// bucket. Pure: the time is an argument.
#[derive(Clone, Debug, Default)]
pub struct Settled {
    generations: Vec<u64>,
    changed_ms: Vec<i64>,
}

impl Settled {
    /// Notes the buckets that changed since the last look, at `now_ms`.
    pub fn observe(&mut self, state: &MeshState, now_ms: i64) {
        let gens = state.generations();
        if self.generations.len() != BUCKETS {
            self.generations = gens;
            self.changed_ms = vec![i64::MIN; BUCKETS];
            return;
        }
        for (b, g) in gens.into_iter().enumerate() {
            if self.generations[b] != g {
                self.generations[b] = g;
                self.changed_ms[b] = now_ms;
            }
        }
    }

    /// Whether bucket `b` has not changed for `quiet_ms`.
    pub fn is_quiet(&self, b: usize, now_ms: i64, quiet_ms: i64) -> bool {
        self.changed_ms.get(b).is_none_or(|t| now_ms.saturating_sub(*t) >= quiet_ms)
    }
}

/// What a node answers to a peer's anti-entropy pull: the records of the
/// buckets where `theirs` differs from `state`, from bucket `from_bucket`
/// on (only buckets quiet for `quiet_ms` unless the pull is eager), in
/// bucket order, whole buckets until past `budget` bytes; and the bucket to
/// ask from next when the answer was cut. Each record goes through `fill`
/// first (a node puts back the signatures it keeps on disk). Pure: the
/// actor and the simulator both call it.
#[allow(clippy::too_many_arguments)]
pub fn answer_pull(
    state: &mut MeshState,
    settled: &Settled,
    theirs: &StateDigest,
    from_bucket: u16,
    eager: bool,
    now_ms: i64,
    quiet_ms: i64,
    budget: usize,
    fill: &mut dyn FnMut(&RecordKey, &mut Record),
) -> (Vec<(RecordKey, Record)>, Option<u16>) {
    let differing: BTreeSet<usize> = state
        .differing(theirs)
        .into_iter()
        .filter(|b| *b >= usize::from(from_bucket))
        .filter(|b| eager || settled.is_quiet(*b, now_ms, quiet_ms))
        .collect();
    // One pass over the state, grouped by bucket, in bucket order.
    let mut by_bucket: BTreeMap<usize, Vec<(RecordKey, Record)>> = BTreeMap::new();
    for (k, r) in state.records_in(&differing) {
        by_bucket.entry(k.bucket()).or_default().push((k, r));
    }
    let mut records = Vec::new();
    let mut bytes = 0;
    for (b, these) in by_bucket {
        if bytes > budget {
            return (records, Some(b as u16));
        }
        for (k, mut r) in these {
            fill(&k, &mut r);
            bytes += cbor(&r).len();
            records.push((k, r));
        }
    }
    (records, None)
}
