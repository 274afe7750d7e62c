//! Golden tests: the bytes of every wire message, checked into
//! `actors/tests/golden/*.hex`. Each sample value must encode to exactly
//! those bytes, and those bytes must decode to the same value and encode
//! back unchanged: a rename or a new field in a type that would move a
//! format fails here, and a deliberate format change is a visible diff of
//! a `.hex` file (with a `MESH_PROTOCOL` bump, docs/operations.md).
//!
//! `BACKMESH_GOLDEN=update cargo test -p backmesh-core golden` writes the
//! files anew after a deliberate change.

use std::fmt::Debug;
use std::path::PathBuf;

use backmesh_core::codec::{decode, encode};
use backmesh_core::jobs::plugin::JobSpec;
use backmesh_core::jobs::proto::{JobsAnswer, JobsRequest, RunProgress};
use backmesh_core::log::crdt::Lww;
use backmesh_core::log::entry::{Entry, Event};
use backmesh_core::log::history::{HistoryQuery, Page};
use backmesh_core::log::hlc::Hlc;
use backmesh_core::log::mesh::MeshState;
use backmesh_core::log::proto::{HistoryAnswer, StateBatch, StatePull};
use backmesh_core::log::records::{Record, RecordKey};
use backmesh_core::log::signing::seal_entry;
use backmesh_core::net::hello::{Hello, KnownPeer};
use backmesh_core::net::membership::NodeInfo;
use backmesh_core::replica::proto::{
    archive, name, series, ManifestBase, ReplicaAnswer, ReplicaRequest, WireDelta, WireMember, XferRequest,
    XferResponse,
};
use serde::{de::DeserializeOwned, Serialize};

mod disk;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

fn to_hex(bytes: &[u8]) -> String {
    let mut out = String::new();
    for line in bytes.chunks(32) {
        out.push_str(&hex::encode(line));
        out.push('\n');
    }
    out
}

/// Checks `bytes` against `golden/<name>.hex` (or writes it, when updating).
fn pin_bytes(name: &str, bytes: &[u8]) -> Vec<u8> {
    let file = dir().join(format!("{name}.hex"));
    if std::env::var("BACKMESH_GOLDEN").as_deref() == Ok("update") {
        std::fs::write(&file, to_hex(bytes)).unwrap();
    }
    let text = std::fs::read_to_string(&file).unwrap_or_else(|e| {
        panic!("{}: {e}; run `BACKMESH_GOLDEN=update cargo test -p backmesh-core golden` once", file.display())
    });
    let golden = hex::decode(text.split_whitespace().collect::<String>()).unwrap();
    assert!(
        golden == bytes,
        "{name}: the encoding moved from the golden bytes in {}:\n  golden: {}\n  now:    {}\n\
         If the change is deliberate: bump MESH_PROTOCOL (or the disk format's version), say so in \
         docs/operations.md, and run with BACKMESH_GOLDEN=update.",
        file.display(),
        hex::encode(&golden),
        hex::encode(bytes)
    );
    golden
}

/// `value` encodes to the golden bytes, which decode to `value` and encode back.
fn pin<T: Serialize + DeserializeOwned + PartialEq + Debug>(name: &str, value: &T) {
    let golden = pin_bytes(name, &encode(value));
    let back: T = decode(&golden, usize::MAX).unwrap_or_else(|e| panic!("{name}: the golden bytes do not decode: {e}"));
    assert_eq!(&back, value, "{name}: the golden bytes decode to another value");
    assert_eq!(encode(&back), golden, "{name}: decoded and encoded again, the bytes moved");
}

fn key() -> libp2p::identity::Keypair {
    libp2p::identity::Keypair::ed25519_from_bytes([7u8; 32]).unwrap()
}

fn hlc(node: &str) -> Hlc {
    Hlc { wall_ms: 1_795_000_000_000, logical: 3, node: node.into() }
}

/// A signed entry: its origin's signature and its registers' seals are
/// deterministic (ed25519), so the bytes are too.
fn entry(seq: u64, event: Event) -> Entry {
    let key = key();
    let origin = key.public().to_peer_id().to_string();
    let mut e = Entry::new(origin.clone(), "n1".into(), seq, hlc(&origin), event);
    seal_entry(&mut e, &key);
    e
}

fn finished() -> Event {
    Event::Finished {
        recent: Default::default(),
        node: "n1".into(),
        path: "/srv/app".into(),
        archive: "20261122T040113.000Z-0a1b2c3d".into(),
        size: 123_456,
        files: 42,
        duration_ms: 789,
        warnings: vec!["app.log: changed while being read".into()],
        request: Some("r-1".into()),
        plugin: None,
    }
}

#[test]
fn golden_hello() {
    let info = NodeInfo {
        name: "n1".into(),
        site: "rack-a".into(),
        free_bytes: 1 << 40,
        address: "10.0.0.1:7400".into(),
        version: "0.1.0".into(),
        swarm_key: None,
        recipient: None,
    };
    let peer =
        KnownPeer { peer_id: key().public().to_peer_id().to_string(), addrs: vec!["/ip4/10.0.0.2/tcp/7400".into()] };
    pin("hello", &Hello { info: info.clone(), peers: vec![peer.clone()], protocol: 10, trust: vec![] });
    let revoked = vec![disk::golden_order()];
    pin("hello_with_trust", &Hello { info, peers: vec![peer], protocol: 11, trust: revoked });
}

#[test]
fn golden_rpc_frames() {
    use backmesh_core::net::rpc::{Answer, Protocols, Request, RpcCodec, RPC};
    use futures::executor::block_on;
    use libp2p::request_response::Codec;
    let mut codec = RpcCodec::new(Protocols::new(backmesh_core::protocols::all()));
    let pull = encode(&StatePull { digest: vec![1, 2, 3], from_bucket: 0, eager: true });
    let request = Request { protocol: "/backmesh/state/3".into(), body: pull.clone(), known: true };
    let mut out = futures::io::Cursor::new(Vec::new());
    block_on(codec.write_request(&RPC, &mut out, request.clone())).unwrap();
    let golden = pin_bytes("rpc_request", &out.into_inner());
    let read = block_on(codec.read_request(&RPC, &mut futures::io::Cursor::new(golden))).unwrap();
    assert_eq!(read, request);
    for (name, answer) in
        [("rpc_answer", Answer::Body(pull)), ("rpc_refused", Answer::Refused("too many in flight".into()))]
    {
        let mut out = futures::io::Cursor::new(Vec::new());
        block_on(codec.write_response(&RPC, &mut out, answer.clone())).unwrap();
        let golden = pin_bytes(name, &out.into_inner());
        let read = block_on(codec.read_response(&RPC, &mut futures::io::Cursor::new(golden))).unwrap();
        assert_eq!(read, answer, "{name}");
    }
}

#[test]
fn golden_gossiped_entries() {
    pin("entry_finished", &entry(7, finished()));
    let registered = Event::Registered {
        node: "n1".into(),
        path: "/srv/db".into(),
        every_min: 60,
        excludes: vec!["*.tmp".into()],
        spec: JobSpec {
            source: Some("command".into()),
            args: vec!["pg_dump".into(), "app".into()],
            timeout_s: Some(600),
            ..JobSpec::default()
        },
    };
    pin("entry_registered", &entry(8, registered));
    // A run's entry carries the runs before it (log/recent.rs): one hourly
    // `finished`, then an `unchanged` 61 s before this failure.
    let recent = backmesh_core::log::recent::Recent::default()
        .then(backmesh_core::log::records::RunResult::Finished, 3_600)
        .then(backmesh_core::log::records::RunResult::Unchanged, 61);
    let failed = Event::Failed {
        node: "n1".into(),
        path: "/srv/app".into(),
        error: "pre hook failed: exit status 1".into(),
        duration_ms: 12,
        request: None,
        plugin: None,
        recent,
    };
    pin("entry_failed_with_recent_runs", &entry(9, failed));
    pin(
        "entry_unsigned_paused",
        &Entry::new("p".into(), "n1".into(), 1, hlc("p"), Event::Paused { node: "n1".into() }),
    );
}

#[test]
fn golden_state_protocol() {
    pin("state_pull", &StatePull { digest: vec![0, 1, u64::MAX], from_bucket: 3, eager: false });
    let mut state = MeshState::new();
    state.apply(&entry(7, finished()));
    let mut records = state.records();
    records.sort_by(|a, b| format!("{:?}", a.0).cmp(&format!("{:?}", b.0)));
    records.push((RecordKey::Paused("n2".into()), Record::Paused(Lww::new(hlc("P"), true))));
    pin("state_batch", &StateBatch { records: records.into(), next_bucket: Some(17) });
}

#[test]
fn golden_history_protocol() {
    pin(
        "history_query",
        &HistoryQuery { node: Some("n1".into()), path: Some("/srv/app".into()), before: Some("c".into()), limit: 100 },
    );
    let page = Page { entries: vec![entry(7, finished())], more: true, cursor: Some("cursor-1".into()) };
    pin("history_page", &HistoryAnswer::Page(page));
    pin("history_failed", &HistoryAnswer::Failed { reason: "cannot read the history".into() });
}

#[test]
fn golden_jobs_protocol() {
    let path = series("/srv/app").unwrap();
    let order = disk::golden_order();
    let register = backmesh_api::Register {
        node: "n1".into(),
        path: "/srv/app".into(),
        every: 5,
        excludes: vec!["*.log".into()],
        spec: backmesh_api::JobSpec { pre: Some("sync".into()), ..Default::default() },
    };
    let act = backmesh_core::authority::Act::Register(register);
    pin("jobs_change", &JobsRequest::Change { act, order: order.clone() });
    pin("jobs_run", &JobsRequest::Run { path: path.clone(), request: Some("r-1".into()), order: Some(order) });
    pin("jobs_progress", &JobsRequest::Progress { path });
    pin("jobs_recorded", &JobsAnswer::Recorded { entry: Box::new(entry(7, finished())) });
    pin("jobs_queued", &JobsAnswer::Queued { id: 12 });
    pin("jobs_busy", &JobsAnswer::Busy { reason: "64 runs wait".into() });
    let progress = RunProgress {
        running: true,
        entries: 10,
        bytes_read: 2048,
        bytes_out: 1024,
        elapsed_ms: 1500,
        request: Some("r-1".into()),
    };
    pin("jobs_progress_answer", &JobsAnswer::Progress(progress));
    pin("jobs_failed", &JobsAnswer::Failed { reason: "no order".into() });
}

#[test]
fn golden_replica_protocol() {
    let order = Some(disk::golden_order());
    pin(
        "replica_restore",
        &ReplicaRequest::Restore {
            node: name("n1").unwrap(),
            path: series("/srv/app").unwrap(),
            archive: Some(archive("20261122T040113.000Z-0a1b2c3d").unwrap()),
            to: "/restore/app".into(),
            overwrite: false,
            request: "r-2".into(),
            order: order.clone(),
            key: None,
            include: Vec::new(),
        },
    );
    pin(
        "replica_restore_include",
        &ReplicaRequest::Restore {
            node: name("n1").unwrap(),
            path: series("/srv/app").unwrap(),
            archive: None,
            to: "/restore/conf".into(),
            overwrite: false,
            request: "r-4".into(),
            order: None,
            key: None,
            include: vec!["*.conf".into(), "etc/app.d".into()],
        },
    );
    pin("replica_verify", &ReplicaRequest::Verify { node: None, path: None, request: "r-3".into(), order });
    pin("replica_progress", &ReplicaRequest::Progress { request: "r-4".into() });
    pin("replica_progressed", &ReplicaAnswer::Progress { entries: 12, bytes: 4096, total: 8192, elapsed_ms: 1500 });
    pin("replica_accepted", &ReplicaAnswer::Accepted);
    pin("replica_verifying", &ReplicaAnswer::Verifying { series: vec![("n1".into(), "/srv/app".into())] });
    pin("replica_failed", &ReplicaAnswer::Failed { reason: "not empty".into() });
}

#[test]
fn golden_xfer_protocol() {
    let d = |b: u8| backmesh_core::hash::Digest::of(&[b]);
    let bytes = |b: &[u8]| serde_bytes::ByteBuf::from(b.to_vec());
    let base = ManifestBase {
        node: name("n1").unwrap(),
        path: series("/srv/app").unwrap(),
        archive: archive("20261122T040113.000Z-0a1b2c3d").unwrap(),
        raw_len: 300,
        sha256: d(9),
        ops: bytes(&[1, 2, 3]),
    };
    pin("xfer_offer", &XferRequest::Offer { manifest: bytes(b"manifest"), against: None });
    pin("xfer_offer_delta", &XferRequest::Offer { manifest: bytes(b"literals"), against: Some(base.clone()) });
    let member = WireMember { digest: d(1), data: bytes(b"\x1f\x8b member") };
    let delta =
        WireDelta { digest: d(2), base: d(3), level: 6, raw_len: 65_536, ops: bytes(&[0, 1]), literals: bytes(b"new") };
    pin("xfer_put", &XferRequest::Put { members: vec![member.clone()], deltas: vec![delta] });
    pin(
        "xfer_commit",
        &XferRequest::Commit { manifest: bytes(b"literals"), against: Some(base), sent: 4096, repair: true },
    );
    pin("xfer_list", &XferRequest::list("n1", "/srv/app").unwrap());
    let order = disk::golden_order();
    pin("xfer_get_manifest", &XferRequest::get_manifest("n1", "/srv/app", None, Some(&order)).unwrap());
    let of =
        backmesh_core::replica::proto::ReadOf::named("n1", "/srv/app", "20261122T040113.000Z-0a1b2c3d", None).unwrap();
    pin("xfer_get", &XferRequest::Get { digests: vec![d(1), d(2)], of });
    pin("xfer_want", &XferResponse::Want { missing: vec![d(4)], complete: false });
    pin("xfer_stored", &XferResponse::Stored);
    pin("xfer_committed", &XferResponse::Committed);
    pin("xfer_archives", &XferResponse::Archives { ids: vec![archive("20261122T040113.000Z-0a1b2c3d").unwrap()] });
    pin("xfer_manifest", &XferResponse::Manifest { manifest: bytes(b"manifest") });
    pin("xfer_members", &XferResponse::Members { members: vec![member] });
    pin("xfer_refused", &XferResponse::Refused { reason: "disk full".into() });
    pin("xfer_over_quota", &XferResponse::OverQuota { reason: "n1 is at its quota".into() });
    pin("xfer_whole_manifest", &XferResponse::WholeManifest);
}
