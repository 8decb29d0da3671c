//! The coordinator actor: owns the cluster state (jobs, chunk queue, placement, retries) and the
//! addresses of the worker sessions.
//!
//! Every message that changes state ends in `Coordinator::settle`, which dispatches ready chunks,
//! sends the resulting assignments and cancels (batched per worker), starts large merges on the
//! blocking pool (their end comes back as a later turn), wakes long-pollers of finished jobs, and
//! arms a timer for the next retry backoff or chunk timeout.

use bytes::Bytes;
use std::collections::HashMap;
use std::time::{Duration, Instant};

use actix::prelude::*;
use muster_shared::ids::{JobId, WorkerId};
use muster_shared::job::JobSpec;
use muster_shared::protocol::{CoordinatorMessage, Hello, WorkerMessage};
use muster_shared::reduce::{Fold, Reducer};
use tokio::sync::mpsc::UnboundedSender;
use tokio::sync::oneshot;
use tracing::{info, warn};

mod persistence;

pub use persistence::{Durable, Persistence};

use crate::error::ApiError;
use crate::state::attempts::AttemptsRead;
use crate::state::events::EventsRead;
use crate::state::job::{ChunkCounts, FailReason, JobState, Partial};
use crate::state::live::LiveRead;
use crate::state::views::{chunk_states, BatchLog, JobView, Progress};
use crate::state::workers::WorkerView;
use crate::state::{ClusterState, Counters, Effect, Gauges, Submitted};
use crate::worker_session::{Deliver, Evict, WorkerSession};

/// The coordinator actor.
pub struct Coordinator {
    state: ClusterState,
    /// The store: the state's writes go to it, answers wait for it.
    persistence: Persistence,
    /// Registered sessions, with the serial of the connection that registered.
    sessions: HashMap<WorkerId, (u64, Addr<WorkerSession>)>,
    /// Long-pollers waiting for jobs to finish.
    waiters: HashMap<JobId, Vec<oneshot::Sender<(JobResult, Durable)>>>,
    /// Followers waiting for jobs' next output lines (or their end).
    output_waiters: HashMap<JobId, Vec<oneshot::Sender<()>>>,
    /// Readers of jobs' partial results, each fed as chunks succeed until its job ends (or it
    /// falls [`PARTIALS_BUFFERED`] behind, and reads the rest again from the job).
    partial_readers: HashMap<JobId, Vec<tokio::sync::mpsc::Sender<(Partial, Durable)>>>,
    /// Merges of jobs' partial results under way while the jobs run (see [`Fold`]), by job.
    folds: HashMap<JobId, Fold>,
    heartbeat_interval: Duration,
    /// The armed wake-up timer, if any.
    wake: Option<(Instant, SpawnHandle)>,
    shutting_down: bool,
    /// Jobs accepted (false) or finished (true) since the last log turn (see [`LogJobs`]).
    to_log: Vec<(JobId, bool)>,
    /// Told why, when this coordinator must stop at once (another one leads now).
    fatal: UnboundedSender<String>,
}

impl Coordinator {
    /// A coordinator over this state.
    pub fn new(
        state: ClusterState,
        persistence: Persistence,
        heartbeat_interval: Duration,
        fatal: UnboundedSender<String>,
    ) -> Self {
        Self {
            fatal,
            state,
            persistence,
            sessions: HashMap::new(),
            waiters: HashMap::new(),
            output_waiters: HashMap::new(),
            partial_readers: HashMap::new(),
            folds: HashMap::new(),
            heartbeat_interval,
            wake: None,
            shutting_down: false,
            to_log: Vec::new(),
        }
    }

    /// Hands succeeded chunks' results to their jobs' readers, each with a ticket for its write:
    /// a reader sends one on once it is stored, so its number holds after a restart or a
    /// failover. A reader whose buffer is full is let go (it reads on from the job itself).
    fn hand_partials(&mut self, partials: Vec<(JobId, Partial)>) {
        if partials.is_empty() {
            return;
        }
        // Without a ticket the store failed: this coordinator stops, and its readers with it.
        let Ok(durable) = self.persistence.durable() else {
            return;
        };
        for (job, partial) in partials {
            if let Some(readers) = self.partial_readers.get_mut(&job) {
                readers
                    .retain(|reader| reader.try_send((partial.clone(), durable.clone())).is_ok());
            }
        }
    }

    /// Wakes the followers of `job`'s output.
    fn wake_followers(&mut self, job: JobId) {
        for follower in self.output_waiters.remove(&job).into_iter().flatten() {
            let _ = follower.send(());
        }
    }

    fn settle(&mut self, ctx: &mut Context<Self>) {
        let now = Instant::now();
        self.state.check_timeouts(now);
        self.state.dispatch();
        let mut outgoing: HashMap<WorkerId, Vec<CoordinatorMessage>> = HashMap::new();
        let mut finished = Vec::new();
        let mut partials = Vec::new();
        for effect in self.state.take_effects() {
            match effect {
                Effect::Assign { worker, assignment } => outgoing
                    .entry(worker)
                    .or_default()
                    .push(CoordinatorMessage::Assign(assignment)),
                Effect::Send { worker, message } => {
                    outgoing.entry(worker).or_default().push(message)
                }
                Effect::Cancel { worker, chunk } => outgoing
                    .entry(worker)
                    .or_default()
                    .push(CoordinatorMessage::Cancel(chunk)),
                Effect::JobDone(id) => finished.push(id),
                Effect::Partial { job, partial } => partials.push((job, partial)),
                Effect::Fold {
                    job,
                    reducer,
                    result,
                } => {
                    let fold = match self.folds.entry(job) {
                        std::collections::hash_map::Entry::Occupied(e) => Some(e.into_mut()),
                        std::collections::hash_map::Entry::Vacant(e) => {
                            Fold::for_reducer(reducer).map(|f| e.insert(f))
                        }
                    };
                    if let Some(fold) = fold {
                        fold.push(result);
                    }
                }
                Effect::Reduce {
                    job,
                    reducer,
                    partials,
                } => self.reduce_off_thread(job, reducer, partials, ctx),
            }
        }
        // The writes go to the store's writer first: a commit takes longer than a chunk's round
        // trip to a worker, and answers wait for it.
        self.persist();
        self.hand_partials(partials);
        for (worker, messages) in outgoing {
            if let Some((_, session)) = self.sessions.get(&worker) {
                session.do_send(Deliver(messages));
            }
        }
        // Long-polls get the job's end with a ticket covering it (the end went to the store's
        // writer above), so they need not ask again.
        for id in finished {
            self.log_later(ctx, id, true);
            self.wake_followers(id);
            // Its readers get what was handed to them, then the end.
            self.partial_readers.remove(&id);
            self.folds.remove(&id);
            let Some(waiters) = self.waiters.remove(&id) else {
                continue;
            };
            // Without a ticket (the store failed) or a job, a dropped waiter asks again and is
            // told why.
            let (Ok(durable), Some(job)) = (self.persistence.durable(), self.state.job(id)) else {
                continue;
            };
            let answer = result_of(&job.state);
            for waiter in waiters {
                let _ = waiter.send((answer.clone(), durable.clone()));
            }
        }
        if self.stop_if_told(ctx) {
            return;
        }
        self.arm_timer(ctx, now);
    }

    /// Carries a submission the state took (or refused) through to the store: its insert goes
    /// to the store at once (one the store refuses is not accepted), its chunks go out, and a
    /// job whose insert does not become durable is dropped again.
    fn admit(
        &mut self,
        submitted: Result<Submitted, crate::state::StateError>,
        ctx: &mut Context<Self>,
    ) -> Result<(Submitted, Durable), ApiError> {
        // The insert goes to the store at once: one it refuses is not accepted.
        let refused = self.persistence.apply(self.state.take_writes());
        if self.stop_if_told(ctx) {
            return Err(ApiError::NotLeader { location: None });
        }
        let submitted = submitted?;
        if let Some((_, e)) = refused.iter().find(|(id, _)| *id == submitted.id) {
            let refusal = ApiError::Unavailable(format!("the job was not accepted: {e}"));
            self.state.forget(submitted.id);
            self.settle(ctx);
            return Err(refusal);
        }
        // Its chunks go out before the job is durable: results count only once it is (the
        // writer commits in order), and a job that cannot be stored is forgotten again. The
        // insert and the attempts dispatching starts go to the store in one batch, committed
        // together: one commit for the answer to wait for, and for the first result to follow.
        self.settle(ctx);
        let durable = match self.persistence.durable() {
            Ok(durable) => durable,
            Err(e) => {
                if submitted.created {
                    self.state.forget(submitted.id);
                    self.settle(ctx);
                }
                return Err(e);
            }
        };
        if submitted.created {
            // A job whose insert does not become durable is dropped again (its client is told
            // it was not accepted).
            let id = submitted.id;
            ctx.spawn(
                durable
                    .clone()
                    .wait()
                    .into_actor(self)
                    .map(move |stored, act, ctx| {
                        if stored.is_err() {
                            act.state.forget(id);
                            act.settle(ctx);
                        }
                    }),
            );
        }
        if submitted.created {
            self.log_later(ctx, submitted.id, false);
        }
        Ok((submitted, durable))
    }

    /// A running attempt's sub-job: its body parsed as `POST /v1/jobs` takes it, then
    /// submitted under its key (see `state::subjobs`); answered with its id without waiting for
    /// the store (a retried attempt submitting again finds it, or makes it anew if it was lost).
    fn submit_child(
        &mut self,
        worker: WorkerId,
        parent: muster_shared::protocol::ChunkRef,
        key: &str,
        body: &Bytes,
        ctx: &mut Context<Self>,
    ) -> Result<JobId, String> {
        use sha2::Digest;
        let spec = muster_shared::body::parse_job(body, self.state.workers().capacity().max(1))
            .map_err(|e| format!("the sub-job's body was refused: {e}"))?;
        let digest: [u8; 32] = sha2::Sha256::digest(body).into();
        let submitted = self.state.submit_child(
            worker,
            parent,
            key,
            spec,
            digest,
            self.persistence.backlog(),
        );
        let (submitted, _) = self.admit(submitted, ctx).map_err(|e| e.to_string())?;
        Ok(submitted.id)
    }

    /// A job's status view.
    fn view(&self, id: JobId) -> Result<JobView, ApiError> {
        self.state
            .job(id)
            .map(JobView::of)
            .ok_or_else(|| ApiError::JobNotFound { id: id.to_string() })
    }

    /// Hands the state's writes to the store and on to be committed. Inserts come only from
    /// submissions, which hand theirs on at once (see [`Submit`]).
    fn persist(&mut self) {
        self.persistence.apply(self.state.take_writes());
        self.persistence.flush();
    }

    /// Merges a job's partial results on the blocking pool and ends the job when done: what its
    /// fold merged already and the rest, when it has one that holds every partial, else all of
    /// them. If the coordinator stops first, the merge is lost with it, and a restart merges the
    /// stored partial results again.
    fn reduce_off_thread(
        &mut self,
        job: JobId,
        reducer: Reducer,
        partials: Vec<Bytes>,
        ctx: &mut Context<Self>,
    ) {
        let fold = self.folds.remove(&job);
        let merge = actix_rt::task::spawn_blocking(move || {
            match fold.and_then(|f| f.finish(partials.len())) {
                Some(merged) => Ok(merged),
                None => reducer.reduce(&partials).map_err(|e| e.to_string()),
            }
        });
        ctx.spawn(merge.into_actor(self).map(move |merged, act, ctx| {
            let outcome = merged.unwrap_or_else(|e| Err(format!("the merge stopped: {e}")));
            act.state.reduced(job, outcome);
            act.settle(ctx);
        }));
    }

    /// Logs these jobs' acceptance or end in a turn of their own, after the current message is
    /// answered and its writes handed on: a log line is a write to a pipe or a terminal, which
    /// took ~25 µs here, on the path of every small job twice.
    fn log_later(&mut self, ctx: &mut Context<Self>, job: JobId, finished: bool) {
        if self.to_log.is_empty() {
            ctx.notify(LogJobs);
        }
        self.to_log.push((job, finished));
    }

    /// Stops everything when the state says this coordinator must stop (another one leads now, or
    /// the store lost a write): no further work, no writes.
    fn stop_if_told(&mut self, ctx: &mut Context<Self>) -> bool {
        let Some(reason) = self.persistence.take_stop() else {
            return false;
        };
        warn!(%reason, "stopping");
        self.shutting_down = true;
        for (_, (_, session)) in self.sessions.drain() {
            session.do_send(Evict);
        }
        self.waiters.clear();
        let _ = self.fatal.send(reason);
        ctx.stop();
        true
    }

    fn arm_timer(&mut self, ctx: &mut Context<Self>, now: Instant) {
        let Some(at) = self.state.next_wakeup() else {
            return;
        };
        if let Some((armed, handle)) = self.wake {
            if armed <= at && armed > now {
                return;
            }
            ctx.cancel_future(handle);
        }
        let handle = ctx.run_later(at.saturating_duration_since(now), |act, ctx| {
            act.wake = None;
            act.settle(ctx);
        });
        self.wake = Some((at, handle));
    }
}

impl Actor for Coordinator {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        info!(store = self.persistence.kind(), "coordinator started");
        ctx.run_interval(self.state.prune_every(), |act, _| {
            act.state.prune_ended(chrono::Utc::now());
            act.persist();
        });
    }
}

/// Submit a job. The answer may be sent once its [`Durable`] resolves.
#[derive(Message)]
#[rtype(result = "Result<(Submitted, JobView, Durable), ApiError>")]
pub struct Submit {
    /// The validated job.
    pub spec: JobSpec,
    /// Idempotency key with the body digest.
    pub idempotency: Option<(String, [u8; 32])>,
}

impl Handler<Submit> for Coordinator {
    type Result = Result<(Submitted, JobView, Durable), ApiError>;

    fn handle(&mut self, msg: Submit, ctx: &mut Context<Self>) -> Self::Result {
        if self.shutting_down {
            return Err(ApiError::Unavailable(
                "the coordinator is shutting down".into(),
            ));
        }
        let submitted = self
            .state
            .submit(msg.spec, msg.idempotency, self.persistence.backlog());
        let (submitted, durable) = self.admit(submitted, ctx)?;
        let view = self.view(submitted.id)?;
        Ok((submitted, view, durable))
    }
}

/// Logs the jobs accepted or finished since the last such turn.
#[derive(Message)]
#[rtype(result = "()")]
struct LogJobs;

impl Handler<LogJobs> for Coordinator {
    type Result = ();

    fn handle(&mut self, _msg: LogJobs, _ctx: &mut Context<Self>) {
        for (id, finished) in std::mem::take(&mut self.to_log) {
            let Some(job) = self.state.job(id) else {
                continue;
            };
            if finished {
                info!(job_id = %id, status = job.state.name(), "job finished");
            } else {
                info!(job_id = %id, name = %job.meta.name, chunks = job.counts.total, "job accepted");
            }
        }
    }
}

/// Read a job's status.
#[derive(Message)]
#[rtype(result = "Result<(JobView, Durable), ApiError>")]
pub struct GetJob(pub JobId);

impl Handler<GetJob> for Coordinator {
    type Result = Result<(JobView, Durable), ApiError>;

    fn handle(&mut self, msg: GetJob, _ctx: &mut Context<Self>) -> Self::Result {
        let view = self.view(msg.0)?;
        Ok((view, self.persistence.durable()?))
    }
}

/// A job's result, or why there is none.
#[derive(Debug, Clone)]
pub enum JobResult {
    /// Succeeded with this JSON.
    Ready(Bytes),
    /// Not succeeded: the status and, when terminal, the error.
    Missing {
        /// Job status.
        status: &'static str,
        /// Error when failed.
        error: Option<String>,
    },
}

/// The answer to [`GetResult`].
#[derive(Debug)]
pub struct Answer {
    /// What is known now.
    pub result: JobResult,
    /// For a watched job not finished yet: its result when it finishes, with a ticket covering
    /// its end (dropped if the coordinator stops first).
    pub finished: Option<oneshot::Receiver<(JobResult, Durable)>>,
}

/// What [`GetResult`] tells of a job in `state`.
fn result_of(state: &JobState) -> JobResult {
    match state {
        JobState::Succeeded { result } => JobResult::Ready(result.clone()),
        other => JobResult::Missing {
            status: other.name(),
            error: match other {
                JobState::Failed { error } => Some(error.clone()),
                _ => None,
            },
        },
    }
}

/// Read a job's result; `watch` registers a long-poll waiter when it is not finished.
#[derive(Message)]
#[rtype(result = "Result<(Answer, Durable), ApiError>")]
pub struct GetResult {
    /// The job.
    pub id: JobId,
    /// Register a waiter.
    pub watch: bool,
}

impl Handler<GetResult> for Coordinator {
    type Result = Result<(Answer, Durable), ApiError>;

    fn handle(&mut self, msg: GetResult, _ctx: &mut Context<Self>) -> Self::Result {
        let durable = self.persistence.durable()?;
        let job = self
            .state
            .job(msg.id)
            .ok_or_else(|| ApiError::JobNotFound {
                id: msg.id.to_string(),
            })?;
        let finished = (msg.watch && !job.state.is_terminal() && !self.shutting_down).then(|| {
            let (tx, rx) = oneshot::channel();
            self.waiters.entry(msg.id).or_default().push(tx);
            rx
        });
        Ok((
            Answer {
                result: result_of(&job.state),
                finished,
            },
            durable,
        ))
    }
}

/// What an `exec` job's batches printed from a line on; `watch` registers a follower woken by
/// the next line or the job's end when there is nothing to read yet.
#[derive(Message)]
#[rtype(result = "Result<OutputAnswer, ApiError>")]
pub struct GetOutput {
    /// The job.
    pub id: JobId,
    /// The first line wanted.
    pub after: u64,
    /// Register a follower.
    pub watch: bool,
}

/// The answer to [`GetOutput`].
#[derive(Debug)]
pub struct OutputAnswer {
    /// The lines.
    pub read: LiveRead,
    /// True when the job has ended: no line follows.
    pub ended: bool,
    /// For a watched job with nothing to read: fires at its next line or its end.
    pub woken: Option<oneshot::Receiver<()>>,
}

impl Handler<GetOutput> for Coordinator {
    type Result = Result<OutputAnswer, ApiError>;

    fn handle(&mut self, msg: GetOutput, _ctx: &mut Context<Self>) -> Self::Result {
        let (read, ended) =
            self.state
                .live_output(msg.id, msg.after)
                .ok_or_else(|| ApiError::JobNotFound {
                    id: msg.id.to_string(),
                })?;
        let woken =
            (msg.watch && read.lines.is_empty() && !ended && !self.shutting_down).then(|| {
                let (tx, rx) = oneshot::channel();
                self.output_waiters.entry(msg.id).or_default().push(tx);
                rx
            });
        Ok(OutputAnswer { read, ended, woken })
    }
}

/// The cluster's events from a number on (at most 1000).
#[derive(Message)]
#[rtype(result = "EventsRead")]
pub struct GetClusterEvents {
    /// The first event wanted.
    pub from: u64,
}

impl Handler<GetClusterEvents> for Coordinator {
    type Result = MessageResult<GetClusterEvents>;

    fn handle(&mut self, msg: GetClusterEvents, _ctx: &mut Context<Self>) -> Self::Result {
        MessageResult(self.state.cluster_events(msg.from, 1000))
    }
}

/// Attempt events from a number on, of one job or all, at most `most`.
#[derive(Message)]
#[rtype(result = "AttemptsRead")]
pub struct GetAttempts {
    /// The first event wanted.
    pub from: u64,
    /// Only this job's.
    pub job: Option<JobId>,
    /// Most events wanted.
    pub most: usize,
}

impl Handler<GetAttempts> for Coordinator {
    type Result = MessageResult<GetAttempts>;

    fn handle(&mut self, msg: GetAttempts, _ctx: &mut Context<Self>) -> Self::Result {
        MessageResult(self.state.attempt_events(msg.from, msg.job, msg.most))
    }
}

/// The cluster at a glance: jobs by status, the queue, slots, and chunks done per second over
/// the last `seconds`.
#[derive(Message)]
#[rtype(result = "(Gauges, Vec<u32>)")]
pub struct GetOverview {
    /// Seconds of throughput wanted.
    pub seconds: usize,
}

impl Handler<GetOverview> for Coordinator {
    type Result = MessageResult<GetOverview>;

    fn handle(&mut self, msg: GetOverview, _ctx: &mut Context<Self>) -> Self::Result {
        MessageResult((self.state.gauges(), self.state.throughput(msg.seconds)))
    }
}

/// A job's chunk counts, and each chunk's state as a letter ([`chunk_states`]).
#[derive(Message)]
#[rtype(result = "Result<(ChunkCounts, String), ApiError>")]
pub struct GetChunkStates(pub JobId);

impl Handler<GetChunkStates> for Coordinator {
    type Result = Result<(ChunkCounts, String), ApiError>;

    fn handle(&mut self, msg: GetChunkStates, _ctx: &mut Context<Self>) -> Self::Result {
        self.state
            .job(msg.0)
            .map(|job| (job.counts, chunk_states(job)))
            .ok_or_else(|| ApiError::JobNotFound {
                id: msg.0.to_string(),
            })
    }
}

/// Partial results a reader may fall behind by before it is let go.
pub const PARTIALS_BUFFERED: usize = 1024;

/// Follow a job's partial results from the `from`-th chunk to succeed on.
#[derive(Message)]
#[rtype(result = "Result<FollowedPartials, ApiError>")]
pub struct FollowPartials {
    /// The job.
    pub id: JobId,
    /// The first partial wanted.
    pub from: u64,
}

/// The answer to [`FollowPartials`]: what succeeded already, then each as it succeeds, until
/// the job ends (the channel closes) or the reader falls behind (it closes too, job running).
#[derive(Debug)]
pub struct FollowedPartials {
    /// The partials there are now.
    pub now: Vec<Partial>,
    /// Resolves once those are stored.
    pub stored: Durable,
    /// Those to come, each with a ticket for its write.
    pub next: tokio::sync::mpsc::Receiver<(Partial, Durable)>,
}

impl Handler<FollowPartials> for Coordinator {
    type Result = Result<FollowedPartials, ApiError>;

    fn handle(&mut self, msg: FollowPartials, _ctx: &mut Context<Self>) -> Self::Result {
        let not_found = || ApiError::JobNotFound {
            id: msg.id.to_string(),
        };
        let now = match self.state.follow_partials(msg.id, msg.from) {
            None => return Err(not_found()),
            Some(Some(now)) => now,
            Some(None) => {
                let status = self.state.job(msg.id).ok_or_else(not_found)?.state.name();
                return Err(ApiError::NotFinished {
                    detail: format!(
                        "job {} has ended ({status}): its partial results are no longer kept (its result merges them)",
                        msg.id
                    ),
                    status,
                });
            }
        };
        // A stopping coordinator takes no reader: one whose channel closed at once would ask
        // again and again until the coordinator is gone.
        if self.shutting_down {
            return Err(ApiError::Unavailable(
                "the coordinator is stopping: follow the job on the next leader".into(),
            ));
        }
        let stored = self.persistence.durable()?;
        let (tx, next) = tokio::sync::mpsc::channel(PARTIALS_BUFFERED);
        self.partial_readers.entry(msg.id).or_default().push(tx);
        Ok(FollowedPartials { now, stored, next })
    }
}

/// A job's progress now.
#[derive(Message)]
#[rtype(result = "Result<Progress, ApiError>")]
pub struct GetProgress(pub JobId);

impl Handler<GetProgress> for Coordinator {
    type Result = Result<Progress, ApiError>;

    fn handle(&mut self, msg: GetProgress, _ctx: &mut Context<Self>) -> Self::Result {
        self.state
            .job(msg.0)
            .map(Progress::of)
            .ok_or_else(|| ApiError::JobNotFound {
                id: msg.0.to_string(),
            })
    }
}

/// Each batch's output of an `exec` job.
#[derive(Message)]
#[rtype(result = "Result<Vec<BatchLog>, ApiError>")]
pub struct GetLogs(pub JobId);

impl Handler<GetLogs> for Coordinator {
    type Result = Result<Vec<BatchLog>, ApiError>;

    fn handle(&mut self, msg: GetLogs, _ctx: &mut Context<Self>) -> Self::Result {
        self.state
            .batch_logs(msg.0)
            .ok_or_else(|| ApiError::JobNotFound {
                id: msg.0.to_string(),
            })?
            .map_err(ApiError::Invalid)
    }
}

/// Cancel a job.
#[derive(Message)]
#[rtype(result = "Result<(JobView, Durable), ApiError>")]
pub struct CancelJob(pub JobId);

impl Handler<CancelJob> for Coordinator {
    type Result = Result<(JobView, Durable), ApiError>;

    fn handle(&mut self, msg: CancelJob, ctx: &mut Context<Self>) -> Self::Result {
        self.state.cancel(msg.0)?;
        self.settle(ctx);
        let view = self.view(msg.0)?;
        Ok((view, self.persistence.durable()?))
    }
}

/// List jobs, newest first.
#[derive(Message)]
#[rtype(result = "Result<(Vec<JobView>, Durable), ApiError>")]
pub struct ListJobs {
    /// Only this status.
    pub status: Option<String>,
    /// Only sub-jobs of this job.
    pub parent: Option<JobId>,
    /// Only jobs older than this one (the previous page's last id).
    pub after: Option<JobId>,
    /// Page size.
    pub limit: usize,
}

impl Handler<ListJobs> for Coordinator {
    type Result = Result<(Vec<JobView>, Durable), ApiError>;

    fn handle(&mut self, msg: ListJobs, _ctx: &mut Context<Self>) -> Self::Result {
        let page = self
            .state
            .jobs_page(msg.status.as_deref(), msg.parent, msg.after, msg.limit)
            .into_iter()
            .map(JobView::of)
            .collect();
        Ok((page, self.persistence.durable()?))
    }
}

/// List connected workers.
#[derive(Message)]
#[rtype(result = "Vec<WorkerView>")]
pub struct ListWorkers;

impl Handler<ListWorkers> for Coordinator {
    type Result = MessageResult<ListWorkers>;

    fn handle(&mut self, _msg: ListWorkers, _ctx: &mut Context<Self>) -> Self::Result {
        let mut views: Vec<WorkerView> = self.state.workers().iter().map(|w| w.view()).collect();
        views.sort_by(|a, b| a.name.cmp(&b.name).then(a.id.cmp(&b.id)));
        MessageResult(views)
    }
}

/// What `/metrics` shows of the coordinator: its counters, its state's sizes and its store.
#[derive(Message)]
#[rtype(result = "Observed")]
pub struct Observe;

/// The coordinator's answer to [`Observe`].
#[derive(Debug, Clone)]
pub struct Observed {
    /// What happened since it started leading.
    pub counters: Counters,
    /// Its state's sizes now.
    pub gauges: Gauges,
    /// Its store's kind.
    pub store: &'static str,
    /// How long its store's commits take.
    pub commit_seconds: Option<prometheus::Histogram>,
}

impl Handler<Observe> for Coordinator {
    type Result = MessageResult<Observe>;

    fn handle(&mut self, _msg: Observe, _ctx: &mut Context<Self>) -> Self::Result {
        MessageResult(Observed {
            counters: self.state.counters.clone(),
            gauges: self.state.gauges(),
            store: self.persistence.kind(),
            commit_seconds: self.persistence.commit_seconds(),
        })
    }
}

/// A worker session received a valid hello.
#[derive(Message)]
#[rtype(result = "Result<Duration, String>")]
pub struct RegisterWorker {
    /// The id the session gave this connection (never one a worker chose).
    pub id: WorkerId,
    /// Connection serial, to tell a reconnect from the connection it replaces.
    pub serial: u64,
    /// The hello.
    pub hello: Hello,
    /// Peer address.
    pub address: String,
    /// The session.
    pub session: Addr<WorkerSession>,
}

impl Handler<RegisterWorker> for Coordinator {
    type Result = Result<Duration, String>;

    fn handle(&mut self, msg: RegisterWorker, ctx: &mut Context<Self>) -> Self::Result {
        if self.shutting_down {
            return Err("the coordinator is shutting down".into());
        }
        self.state.add_worker(msg.id, msg.hello, msg.address)?;
        self.sessions.insert(msg.id, (msg.serial, msg.session));
        self.settle(ctx);
        Ok(self.heartbeat_interval)
    }
}

/// Messages a registered worker sent, in order.
#[derive(Message)]
#[rtype(result = "()")]
pub struct FromWorker {
    /// The worker.
    pub id: WorkerId,
    /// Its connection serial.
    pub serial: u64,
    /// The batch.
    pub messages: Vec<WorkerMessage>,
}

impl Handler<FromWorker> for Coordinator {
    type Result = ();

    fn handle(&mut self, msg: FromWorker, ctx: &mut Context<Self>) {
        if self.sessions.get(&msg.id).map(|(s, _)| *s) != Some(msg.serial) {
            return;
        }
        let mut changed = false;
        for message in msg.messages {
            match message {
                WorkerMessage::Heartbeat => self.state.worker_heartbeat(msg.id),
                WorkerMessage::Outcome(outcome) => {
                    self.state.outcome(msg.id, outcome);
                    changed = true;
                }
                WorkerMessage::Draining => {
                    self.state.worker_draining(msg.id);
                    changed = true;
                }
                WorkerMessage::Capacity { prefetch } => {
                    self.state.worker_prefetch(msg.id, prefetch);
                    changed = true;
                }
                WorkerMessage::Output { chunk, text } => {
                    if self.state.output(msg.id, chunk, &text) {
                        self.wake_followers(chunk.job);
                    }
                }
                WorkerMessage::Hello(_) => warn!(worker = %msg.id, "ignored a second hello"),
                WorkerMessage::SubmitJob {
                    request,
                    parent,
                    key,
                    body,
                } => {
                    let result = self.submit_child(msg.id, parent, &key, &body, ctx);
                    if let Err(reason) = &result {
                        info!(worker = %msg.id, %parent, %reason, "sub-job refused");
                    }
                    self.state
                        .send(msg.id, CoordinatorMessage::Submitted { request, result });
                    changed = true;
                }
                WorkerMessage::AwaitJobs {
                    request,
                    parent,
                    jobs,
                } => {
                    if let Err(e) = self.state.await_jobs(msg.id, parent, request, jobs) {
                        self.state.send(
                            msg.id,
                            CoordinatorMessage::JobsEnded {
                                request,
                                result: Err(e.to_string()),
                            },
                        );
                    }
                    changed = true;
                }
                WorkerMessage::CancelJob { parent, job } => {
                    if let Err(e) = self.state.cancel_child(msg.id, parent, job) {
                        info!(worker = %msg.id, %parent, error = %e, "sub-job cancel refused");
                    }
                    changed = true;
                }
            }
        }
        if changed {
            self.settle(ctx);
        }
    }
}

/// A worker session ended.
#[derive(Message)]
#[rtype(result = "()")]
pub struct WorkerDisconnected {
    /// The worker.
    pub id: WorkerId,
    /// Its connection serial.
    pub serial: u64,
    /// Why: connection lost or heartbeat timeout.
    pub reason: FailReason,
}

impl Handler<WorkerDisconnected> for Coordinator {
    type Result = ();

    fn handle(&mut self, msg: WorkerDisconnected, ctx: &mut Context<Self>) {
        if self.sessions.get(&msg.id).map(|(s, _)| *s) != Some(msg.serial) {
            return;
        }
        self.sessions.remove(&msg.id);
        self.state.worker_gone(msg.id, msg.reason);
        self.settle(ctx);
    }
}

/// Stop taking work: refuse submissions, close worker sessions, flush the store.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Shutdown;

impl Handler<Shutdown> for Coordinator {
    type Result = ();

    fn handle(&mut self, _msg: Shutdown, _ctx: &mut Context<Self>) {
        info!(workers = self.sessions.len(), "coordinator shutting down");
        self.shutting_down = true;
        for (_, (_, session)) in self.sessions.drain() {
            session.do_send(Evict);
        }
        // Dropping the senders wakes every long-poller with the job's current state.
        self.waiters.clear();
        self.persistence.sync();
    }
}
