//! Fuzz targets: what a node does with bytes it did not write, as one
//! function each, shared by the cargo-fuzz targets (`fuzz/`, libFuzzer,
//! nightly) and the stable runner in the test suite (below: seeds and
//! mutations of them, a few thousand runs each). None may panic, hang or
//! allocate past the bounds its caller sets; what decodes must encode
//! back to what decodes the same; a restore never writes outside its
//! target. docs/reliability.md gives the figures.

use std::collections::BTreeMap;

use crate::archive::{restore_tgz, Manifest, RestoreOptions};
use crate::codec::{decode, encode};
use crate::jobs::proto::{JobsAnswer, JobsRequest, JOBS};
use crate::log::entry::Entry;
use crate::log::history::HistoryQuery;
use crate::log::mesh::MeshState;
use crate::log::proto::{HistoryAnswer, StateBatch, StatePull, HISTORY, MAX_LOG, STATE};
use crate::log::signing::NodeKeys;
use crate::net::hello::{Hello, MAX_HELLO};
use crate::replica::proto::{ReplicaAnswer, ReplicaRequest, XferRequest, XferResponse, REPLICA, XFER};

/// Decodes `v`'s encoding again and checks it is the same value.
fn round_trip<T>(v: &T, max: usize)
where
    T: serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let bytes = encode(v);
    // A value that decoded re-encodes, and that encoding decodes again
    // (to the same encoding: values may hold floats or maps without Eq).
    if let Ok(again) = decode::<T>(&bytes, max.max(bytes.len())) {
        assert_eq!(encode(&again), bytes, "{v:?} does not survive a round trip");
    } else {
        panic!("{v:?} encodes to what does not decode");
    }
}

/// Every message of the mesh protocols, as the codecs decode them.
pub fn wire(data: &[u8]) {
    if let Ok(v) = decode::<Hello>(data, MAX_HELLO) {
        round_trip(&v, MAX_HELLO);
    }
    if let Ok(v) = decode::<StatePull>(data, STATE.max_request) {
        round_trip(&v, STATE.max_request);
    }
    if let Ok(v) = decode::<HistoryQuery>(data, HISTORY.max_request) {
        round_trip(&v, HISTORY.max_request);
    }
    if let Ok(v) = decode::<HistoryAnswer>(data, HISTORY.max_response) {
        round_trip(&v, HISTORY.max_response);
    }
    if let Ok(v) = decode::<JobsRequest>(data, JOBS.max_request) {
        round_trip(&v, JOBS.max_request);
    }
    if let Ok(v) = decode::<JobsAnswer>(data, JOBS.max_response) {
        round_trip(&v, JOBS.max_response);
    }
    if let Ok(v) = decode::<ReplicaRequest>(data, REPLICA.max_request) {
        round_trip(&v, REPLICA.max_request);
    }
    if let Ok(v) = decode::<ReplicaAnswer>(data, REPLICA.max_response) {
        round_trip(&v, REPLICA.max_response);
    }
    if let Ok(v) = decode::<XferRequest>(data, XFER.max_request) {
        round_trip(&v, XFER.max_request);
        // A delta is rebuilt against a member the holder has: any bytes
        // must be refused or rebuilt, within the bound, never panic.
        let old: Vec<u8> = (0..4096u32).map(|i| (i * 7 % 251) as u8).collect();
        let mut deltas: Vec<(&[u8], &[u8], u64)> = Vec::new();
        match &v {
            XferRequest::Put { deltas: d, .. } => {
                deltas.extend(d.iter().map(|d| (&d.ops[..], &d.literals[..], d.raw_len)))
            }
            XferRequest::Offer { manifest, against: Some(b) }
            | XferRequest::Commit { manifest, against: Some(b), .. } => {
                deltas.push((&b.ops[..], &manifest[..], b.raw_len))
            }
            _ => {}
        }
        for (ops, literals, raw_len) in deltas {
            if let Ok(raw) = crate::archive::delta::apply(&old, ops, literals, raw_len, 1 << 20) {
                assert_eq!(raw.len() as u64, raw_len);
            }
        }
    }
    if let Ok(v) = decode::<XferResponse>(data, XFER.max_response) {
        round_trip(&v, XFER.max_response);
    }
    // The request frame every protocol travels in.
    rpc_frame(data);
}

/// A request frame as the transport reads it off a stream.
fn rpc_frame(data: &[u8]) {
    use crate::net::rpc::{Protocols, RpcCodec, RPC};
    use libp2p::request_response::Codec;
    let protocols = Protocols::new(crate::protocols::all());
    let mut codec = RpcCodec::new(protocols);
    let mut stream = futures::io::Cursor::new(data);
    if let Ok(req) = futures::executor::block_on(codec.read_request(&RPC, &mut stream)) {
        assert!(req.protocol.len() <= crate::net::rpc::MAX_NAME);
        if req.known {
            let max = crate::protocols::all().iter().find(|p| p.name == req.protocol).map(|p| p.max_request);
            assert!(req.body.len() <= max.unwrap_or(0));
        } else {
            assert!(req.body.is_empty());
        }
    }
}

/// A manifest as read from disk and as received from a peer.
pub fn manifest(data: &[u8]) {
    for m in [Manifest::decode(data), Manifest::decode_from_peer(data)].into_iter().flatten() {
        let _ = m.order();
        let _ = m.digests().count();
        let bytes = m.encode();
        assert!(Manifest::decode(&bytes).is_ok(), "a manifest that decoded does not decode once encoded again");
    }
}

/// Keys of no node: every seal checked against them fails, as a forger's.
struct NoKeys;
impl NodeKeys for NoKeys {
    fn key_of(&self, _: &str) -> Option<libp2p::identity::PublicKey> {
        None
    }
}

/// A log entry from gossip and from disk, and a state answer: checked as a
/// node checks them, then folded into a state whatever their seals (the
/// fold must hold for any content), and the views read.
pub fn log(data: &[u8]) {
    let mut state = MeshState::default();
    if let Ok(e) = decode::<Entry>(data, MAX_LOG) {
        let _ = e.event.check_names();
        let _ = e.signed_by_origin();
        let _ = e.event.author();
        state.apply(&e);
    }
    if let Ok(e) = crate::log::history::decode(data) {
        let _ = e.event.check_names();
        state.apply(&e);
    }
    if let Ok(batch) = decode::<StateBatch>(data, MAX_LOG) {
        let mut checked = MeshState::default();
        let mut found = crate::log::signing::Checked::default();
        for (k, r) in &batch.records.known {
            let _ = k.check_names();
            let mut r = r.clone();
            if checked.check(k, &mut r, &NoKeys, &mut found) {
                checked.merge_record(k, &r);
            }
            state.merge_record(k, &r);
            let _: Vec<u8> = crate::log::state_disk::key_bytes(k);
        }
    }
    views(&mut state);
}

fn views(state: &mut MeshState) {
    let cats = state.catalogs();
    let _: BTreeMap<_, _> = cats.into_iter().map(|(k, v): ((String, String), _)| (k, v.len())).collect();
    let _ = state.jobs();
    let copy = state.clone();
    state.merge(&copy);
}

/// Arbitrary bytes restored as a `.tgz` into a fresh directory: an error
/// or a tree, and nothing written beside the target.
pub fn restore(data: &[u8]) {
    let Ok(dir) = tempfile::tempdir() else { return };
    let target = dir.path().join("target");
    let opts = RestoreOptions { threads: 1, same_owner: Some(false), ..RestoreOptions::default() };
    let _ = restore_tgz(data, &target, &opts);
    let beside: Vec<String> = std::fs::read_dir(dir.path())
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != "target")
        .collect();
    assert!(beside.is_empty(), "a restore wrote beside its target: {beside:?}");
}

/// The stable runner: each target over its seeds and `runs` mutations of
/// them drawn from `seed` (the same runs every time).
pub fn run_mutations(target: fn(&[u8]), seeds: &[Vec<u8>], runs: usize, seed: u64) {
    let mut x = seed;
    let mut next = move || {
        // SplitMix64.
        x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    for s in seeds {
        target(s);
    }
    for _ in 0..runs {
        let mut d = seeds[(next() as usize) % seeds.len()].clone();
        for _ in 0..1 + next() % 4 {
            let at = if d.is_empty() { 0 } else { (next() as usize) % d.len() };
            match next() % 6 {
                0 if !d.is_empty() => d[at] ^= 1 << (next() % 8),
                1 if !d.is_empty() => d[at] = next() as u8,
                2 => d.insert(at, next() as u8),
                3 if !d.is_empty() => {
                    d.remove(at);
                }
                4 => d.truncate(at),
                _ => {
                    // An interesting number where a length or count may be.
                    let n = [0u8, 0x17, 0x18, 0x19, 0x1a, 0x1b, 0x7f, 0x80, 0xff][(next() % 9) as usize];
                    if !d.is_empty() {
                        d[at] = n;
                    }
                }
            }
        }
        target(&d);
    }
}
