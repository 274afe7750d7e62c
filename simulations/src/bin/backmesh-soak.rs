//! `backmesh-soak`: plays seeded fault schedules against meshes of real
//! nodes on 127.0.0.1 (`backmesh_simulations::faults`) and prints one
//! line per seed, then a summary; exits 1 if any invariant was broken.
//!
//! ```text
//! backmesh-soak [--seeds N] [--from S] [--seed S] [--steps K] [--print]
//! ```
//!
//! `--seed S` replays one seed (its schedule is printed on failure);
//! `--seeds N` runs seeds `--from` .. `--from`+N (default 1..=100).

use std::collections::BTreeMap;

use backmesh_simulations::faults::{run, Config};

fn arg(args: &[String], flag: &str) -> Option<u64> {
    args.iter().position(|a| a == flag).and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok())
}

fn main() {
    // First, while this process has one thread: each node's disk is then
    // a tmpfs of its own, which the runner can fill.
    let disks = backmesh_simulations::faults::private_mounts();
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!("backmesh-soak [--seeds N] [--from S] [--seed S] [--steps K] [--print]");
        println!("  --print   print each seed's schedule and play nothing");
        return;
    }
    let seeds: Vec<u64> = match arg(&args, "--seed") {
        Some(s) => vec![s],
        None => {
            let from = arg(&args, "--from").unwrap_or(1);
            (from..from + arg(&args, "--seeds").unwrap_or(100)).collect()
        }
    };
    let steps = arg(&args, "--steps").map(|k| k as usize);
    if args.iter().any(|a| a == "--print") {
        for seed in &seeds {
            let mut cfg = Config::new(*seed);
            if let Some(k) = steps {
                cfg.steps = k;
            }
            println!("seed {seed}:");
            for step in backmesh_simulations::faults::schedule(&cfg) {
                println!("  {step:?}");
            }
        }
        return;
    }
    if !disks {
        eprintln!(
            "note: this process cannot make mounts of its own (no mount or user namespaces here): \
             disk-full faults are left out"
        );
    }
    println!("| seed | steps | faults | checks | backups | restores | settled after (s) | violations | secs |");
    println!("|---:|---:|---|---:|---:|---:|---:|---:|---:|");
    let mut failed = Vec::new();
    let mut by_kind: BTreeMap<&str, usize> = BTreeMap::new();
    let mut seeds_with: BTreeMap<&str, usize> = BTreeMap::new();
    let (mut checks, mut faults, mut revived) = (0, 0, 0);
    for seed in &seeds {
        let mut cfg = Config::new(*seed);
        if let Some(k) = steps {
            cfg.steps = k;
        }
        let r = run(&cfg);
        let kinds: Vec<String> = r.faults.iter().map(|(k, n)| format!("{k}×{n}")).collect();
        println!(
            "| {} | {} | {} | {} | {} | {} | {:.0} | {} | {:.0} |",
            r.seed,
            r.steps,
            kinds.join(" "),
            r.checks,
            r.backups,
            r.restores,
            r.settle_secs,
            r.violations.len(),
            r.secs
        );
        for (k, n) in &r.faults {
            *by_kind.entry(k).or_default() += n;
            *seeds_with.entry(k).or_default() += 1;
            faults += n;
        }
        checks += r.checks;
        revived += r.revived;
        if !r.violations.is_empty() {
            for v in &r.violations {
                println!("  seed {seed}: {v}");
            }
            failed.push(*seed);
        }
    }
    println!();
    println!(
        "{} seeds, {faults} faults injected, {checks} invariant checks, {} seed(s) with violations{}",
        seeds.len(),
        failed.len(),
        if failed.is_empty() { String::new() } else { format!(": {failed:?} (replay: backmesh-soak --seed S)") }
    );
    for (k, n) in &by_kind {
        println!("  {k}: {n} times, in {} seed(s)", seeds_with[k]);
    }
    if revived > 0 {
        println!(
            "  {revived} node(s) ended by themselves after a full disk (index failed for good) and were started again"
        );
    }
    if !failed.is_empty() {
        std::process::exit(1);
    }
}
