//! The Muster coordinator: accepts jobs over REST, splits them into chunks, places the chunks on
//! connected workers, retries failed chunks elsewhere, and merges the partial results.
//!
//! # Layout
//! - [`coordinator`]: the coordinator actor, owner of all job and worker state.
//! - [`worker_session`]: one actor per connected worker (WebSocket, heartbeats).
//! - [`state`]: the plain, synchronous state the coordinator drives: jobs and their chunk state
//!   machines, the chunk queue, placement, the retry policy.
//! - [`store`]: the `Store` trait every state change goes through, and its implementations.
//! - [`records`]: the records the state and the store share (job descriptions, attempt records,
//!   job ends, what is written and read back).
//! - [`api`]: HTTP routes (REST under `/v1`, the worker endpoint, `/healthz`).
//! - [`auth`]: bearer tokens and roles. [`error`]: the error type and its problem+json form.
//! - [`config`]: raw configuration layers and the validated [`config::Config`].
//! - [`cli`]: the `muster` command line (coordinator, local cluster, client commands).
//!
//! [`run`] takes a listener the caller bound, so tests bind `127.0.0.1:0`.

pub mod api;
pub mod auth;
pub mod cli;
pub mod config;
pub mod coordinator;
pub mod error;
pub mod leader;
pub mod records;
pub mod state;
pub mod store;
mod tls;
pub mod worker_session;

use std::future::Future;
use std::net::TcpListener;
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::{Arc, RwLock};

use actix::{Actor, Arbiter};
use actix_web::{web, App, HttpServer};
use tracing::{info, warn};

use crate::api::AppState;
use crate::config::{Config, StoreChoice};
use crate::coordinator::{Coordinator, Persistence, Shutdown};
use crate::leader::{Leadership, LeaseConfig};
use crate::state::{ClusterState, Policy};
use crate::store::{MemoryStore, Store};

/// How long in-flight requests get to finish once shutdown starts.
const SHUTDOWN_GRACE_SECS: u64 = 5;

/// Opens the configured store; `epoch` is the fencing epoch this coordinator leads with.
fn open_store(config: &Config, epoch: i64) -> anyhow::Result<Box<dyn Store>> {
    Ok(match &config.store {
        StoreChoice::Memory => {
            warn!("using the in-memory store: jobs do not survive a coordinator restart");
            Box::new(MemoryStore::new())
        }
        StoreChoice::Sqlite => {
            config::create_data_dir(&config.data_dir)?;
            let path = config.data_dir.join(config::SQLITE_FILE);
            info!(path = %path.display(), "using the sqlite store");
            store::open_sqlite(&path)?
        }
        StoreChoice::Postgres(url) => {
            info!(url = %store::redact_url(url), epoch, "using the postgres store");
            store::open_postgres(url, epoch)?
        }
    })
}

/// Runs a coordinator on `listener` until `shutdown` completes; then it stops accepting, closes
/// worker connections, commits the store and returns. With a PostgreSQL store it first serves as a
/// standby until it wins the leadership lease, and returns an error if it later loses it. Must run
/// inside an actix system.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + 'static,
) -> anyhow::Result<()> {
    let tokens = config.tokens()?;
    if tokens.is_none() {
        warn!("running with --insecure: every endpoint is open to anyone who can reach it");
    }
    if tokens.is_some() && config.tls.is_none() && !listener.local_addr()?.ip().is_loopback() {
        warn!("serving plain http on a network address: tokens and job data travel unencrypted; configure --tls-cert and --tls-key on networks you do not trust");
    }
    let address = match &config.advertise_url {
        Some(url) => url.clone(),
        None => format!("{}://{}", config.scheme(), listener.local_addr()?),
    };
    let leadership = match &config.store {
        StoreChoice::Postgres(url) => Leadership::compete(LeaseConfig {
            url: url.clone(),
            duration: config.lease,
            address,
        }),
        _ => Leadership::solo(),
    };
    let app = web::Data::new(AppState {
        coordinator: RwLock::new(None),
        leadership: leadership.clone(),
        tokens,
        max_body_bytes: config.max_body_bytes,
        body_timeout: config.body_timeout,
        max_queued_submissions: config.max_queued_submissions,
        max_pending_chunks: config.max_pending_chunks,
        unfinished: Arc::new(AtomicU64::new(0)),
        queued_submissions: AtomicUsize::new(0),
        max_frame_bytes: config.max_frame_bytes,
        heartbeat_timeout: config.heartbeat_timeout,
        next_session: AtomicU64::new(1),
        capacity: Arc::new(AtomicU64::new(0)),
        bodies: api::BodyPool::default(),
    });
    let routes = app.clone();
    let server =
        HttpServer::new(move || App::new().app_data(routes.clone()).configure(api::routes))
            .workers(config.http_workers)
            .disable_signals()
            .shutdown_timeout(SHUTDOWN_GRACE_SECS);
    let server = match &config.tls {
        Some(files) => server.listen_rustls_0_23(listener, tls::server_config(files)?)?,
        None => server.listen(listener)?,
    }
    .run();
    let handle = server.handle();
    let served = actix_rt::spawn(server);
    let mut shutdown = Box::pin(shutdown);

    let epoch = tokio::select! {
        epoch = leadership.until_leader() => epoch,
        _ = &mut shutdown => {
            info!("shutdown requested while standing by");
            handle.stop(true).await;
            let _ = served.await;
            return Ok(());
        }
    };
    let mut store = open_store(&config, epoch)?;
    let snapshot = store.load()?;
    let mut state = ClusterState::new(Policy {
        retry_backoff: config.retry_backoff,
        max_worker_slots: config.max_worker_slots,
        max_pending_chunks: config.max_pending_chunks,
        max_store_backlog: config.max_store_backlog,
        retain_ended: config.retain_ended,
        retain_ended_jobs: config.retain_ended_jobs,
        max_sub_job_depth: config.max_sub_job_depth,
        max_sub_jobs: config.max_sub_jobs,
        ..Policy::default()
    });
    state.restore(snapshot);
    // What the restore wrote (interrupted attempts, merged ends, pruned jobs) is durable before
    // anything is served.
    let mut persistence = Persistence::new(store);
    persistence.apply(state.take_writes());
    persistence.sync();
    if let Some(reason) = persistence.take_stop() {
        anyhow::bail!("{reason}");
    }
    state.publish_capacity_to(app.capacity.clone());
    state.publish_unfinished_to(app.unfinished.clone());
    let (fatal_tx, mut fatal_rx) = tokio::sync::mpsc::unbounded_channel();
    let interval = config.heartbeat_interval();
    // The coordinator gets a thread of its own so that HTTP and socket work never delays it.
    let arbiter = Arbiter::new();
    let coordinator = Coordinator::start_in_arbiter(&arbiter.handle(), move |_| {
        Coordinator::new(state, persistence, interval, fatal_tx)
    });
    *app.coordinator.write().unwrap_or_else(|p| p.into_inner()) = Some(coordinator.clone());

    let outcome = tokio::select! {
        _ = &mut shutdown => {
            info!("shutdown requested: no longer accepting work");
            let _ = coordinator.send(Shutdown).await;
            Ok(())
        }
        _ = leadership.until_deposed() => {
            Err(anyhow::anyhow!("lost leadership: another coordinator took the lease, or it could not be renewed in time"))
        }
        Some(reason) = fatal_rx.recv() => Err(anyhow::anyhow!("{reason}")),
    };
    app.coordinator
        .write()
        .unwrap_or_else(|p| p.into_inner())
        .take();
    handle.stop(outcome.is_ok()).await;
    let _ = served.await;
    arbiter.stop();
    let _ = arbiter.join();
    info!("coordinator stopped");
    outcome
}
