//! Putting members and archives into the store: the transaction that
//! stages, fsyncs and renames members, then commits the manifest; and
//! the holds that keep members from collection while they are in use.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::{self};
use std::path::Path;
use std::sync::{Arc, Mutex};

pub use error::StoreError;

use crate::archive::manifest::{Manifest, MemberRef};
use crate::archive::restore::sync_fs;
use crate::archive::MemberSink;
use crate::hash::Digest;

use super::member_list::*;
use super::*;

/// Members a backup takes unread from earlier archives, kept from
/// retention and garbage collection until it is dropped.
pub struct Holds<'a> {
    _store: std::marker::PhantomData<&'a Store>,
    set: Arc<Mutex<DigestSet>>,
}

impl Holds<'_> {
    /// Holds `d` from collection. Whether the store still has it is the
    /// archive writer's to check ([`PutTxn`] does, as it receives it):
    /// off the thread that plans the archive.
    pub fn hold(&self, d: &Digest) {
        self.set.lock().unwrap_or_else(|e| e.into_inner()).insert(*d);
    }
}

/// The members of one archive being written. Dropped without
/// [`PutTxn::commit`], it leaves nothing behind.
pub struct PutTxn<'a> {
    store: &'a Store,
    dir: Option<tempfile::TempDir>,
    staged: DigestSet,
    pinned: Vec<Digest>,
    /// Members made again and pinned while in the store: commit need not
    /// look again.
    present: DigestSet,
    /// Every member received, in order, each staged or found in the store
    /// as it came: a manifest of exactly these needs no second look.
    seen: Vec<Digest>,
    /// Members taken unread that the store no longer has.
    lost: Vec<Digest>,
}

/// Up to this many new members a commit `fsync`s each; beyond, it
/// `syncfs`es the store's filesystem once.
const FSYNC_EACH_UP_TO: usize = 256;

/// How far a commit goes; tests stop early to simulate a crash.
#[doc(hidden)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum CommitStep {
    MembersPublished,
    ManifestWritten,
    Indexed,
}

impl PutTxn<'_> {
    fn staging(&self) -> &Path {
        self.dir.as_ref().map(|d| d.path()).unwrap_or(Path::new("/nonexistent"))
    }

    /// Members the archive took unread (each held by a [`Holds`]) that the
    /// store turned out not to have: lost since the last backup. Such an
    /// archive cannot be committed; made again with those members read
    /// afresh, it can.
    pub fn lost(&self) -> &[Digest] {
        &self.lost
    }

    /// Makes the staged members durable and moves them into place. A
    /// few members are synced one by one (with the directories they
    /// enter); many, by one `syncfs` of the store's filesystem, cheaper
    /// than thousands of `fsync`s but paying for whatever else is dirty.
    pub fn publish(&mut self) -> Result<(), StoreError> {
        let staging = self.staging().to_path_buf();
        if self.staged.is_empty() {
            return Ok(());
        }
        let each = self.staged.len() <= FSYNC_EACH_UP_TO;
        if each {
            for d in &self.staged {
                let p = staging.join(d.to_hex());
                File::open(&p).and_then(|f| f.sync_all()).map_err(|e| StoreError::io(&p, e))?;
            }
        } else {
            sync_fs(&staging).map_err(|e| StoreError::io(&staging, e))?;
        }
        let mut entered = BTreeSet::new();
        for d in self.staged.drain() {
            let from = staging.join(d.to_hex());
            let to = self.store.member_path(&d);
            if to.exists() {
                continue;
            }
            let parent = to.parent().unwrap_or(Path::new("."));
            fs::create_dir_all(parent).map_err(|e| StoreError::io(parent, e))?;
            fs::rename(&from, &to).map_err(|e| StoreError::io(&to, e))?;
            entered.insert(parent.to_path_buf());
        }
        let segments = self.store.root.join("segments");
        if each {
            // A fan-out directory made now must itself be in its parent.
            entered.insert(segments.clone());
            for dir in entered {
                File::open(&dir).and_then(|f| f.sync_all()).map_err(|e| StoreError::io(&dir, e))?;
            }
        } else {
            sync_fs(&segments).map_err(|e| StoreError::io(&segments, e))?;
        }
        Ok(())
    }

    /// Makes the archive visible: members durable and in place, then the
    /// manifest file, then the index.
    pub fn commit(self, m: &Manifest) -> Result<(), StoreError> {
        self.commit_until(m, CommitStep::Indexed)
    }

    /// Makes room for about `n` members.
    pub fn reserve(&mut self, n: usize) {
        self.seen.reserve(n);
    }

    /// [`PutTxn::commit`], `encoded` being `m` as [`Manifest::encode`] gives it.
    pub fn commit_encoded(self, m: &Manifest, encoded: &[u8]) -> Result<(), StoreError> {
        self.commit_steps(m, Some(encoded), CommitStep::Indexed)
    }

    #[doc(hidden)]
    pub fn commit_until(self, m: &Manifest, last: CommitStep) -> Result<(), StoreError> {
        self.commit_steps(m, None, last)
    }

    fn commit_steps(mut self, m: &Manifest, encoded: Option<&[u8]>, last: CommitStep) -> Result<(), StoreError> {
        // Not during a collection: one that listed the archives before this
        // commit and deletes after it (this transaction's pins and holds
        // gone by then) would free members the new archive uses. Under
        // the lock, a collection runs wholly before (the pins and holds
        // keep them) or wholly after (the archive is listed), as `adopt`.
        let store = self.store;
        let _guard = store.gc_lock.lock().unwrap_or_else(|e| e.into_inner());
        let as_received = self.lost.is_empty() && m.digests().eq(self.seen.iter().copied());
        if !as_received {
            for d in m.digests() {
                if !self.staged.contains(&d) && !self.present.contains(&d) && !self.store.has_member(&d) {
                    return Err(StoreError::MissingMember { digest: d });
                }
            }
        }
        self.publish()?;
        if last == CommitStep::MembersPublished {
            std::mem::forget(self.dir.take());
            return Ok(());
        }
        let p = self.store.manifest_path(&m.node, &m.path, &m.id)?;
        let fresh;
        let bytes = match encoded {
            Some(b) => b,
            None => {
                fresh = m.encode();
                &fresh
            }
        };
        write_atomic(&p, bytes).map_err(|e| StoreError::io(&p, e))?;
        self.store.write_member_list(&p, m);
        if last == CommitStep::ManifestWritten {
            std::mem::forget(self.dir.take());
            return Ok(());
        }
        let s = ArchiveSummary::stored_at(m, self.store.now_ms());
        self.store.kv.put(ARCHIVES, &archive_key(&s), &cbor(&s))?;
        self.store.kv.flush()?;
        Ok(())
    }
}

impl MemberSink for PutTxn<'_> {
    fn reused(&mut self, m: &MemberRef) -> io::Result<()> {
        // Held from collection by the producer (`Holds`): there now, there
        // at commit. A sealed delta's keyframe with it, first (the order
        // of `Manifest::objects`).
        for d in m.key.map(|k| k.cid).into_iter().chain([m.sha256]) {
            if self.store.has_member(&d) {
                self.seen.push(d);
            } else {
                self.lost.push(d);
            }
        }
        Ok(())
    }
    fn member(&mut self, digest: &Digest, data: &[u8]) -> io::Result<()> {
        self.seen.push(*digest);
        if self.staged.contains(digest) {
            return Ok(());
        }
        self.pinned.push(*digest);
        if self.store.pin(digest) {
            self.present.insert(*digest);
            return Ok(());
        }
        let p = self.staging().join(digest.to_hex());
        fs::write(&p, data)?;
        self.staged.insert(*digest);
        Ok(())
    }
    fn rewind(&mut self) -> io::Result<()> {
        // Content-addressed: abandoned members are simply never referenced.
        Ok(())
    }
    fn can_rewind(&self) -> bool {
        true
    }
}

impl Drop for PutTxn<'_> {
    fn drop(&mut self) {
        self.store.unpin(&self.pinned);
    }
}

impl Store {
    /// Members held for one backup: none is freed until it is dropped.
    pub fn holds(&self) -> Holds<'_> {
        self.holds_for(0)
    }

    /// [`Store::holds`] with room for about `n` members held at once.
    pub fn holds_for(&self, n: usize) -> Holds<'_> {
        let set = Arc::new(Mutex::new(DigestSet::with_capacity_and_hasher(n, Default::default())));
        let mut all = self.held.lock().unwrap_or_else(|e| e.into_inner());
        all.retain(|w| w.strong_count() > 0);
        all.push(Arc::downgrade(&set));
        Holds { _store: std::marker::PhantomData, set }
    }

    /// Starts writing an archive's members.
    pub fn begin(&self) -> Result<PutTxn<'_>, StoreError> {
        let dir = tempfile::Builder::new()
            .prefix("txn-")
            .tempdir_in(self.root.join("staging"))
            .map_err(|e| StoreError::io(&self.root.join("staging"), e))?;
        Ok(PutTxn {
            store: self,
            dir: Some(dir),
            staged: DigestSet::default(),
            pinned: Vec::new(),
            present: DigestSet::default(),
            seen: Vec::new(),
            lost: Vec::new(),
        })
    }
}
