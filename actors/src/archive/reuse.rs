//! What a changed backup takes from the one before it without reading the
//! files again.
//!
//! A run records, for every member it made, which entries went into it
//! and how they looked (`lstat`): a *record*. The next run of the same
//! series plans its groups from `lstat` alone (a group's cut points
//! depend only on paths and sizes, see [`super::cut::GroupCutter`]); a
//! planned group whose entries all look exactly as recorded is the same
//! tar bytes, so its member is taken from the store as it is, unread and
//! uncompressed. Large files are recorded chunk by chunk with the digest
//! of each chunk's raw bytes: an unchanged large file is taken whole, a
//! changed one is read again but only its changed chunks are compressed.
//!
//! The records are a cache: a file per series beside the store, one CBOR
//! item per record, each with its own CRC-32. A missing, torn or stale
//! file only makes the next run read more; it never changes what the
//! archive holds, because a record is used only when every entry's
//! header, size, ctime and inode match it, and only for a member the store
//! holds.
//!
//! "Look exactly as recorded" is git's rule for its index, racy case
//! included: a file changed within [`RACY_WINDOW_NS`] of the scan may
//! change again within the same timestamp, so it is never recorded.

use std::cmp::Ordering;
use std::fs::File;
use std::io::{self, BufReader, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;
use sha2::{Digest as _, Sha256};

use super::manifest::MemberRef;
use super::walk::Stat;
use crate::hash::Digest;
use backmesh_table::tarfmt::{EntryMeta, Kind};

/// Filesystem timestamps can be as coarse as a second (or lag a clock
/// tick): changes this recent are not trusted to show in the next stat.
pub const RACY_WINDOW_NS: i128 = 2_000_000_000;

/// The print of a group read while its files changed: no group's print
/// is all zeros (a SHA-256), so it is never taken unread; its record
/// still names the member made there, the next run's base.
pub const NEVER_REUSED: Digest = Digest([0; 32]);

/// The version of the record file; another version is ignored.
const RECORDS_VERSION: u32 = 2;
/// The version of an encrypted series' records: members are sealed
/// objects, and a member may name its keyframe. A version that knows
/// only 2 ignores them.
const SEALED_RECORDS_VERSION: u32 = 3;

/// What the records were made under: records made with another group
/// target, compression level or data key would give other members than
/// a full run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordsHeader {
    pub version: u32,
    pub target: u64,
    pub level: u32,
    /// The id of the data key the members are sealed under.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kid: Option<String>,
}

impl RecordsHeader {
    pub fn new(target: usize, level: u32) -> Self {
        RecordsHeader { version: RECORDS_VERSION, target: target as u64, level, kid: None }
    }

    /// The header of records whose members are sealed under data key `kid`.
    pub fn sealed_under(self, kid: Option<String>) -> Self {
        match kid {
            None => self,
            Some(kid) => RecordsHeader { version: SEALED_RECORDS_VERSION, kid: Some(kid), ..self },
        }
    }
}

/// One member, or one large file's members, as the previous run made them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reusable {
    /// A group of small entries, `first` the path of its first entry;
    /// `entries` the [`EntryPrint`] of all of them.
    Group { first: ByteBuf, entries: Digest, member: MemberRef },
    /// A large file; `entry` its [`EntryPrint`], absent when it changed
    /// while read or too recently to be trusted (its chunks still serve).
    Large { path: ByteBuf, entry: Option<Digest>, chunks: Vec<Chunk> },
}

/// One chunk of a large file: the digest of its raw bytes, and the member.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Chunk {
    pub raw: Digest,
    pub member: MemberRef,
}

impl Reusable {
    /// The path it is found by: its first entry's.
    fn key(&self) -> &[u8] {
        match self {
            Reusable::Group { first, .. } => first,
            Reusable::Large { path, .. } => path,
        }
    }
}

#[derive(Serialize, Deserialize)]
struct Framed {
    crc: u32,
    body: ByteBuf,
}

/// The fingerprint of the entries of one member: each entry's header
/// fields (path, kind, size, mode, mtime, owner, link target: the tar
/// header is a function of them, [`backmesh_table::tarfmt::write_header`]) with the
/// size, ctime and inode of what was read. Equal prints, equal tar bytes,
/// as far as metadata can tell (ctime cannot be set back by a user).
#[derive(Clone)]
pub struct EntryPrint(Sha256);

impl Default for EntryPrint {
    fn default() -> Self {
        let mut h = Sha256::new();
        h.update(b"backmesh entries v2");
        EntryPrint(h)
    }
}

impl EntryPrint {
    pub fn add(&mut self, e: &EntryMeta, m: &Stat) {
        let kind = match e.kind {
            Kind::File => 0u8,
            Kind::Dir => 1,
            Kind::Symlink => 2,
            Kind::HardLink => 3,
        };
        let mut fixed = [0u8; 1 + 8 * 12];
        fixed[0] = kind;
        let link_len = e.link.as_ref().map_or(u64::MAX, |l| l.len() as u64);
        let fields = [
            e.path.len() as u64,
            e.size,
            u64::from(e.mode),
            e.mtime as u64,
            u64::from(e.mtime_nsec),
            e.uid,
            e.gid,
            link_len,
            m.size,
            m.ctime as u64,
            m.ctime_nsec as u64,
            m.ino,
        ];
        for (slot, v) in fixed[1..].chunks_exact_mut(8).zip(fields) {
            slot.copy_from_slice(&v.to_le_bytes());
        }
        self.0.update(fixed);
        self.0.update(&e.path);
        if let Some(link) = &e.link {
            self.0.update(link);
        }
    }

    pub fn finish(self) -> Digest {
        Digest::from_hasher(self.0)
    }
}

/// Whether an entry changed too recently (at or after `racy_after`, ns
/// since the epoch) for its metadata to vouch for its content.
pub fn is_racy(m: &Stat, racy_after: i128) -> bool {
    let ns = |s: i64, n: i64| i128::from(s) * 1_000_000_000 + i128::from(n);
    ns(m.mtime, m.mtime_nsec) >= racy_after || ns(m.ctime, m.ctime_nsec) >= racy_after
}

/// Walk order (depth first, children by name bytes) as an order of paths:
/// component by component, a directory before its children.
pub fn walk_cmp(a: &[u8], b: &[u8]) -> Ordering {
    a.split(|&c| c == b'/').cmp(b.split(|&c| c == b'/'))
}

/// The previous run's records, read forward in walk order: a run asks for
/// paths in the order it walks them, so the file is read once, and memory
/// holds one record at a time.
pub struct Previous {
    reader: BufReader<File>,
    peeked: Option<Reusable>,
    ended: bool,
    /// The member of the last group record found or passed over: the
    /// one that held, last time, the paths just asked for.
    around: Option<MemberRef>,
}

impl Previous {
    /// Opens the records at `path` if they were made under `header`;
    /// `None` if there are none or they cannot serve.
    pub fn open(path: &Path, header: &RecordsHeader) -> Option<Self> {
        let mut reader = BufReader::with_capacity(256 * 1024, File::open(path).ok()?);
        let found: RecordsHeader = ciborium::from_reader(&mut reader).ok()?;
        (found == *header).then_some(Previous { reader, peeked: None, ended: false, around: None })
    }

    fn read_record(&mut self) -> Option<Reusable> {
        if self.ended {
            return None;
        }
        let record = ciborium::from_reader::<Framed, _>(&mut self.reader).ok().and_then(|f| {
            (crc32fast::hash(&f.body) == f.crc).then(|| ciborium::from_reader::<Reusable, _>(&f.body[..]).ok())?
        });
        // The end, or a torn or damaged file: no more reuse from it.
        self.ended = record.is_none();
        record
    }

    /// The member of the group that, last time, held the paths of the last
    /// [`Previous::find`] (found or not): the likeliest base for a delta.
    pub fn around(&self) -> Option<&MemberRef> {
        self.around.as_ref()
    }

    /// The record whose key is `key`, if the previous run made one. The
    /// records before it in walk order are passed over for good.
    pub fn find(&mut self, key: &[u8]) -> Option<Reusable> {
        loop {
            if self.peeked.is_none() {
                self.peeked = self.read_record();
            }
            let record = self.peeked.as_ref()?;
            let order = walk_cmp(record.key(), key);
            if order != Ordering::Greater {
                self.around = match record {
                    Reusable::Group { member, .. } => Some(member.clone()),
                    Reusable::Large { .. } => None,
                };
            }
            match order {
                Ordering::Less => self.peeked = None,
                Ordering::Equal => return self.peeked.take(),
                Ordering::Greater => return None,
            }
        }
    }
}

/// Writes a run's records. A write that fails stops the recording (the
/// next run reads more), never the backup: see [`Recorder::is_whole`].
pub struct Recorder<'a> {
    out: Box<dyn Write + Send + 'a>,
    failed: bool,
}

impl<'a> Recorder<'a> {
    pub fn new(mut out: Box<dyn Write + Send + 'a>, header: &RecordsHeader) -> Self {
        let failed = ciborium::into_writer(header, &mut out).is_err();
        Recorder { out, failed }
    }

    pub fn push(&mut self, record: &Reusable) {
        if self.failed {
            return;
        }
        let mut body = Vec::with_capacity(128);
        let framed = ciborium::into_writer(record, &mut body)
            .map_err(io::Error::other)
            .map(|()| Framed { crc: crc32fast::hash(&body), body: ByteBuf::from(body) })
            .and_then(|f| ciborium::into_writer(&f, &mut self.out).map_err(io::Error::other));
        self.failed = framed.is_err();
    }

    /// Flushes; whether every record was written.
    pub fn finish(mut self) -> bool {
        !self.failed && self.out.flush().is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(n: u8) -> MemberRef {
        MemberRef { sha256: Digest::of(&[n]), raw_len: 512 * u64::from(n), compressed_len: 40, key: None }
    }

    fn group(first: &str, n: u8) -> Reusable {
        Reusable::Group {
            first: ByteBuf::from(first.as_bytes().to_vec()),
            entries: Digest::of(&[n, n]),
            member: member(n),
        }
    }

    #[test]
    fn walk_order_puts_a_directory_before_its_children_and_after_shorter_names() {
        let mut paths = vec!["a.txt", "a/b", "a", "a/b/c", "ab", "a-b", "b"];
        paths.sort_by(|x, y| walk_cmp(x.as_bytes(), y.as_bytes()));
        assert_eq!(paths, ["a", "a/b", "a/b/c", "a-b", "a.txt", "ab", "b"]);
    }

    #[test]
    fn records_are_found_forward_and_a_damaged_tail_ends_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("records");
        let header = RecordsHeader::new(65536, 6);
        let mut rec = Recorder::new(Box::new(File::create(&path).unwrap()), &header);
        let large = Reusable::Large {
            path: ByteBuf::from(b"d/big".to_vec()),
            entry: None,
            chunks: vec![Chunk { raw: Digest::of(b"raw"), member: member(9) }],
        };
        for r in [group("a", 1), group("a/x", 2), large.clone(), group("e", 3)] {
            rec.push(&r);
        }
        assert!(rec.finish());

        let mut prev = Previous::open(&path, &header).unwrap();
        assert_eq!(prev.find(b"a"), Some(group("a", 1)));
        assert_eq!(prev.find(b"a/w"), None, "not recorded");
        assert_eq!(prev.find(b"d/big"), Some(large));
        assert_eq!(prev.find(b"a/x"), None, "passed over for good");
        assert_eq!(prev.find(b"e"), Some(group("e", 3)));
        assert_eq!(prev.find(b"f"), None);

        assert!(Previous::open(&path, &RecordsHeader::new(65536, 9)).is_none(), "another level");

        // A flipped byte in the last record: the records before it still serve.
        let mut bytes = std::fs::read(&path).unwrap();
        let n = bytes.len();
        bytes[n - 3] ^= 0x40;
        std::fs::write(&path, &bytes).unwrap();
        let mut prev = Previous::open(&path, &header).unwrap();
        assert_eq!(prev.find(b"a/x"), Some(group("a/x", 2)));
        assert_eq!(prev.find(b"e"), None, "damaged record refused");
        // Torn in the middle of a record.
        std::fs::write(&path, &bytes[..n / 2]).unwrap();
        let mut prev = Previous::open(&path, &header).unwrap();
        assert_eq!(prev.find(b"a"), Some(group("a", 1)));
        assert_eq!(prev.find(b"e"), None);
    }
}
