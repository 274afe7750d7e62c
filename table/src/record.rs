//! One entry of the file table, and the path helpers listings use.

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use crate::tarfmt::{self, EntryMeta, Kind};

/// One entry of the file table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRecord {
    pub path: ByteBuf,
    pub kind: Kind,
    pub size: u64,
    pub mode: u32,
    pub mtime: i64,
    pub mtime_nsec: u32,
    pub uid: u64,
    pub gid: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<ByteBuf>,
}

impl FileRecord {
    /// What its tar header says.
    pub fn meta(&self) -> EntryMeta {
        EntryMeta {
            path: self.path.to_vec(),
            kind: self.kind,
            size: if self.kind == Kind::File { self.size } else { 0 },
            mode: self.mode,
            mtime: self.mtime,
            mtime_nsec: self.mtime_nsec,
            uid: self.uid,
            gid: self.gid,
            link: self.link.as_ref().map(|l| l.to_vec()),
        }
    }

    /// The bytes its entry takes in the tar stream: headers, content,
    /// padding; `None` for a record no encoder writes (a size past any
    /// stream, nanoseconds past a second).
    pub fn entry_len(&self) -> Option<u64> {
        let meta = self.meta();
        if meta.mtime_nsec >= 1_000_000_000 {
            return None;
        }
        (tarfmt::header_len(&meta) as u64).checked_add(meta.size)?.checked_add(tarfmt::padding(meta.size) as u64)
    }

    /// Its path as text (bytes that are not UTF-8 shown as U+FFFD).
    pub fn path_text(&self) -> String {
        String::from_utf8_lossy(&self.path).into_owned()
    }

    /// As the API lists it.
    pub fn entry(&self) -> backmesh_api::files::FileEntry {
        let kind = match self.kind {
            Kind::File => "file",
            Kind::Dir => "dir",
            Kind::Symlink => "symlink",
            Kind::HardLink => "hardlink",
        };
        backmesh_api::files::FileEntry {
            path: self.path_text(),
            kind: kind.into(),
            size: self.size,
            mode: self.mode,
            mtime: self.mtime,
            mtime_nsec: self.mtime_nsec,
            uid: self.uid,
            gid: self.gid,
            link: self.link.as_ref().map(|l| String::from_utf8_lossy(l).into_owned()),
        }
    }
}

/// The order of the walk (depth first, names in byte order): paths
/// compared component by component.
pub fn walk_cmp(a: &[u8], b: &[u8]) -> std::cmp::Ordering {
    a.split(|&c| c == b'/').cmp(b.split(|&c| c == b'/'))
}

/// The parent directory of `path` (`""` for an entry at the root).
pub fn parent(path: &[u8]) -> &[u8] {
    match path.iter().rposition(|&b| b == b'/') {
        Some(i) => &path[..i],
        None => b"",
    }
}

/// Whether `path` is `dir` or lies beneath it (`dir` `""`: the root).
pub fn is_within(path: &[u8], dir: &[u8]) -> bool {
    dir.is_empty() || path == dir || (path.starts_with(dir) && path.get(dir.len()) == Some(&b'/'))
}
