//! The execution log as the API shows it (`/log`, `/requests/{id}`,
//! `/backups?all=true`, the dashboard's job page).
//!
//! This is a view of the log, not its format: nodes sign and gossip their
//! own encoding (`backmesh_core::log::entry`), and the node converts each
//! entry into these types field by field, leaving out what is for nodes
//! only (signatures, operator grants).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A hybrid logical timestamp: wall time, a counter within the millisecond,
/// and the node that made it (the final tie-break).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hlc {
    pub wall_ms: i64,
    pub logical: u32,
    pub node: String,
}

/// One entry of the log.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LogEntry {
    /// Peer id of the node that wrote it.
    pub origin: String,
    /// That node's name when it wrote it.
    pub origin_name: String,
    /// Its number among the origin's entries.
    pub seq: u64,
    /// When, in RFC 3339 (UTC, milliseconds).
    pub time: String,
    /// When, as the hybrid timestamp that orders the log.
    pub hlc: Hlc,
    #[serde(flatten)]
    pub event: Event,
}

/// A job's source, hooks, timeout and notification targets.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobSpec {
    /// `dir` (when absent), `command`, or a plugin's name or absolute path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pre: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub post: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_s: Option<u64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notify: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notify_cmd: Option<String>,
}

impl JobSpec {
    pub fn is_default(&self) -> bool {
        *self == JobSpec::default()
    }
}

/// What a plugin, command or hook had to say about a run.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginReport {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub stats: BTreeMap<String, serde_json::Value>,
    /// The plugin's `log` and `warning` lines (the last 20).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub log: Vec<String>,
    /// Hook failures that did not fail the run (post hooks).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hooks: Vec<String>,
    /// `false` when the plugin asked for no archive (a mirror job).
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub archive: bool,
}

impl PluginReport {
    /// Nothing reported.
    pub fn is_empty(&self) -> bool {
        *self == PluginReport { archive: true, ..Default::default() }
    }
}

fn yes() -> bool {
    true
}

fn is_true(b: &bool) -> bool {
    *b
}

/// A notification's reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Notice {
    /// The job's last run failed.
    Failure,
    /// No success for twice the job's period.
    Stale,
    /// A success after a failure or staleness.
    Recovery,
    /// A sudden change in the series' size or rate (`detail` says which):
    /// what data encrypted, deleted or a flood of junk backups looks like.
    /// Told by another node than the series' own, and not recorded in the
    /// log (the log's `notified` is for the job's state).
    Anomaly,
}

impl Notice {
    /// The notice a word names (`failure`, `stale`, `recovery`, `anomaly`).
    pub fn parse(word: &str) -> Option<Notice> {
        [Notice::Failure, Notice::Stale, Notice::Recovery, Notice::Anomaly].into_iter().find(|n| n.as_str() == word)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Notice::Failure => "failure",
            Notice::Stale => "stale",
            Notice::Recovery => "recovery",
            Notice::Anomaly => "anomaly",
        }
    }
}

impl std::fmt::Display for Notice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What happened. `node` is always the node whose data it concerns;
/// `holder`, `on` and `by` name where the work happened.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Event {
    Registered {
        node: String,
        path: String,
        every_min: u64,
        #[serde(default)]
        excludes: Vec<String>,
        #[serde(default, skip_serializing_if = "JobSpec::is_default")]
        spec: JobSpec,
    },
    Unregistered {
        node: String,
        path: String,
    },
    Paused {
        node: String,
    },
    Resumed {
        node: String,
    },
    Started {
        node: String,
        path: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        request: Option<String>,
    },
    Finished {
        node: String,
        path: String,
        /// Empty when the job's plugin keeps its own copy (a mirror).
        archive: String,
        size: u64,
        files: u64,
        duration_ms: u64,
        #[serde(default)]
        warnings: Vec<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        request: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        plugin: Option<PluginReport>,
    },
    Unchanged {
        node: String,
        path: String,
        archive: String,
        duration_ms: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        request: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        plugin: Option<PluginReport>,
    },
    Failed {
        node: String,
        path: String,
        error: String,
        duration_ms: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        request: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        plugin: Option<PluginReport>,
    },
    /// `holder` now keeps a complete copy of `archive`.
    Replicated {
        node: String,
        path: String,
        archive: String,
        holder: String,
        /// Member bytes sent for it (0 when the holder had them all).
        #[serde(default)]
        bytes: u64,
    },
    Pruned {
        node: String,
        path: String,
        archive: String,
        holder: String,
    },
    /// A restore of `archive` onto node `on`, into `to`; `error` when it failed.
    Restored {
        node: String,
        path: String,
        archive: String,
        on: String,
        to: String,
        #[serde(default)]
        files: u64,
        #[serde(default)]
        bytes: u64,
        #[serde(default)]
        duration_ms: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        request: Option<String>,
    },
    /// `by` told the job's notification targets that it is now `event`.
    Notified {
        node: String,
        path: String,
        event: Notice,
        by: String,
        delivered: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    /// `holder` re-hashed the members of its copies of (node, path).
    Verified {
        node: String,
        path: String,
        holder: String,
        archives: u64,
        members: u64,
        /// Members found damaged or missing.
        damaged: u64,
        /// Of those, replaced from another holder.
        repaired: u64,
        ok: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        request: Option<String>,
    },
    Repaired {
        node: String,
        path: String,
        archive: String,
        holder: String,
    },
    /// `holder` could not check its copies to the end: never a success.
    VerifyFailed {
        node: String,
        path: String,
        holder: String,
        error: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        request: Option<String>,
    },
    /// A kind this version does not know (written by a newer node): its
    /// kind, what every kind carries, and the rest of its fields as they came.
    #[serde(untagged)]
    Other {
        kind: String,
        #[serde(default)]
        node: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        path: Option<String>,
        #[serde(flatten)]
        fields: BTreeMap<String, serde_json::Value>,
    },
}

impl Event {
    /// The kind as it appears in JSON (`registered`, `finished`, …).
    pub fn kind(&self) -> &str {
        match self {
            Event::Registered { .. } => "registered",
            Event::Unregistered { .. } => "unregistered",
            Event::Paused { .. } => "paused",
            Event::Resumed { .. } => "resumed",
            Event::Started { .. } => "started",
            Event::Finished { .. } => "finished",
            Event::Unchanged { .. } => "unchanged",
            Event::Failed { .. } => "failed",
            Event::Replicated { .. } => "replicated",
            Event::Pruned { .. } => "pruned",
            Event::Restored { .. } => "restored",
            Event::Notified { .. } => "notified",
            Event::Verified { .. } => "verified",
            Event::Repaired { .. } => "repaired",
            Event::VerifyFailed { .. } => "verify_failed",
            Event::Other { kind, .. } => kind,
        }
    }

    /// The archive it names (made, kept, copied, pruned, repaired, restored).
    pub fn archive(&self) -> Option<&str> {
        match self {
            Event::Finished { archive, .. }
            | Event::Unchanged { archive, .. }
            | Event::Replicated { archive, .. }
            | Event::Pruned { archive, .. }
            | Event::Restored { archive, .. }
            | Event::Repaired { archive, .. } => Some(archive),
            _ => None,
        }
    }

    /// What the run's plugin, command or hooks reported.
    pub fn plugin(&self) -> Option<&PluginReport> {
        match self {
            Event::Finished { plugin, .. } | Event::Unchanged { plugin, .. } | Event::Failed { plugin, .. } => {
                plugin.as_ref()
            }
            _ => None,
        }
    }

    /// The holder whose copies it is about.
    pub fn holder(&self) -> Option<&str> {
        match self {
            Event::Replicated { holder, .. }
            | Event::Pruned { holder, .. }
            | Event::Repaired { holder, .. }
            | Event::Verified { holder, .. }
            | Event::VerifyFailed { holder, .. } => Some(holder),
            _ => None,
        }
    }

    /// The on-demand request it answers, if any.
    pub fn request(&self) -> Option<&str> {
        match self {
            Event::Started { request, .. }
            | Event::Finished { request, .. }
            | Event::Unchanged { request, .. }
            | Event::Failed { request, .. }
            | Event::Restored { request, .. }
            | Event::Verified { request, .. }
            | Event::VerifyFailed { request, .. } => request.as_deref(),
            _ => None,
        }
    }

    /// The node whose data it concerns.
    pub fn node(&self) -> &str {
        match self {
            Event::Registered { node, .. }
            | Event::Unregistered { node, .. }
            | Event::Paused { node }
            | Event::Resumed { node }
            | Event::Started { node, .. }
            | Event::Finished { node, .. }
            | Event::Unchanged { node, .. }
            | Event::Failed { node, .. }
            | Event::Replicated { node, .. }
            | Event::Pruned { node, .. }
            | Event::Restored { node, .. }
            | Event::Notified { node, .. }
            | Event::Verified { node, .. }
            | Event::Repaired { node, .. }
            | Event::VerifyFailed { node, .. }
            | Event::Other { node, .. } => node,
        }
    }
}

/// `GET /api/v1/log`: one page of the log, oldest first.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LogPage {
    pub entries: Vec<LogEntry>,
    /// Older entries remain.
    pub more: bool,
    /// Asks for them (`before=`): the position of the oldest entry here.
    pub cursor: Option<String>,
}

/// `GET /api/v1/requests/{id}`: the entries that answer an on-demand
/// request (empty while it is under way).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RequestEntries {
    pub entries: Vec<LogEntry>,
}

/// The answer of a change recorded in the log (`POST /jobs`, `DELETE
/// /jobs`, pause, resume): 201 with the entry written.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Recorded {
    pub entry: LogEntry,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(event: Event) -> LogEntry {
        LogEntry {
            origin: "12D3KooWx".into(),
            origin_name: "n1".into(),
            seq: 7,
            time: "2026-11-28T23:00:00.000Z".into(),
            hlc: Hlc { wall_ms: 1, logical: 0, node: "12D3KooWx".into() },
            event,
        }
    }

    #[test]
    fn an_entry_reads_back_as_it_was_written_and_its_kind_sits_beside_its_fields() {
        let e = entry(Event::VerifyFailed {
            node: "n1".into(),
            path: "/srv".into(),
            holder: "n2".into(),
            error: "cannot read".into(),
            request: None,
        });
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(v["kind"], "verify_failed");
        assert_eq!(v["holder"], "n2");
        assert_eq!(v["seq"], 7);
        assert_eq!(serde_json::from_value::<LogEntry>(v).unwrap(), e);
    }

    #[test]
    fn a_kind_this_version_does_not_know_keeps_its_kind_node_and_path() {
        let text = r#"{"origin":"o","origin_name":"n","seq":1,"time":"t",
            "hlc":{"wall_ms":1,"logical":0,"node":"o"},
            "kind":"uploaded","node":"n3","path":"/srv","bucket":"s3://b"}"#;
        let e: LogEntry = serde_json::from_str(text).unwrap();
        let fields = BTreeMap::from([("bucket".to_string(), serde_json::json!("s3://b"))]);
        assert_eq!(
            e.event,
            Event::Other { kind: "uploaded".into(), node: "n3".into(), path: Some("/srv".into()), fields }
        );
        assert_eq!(e.event.kind(), "uploaded");
        let again: LogEntry = serde_json::from_value(serde_json::to_value(&e).unwrap()).unwrap();
        assert_eq!(again, e);
    }

    #[test]
    fn a_known_kind_with_a_field_missing_is_not_read_as_that_kind() {
        let text = r#"{"origin":"o","origin_name":"n","seq":1,"time":"t",
            "hlc":{"wall_ms":1,"logical":0,"node":"o"},"kind":"finished","node":"n3","path":"/srv"}"#;
        // The untagged variant takes it: the reader sees a `finished` it
        // cannot read, never a success with made-up sizes.
        let e: LogEntry = serde_json::from_str(text).unwrap();
        let fields = BTreeMap::new();
        assert_eq!(
            e.event,
            Event::Other { kind: "finished".into(), node: "n3".into(), path: Some("/srv".into()), fields }
        );
    }
}
