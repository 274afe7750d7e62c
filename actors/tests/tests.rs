//! Integration tests of the archive engine and the store, on real files,
//! and the golden bytes of every wire message (`golden`).

mod common;
mod encrypted;
mod golden;
mod offsite;
mod partial;

use std::fs;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use backmesh_core::archive::{self, tarfmt, CreateOptions, FileSink, RestoreError, RestoreOptions, WarningKind};
use backmesh_core::jobs::{run_backup, RunOutcome, UnchangedBy};
use backmesh_core::store::txn::CommitStep;
use backmesh_core::store::{Retention, Store, StoreError};
use common::*;

fn tgz_of(src: &Path, out: &Path, opts: &CreateOptions) -> archive::Created {
    let mut sink = FileSink::new(fs::File::create(out).unwrap());
    archive::create(src, opts, &mut sink).unwrap()
}

fn opts() -> CreateOptions {
    // A small target makes the test trees span many members and large-file chunks.
    CreateOptions { target: 16 * 1024, ..CreateOptions::default() }
}

#[test]
fn generated_trees_round_trip_exactly() {
    for seed in 1..=4u64 {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("src");
        gen_tree(&src, seed);
        let tgz = t.path().join("a.tgz");
        let created = tgz_of(&src, &tgz, &opts());
        assert!(created.warnings.is_empty(), "seed {seed}: {:?}", created.warnings);
        assert!(created.members.len() > 10, "seed {seed}: {} members", created.members.len());
        assert_eq!(fs::metadata(&tgz).unwrap().len(), created.tgz_len);

        // Our restore, from the plain .tgz.
        let out = t.path().join("out");
        archive::restore_tgz(fs::File::open(&tgz).unwrap(), &out, &RestoreOptions::default()).unwrap();
        assert_same_tree(&src, &out);

        // Through the store and the manifest's members.
        let store = Store::open(&t.path().join("data")).unwrap();
        let mut txn = store.begin().unwrap();
        let c2 = archive::create(&src, &opts(), &mut txn).unwrap();
        assert_eq!(c2.tree_digest, created.tree_digest, "seed {seed}: deterministic");
        let m = c2.into_manifest("n1", "/src", 1_000, None, vec![]);
        txn.commit(&m).unwrap();
        let out2 = t.path().join("out2");
        archive::restore_archive(&m, &store, &out2, &RestoreOptions::default()).unwrap();
        assert_same_tree(&src, &out2);
        let mut exported = Vec::new();
        store.export_tgz(&m, &mut exported).unwrap();
        assert_eq!(exported, fs::read(&tgz).unwrap(), "reassembly is byte-identical");

        // GNU tar and gzip accept it and restore the same tree.
        assert!(Command::new("gzip").arg("-t").arg(&tgz).status().unwrap().success());
        let gnu = t.path().join("gnu");
        fs::create_dir(&gnu).unwrap();
        let st = Command::new("tar").args(["--numeric-owner", "-xpzf"]).arg(&tgz).arg("-C").arg(&gnu).status().unwrap();
        assert!(st.success());
        assert_same_tree(&src, &gnu);

        // Python's tarfile reads every entry.
        let py = Command::new("python3")
            .args(["-c", "import sys,tarfile; print(len(tarfile.open(sys.argv[1]).getmembers()))"])
            .arg(&tgz)
            .output()
            .unwrap();
        assert!(py.status.success(), "{}", String::from_utf8_lossy(&py.stderr));
        let n: usize = String::from_utf8_lossy(&py.stdout).trim().parse().unwrap();
        assert_eq!(n, walk(&src).len(), "python sees every entry");
    }
}

#[test]
fn same_tree_same_bytes_and_one_change_dirties_few_members() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    fs::create_dir(&src).unwrap();
    let mut rng = Rng(42);
    fs::write(src.join("big.bin"), rng.bytes(6 << 20)).unwrap();
    for i in 0..300 {
        fs::write(src.join(format!("small-{i:03}.txt")), rng.text(3000)).unwrap();
    }
    let o = CreateOptions { target: 64 * 1024, ..CreateOptions::default() };
    let a = tgz_of(&src, &t.path().join("a.tgz"), &o);
    let b = tgz_of(&src, &t.path().join("b.tgz"), &o);
    assert_eq!(sha256_file(&t.path().join("a.tgz")), sha256_file(&t.path().join("b.tgz")));
    assert_eq!(a.tree_digest, b.tree_digest);

    let new_members = |x: &archive::Created, y: &archive::Created| {
        let old: std::collections::HashSet<_> = x.members.iter().map(|m| m.sha256).collect();
        y.members.iter().filter(|m| !old.contains(&m.sha256)).count()
    };
    // One byte in the middle of the large file, its mtime kept.
    let big = src.join("big.bin");
    let mtime = filetime::FileTime::from_last_modification_time(&fs::metadata(&big).unwrap());
    let mut data = fs::read(&big).unwrap();
    data[3 << 20] ^= 0x55;
    fs::write(&big, data).unwrap();
    filetime::set_file_mtime(&big, mtime).unwrap();
    let c = tgz_of(&src, &t.path().join("c.tgz"), &o);
    assert_ne!(c.tree_digest, a.tree_digest);
    assert!((1..=2).contains(&new_members(&a, &c)), "{} new members of {}", new_members(&a, &c), c.members.len());

    // One small file rewritten: only its group (and perhaps a neighbour) changes.
    fs::write(src.join("small-150.txt"), rng.text(3000)).unwrap();
    let d = tgz_of(&src, &t.path().join("d.tgz"), &o);
    assert!((1..=2).contains(&new_members(&c, &d)), "{} new members of {}", new_members(&c, &d), d.members.len());
}

#[test]
fn a_file_appended_to_during_the_backup_is_named_in_a_warning() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("steady.txt"), b"steady").unwrap();
    let log = src.join("app.log");
    fs::write(&log, Rng(1).bytes(8 << 20)).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (stop, log) = (stop.clone(), log.clone());
        std::thread::spawn(move || {
            use std::io::Write;
            let mut f = fs::OpenOptions::new().append(true).open(&log).unwrap();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) && n < 50_000_000 {
                f.write_all(b"line of application log\n").unwrap();
                n += 1;
            }
        })
    };
    std::thread::sleep(std::time::Duration::from_millis(20));
    let out = t.path().join("a.tgz");
    let created = tgz_of(&src, &out, &CreateOptions::default());
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    let w: Vec<_> = created.warnings.iter().filter(|w| w.path == "app.log").collect();
    assert_eq!(w.len(), 1, "{:?}", created.warnings);
    assert_eq!(w[0].kind, WarningKind::ChangedWhileRead);
    // The archive is complete and restorable, the log at some size it had.
    let r = t.path().join("r");
    archive::restore_tgz(fs::File::open(&out).unwrap(), &r, &RestoreOptions::default()).unwrap();
    assert_eq!(fs::read(r.join("steady.txt")).unwrap(), b"steady");
    assert!(fs::metadata(r.join("app.log")).unwrap().len() >= 8 << 20);
}

#[test]
fn special_files_are_skipped_with_a_warning() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("a"), b"a").unwrap();
    let fifo = std::ffi::CString::new(src.join("pipe").to_str().unwrap()).unwrap();
    // SAFETY: a valid C string and mode.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
    let _sock = std::os::unix::net::UnixListener::bind(src.join("sock")).unwrap();
    let created = tgz_of(&src, &t.path().join("a.tgz"), &CreateOptions::default());
    let mut skipped: Vec<_> =
        created.warnings.iter().filter(|w| w.kind == WarningKind::Skipped).map(|w| w.path.as_str()).collect();
    skipped.sort();
    assert_eq!(skipped, ["pipe", "sock"]);
    assert_eq!(created.stats.files, 1);
}

/// A .tgz made by hand from (path, type, link) entries with our own encoder.
fn evil_tgz(dir: &Path, entries: &[(&str, tarfmt::Kind, Option<&str>, &[u8])]) -> std::path::PathBuf {
    let mut raw = Vec::new();
    for (path, kind, link, content) in entries {
        let meta = tarfmt::EntryMeta {
            path: path.as_bytes().to_vec(),
            kind: *kind,
            size: content.len() as u64,
            mode: 0o644,
            mtime: 1_700_000_000,
            mtime_nsec: 0,
            uid: 0,
            gid: 0,
            link: link.map(|l| l.as_bytes().to_vec()),
        };
        tarfmt::write_header(&meta, &mut raw);
        raw.extend_from_slice(content);
        raw.resize(raw.len() + tarfmt::padding(content.len() as u64), 0);
    }
    raw.extend_from_slice(&[0u8; 1024]);
    let p = dir.join(format!("evil-{}.tgz", entries.len() * 7 + entries[0].0.len()));
    fs::write(&p, archive::create::gzip_member(&raw, 6)).unwrap();
    p
}

fn assert_refused(tgz: &Path, target: &Path) -> RestoreError {
    let err = archive::restore_tgz(fs::File::open(tgz).unwrap(), target, &RestoreOptions::default()).unwrap_err();
    assert!(!target.exists(), "a refused restore leaves no target");
    let parent = target.parent().unwrap();
    let leftovers: Vec<_> = fs::read_dir(parent)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains("backmesh-restore"))
        .collect();
    assert!(leftovers.is_empty(), "staging removed");
    err
}

#[test]
fn malicious_archives_are_refused() {
    use tarfmt::Kind::*;
    let t = tempfile::tempdir().unwrap();
    let outside = t.path().join("outside");
    fs::create_dir(&outside).unwrap();
    let work = t.path().join("work");
    fs::create_dir(&work).unwrap();
    let target = work.join("target");

    type Entry<'a> = (&'a str, tarfmt::Kind, Option<&'a str>, &'a [u8]);
    let cases: Vec<(Vec<Entry>, &str)> = vec![
        (vec![("ok.txt", File, None, b"fine"), ("../../outside/dotdot", File, None, b"x")], ".."),
        (vec![("/tmp/backmesh-absolute-evil", File, None, b"x")], "absolute"),
        (vec![("link", Symlink, Some(outside.to_str().unwrap()), b""), ("link/pwned", File, None, b"x")], "symlink"),
        (vec![("up", Symlink, Some(".."), b""), ("up/escaped", File, None, b"x")], "symlink"),
        (vec![("hl", HardLink, Some("/etc/hostname"), b"")], "absolute"),
        (vec![("hl", HardLink, Some("../outside/x"), b"")], ".."),
        (vec![("a", Symlink, Some("/"), b""), ("a/b", Symlink, Some("x"), b"")], "symlink"),
    ];
    for (entries, why) in cases {
        let tgz = evil_tgz(t.path(), &entries);
        let err = assert_refused(&tgz, &target);
        assert!(err.to_string().contains(why), "expected `{why}` in: {err}");
    }
    assert_eq!(fs::read_dir(&outside).unwrap().count(), 0, "nothing written outside");
    assert!(!Path::new("/tmp/backmesh-absolute-evil").exists());
}

#[test]
fn malicious_archives_made_by_gnu_tar_are_refused() {
    let t = tempfile::tempdir().unwrap();
    let outside = t.path().join("outside");
    fs::create_dir(&outside).unwrap();
    fs::write(outside.join("existing"), b"keep me").unwrap();
    let src = t.path().join("src");
    fs::create_dir_all(src.join("sub")).unwrap();
    std::os::unix::fs::symlink(&outside, src.join("link")).unwrap();
    // GNU tar stores `link` as a symlink and `link/existing` as a file through it.
    let through = t.path().join("through.tgz");
    let st = Command::new("tar")
        .arg("-czf")
        .arg(&through)
        .arg("-C")
        .arg(&src)
        .args(["link", "link/existing"])
        .status()
        .unwrap();
    assert!(st.success());
    // -P keeps `..` in member names.
    let dotdot = t.path().join("dotdot.tgz");
    let st = Command::new("tar")
        .arg("-czPf")
        .arg(&dotdot)
        .arg("-C")
        .arg(&src)
        .arg("sub/../../outside/existing")
        .status()
        .unwrap();
    assert!(st.success());
    let absolute = t.path().join("absolute.tgz");
    let st = Command::new("tar").arg("-czPf").arg(&absolute).arg(outside.join("existing")).status().unwrap();
    assert!(st.success());
    let target = t.path().join("work/target");
    fs::create_dir_all(target.parent().unwrap()).unwrap();
    for (tgz, why) in [(&through, "symlink"), (&dotdot, ".."), (&absolute, "absolute")] {
        let err = assert_refused(tgz, &target);
        assert!(err.to_string().contains(why), "{}: expected `{why}` in: {err}", tgz.display());
    }
    assert_eq!(fs::read(outside.join("existing")).unwrap(), b"keep me");
}

#[test]
fn non_empty_targets_need_overwrite_and_are_replaced_whole() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    gen_tree(&src, 9);
    let tgz = t.path().join("a.tgz");
    tgz_of(&src, &tgz, &opts());
    let target = t.path().join("target");
    fs::create_dir(&target).unwrap();
    fs::write(target.join("precious"), b"do not lose").unwrap();
    let err = archive::restore_tgz(fs::File::open(&tgz).unwrap(), &target, &RestoreOptions::default()).unwrap_err();
    assert!(matches!(err, RestoreError::TargetNotEmpty { .. }), "{err}");
    assert_eq!(fs::read(target.join("precious")).unwrap(), b"do not lose");
    // An empty directory is fine; so is a file target refused.
    let file_target = t.path().join("a-file");
    fs::write(&file_target, b"").unwrap();
    let err =
        archive::restore_tgz(fs::File::open(&tgz).unwrap(), &file_target, &RestoreOptions::default()).unwrap_err();
    assert!(matches!(err, RestoreError::TargetNotDirectory { .. }), "{err}");
    // With overwrite, the old tree is replaced by exactly the archive.
    let o = RestoreOptions { overwrite: true, ..Default::default() };
    archive::restore_tgz(fs::File::open(&tgz).unwrap(), &target, &o).unwrap();
    assert_same_tree(&src, &target);
}

#[test]
fn an_archive_whose_tree_digest_is_over_its_members_restores_exactly_and_a_wrong_one_restores_nothing() {
    use backmesh_core::archive::manifest::{members_tree_digest, TreeRule};
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    gen_tree(&src, 2);
    let store = Store::open(&t.path().join("data")).unwrap();
    let mut txn = store.begin().unwrap();
    let mut m = archive::create(&src, &opts(), &mut txn).unwrap().into_manifest("n", "/src", 5, None, vec![]);
    m.tree_rule = TreeRule::Members;
    m.tree_digest = members_tree_digest(&m.members);
    txn.commit(&m).unwrap();
    // Stored and read back under its rule (format 3), restored exactly.
    let back = store.manifest("n", "/src", Some(&m.id)).unwrap();
    assert_eq!(back.tree_rule, TreeRule::Members);
    let out = t.path().join("out");
    archive::restore_archive(&back, &store, &out, &RestoreOptions::default()).unwrap();
    assert_same_tree(&src, &out);
    // A tree digest that is not the members' restores nothing.
    let mut wrong = back.clone();
    wrong.tree_digest = backmesh_core::hash::Digest::of(b"another tree");
    let target = t.path().join("out2");
    let err = archive::restore_archive(&wrong, &store, &target, &RestoreOptions::default()).unwrap_err();
    assert!(matches!(err, RestoreError::TreeDigest), "{err}");
    assert!(!target.exists());
}

#[test]
fn a_damaged_member_fails_the_restore_and_verify_names_it() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    gen_tree(&src, 3);
    let store = Store::open(&t.path().join("data")).unwrap();
    let mut txn = store.begin().unwrap();
    let m = archive::create(&src, &opts(), &mut txn).unwrap().into_manifest("n", "/src", 5, None, vec![]);
    txn.commit(&m).unwrap();
    assert!(store.verify(&m).is_ok());
    let victim = m.members[m.members.len() / 2].sha256;
    let hex = victim.to_hex();
    let path = t.path().join("data/segments").join(&hex[..2]).join(format!("{hex}.gz"));
    let mut bytes = fs::read(&path).unwrap();
    bytes[20] ^= 1;
    fs::write(&path, bytes).unwrap();
    let report = store.verify(&m);
    assert_eq!(report.damaged, vec![victim]);
    let target = t.path().join("out");
    let err = archive::restore_archive(&m, &store, &target, &RestoreOptions::default()).unwrap_err();
    assert!(matches!(err, RestoreError::DamagedMember { expected, .. } if expected == victim), "{err}");
    assert!(!target.exists());
    assert!(store.export_tgz(&m, &mut Vec::new()).is_err());
}

fn touch_tree(src: &Path, gen: usize) {
    fs::write(src.join("changing.txt"), format!("generation {gen}")).unwrap();
    fs::write(src.join(format!("new-{gen}.bin")), Rng(gen as u64).bytes(50_000)).unwrap();
}

#[test]
fn retention_keeps_exactly_k_and_frees_unused_members() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("constant.bin"), Rng(7).bytes(400_000)).unwrap();
    let store = Store::open(&t.path().join("data")).unwrap();
    let key = src.to_str().unwrap().to_string();
    let mut ids = Vec::new();
    for gen in 0..12 {
        touch_tree(&src, gen);
        // Old generations go away so that their members become unused.
        if gen >= 1 {
            fs::remove_file(src.join(format!("new-{}.bin", gen - 1))).unwrap();
        }
        let r = run_backup(&store, "n1", &src, &opts(), Retention::keep(10)).unwrap();
        match r.outcome {
            RunOutcome::Stored { manifest, .. } => ids.push(manifest.id.clone()),
            other => panic!("generation {gen}: {other:?}"),
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let kept: Vec<_> = store.list("n1", &key).unwrap().into_iter().map(|s| s.id).collect();
    let mut newest: Vec<_> = ids[2..].to_vec();
    newest.reverse();
    assert_eq!(kept, newest, "exactly the newest 10, newest first");
    // Every member file on disk is used by a kept manifest, and vice versa.
    let mut used = std::collections::HashSet::new();
    for id in &kept {
        used.extend(store.manifest("n1", &key, Some(id)).unwrap().members.iter().map(|m| m.sha256.to_hex()));
    }
    let mut on_disk = std::collections::HashSet::new();
    for d in fs::read_dir(t.path().join("data/segments")).unwrap() {
        for f in fs::read_dir(d.unwrap().path()).unwrap() {
            on_disk.insert(f.unwrap().file_name().to_string_lossy().trim_end_matches(".gz").to_string());
        }
    }
    assert_eq!(on_disk, used);
    // The oldest kept archive still restores.
    let m = store.manifest("n1", &key, Some(kept.last().unwrap())).unwrap();
    archive::restore_archive(&m, &store, &t.path().join("r"), &RestoreOptions::default()).unwrap();
    assert_eq!(fs::read(t.path().join("r/changing.txt")).unwrap(), b"generation 2");
}

/// A collection reads each archive's member list, not its manifest; a
/// list that is missing, torn or altered is not believed (a list that
/// said too little would free members in use), and is written again.
#[test]
fn a_collection_trusts_no_damaged_member_list() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    gen_tree(&src, 5);
    let store = Store::open(&t.path().join("data")).unwrap();
    let key = src.to_str().unwrap().to_string();
    run_backup(&store, "n1", &src, &opts(), Retention::keep(10)).unwrap();
    let m = store.manifest("n1", &key, None).unwrap();
    let series = t.path().join("data/manifests").join(hex::encode(backmesh_core::store::series_key("n1", &key)));
    let list = series.join(format!("{}.members", m.id));
    let whole = fs::read(&list).expect("a member list beside the manifest");
    assert_eq!(whole.len(), 5 + 8 + 32 * m.members.len() + 32);
    type Damage = Box<dyn Fn(&Path)>;
    let damages: [(&str, Damage); 3] = [
        ("missing", Box::new(|p: &Path| fs::remove_file(p).unwrap())),
        ("torn", Box::new(|p: &Path| fs::write(p, &fs::read(p).unwrap()[..45]).unwrap())),
        (
            "altered",
            Box::new(|p: &Path| {
                let mut b = fs::read(p).unwrap();
                b[20] ^= 1;
                fs::write(p, b).unwrap()
            }),
        ),
    ];
    for (what, damage) in damages {
        damage(&list);
        let (freed, _) = store.gc().unwrap();
        assert_eq!(freed, 0, "{what}: a member in use was freed");
        assert_eq!(fs::read(&list).unwrap(), whole, "{what}: the list is written again");
        assert!(store.verify(&m).is_ok(), "{what}");
    }
    // A list whose manifest is gone goes with the next open.
    let stray = series.join("20200101T000000.000Z-00000000.members");
    fs::write(&stray, &whole).unwrap();
    drop(store);
    let _store = Store::open(&t.path().join("data")).unwrap();
    assert!(!stray.exists());
    assert!(list.exists());
}

#[test]
fn a_crash_between_writes_leaves_the_store_consistent() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    gen_tree(&src, 5);
    let data = t.path().join("data");
    for step in [CommitStep::MembersPublished, CommitStep::ManifestWritten] {
        let _ = fs::remove_dir_all(&data);
        let m = {
            let store = Store::open(&data).unwrap();
            let mut txn = store.begin().unwrap();
            let m = archive::create(&src, &opts(), &mut txn).unwrap().into_manifest("n", "/src", 9, None, vec![]);
            txn.commit_until(&m, step).unwrap();
            m
        }; // the process "dies" here: the store is dropped without finishing
        let store = Store::open(&data).unwrap();
        let listed = store.list("n", "/src").unwrap();
        match step {
            CommitStep::MembersPublished => {
                assert!(listed.is_empty(), "no manifest, no archive");
                let (freed, _) = store.gc().unwrap();
                assert!(freed as usize >= m.members.len() - 1, "orphan members freed: {freed}");
            }
            _ => {
                assert_eq!(listed.len(), 1, "the manifest file is the truth; the index is rebuilt");
                let out = t.path().join(format!("out-{step:?}"));
                archive::restore_archive(&m, &store, &out, &RestoreOptions::default()).unwrap();
                assert_same_tree(&src, &out);
                assert_eq!(store.gc().unwrap().0, 0, "nothing in use is collected");
            }
        }
        assert_eq!(fs::read_dir(data.join("staging")).unwrap().count(), 0, "staging emptied on open");
    }
}

/// A member a backup in progress holds is not collected, though no
/// archive uses it any more; once the backup ends, it is.
#[test]
fn a_held_member_outlives_its_archive_until_the_backup_ends() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    gen_tree(&src, 3);
    let store = Store::open(&t.path().join("data")).unwrap();
    run_backup(&store, "n1", &src, &opts(), Retention::keep(10)).unwrap();
    let key = src.to_str().unwrap();
    let m = store.manifest("n1", key, None).unwrap();
    let (held, other) = (m.members[0].sha256, m.members[1].sha256);
    let holds = store.holds_for(1);
    holds.hold(&held);
    let others = store.holds();
    others.hold(&other);
    drop(others);
    assert!(store.remove_archive("n1", key, &m.id).unwrap());
    store.gc().unwrap();
    assert!(store.has_member(&held), "held by a backup in progress");
    assert!(!store.has_member(&other), "its backup ended: collected");
    drop(holds);
    store.gc().unwrap();
    assert!(!store.has_member(&held));
}

/// Pruning frees what only the removed archives used, and nothing that
/// another series still uses.
#[test]
fn pruning_frees_only_what_no_other_archive_uses() {
    use backmesh_core::jobs::backup::run_backup_as;
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    gen_tree(&src, 5);
    let store = Store::open(&t.path().join("data")).unwrap();
    let members = |key: &str| store.manifest("n1", key, None).unwrap().members;
    // One tree, two series: every member of the first generation is shared.
    for key in ["/x", "/y"] {
        run_backup_as(&store, "n1", key, &src, &opts(), Retention::keep(10)).unwrap();
    }
    let first: Vec<_> = members("/x");
    let changed = fs::read_dir(&src).unwrap().flatten().find(|e| e.path().is_file()).unwrap().path();
    fs::write(&changed, b"the second generation").unwrap();
    let r = run_backup_as(&store, "n1", "/x", &src, &opts(), Retention::keep(1)).unwrap();
    let RunOutcome::Stored { retention, .. } = r.outcome else { panic!("{:?}", r.outcome) };
    assert_eq!(retention.removed.len(), 1);
    assert_eq!(retention.freed_members, 0, "/y still uses every member of the removed archive");
    for key in ["/x", "/y"] {
        assert!(store.verify(&store.manifest("n1", key, None).unwrap()).is_ok(), "{key}");
    }
    let r = run_backup_as(&store, "n1", "/y", &src, &opts(), Retention::keep(1)).unwrap();
    let RunOutcome::Stored { retention, .. } = r.outcome else { panic!("{:?}", r.outcome) };
    let now: std::collections::HashSet<_> = members("/y").into_iter().map(|m| m.sha256).collect();
    let gone = first.iter().filter(|m| !now.contains(&m.sha256)).count();
    assert!(gone > 0);
    assert_eq!(retention.freed_members as usize, gone, "what only the first generation used is freed");
    assert_eq!(store.gc().unwrap().0, 0, "nothing was left behind for a full sweep");
    for key in ["/x", "/y"] {
        assert!(store.verify(&store.manifest("n1", key, None).unwrap()).is_ok(), "{key}");
    }
}

#[test]
fn keep_within_keeps_every_archive_stored_in_the_window_however_many_came_after() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    fs::create_dir(&src).unwrap();
    let store = Store::open(&t.path().join("data")).unwrap();
    let key = src.to_str().unwrap().to_string();
    let week = Retention { keep: 2, within: Some(std::time::Duration::from_secs(7 * 86_400)), grace: None };
    for gen in 0..6 {
        fs::write(src.join("f"), format!("generation {gen}")).unwrap();
        let r = run_backup(&store, "n1", &src, &opts(), week).unwrap();
        assert!(matches!(r.outcome, RunOutcome::Stored { .. }), "{:?}", r.outcome);
    }
    let listed = store.list("n1", &key).unwrap();
    assert_eq!(listed.len(), 6, "all six were stored within the week: none is pruned");
    assert!(listed.iter().all(|a| a.stored_ms > 0), "each knows when it was stored here");
    // Without the window, the same store keeps the newest two.
    let report = store.retain("n1", &key, Retention::keep(2)).unwrap();
    assert_eq!(report.removed.len(), 4);
    assert_eq!(store.list("n1", &key).unwrap().len(), 2);
}

/// A clock a test moves by hand.
struct StepClock(std::sync::atomic::AtomicI64);

impl backmesh_core::clock::Clock for StepClock {
    fn now_ms(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

#[test]
fn a_store_reads_the_time_only_from_its_clock() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    fs::create_dir(&src).unwrap();
    let day = 86_400_000i64;
    let clock = Arc::new(StepClock(std::sync::atomic::AtomicI64::new(1_800_000_000_000)));
    let store = Store::open(&t.path().join("data")).unwrap().with_clock(clock.clone());
    let key = src.to_str().unwrap().to_string();
    let week = Retention { keep: 1, within: Some(std::time::Duration::from_secs(7 * 86_400)), grace: None };
    // One backup a day, by the store's clock.
    for gen in 0..5 {
        fs::write(src.join("f"), format!("generation {gen}")).unwrap();
        run_backup(&store, "n1", &src, &opts(), week).unwrap();
        clock.0.fetch_add(day, Ordering::Relaxed);
    }
    let listed = store.list("n1", &key).unwrap();
    assert_eq!(listed.len(), 5, "all in the week");
    let stored: Vec<i64> = listed.iter().map(|a| a.stored_ms).collect();
    assert!(stored.iter().all(|s| (1_800_000_000_000..1_800_000_000_000 + 5 * day).contains(s)), "{stored:?}");
    // Nine days after the first: those stored on days 0, 1 and 2 fall out
    // of the week; days 3 and 4 stay.
    clock.0.fetch_add(4 * day, Ordering::Relaxed);
    let report = store.retain("n1", &key, week).unwrap();
    assert_eq!(report.removed.len(), 3, "{report:?}");
    assert_eq!(store.list("n1", &key).unwrap().len(), 2);
}

#[test]
fn an_archive_out_of_retention_is_hidden_for_the_grace_period_then_deleted() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    fs::create_dir(&src).unwrap();
    let hour = 3_600_000i64;
    let clock = Arc::new(StepClock(std::sync::atomic::AtomicI64::new(1_800_000_000_000)));
    let store = Store::open(&t.path().join("data")).unwrap().with_clock(clock.clone());
    let key = src.to_str().unwrap().to_string();
    let grace = Retention { keep: 2, within: None, grace: Some(std::time::Duration::from_secs(24 * 3600)) };
    // Five backups an hour apart (a flood of junk, say), keeping two.
    for gen in 0..5 {
        fs::write(src.join("f"), format!("generation {gen}")).unwrap();
        run_backup(&store, "n1", &src, &opts(), grace).unwrap();
        clock.0.fetch_add(hour, Ordering::Relaxed);
    }
    let listed = store.list("n1", &key).unwrap();
    assert_eq!(listed.len(), 5, "nothing younger than the grace period is deleted");
    let hidden: Vec<&str> = listed.iter().filter(|a| a.hidden).map(|a| a.id.as_str()).collect();
    assert_eq!(hidden.len(), 3, "{listed:#?}");
    assert_eq!(
        store.held_series(grace, clock.0.load(Ordering::Relaxed)).values().next().map(Vec::len),
        Some(2),
        "only the visible are pushed"
    );
    // The oldest, hidden, restores whole.
    let oldest = listed.last().unwrap();
    let back = t.path().join("back");
    let m = store.manifest("n1", &key, Some(&oldest.id)).unwrap();
    archive::restore_archive(&m, &store, &back, &RestoreOptions::default()).unwrap();
    assert_eq!(fs::read_to_string(back.join("f")).unwrap(), "generation 0");
    // Retention again: nothing new to say of the hidden ones.
    assert_eq!(store.retain("n1", &key, grace).unwrap(), Default::default());
    // Half an hour past a day after the first: the first goes, once.
    clock.0.fetch_add(19 * hour + hour / 2, Ordering::Relaxed);
    let report = store.retain("n1", &key, grace).unwrap();
    assert_eq!(report.deleted.len(), 1, "{report:?}");
    assert!(report.removed.is_empty(), "it had left the visible ones already: {report:?}");
    assert_eq!(store.list("n1", &key).unwrap().len(), 4);
    // Without a grace period (by choice), out of retention is deleted at once.
    let report = store.retain("n1", &key, Retention::keep(2)).unwrap();
    assert_eq!((report.deleted.len(), report.removed.len()), (2, 0), "{report:?}");
}

#[test]
fn retention_keeps_the_newest_and_the_recent_ones_only() {
    let now = 1_800_000_000_000i64;
    let day = 86_400_000i64;
    // Newest first, as a series lists them; stored 0..9 days ago, then 30.
    let archives: Vec<backmesh_core::store::ArchiveSummary> = (0..10)
        .map(|i| backmesh_core::store::ArchiveSummary {
            id: format!("a{i}"),
            node: "n".into(),
            path: "/p".into(),
            created_ms: 0,
            order_ms: 100 - i,
            tgz_len: 0,
            files: 0,
            tree_digest: backmesh_core::hash::Digest([0; 32]),
            tgz_sha256: backmesh_core::hash::Digest([0; 32]),
            warnings: 0,
            stored_ms: if i == 9 { now - 30 * day } else { now - i * day - 1 },
            hidden: false,
        })
        .collect();
    let ids = |r: Retention| r.kept(&archives, now).iter().map(|a| a.id.clone()).collect::<Vec<_>>();
    assert_eq!(ids(Retention::keep(3)), ["a0", "a1", "a2"]);
    let week = Some(std::time::Duration::from_millis(7 * day as u64));
    assert_eq!(ids(Retention { keep: 3, within: week, grace: None }), ["a0", "a1", "a2", "a3", "a4", "a5", "a6"]);
    assert_eq!(ids(Retention { keep: 1, within: week, grace: None }).len(), 7);
    // An index from before stored times were kept (0): outside any window.
    assert_eq!(ids(Retention { keep: 10, within: week, grace: None }).len(), 10);
    // Stored under a clock that ran ahead: kept by the window, never by
    // `keep` alone.
    let mut ahead = archives.clone();
    ahead[5].stored_ms = now + 365 * day;
    let ids = |r: Retention| r.kept(&ahead, now).iter().map(|a| a.id.clone()).collect::<Vec<_>>();
    assert_eq!(ids(Retention::keep(3)), ["a0", "a1", "a2"]);
    assert_eq!(
        ids(Retention { keep: 1, within: Some(std::time::Duration::from_secs(3600)), grace: None }),
        ["a0", "a5"]
    );
}

#[test]
fn keep_within_reads_hours_days_weeks_and_months_and_refuses_the_rest() {
    use backmesh_core::store::parse_within;
    let h = |n: u64| std::time::Duration::from_secs(n * 3600);
    assert_eq!(parse_within("36h"), Ok(h(36)));
    assert_eq!(parse_within("14d"), Ok(h(14 * 24)));
    assert_eq!(parse_within("2w"), Ok(h(14 * 24)));
    assert_eq!(parse_within("6m"), Ok(h(6 * 30 * 24)));
    for bad in ["14", "d", "14 d", "14s", "0d", "-3d", ""] {
        let e = parse_within(bad).unwrap_err();
        assert!(e.to_string().contains(bad) || bad.is_empty(), "{bad}: {e}");
    }
}

#[test]
fn an_unchanged_tree_is_recognised_from_metadata_alone() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    gen_tree(&src, 11);
    // Entries changed in the last 2 s are "racy": wait them out once.
    std::thread::sleep(std::time::Duration::from_millis(2600));
    let store = Store::open(&t.path().join("data")).unwrap();
    let first = run_backup(&store, "n", &src, &opts(), Retention::keep(10)).unwrap();
    assert!(matches!(first.outcome, RunOutcome::Stored { .. }));
    let second = run_backup(&store, "n", &src, &opts(), Retention::keep(10)).unwrap();
    assert!(matches!(second.outcome, RunOutcome::Unchanged { by: UnchangedBy::StatCache, .. }), "{:?}", second.outcome);
    // Same size, same mtime, different bytes: ctime still tells.
    let f = src.join("deep");
    let victim = walk(&src)
        .into_iter()
        .find(|(_, s)| s.kind == "file" && s.content.as_ref().is_some_and(|c| c.len() > 10) && s.mode & 0o200 != 0)
        .unwrap()
        .0;
    let p = src.join(&victim);
    let mtime = filetime::FileTime::from_last_modification_time(&fs::metadata(&p).unwrap());
    let mut bytes = fs::read(&p).unwrap();
    bytes[0] ^= 0xff;
    fs::write(&p, bytes).unwrap();
    filetime::set_file_mtime(&p, mtime).unwrap();
    let _ = f;
    let third = run_backup(&store, "n", &src, &opts(), Retention::keep(10)).unwrap();
    assert!(matches!(third.outcome, RunOutcome::Stored { .. }), "{:?}", third.outcome);
    // Excludes are part of the snapshot's identity.
    let mut o = opts();
    o.excludes = vec!["deep".into()];
    let fourth = run_backup(&store, "n", &src, &o, Retention::keep(10)).unwrap();
    assert!(matches!(fourth.outcome, RunOutcome::Stored { .. }), "{:?}", fourth.outcome);
}

#[test]
fn bad_sources_get_clear_errors() {
    let t = tempfile::tempdir().unwrap();
    let store = Store::open(&t.path().join("data")).unwrap();
    let err = run_backup(&store, "n", &t.path().join("missing"), &opts(), Retention::keep(10)).unwrap_err();
    assert!(err.to_string().contains("missing"), "{err}");
    let f = t.path().join("file");
    fs::write(&f, b"").unwrap();
    let err = run_backup(&store, "n", &f, &opts(), Retention::keep(10)).unwrap_err();
    assert!(err.to_string().contains("not a directory"), "{err}");
    let err = run_backup(&store, "n", Path::new("relative/dir"), &opts(), Retention::keep(10)).unwrap_err();
    assert!(err.to_string().contains("not absolute"), "{err}");
    let mut o = opts();
    o.excludes = vec!["[".into()];
    let err = run_backup(&store, "n", t.path(), &o, Retention::keep(10)).unwrap_err();
    assert!(err.to_string().contains("exclude"), "{err}");
}

/// A full disk fails the backup cleanly: older archives intact, nothing half-visible.
#[test]
fn a_full_disk_fails_the_backup_and_keeps_older_archives() {
    // SAFETY: no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: mounting a small tmpfs needs root");
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let mnt = t.path().join("small");
    fs::create_dir(&mnt).unwrap();
    let ok = Command::new("mount").args(["-t", "tmpfs", "-o", "size=4m", "tmpfs"]).arg(&mnt).status().unwrap();
    assert!(ok.success(), "mount tmpfs");
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
    let _guard = Unmount(mnt.clone());

    let src = t.path().join("src");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("small.txt"), b"version 1").unwrap();
    let data = mnt.join("data");
    let store = Store::open(&data).unwrap();
    let first = run_backup(&store, "n", &src, &opts(), Retention::keep(10)).unwrap();
    let RunOutcome::Stored { manifest: first, .. } = first.outcome else { panic!("first backup stored") };

    // Now more incompressible data than the disk holds.
    fs::write(src.join("big.bin"), Rng(3).bytes(8 << 20)).unwrap();
    let err = run_backup(&store, "n", &src, &opts(), Retention::keep(10)).unwrap_err();
    assert!(err.to_string().contains("No space left"), "{err}");
    let key = src.to_str().unwrap();
    let listed = store.list("n", key).unwrap();
    assert_eq!(listed.len(), 1, "only the first archive is visible");
    assert!(store.verify(&first).is_ok());
    assert_eq!(fs::read_dir(data.join("staging")).unwrap().count(), 0, "staged members removed");
    let out = t.path().join("r");
    archive::restore_archive(&first, &store, &out, &RestoreOptions::default()).unwrap();
    assert_eq!(fs::read(out.join("small.txt")).unwrap(), b"version 1");
}

#[test]
fn an_archive_id_from_a_peer_never_names_a_file_outside_the_store() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    gen_tree(&src, 2);
    let data = t.path().join("data");
    let store = Store::open(&data).unwrap();
    let mut txn = store.begin().unwrap();
    let mut m = archive::create(&src, &opts(), &mut txn).unwrap().into_manifest("n", "/src", 5, None, vec![]);
    txn.commit(&m).unwrap();
    let before: Vec<_> = all_files(t.path());
    for bad in ["../../escaped", "../x", ".."] {
        m.id = bad.to_string();
        // As a peer's offer or commit carries it: refused at decoding.
        assert!(archive::Manifest::decode(&m.encode()).is_err(), "{bad}");
        // As a request names it: no such archive, nothing touched.
        assert!(store.adopt(&m).is_err(), "{bad}");
        assert!(!store.has_archive("n", "/src", bad));
        assert!(matches!(store.manifest("n", "/src", Some(bad)), Err(StoreError::NoSuchArchive { .. })), "{bad}");
        assert!(store.remove_archive("n", "/src", bad).is_ok_and(|removed| !removed));
    }
    assert_eq!(all_files(t.path()), before, "no file made or removed anywhere");
}

fn all_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(all_files(&p));
        }
        out.push(p);
    }
    out.sort();
    out
}

#[test]
fn a_holder_keeps_only_what_the_series_own_node_sealed() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("a.txt"), b"the real data").unwrap();
    // The origin n1 makes a sealed archive in its own store.
    let origin = Store::open(&t.path().join("n1")).unwrap();
    let made = match run_backup(&origin, "n1", &src, &opts(), Retention::keep(10)).unwrap().outcome {
        RunOutcome::Stored { manifest, .. } => *manifest,
        other => panic!("{other:?}"),
    };
    assert_eq!(made.signer(), Some(origin.peer_id().as_str()));
    // It survives the trip through its encoding.
    let sent = made.encode();
    let holder = Store::open(&t.path().join("h")).unwrap();
    let m = archive::manifest::Manifest::decode(&sent).unwrap();
    // Not yet bound, and nobody vouches for the signer as n1: refused.
    let err = holder.check_origin(&m, None).unwrap_err();
    assert!(err.to_string().contains("does not know as node n1"), "{err}");
    // The mesh knows n1 by that peer id: bound on first sight, accepted.
    holder.check_origin(&m, Some(&origin.peer_id())).unwrap();
    assert_eq!(holder.origin_of("n1").unwrap(), Some(origin.peer_id()));
    // A thief with the swarm key seals a manifest for n1's series with its
    // own key: refused now and after, whoever vouches for it.
    let thief = Store::open(&t.path().join("thief")).unwrap();
    let mut forged = m.clone();
    forged.order_ms = i64::MAX / 2;
    forged.seal_with(thief.identity()).unwrap();
    let forged = archive::manifest::Manifest::decode(&forged.encode()).unwrap();
    let err = holder.check_origin(&forged, Some(&thief.peer_id())).unwrap_err();
    assert!(err.to_string().contains("are sealed by"), "{err}");
    // An unsealed one (as a node before seals, or a forger, would send).
    let mut bare = m.clone();
    bare.seal = None;
    let err = holder.check_origin(&bare, Some(&origin.peer_id())).unwrap_err();
    assert!(err.to_string().contains("no seal"), "{err}");
    // A binding, once made, is kept across restarts.
    drop(holder);
    let holder = Store::open(&t.path().join("h")).unwrap();
    assert_eq!(holder.bind_origin("n1", &thief.peer_id()).unwrap(), origin.peer_id());
    // And the identity of a data directory survives its restart too.
    let pid = origin.peer_id();
    drop(origin);
    assert_eq!(Store::open(&t.path().join("n1")).unwrap().peer_id(), pid);
}

#[test]
fn a_rebind_takes_the_new_key_and_keeps_what_the_former_sealed_before_it() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("a.txt"), b"before the rebuild").unwrap();
    let old = Store::open(&t.path().join("old")).unwrap();
    let before = match run_backup(&old, "n1", &src, &opts(), Retention::keep(10)).unwrap().outcome {
        RunOutcome::Stored { manifest, .. } => archive::manifest::Manifest::decode(&manifest.encode()).unwrap(),
        other => panic!("{other:?}"),
    };
    let holder = Store::open(&t.path().join("h")).unwrap();
    holder.check_origin(&before, Some(&old.peer_id())).unwrap();
    // The server is rebuilt with a new key: refused until the operator's rebind.
    let new = Store::open(&t.path().join("new")).unwrap();
    let mut after = before.clone();
    after.id = "after".into();
    after.created_ms = before.created_ms + 10_000;
    after.seal_with(new.identity()).unwrap();
    let after = archive::manifest::Manifest::decode(&after.encode()).unwrap();
    assert!(holder.check_origin(&after, Some(&new.peer_id())).is_err());
    let at = before.created_ms + 5_000;
    holder.rebind_origin("n1", &new.peer_id(), &old.peer_id(), at).unwrap();
    holder.rebind_origin("n1", &new.peer_id(), &old.peer_id(), at).unwrap(); // again: the same
    assert_eq!(holder.origin_of("n1").unwrap(), Some(new.peer_id()));
    assert_eq!(backmesh_core::store::origin_former(holder.kv().as_ref(), "n1").unwrap(), vec![(old.peer_id(), at)]);
    holder.check_origin(&after, None).unwrap();
    // What the former key sealed before the rebind stays n1's; after it, not.
    holder.check_origin(&before, None).unwrap();
    let mut late = before.clone();
    late.created_ms = at + 1;
    late.seal_with(old.identity()).unwrap();
    let late = archive::manifest::Manifest::decode(&late.encode()).unwrap();
    let err = holder.check_origin(&late, None).unwrap_err();
    assert!(err.to_string().contains("are sealed by"), "{err}");
    // A chain of rebinds (old → new, then new → third) ends at the newest,
    // keeping every former identity, in whatever order a node hears them.
    let third = Store::open(&t.path().join("third")).unwrap();
    let fresh = Store::open(&t.path().join("fresh")).unwrap();
    for h in [&holder, &fresh] {
        h.rebind_origin("n1", &third.peer_id(), &new.peer_id(), at + 1000).unwrap();
        h.rebind_origin("n1", &new.peer_id(), &old.peer_id(), at).unwrap();
        assert_eq!(h.origin_of("n1").unwrap(), Some(third.peer_id()));
        let was: Vec<String> =
            backmesh_core::store::origin_former(h.kv().as_ref(), "n1").unwrap().into_iter().map(|(p, _)| p).collect();
        assert!(was.contains(&old.peer_id()) && was.contains(&new.peer_id()), "{was:?}");
        h.check_origin(&before, None).unwrap();
    }
}

/// Backs `src` up into `store`: the stored manifest, the members taken
/// unread, and the file content read.
fn stored(store: &Store, src: &Path) -> (archive::Manifest, u64, u64) {
    let progress = Arc::new(archive::Progress::default());
    let o = CreateOptions { progress: Some(Arc::clone(&progress)), ..opts() };
    match run_backup(store, "n", src, &o, Retention::keep(10)).unwrap().outcome {
        RunOutcome::Stored { manifest, reused, .. } => {
            (*manifest, reused.0, progress.bytes_read.load(Ordering::Relaxed))
        }
        other => panic!("not stored: {other:?}"),
    }
}

fn exported(store: &Store, m: &archive::Manifest) -> Vec<u8> {
    let mut out = Vec::new();
    store.export_tgz(m, &mut out).unwrap();
    out
}

#[test]
fn a_changed_run_reads_only_what_changed_and_makes_the_bytes_a_full_run_makes() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    gen_tree(&src, 5);
    // Entries changed in the last 2 s are "racy" (never recorded): wait them out once.
    std::thread::sleep(std::time::Duration::from_millis(2600));
    let store = Store::open(&t.path().join("data")).unwrap();
    let (first, reused, read) = stored(&store, &src);
    assert_eq!(reused, 0, "nothing to take from");
    assert_eq!(read, first.stats.content_bytes);

    // A small file rewritten, a byte in the middle of a large file, a file
    // added, a file removed.
    let files: Vec<_> = walk(&src).into_iter().filter(|(_, s)| s.kind == "file" && s.mode & 0o200 != 0).collect();
    let small = files.iter().find(|(_, s)| (100..10_000).contains(&s.content.as_ref().unwrap().len())).unwrap();
    let large = files.iter().find(|(_, s)| s.content.as_ref().unwrap().len() > 400_000).unwrap();
    fs::write(src.join(&small.0), Rng(9).text(small.1.content.as_ref().unwrap().len())).unwrap();
    let mut bytes = large.1.content.clone().unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    fs::write(src.join(&large.0), &bytes).unwrap();
    fs::write(src.join("new file.txt"), b"added after the first backup\n").unwrap();
    let gone = files.iter().find(|(p, s)| p != &small.0 && p != &large.0 && s.content.as_ref().unwrap().len() < 5000);
    fs::remove_file(src.join(&gone.unwrap().0)).unwrap();

    let (second, reused, read) = stored(&store, &src);
    let total = second.members.len() as u64;
    eprintln!("{reused} of {total} members taken unread, read {read} of {}", second.stats.content_bytes);
    assert!(reused * 2 > total, "{reused} of {total} members taken unread");
    assert!(read * 2 < second.stats.content_bytes, "read {read} of {} bytes", second.stats.content_bytes);
    let out = t.path().join("out");
    archive::restore_archive(&second, &store, &out, &RestoreOptions::default()).unwrap();
    assert_same_tree(&src, &out);

    // A full run of the same tree, in a store without records: the same archive, byte for byte.
    let fresh = Store::open(&t.path().join("fresh")).unwrap();
    let (full, reused, read) = stored(&fresh, &src);
    assert_eq!(reused, 0);
    assert_eq!(read, full.stats.content_bytes);
    assert_eq!(full.tree_digest, second.tree_digest);
    assert_eq!(full.members, second.members);
    let digest = backmesh_core::hash::Digest::of;
    assert_eq!(digest(&exported(&fresh, &full)), digest(&exported(&store, &second)));
    assert_eq!(full.files, second.files);
}

#[test]
fn a_member_the_store_lost_or_a_damaged_record_file_is_made_again() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    gen_tree(&src, 6);
    std::thread::sleep(std::time::Duration::from_millis(2600));
    let store = Store::open(&t.path().join("data")).unwrap();
    let (first, _, _) = stored(&store, &src);
    // The store loses one member of the first archive.
    let lost = &first.members[first.members.len() / 2];
    let hex = lost.sha256.to_hex();
    fs::remove_file(t.path().join("data/segments").join(&hex[..2]).join(format!("{hex}.gz"))).unwrap();
    fs::write(src.join("touch.txt"), b"a change").unwrap();
    let (second, reused, _) = stored(&store, &src);
    assert!(reused > 0);
    assert!(second.members.iter().all(|m| store.has_member(&m.sha256)), "every member of the new archive is stored");
    let out = t.path().join("out");
    archive::restore_archive(&second, &store, &out, &RestoreOptions::default()).unwrap();
    assert_same_tree(&src, &out);

    // A member lost under an unchanged tree: the run finds the tree
    // unchanged, and what it made again heals the archive it points to.
    let lost = &second.members[second.members.len() / 3];
    let hex = lost.sha256.to_hex();
    fs::remove_file(t.path().join("data/segments").join(&hex[..2]).join(format!("{hex}.gz"))).unwrap();
    assert!(!store.verify(&second).is_ok());
    std::thread::sleep(std::time::Duration::from_millis(2600));
    let again = run_backup(&store, "n", &src, &opts(), Retention::keep(10)).unwrap();
    assert!(matches!(again.outcome, RunOutcome::Unchanged { .. }), "{:?}", again.outcome);
    assert!(store.verify(&second).is_ok(), "the lost member is back");

    // Damaged records: every byte flipped after the header. Nothing is
    // taken from them, and the archive is still exact.
    let records = fs::read_dir(t.path().join("data/records")).unwrap().next().unwrap().unwrap().path();
    let mut bytes = fs::read(&records).unwrap();
    for b in bytes.iter_mut().skip(40) {
        *b ^= 0x5a;
    }
    fs::write(&records, bytes).unwrap();
    fs::write(src.join("touch.txt"), b"another change").unwrap();
    let (third, reused, read) = stored(&store, &src);
    assert_eq!(reused, 0);
    assert_eq!(read, third.stats.content_bytes);
    let out = t.path().join("out3");
    archive::restore_archive(&third, &store, &out, &RestoreOptions::default()).unwrap();
    assert_same_tree(&src, &out);
}

/// Where a changed run's bytes go: `BM_TREE=DIR BM_NEXT=SCRIPT cargo test -- --ignored delta_budget --nocapture`.
#[test]
#[ignore]
fn delta_budget() {
    let src = std::path::PathBuf::from(std::env::var("BM_TREE").unwrap());
    let t = tempfile::tempdir().unwrap();
    let store = Store::open(&t.path().join("data")).unwrap();
    let o = CreateOptions::default();
    let RunOutcome::Stored { manifest: first, .. } =
        run_backup(&store, "n", &src, &o, Retention::keep(10)).unwrap().outcome
    else {
        panic!()
    };
    assert!(Command::new("sh").arg("-c").arg(std::env::var("BM_NEXT").unwrap()).status().unwrap().success());
    let RunOutcome::Stored { manifest: second, .. } =
        run_backup(&store, "n", &src, &o, Retention::keep(10)).unwrap().outcome
    else {
        panic!()
    };
    let old: std::collections::HashSet<_> = first.members.iter().map(|m| m.sha256).collect();
    let (mut whole_nobase, mut n_nobase, mut delta, mut n_delta, mut whole_based) = (0u64, 0, 0u64, 0, 0u64);
    for m in second.members.iter().filter(|m| !old.contains(&m.sha256)) {
        match store.base_of(&m.sha256) {
            None => {
                whole_nobase += m.compressed_len;
                n_nobase += 1;
            }
            Some((b, _)) => {
                let new = store.raw_member(&m.sha256, 1 << 30).unwrap();
                let oldr = store.raw_member(&b, 1 << 30).unwrap();
                let (ops, lits) = backmesh_core::archive::delta::make(&oldr, &new);
                delta += (ops.len() + lits.len()) as u64;
                n_delta += 1;
                whole_based += m.compressed_len;
            }
        }
    }
    eprintln!("no base: {n_nobase} members {whole_nobase} B; with base: {n_delta} members {whole_based} B whole, {delta} B as deltas; manifest {} B", second.encode().len());
}

#[test]
fn a_data_directory_in_use_is_refused_in_plain_words_and_opens_once_let_go() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("n1");
    let first = Store::open(&dir).unwrap();
    // Held for longer than an open waits: refused, naming the directory.
    let err = Store::open(&dir).err().expect("a second open of a held store");
    assert!(err.to_string().contains("in use by another backmesh process"), "{err}");
    // Let go while the second open waits (as a restart in place does): it
    // opens, though sled's flusher keeps the lock a moment after the drop.
    let closer = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(300));
        drop(first);
    });
    let second = Store::open(&dir).unwrap();
    closer.join().unwrap();
    drop(second);
}
