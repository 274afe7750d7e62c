//! Verifying the copies this node keeps: every member re-hashed, damage
//! repaired from another holder (or from the bucket).

use std::collections::HashSet;
use std::sync::Arc;

use actix::prelude::*;

use super::proto::ReadOf;
use super::source::{read_members, Place};
use crate::hash::Digest;
use crate::log::actor::{GetCatalog, LogActor};
use crate::log::entry::Event;
use crate::net::actor::{GetPeers, MembershipActor};
use crate::net::client::NetClient;
use crate::net::membership::PeerView;
use crate::store::Store;

/// Re-hashes every member of this node's copies of (node, path) and
/// replaces damaged or missing ones from another holder.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn verify_series(
    store: &Arc<Store>,
    net: &NetClient,
    log: &Addr<LogActor>,
    membership: &Addr<MembershipActor>,
    me: &str,
    node: &str,
    path: &str,
    ids: &[String],
    request: &str,
) -> Vec<Event> {
    let (s, n, p, list) = (store.clone(), node.to_string(), path.to_string(), ids.to_vec());
    let failed = |error: String| Event::VerifyFailed {
        node: node.into(),
        path: path.into(),
        holder: me.into(),
        error,
        request: Some(request.into()),
    };
    // (archive id, members, bad digests) for each archive whose manifest
    // reads, and why each other one does not.
    let checked = tokio::task::spawn_blocking(move || {
        let mut unreadable = Vec::new();
        let checked = list
            .iter()
            .filter_map(|id| match s.manifest(&n, &p, Some(id)) {
                Ok(m) => {
                    let r = s.verify(&m);
                    let bad: Vec<Digest> = r.damaged.iter().chain(&r.missing).copied().collect();
                    Some((id.clone(), r.members as u64, bad))
                }
                Err(e) => {
                    tracing::warn!("verify: cannot read the manifest of {id}: {e}");
                    unreadable.push(format!("cannot read the manifest of archive {id}: {e}"));
                    None
                }
            })
            .collect::<Vec<_>>();
        (checked, unreadable)
    })
    .await;
    // A check that crashed checked nothing: it is a failure, never an empty success.
    let (checked, unreadable) = match checked {
        Ok(c) => c,
        Err(e) => return vec![failed(format!("the check of this holder's copies crashed: {e}"))],
    };
    let members: u64 = checked.iter().map(|(_, n, _)| n).sum();
    let bad: HashSet<Digest> = checked.iter().flat_map(|(_, _, b)| b.iter().copied()).collect();
    let mut repaired: HashSet<Digest> = HashSet::new();
    let mut events = Vec::new();
    if !bad.is_empty() {
        let catalog = log.send(GetCatalog { node: node.into(), path: path.into() }).await.unwrap_or_default();
        let peers = membership.send(GetPeers).await.map(|(_, p)| p).unwrap_or_default();
        // Other live nodes that keep this series, holders first.
        let holders: HashSet<&String> = catalog.iter().flat_map(|a| a.holders.iter()).collect();
        let mut sources: Vec<&PeerView> = peers.iter().filter(|p| p.up && p.name != me).collect();
        sources.sort_by_key(|p| !holders.contains(&p.name));
        let kept = sources.iter().filter(|p| holders.contains(&p.name)).count();
        let place = Place::Remote { peers: sources.iter().map(|p| p.peer_id.clone()).collect(), holders: kept };
        for d in &bad {
            // Read as a member of an archive of the series it is in (a holder reads without an order).
            let Some(Ok(of)) =
                checked.iter().find(|(_, _, b)| b.contains(d)).map(|(id, _, _)| ReadOf::named(node, path, id, None))
            else {
                continue;
            };
            match read_members(store, net, &place, &of, vec![*d]).await {
                Ok(mut got) => {
                    let (s, data) = (store.clone(), got.remove(0).1);
                    let d2 = *d;
                    match tokio::task::spawn_blocking(move || s.repair_member(&d2, &data)).await {
                        Ok(Ok(())) => {
                            repaired.insert(*d);
                        }
                        Ok(Err(e)) => tracing::warn!("verify: cannot replace member {d}: {e}"),
                        Err(e) => tracing::warn!("verify: {e}"),
                    }
                }
                Err(e) => tracing::warn!("verify: member {d} of {path} on {node} cannot be repaired: {e}"),
            }
        }
        for (id, _, b) in &checked {
            if !b.is_empty() && b.iter().all(|d| repaired.contains(d)) {
                events.push(Event::Repaired {
                    node: node.into(),
                    path: path.into(),
                    archive: id.clone(),
                    holder: me.into(),
                });
            }
        }
    }
    if !unreadable.is_empty() {
        events.insert(0, failed(unreadable.join("; ")));
        return events;
    }
    events.insert(
        0,
        Event::Verified {
            node: node.into(),
            path: path.into(),
            holder: me.into(),
            archives: ids.len() as u64,
            members,
            damaged: bad.len() as u64,
            repaired: repaired.len() as u64,
            ok: bad.len() == repaired.len(),
            request: Some(request.into()),
        },
    );
    events
}
