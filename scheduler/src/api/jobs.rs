//! `/v1/jobs`: submit, status, result (with long-poll), cancel, list.

use std::sync::atomic::Ordering;
use std::time::Duration;

use actix_web::body::SizedStream;
use actix_web::http::header::CONTENT_LENGTH;
use actix_web::{web, HttpRequest, HttpResponse};
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use muster_shared::body::{parse_job, BodyError};
use muster_shared::exec::{ExecReport, JUNIT};
use muster_shared::ids::JobId;
use muster_shared::junit::merge;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{mailbox, AppState, BodyPool};
use crate::auth::{require, Role};
use crate::coordinator::{
    CancelJob, Coordinator, Durable, GetJob, GetLogs, GetOutput, GetResult, JobResult, ListJobs,
    Submit,
};
use crate::error::{ApiError, Problem};
use crate::state::live::LiveLine;
use crate::state::views::{BatchLog, JobView};

/// Longest `?wait=` honoured, seconds.
pub const MAX_WAIT_SECONDS: f64 = 300.0;
/// Bodies at least this large are parsed on the blocking pool.
const BLOCKING_PARSE_BYTES: usize = 1 << 20;
/// Largest page of `GET /v1/jobs`.
pub const MAX_PAGE: usize = 1000;
/// Job statuses, the terminal ones last.
pub(super) const STATUSES: [&str; 5] = ["queued", "running", "succeeded", "failed", "cancelled"];

/// The job a client's request names, once its token is a client's.
pub(super) fn client_job(req: &HttpRequest, path: &str, app: &AppState) -> Result<JobId, ApiError> {
    require(app.tokens.as_ref(), req, Role::Client)?;
    job_id(path)
}

fn job_id(raw: &str) -> Result<JobId, ApiError> {
    raw.parse()
        .map_err(|_| ApiError::JobNotFound { id: raw.to_owned() })
}

/// Reads the body, refusing it as soon as it passes the limit or takes longer than the timeout (a
/// client trickling a body would otherwise hold its connection and buffer open indefinitely).
async fn read_body(
    req: &HttpRequest,
    payload: web::Payload,
    app: &AppState,
) -> Result<BytesMut, ApiError> {
    let timeout = app.body_timeout;
    actix_rt::time::timeout(timeout, read_body_within(req, payload, app))
        .await
        .map_err(|_| ApiError::BodyTimeout {
            seconds: timeout.as_secs_f64(),
        })?
}

async fn read_body_within(
    req: &HttpRequest,
    mut payload: web::Payload,
    app: &AppState,
) -> Result<BytesMut, ApiError> {
    let (limit, bodies) = (app.max_body_bytes, &app.bodies);
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(ApiError::TooLarge { limit });
    }
    let mut body = bodies.take(declared.unwrap_or(0));
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| ApiError::MalformedJson(format!("cannot read body: {e}")))?;
        if body.len() + chunk.len() > limit {
            return Err(ApiError::TooLarge { limit });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// `POST /v1/jobs`: submits a job; 201 with its status once it is stored (200 with the
/// earlier job when its `Idempotency-Key` was used before with the same body).
#[utoipa::path(post, path = "/v1/jobs", tag = "jobs",
    request_body(content = muster_shared::job::RawJob, content_type = "application/json",
        description = "A built-in kind with its input, a custom task with explicit chunks, or an exec job"),
    params(("Idempotency-Key" = Option<String>, Header,
        description = "Makes a retried submission answer the job it made the first time (1 to 255 visible ascii characters)")),
    responses(
        (status = 201, description = "Accepted and stored", body = JobView),
        (status = 200, description = "The job an earlier submission with this Idempotency-Key made", body = JobView),
        (status = 400, description = "Malformed JSON", body = Problem, content_type = "application/problem+json"),
        (status = 408, description = "The body took longer than --body-timeout to arrive", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body over the limit", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid job, unknown task, or an Idempotency-Key used with another body", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Too many chunks waiting, submissions queued, or store writes behind: retry after Retry-After", body = Problem, content_type = "application/problem+json"),
    ))]
pub(super) async fn submit(
    req: HttpRequest,
    payload: web::Payload,
    app: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    require(app.tokens.as_ref(), &req, Role::Client)?;
    // Until the coordinator has answered, this submission holds a place among the queued ones:
    // past the limit, new ones are turned away before their bodies are read.
    let queued = QueuedSubmission::enter(&app)?;
    let started = std::time::Instant::now();
    let body = read_body(&req, payload, &app).await?.freeze();
    tracing::debug!(bytes = body.len(), took = ?started.elapsed(), "job body read");
    let idempotency = match req.headers().get("idempotency-key") {
        None => None,
        Some(v) => {
            let key = v
                .to_str()
                .ok()
                .filter(|k| !k.is_empty() && k.len() <= 255)
                .ok_or_else(|| {
                    ApiError::Invalid(
                        "`Idempotency-Key` must be 1 to 255 visible ascii characters".into(),
                    )
                })?;
            Some((key.to_owned(), Sha256::digest(&body).into()))
        }
    };
    let slots = app.capacity.load(Ordering::Relaxed);
    // Checking and cutting a large input takes a while: off the thread serving connections.
    let parsed = if body.len() >= BLOCKING_PARSE_BYTES {
        let (parsed, body) = web::block(move || (parse_job(&body, slots), body))
            .await
            .map_err(|e| ApiError::Unavailable(format!("cannot parse the job: {e}")))?;
        // Integer inputs were copied out as packed chunks: the buffer is free again.
        if let Ok(buffer) = body.try_into_mut() {
            BodyPool::keep(&app, buffer);
        }
        parsed
    } else {
        parse_job(&body, slots)
    };
    let spec = parsed.map_err(|e| match e {
        BodyError::Malformed(m) => ApiError::MalformedJson(m),
        BodyError::Invalid(m) => ApiError::Invalid(m),
    })?;
    tracing::debug!(took = ?started.elapsed(), "job body validated and cut");
    let coordinator = app.coordinator(&req)?;
    let (submitted, view, durable) = coordinator
        .send(Submit { spec, idempotency })
        .await
        .map_err(mailbox)??;
    drop(queued);
    // A new job's answer waits for its insert (the coordinator drops a job whose insert fails).
    durable.wait().await?;
    tracing::debug!(job_id = %submitted.id, took = ?started.elapsed(), "job stored");
    let mut response = if submitted.created {
        HttpResponse::Created()
    } else {
        HttpResponse::Ok()
    };
    Ok(response
        .insert_header(("Location", format!("/v1/jobs/{}", submitted.id)))
        .json(view))
}

/// A submission's place among those read or waiting for the coordinator, given back on drop.
struct QueuedSubmission<'a>(&'a AppState);

impl<'a> QueuedSubmission<'a> {
    /// Takes a place, or answers 429 when all are taken.
    fn enter(app: &'a AppState) -> Result<Self, ApiError> {
        let pending = app.unfinished.load(Ordering::Relaxed);
        if pending >= app.max_pending_chunks {
            return Err(ApiError::too_many_pending(pending, app.max_pending_chunks));
        }
        let before = app.queued_submissions.fetch_add(1, Ordering::AcqRel);
        let place = Self(app);
        if before >= app.max_queued_submissions {
            return Err(ApiError::Overloaded(format!(
                "{before} submissions are already waiting for the coordinator, at the limit of {} (--max-queued-submissions): retry shortly",
                app.max_queued_submissions
            )));
        }
        Ok(place)
    }
}

impl Drop for QueuedSubmission<'_> {
    fn drop(&mut self) {
        self.0.queued_submissions.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Authorizes a client, parses the job id and answers the coordinator's view of the job.
async fn job_call<M>(
    req: &HttpRequest,
    path: &str,
    app: &AppState,
    message: impl FnOnce(JobId) -> M,
) -> Result<HttpResponse, ApiError>
where
    M: actix::Message<Result = Result<(JobView, Durable), ApiError>> + Send + 'static,
    Coordinator: actix::Handler<M>,
{
    require(app.tokens.as_ref(), req, Role::Client)?;
    let id = job_id(path)?;
    let (view, durable) = app
        .coordinator(req)?
        .send(message(id))
        .await
        .map_err(mailbox)??;
    durable.wait().await?;
    Ok(HttpResponse::Ok().json(view))
}

/// `GET /v1/jobs/{id}`: the job's status.
#[utoipa::path(get, path = "/v1/jobs/{id}", tag = "jobs", params(JobPath),
    responses(
        (status = 200, description = "The job", body = JobView),
        (status = 404, description = "No such job", body = Problem, content_type = "application/problem+json"),
    ))]
pub(super) async fn status(
    req: HttpRequest,
    path: web::Path<String>,
    app: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    job_call(&req, &path, &app, GetJob).await
}

/// `DELETE /v1/jobs/{id}`: cancels the job (an ended job stays as it ended).
#[utoipa::path(delete, path = "/v1/jobs/{id}", tag = "jobs", params(JobPath),
    responses(
        (status = 200, description = "The job, cancelled unless it had ended", body = JobView),
        (status = 404, description = "No such job", body = Problem, content_type = "application/problem+json"),
    ))]
pub(super) async fn cancel(
    req: HttpRequest,
    path: web::Path<String>,
    app: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    job_call(&req, &path, &app, CancelJob).await
}

/// The job a path names.
#[derive(utoipa::IntoParams)]
#[into_params(names("id"), parameter_in = Path)]
#[allow(dead_code)]
pub(super) struct JobPath(
    /// The job's id.
    String,
);

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(super) struct ResultQuery {
    /// Seconds to wait for the job to end (at most 300) before answering.
    wait: Option<f64>,
}

/// The query string of `req` as a `T`; a 422 saying what is wrong with it.
pub(super) fn query<T: serde::de::DeserializeOwned>(req: &HttpRequest) -> Result<T, ApiError> {
    web::Query::<T>::from_query(req.query_string())
        .map(web::Query::into_inner)
        .map_err(|e| ApiError::Invalid(format!("bad query: {e}")))
}

/// `?wait=` as a duration, at most [`MAX_WAIT_SECONDS`].
fn wait_for(wait: Option<f64>) -> Result<Option<Duration>, ApiError> {
    match wait {
        None => Ok(None),
        Some(s) if s.is_finite() && s >= 0.0 => {
            Ok(Some(Duration::from_secs_f64(s.min(MAX_WAIT_SECONDS))))
        }
        Some(s) => Err(ApiError::Invalid(format!(
            "`wait` must be a number of seconds, got {s}"
        ))),
    }
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(super) struct OutputQuery {
    /// The first line wanted (the `next` of the last answer).
    after: Option<u64>,
    /// Seconds to wait for a line when there is none yet (at most 300).
    wait: Option<f64>,
}

/// `GET /v1/jobs/{id}/output`'s answer.
#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct OutputPage {
    /// The job.
    id: JobId,
    /// The lines, in order.
    lines: Vec<LiveLine>,
    /// The `after` of the next call.
    next: u64,
    /// Lines asked for that are no longer kept.
    missed: u64,
    /// True when the job has ended: no line follows.
    ended: bool,
}

/// `GET /v1/jobs/{id}/logs`' answer.
#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct BatchLogs {
    /// The job.
    id: JobId,
    /// Its batches, in order.
    batches: Vec<BatchLog>,
}

/// `GET /v1/jobs/{id}/result`'s answer (streamed as it is stored, in this shape).
#[derive(Serialize, utoipa::ToSchema)]
#[allow(dead_code)] // Documents the body `result` streams without building it.
pub(super) struct ResultBody {
    /// The job.
    id: JobId,
    /// Its merged result: a number for `sum`, an array for `sort`, an object for `wordcount`,
    /// each batch's report for `exec`, what the reducer makes for a custom task.
    result: serde_json::Value,
}

/// `GET /v1/jobs`' answer.
#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct JobPage {
    /// Jobs, newest first.
    jobs: Vec<JobView>,
    /// The `after` of the next page, when this one is full.
    next: Option<JobId>,
}

/// `GET /v1/jobs/{id}/output?after=N&wait=S`: the lines an `exec` job's batches printed, from
/// line `after` on (default 0), as they come: with `wait`, a follower with nothing to read
/// waits up to that many seconds for the next line or the job's end. The answer's `next` is
/// the `after` of the next call; `ended` says no line follows; `missed` counts lines asked for
/// that are no longer kept.
#[utoipa::path(get, path = "/v1/jobs/{id}/output", tag = "exec", params(JobPath, OutputQuery),
    responses(
        (status = 200, description = "Lines from `after` on", body = OutputPage),
        (status = 404, description = "No such job", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A bad query", body = Problem, content_type = "application/problem+json"),
    ))]
pub(super) async fn output(
    req: HttpRequest,
    path: web::Path<String>,
    app: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let id = client_job(&req, &path, &app)?;
    let query = query::<OutputQuery>(&req)?;
    let after = query.after.unwrap_or(0);
    let wait = wait_for(query.wait)?;
    let ask = |watch| GetOutput { id, after, watch };
    let mut answer = app
        .coordinator(&req)?
        .send(ask(wait.is_some()))
        .await
        .map_err(mailbox)??;
    if let (Some(wait), Some(woken)) = (wait, answer.woken.take()) {
        // Woken, timed out or the coordinator stopping: answer what there is now.
        let _ = tokio::time::timeout(wait, woken).await;
        answer = app
            .coordinator(&req)?
            .send(ask(false))
            .await
            .map_err(mailbox)??;
    }
    Ok(HttpResponse::Ok().json(OutputPage {
        id,
        lines: answer.read.lines,
        next: answer.read.next,
        missed: answer.read.missed,
        ended: answer.ended,
    }))
}

/// `GET /v1/jobs/{id}/logs`: each batch of an `exec` job with its items, status, worker and
/// output: from its report once it ended, else the lines kept while it runs.
#[utoipa::path(get, path = "/v1/jobs/{id}/logs", tag = "exec", params(JobPath),
    responses(
        (status = 200, description = "Each batch", body = BatchLogs),
        (status = 404, description = "No such job", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Not an exec job", body = Problem, content_type = "application/problem+json"),
    ))]
pub(super) async fn logs(
    req: HttpRequest,
    path: web::Path<String>,
    app: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let id = client_job(&req, &path, &app)?;
    let batches = app
        .coordinator(&req)?
        .send(GetLogs(id))
        .await
        .map_err(mailbox)??;
    Ok(HttpResponse::Ok().json(BatchLogs { id, batches }))
}

/// `GET /v1/jobs/{id}/result?wait=S`: the job's merged result, waiting up to S seconds for
/// its end.
#[utoipa::path(get, path = "/v1/jobs/{id}/result", tag = "jobs", params(JobPath, ResultQuery),
    responses(
        (status = 200, description = "The merged result", body = ResultBody),
        (status = 404, description = "No such job", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "No result: the job has not ended, failed or was cancelled (`job_status` says which)", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A bad query", body = Problem, content_type = "application/problem+json"),
    ))]
pub(super) async fn result(
    req: HttpRequest,
    path: web::Path<String>,
    app: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let id = client_job(&req, &path, &app)?;
    let query = query::<ResultQuery>(&req)?;
    let wait = wait_for(query.wait)?;
    let (answer, mut durable) = app
        .coordinator(&req)?
        .send(GetResult {
            id,
            watch: wait.is_some(),
        })
        .await
        .map_err(mailbox)??;
    let mut result = answer.result;
    if let (Some(wait), Some(finished)) = (wait, answer.finished) {
        match tokio::time::timeout(wait, finished).await {
            // Finished: the coordinator sent the end along.
            Ok(Ok(end)) => (result, durable) = end,
            // Timed out, or the coordinator is stopping: answer what is known now.
            _ => {
                let (answer, now) = app
                    .coordinator(&req)?
                    .send(GetResult { id, watch: false })
                    .await
                    .map_err(mailbox)??;
                (result, durable) = (answer.result, now);
            }
        }
    }
    durable.wait().await?;
    match result {
        JobResult::Ready(result) => {
            // The result can be megabytes: sent as it is stored, between two small pieces.
            let parts = [
                Bytes::from(format!("{{\"id\":\"{id}\",\"result\":")),
                result,
                Bytes::from_static(b"}"),
            ];
            let len = parts.iter().map(|p| p.len() as u64).sum();
            let stream = futures_util::stream::iter(parts.map(Ok::<_, std::io::Error>));
            Ok(HttpResponse::Ok()
                .content_type("application/json")
                .body(SizedStream::new(len, stream)))
        }
        JobResult::Missing { status, error } => Err(not_finished(id, status, error)),
    }
}

/// 409: the job has no result (yet, or ever).
fn not_finished(id: JobId, status: &'static str, error: Option<String>) -> ApiError {
    ApiError::NotFinished {
        detail: match (status, error) {
            ("failed", Some(error)) => format!("job {id} failed: {error}"),
            ("cancelled", _) => format!("job {id} was cancelled"),
            (status, _) => format!("job {id} is {status}: no result yet"),
        },
        status,
    }
}

/// `GET /v1/jobs/{id}/junit`: an exec job's batches' JUnit reports merged into one document.
#[utoipa::path(get, path = "/v1/jobs/{id}/junit", tag = "exec", params(JobPath),
    responses(
        (status = 200, description = "The batches' JUnit reports merged, every testcase once", body = String, content_type = "application/xml"),
        (status = 404, description = "No such job", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "No result yet, or ever", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Not an exec job, or no batch wrote a report", body = Problem, content_type = "application/problem+json"),
    ))]
pub(super) async fn junit(
    req: HttpRequest,
    path: web::Path<String>,
    app: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let id = client_job(&req, &path, &app)?;
    let (answer, durable) = app
        .coordinator(&req)?
        .send(GetResult { id, watch: false })
        .await
        .map_err(mailbox)??;
    durable.wait().await?;
    let result = match answer.result {
        JobResult::Ready(result) => result,
        JobResult::Missing { status, error } => return Err(not_finished(id, status, error)),
    };
    let reports: Vec<ExecReport> = serde_json::from_slice(&result).map_err(|_| {
        ApiError::Invalid(format!(
            "job {id} is not an exec job: it has no JUnit report"
        ))
    })?;
    if reports.iter().all(|r| r.junit.is_none()) {
        return Err(ApiError::Invalid(format!(
            "no batch of job {id} wrote a JUnit report (give the program a path with `{JUNIT}`)"
        )));
    }
    let merged = web::block(move || {
        let xml: Vec<Option<&str>> = reports.iter().map(|r| r.junit.as_deref()).collect();
        merge(&xml)
    })
    .await
    .map_err(|e| ApiError::Unavailable(format!("cannot merge the reports: {e}")))?
    .map_err(|e| ApiError::Invalid(format!("cannot merge job {id}'s JUnit reports: {e}")))?;
    Ok(HttpResponse::Ok()
        .content_type("application/xml")
        .body(merged))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(super) struct ListQuery {
    /// Only jobs with this status.
    status: Option<String>,
    /// Only sub-jobs of this job (those its chunks submitted).
    parent: Option<String>,
    /// Jobs older than this one (the `next` of the last page).
    after: Option<String>,
    /// Jobs per page, 1 to 1000 (default 100).
    limit: Option<usize>,
}

/// `GET /v1/jobs`: jobs newest first, a page at a time.
#[utoipa::path(get, path = "/v1/jobs", tag = "jobs", operation_id = "list_jobs", params(ListQuery),
    responses(
        (status = 200, description = "A page of jobs", body = JobPage),
        (status = 422, description = "A bad query", body = Problem, content_type = "application/problem+json"),
    ))]
pub(super) async fn list(
    req: HttpRequest,
    app: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    require(app.tokens.as_ref(), &req, Role::Client)?;
    let query = query::<ListQuery>(&req)?;
    if let Some(s) = &query.status {
        if !STATUSES.contains(&s.as_str()) {
            return Err(ApiError::Invalid(format!(
                "unknown status `{s}`: expected one of {}",
                STATUSES.join(", ")
            )));
        }
    }
    // A query parameter naming a job.
    let job_param = |name: &str, value: Option<&str>| {
        value
            .map(|v| {
                v.parse::<JobId>()
                    .map_err(|_| ApiError::Invalid(format!("`{name}` is not a job id: {v}")))
            })
            .transpose()
    };
    let after = job_param("after", query.after.as_deref())?;
    let parent = job_param("parent", query.parent.as_deref())?;
    let limit = query.limit.unwrap_or(100);
    if limit == 0 || limit > MAX_PAGE {
        return Err(ApiError::Invalid(format!(
            "`limit` must be from 1 to {MAX_PAGE}"
        )));
    }
    let (jobs, durable) = app
        .coordinator(&req)?
        .send(ListJobs {
            status: query.status,
            parent,
            after,
            limit,
        })
        .await
        .map_err(mailbox)??;
    durable.wait().await?;
    let next = (jobs.len() == limit)
        .then(|| jobs.last().map(|j| j.id))
        .flatten();
    Ok(HttpResponse::Ok().json(JobPage { jobs, next }))
}
