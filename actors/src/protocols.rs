//! The mesh's protocols as a whole: the version every node says in its
//! hello, and the list of what each area declares, which a node gives its
//! transport at start-up ([`all`], [`topics`]).
//!
//! Each area owns its protocol module — wire types, limits, handler:
//! - [`crate::log::proto`]: gossip of entries, state pulls, history pages;
//! - [`crate::jobs::proto`]: questions about another node's jobs;
//! - [`crate::replica::proto`]: archive transfer, restore and verify.

use crate::net::rpc::Protocol;

/// Version of the mesh protocol (every message but the hello), said in
/// every hello. A peer on another version is refused whole, and named in
/// the log and in status. 4: manifests travel sealed by their origin, and
/// holders refuse unsealed ones. 5: entries are signed by their origin, and
/// every state register by its writer; unsigned ones are left out. 6: a
/// state digest hashes whether each register is sealed, not its
/// signature's bytes (a node keeps those on disk); gossip messages carry no
/// gossipsub signature (the entry's own is checked) and are relayed only
/// once checked. 7: a registration's programs carry the operator's grant
/// (`JobSpec::grant`), and names, paths and archive ids on the wire are
/// checked types. 8: archives are written in manifest formats 3 and 4 (the
/// tree digest over the members), and members and manifests go as deltas.
/// 9: archives are sealed in format 5 (the seal over the manifest's
/// digest), which nodes of 8 cannot read. 10: every request protocol
/// travels in one frame on `/backmesh/rpc/1` or `/backmesh/bulk/1`
/// (docs/protocol.md), and the
/// control protocol is split by area (`/backmesh/jobs/1`,
/// `/backmesh/replica/1`, `/backmesh/history/1`). 11: a node acts for
/// another only under an operator's signed order (`backmesh_api::order`,
/// `/backmesh/jobs/2`, `/backmesh/replica/2`), and a job or pause record
/// is written only by its own node (the grant of 7 is gone); a run's
/// entry carries the outcomes of the runs before it (`log::recent`: not
/// released before it came, so within 11).
pub const MESH_PROTOCOL: u32 = 11;

/// Every request protocol a node speaks.
pub fn all() -> Vec<Protocol> {
    vec![
        crate::log::proto::STATE,
        crate::log::proto::HISTORY,
        crate::jobs::proto::JOBS,
        crate::replica::proto::XFER,
        crate::replica::proto::REPLICA,
    ]
}

/// Every gossip topic a node hears.
pub fn topics() -> Vec<&'static str> {
    vec![crate::log::proto::LOG_TOPIC]
}

/// The largest gossiped message.
pub const MAX_GOSSIP: usize = crate::log::proto::MAX_LOG;

#[cfg(test)]
mod tests {
    #[test]
    fn protocol_names_are_distinct_and_fit_a_frame() {
        let all = super::all();
        let mut names: Vec<&str> = all.iter().map(|p| p.name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), all.len());
        assert!(names.iter().all(|n| !n.is_empty() && n.len() <= crate::net::rpc::MAX_NAME));
    }
}
