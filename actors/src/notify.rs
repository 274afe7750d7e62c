//! Notifications: a job's webhooks and command hear when it starts
//! failing, goes stale, and recovers.
//!
//! Every node's `NotifyActor` looks at the jobs every two seconds; for
//! each job with a `--notify` URL or `--notify-cmd`, one node tells: the
//! job's own node when it is up, else the first live node in rendezvous
//! order (so a node that died is still reported stale by another). What
//! was told last is in the log (`notified` entries), so a new notifier
//! does not repeat it. Sending runs in its own task with retries and never
//! blocks a backup; delivery is at-least-once.
//!
//! A node tells nothing in its first ten seconds, while its log catches up.
//!
//! Transitions: → `failing` sends `failure`; → `stale` sends `stale`;
//! `failing`/`stale` → `ok` sends `recovery`.
//!
//! Anomalies ([`anomaly`]): a series whose newest archive is suddenly
//! much larger or smaller than the ones before (data encrypted, or
//! deleted), or that made more archives in one period of its schedule
//! than holders take at once (a flood), sends `anomaly`, once per archive.
//! It is told by another node than the series' own (the first live one
//! in rendezvous order), so that the node concerned does not decide
//! whether it is told (it can still change its own job first: the log
//! shows that).

use std::collections::HashSet;
use std::time::Duration;

use actix::prelude::*;
use backmesh_api::{JobState, Notice};

use crate::clock::{now_ms, rfc3339};
use crate::jobs::plugin::{run_hook, Programs};
use crate::log::actor::{Append, GetJobs, GetNotified, LogActor};
use crate::log::entry::Event;
use crate::log::views::{job_state, CatalogArchive, JobView};
use crate::net::actor::{GetPeers, MembershipActor};
use crate::placement::{rank, Candidate};

/// What to tell, given the job's state now and what was told last.
pub fn transition(state: JobState, last: Option<Notice>) -> Option<Notice> {
    match (state, last) {
        (JobState::Failing, l) if l != Some(Notice::Failure) => Some(Notice::Failure),
        (JobState::Stale, l) if l != Some(Notice::Stale) => Some(Notice::Stale),
        (JobState::Ok, Some(Notice::Failure | Notice::Stale)) => Some(Notice::Recovery),
        _ => None,
    }
}

/// The JSON a webhook receives (docs/plugins.md, "Notifications").
pub use backmesh_api::Notification;

pub struct NotifyActor {
    me: String,
    log: Addr<LogActor>,
    membership: Addr<MembershipActor>,
    /// Jobs whose notification is being sent now.
    sending: HashSet<(String, String)>,
    started: std::time::Instant,
    /// Whether a job's notification command may run here (`--allow-programs`).
    programs: Programs,
    /// The archive each series' last anomaly was told for.
    anomalies: std::collections::HashMap<(String, String), String>,
    /// When anomalies were last looked for.
    anomalies_at: Option<std::time::Instant>,
}

/// An archive this much larger or smaller than the median of the ones
/// before it is a sudden change…
const SIZE_FACTOR: u64 = 2;
/// …when it differs from it by at least this much.
const SIZE_CHANGE: u64 = 1 << 20;
/// Anomalies are looked for this often.
const ANOMALIES_EVERY: Duration = Duration::from_secs(10);

/// A sudden change in a series (`catalog`: its archives, in any order):
/// the newest archive's id and what changed, in words.
pub fn anomaly(every_min: u64, catalog: &[CatalogArchive]) -> Option<(String, String)> {
    let mut made: Vec<(i64, &CatalogArchive)> =
        catalog.iter().filter_map(|a| Some((a.created.as_ref()?.wall_ms, a))).collect();
    made.sort_by_key(|(t, _)| std::cmp::Reverse(*t));
    let (newest_ms, newest) = *made.first()?;
    let period_min = every_min.max(1);
    let period_ms = period_min as i64 * 60_000;
    let burst = crate::replica::arrivals::BURST as usize;
    let in_one_period = made.iter().filter(|(t, _)| newest_ms - t < period_ms).count();
    if in_one_period > burst {
        return Some((
            newest.id.clone(),
            format!(
                "{in_one_period} archives in less than {period_min} min, and it backs up every {every_min} min: \
                 holders take {burst} at once, then one per period"
            ),
        ));
    }
    let mut before: Vec<u64> = made.iter().skip(1).take(9).map(|(_, a)| a.size).filter(|s| *s > 0).collect();
    if before.len() < 3 {
        return None;
    }
    before.sort_unstable();
    let median = before[before.len() / 2];
    let size = newest.size;
    let sudden = (size >= median.saturating_mul(SIZE_FACTOR) || size.saturating_mul(SIZE_FACTOR) <= median)
        && size.abs_diff(median) >= SIZE_CHANGE;
    sudden.then(|| {
        (
            newest.id.clone(),
            format!(
                "archive {} is {}, {:.1}x the median of the {} before it ({}): data encrypted, or deleted?",
                newest.id,
                backmesh_api::human_bytes(size),
                size as f64 / median.max(1) as f64,
                before.len(),
                backmesh_api::human_bytes(median)
            ),
        )
    })
}

/// Who tells an anomaly of (node, path): the first live node in rendezvous
/// order other than the series' own, or that node when it is alone.
pub fn anomaly_notifier(node: &str, path: &str, live: &[Candidate]) -> Option<String> {
    let others: Vec<Candidate> = live.iter().filter(|c| c.name != node).cloned().collect();
    notifier(node, path, &others).or_else(|| notifier(node, path, live))
}

/// A node just started tells nothing for this long, so that its log can
/// catch up first (it would not know what others told meanwhile).
const SETTLE: Duration = Duration::from_secs(10);

impl NotifyActor {
    pub fn new(me: String, log: Addr<LogActor>, membership: Addr<MembershipActor>, programs: Programs) -> Self {
        NotifyActor {
            me,
            log,
            membership,
            sending: HashSet::new(),
            started: std::time::Instant::now(),
            programs,
            anomalies: Default::default(),
            anomalies_at: None,
        }
    }

    fn tick(&mut self, ctx: &mut Context<Self>) {
        if self.started.elapsed() < SETTLE {
            return;
        }
        let (log, membership) = (self.log.clone(), self.membership.clone());
        let look = self.anomalies_at.is_none_or(|at| at.elapsed() >= ANOMALIES_EVERY);
        if look {
            self.anomalies_at = Some(std::time::Instant::now());
        }
        let work = async move {
            let jobs = log.send(GetJobs).await.ok()?;
            let told = log.send(GetNotified).await.ok()?;
            let peers = membership.send(GetPeers).await.ok()?;
            let mut catalogs = Vec::new();
            for j in jobs.iter().filter(|j| look && (!j.spec.notify.is_empty() || j.spec.notify_cmd.is_some())) {
                let c = log.send(crate::log::actor::GetCatalog { node: j.node.clone(), path: j.path.clone() });
                // One catalog not read skips that job's anomaly check, not
                // the tick's notifications.
                if let Ok(catalog) = c.await {
                    catalogs.push((j.clone(), catalog));
                }
            }
            Some((jobs, told, peers, catalogs))
        };
        ctx.spawn(work.into_actor(self).map(|found, act, ctx| {
            let Some((jobs, told, (me, peers), catalogs)) = found else { return };
            let now = now_ms();
            let mut live: Vec<Candidate> = peers
                .iter()
                .filter(|p| p.up)
                .map(|p| Candidate { peer_id: p.peer_id.clone(), name: p.name.clone(), free_bytes: 0 })
                .collect();
            live.push(Candidate { peer_id: me.peer_id.clone(), name: me.name.clone(), free_bytes: 0 });
            for (j, catalog) in &catalogs {
                let Some((archive, detail)) = anomaly(j.every_min, catalog) else { continue };
                let key = (j.node.clone(), j.path.clone());
                if act.anomalies.get(&key) == Some(&archive)
                    || anomaly_notifier(&j.node, &j.path, &live).as_deref() != Some(act.me.as_str())
                {
                    continue;
                }
                act.anomalies.insert(key.clone(), archive);
                tracing::warn!("anomaly in {} of {}: {detail}", j.path, j.node);
                let n = Notification {
                    event: Notice::Anomaly,
                    node: j.node.clone(),
                    path: j.path.clone(),
                    state: job_state(j, now, crate::clock::minute_ms()),
                    error: None,
                    detail: Some(detail),
                    last_success: j.last_success.as_ref().map(|t| rfc3339(t.wall_ms)),
                    every_min: j.every_min,
                    notified_by: act.me.clone(),
                    time: rfc3339(now),
                };
                let (job, programs) = (j.clone(), act.programs.clone());
                actix::spawn(async move {
                    let result = tokio::task::spawn_blocking(move || deliver(&job, &n, &programs)).await;
                    if let Ok(Err(e)) | Err(e) = result.map_err(|e| NotDelivered(vec![e.to_string()])) {
                        tracing::warn!("notification `anomaly` for {} on {} not delivered: {e}", key.1, key.0);
                    }
                });
            }
            for j in jobs.iter().filter(|j| !j.spec.notify.is_empty() || j.spec.notify_cmd.is_some()) {
                let key = (j.node.clone(), j.path.clone());
                let state = job_state(j, now, crate::clock::minute_ms());
                let Some(event) = transition(state, told.get(&key).copied()) else { continue };
                if notifier(&j.node, &j.path, &live).as_deref() != Some(act.me.as_str()) || act.sending.contains(&key) {
                    continue;
                }
                act.sending.insert(key.clone());
                let n = Notification {
                    event,
                    node: j.node.clone(),
                    path: j.path.clone(),
                    state,
                    error: j.last.as_ref().and_then(|l| l.error.clone()).filter(|_| event == Notice::Failure),
                    detail: None,
                    last_success: j.last_success.as_ref().map(|t| rfc3339(t.wall_ms)),
                    every_min: j.every_min,
                    notified_by: act.me.clone(),
                    time: rfc3339(now),
                };
                let (log, job, me, programs) = (act.log.clone(), j.clone(), act.me.clone(), act.programs.clone());
                let addr = ctx.address();
                actix::spawn(async move {
                    let result = tokio::task::spawn_blocking(move || deliver(&job, &n, &programs))
                        .await
                        .unwrap_or_else(|e| Err(NotDelivered(vec![format!("the notifier crashed: {e}")])));
                    if let Err(e) = &result {
                        tracing::warn!("notification `{event}` for {} on {} not delivered: {e}", key.1, key.0);
                    }
                    log.do_send(Append(Event::Notified {
                        node: key.0.clone(),
                        path: key.1.clone(),
                        event: event.as_str().to_string(),
                        by: me,
                        delivered: result.is_ok(),
                        error: result.err().map(|e| e.to_string()),
                    }));
                    addr.do_send(Sent(key));
                });
            }
        }));
    }
}

/// What did not reach a job's notification targets, one failure each
/// (a webhook, the command); retried at the job's next change of state.
#[derive(Debug, thiserror::Error)]
#[error("{}", .0.join("; "))]
struct NotDelivered(Vec<String>);

/// Sends `n` to every webhook of `job` (each retried over about 30 s) and
/// runs its command when this node allows programs; the failures, in words.
fn deliver(job: &JobView, n: &Notification, programs: &Programs) -> Result<(), NotDelivered> {
    let body = serde_json::to_string(n).map_err(|e| NotDelivered(vec![e.to_string()]))?;
    let mut errors = Vec::new();
    for url in &job.spec.notify {
        if let Err(e) = post_with_retries(url, &body) {
            errors.push(format!("{url}: {e}"));
        }
    }
    let refused = job.spec.notify_cmd.as_ref().and_then(|_| programs.check(&job.spec).err());
    if let (Some(cmd), Some(why)) = (&job.spec.notify_cmd, refused) {
        errors.push(format!("the notification command `{cmd}` was not run: {why}"));
    } else if let Some(cmd) = &job.spec.notify_cmd {
        let env = [
            ("BACKMESH_EVENT", n.event.as_str().to_string()),
            ("BACKMESH_STATE", n.state.as_str().to_string()),
            ("BACKMESH_ERROR", n.error.clone().unwrap_or_default()),
            ("BACKMESH_DETAIL", n.detail.clone().unwrap_or_default()),
            ("BACKMESH_NOTIFICATION", body.clone()),
        ];
        if let Err(e) = run_hook("notify", cmd, &n.node, &n.path, &env, Duration::from_secs(60)) {
            errors.push(e.to_string());
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(NotDelivered(errors))
    }
}

/// Why a webhook was not told: its last answer or failure, after 5 attempts.
#[derive(Debug, thiserror::Error)]
#[error("{last} (5 attempts)")]
struct Unheard {
    last: String,
}

fn post_with_retries(url: &str, body: &str) -> Result<(), Unheard> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into();
    let mut last = String::new();
    for attempt in 0..5 {
        if attempt > 0 {
            std::thread::sleep(Duration::from_secs(1 << attempt));
        }
        match agent.post(url).header("Content-Type", "application/json").send(body) {
            Ok(r) if r.status().is_success() => return Ok(()),
            Ok(r) => last = format!("answered {}", r.status()),
            Err(e) => last = e.to_string(),
        }
    }
    Err(Unheard { last })
}

#[derive(Message)]
#[rtype(result = "()")]
struct Sent((String, String));

impl Handler<Sent> for NotifyActor {
    type Result = ();
    fn handle(&mut self, msg: Sent, _: &mut Context<Self>) {
        self.sending.remove(&msg.0);
    }
}

impl Actor for NotifyActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.run_interval(Duration::from_secs(2), |act, ctx| act.tick(ctx));
    }
}

/// Which node tells about job (node, path): the job's own node when it is
/// among the `live` ones, else the first live node in rendezvous order, so
/// that every node picks the same one and a dead node's job is still told.
pub fn notifier(node: &str, path: &str, live: &[Candidate]) -> Option<String> {
    if live.iter().any(|c| c.name == node) {
        return Some(node.to_string());
    }
    rank(node, path, live).first().map(|c| c.name.clone())
}

impl crate::error::Transient for NotDelivered {
    fn retry(&self) -> crate::error::Retry {
        crate::error::Retry::Later
    }
}

impl crate::error::Transient for Unheard {
    fn retry(&self) -> crate::error::Retry {
        crate::error::Retry::Later
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn live(names: &[&str]) -> Vec<Candidate> {
        names
            .iter()
            .map(|n| Candidate { peer_id: format!("12D3KooW{n}"), name: n.to_string(), free_bytes: 1 << 30 })
            .collect()
    }

    fn archive(id: &str, minutes: i64, size: u64) -> CatalogArchive {
        let created = crate::log::crdt::Stamp { wall_ms: minutes * 60_000, ..Default::default() };
        CatalogArchive {
            id: id.into(),
            created: Some(created),
            size,
            files: 1,
            warnings: 0,
            holders: Default::default(),
        }
    }

    #[test]
    fn a_sudden_size_or_rate_is_an_anomaly_and_a_steady_series_is_not() {
        let mib = 1 << 20;
        // Hourly, steady around 10 MiB.
        let steady: Vec<CatalogArchive> =
            (0..5).map(|i| archive(&format!("a{i}"), i * 60, 10 * mib + i as u64)).collect();
        assert_eq!(anomaly(60, &steady), None);
        // The newest tripled (encrypted data does not compress).
        let mut grown = steady.clone();
        grown.push(archive("big", 5 * 60, 30 * mib));
        let (id, said) = anomaly(60, &grown).unwrap();
        assert_eq!(id, "big");
        assert!(said.contains("3.0x the median of the 5 before it"), "{said}");
        // Or fell to a tenth (data deleted).
        let mut shrunk = steady.clone();
        shrunk.push(archive("small", 5 * 60, mib));
        assert_eq!(anomaly(60, &shrunk).unwrap().0, "small");
        // Small series change by less than a MiB: no alarm.
        let tiny: Vec<CatalogArchive> =
            (0..4).map(|i| archive(&format!("t{i}"), i * 60, 1000 * (1 + 3 * (i / 3) as u64))).collect();
        assert_eq!(anomaly(60, &tiny), None);
        // Seven archives within one hour of an hourly series: a flood.
        let flood: Vec<CatalogArchive> = (0..7).map(|i| archive(&format!("f{i}"), 600 + i, 10 * mib)).collect();
        let (id, said) = anomaly(60, &[steady.clone(), flood].concat()).unwrap();
        assert_eq!(id, "f6");
        assert!(said.contains("7 archives in less than 60 min"), "{said}");
        // Too little history: nothing said on size.
        assert_eq!(anomaly(60, &[archive("x", 0, mib), archive("y", 60, 50 * mib)]), None);
    }

    #[test]
    fn anomalies_are_told_by_another_node_than_the_series_own() {
        let all = live(&["n1", "n2", "n3"]);
        let by = anomaly_notifier("n1", "/p", &all).unwrap();
        assert_ne!(by, "n1");
        assert_eq!(anomaly_notifier("n1", "/p", &live(&["n1"])).as_deref(), Some("n1"));
    }

    #[test]
    fn the_jobs_own_node_tells_while_it_lives_else_one_agreed_node() {
        assert_eq!(notifier("n1", "/p", &live(&["n1", "n2", "n3"])).as_deref(), Some("n1"));
        let without = live(&["n2", "n3", "n4"]);
        let chosen = notifier("n1", "/p", &without).unwrap();
        assert!(["n2", "n3", "n4"].contains(&chosen.as_str()));
        // Every node, whatever order it lists its peers in, picks the same one.
        let mut reversed = without.clone();
        reversed.reverse();
        assert_eq!(notifier("n1", "/p", &reversed).unwrap(), chosen);
        assert_eq!(notifier("n1", "/p", &[]), None, "nobody live: nobody tells");
    }

    #[test]
    fn transitions_tell_each_change_once() {
        use JobState::{Failing, Ok, Paused};
        use Notice::{Failure, Recovery};
        assert_eq!(transition(Ok, None), None);
        assert_eq!(transition(Failing, None), Some(Failure));
        assert_eq!(transition(Failing, Some(Failure)), None);
        assert_eq!(transition(JobState::Stale, Some(Failure)), Some(Notice::Stale));
        assert_eq!(transition(Ok, Some(Notice::Stale)), Some(Recovery));
        assert_eq!(transition(Ok, Some(Recovery)), None);
        assert_eq!(transition(Paused, Some(Failure)), None);
        assert_eq!(transition(Failing, Some(Recovery)), Some(Failure));
    }
}
