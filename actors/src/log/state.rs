//! The log as a mergeable set of entries, and the views folded from it.
//!
//! Merge laws (tested below with random entry sets and orders): merging is
//! set union on (origin, seq), so it is
//! - idempotent: merging an entry twice changes nothing,
//! - commutative and associative: any delivery order, any grouping, gives
//!   the same log — and so the same version vector and the same views.
//!
//! Views are folds over the entries in HLC order, so "last writer wins" is
//! decided by the same total order on every node.

use std::collections::{BTreeMap, BTreeSet};

use super::entry::{Entry, Event};
use super::hlc::Hlc;

/// For each origin, the highest seq such that every seq up to it is held.
pub type VersionVector = BTreeMap<String, u64>;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Log {
    entries: BTreeMap<(String, u64), Entry>,
    contiguous: VersionVector,
    /// The ids in hybrid-time order, kept as entries arrive, so that views
    /// do not sort the whole log each time.
    order: std::collections::BTreeSet<(Hlc, String, u64)>,
}

impl Log {
    pub fn new() -> Self {
        Log::default()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Adds an entry; `false` if it was already there (entries are immutable:
    /// the first copy of an id is kept).
    pub fn insert(&mut self, e: Entry) -> bool {
        let key = (e.origin.clone(), e.seq);
        if self.entries.contains_key(&key) || e.seq == 0 {
            return false;
        }
        let origin = e.origin.clone();
        self.order.insert((e.time.clone(), e.origin.clone(), e.seq));
        self.entries.insert(key, e);
        let c = self.contiguous.entry(origin.clone()).or_insert(0);
        while self.entries.contains_key(&(origin.clone(), *c + 1)) {
            *c += 1;
        }
        true
    }

    /// Merges every entry of `other` into this log.
    pub fn merge(&mut self, other: &Log) {
        for e in other.entries.values() {
            self.insert(e.clone());
        }
    }

    pub fn version_vector(&self) -> VersionVector {
        self.contiguous.iter().filter(|(_, s)| **s > 0).map(|(o, s)| (o.clone(), *s)).collect()
    }

    /// The next seq a writer with this origin should use.
    pub fn next_seq(&self, origin: &str) -> u64 {
        self.entries
            .range((origin.to_string(), 0)..=(origin.to_string(), u64::MAX))
            .next_back()
            .map(|(k, _)| k.1 + 1)
            .unwrap_or(1)
    }

    /// Entries that a holder of `vv` lacks, in (origin, seq) order, at most
    /// `limit`; and whether more remain.
    pub fn missing_for(&self, vv: &VersionVector, limit: usize) -> (Vec<Entry>, bool) {
        let mut out = Vec::new();
        for ((origin, seq), e) in &self.entries {
            if *seq > vv.get(origin).copied().unwrap_or(0) {
                if out.len() == limit {
                    return (out, true);
                }
                out.push(e.clone());
            }
        }
        (out, false)
    }

    /// Every entry, ordered by hybrid time.
    pub fn by_time(&self) -> Vec<&Entry> {
        self.order.iter().filter_map(|(_, origin, seq)| self.entries.get(&(origin.clone(), *seq))).collect()
    }

    pub fn get(&self, origin: &str, seq: u64) -> Option<&Entry> {
        self.entries.get(&(origin.to_string(), seq))
    }
}

/// One archive of a (node, path) as the log knows it: made by a `finished`
/// run, copied by `replicated` and `repaired`, dropped by `pruned`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CatalogArchive {
    pub id: String,
    /// When the run that made it finished (`None` until that entry arrives).
    pub created: Option<Hlc>,
    pub size: u64,
    pub files: u64,
    pub warnings: u64,
    /// Names of the nodes that keep a complete copy (the origin included).
    pub holders: BTreeSet<String>,
}

/// The archives of (node, path) that some node still keeps, newest first.
pub fn catalog(log: &Log, node: &str, path: &str) -> Vec<CatalogArchive> {
    catalogs_where(log, |n, p| n == node && p == path).remove(&(node.to_string(), path.to_string())).unwrap_or_default()
}

/// [`catalog`] of every series, by (node, path).
pub fn catalogs(log: &Log) -> BTreeMap<(String, String), Vec<CatalogArchive>> {
    catalogs_where(log, |_, _| true)
}

fn catalogs_where(log: &Log, want: impl Fn(&str, &str) -> bool) -> BTreeMap<(String, String), Vec<CatalogArchive>> {
    let mut series: BTreeMap<(String, String), BTreeMap<String, CatalogArchive>> = BTreeMap::new();
    for e in log.by_time() {
        let Some(path) = e.event.path() else { continue };
        if !matches!(
            e.event,
            Event::Finished { .. } | Event::Replicated { .. } | Event::Repaired { .. } | Event::Pruned { .. }
        ) || !want(e.event.node(), path)
        {
            continue;
        }
        let by_id = series.entry((e.event.node().to_string(), path.to_string())).or_default();
        match &e.event {
            Event::Finished { archive, .. } if archive.is_empty() => {}
            Event::Finished { archive, size, files, warnings, node, .. } => {
                let a = by_id
                    .entry(archive.clone())
                    .or_insert_with(|| CatalogArchive { id: archive.clone(), ..Default::default() });
                a.created = Some(e.time.clone());
                a.size = *size;
                a.files = *files;
                a.warnings = warnings.len() as u64;
                a.holders.insert(node.clone());
            }
            Event::Replicated { archive, holder, .. } | Event::Repaired { archive, holder, .. } => {
                by_id
                    .entry(archive.clone())
                    .or_insert_with(|| CatalogArchive { id: archive.clone(), ..Default::default() })
                    .holders
                    .insert(holder.clone());
            }
            Event::Pruned { archive, holder, .. } => {
                if let Some(a) = by_id.get_mut(archive) {
                    a.holders.remove(holder);
                }
            }
            _ => {}
        }
    }
    series
        .into_iter()
        .map(|(k, by_id)| {
            let mut out: Vec<CatalogArchive> = by_id.into_values().filter(|a| !a.holders.is_empty()).collect();
            // Archive ids begin with their UTC creation time: newest first.
            out.sort_by(|a, b| b.id.cmp(&a.id));
            (k, out)
        })
        .filter(|(_, v)| !v.is_empty())
        .collect()
}

/// The outcome of a job's last run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LastRun {
    /// `finished`, `unchanged` or `failed`.
    pub result: &'static str,
    pub time: Hlc,
    pub archive: Option<String>,
    pub error: Option<String>,
}

/// A job as folded from the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobView {
    pub node: String,
    pub path: String,
    pub every_min: u64,
    pub excludes: Vec<String>,
    /// The node's scheduled backups are paused.
    pub paused: bool,
    pub last: Option<LastRun>,
    pub last_success: Option<Hlc>,
    /// When its last run started (scheduling counts from here).
    pub last_started: Option<Hlc>,
    /// When it was (last) registered.
    pub registered_at: Hlc,
    /// Size of the newest archive a run made.
    pub last_size: Option<u64>,
    /// Warnings of the last run that stored an archive.
    pub last_warnings: Vec<String>,
    /// Source, hooks and notifications.
    pub spec: crate::jobs::plugin::JobSpec,
    /// What the last run's plugin or hooks reported.
    pub last_plugin: Option<crate::jobs::plugin::PluginReport>,
}

/// The registered jobs, by (node, path), with their settings (last writer
/// by HLC wins), pause state and last results.
pub fn jobs(log: &Log) -> Vec<JobView> {
    let mut jobs: BTreeMap<(String, String), (bool, JobView)> = BTreeMap::new();
    let mut paused: BTreeMap<String, bool> = BTreeMap::new();
    for e in log.by_time() {
        match &e.event {
            Event::Registered { node, path, every_min, excludes, spec } => {
                let slot = jobs.entry((node.clone(), path.clone())).or_insert_with(|| {
                    (
                        true,
                        JobView {
                            node: node.clone(),
                            path: path.clone(),
                            every_min: *every_min,
                            excludes: excludes.clone(),
                            paused: false,
                            last: None,
                            last_success: None,
                            last_started: None,
                            registered_at: e.time.clone(),
                            last_size: None,
                            last_warnings: Vec::new(),
                            spec: spec.clone(),
                            last_plugin: None,
                        },
                    )
                });
                if !slot.0 {
                    slot.1.registered_at = e.time.clone();
                }
                slot.0 = true;
                slot.1.every_min = *every_min;
                slot.1.excludes = excludes.clone();
                slot.1.spec = spec.clone();
            }
            Event::Unregistered { node, path } => {
                if let Some(slot) = jobs.get_mut(&(node.clone(), path.clone())) {
                    slot.0 = false;
                }
            }
            Event::Paused { node } => {
                paused.insert(node.clone(), true);
            }
            Event::Resumed { node } => {
                paused.insert(node.clone(), false);
            }
            Event::Started { node, path, .. } => {
                if let Some(slot) = jobs.get_mut(&(node.clone(), path.clone())) {
                    slot.1.last_started = Some(e.time.clone());
                }
            }
            Event::Finished { node, path, archive, .. } | Event::Unchanged { node, path, archive, .. } => {
                if let Some(slot) = jobs.get_mut(&(node.clone(), path.clone())) {
                    if let Event::Finished { size, warnings, archive, .. } = &e.event {
                        if !archive.is_empty() {
                            slot.1.last_size = Some(*size);
                        }
                        slot.1.last_warnings = warnings.clone();
                    }
                    if let Event::Finished { plugin, .. } | Event::Unchanged { plugin, .. } = &e.event {
                        slot.1.last_plugin = plugin.clone();
                    }
                    slot.1.last = Some(LastRun {
                        result: e.event.kind(),
                        time: e.time.clone(),
                        archive: Some(archive.clone()),
                        error: None,
                    });
                    slot.1.last_success = Some(e.time.clone());
                }
            }
            Event::Failed { node, path, error, plugin, .. } => {
                if let Some(slot) = jobs.get_mut(&(node.clone(), path.clone())) {
                    slot.1.last_plugin = plugin.clone();
                    slot.1.last = Some(LastRun {
                        result: "failed",
                        time: e.time.clone(),
                        archive: None,
                        error: Some(error.clone()),
                    });
                }
            }
            _ => {}
        }
    }
    jobs.into_values()
        .filter(|(registered, _)| *registered)
        .map(|(_, mut j)| {
            j.paused = paused.get(&j.node).copied().unwrap_or(false);
            j
        })
        .collect()
}

/// A job's state as a person reads it: `paused`, `failing` (its last run
/// failed), `stale` (no success for twice its period), `pending` (never
/// run yet) or `ok`.
pub fn job_state(j: &JobView, now_ms: i64) -> &'static str {
    let period = j.every_min as i64 * crate::jobs::minute_ms();
    let since_success = now_ms - j.last_success.as_ref().map(|t| t.wall_ms).unwrap_or(j.registered_at.wall_ms);
    match &j.last {
        _ if j.paused => "paused",
        Some(l) if l.result == "failed" => "failing",
        _ if since_success > 2 * period => "stale",
        None => "pending",
        Some(_) => "ok",
    }
}

/// The last notification sent for each job: `failure`, `stale` or `recovery`.
pub fn notified(log: &Log) -> BTreeMap<(String, String), String> {
    let mut out = BTreeMap::new();
    for e in log.by_time() {
        if let Event::Notified { node, path, event, .. } = &e.event {
            out.insert((node.clone(), path.clone()), event.clone());
        }
    }
    out
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

    /// A random history written by 3 origins with their own clocks.
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
            let event = match rng.below(6) {
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
                    archive: format!("a{i}"),
                    size: 1,
                    files: 1,
                    duration_ms: 1,
                    warnings: vec![],
                    request: None,
                    plugin: None,
                },
                _ => Event::Failed { node, path, error: format!("e{i}"), duration_ms: 1, request: None, plugin: None },
            };
            // Clocks skewed by origin, with some drift.
            let now = 1_000 + i as i64 * 10 + o as i64 * 500 - rng.below(300) as i64;
            out.push(Entry {
                origin: origins[o].into(),
                origin_name: origins[o].to_lowercase(),
                seq: seqs[o],
                time: clocks[o].tick(now),
                event,
            });
        }
        out
    }

    fn build(entries: &[Entry]) -> Log {
        let mut l = Log::new();
        for e in entries {
            l.insert(e.clone());
        }
        l
    }

    fn shuffled(entries: &[Entry], rng: &mut Rng) -> Vec<Entry> {
        let mut v = entries.to_vec();
        for i in (1..v.len()).rev() {
            v.swap(i, rng.below(i as u64 + 1) as usize);
        }
        v
    }

    #[test]
    fn any_delivery_order_gives_the_same_state() {
        for seed in 1..40u64 {
            let h = history(seed, 60);
            let reference = build(&h);
            let mut rng = Rng(seed * 7919);
            for _ in 0..5 {
                let mut order = shuffled(&h, &mut rng);
                // Duplicates, as gossip and pulls deliver them.
                let dups: Vec<Entry> = order.iter().take(10).cloned().collect();
                order.extend(dups);
                let l = build(&order);
                assert_eq!(l, reference, "seed {seed}");
                assert_eq!(jobs(&l), jobs(&reference));
                assert_eq!(l.version_vector(), reference.version_vector());
            }
        }
    }

    #[test]
    fn merge_is_idempotent_commutative_and_associative() {
        for seed in 1..30u64 {
            let h = history(seed, 45);
            let mut rng = Rng(seed);
            let part = |rng: &mut Rng| build(&h.iter().filter(|_| rng.below(2) == 0).cloned().collect::<Vec<_>>());
            let (a, b, c) = (part(&mut rng), part(&mut rng), part(&mut rng));
            let merged = |x: &Log, y: &Log| {
                let mut m = x.clone();
                m.merge(y);
                m
            };
            assert_eq!(merged(&a, &a), a, "idempotent");
            assert_eq!(merged(&a, &b), merged(&b, &a), "commutative");
            assert_eq!(merged(&merged(&a, &b), &c), merged(&a, &merged(&b, &c)), "associative");
        }
    }

    #[test]
    fn pulling_by_version_vector_converges_in_bounded_batches() {
        let h = history(99, 200);
        let full = build(&h);
        let mut behind = build(&h[..30]);
        let mut rounds = 0;
        loop {
            let (batch, more) = full.missing_for(&behind.version_vector(), 25);
            assert!(batch.len() <= 25);
            for e in batch {
                behind.insert(e);
            }
            rounds += 1;
            if !more {
                break;
            }
            assert!(rounds < 50, "bounded");
        }
        assert_eq!(behind, full);
        assert!(full.missing_for(&full.version_vector(), 25).0.is_empty());
    }

    #[test]
    fn the_version_vector_counts_only_gapless_prefixes() {
        let h: Vec<Entry> = history(5, 30).into_iter().filter(|e| e.origin == "A").collect();
        assert!(h.len() >= 3);
        let mut l = Log::new();
        l.insert(h[0].clone());
        l.insert(h[2].clone());
        assert_eq!(l.version_vector().get("A"), Some(&1), "seq 3 is held but 2 is missing");
        l.insert(h[1].clone());
        assert_eq!(l.version_vector().get("A"), Some(&3));
        assert_eq!(l.next_seq("A"), 4);
        assert_eq!(l.next_seq("Z"), 1);
    }

    #[test]
    fn last_writer_by_hlc_wins_for_settings() {
        let mut clock_a = Clock::new("A");
        let mut clock_b = Clock::new("B");
        let reg = |origin: &str, seq, time, every| Entry {
            origin: origin.into(),
            origin_name: origin.into(),
            seq,
            time,
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
        // Delivered newest first: the view still takes the later write.
        let l = build(&[later, earlier]);
        assert_eq!(jobs(&l)[0].every_min, 30);
        let unreg = Entry {
            origin: "A".into(),
            origin_name: "a".into(),
            seq: 2,
            time: clock_a.tick(3_000),
            event: Event::Unregistered { node: "n1".into(), path: "/p".into() },
        };
        let mut l = l;
        l.insert(unreg);
        assert!(jobs(&l).is_empty());
    }
}
