//! Repair after churn, planned as nodes plan it, and the sizes of real
//! records and entries measured for the compact model.

use std::collections::BTreeSet;

use backmesh_core::log::entry::{Entry, Event};
use backmesh_core::log::hlc::Clock;
use backmesh_core::log::mesh::MeshState;
use backmesh_core::log::records::{RecordKey, SeriesKey};
use backmesh_core::placement::{holders, Candidate};
use backmesh_core::seal::Seal;

use super::model::*;

/// Places every series' archives at R holders among the first membership;
/// after the churn, plans repair the way nodes do (copy to the newly
/// elected, prune the rest) and checks every archive is back at R.
pub(crate) fn repair(cfg: &Config, nodes: &[SimNode], report: &mut Report) {
    let cand = |alive: &dyn Fn(usize) -> bool| -> Vec<Candidate> {
        nodes
            .iter()
            .enumerate()
            .filter(|(i, _)| alive(*i))
            .map(|(_, n)| Candidate { peer_id: n.peer.clone(), name: n.name.clone(), free_bytes: 100 << 30 })
            .collect()
    };
    let before = cand(&|i| i < cfg.nodes);
    let after = cand(&|i| nodes[i].up);
    let keys: Vec<SeriesKey> =
        (0..cfg.nodes).flat_map(|n| (0..cfg.jobs).map(move |j| (format!("n{n:05}"), format!("/srv/app{j}")))).collect();
    let elect = |cands: &[Candidate]| -> Vec<Vec<String>> {
        let chunk = keys.len().div_ceil(2).max(1);
        std::thread::scope(|s| {
            let parts: Vec<_> = keys
                .chunks(chunk)
                .map(|ks| {
                    s.spawn(move || {
                        ks.iter()
                            .map(|(node, path)| {
                                holders(node, path, cands, cfg.replicas).into_iter().map(|c| c.name.clone()).collect()
                            })
                            .collect::<Vec<Vec<String>>>()
                    })
                })
                .collect();
            parts.into_iter().flat_map(|h| h.join().unwrap_or_default()).collect()
        })
    };
    let old = elect(&before);
    let new = elect(&after);
    let up: BTreeSet<String> = nodes.iter().filter(|n| n.up).map(|n| n.name.clone()).collect();
    let mut held: std::collections::BTreeMap<String, usize> = up.iter().map(|n| (n.clone(), 0)).collect();
    for (i, (o, n)) in old.iter().zip(&new).enumerate() {
        let origin_up = up.contains(&keys[i].0);
        let present: BTreeSet<&String> = o.iter().filter(|h| up.contains(*h)).collect();
        if !origin_up && present.is_empty() {
            report.lost_series += 1;
        }
        let want = cfg.replicas.min(up.len() - usize::from(origin_up));
        let archives = cfg.keep as u64;
        report.repair_min_bytes += want.saturating_sub(present.len()) as u64 * archives * cfg.archive_bytes;
        report.repair_bytes += n.iter().filter(|h| !present.contains(h)).count() as u64 * archives * cfg.archive_bytes;
        // After repair and pruning, the elected hold it.
        if n.len() != want || n.iter().any(|h| !up.contains(h)) {
            report.violations.push(format!("{}:{} is at {} live holders, not {want}", keys[i].0, keys[i].1, n.len()));
        }
        for h in n {
            *held.entry(h.clone()).or_default() += cfg.keep;
        }
    }
    report.held_max = held.values().copied().max().unwrap_or(0);
    report.held_mean = held.values().sum::<usize>() as f64 / held.len().max(1) as f64;
}

/// Repair as the nodes plan it: before the churn each series was at its
/// origin and the R holders elected among the first nodes, `keep`
/// archives each. Now every live node runs the real replica planner
/// ([`Planner`]) on its own copies, round after round: pushes are
/// delivered at the end of a round (two holders pushing the same copy in
/// one round both send it, as they would), surplus copies are handed off
/// once every elected holder keeps them. Counts what was sent against the
/// least any plan could send (the copies lost with the leavers).
pub(crate) fn repair_planned(cfg: &Config, nodes: &[SimNode], now: i64, report: &mut Report) {
    use backmesh_core::net::membership::PeerView;
    use backmesh_core::replica::plan::Planner;
    use std::collections::{BTreeMap, HashMap};
    const GRACE_MS: i64 = 600_000;
    let views: Vec<PeerView> = nodes
        .iter()
        .map(|n| PeerView {
            peer_id: n.peer.clone(),
            name: n.name.clone(),
            free_bytes: 100 << 30,
            up: n.up,
            last_seen_ms: if n.up { now } else { now - 2 * GRACE_MS },
        })
        .collect();
    let index: HashMap<&str, usize> = nodes.iter().enumerate().map(|(i, n)| (n.peer.as_str(), i)).collect();
    let first: Vec<Candidate> = nodes
        .iter()
        .take(cfg.nodes)
        .map(|n| Candidate { peer_id: n.peer.clone(), name: n.name.clone(), free_bytes: 100 << 30 })
        .collect();
    let ids: Vec<String> = (0..cfg.keep).rev().map(|k| format!("a{k:03}")).collect();
    let mut held: Vec<BTreeMap<SeriesKey, Vec<String>>> = vec![BTreeMap::new(); nodes.len()];
    let up: BTreeSet<usize> = (0..nodes.len()).filter(|i| nodes[*i].up).collect();
    let mut lost_copies = 0u64;
    let mut lost: BTreeSet<SeriesKey> = BTreeSet::new();
    for o in 0..cfg.nodes {
        for j in 0..cfg.jobs {
            let key: SeriesKey = (nodes[o].name.clone(), format!("/srv/app{j}"));
            let before: Vec<usize> =
                holders(&key.0, &key.1, &first, cfg.replicas).iter().map(|c| index[c.peer_id.as_str()]).collect();
            let origin_up = up.contains(&o);
            let want = cfg.replicas.min(up.len() - usize::from(origin_up));
            let present = before.iter().filter(|h| up.contains(h)).count();
            lost_copies += want.saturating_sub(present) as u64;
            if !origin_up && present == 0 {
                lost.insert(key.clone());
            }
            for h in before.into_iter().chain(std::iter::once(o)) {
                if up.contains(&h) {
                    held[h].insert(key.clone(), ids.clone());
                }
            }
        }
    }
    report.repair_min_bytes = lost_copies * cfg.keep as u64 * cfg.archive_bytes;
    let mut planners: Vec<Planner> =
        nodes.iter().map(|n| Planner::new(n.name.clone(), cfg.replicas, GRACE_MS)).collect();
    let mut rounds = 0;
    for round in 1..=12u32 {
        let mut deliveries = Vec::new();
        let mut handoffs = Vec::new();
        for &n in &up {
            // Each node plans from its own view when it keeps one: repair
            // comes once the leavers have been silent past the grace.
            let at = now + GRACE_MS + i64::from(round) * 2_000;
            let plan = match &nodes[n].membership {
                Some(m) => {
                    let mut seen = m.peers();
                    for p in &mut seen {
                        if p.up {
                            p.last_seen_ms = at;
                        }
                    }
                    planners[n].plan(&views[n], &seen, &held[n], at)
                }
                None => planners[n].plan(&views[n], &views, &held[n], at),
            };
            for p in plan.pushes {
                // A push first lists what the holder keeps and sends only the rest.
                let kept = held[index[p.peer.as_str()]].get(&(p.node.clone(), p.path.clone()));
                let missing = p.ids.iter().filter(|id| !kept.is_some_and(|k| k.contains(id))).count();
                report.repair_bytes += missing as u64 * cfg.archive_bytes;
                deliveries.push((n, p));
            }
            handoffs.extend(plan.handoffs.into_iter().map(|h| (n, h)));
        }
        if deliveries.is_empty() && handoffs.is_empty() {
            break;
        }
        rounds = round;
        for (n, p) in deliveries {
            let t = index[p.peer.as_str()];
            let kept = held[t].entry((p.node.clone(), p.path.clone())).or_default();
            for id in &p.ids {
                if !kept.contains(id) {
                    kept.push(id.clone());
                }
            }
            kept.sort_by(|a, b| b.cmp(a));
            planners[n].pushed(&p, &p.ids, None, now);
        }
        for (n, h) in handoffs {
            let key = (h.node.clone(), h.path.clone());
            let all_keep = h.targets.iter().all(|t| {
                held[index[t.as_str()]].get(&key).is_some_and(|kept| h.ids.iter().all(|id| kept.contains(id)))
            });
            if all_keep {
                held[n].remove(&key);
            }
            planners[n].handed_off(&h);
        }
    }
    report.repair_rounds = Some(rounds);
    report.lost_series = lost.len();
    // After repair and handoffs: each series at its origin (if live) and exactly
    // the R elected live holders, each with every archive.
    let live: Vec<Candidate> = up
        .iter()
        .map(|&i| Candidate { peer_id: nodes[i].peer.clone(), name: nodes[i].name.clone(), free_bytes: 100 << 30 })
        .collect();
    let mut per_node: Vec<usize> = vec![0; nodes.len()];
    for o in 0..cfg.nodes {
        for j in 0..cfg.jobs {
            let key: SeriesKey = (nodes[o].name.clone(), format!("/srv/app{j}"));
            let elected: BTreeSet<usize> =
                holders(&key.0, &key.1, &live, cfg.replicas).iter().map(|c| index[c.peer_id.as_str()]).collect();
            let keeping: BTreeSet<usize> = up
                .iter()
                .copied()
                .filter(|&h| h != o && held[h].get(&key).is_some_and(|k| ids.iter().all(|id| k.contains(id))))
                .collect();
            if keeping != elected && !lost.contains(&key) {
                report.violations.push(format!(
                    "{}:{} is kept by {} live holders ({} elected) after {rounds} rounds",
                    key.0,
                    key.1,
                    keeping.len(),
                    elected.len()
                ));
            }
        }
    }
    for &n in &up {
        per_node[n] = held[n].iter().filter(|(k, _)| k.0 != nodes[n].name).map(|(_, v)| v.len()).sum();
    }
    let counts: Vec<usize> = up.iter().map(|&n| per_node[n]).collect();
    report.held_max = counts.iter().copied().max().unwrap_or(0);
    report.held_mean = counts.iter().sum::<usize>() as f64 / counts.len().max(1) as f64;
}

/// Encoded bytes of a job record, a series record (with `keep` archives at
/// R holders each), an origin record, and an entry of this workload,
/// measured on real ones.
pub(crate) fn measure_sizes(cfg: &Config) -> (u32, u32, u32, u32) {
    let mut state = MeshState::new();
    let mut clock = Clock::new("12D3KooWsim00000");
    let mut seq = 0;
    let mut e = |state: &mut MeshState, at: i64, event: Event| {
        seq += 1;
        let entry = Entry {
            origin: "12D3KooWsim00000".into(),
            origin_name: "n00000".into(),
            seq,
            time: clock.tick(at),
            sig: Seal::None,
            seals: Vec::new(),
            event,
        };
        state.apply(&entry);
        cbor_len(&entry) as u32
    };
    let (node, path) = ("n00000".to_string(), "/srv/app0".to_string());
    e(
        &mut state,
        1,
        Event::Registered {
            node: node.clone(),
            path: path.clone(),
            every_min: 5,
            excludes: vec![],
            spec: Default::default(),
        },
    );
    let mut entry_bytes = 0;
    for k in 0..cfg.keep as i64 {
        let archive = format!("{:013}-{:08x}", 1_795_000_000_000 + k, k);
        entry_bytes = e(
            &mut state,
            10 + k,
            Event::Finished {
                recent: Default::default(),
                node: node.clone(),
                path: path.clone(),
                archive: archive.clone(),
                size: 1 << 20,
                files: 100,
                duration_ms: 1_000,
                warnings: vec![],
                request: None,
                plugin: None,
            },
        );
        for h in 0..cfg.replicas {
            e(
                &mut state,
                20 + k,
                Event::Replicated {
                    node: node.clone(),
                    path: path.clone(),
                    archive: archive.clone(),
                    holder: format!("n{:05}", h + 1),
                    bytes: 1 << 20,
                },
            );
        }
    }
    let size = |k: RecordKey| state.record(&k).map(|r| (cbor_len(&k) + cbor_len(&r)) as u32).unwrap_or(0);
    (
        size(RecordKey::Job(node.clone(), path.clone())),
        size(RecordKey::Series(node.clone(), path.clone())),
        size(RecordKey::Origin("12D3KooWsim00000".into())),
        entry_bytes,
    )
}
