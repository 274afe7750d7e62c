//! The operator's changes of trust: identities revoked (`backmesh revoke
//! NODE`) and operator keys trusted or no longer (`backmesh operator
//! trust|distrust KEY`). Each is an operator's signed order, checked
//! against the operator keys this node trusts
//! ([`Authority::check_trust_change`]), kept on disk, and said in every
//! hello, so that the whole mesh learns it within a hello period and a
//! node that joins later learns it from its first hello. A revoked peer
//! is cut off (libp2p's block list): its connections are refused, so
//! nothing it sends reaches this node again.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;

use crate::authority::{Authority, OrderError, SignedOrder, TrustChange};

/// Revocations kept at most: each is about 600 bytes in every hello, and
/// a hello is at most `MAX_HELLO` (256 KiB) with its list of peers.
pub const MAX_REVOCATIONS: usize = 200;

/// Operator keys whose trust was changed, kept at most (the same bound).
pub const MAX_OPERATOR_CHANGES: usize = 32;

/// Recovery recipients whose wrapping was changed, kept at most.
pub const MAX_RECIPIENT_CHANGES: usize = 32;

/// Names bound again to a new identity, kept at most.
pub const MAX_REBINDS: usize = 64;

/// Order texts remembered as checked (taken or refused), at most: a hello
/// repeats every change its sender holds, and each is checked once, not
/// at every hello (a signature check each, from every peer).
const CHECKED_MAX: usize = 4 * (MAX_REVOCATIONS + MAX_OPERATOR_CHANGES + MAX_REBINDS + MAX_RECIPIENT_CHANGES);

/// The revocations this node holds.
pub struct Revocations {
    authority: Arc<Authority>,
    /// Where they are kept (one signed order a line); `None`: in memory only.
    file: Option<PathBuf>,
    /// Revoked peer id → (its node's name, when it was retired if it was, the order).
    by_peer: BTreeMap<String, (String, Option<i64>, SignedOrder)>,
    /// Operator key → the latest order that trusts it or no longer.
    operators: BTreeMap<String, SignedOrder>,
    /// Recovery recipient → the latest order that wraps to it or no longer.
    recipients: BTreeMap<String, SignedOrder>,
    /// (node name, former peer) → every rebind, a chain of them kept
    /// whole: (when, new peer, the order).
    rebinds: BTreeMap<(String, String), (i64, String, SignedOrder)>,
    /// Texts of the orders checked already, with what came of them;
    /// forgotten when the operator set changes (a refused one may hold then).
    checked: HashSet<String>,
}

/// What taking in a change of trust did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Taken {
    /// It was known (or a later change of that key was).
    Known,
    /// Node `node`'s identity `peer` is revoked (and retired, as of
    /// `retired_ms`: its series are collected after the grace period).
    Revoked { node: String, peer: String, retired_ms: Option<i64> },
    /// Operator key `operator` is trusted from now on, or no longer.
    Operator { operator: String, trusted: bool },
    /// Data keys are wrapped to recovery recipient `recipient` from now on, or no longer.
    Recipient { recipient: String, wrapped: bool },
    /// Node name `node` is identity `peer` from `at_ms` on, in place of `former`.
    Rebound { node: String, peer: String, former: String, at_ms: i64 },
}

impl Revocations {
    /// The revocations kept in `file` that still hold under `authority`.
    pub fn load(authority: Arc<Authority>, file: Option<PathBuf>) -> Revocations {
        let mut r = Revocations {
            authority,
            file,
            by_peer: BTreeMap::new(),
            operators: BTreeMap::new(),
            recipients: BTreeMap::new(),
            rebinds: BTreeMap::new(),
            checked: HashSet::new(),
        };
        let text = r.file.as_ref().and_then(|f| std::fs::read_to_string(f).ok()).unwrap_or_default();
        let mut left: Vec<SignedOrder> =
            text.lines().map(str::trim).filter(|l| !l.is_empty()).map(|l| SignedOrder(l.to_string())).collect();
        // A change may be signed by a key another change trusts: taken in
        // passes until none more holds.
        loop {
            let before = left.len();
            left.retain(|order| match r.take_in(order) {
                Ok((_, change)) => {
                    if let Some(change) = change {
                        r.authority.apply(&change);
                    }
                    false
                }
                Err(_) => true,
            });
            if left.is_empty() || left.len() == before {
                break;
            }
        }
        for _ in &left {
            tracing::warn!("a kept change of trust no longer holds here, left out");
        }
        r
    }

    /// Takes `order` in memory, without saving; a change of the operator
    /// set or of the recovery recipients is given back for the caller to
    /// apply to the authority (once it is kept, so that what a node acts on
    /// survives a crash).
    fn take_in(&mut self, order: &SignedOrder) -> Result<(Taken, Option<TrustChange>), OrderError> {
        match self.authority.check_trust_change(order)? {
            TrustChange::Revoke { node, peer, retired_ms } => {
                // A retirement adds to a revocation; nothing else changes a known one.
                match self.by_peer.get(&peer) {
                    Some((_, Some(_), _)) => return Ok((Taken::Known, None)),
                    Some((_, None, _)) if retired_ms.is_none() => return Ok((Taken::Known, None)),
                    _ => {}
                }
                if self.by_peer.len() >= MAX_REVOCATIONS && !self.by_peer.contains_key(&peer) {
                    return Err(OrderError::Unreadable(format!("more than {MAX_REVOCATIONS} revocations")));
                }
                self.by_peer.insert(peer.clone(), (node.clone(), retired_ms, order.clone()));
                Ok((Taken::Revoked { node, peer, retired_ms }, None))
            }
            TrustChange::Rebind { node, peer, former, at_ms } => {
                // Each identity a name had is kept (A→B, then B→C: both),
                // so every node refuses every former one and keeps what
                // each sealed; of two rebinds away from one identity, the
                // later signed holds.
                let key = (node.clone(), former.clone());
                match self.rebinds.get(&key) {
                    Some((at, ..)) if *at >= at_ms => return Ok((Taken::Known, None)),
                    None if self.rebinds.len() >= MAX_REBINDS => {
                        return Err(OrderError::Unreadable(format!("more than {MAX_REBINDS} rebinds")))
                    }
                    _ => {}
                }
                self.rebinds.insert(key, (at_ms, peer.clone(), order.clone()));
                Ok((Taken::Rebound { node, peer, former, at_ms }, None))
            }
            change @ TrustChange::Operator { .. } => {
                let TrustChange::Operator { operator, trusted, .. } = change.clone() else {
                    return Ok((Taken::Known, None));
                };
                if self.operators.len() >= MAX_OPERATOR_CHANGES && !self.operators.contains_key(&operator) {
                    return Err(OrderError::Unreadable(format!(
                        "more than {MAX_OPERATOR_CHANGES} changes of operator keys"
                    )));
                }
                if !self.authority.is_news(&change) {
                    return Ok((Taken::Known, None));
                }
                self.operators.insert(operator.clone(), order.clone());
                // What was refused under the old set may hold under the new one.
                self.checked.clear();
                Ok((Taken::Operator { operator, trusted }, Some(change)))
            }
            change @ TrustChange::Recipient { .. } => {
                let TrustChange::Recipient { recipient, wrapped, .. } = change.clone() else {
                    return Ok((Taken::Known, None));
                };
                if self.recipients.len() >= MAX_RECIPIENT_CHANGES && !self.recipients.contains_key(&recipient) {
                    return Err(OrderError::Unreadable(format!(
                        "more than {MAX_RECIPIENT_CHANGES} changes of recovery recipients"
                    )));
                }
                if !self.authority.is_news(&change) {
                    return Ok((Taken::Known, None));
                }
                self.recipients.insert(recipient.clone(), order.clone());
                Ok((Taken::Recipient { recipient, wrapped }, Some(change)))
            }
        }
    }

    /// Takes in a change of trust a peer's hello carries: one already
    /// checked here (taken or refused) is not checked again.
    pub fn take_heard(&mut self, order: &SignedOrder) -> Result<Taken, OrderError> {
        if self.checked.contains(&order.0) {
            return Ok(Taken::Known);
        }
        let taken = self.take_change(order);
        if self.checked.len() >= CHECKED_MAX {
            self.checked.clear();
        }
        self.checked.insert(order.0.clone());
        taken
    }

    /// Takes in the change of trust `order`, if it holds; kept on disk
    /// before it is answered, or acted on, when it is new.
    pub fn take_change(&mut self, order: &SignedOrder) -> Result<Taken, OrderError> {
        let (taken, change) = self.take_in(order)?;
        if taken != Taken::Known {
            self.save();
        }
        if let Some(change) = change {
            self.authority.apply(&change);
        }
        Ok(taken)
    }

    /// Every change of trust, as hellos carry them: the operators' first
    /// (a revocation may be signed by a key one of them trusts).
    pub fn orders(&self) -> Vec<SignedOrder> {
        let revoked = self.by_peer.values().map(|(_, _, o)| o.clone());
        let rebound = self.rebinds.values().map(|(_, _, o)| o.clone());
        let recipients = self.recipients.values().cloned();
        self.operators.values().cloned().chain(recipients).chain(revoked).chain(rebound).collect()
    }

    /// (node, new peer, former peer, as of) of every rebind held.
    pub fn rebinds(&self) -> impl Iterator<Item = (&String, &String, &String, i64)> {
        self.rebinds.iter().map(|((n, f), (at, p, _))| (n, p, f, *at))
    }

    /// (peer, node, retired as of) of every revoked identity.
    pub fn revoked(&self) -> impl Iterator<Item = (&String, &String, Option<i64>)> {
        self.by_peer.iter().map(|(p, (n, r, _))| (p, n, *r))
    }

    /// Writes them whole: a staging file, synced, renamed over the old.
    fn save(&self) {
        let Some(file) = &self.file else { return };
        let text: String = self.orders().iter().map(|o| format!("{}\n", o.0)).collect();
        let written = crate::disk::write_atomic(file, text.as_bytes());
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
        let revoked = Taken::Revoked { node: "n4".into(), peer: "p4".into(), retired_ms: None };
        assert_eq!(r.take_change(&order), Ok(revoked));
        assert_eq!(r.take_change(&order), Ok(Taken::Known), "known already");
        let forged = OperatorKey::generate().unwrap().sign(Act::Revoke { node: "n1".into(), peer: "p1".into() }, 1);
        let forged = forged.unwrap();
        assert!(r.take_change(&forged).is_err());
        // Heard again in hellos: checked once, then passed over.
        assert!(r.take_heard(&forged).is_err());
        assert_eq!(r.take_heard(&forged), Ok(Taken::Known), "not checked again");
        let again = Revocations::load(auth, Some(file));
        assert_eq!(again.revoked().collect::<Vec<_>>(), vec![(&"p4".to_string(), &"n4".to_string(), None)]);
        assert_eq!(again.orders(), vec![order]);
    }

    #[test]
    fn a_retirement_adds_to_a_revocation_once() {
        let op = OperatorKey::generate().unwrap();
        let mut r = Revocations::load(Arc::new(Authority::new(&[op.public()]).unwrap()), None);
        let revoke = op.sign(Act::Revoke { node: "n4".into(), peer: "p4".into() }, 1).unwrap();
        let retire = op.sign(Act::Retire { node: "n4".into(), peer: "p4".into() }, 5).unwrap();
        assert_eq!(
            r.take_change(&revoke),
            Ok(Taken::Revoked { node: "n4".into(), peer: "p4".into(), retired_ms: None })
        );
        let retired = Taken::Revoked { node: "n4".into(), peer: "p4".into(), retired_ms: Some(5) };
        assert_eq!(r.take_change(&retire), Ok(retired));
        assert_eq!(r.take_change(&retire), Ok(Taken::Known));
        assert_eq!(r.take_change(&revoke), Ok(Taken::Known), "a revocation does not undo a retirement");
        assert_eq!(r.orders(), vec![retire]);
    }

    #[test]
    fn operators_are_trusted_and_no_longer_by_signed_changes_the_later_winning_and_kept() {
        let t = tempfile::tempdir().unwrap();
        let (a, b) = (OperatorKey::generate().unwrap(), OperatorKey::generate().unwrap());
        let auth = Arc::new(Authority::new(&[a.public()]).unwrap());
        let file = t.path().join("trust");
        let mut r = Revocations::load(auth.clone(), Some(file.clone()));
        let run = Act::Run(backmesh_api::JobKey { node: "n1".into(), path: "/p".into() });
        assert!(auth.check(&b.sign(run.clone(), 10).unwrap(), &run, "n1", 10).is_err(), "b is not trusted yet");
        let trust_b = a.sign(Act::Trust { operator: b.public() }, 100).unwrap();
        assert_eq!(r.take_change(&trust_b), Ok(Taken::Operator { operator: b.public(), trusted: true }));
        assert!(auth.check(&b.sign(run.clone(), 10).unwrap(), &run, "n1", 10).is_ok(), "b is trusted now");
        // b distrusts a; an older change of a's (trusting it) does not undo that.
        let distrust_a = b.sign(Act::Distrust { operator: a.public() }, 200).unwrap();
        assert_eq!(r.take_change(&distrust_a), Ok(Taken::Operator { operator: a.public(), trusted: false }));
        assert_eq!(auth.trusted(), vec![b.public()]);
        let stale = b.sign(Act::Trust { operator: a.public() }, 150).unwrap();
        assert_eq!(r.take_change(&stale), Ok(Taken::Known));
        // a, distrusted, changes nothing any more.
        let late = a.sign(Act::Trust { operator: OperatorKey::generate().unwrap().public() }, 300).unwrap();
        assert!(r.take_change(&late).is_err());
        // Kept: a node restarted from its config (a only) ends where it was.
        let fresh = Arc::new(Authority::new(&[a.public()]).unwrap());
        let _again = Revocations::load(fresh.clone(), Some(file));
        assert_eq!(fresh.trusted(), vec![b.public()]);
    }

    #[test]
    fn recovery_recipients_change_only_by_a_trusted_signature_the_later_winning_and_are_kept() {
        use backmesh_crypt::wrap::Identity;
        let t = tempfile::tempdir().unwrap();
        let op = OperatorKey::generate().unwrap();
        let configured = Identity::of_operator(&op.seed()).recipient();
        let offline = Identity::of_operator(&[7; 32]).recipient();
        let auth =
            Arc::new(Authority::new(&[op.public()]).unwrap().with_recovery(std::slice::from_ref(&configured)).unwrap());
        assert!(Authority::new(&[]).unwrap().with_recovery(&["age1nope".into()]).is_err());
        let file = t.path().join("revoked");
        let mut r = Revocations::load(auth.clone(), Some(file.clone()));
        let add = op.sign(Act::AddRecipient { recipient: offline.clone() }, 100).unwrap();
        assert_eq!(r.take_change(&add), Ok(Taken::Recipient { recipient: offline.clone(), wrapped: true }));
        let mut both = vec![configured.clone(), offline.clone()];
        both.sort();
        assert_eq!(auth.recovery(), both);
        // A stranger's signature, or a recipient that is none: refused.
        let thief = OperatorKey::generate().unwrap();
        let theirs = thief.sign(Act::AddRecipient { recipient: Identity::of_operator(&thief.seed()).recipient() }, 200);
        assert!(matches!(r.take_change(&theirs.unwrap()), Err(OrderError::Untrusted { .. })));
        let junk = op.sign(Act::AddRecipient { recipient: "age1nope".into() }, 200).unwrap();
        assert!(matches!(r.take_change(&junk), Err(OrderError::Unreadable(_))));
        assert_eq!(auth.recovery(), both);
        // The configured one removed; an older order adding it back changes nothing.
        let remove = op.sign(Act::RemoveRecipient { recipient: configured.clone() }, 300).unwrap();
        assert_eq!(r.take_change(&remove), Ok(Taken::Recipient { recipient: configured.clone(), wrapped: false }));
        let stale = op.sign(Act::AddRecipient { recipient: configured.clone() }, 250).unwrap();
        assert_eq!(r.take_change(&stale), Ok(Taken::Known));
        assert_eq!(auth.recovery(), vec![offline.clone()]);
        // Kept: a restart from the same config ends where it was.
        let fresh = Arc::new(Authority::new(&[op.public()]).unwrap().with_recovery(&[configured]).unwrap());
        let again = Revocations::load(fresh.clone(), Some(file));
        assert_eq!(fresh.recovery(), vec![offline]);
        assert_eq!(again.orders().len(), 2);
    }
}
