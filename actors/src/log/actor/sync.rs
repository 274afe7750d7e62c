//! Anti-entropy and history backfill: pulling state from peers, answering
//! their pulls, fetching the history of the series this node comes to keep.

use actix::{AsyncContext, Context, Handler, Message};

use crate::clock::now_ms;
use crate::log::anti_entropy::answer_pull;
use crate::log::entry::Entry;
use crate::log::history::HistoryQuery;
use crate::log::hlc::too_far_ahead;
use crate::log::proto::{HistoryAnswer, StateBatch, StatePull, HISTORY, STATE, STATE_BATCH_BYTES};
use crate::log::records::{SeriesKey, BUCKETS};
use crate::log::signing::Checked;
use crate::log::state_disk;
use crate::net::actor::Misbehaved;

use super::gossip::{BoundKeys, Refusal};
use super::messages::*;
use super::*;

/// History of a series this node keeps, fetched from another keeper.
/// Answers how many entries were new here.
#[derive(Message)]
#[rtype(result = "usize")]
pub(crate) struct Backfilled {
    series: SeriesKey,
    /// The keeper that sent them.
    from: String,
    entries: Vec<Entry>,
}

/// A backfill of a series ended; `ok` when some keeper answered it to the end.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct BackfillDone {
    series: SeriesKey,
    ok: bool,
}

/// A pull not answered within this long is given up (the next may go).
pub(crate) const PULL_TIMEOUT_MS: i64 = 5_000;

/// Pages of one series' history fetched at most when this node becomes
/// one of its keepers (a million entries).
pub(crate) const BACKFILL_PAGES: usize = 1_000;

impl Handler<ServeStatePull> for LogActor {
    type Result = ();
    fn handle(&mut self, msg: ServeStatePull, _: &mut Context<Self>) {
        let now = now_ms();
        self.settled.observe(&self.state, now);
        let kv = self.kv.clone();
        let (records, next_bucket) = answer_pull(
            &mut self.state,
            &self.settled,
            &msg.pull.digest,
            msg.pull.from_bucket,
            msg.pull.eager,
            now,
            QUIET_MS,
            STATE_BATCH_BYTES,
            &mut |k, r| {
                if let Err(e) = state_disk::with_seals(kv.as_ref(), k, r) {
                    tracing::error!("cannot read the mesh state's signatures: {e}");
                }
            },
        );
        msg.reply.send(&StateBatch { records: records.into(), next_bucket });
    }
}

impl Handler<StateReceived> for LogActor {
    type Result = ();
    fn handle(&mut self, msg: StateReceived, ctx: &mut Context<Self>) {
        self.state_received(msg);
        if self.caught_up && !self.writing {
            self.start_writing(ctx);
        }
    }
}

impl LogActor {
    /// Merges a state answer; pulls on when it was cut for size.
    pub(crate) fn state_received(&mut self, msg: StateReceived) {
        let mut changed = 0;
        let now = now_ms();
        if msg.unknown > 0 && self.told_unknown.insert(msg.from.clone()) {
            tracing::warn!(
                "{} sent {} state records in a form this version does not know; they are left out here \
                 (it runs a newer backmesh: upgrade this node)",
                msg.from,
                msg.unknown
            );
        }
        let mut found = Checked::default();
        let mut sealed = Vec::with_capacity(msg.records.len());
        {
            let keys = BoundKeys::new(self.kv.as_ref(), &self.state).for_node(&self.my_name);
            for (k, mut r) in msg.records {
                // Names no node of this version writes or takes in: left
                // out, no one blamed (an older node may still relay one).
                if k.check_names().is_err() {
                    found.unproven += 1;
                    continue;
                }
                if self.state.check(&k, &mut r, &keys, &mut found) {
                    sealed.push((k, r));
                }
            }
        }
        if !found.forged.is_empty() {
            let n = found.forged.len();
            let what = format!(
                "{n} state records with a seal that is not their writer's ({}{})",
                found.forged.iter().take(3).cloned().collect::<Vec<_>>().join("; "),
                if n > 3 { "; …" } else { "" }
            );
            if let Some(to) = &self.misdeeds {
                to.do_send(Misbehaved { peer: msg.from.clone(), what });
            }
        }
        if found.unproven > 0 {
            tracing::debug!(
                "{} sent {} registers not sealed by a writer known here: left out",
                msg.from,
                found.unproven
            );
        }
        for (k, r) in &sealed {
            let wall = r.newest_wall_ms();
            if too_far_ahead(wall, now) {
                self.tell_ahead(&msg.from, wall, now);
                continue;
            }
            if self.state.merge_record(k, r) {
                changed += 1;
                if let Some(t) = r.newest_time() {
                    self.clock.observe(t, now);
                }
            }
        }
        if changed > 0 {
            tracing::debug!("anti-entropy with {}: {changed} records changed", msg.from);
            // A node that lost its database learns here how far it had
            // written; a claim past that by more than SEQ_JUMP_MAX (a
            // forged u64::MAX would leave it no seq to write) moves it by
            // that much at most.
            let claimed = self.state.max_seq(&self.me);
            if claimed >= self.next_seq {
                if self.caught_up && self.told_seq.insert(msg.from.clone()) {
                    tracing::warn!(
                        "{} says this node wrote up to seq {claimed}, past the {} it has written: another process \
                         may run with this node's identity.key, or the peer lies",
                        msg.from,
                        self.next_seq - 1
                    );
                }
                self.next_seq = claimed.min(self.next_seq.saturating_add(SEQ_JUMP_MAX)).saturating_add(1);
            }
        }
        let (was_eager, asked_from) = self.in_flight.take().map(|(_, e, f)| (e, f)).unwrap_or((false, 0));
        match msg.next_bucket {
            // Cut for size: far behind, so catch up eagerly (a bucket
            // number that does not move forward is a peer's error: stop).
            Some(b) if b > asked_from && usize::from(b) < BUCKETS => self.pull(Some(msg.from), b, true),
            Some(_) => {}
            None => self.caught_up |= was_eager,
        }
        if self.caught_up {
            self.workers.0.idle(now_ms());
        } else {
            self.workers.0.busy("catching up with the mesh state (eager pulls)");
        }
    }
}

impl Handler<ServeHistory> for LogActor {
    type Result = ();
    fn handle(&mut self, msg: ServeHistory, _: &mut Context<Self>) {
        let answer = match self.history.page(&msg.query) {
            Ok(page) => HistoryAnswer::Page(page),
            Err(e) => HistoryAnswer::Failed { reason: format!("cannot read the history: {e}") },
        };
        msg.reply.send(&answer);
    }
}

impl Handler<BackfillDone> for LogActor {
    type Result = ();
    fn handle(&mut self, msg: BackfillDone, _: &mut Context<Self>) {
        self.backfilling.remove(&msg.series);
        let (node, path) = &msg.series;
        if msg.ok {
            self.to_backfill.remove(&msg.series);
            self.workers.1.done_one(now_ms());
        } else {
            self.workers
                .1
                .failed(format!("no keeper of {path} of {node} sent its history; tried again later"), now_ms());
        }
        if self.backfilling.is_empty() && msg.ok {
            self.workers.1.idle(now_ms());
        }
    }
}

impl Handler<Backfilled> for LogActor {
    type Result = usize;
    fn handle(&mut self, msg: Backfilled, _: &mut Context<Self>) -> usize {
        let mut stored = 0;
        let mut refused = Vec::new();
        for e in &msg.entries {
            if e.seq == 0 || (e.event.node(), e.event.path()) != (msg.series.0.as_str(), Some(msg.series.1.as_str())) {
                continue;
            }
            match self.refusal(e) {
                Some(Refusal::Forged(what)) => {
                    refused.push(what);
                    continue;
                }
                Some(Refusal::OutOfAuthority(what)) => {
                    // Its origin signed it: the origin's doing, not the
                    // sender's (whose bindings may differ from these).
                    if let Some(to) = &self.misdeeds {
                        to.do_send(Misbehaved { peer: e.origin.clone(), what });
                    }
                    continue;
                }
                Some(Refusal::Unsigned) => continue,
                None => {}
            }
            if !self.clock.observe(&e.time, now_ms()) {
                // Dated too far ahead: held back with the gossiped ones.
                if let Err(err) = self.take_in(e) {
                    tracing::error!("cannot hold back an entry of {}: {err}", e.origin_name);
                }
                continue;
            }
            self.state.apply(e);
            match self.history.store(e) {
                Ok(true) => stored += 1,
                Ok(false) => {}
                Err(err) => {
                    tracing::error!("cannot store the history of {} on {}: {err}", msg.series.1, msg.series.0);
                    return 0;
                }
            }
        }
        if let (Some(first), Some(to)) = (refused.first(), &self.misdeeds) {
            let what = format!("{} history entries that do not hold, the first: {first}", refused.len());
            to.do_send(Misbehaved { peer: msg.from.clone(), what });
        }
        if stored > 0 {
            if let Err(err) = self.history.sync() {
                tracing::error!("cannot write the history of {} on {}: {err}", msg.series.1, msg.series.0);
                return 0;
            }
            tracing::debug!("kept {stored} earlier entries of {} on {}", msg.series.1, msg.series.0);
        }
        stored
    }
}

impl LogActor {
    /// Fetches the history of `series` from the nodes that keep it (the
    /// series' node and the holders of its archives), page by page.
    pub(crate) fn backfill(&mut self, series: SeriesKey, ctx: &mut Context<Self>) {
        let net = self.net.clone();
        let mut names = self.state.holders_of(&series.0, &series.1);
        names.insert(series.0.clone());
        names.remove(&self.my_name);
        let peers: Vec<String> = names.iter().filter_map(|n| self.state.peer_of(n)).collect();
        if peers.is_empty() {
            return;
        }
        self.backfilling.insert(series.clone());
        self.workers.1.busy(format!("fetching the history of {} series this node keeps", self.backfilling.len()));
        let addr = ctx.address();
        actix::spawn(async move {
            let mut ok = false;
            for peer in peers {
                let mut q = HistoryQuery {
                    node: Some(series.0.clone()),
                    path: Some(series.1.clone()),
                    before: None,
                    limit: crate::log::history::PAGE_MAX,
                };
                for _ in 0..BACKFILL_PAGES {
                    match net.call(&peer, &HISTORY, &q).await {
                        Ok(HistoryAnswer::Page(page)) => {
                            let more = page.more;
                            q.before = page.cursor.clone();
                            let from = peer.clone();
                            let new =
                                addr.send(Backfilled { series: series.clone(), from, entries: page.entries }).await;
                            // Back to what is held already: the rest came before.
                            if !more || q.before.is_none() || new.unwrap_or(0) == 0 {
                                ok = true;
                                break;
                            }
                        }
                        _ => break,
                    }
                }
            }
            addr.do_send(BackfillDone { series, ok });
        });
    }

    pub(crate) fn pull(&mut self, from: Option<String>, from_bucket: u16, eager: bool) {
        let now = now_ms();
        // Until a first pull is answered, one is tried every second (the
        // last may have found no peer connected yet).
        if self.caught_up && self.in_flight.is_some_and(|(at, _, _)| now - at < PULL_TIMEOUT_MS) {
            return;
        }
        self.in_flight = Some((now, eager, from_bucket));
        let pull = StatePull { digest: self.state.digest(), from_bucket, eager };
        let Some(me) = self.this.clone() else { return };
        let net = self.net.clone();
        actix::spawn(async move {
            match net.call_any::<_, StateBatch>(from.as_deref(), &STATE, &pull).await {
                Ok((from, batch)) => me.do_send(StateReceived {
                    records: batch.records.known,
                    unknown: batch.records.unknown,
                    from,
                    next_bucket: batch.next_bucket,
                }),
                // Tried again when the pull's time is up.
                Err(e) => tracing::debug!("state pull not answered: {e}"),
            }
        });
    }
}
