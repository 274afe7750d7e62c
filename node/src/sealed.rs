//! Encrypted archives on the HTTP API: finding an archive wherever it is
//! kept (this node, a holder, the bucket), and `GET /api/v1/keys`, what
//! the operator's CLI needs to open one (docs/encryption.md).

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use backmesh_core::archive::Manifest;
use backmesh_core::authority::{Act, SignedOrder};
use backmesh_core::log::actor::GetCatalog;
use backmesh_core::net::actor::GetPeers;
use backmesh_core::replica::source::{locate, Place};
use serde::Deserialize;

use crate::http::{admin, error, Answer, ApiError, ApiState};
use crate::orders::{admit_here, needed, order_of};

/// Archive `archive` (the newest if `None`) of (node, path): from this
/// node, a holder (under the operator's `order` for another node's
/// series), or, when no live node has it, the offsite bucket (read into
/// this node first).
pub(crate) async fn find_archive(
    state: &ApiState,
    node: &str,
    path: &str,
    archive: Option<&str>,
    order: Option<&SignedOrder>,
) -> Result<(Manifest, Place), ApiError> {
    let catalog = state.log.send(GetCatalog { node: node.to_string(), path: path.to_string() }).await?;
    let (_, peers) = state.membership.send(GetPeers).await?;
    let found = locate(&state.store, &state.net, &catalog, &peers, node, path, archive, order).await;
    match (found, &state.offsite) {
        (Ok(found), _) => Ok(found),
        (Err(e), None) => Err(error(StatusCode::NOT_FOUND, e.to_string())),
        (Err(e), Some((_, offsite))) => {
            let (o, st) = (offsite.clone(), state.store.clone());
            let claimant = backmesh_core::replica::source::claimant(&peers, node).map(str::to_string);
            let (node, path, id) = (node.to_string(), path.to_string(), archive.map(str::to_string));
            let imported =
                web::block(move || o.import(&st, &node, &path, id.as_deref(), claimant.as_deref())).await.map_err(
                    |b| error(StatusCode::INTERNAL_SERVER_ERROR, format!("the read from the bucket crashed: {b}")),
                )?;
            match imported {
                Ok(m) => Ok((m, Place::Local)),
                Err(oe) => Err(error(StatusCode::NOT_FOUND, format!("{e}; and from the offsite bucket: {oe}"))),
            }
        }
    }
}

#[derive(Deserialize)]
pub(crate) struct KeysQuery {
    node: String,
    path: String,
    archive: Option<String>,
}

/// `GET /keys`: whether an archive is encrypted, and its data key as its
/// manifest carries it (wrapped: only the node and the operator's
/// recovery key open it). Another node's series is read under the
/// operator's order to fetch it through this node.
pub(crate) async fn keys(req: HttpRequest, state: web::Data<ApiState>, q: web::Query<KeysQuery>) -> Answer {
    admin(&req, &state)?;
    let q = q.into_inner();
    let order = if q.node != state.health.name {
        let act = Act::Fetch {
            node: q.node.clone(),
            path: q.path.clone(),
            archive: q.archive.clone(),
            by: state.health.name.clone(),
        };
        let order = needed(&state, order_of(&req)?, &act, &q.node)?;
        admit_here(&state, &order, &act)?;
        Some(order)
    } else {
        None
    };
    let (m, _) = find_archive(&state, &q.node, &q.path, q.archive.as_deref(), order.as_ref()).await?;
    let crypt = m.crypt.as_ref();
    Ok(HttpResponse::Ok().json(backmesh_api::ArchiveKeys {
        node: m.node.clone(),
        path: m.path.clone(),
        archive: m.id.clone(),
        encrypted: crypt.is_some(),
        kid: crypt.map(|c| hex::encode(c.kid)),
        keys: crypt.map(|c| c.keys.iter().map(hex::encode).collect()).unwrap_or_default(),
    }))
}
