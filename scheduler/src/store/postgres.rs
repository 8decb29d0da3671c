//! The scale-out store: PostgreSQL shared by several coordinators, one of which leads.
//!
//! Every write transaction first reads the leadership row `FOR SHARE` and checks that it still holds
//! the epoch it was elected with ([`crate::leader`]); a deposed leader that wakes up therefore fails
//! its first write with [`StoreError::Fenced`] and stops, and a takeover (which updates that row)
//! waits for an in-flight write to finish instead of interleaving with it.
//!
//! The `postgres` client blocks, and the coordinator runs on an async runtime, so the connection
//! lives on a thread of its own; calls are closures sent to it with a reply channel.

use std::sync::mpsc;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use muster_shared::ids::{ChunkIndex, JobId};
use postgres::{Client, NoTls, Transaction};

use super::rows::{self, Buffer, Pending};
use super::{JobEnd, NewJob, Snapshot, Store, StoreError, StoredChunk, StoredJob};
use crate::state::job::AttemptRecord;

/// Tables shared by the store and the leader lease.
pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS muster_leader (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    holder     TEXT NOT NULL,
    address    TEXT NOT NULL,
    epoch      BIGINT NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL
);
INSERT INTO muster_leader VALUES (1, '', '', 0, 'epoch') ON CONFLICT (id) DO NOTHING;
CREATE TABLE IF NOT EXISTS muster_jobs (
    id          TEXT PRIMARY KEY,
    meta        TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    end_kind    TEXT,
    end_text    TEXT,
    finished_at TEXT
);
CREATE TABLE IF NOT EXISTS muster_chunks (
    job_id TEXT NOT NULL,
    idx    INTEGER NOT NULL,
    input  BYTEA NOT NULL,
    result BYTEA,
    PRIMARY KEY (job_id, idx)
);
CREATE TABLE IF NOT EXISTS muster_attempts (
    job_id  TEXT NOT NULL,
    idx     INTEGER NOT NULL,
    attempt INTEGER NOT NULL,
    record  TEXT NOT NULL,
    PRIMARY KEY (job_id, idx, attempt)
);
CREATE TABLE IF NOT EXISTS muster_idempotency (
    key    TEXT PRIMARY KEY,
    job_id TEXT NOT NULL,
    digest BYTEA NOT NULL
);
";

/// Connects and creates the tables if needed. A session that stops mid-transaction (a frozen
/// process) is ended by the server, so it cannot hold the leadership row and block a takeover.
pub fn connect(url: &str) -> Result<Client, StoreError> {
    let mut client = Client::connect(url, NoTls)
        .map_err(|e| StoreError::Other(format!("cannot connect to {}: {e}", redact(url))))?;
    client.batch_execute("SET idle_in_transaction_session_timeout = '2s'")?;
    // Concurrent `CREATE TABLE IF NOT EXISTS` can race on the catalog; one lock serializes it.
    let mut tx = client.transaction()?;
    tx.batch_execute("SELECT pg_advisory_xact_lock(7070)")?;
    tx.batch_execute(SCHEMA)?;
    tx.commit()?;
    Ok(client)
}

/// The URL without a password, for messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}{user}@{}", &url[..scheme + 3], &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

type Request = Box<dyn FnOnce(&mut Client) + Send>;

/// PostgreSQL-backed [`Store`], fenced by the leadership epoch.
#[derive(Debug)]
pub struct PostgresStore {
    requests: mpsc::Sender<Request>,
    pending: Buffer,
    epoch: i64,
}

/// Opens a transaction that holds the leadership row and checks this coordinator still leads.
fn fenced(client: &mut Client, held: i64) -> Result<Transaction<'_>, StoreError> {
    let mut tx = client.transaction()?;
    let current: i64 = tx
        .query_one(
            "SELECT epoch FROM muster_leader WHERE id = 1 FOR SHARE",
            &[],
        )?
        .get(0);
    if current != held {
        return Err(StoreError::Fenced { held, current });
    }
    Ok(tx)
}

fn write_pending(tx: &mut Transaction<'_>, pending: &[Pending]) -> Result<(), StoreError> {
    let attempt = tx.prepare(
        "INSERT INTO muster_attempts (job_id, idx, attempt, record) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (job_id, idx, attempt) DO UPDATE SET record = EXCLUDED.record",
    )?;
    let result =
        tx.prepare("UPDATE muster_chunks SET result = $3 WHERE job_id = $1 AND idx = $2")?;
    let finish = tx.prepare(
        "UPDATE muster_jobs SET end_kind = $2, end_text = $3, finished_at = $4 WHERE id = $1",
    )?;
    // A succeeded chunk keeps an empty result as the mark that it succeeded.
    let drop_data = tx.prepare(
        "UPDATE muster_chunks SET input = ''::bytea, result = CASE WHEN result IS NULL THEN NULL ELSE ''::bytea END \
         WHERE job_id = $1",
    )?;
    for op in pending {
        match op {
            Pending::Attempt {
                job,
                chunk,
                attempt: n,
                record,
            } => {
                tx.execute(&attempt, &[job, &(*chunk as i32), &(*n as i32), record])?;
            }
            Pending::Result {
                job,
                chunk,
                result: bytes,
            } => {
                tx.execute(&result, &[job, &(*chunk as i32), &&bytes[..]])?;
            }
            Pending::Finish {
                job,
                kind,
                text,
                at,
            } => {
                tx.execute(&finish, &[job, kind, text, at])?;
                tx.execute(&drop_data, &[job])?;
            }
        }
    }
    Ok(())
}

impl PostgresStore {
    /// Connects for a coordinator that leads with `epoch`.
    pub fn connect(url: &str, epoch: i64) -> Result<Self, StoreError> {
        let (requests, incoming) = mpsc::channel::<Request>();
        let (ready_tx, ready_rx) = mpsc::channel();
        let url = url.to_owned();
        std::thread::Builder::new()
            .name("muster-postgres".into())
            .spawn(move || match connect(&url) {
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                }
                Ok(mut client) => {
                    let _ = ready_tx.send(Ok(()));
                    for request in incoming {
                        request(&mut client);
                    }
                }
            })
            .map_err(|e| StoreError::Other(format!("cannot start the postgres thread: {e}")))?;
        ready_rx
            .recv()
            .map_err(|_| StoreError::Other("the postgres thread ended".into()))??;
        Ok(Self {
            requests,
            pending: Buffer::default(),
            epoch,
        })
    }

    /// Runs `f` on the connection thread and waits for its answer.
    fn call<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Client) -> Result<R, StoreError> + Send + 'static,
    ) -> Result<R, StoreError> {
        let (reply_tx, reply_rx) = mpsc::sync_channel(1);
        self.requests
            .send(Box::new(move |client| {
                let _ = reply_tx.send(f(client));
            }))
            .map_err(|_| StoreError::Other("the postgres thread ended".into()))?;
        reply_rx
            .recv()
            .map_err(|_| StoreError::Other("the postgres thread ended".into()))?
    }
}

impl Store for PostgresStore {
    fn kind(&self) -> &'static str {
        "postgres"
    }

    fn insert_job(&mut self, job: NewJob<'_>) -> Result<(), StoreError> {
        let meta = rows::encode_meta(job.meta)?;
        let id = job.id.to_string();
        let created = job.created_at.to_rfc3339();
        let inputs = job.inputs.to_vec();
        let key = job.idempotency.map(|(k, d)| (k.to_owned(), d.to_vec()));
        let pending = self.pending.take();
        let epoch = self.epoch;
        self.call(move |client| {
            let mut tx = fenced(client, epoch)?;
            write_pending(&mut tx, &pending)?;
            tx.execute(
                "INSERT INTO muster_jobs (id, meta, created_at) VALUES ($1, $2, $3)",
                &[&id, &meta, &created],
            )?;
            let insert =
                tx.prepare("INSERT INTO muster_chunks (job_id, idx, input) VALUES ($1, $2, $3)")?;
            for (i, input) in inputs.iter().enumerate() {
                tx.execute(&insert, &[&id, &(i as i32), &&input[..]])?;
            }
            if let Some((key, digest)) = &key {
                tx.execute(
                    "INSERT INTO muster_idempotency (key, job_id, digest) VALUES ($1, $2, $3)",
                    &[key, &id, digest],
                )?;
            }
            tx.commit()?;
            Ok(())
        })
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
        let epoch = self.epoch;
        self.call(move |client| {
            let mut tx = fenced(client, epoch)?;
            write_pending(&mut tx, &pending)?;
            tx.commit()?;
            Ok(())
        })
    }

    fn load(&mut self) -> Result<Snapshot, StoreError> {
        self.commit()?;
        let epoch = self.epoch;
        self.call(move |client| {
            let mut tx = fenced(client, epoch)?;
            let mut snapshot = Snapshot::default();
            let jobs = tx.query(
                "SELECT id, meta, created_at, end_kind, end_text, finished_at FROM muster_jobs ORDER BY id",
                &[],
            )?;
            let chunks = tx.prepare("SELECT input, result FROM muster_chunks WHERE job_id = $1 ORDER BY idx")?;
            let attempts = tx.prepare(
                "SELECT idx, record FROM muster_attempts WHERE job_id = $1 ORDER BY idx, attempt",
            )?;
            for row in jobs {
                let id: String = row.get(0);
                let mut stored: Vec<StoredChunk> = tx
                    .query(&chunks, &[&id])?
                    .into_iter()
                    .map(|c| StoredChunk {
                        input: Bytes::from(c.get::<_, Vec<u8>>(0)),
                        result: c.get::<_, Option<Vec<u8>>>(1).map(Bytes::from),
                        attempts: Vec::new(),
                    })
                    .collect();
                for a in tx.query(&attempts, &[&id])? {
                    let idx: i32 = a.get(0);
                    let record: String = a.get(1);
                    if let Some(chunk) = stored.get_mut(idx as usize) {
                        chunk.attempts.push(rows::attempt(&record)?);
                    }
                }
                snapshot.jobs.push(StoredJob {
                    id: rows::job_id(&id)?,
                    meta: rows::meta(&row.get::<_, String>(1))?,
                    created_at: rows::time(&row.get::<_, String>(2))?,
                    end: rows::end(row.get(3), row.get(4), row.get(5))?,
                    chunks: stored,
                });
            }
            for row in tx.query("SELECT key, job_id, digest FROM muster_idempotency", &[])? {
                let job: String = row.get(1);
                snapshot
                    .idempotency
                    .push((row.get(0), rows::job_id(&job)?, rows::digest(row.get(2))?));
            }
            tx.commit()?;
            Ok(snapshot)
        })
    }
}
