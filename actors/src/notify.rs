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

use std::collections::HashSet;
use std::time::Duration;

use actix::prelude::*;
use backmesh_api::{JobState, Notice};

use crate::clock::{now_ms, rfc3339};
use crate::jobs::plugin::{run_hook, Programs};
use crate::log::actor::{Append, GetJobs, GetNotified, LogActor};
use crate::log::entry::Event;
use crate::log::views::{job_state, JobView};
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
}

/// A node just started tells nothing for this long, so that its log can
/// catch up first (it would not know what others told meanwhile).
const SETTLE: Duration = Duration::from_secs(10);

impl NotifyActor {
    pub fn new(me: String, log: Addr<LogActor>, membership: Addr<MembershipActor>, programs: Programs) -> Self {
        NotifyActor { me, log, membership, sending: HashSet::new(), started: std::time::Instant::now(), programs }
    }

    fn tick(&mut self, ctx: &mut Context<Self>) {
        if self.started.elapsed() < SETTLE {
            return;
        }
        let (log, membership) = (self.log.clone(), self.membership.clone());
        let work = async move {
            let jobs = log.send(GetJobs).await.ok()?;
            let told = log.send(GetNotified).await.ok()?;
            let peers = membership.send(GetPeers).await.ok()?;
            Some((jobs, told, peers))
        };
        ctx.spawn(work.into_actor(self).map(|found, act, ctx| {
            let Some((jobs, told, (me, peers))) = found else { return };
            let now = now_ms();
            let mut live: Vec<Candidate> = peers
                .iter()
                .filter(|p| p.up)
                .map(|p| Candidate { peer_id: p.peer_id.clone(), name: p.name.clone(), free_bytes: 0 })
                .collect();
            live.push(Candidate { peer_id: me.peer_id.clone(), name: me.name.clone(), free_bytes: 0 });
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
