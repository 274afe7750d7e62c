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

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use flate2::write::DeflateEncoder;
use flate2::{Compression, Crc};
use serde_bytes::ByteBuf;
use sha2::{Digest as _, Sha256};

use super::cut::{Chunker, GroupCutter, DEFAULT_TARGET};
use super::error::{lossy, ArchiveError, Warning, WarningKind};
use super::manifest::{members_tree_digest, ArchiveStats, FileRecord, Manifest, MemberRef, TreeRule};
use super::reuse::{self, Chunk, EntryPrint, Previous, Record, Recorder, RecordsHeader};
use super::tarfmt::{header_len, padding, write_header, EntryMeta, Kind, BLOCK};
use super::walk::{Excludes, Item, Stat, Walker};
use crate::hash::Digest;

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
        }
    }
}

/// Counters updated while an archive is made or restored; read them from
/// another thread.
#[derive(Debug, Default)]
pub struct Progress {
    /// Entries walked (create) or extracted (restore).
    pub entries: AtomicU64,
    /// File content read (create).
    pub bytes_read: AtomicU64,
    /// Compressed bytes produced (create), content bytes written (restore).
    pub bytes_out: AtomicU64,
}

/// Receives the compressed members of an archive, in order.
pub trait MemberSink: Send {
    /// The next member. The same digest may come more than once.
    fn member(&mut self, digest: &Digest, data: &[u8]) -> io::Result<()>;
    /// Remember this point: a later [`MemberSink::rewind`] returns to it.
    fn mark(&mut self) -> io::Result<()> {
        Ok(())
    }
    /// Forget every member received since the last mark.
    fn rewind(&mut self) -> io::Result<()>;
    /// A member taken unread from an earlier archive (see [`Reuse`]): the
    /// sink must already hold it.
    fn reused(&mut self, member: &MemberRef) -> io::Result<()> {
        Err(io::Error::other(format!("this archive writer cannot take member {} unread", member.sha256)))
    }
    /// Whether [`MemberSink::rewind`] works; without it a file that changes
    /// while read is kept as first read (with a warning).
    fn can_rewind(&self) -> bool;
}

/// Writes the `.tgz` to a file, truncating on rewind.
pub struct FileSink {
    file: File,
    written: u64,
    mark: u64,
}

impl FileSink {
    pub fn new(file: File) -> Self {
        FileSink { file, written: 0, mark: 0 }
    }
    pub fn into_inner(self) -> File {
        self.file
    }
}

impl MemberSink for FileSink {
    fn member(&mut self, _: &Digest, data: &[u8]) -> io::Result<()> {
        self.file.write_all(data)?;
        self.written += data.len() as u64;
        Ok(())
    }
    fn mark(&mut self) -> io::Result<()> {
        self.mark = self.written;
        Ok(())
    }
    fn rewind(&mut self) -> io::Result<()> {
        use std::io::Seek;
        self.file.set_len(self.mark)?;
        self.file.seek(io::SeekFrom::Start(self.mark))?;
        self.written = self.mark;
        Ok(())
    }
    fn can_rewind(&self) -> bool {
        true
    }
}

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
}

impl Reuse<'_> {
    /// Nothing to take, nothing to record.
    pub fn none() -> Reuse<'static> {
        Reuse { previous: None, record: None, hold: &|_| false }
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

/// The end-of-archive marker: two zero blocks, its own member.
fn trailer() -> Vec<u8> {
    vec![0u8; 2 * BLOCK]
}

/// Compresses `raw` into one gzip member with a fixed header (no name,
/// mtime 0, OS unknown), so equal input gives equal bytes on every node.
///
/// Data that does not compress (media, archives, encrypted files) is stored
/// in deflate's *stored* blocks instead: deflating it would spend CPU to
/// produce output no smaller. The choice is a function of the bytes, so it
/// is the same on every node.
pub fn gzip_member(raw: &[u8], level: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len() / 3 + 64);
    out.extend_from_slice(&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff]);
    let mut out = if looks_incompressible(raw) {
        stored_blocks(raw, out)
    } else {
        let mut enc = DeflateEncoder::new(out, Compression::new(level.clamp(1, 9)));
        // Writing into a Vec cannot fail.
        let _ = enc.write_all(raw);
        enc.finish().unwrap_or_default()
    };
    let mut crc = Crc::new();
    crc.update(raw);
    out.extend_from_slice(&crc.sum().to_le_bytes());
    out.extend_from_slice(&(raw.len() as u32).to_le_bytes());
    out
}

/// Samples spread over the data, each compressed fast: if none shrinks by
/// 3%, deflate at any level would not either.
fn looks_incompressible(raw: &[u8]) -> bool {
    const SAMPLE: usize = 4096;
    const SAMPLES: usize = 4;
    if raw.len() < SAMPLE * SAMPLES * 2 {
        return false;
    }
    let step = raw.len() / SAMPLES;
    (0..SAMPLES).all(|i| {
        let s = &raw[i * step..i * step + SAMPLE];
        let mut enc = DeflateEncoder::new(Vec::with_capacity(SAMPLE + 64), Compression::fast());
        let _ = enc.write_all(s);
        let n = enc.finish().map(|v| v.len()).unwrap_or(0);
        n * 100 >= SAMPLE * 97
    })
}

/// Raw deflate of `raw` as stored blocks (RFC 1951 §3.2.4), appended to `out`.
fn stored_blocks(raw: &[u8], mut out: Vec<u8>) -> Vec<u8> {
    out.reserve(raw.len() + raw.len() / 65_535 * 5 + 5);
    let mut chunks = raw.chunks(65_535).peekable();
    if chunks.peek().is_none() {
        out.extend_from_slice(&[1, 0, 0, 0xff, 0xff]);
    }
    while let Some(c) = chunks.next() {
        let last = chunks.peek().is_none();
        out.push(u8::from(last));
        let len = c.len() as u16;
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(c);
    }
    out
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

struct SnapshotAcc {
    /// None when the run keeps records: the next run compares against
    /// those, and the snapshot is only a fallback for a run without them.
    hasher: Option<Sha256>,
    racy: bool,
    entries: u64,
    /// Anything changed at or after this instant (ns since the epoch) may
    /// change again within the same timestamp: the snapshot cannot vouch for it.
    racy_after: i128,
}

impl SnapshotAcc {
    /// `hash`: whether to digest the entries (see [`StatSnapshot`]).
    fn new(hash: bool) -> Self {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as i128).unwrap_or(0);
        SnapshotAcc { hasher: hash.then(Sha256::new), racy: false, entries: 0, racy_after: now - reuse::RACY_WINDOW_NS }
    }
    fn add(&mut self, item: &Item) {
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
    fn finish(self, walk_had_warnings: bool) -> StatSnapshot {
        let hashed = self.hasher.is_some();
        StatSnapshot {
            digest: self.hasher.map(Digest::from_hasher).unwrap_or_default(),
            racy: self.racy || walk_had_warnings || !hashed,
            entries: self.entries,
        }
    }
}

/// What a member is, for the records of the next run.
enum Tag {
    /// Nothing to record (the end marker; a group that cannot be trusted).
    Plain,
    /// A group: its first path and the print of its entries.
    Group { first: Vec<u8>, entries: Digest },
    /// A chunk of the large file being streamed, by the digest of its raw bytes.
    Chunk { raw: Digest },
}

enum Job {
    /// Raw bytes to compress; `base` an earlier member of much the same
    /// bytes, for a delta on the wire.
    Segment {
        seq: u64,
        raw: Vec<u8>,
        tag: Tag,
        base: Option<Digest>,
    },
    /// Members taken unread, in order: sent in runs, not one by one.
    Reuse {
        seq: u64,
        members: Vec<(MemberRef, Tag)>,
    },
    Mark(u64),
    Rewind(u64),
    /// A large file ends: record it with its chunks since the last mark.
    LargeEnd {
        seq: u64,
        path: Vec<u8>,
        entry: Option<Digest>,
    },
}

enum Done {
    Member { seq: u64, raw_len: u64, data: Vec<u8>, digest: Digest, tag: Tag, base: Option<Digest> },
    Reused { seq: u64, members: Vec<(MemberRef, Tag)> },
    Mark(u64),
    Rewind(u64),
    LargeEnd { seq: u64, path: Vec<u8>, entry: Option<Digest> },
}

impl Done {
    fn seq(&self) -> u64 {
        match self {
            Done::Member { seq, .. } | Done::Reused { seq, .. } | Done::LargeEnd { seq, .. } => *seq,
            Done::Mark(seq) | Done::Rewind(seq) => *seq,
        }
    }
}

#[derive(Clone, Default)]
struct SinkState {
    members: Vec<MemberRef>,
    len: u64,
    reused_members: u64,
    reused_raw: u64,
    /// The chunks of the large file being streamed.
    chunks: Vec<Chunk>,
    /// New members made from much the same bytes as an earlier one: (new, earlier).
    bases: Vec<(Digest, Digest)>,
    /// Members compressed by this run (not taken unread).
    made: Vec<Digest>,
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
    let header = RecordsHeader::new(GroupCutter::new(opts.target).target, opts.level);
    let recorder = reuse.record.map(|out| Recorder::new(out, &header));
    let recording = recorder.is_some();

    std::thread::scope(|s| {
        for _ in 0..threads {
            let (rx, tx, level) = (Arc::clone(&job_rx), done_tx.clone(), opts.level);
            s.spawn(move || compress_worker(&rx, &tx, level));
        }
        drop(done_tx);
        let progress_sink = progress.clone();
        let sink_thread = s.spawn(move || sink_loop(done_rx, permit_tx, sink, recorder, progress_sink));
        let snapshot = SnapshotAcc::new(!recording);
        let racy_after = snapshot.racy_after;
        // The walk runs ahead on its own thread: its system calls overlap
        // the producer's planning, hashing and reading.
        let (walk_tx, walk_rx) = sync_channel::<Vec<Item>>(WALK_AHEAD);
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

/// Batches of walked entries in flight between the walk and the producer:
/// the walk, the longest single thread of a changed run, runs on while
/// the producer waits for a group to be compressed.
const WALK_AHEAD: usize = 64;
/// Jobs in flight to the workers and from them to the writer (segments
/// are bounded apart, by permits: their bytes are the memory).
const JOBS_AHEAD: usize = 64;
const WALK_BATCH: usize = 256;

/// Walks the tree into `out` in batches; returns the walk's warnings.
/// Stops early when the producer stops listening.
fn walk_ahead(mut walker: Walker, out: &SyncSender<Vec<Item>>) -> Vec<Warning> {
    let mut batch = Vec::with_capacity(WALK_BATCH);
    for item in walker.by_ref() {
        batch.push(item);
        if batch.len() == WALK_BATCH && out.send(std::mem::replace(&mut batch, Vec::with_capacity(WALK_BATCH))).is_err()
        {
            return walker.warnings;
        }
    }
    if !batch.is_empty() {
        let _ = out.send(batch);
    }
    walker.warnings
}

fn compress_worker(rx: &Mutex<Receiver<Job>>, tx: &SyncSender<Done>, level: u32) {
    loop {
        let job = {
            let guard = rx.lock().unwrap_or_else(|e| e.into_inner());
            guard.recv()
        };
        let done = match job {
            Err(_) => return,
            Ok(Job::Segment { seq, raw, tag, base }) => {
                let data = gzip_member(&raw, level);
                let digest = Digest::of(&data);
                Done::Member { seq, raw_len: raw.len() as u64, data, digest, tag, base }
            }
            Ok(Job::Reuse { seq, members }) => Done::Reused { seq, members },
            Ok(Job::Mark(seq)) => Done::Mark(seq),
            Ok(Job::Rewind(seq)) => Done::Rewind(seq),
            Ok(Job::LargeEnd { seq, path, entry }) => Done::LargeEnd { seq, path, entry },
        };
        if tx.send(done).is_err() {
            return;
        }
    }
}

/// Hands members to the sink in order and writes the records; returns
/// what was written and whether the records are whole.
fn sink_loop(
    done_rx: Receiver<Done>,
    permit_tx: SyncSender<()>,
    sink: &mut dyn MemberSink,
    mut recorder: Option<Recorder<'_>>,
    progress: Option<Arc<Progress>>,
) -> io::Result<(SinkState, bool)> {
    let mut next = 0u64;
    let mut pending = BTreeMap::new();
    let mut state = SinkState::default();
    let mut mark: Option<SinkState> = None;
    let record = |recorder: &mut Option<Recorder<'_>>, r: Record| {
        if let Some(rec) = recorder {
            rec.push(&r);
        }
    };
    for done in done_rx {
        pending.insert(done.seq(), done);
        while let Some(done) = pending.remove(&next) {
            next += 1;
            let members = match done {
                Done::Member { raw_len, data, digest, tag, base, .. } => {
                    sink.member(&digest, &data)?;
                    state.made.push(digest);
                    if let Some(base) = base.filter(|b| *b != digest) {
                        state.bases.push((digest, base));
                    }
                    if let Some(p) = &progress {
                        p.bytes_out.fetch_add(data.len() as u64, Ordering::Relaxed);
                    }
                    let _ = permit_tx.send(());
                    vec![(MemberRef { sha256: digest, raw_len, compressed_len: data.len() as u64 }, tag)]
                }
                Done::Reused { members, .. } => {
                    for (member, _) in &members {
                        sink.reused(member)?;
                        state.reused_members += 1;
                        state.reused_raw += member.raw_len;
                    }
                    members
                }
                Done::Mark(_) => {
                    state.chunks.clear();
                    mark = Some(state.clone());
                    sink.mark()?;
                    continue;
                }
                Done::Rewind(_) => {
                    if let Some(m) = &mark {
                        state = m.clone();
                    }
                    sink.rewind()?;
                    continue;
                }
                Done::LargeEnd { path, entry, .. } => {
                    let chunks = std::mem::take(&mut state.chunks);
                    record(&mut recorder, Record::Large { path: ByteBuf::from(path), entry, chunks });
                    continue;
                }
            };
            for (member, tag) in members {
                state.len += member.compressed_len;
                match tag {
                    Tag::Plain => {}
                    Tag::Group { first, entries } => record(
                        &mut recorder,
                        Record::Group { first: ByteBuf::from(first), entries, member: member.clone() },
                    ),
                    Tag::Chunk { raw } => state.chunks.push(Chunk { raw, member: member.clone() }),
                }
                state.members.push(member);
            }
        }
    }
    let recorded = recorder.is_some_and(Recorder::finish);
    Ok((state, recorded))
}

/// Outcome of reading one small file.
enum SmallRead {
    Data {
        meta: Stat,
        data: Vec<u8>,
        settled: bool,
        attempts: u32,
    },
    /// It grew past the small-file limit: stream it as a large file.
    TooLarge,
    Skipped,
}

/// An entry of the group being planned: walked, not read.
struct Planned {
    item: Item,
    /// Its header as `lstat` says it will be.
    meta: EntryMeta,
}

struct Producer<'a> {
    /// The directory being backed up.
    root: PathBuf,
    job_tx: SyncSender<Job>,
    permit_rx: Receiver<()>,
    seq: u64,
    cutter: GroupCutter,
    /// The group being planned from metadata, and its planned raw length.
    pending: Vec<Planned>,
    pending_len: usize,
    /// (dev, inode) of multiply-linked files planned → their path.
    planned_links: HashMap<(u64, u64), Vec<u8>>,
    /// The group being built from content read, and what the records say of it.
    group: Vec<u8>,
    group_print: EntryPrint,
    group_first: Option<Vec<u8>>,
    /// Every entry of it may be recorded (none changed while or just before read).
    group_clean: bool,
    /// The previous run's member for the group being built, if it had one.
    group_base: Option<Digest>,
    raw_len: u64,
    files: Vec<FileRecord>,
    stats: ArchiveStats,
    warnings: Vec<Warning>,
    /// (dev, inode) of multiply-linked files already stored → their path.
    hardlinks: HashMap<(u64, u64), Vec<u8>>,
    racy_after: i128,
    previous: Option<Previous>,
    hold: &'a dyn Fn(&Digest) -> bool,
    /// Members taken unread and not yet sent on.
    reused: Vec<(MemberRef, Tag)>,
    max_rereads: u32,
    can_rewind: bool,
    progress: Option<Arc<Progress>>,
    files_read: u64,
    snapshot: SnapshotAcc,
}

const CLOSED: ArchiveError = ArchiveError::PipelineClosed;

impl Producer<'_> {
    /// Streams everything the walk yields.
    fn run(&mut self, walked: Receiver<Vec<Item>>) -> Result<(), ArchiveError> {
        for batch in walked {
            let n = batch.len() as u64;
            for item in batch {
                self.snapshot.add(&item);
                self.plan(item)?;
            }
            if let Some(p) = &self.progress {
                p.entries.fetch_add(n, Ordering::Relaxed);
            }
        }
        self.resolve()?;
        self.send_segment(trailer(), Tag::Plain, None)
    }

    /// Places one walked entry: in the planned group, or (a large file)
    /// straight into the stream after the group.
    fn plan(&mut self, item: Item) -> Result<(), ArchiveError> {
        let ft = item.meta;
        let meta = if ft.is_dir() {
            entry_meta(&item.rel, &item.meta, Kind::Dir, None)
        } else if ft.is_symlink() {
            match std::fs::read_link(Walker::abs(&self.root, &item.rel)) {
                Ok(target) => {
                    use std::os::unix::ffi::OsStrExt;
                    let link = target.as_os_str().as_bytes().to_vec();
                    entry_meta(&item.rel, &item.meta, Kind::Symlink, Some(link))
                }
                Err(e) => {
                    self.warnings.push(Warning::from_io(&item.rel, WarningKind::Vanished, &e));
                    return Ok(());
                }
            }
        } else if ft.is_file() {
            let key = (item.meta.dev, item.meta.ino);
            let first = (item.meta.nlink > 1).then(|| self.planned_links.get(&key)).flatten();
            if let Some(first) = first {
                entry_meta(&item.rel, &item.meta, Kind::HardLink, Some(first.clone()))
            } else if item.meta.size >= self.cutter.large_file() {
                self.resolve()?;
                if self.large(&item)? && item.meta.nlink > 1 {
                    self.planned_links.insert(key, item.rel.clone());
                    self.hardlinks.insert(key, item.rel.clone());
                }
                return Ok(());
            } else {
                if item.meta.nlink > 1 {
                    self.planned_links.insert(key, item.rel.clone());
                }
                entry_meta(&item.rel, &item.meta, Kind::File, None)
            }
        } else {
            self.warnings.push(Warning {
                path: lossy(&item.rel),
                kind: WarningKind::Skipped,
                message: "special file (socket, FIFO or device) skipped".into(),
            });
            return Ok(());
        };
        let len = header_len(&meta) + meta.size as usize + padding(meta.size);
        if self.cutter.cut_before(self.pending_len, &meta.path, len) {
            self.resolve()?;
        }
        self.pending.push(Planned { item, meta });
        self.pending_len += len;
        Ok(())
    }

    /// Streams the planned group: taken whole from the previous archive
    /// if every entry looks as recorded, else read and compressed.
    fn resolve(&mut self) -> Result<(), ArchiveError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let group = std::mem::take(&mut self.pending);
        self.pending_len = 0;
        let (member, entries) = match self.reusable(&group) {
            Found::Reuse(member, entries) => (member, entries),
            Found::Base(base) => {
                self.group_base = base;
                for p in group {
                    self.entry(p)?;
                }
                let flushed = self.flush_group();
                self.group_base = None;
                return flushed;
            }
        };
        let first = group[0].meta.path.clone();
        for p in group {
            if p.meta.kind == Kind::File {
                self.stats.files += 1;
                self.stats.content_bytes += p.meta.size;
                if p.item.meta.nlink > 1 {
                    self.hardlinks.insert((p.item.meta.dev, p.item.meta.ino), p.meta.path.clone());
                }
            } else {
                self.count(p.meta.kind);
            }
            self.record(&p.meta);
        }
        self.raw_len += member.raw_len;
        self.send_reuse(member, Tag::Group { first, entries })
    }

    /// The previous archive's member for this planned group, held in the
    /// store, if every entry looks as recorded; else the member it had
    /// there, if any.
    fn reusable(&mut self, group: &[Planned]) -> Found {
        let Some(previous) = self.previous.as_mut() else {
            return Found::Base(None);
        };
        let Some(Record::Group { entries, member, .. }) = previous.find(&group[0].meta.path) else {
            return Found::Base(previous.around());
        };
        let base = Found::Base(Some(member.sha256));
        let mut print = EntryPrint::default();
        for (i, p) in group.iter().enumerate() {
            // A hard link's target must be in the archive before it.
            if p.meta.kind == Kind::HardLink {
                let key = (p.item.meta.dev, p.item.meta.ino);
                let earlier =
                    group[..i].iter().any(|q| q.meta.kind == Kind::File && Some(&q.meta.path) == p.meta.link.as_ref());
                if !earlier && self.hardlinks.get(&key) != p.meta.link.as_ref() {
                    return base;
                }
            }
            print.add(&p.meta, &p.item.meta);
        }
        let print = print.finish();
        if print == entries && (self.hold)(&member.sha256) {
            Found::Reuse(member, print)
        } else {
            base
        }
    }

    fn count(&mut self, kind: Kind) {
        match kind {
            Kind::Dir => self.stats.dirs += 1,
            Kind::Symlink => self.stats.symlinks += 1,
            Kind::HardLink => self.stats.hardlinks += 1,
            Kind::File => self.stats.files += 1,
        }
    }

    /// Reads one planned entry into the group being built.
    fn entry(&mut self, p: Planned) -> Result<(), ArchiveError> {
        let Planned { item, meta } = p;
        let header = || {
            let mut h = Vec::with_capacity(BLOCK);
            write_header(&meta, &mut h);
            h
        };
        match meta.kind {
            Kind::Dir | Kind::Symlink => {
                self.count(meta.kind);
                let header = header();
                return self.add_small(meta, &header, &[], &item.meta, true);
            }
            Kind::HardLink => {
                let key = (item.meta.dev, item.meta.ino);
                if self.hardlinks.get(&key).is_some_and(|first| Some(first) == meta.link.as_ref()) {
                    self.count(Kind::HardLink);
                    let header = header();
                    return self.add_small(meta, &header, &[], &item.meta, true);
                }
                // Its first name was not stored after all: this one is the file.
            }
            Kind::File => {}
        }
        let stored = match self.read_small(&item) {
            SmallRead::Data { meta, data, settled, attempts } => {
                if !settled {
                    self.warnings.push(Warning::changed(&item.rel, attempts));
                }
                let mut em = entry_meta(&item.rel, &meta, Kind::File, None);
                em.size = data.len() as u64;
                self.stats.files += 1;
                self.stats.content_bytes += em.size;
                let mut header = Vec::with_capacity(BLOCK);
                write_header(&em, &mut header);
                let clean = settled && !reuse::is_racy(&meta, self.racy_after);
                self.add_small(em, &header, &data, &meta, clean)?;
                true
            }
            SmallRead::TooLarge => self.add_large(&item, &Known::default())?,
            SmallRead::Skipped => false,
        };
        if stored && item.meta.nlink > 1 {
            self.hardlinks.entry((item.meta.dev, item.meta.ino)).or_insert(item.rel);
        }
        Ok(())
    }

    /// A large file: taken whole from the previous archive if it looks as
    /// recorded, else streamed, its unchanged chunks taken unread. Returns
    /// whether it was stored.
    fn large(&mut self, item: &Item) -> Result<bool, ArchiveError> {
        let record = self.previous.as_mut().and_then(|p| p.find(&item.rel));
        let Some(Record::Large { entry, chunks, .. }) = record else {
            return self.add_large(item, &Known::default());
        };
        let meta = entry_meta(&item.rel, &item.meta, Kind::File, None);
        let mut print = EntryPrint::default();
        print.add(&meta, &item.meta);
        let print = print.finish();
        if entry == Some(print) && chunks.iter().all(|c| (self.hold)(&c.member.sha256)) {
            self.flush_group()?;
            for c in chunks {
                self.raw_len += c.member.raw_len;
                self.send_reuse(c.member, Tag::Chunk { raw: c.raw })?;
            }
            self.send_control(|seq| Job::LargeEnd { seq, path: item.rel.clone(), entry: Some(print) })?;
            self.stats.files += 1;
            self.stats.content_bytes += meta.size;
            self.record(&meta);
            return Ok(true);
        }
        let known = Known {
            by_raw: chunks.iter().map(|c| (c.raw, c.member.clone())).collect(),
            in_order: chunks.into_iter().map(|c| c.member.sha256).collect(),
        };
        self.add_large(item, &known)
    }

    fn send_segment(&mut self, raw: Vec<u8>, tag: Tag, base: Option<Digest>) -> Result<(), ArchiveError> {
        self.flush_reused()?;
        self.permit_rx.recv().map_err(|_| CLOSED)?;
        self.raw_len += raw.len() as u64;
        self.job_tx.send(Job::Segment { seq: self.seq, raw, tag, base }).map_err(|_| CLOSED)?;
        self.seq += 1;
        Ok(())
    }

    fn send_reuse(&mut self, member: MemberRef, tag: Tag) -> Result<(), ArchiveError> {
        self.reused.push((member, tag));
        if self.reused.len() >= 1024 {
            self.flush_reused()?;
        }
        Ok(())
    }

    fn flush_reused(&mut self) -> Result<(), ArchiveError> {
        if self.reused.is_empty() {
            return Ok(());
        }
        let members = std::mem::take(&mut self.reused);
        self.job_tx.send(Job::Reuse { seq: self.seq, members }).map_err(|_| CLOSED)?;
        self.seq += 1;
        Ok(())
    }

    fn send_control(&mut self, job: impl FnOnce(u64) -> Job) -> Result<(), ArchiveError> {
        self.flush_reused()?;
        self.job_tx.send(job(self.seq)).map_err(|_| CLOSED)?;
        self.seq += 1;
        Ok(())
    }

    fn flush_group(&mut self) -> Result<(), ArchiveError> {
        if self.group.is_empty() {
            return Ok(());
        }
        let g = std::mem::replace(&mut self.group, Vec::with_capacity(self.cutter.target + BLOCK * 4));
        let entries = std::mem::take(&mut self.group_print).finish();
        let first = self.group_first.take().unwrap_or_default();
        let clean = std::mem::replace(&mut self.group_clean, true);
        let base = self.group_base;
        self.send_segment(g, if clean { Tag::Group { first, entries } } else { Tag::Plain }, base)
    }

    fn record(&mut self, meta: &EntryMeta) {
        self.files.push(FileRecord {
            path: ByteBuf::from(meta.path.clone()),
            kind: meta.kind,
            size: meta.size,
            mode: meta.mode,
            mtime: meta.mtime,
            mtime_nsec: meta.mtime_nsec,
            uid: meta.uid,
            gid: meta.gid,
            link: meta.link.clone().map(ByteBuf::from),
        });
    }

    /// Adds an entry read (its `header`, `content`; `stat` what was read)
    /// to the group being built; `clean`: it may be recorded.
    fn add_small(
        &mut self,
        meta: EntryMeta,
        header: &[u8],
        content: &[u8],
        stat: &Stat,
        clean: bool,
    ) -> Result<(), ArchiveError> {
        let len = header.len() + content.len() + padding(content.len() as u64);
        if self.cutter.cut_before(self.group.len(), &meta.path, len) {
            self.flush_group()?;
        }
        if self.group.is_empty() {
            self.group_first = Some(meta.path.clone());
        }
        self.group_print.add(&meta, stat);
        self.group_clean &= clean;
        self.group.extend_from_slice(header);
        self.group.extend_from_slice(content);
        self.group.resize(self.group.len() + padding(content.len() as u64), 0);
        self.record(&meta);
        Ok(())
    }

    fn read_small(&mut self, item: &Item) -> SmallRead {
        let limit = self.cutter.large_file();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut f = match open_nofollow(&Walker::abs(&self.root, &item.rel)) {
                Ok(f) => f,
                Err(e) => {
                    self.skip_unopenable(&item.rel, &e);
                    return SmallRead::Skipped;
                }
            };
            let before = match f.metadata().map(|m| Stat::from(&m)) {
                Ok(m) if m.is_file() => m,
                Ok(_) => {
                    self.warnings.push(Warning::replaced(&item.rel));
                    return SmallRead::Skipped;
                }
                Err(e) => {
                    self.warnings.push(Warning::from_io(&item.rel, WarningKind::Unreadable, &e));
                    return SmallRead::Skipped;
                }
            };
            if before.size >= limit {
                return SmallRead::TooLarge;
            }
            let mut data = Vec::with_capacity(before.size as usize);
            if let Err(e) = (&mut f).take(limit).read_to_end(&mut data) {
                self.warnings.push(Warning::from_io(&item.rel, WarningKind::Unreadable, &e));
                return SmallRead::Skipped;
            }
            self.files_read += 1;
            if let Some(p) = &self.progress {
                p.bytes_read.fetch_add(data.len() as u64, Ordering::Relaxed);
            }
            if data.len() as u64 >= limit {
                return SmallRead::TooLarge;
            }
            let after = f.metadata().map(|m| Stat::from(&m)).unwrap_or(before);
            let settled = data.len() as u64 == before.size && same_stat(&before, &after);
            if settled || attempt > self.max_rereads {
                return SmallRead::Data { meta: after, data, settled, attempts: attempt };
            }
        }
    }

    fn skip_unopenable(&mut self, rel: &[u8], e: &io::Error) {
        let kind = match e.kind() {
            io::ErrorKind::NotFound => WarningKind::Vanished,
            _ if e.raw_os_error() == Some(libc::ELOOP) => WarningKind::Vanished,
            _ => WarningKind::Unreadable,
        };
        self.warnings.push(Warning::from_io(rel, kind, e));
    }

    /// Streams a large file through the content-defined chunker; a chunk
    /// whose raw bytes are `known` is taken unread. Returns whether it was
    /// stored.
    fn add_large(&mut self, item: &Item, known: &Known) -> Result<bool, ArchiveError> {
        self.flush_group()?;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let rewindable = self.can_rewind && attempt <= self.max_rereads;
            let saved = self.raw_len;
            if rewindable {
                self.send_control(Job::Mark)?;
            }
            let mut f = match open_nofollow(&Walker::abs(&self.root, &item.rel)) {
                Ok(f) => f,
                Err(e) => {
                    self.skip_unopenable(&item.rel, &e);
                    return Ok(false);
                }
            };
            let before = match f.metadata().map(|m| Stat::from(&m)) {
                Ok(m) if m.is_file() => m,
                Ok(_) => {
                    self.warnings.push(Warning::replaced(&item.rel));
                    return Ok(false);
                }
                Err(e) => {
                    self.warnings.push(Warning::from_io(&item.rel, WarningKind::Unreadable, &e));
                    return Ok(false);
                }
            };
            let meta = entry_meta(&item.rel, &before, Kind::File, None);
            self.files_read += 1;
            let mut stream = ChunkStream { chunker: Chunker::new(self.cutter.target), current: Vec::new(), sent: 0 };
            let mut header = Vec::new();
            write_header(&meta, &mut header);
            self.feed(&mut stream, &header, known)?;
            let mut remaining = before.size;
            let mut buf = vec![0u8; 1 << 20];
            let mut trouble: Option<String> = None;
            while remaining > 0 {
                let want = buf.len().min(remaining as usize);
                let got = match read_some(&mut f, &mut buf[..want]) {
                    Ok(n) => n,
                    Err(e) => {
                        trouble = Some(format!(
                            "read error after {} bytes ({e}); the rest is zero-filled",
                            before.size - remaining
                        ));
                        0
                    }
                };
                if got == 0 {
                    trouble
                        .get_or_insert_with(|| format!("shrank while read: {} bytes missing, zero-filled", remaining));
                    // The header promised `size` bytes: keep the stream valid.
                    let zeros = vec![0u8; buf.len()];
                    while remaining > 0 {
                        let n = zeros.len().min(remaining as usize);
                        self.feed(&mut stream, &zeros[..n], known)?;
                        remaining -= n as u64;
                    }
                    break;
                }
                self.feed(&mut stream, &buf[..got], known)?;
                remaining -= got as u64;
                if let Some(p) = &self.progress {
                    p.bytes_read.fetch_add(got as u64, Ordering::Relaxed);
                }
            }
            let pad = vec![0u8; padding(before.size)];
            self.feed(&mut stream, &pad, known)?;
            if !stream.current.is_empty() {
                let last = std::mem::take(&mut stream.current);
                self.send_chunk(last, known, stream.sent)?;
            }
            let after = f.metadata().map(|m| Stat::from(&m)).unwrap_or(before);
            let settled = trouble.is_none() && same_stat(&before, &after);
            if settled || !rewindable {
                if let Some(msg) = trouble {
                    self.warnings.push(Warning {
                        path: lossy(&item.rel),
                        kind: WarningKind::ChangedWhileRead,
                        message: msg,
                    });
                } else if !settled {
                    self.warnings.push(Warning::changed(&item.rel, attempt));
                }
                let entry = (settled && !reuse::is_racy(&after, self.racy_after)).then(|| {
                    let mut print = EntryPrint::default();
                    print.add(&meta, &after);
                    print.finish()
                });
                self.send_control(|seq| Job::LargeEnd { seq, path: item.rel.clone(), entry })?;
                self.stats.files += 1;
                self.stats.content_bytes += meta.size;
                self.record(&meta);
                return Ok(true);
            }
            // Changed under us: forget what was sent and read it again.
            self.send_control(Job::Rewind)?;
            self.raw_len = saved;
        }
    }

    fn feed(&mut self, stream: &mut ChunkStream, mut data: &[u8], known: &Known) -> Result<(), ArchiveError> {
        while !data.is_empty() {
            match stream.chunker.next_cut(data) {
                Some(n) => {
                    stream.current.extend_from_slice(&data[..n]);
                    let chunk = std::mem::take(&mut stream.current);
                    self.send_chunk(chunk, known, stream.sent)?;
                    stream.sent += 1;
                    data = &data[n..];
                }
                None => {
                    stream.current.extend_from_slice(data);
                    break;
                }
            }
        }
        Ok(())
    }
}

impl Producer<'_> {
    /// Chunk number `n` of a large file: taken unread if `known` (and
    /// held), else compressed, with the previous version's chunk `n` as
    /// its base.
    fn send_chunk(&mut self, raw: Vec<u8>, known: &Known, n: usize) -> Result<(), ArchiveError> {
        let digest = Digest::of(&raw);
        if let Some(member) = known.by_raw.get(&digest) {
            if member.raw_len == raw.len() as u64 && (self.hold)(&member.sha256) {
                self.raw_len += member.raw_len;
                return self.send_reuse(member.clone(), Tag::Chunk { raw: digest });
            }
        }
        self.send_segment(raw, Tag::Chunk { raw: digest }, known.in_order.get(n).copied())
    }
}

struct ChunkStream {
    chunker: Chunker,
    current: Vec<u8>,
    /// Chunks sent so far.
    sent: usize,
}

/// The chunks of a large file's previous version.
#[derive(Default)]
struct Known {
    by_raw: HashMap<Digest, MemberRef>,
    in_order: Vec<Digest>,
}

/// What the previous run had for a planned group.
enum Found {
    /// The same entries, unchanged: its member, and their print.
    Reuse(MemberRef, Digest),
    /// Not the same: the member it had there, if any.
    Base(Option<Digest>),
}

fn read_some(f: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match f.read(buf) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

fn open_nofollow(path: &Path) -> io::Result<File> {
    std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW | libc::O_NOATIME).open(path).or_else(|e| {
        // O_NOATIME is refused on files we do not own; retry without it.
        if e.raw_os_error() == Some(libc::EPERM) {
            std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW).open(path)
        } else {
            Err(e)
        }
    })
}

/// Content unchanged as far as metadata can tell.
fn same_stat(a: &Stat, b: &Stat) -> bool {
    a.size == b.size
        && a.mtime == b.mtime
        && a.mtime_nsec == b.mtime_nsec
        && a.ctime == b.ctime
        && a.ctime_nsec == b.ctime_nsec
        && a.ino == b.ino
}

fn entry_meta(rel: &[u8], m: &Stat, kind: Kind, link: Option<Vec<u8>>) -> EntryMeta {
    EntryMeta {
        path: rel.to_vec(),
        kind,
        size: if kind == Kind::File { m.size } else { 0 },
        mode: m.mode & 0o7777,
        mtime: m.mtime,
        mtime_nsec: m.mtime_nsec.clamp(0, 999_999_999) as u32,
        uid: u64::from(m.uid),
        gid: u64::from(m.gid),
        link,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
