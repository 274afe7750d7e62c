//! Looking inside archives on the HTTP API: `GET /files` (a listing),
//! `GET /find` (which archives hold matching files), `GET /diff` (two
//! archives compared), `GET /dump` (one file's content) and the part of an
//! archive `GET /fetch?include=…` sends. Each reads the archive's file
//! table and, for content, only the members that hold the entries asked
//! for, from this node or the nearest holder (docs/api.md).
//!
//! An encrypted archive is opened here only with this node's own key (its
//! own series). Any other is refused with 409: the series' own node opens
//! it, or the operator's CLI with the operator key.
//! Another node's series is read through this node under the operator's
//! order, as `fetch` is.

use std::collections::HashMap;
use std::sync::Arc;

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use backmesh_api::files::Found;
use backmesh_core::archive::manifest::{Manifest, MemberRef, ObjRef};
use backmesh_core::archive::partial::{self, Picked};
use backmesh_core::archive::{MemberSource, RestoreError};
use backmesh_core::authority::SignedOrder;
use backmesh_core::hash::Digest;
use backmesh_core::replica::proto::ReadOf;
use backmesh_core::replica::source::{batches, read_members, Place, RemoteSource};
use backmesh_crypt::DataKey;
use backmesh_table::{answers, tree, Part, Patterns};
use serde::Deserialize;

use crate::http::{error, file_reader, Answer, ApiError, ApiState};
use crate::orders::read_order;
use crate::sealed::{find_archive, ChannelWriter};

/// An archive found and open for reading: its file table, where its
/// members are, the key that opens them, and what entitles this node.
pub(crate) struct Opened {
    pub(crate) m: Manifest,
    place: Place,
    key: Option<DataKey>,
    of: ReadOf,
    /// When `m.files` is one group of the table: where it starts in the stream.
    start: Option<u64>,
}

impl Opened {
    /// Where `m.files` lie in the stream.
    fn layout(&self) -> Result<backmesh_table::Layout, ApiError> {
        match self.start {
            None => partial::layout(&self.m).map_err(unreadable),
            Some(at) => {
                let lens: Vec<u64> = self.m.members.iter().map(|m| m.raw_len).collect();
                backmesh_table::Layout::at(at, &self.m.files, &lens).ok_or_else(|| {
                    unreadable(format!("archive {}'s head places a group of its table past its end", self.m.id))
                })
            }
        }
    }

    /// Where members `wanted` (indices) are read from, in this order.
    fn source(&self, state: &ApiState, wanted: &[usize]) -> Arc<dyn MemberSource + Send + Sync> {
        match &self.place {
            Place::Local => state.store.clone(),
            Place::Remote { peers, holders } => {
                let members: Vec<MemberRef> = wanted.iter().map(|&k| self.m.members[k].clone()).collect();
                let from = (peers.clone(), *holders);
                Arc::new(RemoteSource::new(state.net.clone(), from, self.of.clone(), &members))
            }
        }
    }
}

fn crashed(e: impl std::fmt::Display) -> ApiError {
    error(StatusCode::INTERNAL_SERVER_ERROR, format!("the read crashed: {e}"))
}

fn unreadable(e: impl std::fmt::Display) -> ApiError {
    error(StatusCode::UNPROCESSABLE_ENTITY, e.to_string())
}

/// The key that opens encrypted archive `m` here: this node's own, or a
/// 409 that says who can open it.
fn key_here(state: &ApiState, m: &Manifest) -> Result<DataKey, ApiError> {
    state.store.key_for_archive(m).cloned().ok_or_else(|| {
        error(
            StatusCode::CONFLICT,
            format!(
                "archive {} of {} on {} is encrypted, and node {} does not hold {}'s key: ask {} itself, or give \
                 the operator key (--operator-key) to the CLI, which opens it on your machine",
                m.id, m.path, m.node, state.health.name, m.node, m.node
            ),
        )
    })
}

/// Entry `file` of archive `archive` of (node, path) and what holds it:
/// of an encrypted archive whose head says where its table's groups
/// start, only the group that holds it is read; else the whole table.
/// The entry's index in `m.files`, or `None` when it is not there.
async fn open_entry(
    state: &ApiState,
    (node, path, archive): (&str, &str, Option<&str>),
    order: Option<&SignedOrder>,
    file: &[u8],
) -> Result<(Opened, Option<usize>), ApiError> {
    let (m, place) = find_archive(state, node, path, archive, order).await?;
    if m.encrypted() {
        let key = key_here(state, &m)?;
        let of = ReadOf::of(&m, order).map_err(|e| error(StatusCode::BAD_REQUEST, e.to_string()))?;
        let mut o = Opened { m, place, key: Some(key.clone()), of, start: None };
        let source = o.source(state, &[]);
        let (public, want) = (o.m.clone(), file.to_vec());
        let one = web::block(move || {
            let mut m = public;
            let read = |r: &ObjRef| {
                source.read_member(&MemberRef { sha256: r.cid, raw_len: 0, compressed_len: r.len, key: None })
            };
            backmesh_core::archive::sealed::open_one(&mut m, &key, &read, &want).map(|found| (m, found))
        })
        .await
        .map_err(crashed)?
        .map_err(unreadable)?;
        // A hard link's file may be in another group: then the whole table.
        if let (m, Some((records, i, start))) = one {
            if tree::content_of(&records, i).is_some() {
                (o.m, o.start) = (Manifest { files: records, ..m }, Some(start));
                return Ok((o, Some(i)));
            }
        }
    }
    let o = open(state, node, path, archive, order).await?;
    let i = o.m.files.iter().position(|f| f.path.as_slice() == file);
    Ok((o, i))
}

/// Archive `archive` (the newest: `None`) of (node, path), its file table open.
pub(crate) async fn open(
    state: &ApiState,
    node: &str,
    path: &str,
    archive: Option<&str>,
    order: Option<&SignedOrder>,
) -> Result<Opened, ApiError> {
    let (m, place) = find_archive(state, node, path, archive, order).await?;
    let of = ReadOf::of(&m, order).map_err(|e| error(StatusCode::BAD_REQUEST, e.to_string()))?;
    let Some(crypt) = m.crypt.clone() else { return Ok(Opened { m, place, key: None, of, start: None }) };
    let key = key_here(state, &m)?;
    let mut got: HashMap<Digest, Vec<u8>> = HashMap::new();
    let table =
        std::iter::once(crypt.head).chain(crypt.index.iter().map(|g| ObjRef { cid: g.sha256, len: g.compressed_len }));
    for batch in batches(table) {
        let read = read_members(&state.store, &state.net, &place, &of, batch).await.map_err(unreadable)?;
        got.extend(read);
    }
    let public = m.clone();
    let k = key.clone();
    let opened = web::block(move || {
        let read = |o: &ObjRef| got.get(&o.cid).cloned().ok_or_else(|| std::io::Error::other("not read"));
        backmesh_core::archive::sealed::unseal(&public, &k, &read)
    })
    .await
    .map_err(crashed)?
    .map_err(unreadable)?;
    Ok(Opened { m: opened, place, key: Some(key), of, start: None })
}

/// Hands the pieces of entries `wanted` of `o` to `out`, reading only
/// their members (in a blocking thread).
pub(crate) async fn pick(
    state: &ApiState,
    o: Arc<Opened>,
    wanted: Vec<usize>,
    mut out: impl FnMut(usize, Part<'_>) -> std::io::Result<()> + Send + 'static,
) -> Result<Picked, ApiError> {
    let layout = partial::layout(&o.m).map_err(unreadable)?;
    let members = backmesh_table::Picker::new(&o.m.files, &layout, wanted.clone()).members().to_vec();
    let source = o.source(state, &members);
    web::block(move || partial::pick(&o.m, wanted, &*source, o.key.as_ref(), 0, &mut out))
        .await
        .map_err(crashed)?
        .map_err(unreadable)
}

/// One archive of a series, and where to look inside it.
#[derive(Deserialize)]
pub(crate) struct FilesQuery {
    node: String,
    path: String,
    archive: Option<String>,
    under: Option<String>,
    #[serde(default)]
    recursive: bool,
}

/// `GET /files`: what a directory of an archive holds.
pub(crate) async fn files(req: HttpRequest, state: web::Data<ApiState>, q: web::Query<FilesQuery>) -> Answer {
    file_reader(&req, &state, &q.node)?;
    let q = q.into_inner();
    let order = read_order(&req, &state, &q.node, &q.path, q.archive.as_deref())?;
    let o = open(&state, &q.node, &q.path, q.archive.as_deref(), order.as_ref()).await?;
    let under = q.under.as_deref().unwrap_or("");
    let Some(listing) = answers::listing((&q.node, &q.path, &o.m.id), &o.m.files, under, q.recursive) else {
        return Err(error(StatusCode::NOT_FOUND, format!("archive {} of {} holds no `{under}`", o.m.id, q.path)));
    };
    Ok(HttpResponse::Ok().json(listing))
}

#[derive(Deserialize)]
pub(crate) struct FindQuery {
    node: String,
    path: String,
    pattern: String,
}

/// `GET /find`: the archives of a series, retained and hidden, that hold
/// entries matching a pattern, newest first.
pub(crate) async fn find(req: HttpRequest, state: web::Data<ApiState>, q: web::Query<FindQuery>) -> Answer {
    use backmesh_core::log::actor::GetCatalog;
    file_reader(&req, &state, &q.node)?;
    let q = q.into_inner();
    let patterns =
        Patterns::new(std::slice::from_ref(&q.pattern)).map_err(|e| error(StatusCode::BAD_REQUEST, e.to_string()))?;
    let order = read_order(&req, &state, &q.node, &q.path, None)?;
    let catalog = state.log.send(GetCatalog { node: q.node.clone(), path: q.path.clone() }).await?;
    let visible: std::collections::HashSet<String> = catalog.iter().map(|a| a.id.clone()).collect();
    let hidden = crate::reads::hidden_archives(&state, &q.node, &q.path, &visible).await?;
    let ids = catalog.iter().map(|a| (a.id.clone(), false)).chain(hidden.into_iter().map(|a| (a.id, true)));
    let mut found = Found {
        node: q.node.clone(),
        path: q.path.clone(),
        pattern: q.pattern.clone(),
        archives: Vec::new(),
        searched: 0,
        unread: Vec::new(),
    };
    let mut ids: Vec<(String, bool)> = ids.collect();
    // Newest first: ids begin with their creation time.
    ids.sort_by(|a, b| b.0.cmp(&a.0));
    ids.dedup_by(|a, b| a.0 == b.0);
    for (id, hidden) in ids {
        found.searched += 1;
        match open(&state, &q.node, &q.path, Some(&id), order.as_ref()).await {
            Ok(o) => found.archives.extend(answers::found_in(&id, o.m.created_ms, hidden, &o.m.files, &patterns)),
            // Sealed under a key this node does not hold: the CLI opens them.
            Err(e) if e.status() == StatusCode::CONFLICT => return Err(e),
            Err(e) => found.unread.push(format!("{id}: {e}")),
        }
    }
    Ok(HttpResponse::Ok().json(found))
}

#[derive(Deserialize)]
pub(crate) struct DiffQuery {
    node: String,
    path: String,
    from: String,
    to: String,
}

/// The SHA-256 of the content of each entry `wanted` of `o`.
async fn content_digests(
    state: &ApiState,
    o: Arc<Opened>,
    wanted: Vec<usize>,
) -> Result<HashMap<usize, Digest>, ApiError> {
    use sha2::Digest as _;
    let hashers: Arc<std::sync::Mutex<HashMap<usize, sha2::Sha256>>> = Arc::default();
    let h = hashers.clone();
    pick(state, o, wanted, move |i, part| {
        let mut hashers = h.lock().unwrap_or_else(|p| p.into_inner());
        match part {
            Part::Content(c) => hashers.entry(i).or_default().update(c),
            // An empty file has a digest too.
            Part::End => drop(hashers.entry(i).or_default()),
            _ => {}
        }
        Ok(())
    })
    .await?;
    let hashers = std::mem::take(&mut *hashers.lock().unwrap_or_else(|p| p.into_inner()));
    Ok(hashers.into_iter().map(|(i, h)| (i, Digest::from_hasher(h))).collect())
}

/// `GET /diff`: what changed from archive `from` to archive `to`.
pub(crate) async fn diff(req: HttpRequest, state: web::Data<ApiState>, q: web::Query<DiffQuery>) -> Answer {
    file_reader(&req, &state, &q.node)?;
    let q = q.into_inner();
    let order = read_order(&req, &state, &q.node, &q.path, None)?;
    let a = Arc::new(open(&state, &q.node, &q.path, Some(&q.from), order.as_ref()).await?);
    let b = Arc::new(open(&state, &q.node, &q.path, Some(&q.to), order.as_ref()).await?);
    let (la, lb) = (partial::layout(&a.m).map_err(unreadable)?, partial::layout(&b.m).map_err(unreadable)?);
    // Files of one size in both: the same bytes of the same members at
    // the same place are the same content; the others are read and hashed.
    let (da, db): (Vec<Digest>, Vec<Digest>) =
        (a.m.members.iter().map(|m| m.sha256).collect(), b.m.members.iter().map(|m| m.sha256).collect());
    let tree::ToCompare { same, read_a, read_b } = tree::to_compare((&a.m.files, &la, &da), (&b.m.files, &lb, &db));
    let (ha, hb) = futures::future::try_join(
        content_digests(&state, a.clone(), read_a),
        content_digests(&state, b.clone(), read_b),
    )
    .await?;
    let d = tree::diff(&a.m.files, &b.m.files, &mut |i, j| {
        Ok(same.contains(&(i, j)) || (ha.contains_key(&i) && ha.get(&i) == hb.get(&j)))
    })
    .map_err(unreadable)?;
    Ok(HttpResponse::Ok().json(answers::compared((&q.node, &q.path), (&a.m.id, &a.m.files), (&b.m.id, &b.m.files), &d)))
}

#[derive(Deserialize)]
pub(crate) struct DumpQuery {
    node: String,
    path: String,
    archive: Option<String>,
    file: String,
}

/// What a partial read read, said in headers: the benchmark and the CLI
/// report them beside the archive's size.
fn said(answer: &mut actix_web::HttpResponseBuilder, id: &str, picked: &Picked) {
    answer
        .insert_header(("X-Backmesh-Archive", id.to_string()))
        .insert_header(("X-Backmesh-Members-Read", format!("{}/{}", picked.members, picked.of_members)))
        .insert_header(("X-Backmesh-Bytes-Read", picked.stored_bytes.to_string()));
}

/// What a read of entries `wanted` of `o` will read, and the stream
/// `job` writes from a blocking thread (ended early, with the error, if
/// the read fails).
fn streamed(
    state: &ApiState,
    o: Arc<Opened>,
    wanted: Vec<usize>,
    job: impl FnOnce(&Opened, Vec<usize>, &dyn MemberSource, &mut ChannelWriter) -> Result<Picked, RestoreError>
        + Send
        + 'static,
) -> Result<(Picked, impl futures::Stream<Item = Result<web::Bytes, std::io::Error>>), ApiError> {
    let layout = o.layout()?;
    let picker = backmesh_table::Picker::new(&o.m.files, &layout, wanted.clone());
    let members = picker.members().to_vec();
    let picked = Picked::of(&o.m, &picker);
    let source = o.source(state, &members);
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<web::Bytes, std::io::Error>>(4);
    tokio::task::spawn_blocking(move || {
        let mut out = ChannelWriter(tx.clone());
        if let Err(e) = job(&o, wanted, &*source, &mut out) {
            tracing::warn!("a read of archive {} stopped: {e}", o.m.id);
            let _ = tx.blocking_send(Err(std::io::Error::other(e.to_string())));
        }
    });
    Ok((picked, futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) })))
}

/// `GET /dump`: one file's content, read from the members that hold it.
pub(crate) async fn dump(req: HttpRequest, state: web::Data<ApiState>, q: web::Query<DumpQuery>) -> Answer {
    use std::io::Write as _;
    file_reader(&req, &state, &q.node)?;
    let q = q.into_inner();
    let order = read_order(&req, &state, &q.node, &q.path, q.archive.as_deref())?;
    let file = tree::normalise(&q.file);
    let (o, i) = open_entry(&state, (&q.node, &q.path, q.archive.as_deref()), order.as_ref(), &file).await?;
    let o = Arc::new(o);
    let Some(i) = i else {
        return Err(error(StatusCode::NOT_FOUND, format!("archive {} of {} holds no `{}`", o.m.id, q.path, q.file)));
    };
    // A hard link's content is its file's.
    let Some(i) = tree::content_of(&o.m.files, i) else {
        return Err(error(
            StatusCode::BAD_REQUEST,
            format!("`{}` in archive {} is a {}, not a file", q.file, o.m.id, o.m.files[i].entry().kind),
        ));
    };
    let size = o.m.files[i].size;
    let id = o.m.id.clone();
    let (picked, body) = streamed(&state, o, vec![i], |o, wanted, source, out| {
        let layout = o.layout().map_err(|e| RestoreError::Format { source: std::io::Error::other(e.to_string()) })?;
        partial::pick_in(&o.m, &layout, wanted, source, o.key.as_ref(), 1, &mut |_, part| match part {
            Part::Content(c) => out.write_all(c),
            _ => Ok(()),
        })
    })?;
    let mut answer = HttpResponse::Ok();
    answer.content_type("application/octet-stream");
    said(&mut answer, &id, &picked);
    Ok(answer.no_chunking(size).streaming(body))
}

/// `GET /fetch?include=…`: the entries the patterns select (with the
/// directories above them) as a `.tgz`, read from their members alone.
pub(crate) async fn fetch_part(
    state: &ApiState,
    node: &str,
    path: &str,
    archive: Option<&str>,
    include: Vec<String>,
    order: Option<&SignedOrder>,
) -> Answer {
    let o = Arc::new(open(state, node, path, archive, order).await?);
    let wanted = partial::choose(&o.m, &include).map_err(|e| error(StatusCode::NOT_FOUND, e.to_string()))?;
    let id = o.m.id.clone();
    let (picked, body) = streamed(state, o, wanted, |o, wanted, source, out| {
        partial::part_tgz(&o.m, wanted, source, o.key.as_ref(), out)
    })?;
    let mut answer = HttpResponse::Ok();
    answer.content_type("application/gzip");
    said(&mut answer, &id, &picked);
    Ok(answer.streaming(body))
}
