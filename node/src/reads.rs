//! What the API and the dashboard read from the mesh beyond this node:
//! pages of history from the nodes that keep them, the hidden archives
//! of a series, and the problems of a mesh too small for its settings.

use actix_web::http::StatusCode;
use backmesh_core::log::actor::{GetKeepers, Query};
use backmesh_core::log::history::{HistoryQuery, Page};
use backmesh_core::log::proto::{HistoryAnswer, HISTORY};
use backmesh_core::net::actor::GetStatus;

use crate::http::{error, ApiError, ApiState};

/// The problem to show when the mesh is too small for `--replicas` copies.
pub fn replica_shortfall(nodes: usize, replicas: usize) -> Option<String> {
    let others = nodes.saturating_sub(1);
    (others < replicas).then(|| {
        format!(
            "--replicas is {replicas} but the mesh has {others} other node(s): each backup has {others} cop{} besides its own node's",
            if others == 1 { "y" } else { "ies" }
        )
    })
}

/// How long a keeper may take to answer a page of history.
const HISTORY_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// One page of history, from whichever nodes keep it: the node a query
/// names and the holders of its series (or, unfiltered, every node up),
/// together with what this node holds. The routing is invisible to the
/// caller; a keeper that does not answer is skipped.
pub async fn read_history(state: &ApiState, q: HistoryQuery) -> Result<Page, ApiError> {
    let status = state.membership.send(GetStatus).await?;
    let keepers: Option<std::collections::BTreeSet<String>> = match &q.node {
        Some(node) => Some(state.log.send(GetKeepers { node: node.clone(), path: q.path.clone() }).await?),
        None => None,
    };
    // This node's page and its peers' are read at once: a page costs the
    // slowest of them, not their sum.
    let asked: Vec<_> = status
        .nodes
        .iter()
        .filter(|n| n.up && !n.this_node)
        .filter(|n| keepers.as_ref().is_none_or(|k| k.contains(&n.name)))
        .map(|n| {
            let (net, peer, q) = (state.net.clone(), n.peer_id.clone(), q.clone());
            async move {
                match tokio::time::timeout(HISTORY_WAIT, net.call(&peer, &HISTORY, &q)).await {
                    Ok(Ok(HistoryAnswer::Page(mut page))) => {
                        // Shown only as their origins signed them.
                        let all = page.entries.len();
                        page.entries.retain(|e| e.signed_by_origin());
                        if page.entries.len() < all {
                            tracing::warn!(
                                "{peer} answered a page of history with {} entries their origins did not sign: \
                                 left out",
                                all - page.entries.len()
                            );
                        }
                        Some(page)
                    }
                    _ => None,
                }
            }
        })
        .collect();
    let (mine, theirs) =
        futures::future::join(state.log.send(Query(q.clone())), futures::future::join_all(asked)).await;
    let mine =
        mine?.map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, format!("cannot read this node's history: {e}")))?;
    let mut pages: Vec<Page> = theirs.into_iter().flatten().map(|p| p.older_than(q.before.as_deref())).collect();
    pages.push(mine);
    Ok(Page::combine(pages, q.limit))
}

/// The hidden archives of series (node, path): out of retention, kept for
/// the grace period by the nodes that list them (this one from its store,
/// the others by `List`, which names every archive a node keeps), newest
/// first. `visible`: the ids the catalog shows.
pub async fn hidden_archives(
    state: &ApiState,
    node: &str,
    path: &str,
    visible: &std::collections::HashSet<String>,
) -> Result<Vec<backmesh_api::Archive>, ApiError> {
    use backmesh_core::replica::proto::{xfer, XferRequest, XferResponse};
    let mut found: std::collections::BTreeMap<String, backmesh_api::Archive> = Default::default();
    let (store, n, p) = (state.store.clone(), node.to_string(), path.to_string());
    let here = actix_web::web::block(move || store.list(&n, &p))
        .await
        .map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, format!("the listing crashed: {e}")))?
        .unwrap_or_default();
    for a in here.into_iter().filter(|a| a.hidden) {
        found.insert(
            a.id.clone(),
            backmesh_api::Archive {
                id: a.id,
                created: Some(backmesh_core::clock::rfc3339(a.created_ms)),
                size: a.tgz_len,
                files: a.files,
                warnings: a.warnings,
                holders: vec![state.health.name.clone()],
                ..Default::default()
            },
        );
    }
    let status = state.membership.send(GetStatus).await?;
    let list = XferRequest::list(node, path).map_err(|e| error(StatusCode::BAD_REQUEST, e.to_string()))?;
    let asks = status.nodes.iter().filter(|n| n.up && !n.this_node).map(|n| {
        let (net, list, peer, name) = (state.net.clone(), list.clone(), n.peer_id.clone(), n.name.clone());
        async move { (name, xfer(&net, &peer, list).await) }
    });
    for (name, answer) in futures::future::join_all(asks).await {
        let Ok(XferResponse::Archives { ids }) = answer else { continue };
        for id in ids.into_iter().map(String::from).filter(|id| !visible.contains(id)) {
            let a = found.entry(id.clone()).or_insert_with(|| backmesh_api::Archive { id, ..Default::default() });
            a.holders.push(name.clone());
        }
    }
    Ok(found.into_values().rev().collect())
}
