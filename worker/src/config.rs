//! The worker's settings, already validated (the binary turns flags and environment into this).

use std::collections::BTreeMap;
use std::time::Duration;

/// How a worker connects and behaves.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Coordinator base URLs (`http://host:port`); the worker tries them in turn and stays with the
    /// one that accepts it.
    pub schedulers: Vec<String>,
    /// Worker token; `None` only against a coordinator started with `--insecure`.
    pub token: Option<String>,
    /// Name shown in `GET /v1/workers`.
    pub name: String,
    /// Chunks run at once.
    pub slots: u32,
    /// Chunks held queued beyond `slots`.
    pub prefetch: u32,
    /// Grow `prefetch` (up to 512 per slot) when chunks turn out to be short.
    pub adaptive_prefetch: bool,
    /// Labels jobs can require.
    pub labels: BTreeMap<String, String>,
    /// First wait before reconnecting; doubles up to `reconnect_max`.
    pub reconnect_min: Duration,
    /// Longest wait between reconnects.
    pub reconnect_max: Duration,
    /// On shutdown, how long running chunks may take before they are handed back.
    pub drain_timeout: Duration,
    /// The coordinator is presumed gone after this long without any frame from it.
    pub coordinator_timeout: Duration,
    /// CA certificates (PEM) trusted for `https://` coordinators, instead of the web's public
    /// roots (see [`crate::tls`]).
    pub ca_cert: Option<std::path::PathBuf>,
    /// What `exec` batches may run here (nothing by default).
    pub exec: crate::ExecSettings,
}

impl WorkerConfig {
    /// Defaults: one slot per CPU, name from the host name and process id.
    pub fn new(schedulers: Vec<String>) -> Self {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
        Self {
            schedulers,
            token: None,
            name: default_name(),
            slots: cpus,
            prefetch: cpus * crate::cli::PREFETCH_PER_SLOT,
            adaptive_prefetch: true,
            labels: BTreeMap::new(),
            reconnect_min: Duration::from_millis(100),
            reconnect_max: Duration::from_secs(5),
            drain_timeout: Duration::from_secs(30),
            coordinator_timeout: Duration::from_secs(15),
            ca_cert: None,
            exec: crate::ExecSettings::default(),
        }
    }
}

fn default_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "worker".to_owned());
    format!("{host}-{}", std::process::id())
}
