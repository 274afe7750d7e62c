//! End-to-end tests: the real binaries, run as a user runs them.

use std::fs;
use std::path::Path;
use std::process::{Command, Output};

use backmesh_api::local::{Archives, Backup, BackupResult, Exported, Restored, Verified};
use backmesh_simulations::binary;

fn node(data: &Path, args: &[&str]) -> Output {
    let out = Command::new(binary("backmesh-node"))
        .arg("--data-dir")
        .arg(data)
        .args(["--name", "n1"])
        .args(args)
        .output()
        .expect("run backmesh-node (build it with `cargo build --workspace --bins`)");
    out
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn json<T: serde::de::DeserializeOwned>(o: &Output) -> T {
    assert!(o.status.success(), "failed: {}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", stdout(o)))
}

#[test]
fn backup_list_restore_export_verify_through_the_cli() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("app");
    fs::create_dir_all(src.join("conf")).unwrap();
    fs::write(src.join("conf/app.toml"), b"port = 80\n").unwrap();
    fs::write(src.join("data.bin"), vec![7u8; 300_000]).unwrap();
    std::os::unix::fs::symlink("conf/app.toml", src.join("current")).unwrap();
    let data = t.path().join("data");
    let s = src.to_str().unwrap();

    let first: Backup = json(&node(&data, &["--json", "backup", s]));
    assert_eq!((first.result, first.files), (BackupResult::Finished, Some(2)), "{first:?}");
    let id = first.archive;
    let again: Backup = json(&node(&data, &["--json", "backup", s]));
    assert_eq!((again.result, again.archive.as_str()), (BackupResult::Unchanged, id.as_str()));

    let list: Archives = json(&node(&data, &["--json", "archives"]));
    assert_eq!(list.archives.len(), 1);
    assert_eq!(list.archives[0].id, id);
    assert!(list.archives[0].created.ends_with('Z'));

    let out = t.path().join("restored");
    let restored: Restored = json(&node(&data, &["--json", "restore", s, "--to", out.to_str().unwrap()]));
    assert_eq!((restored.archive.as_str(), restored.to.as_path()), (id.as_str(), out.as_path()));
    assert_eq!(fs::read(out.join("conf/app.toml")).unwrap(), b"port = 80\n");
    assert_eq!(fs::read_link(out.join("current")).unwrap(), Path::new("conf/app.toml"));

    // A second restore into the same, now non-empty, target is refused and changes nothing.
    fs::write(out.join("local-note"), b"mine").unwrap();
    let refused = node(&data, &["restore", s, "--to", out.to_str().unwrap()]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("not empty"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    assert_eq!(fs::read(out.join("local-note")).unwrap(), b"mine");

    let tgz = t.path().join("export.tgz");
    let exported: Exported = json(&node(&data, &["--json", "export", s, "-o", tgz.to_str().unwrap()]));
    let gnu = t.path().join("gnu");
    fs::create_dir(&gnu).unwrap();
    assert!(Command::new("tar").arg("-xzf").arg(&tgz).arg("-C").arg(&gnu).status().unwrap().success());
    assert_eq!(fs::read(gnu.join("data.bin")).unwrap(), vec![7u8; 300_000]);
    assert_eq!(exported.size, fs::metadata(&tgz).unwrap().len());

    let verified: Verified = json(&node(&data, &["--json", "verify"]));
    assert_eq!(verified.damaged, 0);
    assert!(verified.archives.iter().all(|a| a.ok) && verified.archives.len() == 1, "{verified:?}");
}

#[test]
fn bad_input_gets_a_clear_message_and_exit_code() {
    let t = tempfile::tempdir().unwrap();
    let data = t.path().join("data");
    let missing = node(&data, &["backup", t.path().join("nope").to_str().unwrap()]);
    assert_eq!(missing.status.code(), Some(1));
    let err = String::from_utf8_lossy(&missing.stderr);
    assert!(err.contains("nope") && err.contains("No such file"), "{err}");

    let file = t.path().join("file.txt");
    fs::write(&file, b"x").unwrap();
    let not_dir = node(&data, &["backup", file.to_str().unwrap()]);
    assert_eq!(not_dir.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&not_dir.stderr).contains("not a directory"));

    let no_archive = node(&data, &["restore", "/srv/never", "--to", t.path().join("r").to_str().unwrap()]);
    assert_eq!(no_archive.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&no_archive.stderr).contains("no archive"));

    let usage = node(&data, &["backup"]);
    assert_eq!(usage.status.code(), Some(2), "usage errors exit 2");
}
/// Issue 12's confirmed loss: backups made under a clock a year ahead,
/// then with the clock right. The new archives must be kept, be the
/// newest, and restore.
#[test]
fn backups_after_a_clock_that_ran_a_year_ahead_was_set_right_are_kept_and_restored() {
    let faketime = Command::new("faketime").args(["-f", "+365d", "true"]).status();
    assert!(faketime.is_ok_and(|s| s.success()), "faketime is needed (scripts/test installs it)");
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("app");
    fs::create_dir_all(&src).unwrap();
    let data = t.path().join("data");
    let s = src.to_str().unwrap();
    let mut made = Vec::new();
    for v in 1..=5 {
        fs::write(src.join("version.txt"), format!("v{v}\n")).unwrap();
        let mut cmd = if v <= 3 { Command::new("faketime") } else { Command::new(binary("backmesh-node")) };
        if v <= 3 {
            cmd.args(["-f", "+365d"]).arg(binary("backmesh-node"));
        }
        let out =
            cmd.arg("--data-dir").arg(&data).args(["--name", "n1", "--json", "backup", s, "--keep", "3"]).output();
        let v: Backup = json(&out.expect("run backmesh-node"));
        assert_eq!(v.result, BackupResult::Finished, "{v:?}");
        made.push(v.archive);
    }
    let list: Archives = json(&node(&data, &["--json", "archives", s]));
    let ids: Vec<&str> = list.archives.iter().map(|a| a.id.as_str()).collect();
    assert_eq!(ids, vec![made[4].as_str(), made[3].as_str(), made[2].as_str()], "the 3 newest by order, newest first");
    let created: Vec<&str> = list.archives.iter().map(|a| a.created.as_str()).collect();
    assert!(created[0] < created[2], "the clock's own dates are kept as they were: {created:?}");
    let out = t.path().join("restored");
    let _: Restored = json(&node(&data, &["--json", "restore", s, "--to", out.to_str().unwrap()]));
    assert_eq!(fs::read_to_string(out.join("version.txt")).unwrap(), "v5\n");
}

mod mesh;

#[test]
fn init_sets_a_server_up_and_the_node_runs_from_what_it_wrote() {
    use std::os::unix::fs::PermissionsExt;
    let t = tempfile::tempdir().unwrap();
    let (conf, data) = (t.path().join("etc"), t.path().join("var"));
    let init = |conf: &Path, extra: &[&str]| {
        Command::new(binary("backmesh-node"))
            .args(["--name", "s1", "--data-dir"])
            .arg(&data)
            .arg("init")
            .arg("--config-dir")
            .arg(conf)
            .args(["--listen", "127.0.0.1:0", "--api", "127.0.0.1:0"])
            .args(extra)
            .output()
            .unwrap()
    };
    let out = init(&conf, &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let said = stdout(&out);
    assert!(said.contains("made a new swarm key") && said.contains("systemctl enable --now backmesh-node"), "{said}");
    assert!(said.contains("backmesh operator init"), "no operator key given: it says how to make one: {said}");
    for f in ["node.toml", "swarm.key"] {
        let mode = fs::metadata(conf.join(f)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{f}");
    }
    // Set up already: said, and nothing is replaced.
    let before = fs::read(conf.join("node.toml")).unwrap();
    let again = init(&conf, &[]);
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("exists already"));
    assert_eq!(fs::read(conf.join("node.toml")).unwrap(), before);
    // A second server of the same mesh takes the first one's key.
    let conf2 = t.path().join("etc2");
    let key = conf.join("swarm.key");
    // …and the operator's public key, made on the operator's machine.
    let operator = backmesh_simulations::operator_init(&t.path().join("home/operator.key"));
    let bad = init(&conf2, &["--operator-key", "bmop-1234"]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("not an operator public key"), "{bad:?}");
    let out = init(
        &conf2,
        &["--swarm-key", &key.to_string_lossy(), "--bootstrap", "127.0.0.1:7400", "--operator-key", &operator],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout(&out).contains("using the mesh's swarm key"));
    assert!(!stdout(&out).contains("operator init"), "{}", stdout(&out));
    let written = fs::read_to_string(conf2.join("node.toml")).unwrap();
    assert!(written.contains(&format!("operator-key = [\"{operator}\"]")), "{written}");
    assert_eq!(fs::read(conf2.join("swarm.key")).unwrap(), fs::read(&key).unwrap());
    assert!(fs::read_to_string(conf2.join("node.toml")).unwrap().contains("bootstrap = [\"127.0.0.1:7400\"]"));

    // The node runs from the config as written, and its API wants the token.
    let mut node = Command::new(binary("backmesh-node"))
        .arg("--config")
        .arg(conf.join("node.toml"))
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let ready = data.join("ready.json");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !ready.exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let api = serde_json::from_slice::<serde_json::Value>(&fs::read(&ready).unwrap()).unwrap()["api"]
        .as_str()
        .unwrap()
        .to_string();
    let text = fs::read_to_string(conf.join("node.toml")).unwrap();
    let token = text.lines().find_map(|l| l.strip_prefix("token = \"")).unwrap().trim_end_matches('"').to_string();
    let status = |token: Option<&str>| {
        let mut c = Command::new(binary("backmesh"));
        c.args(["--node", &api]);
        if let Some(t) = token {
            c.args(["--token", t]);
        }
        c.arg("status").output().unwrap()
    };
    let ok = status(Some(&token));
    let refused = status(None);
    // The client reads it from a file too (not shown by `ps`).
    let token_file = t.path().join("token");
    fs::write(&token_file, format!("{token}\n")).unwrap();
    let from_file = Command::new(binary("backmesh"))
        .args(["--node", &api, "--token-file"])
        .arg(&token_file)
        .arg("status")
        .output()
        .unwrap();
    let _ = node.kill();
    let _ = node.wait();
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    assert!(from_file.status.success(), "{}", String::from_utf8_lossy(&from_file.stderr));
    assert!(stdout(&ok).contains("s1 *"), "{}", stdout(&ok));
    assert_eq!(refused.status.code(), Some(1), "{}", stdout(&refused));
}

#[test]
fn an_operator_key_under_a_passphrase_opens_with_it_only() {
    let t = tempfile::tempdir().unwrap();
    let key = t.path().join("operator.key");
    let cli = |args: &[&str], passphrase: Option<&str>| {
        let mut c = Command::new(binary("backmesh"));
        c.args(args).env_remove("BACKMESH_OPERATOR_PASSPHRASE").env("HOME", t.path());
        if let Some(p) = passphrase {
            c.env("BACKMESH_OPERATOR_PASSPHRASE", p);
        }
        // No terminal to ask on: the passphrase comes from the environment or not at all.
        c.stdin(std::process::Stdio::null()).output().unwrap()
    };
    let made =
        cli(&["--json", "operator", "init", "--passphrase", "--out", key.to_str().unwrap()], Some("s3cret words"));
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    let public =
        serde_json::from_slice::<serde_json::Value>(&made.stdout).unwrap()["public"].as_str().unwrap().to_string();
    let text = fs::read_to_string(&key).unwrap();
    assert!(text.contains("sealed:") && !text.contains("secret:"), "{text}");
    let show = |p: Option<&str>| cli(&["--operator-key", key.to_str().unwrap(), "operator", "show"], p);
    let right = show(Some("s3cret words"));
    assert!(right.status.success(), "{}", String::from_utf8_lossy(&right.stderr));
    assert_eq!(stdout(&right).trim(), public);
    let wrong = show(Some("other words"));
    assert_eq!(wrong.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("wrong passphrase"), "{wrong:?}");
    // The recovery recipient comes from the same sealed key: the one
    // `init` printed, and its secret opens what is wrapped to it.
    let recovery =
        serde_json::from_slice::<serde_json::Value>(&made.stdout).unwrap()["recovery"].as_str().unwrap().to_string();
    assert!(recovery.starts_with("age1"), "{recovery}");
    let k = key.to_str().unwrap();
    let shown = cli(&["--operator-key", k, "operator", "show", "--recovery"], Some("s3cret words"));
    assert_eq!(stdout(&shown).trim(), recovery, "{}", String::from_utf8_lossy(&shown.stderr));
    let secret = cli(&["--operator-key", k, "operator", "show", "--recovery", "--secret"], Some("s3cret words"));
    let identity = backmesh_crypt::wrap::Identity::parse(stdout(&secret).trim()).unwrap();
    assert_eq!(identity.recipient(), recovery);
    assert_eq!(
        cli(&["--operator-key", k, "operator", "show", "--recovery"], Some("other words")).status.code(),
        Some(1)
    );
}
