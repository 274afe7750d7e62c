//! The handlers the node registers with its router for the log's
//! protocols: each decodes a request and hands it to the log actor.

use crate::log::history::HistoryQuery;
use crate::log::proto::{HistoryAnswer, StatePull, HISTORY, STATE};
use crate::net::router::Gossip;
use crate::net::rpc::InboundRequest;

use super::messages::{Gossiped, ServeHistory, ServeStatePull};
use super::LogActor;

/// The router's handler of [`STATE`] requests.
pub fn serve_state(log: actix::Addr<LogActor>) -> impl Fn(InboundRequest) {
    move |req| match crate::codec::decode::<StatePull>(&req.body, STATE.max_request) {
        Ok(pull) => log.do_send(ServeStatePull { pull, reply: req.reply.typed() }),
        // Unanswered: the peer's pull fails and it asks again later.
        Err(e) => tracing::debug!("an unreadable state pull from {}: {e}", req.peer),
    }
}

/// The router's handler of [`HISTORY`] requests.
pub fn serve_history(log: actix::Addr<LogActor>) -> impl Fn(InboundRequest) {
    move |req| {
        let reply = req.reply.typed::<HistoryAnswer>();
        match crate::codec::decode::<HistoryQuery>(&req.body, HISTORY.max_request) {
            Ok(query) => log.do_send(ServeHistory { query, reply }),
            Err(e) => reply.send(&HistoryAnswer::Failed { reason: format!("an unreadable question: {e}") }),
        }
    }
}

/// The router's handler of gossip on [`LOG_TOPIC`].
pub fn hear(log: actix::Addr<LogActor>) -> impl Fn(Gossip) {
    move |g| log.do_send(Gossiped { from: g.from, id: g.id, data: g.data })
}
