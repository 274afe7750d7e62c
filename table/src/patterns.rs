//! Path patterns, as excludes and `--include` read them: a pattern without
//! `/` matches a name at any depth (`*.log`, `node_modules`); one with `/`
//! matches the path relative to the backed-up root (`cache/**`,
//! `etc/app.conf`). A trailing `/` is dropped.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use globset::{Glob, GlobSet, GlobSetBuilder};

/// A pattern that is not a glob, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PatternError {
    pub pattern: String,
    pub reason: String,
}

impl std::fmt::Display for PatternError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "bad pattern `{}`: {}", self.pattern, self.reason)
    }
}

impl std::error::Error for PatternError {}

/// A set of patterns; none matches nothing.
#[derive(Clone, Debug, Default)]
pub struct Patterns {
    names: Option<GlobSet>,
    paths: Option<GlobSet>,
}

impl Patterns {
    pub fn new(patterns: &[String]) -> Result<Patterns, PatternError> {
        let (mut names, mut paths) = (GlobSetBuilder::new(), GlobSetBuilder::new());
        let (mut n, mut p) = (0, 0);
        for pat in patterns {
            let trimmed = pat.trim_end_matches('/');
            let glob =
                Glob::new(trimmed).map_err(|e| PatternError { pattern: pat.clone(), reason: e.kind().to_string() })?;
            if trimmed.contains('/') {
                paths.add(glob);
                p += 1;
            } else {
                names.add(glob);
                n += 1;
            }
        }
        let build = |b: GlobSetBuilder, count: usize| -> Result<Option<GlobSet>, PatternError> {
            if count == 0 {
                return Ok(None);
            }
            b.build().map(Some).map_err(|e| PatternError { pattern: patterns.join(" "), reason: e.to_string() })
        };
        Ok(Patterns { names: build(names, n)?, paths: build(paths, p)? })
    }

    /// Whether no pattern was given.
    pub fn is_empty(&self) -> bool {
        self.names.is_none() && self.paths.is_none()
    }

    /// Whether `rel` (relative, `/`-separated) matches a pattern.
    pub fn matches(&self, rel: &[u8]) -> bool {
        if let Some(paths) = &self.paths {
            if paths.is_match(Path::new(OsStr::from_bytes(rel))) {
                return true;
            }
        }
        if let Some(names) = &self.names {
            let name = rel.rsplit(|&b| b == b'/').next().unwrap_or(rel);
            if names.is_match(Path::new(OsStr::from_bytes(name))) {
                return true;
            }
        }
        false
    }

    /// Whether `rel` or a directory above it matches.
    pub fn covers(&self, rel: &[u8]) -> bool {
        let mut end = rel.len();
        loop {
            if self.matches(&rel[..end]) {
                return true;
            }
            match rel[..end].iter().rposition(|&b| b == b'/') {
                Some(i) => end = i,
                None => return false,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pats(p: &[&str]) -> Patterns {
        Patterns::new(&p.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn names_match_at_any_depth_and_paths_from_the_root() {
        let p = pats(&["*.log", "etc/app.conf", "cache/"]);
        assert!(p.matches(b"a.log") && p.matches(b"x/y/a.log"));
        assert!(p.matches(b"etc/app.conf") && !p.matches(b"srv/etc/app.conf"));
        assert!(p.matches(b"cache") && p.matches(b"x/cache") && !p.matches(b"cache/f"));
        assert!(p.covers(b"cache/f/g") && !p.covers(b"cachex/f"));
        assert!(pats(&[]).is_empty() && !pats(&[]).matches(b"a"));
        let bad = Patterns::new(&["a[".to_string()]).unwrap_err();
        assert_eq!(bad.pattern, "a[");
    }
}
