//! The dashboard's routes: who is signed in, the overview of every site,
//! one job's page.

use serde::{Deserialize, Serialize};

use crate::archives::Archive;
use crate::jobs::{JobState, RunResult};
use crate::log::{Event, PluginReport};

/// `GET /api/v1/whoami`: what the token may see.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "role", rename_all = "snake_case")]
pub enum WhoAmI {
    /// Everything, and every change.
    Admin { node: String },
    /// Every read.
    Viewer { node: String },
    /// That site's page only; `browse`: and the files of this node's own
    /// backups (`--site-browse`).
    Site {
        site: String,
        node: String,
        #[serde(default)]
        browse: bool,
    },
}

/// Jobs by state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub ok: u64,
    pub stale: u64,
    pub failing: u64,
    pub paused: u64,
    pub pending: u64,
    pub total: u64,
}

impl Counts {
    pub fn add(&mut self, state: JobState) {
        self.total += 1;
        match state {
            JobState::Ok => self.ok += 1,
            JobState::Stale => self.stale += 1,
            JobState::Failing => self.failing += 1,
            JobState::Paused => self.paused += 1,
            JobState::Pending => self.pending += 1,
        }
    }

    /// How many jobs are in `state`.
    pub fn of(&self, state: JobState) -> u64 {
        match state {
            JobState::Ok => self.ok,
            JobState::Stale => self.stale,
            JobState::Failing => self.failing,
            JobState::Paused => self.paused,
            JobState::Pending => self.pending,
        }
    }
}

/// One job as the dashboard shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobRow {
    pub node: String,
    pub path: String,
    pub every: u64,
    pub state: JobState,
    pub last_success: Option<String>,
    pub last_success_age_s: Option<i64>,
    pub last_result: Option<RunResult>,
    pub last_run: Option<String>,
    pub last_size: Option<u64>,
    pub archives: usize,
    pub holders: Vec<String>,
    pub error: Option<String>,
    pub warnings: Vec<String>,
    /// `dir`, `command` or the plugin's name.
    #[serde(default)]
    pub source: String,
    /// What the last run's plugin or hooks reported.
    #[serde(default)]
    pub plugin: Option<PluginReport>,
    /// The offsite bucket (when the answering node has one): `current`,
    /// `behind since TIME`, `not there yet` or `failing: WHY`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offsite: Option<String>,
    /// Its newest runs (at most 90, the last being `last_result`), oldest
    /// first, as the job's node wrote them in the mesh state: the history
    /// strip, with no log to read.
    #[serde(default)]
    pub runs: Vec<RunMark>,
}

/// One run of a job's history strip.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunMark {
    /// When it ended, in ms since the epoch (the node's clock).
    pub time_ms: i64,
    pub result: RunResult,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SiteNode {
    pub name: String,
    pub up: bool,
    pub jobs: Vec<JobRow>,
}

/// A client's site: its nodes and their jobs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Site {
    pub name: String,
    /// The federated mesh it comes from (`None`: this mesh).
    pub mesh: Option<String>,
    pub reachable: bool,
    pub error: Option<String>,
    pub counts: Counts,
    pub nodes: Vec<SiteNode>,
}

/// A node and what it keeps.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRow {
    pub name: String,
    pub site: String,
    pub peer_id: String,
    pub address: String,
    pub up: bool,
    pub last_seen: Option<String>,
    pub free_bytes: u64,
    pub archives_held: u64,
    pub bytes_held: u64,
}

/// `GET /api/v1/dashboard[?site=S]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Overview {
    pub generated: String,
    pub node: String,
    pub counts: Counts,
    pub sites: Vec<Site>,
    pub nodes: Vec<NodeRow>,
    pub problems: Vec<String>,
}

/// A run of the job, on its page.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Execution {
    /// RFC 3339.
    pub time: String,
    pub time_ms: i64,
    #[serde(flatten)]
    pub event: Event,
}

/// `GET /api/v1/job?node=&path=`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobPage {
    pub job: JobRow,
    /// Its runs (`finished`, `unchanged`, `failed`), oldest first.
    pub executions: Vec<Execution>,
    /// Its retained archives, newest first.
    pub archives: Vec<Archive>,
}
