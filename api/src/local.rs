//! What `backmesh-node`'s own commands on its store (`backup`, `archives`,
//! `restore`, `export`, `verify`) print with `--json`: one document each.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// What kind of trouble a file gave a backup.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Trouble {
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
pub struct FileWarning {
    /// Relative to the backed-up directory.
    pub path: String,
    pub kind: Trouble,
    pub message: String,
}

/// How a local backup ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackupResult {
    Finished,
    Unchanged,
}

/// `backmesh-node backup --json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Backup {
    pub result: BackupResult,
    /// The archive made, or the latest (unchanged).
    pub archive: String,
    pub size: Option<u64>,
    pub files: Option<u64>,
    /// Compressed bytes of members the store did not have yet.
    pub new_bytes: Option<u64>,
    pub members: Option<usize>,
    pub warnings: Vec<FileWarning>,
    /// Archives retention removed.
    pub pruned: Vec<String>,
    pub error: Option<String>,
    pub duration_ms: u64,
}

/// One archive of the store.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredArchive {
    pub id: String,
    pub node: String,
    pub path: String,
    /// RFC 3339.
    pub created: String,
    pub size: u64,
    pub files: u64,
    /// Of the whole `.tgz`, for archives of manifest formats 1 and 2 (later
    /// formats check member by member and do not record it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// How many warnings its backup had.
    pub warnings: u64,
}

/// `backmesh-node archives --json`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Archives {
    pub archives: Vec<StoredArchive>,
}

/// `backmesh-node restore --json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Restored {
    /// Always `restored` (a failed restore prints an error and exits 1).
    pub result: String,
    pub archive: String,
    pub to: PathBuf,
    pub entries: u64,
    pub bytes: u64,
    pub warnings: Vec<String>,
}

/// `backmesh-node export --json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exported {
    pub archive: String,
    pub file: PathBuf,
    pub size: u64,
    pub sha256: String,
}

/// One archive checked by `backmesh-node verify`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checked {
    pub id: String,
    pub node: String,
    pub path: String,
    pub ok: bool,
    /// Digests of members not in the store.
    pub missing: Vec<String>,
    /// Digests of members whose bytes no longer hash to their name.
    pub damaged: Vec<String>,
}

/// `backmesh-node verify --json`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verified {
    pub archives: Vec<Checked>,
    /// Archives found damaged.
    pub damaged: usize,
}
