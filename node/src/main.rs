//! `backmesh-node`: a backmesh node.
//!
//! Without a subcommand it runs as a node of the mesh (`run`). The
//! subcommands work on the local store — `backup`, `archives`, `restore`,
//! `export`, `verify` — and keep working on a node's data directory when
//! the mesh is down: an operator can always get data back from the disk in
//! front of them. `keygen` makes a swarm key.

mod api;
mod browse;
mod config;
mod dashboard;
mod federation;
mod http;
mod init;
mod local;
mod orders;
mod reads;
mod routes;
mod sealed;
mod start;
mod view;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "backmesh-node",
    version,
    about = "A backmesh node: joins the mesh, backs up directories and restores them exactly",
    long_about = "A backmesh node. Without a subcommand it runs as a node of the mesh:\n\n  \
                  backmesh-node --name n1 --listen 0.0.0.0:7400 --api 127.0.0.1:7401 --bootstrap other-host:7400\n\n\
                  The subcommands work on this node's local store, with or without the mesh."
)]
struct Cli {
    /// The node's data directory (store, index, identity) [default: ./backmesh-data].
    #[arg(long, global = true, env = "BACKMESH_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// This node's name in the mesh (default: the host name).
    #[arg(long, global = true, env = "BACKMESH_NAME")]
    name: Option<String>,
    /// Print one JSON document on stdout instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(flatten)]
    run: config::RunArgs,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Set this server up: a config file, the swarm key and an admin token
    /// (each 0600), then what to do next.
    Init(init::InitArgs),
    /// Back up a directory into the local store now.
    Backup(local::BackupArgs),
    /// List the archives in the local store.
    Archives(local::ArchivesArgs),
    /// Restore an archive into a directory (new or empty, or --overwrite).
    Restore(local::RestoreArgs),
    /// Write an archive as one standard .tgz file.
    Export(local::ExportArgs),
    /// Re-hash the members of archives in the local store.
    Verify(local::VerifyArgs),
    /// Make a new swarm key (private-network key) file for the mesh.
    Keygen {
        /// Where to write it (never overwritten).
        #[arg(short = 'o', long, default_value = "swarm.key")]
        output: PathBuf,
    },
}

/// A node runs for months: glibc's allocator, left alone, gives busy
/// threads arenas of their own and keeps freed pages, so the resident size
/// creeps up while the heap in use does not (docs/benchmarks.md, the soak:
/// under heaptrack, what a node allocated in 6 minutes peaked at 15 MB while
/// its resident size grew by 30 MiB). Two arenas, and free pages handed back
/// to the system every 30 s, keep the two together.
fn bound_malloc() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt and malloc_trim only tune and trim glibc's own
        // allocator; both are safe to call from any thread at any time.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 2);
        }
        let _ = std::thread::Builder::new().name("malloc-trim".into()).spawn(|| loop {
            std::thread::sleep(std::time::Duration::from_secs(30));
            // SAFETY: see above.
            unsafe {
                libc::malloc_trim(0);
            }
        });
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let Some(command) = cli.command else {
        init_logging("info,actix_server=warn,libp2p_kad=error,libp2p_swarm=warn,libp2p_tcp=warn,libp2p_noise=warn,libp2p_yamux=warn,libp2p_request_response=warn");
        bound_malloc();
        let result = config::NodeConfig::resolve(cli.name, cli.data_dir, cli.run).and_then(start::run);
        return match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("backmesh-node: {}", report(&e));
                ExitCode::from(1)
            }
        };
    };
    // A local command says only what went wrong on the side (a cache it
    // could not keep, say): its result is its output.
    init_logging("warn");
    // `init` defaults to a service's places, not the current directory's.
    let (given_name, given_dir) = (cli.name.clone(), cli.data_dir.clone());
    let ctx = local::Ctx {
        data_dir: cli.data_dir.unwrap_or_else(|| PathBuf::from("./backmesh-data")),
        name: cli.name.unwrap_or_else(local::hostname),
        json: cli.json,
    };
    let result = match command {
        Command::Init(a) => init::init(given_name, given_dir, a),
        Command::Backup(a) => local::backup(&ctx, a),
        Command::Archives(a) => local::archives(&ctx, a),
        Command::Restore(a) => local::restore(&ctx, a),
        Command::Export(a) => local::export(&ctx, a),
        Command::Verify(a) => local::verify(&ctx, a),
        Command::Keygen { output } => backmesh_core::net::swarm_key::create(&output)
            .map(|k| {
                println!(
                    "wrote a new swarm key to {} (fingerprint {}); copy it to every node of the mesh",
                    output.display(),
                    k.fingerprint()
                );
                ExitCode::SUCCESS
            })
            .map_err(anyhow::Error::from),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("backmesh-node: {}", report(&e));
            ExitCode::from(1)
        }
    }
}

/// The error and its causes, each said once: many messages already quote
/// their cause, and repeating it helps nobody.
fn report(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if !out.contains(&text) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&text);
        }
    }
    out
}

/// Logs to stderr; `BACKMESH_LOG` (or `RUST_LOG`) sets the filter, `default` if neither.
fn init_logging(default: &str) {
    use tracing_subscriber::EnvFilter;
    let filter =
        std::env::var("BACKMESH_LOG").ok().or_else(|| std::env::var("RUST_LOG").ok()).unwrap_or_else(|| default.into());
    // Colours for a person at a terminal; plain lines for journald and files.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(ansi)
        .init();
}
