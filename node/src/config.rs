//! Node configuration: command-line flags over a TOML file (`--config`)
//! over defaults. Every problem is reported with the key it concerns.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use backmesh_core::replica::quota::Quota;
use backmesh_core::store::Retention;
use clap::Args;
use serde::Deserialize;

/// Flags of `backmesh-node` when it runs as a node (no subcommand).
#[derive(Args, Debug, Default, Clone)]
pub struct RunArgs {
    /// TOML file with the same keys as these flags (flags win).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Mesh (libp2p) address to listen on [default: 0.0.0.0:7400].
    #[arg(long, value_name = "HOST:PORT")]
    pub listen: Option<String>,
    /// HTTP API address [default: 127.0.0.1:7401].
    #[arg(long, value_name = "HOST:PORT")]
    pub api: Option<String>,
    /// A node to join through; repeatable.
    #[arg(long, value_name = "HOST:PORT")]
    pub bootstrap: Vec<String>,
    /// Private-network key file: only nodes with the same key can connect.
    #[arg(long, value_name = "FILE")]
    pub swarm_key: Option<PathBuf>,
    /// How long the previous swarm key stays accepted once the key file
    /// holds a new one (the node reads it again every few seconds), so that
    /// a key is rotated on a live mesh: 30s, 36h, 1d, 2w [default: 1d].
    #[arg(long, value_name = "DURATION", value_parser = parse_overlap)]
    pub swarm_key_overlap: Option<Duration>,
    /// API token: every route but /api/v1/health needs `Authorization: Bearer TOKEN`.
    /// Prefer --token-file: a token on the command line is shown by `ps`.
    #[arg(long, env = "BACKMESH_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Read the API token from FILE (its first line; keep it mode 0600).
    #[arg(long, value_name = "FILE", conflicts_with = "token")]
    pub token_file: Option<PathBuf>,
    /// An operator's public key (bmop-…, from `backmesh operator init` on the
    /// operator's machine): commands signed by it may act on this node
    /// from any node of the mesh. Repeatable. Without one this node acts
    /// only on its own API token, for its own jobs.
    #[arg(long = "operator-key", value_name = "bmop-…")]
    pub operator_keys: Vec<String>,
    /// An operator's recovery recipient (age1…, `backmesh operator show
    /// --recovery`): this node's data key is wrapped to it, so the
    /// operator can read this node's backups after the node is lost.
    /// Repeatable.
    #[arg(long = "operator-recovery", value_name = "age1…")]
    pub operator_recovery: Vec<String>,
    /// Copies of each backup kept on other nodes [default: 3].
    #[arg(long)]
    pub replicas: Option<usize>,
    /// Archives kept per (node, path) [default: 10].
    #[arg(long)]
    pub keep: Option<usize>,
    /// Also keep every archive stored here less than this long ago, however
    /// many came after it (36h, 14d, 2w, 6m): a node that goes wrong or a
    /// stolen key cannot then push recent backups out of their holders.
    #[arg(long, value_name = "DURATION", value_parser = backmesh_core::store::parse_within)]
    pub keep_within: Option<Duration>,
    /// Keep an archive that falls out of retention hidden (listed by
    /// `backups --hidden`, restorable) until it was stored this long ago
    /// (36h, 14d, 2w): no request, from any node, with any key, deletes a
    /// younger one [default: 7d]. `0` deletes at once: only by choice.
    #[arg(long, value_name = "DURATION", value_parser = parse_grace)]
    pub grace: Option<Grace>,
    /// New archives of one series this node takes at once from that
    /// series' node, before the series' schedule holds them to one per
    /// period (`--every`, at most an hour apart): a node that goes wrong
    /// cannot flood its holders faster than it backs up [default: 6].
    #[arg(long, value_name = "N")]
    pub burst: Option<u32>,
    /// Seal this node's backups (docs/encryption.md): `on` (holders and
    /// the bucket keep ciphertext only; needs an operator-recovery
    /// recipient), `off`, or `auto`: on for a new data directory (no
    /// archives of its own yet) or one that seals already, when an
    /// operator-recovery recipient is known [default: auto].
    #[arg(long, value_name = "on|off|auto", value_parser = parse_encrypt)]
    pub encrypt: Option<Encrypt>,
    /// The most one other node's archives may take on this node: a size
    /// (500G, 2T) or a share (40%) of the room here, its free space plus
    /// what that node's archives already take [default: 50%]. An archive
    /// past it is refused, and `status` names the node.
    #[arg(long, value_name = "SIZE|N%", value_parser = backmesh_core::replica::quota::parse_quota)]
    pub quota: Option<Quota>,
    /// A label grouping nodes (a client, a data centre).
    #[arg(long)]
    pub site: Option<String>,
    /// Serve the API over TLS with this certificate chain (PEM)…
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// …and this private key (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Discover peers on the LAN with mDNS.
    #[arg(long)]
    pub mdns: bool,
    /// Let jobs run programs on this node: command sources, plugins, pre and
    /// post hooks, notification commands. Jobs are registered through any
    /// node of the mesh; without this flag this node runs none of them.
    #[arg(long)]
    pub allow_programs: bool,
    /// Seconds without news before a peer is shown down [default: 10].
    #[arg(long, value_name = "SECS")]
    pub down_after: Option<u64>,
    /// Runs that may wait in this node's queue; past it, `run` gets 429 [default: 1000].
    #[arg(long, value_name = "N")]
    pub queue_limit: Option<usize>,
    /// Seconds a silent holder keeps its place before its copies are made
    /// again on other nodes [default: 600].
    #[arg(long, value_name = "SECS")]
    pub repair_after: Option<u64>,
    /// A read-only token: the dashboard and every GET route, nothing that changes anything (needs --token).
    #[arg(long, env = "BACKMESH_VIEWER_TOKEN", hide_env_values = true)]
    pub viewer_token: Option<String>,
    /// A read-only token for one site's client page, /site/SITE; repeatable (needs --token).
    #[arg(long = "site-token", value_name = "SITE=TOKEN")]
    pub site_tokens: Vec<String>,
    /// A token for SITE's client page that also browses and downloads this
    /// node's own backups (this node must be in SITE; give each node its
    /// own); repeatable.
    #[arg(long = "site-browse", value_name = "SITE=TOKEN")]
    pub site_browse: Vec<String>,
    /// Show another mesh in this node's dashboard as further sites; repeatable.
    #[arg(long = "federate", value_name = "NAME=URL")]
    pub federate: Vec<String>,
    /// The (viewer) token of a federated mesh; repeatable.
    #[arg(long = "federate-token", value_name = "NAME=TOKEN")]
    pub federate_tokens: Vec<String>,
    /// Keep the newest --keep archives of every series in this bucket too
    /// (s3://BUCKET/PREFIX). Credentials come from AWS_ACCESS_KEY_ID and
    /// AWS_SECRET_ACCESS_KEY, or from --offsite-credentials; every node of
    /// the mesh is given the same bucket. See docs/operations.md.
    #[arg(long, value_name = "s3://BUCKET/PREFIX")]
    pub offsite: Option<String>,
    /// The S3 server, for storage other than AWS (MinIO, Garage, Ceph…).
    #[arg(long, value_name = "URL", requires = "offsite")]
    pub offsite_endpoint: Option<String>,
    /// The bucket's region [default: AWS_REGION, or us-east-1].
    #[arg(long, value_name = "REGION", requires = "offsite")]
    pub offsite_region: Option<String>,
    /// An AWS-style credentials file (its [default] profile, or AWS_PROFILE's).
    #[arg(long, value_name = "FILE", requires = "offsite")]
    pub offsite_credentials: Option<PathBuf>,
    /// Upload no faster than this many bytes a second (500K, 20M) [default: no limit].
    #[arg(long, value_name = "BYTES", requires = "offsite", value_parser = parse_rate)]
    pub offsite_rate: Option<u64>,
}

/// How long a replaced swarm key stays accepted unless set.
pub const DEFAULT_SWARM_KEY_OVERLAP: Duration = Duration::from_secs(24 * 3600);

/// A grace period (`--grace`): `None` for none at all.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Grace(pub Option<Duration>);

/// A grace period as `--grace` takes it: a duration as `--keep-within`
/// takes it, or `0` for none.
fn parse_grace(text: &str) -> Result<Grace, String> {
    match text.trim() {
        "0" | "0h" | "0d" | "0w" | "0m" => Ok(Grace(None)),
        t => backmesh_core::store::parse_within(t).map(|d| Grace(Some(d))).map_err(|e| e.to_string()),
    }
}

/// The swarm key overlap: a duration as `--keep-within` takes it, or in
/// seconds (`30s`).
fn parse_overlap(text: &str) -> Result<Duration, String> {
    match text.trim().strip_suffix('s').map(str::parse::<u64>) {
        Some(Ok(secs)) if secs > 0 => Ok(Duration::from_secs(secs)),
        _ => backmesh_core::store::parse_within(text)
            .map_err(|_| format!("`{text}`: give a duration, as in 30s, 36h, 1d or 2w")),
    }
}

/// `500K`, `20M`, `1G` (bytes a second) or a plain number.
fn parse_rate(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let (n, mult) = match t.chars().last() {
        Some('K' | 'k') => (&t[..t.len() - 1], 1u64 << 10),
        Some('M' | 'm') => (&t[..t.len() - 1], 1 << 20),
        Some('G' | 'g') => (&t[..t.len() - 1], 1 << 30),
        _ => (t, 1),
    };
    match n.parse::<u64>() {
        Ok(v) if v > 0 => Ok(v.saturating_mul(mult)),
        _ => Err(format!("`{text}`: give bytes a second, as in 500K, 20M or 1G")),
    }
}

/// Offsite settings, checked.
#[derive(Debug, Clone)]
pub struct OffsiteConfig {
    pub target: backmesh_core::offsite::OffsiteTarget,
    pub credentials: Option<PathBuf>,
    pub rate: Option<u64>,
}

/// The same keys, from the TOML file.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct FileConfig {
    name: Option<String>,
    data_dir: Option<PathBuf>,
    listen: Option<String>,
    api: Option<String>,
    #[serde(default)]
    bootstrap: Vec<String>,
    swarm_key: Option<PathBuf>,
    swarm_key_overlap: Option<String>,
    token: Option<String>,
    token_file: Option<PathBuf>,
    #[serde(default)]
    operator_key: OneOrMany,
    #[serde(default)]
    operator_recovery: OneOrMany,
    replicas: Option<usize>,
    keep: Option<usize>,
    keep_within: Option<String>,
    grace: Option<String>,
    burst: Option<u32>,
    encrypt: Option<String>,
    quota: Option<String>,
    site: Option<String>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    mdns: Option<bool>,
    allow_programs: Option<bool>,
    down_after: Option<u64>,
    queue_limit: Option<usize>,
    repair_after: Option<u64>,
    viewer_token: Option<String>,
    #[serde(default)]
    site_tokens: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    site_browse: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    federate: Vec<Federated>,
    offsite: Option<String>,
    offsite_endpoint: Option<String>,
    offsite_region: Option<String>,
    offsite_credentials: Option<PathBuf>,
    offsite_rate: Option<String>,
}

/// A key that takes one value or a list: `k = "a"` or `k = ["a", "b"]`.
#[derive(Deserialize, Debug, Default)]
#[serde(untagged)]
enum OneOrMany {
    #[default]
    None,
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::None => Vec::new(),
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

/// Another mesh shown in this node's dashboard.
#[derive(Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Federated {
    pub name: String,
    /// Its API URL (http:// or https://).
    pub url: String,
    /// A viewer token of that mesh.
    #[serde(default)]
    pub token: Option<String>,
}

#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub name: String,
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    pub api: SocketAddr,
    pub bootstrap: Vec<SocketAddr>,
    pub swarm_key: Option<PathBuf>,
    /// How long a replaced swarm key stays accepted.
    pub swarm_key_overlap: Duration,
    pub token: Option<String>,
    /// The file the token was read from, if it was (kept out of restores' reach).
    pub token_file: Option<PathBuf>,
    /// The config file, if one was read (kept out of restores' reach).
    pub config_file: Option<PathBuf>,
    /// Operator public keys (`bmop-…`) whose orders this node carries out.
    pub operator_keys: Vec<String>,
    /// Operator recovery recipients (`age1…`) this node's data key is wrapped to.
    pub operator_recovery: Vec<String>,
    pub replicas: usize,
    pub keep: Retention,
    /// New archives of one series taken at once from its node (`--burst`).
    pub burst: u32,
    /// Whether to seal this node's backups (`--encrypt`).
    pub encrypt: Encrypt,
    pub quota: Quota,
    pub site: String,
    pub tls: Option<(PathBuf, PathBuf)>,
    pub mdns: bool,
    /// Jobs may run programs here (`--allow-programs`).
    pub allow_programs: bool,
    pub down_after: Duration,
    pub queue_limit: usize,
    pub repair_after: Duration,
    pub viewer_token: Option<String>,
    /// (site, token) pairs for the client pages.
    pub site_tokens: Vec<(String, String)>,
    /// (site, token) pairs: the site's page with this node's own backups' files.
    pub site_browse: Vec<(String, String)>,
    pub federate: Vec<Federated>,
    pub offsite: Option<OffsiteConfig>,
}

/// `KEY=VALUE` → (key, value), or an error naming the flag.
fn pair(flag: &str, s: &str) -> Result<(String, String)> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() && !v.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => bail!("bad --{flag} `{s}`: expected NAME=VALUE"),
    }
}

/// `HOST:PORT` → a socket address, or an error naming the setting.
pub fn parse_addr(what: &str, s: &str) -> Result<SocketAddr> {
    let mut addrs = s.to_socket_addrs().map_err(|e| anyhow!("bad {what} address `{s}`: {e} (expected HOST:PORT)"))?;
    addrs.next().ok_or_else(|| anyhow!("bad {what} address `{s}`: it resolves to nothing"))
}

impl NodeConfig {
    pub fn resolve(name: Option<String>, data_dir: Option<PathBuf>, args: RunArgs) -> Result<Self> {
        let file = match &args.config {
            Some(p) => read_file(p)?,
            None => FileConfig::default(),
        };
        let tls = match (args.tls_cert.or(file.tls_cert), args.tls_key.or(file.tls_key)) {
            (Some(c), Some(k)) => Some((c, k)),
            (None, None) => None,
            _ => bail!("TLS needs both a certificate (tls-cert) and a key (tls-key)"),
        };
        let bootstrap: Vec<String> = if args.bootstrap.is_empty() { file.bootstrap } else { args.bootstrap };
        let name = name.or(file.name).unwrap_or_else(crate::local::hostname);
        backmesh_api::names::check_node_name(&name).map_err(|e| anyhow!("{e}"))?;
        let token_file = args.token_file.or(file.token_file);
        let token = match (args.token.or(file.token), &token_file) {
            (Some(_), Some(f)) => bail!("give the API token once: token or token-file ({}), not both", f.display()),
            (t, None) => t,
            (None, Some(f)) => Some(read_token(f)?),
        }
        .filter(|t| !t.is_empty());
        // Flags add to the file's keys: an operator is trusted where either says so.
        let mut operator_keys = file.operator_key.into_vec();
        operator_keys.extend(args.operator_keys.iter().cloned());
        for k in &operator_keys {
            backmesh_api::order::public_key(k).map_err(|e| anyhow!("operator-key: {e}"))?;
        }
        operator_keys.sort();
        operator_keys.dedup();
        let mut operator_recovery = Vec::new();
        for r in file.operator_recovery.into_vec().iter().chain(&args.operator_recovery) {
            let r = backmesh_crypt::wrap::parse_recipient(r).map_err(|e| anyhow!("operator-recovery: {e}"))?;
            operator_recovery.push(r);
        }
        operator_recovery.sort();
        operator_recovery.dedup();
        let viewer_token = args.viewer_token.or(file.viewer_token).filter(|t| !t.is_empty());
        let mut site_tokens: Vec<(String, String)> = file.site_tokens.into_iter().collect();
        for s in &args.site_tokens {
            site_tokens.push(pair("site-token", s)?);
        }
        if token.is_none() && (viewer_token.is_some() || !site_tokens.is_empty()) {
            bail!("read-only tokens (viewer-token, site-token) need an admin token too: set --token");
        }
        let site = args.site.clone().or(file.site.clone()).unwrap_or_default();
        let mut site_browse: Vec<(String, String)> = file.site_browse.into_iter().collect();
        for s in &args.site_browse {
            site_browse.push(pair("site-browse", s)?);
        }
        if token.is_none() && !site_browse.is_empty() {
            bail!("site-browse tokens need an admin token too: set --token");
        }
        for (b, t) in &site_browse {
            if *b != site {
                bail!(
                    "site-browse `{b}`: this node is in site `{site}` (--site), and a site's page browses only the \
                     backups of its own nodes"
                );
            }
            let taken = token.as_deref() == Some(t.as_str())
                || viewer_token.as_deref() == Some(t.as_str())
                || site_tokens.iter().any(|(_, st)| st == t)
                || site_browse.iter().filter(|(_, bt)| bt == t).count() > 1;
            if t.is_empty() || taken {
                bail!("site-browse `{b}`: give it a token of its own, used by no other role (and on no other node)");
            }
        }
        let mut federate = file.federate;
        for f in &args.federate {
            let (name, url) = pair("federate", f)?;
            federate.retain(|x| x.name != name);
            federate.push(Federated { name, url, token: None });
        }
        for t in &args.federate_tokens {
            let (name, token) = pair("federate-token", t)?;
            match federate.iter_mut().find(|f| f.name == name) {
                Some(f) => f.token = Some(token),
                None => bail!("--federate-token {name}=…: no --federate {name}=URL"),
            }
        }
        for f in &federate {
            if !(f.url.starts_with("http://") || f.url.starts_with("https://")) {
                bail!("federated mesh `{}`: the URL must start with http:// or https://, not `{}`", f.name, f.url);
            }
        }
        let api = parse_addr("api", &args.api.or(file.api).unwrap_or_else(|| "127.0.0.1:7401".into()))?;
        if token.is_none() && !api.ip().is_loopback() {
            bail!(
                "refusing to serve the API on {api} without a token: anyone who can reach it could run, restore \
                 and download every backup of the mesh. Set --token (and --tls-cert/--tls-key), or keep --api \
                 on 127.0.0.1"
            );
        }
        let listen = parse_addr("listen", &args.listen.or(file.listen).unwrap_or_else(|| "0.0.0.0:7400".into()))?;
        let swarm_key = args.swarm_key.or(file.swarm_key);
        if swarm_key.is_none() && !listen.ip().is_loopback() {
            bail!(
                "refusing to listen on {listen} without a swarm key: any machine that can reach it could join \
                 the mesh. Make one (backmesh-node keygen -o swarm.key, or backmesh-node init) and give it \
                 with --swarm-key on every node, or keep --listen on 127.0.0.1"
            );
        }
        let offsite = match args.offsite.or(file.offsite) {
            None => None,
            Some(url) => {
                let region = args
                    .offsite_region
                    .or(file.offsite_region)
                    .or_else(|| std::env::var("AWS_REGION").or_else(|_| std::env::var("AWS_DEFAULT_REGION")).ok());
                let endpoint = args.offsite_endpoint.or(file.offsite_endpoint);
                let target = backmesh_core::offsite::OffsiteTarget::parse(&url, endpoint.as_deref(), region.as_deref())
                    .map_err(|e| anyhow!("{e}"))?;
                let rate = match (args.offsite_rate, &file.offsite_rate) {
                    (Some(r), _) => Some(r),
                    (None, Some(text)) => {
                        Some(parse_rate(text).map_err(|e| anyhow!("offsite-rate in the config file: {e}"))?)
                    }
                    (None, None) => None,
                };
                Some(OffsiteConfig { target, credentials: args.offsite_credentials.or(file.offsite_credentials), rate })
            }
        };
        Ok(NodeConfig {
            offsite,
            name,
            data_dir: data_dir.or(file.data_dir).unwrap_or_else(|| PathBuf::from("./backmesh-data")),
            listen,
            api,
            bootstrap: bootstrap.iter().map(|b| parse_addr("bootstrap", b)).collect::<Result<_>>()?,
            swarm_key,
            swarm_key_overlap: match (args.swarm_key_overlap, &file.swarm_key_overlap) {
                (Some(d), _) => d,
                (None, Some(text)) => {
                    parse_overlap(text).map_err(|e| anyhow!("swarm-key-overlap in the config file: {e}"))?
                }
                (None, None) => DEFAULT_SWARM_KEY_OVERLAP,
            },
            token,
            token_file,
            config_file: args.config.clone(),
            operator_keys,
            operator_recovery,
            viewer_token,
            site_tokens,
            site_browse,
            federate,
            replicas: args.replicas.or(file.replicas).unwrap_or(3),
            keep: {
                let keep = args.keep.or(file.keep).unwrap_or(backmesh_core::store::DEFAULT_KEEP);
                let most = backmesh_core::log::records::ARCHIVES_KEPT;
                if keep == 0 || keep > most {
                    bail!("--keep {keep}: keep between 1 and {most} archives per path (the mesh remembers {most} per path)");
                }
                let within = match (args.keep_within, &file.keep_within) {
                    (Some(d), _) => Some(d),
                    (None, Some(text)) => Some(
                        backmesh_core::store::parse_within(text)
                            .map_err(|e| anyhow!("keep-within in the config file: {e}"))?,
                    ),
                    (None, None) => None,
                };
                let grace = match (args.grace, &file.grace) {
                    (Some(Grace(g)), _) => g,
                    (None, Some(text)) => parse_grace(text).map_err(|e| anyhow!("grace in the config file: {e}"))?.0,
                    (None, None) => Some(backmesh_core::store::DEFAULT_GRACE),
                };
                Retention { keep, within, grace }
            },
            burst: args.burst.or(file.burst).unwrap_or(backmesh_core::replica::arrivals::BURST).max(1),
            encrypt: match (args.encrypt, &file.encrypt) {
                (Some(e), _) => e,
                (None, Some(text)) => parse_encrypt(text).map_err(|e| anyhow!("encrypt in the config file: {e}"))?,
                (None, None) => Encrypt::Auto,
            },
            quota: match (args.quota, &file.quota) {
                (Some(q), _) => q,
                (None, Some(text)) => backmesh_core::replica::quota::parse_quota(text)
                    .map_err(|e| anyhow!("quota in the config file: {e}"))?,
                (None, None) => Quota::default(),
            },
            site,
            tls,
            mdns: args.mdns || file.mdns.unwrap_or(false),
            allow_programs: args.allow_programs || file.allow_programs.unwrap_or(false),
            down_after: Duration::from_secs(args.down_after.or(file.down_after).unwrap_or(10).max(1)),
            queue_limit: args.queue_limit.or(file.queue_limit).unwrap_or(1000).max(1),
            repair_after: Duration::from_secs(args.repair_after.or(file.repair_after).unwrap_or(600).max(1)),
        })
    }
}

fn read_file(p: &Path) -> Result<FileConfig> {
    let text = std::fs::read_to_string(p).with_context(|| format!("cannot read the config file {}", p.display()))?;
    toml::from_str(&text).map_err(|e| anyhow!("config file {}: {e}", p.display()))
}

/// A duration as `--keep-within` takes it, for people (`14d`, `36h`).
pub fn human_duration(d: Duration) -> String {
    let h = d.as_secs() / 3600;
    if h.is_multiple_of(24) {
        format!("{}d", h / 24)
    } else {
        format!("{h}h")
    }
}

/// The API token in `file`: its first line, trimmed; a clear error when
/// it cannot be read or holds none.
fn read_token(file: &Path) -> Result<String> {
    let text =
        std::fs::read_to_string(file).map_err(|e| anyhow!("cannot read the token file {}: {e}", file.display()))?;
    let token = text.lines().next().unwrap_or("").trim().to_string();
    if token.is_empty() {
        bail!("the token file {} holds no token (its first line is empty)", file.display());
    }
    Ok(token)
}

/// The `encrypt` setting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encrypt {
    On,
    Off,
    /// On for a new data directory or one that seals already, when an
    /// operator recovery recipient is known; else off.
    Auto,
}

/// `on`, `off` (also `true`/`false`, `yes`/`no`) or `auto`.
pub fn parse_encrypt(text: &str) -> Result<Encrypt, String> {
    match text.trim().to_ascii_lowercase().as_str() {
        "on" | "true" | "yes" => Ok(Encrypt::On),
        "off" | "false" | "no" => Ok(Encrypt::Off),
        "auto" => Ok(Encrypt::Auto),
        other => Err(format!("`{other}` is not on, off or auto")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Flags of a node on loopback (one listening beyond needs a swarm key).
    fn local() -> RunArgs {
        RunArgs { listen: Some("127.0.0.1:0".into()), ..Default::default() }
    }

    #[test]
    fn a_site_browses_only_a_node_of_its_own_with_a_token_of_that_node_s() {
        let args = |site: &str, browse: &str| RunArgs {
            token: Some("adm".into()),
            site: Some(site.into()),
            site_tokens: vec!["paris=cli".into()],
            site_browse: vec![browse.into()],
            ..local()
        };
        let c = NodeConfig::resolve(None, None, args("paris", "paris=n1-files")).unwrap();
        assert_eq!(c.site_browse, [("paris".to_string(), "n1-files".to_string())]);
        let e = NodeConfig::resolve(None, None, args("lyon", "paris=n1-files")).unwrap_err();
        assert!(e.to_string().contains("this node is in site `lyon`"), "{e}");
        // The page's token (set on every node that serves the page) is not a browse token.
        for taken in ["paris=cli", "paris=adm"] {
            let e = NodeConfig::resolve(None, None, args("paris", taken)).unwrap_err();
            assert!(e.to_string().contains("a token of its own"), "{taken}: {e}");
        }
    }

    #[test]
    fn the_grace_period_is_a_week_unless_set_and_zero_only_by_choice() {
        let week = Some(backmesh_core::store::DEFAULT_GRACE);
        assert_eq!(NodeConfig::resolve(None, None, local()).unwrap().keep.grace, week);
        let none = RunArgs { grace: Some(parse_grace("0").unwrap()), ..local() };
        assert_eq!(NodeConfig::resolve(None, None, none).unwrap().keep.grace, None);
        let t = tempfile::tempdir().unwrap();
        let f = t.path().join("node.toml");
        std::fs::write(&f, "grace = \"36h\"\n").unwrap();
        let c = NodeConfig::resolve(None, None, RunArgs { config: Some(f.clone()), ..local() }).unwrap();
        assert_eq!(c.keep.grace, Some(Duration::from_secs(36 * 3600)));
        std::fs::write(&f, "grace = \"soon\"\n").unwrap();
        let e = NodeConfig::resolve(None, None, RunArgs { config: Some(f), ..local() }).unwrap_err();
        assert!(e.to_string().contains("grace in the config file"), "{e}");
        assert!(parse_grace("3x").is_err());
    }

    #[test]
    fn the_swarm_key_overlap_is_a_day_unless_set_in_seconds_or_longer_units() {
        assert_eq!(NodeConfig::resolve(None, None, local()).unwrap().swarm_key_overlap, DEFAULT_SWARM_KEY_OVERLAP);
        assert_eq!(parse_overlap("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_overlap("2d"), Ok(Duration::from_secs(2 * 86_400)));
        assert!(parse_overlap("0s").is_err());
        assert!(parse_overlap("soon").unwrap_err().contains("30s, 36h"));
    }

    #[test]
    fn a_node_listening_beyond_loopback_needs_a_swarm_key() {
        let open = RunArgs { listen: Some("0.0.0.0:7400".into()), ..Default::default() };
        let e = NodeConfig::resolve(None, None, open.clone()).unwrap_err().to_string();
        assert!(e.contains("without a swarm key") && e.contains("keygen"), "{e}");
        let keyed = RunArgs { swarm_key: Some("/etc/backmesh/swarm.key".into()), ..open };
        assert!(NodeConfig::resolve(None, None, keyed).is_ok());
        assert!(NodeConfig::resolve(None, None, local()).is_ok());
    }

    #[test]
    fn the_token_comes_from_a_file_and_a_bad_file_is_named() {
        let t = tempfile::tempdir().unwrap();
        let tok = t.path().join("token");
        std::fs::write(&tok, "s3cret\n").unwrap();
        let args = RunArgs { token_file: Some(tok.clone()), ..local() };
        assert_eq!(NodeConfig::resolve(None, None, args).unwrap().token.as_deref(), Some("s3cret"));
        let f = t.path().join("node.toml");
        std::fs::write(&f, format!("token-file = {:?}\n", tok.display().to_string())).unwrap();
        let c = NodeConfig::resolve(None, None, RunArgs { config: Some(f.clone()), ..local() }).unwrap();
        assert_eq!(c.token.as_deref(), Some("s3cret"));
        let both = RunArgs { config: Some(f), token: Some("other".into()), ..local() };
        let e = NodeConfig::resolve(None, None, both).unwrap_err();
        assert!(e.to_string().contains("not both"), "{e}");
        std::fs::write(&tok, "\n").unwrap();
        let e = NodeConfig::resolve(None, None, RunArgs { token_file: Some(tok), ..local() }).unwrap_err();
        assert!(e.to_string().contains("holds no token"), "{e}");
        let missing = RunArgs { token_file: Some(t.path().join("absent")), ..local() };
        let e = NodeConfig::resolve(None, None, missing).unwrap_err();
        assert!(e.to_string().contains("cannot read the token file"), "{e}");
    }

    #[test]
    fn flags_override_the_file_which_overrides_defaults() {
        let t = tempfile::tempdir().unwrap();
        let f = t.path().join("node.toml");
        std::fs::write(
            &f,
            "name = \"from-file\"\nsite = \"paris\"\nlisten = \"127.0.0.1:9000\"\nbootstrap = [\"127.0.0.1:9001\"]\n",
        )
        .unwrap();
        // The file's listen address (on loopback: no swarm key needed).
        let args = RunArgs { config: Some(f.clone()), site: Some("lyon".into()), ..Default::default() };
        let c = NodeConfig::resolve(None, None, args).unwrap();
        assert_eq!(c.name, "from-file");
        assert_eq!(c.site, "lyon");
        assert_eq!(c.listen.port(), 9000);
        assert_eq!(c.api.port(), 7401);
        assert_eq!(c.bootstrap.len(), 1);
        std::fs::write(&f, "nmae = \"typo\"\n").unwrap();
        let e = NodeConfig::resolve(None, None, RunArgs { config: Some(f), ..local() }).unwrap_err();
        assert!(e.to_string().contains("nmae"), "{e}");
        let e = NodeConfig::resolve(None, None, RunArgs { bootstrap: vec!["nohost".into()], ..local() }).unwrap_err();
        assert!(e.to_string().contains("bad bootstrap address `nohost`"), "{e}");
    }

    #[test]
    fn keep_within_comes_from_the_flag_or_the_file_and_a_bad_one_is_named() {
        let t = tempfile::tempdir().unwrap();
        let f = t.path().join("node.toml");
        std::fs::write(&f, "keep = 4\nkeep-within = \"14d\"\n").unwrap();
        let c = NodeConfig::resolve(None, None, RunArgs { config: Some(f.clone()), ..local() }).unwrap();
        let grace = Some(backmesh_core::store::DEFAULT_GRACE);
        assert_eq!(c.keep, Retention { keep: 4, within: Some(Duration::from_secs(14 * 86_400)), grace });
        let args = RunArgs { config: Some(f.clone()), keep_within: Some(Duration::from_secs(3600)), ..local() };
        assert_eq!(NodeConfig::resolve(None, None, args).unwrap().keep.within, Some(Duration::from_secs(3600)));
        std::fs::write(&f, "keep-within = \"14\"\n").unwrap();
        let e = NodeConfig::resolve(None, None, RunArgs { config: Some(f), ..local() }).unwrap_err();
        assert!(e.to_string().contains("keep-within") && e.to_string().contains("`14`"), "{e}");
        assert_eq!(NodeConfig::resolve(None, None, local()).unwrap().keep, Retention::default());
    }

    #[test]
    fn the_quota_comes_from_the_flag_or_the_file_and_a_bad_one_is_named() {
        let t = tempfile::tempdir().unwrap();
        let f = t.path().join("node.toml");
        std::fs::write(&f, "quota = \"200G\"\n").unwrap();
        let c = NodeConfig::resolve(None, None, RunArgs { config: Some(f.clone()), ..local() }).unwrap();
        assert_eq!(c.quota, Quota::Bytes(200 << 30));
        let args = RunArgs { config: Some(f.clone()), quota: Some(Quota::Percent(30)), ..local() };
        assert_eq!(NodeConfig::resolve(None, None, args).unwrap().quota, Quota::Percent(30));
        std::fs::write(&f, "quota = \"lots\"\n").unwrap();
        let e = NodeConfig::resolve(None, None, RunArgs { config: Some(f), ..local() }).unwrap_err();
        assert!(e.to_string().contains("quota in the config file") && e.to_string().contains("`lots`"), "{e}");
        assert_eq!(NodeConfig::resolve(None, None, local()).unwrap().quota, Quota::Percent(50));
    }

    #[test]
    fn operator_keys_come_from_the_file_one_or_many_and_the_flags_and_a_bad_one_is_named() {
        let t = tempfile::tempdir().unwrap();
        let f = t.path().join("node.toml");
        let key = || backmesh_api::order::OperatorKey::generate().unwrap().public();
        let (a, b) = (key(), key());
        std::fs::write(&f, format!("operator-key = {a:?}\n")).unwrap();
        let c = NodeConfig::resolve(None, None, RunArgs { config: Some(f.clone()), ..local() }).unwrap();
        assert_eq!(c.operator_keys, vec![a.clone()]);
        std::fs::write(&f, format!("operator-key = [{a:?}, {b:?}]\n")).unwrap();
        let args = RunArgs { config: Some(f.clone()), operator_keys: vec![a.clone()], ..local() };
        let mut both = vec![a.clone(), b.clone()];
        both.sort();
        assert_eq!(NodeConfig::resolve(None, None, args).unwrap().operator_keys, both);
        let args = RunArgs { operator_keys: vec!["bmop-xyz".into()], ..local() };
        let e = NodeConfig::resolve(None, None, args).unwrap_err();
        assert!(e.to_string().contains("operator-key") && e.to_string().contains("bmop-xyz"), "{e}");
        assert!(NodeConfig::resolve(None, None, local()).unwrap().operator_keys.is_empty());
    }

    #[test]
    fn encrypt_is_auto_unless_said_and_a_word_it_does_not_know_is_named() {
        assert_eq!(NodeConfig::resolve(None, None, local()).unwrap().encrypt, Encrypt::Auto);
        for (word, e) in [("on", Encrypt::On), ("OFF", Encrypt::Off), ("auto", Encrypt::Auto), ("yes", Encrypt::On)] {
            assert_eq!(parse_encrypt(word), Ok(e));
        }
        let t = tempfile::tempdir().unwrap();
        let f = t.path().join("node.toml");
        std::fs::write(&f, "encrypt = \"maybe\"\n").unwrap();
        let e = NodeConfig::resolve(None, None, RunArgs { config: Some(f.clone()), ..local() }).unwrap_err();
        assert!(e.to_string().contains("encrypt") && e.to_string().contains("maybe"), "{e}");
        std::fs::write(&f, "encrypt = \"off\"\n").unwrap();
        let c = NodeConfig::resolve(None, None, RunArgs { config: Some(f.clone()), ..local() }).unwrap();
        assert_eq!(c.encrypt, Encrypt::Off);
        let c = NodeConfig::resolve(None, None, RunArgs { config: Some(f), encrypt: Some(Encrypt::On), ..local() });
        assert_eq!(c.unwrap().encrypt, Encrypt::On, "the flag wins");
    }
}
