//! A series' recent runs, as each run entry carries them: the history
//! strip the dashboard shows for every job, without asking any node for
//! its log.
//!
//! The series' node writes, in each `finished`, `unchanged` or `failed`
//! entry, how the runs before it ended and when ([`Recent`]). The entry's
//! run is the series' `last` register, sealed by that node, so the newest
//! run and the ones before it travel as one signed value, and the state
//! holds one such list per series whatever the history's length.
//!
//! Packed small (about 2–3 bytes a run): newest first, one LEB128 number a
//! run, `seconds before the next newer run << 2 | outcome` (0 finished,
//! 1 unchanged, 2 failed; 3 is kept for later and read as nothing). Times
//! are to the second, each gap rounded: a run 89 runs back may show up to
//! ~45 s off, which a strip of days does not see.

use serde::{Deserialize, Serialize};

/// How a run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunResult {
    Finished,
    Unchanged,
    Failed,
}

impl RunResult {
    /// As the log's kinds and the API say it.
    pub fn as_str(self) -> &'static str {
        match self {
            RunResult::Finished => "finished",
            RunResult::Unchanged => "unchanged",
            RunResult::Failed => "failed",
        }
    }
}

/// Runs a list holds: the 90 cells of the dashboard's strip, the run that
/// carries the list being the 90th.
pub const RECENT_RUNS: usize = 89;

/// The runs before the one that carries the list, newest first.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Recent(#[serde(with = "serde_bytes")] Vec<u8>);

/// One run of a [`Recent`] list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EarlierRun {
    /// Seconds between this run and the next newer one.
    pub gap_s: u64,
    /// `None`: an outcome a later version added.
    pub result: Option<RunResult>,
}

fn code(r: RunResult) -> u64 {
    match r {
        RunResult::Finished => 0,
        RunResult::Unchanged => 1,
        RunResult::Failed => 2,
    }
}

fn put(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// The number at the start of `bytes` and its length; `None` if it is cut
/// short or longer than a `u64`.
fn take(bytes: &[u8]) -> Option<(u64, usize)> {
    let mut v = 0u64;
    for (i, b) in bytes.iter().enumerate().take(10) {
        // The tenth byte holds the 64th bit alone.
        if i == 9 && *b > 1 {
            return None;
        }
        v |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some((v, i + 1));
        }
    }
    None
}

impl Recent {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Its runs, newest first, at most [`RECENT_RUNS`]; reading stops at
    /// the first malformed byte (a list is a summary, never a reason to
    /// refuse its entry).
    pub fn runs(&self) -> Vec<EarlierRun> {
        let mut out = Vec::new();
        let mut at = 0;
        while at < self.0.len() && out.len() < RECENT_RUNS {
            let Some((v, n)) = take(&self.0[at..]) else { break };
            at += n;
            let result = match v & 3 {
                0 => Some(RunResult::Finished),
                1 => Some(RunResult::Unchanged),
                2 => Some(RunResult::Failed),
                _ => None,
            };
            out.push(EarlierRun { gap_s: v >> 2, result });
        }
        out
    }

    /// The list the next run carries: the run that carried this list
    /// (ended `result`, `gap_s` seconds before the next), then this list's
    /// runs, the oldest dropped past [`RECENT_RUNS`].
    pub fn then(&self, result: RunResult, gap_s: u64) -> Recent {
        let mut out = Vec::with_capacity(self.0.len() + 4);
        // Gaps past 2^61 s cannot happen; clamped so that the shift is exact.
        put(&mut out, (gap_s.min(u64::MAX >> 3) << 2) | code(result));
        let mut at = 0;
        for _ in 1..RECENT_RUNS {
            let Some((_, n)) = take(&self.0[at..]) else { break };
            out.extend_from_slice(&self.0[at..at + n]);
            at += n;
        }
        Recent(out)
    }

    /// Bytes it takes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// The list as this version writes it: its sound runs, at most
    /// [`RECENT_RUNS`] (what a node keeps of what another wrote: a list
    /// padded past that, or with bytes after a malformed one, is cut).
    pub fn normalised(&self) -> Recent {
        let mut at = 0;
        for _ in 0..RECENT_RUNS {
            let Some((_, n)) = take(&self.0[at..]) else { break };
            at += n;
        }
        Recent(self.0[..at].to_vec())
    }
}

/// A series' runs with their times (wall clock, ms), oldest first: the
/// newest run (`last_ms`, `last`) and the runs its list holds.
pub fn timeline(last_ms: i64, last: RunResult, before: &Recent) -> Vec<(i64, Option<RunResult>)> {
    let mut out = vec![(last_ms, Some(last))];
    let mut t = last_ms;
    for r in before.runs() {
        t = t.saturating_sub((r.gap_s as i64).saturating_mul(1000));
        out.push((t, r.result));
    }
    out.reverse();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_list_keeps_the_newest_runs_with_their_gaps_and_outcomes() {
        let mut r = Recent::default();
        assert!(r.runs().is_empty());
        let outcomes = [RunResult::Finished, RunResult::Unchanged, RunResult::Failed];
        for i in 0..200u64 {
            r = r.then(outcomes[i as usize % 3], 3600 + i);
        }
        let runs = r.runs();
        assert_eq!(runs.len(), RECENT_RUNS);
        // Newest first: the 200th run's, then the 199th's.
        assert_eq!(runs[0], EarlierRun { gap_s: 3600 + 199, result: Some(outcomes[199 % 3]) });
        assert_eq!(runs[1], EarlierRun { gap_s: 3600 + 198, result: Some(outcomes[198 % 3]) });
        assert_eq!(runs[RECENT_RUNS - 1].gap_s, 3600 + 200 - RECENT_RUNS as u64);
        // Hourly runs take 3 bytes each at most.
        assert!(r.len() <= 3 * RECENT_RUNS, "{} bytes", r.len());
        // The times go back from the newest run.
        let t = timeline(10_000_000, RunResult::Failed, &r);
        assert_eq!(t.len(), RECENT_RUNS + 1);
        assert_eq!(t.last(), Some(&(10_000_000, Some(RunResult::Failed))));
        assert_eq!(t[t.len() - 2], (10_000_000 - 3799 * 1000, Some(outcomes[199 % 3])));
        assert!(t.windows(2).all(|w| w[0].0 <= w[1].0));
    }

    #[test]
    fn a_malformed_or_unknown_list_reads_as_far_as_it_is_sound() {
        // Two sound runs, then an outcome of a later version, then a cut number.
        let r = Recent(vec![4, 9, 7, 0xff]);
        assert_eq!(
            r.runs(),
            vec![
                EarlierRun { gap_s: 1, result: Some(RunResult::Finished) },
                EarlierRun { gap_s: 2, result: Some(RunResult::Unchanged) },
                EarlierRun { gap_s: 1, result: None },
            ]
        );
        // A number longer than 64 bits ends the reading.
        assert!(Recent(vec![0xff; 12]).runs().is_empty());
        let mut over = vec![0xff; 9];
        over.push(0x02);
        assert!(Recent(over.clone()).runs().is_empty());
        over[9] = 0x01;
        assert_eq!(Recent(over).runs()[0].gap_s, u64::MAX >> 2);
        // What another node wrote is kept as this version writes it.
        let mut long = Recent::default();
        for _ in 0..RECENT_RUNS {
            long = long.then(RunResult::Finished, 60);
        }
        let mut padded = long.0.clone();
        padded.extend([4u8; 50]);
        assert_eq!(Recent(padded).normalised(), long);
        assert_eq!(Recent(vec![4, 9, 0xff]).normalised(), Recent(vec![4, 9]));
        // The next list keeps the sound part only.
        assert_eq!(r.then(RunResult::Failed, 0).runs().len(), 4);
    }
}
