//! The large-N simulator: one process, N nodes, simulated time, a seeded
//! network; every run replays exactly from its seed.
//!
//! What runs is backmesh's own pure code: the mesh state's CRDT merge and
//! digest, the anti-entropy answer ([`answer_pull`], with its quiet-bucket
//! rule and batch cut), rendezvous placement ([`holders`]) and, up to
//! [`PLANNED_REPAIR_MAX`] nodes, every node's replica planner for repair. Two models
//! of a node's state:
//! - [`Model::Real`]: each node holds a real [`MeshState`] and folds real
//!   entries; used up to about a thousand nodes (each state holds the whole
//!   mesh's records, so memory grows with N²);
//! - [`Model::Compact`]: each node holds one version number per record.
//!   Every record in this workload has a single writer, so a record's
//!   versions are totally ordered and the CRDT join is the larger version;
//!   a bucket's digest is the XOR of a hash of (record, version) over its
//!   records, so two nodes' digests agree exactly when their versions do.
//!   Buckets are the real records' buckets, answers follow the same rule
//!   and cut, with record sizes measured on real records. This is what
//!   reaches 10,000 nodes.
//!
//! The scenario (all draws from the seed): every node registers `jobs`
//! jobs; for `load_rounds` rounds of 10 s the scheduler's own rule
//! ([`due`]) starts each job every `every_min` minutes, and the run's entry
//! is gossiped; gossip loses a share `loss` of deliveries, duplicates `dup`
//! and delays each by 0 to `latency_rounds` rounds; from a quarter of the load to its end a
//! random `partition` share of the nodes is cut off; at half the load a
//! share `churn` of the nodes leaves for good and as many new, empty nodes
//! join. Every round each live node pulls state from one random peer it can
//! reach (eagerly, batch after batch, until it has caught up once). Then
//! the writes stop and the partition heals: the report counts the rounds
//! until every live node's digest is equal (the goal: at most 2·log₂N).
//!
//! Invariants checked: after the heal every live node's state is equal and
//! holds the newest version of every record any live node had (nothing
//! merged is lost); every job is known everywhere; after repair, every
//! retained archive is at R live holders.

// Nodes are addressed by index throughout: an index is a node's identity in
// every table of the simulation, so loops run over indices.
#![allow(clippy::needless_range_loop)]

use std::collections::BTreeSet;
use std::sync::Arc;

use backmesh_core::jobs::schedule::due;
use backmesh_core::log::crdt::Stamp;
use backmesh_core::log::entry::{Entry, Event};
use backmesh_core::log::hlc::Clock;
use backmesh_core::log::mesh::MeshState;
use backmesh_core::log::records::{RecordKey, BUCKETS};
use backmesh_core::log::views::JobView;
use backmesh_core::net::membership::Membership;
use backmesh_core::seal::Seal;

mod model;
mod repair;

use model::*;
pub use model::{Config, Model, Report, Rng, GOSSIP_DEGREE, MEMBERSHIP_MAX, PLANNED_REPAIR_MAX, ROUND_MS};
use repair::{measure_sizes, repair, repair_planned};

/// Every live node hears every live node it can reach (pings and hellos
/// travel on the connections, over TCP: a partition stops them, gossip's
/// loss does not), then marks the silent ones down.
fn hear_round(nodes: &mut [SimNode], now: i64) {
    let live: Vec<(usize, String, String, u8)> = nodes
        .iter()
        .enumerate()
        .filter(|(_, n)| n.up)
        .map(|(i, n)| (i, n.peer.clone(), n.name.clone(), n.side))
        .collect();
    for &(n, _, _, side) in &live {
        let Some(m) = nodes[n].membership.as_mut() else { continue };
        for (o, peer, name, other_side) in &live {
            if *o == n || *other_side != side {
                continue;
            }
            if m.is_up(peer) {
                m.seen(peer, now);
            } else {
                m.hello(peer, info_of(name), now);
            }
        }
        m.tick(now);
    }
}

/// Runs one seeded scenario.
pub fn run(cfg: &Config) -> Report {
    let mut rng = Rng::new(cfg.seed);
    let joiners = ((cfg.nodes as f64) * cfg.churn).round() as usize;
    let total_nodes = cfg.nodes + joiners;
    let series = cfg.nodes * cfg.jobs;
    // Record ids: jobs 0..S, series S..2S, origins 2S..2S+total.
    let records = 2 * series + total_nodes;
    let t0: i64 = 1_795_000_000_000;
    let name_of = |i: usize| format!("n{i:05}");
    let peer_of = |i: usize| format!("12D3KooWsim{i:05}");
    let path_of = |j: usize| format!("/srv/app{j}");

    // Buckets of the real keys; sizes of real records of this workload.
    let mut layout =
        Layout { bucket_of: vec![0; records], by_bucket: vec![Vec::new(); BUCKETS], size_of: vec![0; records] };
    let sizes = measure_sizes(cfg);
    for id in 0..records {
        let key = if id < series {
            RecordKey::Job(name_of(id / cfg.jobs), path_of(id % cfg.jobs))
        } else if id < 2 * series {
            RecordKey::Series(name_of((id - series) / cfg.jobs), path_of((id - series) % cfg.jobs))
        } else {
            RecordKey::Origin(peer_of(id - 2 * series))
        };
        let b = key.bucket();
        layout.bucket_of[id] = b as u16;
        layout.by_bucket[b].push(id as u32);
        layout.size_of[id] = if id < series {
            sizes.0
        } else if id < 2 * series {
            sizes.1
        } else {
            sizes.2
        };
    }

    let mut nodes: Vec<SimNode> = (0..total_nodes)
        .map(|i| SimNode {
            name: name_of(i),
            peer: peer_of(i),
            clock: Clock::new(peer_of(i)),
            seq: 0,
            up: i < cfg.nodes,
            side: 0,
            caught_up: i < cfg.nodes,
            replica: Replica::new(cfg.model, records),
            membership: (total_nodes <= MEMBERSHIP_MAX)
                .then(|| Membership::new(peer_of(i), info_of(&name_of(i)), DOWN_AFTER_MS)),
        })
        .collect();
    let mut truth = vec![0u32; records];
    let mut report = Report {
        live_nodes: 0,
        records,
        entries: 0,
        rounds_to_converge: None,
        state_bytes_per_node: 0,
        gossip_bytes_per_node_day: 0,
        anti_entropy_bytes_per_node_day: 0,
        heal_bytes_per_node: 0,
        held_mean: 0.0,
        held_max: 0,
        repair_bytes: 0,
        repair_min_bytes: 0,
        repair_rounds: None,
        lost_series: 0,
        violations: Vec::new(),
    };
    let mut gossip_bytes = 0u64;
    let mut ae_steady = 0u64;
    let mut ae_heal = 0u64;

    // Gossip on its way: (round it arrives, node, write).
    let mut in_flight: Vec<(u32, usize, Write)> = Vec::new();
    // One write at node `n` in `round`: record `rec` (and n's origin record)
    // move on; its gossip leaves for the others.
    let write = |nodes: &mut Vec<SimNode>,
                 truth: &mut Vec<u32>,
                 rng: &mut Rng,
                 gossip_bytes: &mut u64,
                 in_flight: &mut Vec<(u32, usize, Write)>,
                 round: u32,
                 n: usize,
                 rec: usize,
                 now: i64,
                 event: Option<Event>| {
        let origin_rec = 2 * series + n;
        truth[rec] += 1;
        truth[origin_rec] += 1;
        let entry = event.map(|ev| {
            let node = &mut nodes[n];
            node.seq += 1;
            Arc::new(Entry {
                origin: node.peer.clone(),
                origin_name: node.name.clone(),
                seq: node.seq,
                time: node.clock.tick(now),
                sig: Seal::None,
                seals: Vec::new(),
                event: ev,
            })
        });
        let w = Write { entry, touches: [(rec as u32, truth[rec]), (origin_rec as u32, truth[origin_rec])] };
        let entry_bytes = u64::from(sizes.3);
        let side = nodes[n].side;
        nodes[n].replica.write(&w, &layout, now);
        for m in 0..nodes.len() {
            if m == n || !nodes[m].up || nodes[m].side != side {
                continue;
            }
            if rng.unit() < cfg.loss {
                continue;
            }
            let copies = GOSSIP_DEGREE + u64::from(rng.unit() < cfg.dup);
            *gossip_bytes += copies * entry_bytes;
            let delay = rng.below(cfg.latency_rounds as usize + 1) as u32;
            if delay == 0 {
                nodes[m].replica.write(&w, &layout, now);
            } else {
                in_flight.push((round + delay, m, w.clone()));
            }
        }
    };
    // Gossip that arrives in `round`, at nodes still up and on the sender's side.
    let arrive = |nodes: &mut Vec<SimNode>, in_flight: &mut Vec<(u32, usize, Write)>, round: u32, now: i64| {
        let (due, later): (Vec<_>, Vec<_>) = std::mem::take(in_flight).into_iter().partition(|(r, _, _)| *r <= round);
        *in_flight = later;
        for (_, m, w) in due {
            if nodes[m].up {
                nodes[m].replica.write(&w, &layout, now);
            }
        }
    };

    // Registrations, with everyone connected.
    for n in 0..cfg.nodes {
        for j in 0..cfg.jobs {
            let ev = (cfg.model == Model::Real).then(|| Event::Registered {
                node: name_of(n),
                path: path_of(j),
                every_min: cfg.every_min as u64,
                excludes: vec![],
                spec: Default::default(),
            });
            write(&mut nodes, &mut truth, &mut rng, &mut gossip_bytes, &mut in_flight, 0, n, n * cfg.jobs + j, t0, ev);
            report.entries += 1;
        }
    }

    let mut now = t0;
    // The scheduler's own rule decides when each job runs: the jobs were
    // registered at different times, so each last started somewhere in the
    // period before the start.
    let period_ms = cfg.every_min * 60_000;
    let mut last_started: Vec<i64> =
        (0..series).map(|_| t0 - (rng.next_u64() % period_ms.max(1) as u64) as i64).collect();
    let template = JobView {
        node: String::new(),
        path: String::new(),
        every_min: cfg.every_min as u64,
        excludes: vec![],
        paused: false,
        last: None,
        last_success: None,
        last_started: None,
        registered_at: backmesh_core::log::hlc::Hlc { wall_ms: t0, logical: 0, node: String::new() },
        last_size: None,
        last_warnings: vec![],
        spec: Default::default(),
        last_plugin: None,
        runs: vec![],
    };
    let part_at = cfg.load_rounds / 4;
    let churn_at = cfg.load_rounds / 2;
    for round in 0..cfg.load_rounds {
        now += ROUND_MS;
        arrive(&mut nodes, &mut in_flight, round, now);
        hear_round(&mut nodes, now);
        if round == part_at && cfg.partition > 0.0 {
            for n in nodes.iter_mut().take(cfg.nodes) {
                n.side = u8::from(rng.unit() < cfg.partition);
            }
        }
        if round == churn_at && joiners > 0 {
            let mut left = 0;
            while left < joiners.min(cfg.nodes.saturating_sub(2)) {
                let n = rng.below(cfg.nodes);
                if nodes[n].up {
                    nodes[n].up = false;
                    left += 1;
                }
            }
            for n in nodes.iter_mut().skip(cfg.nodes) {
                n.up = true;
            }
        }
        // Runs the scheduler starts this round (each finishes within it).
        for n in 0..cfg.nodes {
            if !nodes[n].up {
                continue;
            }
            let views: Vec<JobView> = (0..cfg.jobs)
                .map(|j| JobView {
                    path: path_of(j),
                    last_started: Some(Stamp {
                        seq: 1,
                        wall_ms: last_started[n * cfg.jobs + j],
                        logical: 0,
                        seal: Seal::None,
                    }),
                    ..template.clone()
                })
                .collect();
            for path in due(&views, now, 60_000, |_| false) {
                let j = views.iter().position(|v| v.path == path).unwrap_or(0);
                last_started[n * cfg.jobs + j] = now;
                let at = now - (rng.next_u64() % ROUND_MS as u64) as i64;
                let tag = rng.next_u64() as u32;
                let ev = (cfg.model == Model::Real).then(|| Event::Finished {
                    recent: Default::default(),
                    node: name_of(n),
                    path: path_of(j),
                    archive: format!("{at:013}-{tag:08x}"),
                    size: 1 << 20,
                    files: 100,
                    duration_ms: 1_000,
                    warnings: vec![],
                    request: None,
                    plugin: None,
                });
                let rec = series + n * cfg.jobs + j;
                write(&mut nodes, &mut truth, &mut rng, &mut gossip_bytes, &mut in_flight, round, n, rec, at, ev);
                report.entries += 1;
            }
        }
        let b = anti_entropy_round(&mut nodes, &mut rng, &layout, now);
        if round < part_at {
            ae_steady += b;
        }
    }

    // The heal: writes stop, everyone can reach everyone.
    for n in nodes.iter_mut() {
        n.side = 0;
    }
    let live: Vec<usize> = (0..nodes.len()).filter(|n| nodes[*n].up).collect();
    report.live_nodes = live.len();
    let limit = 10 * (usize::BITS - live.len().leading_zeros()) + 10;
    for r in 1..=limit {
        now += ROUND_MS;
        arrive(&mut nodes, &mut in_flight, cfg.load_rounds + r, now);
        hear_round(&mut nodes, now);
        ae_heal += anti_entropy_round(&mut nodes, &mut rng, &layout, now);
        let first = nodes[live[0]].replica.digest();
        if live.iter().all(|n| nodes[*n].replica.digest() == first) {
            report.rounds_to_converge = Some(r);
            break;
        }
    }
    if report.rounds_to_converge.is_none() {
        report.violations.push(format!("live nodes still disagree {limit} rounds after the heal"));
    }
    check_state(cfg, &mut nodes, &live, series, &truth, &mut report);
    // Within three rounds of the heal every node's own view names every
    // live node up and every leaver down.
    for _ in 0..3 {
        now += ROUND_MS;
        hear_round(&mut nodes, now);
    }
    let live_peers: BTreeSet<&str> = live.iter().map(|n| nodes[*n].peer.as_str()).collect();
    for &n in &live {
        let Some(m) = &nodes[n].membership else { continue };
        let up: BTreeSet<&str> = m
            .peers()
            .iter()
            .filter(|p| p.up)
            .map(|p| p.peer_id.as_str())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .filter_map(|p| live_peers.get(p).copied().or(Some("(a leaver)")))
            .collect();
        let want: BTreeSet<&str> = live_peers.iter().copied().filter(|p| *p != nodes[n].peer).collect();
        if up != want {
            report.violations.push(format!(
                "{} sees {} nodes up, not the {} live others, 3 rounds after the heal",
                nodes[n].name,
                up.len(),
                want.len()
            ));
        }
    }

    let per_day = |b: u64, seconds: f64| (b as f64 / live.len() as f64 * 86_400.0 / seconds.max(1.0)) as u64;
    report.gossip_bytes_per_node_day = per_day(gossip_bytes, (cfg.load_rounds as i64 * ROUND_MS) as f64 / 1000.0);
    report.anti_entropy_bytes_per_node_day = per_day(ae_steady, (part_at as i64 * ROUND_MS) as f64 / 1000.0);
    report.heal_bytes_per_node = ae_heal / live.len().max(1) as u64;
    let sample: Vec<usize> = live.iter().step_by((live.len() / 20).max(1)).copied().collect();
    report.state_bytes_per_node =
        sample.iter().map(|n| nodes[*n].replica.bytes(&layout)).sum::<u64>() / sample.len().max(1) as u64;
    if total_nodes <= PLANNED_REPAIR_MAX {
        repair_planned(cfg, &nodes, now, &mut report);
    } else {
        repair(cfg, &nodes, &mut report);
    }
    report
}

/// Every live node pulls from one random peer it can reach; a node not yet
/// caught up pulls eagerly, batch after batch. Answers the bytes moved.
fn anti_entropy_round(nodes: &mut [SimNode], rng: &mut Rng, l: &Layout, now: i64) -> u64 {
    let mut bytes = 0;
    let order: Vec<usize> = (0..nodes.len()).filter(|n| nodes[*n].up).collect();
    let index: std::collections::HashMap<String, usize> =
        nodes.iter().enumerate().map(|(i, n)| (n.peer.clone(), i)).collect();
    for &n in &order {
        let peer = match &nodes[n].membership {
            // A random peer this node believes up; one it cannot reach
            // (cut off, not yet seen down) answers nothing this round.
            Some(m) => {
                let up: Vec<usize> =
                    m.peers().iter().filter(|p| p.up).filter_map(|p| index.get(&p.peer_id)).copied().collect();
                (!up.is_empty())
                    .then(|| up[rng.below(up.len())])
                    .filter(|p| nodes[*p].up && nodes[*p].side == nodes[n].side)
            }
            // A random reachable peer (a few tries; a lone node waits).
            None => {
                let mut peer = None;
                for _ in 0..8 {
                    let p = order[rng.below(order.len())];
                    if p != n && nodes[p].side == nodes[n].side {
                        peer = Some(p);
                        break;
                    }
                }
                peer
            }
        };
        let Some(p) = peer else { continue };
        let mut eager = !nodes[n].caught_up;
        let mut from = 0u16;
        for _ in 0..BUCKETS {
            let mine = nodes[n].replica.digest();
            bytes += (BUCKETS * 9) as u64;
            let (batch, next, b) = nodes[p].replica.answer(&mine, from, eager, now, l);
            bytes += b;
            nodes[n].replica.merge(&batch, l, now);
            match next {
                // Cut for size: far behind, so go on eagerly from there (as
                // the log actor does).
                Some(b) if b > from => {
                    from = b;
                    eager = true;
                }
                Some(_) => break,
                None => {
                    nodes[n].caught_up |= eager;
                    break;
                }
            }
        }
    }
    bytes
}

fn check_state(cfg: &Config, nodes: &mut [SimNode], live: &[usize], series: usize, truth: &[u32], report: &mut Report) {
    match cfg.model {
        Model::Compact => {
            // The newest version any live node had is everywhere.
            let mut best = vec![0u32; truth.len()];
            for n in live {
                if let Replica::Compact { versions, .. } = &nodes[*n].replica {
                    for (b, v) in best.iter_mut().zip(versions) {
                        *b = (*b).max(*v);
                    }
                }
            }
            for n in live {
                if let Replica::Compact { versions, .. } = &nodes[*n].replica {
                    if *versions != best {
                        report.violations.push(format!("{} lacks records a live node had", nodes[*n].name));
                        break;
                    }
                    if versions[..series].contains(&0) {
                        report.violations.push(format!("{} lost a job", nodes[*n].name));
                        break;
                    }
                }
            }
        }
        Model::Real => {
            let mut union = MeshState::new();
            for n in live {
                if let Replica::Real { state, .. } = &nodes[*n].replica {
                    union.merge(state);
                }
            }
            let want = union.digest();
            for n in live {
                if let Replica::Real { state, .. } = &mut nodes[*n].replica {
                    if state.digest() != want {
                        report.violations.push(format!("{} lacks records a live node had", nodes[*n].name));
                        break;
                    }
                    if state.jobs().len() != series {
                        report.violations.push(format!(
                            "{} knows {} of {series} jobs",
                            nodes[*n].name,
                            state.jobs().len()
                        ));
                        break;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_replays_from_its_seed_and_converges_within_the_goal() {
        let cfg = Config { nodes: 64, load_rounds: 40, ..Config::default() };
        let a = run(&cfg);
        let b = run(&cfg);
        assert_eq!(a, b, "the same seed gives the same run");
        assert!(a.violations.is_empty(), "{:?}", a.violations);
        let rounds = a.rounds_to_converge.unwrap();
        assert!(rounds <= 2 * 6, "{rounds} rounds for 64 nodes");
        let other = run(&Config { seed: 2, ..cfg });
        assert_ne!(a.entries, other.entries, "another seed, another run");
    }

    #[test]
    fn after_churn_every_node_s_own_planner_brings_each_series_back_to_r_holders() {
        let cfg = Config { nodes: 60, jobs: 2, load_rounds: 20, churn: 0.15, ..Config::default() };
        let r = run(&cfg);
        assert!(r.violations.is_empty(), "{:?}", r.violations);
        let rounds = r.repair_rounds.expect("planned by the nodes at this size");
        assert!((1..=6).contains(&rounds), "{rounds} rounds");
        assert!(r.repair_bytes >= r.repair_min_bytes && r.repair_min_bytes > 0, "{r:?}");
        assert_eq!(r, run(&cfg), "replays");
    }

    #[test]
    fn the_scheduler_s_rule_starts_each_job_once_a_period() {
        // 90 rounds of 10 s = 15 min: every job of 5 min runs exactly 3 times.
        let cfg = Config { nodes: 10, jobs: 2, churn: 0.0, latency_rounds: 3, ..Config::default() };
        let r = run(&cfg);
        assert_eq!(r.entries, 20 + 20 * 3, "registrations and runs");
        assert!(r.violations.is_empty(), "{:?}", r.violations);
    }

    #[test]
    fn the_real_state_and_the_compact_model_agree_on_a_small_mesh() {
        for seed in 1..=3 {
            let cfg = Config { nodes: 24, load_rounds: 30, seed, ..Config::default() };
            let real = run(&Config { model: Model::Real, ..cfg.clone() });
            let compact = run(&cfg);
            assert!(real.violations.is_empty() && compact.violations.is_empty(), "{real:?} {compact:?}");
            assert_eq!(real.entries, compact.entries);
            assert_eq!(real.rounds_to_converge, compact.rounds_to_converge, "seed {seed}");
            assert_eq!(real.repair_bytes, compact.repair_bytes);
        }
    }

    #[test]
    fn the_state_check_names_a_node_that_missed_a_record_or_a_job() {
        let cfg = Config { nodes: 3, jobs: 1, ..Config::default() };
        let node = |i: usize, versions: Vec<u32>| SimNode {
            name: format!("n{i}"),
            peer: format!("p{i}"),
            clock: Clock::new(format!("p{i}")),
            seq: 0,
            up: true,
            side: 0,
            caught_up: true,
            replica: Replica::Compact { versions, digest: vec![0; BUCKETS], changed_ms: vec![0; BUCKETS] },
            membership: None,
        };
        let truth = vec![1, 1, 1, 2, 2, 2, 1, 1, 1];
        let mut report = run(&Config { nodes: 2, load_rounds: 1, ..cfg.clone() });
        report.violations.clear();
        let mut nodes = vec![node(0, truth.clone()), node(1, truth.clone()), node(2, truth.clone())];
        check_state(&cfg, &mut nodes, &[0, 1, 2], 3, &truth, &mut report);
        assert!(report.violations.is_empty(), "{:?}", report.violations);
        let mut behind = truth.clone();
        behind[4] = 1;
        let mut nodes = vec![node(0, truth.clone()), node(1, behind), node(2, truth.clone())];
        check_state(&cfg, &mut nodes, &[0, 1, 2], 3, &truth, &mut report);
        assert_eq!(report.violations, vec!["n1 lacks records a live node had".to_string()]);
        report.violations.clear();
        let mut no_job = truth.clone();
        no_job[2] = 0;
        let mut nodes: Vec<SimNode> = (0..3).map(|i| node(i, no_job.clone())).collect();
        check_state(&cfg, &mut nodes, &[0, 1, 2], 3, &truth, &mut report);
        assert_eq!(report.violations, vec!["n0 lost a job".to_string()]);
    }

    #[test]
    fn anti_entropy_alone_repairs_the_loss_of_every_gossip_message() {
        let cfg = Config { nodes: 16, load_rounds: 8, loss: 1.0, ..Config::default() };
        let r = run(&cfg);
        assert!(r.violations.is_empty(), "{:?}", r.violations);
        assert!(r.rounds_to_converge.is_some());
    }
}
