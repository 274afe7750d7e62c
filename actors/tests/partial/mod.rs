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
                backmesh_core::archive::sealed::unseal(&public, k, &read).unwrap()
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
