//! The parallel pipeline behind [`super::create`]: the walk ahead, the
//! compression workers, and the sink loop that puts members in order;
//! the messages between them.

use std::collections::BTreeMap;
use std::io::{self};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender};
use std::sync::{Arc, Mutex};

use serde_bytes::ByteBuf;

use super::error::Warning;
use super::manifest::{MemberRef, ObjRef};
use super::reuse::{Chunk, Recorder, Reusable};
use super::sealed::{seal_member, ReadObject, Sealing};
use super::walk::{Walked, Walker};
use crate::hash::Digest;

use super::sink::*;

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
    /// What `bytes_out` will reach when a restore is done, when known (0: not known).
    pub total: AtomicU64,
}

/// What a member is, for the records of the next run.
pub(crate) enum Tag {
    /// Nothing to record (the end marker; a group that cannot be trusted).
    Plain,
    /// A group: its first path and the print of its entries.
    Group { first: Vec<u8>, entries: Digest },
    /// A chunk of the large file being streamed, by the digest of its raw bytes.
    Chunk { raw: Digest },
}

pub(crate) enum Job {
    /// Raw bytes to compress; `base` an earlier member of much the same
    /// bytes, for a delta (on the wire; or sealed, in an encrypted archive).
    Segment {
        seq: u64,
        raw: Vec<u8>,
        tag: Tag,
        base: Option<MemberRef>,
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

pub(crate) enum Done {
    /// A member made: `base` an earlier member for a delta on the wire
    /// (plain archives); `key` the keyframe of a sealed delta.
    Member {
        seq: u64,
        raw_len: u64,
        data: Vec<u8>,
        digest: Digest,
        tag: Tag,
        base: Option<Digest>,
        key: Option<ObjRef>,
    },
    Reused {
        seq: u64,
        members: Vec<(MemberRef, Tag)>,
    },
    Mark(u64),
    Rewind(u64),
    LargeEnd {
        seq: u64,
        path: Vec<u8>,
        entry: Option<Digest>,
    },
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
pub(crate) struct SinkState {
    pub(crate) members: Vec<MemberRef>,
    pub(crate) len: u64,
    pub(crate) reused_members: u64,
    pub(crate) reused_raw: u64,
    /// The chunks of the large file being streamed.
    pub(crate) chunks: Vec<Chunk>,
    /// New members made from much the same bytes as an earlier one: (new, earlier).
    pub(crate) bases: Vec<(Digest, Digest)>,
    /// Members compressed by this run (not taken unread).
    pub(crate) made: Vec<Digest>,
}

/// Batches of walked entries in flight between the walk and the producer:
/// the walk, the longest single thread of a changed run, runs on while
/// the producer waits for a group to be compressed.
pub(crate) const WALK_AHEAD: usize = 64;

/// Jobs in flight to the workers and from them to the writer (segments
/// are bounded apart, by permits: their bytes are the memory).
pub(crate) const JOBS_AHEAD: usize = 64;

pub(crate) const WALK_BATCH: usize = 256;

/// Walks the tree into `out` in batches; returns the walk's warnings.
/// Stops early when the producer stops listening.
pub(crate) fn walk_ahead(mut walker: Walker, out: &SyncSender<Vec<Walked>>) -> Vec<Warning> {
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

/// What an encrypted archive's workers seal with, and how they read a
/// keyframe from the store.
pub(crate) type Sealer<'a> = Option<(&'a Sealing, &'a ReadObject<'a>)>;

pub(crate) fn compress_worker(rx: &Mutex<Receiver<Job>>, tx: &SyncSender<Done>, level: u32, sealer: Sealer<'_>) {
    loop {
        let job = {
            let guard = rx.lock().unwrap_or_else(|e| e.into_inner());
            guard.recv()
        };
        let done = match job {
            Err(_) => return,
            Ok(Job::Segment { seq, raw, tag, base }) => match sealer {
                None => {
                    let data = gzip_member(&raw, level);
                    let digest = Digest::of(&data);
                    let base = base.map(|b| b.sha256);
                    Done::Member { seq, raw_len: raw.len() as u64, data, digest, tag, base, key: None }
                }
                Some((sealing, read)) => {
                    let (data, key) = seal_member(sealing, &raw, level, base.as_ref(), read);
                    let digest = Digest::of(&data);
                    Done::Member { seq, raw_len: raw.len() as u64, data, digest, tag, base: None, key }
                }
            },
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
pub(crate) fn sink_loop(
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
    let record = |recorder: &mut Option<Recorder<'_>>, r: Reusable| {
        if let Some(rec) = recorder {
            rec.push(&r);
        }
    };
    for done in done_rx {
        pending.insert(done.seq(), done);
        while let Some(done) = pending.remove(&next) {
            next += 1;
            let members = match done {
                Done::Member { raw_len, data, digest, tag, base, key, .. } => {
                    sink.member(&digest, &data)?;
                    state.made.push(digest);
                    if let Some(base) = base.filter(|b| *b != digest) {
                        state.bases.push((digest, base));
                    }
                    if let Some(p) = &progress {
                        p.bytes_out.fetch_add(data.len() as u64, Ordering::Relaxed);
                    }
                    let _ = permit_tx.send(());
                    vec![(MemberRef { sha256: digest, raw_len, compressed_len: data.len() as u64, key }, tag)]
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
                    record(&mut recorder, Reusable::Large { path: ByteBuf::from(path), entry, chunks });
                    continue;
                }
            };
            for (member, tag) in members {
                state.len += member.compressed_len;
                match tag {
                    Tag::Plain => {}
                    Tag::Group { first, entries } => record(
                        &mut recorder,
                        Reusable::Group { first: ByteBuf::from(first), entries, member: member.clone() },
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
