//! `/v1/workers`: the list of connected workers, and the WebSocket endpoint workers connect to.

use std::sync::atomic::Ordering;

use actix::{Actor, AsyncContext};
use actix_web::{web, HttpRequest, HttpResponse};
use muster_shared::protocol::{
    CLOSE_VERSION_MISMATCH, MAX_FRAME_BYTES, PROTOCOL_HEADER, PROTOCOL_VERSION,
};
use tracing::warn;

use super::{mailbox, AppState};
use crate::auth::{require, Role};
use crate::coordinator::ListWorkers;
use crate::error::ApiError;
use crate::worker_session::{close_reason, spawn_writer, Outgoing, WorkerSession};

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
    Ok(HttpResponse::Ok().json(serde_json::json!({"workers": workers})))
}

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
    let stream = stream.max_frame_size(MAX_FRAME_BYTES);
    let serial = app.next_session.fetch_add(1, Ordering::Relaxed);
    let timeout = app.heartbeat_timeout;
    WorkerSession::create(move |ctx| {
        ctx.add_stream(stream);
        WorkerSession::new(serial, address, coordinator, out, timeout)
    });
    Ok(response)
}
