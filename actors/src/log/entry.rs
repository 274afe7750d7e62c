//! Log entries: every execution in the mesh, immutable, identified by
//! (origin, seq). Serialised with the kind as a tag and the event's fields
//! beside it, so JSON reads `{"origin", "seq", "time", "kind", …fields}`.

use serde::{Deserialize, Serialize};

use super::hlc::Hlc;
use super::job_spec::{JobSpec, PluginReport};
use super::recent::{Recent, RunResult};
use crate::seal::{Seal, Sig, Signer};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Peer id of the node that wrote the entry.
    pub origin: String,
    /// That node's name when it wrote it (for people; ids are for machines).
    pub origin_name: String,
    /// 1, 2, 3, … per origin, without gaps.
    pub seq: u64,
    pub time: Hlc,
    /// The origin's signature over the entry ([`Entry::signed_bytes`]).
    #[serde(default, skip_serializing_if = "Seal::carries_nothing")]
    pub sig: Seal,
    /// The origin's signatures of the state registers the entry writes,
    /// in the order `mesh::seal_entry` walks them (not covered by `sig`:
    /// each covers its own register).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub seals: Vec<Sig>,
    #[serde(flatten)]
    pub event: Event,
}

impl Entry {
    /// An entry of `origin` not signed yet.
    pub fn new(origin: String, origin_name: String, seq: u64, time: Hlc, event: Event) -> Self {
        Entry { origin, origin_name, seq, time, sig: Seal::None, seals: Vec::new(), event }
    }

    pub fn id(&self) -> (&str, u64) {
        (&self.origin, self.seq)
    }

    /// What the origin signs: the entry in CBOR, its signatures left out.
    pub fn signed_bytes(&self) -> Vec<u8> {
        let bare = Entry { sig: Seal::None, seals: Vec::new(), ..self.clone() };
        let mut out = b"backmesh-entry-1".to_vec();
        // An entry always encodes (its maps have text keys).
        let _ = ciborium::into_writer(&bare, &mut out);
        out
    }

    /// Signs the entry as its origin (`key` must be the origin's).
    pub fn sign(&mut self, key: &dyn Signer) {
        self.sig = Seal::of(key.sign(&self.signed_bytes()));
    }

    /// Whether the entry carries its origin's signature. An entry is
    /// signed over its re-encoding, so one with fields this version does
    /// not know (of a newer node) does not verify here.
    pub fn signed_by_origin(&self) -> bool {
        self.sig.sig().is_some_and(|s| crate::seal::holds(&self.origin, &self.signed_bytes(), &s.0))
    }
}

/// What happened. `node` is always the node the event concerns (a job's
/// node), which need not be the origin that recorded it.
///
/// A kind this version does not know (written by a newer node) decodes
/// as [`Event::Other`]: it is kept, stored and passed on as it came, and
/// folds into nothing but its origin's sequence.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(remote = "Self", tag = "kind", rename_all = "snake_case")]
pub enum Event {
    Registered {
        node: String,
        path: String,
        every_min: u64,
        #[serde(default)]
        excludes: Vec<String>,
        /// Source, hooks, timeout, notifications (all optional).
        #[serde(default, skip_serializing_if = "JobSpec::is_default")]
        spec: JobSpec,
    },
    Unregistered {
        node: String,
        path: String,
    },
    Paused {
        node: String,
    },
    Resumed {
        node: String,
    },
    Started {
        node: String,
        path: String,
        /// The on-demand request this run answers, if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        request: Option<String>,
    },
    Finished {
        node: String,
        path: String,
        archive: String,
        size: u64,
        files: u64,
        duration_ms: u64,
        #[serde(default)]
        warnings: Vec<String>,
        /// The on-demand request this run answers, if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        request: Option<String>,
        /// What a plugin, command or hook reported.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        plugin: Option<PluginReport>,
        /// How the series' runs before this one ended, and when.
        #[serde(default, skip_serializing_if = "Recent::is_empty")]
        recent: Recent,
    },
    Unchanged {
        node: String,
        path: String,
        archive: String,
        duration_ms: u64,
        /// The on-demand request this run answers, if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        request: Option<String>,
        /// What a plugin, command or hook reported.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        plugin: Option<PluginReport>,
        /// How the series' runs before this one ended, and when.
        #[serde(default, skip_serializing_if = "Recent::is_empty")]
        recent: Recent,
    },
    Failed {
        node: String,
        path: String,
        error: String,
        duration_ms: u64,
        /// The on-demand request this run answers, if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        request: Option<String>,
        /// What a plugin, command or hook reported.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        plugin: Option<PluginReport>,
        /// How the series' runs before this one ended, and when.
        #[serde(default, skip_serializing_if = "Recent::is_empty")]
        recent: Recent,
    },
    /// `holder` now keeps a complete copy of `archive`.
    Replicated {
        node: String,
        path: String,
        archive: String,
        holder: String,
        /// Member bytes sent for it (0 when the holder had them all).
        #[serde(default)]
        bytes: u64,
    },
    Pruned {
        node: String,
        path: String,
        archive: String,
        holder: String,
    },
    /// A restore of `archive` onto node `on`, into `to`; `error` when it failed.
    Restored {
        node: String,
        path: String,
        archive: String,
        on: String,
        to: String,
        #[serde(default)]
        files: u64,
        #[serde(default)]
        bytes: u64,
        #[serde(default)]
        duration_ms: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
        /// The on-demand request this run answers, if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        request: Option<String>,
    },
    /// `by` told the job's notification targets that it is now `state`
    /// (`failure`, `stale` or `recovery`).
    Notified {
        node: String,
        path: String,
        /// `failure`, `stale` or `recovery` ([`Notice`]); a word this
        /// version does not know (a newer node's) is kept as it came.
        event: String,
        by: String,
        delivered: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    /// `holder` re-hashed the members of its copies of (node, path).
    Verified {
        node: String,
        path: String,
        holder: String,
        archives: u64,
        members: u64,
        /// Members found damaged or missing.
        damaged: u64,
        /// Of those, replaced from another holder.
        repaired: u64,
        ok: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        request: Option<String>,
    },
    Repaired {
        node: String,
        path: String,
        archive: String,
        holder: String,
    },
    /// A holder could not verify its copies of a series to the end (a
    /// manifest it cannot read, a crash of the check): never a success.
    /// A kind of its own, so a node that does not know it keeps it as it
    /// came ([`Event::Other`]).
    VerifyFailed {
        node: String,
        path: String,
        holder: String,
        error: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        request: Option<String>,
    },
    /// An event of a kind this version does not know.
    #[serde(skip)]
    Other(OtherEvent),
}

/// An event of an unknown kind, as it came: its kind and its whole map
/// (the kind included), in CBOR.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OtherEvent {
    pub kind: String,
    cbor: Vec<u8>,
    node: String,
    path: Option<String>,
}

impl OtherEvent {
    fn from_value(kind: String, v: &ciborium::Value) -> Result<Self, ciborium::ser::Error<std::io::Error>> {
        let text = |name: &str| {
            v.as_map()?.iter().find(|(k, _)| k.as_text() == Some(name)).and_then(|(_, v)| v.as_text().map(String::from))
        };
        let mut cbor = Vec::new();
        ciborium::into_writer(v, &mut cbor)?;
        Ok(OtherEvent { kind, node: text("node").unwrap_or_default(), path: text("path"), cbor })
    }

    /// Every field as it came.
    pub fn value(&self) -> Option<ciborium::Value> {
        ciborium::from_reader(&self.cbor[..]).ok()
    }
}

impl Serialize for Event {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Event::Other(o) => ciborium::from_reader::<ciborium::Value, _>(&o.cbor[..])
                .map_err(serde::ser::Error::custom)?
                .serialize(s),
            known => Event::serialize(known, s),
        }
    }
}

impl<'de> Deserialize<'de> for Event {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let v = ciborium::Value::deserialize(d)?;
        let kind = v
            .as_map()
            .and_then(|m| m.iter().find(|(k, _)| k.as_text() == Some("kind")))
            .and_then(|(_, k)| k.as_text())
            .ok_or_else(|| D::Error::custom("an event without a kind"))?
            .to_string();
        if KINDS.contains(&kind.as_str()) {
            // A known kind must decode as that kind: a malformed one is refused.
            v.deserialized::<Known>().map(|k| k.0).map_err(D::Error::custom)
        } else {
            OtherEvent::from_value(kind, &v).map(Event::Other).map_err(D::Error::custom)
        }
    }
}

/// An entry of a kind this version does not know, as a newer node would
/// write it (for tests elsewhere in the crate).
#[cfg(test)]
pub(crate) fn newer_entry(origin: &str, seq: u64, node: &str, path: &str) -> Entry {
    let t = |s: &str| ciborium::Value::Text(s.to_string());
    let v = ciborium::Value::Map(vec![
        (t("kind"), t("uploaded")),
        (t("node"), t(node)),
        (t("path"), t(path)),
        (t("bucket"), t("s3://b/p")),
    ]);
    let event = Event::Other(OtherEvent::from_value("uploaded".into(), &v).expect("encodes"));
    Entry::new(
        origin.into(),
        origin.to_lowercase(),
        seq,
        Hlc { wall_ms: seq as i64 * 1_000, logical: 0, node: origin.into() },
        event,
    )
}

/// An event decoded by the derived code alone.
struct Known(Event);

impl<'de> Deserialize<'de> for Known {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Event::deserialize(d).map(Known)
    }
}

/// Every kind this version knows.
const KINDS: [&str; 15] = [
    "registered",
    "unregistered",
    "paused",
    "resumed",
    "started",
    "finished",
    "unchanged",
    "failed",
    "replicated",
    "pruned",
    "restored",
    "verified",
    "repaired",
    "verify_failed",
    "notified",
];

impl Event {
    /// The kind as it appears in JSON (`registered`, `finished`, …).
    pub fn kind(&self) -> &str {
        match self {
            Event::Other(o) => &o.kind,
            Event::Registered { .. } => "registered",
            Event::Unregistered { .. } => "unregistered",
            Event::Paused { .. } => "paused",
            Event::Resumed { .. } => "resumed",
            Event::Started { .. } => "started",
            Event::Finished { .. } => "finished",
            Event::Unchanged { .. } => "unchanged",
            Event::Failed { .. } => "failed",
            Event::Replicated { .. } => "replicated",
            Event::Pruned { .. } => "pruned",
            Event::Restored { .. } => "restored",
            Event::Verified { .. } => "verified",
            Event::Repaired { .. } => "repaired",
            Event::VerifyFailed { .. } => "verify_failed",
            Event::Notified { .. } => "notified",
        }
    }

    /// The node the event concerns.
    pub fn node(&self) -> &str {
        match self {
            Event::Registered { node, .. }
            | Event::Unregistered { node, .. }
            | Event::Paused { node }
            | Event::Resumed { node }
            | Event::Started { node, .. }
            | Event::Finished { node, .. }
            | Event::Unchanged { node, .. }
            | Event::Failed { node, .. }
            | Event::Replicated { node, .. }
            | Event::Pruned { node, .. }
            | Event::Restored { node, .. }
            | Event::Verified { node, .. }
            | Event::Repaired { node, .. }
            | Event::VerifyFailed { node, .. }
            | Event::Notified { node, .. } => node,
            Event::Other(o) => &o.node,
        }
    }

    /// The one node that may write this event: a node its own jobs
    /// (registrations, pause, resume: another node's operator asks it by
    /// an order, docs/security.md) and their runs, a holder what it keeps,
    /// prunes, repairs and verifies, a node the restores and notifications
    /// it made. `None`: kinds this version does not know.
    pub fn author(&self) -> Option<&str> {
        match self {
            Event::Started { node, .. }
            | Event::Finished { node, .. }
            | Event::Unchanged { node, .. }
            | Event::Failed { node, .. }
            | Event::Registered { node, .. }
            | Event::Unregistered { node, .. }
            | Event::Paused { node, .. }
            | Event::Resumed { node, .. } => Some(node),
            Event::Replicated { holder, .. }
            | Event::Pruned { holder, .. }
            | Event::Verified { holder, .. }
            | Event::VerifyFailed { holder, .. }
            | Event::Repaired { holder, .. } => Some(holder),
            Event::Restored { on, .. } => Some(on),
            Event::Notified { by, .. } => Some(by),
            Event::Other(_) => None,
        }
    }

    /// Whether the names it carries are valid ones (node names, paths, the
    /// ids of archives it says were made, copied or pruned), or the first
    /// that is not: an entry that names a node `a b` or an archive
    /// `../x` is refused where it enters, whoever signed it.
    pub fn check_names(&self) -> Result<(), backmesh_api::names::BadName> {
        use backmesh_api::names::{check_archive_id, check_node_name, check_series_path};
        match self {
            // A newer kind: only what this version reads of it.
            Event::Other(o) => {
                if !o.node.is_empty() {
                    check_node_name(&o.node)?;
                }
                return o.path.as_deref().map_or(Ok(()), check_series_path);
            }
            _ => check_node_name(self.node())?,
        }
        if let Some(author) = self.author() {
            check_node_name(author)?;
        }
        if let Some(path) = self.path() {
            check_series_path(path)?;
        }
        match self {
            // A run whose plugin keeps its own copy (a mirror) makes no archive.
            Event::Finished { archive, .. } if archive.is_empty() => Ok(()),
            Event::Finished { archive, .. }
            | Event::Unchanged { archive, .. }
            | Event::Replicated { archive, .. }
            | Event::Pruned { archive, .. }
            | Event::Repaired { archive, .. } => check_archive_id(archive),
            _ => Ok(()),
        }
    }

    /// A run's outcome (`finished`, `unchanged`, `failed`) and the runs
    /// before it that its entry carries.
    pub fn run(&self) -> Option<(RunResult, &Recent)> {
        match self {
            Event::Finished { recent, .. } => Some((RunResult::Finished, recent)),
            Event::Unchanged { recent, .. } => Some((RunResult::Unchanged, recent)),
            Event::Failed { recent, .. } => Some((RunResult::Failed, recent)),
            _ => None,
        }
    }

    /// The list of earlier runs a run's entry carries, to be filled in.
    pub fn recent_mut(&mut self) -> Option<&mut Recent> {
        match self {
            Event::Finished { recent, .. } | Event::Unchanged { recent, .. } | Event::Failed { recent, .. } => {
                Some(recent)
            }
            _ => None,
        }
    }

    /// The on-demand request an outcome answers.
    pub fn request(&self) -> Option<&str> {
        match self {
            Event::Started { request, .. }
            | Event::Finished { request, .. }
            | Event::Unchanged { request, .. }
            | Event::Failed { request, .. }
            | Event::Restored { request, .. }
            | Event::Verified { request, .. }
            | Event::VerifyFailed { request, .. } => request.as_deref(),
            _ => None,
        }
    }

    /// The path it concerns, for job-level events.
    pub fn path(&self) -> Option<&str> {
        match self {
            Event::Paused { .. } | Event::Resumed { .. } => None,
            Event::Registered { path, .. }
            | Event::Unregistered { path, .. }
            | Event::Started { path, .. }
            | Event::Finished { path, .. }
            | Event::Unchanged { path, .. }
            | Event::Failed { path, .. }
            | Event::Replicated { path, .. }
            | Event::Pruned { path, .. }
            | Event::Restored { path, .. }
            | Event::Verified { path, .. }
            | Event::Repaired { path, .. }
            | Event::VerifyFailed { path, .. }
            | Event::Notified { path, .. } => Some(path),
            Event::Other(o) => o.path.as_deref(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> Entry {
        Entry {
            origin: "12D3KooWabc".into(),
            origin_name: "n1".into(),
            seq: 7,
            time: Hlc { wall_ms: 1_795_000_000_000, logical: 2, node: "12D3KooWabc".into() },
            sig: Seal::None,
            seals: Vec::new(),
            event: Event::Finished {
                recent: Default::default(),
                node: "n3".into(),
                path: "/srv/app".into(),
                archive: "20261122T030000.000Z-deadbeef".into(),
                size: 123,
                files: 4,
                duration_ms: 56,
                warnings: vec!["app.log: changed while being read".into()],
                request: None,
                plugin: None,
            },
        }
    }

    #[test]
    fn cbor_round_trip() {
        let e = entry();
        let mut buf = Vec::new();
        ciborium::into_writer(&e, &mut buf).unwrap();
        let back: Entry = ciborium::from_reader(&buf[..]).unwrap();
        assert_eq!(back, e);
    }

    #[test]
    fn json_shape_is_flat_with_a_kind() {
        let v = serde_json_like(&entry());
        for key in ["origin", "origin_name", "seq", "time", "kind", "node", "path", "archive", "size"] {
            assert!(v.contains(&format!("\"{key}\"")), "{key} in {v}");
        }
        assert!(v.contains("\"kind\":\"finished\""), "{v}");
    }

    fn map(pairs: &[(&str, ciborium::Value)]) -> ciborium::Value {
        ciborium::Value::Map(pairs.iter().map(|(k, v)| (ciborium::Value::Text(k.to_string()), v.clone())).collect())
    }

    #[test]
    fn an_unknown_kind_is_kept_whole_and_passed_on_as_it_came() {
        let t = ciborium::Value::Text;
        let newer = map(&[
            ("origin", t("12D3KooWabc".into())),
            ("origin_name", t("n1".into())),
            ("seq", ciborium::Value::Integer(9.into())),
            (
                "time",
                map(&[
                    ("wall_ms", ciborium::Value::Integer(5.into())),
                    ("logical", ciborium::Value::Integer(0.into())),
                    ("node", t("12D3KooWabc".into())),
                ]),
            ),
            ("kind", t("uploaded".into())),
            ("node", t("n3".into())),
            ("path", t("/srv/app".into())),
            ("bucket", t("s3://b/p".into())),
            ("parts", ciborium::Value::Array(vec![ciborium::Value::Integer(1.into()), ciborium::Value::Bool(true)])),
        ]);
        let mut bytes = Vec::new();
        ciborium::into_writer(&newer, &mut bytes).unwrap();
        let e: Entry = ciborium::from_reader(&bytes[..]).unwrap();
        assert_eq!((e.seq, e.event.kind(), e.event.node(), e.event.path()), (9, "uploaded", "n3", Some("/srv/app")));
        let mut again = Vec::new();
        ciborium::into_writer(&e, &mut again).unwrap();
        let back: ciborium::Value = ciborium::from_reader(&again[..]).unwrap();
        let fields = |v: &ciborium::Value| {
            let mut f: Vec<String> = v.as_map().unwrap().iter().map(|(k, v)| format!("{k:?}={v:?}")).collect();
            f.sort();
            f
        };
        assert_eq!(fields(&back), fields(&newer), "every field passed on, the unknown ones included");
        assert_eq!(ciborium::from_reader::<Entry, _>(&again[..]).unwrap(), e);
    }

    #[test]
    fn names_are_checked_but_a_mirror_run_needs_no_archive() {
        let finished = |node: &str, archive: &str| Event::Finished {
            recent: Default::default(),
            node: node.into(),
            path: "/srv".into(),
            archive: archive.into(),
            size: 0,
            files: 0,
            duration_ms: 1,
            warnings: vec![],
            request: None,
            plugin: None,
        };
        assert!(finished("n1", "").check_names().is_ok(), "a plugin that keeps its own copy makes no archive");
        assert!(finished("n1", "20261122T040113.000Z-0a1b2c3d").check_names().is_ok());
        assert!(finished("n1", "../x").check_names().is_err());
        assert!(finished("n 1", "").check_names().is_err());
    }

    #[test]
    fn a_known_kind_that_is_malformed_is_refused() {
        let mut v = Vec::new();
        let mut e = entry();
        e.seq = 1;
        ciborium::into_writer(&e, &mut v).unwrap();
        let mut m: ciborium::Value = ciborium::from_reader(&v[..]).unwrap();
        m.as_map_mut().unwrap().retain(|(k, _)| k.as_text() != Some("archive"));
        let mut bytes = Vec::new();
        ciborium::into_writer(&m, &mut bytes).unwrap();
        let err = ciborium::from_reader::<Entry, _>(&bytes[..]).unwrap_err();
        assert!(err.to_string().contains("archive"), "{err}");
        m.as_map_mut().unwrap().retain(|(k, _)| k.as_text() != Some("kind"));
        let mut bytes = Vec::new();
        ciborium::into_writer(&m, &mut bytes).unwrap();
        assert!(ciborium::from_reader::<Entry, _>(&bytes[..]).is_err(), "an event without a kind is refused");
    }

    #[test]
    fn the_list_of_known_kinds_is_the_enum_s() {
        let err =
            map(&[("kind", ciborium::Value::Text("zzz".into()))]).deserialized::<Known>().err().unwrap().to_string();
        let named = err.split('`').skip(3).step_by(2).count();
        assert_eq!(named, KINDS.len(), "{err}");
        for k in KINDS {
            assert!(err.contains(&format!("`{k}`")), "{k} in {err}");
        }
    }

    /// JSON via ciborium → serde_json is not a dependency here; the CBOR
    /// map keys are what the JSON keys will be. Render them as JSON-ish text.
    fn serde_json_like(e: &Entry) -> String {
        let mut buf = Vec::new();
        ciborium::into_writer(e, &mut buf).unwrap();
        let v: ciborium::Value = ciborium::from_reader(&buf[..]).unwrap();
        fn render(v: &ciborium::Value) -> String {
            match v {
                ciborium::Value::Map(m) => format!(
                    "{{{}}}",
                    m.iter().map(|(k, v)| format!("{}:{}", render(k), render(v))).collect::<Vec<_>>().join(",")
                ),
                ciborium::Value::Text(t) => format!("\"{t}\""),
                ciborium::Value::Array(a) => format!("[{}]", a.iter().map(render).collect::<Vec<_>>().join(",")),
                other => format!("{other:?}"),
            }
        }
        render(&v)
    }
}
