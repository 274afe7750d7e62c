//! The tree walk: depth-first, children in byte order of their names, so
//! the same tree always yields the same sequence. Excluded paths are never
//! visited; directories that cannot be listed become warnings.

use std::fs::{self, Metadata};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use globset::{Glob, GlobSet, GlobSetBuilder};

use super::{ArchiveError, Warning, WarningKind};

/// Exclude patterns. A pattern without `/` matches a name at any depth
/// (`*.log`, `node_modules`); one with `/` matches the path relative to the
/// backed-up root (`cache/**`, `data/tmp`).
#[derive(Clone, Debug, Default)]
pub struct Excludes {
    names: Option<GlobSet>,
    paths: Option<GlobSet>,
}

impl Excludes {
    pub fn new(patterns: &[String]) -> Result<Self, ArchiveError> {
        let (mut names, mut paths) = (GlobSetBuilder::new(), GlobSetBuilder::new());
        let (mut n, mut p) = (0, 0);
        for pat in patterns {
            let glob = Glob::new(pat.trim_end_matches('/'))
                .map_err(|e| ArchiveError::BadExclude { pattern: pat.clone(), reason: e.kind().to_string() })?;
            if pat.trim_end_matches('/').contains('/') {
                paths.add(glob);
                p += 1;
            } else {
                names.add(glob);
                n += 1;
            }
        }
        let build = |b: GlobSetBuilder, count: usize| -> Result<Option<GlobSet>, ArchiveError> {
            if count == 0 {
                return Ok(None);
            }
            b.build()
                .map(Some)
                .map_err(|e| ArchiveError::BadExclude { pattern: patterns.join(" "), reason: e.to_string() })
        };
        Ok(Excludes { names: build(names, n)?, paths: build(paths, p)? })
    }

    pub fn is_excluded(&self, rel: &[u8]) -> bool {
        let rel_path = Path::new(std::ffi::OsStr::from_bytes(rel));
        if let Some(paths) = &self.paths {
            if paths.is_match(rel_path) {
                return true;
            }
        }
        if let Some(names) = &self.names {
            let name = rel.rsplit(|&b| b == b'/').next().unwrap_or(rel);
            if names.is_match(Path::new(std::ffi::OsStr::from_bytes(name))) {
                return true;
            }
        }
        false
    }
}

/// One visited entry.
pub struct Item {
    /// Path relative to the root, `/`-separated.
    pub rel: Vec<u8>,
    pub abs: PathBuf,
    /// `lstat` of the entry when it was visited.
    pub meta: Metadata,
}

/// Depth-first walker in sorted order. Holds one sorted name list per open
/// directory level, nothing more.
pub struct Walker {
    root: PathBuf,
    excludes: Excludes,
    /// (relative dir path, its remaining children in reverse order).
    stack: Vec<(Vec<u8>, Vec<Vec<u8>>)>,
    pub warnings: Vec<Warning>,
}

impl Walker {
    /// Starts a walk of `root`, which must be a directory.
    pub fn new(root: &Path, excludes: Excludes) -> Result<Self, ArchiveError> {
        let meta = fs::metadata(root).map_err(|e| ArchiveError::Root { path: root.to_path_buf(), source: e })?;
        if !meta.is_dir() {
            return Err(ArchiveError::NotADirectory { path: root.to_path_buf() });
        }
        let children = read_sorted(root).map_err(|e| ArchiveError::Root { path: root.to_path_buf(), source: e })?;
        Ok(Walker { root: root.to_path_buf(), excludes, stack: vec![(Vec::new(), children)], warnings: Vec::new() })
    }

    fn next_item(&mut self) -> Option<Item> {
        loop {
            let (dir, children) = self.stack.last_mut()?;
            let Some(name) = children.pop() else {
                self.stack.pop();
                continue;
            };
            let mut rel = dir.clone();
            if !rel.is_empty() {
                rel.push(b'/');
            }
            rel.extend_from_slice(&name);
            if self.excludes.is_excluded(&rel) {
                continue;
            }
            let abs = self.root.join(std::ffi::OsStr::from_bytes(&rel));
            let meta = match fs::symlink_metadata(&abs) {
                Ok(m) => m,
                Err(e) => {
                    self.warnings.push(Warning::from_io(&rel, WarningKind::Vanished, &e));
                    continue;
                }
            };
            if meta.is_dir() {
                match read_sorted(&abs) {
                    Ok(children) => self.stack.push((rel.clone(), children)),
                    Err(e) => self.warnings.push(Warning::from_io(&rel, WarningKind::Unreadable, &e)),
                }
            }
            return Some(Item { rel, abs, meta });
        }
    }
}

impl Iterator for Walker {
    type Item = Item;
    fn next(&mut self) -> Option<Item> {
        self.next_item()
    }
}

/// Child names of `dir`, sorted so that `pop()` yields them in byte order.
fn read_sorted(dir: &Path) -> std::io::Result<Vec<Vec<u8>>> {
    let mut names =
        fs::read_dir(dir)?.map(|e| e.map(|e| e.file_name().as_bytes().to_vec())).collect::<Result<Vec<_>, _>>()?;
    names.sort_unstable_by(|a, b| b.cmp(a));
    Ok(names)
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
