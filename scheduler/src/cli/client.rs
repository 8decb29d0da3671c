//! The HTTP client behind the client commands, and `status`, `result`, `cancel`, `jobs`, `workers`.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Duration;

use awc::http::StatusCode;
use clap::Args;
use serde_json::Value;

use super::{say, CliError};
use crate::auth::CLIENT_TOKEN_FILE;
use crate::config::DEFAULT_DATA_DIR;

/// Flags every client command takes.
#[derive(Debug, Clone, Args)]
pub struct ClientArgs {
    /// Coordinator URL; repeat or separate with commas to give several.
    #[arg(
        long = "scheduler",
        env = "MUSTER_SCHEDULER",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:7070",
        global = true
    )]
    pub schedulers: Vec<String>,
    /// File with the client token (else MUSTER_TOKEN, else ./muster-data/client.token).
    #[arg(long, global = true)]
    pub token_file: Option<PathBuf>,
    /// CA certificates (PEM) to trust for an https:// coordinator, instead of the web's public
    /// roots (a coordinator with a self-signed certificate: that certificate).
    #[arg(long, env = "MUSTER_CA_CERT", global = true)]
    pub ca_cert: Option<PathBuf>,
    /// Machine-readable JSON output.
    #[arg(long, global = true)]
    pub json: bool,
}

/// Just the common flags.
#[derive(Debug, Args)]
pub struct ClientOnly {
    #[command(flatten)]
    pub client: ClientArgs,
}

/// A job id plus the common flags.
#[derive(Debug, Args)]
pub struct IdArgs {
    /// Job id.
    pub id: String,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// `muster result`.
#[derive(Debug, Args)]
pub struct ResultArgs {
    /// Job id.
    pub id: String,
    /// Wait up to this many seconds for the job to finish.
    #[arg(long)]
    pub wait: Option<f64>,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// `muster jobs`.
#[derive(Debug, Args)]
pub struct JobsArgs {
    /// Only jobs with this status.
    #[arg(long)]
    pub status: Option<String>,
    /// At most this many.
    #[arg(long, default_value_t = 50)]
    pub limit: usize,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// An answer from the coordinator.
#[derive(Debug)]
pub struct Reply {
    /// HTTP status.
    pub status: StatusCode,
    /// Parsed body (problem+json for errors).
    pub body: Value,
    /// Where a standby's redirect points.
    pub location: Option<String>,
}

/// How long a client keeps trying while coordinators answer that they stand by.
const FOLLOW_LEADER_FOR: Duration = Duration::from_secs(15);

impl Reply {
    /// True for a standby's refusal (no leader known, or a redirect not followed).
    pub fn is_standby_refusal(&self) -> bool {
        self.status == StatusCode::TEMPORARY_REDIRECT
            || (self.status == StatusCode::SERVICE_UNAVAILABLE
                && self.body.get("title").and_then(Value::as_str) == Some("not the leader"))
    }

    /// The problem's `detail` with the status, for a one-line error.
    pub fn problem(&self) -> String {
        let detail = self
            .body
            .get("detail")
            .and_then(Value::as_str)
            .map_or_else(|| self.body.to_string(), str::to_owned);
        format!("{detail} (http {})", self.status.as_u16())
    }
}

/// A client for the REST API that tries each coordinator address in turn.
pub struct Client {
    bases: Vec<String>,
    token: Option<String>,
    http: awc::Client,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("bases", &self.bases)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// A client from the common flags; must be used inside an actix system.
    pub fn new(args: &ClientArgs) -> Result<Self, CliError> {
        let bases = muster_worker::cli::coordinator_urls(&args.schedulers)?;
        for url in muster_worker::cli::plain_http_remote(&bases) {
            eprintln!(
                "muster: warning: {}",
                muster_worker::cli::plain_http_warning(url)
            );
        }
        let token = match (&args.token_file, std::env::var("MUSTER_TOKEN")) {
            (Some(path), _) => Some(muster_worker::cli::read_token(path)?),
            (None, Ok(t)) if !t.trim().is_empty() => Some(t.trim().to_owned()),
            _ => {
                let default = Path::new(DEFAULT_DATA_DIR).join(CLIENT_TOKEN_FILE);
                default
                    .exists()
                    .then(|| muster_worker::cli::read_token(&default))
                    .transpose()?
            }
        };
        // Redirects are followed by hand: awc drops the token when following one to another port.
        let tls =
            muster_worker::tls::client_config(args.ca_cert.as_deref()).map_err(CliError::Usage)?;
        let http = awc::Client::builder()
            .connector(awc::Connector::new().rustls_0_23(tls))
            .timeout(Duration::from_secs(600))
            .disable_redirects()
            .finish();
        Ok(Self { bases, token, http })
    }

    /// Sends a request to the first coordinator that answers.
    pub async fn call(
        &self,
        method: awc::http::Method,
        path: &str,
        body: Option<(bytes::Bytes, Option<&str>)>,
    ) -> Result<Reply, CliError> {
        let deadline = std::time::Instant::now() + FOLLOW_LEADER_FOR;
        loop {
            let mut last_error = String::new();
            let mut standby = false;
            for base in &self.bases {
                let mut answer = self.call_one(base, method.clone(), path, &body).await;
                // A standby names the leader: ask it there, once, if it is one of the configured
                // coordinators (the token goes nowhere else).
                let named = answer.as_ref().ok().and_then(|r| r.location.clone());
                if let Some(location) = named {
                    match leader_to_follow(&self.bases, &location, path) {
                        Some(leader) => {
                            answer = self.call_one(&leader, method.clone(), path, &body).await;
                        }
                        None => {
                            last_error = format!(
                                "the standby at {base} names the leader at {location}, which is not a configured coordinator: the token is not sent there (add its address to --scheduler / MUSTER_SCHEDULER)"
                            );
                            continue;
                        }
                    }
                }
                match answer {
                    Ok(reply) if reply.is_standby_refusal() => {
                        standby = true;
                        last_error = reply.problem();
                    }
                    Ok(reply) => return Ok(reply),
                    Err(e) => last_error = e,
                }
            }
            // Only a coordinator that says it stands by makes waiting worthwhile: a leader is being
            // chosen. Unreachable addresses alone fail at once.
            if !standby || std::time::Instant::now() >= deadline {
                return Err(CliError::Failed(last_error));
            }
            actix_rt::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn call_one(
        &self,
        base: &str,
        method: awc::http::Method,
        path: &str,
        body: &Option<(bytes::Bytes, Option<&str>)>,
    ) -> Result<Reply, String> {
        let mut req = self.http.request(method, format!("{base}{path}"));
        if let Some(token) = &self.token {
            req = req.bearer_auth(token);
        }
        let sent = match body {
            Some((bytes, key)) => {
                req = req.content_type("application/json");
                if let Some(key) = key {
                    req = req.insert_header(("Idempotency-Key", *key));
                }
                req.send_body(bytes.clone()).await
            }
            None => req.send().await,
        };
        let mut response = sent.map_err(|e| format!("cannot reach {base}: {e}"))?;
        let bytes = response
            .body()
            .limit(1 << 30)
            .await
            .map_err(|e| format!("cannot read the answer of {base}: {e}"))?;
        let xml = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|t| t.starts_with("application/xml"));
        let body = if bytes.is_empty() {
            Value::Null
        } else if xml {
            // A document (a JUnit report), handed on as text.
            Value::String(String::from_utf8_lossy(&bytes).into_owned())
        } else {
            serde_json::from_slice(&bytes)
                .map_err(|e| format!("{base} answered something that is not json: {e}"))?
        };
        let location = (response.status() == StatusCode::TEMPORARY_REDIRECT)
            .then(|| {
                response
                    .headers()
                    .get("location")
                    .and_then(|l| l.to_str().ok())
                    .map(str::to_owned)
            })
            .flatten();
        Ok(Reply {
            status: response.status(),
            body,
            location,
        })
    }

    /// Opens a server-sent event stream at `path` on the first coordinator that answers 200
    /// (following a standby to a configured leader), resuming after event `after`.
    pub async fn stream(
        &self,
        path: &str,
        after: Option<&str>,
    ) -> Result<
        awc::ClientResponse<
            impl futures_util::Stream<Item = Result<bytes::Bytes, awc::error::PayloadError>>,
        >,
        CliError,
    > {
        let mut last_error = String::from("no coordinator configured");
        for base in &self.bases {
            let mut url = format!("{base}{path}");
            for _ in 0..2 {
                let mut req = self.http.get(&url).timeout(Duration::from_secs(24 * 3600));
                if let Some(token) = &self.token {
                    req = req.bearer_auth(token);
                }
                if let Some(id) = after {
                    req = req.insert_header(("Last-Event-ID", id));
                }
                let mut response = match req.send().await {
                    Ok(response) => response,
                    Err(e) => {
                        last_error = format!("cannot reach {base}: {e}");
                        break;
                    }
                };
                let status = response.status();
                if status.is_success() {
                    return Ok(response);
                }
                let location = response
                    .headers()
                    .get("location")
                    .and_then(|l| l.to_str().ok())
                    .and_then(|l| leader_to_follow(&self.bases, l, path));
                match (status == StatusCode::TEMPORARY_REDIRECT, location) {
                    (true, Some(leader)) => url = format!("{leader}{path}"),
                    _ => {
                        let body = response.body().limit(1 << 20).await.unwrap_or_default();
                        let reply = Reply {
                            status,
                            body: serde_json::from_slice(&body).unwrap_or(Value::Null),
                            location: None,
                        };
                        return Err(CliError::Failed(reply.problem()));
                    }
                }
            }
        }
        Err(CliError::NotRun(last_error))
    }

    /// GET that must succeed.
    pub async fn get_ok(&self, path: &str) -> Result<Value, CliError> {
        let reply = self.call(awc::http::Method::GET, path, None).await?;
        if !reply.status.is_success() {
            return Err(CliError::Failed(reply.problem()));
        }
        Ok(reply.body)
    }
}

/// Runs a client command in an actix system.
pub fn block_on<F: std::future::Future<Output = Result<(), CliError>>>(
    f: F,
) -> Result<(), CliError> {
    actix_rt::System::new().block_on(f)
}

/// Prints JSON, pretty on a terminal.
pub fn print_json(v: &Value) -> Result<(), CliError> {
    let text = if std::io::stdout().is_terminal() {
        serde_json::to_string_pretty(v)
    } else {
        serde_json::to_string(v)
    };
    say(&text.unwrap_or_default())
}

/// One-line human summary of a job status.
pub fn summary(job: &Value) -> String {
    let s = |k: &str| job.get(k).and_then(Value::as_str).unwrap_or("-").to_owned();
    let c = |k: &str| job["chunks"].get(k).and_then(Value::as_u64).unwrap_or(0);
    let name = job
        .get("kind")
        .or_else(|| job.get("task"))
        .and_then(Value::as_str)
        .unwrap_or("-");
    let mut line = format!(
        "{}  {:<9}  {:<10}  chunks {}/{} done, {} running, {} pending, {} failed  attempts {}",
        s("id"),
        s("status"),
        name,
        c("succeeded"),
        c("total"),
        c("running"),
        c("pending"),
        c("failed"),
        job.get("attempts").and_then(Value::as_u64).unwrap_or(0),
    );
    if let Some(error) = job.get("error").and_then(Value::as_str) {
        line.push_str(&format!("\n  error: {error}"));
    }
    line
}

/// The leader a standby's redirect to `location` names, if it is one of `bases`: a token is
/// sent only to the coordinators it was configured for, never to a host a redirect names.
fn leader_to_follow(bases: &[String], location: &str, path: &str) -> Option<String> {
    let leader = location.strip_suffix(path)?.trim_end_matches('/');
    bases.iter().find(|b| b.as_str() == leader).cloned()
}

/// `muster status ID`.
pub fn status(args: IdArgs) -> Result<(), CliError> {
    block_on(async move {
        let client = Client::new(&args.client)?;
        let job = client.get_ok(&format!("/v1/jobs/{}", args.id)).await?;
        if args.client.json {
            print_json(&job)?;
        } else {
            say(&summary(&job))?;
        }
        Ok(())
    })
}

/// Fetches a result (optionally long-polling); prints it, or fails with the job's error.
pub async fn fetch_result(
    client: &Client,
    id: &str,
    wait: Option<f64>,
    json: bool,
) -> Result<(), CliError> {
    let path = match wait {
        Some(w) => format!("/v1/jobs/{id}/result?wait={w}"),
        None => format!("/v1/jobs/{id}/result"),
    };
    let reply = client.call(awc::http::Method::GET, &path, None).await?;
    if !reply.status.is_success() {
        return Err(CliError::Failed(reply.problem()));
    }
    if json {
        print_json(&reply.body)?;
    } else {
        print_json(&reply.body["result"])?;
    }
    Ok(())
}

/// `muster result ID`.
pub fn result(args: ResultArgs) -> Result<(), CliError> {
    block_on(async move {
        let client = Client::new(&args.client)?;
        fetch_result(&client, &args.id, args.wait, args.client.json).await
    })
}

/// `muster cancel ID`.
pub fn cancel(args: IdArgs) -> Result<(), CliError> {
    block_on(async move {
        let client = Client::new(&args.client)?;
        let reply = client
            .call(
                awc::http::Method::DELETE,
                &format!("/v1/jobs/{}", args.id),
                None,
            )
            .await?;
        if !reply.status.is_success() {
            return Err(CliError::Failed(reply.problem()));
        }
        if args.client.json {
            print_json(&reply.body)?;
        } else {
            say(&summary(&reply.body))?;
        }
        Ok(())
    })
}

/// `muster jobs`.
pub fn jobs(args: JobsArgs) -> Result<(), CliError> {
    block_on(async move {
        let client = Client::new(&args.client)?;
        let mut path = format!("/v1/jobs?limit={}", args.limit);
        if let Some(s) = &args.status {
            path.push_str(&format!("&status={s}"));
        }
        let page = client.get_ok(&path).await?;
        if args.client.json {
            print_json(&page)?;
        } else {
            for job in page["jobs"].as_array().into_iter().flatten() {
                say(&summary(job))?;
            }
        }
        Ok(())
    })
}

/// `muster workers`.
pub fn workers(args: ClientOnly) -> Result<(), CliError> {
    block_on(async move {
        let client = Client::new(&args.client)?;
        let page = client.get_ok("/v1/workers").await?;
        if args.client.json {
            print_json(&page)?;
        } else {
            for w in page["workers"].as_array().into_iter().flatten() {
                say(&format!(
                    "{}  {:<20}  {:<21}  running {}/{}  tasks {}",
                    w["id"].as_str().unwrap_or("-"),
                    w["name"].as_str().unwrap_or("-"),
                    w["address"].as_str().unwrap_or("-"),
                    w["running"],
                    w["slots"],
                    w["tasks"].as_array().map_or(String::new(), |t| t
                        .iter()
                        .filter_map(Value::as_str)
                        .collect::<Vec<_>>()
                        .join(",")),
                ))?;
            }
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::leader_to_follow;

    #[test]
    fn a_redirect_is_followed_only_to_a_configured_coordinator() {
        let bases = vec![
            "http://10.0.0.1:7070".to_owned(),
            "http://10.0.0.2:7070".to_owned(),
        ];
        let path = "/v1/jobs?limit=20";
        assert_eq!(
            leader_to_follow(&bases, "http://10.0.0.2:7070/v1/jobs?limit=20", path).as_deref(),
            Some("http://10.0.0.2:7070")
        );
        assert_eq!(
            leader_to_follow(&bases, "http://evil.example:7070/v1/jobs?limit=20", path),
            None
        );
        assert_eq!(
            leader_to_follow(&bases, "http://10.0.0.2:7070/other", path),
            None
        );
    }
}
