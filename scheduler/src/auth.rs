//! Bearer tokens and roles. Clients and workers have different tokens: a worker token cannot submit
//! jobs and a client token cannot connect as a worker.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use actix_web::HttpRequest;

use crate::error::ApiError;

/// Who a token belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Submits and manages jobs.
    Client,
    /// Connects as a worker.
    Worker,
}

/// The two tokens.
#[derive(Clone)]
pub struct Tokens {
    client: String,
    worker: String,
    /// Files holding the tokens (when they came from files or were generated).
    pub client_file: Option<PathBuf>,
    /// Worker token file.
    pub worker_file: Option<PathBuf>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens").finish_non_exhaustive()
    }
}

/// Client token file name in the data dir.
pub const CLIENT_TOKEN_FILE: &str = "client.token";
/// Worker token file name in the data dir.
pub const WORKER_TOKEN_FILE: &str = "worker.token";

fn read_token(path: &Path) -> anyhow::Result<String> {
    let token = muster_worker::cli::read_token(path)?;
    if token.len() < 16 {
        anyhow::bail!("token in {} is shorter than 16 characters", path.display());
    }
    Ok(token)
}

fn generate() -> anyhow::Result<String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("no randomness for a token: {e}"))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// The token from `env`, else from `file`, else from `dir/name` (created with mode 0600 if absent).
fn one_token(
    env: &str,
    file: Option<&Path>,
    dir: &Path,
    name: &str,
) -> anyhow::Result<(String, Option<PathBuf>)> {
    if let Ok(token) = std::env::var(env) {
        let token = token.trim().to_owned();
        if token.len() < 16 {
            anyhow::bail!("{env} must hold at least 16 characters");
        }
        return Ok((token, None));
    }
    if let Some(path) = file {
        return Ok((read_token(path)?, Some(path.to_owned())));
    }
    let path = dir.join(name);
    if path.exists() {
        return Ok((read_token(&path)?, Some(path)));
    }
    crate::config::create_data_dir(dir)?;
    let token = generate()?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .map_err(|e| anyhow::anyhow!("cannot create token file {}: {e}", path.display()))?;
    writeln!(f, "{token}").map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
    Ok((token, Some(path)))
}

impl Tokens {
    /// Resolves both tokens (see [`crate::config::Config::tokens`]).
    pub fn resolve(
        dir: &Path,
        client_file: Option<&Path>,
        worker_file: Option<&Path>,
    ) -> anyhow::Result<Self> {
        let (client, client_file) =
            one_token("MUSTER_CLIENT_TOKEN", client_file, dir, CLIENT_TOKEN_FILE)?;
        let (worker, worker_file) =
            one_token("MUSTER_WORKER_TOKEN", worker_file, dir, WORKER_TOKEN_FILE)?;
        if client == worker {
            anyhow::bail!("the client and worker tokens must differ");
        }
        Ok(Self {
            client,
            worker,
            client_file,
            worker_file,
        })
    }

    /// The worker token (for workers started in-process by `muster up`).
    pub fn worker_token(&self) -> &str {
        &self.worker
    }

    fn role_of(&self, token: &str) -> Option<Role> {
        if constant_time_eq(token.as_bytes(), self.client.as_bytes()) {
            Some(Role::Client)
        } else if constant_time_eq(token.as_bytes(), self.worker.as_bytes()) {
            Some(Role::Worker)
        } else {
            None
        }
    }
}

/// Compares without an early exit, so response time does not leak how much of a token matched.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Checks that the request carries the token of `role` (always true when running insecure).
pub fn require(tokens: Option<&Tokens>, req: &HttpRequest, role: Role) -> Result<(), ApiError> {
    let Some(tokens) = tokens else {
        return Ok(());
    };
    let header = req
        .headers()
        .get(actix_web::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let token = match header.and_then(|h| h.strip_prefix("Bearer ")) {
        Some(t) => t.trim(),
        None => {
            return Err(ApiError::Unauthorized(
                "missing `Authorization: Bearer <token>` header".into(),
            ))
        }
    };
    match tokens.role_of(token) {
        Some(r) if r == role => Ok(()),
        Some(Role::Worker) => Err(ApiError::Forbidden(
            "a worker token cannot call the client API; use the client token".into(),
        )),
        Some(Role::Client) => Err(ApiError::Forbidden(
            "a client token cannot connect as a worker; use the worker token".into(),
        )),
        None => Err(ApiError::Unauthorized(
            "the bearer token is not valid".into(),
        )),
    }
}
