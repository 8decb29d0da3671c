//! The coordinator's error type; each error knows its HTTP status and becomes RFC 9457
//! `application/problem+json` in one place.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;

use crate::state::StateError;

/// Everything an API call can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The body is not JSON.
    #[error("malformed json: {0}")]
    MalformedJson(String),
    /// The request is well-formed but cannot be accepted.
    #[error("{0}")]
    Invalid(String),
    /// The body is over the configured limit.
    #[error("request body is over the limit of {limit} bytes")]
    TooLarge {
        /// The limit.
        limit: usize,
    },
    /// The body did not arrive in time.
    #[error("the request body did not arrive within {seconds} s (--body-timeout)")]
    BodyTimeout {
        /// The limit.
        seconds: f64,
    },
    /// No or a wrong bearer token.
    #[error("{0}")]
    Unauthorized(String),
    /// A valid token of the wrong role.
    #[error("{0}")]
    Forbidden(String),
    /// No job with that id.
    #[error("no job with id `{id}`")]
    JobNotFound {
        /// The id asked for.
        id: String,
    },
    /// No such route.
    #[error("no endpoint {method} {path}")]
    RouteNotFound {
        /// HTTP method.
        method: String,
        /// Path.
        path: String,
    },
    /// The same idempotency key came with another body.
    #[error("idempotency key `{key}` was already used with a different request body")]
    IdempotencyConflict {
        /// The key.
        key: String,
    },
    /// The job has no result (yet, or ever).
    #[error("{detail}")]
    NotFinished {
        /// Why.
        detail: String,
        /// The job's status.
        status: &'static str,
    },
    /// Too much work is waiting: retry later (429 with `Retry-After`).
    #[error("{0}")]
    Overloaded(String),
    /// The coordinator cannot serve this now (store failure, shutting down).
    #[error("{0}")]
    Unavailable(String),
    /// This coordinator is a standby; `location` is the same call on the leader, when known.
    #[error("this coordinator is a standby; {}", match .location {
        Some(l) => format!("the leader serves this at {l}"),
        None => "no leader is known yet: retry shortly or try another coordinator".to_owned(),
    })]
    NotLeader {
        /// The URL of this call on the leader.
        location: Option<String>,
    },
}

impl From<StateError> for ApiError {
    fn from(e: StateError) -> Self {
        match e {
            StateError::JobNotFound { id } => ApiError::JobNotFound { id: id.to_string() },
            StateError::IdempotencyConflict { key } => ApiError::IdempotencyConflict { key },
            StateError::UnknownTask { .. } | StateError::SubJob(_) => {
                ApiError::Invalid(e.to_string())
            }
            StateError::TooManyPending { .. } | StateError::StoreBehind { .. } => {
                ApiError::Overloaded(e.to_string())
            }
        }
    }
}

impl ApiError {
    /// 429: `pending` chunks wait or run, at or past `limit`.
    pub fn too_many_pending(pending: u64, limit: u64) -> Self {
        StateError::TooManyPending { pending, limit }.into()
    }

    fn title(&self) -> &'static str {
        match self {
            ApiError::MalformedJson(_) => "malformed json",
            ApiError::Invalid(_) => "invalid request",
            ApiError::TooLarge { .. } => "body too large",
            ApiError::BodyTimeout { .. } => "request timeout",
            ApiError::Unauthorized(_) => "unauthorized",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::JobNotFound { .. } | ApiError::RouteNotFound { .. } => "not found",
            ApiError::IdempotencyConflict { .. } => "idempotency key reused",
            ApiError::NotFinished { .. } => "job not succeeded",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::Overloaded(_) => "overloaded",
            ApiError::NotLeader { .. } => "not the leader",
        }
    }
}

/// Seconds an overloaded coordinator asks a client to wait before it submits again.
pub const RETRY_OVERLOADED_SECS: u64 = 1;

/// RFC 9457 problem details: every refusal's body, as `application/problem+json`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Problem<'a> {
    /// `about:blank`: the status says what kind of problem it is.
    #[schema(value_type = String)]
    r#type: &'static str,
    /// The status's reason phrase.
    #[schema(value_type = String)]
    title: &'static str,
    /// The HTTP status.
    status: u16,
    /// What exactly is wrong, naming the field, value or limit at fault.
    detail: String,
    /// For a result asked of a job that has none: where the job stands.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    job_status: Option<&'a str>,
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::MalformedJson(_) => StatusCode::BAD_REQUEST,
            ApiError::Invalid(_) | ApiError::IdempotencyConflict { .. } => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            ApiError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::BodyTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::JobNotFound { .. } | ApiError::RouteNotFound { .. } => StatusCode::NOT_FOUND,
            ApiError::NotFinished { .. } => StatusCode::CONFLICT,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Overloaded(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::NotLeader { location: Some(_) } => StatusCode::TEMPORARY_REDIRECT,
            ApiError::NotLeader { location: None } => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let status = self.status_code();
        let problem = Problem {
            r#type: "about:blank",
            title: self.title(),
            status: status.as_u16(),
            detail: self.to_string(),
            job_status: match self {
                ApiError::NotFinished { status, .. } => Some(status),
                _ => None,
            },
        };
        let mut response = HttpResponse::build(status);
        response.content_type("application/problem+json");
        match self {
            ApiError::Unauthorized(_) => {
                response.insert_header(("WWW-Authenticate", "Bearer"));
            }
            ApiError::Overloaded(_) => {
                response.insert_header(("Retry-After", RETRY_OVERLOADED_SECS.to_string()));
            }
            ApiError::NotLeader { location } => {
                match location {
                    Some(l) => response.insert_header(("Location", l.as_str())),
                    None => response.insert_header(("Retry-After", "1")),
                };
            }
            _ => {}
        }
        response.body(serde_json::to_string(&problem).unwrap_or_default())
    }
}
