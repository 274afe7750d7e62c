//! Who may make this node act: its own operator through its API token, on
//! this node's own jobs and archives; anything else only under an order
//! signed by an operator key this node trusts (`backmesh_api::order`).
//! No node holds an operator's secret key, so no node's keys or token give
//! power over another node.
//!
//! [`Authority::admit`] is the one check every acting node makes: the
//! order opens under a trusted key, is for this act and this node, is
//! recent, and its nonce is new (kept for twice the allowed age, so a
//! replay is refused for as long as the order's time would pass).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Mutex, RwLock};

pub use backmesh_api::order::{Act, Order, OrderError, SignedOrder};

/// The operator keys a node trusts, and the nonces it has carried out.
#[derive(Debug, Default)]
pub struct Authority {
    /// Trusted by this node's config.
    configured: HashSet<String>,
    /// Operator-signed changes of that set: key → (when signed, trusted).
    changes: RwLock<HashMap<String, (i64, bool)>>,
    /// Recovery recipients (`age1…`) data keys are wrapped to, by config.
    recovery: HashSet<String>,
    /// Operator-signed changes of that set: recipient → (when signed, wrapped to).
    recovery_changes: RwLock<HashMap<String, (i64, bool)>>,
    /// (time, nonce) of orders carried out, oldest first.
    seen: Mutex<BTreeSet<(i64, String)>>,
}

/// A change of trust the operator signed: spread from node to node in
/// hellos, and kept (`net::revocations`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TrustChange {
    /// Refuse identity `peer` (node `node`'s key); `retired_ms`: and
    /// collect its series after the grace period, counted from then.
    Revoke { node: String, peer: String, retired_ms: Option<i64> },
    /// Node name `node` is identity `peer` from `at_ms` on, and was
    /// `former` before.
    Rebind { node: String, peer: String, former: String, at_ms: i64 },
    /// Trust operator key `operator`, or no longer (`trusted: false`), as of `at_ms`.
    Operator { operator: String, trusted: bool, at_ms: i64 },
    /// Wrap data keys to recovery recipient `recipient` (`age1…`), or no
    /// longer (`wrapped: false`), as of `at_ms`.
    Recipient { recipient: String, wrapped: bool, at_ms: i64 },
}

/// Nonces remembered at most (a flood of valid orders cannot grow memory
/// without bound; past it the oldest go, which are near their end anyway).
const SEEN_MAX: usize = 100_000;

impl Authority {
    /// Trusting `keys` (`bmop-…`); an unreadable key is refused by name.
    pub fn new(keys: &[String]) -> Result<Authority, String> {
        let mut trusted = HashSet::new();
        for k in keys {
            let key = backmesh_api::order::public_key(k)?;
            trusted.insert(backmesh_api::order::public_name(&key));
        }
        Ok(Authority { configured: trusted, ..Authority::default() })
    }

    /// Wrapping data keys to `recipients` (`age1…`, the operator's
    /// recovery keys) too; an unreadable one is refused by name.
    pub fn with_recovery(mut self, recipients: &[String]) -> Result<Authority, String> {
        for r in recipients {
            let r = backmesh_crypt::wrap::parse_recipient(r).map_err(|e| e.to_string())?;
            self.recovery.insert(r);
        }
        Ok(self)
    }

    /// Every recovery recipient data keys are wrapped to now.
    pub fn recovery(&self) -> Vec<String> {
        let changes = self.recovery_changes.read().unwrap_or_else(|p| p.into_inner());
        let mut keys: BTreeSet<String> = self.recovery.iter().filter(|k| !changes.contains_key(*k)).cloned().collect();
        keys.extend(changes.iter().filter(|(_, (_, w))| *w).map(|(k, _)| k.clone()));
        keys.into_iter().collect()
    }

    /// Whether operator key `operator` is trusted now.
    fn trusts(&self, operator: &str) -> bool {
        let changes = self.changes.read().unwrap_or_else(|p| p.into_inner());
        changes.get(operator).map_or(self.configured.contains(operator), |(_, t)| *t)
    }

    /// Every operator key trusted now.
    pub fn trusted(&self) -> Vec<String> {
        let changes = self.changes.read().unwrap_or_else(|p| p.into_inner());
        let mut keys: BTreeSet<String> =
            self.configured.iter().filter(|k| !changes.contains_key(*k)).cloned().collect();
        keys.extend(changes.iter().filter(|(_, (_, t))| *t).map(|(k, _)| k.clone()));
        keys.into_iter().collect()
    }

    /// Applies a change of the operator set or of the recovery
    /// recipients; `false` if a change of that key signed as late or later
    /// is known already.
    pub fn apply(&self, change: &TrustChange) -> bool {
        self.change(change, true)
    }

    /// Whether [`Authority::apply`] would take `change` (nothing signed as
    /// late or later for its key known yet), without taking it.
    pub fn is_news(&self, change: &TrustChange) -> bool {
        self.change(change, false)
    }

    fn change(&self, change: &TrustChange, take: bool) -> bool {
        let (set, key, on, at_ms) = match change {
            TrustChange::Operator { operator, trusted, at_ms } => (&self.changes, operator, *trusted, *at_ms),
            TrustChange::Recipient { recipient, wrapped, at_ms } => {
                (&self.recovery_changes, recipient, *wrapped, *at_ms)
            }
            TrustChange::Revoke { .. } | TrustChange::Rebind { .. } => return false,
        };
        let mut changes = set.write().unwrap_or_else(|p| p.into_inner());
        match changes.get(key) {
            Some((t, _)) if *t >= at_ms => false,
            _ => {
                if take {
                    changes.insert(key.clone(), (at_ms, on));
                }
                true
            }
        }
    }

    /// Whether any operator key is trusted.
    pub fn has_operators(&self) -> bool {
        !self.trusted().is_empty()
    }

    /// How many operator keys are trusted.
    pub fn operators(&self) -> usize {
        self.trusted().len()
    }

    /// The order in `signed` if node `me` is to carry out `act` under it
    /// now (`now_ms`): its nonce is then spent.
    pub fn admit(&self, signed: &SignedOrder, act: &Act, me: &str, now_ms: i64) -> Result<Order, OrderError> {
        let order = self.check(signed, act, me, now_ms)?;
        #[allow(clippy::unwrap_used)]
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let horizon = now_ms - 2 * backmesh_api::order::ORDER_MAX_AGE_MS;
        while seen.first().is_some_and(|(t, _)| *t < horizon) || seen.len() >= SEEN_MAX {
            seen.pop_first();
        }
        if !seen.insert((order.at_ms, order.nonce.clone())) {
            return Err(OrderError::Replayed);
        }
        Ok(order)
    }

    /// [`Authority::admit`] without spending the nonce: for reads that an
    /// order allows for as long as it is recent.
    pub fn check(&self, signed: &SignedOrder, act: &Act, me: &str, now_ms: i64) -> Result<Order, OrderError> {
        if !self.has_operators() {
            return Err(OrderError::NoOperator { me: me.to_string() });
        }
        let order = signed.open()?;
        if !self.trusts(&order.operator) {
            return Err(OrderError::Untrusted { operator: order.operator });
        }
        backmesh_api::order::fits(&order, act, me, now_ms)?;
        Ok(order)
    }
}

impl crate::error::Transient for OrderError {
    fn retry(&self) -> crate::error::Retry {
        crate::error::Retry::Never
    }
}

/// How long an order to restore or fetch lets its node read the series
/// from holders: a restore of a large tree takes hours, and the reader is
/// bound to the order (only the node it names may use it).
pub const READ_WINDOW_MS: i64 = 24 * 3600 * 1000;

impl Authority {
    /// The order in `signed` if it lets node `reader` read series (node,
    /// path) now: an operator's order, under a key this node trusts, to
    /// restore that series on `reader` or fetch it through `reader`,
    /// signed less than [`READ_WINDOW_MS`] ago. Nothing is spent.
    pub fn check_read(
        &self,
        signed: &SignedOrder,
        reader: &str,
        node: &str,
        path: &str,
        now_ms: i64,
    ) -> Result<Order, OrderError> {
        if !self.has_operators() {
            return Err(OrderError::NoOperator { me: reader.to_string() });
        }
        let order = signed.open()?;
        if !self.trusts(&order.operator) {
            return Err(OrderError::Untrusted { operator: order.operator });
        }
        let of_series = match &order.act {
            Act::Restore(r) => r.node == node && r.path == path,
            Act::Fetch { node: n, path: p, .. } => n == node && p == path,
            _ => false,
        };
        if !of_series {
            return Err(OrderError::OtherAct {
                ordered: order.act.name().to_string(),
                asked: format!("read {path} of {node}"),
            });
        }
        if order.act.actor() != Some(reader) {
            let ordered = order.act.actor().unwrap_or("every node").to_string();
            return Err(OrderError::OtherNode { ordered, me: reader.to_string() });
        }
        let age = now_ms - order.at_ms;
        if !(-backmesh_api::order::ORDER_MAX_AGE_MS..=READ_WINDOW_MS).contains(&age) {
            return Err(OrderError::Stale { age_s: age / 1000 });
        }
        Ok(order)
    }
}

impl Authority {
    /// The change of trust in `signed`, if it holds: signed by an operator
    /// key trusted now. Like a revocation, it holds whenever it is seen.
    pub fn check_trust_change(&self, signed: &SignedOrder) -> Result<TrustChange, OrderError> {
        if !self.has_operators() {
            return Err(OrderError::NoOperator { me: "this node".into() });
        }
        let order = signed.open()?;
        if !self.trusts(&order.operator) {
            return Err(OrderError::Untrusted { operator: order.operator });
        }
        let at_ms = order.at_ms;
        match order.act {
            Act::Revoke { node, peer } => Ok(TrustChange::Revoke { node, peer, retired_ms: None }),
            Act::Retire { node, peer } => Ok(TrustChange::Revoke { node, peer, retired_ms: Some(at_ms) }),
            Act::Rebind { peer, former, .. } if peer == former => {
                Err(OrderError::Unreadable("a rebind to the same identity".into()))
            }
            Act::Rebind { node, peer, former } => Ok(TrustChange::Rebind { node, peer, former, at_ms }),
            Act::Trust { operator } | Act::Distrust { operator }
                if backmesh_api::order::public_key(&operator).is_err() =>
            {
                Err(OrderError::Unreadable(format!("`{operator}` is not an operator public key")))
            }
            Act::Trust { operator } => Ok(TrustChange::Operator { operator, trusted: true, at_ms }),
            Act::Distrust { operator } => Ok(TrustChange::Operator { operator, trusted: false, at_ms }),
            Act::AddRecipient { recipient } | Act::RemoveRecipient { recipient }
                if backmesh_crypt::wrap::parse_recipient(&recipient).as_deref() != Ok(recipient.as_str()) =>
            {
                Err(OrderError::Unreadable(format!("`{recipient}` is not an age recipient (age1…)")))
            }
            Act::AddRecipient { recipient } => Ok(TrustChange::Recipient { recipient, wrapped: true, at_ms }),
            Act::RemoveRecipient { recipient } => Ok(TrustChange::Recipient { recipient, wrapped: false, at_ms }),
            other => Err(OrderError::OtherAct { ordered: other.name().into(), asked: "a change of trust".into() }),
        }
    }
}

/// What a node says to a peer that asks it to act without an order.
pub fn needs_order(me: &str, act: &str) -> String {
    format!(
        "node {me} does not {act} for another node without the operator's order: sign the command with the \
         operator key (`backmesh --operator-key FILE …`; `backmesh operator init` makes one)"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use backmesh_api::jobs::JobKey;
    use backmesh_api::order::OperatorKey;

    #[test]
    fn only_a_trusted_key_acts_and_only_once() {
        let op = OperatorKey::generate().unwrap();
        let stranger = OperatorKey::generate().unwrap();
        let auth = Authority::new(&[op.public()]).unwrap();
        let act = Act::Run(JobKey { node: "n1".into(), path: "/srv".into() });
        let now = 10_000_000;
        let order = op.sign(act.clone(), now).unwrap();
        assert!(auth.admit(&order, &act, "n1", now + 1000).is_ok());
        assert_eq!(auth.admit(&order, &act, "n1", now + 2000), Err(OrderError::Replayed));
        let theirs = stranger.sign(act.clone(), now).unwrap();
        assert!(matches!(auth.admit(&theirs, &act, "n1", now), Err(OrderError::Untrusted { .. })));
        let none = Authority::new(&[]).unwrap();
        let fresh = op.sign(act.clone(), now).unwrap();
        let err = none.admit(&fresh, &act, "n1", now).unwrap_err();
        assert!(err.to_string().contains("operator-key"), "{err}");
        assert!(Authority::new(&["bmop-zz".into()]).is_err());
        // A read checks without spending: twice is fine.
        assert!(auth.check(&fresh, &act, "n1", now).is_ok() && auth.check(&fresh, &act, "n1", now).is_ok());
    }

    #[test]
    fn a_revocation_holds_whenever_it_is_seen_under_a_trusted_key_only() {
        let op = OperatorKey::generate().unwrap();
        let auth = Authority::new(&[op.public()]).unwrap();
        let act = Act::Revoke { node: "n4".into(), peer: "12D3KooW-n4".into() };
        let years_ago = op.sign(act.clone(), 0).unwrap();
        let revoke = TrustChange::Revoke { node: "n4".into(), peer: "12D3KooW-n4".into(), retired_ms: None };
        assert_eq!(auth.check_trust_change(&years_ago), Ok(revoke.clone()));
        assert_eq!(auth.check_trust_change(&years_ago), Ok(revoke), "again: the same");
        let stranger = OperatorKey::generate().unwrap().sign(act, 0).unwrap();
        assert!(matches!(auth.check_trust_change(&stranger), Err(OrderError::Untrusted { .. })));
        let run = op.sign(Act::Run(JobKey { node: "n4".into(), path: "/".into() }), 0).unwrap();
        assert!(matches!(auth.check_trust_change(&run), Err(OrderError::OtherAct { .. })));
    }

    #[test]
    fn an_order_to_restore_or_fetch_lets_its_node_alone_read_that_series_for_a_day() {
        let op = OperatorKey::generate().unwrap();
        let auth = Authority::new(&[op.public()]).unwrap();
        let restore = Act::Restore(backmesh_api::Restore {
            node: "n1".into(),
            path: "/srv".into(),
            archive: None,
            to: "/restore".into(),
            on: Some("n2".into()),
            overwrite: false,
            key: None,
            include: Vec::new(),
        });
        let now = 50_000_000;
        let order = op.sign(restore, now).unwrap();
        let hour = 3_600_000;
        assert!(auth.check_read(&order, "n2", "n1", "/srv", now + 5 * hour).is_ok());
        assert!(auth.check_read(&order, "n2", "n1", "/srv", now + 5 * hour).is_ok(), "not spent");
        assert!(matches!(auth.check_read(&order, "n3", "n1", "/srv", now), Err(OrderError::OtherNode { .. })));
        assert!(matches!(auth.check_read(&order, "n2", "n1", "/etc", now), Err(OrderError::OtherAct { .. })));
        assert!(matches!(auth.check_read(&order, "n2", "n1", "/srv", now + 25 * hour), Err(OrderError::Stale { .. })));
        let fetch = Act::Fetch { node: "n1".into(), path: "/srv".into(), archive: None, by: "n3".into() };
        assert!(auth.check_read(&op.sign(fetch, now).unwrap(), "n3", "n1", "/srv", now).is_ok());
        let run = Act::Run(JobKey { node: "n1".into(), path: "/srv".into() });
        assert!(auth.check_read(&op.sign(run, now).unwrap(), "n1", "n1", "/srv", now).is_err(), "a run is no read");
    }
}
