//! The stat snapshot: recognising an unchanged tree without reading its
//! content.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use sha2::{Digest as _, Sha256};

use super::error::ArchiveError;
use super::reuse::{self};
use super::walk::{Excludes, Walked, Walker};
use crate::hash::Digest;

/// Metadata snapshot of a tree: equal snapshots (and not racy) mean the
/// tree is unchanged without reading a byte of content. A run that keeps
/// records does not digest one (the next run compares against the
/// records): its snapshot is marked racy, a fallback never trusted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StatSnapshot {
    /// SHA-256 over (path, type and mode, size, mtime, ctime, inode, owner, link count) of every entry.
    pub digest: Digest,
    /// Some entry changed within the clock granularity of the scan (or a
    /// directory could not be listed): the snapshot must not be trusted.
    pub racy: bool,
    pub entries: u64,
}

/// Walks `root` without reading any content: the [`StatSnapshot`] that
/// [`create`] would record for it now.
pub fn scan(root: &Path, excludes: &[String]) -> Result<StatSnapshot, ArchiveError> {
    let mut walker = Walker::new(root, Excludes::new(excludes)?)?;
    let mut acc = SnapshotAcc::new(true);
    for item in walker.by_ref() {
        acc.add(&item);
    }
    Ok(acc.finish(!walker.warnings.is_empty()))
}

pub(crate) struct SnapshotAcc {
    /// None when the run keeps records: the next run compares against
    /// those, and the snapshot is only a fallback for a run without them.
    hasher: Option<Sha256>,
    racy: bool,
    entries: u64,
    /// Anything changed at or after this instant (ns since the epoch) may
    /// change again within the same timestamp: the snapshot cannot vouch for it.
    pub(crate) racy_after: i128,
}

impl SnapshotAcc {
    /// `hash`: whether to digest the entries (see [`StatSnapshot`]).
    pub(crate) fn new(hash: bool) -> Self {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as i128).unwrap_or(0);
        SnapshotAcc { hasher: hash.then(Sha256::new), racy: false, entries: 0, racy_after: now - reuse::RACY_WINDOW_NS }
    }
    pub(crate) fn add(&mut self, item: &Walked) {
        let m = &item.meta;
        if reuse::is_racy(m, self.racy_after) {
            self.racy = true;
        }
        self.entries += 1;
        let Some(hasher) = &mut self.hasher else {
            return;
        };
        hasher.update((item.rel.len() as u64).to_le_bytes());
        hasher.update(&item.rel);
        for v in [
            u64::from(m.mode),
            m.size,
            m.mtime as u64,
            m.mtime_nsec as u64,
            m.ctime as u64,
            m.ctime_nsec as u64,
            m.ino,
            u64::from(m.uid),
            u64::from(m.gid),
            m.nlink,
        ] {
            hasher.update(v.to_le_bytes());
        }
    }
    /// The snapshot; one not digested is marked racy, never to be trusted.
    pub(crate) fn finish(self, walk_had_warnings: bool) -> StatSnapshot {
        let hashed = self.hasher.is_some();
        StatSnapshot {
            digest: self.hasher.map(Digest::from_hasher).unwrap_or_default(),
            racy: self.racy || walk_had_warnings || !hashed,
            entries: self.entries,
        }
    }
}
