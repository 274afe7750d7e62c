//! `backmesh-sim`: runs backmesh's pure control-plane code at scale, with
//! simulated time, and prints what it measured.
//!
//! ```text
//! backmesh-sim profile [--nodes 100] [--jobs 10] [--every-min 5] [--days 30]
//!                      [--changed 0.1] [--replicas 3] [--keep 10] [--seed 1]
//!                      [--sealed 0|1]
//! ```
//!
//! ```text
//! backmesh-sim soak [--nodes 3] [--jobs 60] [--every 5] [--minutes 15] [--minute-secs 1]
//! ```
//!
//! ```text
//! backmesh-sim mesh [--nodes 100] [--jobs 1] [--every-min 5] [--rounds 90] [--loss 0.01]
//!                   [--dup 0.01] [--latency 0] [--partition 0.2] [--churn 0.02] [--replicas 3] [--keep 10]
//!                   [--seed 1] [--seeds 1] [--model compact|real]
//! ```
//!
//! `mesh` is the large-N simulator (`backmesh_simulations::mesh_sim`): N
//! nodes in one process on a seeded network with loss, duplication, a
//! partition and churn; one line per seed with the rounds to agree after
//! the heal, state and traffic per node, holder balance, repair bytes and
//! any invariant broken (then it exits 1, and the seed replays the run).
//!
//! `soak` starts real nodes on 127.0.0.1 (release binaries beside this
//! one), registers `--jobs` jobs spread over them, running every `--every`
//! job minutes of `--minute-secs` seconds, changes a few trees every 30 s,
//! and samples each node's resident memory, CPU time and API answer times
//! every 30 s for `--minutes`. At the end it kills the first node and
//! reads the whole log from another: every entry that node wrote must
//! still be there, the oldest included.
//!
//! `profile` is the long-running profile of a mesh: every job of every node
//! runs every `--every-min` minutes for `--days` days; a share `--changed`
//! of runs makes a new archive, copied to `--replicas` holders chosen by
//! the real placement code, and the origin and holders prune beyond
//! `--keep`. Every entry is folded into one node's `MeshState`, exactly as
//! a node does; at the end of each simulated day it prints the state's
//! size (records, encoded bytes, the process's resident memory), how long
//! each view takes, the entries gossiped, and what one node keeps of the
//! history on disk. With `--sealed 1` every node has an identity key and
//! signs and seals its entries as a node does (slower: a few signatures
//! per entry), and at the end a fresh node checks every record's seals,
//! as when it pulls the whole state from a peer.

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use backmesh_core::log::entry::{Entry, Event};
use backmesh_core::log::hlc::Clock;
use backmesh_core::log::mesh::MeshState;
use backmesh_core::log::records::BUCKETS;
use backmesh_core::log::signing::{seal_entry, Checked, NodeKeys};
use backmesh_core::log::state_disk;
use backmesh_core::placement::{holders, Candidate};
use backmesh_core::seal::Seal;
use backmesh_core::store::SledKv;

/// The system allocator, counting the bytes in use: what the profile's
/// state and store hold, apart from what the allocator keeps around.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call goes to the system allocator unchanged; only a counter
// is kept beside it.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        // SAFETY: as the caller's contract for `alloc`.
        let p = unsafe { System.alloc(l) };
        if !p.is_null() {
            LIVE.fetch_add(l.size(), Ordering::Relaxed);
        }
        p
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        // SAFETY: as the caller's contract for `alloc_zeroed`.
        let p = unsafe { System.alloc_zeroed(l) };
        if !p.is_null() {
            LIVE.fetch_add(l.size(), Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: as the caller's contract for `dealloc`.
        unsafe { System.dealloc(p, l) };
        LIVE.fetch_sub(l.size(), Ordering::Relaxed);
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        // SAFETY: as the caller's contract for `realloc`.
        let q = unsafe { System.realloc(p, l, new) };
        if !q.is_null() {
            LIVE.fetch_add(new, Ordering::Relaxed);
            LIVE.fetch_sub(l.size(), Ordering::Relaxed);
        }
        q
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn live_mib() -> f64 {
    LIVE.load(Ordering::Relaxed) as f64 / (1 << 20) as f64
}

const USAGE: &str = "usage: backmesh-sim profile [--nodes N] [--jobs J] [--every-min M] [--days D] [--changed F] [--replicas R] [--keep K] [--seed S] [--sealed 0|1]
       backmesh-sim soak [--nodes N] [--jobs J] [--every M] [--minutes T] [--minute-secs S]
       backmesh-sim mesh [--nodes N] [--jobs J] [--every-min M] [--rounds R] [--loss F] [--dup F] [--latency ROUNDS] [--partition F] [--churn F] [--replicas R] [--keep K] [--seed S] [--seeds K] [--model compact|real]";

struct Args(Vec<String>);

impl Args {
    fn get<T: std::str::FromStr>(&self, flag: &str, default: T) -> T {
        match self.0.iter().position(|a| a == flag) {
            Some(i) => self.0.get(i + 1).and_then(|v| v.parse().ok()).unwrap_or_else(|| {
                eprintln!("backmesh-sim: {flag} needs a value");
                std::process::exit(2)
            }),
            None => default,
        }
    }
}

/// xorshift64*: seeded, so every run replays.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

fn cbor_len<T: serde::Serialize>(v: &T) -> usize {
    let mut out = Vec::new();
    let _ = ciborium::into_writer(v, &mut out);
    out.len()
}

/// Median wall time of `f` over 5 runs, in milliseconds.
fn time_ms<R>(mut f: impl FnMut() -> R) -> f64 {
    let mut v: Vec<f64> = (0..5)
        .map(|_| {
            let t = Instant::now();
            std::hint::black_box(f());
            t.elapsed().as_secs_f64() * 1000.0
        })
        .collect();
    v.sort_by(|a, b| a.total_cmp(b));
    v[2]
}

struct Node {
    name: String,
    peer: String,
    clock: Clock,
    seq: u64,
    /// Its identity key, when entries are sealed.
    key: Option<libp2p::identity::Keypair>,
}

impl Node {
    fn entry(&mut self, now_ms: i64, event: Event) -> Entry {
        self.seq += 1;
        let mut e = Entry {
            origin: self.peer.clone(),
            origin_name: self.name.clone(),
            seq: self.seq,
            time: self.clock.tick(now_ms),
            sig: Seal::None,
            seals: Vec::new(),
            event,
        };
        if let Some(key) = &self.key {
            seal_entry(&mut e, key);
        }
        e
    }
}

/// The nodes' keys by name (every name bound to its node's key).
struct Keys(BTreeMap<String, libp2p::identity::PublicKey>);

impl NodeKeys for Keys {
    fn key_of(&self, name: &str) -> Option<libp2p::identity::PublicKey> {
        self.0.get(name).cloned()
    }
}

fn profile(a: &Args) {
    let n_nodes: usize = a.get("--nodes", 100);
    let jobs: usize = a.get("--jobs", 10);
    let every_min: i64 = a.get("--every-min", 5);
    let days: i64 = a.get("--days", 30);
    let changed: f64 = a.get("--changed", 0.1);
    let replicas: usize = a.get("--replicas", 3);
    let keep: usize = a.get("--keep", 10);
    let mut rng = Rng(a.get("--seed", 1u64) | 1);
    let sealed = a.get("--sealed", 0u8) == 1;

    let mut nodes: Vec<Node> = (0..n_nodes)
        .map(|i| {
            let name = format!("n{i:04}");
            let key = sealed.then(libp2p::identity::Keypair::generate_ed25519);
            let peer = key.as_ref().map_or(format!("12D3KooWsim{i:04}"), |k| k.public().to_peer_id().to_string());
            Node { clock: Clock::new(peer.clone()), name, peer, seq: 0, key }
        })
        .collect();
    let candidates: Vec<Candidate> = nodes
        .iter()
        .map(|n| Candidate { peer_id: n.peer.clone(), name: n.name.clone(), free_bytes: 100 << 30 })
        .collect();
    // The node whose view is measured, and what it keeps on disk.
    let me = nodes[0].name.clone();
    let mut state = MeshState::new();
    // Where the state's records go, as on a node (its signatures live
    // there only): written once per simulated tick, as a node writes
    // what changed each second.
    // The allocator as a node sets it (`bound_malloc` in node/src/main.rs):
    // two arenas, and free pages handed back every 30 s (here: before
    // each measure).
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only tunes glibc's own allocator, before any thread
    // of this profile is started.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
    let disk = tempfile::tempdir().expect("a temporary directory");
    let kv = SledKv::open(disk.path()).expect("a sled store");
    let start_rss = rss_bytes();
    let start_heap = live_mib();
    let t0: i64 = 1_795_000_000_000;
    // (series) → holders' names and archives kept, oldest first.
    let mut placement: BTreeMap<(usize, usize), Vec<usize>> = BTreeMap::new();
    let mut kept: BTreeMap<(usize, usize), VecDeque<String>> = BTreeMap::new();
    let mut entries_total: u64 = 0;
    let mut bytes_day: u64 = 0;
    let mut entries_day: u64 = 0;
    let mut kept_day: (u64, u64) = (0, 0);
    let mut fold_secs = 0.0;
    let mut persist_secs = 0.0;
    let mut written_day: u64 = 0;

    println!(
        "profile: {n_nodes} nodes × {jobs} jobs every {every_min} min, {:.0}% of runs make an archive, {replicas} holders, keep {keep}; {days} simulated days; the view of {me}",
        changed * 100.0
    );
    println!("| day | entries | records | state (CBOR) | RSS growth (heap in use) | fold µs/entry | state written/day (CPU) | jobs | jobs of a node | catalogs | one catalog | digest | gossip in/node/day | kept on disk by {me}/day |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");

    // Registrations first.
    for (ni, node) in nodes.iter_mut().enumerate() {
        for j in 0..jobs {
            let e = node.entry(
                t0,
                Event::Registered {
                    node: node.name.clone(),
                    path: format!("/srv/app{j}"),
                    every_min: every_min as u64,
                    excludes: vec![],
                    spec: Default::default(),
                },
            );
            state.apply(&e);
            let hs: Vec<usize> = holders(&node.name, &format!("/srv/app{j}"), &candidates, replicas + 1)
                .into_iter()
                .filter_map(|c| candidates.iter().position(|x| x.peer_id == c.peer_id))
                .filter(|h| *h != ni)
                .take(replicas)
                .collect();
            placement.insert((ni, j), hs);
        }
    }

    let ticks_per_day = 24 * 60 / every_min;
    let mut batch: Vec<Entry> = Vec::with_capacity(16);
    for day in 1..=days {
        for tick in 0..ticks_per_day {
            let base = t0 + ((day - 1) * ticks_per_day + tick) * every_min * 60_000;
            for ni in 0..n_nodes {
                for j in 0..jobs {
                    let now = base + (rng.next() % 60_000) as i64;
                    let path = format!("/srv/app{j}");
                    let name = nodes[ni].name.clone();
                    batch.clear();
                    batch.push(
                        nodes[ni].entry(now, Event::Started { node: name.clone(), path: path.clone(), request: None }),
                    );
                    if rng.unit() < changed {
                        let archive = format!("{now:013}-{:08x}", rng.next() as u32);
                        batch.push(nodes[ni].entry(
                            now + 2_000,
                            Event::Finished {
                                recent: Default::default(),
                                node: name.clone(),
                                path: path.clone(),
                                archive: archive.clone(),
                                size: 50 << 20,
                                files: 4_000,
                                duration_ms: 2_000,
                                warnings: vec![],
                                request: None,
                                plugin: None,
                            },
                        ));
                        let q = kept.entry((ni, j)).or_default();
                        q.push_back(archive.clone());
                        let pruned = (q.len() > keep).then(|| q.pop_front()).flatten();
                        let pruned_by = |holder: &str| {
                            pruned.as_ref().map(|old| Event::Pruned {
                                node: name.clone(),
                                path: path.clone(),
                                archive: old.clone(),
                                holder: holder.to_string(),
                            })
                        };
                        if let Some(event) = pruned_by(&name) {
                            batch.push(nodes[ni].entry(now + 2_001, event));
                        }
                        for h in placement[&(ni, j)].clone() {
                            let holder = nodes[h].name.clone();
                            batch.push(nodes[h].entry(
                                now + 3_000,
                                Event::Replicated {
                                    node: name.clone(),
                                    path: path.clone(),
                                    archive: archive.clone(),
                                    holder: holder.clone(),
                                    bytes: 1 << 20,
                                },
                            ));
                            if let Some(event) = pruned_by(&holder) {
                                batch.push(nodes[h].entry(now + 3_001, event));
                            }
                        }
                    } else {
                        batch.push(nodes[ni].entry(
                            now + 500,
                            Event::Unchanged {
                                recent: Default::default(),
                                node: name.clone(),
                                path: path.clone(),
                                archive: kept.get(&(ni, j)).and_then(|q| q.back().cloned()).unwrap_or_default(),
                                duration_ms: 500,
                                request: None,
                                plugin: None,
                            },
                        ));
                    }
                    let t = Instant::now();
                    for e in &batch {
                        state.apply(e);
                    }
                    fold_secs += t.elapsed().as_secs_f64();
                    for e in &batch {
                        let size = cbor_len(e) as u64;
                        bytes_day += size;
                        entries_day += 1;
                        // What `me` keeps durably: its own entries, entries about it,
                        // and entries of series it holds.
                        let holds = placement[&(ni, j)].contains(&0);
                        if e.origin_name == me || e.event.node() == me || holds {
                            kept_day.0 += 1;
                            kept_day.1 += size;
                        }
                    }
                }
            }
            let t = Instant::now();
            written_day += state_disk::persist(&mut state, &kv).expect("the state written").bytes;
            persist_secs += t.elapsed().as_secs_f64();
        }
        entries_total += entries_day;
        // Resident memory before the views allocate their answers, after
        // a trim as the node does every 30 s.
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        // SAFETY: malloc_trim only trims glibc's own allocator.
        unsafe {
            libc::malloc_trim(0);
        }
        let growth = rss_bytes().saturating_sub(start_rss);
        let heap = live_mib();
        let records = state.records();
        let encoded: usize = records.iter().map(|(k, r)| cbor_len(k) + cbor_len(r)).sum();
        let one = nodes[n_nodes / 2].name.clone();
        let t_jobs = time_ms(|| state.jobs());
        let t_jobs_of = time_ms(|| state.jobs_of(&one));
        let t_catalogs = time_ms(|| state.catalogs());
        let t_catalog = time_ms(|| state.catalog(&one, "/srv/app3"));
        // A cold digest: every bucket hashed again (a pull hashes only the
        // buckets that changed since the last one).
        let t_digest = time_ms(|| state.digest_cold());
        if day == 1 || day % 5 == 0 || day == days {
            println!(
                "| {day} | {entries_total} | {} | {:.1} MiB | {:.1} MiB ({:.1} MiB) | {:.2} | {:.0} MB ({:.1} s) | {:.2} ms | {:.3} ms | {:.2} ms | {:.3} ms | {:.1} ms | {:.0} MB ({entries_day} entries) | {:.1} MB ({} entries) |",
                records.len(),
                encoded as f64 / (1 << 20) as f64,
                growth as f64 / (1 << 20) as f64,
                heap - start_heap,
                fold_secs * 1e6 / entries_total as f64,
                written_day as f64 / 1e6,
                persist_secs,
                t_jobs,
                t_jobs_of,
                t_catalogs,
                t_catalog,
                t_digest,
                bytes_day as f64 / 1e6,
                kept_day.1 as f64 / 1e6,
                kept_day.0
            );
        }
        bytes_day = 0;
        persist_secs = 0.0;
        written_day = 0;
        entries_day = 0;
        kept_day = (0, 0);
    }
    if sealed {
        let keys = Keys(nodes.iter().filter_map(|n| Some((n.name.clone(), n.key.as_ref()?.public()))).collect());
        let fresh = MeshState::new();
        let mut found = Checked::default();
        let t = Instant::now();
        let mut kept = 0;
        for (k, mut r) in state.records() {
            // As a peer sends it: its signatures read back from disk.
            state_disk::with_seals(&kv, &k, &mut r).expect("the state read");
            kept += usize::from(fresh.check(&k, &mut r, &keys, &mut found));
        }
        println!();
        println!(
            "seals: a fresh node checks all {} records in {:.2} s ({kept} kept, {} forged, {} unproven)",
            state.len(),
            t.elapsed().as_secs_f64(),
            found.forged.len(),
            found.unproven
        );
    }
    let digest_bytes = BUCKETS * 8;
    println!();
    println!(
        "anti-entropy: a pull carries a {digest_bytes}-byte digest; one every 10 s is {:.1} MB/day out per node, answered only for buckets quiet for 5 s (empty while gossip keeps up).",
        (digest_bytes as f64 * 8_640.0) / 1e6
    );
    println!("jobs: {} registered", state.jobs().len());
    // What each part holds: freed when dropped.
    let all = live_mib();
    drop(kv);
    let without_store = live_mib();
    drop(state);
    let without_state = live_mib();
    println!(
        "heap in use at the end: {all:.1} MiB; the state {:.1} MiB, its store (sled, cache and all) {:.1} MiB, the rest (this profile's bookkeeping) {without_state:.1} MiB",
        without_store - without_state,
        all - without_store,
    );
}

/// `GET path` on 127.0.0.1:`port`; the status code, body and time taken.
fn http_get(port: u16, path: &str) -> Option<(u16, String, f64)> {
    use std::io::{Read, Write};
    let t = Instant::now();
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(30))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let ms = t.elapsed().as_secs_f64() * 1000.0;
    let code = out.split(' ').nth(1)?.parse().ok()?;
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Some((code, body, ms))
}

/// (resident bytes, CPU seconds) of process `pid`.
fn proc_usage(pid: u32) -> (u64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap_or(0)
        * 1024;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces): utime is the 14th field overall.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    let hz = 100.0; // USER_HZ on Linux
    (rss, (ticks(11) + ticks(12)) / hz)
}

fn soak(a: &Args) {
    use backmesh_simulations::{wait_until, Mesh};
    use std::time::Duration;
    let n_nodes: usize = a.get("--nodes", 3);
    let jobs: usize = a.get("--jobs", 60);
    let every: u64 = a.get("--every", 5);
    let minutes: u64 = a.get("--minutes", 15);
    let minute_secs: String = a.get("--minute-secs", "1".to_string());
    let names: Vec<String> = (1..=n_nodes).map(|i| format!("n{i}")).collect();
    let mut mesh = Mesh::new();
    mesh.env.push(("BACKMESH_MINUTE_SECS".into(), minute_secs.clone()));
    mesh.down_after = 5;
    for (i, name) in names.iter().enumerate() {
        let n = mesh.start(name, i.checked_sub(1), &[]);
        assert!(mesh.wait_ready(n, Duration::from_secs(60)), "{name} never answered:\n{}", mesh.nodes[n].log_text());
    }
    let root = mesh.root.path().to_path_buf();
    let mut trees = Vec::new();
    for j in 0..jobs {
        let dir = root.join(format!("app{j}"));
        std::fs::create_dir_all(&dir).expect("tree");
        for f in 0..20 {
            std::fs::write(dir.join(format!("f{f}.txt")), format!("job {j} file {f}\n").repeat(200)).expect("file");
        }
        let node = &names[j % n_nodes];
        let out = mesh.cli(j % n_nodes, &["register", node, &dir.to_string_lossy(), "--every", &every.to_string()]);
        assert!(out.status.success(), "register: {}", String::from_utf8_lossy(&out.stderr));
        trees.push(dir);
    }
    eprintln!("{jobs} jobs on {n_nodes} nodes, every {every} job minutes of {minute_secs} s; sampling every 30 s for {minutes} min");
    println!("| min | node | RSS | CPU in the last 30 s | /jobs | /status | /log?limit=100 |");
    println!("|---|---|---|---|---|---|---|");
    let start = Instant::now();
    let mut last_cpu = vec![0.0; n_nodes];
    let mut worst_api: f64 = 0.0;
    let mut sample = 0u64;
    while start.elapsed() < Duration::from_secs(minutes * 60) {
        std::thread::sleep(Duration::from_secs(30));
        sample += 1;
        // A few trees change: new archives, copies, prunes.
        for k in 0..(jobs / 10).max(1) {
            let j = (sample as usize * 7 + k * 13) % jobs;
            let _ = std::fs::write(trees[j].join("changed.txt"), format!("sample {sample}\n"));
        }
        for i in 0..n_nodes {
            let pid = mesh.nodes[i].pid().unwrap_or(0);
            let (rss, cpu) = proc_usage(pid);
            let api = mesh.nodes[i].api;
            let t_jobs = http_get(api, "/api/v1/jobs").map(|r| r.2).unwrap_or(f64::NAN);
            let t_status = http_get(api, "/api/v1/status").map(|r| r.2).unwrap_or(f64::NAN);
            let log = http_get(api, "/api/v1/log?limit=100");
            let t_log = log.as_ref().map(|r| r.2).unwrap_or(f64::NAN);
            worst_api = worst_api.max(t_jobs).max(t_status).max(t_log);
            println!(
                "| {:.1} | {} | {:.1} MiB | {:.2} s | {:.1} ms | {:.1} ms | {:.1} ms |",
                start.elapsed().as_secs_f64() / 60.0,
                names[i],
                rss as f64 / (1 << 20) as f64,
                cpu - last_cpu[i],
                t_jobs,
                t_status,
                t_log
            );
            last_cpu[i] = cpu;
        }
    }
    println!();
    println!("slowest API answer: {worst_api:.1} ms");
    // Every entry n1 wrote, the oldest included, read from another node after n1 is gone.
    let max_seq = {
        // n1's newest seq, from its own log.
        let all = mesh.cli_json::<backmesh_api::LogPage>(0, &["log", "--limit", "1000000"]).unwrap_or_default().entries;
        println!("the whole log, read from n1: {} entries", all.len());
        all.iter().filter(|e| e.origin_name == "n1").map(|e| e.seq).max().unwrap_or(0)
    };
    mesh.kill9(0);
    let t = Instant::now();
    let ok = wait_until(Duration::from_secs(60), || {
        let page = mesh.cli_json::<backmesh_api::LogPage>(1, &["log", "--limit", "1000000"]).unwrap_or_default();
        let seqs: std::collections::BTreeSet<u64> =
            page.entries.iter().filter(|e| e.origin_name == "n1").map(|e| e.seq).collect();
        // Every entry n1 had written when asked, the oldest included (it may
        // have written a few more before it was killed).
        let complete = (1..=max_seq).all(|s| seqs.contains(&s));
        if !complete {
            eprintln!("n2 reads {} of n1's {max_seq} entries (oldest {:?})", seqs.len(), seqs.first());
        }
        complete
    });
    println!(
        "after n1 was killed, n2's `backmesh log` returned {} of the {max_seq} entries n1 wrote, seq 1 included ({:.1} s)",
        if ok { "all" } else { "NOT all" },
        t.elapsed().as_secs_f64()
    );
    if !ok {
        std::process::exit(1);
    }
}

fn mesh(a: &Args) {
    use backmesh_simulations::mesh_sim::{run, Config, Model};
    let d = Config::default();
    let model = match a.get("--model", "compact".to_string()).as_str() {
        "real" => Model::Real,
        "compact" => Model::Compact,
        other => {
            eprintln!("backmesh-sim: --model is `real` or `compact`, not `{other}`");
            std::process::exit(2)
        }
    };
    let base = Config {
        nodes: a.get("--nodes", d.nodes),
        jobs: a.get("--jobs", d.jobs),
        every_min: a.get("--every-min", d.every_min),
        load_rounds: a.get("--rounds", d.load_rounds),
        loss: a.get("--loss", d.loss),
        dup: a.get("--dup", d.dup),
        latency_rounds: a.get("--latency", d.latency_rounds),
        partition: a.get("--partition", d.partition),
        churn: a.get("--churn", d.churn),
        replicas: a.get("--replicas", d.replicas),
        keep: a.get("--keep", d.keep),
        archive_bytes: d.archive_bytes,
        seed: a.get("--seed", d.seed),
        model,
    };
    let seeds: u64 = a.get("--seeds", 1);
    let goal = 2 * (usize::BITS - base.nodes.leading_zeros() - 1);
    println!(
        "mesh: {} nodes × {} jobs every {} min, {} rounds of 10 s; loss {}, dup {}, latency ≤ {} rounds, partition {}, churn {}; R {}, keep {}; {:?} model; goal ≤ 2·log2 N = {goal} rounds",
        base.nodes, base.jobs, base.every_min, base.load_rounds, base.loss, base.dup, base.latency_rounds, base.partition, base.churn, base.replicas, base.keep, base.model
    );
    println!("| seed | live | entries | rounds to agree | state/node | gossip in/node/day | anti-entropy/node/day (busy, whole) | heal: anti-entropy/node | archives held mean/max | repair moved / minimum (rounds) | wall | RSS | invariants |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    let mut failed = false;
    for seed in base.seed..base.seed + seeds {
        let t = Instant::now();
        let r = run(&Config { seed, ..base.clone() });
        let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
        failed |= !r.violations.is_empty();
        println!(
            "| {seed} | {} | {} | {} | {:.2} MiB | {:.1} MiB | {:.1} MiB | {:.2} MiB | {:.1} / {} | {:.0} / {:.0} GiB ({}) | {:.1} s | {:.0} MiB | {} |",
            r.live_nodes,
            r.entries,
            r.rounds_to_converge.map_or("never".to_string(), |n| n.to_string()),
            mib(r.state_bytes_per_node),
            mib(r.gossip_bytes_per_node_day),
            mib(r.anti_entropy_bytes_per_node_day),
            mib(r.heal_bytes_per_node),
            r.held_mean,
            r.held_max,
            mib(r.repair_bytes) / 1024.0,
            mib(r.repair_min_bytes) / 1024.0,
            r.repair_rounds.map_or("computed".to_string(), |n| format!("planned, {n} rounds")),
            t.elapsed().as_secs_f64(),
            mib(rss_bytes()),
            match (r.violations.is_empty(), r.lost_series) {
                (true, 0) => "held".to_string(),
                (true, n) => format!("held ({n} series lost with every copy)"),
                (false, _) => r.violations.join("; "),
            },
        );
    }
    if failed {
        std::process::exit(1);
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        eprintln!("{}", USAGE);
        return;
    }
    match args.first().map(String::as_str) {
        Some("profile") => profile(&Args(args)),
        Some("soak") => soak(&Args(args)),
        Some("mesh") => mesh(&Args(args)),
        _ => {
            eprintln!("{}", USAGE);
            std::process::exit(2);
        }
    }
}
