//! Test support, hidden from the crate's docs and not part of its API (as
//! `crate::fuzz`): a real S3-compatible server for tests and benchmarks: moto's server
//! (`pip install 'moto[server]'`), on 127.0.0.1 and a port the system picks.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::bucket::{Bucket, OffsiteTarget, Secret};

/// A moto server process, stopped when dropped.
pub struct S3Server {
    child: Child,
    /// `http://127.0.0.1:PORT`
    pub endpoint: String,
}

impl S3Server {
    /// Starts one, with `env` set for it; waits (30 s at most) until it listens.
    pub fn start_with(env: &[(&str, &str)]) -> Result<Self, String> {
        Self::spawn("moto_server", &["-H", "127.0.0.1", "-p", "0"], env, "Running on ")
    }

    /// s3s-fs (`cargo install s3s-fs --features binary`; scripts/test does),
    /// an S3 server in Rust that checks every signature, storing in `root`
    /// and taking only `key`/`secret`.
    pub fn start_s3s_fs(root: &std::path::Path, key: &str, secret: &str) -> Result<Self, String> {
        Self::start_s3s_fs_on(root, key, secret, 0)
    }

    /// [`S3Server::start_s3s_fs`] on `port` (0: one the system picks): a
    /// server stopped and started again on the port it had, with what it stored.
    pub fn start_s3s_fs_on(root: &std::path::Path, key: &str, secret: &str, port: u16) -> Result<Self, String> {
        let program = std::env::var("S3S_FS").unwrap_or_else(|_| "s3s-fs".into());
        let root = root.to_string_lossy();
        let port = port.to_string();
        let args = ["--host", "127.0.0.1", "--port", &port, "--access-key", key, "--secret-key", secret, &root];
        Self::spawn(&program, &args, &[("RUST_LOG", "info")], "server is running at ")
    }

    fn spawn(program: &str, args: &[&str], env: &[(&str, &str)], marker: &'static str) -> Result<Self, String> {
        let mut child = Command::new(program)
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| {
                format!(
                    "cannot start moto_server ({e}): install it with `pip install 'moto[server]'` (scripts/test does)"
                )
            })?;
        let (tx, rx) = std::sync::mpsc::channel();
        // Every line is read, so the server never blocks on a full pipe;
        // moto says where it listens on stderr, s3s-fs on stdout.
        let out: Vec<Box<dyn std::io::Read + Send>> = [
            child.stdout.take().map(|o| Box::new(o) as Box<dyn std::io::Read + Send>),
            child.stderr.take().map(|e| Box::new(e) as Box<dyn std::io::Read + Send>),
        ]
        .into_iter()
        .flatten()
        .collect();
        for pipe in out {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    if let Some(rest) = line.split(marker).nth(1) {
                        let _ = tx.send(rest.split_whitespace().next().unwrap_or_default().to_string());
                    }
                }
            });
        }
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(endpoint) => Ok(S3Server { child, endpoint }),
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                Err(format!("{program} did not say where it listens within 30 s"))
            }
        }
    }

    pub fn start() -> Result<Self, String> {
        Self::start_with(&[])
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.endpoint.rsplit(':').next().and_then(|p| p.trim_end_matches('/').parse().ok()).unwrap_or(0)
    }

    /// The pid, to stop or pause it.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A client of bucket `name` under `prefix`, with credentials `key`/`secret`.
    pub fn bucket_as(&self, name: &str, prefix: &str, key: &str, secret: &str) -> Bucket {
        let target = OffsiteTarget::parse(&format!("s3://{name}/{prefix}"), Some(&self.endpoint), None)
            .unwrap_or_else(|e| panic!("{e}"));
        let secret = Secret { key: key.into(), secret: secret.into(), token: None };
        Bucket::new(target, &secret, None).unwrap_or_else(|e| panic!("{e}"))
    }

    /// A client of bucket `name`, made if need be (moto takes any credentials).
    pub fn bucket(&self, name: &str, prefix: &str) -> Bucket {
        let b = self.bucket_as(name, prefix, "testing", "testing");
        b.create().unwrap_or_else(|e| panic!("create bucket {name}: {e}"));
        b
    }
}

impl S3Server {
    /// [`S3Server::bucket`], the bucket made with Object Lock on.
    pub fn bucket_locked(&self, name: &str, prefix: &str) -> Bucket {
        let b = self.bucket_as(name, prefix, "testing", "testing");
        b.create_locked().unwrap_or_else(|e| panic!("create bucket {name} with Object Lock: {e}"));
        b
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
