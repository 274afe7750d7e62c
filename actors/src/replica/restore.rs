//! Restoring an archive onto this node, from here, from holders or from the
//! offsite bucket; the checks on its target before anything starts.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;

use super::proto::ReadOf;
use super::source::{self, locate, Place, RemoteSource};
use crate::archive::restore::{MemberSource, RestoreError};
use crate::archive::{restore_archive, RestoreOptions};
use crate::authority::SignedOrder;
use crate::log::actor::{GetCatalog, LogActor};
use crate::net::actor::{GetPeers, MembershipActor};
use crate::net::client::NetClient;
use crate::net::membership::PeerView;
use crate::store::Store;

/// Why a restore into a directory cannot start: the operator must pick
/// another target (or pass `--overwrite`).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BadTarget {
    #[error("`{0}` is not an absolute path; give the full path of the target directory")]
    NotAbsolute(String),
    #[error("{0} is not empty; restore into a new or empty directory, or pass --overwrite")]
    NotEmpty(String),
    #[error("{0} exists and is not a directory")]
    NotADirectory(String),
    #[error("{to}: {why}")]
    Unusable { to: String, why: String },
    #[error(
        "a restore never writes into, over or above this node's own {what} ({path}), whoever asks; \
         restore into another directory"
    )]
    Protected { what: String, path: String },
}

/// What a restore must never write into, over or above: the node's data
/// directory, its config, its keys and token files. Given by the node at
/// start; each with what it is, for the refusal.
#[derive(Clone, Debug, Default)]
pub struct Protected(pub Vec<(String, std::path::PathBuf)>);

impl Protected {
    /// The protected path `to` would write into, over or above, if any.
    /// Both are compared as the filesystem resolves them (symbolic links
    /// of the part that exists followed), so a link or `..` leads nowhere.
    pub fn hit(&self, to: &std::path::Path) -> Option<&(String, std::path::PathBuf)> {
        let to = resolved(to);
        self.0.iter().find(|(_, p)| {
            let p = resolved(p);
            p.starts_with(&to) || to.starts_with(&p)
        })
    }
}

/// `p` with its longest existing ancestor canonicalized and `..` folded.
fn resolved(p: &std::path::Path) -> std::path::PathBuf {
    use std::path::Component;
    let mut clean = std::path::PathBuf::new();
    for c in p.components() {
        match c {
            Component::ParentDir => {
                clean.pop();
            }
            Component::CurDir => {}
            other => clean.push(other),
        }
    }
    let mut base = clean.clone();
    let mut rest = Vec::new();
    loop {
        if let Ok(real) = std::fs::canonicalize(&base) {
            let mut out = real;
            out.extend(rest.iter().rev());
            return out;
        }
        match (base.file_name().map(|n| n.to_owned()), base.parent().map(|b| b.to_path_buf())) {
            (Some(name), Some(parent)) => {
                rest.push(name);
                base = parent;
            }
            _ => return clean,
        }
    }
}

impl crate::error::Transient for BadTarget {
    fn retry(&self) -> crate::error::Retry {
        crate::error::Retry::Never
    }
}

/// Why a restore this node started did not complete (said in its
/// `restored` entry).
#[derive(Debug, thiserror::Error)]
pub enum RestoreFailed {
    #[error("the node is stopping: {0}")]
    Stopping(String),
    #[error(transparent)]
    Read(#[from] crate::replica::source::ReadError),
    /// The archive was found but could not be restored (a damaged member
    /// with no good copy, the target, the disk).
    #[error("{0}")]
    Restore(String),
    #[error("the restore crashed: {0}")]
    Crashed(String),
    /// Neither a live node nor the offsite bucket has it.
    #[error("{0}")]
    Offsite(String),
    /// An encrypted archive, and no key that opens it here.
    #[error("{0}")]
    Key(String),
}

impl crate::error::Transient for RestoreFailed {
    fn retry(&self) -> crate::error::Retry {
        match self {
            RestoreFailed::Read(e) => e.retry(),
            RestoreFailed::Key(_) => crate::error::Retry::Never,
            _ => crate::error::Retry::Later,
        }
    }
}

/// The data key of encrypted archive `m` from `given` (hex of an age file
/// wrapped to this node by the operator's CLI), checked to be the key the
/// archive is sealed under; `None` for a plain archive.
fn given_key(
    store: &Store,
    m: &crate::archive::Manifest,
    given: Option<&str>,
) -> Result<Option<backmesh_crypt::DataKey>, String> {
    let Some(crypt) = &m.crypt else { return Ok(None) };
    let kid = hex::encode(crypt.kid);
    let Some(given) = given else {
        return Err(format!(
            "archive {} of {} on {} is encrypted (data key {kid}) and this node does not hold its key: restore it \
             with the operator key (`backmesh --operator-key FILE restore …`), whose CLI gives this node the key \
             for this restore",
            m.id, m.path, m.node
        ));
    };
    let me = crate::store::node_unwrapper(store.identity()).ok_or("this node's identity cannot unwrap a key")?;
    let bytes = hex::decode(given.trim()).map_err(|_| "the key given with the order is not hex".to_string())?;
    let bundle = backmesh_crypt::wrap::unwrap(&bytes, &me)
        .map_err(|e| format!("the key given with the order does not open here: {e}"))?;
    if bundle.key.id_bytes() != crypt.kid || bundle.node != m.node {
        return Err(format!(
            "the key given is node {}'s data key {}, not the key archive {} of {} is sealed under ({kid})",
            bundle.node,
            bundle.key.id(),
            m.id,
            m.node
        ));
    }
    Ok(Some(bundle.key))
}

/// Why a restore into `to` cannot start, if it cannot.
pub(crate) fn check_target(to: &str, overwrite: bool, protected: &Protected) -> Result<(), BadTarget> {
    let p = std::path::Path::new(to);
    if !p.is_absolute() {
        return Err(BadTarget::NotAbsolute(to.into()));
    }
    if let Some((what, path)) = protected.hit(p) {
        return Err(BadTarget::Protected { what: what.clone(), path: path.display().to_string() });
    }
    match std::fs::read_dir(p).map(|mut entries| entries.next().is_some()) {
        Ok(true) if !overwrite => Err(BadTarget::NotEmpty(to.into())),
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotADirectory => Err(BadTarget::NotADirectory(to.into())),
        Err(e) => Err(BadTarget::Unusable { to: to.into(), why: e.to_string() }),
    }
}

/// Finds the archive and restores it: `(archive id, report)`, or the id
/// (if known) and why not.
pub(crate) async fn restore(
    store: &Arc<Store>,
    net: &NetClient,
    log: &Addr<LogActor>,
    membership: &Addr<MembershipActor>,
    offsite: Option<Arc<crate::offsite::sync::Offsite>>,
    msg: &RestoreHere,
    progress: Arc<crate::archive::create::Progress>,
) -> Result<(String, crate::archive::RestoreReport), (String, RestoreFailed)> {
    let catalog = log
        .send(GetCatalog { node: msg.node.clone(), path: msg.path.clone() })
        .await
        .map_err(|e| (String::new(), RestoreFailed::Stopping(e.to_string())))?;
    let mut peers =
        membership.send(GetPeers).await.map_err(|e| (String::new(), RestoreFailed::Stopping(e.to_string())))?.1;
    // A node that has just started (or lost its peers a moment ago) may
    // not see a holder up yet: wait a little for one before saying none is.
    let mut waited = 0;
    let kept_here = |id: &str| store.has_archive(&msg.node, &msg.path, id);
    let wanted = match msg.archive.as_deref() {
        Some(id) => catalog.iter().find(|a| a.id == id),
        None => catalog.first(),
    };
    if let Some(a) = wanted.filter(|a| !kept_here(&a.id)) {
        while waited < HOLDER_WAIT_MS && !peers.iter().any(|p| p.up && a.holders.contains(&p.name)) {
            tokio::time::sleep(Duration::from_millis(500)).await;
            waited += 500;
            peers =
                membership.send(GetPeers).await.map_err(|e| (String::new(), RestoreFailed::Stopping(e.to_string())))?.1;
        }
    }
    let found =
        locate(store, net, &catalog, &peers, &msg.node, &msg.path, msg.archive.as_deref(), msg.order.as_ref()).await;
    let (m, place) = match (found, offsite) {
        (Ok(found), _) => found,
        // No live node has it: the bucket may.
        (Err(e), Some(offsite)) => {
            let (st, node, path, id) = (store.clone(), msg.node.clone(), msg.path.clone(), msg.archive.clone());
            let claimant = source::claimant(&peers, &msg.node).map(str::to_string);
            tracing::info!("no live node has {} of {} ({e}); reading it from the offsite bucket", msg.path, msg.node);
            let imported = tokio::task::spawn_blocking(move || {
                offsite.import(&st, &node, &path, id.as_deref(), claimant.as_deref())
            })
            .await;
            match imported {
                Ok(Ok(m)) => (m, Place::Local),
                Ok(Err(oe)) => {
                    let why = format!("{e}; and from the offsite bucket: {oe}");
                    return Err((msg.archive.clone().unwrap_or_default(), RestoreFailed::Offsite(why)));
                }
                Err(join) => return Err((String::new(), RestoreFailed::Crashed(join.to_string()))),
            }
        }
        (Err(e), None) => return Err((msg.archive.clone().unwrap_or_default(), RestoreFailed::Read(e))),
    };
    let id = m.id.clone();
    let of = ReadOf::of(&m, msg.order.as_ref()).map_err(|e| (id.clone(), RestoreFailed::Read(e.into())))?;
    let (store, net, to) = (store.clone(), net.clone(), PathBuf::from(&msg.to));
    // An encrypted archive of this node's own opens with its data key;
    // another node's, with the key the operator's CLI wrapped to this node.
    let key = match store.key_for_archive(&m) {
        Some(k) => Some(k.clone()),
        None => given_key(&store, &m, msg.key.as_deref()).map_err(|e| (id.clone(), RestoreFailed::Key(e)))?,
    };
    let opts = RestoreOptions {
        overwrite: msg.overwrite,
        key,
        include: msg.include.clone(),
        progress: Some(progress),
        ..RestoreOptions::default()
    };
    // Should a member kept here be damaged or missing, the live peers
    // (holders first) can send it: the restore is made again from them.
    let holders: Vec<&str> = catalog.iter().flat_map(|a| a.holders.iter().map(String::as_str)).collect();
    let mut others: Vec<&PeerView> = peers.iter().filter(|p| p.up).collect();
    others.sort_by_key(|p| !holders.contains(&p.name.as_str()));
    let kept = others.iter().filter(|p| holders.contains(&p.name.as_str())).count();
    let others: Vec<String> = others.into_iter().map(|p| p.peer_id.clone()).collect();
    let names: HashMap<String, String> = peers.iter().map(|p| (p.peer_id.clone(), p.name.clone())).collect();
    let done = tokio::task::spawn_blocking(move || match place {
        Place::Local => match restore_archive(&m, &*with_total(&m, store.clone(), &opts), &to, &opts) {
            Err(e @ (RestoreError::DamagedMember { .. } | RestoreError::MissingMember { .. }))
                if !others.is_empty() =>
            {
                tracing::warn!("restore of archive {} here: {e}; reading its members from peers instead", m.id);
                if let Some(p) = &opts.progress {
                    // Made again from the start.
                    p.entries.store(0, std::sync::atomic::Ordering::Relaxed);
                    p.bytes_out.store(0, std::sync::atomic::Ordering::Relaxed);
                }
                let remote = RemoteSource::new(net, (others, kept), of, &m.members);
                let report = restore_archive(&m, &remote, &to, &opts)?;
                // What came from peers mends this node's copy.
                let mut mended = 0;
                for r in &m.members {
                    if store.read_member_checked(&r.sha256).is_err() {
                        if let Ok(data) = MemberSource::read_member(&remote, r) {
                            mended += usize::from(store.repair_member(&r.sha256, &data).is_ok());
                        }
                    }
                }
                if mended > 0 {
                    tracing::warn!("mended {mended} damaged or missing member(s) of archive {} from peers", m.id);
                }
                Ok(report)
            }
            other => other,
        },
        Place::Remote { peers, holders } => {
            let remote = Arc::new(RemoteSource::new(net, (peers, holders), of, &m.members));
            let report = restore_archive(&m, &*with_total(&m, remote.clone(), &opts), &to, &opts);
            // Batches go to the holders in turn: each sent a share.
            let from: Vec<String> = remote
                .sent_by()
                .into_iter()
                .map(|(p, b)| format!("{} {:.1} MiB", names.get(&p).unwrap_or(&p), b as f64 / 1048576.0))
                .collect();
            tracing::info!("restore of archive {} read its members from {}", m.id, from.join(", "));
            report
        }
    })
    .await;
    match done {
        Ok(Ok(report)) => Ok((id, report)),
        Ok(Err(e)) => Err((id, RestoreFailed::Restore(e.to_string()))),
        Err(e) => Err((id, RestoreFailed::Crashed(e.to_string()))),
    }
}

/// `source`, once the whole restore's size is known to its progress: an
/// encrypted archive's public manifest does not say it, its sealed head
/// does (read with the key; a small read before the restore).
fn with_total<S: MemberSource + Send>(m: &crate::archive::Manifest, source: Arc<S>, opts: &RestoreOptions) -> Arc<S> {
    if let (true, true, Some(p), Some(key)) = (m.encrypted(), opts.include.is_empty(), &opts.progress, &opts.key) {
        let src: &S = &source;
        let read = |o: &crate::archive::manifest::ObjRef| {
            src.read_member(&crate::archive::MemberRef { sha256: o.cid, raw_len: 0, compressed_len: o.len, key: None })
        };
        if let Ok(head) = crate::archive::sealed::open_head(m, key, &read) {
            p.total.store(head.stats.content_bytes, std::sync::atomic::Ordering::Relaxed);
        }
    }
    source
}

/// How long a restore waits for a holder of what it reads to be seen up
/// (a node just started is still connecting to its peers).
pub const HOLDER_WAIT_MS: u64 = 10_000;

/// Restore an archive of (node, path) onto this node. Answers at once
/// whether the restore could start; its result goes to the log as a
/// `restored` entry carrying `request`.
#[derive(Message)]
#[rtype(result = "Result<(), BadTarget>")]
pub struct RestoreHere {
    pub node: String,
    pub path: String,
    pub archive: Option<String>,
    pub to: String,
    pub overwrite: bool,
    pub request: String,
    /// The operator's order, when this node restores another node's
    /// series: it entitles this node to read it from the holders.
    pub order: Option<SignedOrder>,
    /// An encrypted archive's data key wrapped to this node (hex of an
    /// age file), from the operator: held in memory for this restore.
    pub key: Option<String>,
    /// Only the entries these patterns select.
    pub include: Vec<String>,
    /// The peer that asked for it (`None`: this node's own API): the one
    /// told how far it has come.
    pub asker: Option<String>,
}
