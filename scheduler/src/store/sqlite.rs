//! The embedded default store: SQLite in the data dir, in WAL mode.
//!
//! `synchronous = FULL` makes each commit reach the disk before it returns, so an accepted job
//! survives a power cut as well as a crash; the writer thread's group commit shares that sync among
//! every write queued meanwhile.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};

use bytes::Bytes;
use rusqlite::{params, Connection, Transaction};

use super::payload_files::PayloadFiles;
use super::rows::{self, Pending};
use super::writer::{Backend, InsertJob, Op, Writer};
use super::{io_error, Snapshot, Store, StoreError, StoredChunk, StoredJob, Timing};

/// Schema version written to `PRAGMA user_version`.
const SCHEMA_VERSION: i64 = 2;

/// A job with at least this many bytes of payloads keeps them in a file of their own (see
/// [`PayloadFiles`]).
const FILE_PAYLOAD_BYTES: usize = 1 << 20;

/// Where payload files live, beside the database.
const PAYLOAD_DIR: &str = "payloads";

// Every write on the hot path (attempts, results) is an append to a rowid table without an index:
// no b-tree search per row. Loading reads each table once, in rowid order.
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS jobs (
    id          TEXT PRIMARY KEY,
    meta        TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    end_kind    TEXT,
    end_text    TEXT,
    finished_at TEXT,
    chunks      INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
-- A job's chunk payloads, in order, concatenated: `ends` holds the end offset in `data` of each
-- chunk from `first` on (8 bytes little-endian each). Large payloads are kept in `file` (under
-- payloads/ beside the database) instead of `data`. Dropped when the job ends.
CREATE TABLE IF NOT EXISTS inputs (
    job_id TEXT NOT NULL,
    first  INTEGER NOT NULL,
    ends   BLOB NOT NULL,
    data   BLOB NOT NULL,
    file   TEXT
);
CREATE INDEX IF NOT EXISTS inputs_job ON inputs (job_id);
-- Partial results of succeeded chunks, with the final record of the attempt that made them
-- when it was written at the same time.
CREATE TABLE IF NOT EXISTS results (
    job_id  TEXT NOT NULL,
    idx     INTEGER NOT NULL,
    result  BLOB NOT NULL,
    attempt INTEGER,
    record  TEXT
);
-- Attempt records as they start and as they end; of two rows for one attempt, the later counts.
CREATE TABLE IF NOT EXISTS attempts (
    job_id  TEXT NOT NULL,
    idx     INTEGER NOT NULL,
    attempt INTEGER NOT NULL,
    record  TEXT NOT NULL
);
-- Recent durations of exec items, by timings key.
CREATE TABLE IF NOT EXISTS timings (
    key  TEXT NOT NULL,
    item TEXT NOT NULL,
    ms   INTEGER NOT NULL,
    PRIMARY KEY (key, item)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS idempotency (
    key    TEXT PRIMARY KEY,
    job_id TEXT NOT NULL,
    digest BLOB NOT NULL
) WITHOUT ROWID;
";

/// Version 1 kept one row per chunk (payload and result) and upserted attempts by key.
const MIGRATE_V1: &str = "
ALTER TABLE chunks RENAME TO chunks_v1;
ALTER TABLE attempts RENAME TO attempts_v1;
ALTER TABLE jobs ADD COLUMN chunks INTEGER NOT NULL DEFAULT 0;
";

const FINISH_V1: &str = "
UPDATE jobs SET chunks = (SELECT count(*) FROM chunks_v1 WHERE chunks_v1.job_id = jobs.id);
INSERT INTO results (job_id, idx, result)
    SELECT job_id, idx, result FROM chunks_v1 WHERE result IS NOT NULL ORDER BY job_id, idx;
INSERT INTO attempts (job_id, idx, attempt, record)
    SELECT job_id, idx, attempt, record FROM attempts_v1 ORDER BY job_id, idx, attempt;
DROP TABLE chunks_v1;
DROP TABLE attempts_v1;
";

/// The SQLite database the writer thread owns.
struct Sqlite {
    conn: Connection,
    /// Held for as long as the store is open: one coordinator per data directory (none where the
    /// file system cannot lock files).
    _lock: Option<std::fs::File>,
    /// The payload files' directory and spares.
    payloads: PayloadFiles,
    /// Pages in the WAL, as SQLite reports after each commit.
    wal_pages: Arc<AtomicUsize>,
    /// Asks the checkpoint thread for a checkpoint, to be told when it is done or not (dropped
    /// to stop it).
    checkpoints: mpsc::SyncSender<Option<mpsc::Sender<()>>>,
    /// What the checkpoint thread is doing.
    checkpointer: Arc<CheckpointState>,
    /// WAL pages past which a commit asks for a checkpoint: [`CHECKPOINT_BUSY_BYTES`] of this
    /// database's pages.
    busy_pages: usize,
    /// The thread's current checkpoint was asked for by a commit past `busy_pages`, when the WAL
    /// held this many pages.
    asked_busy: Option<usize>,
}

/// The checkpoint thread's state, as the writer sees it.
#[derive(Default)]
struct CheckpointState {
    /// A checkpoint was asked for and has not finished.
    running: std::sync::atomic::AtomicBool,
    /// A checkpoint finished since the writer last looked.
    finished: std::sync::atomic::AtomicBool,
}

/// The lock file that keeps a second coordinator off a data directory.
const LOCK_FILE: &str = "muster.lock";

/// Bytes of zeros a new WAL file starts with: more than the WAL reaches between checkpoints
/// ([`CHECKPOINT_BUSY_BYTES`], plus what is written while one runs).
const WAL_RESERVE: usize = 8 << 20;

/// Copies committed pages from the WAL into the database file, without waiting for readers.
const CHECKPOINT: &str = "PRAGMA wal_checkpoint(PASSIVE)";

/// Pages in the WAL past which an idle writer asks for a checkpoint (each checkpoint syncs the
/// database file, so a few pages are left for later).
const CHECKPOINT_IDLE_PAGES: usize = 100;
/// WAL bytes (in pages) past which a commit asks for a checkpoint, as SQLite's automatic checkpoint
/// does after 1000 pages, when no large job is in flight: the WAL is then written over from its
/// start, within [`WAL_RESERVE`], which syncs faster than a growing file.
const CHECKPOINT_BUSY_BYTES: usize = 6 << 20;
/// Most WAL pages committed while the thread checkpointed that the writer copies itself to let
/// the WAL start over (see `Sqlite::checkpoint_when_busy`).
const CHECKPOINT_FINISH_PAGES: usize = 256;
/// Pages past which the writer checkpoints itself, the checkpoint thread having fallen behind or
/// a large job running, so that the WAL cannot grow without bound (64 MiB of 4 KiB pages).
const CHECKPOINT_PAGES: usize = 16_384;

/// Opens (creating if needed) the database at `path` and starts its writer thread.
pub fn open(path: &Path) -> Result<Box<dyn Store>, StoreError> {
    let path = path.to_owned();
    Ok(Box::new(Writer::start("sqlite", move || {
        Sqlite::open(&path)
    })?))
}

impl Sqlite {
    /// Deletes the stored payloads of `jobs` (partial results stay: a succeeded job's result is
    /// merged from them on restart); returns the payload files to remove.
    fn delete_inputs(&mut self, jobs: &[String]) -> Result<Vec<String>, StoreError> {
        let tx = self.conn.transaction()?;
        let mut files = Vec::new();
        {
            let mut named = tx
                .prepare_cached("SELECT file FROM inputs WHERE job_id = ?1 AND file IS NOT NULL")?;
            let mut delete = tx.prepare_cached("DELETE FROM inputs WHERE job_id = ?1")?;
            for job in jobs {
                for file in named.query_map(params![job], |r| r.get::<_, String>(0))? {
                    files.push(file?);
                }
                delete.execute(params![job])?;
            }
        }
        tx.commit()?;
        Ok(files)
    }

    /// Copies committed pages from the WAL into the database file (without waiting for readers),
    /// on the writer's own connection: only when the WAL has grown past [`CHECKPOINT_PAGES`], the
    /// checkpoint thread having fallen behind.
    fn checkpoint(&mut self) -> Result<(), StoreError> {
        self.conn.query_row(CHECKPOINT, [], |_| Ok(()))?;
        self.wal_pages.store(0, Ordering::Relaxed);
        Ok(())
    }

    /// Asks the checkpoint thread to copy the WAL into the database file, unless it is at it.
    fn checkpoint_behind(&self) {
        if !self.checkpointer.running.swap(true, Ordering::AcqRel) {
            let _ = self.checkpoints.try_send(None);
        }
    }

    /// Once the WAL is past [`CHECKPOINT_BUSY_BYTES`]: the thread copies the bulk of it beside
    /// the writer, then the writer copies what was committed meanwhile itself (a few pages and a
    /// sync of the database file, ahead of its next commit), since the WAL only starts over at a
    /// transaction that finds every frame copied: with commits every half millisecond (W5), the
    /// thread's checkpoints never caught up, and one was asked for after every commit, each
    /// syncing the database file beside the commits' syncs.
    ///
    /// When more than [`CHECKPOINT_FINISH_PAGES`] were committed while the thread's checkpoint
    /// ran (heavy writing, as in S1), the thread is asked again instead: the writer's own copy
    /// would hold up its commits for longer, and their writes would pile up in memory meanwhile.
    fn checkpoint_when_busy(&mut self, pages: usize) -> Result<(), StoreError> {
        match self.asked_busy {
            Some(asked) if self.checkpointer.finished.swap(false, Ordering::AcqRel) => {
                if pages.saturating_sub(asked) <= CHECKPOINT_FINISH_PAGES {
                    self.asked_busy = None;
                    return self.checkpoint();
                }
                self.asked_busy = Some(pages);
            }
            Some(_) => {}
            None => {
                // A checkpoint that finished earlier (an idle one) copied none of this.
                self.checkpointer.finished.store(false, Ordering::Release);
                self.asked_busy = Some(pages);
            }
        }
        self.checkpoint_behind();
        Ok(())
    }

    fn open(path: &Path) -> Result<Self, StoreError> {
        let lock = lock_data_dir(path)?;
        // SQLite gives the WAL and shared-memory files the database file's mode: a database made
        // 0600 here keeps every job's data from other local users (SQLite would make it 0644).
        private_files(path)?;
        let connect = || {
            let conn = Connection::open(path)
                .map_err(|e| StoreError::Other(format!("cannot open {}: {e}", path.display())))?;
            // 4 KiB pages (set when the file is created; files made with 16 KiB pages keep them):
            // a small job's commit writes a page per table it touches, and payloads large enough
            // for pages to matter live in files of their own.
            conn.execute_batch(
                "PRAGMA page_size = 4096; PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA busy_timeout = 5000;",
            )?;
            Ok::<_, StoreError>(conn)
        };
        // SQLite deletes the WAL of a database without pages: a new one gets its schema, and its
        // connection is closed (which removes its WAL), before the WAL is reserved. Only a store
        // this process holds the lock of is written to before SQLite opens it.
        if lock.is_some() {
            if std::fs::metadata(path).map_or(true, |m| m.len() == 0) {
                connect()?.execute_batch(SCHEMA)?;
            }
            reserve_wal(path)?;
        }
        let mut conn = connect()?;
        // Checkpoints (copying the WAL into the database file) run on a thread of their own, not
        // inside the commit a client waits for: with 100 MB jobs they cost as much as the commit.
        // (The WAL hook set below replaces the automatic checkpoint.)
        let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if version > SCHEMA_VERSION {
            return Err(StoreError::Other(format!(
                "{} has schema version {version}, newer than this muster ({SCHEMA_VERSION})",
                path.display()
            )));
        }
        let payloads = path
            .parent()
            .unwrap_or_else(|| Path::new("."))
            .join(PAYLOAD_DIR);
        let mut payloads = PayloadFiles::open(payloads)?;
        if version == 1 {
            migrate_v1(&conn, &mut payloads)?;
        }
        conn.execute_batch(SCHEMA)?;
        // Version 2 files made before payload files and combined result rows lack these columns.
        if conn.prepare("SELECT file FROM inputs LIMIT 0").is_err() {
            conn.execute_batch("ALTER TABLE inputs ADD COLUMN file TEXT")?;
        }
        if conn.prepare("SELECT record FROM results LIMIT 0").is_err() {
            conn.execute_batch(
                "ALTER TABLE results ADD COLUMN attempt INTEGER; ALTER TABLE results ADD COLUMN record TEXT;",
            )?;
        }
        conn.execute_batch(&format!("PRAGMA user_version = {SCHEMA_VERSION}"))?;
        let wal_pages = Arc::new(AtomicUsize::new(0));
        let pages = wal_pages.clone();
        conn.wal_hook(Some(
            move |_: &mut rusqlite::hooks::Wal, n: std::ffi::c_int| {
                pages.store(usize::try_from(n).unwrap_or(0), Ordering::Relaxed);
                Ok(())
            },
        ))?;
        let checkpointer = Arc::new(CheckpointState::default());
        let checkpoints = spawn_checkpointer(path, checkpointer.clone())?;
        let page_size: i64 = conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
        Ok(Self {
            conn,
            _lock: lock,
            payloads,
            wal_pages,
            checkpoints,
            checkpointer,
            busy_pages: CHECKPOINT_BUSY_BYTES / usize::try_from(page_size).unwrap_or(4096).max(512),
            asked_busy: None,
        })
    }
}

/// Locks the database's directory for this process (a lock file beside the database, released
/// when the process ends however it ends): two coordinators on one SQLite store would both run
/// its jobs. Where the file system cannot lock files, says so and goes on without.
fn lock_data_dir(db: &Path) -> Result<Option<std::fs::File>, StoreError> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = db.with_file_name(LOCK_FILE);
    let file = std::fs::OpenOptions::new()
        .mode(0o600)
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| io_error("open", &path, e))?;
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(std::fs::TryLockError::WouldBlock) => Err(StoreError::Other(format!(
            "{} is in use by another muster coordinator",
            db.parent().unwrap_or_else(|| Path::new(".")).display()
        ))),
        Err(std::fs::TryLockError::Error(e)) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot lock the data dir: nothing keeps a second coordinator off it");
            Ok(None)
        }
    }
}

/// Creates the database file with mode 0600 if it is missing, and makes an existing one (and its
/// WAL and shared-memory files) 0600 if they are open to others.
fn private_files(db: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(db)
    {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io_error("create", db, e)),
    }
    for suffix in ["", "-wal", "-shm"] {
        let mut name = db.as_os_str().to_owned();
        name.push(suffix);
        let file = PathBuf::from(name);
        if file.exists() {
            super::make_private(&file, 0o600)?;
        }
    }
    Ok(())
}

/// Gives a database opened without a WAL file one of [`WAL_RESERVE`] zero bytes, written and
/// synced, before SQLite opens it. SQLite reads a WAL without a valid header as empty and writes
/// its frames from the start, over these blocks; a commit that writes over allocated blocks
/// syncs without the file system's metadata (W5's jobs: ~1.0 ms each against ~1.3-1.5 ms while
/// the WAL grows). A WAL already there (left by a crash) is SQLite's to recover and is not
/// touched; SQLite removes the WAL when the store is closed cleanly, so each start makes it anew.
fn reserve_wal(db: &Path) -> Result<(), StoreError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut name = db.as_os_str().to_owned();
    name.push("-wal");
    let wal = PathBuf::from(name);
    let mut file = match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&wal)
    {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(()),
        Err(e) => return Err(io_error("create", &wal, e)),
    };
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..WAL_RESERVE / zeros.len() {
        file.write_all(&zeros)
            .map_err(|e| io_error("write", &wal, e))?;
    }
    file.sync_all().map_err(|e| io_error("sync", &wal, e))
}

/// Starts the thread that checkpoints the WAL on a connection of its own when asked. A checkpoint
/// copies pages into the database file and syncs it; done beside the writer rather than by it, the
/// commits clients wait for never queue behind one. Once a checkpoint has caught up, the writer's
/// next transaction starts the WAL over from its beginning, and writing over a file syncs faster
/// than growing it. The thread ends when the store is dropped.
fn spawn_checkpointer(
    path: &Path,
    state: Arc<CheckpointState>,
) -> Result<mpsc::SyncSender<Option<mpsc::Sender<()>>>, StoreError> {
    let conn = Connection::open(path)
        .map_err(|e| StoreError::Other(format!("cannot open {}: {e}", path.display())))?;
    conn.execute_batch("PRAGMA busy_timeout = 5000;")?;
    let (tx, rx) = mpsc::sync_channel::<Option<mpsc::Sender<()>>>(1);
    std::thread::Builder::new()
        .name("muster-checkpoint".into())
        .spawn(move || {
            while let Ok(done) = rx.recv() {
                let started = std::time::Instant::now();
                match conn.query_row(CHECKPOINT, [], |_| Ok(())) {
                    Ok(()) => tracing::debug!(took = ?started.elapsed(), "WAL checkpoint done"),
                    Err(e) => tracing::warn!(error = %e, "WAL checkpoint failed"),
                }
                state.finished.store(true, Ordering::Release);
                state.running.store(false, Ordering::Release);
                if let Some(done) = done {
                    let _ = done.send(());
                }
            }
        })
        .map_err(|e| StoreError::Other(format!("cannot start the checkpoint thread: {e}")))?;
    Ok(tx)
}

/// Moves a version 1 database to the current layout, in one transaction.
fn migrate_v1(conn: &Connection, payloads: &mut PayloadFiles) -> Result<(), StoreError> {
    let tx = conn.unchecked_transaction()?;
    tx.execute_batch(MIGRATE_V1)?;
    tx.execute_batch(SCHEMA)?;
    // Payloads of jobs still running, as segments.
    let mut unfinished = tx.prepare("SELECT id FROM jobs WHERE end_kind IS NULL")?;
    let ids: Vec<String> = unfinished
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    drop(unfinished);
    for id in ids {
        let inputs: Vec<Bytes> = tx
            .prepare("SELECT input FROM chunks_v1 WHERE job_id = ?1 ORDER BY idx")?
            .query_map(params![id], |r| Ok(Bytes::from(r.get::<_, Vec<u8>>(0)?)))?
            .collect::<Result<_, _>>()?;
        insert_inputs(&tx, payloads, &id, &inputs)?;
    }
    tx.execute_batch(FINISH_V1)?;
    tx.commit()?;
    Ok(())
}

/// Writes a job's chunk payloads in one row: into it when small, otherwise into a file of their
/// own that is durable before the row naming it is committed.
fn insert_inputs(
    tx: &Transaction<'_>,
    payloads: &mut PayloadFiles,
    job: &str,
    inputs: &[Bytes],
) -> Result<(), StoreError> {
    let mut ends = Vec::with_capacity(inputs.len() * 8);
    let mut end = 0u64;
    for input in inputs {
        end += input.len() as u64;
        ends.extend_from_slice(&end.to_le_bytes());
    }
    let mut row = tx.prepare_cached(
        "INSERT INTO inputs (job_id, first, ends, data, file) VALUES (?1, 0, ?2, ?3, ?4)",
    )?;
    if end as usize >= FILE_PAYLOAD_BYTES {
        let name = payloads.write(job, inputs)?;
        row.execute(params![job, ends, &[] as &[u8], name])?;
    } else {
        let data: Vec<u8> = inputs.concat();
        row.execute(params![job, ends, data, None::<String>])?;
    }
    Ok(())
}

fn insert(
    tx: &Transaction<'_>,
    payloads: &mut PayloadFiles,
    job: &InsertJob,
) -> Result<(), StoreError> {
    tx.prepare_cached("INSERT INTO jobs (id, meta, created_at, chunks) VALUES (?1, ?2, ?3, ?4)")?
        .execute(params![
            job.id,
            job.meta,
            job.created_at,
            job.inputs.len() as u32
        ])?;
    insert_inputs(tx, payloads, &job.id, &job.inputs)?;
    if let Some((key, digest)) = &job.idempotency {
        tx.prepare_cached("INSERT INTO idempotency (key, job_id, digest) VALUES (?1, ?2, ?3)")?
            .execute(params![key, job.id, digest])?;
    }
    Ok(())
}

/// Rows per multi-row `INSERT`: one statement step per group instead of per row.
const ROWS_PER_INSERT: usize = 64;

/// Appends rows of `N` values (for `columns`) to `table`, `ROWS_PER_INSERT` rows per statement,
/// in order.
fn append_rows<const N: usize>(
    tx: &Transaction<'_>,
    table: &str,
    columns: &str,
    rows: &[[&dyn rusqlite::ToSql; N]],
) -> Result<(), StoreError> {
    let statement = |n: usize| {
        let one = format!("({})", vec!["?"; N].join(", "));
        format!(
            "INSERT INTO {table} ({columns}) VALUES {}",
            vec![one; n].join(", ")
        )
    };
    let mut full = tx.prepare_cached(&statement(ROWS_PER_INSERT))?;
    let mut single = tx.prepare_cached(&statement(1))?;
    let mut groups = rows.chunks_exact(ROWS_PER_INSERT);
    for group in &mut groups {
        let values: Vec<&dyn rusqlite::ToSql> =
            group.iter().flat_map(|r| r.iter().copied()).collect();
        full.execute(values.as_slice())?;
    }
    for row in groups.remainder() {
        single.execute(&row[..])?;
    }
    Ok(())
}

/// A result row's values: job, chunk, result, and the attempt and record it may carry.
type ResultRow<'a> = (
    &'a Arc<str>,
    &'a u32,
    &'a [u8],
    Option<&'a u32>,
    Option<&'a String>,
);

/// Applies a batch of writes: attempts and results as multi-row appends (attempts in the order
/// they were made), then the ends of jobs.
fn apply(tx: &Transaction<'_>, ops: &[&Pending]) -> Result<(), StoreError> {
    let mut attempts: Vec<[&dyn rusqlite::ToSql; 4]> = Vec::new();
    let mut results: Vec<ResultRow<'_>> = Vec::new();
    for op in ops {
        match op {
            Pending::Attempt {
                job,
                chunk,
                attempt,
                record,
            } => attempts.push([job, chunk, attempt, record]),
            Pending::Result {
                job,
                chunk,
                result,
                ended,
            } => results.push((
                job,
                chunk,
                &result[..],
                ended.as_ref().map(|(a, _)| a),
                ended.as_ref().map(|(_, r)| r),
            )),
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
    }
    let results: Vec<[&dyn rusqlite::ToSql; 5]> = results
        .iter()
        .map(|(job, chunk, result, attempt, record)| {
            [
                *job as &dyn rusqlite::ToSql,
                *chunk,
                result,
                attempt,
                record,
            ]
        })
        .collect();
    append_rows(tx, "attempts", "job_id, idx, attempt, record", &attempts)?;
    append_rows(
        tx,
        "results",
        "job_id, idx, result, attempt, record",
        &results,
    )?;
    Ok(())
}

/// Chunk `idx` of the job with id `job` (its place in the snapshot given by `at`), if both exist.
fn stored_chunk<'a>(
    snapshot: &'a mut Snapshot,
    at: &HashMap<String, usize>,
    job: &str,
    idx: u32,
) -> Option<&'a mut StoredChunk> {
    let &j = at.get(job)?;
    snapshot.jobs[j].chunks.get_mut(idx as usize)
}

/// Adds an attempt record read back; a later record of the same attempt (its end) replaces the
/// earlier one.
fn add_attempt(chunk: &mut StoredChunk, record: crate::records::AttemptRecord) {
    match chunk
        .attempts
        .iter_mut()
        .find(|a| a.attempt == record.attempt)
    {
        Some(known) => *known = record,
        None => chunk.attempts.push(record),
    }
}

/// Cuts a segment back into its chunk payloads (slices of one buffer).
fn segment_inputs(ends: &[u8], data: Bytes) -> Result<Vec<Bytes>, StoreError> {
    let mut start = 0usize;
    ends.chunks_exact(8)
        .map(|end| {
            let end = u64::from_le_bytes(end.try_into().unwrap_or_default()) as usize;
            if end < start || end > data.len() {
                return Err(StoreError::Other(
                    "stored chunk payloads are damaged".into(),
                ));
            }
            let input = data.slice(start..end);
            start = end;
            Ok(input)
        })
        .collect()
}

impl Backend for Sqlite {
    fn write(&mut self, ops: &[Op]) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        let mut writes = Vec::with_capacity(ops.len());
        // No row refers to another by key, so new jobs can go first: order only matters among
        // the attempt rows, which `apply` keeps.
        for op in ops {
            match op {
                Op::Write(pending) => writes.push(pending),
                Op::Insert(job) => insert(&tx, &mut self.payloads, job)?,
                Op::Timings(timings) => {
                    let mut upsert = tx.prepare_cached(
                        "INSERT INTO timings (key, item, ms) VALUES (?1, ?2, ?3) \
                         ON CONFLICT (key, item) DO UPDATE SET ms = excluded.ms",
                    )?;
                    for t in timings {
                        upsert.execute(params![t.key, t.item, t.ms as i64])?;
                    }
                }
            }
        }
        apply(&tx, &writes)?;
        tx.commit()?;
        Ok(())
    }

    fn idle(&mut self) -> Result<(), StoreError> {
        if self.wal_pages.load(Ordering::Relaxed) >= CHECKPOINT_IDLE_PAGES {
            self.checkpoint_behind();
        }
        Ok(())
    }

    fn after_commit(&mut self, large_jobs_running: bool) -> Result<(), StoreError> {
        let pages = self.wal_pages.load(Ordering::Relaxed);
        if pages >= CHECKPOINT_PAGES {
            self.checkpoint()?;
        } else if !large_jobs_running && pages >= self.busy_pages {
            self.checkpoint_when_busy(pages)?;
        }
        Ok(())
    }

    fn drop_inputs(&mut self, jobs: &[String]) -> Result<(), StoreError> {
        // Not worth an fsync of its own: the next durable commit carries it to the disk.
        self.conn.execute_batch("PRAGMA synchronous = NORMAL")?;
        let dropped = self.delete_inputs(jobs);
        self.conn.execute_batch("PRAGMA synchronous = FULL")?;
        // A file left behind by a crash here is removed at the next start.
        self.payloads.retire(dropped?)
    }

    fn prune(&mut self, jobs: &[String]) -> Result<(), StoreError> {
        let dropped = self.delete_inputs(jobs)?;
        self.payloads.retire(dropped)?;
        // The result and attempt tables have no index on the job (their writes are plain
        // appends): one pass over each for the whole batch, its ids in a JSON array.
        let ids = serde_json::to_string(jobs).map_err(|e| StoreError::Other(e.to_string()))?;
        let tx = self.conn.transaction()?;
        for table in ["results", "attempts", "idempotency"] {
            tx.execute(
                &format!("DELETE FROM {table} WHERE job_id IN (SELECT value FROM json_each(?1))"),
                params![ids],
            )?;
        }
        tx.execute(
            "DELETE FROM jobs WHERE id IN (SELECT value FROM json_each(?1))",
            params![ids],
        )?;
        tx.commit()?;
        Ok(())
    }

    fn load(&mut self) -> Result<Snapshot, StoreError> {
        let mut snapshot = Snapshot::default();
        let mut at: HashMap<String, usize> = HashMap::new();
        let mut jobs = self.conn.prepare(
            "SELECT id, meta, created_at, end_kind, end_text, finished_at, chunks FROM jobs ORDER BY id",
        )?;
        let mut rows = jobs.query([])?;
        while let Some(r) = rows.next()? {
            let id: String = r.get(0)?;
            let chunks: u32 = r.get(6)?;
            at.insert(id.clone(), snapshot.jobs.len());
            snapshot.jobs.push(StoredJob {
                id: rows::job_id(&id)?,
                meta: rows::meta(&r.get::<_, String>(1)?)?,
                created_at: rows::time(&r.get::<_, String>(2)?)?,
                end: rows::end(r.get(3)?, r.get(4)?, r.get(5)?)?,
                chunks: vec![StoredChunk::default(); chunks as usize],
            });
        }
        // Rows of a job the jobs table does not hold cannot exist (one transaction writes a job and
        // its payloads, and every later row follows it); such a row would be skipped.
        // Payloads of jobs that ended before their drop came round (the files go with the stray
        // ones below).
        self.conn.execute(
            "DELETE FROM inputs WHERE job_id IN (SELECT id FROM jobs WHERE end_kind IS NOT NULL)",
            [],
        )?;
        let mut segments = self
            .conn
            .prepare("SELECT job_id, first, ends, data, file FROM inputs ORDER BY rowid")?;
        let mut rows = segments.query([])?;
        let mut files = std::collections::HashSet::new();
        while let Some(r) = rows.next()? {
            let job: String = r.get(0)?;
            let first: u32 = r.get(1)?;
            let ends: Vec<u8> = r.get(2)?;
            let data = match r.get::<_, Option<String>>(4)? {
                Some(file) => {
                    // A spare written over may hold a former job's bytes past the last end.
                    let len = ends
                        .last_chunk::<8>()
                        .map_or(0, |end| u64::from_le_bytes(*end));
                    let data = self.payloads.read(&file, len)?;
                    files.insert(file);
                    data
                }
                None => r.get::<_, Vec<u8>>(3)?,
            };
            let inputs = segment_inputs(&ends, Bytes::from(data))?;
            for (i, input) in (first..).zip(inputs) {
                if let Some(c) = stored_chunk(&mut snapshot, &at, &job, i) {
                    c.input = input;
                }
            }
        }
        self.payloads.remove_strays(&files);

        let mut attempts = self
            .conn
            .prepare("SELECT job_id, idx, record FROM attempts ORDER BY rowid")?;
        let mut rows = attempts.query([])?;
        while let Some(r) = rows.next()? {
            let job: String = r.get(0)?;
            let idx: u32 = r.get(1)?;
            if let Some(c) = stored_chunk(&mut snapshot, &at, &job, idx) {
                add_attempt(c, rows::attempt(&r.get::<_, String>(2)?)?);
            }
        }
        // After the attempt rows: a record stored with a result is the end of its attempt.
        let mut results = self
            .conn
            .prepare("SELECT job_id, idx, result, record FROM results ORDER BY rowid")?;
        let mut rows = results.query([])?;
        while let Some(r) = rows.next()? {
            let job: String = r.get(0)?;
            let idx: u32 = r.get(1)?;
            if let Some(c) = stored_chunk(&mut snapshot, &at, &job, idx) {
                c.result = Some(Bytes::from(r.get::<_, Vec<u8>>(2)?));
                if let Some(record) = r.get::<_, Option<String>>(3)? {
                    add_attempt(c, rows::attempt(&record)?);
                }
            }
        }
        for job in &mut snapshot.jobs {
            for c in &mut job.chunks {
                c.attempts.sort_by_key(|a| a.attempt);
            }
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
        let mut timings = self.conn.prepare("SELECT key, item, ms FROM timings")?;
        let timing_rows = timings.query_map([], |r| {
            Ok(Timing {
                key: r.get(0)?,
                item: r.get(1)?,
                ms: u64::try_from(r.get::<_, i64>(2)?).unwrap_or(0),
            })
        })?;
        for row in timing_rows {
            snapshot.timings.push(row?);
        }
        Ok(snapshot)
    }
}

#[cfg(test)]
mod tests {

    use chrono::Utc;
    use muster_shared::ids::{Attempt, JobId, WorkerId};

    use super::*;
    use crate::records::{AttemptRecord, JobMeta};

    const SCHEMA_V1: &str = "
        CREATE TABLE jobs (id TEXT PRIMARY KEY, meta TEXT NOT NULL, created_at TEXT NOT NULL,
            end_kind TEXT, end_text TEXT, finished_at TEXT) WITHOUT ROWID;
        CREATE TABLE chunks (job_id TEXT NOT NULL, idx INTEGER NOT NULL, input BLOB NOT NULL,
            result BLOB, UNIQUE (job_id, idx));
        CREATE TABLE attempts (job_id TEXT NOT NULL, idx INTEGER NOT NULL,
            attempt INTEGER NOT NULL, record TEXT NOT NULL,
            PRIMARY KEY (job_id, idx, attempt)) WITHOUT ROWID;
        CREATE TABLE idempotency (key TEXT PRIMARY KEY, job_id TEXT NOT NULL,
            digest BLOB NOT NULL) WITHOUT ROWID;
        PRAGMA user_version = 1;
    ";

    fn record(attempt: u32, ended: bool) -> String {
        serde_json::to_string(&AttemptRecord {
            attempt: Attempt(attempt),
            worker: WorkerId::new(),
            worker_name: "w".into(),
            started_at: Utc::now(),
            finished_at: ended.then(Utc::now),
            error: None,
            backup: false,
            seq: None,
        })
        .unwrap()
    }

    fn meta() -> String {
        rows::encode_meta(&JobMeta::sum_for_tests(3)).unwrap()
    }

    #[test]
    fn a_version_1_database_is_migrated_with_everything_a_restart_needs() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("muster.db");
        let (running, done) = (JobId::new(), JobId::new());
        let meta = meta();
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(SCHEMA_V1).unwrap();
            let now = Utc::now().to_rfc3339();
            conn.execute(
                "INSERT INTO jobs (id, meta, created_at) VALUES (?1, ?2, ?3)",
                params![running.to_string(), meta, now],
            )
            .unwrap();
            conn.execute(
                "INSERT INTO jobs (id, meta, created_at, end_kind, finished_at) VALUES (?1, ?2, ?3, 'succeeded', ?3)",
                params![done.to_string(), meta, now],
            )
            .unwrap();
            for (job, idx, input, result) in [
                (running, 0, &b"[1,2]"[..], Some(&b"3"[..])),
                (running, 1, b"[4]", None),
                (done, 0, b"", Some(b"9")),
            ] {
                conn.execute(
                    "INSERT INTO chunks (job_id, idx, input, result) VALUES (?1, ?2, ?3, ?4)",
                    params![job.to_string(), idx, input, result],
                )
                .unwrap();
            }
            for (idx, attempt, ended) in [(0, 1, true), (1, 1, true), (1, 2, false)] {
                conn.execute(
                    "INSERT INTO attempts (job_id, idx, attempt, record) VALUES (?1, ?2, ?3, ?4)",
                    params![running.to_string(), idx, attempt, record(attempt, ended)],
                )
                .unwrap();
            }
        }
        let mut db = Sqlite::open(&path).unwrap();
        let version: i64 = db
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, SCHEMA_VERSION);
        let snapshot = db.load().unwrap();
        let job = |id| snapshot.jobs.iter().find(|j| j.id == id).unwrap();
        let chunks = &job(running).chunks;
        assert_eq!(chunks.len(), 2);
        assert_eq!(&chunks[0].input[..], b"[1,2]");
        assert_eq!(chunks[0].result.as_deref(), Some(&b"3"[..]));
        assert_eq!(&chunks[1].input[..], b"[4]");
        assert_eq!(chunks[1].result, None);
        let attempts: Vec<(u32, bool)> = chunks[1]
            .attempts
            .iter()
            .map(|a| (a.attempt.0, a.finished_at.is_some()))
            .collect();
        assert_eq!(attempts, vec![(1, true), (2, false)]);
        let finished = job(done);
        assert!(finished.end.is_some());
        assert_eq!(finished.chunks.len(), 1);
        assert_eq!(finished.chunks[0].result.as_deref(), Some(&b"9"[..]));
    }

    #[test]
    fn a_job_that_cannot_be_stored_takes_down_only_what_a_restart_tolerates() {
        let insert = |id: &str, bytes: usize| {
            Op::Insert(InsertJob {
                id: id.to_owned(),
                meta: meta(),
                created_at: Utc::now().to_rfc3339(),
                inputs: vec![Bytes::from(vec![b'1'; bytes])],
                idempotency: None,
            })
        };
        let result = |id: &str| {
            Op::Write(Pending::Result {
                job: id.into(),
                chunk: 0,
                result: Bytes::from_static(b"1"),
                ended: Some((1, record(1, true))),
            })
        };
        let start = |id: &str| {
            Op::Write(Pending::Attempt {
                job: id.into(),
                chunk: 0,
                attempt: 1,
                record: record(1, false),
            })
        };
        for fatal in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let db = Sqlite::open(&dir.path().join("muster.db")).unwrap();
            // The large job's payload file cannot be written.
            std::fs::remove_dir(db.payloads.dir()).unwrap();
            std::fs::write(db.payloads.dir(), b"not a directory").unwrap();
            let (small, large) = (JobId::new().to_string(), JobId::new().to_string());
            let mut failing = vec![insert(&large, FILE_PAYLOAD_BYTES), start(&large)];
            if fatal {
                // A result in the same batch would be lost with the job.
                failing.push(result(&small));
            }
            let batches = vec![
                vec![insert(&small, 3), start(&small)],
                failing,
                vec![result(&small)],
            ];
            let (progress, durable, failure) = super::super::writer::run_batches(db, batches);
            assert_eq!(progress.done, 3);
            assert_eq!(
                durable,
                [true, false, !fatal],
                "the other batches were written alone"
            );
            assert_eq!(progress.fatal.map(|f| f.0), fatal.then_some(2));
            assert_eq!(failure.is_some(), fatal);
            let payloads = dir.path().join(PAYLOAD_DIR);
            std::fs::remove_file(&payloads).unwrap();
            let mut db = Sqlite::open(&dir.path().join("muster.db")).unwrap();
            let snapshot = db.load().unwrap();
            let ids: Vec<String> = snapshot.jobs.iter().map(|j| j.id.to_string()).collect();
            assert_eq!(ids, std::slice::from_ref(&small));
            assert_eq!(
                snapshot.jobs[0].chunks[0].result.as_deref(),
                Some(&b"1"[..])
            );
        }
    }

    #[test]
    fn no_ticket_is_durable_for_a_job_that_was_not_stored_however_many_batches_fail() {
        let dir = tempfile::tempdir().unwrap();
        let db = Sqlite::open(&dir.path().join("muster.db")).unwrap();
        // Large payloads cannot be written; small ones go into the database.
        std::fs::remove_dir(db.payloads.dir()).unwrap();
        std::fs::write(db.payloads.dir(), b"not a directory").unwrap();
        // Far more failed batches in one writer round than any fixed list of failures could hold.
        let ids: Vec<String> = (0..150).map(|_| JobId::new().to_string()).collect();
        let batches = ids
            .iter()
            .enumerate()
            .map(|(k, id)| {
                let bytes = if k % 3 == 0 { 3 } else { FILE_PAYLOAD_BYTES };
                vec![Op::Insert(InsertJob {
                    id: id.clone(),
                    meta: meta(),
                    created_at: Utc::now().to_rfc3339(),
                    inputs: vec![Bytes::from(vec![b'1'; bytes])],
                    idempotency: None,
                })]
            })
            .collect();
        let (progress, durable, failure) = super::super::writer::run_batches(db, batches);
        assert_eq!(progress.done, 150);
        assert!(failure.is_none(), "lost inserts are tolerated");
        std::fs::remove_file(dir.path().join(PAYLOAD_DIR)).unwrap();
        let mut db = Sqlite::open(&dir.path().join("muster.db")).unwrap();
        let stored: std::collections::HashSet<String> = db
            .load()
            .unwrap()
            .jobs
            .iter()
            .map(|j| j.id.to_string())
            .collect();
        assert_eq!(stored.len(), 50);
        for (k, id) in ids.iter().enumerate() {
            assert_eq!(
                durable[k],
                stored.contains(id),
                "batch {} of 150: its ticket and the store disagree",
                k + 1
            );
        }
    }

    /// A store in `dir` holding one job of four tiny chunks, and the job's id.
    fn open_with_job(dir: &Path) -> (Sqlite, String) {
        let mut db = Sqlite::open(&dir.join("muster.db")).unwrap();
        let id = JobId::new().to_string();
        db.write(&[Op::Insert(InsertJob {
            id: id.clone(),
            meta: meta(),
            created_at: Utc::now().to_rfc3339(),
            inputs: vec![Bytes::from_static(b"[1]"); 4],
            idempotency: None,
        })])
        .unwrap();
        (db, id)
    }

    #[test]
    fn a_new_wal_is_reserved_and_commits_stay_within_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("muster.db");
        let wal = dir.path().join("muster.db-wal");
        let wal_bytes = || std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
        let (mut db, id) = open_with_job(dir.path());
        assert_eq!(
            wal_bytes(),
            WAL_RESERVE as u64,
            "SQLite kept the reserved WAL"
        );
        for n in 1..=200 {
            db.write(&[Op::Write(Pending::Attempt {
                job: id.as_str().into(),
                chunk: n % 4,
                attempt: n,
                record: record(n, false),
            })])
            .unwrap();
        }
        assert!(db.wal_pages.load(Ordering::Relaxed) >= 200);
        assert_eq!(
            wal_bytes(),
            WAL_RESERVE as u64,
            "commits wrote within the reserve"
        );
        match Sqlite::open(&path) {
            Err(e) => assert!(
                e.to_string()
                    .contains("in use by another muster coordinator"),
                "{e}"
            ),
            Ok(_) => panic!("a second store opened the same data dir"),
        }
    }

    #[test]
    fn back_to_back_commits_past_the_busy_mark_still_let_the_wal_start_over() {
        let dir = tempfile::tempdir().unwrap();
        let (mut db, id) = open_with_job(dir.path());
        let busy = db.busy_pages;
        // Rows of ~4 KiB: a page each.
        let record = "r".repeat(3900);
        let mut commit = |n: u32| {
            db.write(&[Op::Write(Pending::Attempt {
                job: id.as_str().into(),
                chunk: n % 4,
                attempt: n,
                record: record.clone(),
            })])
            .unwrap();
            db.after_commit(false).unwrap();
            db.wal_pages.load(Ordering::Relaxed)
        };
        let mut n = 1;
        while commit(n) < busy {
            n += 1;
        }
        // Commits go on while the thread checkpoints; the WAL must start over soon after.
        let limit = n + 5_000;
        let mut pages = usize::MAX;
        while pages > 16 {
            n += 1;
            assert!(n < limit, "the WAL never started over ({pages} pages)");
            pages = commit(n);
        }
        let wal = std::fs::metadata(dir.path().join("muster.db-wal"))
            .unwrap()
            .len();
        assert_eq!(wal, WAL_RESERVE as u64, "the WAL stayed within its reserve");
    }

    #[test]
    fn a_checkpoint_beside_the_writer_lets_the_wal_start_over() {
        let dir = tempfile::tempdir().unwrap();
        let (mut db, id) = open_with_job(dir.path());
        let attempt = |n: u32| {
            Op::Write(Pending::Attempt {
                job: id.as_str().into(),
                chunk: n % 4,
                attempt: n,
                record: record(n, false),
            })
        };
        let mut n = 1;
        while db.wal_pages.load(Ordering::Relaxed) < db.busy_pages {
            db.write(&[attempt(n)]).unwrap();
            n += 1;
        }
        let grown = db.wal_pages.load(Ordering::Relaxed);
        let (done, checkpointed) = mpsc::channel();
        db.checkpoints.send(Some(done)).unwrap();
        checkpointed.recv().unwrap();
        // The writer's next transaction finds the WAL copied and writes it over from its start.
        db.write(&[attempt(n)]).unwrap();
        let after = db.wal_pages.load(Ordering::Relaxed);
        assert!(
            after < 8,
            "the WAL went on growing: {grown} then {after} pages"
        );
        let snapshot = db.load().unwrap();
        let attempts: usize = snapshot.jobs[0]
            .chunks
            .iter()
            .map(|c| c.attempts.len())
            .sum();
        assert_eq!(attempts as u32, n, "every attempt row is kept");
    }

    #[test]
    fn large_payloads_live_in_files_and_later_attempt_rows_win() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = Sqlite::open(&dir.path().join("muster.db")).unwrap();
        let (small, large) = (JobId::new().to_string(), JobId::new().to_string());
        let big = Bytes::from(vec![7u8; FILE_PAYLOAD_BYTES]);
        let job = |id: &str, inputs: &[Bytes]| {
            Op::Insert(InsertJob {
                id: id.to_owned(),
                meta: meta(),
                created_at: Utc::now().to_rfc3339(),
                inputs: inputs.to_vec(),
                idempotency: None,
            })
        };
        let small_inputs = [Bytes::from_static(b"a"), Bytes::from_static(b"bc")];
        let large_inputs = [Bytes::from_static(b"x"), big];
        let attempt = |ended| {
            Op::Write(Pending::Attempt {
                job: small.as_str().into(),
                chunk: 1,
                attempt: 1,
                record: record(1, ended),
            })
        };
        db.write(&[
            job(&small, &small_inputs),
            job(&large, &large_inputs),
            attempt(false),
        ])
        .unwrap();
        db.write(&[attempt(true)]).unwrap();
        // A result written with the end of its attempt: one row carries both.
        let start = Op::Write(Pending::Attempt {
            job: small.as_str().into(),
            chunk: 0,
            attempt: 1,
            record: record(1, false),
        });
        db.write(&[start]).unwrap();
        db.write(&[Op::Write(Pending::Result {
            job: small.as_str().into(),
            chunk: 0,
            result: Bytes::from_static(b"42"),
            ended: Some((1, record(1, true))),
        })])
        .unwrap();
        let file = dir.path().join(PAYLOAD_DIR).join(format!("{large}.bin"));
        assert!(file.exists());
        let stray = dir.path().join(PAYLOAD_DIR).join("left-by-a-crash.bin");
        std::fs::write(&stray, b"x").unwrap();
        let snapshot = db.load().unwrap();
        assert!(!stray.exists(), "a file no job names is removed");
        let inputs = |id: &str| -> Vec<Bytes> {
            let job = snapshot
                .jobs
                .iter()
                .find(|j| j.id.to_string() == id)
                .unwrap();
            job.chunks.iter().map(|c| c.input.clone()).collect()
        };
        assert_eq!(inputs(&small), small_inputs);
        assert_eq!(inputs(&large), large_inputs);
        let small_job = snapshot
            .jobs
            .iter()
            .find(|j| j.id.to_string() == small)
            .unwrap();
        assert_eq!(small_job.chunks[1].attempts.len(), 1);
        assert!(small_job.chunks[1].attempts[0].finished_at.is_some());
        assert_eq!(small_job.chunks[0].result.as_deref(), Some(&b"42"[..]));
        assert_eq!(small_job.chunks[0].attempts.len(), 1);
        assert!(small_job.chunks[0].attempts[0].finished_at.is_some());
        db.drop_inputs(std::slice::from_ref(&large)).unwrap();
        assert!(file.exists(), "kept as a spare for the next large job");
        let snapshot = db.load().unwrap();
        assert!(!file.exists(), "spares are not kept across a restart");
        let job = snapshot
            .jobs
            .iter()
            .find(|j| j.id.to_string() == large)
            .unwrap();
        assert_eq!(job.chunks.len(), 2);
        assert!(job.chunks.iter().all(|c| c.input.is_empty()));
    }
}
