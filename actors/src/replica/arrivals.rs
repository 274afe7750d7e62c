//! The flood bound: how many new archives of one series a holder takes
//! from that series' own node in a while.
//!
//! A node that goes wrong (or root on it) can make archive after archive
//! of its own series. Holders hide what falls out of retention for the
//! grace period rather than delete it, and the quota bounds the room its
//! archives take; this bounds how fast they come: `--burst` ([`BURST`]) at once, then
//! one per period of the series' schedule (`--every`), at most
//! [`SLOWEST`] apart whatever the schedule (so that an operator's runs by
//! hand still go out the same hour). A series' archive past the bound is
//! refused for now (the origin backs off and offers it again later), and
//! `status` counts it. Archives a holder hands to another (repair,
//! hand-off) are not counted: only new ones the series' node sends (made
//! in the last hour, and newer than any of the series the holder has).

use std::collections::HashMap;

/// Archives of one series taken at once before the schedule holds them,
/// unless the node says otherwise (`--burst`).
pub const BURST: u32 = 6;
/// The longest wait between two archives of one series, in ms.
pub const SLOWEST: i64 = 60 * 60_000;

/// Per series (node, path): tokens left, and when last counted (ms).
#[derive(Debug)]
pub struct Arrivals {
    burst: f64,
    by_series: HashMap<(String, String), (f64, i64)>,
}

impl Default for Arrivals {
    fn default() -> Self {
        Arrivals::new(BURST)
    }
}

/// The period of a series that backs up every `every_min` minutes (none:
/// no job, backups by hand).
fn period_ms(every_min: Option<u64>) -> i64 {
    every_min.map(|m| (m as i64).saturating_mul(60_000).clamp(60_000, SLOWEST)).unwrap_or(SLOWEST)
}

impl Arrivals {
    /// At most `burst` archives of one series at once.
    pub fn new(burst: u32) -> Self {
        Arrivals { burst: burst.max(1) as f64, by_series: HashMap::new() }
    }

    /// Whether one more new archive of (node, path) may come at `now_ms`;
    /// with `take`, it is counted. The refusal says why, in words.
    pub fn admit(
        &mut self,
        node: &str,
        path: &str,
        every_min: Option<u64>,
        now_ms: i64,
        take: bool,
    ) -> Result<(), String> {
        let period = period_ms(every_min);
        let burst = self.burst;
        let (tokens, at) = self.by_series.entry((node.to_string(), path.to_string())).or_insert((burst, now_ms));
        let earned = (now_ms - *at).max(0) as f64 / period as f64;
        *tokens = (*tokens + earned).min(burst);
        *at = now_ms;
        if *tokens < 1.0 {
            let wait = ((1.0 - *tokens) * period as f64 / 1000.0).ceil() as u64;
            return Err(format!(
                "made more new archives of {path} than its schedule allows here ({} at once, then one every {} \
                 min, --burst); the next is taken in {wait} s",
                burst as u64,
                period / 60_000
            ));
        }
        if take {
            *tokens -= 1.0;
        }
        Ok(())
    }

    /// Counts one archive of (node, path) let in a moment ago, even if
    /// the last token went to another since (the next then waits longer).
    pub fn count(&mut self, node: &str, path: &str, every_min: Option<u64>, now_ms: i64) {
        if self.admit(node, path, every_min, now_ms, true).is_err() {
            if let Some((tokens, _)) = self.by_series.get_mut(&(node.to_string(), path.to_string())) {
                *tokens -= 1.0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_one_per_period_at_most_an_hour_apart() {
        let mut a = Arrivals::default();
        let minute = 60_000;
        assert_eq!(BURST, 6);
        for i in 0..6 {
            a.admit("n1", "/srv", Some(10), i, true).unwrap();
        }
        // A check does not count; the seventh is refused.
        let said = a.admit("n1", "/srv", Some(10), 10, false).unwrap_err();
        assert!(said.contains("one every 10 min"), "{said}");
        // Another series is counted apart.
        a.admit("n1", "/other", Some(10), 10, true).unwrap();
        // One period later, one more.
        a.admit("n1", "/srv", Some(10), 10 * minute, true).unwrap();
        assert!(a.admit("n1", "/srv", Some(10), 11 * minute, true).is_err());
        // A daily job, or none, earns one an hour.
        for i in 0..6 {
            a.admit("n2", "/db", Some(1440), i, true).unwrap();
            a.admit("n2", "/hand", None, i, true).unwrap();
        }
        assert!(a.admit("n2", "/db", Some(1440), 30 * minute, true).is_err());
        a.admit("n2", "/db", Some(1440), 61 * minute, true).unwrap();
        a.admit("n2", "/hand", None, 61 * minute, true).unwrap();
    }
}
