//! Restoring: a tar stream (from a manifest's members, or any `.tgz`) into
//! a directory, exactly and safely.
//!
//! - Everything is written into a fresh staging directory beside the target
//!   and moved into place only when complete and synced: a failed restore
//!   leaves the target as it was.
//! - Entries that would land outside the target are refused: absolute
//!   paths, `..`, and writes through symlinks. Symlinks are created last, so
//!   no file write can follow one the archive placed; a symlink whose parent
//!   is a symlink is refused.
//! - From a manifest, every member's SHA-256 is checked before its bytes are
//!   used, and the tree digest at the end.

use std::collections::{BTreeMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{channel, sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex};

use filetime::FileTime;
use flate2::read::MultiGzDecoder;
use sha2::{Digest as _, Sha256};

use super::create::Progress;
use super::manifest::{members_tree_digest, Manifest, MemberRef, TreeRule};
use crate::hash::Digest;

/// Where restore gets members from (a local store, a peer, …).
pub trait MemberSource: Sync {
    fn read_member(&self, member: &MemberRef) -> io::Result<Vec<u8>>;

    /// Only `members` will be read (a part of an archive): a source that
    /// reads ahead reads no other.
    fn expect(&self, _members: &[MemberRef]) {}
}

#[derive(Clone, Debug, Default)]
pub struct RestoreOptions {
    /// Replace a non-empty target (the old tree is removed only after the
    /// new one is complete).
    pub overwrite: bool,
    /// Inflate threads; 0 means one per core.
    pub threads: usize,
    /// Restore owners (uid/gid). `None`: only when running as root.
    pub same_owner: Option<bool>,
    /// Live counters (entries, bytes written) for a progress display.
    pub progress: Option<Arc<Progress>>,
    /// The data key an encrypted archive is opened with.
    pub key: Option<backmesh_crypt::DataKey>,
    /// Only the entries these patterns select (`backmesh_table::Patterns`),
    /// with the directories above them; read from the members that hold
    /// them alone. Empty: the whole archive.
    pub include: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RestoreReport {
    pub entries: u64,
    pub bytes: u64,
    /// Entries not restored (devices, FIFOs) and why.
    pub warnings: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("target {path} is not empty; restore into a new or empty directory, or ask to overwrite")]
    TargetNotEmpty { path: PathBuf },
    #[error("target {path} exists and is not a directory")]
    TargetNotDirectory { path: PathBuf },
    #[error("refused entry `{entry}`: {reason}; nothing was restored")]
    Unsafe { entry: String, reason: &'static str },
    #[error("entry `{entry}` conflicts with an earlier entry: {reason}; nothing was restored")]
    Conflict { entry: String, reason: String },
    #[error("member {index} is damaged: expected sha256 {expected}, found {actual}; nothing was restored")]
    DamagedMember { index: usize, expected: Digest, actual: Digest },
    #[error("member {index} ({digest}) could not be read: {source}")]
    MissingMember {
        index: usize,
        digest: Digest,
        #[source]
        source: io::Error,
    },
    #[error("the restored tree does not match the archive's tree digest; nothing was restored")]
    TreeDigest,
    #[error("no entry of archive {id} matches {patterns}; nothing was restored")]
    NoMatch { id: String, patterns: String },
    #[error("{0}")]
    Pattern(String),
    #[error(
        "archive {id} cannot be read in part: its file table does not place its entries (an archive made by an \
         older version); restore or fetch it whole"
    )]
    Unplaced { id: String },
    #[error(
        "--overwrite replaces the whole target: a restore of some files goes into a new or empty directory \
         (then move them where they belong)"
    )]
    PartOverwrite,
    #[error(
        "archive {id} is encrypted: it is read with its node's data key (on that node) or the operator's \
         recovery key; nothing was restored"
    )]
    Encrypted { id: String },
    #[error("not a valid tar.gz stream: {source}")]
    Format {
        #[source]
        source: io::Error,
    },
    #[error("could not write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl RestoreError {
    fn write(path: &Path, source: io::Error) -> Self {
        RestoreError::Write { path: path.to_path_buf(), source }
    }
}

/// Restores any `.tgz` stream (single or multi-member) into `target`.
pub fn restore_tgz<R: Read>(reader: R, target: &Path, opts: &RestoreOptions) -> Result<RestoreReport, RestoreError> {
    let gz = MultiGzDecoder::new(BufReader::with_capacity(1 << 20, reader));
    into_target(target, opts, |staging| {
        let failed = Mutex::new(None);
        extract(gz, staging, opts, &failed)
    })
}

/// Restores the whole archive `manifest` describes, reading members from
/// `source` (`opts.include` is for [`super::partial::restore_archive`]).
pub fn restore_whole(
    manifest: &Manifest,
    source: &dyn MemberSource,
    target: &Path,
    opts: &RestoreOptions,
) -> Result<RestoreReport, RestoreError> {
    let key = match (manifest.encrypted(), &opts.key) {
        (false, _) => None,
        (true, Some(k)) => Some(k),
        (true, None) => return Err(RestoreError::Encrypted { id: manifest.id.clone() }),
    };
    if let Some(p) = opts.progress.as_ref().filter(|_| manifest.stats.content_bytes > 0) {
        p.total.store(manifest.stats.content_bytes, Ordering::Relaxed);
    }
    into_target(target, opts, |staging| {
        let failed: Mutex<Option<RestoreError>> = Mutex::new(None);
        let all: Vec<usize> = (0..manifest.members.len()).collect();
        let members = &manifest.members;
        in_order(manifest, &all, source, key, opts.threads, &failed, |reader| {
            reader.hasher = (manifest.tree_rule == TreeRule::RawStream).then(Sha256::new);
            let report = extract(&mut *reader, staging, opts, &failed)?;
            // tar stops at the end marker; read (and check) what follows too.
            io::copy(reader, &mut io::sink()).map_err(|source| take_failure(&failed, source))?;
            let tree = match manifest.tree_rule {
                TreeRule::RawStream => Digest::from_hasher(reader.hasher.clone().unwrap_or_default()),
                // Every member was checked against its digest as it was read.
                TreeRule::Members => members_tree_digest(members),
                // Every object was checked against its name as it was
                // read, and the names against the tree when the
                // manifest was decoded.
                TreeRule::Objects => manifest.tree_digest,
            };
            if tree != manifest.tree_digest {
                return Err(RestoreError::TreeDigest);
            }
            Ok(report)
        })
    })
}

/// Runs `consume` on the raw bytes of members `order` (indices, in that
/// order) of `manifest`, read from `source` and inflated (or opened with
/// `key`) by `threads` threads ahead of it (0: one per core), each checked
/// before it is handed on.
pub(crate) fn in_order<T>(
    manifest: &Manifest,
    order: &[usize],
    source: &dyn MemberSource,
    key: Option<&backmesh_crypt::DataKey>,
    threads: usize,
    failed: &Mutex<Option<RestoreError>>,
    consume: impl FnOnce(&mut Ordered<'_>) -> Result<T, RestoreError>,
) -> Result<T, RestoreError> {
    let threads =
        if threads == 0 { std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2) } else { threads };
    let members = &manifest.members;
    let next_index = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let permits = threads * 2 + 2;
    let (permit_tx, permit_rx) = sync_channel::<()>(permits);
    for _ in 0..permits {
        let _ = permit_tx.send(());
    }
    let permit_rx = Mutex::new(permit_rx);
    let (chunk_tx, chunk_rx) = channel::<(usize, Result<Vec<u8>, RestoreError>)>();
    std::thread::scope(|s| {
        for _ in 0..threads {
            let tx = chunk_tx.clone();
            let (next_index, stop, permit_rx) = (&next_index, &stop, &permit_rx);
            s.spawn(move || loop {
                if permit_rx.lock().unwrap_or_else(|e| e.into_inner()).recv().is_err() {
                    return;
                }
                let at = next_index.fetch_add(1, Ordering::SeqCst);
                let Some(&i) = order.get(at).filter(|&&i| i < members.len()) else { return };
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                let raw = match key {
                    None => inflate_member(i, &members[i], source),
                    Some(key) => open_sealed(i, key, &members[i], source),
                };
                if tx.send((at, raw)).is_err() {
                    return;
                }
            });
        }
        drop(chunk_tx);
        let mut reader = Ordered {
            rx: chunk_rx,
            pending: BTreeMap::new(),
            next: 0,
            total: order.len(),
            current: Vec::new(),
            pos: 0,
            permit_tx,
            hasher: None,
            failed,
        };
        let result = consume(&mut reader);
        stop.store(true, Ordering::Relaxed);
        drop(reader);
        result
    })
}

/// Member `index` of an encrypted archive, opened with `key` (its
/// keyframe read too, for a delta).
fn open_sealed(
    index: usize,
    key: &backmesh_crypt::DataKey,
    m: &MemberRef,
    source: &dyn MemberSource,
) -> Result<Vec<u8>, RestoreError> {
    use super::sealed::OpenError;
    let read = |o: &super::manifest::ObjRef| {
        source.read_member(&MemberRef { sha256: o.cid, raw_len: 0, compressed_len: o.len, key: None })
    };
    super::sealed::open_member(key, m, &read).map(|(raw, _)| raw).map_err(|e| match e {
        OpenError::Missing { digest, source } => RestoreError::MissingMember { index, digest, source },
        OpenError::Damaged { expected, actual } => RestoreError::DamagedMember { index, expected, actual },
        other => RestoreError::Format { source: io::Error::other(other.to_string()) },
    })
}

fn inflate_member(index: usize, m: &MemberRef, source: &dyn MemberSource) -> Result<Vec<u8>, RestoreError> {
    let data = source.read_member(m).map_err(|e| RestoreError::MissingMember { index, digest: m.sha256, source: e })?;
    let actual = Digest::of(&data);
    if actual != m.sha256 {
        return Err(RestoreError::DamagedMember { index, expected: m.sha256, actual });
    }
    // Never more than the manifest says (plus one byte, to see it lie): a
    // member that inflates further is refused, however small it was.
    let mut raw = Vec::with_capacity(m.raw_len.min(4 << 20) as usize);
    MultiGzDecoder::new(&data[..])
        .take(m.raw_len.saturating_add(1))
        .read_to_end(&mut raw)
        .map_err(|e| RestoreError::Format { source: e })?;
    if raw.len() as u64 != m.raw_len {
        return Err(RestoreError::Format {
            source: io::Error::other(format!("member {index} holds {} bytes, manifest says {}", raw.len(), m.raw_len)),
        });
    }
    Ok(raw)
}

/// Members' raw bytes in the order asked, as one `Read` or member by member.
pub(crate) struct Ordered<'a> {
    rx: Receiver<(usize, Result<Vec<u8>, RestoreError>)>,
    pending: BTreeMap<usize, Result<Vec<u8>, RestoreError>>,
    next: usize,
    total: usize,
    current: Vec<u8>,
    pos: usize,
    permit_tx: SyncSender<()>,
    /// The raw stream's hash, for a tree digest of [`TreeRule::RawStream`]
    /// (`None`: not needed).
    hasher: Option<Sha256>,
    failed: &'a Mutex<Option<RestoreError>>,
}

impl Ordered<'_> {
    /// The next member's raw bytes whole (`None` past the last); what a
    /// `read` left of the current one is dropped.
    pub(crate) fn next_member(&mut self) -> io::Result<Option<Vec<u8>>> {
        if self.next == self.total {
            return Ok(None);
        }
        let chunk = loop {
            if let Some(c) = self.pending.remove(&self.next) {
                break c;
            }
            match self.rx.recv() {
                Ok((i, c)) => {
                    self.pending.insert(i, c);
                }
                Err(_) => return Err(io::Error::other("member reader stopped")),
            }
        };
        self.next += 1;
        let _ = self.permit_tx.send(());
        match chunk {
            Ok(raw) => {
                if let Some(h) = &mut self.hasher {
                    h.update(&raw);
                }
                Ok(Some(raw))
            }
            Err(e) => {
                let msg = e.to_string();
                *self.failed.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                Err(io::Error::other(msg))
            }
        }
    }
}

impl Read for Ordered<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.current.len() {
            match self.next_member()? {
                None => return Ok(0),
                Some(raw) => {
                    self.current = raw;
                    self.pos = 0;
                }
            }
        }
        let n = buf.len().min(self.current.len() - self.pos);
        buf[..n].copy_from_slice(&self.current[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

pub(crate) fn take_failure(failed: &Mutex<Option<RestoreError>>, source: io::Error) -> RestoreError {
    failed.lock().unwrap_or_else(|p| p.into_inner()).take().unwrap_or(RestoreError::Format { source })
}

enum TargetState {
    Missing,
    Empty,
    Replace,
}

/// Runs `fill` on a fresh staging directory beside `target`, then moves the
/// result into place. On error the staging directory is removed.
/// Removes what restores into `parent/name` killed midway left: their
/// staging directories, `.NAME.backmesh-restore-PID-*`, whose process
/// PID is gone. (A live PID, even reused, keeps its directory: nothing is
/// removed that a restore may still be writing.) Never the old tree a
/// replacing restore moved aside (`.NAME.backmesh-old-*`): that is the
/// user's data.
fn remove_stale_staging(parent: &Path, name: &str) {
    let prefix = format!(".{name}.backmesh-restore-");
    for e in fs::read_dir(parent).into_iter().flatten().flatten() {
        let file = e.file_name();
        let Some(rest) = file.to_str().and_then(|f| f.strip_prefix(&prefix)) else { continue };
        let Some(pid) = rest.split_once('-').and_then(|(p, _)| p.parse::<i32>().ok()).filter(|p| *p > 0) else {
            continue;
        };
        // SAFETY: signal 0 only asks whether the process exists.
        let gone = unsafe { libc::kill(pid, 0) } != 0 && io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH);
        if gone && e.file_type().is_ok_and(|t| t.is_dir()) {
            match fs::remove_dir_all(e.path()) {
                Ok(()) => tracing::info!("removed {}, left by a restore that was killed", e.path().display()),
                Err(err) => {
                    tracing::warn!("cannot remove {}, left by a restore that was killed: {err}", e.path().display())
                }
            }
        }
    }
}

pub(crate) fn into_target(
    target: &Path,
    opts: &RestoreOptions,
    fill: impl FnOnce(&Path) -> Result<RestoreReport, RestoreError>,
) -> Result<RestoreReport, RestoreError> {
    let target = absolute(target).map_err(|e| RestoreError::write(target, e))?;
    let state = match fs::symlink_metadata(&target) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => TargetState::Missing,
        Err(e) => return Err(RestoreError::write(&target, e)),
        Ok(m) if !m.is_dir() => return Err(RestoreError::TargetNotDirectory { path: target }),
        Ok(_) => {
            let empty = fs::read_dir(&target).map_err(|e| RestoreError::write(&target, e))?.next().is_none();
            match (empty, opts.overwrite) {
                (true, _) => TargetState::Empty,
                (false, true) => TargetState::Replace,
                (false, false) => return Err(RestoreError::TargetNotEmpty { path: target }),
            }
        }
    };
    let parent = target.parent().unwrap_or(Path::new("/")).to_path_buf();
    fs::create_dir_all(&parent).map_err(|e| RestoreError::write(&parent, e))?;
    let name = target.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    remove_stale_staging(&parent, &name);
    let staging = tempfile::Builder::new()
        .prefix(&format!(".{name}.backmesh-restore-{}-", std::process::id()))
        .tempdir_in(&parent)
        .map_err(|e| RestoreError::write(&parent, e))?;
    let report = fill(staging.path())?; // dropping `staging` removes it
    sync_fs(staging.path()).map_err(|e| RestoreError::write(staging.path(), e))?;
    let staging = staging.keep();
    let moved = (|| -> io::Result<()> {
        match state {
            TargetState::Missing => fs::rename(&staging, &target),
            TargetState::Empty => {
                fs::remove_dir(&target)?;
                fs::rename(&staging, &target)
            }
            TargetState::Replace => {
                let old = tempfile::Builder::new().prefix(&format!(".{name}.backmesh-old-")).tempdir_in(&parent)?;
                let old_path = old.keep();
                fs::remove_dir(&old_path)?;
                fs::rename(&target, &old_path)?;
                fs::rename(&staging, &target)?;
                fs::remove_dir_all(&old_path)
            }
        }
    })();
    if let Err(e) = moved {
        let _ = fs::remove_dir_all(&staging);
        return Err(RestoreError::write(&target, e));
    }
    if let Ok(dir) = File::open(&parent) {
        let _ = dir.sync_all();
    }
    Ok(report)
}

fn absolute(p: &Path) -> io::Result<PathBuf> {
    if p.is_absolute() {
        Ok(p.to_path_buf())
    } else {
        Ok(std::env::current_dir()?.join(p))
    }
}

/// Makes everything written under `path` durable (one `syncfs`, not one
/// `fsync` per file). Its error says the disk lost a write (Linux ≥ 5.8).
pub(crate) fn sync_fs(path: &Path) -> io::Result<()> {
    let f = File::open(path)?;
    use std::os::fd::AsRawFd;
    // SAFETY: `f` is an open descriptor for the duration of the call.
    if unsafe { libc::syncfs(f.as_raw_fd()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A path from the archive, checked: relative, no `..`. `None` for the root.
fn sanitize(raw: &[u8]) -> Result<Option<PathBuf>, RestoreError> {
    let entry = || String::from_utf8_lossy(raw).into_owned();
    if raw.first() == Some(&b'/') {
        return Err(RestoreError::Unsafe { entry: entry(), reason: "absolute path" });
    }
    let mut out = PathBuf::new();
    for comp in raw.split(|&b| b == b'/') {
        match comp {
            b"" | b"." => {}
            b".." => return Err(RestoreError::Unsafe { entry: entry(), reason: "path contains `..`" }),
            c => out.push(std::ffi::OsStr::from_bytes(c)),
        }
    }
    Ok(if out.as_os_str().is_empty() { None } else { Some(out) })
}

#[derive(Clone, Copy)]
struct Meta {
    mode: u32,
    mtime: FileTime,
    uid: u64,
    gid: u64,
}

/// Files up to this size are read into memory and written by the pool;
/// larger ones are streamed by the extracting thread itself.
const INLINE_MAX: u64 = 1 << 20;

/// How a file's owner and mode are applied.
#[derive(Clone, Copy)]
struct Policy {
    same_owner: bool,
    euid: u32,
    egid: u32,
    umask: u32,
}

struct WriteJob {
    path: PathBuf,
    name: String,
    data: Vec<u8>,
    meta: Meta,
}

struct Extractor<'a> {
    root: &'a Path,
    policy: Policy,
    /// One queue per writer; a path always goes to the same writer, so two
    /// entries of one name are written in archive order.
    writers: Vec<SyncSender<WriteJob>>,
    write_error: &'a Mutex<Option<RestoreError>>,
    hardlinks: Vec<(PathBuf, PathBuf, String)>,
    /// Disconnects when every writer has finished.
    writers_done: Receiver<()>,
    /// Directories known to exist as real directories (no symlinks exist
    /// before the final phase, so they stay that way).
    known_dirs: HashSet<PathBuf>,
    dirs: Vec<(PathBuf, Meta)>,
    symlinks: Vec<(PathBuf, PathBuf, Meta)>,
    report: RestoreReport,
    /// Content bytes written, counted as they are written.
    progress: Option<Arc<Progress>>,
}

pub(crate) fn extract<R: Read>(
    reader: R,
    staging: &Path,
    opts: &RestoreOptions,
    failed: &Mutex<Option<RestoreError>>,
) -> Result<RestoreReport, RestoreError> {
    // SAFETY: these calls have no preconditions; umask is set back at once.
    let (euid, egid, umask) = unsafe {
        let m = libc::umask(0o022);
        libc::umask(m);
        (libc::geteuid(), libc::getegid(), m as u32)
    };
    let policy = Policy { same_owner: opts.same_owner.unwrap_or(euid == 0), euid, egid, umask };
    let write_error: Mutex<Option<RestoreError>> = Mutex::new(None);
    let writers = std::thread::available_parallelism().map(|n| n.get() + 1).unwrap_or(3);
    std::thread::scope(|s| {
        let mut senders = Vec::with_capacity(writers);
        let (done_tx, done_rx) = channel::<()>();
        for _ in 0..writers {
            let (tx, rx) = sync_channel::<WriteJob>(16);
            senders.push(tx);
            let write_error = &write_error;
            let done = done_tx.clone();
            s.spawn(move || {
                let _done = done;
                for job in rx {
                    if let Err(e) = write_file(&job.path, &job.name, &job.data, &job.meta, policy) {
                        write_error.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert(e);
                    }
                }
            });
        }
        drop(done_tx);
        let mut x = Extractor {
            root: staging,
            policy,
            writers: senders,
            write_error: &write_error,
            hardlinks: Vec::new(),
            writers_done: done_rx,
            known_dirs: HashSet::new(),
            dirs: Vec::new(),
            symlinks: Vec::new(),
            report: RestoreReport::default(),
            progress: opts.progress.clone(),
        };
        let mut archive = tar::Archive::new(reader);
        let entries = archive.entries().map_err(|e| take_failure(failed, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| take_failure(failed, e))?;
            x.entry(entry).map_err(|e| match e {
                RestoreError::Format { source } => take_failure(failed, source),
                other => other,
            })?;
            x.check_writers()?;
            if let Some(p) = &opts.progress {
                p.entries.fetch_add(1, Ordering::Relaxed);
            }
        }
        x.finish()
    })
}

/// Creates and fills one file: open (exclusive, no symlink following),
/// write, then owner, mode and mtime, each only when it would differ.
fn write_file(path: &Path, name: &str, data: &[u8], meta: &Meta, p: Policy) -> Result<(), RestoreError> {
    use std::io::Write;
    let plain_mode = meta.mode & 0o777;
    let special = meta.mode & 0o7000 != 0;
    let chown = p.same_owner && (meta.uid != u64::from(p.euid) || meta.gid != u64::from(p.egid));
    let create_mode = if special || chown { 0o600 } else { plain_mode };
    let open =
        || OpenOptions::new().write(true).create_new(true).mode(create_mode).custom_flags(libc::O_NOFOLLOW).open(path);
    let mut f = match open() {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            // A later entry of the same name replaces the file, as tar does.
            match fs::symlink_metadata(path) {
                Ok(m) if m.is_dir() => {
                    return Err(RestoreError::Conflict {
                        entry: name.to_string(),
                        reason: "a file over a directory".into(),
                    })
                }
                _ => fs::remove_file(path).map_err(|e| RestoreError::write(path, e))?,
            }
            open().map_err(|e| RestoreError::write(path, e))?
        }
        Err(e) => return Err(RestoreError::write(path, e)),
    };
    f.write_all(data).map_err(|e| RestoreError::write(path, e))?;
    apply_file(&f, path, meta, p, create_mode)
}

fn apply_file(f: &File, path: &Path, meta: &Meta, p: Policy, create_mode: u32) -> Result<(), RestoreError> {
    let chown = p.same_owner && (meta.uid != u64::from(p.euid) || meta.gid != u64::from(p.egid));
    if chown {
        std::os::unix::fs::fchown(f, Some(meta.uid as u32), Some(meta.gid as u32))
            .map_err(|e| RestoreError::write(path, e))?;
    }
    // Ownership changes clear setuid/setgid: the mode goes on after it.
    if chown || meta.mode != (create_mode & !p.umask) {
        f.set_permissions(fs::Permissions::from_mode(meta.mode)).map_err(|e| RestoreError::write(path, e))?;
    }
    filetime::set_file_handle_times(f, None, Some(meta.mtime)).map_err(|e| RestoreError::write(path, e))
}

impl Extractor<'_> {
    fn entry<R: Read>(&mut self, mut entry: tar::Entry<'_, R>) -> Result<(), RestoreError> {
        let raw_path = entry.path_bytes().into_owned();
        let name = String::from_utf8_lossy(&raw_path).into_owned();
        let rel = sanitize(&raw_path)?;
        let meta = read_meta(&mut entry).map_err(|source| RestoreError::Format { source })?;
        let kind = entry.header().entry_type();
        self.report.entries += 1;
        let Some(rel) = rel else {
            // The archive's root ("./"): its metadata applies to the target.
            if kind.is_dir() {
                self.dirs.push((PathBuf::new(), meta));
            }
            return Ok(());
        };
        let path = self.root.join(&rel);
        match kind {
            tar::EntryType::Directory => {
                self.parents(&rel, &name)?;
                match fs::symlink_metadata(&path) {
                    Ok(m) if m.is_dir() => {}
                    Ok(_) => {
                        return Err(RestoreError::Conflict { entry: name, reason: "a directory over a file".into() })
                    }
                    Err(_) => fs::create_dir(&path).map_err(|e| RestoreError::write(&path, e))?,
                }
                self.known_dirs.insert(rel.clone());
                self.dirs.push((rel, meta));
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                self.parents(&rel, &name)?;
                let size = entry.size();
                if size <= INLINE_MAX {
                    let mut data = Vec::with_capacity(size as usize);
                    entry.read_to_end(&mut data).map_err(|e| RestoreError::Format { source: e })?;
                    self.report.bytes += data.len() as u64;
                    if let Some(p) = &self.progress {
                        p.bytes_out.fetch_add(data.len() as u64, Ordering::Relaxed);
                    }
                    let slot =
                        (Digest::of(rel.as_os_str().as_bytes()).prefix_u64() % self.writers.len() as u64) as usize;
                    let job = WriteJob { path, name, data, meta };
                    if self.writers[slot].send(job).is_err() {
                        self.check_writers()?;
                        return Err(RestoreError::write(self.root, io::Error::other("file writer stopped")));
                    }
                } else {
                    // Wait for the pool only if this name might be queued there.
                    self.clear(&path, &name)?;
                    let mode = 0o600;
                    let mut f = OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .mode(mode)
                        .custom_flags(libc::O_NOFOLLOW)
                        .open(&path)
                        .map_err(|e| RestoreError::write(&path, e))?;
                    let n = copy_large(&mut entry, &mut f, self.progress.as_deref()).map_err(|e| match e {
                        CopyError::Read(e) => RestoreError::Format { source: e },
                        CopyError::Write(e) => RestoreError::write(&path, e),
                    })?;
                    self.report.bytes += n;
                    apply_file(&f, &path, &meta, self.policy, mode)?;
                }
            }
            tar::EntryType::Link => {
                let link = entry.link_name_bytes().map(|l| l.into_owned()).unwrap_or_default();
                let Some(src_rel) = sanitize(&link)? else {
                    return Err(RestoreError::Unsafe { entry: name, reason: "hard link to the archive root" });
                };
                self.parents(&rel, &name)?;
                self.parents(&src_rel, &name)?;
                // Made once every queued file is written (see `finish`).
                self.hardlinks.push((rel, src_rel, name));
            }
            tar::EntryType::Symlink => {
                let target = entry.link_name_bytes().map(|l| l.into_owned()).unwrap_or_default();
                let target = PathBuf::from(std::ffi::OsStr::from_bytes(&target));
                self.symlinks.push((rel, target, meta));
            }
            tar::EntryType::XGlobalHeader | tar::EntryType::XHeader => {}
            other => {
                self.report.warnings.push(format!("{name}: entry type {other:?} not restored"));
            }
        }
        Ok(())
    }

    /// Makes sure every ancestor of `rel` is a real directory inside the root.
    fn parents(&mut self, rel: &Path, name: &str) -> Result<(), RestoreError> {
        let Some(parent) = rel.parent() else { return Ok(()) };
        if parent.as_os_str().is_empty() || self.known_dirs.contains(parent) {
            return Ok(());
        }
        let mut cur = PathBuf::new();
        for comp in parent.components() {
            cur.push(comp);
            if self.known_dirs.contains(&cur) {
                continue;
            }
            let abs = self.root.join(&cur);
            match fs::symlink_metadata(&abs) {
                Ok(m) if m.is_dir() => {}
                Ok(m) if m.file_type().is_symlink() => {
                    return Err(RestoreError::Unsafe {
                        entry: name.to_string(),
                        reason: "it would be written through a symlink",
                    })
                }
                Ok(_) => {
                    return Err(RestoreError::Conflict {
                        entry: name.to_string(),
                        reason: format!("`{}` is a file, not a directory", cur.display()),
                    })
                }
                Err(_) => fs::create_dir(&abs).map_err(|e| RestoreError::write(&abs, e))?,
            }
            self.known_dirs.insert(cur.clone());
        }
        Ok(())
    }

    /// A later entry of the same name replaces an earlier file (as tar does);
    /// it never replaces a directory.
    fn clear(&self, path: &Path, name: &str) -> Result<(), RestoreError> {
        match fs::symlink_metadata(path) {
            Ok(m) if m.is_dir() => {
                Err(RestoreError::Conflict { entry: name.to_string(), reason: "a file over a directory".into() })
            }
            Ok(_) => fs::remove_file(path).map_err(|e| RestoreError::write(path, e)),
            Err(_) => Ok(()),
        }
    }

    fn wait_writers(&self) {
        while self.writers_done.recv().is_ok() {}
    }

    fn check_writers(&self) -> Result<(), RestoreError> {
        match self.write_error.lock().unwrap_or_else(|p| p.into_inner()).take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn finish(mut self) -> Result<RestoreReport, RestoreError> {
        // Closing the queues lets the writers finish; the scope joins them,
        // but the hard links below need their targets now.
        let writers = std::mem::take(&mut self.writers);
        drop(writers);
        self.wait_writers();
        self.check_writers()?;
        for (rel, src_rel, name) in std::mem::take(&mut self.hardlinks) {
            let (path, src) = (self.root.join(&rel), self.root.join(&src_rel));
            match fs::symlink_metadata(&src) {
                Ok(m) if m.is_file() => {}
                _ => {
                    return Err(RestoreError::Conflict {
                        entry: name,
                        reason: format!("hard link to `{}`, which is not an earlier regular file", src_rel.display()),
                    })
                }
            }
            self.clear(&path, &name)?;
            fs::hard_link(&src, &path).map_err(|e| RestoreError::write(&path, e))?;
        }
        for (rel, target, meta) in std::mem::take(&mut self.symlinks) {
            let name = rel.display().to_string();
            self.parents(&rel, &name)?;
            let path = self.root.join(&rel);
            if fs::symlink_metadata(&path).is_ok() {
                match fs::symlink_metadata(&path) {
                    Ok(m) if m.is_dir() => {
                        return Err(RestoreError::Conflict { entry: name, reason: "a symlink over a directory".into() })
                    }
                    _ => fs::remove_file(&path).map_err(|e| RestoreError::write(&path, e))?,
                }
            }
            std::os::unix::fs::symlink(&target, &path).map_err(|e| RestoreError::write(&path, e))?;
            if self.policy.same_owner {
                std::os::unix::fs::lchown(&path, Some(meta.uid as u32), Some(meta.gid as u32))
                    .map_err(|e| RestoreError::write(&path, e))?;
            }
            filetime::set_symlink_file_times(&path, meta.mtime, meta.mtime)
                .map_err(|e| RestoreError::write(&path, e))?;
        }
        // Children before parents: writing into a directory moves its mtime,
        // and a read-only directory must stay writable until its children exist.
        let mut dirs = std::mem::take(&mut self.dirs);
        dirs.sort_by_key(|(p, _)| std::cmp::Reverse(p.components().count()));
        for (rel, meta) in dirs {
            let path = self.root.join(&rel);
            if self.policy.same_owner {
                std::os::unix::fs::chown(&path, Some(meta.uid as u32), Some(meta.gid as u32))
                    .map_err(|e| RestoreError::write(&path, e))?;
            }
            fs::set_permissions(&path, fs::Permissions::from_mode(meta.mode))
                .map_err(|e| RestoreError::write(&path, e))?;
            filetime::set_file_mtime(&path, meta.mtime).map_err(|e| RestoreError::write(&path, e))?;
        }
        Ok(self.report)
    }
}

enum CopyError {
    Read(io::Error),
    Write(io::Error),
}

/// Copies a large entry with a big buffer, telling read from write errors.
fn copy_large<R: Read>(from: &mut R, to: &mut File, progress: Option<&Progress>) -> Result<u64, CopyError> {
    use std::io::Write;
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(CopyError::Read(e)),
        };
        to.write_all(&buf[..n]).map_err(CopyError::Write)?;
        total += n as u64;
        if let Some(p) = progress {
            p.bytes_out.fetch_add(n as u64, Ordering::Relaxed);
        }
    }
}

fn read_meta<R: Read>(entry: &mut tar::Entry<'_, R>) -> io::Result<Meta> {
    let h = entry.header();
    let mut meta = Meta {
        mode: h.mode()? & 0o7777,
        mtime: FileTime::from_unix_time(h.mtime()? as i64, 0),
        uid: h.uid()?,
        gid: h.gid()?,
    };
    if let Some(exts) = entry.pax_extensions()? {
        for ext in exts {
            let ext = ext?;
            let Ok(value) = ext.value() else { continue };
            match ext.key() {
                Ok("mtime") => {
                    if let Some(t) = parse_pax_time(value) {
                        meta.mtime = t;
                    }
                }
                Ok("uid") => meta.uid = value.parse().unwrap_or(meta.uid),
                Ok("gid") => meta.gid = value.parse().unwrap_or(meta.gid),
                _ => {}
            }
        }
    }
    Ok(meta)
}

/// `1700000000.5` or `-1.25` → a file time.
fn parse_pax_time(v: &str) -> Option<FileTime> {
    let (neg, v) = match v.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, v),
    };
    let (secs, frac) = v.split_once('.').unwrap_or((v, ""));
    let secs: i64 = secs.parse().ok()?;
    let frac: String = frac.chars().chain(std::iter::repeat('0')).take(9).collect();
    let nsec: u32 = frac.parse().ok()?;
    Some(if !neg {
        FileTime::from_unix_time(secs, nsec)
    } else if nsec == 0 {
        FileTime::from_unix_time(-secs, 0)
    } else {
        FileTime::from_unix_time(-secs - 1, 1_000_000_000 - nsec)
    })
}

impl crate::error::Transient for RestoreError {
    fn retry(&self) -> crate::error::Retry {
        match self {
            // A member that could not be read here may come from a holder; a
            // write may fail for a disk that fills and is freed.
            RestoreError::MissingMember { .. } | RestoreError::Write { .. } => crate::error::Retry::Later,
            _ => crate::error::Retry::Never,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_a_killed_restore_left_is_removed_by_the_next_one_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        let me = std::process::id();
        for d in [
            format!(".t.backmesh-restore-{dead}-abc"),
            format!(".t.backmesh-restore-{me}-def"),
            ".t.backmesh-old-xyz".to_string(),
            format!(".u.backmesh-restore-{dead}-abc"),
        ] {
            fs::create_dir(dir.path().join(&d)).unwrap();
            fs::write(dir.path().join(d).join("f"), b"x").unwrap();
        }
        remove_stale_staging(dir.path(), "t");
        let mut left: Vec<String> =
            fs::read_dir(dir.path()).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
        left.sort();
        let want = vec![
            ".t.backmesh-old-xyz".to_string(),
            format!(".t.backmesh-restore-{me}-def"),
            format!(".u.backmesh-restore-{dead}-abc"),
        ];
        assert_eq!(left, want, "only the dead restore's staging of this target goes");
    }

    #[test]
    fn a_member_that_inflates_past_what_its_manifest_says_is_refused_without_inflating_it_all() {
        struct One(Vec<u8>);
        impl MemberSource for One {
            fn read_member(&self, _: &MemberRef) -> io::Result<Vec<u8>> {
                Ok(self.0.clone())
            }
        }
        // 64 MiB of zeros: a ~64 KiB member that claims 1 KiB.
        let bomb = crate::archive::create::gzip_member(&vec![0u8; 64 << 20], 6);
        let m = MemberRef { sha256: Digest::of(&bomb), raw_len: 1024, compressed_len: bomb.len() as u64, key: None };
        let err = inflate_member(0, &m, &One(bomb)).unwrap_err();
        assert!(err.to_string().contains("manifest says 1024"), "{err}");
    }

    #[test]
    fn sanitize_refuses_escapes() {
        assert!(sanitize(b"/etc/passwd").is_err());
        assert!(sanitize(b"a/../../b").is_err());
        assert!(sanitize(b"..").is_err());
        assert_eq!(sanitize(b"./a//b/").unwrap(), Some(PathBuf::from("a/b")));
        assert_eq!(sanitize(b"./").unwrap(), None);
    }

    #[test]
    fn pax_times_parse_with_sign_and_fraction() {
        assert_eq!(parse_pax_time("1700000000.000000005"), Some(FileTime::from_unix_time(1_700_000_000, 5)));
        assert_eq!(parse_pax_time("12.5"), Some(FileTime::from_unix_time(12, 500_000_000)));
        assert_eq!(parse_pax_time("-1.750000000"), Some(FileTime::from_unix_time(-2, 250_000_000)));
        assert_eq!(parse_pax_time("x"), None);
    }
}
