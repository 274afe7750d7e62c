//! `backmesh`: the light client. It talks HTTP/JSON to any node of the
//! mesh and never links actix or libp2p (the API types come from the small
//! `backmesh-api` crate).
//!
//! Exit codes: 0 ok, 1 the node refused or the operation failed, 2 usage,
//! 3 the node cannot be reached.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use backmesh_api::{ErrorBody, Status};
use clap::{Parser, Subcommand};
use serde::de::DeserializeOwned;

#[derive(Parser, Debug)]
#[command(name = "backmesh", version, about = "The backmesh client: ask any node of the mesh")]
struct Cli {
    /// Node API URL (http:// or https://).
    #[arg(long, env = "BACKMESH_NODE", default_value = "http://127.0.0.1:7401", global = true)]
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
}

/// Why a call failed, and so which exit code.
enum Failure {
    /// Exit 3.
    Unreachable(String),
    /// Exit 1.
    Refused(String),
}

struct Client {
    agent: ureq::Agent,
    base: String,
    token: Option<String>,
}

impl Client {
    fn new(cli: &Cli) -> Result<Self, Failure> {
        let mut config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(30)));
        if let Some(ca) = &cli.ca {
            let pem = std::fs::read(ca).map_err(|e| Failure::Refused(format!("cannot read the CA file {}: {e}", ca.display())))?;
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
        let url = format!("{}{}{path}", self.base, backmesh_api::PREFIX);
        let mut req = self.agent.get(&url);
        if let Some(t) = &self.token {
            req = req.header("Authorization", &format!("Bearer {t}"));
        }
        let mut resp = req.call().map_err(|e| {
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
            return serde_json::from_str(&body)
                .map_err(|e| Failure::Refused(format!("the node at {} sent an answer this client does not understand: {e}", self.base)));
        }
        let msg = serde_json::from_str::<ErrorBody>(&body).map(|b| b.error).unwrap_or(body);
        Err(Failure::Refused(format!("the node refused ({status}): {msg}")))
    }
}

fn human(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let (mut v, mut u) = (b as f64, 0);
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 { format!("{b} B") } else { format!("{v:.1} {}", UNITS[u]) }
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
    }
    for p in &s.problems {
        println!("problem: {p}");
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let result = Client::new(&cli).and_then(|c| match cli.command {
        Command::Status => status(&c, cli.json),
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Refused(m)) => {
            eprintln!("backmesh: {m}");
            ExitCode::from(1)
        }
        Err(Failure::Unreachable(m)) => {
            eprintln!("backmesh: {m}");
            ExitCode::from(3)
        }
    }
}
