//! Gossiped entries: taken in only under their origin's signature and
//! within its authority; what is refused is blamed on whoever did wrong.

use std::collections::BTreeMap;

use actix::{Context, Handler};

use crate::log::entry::Entry;
use crate::log::mesh::MeshState;
use crate::log::proto::MAX_LOG;
use crate::log::signing::{sealed_records_of, Checked, NodeKeys};
use crate::net::actor::Misbehaved;
use crate::net::client::Verdict;
use crate::seal::key_of_peer;
use crate::store::KvStore;

use super::messages::*;
use super::*;

impl LogActor {
    /// Takes in a gossiped entry if its origin signed it and wrote only
    /// what it may; what the node makes of it, and who did wrong if
    /// anyone. A signature that does not hold is the relaying peer's doing
    /// (an honest node relays only what it checked, and every node checks
    /// a signature alike); an entry its origin signed but may not write is
    /// the origin's.
    pub(crate) fn take_gossip(&mut self, msg: Gossiped) -> (Verdict, Option<Misbehaved>) {
        let e = match crate::codec::decode::<Entry>(&msg.data, MAX_LOG) {
            Ok(e) if e.seq > 0 => e,
            Ok(_) => return (Verdict::Ignore, None),
            Err(err) => {
                tracing::warn!("dropped a log message relayed by {} that this version cannot read: {err}", msg.from);
                return (Verdict::Ignore, None);
            }
        };
        match self.refusal(&e) {
            Some(Refusal::Forged(what)) => return (Verdict::Reject, Some(Misbehaved { peer: msg.from, what })),
            Some(Refusal::OutOfAuthority(what)) => {
                return (Verdict::Reject, Some(Misbehaved { peer: e.origin.clone(), what }))
            }
            Some(Refusal::Unsigned) => {
                tracing::debug!("dropped an unsigned log entry of {} (an older backmesh)", e.origin_name);
                return (Verdict::Ignore, None);
            }
            None => {}
        }
        if let Err(err) = self.take_in(&e) {
            tracing::error!("cannot store a log entry from {}: {err}", e.origin_name);
            return (Verdict::Ignore, None);
        }
        (Verdict::Accept, None)
    }
}

impl Handler<TakeEntry> for LogActor {
    type Result = Result<(), String>;
    fn handle(&mut self, TakeEntry(e): TakeEntry, _: &mut Context<Self>) -> Self::Result {
        match self.refusal(&e) {
            Some(Refusal::Forged(what) | Refusal::OutOfAuthority(what)) => return Err(what),
            Some(Refusal::Unsigned) => return Err(format!("an unsigned entry of {}", e.origin_name)),
            None => {}
        }
        self.take_in(&e).map_err(|err| format!("cannot store the entry of {}: {err}", e.origin_name))
    }
}

/// The keys of nodes by name, as this node knows them: the key a name is
/// bound to in its store, else the one peer whose sealed origin record
/// claims that name (looked up once per batch).
pub(crate) struct BoundKeys<'a> {
    kv: &'a dyn KvStore,
    state: &'a MeshState,
    /// The checking node's own name, when it checks for itself.
    me: Option<&'a str>,
    known: std::cell::RefCell<BTreeMap<String, Option<libp2p::identity::PublicKey>>>,
}

impl<'a> BoundKeys<'a> {
    pub(crate) fn new(kv: &'a dyn KvStore, state: &'a MeshState) -> Self {
        BoundKeys { kv, state, me: None, known: Default::default() }
    }

    /// Checking for node `me` ([`NodeKeys::own_name`]).
    pub(crate) fn for_node(mut self, me: &'a str) -> Self {
        self.me = Some(me);
        self
    }
}

impl NodeKeys for BoundKeys<'_> {
    fn key_of(&self, name: &str) -> Option<libp2p::identity::PublicKey> {
        if let Some(k) = self.known.borrow().get(name) {
            return k.clone();
        }
        let peer = match crate::store::origin_bound(self.kv, name) {
            Ok(Some(peer)) => Some(peer),
            Ok(None) => {
                let claims: Vec<String> =
                    self.state.origin_names().into_iter().filter(|(_, n)| n == name).map(|(p, _)| p).collect();
                (claims.len() == 1).then(|| claims[0].clone())
            }
            Err(err) => {
                tracing::warn!("cannot read who node {name} is: {err}");
                None
            }
        };
        let key = peer.as_deref().and_then(key_of_peer);
        self.known.borrow_mut().insert(name.to_string(), key.clone());
        key
    }

    fn own_name(&self) -> Option<&str> {
        self.me
    }

    fn former_keys(&self, name: &str) -> Vec<libp2p::identity::PublicKey> {
        let was = crate::store::origin_former(self.kv, name).unwrap_or_default();
        was.iter().filter_map(|(p, _)| key_of_peer(p)).collect()
    }
}

/// The key of an entry's origin under its own name: every register an
/// entry writes is its origin's (its authority is checked apart).
struct OriginKey<'a>(&'a Entry);

impl NodeKeys for OriginKey<'_> {
    fn key_of(&self, name: &str) -> Option<libp2p::identity::PublicKey> {
        (name == self.0.origin_name).then(|| key_of_peer(&self.0.origin)).flatten()
    }
}

/// Why a peer's entry is not taken in.
pub(crate) enum Refusal {
    /// Not signed at all: written by a node older than signatures (its
    /// hellos name its protocol), so no one is blamed.
    Unsigned,
    /// Its signature or a seal does not hold: forged or altered.
    Forged(String),
    /// Signed by its origin, but written out of its authority.
    OutOfAuthority(String),
}

impl LogActor {
    /// Why a peer's entry `e` is refused, if it is: written out of its
    /// origin's authority, not signed by its origin, or without its
    /// origin's seal of every register it writes.
    pub(crate) fn refusal(&self, e: &Entry) -> Option<Refusal> {
        if !e.sig.is_sealed() {
            return Some(Refusal::Unsigned);
        }
        // The signature first: only then is the entry its origin's doing.
        if !e.signed_by_origin() {
            return Some(Refusal::Forged(format!(
                "a log entry in the name of {} ({}, seq {}) that it did not sign",
                e.origin_name, e.origin, e.seq
            )));
        }
        if let Err(bad) = e.event.check_names().and_then(|()| backmesh_api::names::check_node_name(&e.origin_name)) {
            return Some(Refusal::OutOfAuthority(format!(
                "a `{}` entry (seq {}) that names what no node may: {bad}",
                e.event.kind(),
                e.seq
            )));
        }
        if let Some(what) = self.out_of_authority(e) {
            return Some(Refusal::OutOfAuthority(what));
        }
        self.unsealed(e).map(Refusal::Forged)
    }

    /// What is wrong with a peer's entry `e` if it does not carry its
    /// origin's seal of every register it writes (the seals are not under
    /// the entry's signature: whoever sent them is to blame).
    fn unsealed(&self, e: &Entry) -> Option<String> {
        // Checked against nothing held: only the entry's own few seals are
        // verified, not every register of the records it touches.
        let (nothing, mut found) = (MeshState::new(), Checked::default());
        for (k, mut r) in sealed_records_of(e) {
            nothing.check(&k, &mut r, &OriginKey(e), &mut found);
        }
        if found.forged.is_empty() && found.unproven == 0 {
            return None;
        }
        Some(format!(
            "a log entry of {} (seq {}) whose seals do not hold: {}",
            e.origin_name,
            e.seq,
            if found.forged.is_empty() { "some are missing".to_string() } else { found.forged.join(", ") }
        ))
    }
}

impl Handler<Gossiped> for LogActor {
    type Result = ();
    fn handle(&mut self, msg: Gossiped, _: &mut Context<Self>) {
        let (id, from) = (msg.id.clone(), msg.from.clone());
        let (verdict, misdeed) = self.take_gossip(msg);
        self.net.report_gossip(id, from, verdict);
        if let (Some(misdeed), Some(to)) = (misdeed, &self.misdeeds) {
            to.do_send(misdeed);
        }
    }
}
