//! `backmesh-node init`: a server's first-time setup. Writes the node's
//! config file, a swarm key (or a copy of the mesh's) and an admin token,
//! readable by the service's user only, and says what to do next.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::Args;

/// A line on stdout; a reader that went away (`| head`) is no error.
macro_rules! say {
    ($($t:tt)*) => {{
        let _ = writeln!(std::io::stdout().lock(), $($t)*);
    }};
}

#[derive(Args, Debug, Clone)]
pub struct InitArgs {
    /// Where the config, swarm key and token go.
    #[arg(long, value_name = "DIR", default_value = "/etc/backmesh")]
    pub config_dir: PathBuf,
    /// The mesh's swarm key, copied from the first server (without it, a
    /// new mesh: a new key is made).
    #[arg(long, value_name = "FILE")]
    pub swarm_key: Option<PathBuf>,
    /// A node of the mesh to join through (HOST:PORT); repeatable.
    #[arg(long, value_name = "HOST:PORT")]
    pub bootstrap: Vec<String>,
    /// Mesh address to listen on.
    #[arg(long, value_name = "HOST:PORT", default_value = "0.0.0.0:7400")]
    pub listen: String,
    /// HTTP API address (keep it on 127.0.0.1 unless you set up TLS).
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:7401")]
    pub api: String,
    /// The operator's public key (bmop-…, printed by `backmesh operator
    /// init` on the operator's own machine): commands signed with it act
    /// on this node from any node of the mesh. Repeatable.
    #[arg(long = "operator-key", value_name = "bmop-…")]
    pub operator_keys: Vec<String>,
    /// The operator's recovery recipient (age1…, printed beside the
    /// operator key): this node's data key is wrapped to it. Repeatable.
    #[arg(long = "operator-recovery", value_name = "age1…")]
    pub operator_recovery: Vec<String>,
    /// The system user the service runs as: the files are made its own
    /// (when run as root and the user exists).
    #[arg(long, value_name = "USER", default_value = "backmesh")]
    pub user: String,
    /// Replace an existing config file (the swarm key is never replaced).
    #[arg(long)]
    pub force: bool,
}

/// How the Debian package's default config file begins (packaging/node.toml).
const PACKAGED: &str = "# packaged default:";

/// 32 random bytes as hex.
fn token() -> Result<String> {
    let mut b = [0u8; 32];
    std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut b)).context("cannot read /dev/urandom")?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

/// Writes `data` to `path`, mode 0600, synced, through a temporary file;
/// an existing file is replaced only with `replace`.
fn write_private(path: &Path, data: &[u8], replace: bool) -> Result<()> {
    // Whole or not at all: a crash leaves no half-written file behind that
    // a second `init` would then refuse to replace.
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new().prefix(".tmp-").tempfile_in(dir)?;
    tmp.as_file().set_permissions(std::fs::Permissions::from_mode(0o600))?;
    tmp.write_all(data)?;
    tmp.as_file().sync_all()?;
    if replace {
        tmp.persist(path).map_err(|e| e.error)?;
    } else {
        tmp.persist_noclobber(path).map_err(|e| e.error)?;
    }
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
}

/// The user's uid and gid, if it exists.
fn user_ids(name: &str) -> Option<(u32, u32)> {
    let c = std::ffi::CString::new(name).ok()?;
    // SAFETY: getpwnam reads the passwd database; the pointer it returns is
    // read at once, before any other call could reuse its buffer.
    unsafe {
        let pw = libc::getpwnam(c.as_ptr());
        if pw.is_null() {
            None
        } else {
            Some(((*pw).pw_uid, (*pw).pw_gid))
        }
    }
}

/// TOML's basic string.
fn quoted(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

pub fn init(name: Option<String>, data_dir: Option<PathBuf>, a: InitArgs) -> Result<ExitCode> {
    let name = name.unwrap_or_else(crate::local::hostname);
    backmesh_api::names::check_node_name(&name).map_err(|e| anyhow::anyhow!("{e}"))?;
    let data_dir = data_dir.unwrap_or_else(|| PathBuf::from("/var/lib/backmesh"));
    for b in &a.bootstrap {
        crate::config::parse_addr("bootstrap", b)?;
    }
    crate::config::parse_addr("listen", &a.listen)?;
    crate::config::parse_addr("api", &a.api)?;
    for k in &a.operator_keys {
        backmesh_api::order::public_key(k).map_err(|e| anyhow::anyhow!("--operator-key: {e}"))?;
    }
    for r in &a.operator_recovery {
        backmesh_crypt::wrap::parse_recipient(r).map_err(|e| anyhow::anyhow!("--operator-recovery: {e}"))?;
    }
    std::fs::create_dir_all(&a.config_dir)
        .with_context(|| format!("cannot create the config directory {}", a.config_dir.display()))?;
    let config = a.config_dir.join("node.toml");
    // The package's default file is there to be replaced.
    let packaged = std::fs::read_to_string(&config).is_ok_and(|t| t.starts_with(PACKAGED));
    if config.exists() && !a.force && !packaged {
        bail!("{} exists already: this server is set up (give --force to write it again)", config.display());
    }
    // The swarm key: the mesh's, copied; or a new one for a new mesh.
    let key_path = a.config_dir.join("swarm.key");
    let (key, new_mesh) = match &a.swarm_key {
        Some(from) => {
            let key = backmesh_core::net::swarm_key::load(from)?;
            if from.canonicalize().ok() != key_path.canonicalize().ok() {
                if key_path.exists() {
                    let here = backmesh_core::net::swarm_key::load(&key_path)?;
                    if here.fingerprint().to_string() != key.fingerprint().to_string() {
                        bail!(
                            "{} holds another swarm key (fingerprint {}); it is never replaced: move it away first",
                            key_path.display(),
                            here.fingerprint()
                        );
                    }
                } else {
                    write_private(&key_path, key.to_string().as_bytes(), false)
                        .with_context(|| format!("cannot write {}", key_path.display()))?;
                }
            }
            (key, false)
        }
        None if key_path.exists() => (backmesh_core::net::swarm_key::load(&key_path)?, false),
        None => (backmesh_core::net::swarm_key::create(&key_path)?, true),
    };
    let token = token()?;
    let mut text = String::from("# backmesh node: written by `backmesh-node init`; see docs/operations.md\n");
    text += &format!("name = {}\n", quoted(&name));
    text += &format!("data-dir = {}\n", quoted(&data_dir.to_string_lossy()));
    text += &format!("listen = {}\n", quoted(&a.listen));
    text += &format!("api = {}\n", quoted(&a.api));
    text += &format!("swarm-key = {}\n", quoted(&key_path.to_string_lossy()));
    let boot: Vec<String> = a.bootstrap.iter().map(|b| quoted(b)).collect();
    text += &format!("bootstrap = [{}]\n", boot.join(", "));
    text += "# The admin token: every API call but /api/v1/health needs it (backmesh --token, or BACKMESH_TOKEN).\n";
    text += &format!("token = {}\n", quoted(&token));
    text += "# The operators whose signed commands act on this node from any node (`backmesh operator init`\n";
    text += "# makes a key on the operator's machine and prints its public half). Without one, this node\n";
    text += "# acts only for its own token, on its own jobs.\n";
    if a.operator_keys.is_empty() {
        text += "# operator-key = \"bmop-…\"\n";
    } else {
        let keys: Vec<String> = a.operator_keys.iter().map(|k| quoted(k.trim())).collect();
        text += &format!("operator-key = [{}]\n", keys.join(", "));
    }
    text += "# The operator's recovery recipients: this node's data key is wrapped to them, so the operator\n";
    text += "# can read this node's backups after the server is lost (`backmesh operator show --recovery`).\n";
    if a.operator_recovery.is_empty() {
        text += "# operator-recovery = \"age1…\"\n";
    } else {
        let keys: Vec<String> = a.operator_recovery.iter().map(|k| quoted(k.trim())).collect();
        text += &format!("operator-recovery = [{}]\n", keys.join(", "));
    }
    text += "# replicas = 3\n# keep = 10\n# keep-within = \"14d\"\n# site = \"paris\"\n";
    text += "# offsite = \"s3://BUCKET/PREFIX\"   # see docs/operations.md, Offsite copies\n";
    write_private(&config, text.as_bytes(), a.force || packaged)
        .with_context(|| format!("cannot write {}", config.display()))?;
    // The service's user reads them; nobody else.
    let owner = (unsafe { libc::geteuid() } == 0).then(|| user_ids(&a.user)).flatten();
    if let Some((uid, gid)) = owner {
        for p in [&config, &key_path] {
            std::os::unix::fs::chown(p, Some(uid), Some(gid))
                .with_context(|| format!("cannot give {} to user {}", p.display(), a.user))?;
        }
    }
    say!("wrote {} (0600): node {name}, data in {}", config.display(), data_dir.display());
    say!(
        "{} {} (0600, fingerprint {})",
        if new_mesh { "made a new swarm key" } else { "using the mesh's swarm key" },
        key_path.display(),
        key.fingerprint()
    );
    if owner.is_some() {
        say!("both belong to user {}", a.user);
    }
    say!();
    say!("next:");
    let mut step = 1;
    if new_mesh {
        say!("  {step}. copy the swarm key to every other server of this mesh, over a channel you trust:");
        say!("       scp {} root@OTHER:/root/swarm.key", key_path.display());
        say!("     and on each of them:");
        say!(
            "       backmesh-node --name THEIR-NAME init --swarm-key /root/swarm.key --bootstrap ADDRESS-OF-{name}:{}",
            a.listen.rsplit(':').next().unwrap_or("7400")
        );
        say!("     (ADDRESS-OF-{name}: this server's address or host name as they reach it; then delete /root/swarm.key)");
        step += 1;
    }
    if a.operator_keys.is_empty() {
        say!("  {step}. on your own machine (never on a server), make the operator key once:");
        say!("       backmesh operator init");
        say!(
            "     and put the two lines it prints in {}: operator-key = \"bmop-…\" and operator-recovery = \"age1…\"",
            config.display()
        );
        say!("     (or run init again with --force --operator-key bmop-… --operator-recovery age1…)");
        step += 1;
    }
    say!("  {step}. start the node: systemctl enable --now backmesh-node");
    say!("     (by hand: backmesh-node --config {})", config.display());
    step += 1;
    say!(
        "  {step}. check it: BACKMESH_TOKEN=$(sed -n 's/^token = \"\\(.*\\)\"/\\1/p' {}) backmesh status",
        config.display()
    );
    Ok(ExitCode::SUCCESS)
}
