//! The log area's protocols.
//!
//! - gossip topic [`LOG_TOPIC`]: every new entry, signed by its origin,
//!   pushed to every node; relayed on only once a node has checked it.
//! - `/backmesh/state/3` ([`STATE`]): anti-entropy pulls of the mesh state.
//! - `/backmesh/history/1` ([`HISTORY`]): a page of the execution history
//!   a node keeps.
//!
//! All answered by the log actor.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::history::Page;
use super::mesh::StateDigest;
use super::records::{Record, RecordKey};
use crate::codec::Lenient;
use crate::net::rpc::Protocol;

/// Gossipsub topic on which new log entries are pushed.
pub const LOG_TOPIC: &str = "backmesh/log/1";
/// Largest gossiped entry and state answer, in bytes.
pub const MAX_LOG: usize = 4 * 1024 * 1024;
/// Records per pull answer stop once their encoding passes this many bytes.
pub const STATE_BATCH_BYTES: usize = 1024 * 1024;

/// Anti-entropy pulls: a digest in, the records that differ out.
pub const STATE: Protocol = Protocol {
    name: "/backmesh/state/3",
    max_request: 64 * 1024,
    max_response: MAX_LOG,
    timeout: Duration::from_secs(30),
};

/// A page of history.
pub const HISTORY: Protocol = Protocol {
    name: "/backmesh/history/1",
    max_request: 64 * 1024,
    max_response: 4 * 1024 * 1024,
    timeout: Duration::from_secs(10),
};

/// "Here is my state's digest; send me the records of the buckets where
/// yours differs." Sender: the log actor of any node, to a random connected
/// peer every few seconds (and again at once, from `from_bucket`, while the
/// answer says where to go on). Answered by: [`StateBatch`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatePull {
    /// One hash per bucket ([`super::records::BUCKETS`]).
    pub digest: StateDigest,
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
    pub records: Lenient<(RecordKey, Record)>,
    /// The answer was cut for size: pull again from this bucket.
    pub next_bucket: Option<u16>,
}

/// The answer to a [`super::history::HistoryQuery`] sent on [`HISTORY`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum HistoryAnswer {
    /// A page of history, newest last.
    Page(Page),
    /// The history could not be read, in words.
    Failed { reason: String },
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{decode, encode};

    #[test]
    fn state_records_a_newer_node_writes_are_counted_and_the_rest_kept() {
        use crate::log::crdt::Lww;
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
}
