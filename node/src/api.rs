//! The HTTP API (actix-web) under `/api/v1`; see docs/api.md.
//!
//! `GET /api/v1/health` needs no token; with `--token`, every other route
//! needs `Authorization: Bearer TOKEN` and answers 401 otherwise.

use actix::Addr;
use actix_web::{http::header, web, HttpRequest, HttpResponse};
use backmesh_actors::net::actor::{GetStatus, MembershipActor};
use backmesh_api::{ErrorBody, Health};

#[derive(Clone)]
pub struct ApiState {
    pub membership: Addr<MembershipActor>,
    pub token: Option<String>,
    pub health: Health,
}

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::scope(backmesh_api::PREFIX)
            .route("/health", web::get().to(health))
            .route("/status", web::get().to(status)),
    )
    .default_service(web::to(not_found));
}

fn error(status: actix_web::http::StatusCode, msg: impl Into<String>) -> HttpResponse {
    HttpResponse::build(status).json(ErrorBody { error: msg.into() })
}

/// Compares in time independent of where the strings differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `None` when the request may proceed, else the 401 answer.
fn authorize(req: &HttpRequest, state: &ApiState) -> Option<HttpResponse> {
    let Some(token) = &state.token else { return None };
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match given {
        Some(g) if same(g.as_bytes(), token.as_bytes()) => None,
        Some(_) => Some(unauthorized("wrong API token")),
        None => Some(unauthorized("this node needs an API token: pass --token or set BACKMESH_TOKEN")),
    }
}

fn unauthorized(msg: &str) -> HttpResponse {
    let mut r = error(actix_web::http::StatusCode::UNAUTHORIZED, msg);
    r.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
    r
}

async fn health(state: web::Data<ApiState>) -> HttpResponse {
    HttpResponse::Ok().json(&state.health)
}

async fn status(req: HttpRequest, state: web::Data<ApiState>) -> HttpResponse {
    if let Some(refused) = authorize(&req, &state) {
        return refused;
    }
    match state.membership.send(GetStatus).await {
        Ok(s) => HttpResponse::Ok().json(s),
        Err(e) => error(actix_web::http::StatusCode::SERVICE_UNAVAILABLE, format!("node is shutting down: {e}")),
    }
}

async fn not_found(req: HttpRequest) -> HttpResponse {
    error(actix_web::http::StatusCode::NOT_FOUND, format!("no such route: {} {}", req.method(), req.path()))
}
