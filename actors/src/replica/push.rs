//! Pushing archives to holders: the offer, the members the holder lacks
//! (whole or as deltas against members it has), the commit; and the
//! check, before a surplus copy is dropped, that every elected holder
//! really keeps the archives (it must send back a member picked at random).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use futures::StreamExt;

use super::plan::{Handoff, Push};
use super::proto::{xfer, ManifestBase, ReadOf, WireDelta, WireMember, XferRequest, XferResponse, DELTA_RAW_BATCH};
use super::source::batches;
use crate::archive::Manifest;
use crate::hash::Digest;
use crate::net::client::{NetClient, RequestError};
use crate::store::Store;

/// Member batches (of up to 4 MiB) sent to one holder at once.
pub(crate) const PUTS_IN_FLIGHT: usize = 2;

/// Why a push stopped.
#[derive(Debug)]
pub(crate) struct PushFailed {
    pub(crate) reason: String,
    /// The holder refused because the series' node is at its quota there:
    /// that series waits, not every push to that holder.
    pub(crate) over_quota: bool,
}

impl From<String> for PushFailed {
    fn from(reason: String) -> Self {
        PushFailed { reason, over_quota: false }
    }
}

impl From<backmesh_api::names::BadName> for PushFailed {
    fn from(e: backmesh_api::names::BadName) -> Self {
        e.to_string().into()
    }
}

impl From<RequestError> for PushFailed {
    fn from(e: RequestError) -> Self {
        e.to_string().into()
    }
}

/// Whether every elected holder keeps every archive of the handoff. A
/// holder must not only list them: for each, it must send back a member
/// picked here at random (saying costs nothing; a holder that only says
/// it keeps copies would make this node drop the last good ones).
pub(crate) async fn all_confirm(net: &NetClient, store: Arc<Store>, h: &Handoff) -> bool {
    let (st, node, path, ids) = (store, h.node.clone(), h.path.clone(), h.ids.clone());
    let picks = tokio::task::spawn_blocking(move || {
        use std::hash::BuildHasher as _;
        let random = std::collections::hash_map::RandomState::new();
        ids.into_iter()
            .filter_map(|id| {
                let m = st.manifest(&node, &path, Some(&id)).ok()?;
                // Any object: an encrypted archive's keyframes and file table too.
                let objects: Vec<Digest> = m.digests().collect();
                let i = random.hash_one(&id) as usize % objects.len().max(1);
                Some((id, *objects.get(i)?))
            })
            .collect::<HashMap<String, Digest>>()
    })
    .await
    .unwrap_or_default();
    let Ok(list) = XferRequest::list(&h.node, &h.path) else { return false };
    for t in &h.targets {
        let kept: Vec<String> = match xfer(net, t, list.clone()).await {
            Ok(XferResponse::Archives { ids }) => ids.into_iter().map(String::from).collect(),
            _ => return false,
        };
        // An archive older than all the holder keeps was pruned there, not lost.
        let oldest = kept.iter().min();
        if !h.ids.iter().all(|id| kept.contains(id) || oldest.is_some_and(|o| id < o)) {
            return false;
        }
        for id in h.ids.iter().filter(|id| kept.contains(id)) {
            let Some(digest) = picks.get(id).copied() else { return false };
            // Asked as the series' node or a holder: no order.
            let Ok(of) = ReadOf::named(&h.node, &h.path, id, None) else { return false };
            let proof = xfer(net, t, XferRequest::Get { digests: vec![digest], of }).await;
            let shown = match &proof {
                Ok(XferResponse::Members { members }) => {
                    members.iter().any(|m| m.digest == digest && Digest::of(&m.data) == digest)
                }
                _ => false,
            };
            if !shown {
                tracing::warn!(
                    "{t} says it keeps archive {id} of {} on {} but did not send a member of it: this node keeps its copy",
                    h.path,
                    h.node
                );
                return false;
            }
        }
    }
    true
}

/// Sends the archives `push.ids` to its holder: the ids it confirmed, and
/// the first error if one stopped the push.
pub(crate) async fn run_push(net: &NetClient, store: &Arc<Store>, push: &Push) -> (Vec<String>, Option<PushFailed>) {
    let list = match XferRequest::list(&push.node, &push.path) {
        Ok(list) => list,
        Err(e) => return (Vec::new(), Some(e.into())),
    };
    let kept: HashSet<String> = match xfer(net, &push.peer, list).await {
        Ok(XferResponse::Archives { ids }) => ids.into_iter().map(String::from).collect(),
        Ok(XferResponse::Refused { reason }) => return (Vec::new(), Some(reason.into())),
        Ok(other) => return (Vec::new(), Some(format!("unexpected answer {other:?}").into())),
        Err(e) => return (Vec::new(), Some(e.into())),
    };
    let mut confirmed: Vec<String> = push.ids.iter().filter(|id| kept.contains(*id)).cloned().collect();
    // Oldest first: a holder that stops half-way keeps a contiguous history.
    for id in push.ids.iter().rev().filter(|id| !kept.contains(*id)) {
        match send_archive(net, store, push, id).await {
            Ok(()) => confirmed.push(id.clone()),
            Err(e) => return (confirmed, Some(e)),
        }
    }
    (confirmed, None)
}

pub(crate) async fn send_archive(net: &NetClient, store: &Arc<Store>, push: &Push, id: &str) -> Result<(), PushFailed> {
    let manifest = {
        let (s, n, p, i) = (store.clone(), push.node.clone(), push.path.clone(), id.to_string());
        tokio::task::spawn_blocking(move || {
            let mut m = s.manifest(&n, &p, Some(&i))?;
            // An archive this node made before seals existed: sealed now,
            // by the node it is bound to here (this one), or holders refuse it.
            if m.seal.is_none() && s.origin_of(&n)? == Some(s.peer_id()) {
                m.seal_with(s.identity()).map_err(|source| crate::store::StoreError::Manifest {
                    path: s.root().join("identity.key"),
                    source,
                })?;
            }
            Ok::<_, crate::store::StoreError>(m)
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?
    };
    let encoded = serde_bytes::ByteBuf::from(manifest.encode());
    // The manifest goes as a delta against the series' archive before it
    // where the holder keeps that one (it says when it does not).
    let mut delta = {
        let (s, e, m) = (store.clone(), encoded.clone(), manifest.clone());
        tokio::task::spawn_blocking(move || manifest_delta(&s, &m, &e)).await.ok().flatten()
    };
    let mut sent = 0u64;
    let offer = |delta: &Option<(serde_bytes::ByteBuf, ManifestBase)>| match delta {
        Some((literals, base)) => XferRequest::Offer { manifest: literals.clone(), against: Some(base.clone()) },
        None => XferRequest::Offer { manifest: encoded.clone(), against: None },
    };
    let mut answer = xfer(net, &push.peer, offer(&delta)).await?;
    if matches!(answer, XferResponse::WholeManifest) {
        sent += wire_len(&delta, &encoded);
        delta = None;
        answer = xfer(net, &push.peer, offer(&delta)).await?;
    }
    sent += wire_len(&delta, &encoded);
    let mut missing = match answer {
        XferResponse::Want { complete: true, .. } => return Ok(()),
        XferResponse::Want { missing, .. } => missing,
        XferResponse::Refused { reason } => return Err(reason.into()),
        XferResponse::OverQuota { reason } => return Err(PushFailed { reason, over_quota: true }),
        other => return Err(format!("unexpected answer {other:?}").into()),
    };
    // A member the holder collected meanwhile is asked for again: a few rounds at most.
    for round in 0..3 {
        let want: HashSet<Digest> = missing.iter().copied().collect();
        let refs = manifest.objects().filter(|o| want.contains(&o.cid));
        // A few batches in flight: reading, sending and the holder's writing overlap.
        let mut puts = futures::stream::iter(batches(refs))
            .map(|batch| async move {
                // Unchecked here: the holder checks every member before it keeps it
                // (and refuses a damaged one), so hashing twice would only cost CPU.
                // The first round sends deltas where this node knows a base;
                // what did not rebuild on the holder comes back whole.
                // Deltas past what one Put may rebuild go in another Put.
                let s = store.clone();
                let puts = tokio::task::spawn_blocking(move || {
                    let mut puts = vec![(Vec::new(), Vec::new(), 0u64)];
                    for d in batch {
                        let data = s.read_member_unchecked(&d).map_err(|e| PushFailed::from(e.to_string()))?;
                        let delta = (round == 0).then(|| delta_of(&s, &d, data.len())).flatten();
                        let Some((members, deltas, raw)) = puts.last_mut() else { unreachable!() };
                        // What the holder inflates and rebuilds: the base and the member.
                        match delta {
                            Some((delta, base_len)) if *raw + delta.raw_len + base_len <= DELTA_RAW_BATCH => {
                                *raw += delta.raw_len + base_len;
                                deltas.push(delta);
                            }
                            Some((delta, base_len)) => {
                                let raw = delta.raw_len + base_len;
                                puts.push((Vec::new(), vec![delta], raw));
                            }
                            None => members.push(WireMember { digest: d, data: data.into() }),
                        }
                    }
                    Ok::<_, PushFailed>(puts)
                })
                .await
                .map_err(|e| PushFailed::from(e.to_string()))??;
                let mut n = 0u64;
                for (members, deltas, _) in puts {
                    n += members.iter().map(|m| m.data.len() as u64).sum::<u64>()
                        + deltas.iter().map(|d| (d.ops.len() + d.literals.len()) as u64).sum::<u64>();
                    match xfer(net, &push.peer, XferRequest::Put { members, deltas }).await? {
                        XferResponse::Stored => {}
                        XferResponse::Refused { reason } => return Err(PushFailed::from(reason)),
                        other => return Err(PushFailed::from(format!("unexpected answer {other:?}"))),
                    }
                }
                Ok(n)
            })
            .buffer_unordered(PUTS_IN_FLIGHT);
        while let Some(done) = puts.next().await {
            sent += done?;
        }
        let commit = |delta: &Option<(serde_bytes::ByteBuf, ManifestBase)>, sent: u64| match delta {
            Some((literals, base)) => XferRequest::Commit {
                manifest: literals.clone(),
                against: Some(base.clone()),
                sent,
                repair: push.repair,
            },
            None => XferRequest::Commit { manifest: encoded.clone(), against: None, sent, repair: push.repair },
        };
        sent += wire_len(&delta, &encoded);
        let mut answer = xfer(net, &push.peer, commit(&delta, sent)).await?;
        if matches!(answer, XferResponse::WholeManifest) {
            delta = None;
            sent += wire_len(&delta, &encoded);
            answer = xfer(net, &push.peer, commit(&delta, sent)).await?;
        }
        match answer {
            XferResponse::Committed => return Ok(()),
            XferResponse::Want { missing: m, .. } => missing = m,
            XferResponse::Refused { reason } => return Err(reason.into()),
            XferResponse::OverQuota { reason } => return Err(PushFailed { reason, over_quota: true }),
            other => return Err(format!("unexpected answer {other:?}").into()),
        }
    }
    Err(format!("{} still lacks {} member(s) of archive {id} after three rounds", push.name, missing.len()).into())
}

/// Bytes a manifest takes on the wire, whole or as a delta.
pub(crate) fn wire_len(delta: &Option<(serde_bytes::ByteBuf, ManifestBase)>, whole: &[u8]) -> u64 {
    match delta {
        Some((literals, base)) => (literals.len() + base.ops.len()) as u64,
        None => whole.len() as u64,
    }
}

/// `encoded` (the manifest `m`) as a delta against the manifest of the
/// series' archive before it, if this node keeps that one and the delta
/// is well under half the manifest: (the literals, what they are against).
pub(crate) fn manifest_delta(
    store: &Store,
    m: &Manifest,
    encoded: &[u8],
) -> Option<(serde_bytes::ByteBuf, ManifestBase)> {
    let list = store.list(&m.node, &m.path).ok()?;
    let before = list.iter().find(|s| s.id != m.id && s.order() < m.order())?;
    let old = store.manifest_bytes(&m.node, &m.path, &before.id).ok()?;
    let (ops, literals) = crate::archive::delta::make(&old, encoded);
    if (ops.len() + literals.len()) * 2 > encoded.len() {
        return None;
    }
    let base = ManifestBase {
        node: super::proto::name(&m.node).ok()?,
        path: super::proto::series(&m.path).ok()?,
        archive: super::proto::archive(&before.id).ok()?,
        raw_len: encoded.len() as u64,
        sha256: Digest::of(encoded),
        ops: ops.into(),
    };
    Some((literals.into(), base))
}

/// Member `d` (of `len` compressed bytes) as a delta against the member
/// this node made it from much as, and the base's raw length, when that
/// is a good deal smaller and one `Put` may rebuild it; `None`: send it
/// whole.
pub(crate) fn delta_of(store: &Store, d: &Digest, len: usize) -> Option<(WireDelta, u64)> {
    let (base, level) = store.base_of(d)?;
    let new = store.raw_member(d, DELTA_RAW_BATCH).ok()?;
    let old = store.raw_member(&base, DELTA_RAW_BATCH - new.len() as u64).ok()?;
    let (ops, literals) = crate::archive::delta::make(&old, &new);
    if (ops.len() + literals.len()) * 10 > len * 9 {
        return None;
    }
    let delta =
        WireDelta { digest: *d, base, level, raw_len: new.len() as u64, ops: ops.into(), literals: literals.into() };
    Some((delta, old.len() as u64))
}
