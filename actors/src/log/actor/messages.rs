//! The messages the log actor answers, and who sends them (see the
//! parent module).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use actix::Message;

use crate::log::entry::{Entry, Event};
use crate::log::history::{HistoryQuery, Page};
use crate::log::proto::{HistoryAnswer, StateBatch, StatePull};
use crate::log::records::{Record as StateRecord, RecordKey, SeriesKey};
use crate::log::views::{CatalogArchive, JobView};
use crate::net::rpc::Reply;
use crate::store::StoreError;

/// Appends a local event. Answers the new entry.
#[derive(Message)]
#[rtype(result = "Result<Entry, StoreError>")]
pub struct Append(pub Event);

/// An entry another node wrote for a request of this node's API (a job
/// changed there under the operator's order), taken in at once rather
/// than when gossip brings it: checked as any peer's entry. Sender: the
/// HTTP API.
#[derive(Message)]
#[rtype(result = "Result<(), String>")]
pub struct TakeEntry(pub Entry);

/// An entry gossiped by a peer, as it came (`from` relayed it).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Gossiped {
    pub from: String,
    /// The message's id, to say what this node made of it.
    pub id: Vec<u8>,
    pub data: Vec<u8>,
}

/// A peer's state pull, with where its answer goes.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ServeStatePull {
    pub pull: StatePull,
    pub reply: Reply<StateBatch>,
}

/// A peer's question for a page of the history kept here.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ServeHistory {
    pub query: HistoryQuery,
    pub reply: Reply<HistoryAnswer>,
}

/// The answer to this node's state pull.
#[derive(Message)]
#[rtype(result = "()")]
pub struct StateReceived {
    pub records: Vec<(RecordKey, StateRecord)>,
    /// Records of the answer in forms this version does not know.
    pub unknown: usize,
    pub from: String,
    pub next_bucket: Option<u16>,
}

/// A page of the history this node keeps (durably and in its window).
#[derive(Message)]
#[rtype(result = "Result<Page, StoreError>")]
pub struct Query(pub HistoryQuery);

/// Every registered job.
#[derive(Message)]
#[rtype(result = "Vec<JobView>")]
pub struct GetJobs;

/// The registered jobs of one node (the scheduler's question).
#[derive(Message)]
#[rtype(result = "Vec<JobView>")]
pub struct GetJobsOf(pub String);

/// The archives of (node, path) the mesh knows, newest first, with holders.
#[derive(Message)]
#[rtype(result = "Arc<Vec<CatalogArchive>>")]
pub struct GetCatalog {
    pub node: String,
    pub path: String,
}

/// The last notification of each job.
#[derive(Message)]
#[rtype(result = "BTreeMap<SeriesKey, backmesh_api::Notice>")]
pub struct GetNotified;

/// Every series' catalog, by (node, path).
#[derive(Message)]
#[rtype(result = "BTreeMap<SeriesKey, Arc<Vec<CatalogArchive>>>")]
pub struct GetCatalogs;

/// The entries that answer the on-demand request `request`, oldest first.
#[derive(Message)]
#[rtype(result = "Vec<Entry>")]
pub struct ForRequest {
    pub request: String,
}

/// The names of the nodes that keep the history of (node, path): the node
/// itself and the holders of its archives.
#[derive(Message)]
#[rtype(result = "BTreeSet<String>")]
pub struct GetKeepers {
    pub node: String,
    pub path: Option<String>,
}

/// Sizes, for `/metrics` and the benchmark.
#[derive(Message)]
#[rtype(result = "StateStats")]
pub struct GetStats;

/// Whether a first full pull from a peer has been answered since start
/// (or the node has no network): until then the state may lack what
/// peers wrote while this node was down.
#[derive(Message)]
#[rtype(result = "bool")]
pub struct IsCaughtUp;

/// Every origin's peer id and name, as its entries say (for the replica
/// actor: who may seal a node's archives).
#[derive(Message)]
#[rtype(result = "Vec<(String, String)>")]
pub struct GetOrigins;

#[derive(Clone, Debug, Default)]
pub struct StateStats {
    /// Records in the mesh state.
    pub records: usize,
    /// Entries in the recent window.
    pub window: usize,
    /// SHA-256 (first 16 hex digits) over the state's anti-entropy
    /// digest: equal on two nodes, equal states.
    pub digest: String,
}

/// Who may hold copies now, and how many copies each series gets: from it
/// the actor knows which series this node is elected to hold, keeps their
/// history from then on and fetches what came before. Sender: the replica
/// actor, every round.
#[derive(Message)]
#[rtype(result = "()")]
pub struct SetPlacement {
    pub candidates: Vec<crate::placement::Candidate>,
    pub replicas: usize,
}
