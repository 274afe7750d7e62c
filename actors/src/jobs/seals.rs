//! What this node seals its backups with: its data key, wrapped to the
//! node itself and to the operator's recovery recipients as they are now
//! (they change by the operator's signed orders, `authority`). The wrap
//! is made again only when the recipients change.

use std::sync::{Arc, Mutex};

use backmesh_crypt::wrap::{wrap, Bundle};
use backmesh_crypt::DataKey;

use crate::archive::sealed::Sealing;
use crate::authority::Authority;

/// The sealing of this node's backups, kept up to date.
pub struct Seals {
    key: DataKey,
    node: String,
    peer: String,
    /// This node's own recipient (`store::node_unwrapper`).
    own: String,
    authority: Arc<Authority>,
    made: Mutex<Option<(Vec<String>, Arc<Sealing>)>>,
}

impl std::fmt::Debug for Seals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Seals({:?} of {})", self.key, self.node)
    }
}

impl Seals {
    pub fn new(key: DataKey, node: String, peer: String, own: String, authority: Arc<Authority>) -> Seals {
        Seals { key, node, peer, own, authority, made: Mutex::new(None) }
    }

    /// The recipients the key is wrapped to now: this node, then the
    /// operator's recovery recipients.
    pub fn recipients(&self) -> Vec<String> {
        std::iter::once(self.own.clone()).chain(self.authority.recovery()).collect()
    }

    /// The sealing for a backup made now.
    pub fn current(&self) -> Result<Arc<Sealing>, String> {
        if self.authority.recovery().is_empty() {
            return Err(format!(
                "node {} seals its backups (encrypt = on) but knows no operator recovery recipient: an archive \
                 only this node could open is not made. Add operator-recovery = \"age1…\" to node.toml (`backmesh \
                 operator show --recovery` prints it), or turn encrypt off",
                self.node
            ));
        }
        let recipients = self.recipients();
        let mut made = self.made.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((to, sealing)) = made.as_ref() {
            if *to == recipients {
                return Ok(sealing.clone());
            }
        }
        let bundle = Bundle {
            node: self.node.clone(),
            peer: self.peer.clone(),
            created_ms: crate::clock::now_ms(),
            key: self.key.clone(),
        };
        let wrapped = wrap(&bundle, &recipients).map_err(|e| format!("cannot wrap the data key: {e}"))?;
        let sealing = crate::archive::sealed::sealing(self.key.clone(), vec![wrapped]);
        *made = Some((recipients, sealing.clone()));
        Ok(sealing)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use backmesh_crypt::wrap::{unwrap, Identity};

    #[test]
    fn the_key_is_wrapped_to_the_node_and_the_recovery_recipients_of_the_moment() {
        let node = Identity::of_node(&[1; 32]);
        let recovery = Identity::of_operator(&[2; 32]);
        let authority = Arc::new(Authority::new(&[]).unwrap().with_recovery(&[recovery.recipient()]).unwrap());
        let seals = Seals::new(DataKey::from_secret([3; 32]), "n1".into(), "p1".into(), node.recipient(), authority);
        let s = seals.current().unwrap();
        assert!(Arc::ptr_eq(&s, &seals.current().unwrap()), "wrapped once while the recipients stay");
        for who in [&node, &recovery] {
            assert_eq!(unwrap(&s.keys[0], who).unwrap().key.id(), DataKey::from_secret([3; 32]).id());
        }
        assert!(unwrap(&s.keys[0], &Identity::of_operator(&[9; 32])).is_err());
    }
}
