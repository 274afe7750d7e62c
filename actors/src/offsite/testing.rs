//! A real S3-compatible server for tests and benchmarks: moto's server
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
        let mut child = Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", "0"])
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| {
                format!(
                    "cannot start moto_server ({e}): install it with `pip install 'moto[server]'` (scripts/test does)"
                )
            })?;
        let Some(stderr) = child.stderr.take() else {
            let _ = child.kill();
            return Err("moto_server: no stderr to read its address from".into());
        };
        let (tx, rx) = std::sync::mpsc::channel();
        // Reads every line, so the server never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("Running on ").nth(1) {
                    let _ = tx.send(rest.trim().to_string());
                }
            }
        });
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(endpoint) => Ok(S3Server { child, endpoint }),
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                Err("moto_server did not say where it listens within 30 s".into())
            }
        }
    }

    pub fn start() -> Result<Self, String> {
        Self::start_with(&[])
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

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
