//! What the light client prints with `--json` once an operation it waited
//! for has ended (the other commands print the node's answer as it came).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::jobs::RunResult;
use crate::log::LogEntry;

/// `backmesh run --json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunOutcome {
    pub result: RunResult,
    /// The archive made (`finished`), or the latest (`unchanged`).
    pub archive: Option<String>,
    pub size: Option<u64>,
    pub files: Option<u64>,
    pub warnings: Vec<String>,
    pub error: Option<String>,
    pub duration_ms: u64,
    pub request: String,
}

/// How a restore ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RestoreResult {
    Restored,
    Failed,
}

/// `backmesh restore --json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreOutcome {
    pub result: RestoreResult,
    pub archive: String,
    /// The node that restored.
    pub on: String,
    pub to: String,
    pub files: u64,
    pub bytes: u64,
    pub error: Option<String>,
    pub duration_ms: u64,
    pub request: String,
}

/// `backmesh verify --json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VerifyOutcome {
    /// Every holder verified every copy, whole or made whole again.
    pub ok: bool,
    /// The `verified` and `verify_failed` entries, one per (holder, series).
    pub verified: Vec<LogEntry>,
    /// Nodes that could not be asked, and why.
    pub problems: Vec<String>,
}

/// `backmesh dump --output FILE --json`: one file written, and what was
/// read to write it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dumped {
    pub archive: String,
    /// The file, inside the archive.
    pub file: String,
    pub output: PathBuf,
    /// Its bytes.
    pub size: u64,
    /// Members read, of how many the archive has.
    pub members_read: u64,
    pub members: u64,
    /// The stored (compressed, or sealed) bytes of those members.
    pub bytes_read: u64,
    /// Where the archive was opened: `node` (the node asked), or `here`
    /// (an encrypted archive, by this client with the operator key).
    pub opened: String,
}

/// `backmesh fetch --json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fetched {
    pub archive: String,
    pub file: PathBuf,
    pub size: u64,
    pub sha256: String,
}
