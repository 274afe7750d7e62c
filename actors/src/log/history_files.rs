//! The history's files: a write-ahead file in front of sorted, immutable
//! runs, in the data directory's `history/`.
//!
//! Why files and not the embedded key-value store: sled keeps most of what
//! it holds in memory whatever its cache size (100,000 history entries took
//! 39 MiB, and a 15-minute soak grew each node by 4 MiB a minute, almost all
//! of it sled's). History only grows and is read newest first, page by page,
//! so a log-structured layout of our own keeps memory to a small index per
//! run, whatever the history's length.
//!
//! Layout (`history/`):
//! - `active.log`: the write-ahead file. A header (magic, the number of the
//!   run it will become), then one record per entry in arrival order. Its
//!   entries are also held in memory, sorted (at most [`FLUSH_ENTRIES`]).
//! - `{number:016x}-{level}.run`: a run, entries sorted by key, in blocks of
//!   [`BLOCK_RECORDS`], then a footer (each block's first key, place and a
//!   256-bit filter of its series; the highest seq per origin; the runs it
//!   replaces) and a trailer (footer length, CRC, magic).
//!
//! Every record is `len u32 ‖ crc32 u32 ‖ key_len u16 ‖ key ‖ series flag
//! u8 ‖ [series 16 bytes] ‖ value`, little-endian, the CRC over what
//! follows it. A torn record at the end of `active.log` is cut off at open.
//!
//! Writes and what a crash at each point leaves:
//! - an entry is appended to `active.log` (and fsynced by [`HistoryFiles::sync`],
//!   at once for the node's own entries, within a second for others);
//! - when the memory part is full it becomes run N: written to a temp
//!   file, fsynced, renamed, directory fsynced; then `active.log` is
//!   replaced (the same way) by an empty one for N+1. A crash in between
//!   leaves a run numbered N and a write-ahead file for N: at open, a
//!   write-ahead file whose number a run already has is discarded;
//! - [`FAN_IN`] runs of one level are merged into one of the next (up to
//!   [`MAX_LEVEL`]), named after the newest input, its footer listing the
//!   inputs; they are deleted after. At open, any run a footer lists is
//!   deleted, and temp files are removed.

use std::collections::{BTreeMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::ops::Bound;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::store::StoreError;

const WAL: &str = "active.log";
const WAL_MAGIC: &[u8; 8] = b"BMHWAL01";
const RUN_MAGIC: &[u8; 8] = b"BMHRUN01";
/// Entries the write-ahead part holds before it becomes a run.
pub const FLUSH_ENTRIES: usize = 4_096;
/// ... or bytes of entries.
const FLUSH_BYTES: usize = 4 << 20;
/// Records per block: the unit a run is read in.
const BLOCK_RECORDS: usize = 64;
/// HistoryFiles of one level merged into one of the next.
const FAN_IN: usize = 4;
/// HistoryFiles are not merged past this level (4³ × 4,096 = 262,144 entries).
const MAX_LEVEL: u8 = 3;
/// No record is larger (an entry is a few hundred bytes).
const RECORD_MAX: u32 = 16 << 20;

/// A series as runs know it: 16 bytes of a digest of node and path.
pub type SeriesTag = [u8; 16];

/// One stored record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoryItem {
    pub key: Vec<u8>,
    pub series: Option<SeriesTag>,
    pub value: Vec<u8>,
}

impl HistoryItem {
    fn encode(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&[0; 8]);
        out.extend_from_slice(&(self.key.len() as u16).to_le_bytes());
        out.extend_from_slice(&self.key);
        match &self.series {
            Some(s) => {
                out.push(1);
                out.extend_from_slice(s);
            }
            None => out.push(0),
        }
        out.extend_from_slice(&self.value);
        let body_len = (out.len() - start - 8) as u32;
        let crc = crc32fast::hash(&out[start + 8..]);
        out[start..start + 4].copy_from_slice(&body_len.to_le_bytes());
        out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    }

    /// Decodes the record at the start of `buf`: the item and its length,
    /// or None when `buf` holds no whole, intact record.
    fn decode(buf: &[u8]) -> Option<(HistoryItem, usize)> {
        let len = u32::from_le_bytes(buf.get(..4)?.try_into().ok()?);
        let crc = u32::from_le_bytes(buf.get(4..8)?.try_into().ok()?);
        if len > RECORD_MAX {
            return None;
        }
        let body = buf.get(8..8 + len as usize)?;
        if crc32fast::hash(body) != crc {
            return None;
        }
        let key_len = u16::from_le_bytes(body.get(..2)?.try_into().ok()?) as usize;
        let key = body.get(2..2 + key_len)?.to_vec();
        let mut at = 2 + key_len;
        let series = match body.get(at)? {
            0 => None,
            1 => {
                let s: SeriesTag = body.get(at + 1..at + 17)?.try_into().ok()?;
                at += 16;
                Some(s)
            }
            _ => return None,
        };
        at += 1;
        Some((HistoryItem { key, series, value: body[at..].to_vec() }, 8 + len as usize))
    }
}

/// The origin and seq a history key ends with (wall 8 ‖ logical 4 ‖
/// origin ‖ 0 ‖ seq 8).
fn id_of_key(key: &[u8]) -> Option<(&str, u64)> {
    if key.len() < 12 + 9 {
        return None;
    }
    let seq = u64::from_be_bytes(key[key.len() - 8..].try_into().ok()?);
    let origin = std::str::from_utf8(&key[12..key.len() - 9]).ok()?;
    Some((origin, seq))
}

fn bloom_bit(s: &SeriesTag) -> (usize, u8) {
    ((s[0] >> 3) as usize, 1 << (s[0] & 7))
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Block {
    #[serde(with = "serde_bytes")]
    first: Vec<u8>,
    offset: u64,
    len: u32,
    /// Bit `tag[0]` is set for every series with an entry in the block.
    #[serde(with = "serde_bytes")]
    series: Vec<u8>,
}

impl Block {
    fn may_hold(&self, s: &SeriesTag) -> bool {
        let (byte, bit) = bloom_bit(s);
        self.series.get(byte).is_some_and(|b| b & bit != 0)
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Footer {
    count: u64,
    blocks: Vec<Block>,
    #[serde(with = "serde_bytes")]
    last: Vec<u8>,
    /// The highest seq of each origin in the run.
    origins: BTreeMap<String, u64>,
    /// File names of the runs this one was merged from.
    replaces: Vec<String>,
}

struct Run {
    name: String,
    number: u64,
    level: u8,
    footer: Arc<Footer>,
}

fn run_name(number: u64, level: u8) -> String {
    format!("{number:016x}-{level}.run")
}

fn parse_run_name(name: &str) -> Option<(u64, u8)> {
    let stem = name.strip_suffix(".run")?;
    let (n, l) = stem.split_once('-')?;
    Some((u64::from_str_radix(n, 16).ok()?, l.parse().ok()?))
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io { path: path.to_path_buf(), source }
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io_err(dir))
}

/// Why a run file cannot be read: it is set aside, never trusted.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct BadRun(String);

fn read_footer(path: &Path) -> Result<Footer, BadRun> {
    let f = File::open(path).map_err(|e| BadRun(e.to_string()))?;
    let size = f.metadata().map_err(|e| BadRun(e.to_string()))?.len();
    if size < 16 {
        return Err(BadRun("too short for a run".into()));
    }
    let mut trailer = [0u8; 16];
    f.read_exact_at(&mut trailer, size - 16).map_err(|e| BadRun(e.to_string()))?;
    if &trailer[8..] != RUN_MAGIC {
        return Err(BadRun("no run trailer".into()));
    }
    let len = u32::from_le_bytes(trailer[..4].try_into().unwrap_or_default()) as u64;
    let crc = u32::from_le_bytes(trailer[4..8].try_into().unwrap_or_default());
    if len + 16 > size {
        return Err(BadRun("the footer length is past the file's start".into()));
    }
    let mut body = vec![0u8; len as usize];
    f.read_exact_at(&mut body, size - 16 - len).map_err(|e| BadRun(e.to_string()))?;
    if crc32fast::hash(&body) != crc {
        return Err(BadRun("the footer's checksum does not match".into()));
    }
    ciborium::from_reader(&body[..]).map_err(|e| BadRun(format!("the footer does not decode: {e}")))
}

/// Writes one run: blocks of records, then footer and trailer.
struct RunWriter {
    tmp: PathBuf,
    out: BufWriter<File>,
    offset: u64,
    footer: Footer,
    in_block: usize,
    buf: Vec<u8>,
}

impl RunWriter {
    fn create(dir: &Path, name: &str) -> Result<Self, StoreError> {
        let tmp = dir.join(format!("{name}.tmp"));
        let file = File::create(&tmp).map_err(io_err(&tmp))?;
        Ok(RunWriter {
            tmp,
            out: BufWriter::new(file),
            offset: 0,
            footer: Footer::default(),
            in_block: 0,
            buf: Vec::new(),
        })
    }

    fn push(&mut self, item: &HistoryItem) -> Result<(), StoreError> {
        if self.in_block == 0 || self.in_block == BLOCK_RECORDS {
            self.footer.blocks.push(Block {
                first: item.key.clone(),
                offset: self.offset,
                len: 0,
                series: vec![0; 32],
            });
            self.in_block = 0;
        }
        self.buf.clear();
        item.encode(&mut self.buf);
        self.out.write_all(&self.buf).map_err(io_err(&self.tmp))?;
        self.offset += self.buf.len() as u64;
        if let Some(b) = self.footer.blocks.last_mut() {
            b.len += self.buf.len() as u32;
            if let Some(s) = &item.series {
                let (byte, bit) = bloom_bit(s);
                b.series[byte] |= bit;
            }
        }
        self.in_block += 1;
        self.footer.count += 1;
        self.footer.last.clone_from(&item.key);
        if let Some((origin, seq)) = id_of_key(&item.key) {
            let m = self.footer.origins.entry(origin.to_string()).or_default();
            *m = (*m).max(seq);
        }
        Ok(())
    }

    /// Writes footer and trailer, fsyncs, renames into place and fsyncs
    /// the directory.
    fn finish(mut self, dir: &Path, name: &str, replaces: Vec<String>) -> Result<Footer, StoreError> {
        self.footer.replaces = replaces;
        let mut body = Vec::new();
        ciborium::into_writer(&self.footer, &mut body)
            .map_err(|e| StoreError::Index { reason: format!("encoding a history footer: {e}") })?;
        let mut trailer = Vec::with_capacity(16);
        trailer.extend_from_slice(&(body.len() as u32).to_le_bytes());
        trailer.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
        trailer.extend_from_slice(RUN_MAGIC);
        self.out.write_all(&body).map_err(io_err(&self.tmp))?;
        self.out.write_all(&trailer).map_err(io_err(&self.tmp))?;
        let file =
            self.out.into_inner().map_err(|e| StoreError::Io { path: self.tmp.clone(), source: e.into_error() })?;
        file.sync_all().map_err(io_err(&self.tmp))?;
        let path = dir.join(name);
        fs::rename(&self.tmp, &path).map_err(io_err(&path))?;
        sync_dir(dir)?;
        Ok(self.footer)
    }
}

/// Reads a run's blocks, one at a time, in either direction.
struct RunReader {
    path: PathBuf,
    file: File,
    footer: Arc<Footer>,
}

impl RunReader {
    fn open(dir: &Path, run: &Run) -> Result<Self, StoreError> {
        let path = dir.join(&run.name);
        let file = File::open(&path).map_err(io_err(&path))?;
        Ok(RunReader { path, file, footer: run.footer.clone() })
    }

    fn block(&self, i: usize) -> Result<Vec<HistoryItem>, StoreError> {
        let b = &self.footer.blocks[i];
        let mut buf = vec![0u8; b.len as usize];
        self.file.read_exact_at(&mut buf, b.offset).map_err(io_err(&self.path))?;
        let mut items = Vec::with_capacity(BLOCK_RECORDS);
        let mut at = 0;
        while at < buf.len() {
            let (item, n) = HistoryItem::decode(&buf[at..]).ok_or_else(|| StoreError::Index {
                reason: format!("{}: a history block at byte {} is corrupt", self.path.display(), b.offset),
            })?;
            items.push(item);
            at += n;
        }
        Ok(items)
    }
}

/// Items of one source, greatest key first.
enum Source<'a> {
    /// The write-ahead part, read in place: a page copies only the items
    /// it takes, not the whole part.
    Mem(std::iter::Peekable<Box<dyn Iterator<Item = &'a HistoryItem> + 'a>>),
    Run {
        reader: RunReader,
        next_block: usize,
        buf: Vec<HistoryItem>,
        before: Option<Vec<u8>>,
        series: Option<SeriesTag>,
    },
}

impl Source<'_> {
    /// The next item, greatest key first (None when done).
    fn peek(&mut self) -> Result<Option<&HistoryItem>, StoreError> {
        match self {
            Source::Mem(it) => Ok(it.peek().copied()),
            Source::Run { reader, next_block, buf, before, series } => {
                while buf.is_empty() && *next_block > 0 {
                    *next_block -= 1;
                    let block = &reader.footer.blocks[*next_block];
                    if series.as_ref().is_some_and(|s| !block.may_hold(s)) {
                        continue;
                    }
                    let mut items = reader.block(*next_block)?;
                    items.retain(|i| {
                        before.as_ref().is_none_or(|b| i.key < *b) && series.is_none_or(|s| i.series == Some(s))
                    });
                    *buf = items;
                }
                Ok(buf.last())
            }
        }
    }

    fn pop(&mut self) -> Option<HistoryItem> {
        match self {
            Source::Mem(it) => it.next().cloned(),
            Source::Run { buf, .. } => buf.pop(),
        }
    }
}

/// Stored items, greatest key first, each key once.
pub struct RevIter<'a> {
    sources: Vec<Source<'a>>,
    last: Option<Vec<u8>>,
}

impl Iterator for RevIter<'_> {
    type Item = Result<HistoryItem, StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            // The source whose head has the greatest key.
            let mut best: Option<(usize, &[u8])> = None;
            for (i, s) in self.sources.iter_mut().enumerate() {
                match s.peek() {
                    Ok(Some(head)) => {
                        if best.is_none_or(|(_, b)| head.key.as_slice() > b) {
                            best = Some((i, head.key.as_slice()));
                        }
                    }
                    Ok(None) => {}
                    Err(e) => return Some(Err(e)),
                }
            }
            let (i, _) = best?;
            let item = self.sources[i].pop()?;
            if self.last.as_ref() == Some(&item.key) {
                continue;
            }
            self.last = Some(item.key.clone());
            return Some(Ok(item));
        }
    }
}

/// The history's files (see the module's documentation).
pub struct HistoryFiles {
    dir: PathBuf,
    wal: File,
    wal_number: u64,
    /// Unsynced appends to the write-ahead file.
    dirty: bool,
    /// Bytes of whole records in the write-ahead file.
    wal_len: u64,
    /// A run was written but the write-ahead file not yet reset: nothing
    /// may be appended to it (at open it would be taken for that run's).
    needs_reset: bool,
    mem: BTreeMap<Vec<u8>, HistoryItem>,
    mem_bytes: usize,
    runs: Vec<Run>,
    origins: BTreeMap<String, u64>,
}

impl HistoryFiles {
    /// Opens (creating) `dir`, finishing or undoing what a crash left.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let mut runs = Vec::new();
        let mut replaced = HashSet::new();
        for de in fs::read_dir(dir).map_err(io_err(dir))? {
            let de = de.map_err(io_err(dir))?;
            let name = de.file_name().to_string_lossy().into_owned();
            let path = de.path();
            if name.ends_with(".tmp") {
                fs::remove_file(&path).map_err(io_err(&path))?;
                continue;
            }
            let Some((number, level)) = parse_run_name(&name) else { continue };
            match read_footer(&path) {
                Ok(footer) => {
                    replaced.extend(footer.replaces.iter().cloned());
                    runs.push(Run { name, number, level, footer: Arc::new(footer) });
                }
                Err(why) => {
                    // Set aside, not deleted: the keepers of its series still
                    // hold these entries, and the file may be looked at.
                    let aside = path.with_extension("corrupt");
                    tracing::error!(
                        "history run {} is unreadable ({why}); moved to {}",
                        path.display(),
                        aside.display()
                    );
                    fs::rename(&path, &aside).map_err(io_err(&path))?;
                }
            }
        }
        for name in &replaced {
            let path = dir.join(name);
            if path.exists() {
                fs::remove_file(&path).map_err(io_err(&path))?;
            }
        }
        runs.retain(|r| !replaced.contains(&r.name));
        runs.sort_by_key(|r| (r.number, r.level));
        sync_dir(dir)?;

        let mut origins = BTreeMap::new();
        for r in &runs {
            for (o, s) in &r.footer.origins {
                let m: &mut u64 = origins.entry(o.clone()).or_default();
                *m = (*m).max(*s);
            }
        }
        let newest_run = runs.iter().map(|r| r.number).max();
        let wal_path = dir.join(WAL);
        let (mut number, items, good_len) = match fs::read(&wal_path) {
            Ok(bytes) if bytes.len() >= 16 && &bytes[..8] == WAL_MAGIC => {
                let number = u64::from_le_bytes(bytes[8..16].try_into().unwrap_or_default());
                let mut items = Vec::new();
                let mut at = 16;
                while let Some((item, n)) = HistoryItem::decode(&bytes[at..]) {
                    items.push(item);
                    at += n;
                }
                if at < bytes.len() {
                    tracing::warn!(
                        "{}: cut {} bytes of a torn last record (a crash while writing it)",
                        wal_path.display(),
                        bytes.len() - at
                    );
                }
                (number, items, Some(at as u64))
            }
            Ok(bytes) if bytes.is_empty() => (0, Vec::new(), None),
            Ok(_) => {
                return Err(StoreError::Index {
                    reason: format!("{} is not a backmesh history file (or a newer format)", wal_path.display()),
                })
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => (0, Vec::new(), None),
            Err(e) => return Err(io_err(&wal_path)(e)),
        };
        let flushed = newest_run.is_some_and(|n| n >= number);
        let mut wal_items = items;
        if flushed || good_len.is_none() {
            // Already a run (a crash between writing it and resetting this
            // file), or no write-ahead file yet.
            wal_items.clear();
            number = newest_run.map_or(1, |n| n + 1).max(number);
            write_wal_header(dir, number)?;
        } else if let Some(len) = good_len {
            let f = OpenOptions::new().write(true).open(&wal_path).map_err(io_err(&wal_path))?;
            if f.metadata().map_err(io_err(&wal_path))?.len() != len {
                f.set_len(len).map_err(io_err(&wal_path))?;
                f.sync_all().map_err(io_err(&wal_path))?;
            }
        }
        let wal = OpenOptions::new().append(true).open(&wal_path).map_err(io_err(&wal_path))?;
        let mut me = HistoryFiles {
            dir: dir.to_path_buf(),
            wal,
            wal_number: number,
            dirty: false,
            wal_len: 0,
            needs_reset: false,
            mem: BTreeMap::new(),
            mem_bytes: 0,
            runs,
            origins,
        };
        me.wal_len = me.wal.metadata().map_err(io_err(&wal_path))?.len();
        for item in wal_items {
            me.remember(item);
        }
        Ok(me)
    }

    fn remember(&mut self, item: HistoryItem) {
        if let Some((origin, seq)) = id_of_key(&item.key) {
            let m = self.origins.entry(origin.to_string()).or_default();
            *m = (*m).max(seq);
        }
        self.mem_bytes += item.key.len() + item.value.len() + 17;
        self.mem.insert(item.key.clone(), item);
    }

    /// Whether an item with this key is stored.
    pub fn contains(&self, key: &[u8], series: Option<&SeriesTag>) -> Result<bool, StoreError> {
        if self.mem.contains_key(key) {
            return Ok(true);
        }
        for run in &self.runs {
            let f = &run.footer;
            if f.blocks.first().is_none_or(|b| key < b.first.as_slice()) || key > f.last.as_slice() {
                continue;
            }
            let i = f.blocks.partition_point(|b| b.first.as_slice() <= key).saturating_sub(1);
            if series.is_some_and(|s| !f.blocks[i].may_hold(s)) {
                continue;
            }
            if RunReader::open(&self.dir, run)?.block(i)?.iter().any(|it| it.key == key) {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Stores `item` unless its key is stored already (then false). Durable
    /// once [`HistoryFiles::sync`] returns.
    pub fn insert(&mut self, item: HistoryItem) -> Result<bool, StoreError> {
        if self.contains(&item.key, item.series.as_ref())? {
            return Ok(false);
        }
        if self.needs_reset {
            self.reset_wal()?;
        }
        let mut buf = Vec::new();
        item.encode(&mut buf);
        let wal_path = self.dir.join(WAL);
        if let Err(e) = self.wal.write_all(&buf) {
            // A half-written record would hide every later one at open: cut it.
            if let Err(cut) = self.wal.set_len(self.wal_len) {
                tracing::error!("{}: cannot cut a failed write back ({cut})", wal_path.display());
            }
            return Err(io_err(&wal_path)(e));
        }
        self.wal_len += buf.len() as u64;
        self.dirty = true;
        self.remember(item);
        if self.mem.len() >= FLUSH_ENTRIES || self.mem_bytes >= FLUSH_BYTES {
            // The entry is stored: a failure here is retried at the next insert.
            let started = std::time::Instant::now();
            let entries = self.mem.len();
            if let Err(e) = self.flush_mem().and_then(|()| self.compact()) {
                tracing::error!("cannot write a history run in {}: {e}", self.dir.display());
            }
            tracing::debug!(
                "history: {entries} entries written as a run (and runs merged) in {} ms",
                started.elapsed().as_millis()
            );
        }
        Ok(true)
    }

    /// Makes every insert so far durable.
    pub fn sync(&mut self) -> Result<(), StoreError> {
        if self.dirty {
            self.wal.sync_data().map_err(io_err(&self.dir.join(WAL)))?;
            self.dirty = false;
        }
        Ok(())
    }

    /// The highest seq of `origin` stored (0 if none).
    pub fn max_seq(&self, origin: &str) -> u64 {
        self.origins.get(origin).copied().unwrap_or(0)
    }

    /// Items with keys below `before` (of series `series`), greatest first.
    pub fn rev(&self, before: Option<&[u8]>, series: Option<SeriesTag>) -> Result<RevIter<'_>, StoreError> {
        let upper = match before {
            Some(b) => Bound::Excluded(b),
            None => Bound::Unbounded,
        };
        let mem: Box<dyn Iterator<Item = &HistoryItem> + '_> = Box::new(
            self.mem
                .range::<[u8], _>((Bound::Unbounded, upper))
                .rev()
                .map(|(_, v)| v)
                .filter(move |i| series.is_none_or(|s| i.series == Some(s))),
        );
        let mut sources = vec![Source::Mem(mem.peekable())];
        for run in &self.runs {
            let reader = RunReader::open(&self.dir, run)?;
            let next_block = match before {
                Some(b) => run.footer.blocks.partition_point(|bl| bl.first.as_slice() < b),
                None => run.footer.blocks.len(),
            };
            sources.push(Source::Run {
                reader,
                next_block,
                buf: Vec::new(),
                before: before.map(<[u8]>::to_vec),
                series,
            });
        }
        Ok(RevIter { sources, last: None })
    }

    /// Entries stored (on disk and in the write-ahead part).
    pub fn len(&self) -> u64 {
        self.mem.len() as u64 + self.runs.iter().map(|r| r.footer.count).sum::<u64>()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// HistoryFiles on disk.
    pub fn run_count(&self) -> usize {
        self.runs.len()
    }

    /// Turns the write-ahead part into run `wal_number`, then starts an
    /// empty write-ahead file for the next.
    fn flush_mem(&mut self) -> Result<(), StoreError> {
        if self.mem.is_empty() {
            return Ok(());
        }
        let name = run_name(self.wal_number, 0);
        let mut w = RunWriter::create(&self.dir, &name)?;
        for item in self.mem.values() {
            w.push(item)?;
        }
        let footer = w.finish(&self.dir, &name, Vec::new())?;
        self.runs.push(Run { name, number: self.wal_number, level: 0, footer: Arc::new(footer) });
        self.wal_number += 1;
        self.mem.clear();
        self.mem_bytes = 0;
        self.needs_reset = true;
        self.reset_wal()
    }

    /// Starts the empty write-ahead file of run `wal_number`.
    fn reset_wal(&mut self) -> Result<(), StoreError> {
        write_wal_header(&self.dir, self.wal_number)?;
        let wal_path = self.dir.join(WAL);
        self.wal = OpenOptions::new().append(true).open(&wal_path).map_err(io_err(&wal_path))?;
        self.wal_len = 16;
        self.dirty = false;
        self.needs_reset = false;
        Ok(())
    }

    /// Merges [`FAN_IN`] runs of a level into one of the next, while any
    /// level below [`MAX_LEVEL`] has that many.
    fn compact(&mut self) -> Result<(), StoreError> {
        loop {
            let Some(level) = (0..MAX_LEVEL).find(|l| self.runs.iter().filter(|r| r.level == *l).count() >= FAN_IN)
            else {
                return Ok(());
            };
            let mut inputs: Vec<usize> = (0..self.runs.len()).filter(|i| self.runs[*i].level == level).collect();
            inputs.sort_by_key(|i| self.runs[*i].number);
            inputs.truncate(FAN_IN);
            let number = inputs.iter().map(|i| self.runs[*i].number).max().unwrap_or(0);
            let name = run_name(number, level + 1);
            let mut w = RunWriter::create(&self.dir, &name)?;
            let mut readers: Vec<(RunReader, usize, std::vec::IntoIter<HistoryItem>)> = Vec::new();
            for i in &inputs {
                readers.push((RunReader::open(&self.dir, &self.runs[*i])?, 0, Vec::new().into_iter()));
            }
            // Ascending k-way merge, each key once.
            let mut heads: Vec<Option<HistoryItem>> = Vec::with_capacity(readers.len());
            for r in &mut readers {
                heads.push(next_forward(r)?);
            }
            let mut last: Option<Vec<u8>> = None;
            while let Some(i) = (0..heads.len())
                .filter(|i| heads[*i].is_some())
                .min_by(|a, b| heads[*a].as_ref().map(|x| &x.key).cmp(&heads[*b].as_ref().map(|x| &x.key)))
            {
                let Some(item) = heads[i].take() else { break };
                heads[i] = next_forward(&mut readers[i])?;
                if last.as_ref() != Some(&item.key) {
                    w.push(&item)?;
                    last = Some(item.key);
                }
            }
            let replaces: Vec<String> = inputs.iter().map(|i| self.runs[*i].name.clone()).collect();
            let footer = w.finish(&self.dir, &name, replaces.clone())?;
            for n in &replaces {
                let p = self.dir.join(n);
                fs::remove_file(&p).map_err(io_err(&p))?;
            }
            sync_dir(&self.dir)?;
            self.runs.retain(|r| !replaces.contains(&r.name));
            self.runs.push(Run { name, number, level: level + 1, footer: Arc::new(footer) });
            self.runs.sort_by_key(|r| (r.number, r.level));
        }
    }
}

/// The next item of a run read front to back, a block at a time.
fn next_forward(
    r: &mut (RunReader, usize, std::vec::IntoIter<HistoryItem>),
) -> Result<Option<HistoryItem>, StoreError> {
    loop {
        if let Some(item) = r.2.next() {
            return Ok(Some(item));
        }
        if r.1 >= r.0.footer.blocks.len() {
            return Ok(None);
        }
        r.2 = r.0.block(r.1)?.into_iter();
        r.1 += 1;
    }
}

/// Replaces the write-ahead file by an empty one for run `number`.
fn write_wal_header(dir: &Path, number: u64) -> Result<(), StoreError> {
    let mut header = WAL_MAGIC.to_vec();
    header.extend_from_slice(&number.to_le_bytes());
    crate::store::write_atomic(&dir.join(WAL), &header).map_err(io_err(&dir.join(WAL)))
}

impl crate::error::Transient for BadRun {
    fn retry(&self) -> crate::error::Retry {
        // A damaged file reads the same way; it is set aside and rebuilt.
        crate::error::Retry::Never
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(wall: u64, origin: &str, seq: u64) -> Vec<u8> {
        let mut k = wall.to_be_bytes().to_vec();
        k.extend_from_slice(&0u32.to_be_bytes());
        k.extend_from_slice(origin.as_bytes());
        k.push(0);
        k.extend_from_slice(&seq.to_be_bytes());
        k
    }

    fn item(n: u64, series: u8) -> HistoryItem {
        HistoryItem { key: key(n, "P", n), series: Some([series; 16]), value: format!("entry {n}").into_bytes() }
    }

    fn all(r: &HistoryFiles, before: Option<&[u8]>, series: Option<SeriesTag>) -> Vec<u64> {
        r.rev(before, series).unwrap().map(|i| id_of_key(&i.unwrap().key).unwrap().1).collect()
    }

    #[test]
    fn items_come_back_newest_first_across_runs_and_merges() {
        let t = tempfile::tempdir().unwrap();
        let mut r = HistoryFiles::open(t.path()).unwrap();
        let n = (FLUSH_ENTRIES * 5 + 100) as u64;
        // Out of order on purpose: odd keys first, then even ones.
        for k in (1..=n).filter(|k| k % 2 == 1).chain((1..=n).filter(|k| k % 2 == 0)) {
            assert!(r.insert(item(k, (k % 3) as u8)).unwrap());
        }
        assert!(!r.insert(item(7, 1)).unwrap(), "a stored key is not stored twice");
        assert!(r.run_count() < 5, "four level-0 runs were merged: {}", r.run_count());
        r.sync().unwrap();
        assert_eq!(r.len(), n);
        assert_eq!(all(&r, None, None), (1..=n).rev().collect::<Vec<_>>());
        let before = key(1000, "P", 1000);
        assert_eq!(all(&r, Some(&before), Some([2; 16])), (1..1000).rev().filter(|k| k % 3 == 2).collect::<Vec<_>>());
        assert_eq!(r.max_seq("P"), n);
        drop(r);
        let r = HistoryFiles::open(t.path()).unwrap();
        assert_eq!(r.len(), n, "everything is there after a reopen");
        assert_eq!(all(&r, None, None).len() as u64, n);
    }

    #[test]
    fn a_torn_last_record_is_cut_and_the_rest_kept() {
        let t = tempfile::tempdir().unwrap();
        let mut r = HistoryFiles::open(t.path()).unwrap();
        for k in 1..=10 {
            r.insert(item(k, 0)).unwrap();
        }
        r.sync().unwrap();
        drop(r);
        let wal = t.path().join(WAL);
        let len = fs::metadata(&wal).unwrap().len();
        // A crash halfway through writing the last record.
        OpenOptions::new().write(true).open(&wal).unwrap().set_len(len - 5).unwrap();
        let mut r = HistoryFiles::open(t.path()).unwrap();
        assert_eq!(all(&r, None, None), (1..=9).rev().collect::<Vec<_>>());
        assert!(r.insert(item(10, 0)).unwrap(), "the torn one can be stored again");
        r.sync().unwrap();
        drop(r);
        assert_eq!(all(&HistoryFiles::open(t.path()).unwrap(), None, None), (1..=10).rev().collect::<Vec<_>>());
    }

    #[test]
    fn a_crash_after_a_run_is_written_but_before_the_write_ahead_file_resets_keeps_one_copy() {
        let t = tempfile::tempdir().unwrap();
        let mut r = HistoryFiles::open(t.path()).unwrap();
        for k in 1..=(FLUSH_ENTRIES as u64 - 1) {
            r.insert(item(k, 0)).unwrap();
        }
        r.sync().unwrap();
        let saved = fs::read(t.path().join(WAL)).unwrap();
        r.insert(item(FLUSH_ENTRIES as u64, 0)).unwrap();
        assert_eq!(r.run_count(), 1);
        drop(r);
        // Put back the write-ahead file as it was before the reset (minus
        // the last entry): its number is the run's.
        fs::write(t.path().join(WAL), &saved).unwrap();
        let mut r = HistoryFiles::open(t.path()).unwrap();
        assert_eq!(r.len(), FLUSH_ENTRIES as u64, "the stale write-ahead file was discarded");
        assert!(r.insert(item(FLUSH_ENTRIES as u64 + 1, 0)).unwrap());
        assert!(!r.insert(item(3, 0)).unwrap());
    }

    #[test]
    fn a_crash_during_a_merge_leaves_each_entry_once() {
        let t = tempfile::tempdir().unwrap();
        let mut r = HistoryFiles::open(t.path()).unwrap();
        let n = FLUSH_ENTRIES as u64 * 3;
        for k in 1..=n {
            r.insert(item(k, 0)).unwrap();
        }
        assert_eq!(r.run_count(), 3);
        let names: Vec<String> = r.runs.iter().map(|x| x.name.clone()).collect();
        let copies: Vec<Vec<u8>> = names.iter().map(|n| fs::read(t.path().join(n)).unwrap()).collect();
        for k in n + 1..=n + FLUSH_ENTRIES as u64 {
            r.insert(item(k, 0)).unwrap();
        }
        assert_eq!(r.run_count(), 1, "merged");
        drop(r);
        // The inputs back, as if the crash came before they were deleted;
        // and a half-written temp file.
        for (n, c) in names.iter().zip(&copies) {
            fs::write(t.path().join(n), c).unwrap();
        }
        fs::write(t.path().join("ffff-0.run.tmp"), b"half").unwrap();
        let r = HistoryFiles::open(t.path()).unwrap();
        assert_eq!(r.run_count(), 1);
        assert_eq!(all(&r, None, None), (1..=n + FLUSH_ENTRIES as u64).rev().collect::<Vec<_>>());
        assert!(!t.path().join("ffff-0.run.tmp").exists());
    }

    #[test]
    fn a_corrupt_run_is_set_aside_and_a_corrupt_block_is_an_error() {
        let t = tempfile::tempdir().unwrap();
        let mut r = HistoryFiles::open(t.path()).unwrap();
        for k in 1..=(FLUSH_ENTRIES as u64 * 2) {
            r.insert(item(k, 0)).unwrap();
        }
        let names: Vec<String> = r.runs.iter().map(|x| x.name.clone()).collect();
        drop(r);
        // A flipped byte in a block of the first run; the second's trailer cut.
        let p0 = t.path().join(&names[0]);
        let mut b = fs::read(&p0).unwrap();
        b[100] ^= 0xff;
        fs::write(&p0, b).unwrap();
        let p1 = t.path().join(&names[1]);
        let b = fs::read(&p1).unwrap();
        fs::write(&p1, &b[..b.len() - 3]).unwrap();
        let r = HistoryFiles::open(t.path()).unwrap();
        assert_eq!(r.run_count(), 1);
        assert!(p1.with_extension("corrupt").exists());
        let err = r.rev(None, None).unwrap().find_map(|i| i.err()).unwrap();
        assert!(err.to_string().contains("corrupt"), "{err}");
    }
}
