//! The in-memory store: the whole [`Store`] contract, kept in this process only. Nothing survives a
//! restart; it exists for tests and benchmarks, and says so when the coordinator starts.

use std::collections::{BTreeMap, HashMap};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use muster_shared::ids::{ChunkIndex, JobId};

use super::{JobEnd, NewJob, Snapshot, Store, StoreError, StoredChunk, StoredJob, Ticket, Timing};
use crate::records::AttemptRecord;

/// Jobs and idempotency keys in maps.
#[derive(Debug, Default)]
pub struct MemoryStore {
    jobs: BTreeMap<JobId, StoredJob>,
    idempotency: HashMap<String, (JobId, [u8; 32])>,
    timings: BTreeMap<(String, String), u64>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn chunk(&mut self, id: JobId, chunk: ChunkIndex) -> Result<&mut StoredChunk, StoreError> {
        self.jobs
            .get_mut(&id)
            .and_then(|j| j.chunks.get_mut(chunk.get()))
            .ok_or_else(|| StoreError::Other(format!("no stored chunk {chunk} of job {id}")))
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
        let chunks = job
            .inputs
            .iter()
            .map(|input| StoredChunk {
                input: input.clone(),
                result: None,
                attempts: Vec::new(),
            })
            .collect();
        self.jobs.insert(
            job.id,
            StoredJob {
                id: job.id,
                meta: job.meta.clone(),
                created_at: job.created_at,
                end: None,
                chunks,
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
        let attempts = &mut self.chunk(job, chunk)?.attempts;
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
        self.chunk(job, chunk)?.result = Some(result.clone());
        Ok(())
    }

    fn finish_job(
        &mut self,
        job: JobId,
        end: &JobEnd,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        if let Some(stored) = self.jobs.get_mut(&job) {
            stored.end = Some((end.clone(), at));
            for chunk in &mut stored.chunks {
                chunk.input = Bytes::new();
            }
        }
        Ok(())
    }

    fn record_timings(&mut self, timings: &[Timing]) -> Result<(), StoreError> {
        for t in timings {
            self.timings.insert((t.key.clone(), t.item.clone()), t.ms);
        }
        Ok(())
    }

    fn prune(&mut self, jobs: &[JobId]) -> Result<(), StoreError> {
        for id in jobs {
            self.jobs.remove(id);
        }
        let gone: std::collections::HashSet<&JobId> = jobs.iter().collect();
        self.idempotency.retain(|_, (id, _)| !gone.contains(id));
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StoreError> {
        Ok(())
    }

    fn sync(&mut self) -> Result<(), StoreError> {
        Ok(())
    }

    fn ticket(&mut self) -> Result<Ticket, StoreError> {
        Ok(Ticket::now())
    }

    fn failure(&mut self) -> Option<StoreError> {
        None
    }

    fn load(&mut self) -> Result<Snapshot, StoreError> {
        Ok(Snapshot {
            jobs: self.jobs.values().cloned().collect(),
            idempotency: self
                .idempotency
                .iter()
                .map(|(k, (id, digest))| (k.clone(), *id, *digest))
                .collect(),
            timings: self
                .timings
                .iter()
                .map(|((key, item), ms)| Timing {
                    key: key.clone(),
                    item: item.clone(),
                    ms: *ms,
                })
                .collect(),
        })
    }
}
