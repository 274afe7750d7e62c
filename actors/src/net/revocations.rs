//! Identities the operator revoked (`backmesh revoke NODE`): each an
//! operator's signed order, checked against the operator keys this node
//! trusts ([`Authority::check_revocation`]), kept on disk, and said in
//! every hello, so that the whole mesh learns it within a hello period and
//! a node that joins later learns it from its first hello. A revoked peer
//! is cut off (libp2p's block list): its connections are refused, so
//! nothing it sends reaches this node again.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use crate::authority::{Authority, OrderError, SignedOrder};

/// Revocations kept at most (each a few hundred bytes in every hello).
pub const MAX_REVOCATIONS: usize = 1024;

/// The revocations this node holds.
pub struct Revocations {
    authority: Arc<Authority>,
    /// Where they are kept (one signed order a line); `None`: in memory only.
    file: Option<PathBuf>,
    /// Revoked peer id → (its node's name, the order).
    by_peer: BTreeMap<String, (String, SignedOrder)>,
}

impl Revocations {
    /// The revocations kept in `file` that still hold under `authority`.
    pub fn load(authority: Arc<Authority>, file: Option<PathBuf>) -> Revocations {
        let mut r = Revocations { authority, file, by_peer: BTreeMap::new() };
        let text = r.file.as_ref().and_then(|f| std::fs::read_to_string(f).ok()).unwrap_or_default();
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
            let order = SignedOrder(line.to_string());
            match r.authority.check_revocation(&order) {
                Ok((node, peer)) => {
                    r.by_peer.insert(peer, (node, order));
                }
                Err(e) => tracing::warn!("a kept revocation no longer holds here, left out: {e}"),
            }
        }
        r
    }

    /// Takes in `order` if it is a revocation that holds and is new here:
    /// answers (node, peer) then, `None` if it was known. Kept on disk
    /// before it is answered.
    pub fn take(&mut self, order: &SignedOrder) -> Result<Option<(String, String)>, OrderError> {
        let (node, peer) = self.authority.check_revocation(order)?;
        if self.by_peer.contains_key(&peer) {
            return Ok(None);
        }
        if self.by_peer.len() >= MAX_REVOCATIONS {
            return Err(OrderError::Unreadable(format!("more than {MAX_REVOCATIONS} revocations")));
        }
        self.by_peer.insert(peer.clone(), (node.clone(), order.clone()));
        self.save();
        Ok(Some((node, peer)))
    }

    /// Every revocation, as hellos carry them.
    pub fn orders(&self) -> Vec<SignedOrder> {
        self.by_peer.values().map(|(_, o)| o.clone()).collect()
    }

    /// (peer, node) of every revoked identity.
    pub fn revoked(&self) -> impl Iterator<Item = (&String, &String)> {
        self.by_peer.iter().map(|(p, (n, _))| (p, n))
    }

    /// Writes them whole: a staging file, synced, renamed over the old.
    fn save(&self) {
        let Some(file) = &self.file else { return };
        use std::io::Write;
        let text: String = self.by_peer.values().map(|(_, o)| format!("{}\n", o.0)).collect();
        let staging = file.with_extension("tmp");
        let written = std::fs::File::create(&staging)
            .and_then(|mut f| f.write_all(text.as_bytes()).and_then(|()| f.sync_all()))
            .and_then(|()| std::fs::rename(&staging, file))
            .and_then(|()| match file.parent() {
                Some(dir) => std::fs::File::open(dir).and_then(|d| d.sync_all()),
                None => Ok(()),
            });
        if let Err(e) = written {
            tracing::error!("cannot keep the revocations in {}: {e}", file.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use backmesh_api::order::{Act, OperatorKey};

    #[test]
    fn revocations_are_kept_on_disk_once_each_and_only_if_they_hold() {
        let t = tempfile::tempdir().unwrap();
        let op = OperatorKey::generate().unwrap();
        let auth = Arc::new(Authority::new(&[op.public()]).unwrap());
        let file = t.path().join("revoked");
        let mut r = Revocations::load(auth.clone(), Some(file.clone()));
        let order = op.sign(Act::Revoke { node: "n4".into(), peer: "p4".into() }, 1).unwrap();
        assert_eq!(r.take(&order), Ok(Some(("n4".into(), "p4".into()))));
        assert_eq!(r.take(&order), Ok(None), "known already");
        let forged = OperatorKey::generate().unwrap().sign(Act::Revoke { node: "n1".into(), peer: "p1".into() }, 1);
        assert!(r.take(&forged.unwrap()).is_err());
        let again = Revocations::load(auth, Some(file));
        assert_eq!(again.revoked().collect::<Vec<_>>(), vec![(&"p4".to_string(), &"n4".to_string())]);
        assert_eq!(again.orders(), vec![order]);
    }
}
