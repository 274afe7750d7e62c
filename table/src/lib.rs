//! An archive's file table and what can be read from it without reading
//! the archive: where each entry lies in the tar stream ([`Layout`]), which
//! members hold a file, which entries a pattern selects ([`Patterns`],
//! [`select`]), a directory's listing and the changes between two tables
//! ([`tree`]), and the bytes of chosen entries cut out of the members that
//! hold them ([`Picker`]).
//!
//! It rests on one property of backmesh's tar stream: its bytes are a pure
//! function of the entries' metadata ([`tarfmt`]), so the file table alone
//! says where every entry starts. A table that does not add up to its
//! stream's length is not trusted for that ([`Layout::new`] answers `None`),
//! and every header cut out is checked byte for byte against the header
//! its record makes. Pure code, shared by the node and the light CLI
//! (which opens encrypted archives with the operator's key).

pub mod answers;
pub mod layout;
pub mod patterns;
pub mod pick;
pub mod record;
pub mod tarfmt;
pub mod tree;

/// A record for tests: `path` of `kind` and `size`, mode 0644, owned by root.
#[cfg(test)]
pub(crate) fn rec(path: &str, kind: Kind, size: u64) -> FileRecord {
    FileRecord {
        path: serde_bytes::ByteBuf::from(path.as_bytes().to_vec()),
        kind,
        size,
        mode: 0o644,
        mtime: 1_700_000_000,
        mtime_nsec: 0,
        uid: 0,
        gid: 0,
        link: None,
    }
}

pub use layout::Layout;
pub use patterns::{PatternError, Patterns};
pub use pick::{Part, PickError, Picker};
pub use record::{is_within, parent, walk_cmp, FileRecord};
pub use tarfmt::{EntryMeta, Kind};
