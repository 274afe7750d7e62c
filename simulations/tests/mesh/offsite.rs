//! Offsite copies on a real S3-compatible server (moto's), with real nodes.

use std::time::Duration;

use backmesh_api::cli::RunOutcome;
use backmesh_api::Status;
use backmesh_core::offsite::sync::Offsite;
use backmesh_core::offsite::testing::S3Server;
use backmesh_simulations::{tree_differences, wait_until, write_slow_tree, Mesh};

const LONG: Duration = Duration::from_secs(90);

pub(super) fn offsite_args(s3: &S3Server) -> Vec<String> {
    offsite_args_for(s3, "s3://offsite/cluster-a")
}

fn offsite_args_for(s3: &S3Server, url: &str) -> Vec<String> {
    ["--offsite", url, "--offsite-endpoint", &s3.endpoint, "--replicas", "2"].iter().map(|s| s.to_string()).collect()
}

/// Three nodes n1..n3 with `extra`, the bucket's keys in their
/// environment, once each sees the others.
pub(super) fn three_with_offsite(extra: &[String]) -> Mesh {
    let mut mesh = Mesh::new();
    mesh.env = vec![("AWS_ACCESS_KEY_ID".into(), "testing".into()), ("AWS_SECRET_ACCESS_KEY".into(), "testing".into())];
    for (i, name) in ["n1", "n2", "n3"].iter().enumerate() {
        let n = mesh.start(name, i.checked_sub(1), extra);
        assert!(mesh.wait_ready(n, Duration::from_secs(30)), "{}", mesh.nodes[n].log_text());
    }
    assert!(wait_until(LONG, || (0..3).all(|i| mesh.up_names(i).len() == 3)));
    mesh
}

/// The dashboard's offsite column for (node, path), as node `i` serves it.
fn dashboard_offsite(mesh: &Mesh, i: usize, node: &str, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut c = std::net::TcpStream::connect(("127.0.0.1", mesh.nodes[i].api)).ok()?;
    c.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
    write!(c, "GET /api/v1/dashboard HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").ok()?;
    let mut text = String::new();
    c.read_to_string(&mut text).ok()?;
    let body = text.split_once("\r\n\r\n")?.1;
    let o: backmesh_api::dashboard::Overview = serde_json::from_str(body).ok()?;
    let jobs = o.sites.into_iter().flat_map(|s| s.nodes).flat_map(|n| n.jobs);
    jobs.into_iter().find(|j| j.node == node && j.path == path)?.offsite
}

/// The series' offsite state as node `i` tells it, if it uploads it.
pub(super) fn offsite_state(mesh: &Mesh, i: usize, node: &str, path: &str) -> Option<String> {
    let s: Status = mesh.cli_json(i, &["status"]).ok()?;
    s.offsite?.series.into_iter().find(|x| x.node == node && x.path == path).map(|x| x.state)
}

#[test]
fn a_brand_new_node_restores_from_the_bucket_after_the_whole_mesh_is_gone() {
    let s3 = S3Server::start().unwrap_or_else(|e| panic!("{e}"));
    let bucket = s3.bucket("offsite", "cluster-a");
    let extra = offsite_args(&s3);
    let mut mesh = three_with_offsite(&extra);
    let src = mesh.root.path().join("src");
    std::fs::create_dir_all(src.join("conf")).unwrap();
    write_slow_tree(&src, 40, 7);
    std::fs::write(src.join("conf/app.toml"), b"port = 80\n").unwrap();
    std::os::unix::fs::symlink("conf/app.toml", src.join("current")).unwrap();
    let s = src.to_string_lossy().into_owned();
    assert!(mesh.cli(0, &["register", "n1", &s, "--every", "600"]).status.success());
    let mut ids = Vec::new();
    for round in 0..2 {
        std::fs::write(src.join("round"), format!("{round}")).unwrap();
        let o: RunOutcome = mesh.cli_json(0, &["run", "n1", &s]).unwrap_or_else(|e| panic!("{e}"));
        ids.push(o.archive.clone().unwrap_or_else(|| panic!("no archive: {o:?}")));
    }
    // The origin uploads its series; `status` says when it is current.
    let watcher = Offsite::new(bucket, "test".into());
    assert!(
        wait_until(LONG, || offsite_state(&mesh, 0, "n1", &s).as_deref() == Some("current")),
        "{:?}\n{}",
        offsite_state(&mesh, 0, "n1", &s),
        mesh.nodes[0].log_text()
    );
    let listed: Vec<String> = watcher.archives("n1", &s).unwrap().0.into_iter().map(|l| l.id).collect();
    let mut want = ids.clone();
    want.reverse();
    assert_eq!(listed, want, "both archives, newest first");
    // Every node's dashboard says so, from the bucket.
    for i in 0..3 {
        let shown = || dashboard_offsite(&mesh, i, "n1", &s).as_deref() == Some("current");
        assert!(wait_until(LONG, shown), "{:?}", dashboard_offsite(&mesh, i, "n1", &s));
    }
    // Only the origin uploaded: the holders see it present and leave it.
    for i in 1..3 {
        assert_eq!(offsite_state(&mesh, i, "n1", &s), None, "node {i} uploads nothing of n1");
    }

    // Every node is gone, data directories and all.
    for i in 0..3 {
        mesh.kill9(i);
        std::fs::remove_dir_all(&mesh.nodes[i].dir).unwrap();
    }
    // A brand-new node with the same swarm key and bucket restores the tree.
    let fresh = mesh.start("n9", None, &extra);
    assert!(mesh.wait_ready(fresh, Duration::from_secs(30)), "{}", mesh.nodes[fresh].log_text());
    let to = mesh.root.path().join("restored");
    let t = to.to_string_lossy().into_owned();
    let out = mesh.cli(fresh, &["restore", "n1", &s, "--on", "n9", "--to", &t]);
    assert!(
        out.status.success(),
        "{}{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        mesh.nodes[fresh].log_text()
    );
    assert_eq!(tree_differences(&src, &to), Vec::<String>::new());
    // It lists both archives, from the bucket, and checks the bucket's copies.
    let b: backmesh_api::Backups = mesh.cli_json(fresh, &["backups", "n1", &s]).unwrap_or_else(|e| panic!("{e}"));
    let listed: Vec<(String, bool)> = b.archives.iter().map(|a| (a.id.clone(), a.offsite)).collect();
    assert_eq!(listed, want.iter().map(|i| (i.clone(), true)).collect::<Vec<_>>());
    // (How many files a sealed archive holds is sealed with it: 0 here.)
    assert!(b.archives.iter().all(|a| a.size > 0), "{b:?}");
    let text = String::from_utf8_lossy(&mesh.cli(fresh, &["backups", "n1", &s]).stdout).into_owned();
    assert!(text.contains("offsite"), "{text}");
    let out = mesh.cli(fresh, &["verify", "n1", &s]);
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{said}{}", String::from_utf8_lossy(&out.stderr));
    assert!(said.contains("offsite"), "{said}");
    // And `fetch` assembles the .tgz that GNU tar restores the same.
    let tgz = mesh.root.path().join("n1.tgz");
    let out = mesh.cli(fresh, &["fetch", "n1", &s, "--archive", &ids[0], "-o", &tgz.to_string_lossy()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let untar = mesh.root.path().join("untar");
    std::fs::create_dir_all(&untar).unwrap();
    assert!(std::process::Command::new("tar").arg("-xzf").arg(&tgz).arg("-C").arg(&untar).status().unwrap().success());
    assert!(untar.join("conf/app.toml").exists());
}

#[test]
fn the_next_in_line_uploads_what_the_elected_node_does_not() {
    // n1 has no --offsite: its series is elected to it all the same, and
    // the first of its holders stands in once n1 lags past --repair-after.
    let s3 = S3Server::start().unwrap_or_else(|e| panic!("{e}"));
    let bucket = s3.bucket("offsite", "cluster-a");
    let mut mesh = Mesh::new();
    mesh.env = vec![("AWS_ACCESS_KEY_ID".into(), "testing".into()), ("AWS_SECRET_ACCESS_KEY".into(), "testing".into())];
    let mut extra = offsite_args(&s3);
    extra.extend(["--repair-after".to_string(), "3".to_string()]);
    let plain: Vec<String> = ["--replicas", "2", "--repair-after", "3"].iter().map(|s| s.to_string()).collect();
    for (i, name) in ["n1", "n2", "n3"].iter().enumerate() {
        let n = mesh.start(name, i.checked_sub(1), if i == 0 { &plain } else { &extra });
        assert!(mesh.wait_ready(n, Duration::from_secs(30)), "{}", mesh.nodes[n].log_text());
    }
    assert!(wait_until(LONG, || (0..3).all(|i| mesh.up_names(i).len() == 3)));
    let src = mesh.root.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    write_slow_tree(&src, 20, 3);
    let s = src.to_string_lossy().into_owned();
    assert!(mesh.cli(0, &["register", "n1", &s, "--every", "600"]).status.success());
    let o: RunOutcome = mesh.cli_json(0, &["run", "n1", &s]).unwrap_or_else(|e| panic!("{e}"));
    let id = o.archive.clone().unwrap_or_else(|| panic!("{o:?}"));
    let watcher = Offsite::new(bucket, "test".into());
    let there = || watcher.archives("n1", &s).map(|(l, _)| l.iter().any(|a| a.id == id)).unwrap_or(false);
    assert!(wait_until(LONG, there), "{}\n{}", mesh.nodes[1].log_text(), mesh.nodes[2].log_text());
    let said = (1..3).any(|i| mesh.nodes[i].log_text().contains("it is there now, from this node"));
    assert!(said, "the stand-in says what it did");
}

#[test]
fn a_bucket_that_goes_away_is_retried_while_the_mesh_carries_on() {
    let t = tempfile::tempdir().unwrap();
    let (key, secret) = ("AKIABACKMESHMESH0001", "mesh-test-secret");
    let s3 = S3Server::start_s3s_fs(t.path(), key, secret).unwrap_or_else(|e| panic!("{e}"));
    let port = s3.port();
    s3.bucket_as("offsite", "", key, secret).create().unwrap();
    let mut mesh = Mesh::new();
    mesh.env = vec![("AWS_ACCESS_KEY_ID".into(), key.into()), ("AWS_SECRET_ACCESS_KEY".into(), secret.into())];
    let extra: Vec<String> = ["--offsite", "s3://offsite/m", "--offsite-endpoint", &s3.endpoint, "--replicas", "1"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    for (i, name) in ["n1", "n2"].iter().enumerate() {
        let n = mesh.start(name, i.checked_sub(1), &extra);
        assert!(mesh.wait_ready(n, Duration::from_secs(30)), "{}", mesh.nodes[n].log_text());
    }
    assert!(wait_until(LONG, || (0..2).all(|i| mesh.up_names(i).len() == 2)));
    drop(s3);

    // The bucket is gone: backups are made and replicated all the same,
    // and `status` says the series is failing, and why.
    let src = mesh.root.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    write_slow_tree(&src, 20, 5);
    let s = src.to_string_lossy().into_owned();
    assert!(mesh.cli(0, &["register", "n1", &s, "--every", "600"]).status.success());
    let o: RunOutcome = mesh.cli_json(0, &["run", "n1", &s]).unwrap_or_else(|e| panic!("{e}"));
    let id = o.archive.clone().unwrap_or_else(|| panic!("{o:?}"));
    let replicated = || {
        mesh.cli_json::<backmesh_api::Backups>(0, &["backups", "n1", &s])
            .map(|b| b.archives.iter().any(|a| a.id == id && a.holders.len() == 2))
            .unwrap_or(false)
    };
    assert!(wait_until(LONG, replicated), "replication goes on without the bucket");
    let failing = || {
        let st: Option<Status> = mesh.cli_json(0, &["status"]).ok();
        st.and_then(|s| s.offsite)
            .and_then(|o| o.series.into_iter().find(|x| x.path == s))
            .is_some_and(|x| x.state == "failing" && x.error.is_some_and(|e| e.contains("cannot reach")))
    };
    assert!(wait_until(LONG, failing), "{}", mesh.nodes[0].log_text());

    // It comes back where it was: the series is uploaded at a later round.
    let s3 = S3Server::start_s3s_fs_on(t.path(), key, secret, port).unwrap_or_else(|e| panic!("{e}"));
    let watcher = Offsite::new(s3.bucket_as("offsite", "m", key, secret), "test".into());
    let there = || watcher.archives("n1", &s).map(|(l, _)| l.iter().any(|a| a.id == id)).unwrap_or(false);
    assert!(wait_until(Duration::from_secs(120), there), "{}", mesh.nodes[0].log_text());
    assert!(wait_until(LONG, || offsite_state(&mesh, 0, "n1", &s).as_deref() == Some("current")));
}

#[test]
fn offsite_settings_that_cannot_work_are_refused_at_start() {
    let t = tempfile::tempdir().unwrap();
    let data = t.path().join("d").to_string_lossy().into_owned();
    let run = |extra: &[&str], env: &[(&str, &str)]| {
        let out = std::process::Command::new(backmesh_simulations::binary("backmesh-node"))
            .args(["--name", "x", "--data-dir", &data, "--listen", "127.0.0.1:0", "--api", "127.0.0.1:0"])
            .args(extra)
            .env_remove("AWS_ACCESS_KEY_ID")
            .env_remove("AWS_SECRET_ACCESS_KEY")
            .env_remove("AWS_SHARED_CREDENTIALS_FILE")
            .env("HOME", t.path())
            .envs(env.iter().copied())
            .output()
            .unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (code, err) = run(&["--offsite", "s3://good-bucket/x"], &[]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("no offsite credentials") && !err.contains("panicked"), "{err}");
    let (code, err) =
        run(&["--offsite", "s3://Not_A_Bucket"], &[("AWS_ACCESS_KEY_ID", "k"), ("AWS_SECRET_ACCESS_KEY", "s")]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("is not a bucket name"), "{err}");
    let creds = t.path().join("creds");
    std::fs::write(&creds, "[other]\naws_access_key_id = k\naws_secret_access_key = s\n").unwrap();
    let (code, err) = run(&["--offsite", "s3://good-bucket", "--offsite-credentials", &creds.to_string_lossy()], &[]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("no [default] section"), "{err}");
}

#[test]
fn stolen_s3_keys_cannot_delete_what_object_lock_keeps() {
    let s3 = S3Server::start().unwrap_or_else(|e| panic!("{e}"));
    // Made as docs/operations.md says: Object Lock on. The thief holds the
    // same S3 keys as every node.
    let thief = s3.bucket_locked("locked", "cluster-b");
    let extra = offsite_args_for(&s3, "s3://locked/cluster-b");
    let mut mesh = three_with_offsite(&extra);
    assert!(
        wait_until(LONG, || mesh.nodes[0].log_text().contains("with Object Lock on")),
        "{}",
        mesh.nodes[0].log_text()
    );
    let src = mesh.root.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    write_slow_tree(&src, 30, 11);
    let s = src.to_string_lossy().into_owned();
    assert!(mesh.cli(0, &["register", "n1", &s, "--every", "600"]).status.success());
    let mut versions = Vec::new();
    for round in 0..2 {
        std::fs::write(src.join("round"), format!("{round}")).unwrap();
        let o: RunOutcome = mesh.cli_json(0, &["run", "n1", &s]).unwrap_or_else(|e| panic!("{e}"));
        let copy = mesh.root.path().join(format!("version-{round}"));
        assert!(std::process::Command::new("cp").arg("-a").arg(&src).arg(&copy).status().unwrap().success());
        versions.push((o.archive.clone().unwrap_or_else(|| panic!("no archive: {o:?}")), copy));
    }
    assert!(
        wait_until(LONG, || offsite_state(&mesh, 0, "n1", &s).as_deref() == Some("current")),
        "{:?}\n{}",
        offsite_state(&mesh, 0, "n1", &s),
        mesh.nodes[0].log_text()
    );
    // The whole mesh is lost (the ransomware case), and the thief then
    // deletes every object it can see, tries to delete every version for
    // good, and writes junk over one member.
    for i in 0..3 {
        mesh.kill9(i);
        std::fs::remove_dir_all(&mesh.nodes[i].dir).unwrap();
    }
    let (objects, _) = thief.list("").unwrap();
    let ours: Vec<String> = objects.into_iter().map(|o| o.key).filter(|k| !k.starts_with("locks/")).collect();
    assert!(ours.iter().any(|k| k.starts_with("manifests/")) && ours.iter().any(|k| k.starts_with("members/")));
    for k in &ours {
        thief.delete(k).unwrap();
    }
    let (left, _) = thief.list("").unwrap();
    assert!(left.iter().all(|o| o.key.starts_with("locks/")), "a plain listing shows nothing more: {left:?}");
    let mut refused = 0;
    for v in thief.versions("").unwrap().iter().filter(|v| !v.marker && !v.key.starts_with("locks/")) {
        match thief.delete_version(&v.key, &v.version_id) {
            Ok(()) => panic!("the bucket deleted locked version {} of {}", v.version_id, v.key),
            Err(e) => {
                assert!(e.to_string().contains("not allowed") || e.to_string().contains("Denied"), "{e}");
                refused += 1;
            }
        }
    }
    assert!(refused >= ours.len(), "{refused} of {} refused", ours.len());
    eprintln!("the thief's DELETE of {refused} locked versions ({} objects): every one refused", ours.len());
    let junked = ours.iter().find(|k| k.starts_with("members/")).unwrap();
    // Larger than any member: a restore must not stop at it.
    thief.put(junked, &vec![b'j'; 4 << 20]).unwrap();
    // A brand-new node restores every archive exactly, reading past the
    // thief's delete markers and junk.
    let fresh = mesh.start("n9", None, &extra);
    assert!(mesh.wait_ready(fresh, Duration::from_secs(30)), "{}", mesh.nodes[fresh].log_text());
    for (n, (id, copy)) in versions.iter().enumerate() {
        let to = mesh.root.path().join(format!("restored-{n}"));
        let out = mesh.cli(fresh, &["restore", "n1", &s, "--archive", id, "--on", "n9", "--to", to.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "{}{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            mesh.nodes[fresh].log_text()
        );
        assert_eq!(tree_differences(copy, &to), Vec::<String>::new(), "archive {n}");
    }
    let b: backmesh_api::Backups = mesh.cli_json(fresh, &["backups", "n1", &s]).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(b.archives.len(), 2, "{b:#?}");
    assert!(mesh.nodes[fresh].log_text().contains("older version"), "{}", mesh.nodes[fresh].log_text());
}
