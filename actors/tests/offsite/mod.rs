//! Offsite copies against a real S3-compatible server (moto's), started
//! by each test on 127.0.0.1.

use std::collections::HashSet;
use std::fs;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use backmesh_core::offsite::sync::{Offsite, OffsiteError, SeriesSync};
use backmesh_core::offsite::testing::S3Server;
use backmesh_core::store::{Retention, Store};

use super::common::*;
use super::{exported, stored, touch_tree};

fn server() -> S3Server {
    S3Server::start().unwrap_or_else(|e| panic!("{e}"))
}

fn ids(store: &Store, node: &str, path: &str) -> Vec<String> {
    store.list(node, path).unwrap().into_iter().map(|a| a.id).collect()
}

fn sync(o: &Offsite, store: &Store, node: &str, path: &str, keep: usize) -> SeriesSync {
    o.sync_series(store, node, path, &ids(store, node, path), Retention::keep(keep), &|_, _| {})
        .unwrap_or_else(|e| panic!("sync {node} {path}: {e}"))
}

fn member_count(o: &Offsite) -> usize {
    o.bucket.list("members/").unwrap().0.len()
}

#[test]
fn archives_go_up_once_deduplicated_and_come_back_exact() {
    let s3 = server();
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    gen_tree(&src, 11);
    let path = src.to_str().unwrap();
    let a = Store::open(&t.path().join("a")).unwrap();
    let mut made = Vec::new();
    for gen in 0..3 {
        touch_tree(&src, gen);
        made.push(stored(&a, &src).0);
    }
    let o = Offsite::new(s3.bucket("backups", "mesh"), a.peer_id());

    let first = sync(&o, &a, "n", path, 10);
    assert_eq!(first.uploaded.len(), 3, "{first:?}");
    let distinct: HashSet<_> = made.iter().flat_map(|m| m.digests()).collect();
    assert_eq!(member_count(&o), distinct.len(), "each member once");
    let (oldest, later) = (&first.uploaded[0].1, &first.uploaded[1].1);
    assert_eq!(oldest.sent, oldest.members, "the first archive sends everything");
    assert!(later.sent < later.members / 2, "a later one sends what changed: {later:?}");
    assert!(sync(&o, &a, "n", path, 10).uploaded.is_empty(), "a second round sends nothing");

    // Another node backing up the same tree: its members are there already.
    let b = Store::open(&t.path().join("b")).unwrap();
    let mb = stored_as(&b, "other", &src);
    let ob = Offsite::new(s3.bucket("backups", "mesh"), b.peer_id());
    let up = sync(&ob, &b, "other", path, 10);
    assert_eq!(up.uploaded.len(), 1);
    assert_eq!(up.uploaded[0].1.sent, 0, "dedup across nodes: {:?}", up.uploaded[0].1);
    assert!(mb.members.len() > 1);

    // A brand-new store reads the newest archive back, byte for byte.
    let c = Store::open(&t.path().join("c")).unwrap();
    let back = o.import(&c, "n", path, None, None).unwrap();
    assert_eq!(back.id, made[2].id);
    assert_eq!(sha(&exported(&c, &back)), sha(&exported(&a, &made[2])));
    assert!(c.verify(&back).is_ok());
    let older = o.import(&c, "n", path, Some(&made[0].id), None).unwrap();
    assert_eq!(sha(&exported(&c, &older)), sha(&exported(&a, &made[0])));

    // Retention in the bucket as on holders; collection frees what no
    // manifest names any more, and what is left still restores.
    let pruned = sync(&o, &a, "n", path, 1);
    assert_eq!(pruned.pruned.len(), 2, "{pruned:?}");
    assert_eq!(o.archives("n", path).unwrap().0.len(), 1);
    let before = member_count(&o);
    let mut eager = Offsite::new(s3.bucket("backups", "mesh"), a.peer_id());
    eager.unused_grace_ms = -1;
    let c1 = eager.collect(&a).unwrap();
    let only: HashSet<_> = made[2].digests().chain(mb.digests()).collect();
    assert_eq!(member_count(&o), only.len(), "{c1:?}");
    assert_eq!(c1.deleted as usize, before - only.len());
    // With the default grace, nothing recent is collected.
    let _ = sync(&ob, &b, "other", path, 0);
    assert_eq!(o.collect(&a).unwrap().deleted, 0);
    let d = Store::open(&t.path().join("d")).unwrap();
    let last = o.import(&d, "n", path, None, None).unwrap();
    assert_eq!(sha(&exported(&d, &last)), sha(&exported(&a, &made[2])));
}

fn stored_as(store: &Store, node: &str, src: &Path) -> backmesh_core::archive::Manifest {
    use backmesh_core::jobs::{run_backup, RunOutcome};
    match run_backup(store, node, src, &super::opts(), Retention::keep(10)).unwrap().outcome {
        RunOutcome::Stored { manifest, .. } => *manifest,
        other => panic!("not stored: {other:?}"),
    }
}

fn sha(b: &[u8]) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(b))
}

#[test]
fn an_upload_cut_short_goes_on_from_where_it_stopped() {
    let s3 = server();
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    fs::create_dir_all(&src).unwrap();
    for i in 0..40 {
        fs::write(src.join(format!("f{i:02}.bin")), Rng(i).bytes(200_000)).unwrap();
    }
    let path = src.to_str().unwrap();
    let a = Store::open(&t.path().join("a")).unwrap();
    let m = stored(&a, &src).0;
    let target = s3.bucket("cut", "");
    let total: HashSet<_> = m.digests().collect();
    assert!(total.len() >= 8, "{} members", total.len());
    // Slowly (2 MB/s), and stopped once a few members are up.
    let slow = {
        let b = s3.bucket_as("cut", "", "testing", "testing");
        let t = b.target().clone();
        let secret = backmesh_core::offsite::Secret { key: "testing".into(), secret: "testing".into(), token: None };
        backmesh_core::offsite::Bucket::new(t, &secret, Some(2_000_000)).unwrap()
    };
    let o = Offsite::new(slow, a.peer_id());
    let watcher = Offsite::new(target, a.peer_id());
    let cut = std::thread::scope(|s| {
        let up = s.spawn(|| o.sync_series(&a, "n", path, &ids(&a, "n", path), Retention::keep(10), &|_, _| {}));
        let deadline = Instant::now() + Duration::from_secs(60);
        while member_count(&watcher) < 3 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        o.stop.store(true, Ordering::Relaxed);
        up.join().unwrap()
    });
    assert!(matches!(cut, Err(OffsiteError::Stopped { .. })), "{cut:?}");
    assert!(watcher.archives("n", path).unwrap().0.is_empty(), "no manifest before all members");
    let already = member_count(&watcher);
    assert!(already >= 3 && already < total.len(), "{already} of {}", total.len());

    o.stop.store(false, Ordering::Relaxed);
    let done = sync(&watcher, &a, "n", path, 10);
    assert_eq!(done.uploaded.len(), 1);
    assert_eq!(done.uploaded[0].1.sent as usize, total.len() - already, "only what was missing");
    assert_eq!(member_count(&watcher), total.len());
}

#[test]
fn a_bucket_out_of_reach_is_a_clear_error_worth_retrying() {
    let t = tempfile::tempdir().unwrap();
    let a = Store::open(&t.path().join("a")).unwrap();
    let src = t.path().join("src");
    gen_tree(&src, 3);
    stored(&a, &src);
    // A port that was free a moment ago: nothing listens there now.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let target = backmesh_core::offsite::OffsiteTarget::parse("s3://nowhere/x", Some(&endpoint), None).unwrap();
    let secret = backmesh_core::offsite::Secret { key: "k".into(), secret: "s".into(), token: None };
    let o = Offsite::new(backmesh_core::offsite::Bucket::new(target, &secret, None).unwrap(), a.peer_id());
    let path = src.to_str().unwrap();
    let e = o.sync_series(&a, "n", path, &ids(&a, "n", path), Retention::keep(10), &|_, _| {}).unwrap_err();
    assert!(e.is_transient(), "{e}");
    let text = e.to_string();
    assert!(text.contains("cannot reach") && text.contains(&endpoint), "{text}");
}

#[test]
fn wrong_credentials_are_refused_in_plain_words() {
    // moto checks credentials only on signed headers, not on presigned
    // requests: s3s-fs checks every signature.
    let t = tempfile::tempdir().unwrap();
    let (key, secret) = ("AKIABACKMESHTEST0001".to_string(), "s3cr3t-for-the-test-only".to_string());
    let s3 = S3Server::start_s3s_fs(t.path(), &key, &secret).unwrap_or_else(|e| panic!("{e}"));
    let good = s3.bucket_as("locked", "", &key, &secret);
    good.create().unwrap();
    good.put("probe", b"x").unwrap();
    assert_eq!(good.get("probe").unwrap().as_deref(), Some(&b"x"[..]));
    for (k, s) in [(key.as_str(), "not-the-secret"), ("AKIANOSUCHKEY0000000", secret.as_str())] {
        let bad = s3.bucket_as("locked", "", k, s);
        let e = bad.put("probe", b"y").unwrap_err();
        assert!(!e.is_transient(), "{e}");
        let text = e.to_string();
        assert!(text.contains("refused these credentials"), "{text}");
        assert!(!text.contains(&secret), "the secret is never shown: {text}");
        assert!(bad.check().is_err());
    }
    assert_eq!(good.get("probe").unwrap().as_deref(), Some(&b"x"[..]), "nothing was written");
}

#[test]
fn retention_decides_before_uploading_and_a_stray_object_counts_for_nothing() {
    let s3 = server();
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    gen_tree(&src, 21);
    let path = src.to_str().unwrap();
    let a = Store::open(&t.path().join("a")).unwrap();
    let mut made = Vec::new();
    for gen in 0..3 {
        touch_tree(&src, gen + 10);
        made.push(stored(&a, &src).0);
    }
    let o = Offsite::new(s3.bucket("strays", ""), a.peer_id());
    // This node keeps three; the bucket, one: only the newest goes up, and
    // a second round neither uploads nor deletes anything.
    let first = sync(&o, &a, "n", path, 1);
    assert_eq!(first.uploaded.iter().map(|u| u.0.clone()).collect::<Vec<_>>(), vec![made[2].id.clone()]);
    assert!(first.pruned.is_empty());
    let again = sync(&o, &a, "n", path, 1);
    assert!(again.uploaded.is_empty() && again.pruned.is_empty(), "{again:?}");
    assert_eq!(again.in_bucket, vec![made[2].id.clone()]);

    // An object named as a newer archive that is none: not counted (the real
    // one is not pruned for it), passed over by a restore, left out of listings.
    let stray = backmesh_core::offsite::manifest_key("n", path, i64::MAX / 2, "zz-not-an-archive");
    o.bucket.put(&stray, b"not a manifest").unwrap();
    let third = sync(&o, &a, "n", path, 1);
    assert!(third.pruned.is_empty(), "{third:?}");
    assert_eq!(third.in_bucket, vec![made[2].id.clone()]);
    let c = Store::open(&t.path().join("c")).unwrap();
    let back = o.import(&c, "n", path, None, None).unwrap();
    assert_eq!(back.id, made[2].id);
    assert_eq!(sha(&exported(&c, &back)), sha(&exported(&a, &made[2])));
}
