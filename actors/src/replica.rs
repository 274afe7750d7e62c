//! Replication: which peers hold each backup series ([`placement`]), how
//! archives move between nodes ([`source`] reads them from wherever they
//! are), and the actor that keeps every series at its copies, serves
//! transfers, restores and verifies ([`actor`]).

pub mod actor;
pub mod placement;
pub mod plan;
pub mod proto;
pub mod quota;
pub mod source;
