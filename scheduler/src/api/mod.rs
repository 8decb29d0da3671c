//! The HTTP surface: the REST API under `/v1`, the worker WebSocket endpoint, and `/healthz`.

mod jobs;
mod workers;

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use actix::Addr;
use actix_web::{web, HttpRequest, HttpResponse};

use crate::auth::Tokens;
use crate::coordinator::Coordinator;
use crate::error::ApiError;

/// What every handler can reach.
pub struct AppState {
    /// The coordinator actor.
    pub coordinator: Addr<Coordinator>,
    /// Tokens; `None` when running `--insecure`.
    pub tokens: Option<Tokens>,
    /// Largest request body.
    pub max_body_bytes: usize,
    /// Silence after which a worker's chunks are re-queued.
    pub heartbeat_timeout: Duration,
    /// Numbers worker connections, so a reconnect is told from the connection it replaces.
    pub next_session: AtomicU64,
}

/// Registers every route.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/healthz", web::get().to(healthz))
        .route("/v1/jobs", web::post().to(jobs::submit))
        .route("/v1/jobs", web::get().to(jobs::list))
        .route("/v1/jobs/{id}", web::get().to(jobs::status))
        .route("/v1/jobs/{id}", web::delete().to(jobs::cancel))
        .route("/v1/jobs/{id}/result", web::get().to(jobs::result))
        .route("/v1/workers", web::get().to(workers::list))
        .route("/v1/workers/connect", web::get().to(workers::connect))
        .default_service(web::to(not_found));
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({"status": "ok", "role": "leader"}))
}

async fn not_found(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    Err(ApiError::RouteNotFound {
        method: req.method().to_string(),
        path: req.path().to_owned(),
    })
}

/// The coordinator did not answer (it is stopping).
fn mailbox(e: actix::MailboxError) -> ApiError {
    ApiError::Unavailable(format!("coordinator unavailable: {e}"))
}
