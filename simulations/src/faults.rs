//! The fault-schedule runner: from a seed, a schedule of operations and
//! faults played against a mesh of real `backmesh-node` processes on
//! 127.0.0.1, then invariants checked once every fault is healed.
//!
//! Operations: change a tree, back it up (through any live node), restore
//! an archive (onto any live node) and compare it with the tree as it was
//! backed up, verify. Faults: `kill -9` (at any time, or a few hundred ms
//! into a backup), restart, a node frozen with SIGSTOP for a few seconds
//! (it goes silent as if cut off, then comes back), a member file of a
//! store corrupted on disk, a clock moved (a restart under `faketime`,
//! from an hour back to 90 s ahead; further ahead is the rogue suite's).
//!
//! After the schedule every node is restarted with its clock right and
//! thawed, and the runner waits for the mesh to settle. Then:
//! - every node shows the same catalog of every series, and holds the
//!   same mesh state (`status`: its digest);
//! - each series keeps exactly its newest min(keep, made) archives, on
//!   its node and every holder, and no other manifest is on any disk (no
//!   partial archive is visible);
//! - every archive a backup acknowledged that is still among them restores
//!   exactly, onto every node;
//! - every archive verifies (after one repair pass);
//! - every run request the mesh accepted has an outcome in the log.
//!
//! The schedule is drawn from the seed alone, so a failure replays with
//! `backmesh-soak --seed S` (the timing of processes can still differ).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use backmesh_api::cli::{RunOutcome, VerifyOutcome};
use backmesh_api::{Backups, LogPage, Queued, RunResult};

use crate::{manifests_on_disk, wait_until, Mesh};

mod disk;
pub mod schedule;

pub use disk::private_mounts;
use disk::{fill, mount_disk, unmount};
pub use schedule::{schedule, Config, Rng, Step};

/// What one seed came to.
#[derive(Debug, Default)]
pub struct Report {
    pub seed: u64,
    pub steps: usize,
    /// Faults injected, by kind.
    pub faults: BTreeMap<&'static str, usize>,
    /// Invariant checks made.
    pub checks: usize,
    pub violations: Vec<String>,
    /// Backups acknowledged, restores compared.
    pub backups: usize,
    pub restores: usize,
    /// Seconds from the heal until the mesh had settled.
    pub settle_secs: f64,
    /// Nodes that ended by themselves because their index failed for good
    /// after a full disk, and were started again (as a service manager does).
    pub revived: usize,
    pub secs: f64,
}

/// One backed-up tree: its node, directory, and every archive a backup
/// acknowledged with the tree it was made of.
struct Series {
    node: usize,
    dir: PathBuf,
    path: String,
    acked: Vec<(String, BTreeMap<String, Vec<u8>>)>,
}

struct Run {
    cfg: Config,
    mesh: Mesh,
    names: Vec<String>,
    down: BTreeSet<usize>,
    series: Vec<Series>,
    /// Run requests a node accepted (no-wait runs): each must end in the log.
    requests: Vec<(usize, String)>,
    report: Report,
    trace: Vec<String>,
    /// Each node's peer id, and the node cut off from the others, if any.
    peers: Vec<String>,
    cut: Option<usize>,
    /// Each node's data directory is a tmpfs of [`DISK`] bytes (when this
    /// process could make mounts of its own: [`private_mounts`]); the
    /// nodes whose disk is full now.
    disks: bool,
    full: BTreeSet<usize>,
    /// Nodes whose disk has been full during this run.
    filled: BTreeSet<usize>,
}

/// The variable naming a node's partition gate file (actors/src/net/swarm.rs).
const GATE: &str = "BACKMESH_TEST_PARTITION";

const T: Duration = Duration::from_secs(60);

/// How long the mesh may take to settle after the heal: a push retried
/// after its longest backoff (60 s), a copy mended (at most once a minute)
/// and pushed again.
const SETTLE: Duration = Duration::from_secs(300);

/// What the client printed on stdout, read as its answer `T`.
fn answer<T: serde::de::DeserializeOwned>(out: &std::process::Output) -> Option<T> {
    serde_json::from_slice(&out.stdout).ok()
}

/// The files of `dir` (relative path → content).
fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if let Ok(data) = std::fs::read(e.path()) {
            out.insert(e.file_name().to_string_lossy().into_owned(), data);
        }
    }
    out
}

/// The environment `faketime -f OFFSET` gives a program (its preload
/// library and offset, found by asking faketime itself): `+365d`, `-30s`.
pub fn faketime_env(offset: &str) -> Vec<(String, String)> {
    let Ok(out) = Command::new("faketime").args(["-f", offset, "env"]).output() else { return Vec::new() };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once('='))
        // Not FAKETIME_SHARED: it names the shared memory of that one
        // `faketime` process, gone once it exits.
        .filter(|(k, _)| k.starts_with("LD_PRELOAD") || (k.starts_with("FAKETIME") && *k != "FAKETIME_SHARED"))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

impl Run {
    fn up(&self) -> Vec<usize> {
        (0..self.names.len()).filter(|i| !self.down.contains(i)).collect()
    }

    /// A live node picked by `n` (there is always one: the runner never
    /// kills the last).
    fn live(&self, n: u64) -> usize {
        let up = self.up();
        up[(n as usize) % up.len()]
    }

    /// The gate file of node `n`.
    fn gate(&self, n: usize) -> PathBuf {
        self.mesh.root.path().join(format!("gate-{}", self.names[n]))
    }

    /// Cuts node `n` off from the others (`Some`), or mends the cut.
    fn set_cut(&mut self, cut: Option<usize>) {
        for i in 0..self.names.len() {
            let blocked: Vec<&str> = match cut {
                Some(c) if c == i => {
                    (0..self.names.len()).filter(|o| *o != i).map(|o| self.peers[o].as_str()).collect()
                }
                Some(c) => vec![self.peers[c].as_str()],
                None => Vec::new(),
            };
            let _ = std::fs::write(self.gate(i), blocked.join("\n"));
        }
        self.cut = cut;
    }

    /// Whether nodes `a` and `b` can talk (no cut between them).
    fn together(&self, a: usize, b: usize) -> bool {
        self.cut.is_none_or(|c| (c == a) == (c == b))
    }

    /// The environment of node `n`'s process: its gate, and a clock offset.
    fn env(&self, n: usize, offset_s: i64) -> Vec<(String, String)> {
        let mut env = vec![(GATE.to_string(), self.gate(n).to_string_lossy().into_owned())];
        if offset_s != 0 {
            env.extend(faketime_env(&format!("{offset_s:+}s")));
        }
        env
    }

    fn violation(&mut self, what: String) {
        eprintln!("seed {}: VIOLATION: {what}", self.cfg.seed);
        self.report.violations.push(what);
    }

    fn check(&mut self, ok: bool, what: impl FnOnce() -> String) {
        self.report.checks += 1;
        if !ok {
            let w = what();
            self.violation(w);
        }
    }

    /// Starts again every node whose process ended by itself, as its
    /// service manager would (`Restart=on-failure`). Only one end is
    /// rightful: a node whose disk was full exits with
    /// [`EXIT_INDEX_BROKEN`] once its index has failed for good.
    fn revive(&mut self) {
        use backmesh_core::store::health::EXIT_INDEX_BROKEN;
        for n in 0..self.names.len() {
            // A node down is the runner's to start (one that did not start
            // on a full disk stays down until the disk is freed).
            if self.down.contains(&n) {
                continue;
            }
            let Some(status) = self.mesh.nodes[n].exited() else { continue };
            let name = self.names[n].clone();
            let log = self.mesh.nodes[n].log_text();
            let tail: String = log.lines().rev().take(3).collect::<Vec<_>>().join(" | ");
            let rightful = status.code() == Some(EXIT_INDEX_BROKEN) && self.filled.contains(&n);
            self.check(rightful, || format!("{name} ended by itself ({status}): {tail}"));
            eprintln!("seed {}: {name} ended by itself ({status}); starting it again", self.cfg.seed);
            self.report.revived += 1;
            self.down.insert(n);
            self.start(n);
        }
    }

    fn play(&mut self, step: &Step) {
        self.revive();
        let note = format!("{step:?}");
        self.trace.push(note);
        // A cut or a full disk counts once, when it is made.
        let mending = match step {
            Step::Partition { .. } => self.cut.is_some(),
            Step::DiskFull { node } => !self.disks || self.full.contains(&(*node as usize % self.names.len())),
            _ => false,
        };
        if let Some(kind) = step.fault().filter(|_| !mending) {
            *self.report.faults.entry(kind).or_default() += 1;
        }
        match *step {
            Step::Change { series, files, seed } => self.change(series as usize % self.series.len(), files, seed),
            Step::Backup { series, via } => {
                let s = series as usize % self.series.len();
                // Asked through a node that can reach the series' node.
                let origin = self.series[s].node;
                let near: Vec<usize> = self.up().into_iter().filter(|n| self.together(*n, origin)).collect();
                if let Some(&via) = near.get(via as usize % near.len().max(1)) {
                    self.backup(s, via);
                }
            }
            Step::BackupKilled { series, after_ms } => {
                let s = series as usize % self.series.len();
                let origin = self.series[s].node;
                if self.down.contains(&origin) || self.up().len() < 2 {
                    return;
                }
                let out =
                    self.mesh.cli(origin, &["--json", "run", &self.names[origin], &self.series[s].path, "--no-wait"]);
                if let Some(q) = answer::<Queued>(&out) {
                    self.requests.push((s, q.request));
                }
                std::thread::sleep(Duration::from_millis(after_ms));
                self.mesh.kill9(origin);
                self.down.insert(origin);
            }
            Step::Restore { series, pick, on } => {
                let s = series as usize % self.series.len();
                let on = self.live(on);
                self.restore_step(s, pick, on);
            }
            Step::RestoreKilled { series, pick, on, after_ms } => {
                let s = series as usize % self.series.len();
                let on = self.live(on);
                if self.up().len() > 1 {
                    self.restore_killed(s, pick, on, after_ms);
                }
            }
            Step::Verify { via } => {
                let via = self.live(via);
                // Across a cut, the far side's copies are not reached: wait less.
                let wait = if self.cut.is_some() { "20" } else { "60" };
                let _ = self.mesh.cli(via, &["--json", "verify", "--timeout", wait]);
            }
            Step::DiskFull { node } => {
                let n = node as usize % self.names.len();
                if self.disks {
                    let ballast = self.mesh.nodes[n].dir.join("ballast");
                    if self.full.remove(&n) {
                        let _ = std::fs::remove_file(&ballast);
                    } else {
                        fill(&ballast);
                        self.full.insert(n);
                        self.filled.insert(n);
                    }
                }
            }
            Step::Kill { node } => {
                let n = node as usize % self.names.len();
                if !self.down.contains(&n) && self.up().len() > 1 {
                    self.mesh.kill9(n);
                    self.down.insert(n);
                }
            }
            Step::Restart { node } => {
                let down: Vec<usize> = self.down.iter().copied().collect();
                if let Some(&n) = down.get(node as usize % down.len().max(1)) {
                    self.start(n);
                }
            }
            Step::Freeze { node, secs } => {
                let n = node as usize % self.names.len();
                if let (false, Some(pid)) = (self.down.contains(&n), self.mesh.nodes[n].pid()) {
                    // SAFETY: kill(2) on our own child's pid.
                    unsafe { libc::kill(pid as i32, libc::SIGSTOP) };
                    std::thread::sleep(Duration::from_secs(secs));
                    // SAFETY: as above.
                    unsafe { libc::kill(pid as i32, libc::SIGCONT) };
                }
            }
            Step::Corrupt { node, pick } => {
                // A member another node keeps too: damage that can be
                // repaired. (Every copy damaged is lost data, for any tool.)
                let n = node as usize % self.names.len();
                let others: Vec<PathBuf> = (0..self.names.len())
                    .filter(|o| *o != n)
                    .map(|o| self.mesh.nodes[o].dir.join("segments"))
                    .collect();
                corrupt_one(&self.mesh.nodes[n].dir.join("segments"), &others, pick);
            }
            Step::Clock { node, offset_s } => {
                let n = node as usize % self.names.len();
                self.mesh.nodes[n].env = self.env(n, offset_s);
                self.mesh.kill9(n);
                self.down.insert(n);
                self.start(n);
            }
            Step::Partition { node } => {
                let n = node as usize % self.names.len();
                self.set_cut(if self.cut.is_some() { None } else { Some(n) });
            }
        }
    }

    fn start(&mut self, n: usize) {
        self.mesh.restart(n);
        // Up, or ended (a node does not start on a full disk): no need to
        // wait the whole minute for one that has already said no.
        let _ = wait_until(T, || self.mesh.status(n).is_some() || self.mesh.nodes[n].exited().is_some());
        if self.mesh.status(n).is_some() {
            self.down.remove(&n);
            return;
        }
        let log = self.mesh.nodes[n].log_text();
        let tail: String = log.lines().rev().take(5).collect::<Vec<_>>().join(" | ");
        // On a full disk a node does not start, and says why: it stays
        // down until the disk is freed (the mesh keeps its copies elsewhere).
        let said = tail.contains("No space left on device");
        let name = self.names[n].clone();
        self.check(self.full.contains(&n) && said, || format!("{name} did not start again: {tail}"));
    }

    fn change(&mut self, s: usize, files: u64, seed: u64) {
        let mut r = Rng::new(seed);
        let dir = self.series[s].dir.clone();
        for _ in 0..files {
            let name = format!("f{}.dat", r.below(12));
            if r.chance(20) {
                let _ = std::fs::remove_file(dir.join(&name));
                continue;
            }
            let len = r.below(48 << 10) as usize;
            // Half compressible text, half noise.
            let data: Vec<u8> = if r.chance(50) {
                (0..len).map(|i| b"backmesh keeps what it is given "[i % 32]).collect()
            } else {
                (0..len).map(|_| r.next_u64() as u8).collect()
            };
            let _ = std::fs::write(dir.join(name), data);
        }
    }

    fn backup(&mut self, s: usize, via: usize) {
        let before = snapshot(&self.series[s].dir);
        let (node, path) = (self.names[self.series[s].node].clone(), self.series[s].path.clone());
        let out = self.mesh.cli(via, &["--json", "run", &node, &path, "--timeout", "60"]);
        let Some(v) = answer::<RunOutcome>(&out) else { return };
        match v.result {
            RunResult::Finished => {
                if let Some(id) = v.archive {
                    self.series[s].acked.push((id, before));
                    self.report.backups += 1;
                }
            }
            RunResult::Unchanged => {
                // The tree is that of the archive it names: remembered again.
                if let Some(id) = v.archive.filter(|a| !a.is_empty()) {
                    if !self.series[s].acked.iter().any(|(a, _)| *a == id) {
                        self.series[s].acked.push((id, before));
                    }
                }
            }
            RunResult::Failed => {
                // Fails rightly only when its node is down or its disk full.
                let origin = self.series[s].node;
                let excused = self.down.contains(&origin) || self.full.contains(&origin);
                let err = v.error.unwrap_or_default();
                self.check(excused, || format!("a backup of {path} on {node} failed with its node up: {err}"));
            }
        }
    }

    fn restore_step(&mut self, s: usize, pick: u64, on: usize) {
        // One of the newest `keep` acknowledged archives (older ones may be pruned).
        let acked = &self.series[s].acked;
        if acked.is_empty() {
            return;
        }
        let window = acked.len().min(self.cfg.keep);
        let (id, tree) = acked[acked.len() - 1 - (pick as usize % window)].clone();
        let to = self.mesh.root.path().join(format!("restore-{}", self.report.restores + self.trace.len()));
        let (node, path) = (self.names[self.series[s].node].clone(), self.series[s].path.clone());
        let on_name = self.names[on].clone();
        let to_s = to.to_string_lossy().into_owned();
        let args =
            ["--json", "restore", &node, &path, "--archive", &id, "--on", &on_name, "--to", &to_s, "--timeout", "60"];
        let out = self.mesh.cli(on, &args);
        if out.status.success() {
            self.report.restores += 1;
            let got = snapshot(&to);
            self.check(got == tree, || {
                format!("archive {id} of {path} restored on {on_name} is not the tree backed up")
            });
        }
        let _ = std::fs::remove_dir_all(&to);
    }

    /// A restore killed with the node that writes it: where the user asked
    /// for the tree there is nothing or all of it; the same restore again,
    /// once the node is back, gives all of it and leaves nothing beside it.
    fn restore_killed(&mut self, s: usize, pick: u64, on: usize, after_ms: u64) {
        let acked = &self.series[s].acked;
        if acked.is_empty() {
            return;
        }
        let window = acked.len().min(self.cfg.keep);
        let (id, tree) = acked[acked.len() - 1 - (pick as usize % window)].clone();
        let to = self.mesh.root.path().join(format!("killed-{}", self.trace.len()));
        let (node, path) = (self.names[self.series[s].node].clone(), self.series[s].path.clone());
        let on_name = self.names[on].clone();
        let to_s = to.to_string_lossy().into_owned();
        let args = ["restore", &node, &path, "--archive", &id, "--on", &on_name, "--to", &to_s, "--timeout", "60"];
        let child = Command::new(crate::binary("backmesh"))
            .arg("--node")
            .arg(self.mesh.nodes[on].url())
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn();
        std::thread::sleep(Duration::from_millis(after_ms));
        self.mesh.kill9(on);
        self.down.insert(on);
        if let Ok(mut c) = child {
            let _ = c.wait();
        }
        if to.exists() {
            let got = snapshot(&to);
            self.check(got == tree, || format!("a restore of {id} killed midway left a partial tree in {to_s}"));
        }
        self.start(on);
        // Again only where a copy is sure to be reached.
        if !self.down.is_empty() || self.cut.is_some() {
            return;
        }
        // As an operator would: once the node sees its peers again.
        let mut all = self.names.clone();
        all.sort();
        wait_until(T, || self.mesh.up_names(on) == all);
        let mut again: Vec<&str> = vec!["--json"];
        again.extend(args);
        again.push("--overwrite");
        let out = self.mesh.cli(on, &again);
        let err = format!("{}{}", String::from_utf8_lossy(&out.stderr), String::from_utf8_lossy(&out.stdout));
        self.check(out.status.success(), || format!("a restore of {id} on {on_name} again after a kill failed: {err}"));
        if out.status.success() {
            self.report.restores += 1;
            let got = snapshot(&to);
            self.check(got == tree, || format!("a restore of {id} again after a kill is not the tree backed up"));
        }
        let name = to.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let litter: Vec<String> = std::fs::read_dir(self.mesh.root.path())
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(&format!(".{name}.backmesh-restore-")))
            .collect();
        self.check(litter.is_empty(), || format!("a restore killed midway left {litter:?} beside {to_s}"));
        let _ = std::fs::remove_dir_all(&to);
    }

    /// Thaws and restarts every node with its clock right, and waits for
    /// the mesh to see itself whole again.
    fn heal(&mut self) {
        self.set_cut(None);
        for n in std::mem::take(&mut self.full) {
            let _ = std::fs::remove_file(self.mesh.nodes[n].dir.join("ballast"));
        }
        for n in 0..self.names.len() {
            let skewed = self.mesh.nodes[n].env.iter().any(|(k, _)| k.starts_with("FAKETIME"));
            if skewed || self.down.contains(&n) {
                self.mesh.nodes[n].env = self.env(n, 0);
                self.down.insert(n);
                self.start(n);
            }
        }
        let all: Vec<String> = {
            let mut a = self.names.clone();
            a.sort();
            a
        };
        // A redial waits at most 60 s (its longest backoff).
        let whole = wait_until(2 * T, || (0..self.names.len()).all(|i| self.mesh.up_names(i) == all));
        self.check(whole, || "the nodes did not all see each other again after the heal".into());
    }

    /// The catalog of series `s` as node `i` shows it: (id, holders), newest first.
    fn catalog(&self, i: usize, s: usize) -> Vec<(String, BTreeSet<String>)> {
        let (node, path) = (&self.names[self.series[s].node], &self.series[s].path);
        answer::<Backups>(&self.mesh.cli(i, &["--json", "backups", node, path]))
            .map(|b| b.archives.into_iter().map(|a| (a.id, a.holders.into_iter().collect())).collect())
            .unwrap_or_default()
    }

    /// Archive ids of series `s` in node `n`'s store.
    fn on_disk(&self, n: usize, s: usize) -> BTreeSet<String> {
        let key = backmesh_core::store::series_key(&self.names[self.series[s].node], &self.series[s].path);
        let dir = self.mesh.nodes[n].dir.join("manifests").join(hex(&key));
        std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|f| f.file_name().to_string_lossy().strip_suffix(".bmm").map(String::from))
            .collect()
    }

    /// Every node shows the same catalog of every series, which is what its
    /// node keeps, each archive on as many nodes as it should be.
    fn settled(&self) -> bool {
        self.unsettled().is_none()
    }

    /// What keeps the mesh from having settled, in words.
    fn unsettled(&self) -> Option<String> {
        let copies = self.names.len().min(1 + self.cfg.replicas);
        for s in 0..self.series.len() {
            let path = &self.series[s].path;
            let first = self.catalog(0, s);
            let listed: BTreeSet<String> = first.iter().map(|(id, _)| id.clone()).collect();
            let kept = self.on_disk(self.series[s].node, s);
            if listed != kept {
                return Some(format!("{path}: n1's catalog lists {listed:?}, its node keeps {kept:?}"));
            }
            if let Some((id, h)) = first.iter().find(|(_, h)| h.len() != copies) {
                return Some(format!("{path}: archive {id} is on {h:?}, not on {copies} nodes"));
            }
            for i in 1..self.names.len() {
                let other = self.catalog(i, s);
                if other != first {
                    return Some(format!("{path}: {} shows {other:?}, n1 {first:?}", self.names[i]));
                }
            }
        }
        None
    }

    fn final_checks(&mut self) {
        let t0 = Instant::now();
        // No new scheduled run from here on (a node restarted by the heal
        // runs again what a kill cut short, and a backup that ends midway
        // through the checks would change what they compare); the runs
        // asked for still run, and must end.
        for name in self.names.clone() {
            let out = self.mesh.cli(0, &["pause", &name]);
            self.check(out.status.success(), || format!("pause {name}: {}", String::from_utf8_lossy(&out.stderr)));
        }
        self.requests_end();
        // Settled, and still so a few seconds later (a run that started
        // before the pause has ended).
        let settled = wait_until(SETTLE, || {
            self.revive();
            self.settled() && {
                std::thread::sleep(Duration::from_secs(3));
                self.settled()
            }
        });
        self.report.settle_secs = t0.elapsed().as_secs_f64();
        let why = if settled { String::new() } else { self.unsettled().unwrap_or_default() };
        self.check(settled, || format!("the mesh did not settle within {} s of the heal: {why}", SETTLE.as_secs()));
        // The whole state (runs, jobs, catalog, holders) the same on every node.
        let digest = |i: usize| self.mesh.status(i).map(|s| s.state.digest).unwrap_or_default();
        let same = wait_until(T, || {
            let d: BTreeSet<String> = (0..self.names.len()).map(digest).collect();
            d.len() == 1 && !d.contains("")
        });
        let shown: Vec<String> = (0..self.names.len()).map(digest).collect();
        self.check(same, || format!("the nodes' states differ after the heal: digests {shown:?}"));
        let mut all_ids = BTreeSet::new();
        for s in 0..self.series.len() {
            let path = self.series[s].path.clone();
            let origin = self.series[s].node;
            let first = self.catalog(0, s);
            for i in 1..self.names.len() {
                let other = self.catalog(i, s);
                let name = self.names[i].clone();
                self.check(other == first, || {
                    format!("{name} shows another catalog of {path}: {other:?} vs {first:?}")
                });
            }
            // Its node keeps at most `keep`, and every holder the same.
            let kept = self.on_disk(origin, s);
            let keep = self.cfg.keep;
            self.check(kept.len() <= keep, || format!("{path} keeps {} archives, more than --keep {keep}", kept.len()));
            let listed: BTreeSet<String> = first.iter().map(|(id, _)| id.clone()).collect();
            self.check(listed == kept, || format!("{path}: the catalog lists {listed:?}, its node keeps {kept:?}"));
            for (id, holders) in &first {
                for h in holders {
                    let Some(n) = self.names.iter().position(|x| x == h) else { continue };
                    let has = self.on_disk(n, s).contains(id);
                    self.check(has, || format!("{h} is listed as keeping {id} of {path} but does not"));
                }
            }
            all_ids.extend(listed);
            // An acknowledged archive may be gone only once `keep` newer ones are kept.
            let acked = self.series[s].acked.clone();
            let last: Vec<String> = acked.iter().rev().take(keep).map(|(id, _)| id.clone()).collect();
            for (id, _) in &acked {
                if !kept.contains(id) {
                    let pruned_rightly = kept.len() == keep && !last.contains(id);
                    self.check(pruned_rightly, || {
                        format!("acknowledged archive {id} of {path} is gone: kept {kept:?}")
                    });
                }
            }
            // Every acknowledged archive still kept restores exactly, onto every node.
            for (id, tree) in acked.into_iter().filter(|(id, _)| kept.contains(id)) {
                for on in 0..self.names.len() {
                    let to = self.mesh.root.path().join(format!("final-{s}-{on}-{id}"));
                    let (node, on_name) = (self.names[origin].clone(), self.names[on].clone());
                    let to_s = to.to_string_lossy().into_owned();
                    let args = [
                        "--json",
                        "restore",
                        &node,
                        &path,
                        "--archive",
                        &id,
                        "--on",
                        &on_name,
                        "--to",
                        &to_s,
                        "--timeout",
                        "60",
                    ];
                    let out = self.mesh.cli(on, &args);
                    let err = String::from_utf8_lossy(&out.stderr).into_owned();
                    self.check(out.status.success(), || {
                        format!("archive {id} of {path} did not restore on {on_name}: {err}")
                    });
                    if out.status.success() {
                        self.report.restores += 1;
                        let got = snapshot(&to);
                        self.check(got == tree, || format!("archive {id} of {path} restored on {on_name} differs"));
                    }
                    let _ = std::fs::remove_dir_all(&to);
                }
            }
        }
        // No other manifest on any disk: nothing partial is visible.
        for n in 0..self.names.len() {
            let on_disk: BTreeSet<String> = manifests_on_disk(&self.mesh.nodes[n]).into_iter().collect();
            let name = self.names[n].clone();
            let expected = all_ids.clone();
            self.check(on_disk == expected, || format!("{name} keeps manifests {on_disk:?}, the catalog {expected:?}"));
        }
        // Every copy verifies, once damage found is repaired.
        let _ = self.mesh.cli(0, &["--json", "verify", "--timeout", "120"]);
        let out = self.mesh.cli(0, &["--json", "verify", "--timeout", "120"]);
        let v = answer::<VerifyOutcome>(&out);
        let ok = v.as_ref().is_some_and(|v| v.ok);
        self.check(ok, || format!("verify after repair: {v:?} {}", String::from_utf8_lossy(&out.stderr)));
    }

    /// Every accepted run request ends in the log (a run cut short by a
    /// kill runs again once its node is back).
    fn requests_end(&mut self) {
        let requests = self.requests.clone();
        for (s, request) in requests {
            let origin = self.series[s].node;
            let ended = wait_until(Duration::from_secs(60), || {
                let log = answer::<LogPage>(&self.mesh.cli(origin, &["--json", "log", "--limit", "1000"]));
                log.into_iter().flat_map(|l| l.entries).any(|e| {
                    e.event.request() == Some(request.as_str())
                        && matches!(e.event.kind(), "finished" | "unchanged" | "failed")
                })
            });
            self.check(ended, || format!("run request {request} was accepted and never ended"));
        }
    }
}

/// Whether the member file at `f` is there and hashes to its name.
fn intact(f: &Path) -> bool {
    let name = f.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let Some(hex) = name.strip_suffix(".gz") else { return false };
    std::fs::read(f).is_ok_and(|data| backmesh_core::hash::Digest::of(&data).to_hex() == hex)
}

/// Flips one byte in the middle of the `pick`-th member file under
/// `segments` that one of `others` keeps intact.
fn corrupt_one(segments: &Path, others: &[PathBuf], pick: u64) {
    let mut files: Vec<PathBuf> = Vec::new();
    for d in std::fs::read_dir(segments).into_iter().flatten().flatten() {
        for f in std::fs::read_dir(d.path()).into_iter().flatten().flatten() {
            let rel = f.path().strip_prefix(segments).map(Path::to_path_buf).unwrap_or_default();
            // Only a member another node keeps intact: damage to every copy
            // of a member is a loss no mesh can mend (seed 70 once damaged
            // the same member on both nodes that kept it).
            if others.iter().any(|o| intact(&o.join(&rel))) {
                files.push(f.path());
            }
        }
    }
    files.sort();
    if files.is_empty() {
        return;
    }
    let f = &files[pick as usize % files.len()];
    if let Ok(mut data) = std::fs::read(f) {
        if !data.is_empty() {
            let i = data.len() / 2;
            data[i] ^= 0x5a;
            let _ = std::fs::write(f, data);
        }
    }
}

/// Plays the schedule of `cfg` on a fresh mesh and checks the invariants.
pub fn run(cfg: &Config) -> Report {
    let started = Instant::now();
    let steps = schedule(cfg);
    let names: Vec<String> = (1..=cfg.nodes).map(|i| format!("n{i}")).collect();
    let extra: Vec<String> = [
        "--replicas".to_string(),
        cfg.replicas.to_string(),
        "--keep".into(),
        cfg.keep.to_string(),
        "--repair-after".into(),
        "5".into(),
        // Schedules back up far faster than any `--every`: the flood
        // bound (tested on its own) would hold copies back.
        "--burst".into(),
        "1000".into(),
    ]
    .into();
    let mut mesh = Mesh::new();
    mesh.down_after = 3;
    let mut peers = Vec::new();
    let mut disks = private_mounts();
    for (i, name) in names.iter().enumerate() {
        if disks {
            disks = mount_disk(&mesh.next_dir(name));
        }
        let gate = mesh.root.path().join(format!("gate-{name}"));
        mesh.env = vec![(GATE.to_string(), gate.to_string_lossy().into_owned())];
        let n = mesh.start(name, i.checked_sub(1), &extra);
        assert!(mesh.wait_ready(n, T), "{name} never answered:\n{}", mesh.nodes[n].log_text());
        peers.push(mesh.peer_id(n).unwrap_or_default());
    }
    let mut run = Run {
        cfg: cfg.clone(),
        mesh,
        names: names.clone(),
        down: BTreeSet::new(),
        series: Vec::new(),
        requests: Vec::new(),
        report: Report { seed: cfg.seed, steps: steps.len(), ..Report::default() },
        trace: Vec::new(),
        peers,
        cut: None,
        disks,
        full: BTreeSet::new(),
        filled: BTreeSet::new(),
    };
    let mut sorted = names.clone();
    sorted.sort();
    let whole = wait_until(T, || (0..names.len()).all(|i| run.mesh.up_names(i) == sorted));
    run.check(whole, || "the mesh never came together".into());
    for s in 0..cfg.series {
        let dir = run.mesh.root.path().join(format!("tree{s}"));
        let _ = std::fs::create_dir_all(&dir);
        let node = s % cfg.nodes;
        let path = dir.to_string_lossy().into_owned();
        let out = run.mesh.cli(0, &["register", &names[node], &path, "--every", "100000"]);
        assert!(out.status.success(), "register: {}", String::from_utf8_lossy(&out.stderr));
        run.series.push(Series { node, dir, path, acked: Vec::new() });
        run.change(s, 4, cfg.seed ^ s as u64);
    }
    for step in &steps {
        run.play(step);
    }
    run.heal();
    run.final_checks();
    if !run.report.violations.is_empty() {
        eprintln!("seed {} schedule:\n  {}", cfg.seed, run.trace.join("\n  "));
        for (n, node) in run.mesh.nodes.iter().enumerate() {
            let log = node.log_text();
            let tail: Vec<&str> = log.lines().rev().take(15).collect();
            eprintln!("--- {} (last lines) ---\n{}", names[n], tail.into_iter().rev().collect::<Vec<_>>().join("\n"));
        }
    }
    run.report.secs = started.elapsed().as_secs_f64();
    if run.disks {
        for node in &run.mesh.nodes {
            unmount(&node.dir);
        }
    }
    run.report
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_always_draws_the_same_schedule_and_every_kind_appears() {
        let a = schedule(&Config { steps: 400, ..Config::new(7) });
        assert_eq!(a, schedule(&Config { steps: 400, ..Config::new(7) }));
        assert_ne!(a, schedule(&Config { steps: 400, ..Config::new(8) }));
        let kinds: BTreeSet<&str> = a.iter().filter_map(Step::fault).collect();
        assert_eq!(kinds.len(), 7, "{kinds:?}");
    }
}
