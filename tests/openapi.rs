//! The OpenAPI document against the server: valid OpenAPI 3.1 (checked with
//! openapi-spec-validator from PyPI), the same from `muster openapi` as from the server, and
//! every real answer, refusals included, valid against the schema the document gives for its
//! path, method, status and content type.

use std::process::Command;

use muster_suite::{bin, Api, Coordinator, WORKER_TOKEN};
use serde_json::{json, Value};

/// The document, and the operations it describes.
struct Document(Value);

impl Document {
    /// The path template of the document that `path` (without its query) matches.
    fn template(&self, path: &str) -> String {
        let path = path.split('?').next().unwrap_or(path);
        let parts: Vec<&str> = path.split('/').collect();
        self.0["paths"]
            .as_object()
            .expect("paths")
            .keys()
            .find(|template| {
                let want: Vec<&str> = template.split('/').collect();
                want.len() == parts.len()
                    && want
                        .iter()
                        .zip(&parts)
                        .all(|(w, p)| w.starts_with('{') || w == p)
            })
            .unwrap_or_else(|| panic!("no path of the document matches {path}"))
            .clone()
    }

    /// Checks one real answer against the document: its status is documented for the
    /// operation, with its content type, and a JSON body validates against the schema.
    fn check(&self, method: &str, path: &str, answer: &muster_suite::Answer) {
        let template = self.template(path);
        let operation = &self.0["paths"][&template][method.to_lowercase()];
        assert!(
            operation.is_object(),
            "{method} {template} is not documented"
        );
        let response = &operation["responses"][answer.status.to_string()];
        assert!(
            response.is_object(),
            "{method} {path} answered {} ({}), which {method} {template} does not document",
            answer.status,
            answer.body
        );
        let media = answer
            .content_type
            .split(';')
            .next()
            .unwrap_or_default()
            .trim();
        let content = response["content"].as_object().cloned().unwrap_or_default();
        let (_, documented) = content
            .iter()
            .find(|(documented, _)| documented.split(';').next().unwrap_or_default() == media)
            .unwrap_or_else(|| {
                panic!(
                    "{method} {path} {}: content type {media} is not among {:?}",
                    answer.status,
                    content.keys().collect::<Vec<_>>()
                )
            });
        if media.ends_with("json") {
            self.validate(
                &documented["schema"],
                &answer.body,
                &format!("{method} {path}"),
            );
        }
    }

    /// Validates `value` against `schema`, whose references point into the document.
    fn validate(&self, schema: &Value, value: &Value, what: &str) {
        let mut root = schema.clone();
        root["components"] = self.0["components"].clone();
        let validator = jsonschema::validator_for(&root)
            .unwrap_or_else(|e| panic!("{what}: the document's schema does not compile: {e}"));
        let errors: Vec<String> = validator
            .iter_errors(value)
            .map(|e| format!("{e} at {}", e.instance_path()))
            .collect();
        assert!(errors.is_empty(), "{what}: {errors:?}\nbody: {value}");
    }

    /// Validates `value` against the component schema `name`.
    fn validate_component(&self, name: &str, value: &Value) {
        let schema = json!({"$ref": format!("#/components/schemas/{name}")});
        self.validate(&schema, value, name);
    }
}

#[test]
fn the_document_is_valid_openapi_and_every_answer_fits_its_schema() {
    let c = Coordinator::start(&[]);
    let _stock = c.worker_with(bin("muster-worker"), "w1", 2, &["--allow-exec", "sh"]);
    let _custom = c.custom_worker("c1", 2);
    let api = c.api();
    let anonymous = Api::new(&c.url, None);
    let as_worker = Api::new(&c.url, Some(WORKER_TOKEN));

    // Served without a token, and the same as `muster openapi` prints.
    let served = anonymous.get("/v1/openapi.json");
    assert_eq!(served.status, 200);
    let printed = Command::new(bin("muster"))
        .arg("openapi")
        .output()
        .expect("muster openapi");
    assert!(printed.status.success());
    let printed: Value = serde_json::from_slice(&printed.stdout).expect("JSON");
    assert_eq!(printed, served.body);
    let doc = Document(served.body);
    assert_eq!(doc.0["openapi"], json!("3.1.0"));
    assert_eq!(
        doc.0["components"]["securitySchemes"]["bearer"]["scheme"],
        json!("bearer")
    );

    // Valid OpenAPI 3.1, by an independent validator.
    let file = tempfile::NamedTempFile::new().expect("a file");
    std::fs::write(file.path(), serde_json::to_vec(&doc.0).expect("JSON")).expect("written");
    let validator = muster_suite::python_tool("openapi-spec-validator", "openapi-spec-validator");
    let out = Command::new(&validator)
        .arg(file.path())
        .output()
        .expect("openapi-spec-validator");
    let said =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && said.contains("OK"), "{said}");

    // Every operation, answered for real, successes and refusals.
    let check = |api: &Api, method: &str, path: &str, body: Option<&str>| {
        let answer = api.call(method, path, body, &[]);
        doc.check(method, path, &answer);
        answer
    };
    let expect = |api: &Api, method: &str, path: &str, body: Option<&str>, status: u16| {
        let answer = check(api, method, path, body);
        assert_eq!(answer.status, status, "{method} {path}: {}", answer.body);
        answer
    };
    let sum = expect(
        &api,
        "POST",
        "/v1/jobs",
        Some(r#"{"kind": "sum", "input": [1, 2, 3]}"#),
        201,
    );
    let id = sum.body["id"].as_str().expect("an id").to_owned();
    let keyed = |api: &Api| {
        let answer = api.call(
            "POST",
            "/v1/jobs",
            Some(r#"{"kind": "sort", "input": [3, 1, 2]}"#),
            &[("Idempotency-Key", "openapi-test")],
        );
        doc.check("POST", "/v1/jobs", &answer);
        answer.status
    };
    assert_eq!((keyed(&api), keyed(&api)), (201, 200));
    expect(&api, "POST", "/v1/jobs", Some("{"), 400);
    expect(&api, "POST", "/v1/jobs", Some(r#"{"kind": "nope"}"#), 422);
    expect(&anonymous, "GET", "/v1/jobs", None, 401);
    expect(&as_worker, "GET", "/v1/jobs", None, 403);
    expect(
        &api,
        "GET",
        &format!("/v1/jobs/{id}/result?wait=30"),
        None,
        200,
    );
    expect(&api, "GET", "/v1/jobs", None, 200);
    expect(&api, "GET", "/v1/jobs?status=bogus", None, 422);
    expect(&api, "GET", &format!("/v1/jobs/{id}"), None, 200);
    let missing = "/v1/jobs/01a24e4c-2a88-73f4-9e3d-e45585f8c833";
    expect(&api, "GET", missing, None, 404);
    expect(&api, "GET", &format!("/v1/jobs/{id}/chunks"), None, 200);
    expect(&api, "GET", &format!("/v1/jobs/{id}/logs"), None, 422);
    expect(&api, "GET", &format!("/v1/jobs/{id}/junit"), None, 422);
    expect(&api, "GET", &format!("/v1/jobs/{id}/partials"), None, 409);

    // A job with a retried chunk: its status lists failed attempts.
    let failing = check(
        &api,
        "POST",
        "/v1/jobs",
        Some(r#"{"task": "fail", "chunks": [1], "reduce": "none", "max_attempts": 2}"#),
    );
    let failing = failing.body["id"].as_str().expect("an id").to_owned();
    let failed = api.wait_status(&failing, |s| s["status"] == json!("failed"));
    assert!(!failed["retries"].as_array().expect("retries").is_empty());
    expect(&api, "GET", &format!("/v1/jobs/{failing}"), None, 200);
    expect(
        &api,
        "GET",
        &format!("/v1/jobs/{failing}/result"),
        None,
        409,
    );

    // An exec job: its output, logs and merged report.
    let exec = check(
        &api,
        "POST",
        "/v1/jobs",
        Some(
            r#"{"kind": "exec", "program": "sh", "input": ["a", "b"], "chunks": 2,
                "args": ["-c", "echo ran $1; echo '<testsuite><testcase name=\"'$1'\"/></testsuite>' > $0", "{junit}", "{items}"]}"#,
        ),
    );
    let exec = exec.body["id"].as_str().expect("an id").to_owned();
    api.wait_result(&exec);
    for path in ["output", "logs", "junit", "result", "chunks"] {
        let answer = check(&api, "GET", &format!("/v1/jobs/{exec}/{path}"), None);
        assert_eq!(answer.status, 200, "{path}: {}", answer.body);
    }

    // A cancelled job.
    let long = api.submit(
        &json!({"task": "nap", "chunks": [{"ms": 60_000, "value": 1}],
        "reduce": "sum"}),
    );
    expect(&api, "DELETE", &format!("/v1/jobs/{long}"), None, 200);

    // The cluster.
    expect(&api, "GET", "/v1/workers", None, 200);
    expect(&api, "GET", "/v1/overview", None, 200);
    expect(&api, "GET", "/v1/overview?seconds=0", None, 422);
    let attempts = check(&api, "GET", "/v1/attempts", None);
    assert!(!attempts.body["attempts"]
        .as_array()
        .expect("attempts")
        .is_empty());
    expect(&api, "GET", "/v1/attempts?after=x", None, 422);
    expect(&api, "GET", "/metrics", None, 200);
    expect(&anonymous, "GET", "/healthz", None, 200);
    expect(&anonymous, "GET", "/", None, 200);
    expect(&anonymous, "GET", "/ui/app.js", None, 200);
    expect(&anonymous, "GET", "/ui/nope.js", None, 404);
    expect(&as_worker, "GET", "/v1/workers/connect", None, 422);

    // The streams: their content type, and each event's data fits its schema.
    let stream = check(&api, "GET", &format!("/v1/jobs/{id}/events"), None);
    assert_eq!(stream.status, 200);
    for (name, _, data) in c
        .event_feed(&format!("/v1/jobs/{exec}/events"), None)
        .iter()
    {
        match name.as_str() {
            "progress" => doc.validate_component("Progress", &data),
            "attempt" => doc.validate_component("AttemptEvent", &data),
            "log" => doc.validate_component("LiveLine", &data),
            _ => {}
        }
    }
    let cluster = c.event_feed("/v1/events", None);
    for _ in 0..4 {
        let (_, _, data) = cluster.recv_timeout(muster_suite::WAIT).expect("an event");
        doc.validate_component("Happened", &data);
    }
}
