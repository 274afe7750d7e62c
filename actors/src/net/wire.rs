//! Wire messages and their codec: CBOR (ciborium, as on disk) with an
//! enforced size limit. A message that is malformed or too large fails
//! that stream with `InvalidData`; libp2p drops the stream, the node logs
//! it and keeps running.

use std::io;
use std::marker::PhantomData;

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::StreamProtocol;
use serde::{de::DeserializeOwned, Deserialize, Serialize};

use super::membership::NodeInfo;
use crate::hash::Digest;
use backmesh_api::names::BadName;
pub use backmesh_api::names::{ArchiveId, NodeName, SeriesPath};

/// Protocol of the hello exchange (who are you, whom do you know).
pub const HELLO: StreamProtocol = StreamProtocol::new("/backmesh/hello/1");
/// Largest hello accepted, in bytes.
pub const MAX_HELLO: usize = 256 * 1024;

/// Protocol of anti-entropy pulls of the mesh state.
pub const STATE: StreamProtocol = StreamProtocol::new("/backmesh/state/2");
/// Largest state or gossip message accepted, in bytes.
pub const MAX_LOG: usize = 4 * 1024 * 1024;
/// Records per pull answer stop once their encoding passes this many bytes.
pub const STATE_BATCH_BYTES: usize = 1024 * 1024;
/// Gossipsub topic on which new log entries are pushed.
pub const LOG_TOPIC: &str = "backmesh/log/1";
/// Version of the mesh protocol (state records, entries, ctl and xfer
/// messages), said in every hello. A peer on another version is refused
/// whole, and named in the log and in status. 4: manifests travel sealed by
/// their origin, and holders refuse unsealed ones. 5: entries are signed
/// by their origin, and every state register by its writer; unsigned ones
/// are left out. 6: a state digest hashes whether each register is
/// sealed, not its signature's bytes (a node keeps those on disk); gossip
/// messages carry no gossipsub signature (the entry's own is checked) and
/// are relayed only once checked. 7: a registration's programs carry the
/// operator's grant (`JobSpec::grant`), and names, paths and archive ids
/// on the wire are checked types. 8: archives are written in manifest
/// formats 3 and 4 (the tree digest over the members), and members and
/// manifests go as deltas. 9: archives are sealed in format 5 (the seal
/// over the manifest's digest), which nodes of 8 cannot read.
pub const MESH_PROTOCOL: u32 = 9;

/// "Here is my state's digest; send me the records of the buckets where
/// yours differs." Sender: the log actor of any node, through the network
/// loop, to a random connected peer every few seconds (and again at once,
/// from `from_bucket`, while the answer says where to go on).
/// Answered by: [`StateBatch`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatePull {
    /// One hash per bucket ([`crate::log::mesh::BUCKETS`]).
    pub digest: crate::log::mesh::StateDigest,
    /// The first bucket to answer (0, or `next_bucket` of the last answer).
    pub from_bucket: u16,
    /// Every differing bucket, also those that changed a moment ago (a
    /// node that just started or is catching up); otherwise only buckets
    /// quiet for a few seconds, whose news gossip should have brought.
    #[serde(default)]
    pub eager: bool,
}

/// The answer to a [`StatePull`]: the records of differing buckets, in
/// bucket order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateBatch {
    pub records: Lenient<(crate::log::mesh::RecordKey, crate::log::mesh::Record)>,
    /// The answer was cut for size: pull again from this bucket.
    pub next_bucket: Option<u16>,
}

/// A sequence whose elements a newer node may have written in forms this
/// version does not know: those are counted and left out, the others
/// kept, rather than the whole message refused. On the wire, a plain
/// sequence.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Lenient<T> {
    pub known: Vec<T>,
    /// Elements that did not decode.
    pub unknown: usize,
}

impl<T> From<Vec<T>> for Lenient<T> {
    fn from(known: Vec<T>) -> Self {
        Lenient { known, unknown: 0 }
    }
}

impl<T: Serialize> Serialize for Lenient<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.known.serialize(s)
    }
}

impl<'de, T: DeserializeOwned> Deserialize<'de> for Lenient<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let all = Vec::<ciborium::Value>::deserialize(d)?;
        let mut out = Lenient { known: Vec::with_capacity(all.len()), unknown: 0 };
        for v in all {
            match v.deserialized::<T>() {
                Ok(t) => out.known.push(t),
                Err(_) => out.unknown += 1,
            }
        }
        Ok(out)
    }
}

/// Protocol of control requests routed to the node they concern.
pub const CTL: StreamProtocol = StreamProtocol::new("/backmesh/ctl/1");
/// Largest control answer accepted, in bytes (a page of history).
pub const MAX_CTL: usize = 4 * 1024 * 1024;
/// Largest control or state-pull request accepted, in bytes.
pub const MAX_CTL_REQUEST: usize = 64 * 1024;

/// A control request. Sender: the HTTP API of any node, through its
/// network loop, to the node a request concerns. Answered by: [`CtlResponse`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CtlRequest {
    /// Can you run a job of `path` with this source (directory, command, plugin)?
    CheckSource {
        path: SeriesPath,
        #[serde(default)]
        every_min: u64,
        #[serde(default)]
        excludes: Vec<String>,
        spec: crate::jobs::plugin::JobSpec,
    },
    /// Back up `path` (a registered job of yours) now; the result's log
    /// entry carries `request`.
    Run {
        path: SeriesPath,
        request: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        grant: Option<Grant>,
    },
    /// How far is the running backup of `path`?
    Progress { path: SeriesPath },
    /// Restore an archive of (node, path) onto your disk, into `to`; the
    /// `restored` log entry carries `request`. Answer: `Accepted` at once.
    Restore {
        node: NodeName,
        path: SeriesPath,
        archive: Option<ArchiveId>,
        to: String,
        overwrite: bool,
        request: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        grant: Option<Grant>,
    },
    /// Re-hash the members you keep (of (node, path), or all), repairing
    /// damage from other holders; `verified` entries carry `request`.
    Verify {
        node: Option<NodeName>,
        path: Option<SeriesPath>,
        request: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        grant: Option<Grant>,
    },
    /// One page of the history you keep. Answer: `History`.
    History(crate::log::history::HistoryQuery),
}

/// The operator's credential on a request that makes another node act
/// (`Run`, `Restore`, `Verify`): HMAC-SHA256, keyed by the asking node's
/// API token, over the name of the node that is to act and the request.
/// That node recomputes it with its own token: only a node whose operator
/// holds the same token can make one, the token itself never travels, and
/// a grant for one node and request is worth nothing for another.
pub type Grant = serde_bytes::ByteBuf;

impl CtlRequest {
    fn grant_mut(&mut self) -> Option<&mut Option<Grant>> {
        match self {
            CtlRequest::Run { grant, .. } | CtlRequest::Restore { grant, .. } | CtlRequest::Verify { grant, .. } => {
                Some(grant)
            }
            _ => None,
        }
    }

    /// The MAC of this request (its grant left out) for node `on`, keyed by `token`.
    fn mac(&self, token: &str, on: &str) -> hmac::Hmac<sha2::Sha256> {
        let mut bare = self.clone();
        if let Some(g) = bare.grant_mut() {
            *g = None;
        }
        operator_mac(token, &encode(&(on, &bare)))
    }

    /// Signs this request for node `on` with the operator's `token` (a
    /// node without a token sends it unsigned).
    pub fn granted(mut self, token: Option<&str>, on: &str) -> Self {
        use hmac::Mac;
        if let Some(t) = token {
            let tag = self.mac(t, on).finalize().into_bytes().to_vec();
            if let Some(g) = self.grant_mut() {
                *g = Some(Grant::from(tag));
            }
        }
        self
    }

    /// Whether node `me`, whose operator set `token`, may act on this
    /// request. A node without a token trusts every node of the mesh; one
    /// with a token acts only on a grant made with the same token, for it.
    pub fn check_grant(&self, token: Option<&str>, me: &str) -> Result<(), GrantError> {
        use hmac::Mac;
        let grant = match self {
            CtlRequest::Run { grant, .. } | CtlRequest::Restore { grant, .. } | CtlRequest::Verify { grant, .. } => {
                grant
            }
            _ => return Ok(()),
        };
        let Some(t) = token else { return Ok(()) };
        let Some(grant) = grant else {
            return Err(GrantError::Missing { me: me.into() });
        };
        self.mac(t, me).verify_slice(grant).map_err(|_| GrantError::Wrong { me: me.into() })
    }
}

/// Why a node does not act on another node's request: its operator's
/// credential is not on it. Permanent until the operators set the same
/// `--token` on both nodes.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum GrantError {
    #[error(
        "node {me} acts for other nodes only with its operator's credential, and the asking node has no \
         API token (give every node the same --token)"
    )]
    Missing { me: String },
    #[error(
        "node {me} refused: the request does not carry its operator's credential (the asking node's \
         --token differs from {me}'s)"
    )]
    Wrong { me: String },
}

impl crate::error::Transient for GrantError {
    fn retry(&self) -> crate::error::Retry {
        crate::error::Retry::Never
    }
}

/// The operator's MAC of `message`: HMAC-SHA256 keyed by a hash of the
/// API token (any length of token makes one key). What grants are made of.
pub fn operator_mac(token: &str, message: &[u8]) -> hmac::Hmac<sha2::Sha256> {
    use hmac::Mac;
    use sha2::Digest as _;
    let key = sha2::Sha256::digest(token.as_bytes());
    #[allow(clippy::expect_used)]
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key).expect("HMAC takes any key length");
    mac.update(message);
    mac
}

/// A running backup's counters.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunProgress {
    pub running: bool,
    pub entries: u64,
    pub bytes_read: u64,
    pub bytes_out: u64,
    pub elapsed_ms: u64,
    /// The request of the run in progress, if it is an on-demand one.
    pub request: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CtlResponse {
    PathOk,
    /// The path cannot be backed up, in words for the operator.
    PathRefused {
        reason: String,
    },
    /// The run is queued under this id.
    Queued {
        id: u64,
    },
    /// Too many runs wait already.
    Busy {
        reason: String,
    },
    Progress(RunProgress),
    /// The work was accepted; its result goes to the log.
    Accepted,
    /// These series (node, path) will be verified; a `verified` entry follows for each.
    Verifying {
        series: Vec<(String, String)>,
    },
    /// A page of history, newest last.
    History(crate::log::history::Page),
    /// The request could not be served, in words.
    Failed {
        reason: String,
    },
}

/// Protocol of archive transfer between nodes (replication, repair, fetch).
pub const XFER: StreamProtocol = StreamProtocol::new("/backmesh/xfer/1");
/// Largest transfer message accepted: a manifest of a large tree, or a batch.
pub const MAX_XFER: usize = 64 * 1024 * 1024;
/// Member bytes per `Put` or `Members` message.
pub const XFER_BATCH: usize = 4 * 1024 * 1024;

/// One member on the wire: its digest and its gzip bytes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireMember {
    pub digest: Digest,
    pub data: serde_bytes::ByteBuf,
}

/// One member on the wire as a delta against a member the receiver holds
/// (see `archive::delta`): the receiver rebuilds the raw bytes, compresses
/// them at `level` and keeps the result only if it is `digest`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireDelta {
    pub digest: Digest,
    pub base: Digest,
    pub level: u32,
    pub raw_len: u64,
    pub ops: serde_bytes::ByteBuf,
    pub literals: serde_bytes::ByteBuf,
}

/// An `Offer`'s or `Commit`'s manifest as a delta against the manifest of
/// an earlier archive of the same series that the receiver keeps: the
/// message's `manifest` then holds the delta's literals. The receiver
/// rebuilds the bytes and checks them against `sha256` before it decodes
/// them (a delta cannot forge a seal, only fail): one that does not hold
/// the base answers `WholeManifest`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestBase {
    pub node: NodeName,
    pub path: SeriesPath,
    pub archive: ArchiveId,
    pub raw_len: u64,
    pub sha256: Digest,
    pub ops: serde_bytes::ByteBuf,
}

/// Raw bytes the deltas of one `Put` may rebuild: a few bytes of delta
/// can stand for many of output, and the receiver compresses them all.
pub const DELTA_RAW_BATCH: u64 = 16 * 1024 * 1024;

/// A transfer request. Senders: the replica actor of an origin or a
/// surviving holder (Offer, Put, Commit, List), and any node reading an
/// archive for a fetch or a restore (List, GetManifest, Get).
/// Answered by: [`XferResponse`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum XferRequest {
    /// "I have this archive for you": the encoded manifest (or a delta of
    /// it: `against`). Answer: `Want`.
    Offer {
        manifest: serde_bytes::ByteBuf,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        against: Option<ManifestBase>,
    },
    /// Members the receiver wanted, at most [`XFER_BATCH`] bytes of them,
    /// whole or as deltas (rebuilding at most [`DELTA_RAW_BATCH`] raw
    /// bytes). Each is checked against its digest before it is kept; a
    /// delta that does not rebuild it is dropped (the commit asks for the
    /// member again). Answer: `Stored`.
    Put {
        members: Vec<WireMember>,
        #[serde(default)]
        deltas: Vec<WireDelta>,
    },
    /// Every wanted member was sent: make the archive visible. `sent` is
    /// the member bytes sent for it; `repair` when the sender is not the
    /// origin. Answer: `Committed`, or `Want` with what is still missing.
    Commit {
        manifest: serde_bytes::ByteBuf,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        against: Option<ManifestBase>,
        sent: u64,
        repair: bool,
    },
    /// Which archives of (node, path) do you keep? Answer: `Archives`.
    List { node: NodeName, path: SeriesPath },
    /// The manifest of an archive (the newest when `archive` is `None`).
    /// Answer: `Manifest`.
    GetManifest { node: NodeName, path: SeriesPath, archive: Option<ArchiveId> },
    /// These members, at most [`XFER_BATCH`] bytes. Answer: `Members`.
    Get { digests: Vec<Digest> },
}

impl XferRequest {
    /// `List` of (node, path), or why they cannot be named on the wire.
    pub fn list(node: &str, path: &str) -> Result<Self, BadName> {
        Ok(XferRequest::List { node: name(node)?, path: series(path)? })
    }

    /// `GetManifest` of archive `archive` (the newest: `None`) of (node, path).
    pub fn get_manifest(node: &str, path: &str, archive: Option<&str>) -> Result<Self, BadName> {
        let archive = archive.map(self::archive).transpose()?;
        Ok(XferRequest::GetManifest { node: name(node)?, path: series(path)?, archive })
    }
}

/// `node` as a [`NodeName`], or why not.
pub fn name(node: &str) -> Result<NodeName, BadName> {
    NodeName::parse(node)
}

/// `id` as an [`ArchiveId`], or why not.
pub fn archive(id: &str) -> Result<ArchiveId, BadName> {
    ArchiveId::parse(id)
}

/// `path` as a [`SeriesPath`], or why not.
pub fn series(path: &str) -> Result<SeriesPath, BadName> {
    SeriesPath::parse(path)
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum XferResponse {
    /// The members the receiver lacks; `complete` when it keeps the archive already.
    Want {
        missing: Vec<Digest>,
        complete: bool,
    },
    Stored,
    Committed,
    Archives {
        ids: Vec<ArchiveId>,
    },
    Manifest {
        manifest: serde_bytes::ByteBuf,
    },
    Members {
        members: Vec<WireMember>,
    },
    /// Cannot or will not, in words (disk full, no such archive, damaged).
    Refused {
        reason: String,
    },
    /// The archive's node is at its quota on this holder (`--quota`), in
    /// words: its other series, and other nodes', are not held back.
    OverQuota {
        reason: String,
    },
    /// The manifest came as a delta against one this node does not keep
    /// (or did not rebuild): send it whole.
    WholeManifest,
}

/// Sent by both sides when a connection opens and then periodically.
/// Sender: the network loop of any node. Answered by: the same message
/// from the receiving node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub info: NodeInfo,
    /// Peers the sender knows, with their listen addresses (multiaddrs):
    /// how a node that knows one peer comes to know them all.
    pub peers: Vec<KnownPeer>,
    /// The sender's [`MESH_PROTOCOL`]; nodes before version 2 did not say it.
    #[serde(default = "protocol_one")]
    pub protocol: u32,
}

fn protocol_one() -> u32 {
    1
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KnownPeer {
    pub peer_id: String,
    pub addrs: Vec<String>,
}

/// Encodes `v` as CBOR.
pub fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    let mut out = Vec::new();
    let _ = ciborium::into_writer(v, &mut out);
    out
}

/// Decodes CBOR, refusing more than `max` bytes.
pub fn decode<T: DeserializeOwned>(bytes: &[u8], max: usize) -> io::Result<T> {
    if bytes.len() > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("message of {} bytes exceeds the {max}-byte limit", bytes.len()),
        ));
    }
    ciborium::from_reader(bytes)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("malformed message: {e}")))
}

async fn read_limited<T: AsyncRead + Unpin>(io: &mut T, max: usize) -> io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    io.take(max as u64 + 1).read_to_end(&mut buf).await?;
    if buf.len() > max {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("message exceeds the {max}-byte limit")));
    }
    Ok(buf)
}

/// A request-response codec for one request and one response type.
pub struct CborCodec<Req, Resp> {
    max_request: usize,
    max: usize,
    _types: PhantomData<fn() -> (Req, Resp)>,
}

impl<Req, Resp> CborCodec<Req, Resp> {
    /// Requests and responses of at most `max` bytes.
    pub fn new(max: usize) -> Self {
        CborCodec::with_limits(max, max)
    }

    /// Requests of at most `max_request` bytes, responses of at most `max`:
    /// a small question may bring a large answer, but a peer cannot make
    /// this node read large questions.
    pub fn with_limits(max_request: usize, max: usize) -> Self {
        CborCodec { max_request, max, _types: PhantomData }
    }
}

impl<Req, Resp> Clone for CborCodec<Req, Resp> {
    fn clone(&self) -> Self {
        CborCodec::with_limits(self.max_request, self.max)
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
        let bytes = read_limited(io, self.max_request).await?;
        decode(&bytes, self.max_request)
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
            },
            peers: vec![KnownPeer { peer_id: "12D3Koo".into(), addrs: vec!["/ip4/127.0.0.1/tcp/1".into()] }],
            protocol: MESH_PROTOCOL,
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
    fn round_trip() {
        let h = hello();
        assert_eq!(decode::<Hello>(&encode(&h), MAX_HELLO).unwrap(), h);
    }

    #[test]
    fn malformed_and_oversize_are_invalid_data() {
        let e = decode::<Hello>(b"\xff\x00garbage", MAX_HELLO).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        let mut big = encode(&hello());
        big.resize(MAX_HELLO + 1, 0);
        let e = decode::<Hello>(&big, MAX_HELLO).unwrap_err();
        assert!(e.to_string().contains("limit"), "{e}");
        // Truncated input of a valid message.
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

    #[test]
    fn a_small_question_may_bring_a_large_answer_but_not_the_reverse() {
        use libp2p::request_response::Codec;
        let mut codec: CborCodec<Hello, Hello> = CborCodec::with_limits(64, 4096);
        let msg = encode(&hello());
        assert!(msg.len() > 64 && msg.len() < 4096);
        let r = futures::executor::block_on(codec.read_request(&HELLO, &mut futures::io::Cursor::new(msg.clone())));
        assert_eq!(r.unwrap_err().kind(), io::ErrorKind::InvalidData);
        let r = futures::executor::block_on(codec.read_response(&HELLO, &mut futures::io::Cursor::new(msg)));
        assert_eq!(r.unwrap(), hello());
    }

    #[test]
    fn state_records_a_newer_node_writes_are_counted_and_the_rest_kept() {
        use crate::log::mesh::{Lww, Record, RecordKey};
        use ciborium::Value;
        let paused = |node: &str| {
            let time = crate::log::hlc::Hlc { wall_ms: 5, logical: 0, node: "P".into() };
            (RecordKey::Paused(node.into()), Record::Paused(Lww::new(time, true)))
        };
        let batch = StateBatch { records: vec![paused("n1"), paused("n2")].into(), next_bucket: Some(7) };
        let mut v: Value = ciborium::from_reader(&encode(&batch)[..]).unwrap();
        let tag = |k: &str, v: Value| Value::Map(vec![(Value::Text(k.into()), v)]);
        let newer = Value::Array(vec![tag("Quota", Value::Text("n1".into())), tag("Quota", Value::Integer(5.into()))]);
        for (k, records) in v.as_map_mut().unwrap() {
            if k.as_text() == Some("records") {
                records.as_array_mut().unwrap().insert(1, newer.clone());
            }
        }
        let mut bytes = Vec::new();
        ciborium::into_writer(&v, &mut bytes).unwrap();
        let back: StateBatch = decode(&bytes, MAX_LOG).unwrap();
        assert_eq!(back.records.known, batch.records.known);
        assert_eq!((back.records.unknown, back.next_bucket), (1, Some(7)));
    }

    #[test]
    fn a_request_naming_a_climbing_id_does_not_decode() {
        // What a peer that does not use these types could send: the same
        // CBOR shape with any strings in it.
        #[derive(Serialize)]
        enum Raw {
            GetManifest { node: String, path: String, archive: Option<String> },
        }
        let raw = |node: &str, path: &str, archive: &str| {
            let r = Raw::GetManifest { node: node.into(), path: path.into(), archive: Some(archive.into()) };
            let mut bytes = Vec::new();
            ciborium::into_writer(&r, &mut bytes).unwrap();
            bytes
        };
        let good = decode::<XferRequest>(&raw("n1", "/srv/app", "20261122T040113.000Z-0a1b2c3d"), MAX_XFER);
        assert_eq!(
            good.unwrap(),
            XferRequest::get_manifest("n1", "/srv/app", Some("20261122T040113.000Z-0a1b2c3d")).unwrap()
        );
        for (node, path, id) in [("n1", "/srv/app", "../../../escape"), ("a b", "/srv/app", "x"), ("n1", "/a\nb", "x")]
        {
            let e = decode::<XferRequest>(&raw(node, path, id), MAX_XFER).unwrap_err();
            assert!(e.to_string().contains("valid") || e.to_string().contains("bad"), "{node} {path} {id}: {e}");
        }
    }

    #[test]
    fn a_grant_acts_only_for_the_same_token_the_same_node_and_the_same_request() {
        let restore = |to: &str| CtlRequest::Restore {
            node: name("web-1").unwrap(),
            path: series("/srv/app").unwrap(),
            archive: None,
            to: to.into(),
            overwrite: true,
            request: "r1".into(),
            grant: None,
        };
        let signed = restore("/srv/app").granted(Some("s3cret"), "web-2");
        let back: CtlRequest = decode(&encode(&signed), MAX_CTL_REQUEST).unwrap();
        assert_eq!(back.check_grant(Some("s3cret"), "web-2"), Ok(()));
        assert!(back.check_grant(None, "web-2").is_ok(), "a node without a token trusts the mesh");
        let other_token = back.check_grant(Some("other"), "web-2").unwrap_err();
        assert_eq!(other_token, GrantError::Wrong { me: "web-2".into() });
        assert!(other_token.to_string().contains("--token"), "{other_token}");
        assert!(back.check_grant(Some("s3cret"), "web-3").is_err(), "a grant for web-2 does nothing on web-3");
        let CtlRequest::Restore { grant, .. } = &signed else { unreachable!() };
        let mut tampered = restore("/etc");
        if let CtlRequest::Restore { grant: g, .. } = &mut tampered {
            *g = grant.clone();
        }
        assert!(tampered.check_grant(Some("s3cret"), "web-2").is_err(), "another target, the same grant: refused");
        let unsigned = restore("/srv/app").granted(None, "web-2");
        let err = unsigned.check_grant(Some("s3cret"), "web-2").unwrap_err();
        assert!(err.to_string().contains("no API token"), "{err}");
        let history = CtlRequest::History(Default::default());
        assert!(history.check_grant(Some("s3cret"), "web-2").is_ok(), "reading needs no grant");
    }
}
