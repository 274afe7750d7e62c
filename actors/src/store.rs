//! A node's local store.
//!
//! ```text
//! DATA_DIR/segments/ab/abcd…ef.gz   gzip members, named by their sha256
//! DATA_DIR/manifests/<key>/<id>.bmm one file per archive (the source of truth)
//! DATA_DIR/staging/                 work in progress; emptied on open
//! DATA_DIR/db/                      sled: catalog index and stat cache (rebuildable)
//! DATA_DIR/records/<key>             what the series' last backup read, for the next
//!                                    one to reuse (a cache: see archive::reuse)
//! ```
//!
//! Write order makes every crash safe: members are written to staging,
//! synced, renamed into `segments/`, synced; only then is the manifest
//! written (temp file, fsync, rename, fsync of its directory); the index
//! follows. A crash leaves either the old state or the new one, plus at
//! worst unreferenced members that [`Store::gc`] frees. [`Store::open`]
//! reconciles the index with the manifest files.
//!
//! Retention ([`Store::retain`]) keeps the newest K archives per
//! (node, path), then frees members no manifest uses.

pub mod catalog;
pub mod error;
mod gc;
pub mod health;
pub mod keys;
pub mod kv;
pub mod member_list;
pub mod retention;
pub mod txn;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::clock::{Clock, SystemClock};
pub use catalog::{ArchiveSummary, RetentionReport, StatCacheEntry, VerifyReport};
pub use error::StoreError;
use member_list::*;
pub use retention::{parse_within, Retention, DEFAULT_GRACE, DEFAULT_KEEP};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::archive::manifest::{Manifest, MemberRef};
use crate::archive::reuse::{Previous, RecordsHeader};
use crate::archive::{MemberSink, MemberSource};
use crate::hash::Digest;
pub use kv::{KvStore, MemKv, SledKv};

const ARCHIVES: &str = "archives";
const STAT_CACHE: &str = "statcache";
/// `full-gc` → when the last full collection ran (ms since the epoch, LE).
const STORE_META: &str = "meta";
/// New member → (the earlier member it was made from much as, gzip level):
/// what a push may send as a delta (see `archive::delta`).
const BASES: &str = "bases";
/// Node name → the peer id whose seal that node's manifests carry, and
/// whose entries alone may speak for that node (`origin_bound`).
pub(crate) const ORIGINS: &str = "origins";

/// The peer id node name `node` is bound to in `kv` (see
/// [`Store::bind_origin`]), if it is.
pub fn origin_bound(kv: &dyn KvStore, node: &str) -> Result<Option<String>, StoreError> {
    Ok(kv.get(ORIGINS, node.as_bytes())?.map(|v| String::from_utf8_lossy(&v).into_owned()))
}

/// Node name → the identities it had before the operator bound it again
/// (`backmesh rebind`), each with when it stopped being that node's (ms).
pub(crate) const FORMER_ORIGINS: &str = "origins-former";

/// The identities node `node` had before it was bound again, and until
/// when each was its own (ms).
pub fn origin_former(kv: &dyn KvStore, node: &str) -> Result<Vec<(String, i64)>, StoreError> {
    match kv.get(FORMER_ORIGINS, node.as_bytes())? {
        Some(v) => from_cbor(&v),
        None => Ok(Vec::new()),
    }
}

pub struct Store {
    root: PathBuf,
    kv: Arc<dyn KvStore>,
    /// Members that a transaction in progress relies on: never collected.
    pins: Mutex<HashMap<Digest, u32, foldhash::fast::RandomState>>,
    /// The sets of members backups in progress hold ([`Holds`]): never
    /// collected either. One set a backup, dropped whole when it ends.
    held: Mutex<Vec<std::sync::Weak<Mutex<DigestSet>>>>,
    gc_lock: Mutex<()>,
    /// Members received for an archive not yet committed, and when.
    inbound: Mutex<HashMap<Digest, std::time::Instant>>,
    /// This data directory's identity: its peer id, and the key that seals
    /// the manifests it makes.
    identity: libp2p::identity::Keypair,
    /// Makes a binding's check-then-write one step.
    bind_lock: Mutex<()>,
    /// The fan-out directories of `segments/`, opened when first needed:
    /// a changed backup asks after every member it reuses, and a lookup
    /// relative to an open directory skips walking the whole path.
    fan_out: Vec<std::sync::OnceLock<File>>,
    /// Where the store reads the time (when an archive is stored, what
    /// `--keep-within` keeps, when collection last ran in full).
    clock: Arc<dyn Clock>,
    /// This data directory's data key, if it has one ([`keys`]).
    data_key: std::sync::OnceLock<backmesh_crypt::DataKey>,
}

/// Loads `DATA_DIR/identity.key`, or makes one (mode 0600): the peer id
/// survives restarts, and seals every manifest this node makes.
pub fn load_identity(data_dir: &Path) -> Result<libp2p::identity::Keypair, StoreError> {
    use libp2p::identity::Keypair;
    let p = data_dir.join("identity.key");
    let bad = |reason: String| StoreError::Identity { path: p.clone(), reason };
    match fs::read(&p) {
        Ok(bytes) => Keypair::from_protobuf_encoding(&bytes)
            .map_err(|e| bad(format!("is corrupt ({e}); restore it from a backup (holders know this node by it)"))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let kp = Keypair::generate_ed25519();
            let bytes = kp.to_protobuf_encoding().map_err(|e| bad(format!("cannot encode a new identity: {e}")))?;
            write_atomic(&p, &bytes).map_err(|e| StoreError::io(&p, e))?;
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&p, fs::Permissions::from_mode(0o600)).map_err(|e| StoreError::io(&p, e))?;
            Ok(kp)
        }
        Err(e) => Err(StoreError::io(&p, e)),
    }
}

/// The X25519 identity data keys are wrapped to for this node, derived
/// from its identity key (`backmesh_crypt::wrap`): nothing more to keep.
/// `None` for a key that is not Ed25519 (backmesh makes only those).
pub fn node_unwrapper(keypair: &libp2p::identity::Keypair) -> Option<backmesh_crypt::wrap::Identity> {
    let ed = keypair.clone().try_into_ed25519().ok()?;
    let seed: [u8; 32] = ed.secret().as_ref().try_into().ok()?;
    Some(backmesh_crypt::wrap::Identity::of_node(&seed))
}

/// How long received members wait for their archive's commit before
/// collection may take them.
const INBOUND_GRACE: std::time::Duration = std::time::Duration::from_secs(3600);

/// `sha256(node ‖ 0 ‖ path)`, first 16 bytes: the key of one backup series.
pub fn series_key(node: &str, path: &str) -> [u8; 16] {
    let mut h = Sha256::new();
    h.update(node.as_bytes());
    h.update([0]);
    h.update(path.as_bytes());
    let d: [u8; 32] = h.finalize().into();
    let mut k = [0u8; 16];
    k.copy_from_slice(&d[..16]);
    k
}

fn archive_key(s: &ArchiveSummary) -> Vec<u8> {
    let mut k = series_key(&s.node, &s.path).to_vec();
    // By order in the series (not the clock), negatives first.
    k.extend_from_slice(&((s.order() as u64) ^ (1 << 63)).to_be_bytes());
    k.extend_from_slice(s.id.as_bytes());
    k
}

fn cbor<T: Serialize>(v: &T) -> Vec<u8> {
    let mut out = Vec::new();
    let _ = ciborium::into_writer(v, &mut out);
    out
}

fn from_cbor<T: for<'de> Deserialize<'de>>(b: &[u8]) -> Result<T, StoreError> {
    ciborium::from_reader(b).map_err(|e| StoreError::Index { reason: format!("corrupt index record: {e}") })
}

pub use crate::disk::write_atomic;

impl Store {
    /// Opens (creating if needed) the store in `data_dir`, with sled at `data_dir/db`.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        fs::create_dir_all(data_dir).map_err(|e| StoreError::io(data_dir, e))?;
        let kv = SledKv::open(&data_dir.join("db"))?;
        Self::open_with(data_dir, Arc::new(kv))
    }

    /// Opens the store with any index implementation.
    pub fn open_with(data_dir: &Path, kv: Arc<dyn KvStore>) -> Result<Self, StoreError> {
        for sub in ["segments", "manifests", "staging"] {
            let p = data_dir.join(sub);
            fs::create_dir_all(&p).map_err(|e| StoreError::io(&p, e))?;
        }
        let store = Store {
            root: data_dir.to_path_buf(),
            kv,
            pins: Mutex::default(),
            held: Mutex::default(),
            gc_lock: Mutex::default(),
            inbound: Mutex::default(),
            identity: load_identity(data_dir)?,
            bind_lock: Mutex::default(),
            fan_out: (0..256).map(|_| std::sync::OnceLock::new()).collect(),
            clock: Arc::new(SystemClock),
            data_key: keys::slot(),
        };
        store.load_data_key()?;
        // Work a crashed process left half done is abandoned.
        let staging = store.root.join("staging");
        if let Ok(entries) = fs::read_dir(&staging) {
            for e in entries.flatten() {
                let _ = fs::remove_dir_all(e.path()).or_else(|_| fs::remove_file(e.path()));
            }
        }
        store.reconcile()?;
        Ok(store)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// This store reading the time from `clock` (tests, the simulator).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// The time as this store reads it (milliseconds since the epoch).
    pub fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    /// This data directory's identity key.
    pub fn identity(&self) -> &libp2p::identity::Keypair {
        &self.identity
    }

    /// This data directory's peer id.
    pub fn peer_id(&self) -> String {
        self.identity.public().to_peer_id().to_string()
    }

    /// The peer id whose seal node `node`'s manifests must carry here.
    pub fn origin_of(&self, node: &str) -> Result<Option<String>, StoreError> {
        origin_bound(self.kv.as_ref(), node)
    }

    /// Binds node name `node` to peer id `peer` unless it is bound already;
    /// the binding in force after.
    pub fn bind_origin(&self, node: &str, peer: &str) -> Result<String, StoreError> {
        let _one_at_a_time = self.bind_lock.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(bound) = self.origin_of(node)? {
            return Ok(bound);
        }
        self.kv.put(ORIGINS, node.as_bytes(), peer.as_bytes())?;
        self.kv.flush()?;
        Ok(peer.to_string())
    }

    /// Binds node name `node` to peer id `peer` from `at_ms` on, in place
    /// of `former`, under the operator's order (a rebuilt server): what
    /// `former` sealed before `at_ms` stays that node's. Idempotent, and
    /// in any order: of a chain of rebinds (A→B, then B→C), every former
    /// identity is kept, and the name ends bound to the newest.
    pub fn rebind_origin(&self, node: &str, peer: &str, former: &str, at_ms: i64) -> Result<(), StoreError> {
        let _one_at_a_time = self.bind_lock.lock().unwrap_or_else(|p| p.into_inner());
        let mut was = origin_former(self.kv.as_ref(), node)?;
        if !was.iter().any(|(p, _)| p == former) {
            was.push((former.to_string(), at_ms));
            self.kv.put(FORMER_ORIGINS, node.as_bytes(), &cbor(&was))?;
        }
        // A later rebind moved the name on from `peer` already.
        if was.iter().any(|(p, until)| p == peer && *until > at_ms) {
            self.kv.flush()?;
            return Ok(());
        }
        self.kv.put(ORIGINS, node.as_bytes(), peer.as_bytes())?;
        self.kv.flush()?;
        Ok(())
    }

    /// Whether `m` may be kept or trusted here as an archive of its node:
    /// it must carry the seal of the peer id that node is bound to here.
    /// The first sealed manifest of a node binds it, if `claimant` (the
    /// peer the mesh knows by that name, and by that name alone) is its
    /// signer; a node is bound once, so a peer that holds the swarm key
    /// cannot replace, evict or impersonate another node's archives.
    pub fn check_origin(&self, m: &Manifest, claimant: Option<&str>) -> Result<(), StoreError> {
        let refuse = |reason: String| StoreError::Unsealed {
            node: m.node.clone(),
            path: m.path.clone(),
            id: m.id.clone(),
            reason,
        };
        let Some(signer) = m.signer() else {
            return Err(refuse("it carries no seal (made by a backmesh before seals, or forged); a node that holds it can still restore it from its own store".into()));
        };
        // An identity the node had before the operator bound it again
        // vouches for what it made before then.
        let former = || -> Result<bool, StoreError> {
            let was = origin_former(self.kv.as_ref(), &m.node)?;
            Ok(was.iter().any(|(p, until)| p == signer && m.created_ms < *until))
        };
        match self.origin_of(&m.node)? {
            Some(bound) if bound == signer => Ok(()),
            Some(_) if former()? => Ok(()),
            Some(bound) => Err(refuse(format!(
                "it is sealed by {signer}, but node {}'s archives are sealed by {bound} here",
                m.node
            ))),
            None if claimant == Some(signer) => {
                self.bind_origin(&m.node, signer)?;
                Ok(())
            }
            None => Err(StoreError::OriginNotKnownYet {
                node: m.node.clone(),
                path: m.path.clone(),
                id: m.id.clone(),
                signer: signer.to_string(),
            }),
        }
    }

    /// The embedded index, shared with other areas (the log, the queue).
    pub fn kv(&self) -> Arc<dyn KvStore> {
        Arc::clone(&self.kv)
    }

    fn member_path(&self, d: &Digest) -> PathBuf {
        let hex = d.to_hex();
        self.root.join("segments").join(&hex[..2]).join(format!("{hex}.gz"))
    }

    /// Where archive `id`'s manifest lives; an id that could leave the
    /// store (it comes from peers and requests) is refused here.
    fn manifest_path(&self, node: &str, path: &str, id: &str) -> Result<PathBuf, StoreError> {
        if !crate::archive::manifest::valid_id(id) {
            return Err(StoreError::NoSuchArchive { node: node.into(), path: path.into(), id: id.into() });
        }
        Ok(self.root.join("manifests").join(hex::encode(series_key(node, path))).join(format!("{id}.bmm")))
    }

    /// The stored bytes of archive `id`'s manifest, as written.
    pub fn manifest_bytes(&self, node: &str, path: &str, id: &str) -> Result<Vec<u8>, StoreError> {
        let p = self.manifest_path(node, path, id)?;
        fs::read(&p).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => {
                StoreError::NoSuchArchive { node: node.into(), path: path.into(), id: id.into() }
            }
            _ => StoreError::io(&p, e),
        })
    }

    pub fn has_member(&self, d: &Digest) -> bool {
        use std::os::fd::AsRawFd;
        let slot = &self.fan_out[usize::from(d.0[0])];
        let dir = match slot.get() {
            Some(dir) => dir,
            None => match File::open(self.member_path(d).parent().unwrap_or(Path::new("/nonexistent"))) {
                Ok(f) => slot.get_or_init(|| f),
                // Not made yet: no member of that prefix is stored.
                Err(_) => return false,
            },
        };
        let mut name = [0u8; 64 + 4];
        let mut hex = [0u8; 64];
        name[..64].copy_from_slice(d.hex_into(&mut hex));
        name[64..67].copy_from_slice(b".gz");
        let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
        // SAFETY: `name` is NUL-terminated, `dir` an open descriptor, and
        // `st` a buffer the call fills.
        unsafe { libc::fstatat(dir.as_raw_fd(), name.as_ptr().cast(), st.as_mut_ptr(), libc::AT_SYMLINK_NOFOLLOW) == 0 }
    }

    /// A member's bytes as stored, unchecked: for a sender whose receiver
    /// checks every member itself (replication).
    pub fn read_member_unchecked(&self, d: &Digest) -> Result<Vec<u8>, StoreError> {
        let p = self.member_path(d);
        fs::read(&p).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => StoreError::MissingMember { digest: *d },
            _ => StoreError::io(&p, e),
        })
    }

    /// A member's bytes, checked against its digest.
    pub fn read_member_checked(&self, d: &Digest) -> Result<Vec<u8>, StoreError> {
        let p = self.member_path(d);
        let data = fs::read(&p).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => StoreError::MissingMember { digest: *d },
            _ => StoreError::io(&p, e),
        })?;
        let actual = Digest::of(&data);
        if actual != *d {
            return Err(StoreError::DamagedMember { digest: *d, actual });
        }
        Ok(data)
    }

    /// The reuse records the last backup of (node, path) left, if they
    /// were made under `header` (see [`crate::archive::reuse`]).
    pub fn previous_records(&self, node: &str, path: &str, header: &RecordsHeader) -> Option<Previous> {
        Previous::open(&self.records_path(node, path), header)
    }

    fn records_path(&self, node: &str, path: &str) -> PathBuf {
        self.root.join("records").join(hex::encode(series_key(node, path)))
    }

    /// A file for a backup's reuse records, kept by [`Store::keep_records`].
    pub fn new_records(&self) -> Result<tempfile::NamedTempFile, StoreError> {
        let staging = self.root.join("staging");
        tempfile::Builder::new().prefix("records-").tempfile_in(&staging).map_err(|e| StoreError::io(&staging, e))
    }

    /// Makes `records` the reuse records of (node, path), replacing the
    /// last ones. Not synced: a torn file only makes the next backup read
    /// more (every record carries its own CRC).
    pub fn keep_records(&self, node: &str, path: &str, records: tempfile::NamedTempFile) -> Result<(), StoreError> {
        let to = self.records_path(node, path);
        let dir = self.root.join("records");
        fs::create_dir_all(&dir).map_err(|e| StoreError::io(&dir, e))?;
        records.persist(&to).map_err(|e| StoreError::io(&to, e.error))?;
        Ok(())
    }

    /// Forgets the reuse records of (node, path): the next backup reads everything.
    pub fn drop_records(&self, node: &str, path: &str) {
        let _ = fs::remove_file(self.records_path(node, path));
    }

    /// Remembers, for members a backup made again from much the same bytes
    /// as an earlier member, which member that was and the gzip level.
    pub fn set_bases(&self, bases: &[(Digest, Digest)], level: u32) -> Result<(), StoreError> {
        for (new, base) in bases {
            self.kv.put(BASES, &new.0, &cbor(&(base, level)))?;
        }
        Ok(())
    }

    /// The earlier member `d` was made from much as, and the gzip level
    /// it was made at, if this node made it so and still holds that member.
    pub fn base_of(&self, d: &Digest) -> Option<(Digest, u32)> {
        let v = self.kv.get(BASES, &d.0).ok()??;
        let (base, level): (Digest, u32) = from_cbor(&v).ok()?;
        self.has_member(&base).then_some((base, level))
    }

    /// A member's raw (inflated) bytes, checked against its digest, at
    /// most `limit` of them.
    pub fn raw_member(&self, d: &Digest, limit: u64) -> Result<Vec<u8>, StoreError> {
        use std::io::Read as _;
        let data = self.read_member_checked(d)?;
        let mut raw = Vec::new();
        let damaged = |actual| StoreError::DamagedMember { digest: *d, actual };
        flate2::read::MultiGzDecoder::new(&data[..])
            .take(limit.saturating_add(1))
            .read_to_end(&mut raw)
            .map_err(|_| damaged(Digest::default()))?;
        if raw.len() as u64 > limit {
            return Err(damaged(Digest::default()));
        }
        Ok(raw)
    }

    fn pin(&self, d: &Digest) -> bool {
        self.pin_only(d);
        self.has_member(d)
    }

    fn pin_only(&self, d: &Digest) {
        let mut pins = self.pins.lock().unwrap_or_else(|e| e.into_inner());
        *pins.entry(*d).or_default() += 1;
    }

    fn unpin(&self, ds: &[Digest]) {
        let mut pins = self.pins.lock().unwrap_or_else(|e| e.into_inner());
        for d in ds {
            if let Some(n) = pins.get_mut(d) {
                *n -= 1;
                if *n == 0 {
                    pins.remove(d);
                }
            }
        }
    }

    /// Archives of (node, path), newest first.
    pub fn list(&self, node: &str, path: &str) -> Result<Vec<ArchiveSummary>, StoreError> {
        let mut out: Vec<ArchiveSummary> = self
            .kv
            .scan_prefix(ARCHIVES, &series_key(node, path))?
            .iter()
            .map(|(_, v)| from_cbor(v))
            .collect::<Result<_, _>>()?;
        out.retain(|s| s.node == node && s.path == path);
        out.reverse();
        Ok(out)
    }

    /// Archives this node keeps visible, by series (node, path), newest
    /// first: those `keep` shows at `now_ms`, hidden ones aside. A store that cannot be listed keeps
    /// none (said in the log).
    pub fn held_series(&self, keep: Retention, now_ms: i64) -> BTreeMap<(String, String), Vec<String>> {
        let mut out: BTreeMap<(String, String), Vec<ArchiveSummary>> = BTreeMap::new();
        match self.list_all() {
            Ok(all) => {
                for s in all {
                    out.entry((s.node.clone(), s.path.clone())).or_default().push(s);
                }
            }
            Err(e) => tracing::error!("cannot list the archives kept here: {e}"),
        }
        out.into_iter()
            .map(|(k, mut v)| {
                v.sort_by(|a, b| (b.order(), &b.id).cmp(&(a.order(), &a.id)));
                // Hidden ones are kept where they are: never pushed, never
                // said to be kept (the catalog shows the visible ones).
                v.retain(|a| !a.hidden);
                (k, keep.visible(&v, now_ms).into_iter().map(|a| a.id.clone()).collect())
            })
            .collect()
    }

    /// Every archive in the store.
    pub fn list_all(&self) -> Result<Vec<ArchiveSummary>, StoreError> {
        self.kv.scan_prefix(ARCHIVES, &[])?.iter().map(|(_, v)| from_cbor(v)).collect()
    }

    pub fn latest(&self, node: &str, path: &str) -> Result<Option<ArchiveSummary>, StoreError> {
        Ok(self.list(node, path)?.into_iter().next())
    }

    /// The manifest of archive `id` (or of the newest, if `id` is `None`).
    pub fn manifest(&self, node: &str, path: &str, id: Option<&str>) -> Result<Manifest, StoreError> {
        let id = match id {
            Some(id) => id.to_string(),
            None => match self.latest(node, path)? {
                Some(s) => s.id,
                None => {
                    return Err(StoreError::NoSuchArchive {
                        node: node.into(),
                        path: path.into(),
                        id: "(latest)".into(),
                    })
                }
            },
        };
        let p = self.manifest_path(node, path, &id)?;
        let bytes = fs::read(&p).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => {
                StoreError::NoSuchArchive { node: node.into(), path: path.into(), id: id.clone() }
            }
            _ => StoreError::io(&p, e),
        })?;
        Manifest::decode(&bytes).map_err(|source| StoreError::Manifest { path: p, source })
    }

    pub fn stat_cache(&self, node: &str, path: &str) -> Result<Option<StatCacheEntry>, StoreError> {
        match self.kv.get(STAT_CACHE, &series_key(node, path))? {
            Some(v) => Ok(from_cbor(&v).ok()),
            None => Ok(None),
        }
    }

    pub fn set_stat_cache(&self, node: &str, path: &str, entry: &StatCacheEntry) -> Result<(), StoreError> {
        self.kv.put(STAT_CACHE, &series_key(node, path), &cbor(entry))
    }

    /// Digests of `m`'s objects (members, and for an encrypted archive
    /// keyframes and its sealed file table) this store lacks, each once,
    /// in order.
    pub fn missing_members(&self, m: &Manifest) -> Vec<Digest> {
        let mut seen = HashSet::new();
        m.digests().filter(|d| seen.insert(*d) && !self.has_member(d)).collect()
    }

    /// Whether archive `id` of (node, path) is complete here.
    pub fn has_archive(&self, node: &str, path: &str, id: &str) -> bool {
        self.manifest_path(node, path, id).is_ok_and(|p| p.exists())
    }

    /// Keeps members received from a peer: each is checked against its
    /// digest, written to staging, fsynced, then moved into place. They are
    /// protected from collection for an hour so that the archive they
    /// belong to can be committed. Returns the bytes newly stored.
    pub fn put_members(&self, members: &[(Digest, &[u8])]) -> Result<u64, StoreError> {
        let mut txn = self.begin()?;
        let mut stored = 0;
        for (d, data) in members {
            let actual = Digest::of(data);
            if actual != *d {
                return Err(StoreError::DamagedMember { digest: *d, actual });
            }
            if !self.has_member(d) {
                stored += data.len() as u64;
            }
            txn.member(d, data).map_err(|e| StoreError::io(&self.root.join("staging"), e))?;
        }
        txn.publish()?;
        let mut inbound = self.inbound.lock().unwrap_or_else(|e| e.into_inner());
        let now = std::time::Instant::now();
        inbound.retain(|_, t| now.duration_since(*t) < INBOUND_GRACE);
        for (d, _) in members {
            inbound.insert(*d, now);
        }
        Ok(stored)
    }

    /// Makes a received archive visible once all its members are here:
    /// `Ok(missing)` lists what is still absent (nothing was changed then);
    /// an archive already kept is left as it is.
    pub fn adopt(&self, m: &Manifest) -> Result<Vec<Digest>, StoreError> {
        let _guard = self.gc_lock.lock().unwrap_or_else(|e| e.into_inner());
        if self.has_archive(&m.node, &m.path, &m.id) {
            return Ok(Vec::new());
        }
        let missing = self.missing_members(m);
        if !missing.is_empty() {
            return Ok(missing);
        }
        let p = self.manifest_path(&m.node, &m.path, &m.id)?;
        write_atomic(&p, &m.encode()).map_err(|e| StoreError::io(&p, e))?;
        self.write_member_list(&p, m);
        let s = ArchiveSummary::stored_at(m, self.now_ms());
        self.kv.put(ARCHIVES, &archive_key(&s), &cbor(&s))?;
        self.kv.flush()?;
        let mut inbound = self.inbound.lock().unwrap_or_else(|e| e.into_inner());
        for d in m.digests() {
            inbound.remove(&d);
        }
        Ok(Vec::new())
    }

    /// Replaces a damaged or missing member with `data` (checked first).
    pub fn repair_member(&self, d: &Digest, data: &[u8]) -> Result<(), StoreError> {
        let actual = Digest::of(data);
        if actual != *d {
            return Err(StoreError::DamagedMember { digest: *d, actual });
        }
        let p = self.member_path(d);
        write_atomic(&p, data).map_err(|e| StoreError::io(&p, e))
    }

    /// Deletes one archive's manifest (its members go at the next collection).
    pub fn remove_archive(&self, node: &str, path: &str, id: &str) -> Result<bool, StoreError> {
        let Some(s) = self.list(node, path)?.into_iter().find(|s| s.id == id) else { return Ok(false) };
        let p = self.manifest_path(node, path, id)?;
        match fs::remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(StoreError::io(&p, e)),
        }
        let _ = fs::remove_file(p.with_extension(MEMBER_LIST_EXT));
        self.kv.delete(ARCHIVES, &archive_key(&s))?;
        Ok(true)
    }

    /// Writes the archive as one `.tgz` to `out`, checking every member and
    /// (where the manifest records it) the whole file's sha256. Returns the
    /// length and sha256 of what was written.
    pub fn export_tgz(&self, m: &Manifest, out: &mut dyn Write) -> Result<(u64, Digest), StoreError> {
        self.export_tgz_with(m, None, out)
    }

    /// [`Store::export_tgz`], an encrypted archive opened with `key`: the
    /// `.tgz` a full run makes (a sealed delta's member compressed again
    /// as the origin did).
    pub fn export_tgz_with(
        &self,
        m: &Manifest,
        key: Option<&backmesh_crypt::DataKey>,
        out: &mut dyn Write,
    ) -> Result<(u64, Digest), StoreError> {
        let key = match (m.encrypted(), key) {
            (false, _) => None,
            (true, Some(k)) => Some(k),
            (true, None) => {
                return Err(StoreError::Encrypted { node: m.node.clone(), path: m.path.clone(), id: m.id.clone() })
            }
        };
        let read = |o: &crate::archive::manifest::ObjRef| {
            self.read_member_unchecked(&o.cid).map_err(|e| io::Error::other(e.to_string()))
        };
        let mut hasher = Sha256::new();
        let mut len = 0u64;
        for member in &m.members {
            let data = match key {
                None => self.read_member_checked(&member.sha256)?,
                Some(key) => crate::archive::sealed::gzip_of(key, member, &read).map_err(|e| match e {
                    crate::archive::sealed::OpenError::Damaged { expected, actual } => {
                        StoreError::DamagedMember { digest: expected, actual }
                    }
                    crate::archive::sealed::OpenError::Missing { digest, .. } => StoreError::MissingMember { digest },
                    other => StoreError::Io {
                        path: PathBuf::from("<sealed member>"),
                        source: io::Error::other(other.to_string()),
                    },
                })?,
            };
            hasher.update(&data);
            out.write_all(&data).map_err(|e| StoreError::io(Path::new("<output>"), e))?;
            len += data.len() as u64;
        }
        let actual = Digest::from_hasher(hasher);
        match m.tgz_digest() {
            Some(expected) if expected != actual => Err(StoreError::TgzMismatch { id: m.id.clone(), expected, actual }),
            _ => Ok((len, actual)),
        }
    }

    /// Re-hashes every object of `m` (no key needed: each is named by the
    /// SHA-256 of its stored bytes, sealed or not).
    pub fn verify(&self, m: &Manifest) -> VerifyReport {
        let mut r = VerifyReport::default();
        let mut seen = HashSet::new();
        for d in m.digests() {
            r.members += 1;
            if !seen.insert(d) {
                continue;
            }
            match self.read_member_checked(&d) {
                Ok(_) => {}
                Err(StoreError::DamagedMember { digest, .. }) => r.damaged.push(digest),
                Err(_) => r.missing.push(d),
            }
        }
        r
    }

    /// Makes the index agree with the manifest files on disk.
    pub fn reconcile(&self) -> Result<(), StoreError> {
        // Index entries by (series directory, archive id): a manifest file
        // already indexed is not read again (opening a store with many
        // large manifests would otherwise decode them all).
        let indexed: HashMap<(String, String), Vec<u8>> = self
            .kv
            .scan_prefix(ARCHIVES, &[])?
            .into_iter()
            .filter_map(|(k, _)| {
                let id = std::str::from_utf8(k.get(24..)?).ok()?.to_string();
                Some(((hex::encode(k.get(..16)?), id), k))
            })
            .collect();
        let mut present: HashSet<Vec<u8>> = HashSet::new();
        let mut found = Vec::new();
        let dir = self.root.join("manifests");
        for series in fs::read_dir(&dir).map_err(|e| StoreError::io(&dir, e))?.flatten() {
            let series_hex = series.file_name().to_string_lossy().into_owned();
            for f in fs::read_dir(series.path()).map_err(|e| StoreError::io(&series.path(), e))?.flatten() {
                let p = f.path();
                match p.extension().and_then(|e| e.to_str()) {
                    Some("bmm") => {}
                    // A member list stays while its manifest does.
                    Some(MEMBER_LIST_EXT) if p.with_extension("bmm").exists() => continue,
                    _ => {
                        // A temp file from an interrupted write, or a list left by a crash.
                        let _ = fs::remove_file(&p);
                        continue;
                    }
                }
                let id = p.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
                if let Some(k) = indexed.get(&(series_hex.clone(), id)) {
                    present.insert(k.clone());
                    continue;
                }
                let bytes = fs::read(&p).map_err(|e| StoreError::io(&p, e))?;
                let m = Manifest::decode(&bytes).map_err(|source| StoreError::Manifest { path: p.clone(), source })?;
                // Stored when its manifest was written.
                let written = f.metadata().and_then(|md| md.modified()).ok();
                let stored_ms = written
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map_or(0, |d| d.as_millis() as i64);
                found.push(ArchiveSummary { stored_ms, ..ArchiveSummary::of(&m) });
            }
        }
        for k in indexed.values() {
            if !present.contains(k) {
                self.kv.delete(ARCHIVES, k)?;
            }
        }
        for s in &found {
            self.kv.put(ARCHIVES, &archive_key(s), &cbor(s))?;
        }
        self.kv.flush()
    }

    pub fn flush(&self) -> Result<(), StoreError> {
        self.kv.flush()
    }

    /// Writes and flushes one small record: whether the index still takes
    /// writes (see [`health`]).
    pub fn probe_index(&self, now_ms: i64) -> Result<(), StoreError> {
        self.kv.put("health", b"probe", &now_ms.to_be_bytes())?;
        self.kv.flush()
    }
}

impl MemberSource for Store {
    fn read_member(&self, m: &MemberRef) -> io::Result<Vec<u8>> {
        // The restorer checks the digest itself and reports which member failed.
        let p = self.member_path(&m.sha256);
        let mut f = File::open(&p)?;
        let mut buf = Vec::with_capacity(m.compressed_len.min(4 << 20) as usize);
        f.read_to_end(&mut buf)?;
        Ok(buf)
    }
}
