//! The web dashboard in a real headless Chromium (Debian's `chromium`,
//! installed by scripts/test), against real nodes: jobs that are OK,
//! FAILING, STALE and PAUSED, a federated mesh, admin, viewer and client
//! tokens. The browser side is simulations/browser/dashboard_test.py;
//! screenshots of every page land in target/<profile>/dashboard-screenshots.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use backmesh_simulations::{binary, wait_until, Mesh};

const LONG: Duration = Duration::from_secs(60);

fn tokens(extra: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = ["--token", "adm", "--viewer-token", "view", "--site-token", "paris=cli"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

fn states(mesh: &Mesh, i: usize) -> Vec<(String, String)> {
    let jobs = mesh.cli_json::<backmesh_api::Jobs>(i, &["jobs"]).unwrap_or_default();
    jobs.jobs.into_iter().map(|j| (j.path, j.state.as_str().to_string())).collect()
}

#[test]
fn the_dashboard_shows_every_state_to_admins_viewers_and_clients_in_a_real_browser() {
    // Job "minutes" of two seconds: schedules and staleness play out quickly.
    let minute = ("BACKMESH_MINUTE_SECS".to_string(), "2".to_string());
    // Another mesh, federated into the first one's dashboard.
    let mut far = Mesh::new();
    far.env.push(minute.clone());
    let f = far.start(
        "far",
        None,
        &[
            "--site".into(),
            "remote".into(),
            "--token".into(),
            "faradm".into(),
            "--viewer-token".into(),
            "farview".into(),
        ],
    );
    far.nodes[f].cli_args = vec!["--token".into(), "faradm".into()];
    assert!(far.wait_ready(f, LONG));

    let mut mesh = Mesh::new();
    mesh.env.push(minute);
    let federate = format!("far=http://127.0.0.1:{}", far.nodes[f].api);
    let plan: [(&str, &str, Vec<String>); 4] = [
        // n1 runs a post hook: its operator allows programs.
        // n1 also lets its site's page browse its own backups.
        (
            "n1",
            "paris",
            tokens(&[
                "--federate",
                &federate,
                "--federate-token",
                "far=farview",
                "--allow-programs",
                "--site-browse",
                "paris=n1-files",
            ]),
        ),
        ("n2", "paris", tokens(&[])),
        ("n3", "lyon", tokens(&[])),
        ("n4", "lyon", tokens(&[])),
    ];
    for (i, (name, site, extra)) in plan.iter().enumerate() {
        let mut args = extra.clone();
        args.extend(["--site".to_string(), site.to_string()]);
        let n = mesh.start(name, i.checked_sub(1), &args);
        mesh.nodes[n].cli_args = vec!["--token".into(), "adm".into()];
        assert!(mesh.wait_ready(n, LONG), "{}", mesh.nodes[n].log_text());
    }
    assert!(wait_until(LONG, || mesh.up_names(0).len() == 4));

    let dir = |name: &str| {
        let d = mesh.root.path().join(name);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("data.txt"), name.as_bytes()).unwrap();
        d.to_string_lossy().into_owned()
    };
    let (ok, failing, paused, stale) = (dir("ok"), dir("gone"), dir("paused"), dir("stale"));
    for (node, path) in [("n1", &ok), ("n2", &failing), ("n3", &paused), ("n4", &stale)] {
        let mut args = vec!["register", node, path, "--every", "1"];
        // A post hook that fails: shown on the job page, the run still succeeds.
        if node == "n1" {
            args.extend(["--post", "echo 'post hook says no' >&2; exit 9"]);
        }
        let out = mesh.cli(0, &args);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    assert!(
        wait_until(LONG, || states(&mesh, 0).iter().filter(|(_, s)| s == "ok").count() == 4),
        "{:?}",
        states(&mesh, 0)
    );
    // Break one, pause one, lose one.
    std::fs::remove_dir_all(&failing).unwrap();
    assert!(mesh.cli(0, &["pause", "n3"]).status.success());
    mesh.kill9(3);
    let want = |mesh: &Mesh| {
        let s = states(mesh, 0);
        [(&ok, "ok"), (&failing, "failing"), (&paused, "paused"), (&stale, "stale")]
            .iter()
            .all(|(p, st)| s.iter().any(|(path, state)| path == *p && state == st))
    };
    assert!(wait_until(LONG, || want(&mesh)), "{:?}", states(&mesh, 0));

    let shots: PathBuf = binary("dashboard-screenshots");
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("browser/dashboard_test.py");
    let cfg = serde_json::json!({
        "url": mesh.nodes[0].url(),
        "shots": shots,
        "admin": "adm", "viewer": "view", "client_token": "cli", "client_site": "paris", "browse_token": "n1-files",
        "restore_to": mesh.root.path().join("restored-from-the-page"),
        "jobs": {"ok": ok, "failing": failing, "paused": paused, "stale": stale},
        "ok_node": "n1", "failing_node": "n2", "down_node": "n4", "node_count": 4, "ok_content": "ok",
        "failure": "No such file or directory",
        "sites": ["paris", "lyon"],
        "federated": "far", "federated_pid": far.nodes[f].pid().unwrap(),
    });
    let out = Command::new("python3").arg(&script).arg(cfg.to_string()).output().expect("run python3");
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "the browser test failed:\n{said}\nnode log:\n{}", mesh.nodes[0].log_text());
    eprintln!("{said}");
    // The site's page token, which every node holds (root on n3, in lyon,
    // reads it from its config), browses nothing: not on n1, whose browse
    // token is n1's own, nor on n2, which gave the site none.
    for (i, node, path) in [(0, "n1", &ok), (1, "n2", &failing)] {
        mesh.nodes[i].cli_args = vec!["--token".into(), "cli".into()];
        let out = mesh.cli_as_node(i, &["ls", node, path]);
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && said.contains("--site-browse paris=TOKEN"), "{said}");
    }
    for page in [
        "overview-admin",
        "job-failing",
        "job-failing-1400",
        "job-failing-800",
        "job-run-now",
        "job-browser",
        "nodes",
        "job-viewer",
        "client-site",
        "client-browser",
    ] {
        assert!(shots.join(format!("{page}.png")).exists(), "screenshot {page}");
    }
}
