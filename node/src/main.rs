//! `backmesh-node`: a backmesh node.
//!
//! Today it works on its local store: `backup`, `archives`, `restore`,
//! `export`, `verify`. The same commands keep working on a node's data
//! directory when the mesh is down: an operator can always get data back
//! from the disk in front of them.

mod local;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "backmesh-node", version, about = "A backmesh node: backs up directories into its store and restores them exactly")]
struct Cli {
    /// The node's data directory (store, index, identity).
    #[arg(long, global = true, env = "BACKMESH_DATA_DIR", default_value = "./backmesh-data")]
    data_dir: PathBuf,
    /// This node's name in the mesh (default: the host name).
    #[arg(long, global = true, env = "BACKMESH_NAME")]
    name: Option<String>,
    /// Print one JSON document on stdout instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let ctx = local::Ctx { data_dir: cli.data_dir, name: cli.name.unwrap_or_else(local::hostname), json: cli.json };
    let result = match cli.command {
        Command::Backup(a) => local::backup(&ctx, a),
        Command::Archives(a) => local::archives(&ctx, a),
        Command::Restore(a) => local::restore(&ctx, a),
        Command::Export(a) => local::export(&ctx, a),
        Command::Verify(a) => local::verify(&ctx, a),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("backmesh-node: {e:#}");
            ExitCode::from(1)
        }
    }
}
