//! The producer: reads the walked entries, cuts them into groups and
//! chunks, re-reads files that change while read, and takes unchanged
//! members from the previous run unread.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, SyncSender};
use std::sync::Arc;

use serde_bytes::ByteBuf;

use super::cut::{Chunker, GroupCutter};
use super::error::{lossy, ArchiveError, Warning, WarningKind};
use super::manifest::{ArchiveStats, FileRecord, MemberRef};
use super::reuse::{self, EntryPrint, Previous, Reusable};
use super::walk::{Stat, Walked, Walker};
use crate::hash::Digest;
use backmesh_table::tarfmt::{header_len, padding, write_header, EntryMeta, Kind, BLOCK};

use super::pipeline::*;
use super::sink::*;
use super::snapshot::*;

/// Outcome of reading one small file.
pub(crate) enum SmallRead {
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
pub(crate) struct Planned {
    item: Walked,
    /// Its header as `lstat` says it will be.
    meta: EntryMeta,
}

pub(crate) struct Producer<'a> {
    /// The directory being backed up.
    pub(crate) root: PathBuf,
    pub(crate) job_tx: SyncSender<Job>,
    pub(crate) permit_rx: Receiver<()>,
    pub(crate) seq: u64,
    pub(crate) cutter: GroupCutter,
    /// The group being planned from metadata, and its planned raw length.
    pub(crate) pending: Vec<Planned>,
    pub(crate) pending_len: usize,
    /// (dev, inode) of multiply-linked files planned → their path.
    pub(crate) planned_links: HashMap<(u64, u64), Vec<u8>>,
    /// The group being built from content read, and what the records say of it.
    pub(crate) group: Vec<u8>,
    pub(crate) group_print: EntryPrint,
    pub(crate) group_first: Option<Vec<u8>>,
    /// Every entry of it may be recorded (none changed while or just before read).
    pub(crate) group_clean: bool,
    /// The previous run's member for the group being built, if it had one.
    pub(crate) group_base: Option<MemberRef>,
    pub(crate) raw_len: u64,
    pub(crate) files: Vec<FileRecord>,
    pub(crate) stats: ArchiveStats,
    pub(crate) warnings: Vec<Warning>,
    /// (dev, inode) of multiply-linked files already stored → their path.
    pub(crate) hardlinks: HashMap<(u64, u64), Vec<u8>>,
    pub(crate) racy_after: i128,
    pub(crate) previous: Option<Previous>,
    pub(crate) hold: &'a dyn Fn(&Digest) -> bool,
    /// Members taken unread and not yet sent on.
    pub(crate) reused: Vec<(MemberRef, Tag)>,
    pub(crate) max_rereads: u32,
    pub(crate) can_rewind: bool,
    pub(crate) progress: Option<Arc<Progress>>,
    pub(crate) files_read: u64,
    pub(crate) snapshot: SnapshotAcc,
}

pub(crate) const CLOSED: ArchiveError = ArchiveError::PipelineClosed;

impl Producer<'_> {
    /// Streams everything the walk yields.
    pub(crate) fn run(&mut self, walked: Receiver<Vec<Walked>>) -> Result<(), ArchiveError> {
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
    fn plan(&mut self, item: Walked) -> Result<(), ArchiveError> {
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
        let Some(Reusable::Group { entries, member, .. }) = previous.find(&group[0].meta.path) else {
            return Found::Base(previous.around().cloned());
        };
        let base = Found::Base(Some(member.clone()));
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
        if print == entries && self.hold_member(&member) {
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
    fn large(&mut self, item: &Walked) -> Result<bool, ArchiveError> {
        let record = self.previous.as_mut().and_then(|p| p.find(&item.rel));
        let Some(Reusable::Large { entry, chunks, .. }) = record else {
            return self.add_large(item, &Known::default());
        };
        let meta = entry_meta(&item.rel, &item.meta, Kind::File, None);
        let mut print = EntryPrint::default();
        print.add(&meta, &item.meta);
        let print = print.finish();
        if entry == Some(print) && chunks.iter().all(|c| self.hold_member(&c.member)) {
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
            in_order: chunks.into_iter().map(|c| c.member).collect(),
        };
        self.add_large(item, &known)
    }

    fn send_segment(&mut self, raw: Vec<u8>, tag: Tag, base: Option<MemberRef>) -> Result<(), ArchiveError> {
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
        let base = self.group_base.clone();
        // A group read while its files changed is never taken unread, but
        // its member is the base the next run's group there starts from
        // (a sealed delta against the same keyframe is then the same
        // object, and the tree the same archive).
        let entries = if clean { entries } else { super::reuse::NEVER_REUSED };
        self.send_segment(g, Tag::Group { first, entries }, base)
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

    fn read_small(&mut self, item: &Walked) -> SmallRead {
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
    fn add_large(&mut self, item: &Walked, known: &Known) -> Result<bool, ArchiveError> {
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
    /// Holds `member` (and the keyframe it is a delta against, if it is
    /// one) in the store until the archive is committed; false if it must
    /// not be taken.
    fn hold_member(&self, member: &MemberRef) -> bool {
        (self.hold)(&member.sha256) && member.key.is_none_or(|k| (self.hold)(&k.cid))
    }

    /// Chunk number `n` of a large file: taken unread if `known` (and
    /// held), else compressed, with the previous version's chunk `n` as
    /// its base.
    fn send_chunk(&mut self, raw: Vec<u8>, known: &Known, n: usize) -> Result<(), ArchiveError> {
        let digest = Digest::of(&raw);
        if let Some(member) = known.by_raw.get(&digest) {
            if member.raw_len == raw.len() as u64 && self.hold_member(member) {
                self.raw_len += member.raw_len;
                return self.send_reuse(member.clone(), Tag::Chunk { raw: digest });
            }
        }
        self.send_segment(raw, Tag::Chunk { raw: digest }, known.in_order.get(n).cloned())
    }
}

pub(crate) struct ChunkStream {
    chunker: Chunker,
    current: Vec<u8>,
    /// Chunks sent so far.
    sent: usize,
}

/// The chunks of a large file's previous version.
#[derive(Default)]
pub(crate) struct Known {
    by_raw: HashMap<Digest, MemberRef>,
    in_order: Vec<MemberRef>,
}

/// What the previous run had for a planned group.
pub(crate) enum Found {
    /// The same entries, unchanged: its member, and their print.
    Reuse(MemberRef, Digest),
    /// Not the same: the member it had there, if any.
    Base(Option<MemberRef>),
}

pub(crate) fn read_some(f: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match f.read(buf) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

pub(crate) fn open_nofollow(path: &Path) -> io::Result<File> {
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
pub(crate) fn same_stat(a: &Stat, b: &Stat) -> bool {
    a.size == b.size
        && a.mtime == b.mtime
        && a.mtime_nsec == b.mtime_nsec
        && a.ctime == b.ctime
        && a.ctime_nsec == b.ctime_nsec
        && a.ino == b.ino
}

pub(crate) fn entry_meta(rel: &[u8], m: &Stat, kind: Kind, link: Option<Vec<u8>>) -> EntryMeta {
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
