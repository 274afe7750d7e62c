//! The large-N simulator: one process, N nodes, simulated time, a seeded
//! network; every run replays exactly from its seed.
//!
//! What runs is backmesh's own pure code: the mesh state's CRDT merge and
//! digest, the anti-entropy answer ([`answer_pull`], with its quiet-bucket
//! rule and batch cut), rendezvous placement ([`holders`]) and, up to
//! [`PLANNED_REPAIR_MAX`] nodes, every node's replica planner for repair. Two models
//! of a node's state:
//! - [`Model::Real`]: each node holds a real [`MeshState`] and folds real
//!   entries; used up to about a thousand nodes (each state holds the whole
//!   mesh's records, so memory grows with N²);
//! - [`Model::Compact`]: each node holds one version number per record.
//!   Every record in this workload has a single writer, so a record's
//!   versions are totally ordered and the CRDT join is the larger version;
//!   a bucket's digest is the XOR of a hash of (record, version) over its
//!   records, so two nodes' digests agree exactly when their versions do.
//!   Buckets are the real records' buckets, answers follow the same rule
//!   and cut, with record sizes measured on real records. This is what
//!   reaches 10,000 nodes.
//!
//! The scenario (all draws from the seed): every node registers `jobs`
//! jobs; for `load_rounds` rounds of 10 s the scheduler's own rule
//! ([`due`]) starts each job every `every_min` minutes, and the run's entry
//! is gossiped; gossip loses a share `loss` of deliveries, duplicates `dup`
//! and delays each by 0 to `latency_rounds` rounds; from a quarter of the load to its end a
//! random `partition` share of the nodes is cut off; at half the load a
//! share `churn` of the nodes leaves for good and as many new, empty nodes
//! join. Every round each live node pulls state from one random peer it can
//! reach (eagerly, batch after batch, until it has caught up once). Then
//! the writes stop and the partition heals: the report counts the rounds
//! until every live node's digest is equal (the goal: at most 2·log₂N).
//!
//! Invariants checked: after the heal every live node's state is equal and
//! holds the newest version of every record any live node had (nothing
//! merged is lost); every job is known everywhere; after repair, every
//! retained archive is at R live holders.

// Nodes are addressed by index throughout: an index is a node's identity in
// every table of the simulation, so loops run over indices.
#![allow(clippy::needless_range_loop)]

use std::collections::BTreeSet;
use std::sync::Arc;

use backmesh_actors::jobs::schedule::due;
use backmesh_actors::log::actor::QUIET_MS;
use backmesh_actors::log::anti_entropy::{answer_pull, Settled};
use backmesh_actors::log::crdt::Stamp;
use backmesh_actors::log::entry::{Entry, Event};
use backmesh_actors::log::hlc::Clock;
use backmesh_actors::log::mesh::MeshState;
use backmesh_actors::log::proto::STATE_BATCH_BYTES;
use backmesh_actors::log::records::{Record, RecordKey, SeriesKey, BUCKETS};
use backmesh_actors::log::seal::Seal;
use backmesh_actors::log::views::JobView;
use backmesh_actors::net::membership::{Membership, NodeInfo};
use backmesh_actors::replica::placement::{holders, Candidate};

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

fn mix(id: u32, version: u32) -> u64 {
    let mut x = (u64::from(id) << 32 | u64::from(version)).wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// A write: the entry (real model) and the (record, version) pairs it sets.
#[derive(Clone)]
struct Write {
    entry: Option<Arc<Entry>>,
    touches: [(u32, u32); 2],
}

enum Batch {
    Real(Vec<(RecordKey, Record)>),
    Compact(Vec<(u32, u32)>),
}

enum Replica {
    Real { state: Box<MeshState>, settled: Settled },
    Compact { versions: Vec<u32>, digest: Vec<u64>, changed_ms: Vec<i64> },
}

/// The records of the compact model: their buckets and encoded sizes.
struct Layout {
    bucket_of: Vec<u16>,
    by_bucket: Vec<Vec<u32>>,
    size_of: Vec<u32>,
}

impl Replica {
    fn new(model: Model, records: usize) -> Self {
        match model {
            Model::Real => Replica::Real { state: Box::new(MeshState::new()), settled: Settled::default() },
            Model::Compact => Replica::Compact {
                versions: vec![0; records],
                digest: vec![0; BUCKETS],
                changed_ms: vec![i64::MIN; BUCKETS],
            },
        }
    }

    fn set(
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
    fn write(&mut self, w: &Write, l: &Layout, now: i64) {
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

    fn digest(&mut self) -> Vec<u64> {
        match self {
            Replica::Real { state, .. } => state.digest(),
            Replica::Compact { digest, .. } => digest.clone(),
        }
    }

    /// The answer to a pull, and its bytes.
    fn answer(&mut self, theirs: &[u64], from: u16, eager: bool, now: i64, l: &Layout) -> (Batch, Option<u16>, u64) {
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

    fn merge(&mut self, batch: &Batch, l: &Layout, now: i64) {
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

    fn bytes(&self, l: &Layout) -> u64 {
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

fn cbor_len<T: serde::Serialize>(v: &T) -> usize {
    let mut out = Vec::new();
    let _ = ciborium::into_writer(v, &mut out);
    out.len()
}

struct SimNode {
    name: String,
    peer: String,
    clock: Clock,
    seq: u64,
    up: bool,
    side: u8,
    caught_up: bool,
    replica: Replica,
    /// The node's own view of who is up, fed by what it hears (meshes up
    /// to [`MEMBERSHIP_MAX`] nodes; above, the simulator's truth stands in).
    membership: Option<Membership>,
}

/// Largest mesh whose nodes each keep a real [`Membership`] (every node
/// hears every reachable node every round: N² a round).
pub const MEMBERSHIP_MAX: usize = 500;
/// A peer silent this long is down (2 rounds).
const DOWN_AFTER_MS: i64 = 2 * ROUND_MS;

fn info_of(name: &str) -> NodeInfo {
    NodeInfo {
        name: name.to_string(),
        site: String::new(),
        free_bytes: 100 << 30,
        address: String::new(),
        version: String::new(),
    }
}

/// Every live node hears every live node it can reach (pings and hellos
/// travel on the connections, over TCP: a partition stops them, gossip's
/// loss does not), then marks the silent ones down.
fn hear_round(nodes: &mut [SimNode], now: i64) {
    let live: Vec<(usize, String, String, u8)> = nodes
        .iter()
        .enumerate()
        .filter(|(_, n)| n.up)
        .map(|(i, n)| (i, n.peer.clone(), n.name.clone(), n.side))
        .collect();
    for &(n, _, _, side) in &live {
        let Some(m) = nodes[n].membership.as_mut() else { continue };
        for (o, peer, name, other_side) in &live {
            if *o == n || *other_side != side {
                continue;
            }
            if m.is_up(peer) {
                m.seen(peer, now);
            } else {
                m.hello(peer, info_of(name), now);
            }
        }
        m.tick(now);
    }
}

/// Runs one seeded scenario.
pub fn run(cfg: &Config) -> Report {
    let mut rng = Rng::new(cfg.seed);
    let joiners = ((cfg.nodes as f64) * cfg.churn).round() as usize;
    let total_nodes = cfg.nodes + joiners;
    let series = cfg.nodes * cfg.jobs;
    // Record ids: jobs 0..S, series S..2S, origins 2S..2S+total.
    let records = 2 * series + total_nodes;
    let t0: i64 = 1_795_000_000_000;
    let name_of = |i: usize| format!("n{i:05}");
    let peer_of = |i: usize| format!("12D3KooWsim{i:05}");
    let path_of = |j: usize| format!("/srv/app{j}");

    // Buckets of the real keys; sizes of real records of this workload.
    let mut layout =
        Layout { bucket_of: vec![0; records], by_bucket: vec![Vec::new(); BUCKETS], size_of: vec![0; records] };
    let sizes = measure_sizes(cfg);
    for id in 0..records {
        let key = if id < series {
            RecordKey::Job(name_of(id / cfg.jobs), path_of(id % cfg.jobs))
        } else if id < 2 * series {
            RecordKey::Series(name_of((id - series) / cfg.jobs), path_of((id - series) % cfg.jobs))
        } else {
            RecordKey::Origin(peer_of(id - 2 * series))
        };
        let b = key.bucket();
        layout.bucket_of[id] = b as u16;
        layout.by_bucket[b].push(id as u32);
        layout.size_of[id] = if id < series {
            sizes.0
        } else if id < 2 * series {
            sizes.1
        } else {
            sizes.2
        };
    }

    let mut nodes: Vec<SimNode> = (0..total_nodes)
        .map(|i| SimNode {
            name: name_of(i),
            peer: peer_of(i),
            clock: Clock::new(peer_of(i)),
            seq: 0,
            up: i < cfg.nodes,
            side: 0,
            caught_up: i < cfg.nodes,
            replica: Replica::new(cfg.model, records),
            membership: (total_nodes <= MEMBERSHIP_MAX)
                .then(|| Membership::new(peer_of(i), info_of(&name_of(i)), DOWN_AFTER_MS)),
        })
        .collect();
    let mut truth = vec![0u32; records];
    let mut report = Report {
        live_nodes: 0,
        records,
        entries: 0,
        rounds_to_converge: None,
        state_bytes_per_node: 0,
        gossip_bytes_per_node_day: 0,
        anti_entropy_bytes_per_node_day: 0,
        heal_bytes_per_node: 0,
        held_mean: 0.0,
        held_max: 0,
        repair_bytes: 0,
        repair_min_bytes: 0,
        repair_rounds: None,
        lost_series: 0,
        violations: Vec::new(),
    };
    let mut gossip_bytes = 0u64;
    let mut ae_steady = 0u64;
    let mut ae_heal = 0u64;

    // Gossip on its way: (round it arrives, node, write).
    let mut in_flight: Vec<(u32, usize, Write)> = Vec::new();
    // One write at node `n` in `round`: record `rec` (and n's origin record)
    // move on; its gossip leaves for the others.
    let write = |nodes: &mut Vec<SimNode>,
                 truth: &mut Vec<u32>,
                 rng: &mut Rng,
                 gossip_bytes: &mut u64,
                 in_flight: &mut Vec<(u32, usize, Write)>,
                 round: u32,
                 n: usize,
                 rec: usize,
                 now: i64,
                 event: Option<Event>| {
        let origin_rec = 2 * series + n;
        truth[rec] += 1;
        truth[origin_rec] += 1;
        let entry = event.map(|ev| {
            let node = &mut nodes[n];
            node.seq += 1;
            Arc::new(Entry {
                origin: node.peer.clone(),
                origin_name: node.name.clone(),
                seq: node.seq,
                time: node.clock.tick(now),
                sig: Seal::None,
                seals: Vec::new(),
                event: ev,
            })
        });
        let w = Write { entry, touches: [(rec as u32, truth[rec]), (origin_rec as u32, truth[origin_rec])] };
        let entry_bytes = u64::from(sizes.3);
        let side = nodes[n].side;
        nodes[n].replica.write(&w, &layout, now);
        for m in 0..nodes.len() {
            if m == n || !nodes[m].up || nodes[m].side != side {
                continue;
            }
            if rng.unit() < cfg.loss {
                continue;
            }
            let copies = GOSSIP_DEGREE + u64::from(rng.unit() < cfg.dup);
            *gossip_bytes += copies * entry_bytes;
            let delay = rng.below(cfg.latency_rounds as usize + 1) as u32;
            if delay == 0 {
                nodes[m].replica.write(&w, &layout, now);
            } else {
                in_flight.push((round + delay, m, w.clone()));
            }
        }
    };
    // Gossip that arrives in `round`, at nodes still up and on the sender's side.
    let arrive = |nodes: &mut Vec<SimNode>, in_flight: &mut Vec<(u32, usize, Write)>, round: u32, now: i64| {
        let (due, later): (Vec<_>, Vec<_>) = std::mem::take(in_flight).into_iter().partition(|(r, _, _)| *r <= round);
        *in_flight = later;
        for (_, m, w) in due {
            if nodes[m].up {
                nodes[m].replica.write(&w, &layout, now);
            }
        }
    };

    // Registrations, with everyone connected.
    for n in 0..cfg.nodes {
        for j in 0..cfg.jobs {
            let ev = (cfg.model == Model::Real).then(|| Event::Registered {
                node: name_of(n),
                path: path_of(j),
                every_min: cfg.every_min as u64,
                excludes: vec![],
                spec: Default::default(),
            });
            write(&mut nodes, &mut truth, &mut rng, &mut gossip_bytes, &mut in_flight, 0, n, n * cfg.jobs + j, t0, ev);
            report.entries += 1;
        }
    }

    let mut now = t0;
    // The scheduler's own rule decides when each job runs: the jobs were
    // registered at different times, so each last started somewhere in the
    // period before the start.
    let period_ms = cfg.every_min * 60_000;
    let mut last_started: Vec<i64> =
        (0..series).map(|_| t0 - (rng.next_u64() % period_ms.max(1) as u64) as i64).collect();
    let template = JobView {
        node: String::new(),
        path: String::new(),
        every_min: cfg.every_min as u64,
        excludes: vec![],
        paused: false,
        last: None,
        last_success: None,
        last_started: None,
        registered_at: backmesh_actors::log::hlc::Hlc { wall_ms: t0, logical: 0, node: String::new() },
        last_size: None,
        last_warnings: vec![],
        spec: Default::default(),
        last_plugin: None,
    };
    let part_at = cfg.load_rounds / 4;
    let churn_at = cfg.load_rounds / 2;
    for round in 0..cfg.load_rounds {
        now += ROUND_MS;
        arrive(&mut nodes, &mut in_flight, round, now);
        hear_round(&mut nodes, now);
        if round == part_at && cfg.partition > 0.0 {
            for n in nodes.iter_mut().take(cfg.nodes) {
                n.side = u8::from(rng.unit() < cfg.partition);
            }
        }
        if round == churn_at && joiners > 0 {
            let mut left = 0;
            while left < joiners.min(cfg.nodes.saturating_sub(2)) {
                let n = rng.below(cfg.nodes);
                if nodes[n].up {
                    nodes[n].up = false;
                    left += 1;
                }
            }
            for n in nodes.iter_mut().skip(cfg.nodes) {
                n.up = true;
            }
        }
        // Runs the scheduler starts this round (each finishes within it).
        for n in 0..cfg.nodes {
            if !nodes[n].up {
                continue;
            }
            let views: Vec<JobView> = (0..cfg.jobs)
                .map(|j| JobView {
                    path: path_of(j),
                    last_started: Some(Stamp {
                        seq: 1,
                        wall_ms: last_started[n * cfg.jobs + j],
                        logical: 0,
                        seal: Seal::None,
                    }),
                    ..template.clone()
                })
                .collect();
            for path in due(&views, now, 60_000, |_| false) {
                let j = views.iter().position(|v| v.path == path).unwrap_or(0);
                last_started[n * cfg.jobs + j] = now;
                let at = now - (rng.next_u64() % ROUND_MS as u64) as i64;
                let tag = rng.next_u64() as u32;
                let ev = (cfg.model == Model::Real).then(|| Event::Finished {
                    node: name_of(n),
                    path: path_of(j),
                    archive: format!("{at:013}-{tag:08x}"),
                    size: 1 << 20,
                    files: 100,
                    duration_ms: 1_000,
                    warnings: vec![],
                    request: None,
                    plugin: None,
                });
                let rec = series + n * cfg.jobs + j;
                write(&mut nodes, &mut truth, &mut rng, &mut gossip_bytes, &mut in_flight, round, n, rec, at, ev);
                report.entries += 1;
            }
        }
        let b = anti_entropy_round(&mut nodes, &mut rng, &layout, now);
        if round < part_at {
            ae_steady += b;
        }
    }

    // The heal: writes stop, everyone can reach everyone.
    for n in nodes.iter_mut() {
        n.side = 0;
    }
    let live: Vec<usize> = (0..nodes.len()).filter(|n| nodes[*n].up).collect();
    report.live_nodes = live.len();
    let limit = 10 * (usize::BITS - live.len().leading_zeros()) + 10;
    for r in 1..=limit {
        now += ROUND_MS;
        arrive(&mut nodes, &mut in_flight, cfg.load_rounds + r, now);
        hear_round(&mut nodes, now);
        ae_heal += anti_entropy_round(&mut nodes, &mut rng, &layout, now);
        let first = nodes[live[0]].replica.digest();
        if live.iter().all(|n| nodes[*n].replica.digest() == first) {
            report.rounds_to_converge = Some(r);
            break;
        }
    }
    if report.rounds_to_converge.is_none() {
        report.violations.push(format!("live nodes still disagree {limit} rounds after the heal"));
    }
    check_state(cfg, &mut nodes, &live, series, &truth, &mut report);
    // Within three rounds of the heal every node's own view names every
    // live node up and every leaver down.
    for _ in 0..3 {
        now += ROUND_MS;
        hear_round(&mut nodes, now);
    }
    let live_peers: BTreeSet<&str> = live.iter().map(|n| nodes[*n].peer.as_str()).collect();
    for &n in &live {
        let Some(m) = &nodes[n].membership else { continue };
        let up: BTreeSet<&str> = m
            .peers()
            .iter()
            .filter(|p| p.up)
            .map(|p| p.peer_id.as_str())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .filter_map(|p| live_peers.get(p).copied().or(Some("(a leaver)")))
            .collect();
        let want: BTreeSet<&str> = live_peers.iter().copied().filter(|p| *p != nodes[n].peer).collect();
        if up != want {
            report.violations.push(format!(
                "{} sees {} nodes up, not the {} live others, 3 rounds after the heal",
                nodes[n].name,
                up.len(),
                want.len()
            ));
        }
    }

    let per_day = |b: u64, seconds: f64| (b as f64 / live.len() as f64 * 86_400.0 / seconds.max(1.0)) as u64;
    report.gossip_bytes_per_node_day = per_day(gossip_bytes, (cfg.load_rounds as i64 * ROUND_MS) as f64 / 1000.0);
    report.anti_entropy_bytes_per_node_day = per_day(ae_steady, (part_at as i64 * ROUND_MS) as f64 / 1000.0);
    report.heal_bytes_per_node = ae_heal / live.len().max(1) as u64;
    let sample: Vec<usize> = live.iter().step_by((live.len() / 20).max(1)).copied().collect();
    report.state_bytes_per_node =
        sample.iter().map(|n| nodes[*n].replica.bytes(&layout)).sum::<u64>() / sample.len().max(1) as u64;
    if total_nodes <= PLANNED_REPAIR_MAX {
        repair_planned(cfg, &nodes, now, &mut report);
    } else {
        repair(cfg, &nodes, &mut report);
    }
    report
}

/// Every live node pulls from one random peer it can reach; a node not yet
/// caught up pulls eagerly, batch after batch. Answers the bytes moved.
fn anti_entropy_round(nodes: &mut [SimNode], rng: &mut Rng, l: &Layout, now: i64) -> u64 {
    let mut bytes = 0;
    let order: Vec<usize> = (0..nodes.len()).filter(|n| nodes[*n].up).collect();
    let index: std::collections::HashMap<String, usize> =
        nodes.iter().enumerate().map(|(i, n)| (n.peer.clone(), i)).collect();
    for &n in &order {
        let peer = match &nodes[n].membership {
            // A random peer this node believes up; one it cannot reach
            // (cut off, not yet seen down) answers nothing this round.
            Some(m) => {
                let up: Vec<usize> =
                    m.peers().iter().filter(|p| p.up).filter_map(|p| index.get(&p.peer_id)).copied().collect();
                (!up.is_empty())
                    .then(|| up[rng.below(up.len())])
                    .filter(|p| nodes[*p].up && nodes[*p].side == nodes[n].side)
            }
            // A random reachable peer (a few tries; a lone node waits).
            None => {
                let mut peer = None;
                for _ in 0..8 {
                    let p = order[rng.below(order.len())];
                    if p != n && nodes[p].side == nodes[n].side {
                        peer = Some(p);
                        break;
                    }
                }
                peer
            }
        };
        let Some(p) = peer else { continue };
        let mut eager = !nodes[n].caught_up;
        let mut from = 0u16;
        for _ in 0..BUCKETS {
            let mine = nodes[n].replica.digest();
            bytes += (BUCKETS * 9) as u64;
            let (batch, next, b) = nodes[p].replica.answer(&mine, from, eager, now, l);
            bytes += b;
            nodes[n].replica.merge(&batch, l, now);
            match next {
                // Cut for size: far behind, so go on eagerly from there (as
                // the log actor does).
                Some(b) if b > from => {
                    from = b;
                    eager = true;
                }
                Some(_) => break,
                None => {
                    nodes[n].caught_up |= eager;
                    break;
                }
            }
        }
    }
    bytes
}

fn check_state(cfg: &Config, nodes: &mut [SimNode], live: &[usize], series: usize, truth: &[u32], report: &mut Report) {
    match cfg.model {
        Model::Compact => {
            // The newest version any live node had is everywhere.
            let mut best = vec![0u32; truth.len()];
            for n in live {
                if let Replica::Compact { versions, .. } = &nodes[*n].replica {
                    for (b, v) in best.iter_mut().zip(versions) {
                        *b = (*b).max(*v);
                    }
                }
            }
            for n in live {
                if let Replica::Compact { versions, .. } = &nodes[*n].replica {
                    if *versions != best {
                        report.violations.push(format!("{} lacks records a live node had", nodes[*n].name));
                        break;
                    }
                    if versions[..series].contains(&0) {
                        report.violations.push(format!("{} lost a job", nodes[*n].name));
                        break;
                    }
                }
            }
        }
        Model::Real => {
            let mut union = MeshState::new();
            for n in live {
                if let Replica::Real { state, .. } = &nodes[*n].replica {
                    union.merge(state);
                }
            }
            let want = union.digest();
            for n in live {
                if let Replica::Real { state, .. } = &mut nodes[*n].replica {
                    if state.digest() != want {
                        report.violations.push(format!("{} lacks records a live node had", nodes[*n].name));
                        break;
                    }
                    if state.jobs().len() != series {
                        report.violations.push(format!(
                            "{} knows {} of {series} jobs",
                            nodes[*n].name,
                            state.jobs().len()
                        ));
                        break;
                    }
                }
            }
        }
    }
}

/// Places every series' archives at R holders among the first membership;
/// after the churn, plans repair the way nodes do (copy to the newly
/// elected, prune the rest) and checks every archive is back at R.
fn repair(cfg: &Config, nodes: &[SimNode], report: &mut Report) {
    let cand = |alive: &dyn Fn(usize) -> bool| -> Vec<Candidate> {
        nodes
            .iter()
            .enumerate()
            .filter(|(i, _)| alive(*i))
            .map(|(_, n)| Candidate { peer_id: n.peer.clone(), name: n.name.clone(), free_bytes: 100 << 30 })
            .collect()
    };
    let before = cand(&|i| i < cfg.nodes);
    let after = cand(&|i| nodes[i].up);
    let keys: Vec<SeriesKey> =
        (0..cfg.nodes).flat_map(|n| (0..cfg.jobs).map(move |j| (format!("n{n:05}"), format!("/srv/app{j}")))).collect();
    let elect = |cands: &[Candidate]| -> Vec<Vec<String>> {
        let chunk = keys.len().div_ceil(2).max(1);
        std::thread::scope(|s| {
            let parts: Vec<_> = keys
                .chunks(chunk)
                .map(|ks| {
                    s.spawn(move || {
                        ks.iter()
                            .map(|(node, path)| {
                                holders(node, path, cands, cfg.replicas).into_iter().map(|c| c.name.clone()).collect()
                            })
                            .collect::<Vec<Vec<String>>>()
                    })
                })
                .collect();
            parts.into_iter().flat_map(|h| h.join().unwrap_or_default()).collect()
        })
    };
    let old = elect(&before);
    let new = elect(&after);
    let up: BTreeSet<String> = nodes.iter().filter(|n| n.up).map(|n| n.name.clone()).collect();
    let mut held: std::collections::BTreeMap<String, usize> = up.iter().map(|n| (n.clone(), 0)).collect();
    for (i, (o, n)) in old.iter().zip(&new).enumerate() {
        let origin_up = up.contains(&keys[i].0);
        let present: BTreeSet<&String> = o.iter().filter(|h| up.contains(*h)).collect();
        if !origin_up && present.is_empty() {
            report.lost_series += 1;
        }
        let want = cfg.replicas.min(up.len() - usize::from(origin_up));
        let archives = cfg.keep as u64;
        report.repair_min_bytes += want.saturating_sub(present.len()) as u64 * archives * cfg.archive_bytes;
        report.repair_bytes += n.iter().filter(|h| !present.contains(h)).count() as u64 * archives * cfg.archive_bytes;
        // After repair and pruning, the elected hold it.
        if n.len() != want || n.iter().any(|h| !up.contains(h)) {
            report.violations.push(format!("{}:{} is at {} live holders, not {want}", keys[i].0, keys[i].1, n.len()));
        }
        for h in n {
            *held.entry(h.clone()).or_default() += cfg.keep;
        }
    }
    report.held_max = held.values().copied().max().unwrap_or(0);
    report.held_mean = held.values().sum::<usize>() as f64 / held.len().max(1) as f64;
}

/// Repair as the nodes plan it: before the churn each series was at its
/// origin and the R holders elected among the first nodes, `keep`
/// archives each. Now every live node runs the real replica planner
/// ([`Planner`]) on its own copies, round after round: pushes are
/// delivered at the end of a round (two holders pushing the same copy in
/// one round both send it, as they would), surplus copies are handed off
/// once every elected holder keeps them. Counts what was sent against the
/// least any plan could send (the copies lost with the leavers).
fn repair_planned(cfg: &Config, nodes: &[SimNode], now: i64, report: &mut Report) {
    use backmesh_actors::net::membership::PeerView;
    use backmesh_actors::replica::plan::Planner;
    use std::collections::{BTreeMap, HashMap};
    const GRACE_MS: i64 = 600_000;
    let views: Vec<PeerView> = nodes
        .iter()
        .map(|n| PeerView {
            peer_id: n.peer.clone(),
            name: n.name.clone(),
            free_bytes: 100 << 30,
            up: n.up,
            last_seen_ms: if n.up { now } else { now - 2 * GRACE_MS },
        })
        .collect();
    let index: HashMap<&str, usize> = nodes.iter().enumerate().map(|(i, n)| (n.peer.as_str(), i)).collect();
    let first: Vec<Candidate> = nodes
        .iter()
        .take(cfg.nodes)
        .map(|n| Candidate { peer_id: n.peer.clone(), name: n.name.clone(), free_bytes: 100 << 30 })
        .collect();
    let ids: Vec<String> = (0..cfg.keep).rev().map(|k| format!("a{k:03}")).collect();
    let mut held: Vec<BTreeMap<SeriesKey, Vec<String>>> = vec![BTreeMap::new(); nodes.len()];
    let up: BTreeSet<usize> = (0..nodes.len()).filter(|i| nodes[*i].up).collect();
    let mut lost_copies = 0u64;
    let mut lost: BTreeSet<SeriesKey> = BTreeSet::new();
    for o in 0..cfg.nodes {
        for j in 0..cfg.jobs {
            let key: SeriesKey = (nodes[o].name.clone(), format!("/srv/app{j}"));
            let before: Vec<usize> =
                holders(&key.0, &key.1, &first, cfg.replicas).iter().map(|c| index[c.peer_id.as_str()]).collect();
            let origin_up = up.contains(&o);
            let want = cfg.replicas.min(up.len() - usize::from(origin_up));
            let present = before.iter().filter(|h| up.contains(h)).count();
            lost_copies += want.saturating_sub(present) as u64;
            if !origin_up && present == 0 {
                lost.insert(key.clone());
            }
            for h in before.into_iter().chain(std::iter::once(o)) {
                if up.contains(&h) {
                    held[h].insert(key.clone(), ids.clone());
                }
            }
        }
    }
    report.repair_min_bytes = lost_copies * cfg.keep as u64 * cfg.archive_bytes;
    let mut planners: Vec<Planner> =
        nodes.iter().map(|n| Planner::new(n.name.clone(), cfg.replicas, GRACE_MS)).collect();
    let mut rounds = 0;
    for round in 1..=12u32 {
        let mut deliveries = Vec::new();
        let mut handoffs = Vec::new();
        for &n in &up {
            // Each node plans from its own view when it keeps one: repair
            // comes once the leavers have been silent past the grace.
            let at = now + GRACE_MS + i64::from(round) * 2_000;
            let plan = match &nodes[n].membership {
                Some(m) => {
                    let mut seen = m.peers();
                    for p in &mut seen {
                        if p.up {
                            p.last_seen_ms = at;
                        }
                    }
                    planners[n].plan(&views[n], &seen, &held[n], at)
                }
                None => planners[n].plan(&views[n], &views, &held[n], at),
            };
            for p in plan.pushes {
                // A push first lists what the holder keeps and sends only the rest.
                let kept = held[index[p.peer.as_str()]].get(&(p.node.clone(), p.path.clone()));
                let missing = p.ids.iter().filter(|id| !kept.is_some_and(|k| k.contains(id))).count();
                report.repair_bytes += missing as u64 * cfg.archive_bytes;
                deliveries.push((n, p));
            }
            handoffs.extend(plan.handoffs.into_iter().map(|h| (n, h)));
        }
        if deliveries.is_empty() && handoffs.is_empty() {
            break;
        }
        rounds = round;
        for (n, p) in deliveries {
            let t = index[p.peer.as_str()];
            let kept = held[t].entry((p.node.clone(), p.path.clone())).or_default();
            for id in &p.ids {
                if !kept.contains(id) {
                    kept.push(id.clone());
                }
            }
            kept.sort_by(|a, b| b.cmp(a));
            planners[n].pushed(&p, &p.ids, None, now);
        }
        for (n, h) in handoffs {
            let key = (h.node.clone(), h.path.clone());
            let all_keep = h.targets.iter().all(|t| {
                held[index[t.as_str()]].get(&key).is_some_and(|kept| h.ids.iter().all(|id| kept.contains(id)))
            });
            if all_keep {
                held[n].remove(&key);
            }
            planners[n].handed_off(&h);
        }
    }
    report.repair_rounds = Some(rounds);
    report.lost_series = lost.len();
    // After repair and handoffs: each series at its origin (if live) and exactly
    // the R elected live holders, each with every archive.
    let live: Vec<Candidate> = up
        .iter()
        .map(|&i| Candidate { peer_id: nodes[i].peer.clone(), name: nodes[i].name.clone(), free_bytes: 100 << 30 })
        .collect();
    let mut per_node: Vec<usize> = vec![0; nodes.len()];
    for o in 0..cfg.nodes {
        for j in 0..cfg.jobs {
            let key: SeriesKey = (nodes[o].name.clone(), format!("/srv/app{j}"));
            let elected: BTreeSet<usize> =
                holders(&key.0, &key.1, &live, cfg.replicas).iter().map(|c| index[c.peer_id.as_str()]).collect();
            let keeping: BTreeSet<usize> = up
                .iter()
                .copied()
                .filter(|&h| h != o && held[h].get(&key).is_some_and(|k| ids.iter().all(|id| k.contains(id))))
                .collect();
            if keeping != elected && !lost.contains(&key) {
                report.violations.push(format!(
                    "{}:{} is kept by {} live holders ({} elected) after {rounds} rounds",
                    key.0,
                    key.1,
                    keeping.len(),
                    elected.len()
                ));
            }
        }
    }
    for &n in &up {
        per_node[n] = held[n].iter().filter(|(k, _)| k.0 != nodes[n].name).map(|(_, v)| v.len()).sum();
    }
    let counts: Vec<usize> = up.iter().map(|&n| per_node[n]).collect();
    report.held_max = counts.iter().copied().max().unwrap_or(0);
    report.held_mean = counts.iter().sum::<usize>() as f64 / counts.len().max(1) as f64;
}

/// Encoded bytes of a job record, a series record (with `keep` archives at
/// R holders each), an origin record, and an entry of this workload,
/// measured on real ones.
fn measure_sizes(cfg: &Config) -> (u32, u32, u32, u32) {
    let mut state = MeshState::new();
    let mut clock = Clock::new("12D3KooWsim00000");
    let mut seq = 0;
    let mut e = |state: &mut MeshState, at: i64, event: Event| {
        seq += 1;
        let entry = Entry {
            origin: "12D3KooWsim00000".into(),
            origin_name: "n00000".into(),
            seq,
            time: clock.tick(at),
            sig: Seal::None,
            seals: Vec::new(),
            event,
        };
        state.apply(&entry);
        cbor_len(&entry) as u32
    };
    let (node, path) = ("n00000".to_string(), "/srv/app0".to_string());
    e(
        &mut state,
        1,
        Event::Registered {
            node: node.clone(),
            path: path.clone(),
            every_min: 5,
            excludes: vec![],
            spec: Default::default(),
        },
    );
    let mut entry_bytes = 0;
    for k in 0..cfg.keep as i64 {
        let archive = format!("{:013}-{:08x}", 1_795_000_000_000 + k, k);
        entry_bytes = e(
            &mut state,
            10 + k,
            Event::Finished {
                node: node.clone(),
                path: path.clone(),
                archive: archive.clone(),
                size: 1 << 20,
                files: 100,
                duration_ms: 1_000,
                warnings: vec![],
                request: None,
                plugin: None,
            },
        );
        for h in 0..cfg.replicas {
            e(
                &mut state,
                20 + k,
                Event::Replicated {
                    node: node.clone(),
                    path: path.clone(),
                    archive: archive.clone(),
                    holder: format!("n{:05}", h + 1),
                    bytes: 1 << 20,
                },
            );
        }
    }
    let size = |k: RecordKey| state.record(&k).map(|r| (cbor_len(&k) + cbor_len(&r)) as u32).unwrap_or(0);
    (
        size(RecordKey::Job(node.clone(), path.clone())),
        size(RecordKey::Series(node.clone(), path.clone())),
        size(RecordKey::Origin("12D3KooWsim00000".into())),
        entry_bytes,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_replays_from_its_seed_and_converges_within_the_goal() {
        let cfg = Config { nodes: 64, load_rounds: 40, ..Config::default() };
        let a = run(&cfg);
        let b = run(&cfg);
        assert_eq!(a, b, "the same seed gives the same run");
        assert!(a.violations.is_empty(), "{:?}", a.violations);
        let rounds = a.rounds_to_converge.unwrap();
        assert!(rounds <= 2 * 6, "{rounds} rounds for 64 nodes");
        let other = run(&Config { seed: 2, ..cfg });
        assert_ne!(a.entries, other.entries, "another seed, another run");
    }

    #[test]
    fn after_churn_every_node_s_own_planner_brings_each_series_back_to_r_holders() {
        let cfg = Config { nodes: 60, jobs: 2, load_rounds: 20, churn: 0.15, ..Config::default() };
        let r = run(&cfg);
        assert!(r.violations.is_empty(), "{:?}", r.violations);
        let rounds = r.repair_rounds.expect("planned by the nodes at this size");
        assert!((1..=6).contains(&rounds), "{rounds} rounds");
        assert!(r.repair_bytes >= r.repair_min_bytes && r.repair_min_bytes > 0, "{r:?}");
        assert_eq!(r, run(&cfg), "replays");
    }

    #[test]
    fn the_scheduler_s_rule_starts_each_job_once_a_period() {
        // 90 rounds of 10 s = 15 min: every job of 5 min runs exactly 3 times.
        let cfg = Config { nodes: 10, jobs: 2, churn: 0.0, latency_rounds: 3, ..Config::default() };
        let r = run(&cfg);
        assert_eq!(r.entries, 20 + 20 * 3, "registrations and runs");
        assert!(r.violations.is_empty(), "{:?}", r.violations);
    }

    #[test]
    fn the_real_state_and_the_compact_model_agree_on_a_small_mesh() {
        for seed in 1..=3 {
            let cfg = Config { nodes: 24, load_rounds: 30, seed, ..Config::default() };
            let real = run(&Config { model: Model::Real, ..cfg.clone() });
            let compact = run(&cfg);
            assert!(real.violations.is_empty() && compact.violations.is_empty(), "{real:?} {compact:?}");
            assert_eq!(real.entries, compact.entries);
            assert_eq!(real.rounds_to_converge, compact.rounds_to_converge, "seed {seed}");
            assert_eq!(real.repair_bytes, compact.repair_bytes);
        }
    }

    #[test]
    fn the_state_check_names_a_node_that_missed_a_record_or_a_job() {
        let cfg = Config { nodes: 3, jobs: 1, ..Config::default() };
        let node = |i: usize, versions: Vec<u32>| SimNode {
            name: format!("n{i}"),
            peer: format!("p{i}"),
            clock: Clock::new(format!("p{i}")),
            seq: 0,
            up: true,
            side: 0,
            caught_up: true,
            replica: Replica::Compact { versions, digest: vec![0; BUCKETS], changed_ms: vec![0; BUCKETS] },
            membership: None,
        };
        let truth = vec![1, 1, 1, 2, 2, 2, 1, 1, 1];
        let mut report = run(&Config { nodes: 2, load_rounds: 1, ..cfg.clone() });
        report.violations.clear();
        let mut nodes = vec![node(0, truth.clone()), node(1, truth.clone()), node(2, truth.clone())];
        check_state(&cfg, &mut nodes, &[0, 1, 2], 3, &truth, &mut report);
        assert!(report.violations.is_empty(), "{:?}", report.violations);
        let mut behind = truth.clone();
        behind[4] = 1;
        let mut nodes = vec![node(0, truth.clone()), node(1, behind), node(2, truth.clone())];
        check_state(&cfg, &mut nodes, &[0, 1, 2], 3, &truth, &mut report);
        assert_eq!(report.violations, vec!["n1 lacks records a live node had".to_string()]);
        report.violations.clear();
        let mut no_job = truth.clone();
        no_job[2] = 0;
        let mut nodes: Vec<SimNode> = (0..3).map(|i| node(i, no_job.clone())).collect();
        check_state(&cfg, &mut nodes, &[0, 1, 2], 3, &truth, &mut report);
        assert_eq!(report.violations, vec!["n0 lost a job".to_string()]);
    }

    #[test]
    fn anti_entropy_alone_repairs_the_loss_of_every_gossip_message() {
        let cfg = Config { nodes: 16, load_rounds: 8, loss: 1.0, ..Config::default() };
        let r = run(&cfg);
        assert!(r.violations.is_empty(), "{:?}", r.violations);
        assert!(r.rounds_to_converge.is_some());
    }
}
