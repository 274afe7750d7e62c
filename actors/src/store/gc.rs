//! Retention on a store and collection of the members no manifest uses.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::{self};
use std::path::Path;

pub use error::StoreError;

use crate::archive::manifest::Manifest;
use crate::hash::Digest;

use super::member_list::*;
use super::*;

/// How often retention sweeps the whole store rather than the removed
/// archives' members only: what else is there (a crash between staging
/// and commit leaves members no archive uses) is found within a day.
const FULL_GC_EVERY_MS: i64 = 24 * 3600 * 1000;

impl Store {
    /// Keeps the archives of (node, path) that `retention` keeps, then
    /// frees members no remaining manifest uses.
    pub fn retain(&self, node: &str, path: &str, retention: Retention) -> Result<RetentionReport, StoreError> {
        let mut report = RetentionReport::default();
        let all = self.list(node, path)?;
        let now = self.now_ms();
        // Visible: the newest `keep` (and those stored `within`) of those
        // not hidden yet; a hidden archive stays hidden until it goes.
        let shown: Vec<ArchiveSummary> = all.iter().filter(|a| !a.hidden).cloned().collect();
        let visible: HashSet<String> = retention.visible(&shown, now).into_iter().map(|a| a.id.clone()).collect();
        // Out of the visible ones but within the grace period: hidden, kept whole.
        for a in shown.iter().filter(|a| !visible.contains(&a.id) && retention.in_grace(a, now)) {
            self.kv.put(ARCHIVES, &archive_key(a), &cbor(&ArchiveSummary { hidden: true, ..a.clone() }))?;
            report.removed.push(a.id.clone());
        }
        let kept: HashSet<&str> = all
            .iter()
            .filter(|a| visible.contains(&a.id) || retention.in_grace(a, now))
            .map(|a| a.id.as_str())
            .collect();
        // What the removed archives used, the only members they can free
        // (None: a list could not be read; then the whole store is swept).
        let mut candidates = Some(DigestSet::default());
        for old in all.iter().filter(|a| !kept.contains(a.id.as_str())) {
            match self.members_of(old) {
                Ok(used) => {
                    if let Some(c) = candidates.as_mut() {
                        c.extend(used);
                    }
                }
                Err(e) => {
                    tracing::warn!("cannot read what archive {} uses ({e}); sweeping the whole store", old.id);
                    candidates = None;
                }
            }
            let p = self.manifest_path(node, path, &old.id)?;
            match fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(StoreError::io(&p, e)),
            }
            let _ = fs::remove_file(p.with_extension(MEMBER_LIST_EXT));
            if let Some(dir) = p.parent() {
                let _ = File::open(dir).and_then(|d| d.sync_all());
            }
            self.kv.delete(ARCHIVES, &archive_key(old))?;
            if !old.hidden {
                report.removed.push(old.id.clone());
            }
            report.deleted.push(old.id.clone());
        }
        if !report.deleted.is_empty() {
            let last_full = self
                .kv
                .get(STORE_META, b"full-gc")?
                .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
                .map_or(0, i64::from_le_bytes);
            let (n, b) = match candidates {
                Some(candidates) if (last_full..last_full + FULL_GC_EVERY_MS).contains(&now) => {
                    self.collect(candidates)?
                }
                _ => {
                    let freed = self.gc()?;
                    self.kv.put(STORE_META, b"full-gc", &now.to_le_bytes())?;
                    freed
                }
            };
            report.freed_members = n;
            report.freed_bytes = b;
        }
        Ok(report)
    }

    /// Deletes the hidden archives whose grace period is over, in every
    /// series that has one (a holder that no longer receives a series
    /// retains it on no commit). How many went.
    pub fn expire_hidden(&self, retention: Retention) -> Result<usize, StoreError> {
        let series: std::collections::BTreeSet<(String, String)> =
            self.list_all()?.into_iter().filter(|a| a.hidden).map(|a| (a.node, a.path)).collect();
        let mut gone = 0;
        for (node, path) in series {
            gone += self.retain(&node, &path, retention)?.deleted.len();
        }
        Ok(gone)
    }

    /// The members archive `s` uses: from the member list written beside
    /// its manifest (checked whole by its digest), else from the manifest
    /// itself, whose list is then written again. A collection reads
    /// every archive's list: a list is 32 bytes a member, its manifest
    /// also every file's record, and a signature to check.
    pub(crate) fn members_of(&self, s: &ArchiveSummary) -> Result<Vec<Digest>, StoreError> {
        let p = self.manifest_path(&s.node, &s.path, &s.id)?;
        if let Some(list) = fs::read(p.with_extension(MEMBER_LIST_EXT)).ok().and_then(|b| decode_member_list(&b)) {
            return Ok(list);
        }
        let m = self.manifest(&s.node, &s.path, Some(&s.id))?;
        self.write_member_list(&p, &m);
        Ok(m.digests().collect())
    }

    /// Writes the member list of `m`, whose manifest is at `manifest`. A
    /// list is a cache: one that cannot be written is read from the manifest.
    pub(crate) fn write_member_list(&self, manifest: &Path, m: &Manifest) {
        let p = manifest.with_extension(MEMBER_LIST_EXT);
        // Every object (an encrypted archive's keyframes and file table
        // too): what is listed is kept.
        let objects: Vec<Digest> = m.digests().collect();
        if let Err(e) = write_atomic(&p, &encode_member_list(objects.iter())) {
            tracing::warn!("cannot write {}: {e}; collections read the manifest instead", p.display());
        }
    }

    /// Deletes those of `candidates` that no archive uses and nothing
    /// pins: the collection after archives were removed, which looks at
    /// their members only, not at every file of the store ([`Store::gc`]
    /// also finds members nothing ever used, left by a crash).
    /// Returns (members, bytes) freed.
    pub(crate) fn collect(&self, mut candidates: DigestSet) -> Result<(u64, u64), StoreError> {
        let _guard = self.gc_lock.lock().unwrap_or_else(|e| e.into_inner());
        for s in self.list_all()? {
            if candidates.is_empty() {
                break;
            }
            for d in self.members_of(&s)? {
                candidates.remove(&d);
            }
        }
        let (mut count, mut bytes) = (0u64, 0u64);
        for d in candidates {
            if let Some(len) = self.remove_unused(&d) {
                count += 1;
                bytes += len;
            }
        }
        Ok((count, bytes))
    }

    /// Removes member `d`, used by no archive, unless a transaction pins
    /// it or a peer is sending it; its length if it was removed.
    pub(crate) fn remove_unused(&self, d: &Digest) -> Option<u64> {
        // Under the pin and hold locks: a writer pins or holds a member,
        // then looks for it; so either it sees the member gone, or this
        // sees it held.
        let pins = self.pins.lock().unwrap_or_else(|e| e.into_inner());
        if pins.contains_key(d) {
            return None;
        }
        let sets: Vec<_> =
            self.held.lock().unwrap_or_else(|e| e.into_inner()).iter().filter_map(|w| w.upgrade()).collect();
        let held: Vec<_> = sets.iter().map(|s| s.lock().unwrap_or_else(|e| e.into_inner())).collect();
        if held.iter().any(|h| h.contains(d)) {
            return None;
        }
        let inbound = self.inbound.lock().unwrap_or_else(|e| e.into_inner());
        if inbound.get(d).is_some_and(|t| t.elapsed() < INBOUND_GRACE) {
            return None;
        }
        let p = self.member_path(d);
        let len = fs::symlink_metadata(&p).map(|m| m.len()).ok()?;
        fs::remove_file(&p).ok()?;
        let _ = self.kv.delete(BASES, &d.0);
        drop((inbound, held, pins));
        Some(len)
    }

    /// Deletes members that no manifest references and no transaction pins.
    /// Returns (members, bytes) freed.
    pub fn gc(&self) -> Result<(u64, u64), StoreError> {
        let _guard = self.gc_lock.lock().unwrap_or_else(|e| e.into_inner());
        let mut used = DigestSet::default();
        for s in self.list_all()? {
            used.extend(self.members_of(&s)?);
        }
        let (mut count, mut bytes) = (0u64, 0u64);
        let segments = self.root.join("segments");
        for dir in fs::read_dir(&segments).map_err(|e| StoreError::io(&segments, e))?.flatten() {
            for f in fs::read_dir(dir.path()).map_err(|e| StoreError::io(&dir.path(), e))?.flatten() {
                let name = f.file_name();
                let Some(d) = name.to_str().and_then(|n| n.strip_suffix(".gz")).and_then(Digest::from_hex) else {
                    continue;
                };
                if used.contains(&d) {
                    continue;
                }
                if let Some(len) = self.remove_unused(&d) {
                    count += 1;
                    bytes += len;
                }
            }
        }
        Ok((count, bytes))
    }
}
