//! Jobs: one backup run ([`run`]), the persistent work queue ([`queue`])
//! and the actor that schedules and runs this node's jobs ([`actor`]).

pub mod actor;
pub mod queue;
pub mod run;

pub use run::{check_path, run_backup, RunError, RunOutcome, RunReport, UnchangedBy};
