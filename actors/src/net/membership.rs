//! The membership view: who is in the mesh, up or down, with what name,
//! site and free space. Pure: every method takes the current time and
//! returns what changed; the membership actor does the logging and IO.
//!
//! A peer is *up* while it has been heard from (ping, hello) within
//! `down_after`; *down* after that, and up again when heard from. Two peers
//! that claim one name are both reported, never merged.

use std::collections::{BTreeMap, BTreeSet};

use backmesh_api::NodeStatus;
use serde::{Deserialize, Serialize};

/// What a node says about itself in a hello.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub name: String,
    pub site: String,
    pub free_bytes: u64,
    /// Mesh address, `host:port`.
    pub address: String,
    pub version: String,
    /// The fingerprint of the swarm key it dials with (never the key), so
    /// that a rotation shows which nodes have the new key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub swarm_key: Option<String>,
    /// The age recipient (`age1…`) its data key is wrapped to, derived
    /// from its identity key: what a key is re-wrapped to for a restore
    /// there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipient: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct PeerState {
    info: Option<NodeInfo>,
    last_seen_ms: Option<i64>,
    up: bool,
}

/// A peer as placement sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerView {
    pub peer_id: String,
    pub name: String,
    pub free_bytes: u64,
    pub up: bool,
    pub last_seen_ms: i64,
}

/// A transition worth telling an operator about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    Up { peer: String, name: String },
    Down { peer: String, name: String },
    NameConflict { name: String, peers: Vec<String> },
}

/// Misbehaving peers remembered at most.
pub const MISDEEDS_KEPT: usize = 1024;

#[derive(Clone, Debug)]
pub struct Membership {
    me_peer: String,
    me: NodeInfo,
    peers: BTreeMap<String, PeerState>,
    down_after_ms: i64,
    reported_conflicts: BTreeSet<String>,
    /// Name → the peers that claim it (this node included), kept as hellos
    /// come: a hello costs O(log N), not a pass over every peer (each peer
    /// says hello every few seconds; at 10,000 nodes a pass each time would
    /// be 10⁸ steps a period).
    by_name: BTreeMap<String, BTreeSet<String>>,
    /// Peers that sent what this node refused (forged, unsealed, out of
    /// their authority): how many times, and the last.
    misdeeds: BTreeMap<String, (u64, String)>,
    /// Peers that went past a bound of this node's (connections, requests
    /// in flight, storage quota): how many times, and the last.
    limited: BTreeMap<String, (u64, String)>,
    /// Peers that speak another mesh protocol, and what they said.
    incompatible: BTreeMap<String, String>,
    /// Peers the operator revoked, and their nodes' names: out of every
    /// view, never heard again.
    revoked: BTreeMap<String, String>,
}

impl Membership {
    pub fn new(me_peer: String, me: NodeInfo, down_after_ms: i64) -> Self {
        let by_name = BTreeMap::from([(me.name.clone(), BTreeSet::from([me_peer.clone()]))]);
        Membership {
            me_peer,
            me,
            peers: BTreeMap::new(),
            down_after_ms,
            reported_conflicts: BTreeSet::new(),
            by_name,
            misdeeds: BTreeMap::new(),
            limited: BTreeMap::new(),
            incompatible: BTreeMap::new(),
            revoked: BTreeMap::new(),
        }
    }

    /// The operator revoked `peer` (node `node`): it leaves every view (and
    /// so placement) and is heard no more. Down, if it was up.
    pub fn revoke(&mut self, peer: &str, node: &str) -> Vec<Change> {
        if self.revoked.len() < MISDEEDS_KEPT || self.revoked.contains_key(peer) {
            self.revoked.insert(peer.to_string(), node.to_string());
        }
        let was = self.peers.remove(peer);
        if let Some(info) = was.as_ref().and_then(|s| s.info.as_ref()) {
            if let Some(claims) = self.by_name.get_mut(&info.name) {
                claims.remove(peer);
                if claims.is_empty() {
                    self.by_name.remove(&info.name);
                }
            }
        }
        match was {
            Some(state) if state.up => vec![Change::Down { peer: peer.to_string(), name: node.to_string() }],
            _ => Vec::new(),
        }
    }

    pub fn me(&self) -> &NodeInfo {
        &self.me
    }

    pub fn set_free_bytes(&mut self, free: u64) {
        self.me.free_bytes = free;
    }

    /// The fingerprint of the swarm key this node dials with now.
    pub fn set_swarm_key(&mut self, fingerprint: Option<String>) {
        self.me.swarm_key = fingerprint;
    }

    fn name_of(&self, peer: &str) -> String {
        self.peers.get(peer).and_then(|p| p.info.as_ref()).map(|i| i.name.clone()).unwrap_or_else(|| short(peer))
    }

    /// The peer was heard from (a ping answered, a message received).
    pub fn seen(&mut self, peer: &str, now_ms: i64) -> Vec<Change> {
        if peer == self.me_peer || self.revoked.contains_key(peer) {
            return Vec::new();
        }
        let state =
            self.peers.entry(peer.to_string()).or_insert(PeerState { info: None, last_seen_ms: None, up: false });
        state.last_seen_ms = Some(now_ms);
        // Up only once we know who it is: a hello carries its name.
        if !state.up && state.info.is_some() {
            state.up = true;
            return vec![Change::Up { peer: peer.to_string(), name: self.name_of(peer) }];
        }
        Vec::new()
    }

    /// The peer said who it is.
    pub fn hello(&mut self, peer: &str, info: NodeInfo, now_ms: i64) -> Vec<Change> {
        if peer == self.me_peer || self.revoked.contains_key(peer) {
            return Vec::new();
        }
        // A hello reaches here only in this node's protocol.
        self.incompatible.remove(peer);
        let state =
            self.peers.entry(peer.to_string()).or_insert(PeerState { info: None, last_seen_ms: None, up: false });
        let renamed = state.info.as_ref().map(|i| i.name.clone()).filter(|old| *old != info.name);
        let name = info.name.clone();
        let new_claim = state.info.is_none() || renamed.is_some();
        state.info = Some(info);
        if let Some(old) = renamed {
            if let Some(claims) = self.by_name.get_mut(&old) {
                claims.remove(peer);
                if claims.is_empty() {
                    self.by_name.remove(&old);
                }
            }
        }
        if new_claim {
            self.by_name.entry(name.clone()).or_default().insert(peer.to_string());
        }
        let mut changes = self.seen(peer, now_ms);
        changes.extend(self.new_conflict(&name));
        changes
    }

    /// `peer` sent something this node refused; `true` the first time (to
    /// be logged once, then counted). At most [`MISDEEDS_KEPT`] peers are
    /// remembered: a flood of fresh peer ids cannot grow the view.
    pub fn misbehaved(&mut self, peer: &str, what: &str) -> bool {
        count(&mut self.misdeeds, peer, what)
    }

    /// `peer` went past one of this node's bounds; `true` the first time
    /// (to be logged once, then counted). Kept for at most
    /// [`MISDEEDS_KEPT`] peers, as misdeeds are.
    pub fn limited(&mut self, peer: &str, what: &str) -> bool {
        count(&mut self.limited, peer, what)
    }

    /// `peer` speaks another mesh protocol (`what` says which): down from
    /// now on, until it says hello in this one. With `None`: it speaks
    /// this one again.
    pub fn incompatible(&mut self, peer: &str, what: Option<String>) -> Vec<Change> {
        let Some(what) = what else {
            self.incompatible.remove(peer);
            return Vec::new();
        };
        if self.incompatible.len() < MISDEEDS_KEPT || self.incompatible.contains_key(peer) {
            self.incompatible.insert(peer.to_string(), what);
        }
        match self.peers.get_mut(peer) {
            Some(state) if state.up => {
                state.up = false;
                state.last_seen_ms = None;
                let name = state.info.as_ref().map(|i| i.name.clone()).unwrap_or_else(|| short(peer));
                vec![Change::Down { peer: peer.to_string(), name }]
            }
            _ => Vec::new(),
        }
    }

    /// Marks peers not heard from within `down_after` as down.
    pub fn tick(&mut self, now_ms: i64) -> Vec<Change> {
        let mut changes = Vec::new();
        let down_after = self.down_after_ms;
        for (peer, state) in self.peers.iter_mut() {
            let silent = state.last_seen_ms.is_none_or(|t| now_ms - t > down_after);
            if state.up && silent {
                state.up = false;
                let name = state.info.as_ref().map(|i| i.name.clone()).unwrap_or_else(|| short(peer));
                changes.push(Change::Down { peer: peer.clone(), name });
            }
        }
        changes
    }

    /// Every peer that has said who it is, for placement.
    pub fn peers(&self) -> Vec<PeerView> {
        self.peers
            .iter()
            .filter_map(|(peer, s)| {
                let info = s.info.as_ref()?;
                Some(PeerView {
                    peer_id: peer.clone(),
                    name: info.name.clone(),
                    free_bytes: info.free_bytes,
                    up: s.up,
                    last_seen_ms: s.last_seen_ms.unwrap_or(0),
                })
            })
            .collect()
    }

    pub fn me_peer(&self) -> &str {
        &self.me_peer
    }

    pub fn is_up(&self, peer: &str) -> bool {
        self.peers.get(peer).is_some_and(|p| p.up)
    }

    /// Names claimed by more than one peer id (this node included).
    pub fn conflicts(&self) -> BTreeMap<String, Vec<String>> {
        let mut by_name: BTreeMap<String, Vec<String>> = BTreeMap::new();
        by_name.entry(self.me.name.clone()).or_default().push(self.me_peer.clone());
        for (peer, state) in &self.peers {
            if let Some(info) = &state.info {
                by_name.entry(info.name.clone()).or_default().push(peer.clone());
            }
        }
        by_name.retain(|_, peers| peers.len() > 1);
        by_name
    }

    /// A conflict over `name` not reported before, if there is one now.
    fn new_conflict(&mut self, name: &str) -> Option<Change> {
        let claims = self.by_name.get(name).filter(|c| c.len() > 1)?;
        if !self.reported_conflicts.insert(name.to_string()) {
            return None;
        }
        Some(Change::NameConflict { name: name.to_string(), peers: claims.iter().cloned().collect() })
    }

    /// The view for `status`: this node first, then peers by name.
    pub fn view(&self, last_seen: impl Fn(i64) -> String) -> Vec<NodeStatus> {
        let conflicts = self.conflicts();
        let conflict_note = |name: &str, peer: &str| {
            conflicts.get(name).map(|peers| {
                let others: Vec<String> = peers.iter().filter(|p| *p != peer).map(|p| short(p)).collect();
                format!("name `{name}` is also claimed by {}", others.join(", "))
            })
        };
        let mut out = vec![NodeStatus {
            name: self.me.name.clone(),
            peer_id: self.me_peer.clone(),
            address: self.me.address.clone(),
            up: true,
            free_bytes: self.me.free_bytes,
            site: self.me.site.clone(),
            last_seen: None,
            this_node: true,
            conflict: conflict_note(&self.me.name, &self.me_peer),
            refused: 0,
            limited: 0,
            recipient: self.me.recipient.clone(),
        }];
        let mut peers: Vec<NodeStatus> = self
            .peers
            .iter()
            .filter_map(|(peer, s)| {
                let info = s.info.as_ref()?;
                Some(NodeStatus {
                    name: info.name.clone(),
                    peer_id: peer.clone(),
                    address: info.address.clone(),
                    up: s.up,
                    free_bytes: info.free_bytes,
                    site: info.site.clone(),
                    last_seen: s.last_seen_ms.map(&last_seen),
                    this_node: false,
                    conflict: conflict_note(&info.name, peer),
                    refused: self.misdeeds.get(peer).map(|(n, _)| *n).unwrap_or(0),
                    limited: self.limited.get(peer).map(|(n, _)| *n).unwrap_or(0),
                    recipient: info.recipient.clone(),
                })
            })
            .collect();
        peers.sort_by(|a, b| (&a.name, &a.peer_id).cmp(&(&b.name, &b.peer_id)));
        out.extend(peers);
        out
    }

    /// Up peers that dial with another swarm key than this node (a
    /// rotation under way), by key.
    fn other_swarm_keys(&self) -> Option<String> {
        let mine = self.me.swarm_key.as_ref()?;
        let mut others: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for s in self.peers.values().filter(|s| s.up) {
            if let Some(info) = &s.info {
                // A fingerprint is 32 hex digits: anything else a peer says
                // there is not shown.
                let fingerprint = |k: &str| k.len() == 32 && k.bytes().all(|b| b.is_ascii_hexdigit());
                match &info.swarm_key {
                    Some(k) if k != mine && fingerprint(k) => {
                        others.entry(k.as_str()).or_default().push(info.name.as_str())
                    }
                    _ => {}
                }
            }
        }
        if others.is_empty() {
            return None;
        }
        let listed: Vec<String> = others
            .iter_mut()
            .map(|(key, names)| {
                names.sort_unstable();
                format!("{} with the key of fingerprint {key}", names.join(", "))
            })
            .collect();
        Some(format!(
            "swarm key rotation under way: this node dials with the key of fingerprint {mine}, {}",
            listed.join("; ")
        ))
    }

    /// Problems with the mesh a person should see.
    pub fn problems(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .conflicts()
            .into_iter()
            .map(|(name, peers)| {
                format!(
                    "{} nodes claim the name `{name}` ({}); give each node a unique --name",
                    peers.len(),
                    peers.iter().map(|p| short(p)).collect::<Vec<_>>().join(", ")
                )
            })
            .collect();
        for (peer, (n, last)) in &self.misdeeds {
            out.push(format!(
                "{} ({peer}) sent what this node refused, {n} time(s); the last: {last}",
                self.name_of(peer)
            ));
        }
        for (peer, (n, last)) in &self.limited {
            out.push(format!(
                "{} ({peer}) went past this node's limits, {n} time(s), and was refused the excess; the last: it {last}",
                self.name_of(peer)
            ));
        }
        for (peer, what) in &self.incompatible {
            out.push(format!("{peer} is refused: {what}"));
        }
        for (peer, node) in &self.revoked {
            out.push(format!("node {node} ({peer}) is revoked by the operator: its connections are refused"));
        }
        out.extend(self.other_swarm_keys());
        out
    }
}

/// Counts one more of `peer`'s in `book`, keeping `what` as the last;
/// `true` the first time. A full book (at [`MISDEEDS_KEPT`] peers) takes
/// no new peer: a flood of fresh peer ids cannot grow it.
fn count(book: &mut BTreeMap<String, (u64, String)>, peer: &str, what: &str) -> bool {
    if let Some((n, last)) = book.get_mut(peer) {
        *n += 1;
        *last = what.to_string();
        return false;
    }
    if book.len() >= MISDEEDS_KEPT {
        return false;
    }
    book.insert(peer.to_string(), (1, what.to_string()));
    true
}

/// The last 8 characters of a peer id: enough to tell peers apart in text.
pub fn short(peer: &str) -> String {
    let n = peer.len();
    format!("…{}", &peer[n.saturating_sub(8)..])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(name: &str) -> NodeInfo {
        NodeInfo {
            name: name.into(),
            site: "lab".into(),
            free_bytes: 100,
            address: "127.0.0.1:1".into(),
            version: "0".into(),
            swarm_key: None,
            recipient: None,
        }
    }

    fn m() -> Membership {
        Membership::new("ME".into(), info("me"), 3_000)
    }

    #[test]
    fn peers_on_another_swarm_key_are_named_and_nothing_else_a_peer_says_there() {
        let mut m = m();
        m.set_swarm_key(Some("a".repeat(32)));
        let key = |k: &str| NodeInfo { swarm_key: Some(k.to_string()), ..info("n2") };
        m.hello("P2", key(&"a".repeat(32)), 0);
        assert!(!m.problems().iter().any(|p| p.contains("rotation")), "same key: {:?}", m.problems());
        m.hello("P2", key("not a fingerprint, but a long message to operators"), 1);
        assert!(!m.problems().iter().any(|p| p.contains("rotation")), "{:?}", m.problems());
        m.hello("P2", key(&"b".repeat(32)), 2);
        let p = m.problems();
        assert!(
            p.iter().any(|p| p.contains("rotation under way") && p.contains("n2") && p.contains(&"b".repeat(32))),
            "{p:?}"
        );
    }

    #[test]
    fn a_revoked_peer_leaves_every_view_and_is_heard_no_more() {
        let mut m = m();
        m.hello("P1", info("a"), 0);
        m.hello("P2", info("b"), 0);
        assert_eq!(m.revoke("P1", "a"), vec![Change::Down { peer: "P1".into(), name: "a".into() }]);
        assert!(m.hello("P1", info("a"), 10).is_empty() && m.seen("P1", 20).is_empty());
        assert_eq!(m.peers().iter().map(|p| p.name.as_str()).collect::<Vec<_>>(), ["b"]);
        assert!(m.problems().iter().any(|p| p.contains("node a (P1) is revoked")), "{:?}", m.problems());
        // Its name is free for a rebuilt server under a new key.
        assert!(m.conflicts().is_empty());
    }

    #[test]
    fn a_peer_is_up_once_it_says_hello_and_down_after_silence() {
        let mut m = m();
        assert!(m.seen("P1", 0).is_empty(), "not up before a hello");
        assert_eq!(m.hello("P1", info("a"), 100), vec![Change::Up { peer: "P1".into(), name: "a".into() }]);
        assert!(m.tick(3_100).is_empty(), "within down_after");
        assert_eq!(m.tick(3_101), vec![Change::Down { peer: "P1".into(), name: "a".into() }]);
        assert!(m.tick(10_000).is_empty(), "down is reported once");
        assert!(!m.is_up("P1"));
        assert_eq!(m.seen("P1", 10_001), vec![Change::Up { peer: "P1".into(), name: "a".into() }]);
        assert!(m.is_up("P1"));
    }

    #[test]
    fn table_of_transitions() {
        // (events, expected up after them) with down_after = 3000
        type Step = (&'static str, i64);
        let cases: &[(&[Step], bool)] = &[
            (&[("hello", 0)], true),
            (&[("hello", 0), ("tick", 2_999)], true),
            (&[("hello", 0), ("tick", 4_000)], false),
            (&[("hello", 0), ("seen", 2_000), ("tick", 4_000)], true),
            (&[("hello", 0), ("tick", 4_000), ("seen", 4_001)], true),
            (&[("seen", 0)], false),
        ];
        for (steps, up) in cases {
            let mut m = m();
            for (what, t) in steps.iter() {
                match *what {
                    "hello" => drop(m.hello("P", info("p"), *t)),
                    "seen" => drop(m.seen("P", *t)),
                    _ => drop(m.tick(*t)),
                }
            }
            assert_eq!(m.is_up("P"), *up, "{steps:?}");
        }
    }

    #[test]
    fn a_peer_past_a_bound_is_counted_and_one_of_another_protocol_is_named_until_it_upgrades() {
        let mut m = m();
        m.hello("P1", info("a"), 0);
        assert!(m.limited("P1", "opened more than 4 connections at once"), "logged the first time");
        assert!(!m.limited("P1", "is at its quota"), "then counted");
        let view = m.view(|_| String::new());
        assert_eq!(view.iter().find(|n| n.peer_id == "P1").map(|n| (n.limited, n.refused)), Some((2, 0)));
        assert!(m
            .problems()
            .iter()
            .any(|p| p.contains("went past this node's limits, 2 time(s)") && p.contains("quota")));
        m.incompatible("P9", Some("old runs backmesh 0.0.1 with mesh protocol 5".into()));
        assert!(m.problems().iter().any(|p| p.contains("P9 is refused: old runs") && p.contains("protocol 5")));
        m.incompatible("P9", None);
        assert!(!m.problems().iter().any(|p| p.contains("P9")), "upgraded: no longer named");
        // A peer that was up and is now heard in another protocol goes down
        // at once, and comes back with its first hello in this one.
        let changes = m.incompatible("P1", Some("a runs another protocol".into()));
        assert_eq!(changes, vec![Change::Down { peer: "P1".into(), name: "a".into() }]);
        assert!(!m.is_up("P1"));
        m.hello("P1", info("a"), 50);
        assert!(m.is_up("P1") && !m.problems().iter().any(|p| p.contains("P1 is refused")));
        for k in 0..MISDEEDS_KEPT + 10 {
            m.limited(&format!("X{k}"), "flood");
        }
        assert_eq!(m.limited.len(), MISDEEDS_KEPT, "fresh peer ids cannot grow the book");
    }

    #[test]
    fn a_shared_name_is_reported_by_both_not_merged() {
        let mut m = m();
        m.hello("P1", info("dup"), 0);
        let changes = m.hello("P2", info("dup"), 0);
        assert!(
            matches!(&changes[..], [.., Change::NameConflict { name, peers }] if name == "dup" && peers.len() == 2)
        );
        let view = m.view(|t| t.to_string());
        assert_eq!(view.iter().filter(|n| n.name == "dup").count(), 2, "both listed");
        assert!(view.iter().filter(|n| n.name == "dup").all(|n| n.conflict.is_some()));
        assert_eq!(m.problems().len(), 1);
        // A peer claiming our own name is a conflict too.
        m.hello("P3", info("me"), 0);
        assert_eq!(m.problems().len(), 2);
        assert!(m.view(|t| t.to_string())[0].conflict.is_some());
    }

    #[test]
    fn a_renamed_peer_leaves_its_old_name_and_repeated_hellos_claim_once() {
        let mut m = m();
        for t in 0..3 {
            let changes = m.hello("P1", info("a"), t);
            assert!(!changes.iter().any(|c| matches!(c, Change::NameConflict { .. })), "one peer, one claim");
        }
        m.hello("P1", info("b"), 5);
        let changes = m.hello("P2", info("a"), 6);
        assert!(!changes.iter().any(|c| matches!(c, Change::NameConflict { .. })), "P1 is `b` now: {changes:?}");
        let changes = m.hello("P3", info("b"), 7);
        assert!(changes.iter().any(|c| matches!(c, Change::NameConflict { name, .. } if name == "b")), "{changes:?}");
        assert_eq!(m.conflicts().len(), 1);
    }

    #[test]
    fn the_view_starts_with_this_node() {
        let mut m = m();
        m.hello("P2", info("b"), 5);
        m.hello("P1", info("a"), 5);
        let v = m.view(|t| format!("t{t}"));
        let names: Vec<_> = v.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["me", "a", "b"]);
        assert!(v[0].this_node && !v[1].this_node);
        assert_eq!(v[1].last_seen.as_deref(), Some("t5"));
    }
}
