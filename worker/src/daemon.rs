//! The worker's outer loop: connect, serve, reconnect with backoff, until shutdown has drained.

use std::future::Future;

use tokio::sync::watch;
use tracing::{info, warn};

use crate::session::{SessionEnd, Worker};
use crate::{Tasks, WorkerConfig};

/// Why a worker stopped for good.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The worker was started without any coordinator address.
    #[error("no coordinator address given (use --scheduler URL or MUSTER_SCHEDULER)")]
    NoScheduler,
    /// The coordinator refused the token.
    #[error("coordinator at {url} refused the worker token (http {status}): check --token-file or MUSTER_WORKER_TOKEN")]
    Unauthorized {
        /// The endpoint that refused.
        url: String,
        /// 401 (missing or wrong token) or 403 (a client token).
        status: u16,
    },
    /// TLS cannot be set up (an unreadable `--ca-cert`).
    #[error("{0}")]
    Tls(String),
    /// The coordinator refused this worker (protocol version, invalid hello).
    #[error("coordinator at {url} refused this worker: {reason}")]
    Refused {
        /// The coordinator.
        url: String,
        /// Its reason.
        reason: String,
    },
}

/// Runs a worker until `shutdown` completes and the worker has drained.
///
/// Must run inside an actix (tokio) system. Returns an error only when reconnecting cannot help.
pub async fn run(
    config: WorkerConfig,
    tasks: Tasks,
    shutdown: impl Future<Output = ()> + 'static,
) -> Result<(), WorkerError> {
    if config.schedulers.is_empty() {
        return Err(WorkerError::NoScheduler);
    }
    let (stop_tx, stop_rx) = watch::channel(false);
    actix_rt::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let tasks = tasks.with_exec(&config.exec);
    let mut worker = Worker::new(config, tasks, stop_rx);
    let mut backoff = worker.config.reconnect_min;
    let mut next = 0usize;
    info!(worker = %worker.id, name = %worker.config.name, "worker starting");
    loop {
        if worker.shutting_down() {
            info!(worker = %worker.id, "shut down while disconnected");
            return Ok(());
        }
        let base = worker.config.schedulers[next % worker.config.schedulers.len()].clone();
        match worker.session(&base).await {
            SessionEnd::Drained => return Ok(()),
            SessionEnd::Fatal(e) => return Err(e),
            SessionEnd::Disconnected { reason, welcomed } => {
                if welcomed {
                    backoff = worker.config.reconnect_min;
                } else {
                    // Try the next coordinator address: the one we used may be a standby or gone.
                    next += 1;
                }
                warn!(worker = %worker.id, %reason, retry_in_ms = backoff.as_millis() as u64, "disconnected");
            }
        }
        let mut stop = worker.shutdown.clone();
        tokio::select! {
            _ = actix_rt::time::sleep(backoff) => {}
            _ = stop.wait_for(|s| *s) => {}
        }
        // Plain doubling without jitter: workers reconnect to their own coordinator, and the cap
        // keeps the longest wait short.
        backoff = (backoff * 2).min(worker.config.reconnect_max);
    }
}
