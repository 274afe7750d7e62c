//! Mesh state: what every node knows, in a size that depends on jobs,
//! series and nodes, never on how long the mesh has run.
//!
//! Every log entry is folded into a [`MeshState`] as it arrives; the entry
//! itself is then kept only where history belongs (see `super::history`).
//! The state is a map of records ([`RecordKey`] → [`Record`]), each a small
//! CRDT:
//!
//! | record | what | join |
//! |---|---|---|
//! | `Job(node, path)` | settings, registered or not | last writer by HLC |
//! | `Paused(node)` | the node's scheduled runs are paused | last writer by HLC |
//! | `Series(node, path)` | last run, last success, last start, notification, archives and holders, recent requests | per field: last writer by HLC, or maximum; archives: the newest [`ARCHIVES_KEPT`] ids, each holder a last-writer register; requests: the newest [`REQUESTS_KEPT`] entries |
//! | `Origin(peer)` | the highest seq seen from a node | maximum |
//!
//! Merge laws (property-tested below): folding entries, or merging states,
//! is idempotent, commutative and associative, so any delivery order, any
//! duplicates and any grouping give the same state, and the state reached
//! by folding every entry equals the state reached by merging the states of
//! nodes that each saw a part. Equal HLCs come only from one entry, so a
//! tie never has two values.
//!
//! Anti-entropy compares [`MeshState::digest`]: [`BUCKETS`] hashes, one per
//! bucket of record keys. Only the records of buckets that differ travel.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use backmesh_api::{JobState, Notice};
use serde::{Deserialize, Serialize};

use super::entry::{Entry, Event};
use super::hlc::Hlc;
use super::seal::{Seal, Signer};
use crate::hash::Digest;
use crate::jobs::plugin::{JobSpec, PluginReport};

/// Archives remembered per series: three times what holders keep by
/// default (`--keep 10`), so that the catalog never forgets a kept archive,
/// and a bound on the state whatever the history. (`--keep` above this is
/// refused at start.)
pub const ARCHIVES_KEPT: usize = 32;
/// Request-answering entries remembered per series, for `run`, `restore`
/// and `verify` waiting on their outcome from any node.
pub const REQUESTS_KEPT: usize = 16;
/// Buckets of the anti-entropy digest.
pub const BUCKETS: usize = 256;

/// A job's identity: the node that runs it and the path it backs up.
pub type SeriesKey = (String, String);

/// A last-writer-wins register: the value written at the greatest HLC.
/// Its writer is the node of its HLC, which seals it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lww<T> {
    pub time: Hlc,
    pub value: T,
    #[serde(default, skip_serializing_if = "Seal::carries_nothing")]
    pub seal: Seal,
}

impl<T> Lww<T> {
    /// A register not sealed yet.
    pub fn new(time: Hlc, value: T) -> Self {
        Lww { time, value, seal: Seal::None }
    }
}

/// A register: a value and the version it was written at ([`Lww`] by
/// HLC, [`Own`] by one writer's stamp).
/// The seal is the last part of a version: at one version, a sealed
/// register wins over the same one unsealed (a node that sealed its
/// registers after an upgrade replaces them everywhere).
trait Register: Clone {
    type Version: Ord;
    type Value: Serialize + PartialEq;
    fn version(&self) -> Self::Version;
    fn value(&self) -> &Self::Value;
}

impl<T: Clone + Serialize + PartialEq> Register for Lww<T> {
    type Version = (Hlc, bool);
    type Value = T;
    fn version(&self) -> (Hlc, bool) {
        (self.time.clone(), self.seal.is_sealed())
    }
    fn value(&self) -> &T {
        &self.value
    }
}

/// Joins `other` into `slot`: the greater version wins. Two values at one
/// version come only from a node that lies or reuses its clock: the
/// greater encoding wins then, so every node picks the same one. `true`
/// if `slot` changed.
fn join_reg<R: Register>(slot: &mut Option<R>, other: &R) -> bool {
    let wins = match slot {
        None => true,
        Some(mine) if mine.version() != other.version() => other.version() > mine.version(),
        Some(mine) => mine.value() != other.value() && cbor(other.value()) > cbor(mine.value()),
    };
    if wins {
        *slot = Some(other.clone());
    }
    wins
}

/// [`join_reg`] into the register under `key` of `map`, which gets one
/// only if it changes (nothing is stored for a join that says nothing).
fn join_in<K: Ord + Clone, R: Register>(map: &mut BTreeMap<K, R>, key: &K, other: &R) -> bool {
    let mut slot = map.get(key).cloned();
    let changed = join_reg(&mut slot, other);
    if let (true, Some(v)) = (changed, slot) {
        map.insert(key.clone(), v);
    }
    changed
}

/// Joins a maximum register; `true` if `slot` changed.
fn join_max<T: Ord + Clone>(slot: &mut Option<T>, other: &T) -> bool {
    match slot {
        Some(mine) if *mine >= *other => false,
        _ => {
            *slot = Some(other.clone());
            true
        }
    }
}

/// A point in one writer's history, without the writer: a register that
/// only one node writes (its own runs, its own copies) needs no tie-break
/// by node, and the peer id in every [`Hlc`] would be most of the state's
/// memory.
///
/// Ordered by the writer's sequence number first: a writer's later entry
/// always wins over its earlier one, even when its wall clock was stepped
/// back in between (a clock that ran ahead, then set right). The time is
/// what the writer's clock said, for people and for the scheduler.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Stamp {
    /// The writer's entry sequence number (0 in records from before it was kept).
    #[serde(default)]
    pub seq: u64,
    pub wall_ms: i64,
    pub logical: u32,
    /// The writer's signature of the register this stamp dates (see
    /// [`Slot`]); last in the order, as in [`Register`].
    #[serde(default, skip_serializing_if = "Seal::carries_nothing")]
    pub seal: Seal,
}

impl Stamp {
    /// The stamp of entry `e`, written by its origin.
    pub fn of(e: &Entry) -> Self {
        Stamp { seq: e.seq, wall_ms: e.time.wall_ms, logical: e.time.logical, seal: Seal::None }
    }

    /// This stamp without its seal (for views: seals stay in the state).
    pub fn bare(&self) -> Stamp {
        Stamp { seal: Seal::None, ..*self }
    }

    /// The point in time alone, as the writer's signature covers it.
    fn point(&self) -> (u64, i64, u32) {
        (self.seq, self.wall_ms, self.logical)
    }
}

/// A register written by one node (the series' node for its runs, a
/// holder for its copy): the value at the greatest stamp (ties as in
/// [`join_reg`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Own<T> {
    pub at: Stamp,
    pub value: T,
}

impl<T: Clone + Serialize + PartialEq> Register for Own<T> {
    type Version = Stamp;
    type Value = T;
    fn version(&self) -> Stamp {
        self.at.clone()
    }
    fn value(&self) -> &T {
        &self.value
    }
}

/// A job's settings as last written.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobReg {
    /// `false` once unregistered (a tombstone: a late, older registration
    /// must not bring the job back).
    pub registered: bool,
    pub every_min: u64,
    #[serde(default)]
    pub excludes: Vec<String>,
    #[serde(default, skip_serializing_if = "JobSpec::is_default")]
    pub spec: JobSpec,
}

/// How a run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunResult {
    Finished,
    Unchanged,
    Failed,
}

impl RunResult {
    /// As the log's kinds and the API say it.
    pub fn as_str(self) -> &'static str {
        match self {
            RunResult::Finished => "finished",
            RunResult::Unchanged => "unchanged",
            RunResult::Failed => "failed",
        }
    }
}

/// The outcome of a run, as its `finished`, `unchanged` or `failed` entry said.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunRec {
    pub result: RunResult,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archive: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plugin: Option<PluginReport>,
}

/// What the run that made an archive said of it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Made {
    pub size: u64,
    pub files: u64,
    pub warnings: u64,
}

/// One archive of a series: who made it and who keeps it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArchiveRec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub made: Option<Own<Made>>,
    /// Node name → keeps a complete copy (`replicated`, `repaired`, the
    /// origin's `finished`) or not any more (`pruned`); written by that node.
    /// Sorted by name (a few entries: a vector, not a tree).
    #[serde(default)]
    pub holders: Vec<(String, Own<bool>)>,
}

impl ArchiveRec {
    fn join(&mut self, other: &ArchiveRec) -> bool {
        let mut changed = other.made.as_ref().is_some_and(|m| join_reg(&mut self.made, m));
        for (h, reg) in &other.holders {
            changed |= self.set_holder(h, reg);
        }
        changed
    }

    /// Joins holder `h`'s register; `true` if it changed.
    fn set_holder(&mut self, h: &str, reg: &Own<bool>) -> bool {
        match self.holders.binary_search_by(|(n, _)| n.as_str().cmp(h)) {
            Ok(i) => {
                let mut slot = Some(self.holders[i].1.clone());
                let changed = join_reg(&mut slot, reg);
                if let (true, Some(v)) = (changed, slot) {
                    self.holders[i].1 = v;
                }
                changed
            }
            Err(i) => {
                self.holders.insert(i, (h.to_string(), reg.clone()));
                true
            }
        }
    }

    /// Whether node `name` keeps a copy, as far as this record knows.
    pub fn kept_by(&self, name: &str) -> bool {
        self.holders.iter().any(|(n, h)| n == name && h.value)
    }
}

/// What the mesh knows of one series (one job's node and path). Runs are
/// written by the series' node only, so their registers are [`Own`];
/// notifications may come from any node.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Series {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last: Option<Own<RunRec>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_success: Option<Stamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_started: Option<Stamp>,
    /// Size of the newest archive a run made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_size: Option<Own<u64>>,
    /// Warnings of the last `finished` run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_warnings: Option<Own<Vec<String>>>,
    /// The last notification told: `failure`, `stale` or `recovery`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notified: Option<Lww<String>>,
    /// The newest [`ARCHIVES_KEPT`] archive ids (ids begin with their
    /// creation time, so the greatest are the newest).
    #[serde(default)]
    pub archives: BTreeMap<String, ArchiveRec>,
    /// The newest [`REQUESTS_KEPT`] entries that answer an on-demand request.
    #[serde(default)]
    pub requests: Vec<Entry>,
}

impl Series {
    fn join(&mut self, other: &Series) -> bool {
        let mut changed = false;
        if let Some(x) = &other.last {
            changed |= join_reg(&mut self.last, x);
        }
        if let Some(x) = &other.last_success {
            changed |= join_max(&mut self.last_success, x);
        }
        if let Some(x) = &other.last_started {
            changed |= join_max(&mut self.last_started, x);
        }
        if let Some(x) = &other.last_size {
            changed |= join_reg(&mut self.last_size, x);
        }
        if let Some(x) = &other.last_warnings {
            changed |= join_reg(&mut self.last_warnings, x);
        }
        if let Some(x) = &other.notified {
            changed |= join_reg(&mut self.notified, x);
        }
        for (id, a) in &other.archives {
            // An empty record says nothing, and must not take a place.
            if a.made.is_none() && a.holders.is_empty() {
                continue;
            }
            changed |= self.archive_mut(id).is_some_and(|mine| mine.join(a));
        }
        for e in &other.requests {
            changed |= self.remember_request(e);
        }
        changed
    }

    /// The record of archive `id`, made if needed, unless it is older than
    /// every one of the newest [`ARCHIVES_KEPT`] (then it is forgotten, as
    /// it would be by every node: the newest ids of a union are the newest
    /// of the newest of each part).
    fn archive_mut(&mut self, id: &str) -> Option<&mut ArchiveRec> {
        if !self.archives.contains_key(id) {
            if self.archives.len() >= ARCHIVES_KEPT {
                let oldest = self.archives.keys().next()?.clone();
                if oldest.as_str() >= id {
                    return None;
                }
                self.archives.remove(&oldest);
            }
            self.archives.insert(id.to_string(), ArchiveRec::default());
        }
        self.archives.get_mut(id)
    }

    /// Keeps `e` among the newest [`REQUESTS_KEPT`] request entries.
    fn remember_request(&mut self, e: &Entry) -> bool {
        let key = |x: &Entry| (x.time.clone(), x.origin.clone(), x.seq);
        let k = key(e);
        let at = match self.requests.binary_search_by(|x| key(x).cmp(&k)) {
            // The same id twice with two bodies: the greater encoding, everywhere.
            Ok(i) if self.requests[i] != *e && cbor(e) > cbor(&self.requests[i]) => {
                self.requests[i] = e.clone();
                return true;
            }
            Ok(_) => return false,
            Err(at) => at,
        };
        if self.requests.len() >= REQUESTS_KEPT && at == 0 {
            return false;
        }
        self.requests.insert(at, e.clone());
        if self.requests.len() > REQUESTS_KEPT {
            self.requests.remove(0);
        }
        true
    }
}

/// The highest seq seen from one node, with its name and time in that
/// entry: a register of the node's own, sealed by it. A node that lost its
/// database asks for it, so that it never writes a seq twice.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OriginRec {
    pub max_seq: u64,
    /// The node's name in its newest entry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<Lww<String>>,
    #[serde(default, skip_serializing_if = "Seal::carries_nothing")]
    pub seal: Seal,
}

impl OriginRec {
    /// The greater seq wins whole (then the sealed one; two bodies at one
    /// seq and seal come only from a liar: the greater encoding).
    fn join(&mut self, other: &OriginRec) -> bool {
        let wins = match (other.max_seq, other.seal.is_sealed()).cmp(&(self.max_seq, self.seal.is_sealed())) {
            std::cmp::Ordering::Greater => true,
            std::cmp::Ordering::Less => false,
            std::cmp::Ordering::Equal => other != self && cbor(other) > cbor(self),
        };
        if wins {
            *self = other.clone();
        }
        wins
    }
}

/// A record's key; also its place in the digest.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum RecordKey {
    Job(String, String),
    Paused(String),
    Series(String, String),
    Origin(String),
}

impl RecordKey {
    /// Whether the node name and path it names are valid ones (a record
    /// from a peer that names `a b` or a path with a newline is left out).
    pub fn check_names(&self) -> Result<(), backmesh_api::names::BadName> {
        use backmesh_api::names::{check_node_name, check_series_path};
        match self {
            RecordKey::Job(node, path) | RecordKey::Series(node, path) => {
                check_node_name(node).and_then(|()| check_series_path(path))
            }
            RecordKey::Paused(node) | RecordKey::Origin(node) => check_node_name(node),
        }
    }

    /// The digest bucket of this key.
    pub fn bucket(&self) -> usize {
        Digest::of(&cbor(self)).0[0] as usize % BUCKETS
    }
}

/// A record: one CRDT of the state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Record {
    Job(Lww<JobReg>),
    Paused(Lww<bool>),
    Series(Box<Series>),
    Origin(OriginRec),
}

impl Record {
    /// The newest HLC the record carries (a clock that takes it in orders
    /// its next events after it).
    pub fn newest_time(&self) -> Option<&Hlc> {
        match self {
            Record::Job(r) => Some(&r.time),
            Record::Paused(r) => Some(&r.time),
            Record::Series(s) => s.notified.iter().map(|n| &n.time).chain(s.requests.iter().map(|e| &e.time)).max(),
            Record::Origin(o) => o.name.as_ref().map(|n| &n.time),
        }
    }

    /// The latest wall time anything in the record was dated with: a record
    /// dated far ahead of this node's clock is held back, not merged.
    pub fn newest_wall_ms(&self) -> i64 {
        let hlc = self.newest_time().map_or(i64::MIN, |t| t.wall_ms);
        let Record::Series(s) = self else { return hlc };
        let own = [
            s.last.as_ref().map(|r| &r.at),
            s.last_success.as_ref(),
            s.last_started.as_ref(),
            s.last_size.as_ref().map(|r| &r.at),
            s.last_warnings.as_ref().map(|r| &r.at),
        ];
        let archives =
            s.archives.values().flat_map(|a| a.made.iter().map(|m| &m.at).chain(a.holders.iter().map(|(_, h)| &h.at)));
        own.into_iter().flatten().chain(archives).map(|t| t.wall_ms).fold(hlc, i64::max)
    }
}

const _: () = assert!(BUCKETS <= u16::MAX as usize, "bucket numbers travel as u16");

/// `v` in CBOR (what the state encodes always does).
pub fn cbor<T: Serialize>(v: &T) -> Vec<u8> {
    let mut out = Vec::new();
    // Writing CBOR into a Vec fails only for types that refuse to serialise; ours do not.
    if ciborium::into_writer(v, &mut out).is_err() {
        out.clear();
    }
    out
}

/// The digest of the whole state: one 64-bit hash per bucket.
pub type StateDigest = Vec<u64>;

/// The mesh state. See the module documentation for the records and laws.
#[derive(Clone, Debug)]
pub struct MeshState {
    jobs: BTreeMap<SeriesKey, Lww<JobReg>>,
    paused: BTreeMap<String, Lww<bool>>,
    series: BTreeMap<SeriesKey, Series>,
    origins: BTreeMap<String, OriginRec>,
    /// Records changed since [`MeshState::take_changed`] (for persistence).
    changed: BTreeSet<RecordKey>,
    /// Cached bucket hashes; `None` when a record of the bucket changed.
    buckets: Vec<Option<u64>>,
    /// Changes per bucket, counted: who serves anti-entropy tells from it
    /// which buckets changed lately (their news may still be in flight).
    generations: Vec<u64>,
    /// The catalog view of each series, kept as series change: the
    /// dashboard reads every series' catalog on every view.
    catalogs: BTreeMap<SeriesKey, Arc<Vec<CatalogArchive>>>,
    /// Series whose catalog must be made again before it is read.
    stale_catalogs: BTreeSet<SeriesKey>,
}

impl PartialEq for MeshState {
    fn eq(&self, other: &Self) -> bool {
        self.jobs == other.jobs
            && self.paused == other.paused
            && self.series == other.series
            && self.origins == other.origins
    }
}

impl Eq for MeshState {}

impl Default for MeshState {
    fn default() -> Self {
        MeshState::new()
    }
}

impl MeshState {
    pub fn new() -> Self {
        MeshState {
            jobs: BTreeMap::new(),
            paused: BTreeMap::new(),
            series: BTreeMap::new(),
            origins: BTreeMap::new(),
            changed: BTreeSet::new(),
            buckets: vec![None; BUCKETS],
            generations: vec![0; BUCKETS],
            catalogs: BTreeMap::new(),
            stale_catalogs: BTreeSet::new(),
        }
    }

    fn touch(&mut self, key: RecordKey) {
        let b = key.bucket();
        if let RecordKey::Series(n, p) = &key {
            self.stale_catalogs.insert((n.clone(), p.clone()));
        }
        self.buckets[b] = None;
        self.generations[b] += 1;
        self.changed.insert(key);
    }

    /// How many times each bucket has changed (see [`Settled`]).
    pub fn generations(&self) -> Vec<u64> {
        self.generations.clone()
    }

    /// Folds one entry in: merges the records it writes (folding is merging,
    /// so the two obey the same laws); `true` if the state changed.
    pub fn apply(&mut self, e: &Entry) -> bool {
        let mut changed = false;
        for (k, r) in sealed_records_of(e) {
            changed |= self.merge_record(&k, &r);
        }
        changed
    }

    /// Joins another node's record in; `true` if the state changed. A
    /// record that says nothing new leaves no trace (no empty record is
    /// stored).
    pub fn merge_record(&mut self, key: &RecordKey, record: &Record) -> bool {
        let changed = match (key, record) {
            (RecordKey::Job(n, p), Record::Job(reg)) => join_in(&mut self.jobs, &(n.clone(), p.clone()), reg),
            (RecordKey::Paused(n), Record::Paused(reg)) => join_in(&mut self.paused, n, reg),
            (RecordKey::Series(n, p), Record::Series(other)) => match self.series.get_mut(&(n.clone(), p.clone())) {
                Some(mine) => mine.join(other),
                None => {
                    let mut fresh = Series::default();
                    let c = fresh.join(other);
                    if c {
                        self.series.insert((n.clone(), p.clone()), fresh);
                    }
                    c
                }
            },
            (RecordKey::Origin(o), Record::Origin(other)) => match self.origins.get_mut(o) {
                Some(mine) => mine.join(other),
                None => {
                    let mut fresh = OriginRec::default();
                    let c = fresh.join(other);
                    if c {
                        self.origins.insert(o.clone(), fresh);
                    }
                    c
                }
            },
            _ => false,
        };
        if changed {
            self.touch(key.clone());
        }
        changed
    }

    /// Joins every record of `other` in.
    pub fn merge(&mut self, other: &MeshState) -> bool {
        let mut changed = false;
        for (k, r) in other.records() {
            changed |= self.merge_record(&k, &r);
        }
        changed
    }

    /// The record under `key`, if any.
    pub fn record(&self, key: &RecordKey) -> Option<Record> {
        match key {
            RecordKey::Job(n, p) => self.jobs.get(&(n.clone(), p.clone())).cloned().map(Record::Job),
            RecordKey::Paused(n) => self.paused.get(n).cloned().map(Record::Paused),
            RecordKey::Series(n, p) => {
                self.series.get(&(n.clone(), p.clone())).cloned().map(|s| Record::Series(Box::new(s)))
            }
            RecordKey::Origin(o) => self.origins.get(o).cloned().map(Record::Origin),
        }
    }

    /// Every record key, in key order.
    pub fn keys(&self) -> impl Iterator<Item = RecordKey> + '_ {
        let jobs = self.jobs.keys().map(|(n, p)| RecordKey::Job(n.clone(), p.clone()));
        let paused = self.paused.keys().map(|n| RecordKey::Paused(n.clone()));
        let series = self.series.keys().map(|(n, p)| RecordKey::Series(n.clone(), p.clone()));
        let origins = self.origins.keys().map(|o| RecordKey::Origin(o.clone()));
        jobs.chain(paused).chain(series).chain(origins)
    }

    /// Every record with its key.
    pub fn records(&self) -> Vec<(RecordKey, Record)> {
        self.keys().filter_map(|k| self.record(&k).map(|r| (k, r))).collect()
    }

    /// The records whose bucket is one of `buckets`.
    pub fn records_in(&self, buckets: &BTreeSet<usize>) -> Vec<(RecordKey, Record)> {
        self.keys().filter(|k| buckets.contains(&k.bucket())).filter_map(|k| self.record(&k).map(|r| (k, r))).collect()
    }

    /// One hash per bucket over its records' keys and values (cached per
    /// bucket until one of its records changes).
    pub fn digest(&mut self) -> StateDigest {
        if self.buckets.iter().any(Option::is_none) {
            let stale: BTreeSet<usize> = (0..BUCKETS).filter(|b| self.buckets[*b].is_none()).collect();
            for (b, h) in self.hash_buckets(&stale) {
                self.buckets[b] = Some(h);
            }
        }
        self.buckets.iter().map(|b| b.unwrap_or(0)).collect()
    }

    /// [`MeshState::digest`] computed afresh, every bucket (for benchmarks).
    pub fn digest_cold(&self) -> StateDigest {
        let all: BTreeSet<usize> = (0..BUCKETS).collect();
        self.hash_buckets(&all).into_values().collect()
    }

    fn hash_buckets(&self, which: &BTreeSet<usize>) -> BTreeMap<usize, u64> {
        use sha2::Digest as _;
        let mut hashers: BTreeMap<usize, sha2::Sha256> = which.iter().map(|b| (*b, sha2::Sha256::default())).collect();
        for (k, mut r) in self.records_in(which) {
            if let Some(h) = hashers.get_mut(&k.bucket()) {
                // Whether each register is sealed, not the signature's
                // bytes: a node keeps those on disk, not in memory.
                let sealed: Vec<bool> = seals_mut(&mut r)
                    .into_iter()
                    .map(|s| {
                        s.store();
                        s.is_sealed()
                    })
                    .collect();
                h.update(cbor(&k));
                h.update(cbor(&r));
                h.update(cbor(&sealed));
            }
        }
        hashers.into_iter().map(|(b, h)| (b, Digest::from_hasher(h).prefix_u64())).collect()
    }

    /// The buckets where `theirs` differs from this state's digest.
    pub fn differing(&mut self, theirs: &StateDigest) -> BTreeSet<usize> {
        let mine = self.digest();
        (0..BUCKETS).filter(|b| theirs.get(*b) != mine.get(*b)).collect()
    }

    /// Keeps in memory only that the registers of the record under `key`
    /// are sealed: call once the record, seals and all, is on disk.
    pub fn store_seals(&mut self, key: &RecordKey) {
        let seals: Vec<&mut Seal> = match key {
            RecordKey::Job(n, p) => {
                self.jobs.get_mut(&(n.clone(), p.clone())).map(|r| &mut r.seal).into_iter().collect()
            }
            RecordKey::Paused(n) => self.paused.get_mut(n).map(|r| &mut r.seal).into_iter().collect(),
            RecordKey::Series(n, p) => {
                self.series.get_mut(&(n.clone(), p.clone())).map(series_seals).unwrap_or_default()
            }
            RecordKey::Origin(o) => self.origins.get_mut(o).map(|r| &mut r.seal).into_iter().collect(),
        };
        for s in seals {
            s.store();
        }
    }

    /// Keys of the records changed since the last call.
    pub fn take_changed(&mut self) -> BTreeSet<RecordKey> {
        std::mem::take(&mut self.changed)
    }

    /// Gives back keys taken by [`MeshState::take_changed`] that could not
    /// be written, so the next write tries them again.
    pub fn still_changed(&mut self, keys: impl IntoIterator<Item = RecordKey>) {
        self.changed.extend(keys);
    }

    /// Every origin's peer id and the name of its newest entry.
    pub fn origin_names(&self) -> Vec<(String, String)> {
        self.origins.iter().filter_map(|(peer, o)| Some((peer.clone(), o.name.as_ref()?.value.clone()))).collect()
    }

    /// The next seq a writer with this origin should use, as far as the
    /// mesh has seen.
    pub fn max_seq(&self, origin: &str) -> u64 {
        self.origins.get(origin).map(|o| o.max_seq).unwrap_or(0)
    }

    /// The greatest HLC in the state (a clock must order after it).
    pub fn max_time(&self) -> Option<Hlc> {
        let mut best: Option<Hlc> = None;
        let mut see = |t: &Hlc| {
            if best.as_ref().is_none_or(|b| t > b) {
                best = Some(t.clone());
            }
        };
        self.jobs.values().for_each(|r| see(&r.time));
        self.paused.values().for_each(|r| see(&r.time));
        for s in self.series.values() {
            s.notified.iter().for_each(|r| see(&r.time));
            for r in &s.requests {
                see(&r.time);
            }
        }
        // Every entry writes its origin's name register at its own HLC:
        // this covers the stamps of one-writer registers too.
        self.origins.values().filter_map(|o| o.name.as_ref()).for_each(|n| see(&n.time));
        best
    }

    /// Number of records (jobs, paused flags, series, origins).
    pub fn len(&self) -> usize {
        self.jobs.len() + self.paused.len() + self.series.len() + self.origins.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    // ---- views: read straight from the records, never refolded ----

    fn job_view(&self, (node, path): &SeriesKey, reg: &Lww<JobReg>) -> JobView {
        let s = self.series.get(&(node.clone(), path.clone()));
        let last = s.and_then(|s| s.last.as_ref());
        JobView {
            node: node.clone(),
            path: path.clone(),
            every_min: reg.value.every_min,
            excludes: reg.value.excludes.clone(),
            paused: self.paused.get(node).is_some_and(|p| p.value),
            last: last.map(|l| LastRun {
                result: l.value.result,
                time: l.at.bare(),
                archive: l.value.archive.clone(),
                error: l.value.error.clone(),
            }),
            last_success: s.and_then(|s| s.last_success.as_ref()).map(Stamp::bare),
            last_started: s.and_then(|s| s.last_started.as_ref()).map(Stamp::bare),
            registered_at: reg.time.clone(),
            last_size: s.and_then(|s| s.last_size.as_ref()).map(|l| l.value),
            last_warnings: s.and_then(|s| s.last_warnings.as_ref()).map(|l| l.value.clone()).unwrap_or_default(),
            spec: reg.value.spec.clone(),
            last_plugin: last.and_then(|l| l.value.plugin.clone()),
        }
    }

    /// The registered jobs, by (node, path).
    pub fn jobs(&self) -> Vec<JobView> {
        self.jobs.iter().filter(|(_, r)| r.value.registered).map(|(k, r)| self.job_view(k, r)).collect()
    }

    /// The registered jobs of node `node`.
    pub fn jobs_of(&self, node: &str) -> Vec<JobView> {
        self.jobs
            .range((node.to_string(), String::new())..)
            .take_while(|((n, _), _)| n == node)
            .filter(|(_, r)| r.value.registered)
            .map(|(k, r)| self.job_view(k, r))
            .collect()
    }

    /// Makes the catalogs of the series that changed again.
    fn refresh_catalogs(&mut self) {
        for key in std::mem::take(&mut self.stale_catalogs) {
            let c = self.series.get(&key).map(|s| catalog_of(&key.0, s)).unwrap_or_default();
            if c.is_empty() {
                self.catalogs.remove(&key);
            } else {
                self.catalogs.insert(key, Arc::new(c));
            }
        }
    }

    /// The archives of (node, path) that some node still keeps, newest first.
    pub fn catalog(&mut self, node: &str, path: &str) -> Arc<Vec<CatalogArchive>> {
        self.refresh_catalogs();
        self.catalogs.get(&(node.to_string(), path.to_string())).cloned().unwrap_or_default()
    }

    /// [`MeshState::catalog`] of every series that has a kept archive.
    pub fn catalogs(&mut self) -> BTreeMap<SeriesKey, Arc<Vec<CatalogArchive>>> {
        self.refresh_catalogs();
        self.catalogs.clone()
    }

    /// The last notification told for each job.
    pub fn notified(&self) -> BTreeMap<SeriesKey, Notice> {
        self.series.iter().filter_map(|(k, s)| Some((k.clone(), Notice::parse(&s.notified.as_ref()?.value)?))).collect()
    }

    /// The remembered entries that answer `request`, oldest first.
    pub fn for_request(&self, request: &str) -> Vec<Entry> {
        let mut out: Vec<Entry> = self
            .series
            .values()
            .flat_map(|s| s.requests.iter())
            .filter(|e| e.event.request() == Some(request))
            .cloned()
            .collect();
        out.sort_by(|a, b| a.time.cmp(&b.time));
        out
    }

    /// The series (node, path) that node `name` keeps a copy of, or runs.
    pub fn series_kept_by(&self, name: &str) -> BTreeSet<SeriesKey> {
        let mut out: BTreeSet<SeriesKey> = self.jobs.keys().filter(|(n, _)| n == name).cloned().collect();
        for (k, s) in &self.series {
            if k.0 == name || s.archives.values().any(|a| a.kept_by(name)) {
                out.insert(k.clone());
            }
        }
        out
    }

    /// The peer id of the node called `name`, as its newest entry said.
    pub fn peer_of(&self, name: &str) -> Option<String> {
        self.origins
            .iter()
            .filter(|(_, o)| o.name.as_ref().is_some_and(|n| n.value == name))
            .max_by(|a, b| a.1.name.as_ref().map(|n| &n.time).cmp(&b.1.name.as_ref().map(|n| &n.time)))
            .map(|(peer, _)| peer.clone())
    }

    /// Every registered job's series.
    pub fn job_keys(&self) -> impl Iterator<Item = &SeriesKey> + '_ {
        self.jobs.iter().filter(|(_, r)| r.value.registered).map(|(k, _)| k)
    }

    /// Names of the nodes that keep a copy of some archive of (node, path).
    pub fn holders_of(&mut self, node: &str, path: &str) -> BTreeSet<String> {
        self.catalog(node, path).iter().flat_map(|a| a.holders.iter().cloned()).collect()
    }
}

/// The records entry `e` writes, each holding only what the entry says.
fn records_of(e: &Entry) -> Vec<(RecordKey, Record)> {
    let origin =
        OriginRec { max_seq: e.seq, name: Some(Lww::new(e.time.clone(), e.origin_name.clone())), seal: Seal::None };
    let mut out = vec![(RecordKey::Origin(e.origin.clone()), Record::Origin(origin))];
    let node = e.event.node().to_string();
    let job = |path: &str, reg: JobReg| {
        (RecordKey::Job(node.clone(), path.to_string()), Record::Job(Lww::new(e.time.clone(), reg)))
    };
    match &e.event {
        Event::Registered { path, every_min, excludes, spec, .. } => out.push(job(
            path,
            JobReg { registered: true, every_min: *every_min, excludes: excludes.clone(), spec: spec.clone() },
        )),
        Event::Unregistered { path, .. } => out.push(job(path, JobReg::default())),
        Event::Paused { .. } | Event::Resumed { .. } => out.push((
            RecordKey::Paused(node.clone()),
            Record::Paused(Lww::new(e.time.clone(), matches!(e.event, Event::Paused { .. }))),
        )),
        _ => {}
    }
    if let Some(path) = e.event.path() {
        let s = series_part(e);
        if s != Series::default() {
            out.push((RecordKey::Series(node, path.to_string()), Record::Series(Box::new(s))));
        }
    }
    out
}

/// The series part of an entry: a [`Series`] holding only what it says.
fn series_part(e: &Entry) -> Series {
    let t = Stamp::of(e);
    let mut s = Series::default();
    let holder = |s: &mut Series, archive: &str, holder: &str, keeps: bool| {
        if let Some(a) = s.archive_mut(archive) {
            a.set_holder(holder, &Own { at: t.clone(), value: keeps });
        }
    };
    let run =
        |result: RunResult, archive: Option<&String>, error: Option<&String>, plugin: &Option<PluginReport>| Own {
            at: t.clone(),
            value: RunRec { result, archive: archive.cloned(), error: error.cloned(), plugin: plugin.clone() },
        };
    match &e.event {
        Event::Started { .. } => s.last_started = Some(t.clone()),
        Event::Finished { node, archive, size, files, warnings, plugin, .. } => {
            s.last = Some(run(RunResult::Finished, Some(archive), None, plugin));
            s.last_success = Some(t.clone());
            s.last_warnings = Some(Own { at: t.clone(), value: capped_warnings(warnings) });
            if !archive.is_empty() {
                s.last_size = Some(Own { at: t.clone(), value: *size });
                if let Some(a) = s.archive_mut(archive) {
                    let made = Made { size: *size, files: *files, warnings: warnings.len() as u64 };
                    a.made = Some(Own { at: t.clone(), value: made });
                }
                holder(&mut s, archive, node, true);
            }
        }
        Event::Unchanged { archive, plugin, .. } => {
            s.last = Some(run(RunResult::Unchanged, Some(archive), None, plugin));
            s.last_success = Some(t.clone());
        }
        Event::Failed { error, plugin, .. } => s.last = Some(run(RunResult::Failed, None, Some(error), plugin)),
        Event::Replicated { archive, holder: h, .. } | Event::Repaired { archive, holder: h, .. } => {
            holder(&mut s, archive, h, true)
        }
        Event::Pruned { archive, holder: h, .. } => holder(&mut s, archive, h, false),
        Event::Notified { event, .. } => s.notified = Some(Lww::new(e.time.clone(), event.clone())),
        _ => {}
    }
    if e.event.request().is_some() {
        // Kept with the origin's signature of the entry, not the seals
        // of the registers it wrote (those are in the registers).
        s.remember_request(&Entry { seals: Vec::new(), ..e.clone() });
    }
    s
}

// ---- seals: every register is signed by the one node that may write it ----

/// The node whose key must have signed a register: a peer by its id (the
/// writer of an [`Lww`], of an origin record, of an entry), or a node by
/// its name (the series' node for its runs and archives, a holder for its
/// copy), which each node binds to one key (`store::origin_bound`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Writer {
    Peer(String),
    Node(String),
}

/// One signed thing of a record: who writes it, the message the writer
/// signs, and its signature.
pub struct Slot<'a> {
    pub writer: Writer,
    /// What the signature is over: the register's key, field, version and
    /// value (or an entry's [`Entry::signed_bytes`]).
    pub msg: Vec<u8>,
    pub sig: &'a mut Seal,
    /// A whole entry (a request's answer), signed as one: its signature
    /// is the entry's, not one of the entry's register seals.
    pub entry: bool,
    /// What it is, for people: `last run`, `holder h of archive a`, ….
    pub what: String,
}

/// A register's part of the message its writer signs.
#[derive(Serialize)]
enum Field<'a> {
    Job,
    Paused,
    Origin,
    Last,
    LastSuccess,
    LastStarted,
    LastSize,
    LastWarnings,
    Notified,
    Made(&'a str),
    Holder(&'a str, &'a str),
}

fn register_msg<V: Serialize, T: Serialize>(key: &RecordKey, field: Field<'_>, version: V, value: &T) -> Vec<u8> {
    let mut out = b"backmesh-register-1".to_vec();
    // Keys, versions and values always encode.
    let _ = ciborium::into_writer(&(key, field, version, value), &mut out);
    out
}

/// The slot of a register of one node's, stamped `at`.
fn own_slot<'a, T: Serialize>(
    key: &RecordKey,
    writer: &str,
    field: Field<'_>,
    what: String,
    at: &'a mut Stamp,
    value: &T,
) -> Slot<'a> {
    Slot {
        writer: Writer::Node(writer.to_string()),
        msg: register_msg(key, field, at.point(), value),
        sig: &mut at.seal,
        entry: false,
        what,
    }
}

/// The slot of a last-writer register, written by the node of its time.
fn lww_slot<'a, T: Serialize>(key: &RecordKey, field: Field<'_>, what: &str, r: &'a mut Lww<T>) -> Slot<'a> {
    let Lww { time, value, seal } = r;
    Slot {
        writer: Writer::Peer(time.node.clone()),
        msg: register_msg(key, field, &*time, &*value),
        sig: seal,
        entry: false,
        what: what.to_string(),
    }
}

/// Every signed thing of `record` (under `key`), in one fixed order: the
/// order in which an entry carries the seals of what it writes.
pub fn slots<'a>(key: &RecordKey, record: &'a mut Record) -> Vec<Slot<'a>> {
    let mut out = Vec::new();
    match (key, record) {
        (_, Record::Job(r)) => out.push(lww_slot(key, Field::Job, "job settings", r)),
        (_, Record::Paused(r)) => out.push(lww_slot(key, Field::Paused, "pause flag", r)),
        (RecordKey::Origin(peer), Record::Origin(o)) => {
            let OriginRec { max_seq, name, seal } = o;
            let name = name.as_ref().map(|n| (&n.time, &n.value));
            out.push(Slot {
                writer: Writer::Peer(peer.clone()),
                msg: register_msg(key, Field::Origin, *max_seq, &name),
                sig: seal,
                entry: false,
                what: format!("highest seq ({max_seq})"),
            })
        }
        (RecordKey::Series(node, _), Record::Series(s)) => {
            let Series { last, last_success, last_started, last_size, last_warnings, notified, archives, requests } =
                &mut **s;
            if let Some(Own { at, value }) = last {
                out.push(own_slot(key, node, Field::Last, "last run".into(), at, value));
            }
            if let Some(at) = last_success {
                out.push(own_slot(key, node, Field::LastSuccess, "last success".into(), at, &()));
            }
            if let Some(at) = last_started {
                out.push(own_slot(key, node, Field::LastStarted, "last start".into(), at, &()));
            }
            if let Some(Own { at, value }) = last_size {
                out.push(own_slot(key, node, Field::LastSize, "last size".into(), at, value));
            }
            if let Some(Own { at, value }) = last_warnings {
                out.push(own_slot(key, node, Field::LastWarnings, "last warnings".into(), at, value));
            }
            if let Some(n) = notified {
                out.push(lww_slot(key, Field::Notified, "last notification", n));
            }
            for (id, a) in archives.iter_mut() {
                if let Some(Own { at, value }) = &mut a.made {
                    out.push(own_slot(key, node, Field::Made(id), format!("archive {id}"), at, value));
                }
                for (h, Own { at, value }) in a.holders.iter_mut() {
                    let what = format!("copy of archive {id} on {h}");
                    out.push(own_slot(key, h, Field::Holder(id, h), what, at, value));
                }
            }
            for e in requests.iter_mut() {
                out.push(Slot {
                    writer: Writer::Peer(e.origin.clone()),
                    msg: e.signed_bytes(),
                    what: format!("`{}` entry (seq {})", e.event.kind(), e.seq),
                    sig: &mut e.sig,
                    entry: true,
                });
            }
        }
        _ => {}
    }
    out
}

/// Every seal of `series`, in [`slots`] order, without the messages
/// (cheap: for keeping seals on disk, and for the digest).
fn series_seals(s: &mut Series) -> Vec<&mut Seal> {
    let Series { last, last_success, last_started, last_size, last_warnings, notified, archives, requests } = s;
    let mut out = Vec::new();
    out.extend(last.as_mut().map(|r| &mut r.at.seal));
    out.extend(last_success.as_mut().map(|at| &mut at.seal));
    out.extend(last_started.as_mut().map(|at| &mut at.seal));
    out.extend(last_size.as_mut().map(|r| &mut r.at.seal));
    out.extend(last_warnings.as_mut().map(|r| &mut r.at.seal));
    out.extend(notified.as_mut().map(|r| &mut r.seal));
    for a in archives.values_mut() {
        out.extend(archive_seals(a));
    }
    out.extend(requests.iter_mut().map(|e| &mut e.sig));
    out
}

/// Every seal of one archive's record, in [`slots`] order.
pub fn archive_seals(a: &mut ArchiveRec) -> Vec<&mut Seal> {
    let mut out = Vec::new();
    out.extend(a.made.as_mut().map(|m| &mut m.at.seal));
    out.extend(a.holders.iter_mut().map(|(_, h)| &mut h.at.seal));
    out
}

/// Every seal of `record`, in [`slots`] order.
pub fn seals_mut(record: &mut Record) -> Vec<&mut Seal> {
    match record {
        Record::Job(r) => vec![&mut r.seal],
        Record::Paused(r) => vec![&mut r.seal],
        Record::Origin(o) => vec![&mut o.seal],
        Record::Series(s) => series_seals(s),
    }
}

/// Puts back into `record` the signatures this node keeps on disk only
/// ([`Seal::Stored`]), from `stored`, the record as last written: each
/// from the register that says the same (the same message). How many
/// could not be found there (left unsealed: a peer then leaves them out,
/// blaming no one, and takes them from another).
pub fn fill_seals(key: &RecordKey, record: &mut Record, stored: Option<Record>) -> usize {
    if !seals_mut(record).iter().any(|s| s.is_stored()) {
        return 0;
    }
    let mut sigs = std::collections::HashMap::new();
    if let Some(mut stored) = stored {
        for s in slots(key, &mut stored) {
            if let Some(sig) = s.sig.sig() {
                sigs.insert(s.msg, *sig);
            }
        }
    }
    let mut missing = 0;
    for s in slots(key, record) {
        if s.sig.is_stored() {
            *s.sig = match sigs.get(&s.msg) {
                Some(sig) => Seal::of(*sig),
                None => {
                    missing += 1;
                    Seal::None
                }
            };
        }
    }
    missing
}

/// Signs entry `e` as its origin: the entry itself, then every register
/// it writes ([`slots`] order, whole entries aside), into `e.seals`.
pub fn seal_entry(e: &mut Entry, key: &dyn Signer) {
    e.seals.clear();
    e.sign(key);
    let mut seals = Vec::new();
    for (k, mut r) in records_of(e) {
        seals.extend(slots(&k, &mut r).into_iter().filter(|s| !s.entry).map(|s| key.sign(&s.msg)));
    }
    e.seals = seals;
}

/// The records `e` writes, each register with the seal `e` carries for it
/// (none at all if `e` carries another number of seals than it writes
/// registers: they would be checked against the wrong messages).
pub fn sealed_records_of(e: &Entry) -> Vec<(RecordKey, Record)> {
    let mut records = records_of(e);
    if e.seals.is_empty() {
        return records;
    }
    let mut seals = e.seals.iter();
    let mut fits = true;
    for (k, r) in records.iter_mut() {
        for slot in slots(k, r).into_iter().filter(|s| !s.entry) {
            match seals.next() {
                Some(sig) => *slot.sig = Seal::of(*sig),
                None => fits = false,
            }
        }
    }
    if !fits || seals.next().is_some() {
        return records_of(e);
    }
    records
}

/// Drops from `record` every register without a seal; `false` if nothing
/// is left of it.
fn keep_sealed(record: &mut Record) -> bool {
    match record {
        Record::Job(r) => r.seal.is_sealed(),
        Record::Paused(r) => r.seal.is_sealed(),
        Record::Origin(o) => o.seal.is_sealed(),
        Record::Series(s) => {
            let sealed = |at: &Stamp| at.seal.is_sealed();
            if !s.last.as_ref().is_some_and(|r| sealed(&r.at)) {
                s.last = None;
            }
            if !s.last_success.as_ref().is_some_and(sealed) {
                s.last_success = None;
            }
            if !s.last_started.as_ref().is_some_and(sealed) {
                s.last_started = None;
            }
            if !s.last_size.as_ref().is_some_and(|r| sealed(&r.at)) {
                s.last_size = None;
            }
            if !s.last_warnings.as_ref().is_some_and(|r| sealed(&r.at)) {
                s.last_warnings = None;
            }
            if !s.notified.as_ref().is_some_and(|r| r.seal.is_sealed()) {
                s.notified = None;
            }
            for a in s.archives.values_mut() {
                if !a.made.as_ref().is_some_and(|m| sealed(&m.at)) {
                    a.made = None;
                }
                a.holders.retain(|(_, h)| sealed(&h.at));
            }
            s.archives.retain(|_, a| a.made.is_some() || !a.holders.is_empty());
            s.requests.retain(|e| e.sig.is_sealed());
            **s != Series::default()
        }
    }
}

/// Where a node looks up the key of a node by name.
pub trait NodeKeys {
    /// The key node `name` is bound to here, if any.
    fn key_of(&self, name: &str) -> Option<libp2p::identity::PublicKey>;
}

/// What checking a peer's record found.
#[derive(Debug, Default)]
pub struct Checked {
    /// Registers whose seal is not their writer's: forged or altered.
    pub forged: Vec<String>,
    /// Registers without a seal, or whose writer's key is not known here
    /// yet: left out, blaming no one (a later pull brings them again).
    pub unproven: usize,
}

impl MeshState {
    /// Keeps of a peer's `record` only what its writers sealed, checked
    /// against their keys (a peer id's own; a node's as `keys` binds it).
    /// A register this state holds already, seal and all, is not checked
    /// again. `false` if nothing is left of the record.
    pub fn check(&self, key: &RecordKey, record: &mut Record, keys: &dyn NodeKeys, found: &mut Checked) -> bool {
        // What is held sealed here: a register that says the same (its
        // message) adds nothing, whatever its seal.
        let mut held = std::collections::HashSet::new();
        if let Some(mut mine) = self.record(key) {
            for s in slots(key, &mut mine) {
                if s.sig.is_sealed() {
                    held.insert(s.msg);
                }
            }
        }
        for s in slots(key, record) {
            let Some(sig) = s.sig.sig().copied() else {
                found.unproven += 1;
                *s.sig = Seal::None;
                continue;
            };
            if held.contains(&s.msg) {
                continue;
            }
            let public = match &s.writer {
                Writer::Peer(p) => super::seal::key_of_peer(p),
                Writer::Node(n) => keys.key_of(n),
            };
            match public {
                Some(k) if k.verify(&s.msg, &sig.0) => {}
                Some(_) => {
                    found.forged.push(format!("{} of {}", s.what, key_label(key)));
                    *s.sig = Seal::None;
                }
                None => {
                    found.unproven += 1;
                    *s.sig = Seal::None;
                }
            }
        }
        keep_sealed(record)
    }

    /// Seals, with this node's key, the registers it wrote that carry no
    /// seal (those of a state written before seals, or folded from
    /// entries without them); how many.
    pub fn reseal(&mut self, me: &str, my_name: &str, key: &dyn Signer) -> usize {
        let mine = |w: &Writer| match w {
            Writer::Peer(p) => p == me,
            Writer::Node(n) => n == my_name,
        };
        let mut sealed = 0;
        for k in self.keys().collect::<Vec<_>>() {
            let Some(mut r) = self.record(&k) else { continue };
            let mut n = 0;
            for s in slots(&k, &mut r) {
                if !s.sig.is_sealed() && mine(&s.writer) {
                    *s.sig = Seal::of(key.sign(&s.msg));
                    n += 1;
                }
            }
            if n > 0 {
                self.merge_record(&k, &r);
                sealed += n;
            }
        }
        sealed
    }
}

/// A record's key, for people.
fn key_label(key: &RecordKey) -> String {
    match key {
        RecordKey::Job(n, p) | RecordKey::Series(n, p) => format!("{p} on {n}"),
        RecordKey::Paused(n) => format!("node {n}"),
        RecordKey::Origin(o) => format!("peer {o}"),
    }
}

/// Warnings a series record keeps of a run (the entry in the history keeps
/// them all): a tree with thousands of unreadable files must not make one
/// record too large to travel in an anti-entropy answer.
pub const WARNINGS_KEPT: usize = 50;

fn capped_warnings(all: &[String]) -> Vec<String> {
    let mut out: Vec<String> = all
        .iter()
        .take(WARNINGS_KEPT)
        .map(|w| match (0..=500.min(w.len())).rev().find(|i| w.is_char_boundary(*i)) {
            Some(cut) if cut < w.len() => format!("{}…", &w[..cut]),
            _ => w.clone(),
        })
        .collect();
    if all.len() > WARNINGS_KEPT {
        out.push(format!("… and {} more warnings (see `backmesh log`)", all.len() - WARNINGS_KEPT));
    }
    out
}

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

/// The archives of series `s` of node `origin` that some node keeps. Only
/// the series' node says an archive exists (its `finished` run, or its own
/// word that it keeps it): a holder's word alone lists nothing, or any node
/// with the swarm key could list archives of another's series that its
/// node never made (and name the newest one, the one a restore takes).
fn catalog_of(origin: &str, s: &Series) -> Vec<CatalogArchive> {
    let mut out: Vec<CatalogArchive> = s
        .archives
        .iter()
        .filter(|(_, a)| a.made.is_some() || a.holders.iter().any(|(n, h)| n == origin && h.value))
        .map(|(id, a)| {
            let made = a.made.as_ref();
            CatalogArchive {
                id: id.clone(),
                created: made.map(|m| m.at.bare()),
                size: made.map(|m| m.value.size).unwrap_or(0),
                files: made.map(|m| m.value.files).unwrap_or(0),
                warnings: made.map(|m| m.value.warnings).unwrap_or(0),
                holders: a.holders.iter().filter(|(_, h)| h.value).map(|(n, _)| n.clone()).collect(),
            }
        })
        .filter(|a| !a.holders.is_empty())
        .collect();
    out.sort_by(|a, b| b.id.cmp(&a.id));
    out
}

/// One archive of a (node, path) as the mesh knows it: made by a `finished`
/// run, copied by `replicated` and `repaired`, dropped by `pruned`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CatalogArchive {
    pub id: String,
    /// When the run that made it finished (`None` until that entry arrives).
    pub created: Option<Stamp>,
    pub size: u64,
    pub files: u64,
    pub warnings: u64,
    /// Names of the nodes that keep a complete copy (the origin included).
    pub holders: BTreeSet<String>,
}

/// The outcome of a job's last run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LastRun {
    pub result: RunResult,
    pub time: Stamp,
    pub archive: Option<String>,
    pub error: Option<String>,
}

/// A job as the mesh state knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobView {
    pub node: String,
    pub path: String,
    pub every_min: u64,
    pub excludes: Vec<String>,
    /// The node's scheduled backups are paused.
    pub paused: bool,
    pub last: Option<LastRun>,
    pub last_success: Option<Stamp>,
    /// When its last run started (scheduling counts from here).
    pub last_started: Option<Stamp>,
    /// When it was last registered or its settings changed.
    pub registered_at: Hlc,
    /// Size of the newest archive a run made.
    pub last_size: Option<u64>,
    /// Warnings of the last run that stored an archive.
    pub last_warnings: Vec<String>,
    /// Source, hooks and notifications.
    pub spec: JobSpec,
    /// What the last run's plugin or hooks reported.
    pub last_plugin: Option<PluginReport>,
}

/// A job's state as a person reads it: `paused`, `failing` (its last run
/// failed), `stale` (no success for twice its period), `pending` (never
/// run yet) or `ok`.
pub fn job_state(j: &JobView, now_ms: i64) -> JobState {
    let period = j.every_min as i64 * crate::jobs::minute_ms();
    let since_success = now_ms - j.last_success.as_ref().map(|t| t.wall_ms).unwrap_or(j.registered_at.wall_ms);
    match &j.last {
        _ if j.paused => JobState::Paused,
        Some(l) if l.result == RunResult::Failed => JobState::Failing,
        _ if since_success > 2 * period => JobState::Stale,
        None => JobState::Pending,
        Some(_) => JobState::Ok,
    }
}

#[cfg(test)]
mod tests {
    use super::super::hlc::Clock;
    use super::*;

    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    #[test]
    fn an_entry_of_an_unknown_kind_counts_in_its_origin_s_sequence_and_changes_nothing_else() {
        let mut with = MeshState::new();
        let mut without = MeshState::new();
        for e in history(7, 200) {
            with.apply(&e);
            without.apply(&e);
        }
        let next = with.max_seq("A") + 1;
        assert!(with.apply(&crate::log::entry::newer_entry("A", next, "n1", "/a")));
        assert_eq!(with.max_seq("A"), next);
        assert_eq!(with.jobs(), without.jobs());
        assert_eq!(with.catalogs(), without.catalogs());
        assert_eq!(with.notified(), without.notified());
    }

    /// A random history written by 3 origins with their own skewed clocks,
    /// touching every kind of record.
    fn history(seed: u64, n: usize) -> Vec<Entry> {
        let mut rng = Rng(seed | 1);
        let origins = ["A", "B", "C"];
        let mut clocks: Vec<Clock> = origins.iter().map(|o| Clock::new(*o)).collect();
        let mut seqs = [0u64; 3];
        let mut out = Vec::new();
        for i in 0..n {
            let o = rng.below(3) as usize;
            seqs[o] += 1;
            let node = ["n1", "n2"][rng.below(2) as usize].to_string();
            let path = ["/a", "/b"][rng.below(2) as usize].to_string();
            let archive = format!("a{:03}", rng.below(80));
            let holder = ["n1", "n2", "n3"][rng.below(3) as usize].to_string();
            let request = (rng.below(3) == 0).then(|| format!("r{}", rng.below(40)));
            let event = match rng.below(11) {
                0 => Event::Registered {
                    node,
                    path,
                    every_min: 1 + rng.below(60),
                    excludes: vec![],
                    spec: Default::default(),
                },
                1 => Event::Unregistered { node, path },
                2 => Event::Paused { node },
                3 => Event::Resumed { node },
                4 => Event::Finished {
                    node,
                    path,
                    archive,
                    size: rng.below(1000),
                    files: 1,
                    duration_ms: 1,
                    warnings: vec![],
                    request,
                    plugin: None,
                },
                5 => Event::Failed { node, path, error: format!("e{i}"), duration_ms: 1, request, plugin: None },
                6 => Event::Replicated { node, path, archive, holder, bytes: 1 },
                7 => Event::Pruned { node, path, archive, holder },
                8 => Event::Started { node, path, request },
                9 => Event::Unchanged { node, path, archive, duration_ms: 1, request, plugin: None },
                _ => Event::Notified {
                    node,
                    path,
                    event: ["failure", "stale", "recovery"][rng.below(3) as usize].into(),
                    by: "n1".into(),
                    delivered: true,
                    error: None,
                },
            };
            let now = 1_000 + i as i64 * 10 + o as i64 * 500 - rng.below(300) as i64;
            out.push(Entry {
                origin: origins[o].into(),
                origin_name: origins[o].to_lowercase(),
                seq: seqs[o],
                time: clocks[o].tick(now),
                sig: Seal::None,
                seals: Vec::new(),
                event,
            });
        }
        out
    }

    fn fold(entries: &[Entry]) -> MeshState {
        let mut s = MeshState::new();
        for e in entries {
            s.apply(e);
        }
        s
    }

    fn shuffled(entries: &[Entry], rng: &mut Rng) -> Vec<Entry> {
        let mut v = entries.to_vec();
        for i in (1..v.len()).rev() {
            v.swap(i, rng.below(i as u64 + 1) as usize);
        }
        v
    }

    fn merged(x: &MeshState, y: &MeshState) -> MeshState {
        let mut m = x.clone();
        m.merge(y);
        m
    }

    #[test]
    fn any_delivery_order_and_duplicates_give_the_same_state() {
        for seed in 1..40u64 {
            let h = history(seed, 120);
            let mut reference = fold(&h);
            let mut rng = Rng(seed * 7919);
            for _ in 0..5 {
                let mut order = shuffled(&h, &mut rng);
                let dups: Vec<Entry> = order.iter().take(20).cloned().collect();
                order.extend(dups);
                let mut s = fold(&order);
                assert_eq!(s, reference, "seed {seed}");
                assert_eq!(s.jobs(), reference.jobs());
                assert_eq!(s.catalogs(), reference.catalogs());
                assert_eq!(s.digest(), reference.digest());
            }
        }
    }

    #[test]
    fn merge_is_idempotent_commutative_and_associative() {
        for seed in 1..30u64 {
            let h = history(seed, 90);
            let mut rng = Rng(seed);
            let part = |rng: &mut Rng| fold(&h.iter().filter(|_| rng.below(2) == 0).cloned().collect::<Vec<_>>());
            let (a, b, c) = (part(&mut rng), part(&mut rng), part(&mut rng));
            assert_eq!(merged(&a, &a), a, "idempotent");
            assert_eq!(merged(&a, &b), merged(&b, &a), "commutative");
            assert_eq!(merged(&merged(&a, &b), &c), merged(&a, &merged(&b, &c)), "associative");
        }
    }

    #[test]
    fn merging_the_states_of_parts_equals_folding_the_whole() {
        for seed in 1..30u64 {
            let h = history(seed, 150);
            let mut rng = Rng(seed * 31);
            let (mut x, mut y) = (Vec::new(), Vec::new());
            for e in &h {
                match rng.below(3) {
                    0 => x.push(e.clone()),
                    1 => y.push(e.clone()),
                    _ => {
                        x.push(e.clone());
                        y.push(e.clone());
                    }
                }
            }
            assert_eq!(merged(&fold(&x), &fold(&y)), fold(&h), "seed {seed}");
        }
    }

    #[test]
    fn anti_entropy_by_digest_sends_only_differing_buckets_and_converges() {
        let h = history(7, 300);
        let mut full = fold(&h);
        let mut behind = fold(&h[..200]);
        let differing = full.differing(&behind.digest());
        assert!(!differing.is_empty() && differing.len() < BUCKETS, "{}", differing.len());
        for (k, r) in full.records_in(&differing) {
            behind.merge_record(&k, &r);
        }
        assert_eq!(behind, full);
        assert_eq!(behind.digest(), full.digest());
        assert_eq!(full.digest_cold(), full.digest());
        assert!(full.differing(&behind.digest()).is_empty());
    }

    #[test]
    fn only_buckets_quiet_for_a_while_count_as_settled() {
        let h = history(3, 40);
        let mut s = fold(&h[..20]);
        let mut settled = Settled::default();
        settled.observe(&s, 0);
        assert!((0..BUCKETS).all(|b| settled.is_quiet(b, 0, 5_000)), "nothing seen change yet");
        let before = s.generations();
        for e in &h[20..] {
            s.apply(e);
        }
        settled.observe(&s, 10_000);
        let changed: Vec<usize> = (0..BUCKETS).filter(|b| s.generations()[*b] != before[*b]).collect();
        assert!(!changed.is_empty());
        for b in 0..BUCKETS {
            assert_eq!(settled.is_quiet(b, 12_000, 5_000), !changed.contains(&b), "bucket {b}");
            assert!(settled.is_quiet(b, 15_000, 5_000));
        }
    }

    #[test]
    fn the_state_stays_bounded_however_long_the_history() {
        let mut s = MeshState::new();
        let mut clock = Clock::new("A");
        let mut seq = 0;
        let mut entry = |event: Event, now: i64| {
            seq += 1;
            Entry {
                origin: "A".into(),
                origin_name: "n1".into(),
                seq,
                time: clock.tick(now),
                sig: Seal::None,
                seals: Vec::new(),
                event,
            }
        };
        for i in 0..5_000i64 {
            let archive = format!("2026{i:08}");
            s.apply(&entry(
                Event::Finished {
                    node: "n1".into(),
                    path: "/p".into(),
                    archive: archive.clone(),
                    size: 1,
                    files: 1,
                    duration_ms: 1,
                    warnings: vec![],
                    request: Some(format!("r{i}")),
                    plugin: None,
                },
                i,
            ));
            if i >= 10 {
                let old = format!("2026{:08}", i - 10);
                let e = Event::Pruned { node: "n1".into(), path: "/p".into(), archive: old, holder: "n1".into() };
                s.apply(&entry(e, i));
            }
        }
        let series = &s.series[&("n1".to_string(), "/p".to_string())];
        assert_eq!(series.archives.len(), ARCHIVES_KEPT);
        assert_eq!(series.requests.len(), REQUESTS_KEPT);
        let catalog = s.catalog("n1", "/p");
        assert_eq!(catalog.len(), 10, "the ten kept");
        assert_eq!(catalog[0].id, "202600004999");
        assert_eq!(s.for_request("r4999").len(), 1);
        assert!(s.for_request("r1").is_empty(), "old requests are forgotten");
    }

    /// Three nodes with keys of their own, and the keys by name.
    struct Keyed {
        keys: Vec<libp2p::identity::Keypair>,
        names: [&'static str; 3],
    }

    impl Keyed {
        fn new() -> Self {
            Keyed {
                keys: (0..3).map(|_| libp2p::identity::Keypair::generate_ed25519()).collect(),
                names: ["n1", "n2", "n3"],
            }
        }
        fn id(&self, i: usize) -> String {
            self.keys[i].public().to_peer_id().to_string()
        }
    }

    impl NodeKeys for Keyed {
        fn key_of(&self, name: &str) -> Option<libp2p::identity::PublicKey> {
            self.names.iter().position(|n| *n == name).map(|i| self.keys[i].public())
        }
    }

    /// Entries of the three nodes, each written within its authority
    /// (runs of its own series, copies it keeps) and sealed by it.
    fn sealed_history(k: &Keyed, seed: u64, n: usize) -> Vec<Entry> {
        let mut rng = Rng(seed | 1);
        let mut clocks: Vec<Clock> = (0..3).map(|i| Clock::new(k.id(i))).collect();
        let mut seqs = [0u64; 3];
        let mut out = Vec::new();
        for i in 0..n {
            let o = rng.below(3) as usize;
            seqs[o] += 1;
            let me = k.names[o].to_string();
            let other = k.names[rng.below(3) as usize].to_string();
            let path = ["/a", "/b"][rng.below(2) as usize].to_string();
            let archive = format!("a{:03}", rng.below(60));
            let request = (rng.below(3) == 0).then(|| format!("r{}", rng.below(40)));
            let event = match rng.below(8) {
                0 => Event::Registered { node: other, path, every_min: 5, excludes: vec![], spec: Default::default() },
                1 => Event::Paused { node: other },
                2 => Event::Finished {
                    node: me,
                    path,
                    archive,
                    size: rng.below(1000),
                    files: 1,
                    duration_ms: 1,
                    warnings: vec![format!("w{i}")],
                    request,
                    plugin: None,
                },
                3 => Event::Failed { node: me, path, error: format!("e{i}"), duration_ms: 1, request, plugin: None },
                4 => Event::Replicated { node: other, path, archive, holder: me, bytes: 1 },
                5 => Event::Pruned { node: other, path, archive, holder: me },
                6 => Event::Started { node: me, path, request },
                _ => Event::Notified {
                    node: other,
                    path,
                    event: Notice::Failure.as_str().into(),
                    by: me,
                    delivered: true,
                    error: None,
                },
            };
            let mut e = Entry::new(k.id(o), k.names[o].into(), seqs[o], clocks[o].tick(1_000 + i as i64 * 10), event);
            seal_entry(&mut e, &k.keys[o]);
            out.push(e);
        }
        out
    }

    #[test]
    fn a_state_of_sealed_entries_passes_every_check_and_travels_whole() {
        let k = Keyed::new();
        let entries = sealed_history(&k, 11, 300);
        let mut rng = Rng(5);
        let s = fold(&shuffled(&entries, &mut rng));
        assert_eq!(s, fold(&entries), "sealed entries fold in any order to one state");
        let mut found = Checked::default();
        let mut copy = MeshState::new();
        for (key, mut r) in s.records() {
            let before = r.clone();
            assert!(MeshState::new().check(&key, &mut r, &k, &mut found), "{key:?} kept");
            assert_eq!(r, before, "nothing of {key:?} left out");
            copy.merge_record(&key, &r);
        }
        assert!(found.forged.is_empty() && found.unproven == 0, "{found:?}");
        assert_eq!(copy, s, "a node that pulls it all gets the same state");
    }

    #[test]
    fn a_register_forged_altered_or_unsealed_is_left_out_and_only_a_forgery_named() {
        let k = Keyed::new();
        let s = fold(&sealed_history(&k, 3, 300));
        let key = s.keys().find(|k| matches!(k, RecordKey::Series(n, _) if n == "n1")).expect("a series of n1");
        let Some(Record::Series(real)) = s.record(&key) else { panic!("a series record") };
        let real_last = real.last.clone().expect("n1 ran");
        let thief = libp2p::identity::Keypair::generate_ed25519();
        // A run of n1 at a seq n1 will never reach, sealed by another key:
        // it would hide every later run of n1.
        let mut forged = Series::default();
        let at = Stamp { seq: u64::MAX, wall_ms: 1, logical: 0, seal: Seal::None };
        forged.last = Some(Own {
            at,
            value: RunRec { result: RunResult::Failed, archive: None, error: Some("x".into()), plugin: None },
        });
        let mut forged = Record::Series(Box::new(forged));
        for slot in slots(&key, &mut forged) {
            *slot.sig = Seal::of(Signer::sign(&thief, &slot.msg));
        }
        // A real register of n1's, its value altered, its seal kept.
        let mut altered = real.clone();
        if let Some(last) = altered.last.as_mut() {
            last.value.error = Some("altered".into());
            last.value.result = RunResult::Failed;
        }
        // A register with no seal at all.
        let unsealed = Series {
            last_started: Some(Stamp { seq: u64::MAX, wall_ms: 1, logical: 0, seal: Seal::None }),
            ..Series::default()
        };
        let mut found = Checked::default();
        let empty = MeshState::new();
        assert!(!empty.check(&key, &mut forged, &k, &mut found), "nothing of the forgery is left");
        assert_eq!(found.forged.len(), 1, "{found:?}");
        assert!(found.forged[0].contains("last run of /"), "{found:?}");
        let mut altered = Record::Series(altered);
        assert!(empty.check(&key, &mut altered, &k, &mut found), "the rest of the record is kept");
        assert_eq!(found.forged.len(), 2, "{found:?}");
        let Record::Series(kept) = &altered else { unreachable!() };
        assert!(kept.last.is_none(), "the altered run is left out");
        assert_eq!(kept.archives, real.archives, "the rest is whole");
        assert!(!empty.check(&key, &mut Record::Series(Box::new(unsealed)), &k, &mut found));
        assert_eq!((found.forged.len(), found.unproven), (2, 1), "an unsealed register blames no one");
        // Merged, what was left changes nothing of n1's runs.
        let mut s2 = s.clone();
        s2.merge_record(&key, &altered);
        let Some(Record::Series(after)) = s2.record(&key) else { panic!() };
        assert_eq!(after.last, Some(real_last));
    }

    #[test]
    fn an_origin_s_seq_is_believed_only_under_its_own_seal() {
        let k = Keyed::new();
        let s = fold(&sealed_history(&k, 9, 60));
        let key = RecordKey::Origin(k.id(0));
        let Some(Record::Origin(real)) = s.record(&key) else { panic!("n1 wrote") };
        let thief = libp2p::identity::Keypair::generate_ed25519();
        let mut claim = Record::Origin(OriginRec { max_seq: u64::MAX - 1, seal: Seal::None, ..real.clone() });
        for slot in slots(&key, &mut claim) {
            *slot.sig = Seal::of(Signer::sign(&thief, &slot.msg));
        }
        let mut found = Checked::default();
        assert!(!MeshState::new().check(&key, &mut claim, &k, &mut found));
        assert_eq!(found.forged.len(), 1);
        let mut real = Record::Origin(real);
        assert!(MeshState::new().check(&key, &mut real, &k, &mut found), "its own seal holds");
    }

    #[test]
    fn a_node_s_later_runs_win_though_its_clock_was_set_back_in_between() {
        let year = 365 * 24 * 3_600_000i64;
        let mut clock = Clock::new("A");
        let e = |seq, time, event| Entry {
            origin: "A".into(),
            origin_name: "n1".into(),
            seq,
            time,
            sig: Seal::None,
            seals: Vec::new(),
            event,
        };
        let reg = Event::Registered {
            node: "n1".into(),
            path: "/p".into(),
            every_min: 5,
            excludes: vec![],
            spec: Default::default(),
        };
        let started = || Event::Started { node: "n1".into(), path: "/p".into(), request: None };
        let failed = |error: &str| Event::Failed {
            node: "n1".into(),
            path: "/p".into(),
            error: error.into(),
            duration_ms: 1,
            request: None,
            plugin: None,
        };
        // Runs while the clock is a year ahead, then after it was set right.
        let entries = vec![
            e(1, clock.tick(1_000), reg),
            e(2, clock.tick(1_000 + year), started()),
            e(3, clock.tick(1_001 + year), failed("ahead")),
            e(4, clock.tick(2_000), started()),
            e(5, clock.tick(2_001), failed("set right")),
        ];
        assert!(entries[3].time < entries[2].time, "the clock was set back");
        for order in [entries.clone(), entries.iter().rev().cloned().collect()] {
            let s = fold(&order);
            let j = &s.jobs()[0];
            assert_eq!(j.last.as_ref().and_then(|l| l.error.clone()).as_deref(), Some("set right"));
            assert_eq!(j.last_started.as_ref().map(|t| t.wall_ms), Some(2_000));
        }
    }

    #[test]
    fn last_writer_by_hlc_wins_and_a_tombstone_holds() {
        let mut clock_a = Clock::new("A");
        let mut clock_b = Clock::new("B");
        let reg = |origin: &str, seq, time, every| Entry {
            origin: origin.into(),
            origin_name: origin.into(),
            seq,
            time,
            sig: Seal::None,
            seals: Vec::new(),
            event: Event::Registered {
                node: "n1".into(),
                path: "/p".into(),
                every_min: every,
                excludes: vec![],
                spec: Default::default(),
            },
        };
        let later = reg("B", 1, clock_b.tick(2_000), 30);
        let earlier = reg("A", 1, clock_a.tick(1_000), 5);
        let s = fold(&[later.clone(), earlier.clone()]);
        assert_eq!(s.jobs()[0].every_min, 30);
        let unreg = Entry {
            origin: "A".into(),
            origin_name: "a".into(),
            seq: 2,
            time: clock_a.tick(3_000),
            sig: Seal::None,
            seals: Vec::new(),
            event: Event::Unregistered { node: "n1".into(), path: "/p".into() },
        };
        // The unregistration, then the older registrations late: still gone.
        let s = fold(&[unreg, later, earlier]);
        assert!(s.jobs().is_empty());
        assert_eq!(s.max_seq("A"), 2);
    }

    #[test]
    fn a_clock_fed_the_max_time_orders_after_every_stamp_of_its_node() {
        let h = history(11, 100);
        let s = fold(&h);
        let newest = h.iter().map(|e| e.time.clone()).max().unwrap();
        assert_eq!(s.max_time(), Some(newest));
    }

    #[test]
    fn empty_records_from_a_peer_change_nothing_and_take_no_place() {
        let h = history(12, 120);
        let mut s = fold(&h);
        let before = s.clone();
        let digest = s.digest();
        let mut empty = Series::default();
        for i in 0..40 {
            empty.archives.insert(format!("zz{i}"), ArchiveRec::default());
        }
        assert!(!s.merge_record(&RecordKey::Series("n1".into(), "/a".into()), &Record::Series(Box::new(empty))));
        assert!(!s.merge_record(&RecordKey::Series("x".into(), "/y".into()), &Record::Series(Box::default())));
        assert!(!s.merge_record(&RecordKey::Origin("Q".into()), &Record::Origin(OriginRec::default())));
        assert_eq!(s, before);
        assert_eq!(s.digest(), digest);
        assert_eq!(s.digest_cold(), digest);
    }

    #[test]
    fn a_run_with_thousands_of_warnings_keeps_a_small_record() {
        let mut c = Clock::new("A");
        let warnings: Vec<String> =
            (0..10_000).map(|i| format!("f{i}: permission denied {}", "x".repeat(600))).collect();
        let e = Entry {
            origin: "A".into(),
            origin_name: "n1".into(),
            seq: 1,
            time: c.tick(1),
            sig: Seal::None,
            seals: Vec::new(),
            event: Event::Finished {
                node: "n1".into(),
                path: "/p".into(),
                archive: "x1".into(),
                size: 1,
                files: 1,
                duration_ms: 1,
                warnings,
                request: None,
                plugin: None,
            },
        };
        let s = fold(&[e]);
        let kept = &s.series[&("n1".to_string(), "/p".to_string())].last_warnings.as_ref().unwrap().value;
        assert_eq!(kept.len(), WARNINGS_KEPT + 1);
        assert!(kept.last().unwrap().contains("9950 more"), "{:?}", kept.last());
        assert!(kept.iter().all(|w| w.len() < 600));
    }

    /// Entries written by node n1 (peer `A`), one seq and one tick each.
    fn from_n1() -> impl FnMut(Event) -> Entry {
        let mut c = Clock::new("A");
        let mut seq = 0;
        move |event: Event| {
            seq += 1;
            Entry {
                origin: "A".into(),
                origin_name: "n1".into(),
                seq,
                time: c.tick(seq as i64),
                sig: Seal::None,
                seals: Vec::new(),
                event,
            }
        }
    }

    #[test]
    fn the_catalog_follows_finished_replicated_and_pruned() {
        let mut e = from_n1();
        let mut s = fold(&[
            e(Event::Finished {
                node: "n1".into(),
                path: "/p".into(),
                archive: "x1".into(),
                size: 10,
                files: 2,
                duration_ms: 1,
                warnings: vec!["w".into()],
                request: None,
                plugin: None,
            }),
            e(Event::Replicated {
                node: "n1".into(),
                path: "/p".into(),
                archive: "x1".into(),
                holder: "n2".into(),
                bytes: 1,
            }),
            e(Event::Pruned { node: "n1".into(), path: "/p".into(), archive: "x1".into(), holder: "n1".into() }),
        ]);
        let cat = s.catalog("n1", "/p");
        assert_eq!(cat.len(), 1);
        assert_eq!(cat[0].holders, BTreeSet::from(["n2".to_string()]));
        assert_eq!((cat[0].size, cat[0].files, cat[0].warnings), (10, 2, 1));
        assert!(s.series_kept_by("n2").contains(&("n1".to_string(), "/p".to_string())));
        assert!(s.series_kept_by("n3").is_empty());
    }

    #[test]
    fn a_holder_s_word_alone_lists_no_archive_of_another_node_s_series() {
        let mut e = from_n1();
        let copy = |archive: &str, holder: &str| Event::Replicated {
            node: "n1".into(),
            path: "/p".into(),
            archive: archive.into(),
            holder: holder.into(),
            bytes: 1,
        };
        // n3 says it keeps "z9", newer than anything n1 made: nothing lists it.
        let mut s = fold(&[e(copy("z9", "n3")), e(copy("x1", "n2"))]);
        assert!(s.catalog("n1", "/p").is_empty());
        // n1's own word that it keeps x1 (its `finished` lost, seed 1) lists it,
        // with n2; z9 stays unlisted.
        let mut s = fold(&[e(copy("z9", "n3")), e(copy("x1", "n2")), e(copy("x1", "n1"))]);
        let cat = s.catalog("n1", "/p");
        assert_eq!(cat.iter().map(|a| a.id.as_str()).collect::<Vec<_>>(), ["x1"]);
        assert_eq!(cat[0].holders, BTreeSet::from(["n1".to_string(), "n2".to_string()]));
    }
}
