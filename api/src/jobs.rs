//! Jobs, runs and their progress.

use serde::{Deserialize, Serialize};

use crate::log::JobSpec;

/// A job's health as a person reads it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Its last run succeeded, recently enough.
    Ok,
    /// No success for twice its period.
    Stale,
    /// Its last run failed.
    Failing,
    /// Its node's scheduled backups are paused.
    Paused,
    /// Never run yet.
    Pending,
}

impl JobState {
    pub const ALL: [JobState; 5] =
        [JobState::Ok, JobState::Stale, JobState::Failing, JobState::Paused, JobState::Pending];

    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Ok => "ok",
            JobState::Stale => "stale",
            JobState::Failing => "failing",
            JobState::Paused => "paused",
            JobState::Pending => "pending",
        }
    }
}

impl std::fmt::Display for JobState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Padding for tables (`{:<10}`).
        f.pad(self.as_str())
    }
}

/// How a run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunResult {
    Finished,
    Unchanged,
    Failed,
}

/// One job and its health.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobStatus {
    pub node: String,
    pub path: String,
    /// Minutes between runs.
    pub every: u64,
    pub paused: bool,
    pub state: JobState,
    /// When its last successful run finished (RFC 3339), if ever.
    pub last_success: Option<String>,
}

/// `GET /api/v1/jobs`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Jobs {
    pub jobs: Vec<JobStatus>,
}

/// `POST /api/v1/jobs`: back up `path` on `node` every `every` minutes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Register {
    /// A node's name, or `HOST:PORT` of a node to bring into the mesh.
    pub node: String,
    pub path: String,
    pub every: u64,
    #[serde(default)]
    pub excludes: Vec<String>,
    /// Source, arguments, hooks, timeout, notifications.
    #[serde(flatten)]
    pub spec: JobSpec,
}

/// A job named by its node and path: `DELETE /api/v1/jobs?node=&path=`,
/// `GET /api/v1/progress?node=&path=`, and the body of `POST /api/v1/run`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobKey {
    pub node: String,
    pub path: String,
}

/// `POST /api/v1/run` answers 202 with this: the run is queued on its node,
/// and log entries carrying `request` will tell its outcome.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Queued {
    /// Its place in that node's queue.
    pub queued: u64,
    pub request: String,
    pub node: String,
    pub path: String,
}

/// The JSON a job's webhooks receive (`POST`), and its notification command
/// in `$BACKMESH_NOTIFICATION` (docs/plugins.md, "Notifications").
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notification {
    pub event: crate::log::Notice,
    pub node: String,
    pub path: String,
    /// The job's state now: `failing`, `stale` or `ok`.
    pub state: JobState,
    /// The failure reason, for `failure`.
    pub error: Option<String>,
    /// What changed, for `anomaly`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    pub last_success: Option<String>,
    pub every_min: u64,
    /// The node that sent this.
    pub notified_by: String,
    pub time: String,
}

/// `GET /api/v1/progress`: the counters of the job's run under way.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    pub running: bool,
    /// Files, directories and links read so far.
    pub entries: u64,
    pub bytes_read: u64,
    /// Compressed bytes written.
    pub bytes_out: u64,
    pub elapsed_ms: u64,
    /// The request of the run under way, if it is an on-demand one.
    pub request: Option<String>,
}
