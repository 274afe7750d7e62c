//! The jobs actor: schedules and runs this node's jobs.
//!
//! Messages and senders:
//! - [`RunNow`] (the HTTP API of this node): queue an on-demand run.
//! - [`ServeJobs`] (the router, through [`serve`]: `Run`, `Progress` or
//!   `CheckSource` asked through another node), answered on its reply.
//! - [`GetProgress`], [`CheckSource`] (the HTTP API of this node).
//!
//! Every second it folds the jobs from the log; each job of this node that
//! is due (never started, or started `every` minutes ago) and not paused is
//! queued. Up to `max_parallel` runs go at once, each in tokio's blocking
//! pool, never on the actor's thread; a run records `started`, then
//! `finished`, `unchanged` or `failed` in the log.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use std::sync::atomic::Ordering;

use actix::prelude::*;

use super::backup::{run_job, RunOutcome};
use super::plugin::Programs;
use super::proto::{JobsAnswer, JobsRequest, RunProgress, JOBS};
use super::queue::{NotQueued, Queue, QueuedRun};
use crate::archive::{CreateOptions, Progress};
use crate::authority::{Act, Authority};
use crate::clock::now_ms;
use crate::log::actor::{Append, GetJobsOf, LogActor};
use crate::log::entry::{Entry, Event};
use crate::log::views::JobView;
use crate::net::actor::Misbehaved;
use crate::net::rpc::{InboundRequest, Reply};
use crate::store::{Retention, Store};
use crate::workers::Worker;

/// Queue an on-demand run of `path` (a registered job of this node); its
/// log entries will carry `request`.
#[derive(Message)]
#[rtype(result = "Result<u64, NotQueued>")]
pub struct RunNow {
    pub path: String,
    pub request: Option<String>,
}

/// Change one of this node's jobs (register, unregister, pause, resume:
/// see [`super::change`]), already authorized: by this node's API token,
/// or by the operator's order checked in [`serve`]. Answers the log entry.
#[derive(Message)]
#[rtype(result = "Result<Entry, String>")]
pub struct ChangeJob(pub Act);

/// A backup stored a new archive: its copies can go now rather than at
/// the next round. Sender: the jobs actor, to the replica actor.
#[derive(Message, Clone)]
#[rtype(result = "()")]
pub struct ArchiveStored;

/// A request of [`JOBS`] from another node, its order checked. Sender:
/// the router, through [`serve`].
#[derive(Message)]
#[rtype(result = "()")]
pub struct ServeJobs {
    pub request: JobsRequest,
    pub reply: Reply<JobsAnswer>,
}

/// The handler of [`JOBS`] requests for the router: decodes a request,
/// checks the operator's order on what makes this node act (`me` is its
/// name), and hands it to the jobs actor. A request that would make this
/// node act without a good order is refused, logged and counted against
/// the asking peer.
pub fn serve(
    jobs: Addr<JobsActor>,
    me: String,
    authority: Arc<Authority>,
    misdeeds: Recipient<Misbehaved>,
) -> impl Fn(InboundRequest) {
    move |req| {
        let reply = req.reply.typed::<JobsAnswer>();
        let request = match crate::codec::decode::<JobsRequest>(&req.body, JOBS.max_request) {
            Ok(r) => r,
            Err(e) => return reply.send(&JobsAnswer::Failed { reason: format!("an unreadable request: {e}") }),
        };
        let now = now_ms();
        let refused = match &request {
            JobsRequest::Progress { .. } => None,
            JobsRequest::Change { act, order } => super::change::is_change_of(act, &me)
                .err()
                .or_else(|| authority.admit(order, act, &me, now).err().map(|e| e.to_string())),
            JobsRequest::Run { path, order, .. } => {
                let act = Act::Run(backmesh_api::JobKey { node: me.clone(), path: path.to_string() });
                match order {
                    None => Some(crate::authority::needs_order(&me, "run a backup")),
                    Some(o) => authority.admit(o, &act, &me, now).err().map(|e| e.to_string()),
                }
            }
        };
        match refused {
            None => jobs.do_send(ServeJobs { request, reply }),
            Some(reason) => {
                tracing::warn!("refused a request from the mesh ({}): {reason}", req.peer);
                misdeeds.do_send(Misbehaved { peer: req.peer.clone(), what: format!("an order refused: {reason}") });
                reply.send(&JobsAnswer::Failed { reason })
            }
        }
    }
}

/// The counters of the running backup of `path`.
#[derive(Message)]
#[rtype(result = "RunProgress")]
pub struct GetProgress {
    pub path: String,
}

/// A run in progress.
struct Running {
    progress: Arc<Progress>,
    started: std::time::Instant,
    request: Option<String>,
}

/// How this node runs its jobs, as its operator set it.
#[derive(Clone, Debug)]
pub struct JobsConfig {
    /// Archives kept per path.
    pub keep: Retention,
    /// Runs at once.
    pub max_parallel: usize,
    /// Runs that may wait.
    pub queue_bound: usize,
    /// What programs jobs may run here (command sources, plugins, hooks):
    /// `--allow-programs`.
    pub programs: Programs,
    /// Seal every backup (`encrypt = on`): with this node's data key.
    pub seals: Option<Arc<super::seals::Seals>>,
}

pub struct JobsActor {
    /// Where it says how its backups fare (`status --workers`).
    worker: Worker,
    me: String,
    store: Arc<Store>,
    log: Addr<LogActor>,
    queue: Queue,
    running: BTreeSet<String>,
    progress: HashMap<String, Running>,
    jobs: HashMap<String, JobView>,
    max_parallel: usize,
    keep: Retention,
    programs: Programs,
    seals: Option<Arc<super::seals::Seals>>,
    /// Told when a backup stored a new archive (the replica actor).
    stored: Recipient<ArchiveStored>,
}

/// The warnings of a run as the mesh's log tells them: each with its path
/// for a plain archive; for an encrypted one only how many of each kind
/// (the paths are in its sealed head: the log reaches every node).
fn told_warnings(manifest: &crate::archive::Manifest) -> Vec<String> {
    use crate::archive::WarningKind;
    if !manifest.encrypted() {
        return manifest.warnings.iter().map(|w| format!("{}: {}", w.path, w.message)).collect();
    }
    let count = |k: WarningKind| manifest.warnings.iter().filter(|w| w.kind == k).count();
    [
        (WarningKind::ChangedWhileRead, "changed while read"),
        (WarningKind::Vanished, "vanished before read"),
        (WarningKind::Unreadable, "unreadable, not in the archive"),
        (WarningKind::Skipped, "special files skipped"),
    ]
    .into_iter()
    .filter_map(|(k, what)| {
        let n = count(k);
        (n > 0).then(|| format!("{n} {what} (their paths are sealed with the archive)"))
    })
    .collect()
}

impl JobsActor {
    /// `me` is this node's name; waiting runs are reloaded from the store.
    pub fn new(
        me: String,
        store: Arc<Store>,
        log: Addr<LogActor>,
        stored: Recipient<ArchiveStored>,
        cfg: JobsConfig,
    ) -> Self {
        let bound = cfg.queue_bound;
        let queue = match Queue::load(store.kv().as_ref(), bound) {
            Ok(q) => q,
            Err(e) => {
                tracing::error!("cannot reload the run queue ({e}); starting with an empty one");
                Queue::new(bound)
            }
        };
        if !queue.is_empty() {
            tracing::info!("{} run(s) waiting from before the restart", queue.len());
        }
        JobsActor {
            me,
            store,
            log,
            queue,
            running: BTreeSet::new(),
            progress: HashMap::new(),
            jobs: HashMap::new(),
            max_parallel: cfg.max_parallel.max(1),
            keep: cfg.keep,
            programs: cfg.programs,
            seals: cfg.seals,
            stored,
            worker: Worker::detached("backups"),
        }
    }

    /// Queues a run. An on-demand run is queued only once its entry is on
    /// disk: one accepted and then lost with a crash would never end. A
    /// scheduled run that cannot be written waits in memory (after a crash
    /// the schedule finds it due again).
    fn enqueue(&mut self, path: String, on_demand: bool, request: Option<String>) -> Result<Option<u64>, NotQueued> {
        let item = QueuedRun { path, on_demand, queued_ms: now_ms(), request };
        let id = self.queue.push(item.clone())?;
        if let Some(id) = id {
            if let Err(e) = Queue::persist(self.store.kv().as_ref(), id, &item) {
                if on_demand {
                    self.queue.remove(id);
                    tracing::warn!("refused a run of {}: its queue entry cannot be written: {e}", item.path);
                    return Err(NotQueued::NotDurable(e.to_string()));
                }
                tracing::error!("cannot persist a queued run of {}: {e}", item.path);
            }
        }
        Ok(id)
    }

    fn schedule(&mut self, jobs: Vec<JobView>) {
        let now = now_ms();
        self.jobs = jobs.into_iter().filter(|j| j.node == self.me).map(|j| (j.path.clone(), j)).collect();
        let due = super::schedule::due(self.jobs.values(), now, crate::clock::minute_ms(), |path| {
            self.running.contains(path) || self.queue.is_waiting(path)
        });
        for path in due {
            let _ = self.enqueue(path, false, None);
        }
    }

    fn start_runs(&mut self, ctx: &mut Context<Self>) {
        while self.running.len() < self.max_parallel {
            let Some((id, item)) = self.queue.next(&self.running).map(|(id, i)| (id, i.clone())) else { return };
            self.queue.remove(id);
            let Some(job) = self.jobs.get(&item.path).cloned() else {
                // Unregistered since it was queued.
                let _ = Queue::forget(self.store.kv().as_ref(), id);
                continue;
            };
            self.start(id, job, item.request, ctx);
        }
    }

    fn start(&mut self, id: u64, job: JobView, request: Option<String>, ctx: &mut Context<Self>) {
        let path = job.path.clone();
        self.running.insert(path.clone());
        let progress = Arc::new(Progress::default());
        self.progress.insert(
            path.clone(),
            Running { progress: progress.clone(), started: std::time::Instant::now(), request: request.clone() },
        );
        self.log.do_send(Append(Event::Started {
            node: self.me.clone(),
            path: path.clone(),
            request: request.clone(),
        }));
        let (store, me, keep) = (self.store.clone(), self.me.clone(), self.keep);
        let seal = self.seals.as_ref().map(|s| s.current());
        let opts =
            CreateOptions { excludes: job.excludes.clone(), progress: Some(progress), ..CreateOptions::default() };
        let (key, spec, programs) = (path.clone(), job.spec.clone(), self.programs.clone());
        let started = std::time::Instant::now();
        let work = tokio::task::spawn_blocking(move || {
            let opts = match seal {
                None => opts,
                Some(Ok(seal)) => CreateOptions { seal: Some(seal), ..opts },
                Some(Err(e)) => return (Err(super::plugin::JobError::Io(e)), None),
            };
            // Whoever registered it, this node's operator decides what programs run here.
            match programs.check(&spec) {
                Err(refused) => (Err(refused), None),
                Ok(()) => run_job(&store, &me, &key, &spec, &opts, keep),
            }
        });
        ctx.spawn(work.into_actor(self).map(move |joined, act, ctx| {
            let duration_ms = started.elapsed().as_millis() as u64;
            let (node, path) = (act.me.clone(), path.clone());
            let mut pruned = Vec::new();
            let (joined, plugin) = match joined {
                Ok((r, plugin)) => (Ok(r), plugin),
                Err(e) => (Err(e), None),
            };
            let event = match joined {
                Ok(Ok(report)) => match report.outcome {
                    RunOutcome::Stored { manifest, retention, .. } => {
                        pruned = retention.removed;
                        Event::Finished {
                            recent: Default::default(),
                            node,
                            path: path.clone(),
                            archive: manifest.id.clone(),
                            size: manifest.tgz_len,
                            files: manifest.stats.files,
                            duration_ms,
                            warnings: told_warnings(&manifest),
                            request,
                            plugin,
                        }
                    }
                    RunOutcome::Unchanged { archive_id, .. } => Event::Unchanged {
                        recent: Default::default(),
                        node,
                        path: path.clone(),
                        archive: archive_id,
                        duration_ms,
                        request,
                        plugin,
                    },
                    RunOutcome::NoArchive => Event::Finished {
                        recent: Default::default(),
                        node,
                        path: path.clone(),
                        archive: String::new(),
                        size: 0,
                        files: 0,
                        duration_ms,
                        warnings: Vec::new(),
                        request,
                        plugin,
                    },
                },
                Ok(Err(error)) => Event::Failed {
                    recent: Default::default(),
                    node,
                    path: path.clone(),
                    error: error.to_string(),
                    duration_ms,
                    request,
                    plugin,
                },
                Err(e) => Event::Failed {
                    recent: Default::default(),
                    node,
                    path: path.clone(),
                    error: format!("the backup crashed: {e}"),
                    duration_ms,
                    request,
                    plugin,
                },
            };
            tracing::info!("backup of {path}: {}", event.kind());
            match &event {
                Event::Failed { error, .. } => act.worker.failed(format!("{path}: {error}"), now_ms()),
                _ => act.worker.done_one(now_ms()),
            }
            if matches!(&event, Event::Finished { archive, .. } if !archive.is_empty()) {
                act.stored.do_send(ArchiveStored);
            }
            let recorded = act.log.send(Append(event));
            for archive in pruned {
                let holder = act.me.clone();
                act.log.do_send(Append(Event::Pruned { node: act.me.clone(), path: path.clone(), archive, holder }));
            }
            // The queue forgets the run only once its outcome is on disk: a
            // crash before that leaves it queued, and it runs again (and
            // answers its request) after the restart.
            let kv = act.store.kv();
            let p = path.clone();
            actix::spawn(async move {
                match recorded.await {
                    Ok(Ok(_)) => {
                        let _ = Queue::forget(kv.as_ref(), id);
                    }
                    Ok(Err(e)) => {
                        tracing::error!("the outcome of the run of {p} was not written ({e}); it stays queued")
                    }
                    Err(e) => tracing::error!("the outcome of the run of {p} was not written ({e}); it stays queued"),
                }
            });
            act.progress.remove(&path);
            act.running.remove(&path);
            act.start_runs(ctx);
        }));
    }
}

impl Actor for JobsActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.run_interval(Duration::from_secs(1), |act, ctx| {
            let (log, me) = (act.log.clone(), act.me.clone());
            ctx.spawn(async move { log.send(GetJobsOf(me)).await }.into_actor(act).map(|jobs, act, ctx| {
                if let Ok(jobs) = jobs {
                    act.schedule(jobs);
                    act.start_runs(ctx);
                }
                act.report();
            }));
        });
    }
}

impl JobsActor {
    /// Reports how its backups fare to `worker`.
    pub fn with_worker(mut self, worker: Worker) -> Self {
        self.worker = worker;
        self
    }

    /// Says what runs and what waits.
    fn report(&self) {
        match (self.running.len(), self.queue.len()) {
            (0, 0) => self.worker.idle(now_ms()),
            (running, waiting) => self.worker.busy(format!("{running} backup(s) running, {waiting} waiting")),
        }
    }
}

impl Handler<RunNow> for JobsActor {
    type Result = Result<u64, NotQueued>;
    fn handle(&mut self, msg: RunNow, ctx: &mut Context<Self>) -> Self::Result {
        let id = self.enqueue(msg.path, true, msg.request)?.unwrap_or(0);
        // The job list may be a second old: refresh it before starting.
        let (log, me) = (self.log.clone(), self.me.clone());
        ctx.spawn(async move { log.send(GetJobsOf(me)).await }.into_actor(self).map(|jobs, act, ctx| {
            if let Ok(jobs) = jobs {
                act.jobs = jobs.into_iter().filter(|j| j.node == act.me).map(|j| (j.path.clone(), j)).collect();
                act.start_runs(ctx);
            }
        }));
        Ok(id)
    }
}

impl Handler<ChangeJob> for JobsActor {
    type Result = ResponseActFuture<Self, Result<Entry, String>>;
    fn handle(&mut self, ChangeJob(act): ChangeJob, _: &mut Context<Self>) -> Self::Result {
        let me = self.me.clone();
        let checked = super::change::is_change_of(&act, &me).and_then(|()| match act {
            Act::Register(r) => {
                let r = super::change::validate(&r)?;
                let spec = super::change::spec_of(&r.spec);
                super::plugin::check_programs(&spec, self.programs.allowed).map_err(|e| e.to_string())?;
                super::plugin::check_source(self.store.root(), &r.path, &spec).map_err(|e| e.to_string())?;
                Ok((
                    None,
                    Event::Registered {
                        node: me.clone(),
                        path: r.path,
                        every_min: r.every,
                        excludes: r.excludes,
                        spec,
                    },
                ))
            }
            Act::Unregister(k) => Ok((Some(k.path.clone()), Event::Unregistered { node: me.clone(), path: k.path })),
            Act::Pause { .. } => Ok((None, Event::Paused { node: me.clone() })),
            Act::Resume { .. } => Ok((None, Event::Resumed { node: me.clone() })),
            other => Err(format!("`{}` is not a change of jobs", other.name())),
        });
        let log = self.log.clone();
        Box::pin(
            async move {
                let (must_exist, event) = checked?;
                if let Some(path) = must_exist {
                    let jobs = log.send(GetJobsOf(me.clone())).await.map_err(|e| e.to_string())?;
                    if !jobs.iter().any(|j| j.path == path) {
                        return Err(format!("no job backs up {path} on {me}"));
                    }
                }
                match log.send(Append(event)).await {
                    Ok(Ok(entry)) => Ok(entry),
                    Ok(Err(e)) => Err(format!("cannot record it: {e}")),
                    Err(e) => Err(format!("cannot record it: {e}")),
                }
            }
            .into_actor(self),
        )
    }
}

impl Handler<GetProgress> for JobsActor {
    type Result = MessageResult<GetProgress>;
    fn handle(&mut self, msg: GetProgress, _: &mut Context<Self>) -> Self::Result {
        let p = match self.progress.get(&msg.path) {
            Some(r) => RunProgress {
                running: true,
                entries: r.progress.entries.load(Ordering::Relaxed),
                bytes_read: r.progress.bytes_read.load(Ordering::Relaxed),
                bytes_out: r.progress.bytes_out.load(Ordering::Relaxed),
                elapsed_ms: r.started.elapsed().as_millis() as u64,
                request: r.request.clone(),
            },
            None => RunProgress::default(),
        };
        MessageResult(p)
    }
}

impl Handler<ServeJobs> for JobsActor {
    type Result = ();
    fn handle(&mut self, msg: ServeJobs, ctx: &mut Context<Self>) {
        let answer = match msg.request {
            JobsRequest::Run { path, request, .. } => match self.handle(RunNow { path: path.into(), request }, ctx) {
                Ok(id) => JobsAnswer::Queued { id },
                Err(why) => JobsAnswer::Busy { reason: why.to_string() },
            },
            JobsRequest::Progress { path } => {
                JobsAnswer::Progress(self.handle(GetProgress { path: path.into() }, ctx).0)
            }
            JobsRequest::Change { act, .. } => {
                let reply = msg.reply;
                let change = self.handle(ChangeJob(act), ctx);
                ctx.spawn(change.map(move |done, _, _| {
                    reply.send(&match done {
                        Ok(entry) => JobsAnswer::Recorded { entry: Box::new(entry) },
                        Err(reason) => JobsAnswer::Failed { reason },
                    })
                }));
                return;
            }
        };
        msg.reply.send(&answer);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::manifest::objects::SUITE_XCHACHA_SIV;
    use crate::archive::manifest::{Crypt, ObjRef};
    use crate::archive::{Warning, WarningKind};

    #[test]
    fn an_encrypted_archive_s_warnings_reach_the_log_without_their_paths() {
        let warning = |path: &str, kind| Warning { path: path.into(), kind, message: "m".into() };
        let mut m = crate::archive::Created {
            members: vec![],
            files: vec![],
            tree_digest: Default::default(),
            tgz_len: 0,
            raw_len: 0,
            stats: Default::default(),
            warnings: vec![
                warning("secret/plans.txt", WarningKind::ChangedWhileRead),
                warning("secret/b", WarningKind::ChangedWhileRead),
                warning("dev/fifo", WarningKind::Skipped),
            ],
            snapshot: crate::archive::StatSnapshot { digest: Default::default(), racy: false, entries: 0 },
            reused_members: 0,
            reused_raw: 0,
            recorded: false,
            bases: vec![],
            made: vec![],
            files_read: 0,
        }
        .into_manifest("n1", "/srv", 1, None, vec![]);
        assert_eq!(told_warnings(&m), vec!["secret/plans.txt: m", "secret/b: m", "dev/fifo: m"]);
        let head = ObjRef { cid: Default::default(), len: 0 };
        m.crypt = Some(Crypt { suite: SUITE_XCHACHA_SIV, kid: [0; 8], keys: vec![], index: vec![], head });
        let told = told_warnings(&m);
        assert_eq!(told.len(), 2, "{told:?}");
        assert!(told[0].starts_with("2 changed while read") && told[1].starts_with("1 special files skipped"));
        assert!(told.iter().all(|t| !t.contains("secret")), "{told:?}");
    }
}
