//! Requests and answers for named protocols, carried as bytes.
//!
//! The transport knows no application message: an area declares its
//! [`Protocol`] (a name, the largest request and answer it takes, how long
//! an answer may take), gives it to the network at start-up, and handles
//! the bytes itself (typically CBOR through [`crate::codec`]). Every
//! request protocol travels on one libp2p stream protocol, [`RPC`], so
//! that the bounds on streams and requests in flight are kept once for all
//! of them.
//!
//! # Frames
//! One request and its answer per stream:
//!
//! ```text
//! request:  len:u8  name:len bytes (UTF-8)  body (to the end of the stream)
//! answer:   0x00  body                      the handler's answer
//!           0x01  reason (UTF-8)            refused by the transport: over a
//!                                           bound, or a protocol not spoken here
//! ```
//!
//! A request's body is read no further than its protocol's
//! `max_request`, an answer's no further than the `max_response` of the
//! protocol asked (the codec of one stream remembers what it wrote), a
//! refusal's no further than [`MAX_REASON`]. A request naming a protocol
//! this node does not speak is answered with a refusal, its body unread.

use std::collections::HashMap;
use std::io;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::request_response::ResponseChannel;
use libp2p::StreamProtocol;
use serde::Serialize;
use tokio::sync::mpsc;

/// The libp2p stream protocol the small request protocols travel on.
pub const RPC: StreamProtocol = StreamProtocol::new("/backmesh/rpc/1");
/// The libp2p stream protocol the bulk ones (requests past [`SMALL_REQUEST`]) travel on.
pub const BULK: StreamProtocol = StreamProtocol::new("/backmesh/bulk/1");
/// The largest request of a small protocol. Small and bulk protocols
/// travel on streams of their own, each with its own bound on streams and
/// its own timeout: a peer cannot fill the small streams with bulk bodies,
/// nor a flood of bulk transfers starve the small requests.
pub const SMALL_REQUEST: usize = 1024 * 1024;
/// How much of the body of a request of an unknown protocol is read and
/// dropped, so that its refusal reaches an asker blocked on writing it.
pub const MAX_UNKNOWN_BODY: usize = 1024 * 1024;
/// Longest protocol name.
pub const MAX_NAME: usize = 64;
/// Longest refusal reason read.
pub const MAX_REASON: usize = 4096;

/// A request protocol, as its area declares it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Protocol {
    /// Its name on the wire, with its version (`/backmesh/state/3`):
    /// another version is another protocol.
    pub name: &'static str,
    /// Largest request read, in bytes: what a peer can make this node read.
    pub max_request: usize,
    /// Largest answer read, in bytes: a small question may bring a large answer.
    pub max_response: usize,
    /// How long the asking side waits for an answer.
    pub timeout: Duration,
}

impl Protocol {
    /// Which streams it travels on.
    pub fn lane(&self) -> Lane {
        if self.max_request > SMALL_REQUEST {
            Lane::Bulk
        } else {
            Lane::Small
        }
    }
}

/// The two kinds of streams request protocols travel on ([`RPC`], [`BULK`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Lane {
    Small,
    Bulk,
}

/// The protocols a node speaks, by name; cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct Protocols(Arc<HashMap<&'static str, Protocol>>);

impl Protocols {
    pub fn new(list: impl IntoIterator<Item = Protocol>) -> Self {
        Protocols(Arc::new(list.into_iter().map(|p| (p.name, p)).collect()))
    }

    pub fn get(&self, name: &str) -> Option<&Protocol> {
        self.0.get(name)
    }

    /// The longest answer timeout of them all (the stream's own bound; each
    /// request is held to its protocol's by the network loop).
    pub fn longest_timeout(&self) -> Duration {
        self.0.values().map(|p| p.timeout).max().unwrap_or(Duration::from_secs(10))
    }

    /// Those that travel on `lane`.
    pub fn on(&self, lane: Lane) -> Protocols {
        Protocols::new(self.0.values().filter(|p| p.lane() == lane).copied())
    }
}

/// A request as read off a stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// The protocol it names.
    pub protocol: String,
    pub body: Vec<u8>,
    /// Whether this node speaks `protocol` (if not, `body` was not read).
    pub known: bool,
}

/// What goes back on a request's stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// The handler's answer.
    Body(Vec<u8>),
    /// Refused by the transport, in words (over a bound, a protocol not
    /// spoken here): the handler never saw the request.
    Refused(String),
}

const ANSWER: u8 = 0;
const REFUSED: u8 = 1;

/// Reads a stream to its end, refusing more than `max` bytes.
pub(super) async fn read_limited<T: AsyncRead + Unpin>(io: &mut T, max: usize) -> io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    io.take(max as u64 + 1).read_to_end(&mut buf).await?;
    if buf.len() > max {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("message exceeds the {max}-byte limit")));
    }
    Ok(buf)
}

fn invalid(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

/// The codec of [`RPC`] streams. libp2p clones it for each stream, and a
/// stream carries one request: what it wrote tells it how much answer to
/// read.
#[derive(Clone)]
pub struct RpcCodec {
    protocols: Protocols,
    /// The largest answer of the protocol this stream asked.
    asked: Option<usize>,
}

impl RpcCodec {
    pub fn new(protocols: Protocols) -> Self {
        RpcCodec { protocols, asked: None }
    }
}

impl libp2p::request_response::Codec for RpcCodec {
    type Protocol = StreamProtocol;
    type Request = Request;
    type Response = Answer;

    async fn read_request<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<Request> {
        let mut len = [0u8; 1];
        io.read_exact(&mut len).await?;
        let len = usize::from(len[0]);
        if len == 0 || len > MAX_NAME {
            return Err(invalid(format!("a protocol name of {len} bytes")));
        }
        let mut name = vec![0u8; len];
        io.read_exact(&mut name).await?;
        let protocol = String::from_utf8(name).map_err(|_| invalid("a protocol name that is not UTF-8".into()))?;
        let Some(spec) = self.protocols.get(&protocol) else {
            // Read (and drop) a bounded part of the body, so that an asker
            // blocked writing it can read the refusal.
            let _ = futures::io::copy(&mut io.take(MAX_UNKNOWN_BODY as u64), &mut futures::io::sink()).await;
            return Ok(Request { protocol, body: Vec::new(), known: false });
        };
        let body = read_limited(io, spec.max_request).await?;
        Ok(Request { protocol, body, known: true })
    }

    async fn read_response<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<Answer> {
        let mut tag = [0u8; 1];
        io.read_exact(&mut tag).await?;
        match tag[0] {
            ANSWER => {
                let max = self.asked.ok_or_else(|| invalid("an answer to no request".into()))?;
                Ok(Answer::Body(read_limited(io, max).await?))
            }
            REFUSED => {
                let reason = read_limited(io, MAX_REASON).await?;
                Ok(Answer::Refused(String::from_utf8_lossy(&reason).into_owned()))
            }
            other => Err(invalid(format!("an answer of unknown kind {other}"))),
        }
    }

    async fn write_request<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: Request,
    ) -> io::Result<()> {
        let spec = self.protocols.get(&req.protocol).ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, format!("protocol {} is not registered", req.protocol))
        })?;
        self.asked = Some(spec.max_response);
        let name = req.protocol.as_bytes();
        if name.is_empty() || name.len() > MAX_NAME {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "a protocol name of 1 to 64 bytes"));
        }
        io.write_all(&[name.len() as u8]).await?;
        io.write_all(name).await?;
        io.write_all(&req.body).await?;
        io.close().await
    }

    async fn write_response<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        res: Answer,
    ) -> io::Result<()> {
        match res {
            Answer::Body(body) => {
                io.write_all(&[ANSWER]).await?;
                io.write_all(&body).await?;
            }
            Answer::Refused(reason) => {
                io.write_all(&[REFUSED]).await?;
                let bytes = reason.as_bytes();
                io.write_all(&bytes[..bytes.len().min(MAX_REASON)]).await?;
            }
        }
        io.close().await
    }
}

/// An answer on its way back to the network loop.
pub(super) struct Answered {
    pub lane: Lane,
    pub channel: ResponseChannel<Answer>,
    pub answer: Answer,
}

/// Where a handler sends its answer to one request. Answering is not
/// async and never waits: answers travel on their own queue, which the
/// loop drains at once (what bounds the work a peer can ask for is the
/// requests the loop admits, and the actors' own queues). Dropped without
/// an answer, the request fails at the peer (which may ask again).
pub struct Responder {
    pub(super) lane: Lane,
    pub(super) channel: ResponseChannel<Answer>,
    pub(super) tx: mpsc::UnboundedSender<Answered>,
}

impl Responder {
    /// Sends `body` as the answer.
    pub fn answer(self, body: Vec<u8>) {
        let _ = self.tx.send(Answered { lane: self.lane, channel: self.channel, answer: Answer::Body(body) });
    }

    /// Refuses the request in words (no handler takes it).
    pub fn refuse(self, reason: String) {
        let _ = self.tx.send(Answered { lane: self.lane, channel: self.channel, answer: Answer::Refused(reason) });
    }

    /// The answer for a protocol whose answers are `T`.
    pub fn typed<T: Serialize>(self) -> Reply<T> {
        Reply { inner: self, _answer: PhantomData }
    }
}

impl std::fmt::Debug for Responder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Responder")
    }
}

/// A [`Responder`] that takes a protocol's answer type, encoded as CBOR.
#[derive(Debug)]
pub struct Reply<T> {
    inner: Responder,
    _answer: PhantomData<fn(T)>,
}

impl<T: Serialize> Reply<T> {
    pub fn send(self, answer: &T) {
        self.inner.answer(crate::codec::encode(answer));
    }
}

/// A request a peer sent, for the handler of its protocol.
#[derive(Debug)]
pub struct InboundRequest {
    /// The protocol it came on ([`Protocol::name`]).
    pub protocol: &'static str,
    /// The asking peer's id.
    pub peer: String,
    pub body: Vec<u8>,
    pub reply: Responder,
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::executor::block_on;
    use libp2p::request_response::Codec;

    const SMALL: Protocol =
        Protocol { name: "/t/small/1", max_request: 16, max_response: 64, timeout: Duration::from_secs(1) };
    const BIG: Protocol =
        Protocol { name: "/t/big/1", max_request: 1024, max_response: 4096, timeout: Duration::from_secs(9) };

    fn codec() -> RpcCodec {
        RpcCodec::new(Protocols::new([SMALL, BIG]))
    }

    fn written_request(protocol: &str, body: &[u8]) -> Vec<u8> {
        let mut out = futures::io::Cursor::new(Vec::new());
        let req = Request { protocol: protocol.into(), body: body.to_vec(), known: true };
        block_on(codec().write_request(&RPC, &mut out, req)).unwrap();
        out.into_inner()
    }

    #[test]
    fn a_request_frame_is_its_name_then_its_body() {
        let bytes = written_request("/t/small/1", b"hi");
        assert_eq!(bytes, b"\x0a/t/small/1hi");
        let read = block_on(codec().read_request(&RPC, &mut futures::io::Cursor::new(bytes))).unwrap();
        assert_eq!(read, Request { protocol: "/t/small/1".into(), body: b"hi".to_vec(), known: true });
    }

    #[test]
    fn each_protocol_bounds_its_own_requests() {
        let over = written_request("/t/big/1", &[7u8; 17]);
        assert!(block_on(codec().read_request(&RPC, &mut futures::io::Cursor::new(over))).is_ok());
        let mut forged = b"\x0a/t/small/1".to_vec();
        forged.extend_from_slice(&[7u8; 17]);
        let e = block_on(codec().read_request(&RPC, &mut futures::io::Cursor::new(forged))).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
    }

    #[test]
    fn a_protocol_not_spoken_here_is_named_and_its_body_dropped_within_a_bound() {
        let mut bytes = b"\x08/t/new/1".to_vec();
        bytes.extend_from_slice(&vec![0u8; 3 * MAX_UNKNOWN_BODY]);
        let mut cursor = futures::io::Cursor::new(bytes);
        let read = block_on(codec().read_request(&RPC, &mut cursor)).unwrap();
        assert_eq!((read.protocol.as_str(), read.known, read.body.len()), ("/t/new/1", false, 0));
        assert_eq!(cursor.position(), 9 + MAX_UNKNOWN_BODY as u64, "no more than the bound was read");
        for bad in [&b"\x00"[..], b"\x41", b"\x02\xff\xfe"] {
            assert!(block_on(codec().read_request(&RPC, &mut futures::io::Cursor::new(bad.to_vec()))).is_err());
        }
    }

    #[test]
    fn an_answer_is_bounded_by_the_protocol_asked() {
        // A stream that asked the small protocol reads no more than its 64 bytes.
        let mut asker = codec();
        let mut sink = futures::io::Cursor::new(Vec::new());
        let req = Request { protocol: SMALL.name.into(), body: Vec::new(), known: true };
        block_on(asker.write_request(&RPC, &mut sink, req)).unwrap();
        let mut answer = futures::io::Cursor::new(Vec::new());
        block_on(codec().write_response(&RPC, &mut answer, Answer::Body(vec![1u8; 65]))).unwrap();
        let e = block_on(asker.read_response(&RPC, &mut futures::io::Cursor::new(answer.into_inner()))).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        let mut answer = futures::io::Cursor::new(Vec::new());
        block_on(codec().write_response(&RPC, &mut answer, Answer::Body(vec![1u8; 64]))).unwrap();
        let read = block_on(asker.read_response(&RPC, &mut futures::io::Cursor::new(answer.into_inner()))).unwrap();
        assert_eq!(read, Answer::Body(vec![1u8; 64]));
    }

    #[test]
    fn a_refusal_comes_back_in_words() {
        let mut asker = codec();
        let req = Request { protocol: SMALL.name.into(), body: Vec::new(), known: true };
        block_on(asker.write_request(&RPC, &mut futures::io::Cursor::new(Vec::new()), req)).unwrap();
        let mut answer = futures::io::Cursor::new(Vec::new());
        block_on(codec().write_response(&RPC, &mut answer, Answer::Refused("too many".into()))).unwrap();
        let bytes = answer.into_inner();
        assert_eq!(bytes, b"\x01too many");
        let read = block_on(asker.read_response(&RPC, &mut futures::io::Cursor::new(bytes))).unwrap();
        assert_eq!(read, Answer::Refused("too many".into()));
        let e = block_on(asker.read_response(&RPC, &mut futures::io::Cursor::new(b"\x07x".to_vec()))).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
    }

    #[test]
    fn large_requests_travel_apart_from_small_ones() {
        let all = Protocols::new([SMALL, BIG, Protocol { name: "/t/bulk/1", max_request: SMALL_REQUEST + 1, ..BIG }]);
        assert_eq!((SMALL.lane(), BIG.lane()), (Lane::Small, Lane::Small));
        assert!(all.on(Lane::Bulk).get("/t/bulk/1").is_some() && all.on(Lane::Bulk).get("/t/big/1").is_none());
        assert!(all.on(Lane::Small).get("/t/bulk/1").is_none(), "a small stream does not take a bulk body");
    }

    #[test]
    fn a_request_of_an_unregistered_protocol_is_not_sent() {
        let req = Request { protocol: "/t/none/1".into(), body: Vec::new(), known: true };
        let e = block_on(codec().write_request(&RPC, &mut futures::io::Cursor::new(Vec::new()), req)).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
    }
}
