//! Reading part of an archive (`restore --include`, `fetch --include`,
//! `dump`): exactly what GNU tar extracts of the same entries from the
//! whole `.tgz`, read from the members that hold them alone, plain and
//! encrypted.

use std::fs;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

use backmesh_core::archive::manifest::{Manifest, MemberRef, ObjRef};
use backmesh_core::archive::partial::{choose, part_tgz, pick};
use backmesh_core::archive::{restore_archive, MemberSource, RestoreError, RestoreOptions};
use backmesh_core::jobs::{run_backup, RunOutcome};
use backmesh_core::store::{Retention, Store};
use backmesh_crypt::DataKey;
use backmesh_table::Part;

/// A store that counts the members read from it.
struct Counting<'a>(&'a Store, AtomicUsize);

impl MemberSource for Counting<'_> {
    fn read_member(&self, m: &MemberRef) -> std::io::Result<Vec<u8>> {
        self.1.fetch_add(1, Ordering::SeqCst);
        self.0.read_member(m)
    }
}

fn stored(store: &Store, src: &Path, seal: Option<&DataKey>) -> Manifest {
    let opts = backmesh_core::archive::CreateOptions {
        target: 16 * 1024,
        seal: seal.map(|k| backmesh_core::archive::sealed::sealing(k.clone(), vec![b"wrapped".to_vec()])),
        ..Default::default()
    };
    match run_backup(store, "n", src, &opts, Retention::keep(10)).unwrap().outcome {
        RunOutcome::Stored { manifest, .. } => *manifest,
        other => panic!("not stored: {other:?}"),
    }
}

/// What GNU tar extracts of exactly `names` from `tgz` into `into`.
fn gnu_extract(tgz: &Path, names: &[String], into: &Path) {
    fs::create_dir_all(into).unwrap();
    let list = into.with_extension("list");
    fs::write(&list, names.iter().map(|n| format!("{n}\n")).collect::<String>()).unwrap();
    let st = Command::new("tar")
        .args(["--numeric-owner", "--no-recursion", "--verbatim-files-from", "-xpzf"])
        .arg(tgz)
        .arg("-C")
        .arg(into)
        .arg("-T")
        .arg(&list)
        .status()
        .unwrap();
    assert!(st.success());
}

fn names(m: &Manifest, wanted: &[usize]) -> Vec<String> {
    wanted
        .iter()
        .map(|&i| {
            let f = &m.files[i];
            let mut n = f.path_text();
            if f.kind == backmesh_table::Kind::Dir {
                n.push('/');
            }
            n
        })
        .collect()
}

#[test]
fn a_part_of_an_archive_restores_and_downloads_as_gnu_tar_extracts_it_reading_only_its_members() {
    for sealed in [false, true] {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("src");
        crate::common::gen_tree(&src, 3);
        let key = DataKey::from_secret([3; 32]);
        let store = Store::open(&t.path().join("data")).unwrap();
        let made = stored(&store, &src, sealed.then_some(&key));
        let key = sealed.then_some(key);
        let m = match &key {
            Some(k) => {
                let public = store.manifest("n", src.to_str().unwrap(), Some(&made.id)).unwrap();
                let read = |o: &ObjRef| store.read_member_unchecked(&o.cid).map_err(std::io::Error::other);
                let whole = backmesh_core::archive::sealed::unseal(&public, k, &read).unwrap();
                // One entry from the head and the one group that holds it:
                // where the whole table places it.
                let layout = backmesh_core::archive::partial::layout(&whole).unwrap();
                for i in [0, whole.files.len() / 2, whole.files.len() - 1] {
                    let mut one = public.clone();
                    let (group, j, start) =
                        backmesh_core::archive::sealed::open_one(&mut one, k, &read, &whole.files[i].path)
                            .unwrap()
                            .expect("the head places every group");
                    assert_eq!(group[j], whole.files[i]);
                    let lens: Vec<u64> = one.members.iter().map(|m| m.raw_len).collect();
                    let part = backmesh_table::Layout::at(start, &group, &lens).unwrap();
                    assert_eq!(part.entry(j), layout.entry(i), "entry {i}");
                }
                whole
            }
            None => made,
        };
        let whole = t.path().join("whole.tgz");
        let mut bytes = Vec::new();
        store.export_tgz_with(&m, key.as_ref(), &mut bytes).unwrap();
        fs::write(&whole, &bytes).unwrap();

        for (n, include) in
            [vec!["*.dat"], vec!["deep"], vec!["hardlink to f10"], vec!["x*/**", "*.txt"]].into_iter().enumerate()
        {
            let include: Vec<String> = include.into_iter().map(String::from).collect();
            let wanted = choose(&m, &include).unwrap();
            let gnu = t.path().join(format!("gnu{n}"));
            gnu_extract(&whole, &names(&m, &wanted), &gnu);
            let ours = t.path().join(format!("ours{n}"));
            let counting = Counting(&store, AtomicUsize::new(0));
            let progress = std::sync::Arc::new(backmesh_core::archive::create::Progress::default());
            let opts = RestoreOptions {
                include: include.clone(),
                key: key.clone(),
                progress: Some(progress.clone()),
                ..Default::default()
            };
            restore_archive(&m, &counting, &ours, &opts).unwrap();
            // Its progress knew the end from the start, and reached it.
            let total: u64 = wanted.iter().map(|&i| m.files[i].meta().size).sum();
            assert_eq!(progress.total.load(Ordering::SeqCst), total);
            assert_eq!(progress.bytes_out.load(Ordering::SeqCst), total);
            crate::common::assert_same_tree(&gnu, &ours);
            let read = counting.1.load(Ordering::SeqCst);
            assert!(read < m.members.len() || n == 0, "{include:?}: {read} of {} members read", m.members.len());

            // Downloaded as a .tgz: GNU tar extracts the same tree from it.
            let part = t.path().join(format!("part{n}.tgz"));
            let mut out = Vec::new();
            let picked = part_tgz(&m, wanted.clone(), &store, key.as_ref(), &mut out).unwrap();
            assert_eq!(picked.entries, wanted.len());
            fs::write(&part, &out).unwrap();
            let from_part = t.path().join(format!("from-part{n}"));
            fs::create_dir(&from_part).unwrap();
            let st = Command::new("tar")
                .args(["--numeric-owner", "-xpzf"])
                .arg(&part)
                .arg("-C")
                .arg(&from_part)
                .status()
                .unwrap();
            assert!(st.success());
            crate::common::assert_same_tree(&gnu, &from_part);
        }

        // One file's content, from the members that hold it alone.
        let small = m.files.iter().position(|f| f.kind == backmesh_table::Kind::File && f.size > 100).unwrap();
        let counting = Counting(&store, AtomicUsize::new(0));
        let mut content = Vec::new();
        pick(&m, vec![small], &counting, key.as_ref(), 1, &mut |_, part| {
            if let Part::Content(c) = part {
                content.extend_from_slice(c);
            }
            Ok(())
        })
        .unwrap();
        assert_eq!(content, fs::read(src.join(m.files[small].path_text())).unwrap());
        assert!(counting.1.load(Ordering::SeqCst) <= 4, "sealed {sealed}: a small file reads its member alone");

        // Nothing matches, or a restore over a tree: refused, nothing written.
        let none = RestoreOptions { include: vec!["no-such-*".into()], key: key.clone(), ..Default::default() };
        let err = restore_archive(&m, &store, &t.path().join("none"), &none).unwrap_err();
        assert!(matches!(err, RestoreError::NoMatch { .. }), "{err}");
        assert!(!t.path().join("none").exists());
        let over =
            RestoreOptions { include: vec!["*.dat".into()], overwrite: true, key: key.clone(), ..Default::default() };
        let err = restore_archive(&m, &store, &t.path().join("ours0"), &over).unwrap_err();
        assert!(matches!(err, RestoreError::PartOverwrite), "{err}");
    }
}

#[test]
fn one_entry_of_a_large_sealed_table_is_read_from_the_one_group_that_holds_it() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    for d in 0..30 {
        let dir = src.join(format!("d{d:02}"));
        fs::create_dir_all(&dir).unwrap();
        for f in 0..100 {
            fs::write(dir.join(format!("f{f:03}.txt")), format!("{d} {f}").repeat(f % 7 + 1)).unwrap();
        }
    }
    let key = DataKey::from_secret([4; 32]);
    let store = Store::open(&t.path().join("data")).unwrap();
    let made = stored(&store, &src, Some(&key));
    let public = store.manifest("n", src.to_str().unwrap(), Some(&made.id)).unwrap();
    let groups = public.crypt.as_ref().unwrap().index.len();
    assert!(groups >= 3, "{groups} groups for 3,030 entries");
    let read = |o: &ObjRef| store.read_member_unchecked(&o.cid).map_err(std::io::Error::other);
    let whole = backmesh_core::archive::sealed::unseal(&public, &key, &read).unwrap();
    let layout = backmesh_core::archive::partial::layout(&whole).unwrap();
    for i in (0..whole.files.len()).step_by(97) {
        let objects = std::sync::atomic::AtomicUsize::new(0);
        let counted = |o: &ObjRef| {
            objects.fetch_add(1, Ordering::SeqCst);
            read(o)
        };
        let mut one = public.clone();
        let (group, j, start) =
            backmesh_core::archive::sealed::open_one(&mut one, &key, &counted, &whole.files[i].path)
                .unwrap()
                .expect("the head places every group");
        assert_eq!(group[j], whole.files[i]);
        assert_eq!(objects.load(Ordering::SeqCst), 2, "the head and one group");
        let lens: Vec<u64> = one.members.iter().map(|m| m.raw_len).collect();
        let part = backmesh_table::Layout::at(start, &group, &lens).unwrap();
        assert_eq!(part.entry(j), layout.entry(i), "entry {i}");
        // And its content, cut out of the members that hold it.
        let mut content = Vec::new();
        let file = backmesh_table::tree::content_of(&group, j);
        if let Some(j) = file {
            backmesh_core::archive::partial::pick_in(
                &Manifest { files: group.clone(), ..one.clone() },
                &part,
                vec![j],
                &store,
                Some(&key),
                1,
                &mut |_, p| {
                    if let Part::Content(c) = p {
                        content.extend_from_slice(c);
                    }
                    Ok(())
                },
            )
            .unwrap();
            assert_eq!(content, fs::read(src.join(whole.files[i].path_text())).unwrap());
        }
    }
}
