//! Whether the index database still takes writes.
//!
//! sled keeps the first I/O error its writer meets (a full disk, a failing
//! device) and returns it for every later operation, even once the cause is
//! gone (sled 0.34, `Config::global_error`): a node whose disk filled up and
//! was freed again would run on, unable to write its index or mesh state,
//! refusing every copy, and never say it must be restarted. The node probes
//! its index every few seconds; a write that keeps failing while the disk
//! has room is not the full disk any more, and the node exits (crash-only:
//! its service manager starts it again, and a fresh open recovers the
//! database from its log). While the disk is full, the node stays up: it
//! still serves restores of what it keeps.

use std::time::{Duration, Instant};

use super::error::StoreError;

/// How often a node probes its index.
pub const PROBE_EVERY: Duration = Duration::from_secs(5);
/// How long the index may refuse writes while the disk has room before the
/// node gives it up.
pub const BROKEN_AFTER: Duration = Duration::from_secs(15);
/// Free bytes on the data directory's file system below which a failed write
/// is put down to the full disk (the node waits for room) rather than to the
/// index.
pub const ROOM: u64 = 8 << 20;
/// Exit code of a node that stopped because its index failed for good
/// (`EX_IOERR` of sysexits.h).
pub const EXIT_INDEX_BROKEN: i32 = 74;

/// What one probe says.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The index took the write.
    Healthy,
    /// The write failed, for a cause that may pass: the disk is full, or the
    /// failure is too recent to call.
    Failing(String),
    /// The write has failed for [`BROKEN_AFTER`] with room on the disk: the
    /// index will not recover in this process.
    Broken(String),
}

/// Folds probe results over time into a verdict.
#[derive(Debug, Default)]
pub struct IndexWatch {
    /// When the probes started failing with room on the disk.
    failing_since: Option<Instant>,
}

impl IndexWatch {
    /// `probe` is the result of a write and flush of the index, `room` the
    /// free bytes on its file system at the time, `now` the time.
    pub fn observe(&mut self, probe: Result<(), StoreError>, room: u64, now: Instant) -> Verdict {
        let e = match probe {
            Ok(()) => {
                self.failing_since = None;
                return Verdict::Healthy;
            }
            Err(e) => e,
        };
        if room < ROOM {
            self.failing_since = None;
            return Verdict::Failing(format!("{e} (the disk is full: {room} bytes free)"));
        }
        let since = *self.failing_since.get_or_insert(now);
        let failing = now.saturating_duration_since(since);
        if failing >= BROKEN_AFTER {
            Verdict::Broken(format!("{e}, for {} s with {} MiB free on its disk", failing.as_secs(), room >> 20))
        } else {
            Verdict::Failing(e.to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enospc() -> Result<(), StoreError> {
        Err(StoreError::Index { reason: "IO error: No space left on device".into() })
    }

    #[test]
    fn an_index_that_fails_with_room_on_the_disk_is_given_up_only_after_a_while() {
        let t0 = Instant::now();
        let mut w = IndexWatch::default();
        assert_eq!(w.observe(Ok(()), 0, t0), Verdict::Healthy);
        // While the disk is full the node waits, however long it lasts.
        for s in [0, 60, 600] {
            assert!(matches!(w.observe(enospc(), ROOM - 1, t0 + Duration::from_secs(s)), Verdict::Failing(_)));
        }
        // Room again, and the index still fails: counted from now on.
        let freed = t0 + Duration::from_secs(601);
        assert!(matches!(w.observe(enospc(), 90 << 20, freed), Verdict::Failing(_)));
        assert!(matches!(w.observe(enospc(), 90 << 20, freed + BROKEN_AFTER / 2), Verdict::Failing(_)));
        match w.observe(enospc(), 90 << 20, freed + BROKEN_AFTER) {
            Verdict::Broken(why) => assert!(why.contains("No space left") && why.contains("90 MiB free"), "{why}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_write_that_succeeds_again_clears_the_failure() {
        let t0 = Instant::now();
        let mut w = IndexWatch::default();
        assert!(matches!(w.observe(enospc(), 1 << 30, t0), Verdict::Failing(_)));
        assert_eq!(w.observe(Ok(()), 1 << 30, t0 + BROKEN_AFTER / 2), Verdict::Healthy);
        assert!(matches!(w.observe(enospc(), 1 << 30, t0 + BROKEN_AFTER), Verdict::Failing(_)));
        // A full disk in between restarts the count too.
        assert!(matches!(w.observe(enospc(), 0, t0 + BROKEN_AFTER * 2), Verdict::Failing(_)));
        assert!(matches!(w.observe(enospc(), 1 << 30, t0 + BROKEN_AFTER * 3), Verdict::Failing(_)));
    }
}
