//! What the dashboard draws from: the cluster at a glance (`GET /v1/overview`), the attempts
//! as they start and end (`GET /v1/attempts`, the task stream) and a job's chunks by state
//! (`GET /v1/jobs/{id}/chunks`, its grid).

use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;

use super::jobs::{client_job, query};
use super::{mailbox, AppState};
use crate::auth::{require, Role};
use crate::coordinator::{GetAttempts, GetChunkStates, GetOverview};
use crate::error::ApiError;
use crate::state::attempts::THROUGHPUT_SECONDS;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct OverviewQuery {
    seconds: Option<usize>,
}

/// `GET /v1/overview?seconds=S`: jobs by status, chunks waiting and running, workers, slots and
/// busy slots, and `chunks_per_second`: the chunks that succeeded in each of the last S seconds
/// (default 300, at most 600), oldest first, the last one still filling.
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
    let mut body = serde_json::to_value(gauges).unwrap_or_default();
    body["chunks_per_second"] = serde_json::json!(throughput);
    Ok(HttpResponse::Ok().json(body))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AttemptsQuery {
    after: Option<u64>,
}

/// `GET /v1/attempts?after=N`: chunk attempts of every job as they started and ended, from
/// event N on (at most 1000 at a time; the coordinator keeps the last 20,000): `attempts` (each
/// with its number `seq`), `next` (the `after` of the next call) and `missed` (events asked for
/// that are no longer kept).
pub(super) async fn attempts(
    req: HttpRequest,
    app: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    require(app.tokens.as_ref(), &req, Role::Client)?;
    let from = query::<AttemptsQuery>(&req)?.after.unwrap_or(0);
    let read = app
        .coordinator(&req)?
        .send(GetAttempts { from, job: None })
        .await
        .map_err(mailbox)?;
    let attempts: Vec<serde_json::Value> = read
        .events
        .iter()
        .map(|(seq, event)| {
            let mut value = serde_json::to_value(event).unwrap_or_default();
            value["seq"] = serde_json::json!(seq);
            value
        })
        .collect();
    Ok(HttpResponse::Ok().json(serde_json::json!({
        "attempts": attempts,
        "next": read.next,
        "missed": read.missed,
    })))
}

/// `GET /v1/jobs/{id}/chunks`: the job's chunk counts, and `states`, one letter per chunk in
/// chunk order: `p` waiting, `w` waiting for a retry, `r` running, `s` succeeded, `f` failed,
/// `c` never ran (the job ended first).
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
    Ok(HttpResponse::Ok().json(serde_json::json!({
        "id": id,
        "chunks": counts,
        "states": states,
    })))
}
