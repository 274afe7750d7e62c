//! The operator's orders on the HTTP API: reading one from a request,
//! saying what a request lacks without one, carrying one out here.

use actix_web::http::StatusCode;
use actix_web::HttpRequest;
use backmesh_api::order::ORDER_HEADER;
use backmesh_core::authority::{Act, SignedOrder};

use crate::http::{error, ApiError, ApiState};

/// The operator's order the request carries (`X-Backmesh-Order`), if any.
pub(crate) fn order_of(req: &HttpRequest) -> Result<Option<SignedOrder>, ApiError> {
    match req.headers().get(ORDER_HEADER) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .map(|s| Some(SignedOrder(s.trim().to_string())))
            .map_err(|_| error(StatusCode::BAD_REQUEST, format!("the {ORDER_HEADER} header is not text"))),
    }
}

/// The order that `act`, which concerns node `other`, needs; or the 403
/// that says why this node's token is not enough and how to sign one.
pub(crate) fn needed(
    state: &ApiState,
    order: Option<SignedOrder>,
    act: &Act,
    other: &str,
) -> Result<SignedOrder, ApiError> {
    order.ok_or_else(|| {
        error(
            StatusCode::FORBIDDEN,
            format!(
                "`{}` concerns node {other}: the API token of node {} acts on {} alone, and another node acts \
                 only under the operator's order. Sign the command with the operator key (`backmesh \
                 --operator-key FILE …`, or BACKMESH_OPERATOR_KEY; `backmesh operator init` makes one on the \
                 operator's machine)",
                act.name(),
                state.health.name,
                state.health.name
            ),
        )
    })
}

/// `act` carried out here under the operator's `order` (a restore or a
/// fetch of another node's series): the order is checked and spent here.
pub(crate) fn admit_here(state: &ApiState, order: &SignedOrder, act: &Act) -> Result<(), ApiError> {
    state
        .authority
        .admit(order, act, &state.health.name, backmesh_core::clock::now_ms())
        .map(|_| ())
        .map_err(|e| error(StatusCode::FORBIDDEN, e.to_string()))
}

/// The operator's order to read (node, path[, archive]) through this node
/// (a fetch, or what opening it needs), checked and spent here; `None`
/// for this node's own series, which its token reads.
pub(crate) fn read_order(
    req: &HttpRequest,
    state: &ApiState,
    node: &str,
    path: &str,
    archive: Option<&str>,
) -> Result<Option<SignedOrder>, ApiError> {
    if node == state.health.name {
        return Ok(None);
    }
    let act = Act::Fetch {
        node: node.to_string(),
        path: path.to_string(),
        archive: archive.map(str::to_string),
        by: state.health.name.clone(),
    };
    let order = needed(state, order_of(req)?, &act, node)?;
    admit_here(state, &order, &act)?;
    Ok(Some(order))
}
