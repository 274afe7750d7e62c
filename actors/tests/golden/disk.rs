//! Golden bytes of what a node writes to disk and what it signs: a sealed
//! manifest file and its member list, the catalog, the mesh state's
//! records, the run queue, the history's files, and the signed bodies of
//! entries, registers and operator orders. Each is made anew from fixed inputs (a
//! fixed identity, a fixed clock) and must come out byte for byte as
//! checked in; what was checked in must read back.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use backmesh_core::archive::manifest::{ArchiveStats, FileRecord, Manifest, MemberRef, TreeRule};
use backmesh_core::archive::sink::{gzip_member, MemberSink};
use backmesh_core::archive::tarfmt::Kind;
use backmesh_core::clock::Clock;
use backmesh_core::codec::encode;
use backmesh_core::hash::Digest;
use backmesh_core::jobs::queue::{Queue, QueuedRun};
use backmesh_core::log::history::{History, HistoryQuery};
use backmesh_core::log::mesh::MeshState;
use backmesh_core::log::signing::{sealed_records_of, slots};
use backmesh_core::log::state_disk;
use backmesh_core::store::{KvStore, MemKv, Store};
use serde_bytes::ByteBuf;

use super::{entry, finished, key, pin_bytes};

const NOW: i64 = 1_795_000_000_000;

struct Fixed;

impl Clock for Fixed {
    fn now_ms(&self) -> i64 {
        NOW
    }
}

/// A store's key-value pairs as one CBOR value: (tree, key, value) in order.
fn dumped(kv: &MemKv) -> Vec<u8> {
    let pairs: Vec<(String, ByteBuf, ByteBuf)> =
        kv.dump().into_iter().map(|(t, k, v)| (t, ByteBuf::from(k), ByteBuf::from(v))).collect();
    encode(&pairs)
}

/// Every file under `dir` (but `identity.key` and sled's own), by relative path.
fn files_under(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(dir).unwrap().to_string_lossy().into_owned();
                out.push((rel, std::fs::read(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}

/// A small archive's manifest, as a backup of three entries would make it.
fn manifest(raw: &[u8], member: &[u8]) -> Manifest {
    let members = vec![MemberRef {
        sha256: Digest::of(member),
        raw_len: raw.len() as u64,
        compressed_len: member.len() as u64,
        key: None,
    }];
    let file = |path: &str, kind: Kind, size: u64, mode: u32, link: Option<&str>| FileRecord {
        path: ByteBuf::from(path.as_bytes().to_vec()),
        kind,
        size,
        mode,
        mtime: 1_794_999_000,
        mtime_nsec: 250,
        uid: 1000,
        gid: 1000,
        link: link.map(|l| ByteBuf::from(l.as_bytes().to_vec())),
    };
    Manifest {
        id: "20261122T040113.000Z-0a1b2c3d".into(),
        node: "n1".into(),
        path: "/srv/app".into(),
        created_ms: NOW,
        order_ms: NOW,
        tree_digest: backmesh_core::archive::manifest::members_tree_digest(&members),
        members,
        files: vec![
            file("conf", Kind::Dir, 0, 0o755, None),
            file("conf/app.toml", Kind::File, 12, 0o640, None),
            file("current", Kind::Symlink, 0, 0o777, Some("conf")),
        ],
        tgz_sha256: Digest([0; 32]),
        tgz_len: member.len() as u64,
        raw_len: raw.len() as u64,
        stats: ArchiveStats { files: 1, dirs: 1, symlinks: 1, hardlinks: 0, content_bytes: 12 },
        warnings: vec![],
        excludes: vec!["*.log".into()],
        seal: None,
        tree_rule: TreeRule::Members,
        crypt: None,
    }
}

#[test]
fn golden_sealed_manifest() {
    let raw = vec![b'x'; 1536];
    let member = gzip_member(&raw, 6);
    pin_bytes("disk_member", &member);
    let mut m = manifest(&raw, &member);
    let bytes = m.seal_encoded(&key()).unwrap();
    let golden = pin_bytes("disk_manifest", &bytes);
    let back = Manifest::decode(&golden).unwrap();
    assert_eq!(back.signer(), Some(key().public().to_peer_id().to_string().as_str()), "sealed by the fixed key");
    assert_eq!(back, m, "the golden manifest reads back as the same archive");
    assert_eq!(back.encode(), golden, "and encodes back the same");
}

/// The one archive summary the store of the test below lists.
fn again_summary(store: &Store) -> backmesh_core::store::ArchiveSummary {
    store.list("n1", "/srv/app").unwrap().remove(0)
}

#[test]
fn golden_store_files_and_catalog_and_the_index_rebuilt_from_them() {
    let t = tempfile::tempdir().unwrap();
    let data = t.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("identity.key"), key().to_protobuf_encoding().unwrap()).unwrap();
    let kv = Arc::new(MemKv::default());
    let store = Store::open_with(&data, kv.clone()).unwrap().with_clock(Arc::new(Fixed));
    let raw = vec![b'x'; 1536];
    let member = gzip_member(&raw, 6);
    let mut m = manifest(&raw, &member);
    m.seal_with(store.identity()).unwrap();
    let mut txn = store.begin().unwrap();
    txn.member(&Digest::of(&member), &member).unwrap();
    txn.commit(&m).unwrap();
    let files: Vec<(String, ByteBuf)> = files_under(&data)
        .into_iter()
        .filter(|(p, _)| p != "identity.key")
        .map(|(p, b)| (p, ByteBuf::from(b)))
        .collect();
    pin_bytes("disk_store_files", &encode(&files));
    let catalog = pin_bytes("disk_catalog", &dumped(&kv));
    // An archive out of retention, kept hidden for the grace period: its
    // summary in the index gains `hidden` (absent while it is false).
    let mut hidden = again_summary(&store);
    hidden.hidden = true;
    let mut bytes = Vec::new();
    ciborium::into_writer(&hidden, &mut bytes).unwrap();
    pin_bytes("disk_archive_summary_hidden", &bytes);
    // The index is rebuildable: a store opened on the same files with an
    // empty index writes the same catalog.
    let fresh = Arc::new(MemKv::default());
    drop(store);
    let again = Store::open_with(&data, fresh.clone()).unwrap().with_clock(Arc::new(Fixed));
    assert_eq!(again.list("n1", "/srv/app").unwrap().len(), 1);
    let rebuilt: Vec<(String, Vec<u8>, Vec<u8>)> = fresh.dump();
    let golden: Vec<(String, ByteBuf, ByteBuf)> = ciborium::from_reader(&catalog[..]).unwrap();
    let archives = |v: &[(String, Vec<u8>, Vec<u8>)]| -> Vec<(Vec<u8>, Vec<u8>)> {
        v.iter().filter(|(t, _, _)| t == "archives").map(|(_, k, v)| (k.clone(), v.clone())).collect()
    };
    let golden: Vec<(String, Vec<u8>, Vec<u8>)> =
        golden.into_iter().map(|(t, k, v)| (t, k.into_vec(), v.into_vec())).collect();
    assert_eq!(archives(&rebuilt).len(), 1);
    assert_eq!(archives(&rebuilt)[0].0, archives(&golden)[0].0, "the same catalog key");
}

#[test]
fn golden_mesh_state_on_disk() {
    let mut state = MeshState::new();
    state.apply(&entry(7, finished()));
    let kv = MemKv::default();
    state_disk::persist(&mut state, &kv).unwrap();
    let golden = pin_bytes("disk_state", &dumped(&kv));
    let pairs: Vec<(String, ByteBuf, ByteBuf)> = ciborium::from_reader(&golden[..]).unwrap();
    let back = MemKv::default();
    for (tree, k, v) in pairs {
        back.put(&tree, &k, &v).unwrap();
    }
    let mut loaded = MeshState::new();
    state_disk::load(&back, &mut loaded).unwrap();
    assert_eq!(loaded, state, "the golden records load as the same state");
}

#[test]
fn golden_run_queue() {
    let kv = MemKv::default();
    let item = QueuedRun { path: "/srv/app".into(), on_demand: true, queued_ms: NOW, request: Some("r-1".into()) };
    Queue::persist(&kv, 3, &item).unwrap();
    let golden = pin_bytes("disk_queue", &dumped(&kv));
    let pairs: Vec<(String, ByteBuf, ByteBuf)> = ciborium::from_reader(&golden[..]).unwrap();
    let back = MemKv::default();
    for (tree, k, v) in pairs {
        back.put(&tree, &k, &v).unwrap();
    }
    let q = Queue::load(&back, 10).unwrap();
    assert_eq!(q.len(), 1);
    let running = std::collections::BTreeSet::new();
    assert_eq!(q.next(&running).map(|(id, i)| (id, i.clone())), Some((3, item)));
}

#[test]
fn golden_history_files() {
    let t = tempfile::tempdir().unwrap();
    let dir: PathBuf = t.path().join("history");
    let mut h = History::open(&dir).unwrap();
    let (a, b) = (entry(7, finished()), entry(8, backmesh_core::log::entry::Event::Paused { node: "n1".into() }));
    h.store(&a).unwrap();
    h.store(&b).unwrap();
    h.sync().unwrap();
    drop(h);
    let files: Vec<(String, ByteBuf)> = files_under(&dir).into_iter().map(|(p, b)| (p, ByteBuf::from(b))).collect();
    let golden = pin_bytes("disk_history", &encode(&files));
    // What was checked in reads back as the same two entries.
    let files: Vec<(String, ByteBuf)> = ciborium::from_reader(&golden[..]).unwrap();
    let again = t.path().join("again");
    std::fs::create_dir_all(&again).unwrap();
    for (p, b) in files {
        let p = again.join(p);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, b).unwrap();
    }
    let h = History::open(&again).unwrap();
    let page = h.page(&HistoryQuery { limit: 10, ..Default::default() }).unwrap();
    assert_eq!(page.entries, vec![a, b]);
}

#[test]
fn golden_signed_bodies() {
    // What an entry's origin signs.
    let e = entry(7, finished());
    pin_bytes("signed_entry", &e.signed_bytes());
    // What the writer of each register the entry writes signs.
    let mut msgs: Vec<(String, ByteBuf)> = Vec::new();
    for (k, mut r) in sealed_records_of(&e) {
        for s in slots(&k, &mut r) {
            msgs.push((s.what.to_string(), ByteBuf::from(s.msg.clone())));
        }
    }
    assert!(msgs.len() >= 3, "{msgs:?}");
    pin_bytes("signed_registers", &encode(&msgs));
    // An operator's order: its JSON, hex, and the Ed25519 signature over those bytes.
    pin_bytes("signed_order", golden_order().0.as_bytes());
}

/// An order of a fixed key, time and nonce (Ed25519 signs deterministically).
pub fn golden_order() -> backmesh_core::authority::SignedOrder {
    use backmesh_core::authority::{Act, Order};
    let text = format!("backmesh operator secret key v1\nsecret: {}\n", "07".repeat(32));
    let key = backmesh_api::order::OperatorKey::from_file_text(&text).unwrap();
    let act = Act::Run(backmesh_api::JobKey { node: "n2".into(), path: "/srv/app".into() });
    let order = Order { operator: key.public(), at_ms: 1_795_000_000_000, nonce: "00".repeat(16), act };
    key.sign_order(&order).unwrap()
}

#[test]
fn golden_reuse_records_and_stat_cache() {
    use backmesh_core::archive::reuse::{Chunk, Previous, Recorder, RecordsHeader, Reusable};
    use backmesh_core::archive::StatSnapshot;
    use backmesh_core::store::StatCacheEntry;
    let member = MemberRef { sha256: Digest::of(b"m"), raw_len: 4096, compressed_len: 1200, key: None };
    let records = vec![
        Reusable::Group {
            first: ByteBuf::from(b"conf/app.toml".to_vec()),
            entries: Digest::of(b"e"),
            member: member.clone(),
        },
        Reusable::Large {
            path: ByteBuf::from(b"db/big.dat".to_vec()),
            entry: None,
            chunks: vec![Chunk { raw: Digest::of(b"r"), member }],
        },
    ];
    let header = RecordsHeader::new(128 * 1024, 6);
    let t = tempfile::tempdir().unwrap();
    let file = t.path().join("records");
    let mut rec = Recorder::new(Box::new(std::fs::File::create(&file).unwrap()), &header);
    for r in &records {
        rec.push(r);
    }
    assert!(rec.finish());
    let golden = pin_bytes("disk_reuse_records", &std::fs::read(&file).unwrap());
    std::fs::write(&file, &golden).unwrap();
    let mut prev = Previous::open(&file, &header).expect("the golden records open");
    assert_eq!(prev.find(b"conf/app.toml"), Some(records[0].clone()));
    assert_eq!(prev.find(b"db/big.dat"), Some(records[1].clone()));
    // The stat cache entry of a series, as the store keeps it.
    let kv = Arc::new(MemKv::default());
    let data = t.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("identity.key"), key().to_protobuf_encoding().unwrap()).unwrap();
    let store = Store::open_with(&data, kv.clone()).unwrap();
    let entry = StatCacheEntry {
        snapshot: StatSnapshot { digest: Digest::of(b"s"), racy: false, entries: 3 },
        excludes: vec!["*.log".into()],
        archive_id: "20261122T040113.000Z-0a1b2c3d".into(),
        tree_digest: Digest::of(b"t"),
        kid: None,
    };
    store.set_stat_cache("n1", "/srv/app", &entry).unwrap();
    pin_bytes("disk_stat_cache", &dumped(&kv));
    assert_eq!(store.stat_cache("n1", "/srv/app").unwrap(), Some(entry));
}

#[test]
fn golden_bucket_object_names() {
    use backmesh_core::offsite::{manifest_key, member_key, parse_manifest_name};
    let names = [
        member_key(&Digest::of(b"m")),
        manifest_key("n1", "/srv/app", NOW, "20261122T040113.000Z-0a1b2c3d"),
        manifest_key("web/1", "/srv/app", -5, "a-1"),
    ];
    pin_bytes("disk_bucket_names", names.join("\n").as_bytes());
    assert_eq!(parse_manifest_name(&names[1]), Some((NOW, "20261122T040113.000Z-0a1b2c3d".to_string())));
}

/// Manifest format 6 (an encrypted archive's public part) over sealed
/// objects made under a fixed data key, and a data key bundle: the
/// objects and the manifest come out byte for byte (deterministic
/// sealing, ed25519); the bundle (age's ephemeral keys are random) is
/// made once and must still open with the fixed node identity.
#[test]
fn golden_encrypted_manifest_objects_and_key_bundle() {
    use backmesh_core::archive::manifest::objects::SUITE_XCHACHA_SIV;
    use backmesh_core::archive::manifest::objects_tree_digest;
    use backmesh_core::archive::manifest::{Crypt, ObjRef};
    use backmesh_crypt::wrap::{unwrap, wrap, Bundle, Identity};
    use backmesh_crypt::{seal_object, DataKey, Kind};
    let data_key = DataKey::from_secret([0x42; 32]);
    let node = Identity::of_node(&[7u8; 32]);
    let file = super::dir().join("disk_key_bundle.hex");
    if std::env::var("BACKMESH_GOLDEN").as_deref() == Ok("update") && !file.exists() {
        let bundle = Bundle {
            node: "n1".into(),
            peer: key().public().to_peer_id().to_string(),
            created_ms: NOW,
            key: DataKey::from_secret([0x42; 32]),
        };
        let recovery = Identity::of_operator(&[9u8; 32]);
        std::fs::write(&file, super::to_hex(&wrap(&bundle, &[node.recipient(), recovery.recipient()]).unwrap()))
            .unwrap();
    }
    let text = std::fs::read_to_string(&file).unwrap();
    let bundle = hex::decode(text.split_whitespace().collect::<String>()).unwrap();
    let opened = unwrap(&bundle, &node).unwrap();
    assert_eq!((opened.node.as_str(), opened.key.id()), ("n1", data_key.id()), "the golden bundle opens");
    assert_eq!(unwrap(&bundle, &Identity::of_operator(&[9u8; 32])).unwrap().key.id(), data_key.id());

    let raw = vec![b'x'; 1536];
    let member = seal_object(&data_key, Kind::Member, b"", &gzip_member(&raw, 6));
    pin_bytes("disk_sealed_member", &member);
    let obj = |b: &[u8]| ObjRef { cid: Digest::of(b), len: b.len() as u64 };
    let delta = seal_object(&data_key, Kind::Delta, &Digest::of(&member).0, b"delta ops and literals");
    let index = seal_object(&data_key, Kind::Index, b"", b"a group of the file table");
    let head = seal_object(&data_key, Kind::Head, b"", b"stats, warnings, excludes");
    let members = vec![
        MemberRef { sha256: Digest::of(&member), raw_len: 0, compressed_len: member.len() as u64, key: None },
        MemberRef {
            sha256: Digest::of(&delta),
            raw_len: 0,
            compressed_len: delta.len() as u64,
            key: Some(obj(&member)),
        },
    ];
    let index =
        vec![MemberRef { sha256: Digest::of(&index), raw_len: 0, compressed_len: index.len() as u64, key: None }];
    let mut m = Manifest {
        id: "20261122T040113.000Z-0a1b2c3d".into(),
        node: "n1".into(),
        path: "/srv/app".into(),
        created_ms: NOW,
        order_ms: NOW,
        tree_digest: objects_tree_digest(&members, &index, &obj(&head)),
        tgz_len: members.iter().map(|m| m.compressed_len).sum(),
        members,
        files: vec![],
        tgz_sha256: Digest([0; 32]),
        raw_len: 0,
        stats: ArchiveStats::default(),
        warnings: vec![],
        excludes: vec![],
        seal: None,
        tree_rule: TreeRule::Objects,
        crypt: Some(Crypt { suite: SUITE_XCHACHA_SIV, kid: [0; 8], keys: vec![bundle], index, head: obj(&head) }),
    };
    if let Some(c) = m.crypt.as_mut() {
        c.kid.copy_from_slice(&hex::decode(data_key.id()).unwrap());
    }
    let bytes = m.seal_encoded(&key()).unwrap();
    let golden = pin_bytes("disk_encrypted_manifest", &bytes);
    let back = Manifest::decode(&golden).unwrap();
    assert_eq!(back, m, "the golden manifest reads back as the same archive");
    assert_eq!(back.encode(), golden, "and encodes back the same");
}
