//! A hybrid logical clock: timestamps that follow wall time but never run
//! backwards and always order an event after every event it has seen, even
//! when node clocks disagree. Pure: the wall time is an argument.

use serde::{Deserialize, Serialize};

/// A point in hybrid time. Ordered by (wall, logical, node): a total order
/// all nodes agree on, so "last writer wins" has one answer everywhere.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Hlc {
    /// Milliseconds since the Unix epoch (the largest wall time seen).
    pub wall_ms: i64,
    /// Events within the same millisecond.
    pub logical: u32,
    /// Peer id of the node that made it: the final tie-break.
    pub node: String,
}

/// How far ahead of this node's wall clock a timestamp may be and still be
/// taken in. A peer whose clock runs further ahead has its entries held
/// back until this node's clock catches up, so one wrong clock cannot drag
/// the mesh's hybrid time along with it.
pub const MAX_AHEAD_MS: i64 = 2 * 60_000;

/// Whether `t` is further ahead of `now_ms` than any clock should be.
pub fn too_far_ahead(wall_ms: i64, now_ms: i64) -> bool {
    wall_ms > now_ms.saturating_add(MAX_AHEAD_MS)
}

/// One node's clock.
#[derive(Clone, Debug)]
pub struct Clock {
    node: String,
    last: (i64, u32),
}

impl Clock {
    pub fn new(node: impl Into<String>) -> Self {
        Clock { node: node.into(), last: (i64::MIN, 0) }
    }

    /// Whether the last timestamp is far ahead of `now_ms`: the wall clock
    /// was stepped back (it had run ahead), and the next tick starts again
    /// from the wall clock.
    pub fn jumped_back(&self, now_ms: i64) -> bool {
        too_far_ahead(self.last.0, now_ms)
    }

    /// A timestamp for a local event at wall time `now_ms`. It orders after
    /// every earlier one, except after a wall clock stepped back further
    /// than [`MAX_AHEAD_MS`]: the time it had came from a clock that was
    /// wrong, and keeping it would date every later event wrong too.
    pub fn tick(&mut self, now_ms: i64) -> Hlc {
        self.last =
            if now_ms > self.last.0 || self.jumped_back(now_ms) { (now_ms, 0) } else { (self.last.0, self.last.1 + 1) };
        Hlc { wall_ms: self.last.0, logical: self.last.1, node: self.node.clone() }
    }

    /// Takes in a timestamp seen from another node, so that later local
    /// events order after it; `false`, and nothing taken in, for one too
    /// far ahead of `now_ms` ([`MAX_AHEAD_MS`]).
    pub fn observe(&mut self, seen: &Hlc, now_ms: i64) -> bool {
        if too_far_ahead(seen.wall_ms, now_ms) {
            return false;
        }
        let wall = now_ms.max(self.last.0).max(seen.wall_ms);
        let logical = match (wall == self.last.0, wall == seen.wall_ms) {
            (true, true) => self.last.1.max(seen.logical) + 1,
            (true, false) => self.last.1 + 1,
            (false, true) => seen.logical + 1,
            (false, false) => 0,
        };
        self.last = (wall, logical);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_runs_backwards_even_when_the_wall_clock_does() {
        let mut c = Clock::new("a");
        let t1 = c.tick(1000);
        let t2 = c.tick(900); // the wall clock stepped back
        let t3 = c.tick(1000);
        assert!(t1 < t2 && t2 < t3, "{t1:?} {t2:?} {t3:?}");
        assert_eq!(t2.wall_ms, 1000);
    }

    #[test]
    fn an_event_after_a_message_orders_after_it() {
        let mut fast = Clock::new("fast");
        let mut slow = Clock::new("slow");
        let sent = fast.tick(50_000); // a clock 40 s ahead
        slow.observe(&sent, 10_000);
        let reply = slow.tick(10_001);
        assert!(reply > sent, "{reply:?} > {sent:?}");
    }

    #[test]
    fn a_clock_far_ahead_moves_no_one_and_a_clock_set_right_starts_again() {
        let year = 365 * 24 * 3_600_000;
        let mut wrong = Clock::new("wrong");
        let far = wrong.tick(1_000_000 + year);
        let mut honest = Clock::new("honest");
        assert!(!honest.observe(&far, 1_000_000), "a year ahead is not taken in");
        assert_eq!(honest.tick(1_000_001).wall_ms, 1_000_001, "the honest clock is not dragged along");
        let near = Hlc { wall_ms: 1_000_000 + MAX_AHEAD_MS, logical: 3, node: "fast".into() };
        assert!(honest.observe(&near, 1_000_000), "within the bound it is");
        assert!(honest.tick(1_000_002) > near);
        // The wrong clock is set right: its next events are dated by it.
        assert!(wrong.jumped_back(1_000_100));
        let after = wrong.tick(1_000_100);
        assert_eq!(after.wall_ms, 1_000_100);
        assert!(!wrong.jumped_back(1_000_100));
        assert!(wrong.tick(1_000_100) > after, "and order after each other again");
    }

    #[test]
    fn ties_break_by_node() {
        let a = Clock::new("a").tick(5);
        let b = Clock::new("b").tick(5);
        assert!(a < b);
        assert_ne!(a, b);
    }
}
