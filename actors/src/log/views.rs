//! What the API, the scheduler and the dashboard read of the mesh state:
//! a series' catalog, a job as shown, and its health.

use std::collections::BTreeSet;

use backmesh_api::JobState;

use super::crdt::Stamp;
use super::hlc::Hlc;
use super::job_spec::{JobSpec, PluginReport};
use super::records::{RunResult, Series};

/// The archives of series `s` of node `origin` that some node keeps. Only
/// the series' node says an archive exists (its `finished` run, or its own
/// word that it keeps it): a holder's word alone lists nothing, or any node
/// with the swarm key could list archives of another's series that its
/// node never made (and name the newest one, the one a restore takes).
pub(crate) fn catalog_of(origin: &str, s: &Series) -> Vec<CatalogArchive> {
    let mut out: Vec<CatalogArchive> = s
        .archives
        .iter()
        .filter(|(_, a)| a.made.is_some() || a.holders.iter().any(|(n, h)| n == origin && h.value))
        .map(|(id, a)| {
            let made = a.made.as_ref();
            CatalogArchive {
                id: id.clone(),
                created: made.map(|m| m.at.bare()),
                size: made.map(|m| m.value.size).unwrap_or(0),
                files: made.map(|m| m.value.files).unwrap_or(0),
                warnings: made.map(|m| m.value.warnings).unwrap_or(0),
                holders: a.holders.iter().filter(|(_, h)| h.value).map(|(n, _)| n.clone()).collect(),
            }
        })
        .filter(|a| !a.holders.is_empty())
        .collect();
    out.sort_by(|a, b| b.id.cmp(&a.id));
    out
}

/// One archive of a (node, path) as the mesh knows it: made by a `finished`
/// run, copied by `replicated` and `repaired`, dropped by `pruned`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CatalogArchive {
    pub id: String,
    /// When the run that made it finished (`None` until that entry arrives).
    pub created: Option<Stamp>,
    pub size: u64,
    pub files: u64,
    pub warnings: u64,
    /// Names of the nodes that keep a complete copy (the origin included).
    pub holders: BTreeSet<String>,
}

/// The outcome of a job's last run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LastRun {
    pub result: RunResult,
    pub time: Stamp,
    pub archive: Option<String>,
    pub error: Option<String>,
}

/// A job as the mesh state knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobView {
    pub node: String,
    pub path: String,
    pub every_min: u64,
    pub excludes: Vec<String>,
    /// The node's scheduled backups are paused.
    pub paused: bool,
    pub last: Option<LastRun>,
    pub last_success: Option<Stamp>,
    /// When its last run started (scheduling counts from here).
    pub last_started: Option<Stamp>,
    /// When it was last registered or its settings changed.
    pub registered_at: Hlc,
    /// Size of the newest archive a run made.
    pub last_size: Option<u64>,
    /// Warnings of the last run that stored an archive.
    pub last_warnings: Vec<String>,
    /// Source, hooks and notifications.
    pub spec: JobSpec,
    /// What the last run's plugin or hooks reported.
    pub last_plugin: Option<PluginReport>,
    /// Its newest runs (at most 90), oldest first: when each ended (wall
    /// clock, ms) and how.
    pub runs: Vec<(i64, RunResult)>,
}

/// A job's state as a person reads it: `paused`, `failing` (its last run
/// failed), `stale` (no success for twice its period), `pending` (never
/// run yet) or `ok`.
pub fn job_state(j: &JobView, now_ms: i64, minute_ms: i64) -> JobState {
    let period = (j.every_min as i64).saturating_mul(minute_ms);
    let since_success = now_ms - j.last_success.as_ref().map(|t| t.wall_ms).unwrap_or(j.registered_at.wall_ms);
    match &j.last {
        _ if j.paused => JobState::Paused,
        Some(l) if l.result == RunResult::Failed => JobState::Failing,
        _ if since_success > 2 * period => JobState::Stale,
        None => JobState::Pending,
        Some(_) => JobState::Ok,
    }
}
