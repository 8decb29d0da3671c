//! The worker's command line, shared by `muster-worker` and custom workers built on this library.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

use crate::{Tasks, WorkerConfig};

/// Default chunks held queued per slot.
pub const PREFETCH_PER_SLOT: u32 = 4;

/// Where `muster serve` keeps its data by default; a worker on the same machine finds its token there.
pub const DEFAULT_DATA_DIR: &str = "muster-data";

/// `muster-worker` flags. Precedence: flags, then `MUSTER_*` environment variables, then the
/// `--config` file, then defaults.
#[derive(Debug, Parser)]
#[command(version, about = "Muster worker daemon: runs chunks for a coordinator")]
pub struct WorkerArgs {
    /// Coordinator URL; repeat the flag or separate with commas to give several coordinators.
    /// (Default: http://127.0.0.1:7070.)
    #[arg(long = "scheduler", env = "MUSTER_SCHEDULER", value_delimiter = ',')]
    pub schedulers: Vec<String>,
    /// A TOML file of settings, with the flags' names as keys (`allow-exec = ["pytest"]`,
    /// `labels = { gpu = "a100" }`); flags and environment variables win over it.
    #[arg(long, env = "MUSTER_WORKER_CONFIG")]
    pub config: Option<PathBuf>,
    /// File holding the worker token (else MUSTER_WORKER_TOKEN, else ./muster-data/worker.token).
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// CA certificates (PEM) to trust for an https:// coordinator, instead of the web's public
    /// roots (a coordinator with a self-signed certificate: that certificate).
    #[arg(long, env = "MUSTER_CA_CERT")]
    pub ca_cert: Option<PathBuf>,
    /// Chunks run at once (default: one per CPU).
    #[arg(long, env = "MUSTER_SLOTS")]
    pub slots: Option<u32>,
    /// Chunks held queued beyond the slots, so the next one is at hand when a slot frees.
    /// Default: 4 per slot (Celery's prefetch multiplier), growing up to 512 per slot while chunks
    /// take well under a millisecond; a value given here is fixed (0 turns prefetching off).
    #[arg(long, env = "MUSTER_PREFETCH")]
    pub prefetch: Option<u32>,
    /// Name shown in `muster workers` (default: host name and process id).
    #[arg(long, env = "MUSTER_WORKER_NAME")]
    pub name: Option<String>,
    /// A label jobs can require, as key=value; repeatable.
    #[arg(long = "label", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
    /// Seconds running chunks get to finish on SIGTERM before they are handed back (default 30).
    #[arg(long, env = "MUSTER_DRAIN_TIMEOUT")]
    pub drain_timeout: Option<f64>,
    /// Longest wait between reconnect attempts, in seconds (default 5).
    #[arg(long, env = "MUSTER_RECONNECT_MAX")]
    pub reconnect_max: Option<f64>,
    /// A program `exec` jobs may run here (a name looked up in PATH, or a path); repeatable, or
    /// comma-separated. None by default: the worker runs no program.
    #[arg(long = "allow-exec", env = "MUSTER_ALLOW_EXEC", value_delimiter = ',')]
    pub allow_exec: Vec<String>,
    /// Directory `exec` programs run in, such as a checkout (default: a fresh scratch directory
    /// per attempt).
    #[arg(long, env = "MUSTER_EXEC_DIR")]
    pub exec_dir: Option<PathBuf>,
    /// An environment variable passed on to `exec` programs besides PATH, HOME and LANG;
    /// repeatable.
    #[arg(long = "exec-env")]
    pub exec_env: Vec<String>,
    /// Log lines as text, or as JSON objects for a log collector.
    #[arg(long, env = "MUSTER_LOG_FORMAT", value_enum, default_value_t)]
    pub log_format: LogFormat,
}

/// The `--config` file: the flags' settings, by their names.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct ConfigFile {
    scheduler: Option<Vec<String>>,
    token_file: Option<PathBuf>,
    ca_cert: Option<PathBuf>,
    slots: Option<u32>,
    prefetch: Option<u32>,
    name: Option<String>,
    labels: Option<BTreeMap<String, String>>,
    drain_timeout: Option<f64>,
    reconnect_max: Option<f64>,
    allow_exec: Option<Vec<String>>,
    exec_dir: Option<PathBuf>,
    exec_env: Option<Vec<String>>,
}

impl WorkerArgs {
    /// These flags over the settings of the `--config` file, if one is given.
    fn over_config_file(mut self) -> anyhow::Result<Self> {
        let Some(path) = &self.config else {
            return Ok(self);
        };
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
        let file: ConfigFile = toml::from_str(&text)
            .map_err(|e| anyhow::anyhow!("{}: {}", path.display(), e.message()))?;
        fn list(flags: &mut Vec<String>, file: Option<Vec<String>>) {
            if flags.is_empty() {
                *flags = file.unwrap_or_default();
            }
        }
        list(&mut self.schedulers, file.scheduler);
        list(&mut self.allow_exec, file.allow_exec);
        list(&mut self.exec_env, file.exec_env);
        if self.labels.is_empty() {
            self.labels = file.labels.unwrap_or_default().into_iter().collect();
        }
        self.token_file = self.token_file.or(file.token_file);
        self.ca_cert = self.ca_cert.or(file.ca_cert);
        self.slots = self.slots.or(file.slots);
        self.prefetch = self.prefetch.or(file.prefetch);
        self.name = self.name.or(file.name);
        self.drain_timeout = self.drain_timeout.or(file.drain_timeout);
        self.reconnect_max = self.reconnect_max.or(file.reconnect_max);
        self.exec_dir = self.exec_dir.or(file.exec_dir);
        Ok(self)
    }
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("label `{s}` must look like key=value")),
    }
}

fn seconds(flag: &str, v: f64) -> anyhow::Result<Duration> {
    if !(v.is_finite() && v >= 0.0) {
        anyhow::bail!("--{flag} must be a number of seconds, got {v}");
    }
    Ok(Duration::from_secs_f64(v))
}

/// Reads a token file, refusing an empty one, and, as ssh refuses a private key others can read,
/// one whose mode lets its group or others read or write it: a token is a password.
pub fn read_token(path: &Path) -> anyhow::Result<String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path)
        .map_err(|e| anyhow::anyhow!("cannot read token file {}: {e}", path.display()))?
        .permissions()
        .mode()
        & 0o777;
    if mode & 0o077 != 0 {
        anyhow::bail!(
            "token file {} is open to other users (mode {mode:04o}): run `chmod 600 {}`",
            path.display(),
            path.display()
        );
    }
    let token = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("cannot read token file {}: {e}", path.display()))?;
    let token = token.trim().to_owned();
    if token.is_empty() {
        anyhow::bail!("token file {} is empty", path.display());
    }
    Ok(token)
}

/// Cleans coordinator addresses (spaces, trailing slashes, empty entries) and checks each is an
/// http(s) URL; at least one must remain.
pub fn coordinator_urls(raw: &[String]) -> anyhow::Result<Vec<String>> {
    let urls: Vec<String> = raw
        .iter()
        .map(|s| s.trim().trim_end_matches('/').to_owned())
        .filter(|s| !s.is_empty())
        .collect();
    for s in &urls {
        if !(s.starts_with("http://") || s.starts_with("https://")) {
            anyhow::bail!("--scheduler `{s}` must be an http:// or https:// URL");
        }
    }
    if urls.is_empty() {
        anyhow::bail!("no coordinator address: give --scheduler URL or MUSTER_SCHEDULER");
    }
    Ok(urls)
}

/// The addresses among `urls` a bearer token would reach unencrypted over a network: plain
/// `http://` to a host that is not this machine's loopback.
pub fn plain_http_remote(urls: &[String]) -> Vec<&str> {
    urls.iter()
        .map(String::as_str)
        .filter(|url| {
            let Some(rest) = url.strip_prefix("http://") else {
                return false;
            };
            let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
            let host = match authority.strip_prefix('[') {
                Some(v6) => v6.split(']').next().unwrap_or(""),
                None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
            };
            let loopback = host.eq_ignore_ascii_case("localhost")
                || host
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback());
            !loopback
        })
        .collect()
}

/// The warning for a token about to travel unencrypted to `url`.
pub fn plain_http_warning(url: &str) -> String {
    format!(
        "the token will travel unencrypted to {url}: anyone on the network between can read it; serve the coordinator over https (--tls-cert) on networks you do not trust"
    )
}

impl WorkerArgs {
    /// Validates the flags into a [`WorkerConfig`].
    pub fn into_config(self) -> anyhow::Result<WorkerConfig> {
        let mut this = self.over_config_file()?;
        if this.schedulers.is_empty() {
            this.schedulers = vec!["http://127.0.0.1:7070".to_owned()];
        }
        let schedulers = coordinator_urls(&this.schedulers)?;
        for url in plain_http_remote(&schedulers) {
            tracing::warn!("{}", plain_http_warning(url));
        }
        let mut config = WorkerConfig::new(schedulers);
        // A bad CA file is an error at start, not at each connection attempt.
        crate::tls::client_config(this.ca_cert.as_deref()).map_err(anyhow::Error::msg)?;
        config.ca_cert = this.ca_cert;
        config.token = match (&this.token_file, std::env::var("MUSTER_WORKER_TOKEN")) {
            (Some(path), _) => Some(read_token(path)?),
            (None, Ok(token)) if !token.trim().is_empty() => Some(token.trim().to_owned()),
            _ => {
                let default = Path::new(DEFAULT_DATA_DIR).join("worker.token");
                default.exists().then(|| read_token(&default)).transpose()?
            }
        };
        if let Some(slots) = this.slots {
            if slots == 0 || slots > 4096 {
                anyhow::bail!("--slots must be from 1 to 4096, got {slots}");
            }
            config.slots = slots;
        }
        config.adaptive_prefetch = this.prefetch.is_none();
        config.prefetch = match this.prefetch {
            Some(p) if p > 65_536 => anyhow::bail!("--prefetch must be at most 65536, got {p}"),
            Some(p) => p,
            None => config.slots.saturating_mul(PREFETCH_PER_SLOT),
        };
        if let Some(name) = this.name {
            config.name = name;
        }
        config.labels = this.labels.into_iter().collect::<BTreeMap<_, _>>();
        if let Some(bad) = this
            .allow_exec
            .iter()
            .find(|p| p.is_empty() || p.len() > 120 || p.contains(','))
        {
            anyhow::bail!("--allow-exec `{bad}` must be a program name or path of 1 to 120 bytes");
        }
        if let Some(dir) = &this.exec_dir {
            if !dir.is_dir() {
                anyhow::bail!("--exec-dir {} is not a directory", dir.display());
            }
        }
        config.exec.allow = this.allow_exec;
        config.exec.dir = this.exec_dir;
        config.exec.env = this.exec_env;
        config.drain_timeout = seconds("drain-timeout", this.drain_timeout.unwrap_or(30.0))?;
        config.reconnect_max =
            seconds("reconnect-max", this.reconnect_max.unwrap_or(5.0))?.max(config.reconnect_min);
        Ok(config)
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// For people: a line of text each.
    #[default]
    Text,
    /// For log collectors: a JSON object each, its fields (`job_id`, `chunk`...) under
    /// `fields`.
    Json,
}

/// Sets up logging from `RUST_LOG` (default `info`) on stderr, in `format`.
pub fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init(),
        LogFormat::Json => builder.json().with_ansi(false).try_init(),
    };
}

/// Resolves when the process gets SIGTERM or SIGINT.
pub async fn termination() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => std::future::pending::<()>().await,
    }
}

/// Runs a worker with `tasks` from parsed flags; the whole `main` of a worker binary.
pub fn main_with(tasks: Tasks, args: WorkerArgs) -> ExitCode {
    init_tracing(args.log_format);
    let config = match args.into_config() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("muster-worker: {e:#}");
            return ExitCode::from(2);
        }
    };
    let system = actix_rt::System::new();
    match system.block_on(crate::run(config, tasks, termination())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("muster-worker: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_http_to_another_host_is_flagged() {
        let urls: Vec<String> = [
            "http://127.0.0.1:7070",
            "http://localhost:7070",
            "http://[::1]:7070/",
            "https://coordinator:7070",
            "http://coordinator:7070",
            "http://10.0.0.5",
            "http://[fd00::1]:7070",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(
            plain_http_remote(&urls),
            [
                "http://coordinator:7070",
                "http://10.0.0.5",
                "http://[fd00::1]:7070"
            ]
        );
    }
}
