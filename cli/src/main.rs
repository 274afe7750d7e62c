//! `backmesh`: the light client. It talks HTTP/JSON to any node of the mesh.
//!
//! The node's HTTP API arrives with the mesh (issue 3); until then this
//! binary only says so, and points at the local commands of `backmesh-node`.

use std::process::ExitCode;

use clap::Parser;

#[derive(Parser, Debug)]
#[command(name = "backmesh", version, about = "The backmesh client: talks to any node of the mesh")]
struct Cli {
    /// Node API URL.
    #[arg(long, env = "BACKMESH_NODE", default_value = "http://127.0.0.1:7401", global = true)]
    node: String,
    #[arg(trailing_var_arg = true)]
    rest: Vec<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    eprintln!(
        "backmesh: this version has no node API to talk to yet (node {}).\n\
         Use the node's local commands meanwhile: `backmesh-node backup DIR`, `backmesh-node archives`,\n\
         `backmesh-node restore DIR --to TARGET`, `backmesh-node export DIR -o FILE.tgz`.",
        cli.node
    );
    ExitCode::from(2)
}
