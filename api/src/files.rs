//! Looking inside archives: listings (`GET /files`), searches across a
//! series' archives (`GET /find`), comparisons of two archives (`GET
//! /diff`). One file's content is `GET /dump`; a part of an archive,
//! `GET /fetch?include=…` and `POST /restore` with `include`.

use serde::{Deserialize, Serialize};

/// One entry of an archive, as its file table records it (what `tar -tv`
/// shows of it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Relative to the archive's root, `/`-separated (bytes that are not
    /// UTF-8 shown as U+FFFD).
    pub path: String,
    /// `file`, `dir`, `symlink` or `hardlink`.
    pub kind: String,
    /// Content bytes (0 for all but files).
    pub size: u64,
    /// Permission bits with setuid, setgid and sticky (`mode & 0o7777`).
    pub mode: u32,
    /// Modification time: seconds since the Unix epoch (UTC), and nanoseconds.
    pub mtime: i64,
    #[serde(default)]
    pub mtime_nsec: u32,
    pub uid: u64,
    pub gid: u64,
    /// A symlink's target, or the path a hard link is a second name of.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<String>,
}

impl FileEntry {
    /// Kind and mode as `ls -l` writes them (`drwxr-xr-x`).
    pub fn mode_text(&self) -> String {
        let kind = match self.kind.as_str() {
            "dir" => 'd',
            "symlink" => 'l',
            "hardlink" => 'h',
            _ => '-',
        };
        let m = self.mode;
        let bit = |mask: u32, c: char| if m & mask != 0 { c } else { '-' };
        let exec = |x: u32, special: u32, on: char, off: char| match (m & x != 0, m & special != 0) {
            (true, true) => on,
            (false, true) => off,
            (true, false) => 'x',
            (false, false) => '-',
        };
        [
            kind,
            bit(0o400, 'r'),
            bit(0o200, 'w'),
            exec(0o100, 0o4000, 's', 'S'),
            bit(0o040, 'r'),
            bit(0o020, 'w'),
            exec(0o010, 0o2000, 's', 'S'),
            bit(0o004, 'r'),
            bit(0o002, 'w'),
            exec(0o001, 0o1000, 't', 'T'),
        ]
        .iter()
        .collect()
    }

    /// Its modification time as `YYYY-MM-DD HH:MM:SS` (UTC).
    pub fn time_text(&self) -> String {
        utc_text(self.mtime)
    }
}

/// Seconds since the Unix epoch as `YYYY-MM-DD HH:MM:SS` (UTC), by the
/// civil-from-days rule (Howard Hinnant's), with no time library.
pub fn utc_text(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// Milliseconds since the Unix epoch as RFC 3339 in UTC, to the second
/// (`2026-12-07T20:49:11Z`), as the node writes times.
pub fn rfc3339(ms: i64) -> String {
    utc_text(ms.div_euclid(1000)).replacen(' ', "T", 1) + "Z"
}

/// `GET /api/v1/files?node=N&path=P[&archive=ID][&under=DIR][&recursive=true]`:
/// what a directory of an archive holds (the newest archive by default;
/// `under` the archive's root by default).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Listing {
    pub node: String,
    pub path: String,
    pub archive: String,
    /// The directory listed, relative to the archive's root (`""`: the root).
    pub under: String,
    /// In archive order (depth first, names in byte order).
    pub entries: Vec<FileEntry>,
}

/// `GET /api/v1/find?node=N&path=P&pattern=GLOB`: which archives of a
/// series hold entries matching the pattern, retained and hidden ones.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Found {
    pub node: String,
    pub path: String,
    pub pattern: String,
    /// Newest first; archives with no match are left out.
    pub archives: Vec<FoundIn>,
    /// How many archives were searched.
    pub searched: usize,
    /// Archives that could not be read, and why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unread: Vec<String>,
}

/// The matches in one archive.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FoundIn {
    pub archive: String,
    /// When it was made (RFC 3339).
    pub created: String,
    /// Out of retention, kept for the grace period.
    #[serde(default)]
    pub hidden: bool,
    pub entries: Vec<FileEntry>,
}

/// `GET /api/v1/diff?node=N&path=P&from=ID1&to=ID2`: what changed from
/// one archive to another, by path, in path order. Files of one size are
/// compared by content.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compared {
    pub node: String,
    pub path: String,
    pub from: String,
    pub to: String,
    pub added: Vec<FileEntry>,
    pub removed: Vec<FileEntry>,
    /// Another kind, content or link target.
    pub changed: Vec<Change>,
    /// The same content; another mode, owner or time.
    pub metadata: Vec<Change>,
}

/// One entry in both archives.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    pub before: FileEntry,
    pub after: FileEntry,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_and_times_read_as_ls_and_date_write_them() {
        let e = FileEntry {
            path: "a".into(),
            kind: "file".into(),
            size: 1,
            mode: 0o4755,
            mtime: 1_700_000_000,
            mtime_nsec: 0,
            uid: 0,
            gid: 0,
            link: None,
        };
        assert_eq!(e.mode_text(), "-rwsr-xr-x");
        assert_eq!(FileEntry { kind: "dir".into(), mode: 0o1777, ..e.clone() }.mode_text(), "drwxrwxrwt");
        assert_eq!(FileEntry { mode: 0o2640, ..e.clone() }.mode_text(), "-rw-r-S---");
        assert_eq!(e.time_text(), "2023-11-14 22:13:20");
        assert_eq!(utc_text(0), "1970-01-01 00:00:00");
        assert_eq!(utc_text(-1), "1969-12-31 23:59:59");
        assert_eq!(utc_text(951_782_400), "2000-02-29 00:00:00");
        assert_eq!(rfc3339(1_700_000_000_999), "2023-11-14T22:13:20Z");
    }
}
