//! Jobs: one backup run ([`run`]), the persistent work queue ([`queue`]),
//! the pure decision of what is due ([`schedule`]) and the actor that
//! schedules and runs this node's jobs ([`actor`]).

pub mod actor;
pub mod plugin;
pub mod proto;
pub mod queue;
pub mod run;
pub mod schedule;

pub use plugin::check_path;
pub use run::{error_chain, run_backup, run_backup_as, run_job, RunError, RunOutcome, RunReport, UnchangedBy};
