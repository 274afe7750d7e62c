//! Replication: which peers hold each backup series ([`crate::placement`]), how
//! archives move between nodes ([`source`] reads them from wherever they
//! are), and the actor that keeps every series at its copies, serves
//! transfers, restores and verifies ([`actor`]), with its parts: pushing
//! to holders ([`push`]), the holder's side ([`holder`]), who may read
//! what ([`reads`]), [`restore`] and [`verify`]. Its protocols are in
//! [`proto`].

pub mod actor;
pub mod arrivals;
pub mod holder;
pub mod plan;
pub mod proto;
pub mod push;
pub mod quota;
pub mod reads;
pub mod restore;
pub mod source;
pub mod verify;
