//! The holder's side of `/backmesh/xfer/3`: what it takes (only members it
//! asked for, only archives sealed by their own node, within its free
//! space and the origin's quota) and what it serves (to readers the
//! replica actor found entitled, [`super::reads`]: members of the archive
//! the read names only). Runs in the blocking
//! pool; the replica actor hands it each request.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use super::proto::{
    ArchiveId, ManifestBase, WireDelta, WireMember, XferRequest, XferResponse, DELTA_RAW_BATCH, MAX_XFER,
};
use super::quota::{admit, Admission, Quota, Usage, MARGIN};
use crate::archive::Manifest;
use crate::hash::Digest;
use crate::log::entry::Event;
use crate::store::{Retention, Store};

/// Members this node asked each peer for (its answers to offers and
/// commits): a `Put` is accepted only for these, so a peer cannot fill
/// this node's disk with members of no archive it offered.
#[derive(Debug, Default)]
pub struct Wanted {
    /// peer → digest → until when it may come (ms).
    by_peer: HashMap<String, HashMap<Digest, i64>>,
}

/// How long an asked-for member may take to come.
pub(crate) const WANTED_FOR_MS: i64 = 30 * 60_000;

/// Members asked of one peer at once, at most (a whole large archive).
pub(crate) const WANTED_MAX: usize = 1 << 20;

impl Wanted {
    /// `peer` was told to send `digests`.
    pub fn asked(&mut self, peer: &str, digests: &[Digest], now_ms: i64) {
        let w = self.by_peer.entry(peer.to_string()).or_default();
        w.retain(|_, until| *until > now_ms);
        for d in digests.iter().take(WANTED_MAX.saturating_sub(w.len())) {
            w.insert(*d, now_ms + WANTED_FOR_MS);
        }
    }

    /// Takes `digests` from what `peer` was asked for: all of them, or
    /// none and the first that was not asked for.
    pub fn take(&mut self, peer: &str, digests: &[Digest], now_ms: i64) -> Result<(), Digest> {
        let w = self.by_peer.get_mut(peer);
        let asked = |d: &Digest| w.as_ref().is_some_and(|w| w.get(d).is_some_and(|until| *until > now_ms));
        if let Some(d) = digests.iter().find(|d| !asked(d)) {
            return Err(*d);
        }
        if let Some(w) = self.by_peer.get_mut(peer) {
            for d in digests {
                w.remove(d);
            }
            if w.is_empty() {
                self.by_peer.remove(peer);
            }
        }
        Ok(())
    }
}

/// Rebuilds the members sent as deltas whose base this node holds; those
/// that do not come out as their digest are dropped (the commit asks for
/// them again, whole).
///
/// The bases inflated for one `Put` count against [`DELTA_RAW_BATCH`] too:
/// a few bytes of delta naming a large base must not make this node
/// inflate without bound.
pub(crate) fn rebuild(store: &Store, deltas: &[WireDelta]) -> Vec<(Digest, Vec<u8>)> {
    let mut budget = DELTA_RAW_BATCH;
    deltas
        .iter()
        .filter_map(|d| {
            let old = store.raw_member(&d.base, budget).ok()?;
            budget -= old.len() as u64;
            let raw = crate::archive::delta::apply(&old, &d.ops, &d.literals, d.raw_len, DELTA_RAW_BATCH).ok()?;
            let data = crate::archive::create::gzip_member(&raw, d.level);
            (Digest::of(&data) == d.digest).then_some((d.digest, data))
        })
        .collect()
}

/// Serves one transfer request from the store; the events to record after.
/// What serving a transfer request came to: the answer, the events to
/// record, and what the peer did wrong if it sent a forged or unsealed
/// manifest.
pub(crate) type Served = (XferResponse, Vec<Event>, Option<Blame>);

/// What a peer's refused request says of it.
pub(crate) enum Blame {
    /// It sent something forged or out of its authority.
    Misdeed(String),
    /// A node went past one of this node's bounds: the origin whose
    /// archive would pass its quota here (its peer id, from the seal),
    /// whoever sent it.
    Limited { origin: Option<String>, what: String },
}

/// What serving transfer requests needs besides the request.
pub(crate) struct Holder<'a> {
    /// Free bytes on the store's disk, read once per request.
    pub(crate) free: u64,
    pub(crate) store: &'a Store,
    pub(crate) me: &'a str,
    pub(crate) keep: Retention,
    pub(crate) quota: Quota,
    pub(crate) usage: &'a Mutex<Usage>,
    pub(crate) claimants: &'a HashMap<String, String>,
    /// The members of archives read lately.
    pub(crate) members: &'a super::reads::MemberSets,
    /// The peer that sent the request.
    pub(crate) from: &'a str,
    /// Each job's schedule, (node, path) → minutes between runs.
    pub(crate) schedules: &'a HashMap<(String, String), u64>,
    /// New archives each series' node sent lately ([`super::arrivals`]).
    pub(crate) arrivals: &'a Mutex<super::arrivals::Arrivals>,
}

/// Whether archive `m` is within its series' schedule here
/// ([`super::arrivals`]): `Ok(true)` when it counts (then [`took`] counts
/// it once it is kept), `Ok(false)` when it does not: archives another
/// node hands on, and those that are not new.
fn within_schedule(
    h: &Holder,
    m: &Manifest,
    misdeed: &std::cell::RefCell<Option<Blame>>,
) -> Result<bool, XferResponse> {
    if m.signer() != Some(h.from) {
        return Ok(false);
    }
    // A flood is of new archives: one made over an hour ago, or older
    // than the newest held here (the origin handing its kept archives to
    // a newly elected holder), is not counted.
    let now = crate::clock::now_ms();
    let newest_held = h.store.list(&m.node, &m.path).ok().and_then(|l| l.iter().map(|s| s.order_ms).max());
    if m.created_ms < now - super::arrivals::SLOWEST || newest_held.is_some_and(|n| m.order() <= n) {
        return Ok(false);
    }
    let every = h.schedules.get(&(m.node.clone(), m.path.clone())).copied();
    let mut arrivals = h.arrivals.lock().unwrap_or_else(|p| p.into_inner());
    match arrivals.admit(&m.node, &m.path, every, now, false) {
        Ok(()) => Ok(true),
        Err(what) => {
            let reason = format!("{}: node {} {what}", h.me, m.node);
            *misdeed.borrow_mut() = Some(Blame::Limited { origin: m.signer().map(String::from), what });
            Err(XferResponse::OverQuota { reason })
        }
    }
}

/// Counts archive `m`, which [`within_schedule`] let in, as kept.
fn took(h: &Holder, m: &Manifest) {
    let every = h.schedules.get(&(m.node.clone(), m.path.clone())).copied();
    let mut arrivals = h.arrivals.lock().unwrap_or_else(|p| p.into_inner());
    arrivals.count(&m.node, &m.path, every, crate::clock::now_ms());
}

pub(crate) fn serve(h: &Holder, request: XferRequest) -> Served {
    let misdeed = std::cell::RefCell::new(None);
    let (response, events) = answer(h, request, &misdeed);
    (response, events, misdeed.into_inner())
}

/// Whether this holder has room for the members `missing` of archive `m`:
/// free space (less a margin) and its origin's quota. If it has, they are
/// reserved against the quota until they come.
pub(crate) fn room_for(
    h: &Holder,
    m: &Manifest,
    missing: &[Digest],
    misdeed: &std::cell::RefCell<Option<Blame>>,
) -> Result<(), XferResponse> {
    let (store, me, quota) = (h.store, h.me, h.quota);
    let refused = |reason: String| XferResponse::Refused { reason };
    let want: HashSet<&Digest> = missing.iter().collect();
    let mut counted = HashSet::new();
    let need: u64 = m.objects().filter(|o| want.contains(&o.cid) && counted.insert(o.cid)).map(|o| o.len).sum();
    let free = h.free;
    let mut usage = h.usage.lock().unwrap_or_else(|p| p.into_inner());
    let held = match usage.held(store, &m.node, &m.id) {
        Ok(n) => n,
        Err(e) => return Err(refused(format!("{me} cannot count what node {}'s archives take: {e}", m.node))),
    };
    match admit(need, free, held, quota) {
        Admission::Take => {}
        Admission::NoRoom { free, need } => {
            return Err(refused(format!(
                "{me} has {} free and the archive needs {} more (plus a {} margin)",
                backmesh_api::human_bytes(free),
                backmesh_api::human_bytes(need),
                backmesh_api::human_bytes(MARGIN)
            )))
        }
        Admission::OverQuota { held, need, limit } => {
            let what = format!(
                "is at its quota: its archives take {} here, archive {} of {} needs {} more, and the quota \
                 (--quota) is {quota} = {}",
                backmesh_api::human_bytes(held),
                m.id,
                m.path,
                backmesh_api::human_bytes(need),
                backmesh_api::human_bytes(limit)
            );
            let reason = format!("{me}: node {} {what}", m.node);
            *misdeed.borrow_mut() = Some(Blame::Limited { origin: m.signer().map(String::from), what });
            return Err(XferResponse::OverQuota { reason });
        }
    }
    usage.reserve(&m.node, &m.id, need);
    Ok(())
}

pub(crate) fn answer(
    h: &Holder,
    request: XferRequest,
    misdeed: &std::cell::RefCell<Option<Blame>>,
) -> (XferResponse, Vec<Event>) {
    let Holder { store, me, keep, usage, claimants, .. } = *h;
    let refused = |reason: String| (XferResponse::Refused { reason }, Vec::new());
    // A holder keeps only what the series' own node sealed: no peer can
    // replace, evict or impersonate another node's archives.
    let sealed = |manifest: &[u8]| -> Result<Manifest, Refusal> {
        let m = Manifest::decode_from_peer(manifest).map_err(|e| {
            if matches!(e, crate::archive::manifest::ManifestError::BadSeal { .. }) {
                *misdeed.borrow_mut() = Some(Blame::Misdeed(format!("a manifest with a forged seal: {e}")));
            }
            Refusal(format!("bad manifest: {e}"))
        })?;
        store.check_origin(&m, claimants.get(&m.node).map(String::as_str)).map_err(|e| {
            if !matches!(e, crate::store::StoreError::OriginNotKnownYet { .. }) {
                *misdeed.borrow_mut() = Some(Blame::Misdeed(e.to_string()));
            }
            Refusal(format!("{me}: {e}"))
        })?;
        Ok(m)
    };
    match request {
        XferRequest::Offer { manifest, against } => {
            let Some(manifest) = manifest_sent(store, &manifest, against.as_ref()) else {
                return (XferResponse::WholeManifest, Vec::new());
            };
            let m = match sealed(&manifest) {
                Ok(m) => m,
                Err(Refusal(e)) => return refused(e),
            };
            if store.has_archive(&m.node, &m.path, &m.id) {
                return (XferResponse::Want { missing: Vec::new(), complete: true }, Vec::new());
            }
            if let Err(refusal) = within_schedule(h, &m, misdeed) {
                return (refusal, Vec::new());
            }
            let missing = store.missing_members(&m);
            match room_for(h, &m, &missing, misdeed) {
                Ok(()) => (XferResponse::Want { missing, complete: false }, Vec::new()),
                Err(refusal) => (refusal, Vec::new()),
            }
        }
        XferRequest::Put { members, deltas } => {
            let raw: u64 = deltas.iter().map(|d| d.raw_len).fold(0, u64::saturating_add);
            if raw > DELTA_RAW_BATCH {
                return refused(format!(
                    "{me}: deltas that rebuild {raw} bytes, over the {DELTA_RAW_BATCH}-byte bound"
                ));
            }
            let rebuilt = rebuild(store, &deltas);
            let mut list: Vec<(Digest, &[u8])> = members.iter().map(|m| (m.digest, &m.data[..])).collect();
            list.extend(rebuilt.iter().map(|(d, data)| (*d, &data[..])));
            match store.put_members(&list) {
                Ok(_) => (XferResponse::Stored, Vec::new()),
                Err(e) => refused(format!("{me} cannot store the members: {e}")),
            }
        }
        XferRequest::Commit { manifest, against, sent, repair } => {
            let Some(manifest) = manifest_sent(store, &manifest, against.as_ref()) else {
                return (XferResponse::WholeManifest, Vec::new());
            };
            let m = match sealed(&manifest) {
                Ok(m) => m,
                Err(Refusal(e)) => return refused(e),
            };
            let had = store.has_archive(&m.node, &m.path, &m.id);
            let counts = match had {
                true => false,
                false => match within_schedule(h, &m, misdeed) {
                    Ok(counts) => counts,
                    Err(refusal) => return (refusal, Vec::new()),
                },
            };
            match store.adopt(&m) {
                // Members still to come: held to the same room as an offer
                // (a commit is no way around the quota).
                Ok(missing) if !missing.is_empty() => match room_for(h, &m, &missing, misdeed) {
                    Ok(()) => (XferResponse::Want { missing, complete: false }, Vec::new()),
                    Err(refusal) => (refusal, Vec::new()),
                },
                Ok(_) => {
                    usage.lock().unwrap_or_else(|p| p.into_inner()).committed(&m.node, &m.id);
                    let mut events = Vec::new();
                    if !had {
                        if counts {
                            took(h, &m);
                        }
                        let (node, path, archive, holder) = (m.node.clone(), m.path.clone(), m.id.clone(), me.into());
                        events.push(if repair {
                            Event::Repaired { node, path, archive, holder }
                        } else {
                            Event::Replicated { node, path, archive, holder, bytes: sent }
                        });
                    }
                    match store.retain(&m.node, &m.path, keep) {
                        Ok(r) => events.extend(r.removed.into_iter().map(|archive| Event::Pruned {
                            node: m.node.clone(),
                            path: m.path.clone(),
                            archive,
                            holder: me.into(),
                        })),
                        Err(e) => tracing::warn!("retention of {} on {}: {e}", m.path, m.node),
                    }
                    (XferResponse::Committed, events)
                }
                Err(e) => refused(format!("{me} cannot keep archive {}: {e}", m.id)),
            }
        }
        XferRequest::List { node, path } => match store.list(&node, &path) {
            // Ids in the index were checked when their archives came in.
            Ok(list) => {
                let ids = list.into_iter().filter_map(|s| ArchiveId::parse(s.id).ok()).collect();
                (XferResponse::Archives { ids }, Vec::new())
            }
            Err(e) => refused(e.to_string()),
        },
        XferRequest::GetManifest { node, path, archive, .. } => {
            match store.manifest(&node, &path, archive.as_deref()) {
                Ok(m) => (XferResponse::Manifest { manifest: m.encode().into() }, Vec::new()),
                Err(e) => refused(format!("{me}: {e}")),
            }
        }
        XferRequest::Get { digests, of } => {
            let set = match h.members.of(store, &of.node, &of.path, &of.archive) {
                Ok(set) => set,
                Err(e) => return refused(format!("{me}: {e}")),
            };
            if let Some(d) = digests.iter().find(|d| !set.contains(d)) {
                *misdeed.borrow_mut() = Some(Blame::Misdeed(format!(
                    "asked for member {d} as one of archive {} of {} on {}, which it is not",
                    of.archive, of.path, of.node
                )));
                return refused(format!(
                    "member {d} is not one of archive {} of {} on {}",
                    of.archive, of.path, of.node
                ));
            }
            let mut members = Vec::with_capacity(digests.len());
            let mut total = 0usize;
            for d in digests {
                match store.read_member_checked(&d) {
                    Ok(data) => {
                        total += data.len();
                        if total > MAX_XFER - 1024 {
                            return refused("too many members asked for at once".into());
                        }
                        members.push(WireMember { digest: d, data: data.into() });
                    }
                    Err(e) => return refused(format!("{me}: {e}")),
                }
            }
            (XferResponse::Members { members }, Vec::new())
        }
    }
}

/// The manifest an `Offer` or `Commit` carries: as sent, or rebuilt from
/// the manifest it is a delta against; `None` if this node does not keep
/// that one or the delta does not rebuild the bytes it names.
pub(crate) fn manifest_sent<'a>(
    store: &Store,
    manifest: &'a [u8],
    against: Option<&ManifestBase>,
) -> Option<std::borrow::Cow<'a, [u8]>> {
    let Some(b) = against else {
        return Some(std::borrow::Cow::Borrowed(manifest));
    };
    let old = store.manifest_bytes(&b.node, &b.path, &b.archive).ok()?;
    let raw = crate::archive::delta::apply(&old, &b.ops, manifest, b.raw_len, MAX_XFER as u64).ok()?;
    (Digest::of(&raw) == b.sha256).then_some(std::borrow::Cow::Owned(raw))
}

/// Why this holder refuses what a peer sent: the words go back to it.
#[derive(Debug)]
pub(crate) struct Refusal(String);
