//! Looking inside archives on a real 3-node mesh (`ls`, `find`, `diff`,
//! `dump`, `restore --include`, `fetch --include`): exactly what GNU tar
//! lists and extracts from the fetched whole archive, through any node,
//! also once the series' own node is gone.

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use backmesh_api::cli::RunOutcome;
use backmesh_api::files::{Compared, Found, Listing};
use backmesh_api::{Backups, RunResult};
use backmesh_simulations::{noise, tree_differences, wait_until, Mesh};

const LONG: Duration = Duration::from_secs(60);

fn ok(out: &std::process::Output) -> String {
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A tree with what a listing must show right: nested directories, a
/// symlink, a hard link, odd modes, a long name, an empty directory.
fn make_tree(src: &Path) {
    std::fs::create_dir_all(src.join("etc/app.d")).unwrap();
    std::fs::create_dir_all(src.join("var/empty")).unwrap();
    std::fs::write(src.join("etc/app.conf"), b"port = 1\n").unwrap();
    std::fs::write(src.join("etc/app.d/extra.conf"), b"extra = yes\n").unwrap();
    std::fs::write(src.join("etc/same-size.txt"), b"aaaa").unwrap();
    std::fs::write(src.join("etc/touched.txt"), b"stays").unwrap();
    std::fs::write(src.join("var/gone.log"), b"removed later").unwrap();
    // Empty, and after a file the second archive adds: it moves, unchanged.
    std::fs::write(src.join("var/zz-empty"), b"").unwrap();
    std::fs::write(src.join("var/big.bin"), (0..600_000u32).map(|i| (i * 7 % 251) as u8).collect::<Vec<_>>()).unwrap();
    std::fs::write(src.join(format!("var/{}.txt", "long-name-".repeat(15))), b"long").unwrap();
    std::fs::set_permissions(src.join("etc/app.conf"), std::fs::Permissions::from_mode(0o640)).unwrap();
    std::os::unix::fs::symlink("app.conf", src.join("etc/current")).unwrap();
    std::fs::hard_link(src.join("etc/app.conf"), src.join("var/app.conf.link")).unwrap();
}

fn run(mesh: &Mesh, i: usize, node: &str, path: &str) -> String {
    let r: RunOutcome = mesh.cli_json(i, &["run", node, path]).unwrap_or_else(|e| panic!("{e}"));
    assert!(matches!(r.result, RunResult::Finished | RunResult::Unchanged), "{r:#?}");
    r.archive.unwrap()
}

fn holders(mesh: &Mesh, i: usize, node: &str, path: &str, id: &str) -> usize {
    let b: Backups = mesh.cli_json(i, &["backups", node, path]).unwrap_or_default();
    b.archives.iter().find(|a| a.id == id).map_or(0, |a| a.holders.len())
}

/// `tar --numeric-owner -tvzf` of `tgz` in UTC, each line as (mode,
/// owner, size, minute, name): the columns both listings share.
fn tar_listing(tgz: &Path) -> Vec<(String, String, String, String, String)> {
    let out = Command::new("tar").env("TZ", "UTC").args(["--numeric-owner", "-tvzf"]).arg(tgz).output().unwrap();
    parse_long(&ok(&out))
}

fn parse_long(text: &str) -> Vec<(String, String, String, String, String)> {
    text.lines()
        .map(|l| {
            let mut parts = l.split_whitespace();
            let (mode, owner, size, date, time) = (
                parts.next().unwrap().to_string(),
                parts.next().unwrap().to_string(),
                parts.next().unwrap().to_string(),
                parts.next().unwrap().to_string(),
                parts.next().unwrap().to_string(),
            );
            let name = parts.collect::<Vec<_>>().join(" ");
            (mode, owner, size, format!("{date} {}", &time[..5]), name)
        })
        .collect()
}

fn fetch(mesh: &Mesh, i: usize, args: &[&str], name: &str) -> PathBuf {
    let tgz = mesh.root.path().join(format!("{name}.tgz"));
    let mut all = vec!["fetch"];
    all.extend_from_slice(args);
    let o = tgz.to_string_lossy().into_owned();
    all.extend_from_slice(&["-o", &o]);
    ok(&mesh.cli(i, &all));
    tgz
}

/// GNU tar's extraction of `names` (or everything) of `tgz` into a new directory.
fn gnu(mesh: &Mesh, tgz: &Path, names: &[&str], name: &str) -> PathBuf {
    let dir = mesh.root.path().join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let out = Command::new("tar").args(["--numeric-owner", "-xpzf"]).arg(tgz).arg("-C").arg(&dir).args(names).output();
    ok(&out.unwrap());
    dir
}

#[test]
fn ls_find_diff_dump_and_partial_restores_show_and_bring_back_what_gnu_tar_does_through_any_node() {
    // Plain archives: any holder reads them (the encrypted case is below).
    let mut mesh = Mesh::chain_with(&["n1", "n2", "n3"], &["--encrypt", "off", "--replicas", "2"]);
    let src = mesh.root.path().join("app");
    make_tree(&src);
    let s = src.to_string_lossy().into_owned();
    ok(&mesh.cli(0, &["register", "n1", &s, "--every", "600"]));
    let first = run(&mesh, 0, "n1", &s);
    let whole1 = fetch(&mesh, 0, &["n1", &s, "--archive", &first], "whole1");

    // The second archive: one file changed in content at the same size,
    // one grown, one touched only, one removed, one added.
    std::thread::sleep(Duration::from_millis(1100));
    std::fs::write(src.join("etc/same-size.txt"), b"bbbb").unwrap();
    std::fs::write(src.join("etc/app.conf"), b"port = 2222\n").unwrap();
    let touched = std::fs::File::options().append(true).open(src.join("etc/touched.txt")).unwrap();
    touched.set_modified(std::time::SystemTime::now() + Duration::from_secs(3600)).unwrap();
    std::fs::remove_file(src.join("var/gone.log")).unwrap();
    std::fs::write(src.join("var/new.txt"), b"new").unwrap();
    let second = run(&mesh, 0, "n1", &s);
    assert_ne!(first, second);
    assert!(wait_until(LONG, || holders(&mesh, 1, "n1", &s, &second) == 3), "both holders keep it");
    let whole2 = fetch(&mesh, 0, &["n1", &s], "whole2");
    let tar2 = tar_listing(&whole2);

    for asked in [0, 1] {
        // `ls -R -l`: GNU tar's listing, line for line.
        let listed = ok(&mesh.cli(asked, &["ls", "n1", &s, "-R", "-l"]));
        assert_eq!(parse_long(&listed), tar2, "asked of node {asked}");
        // `ls` of a directory: its entries alone.
        let etc: Listing = mesh.cli_json(asked, &["ls", "n1", &s, "etc/"]).unwrap();
        let names: Vec<&str> = etc.entries.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            names,
            ["etc/app.conf", "etc/app.d", "etc/current", "etc/same-size.txt", "etc/touched.txt"],
            "{names:?}"
        );
        assert_eq!(etc.entries[2].link.as_deref(), Some("app.conf"));
        // `find`: both versions of app.conf, each with its size.
        let found: Found = mesh.cli_json(asked, &["find", "n1", &s, "app.conf"]).unwrap();
        let versions: Vec<(&str, u64)> =
            found.archives.iter().map(|a| (a.archive.as_str(), a.entries[0].size)).collect();
        assert_eq!(versions, [(second.as_str(), 12), (first.as_str(), 9)]);
        // `diff`: by content, not only by time.
        let d: Compared = mesh.cli_json(asked, &["diff", "n1", &s, &first, &second]).unwrap();
        let paths = |v: Vec<&str>| v.into_iter().map(String::from).collect::<BTreeSet<_>>();
        assert_eq!(d.added.iter().map(|e| e.path.clone()).collect::<BTreeSet<_>>(), paths(vec!["var/new.txt"]));
        assert_eq!(d.removed.iter().map(|e| e.path.clone()).collect::<BTreeSet<_>>(), paths(vec!["var/gone.log"]));
        let changed: BTreeSet<String> = d.changed.iter().map(|c| c.after.path.clone()).collect();
        // (The hard link names the same file: its record is the same.)
        assert_eq!(changed, paths(vec!["etc/app.conf", "etc/same-size.txt"]));
        let meta: BTreeSet<String> = d.metadata.iter().map(|c| c.after.path.clone()).collect();
        assert!(meta.contains("etc/touched.txt"), "{meta:?}");
        assert!(!meta.contains("var/big.bin") && !changed.contains("var/big.bin"));
        // `dump` of the old version: what GNU tar extracts from the old archive.
        let old = gnu(&mesh, &whole1, &["etc/app.conf"], &format!("old-{asked}"));
        let dumped = mesh.cli(asked, &["dump", "n1", &s, "etc/app.conf", "--archive", &first]);
        assert_eq!(dumped.stdout, std::fs::read(old.join("etc/app.conf")).unwrap());
        let big = mesh.cli(asked, &["dump", "n1", &s, "var/big.bin"]);
        assert_eq!(big.stdout, std::fs::read(src.join("var/big.bin")).unwrap());
    }

    // `fetch --include` and `restore --include`: GNU tar's extraction of
    // the same entries (and the directories above them).
    let part = fetch(&mesh, 1, &["n1", &s, "--include", "*.conf"], "part");
    let listed: BTreeSet<String> = tar_listing(&part).into_iter().map(|l| l.4).collect();
    let expected: BTreeSet<String> =
        ["etc/", "etc/app.conf", "etc/app.d/", "etc/app.d/extra.conf"].iter().map(|s| s.to_string()).collect();
    assert_eq!(listed, expected);
    let from_part = gnu(&mesh, &part, &[], "from-part");
    let want =
        gnu(&mesh, &whole2, &["--no-recursion", "etc/", "etc/app.conf", "etc/app.d/", "etc/app.d/extra.conf"], "want");
    let walk = |d: &Path| Command::new("find").arg(d).output().unwrap().stdout;
    assert_eq!(
        tree_differences(&want, &from_part),
        Vec::<String>::new(),
        "{}\n{}",
        String::from_utf8_lossy(&walk(&want)),
        String::from_utf8_lossy(&walk(&from_part))
    );
    let to = mesh.root.path().join("restored-etc");
    ok(&mesh.cli(2, &["restore", "n1", &s, "--on", "n3", "--include", "etc/app.d", "--to", &to.to_string_lossy()]));
    let want = gnu(&mesh, &whole2, &["--no-recursion", "etc/", "etc/app.d/", "etc/app.d/extra.conf"], "want-etc");
    assert_eq!(tree_differences(&want, &to), Vec::<String>::new());
    // Nothing matching, or --overwrite: refused, nothing written.
    let none = mesh.root.path().join("none");
    let out =
        mesh.cli(1, &["restore", "n1", &s, "--on", "n2", "--include", "nothing-*", "--to", &none.to_string_lossy()]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stdout).contains("matches"), "{out:?}");
    assert!(!none.exists());

    // The series' node gone: the holders still answer all of it.
    mesh.kill9(0);
    assert!(wait_until(LONG, || !mesh.up_names(1).contains(&"n1".to_string())));
    let listed = ok(&mesh.cli(2, &["ls", "n1", &s, "-R", "-l"]));
    assert_eq!(parse_long(&listed), tar2);
    let dumped = mesh.cli(1, &["dump", "n1", &s, "etc/same-size.txt", "--archive", &first]);
    assert_eq!(ok(&dumped), "aaaa");
    let part = fetch(&mesh, 2, &["n1", &s, "--include", "var/new.txt"], "part-gone");
    let listed: BTreeSet<String> = tar_listing(&part).into_iter().map(|l| l.4).collect();
    assert_eq!(listed, ["var/", "var/new.txt"].iter().map(|s| s.to_string()).collect());
}

#[test]
fn an_encrypted_series_is_looked_into_by_its_node_or_with_the_operator_key_and_never_by_a_holder_alone() {
    // Sealed by default: the holders keep ciphertext.
    let mut mesh = Mesh::chain_with(&["n1", "n2", "n3"], &["--replicas", "2"]);
    let src = mesh.root.path().join("app");
    make_tree(&src);
    let s = src.to_string_lossy().into_owned();
    ok(&mesh.cli(0, &["register", "n1", &s, "--every", "600"]));
    let first = run(&mesh, 0, "n1", &s);
    std::thread::sleep(Duration::from_millis(1100));
    std::fs::write(src.join("etc/same-size.txt"), b"bbbb").unwrap();
    std::fs::write(src.join("var/new.txt"), b"new").unwrap();
    let second = run(&mesh, 0, "n1", &s);
    assert!(wait_until(LONG, || holders(&mesh, 1, "n1", &s, &second) == 3), "both holders keep it");
    let whole = fetch(&mesh, 0, &["n1", &s], "sealed-whole");
    let tar = tar_listing(&whole);

    // Its own node opens it; another node sends the sealed objects to the
    // operator's CLI, which opens them.
    for asked in [0, 1] {
        let listed = ok(&mesh.cli(asked, &["ls", "n1", &s, "-R", "-l"]));
        assert_eq!(parse_long(&listed), tar, "asked of node {asked}");
        let dumped = mesh.cli(asked, &["dump", "n1", &s, "etc/same-size.txt", "--archive", &first]);
        assert_eq!(ok(&dumped), "aaaa");
        let d: Compared = mesh.cli_json(asked, &["diff", "n1", &s, &first, &second]).unwrap();
        let changed: Vec<&str> = d.changed.iter().map(|c| c.after.path.as_str()).collect();
        assert_eq!((d.added.len(), changed), (1, vec!["etc/same-size.txt"]), "asked of node {asked}");
        let found: Found = mesh.cli_json(asked, &["find", "n1", &s, "same-size.txt"]).unwrap();
        assert_eq!(found.archives.len(), 2, "{found:?}");
    }
    // A holder alone (its own token, no operator key) lists nothing.
    let out = mesh.cli_as_node(1, &["ls", "n1", &s]);
    assert!(!out.status.success(), "{out:?}");

    // A part, opened by the CLI; restored on a node that is not the series'.
    let part = fetch(&mesh, 1, &["n1", &s, "--include", "etc/app.d"], "sealed-part");
    let listed: BTreeSet<String> = tar_listing(&part).into_iter().map(|l| l.4).collect();
    assert_eq!(listed, ["etc/", "etc/app.d/", "etc/app.d/extra.conf"].iter().map(|s| s.to_string()).collect());
    let to = mesh.root.path().join("sealed-restored");
    ok(&mesh.cli(1, &["restore", "n1", &s, "--on", "n2", "--include", "*.conf", "--to", &to.to_string_lossy()]));
    let want = gnu(
        &mesh,
        &whole,
        &["--no-recursion", "etc/", "etc/app.conf", "etc/app.d/", "etc/app.d/extra.conf"],
        "sealed-want",
    );
    assert_eq!(tree_differences(&want, &to), Vec::<String>::new());

    // The series' node gone: the operator key still opens all of it.
    mesh.kill9(0);
    assert!(wait_until(LONG, || !mesh.up_names(2).contains(&"n1".to_string())));
    let listed = ok(&mesh.cli(2, &["ls", "n1", &s, "-R", "-l"]));
    assert_eq!(parse_long(&listed), tar);
    let big = mesh.cli(2, &["dump", "n1", &s, "var/big.bin"]);
    assert_eq!(big.stdout, std::fs::read(src.join("var/big.bin")).unwrap());
}

#[test]
fn a_whole_restore_on_a_node_without_a_copy_reads_from_every_holder_at_once() {
    // Four nodes, two copies besides n1's: one node keeps none.
    let mut mesh = Mesh::chain_with(&["n1", "n2", "n3", "n4"], &["--replicas", "2"]);
    let src = mesh.root.path().join("bulk");
    std::fs::create_dir_all(&src).unwrap();
    // 16 MiB that will not compress: several 4 MiB batches to read.
    for f in 0..8 {
        std::fs::write(src.join(format!("part-{f}.bin")), noise(2 << 20, 0x9e37_79b9 + f)).unwrap();
    }
    let s = src.to_string_lossy().into_owned();
    ok(&mesh.cli(0, &["register", "n1", &s, "--every", "600"]));
    let id = run(&mesh, 0, "n1", &s);
    assert!(wait_until(LONG, || holders(&mesh, 1, "n1", &s, &id) == 3), "two holders keep it");
    let b: Backups = mesh.cli_json(1, &["backups", "n1", &s]).unwrap();
    let kept = &b.archives.iter().find(|a| a.id == id).unwrap().holders;
    let bare = ["n2", "n3", "n4"].into_iter().find(|n| !kept.iter().any(|h| h == n)).unwrap();
    let i = bare[1..].parse::<usize>().unwrap() - 1;
    // The series' node is gone; the node that keeps nothing restores it.
    mesh.kill9(0);
    assert!(wait_until(LONG, || !mesh.up_names(i).contains(&"n1".to_string())));
    let to = mesh.root.path().join("restored");
    ok(&mesh.cli(i, &["restore", "n1", &s, "--on", bare, "--to", &to.to_string_lossy()]));
    assert_eq!(tree_differences(&src, &to), Vec::<String>::new());
    let log = mesh.nodes[i].log_text();
    let line =
        log.lines().find(|l| l.contains(&format!("restore of archive {id} read its members from"))).unwrap_or("");
    for h in kept.iter().filter(|h| *h != "n1") {
        assert!(line.contains(&format!("{h} ")), "{h} sent nothing: {line}");
    }
}
