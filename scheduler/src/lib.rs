//! The Muster coordinator: accepts jobs over REST, splits them into chunks, places the chunks on
//! connected workers, retries failed chunks elsewhere, and merges the partial results.
//!
//! # Layout
//! - [`coordinator`]: the coordinator actor, owner of all job and worker state.
//! - [`worker_session`]: one actor per connected worker (WebSocket, heartbeats).
//! - [`state`]: the plain, synchronous state the coordinator drives: jobs and their chunk state
//!   machines, the chunk queue, placement, the retry policy.
//! - [`store`]: the `Store` trait every state change goes through, and its implementations.
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
pub mod state;
pub mod store;
pub mod worker_session;

use std::future::Future;
use std::net::TcpListener;
use std::sync::atomic::AtomicU64;

use actix::{Actor, Arbiter};
use actix_web::{web, App, HttpServer};
use tracing::{info, warn};

use crate::api::AppState;
use crate::config::{Config, StoreChoice};
use crate::coordinator::{Coordinator, Shutdown};
use crate::state::{ClusterState, Policy};
use crate::store::{MemoryStore, SqliteStore, Store};

/// How long in-flight requests get to finish once shutdown starts.
const SHUTDOWN_GRACE_SECS: u64 = 5;

/// Runs a coordinator on `listener` until `shutdown` completes; then it stops accepting, closes
/// worker connections, flushes the store and returns. Must run inside an actix system.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + 'static,
) -> anyhow::Result<()> {
    let tokens = config.tokens()?;
    if tokens.is_none() {
        warn!("running with --insecure: every endpoint is open to anyone who can reach it");
    }
    let store: Box<dyn Store> = match config.store {
        StoreChoice::Memory => {
            warn!("using the in-memory store: jobs do not survive a coordinator restart");
            Box::new(MemoryStore::new())
        }
        StoreChoice::Sqlite => {
            std::fs::create_dir_all(&config.data_dir).map_err(|e| {
                anyhow::anyhow!("cannot create data dir {}: {e}", config.data_dir.display())
            })?;
            let path = config.data_dir.join(config::SQLITE_FILE);
            info!(path = %path.display(), "using the sqlite store");
            Box::new(SqliteStore::open(&path)?)
        }
    };
    let mut state = ClusterState::new(
        store,
        Policy {
            retry_backoff: config.retry_backoff,
        },
    );
    state.restore()?;
    let interval = config.heartbeat_interval();
    // The coordinator gets a thread of its own so that HTTP and socket work never delays it.
    let arbiter = Arbiter::new();
    let coordinator = Coordinator::start_in_arbiter(&arbiter.handle(), move |_| {
        Coordinator::new(state, interval)
    });
    let app = web::Data::new(AppState {
        coordinator: coordinator.clone(),
        tokens,
        max_body_bytes: config.max_body_bytes,
        heartbeat_timeout: config.heartbeat_timeout,
        next_session: AtomicU64::new(1),
    });
    let server = HttpServer::new(move || App::new().app_data(app.clone()).configure(api::routes))
        .workers(config.http_workers)
        .disable_signals()
        .shutdown_timeout(SHUTDOWN_GRACE_SECS)
        .listen(listener)?
        .run();
    let handle = server.handle();
    let stopper = coordinator.clone();
    actix_rt::spawn(async move {
        shutdown.await;
        info!("shutdown requested: no longer accepting work");
        let _ = stopper.send(Shutdown).await;
        handle.stop(true).await;
    });
    server.await?;
    arbiter.stop();
    let _ = arbiter.join();
    info!("coordinator stopped");
    Ok(())
}
