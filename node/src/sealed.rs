//! Encrypted archives on the HTTP API: finding an archive wherever it is
//! kept (this node, a holder, the bucket), and `GET /api/v1/keys`, what
//! the operator's CLI needs to open one (docs/encryption.md).

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use backmesh_api::archives::SEALED_TYPE;
use backmesh_core::archive::Manifest;
use backmesh_core::authority::SignedOrder;
use backmesh_core::log::actor::GetCatalog;
use backmesh_core::net::actor::GetPeers;
use backmesh_core::replica::source::{locate, Place};
use serde::Deserialize;

use crate::http::{admin, error, Answer, ApiError, ApiState};
use crate::orders::read_order;

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
    let (_, mut peers) = state.membership.send(GetPeers).await?;
    // A node that has just started may not see a holder up yet: wait a
    // little for one, as a restore does, before saying none is.
    let wanted = match archive {
        Some(id) => catalog.iter().find(|a| a.id == id),
        None => catalog.first(),
    };
    if let Some(a) = wanted.filter(|a| !state.store.has_archive(node, path, &a.id)) {
        let mut waited = 0;
        while waited < backmesh_core::replica::restore::HOLDER_WAIT_MS
            && !peers.iter().any(|p| p.up && a.holders.contains(&p.name))
        {
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            waited += 500;
            peers = state.membership.send(GetPeers).await?.1;
        }
    }
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

/// One archive of a series (the newest without `archive`), as `fetch`
/// and `keys` name it; for `fetch`, `include` (repeatable) chooses a part.
#[derive(Deserialize)]
pub(crate) struct ArchiveQuery {
    pub(crate) node: String,
    pub(crate) path: String,
    pub(crate) archive: Option<String>,
    #[serde(default)]
    pub(crate) include: Vec<String>,
}

impl ArchiveQuery {
    /// From a query string's pairs (where `include` may repeat).
    pub(crate) fn from_pairs(pairs: &[(String, String)]) -> Result<ArchiveQuery, ApiError> {
        let one = |k: &str| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        let need = |k: &str| one(k).ok_or_else(|| error(StatusCode::BAD_REQUEST, format!("`{k}` is missing")));
        Ok(ArchiveQuery {
            node: need("node")?,
            path: need("path")?,
            archive: one("archive"),
            include: pairs.iter().filter(|(n, _)| n == "include").map(|(_, v)| v.clone()).collect(),
        })
    }
}

/// `GET /keys`: whether an archive is encrypted, and its data key as its
/// manifest carries it (wrapped: only the node and the operator's
/// recovery key open it). Another node's series is read under the
/// operator's order to fetch it through this node.
pub(crate) async fn keys(req: HttpRequest, state: web::Data<ApiState>, q: web::Query<ArchiveQuery>) -> Answer {
    admin(&req, &state)?;
    let q = q.into_inner();
    let order = read_order(&req, &state, &q.node, &q.path, q.archive.as_deref())?;
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

/// `GET /fetch` of an encrypted archive. This node's own (it holds the
/// key, and the archive is here): the plain `.tgz`, opened here, as for a
/// plain archive. Any other: its sealed objects as they are kept, for the
/// operator's CLI to open ([`SEALED_TYPE`]); a client that does not take
/// them is told to upgrade.
pub(crate) fn fetch_encrypted(
    req: &HttpRequest,
    state: &ApiState,
    manifest: Manifest,
    place: Place,
    order: Option<&SignedOrder>,
) -> Answer {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<web::Bytes, std::io::Error>>(4);
    let body = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) });
    let id = manifest.id.clone();
    if let (Some(key), Place::Local) = (state.store.key_for_archive(&manifest).cloned(), &place) {
        let store = state.store.clone();
        tokio::task::spawn_blocking(move || {
            let mut out = ChannelWriter(tx.clone());
            if let Err(e) = store.export_tgz_with(&manifest, Some(&key), &mut out) {
                tracing::warn!("fetch of archive {} stopped: {e}", manifest.id);
                let _ = tx.blocking_send(Err(std::io::Error::other(e.to_string())));
            }
        });
        let mut answer = HttpResponse::Ok();
        answer.content_type("application/gzip").insert_header(("X-Backmesh-Archive", id));
        return Ok(answer.streaming(body));
    }
    let takes_sealed = req
        .headers()
        .get(actix_web::http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains(SEALED_TYPE));
    if !takes_sealed {
        return Err(error(
            StatusCode::CONFLICT,
            format!(
                "archive {} of {} on {} is encrypted: upgrade backmesh; the CLI opens it with the operator key",
                manifest.id, manifest.path, manifest.node
            ),
        ));
    }
    // What the stream carries, in order: the head, then each member after
    // its keyframe (again each time: a keyframe rarely serves two).
    let mut objects = Vec::new();
    for m in &manifest.members {
        objects.extend(m.key);
        objects.push(backmesh_core::archive::manifest::ObjRef { cid: m.sha256, len: m.compressed_len });
    }
    sealed_stream(state, manifest, place, order, objects, true)
}

/// An encrypted archive's sealed objects as the operator's CLI reads
/// them (docs/api.md): `BMSF`, a JSON header with what the public
/// manifest says, then frames of the head and `objects`, in order.
/// Without `lists` (a CLI that read them from an earlier stream of the
/// same archive), the header lists no members nor table groups and the
/// head is not sent: what a large archive's reader needs for the one
/// member it reads is then that member, not the archive's whole list.
fn sealed_stream(
    state: &ApiState,
    manifest: Manifest,
    place: Place,
    order: Option<&SignedOrder>,
    mut objects: Vec<backmesh_core::archive::manifest::ObjRef>,
    lists: bool,
) -> Answer {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<web::Bytes, std::io::Error>>(4);
    let body = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) });
    let id = manifest.id.clone();
    let (Some(crypt), Ok(of)) = (manifest.crypt.clone(), backmesh_core::replica::proto::ReadOf::of(&manifest, order))
    else {
        return Err(error(StatusCode::INTERNAL_SERVER_ERROR, "the archive's manifest cannot be read as encrypted"));
    };
    let listed = |m: &backmesh_core::archive::MemberRef| {
        let mut v = serde_json::json!({ "c": m.sha256.to_hex(), "n": m.compressed_len });
        if let Some(k) = m.key {
            v["k"] = k.cid.to_hex().into();
            v["kn"] = k.len.into();
        }
        v
    };
    let header = serde_json::json!({
        "archive": manifest.id,
        "node": manifest.node,
        "path": manifest.path,
        "kid": hex::encode(crypt.kid),
        "keys": crypt.keys.iter().map(hex::encode).collect::<Vec<_>>(),
        "members": if lists { manifest.members.iter().map(listed).collect::<Vec<_>>() } else { vec![] },
        "head": { "c": crypt.head.cid.to_hex(), "n": crypt.head.len },
        "index": if lists { crypt.index.iter().map(listed).collect::<Vec<_>>() } else { vec![] },
        "created_ms": manifest.created_ms,
        "lists": lists,
    });
    let header = serde_json::to_vec(&header).unwrap_or_default();
    if lists {
        objects.insert(0, crypt.head);
    }
    let (store, net) = (state.store.clone(), state.net.clone());
    actix_web::rt::spawn(async move {
        let mut opening = b"BMSF".to_vec();
        opening.extend_from_slice(&(header.len() as u32).to_le_bytes());
        opening.extend_from_slice(&header);
        if tx.send(Ok(web::Bytes::from(opening))).await.is_err() {
            return;
        }
        for group in objects.chunks(64) {
            let digests = group.iter().map(|o| o.cid).collect();
            match backmesh_core::replica::source::read_members(&store, &net, &place, &of, digests).await {
                Ok(read) => {
                    for (d, data) in read {
                        let mut frame = d.0.to_vec();
                        frame.extend_from_slice(&(data.len() as u64).to_le_bytes());
                        frame.extend_from_slice(&data);
                        if tx.send(Ok(web::Bytes::from(frame))).await.is_err() {
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
    let mut answer = HttpResponse::Ok();
    answer.content_type(SEALED_TYPE).insert_header(("X-Backmesh-Archive", manifest.id.clone()));
    Ok(answer.streaming(body))
}

/// `GET /objects`: what one archive is read from.
#[derive(Deserialize)]
pub(crate) struct ObjectsQuery {
    node: String,
    path: String,
    archive: Option<String>,
    /// `table`: the file table's groups.
    part: Option<String>,
    /// Members by index, comma-separated (each after its keyframe).
    members: Option<String>,
    /// Groups of the file table by index, comma-separated.
    groups: Option<String>,
    /// `false`: the CLI has the member and table lists (and the head) from
    /// an earlier stream of this archive; they are not sent again.
    lists: Option<bool>,
}

/// Members one request may ask for at most.
const MAX_ASKED: usize = 100_000;

/// `GET /objects`: an encrypted archive's sealed objects, for the
/// operator's CLI to open with the operator key (a listing, one file,
/// part of an archive, when the asked node does not hold the series'
/// key): the head, then the file table's groups (`part=table`) or the
/// members asked for, as `fetch` streams them.
pub(crate) async fn objects(req: HttpRequest, state: web::Data<ApiState>, q: web::Query<ObjectsQuery>) -> Answer {
    admin(&req, &state)?;
    let q = q.into_inner();
    let order = read_order(&req, &state, &q.node, &q.path, q.archive.as_deref())?;
    let (m, place) = find_archive(&state, &q.node, &q.path, q.archive.as_deref(), order.as_ref()).await?;
    let Some(crypt) = m.crypt.clone() else {
        return Err(error(
            StatusCode::BAD_REQUEST,
            format!("archive {} is not encrypted: its node, or any holder, reads it (`files`, `dump`)", m.id),
        ));
    };
    let obj = |r: &backmesh_core::archive::MemberRef| backmesh_core::archive::manifest::ObjRef {
        cid: r.sha256,
        len: r.compressed_len,
    };
    let mut objects = Vec::new();
    if q.part.as_deref() == Some("table") {
        objects.extend(crypt.index.iter().map(obj));
    }
    for a in q.groups.as_deref().unwrap_or("").split(',').filter(|s| !s.is_empty()) {
        let Some(group) = a.parse::<usize>().ok().and_then(|i| crypt.index.get(i)) else {
            return Err(error(StatusCode::BAD_REQUEST, format!("archive {} has no table group `{a}`", m.id)));
        };
        objects.push(obj(group));
    }
    let asked: Vec<&str> = q.members.as_deref().unwrap_or("").split(',').filter(|s| !s.is_empty()).collect();
    if asked.len() > MAX_ASKED {
        return Err(error(StatusCode::BAD_REQUEST, format!("more than {MAX_ASKED} members asked at once")));
    }
    for a in asked {
        let Some(member) = a.parse::<usize>().ok().and_then(|i| m.members.get(i)) else {
            return Err(error(StatusCode::BAD_REQUEST, format!("archive {} has no member `{a}`", m.id)));
        };
        objects.extend(member.key);
        objects.push(obj(member));
    }
    sealed_stream(&state, m, place, order.as_ref(), objects, q.lists.unwrap_or(true))
}

/// Writes into a response body from a blocking thread.
pub(crate) struct ChannelWriter(pub(crate) tokio::sync::mpsc::Sender<Result<web::Bytes, std::io::Error>>);

impl std::io::Write for ChannelWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .blocking_send(Ok(web::Bytes::copy_from_slice(buf)))
            .map_err(|_| std::io::Error::other("the client went away"))?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
