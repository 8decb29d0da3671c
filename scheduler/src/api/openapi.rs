//! The OpenAPI 3.1 document, generated from the handlers' annotations and the types they
//! answer with: `GET /v1/openapi.json` and `muster openapi`.

use std::sync::OnceLock;

use actix_web::HttpResponse;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::openapi::{ContentBuilder, RefOr, ResponseBuilder};
use utoipa::OpenApi;

use super::{cluster, events, jobs, metrics, partials, ui, workers};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Muster",
        description = "Muster's REST API: submit jobs, follow them, read their results, and watch the cluster. \
Every `/v1` call but this document takes the client token as a bearer header (the worker endpoint takes the \
worker token); a refusal is an RFC 9457 problem (`application/problem+json`) whose `detail` says what is wrong.",
        license(name = "Apache-2.0"),
    ),
    paths(
        jobs::submit, jobs::list, jobs::status, jobs::cancel, jobs::result, jobs::junit,
        jobs::logs, jobs::output, events::job_events, cluster::chunks, partials::partials,
        events::cluster_events,
        cluster::attempts, cluster::overview, workers::list, workers::connect, metrics::metrics,
        healthz, document, ui::index, ui::asset,
    ),
    // The events' data: the streams' schemas are text/event-stream, each event's data one of
    // these.
    components(schemas(
        crate::state::events::Happened,
        crate::state::views::Progress,
        crate::state::attempts::AttemptEvent,
        crate::state::live::LiveLine,
        partials::PartialLine,
        partials::PartialsMissed,
    )),
    modifiers(&CommonAnswers),
    security(("bearer" = [])),
    tags(
        (name = "jobs", description = "Submit, follow, cancel and read jobs"),
        (name = "exec", description = "What exec jobs' batches print and report"),
        (name = "cluster", description = "Workers, throughput, attempts and events"),
        (name = "workers", description = "The endpoint worker daemons connect to"),
        (name = "meta", description = "Health, this document and the dashboard"),
    ),
)]
struct ApiDoc;

/// Adds the bearer scheme, and to every operation that takes a token the answers every such
/// operation may give: 401 (no or wrong token), 403 (the other role's token), 307 (a standby
/// pointing at the leader) and 503 (no leader now).
struct CommonAnswers;

impl utoipa::Modify for CommonAnswers {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
        let problem = |description: &str| {
            ResponseBuilder::new()
                .description(description)
                .content(
                    "application/problem+json",
                    ContentBuilder::new()
                        .schema(Some(RefOr::Ref(utoipa::openapi::Ref::from_schema_name(
                            "Problem",
                        ))))
                        .build(),
                )
                .build()
        };
        for item in doc.paths.paths.values_mut() {
            for operation in [
                &mut item.get,
                &mut item.post,
                &mut item.delete,
                &mut item.put,
                &mut item.patch,
            ]
            .into_iter()
            .flatten()
            {
                let open = operation
                    .security
                    .as_ref()
                    .is_some_and(|s| s.iter().all(|r| r == &Default::default()));
                if open {
                    continue;
                }
                let answers = &mut operation.responses.responses;
                for (status, description) in [
                    ("401", "No token, or not a valid one"),
                    ("403", "A token of the other role (client or worker)"),
                    ("503", "No coordinator leads now, or it is stopping"),
                ] {
                    answers
                        .entry(status.to_owned())
                        .or_insert_with(|| RefOr::T(problem(description)));
                }
                answers.entry("307".to_owned()).or_insert_with(|| {
                    RefOr::T(
                        ResponseBuilder::new()
                            .description(
                                "This coordinator is a standby: `Location` names the leader",
                            )
                            .build(),
                    )
                });
            }
        }
    }
}

/// The document as JSON, made once.
pub fn document_json() -> &'static str {
    static DOCUMENT: OnceLock<String> = OnceLock::new();
    DOCUMENT.get_or_init(|| ApiDoc::openapi().to_pretty_json().unwrap_or_default())
}

/// `GET /v1/openapi.json`: this document (no token needed: it holds no data).
#[utoipa::path(get, path = "/v1/openapi.json", tag = "meta", security(()),
    responses((status = 200, description = "The OpenAPI 3.1 document", body = Object)))]
pub(super) async fn document() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(document_json())
}

/// `GET /healthz`'s answer.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub(super) struct Health {
    /// Always `ok`: the process answers.
    #[schema(value_type = String)]
    pub status: &'static str,
    /// `leader` or `standby`.
    #[schema(value_type = String)]
    pub role: &'static str,
}

/// `GET /healthz`: whether this coordinator answers, and whether it leads (no token needed).
#[utoipa::path(get, path = "/healthz", tag = "meta", security(()),
    responses((status = 200, description = "It answers", body = Health)))]
pub(super) async fn healthz(app: actix_web::web::Data<super::AppState>) -> HttpResponse {
    let leads = matches!(app.leadership.role(), crate::leader::Role::Leader { .. })
        && app.coordinator.read().map(|c| c.is_some()).unwrap_or(false);
    let role = if leads { "leader" } else { "standby" };
    HttpResponse::Ok().json(Health { status: "ok", role })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_has_every_route_the_server_answers_and_no_other() {
        let doc: serde_json::Value =
            serde_json::from_str(document_json()).expect("the document is JSON");
        assert_eq!(doc["openapi"], "3.1.0");
        let mut documented = Vec::new();
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for method in item.as_object().expect("a path item").keys() {
                documented.push((method.clone(), path.clone()));
            }
        }
        let mut served: Vec<(String, String)> = super::super::ROUTES
            .iter()
            .map(|(m, p)| (m.to_string(), p.to_string()))
            .collect();
        documented.sort();
        served.sort();
        assert_eq!(documented, served);
    }
}
