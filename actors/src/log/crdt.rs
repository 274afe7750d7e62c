//! The merge primitives of the mesh state: registers and how two of them
//! join. Laws (tested in `super::mesh`): every join is idempotent,
//! commutative and associative.
//!
//! - [`Lww`]: last writer wins, by HLC (any node may write it).
//! - [`Own`]: written by one node only, ordered by its [`Stamp`].
//! - [`join_reg`], [`join_in`], [`join_max`]: joins of one register, of a
//!   register in a map, of a maximum.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::entry::Entry;
use super::hlc::Hlc;
use crate::seal::Seal;

/// A last-writer-wins register: the value written at the greatest HLC.
/// Its writer is the node of its HLC, which seals it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lww<T> {
    pub time: Hlc,
    pub value: T,
    #[serde(default, skip_serializing_if = "Seal::carries_nothing")]
    pub seal: Seal,
}

impl<T> Lww<T> {
    /// A register not sealed yet.
    pub fn new(time: Hlc, value: T) -> Self {
        Lww { time, value, seal: Seal::None }
    }
}

/// A register: a value and the version it was written at ([`Lww`] by
/// HLC, [`Own`] by one writer's stamp).
/// The seal is the last part of a version: at one version, a sealed
/// register wins over the same one unsealed (a node that sealed its
/// registers after an upgrade replaces them everywhere).
pub(crate) trait Register: Clone {
    type Version: Ord;
    type Value: Serialize + PartialEq;
    fn version(&self) -> Self::Version;
    fn value(&self) -> &Self::Value;
}

impl<T: Clone + Serialize + PartialEq> Register for Lww<T> {
    type Version = (Hlc, bool);
    type Value = T;
    fn version(&self) -> (Hlc, bool) {
        (self.time.clone(), self.seal.is_sealed())
    }
    fn value(&self) -> &T {
        &self.value
    }
}

/// Joins `other` into `slot`: the greater version wins. Two values at one
/// version come only from a node that lies or reuses its clock: the
/// greater encoding wins then, so every node picks the same one. `true`
/// if `slot` changed.
pub(crate) fn join_reg<R: Register>(slot: &mut Option<R>, other: &R) -> bool {
    let wins = match slot {
        None => true,
        Some(mine) if mine.version() != other.version() => other.version() > mine.version(),
        Some(mine) => mine.value() != other.value() && cbor(other.value()) > cbor(mine.value()),
    };
    if wins {
        *slot = Some(other.clone());
    }
    wins
}

/// [`join_reg`] into the register under `key` of `map`, which gets one
/// only if it changes (nothing is stored for a join that says nothing).
pub(crate) fn join_in<K: Ord + Clone, R: Register>(map: &mut BTreeMap<K, R>, key: &K, other: &R) -> bool {
    let mut slot = map.get(key).cloned();
    let changed = join_reg(&mut slot, other);
    if let (true, Some(v)) = (changed, slot) {
        map.insert(key.clone(), v);
    }
    changed
}

/// Joins a maximum register; `true` if `slot` changed.
pub(crate) fn join_max<T: Ord + Clone>(slot: &mut Option<T>, other: &T) -> bool {
    match slot {
        Some(mine) if *mine >= *other => false,
        _ => {
            *slot = Some(other.clone());
            true
        }
    }
}

/// A point in one writer's history, without the writer: a register that
/// only one node writes (its own runs, its own copies) needs no tie-break
/// by node, and the peer id in every [`Hlc`] would be most of the state's
/// memory.
///
/// Ordered by the writer's sequence number first: a writer's later entry
/// always wins over its earlier one, even when its wall clock was stepped
/// back in between (a clock that ran ahead, then set right). The time is
/// what the writer's clock said, for people and for the scheduler.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Stamp {
    /// The writer's entry sequence number (0 in records from before it was kept).
    #[serde(default)]
    pub seq: u64,
    pub wall_ms: i64,
    pub logical: u32,
    /// The writer's signature of the register this stamp dates (see
    /// [`Slot`]); last in the order, as in [`Register`].
    #[serde(default, skip_serializing_if = "Seal::carries_nothing")]
    pub seal: Seal,
}

impl Stamp {
    /// The stamp of entry `e`, written by its origin.
    pub fn of(e: &Entry) -> Self {
        Stamp { seq: e.seq, wall_ms: e.time.wall_ms, logical: e.time.logical, seal: Seal::None }
    }

    /// This stamp without its seal (for views: seals stay in the state).
    pub fn bare(&self) -> Stamp {
        Stamp { seal: Seal::None, ..*self }
    }

    /// The point in time alone, as the writer's signature covers it.
    pub(crate) fn point(&self) -> (u64, i64, u32) {
        (self.seq, self.wall_ms, self.logical)
    }
}

/// A register written by one node (the series' node for its runs, a
/// holder for its copy): the value at the greatest stamp (ties as in
/// [`join_reg`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Own<T> {
    pub at: Stamp,
    pub value: T,
}

impl<T: Clone + Serialize + PartialEq> Register for Own<T> {
    type Version = Stamp;
    type Value = T;
    fn version(&self) -> Stamp {
        self.at.clone()
    }
    fn value(&self) -> &T {
        &self.value
    }
}

/// `v` in CBOR (what the state encodes always does).
pub fn cbor<T: Serialize>(v: &T) -> Vec<u8> {
    let mut out = Vec::new();
    // Writing CBOR into a Vec fails only for types that refuse to serialise; ours do not.
    if ciborium::into_writer(v, &mut out).is_err() {
        out.clear();
    }
    out
}
