//! Who may read an archive from this node (docs/security.md, "Reads are
//! for those entitled"): its manifest and members go only to
//! - the series' own node (the peer its name is bound to here);
//! - a node that keeps a copy of the series (the catalog says so) or is
//!   elected to keep one: holders read for repair and hand-off;
//! - a node under an operator's order to restore the series on it or
//!   fetch it through it ([`Authority::check_read`]).
//!
//! Everyone else is refused and counted. Members are served only as
//! members of the archive the read names ([`MemberSets`]), so an
//! entitlement to one series reads nothing of another.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};

use crate::authority::{Authority, SignedOrder};
use crate::hash::Digest;
use crate::placement::{holders, Candidate};
use crate::store::{Store, StoreError};

/// What a node knows when it decides whether a peer may read a series.
pub struct ReadCheck<'a> {
    pub authority: &'a Authority,
    /// The live nodes placement elects among, as of the last round.
    pub candidates: &'a [Candidate],
    pub replicas: usize,
    /// Name → the one peer id the mesh knows by it.
    pub claimants: &'a HashMap<String, String>,
    /// The peer id a node name is bound to in this node's store.
    pub bound: &'a dyn Fn(&str) -> Option<String>,
}

impl ReadCheck<'_> {
    /// The name of `peer`: the name it claims, unless this node binds that
    /// name to another key.
    fn name_of(&self, peer: &str) -> Option<String> {
        let by_claim = self.claimants.iter().find(|(_, p)| *p == peer).map(|(n, _)| n.clone());
        let name = by_claim.or_else(|| self.candidates.iter().find(|c| c.peer_id == peer).map(|c| c.name.clone()))?;
        match (self.bound)(&name) {
            Some(b) if b != peer => None,
            _ => Some(name),
        }
    }

    /// Whether `peer` may read series (node, path) here, whose copies the
    /// catalog says `keepers` keep; or why not, in words for its log.
    pub fn entitled(
        &self,
        peer: &str,
        node: &str,
        path: &str,
        keepers: &BTreeSet<String>,
        order: Option<&SignedOrder>,
        now_ms: i64,
    ) -> Result<(), String> {
        if (self.bound)(node).as_deref() == Some(peer) {
            return Ok(());
        }
        let name = self.name_of(peer);
        if let Some(n) = &name {
            if keepers.contains(n) || n == node && (self.bound)(node).is_none() {
                return Ok(());
            }
        }
        if holders(node, path, self.candidates, self.replicas).iter().any(|c| c.peer_id == peer) {
            return Ok(());
        }
        let who = name.clone().unwrap_or_else(|| format!("peer {peer}"));
        match (order, &name) {
            (Some(o), Some(n)) => {
                self.authority.check_read(o, n, node, path, now_ms).map(|_| ()).map_err(|e| format!("{who}: {e}"))
            }
            _ => Err(format!(
                "{who} asked to read {path} of {node}, and is neither that node, nor one of its holders, nor \
                 under the operator's order to restore or fetch it"
            )),
        }
    }
}

/// The members of the archives read lately: a `Get` is served only of
/// members of the archive it names. A few are kept, each as a set, so a
/// restore reading batch after batch does not decode its manifest again
/// for each.
#[derive(Default)]
pub struct MemberSets {
    recent: Mutex<VecDeque<(ArchiveKey, Arc<HashSet<Digest>>)>>,
}

type ArchiveKey = (String, String, String);

/// Archives whose member sets are kept at once.
const KEPT: usize = 8;

impl MemberSets {
    /// The members of archive `id` of (node, path), as this node keeps it.
    pub fn of(&self, store: &Store, node: &str, path: &str, id: &str) -> Result<Arc<HashSet<Digest>>, StoreError> {
        let key = (node.to_string(), path.to_string(), id.to_string());
        if let Some((_, set)) = self.recent.lock().unwrap_or_else(|p| p.into_inner()).iter().find(|(k, _)| *k == key) {
            return Ok(set.clone());
        }
        let m = store.manifest(node, path, Some(id))?;
        let set: Arc<HashSet<Digest>> = Arc::new(m.digests().collect());
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        if recent.len() >= KEPT {
            recent.pop_back();
        }
        recent.push_front((key, set.clone()));
        Ok(set)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use backmesh_api::order::{Act, OperatorKey};

    #[test]
    fn only_the_series_node_its_holders_and_an_ordered_reader_may_read() {
        let op = OperatorKey::generate().unwrap();
        let authority = Authority::new(&[op.public()]).unwrap();
        let cand = |n: &str| Candidate { peer_id: format!("p-{n}"), name: n.into(), free_bytes: 1 << 40 };
        let candidates: Vec<Candidate> = ["n1", "n2", "n3", "n4", "n5", "n6"].iter().map(|n| cand(n)).collect();
        let claimants: HashMap<String, String> =
            candidates.iter().map(|c| (c.name.clone(), c.peer_id.clone())).collect();
        let bound = |n: &str| (n != "n6").then(|| format!("p-{n}"));
        let check = ReadCheck {
            authority: &authority,
            candidates: &candidates,
            replicas: 1,
            claimants: &claimants,
            bound: &bound,
        };
        let elected = holders("n1", "/srv", &candidates, 1)[0].name.clone();
        let keepers: BTreeSet<String> = ["n5".to_string()].into();
        let now = 1_000_000;
        let may = |peer: &str, order: Option<&SignedOrder>| check.entitled(peer, "n1", "/srv", &keepers, order, now);
        assert!(may("p-n1", None).is_ok(), "the series' node");
        assert!(may(&format!("p-{elected}"), None).is_ok(), "its elected holder");
        assert!(may("p-n5", None).is_ok(), "a node that keeps a copy");
        let stranger = ["n2", "n3", "n4"].into_iter().find(|n| *n != elected).unwrap();
        let e = may(&format!("p-{stranger}"), None).unwrap_err();
        assert!(e.contains("neither") && e.contains(stranger), "{e}");
        assert!(may("p-nobody", None).is_err());
        // Under the operator's order to restore it there: yes; its order for another reader: no.
        let restore = |on: &str| {
            Act::Restore(backmesh_api::Restore {
                node: "n1".into(),
                path: "/srv".into(),
                archive: None,
                to: "/r".into(),
                on: Some(on.into()),
                overwrite: false,
                key: None,
                include: Vec::new(),
            })
        };
        let mine = op.sign(restore(stranger), now).unwrap();
        assert!(may(&format!("p-{stranger}"), Some(&mine)).is_ok());
        let other = ["n2", "n3", "n4"].into_iter().find(|n| *n != elected && *n != stranger).unwrap();
        assert!(may(&format!("p-{other}"), Some(&mine)).is_err(), "the order names another reader");
        // A peer that claims a name bound to another key here is nobody.
        let impostor: HashMap<String, String> = [("n5".to_string(), "p-evil".to_string())].into();
        let check = ReadCheck { claimants: &impostor, ..check };
        assert!(check.entitled("p-evil", "n1", "/srv", &keepers, None, now).is_err());
    }
}
