//! The coordinator's side of the store: it hands the cluster state's writes to the store in
//! order, gives every answer a [`Durable`] to wait on, and decides when a store failure must stop
//! the coordinator.

use muster_shared::ids::JobId;
use tracing::{error, warn};

use crate::error::ApiError;
use crate::records::Write;
use crate::store::{Store, StoreError, Ticket};

/// The store, owned by the coordinator actor.
pub struct Persistence {
    store: Box<dyn Store>,
    /// Why this coordinator must stop: the store refused a write because another coordinator
    /// leads now, or lost one the coordinator has acted on (its memory and the store differ).
    stop: Option<String>,
}

impl Persistence {
    /// Over this store.
    pub fn new(store: Box<dyn Store>) -> Self {
        Self { store, stop: None }
    }

    /// The store's kind.
    pub fn kind(&self) -> &'static str {
        self.store.kind()
    }

    /// The store's commit times, for `/metrics` (a store that commits nothing has none).
    pub fn commit_seconds(&self) -> Option<prometheus::Histogram> {
        self.store.commit_seconds()
    }

    /// Batches of writes handed on and not yet committed.
    pub fn backlog(&self) -> u64 {
        self.store.backlog()
    }

    /// Hands `writes` to the store in order; returns the accepted jobs whose insert the store
    /// refused (their clients are told they were not accepted), with why.
    pub fn apply(&mut self, writes: Vec<Write>) -> Vec<(JobId, StoreError)> {
        let mut refused = Vec::new();
        for write in writes {
            let (written, what) = match &write {
                Write::Insert(job) => match self.store.insert_job(job.as_new()) {
                    Err(e) if !e.is_fenced() => {
                        error!(job_id = %job.id, error = %e, "store insert failed");
                        refused.push((job.id, e));
                        continue;
                    }
                    other => (other, "insert"),
                },
                Write::Attempt { job, chunk, record } => (
                    self.store.record_attempt(*job, *chunk, record),
                    "attempt write",
                ),
                Write::Result { job, chunk, result } => (
                    self.store.chunk_succeeded(*job, *chunk, result),
                    "result write",
                ),
                Write::Finish { job, end, at } => {
                    (self.store.finish_job(*job, end, *at), "job end write")
                }
                Write::Timings(timings) => (self.store.record_timings(timings), "timings write"),
                Write::Prune(jobs) => {
                    if let Err(e) = self.store.prune(jobs) {
                        warn!(error = %e, "cannot prune ended jobs from the store: a restart prunes them again");
                    }
                    continue;
                }
            };
            if let Err(e) = written {
                self.failed(&e, what);
            }
        }
        refused
    }

    /// Hands the writes made so far on to be committed, and notes a failure of earlier ones.
    pub fn flush(&mut self) {
        if let Err(e) = self.store.flush() {
            self.failed(&e, "flush");
        }
        if let Some(e) = self.store.failure() {
            self.failed(&e, "write");
        }
    }

    /// Waits until every write so far is durable (on shutdown and after a restore; answers wait
    /// for a [`Durable`] instead, off the coordinator's thread).
    pub fn sync(&mut self) {
        if let Err(e) = self.store.sync() {
            self.failed(&e, "sync");
        }
    }

    /// What an answer made now waits for: every write so far.
    pub fn durable(&mut self) -> Result<Durable, ApiError> {
        match self.store.ticket() {
            Ok(ticket) => Ok(Durable(ticket)),
            Err(e) => {
                self.failed(&e, "flush");
                Err(ApiError::Unavailable(format!(
                    "the store is unavailable: {e}"
                )))
            }
        }
    }

    /// The reason this coordinator must stop, if the store said another one leads now or lost a
    /// write.
    pub fn take_stop(&mut self) -> Option<String> {
        self.stop.take()
    }

    /// Logs a store failure and remembers that this coordinator must stop: another one leads
    /// now, or a write was lost (a restart resumes from what is stored, rather than this
    /// coordinator going on from what is not).
    fn failed(&mut self, e: &StoreError, what: &str) {
        error!(error = %e, "store {what} failed");
        self.stop.get_or_insert_with(|| {
            if e.is_fenced() {
                e.to_string()
            } else {
                format!("a store {what} failed ({e}): stopping, so that a restart resumes from what is stored")
            }
        });
    }
}

/// What an answer waits for before it is sent: every write made before it was taken is durable
/// (a client sees nothing a crash could undo).
#[derive(Debug, Clone)]
pub struct Durable(Ticket);

impl Durable {
    /// Resolves once the writes are durable; fails with the answer the client gets when they are
    /// not.
    pub async fn wait(self) -> Result<(), ApiError> {
        if self.0.is_durable() {
            return Ok(());
        }
        self.0.durable().await.map_err(|e| {
            if e.is_fenced() {
                ApiError::NotLeader { location: None }
            } else {
                ApiError::Unavailable(format!("the store did not confirm the write: {e}"))
            }
        })
    }
}
