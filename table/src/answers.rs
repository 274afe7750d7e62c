//! The API's answers about an archive's files, made from its table: the
//! same whether the node reads the table or the operator's CLI opens it.

use backmesh_api::files::{Change, Compared, FoundIn, Listing};

use crate::patterns::Patterns;
use crate::record::FileRecord;
use crate::tree::{self, Diff};

/// The listing of `under` (as a person types it) in archive `id` of
/// (node, path); `None` when it holds no such path.
pub fn listing(
    (node, path, id): (&str, &str, &str),
    files: &[FileRecord],
    under: &str,
    recursive: bool,
) -> Option<Listing> {
    let under = tree::normalise(under);
    let listed = tree::list(files, &under, recursive)?;
    Some(Listing {
        node: node.into(),
        path: path.into(),
        archive: id.into(),
        under: String::from_utf8_lossy(&under).into_owned(),
        entries: listed.iter().map(|&i| files[i].entry()).collect(),
    })
}

/// The entries of archive `id` (made at `created_ms`) that match
/// `patterns`; `None` when none does.
pub fn found_in(id: &str, created_ms: i64, hidden: bool, files: &[FileRecord], patterns: &Patterns) -> Option<FoundIn> {
    let entries: Vec<_> = files.iter().filter(|f| patterns.matches(&f.path)).map(|f| f.entry()).collect();
    (!entries.is_empty()).then(|| FoundIn {
        archive: id.into(),
        created: backmesh_api::files::rfc3339(created_ms),
        hidden,
        entries,
    })
}

/// `d`, the diff of archive `from` (table `a`) and `to` (table `b`) of (node, path), as the API says it.
pub fn compared(
    (node, path): (&str, &str),
    (from, a): (&str, &[FileRecord]),
    (to, b): (&str, &[FileRecord]),
    d: &Diff,
) -> Compared {
    let change = |(i, j): &(usize, usize)| Change { before: a[*i].entry(), after: b[*j].entry() };
    Compared {
        node: node.into(),
        path: path.into(),
        from: from.into(),
        to: to.into(),
        added: d.added.iter().map(|&j| b[j].entry()).collect(),
        removed: d.removed.iter().map(|&i| a[i].entry()).collect(),
        changed: d.changed.iter().map(change).collect(),
        metadata: d.metadata.iter().map(change).collect(),
    }
}
