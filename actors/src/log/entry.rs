//! Log entries: every execution in the mesh, immutable, identified by
//! (origin, seq). Serialised with the kind as a tag and the event's fields
//! beside it, so JSON reads `{"origin", "seq", "time", "kind", …fields}`.

use serde::{Deserialize, Serialize};

use super::hlc::Hlc;
use crate::jobs::plugin::{JobSpec, PluginReport};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Peer id of the node that wrote the entry.
    pub origin: String,
    /// That node's name when it wrote it (for people; ids are for machines).
    pub origin_name: String,
    /// 1, 2, 3, … per origin, without gaps.
    pub seq: u64,
    pub time: Hlc,
    #[serde(flatten)]
    pub event: Event,
}

impl Entry {
    pub fn id(&self) -> (&str, u64) {
        (&self.origin, self.seq)
    }
}

/// What happened. `node` is always the node the event concerns (a job's
/// node), which need not be the origin that recorded it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Event {
    Registered {
        node: String,
        path: String,
        every_min: u64,
        #[serde(default)]
        excludes: Vec<String>,
        /// Source, hooks, timeout, notifications (all optional).
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
        /// The on-demand request this run answers, if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        request: Option<String>,
    },
    Finished {
        node: String,
        path: String,
        archive: String,
        size: u64,
        files: u64,
        duration_ms: u64,
        #[serde(default)]
        warnings: Vec<String>,
        /// The on-demand request this run answers, if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        request: Option<String>,
        /// What a plugin, command or hook reported.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        plugin: Option<PluginReport>,
    },
    Unchanged {
        node: String,
        path: String,
        archive: String,
        duration_ms: u64,
        /// The on-demand request this run answers, if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        request: Option<String>,
        /// What a plugin, command or hook reported.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        plugin: Option<PluginReport>,
    },
    Failed {
        node: String,
        path: String,
        error: String,
        duration_ms: u64,
        /// The on-demand request this run answers, if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        request: Option<String>,
        /// What a plugin, command or hook reported.
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
        /// The on-demand request this run answers, if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        request: Option<String>,
    },
    /// `by` told the job's notification targets that it is now `state`
    /// (`failure`, `stale` or `recovery`).
    Notified {
        node: String,
        path: String,
        event: String,
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
}

impl Event {
    /// The kind as it appears in JSON (`registered`, `finished`, …).
    pub fn kind(&self) -> &'static str {
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
            Event::Verified { .. } => "verified",
            Event::Repaired { .. } => "repaired",
            Event::Notified { .. } => "notified",
        }
    }

    /// The node the event concerns.
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
            | Event::Verified { node, .. }
            | Event::Repaired { node, .. }
            | Event::Notified { node, .. } => node,
        }
    }

    /// The on-demand request an outcome answers.
    pub fn request(&self) -> Option<&str> {
        match self {
            Event::Started { request, .. }
            | Event::Finished { request, .. }
            | Event::Unchanged { request, .. }
            | Event::Failed { request, .. }
            | Event::Restored { request, .. }
            | Event::Verified { request, .. } => request.as_deref(),
            _ => None,
        }
    }

    /// The path it concerns, for job-level events.
    pub fn path(&self) -> Option<&str> {
        match self {
            Event::Paused { .. } | Event::Resumed { .. } => None,
            Event::Registered { path, .. }
            | Event::Unregistered { path, .. }
            | Event::Started { path, .. }
            | Event::Finished { path, .. }
            | Event::Unchanged { path, .. }
            | Event::Failed { path, .. }
            | Event::Replicated { path, .. }
            | Event::Pruned { path, .. }
            | Event::Restored { path, .. }
            | Event::Verified { path, .. }
            | Event::Repaired { path, .. }
            | Event::Notified { path, .. } => Some(path),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> Entry {
        Entry {
            origin: "12D3KooWabc".into(),
            origin_name: "n1".into(),
            seq: 7,
            time: Hlc { wall_ms: 1_795_000_000_000, logical: 2, node: "12D3KooWabc".into() },
            event: Event::Finished {
                node: "n3".into(),
                path: "/srv/app".into(),
                archive: "20261122T030000.000Z-deadbeef".into(),
                size: 123,
                files: 4,
                duration_ms: 56,
                warnings: vec!["app.log: changed while being read".into()],
                request: None,
                plugin: None,
            },
        }
    }

    #[test]
    fn cbor_round_trip() {
        let e = entry();
        let mut buf = Vec::new();
        ciborium::into_writer(&e, &mut buf).unwrap();
        let back: Entry = ciborium::from_reader(&buf[..]).unwrap();
        assert_eq!(back, e);
    }

    #[test]
    fn json_shape_is_flat_with_a_kind() {
        let v = serde_json_like(&entry());
        for key in ["origin", "origin_name", "seq", "time", "kind", "node", "path", "archive", "size"] {
            assert!(v.contains(&format!("\"{key}\"")), "{key} in {v}");
        }
        assert!(v.contains("\"kind\":\"finished\""), "{v}");
    }

    /// JSON via ciborium → serde_json is not a dependency here; the CBOR
    /// map keys are what the JSON keys will be. Render them as JSON-ish text.
    fn serde_json_like(e: &Entry) -> String {
        let mut buf = Vec::new();
        ciborium::into_writer(e, &mut buf).unwrap();
        let v: ciborium::Value = ciborium::from_reader(&buf[..]).unwrap();
        fn render(v: &ciborium::Value) -> String {
            match v {
                ciborium::Value::Map(m) => format!(
                    "{{{}}}",
                    m.iter().map(|(k, v)| format!("{}:{}", render(k), render(v))).collect::<Vec<_>>().join(",")
                ),
                ciborium::Value::Text(t) => format!("\"{t}\""),
                ciborium::Value::Array(a) => format!("[{}]", a.iter().map(render).collect::<Vec<_>>().join(",")),
                other => format!("{other:?}"),
            }
        }
        render(&v)
    }
}
