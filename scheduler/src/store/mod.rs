//! The coordinator's durable state, behind one trait.
//!
//! The coordinator writes every fact it would need to resume after a restart: the accepted job with
//! its chunk payloads and idempotency key (durable before `POST /v1/jobs` answers), each attempt's
//! start and end, each succeeded chunk's partial result, and the job's end. Writes are queued and
//! group-committed by a writer thread (see `writer`), so the coordinator never waits for a disk.
//! Whatever it tells a client comes with a [`Ticket`] taken when the answer was made (handed to the
//! request handler as an opaque `Durable`), and the answer waits for it: whatever a client has
//! seen is durable.
//! [`Store::load`] gives everything back, so a restarted coordinator re-queues only chunks that had
//! not succeeded.

mod memory;
mod payload_files;
mod pg_tls;
mod postgres;
mod rows;
mod sqlite;
mod writer;

pub use memory::MemoryStore;
pub use pg_tls::connect_async as postgres_connect_async;
pub use postgres::{
    connect as postgres_connect, open as open_postgres, redact as redact_url,
    setup_sql as postgres_setup_sql,
};
pub use sqlite::open as open_sqlite;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use muster_shared::ids::{ChunkIndex, JobId};

use crate::records::AttemptRecord;
pub use crate::records::{JobEnd, NewJob, Snapshot, StoredChunk, StoredJob, Timing};

/// A store operation that failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// Another coordinator took over: this one must stop writing (and serving) at once.
    #[error("lost leadership: the store is now led by epoch {current}, this coordinator held epoch {held}")]
    Fenced {
        /// The epoch this coordinator led with.
        held: i64,
        /// The epoch in the store.
        current: i64,
    },
    /// Anything else (I/O, constraint, unreadable data).
    #[error("store error: {0}")]
    Other(String),
}

/// What the writer thread has committed so far.
#[derive(Debug, Clone, Default)]
pub struct Progress {
    /// Batches written (or failed).
    pub done: u64,
    /// The first batch whose loss the coordinator cannot survive (a result, a job's end), and
    /// why: no ticket from it on is durable, and the coordinator stops.
    pub fatal: Option<(u64, StoreError)>,
}

/// The fate of one batch of writes: set, before the batch counts as done, when its transaction
/// failed. Every ticket taken for the batch holds it, so each learns its own batch's outcome
/// exactly, however many other batches failed meanwhile; it is freed with the last ticket.
pub type Fate = std::sync::Arc<std::sync::OnceLock<StoreError>>;

/// A point in the order of writes: durable once every write made before it was taken is.
#[derive(Debug, Clone)]
pub struct Ticket {
    batch: u64,
    wait: Option<(tokio::sync::watch::Receiver<Progress>, Fate)>,
}

impl Ticket {
    /// A ticket that is durable at once (a store with nothing to wait for).
    pub fn now() -> Self {
        Self {
            batch: 0,
            wait: None,
        }
    }

    /// A ticket for everything up to batch `batch`, whose fate is `fate`, of a writer reporting
    /// on `progress`.
    pub fn at(batch: u64, progress: tokio::sync::watch::Receiver<Progress>, fate: Fate) -> Self {
        Self {
            batch,
            wait: Some((progress, fate)),
        }
    }

    /// True when the ticket is durable already (no need to wait).
    pub fn is_durable(&self) -> bool {
        self.wait.as_ref().is_none_or(|(p, fate)| {
            let p = p.borrow();
            p.done >= self.batch && Self::hit(&p, fate, self.batch).is_none()
        })
    }

    /// Why the transaction holding `batch` failed, if it did, or why no write from an earlier
    /// one on can be trusted.
    fn hit<'a>(p: &'a Progress, fate: &'a Fate, batch: u64) -> Option<&'a StoreError> {
        fate.get().or(p
            .fatal
            .as_ref()
            .filter(|(b, _)| *b <= batch)
            .map(|(_, e)| e))
    }

    /// Waits until the writes before the ticket are durable; fails when their transaction failed.
    pub async fn durable(self) -> Result<(), StoreError> {
        let Some((mut progress, fate)) = self.wait else {
            return Ok(());
        };
        let batch = self.batch;
        let p = progress
            .wait_for(|p| p.done >= batch)
            .await
            .map_err(|_| StoreError::Other("the store writer ended".into()))?;
        match Self::hit(&p, &fate, batch) {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }
}

impl StoreError {
    /// True when another coordinator leads now.
    pub fn is_fenced(&self) -> bool {
        matches!(self, StoreError::Fenced { .. })
    }
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Other(e.to_string())
    }
}

impl From<::postgres::Error> for StoreError {
    fn from(e: ::postgres::Error) -> Self {
        // `postgres::Error` is the asynchronous client's error.
        match e.as_db_error() {
            Some(db) => {
                StoreError::Other(format!("postgres: {}: {}", db.code().code(), db.message()))
            }
            None => {
                // The cause chain says why (a TLS handshake's certificate, a refused connection).
                let mut text = format!("postgres: {e}");
                let mut source = std::error::Error::source(&e);
                while let Some(cause) = source {
                    text.push_str(&format!(": {cause}"));
                    source = cause.source();
                }
                StoreError::Other(text)
            }
        }
    }
}

/// Where coordinator state lives. Calls are synchronous and made by the coordinator actor only.
pub trait Store: Send {
    /// A short name for logs (`memory`, `sqlite`).
    fn kind(&self) -> &'static str;
    /// Records an accepted job (queued, after every earlier write).
    fn insert_job(&mut self, job: NewJob<'_>) -> Result<(), StoreError>;
    /// Records an attempt's start or end (queued; the record carries both times and the error).
    fn record_attempt(
        &mut self,
        job: JobId,
        chunk: ChunkIndex,
        record: &AttemptRecord,
    ) -> Result<(), StoreError>;
    /// Records a chunk's partial result (queued).
    fn chunk_succeeded(
        &mut self,
        job: JobId,
        chunk: ChunkIndex,
        result: &Bytes,
    ) -> Result<(), StoreError>;
    /// Records a job's end (queued); its chunk payloads and partial results may then be dropped.
    fn finish_job(&mut self, job: JobId, end: &JobEnd, at: DateTime<Utc>)
        -> Result<(), StoreError>;
    /// Deletes ended jobs past their retention, with every row and file of theirs (queued, done
    /// when the writer is idle; a restart before it prunes them again).
    fn prune(&mut self, jobs: &[JobId]) -> Result<(), StoreError>;
    /// Records items' durations, overwriting earlier ones (queued).
    fn record_timings(&mut self, timings: &[Timing]) -> Result<(), StoreError>;
    /// Hands queued writes on to be committed, without waiting.
    fn flush(&mut self) -> Result<(), StoreError>;
    /// Waits until every earlier write is durable.
    fn sync(&mut self) -> Result<(), StoreError>;
    /// Hands queued writes on and returns a ticket that is durable once they all are.
    fn ticket(&mut self) -> Result<Ticket, StoreError>;
    /// A failure of a queued write since the last call, if any (never blocks).
    fn failure(&mut self) -> Option<StoreError>;
    /// Batches handed on and not yet committed (0 for a store that commits nothing).
    fn backlog(&self) -> u64 {
        0
    }
    /// Reads back everything needed to resume.
    fn load(&mut self) -> Result<Snapshot, StoreError>;
    /// How long each commit took (writes and sync), for `/metrics`; `None` for a store that
    /// commits nothing.
    fn commit_seconds(&self) -> Option<prometheus::Histogram> {
        None
    }
}

/// The histogram of a writer's commits: from 50 µs (a sync on a fast disk) to 10 s (`None` only
/// if the metrics library refused these fixed options).
fn commit_histogram() -> Option<prometheus::Histogram> {
    let opts = prometheus::HistogramOpts::new(
        "muster_store_commit_seconds",
        "Seconds each commit of the store's writer took, writes and sync",
    )
    .buckets(vec![
        0.000_05, 0.000_1, 0.000_2, 0.000_5, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5,
        1.0, 2.0, 5.0, 10.0,
    ]);
    prometheus::Histogram::with_opts(opts).ok()
}

/// Gives `path` the mode `mode` if its group or others have any access to it.
fn make_private(path: &std::path::Path, mode: u32) -> Result<(), StoreError> {
    use std::os::unix::fs::PermissionsExt;
    let now = std::fs::metadata(path)
        .map_err(|e| io_error("read", path, e))?
        .permissions()
        .mode();
    if now & 0o077 != 0 {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .map_err(|e| io_error("make private", path, e))?;
    }
    Ok(())
}

/// A file system error on `path`, saying what was being done.
fn io_error(what: &str, path: &std::path::Path, e: std::io::Error) -> StoreError {
    StoreError::Other(format!("cannot {what} {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lost_write_fails_its_own_ticket_and_a_fatal_one_every_later_ticket() {
        let lost = StoreError::Other("disk full".into());
        let fates: Vec<Fate> = (0..9).map(|_| Fate::default()).collect();
        let _ = fates[2].set(lost.clone());
        let (tx, rx) = tokio::sync::watch::channel(Progress {
            done: 9,
            fatal: Some((6, lost)),
        });
        let durable: Vec<bool> = (1..=9)
            .map(|batch| {
                Ticket::at(batch, rx.clone(), fates[batch as usize - 1].clone()).is_durable()
            })
            .collect();
        assert_eq!(
            durable,
            [true, true, false, true, true, false, false, false, false]
        );
        drop(tx);
    }
}
