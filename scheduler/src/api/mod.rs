//! The HTTP surface: the REST API under `/v1`, the worker WebSocket endpoint, and `/healthz`.

mod jobs;
mod workers;

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use actix::Addr;
use actix_web::{web, HttpRequest, HttpResponse};

use crate::auth::Tokens;
use crate::coordinator::Coordinator;
use crate::error::ApiError;
use crate::leader::{Leadership, Role};
use crate::store::Ticket;

/// What every handler can reach.
pub struct AppState {
    /// The coordinator actor, once this coordinator leads.
    pub coordinator: RwLock<Option<Addr<Coordinator>>>,
    /// Whether this coordinator leads, and who does if not.
    pub leadership: Leadership,
    /// Tokens; `None` when running `--insecure`.
    pub tokens: Option<Tokens>,
    /// Largest request body.
    pub max_body_bytes: usize,
    /// Silence after which a worker's chunks are re-queued.
    pub heartbeat_timeout: Duration,
    /// Numbers worker connections, so a reconnect is told from the connection it replaces.
    pub next_session: AtomicU64,
    /// Slots of the connected workers that take chunks, kept by the coordinator: sizes jobs that
    /// leave the chunk count open.
    pub capacity: Arc<AtomicU64>,
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

impl AppState {
    /// The coordinator, when this one leads; otherwise where the leader is (for a redirect).
    pub fn coordinator(&self, req: &HttpRequest) -> Result<Addr<Coordinator>, ApiError> {
        let location = match self.leadership.role() {
            Role::Leader { .. } => {
                let current = self.coordinator.read().unwrap_or_else(|p| p.into_inner());
                if let Some(addr) = current.as_ref() {
                    return Ok(addr.clone());
                }
                None
            }
            Role::Standby { leader } => leader.map(|l| format!("{l}{}", req.uri())),
            Role::Deposed => None,
        };
        Err(ApiError::NotLeader { location })
    }
}

async fn healthz(app: web::Data<AppState>) -> HttpResponse {
    let leads = matches!(app.leadership.role(), Role::Leader { .. })
        && app.coordinator.read().map(|c| c.is_some()).unwrap_or(false);
    let role = if leads { "leader" } else { "standby" };
    HttpResponse::Ok().json(serde_json::json!({"status": "ok", "role": role}))
}

async fn not_found(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    Err(ApiError::RouteNotFound {
        method: req.method().to_string(),
        path: req.path().to_owned(),
    })
}

/// Waits until what the coordinator answered is durable: a client sees nothing a crash could undo.
async fn durable(ticket: Ticket) -> Result<(), ApiError> {
    if ticket.is_durable() {
        return Ok(());
    }
    ticket.durable().await.map_err(|e| {
        if e.is_fenced() {
            ApiError::NotLeader { location: None }
        } else {
            ApiError::Unavailable(format!("the store did not confirm the write: {e}"))
        }
    })
}

/// The coordinator did not answer (it is stopping).
fn mailbox(e: actix::MailboxError) -> ApiError {
    ApiError::Unavailable(format!("coordinator unavailable: {e}"))
}
