//! Coordinator configuration in two stages: a raw layer (every field optional, unknown keys refused)
//! from flags, `MUSTER_*` environment variables and a TOML file, merged in that order of precedence,
//! then validated into [`Config`] with every default applied.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::auth::Tokens;

/// Default bind address.
pub const DEFAULT_BIND: &str = "127.0.0.1:7070";
/// Default data directory.
pub const DEFAULT_DATA_DIR: &str = "muster-data";
/// Default heartbeat timeout, seconds.
pub const DEFAULT_HEARTBEAT_TIMEOUT: f64 = 5.0;
/// Default request body limit: 64 MiB.
pub const DEFAULT_MAX_BODY_BYTES: usize = 64 * 1024 * 1024;
/// Default leadership lease, seconds: a standby leads within about this long of a leader's death.
pub const DEFAULT_LEASE: f64 = 3.0;
/// Default delay before a chunk's first retry, seconds (doubles per failure).
pub const DEFAULT_RETRY_BACKOFF: f64 = 0.1;
/// Default largest WebSocket frame a worker may send: 16 MiB. Inputs travel a chunk at a time, so
/// a frame holds at most a few partial results; a larger one is refused at its header.
pub const DEFAULT_MAX_FRAME_BYTES: usize = 16 * 1024 * 1024;
/// Default most slots one worker may announce.
pub const DEFAULT_MAX_WORKER_SLOTS: u32 = 256;
/// Default unfinished chunks past which new jobs get 429 (about 2 GB of coordinator memory).
pub const DEFAULT_MAX_PENDING_CHUNKS: u64 = 10_000_000;
/// Default uncommitted store batches past which new jobs get 429.
pub const DEFAULT_MAX_STORE_BACKLOG: u64 = 10_000;
/// Default submissions waiting for the coordinator at once past which new ones get 429.
pub const DEFAULT_MAX_QUEUED_SUBMISSIONS: usize = 1024;
/// Default time an ended job is kept before it is pruned, seconds: 7 days.
pub const DEFAULT_RETAIN_ENDED: f64 = 7.0 * 86_400.0;
/// Default most ended jobs kept.
pub const DEFAULT_RETAIN_ENDED_JOBS: usize = 100_000;
/// How deep sub-jobs may nest by default.
pub const DEFAULT_MAX_SUB_JOB_DEPTH: u32 = 8;
/// Most sub-jobs one job may have by default.
pub const DEFAULT_MAX_SUB_JOBS: usize = 10_000;
/// Default time a request body may take to arrive, seconds.
pub const DEFAULT_BODY_TIMEOUT: f64 = 60.0;

/// One configuration layer, as read from a TOML file or assembled from flags and environment.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawConfig {
    /// Address to listen on.
    pub bind: Option<String>,
    /// Where tokens (and, with a durable store, state) live.
    pub data_dir: Option<PathBuf>,
    /// File with the client token.
    pub client_token_file: Option<PathBuf>,
    /// File with the worker token.
    pub worker_token_file: Option<PathBuf>,
    /// Seconds of worker silence before its chunks are re-queued.
    pub heartbeat_timeout: Option<f64>,
    /// Largest request body.
    pub max_body_bytes: Option<usize>,
    /// Largest WebSocket frame from a worker.
    pub max_frame_bytes: Option<usize>,
    /// Most slots one worker may announce.
    pub max_worker_slots: Option<u32>,
    /// Seconds a request body may take to arrive.
    pub body_timeout: Option<f64>,
    /// Unfinished chunks past which new jobs get 429.
    pub max_pending_chunks: Option<u64>,
    /// Uncommitted store batches past which new jobs get 429.
    pub max_store_backlog: Option<u64>,
    /// Submissions waiting for the coordinator past which new ones get 429.
    pub max_queued_submissions: Option<usize>,
    /// Seconds an ended job is kept before it is pruned.
    pub retain_ended: Option<f64>,
    /// Most ended jobs kept.
    pub retain_ended_jobs: Option<usize>,
    /// How deep sub-jobs may nest.
    pub max_sub_job_depth: Option<u32>,
    /// Most sub-jobs one job may have.
    pub max_sub_jobs: Option<usize>,
    /// Seconds before a chunk's first retry.
    pub retry_backoff: Option<f64>,
    /// Run without authentication (loopback only).
    pub insecure: Option<bool>,
    /// `sqlite` (default) or `memory`.
    pub store: Option<String>,
    /// HTTP worker threads.
    pub http_workers: Option<usize>,
    /// Leadership lease in seconds (PostgreSQL store).
    pub lease: Option<f64>,
    /// URL this coordinator is reached at.
    pub advertise_url: Option<String>,
    /// Certificate chain (PEM) to serve HTTPS with.
    pub tls_cert: Option<PathBuf>,
    /// Its private key (PEM).
    pub tls_key: Option<PathBuf>,
}

impl RawConfig {
    /// Reads a TOML file layer.
    pub fn from_file(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read config file {}: {e}", path.display()))?;
        toml::from_str(&text)
            .map_err(|e| anyhow::anyhow!("invalid config file {}: {e}", path.display()))
    }

    /// This layer, with gaps filled from `under`.
    pub fn over(self, under: RawConfig) -> RawConfig {
        RawConfig {
            bind: self.bind.or(under.bind),
            data_dir: self.data_dir.or(under.data_dir),
            client_token_file: self.client_token_file.or(under.client_token_file),
            worker_token_file: self.worker_token_file.or(under.worker_token_file),
            heartbeat_timeout: self.heartbeat_timeout.or(under.heartbeat_timeout),
            max_body_bytes: self.max_body_bytes.or(under.max_body_bytes),
            max_frame_bytes: self.max_frame_bytes.or(under.max_frame_bytes),
            max_worker_slots: self.max_worker_slots.or(under.max_worker_slots),
            body_timeout: self.body_timeout.or(under.body_timeout),
            max_pending_chunks: self.max_pending_chunks.or(under.max_pending_chunks),
            max_store_backlog: self.max_store_backlog.or(under.max_store_backlog),
            max_queued_submissions: self.max_queued_submissions.or(under.max_queued_submissions),
            retain_ended: self.retain_ended.or(under.retain_ended),
            retain_ended_jobs: self.retain_ended_jobs.or(under.retain_ended_jobs),
            max_sub_job_depth: self.max_sub_job_depth.or(under.max_sub_job_depth),
            max_sub_jobs: self.max_sub_jobs.or(under.max_sub_jobs),
            retry_backoff: self.retry_backoff.or(under.retry_backoff),
            insecure: self.insecure.or(under.insecure),
            store: self.store.or(under.store),
            http_workers: self.http_workers.or(under.http_workers),
            lease: self.lease.or(under.lease),
            advertise_url: self.advertise_url.or(under.advertise_url),
            tls_cert: self.tls_cert.or(under.tls_cert),
            tls_key: self.tls_key.or(under.tls_key),
        }
    }

    /// Applies defaults and checks every value.
    pub fn validate(self) -> anyhow::Result<Config> {
        let bind_text = self.bind.unwrap_or_else(|| DEFAULT_BIND.to_owned());
        let bind: SocketAddr = bind_text.parse().map_err(|e| {
            anyhow::anyhow!("--bind `{bind_text}` is not an address like 127.0.0.1:7070: {e}")
        })?;
        let insecure = self.insecure.unwrap_or(false);
        if insecure && !bind.ip().is_loopback() {
            anyhow::bail!("--insecure is refused on the non-loopback address {bind}: configure tokens instead");
        }
        let heartbeat_timeout = seconds(
            "heartbeat-timeout",
            self.heartbeat_timeout.unwrap_or(DEFAULT_HEARTBEAT_TIMEOUT),
        )?;
        if heartbeat_timeout < Duration::from_millis(100) {
            anyhow::bail!("--heartbeat-timeout must be at least 0.1 seconds");
        }
        let retry_backoff = seconds(
            "retry-backoff",
            self.retry_backoff.unwrap_or(DEFAULT_RETRY_BACKOFF),
        )?;
        let max_body_bytes = self.max_body_bytes.unwrap_or(DEFAULT_MAX_BODY_BYTES);
        if max_body_bytes < 1024 {
            anyhow::bail!("--max-body-bytes must be at least 1024, got {max_body_bytes}");
        }
        let max_frame_bytes = self.max_frame_bytes.unwrap_or(DEFAULT_MAX_FRAME_BYTES);
        if max_frame_bytes < 64 * 1024 {
            anyhow::bail!("--max-frame-bytes must be at least 65536, got {max_frame_bytes}");
        }
        let max_worker_slots = self.max_worker_slots.unwrap_or(DEFAULT_MAX_WORKER_SLOTS);
        if max_worker_slots == 0 {
            anyhow::bail!("--max-worker-slots must be at least 1");
        }
        let body_timeout = seconds(
            "body-timeout",
            self.body_timeout.unwrap_or(DEFAULT_BODY_TIMEOUT),
        )?;
        if body_timeout < Duration::from_millis(100) {
            anyhow::bail!("--body-timeout must be at least 0.1 seconds");
        }
        let max_pending_chunks = self
            .max_pending_chunks
            .unwrap_or(DEFAULT_MAX_PENDING_CHUNKS);
        let max_store_backlog = self.max_store_backlog.unwrap_or(DEFAULT_MAX_STORE_BACKLOG);
        let max_queued_submissions = self
            .max_queued_submissions
            .unwrap_or(DEFAULT_MAX_QUEUED_SUBMISSIONS);
        if max_pending_chunks == 0 || max_store_backlog == 0 || max_queued_submissions == 0 {
            anyhow::bail!("--max-pending-chunks, --max-store-backlog and --max-queued-submissions must be at least 1");
        }
        let retain_ended = seconds(
            "retain-ended",
            self.retain_ended.unwrap_or(DEFAULT_RETAIN_ENDED),
        )?;
        let retain_ended_jobs = self.retain_ended_jobs.unwrap_or(DEFAULT_RETAIN_ENDED_JOBS);
        if retain_ended_jobs == 0 {
            anyhow::bail!("--retain-ended-jobs must be at least 1");
        }
        let max_sub_job_depth = self.max_sub_job_depth.unwrap_or(DEFAULT_MAX_SUB_JOB_DEPTH);
        let max_sub_jobs = self.max_sub_jobs.unwrap_or(DEFAULT_MAX_SUB_JOBS);
        let store = match self.store.as_deref().unwrap_or("sqlite") {
            "sqlite" => StoreChoice::Sqlite,
            "memory" => StoreChoice::Memory,
            url if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                StoreChoice::Postgres(url.to_owned())
            }
            other => anyhow::bail!(
                "--store `{other}` is not a store: use `sqlite`, `memory` or postgres://USER@HOST:PORT/DB"
            ),
        };
        let lease = seconds("lease", self.lease.unwrap_or(DEFAULT_LEASE))?;
        if lease < Duration::from_millis(300) {
            anyhow::bail!("--lease must be at least 0.3 seconds");
        }
        if let Some(url) = &self.advertise_url {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                anyhow::bail!("--advertise-url `{url}` must be an http:// or https:// URL");
            }
        }
        let tls = match (self.tls_cert, self.tls_key) {
            (Some(cert), Some(key)) => Some(TlsFiles { cert, key }),
            (None, None) => None,
            (Some(_), None) => {
                anyhow::bail!("--tls-cert needs --tls-key: the certificate's private key")
            }
            (None, Some(_)) => {
                anyhow::bail!("--tls-key needs --tls-cert: the certificate chain to serve")
            }
        };
        let http_workers = self
            .http_workers
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
        if http_workers == 0 {
            anyhow::bail!("--http-workers must be at least 1");
        }
        Ok(Config {
            bind,
            data_dir: self
                .data_dir
                .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR)),
            client_token_file: self.client_token_file,
            worker_token_file: self.worker_token_file,
            insecure,
            heartbeat_timeout,
            max_body_bytes,
            max_frame_bytes,
            max_worker_slots,
            body_timeout,
            max_pending_chunks,
            max_store_backlog,
            max_queued_submissions,
            retain_ended,
            retain_ended_jobs,
            max_sub_job_depth,
            max_sub_jobs,
            retry_backoff,
            store,
            http_workers,
            lease,
            advertise_url: self
                .advertise_url
                .map(|u| u.trim_end_matches('/').to_owned()),
            tls,
        })
    }
}

/// Creates the data dir (and its parents) with mode 0700, or tightens an existing one to it:
/// it holds the tokens and every job's data, which no other local user may read.
pub fn create_data_dir(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| anyhow::anyhow!("cannot create data dir {}: {e}", dir.display()))?;
    let mode = std::fs::metadata(dir)
        .map_err(|e| anyhow::anyhow!("cannot read data dir {}: {e}", dir.display()))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        tracing::warn!(dir = %dir.display(), mode = format!("{:04o}", mode & 0o777), "the data dir was open to other users: making it 0700");
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| anyhow::anyhow!("cannot make data dir {} private: {e}", dir.display()))?;
    }
    Ok(())
}

fn seconds(flag: &str, v: f64) -> anyhow::Result<Duration> {
    if !(0.0..1e9).contains(&v) {
        anyhow::bail!("--{flag} must be a number of seconds, got {v}");
    }
    Ok(Duration::from_secs_f64(v))
}

/// Which store keeps coordinator state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreChoice {
    /// SQLite in the data dir (the default).
    Sqlite,
    /// In this process only.
    Memory,
    /// PostgreSQL at this URL, shared with other coordinators; one of them leads.
    Postgres(String),
}

/// File name of the SQLite database in the data dir.
pub const SQLITE_FILE: &str = "muster.db";

/// Validated coordinator settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// Address to listen on (used by the binary; `run` takes a bound listener).
    pub bind: SocketAddr,
    /// Tokens and state live here.
    pub data_dir: PathBuf,
    /// Client token file, if given.
    pub client_token_file: Option<PathBuf>,
    /// Worker token file, if given.
    pub worker_token_file: Option<PathBuf>,
    /// No authentication at all.
    pub insecure: bool,
    /// Worker silence after which its chunks are re-queued.
    pub heartbeat_timeout: Duration,
    /// Largest request body.
    pub max_body_bytes: usize,
    /// Largest WebSocket frame a worker may send; a larger one is refused at its header.
    pub max_frame_bytes: usize,
    /// Most slots one worker may announce: a hello with more is refused.
    pub max_worker_slots: u32,
    /// Time a request body may take to arrive in full.
    pub body_timeout: Duration,
    /// Unfinished chunks past which new jobs get 429 until the backlog drains.
    pub max_pending_chunks: u64,
    /// Uncommitted store batches past which new jobs get 429.
    pub max_store_backlog: u64,
    /// Submissions waiting for the coordinator at once past which new ones get 429.
    pub max_queued_submissions: usize,
    /// How long an ended job is kept before it is pruned from memory and the store.
    pub retain_ended: Duration,
    /// Most ended jobs kept; past it the oldest are pruned.
    pub retain_ended_jobs: usize,
    /// How deep sub-jobs may nest (0: no sub-jobs at all).
    pub max_sub_job_depth: u32,
    /// Most sub-jobs one job may have.
    pub max_sub_jobs: usize,
    /// Delay before a chunk's first retry.
    pub retry_backoff: Duration,
    /// Store.
    pub store: StoreChoice,
    /// HTTP worker threads.
    pub http_workers: usize,
    /// Leadership lease (PostgreSQL store): a standby takes over this long after the leader's
    /// last renewal.
    pub lease: Duration,
    /// URL other coordinators, workers and clients reach this one at (default: the bound address).
    pub advertise_url: Option<String>,
    /// Serve HTTPS with these files (both PEM); plain HTTP without.
    pub tls: Option<TlsFiles>,
}

/// A certificate chain and its private key, both PEM files.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// The certificate chain, the server's own certificate first.
    pub cert: PathBuf,
    /// Its private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

impl Config {
    /// `https` when serving TLS, else `http`.
    pub fn scheme(&self) -> &'static str {
        if self.tls.is_some() {
            "https"
        } else {
            "http"
        }
    }

    /// How often each side sends a heartbeat: a quarter of the timeout, so three may be lost.
    pub fn heartbeat_interval(&self) -> Duration {
        self.heartbeat_timeout / 4
    }

    /// Resolves tokens: environment, then token files, then the data dir (generated on first start).
    pub fn tokens(&self) -> anyhow::Result<Option<Tokens>> {
        if self.insecure {
            return Ok(None);
        }
        Tokens::resolve(
            &self.data_dir,
            self.client_token_file.as_deref(),
            self.worker_token_file.as_deref(),
        )
        .map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_win_over_file() {
        let file: RawConfig =
            toml::from_str("bind = \"127.0.0.1:1\"\nheartbeat-timeout = 2.0").unwrap();
        let flags = RawConfig {
            bind: Some("127.0.0.1:2".into()),
            ..RawConfig::default()
        };
        let config = flags.over(file).validate().unwrap();
        assert_eq!(config.bind.port(), 2);
        assert_eq!(config.heartbeat_timeout, Duration::from_secs(2));
    }

    #[test]
    fn unknown_file_keys_are_refused() {
        assert!(toml::from_str::<RawConfig>("heartbeat = 2").is_err());
    }

    #[test]
    fn insecure_needs_loopback() {
        let raw = RawConfig {
            bind: Some("0.0.0.0:7070".into()),
            insecure: Some(true),
            ..RawConfig::default()
        };
        assert!(raw
            .validate()
            .unwrap_err()
            .to_string()
            .contains("non-loopback"));
    }
}
