//! Helpers for end-to-end tests that run real backmesh processes.
//!
//! [`Mesh`] starts `backmesh-node` processes on 127.0.0.1 with free ports
//! and temporary data directories, waits for them, and can kill -9, stop
//! (SIGTERM) and restart them. It asks nodes through the real `backmesh`
//! CLI, so every query is also a test of the client. Every wait is bounded.

pub mod faults;
pub mod mesh_sim;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Path of a binary of this workspace, built by `cargo build` beside the
/// tests (or beside `backmesh-sim`).
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    // target/<profile>/deps/<test> → target/<profile>/<name>;
    // target/<profile>/backmesh-sim → target/<profile>/<name>.
    let mut dir = exe.parent().map(PathBuf::from).unwrap_or_default();
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.pop();
    }
    dir.join(name)
}

/// A port nobody listens on right now. Racy by nature (another process may
/// take it before it is used): only for refusals that never bind it. Nodes
/// bind port 0 and say what they got (see [`Mesh::start`]).
/// Makes an operator key in `file` with `backmesh operator init`, as an
/// operator does on their machine; answers its public half.
pub fn operator_init(file: &Path) -> String {
    let out = Command::new(binary("backmesh"))
        .args(["--json", "operator", "init", "--out"])
        .arg(file)
        .output()
        .expect("run backmesh operator init");
    assert!(out.status.success(), "operator init: {}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("operator init --json");
    v["public"].as_str().expect("a public key").to_string()
}

/// The recovery recipient (`age1…`) of the operator key in `file`, as
/// `backmesh operator show --recovery` prints it.
pub fn operator_recovery(file: &Path) -> String {
    let out = Command::new(binary("backmesh"))
        .arg("--operator-key")
        .arg(file)
        .args(["operator", "show", "--recovery"])
        .output()
        .expect("run backmesh operator show --recovery");
    assert!(out.status.success(), "operator show --recovery: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).unwrap_or(0)
}

/// Polls `f` every 200 ms until it holds or `timeout` passes.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

pub struct Node {
    pub name: String,
    pub dir: PathBuf,
    pub listen: u16,
    pub api: u16,
    pub log: PathBuf,
    args: Vec<String>,
    /// Environment variables of its process (kept across restarts).
    pub env: Vec<(String, String)>,
    child: Option<Child>,
    /// Extra `backmesh` CLI arguments (token, CA…).
    pub cli_args: Vec<String>,
    pub scheme: &'static str,
}

impl Node {
    pub fn url(&self) -> String {
        format!("{}://127.0.0.1:{}", self.scheme, self.api)
    }
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }
    /// How its process ended, once it has ended by itself (a process this
    /// harness killed or stopped is not one: it has no child any more).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.as_mut().and_then(|c| c.try_wait().ok().flatten())
    }
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

pub struct Mesh {
    pub root: tempfile::TempDir,
    pub nodes: Vec<Node>,
    pub swarm_key: PathBuf,
    /// The operator's secret key file (made as an operator makes it, with
    /// `backmesh operator init`), which [`Mesh::cli`] signs with…
    pub operator_key: PathBuf,
    /// …and its public half, which every node is told (`--operator-key`),
    pub operator_public: String,
    /// …and its recovery recipient, which every node wraps its data key
    /// to (`--operator-recovery`).
    pub operator_recovery: String,
    /// Seconds of silence before a peer is shown down.
    pub down_after: u64,
    /// Environment variables for every node started from now on.
    pub env: Vec<(String, String)>,
}

impl Mesh {
    /// A new mesh directory with its own swarm key.
    pub fn new() -> Mesh {
        let root = tempfile::tempdir().expect("temp dir");
        let swarm_key = root.path().join("swarm.key");
        let out = Command::new(binary("backmesh-node"))
            .args(["keygen", "-o"])
            .arg(&swarm_key)
            .output()
            .expect("run backmesh-node keygen (build with `cargo build --workspace --bins`)");
        assert!(out.status.success(), "keygen: {}", String::from_utf8_lossy(&out.stderr));
        let operator_key = root.path().join("operator.key");
        let operator_public = operator_init(&operator_key);
        let operator_recovery = operator_recovery(&operator_key);
        Mesh {
            root,
            nodes: Vec::new(),
            swarm_key,
            operator_key,
            operator_public,
            operator_recovery,
            down_after: 2,
            env: Vec::new(),
        }
    }

    /// Starts nodes named `names`, each joining through the previous one,
    /// and waits until every node sees every other up.
    pub fn chain(names: &[&str]) -> Mesh {
        Mesh::chain_with(names, &[])
    }

    /// [`Mesh::chain`] with `extra` node arguments for every node.
    pub fn chain_with(names: &[&str], extra: &[&str]) -> Mesh {
        Mesh::chain_opts(names, extra, 2)
    }

    /// [`Mesh::chain_with`], peers shown down after `down_after` seconds.
    pub fn chain_opts(names: &[&str], extra: &[&str], down_after: u64) -> Mesh {
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let mut mesh = Mesh::new();
        mesh.down_after = down_after;
        for (i, name) in names.iter().enumerate() {
            let n = mesh.start(name, i.checked_sub(1), &extra);
            assert!(
                mesh.wait_ready(n, Duration::from_secs(30)),
                "{name} never answered:\n{}",
                mesh.nodes[n].log_text()
            );
        }
        let mut all: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        all.sort();
        let met = wait_until(Duration::from_secs(30), || (0..names.len()).all(|i| mesh.up_names(i) == all));
        assert!(met, "the nodes never all saw each other");
        mesh
    }

    /// A second swarm key, for nodes that must not get in.
    pub fn other_key(&self) -> PathBuf {
        let p = self.root.path().join(format!("other-{}.key", self.nodes.len()));
        let _ = Command::new(binary("backmesh-node")).args(["keygen", "-o"]).arg(&p).output();
        p
    }

    /// Starts node `name`, joining through node `bootstrap` if given. Returns its index.
    ///
    /// The node binds port 0 for its mesh and API listeners; this waits (at
    /// most a minute) until it has written `ready.json` with the ports it
    /// got, or has exited (then both ports stay 0 and `wait_ready` fails
    /// with its log). A restart reuses those ports.
    pub fn start(&mut self, name: &str, bootstrap: Option<usize>, extra: &[String]) -> usize {
        let dir = self.next_dir(name);
        self.start_in(name, dir, bootstrap, extra)
    }

    /// [`Mesh::start`] on data directory `dir` (one an older version left
    /// behind, say).
    pub fn start_in(&mut self, name: &str, dir: PathBuf, bootstrap: Option<usize>, extra: &[String]) -> usize {
        let (listen, api) = (0, 0);
        let mut args = vec![
            "--name".to_string(),
            name.to_string(),
            "--data-dir".into(),
            dir.to_string_lossy().into_owned(),
            "--listen".into(),
            format!("127.0.0.1:{listen}"),
            "--api".into(),
            format!("127.0.0.1:{api}"),
            "--down-after".into(),
            self.down_after.to_string(),
        ];
        // `--no-swarm-key` (harness only): start without any key.
        let no_key = extra.iter().any(|a| a == "--no-swarm-key");
        if !no_key && !extra.iter().any(|a| a == "--swarm-key") {
            args.push("--swarm-key".into());
            args.push(self.swarm_key.to_string_lossy().into_owned());
        }
        if let Some(b) = bootstrap {
            args.push("--bootstrap".into());
            args.push(format!("127.0.0.1:{}", self.nodes[b].listen));
        }
        // `--no-operator-key` (harness only): a node that trusts no operator.
        if !extra.iter().any(|a| a == "--no-operator-key") {
            args.push("--operator-key".into());
            args.push(self.operator_public.clone());
            args.push("--operator-recovery".into());
            args.push(self.operator_recovery.clone());
        }
        args.extend(extra.iter().filter(|a| *a != "--no-swarm-key" && *a != "--no-operator-key").cloned());
        let scheme = if extra.iter().any(|a| a == "--tls-cert") { "https" } else { "http" };
        let log = self.root.path().join(format!("{name}-{}.log", self.nodes.len()));
        let mut node = Node {
            name: name.into(),
            dir,
            listen,
            api,
            log,
            args,
            env: self.env.clone(),
            child: None,
            cli_args: Vec::new(),
            scheme,
        };
        spawn(&mut node);
        learn_ports(&mut node);
        self.nodes.push(node);
        self.nodes.len() - 1
    }

    /// The data directory the next [`Mesh::start`] of `name` will use.
    pub fn next_dir(&self, name: &str) -> PathBuf {
        self.root.path().join(format!("{name}-{}", self.nodes.len()))
    }

    /// `backmesh --node URL ARGS…` against node `i`, as the operator: with
    /// the operator key (unless the node's `cli_args` name another).
    pub fn cli(&self, i: usize, args: &[&str]) -> Output {
        let mut c = self.bare_cli(i);
        if !self.nodes[i].cli_args.iter().any(|a| a == "--operator-key") {
            c.arg("--operator-key").arg(&self.operator_key);
        }
        c.args(&self.nodes[i].cli_args).args(args).output().expect("run backmesh")
    }

    /// `backmesh --node URL ARGS…` against node `i` without any operator
    /// key: what root on a node can do with that node's token alone.
    pub fn cli_as_node(&self, i: usize, args: &[&str]) -> Output {
        self.bare_cli(i).args(&self.nodes[i].cli_args).args(args).output().expect("run backmesh")
    }

    /// The client of node `i`, no key or token from this process's
    /// environment or home directory.
    fn bare_cli(&self, i: usize) -> Command {
        let mut c = Command::new(binary("backmesh"));
        c.arg("--node")
            .arg(self.nodes[i].url())
            .env_remove("BACKMESH_TOKEN")
            .env_remove("BACKMESH_OPERATOR_KEY")
            .env("HOME", self.root.path())
            .env("XDG_CONFIG_HOME", self.root.path().join("config"));
        c
    }

    /// Node `i`'s `status --json`, if it answers.
    pub fn status(&self, i: usize) -> Option<backmesh_api::Status> {
        let out = self.cli(i, &["--json", "status"]);
        out.status.success().then(|| serde_json::from_slice(&out.stdout).ok()).flatten()
    }

    /// Runs `backmesh --json ARGS` on node `i` and reads its answer as a `T`;
    /// `Err` says what the client printed when it failed or answered otherwise.
    pub fn cli_json<T: serde::de::DeserializeOwned>(&self, i: usize, args: &[&str]) -> Result<T, String> {
        self.json_answer(i, args, true)
    }

    /// Runs `backmesh --json ARGS` on node `i` and reads what it printed as
    /// a `T`, whatever its exit code (a failed run prints its outcome and
    /// exits 1); `Err` when it printed something else.
    pub fn cli_answer<T: serde::de::DeserializeOwned>(&self, i: usize, args: &[&str]) -> Result<T, String> {
        self.json_answer(i, args, false)
    }

    fn json_answer<T: serde::de::DeserializeOwned>(
        &self,
        i: usize,
        args: &[&str],
        must_succeed: bool,
    ) -> Result<T, String> {
        let out = self.cli(i, &[&["--json"][..], args].concat());
        let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        if must_succeed && !out.status.success() {
            return Err(format!("backmesh {args:?} exited with {}: {stderr}{stdout}", out.status));
        }
        serde_json::from_str(&stdout)
            .map_err(|e| format!("backmesh {args:?} ({}) printed no answer ({e}): {stderr}{stdout}", out.status))
    }

    /// Names of the nodes node `i` sees up (itself included).
    pub fn up_names(&self, i: usize) -> Vec<String> {
        let mut names: Vec<String> =
            self.status(i).map(|s| s.nodes.into_iter().filter(|n| n.up).map(|n| n.name).collect()).unwrap_or_default();
        names.sort();
        names
    }

    /// Waits until node `i` answers its API.
    pub fn wait_ready(&self, i: usize, timeout: Duration) -> bool {
        wait_until(timeout, || self.status(i).is_some())
    }

    pub fn peer_id(&self, i: usize) -> Option<String> {
        self.status(i)?.nodes.into_iter().find(|n| n.this_node).map(|n| n.peer_id)
    }

    pub fn kill9(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then waits up to 10 s for the exit code.
    pub fn stop(&mut self, i: usize) -> Option<i32> {
        let mut c = self.nodes[i].child.take()?;
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe {
            libc::kill(c.id() as i32, libc::SIGTERM);
        }
        let end = Instant::now() + Duration::from_secs(10);
        while Instant::now() < end {
            if let Ok(Some(st)) = c.try_wait() {
                return st.code();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = c.kill();
        None
    }

    /// kill -9, then starts node `i` again on the same ports. The kernel
    /// may hand a just-freed port to another process; then the start is
    /// retried for up to 30 s until the port is free again.
    pub fn restart(&mut self, i: usize) {
        self.kill9(i);
        let end = Instant::now() + Duration::from_secs(30);
        loop {
            spawn(&mut self.nodes[i]);
            if learn_ports(&mut self.nodes[i]) || Instant::now() >= end {
                return;
            }
            let clash = self.nodes[i].log_text().lines().last().is_some_and(|l| l.contains("already in use"));
            if !clash {
                return;
            }
            self.kill9(i);
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

/// Waits until `node`'s process has written `ready.json` (then takes the
/// ports it bound, for this and later starts) or has exited. `true` when ready.
fn learn_ports(node: &mut Node) -> bool {
    let Some(pid) = node.pid() else { return false };
    let file = node.dir.join("ready.json");
    let mut ready = None;
    wait_until(Duration::from_secs(60), || {
        let read = std::fs::read(&file).ok().and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok());
        if let Some(r) = read.filter(|r| r["pid"] == pid) {
            ready = Some(r);
            return true;
        }
        !node.is_running()
    });
    let Some(r) = ready else { return false };
    let port = |key: &str| r[key].as_str().and_then(|a| a.rsplit(':').next()).and_then(|p| p.parse::<u16>().ok());
    let (Some(listen), Some(api)) = (port("listen"), port("api")) else { return false };
    node.listen = listen;
    node.api = api;
    for (flag, port) in [("--listen", listen), ("--api", api)] {
        if let Some(i) = node.args.iter().position(|a| a == flag) {
            node.args[i + 1] = format!("127.0.0.1:{port}");
        }
    }
    true
}

impl Default for Mesh {
    fn default() -> Self {
        Mesh::new()
    }
}

fn spawn(node: &mut Node) {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(&node.log).expect("log file");
    let err = log.try_clone().expect("log file");
    let child = Command::new(binary("backmesh-node"))
        .args(&node.args)
        .envs(node.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(err)
        .spawn()
        .expect("start backmesh-node");
    node.child = Some(child);
}

impl Drop for Mesh {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            if let Some(mut c) = n.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

/// Archive manifests kept in node `i`'s data directory (all series).
pub fn manifests_on_disk(node: &Node) -> Vec<String> {
    let mut out = Vec::new();
    let Ok(series) = std::fs::read_dir(node.dir.join("manifests")) else { return out };
    for s in series.flatten() {
        for f in std::fs::read_dir(s.path()).into_iter().flatten().flatten() {
            let name = f.file_name().to_string_lossy().into_owned();
            if let Some(id) = name.strip_suffix(".bmm") {
                out.push(id.to_string());
            }
        }
    }
    out.sort();
    out
}

/// Compares two trees entry by entry: kind, content, permission bits,
/// mtime (to the second) and symlink targets. Returns the differences.
pub fn tree_differences(a: &Path, b: &Path) -> Vec<String> {
    use std::os::unix::fs::MetadataExt;
    fn walk(root: &Path, rel: &Path, out: &mut Vec<PathBuf>) {
        let mut entries: Vec<_> = std::fs::read_dir(root.join(rel)).into_iter().flatten().flatten().collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let r = rel.join(e.file_name());
            out.push(r.clone());
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                walk(root, &r, out);
            }
        }
    }
    let (mut left, mut right) = (Vec::new(), Vec::new());
    walk(a, Path::new(""), &mut left);
    walk(b, Path::new(""), &mut right);
    let mut diffs = Vec::new();
    if left != right {
        diffs.push(format!("entries differ: {} vs {}", left.len(), right.len()));
        return diffs;
    }
    for r in &left {
        let (pa, pb) = (a.join(r), b.join(r));
        let (ma, mb) = match (std::fs::symlink_metadata(&pa), std::fs::symlink_metadata(&pb)) {
            (Ok(x), Ok(y)) => (x, y),
            _ => {
                diffs.push(format!("{}: unreadable", r.display()));
                continue;
            }
        };
        if ma.file_type().is_symlink() {
            if std::fs::read_link(&pa).ok() != std::fs::read_link(&pb).ok() || !mb.file_type().is_symlink() {
                diffs.push(format!("{}: symlink target", r.display()));
            }
            continue;
        }
        if ma.mode() != mb.mode() {
            diffs.push(format!("{}: mode {:o} vs {:o}", r.display(), ma.mode(), mb.mode()));
        }
        if !ma.is_dir() && ma.mtime() != mb.mtime() {
            diffs.push(format!("{}: mtime {} vs {}", r.display(), ma.mtime(), mb.mtime()));
        }
        if ma.is_file() && std::fs::read(&pa).ok() != std::fs::read(&pb).ok() {
            diffs.push(format!("{}: content", r.display()));
        }
    }
    diffs
}

/// Writes `files` files of 256 KiB of seeded pseudo-random text into `dir`:
/// fresh data the stat cache cannot vouch for, so each backup of it reads
/// and compresses for a while.
pub fn write_slow_tree(dir: &Path, files: usize, seed: u64) {
    let text: Vec<u8> = noise(files * 256 * 1024, seed).into_iter().map(|b| b % 16 + b'a').collect();
    for (i, data) in text.chunks(256 * 1024).enumerate() {
        std::fs::write(dir.join(format!("f{i}")), data).expect("write test data");
    }
}

/// `len` seeded pseudo-random bytes (xorshift64): data that does not compress.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Makes a CA and a server certificate for 127.0.0.1 signed by it, with
/// openssl, as docs/operations.md tells an operator. Returns (CA cert,
/// server cert, server key).
pub fn test_ca_and_cert(dir: &Path) -> Option<(PathBuf, PathBuf, PathBuf)> {
    let p = |n: &str| dir.join(n);
    let run = |args: &[&str]| {
        Command::new("openssl").args(args).current_dir(dir).output().map(|o| o.status.success()).unwrap_or(false)
    };
    let ok = run(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=backmesh test CA",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
    ]) && run(&[
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        "api.key",
        "-out",
        "api.csr",
    ]) && { std::fs::write(p("ext.cnf"), "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n").is_ok() }
        && run(&[
            "x509",
            "-req",
            "-in",
            "api.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
            "-out",
            "api.crt",
        ]);
    ok.then(|| (p("ca.crt"), p("api.crt"), p("api.key")))
}
