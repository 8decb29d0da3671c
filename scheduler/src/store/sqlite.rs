//! The embedded default store: SQLite in the data dir, in WAL mode.
//!
//! `synchronous = FULL` makes each commit reach the disk before it returns, so an accepted job
//! survives a power cut as well as a crash; the writer thread's group commit shares that sync among
//! every write queued meanwhile.

use std::path::Path;

use bytes::Bytes;
use rusqlite::{params, Connection, Transaction};

use super::rows::{self, Pending};
use super::writer::{Backend, InsertJob, Op, Writer};
use super::{Snapshot, Store, StoreError, StoredChunk, StoredJob};

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
-- A rowid table: chunk payloads can be large, and WITHOUT ROWID tables keep whole rows in the
-- index b-tree, which makes large rows slow to write.
CREATE TABLE IF NOT EXISTS chunks (
    job_id TEXT NOT NULL,
    idx    INTEGER NOT NULL,
    input  BLOB NOT NULL,
    result BLOB,
    UNIQUE (job_id, idx)
);
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

/// The SQLite database the writer thread owns.
struct Sqlite {
    conn: Connection,
}

/// Opens (creating if needed) the database at `path` and starts its writer thread.
pub fn open(path: &Path) -> Result<Box<dyn Store>, StoreError> {
    let path = path.to_owned();
    Ok(Box::new(Writer::start("sqlite", move || {
        Sqlite::open(&path)
    })?))
}

impl Sqlite {
    fn open(path: &Path) -> Result<Self, StoreError> {
        let conn = Connection::open(path)
            .map_err(|e| StoreError::Other(format!("cannot open {}: {e}", path.display())))?;
        // 16 KiB pages (set when the file is created): chunk payloads can be megabytes, and the
        // default 4 KiB pages made writing them twice as slow; larger pages made the small
        // commits of short jobs slower.
        conn.execute_batch(
            "PRAGMA page_size = 16384; PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA busy_timeout = 5000;",
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
        Ok(Self { conn })
    }
}

fn insert(tx: &Transaction<'_>, job: &InsertJob) -> Result<(), StoreError> {
    tx.prepare_cached("INSERT INTO jobs (id, meta, created_at) VALUES (?1, ?2, ?3)")?
        .execute(params![job.id, job.meta, job.created_at])?;
    let mut chunk =
        tx.prepare_cached("INSERT INTO chunks (job_id, idx, input) VALUES (?1, ?2, ?3)")?;
    for (i, input) in job.inputs.iter().enumerate() {
        chunk.execute(params![job.id, i as u32, &input[..]])?;
    }
    if let Some((key, digest)) = &job.idempotency {
        tx.prepare_cached("INSERT INTO idempotency (key, job_id, digest) VALUES (?1, ?2, ?3)")?
            .execute(params![key, job.id, digest])?;
    }
    Ok(())
}

fn apply(tx: &Transaction<'_>, op: &Pending) -> Result<(), StoreError> {
    match op {
        Pending::Attempt {
            job,
            chunk,
            attempt,
            record,
        } => {
            tx.prepare_cached(
                "INSERT OR REPLACE INTO attempts (job_id, idx, attempt, record) VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![job, chunk, attempt, record])?;
        }
        Pending::Result { job, chunk, result } => {
            tx.prepare_cached("UPDATE chunks SET result = ?3 WHERE job_id = ?1 AND idx = ?2")?
                .execute(params![job, chunk, &result[..]])?;
        }
        Pending::Finish {
            job,
            kind,
            text,
            at,
        } => {
            tx.prepare_cached(
                "UPDATE jobs SET end_kind = ?2, end_text = ?3, finished_at = ?4 WHERE id = ?1",
            )?
            .execute(params![job, kind, text, at])?;
        }
    }
    Ok(())
}

impl Backend for Sqlite {
    fn write(&mut self, ops: &[Op]) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        for op in ops {
            match op {
                Op::Write(pending) => apply(&tx, pending)?,
                Op::Insert(job) => insert(&tx, job)?,
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn drop_inputs(&mut self, job: &str) -> Result<(), StoreError> {
        // Not worth an fsync of its own: the next durable commit carries it to the disk.
        self.conn.execute_batch("PRAGMA synchronous = NORMAL")?;
        // Partial results stay: a succeeded job's result is merged from them on restart.
        let dropped = self
            .conn
            .prepare_cached("UPDATE chunks SET input = x'' WHERE job_id = ?1")
            .and_then(|mut update| update.execute(params![job]));
        self.conn.execute_batch("PRAGMA synchronous = FULL")?;
        dropped?;
        Ok(())
    }

    fn load(&mut self) -> Result<Snapshot, StoreError> {
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
