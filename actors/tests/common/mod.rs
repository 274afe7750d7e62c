//! Shared helpers: a seeded tree generator and an exact tree comparison.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use filetime::FileTime;

/// SplitMix64: small, seeded, good enough for test data.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(n + 8);
        while v.len() < n {
            v.extend_from_slice(&self.next().to_le_bytes());
        }
        v.truncate(n);
        v
    }
    /// Compressible text-like bytes.
    pub fn text(&mut self, n: usize) -> Vec<u8> {
        const WORDS: &[&str] = &[
            "fn ", "let ", "mut ", "self", ".", "(", ")", "{\n", "}\n", "    ", "backup", "mesh", "=", ";\n", "0", "1",
            "path", "node",
        ];
        let mut v = Vec::with_capacity(n + 16);
        while v.len() < n {
            v.extend_from_slice(WORDS[self.below(WORDS.len() as u64) as usize].as_bytes());
        }
        v.truncate(n);
        v
    }
}

fn set_mtime(p: &Path, rng: &mut Rng) {
    let secs = 1_000_000_000 + rng.below(700_000_000) as i64;
    let nsec = if rng.below(2) == 0 { 0 } else { rng.below(1_000_000_000) as u32 };
    filetime::set_symlink_file_times(p, FileTime::from_unix_time(secs, nsec), FileTime::from_unix_time(secs, nsec))
        .unwrap();
}

/// A tree with the awkward cases: spaces, unicode, long names, deep
/// nesting, empty and large files, symlinks, hard links, odd modes, empty
/// directories, sub-second and pre-1970 mtimes.
pub fn gen_tree(root: &Path, seed: u64) {
    let mut rng = Rng(seed);
    fs::create_dir_all(root).unwrap();
    let mut dirs = vec![root.to_path_buf()];
    let names = ["plain", "with space", "ünïcødé-名前", "dash-dot.v2", "UPPER", "x"];
    for i in 0..12 {
        let parent = dirs[rng.below(dirs.len() as u64) as usize].clone();
        let d = parent.join(format!("{} {i}", names[rng.below(names.len() as u64) as usize]));
        fs::create_dir_all(&d).unwrap();
        dirs.push(d);
    }
    // Deep nesting, and a path well over 100 and 255 bytes in total.
    let mut deep = root.join("deep");
    for i in 0..30 {
        deep = deep.join(format!("level-{i:02}-abcdefgh"));
    }
    fs::create_dir_all(&deep).unwrap();
    fs::write(deep.join("bottom.txt"), b"at the bottom").unwrap();
    let long_name = format!("{}.txt", "L".repeat(200));
    fs::write(root.join(&long_name), rng.text(300)).unwrap();
    let mut files = Vec::new();
    for i in 0..60 {
        let dir = &dirs[rng.below(dirs.len() as u64) as usize];
        let p = dir.join(format!("{} f{i}.dat", names[rng.below(names.len() as u64) as usize]));
        let size = match rng.below(10) {
            0 => 0,
            1..=6 => rng.below(20_000) as usize,
            7 | 8 => rng.below(200_000) as usize,
            _ => 300_000 + rng.below(1_500_000) as usize,
        };
        let data = if rng.below(2) == 0 { rng.text(size) } else { rng.bytes(size) };
        fs::write(&p, data).unwrap();
        files.push(p);
    }
    // Odd modes.
    let modes = [0o600, 0o755, 0o4755, 0o2750, 0o444, 0o000, 0o1777 & 0o777];
    for (i, f) in files.iter().enumerate().take(modes.len()) {
        fs::set_permissions(f, fs::Permissions::from_mode(modes[i])).unwrap();
    }
    // Hard links (inside the tree) and symlinks (relative, absolute, dangling, to a dir).
    fs::hard_link(&files[10], root.join("hardlink to f10")).unwrap();
    fs::hard_link(&files[10], dirs[1].join("second hardlink")).unwrap();
    std::os::unix::fs::symlink("../x", root.join("dangling")).unwrap();
    std::os::unix::fs::symlink("/etc/hostname", root.join("absolute link")).unwrap();
    std::os::unix::fs::symlink(files[3].strip_prefix(root).unwrap(), root.join("rel link")).unwrap();
    std::os::unix::fs::symlink("deep", root.join("dir link")).unwrap();
    std::os::unix::fs::symlink("t".repeat(150), root.join("long target link")).unwrap();
    // Empty directories, one read-only, one sticky.
    fs::create_dir_all(root.join("empty/inner-empty")).unwrap();
    fs::create_dir(root.join("readonly dir")).unwrap();
    fs::write(root.join("readonly dir/inside"), b"ro").unwrap();
    fs::create_dir(root.join("sticky")).unwrap();
    fs::set_permissions(root.join("sticky"), fs::Permissions::from_mode(0o1777)).unwrap();
    // A pre-1970 mtime.
    filetime::set_file_mtime(&files[20], FileTime::from_unix_time(-86_400 * 365, 250_000_000)).unwrap();
    // Mtimes everywhere else, deepest first so parents keep theirs.
    let mut all: Vec<PathBuf> = walk(root).into_keys().map(|r| root.join(r)).collect();
    all.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for p in all {
        if p != files[20] {
            set_mtime(&p, &mut rng);
        }
    }
    fs::set_permissions(root.join("readonly dir"), fs::Permissions::from_mode(0o555)).unwrap();
}

/// Everything a restore must reproduce about one entry.
#[derive(Debug, PartialEq, Eq)]
pub struct Seen {
    pub kind: &'static str,
    pub mode: u32,
    pub mtime: (i64, i64),
    pub uid: u32,
    pub gid: u32,
    pub content: Option<Vec<u8>>,
    pub link: Option<PathBuf>,
    /// Index of the first path sharing this inode (hard links).
    pub inode_group: Option<String>,
}

/// Relative path (lossy string) → what is there, for every entry under root.
pub fn walk(root: &Path) -> BTreeMap<String, Seen> {
    let mut out = BTreeMap::new();
    let mut inodes: BTreeMap<u64, String> = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let mut entries: Vec<_> = fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
        entries.sort();
        for p in entries {
            let m = fs::symlink_metadata(&p).unwrap();
            let rel = String::from_utf8_lossy(p.strip_prefix(root).unwrap().as_os_str().as_bytes()).into_owned();
            let ft = m.file_type();
            let (kind, content, link) = if ft.is_dir() {
                stack.push(p.clone());
                ("dir", None, None)
            } else if ft.is_symlink() {
                ("symlink", None, Some(fs::read_link(&p).unwrap()))
            } else {
                ("file", Some(fs::read(&p).unwrap()), None)
            };
            let inode_group =
                (ft.is_file() && m.nlink() > 1).then(|| inodes.entry(m.ino()).or_insert(rel.clone()).clone());
            out.insert(
                rel,
                Seen {
                    kind,
                    mode: if ft.is_symlink() { 0 } else { m.mode() & 0o7777 },
                    mtime: (m.mtime(), m.mtime_nsec()),
                    uid: m.uid(),
                    gid: m.gid(),
                    content,
                    link,
                    inode_group,
                },
            );
        }
    }
    out
}

/// Asserts two trees are identical in content and metadata; hard-link
/// groups are compared by membership, not by which name came first.
pub fn assert_same_tree(a: &Path, b: &Path) {
    let (wa, wb) = (walk(a), walk(b));
    let ka: Vec<_> = wa.keys().collect();
    let kb: Vec<_> = wb.keys().collect();
    assert_eq!(ka, kb, "different entries");
    let groups = |w: &BTreeMap<String, Seen>| -> Vec<Vec<String>> {
        let mut g: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (k, s) in w {
            if let Some(first) = &s.inode_group {
                g.entry(first.clone()).or_default().push(k.clone());
            }
        }
        let mut v: Vec<_> = g.into_values().collect();
        v.sort();
        v
    };
    assert_eq!(groups(&wa), groups(&wb), "hard-link groups differ");
    for (k, sa) in &wa {
        let sb = &wb[k];
        assert_eq!(
            (sa.kind, sa.mode, sa.mtime, sa.uid, sa.gid, &sa.link),
            (sb.kind, sb.mode, sb.mtime, sb.uid, sb.gid, &sb.link),
            "metadata of {k}"
        );
        assert!(sa.content == sb.content, "content of {k}");
    }
}

pub fn sha256_file(p: &Path) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(fs::read(p).unwrap()))
}
