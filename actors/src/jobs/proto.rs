//! `/backmesh/jobs/2`: what one node asks another about the jobs that
//! other node runs. Sender: the HTTP API of any node, to the node a job
//! belongs to. Answered by: that node's jobs actor
//! ([`super::actor::serve`]), after the operator's order is checked.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::authority::{Act, SignedOrder};
use crate::log::entry::Entry;
use crate::net::rpc::Protocol;
use backmesh_api::names::SeriesPath;

/// The protocol: small questions, small answers.
pub const JOBS: Protocol = Protocol {
    name: "/backmesh/jobs/2",
    max_request: 64 * 1024,
    max_response: 64 * 1024,
    timeout: Duration::from_secs(10),
};

/// A question about one of the answering node's jobs. Answered by [`JobsAnswer`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum JobsRequest {
    /// Change one of your jobs as the operator ordered: `act` is a
    /// register, unregister, pause or resume of yours, and `order` signs
    /// exactly it. The answering node checks the order, the job's source,
    /// and writes the change to the log itself (a job is written by its
    /// own node only). Answer: `Recorded` or `Failed`.
    Change { act: Act, order: SignedOrder },
    /// Back up `path` (a registered job of yours) now; the result's log
    /// entry carries `request`. Needs the operator's order. Answer:
    /// `Queued`, `Busy` or `Failed`.
    Run {
        path: SeriesPath,
        request: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        order: Option<SignedOrder>,
    },
    /// How far is the running backup of `path`? Answer: `Progress`.
    Progress { path: SeriesPath },
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
    /// The change is in the log: this entry, sealed by the answering node.
    Recorded {
        entry: Box<Entry>,
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
    /// The request could not be served, in words (no order, a bad source, unreadable).
    Failed {
        reason: String,
    },
}
