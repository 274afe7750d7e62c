//! The fault schedule: a seeded sequence of steps (kills, partitions,
//! full disks, clock jumps, damage, backups) for the runner to play.

/// SplitMix64: a small, well-mixed generator; the schedule depends on
/// nothing else.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// A number below `n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next_u64() % n
        }
    }
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// One step of a schedule. Its numbers pick among what exists when it is
/// played (a live node, a series), so a schedule stays playable whatever
/// the processes did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    Change {
        series: u64,
        files: u64,
        seed: u64,
    },
    Backup {
        series: u64,
        via: u64,
    },
    /// A backup, and its node killed `after_ms` into it.
    BackupKilled {
        series: u64,
        after_ms: u64,
    },
    Restore {
        series: u64,
        pick: u64,
        on: u64,
    },
    /// A restore onto a node, and that node killed `after_ms` into it;
    /// then, restarted, the same restore again.
    RestoreKilled {
        series: u64,
        pick: u64,
        on: u64,
        after_ms: u64,
    },
    Verify {
        via: u64,
    },
    Kill {
        node: u64,
    },
    Restart {
        node: u64,
    },
    Freeze {
        node: u64,
        secs: u64,
    },
    Corrupt {
        node: u64,
        pick: u64,
    },
    /// Restart a node with its clock moved by `offset_s` (0: set right).
    Clock {
        node: u64,
        offset_s: i64,
    },
    /// Fill `node`'s disk (its data directory is a small tmpfs of its own;
    /// the kernel answers ENOSPC), or, while it is full, free it again.
    DiskFull {
        node: u64,
    },
    /// Cut `node` off from every other node (through the nodes' test-only
    /// partition gate), both sides running on; or, while the mesh is cut,
    /// mend it.
    Partition {
        node: u64,
    },
}

impl Step {
    /// The kind of fault this step injects, if it is one.
    pub fn fault(&self) -> Option<&'static str> {
        match self {
            Step::BackupKilled { .. } | Step::RestoreKilled { .. } | Step::Kill { .. } => Some("kill-9"),
            Step::Restart { .. } => Some("restart"),
            Step::Freeze { .. } => Some("freeze"),
            Step::Corrupt { .. } => Some("corrupt-member"),
            Step::Clock { .. } => Some("clock-jump"),
            Step::Partition { .. } => Some("partition"),
            Step::DiskFull { .. } => Some("disk-full"),
            _ => None,
        }
    }
}

/// What a run is made of.
#[derive(Clone, Debug)]
pub struct Config {
    pub seed: u64,
    pub steps: usize,
    pub nodes: usize,
    pub series: usize,
    pub keep: usize,
    pub replicas: usize,
}

impl Config {
    pub fn new(seed: u64) -> Self {
        Config { seed, steps: 24, nodes: 3, series: 2, keep: 3, replicas: 2 }
    }
}

/// The schedule of `cfg`: drawn from its seed alone.
pub fn schedule(cfg: &Config) -> Vec<Step> {
    let mut r = Rng::new(cfg.seed);
    let mut out = Vec::with_capacity(cfg.steps);
    for _ in 0..cfg.steps {
        let series = r.below(cfg.series as u64);
        let node = r.below(cfg.nodes as u64);
        let step = match r.below(100) {
            0..=19 => Step::Change { series, files: 1 + r.below(4), seed: r.next_u64() },
            20..=39 => Step::Backup { series, via: node },
            40..=45 => Step::BackupKilled { series, after_ms: r.below(800) },
            46..=52 => Step::Restore { series, pick: r.next_u64(), on: node },
            53..=56 => Step::RestoreKilled { series, pick: r.next_u64(), on: node, after_ms: r.below(400) },
            57..=61 => Step::Verify { via: node },
            62..=67 => Step::Kill { node },
            68..=75 => Step::Restart { node },
            76..=80 => Step::Freeze { node, secs: 1 + r.below(5) },
            81..=86 => Step::Corrupt { node, pick: r.next_u64() },
            87..=92 => Step::Partition { node },
            93..=96 => Step::DiskFull { node },
            _ => {
                let offsets = [-3600, -300, -30, 0, 30, 90];
                Step::Clock { node, offset_s: offsets[r.below(offsets.len() as u64) as usize] }
            }
        };
        out.push(step);
    }
    out
}
