//! The web dashboard and `/metrics`.
//!
//! Every node serves the same page at `/` (and a client's page at
//! `/site/NAME`), built from the gossiped log, so any node shows the whole
//! mesh. The page is plain HTML, CSS and JavaScript embedded in the binary
//! (no CDN, no build step); it signs in with a token kept in the browser's
//! session storage and polls the JSON routes below every few seconds.
//!
//! - `GET /api/v1/whoami`: the role of the token (admin, viewer, site).
//! - `GET /api/v1/dashboard[?site=S]`: sites → nodes → jobs with their
//!   states, counts, nodes with what they keep; federated meshes as further
//!   sites.
//! - `GET /api/v1/job?node=N&path=P`: one job's executions, archives and
//!   holders, warnings and failure reason.
//! - `GET /metrics`: Prometheus text format.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use actix_web::{web, HttpRequest, HttpResponse};
use backmesh_api::dashboard::{Counts, Execution, JobPage, JobRow, NodeRow, Overview, Site, SiteNode, WhoAmI};
use backmesh_api::JobState;
use backmesh_core::clock::{now_ms, rfc3339};
use backmesh_core::log::actor::{GetCatalog, GetCatalogs, GetJobs};
use backmesh_core::log::history::{HistoryQuery, PAGE_MAX};
use backmesh_core::log::views::{CatalogArchive, JobView};
use backmesh_core::net::actor::GetStatus;
use serde::Deserialize;

use crate::http::{error, role, site_only, Answer, ApiError, ApiState, Role};
use actix_web::http::StatusCode;

const INDEX: &str = include_str!("dashboard/index.html");
const APP_JS: &str = include_str!("dashboard/app.js");
const STYLE: &str = include_str!("dashboard/style.css");

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/", web::get().to(page))
        .route("/site/{name}", web::get().to(page))
        .route("/assets/app.js", web::get().to(|| async { asset(APP_JS, "text/javascript; charset=utf-8") }))
        .route("/assets/style.css", web::get().to(|| async { asset(STYLE, "text/css; charset=utf-8") }))
        .route("/metrics", web::get().to(metrics));
}

/// The dashboard's JSON routes, under `/api/v1`.
pub fn api_routes(scope: actix_web::Scope) -> actix_web::Scope {
    scope
        .route("/whoami", web::get().to(whoami))
        .route("/dashboard", web::get().to(dashboard))
        .route("/job", web::get().to(job))
}

async fn page() -> HttpResponse {
    // The page holds no data: it asks the API, with the token the user gives.
    asset(INDEX, "text/html; charset=utf-8")
}

fn asset(body: &'static str, kind: &'static str) -> HttpResponse {
    HttpResponse::Ok()
        .content_type(kind)
        .insert_header(("Cache-Control", "no-cache"))
        .insert_header(("X-Content-Type-Options", "nosniff"))
        .insert_header(("Content-Security-Policy", "default-src 'self'; style-src 'self'; img-src 'self' data:"))
        .body(body)
}

async fn whoami(req: HttpRequest, state: web::Data<ApiState>) -> Answer {
    let node = state.health.name.clone();
    Ok(HttpResponse::Ok().json(match role(&req, &state)? {
        Role::Admin => WhoAmI::Admin { node },
        Role::Viewer => WhoAmI::Viewer { node },
        Role::Site { site, browse } => WhoAmI::Site { site, node, browse },
    }))
}

pub use backmesh_core::log::views::job_state;

fn row(j: &JobView, catalog: Option<&Vec<CatalogArchive>>, now: i64) -> JobRow {
    let fmt = |t: &backmesh_core::log::crdt::Stamp| rfc3339(t.wall_ms);
    let newest = catalog.and_then(|c| c.first());
    JobRow {
        node: j.node.clone(),
        path: j.path.clone(),
        every: j.every_min,
        state: job_state(j, now, backmesh_core::clock::minute_ms()),
        last_success: j.last_success.as_ref().map(fmt),
        last_success_age_s: j.last_success.as_ref().map(|t| (now - t.wall_ms).max(0) / 1000),
        last_result: j.last.as_ref().map(|l| crate::view::run_result(l.result)),
        last_run: j.last.as_ref().map(|l| fmt(&l.time)),
        last_size: j.last_size,
        archives: catalog.map(|c| c.len()).unwrap_or(0),
        holders: newest.map(|a| a.holders.iter().cloned().collect()).unwrap_or_default(),
        error: j.last.as_ref().and_then(|l| l.error.clone()),
        warnings: j.last_warnings.clone(),
        source: j.spec.source_name().to_string(),
        plugin: j.last_plugin.as_ref().map(crate::view::plugin_report),
        offsite: None,
        runs: j
            .runs
            .iter()
            .map(|&(time_ms, r)| backmesh_api::dashboard::RunMark { time_ms, result: crate::view::run_result(r) })
            .collect(),
    }
}

/// What the dashboard says of the bucket's copies of each series.
struct OffsiteView {
    newest: Arc<backmesh_core::offsite::sync::NewestIndex>,
    /// (node, path) → why this node's last upload of it failed.
    failing: HashMap<(String, String), String>,
    /// Why the bucket could not be listed, if it could not.
    unreadable: Option<String>,
}

impl OffsiteView {
    async fn load(state: &ApiState) -> Option<OffsiteView> {
        let (actor, offsite) = state.offsite.as_ref()?;
        let status = actor.send(backmesh_core::offsite::actor::GetOffsiteStatus).await.ok()?;
        let failing = status.series.into_iter().filter_map(|s| Some(((s.node, s.path), s.error?))).collect();
        let o = offsite.clone();
        let (newest, unreadable) = match web::block(move || o.newest(Duration::from_secs(30))).await {
            Ok(Ok(n)) => (n, None),
            Ok(Err(e)) => {
                tracing::warn!("dashboard: cannot list the offsite bucket: {e}");
                (Arc::default(), Some(e.to_string()))
            }
            Err(_) => return None,
        };
        Some(OffsiteView { newest, failing, unreadable })
    }

    fn say(&self, node: &str, path: &str, catalog: Option<&Vec<CatalogArchive>>) -> Option<String> {
        if let Some(why) = self.failing.get(&(node.to_string(), path.to_string())) {
            return Some(format!("failing: {why}"));
        }
        if let Some(why) = &self.unreadable {
            return Some(format!("unknown: {why}"));
        }
        let archives = catalog.filter(|c| !c.is_empty())?;
        let Some((_, id)) = self.newest.get(&backmesh_core::offsite::series_dir(node, path)) else {
            return Some("not there yet".into());
        };
        match archives.iter().position(|a| &a.id == id) {
            Some(0) => Some("current".into()),
            // The oldest archive made since the newest one there.
            Some(k) => Some(match archives[k - 1].created.as_ref() {
                Some(t) => format!("behind since {}", rfc3339(t.wall_ms)),
                None => "behind".into(),
            }),
            None => Some("behind".into()),
        }
    }
}

#[derive(Deserialize)]
struct DashQuery {
    site: Option<String>,
    /// Leave out federated meshes (what a federating node asks for).
    #[serde(default)]
    local: bool,
}

/// Every series' archives with their holders, from the log.
type Catalogs = BTreeMap<(String, String), std::sync::Arc<Vec<CatalogArchive>>>;

/// The overview of this mesh (and, unless `local`, the federated ones),
/// with the catalog it was built from.
async fn overview(state: &ApiState, site: Option<&str>, local: bool) -> Result<(Overview, Catalogs), ApiError> {
    let status = state.membership.send(GetStatus).await?;
    let jobs = state.log.send(GetJobs).await?;
    let catalogs = state.log.send(GetCatalogs).await?;
    let offsite = OffsiteView::load(state).await;
    let now = now_ms();
    let site_of: HashMap<&str, &str> = status.nodes.iter().map(|n| (n.name.as_str(), n.site.as_str())).collect();
    // What each node keeps, from the catalog.
    let mut held: HashMap<&str, (u64, u64)> = HashMap::new();
    for archives in catalogs.values() {
        for a in archives.iter() {
            for h in &a.holders {
                let e = held.entry(h.as_str()).or_default();
                e.0 += 1;
                e.1 += a.size;
            }
        }
    }
    let mut by_site: BTreeMap<String, BTreeMap<String, SiteNode>> = BTreeMap::new();
    for n in &status.nodes {
        if site.is_some_and(|s| s != n.site) {
            continue;
        }
        by_site
            .entry(n.site.clone())
            .or_default()
            .insert(n.name.clone(), SiteNode { name: n.name.clone(), up: n.up, jobs: Vec::new() });
    }
    for j in &jobs {
        let s = site_of.get(j.node.as_str()).copied().unwrap_or("");
        if site.is_some_and(|want| want != s) {
            continue;
        }
        let catalog = catalogs.get(&(j.node.clone(), j.path.clone())).map(|c| &**c);
        let mut r = row(j, catalog, now);
        r.offsite = offsite.as_ref().and_then(|o| o.say(&j.node, &j.path, catalog));
        by_site
            .entry(s.to_string())
            .or_default()
            .entry(j.node.clone())
            .or_insert_with(|| SiteNode { name: j.node.clone(), up: false, jobs: Vec::new() })
            .jobs
            .push(r);
    }
    let mut counts = Counts::default();
    let mut sites: Vec<Site> = by_site
        .into_iter()
        .map(|(name, nodes)| {
            let mut c = Counts::default();
            for n in nodes.values() {
                for j in &n.jobs {
                    c.add(j.state);
                    counts.add(j.state);
                }
            }
            Site { name, mesh: None, reachable: true, error: None, counts: c, nodes: nodes.into_values().collect() }
        })
        .collect();
    if site.is_none() && !local {
        let remote = state.federation.lock().map(|f| f.clone()).unwrap_or_default();
        for f in &state.federate {
            match remote.get(&f.name) {
                Some(Ok(o)) => {
                    for s in &o.sites {
                        for n in &s.nodes {
                            for j in &n.jobs {
                                counts.add(j.state);
                            }
                        }
                        let name = if s.name.is_empty() { f.name.clone() } else { format!("{} / {}", f.name, s.name) };
                        sites.push(Site { name, mesh: Some(f.name.clone()), ..s.clone() });
                    }
                }
                other => {
                    let error = match other {
                        Some(Err(e)) => e.clone(),
                        _ => "not asked yet".into(),
                    };
                    sites.push(Site {
                        name: f.name.clone(),
                        mesh: Some(f.name.clone()),
                        reachable: false,
                        error: Some(error),
                        counts: Counts::default(),
                        nodes: Vec::new(),
                    });
                }
            }
        }
    }
    let nodes = status
        .nodes
        .iter()
        .filter(|n| site.is_none_or(|s| s == n.site))
        .map(|n| {
            let (archives_held, bytes_held) = held.get(n.name.as_str()).copied().unwrap_or_default();
            NodeRow {
                name: n.name.clone(),
                site: n.site.clone(),
                peer_id: n.peer_id.clone(),
                address: n.address.clone(),
                up: n.up,
                last_seen: n.last_seen.clone(),
                free_bytes: n.free_bytes,
                archives_held,
                bytes_held,
            }
        })
        .collect();
    let overview = Overview {
        generated: rfc3339(now),
        node: state.health.name.clone(),
        counts,
        sites,
        nodes,
        problems: if site.is_none() {
            status
                .problems
                .into_iter()
                .chain(crate::reads::replica_shortfall(status.nodes.len(), state.replicas))
                .collect()
        } else {
            Vec::new()
        },
    };
    Ok((overview, catalogs))
}

async fn dashboard(req: HttpRequest, state: web::Data<ApiState>, q: web::Query<DashQuery>) -> Answer {
    let q = q.into_inner();
    let site = match role(&req, &state)? {
        Role::Site { site: s, .. } if q.site.as_ref().is_some_and(|w| *w != s) => return Err(site_only(&s)),
        Role::Site { site: s, .. } => Some(s),
        _ => q.site,
    };
    Ok(HttpResponse::Ok().json(overview(&state, site.as_deref(), q.local).await?.0))
}

#[derive(Deserialize)]
struct JobQuery {
    node: String,
    path: String,
}

async fn job(req: HttpRequest, state: web::Data<ApiState>, q: web::Query<JobQuery>) -> Answer {
    let q = q.into_inner();
    let who = role(&req, &state)?;
    let jobs = state.log.send(GetJobs).await?;
    let Some(j) = jobs.iter().find(|j| j.node == q.node && j.path == q.path) else {
        return Err(error(StatusCode::NOT_FOUND, format!("no job backs up {} on {}", q.path, q.node)));
    };
    if let Role::Site { site: s, .. } = &who {
        let status = state.membership.send(GetStatus).await?;
        if !status.nodes.iter().any(|n| n.name == q.node && &n.site == s) {
            return Err(site_only(s));
        }
    }
    let catalog = state.log.send(GetCatalog { node: q.node.clone(), path: q.path.clone() }).await?;
    let catalog: Option<&Vec<CatalogArchive>> = (!catalog.is_empty()).then_some(&*catalog);
    let query = HistoryQuery { node: Some(q.node.clone()), path: Some(q.path.clone()), before: None, limit: PAGE_MAX };
    let entries = crate::reads::read_history(&state, query).await?.entries;
    let executions = entries
        .iter()
        .filter(|e| e.event.node() == q.node && ["finished", "unchanged", "failed"].contains(&e.event.kind()))
        .map(|e| Execution {
            time: rfc3339(e.time.wall_ms),
            time_ms: e.time.wall_ms,
            event: crate::view::event(&e.event),
        })
        .collect();
    let down: std::collections::HashSet<String> =
        state.membership.send(GetStatus).await?.nodes.into_iter().filter(|n| !n.up).map(|n| n.name).collect();
    let archives = catalog.into_iter().flatten().map(|a| crate::view::archive(a, &down)).collect();
    let mut job = row(j, catalog, now_ms());
    job.offsite = OffsiteView::load(&state).await.and_then(|o| o.say(&j.node, &j.path, catalog));
    Ok(HttpResponse::Ok().json(JobPage { job, executions, archives }))
}

/// Escapes a Prometheus label value.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

async fn metrics(req: HttpRequest, state: web::Data<ApiState>) -> Answer {
    if let Role::Site { .. } = role(&req, &state)? {
        return Err(error(StatusCode::FORBIDDEN, "a site token cannot read /metrics"));
    }
    let (o, catalogs) = overview(&state, None, true).await?;
    let mut out = String::new();
    let mut family = |name: &str, help: &str, samples: Vec<(String, f64)>| {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} gauge\n"));
        for (labels, v) in samples {
            out.push_str(&format!("{name}{labels} {v}\n"));
        }
    };
    let c = &o.counts;
    family(
        "backmesh_jobs",
        "Backup jobs of this mesh by state.",
        JobState::ALL.iter().map(|s| (format!("{{state=\"{}\"}}", s.as_str()), c.of(*s) as f64)).collect(),
    );
    let jobs: Vec<&JobRow> = o.sites.iter().flat_map(|s| s.nodes.iter().flat_map(|n| n.jobs.iter())).collect();
    family(
        "backmesh_job_last_success_timestamp_seconds",
        "When each job last succeeded (Unix time); absent for jobs that never did.",
        jobs.iter()
            .filter_map(|j| {
                let age = j.last_success_age_s?;
                let t = (now_ms() / 1000 - age) as f64;
                Some((format!("{{node=\"{}\",path=\"{}\"}}", label(&j.node), label(&j.path)), t))
            })
            .collect(),
    );
    family(
        "backmesh_job_failing",
        "1 when the job's last run failed.",
        jobs.iter()
            .map(|j| {
                let v = if j.state == JobState::Failing { 1.0 } else { 0.0 };
                (format!("{{node=\"{}\",path=\"{}\"}}", label(&j.node), label(&j.path)), v)
            })
            .collect(),
    );
    family(
        "backmesh_node_up",
        "1 when the node is up as this node sees it.",
        o.nodes.iter().map(|n| (format!("{{node=\"{}\"}}", label(&n.name)), if n.up { 1.0 } else { 0.0 })).collect(),
    );
    family(
        "backmesh_node_free_bytes",
        "Free space on each node's data directory.",
        o.nodes.iter().map(|n| (format!("{{node=\"{}\"}}", label(&n.name)), n.free_bytes as f64)).collect(),
    );
    family(
        "backmesh_node_stored_bytes",
        "Bytes of archives each node keeps (sum of archive sizes; shared members count once per archive).",
        o.nodes.iter().map(|n| (format!("{{node=\"{}\"}}", label(&n.name)), n.bytes_held as f64)).collect(),
    );
    // Archives with fewer copies than asked for, on the nodes that could hold them.
    let others = o.nodes.len().saturating_sub(1);
    let want = state.replicas.min(others);
    let mut backlog: BTreeMap<String, f64> = BTreeMap::new();
    for ((node, _), archives) in catalogs.iter() {
        let short = archives.iter().filter(|a| a.holders.iter().filter(|h| *h != node).count() < want).count();
        *backlog.entry(node.clone()).or_default() += short as f64;
    }
    family(
        "backmesh_replication_backlog",
        "Retained archives of each origin node with fewer copies than --replicas (or than other nodes exist).",
        backlog.into_iter().map(|(n, v)| (format!("{{node=\"{}\"}}", label(&n)), v)).collect(),
    );
    Ok(HttpResponse::Ok().content_type("text/plain; version=0.0.4; charset=utf-8").body(out))
}
