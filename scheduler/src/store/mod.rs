//! The coordinator's durable state, behind one trait.
//!
//! The coordinator writes every fact it would need to resume after a restart: the accepted job with
//! its chunk payloads and idempotency key (before `POST /v1/jobs` answers), each attempt's start and
//! end, each succeeded chunk's partial result, and the job's terminal state. [`Store::load`] gives
//! back everything that is not finished, so a restarted coordinator re-queues only what had not
//! succeeded.

mod memory;

pub use memory::MemoryStore;

use bytes::Bytes;
use muster_shared::ids::{ChunkIndex, JobId};

use crate::state::job::{AttemptRecord, JobMeta};

/// A store operation that failed.
#[derive(Debug, thiserror::Error)]
#[error("store error: {0}")]
pub struct StoreError(pub String);

/// A job as first written: enough to rebuild it from scratch.
#[derive(Debug, Clone)]
pub struct NewJob<'a> {
    /// Its id.
    pub id: JobId,
    /// What it runs.
    pub meta: &'a JobMeta,
    /// Chunk payloads, in order.
    pub inputs: &'a [Bytes],
    /// Idempotency key and the digest of the body it came with.
    pub idempotency: Option<(&'a str, &'a [u8; 32])>,
}

/// How a job ended, as stored.
#[derive(Debug, Clone)]
pub enum StoredEnd<'a> {
    /// With this result (JSON).
    Succeeded(&'a str),
    /// With this error.
    Failed(&'a str),
    /// Cancelled by a client.
    Cancelled,
}

/// A job read back by [`Store::load`].
#[derive(Debug, Clone)]
pub struct StoredJob {
    /// Its id.
    pub id: JobId,
    /// What it runs.
    pub meta: JobMeta,
    /// Chunk payloads.
    pub inputs: Vec<Bytes>,
    /// Per chunk: the attempts so far and the result if it succeeded.
    pub chunks: Vec<(Vec<AttemptRecord>, Option<Bytes>)>,
}

/// Everything a coordinator needs to resume.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Jobs not yet finished.
    pub unfinished: Vec<StoredJob>,
    /// Idempotency keys with the job and body digest they map to.
    pub idempotency: Vec<(String, JobId, [u8; 32])>,
}

/// Where coordinator state lives. Calls are synchronous and made by the coordinator actor only.
pub trait Store: Send {
    /// A short name for logs and health (`memory`, `sqlite`, `postgres`).
    fn kind(&self) -> &'static str;
    /// Records an accepted job; must be durable when it returns.
    fn insert_job(&mut self, job: NewJob<'_>) -> Result<(), StoreError>;
    /// Records an attempt's start or end (the record carries both times and the error).
    fn record_attempt(
        &mut self,
        job: JobId,
        chunk: ChunkIndex,
        record: &AttemptRecord,
    ) -> Result<(), StoreError>;
    /// Records a chunk's partial result.
    fn chunk_succeeded(
        &mut self,
        job: JobId,
        chunk: ChunkIndex,
        result: &Bytes,
    ) -> Result<(), StoreError>;
    /// Records a job's terminal state; its chunk payloads and partials may then be dropped.
    fn finish_job(&mut self, job: JobId, end: StoredEnd<'_>) -> Result<(), StoreError>;
    /// Reads back everything needed to resume.
    fn load(&mut self) -> Result<Snapshot, StoreError>;
    /// Makes every write so far durable (on shutdown).
    fn flush(&mut self) -> Result<(), StoreError>;
}
