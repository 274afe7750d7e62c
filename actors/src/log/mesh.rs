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

use backmesh_api::Notice;

use super::crdt::{cbor, join_in, Lww, Stamp};
use super::entry::{Entry, Event};
use super::hlc::Hlc;
use super::recent::{timeline, Recent};
use super::records::{JobReg, OriginRec, Record, RecordKey, RunResult, Series, SeriesKey, BUCKETS};
use super::signing::{
    keep_sealed, key_label, sealed_records_of, seals_mut, series_seals, slots, Checked, NodeKeys, Writer,
};
use super::views::{catalog_of, CatalogArchive, JobView, LastRun};
use crate::hash::Digest;
use crate::seal::{Seal, Signer};

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
            runs: last
                .map(|l| timeline(l.at.wall_ms, l.value.result, &l.value.recent))
                .unwrap_or_default()
                .into_iter()
                .filter_map(|(t, r)| Some((t, r?)))
                .collect(),
        }
    }

    /// The newest run of series (node, path): when it ended (wall clock,
    /// ms), how, and the runs before it.
    pub fn last_run(&self, node: &str, path: &str) -> Option<(i64, RunResult, Recent)> {
        let last = self.series.get(&(node.to_string(), path.to_string()))?.last.as_ref()?;
        Some((last.at.wall_ms, last.value.result, last.value.recent.clone()))
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

    /// The events that write node `my_name`'s job and pause records
    /// again as its own, for those another peer than `me` wrote (a
    /// version before mesh protocol 11 let any node write them; peers
    /// now take in only those the node itself sealed).
    pub fn adoptions(&self, me: &str, my_name: &str) -> Vec<Event> {
        let mut out: Vec<Event> = self
            .jobs
            .range((my_name.to_string(), String::new())..)
            .take_while(|((n, _), _)| n == my_name)
            .filter(|(_, r)| r.time.node != me)
            .map(|((node, path), r)| match r.value.registered {
                true => Event::Registered {
                    node: node.clone(),
                    path: path.clone(),
                    every_min: r.value.every_min,
                    excludes: r.value.excludes.clone(),
                    spec: r.value.spec.clone(),
                },
                false => Event::Unregistered { node: node.clone(), path: path.clone() },
            })
            .collect();
        if let Some(p) = self.paused.get(my_name).filter(|p| p.time.node != me) {
            let node = my_name.to_string();
            out.push(if p.value { Event::Paused { node } } else { Event::Resumed { node } });
        }
        out
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
                Writer::Peer(p) => crate::seal::key_of_peer(p),
                Writer::Node(n) => keys.key_of(n),
            };
            let by_former =
                |n: &str| keys.own_name() == Some(n) || keys.former_keys(n).iter().any(|k| k.verify(&s.msg, &sig.0));
            match public {
                Some(k) if k.verify(&s.msg, &sig.0) => {}
                // Sealed by the key the node had before it was bound again
                // (or by another key in this node's own name): not taken,
                // and no one blamed for passing it on.
                Some(_) if matches!(&s.writer, Writer::Node(n) if by_former(n)) => {
                    found.unproven += 1;
                    *s.sig = Seal::None;
                }
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

#[cfg(test)]
mod tests {
    use super::super::anti_entropy::*;
    use super::super::crdt::*;
    use super::super::entry::Event;
    use super::super::hlc::Clock;
    use super::super::records::*;
    use super::super::signing::*;
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
                    recent: Default::default(),
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
                5 => Event::Failed {
                    recent: Default::default(),
                    node,
                    path,
                    error: format!("e{i}"),
                    duration_ms: 1,
                    request,
                    plugin: None,
                },
                6 => Event::Replicated { node, path, archive, holder, bytes: 1 },
                7 => Event::Pruned { node, path, archive, holder },
                8 => Event::Started { node, path, request },
                9 => Event::Unchanged {
                    recent: Default::default(),
                    node,
                    path,
                    archive,
                    duration_ms: 1,
                    request,
                    plugin: None,
                },
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
                    recent: Default::default(),
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
                // A node's jobs and pause flag are its own to write.
                0 => Event::Registered { node: me, path, every_min: 5, excludes: vec![], spec: Default::default() },
                1 => Event::Paused { node: me },
                2 => Event::Finished {
                    recent: Default::default(),
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
                3 => Event::Failed {
                    recent: Default::default(),
                    node: me,
                    path,
                    error: format!("e{i}"),
                    duration_ms: 1,
                    request,
                    plugin: None,
                },
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
            value: RunRec {
                recent: Default::default(),
                result: RunResult::Failed,
                archive: None,
                error: Some("x".into()),
                plugin: None,
            },
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
            recent: Default::default(),
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
                recent: Default::default(),
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
                recent: Default::default(),
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
    fn a_node_adopts_its_own_jobs_that_another_node_wrote_and_only_those() {
        let at = |peer: &str, name: &str, seq: u64, ms: i64, event: Event| {
            Entry::new(peer.into(), name.into(), seq, Hlc { wall_ms: ms, logical: 0, node: peer.into() }, event)
        };
        let reg = |node: &str, path: &str| Event::Registered {
            node: node.into(),
            path: path.into(),
            every_min: 5,
            excludes: vec!["*.log".into()],
            spec: Default::default(),
        };
        let mut s = MeshState::new();
        // Written by peer pb (node b) before protocol 11: a's job and pause, b's own job.
        s.apply(&at("pb", "b", 1, 1_000, reg("a", "/srv")));
        s.apply(&at("pb", "b", 2, 1_001, Event::Paused { node: "a".into() }));
        s.apply(&at("pb", "b", 3, 1_002, reg("b", "/own")));
        s.apply(&at("pa", "a", 1, 1_003, reg("a", "/mine")));
        let adopt = s.adoptions("pa", "a");
        assert_eq!(adopt, vec![reg("a", "/srv"), Event::Paused { node: "a".into() }]);
        assert!(s.adoptions("pb", "b").is_empty(), "b wrote its own");
        for (i, e) in adopt.into_iter().enumerate() {
            s.apply(&at("pa", "a", 2 + i as u64, 2_000, e));
        }
        assert!(s.adoptions("pa", "a").is_empty(), "written again, they are a's");
        assert_eq!(s.jobs_of("a").len(), 2);
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
