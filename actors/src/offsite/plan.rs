//! The offsite actor's decisions, as pure functions of what it knows and
//! the time (milliseconds of the node's [`crate::clock::Clock`]): who
//! uploads a series, whether it is due, how long to wait after a failure,
//! when the next in line stands in, when the bucket is collected.
//!
//! A clock set back does not stall the waits and checks: one dated in the
//! future counts as over (so at worst one round comes early). The stand-in
//! rule alone goes by when archives were stored: after a clock is set back
//! by more than the grace, the next in line waits until the clock catches
//! up with them (the elected uploader is not held up).

use crate::placement::{uploaders, Candidate};

/// A series found current is listed again after this long (someone may
/// have emptied the bucket).
pub const RECHECK_MS: i64 = 3_600_000;
/// Collections run this often, on the one node elected for them.
pub const COLLECT_EVERY_MS: i64 = 24 * 3_600_000;
/// The first wait after a failed upload; it doubles up to [`MAX_WAIT_MS`].
pub const FIRST_WAIT_MS: i64 = 15_000;
/// The longest wait between tries of a failing series.
pub const MAX_WAIT_MS: i64 = 600_000;
/// How long a series waits while a collection holds the bucket.
pub const BUSY_WAIT_MS: i64 = 30_000;
/// How long a collection waits when an upload holds the bucket.
pub const COLLECT_BUSY_WAIT_MS: i64 = 600_000;
/// How long a collection waits after it failed.
pub const COLLECT_FAILED_WAIT_MS: i64 = 3_600_000;

/// Whether `since` is at least `span` ago at `now`; a time in the future
/// (a clock set back) counts as long ago.
fn passed(since: i64, span: i64, now: i64) -> bool {
    since > now || now - since >= span
}

/// This node's part in a series' upload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Role {
    /// First of the series' uploaders: it keeps the series in the bucket.
    Elected,
    /// Second: it uploads what the elected one (`elected`, a node name)
    /// leaves out past the grace.
    StandIn {
        elected: String,
    },
    Neither,
}

/// This node's (`me`, a peer id) part in the upload of (node, path).
pub fn role(node: &str, path: &str, candidates: &[Candidate], replicas: usize, me: &str) -> Role {
    let order = uploaders(node, path, candidates, replicas);
    match order.iter().position(|c| c.peer_id == me) {
        Some(0) => Role::Elected,
        Some(1) => Role::StandIn { elected: order[0].name.clone() },
        _ => Role::Neither,
    }
}

/// What the offsite actor knows of one series between rounds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SeriesState {
    /// Ids in the bucket as of `checked_ms`.
    pub in_bucket: Vec<String>,
    /// The ids kept here at the last successful upload (unchanged since,
    /// and checked within [`RECHECK_MS`]: nothing to do).
    pub synced: Vec<String>,
    /// When the bucket was last listed for it (or, standing in, looked at).
    pub checked_ms: Option<i64>,
    /// Not current since.
    pub since_ms: Option<i64>,
    pub error: Option<String>,
    /// Not before this (after failures), and the last wait.
    pub retry_at: Option<(i64, i64)>,
    pub sent_bytes: u64,
    /// Elected here at the last round.
    pub mine: bool,
    pub behind: bool,
}

impl SeriesState {
    /// Whether the elected uploader uploads now, the archives kept here
    /// being `ids`: not when the bucket was found holding them lately, nor
    /// while a failure's wait runs. Marks the series behind when it is not
    /// current.
    pub fn due(&mut self, ids: &[String], now: i64) -> bool {
        let current = self.synced == ids;
        if current && self.checked_ms.is_some_and(|c| !passed(c, RECHECK_MS, now)) {
            return false;
        }
        if !current && self.since_ms.is_none() {
            self.since_ms = Some(now);
            self.behind = true;
        }
        // A wait is over once its time has come, or when it reaches further
        // than any wait can (the clock was set back).
        !matches!(self.retry_at, Some((at, _)) if at > now && at - now <= MAX_WAIT_MS)
    }

    /// Everything retention keeps of the series (`ids`) is in the bucket.
    pub fn uploaded(&mut self, ids: &[String], in_bucket: Vec<String>, now: i64) {
        self.in_bucket = in_bucket;
        self.synced = ids.to_vec();
        self.checked_ms = Some(now);
        self.behind = false;
        self.since_ms = None;
        self.error = None;
        self.retry_at = None;
    }

    /// A collection holds the bucket: not a failure; soon again.
    pub fn busy(&mut self, now: i64) {
        self.retry_at = Some((now + BUSY_WAIT_MS, FIRST_WAIT_MS));
    }

    /// The upload failed with `error`: the wait before the next try
    /// (doubling up to [`MAX_WAIT_MS`]), and whether the error is new
    /// (worth a line in the log).
    pub fn failed(&mut self, error: String, now: i64) -> (i64, bool) {
        let wait = self.retry_at.map(|(_, w)| (w * 2).min(MAX_WAIT_MS)).unwrap_or(FIRST_WAIT_MS);
        self.retry_at = Some((now + wait, wait));
        self.since_ms.get_or_insert(now);
        let new = self.error.as_deref() != Some(&error);
        self.error = Some(error);
        (wait, new)
    }

    /// Whether the next in line looks at the series again: not within
    /// `fallback_after_ms` of its last look.
    pub fn stand_in_due(&self, fallback_after_ms: i64, now: i64) -> bool {
        self.checked_ms.is_none_or(|at| passed(at, fallback_after_ms, now))
    }
}

/// Of the archives kept here, (id, when stored here), those the next in
/// line uploads: kept by retention (`ids`) and stored at least
/// `fallback_after_ms` ago — the elected uploader had that long.
pub fn overdue(kept: &[(String, i64)], ids: &[String], fallback_after_ms: i64, now: i64) -> Vec<String> {
    kept.iter()
        .filter(|(id, stored)| ids.contains(id) && now - stored >= fallback_after_ms)
        .map(|(id, _)| id.clone())
        .collect()
}

/// Whether the elected collector collects now: a day after the last
/// collection (`last_ms`, 0 for never), and not while a wait set after a
/// busy or failed collection runs (`after_ms`).
pub fn collection_due(last_ms: i64, after_ms: Option<i64>, now: i64) -> bool {
    passed(last_ms, COLLECT_EVERY_MS, now) && after_ms.is_none_or(|at| at <= now || at - now > COLLECT_FAILED_WAIT_MS)
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: i64 = 1_800_000_000_000;

    fn ids(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn an_upload_is_due_unless_current_and_checked_lately_or_waiting() {
        let a = ids(&["a"]);
        let ab = ids(&["a", "b"]);
        let current = SeriesState { synced: a.clone(), checked_ms: Some(T), ..Default::default() };
        let waiting = SeriesState { retry_at: Some((T + 10_000, FIRST_WAIT_MS)), ..Default::default() };
        let cases: [(&str, SeriesState, &Vec<String>, i64, bool); 8] = [
            ("never looked at", SeriesState::default(), &a, T, true),
            ("current, checked a minute ago", current.clone(), &a, T + 60_000, false),
            ("current, checked over an hour ago", current.clone(), &a, T + RECHECK_MS, true),
            ("a new archive since", current.clone(), &ab, T + 60_000, true),
            ("a check dated ahead (clock set back)", current.clone(), &a, T - 86_400_000, true),
            ("a failure's wait runs", waiting.clone(), &a, T, false),
            ("the wait is over", waiting.clone(), &a, T + 10_000, true),
            ("a wait far ahead (clock set back)", waiting.clone(), &a, T - 86_400_000, true),
        ];
        for (what, mut st, ids, now, want) in cases {
            assert_eq!(st.due(ids, now), want, "{what}");
        }
    }

    #[test]
    fn a_series_not_current_is_behind_since_the_first_round_that_saw_it() {
        let mut st = SeriesState::default();
        assert!(st.due(&ids(&["a"]), T));
        assert_eq!((st.behind, st.since_ms), (true, Some(T)));
        assert!(st.due(&ids(&["a"]), T + 5_000));
        assert_eq!(st.since_ms, Some(T), "since the first round, not the last");
        st.uploaded(&ids(&["a"]), ids(&["a"]), T + 9_000);
        assert_eq!((st.behind, st.since_ms, st.checked_ms), (false, None, Some(T + 9_000)));
        assert!(!st.due(&ids(&["a"]), T + 10_000));
    }

    #[test]
    fn failures_wait_doubling_to_ten_minutes_and_say_a_new_error_once() {
        let mut st = SeriesState::default();
        let mut waits = Vec::new();
        for i in 0..8 {
            let (wait, new) = st.failed("no bucket".into(), T + i);
            assert_eq!(new, i == 0, "try {i}");
            waits.push(wait / 1000);
        }
        assert_eq!(waits, [15, 30, 60, 120, 240, 480, 600, 600]);
        assert_eq!(st.since_ms, Some(T));
        assert!(st.failed("credentials refused".into(), T + 9).1, "another error is said again");
        st.busy(T);
        assert_eq!(st.retry_at, Some((T + BUSY_WAIT_MS, FIRST_WAIT_MS)));
    }

    #[test]
    fn the_next_in_line_uploads_only_what_was_left_out_past_the_grace() {
        let kept =
            vec![("old".to_string(), T - 7_200_000), ("new".to_string(), T - 60_000), ("gone".into(), T - 9e6 as i64)];
        let keep = ids(&["old", "new"]);
        assert_eq!(overdue(&kept, &keep, 3_600_000, T), ids(&["old"]));
        assert_eq!(overdue(&kept, &keep, 30_000, T), ids(&["old", "new"]));
        let looked = SeriesState { checked_ms: Some(T), ..Default::default() };
        assert!(SeriesState::default().stand_in_due(3_600_000, T));
        assert!(!looked.stand_in_due(3_600_000, T + 60_000));
        assert!(looked.stand_in_due(3_600_000, T + 3_600_000));
        assert!(looked.stand_in_due(3_600_000, T - 1), "a look dated ahead counts as long ago");
    }

    #[test]
    fn the_bucket_is_collected_daily_but_not_during_a_wait() {
        let day = COLLECT_EVERY_MS;
        let cases = [
            ("never collected", 0, None, T, true),
            ("collected an hour ago", T - 3_600_000, None, T, false),
            ("collected a day ago", T - day, None, T, true),
            ("a collection dated ahead", T + 86_400_000, None, T, true),
            ("waiting after a busy bucket", T - day, Some(T + 60_000), T, false),
            ("the wait is over", T - day, Some(T - 1), T, true),
            ("a wait far ahead (clock set back)", T - day, Some(T + 10 * day), T, true),
        ];
        for (what, last, after, now, want) in cases {
            assert_eq!(collection_due(last, after, now), want, "{what}");
        }
    }

    #[test]
    fn one_node_is_elected_and_one_stands_in() {
        let c = |i: u32| Candidate { peer_id: format!("P{i}"), name: format!("n{i}"), free_bytes: 100 << 30 };
        let candidates: Vec<Candidate> = (0..5).map(c).collect();
        let roles: Vec<Role> = (0..5).map(|i| role("n0", "/srv", &candidates, 3, &format!("P{i}"))).collect();
        assert_eq!(roles.iter().filter(|r| **r == Role::Elected).count(), 1);
        let stand_in: Vec<&Role> = roles.iter().filter(|r| matches!(r, Role::StandIn { .. })).collect();
        assert_eq!(stand_in.len(), 1);
        let elected = roles.iter().position(|r| *r == Role::Elected).unwrap();
        assert_eq!(stand_in[0], &Role::StandIn { elected: format!("n{elected}") });
        assert_eq!(role("n0", "/srv", &candidates, 3, "a stranger"), Role::Neither);
    }
}
