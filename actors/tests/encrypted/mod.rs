//! A holder's store with encrypted archives (manifest format 6): it keeps,
//! checks, repairs and collects sealed objects without any key, keeps a
//! keyframe while any kept archive applies a delta to it, counts each
//! object once, and holds no plaintext.

use std::collections::{BTreeSet, HashSet};
use std::fs;
use std::path::Path;

use backmesh_core::archive::manifest::objects::SUITE_XCHACHA_SIV;
use backmesh_core::archive::manifest::objects_tree_digest;
use backmesh_core::archive::manifest::{ArchiveStats, Crypt, Manifest, MemberRef, ObjRef, TreeRule};
use backmesh_core::archive::sink::gzip_member;
use backmesh_core::hash::Digest;
use backmesh_core::store::{Retention, Store};
use backmesh_crypt::{seal_object, DataKey, Kind};

const MARKER: &[u8] = b"MARKER-7f3a91-the-content-only-its-node-reads";

/// A sealed object and what a manifest says of it.
fn sealed(key: &DataKey, kind: Kind, context: &[u8], plaintext: &[u8]) -> (ObjRef, Vec<u8>) {
    let object = seal_object(key, kind, context, plaintext);
    (ObjRef { cid: Digest::of(&object), len: object.len() as u64 }, object)
}

fn listed(o: ObjRef, key: Option<ObjRef>) -> MemberRef {
    MemberRef { sha256: o.cid, raw_len: 0, compressed_len: o.len, key }
}

/// The public manifest of an archive of these objects, sealed by `origin`.
fn manifest(
    origin: &Store,
    id: &str,
    at: i64,
    members: Vec<MemberRef>,
    index: Vec<MemberRef>,
    head: ObjRef,
) -> Manifest {
    let mut m = Manifest {
        id: id.into(),
        node: "n1".into(),
        path: "/srv/app".into(),
        created_ms: at,
        order_ms: at,
        tree_digest: objects_tree_digest(&members, &index, &head),
        tgz_len: members.iter().map(|m| m.compressed_len).sum(),
        members,
        files: Vec::new(),
        tgz_sha256: Digest::default(),
        raw_len: 0,
        stats: ArchiveStats::default(),
        warnings: Vec::new(),
        excludes: Vec::new(),
        seal: None,
        tree_rule: TreeRule::Objects,
        crypt: Some(Crypt { suite: SUITE_XCHACHA_SIV, kid: [1; 8], keys: vec![b"wrapped".to_vec()], index, head }),
    };
    let bytes = m.seal_encoded(origin.identity()).unwrap();
    Manifest::decode_from_peer(&bytes).unwrap()
}

fn files_under(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(b) = fs::read(&p) {
                out.push((p.to_string_lossy().into_owned(), b));
            }
        }
    }
    out
}

fn segment_names(dir: &Path) -> BTreeSet<String> {
    files_under(&dir.join("segments"))
        .into_iter()
        .filter_map(|(p, _)| Path::new(&p).file_name()?.to_str()?.strip_suffix(".gz").map(str::to_string))
        .collect()
}

#[test]
fn a_holder_keeps_checks_repairs_and_collects_sealed_objects_without_any_key() {
    let t = tempfile::tempdir().unwrap();
    let origin = Store::open(&t.path().join("n1")).unwrap();
    let holder = Store::open(&t.path().join("h")).unwrap();
    let key = DataKey::from_secret([0x42; 32]);
    // Archive 1: a member full; archive 2: the same member changed, as a
    // delta against archive 1's (its keyframe). Each has its file table
    // group (shared: unchanged) and its own head.
    let raw: Vec<u8> = MARKER.iter().copied().cycle().take(20_000).collect();
    let (a, a_bytes) = sealed(&key, Kind::Member, b"", &gzip_member(&raw, 6));
    let (d, d_bytes) = sealed(&key, Kind::Delta, &a.cid.0, b"a delta: MARKER-7f3a91 changed");
    let (i, i_bytes) = sealed(&key, Kind::Index, b"", b"conf/app.toml MARKER-7f3a91");
    let (h1, h1_bytes) = sealed(&key, Kind::Head, b"", b"head 1");
    let (h2, h2_bytes) = sealed(&key, Kind::Head, b"", b"head 2");
    let m1 = manifest(
        &origin,
        "20261122T030000.000Z-00000001",
        1_795_000_000_000,
        vec![listed(a, None)],
        vec![listed(i, None)],
        h1,
    );
    let m2 = manifest(
        &origin,
        "20261122T040000.000Z-00000002",
        1_795_000_100_000,
        vec![listed(d, Some(a))],
        vec![listed(i, None)],
        h2,
    );
    holder.check_origin(&m1, Some(&origin.peer_id())).unwrap();

    // Adopted once every object is here, each checked by its name alone.
    assert_eq!(holder.missing_members(&m1), vec![a.cid, i.cid, h1.cid]);
    let err = holder.put_members(&[(a.cid, &d_bytes[..])]).unwrap_err();
    assert!(err.to_string().contains("damaged"), "{err}");
    holder.put_members(&[(a.cid, &a_bytes[..]), (i.cid, &i_bytes[..]), (h1.cid, &h1_bytes[..])]).unwrap();
    assert!(holder.adopt(&m1).unwrap().is_empty());
    // The second archive needs only its delta and head: the keyframe and
    // the unchanged group are here.
    assert_eq!(holder.adopt(&m2).unwrap(), vec![d.cid, h2.cid]);
    holder.put_members(&[(d.cid, &d_bytes[..]), (h2.cid, &h2_bytes[..])]).unwrap();
    assert!(holder.adopt(&m2).unwrap().is_empty());
    assert!(holder.verify(&m2).is_ok());

    // A byte flipped in the keyframe on disk: verify (no key) names it,
    // and the good object from elsewhere mends it.
    let a_file =
        files_under(&t.path().join("h/segments")).into_iter().find(|(p, _)| p.contains(&a.cid.to_hex())).unwrap();
    let mut bad = a_file.1.clone();
    bad[100] ^= 0x01;
    fs::write(&a_file.0, &bad).unwrap();
    let report = holder.verify(&m2);
    assert_eq!(report.damaged, vec![a.cid], "{report:?}");
    holder.repair_member(&a.cid, &a_bytes).unwrap();
    assert!(holder.verify(&m2).is_ok());

    // What archive 2 takes here: each object once, the keyframe included.
    let mut usage = backmesh_core::replica::quota::Usage::default();
    let held = usage.held(&holder, "n1", "").unwrap();
    assert_eq!(held, a.len + d.len + i.len + h1.len + h2.len);

    // Retention keeps archive 2 only: archive 1 goes, its head is
    // collected, its member stays as archive 2's keyframe.
    let report = holder.retain("n1", "/srv/app", Retention::keep(1)).unwrap();
    assert_eq!(report.deleted, vec![m1.id.clone()]);
    let want: BTreeSet<String> = [a.cid, d.cid, i.cid, h2.cid].iter().map(Digest::to_hex).collect();
    assert_eq!(segment_names(&t.path().join("h")), want);
    holder.gc().unwrap();
    assert_eq!(segment_names(&t.path().join("h")), want, "a full collection keeps the keyframe too");

    // Nothing on the holder's disk holds the content, in any decoding:
    // not the marker, not the gzip member, not what it inflates to.
    let gz = gzip_member(&raw, 6);
    let mut seen = HashSet::new();
    for (p, bytes) in files_under(&t.path().join("h")) {
        seen.insert(p.clone());
        let mut inflated = Vec::new();
        let _ = std::io::Read::read_to_end(&mut flate2::read::MultiGzDecoder::new(&bytes[..]), &mut inflated);
        for hay in [&bytes, &inflated] {
            assert!(!hay.windows(MARKER.len()).any(|w| w == MARKER), "{p} holds the content");
            assert!(!hay.windows(64).any(|w| gz.windows(64).next() == Some(w)), "{p} holds the gzip member");
        }
    }
    assert!(seen.len() >= 5, "{seen:?}");
}

fn sealed_opts(key: &DataKey) -> backmesh_core::archive::CreateOptions {
    backmesh_core::archive::CreateOptions {
        target: 16 * 1024,
        seal: Some(backmesh_core::archive::sealed::sealing(key.clone(), vec![b"wrapped".to_vec()])),
        ..Default::default()
    }
}

fn stored(store: &Store, src: &Path, opts: &backmesh_core::archive::CreateOptions) -> Manifest {
    use backmesh_core::jobs::{run_backup, RunOutcome};
    match run_backup(store, "n", src, opts, Retention::keep(10)).unwrap().outcome {
        RunOutcome::Stored { manifest, .. } => *manifest,
        other => panic!("not stored: {other:?}"),
    }
}

fn exported(store: &Store, m: &Manifest, key: Option<&DataKey>) -> Digest {
    let mut out = Vec::new();
    store.export_tgz_with(m, key, &mut out).unwrap();
    Digest::of(&out)
}

/// The `.tgz` a plain full run of `src` makes.
fn plain_tgz(dir: &Path, src: &Path) -> Digest {
    let plain = Store::open(dir).unwrap();
    let opts = backmesh_core::archive::CreateOptions { target: 16 * 1024, ..Default::default() };
    let m = stored(&plain, src, &opts);
    exported(&plain, &m, None)
}

#[test]
fn an_encrypted_series_restores_exactly_its_changes_are_sealed_deltas_and_it_exports_the_plain_bytes() {
    use backmesh_core::archive::{restore_archive, RestoreError, RestoreOptions};
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    crate::common::gen_tree(&src, 5);
    fs::write(src.join("marker.txt"), MARKER.repeat(50)).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(2600));
    let key = DataKey::from_secret([5; 32]);
    let opts = sealed_opts(&key);
    let store = Store::open(&t.path().join("data")).unwrap();
    let first = stored(&store, &src, &opts);
    let path = src.to_str().unwrap();
    let on_disk = store.manifest("n", path, Some(&first.id)).unwrap();
    assert!(on_disk.encrypted() && on_disk.files.is_empty() && on_disk.stats.files == 0, "the stored part is public");
    assert!(first.stats.files > 10 && !first.files.is_empty(), "the node's own view has it all");

    // Restored with the key, exactly; without it, not at all.
    let with_key = RestoreOptions { key: Some(key.clone()), ..Default::default() };
    restore_archive(&on_disk, &store, &t.path().join("r1"), &with_key).unwrap();
    crate::common::assert_same_tree(&src, &t.path().join("r1"));
    let err = restore_archive(&on_disk, &store, &t.path().join("r0"), &RestoreOptions::default()).unwrap_err();
    assert!(matches!(err, RestoreError::Encrypted { .. }), "{err}");
    let other = RestoreOptions { key: Some(DataKey::from_secret([6; 32])), ..Default::default() };
    assert!(restore_archive(&on_disk, &store, &t.path().join("r2"), &other).is_err(), "another key opens nothing");
    // Its file table and head open with the key.
    let read = |o: &ObjRef| store.read_member_unchecked(&o.cid).map_err(std::io::Error::other);
    let opened = backmesh_core::archive::sealed::unseal(&on_disk, &key, &read).unwrap();
    assert_eq!((opened.files.clone(), opened.stats.clone()), (first.files.clone(), first.stats.clone()));
    // Exported with the key: the very `.tgz` a plain full run makes.
    assert_eq!(exported(&store, &on_disk, Some(&key)), plain_tgz(&t.path().join("plain1"), &src));
    assert!(store.export_tgz(&on_disk, &mut Vec::new()).is_err(), "not without the key");

    // A byte in the middle of a large file, and a small file rewritten.
    let files: Vec<_> =
        crate::common::walk(&src).into_iter().filter(|(_, s)| s.kind == "file" && s.mode & 0o200 != 0).collect();
    let large = files.iter().find(|(_, s)| s.content.as_ref().unwrap().len() > 400_000).unwrap();
    let mut bytes = large.1.content.clone().unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    fs::write(src.join(&large.0), &bytes).unwrap();
    let small = files.iter().find(|(_, s)| (3000..10_000).contains(&s.content.as_ref().unwrap().len())).unwrap();
    let mut text = small.1.content.clone().unwrap();
    text[10] ^= 0x01;
    fs::write(src.join(&small.0), &text).unwrap();
    let second = stored(&store, &src, &opts);
    let deltas: Vec<&MemberRef> = second.members.iter().filter(|m| m.key.is_some()).collect();
    assert!(!deltas.is_empty(), "the changed members are sealed deltas");
    for d in &deltas {
        // Against a whole member (at most two objects to read), and small.
        let k = d.key.unwrap();
        let kf = store.read_member_unchecked(&k.cid).unwrap();
        assert_eq!(backmesh_crypt::header(&kf).unwrap().0, Kind::Member);
        assert!(d.compressed_len * 2 <= k.len + 2 * backmesh_crypt::OVERHEAD as u64, "{d:?}");
    }
    let on_disk = store.manifest("n", path, Some(&second.id)).unwrap();
    restore_archive(&on_disk, &store, &t.path().join("r3"), &with_key).unwrap();
    crate::common::assert_same_tree(&src, &t.path().join("r3"));
    assert_eq!(exported(&store, &on_disk, Some(&key)), plain_tgz(&t.path().join("plain2"), &src));

    // Nothing changed: unchanged, as for a plain series.
    std::thread::sleep(std::time::Duration::from_millis(2600));
    let again = backmesh_core::jobs::run_backup(&store, "n", &src, &opts, Retention::keep(10)).unwrap();
    assert!(matches!(again.outcome, backmesh_core::jobs::RunOutcome::Unchanged { .. }), "{:?}", again.outcome);

    // No file of the store holds the content or a path, in any decoding.
    for (p, bytes) in
        files_under(&t.path().join("data/segments")).into_iter().chain(files_under(&t.path().join("data/manifests")))
    {
        let mut inflated = Vec::new();
        let _ = std::io::Read::read_to_end(&mut flate2::read::MultiGzDecoder::new(&bytes[..]), &mut inflated);
        for hay in [&bytes, &inflated] {
            assert!(!hay.windows(MARKER.len()).any(|w| w == MARKER), "{p} holds the content");
            assert!(!hay.windows(10).any(|w| w == b"marker.txt"), "{p} holds a path");
        }
    }
}
