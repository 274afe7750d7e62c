//! The HTTP API (actix-web) under `/api/v1`; see docs/api.md.
//!
//! `GET /api/v1/health` needs no token; with `--token`, every other route
//! needs `Authorization: Bearer TOKEN` and answers 401 otherwise.

use actix_web::{web, HttpRequest, HttpResponse};
use backmesh_api::NodeStatus;
use backmesh_api::{JobKey, JobStatus};
use backmesh_core::authority::{Act, SignedOrder};
use backmesh_core::jobs::actor::{ChangeJob, GetProgress, RunNow};
use backmesh_core::jobs::proto::{JobsAnswer, JobsRequest, JOBS};
use backmesh_core::jobs::queue::NotQueued;
use backmesh_core::log::actor::{ForRequest, GetCatalog, GetJobs, TakeEntry};
use backmesh_core::log::history::{HistoryQuery, PAGE_MAX};
use backmesh_core::log::views::JobView;
use backmesh_core::net::actor::GetStatus;
use backmesh_core::replica::actor::{RestoreHere, VerifyHere};
use backmesh_core::replica::proto::{archive, name, series, ReplicaAnswer, ReplicaRequest, REPLICA, XFER_BATCH};
use backmesh_core::replica::source::read_members;
use serde::Deserialize;

use crate::http::{admin, error, named, no_answer, odd_answer, reader, shutting_down, Answer, ApiError, ApiState};
use crate::orders::{admit_here, needed, order_of};
use crate::reads::{read_history, replica_shortfall};
use crate::view;

async fn health(state: web::Data<ApiState>) -> HttpResponse {
    HttpResponse::Ok().json(&state.health)
}

fn job_status(j: &JobView) -> JobStatus {
    let state =
        backmesh_core::log::views::job_state(j, backmesh_core::clock::now_ms(), backmesh_core::clock::minute_ms());
    JobStatus {
        node: j.node.clone(),
        path: j.path.clone(),
        every: j.every_min,
        paused: j.paused,
        state,
        last_success: j.last_success.as_ref().map(|t| backmesh_core::clock::rfc3339(t.wall_ms)),
    }
}

async fn status(req: HttpRequest, state: web::Data<ApiState>) -> Answer {
    reader(&req, &state)?;
    let mut s = state.membership.send(GetStatus).await?;
    s.jobs = state.log.send(GetJobs).await?.iter().map(job_status).collect();
    let stats = state.log.send(backmesh_core::log::actor::GetStats).await?;
    s.state = backmesh_api::StateSummary { records: stats.records, digest: stats.digest };
    if let Some(p) = replica_shortfall(s.nodes.len(), state.replicas) {
        s.problems.push(p);
    }
    if let Some(note) = &state.encrypt_note {
        s.problems.push(format!("{}: {note}", state.health.name));
    }
    if let Some((offsite, _)) = &state.offsite {
        let o = offsite.send(backmesh_core::offsite::actor::GetOffsiteStatus).await?;
        if let Some(e) = &o.error {
            s.problems.push(format!("offsite: {e}"));
        }
        s.offsite = Some(o);
    }
    s.workers = state.workers.snapshot().iter().map(view::worker).collect();
    s.recovery = state.authority.recovery();
    Ok(HttpResponse::Ok().json(s))
}

async fn jobs(req: HttpRequest, state: web::Data<ApiState>) -> Answer {
    reader(&req, &state)?;
    let jobs = state.log.send(GetJobs).await?;
    Ok(HttpResponse::Ok().json(backmesh_api::Jobs { jobs: jobs.iter().map(job_status).collect() }))
}

#[derive(Deserialize)]
struct LogParams {
    node: Option<String>,
    path: Option<String>,
    limit: Option<usize>,
    /// A cursor from an earlier answer: only older entries.
    before: Option<String>,
}

async fn log(req: HttpRequest, state: web::Data<ApiState>, q: web::Query<LogParams>) -> Answer {
    reader(&req, &state)?;
    let q = q.into_inner();
    let limit = q.limit.unwrap_or(100).clamp(1, PAGE_MAX);
    let page = read_history(&state, HistoryQuery { node: q.node, path: q.path, before: q.before, limit }).await?;
    Ok(HttpResponse::Ok().json(backmesh_api::LogPage {
        entries: page.entries.iter().map(view::entry).collect(),
        more: page.more,
        cursor: page.cursor,
    }))
}

/// The API's own routes under `scope` (`/api/v1`).
pub fn api_routes(scope: actix_web::Scope) -> actix_web::Scope {
    scope
        .route("/health", web::get().to(health))
        .route("/status", web::get().to(status))
        .route("/jobs", web::get().to(jobs))
        .route("/join", web::post().to(join_node))
        .route("/revoke", web::post().to(revoke))
        .route("/operators", web::post().to(operators))
        .route("/recipients", web::post().to(recipients))
        .route("/keys", web::get().to(crate::sealed::keys))
        .route("/rebind", web::post().to(rebind))
        .route("/nodes/{node}/identity", web::get().to(identity))
        .route("/jobs", web::post().to(register))
        .route("/jobs", web::delete().to(unregister))
        .route("/run", web::post().to(run))
        .route("/progress", web::get().to(progress))
        .route("/requests/{id}", web::get().to(request_entries))
        .route("/requests/{id}/progress", web::get().to(restore_progress))
        .route("/backups", web::get().to(backups))
        .route("/restore", web::post().to(restore))
        .route("/fetch", web::get().to(fetch))
        .route("/files", web::get().to(crate::browse::files))
        .route("/find", web::get().to(crate::browse::find))
        .route("/diff", web::get().to(crate::browse::diff))
        .route("/dump", web::get().to(crate::browse::dump))
        .route("/objects", web::get().to(crate::sealed::objects))
        .route("/verify", web::post().to(verify))
        .route("/nodes/{node}/pause", web::post().to(pause))
        .route("/nodes/{node}/resume", web::post().to(resume))
        .route("/log", web::get().to(log))
}

/// Any other path: 404 in the API's shape.
pub async fn not_found(req: HttpRequest) -> Answer {
    Err(error(StatusCode::NOT_FOUND, format!("no such route: {} {}", req.method(), req.path())))
}

use actix_web::http::StatusCode;

/// The node called `name`, or the answer that explains why there is none.
async fn find_node(state: &ApiState, name: &str) -> Result<NodeStatus, ApiError> {
    let status = state.membership.send(GetStatus).await?;
    let matches: Vec<&NodeStatus> = status.nodes.iter().filter(|n| n.name == name).collect();
    match matches.as_slice() {
        [one] => Ok((*one).clone()),
        [] => {
            let known: Vec<&str> = status.nodes.iter().map(|n| n.name.as_str()).collect();
            Err(error(StatusCode::NOT_FOUND, format!("unknown node `{name}`; the mesh knows: {}", known.join(", "))))
        }
        _ => Err(error(
            StatusCode::CONFLICT,
            format!("{} nodes claim the name `{name}`; give each a unique --name first", matches.len()),
        )),
    }
}

/// A change of `node`'s jobs: that node alone writes it, asked here under
/// this node's token when it is this node, else under the operator's
/// order. Answers 201 with the entry it wrote (taken into this node's log
/// at once, so that what follows through this node sees it).
async fn change(state: &ApiState, node: &NodeStatus, act: Act, order: Option<SignedOrder>) -> Answer {
    let entry = if node.this_node {
        state.jobs.send(ChangeJob(act)).await?.map_err(|r| error(StatusCode::BAD_REQUEST, r))?
    } else {
        let order = needed(state, order, &act, &node.name)?;
        if !node.up {
            return Err(error(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("node {} is down, and only it changes its jobs; try again when it is up", node.name),
            ));
        }
        let entry = match state.net.call(&node.peer_id, &JOBS, &JobsRequest::Change { act, order }).await {
            Ok(JobsAnswer::Recorded { entry }) => *entry,
            Ok(JobsAnswer::Failed { reason }) => {
                return Err(error(StatusCode::BAD_REQUEST, format!("on {}: {reason}", node.name)))
            }
            Ok(other) => return Err(odd_answer(&node.name, other)),
            Err(e) => return Err(no_answer(&node.name, e)),
        };
        if let Err(why) = state.log.send(TakeEntry(entry.clone())).await? {
            // Gossip brings it anyway; this node's view is late meanwhile.
            tracing::warn!("node {} answered an entry this node does not take in: {why}", node.name);
        }
        entry
    };
    Ok(HttpResponse::Created().json(backmesh_api::Recorded { entry: view::entry(&entry) }))
}

async fn register(req: HttpRequest, state: web::Data<ApiState>, body: web::Json<backmesh_api::Register>) -> Answer {
    admin(&req, &state)?;
    let order = order_of(&req)?;
    let b = body.into_inner();
    // The order is over the request as sent: checked as such, normalized by the node that acts.
    backmesh_core::jobs::change::validate(&b).map_err(|r| error(StatusCode::BAD_REQUEST, r))?;
    let mut name = b.node.clone();
    // `host:port` of a node not yet in the mesh: dial it; it joins if it has the swarm key.
    if let Some(addr) = socket_addr(&b.node) {
        name = join(&state, addr).await?;
    }
    let node = find_node(&state, &name).await?;
    if name != b.node && !node.this_node {
        // An order names the node that acts, which an address does not.
        return Err(error(
            StatusCode::CONFLICT,
            format!("the node at {} joined as `{name}`; register the job by that name", b.node),
        ));
    }
    change(&state, &node, Act::Register(backmesh_api::Register { node: name, ..b }), order).await
}

async fn unregister(req: HttpRequest, state: web::Data<ApiState>, q: web::Query<JobKey>) -> Answer {
    admin(&req, &state)?;
    let k = q.into_inner();
    let node = find_node(&state, &k.node).await?;
    let jobs = state.log.send(GetJobs).await?;
    if !jobs.iter().any(|j| j.node == k.node && j.path == k.path) {
        return Err(error(StatusCode::NOT_FOUND, format!("no job backs up {} on {}", k.path, k.node)));
    }
    change(&state, &node, Act::Unregister(k), order_of(&req)?).await
}

async fn pause(req: HttpRequest, state: web::Data<ApiState>, node: web::Path<String>) -> Answer {
    set_paused(req, state, node.into_inner(), true).await
}

async fn resume(req: HttpRequest, state: web::Data<ApiState>, node: web::Path<String>) -> Answer {
    set_paused(req, state, node.into_inner(), false).await
}

async fn set_paused(req: HttpRequest, state: web::Data<ApiState>, node: String, paused: bool) -> Answer {
    admin(&req, &state)?;
    let found = find_node(&state, &node).await?;
    let act = if paused { Act::Pause { node } } else { Act::Resume { node } };
    change(&state, &found, act, order_of(&req)?).await
}

/// Queues a run on the node that owns the job; answers 202 at once (the
/// result arrives in the log as `finished`, `unchanged` or `failed`).
async fn run(req: HttpRequest, state: web::Data<ApiState>, body: web::Json<JobKey>) -> Answer {
    admin(&req, &state)?;
    let order = order_of(&req)?;
    let b = body.into_inner();
    let node = find_node(&state, &b.node).await?;
    let order = if node.this_node { None } else { Some(needed(&state, order, &Act::Run(b.clone()), &b.node)?) };
    let registered = state.log.send(GetJobs).await?.iter().any(|j| j.node == b.node && j.path == b.path);
    if !registered {
        return Err(error(
            StatusCode::NOT_FOUND,
            format!("no job backs up {} on {}; register it first", b.path, b.node),
        ));
    }
    let request = new_request();
    let queued = if node.this_node {
        let asked = state.jobs.send(RunNow { path: b.path.clone(), request: Some(request.clone()) }).await?;
        asked.map_err(|why| match why {
            NotQueued::Full(full) => error(StatusCode::TOO_MANY_REQUESTS, full.to_string()),
            NotQueued::NotDurable(_) => error(StatusCode::SERVICE_UNAVAILABLE, why.to_string()),
        })
    } else if !node.up {
        Err(error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("node {} is down; the run cannot start until it is back", b.node),
        ))
    } else {
        let run = JobsRequest::Run { path: named(series(&b.path))?, request: Some(request.clone()), order };
        match state.net.call(&node.peer_id, &JOBS, &run).await {
            Ok(JobsAnswer::Queued { id }) => Ok(id),
            Ok(JobsAnswer::Busy { reason }) => {
                Err(error(StatusCode::TOO_MANY_REQUESTS, format!("on {}: {reason}", b.node)))
            }
            Ok(JobsAnswer::Failed { reason }) => Err(error(StatusCode::FORBIDDEN, format!("on {}: {reason}", b.node))),
            Ok(other) => Err(odd_answer(&b.node, other)),
            Err(e) => Err(no_answer(&b.node, e)),
        }
    };
    let id = queued?;
    Ok(HttpResponse::Accepted().json(backmesh_api::Queued { queued: id, request, node: b.node, path: b.path }))
}

#[derive(Deserialize)]
struct BackupsQuery {
    node: String,
    path: String,
    #[serde(default)]
    all: bool,
    /// Also the archives out of retention kept for the grace period.
    #[serde(default)]
    hidden: bool,
}

/// The retained archives of a job with the nodes that keep each, from the
/// log's catalog (so any node answers, even with the origin gone); with
/// `all`, every execution of the job too.
async fn backups(req: HttpRequest, state: web::Data<ApiState>, q: web::Query<BackupsQuery>) -> Answer {
    reader(&req, &state)?;
    let q = q.into_inner();
    let catalog = state.log.send(GetCatalog { node: q.node.clone(), path: q.path.clone() }).await?;
    let jobs = state.log.send(GetJobs).await?;
    let in_bucket = offsite_archives(&state, &q.node, &q.path, &catalog).await;
    if catalog.is_empty() && in_bucket.is_empty() && !jobs.iter().any(|j| j.node == q.node && j.path == q.path) {
        find_node(&state, &q.node).await?;
        return Err(error(
            StatusCode::NOT_FOUND,
            format!("no job backs up {} on {} and no archive of it is kept", q.path, q.node),
        ));
    }
    // Holders that are down still keep their copies; say which, so nobody counts on them now.
    let down: std::collections::HashSet<String> =
        state.membership.send(GetStatus).await?.nodes.into_iter().filter(|n| !n.up).map(|n| n.name).collect();
    let mut archives: Vec<backmesh_api::Archive> = catalog.iter().map(|a| view::archive(a, &down)).collect();
    for a in in_bucket {
        match archives.iter_mut().find(|x| x.id == a.id) {
            Some(x) => x.offsite = true,
            None => archives.push(a),
        }
    }
    let mut body = backmesh_api::Backups { archives, ..Default::default() };
    if q.hidden {
        let visible = body.archives.iter().map(|a| a.id.clone()).collect();
        body.hidden = crate::reads::hidden_archives(&state, &q.node, &q.path, &visible).await?;
    }
    if q.all {
        // Every execution, oldest first: page back through the keepers.
        let mut query =
            HistoryQuery { node: Some(q.node.clone()), path: Some(q.path.clone()), before: None, limit: PAGE_MAX };
        let mut all: Vec<backmesh_api::LogEntry> = Vec::new();
        for _ in 0..EXECUTION_PAGES {
            let page = read_history(&state, query.clone()).await?;
            let mut these: Vec<backmesh_api::LogEntry> =
                page.entries.iter().filter(|e| e.event.node() == q.node).map(view::entry).collect();
            these.append(&mut all);
            all = these;
            // Stop at the oldest, or when a page does not go further back.
            if !page.more || page.cursor.is_none() || page.cursor == query.before {
                break;
            }
            query.before = page.cursor;
        }
        body.executions = all;
    }
    Ok(HttpResponse::Ok().json(body))
}

/// The archives of (node, path) in the offsite bucket, newest first: those
/// the catalog knows by id only, the others with what their manifests say.
/// None without `--offsite`, or when the bucket cannot be read (said in the log).
async fn offsite_archives(
    state: &ApiState,
    node: &str,
    path: &str,
    catalog: &[backmesh_core::log::views::CatalogArchive],
) -> Vec<backmesh_api::Archive> {
    let Some((_, offsite)) = &state.offsite else { return Vec::new() };
    let known: std::collections::HashSet<String> = catalog.iter().map(|a| a.id.clone()).collect();
    let (o, node, path) = (offsite.clone(), node.to_string(), path.to_string());
    let read = web::block(move || -> Result<Vec<backmesh_api::Archive>, backmesh_core::offsite::sync::OffsiteError> {
        // Once: a person waits for this answer, and it is only a marker.
        let listed = o.archives_readable(&node, &path, 1)?;
        let mut out = Vec::new();
        for l in &listed {
            let mut a = backmesh_api::Archive {
                id: l.id.clone(),
                created: None,
                size: 0,
                files: 0,
                warnings: 0,
                holders: Vec::new(),
                holders_down: Vec::new(),
                offsite: true,
            };
            if !known.contains(&l.id) {
                // Only in the bucket (the mesh lost or pruned it): its manifest says what it is.
                let m = o.manifest(&node, &path, l)?;
                a.created = Some(backmesh_core::clock::rfc3339(m.created_ms));
                (a.size, a.files, a.warnings) = (m.tgz_len, m.stats.files + m.stats.hardlinks, m.warnings.len() as u64);
            }
            out.push(a);
        }
        Ok(out)
    })
    .await;
    match read {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => {
            tracing::warn!("backups: cannot list the offsite bucket: {e}");
            Vec::new()
        }
        Err(e) => {
            tracing::warn!("backups: the offsite listing crashed: {e}");
            Vec::new()
        }
    }
}

/// Pages of history `backups --all` reads at most (100,000 entries).
const EXECUTION_PAGES: usize = 100;

/// A new id for an on-demand request; log entries that answer it carry it.
fn new_request() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    format!("{:x}-{:x}-{}", nanos, std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
}

/// The log entries that answer request `id` (empty while it is under way).
async fn request_entries(req: HttpRequest, state: web::Data<ApiState>, id: web::Path<String>) -> Answer {
    reader(&req, &state)?;
    let entries = state.log.send(ForRequest { request: id.into_inner() }).await?;
    Ok(HttpResponse::Ok().json(backmesh_api::RequestEntries { entries: entries.iter().map(view::entry).collect() }))
}

#[derive(serde::Deserialize)]
struct OnNode {
    on: String,
}

/// How far the restore carrying request `id` has come on node `on`.
async fn restore_progress(
    req: HttpRequest,
    state: web::Data<ApiState>,
    id: web::Path<String>,
    q: web::Query<OnNode>,
) -> Answer {
    use backmesh_core::replica::actor::RestoreProgress;
    reader(&req, &state)?;
    let (request, on) = (id.into_inner(), q.into_inner().on);
    let node = find_node(&state, &on).await?;
    let answer = if node.this_node {
        state.replica.send(RestoreProgress { request: request.clone(), asker: None }).await?
    } else {
        let ask = ReplicaRequest::Progress { request: request.clone() };
        match state.net.call(&node.peer_id, &REPLICA, &ask).await {
            Ok(a @ ReplicaAnswer::Progress { .. }) => Some(a),
            Ok(ReplicaAnswer::Failed { .. }) => None,
            Ok(other) => return Err(odd_answer(&on, other)),
            Err(e) => return Err(no_answer(&on, e)),
        }
    };
    let mut p = backmesh_api::RestoreProgress { request, on, ..Default::default() };
    if let Some(ReplicaAnswer::Progress { entries, bytes, total, elapsed_ms }) = answer {
        (p.running, p.entries, p.bytes, p.total, p.elapsed_ms) = (true, entries, bytes, total, elapsed_ms);
    }
    Ok(HttpResponse::Ok().json(p))
}

/// Counters of the backup of (node, path) running now.
async fn progress(req: HttpRequest, state: web::Data<ApiState>, q: web::Query<JobKey>) -> Answer {
    reader(&req, &state)?;
    let q = q.into_inner();
    let node = find_node(&state, &q.node).await?;
    if node.this_node {
        return Ok(HttpResponse::Ok().json(view::progress(state.jobs.send(GetProgress { path: q.path }).await?)));
    }
    let ask = JobsRequest::Progress { path: named(series(&q.path))? };
    match state.net.call(&node.peer_id, &JOBS, &ask).await {
        Ok(JobsAnswer::Progress(p)) => Ok(HttpResponse::Ok().json(view::progress(p))),
        Ok(other) => Err(odd_answer(&q.node, other)),
        Err(e) => Err(no_answer(&q.node, e)),
    }
}

/// Starts a restore on the node that must write the files; answers 202
/// with the request whose `restored` entry will carry the result.
async fn restore(req: HttpRequest, state: web::Data<ApiState>, body: web::Json<backmesh_api::Restore>) -> Answer {
    admin(&req, &state)?;
    let order = order_of(&req)?;
    let mut b = body.into_inner();
    let on = b.on.get_or_insert_with(|| b.node.clone()).clone();
    let target = find_node(&state, &on).await?;
    let me = state.health.name.clone();
    // This node's token restores this node's own series onto itself; all
    // else (another node's series, or onto another node) is the operator's.
    // The order also entitles the restoring node to read the series from its holders.
    let order = if b.node == me && on == me {
        None
    } else {
        let order = needed(&state, order, &Act::Restore(b.clone()), if on == me { &b.node } else { &on })?;
        if target.this_node {
            admit_here(&state, &order, &Act::Restore(b.clone()))?;
        }
        Some(order)
    };
    let mut c = state.log.send(GetCatalog { node: b.node.clone(), path: b.path.clone() }).await?;
    let known = |c: &[backmesh_core::log::views::CatalogArchive]| {
        !c.is_empty() && b.archive.as_ref().is_none_or(|id| c.iter().any(|a| &a.id == id))
    };
    if !known(&c) {
        // A node just started may not have caught up with its peers yet:
        // wait for that (10 s at most) before saying the archive is unknown.
        for _ in 0..20 {
            if state.log.send(backmesh_core::log::actor::IsCaughtUp).await? {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        }
        c = state.log.send(GetCatalog { node: b.node.clone(), path: b.path.clone() }).await?;
    }
    // With an offsite bucket, what the mesh no longer knows may be there:
    // the restoring node looks, and says if it is not.
    let offsite = state.offsite.is_some();
    if c.is_empty() && !offsite && b.archive.is_none() {
        return Err(error(
            StatusCode::NOT_FOUND,
            format!("no archive of {} on {} is kept in the mesh", b.path, b.node),
        ));
    }
    if let Some(id) = b.archive.as_ref().filter(|_| !offsite) {
        // Not in the catalog: a hidden one, kept for the grace period?
        let visible = c.iter().map(|a| a.id.clone()).collect();
        if !c.iter().any(|a| &a.id == id)
            && !crate::reads::hidden_archives(&state, &b.node, &b.path, &visible).await?.iter().any(|a| &a.id == id)
        {
            let known: Vec<&str> = c.iter().map(|a| a.id.as_str()).collect();
            return Err(error(
                StatusCode::NOT_FOUND,
                format!(
                    "no archive {id} of {} on {}; kept: {} (and `backups --hidden` lists those kept for the grace period)",
                    b.path,
                    b.node,
                    known.join(", ")
                ),
            ));
        }
    }
    let request = new_request();
    let started = if target.this_node {
        let msg = RestoreHere {
            node: b.node.clone(),
            path: b.path.clone(),
            archive: b.archive.clone(),
            to: b.to.clone(),
            overwrite: b.overwrite,
            request: request.clone(),
            order: order.clone(),
            key: b.key.clone(),
            include: b.include.clone(),
            asker: None,
        };
        state.replica.send(msg).await?.map_err(|e| error(StatusCode::BAD_REQUEST, format!("on {on}: {e}")))
    } else if !target.up {
        Err(error(StatusCode::SERVICE_UNAVAILABLE, format!("node {on} is down; restore onto another node with --on")))
    } else {
        let ask = ReplicaRequest::Restore {
            node: named(name(&b.node))?,
            path: named(series(&b.path))?,
            archive: named(b.archive.as_deref().map(archive).transpose())?,
            to: b.to.clone(),
            overwrite: b.overwrite,
            request: request.clone(),
            order,
            key: b.key.clone(),
            include: b.include.clone(),
        };
        match state.net.call(&target.peer_id, &REPLICA, &ask).await {
            Ok(ReplicaAnswer::Accepted) => Ok(()),
            Ok(ReplicaAnswer::Failed { reason }) => Err(error(StatusCode::BAD_REQUEST, format!("on {on}: {reason}"))),
            Ok(other) => Err(odd_answer(&on, other)),
            Err(e) => Err(no_answer(&on, e)),
        }
    };
    started?;
    Ok(HttpResponse::Accepted().json(backmesh_api::RestoreStarted { request, on }))
}

/// Streams an archive as one `.tgz`, read from this node or a holder. The
/// length and sha256 are in the headers so the client can check the file.
async fn fetch(req: HttpRequest, state: web::Data<ApiState>, q: web::Query<Vec<(String, String)>>) -> Answer {
    // Who asks first (a stranger gets 401, not a word about the query).
    crate::http::role(&req, &state)?;
    let q = crate::sealed::ArchiveQuery::from_pairs(&q)?;
    crate::http::file_reader(&req, &state, &q.node)?;
    // Another node's archive is read here only under the operator's order,
    // which also entitles this node to read it from the holders.
    let order = crate::orders::read_order(&req, &state, &q.node, &q.path, q.archive.as_deref())?;
    if !q.include.is_empty() {
        return crate::browse::fetch_part(&state, &q.node, &q.path, q.archive.as_deref(), q.include, order.as_ref())
            .await;
    }
    let (manifest, place) =
        crate::sealed::find_archive(&state, &q.node, &q.path, q.archive.as_deref(), order.as_ref()).await?;
    if manifest.encrypted() {
        return crate::sealed::fetch_encrypted(&req, &state, manifest, place, order.as_ref());
    }
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<web::Bytes, std::io::Error>>(4);
    let (store, net) = (state.store.clone(), state.net.clone());
    let of = backmesh_core::replica::proto::ReadOf::of(&manifest, order.as_ref())
        .map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let (len, sha, id) = (manifest.tgz_len, manifest.tgz_digest(), manifest.id.clone());
    let manifest_id = id.clone();
    actix_web::rt::spawn(async move {
        // Consecutive runs of members (a member that recurs is sent again where it recurs).
        let mut groups: Vec<Vec<backmesh_core::hash::Digest>> = vec![Vec::new()];
        let mut size = 0u64;
        for m in &manifest.members {
            if size > 0 && size + m.compressed_len > XFER_BATCH as u64 {
                groups.push(Vec::new());
                size = 0;
            }
            size += m.compressed_len;
            if let Some(g) = groups.last_mut() {
                g.push(m.sha256);
            }
        }
        for group in groups.into_iter().filter(|g| !g.is_empty()) {
            match read_members(&store, &net, &place, &of, group).await {
                Ok(members) => {
                    for (_, data) in members {
                        if tx.send(Ok(web::Bytes::from(data))).await.is_err() {
                            return; // The client went away.
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!("fetch of archive {id} stopped: {e}");
                    let _ = tx.send(Err(std::io::Error::other(e))).await;
                    return;
                }
            }
        }
    });
    let body = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) });
    let mut answer = HttpResponse::Ok();
    answer.content_type("application/gzip").insert_header(("X-Backmesh-Archive", manifest_id));
    if let Some(sha) = sha {
        answer.insert_header(("X-Backmesh-Sha256", sha.to_hex()));
    }
    Ok(answer.no_chunking(len).streaming(body))
}

/// Asks every live node that keeps copies (of (node, path), or of
/// anything) to re-hash them; answers 202 with the request and how many
/// `verified` entries will follow.
async fn verify(req: HttpRequest, state: web::Data<ApiState>, body: web::Json<backmesh_api::Verify>) -> Answer {
    admin(&req, &state)?;
    let b = body.into_inner();
    if b.node.is_some() != b.path.is_some() {
        return Err(error(StatusCode::BAD_REQUEST, "give both NODE and PATH, or neither"));
    }
    let status = state.membership.send(GetStatus).await?;
    let mut targets: Vec<&NodeStatus> = status.nodes.iter().filter(|n| n.up).collect();
    if let (Some(node), Some(path)) = (&b.node, &b.path) {
        let catalog = state.log.send(GetCatalog { node: node.clone(), path: path.clone() }).await?;
        if catalog.is_empty() && state.offsite.is_none() {
            return Err(error(StatusCode::NOT_FOUND, format!("no archive of {path} on {node} is kept in the mesh")));
        }
        targets.retain(|n| catalog.iter().any(|a| a.holders.contains(&n.name)));
    }
    // This node's token verifies this node's copies; asking others is the operator's.
    let order = match targets.iter().find(|n| !n.this_node) {
        None => None,
        Some(other) => Some(needed(&state, order_of(&req)?, &Act::Verify(b.clone()), &other.name)?),
    };
    let request = new_request();
    let mut expect = 0usize;
    let mut nodes = Vec::new();
    let mut problems = Vec::new();
    for n in targets {
        let series = if n.this_node {
            let msg = VerifyHere { node: b.node.clone(), path: b.path.clone(), request: request.clone() };
            Ok(state.replica.send(msg).await?)
        } else {
            let ask = ReplicaRequest::Verify {
                node: named(b.node.as_deref().map(name).transpose())?,
                path: named(b.path.as_deref().map(series).transpose())?,
                request: request.clone(),
                order: order.clone(),
            };
            match state.net.call(&n.peer_id, &REPLICA, &ask).await {
                Ok(ReplicaAnswer::Verifying { series }) => Ok(series),
                Ok(ReplicaAnswer::Failed { reason }) => Err(reason),
                Ok(other) => Err(format!("answered {other:?}")),
                Err(e) => Err(e.to_string()),
            }
        };
        match series {
            Ok(s) => {
                expect += s.len();
                nodes.push(backmesh_api::Verifying { node: n.name.clone(), series: s.len() });
            }
            Err(e) => problems.push(format!("{}: {e}", n.name)),
        }
    }
    // The bucket's copies too: this node reads them back.
    if let (Some((_, offsite)), Some(node), Some(path)) = (&state.offsite, &b.node, &b.path) {
        expect += 1;
        nodes.push(backmesh_api::Verifying { node: "offsite".into(), series: 1 });
        let (o, st, log) = (offsite.clone(), state.store.clone(), state.log.clone());
        let (node, path, request) = (node.clone(), path.clone(), request.clone());
        actix_web::rt::spawn(async move {
            let (n, p) = (node.clone(), path.clone());
            let checked = web::block(move || o.verify_series(&st, &n, &p)).await;
            let holder = "offsite".to_string();
            let request = Some(request);
            let event = match checked {
                Ok(Ok(c)) => {
                    for bad in &c.bad_manifests {
                        tracing::warn!("offsite verify of {path} of {node}: {bad}");
                    }
                    backmesh_core::log::entry::Event::Verified {
                        ok: c.is_ok(),
                        node,
                        path,
                        holder,
                        archives: c.archives,
                        members: c.members,
                        damaged: c.damaged + c.bad_manifests.len() as u64,
                        repaired: c.repaired,
                        request,
                    }
                }
                Ok(Err(e)) => {
                    backmesh_core::log::entry::Event::VerifyFailed { node, path, holder, error: e.to_string(), request }
                }
                Err(e) => backmesh_core::log::entry::Event::VerifyFailed {
                    node,
                    path,
                    holder,
                    error: format!("the check crashed: {e}"),
                    request,
                },
            };
            log.do_send(backmesh_core::log::actor::Append(event));
        });
    }
    Ok(HttpResponse::Accepted().json(backmesh_api::VerifyStarted { request, expect, nodes, problems }))
}

/// `POST /join`: dials a node by its mesh address and answers its name
/// (the client then signs its command for that name).
async fn join_node(req: HttpRequest, state: web::Data<ApiState>, body: web::Json<backmesh_api::Join>) -> Answer {
    admin(&req, &state)?;
    let b = body.into_inner();
    let addr = socket_addr(&b.address)
        .ok_or_else(|| error(StatusCode::BAD_REQUEST, format!("`{}` is not a mesh address (HOST:PORT)", b.address)))?;
    let name = join(&state, addr).await?;
    Ok(HttpResponse::Ok().json(backmesh_api::Joined { name }))
}

/// `POST /revoke`: takes in the operator's revocation, which this node's
/// hellos then carry to the whole mesh; the revoked peer is cut off here
/// at once.
async fn revoke(req: HttpRequest, state: web::Data<ApiState>, body: web::Json<backmesh_api::Revoke>) -> Answer {
    admin(&req, &state)?;
    let b = body.into_inner();
    let (node, peer) = (b.node.clone(), b.peer.clone());
    let act = if b.retire { Act::Retire { node, peer } } else { Act::Revoke { node, peer } };
    let order = needed(&state, order_of(&req)?, &act, &b.node)?;
    match order.open() {
        Ok(o) if o.act == act => {}
        Ok(o) => {
            let ordered = format!("{:?}", o.act);
            return Err(error(
                StatusCode::FORBIDDEN,
                format!("the order is for another act ({ordered}) than this revocation"),
            ));
        }
        Err(e) => return Err(error(StatusCode::FORBIDDEN, e.to_string())),
    }
    if b.peer == state.health.peer_id {
        return Err(error(StatusCode::BAD_REQUEST, "a node does not revoke itself: ask another node"));
    }
    state.net.trust(order).await.map_err(|e| error(StatusCode::FORBIDDEN, e))?;
    Ok(HttpResponse::Ok().json(b))
}

/// `POST /rebind`: takes in the operator's rebind of a node name to a new
/// identity, which this node's hellos then carry to the whole mesh.
async fn rebind(req: HttpRequest, state: web::Data<ApiState>, body: web::Json<backmesh_api::Rebind>) -> Answer {
    admin(&req, &state)?;
    let b = body.into_inner();
    let act = Act::Rebind { node: b.node.clone(), peer: b.peer.clone(), former: b.former.clone() };
    let order = needed(&state, order_of(&req)?, &act, "every node")?;
    match order.open() {
        Ok(o) if o.act == act => {}
        Ok(_) => return Err(error(StatusCode::FORBIDDEN, "the order is for another act than this rebind")),
        Err(e) => return Err(error(StatusCode::FORBIDDEN, e.to_string())),
    }
    if b.former == state.health.peer_id {
        return Err(error(StatusCode::BAD_REQUEST, "a node does not refuse itself: ask another node"));
    }
    state.net.trust(order).await.map_err(|e| error(StatusCode::FORBIDDEN, e))?;
    Ok(HttpResponse::Ok().json(b))
}

/// `GET /nodes/{node}/identity`: whom this node knows as `node`.
async fn identity(req: HttpRequest, state: web::Data<ApiState>, node: web::Path<String>) -> Answer {
    reader(&req, &state)?;
    let node = node.into_inner();
    let kv = state.store.kv();
    let failed = |e: backmesh_core::store::StoreError| error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
    let peer = backmesh_core::store::origin_bound(kv.as_ref(), &node).map_err(failed)?;
    let former = backmesh_core::store::origin_former(kv.as_ref(), &node).map_err(failed)?;
    Ok(HttpResponse::Ok().json(backmesh_api::Identity {
        node,
        peer,
        former: former.into_iter().map(|(p, _)| p).collect(),
    }))
}

/// `POST /operators`: the operator trusts another operator key on every
/// node, or no longer (a change signed by a key trusted now), passed on
/// in hellos like a revocation.
async fn operators(
    req: HttpRequest,
    state: web::Data<ApiState>,
    body: web::Json<backmesh_api::OperatorChange>,
) -> Answer {
    admin(&req, &state)?;
    let b = body.into_inner();
    let operator = b.operator.clone();
    let act = if b.trusted { Act::Trust { operator } } else { Act::Distrust { operator } };
    let order = needed(&state, order_of(&req)?, &act, "every node")?;
    match order.open() {
        Ok(o) if o.act == act => {}
        Ok(_) => {
            return Err(error(StatusCode::FORBIDDEN, "the order is for another act than this change of operators"))
        }
        Err(e) => return Err(error(StatusCode::FORBIDDEN, e.to_string())),
    }
    state.net.trust(order).await.map_err(|e| error(StatusCode::FORBIDDEN, e))?;
    Ok(HttpResponse::Ok().json(backmesh_api::Operators { trusted: state.authority.trusted() }))
}

/// `POST /recipients`: every node wraps its data key to an operator
/// recovery recipient too, or no longer (a change signed by an operator
/// key trusted now), passed on in hellos like a revocation.
async fn recipients(
    req: HttpRequest,
    state: web::Data<ApiState>,
    body: web::Json<backmesh_api::RecipientChange>,
) -> Answer {
    admin(&req, &state)?;
    let b = body.into_inner();
    let recipient = b.recipient.clone();
    let act = if b.wrap { Act::AddRecipient { recipient } } else { Act::RemoveRecipient { recipient } };
    let order = needed(&state, order_of(&req)?, &act, "every node")?;
    match order.open() {
        Ok(o) if o.act == act => {}
        Ok(_) => {
            return Err(error(StatusCode::FORBIDDEN, "the order is for another act than this change of recipients"))
        }
        Err(e) => return Err(error(StatusCode::FORBIDDEN, e.to_string())),
    }
    state.net.trust(order).await.map_err(|e| error(StatusCode::FORBIDDEN, e))?;
    Ok(HttpResponse::Ok().json(backmesh_api::Recipients { recovery: state.authority.recovery() }))
}

/// `HOST:PORT` (not a plain node name) → an address to dial.
fn socket_addr(s: &str) -> Option<std::net::SocketAddr> {
    use std::net::ToSocketAddrs;
    if !s.contains(':') {
        return None;
    }
    s.to_socket_addrs().ok()?.next()
}

/// Dials `addr` and waits (up to 15 s) until the node there has said hello;
/// answers its name.
async fn join(state: &ApiState, addr: std::net::SocketAddr) -> Result<String, ApiError> {
    let peer = state
        .net
        .dial(addr)
        .await
        .map_err(|e| error(StatusCode::BAD_GATEWAY, format!("cannot reach a node at {addr}: {e}")))?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let status = state.membership.send(GetStatus).await.map_err(shutting_down)?;
        if let Some(n) = status.nodes.iter().find(|n| n.peer_id == peer && n.up) {
            return Ok(n.name.clone());
        }
        if std::time::Instant::now() > deadline {
            return Err(error(
                StatusCode::GATEWAY_TIMEOUT,
                format!("the node at {addr} connected but never said who it is"),
            ));
        }
        actix_web::rt::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}
