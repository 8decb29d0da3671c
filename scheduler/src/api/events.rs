//! Server-Sent Event streams: one job's (`GET /v1/jobs/{id}/events`) and the cluster's
//! (`GET /v1/events`). A stream makes its events only as its reader takes them, so a slow reader
//! holds nothing in the coordinator: the next poll reads from its cursors, and what the bounded
//! logs dropped meanwhile is reported as missed.

use std::time::Duration;

use actix_web::{web, HttpRequest, HttpResponse};
use bytes::Bytes;
use muster_shared::ids::JobId;

use super::jobs::{client_job, JobPath};
use super::{mailbox, AppState};
use crate::auth::{require, Role};
use crate::coordinator::{Coordinator, GetAttempts, GetClusterEvents, GetOutput, GetProgress};
use crate::error::{ApiError, Problem};
use crate::state::job::ChunkCounts;
use crate::state::views::Progress;

/// How often an event stream looks at its job.
const EVENTS_EVERY: Duration = Duration::from_millis(250);

/// Most attempt events a job's stream sends in one read (four reads a second): a job whose
/// chunks end faster than that is followed through its progress, its attempts coalesced into a
/// `missed` count once the cluster's log no longer holds them.
const JOB_ATTEMPTS_PER_READ: usize = 250;

/// Longest quiet on an event stream before a keep-alive comment.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// `GET /v1/jobs/{id}/events`: the job as Server-Sent Events, until its end. `progress` (status,
/// chunk counts, retried chunks, an ETA from the pace so far) whenever it changes, looked at every
/// 250 ms; `attempt` as each chunk attempt starts and ends (`job_id`, `chunk`, `attempt`,
/// `worker`, `state`: started, succeeded or failed, `started_at`, `finished_at`, and a failure's
/// `class` and `reason`); `log` for each line an `exec` batch prints (`{"seq", "batch",
/// "text"}`); `end` (status, and the error of a failed job) last. Attempt events come from the
/// cluster's last 20,000, at most 250 a read: a reader further behind gets `missed`
/// (`{"attempt_events": N}`, of any job) and goes on from the oldest kept, while `progress`
/// stays exact. Each event's id is
/// `LINES:ATTEMPTS`, the two cursors, so a reconnect with `Last-Event-ID` goes on after the last
/// event it had. A comment every 15 s of quiet keeps the connection open.
#[utoipa::path(get, path = "/v1/jobs/{id}/events", tag = "jobs",
    params(JobPath, ("Last-Event-ID" = Option<String>, Header, description = "Resume after this event")),
    responses(
        (status = 200, description = "Server-Sent Events: `progress`, `attempt`, `log`, `missed`, then `end`", body = String, content_type = "text/event-stream"),
        (status = 404, description = "No such job", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A Last-Event-ID of another stream", body = Problem, content_type = "application/problem+json"),
    ))]
pub(super) async fn job_events(
    req: HttpRequest,
    path: web::Path<String>,
    app: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let id = client_job(&req, &path, &app)?;
    let coordinator = app.coordinator(&req)?;
    // A job that is not there is a 404 now, not an empty stream.
    let first = coordinator.send(GetProgress(id)).await.map_err(mailbox)??;
    let (lines, attempts) = match last_event_id(&req) {
        Some(last) => parse_job_event_id(&last)?,
        None => (0, 0),
    };
    let stream = JobStream {
        coordinator,
        id,
        lines,
        attempts,
        first: Some(first),
        last: None,
        ended: false,
    };
    Ok(event_stream(stream, |mut stream| async move {
        let events = stream.events().await?;
        Some((events, stream))
    }))
}

/// The `Last-Event-ID` a reconnecting reader sends.
fn last_event_id(req: &HttpRequest) -> Option<String> {
    req.headers()
        .get("Last-Event-ID")
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
}

/// A job stream's event id, `LINES:ATTEMPTS` (or `LINES` alone).
fn parse_job_event_id(raw: &str) -> Result<(u64, u64), ApiError> {
    let (lines, attempts) = raw.split_once(':').unwrap_or((raw, "0"));
    match (lines.parse(), attempts.parse()) {
        (Ok(lines), Ok(attempts)) => Ok((lines, attempts)),
        _ => Err(ApiError::Invalid(format!(
            "Last-Event-ID `{raw}` is not an event id of this stream (LINES:ATTEMPTS)"
        ))),
    }
}

/// An event stream's response. `poll` gives the events there are now from its state (empty
/// when none, `None` when the stream is over); it is asked at once and then every
/// [`EVENTS_EVERY`], with a keep-alive comment after [`KEEP_ALIVE`] of quiet. The body is made
/// only as the reader takes it, and at that pace whatever happens: a reader of a job whose
/// chunks end by the thousand costs the coordinator four reads a second, and what the bounded
/// logs drop meanwhile is reported as missed.
fn event_stream<S, F, Fut>(state: S, poll: F) -> HttpResponse
where
    S: 'static,
    F: Fn(S) -> Fut + 'static,
    Fut: std::future::Future<Output = Option<(String, S)>> + 'static,
{
    let start = (state, poll, std::time::Instant::now(), true);
    let body = futures_util::stream::unfold(start, |(mut state, poll, quiet, first)| async move {
        if !first {
            tokio::time::sleep(EVENTS_EVERY).await;
        }
        loop {
            let (events, next) = poll(state).await?;
            state = next;
            let events = match events.is_empty() {
                false => Bytes::from(events),
                true if quiet.elapsed() >= KEEP_ALIVE => Bytes::from_static(b": keep-alive\n\n"),
                true => {
                    tokio::time::sleep(EVENTS_EVERY).await;
                    continue;
                }
            };
            let next = (state, poll, std::time::Instant::now(), false);
            return Some((Ok::<Bytes, std::convert::Infallible>(events), next));
        }
    });
    HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header((actix_web::http::header::CACHE_CONTROL, "no-cache"))
        .streaming(body)
}

/// `GET /v1/events`: what happens in the cluster as Server-Sent Events, for as long as the
/// reader stays, each with the time it happened (`at`): `job_submitted` (`job_id`, `name`, `chunks`), `job_ended` (`job_id`, `status`),
/// `worker_joined` (`worker_id`, `name`, `slots`), `worker_draining` (`worker_id`, `name`) and
/// `worker_left` (`worker_id`, `name`, `reason`, `chunks_lost`), looked at every 250 ms. Each
/// event's id counts the events so far, so `Last-Event-ID` resumes after the last one had; the
/// coordinator keeps the last 10,000, and a reader further behind first gets `missed`
/// (`{"events": N}`). A comment every 15 s of quiet keeps the connection open.
#[utoipa::path(get, path = "/v1/events", tag = "cluster",
    params(("Last-Event-ID" = Option<String>, Header, description = "Resume after this event")),
    responses(
        (status = 200, description = "Server-Sent Events: `job_submitted`, `job_ended`, `worker_joined`, `worker_draining`, `worker_left`, `missed`; each event's data is a ClusterEvent", body = String, content_type = "text/event-stream"),
        (status = 422, description = "A Last-Event-ID of another stream", body = Problem, content_type = "application/problem+json"),
    ))]
pub(super) async fn cluster_events(
    req: HttpRequest,
    app: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    require(app.tokens.as_ref(), &req, Role::Client)?;
    let coordinator = app.coordinator(&req)?;
    let from = match last_event_id(&req) {
        Some(last) => last.parse::<u64>().map_err(|_| {
            ApiError::Invalid(format!(
                "Last-Event-ID `{last}` is not an event id of this stream (a number)"
            ))
        })?,
        None => 0,
    };
    Ok(event_stream(
        (coordinator, from),
        |(coordinator, from)| async move {
            let read = coordinator.send(GetClusterEvents { from }).await.ok()?;
            let mut out = String::new();
            if read.missed > 0 {
                let missed = serde_json::json!({"events": read.missed});
                out.push_str(&sse("missed", from + read.missed, &missed));
            }
            for (n, event) in &read.events {
                out.push_str(&sse(event.event.name(), n + 1, event));
            }
            Some((out, (coordinator, read.next)))
        },
    ))
}

/// One reader's event stream of one job.
struct JobStream {
    coordinator: actix::Addr<Coordinator>,
    id: JobId,
    /// Lines sent so far (the next line's number).
    lines: u64,
    /// The next attempt event to look at (a number in the cluster's attempt log).
    attempts: u64,
    /// The progress read when the stream opened.
    first: Option<Progress>,
    /// The last progress sent: status, counts and retried chunks.
    last: Option<(&'static str, ChunkCounts, usize)>,
    ended: bool,
}

impl JobStream {
    /// The event id that resumes after what was sent.
    fn event_id(&self) -> String {
        format!("{}:{}", self.lines, self.attempts)
    }

    /// The events there are now (none, often); `None` once the end was sent, or when the
    /// coordinator is gone (the reader reconnects, to the leader).
    async fn events(&mut self) -> Option<String> {
        if self.ended {
            return None;
        }
        let progress = match self.first.take() {
            Some(progress) => progress,
            None => self
                .coordinator
                .send(GetProgress(self.id))
                .await
                .ok()?
                .ok()?,
        };
        let output = self
            .coordinator
            .send(GetOutput {
                id: self.id,
                after: self.lines,
                watch: false,
            })
            .await
            .ok()?
            .ok()?;
        let attempts = self
            .coordinator
            .send(GetAttempts {
                from: self.attempts,
                job: Some(self.id),
                most: JOB_ATTEMPTS_PER_READ,
            })
            .await
            .ok()?;
        let mut out = String::new();
        if attempts.missed > 0 {
            self.attempts += attempts.missed;
            let missed = serde_json::json!({"attempt_events": attempts.missed});
            out.push_str(&sse("missed", self.event_id(), &missed));
        }
        for (n, event) in &attempts.events {
            self.attempts = n + 1;
            out.push_str(&sse("attempt", self.event_id(), event));
        }
        self.attempts = self.attempts.max(attempts.next);
        for line in &output.read.lines {
            self.lines = line.seq + 1;
            out.push_str(&sse("log", self.event_id(), line));
        }
        self.lines = self.lines.max(output.read.next);
        let key = (progress.status, progress.chunks, progress.retried);
        if self.last != Some(key) {
            self.last = Some(key);
            out.push_str(&sse("progress", self.event_id(), &progress));
        }
        let ended = matches!(progress.status, "succeeded" | "failed" | "cancelled");
        if ended && output.read.lines.is_empty() && attempts.events.is_empty() {
            let end = serde_json::json!({"status": progress.status, "error": progress.error});
            out.push_str(&sse("end", self.event_id(), &end));
            self.ended = true;
        }
        Some(out)
    }
}

/// One Server-Sent Event.
fn sse(name: &str, id: impl std::fmt::Display, data: &impl serde::Serialize) -> String {
    let data = serde_json::to_string(data).unwrap_or_default();
    format!("id: {id}\nevent: {name}\ndata: {data}\n\n")
}

#[cfg(test)]
mod tests {
    use super::parse_job_event_id;

    #[test]
    fn a_job_event_id_holds_both_cursors_and_a_bare_number_is_lines() {
        assert_eq!(parse_job_event_id("12:340").ok(), Some((12, 340)));
        assert_eq!(parse_job_event_id("7").ok(), Some((7, 0)));
        assert!(parse_job_event_id("x:1").is_err());
        assert!(parse_job_event_id("1:").is_err());
    }
}
