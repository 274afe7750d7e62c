//! The simulated mesh: its settings and report, the nodes, where each
//! series' archives are, and a seeded random number generator.

use std::sync::Arc;

use backmesh_core::log::actor::QUIET_MS;
use backmesh_core::log::anti_entropy::{answer_pull, Settled};
use backmesh_core::log::entry::Entry;
use backmesh_core::log::hlc::Clock;
use backmesh_core::log::mesh::MeshState;
use backmesh_core::log::proto::STATE_BATCH_BYTES;
use backmesh_core::log::records::{Record, RecordKey, BUCKETS};
use backmesh_core::net::membership::{Membership, NodeInfo};

/// Simulated milliseconds per anti-entropy round (a node pulls every 10 s).
pub const ROUND_MS: i64 = 10_000;

/// Copies of each gossiped entry a node receives (gossipsub's mesh degree).
pub const GOSSIP_DEGREE: u64 = 6;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Model {
    Real,
    Compact,
}

#[derive(Clone, Debug)]
pub struct Config {
    pub nodes: usize,
    pub jobs: usize,
    pub every_min: i64,
    pub load_rounds: u32,
    pub loss: f64,
    pub dup: f64,
    /// Gossip takes 0 to this many rounds (of 10 s) to arrive, drawn per
    /// delivery: what arrives late may arrive after newer news.
    pub latency_rounds: u32,
    pub partition: f64,
    pub churn: f64,
    pub replicas: usize,
    pub keep: usize,
    pub archive_bytes: u64,
    pub seed: u64,
    pub model: Model,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            nodes: 100,
            jobs: 1,
            every_min: 5,
            load_rounds: 90,
            loss: 0.01,
            dup: 0.01,
            latency_rounds: 0,
            partition: 0.2,
            churn: 0.02,
            replicas: 3,
            keep: 10,
            archive_bytes: 1 << 30,
            seed: 1,
            model: Model::Compact,
        }
    }
}

/// What one run measured.
#[derive(Clone, Debug, PartialEq)]
pub struct Report {
    pub live_nodes: usize,
    pub records: usize,
    pub entries: u64,
    /// Rounds after the heal until every live node's digest was equal.
    pub rounds_to_converge: Option<u32>,
    /// Mean bytes of state per node (encoded records).
    pub state_bytes_per_node: u64,
    /// Per live node per simulated day: gossip received; anti-entropy
    /// (pulls with their digests, and answers) while the mesh is whole and
    /// busy, before the partition.
    pub gossip_bytes_per_node_day: u64,
    pub anti_entropy_bytes_per_node_day: u64,
    /// Anti-entropy bytes per live node from the heal until all agree.
    pub heal_bytes_per_node: u64,
    /// Archives held per live node after repair: mean and max.
    pub held_mean: f64,
    pub held_max: usize,
    /// Bytes repair moved, and the least any plan could move (the copies
    /// lost with the nodes that left).
    pub repair_bytes: u64,
    pub repair_min_bytes: u64,
    /// Replication rounds until no node planned a push or a handoff, when
    /// every node ran the real replica planner (meshes up to
    /// [`PLANNED_REPAIR_MAX`] nodes); `None` when repair was computed from
    /// the elections alone (larger meshes).
    pub repair_rounds: Option<u32>,
    /// Series whose every copy left with the churn (origin and all
    /// holders): nothing is left to repair from.
    pub lost_series: usize,
    pub violations: Vec<String>,
}

/// Largest mesh whose repair runs the real planner on every node (each
/// node elects the holders of what it keeps among all nodes: N² hashes).
pub const PLANNED_REPAIR_MAX: usize = 2_000;

/// xorshift64*: seeded, so every run replays.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
}

pub(crate) fn mix(id: u32, version: u32) -> u64 {
    let mut x = (u64::from(id) << 32 | u64::from(version)).wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// A write: the entry (real model) and the (record, version) pairs it sets.
#[derive(Clone)]
pub(crate) struct Write {
    pub(crate) entry: Option<Arc<Entry>>,
    pub(crate) touches: [(u32, u32); 2],
}

pub(crate) enum Batch {
    Real(Vec<(RecordKey, Record)>),
    Compact(Vec<(u32, u32)>),
}

pub(crate) enum Replica {
    Real { state: Box<MeshState>, settled: Settled },
    Compact { versions: Vec<u32>, digest: Vec<u64>, changed_ms: Vec<i64> },
}

/// The records of the compact model: their buckets and encoded sizes.
pub(crate) struct Layout {
    pub(crate) bucket_of: Vec<u16>,
    pub(crate) by_bucket: Vec<Vec<u32>>,
    pub(crate) size_of: Vec<u32>,
}

impl Replica {
    pub(crate) fn new(model: Model, records: usize) -> Self {
        match model {
            Model::Real => Replica::Real { state: Box::new(MeshState::new()), settled: Settled::default() },
            Model::Compact => Replica::Compact {
                versions: vec![0; records],
                digest: vec![0; BUCKETS],
                changed_ms: vec![i64::MIN; BUCKETS],
            },
        }
    }

    pub(crate) fn set(
        versions: &mut [u32],
        digest: &mut [u64],
        changed: &mut [i64],
        l: &Layout,
        id: u32,
        v: u32,
        now: i64,
    ) -> bool {
        let old = versions[id as usize];
        if v <= old {
            return false;
        }
        let b = l.bucket_of[id as usize] as usize;
        if old > 0 {
            digest[b] ^= mix(id, old);
        }
        digest[b] ^= mix(id, v);
        versions[id as usize] = v;
        changed[b] = now;
        true
    }

    /// Takes in a write at `now` (a node notices its changed buckets at once).
    pub(crate) fn write(&mut self, w: &Write, l: &Layout, now: i64) {
        match self {
            Replica::Real { state, settled } => {
                if let Some(e) = &w.entry {
                    state.apply(e);
                }
                settled.observe(state, now);
            }
            Replica::Compact { versions, digest, changed_ms } => {
                for (id, v) in w.touches {
                    Self::set(versions, digest, changed_ms, l, id, v, now);
                }
            }
        }
    }

    pub(crate) fn digest(&mut self) -> Vec<u64> {
        match self {
            Replica::Real { state, .. } => state.digest(),
            Replica::Compact { digest, .. } => digest.clone(),
        }
    }

    /// The answer to a pull, and its bytes.
    pub(crate) fn answer(
        &mut self,
        theirs: &[u64],
        from: u16,
        eager: bool,
        now: i64,
        l: &Layout,
    ) -> (Batch, Option<u16>, u64) {
        match self {
            Replica::Real { state, settled } => {
                let theirs = theirs.to_vec();
                let (records, next) =
                    answer_pull(state, settled, &theirs, from, eager, now, QUIET_MS, STATE_BATCH_BYTES, &mut |_, _| {});
                let bytes = records.iter().map(|(k, r)| (cbor_len(k) + cbor_len(r)) as u64).sum();
                (Batch::Real(records), next, bytes)
            }
            Replica::Compact { versions, digest, changed_ms } => {
                let mut out = Vec::new();
                let mut bytes = 0u64;
                for b in usize::from(from)..BUCKETS {
                    if digest[b] == theirs[b] || !(eager || now.saturating_sub(changed_ms[b]) >= QUIET_MS) {
                        continue;
                    }
                    if bytes > STATE_BATCH_BYTES as u64 {
                        return (Batch::Compact(out), Some(b as u16), bytes);
                    }
                    for id in &l.by_bucket[b] {
                        let v = versions[*id as usize];
                        if v > 0 {
                            out.push((*id, v));
                            bytes += u64::from(l.size_of[*id as usize]);
                        }
                    }
                }
                (Batch::Compact(out), None, bytes)
            }
        }
    }

    pub(crate) fn merge(&mut self, batch: &Batch, l: &Layout, now: i64) {
        match (self, batch) {
            (Replica::Real { state, settled }, Batch::Real(records)) => {
                for (k, r) in records {
                    state.merge_record(k, r);
                }
                settled.observe(state, now);
            }
            (Replica::Compact { versions, digest, changed_ms }, Batch::Compact(pairs)) => {
                for (id, v) in pairs {
                    Self::set(versions, digest, changed_ms, l, *id, *v, now);
                }
            }
            _ => {}
        }
    }

    pub(crate) fn bytes(&self, l: &Layout) -> u64 {
        match self {
            Replica::Real { state, .. } => {
                state.records().iter().map(|(k, r)| (cbor_len(k) + cbor_len(r)) as u64).sum()
            }
            Replica::Compact { versions, .. } => {
                versions.iter().enumerate().filter(|(_, v)| **v > 0).map(|(i, _)| u64::from(l.size_of[i])).sum()
            }
        }
    }
}

pub(crate) fn cbor_len<T: serde::Serialize>(v: &T) -> usize {
    let mut out = Vec::new();
    let _ = ciborium::into_writer(v, &mut out);
    out.len()
}

pub(crate) struct SimNode {
    pub(crate) name: String,
    pub(crate) peer: String,
    pub(crate) clock: Clock,
    pub(crate) seq: u64,
    pub(crate) up: bool,
    pub(crate) side: u8,
    pub(crate) caught_up: bool,
    pub(crate) replica: Replica,
    /// The node's own view of who is up, fed by what it hears (meshes up
    /// to [`MEMBERSHIP_MAX`] nodes; above, the simulator's truth stands in).
    pub(crate) membership: Option<Membership>,
}

/// Largest mesh whose nodes each keep a real [`Membership`] (every node
/// hears every reachable node every round: N² a round).
pub const MEMBERSHIP_MAX: usize = 500;

/// A peer silent this long is down (2 rounds).
pub(crate) const DOWN_AFTER_MS: i64 = 2 * ROUND_MS;

pub(crate) fn info_of(name: &str) -> NodeInfo {
    NodeInfo {
        name: name.to_string(),
        site: String::new(),
        free_bytes: 100 << 30,
        address: String::new(),
        version: String::new(),
        swarm_key: None,
        recipient: None,
    }
}
