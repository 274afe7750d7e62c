//! What every route of the HTTP surface shares: the node's [`ApiState`],
//! [`ApiError`] and how it is sent, and who may ask what ([`Role`], from
//! the request's token).

use actix::Addr;
use actix_web::http::StatusCode;
use actix_web::{http::header, HttpRequest, HttpResponse};
use backmesh_api::{ErrorBody, Health};
use backmesh_core::jobs::actor::JobsActor;
use backmesh_core::log::actor::LogActor;
use backmesh_core::net::actor::MembershipActor;
use backmesh_core::net::client::NetClient;
use backmesh_core::replica::actor::ReplicaActor;
use backmesh_core::store::Store;

#[derive(Clone)]
pub struct ApiState {
    pub membership: Addr<MembershipActor>,
    pub log: Addr<LogActor>,
    pub jobs: Addr<JobsActor>,
    pub replica: Addr<ReplicaActor>,
    pub store: std::sync::Arc<Store>,
    pub net: NetClient,
    pub token: Option<String>,
    /// The operator keys this node trusts, and the orders it carried out.
    pub authority: std::sync::Arc<backmesh_core::authority::Authority>,
    pub viewer_token: Option<String>,
    pub site_tokens: Vec<(String, String)>,
    /// (site, token) pairs whose token opens the site's client page with
    /// the files of this node's own backups (`--site-browse`; each site
    /// checked at start to be this node's, each token to be no other).
    pub site_browse: Vec<(String, String)>,
    pub federate: Vec<crate::config::Federated>,
    pub federation: crate::federation::Federation,
    pub replicas: usize,
    /// Why this node's backups are not sealed, when `encrypt = auto`
    /// leaves them plain (a `status` problem).
    pub encrypt_note: Option<String>,
    pub health: Health,
    /// The node's background workers (`status --workers`).
    pub workers: backmesh_core::workers::Workers,
    /// With `--offsite`: the actor that keeps the bucket, and the bucket.
    pub offsite: Option<(
        Addr<backmesh_core::offsite::actor::OffsiteActor>,
        std::sync::Arc<backmesh_core::offsite::sync::Offsite>,
    )>,
}

/// Why a request is refused: its status and the words, sent as
/// `{"error": …}`. Handlers return `Result<HttpResponse, ApiError>` and use
/// `?` on refusals and on the actors' answers.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    /// The status it is sent with.
    pub fn status(&self) -> StatusCode {
        self.status
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl actix_web::ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }
    fn error_response(&self) -> HttpResponse {
        let mut r = HttpResponse::build(self.status);
        if self.status == StatusCode::UNAUTHORIZED {
            r.insert_header((header::WWW_AUTHENTICATE, "Bearer"));
        }
        r.json(ErrorBody { error: self.message.clone() })
    }
}

/// A name, path or archive id that cannot cross to another node: 400.
pub fn named<T>(checked: Result<T, backmesh_api::names::BadName>) -> Result<T, ApiError> {
    checked.map_err(|e| error(StatusCode::BAD_REQUEST, e.to_string()))
}

/// An actor that no longer answers: the node is stopping.
impl From<actix::MailboxError> for ApiError {
    fn from(e: actix::MailboxError) -> Self {
        shutting_down(e)
    }
}

/// What a handler answers.
pub type Answer = Result<HttpResponse, ApiError>;

pub fn error(status: StatusCode, msg: impl Into<String>) -> ApiError {
    ApiError { status, message: msg.into() }
}

/// Compares in time independent of where the strings differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Who a request speaks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Role {
    /// `--token`, or any request when the node has no token: everything.
    Admin,
    /// `--viewer-token`: every read, nothing that changes anything.
    Viewer,
    /// `--site-token SITE=…`: that site's client page only; `browse`:
    /// by a `--site-browse SITE=…` token, with the files of this node's own
    /// backups.
    Site { site: String, browse: bool },
}

/// Whether a `Host` header names this machine's loopback: a node without
/// a token serves only requests addressed so, which a web page of another
/// site cannot make a browser send (DNS rebinding).
fn loopback_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(h, port)| if port.parse::<u16>().is_ok() { h } else { host }),
    };
    name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// The role of the request's bearer token, or the 401.
pub fn role(req: &HttpRequest, state: &ApiState) -> Result<Role, ApiError> {
    let Some(token) = &state.token else {
        let host = req.headers().get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or("");
        if !loopback_host(host) {
            return Err(error(
                StatusCode::FORBIDDEN,
                format!(
                    "this node has no API token, so it answers only requests addressed to 127.0.0.1 or \
                     localhost, not `{host}`; set --token to serve other names"
                ),
            ));
        }
        return Ok(Role::Admin);
    };
    let given =
        req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    let Some(g) = given else {
        return Err(unauthorized("this node needs an API token: pass --token or set BACKMESH_TOKEN"));
    };
    if same(g.as_bytes(), token.as_bytes()) {
        return Ok(Role::Admin);
    }
    if state.viewer_token.as_ref().is_some_and(|v| same(g.as_bytes(), v.as_bytes())) {
        return Ok(Role::Viewer);
    }
    if let Some((site, _)) = state.site_tokens.iter().find(|(_, t)| same(g.as_bytes(), t.as_bytes())) {
        return Ok(Role::Site { site: site.clone(), browse: false });
    }
    if let Some((site, _)) = state.site_browse.iter().find(|(_, t)| same(g.as_bytes(), t.as_bytes())) {
        return Ok(Role::Site { site: site.clone(), browse: true });
    }
    Err(unauthorized("wrong API token"))
}

/// `Ok` when the request may change things (admin). A request that changes
/// something must say `Content-Type: application/json`: a form or a plain
/// `fetch` of another site cannot send that without the browser asking
/// first, which this API never allows.
pub fn admin(req: &HttpRequest, state: &ApiState) -> Result<(), ApiError> {
    match role(req, state)? {
        Role::Admin => {}
        _ => {
            return Err(error(
                StatusCode::FORBIDDEN,
                "this token is read-only: it cannot change, run, restore or download anything",
            ))
        }
    }
    if req.method() != actix_web::http::Method::GET {
        let ct = req.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
        if !ct.split(';').next().is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json")) {
            return Err(error(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!("a {} must be sent as Content-Type: application/json, not `{ct}`", req.method()),
            ));
        }
    }
    Ok(())
}

/// The 403 for a site token outside its site's page.
pub fn site_only(site: &str) -> ApiError {
    error(StatusCode::FORBIDDEN, format!("this token may only read the page of site `{site}`"))
}

/// `Ok` when the request may read the files inside series (node, …)'s
/// archives: the admin token; or this node's browse token of a site
/// (`--site-browse SITE=TOKEN`, set on this node alone), for this node's
/// own series only. A site's page token does not: the same one may be set
/// on every node that serves the page, and root on any of them holds it.
pub fn file_reader(req: &HttpRequest, state: &ApiState, node: &str) -> Result<(), ApiError> {
    match role(req, state)? {
        Role::Site { site, browse: true } => {
            if node == state.health.name {
                Ok(())
            } else {
                Err(error(
                    StatusCode::FORBIDDEN,
                    format!(
                        "site `{site}` browses here the backups of node {} only: open the page of node {node} to \
                         browse its backups",
                        state.health.name
                    ),
                ))
            }
        }
        Role::Site { site, browse: false } => Err(error(
            StatusCode::FORBIDDEN,
            format!(
                "site `{site}`'s page token does not browse backups on node {}: its operator gives the site a \
                 token of this node's for it (--site-browse {site}=TOKEN)",
                state.health.name
            ),
        )),
        _ => admin(req, state),
    }
}

/// `Ok` when the request may read the whole mesh (admin or viewer).
pub fn reader(req: &HttpRequest, state: &ApiState) -> Result<(), ApiError> {
    match role(req, state)? {
        Role::Admin | Role::Viewer => Ok(()),
        Role::Site { site, .. } => Err(site_only(&site)),
    }
}

fn unauthorized(msg: &str) -> ApiError {
    error(StatusCode::UNAUTHORIZED, msg)
}

/// A node answered a control request with something else than asked.
pub fn odd_answer(node: &str, answer: impl std::fmt::Debug) -> ApiError {
    error(StatusCode::BAD_GATEWAY, format!("node {node} answered {answer:?}"))
}

/// A node did not answer a control request.
pub fn no_answer(node: &str, why: impl std::fmt::Display) -> ApiError {
    error(StatusCode::SERVICE_UNAVAILABLE, format!("node {node}: {why}"))
}

pub fn shutting_down(e: impl std::fmt::Display) -> ApiError {
    error(actix_web::http::StatusCode::SERVICE_UNAVAILABLE, format!("node is shutting down: {e}"))
}
