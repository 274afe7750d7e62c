//! The archive engine: a directory in, a standard multi-member `.tgz` out,
//! and back again exactly. Pure library code: no actor runtime needed.
//!
//! # Layout
//! - [`walk`]: sorted depth-first walk with exclude globs.
//! - [`tarfmt`]: the deterministic tar encoder (ustar + PAX).
//! - [`cut`]: where the stream is cut into gzip members.
//! - [`delta`]: a member as a delta against an earlier one, for the wire.
//! - [`create`]: the parallel pipeline, [`create::MemberSink`], the stat snapshot.
//! - [`manifest`]: the versioned CBOR description of an archive.
//! - [`reuse`]: what a changed backup takes unread from the previous one.
//! - [`restore`]: safe, exact extraction through a staging directory.

pub mod create;
pub mod cut;
pub mod delta;
pub mod manifest;
pub mod restore;
pub mod reuse;
pub mod tarfmt;
pub mod walk;

use std::io;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use create::{
    create, create_reusing, scan, CreateOptions, Created, FileSink, MemberSink, Progress, Reuse, StatSnapshot,
};
pub use manifest::{Manifest, MemberRef};
pub use restore::{restore_archive, restore_tgz, MemberSource, RestoreError, RestoreOptions, RestoreReport};

/// Why an archive could not be made at all. Trouble with single files is
/// never an error: it becomes a [`Warning`].
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("cannot read {path}: {source}")]
    Root {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} is not a directory; backmesh backs up directories")]
    NotADirectory { path: PathBuf },
    #[error("bad exclude pattern `{pattern}`: {reason}")]
    BadExclude { pattern: String, reason: String },
    #[error("could not write the archive: {source}")]
    Sink {
        #[source]
        source: io::Error,
    },
    #[error("the archive pipeline stopped unexpectedly")]
    PipelineClosed,
}

impl ArchiveError {
    /// Whether trying again later may help (a full disk may be freed; a
    /// missing directory will not appear by itself).
    pub fn is_temporary(&self) -> bool {
        matches!(self, ArchiveError::Sink { .. } | ArchiveError::PipelineClosed)
    }
}

/// What kind of trouble a file gave.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WarningKind {
    /// Kept as last read after the re-reads ran out.
    ChangedWhileRead,
    /// Gone between listing and reading: not in the archive.
    Vanished,
    /// Could not be opened or read: not in the archive.
    Unreadable,
    /// A socket, FIFO or device: never archived.
    Skipped,
}

/// A file-level problem that did not stop the backup.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Warning {
    /// Path relative to the backed-up directory.
    pub path: String,
    pub kind: WarningKind,
    pub message: String,
}

impl Warning {
    pub(crate) fn from_io(rel: &[u8], kind: WarningKind, e: &io::Error) -> Self {
        let what = match kind {
            WarningKind::Vanished => "vanished during the backup; not archived",
            WarningKind::Unreadable => "unreadable; not archived",
            _ => "problem",
        };
        Warning { path: create::lossy(rel), kind, message: format!("{what}: {e}") }
    }

    pub(crate) fn changed(rel: &[u8], attempts: u32) -> Self {
        Warning {
            path: create::lossy(rel),
            kind: WarningKind::ChangedWhileRead,
            message: format!("changed while being read ({attempts} reads); archived as last read, may be inconsistent"),
        }
    }

    pub(crate) fn replaced(rel: &[u8]) -> Self {
        Warning {
            path: create::lossy(rel),
            kind: WarningKind::Vanished,
            message: "replaced by something that is not a regular file during the backup; not archived".into(),
        }
    }
}
