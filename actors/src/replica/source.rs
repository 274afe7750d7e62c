//! Reading an archive from wherever it is kept: this node's store, or a
//! peer over `/backmesh/xfer/3`, naming the archive each read is of and
//! the operator's order that entitles this node if it is neither the
//! series' node nor one of its holders ([`ReadOf`]). Every member read
//! from a peer is checked against its digest before use.

use std::collections::{HashMap, HashSet};
use std::io;
use std::sync::{Arc, Condvar, Mutex};

use super::proto::{xfer, xfer_blocking, ReadOf, WireMember, XferRequest, XferResponse, XFER_BATCH};
use crate::archive::manifest::ObjRef;
use crate::archive::{Manifest, MemberRef, MemberSource};
use crate::authority::SignedOrder;
use crate::error::{Retry, Transient};
use crate::hash::Digest;
use crate::log::views::CatalogArchive;
use crate::net::client::{NetClient, RequestError};
use crate::net::membership::PeerView;
use crate::store::Store;
use backmesh_api::names::BadName;

/// Why an archive, or members of it, could not be read.
#[derive(Clone, Debug, thiserror::Error)]
pub enum ReadError {
    #[error("no archive of {path} on {node} is known in the mesh")]
    Unknown { node: String, path: String },
    #[error("archive {id} of {path} on {node} is kept by no node that is up{}", holders_note(.holders))]
    NoHolderUp { id: String, node: String, path: String, holders: Vec<String> },
    #[error("cannot read archive {id} of {path} on {node}: {}", joined(.why))]
    NoCopy { id: String, node: String, path: String, why: Vec<PeerProblem> },
    #[error("no holder could send the members: {}", joined(.0))]
    NoMembers(Vec<PeerProblem>),
    #[error(transparent)]
    Name(#[from] BadName),
    /// This node's own copy could not be read.
    #[error("{0}")]
    Local(String),
    #[error("the read crashed: {0}")]
    Crashed(String),
}

impl Transient for ReadError {
    fn retry(&self) -> Retry {
        match self {
            // An unknown archive may be one the log has not caught up with yet.
            ReadError::Name(_) => Retry::Never,
            _ => Retry::Later,
        }
    }
}

/// What one peer could not do, or did wrong, when asked for an archive.
#[derive(Clone, Debug, thiserror::Error)]
pub enum PeerProblem {
    #[error(transparent)]
    Request(#[from] RequestError),
    #[error("{0}")]
    Refused(String),
    #[error("unexpected answer {0}")]
    Unexpected(String),
    #[error("asked for {asked} members, got {got}")]
    Count { asked: usize, got: usize },
    #[error("member {want} arrived damaged (hashes to {actual})")]
    Damaged { want: Digest, actual: Digest },
    #[error("a peer served a manifest that is not {node}'s: {why}")]
    NotTheOrigins { node: String, why: String },
    #[error("a peer answered with another archive's manifest")]
    OtherArchive,
    #[error("a peer sent a bad manifest: {0}")]
    BadManifest(String),
}

fn joined(why: &[PeerProblem]) -> String {
    why.iter().map(|w| w.to_string()).collect::<Vec<_>>().join("; ")
}

fn holders_note(holders: &[String]) -> String {
    if holders.is_empty() {
        String::new()
    } else {
        format!(" (holders: {})", holders.join(", "))
    }
}

/// Where an archive will be read from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Place {
    /// This node keeps it.
    Local,
    /// These peers (ids) may keep it, best first: the first `holders` keep
    /// it as far as the mesh knows (the one that sent its manifest first);
    /// the rest are live peers that may have a copy it has not heard of.
    Remote { peers: Vec<String>, holders: usize },
}

/// The one peer the mesh knows by `name`, if exactly one claims it (up or
/// not): who may bind that name to its key (see `Store::check_origin`).
pub fn claimant<'a>(peers: &'a [PeerView], name: &str) -> Option<&'a str> {
    let mut it = peers.iter().filter(|p| p.name == name);
    match (it.next(), it.next()) {
        (Some(p), None) => Some(&p.peer_id),
        _ => None,
    }
}

/// Finds archive `archive` (the newest when `None`) of (node, path): here if
/// this node keeps it, else on the live peers the catalog names as holders,
/// read under `order` (the operator's order to restore or fetch it, when
/// this node is neither the series' node nor a holder: `by_order`). Answers its
/// manifest and where to read it.
#[allow(clippy::too_many_arguments)]
pub async fn locate(
    store: &Arc<Store>,
    net: &NetClient,
    catalog: &[CatalogArchive],
    peers: &[PeerView],
    node: &str,
    path: &str,
    archive: Option<&str>,
    by_order: Option<&SignedOrder>,
) -> Result<(Manifest, Place), ReadError> {
    let wanted: Option<&CatalogArchive> = match archive {
        Some(id) => catalog.iter().find(|a| a.id == id),
        None => catalog.first(),
    };
    let id = match (archive, wanted) {
        (Some(id), _) => id.to_string(),
        (None, Some(a)) => a.id.clone(),
        (None, None) => {
            // The log knows nothing yet (a node that just joined): what is here.
            let s = store.clone();
            let (n, p) = (node.to_string(), path.to_string());
            match tokio::task::spawn_blocking(move || s.latest(&n, &p)).await {
                Ok(Ok(Some(latest))) => latest.id,
                _ => return Err(ReadError::Unknown { node: node.into(), path: path.into() }),
            }
        }
    };
    let local = {
        let s = store.clone();
        let (n, p, i) = (node.to_string(), path.to_string(), id.clone());
        tokio::task::spawn_blocking(move || s.has_archive(&n, &p, &i).then(|| s.manifest(&n, &p, Some(&i))))
            .await
            .map_err(|e| ReadError::Crashed(e.to_string()))?
    };
    if let Some(Ok(m)) = local {
        return Ok((m, Place::Local));
    }
    let holders: Vec<&PeerView> = match wanted {
        Some(a) => peers.iter().filter(|p| p.up && a.holders.contains(&p.name)).collect(),
        None => Vec::new(),
    };
    // Holders first; any other live peer may still keep a copy the log has not told us of.
    let mut order: Vec<String> = holders.iter().map(|p| p.peer_id.clone()).collect();
    let others: Vec<String> =
        peers.iter().filter(|p| p.up && !order.contains(&p.peer_id)).map(|p| p.peer_id.clone()).collect();
    order.extend(others);
    let mut why = Vec::new();
    let req = XferRequest::get_manifest(node, path, Some(&id), by_order)?;
    for peer in &order {
        match xfer(net, peer, req.clone()).await {
            Ok(XferResponse::Manifest { manifest }) => match Manifest::decode_from_peer(&manifest) {
                Ok(m) if m.id == id && m.node == node && m.path == path => {
                    // Only the series' own node's seal is trusted: a peer
                    // with the swarm key cannot serve an impostor.
                    if let Err(e) = store.check_origin(&m, claimant(peers, node)) {
                        tracing::warn!("peer {peer} served a manifest that is not {node}'s: {e}");
                        why.push(PeerProblem::NotTheOrigins { node: node.into(), why: e.to_string() });
                        continue;
                    }
                    let mut rest: Vec<String> = order.iter().filter(|p| *p != peer).cloned().collect();
                    rest.insert(0, peer.clone());
                    // The peer that sent it keeps it, whether the mesh said so or not.
                    let holders = (holders.len() + usize::from(!holders.iter().any(|h| h.peer_id == *peer))).max(1);
                    return Ok((m, Place::Remote { peers: rest, holders }));
                }
                Ok(_) => why.push(PeerProblem::OtherArchive),
                Err(e) => why.push(PeerProblem::BadManifest(e.to_string())),
            },
            Ok(XferResponse::Refused { reason }) => why.push(PeerProblem::Refused(reason)),
            Ok(other) => why.push(PeerProblem::Unexpected(format!("{other:?}"))),
            Err(e) => why.push(e.into()),
        }
    }
    let (node, path) = (node.to_string(), path.to_string());
    if holders.is_empty() {
        let holders = wanted.map(|a| a.holders.iter().cloned().collect()).unwrap_or_default();
        return Err(ReadError::NoHolderUp { id, node, path, holders });
    }
    Err(ReadError::NoCopy { id, node, path, why })
}

/// Reads `digests` (at most [`XFER_BATCH`] bytes of members of the
/// archive `of` names) from `place`, each checked against its digest.
pub async fn read_members(
    store: &Arc<Store>,
    net: &NetClient,
    place: &Place,
    of: &ReadOf,
    digests: Vec<Digest>,
) -> Result<Vec<(Digest, Vec<u8>)>, ReadError> {
    match place {
        Place::Local => {
            let s = store.clone();
            tokio::task::spawn_blocking(move || {
                digests
                    .iter()
                    .map(|d| s.read_member_checked(d).map(|b| (*d, b)).map_err(|e| ReadError::Local(e.to_string())))
                    .collect::<Result<Vec<_>, _>>()
            })
            .await
            .map_err(|e| ReadError::Crashed(e.to_string()))?
        }
        Place::Remote { peers, .. } => {
            let mut why = Vec::new();
            for peer in peers {
                let get = XferRequest::Get { digests: digests.clone(), of: of.clone() };
                match members_in(xfer(net, peer, get).await, &digests) {
                    Ok(v) => return Ok(v),
                    Err(e) => why.push(e),
                }
            }
            Err(ReadError::NoMembers(why))
        }
    }
}

/// The members in a peer's answer to `Get { asked }`, checked, or why not.
fn members_in(
    answer: Result<XferResponse, RequestError>,
    asked: &[Digest],
) -> Result<Vec<(Digest, Vec<u8>)>, PeerProblem> {
    match answer? {
        XferResponse::Members { members } => checked(members, asked),
        XferResponse::Refused { reason } => Err(PeerProblem::Refused(reason)),
        other => Err(PeerProblem::Unexpected(format!("{other:?}"))),
    }
}

/// The members as sent, checked to be exactly the ones asked for.
pub fn checked(members: Vec<WireMember>, asked: &[Digest]) -> Result<Vec<(Digest, Vec<u8>)>, PeerProblem> {
    if members.len() != asked.len() {
        return Err(PeerProblem::Count { asked: asked.len(), got: members.len() });
    }
    let mut out = Vec::with_capacity(members.len());
    for (m, want) in members.into_iter().zip(asked) {
        let actual = Digest::of(&m.data);
        if m.digest != *want || actual != *want {
            return Err(PeerProblem::Damaged { want: *want, actual });
        }
        out.push((m.digest, m.data.into_vec()));
    }
    Ok(out)
}

/// Splits members into batches of at most [`XFER_BATCH`] bytes (a larger
/// member travels alone).
pub fn batches(objects: impl IntoIterator<Item = ObjRef>) -> Vec<Vec<Digest>> {
    let mut out: Vec<Vec<Digest>> = Vec::new();
    let mut size = 0u64;
    let mut seen = std::collections::HashSet::new();
    for o in objects {
        if !seen.insert(o.cid) {
            continue;
        }
        if out.is_empty() || size + o.len > XFER_BATCH as u64 && size > 0 {
            out.push(Vec::new());
            size = 0;
        }
        size += o.len;
        if let Some(last) = out.last_mut() {
            last.push(o.cid);
        }
    }
    out
}

/// Members read from peers, for a restore running in blocking threads.
/// A miss fetches the next ~4 MiB of members in archive order in one
/// request (the restorer asks in that order), so a restore does not pay a
/// round trip per member; members leave the cache once read.
pub struct RemoteSource {
    net: NetClient,
    peers: Vec<String>,
    /// The archive read, and the order that entitles this node to it.
    of: ReadOf,
    /// Members in archive order, and where each digest stands in it.
    order: Vec<MemberRef>,
    index: HashMap<Digest, Vec<usize>>,
    /// When only some members will be read: those (no other is read ahead).
    only: std::sync::OnceLock<HashSet<Digest>>,
    state: Mutex<Cache>,
    ready: Condvar,
    /// The first `holders` peers keep the archive: each batch goes first
    /// to the next of them (`turn` counts the batches), so the restore's
    /// readers draw from every holder at once; the other peers are asked
    /// only when no holder answers.
    holders: usize,
    turn: std::sync::atomic::AtomicUsize,
    /// Bytes each peer sent.
    sent: Mutex<HashMap<String, u64>>,
}

/// The order in which batch `turn` asks `n` peers of which the first
/// `holders` keep the archive: the holders from holder `turn % holders`
/// round, so that successive batches start at successive holders, then
/// the other peers in their order.
pub fn peer_turn(n: usize, holders: usize, turn: usize) -> impl Iterator<Item = usize> {
    let h = holders.min(n);
    (0..h).map(move |k| (turn + k) % h).chain(h..n)
}

#[derive(Default)]
struct Cache {
    got: HashMap<Digest, Vec<u8>>,
    /// Being fetched by some thread now.
    pending: HashSet<Digest>,
    /// Reads so far of each digest: the next read is its next occurrence.
    reads: HashMap<Digest, usize>,
}

impl RemoteSource {
    /// Reads `members` of the archive `of` names from `peers`, of which
    /// the first `holders` keep it.
    pub fn new(net: NetClient, (peers, holders): (Vec<String>, usize), of: ReadOf, members: &[MemberRef]) -> Self {
        let mut index = HashMap::new();
        for (i, m) in members.iter().enumerate() {
            index.entry(m.sha256).or_insert_with(Vec::new).push(i);
        }
        RemoteSource {
            net,
            peers,
            of,
            order: members.to_vec(),
            index,
            only: std::sync::OnceLock::new(),
            state: Mutex::default(),
            ready: Condvar::new(),
            holders,
            turn: std::sync::atomic::AtomicUsize::new(0),
            sent: Mutex::default(),
        }
    }

    fn fetch(&self, digests: &[Digest]) -> Result<Vec<(Digest, Vec<u8>)>, ReadError> {
        let mut why = Vec::new();
        let turn = self.turn.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        for i in peer_turn(self.peers.len(), self.holders, turn) {
            let peer = &self.peers[i];
            let get = XferRequest::Get { digests: digests.to_vec(), of: self.of.clone() };
            match members_in(xfer_blocking(&self.net, peer, get), digests) {
                Ok(v) => {
                    let bytes: u64 = v.iter().map(|(_, b)| b.len() as u64).sum();
                    *self.sent.lock().unwrap_or_else(|e| e.into_inner()).entry(peer.clone()).or_default() += bytes;
                    return Ok(v);
                }
                Err(e) => why.push(e),
            }
        }
        Err(ReadError::NoMembers(why))
    }

    /// Bytes each peer sent so far (peer id → bytes), largest first.
    pub fn sent_by(&self) -> Vec<(String, u64)> {
        let mut v: Vec<_> = self.sent.lock().unwrap_or_else(|e| e.into_inner()).clone().into_iter().collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        v
    }
}

impl MemberSource for RemoteSource {
    fn expect(&self, members: &[MemberRef]) {
        let _ = self.only.set(members.iter().map(|m| m.sha256).collect());
    }

    fn read_member(&self, member: &MemberRef) -> io::Result<Vec<u8>> {
        let d = member.sha256;
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(data) = st.got.remove(&d) {
                *st.reads.entry(d).or_default() += 1;
                return Ok(data);
            }
            if !st.pending.contains(&d) {
                break;
            }
            st = self.ready.wait(st).unwrap_or_else(|e| e.into_inner());
        }
        // Fetch this member and those after it that nobody has or is fetching.
        let occurrence = st.reads.get(&d).copied().unwrap_or(0);
        // An object not in the list (a sealed archive's file table, say) comes alone.
        let start = self.index.get(&d).and_then(|at| at.get(occurrence).or(at.last())).copied();
        let mut batch = vec![d];
        let mut size = member.compressed_len;
        let after = start.map_or(self.order.len(), |s| s + 1);
        for m in self.order.iter().skip(after) {
            if size + m.compressed_len > XFER_BATCH as u64 || batch.len() >= 512 {
                break;
            }
            if self.only.get().is_some_and(|only| !only.contains(&m.sha256)) {
                continue;
            }
            if m.sha256 == d
                || batch.contains(&m.sha256)
                || st.got.contains_key(&m.sha256)
                || st.pending.contains(&m.sha256)
            {
                continue;
            }
            size += m.compressed_len;
            batch.push(m.sha256);
        }
        st.pending.extend(batch.iter().copied());
        drop(st);
        let fetched = self.fetch(&batch);
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        for b in &batch {
            st.pending.remove(b);
        }
        let result = match fetched {
            Ok(members) => {
                let mut mine = None;
                *st.reads.entry(d).or_default() += 1;
                for (digest, data) in members {
                    if digest == d && mine.is_none() {
                        mine = Some(data);
                    } else {
                        st.got.insert(digest, data);
                    }
                }
                mine.ok_or_else(|| io::Error::other(format!("member {d} was not sent")))
            }
            Err(e) => Err(io::Error::other(e)),
        };
        drop(st);
        self.ready.notify_all();
        result
    }
}

impl crate::error::Transient for PeerProblem {
    fn retry(&self) -> crate::error::Retry {
        match self {
            PeerProblem::Request(e) => e.retry(),
            // Another holder may have it whole; this one may be mended.
            PeerProblem::Refused(_) | PeerProblem::Count { .. } | PeerProblem::Damaged { .. } => {
                crate::error::Retry::Later
            }
            PeerProblem::Unexpected(_)
            | PeerProblem::NotTheOrigins { .. }
            | PeerProblem::OtherArchive
            | PeerProblem::BadManifest(_) => crate::error::Retry::Never,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn successive_batches_start_at_successive_holders_and_fall_back_on_all() {
        let orders: Vec<Vec<usize>> = (0..4).map(|t| peer_turn(3, 3, t).collect()).collect();
        assert_eq!(orders, [vec![0, 1, 2], vec![1, 2, 0], vec![2, 0, 1], vec![0, 1, 2]]);
        // Two holders of five live peers: the others are asked last, in order.
        let orders: Vec<Vec<usize>> = (0..3).map(|t| peer_turn(5, 2, t).collect()).collect();
        assert_eq!(orders, [vec![0, 1, 2, 3, 4], vec![1, 0, 2, 3, 4], vec![0, 1, 2, 3, 4]]);
        assert_eq!(peer_turn(0, 5, 1).count(), 0);
        assert_eq!(peer_turn(2, 0, 1).collect::<Vec<_>>(), [0, 1]);
    }

    fn m(i: u8, len: u64) -> ObjRef {
        ObjRef { cid: Digest::of(&[i]), len }
    }

    #[test]
    fn batches_respect_the_limit_and_skip_repeats() {
        let big = XFER_BATCH as u64;
        let ms = [m(1, big / 2), m(2, big / 2), m(3, 10), m(1, big / 2), m(4, big * 2), m(5, 1)];
        let b = batches(ms);
        assert_eq!(b.iter().map(|v| v.len()).collect::<Vec<_>>(), vec![2, 1, 1, 1]);
        assert_eq!(b.concat().len(), 5);
    }

    #[test]
    fn checked_refuses_damage_and_substitution() {
        let good = WireMember { digest: Digest::of(b"a"), data: b"a".to_vec().into() };
        assert!(checked(vec![good.clone()], &[Digest::of(b"a")]).is_ok());
        let bad = WireMember { digest: Digest::of(b"a"), data: b"b".to_vec().into() };
        assert!(matches!(checked(vec![bad], &[Digest::of(b"a")]), Err(PeerProblem::Damaged { .. })));
        assert!(checked(vec![good], &[Digest::of(b"c")]).is_err());
        assert!(checked(vec![], &[Digest::of(b"c")]).is_err());
    }
}
