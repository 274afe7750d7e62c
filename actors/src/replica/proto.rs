//! The replica area's protocols.
//!
//! - `/backmesh/xfer/3` ([`XFER`]): archives between nodes: an origin or a
//!   surviving holder offers, sends and commits; the series' node, its
//!   holders, and a node under the operator's order to restore or fetch it
//!   read an archive ([`ReadOf`]). Answered by the replica actor's holder side.
//! - `/backmesh/replica/2` ([`REPLICA`]): restore and verify asked of the
//!   node that is to act, with the operator's order. Answered by the
//!   replica actor.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::authority::{Act, SignedOrder};
use crate::hash::Digest;
use crate::net::client::{NetClient, RequestError};
use crate::net::rpc::Protocol;
use backmesh_api::names::BadName;
pub use backmesh_api::names::{ArchiveId, NodeName, SeriesPath};

/// Restore and verify asked of another node.
pub const REPLICA: Protocol = Protocol {
    name: "/backmesh/replica/2",
    max_request: 64 * 1024,
    max_response: 4 * 1024 * 1024,
    timeout: Duration::from_secs(10),
};

/// Work asked of the node that is to do it. Answered by [`ReplicaAnswer`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReplicaRequest {
    /// Restore an archive of (node, path) onto your disk, into `to`; the
    /// `restored` log entry carries `request`. Answer: `Accepted` at once.
    Restore {
        node: NodeName,
        path: SeriesPath,
        archive: Option<ArchiveId>,
        to: String,
        overwrite: bool,
        request: String,
        /// The operator's order for this restore (`on` is you).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        order: Option<SignedOrder>,
        /// An encrypted archive's data key wrapped to you, as the order
        /// carries it (`backmesh_api::Restore::key`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        key: Option<String>,
        /// Only the entries these patterns select (`backmesh_api::Restore::include`).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        include: Vec<String>,
    },
    /// Re-hash the members you keep (of (node, path), or all), repairing
    /// damage from other holders; `verified` entries carry `request`.
    /// Answer: `Verifying`.
    Verify {
        node: Option<NodeName>,
        path: Option<SeriesPath>,
        request: String,
        /// The operator's order for this verify.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        order: Option<SignedOrder>,
    },
    /// How far the restore carrying `request` has come here (no order: it
    /// says counts, not content). Answer: `Progress`, or `Failed` when no
    /// such restore runs here.
    Progress { request: String },
}

impl ReplicaRequest {
    /// What the operator's order must say for the answering node `me` to
    /// do this, and the order it carries.
    /// `None`: nothing to order (a question about work under way).
    pub fn act(&self, me: &str) -> Option<(Act, Option<&SignedOrder>)> {
        Some(match self {
            ReplicaRequest::Restore { node, path, archive, to, overwrite, order, key, include, .. } => (
                Act::Restore(backmesh_api::Restore {
                    node: node.to_string(),
                    path: path.to_string(),
                    archive: archive.as_ref().map(|a| a.to_string()),
                    to: to.clone(),
                    on: Some(me.to_string()),
                    overwrite: *overwrite,
                    key: key.clone(),
                    include: include.clone(),
                }),
                order.as_ref(),
            ),
            ReplicaRequest::Verify { node, path, order, .. } => (
                Act::Verify(backmesh_api::Verify {
                    node: node.as_ref().map(|n| n.to_string()),
                    path: path.as_ref().map(|p| p.to_string()),
                }),
                order.as_ref(),
            ),
            ReplicaRequest::Progress { .. } => return None,
        })
    }
}

/// The answer to a [`ReplicaRequest`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReplicaAnswer {
    /// The work was accepted; its result goes to the log.
    Accepted,
    /// These series (node, path) will be verified; a `verified` entry follows for each.
    Verifying { series: Vec<(String, String)> },
    /// The request could not be served, in words.
    Failed { reason: String },
    /// A restore under way: entries and content bytes written, what the
    /// bytes will reach (0: not known), time since it started.
    Progress { entries: u64, bytes: u64, total: u64, elapsed_ms: u64 },
}

/// Sends a transfer request to `peer` and waits for its answer. The
/// request (up to a 4 MiB batch of members) is dropped once encoded, not
/// held until the answer comes.
pub async fn xfer(net: &NetClient, peer: &str, request: XferRequest) -> Result<XferResponse, RequestError> {
    let body = crate::codec::encode(&request);
    drop(request);
    let answer = net.request(peer, &XFER, body).await?;
    crate::codec::decode(&answer, XFER.max_response).map_err(|e| RequestError::Malformed(format!("{}: {e}", XFER.name)))
}

/// [`xfer`] for a blocking thread (never the runtime's own).
pub fn xfer_blocking(net: &NetClient, peer: &str, request: XferRequest) -> Result<XferResponse, RequestError> {
    net.call_blocking(peer, &XFER, &request)
}

/// Largest transfer message accepted: a manifest of a large tree, or a batch.
pub const MAX_XFER: usize = 64 * 1024 * 1024;

/// Archive transfer between nodes (replication, repair, fetch, restore).
pub const XFER: Protocol = Protocol {
    name: "/backmesh/xfer/3",
    max_request: MAX_XFER,
    max_response: MAX_XFER,
    timeout: Duration::from_secs(120),
};
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
    /// Answer: `Manifest`, to a reader entitled to the series ([`ReadOf`]).
    GetManifest {
        node: NodeName,
        path: SeriesPath,
        archive: Option<ArchiveId>,
        /// The operator's order that entitles the reader, if it is
        /// neither the series' node nor one of its holders.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        order: Option<SignedOrder>,
    },
    /// These members of archive `of`, at most [`XFER_BATCH`] bytes.
    /// Answer: `Members`, to a reader entitled to the series, of members
    /// of that archive only.
    Get { digests: Vec<Digest>, of: ReadOf },
}

/// What a read is of: an archive of a series, and the operator's order
/// that entitles the reader if it is neither the series' node nor one of
/// its holders (a restore or fetch the operator ordered).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadOf {
    pub node: NodeName,
    pub path: SeriesPath,
    pub archive: ArchiveId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order: Option<SignedOrder>,
}

impl ReadOf {
    /// A read of archive `id` of (node, path), under `order`.
    pub fn named(node: &str, path: &str, id: &str, order: Option<&SignedOrder>) -> Result<ReadOf, BadName> {
        Ok(ReadOf { node: name(node)?, path: series(path)?, archive: archive(id)?, order: order.cloned() })
    }

    /// A read of the archive `m` is, under `order`.
    pub fn of(m: &crate::archive::Manifest, order: Option<&SignedOrder>) -> Result<ReadOf, BadName> {
        ReadOf::named(&m.node, &m.path, &m.id, order)
    }
}

impl XferRequest {
    /// `List` of (node, path), or why they cannot be named on the wire.
    pub fn list(node: &str, path: &str) -> Result<Self, BadName> {
        Ok(XferRequest::List { node: name(node)?, path: series(path)? })
    }

    /// `GetManifest` of archive `archive` (the newest: `None`) of (node,
    /// path), read under `order` if given.
    pub fn get_manifest(
        node: &str,
        path: &str,
        archive: Option<&str>,
        order: Option<&SignedOrder>,
    ) -> Result<Self, BadName> {
        let archive = archive.map(self::archive).transpose()?;
        Ok(XferRequest::GetManifest { node: name(node)?, path: series(path)?, archive, order: order.cloned() })
    }

    /// The series a read names and the order it carries: what the
    /// answering node checks before it serves a manifest or members.
    pub fn read_of(&self) -> Option<(&NodeName, &SeriesPath, Option<&SignedOrder>)> {
        match self {
            XferRequest::GetManifest { node, path, order, .. } => Some((node, path, order.as_ref())),
            XferRequest::Get { of, .. } => Some((&of.node, &of.path, of.order.as_ref())),
            _ => None,
        }
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
