//! The scheduler's decision, pure: which of this node's jobs are due now.
//! The jobs actor asks it every second with the time and what is running
//! or waiting, and queues the answer; nothing here reads a clock.

use crate::log::views::JobView;

/// Paths of the jobs that should be queued at `now_ms`: not paused, not
/// running or waiting already, and never started or last started at least
/// `every_min` job minutes (of `minute_ms`) ago. In path order.
///
/// A last start dated far in the future was dated by a clock that ran
/// ahead and has been set right since: the job is due, rather than idle
/// until that date.
pub fn due<'a>(
    jobs: impl IntoIterator<Item = &'a JobView>,
    now_ms: i64,
    minute_ms: i64,
    busy: impl Fn(&str) -> bool,
) -> Vec<String> {
    let mut out: Vec<String> = jobs
        .into_iter()
        .filter(|j| !j.paused)
        .filter(|j| {
            let period = i64::try_from(j.every_min).unwrap_or(i64::MAX).saturating_mul(minute_ms);
            j.last_started.as_ref().is_none_or(|t| {
                t.wall_ms.saturating_add(period) <= now_ms || crate::log::hlc::too_far_ahead(t.wall_ms, now_ms)
            })
        })
        .filter(|j| !busy(&j.path))
        .map(|j| j.path.clone())
        .collect();
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::crdt::Stamp;
    use crate::log::hlc::Hlc;

    fn job(path: &str, every_min: u64, started_ms: Option<i64>, paused: bool) -> JobView {
        JobView {
            node: "n1".into(),
            path: path.into(),
            every_min,
            excludes: vec![],
            paused,
            last: None,
            last_success: None,
            last_started: started_ms.map(|wall_ms| Stamp { seq: 1, wall_ms, logical: 0, seal: Default::default() }),
            registered_at: Hlc { wall_ms: 0, logical: 0, node: "P".into() },
            last_size: None,
            last_warnings: vec![],
            runs: vec![],
            spec: Default::default(),
            last_plugin: None,
        }
    }

    #[test]
    fn what_is_due_table() {
        const MIN: i64 = 60_000;
        // (every, last started, paused, busy, now) → due?
        type Case = (u64, Option<i64>, bool, bool, i64, bool);
        let cases: &[Case] = &[
            (5, None, false, false, 0, true),                       // never run: at once
            (5, Some(0), false, false, 5 * MIN - 1, false),         // a millisecond early
            (5, Some(0), false, false, 5 * MIN, true),              // exactly its period
            (5, Some(0), false, false, 50 * MIN, true),             // long overdue: once
            (5, None, true, false, 0, false),                       // paused
            (5, Some(0), true, false, 50 * MIN, false),             // paused and overdue
            (5, None, false, true, 0, false),                       // running or waiting
            (0, Some(0), false, false, 0, true),                    // every 0: whenever free
            (u64::MAX, Some(0), false, false, i64::MAX - 1, false), // no wrap to a negative period
            (5, Some(MIN), false, false, 0, false),                 // a clock a minute ahead: waits
            (5, Some(365 * 24 * 60 * MIN), false, false, 0, true),  // a clock a year ahead, set right: due
        ];
        for (i, &(every, started, paused, busy, now, want)) in cases.iter().enumerate() {
            let j = job("/p", every, started, paused);
            let got = due([&j], now, MIN, |_| busy);
            assert_eq!(got == vec!["/p".to_string()], want, "case {i}: {:?}", cases[i]);
        }
    }

    #[test]
    fn several_jobs_come_in_path_order_and_only_the_due_ones() {
        let jobs = [job("/b", 1, None, false), job("/a", 1, None, false), job("/c", 10, Some(1_000), false)];
        assert_eq!(due(&jobs, 60_000, 60_000, |p| p == "/x"), vec!["/a".to_string(), "/b".to_string()]);
    }
}
