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

    /// A timestamp for a local event at wall time `now_ms`.
    pub fn tick(&mut self, now_ms: i64) -> Hlc {
        self.last = if now_ms > self.last.0 { (now_ms, 0) } else { (self.last.0, self.last.1 + 1) };
        Hlc { wall_ms: self.last.0, logical: self.last.1, node: self.node.clone() }
    }

    /// Takes in a timestamp seen from another node, so that later local
    /// events order after it.
    pub fn observe(&mut self, seen: &Hlc, now_ms: i64) {
        let wall = now_ms.max(self.last.0).max(seen.wall_ms);
        let logical = match (wall == self.last.0, wall == seen.wall_ms) {
            (true, true) => self.last.1.max(seen.logical) + 1,
            (true, false) => self.last.1 + 1,
            (false, true) => seen.logical + 1,
            (false, false) => 0,
        };
        self.last = (wall, logical);
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
    fn ties_break_by_node() {
        let a = Clock::new("a").tick(5);
        let b = Clock::new("b").tick(5);
        assert!(a < b);
        assert_ne!(a, b);
    }
}
