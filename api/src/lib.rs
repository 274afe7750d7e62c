//! The types of backmesh's HTTP API (`/api/v1`): every request and answer
//! body, shared by the node, the light client, the dashboard's server side
//! and the test harness, so a renamed field breaks their builds rather
//! than a script at run time. Field names are stable: fields may be added,
//! never renamed (docs/api.md).

use serde::{Deserialize, Serialize};

pub mod archives;
pub mod cli;
pub mod dashboard;
pub mod files;
pub mod jobs;
pub mod local;
pub mod log;
pub mod names;
pub mod order;

pub use archives::{
    Archive, ArchiveKeys, Backups, Restore, RestoreProgress, RestoreStarted, Verify, VerifyStarted, Verifying,
};
pub use jobs::{JobKey, JobState, JobStatus, Jobs, Notification, Progress, Queued, Register, RunResult};
pub use log::{Event, Hlc, JobSpec, LogEntry, LogPage, Notice, PluginReport, Recorded, RequestEntries};

/// Every route lives under this prefix.
pub const PREFIX: &str = "/api/v1";

/// `GET /api/v1/health`: answered without a token once the node is ready.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    /// Always `"ok"` in a 200 answer.
    pub status: String,
    pub name: String,
    pub peer_id: String,
    pub version: String,
    /// The node's libp2p listen addresses (multiaddrs).
    pub listen: Vec<String>,
}

/// `POST /api/v1/join`: dial a node not yet in the mesh (it joins if it
/// has the swarm key). Answered with [`Joined`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Join {
    /// Its mesh address, `host:port`.
    pub address: String,
}

/// The name the node at a [`Join`]'s address said it has.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Joined {
    pub name: String,
}

/// `POST /api/v1/revoke`: the operator revokes node `node`'s identity
/// `peer` mesh-wide (the request carries the operator's order for it).
/// Answered with the same body once this node holds the revocation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revoke {
    pub node: String,
    pub peer: String,
    /// Retire it too: its jobs leave the views, and its series are
    /// collected once the grace period has passed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub retire: bool,
}

/// `POST /api/v1/rebind`: the operator binds node name `node` to identity
/// `peer` (a rebuilt server's new key) in place of `former` (its old one,
/// which every node refuses from then on); the request carries the
/// operator's order for it. Archives `former` sealed before the order
/// stay that node's. Answered with the same body once this node holds it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rebind {
    pub node: String,
    pub peer: String,
    pub former: String,
}

/// `GET /api/v1/nodes/{node}/identity`: the identity the answering node
/// binds node name `node` to (whose seal its archives carry), and those
/// it had before the operator bound it again.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub node: String,
    pub peer: Option<String>,
    #[serde(default)]
    pub former: Vec<String>,
}

/// `POST /api/v1/operators`: trust operator key `operator` on every node
/// (`trusted`), or no longer; the request carries the order of an
/// operator trusted now. Answered with [`Operators`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperatorChange {
    pub operator: String,
    pub trusted: bool,
}

/// The operator keys the answering node trusts after the change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Operators {
    pub trusted: Vec<String>,
}

/// `POST /api/v1/recipients`: wrap every node's data key to operator
/// recovery recipient `recipient` (`age1…`) too (`wrap`), or no longer;
/// the request carries the order of an operator trusted now. Answered
/// with [`Recipients`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecipientChange {
    pub recipient: String,
    pub wrap: bool,
}

/// The recovery recipients the answering node wraps data keys to after
/// the change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recipients {
    pub recovery: Vec<String>,
}

/// One node of the mesh as some node sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    pub name: String,
    pub peer_id: String,
    /// The node's mesh address, `host:port`.
    pub address: String,
    pub up: bool,
    pub free_bytes: u64,
    pub site: String,
    /// When it was last heard from (RFC 3339), if ever.
    pub last_seen: Option<String>,
    /// This is the node that answered.
    pub this_node: bool,
    /// Set when another peer claims the same name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conflict: Option<String>,
    /// How many times this node refused what that peer sent (forged or
    /// unsealed entries and archives); `problems` says the last.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub refused: u64,
    /// How many times that peer went past one of this node's bounds
    /// (connections, requests in flight, its storage quota here) and was
    /// refused the excess; `problems` says the last.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub limited: u64,
    /// The age recipient (`age1…`) that node's data key is wrapped to
    /// (derived from its identity key), as it announces it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipient: Option<String>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// `GET /api/v1/status`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub nodes: Vec<NodeStatus>,
    pub jobs: Vec<JobStatus>,
    /// Human-readable problems with the mesh itself (name conflicts, …).
    pub problems: Vec<String>,
    /// The answering node's copy of the mesh state.
    #[serde(default)]
    pub state: StateSummary,
    /// The offsite bucket, as the answering node sees it (absent without `--offsite`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offsite: Option<OffsiteStatus>,
    /// The answering node's background workers, by name.
    #[serde(default)]
    pub workers: Vec<WorkerStatus>,
    /// The operator recovery recipients (`age1…`) the answering node
    /// wraps its data key to.
    #[serde(default)]
    pub recovery: Vec<String>,
}

/// One background worker of the answering node: what it does and how it
/// fares (`backmesh status --workers`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerStatus {
    pub name: String,
    /// What it does, in a few words.
    pub what: String,
    /// `idle`, `busy`, `throttled` or `failing`.
    pub state: String,
    /// What it is busy with, or why it holds back.
    #[serde(default)]
    pub detail: Option<String>,
    /// When it last finished a piece of work without error (RFC 3339).
    #[serde(default)]
    pub last_ok: Option<String>,
    /// Its last error, kept after it recovers.
    #[serde(default)]
    pub last_error: Option<String>,
    /// When that error happened (RFC 3339).
    #[serde(default)]
    pub last_error_at: Option<String>,
    /// Errors since the node started.
    #[serde(default)]
    pub errors: u64,
}

/// The answering node's offsite copies: the series it uploads (one node
/// of the mesh is elected for each), and the bucket's last collection.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OffsiteStatus {
    /// `s3://bucket/prefix`
    pub bucket: String,
    pub series: Vec<SeriesOffsite>,
    /// When this node last collected unused members there (RFC 3339), if it did.
    #[serde(default)]
    pub collected: Option<String>,
    /// What went wrong with the bucket as a whole (credentials, reach), if anything.
    #[serde(default)]
    pub error: Option<String>,
}

/// Where one series stands in the bucket.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeriesOffsite {
    pub node: String,
    pub path: String,
    /// `current` (every archive kept here is in the bucket), `behind`
    /// (some are not, yet) or `failing` (the last try failed: `error`).
    pub state: String,
    /// The newest archive in the bucket.
    #[serde(default)]
    pub newest: Option<String>,
    /// Since when it has not been current (RFC 3339).
    #[serde(default)]
    pub since: Option<String>,
    #[serde(default)]
    pub error: Option<String>,
    /// Bytes this node sent for it since it started.
    #[serde(default)]
    pub sent_bytes: u64,
}

/// A node's copy of the mesh state, in brief: two nodes that show the
/// same digest hold the same state (runs, jobs, catalog, holders).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateSummary {
    /// Records in it.
    pub records: usize,
    /// SHA-256 (first 16 hex digits) over its anti-entropy digest.
    pub digest: String,
}

/// The body of every error answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}

/// Bytes in the unit a person reads best: `812 B`, `3.4 KiB`, `1.2 GiB`.
pub fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let (mut v, mut u) = (b as f64, 0);
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn human_bytes_picks_the_unit() {
        assert_eq!(super::human_bytes(812), "812 B");
        assert_eq!(super::human_bytes(3 * 1024 + 512), "3.5 KiB");
        assert_eq!(super::human_bytes(5 << 30), "5.0 GiB");
    }
}
