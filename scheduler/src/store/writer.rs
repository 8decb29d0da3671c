//! Group commit on a thread of its own, for the SQL stores.
//!
//! The coordinator hands writes to [`Writer`] and goes on at once; the writer thread takes every
//! write that has queued up since its last transaction and commits them together. When the
//! coordinator is busy, batches grow and the cost of each commit (an fsync for SQLite, a round trip
//! for PostgreSQL) is shared by many writes; when it is idle, a write is committed at once. Writes
//! are buffered on the coordinator's side until [`Store::flush`] (once per coordinator message), so
//! the writer thread is woken once per batch rather than once per write. The thread publishes how
//! many batches it has committed, which is what a [`Ticket`] waits for; only [`Store::sync`] and
//! [`Store::load`] make the coordinator itself wait. When it has nothing else to do, the thread
//! drops the chunk payloads of finished jobs (without a sync of their own), so that freeing
//! megabytes of input never delays the commit a client is waiting for: those of a large job at
//! once, those of small jobs by the [`DROP_INPUTS_BATCH`] or when writes pause, so that a stream
//! of short jobs does not pay a transaction per job for it.

use std::collections::HashSet;
use std::sync::mpsc::{self, RecvTimeoutError, TryRecvError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use muster_shared::ids::{ChunkIndex, JobId};
use tokio::sync::watch;
use tracing::{error, info, warn};

use super::rows::{self, Buffer, Pending};
use super::{Fate, JobEnd, NewJob, Progress, Snapshot, Store, StoreError, Ticket, Timing};
use crate::records::AttemptRecord;

/// A new job, owned, ready to send to the writer thread.
#[derive(Debug)]
pub(super) struct InsertJob {
    pub(super) id: String,
    pub(super) meta: String,
    pub(super) created_at: String,
    pub(super) inputs: Vec<Bytes>,
    pub(super) idempotency: Option<(String, Vec<u8>)>,
}

/// One write, in the order the coordinator made it.
#[derive(Debug)]
pub(super) enum Op {
    /// An attempt, result or end.
    Write(Pending),
    /// A new job.
    Insert(InsertJob),
    /// Items' durations, overwriting earlier ones.
    Timings(Vec<Timing>),
}

/// A database the writer thread owns.
pub(super) trait Backend: Send + 'static {
    /// Applies the ops in one transaction.
    fn write(&mut self, ops: &[Op]) -> Result<(), StoreError>;
    /// Drops the chunk payloads of finished jobs (their partial results stay). Nothing depends
    /// on this being durable: a restart finds the jobs finished either way.
    fn drop_inputs(&mut self, jobs: &[String]) -> Result<(), StoreError>;
    /// Deletes ended jobs past their retention with all their rows and files, in one
    /// transaction. Nothing depends on this being durable: a restart prunes them again.
    fn prune(&mut self, jobs: &[String]) -> Result<(), StoreError>;
    /// Housekeeping once nothing is waiting to be written.
    fn idle(&mut self) -> Result<(), StoreError> {
        Ok(())
    }
    /// Housekeeping after a commit, once its waiters have been told; `large_jobs_running` says
    /// whether a job with large payloads was inserted and has not ended yet (its later commits
    /// are better not delayed).
    fn after_commit(&mut self, _large_jobs_running: bool) -> Result<(), StoreError> {
        Ok(())
    }
    /// Reads everything back.
    fn load(&mut self) -> Result<Snapshot, StoreError>;
}

type Reply<T> = mpsc::SyncSender<Result<T, StoreError>>;

enum Msg {
    /// A batch, and where to tell its tickets if it fails.
    Ops(Vec<Op>, Fate),
    /// Reply once every earlier op is committed.
    Sync(Reply<()>),
    Load(Reply<Snapshot>),
    /// Ended jobs to delete when the writer is idle.
    Prune(Vec<String>),
}

/// A job whose payloads are at least this large counts as large (see `Backend::after_commit`).
const LARGE_JOB_BYTES: usize = 4 << 20;

/// How long the writer must go without writes before it does its housekeeping.
const QUIET: Duration = Duration::from_millis(5);

/// Finished small jobs whose payloads are dropped together, unless writes pause first.
const DROP_INPUTS_BATCH: usize = 64;

/// Most ops folded into one transaction, so a flood of writes still commits now and then.
const MAX_BATCH: usize = 50_000;

/// The coordinator's side of the writer thread.
#[derive(Debug)]
pub(super) struct Writer {
    kind: &'static str,
    queue: mpsc::Sender<Msg>,
    /// The first failure of a write nobody waited for, reported by the next call.
    failed: Arc<Mutex<Option<StoreError>>>,
    buffer: Buffer,
    /// Writes taken out of the buffer ahead of a job insert, and the insert, to go with the next
    /// flush: a new job and the attempts dispatching it starts are committed together.
    staged: Vec<Op>,
    /// Batches handed to the writer thread.
    sent: u64,
    /// The fate of batch `sent`, which tickets taken now wait on.
    fate: Fate,
    /// What the writer thread has written; `done` equals `sent` when nothing is outstanding, so
    /// [`Store::sync`] need not ask.
    progress: watch::Receiver<Progress>,
    /// How long the writer thread's commits take (it observes them).
    commit_seconds: Option<prometheus::Histogram>,
}

fn run<B: Backend>(
    mut backend: B,
    progress: watch::Sender<Progress>,
    incoming: mpsc::Receiver<Msg>,
    failed: Arc<Mutex<Option<StoreError>>>,
    commit_seconds: Option<prometheus::Histogram>,
) {
    let mut ops: Vec<Op> = Vec::new();
    // Where each batch in `ops` ends, and its fate.
    let mut ends: Vec<usize> = Vec::new();
    let mut fates: Vec<Fate> = Vec::new();
    let mut waiting: Vec<Reply<()>> = Vec::new();
    // Finished jobs whose payloads are still to drop, done only while no write is waiting, and
    // whether a large one is among them.
    let mut finished: Vec<String> = Vec::new();
    let mut finished_large = false;
    // Ended jobs to delete, also only while no write is waiting.
    let mut to_prune: Vec<String> = Vec::new();
    // Whether anything was written since the writer was last idle.
    let mut busy = false;
    // Jobs with large payloads inserted and not ended yet.
    let mut large: HashSet<String> = HashSet::new();
    loop {
        let first = match incoming.try_recv() {
            Ok(msg) => msg,
            Err(TryRecvError::Disconnected) => break,
            Err(TryRecvError::Empty) => {
                if finished_large || finished.len() >= DROP_INPUTS_BATCH {
                    drop_inputs(&mut backend, &mut finished);
                    finished_large = false;
                    continue;
                }
                if busy {
                    // Housekeeping waits for a quiet moment, not merely an empty queue.
                    match incoming.recv_timeout(QUIET) {
                        Ok(msg) => msg,
                        Err(RecvTimeoutError::Timeout) => {
                            busy = false;
                            drop_inputs(&mut backend, &mut finished);
                            prune(&mut backend, &mut to_prune);
                            if let Err(e) = backend.idle() {
                                warn!(error = %e, "store housekeeping failed");
                            }
                            continue;
                        }
                        Err(RecvTimeoutError::Disconnected) => break,
                    }
                } else {
                    match incoming.recv() {
                        Ok(msg) => msg,
                        Err(_) => break,
                    }
                }
            }
        };
        let mut next = Some(first);
        let mut load: Option<Reply<Snapshot>> = None;
        while let Some(msg) = next.take() {
            match msg {
                Msg::Ops(batch, fate) => {
                    ops.extend(batch);
                    ends.push(ops.len());
                    fates.push(fate);
                }
                Msg::Sync(reply) => waiting.push(reply),
                // Done at the next quiet moment (every round ends `busy`).
                Msg::Prune(jobs) => to_prune.extend(jobs),
                Msg::Load(reply) => {
                    load = Some(reply);
                    break;
                }
            }
            if ops.len() < MAX_BATCH {
                next = incoming.try_recv().ok();
            }
        }
        let started = std::time::Instant::now();
        let outcomes = write_batches(&mut backend, &ops, &ends);
        if let Some(histogram) = commit_seconds.as_ref().filter(|_| !ops.is_empty()) {
            histogram.observe(started.elapsed().as_secs_f64());
        }
        for (batch, outcome) in batches(&ops, &ends).zip(&outcomes) {
            if outcome.is_ok() {
                for op in batch {
                    match op {
                        Op::Write(Pending::Finish { job, .. }) => {
                            finished_large |= large.remove(&**job);
                            finished.push(job.to_string());
                        }
                        Op::Insert(job)
                            if job.inputs.iter().map(Bytes::len).sum::<usize>()
                                >= LARGE_JOB_BYTES =>
                        {
                            large.insert(job.id.clone());
                        }
                        _ => {}
                    }
                }
            }
        }
        // A failed batch whose loss a restart tolerates: new jobs (their clients are told they
        // were not accepted) and attempt records. Any other lost write (a result, a job's end)
        // would leave the coordinator showing what the store does not hold: it must stop.
        let fatal =
            batches(&ops, &ends)
                .zip(&outcomes)
                .enumerate()
                .find_map(|(k, (lost, outcome))| {
                    let e = outcome.as_ref().err()?;
                    let tolerated = lost.iter().any(|op| matches!(op, Op::Insert(_)))
                        && lost.iter().all(|op| {
                            matches!(op, Op::Insert(_) | Op::Write(Pending::Attempt { .. }))
                        });
                    (!tolerated).then(|| (k as u64, e.clone()))
                });
        ops.clear();
        let written = outcomes
            .iter()
            .find(|o| o.is_err())
            .cloned()
            .unwrap_or(Ok(()));
        // Each failed batch's tickets learn it before the batch counts as done.
        for (fate, outcome) in fates.drain(..).zip(&outcomes) {
            if let Err(e) = outcome {
                let _ = fate.set(e.clone());
            }
        }
        progress.send_modify(|p| {
            if let (None, Some((k, e))) = (&p.fatal, &fatal) {
                p.fatal = Some((p.done + 1 + k, e.clone()));
            }
            p.done += ends.len() as u64;
        });
        ends.clear();
        if let Err(e) = &written {
            error!(error = %e, "store write failed");
        }
        if let Some((_, e)) = fatal {
            let mut slot = failed.lock().unwrap_or_else(|p| p.into_inner());
            if slot.is_none() {
                *slot = Some(e);
            }
        }
        for reply in waiting.drain(..) {
            let _ = reply.send(written.clone());
        }
        if let Some(reply) = load {
            let _ = reply.send(written.and_then(|()| backend.load()));
        }
        busy = true;
        if let Err(e) = backend.after_commit(!large.is_empty()) {
            warn!(error = %e, "store housekeeping failed");
        }
    }
}

/// Runs a writer thread's loop here, over `batches` handed over before it starts (so that it
/// takes them all in one group); returns what it reported, whether a ticket for each batch is
/// durable, and the failure it left for the coordinator.
#[cfg(test)]
pub(super) fn run_batches<B: Backend>(
    backend: B,
    batches: Vec<Vec<Op>>,
) -> (Progress, Vec<bool>, Option<StoreError>) {
    let (queue, incoming) = mpsc::channel();
    let mut fates = Vec::new();
    for batch in batches {
        let fate = Fate::default();
        fates.push(fate.clone());
        queue
            .send(Msg::Ops(batch, fate))
            .expect("the receiver is here");
    }
    drop(queue);
    let (progress_tx, progress) = watch::channel(Progress::default());
    let failed = Arc::new(Mutex::new(None));
    run(
        backend,
        progress_tx,
        incoming,
        failed.clone(),
        super::commit_histogram(),
    );
    let failure = failed.lock().expect("not poisoned").take();
    let reported = progress.borrow().clone();
    let durable = fates
        .into_iter()
        .enumerate()
        .map(|(k, fate)| Ticket::at(k as u64 + 1, progress.clone(), fate).is_durable())
        .collect();
    (reported, durable, failure)
}

/// Writes the batches `ops` holds (each ending where `ends` says) in one transaction; if that
/// fails and there were several, each again in a transaction of its own, so that one write that
/// cannot be made (a job whose payload file cannot be written, say) does not take the others
/// down with it. The outcome of each batch, in order.
fn write_batches<B: Backend>(
    backend: &mut B,
    ops: &[Op],
    ends: &[usize],
) -> Vec<Result<(), StoreError>> {
    let together = if ops.is_empty() {
        Ok(())
    } else {
        backend.write(ops)
    };
    match together {
        Ok(()) => vec![Ok(()); ends.len()],
        Err(e) if ends.len() < 2 => vec![Err(e)],
        Err(e) => {
            warn!(error = %e, batches = ends.len(), "a group of writes failed: writing each batch alone");
            batches(ops, ends)
                .map(|batch| {
                    if batch.is_empty() {
                        Ok(())
                    } else {
                        backend.write(batch)
                    }
                })
                .collect()
        }
    }
}

/// The batches `ops` holds, each ending where `ends` says.
fn batches<'a>(ops: &'a [Op], ends: &'a [usize]) -> impl Iterator<Item = &'a [Op]> + 'a {
    let starts = std::iter::once(0).chain(ends.iter().copied());
    starts.zip(ends).map(move |(start, &end)| &ops[start..end])
}

/// Deletes these ended jobs, if any.
fn prune<B: Backend>(backend: &mut B, jobs: &mut Vec<String>) {
    if jobs.is_empty() {
        return;
    }
    let jobs = std::mem::take(jobs);
    match backend.prune(&jobs) {
        Ok(()) => info!(jobs = jobs.len(), "pruned ended jobs from the store"),
        Err(e) => {
            warn!(jobs = jobs.len(), error = %e, "cannot prune ended jobs: a restart prunes them again")
        }
    }
}

/// Drops the payloads of these finished jobs, if any.
fn drop_inputs<B: Backend>(backend: &mut B, finished: &mut Vec<String>) {
    if finished.is_empty() {
        return;
    }
    let jobs = std::mem::take(finished);
    if let Err(e) = backend.drop_inputs(&jobs) {
        warn!(jobs = jobs.len(), error = %e, "cannot drop finished jobs' inputs");
    }
}

impl Writer {
    /// Starts the writer thread over a backend made on that thread (some clients must be created
    /// off the async runtime); fails if `make` does.
    pub(super) fn start<B: Backend>(
        kind: &'static str,
        make: impl FnOnce() -> Result<B, StoreError> + Send + 'static,
    ) -> Result<Self, StoreError> {
        let (queue, incoming) = mpsc::channel();
        let (ready_tx, ready_rx) = mpsc::sync_channel(1);
        let failed = Arc::new(Mutex::new(None));
        let slot = failed.clone();
        let (progress_tx, progress) = watch::channel(Progress::default());
        let commit_seconds = super::commit_histogram();
        let observed = commit_seconds.clone();
        std::thread::Builder::new()
            .name(format!("muster-{kind}"))
            .spawn(move || match make() {
                Ok(backend) => {
                    let _ = ready_tx.send(Ok(()));
                    run(backend, progress_tx, incoming, slot, observed);
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                }
            })
            .map_err(|e| StoreError::Other(format!("cannot start the {kind} writer: {e}")))?;
        ready_rx
            .recv()
            .map_err(|_| StoreError::Other(format!("the {kind} writer ended")))??;
        Ok(Self {
            kind,
            queue,
            failed,
            buffer: Buffer::default(),
            staged: Vec::new(),
            sent: 0,
            fate: Fate::default(),
            progress,
            commit_seconds,
        })
    }

    fn gone(&self) -> StoreError {
        StoreError::Other(format!("the {} writer ended", self.kind))
    }

    fn send(&self, msg: Msg) -> Result<(), StoreError> {
        self.queue.send(msg).map_err(|_| self.gone())
    }

    /// Hands what is staged and buffered to the writer thread, in one message (one wake-up).
    fn flush_buffer(&mut self) -> Result<(), StoreError> {
        let mut ops = std::mem::take(&mut self.staged);
        ops.extend(self.buffer.take().into_iter().map(Op::Write));
        if ops.is_empty() {
            return Ok(());
        }
        self.send_ops(ops)
    }

    fn send_ops(&mut self, ops: Vec<Op>) -> Result<(), StoreError> {
        self.sent += 1;
        self.fate = Fate::default();
        self.send(Msg::Ops(ops, self.fate.clone()))
    }

    fn ask<T>(&mut self, msg: impl FnOnce(Reply<T>) -> Msg) -> Result<T, StoreError> {
        self.flush_buffer()?;
        let (reply, answer) = mpsc::sync_channel(1);
        self.send(msg(reply))?;
        answer.recv().map_err(|_| self.gone())?
    }
}

impl Store for Writer {
    fn kind(&self) -> &'static str {
        self.kind
    }

    fn commit_seconds(&self) -> Option<prometheus::Histogram> {
        self.commit_seconds.clone()
    }

    fn insert_job(&mut self, job: NewJob<'_>) -> Result<(), StoreError> {
        let insert = InsertJob {
            id: job.id.to_string(),
            meta: rows::encode_meta(job.meta)?,
            created_at: job.created_at.to_rfc3339(),
            inputs: job.inputs.to_vec(),
            idempotency: job.idempotency.map(|(k, d)| (k.to_owned(), d.to_vec())),
        };
        // Writes buffered before the insert stay before it.
        let earlier = self.buffer.take().into_iter().map(Op::Write);
        self.staged.extend(earlier);
        self.staged.push(Op::Insert(insert));
        Ok(())
    }

    fn record_attempt(
        &mut self,
        job: JobId,
        chunk: ChunkIndex,
        record: &AttemptRecord,
    ) -> Result<(), StoreError> {
        self.buffer.attempt(job, chunk, record)
    }

    fn chunk_succeeded(
        &mut self,
        job: JobId,
        chunk: ChunkIndex,
        result: &Bytes,
    ) -> Result<(), StoreError> {
        self.buffer.result(job, chunk, result);
        Ok(())
    }

    fn finish_job(
        &mut self,
        job: JobId,
        end: &JobEnd,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.buffer.finish(job, end, at);
        Ok(())
    }

    fn record_timings(&mut self, timings: &[Timing]) -> Result<(), StoreError> {
        // Writes buffered before stay before.
        let earlier = self.buffer.take().into_iter().map(Op::Write);
        self.staged.extend(earlier);
        self.staged.push(Op::Timings(timings.to_vec()));
        Ok(())
    }

    fn prune(&mut self, jobs: &[JobId]) -> Result<(), StoreError> {
        self.send(Msg::Prune(jobs.iter().map(JobId::to_string).collect()))
    }

    fn flush(&mut self) -> Result<(), StoreError> {
        self.flush_buffer()
    }

    fn sync(&mut self) -> Result<(), StoreError> {
        self.flush_buffer()?;
        let clean = self.failed.lock().map(|f| f.is_none()).unwrap_or(false);
        if clean && self.progress.borrow().done == self.sent {
            // Everything handed over is already committed.
            return Ok(());
        }
        self.ask(Msg::Sync)
    }

    fn ticket(&mut self) -> Result<Ticket, StoreError> {
        self.flush_buffer()?;
        Ok(Ticket::at(
            self.sent,
            self.progress.clone(),
            self.fate.clone(),
        ))
    }

    fn backlog(&self) -> u64 {
        self.sent.saturating_sub(self.progress.borrow().done)
    }

    fn failure(&mut self) -> Option<StoreError> {
        self.failed.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    fn load(&mut self) -> Result<Snapshot, StoreError> {
        self.ask(Msg::Load)
    }
}
