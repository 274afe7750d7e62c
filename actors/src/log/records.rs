//! The records of the mesh state ([`RecordKey`] → [`Record`]), each a
//! small CRDT made of [`super::crdt`]'s registers, and the records an
//! entry writes ([`records_of`]).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::crdt::{cbor, join_max, join_reg, Lww, Own, Stamp};
use super::entry::{Entry, Event};
use super::hlc::Hlc;
use super::job_spec::{JobSpec, PluginReport};
use super::recent::Recent;
use crate::hash::Digest;
use crate::seal::Seal;

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

const _: () = assert!(BUCKETS <= u16::MAX as usize, "bucket numbers travel as u16");

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

pub use super::recent::RunResult;

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
    /// How the runs before it ended, and when (as its entry said).
    #[serde(default, skip_serializing_if = "Recent::is_empty")]
    pub recent: Recent,
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
    pub(crate) fn join(&mut self, other: &ArchiveRec) -> bool {
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
    pub(crate) fn join(&mut self, other: &Series) -> bool {
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
    pub(crate) fn join(&mut self, other: &OriginRec) -> bool {
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

/// The records entry `e` writes, each holding only what the entry says.
pub(crate) fn records_of(e: &Entry) -> Vec<(RecordKey, Record)> {
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
    let recent = e.event.run().map(|(_, r)| r.normalised()).unwrap_or_default();
    let run =
        |result: RunResult, archive: Option<&String>, error: Option<&String>, plugin: &Option<PluginReport>| Own {
            at: t.clone(),
            value: RunRec { result, archive: archive.cloned(), error: error.cloned(), plugin: plugin.clone(), recent },
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

/// Warnings a series record keeps of a run (the entry in the history keeps
/// them all): a tree with thousands of unreadable files must not make one
/// record too large to travel in an anti-entropy answer.
pub const WARNINGS_KEPT: usize = 50;

pub(crate) fn capped_warnings(all: &[String]) -> Vec<String> {
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
