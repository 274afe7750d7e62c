//! The tree walk: depth-first, children in byte order of their names, so
//! the same tree always yields the same sequence. Excluded paths are never
//! visited; directories that cannot be listed become warnings.

use std::fs::{self, Metadata};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use backmesh_table::Patterns;

use super::error::{ArchiveError, Warning, WarningKind};

/// Exclude patterns. A pattern without `/` matches a name at any depth
/// (`*.log`, `node_modules`); one with `/` matches the path relative to the
/// backed-up root (`cache/**`, `data/tmp`): `backmesh_table::Patterns`,
/// as `--include` reads them too.
#[derive(Clone, Debug, Default)]
pub struct Excludes(Patterns);

impl Excludes {
    pub fn new(patterns: &[String]) -> Result<Self, ArchiveError> {
        Patterns::new(patterns)
            .map(Excludes)
            .map_err(|e| ArchiveError::BadExclude { pattern: e.pattern, reason: e.reason })
    }

    pub fn is_excluded(&self, rel: &[u8]) -> bool {
        self.0.matches(rel)
    }
}

/// What `lstat` says of an entry: the fields a backup uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stat {
    pub dev: u64,
    pub ino: u64,
    pub mode: u32,
    pub nlink: u64,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub mtime: i64,
    pub mtime_nsec: i64,
    pub ctime: i64,
    pub ctime_nsec: i64,
}

impl Stat {
    // Field types differ between platforms (rustix's raw `stat`): cast.
    #[allow(clippy::unnecessary_cast)]
    fn of(s: &rustix::fs::Stat) -> Self {
        Stat {
            dev: s.st_dev as u64,
            ino: s.st_ino as u64,
            mode: s.st_mode as u32,
            nlink: s.st_nlink as u64,
            uid: s.st_uid as u32,
            gid: s.st_gid as u32,
            size: s.st_size.max(0) as u64,
            mtime: s.st_mtime as i64,
            mtime_nsec: s.st_mtime_nsec as i64,
            ctime: s.st_ctime as i64,
            ctime_nsec: s.st_ctime_nsec as i64,
        }
    }
    fn kind(&self) -> u32 {
        self.mode & libc::S_IFMT
    }
    pub fn is_dir(&self) -> bool {
        self.kind() == libc::S_IFDIR
    }
    pub fn is_file(&self) -> bool {
        self.kind() == libc::S_IFREG
    }
    pub fn is_symlink(&self) -> bool {
        self.kind() == libc::S_IFLNK
    }
}

impl From<&Metadata> for Stat {
    fn from(m: &Metadata) -> Self {
        use std::os::unix::fs::MetadataExt;
        Stat {
            dev: m.dev(),
            ino: m.ino(),
            mode: m.mode(),
            nlink: m.nlink(),
            uid: m.uid(),
            gid: m.gid(),
            size: m.size(),
            mtime: m.mtime(),
            mtime_nsec: m.mtime_nsec(),
            ctime: m.ctime(),
            ctime_nsec: m.ctime_nsec(),
        }
    }
}

/// One visited entry.
pub struct Walked {
    /// Path relative to the root, `/`-separated.
    pub rel: Vec<u8>,
    /// `lstat` of the entry when it was visited.
    pub meta: Stat,
}

/// Deeper than this, a directory is listed by its path and not kept open
/// (a walk holds one descriptor per level it is in).
const MAX_OPEN_LEVELS: usize = 128;

/// One directory the walk is in.
struct Level {
    /// Its path relative to the root.
    rel: Vec<u8>,
    /// The open directory its children are looked up in (one path
    /// component each, not the whole path from the root); `None` past
    /// [`MAX_OPEN_LEVELS`] or when it could not be kept open.
    dir: Option<rustix::fs::Dir>,
    /// Its children's names, one after another (one allocation a
    /// directory, not one a name)...
    names: Vec<u8>,
    /// ...and where each is in `names`, the remaining ones in reverse order.
    children: Vec<(u32, u32)>,
}

/// Depth-first walker in sorted order. Holds one sorted name list (and
/// one open directory) per level it is in, nothing more.
pub struct Walker {
    root: PathBuf,
    excludes: Excludes,
    stack: Vec<Level>,
    pub warnings: Vec<Warning>,
}

impl Walker {
    /// Starts a walk of `root`, which must be a directory.
    pub fn new(root: &Path, excludes: Excludes) -> Result<Self, ArchiveError> {
        let meta = fs::metadata(root).map_err(|e| ArchiveError::Root { path: root.to_path_buf(), source: e })?;
        if !meta.is_dir() {
            return Err(ArchiveError::NotADirectory { path: root.to_path_buf() });
        }
        // The root may be a symlink to a directory; nothing under it is followed.
        let level = open_level(rustix::fs::CWD, root, Vec::new(), false)
            .map_err(|e| ArchiveError::Root { path: root.to_path_buf(), source: e })?;
        Ok(Walker { root: root.to_path_buf(), excludes, stack: vec![level], warnings: Vec::new() })
    }

    /// The absolute path of an entry.
    pub fn abs(root: &Path, rel: &[u8]) -> PathBuf {
        root.join(std::ffi::OsStr::from_bytes(rel))
    }

    fn next_item(&mut self) -> Option<Walked> {
        loop {
            let depth = self.stack.len();
            let level = self.stack.last_mut()?;
            let Some((start, end)) = level.children.pop() else {
                self.stack.pop();
                continue;
            };
            let name = &level.names[start as usize..end as usize];
            let mut rel = Vec::with_capacity(level.rel.len() + 1 + name.len());
            rel.extend_from_slice(&level.rel);
            if !rel.is_empty() {
                rel.push(b'/');
            }
            rel.extend_from_slice(name);
            if self.excludes.is_excluded(&rel) {
                continue;
            }
            let nofollow = rustix::fs::AtFlags::SYMLINK_NOFOLLOW;
            let stat = match level.dir.as_ref().map(|d| d.fd()) {
                Some(Ok(fd)) => rustix::fs::statat(fd, name, nofollow),
                _ => rustix::fs::statat(rustix::fs::CWD, Walker::abs(&self.root, &rel).as_path(), nofollow),
            };
            let meta = match stat {
                Ok(s) => Stat::of(&s),
                Err(e) => {
                    self.warnings.push(Warning::from_io(&rel, WarningKind::Vanished, &e.into()));
                    continue;
                }
            };
            if meta.is_dir() {
                let keep_open = depth < MAX_OPEN_LEVELS;
                let opened = match level.dir.as_ref().map(|d| d.fd()) {
                    Some(Ok(fd)) => {
                        open_level(fd, Path::new(std::ffi::OsStr::from_bytes(name)), rel.clone(), keep_open)
                    }
                    _ => open_level(rustix::fs::CWD, &Walker::abs(&self.root, &rel), rel.clone(), keep_open),
                };
                match opened {
                    Ok(child) => self.stack.push(child),
                    Err(e) => self.warnings.push(Warning::from_io(&rel, WarningKind::Unreadable, &e)),
                }
            }
            return Some(Walked { rel, meta });
        }
    }
}

impl Iterator for Walker {
    type Item = Walked;
    fn next(&mut self) -> Option<Walked> {
        self.next_item()
    }
}

/// Opens directory `path` (relative to `at`; below the root, never
/// through a symlink: one swapped in since the `lstat` is refused) and
/// lists its children, sorted so that `pop()` yields them in byte order.
fn open_level<Fd: std::os::fd::AsFd>(at: Fd, path: &Path, rel: Vec<u8>, keep_open: bool) -> std::io::Result<Level> {
    use rustix::fs::{Mode, OFlags};
    let mut flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
    if !rel.is_empty() {
        flags |= OFlags::NOFOLLOW;
    }
    let fd = rustix::fs::openat(at, path, flags, Mode::empty())?;
    let mut dir = rustix::fs::Dir::new(fd)?;
    let (mut names, mut children) = (Vec::new(), Vec::new());
    while let Some(entry) = dir.read() {
        let entry = entry?;
        let name = entry.file_name().to_bytes();
        if name != b"." && name != b".." {
            let start = names.len();
            names.extend_from_slice(name);
            let too_many = || std::io::Error::other("directory listing over 4 GiB of names");
            children.push((
                u32::try_from(start).map_err(|_| too_many())?,
                u32::try_from(names.len()).map_err(|_| too_many())?,
            ));
        }
    }
    let name = |&(s, e): &(u32, u32)| &names[s as usize..e as usize];
    children.sort_unstable_by(|a, b| name(b).cmp(name(a)));
    Ok(Level { rel, dir: keep_open.then_some(dir), names, children })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn walk(root: &Path, ex: &[&str]) -> Vec<String> {
        let ex = Excludes::new(&ex.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        Walker::new(root, ex).unwrap().map(|i| String::from_utf8(i.rel).unwrap()).collect()
    }

    #[test]
    fn sorted_depth_first_with_excludes() {
        let t = tempfile::tempdir().unwrap();
        for p in ["b/z", "b/a", "a.txt", "c/x.log", "c/keep", "cache/big"] {
            let p = t.path().join(p);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, b"x").unwrap();
        }
        assert_eq!(walk(t.path(), &[]), ["a.txt", "b", "b/a", "b/z", "c", "c/keep", "c/x.log", "cache", "cache/big"]);
        assert_eq!(walk(t.path(), &["*.log", "cache"]), ["a.txt", "b", "b/a", "b/z", "c", "c/keep"]);
        assert_eq!(walk(t.path(), &["b/*"]), ["a.txt", "b", "c", "c/keep", "c/x.log", "cache", "cache/big"]);
    }

    #[test]
    fn bad_patterns_and_roots_are_named() {
        let err = Excludes::new(&["a[".to_string()]).unwrap_err();
        assert!(err.to_string().contains("a["), "{err}");
        let t = tempfile::tempdir().unwrap();
        let f = t.path().join("file");
        fs::write(&f, b"").unwrap();
        let err = Walker::new(&f, Excludes::default()).err().unwrap();
        assert!(err.to_string().contains("not a directory"), "{err}");
        let err = Walker::new(&t.path().join("missing"), Excludes::default()).err().unwrap();
        assert!(err.to_string().contains("missing"), "{err}");
    }
}
