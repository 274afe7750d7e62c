//! Jobs: one backup ([`backup`]), the persistent work queue ([`queue`]),
//! the pure decision of what is due ([`schedule`]) and the actor that
//! schedules and runs this node's jobs ([`actor`]).

pub mod actor;
pub mod backup;
pub mod change;
pub mod plugin;
pub mod proto;
pub mod queue;
pub mod schedule;
pub mod seals;

pub use backup::{error_chain, run_backup, run_backup_as, run_job, RunError, RunOutcome, RunReport, UnchangedBy};
pub use plugin::check_path;
