//! Creating an archive: walk → tar stream → cut → compress in parallel →
//! members in order to a [`MemberSink`].
//!
//! Threads: the caller's thread walks and reads (the producer), `threads`
//! workers compress, one thread hands members to the sink in order. Memory
//! is bounded by a fixed number of in-flight segments (permits), each at
//! most [`GroupCutter::max_group`] raw bytes: whatever the tree or a file's
//! size, the pipeline holds a few MiB.
//!
//! Hot files: a file whose size, mtime or ctime moves while it is read is
//! read again, up to `max_rereads` times; small files are simply read
//! again, a large one is *rewound*: the producer sends `Rewind`, the sink
//! forgets the members it got since the matching `Mark`, and the file is
//! streamed again. If it never settles, the last copy read is kept and a
//! warning names the file.

use std::collections::HashMap;
use std::io::{self, Write};
use std::path::Path;
use std::sync::mpsc::sync_channel;
use std::sync::{Arc, Mutex};

use super::cut::{GroupCutter, DEFAULT_TARGET};
use super::error::{ArchiveError, Warning};
use super::manifest::{members_tree_digest, ArchiveStats, FileRecord, Manifest, MemberRef, TreeRule};
use super::reuse::{EntryPrint, Previous, Recorder, RecordsHeader};
use super::sealed::{ReadObject, Sealing};
use super::walk::{Excludes, Walked, Walker};
use crate::hash::Digest;

pub use super::pipeline::Progress;
use super::pipeline::{compress_worker, sink_loop, walk_ahead, Done, Job, JOBS_AHEAD, WALK_AHEAD};
use super::producer::Producer;
pub use super::sink::{gzip_member, FileSink, MemberSink};
use super::snapshot::SnapshotAcc;
pub use super::snapshot::{scan, StatSnapshot};

/// How to build an archive.
#[derive(Clone, Debug)]
pub struct CreateOptions {
    /// Group target in raw bytes (see [`GroupCutter`]).
    pub target: usize,
    /// gzip level, 1–9.
    pub level: u32,
    /// Compression threads; 0 means one per core.
    pub threads: usize,
    pub excludes: Vec<String>,
    /// How often a file that changes while read is read again.
    pub max_rereads: u32,
    /// Live counters for a progress display.
    pub progress: Option<Arc<Progress>>,
    /// Seal every member under this node's data key (an encrypted
    /// archive, docs/encryption.md); `None`: plain gzip members.
    pub seal: Option<Arc<Sealing>>,
}

impl Default for CreateOptions {
    fn default() -> Self {
        CreateOptions {
            target: DEFAULT_TARGET,
            level: 6,
            threads: 0,
            excludes: Vec::new(),
            max_rereads: 3,
            progress: None,
            seal: None,
        }
    }
}

/// What an archive may take from the series' previous one (see
/// [`super::reuse`]).
pub struct Reuse<'a> {
    /// The previous run's records.
    pub previous: Option<Previous>,
    /// Where this run's records go.
    pub record: Option<Box<dyn Write + Send + 'a>>,
    /// Keeps a member in the store until the archive is committed; false
    /// if it must not be taken (then it is made again).
    pub hold: &'a dyn Fn(&Digest) -> bool,
    /// Reads a stored object: the keyframe a sealed delta is made against.
    pub read: &'a ReadObject<'a>,
}

impl Reuse<'_> {
    /// Nothing to take, nothing to record.
    pub fn none() -> Reuse<'static> {
        Reuse { previous: None, record: None, hold: &|_| false, read: &|_| Err(io::ErrorKind::NotFound.into()) }
    }
}

/// What [`create`] made.
#[derive(Clone, Debug)]
pub struct Created {
    pub members: Vec<MemberRef>,
    pub files: Vec<FileRecord>,
    /// Over the members ([`TreeRule::Members`]).
    pub tree_digest: Digest,
    pub tgz_len: u64,
    pub raw_len: u64,
    pub stats: ArchiveStats,
    pub warnings: Vec<Warning>,
    pub snapshot: StatSnapshot,
    /// Members taken unread from earlier archives, and their raw bytes.
    pub reused_members: u64,
    pub reused_raw: u64,
    /// Whether this run's records were written whole.
    pub recorded: bool,
    /// Members made again from much the same bytes as an earlier member:
    /// (new, earlier), for deltas on the wire (see [`super::delta`]).
    pub bases: Vec<(Digest, Digest)>,
    /// Members this run compressed (the others were taken unread).
    pub made: Vec<Digest>,
    /// Files whose content this run read (0: metadata alone made it).
    pub files_read: u64,
}

impl Created {
    /// The manifest for this archive of `path` on `node`, made at
    /// `created_ms`, after the series' newest archive (its order) if any:
    /// it orders after that one whatever the clock says, and its id, which
    /// carries its order, sorts after that one's.
    pub fn into_manifest(
        self,
        node: &str,
        path: &str,
        created_ms: i64,
        after: Option<i64>,
        excludes: Vec<String>,
    ) -> Manifest {
        let order_ms = after.map_or(created_ms, |a| created_ms.max(a.saturating_add(1)));
        Manifest {
            id: archive_id(order_ms, &self.tree_digest),
            node: node.to_string(),
            path: path.to_string(),
            created_ms,
            order_ms,
            members: self.members,
            files: self.files,
            tree_digest: self.tree_digest,
            // Not known without reading every member again: see `Manifest::tgz_digest`.
            tgz_sha256: Digest::default(),
            tgz_len: self.tgz_len,
            raw_len: self.raw_len,
            stats: self.stats,
            warnings: self.warnings,
            excludes,
            seal: None,
            tree_rule: TreeRule::Members,
            crypt: None,
        }
    }
}

/// `20261122T030246.123Z-1a2b3c4d`: sorts by its order in the series
/// (the creation time unless a clock was set back), unique by content
/// (the first hex digits of its tree digest; of its `.tgz`'s SHA-256 in
/// archives made before format 3).
pub fn archive_id(order_ms: i64, content: &Digest) -> String {
    let dt = chrono::DateTime::from_timestamp_millis(order_ms).unwrap_or_default();
    format!("{}-{}", dt.format("%Y%m%dT%H%M%S%.3fZ"), &content.to_hex()[..8])
}

/// The header of the reuse records a run with `opts` writes and takes.
pub fn records_header(opts: &CreateOptions) -> RecordsHeader {
    RecordsHeader::new(GroupCutter::new(opts.target).target, opts.level)
        .sealed_under(opts.seal.as_ref().map(|s| s.key.id()))
}

/// Archives the directory `root` into `sink`.
pub fn create(root: &Path, opts: &CreateOptions, sink: &mut dyn MemberSink) -> Result<Created, ArchiveError> {
    create_reusing(root, opts, Reuse::none(), sink)
}

/// Archives the directory `root` into `sink`, taking from the previous
/// archive what has not changed and recording this one for the next.
pub fn create_reusing(
    root: &Path,
    opts: &CreateOptions,
    reuse: Reuse<'_>,
    sink: &mut dyn MemberSink,
) -> Result<Created, ArchiveError> {
    let walker = Walker::new(root, Excludes::new(&opts.excludes)?)?;
    let threads = if opts.threads == 0 {
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2)
    } else {
        opts.threads
    };
    // Deep queues: a run of members taken unread must not wait behind a
    // group being compressed, nor the walk behind either (see `WALK_AHEAD`).
    let (job_tx, job_rx) = sync_channel::<Job>(JOBS_AHEAD);
    let job_rx = Arc::new(Mutex::new(job_rx));
    let (done_tx, done_rx) = sync_channel::<Done>(JOBS_AHEAD);
    // Segments in flight, a few hundred KiB each at most: what lets the
    // producer run ahead of the workers, and bounds the memory.
    let permits = (threads * 8).min(64);
    let (permit_tx, permit_rx) = sync_channel::<()>(permits);
    for _ in 0..permits {
        let _ = permit_tx.send(());
    }
    let can_rewind = sink.can_rewind();
    let progress = opts.progress.clone();
    let header = records_header(opts);
    let recorder = reuse.record.map(|out| Recorder::new(out, &header));
    let recording = recorder.is_some();

    std::thread::scope(|s| {
        let read = reuse.read;
        let sealer = opts.seal.as_deref().map(|sealing| (sealing, read));
        for _ in 0..threads {
            let (rx, tx, level) = (Arc::clone(&job_rx), done_tx.clone(), opts.level);
            s.spawn(move || compress_worker(&rx, &tx, level, sealer));
        }
        drop(done_tx);
        let progress_sink = progress.clone();
        let sink_thread = s.spawn(move || sink_loop(done_rx, permit_tx, sink, recorder, progress_sink));
        let snapshot = SnapshotAcc::new(!recording);
        let racy_after = snapshot.racy_after;
        // The walk runs ahead on its own thread: its system calls overlap
        // the producer's planning, hashing and reading.
        let (walk_tx, walk_rx) = sync_channel::<Vec<Walked>>(WALK_AHEAD);
        let walk_thread = s.spawn(move || walk_ahead(walker, &walk_tx));
        let mut producer = Producer {
            root: root.to_path_buf(),
            job_tx,
            permit_rx,
            seq: 0,
            cutter: GroupCutter::new(opts.target),
            pending: Vec::new(),
            pending_len: 0,
            planned_links: HashMap::new(),
            group: Vec::new(),
            group_print: EntryPrint::default(),
            group_first: None,
            group_clean: true,
            group_base: None,
            raw_len: 0,
            files: Vec::new(),
            stats: ArchiveStats::default(),
            warnings: Vec::new(),
            hardlinks: HashMap::new(),
            racy_after,
            snapshot,
            previous: reuse.previous,
            hold: reuse.hold,
            reused: Vec::new(),
            max_rereads: opts.max_rereads,
            can_rewind,
            progress,
            files_read: 0,
        };
        let started = std::time::Instant::now();
        let produced = producer.run(walk_rx);
        let t_produced = started.elapsed();
        let Producer { job_tx, permit_rx, raw_len, files, stats, warnings, files_read, snapshot, .. } = producer;
        // Closing the job channel lets the workers, then the sink, finish.
        drop(job_tx);
        drop(permit_rx);
        let sunk = sink_thread.join().unwrap_or_else(|_| Err(io::Error::other("archive writer thread panicked")));
        let (state, recorded) = sunk.map_err(|source| ArchiveError::Sink { source })?;
        produced?;
        let walk_warnings = walk_thread.join().map_err(|_| ArchiveError::PipelineClosed)?;
        tracing::debug!("archive of {}: produced by {t_produced:?}, sunk by {:?}", root.display(), started.elapsed());
        let mut warnings = warnings;
        let had_walk_warnings = !walk_warnings.is_empty();
        warnings.extend(walk_warnings);
        warnings.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(Created {
            tgz_len: state.len,
            tree_digest: members_tree_digest(&state.members),
            members: state.members,
            files,
            raw_len,
            stats,
            warnings,
            snapshot: snapshot.finish(had_walk_warnings),
            reused_members: state.reused_members,
            reused_raw: state.reused_raw,
            recorded,
            bases: state.bases,
            made: state.made,
            files_read,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::super::sink::looks_incompressible;
    use super::*;
    use std::io::Read;

    fn gunzip(data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        flate2::read::MultiGzDecoder::new(data).read_to_end(&mut out).unwrap();
        out
    }

    #[test]
    fn members_decode_whether_deflated_or_stored() {
        let mut x = 0x1234_5678_9abc_def0u64;
        let noise: Vec<u8> = (0..300_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let text = b"the same words again and again ".repeat(10_000);
        for raw in [noise.clone(), text.clone(), Vec::new(), noise[..65_535].to_vec(), noise[..65_536].to_vec()] {
            let m = gzip_member(&raw, 6);
            assert_eq!(gunzip(&m), raw);
            assert_eq!(m, gzip_member(&raw, 6), "deterministic");
        }
        assert!(looks_incompressible(&noise));
        assert!(!looks_incompressible(&text));
        // Stored costs 5 bytes per 64 KiB block, plus gzip's 18.
        assert!(gzip_member(&noise, 6).len() <= noise.len() + 5 * 5 + 18);
        // GNU gzip agrees.
        let p = std::env::temp_dir().join(format!("bm-stored-{}.gz", std::process::id()));
        std::fs::write(&p, gzip_member(&noise, 6)).unwrap();
        let ok =
            std::process::Command::new("gzip").arg("-t").arg(&p).status().expect("gzip (scripts/test installs it)");
        let _ = std::fs::remove_file(&p);
        assert!(ok.success(), "gzip -t accepts stored blocks");
    }
}
