//! Which archives of a series a store keeps: the newest `keep`, and with
//! `--keep-within` every one stored in that window (the *visible* ones);
//! and, hidden, every other one stored less than `--grace` ago. Pure: the
//! time is an argument.

use std::time::Duration;

use super::catalog::ArchiveSummary;

/// Archives kept per (node, path) unless configured otherwise.
pub const DEFAULT_KEEP: usize = 10;

/// Which archives of a series a node keeps: the newest `keep` (in their
/// origin's order), and with `within`, every one it stored less than that
/// long ago by its own clock, however many came after. An origin that
/// goes wrong (or a stolen key) can then push out of its holders only
/// archives older than `within`, however many new ones it makes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retention {
    pub keep: usize,
    pub within: Option<Duration>,
    /// Archives out of the visible ones are kept, hidden, until they were
    /// stored this long ago: no request of any node, with any key, deletes
    /// a younger one (docs/security.md, "Holders refuse to forget").
    pub grace: Option<Duration>,
}

/// How long an archive that falls out of retention is kept hidden, unless
/// configured otherwise (`--grace`).
pub const DEFAULT_GRACE: Duration = Duration::from_secs(7 * 24 * 3600);

impl Default for Retention {
    fn default() -> Self {
        Retention { keep: DEFAULT_KEEP, within: None, grace: Some(DEFAULT_GRACE) }
    }
}

/// Whether `a` was stored less than `d` before `now_ms`. Stored under a
/// clock that ran ahead: recent until the clock passes that time (more is
/// kept, nothing lost).
fn stored_within(a: &ArchiveSummary, d: Option<Duration>, now_ms: i64) -> bool {
    d.is_some_and(|d| now_ms.saturating_sub(a.stored_ms) < i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

impl Retention {
    /// The newest `keep`, nothing else (a node's local store by hand).
    pub fn keep(keep: usize) -> Self {
        Retention { keep, within: None, grace: None }
    }

    /// Of `archives` (newest first), those shown at `now_ms`: the newest
    /// `keep`, and every one stored `within`.
    pub fn visible<'a>(&self, archives: &'a [ArchiveSummary], now_ms: i64) -> Vec<&'a ArchiveSummary> {
        archives
            .iter()
            .enumerate()
            .filter(|(i, a)| *i < self.keep.max(1) || stored_within(a, self.within, now_ms))
            .map(|(_, a)| a)
            .collect()
    }

    /// Whether `a` is kept at `now_ms` whatever its place: stored `within`,
    /// or less than `grace` ago.
    pub fn in_grace(&self, a: &ArchiveSummary, now_ms: i64) -> bool {
        stored_within(a, self.within, now_ms) || stored_within(a, self.grace, now_ms)
    }

    /// Of `archives` (newest first), those to keep at `now_ms`: the
    /// visible ones, and, hidden, every other one stored less than
    /// `grace` ago.
    pub fn kept<'a>(&self, archives: &'a [ArchiveSummary], now_ms: i64) -> Vec<&'a ArchiveSummary> {
        archives
            .iter()
            .enumerate()
            .filter(|(i, a)| {
                *i < self.keep.max(1) || stored_within(a, self.within, now_ms) || stored_within(a, self.grace, now_ms)
            })
            .map(|(_, a)| a)
            .collect()
    }
}

/// Parses a duration as `--keep-within` takes it: a number and a unit,
/// `h` (hours), `d` (days), `w` (weeks) or `m` (30-day months), as in
/// `36h`, `14d`, `6m`.
pub fn parse_within(text: &str) -> Result<Duration, crate::error::BadSetting> {
    use crate::error::BadSetting;
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (n, unit) = t.split_at(split);
    let n: u64 =
        n.parse().map_err(|_| BadSetting(format!("`{text}`: give a number and a unit, as in 36h, 14d, 2w or 6m")))?;
    let hours = match unit {
        "h" => 1,
        "d" => 24,
        "w" => 24 * 7,
        "m" => 24 * 30,
        _ => return Err(BadSetting(format!("`{text}`: the unit is h, d, w or m (months of 30 days), as in 14d"))),
    };
    if n == 0 {
        return Err(BadSetting(format!(
            "`{text}`: a window of nothing keeps nothing more; leave --keep-within out instead"
        )));
    }
    Ok(Duration::from_secs(n.saturating_mul(hours * 3600)))
}
