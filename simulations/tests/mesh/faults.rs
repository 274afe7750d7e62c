//! Seeded fault schedules on a real mesh (`backmesh_simulations::faults`):
//! CI plays a few seeds on every change; `scripts/soak --seeds N` plays many.

use backmesh_simulations::faults::{run, Config};

#[test]
fn seeded_fault_schedules_keep_every_invariant() {
    for seed in [1, 2] {
        let r = run(&Config { steps: 16, ..Config::new(seed) });
        eprintln!("seed {seed}: {r:?}");
        assert!(
            r.violations.is_empty(),
            "seed {seed} (replay: backmesh-soak --seed {seed} --steps 16): {:#?}",
            r.violations
        );
        assert!(r.checks > 10, "{r:?}");
    }
}
