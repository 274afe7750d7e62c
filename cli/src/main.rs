//! `backmesh`: the light client. It talks HTTP/JSON to any node of the
//! mesh and never links actix or libp2p (the API types come from the small
//! `backmesh-api` crate).
//!
//! Exit codes: 0 ok, 1 the node refused or the operation failed, 2 usage,
//! 3 the node cannot be reached.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use backmesh_api::{human_bytes as human, ErrorBody, Status};
use clap::{Parser, Subcommand};
use serde::de::DeserializeOwned;

#[derive(Parser, Debug)]
#[command(name = "backmesh", version, about = "The backmesh client: ask any node of the mesh")]
struct Cli {
    /// Node API URL (http:// or https://); give it before the command.
    #[arg(
        long = "node",
        id = "node_url",
        value_name = "URL",
        env = "BACKMESH_NODE",
        default_value = "http://127.0.0.1:7401"
    )]
    node: String,
    /// API token of the node.
    #[arg(long, env = "BACKMESH_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
    /// Trust this CA certificate (PEM) for an https:// node.
    #[arg(long, env = "BACKMESH_CA", value_name = "FILE", global = true)]
    ca: Option<PathBuf>,
    /// Print one JSON document on stdout.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// The nodes of the mesh (name, peer id, address, up/down, free space, site) and job health.
    Status,
    /// Back up PATH on NODE every MINUTES.
    Register {
        /// The node's name (see `backmesh status`), or HOST:PORT of a node to bring into the mesh.
        #[arg(id = "target", value_name = "NODE")]
        node: String,
        /// Absolute path of a directory on that node.
        path: String,
        /// Minutes between backups.
        #[arg(long, value_name = "MINUTES")]
        every: u64,
        /// Leave out matching paths (`*.log`, `cache/**`); repeatable.
        #[arg(long = "exclude", value_name = "GLOB")]
        excludes: Vec<String>,
    },
    /// Stop backing up PATH on NODE (its archives stay until retention removes them).
    Unregister {
        #[arg(id = "target", value_name = "NODE")]
        node: String,
        path: String,
    },
    /// Stop NODE's scheduled backups.
    Pause {
        #[arg(id = "target", value_name = "NODE")]
        node: String,
    },
    /// Start NODE's scheduled backups again.
    Resume {
        #[arg(id = "target", value_name = "NODE")]
        node: String,
    },
    /// Back up PATH on NODE now; waits and prints the result.
    Run {
        #[arg(id = "target", value_name = "NODE")]
        node: String,
        path: String,
        /// Return once the run is queued.
        #[arg(long)]
        no_wait: bool,
        /// Give up waiting after this many seconds (the run goes on).
        #[arg(long, default_value_t = 3600)]
        timeout: u64,
    },
    /// The retained archives of PATH on NODE (id, created, size, files, holders).
    Backups {
        #[arg(id = "target", value_name = "NODE")]
        node: String,
        path: String,
        /// Also every execution of the job from the log.
        #[arg(long)]
        all: bool,
    },
    /// Every job: node, path, every, paused, state, last success.
    Jobs,
    /// The execution log, newest last.
    Log {
        /// Only entries about this node (a name).
        #[arg(long = "node", id = "filter_node", value_name = "NAME")]
        node: Option<String>,
        /// Only entries about this path.
        #[arg(long)]
        path: Option<String>,
        /// At most this many entries (the newest).
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
}

/// Why a call failed, and so which exit code.
enum Failure {
    /// Exit 3.
    Unreachable(String),
    /// Exit 1.
    Refused(String),
    /// Exit 1, the message already printed (a failed run).
    Failed,
}

struct Client {
    agent: ureq::Agent,
    base: String,
    token: Option<String>,
}

impl Client {
    fn new(cli: &Cli) -> Result<Self, Failure> {
        let mut config =
            ureq::Agent::config_builder().http_status_as_error(false).timeout_global(Some(Duration::from_secs(30)));
        if let Some(ca) = &cli.ca {
            let pem = std::fs::read(ca)
                .map_err(|e| Failure::Refused(format!("cannot read the CA file {}: {e}", ca.display())))?;
            let certs: Vec<_> = ureq::tls::parse_pem(&pem)
                .filter_map(|item| match item {
                    Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
                    _ => None,
                })
                .collect();
            if certs.is_empty() {
                return Err(Failure::Refused(format!("the CA file {} holds no certificate", ca.display())));
            }
            let tls = ureq::tls::TlsConfig::builder().root_certs(ureq::tls::RootCerts::new_with_certs(&certs)).build();
            config = config.tls_config(tls);
        }
        let base = cli.node.trim_end_matches('/').to_string();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(Failure::Refused(format!("--node must be an http:// or https:// URL, not `{}`", cli.node)));
        }
        Ok(Client { agent: config.build().into(), base, token: cli.token.clone() })
    }

    fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, Failure> {
        self.call("GET", path, None)
    }

    fn call<T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<T, Failure> {
        let url = format!("{}{}{path}", self.base, backmesh_api::PREFIX);
        let auth = self.token.as_ref().map(|t| format!("Bearer {t}"));
        let sent = match (method, body) {
            ("POST", body) => {
                let mut req = self.agent.post(&url);
                if let Some(a) = &auth {
                    req = req.header("Authorization", a);
                }
                req.send_json(body.unwrap_or(serde_json::Value::Null))
            }
            ("DELETE", _) => {
                let mut req = self.agent.delete(&url);
                if let Some(a) = &auth {
                    req = req.header("Authorization", a);
                }
                req.call()
            }
            _ => {
                let mut req = self.agent.get(&url);
                if let Some(a) = &auth {
                    req = req.header("Authorization", a);
                }
                req.call()
            }
        };
        let mut resp = sent.map_err(|e| {
            let hint = if e.to_string().contains("certificate") {
                " (to trust the node's certificate authority, pass --ca FILE or set BACKMESH_CA)"
            } else {
                ""
            };
            Failure::Unreachable(format!("cannot reach the node at {}: {e}{hint}", self.base))
        })?;
        let status = resp.status().as_u16();
        let body = resp.body_mut().read_to_string().map_err(|e| Failure::Unreachable(format!("{}: {e}", self.base)))?;
        if (200..300).contains(&status) {
            return serde_json::from_str(&body).map_err(|e| {
                Failure::Refused(format!(
                    "the node at {} sent an answer this client does not understand: {e}",
                    self.base
                ))
            });
        }
        let msg = serde_json::from_str::<ErrorBody>(&body).map(|b| b.error).unwrap_or(body);
        Err(Failure::Refused(format!("the node refused ({status}): {msg}")))
    }
}

fn short(peer: &str) -> String {
    format!("…{}", &peer[peer.len().saturating_sub(8)..])
}

fn status(client: &Client, json: bool) -> Result<(), Failure> {
    let s: Status = client.get("/status")?;
    if json {
        println!("{}", serde_json::to_string_pretty(&s).unwrap_or_default());
        return Ok(());
    }
    println!("{:<20} {:<10} {:<22} {:<5} {:>10}  SITE", "NODE", "PEER", "ADDRESS", "STATE", "FREE");
    for n in &s.nodes {
        let name = if n.this_node { format!("{} *", n.name) } else { n.name.clone() };
        println!(
            "{:<20} {:<10} {:<22} {:<5} {:>10}  {}",
            name,
            short(&n.peer_id),
            n.address,
            if n.up { "up" } else { "DOWN" },
            human(n.free_bytes),
            if n.site.is_empty() { "-" } else { &n.site }
        );
    }
    let up = s.nodes.iter().filter(|n| n.up).count();
    println!("{up} of {} nodes up (* = the node that answered)", s.nodes.len());
    if s.jobs.is_empty() {
        println!("no backup jobs registered");
    } else {
        println!();
        println!("{:<16} {:<36} {:>7} {:<10} LAST SUCCESS", "JOB NODE", "PATH", "EVERY", "STATE");
        for j in &s.jobs {
            println!(
                "{:<16} {:<36} {:>5}m {:<10} {}",
                j.node,
                j.path,
                j.every,
                j.state,
                j.last_success.as_deref().unwrap_or("never")
            );
        }
    }
    for p in &s.problems {
        println!("problem: {p}");
    }
    Ok(())
}

/// Percent-encodes a query value.
fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn print_json(v: &serde_json::Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

fn jobs(client: &Client, json: bool) -> Result<(), Failure> {
    let v: serde_json::Value = client.get("/jobs")?;
    if json {
        print_json(&v);
        return Ok(());
    }
    let jobs = v["jobs"].as_array().cloned().unwrap_or_default();
    if jobs.is_empty() {
        println!("no backup jobs registered");
        return Ok(());
    }
    println!("{:<16} {:<36} {:>7} {:<10} LAST SUCCESS", "NODE", "PATH", "EVERY", "STATE");
    for j in &jobs {
        println!(
            "{:<16} {:<36} {:>5}m {:<10} {}",
            j["node"].as_str().unwrap_or(""),
            j["path"].as_str().unwrap_or(""),
            j["every"].as_u64().unwrap_or(0),
            j["state"].as_str().unwrap_or(""),
            j["last_success"].as_str().unwrap_or("never")
        );
    }
    Ok(())
}

fn log(client: &Client, json: bool, node: Option<&str>, path: Option<&str>, limit: usize) -> Result<(), Failure> {
    let mut q = format!("/log?limit={limit}");
    if let Some(n) = node {
        q.push_str(&format!("&node={}", enc(n)));
    }
    if let Some(p) = path {
        q.push_str(&format!("&path={}", enc(p)));
    }
    let v: serde_json::Value = client.get(&q)?;
    if json {
        print_json(&v);
        return Ok(());
    }
    for e in v["entries"].as_array().cloned().unwrap_or_default() {
        let mut details: Vec<String> = Vec::new();
        if let Some(obj) = e.as_object() {
            for (k, val) in obj {
                if ["origin", "origin_name", "seq", "time", "hlc", "kind", "node"].contains(&k.as_str()) {
                    continue;
                }
                details.push(match val {
                    serde_json::Value::String(s) => format!("{k}={s}"),
                    other => format!("{k}={other}"),
                });
            }
        }
        println!(
            "{}  {:<12} {:<10} {}  (by {} #{})",
            e["time"].as_str().unwrap_or(""),
            e["kind"].as_str().unwrap_or(""),
            e["node"].as_str().unwrap_or(""),
            details.join(" "),
            e["origin_name"].as_str().unwrap_or(""),
            e["seq"]
        );
    }
    Ok(())
}

fn write(
    client: &Client,
    json: bool,
    method: &str,
    path: &str,
    body: Option<serde_json::Value>,
    done: &str,
) -> Result<(), Failure> {
    let v: serde_json::Value = client.call(method, path, body)?;
    if json {
        print_json(&v);
    } else {
        println!("{done}");
    }
    Ok(())
}

const RESULTS: [&str; 3] = ["finished", "unchanged", "failed"];

/// Result entries (origin, seq) of a job, from the log.
fn results(client: &Client, node: &str, path: &str) -> Result<Vec<serde_json::Value>, Failure> {
    let v: serde_json::Value = client.get(&format!("/log?node={}&path={}&limit=100000", enc(node), enc(path)))?;
    Ok(v["entries"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|e| e["node"] == node && RESULTS.contains(&e["kind"].as_str().unwrap_or("")))
        .collect())
}

fn run(client: &Client, json: bool, node: &str, path: &str, no_wait: bool, timeout: u64) -> Result<bool, Failure> {
    let id = |e: &serde_json::Value| (e["origin"].to_string(), e["seq"].as_u64());
    let before: std::collections::HashSet<_> = results(client, node, path)?.iter().map(id).collect();
    let queued: serde_json::Value =
        client.call("POST", "/run", Some(serde_json::json!({"node": node, "path": path})))?;
    if no_wait {
        if json {
            print_json(&queued);
        } else {
            println!("queued: {path} on {node}");
        }
        return Ok(true);
    }
    let start = std::time::Instant::now();
    let tty = std::io::IsTerminal::is_terminal(&std::io::stderr()) && !json;
    loop {
        if let Some(e) = results(client, node, path)?.into_iter().find(|e| !before.contains(&id(e))) {
            if tty {
                eprint!("\r{:60}\r", "");
            }
            let result = e["kind"].as_str().unwrap_or("").to_string();
            let out = serde_json::json!({
                "result": result, "archive": e["archive"], "size": e["size"], "files": e["files"],
                "warnings": e["warnings"].as_array().cloned().unwrap_or_default(), "error": e["error"],
                "duration_ms": e["duration_ms"],
            });
            if json {
                print_json(&out);
            } else {
                match result.as_str() {
                    "finished" => println!(
                        "finished: {path} on {node} → archive {} ({}, {} files) in {:.1}s",
                        e["archive"].as_str().unwrap_or(""),
                        human(e["size"].as_u64().unwrap_or(0)),
                        e["files"],
                        e["duration_ms"].as_u64().unwrap_or(0) as f64 / 1000.0
                    ),
                    "unchanged" => {
                        println!("unchanged: {path} on {node} (latest archive {})", e["archive"].as_str().unwrap_or(""))
                    }
                    _ => println!("failed: {path} on {node}: {}", e["error"].as_str().unwrap_or("")),
                }
                for w in out["warnings"].as_array().cloned().unwrap_or_default() {
                    println!("  warning: {}", w.as_str().unwrap_or(""));
                }
            }
            return Ok(result != "failed");
        }
        if start.elapsed().as_secs() >= timeout {
            return Err(Failure::Refused(format!(
                "no result after {timeout}s; the run goes on: see `backmesh log --path {path}`"
            )));
        }
        if tty {
            eprint!("\r  waiting for {node} to back up {path}… {}s", start.elapsed().as_secs());
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

fn backups(client: &Client, json: bool, node: &str, path: &str, all: bool) -> Result<(), Failure> {
    let v: serde_json::Value = client.get(&format!("/backups?node={}&path={}&all={all}", enc(node), enc(path)))?;
    if json {
        print_json(&v);
        return Ok(());
    }
    let archives = v["archives"].as_array().cloned().unwrap_or_default();
    if archives.is_empty() {
        println!("no archives of {path} on {node} yet");
    } else {
        println!("{:<32} {:<21} {:>10} {:>7}  HOLDERS", "ARCHIVE", "CREATED", "SIZE", "FILES");
        for a in &archives {
            let holders: Vec<&str> =
                a["holders"].as_array().map(|h| h.iter().filter_map(|x| x.as_str()).collect()).unwrap_or_default();
            println!(
                "{:<32} {:<21} {:>10} {:>7}  {}",
                a["id"].as_str().unwrap_or(""),
                a["created"].as_str().unwrap_or(""),
                human(a["size"].as_u64().unwrap_or(0)),
                a["files"].as_u64().unwrap_or(0),
                holders.join(", ")
            );
        }
    }
    if all {
        println!();
        for e in v["executions"].as_array().cloned().unwrap_or_default() {
            println!(
                "{}  {:<12} {}",
                e["time"].as_str().unwrap_or(""),
                e["kind"].as_str().unwrap_or(""),
                e["archive"].as_str().or(e["error"].as_str()).unwrap_or("")
            );
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let json = cli.json;
    let result = Client::new(&cli).and_then(|c| match &cli.command {
        Command::Status => status(&c, json),
        Command::Jobs => jobs(&c, json),
        Command::Backups { node, path, all } => backups(&c, json, node, path, *all),
        Command::Run { node, path, no_wait, timeout } => match run(&c, json, node, path, *no_wait, *timeout) {
            Ok(true) => Ok(()),
            Ok(false) => Err(Failure::Failed),
            Err(e) => Err(e),
        },
        Command::Log { node, path, limit } => log(&c, json, node.as_deref(), path.as_deref(), *limit),
        Command::Register { node, path, every, excludes } => write(
            &c,
            json,
            "POST",
            "/jobs",
            Some(serde_json::json!({"node": node, "path": path, "every": every, "excludes": excludes})),
            &format!("registered: {path} on {node}, every {every} min"),
        ),
        Command::Unregister { node, path } => write(
            &c,
            json,
            "DELETE",
            &format!("/jobs?node={}&path={}", enc(node), enc(path)),
            None,
            &format!("unregistered: {path} on {node} (its archives stay until retention removes them)"),
        ),
        Command::Pause { node } => write(
            &c,
            json,
            "POST",
            &format!("/nodes/{}/pause", enc(node)),
            None,
            &format!("paused: scheduled backups of {node}"),
        ),
        Command::Resume { node } => write(
            &c,
            json,
            "POST",
            &format!("/nodes/{}/resume", enc(node)),
            None,
            &format!("resumed: scheduled backups of {node}"),
        ),
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Refused(m)) => {
            eprintln!("backmesh: {m}");
            ExitCode::from(1)
        }
        Err(Failure::Failed) => ExitCode::from(1),
        Err(Failure::Unreachable(m)) => {
            eprintln!("backmesh: {m}");
            ExitCode::from(3)
        }
    }
}
