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
/// kv tree: manifest key → (empty): checked to be its series' archive,
/// under its node's seal (or uploaded from here).
const CHECKED: &str = "offsite-checked";

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
    #[error("{bucket}: {key} is not a valid archive manifest ({why}); it is not counted, and unused members are not collected until it is removed")]
    BadManifest { bucket: String, key: String, why: String },
    #[error("{bucket}: member {digest} of archive {id} is missing or damaged there")]
    NotInBucket { bucket: String, digest: Digest, id: String },
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
    /// Whether the lock is still there: one a collection or an upload took
    /// for a dead process's (it went unwritten too long) no longer protects
    /// what its holder relied on.
    pub fn still_held(&self) -> Result<bool, BucketError> {
        Ok(self.bucket.head(&self.key)?.is_some())
    }

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
    /// Members whose Object Lock this node set or extended, and until
    /// when (ms): extended again only once less than a grace period is left.
    retained: Mutex<HashMap<Digest, i64>>,
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
        Offsite {
            bucket,
            me,
            stop: AtomicBool::new(false),
            unused_grace_ms: UNUSED_GRACE_MS,
            index: Mutex::new(None),
            retained: Mutex::new(HashMap::new()),
        }
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
        {
            let cached = self.index.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((_, index)) = cached.as_ref().filter(|(at, _)| at.elapsed() < max_age) {
                return Ok(index.clone());
            }
        }
        // Listed without the cache locked: a slow bucket holds up no one else's page for long.
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
        *self.index.lock().unwrap_or_else(|p| p.into_inner()) = Some((Instant::now(), index.clone()));
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

    /// The archives of (node, path) that can be read back, newest first:
    /// with Object Lock on, also those whose newest version was deleted or
    /// replaced since (a restore reads past those: [`Bucket::get_good`]).
    pub fn archives_readable(&self, node: &str, path: &str, tries: u32) -> Result<Vec<Listed>, OffsiteError> {
        if !self.bucket.lock_on()? {
            return Ok(self.archives_tries(node, path, tries)?.0);
        }
        let mut seen = HashSet::new();
        let mut out: Vec<Listed> = Vec::new();
        for v in self.bucket.versions(&series_dir(node, path))?.into_iter().filter(|v| !v.marker) {
            if !seen.insert(v.key.clone()) {
                continue;
            }
            if let Some((order_ms, id)) = parse_manifest_name(&v.key) {
                out.push(Listed { order_ms, id, key: v.key, modified_ms: v.modified_ms });
            }
        }
        out.sort_by(|a, b| (b.order_ms, &b.id).cmp(&(a.order_ms, &a.id)));
        Ok(out)
    }

    /// Brings the series (node, path) up to date in the bucket. Retention
    /// first, over what is there and what `kept` (newest first, as
    /// retention keeps them here) would add, by holders' rule: the newest
    /// `keep`, and with `within` what the bucket stored less than that long
    /// ago (its clock). Then the kept archives it lacks go up, oldest
    /// first, and what retention drops is deleted there. Manifests in the
    /// bucket that do not read back as this series' archives are not
    /// counted, nor deleted (and are logged).
    pub fn sync_series(
        &self,
        store: &Store,
        node: &str,
        path: &str,
        kept: &[String],
        keep: Retention,
        progress: &dyn Fn(&str, &Uploaded),
    ) -> Result<SeriesSync, OffsiteError> {
        let (listed, now) = self.archives(node, path)?;
        let bound = store.origin_of(node)?;
        let mut valid = Vec::new();
        for l in listed {
            match self.checked(store, node, path, &l, bound.as_deref()) {
                Ok(()) => valid.push(l),
                Err(OffsiteError::BadManifest { why, .. }) => {
                    tracing::warn!(
                        "{}: {} is not counted as an archive of {path} of {node}: {why}",
                        self.shown(),
                        l.key
                    )
                }
                Err(e) => return Err(e),
            }
        }
        let there: HashSet<String> = valid.iter().map(|l| l.id.clone()).collect();
        let mut all = valid.clone();
        for id in kept.iter().filter(|id| !there.contains(*id)) {
            let m = store.manifest(node, path, Some(id))?;
            let key = manifest_key(node, path, m.order(), id);
            all.push(Listed { order_ms: m.order(), id: id.clone(), key, modified_ms: now });
        }
        all.sort_by(|a, b| (b.order_ms, &b.id).cmp(&(a.order_ms, &a.id)));
        // The newest `keep`, and every one uploaded `within` or less than
        // `grace` ago (the bucket forgets no sooner than the holders).
        let within = keep.within.map(|d| d.as_millis() as i64);
        let grace = keep.grace.map(|d| d.as_millis() as i64);
        let recent = |l: &Listed, d: Option<i64>| d.is_some_and(|w| now - l.modified_ms < w);
        let keeps = |i: usize, l: &Listed| i < keep.keep.max(1) || recent(l, within) || recent(l, grace);
        let kept_all: Vec<&Listed> = all.iter().enumerate().filter(|(i, l)| keeps(*i, l)).map(|(_, l)| l).collect();
        let mut out = SeriesSync::default();
        let todo: Vec<&Listed> = kept_all.iter().rev().filter(|l| !there.contains(&l.id)).copied().collect();
        let mut up: Vec<&Listed> = valid.iter().collect();
        if !todo.is_empty() {
            let mut lock = self.lock("upload", "gc", "a collection of unused members")?;
            for l in todo {
                // The newest archive in the bucket that is also here: its
                // members are in the bucket, and are most of this one's.
                let base = up
                    .iter()
                    .filter(|b| store.has_archive(node, path, &b.id))
                    .find_map(|b| store.manifest(node, path, Some(&b.id)).ok());
                let done = self.upload(store, node, path, &l.id, base.as_ref(), &mut lock)?;
                progress(&l.id, &done);
                up.push(l);
                up.sort_by(|a, b| (b.order_ms, &b.id).cmp(&(a.order_ms, &a.id)));
                out.uploaded.push((l.id.clone(), done));
            }
        }
        let keep_ids: HashSet<&String> = kept_all.iter().map(|l| &l.id).collect();
        for l in valid.iter().filter(|l| !keep_ids.contains(&l.id)) {
            self.bucket.delete(&l.key)?;
            out.pruned.push(l.id.clone());
        }
        out.in_bucket = up.iter().filter(|l| keep_ids.contains(&l.id)).map(|l| l.id.clone()).collect();
        Ok(out)
    }

    /// Checks once that the manifest under `l` is an archive of (node,
    /// path) with that order and id, sealed by `bound` when known; what it
    /// names is remembered (the collection reads it from there).
    fn checked(
        &self,
        store: &Store,
        node: &str,
        path: &str,
        l: &Listed,
        bound: Option<&str>,
    ) -> Result<(), OffsiteError> {
        let kv = store.kv();
        if kv.get(CHECKED, l.key.as_bytes())?.is_some() {
            return Ok(());
        }
        let m = self.manifest(node, path, l)?;
        // Sealed by the node's key, or by one it had before a rebind.
        if let (Some(b), Err(_)) = (bound, store.check_origin(&m, None)) {
            return Err(OffsiteError::BadManifest {
                bucket: self.shown(),
                key: l.key.clone(),
                why: format!("it is not sealed by {node}'s key ({b})"),
            });
        }
        let v: Vec<u8> = m.digests().flat_map(|d| d.0).collect();
        kv.put(NAMES, l.key.as_bytes(), &v)?;
        kv.put(CHECKED, l.key.as_bytes(), b"")?;
        Ok(())
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
        let holds = store.holds_for(m.objects().count());
        let mut seen = HashSet::new();
        let members: Vec<Digest> = m.digests().filter(|d| seen.insert(*d)).collect();
        for d in &members {
            holds.hold(d);
        }
        let in_base: HashSet<Digest> = base.map(|b| b.digests().collect()).unwrap_or_default();
        let unknown: Vec<Digest> = members.iter().copied().filter(|d| !in_base.contains(d)).collect();
        let listed: Option<HashSet<Digest>> = if unknown.len() > LIST_OVER {
            let (members, _) = self.bucket.list_with("members/", super::bucket::ATTEMPTS, &mut || lock.refresh())?;
            Some(members.iter().filter_map(|o| o.key.strip_prefix("members/").and_then(Digest::from_hex)).collect())
        } else {
            None
        };
        let (sent, bytes) = (AtomicU64::new(0), AtomicU64::new(0));
        let lock = Mutex::new(lock);
        let locked_for = self.bucket.lock()?;
        let now = crate::clock::now_ms();
        let until = locked_for.map(|g| now.saturating_add(super::locked::lock_period(g).as_millis() as i64));
        let retained = |d: &Digest, until: i64| {
            self.retained.lock().unwrap_or_else(|p| p.into_inner()).insert(*d, until);
        };
        self.each(&unknown, |d| {
            let key = member_key(d);
            let there = match &listed {
                Some(l) => l.contains(d),
                None => self.bucket.head(&key)?.is_some(),
            };
            if !there {
                let data = store.read_member_checked(d)?;
                self.bucket.put(&key, &data)?;
                if let Some(until) = until {
                    retained(d, until);
                }
                sent.fetch_add(1, Ordering::Relaxed);
                bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
            }
            lock.lock().unwrap_or_else(|p| p.into_inner()).refresh()?;
            Ok(())
        })?;
        // Under Object Lock, every member this archive relies on stays
        // locked for at least the grace period from now: those written
        // before have their lock extended once less than that is left.
        if let (Some(grace), Some(until)) = (locked_for, until) {
            let enough = now.saturating_add(grace.as_millis() as i64);
            let due: Vec<Digest> = {
                let r = self.retained.lock().unwrap_or_else(|p| p.into_inner());
                members.iter().filter(|d| r.get(*d).is_none_or(|u| *u < enough)).copied().collect()
            };
            self.each(&due, |d| {
                self.bucket.retain(&member_key(d), until)?;
                retained(d, until);
                lock.lock().unwrap_or_else(|p| p.into_inner()).refresh()?;
                Ok(())
            })?;
        }
        // The members found there are safe only while the lock stood.
        let lock = lock.into_inner().unwrap_or_else(|p| p.into_inner());
        if !lock.still_held()? {
            return Err(OffsiteError::Busy {
                bucket: self.shown(),
                what: "a collection (this upload's lock was taken for a dead one's)",
            });
        }
        let key = manifest_key(node, path, m.order(), id);
        self.bucket.put(&key, &sealed)?;
        let names: Vec<u8> = m.digests().flat_map(|d| d.0).collect();
        store.kv().put(NAMES, key.as_bytes(), &names)?;
        store.kv().put(CHECKED, key.as_bytes(), b"")?;
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
        let (manifests, _) = self.bucket.list_with("manifests/", super::bucket::ATTEMPTS, &mut || lock.refresh())?;
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
            used.extend(names.chunks_exact(32).filter_map(|c| c.try_into().ok().map(Digest)));
            lock.refresh()?;
        }
        for tree in [NAMES, CHECKED] {
            for (stale, _) in kv.scan_prefix(tree, b"")?.into_iter().filter(|(k, _)| !listed.contains(k.as_slice())) {
                kv.delete(tree, &stale)?;
            }
        }
        let (members, now) = self.bucket.list_with("members/", super::bucket::ATTEMPTS, &mut || lock.refresh())?;
        let mut out = Collected { manifests: listed.len() as u64, members: members.len() as u64, ..Default::default() };
        let unused: Vec<&Object> = members
            .iter()
            .filter(|o| o.key.strip_prefix("members/").and_then(Digest::from_hex).is_some_and(|d| !used.contains(&d)))
            .filter(|o| now - o.modified_ms > self.unused_grace_ms)
            .collect();
        // Before deleting: this lock must still stand (not taken for a dead
        // one's during a long listing), and no upload may have begun.
        lock.refresh()?;
        let (locks, now) = self.bucket.list("locks/")?;
        let uploading = locks.iter().any(|o| o.key.starts_with("locks/upload-") && now - o.modified_ms < LOCK_STALE_MS);
        if uploading || !lock.still_held()? {
            return Err(OffsiteError::Busy { bucket: self.shown(), what: "an upload" });
        }
        for o in unused {
            self.bucket.delete(&o.key)?;
            out.deleted += 1;
            out.freed_bytes += o.size;
            lock.refresh()?;
        }
        kv.flush()?;
        Ok(out)
    }

    /// The manifest of a listed archive of (node, path), checked to be that
    /// archive (not yet against its node's seal: [`Store::check_origin`]).
    pub fn manifest(&self, node: &str, path: &str, l: &Listed) -> Result<Manifest, OffsiteError> {
        let bad = |why: String| OffsiteError::BadManifest { bucket: self.shown(), key: l.key.clone(), why };
        let read = |bytes: &[u8]| -> Result<Manifest, String> {
            let m = Manifest::decode_from_peer(bytes).map_err(|e| e.to_string())?;
            if m.node != node || m.path != path || m.id != l.id || m.order() != l.order_ms {
                return Err(format!("it holds archive {} of {} of node {}", m.id, m.path, m.node));
            }
            Ok(m)
        };
        // The newest version that reads back as this archive (with Object
        // Lock on, past a version that was deleted or replaced).
        if let Some(bytes) = self.bucket.get_good(&l.key, u64::MAX, &|b| read(b).is_ok())? {
            return read(&bytes).map_err(bad);
        }
        let bytes = self.bucket.get(&l.key)?.ok_or_else(|| bad("it went away while read".into()))?;
        read(&bytes).map_err(bad)
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
        let listed = self.archives_readable(node, path, super::bucket::ATTEMPTS)?;
        let candidates: Vec<&Listed> = match id {
            Some(id) => listed.iter().filter(|l| l.id == id).collect(),
            None => listed.iter().collect(),
        };
        // The newest that reads back as this series' archive: a bad object
        // above it (damaged, or written by another hand) is passed over.
        let mut why = Vec::new();
        let mut found = None;
        for l in candidates {
            match self.manifest(node, path, l) {
                Ok(m) => {
                    found = Some(m);
                    break;
                }
                Err(OffsiteError::BadManifest { key, why: w, .. }) => {
                    tracing::warn!("{}: {key} passed over: {w}", self.shown());
                    why.push(w);
                }
                Err(e) => return Err(e),
            }
        }
        let Some(m) = found else {
            let which = id.map(|i| format!("{i} ")).unwrap_or_default();
            let which = if why.is_empty() { which } else { format!("{which}that reads back ({}) ", why.join("; ")) };
            return Err(OffsiteError::NotThere { bucket: self.shown(), node: node.into(), path: path.into(), which });
        };
        if store.has_archive(node, path, &m.id) {
            return Ok(store.manifest(node, path, Some(&m.id))?);
        }
        let witness = claimant.or(m.signer()).map(str::to_string);
        store.check_origin(&m, witness.as_deref())?;
        // Every member is held here until the archive is adopted, however
        // long the read takes (what is received is otherwise kept an hour).
        let holds = store.holds_for(m.objects().count());
        for d in m.digests() {
            holds.hold(&d);
        }
        let missing = store.missing_members(&m);
        let sizes: HashMap<Digest, u64> = m.objects().map(|o| (o.cid, o.len)).collect();
        let mut batch: Vec<(Digest, u64)> = Vec::new();
        let mut batch_bytes = 0u64;
        for (i, d) in missing.iter().enumerate() {
            let size = sizes.get(d).copied().unwrap_or(0);
            batch.push((*d, size));
            batch_bytes += size;
            if batch_bytes >= IMPORT_BATCH as u64 || i + 1 == missing.len() {
                let got = self.fetch_members(&batch, &m.id)?;
                let refs: Vec<(Digest, &[u8])> = got.iter().map(|(d, b)| (*d, b.as_slice())).collect();
                store.put_members(&refs)?;
                batch.clear();
                batch_bytes = 0;
            }
        }
        let still = store.adopt(&m)?;
        if let Some(d) = still.first() {
            return Err(OffsiteError::NotInBucket { bucket: self.shown(), digest: *d, id: m.id.clone() });
        }
        Ok(m)
    }

    /// Members read from the bucket, `PARALLEL` at a time; one missing
    /// there is an error (its manifest names it).
    /// Each is read only up to the size its manifest gives, and checked
    /// against its digest as it comes.
    fn fetch_members(&self, want: &[(Digest, u64)], id: &str) -> Result<Vec<(Digest, Vec<u8>)>, OffsiteError> {
        let out: Mutex<Vec<(Digest, Vec<u8>)>> = Mutex::new(Vec::with_capacity(want.len()));
        let missing = |d: &Digest| OffsiteError::NotInBucket { bucket: self.shown(), digest: *d, id: id.to_string() };
        self.each(want, |(d, size)| match self.bucket.get_good(&member_key(d), *size, &|b| Digest::of(b) == *d)? {
            Some(data) => {
                out.lock().unwrap_or_else(|p| p.into_inner()).push((*d, data));
                Ok(())
            }
            _ => Err(missing(d)),
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
            if bound.is_some() && store.check_origin(&m, None).is_err() {
                out.bad_manifests.push(format!("{}: not sealed by {node}'s key", l.id));
                continue;
            }
            digests.extend(m.objects().filter(|o| seen.insert(o.cid)).map(|o| (o.cid, o.len)));
        }
        out.members = digests.len() as u64;
        let (damaged, repaired) = (AtomicU64::new(0), AtomicU64::new(0));
        self.each(&digests, |(d, size)| {
            let key = member_key(d);
            let good = match self.bucket.get_limited(&key, *size) {
                Ok(Some(data)) => Digest::of(&data) == *d,
                Ok(None) | Err(BucketError::TooLarge { .. }) => false,
                Err(e) => return Err(e.into()),
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

impl crate::error::Transient for OffsiteError {
    fn retry(&self) -> crate::error::Retry {
        match self {
            OffsiteError::Bucket(e) => e.retry(),
            OffsiteError::Store(e) => e.retry(),
            OffsiteError::Busy { .. } | OffsiteError::Stopped { .. } => crate::error::Retry::Later,
            OffsiteError::NotThere { .. } | OffsiteError::BadManifest { .. } | OffsiteError::NotInBucket { .. } => {
                crate::error::Retry::Never
            }
        }
    }
}
