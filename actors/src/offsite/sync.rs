//! What a node does with the bucket: uploads the series it is elected for,
//! prunes them there as holders prune, collects unused members, and reads
//! archives back when no live node has them. Blocking: callers run these
//! in the blocking pool.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use super::bucket::{Bucket, BucketError, Object};
use super::{
    manifest_key, member_key, parse_manifest_name, series_dir, LOCK_REFRESH_MS, LOCK_STALE_MS, UNUSED_GRACE_MS,
};
use crate::archive::Manifest;
use crate::hash::Digest;
use crate::store::{Retention, Store, StoreError};

/// Requests in flight at once for one upload or download.
const PARALLEL: usize = 4;
/// Past this many members to look for, one listing of `members/` costs
/// less than a HEAD each.
const LIST_OVER: usize = 2_000;
/// Bytes of members read back before they are stored.
const IMPORT_BATCH: usize = 64 << 20;
/// kv tree: manifest key → the digests it names (32 bytes each). Manifests
/// never change under a key, so a collection reads each once.
const NAMES: &str = "offsite-names";

#[derive(Debug, thiserror::Error)]
pub enum OffsiteError {
    #[error(transparent)]
    Bucket(#[from] BucketError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{bucket}: {what} is in progress; trying again at the next round")]
    Busy { bucket: String, what: &'static str },
    #[error("{bucket}: no archive {which}of {path} of node {node}")]
    NotThere { bucket: String, node: String, path: String, which: String },
    #[error("{bucket}: stopped before the end (the node is stopping); the next round goes on from there")]
    Stopped { bucket: String },
    #[error("{bucket}: {key} is not a valid archive manifest ({why}); it is left alone")]
    BadManifest { bucket: String, key: String, why: String },
}

impl OffsiteError {
    pub fn is_transient(&self) -> bool {
        match self {
            OffsiteError::Bucket(e) => e.is_transient(),
            OffsiteError::Busy { .. } | OffsiteError::Stopped { .. } => true,
            _ => false,
        }
    }
}

/// A lock object of this process; deleted when dropped.
pub struct Lock<'a> {
    bucket: &'a Bucket,
    key: String,
    written: Instant,
}

impl Lock<'_> {
    /// Writes the lock again when it is due, so it never looks stale.
    pub fn refresh(&mut self) -> Result<(), BucketError> {
        if self.written.elapsed().as_millis() as i64 >= LOCK_REFRESH_MS {
            self.bucket.put(&self.key, b"")?;
            self.written = Instant::now();
        }
        Ok(())
    }
}

impl Drop for Lock<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.bucket.delete(&self.key) {
            tracing::warn!("cannot delete the lock {}: {e} (it goes stale in an hour)", self.key);
        }
    }
}

/// A name no other process picks.
fn nonce() -> String {
    use std::hash::BuildHasher as _;
    let h = std::collections::hash_map::RandomState::new().hash_one(std::time::SystemTime::now());
    format!("{h:016x}")
}

/// The node's side of the bucket.
pub struct Offsite {
    pub bucket: Bucket,
    /// This node's peer id: names its locks.
    me: String,
    /// Set when the node stops: uploads end between two members.
    pub stop: AtomicBool,
    /// How long members no manifest names stay ([`UNUSED_GRACE_MS`]).
    pub unused_grace_ms: i64,
    /// The newest archive of every series in the bucket, and when listed.
    index: Mutex<Option<(Instant, std::sync::Arc<NewestIndex>)>>,
}

/// Series directory ([`super::series_dir`]) → (order, id) of its newest archive in the bucket.
pub type NewestIndex = HashMap<String, (i64, String)>;

/// What uploading one archive did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Uploaded {
    pub members: u64,
    /// Members sent, and their bytes (the rest were in the bucket).
    pub sent: u64,
    pub bytes: u64,
    /// How long it took, in ms.
    pub ms: u64,
}

/// Where one series stands in the bucket after a round.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SeriesSync {
    /// Ids kept here that are in the bucket now.
    pub in_bucket: Vec<String>,
    pub uploaded: Vec<(String, Uploaded)>,
    /// Archives deleted from the bucket by retention.
    pub pruned: Vec<String>,
}

/// What a collection did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Collected {
    pub manifests: u64,
    pub members: u64,
    pub deleted: u64,
    pub freed_bytes: u64,
}

/// What a check of one series' copies in the bucket found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BucketCheck {
    pub archives: u64,
    pub members: u64,
    /// Members damaged or missing there, and of those, written again from here.
    pub damaged: u64,
    pub repaired: u64,
    /// Manifests that do not read back, or carry another seal (`id: why`).
    pub bad_manifests: Vec<String>,
}

impl BucketCheck {
    pub fn is_ok(&self) -> bool {
        self.damaged == self.repaired && self.bad_manifests.is_empty()
    }
}

/// One archive of a series in the bucket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listed {
    pub order_ms: i64,
    pub id: String,
    pub key: String,
    pub modified_ms: i64,
}

impl Offsite {
    pub fn new(bucket: Bucket, me: String) -> Self {
        Offsite { bucket, me, stop: AtomicBool::new(false), unused_grace_ms: UNUSED_GRACE_MS, index: Mutex::new(None) }
    }

    fn shown(&self) -> String {
        self.bucket.target().shown()
    }

    /// Writes a lock of `kind` unless one of `other` is live.
    fn lock(&self, kind: &'static str, other: &str, what: &'static str) -> Result<Lock<'_>, OffsiteError> {
        let key = format!("locks/{kind}-{}-{}", self.me, nonce());
        self.bucket.put(&key, b"")?;
        let lock = Lock { bucket: &self.bucket, key, written: Instant::now() };
        let (locks, now) = self.bucket.list("locks/")?;
        let live = |o: &Object| now - o.modified_ms < LOCK_STALE_MS;
        if locks.iter().any(|o| o.key.starts_with(&format!("locks/{other}-")) && live(o)) {
            return Err(OffsiteError::Busy { bucket: self.shown(), what });
        }
        for dead in locks.iter().filter(|o| !live(o) && o.key != lock.key) {
            tracing::info!("{}: deleting the stale lock {}", self.shown(), dead.key);
            self.bucket.delete(&dead.key)?;
        }
        Ok(lock)
    }

    /// The newest archive of every series in the bucket, listed again when
    /// the last listing is older than `max_age` (what a dashboard shows:
    /// one listing every 30 s, whoever looks).
    pub fn newest(&self, max_age: std::time::Duration) -> Result<std::sync::Arc<NewestIndex>, OffsiteError> {
        let mut cached = self.index.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((at, index)) = cached.as_ref().filter(|(at, _)| at.elapsed() < max_age) {
            let _ = at;
            return Ok(index.clone());
        }
        let (objects, _) = self.bucket.list_tries("manifests/", 1)?;
        let mut index = NewestIndex::new();
        for o in objects {
            let (Some((order, id)), Some(cut)) = (parse_manifest_name(&o.key), o.key.rfind('/')) else { continue };
            let dir = o.key[..=cut].to_string();
            match index.get(&dir) {
                Some((have, _)) if *have >= order => {}
                _ => {
                    index.insert(dir, (order, id));
                }
            }
        }
        let index = std::sync::Arc::new(index);
        *cached = Some((Instant::now(), index.clone()));
        Ok(index)
    }

    /// The archives of (node, path) in the bucket, newest first.
    pub fn archives(&self, node: &str, path: &str) -> Result<(Vec<Listed>, i64), OffsiteError> {
        self.archives_tries(node, path, super::bucket::ATTEMPTS)
    }

    /// [`Offsite::archives`], each request tried at most `tries` times.
    pub fn archives_tries(&self, node: &str, path: &str, tries: u32) -> Result<(Vec<Listed>, i64), OffsiteError> {
        let (objects, now) = self.bucket.list_tries(&series_dir(node, path), tries)?;
        let mut out: Vec<Listed> = objects
            .into_iter()
            .filter_map(|o| {
                let (order_ms, id) = parse_manifest_name(&o.key)?;
                Some(Listed { order_ms, id, key: o.key, modified_ms: o.modified_ms })
            })
            .collect();
        out.sort_by(|a, b| (b.order_ms, &b.id).cmp(&(a.order_ms, &a.id)));
        Ok((out, now))
    }

    /// Brings the series (node, path) up to date in the bucket: uploads
    /// the archives of `kept` (newest first, as retention keeps them here)
    /// that it lacks, oldest first, then deletes there what `keep` does
    /// not keep. `listed` is the bucket's listing if the caller has it.
    pub fn sync_series(
        &self,
        store: &Store,
        node: &str,
        path: &str,
        kept: &[String],
        keep: Retention,
        progress: &dyn Fn(&str, &Uploaded),
    ) -> Result<SeriesSync, OffsiteError> {
        let (mut listed, now) = self.archives(node, path)?;
        let mut out = SeriesSync::default();
        let there: HashSet<String> = listed.iter().map(|l| l.id.clone()).collect();
        let todo: Vec<&String> = kept.iter().rev().filter(|id| !there.contains(*id)).collect();
        if !todo.is_empty() {
            let mut lock = self.lock("upload", "gc", "a collection of unused members")?;
            for id in todo {
                // The newest archive in the bucket that is also here: its
                // members are in the bucket, and are most of this one's.
                let base = listed
                    .iter()
                    .filter(|l| store.has_archive(node, path, &l.id))
                    .find_map(|l| store.manifest(node, path, Some(&l.id)).ok());
                let done = self.upload(store, node, path, id, base.as_ref(), &mut lock)?;
                progress(id, &done);
                let m = store.manifest(node, path, Some(id))?;
                listed.push(Listed {
                    order_ms: m.order(),
                    id: id.clone(),
                    key: manifest_key(node, path, m.order(), id),
                    modified_ms: now,
                });
                listed.sort_by(|a, b| (b.order_ms, &b.id).cmp(&(a.order_ms, &a.id)));
                out.uploaded.push((id.clone(), done));
            }
        }
        // Retention, as on holders: the newest `keep`, and with `within`
        // what the bucket stored less than that long ago (its clock).
        let within = keep.within.map(|d| d.as_millis() as i64);
        for (i, l) in listed.iter().enumerate() {
            let recent = within.is_some_and(|w| now - l.modified_ms < w);
            if i >= keep.keep.max(1) && !recent {
                self.bucket.delete(&l.key)?;
                out.pruned.push(l.id.clone());
            }
        }
        let pruned: HashSet<&String> = out.pruned.iter().collect();
        out.in_bucket = listed.iter().filter(|l| !pruned.contains(&l.id)).map(|l| l.id.clone()).collect();
        Ok(out)
    }

    /// Uploads one archive kept here: the members the bucket lacks, then
    /// its manifest. `base` is an archive of the series already there.
    fn upload(
        &self,
        store: &Store,
        node: &str,
        path: &str,
        id: &str,
        base: Option<&Manifest>,
        lock: &mut Lock<'_>,
    ) -> Result<Uploaded, OffsiteError> {
        let started = Instant::now();
        let m = store.manifest(node, path, Some(id))?;
        let sealed = store.manifest_bytes(node, path, id)?;
        // Kept from collection here while they go up.
        let holds = store.holds_for(m.members.len());
        let mut seen = HashSet::new();
        let members: Vec<Digest> = m.digests().copied().filter(|d| seen.insert(*d)).collect();
        for d in &members {
            holds.hold(d);
        }
        let in_base: HashSet<Digest> = base.map(|b| b.digests().copied().collect()).unwrap_or_default();
        let unknown: Vec<Digest> = members.iter().copied().filter(|d| !in_base.contains(d)).collect();
        let listed: Option<HashSet<String>> = if unknown.len() > LIST_OVER {
            Some(self.bucket.list("members/")?.0.into_iter().map(|o| o.key).collect())
        } else {
            None
        };
        let (sent, bytes) = (AtomicU64::new(0), AtomicU64::new(0));
        let lock = Mutex::new(lock);
        self.each(&unknown, |d| {
            let key = member_key(d);
            let there = match &listed {
                Some(l) => l.contains(&key),
                None => self.bucket.head(&key)?.is_some(),
            };
            if !there {
                let data = store.read_member_checked(d)?;
                self.bucket.put(&key, &data)?;
                sent.fetch_add(1, Ordering::Relaxed);
                bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
            }
            lock.lock().unwrap_or_else(|p| p.into_inner()).refresh()?;
            Ok(())
        })?;
        self.bucket.put(&manifest_key(node, path, m.order(), id), &sealed)?;
        Ok(Uploaded {
            members: members.len() as u64,
            sent: sent.into_inner(),
            bytes: bytes.into_inner(),
            ms: started.elapsed().as_millis() as u64,
        })
    }

    /// Deletes the members no manifest in the bucket names (and that have
    /// been there longer than [`UNUSED_GRACE_MS`]).
    pub fn collect(&self, store: &Store) -> Result<Collected, OffsiteError> {
        let mut lock = self.lock("gc", "upload", "an upload")?;
        let kv = store.kv();
        let (manifests, _) = self.bucket.list("manifests/")?;
        let mut used: HashSet<Digest> = HashSet::new();
        let mut listed = HashSet::new();
        for o in manifests.iter().filter(|o| parse_manifest_name(&o.key).is_some()) {
            listed.insert(o.key.as_bytes().to_vec());
            let names = match kv.get(NAMES, o.key.as_bytes())? {
                Some(v) => v,
                None => {
                    let Some(bytes) = self.bucket.get(&o.key)? else { continue };
                    // A manifest that does not decode names members no one
                    // can tell: nothing is collected until it is dealt with.
                    let m = Manifest::decode_from_peer(&bytes).map_err(|e| OffsiteError::BadManifest {
                        bucket: self.shown(),
                        key: o.key.clone(),
                        why: e.to_string(),
                    })?;
                    let v: Vec<u8> = m.digests().flat_map(|d| d.0).collect();
                    kv.put(NAMES, o.key.as_bytes(), &v)?;
                    v
                }
            };
            used.extend(names.chunks_exact(32).map(|c| Digest(c.try_into().unwrap_or([0; 32]))));
            lock.refresh()?;
        }
        for (stale, _) in kv.scan_prefix(NAMES, b"")?.into_iter().filter(|(k, _)| !listed.contains(k.as_slice())) {
            kv.delete(NAMES, &stale)?;
        }
        let (members, now) = self.bucket.list("members/")?;
        let mut out = Collected { manifests: listed.len() as u64, members: members.len() as u64, ..Default::default() };
        for o in members {
            let Some(d) = o.key.strip_prefix("members/").and_then(Digest::from_hex) else { continue };
            if !used.contains(&d) && now - o.modified_ms > self.unused_grace_ms {
                self.bucket.delete(&o.key)?;
                out.deleted += 1;
                out.freed_bytes += o.size;
                lock.refresh()?;
            }
        }
        kv.flush()?;
        Ok(out)
    }

    /// The manifest of a listed archive of (node, path), checked to be that
    /// archive (not yet against its node's seal: [`Store::check_origin`]).
    pub fn manifest(&self, node: &str, path: &str, l: &Listed) -> Result<Manifest, OffsiteError> {
        let bad = |why: String| OffsiteError::BadManifest { bucket: self.shown(), key: l.key.clone(), why };
        let bytes = self.bucket.get(&l.key)?.ok_or_else(|| bad("it went away while read".into()))?;
        let m = Manifest::decode_from_peer(&bytes).map_err(|e| bad(e.to_string()))?;
        if m.node != node || m.path != path || m.id != l.id || m.order() != l.order_ms {
            return Err(bad(format!("it holds archive {} of {} of node {}", m.id, m.path, m.node)));
        }
        Ok(m)
    }

    /// Reads archive `id` (or the newest) of (node, path) from the bucket
    /// into `store`, checked as a peer's would be, and returns it.
    /// `claimant` is the peer the mesh knows as `node`, if any; with none,
    /// a node this store has never heard of is bound to the seal the
    /// bucket's manifest carries (the bucket is then the only witness left).
    pub fn import(
        &self,
        store: &Store,
        node: &str,
        path: &str,
        id: Option<&str>,
        claimant: Option<&str>,
    ) -> Result<Manifest, OffsiteError> {
        let (listed, _) = self.archives(node, path)?;
        let pick = match id {
            Some(id) => listed.iter().find(|l| l.id == id),
            None => listed.first(),
        };
        let Some(pick) = pick else {
            return Err(OffsiteError::NotThere {
                bucket: self.shown(),
                node: node.into(),
                path: path.into(),
                which: id.map(|i| format!("{i} ")).unwrap_or_default(),
            });
        };
        let m = self.manifest(node, path, pick)?;
        if store.has_archive(node, path, &m.id) {
            return Ok(store.manifest(node, path, Some(&m.id))?);
        }
        let witness = claimant.or(m.signer()).map(str::to_string);
        store.check_origin(&m, witness.as_deref())?;
        let missing = store.missing_members(&m);
        let sizes: HashMap<Digest, u64> = m.members.iter().map(|r| (r.sha256, r.compressed_len)).collect();
        let mut batch: Vec<Digest> = Vec::new();
        let mut batch_bytes = 0usize;
        for (i, d) in missing.iter().enumerate() {
            batch.push(*d);
            batch_bytes += sizes.get(d).copied().unwrap_or(0) as usize;
            if batch_bytes >= IMPORT_BATCH || i + 1 == missing.len() {
                let got = self.fetch_members(&batch)?;
                let refs: Vec<(Digest, &[u8])> = got.iter().map(|(d, b)| (*d, b.as_slice())).collect();
                store.put_members(&refs)?;
                batch.clear();
                batch_bytes = 0;
            }
        }
        let still = store.adopt(&m)?;
        if let Some(d) = still.first() {
            return Err(OffsiteError::Store(StoreError::MissingMember { digest: *d }));
        }
        Ok(m)
    }

    /// Members read from the bucket, `PARALLEL` at a time; one missing
    /// there is an error (its manifest names it).
    fn fetch_members(&self, want: &[Digest]) -> Result<Vec<(Digest, Vec<u8>)>, OffsiteError> {
        let out: Mutex<Vec<(Digest, Vec<u8>)>> = Mutex::new(Vec::with_capacity(want.len()));
        self.each(want, |d| match self.bucket.get(&member_key(d))? {
            Some(data) => {
                out.lock().unwrap_or_else(|p| p.into_inner()).push((*d, data));
                Ok(())
            }
            None => Err(OffsiteError::Store(StoreError::MissingMember { digest: *d })),
        })?;
        Ok(out.into_inner().unwrap_or_else(|p| p.into_inner()))
    }

    /// Re-reads every member of every archive of (node, path) in the bucket
    /// and checks it against its digest; one damaged or missing there is
    /// written again from this node's store when it has a good copy. A
    /// manifest sealed by another key than the one this node knows for
    /// `node` counts as damaged.
    pub fn verify_series(&self, store: &Store, node: &str, path: &str) -> Result<BucketCheck, OffsiteError> {
        let (listed, _) = self.archives(node, path)?;
        if listed.is_empty() {
            return Err(OffsiteError::NotThere {
                bucket: self.shown(),
                node: node.into(),
                path: path.into(),
                which: String::new(),
            });
        }
        let bound = store.origin_of(node)?;
        let mut out = BucketCheck { archives: listed.len() as u64, ..Default::default() };
        let mut seen = HashSet::new();
        let mut digests = Vec::new();
        for l in &listed {
            let m = match self.manifest(node, path, l) {
                Ok(m) => m,
                Err(OffsiteError::BadManifest { why, .. }) => {
                    out.bad_manifests.push(format!("{}: {why}", l.id));
                    continue;
                }
                Err(e) => return Err(e),
            };
            if let Some(b) = &bound {
                if m.signer() != Some(b.as_str()) {
                    out.bad_manifests.push(format!("{}: not sealed by {node}'s key", l.id));
                    continue;
                }
            }
            digests.extend(m.digests().copied().filter(|d| seen.insert(*d)));
        }
        out.members = digests.len() as u64;
        let (damaged, repaired) = (AtomicU64::new(0), AtomicU64::new(0));
        self.each(&digests, |d| {
            let key = member_key(d);
            let good = match self.bucket.get(&key)? {
                Some(data) => Digest::of(&data) == *d,
                None => false,
            };
            if !good {
                damaged.fetch_add(1, Ordering::Relaxed);
                if let Ok(data) = store.read_member_checked(d) {
                    self.bucket.put(&key, &data)?;
                    repaired.fetch_add(1, Ordering::Relaxed);
                }
            }
            Ok(())
        })?;
        out.damaged = damaged.into_inner();
        out.repaired = repaired.into_inner();
        Ok(out)
    }

    /// Runs `f` on every item, `PARALLEL` at a time, until one fails or the
    /// node stops; the first error is the answer.
    fn each<T: Sync>(
        &self,
        items: &[T],
        f: impl Fn(&T) -> Result<(), OffsiteError> + Sync,
    ) -> Result<(), OffsiteError> {
        let next = AtomicUsize::new(0);
        let failed: Mutex<Option<OffsiteError>> = Mutex::new(None);
        let failing = AtomicBool::new(false);
        std::thread::scope(|s| {
            for _ in 0..PARALLEL.min(items.len()) {
                s.spawn(|| {
                    let fail = |e: OffsiteError| {
                        failing.store(true, Ordering::Relaxed);
                        failed.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert(e);
                    };
                    while !failing.load(Ordering::Relaxed) {
                        if self.stop.load(Ordering::Relaxed) {
                            fail(OffsiteError::Stopped { bucket: self.shown() });
                            break;
                        }
                        let Some(x) = items.get(next.fetch_add(1, Ordering::Relaxed)) else { break };
                        if let Err(e) = f(x) {
                            fail(e);
                        }
                    }
                });
            }
        });
        match failed.into_inner().unwrap_or_else(|p| p.into_inner()) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}
