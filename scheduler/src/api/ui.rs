//! The dashboard: static files compiled into the binary (no CDN, no build step), served at `/`
//! and `/ui/{file}` without a token. They hold no data: the page asks for the client token and
//! reads the API with it as a bearer header. The Content-Security-Policy allows only this
//! origin's scripts, styles and connections.

use actix_web::http::header::{self, HeaderValue};
use actix_web::{web, HttpResponse};

use crate::error::{ApiError, Problem};

/// The dashboard's files: name, content type, content.
const FILES: [(&str, &str, &str); 3] = [
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_str!("../../ui/app.js"),
    ),
    (
        "style.css",
        "text/css; charset=utf-8",
        include_str!("../../ui/style.css"),
    ),
    (
        "index.html",
        "text/html; charset=utf-8",
        include_str!("../../ui/index.html"),
    ),
];

/// What the page may load and connect to: this origin only.
const CSP: &str =
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; \
connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// `GET /`: the dashboard.
#[utoipa::path(get, path = "/", tag = "meta", security(()),
    responses((status = 200, description = "The dashboard's page", body = String, content_type = "text/html")))]
pub(super) async fn index() -> HttpResponse {
    serve("index.html").unwrap_or_else(|| HttpResponse::NotFound().finish())
}

/// `GET /ui/{file}`: one of the dashboard's files.
#[utoipa::path(get, path = "/ui/{file}", tag = "meta", security(()),
    params(("file" = String, Path, description = "`app.js`, `style.css` or `index.html`")),
    responses(
        (status = 200, description = "The file", body = String, content_type = "text/javascript"),
        (status = 404, description = "No such file", body = Problem, content_type = "application/problem+json"),
    ))]
pub(super) async fn asset(path: web::Path<String>) -> Result<HttpResponse, ApiError> {
    serve(&path).ok_or_else(|| ApiError::RouteNotFound {
        method: "GET".to_owned(),
        path: format!("/ui/{path}"),
    })
}

fn serve(name: &str) -> Option<HttpResponse> {
    let (_, content_type, body) = FILES.iter().find(|(n, _, _)| *n == name)?;
    let mut response = HttpResponse::Ok()
        .content_type(*content_type)
        .insert_header((header::CONTENT_SECURITY_POLICY, CSP))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .insert_header((header::REFERRER_POLICY, "no-referrer"))
        // The files change with the binary: a browser asks again, cheaply.
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .body(*body);
    response
        .headers_mut()
        .insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    Some(response)
}
