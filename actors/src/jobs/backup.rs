//! One backup run. [`run_backup`] is one execution of a job on its origin
//! node: recognise an unchanged tree (by stat snapshot, else by tree
//! digest), otherwise store the new archive and apply retention.

use std::collections::HashSet;
use std::path::Path;
use std::time::Instant;

use crate::archive::manifest::{members_tree_digest, objects_tree_digest, Crypt, ObjRef, TreeRule};
use crate::archive::{self, ArchiveError, CreateOptions, Manifest, Reuse, StatSnapshot, Warning};
use crate::hash::Digest;
use crate::store::{ArchiveSummary, Retention, RetentionReport, StatCacheEntry, Store, StoreError};

use super::plugin::{self, JobError, JobSpec, PluginReport};

/// Why a run failed.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the path {path} is not absolute; give the full path of the directory to back up")]
    RelativePath { path: String },
    #[error("the path {path:?} is not valid UTF-8")]
    NonUtf8Path { path: std::path::PathBuf },
}

/// How an unchanged tree was recognised.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnchangedBy {
    /// Metadata matched the stat snapshot: no file content was read.
    StatCache,
    /// Content was read and the tree digest matched.
    TreeDigest,
}

#[derive(Clone, Debug)]
pub enum RunOutcome {
    Unchanged {
        archive_id: String,
        by: UnchangedBy,
        warnings: Vec<Warning>,
    },
    Stored {
        manifest: Box<Manifest>,
        new_bytes: u64,
        retention: RetentionReport,
        /// Members taken unread from earlier archives, and their raw bytes.
        reused: (u64, u64),
    },
    /// A plugin did its work and asked for no archive (a mirror job).
    NoArchive,
}

#[derive(Clone, Debug)]
pub struct RunReport {
    pub outcome: RunOutcome,
    pub duration_ms: u64,
}

/// Backs up `path` as (node, path) into `store`, keeping `keep` archives.
pub fn run_backup(
    store: &Store,
    node: &str,
    path: &Path,
    opts: &CreateOptions,
    keep: Retention,
) -> Result<RunReport, RunError> {
    if !path.is_absolute() {
        return Err(RunError::RelativePath { path: path.display().to_string() });
    }
    let key = path.to_str().ok_or_else(|| RunError::NonUtf8Path { path: path.to_path_buf() })?;
    run_backup_as(store, node, key, path, opts, keep)
}

/// Backs up the tree at `source` as the series (node, `key`).
pub fn run_backup_as(
    store: &Store,
    node: &str,
    key: &str,
    path: &Path,
    opts: &CreateOptions,
    keep: Retention,
) -> Result<RunReport, RunError> {
    let started = Instant::now();
    let last = store.latest(node, key)?;
    let done = |outcome| RunReport { outcome, duration_ms: started.elapsed().as_millis() as u64 };

    let header = archive::create::records_header(opts);
    let previous = store.previous_records(node, key, &header);
    // With the last run's records, the backup itself is the metadata
    // walk (a tree that looks as recorded is taken unread, whole): one
    // walk, not a scan and then a backup. Without them, a scan first.
    if let (None, Some(last), Some(cache)) = (&previous, &last, store.stat_cache(node, key)?) {
        if cache.archive_id == last.id
            && cache.tree_digest == last.tree_digest
            && cache.excludes == opts.excludes
            && cache.kid == opts.seal.as_ref().map(|s| s.key.id())
            && !cache.snapshot.racy
        {
            let now = archive::scan(path, &opts.excludes)?;
            if now.digest == cache.snapshot.digest && !now.racy {
                return Ok(done(RunOutcome::Unchanged {
                    archive_id: last.id.clone(),
                    by: UnchangedBy::StatCache,
                    warnings: Vec::new(),
                }));
            }
        }
    }

    // Members lost from the store since the last backup are made again
    // from the files: a second attempt that takes none of them unread.
    let mut lost: HashSet<Digest> = HashSet::new();
    let mut previous = previous;
    let (mut txn, holds, records, mut created) = loop {
        // About one member per file at most: room for them from the start
        // (bounded: past that, the sets grow as they need).
        let room = last.as_ref().map_or(0, |l| usize::try_from(l.files).unwrap_or(0).min(1 << 20));
        let mut txn = store.begin()?;
        txn.reserve(room);
        let holds = store.holds_for(room);
        let records = store.new_records().ok();
        let (txn, created) = {
            let hold = |d: &Digest| {
                if lost.contains(d) {
                    return false;
                }
                holds.hold(d);
                true
            };
            let reuse = Reuse {
                previous: previous.take(),
                record: records.as_ref().and_then(|r| r.reopen().ok()).map(|f| {
                    Box::new(std::io::BufWriter::with_capacity(256 * 1024, f)) as Box<dyn std::io::Write + Send>
                }),
                hold: &hold,
                read: &|o: &ObjRef| {
                    // A keyframe a sealed delta is made against stays until the commit.
                    holds.hold(&o.cid);
                    store.read_member_unchecked(&o.cid).map_err(std::io::Error::other)
                },
            };
            let created = archive::create_reusing(path, opts, reuse, &mut txn)?;
            (txn, created)
        };
        if txn.lost().is_empty() || !lost.is_empty() {
            break (txn, holds, records, created);
        }
        tracing::warn!(
            "{} members of the last backup of {key} are gone from the store (removed by hand, or a failing disk); \
             reading their files again",
            txn.lost().len()
        );
        lost.extend(txn.lost().iter().copied());
        previous = store.previous_records(node, key, &header);
    };
    let t_created = started.elapsed();
    let (snapshot, recorded) = (created.snapshot, created.recorded);
    let reused = (created.reused_members, created.reused_raw);
    let bases = std::mem::take(&mut created.bases);
    // An encrypted archive: its file table and head, sealed; its tree
    // digest over every object.
    let table = opts.seal.as_ref().map(|s| {
        let head = archive::sealed::Head {
            stats: created.stats.clone(),
            warnings: created.warnings.clone(),
            excludes: opts.excludes.clone(),
            raw_len: created.raw_len,
            tgz_len: created.tgz_len,
            members: serde_bytes::ByteBuf::from(archive::sealed::members_digest(&created.members).to_vec()),
            lens: created.members.iter().map(|m| m.raw_len).collect(),
            // Set by `seal_table`, once the table's groups are made.
            table: serde_bytes::ByteBuf::new(),
            groups: Vec::new(),
        };
        let (index, head) = archive::sealed::seal_table(s, &created.files, &head);
        let refs: Vec<_> = index.iter().map(|(m, _)| m.clone()).collect();
        let head_ref = ObjRef { cid: head.0.sha256, len: head.0.compressed_len };
        created.tree_digest = objects_tree_digest(&created.members, &refs, &head_ref);
        (s.clone(), index, head)
    });
    if let Some(last) = &last {
        if same_tree(store, last, &created)? {
            if !lost.is_empty() {
                // The same tree: what this run made again heals the last archive.
                txn.publish()?;
            }
            drop(txn);
            keep_records(store, node, key, records, recorded);
            remember(store, node, key, opts, snapshot, &last.id, last.tree_digest)?;
            let by = if created.files_read == 0 { UnchangedBy::StatCache } else { UnchangedBy::TreeDigest };
            return Ok(done(RunOutcome::Unchanged { archive_id: last.id.clone(), by, warnings: created.warnings }));
        }
    }
    // Members taken unread are in the store; of the others, those not in it yet.
    let made: std::collections::HashSet<Digest> = created.made.iter().copied().collect();
    let new_bytes: u64 = created
        .members
        .iter()
        .filter(|m| made.contains(&m.sha256) && !store.has_member(&m.sha256))
        .map(|m| (m.sha256, m))
        .collect::<std::collections::HashMap<_, _>>()
        .values()
        .map(|m| m.compressed_len)
        .sum();
    let after = last.as_ref().map(|l| l.order());
    let mut manifest = created.into_manifest(node, key, store.now_ms(), after, opts.excludes.clone());
    if let Some((sealing, index, head)) = table {
        use crate::archive::MemberSink as _;
        for (m, object) in index.iter().chain([&head]) {
            txn.member(&m.sha256, object)
                .map_err(|e| StoreError::Io { path: store.root().join("staging"), source: e })?;
        }
        manifest.tree_rule = TreeRule::Objects;
        manifest.crypt = Some(Crypt {
            suite: crate::archive::manifest::objects::SUITE_XCHACHA_SIV,
            kid: sealing.key.id_bytes(),
            keys: sealing.keys.clone(),
            index: index.into_iter().map(|(m, _)| m).collect(),
            head: ObjRef { cid: head.0.sha256, len: head.0.compressed_len },
        });
    }
    let encoded = manifest
        .seal_encoded(store.identity())
        .map_err(|source| StoreError::Manifest { path: store.root().join("identity.key"), source })?;
    let t_sealed = started.elapsed();
    txn.commit_encoded(&manifest, &encoded)?;
    drop(encoded);
    let t_committed = started.elapsed();
    drop(holds);
    // Only what pushes may send as deltas: losing it costs bytes, not data.
    if let Err(e) = store.set_bases(&bases, opts.level) {
        tracing::warn!("cannot remember the delta bases of {key}: {e}");
    }
    keep_records(store, node, key, records, recorded);
    remember(store, node, key, opts, snapshot, &manifest.id, manifest.tree_digest)?;
    let retention = store.retain(node, key, keep)?;
    store.flush()?;
    tracing::debug!(
        "backup of {key}: made by {:?}, sealed by {:?}, committed by {:?}, done in {:?}",
        t_created,
        t_sealed,
        t_committed,
        started.elapsed()
    );
    Ok(done(RunOutcome::Stored { manifest: Box::new(manifest), new_bytes, retention, reused }))
}

/// Whether `created` holds the same tree as the series' newest archive:
/// equal tree digests, or (the newest made before format 3, its digest
/// over the raw stream) equal digests over the members.
fn same_tree(store: &Store, last: &ArchiveSummary, created: &archive::Created) -> Result<bool, StoreError> {
    if created.tree_digest == last.tree_digest {
        return Ok(true);
    }
    // Archives of format 3 on record no `.tgz` digest: theirs was compared.
    if last.tgz_sha256 == Digest::default() {
        return Ok(false);
    }
    let m = store.manifest(&last.node, &last.path, Some(&last.id))?;
    Ok(m.tree_rule == TreeRule::RawStream && members_tree_digest(&m.members) == created.tree_digest)
}

/// Keeps this run's reuse records if they are whole; else forgets the
/// last ones (they may no longer match the newest archive's members).
fn keep_records(store: &Store, node: &str, key: &str, records: Option<tempfile::NamedTempFile>, whole: bool) {
    match records {
        Some(r) if whole => {
            if let Err(e) = store.keep_records(node, key, r) {
                tracing::warn!("cannot keep the reuse records of {key}: {e}; the next backup reads every file");
                store.drop_records(node, key);
            }
        }
        _ => store.drop_records(node, key),
    }
}

/// Records the snapshot of the tree that archive `id` holds, for the next
/// run's metadata-only check.
fn remember(
    store: &Store,
    node: &str,
    key: &str,
    opts: &CreateOptions,
    snapshot: StatSnapshot,
    id: &str,
    tree_digest: Digest,
) -> Result<(), StoreError> {
    let entry = StatCacheEntry {
        snapshot,
        excludes: opts.excludes.clone(),
        archive_id: id.to_string(),
        tree_digest,
        kid: opts.seal.as_ref().map(|s| s.key.id()),
    };
    store.set_stat_cache(node, key, &entry)
}

/// A backup that failed, as a job's error: refused when it will fail the
/// same way until the job or its path changes.
fn failed_backup(e: &RunError) -> JobError {
    let words = error_chain(e);
    match e {
        RunError::Archive(a) if a.is_temporary() => JobError::Io(words),
        RunError::Archive(_) | RunError::RelativePath { .. } | RunError::NonUtf8Path { .. } => JobError::Refused(words),
        RunError::Store(_) => JobError::Io(words),
    }
}

/// An error and its causes in one line, each said once.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !out.contains(&t) {
            out.push_str(": ");
            out.push_str(&t);
        }
        cur = c.source();
    }
    out
}

/// One run of a job: the pre hook, its source (a directory, a command or
/// a plugin), the backup, then the post hook. Errors are in plain words.
pub fn run_job(
    store: &Store,
    node: &str,
    path: &str,
    spec: &JobSpec,
    opts: &CreateOptions,
    keep: Retention,
) -> (Result<RunReport, JobError>, Option<PluginReport>) {
    let timeout = spec.timeout();
    let mut report = PluginReport { archive: true, ..Default::default() };
    let result = match &spec.pre {
        Some(pre) => plugin::run_hook("pre", pre, node, path, &[], timeout),
        None => Ok(()),
    }
    .and_then(|()| source_backup(store, node, path, spec, opts, keep, &mut report));
    if let Some(post) = &spec.post {
        let (outcome, archive, size, error) = match &result {
            Ok(r) => match &r.outcome {
                RunOutcome::Stored { manifest, .. } => {
                    ("finished", manifest.id.clone(), manifest.tgz_len, String::new())
                }
                RunOutcome::Unchanged { archive_id, .. } => ("unchanged", archive_id.clone(), 0, String::new()),
                RunOutcome::NoArchive => ("finished", String::new(), 0, String::new()),
            },
            Err(e) => ("failed", String::new(), 0, e.to_string()),
        };
        let env = [
            ("BACKMESH_RESULT", outcome.to_string()),
            ("BACKMESH_ARCHIVE", archive),
            ("BACKMESH_SIZE", size.to_string()),
            ("BACKMESH_ERROR", error),
        ];
        if let Err(e) = plugin::run_hook("post", post, node, path, &env, timeout) {
            report.hooks.push(e.to_string());
        }
    }
    (result, (!report.is_empty()).then_some(report))
}

fn source_backup(
    store: &Store,
    node: &str,
    path: &str,
    spec: &JobSpec,
    opts: &CreateOptions,
    keep: Retention,
    report: &mut PluginReport,
) -> Result<RunReport, JobError> {
    let timeout = spec.timeout();
    let source = spec.source_name();
    if spec.source() == plugin::Source::Dir {
        return run_backup(store, node, Path::new(path), opts, keep).map_err(|e| failed_backup(&e));
    }
    let staging = store.root().join("staging");
    let out = tempfile::Builder::new()
        .prefix("source-")
        .tempdir_in(&staging)
        .map_err(|e| JobError::Io(format!("cannot make a working directory in {}: {e}", staging.display())))?;
    if let plugin::Source::Plugin(source) = spec.source() {
        let exe = plugin::resolve(store.root(), source)?
            .ok_or_else(|| JobError::Refused(format!("unknown source `{source}`")))?;
        *report = plugin::run_plugin(&exe, &spec.args, node, path, out.path(), timeout)?;
        if !report.archive {
            return Ok(RunReport { outcome: RunOutcome::NoArchive, duration_ms: 0 });
        }
    } else {
        let name = Path::new(path).file_name().map(|n| n.to_os_string()).unwrap_or_else(|| "output".into());
        plugin::run_command_source(&spec.args, node, path, &out.path().join(name), timeout)?;
    }
    plugin::zero_mtimes(out.path()).map_err(|e| JobError::Io(format!("cannot prepare the output of {source}: {e}")))?;
    run_backup_as(store, node, path, out.path(), opts, keep).map_err(|e| failed_backup(&e))
}

impl crate::error::Transient for RunError {
    fn retry(&self) -> crate::error::Retry {
        match self {
            RunError::Archive(e) => e.retry(),
            RunError::Store(e) => e.retry(),
            RunError::RelativePath { .. } | RunError::NonUtf8Path { .. } => crate::error::Retry::Never,
        }
    }
}
