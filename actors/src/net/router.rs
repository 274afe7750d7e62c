//! [`Router`]: hands each request the network hears to the handler its
//! area registered for that protocol, each gossiped message to the
//! handler of its topic, and what is heard of peers to the membership
//! actor (as iroh's `Router` takes one handler per protocol). The node
//! builds one at start-up; the transport never names the handlers.

use std::collections::HashMap;

use actix::Addr;
use tokio::sync::mpsc;

use super::actor::{Incompatible, Limited, MembershipActor, NetEvent};
use super::client::Inbound;
use super::rpc::{InboundRequest, Protocol};

/// A gossiped message, for the handler of its topic.
#[derive(Debug)]
pub struct Gossip {
    /// The peer that relayed it (not its writer: what is gossiped is signed).
    pub from: String,
    /// Its id, for [`super::client::NetClient::report_gossip`].
    pub id: Vec<u8>,
    pub data: Vec<u8>,
}

/// The operator retired node `node` (as of `at_ms`, when the order was
/// signed): it disappears from the views, and its series' holders collect
/// them once the grace period has passed. Sender: the router.
#[derive(Clone, Debug, actix::Message)]
#[rtype(result = "()")]
pub struct Retired {
    pub node: String,
    pub at_ms: i64,
}

/// The operator bound node name `node` to identity `peer` from `at_ms`
/// on, in place of `former`: archives `former` sealed before then stay
/// that node's. Sender: the router.
#[derive(Clone, Debug, actix::Message)]
#[rtype(result = "()")]
pub struct Rebound {
    pub node: String,
    pub peer: String,
    pub former: String,
    pub at_ms: i64,
}

type Serve = Box<dyn Fn(InboundRequest)>;
type Hear = Box<dyn Fn(Gossip)>;

/// Protocol names → handlers, topics → handlers.
pub struct Router {
    membership: Addr<MembershipActor>,
    /// Who is told of a node retired (its views, its series' holders).
    retirements: Vec<actix::Recipient<Retired>>,
    /// Who is told of a node bound again (the store's binding).
    rebinds: Vec<actix::Recipient<Rebound>>,
    requests: HashMap<&'static str, Serve>,
    topics: HashMap<String, Hear>,
}

impl Router {
    /// A router that tells `membership` what it hears of peers.
    pub fn new(membership: Addr<MembershipActor>) -> Self {
        Router {
            membership,
            retirements: Vec::new(),
            rebinds: Vec::new(),
            requests: HashMap::new(),
            topics: HashMap::new(),
        }
    }

    /// Retirements of nodes go to `to` too.
    pub fn on_retired(mut self, to: actix::Recipient<Retired>) -> Self {
        self.retirements.push(to);
        self
    }

    /// Rebinds of node names go to `to` too.
    pub fn on_rebound(mut self, to: actix::Recipient<Rebound>) -> Self {
        self.rebinds.push(to);
        self
    }

    /// Requests of `protocol` go to `handler`.
    pub fn accept(mut self, protocol: &Protocol, handler: impl Fn(InboundRequest) + 'static) -> Self {
        self.requests.insert(protocol.name, Box::new(handler));
        self
    }

    /// Messages gossiped on `topic` go to `handler`.
    pub fn hear(mut self, topic: &str, handler: impl Fn(Gossip) + 'static) -> Self {
        self.topics.insert(topic.to_string(), Box::new(handler));
        self
    }

    /// Routes what `inbound` brings until the network loop stops.
    pub async fn run(self, mut inbound: mpsc::Receiver<Inbound>) {
        while let Some(event) = inbound.recv().await {
            self.route(event);
        }
    }

    fn route(&self, event: Inbound) {
        match event {
            Inbound::Seen { peer } => self.membership.do_send(NetEvent::Seen { peer }),
            Inbound::Hello { peer, info } => self.membership.do_send(NetEvent::Hello { peer, info }),
            Inbound::Limited { peer, what } => self.membership.do_send(Limited { peer, what }),
            Inbound::Incompatible { peer, what } => self.membership.do_send(Incompatible { peer, what }),
            Inbound::Revoked { peer, node, retired_ms } => {
                if let Some(at_ms) = retired_ms {
                    for to in &self.retirements {
                        to.do_send(Retired { node: node.clone(), at_ms });
                    }
                }
                self.membership.do_send(super::actor::Revoked { peer, node })
            }
            Inbound::Rebound { node, peer, former, at_ms } => {
                for to in &self.rebinds {
                    to.do_send(Rebound { node: node.clone(), peer: peer.clone(), former: former.clone(), at_ms });
                }
            }
            Inbound::Gossip { topic, from, id, data } => match self.topics.get(&topic) {
                Some(hear) => hear(Gossip { from, id, data }),
                None => tracing::debug!("gossip on {topic}, which no area hears"),
            },
            Inbound::Request(request) => match self.requests.get(request.protocol) {
                Some(serve) => serve(request),
                None => {
                    let reason = format!("this node serves no {} requests", request.protocol);
                    request.reply.refuse(reason);
                }
            },
        }
    }
}
