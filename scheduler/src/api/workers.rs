//! `/v1/workers`: the list of connected workers, and the WebSocket endpoint workers connect to.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use actix::{Actor, AsyncContext};
use actix_web::{web, FromRequest, HttpRequest, HttpResponse};
use muster_shared::protocol::{CLOSE_VERSION_MISMATCH, PROTOCOL_HEADER, PROTOCOL_VERSION};
use tracing::warn;

use super::frame_limit::LimitFrames;
use super::{mailbox, AppState};
use crate::auth::{require, Role};
use crate::coordinator::ListWorkers;
use crate::error::{ApiError, Problem};
use crate::state::workers::WorkerView;
use crate::worker_session::{close_reason, spawn_writer, Outgoing, WorkerSession};

/// `GET /v1/workers`' answer.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub(super) struct WorkerList {
    /// The connected workers.
    workers: Vec<WorkerView>,
}

/// `GET /v1/workers`: the connected workers.
#[utoipa::path(get, path = "/v1/workers", tag = "cluster", operation_id = "list_workers",
    responses((status = 200, description = "The connected workers", body = WorkerList)))]
pub(super) async fn list(
    req: HttpRequest,
    app: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    require(app.tokens.as_ref(), &req, Role::Client)?;
    let workers = app
        .coordinator(&req)?
        .send(ListWorkers)
        .await
        .map_err(mailbox)?;
    Ok(HttpResponse::Ok().json(WorkerList { workers }))
}

/// A request body read through [`LimitFrames`].
type Guarded = std::pin::Pin<
    Box<dyn futures_util::Stream<Item = Result<bytes::Bytes, actix_web::error::PayloadError>>>,
>;

/// `GET /v1/workers/connect`: a worker's WebSocket (worker token; `Muster-Protocol` header).
#[utoipa::path(get, path = "/v1/workers/connect", tag = "workers",
    security(("bearer" = [])),
    responses(
        (status = 101, description = "Switched to the worker protocol (WebSocket)"),
        (status = 422, description = "Not a WebSocket upgrade", body = Problem, content_type = "application/problem+json"),
    ))]
pub(super) async fn connect(
    req: HttpRequest,
    body: web::Payload,
    app: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    require(app.tokens.as_ref(), &req, Role::Worker)?;
    // A standby refuses before the upgrade, so the worker moves on to the next address.
    let coordinator = app.coordinator(&req)?;
    let version = req
        .headers()
        .get(PROTOCOL_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u32>().ok());
    // Frames over the limit are refused at their header, before their bytes are buffered; the
    // session closes with the reason.
    let limit = app.max_frame_bytes;
    let refused = Arc::new(Mutex::new(None));
    let cell = refused.clone();
    let guarded: Guarded = Box::pin(LimitFrames::new(
        body.into_inner(),
        limit as u64,
        move |too_large| *cell.lock().unwrap_or_else(|p| p.into_inner()) = Some(too_large),
    ));
    let body = web::Payload::from_request(&req, &mut guarded.into())
        .await
        .map_err(|e| ApiError::Invalid(format!("cannot read the worker connection: {e}")))?;
    let (response, session, stream) = actix_ws::handle(&req, body).map_err(|e| {
        ApiError::Invalid(format!(
            "worker connection must be a websocket upgrade: {e}"
        ))
    })?;
    let out = spawn_writer(session);
    let address = req
        .peer_addr()
        .map_or_else(|| "unknown".to_owned(), |a| a.to_string());
    if version != Some(PROTOCOL_VERSION) {
        // Complete the upgrade, then close with a reason: a refused upgrade would reach the worker
        // as a bare status code, while a close reason is printed on its side.
        let text = match version {
            Some(v) => format!(
                "protocol version {v} is not supported: this coordinator speaks version {PROTOCOL_VERSION}"
            ),
            None => format!("missing `{PROTOCOL_HEADER}` header: this coordinator speaks version {PROTOCOL_VERSION}"),
        };
        warn!(%address, "refused worker: {text}");
        let _ = out.send(Outgoing::Close(close_reason(CLOSE_VERSION_MISMATCH, &text)));
        return Ok(response);
    }
    let stream = stream.max_frame_size(limit);
    let serial = app.next_session.fetch_add(1, Ordering::Relaxed);
    let timeout = app.heartbeat_timeout;
    WorkerSession::create(move |ctx| {
        ctx.add_stream(stream);
        WorkerSession::new(serial, address, coordinator, out, timeout, limit, refused)
    });
    Ok(response)
}
