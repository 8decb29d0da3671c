//! The embedded default store: SQLite in the data dir, in WAL mode.
//!
//! A job insert commits at once (with whatever was buffered before it, to keep order); attempt
//! records, partial results and job ends are buffered and written in one transaction when the
//! coordinator calls [`Store::commit`] after each message it handles, so a frame full of outcomes
//! costs one transaction. `synchronous = FULL` makes each commit reach the disk before it returns,
//! so an accepted job survives a power cut as well as a crash; group commit keeps that to one sync
//! per batch rather than one per chunk.

use std::path::Path;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use muster_shared::ids::{ChunkIndex, JobId};
use rusqlite::{params, Connection, Transaction};

use super::rows::{self, Buffer, Pending};
use super::{JobEnd, NewJob, Snapshot, Store, StoreError, StoredChunk, StoredJob};
use crate::state::job::AttemptRecord;

/// Schema version written to `PRAGMA user_version`.
const SCHEMA_VERSION: i64 = 1;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS jobs (
    id          TEXT PRIMARY KEY,
    meta        TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    end_kind    TEXT,
    end_text    TEXT,
    finished_at TEXT
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS chunks (
    job_id TEXT NOT NULL,
    idx    INTEGER NOT NULL,
    input  BLOB NOT NULL,
    result BLOB,
    PRIMARY KEY (job_id, idx)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS attempts (
    job_id  TEXT NOT NULL,
    idx     INTEGER NOT NULL,
    attempt INTEGER NOT NULL,
    record  TEXT NOT NULL,
    PRIMARY KEY (job_id, idx, attempt)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS idempotency (
    key    TEXT PRIMARY KEY,
    job_id TEXT NOT NULL,
    digest BLOB NOT NULL
) WITHOUT ROWID;
";

/// SQLite-backed [`Store`].
#[derive(Debug)]
pub struct SqliteStore {
    conn: Connection,
    pending: Buffer,
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let conn = Connection::open(path)
            .map_err(|e| StoreError::Other(format!("cannot open {}: {e}", path.display())))?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA busy_timeout = 5000;",
        )?;
        let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if version > SCHEMA_VERSION {
            return Err(StoreError::Other(format!(
                "{} has schema version {version}, newer than this muster ({SCHEMA_VERSION})",
                path.display()
            )));
        }
        conn.execute_batch(SCHEMA)?;
        conn.execute_batch(&format!("PRAGMA user_version = {SCHEMA_VERSION}"))?;
        Ok(Self {
            conn,
            pending: Buffer::default(),
        })
    }

    fn write_pending(tx: &Transaction<'_>, pending: &[Pending]) -> Result<(), StoreError> {
        let mut attempt = tx.prepare_cached(
            "INSERT OR REPLACE INTO attempts (job_id, idx, attempt, record) VALUES (?1, ?2, ?3, ?4)",
        )?;
        let mut result =
            tx.prepare_cached("UPDATE chunks SET result = ?3 WHERE job_id = ?1 AND idx = ?2")?;
        let mut finish = tx.prepare_cached(
            "UPDATE jobs SET end_kind = ?2, end_text = ?3, finished_at = ?4 WHERE id = ?1",
        )?;
        // A succeeded chunk keeps an empty result as the mark that it succeeded.
        let mut drop_data = tx.prepare_cached(
            "UPDATE chunks SET input = x'', result = CASE WHEN result IS NULL THEN NULL ELSE x'' END \
             WHERE job_id = ?1",
        )?;
        for op in pending {
            match op {
                Pending::Attempt {
                    job,
                    chunk,
                    attempt: n,
                    record,
                } => {
                    attempt.execute(params![job, chunk, n, record])?;
                }
                Pending::Result {
                    job,
                    chunk,
                    result: bytes,
                } => {
                    result.execute(params![job, chunk, &bytes[..]])?;
                }
                Pending::Finish {
                    job,
                    kind,
                    text,
                    at,
                } => {
                    finish.execute(params![job, kind, text, at])?;
                    drop_data.execute(params![job])?;
                }
            }
        }
        Ok(())
    }
}

impl Store for SqliteStore {
    fn kind(&self) -> &'static str {
        "sqlite"
    }

    fn insert_job(&mut self, job: NewJob<'_>) -> Result<(), StoreError> {
        let meta = rows::encode_meta(job.meta)?;
        let id = job.id.to_string();
        let pending = self.pending.take();
        let tx = self.conn.transaction()?;
        Self::write_pending(&tx, &pending)?;
        tx.execute(
            "INSERT INTO jobs (id, meta, created_at) VALUES (?1, ?2, ?3)",
            params![id, meta, job.created_at.to_rfc3339()],
        )?;
        {
            let mut chunk =
                tx.prepare_cached("INSERT INTO chunks (job_id, idx, input) VALUES (?1, ?2, ?3)")?;
            for (i, input) in job.inputs.iter().enumerate() {
                chunk.execute(params![id, i as u32, &input[..]])?;
            }
        }
        if let Some((key, digest)) = job.idempotency {
            tx.execute(
                "INSERT INTO idempotency (key, job_id, digest) VALUES (?1, ?2, ?3)",
                params![key, id, &digest[..]],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    fn record_attempt(
        &mut self,
        job: JobId,
        chunk: ChunkIndex,
        record: &AttemptRecord,
    ) -> Result<(), StoreError> {
        self.pending.attempt(job, chunk, record)
    }

    fn chunk_succeeded(
        &mut self,
        job: JobId,
        chunk: ChunkIndex,
        result: &Bytes,
    ) -> Result<(), StoreError> {
        self.pending.result(job, chunk, result);
        Ok(())
    }

    fn finish_job(
        &mut self,
        job: JobId,
        end: &JobEnd,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.pending.finish(job, end, at);
        Ok(())
    }

    fn commit(&mut self) -> Result<(), StoreError> {
        let pending = self.pending.take();
        if pending.is_empty() {
            return Ok(());
        }
        let tx = self.conn.transaction()?;
        Self::write_pending(&tx, &pending)?;
        tx.commit()?;
        Ok(())
    }

    fn load(&mut self) -> Result<Snapshot, StoreError> {
        self.commit()?;
        let mut snapshot = Snapshot::default();
        let mut jobs = self.conn.prepare(
            "SELECT id, meta, created_at, end_kind, end_text, finished_at FROM jobs ORDER BY id",
        )?;
        let mut chunks = self
            .conn
            .prepare("SELECT input, result FROM chunks WHERE job_id = ?1 ORDER BY idx")?;
        let mut attempts = self
            .conn
            .prepare("SELECT idx, record FROM attempts WHERE job_id = ?1 ORDER BY idx, attempt")?;
        let job_rows = jobs.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, Option<String>>(3)?,
                r.get::<_, Option<String>>(4)?,
                r.get::<_, Option<String>>(5)?,
            ))
        })?;
        for row in job_rows {
            let (id, meta, created_at, end_kind, end_text, finished_at) = row?;
            let mut stored: Vec<StoredChunk> = chunks
                .query_map(params![id], |r| {
                    Ok(StoredChunk {
                        input: Bytes::from(r.get::<_, Vec<u8>>(0)?),
                        result: r.get::<_, Option<Vec<u8>>>(1)?.map(Bytes::from),
                        attempts: Vec::new(),
                    })
                })?
                .collect::<Result<_, _>>()?;
            let records = attempts.query_map(params![id], |r| {
                Ok((r.get::<_, u32>(0)?, r.get::<_, String>(1)?))
            })?;
            for record in records {
                let (idx, record) = record?;
                if let Some(chunk) = stored.get_mut(idx as usize) {
                    chunk.attempts.push(rows::attempt(&record)?);
                }
            }
            snapshot.jobs.push(StoredJob {
                id: rows::job_id(&id)?,
                meta: rows::meta(&meta)?,
                created_at: rows::time(&created_at)?,
                end: rows::end(end_kind, end_text, finished_at)?,
                chunks: stored,
            });
        }
        let mut keys = self
            .conn
            .prepare("SELECT key, job_id, digest FROM idempotency")?;
        let key_rows = keys.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, Vec<u8>>(2)?,
            ))
        })?;
        for row in key_rows {
            let (key, job, digest) = row?;
            snapshot
                .idempotency
                .push((key, rows::job_id(&job)?, rows::digest(digest)?));
        }
        Ok(snapshot)
    }
}
