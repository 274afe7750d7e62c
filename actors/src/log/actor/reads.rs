//! The views the API, the scheduler, the notifier and the replica actor
//! read from the log actor, and placement told to it.

use std::collections::BTreeSet;

use actix::{Context, Handler, MessageResult};

use crate::log::history::Page;
use crate::log::records::SeriesKey;
use crate::store::StoreError;

use super::messages::*;
use super::*;

impl Handler<Query> for LogActor {
    type Result = Result<Page, StoreError>;
    fn handle(&mut self, q: Query, _: &mut Context<Self>) -> Self::Result {
        self.history.page(&q.0)
    }
}

impl Handler<GetJobs> for LogActor {
    type Result = MessageResult<GetJobs>;
    fn handle(&mut self, _: GetJobs, _: &mut Context<Self>) -> Self::Result {
        let mut jobs = self.state.jobs();
        jobs.retain(|j| !self.retired.contains(&j.node));
        MessageResult(jobs)
    }
}

impl Handler<crate::net::router::Retired> for LogActor {
    type Result = ();
    fn handle(&mut self, msg: crate::net::router::Retired, _: &mut Context<Self>) {
        self.retired.insert(msg.node);
    }
}

impl Handler<GetJobsOf> for LogActor {
    type Result = MessageResult<GetJobsOf>;
    fn handle(&mut self, q: GetJobsOf, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.state.jobs_of(&q.0))
    }
}

impl Handler<GetCatalog> for LogActor {
    type Result = MessageResult<GetCatalog>;
    fn handle(&mut self, q: GetCatalog, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.state.catalog(&q.node, &q.path))
    }
}

impl Handler<GetCatalogs> for LogActor {
    type Result = MessageResult<GetCatalogs>;
    fn handle(&mut self, _: GetCatalogs, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.state.catalogs())
    }
}

impl Handler<GetNotified> for LogActor {
    type Result = MessageResult<GetNotified>;
    fn handle(&mut self, _: GetNotified, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.state.notified())
    }
}

impl Handler<ForRequest> for LogActor {
    type Result = MessageResult<ForRequest>;
    fn handle(&mut self, q: ForRequest, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.state.for_request(&q.request))
    }
}

impl Handler<GetKeepers> for LogActor {
    type Result = MessageResult<GetKeepers>;
    fn handle(&mut self, q: GetKeepers, _: &mut Context<Self>) -> Self::Result {
        let mut keepers = BTreeSet::from([q.node.clone()]);
        match &q.path {
            Some(p) => keepers.extend(self.state.holders_of(&q.node, p)),
            None => {
                for (node, path) in self.state.series_kept_by(&q.node) {
                    if node == q.node {
                        keepers.extend(self.state.holders_of(&node, &path));
                    }
                }
            }
        }
        MessageResult(keepers)
    }
}

impl Handler<GetOrigins> for LogActor {
    type Result = MessageResult<GetOrigins>;
    fn handle(&mut self, _: GetOrigins, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.state.origin_names())
    }
}

impl Handler<GetStats> for LogActor {
    type Result = MessageResult<GetStats>;
    fn handle(&mut self, _: GetStats, _: &mut Context<Self>) -> Self::Result {
        use sha2::Digest as _;
        let mut h = sha2::Sha256::new();
        for b in self.state.digest() {
            h.update(b.to_be_bytes());
        }
        let digest: String = h.finalize().iter().take(8).map(|b| format!("{b:02x}")).collect();
        MessageResult(StateStats { records: self.state.len(), window: self.history.window_len(), digest })
    }
}

impl Handler<IsCaughtUp> for LogActor {
    type Result = bool;
    fn handle(&mut self, _: IsCaughtUp, _: &mut Context<Self>) -> bool {
        self.caught_up || self.net.is_stopped()
    }
}

impl Handler<SetPlacement> for LogActor {
    type Result = ();
    fn handle(&mut self, msg: SetPlacement, ctx: &mut Context<Self>) {
        let waiting: Vec<SeriesKey> = self.to_backfill.difference(&self.backfilling).cloned().collect();
        for series in waiting {
            self.backfill(series, ctx);
        }
        // Only what placement depends on: everyday changes of free space
        // within the same power of two move nothing.
        let mut candidates: Vec<_> = msg
            .candidates
            .into_iter()
            .map(|mut c| {
                c.free_bytes = crate::placement::weight(c.free_bytes) << 30;
                c
            })
            .collect();
        candidates.sort_by(|a, b| a.peer_id.cmp(&b.peer_id));
        let placement = Some((candidates, msg.replicas));
        let jobs = self.state.job_keys().count();
        if placement == self.placement && jobs == self.elected_jobs {
            return;
        }
        self.placement = placement;
        self.elected_jobs = jobs;
        let elected = self.elect();
        let new: Vec<SeriesKey> = elected.difference(&self.elected).cloned().collect();
        self.to_backfill.retain(|s| elected.contains(s));
        self.elected = elected;
        for series in new {
            tracing::debug!("now a keeper of {} on {}: fetching its history", series.1, series.0);
            self.to_backfill.insert(series.clone());
            self.backfill(series, ctx);
        }
    }
}
