//! `/backmesh/jobs/1`: what one node asks another about the jobs that
//! other node runs. Sender: the HTTP API of any node, to the node a job
//! belongs to. Answered by: that node's jobs actor
//! ([`super::actor::serve`]), after the operator's grant is checked.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::plugin::JobSpec;
use crate::grant::{Grant, Granted};
use crate::net::rpc::Protocol;
use backmesh_api::names::SeriesPath;

/// The protocol: small questions, small answers.
pub const JOBS: Protocol = Protocol {
    name: "/backmesh/jobs/1",
    max_request: 64 * 1024,
    max_response: 64 * 1024,
    timeout: Duration::from_secs(10),
};

/// A question about one of the answering node's jobs. Answered by [`JobsAnswer`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum JobsRequest {
    /// Can you run a job of `path` with this source (directory, command,
    /// plugin)? Answer: `PathOk` or `PathRefused`.
    CheckSource {
        path: SeriesPath,
        #[serde(default)]
        every_min: u64,
        #[serde(default)]
        excludes: Vec<String>,
        spec: JobSpec,
    },
    /// Back up `path` (a registered job of yours) now; the result's log
    /// entry carries `request`. Needs the operator's grant. Answer:
    /// `Queued` or `Busy`.
    Run {
        path: SeriesPath,
        request: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        grant: Option<Grant>,
    },
    /// How far is the running backup of `path`? Answer: `Progress`.
    Progress { path: SeriesPath },
}

impl Granted for JobsRequest {
    fn grant_mut(&mut self) -> Option<&mut Option<Grant>> {
        match self {
            JobsRequest::Run { grant, .. } => Some(grant),
            JobsRequest::CheckSource { .. } | JobsRequest::Progress { .. } => None,
        }
    }
}

/// A running backup's counters.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunProgress {
    pub running: bool,
    pub entries: u64,
    pub bytes_read: u64,
    pub bytes_out: u64,
    pub elapsed_ms: u64,
    /// The request of the run in progress, if it is an on-demand one.
    pub request: Option<String>,
}

/// The answer to a [`JobsRequest`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum JobsAnswer {
    PathOk,
    /// The path cannot be backed up, in words for the operator.
    PathRefused {
        reason: String,
    },
    /// The run is queued under this id.
    Queued {
        id: u64,
    },
    /// Too many runs wait already.
    Busy {
        reason: String,
    },
    Progress(RunProgress),
    /// The request could not be served, in words (no grant, unreadable).
    Failed {
        reason: String,
    },
}
