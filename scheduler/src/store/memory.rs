//! The in-memory store: the whole [`Store`] contract, kept in this process only. Nothing survives a
//! restart; it exists for tests and benchmarks, and says so when the coordinator starts.

use std::collections::HashMap;

use bytes::Bytes;
use muster_shared::ids::{ChunkIndex, JobId};

use super::{NewJob, Snapshot, Store, StoreError, StoredEnd, StoredJob};
use crate::state::job::AttemptRecord;

/// Jobs and idempotency keys in hash maps.
#[derive(Debug, Default)]
pub struct MemoryStore {
    unfinished: HashMap<JobId, StoredJob>,
    idempotency: HashMap<String, (JobId, [u8; 32])>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn job(&mut self, id: JobId) -> Result<&mut StoredJob, StoreError> {
        self.unfinished
            .get_mut(&id)
            .ok_or_else(|| StoreError(format!("job {id} is not stored as unfinished")))
    }
}

impl Store for MemoryStore {
    fn kind(&self) -> &'static str {
        "memory"
    }

    fn insert_job(&mut self, job: NewJob<'_>) -> Result<(), StoreError> {
        if let Some((key, digest)) = job.idempotency {
            self.idempotency.insert(key.to_owned(), (job.id, *digest));
        }
        self.unfinished.insert(
            job.id,
            StoredJob {
                id: job.id,
                meta: job.meta.clone(),
                inputs: job.inputs.to_vec(),
                chunks: vec![(Vec::new(), None); job.inputs.len()],
            },
        );
        Ok(())
    }

    fn record_attempt(
        &mut self,
        job: JobId,
        chunk: ChunkIndex,
        record: &AttemptRecord,
    ) -> Result<(), StoreError> {
        let stored = self.job(job)?;
        let attempts = &mut stored.chunks[chunk.get()].0;
        match attempts.iter_mut().find(|a| a.attempt == record.attempt) {
            Some(existing) => *existing = record.clone(),
            None => attempts.push(record.clone()),
        }
        Ok(())
    }

    fn chunk_succeeded(
        &mut self,
        job: JobId,
        chunk: ChunkIndex,
        result: &Bytes,
    ) -> Result<(), StoreError> {
        self.job(job)?.chunks[chunk.get()].1 = Some(result.clone());
        Ok(())
    }

    fn finish_job(&mut self, job: JobId, _end: StoredEnd<'_>) -> Result<(), StoreError> {
        self.unfinished.remove(&job);
        Ok(())
    }

    fn load(&mut self) -> Result<Snapshot, StoreError> {
        Ok(Snapshot {
            unfinished: self.unfinished.values().cloned().collect(),
            idempotency: self
                .idempotency
                .iter()
                .map(|(k, (id, digest))| (k.clone(), *id, *digest))
                .collect(),
        })
    }

    fn flush(&mut self) -> Result<(), StoreError> {
        Ok(())
    }
}
