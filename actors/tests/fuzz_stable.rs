//! The fuzz targets (`backmesh_core::fuzz`, also run by cargo-fuzz from
//! `fuzz/`) on the stable toolchain: each over valid seeds and a few
//! thousand mutations of them, the same every run. `FUZZ_RUNS=N` runs more.

use backmesh_core::archive::{create, CreateOptions, FileSink};
use backmesh_core::codec::encode;
use backmesh_core::fuzz;
use backmesh_core::jobs::proto::JobsRequest;
use backmesh_core::log::entry::{Entry, Event};
use backmesh_core::log::hlc::Hlc;
use backmesh_core::log::mesh::MeshState;
use backmesh_core::log::proto::{StateBatch, StatePull};
use backmesh_core::net::hello::{Hello, KnownPeer};
use backmesh_core::net::membership::NodeInfo;
use backmesh_core::replica::proto::{ReplicaRequest, XferRequest};
use backmesh_core::seal::Seal;

fn runs() -> usize {
    std::env::var("FUZZ_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(3000)
}

/// With `FUZZ_CORPUS=DIR`, the seeds are also written to `DIR/<target>/`:
/// the starting corpus of `cargo fuzz run <target> DIR/<target>`.
fn play(name: &str, target: fn(&[u8]), seeds: &[Vec<u8>], runs: usize, seed: u64) {
    if let Some(dir) = std::env::var_os("FUZZ_CORPUS") {
        let dir = std::path::Path::new(&dir).join(name);
        std::fs::create_dir_all(&dir).unwrap();
        for (i, s) in seeds.iter().enumerate() {
            std::fs::write(dir.join(format!("seed-{i}")), s).unwrap();
        }
    }
    fuzz::run_mutations(target, seeds, runs, seed);
}

/// A small real archive: its `.tgz` bytes and its manifest's encoding.
fn archive() -> (Vec<u8>, Vec<u8>) {
    let src = tempfile::tempdir().unwrap();
    std::fs::write(src.path().join("a.txt"), b"backmesh keeps what it is given\n").unwrap();
    std::fs::create_dir(src.path().join("d")).unwrap();
    std::fs::write(src.path().join("d/b.bin"), vec![7u8; 3000]).unwrap();
    std::os::unix::fs::symlink("a.txt", src.path().join("link")).unwrap();
    let out = tempfile::tempdir().unwrap();
    let tgz = out.path().join("x.tgz");
    let mut sink = FileSink::new(std::fs::File::create(&tgz).unwrap());
    let made = create(src.path(), &CreateOptions::default(), &mut sink).unwrap();
    let manifest = made.into_manifest("n1", "/srv/data", 1_795_000_000_000, None, vec![]);
    (std::fs::read(&tgz).unwrap(), manifest.encode())
}

/// Entries of a few kinds (signed and not) and a state answer made of them.
fn log_seeds() -> Vec<Vec<u8>> {
    let key = libp2p::identity::Keypair::generate_ed25519();
    let origin = key.public().to_peer_id().to_string();
    let (node, path, archive) =
        ("n1".to_string(), "/srv/data".to_string(), "20261122T030000.000Z-deadbeef".to_string());
    let events = [
        Event::Finished {
            node: node.clone(),
            path: path.clone(),
            archive: archive.clone(),
            size: 123,
            files: 4,
            duration_ms: 56,
            warnings: vec!["app.log: changed while being read".into()],
            request: None,
            plugin: None,
            recent: backmesh_core::log::recent::Recent::default()
                .then(backmesh_core::log::records::RunResult::Failed, 3_600)
                .then(backmesh_core::log::records::RunResult::Finished, 3_601),
        },
        Event::Replicated {
            node: node.clone(),
            path: path.clone(),
            archive: archive.clone(),
            holder: "n2".into(),
            bytes: 9,
        },
        Event::Pruned { node: node.clone(), path: path.clone(), archive, holder: "n2".into() },
    ];
    let mut state = MeshState::default();
    let mut seeds = Vec::new();
    for (i, event) in events.into_iter().enumerate() {
        let mut e = Entry {
            origin: origin.clone(),
            origin_name: node.clone(),
            seq: 1 + i as u64,
            time: Hlc { wall_ms: 1_795_000_000_000 + i as i64, logical: 0, node: origin.clone() },
            sig: Seal::None,
            seals: Vec::new(),
            event,
        };
        seeds.push(encode(&e));
        e.sign(&key);
        seeds.push(encode(&e));
        state.apply(&e);
    }
    seeds.push(encode(&StateBatch { records: state.records().into(), next_bucket: Some(3) }));
    seeds
}

#[test]
fn the_wire_codecs_take_any_bytes() {
    let info = NodeInfo {
        name: "n1".into(),
        site: "a".into(),
        free_bytes: 1 << 30,
        address: "127.0.0.1:4001".into(),
        version: "0.1.0".into(),
        swarm_key: None,
        recipient: None,
    };
    let peer = KnownPeer { peer_id: "12D3KooWabc".into(), addrs: vec!["/ip4/127.0.0.1/tcp/4001".into()] };
    let hello = Hello { info, peers: vec![peer], protocol: 7, trust: vec![] };
    let pull = StatePull { digest: vec![0, 1, u64::MAX], from_bucket: 3, eager: true };
    let seeds = vec![
        encode(&hello),
        encode(&pull),
        encode(&backmesh_core::log::history::HistoryQuery::default()),
        encode(&JobsRequest::Progress { path: backmesh_core::replica::proto::series("/srv/data").unwrap() }),
        encode(&ReplicaRequest::Verify { node: None, path: None, request: "r1".into(), order: None }),
        encode(&XferRequest::list("n1", "/srv/data").unwrap()),
        // A request frame as the transport reads it: name, then body.
        [&b"\x11/backmesh/state/3"[..], &encode(&pull)].concat(),
        Vec::new(),
    ];
    play("wire", fuzz::wire, &seeds, runs(), 1);
}

#[test]
fn the_manifest_decoder_takes_any_bytes() {
    let (_, manifest) = archive();
    play("manifest", fuzz::manifest, &[manifest, Vec::new()], runs(), 2);
}

#[test]
fn the_log_and_state_decoders_take_any_bytes() {
    let seeds = log_seeds();
    play("log", fuzz::log, &seeds, runs(), 3);
}

#[test]
fn a_restore_of_any_bytes_fails_cleanly_or_stays_in_its_target() {
    let (tgz, _) = archive();
    play("restore", fuzz::restore, &[tgz, Vec::new()], runs() / 3, 4);
}
