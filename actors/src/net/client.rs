//! [`NetClient`]: how the rest of a node talks to the network loop, and
//! [`Inbound`]: what the loop hears for the node to route.
//!
//! Requests go as bytes for a named [`Protocol`]; [`NetClient::call`]
//! encodes a request and decodes its answer as CBOR for areas that want
//! types. Nothing here names an application message.

use std::net::SocketAddr;
use std::time::Duration;

use libp2p::{Multiaddr, PeerId};
use serde::{de::DeserializeOwned, Serialize};
use tokio::sync::{mpsc, oneshot};

use super::membership::NodeInfo;
use super::rpc::{InboundRequest, Protocol};

/// Commands to the network loop. Sender: any holder of a [`NetClient`].
pub(super) enum Command {
    /// Replace what this node says about itself in hellos.
    SetInfo(NodeInfo),
    /// Reply with the addresses the swarm listens on.
    ListenAddrs(oneshot::Sender<Vec<String>>),
    /// Close every connection and stop the loop.
    Shutdown(oneshot::Sender<()>),
    /// Push a message to every peer on `topic` (gossipsub).
    Publish { topic: String, data: Vec<u8> },
    /// What the node made of gossiped message `id` that `from` relayed:
    /// only an accepted one is relayed on.
    Validated { id: Vec<u8>, from: String, verdict: Verdict },
    /// Dial an address; reply with the peer id that answered.
    Dial { addr: Multiaddr, reply: oneshot::Sender<Result<String, RequestError>> },
    /// Send a request of `protocol` to `to`; the answer, and who gave it,
    /// come back on `reply`.
    Request { to: Target, protocol: Protocol, body: Vec<u8>, reply: Pending },
    /// Take in the operator's change of trust `order`; reply what it did, or why not.
    Trust {
        order: crate::authority::SignedOrder,
        reply: oneshot::Sender<Result<super::revocations::Taken, crate::authority::OrderError>>,
    },
}

/// Whom a request goes to.
pub(super) enum Target {
    Peer(PeerId),
    /// `prefer` when it is connected, else any connected peer of this
    /// node's mesh protocol (the loop knows who is connected).
    Any {
        prefer: Option<PeerId>,
    },
}

/// Where the answer to a request goes.
pub(super) type Pending = oneshot::Sender<Result<(String, Vec<u8>), RequestError>>;

/// What the network hears from peers, for the node to route: the loop
/// itself knows nothing of the actors that answer.
#[derive(Debug)]
pub enum Inbound {
    /// A peer answered a ping or sent something.
    Seen { peer: String },
    /// A peer said who it is.
    Hello { peer: String, info: NodeInfo },
    /// A gossiped message as `from` relayed it. It carries no publisher:
    /// what is gossiped is signed by whoever wrote it, and a node relays it
    /// on only once it says so ([`NetClient::report_gossip`]).
    Gossip { topic: String, from: String, id: Vec<u8>, data: Vec<u8> },
    /// A request for the handler of its protocol.
    Request(InboundRequest),
    /// A peer went past one of this node's bounds (connections, requests
    /// in flight) and was refused the excess.
    Limited { peer: String, what: String },
    /// A peer speaks another mesh protocol: none of what it sends is taken
    /// until one of the two is upgraded (`None` once it speaks this one).
    Incompatible { peer: String, what: Option<String> },
    /// The operator revoked `peer` (node `node`): cut off for good; and
    /// retired it as of `retired_ms`, if given.
    Revoked { peer: String, node: String, retired_ms: Option<i64> },
    /// The operator bound node name `node` to identity `peer` from
    /// `at_ms` on, in place of `former` (a rebuilt server).
    Rebound { node: String, peer: String, former: String, at_ms: i64 },
}

/// What a node made of a gossiped message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Good: taken in, and relayed on to the node's other peers.
    Accept,
    /// Forged or out of its writer's authority: dropped, not relayed.
    Reject,
    /// Not for this node (an older version's, unreadable): dropped, not relayed.
    Ignore,
}

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("cannot set up the network: {reason}")]
    Setup { reason: String },
    #[error("cannot listen on {addr}: {reason}")]
    Listen { addr: SocketAddr, reason: String },
    #[error("the network loop has stopped")]
    Stopped,
}

impl crate::error::Transient for NetError {
    fn retry(&self) -> crate::error::Retry {
        match self {
            NetError::Setup { .. } | NetError::Listen { .. } => crate::error::Retry::Never,
            NetError::Stopped => crate::error::Retry::Later,
        }
    }
}

/// Why a request to a peer (or a dial) got no answer.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("`{0}` is not a peer id")]
    BadPeer(String),
    #[error("the node is shutting down")]
    Stopped,
    /// So many requests to that peer wait already that this one was not queued.
    #[error("{waiting} requests to {peer} are waiting already")]
    Backlog { peer: String, waiting: usize },
    /// Sent, and no answer came back (the peer went away or refused the stream).
    #[error("the node did not answer: {0}")]
    NoAnswer(String),
    /// Sent, and no answer came back in time.
    #[error("the node did not answer within {} s", after.as_secs())]
    Timeout { after: Duration },
    /// The peer's transport refused the request before any handler saw it
    /// (too many of this node's requests in flight there, a protocol it
    /// does not speak), in its words.
    #[error("the node refused the request: {0}")]
    Refused(String),
    /// The answer came, and is not what the protocol answers.
    #[error("the node's answer does not read: {0}")]
    Malformed(String),
    /// No connected peer to ask.
    #[error("no peer is connected")]
    NoPeer,
    /// No connection could be made (the words say what to check).
    #[error("{0}")]
    Unreachable(String),
}

impl crate::error::Transient for RequestError {
    fn retry(&self) -> crate::error::Retry {
        match self {
            RequestError::BadPeer(_) | RequestError::Malformed(_) => crate::error::Retry::Never,
            _ => crate::error::Retry::Later,
        }
    }
}

/// A handle on the network loop; cheap to clone.
#[derive(Clone)]
pub struct NetClient {
    pub(super) tx: mpsc::Sender<Command>,
}

fn peer_id(peer: &str) -> Result<PeerId, RequestError> {
    peer.parse().map_err(|_| RequestError::BadPeer(peer.to_string()))
}

fn decoded<A: DeserializeOwned>(protocol: &Protocol, bytes: &[u8]) -> Result<A, RequestError> {
    crate::codec::decode(bytes, protocol.max_response)
        .map_err(|e| RequestError::Malformed(format!("{}: {e}", protocol.name)))
}

impl NetClient {
    pub async fn set_info(&self, info: NodeInfo) -> Result<(), NetError> {
        self.tx.send(Command::SetInfo(info)).await.map_err(|_| NetError::Stopped)
    }

    pub async fn listen_addrs(&self) -> Result<Vec<String>, NetError> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(Command::ListenAddrs(tx)).await.map_err(|_| NetError::Stopped)?;
        rx.await.map_err(|_| NetError::Stopped)
    }

    /// Gossips `data` to every peer on `topic`.
    pub async fn publish(&self, topic: &str, data: Vec<u8>) -> Result<(), NetError> {
        self.tx.send(Command::Publish { topic: topic.into(), data }).await.map_err(|_| NetError::Stopped)
    }

    /// A client of a network that has stopped: every request fails with
    /// [`NetError::Stopped`] (a node's parts before, or without, a network).
    pub fn stopped() -> Self {
        let (tx, _) = mpsc::channel(1);
        NetClient { tx }
    }

    /// Says what the node made of gossiped message `id` that `from` relayed
    /// (a full queue drops the verdict: the message is then not relayed,
    /// and anti-entropy brings it to the peers that miss it).
    pub fn report_gossip(&self, id: Vec<u8>, from: String, verdict: Verdict) {
        let _ = self.tx.try_send(Command::Validated { id, from, verdict });
    }

    /// Whether the network has stopped (or never ran: [`NetClient::stopped`]).
    pub fn is_stopped(&self) -> bool {
        self.tx.is_closed()
    }

    /// Takes in the operator's change of trust `order` (a revocation, or a
    /// change of the operator keys trusted; checked against those this
    /// node trusts), acts on it and says it in hellos from now on;
    /// answers what it did, or why not.
    pub async fn trust(&self, order: crate::authority::SignedOrder) -> Result<super::revocations::Taken, String> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Command::Trust { order, reply }).await.map_err(|_| "the network has stopped".to_string())?;
        rx.await.map_err(|_| "the network has stopped".to_string())?.map_err(|e| e.to_string())
    }

    /// Dials `addr` and answers the peer id of the node there, or why not.
    pub async fn dial(&self, addr: SocketAddr) -> Result<String, RequestError> {
        let (reply, rx) = oneshot::channel();
        let addr = multiaddr_of(addr);
        self.tx.send(Command::Dial { addr, reply }).await.map_err(|_| RequestError::Stopped)?;
        rx.await.map_err(|_| RequestError::Stopped)?
    }

    /// Sends `body` as a request of `protocol` to `peer` and waits for the answer.
    pub async fn request(&self, peer: &str, protocol: &Protocol, body: Vec<u8>) -> Result<Vec<u8>, RequestError> {
        let peer = peer_id(peer)?;
        self.send(Target::Peer(peer), protocol, body).await.map(|(_, answer)| answer)
    }

    /// Sends `body` as a request of `protocol` to `prefer` if it is
    /// connected, else to any connected peer of this node's protocol;
    /// answers who answered, and what.
    pub async fn request_any(
        &self,
        prefer: Option<&str>,
        protocol: &Protocol,
        body: Vec<u8>,
    ) -> Result<(String, Vec<u8>), RequestError> {
        let prefer = prefer.and_then(|p| p.parse::<PeerId>().ok());
        self.send(Target::Any { prefer }, protocol, body).await
    }

    async fn send(&self, to: Target, protocol: &Protocol, body: Vec<u8>) -> Result<(String, Vec<u8>), RequestError> {
        let (reply, rx) = oneshot::channel();
        let cmd = Command::Request { to, protocol: *protocol, body, reply };
        self.tx.send(cmd).await.map_err(|_| RequestError::Stopped)?;
        rx.await.map_err(|_| RequestError::Stopped)?
    }

    /// [`NetClient::request`] for a blocking thread (never the runtime's own).
    pub fn request_blocking(&self, peer: &str, protocol: &Protocol, body: Vec<u8>) -> Result<Vec<u8>, RequestError> {
        let peer = peer_id(peer)?;
        let (reply, rx) = oneshot::channel();
        let cmd = Command::Request { to: Target::Peer(peer), protocol: *protocol, body, reply };
        self.tx.blocking_send(cmd).map_err(|_| RequestError::Stopped)?;
        rx.blocking_recv().map_err(|_| RequestError::Stopped)?.map(|(_, answer)| answer)
    }

    /// [`NetClient::request`] of a CBOR request, with its answer decoded.
    pub async fn call<Q: Serialize, A: DeserializeOwned>(
        &self,
        peer: &str,
        protocol: &Protocol,
        request: &Q,
    ) -> Result<A, RequestError> {
        let answer = self.request(peer, protocol, crate::codec::encode(request)).await?;
        decoded(protocol, &answer)
    }

    /// [`NetClient::request_any`] of a CBOR request, with its answer decoded.
    pub async fn call_any<Q: Serialize, A: DeserializeOwned>(
        &self,
        prefer: Option<&str>,
        protocol: &Protocol,
        request: &Q,
    ) -> Result<(String, A), RequestError> {
        let (from, answer) = self.request_any(prefer, protocol, crate::codec::encode(request)).await?;
        Ok((from, decoded(protocol, &answer)?))
    }

    /// [`NetClient::call`] for a blocking thread (never the runtime's own).
    pub fn call_blocking<Q: Serialize, A: DeserializeOwned>(
        &self,
        peer: &str,
        protocol: &Protocol,
        request: &Q,
    ) -> Result<A, RequestError> {
        let answer = self.request_blocking(peer, protocol, crate::codec::encode(request))?;
        decoded(protocol, &answer)
    }

    /// Closes connections (peers see this node leave) and ends the loop.
    pub async fn shutdown(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Command::Shutdown(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }
}

/// The libp2p address of a TCP socket address.
pub fn multiaddr_of(addr: SocketAddr) -> Multiaddr {
    let ip = match addr.ip() {
        std::net::IpAddr::V4(v4) => libp2p::multiaddr::Protocol::Ip4(v4),
        std::net::IpAddr::V6(v6) => libp2p::multiaddr::Protocol::Ip6(v6),
    };
    Multiaddr::empty().with(ip).with(libp2p::multiaddr::Protocol::Tcp(addr.port()))
}
