//! The API's view of what the actors hold: each type of `backmesh_api`
//! built field by field from its source, so a field renamed on either side
//! breaks this build instead of a client at run time. What is for nodes
//! only (signatures, operator orders) stays out.

use std::collections::HashSet;

use backmesh_api as api;
use backmesh_core::clock::rfc3339;
use backmesh_core::jobs::plugin;
use backmesh_core::jobs::proto::RunProgress;
use backmesh_core::log::entry::{Entry, Event};
use backmesh_core::log::records::RunResult;
use backmesh_core::log::views::CatalogArchive;

pub fn entry(e: &Entry) -> api::LogEntry {
    api::LogEntry {
        origin: e.origin.clone(),
        origin_name: e.origin_name.clone(),
        seq: e.seq,
        time: rfc3339_ms(e.time.wall_ms),
        hlc: api::Hlc { wall_ms: e.time.wall_ms, logical: e.time.logical, node: e.time.node.clone() },
        event: event(&e.event),
    }
}

/// RFC 3339 to the millisecond: entries of one second stay apart.
fn rfc3339_ms(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}

pub fn spec(s: &plugin::JobSpec) -> api::JobSpec {
    api::JobSpec {
        source: s.source.clone(),
        args: s.args.clone(),
        pre: s.pre.clone(),
        post: s.post.clone(),
        timeout_s: s.timeout_s,
        notify: s.notify.clone(),
        notify_cmd: s.notify_cmd.clone(),
    }
}

pub fn plugin_report(r: &plugin::PluginReport) -> api::PluginReport {
    api::PluginReport {
        summary: r.summary.clone(),
        stats: r.stats.clone(),
        log: r.log.clone(),
        hooks: r.hooks.clone(),
        archive: r.archive,
    }
}

pub fn run_result(r: RunResult) -> api::RunResult {
    match r {
        RunResult::Finished => api::RunResult::Finished,
        RunResult::Unchanged => api::RunResult::Unchanged,
        RunResult::Failed => api::RunResult::Failed,
    }
}

pub fn progress(p: RunProgress) -> api::Progress {
    api::Progress {
        running: p.running,
        entries: p.entries,
        bytes_read: p.bytes_read,
        bytes_out: p.bytes_out,
        elapsed_ms: p.elapsed_ms,
        request: p.request,
    }
}

/// An archive of the catalog; `down` names the nodes down now.
pub fn archive(a: &CatalogArchive, down: &HashSet<String>) -> api::Archive {
    api::Archive {
        id: a.id.clone(),
        created: a.created.as_ref().map(|t| rfc3339(t.wall_ms)),
        size: a.size,
        files: a.files,
        warnings: a.warnings,
        holders: a.holders.iter().cloned().collect(),
        holders_down: a.holders.iter().filter(|h| down.contains(*h)).cloned().collect(),
        offsite: false,
    }
}

pub fn event(e: &Event) -> api::Event {
    use api::Event as V;
    let report = |p: &Option<plugin::PluginReport>| p.as_ref().map(plugin_report);
    match e.clone() {
        Event::Registered { node, path, every_min, excludes, spec: s } => {
            V::Registered { node, path, every_min, excludes, spec: spec(&s) }
        }
        Event::Unregistered { node, path } => V::Unregistered { node, path },
        Event::Paused { node } => V::Paused { node },
        Event::Resumed { node } => V::Resumed { node },
        Event::Started { node, path, request } => V::Started { node, path, request },
        Event::Finished { node, path, archive, size, files, duration_ms, warnings, request, plugin, recent: _ } => {
            V::Finished { node, path, archive, size, files, duration_ms, warnings, request, plugin: report(&plugin) }
        }
        Event::Unchanged { node, path, archive, duration_ms, request, plugin, recent: _ } => {
            V::Unchanged { node, path, archive, duration_ms, request, plugin: report(&plugin) }
        }
        Event::Failed { node, path, error, duration_ms, request, plugin, recent: _ } => {
            V::Failed { node, path, error, duration_ms, request, plugin: report(&plugin) }
        }
        Event::Replicated { node, path, archive, holder, bytes } => {
            V::Replicated { node, path, archive, holder, bytes }
        }
        Event::Pruned { node, path, archive, holder } => V::Pruned { node, path, archive, holder },
        Event::Restored { node, path, archive, on, to, files, bytes, duration_ms, error, request } => {
            V::Restored { node, path, archive, on, to, files, bytes, duration_ms, error, request }
        }
        Event::Notified { node, path, event, by, delivered, error } => match api::Notice::parse(&event) {
            Some(event) => V::Notified { node, path, event, by, delivered, error },
            // A newer node's word: shown as it came.
            None => V::Other {
                kind: "notified".into(),
                node,
                path: Some(path),
                fields: std::collections::BTreeMap::from([
                    ("event".to_string(), serde_json::Value::String(event)),
                    ("by".to_string(), serde_json::Value::String(by)),
                    ("delivered".to_string(), serde_json::Value::Bool(delivered)),
                    ("error".to_string(), error.map_or(serde_json::Value::Null, serde_json::Value::String)),
                ]),
            },
        },
        Event::Verified { node, path, holder, archives, members, damaged, repaired, ok, request } => {
            V::Verified { node, path, holder, archives, members, damaged, repaired, ok, request }
        }
        Event::Repaired { node, path, archive, holder } => V::Repaired { node, path, archive, holder },
        Event::VerifyFailed { node, path, holder, error, request } => {
            V::VerifyFailed { node, path, holder, error, request }
        }
        Event::Other(o) => {
            // Every field as the newer node wrote it, but those named above.
            let mut fields = std::collections::BTreeMap::new();
            if let Some(serde_json::Value::Object(all)) = o.value().and_then(|v| serde_json::to_value(&v).ok()) {
                for (k, val) in all {
                    if !matches!(k.as_str(), "kind" | "node" | "path") {
                        fields.insert(k, val);
                    }
                }
            }
            V::Other { kind: o.kind.clone(), node: e.node().to_string(), path: e.path().map(str::to_string), fields }
        }
    }
}

pub fn worker(w: &backmesh_core::workers::WorkerStatus) -> api::WorkerStatus {
    use backmesh_core::workers::WorkerState;
    let detail = match &w.state {
        WorkerState::Busy(d) | WorkerState::Throttled(d) => Some(d.clone()),
        WorkerState::Idle | WorkerState::Failing => None,
    };
    api::WorkerStatus {
        name: w.name.clone(),
        what: w.what.clone(),
        state: w.state.name().into(),
        detail,
        last_ok: w.last_ok_ms.map(rfc3339),
        last_error: w.last_error.as_ref().map(|(_, e)| e.clone()),
        last_error_at: w.last_error.as_ref().map(|(at, _)| rfc3339(*at)),
        errors: w.errors,
    }
}
