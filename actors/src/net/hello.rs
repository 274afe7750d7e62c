//! The transport's own protocol, `/backmesh/hello/1`: who a node is (name,
//! site, free space), which mesh protocol it speaks, and whom it knows.
//! Its bytes have not changed since protocol 2, so that nodes of different
//! versions still tell each other (and their operators) why they do not
//! talk.

use std::io;
use std::marker::PhantomData;

use futures::{AsyncRead, AsyncWrite, AsyncWriteExt};
use libp2p::StreamProtocol;
use serde::{de::DeserializeOwned, Deserialize, Serialize};

use super::membership::NodeInfo;
use super::rpc::read_limited;
use crate::codec::{decode, encode};

/// Protocol of the hello exchange (who are you, whom do you know).
pub const HELLO: StreamProtocol = StreamProtocol::new("/backmesh/hello/1");
/// Largest hello accepted, in bytes.
pub const MAX_HELLO: usize = 256 * 1024;

/// Sent by both sides when a connection opens and then periodically.
/// Sender: the network loop of any node. Answered by: the same message
/// from the receiving node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub info: NodeInfo,
    /// Peers the sender knows, with their listen addresses (multiaddrs):
    /// how a node that knows one peer comes to know them all.
    pub peers: Vec<KnownPeer>,
    /// The sender's mesh protocol (`crate::protocols::MESH_PROTOCOL`);
    /// nodes before version 2 did not say it.
    #[serde(default = "protocol_one")]
    pub protocol: u32,
    /// The operator's changes of trust the sender holds (revocations,
    /// operator keys trusted or no longer; [`super::revocations`]): each
    /// node checks and keeps them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trust: Vec<crate::authority::SignedOrder>,
}

fn protocol_one() -> u32 {
    1
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KnownPeer {
    pub peer_id: String,
    pub addrs: Vec<String>,
}

/// A request-response codec for one CBOR request and one response type,
/// each at most `max` bytes.
pub struct CborCodec<Req, Resp> {
    max: usize,
    _types: PhantomData<fn() -> (Req, Resp)>,
}

impl<Req, Resp> CborCodec<Req, Resp> {
    pub fn new(max: usize) -> Self {
        CborCodec { max, _types: PhantomData }
    }
}

impl<Req, Resp> Clone for CborCodec<Req, Resp> {
    fn clone(&self) -> Self {
        CborCodec::new(self.max)
    }
}

impl<Req, Resp> libp2p::request_response::Codec for CborCodec<Req, Resp>
where
    Req: Serialize + DeserializeOwned + Send + 'static,
    Resp: Serialize + DeserializeOwned + Send + 'static,
{
    type Protocol = StreamProtocol;
    type Request = Req;
    type Response = Resp;

    async fn read_request<T: AsyncRead + Unpin + Send>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Req> {
        let bytes = read_limited(io, self.max).await?;
        decode(&bytes, self.max)
    }

    async fn read_response<T: AsyncRead + Unpin + Send>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Resp> {
        let bytes = read_limited(io, self.max).await?;
        decode(&bytes, self.max)
    }

    async fn write_request<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: Req,
    ) -> io::Result<()> {
        io.write_all(&encode(&req)).await?;
        io.close().await
    }

    async fn write_response<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        res: Resp,
    ) -> io::Result<()> {
        io.write_all(&encode(&res)).await?;
        io.close().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello() -> Hello {
        Hello {
            info: NodeInfo {
                name: "n1".into(),
                site: "s".into(),
                free_bytes: 7,
                address: "127.0.0.1:7400".into(),
                version: "0.1.0".into(),
                swarm_key: None,
                recipient: None,
            },
            peers: vec![KnownPeer { peer_id: "12D3Koo".into(), addrs: vec!["/ip4/127.0.0.1/tcp/1".into()] }],
            protocol: 10,
            trust: vec![],
        }
    }

    #[test]
    fn a_hello_from_before_protocol_2_reads_as_protocol_1() {
        #[derive(Serialize)]
        struct OldHello {
            info: NodeInfo,
            peers: Vec<KnownPeer>,
        }
        let h = hello();
        let old = encode(&OldHello { info: h.info, peers: h.peers });
        let read: Hello = decode(&old, MAX_HELLO).unwrap();
        assert_eq!(read.protocol, 1);
    }

    #[test]
    fn round_trip_and_malformed() {
        let h = hello();
        assert_eq!(decode::<Hello>(&encode(&h), MAX_HELLO).unwrap(), h);
        let e = decode::<Hello>(b"\xff\x00garbage", MAX_HELLO).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        let ok = encode(&hello());
        assert!(decode::<Hello>(&ok[..ok.len() / 2], MAX_HELLO).is_err());
    }

    #[test]
    fn the_codec_enforces_the_limit_on_a_stream() {
        use libp2p::request_response::Codec;
        let mut codec: CborCodec<Hello, Hello> = CborCodec::new(64);
        let big = encode(&hello());
        assert!(big.len() > 64);
        let mut reader = futures::io::Cursor::new(big);
        let r = futures::executor::block_on(codec.read_request(&HELLO, &mut reader));
        assert_eq!(r.unwrap_err().kind(), io::ErrorKind::InvalidData);
    }
}
