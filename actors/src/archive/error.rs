//! What a backup fails with ([`ArchiveError`]) and what it warns of
//! without failing ([`Warning`]): files that changed while read, vanished
//! or could not be read.

use std::io;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

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
        Warning { path: lossy(rel), kind, message: format!("{what}: {e}") }
    }

    pub(crate) fn changed(rel: &[u8], attempts: u32) -> Self {
        Warning {
            path: lossy(rel),
            kind: WarningKind::ChangedWhileRead,
            message: format!("changed while being read ({attempts} reads); archived as last read, may be inconsistent"),
        }
    }

    pub(crate) fn replaced(rel: &[u8]) -> Self {
        Warning {
            path: lossy(rel),
            kind: WarningKind::Vanished,
            message: "replaced by something that is not a regular file during the backup; not archived".into(),
        }
    }
}

/// A path of the walk (bytes) as text for people.
pub(crate) fn lossy(rel: &[u8]) -> String {
    String::from_utf8_lossy(rel).into_owned()
}

impl crate::error::Transient for ArchiveError {
    fn retry(&self) -> crate::error::Retry {
        if self.is_temporary() {
            crate::error::Retry::Later
        } else {
            crate::error::Retry::Never
        }
    }
}

impl crate::error::Transient for backmesh_crypt::delta::DeltaError {
    fn retry(&self) -> crate::error::Retry {
        // The same delta fails the same way; the member is sent whole instead.
        crate::error::Retry::Never
    }
}
