//! Archives: listing, restore, verify.

use serde::{Deserialize, Serialize};

use crate::log::LogEntry;

/// One retained archive of a series, from the log's catalog.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Archive {
    pub id: String,
    /// When the run that made it finished (RFC 3339); `None` until that
    /// entry arrives.
    pub created: Option<String>,
    /// Bytes of the `.tgz`.
    pub size: u64,
    pub files: u64,
    /// How many warnings its run had.
    pub warnings: u64,
    /// The nodes that keep a complete copy (its own node included).
    pub holders: Vec<String>,
    /// Of those, the ones down now.
    pub holders_down: Vec<String>,
    /// A copy is in the offsite bucket (as the answering node lists it).
    #[serde(default)]
    pub offsite: bool,
}

/// `GET /api/v1/backups?node=&path=&all=`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Backups {
    /// Newest first.
    pub archives: Vec<Archive>,
    /// With `all=true`: every execution of the job, oldest first.
    pub executions: Vec<LogEntry>,
    /// With `hidden=true`: the archives out of retention that nodes keep
    /// for the grace period (`--grace`), newest first; restorable by id.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hidden: Vec<Archive>,
}

/// `POST /api/v1/restore`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Restore {
    /// The series: its node and path.
    pub node: String,
    pub path: String,
    /// The archive; the newest when absent.
    #[serde(default)]
    pub archive: Option<String>,
    /// Absolute directory to restore into, on the node that restores.
    pub to: String,
    /// The node that restores (default: `node`).
    #[serde(default)]
    pub on: Option<String>,
    /// Replace what `to` holds (the old tree goes once the new one is whole).
    #[serde(default)]
    pub overwrite: bool,
    /// For an encrypted archive of another node: its data key, wrapped
    /// (hex of an age file) to the node that restores, by the operator's
    /// CLI, which unwrapped it with the recovery key. The restoring node
    /// holds it in memory for this restore only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Only the entries these patterns select (with the directories above
    /// them), read from the members that hold them; none: the whole
    /// archive. A pattern without `/` matches a name at any depth, one
    /// with `/` the path from the archive's root; a directory brings what
    /// it holds.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub include: Vec<String>,
}

/// The content type of an encrypted archive's sealed objects as `GET
/// /api/v1/fetch` sends them to a client that takes them (docs/api.md).
pub const SEALED_TYPE: &str = "application/x-backmesh-sealed";

/// `GET /api/v1/keys?node=N&path=P[&archive=ID]`: what the operator's CLI
/// needs to open an encrypted archive: its data key, wrapped to the
/// node's own recipient and the operator's recovery recipients.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArchiveKeys {
    pub node: String,
    pub path: String,
    pub archive: String,
    /// Whether the archive is encrypted; without, nothing else is said.
    pub encrypted: bool,
    /// The id of its data key (16 hex digits).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kid: Option<String>,
    /// Its data key wrapped (hex of age files), as its manifest carries it.
    #[serde(default)]
    pub keys: Vec<String>,
}

/// `GET /api/v1/requests/{id}/progress?on=NODE`: how far the restore
/// carrying request `id` has come on node `on`, the node that restores.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreProgress {
    pub request: String,
    pub on: String,
    /// `false` once it is done (or when no such restore runs there): its
    /// `restored` entry says how it went.
    pub running: bool,
    /// Entries written so far, and their content bytes.
    pub entries: u64,
    pub bytes: u64,
    /// What `bytes` will reach (0: not known yet).
    pub total: u64,
    pub elapsed_ms: u64,
}

/// `POST /api/v1/restore` answers 202 with this; the `restored` entry
/// carrying `request` tells the outcome.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreStarted {
    pub request: String,
    /// The node that restores.
    pub on: String,
}

/// `POST /api/v1/verify`: the copies of (node, path), or all (both absent).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verify {
    #[serde(default)]
    pub node: Option<String>,
    #[serde(default)]
    pub path: Option<String>,
}

/// A node asked to verify, and how many series it checks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verifying {
    pub node: String,
    pub series: usize,
}

/// `POST /api/v1/verify` answers 202 with this: `expect` entries
/// (`verified` or `verify_failed`) carrying `request` will follow.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyStarted {
    pub request: String,
    pub expect: usize,
    pub nodes: Vec<Verifying>,
    /// Nodes that could not be asked, and why.
    pub problems: Vec<String>,
}
