//! What the dashboard draws from: the cluster at a glance (`GET /v1/overview`), the attempts
//! as they start and end (`GET /v1/attempts`, the task stream) and a job's chunks by state
//! (`GET /v1/jobs/{id}/chunks`, its grid).

use actix_web::{web, HttpRequest, HttpResponse};
use muster_shared::ids::JobId;
use serde::{Deserialize, Serialize};

use super::jobs::JobPath;
use super::jobs::{client_job, query};
use super::{mailbox, AppState};
use crate::auth::{require, Role};
use crate::coordinator::{GetAttempts, GetChunkStates, GetOverview};
use crate::error::{ApiError, Problem};
use crate::state::attempts::{AttemptEvent, THROUGHPUT_SECONDS};
use crate::state::job::ChunkCounts;
use crate::state::Gauges;

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(super) struct OverviewQuery {
    /// Seconds of throughput wanted, 1 to 600 (default 300).
    seconds: Option<usize>,
}

/// `GET /v1/overview`'s answer.
#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct Overview {
    #[serde(flatten)]
    gauges: Gauges,
    /// Chunks that succeeded in each of the last `seconds` seconds, oldest first.
    chunks_per_second: Vec<u32>,
}

/// `GET /v1/overview?seconds=S`: jobs by status, chunks waiting and running, workers, slots and
/// busy slots, and `chunks_per_second`: the chunks that succeeded in each of the last S seconds
/// (default 300, at most 600), oldest first, the last one still filling.
#[utoipa::path(get, path = "/v1/overview", tag = "cluster", params(OverviewQuery),
    responses(
        (status = 200, description = "The cluster now", body = Overview),
        (status = 422, description = "A bad query", body = Problem, content_type = "application/problem+json"),
    ))]
pub(super) async fn overview(
    req: HttpRequest,
    app: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    require(app.tokens.as_ref(), &req, Role::Client)?;
    let seconds = query::<OverviewQuery>(&req)?.seconds.unwrap_or(300);
    if seconds == 0 || seconds > THROUGHPUT_SECONDS {
        return Err(ApiError::Invalid(format!(
            "`seconds` must be from 1 to {THROUGHPUT_SECONDS}"
        )));
    }
    let (gauges, throughput) = app
        .coordinator(&req)?
        .send(GetOverview { seconds })
        .await
        .map_err(mailbox)?;
    Ok(HttpResponse::Ok().json(Overview {
        gauges,
        chunks_per_second: throughput,
    }))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(super) struct AttemptsQuery {
    /// The first event wanted (the `next` of the last answer).
    after: Option<u64>,
}

/// One attempt event with its number.
#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct NumberedAttempt {
    /// Its number: `after` for a call that starts at it.
    seq: u64,
    #[serde(flatten)]
    event: AttemptEvent,
}

/// `GET /v1/attempts`' answer.
#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct AttemptsPage {
    /// The events, in order.
    attempts: Vec<NumberedAttempt>,
    /// The `after` of the next call.
    next: u64,
    /// Events asked for that are no longer kept.
    missed: u64,
    /// The number the next event will get: a reader far behind may skip to a little before
    /// it rather than read every event between.
    head: u64,
}

/// `GET /v1/jobs/{id}/chunks`' answer.
#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct ChunkStates {
    /// The job.
    id: JobId,
    /// Its chunk counts.
    chunks: ChunkCounts,
    /// One letter per chunk, in chunk order: `p` waiting, `w` waiting for a retry, `r`
    /// running, `s` succeeded, `f` failed, `c` never ran.
    states: String,
}

/// `GET /v1/attempts?after=N`: chunk attempts of every job as they started and ended, from
/// event N on (at most 1000 at a time; the coordinator keeps the last 20,000): `attempts` (each
/// with its number `seq`), `next` (the `after` of the next call), `missed` (events asked for
/// that are no longer kept) and `head` (the next event's number).
#[utoipa::path(get, path = "/v1/attempts", tag = "cluster", params(AttemptsQuery),
    responses(
        (status = 200, description = "Attempt events from `after` on", body = AttemptsPage),
        (status = 422, description = "A bad query", body = Problem, content_type = "application/problem+json"),
    ))]
pub(super) async fn attempts(
    req: HttpRequest,
    app: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    require(app.tokens.as_ref(), &req, Role::Client)?;
    let from = query::<AttemptsQuery>(&req)?.after.unwrap_or(0);
    let read = app
        .coordinator(&req)?
        .send(GetAttempts {
            from,
            job: None,
            most: 1000,
        })
        .await
        .map_err(mailbox)?;
    let attempts = read
        .events
        .into_iter()
        .map(|(seq, event)| NumberedAttempt { seq, event })
        .collect();
    Ok(HttpResponse::Ok().json(AttemptsPage {
        attempts,
        next: read.next,
        missed: read.missed,
        head: read.head,
    }))
}

/// `GET /v1/jobs/{id}/chunks`: the job's chunk counts, and `states`, one letter per chunk in
/// chunk order: `p` waiting, `w` waiting for a retry, `r` running, `s` succeeded, `f` failed,
/// `c` never ran (the job ended first).
#[utoipa::path(get, path = "/v1/jobs/{id}/chunks", tag = "jobs", params(JobPath),
    responses(
        (status = 200, description = "Each chunk's state", body = ChunkStates),
        (status = 404, description = "No such job", body = Problem, content_type = "application/problem+json"),
    ))]
pub(super) async fn chunks(
    req: HttpRequest,
    path: web::Path<String>,
    app: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let id = client_job(&req, &path, &app)?;
    let (counts, states) = app
        .coordinator(&req)?
        .send(GetChunkStates(id))
        .await
        .map_err(mailbox)??;
    Ok(HttpResponse::Ok().json(ChunkStates {
        id,
        chunks: counts,
        states,
    }))
}
