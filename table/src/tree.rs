//! Reading a file table as a tree: what a pattern selects, what a
//! directory holds, and what changed between two archives.

use std::collections::{BTreeMap, HashMap};
use std::io;

use crate::layout::Layout;
use crate::patterns::Patterns;
use crate::record::{is_within, parent, FileRecord};
use crate::tarfmt::Kind;

/// The entries `patterns` select (an entry matches, or a directory above
/// it does), with what restoring them needs besides: every directory
/// above each (so that their modes and times come back too) and, for a
/// hard link, the file it is a second name of. Indices in table order.
pub fn select(files: &[FileRecord], patterns: &Patterns) -> Vec<usize> {
    let index: HashMap<&[u8], usize> = files.iter().enumerate().map(|(i, f)| (f.path.as_slice(), i)).collect();
    let mut chosen = vec![false; files.len()];
    for (i, f) in files.iter().enumerate() {
        if chosen[i] || !patterns.covers(&f.path) {
            continue;
        }
        chosen[i] = true;
        let mut dir = parent(&f.path);
        while !dir.is_empty() {
            match index.get(dir) {
                Some(&d) if !chosen[d] => chosen[d] = true,
                Some(_) => break,
                None => {}
            }
            dir = parent(dir);
        }
        if f.kind == Kind::HardLink {
            if let Some(&t) = f.link.as_ref().and_then(|l| index.get(l.as_slice())) {
                chosen[t] = true;
                let mut dir = parent(&files[t].path);
                while let Some(&d) = (!dir.is_empty()).then(|| index.get(dir)).flatten() {
                    chosen[d] = true;
                    dir = parent(dir);
                }
            }
        }
    }
    chosen.iter().enumerate().filter(|(_, c)| **c).map(|(i, _)| i).collect()
}

/// The entry whose content entry `i` has: itself for a file, its file
/// for a hard link; `None` for anything else, or a link to no file.
pub fn content_of(files: &[FileRecord], i: usize) -> Option<usize> {
    let f = files.get(i)?;
    match (f.kind, &f.link) {
        (Kind::File, _) => Some(i),
        (Kind::HardLink, Some(l)) => {
            files.iter().position(|g| g.path.as_slice() == l.as_slice()).filter(|&t| files[t].kind == Kind::File)
        }
        _ => None,
    }
}

/// Normalises a path inside an archive as a person types it: no leading
/// `./` or `/`, no trailing `/`, `.` and `""` for the root.
pub fn normalise(path: &str) -> Vec<u8> {
    let p = path.trim_start_matches("./").trim_start_matches('/').trim_end_matches('/');
    if p == "." {
        Vec::new()
    } else {
        p.as_bytes().to_vec()
    }
}

/// What directory `dir` (`""`: the root) holds: its entries, or with
/// `recursive` everything beneath it, in table order. An entry that is not
/// a directory lists itself; `None` when nothing by that path is there.
pub fn list(files: &[FileRecord], dir: &[u8], recursive: bool) -> Option<Vec<usize>> {
    if let Some(i) = files.iter().position(|f| f.path.as_slice() == dir) {
        if files[i].kind != Kind::Dir {
            return Some(vec![i]);
        }
    } else if !dir.is_empty() {
        return None;
    }
    Some(
        files
            .iter()
            .enumerate()
            .filter(|(_, f)| f.path.as_slice() != dir && is_within(&f.path, dir))
            .filter(|(_, f)| recursive || parent(&f.path) == dir)
            .map(|(i, _)| i)
            .collect(),
    )
}

/// What changed from one archive's table to another's.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Diff {
    /// Entries only the second has (its indices).
    pub added: Vec<usize>,
    /// Entries only the first has (its indices).
    pub removed: Vec<usize>,
    /// (first, second): another kind, content or link target.
    pub changed: Vec<(usize, usize)>,
    /// (first, second): the same content, another mode, owner or time.
    pub metadata: Vec<(usize, usize)>,
}

/// Compares tables `a` and `b` by path. Two regular files of one size are
/// compared by content, which `same_content(i, j)` says (it reads what it
/// must); every other pair by its records.
pub fn diff(
    a: &[FileRecord],
    b: &[FileRecord],
    same_content: &mut dyn FnMut(usize, usize) -> io::Result<bool>,
) -> io::Result<Diff> {
    let mut by_path: BTreeMap<&[u8], (Option<usize>, Option<usize>)> = BTreeMap::new();
    for (i, f) in a.iter().enumerate() {
        by_path.entry(&f.path).or_default().0 = Some(i);
    }
    for (j, f) in b.iter().enumerate() {
        by_path.entry(&f.path).or_default().1 = Some(j);
    }
    let mut d = Diff::default();
    for (_, pair) in by_path {
        match pair {
            (Some(i), None) => d.removed.push(i),
            (None, Some(j)) => d.added.push(j),
            (Some(i), Some(j)) => {
                let (x, y) = (&a[i], &b[j]);
                let content_differs = x.kind != y.kind
                    || x.link != y.link
                    || (x.kind == Kind::File && (x.size != y.size || !same_content(i, j)?));
                let meta_differs =
                    (x.mode, x.mtime, x.mtime_nsec, x.uid, x.gid) != (y.mode, y.mtime, y.mtime_nsec, y.uid, y.gid);
                if content_differs {
                    d.changed.push((i, j));
                } else if meta_differs {
                    d.metadata.push((i, j));
                }
            }
            (None, None) => {}
        }
    }
    Ok(d)
}

/// For a diff of `a` (laid out as `la`, its members named `da`) and `b`:
/// the pairs of files of one path and one size whose bytes are the same
/// bytes of members of the same names at the same place (the same
/// content, unread), and the entries of each whose content must be read
/// to tell.
pub struct ToCompare {
    pub same: std::collections::HashSet<(usize, usize)>,
    pub read_a: Vec<usize>,
    pub read_b: Vec<usize>,
}

pub fn to_compare<D: PartialEq>(
    (a, la, da): (&[FileRecord], &Layout, &[D]),
    (b, lb, db): (&[FileRecord], &Layout, &[D]),
) -> ToCompare {
    let in_b: HashMap<&[u8], usize> = b.iter().enumerate().map(|(j, f)| (f.path.as_slice(), j)).collect();
    let mut out = ToCompare { same: Default::default(), read_a: Vec::new(), read_b: Vec::new() };
    for (i, f) in a.iter().enumerate() {
        let Some(&j) = in_b.get(f.path.as_slice()) else { continue };
        let g = &b[j];
        if f.kind != Kind::File || g.kind != Kind::File || g.size != f.size {
            continue;
        }
        let (ea, eb) = (la.entry(i), lb.entry(j));
        let (ma, mb) = (la.members_of(ea.clone()), lb.members_of(eb.clone()));
        let same = ea.end - ea.start == eb.end - eb.start
            && ea.start - la.member(ma.start).start == eb.start - lb.member(mb.start).start
            && da.get(ma.clone()) == db.get(mb.clone())
            && da.get(ma).is_some();
        if same {
            out.same.insert((i, j));
        } else {
            out.read_a.push(i);
            out.read_b.push(j);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::rec;

    fn table() -> Vec<FileRecord> {
        let mut link = rec("etc/b.conf", Kind::HardLink, 0);
        link.link = Some(serde_bytes::ByteBuf::from(b"var/a.conf".to_vec()));
        vec![
            rec("etc", Kind::Dir, 0),
            link,
            rec("etc/x", Kind::Dir, 0),
            rec("etc/x/y.log", Kind::File, 4),
            rec("var", Kind::Dir, 0),
            rec("var/a.conf", Kind::File, 9),
            rec("var/z", Kind::File, 1),
        ]
    }

    fn pats(p: &[&str]) -> Patterns {
        Patterns::new(&p.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn a_selection_brings_its_directories_and_a_hard_links_file() {
        let t = table();
        assert_eq!(select(&t, &pats(&["*.log"])), vec![0, 2, 3]);
        assert_eq!(select(&t, &pats(&["etc/b.conf"])), vec![0, 1, 4, 5], "the link's file and its directory");
        assert_eq!(select(&t, &pats(&["etc/x"])), vec![0, 2, 3], "a directory brings what it holds");
        assert_eq!(select(&t, &pats(&["nothing"])), Vec::<usize>::new());
    }

    #[test]
    fn the_walk_order_is_the_order_of_components() {
        use crate::walk_cmp;
        use std::cmp::Ordering::*;
        assert_eq!(walk_cmp(b"a", b"a/b"), Less);
        assert_eq!(walk_cmp(b"a/b", b"a.txt"), Less, "depth first, though '.' < '/'");
        assert_eq!(walk_cmp(b"a/z", b"b"), Less);
        assert_eq!(walk_cmp(b"x", b"x"), Equal);
    }

    #[test]
    fn a_hard_link_s_content_is_its_file_s_and_a_dangling_one_has_none() {
        let mut t = table();
        assert_eq!(content_of(&t, 1), Some(5), "etc/b.conf → var/a.conf");
        assert_eq!(content_of(&t, 0), None, "a directory");
        t[1].link = Some(serde_bytes::ByteBuf::from(b"nowhere".to_vec()));
        assert_eq!(content_of(&t, 1), None);
        t[1].link = Some(serde_bytes::ByteBuf::from(b"etc".to_vec()));
        assert_eq!(content_of(&t, 1), None, "a link to a directory");
    }

    #[test]
    fn listings_hold_a_directory_s_children_or_everything_beneath() {
        let t = table();
        assert_eq!(list(&t, b"", false), Some(vec![0, 4]));
        assert_eq!(list(&t, &normalise("./etc/"), false), Some(vec![1, 2]));
        assert_eq!(list(&t, b"etc", true), Some(vec![1, 2, 3]));
        assert_eq!(list(&t, b"var/z", false), Some(vec![6]));
        assert_eq!(list(&t, b"nope", false), None);
        assert_eq!(normalise("/"), Vec::<u8>::new());
    }

    #[test]
    fn a_diff_tells_content_from_metadata_and_asks_for_content_only_where_sizes_agree() {
        let a = table();
        let mut b = table();
        b.remove(6); // var/z removed
        b.push(rec("var/new", Kind::File, 2));
        b[3].mtime += 1; // etc/x/y.log: touched only
        b[5].size = 10; // var/a.conf: grew
        let mut asked = Vec::new();
        let d = diff(&a, &b, &mut |i, j| {
            asked.push((i, j));
            Ok(true)
        })
        .unwrap();
        assert_eq!(asked, vec![(3, 3)]);
        assert_eq!(d.removed, vec![6]);
        assert_eq!(d.added, vec![6]);
        assert_eq!(d.changed, vec![(5, 5)]);
        assert_eq!(d.metadata, vec![(3, 3)]);
        let d = diff(&a, &b, &mut |_, _| Ok(false)).unwrap();
        assert_eq!(d.changed, vec![(3, 3), (5, 5)], "same size, other bytes: changed");
    }
}
