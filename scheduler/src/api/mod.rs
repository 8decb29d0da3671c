//! The HTTP surface: the REST API under `/v1`, the worker WebSocket endpoint, `/healthz`,
//! `/metrics`, and the dashboard at `/`.

mod cluster;
mod events;
pub(crate) mod frame_limit;
mod jobs;
mod metrics;
pub mod openapi;
mod partials;
mod ui;
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
    /// Time a request body may take to arrive.
    pub body_timeout: Duration,
    /// Submissions waiting for the coordinator at once past which new ones get 429.
    pub max_queued_submissions: usize,
    /// Submissions between their body's first byte and the coordinator's answer.
    pub queued_submissions: std::sync::atomic::AtomicUsize,
    /// Unfinished chunks past which new jobs get 429.
    pub max_pending_chunks: u64,
    /// Unfinished chunks, kept by the coordinator: a submission is turned away before its body
    /// is read while they are past the limit (the coordinator checks again, exactly).
    pub unfinished: Arc<AtomicU64>,
    /// Largest WebSocket frame a worker may send.
    pub max_frame_bytes: usize,
    /// Silence after which a worker's chunks are re-queued.
    pub heartbeat_timeout: Duration,
    /// Numbers worker connections, so a reconnect is told from the connection it replaces.
    pub next_session: AtomicU64,
    /// Slots of the connected workers that take chunks, kept by the coordinator: sizes jobs that
    /// leave the chunk count open.
    pub capacity: Arc<AtomicU64>,
    /// A spare buffer for large request bodies.
    pub bodies: BodyPool,
}

/// Keeps one spare buffer for large request bodies. Filling memory that is already mapped is about
/// twice as fast as faulting in fresh pages, and a client that sends a large job often sends more;
/// a spare unused for 10 s is freed.
#[derive(Debug, Default)]
pub struct BodyPool {
    spare: std::sync::Mutex<Option<(bytes::BytesMut, u64)>>,
    kept: AtomicU64,
}

impl BodyPool {
    /// Bodies smaller than this are not worth keeping a buffer for.
    const MIN_BYTES: usize = 8 << 20;
    /// How long a spare buffer is kept without use.
    const KEEP_FOR: Duration = Duration::from_secs(10);

    /// A buffer for a body of `len` bytes: the spare one if it is large enough, or a new one with
    /// an eighth more room for large bodies, so that the next body of about the same size fits
    /// in it too (room that is never written to costs no memory).
    pub fn take(&self, len: usize) -> bytes::BytesMut {
        if len < Self::MIN_BYTES {
            return bytes::BytesMut::with_capacity(len);
        }
        let mut spare = self.spare.lock().unwrap_or_else(|p| p.into_inner());
        match spare.take() {
            Some((buffer, _)) if buffer.capacity() >= len => buffer,
            other => {
                *spare = other;
                bytes::BytesMut::with_capacity(len + len / 8)
            }
        }
    }

    /// Keeps `buffer` as the spare (unless it is small, or smaller than the spare), and frees it
    /// later if it is not used meanwhile.
    pub fn keep(app: &web::Data<AppState>, mut buffer: bytes::BytesMut) {
        if buffer.capacity() < Self::MIN_BYTES {
            return;
        }
        buffer.clear();
        let pool = &app.bodies;
        let generation = pool.kept.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        {
            let mut spare = pool.spare.lock().unwrap_or_else(|p| p.into_inner());
            if spare
                .as_ref()
                .is_some_and(|(b, _)| b.capacity() > buffer.capacity())
            {
                return;
            }
            *spare = Some((buffer, generation));
        }
        let app = app.clone();
        actix_rt::spawn(async move {
            actix_rt::time::sleep(Self::KEEP_FOR).await;
            let mut spare = app.bodies.spare.lock().unwrap_or_else(|p| p.into_inner());
            if spare.as_ref().is_some_and(|(_, g)| *g == generation) {
                *spare = None;
            }
        });
    }
}

/// Declares every route once: [`routes`] registers them and [`ROUTES`] lists them, so the
/// OpenAPI document's test can check that it covers every one.
macro_rules! declare_routes {
    ($($method:ident $path:literal => $handler:path,)*) => {
        /// Every route the server answers: method and path.
        pub const ROUTES: &[(&str, &str)] = &[$((stringify!($method), $path),)*];

        /// Registers every route.
        pub fn routes(cfg: &mut web::ServiceConfig) {
            $(cfg.route($path, web::$method().to($handler));)*
            cfg.default_service(web::to(not_found));
        }
    };
}

declare_routes! {
    get "/" => ui::index,
    get "/ui/{file}" => ui::asset,
    get "/healthz" => openapi::healthz,
    get "/v1/openapi.json" => openapi::document,
    get "/metrics" => metrics::metrics,
    post "/v1/jobs" => jobs::submit,
    get "/v1/jobs" => jobs::list,
    get "/v1/jobs/{id}" => jobs::status,
    delete "/v1/jobs/{id}" => jobs::cancel,
    get "/v1/jobs/{id}/result" => jobs::result,
    get "/v1/jobs/{id}/junit" => jobs::junit,
    get "/v1/jobs/{id}/logs" => jobs::logs,
    get "/v1/jobs/{id}/output" => jobs::output,
    get "/v1/jobs/{id}/events" => events::job_events,
    get "/v1/jobs/{id}/chunks" => cluster::chunks,
    get "/v1/jobs/{id}/partials" => partials::partials,
    get "/v1/events" => events::cluster_events,
    get "/v1/attempts" => cluster::attempts,
    get "/v1/overview" => cluster::overview,
    get "/v1/workers" => workers::list,
    get "/v1/workers/connect" => workers::connect,
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

#[cfg(test)]
mod tests {
    use bytes::BytesMut;

    #[test]
    fn a_frozen_body_gives_its_whole_buffer_back() {
        let mut body = BytesMut::with_capacity(16 << 20);
        body.extend_from_slice(&[b'1'; 10 << 20]);
        let body = body.freeze();
        let back = body.try_into_mut().expect("unique");
        assert!(back.capacity() >= 16 << 20, "{}", back.capacity());
    }
}
