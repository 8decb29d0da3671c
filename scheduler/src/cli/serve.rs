//! `muster serve` and `muster up`.

use std::net::TcpListener;
use std::path::PathBuf;
use std::thread;

use clap::Args;
use muster_worker::cli::termination;
use muster_worker::{Tasks, WorkerConfig};
use tokio::sync::watch;

use super::CliError;
use crate::config::{Config, RawConfig};

/// Coordinator flags; each falls back to a `MUSTER_*` variable, then the `--config` file, then the
/// default.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on [default: 127.0.0.1:7070].
    #[arg(long, env = "MUSTER_BIND")]
    bind: Option<String>,
    /// Data directory: tokens, and state with a durable store [default: ./muster-data].
    #[arg(long, env = "MUSTER_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// File with the client token (else MUSTER_CLIENT_TOKEN, else generated in the data dir).
    #[arg(long)]
    client_token_file: Option<PathBuf>,
    /// File with the worker token (else MUSTER_WORKER_TOKEN, else generated in the data dir).
    #[arg(long)]
    worker_token_file: Option<PathBuf>,
    /// Seconds of worker silence before its chunks are re-queued [default: 5].
    #[arg(long, env = "MUSTER_HEARTBEAT_TIMEOUT")]
    heartbeat_timeout: Option<f64>,
    /// Largest request body in bytes [default: 67108864].
    #[arg(long, env = "MUSTER_MAX_BODY_BYTES")]
    max_body_bytes: Option<usize>,
    /// Largest WebSocket frame a worker may send, in bytes; a larger one closes its connection
    /// [default: 16777216].
    #[arg(long, env = "MUSTER_MAX_FRAME_BYTES")]
    max_frame_bytes: Option<usize>,
    /// Most slots one worker may announce; a worker asking for more is refused [default: 256].
    #[arg(long, env = "MUSTER_MAX_WORKER_SLOTS")]
    max_worker_slots: Option<u32>,
    /// Seconds a request body may take to arrive in full; a slower one gets 408 [default: 60].
    #[arg(long, env = "MUSTER_BODY_TIMEOUT")]
    body_timeout: Option<f64>,
    /// Unfinished chunks past which new jobs get 429 until the backlog drains
    /// [default: 10000000].
    #[arg(long, env = "MUSTER_MAX_PENDING_CHUNKS")]
    max_pending_chunks: Option<u64>,
    /// Uncommitted store batches past which new jobs get 429 [default: 10000].
    #[arg(long, env = "MUSTER_MAX_STORE_BACKLOG")]
    max_store_backlog: Option<u64>,
    /// Submissions waiting for the coordinator at once past which new ones get 429
    /// [default: 1024].
    #[arg(long, env = "MUSTER_MAX_QUEUED_SUBMISSIONS")]
    max_queued_submissions: Option<usize>,
    /// Seconds an ended job is kept (shown, its idempotency key matched) before it is pruned
    /// from memory and the store [default: 604800, 7 days].
    #[arg(long, env = "MUSTER_RETAIN_ENDED")]
    retain_ended: Option<f64>,
    /// Most ended jobs kept; past it the oldest are pruned [default: 100000].
    #[arg(long, env = "MUSTER_RETAIN_ENDED_JOBS")]
    retain_ended_jobs: Option<usize>,
    /// How deep sub-jobs (jobs that running chunks submit) may nest [default: 8].
    #[arg(long, env = "MUSTER_MAX_SUB_JOB_DEPTH")]
    max_sub_job_depth: Option<u32>,
    /// Most sub-jobs one job's chunks may submit in all [default: 10000].
    #[arg(long, env = "MUSTER_MAX_SUB_JOBS")]
    max_sub_jobs: Option<usize>,
    /// Seconds before a failed chunk's first retry; doubles per failure [default: 0.1].
    #[arg(long, env = "MUSTER_RETRY_BACKOFF")]
    retry_backoff: Option<f64>,
    /// Run without authentication (refused on a non-loopback address).
    #[arg(long)]
    insecure: bool,
    /// State store: `sqlite` (in the data dir), `memory` (nothing survives a restart), or
    /// postgres://USER@HOST:PORT/DB (shared by several coordinators, one leads) [default: sqlite].
    #[arg(long, env = "MUSTER_STORE")]
    store: Option<String>,
    /// HTTP worker threads [default: one per CPU].
    #[arg(long, env = "MUSTER_HTTP_WORKERS")]
    http_workers: Option<usize>,
    /// Leadership lease in seconds, PostgreSQL store only [default: 3].
    #[arg(long, env = "MUSTER_LEASE")]
    lease: Option<f64>,
    /// URL workers, clients and other coordinators reach this one at [default: http://BIND].
    #[arg(long, env = "MUSTER_ADVERTISE_URL")]
    advertise_url: Option<String>,
    /// Certificate chain (PEM, the server's certificate first) to serve HTTPS with; needs
    /// --tls-key.
    #[arg(long, env = "MUSTER_TLS_CERT")]
    tls_cert: Option<PathBuf>,
    /// Private key (PEM) of --tls-cert.
    #[arg(long, env = "MUSTER_TLS_KEY")]
    tls_key: Option<PathBuf>,
    /// TOML file with any of the settings above (kebab-case keys).
    #[arg(long, env = "MUSTER_CONFIG")]
    config: Option<PathBuf>,
}

impl ServeArgs {
    fn into_config(self) -> anyhow::Result<Config> {
        let file = match &self.config {
            Some(path) => RawConfig::from_file(path)?,
            None => RawConfig::default(),
        };
        let flags = RawConfig {
            bind: self.bind,
            data_dir: self.data_dir,
            client_token_file: self.client_token_file,
            worker_token_file: self.worker_token_file,
            heartbeat_timeout: self.heartbeat_timeout,
            max_body_bytes: self.max_body_bytes,
            max_frame_bytes: self.max_frame_bytes,
            max_worker_slots: self.max_worker_slots,
            body_timeout: self.body_timeout,
            max_pending_chunks: self.max_pending_chunks,
            max_store_backlog: self.max_store_backlog,
            max_queued_submissions: self.max_queued_submissions,
            retain_ended: self.retain_ended,
            retain_ended_jobs: self.retain_ended_jobs,
            max_sub_job_depth: self.max_sub_job_depth,
            max_sub_jobs: self.max_sub_jobs,
            retry_backoff: self.retry_backoff,
            insecure: self.insecure.then_some(true),
            store: self.store,
            http_workers: self.http_workers,
            lease: self.lease,
            advertise_url: self.advertise_url,
            tls_cert: self.tls_cert,
            tls_key: self.tls_key,
        };
        flags.over(file).validate()
    }
}

/// Binds the configured address, once the TLS files (if any) are known to be usable.
fn bind(config: &Config) -> Result<TcpListener, CliError> {
    if let Some(files) = &config.tls {
        crate::tls::server_config(files).map_err(|e| CliError::Usage(format!("{e:#}")))?;
    }
    TcpListener::bind(config.bind)
        .map_err(|e| CliError::Failed(format!("cannot listen on {}: {e}", config.bind)))
}

fn announce(listener: &TcpListener, config: &Config) -> Result<String, CliError> {
    let addr = listener
        .local_addr()
        .map_err(|e| CliError::Failed(format!("cannot read the bound address: {e}")))?;
    let url = format!("{}://{addr}", config.scheme());
    // A daemon goes on serving when nobody reads its standard output any more.
    let _ = super::say(&format!("muster listening on {url}"));
    if let Some(tokens) = config.tokens()? {
        if let Some(path) = &tokens.client_file {
            let _ = super::say(&format!("client token: {}", path.display()));
        }
        if let Some(path) = &tokens.worker_file {
            let _ = super::say(&format!("worker token: {}", path.display()));
        }
    }
    Ok(url)
}

/// `muster serve`.
pub fn serve(args: ServeArgs) -> Result<(), CliError> {
    let config = args.into_config()?;
    let listener = bind(&config)?;
    announce(&listener, &config)?;
    actix_rt::System::new()
        .block_on(crate::run(listener, config, termination()))
        .map_err(|e| CliError::Failed(format!("{e:#}")))
}

/// `muster up` flags.
#[derive(Debug, Args)]
pub struct UpArgs {
    /// Local workers to start.
    #[arg(long, default_value_t = 2)]
    workers: u32,
    /// Slots per local worker.
    #[arg(long, default_value_t = 1)]
    slots: u32,
    /// A program the local workers' `exec` jobs may run (in the current directory); repeatable,
    /// or comma-separated. None by default.
    #[arg(long = "allow-exec", value_delimiter = ',')]
    allow_exec: Vec<String>,
    #[command(flatten)]
    serve: ServeArgs,
}

/// `muster up`: a coordinator and local workers in this process, each worker with its own runtime
/// and its own WebSocket connection, exactly as remote workers would connect.
pub fn up(args: UpArgs) -> Result<(), CliError> {
    if args.workers == 0 || args.slots == 0 {
        return Err(CliError::Usage(
            "--workers and --slots must be at least 1".into(),
        ));
    }
    let config = args.serve.into_config()?;
    let listener = bind(&config)?;
    let url = announce(&listener, &config)?;
    let worker_token = config.tokens()?.map(|t| t.worker_token().to_owned());
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut threads = Vec::new();
    for i in 0..args.workers {
        let mut wc = WorkerConfig::new(vec![url.clone()]);
        wc.token = worker_token.clone();
        wc.slots = args.slots;
        wc.prefetch = args.slots * muster_worker::cli::PREFETCH_PER_SLOT;
        wc.name = format!("local-{}", i + 1);
        wc.exec.allow = args.allow_exec.clone();
        // Programs run where `muster up` was started (a checkout, say), as one would expect of a
        // local cluster.
        wc.exec.dir = std::env::current_dir().ok();
        // Over TLS, local workers trust MUSTER_CA_CERT, else the served certificate itself (a
        // self-signed one).
        wc.ca_cert = config.tls.as_ref().map(|tls| {
            std::env::var_os("MUSTER_CA_CERT").map_or_else(|| tls.cert.clone(), PathBuf::from)
        });
        let mut stop = stop_rx.clone();
        threads.push(thread::spawn(move || {
            let shutdown = async move {
                let _ = stop.wait_for(|s| *s).await;
            };
            actix_rt::System::new().block_on(muster_worker::run(wc, Tasks::builtin(), shutdown))
        }));
    }
    let _ = super::say(&format!(
        "started {} local workers with {} slot(s) each; press Ctrl-C to stop",
        args.workers, args.slots
    ));
    let coordinator_stop = async move {
        termination().await;
        let _ = stop_tx.send(true);
    };
    let served = actix_rt::System::new().block_on(crate::run(listener, config, coordinator_stop));
    for t in threads {
        if let Ok(Err(e)) = t.join() {
            eprintln!("muster: local worker: {e}");
        }
    }
    served.map_err(|e| CliError::Failed(format!("{e:#}")))
}
