//! Execution history: the entries themselves, kept where they belong.
//!
//! Every entry reaches every node and is folded into the mesh state
//! (`super::mesh`); the entry is then kept
//! - durably, on disk, by the nodes that *keep* its series: the node that
//!   wrote it, the node the series belongs to, and the holders of the
//!   series' archives (so the record survives the node that ran the job),
//!   and
//! - in memory, by every node, in a window of the newest [`WINDOW`]
//!   entries (so recent activity and request outcomes answer at once).
//!
//! A node's history on disk so grows with the series it runs or holds, not
//! with the mesh. Reading older history asks a keeper, page by page
//! ([`Page`], newest last, with a cursor to go further back).
//!
//! On disk (`DATA_DIR/history/`, see [`super::runs`]) each entry is a
//! record keyed by its time key: the entry's HLC (wall ms with the sign bit
//! flipped, logical, both big-endian), origin and seq, so keys sort in
//! hybrid-time order; it is tagged with its series (16 bytes of SHA-256 of
//! node and path) so one series' pages skip what is not theirs; its value
//! is a format byte, then the entry in CBOR.

use std::collections::{HashSet, VecDeque};
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::entry::Entry;
use super::history_files::{HistoryFiles, HistoryItem, SeriesTag};
use crate::hash::Digest;
use crate::store::{KvStore, StoreError};

/// The embedded store's trees that held the history before it moved to
/// files (time key → entry; two indexes), migrated at start-up.
const OLD_TREES: [&str; 3] = ["history", "history_series", "history_ids"];
/// Format of a stored entry record.
const RECORD_VERSION: u8 = 1;
/// Entries every node keeps in memory, whatever their series.
pub const WINDOW: usize = 2_000;
/// The most entries one page answers.
pub const PAGE_MAX: usize = 1_000;
/// A page stops growing past this many bytes of entries (the ctl message
/// limit is 4 MiB).
pub const PAGE_BYTES: usize = 2 << 20;
/// Entries a page without a series filter reads at most looking for
/// matches: a query that matches little answers a short page with `more`
/// rather than reading the whole history at once.
const SCAN_MAX: usize = 20_000;

/// The sort key of an entry: hybrid time, then origin and seq.
pub fn time_key(e: &Entry) -> Vec<u8> {
    let mut k = Vec::with_capacity(24 + e.origin.len());
    k.extend_from_slice(&((e.time.wall_ms as u64) ^ (1 << 63)).to_be_bytes());
    k.extend_from_slice(&e.time.logical.to_be_bytes());
    k.extend_from_slice(e.origin.as_bytes());
    k.push(0);
    k.extend_from_slice(&e.seq.to_be_bytes());
    k
}

fn series_prefix(node: &str, path: &str) -> SeriesTag {
    let mut v = node.as_bytes().to_vec();
    v.push(0);
    v.extend_from_slice(path.as_bytes());
    let mut out = [0u8; 16];
    out.copy_from_slice(&Digest::of(&v).0[..16]);
    out
}

fn series_of(e: &Entry) -> Option<SeriesTag> {
    e.event.path().map(|p| series_prefix(e.event.node(), p))
}

fn encode(e: &Entry) -> Result<Vec<u8>, StoreError> {
    let mut v = vec![RECORD_VERSION];
    ciborium::into_writer(e, &mut v)
        .map_err(|err| StoreError::Index { reason: format!("encoding a log entry: {err}") })?;
    Ok(v)
}

/// Decodes a stored entry record.
pub fn decode(v: &[u8]) -> Result<Entry, StoreError> {
    match v.split_first() {
        Some((&RECORD_VERSION, body)) => ciborium::from_reader(body)
            .map_err(|err| StoreError::Index { reason: format!("a stored log entry is corrupt: {err}") }),
        Some((other, _)) => Err(StoreError::Index {
            reason: format!("log record format {other} is newer than this backmesh understands; upgrade backmesh"),
        }),
        None => Err(StoreError::Index { reason: "an empty log record".into() }),
    }
}

/// Which entries a page holds.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryQuery {
    /// Entries about node `node` (or written by it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Entries about `path`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Only entries older than this cursor (from an earlier page).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<String>,
    pub limit: usize,
}

impl HistoryQuery {
    pub fn matches(&self, e: &Entry) -> bool {
        self.node.as_deref().is_none_or(|n| e.event.node() == n || e.origin_name == n)
            && self.path.as_deref().is_none_or(|p| e.event.path() == Some(p))
    }

    fn before_key(&self) -> Option<Vec<u8>> {
        self.before.as_deref().and_then(|c| hex::decode(c).ok())
    }
}

/// One page of history: entries newest last; `more` when older ones
/// remain, to be asked for with `before: cursor`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Page {
    pub entries: Vec<Entry>,
    pub more: bool,
    /// The cursor of the oldest entry in the page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
}

impl Page {
    /// Drops the oldest entries until the page's entries encode within
    /// `bytes` (keeping at least one); `more` and the cursor follow.
    pub fn fit(&mut self, bytes: usize) {
        let mut total = 0;
        let mut keep = 0;
        for e in self.entries.iter().rev() {
            let mut buf = Vec::new();
            let _ = ciborium::into_writer(e, &mut buf);
            total += buf.len();
            if total > bytes && keep > 0 {
                break;
            }
            keep += 1;
        }
        if keep < self.entries.len() {
            self.entries.drain(..self.entries.len() - keep);
            self.more = true;
            self.cursor = self.entries.first().map(|e| hex::encode(time_key(e)));
        }
    }

    /// Only the entries older than cursor `before` (a peer may ignore it).
    pub fn older_than(mut self, before: Option<&str>) -> Page {
        if let Some(b) = before.and_then(|c| hex::decode(c).ok()) {
            self.entries.retain(|e| time_key(e) < b);
        }
        self
    }

    /// The newest `limit` entries of several pages together, newest last,
    /// each entry once. A page with `more` vouches only for what is at or
    /// after its cursor: entries older than the newest such cursor are left
    /// for the next page (else the entries that page still holds between
    /// its cursor and theirs would be skipped for good).
    pub fn combine(pages: Vec<Page>, limit: usize) -> Page {
        let floor: Option<Vec<u8>> =
            pages.iter().filter(|p| p.more).filter_map(|p| p.cursor.as_deref().and_then(|c| hex::decode(c).ok())).max();
        let mut more = pages.iter().any(|p| p.more);
        let mut all: Vec<(Vec<u8>, Entry)> = Vec::new();
        let mut seen = HashSet::new();
        for p in pages {
            for e in p.entries {
                let k = time_key(&e);
                if floor.as_ref().is_none_or(|f| k >= *f) && seen.insert((e.origin.clone(), e.seq)) {
                    all.push((k, e));
                }
            }
        }
        all.sort_by(|a, b| a.0.cmp(&b.0));
        let cut = all.len() > limit;
        if cut {
            all.drain(..all.len() - limit);
            more = true;
        }
        let cursor = match (&floor, all.first()) {
            (Some(f), Some((k, _))) if !cut && k > f => Some(hex::encode(f)),
            (_, Some((k, _))) => Some(hex::encode(k)),
            (Some(f), None) => Some(hex::encode(f)),
            (None, None) => None,
        };
        Page { entries: all.into_iter().map(|(_, e)| e).collect(), more, cursor }
    }
}

/// This node's history: the durable part (files, [`HistoryFiles`]) and the recent
/// window.
pub struct History {
    runs: HistoryFiles,
    window: VecDeque<Entry>,
    in_window: HashSet<(String, u64)>,
}

impl History {
    /// Opens the history kept in `dir` (created if missing).
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        Ok(History { runs: HistoryFiles::open(dir)?, window: VecDeque::new(), in_window: HashSet::new() })
    }

    /// Moves the history of an older data directory out of the embedded
    /// store (where sled held much of it in memory) into the files, then
    /// drops those trees. Idempotent: safe to run again after a crash.
    pub fn migrate_from(&mut self, kv: &dyn KvStore) -> Result<u64, StoreError> {
        let mut moved = 0;
        let mut upper: Option<Vec<u8>> = None;
        loop {
            let chunk = kv.scan_prefix_rev(OLD_TREES[0], &[], upper.as_deref(), 4_096)?;
            for (k, v) in &chunk {
                moved += u64::from(self.store(&decode(v)?)?);
                upper = Some(k.clone());
            }
            if chunk.len() < 4_096 {
                break;
            }
        }
        self.sync()?;
        for tree in OLD_TREES {
            kv.drop_tree(tree)?;
        }
        kv.flush()?;
        Ok(moved)
    }

    /// Whether `e` is stored durably here.
    pub fn holds(&self, e: &Entry) -> Result<bool, StoreError> {
        self.runs.contains(&time_key(e), series_of(e).as_ref())
    }

    /// Stores `e` (idempotent): durable after [`History::sync`].
    pub fn store(&mut self, e: &Entry) -> Result<bool, StoreError> {
        self.runs.insert(HistoryItem { key: time_key(e), series: series_of(e), value: encode(e)? })
    }

    /// Makes every entry stored so far durable.
    pub fn sync(&mut self) -> Result<(), StoreError> {
        self.runs.sync()
    }

    /// Entries stored durably here.
    pub fn stored(&self) -> u64 {
        self.runs.len()
    }

    /// Puts `e` in the recent window (idempotent); the oldest falls out.
    pub fn remember(&mut self, e: &Entry) {
        if !self.in_window.insert((e.origin.clone(), e.seq)) {
            return;
        }
        self.window.push_back(e.clone());
        while self.window.len() > WINDOW {
            if let Some(old) = self.window.pop_front() {
                self.in_window.remove(&(old.origin, old.seq));
            }
        }
    }

    /// Entries in the recent window.
    pub fn window_len(&self) -> usize {
        self.window.len()
    }

    /// The highest seq of `origin` stored here (0 if none).
    pub fn max_seq(&self, origin: &str) -> u64 {
        self.runs.max_seq(origin)
    }

    /// The newest stored entries, at most `limit`, newest last (for the
    /// state to re-fold at start-up).
    pub fn newest(&self, limit: usize) -> Result<Vec<Entry>, StoreError> {
        let mut v = Vec::new();
        for item in self.runs.rev(None, None)?.take(limit) {
            v.push(decode(&item?.value)?);
        }
        v.reverse();
        Ok(v)
    }

    /// One page of what this node holds (durably and in its window).
    pub fn page(&self, q: &HistoryQuery) -> Result<Page, StoreError> {
        let limit = q.limit.clamp(1, PAGE_MAX);
        let before = q.before_key();
        let mut durable = Vec::new();
        let mut more = false;
        // With `more`: the oldest key this node has looked at, for the cursor.
        let mut floor: Option<Vec<u8>> = None;
        match (&q.node, &q.path) {
            (Some(node), Some(path)) => {
                let mut it = self.runs.rev(before.as_deref(), Some(series_prefix(node, path)))?;
                for item in it.by_ref().take(limit) {
                    let item = item?;
                    durable.push(decode(&item.value)?);
                    floor = Some(item.key);
                }
                more = it.next().transpose()?.is_some();
            }
            _ => {
                // Walk back in time until the page is full, or SCAN_MAX
                // entries were looked at.
                let mut looked_at: Option<Vec<u8>> = None;
                for (scanned, item) in self.runs.rev(before.as_deref(), None)?.enumerate() {
                    let item = item?;
                    if scanned == SCAN_MAX {
                        // Everything from the last one looked at on was.
                        more = true;
                        floor = looked_at;
                        break;
                    }
                    looked_at = Some(item.key.clone());
                    let e = decode(&item.value)?;
                    if q.matches(&e) {
                        if durable.len() == limit {
                            more = true;
                            break;
                        }
                        durable.push(e);
                        floor = Some(item.key);
                    }
                }
            }
        }
        durable.reverse();
        // The newest `limit` matches of the window, cloned alone: an
        // unfiltered page matches the whole window, and cloning all of it
        // per page was most of what a page cost.
        let mut matches: Vec<(Vec<u8>, &Entry)> = self
            .window
            .iter()
            .filter(|e| q.matches(e))
            .map(|e| (time_key(e), e))
            .filter(|(k, _)| before.as_ref().is_none_or(|b| k < b))
            .collect();
        // Cut, the window part is whole only down to its oldest kept entry,
        // which is its cursor (as for the durable part).
        let window_cut = matches.len() > limit;
        if window_cut {
            matches.select_nth_unstable_by(limit - 1, |a, b| b.0.cmp(&a.0));
            matches.truncate(limit);
        }
        let window_cursor = if window_cut { matches.iter().map(|(k, _)| k).min().map(hex::encode) } else { None };
        let window: Vec<Entry> = matches.into_iter().map(|(_, e)| e.clone()).collect();
        let cursor = if more { floor.map(hex::encode) } else { None };
        let mut page = Page::combine(
            vec![
                Page { entries: durable, more, cursor },
                Page { entries: window, more: window_cut, cursor: window_cursor },
            ],
            limit,
        );
        page.fit(PAGE_BYTES);
        Ok(page)
    }
}

#[cfg(test)]
mod tests {
    use super::super::entry::Event;
    use super::super::hlc::Clock;
    use super::*;
    use crate::seal::Seal;
    use crate::store::SledKv;

    fn open() -> (tempfile::TempDir, History) {
        let t = tempfile::tempdir().unwrap();
        let h = History::open(&t.path().join("history")).unwrap();
        (t, h)
    }

    fn entries(origin: &str, n: u64) -> Vec<Entry> {
        let mut c = Clock::new(origin);
        (1..=n)
            .map(|seq| Entry {
                origin: origin.into(),
                origin_name: "n1".into(),
                seq,
                time: c.tick(seq as i64 * 1000),
                sig: Seal::None,
                seals: Vec::new(),
                event: Event::Started { node: "n1".into(), path: format!("/p{}", seq % 3), request: None },
            })
            .collect()
    }

    /// `n` entries of origin P: the first `stored` on disk, the rest only
    /// in the recent window.
    fn stored_then_passed(n: u64, stored: usize) -> (tempfile::TempDir, History) {
        let (t, mut h) = open();
        let all = entries("P", n);
        for e in &all[..stored] {
            h.store(e).unwrap();
        }
        for e in &all[stored..] {
            h.remember(e);
        }
        (t, h)
    }

    /// Every seq `q` pages back through (at most 100 pages), oldest first;
    /// each page no larger than asked and newest last.
    fn walk(h: &History, mut q: HistoryQuery) -> Vec<u64> {
        let mut seen = Vec::new();
        for _ in 0..100 {
            let page = h.page(&q).unwrap();
            assert!(page.entries.len() <= q.limit);
            assert!(page.entries.windows(2).all(|w| w[0].time < w[1].time), "newest last");
            let mut seqs: Vec<u64> = page.entries.iter().map(|e| e.seq).collect();
            seqs.extend(seen);
            seen = seqs;
            if !page.more {
                break;
            }
            q.before = page.cursor;
        }
        seen
    }

    #[test]
    fn pages_walk_back_through_a_series_without_gaps_or_repeats() {
        let (_t, mut h) = open();
        for e in entries("P", 300) {
            assert!(h.store(&e).unwrap());
            assert!(!h.store(&e).unwrap(), "idempotent");
        }
        let seen =
            walk(&h, HistoryQuery { node: Some("n1".into()), path: Some("/p1".into()), before: None, limit: 30 });
        assert_eq!(seen, (1..=300).filter(|s| s % 3 == 1).collect::<Vec<_>>());
        assert_eq!(h.max_seq("P"), 300);
        assert_eq!(h.max_seq("Q"), 0);
    }

    #[test]
    fn an_entry_of_an_unknown_kind_is_stored_and_paged_with_its_series() {
        let (t, mut h) = open();
        let mut all = entries("P", 4);
        all.push(crate::log::entry::newer_entry("P", 5, "n1", "/p1"));
        for e in &all {
            assert!(h.store(e).unwrap());
        }
        h.sync().unwrap();
        drop(h);
        let h = History::open(&t.path().join("history")).unwrap();
        let q = HistoryQuery { node: Some("n1".into()), path: Some("/p1".into()), before: None, limit: 10 };
        let page = h.page(&q).unwrap();
        assert_eq!(page.entries.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![1, 4, 5]);
        assert_eq!(page.entries[2], all[4], "kept whole through the disk");
    }

    #[test]
    fn unfiltered_pages_and_the_window_combine() {
        // The first 20 stored; the rest only passed by: in the window, not on disk.
        let (_t, h) = stored_then_passed(50, 20);
        let page = h.page(&HistoryQuery { limit: 1000, ..Default::default() }).unwrap();
        assert_eq!(page.entries.len(), 50);
        assert!(!page.more);
        let page = h.page(&HistoryQuery { limit: 10, ..Default::default() }).unwrap();
        assert_eq!(page.entries.iter().map(|e| e.seq).collect::<Vec<_>>(), (41..=50).collect::<Vec<_>>());
        assert!(page.more);
        assert_eq!(h.newest(5).unwrap().iter().map(|e| e.seq).collect::<Vec<_>>(), (16..=20).collect::<Vec<_>>());
    }

    #[test]
    fn pages_walk_back_through_the_window_alone_without_gaps_or_repeats() {
        // Most only passed by, and the window has more than a page of them.
        let (_t, h) = stored_then_passed(50, 10);
        let seen = walk(&h, HistoryQuery { limit: 7, ..Default::default() });
        assert_eq!(seen, (1..=50).collect::<Vec<_>>());
    }

    #[test]
    fn a_page_fits_its_byte_budget_and_says_more() {
        let (_t, mut h) = open();
        for e in entries("P", 200) {
            h.store(&e).unwrap();
        }
        let mut page = h.page(&HistoryQuery { limit: 200, ..Default::default() }).unwrap();
        assert_eq!(page.entries.len(), 200);
        page.fit(2_000);
        assert!(page.more && page.entries.len() < 200 && !page.entries.is_empty());
        assert_eq!(page.entries.last().unwrap().seq, 200, "the newest are kept");
        let older = page.cursor.clone();
        let all = h.page(&HistoryQuery { limit: 1000, ..Default::default() }).unwrap();
        let filtered = all.older_than(older.as_deref());
        assert!(filtered.entries.iter().all(|e| e.seq < page.entries[0].seq));
    }

    #[test]
    fn pages_of_several_keepers_skip_nothing_when_one_was_cut_short() {
        // Keeper A holds entries 1..=100 but answered only its newest 30
        // (cut for size), keeper B holds the odd ones and answered them all.
        let all = entries("P", 100);
        let page_of = |es: Vec<Entry>, more: bool| Page {
            cursor: es.first().map(|e| hex::encode(time_key(e))),
            entries: es,
            more,
        };
        let a = page_of(all[70..].to_vec(), true);
        let b = page_of(all.iter().filter(|e| e.seq % 2 == 1).cloned().collect(), false);
        let first = Page::combine(vec![a, b], 1000);
        assert_eq!(first.entries.first().map(|e| e.seq), Some(71), "nothing older than A's cursor yet");
        assert!(first.more);
        // The next round, before that cursor, gets every older entry.
        let before = first.cursor.clone();
        let a2 = page_of(all[..70].to_vec(), false).older_than(before.as_deref());
        let b2 = page_of(all.iter().filter(|e| e.seq % 2 == 1).cloned().collect(), false).older_than(before.as_deref());
        let second = Page::combine(vec![a2, b2], 1000);
        let mut seqs: Vec<u64> = second.entries.iter().chain(&first.entries).map(|e| e.seq).collect();
        seqs.sort();
        assert_eq!(seqs, (1..=100).collect::<Vec<_>>(), "every entry once");
        assert!(!second.more);
    }

    #[test]
    fn a_sparse_filter_pages_back_through_a_long_history() {
        let (_t, mut h) = open();
        let mut c = Clock::new("P");
        // One entry about n9 in every 7,000; the rest about n1.
        for seq in 1..=50_000u64 {
            let node = if seq % 7_000 == 0 { "n9" } else { "n1" };
            let e = Entry {
                origin: "P".into(),
                origin_name: "p".into(),
                seq,
                time: c.tick(seq as i64),
                sig: Seal::None,
                seals: Vec::new(),
                event: Event::Paused { node: node.into() },
            };
            h.store(&e).unwrap();
        }
        let mut q = HistoryQuery { node: Some("n9".into()), limit: 100, ..Default::default() };
        let mut found = Vec::new();
        for _ in 0..20 {
            let page = h.page(&q).unwrap();
            found.extend(page.entries.iter().map(|e| e.seq));
            if !page.more {
                break;
            }
            assert!(page.cursor.is_some() && page.cursor != q.before, "every page goes further back");
            q.before = page.cursor;
        }
        found.sort();
        assert_eq!(found, (1..=7).map(|k| k * 7_000).collect::<Vec<_>>());
    }

    #[test]
    fn the_window_is_bounded() {
        let (_t, mut h) = open();
        for e in entries("P", WINDOW as u64 + 500) {
            h.remember(&e);
            h.remember(&e);
        }
        assert_eq!(h.window.len(), WINDOW);
        assert_eq!(h.in_window.len(), WINDOW);
    }

    #[test]
    fn a_history_kept_in_the_embedded_store_moves_to_files() {
        let t = tempfile::tempdir().unwrap();
        let kv = SledKv::open(&t.path().join("db")).unwrap();
        for e in entries("P", 5_000) {
            kv.put(OLD_TREES[0], &time_key(&e), &encode(&e).unwrap()).unwrap();
            kv.put(OLD_TREES[2], &e.seq.to_be_bytes(), &[]).unwrap();
        }
        let mut h = History::open(&t.path().join("history")).unwrap();
        assert_eq!(h.migrate_from(&kv).unwrap(), 5_000);
        assert_eq!(h.migrate_from(&kv).unwrap(), 0, "a second run finds nothing left");
        assert!(kv.scan_prefix(OLD_TREES[0], &[]).unwrap().is_empty());
        assert!(kv.scan_prefix(OLD_TREES[2], &[]).unwrap().is_empty());
        drop(h);
        let h = History::open(&t.path().join("history")).unwrap();
        assert_eq!(h.stored(), 5_000);
        assert_eq!(h.max_seq("P"), 5_000);
        let page =
            h.page(&HistoryQuery { node: Some("n1".into()), path: Some("/p2".into()), limit: 5, ..Default::default() });
        assert_eq!(
            page.unwrap().entries.iter().map(|e| e.seq).collect::<Vec<_>>(),
            vec![4_988, 4_991, 4_994, 4_997, 5_000]
        );
    }

    #[test]
    fn an_unknown_record_format_is_refused_by_name() {
        let err = decode(&[9, 1, 2]).unwrap_err();
        assert!(err.to_string().contains("upgrade"), "{err}");
    }
}
