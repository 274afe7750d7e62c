//! Seals of the mesh state: every register is signed by the one node that
//! may write it. [`slots`] walks a record's registers with the message each
//! seal covers and whose key must have made it; the rest seal, strip and
//! count. Pure: keys come in as arguments.

use serde::Serialize;

use super::crdt::{Lww, Own, Stamp};
use super::entry::Entry;
use super::records::{records_of, ArchiveRec, OriginRec, Record, RecordKey, Series};
use crate::seal::{Seal, Signer};

// ---- seals: every register is signed by the one node that may write it ----

/// The node whose key must have signed a register: a peer by its id (the
/// writer of an [`Lww`], of an origin record, of an entry), or a node by
/// its name (the series' node for its runs and archives, a holder for its
/// copy), which each node binds to one key (`store::origin_bound`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Writer {
    Peer(String),
    Node(String),
}

/// One signed thing of a record: who writes it, the message the writer
/// signs, and its signature.
pub struct Slot<'a> {
    pub writer: Writer,
    /// What the signature is over: the register's key, field, version and
    /// value (or an entry's [`Entry::signed_bytes`]).
    pub msg: Vec<u8>,
    pub sig: &'a mut Seal,
    /// A whole entry (a request's answer), signed as one: its signature
    /// is the entry's, not one of the entry's register seals.
    pub entry: bool,
    /// What it is, for people: `last run`, `holder h of archive a`, ….
    pub what: String,
}

/// A register's part of the message its writer signs.
#[derive(Serialize)]
enum Field<'a> {
    Job,
    Paused,
    Origin,
    Last,
    LastSuccess,
    LastStarted,
    LastSize,
    LastWarnings,
    Notified,
    Made(&'a str),
    Holder(&'a str, &'a str),
}

fn register_msg<V: Serialize, T: Serialize>(key: &RecordKey, field: Field<'_>, version: V, value: &T) -> Vec<u8> {
    let mut out = b"backmesh-register-1".to_vec();
    // Keys, versions and values always encode.
    let _ = ciborium::into_writer(&(key, field, version, value), &mut out);
    out
}

/// The slot of a register of one node's, stamped `at`.
fn own_slot<'a, T: Serialize>(
    key: &RecordKey,
    writer: &str,
    field: Field<'_>,
    what: String,
    at: &'a mut Stamp,
    value: &T,
) -> Slot<'a> {
    Slot {
        writer: Writer::Node(writer.to_string()),
        msg: register_msg(key, field, at.point(), value),
        sig: &mut at.seal,
        entry: false,
        what,
    }
}

/// The slot of a last-writer register, written by the node of its time.
fn lww_slot<'a, T: Serialize>(key: &RecordKey, field: Field<'_>, what: &str, r: &'a mut Lww<T>) -> Slot<'a> {
    let Lww { time, value, seal } = r;
    Slot {
        writer: Writer::Peer(time.node.clone()),
        msg: register_msg(key, field, &*time, &*value),
        sig: seal,
        entry: false,
        what: what.to_string(),
    }
}

/// The slot of a last-writer register that only node `node` writes.
fn node_lww_slot<'a, T: Serialize>(key: &RecordKey, node: &str, field: Field<'_>, r: &'a mut Lww<T>) -> Slot<'a> {
    let what = if matches!(field, Field::Job) { "job settings" } else { "pause flag" };
    Slot { writer: Writer::Node(node.to_string()), ..lww_slot(key, field, what, r) }
}

/// Every signed thing of `record` (under `key`), in one fixed order: the
/// order in which an entry carries the seals of what it writes.
pub fn slots<'a>(key: &RecordKey, record: &'a mut Record) -> Vec<Slot<'a>> {
    let mut out = Vec::new();
    match (key, record) {
        // A node's jobs and its pause flag are written by that node alone.
        (RecordKey::Job(node, _), Record::Job(r)) => out.push(node_lww_slot(key, node, Field::Job, r)),
        (RecordKey::Paused(node), Record::Paused(r)) => out.push(node_lww_slot(key, node, Field::Paused, r)),
        (RecordKey::Origin(peer), Record::Origin(o)) => {
            let OriginRec { max_seq, name, seal } = o;
            let name = name.as_ref().map(|n| (&n.time, &n.value));
            out.push(Slot {
                writer: Writer::Peer(peer.clone()),
                msg: register_msg(key, Field::Origin, *max_seq, &name),
                sig: seal,
                entry: false,
                what: format!("highest seq ({max_seq})"),
            })
        }
        (RecordKey::Series(node, _), Record::Series(s)) => {
            let Series { last, last_success, last_started, last_size, last_warnings, notified, archives, requests } =
                &mut **s;
            if let Some(Own { at, value }) = last {
                out.push(own_slot(key, node, Field::Last, "last run".into(), at, value));
            }
            if let Some(at) = last_success {
                out.push(own_slot(key, node, Field::LastSuccess, "last success".into(), at, &()));
            }
            if let Some(at) = last_started {
                out.push(own_slot(key, node, Field::LastStarted, "last start".into(), at, &()));
            }
            if let Some(Own { at, value }) = last_size {
                out.push(own_slot(key, node, Field::LastSize, "last size".into(), at, value));
            }
            if let Some(Own { at, value }) = last_warnings {
                out.push(own_slot(key, node, Field::LastWarnings, "last warnings".into(), at, value));
            }
            if let Some(n) = notified {
                out.push(lww_slot(key, Field::Notified, "last notification", n));
            }
            for (id, a) in archives.iter_mut() {
                if let Some(Own { at, value }) = &mut a.made {
                    out.push(own_slot(key, node, Field::Made(id), format!("archive {id}"), at, value));
                }
                for (h, Own { at, value }) in a.holders.iter_mut() {
                    let what = format!("copy of archive {id} on {h}");
                    out.push(own_slot(key, h, Field::Holder(id, h), what, at, value));
                }
            }
            for e in requests.iter_mut() {
                out.push(Slot {
                    writer: Writer::Peer(e.origin.clone()),
                    msg: e.signed_bytes(),
                    what: format!("`{}` entry (seq {})", e.event.kind(), e.seq),
                    sig: &mut e.sig,
                    entry: true,
                });
            }
        }
        _ => {}
    }
    out
}

/// Every seal of `series`, in [`slots`] order, without the messages
/// (cheap: for keeping seals on disk, and for the digest).
pub(crate) fn series_seals(s: &mut Series) -> Vec<&mut Seal> {
    let Series { last, last_success, last_started, last_size, last_warnings, notified, archives, requests } = s;
    let mut out = Vec::new();
    out.extend(last.as_mut().map(|r| &mut r.at.seal));
    out.extend(last_success.as_mut().map(|at| &mut at.seal));
    out.extend(last_started.as_mut().map(|at| &mut at.seal));
    out.extend(last_size.as_mut().map(|r| &mut r.at.seal));
    out.extend(last_warnings.as_mut().map(|r| &mut r.at.seal));
    out.extend(notified.as_mut().map(|r| &mut r.seal));
    for a in archives.values_mut() {
        out.extend(archive_seals(a));
    }
    out.extend(requests.iter_mut().map(|e| &mut e.sig));
    out
}

/// Every seal of one archive's record, in [`slots`] order.
pub fn archive_seals(a: &mut ArchiveRec) -> Vec<&mut Seal> {
    let mut out = Vec::new();
    out.extend(a.made.as_mut().map(|m| &mut m.at.seal));
    out.extend(a.holders.iter_mut().map(|(_, h)| &mut h.at.seal));
    out
}

/// Every seal of `record`, in [`slots`] order.
pub fn seals_mut(record: &mut Record) -> Vec<&mut Seal> {
    match record {
        Record::Job(r) => vec![&mut r.seal],
        Record::Paused(r) => vec![&mut r.seal],
        Record::Origin(o) => vec![&mut o.seal],
        Record::Series(s) => series_seals(s),
    }
}

/// Puts back into `record` the signatures this node keeps on disk only
/// ([`Seal::Stored`]), from `stored`, the record as last written: each
/// from the register that says the same (the same message). How many
/// could not be found there (left unsealed: a peer then leaves them out,
/// blaming no one, and takes them from another).
pub fn fill_seals(key: &RecordKey, record: &mut Record, stored: Option<Record>) -> usize {
    if !seals_mut(record).iter().any(|s| s.is_stored()) {
        return 0;
    }
    let mut sigs = std::collections::HashMap::new();
    if let Some(mut stored) = stored {
        for s in slots(key, &mut stored) {
            if let Some(sig) = s.sig.sig() {
                sigs.insert(s.msg, *sig);
            }
        }
    }
    let mut missing = 0;
    for s in slots(key, record) {
        if s.sig.is_stored() {
            *s.sig = match sigs.get(&s.msg) {
                Some(sig) => Seal::of(*sig),
                None => {
                    missing += 1;
                    Seal::None
                }
            };
        }
    }
    missing
}

/// Signs entry `e` as its origin: the entry itself, then every register
/// it writes ([`slots`] order, whole entries aside), into `e.seals`.
pub fn seal_entry(e: &mut Entry, key: &dyn Signer) {
    e.seals.clear();
    e.sign(key);
    let mut seals = Vec::new();
    for (k, mut r) in records_of(e) {
        seals.extend(slots(&k, &mut r).into_iter().filter(|s| !s.entry).map(|s| key.sign(&s.msg)));
    }
    e.seals = seals;
}

/// The records `e` writes, each register with the seal `e` carries for it
/// (none at all if `e` carries another number of seals than it writes
/// registers: they would be checked against the wrong messages).
pub fn sealed_records_of(e: &Entry) -> Vec<(RecordKey, Record)> {
    let mut records = records_of(e);
    if e.seals.is_empty() {
        return records;
    }
    let mut seals = e.seals.iter();
    let mut fits = true;
    for (k, r) in records.iter_mut() {
        for slot in slots(k, r).into_iter().filter(|s| !s.entry) {
            match seals.next() {
                Some(sig) => *slot.sig = Seal::of(*sig),
                None => fits = false,
            }
        }
    }
    if !fits || seals.next().is_some() {
        return records_of(e);
    }
    records
}

/// Drops from `record` every register without a seal; `false` if nothing
/// is left of it.
pub(crate) fn keep_sealed(record: &mut Record) -> bool {
    match record {
        Record::Job(r) => r.seal.is_sealed(),
        Record::Paused(r) => r.seal.is_sealed(),
        Record::Origin(o) => o.seal.is_sealed(),
        Record::Series(s) => {
            let sealed = |at: &Stamp| at.seal.is_sealed();
            if !s.last.as_ref().is_some_and(|r| sealed(&r.at)) {
                s.last = None;
            }
            if !s.last_success.as_ref().is_some_and(sealed) {
                s.last_success = None;
            }
            if !s.last_started.as_ref().is_some_and(sealed) {
                s.last_started = None;
            }
            if !s.last_size.as_ref().is_some_and(|r| sealed(&r.at)) {
                s.last_size = None;
            }
            if !s.last_warnings.as_ref().is_some_and(|r| sealed(&r.at)) {
                s.last_warnings = None;
            }
            if !s.notified.as_ref().is_some_and(|r| r.seal.is_sealed()) {
                s.notified = None;
            }
            for a in s.archives.values_mut() {
                if !a.made.as_ref().is_some_and(|m| sealed(&m.at)) {
                    a.made = None;
                }
                a.holders.retain(|(_, h)| sealed(&h.at));
            }
            s.archives.retain(|_, a| a.made.is_some() || !a.holders.is_empty());
            s.requests.retain(|e| e.sig.is_sealed());
            **s != Series::default()
        }
    }
}

/// Where a node looks up the key of a node by name.
pub trait NodeKeys {
    /// The key node `name` is bound to here, if any.
    fn key_of(&self, name: &str) -> Option<libp2p::identity::PublicKey>;

    /// The keys node `name` had before the operator bound it again: what
    /// they sealed is not taken in, but not blamed on whoever passed it on.
    fn former_keys(&self, _name: &str) -> Vec<libp2p::identity::PublicKey> {
        Vec::new()
    }

    /// The name of the node checking, if it is one: records in its own
    /// name sealed by another key are not taken, nor blamed on whoever
    /// passed them on (a server rebuilt under its old name hears what its
    /// former identity wrote before the operator's rebind reaches it).
    fn own_name(&self) -> Option<&str> {
        None
    }
}

/// What checking a peer's record found.
#[derive(Debug, Default)]
pub struct Checked {
    /// Registers whose seal is not their writer's: forged or altered.
    pub forged: Vec<String>,
    /// Registers without a seal, or whose writer's key is not known here
    /// yet: left out, blaming no one (a later pull brings them again).
    pub unproven: usize,
}

/// A record's key, for people.
pub(crate) fn key_label(key: &RecordKey) -> String {
    match key {
        RecordKey::Job(n, p) | RecordKey::Series(n, p) => format!("{p} on {n}"),
        RecordKey::Paused(n) => format!("node {n}"),
        RecordKey::Origin(o) => format!("peer {o}"),
    }
}
