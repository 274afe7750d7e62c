//! The replica planner: which series to push to which holder, and which
//! surplus copies to hand off, in one round. Pure: it takes the peers, the
//! archives kept here and the time, and remembers only what the actor
//! tells it came of earlier rounds (pushes done or failed, handoffs over).
//! Table-tested without a runtime; the actor does the I/O.

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::net::membership::PeerView;
use crate::placement::{holders, Candidate};

/// First wait after a failed push to a peer; doubled per failure.
pub const FIRST_BACKOFF_MS: i64 = 2_000;
/// Longest wait between pushes to a peer that keeps failing.
pub const MAX_BACKOFF_MS: i64 = 60_000;

/// Pushes to one holder at once. Each keeps a few requests in flight, so
/// a node with many changed series stays well within what a holder takes
/// from one peer ([`crate::net::swarm::INFLIGHT_PER_PEER`]); the rest
/// wait for the next rounds.
pub const PUSHES_PER_PEER: usize = 8;

/// How long a series waits before it is offered again to a holder that
/// refused it for its node's quota there.
pub const SERIES_WAIT_MS: i64 = 5 * 60_000;

/// What stopped a push, and so what waits before the next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PushError {
    /// The holder (down, or refusing everything for now): every push to it.
    Peer,
    /// This series alone (its node is at its quota on that holder).
    Series,
}

/// One series to push to one holder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Push {
    pub peer: String,
    pub name: String,
    pub node: String,
    pub path: String,
    /// Archives the holder is not known to keep, newest first.
    pub ids: Vec<String>,
    /// Pushed for a series whose origin is gone (a repair), not by its origin.
    pub repair: bool,
}

/// Copies of a series this node keeps though it is not elected for them:
/// dropped once every elected holder confirms it keeps them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Handoff {
    pub node: String,
    pub path: String,
    pub ids: Vec<String>,
    /// Peer ids of the elected holders.
    pub targets: Vec<String>,
}

/// Work in flight, so a round does not start it twice.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Busy {
    Push { peer: String, node: String, path: String },
    Handoff { node: String, path: String },
}

/// What one round decided.
#[derive(Debug, Default)]
pub struct Plan {
    /// Everyone who may hold copies now (the present peers and this node).
    pub candidates: Vec<Candidate>,
    pub pushes: Vec<Push>,
    pub handoffs: Vec<Handoff>,
    /// This node's series that have fewer holders than asked for, newly
    /// so or by a different count: (path, holders).
    pub short: Vec<(String, usize)>,
}

/// The planner's memory across rounds.
#[derive(Debug)]
pub struct Planner {
    /// This node's name.
    me: String,
    replicas: usize,
    /// How long a silent peer keeps its place, in ms.
    grace_ms: i64,
    /// (peer, archive id) known to be complete on that peer.
    confirmed: HashSet<(String, String)>,
    busy: HashSet<Busy>,
    /// Peers whose last push failed: not before this time, and the last delay.
    backoff: HashMap<String, (i64, i64)>,
    /// (peer, node, path) → until when that series is not offered to that
    /// peer again (it refused it for its node's quota).
    held_back: HashMap<(String, String, String), i64>,
    /// Peers up at the last round: one that comes back is retried at once.
    was_up: HashSet<String>,
    /// This node's series with fewer holders than asked for, and how many.
    short: HashMap<String, usize>,
}

impl Planner {
    /// How loaded replication is at `now_ms`: copies in flight, and peers
    /// backed off after a failure.
    pub fn load(&self, now_ms: i64) -> (usize, usize) {
        (self.busy.len(), self.backoff.values().filter(|(until, _)| *until > now_ms).count())
    }

    pub fn new(me: impl Into<String>, replicas: usize, grace_ms: i64) -> Self {
        Planner {
            me: me.into(),
            replicas,
            grace_ms,
            confirmed: HashSet::new(),
            busy: HashSet::new(),
            backoff: HashMap::new(),
            held_back: HashMap::new(),
            was_up: HashSet::new(),
            short: HashMap::new(),
        }
    }

    /// One round at `now_ms`: `me` is this node's own view, `peers` the
    /// others, `held` the archives kept here by series, newest first. The
    /// pushes and handoffs returned count as in flight until
    /// [`Planner::pushed`] or [`Planner::handed_off`] is told how they ended.
    pub fn plan(
        &mut self,
        me: &PeerView,
        peers: &[PeerView],
        held: &BTreeMap<(String, String), Vec<String>>,
        now_ms: i64,
    ) -> Plan {
        let up: HashSet<String> = peers.iter().filter(|p| p.up).map(|p| p.peer_id.clone()).collect();
        for p in up.difference(&self.was_up) {
            // Seen again: retry at once, and ask again what it keeps.
            self.backoff.remove(p);
            self.confirmed.retain(|(peer, _)| peer != p);
        }
        self.was_up = up;
        // Only archives still kept here can need pushing: forget the rest,
        // so this set stays as small as what the node keeps.
        let kept: HashSet<&String> = held.values().flatten().collect();
        self.confirmed.retain(|(_, id)| kept.contains(id));
        let present = |p: &PeerView| p.up || now_ms - p.last_seen_ms < self.grace_ms;
        let mut candidates: Vec<Candidate> = peers
            .iter()
            .filter(|p| present(p) && p.peer_id != me.peer_id)
            .map(|p| Candidate { peer_id: p.peer_id.clone(), name: p.name.clone(), free_bytes: p.free_bytes })
            .collect();
        candidates.push(Candidate { peer_id: me.peer_id.clone(), name: me.name.clone(), free_bytes: me.free_bytes });
        let mut plan = Plan::default();
        let mut pushing: HashMap<String, usize> = HashMap::new();
        for b in &self.busy {
            if let Busy::Push { peer, .. } = b {
                *pushing.entry(peer.clone()).or_default() += 1;
            }
        }
        for ((node, path), ids) in held {
            let mine = *node == self.me;
            let origin_present = mine || peers.iter().any(|p| p.name == *node && present(p));
            let targets = holders(node, path, &candidates, self.replicas);
            // A copy here that no longer belongs here (a holder came back
            // after its place was filled): dropped once every elected
            // holder, all up, has confirmed it keeps all of it.
            let handoff = Busy::Handoff { node: node.clone(), path: path.clone() };
            if !mine
                && targets.len() == self.replicas
                && !targets.iter().any(|t| t.peer_id == me.peer_id)
                && targets.iter().all(|t| self.was_up.contains(&t.peer_id))
                && !self.busy.contains(&handoff)
            {
                self.busy.insert(handoff);
                plan.handoffs.push(Handoff {
                    node: node.clone(),
                    path: path.clone(),
                    ids: ids.clone(),
                    targets: targets.iter().map(|t| t.peer_id.clone()).collect(),
                });
                continue;
            }
            if !mine && origin_present {
                continue; // The origin looks after its own series.
            }
            if mine {
                let n = targets.len();
                if n < self.replicas {
                    if self.short.insert(path.clone(), n) != Some(n) {
                        plan.short.push((path.clone(), n));
                    }
                } else {
                    self.short.remove(path);
                }
            }
            for t in targets {
                if t.peer_id == me.peer_id || !self.was_up.contains(&t.peer_id) {
                    continue;
                }
                let busy = Busy::Push { peer: t.peer_id.clone(), node: node.clone(), path: path.clone() };
                // A wait that reaches further than the longest one: the clock went back.
                let waiting = |(at, _): &(i64, i64)| now_ms < *at && *at - now_ms <= MAX_BACKOFF_MS;
                let full = pushing.get(&t.peer_id).is_some_and(|n| *n >= PUSHES_PER_PEER);
                let key = (t.peer_id.clone(), node.clone(), path.clone());
                let held_back = self.held_back.get(&key).is_some_and(|until| now_ms < *until);
                if full || held_back || self.busy.contains(&busy) || self.backoff.get(&t.peer_id).is_some_and(waiting) {
                    continue;
                }
                let todo: Vec<String> = ids
                    .iter()
                    .filter(|id| !self.confirmed.contains(&(t.peer_id.clone(), (*id).clone())))
                    .cloned()
                    .collect();
                if !todo.is_empty() {
                    self.busy.insert(busy);
                    *pushing.entry(t.peer_id.clone()).or_default() += 1;
                    plan.pushes.push(Push {
                        peer: t.peer_id.clone(),
                        name: t.name.clone(),
                        node: node.clone(),
                        path: path.clone(),
                        ids: todo,
                        repair: !mine,
                    });
                }
            }
        }
        plan.candidates = candidates;
        plan
    }

    /// A push ended: the archives the holder confirmed, and the error that
    /// stopped it, if one did. Returns the wait before the next try after
    /// an error, in ms.
    pub fn pushed(&mut self, push: &Push, confirmed: &[String], error: Option<PushError>, now_ms: i64) -> Option<i64> {
        self.busy.remove(&Busy::Push { peer: push.peer.clone(), node: push.node.clone(), path: push.path.clone() });
        for id in confirmed {
            self.confirmed.insert((push.peer.clone(), id.clone()));
        }
        let key = (push.peer.clone(), push.node.clone(), push.path.clone());
        match error {
            None => {
                self.backoff.remove(&push.peer);
                self.held_back.remove(&key);
                return None;
            }
            Some(PushError::Series) => {
                self.held_back.insert(key, now_ms + SERIES_WAIT_MS);
                return Some(SERIES_WAIT_MS);
            }
            Some(PushError::Peer) => {}
        }
        // Pushes to one peer that were under way together fail together
        // (the peer was down, or did not know the origin yet): one step of
        // backoff for all of them, not one each.
        let delay = match self.backoff.get(&push.peer) {
            Some((until, _)) if now_ms < *until => return Some(until - now_ms),
            Some((_, d)) => (d * 2).min(MAX_BACKOFF_MS),
            None => FIRST_BACKOFF_MS,
        };
        self.backoff.insert(push.peer.clone(), (now_ms + delay, delay));
        Some(delay)
    }

    /// A handoff is over (its copies dropped, or not confirmed and kept).
    pub fn handed_off(&mut self, h: &Handoff) {
        self.busy.remove(&Busy::Handoff { node: h.node.clone(), path: h.path.clone() });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(name: &str, up: bool, last_seen_ms: i64) -> PeerView {
        PeerView { peer_id: format!("P-{name}"), name: name.into(), up, last_seen_ms, free_bytes: 100 << 30 }
    }

    fn held(series: &[(&str, &str, &[&str])]) -> BTreeMap<(String, String), Vec<String>> {
        series
            .iter()
            .map(|(n, p, ids)| ((n.to_string(), p.to_string()), ids.iter().map(|s| s.to_string()).collect()))
            .collect()
    }

    fn targets(plan: &Plan) -> Vec<(String, String, Vec<String>, bool)> {
        let mut v: Vec<_> =
            plan.pushes.iter().map(|p| (p.name.clone(), p.path.clone(), p.ids.clone(), p.repair)).collect();
        v.sort();
        v
    }

    #[test]
    fn the_origin_pushes_each_series_to_its_holders_once_at_a_time() {
        let me = peer("a", true, 0);
        let peers = [peer("b", true, 0), peer("c", true, 0), peer("d", true, 0)];
        let mut pl = Planner::new("a", 2, 60_000);
        let kept = held(&[("a", "/x", &["2", "1"])]);
        let plan = pl.plan(&me, &peers, &kept, 0);
        assert_eq!(plan.pushes.len(), 2, "R holders: {:?}", targets(&plan));
        assert!(plan.pushes.iter().all(|p| p.ids == ["2", "1"] && !p.repair && p.peer != "P-a"));
        assert_eq!(plan.candidates.len(), 4);
        assert!(pl.plan(&me, &peers, &kept, 1_000).pushes.is_empty(), "in flight: not again");
        for p in &plan.pushes {
            assert_eq!(pl.pushed(p, &["2".into(), "1".into()], None, 1_000), None);
        }
        assert!(pl.plan(&me, &peers, &kept, 2_000).pushes.is_empty(), "confirmed: nothing to do");
        let more = held(&[("a", "/x", &["3", "2", "1"])]);
        let plan = pl.plan(&me, &peers, &more, 3_000);
        assert!(plan.pushes.iter().all(|p| p.ids == ["3"]), "only what is not confirmed: {:?}", targets(&plan));
        for p in &plan.pushes {
            pl.pushed(p, &["3".into()], None, 3_000);
        }
        // Archive 1 pruned here: what was known of it is forgotten.
        pl.plan(&me, &peers, &held(&[("a", "/x", &["3", "2"])]), 4_000);
        assert_eq!(pl.confirmed.len(), 4, "2 holders × 2 archives kept");
    }

    #[test]
    fn a_failing_holder_waits_longer_each_time_and_is_retried_at_once_when_seen_again() {
        let me = peer("a", true, 0);
        let mut pl = Planner::new("a", 1, 60_000);
        let kept = held(&[("a", "/x", &["1"])]);
        let mut now = 0;
        let mut delays = Vec::new();
        for _ in 0..7 {
            let plan = pl.plan(&me, &[peer("b", true, now)], &kept, now);
            let push = plan.pushes.first().expect("a push once the wait is over").clone();
            delays.push(pl.pushed(&push, &[], Some(PushError::Peer), now).unwrap());
            assert!(pl.plan(&me, &[peer("b", true, now)], &kept, now + 1).pushes.is_empty(), "waits");
            now += delays.last().unwrap();
        }
        assert_eq!(delays, [2_000, 4_000, 8_000, 16_000, 32_000, 60_000, 60_000]);
        // A clock set back an hour does not stretch the wait to an hour.
        let push = pl.plan(&me, &[peer("b", true, now)], &kept, now).pushes[0].clone();
        pl.pushed(&push, &[], Some(PushError::Peer), now);
        let again = pl.plan(&me, &[peer("b", true, now)], &kept, now - 3_600_000).pushes;
        assert_eq!(again.len(), 1);
        pl.pushed(&again[0], &[], Some(PushError::Peer), now);
        // Down, then up again: tried at once.
        assert!(pl.plan(&me, &[peer("b", false, now)], &kept, now + 1).pushes.is_empty(), "not to a peer that is down");
        assert_eq!(pl.plan(&me, &[peer("b", true, now + 2)], &kept, now + 2).pushes.len(), 1);
    }

    #[test]
    fn pushes_that_fail_together_count_as_one_step_of_backoff() {
        let me = peer("a", true, 0);
        let mut pl = Planner::new("a", 1, 60_000);
        let kept = held(&[("a", "/x", &["1"]), ("a", "/y", &["2"]), ("a", "/z", &["3"])]);
        let plan = pl.plan(&me, &[peer("b", true, 0)], &kept, 0);
        assert_eq!(plan.pushes.len(), 3);
        let delays: Vec<i64> =
            plan.pushes.iter().map(|p| pl.pushed(p, &[], Some(PushError::Peer), 10).unwrap()).collect();
        assert_eq!(delays, [2_000, 2_000, 2_000], "one wave, one step (six series would wait 60 s for the last)");
        // The next failure, after the wait, is the next step.
        let again = pl.plan(&me, &[peer("b", true, 2_010)], &kept, 2_010).pushes;
        assert_eq!(again.len(), 3);
        assert_eq!(pl.pushed(&again[0], &[], Some(PushError::Peer), 2_010), Some(4_000));
    }

    #[test]
    fn a_series_over_its_quota_waits_alone_and_other_pushes_to_that_holder_go_on() {
        let me = peer("a", true, 0);
        let mut pl = Planner::new("a", 1, 60_000);
        let kept = held(&[("a", "/x", &["1"]), ("a", "/y", &["2"])]);
        let b = [peer("b", true, 0)];
        let first = pl.plan(&me, &b, &kept, 0).pushes;
        assert_eq!(first.len(), 2);
        let (x, y) = if first[0].path == "/x" { (&first[0], &first[1]) } else { (&first[1], &first[0]) };
        assert_eq!(pl.pushed(x, &[], Some(PushError::Series), 10), Some(SERIES_WAIT_MS));
        assert_eq!(pl.pushed(y, &[], Some(PushError::Peer), 10), Some(2_000));
        // After the peer's backoff, /y goes again; /x waits out its own.
        let again = pl.plan(&me, &b, &kept, 2_010).pushes;
        assert_eq!(again.iter().map(|p| p.path.as_str()).collect::<Vec<_>>(), ["/y"]);
        pl.pushed(&again[0], &["2".into()], None, 2_020);
        let later = pl.plan(&me, &b, &kept, 10 + SERIES_WAIT_MS).pushes;
        assert_eq!(later.iter().map(|p| p.path.as_str()).collect::<Vec<_>>(), ["/x"]);
    }

    #[test]
    fn a_holder_gets_at_most_a_few_pushes_at_once_and_the_rest_come_after() {
        let me = peer("a", true, 0);
        let mut pl = Planner::new("a", 1, 60_000);
        let series: Vec<(String, String)> = (0..20).map(|k| (format!("/s{k}"), format!("{k}"))).collect();
        let mut kept = BTreeMap::new();
        for (path, id) in &series {
            kept.insert(("a".to_string(), path.clone()), vec![id.clone()]);
        }
        let b = [peer("b", true, 0)];
        let first = pl.plan(&me, &b, &kept, 0).pushes;
        assert_eq!(first.len(), PUSHES_PER_PEER);
        assert!(pl.plan(&me, &b, &kept, 1).pushes.is_empty(), "none more while those are in flight");
        pl.pushed(&first[0], &first[0].ids, None, 2);
        assert_eq!(pl.plan(&me, &b, &kept, 3).pushes.len(), 1, "one ended, one more starts");
    }

    #[test]
    fn a_copy_of_another_node_s_series_is_pushed_only_once_its_origin_is_gone_past_the_grace() {
        let me = peer("b", true, 0);
        let mut pl = Planner::new("b", 2, 60_000);
        let kept = held(&[("a", "/x", &["1"])]);
        // b, c, d: with a gone, the holders are elected among them.
        let others = |a_up: bool, a_seen: i64| [peer("a", a_up, a_seen), peer("c", true, 0), peer("d", true, 0)];
        assert!(pl.plan(&me, &others(true, 0), &kept, 0).pushes.is_empty(), "the origin looks after it");
        assert!(pl.plan(&me, &others(false, 0), &kept, 59_000).pushes.is_empty(), "within the grace");
        let plan = pl.plan(&me, &others(false, 0), &kept, 61_000);
        assert!(!plan.pushes.is_empty() && plan.pushes.iter().all(|p| p.repair && p.name != "a" && p.name != "b"));
        assert!(plan.candidates.iter().all(|c| c.name != "a"), "a gone node is no candidate");
    }

    #[test]
    fn a_surplus_copy_is_handed_off_only_when_every_elected_holder_is_up() {
        // With R = 1 among {a, b, c}, exactly one of b, c is elected for (a, /x);
        // the other keeps a surplus copy.
        let kept = held(&[("a", "/x", &["1"])]);
        let all = [peer("a", true, 0), peer("b", true, 0), peer("c", true, 0)];
        let cands: Vec<Candidate> = all
            .iter()
            .map(|p| Candidate { peer_id: p.peer_id.clone(), name: p.name.clone(), free_bytes: p.free_bytes })
            .collect();
        let elected = holders("a", "/x", &cands, 1)[0].name.clone();
        let surplus = if elected == "b" { "c" } else { "b" };
        let me = peer(surplus, true, 0);
        let others: Vec<PeerView> = all.iter().filter(|p| p.name != surplus).cloned().collect();
        let mut pl = Planner::new(surplus, 1, 60_000);
        let plan = pl.plan(&me, &others, &kept, 0);
        assert_eq!(plan.handoffs.len(), 1);
        assert_eq!(plan.handoffs[0].targets, vec![format!("P-{elected}")]);
        assert!(plan.pushes.is_empty());
        assert!(pl.plan(&me, &others, &kept, 1).handoffs.is_empty(), "one handoff at a time");
        pl.handed_off(&plan.handoffs[0]);
        assert_eq!(pl.plan(&me, &others, &kept, 2).handoffs.len(), 1, "tried again once over");
        // The elected holder is down: nothing is dropped.
        let mut pl = Planner::new(surplus, 1, 60_000);
        let down: Vec<PeerView> =
            others.iter().map(|p| if p.name == elected { peer(&elected, false, 0) } else { p.clone() }).collect();
        assert!(pl.plan(&me, &down, &kept, 1).handoffs.is_empty());
    }

    #[test]
    fn a_series_short_of_holders_is_reported_when_its_count_changes() {
        let me = peer("a", true, 0);
        let mut pl = Planner::new("a", 2, 60_000);
        let kept = held(&[("a", "/x", &["1"])]);
        assert_eq!(pl.plan(&me, &[], &kept, 0).short, vec![("/x".to_string(), 0)]);
        assert!(pl.plan(&me, &[], &kept, 1).short.is_empty(), "said once");
        assert_eq!(pl.plan(&me, &[peer("b", true, 2)], &kept, 2).short, vec![("/x".to_string(), 1)]);
        let full = [peer("b", true, 3), peer("c", true, 3)];
        assert!(pl.plan(&me, &full, &kept, 3).short.is_empty());
        assert_eq!(pl.plan(&me, &[], &kept, 4).short, vec![("/x".to_string(), 0)], "short again after being full");
    }
}
