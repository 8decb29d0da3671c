//! `GET /v1/jobs/{id}/partials`: a running job's partial results as its chunks succeed, one
//! JSON line each (NDJSON), so a client consumes a map job while it runs.

use std::collections::VecDeque;

use actix_web::{web, HttpRequest, HttpResponse};
use bytes::{BufMut, Bytes, BytesMut};
use muster_shared::ids::JobId;
use serde::{Deserialize, Serialize};

use super::jobs::{client_job, query, JobPath};
use super::{mailbox, AppState};
use crate::coordinator::{Coordinator, Durable, FollowPartials, GetProgress};
use crate::error::{ApiError, Problem};
use crate::state::job::Partial;

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(super) struct PartialsQuery {
    /// The first partial wanted, by its `seq` (the last line's `seq` + 1 resumes after it).
    from: Option<u64>,
}

/// One line of the stream.
#[derive(Serialize, utoipa::ToSchema)]
#[allow(dead_code)] // Documents the lines `partials` writes without building them.
pub(super) struct PartialLine {
    /// Its place among the job's succeeded chunks, from 0, in the order they succeeded.
    seq: u64,
    /// The chunk.
    chunk: u32,
    /// The chunk's partial result, as its task returned it.
    result: serde_json::Value,
}

/// The last line of a stream that fell behind a job that then ended: partials from `next` on
/// were merged into the result before this reader could have them.
#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct PartialsMissed {
    /// Partials this reader did not get.
    missed: u64,
    /// The first of them.
    next: u64,
}

/// `GET /v1/jobs/{id}/partials?from=N`: the job's partial results from the `N`-th chunk to
/// succeed on: first those that succeeded already, then each as it succeeds, until the job
/// ends. Each line is `{"seq", "chunk", "result"}`, `seq` numbering the job's succeeded chunks
/// in the order they succeeded, so `?from=` with the last `seq` + 1 resumes. A chunk's result is
/// sent once it is stored, and its `seq` is stored with it: after a coordinator restart or a
/// failover the same `seq` names the same chunk, and `?from=` resumes where the reader was.
/// Ended jobs answer 409: their result merges their partials. A reader more than 1,024 partials behind is let go by the coordinator
/// and reads on from the job itself; if the job ends meanwhile, its last line says what it
/// missed (`{"missed", "next"}`).
#[utoipa::path(get, path = "/v1/jobs/{id}/partials", tag = "jobs", params(JobPath, PartialsQuery),
    responses(
        (status = 200, description = "One PartialLine per line, as chunks succeed", body = String, content_type = "application/x-ndjson"),
        (status = 404, description = "No such job", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The job has ended: read its result", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A bad query", body = Problem, content_type = "application/problem+json"),
    ))]
pub(super) async fn partials(
    req: HttpRequest,
    path: web::Path<String>,
    app: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let id = client_job(&req, &path, &app)?;
    let from = query::<PartialsQuery>(&req)?.from.unwrap_or(0);
    let coordinator = app.coordinator(&req)?;
    let followed = coordinator
        .send(FollowPartials { id, from })
        .await
        .map_err(mailbox)??;
    let reader = Reader {
        coordinator,
        id,
        next: from,
        now: followed.now.into(),
        stored: Some(followed.stored),
        live: Some(followed.next),
        done: false,
    };
    let body = futures_util::stream::unfold(reader, |mut reader| async move {
        let line = reader.line().await?;
        Some((Ok::<Bytes, std::convert::Infallible>(line), reader))
    });
    Ok(HttpResponse::Ok()
        .content_type("application/x-ndjson")
        .insert_header((actix_web::http::header::CACHE_CONTROL, "no-cache"))
        .streaming(body))
}

/// One reader's place in a job's partials.
struct Reader {
    coordinator: actix::Addr<Coordinator>,
    id: JobId,
    /// The next partial's number.
    next: u64,
    /// Partials read from the job, not yet sent.
    now: VecDeque<Partial>,
    /// Resolves once `now` is stored.
    stored: Option<Durable>,
    /// Partials handed on as they come, each with a ticket for its write, while the coordinator
    /// keeps this reader.
    live: Option<tokio::sync::mpsc::Receiver<(Partial, Durable)>>,
    done: bool,
}

impl Reader {
    /// The next line; `None` once the job has ended and everything was sent.
    async fn line(&mut self) -> Option<Bytes> {
        loop {
            // Nothing goes out before it is stored; a store that fails ends the stream (the
            // coordinator stops, and the reader resumes on the next one).
            if let Some(stored) = self.stored.take() {
                if stored.wait().await.is_err() {
                    return None;
                }
            }
            if let Some(partial) = self.now.pop_front() {
                if let Some(line) = self.take(partial) {
                    return Some(line);
                }
                continue;
            }
            if self.done {
                return None;
            }
            if let Some(live) = &mut self.live {
                match live.recv().await {
                    Some((partial, stored)) => {
                        if stored.wait().await.is_err() {
                            return None;
                        }
                        if let Some(line) = self.take(partial) {
                            return Some(line);
                        }
                        continue;
                    }
                    // The job ended, or this reader fell behind: ask the job where it stands.
                    None => self.live = None,
                }
            }
            match self
                .coordinator
                .send(FollowPartials {
                    id: self.id,
                    from: self.next,
                })
                .await
            {
                Ok(Ok(followed)) => {
                    self.now = followed.now.into();
                    self.stored = Some(followed.stored);
                    self.live = Some(followed.next);
                }
                Ok(Err(_)) | Err(_) => {
                    self.done = true;
                    return self.missed().await;
                }
            }
        }
    }

    /// `partial`'s line, unless it was sent already.
    fn take(&mut self, partial: Partial) -> Option<Bytes> {
        if partial.seq < self.next {
            return None;
        }
        self.next = partial.seq + 1;
        let mut line = BytesMut::with_capacity(partial.result.len() + 48);
        line.put_slice(
            format!(
                "{{\"seq\":{},\"chunk\":{},\"result\":",
                partial.seq, partial.chunk.0
            )
            .as_bytes(),
        );
        line.put_slice(&partial.result);
        line.put_slice(b"}\n");
        Some(line.freeze())
    }

    /// After the job ended: a line saying which partials this reader did not get, if any.
    async fn missed(&self) -> Option<Bytes> {
        let progress = self
            .coordinator
            .send(GetProgress(self.id))
            .await
            .ok()?
            .ok()?;
        let succeeded = u64::from(progress.chunks.succeeded);
        (succeeded > self.next).then(|| {
            let missed = PartialsMissed {
                missed: succeeded - self.next,
                next: self.next,
            };
            let mut line = serde_json::to_vec(&missed).unwrap_or_default();
            line.push(b'\n');
            Bytes::from(line)
        })
    }
}
