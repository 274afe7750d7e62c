//! Jobs: one backup run ([`run`]), the persistent work queue ([`queue`]),
//! the pure decision of what is due ([`schedule`]) and the actor that
//! schedules and runs this node's jobs ([`actor`]).

pub mod actor;
pub mod plugin;
pub mod queue;
pub mod run;
pub mod schedule;

pub use run::{
    check_path, error_chain, run_backup, run_backup_as, run_job, RunError, RunOutcome, RunReport, UnchangedBy,
};

/// Milliseconds in a job's "minute" (`--every` is in minutes): 60 000, or
/// `BACKMESH_MINUTE_SECS` seconds when set — so that tests and demos can
/// see schedules and staleness play out in seconds.
pub fn minute_ms() -> i64 {
    static MS: std::sync::OnceLock<i64> = std::sync::OnceLock::new();
    *MS.get_or_init(|| {
        std::env::var("BACKMESH_MINUTE_SECS")
            .ok()
            .and_then(|v| v.parse::<f64>().ok())
            .filter(|v| *v > 0.0)
            .map(|v| (v * 1000.0) as i64)
            .unwrap_or(60_000)
    })
}
