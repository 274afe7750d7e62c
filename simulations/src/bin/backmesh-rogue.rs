//! `backmesh-rogue`: a peer that holds the swarm key and lies, for the
//! rogue-node suite (`simulations/tests/mesh/rogue.rs`, docs/security.md).
//!
//! It joins a mesh as node `rogue` with a key of its own, learns the
//! other nodes from their hellos, tries each attack it is given against
//! the `--victim` node's series `--path`, kept by `--holder`, and prints
//! one JSON line per attack with what the mesh answered. It only speaks
//! the protocol: whether an attack did harm is for the test to find out
//! from the honest nodes.
//!
//! ```text
//! backmesh-rogue --swarm-key FILE --bootstrap HOST:PORT --victim NAME --holder NAME
//!                --path PATH --attacks forged-entry,out-of-authority,...
//! ```
//!
//! With `--identity-of DATA_DIR --name NAME` it is that node (stopped):
//! root on one of the mesh's own servers, with its identity key.
//!
//! Attacks:
//! - `forged-entry`: gossips a `finished` run of the victim's series with
//!   an archive it never made, in the victim's name, signed with its own key;
//! - `out-of-authority`: gossips, signed as itself, that the holder pruned
//!   the victim's archives, and a run of the victim's series;
//! - `future-clock`: gossips entries of its own dated a year ahead, and
//!   one at the greatest seq and time there are;
//! - `fake-archive`: makes an archive of the victim's series sealed with
//!   its own key and offers it to the holder, then commits it;
//! - `restore-overwrite`: asks the holder to restore the victim's series
//!   over `--restore-to`, without the operator's credential;
//! - `steal-archive`: asks the holder for the manifest of the victim's
//!   archive `--archives` and for a member of it, without an order and
//!   (with `--operator-key`) under an order to restore it on another node
//!   (as root on a node sees orders pass): every read is refused;
//! - `hook-registration`: gossips, signed as itself, a registration of a
//!   job of the holder's for `--hook-path` with a `pre` hook that touches
//!   `--marker`: only the holder writes its jobs;
//! - `forged-revocation`: revokes the victim under an operator key of its
//!   own making and says so in its hellos for 3 s: no honest node trusts
//!   that key, so the victim stays;
//! - `stranger-order`: asks the holder to register that job under an
//!   order signed by an operator key of the rogue's own making;
//! - `no-order`: asks the holder to register that job, and to run a
//!   backup, without any order;
//! - `replayed-order` (with `--operator-key FILE`: the operator's key,
//!   standing for an order the rogue saw pass through its node): sends an
//!   order meant for the holder to the victim, then to the holder twice:
//!   carried out once, then refused as a replay;
//! - `lie-holder`: claims boundless free space, so that placement elects
//!   it, and for `--serve-secs` says it keeps every archive offered to it
//!   (`Want { complete }`, `Committed`, `Archives`) while keeping nothing
//!   (it answers no `Get`). It prints its peer id first;
//! - `path-escape`: offers and commits an archive of its own whose id is
//!   `../../escape` (sealed with its own key, so only the id is wrong):
//!   nothing may be written outside the store (a request naming such an
//!   id cannot even be made with these types, and does not decode:
//!   `a_request_naming_a_climbing_id_does_not_decode`);
//! - `over-quota`: pushes `--flood N` archives of 1 MiB of its own (one
//!   series each) to the holder: past the holder's `--quota` each is
//!   refused, whatever its retention would keep;
//! - `commit-first`: commits an archive of its own of 1 MiB without
//!   offering it first (a commit names the members it lacks too): the
//!   quota holds all the same;
//! - `many-connections`: opens 12 connections to the holder at once;
//! - `request-flood`: sends the holder 400 requests at once (again, up to 3
//!   times, until some are refused as too many in flight);
//! - `old-protocol` (with `--protocol N`, another mesh protocol than the
//!   mesh's): sends the holder a request and gossips an entry of its own:
//!   a node of another protocol is refused whole.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use backmesh_core::archive::Manifest;
use backmesh_core::codec::encode;
use backmesh_core::log::entry::{Entry, Event};
use backmesh_core::log::hlc::Hlc;
use backmesh_core::log::signing::seal_entry;
use backmesh_core::net::client::{Inbound, NetClient, RequestError};
use backmesh_core::net::membership::NodeInfo;
use backmesh_core::net::swarm;
use backmesh_core::protocols::{self, MESH_PROTOCOL};
use backmesh_core::replica::proto::{
    name, series, xfer, ArchiveId, ReplicaRequest, WireMember, XferRequest, XferResponse, REPLICA, XFER,
};
use backmesh_core::store::{Retention, Store};

struct Args(Vec<String>);

impl Args {
    fn get(&self, flag: &str) -> Option<String> {
        self.0.iter().position(|a| a == flag).and_then(|i| self.0.get(i + 1)).cloned()
    }
    fn need(&self, flag: &str) -> String {
        self.get(flag).unwrap_or_else(|| {
            eprintln!("backmesh-rogue: {flag} is required");
            std::process::exit(2)
        })
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

fn say(attack: &str, answer: impl std::fmt::Display) {
    println!("{}", serde_json::json!({ "attack": attack, "answer": answer.to_string() }));
}

struct Rogue {
    key: libp2p::identity::Keypair,
    me: String,
    net: NetClient,
    seq: u64,
    /// Node name → peer id, from hellos.
    peers: std::collections::BTreeMap<String, String>,
    /// Node name → its mesh address, from hellos.
    addrs: std::collections::BTreeMap<String, String>,
    /// An operator key no honest node trusts.
    stranger: backmesh_api::order::OperatorKey,
    /// The name it goes by (`rogue`, or `--name`).
    name: String,
}

impl Rogue {
    /// An entry of its own (or, with `origin`, in another peer's name),
    /// signed and sealed with its own key either way.
    fn entry(&mut self, origin: Option<(&str, &str)>, seq: Option<u64>, wall_ms: i64, event: Event) -> Entry {
        self.seq += 1;
        let (origin, name) = origin.map_or((self.me.clone(), self.name.clone()), |(p, n)| (p.into(), n.into()));
        let time = Hlc { wall_ms, logical: 0, node: origin.clone() };
        let mut e = Entry::new(origin, name, seq.unwrap_or(self.seq), time, event);
        seal_entry(&mut e, &self.key);
        e
    }

    async fn gossip(&self, e: &Entry) {
        let _ = self.net.publish(backmesh_core::log::proto::LOG_TOPIC, encode(e)).await;
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let a = Args(std::env::args().skip(1).collect());
    let swarm_key = swarm_key(&a.need("--swarm-key"));
    let bootstrap: SocketAddr = a.need("--bootstrap").parse().expect("--bootstrap HOST:PORT");
    let (victim, holder) = (a.need("--victim"), a.need("--holder"));
    let attacks = a.need("--attacks");
    // `--identity-of DATA_DIR --name NAME`: root on that node, with its
    // identity key (the node itself stopped), rather than a key of its own.
    let key = match a.get("--identity-of") {
        Some(dir) => backmesh_core::store::load_identity(std::path::Path::new(&dir)).expect("the node's identity key"),
        None => libp2p::identity::Keypair::generate_ed25519(),
    };
    let name = a.get("--name").unwrap_or_else(|| "rogue".into());
    let me = key.public().to_peer_id().to_string();
    let info = NodeInfo {
        name: name.clone(),
        site: String::new(),
        free_bytes: if attacks.contains("lie-holder") { u64::MAX } else { 1 << 40 },
        address: String::new(),
        version: env!("CARGO_PKG_VERSION").into(),
        swarm_key: None,
        recipient: None,
    };
    // An operator key of the rogue's own making, which its own network
    // trusts: the revocations it signs go out in its hellos.
    let stranger = backmesh_api::order::OperatorKey::generate().expect("a key");
    let own_authority =
        std::sync::Arc::new(backmesh_core::authority::Authority::new(&[stranger.public()]).expect("a key"));
    let (net, mut inbound, event_loop) = swarm::new(swarm::NetConfig {
        keypair: key.clone(),
        listen: "127.0.0.1:0".parse().expect("an address"),
        bootstrap: vec![bootstrap],
        swarm_key: Some(swarm_key),
        mdns: false,
        ping_every: Duration::from_millis(500),
        hello_every: Duration::from_secs(1),
        info,
        // Its own side does not stop it opening more than honest nodes take.
        connections_per_peer: 64,
        outbound_per_peer: 4096,
        partition: None,
        authority: own_authority,
        revocations: None,
        // `--protocol N`: a node of another version, to be refused whole.
        protocol: a.get("--protocol").and_then(|p| p.parse().ok()).unwrap_or(MESH_PROTOCOL),
        protocols: protocols::all(),
        topics: protocols::topics(),
        max_gossip: protocols::MAX_GOSSIP,
    })
    .expect("the rogue's network");
    tokio::spawn(event_loop.run());
    let mut rogue =
        Rogue { key, me, net, seq: 0, peers: Default::default(), addrs: Default::default(), stranger, name };

    // Learn who is who from hellos (bounded), then give gossipsub a few
    // heartbeats to take this peer into its mesh.
    let end = Instant::now() + Duration::from_secs(20);
    while !(rogue.peers.contains_key(&victim) && rogue.peers.contains_key(&holder)) {
        let left = end.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, inbound.recv()).await {
            Ok(Some(Inbound::Hello { peer, info })) => {
                rogue.addrs.insert(info.name.clone(), info.address);
                rogue.peers.insert(info.name, peer);
            }
            // Under `--protocol`, the others are met as of another
            // protocol: "NAME runs backmesh …".
            Ok(Some(Inbound::Incompatible { peer, what: Some(what) })) => {
                let name = what.split_whitespace().next().unwrap_or_default().to_string();
                rogue.peers.insert(name, peer);
            }
            Ok(Some(_)) => {}
            _ => {
                eprintln!("backmesh-rogue: did not meet {victim} and {holder} within 20 s");
                std::process::exit(1)
            }
        }
    }
    // Everything else the mesh says is heard and dropped, but for the
    // lying holder's answers.
    let lying = attacks.split(',').any(|a| a == "lie-holder");
    tokio::spawn(async move {
        let mut offered: Vec<String> = Vec::new();
        while let Some(event) = inbound.recv().await {
            let Inbound::Request(x) = event else { continue };
            if !lying || x.protocol != XFER.name {
                continue;
            }
            let Ok(request) = backmesh_core::codec::decode::<XferRequest>(&x.body, XFER.max_request) else {
                continue;
            };
            let answer = match request {
                XferRequest::Offer { manifest, .. } | XferRequest::Commit { manifest, .. } => {
                    if let Ok(m) = backmesh_core::archive::Manifest::decode(&manifest) {
                        if !offered.contains(&m.id) {
                            offered.push(m.id.clone());
                        }
                    }
                    XferResponse::Want { missing: Vec::new(), complete: true }
                }
                XferRequest::List { .. } => {
                    let ids = offered.iter().filter_map(|id| ArchiveId::parse(id.as_str()).ok()).collect();
                    XferResponse::Archives { ids }
                }
                _ => XferResponse::Refused { reason: "not now".into() },
            };
            x.reply.typed::<XferResponse>().send(&answer);
        }
    });
    tokio::time::sleep(Duration::from_secs(3)).await;

    let victim_peer = rogue.peers[&victim].clone();
    let holder_peer = rogue.peers[&holder].clone();
    // The gossiped attacks go out twice, 2 s apart, each time as new
    // entries: a first message may find no peer that has said yet that it
    // listens to the topic (on a loaded machine), and is then lost.
    for wave in 0..2 {
        if wave == 1 {
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        for attack in attacks.split(',').filter(|a| wave == 0 || GOSSIPED.contains(a)) {
            run_attack(&mut rogue, &a, attack, &victim_peer, &holder_peer).await;
        }
    }
    // Let gossip leave before the process does.
    tokio::time::sleep(Duration::from_secs(2)).await;
    rogue.net.shutdown().await;
}

/// The attacks sent as gossip (the others are requests to the holder).
const GOSSIPED: [&str; 4] = ["forged-entry", "out-of-authority", "future-clock", "hook-registration"];

async fn run_attack(rogue: &mut Rogue, a: &Args, attack: &str, victim_peer: &str, holder_peer: &str) {
    let (victim, holder, path) = (a.need("--victim"), a.need("--holder"), a.need("--path"));
    match attack {
        "forged-entry" => {
            let event = Event::Finished {
                recent: Default::default(),
                node: victim.clone(),
                path: path.clone(),
                archive: "29991231T000000.000Z-f0f0f0f0".into(),
                size: 1,
                files: 1,
                duration_ms: 1,
                warnings: vec![],
                request: None,
                plugin: None,
            };
            let e = rogue.entry(Some((victim_peer, &victim)), Some(1 << 40), now_ms(), event);
            rogue.gossip(&e).await;
            say(attack, "sent");
        }
        "out-of-authority" => {
            for archive in a.get("--archives").unwrap_or_default().split(',').filter(|s| !s.is_empty()) {
                let event = Event::Pruned {
                    node: victim.clone(),
                    path: path.clone(),
                    archive: archive.into(),
                    holder: holder.clone(),
                };
                let e = rogue.entry(None, None, now_ms(), event);
                rogue.gossip(&e).await;
            }
            let run = Event::Failed {
                recent: Default::default(),
                node: victim.clone(),
                path: path.clone(),
                error: "forged by the rogue".into(),
                duration_ms: 1,
                request: None,
                plugin: None,
            };
            let e = rogue.entry(None, None, now_ms(), run);
            rogue.gossip(&e).await;
            say(attack, "sent");
        }
        "future-clock" => {
            let year = 365 * 86_400_000;
            let pause = Event::Paused { node: "rogue".into() };
            let e = rogue.entry(None, None, now_ms() + year, pause);
            rogue.gossip(&e).await;
            let resume = Event::Resumed { node: "rogue".into() };
            let e = rogue.entry(None, Some(u64::MAX), i64::MAX / 2, resume);
            rogue.gossip(&e).await;
            say(attack, "sent");
        }
        "fake-archive" => {
            let answer = fake_archive(&rogue.net, holder_peer, &victim, &path).await;
            say(attack, answer);
        }
        "restore-overwrite" => {
            let to = a.need("--restore-to");
            let request = ReplicaRequest::Restore {
                node: name(&victim).expect("a valid name"),
                path: series(&path).expect("a valid path"),
                archive: None,
                to,
                overwrite: true,
                request: "rogue-restore".into(),
                order: None,
                key: None,
                include: Vec::new(),
            };
            let answer = match rogue
                .net
                .call::<_, backmesh_core::replica::proto::ReplicaAnswer>(holder_peer, &REPLICA, &request)
                .await
            {
                Ok(r) => format!("{r:?}"),
                Err(e) => format!("error: {e:?}"),
            };
            say(attack, answer);
        }
        "forged-revocation" => {
            // Signed with a key of its own: its hellos carry it to everyone.
            let act = backmesh_core::authority::Act::Revoke { node: victim.clone(), peer: victim_peer.to_string() };
            let order = rogue.stranger.sign(act, now_ms()).expect("signed");
            say(attack, format!("{:?}", rogue.net.trust(order).await));
            tokio::time::sleep(Duration::from_secs(3)).await;
        }
        "stranger-order" | "no-order" => {
            use backmesh_core::jobs::proto::{JobsAnswer, JobsRequest, JOBS};
            let register = backmesh_api::Register {
                node: holder.clone(),
                path: a.need("--hook-path"),
                every: 600,
                excludes: vec![],
                spec: backmesh_api::JobSpec {
                    pre: Some(format!("touch {}", a.need("--marker"))),
                    ..Default::default()
                },
            };
            let act = backmesh_core::authority::Act::Register(register);
            let mut asks = Vec::new();
            if attack == "stranger-order" {
                let mine = backmesh_api::order::OperatorKey::generate().expect("a key");
                asks.push(JobsRequest::Change { order: mine.sign(act.clone(), now_ms()).expect("signed"), act });
            } else {
                // A Change cannot be made without an order; an empty one is none.
                let none = backmesh_core::authority::SignedOrder(String::new());
                asks.push(JobsRequest::Change { act, order: none });
                let path = series(&a.need("--hook-path")).expect("a valid path");
                asks.push(JobsRequest::Run { path, request: None, order: None });
            }
            for ask in asks {
                let answer = match rogue.net.call::<_, JobsAnswer>(holder_peer, &JOBS, &ask).await {
                    Ok(r) => format!("{r:?}"),
                    Err(e) => format!("error: {e:?}"),
                };
                say(attack, answer);
            }
        }
        "replayed-order" => {
            use backmesh_core::jobs::proto::{JobsAnswer, JobsRequest, JOBS};
            let text = std::fs::read_to_string(a.need("--operator-key")).expect("the operator key");
            let key = backmesh_api::order::OperatorKey::from_file_text(&text).expect("an operator key");
            let act = backmesh_core::authority::Act::Resume { node: holder.clone() };
            let order = key.sign(act.clone(), now_ms()).expect("signed");
            let ask = JobsRequest::Change { act, order };
            for (who, peer) in [("victim", victim_peer), ("holder", holder_peer), ("holder again", holder_peer)] {
                let answer = match rogue.net.call::<_, JobsAnswer>(peer, &JOBS, &ask).await {
                    Ok(JobsAnswer::Recorded { .. }) => "Recorded".to_string(),
                    Ok(r) => format!("{r:?}"),
                    Err(e) => format!("error: {e:?}"),
                };
                say(attack, format!("{who}: {answer}"));
            }
        }
        "hook-registration" => {
            let spec = backmesh_core::jobs::plugin::JobSpec {
                pre: Some(format!("touch {}", a.need("--marker"))),
                ..Default::default()
            };
            let event = Event::Registered {
                node: holder.clone(),
                path: a.need("--hook-path"),
                every_min: 600,
                excludes: vec![],
                spec,
            };
            let e = rogue.entry(None, None, now_ms(), event);
            rogue.gossip(&e).await;
            say(attack, "sent");
        }
        "lie-holder" => {
            println!("{}", serde_json::json!({ "peer": rogue.me }));
            let secs: u64 = a.get("--serve-secs").and_then(|s| s.parse().ok()).unwrap_or(30);
            tokio::time::sleep(Duration::from_secs(secs)).await;
            say(attack, "served");
        }
        "steal-archive" => {
            use backmesh_core::replica::proto::ReadOf;
            let archive = a.get("--archives").unwrap_or_default();
            let first = archive.split(',').next().unwrap_or_default().to_string();
            let seen = a.get("--operator-key").map(|k| {
                let text = std::fs::read_to_string(k).expect("the operator key");
                let key = backmesh_api::order::OperatorKey::from_file_text(&text).expect("an operator key");
                let act = backmesh_core::authority::Act::Restore(backmesh_api::Restore {
                    node: victim.clone(),
                    path: path.clone(),
                    archive: None,
                    to: "/tmp/elsewhere".into(),
                    on: Some(victim.clone()),
                    overwrite: false,
                    key: None,
                    include: Vec::new(),
                });
                key.sign(act, now_ms()).expect("signed")
            });
            for order in [None, seen] {
                let ask = XferRequest::get_manifest(&victim, &path, Some(&first), order.as_ref()).expect("names");
                say(attack, format!("{:?}", xfer(&rogue.net, holder_peer, ask).await));
                let of = ReadOf::named(&victim, &path, &first, order.as_ref()).expect("names");
                let digest = backmesh_core::hash::Digest::of(b"any member");
                let ask = XferRequest::Get { digests: vec![digest], of };
                say(attack, format!("{:?}", xfer(&rogue.net, holder_peer, ask).await));
            }
        }
        "path-escape" => {
            let answer = escape(rogue, holder_peer).await;
            say(attack, answer);
        }
        "over-quota" => {
            let n: usize = a.get("--flood").and_then(|s| s.parse().ok()).unwrap_or(8);
            let answer = flood(rogue, holder_peer, n).await;
            say(attack, answer);
        }
        "commit-first" => {
            // Past its quota, an archive committed without an offer first.
            let answer = commit_first(rogue, holder_peer).await;
            say(attack, answer);
        }
        "many-connections" => {
            let addr: SocketAddr = match rogue.addrs.get(&holder).and_then(|a| a.parse().ok()) {
                Some(a) => a,
                None => return say(attack, format!("no address for {holder}")),
            };
            let dials = (0..12).map(|_| rogue.net.dial(addr));
            let answers = futures::future::join_all(dials).await;
            let ok = answers.iter().filter(|r| r.is_ok()).count();
            say(attack, format!("{ok} of 12 dials answered"));
        }
        "request-flood" => {
            // Requests go round-robin over the connections to a peer, and a
            // node takes at most 48 streams per connection and lane at once. Hold
            // more than one connection first (the holder keeps up to 4 of a
            // peer's), so that the flood meets the bound of 64 requests in
            // flight rather than the stream limit.
            if let Some(addr) = rogue.addrs.get(&holder).and_then(|a| a.parse::<SocketAddr>().ok()) {
                for _ in 0..3 {
                    let _ = rogue.net.dial(addr).await;
                }
            }
            // Whether 64 of them are ever unanswered at once is a race with
            // the holder's answers: an attacker floods again. Up to 3 floods.
            let list = || XferRequest::list(&victim, &path).expect("a valid name and path");
            let mut said = String::new();
            for flood in 1..=3 {
                let asks = (0..400).map(|_| xfer(&rogue.net, holder_peer, list()));
                let answers = futures::future::join_all(asks).await;
                let refused = answers
                    .iter()
                    .filter(|r| matches!(r, Err(RequestError::Refused(reason)) if reason.contains("in flight")))
                    .count();
                let failed = answers.iter().filter(|r| r.is_err()).count() - refused;
                said = format!("{refused} of 400 refused as too many in flight, {failed} failed (flood {flood})");
                if refused > 0 {
                    break;
                }
            }
            say(attack, said);
        }
        "old-protocol" => {
            // Run with `--protocol N`: a request and an entry of its own.
            let list = XferRequest::list(&victim, &path).expect("a valid name and path");
            let answer = match xfer(&rogue.net, holder_peer, list).await {
                Ok(r) => format!("{r:?}"),
                Err(e) => format!("error: {e:?}"),
            };
            let e = rogue.entry(None, None, now_ms(), Event::Paused { node: "rogue".into() });
            rogue.gossip(&e).await;
            say(attack, answer);
        }
        other => {
            eprintln!("backmesh-rogue: no attack `{other}`");
            std::process::exit(2)
        }
    }
}

fn swarm_key(path: &str) -> std::sync::Arc<backmesh_core::net::swarm_key::SwarmKeys> {
    let keys = backmesh_core::net::swarm_key::SwarmKeys::open(
        &PathBuf::from(path),
        None,
        Duration::from_secs(60),
        backmesh_core::clock::now_ms(),
    );
    keys.unwrap_or_else(|e| {
        eprintln!("backmesh-rogue: {e}");
        std::process::exit(2)
    })
}

/// Makes an archive of (victim, path) in a store of its own (so sealed
/// with its own key), offers it to `holder`, sends what it wants, and
/// commits it: the holder's last answer, in words.
async fn fake_archive(net: &NetClient, holder: &str, victim: &str, path: &str) -> String {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let src = dir.path().join("src");
    std::fs::create_dir_all(&src).expect("a source");
    std::fs::write(src.join("payload"), b"not the victim's data").expect("a file");
    let store = Store::open(&dir.path().join("store")).expect("a store");
    // The archive names the victim's series, whatever directory it read.
    let opts = backmesh_core::archive::create::CreateOptions::default();
    let run = backmesh_core::jobs::backup::run_backup_as(&store, victim, path, &src, &opts, Retention::keep(10));
    let manifest = match run.map(|r| r.outcome) {
        Ok(backmesh_core::jobs::backup::RunOutcome::Stored { manifest, .. }) => manifest,
        other => return format!("could not make the fake: {other:?}"),
    };
    let bytes = serde_bytes::ByteBuf::from(manifest.encode());
    let offer = xfer(net, holder, XferRequest::Offer { manifest: bytes.clone(), against: None }).await;
    match offer {
        Ok(XferResponse::Want { .. }) => {}
        other => return format!("offer: {other:?}"),
    }
    match xfer(net, holder, XferRequest::Commit { manifest: bytes, against: None, sent: 0, repair: false }).await {
        Ok(r) => format!("commit: {r:?}"),
        Err(e) => format!("commit: error: {e}"),
    }
}

/// An archive of the rogue's own series `path`, of `data`, made in a
/// scratch store (whose key sealed it: the caller seals it again).
fn own_archive(dir: &std::path::Path, path: &str, data: &[u8]) -> Result<(Store, Manifest), String> {
    let src = dir.join("src");
    std::fs::create_dir_all(&src).map_err(|e| e.to_string())?;
    std::fs::write(src.join("payload"), data).map_err(|e| e.to_string())?;
    let store = Store::open(&dir.join("store")).map_err(|e| e.to_string())?;
    let opts = backmesh_core::archive::create::CreateOptions::default();
    let run = backmesh_core::jobs::backup::run_backup_as(&store, "rogue", path, &src, &opts, Retention::keep(10));
    match run.map(|r| r.outcome) {
        Ok(backmesh_core::jobs::backup::RunOutcome::Stored { manifest, .. }) => Ok((store, *manifest)),
        other => Err(format!("could not make an archive: {other:?}")),
    }
}

/// Offers, sends and commits `m` (from `store`) to `holder`: the
/// holder's last answer, in words.
async fn push(net: &NetClient, holder: &str, store: &Store, m: &Manifest) -> String {
    let bytes = serde_bytes::ByteBuf::from(m.encode());
    let missing = match xfer(net, holder, XferRequest::Offer { manifest: bytes.clone(), against: None }).await {
        Ok(XferResponse::Want { missing, .. }) => missing,
        other => return format!("offer: {other:?}"),
    };
    let mut members = Vec::new();
    for d in missing {
        match store.read_member_unchecked(&d) {
            Ok(data) => members.push(WireMember { digest: d, data: data.into() }),
            Err(e) => return format!("cannot read member {d}: {e}"),
        }
    }
    if !members.is_empty() {
        match xfer(net, holder, XferRequest::Put { members, deltas: Vec::new() }).await {
            Ok(XferResponse::Stored) => {}
            other => return format!("put: {other:?}"),
        }
    }
    match xfer(net, holder, XferRequest::Commit { manifest: bytes, against: None, sent: 0, repair: false }).await {
        Ok(r) => format!("commit: {r:?}"),
        Err(e) => format!("commit: error: {e}"),
    }
}

/// `path-escape`: a sealed archive of its own under the id `../../escape`,
/// offered and committed.
async fn escape(rogue: &Rogue, holder: &str) -> String {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let (store, mut m) = match own_archive(dir.path(), "/rogue/escape", b"out of bounds") {
        Ok(x) => x,
        Err(e) => return e,
    };
    m.id = "../../escape".into();
    if let Err(e) = m.seal_with(&rogue.key) {
        return format!("cannot seal: {e}");
    }
    push(&rogue.net, holder, &store, &m).await
}

/// `over-quota`: `n` archives of 1 MiB of incompressible bytes, one
/// series each, pushed to `holder` one after the other.
async fn flood(rogue: &Rogue, holder: &str, n: usize) -> String {
    let (mut stored, mut refused, mut last) = (0, 0, String::new());
    for k in 0..n {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let data = noise((now_ms() as u64) ^ ((k as u64 + 1) << 32));
        let (store, mut m) = match own_archive(dir.path(), &format!("/rogue/flood-{k}"), &data) {
            Ok(x) => x,
            Err(e) => return e,
        };
        // Sealed by the rogue's own key, not that of the scratch store.
        if let Err(e) = m.seal_with(&rogue.key) {
            return format!("cannot seal: {e}");
        }
        let answer = push(&rogue.net, holder, &store, &m).await;
        if answer.contains("Committed") {
            stored += 1;
        } else {
            refused += 1;
            last = answer;
        }
    }
    format!("stored {stored}, refused {refused}; the last refusal: {last}")
}

/// `commit-first`: an archive of 1 MiB of its own, committed without an
/// offer; what the holder answered.
async fn commit_first(rogue: &Rogue, holder: &str) -> String {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let data = noise(now_ms() as u64);
    let (_store, mut m) = match own_archive(dir.path(), "/rogue/commit-first", &data) {
        Ok(x) => x,
        Err(e) => return e,
    };
    if let Err(e) = m.seal_with(&rogue.key) {
        return format!("cannot seal: {e}");
    }
    let bytes = serde_bytes::ByteBuf::from(m.encode());
    match xfer(&rogue.net, holder, XferRequest::Commit { manifest: bytes, against: None, sent: 0, repair: false }).await
    {
        Ok(r) => format!("commit: {r:?}"),
        Err(e) => format!("commit: error: {e}"),
    }
}

/// 1 MiB of bytes deflate cannot shrink (xorshift from `seed`).
fn noise(seed: u64) -> Vec<u8> {
    backmesh_simulations::noise(1 << 20, seed)
}
