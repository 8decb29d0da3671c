//! The REST surface's refusals (problem+json), idempotency, and the protocol version check.

use std::io::{Read, Write};
use std::net::TcpStream;

use muster_suite::{Api, Coordinator, CLIENT_TOKEN, WORKER_TOKEN};
use serde_json::json;

fn assert_problem(answer: &muster_suite::Answer, status: u16, detail_has: &str) {
    assert_eq!(answer.status, status, "{:?}", answer.body);
    assert_eq!(answer.content_type, "application/problem+json");
    assert_eq!(answer.body["status"], status);
    let detail = answer.body["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains(detail_has),
        "detail `{detail}` lacks `{detail_has}`"
    );
}

#[test]
fn bad_requests_get_precise_problem_details() {
    let c = Coordinator::start(&["--max-body-bytes", "2048"]);
    let api = c.api();
    let post = |body: &str| api.call("POST", "/v1/jobs", Some(body), &[]);

    assert_problem(&post("{\"kind\": \"sum\", "), 400, "malformed json");
    assert_problem(
        &post(r#"{"kind": "product", "input": [1]}"#),
        422,
        "unknown kind `product`",
    );
    assert_problem(
        &post(r#"{"kind": "sum", "input": [1], "chunks": 0}"#),
        422,
        "`chunks`",
    );
    assert_problem(
        &post(r#"{"kind": "sum", "input": [1], "chunkz": 2}"#),
        422,
        "unknown field `chunkz`",
    );
    let big = format!(
        r#"{{"kind": "sum", "input": [{}]}}"#,
        vec!["1"; 3000].join(",")
    );
    assert_problem(&post(&big), 413, "over the limit of 2048 bytes");

    let anonymous = Api::new(&c.url, None);
    assert_problem(
        &anonymous.call("POST", "/v1/jobs", Some("{}"), &[]),
        401,
        "missing `Authorization",
    );
    let wrong = Api::new(&c.url, Some("not-a-valid-token-at-all"));
    assert_problem(&wrong.get("/v1/jobs"), 401, "not valid");
    let worker = Api::new(&c.url, Some(WORKER_TOKEN));
    assert_problem(
        &worker.call(
            "POST",
            "/v1/jobs",
            Some(r#"{"kind": "sum", "input": [1]}"#),
            &[],
        ),
        403,
        "worker token",
    );
    assert_problem(
        &api.get("/v1/jobs/01939f3e-0000-7000-8000-000000000000"),
        404,
        "no job with id",
    );
    assert_problem(&api.get("/v1/jobs/not-an-id/result"), 404, "no job with id");
    assert_problem(
        &api.get("/v1/jobs?status=done"),
        422,
        "unknown status `done`",
    );

    let health = anonymous.get("/healthz");
    assert_eq!(health.status, 200);
    assert_eq!(health.body, json!({"status": "ok", "role": "leader"}));
}

#[test]
fn the_same_idempotency_key_returns_the_same_job_which_runs_once() {
    let c = Coordinator::start(&[]);
    let _w = c.worker("w", 2);
    let api = c.api();
    let body = json!({"kind": "sum", "input": [1, 2, 3, 4], "chunks": 2}).to_string();
    let key = [("Idempotency-Key", "order-42")];
    let first = api.call("POST", "/v1/jobs", Some(&body), &key);
    let second = api.call("POST", "/v1/jobs", Some(&body), &key);
    assert_eq!(first.status, 201);
    assert_eq!(second.status, 200);
    assert_eq!(first.body["id"], second.body["id"]);
    let id = first.body["id"].as_str().unwrap();
    assert_eq!(api.result(id), json!(10));
    assert_eq!(api.status(id)["attempts"], 2);
    let jobs = api.get("/v1/jobs").body;
    assert_eq!(jobs["jobs"].as_array().unwrap().len(), 1);

    let other = json!({"kind": "sum", "input": [5]}).to_string();
    let conflict = api.call("POST", "/v1/jobs", Some(&other), &key);
    assert_problem(&conflict, 422, "idempotency key `order-42`");
}

#[test]
fn a_worker_of_another_protocol_version_is_refused_with_a_reason() {
    let c = Coordinator::start(&[]);
    let addr = c.url.trim_start_matches("http://");
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(muster_suite::WAIT)).unwrap();
    write!(
        stream,
        "GET /v1/workers/connect HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         muster-protocol: 99\r\nAuthorization: Bearer {WORKER_TOKEN}\r\n\r\n"
    )
    .unwrap();
    // Read until the close frame (opcode 0x8) that follows the 101 response.
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    let frame_start = loop {
        let n = stream.read(&mut chunk).unwrap();
        assert!(
            n > 0,
            "connection closed without a close frame: {}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            if buf.len() > end + 4 + 4 {
                break end + 4;
            }
        }
    };
    assert!(
        buf.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&buf)
    );
    let frame = &buf[frame_start..];
    assert_eq!(frame[0], 0x88, "expected a close frame");
    let len = usize::from(frame[1] & 0x7f);
    while buf.len() < frame_start + 2 + len {
        let n = stream.read(&mut chunk).unwrap();
        assert!(n > 0);
        buf.extend_from_slice(&chunk[..n]);
    }
    let frame = &buf[frame_start..];
    let code = u16::from_be_bytes([frame[2], frame[3]]);
    let reason = String::from_utf8_lossy(&frame[4..2 + len]);
    assert_eq!(code, 4001);
    assert!(
        reason.contains("protocol version 99 is not supported"),
        "{reason}"
    );
    c.proc.wait_for("protocol version 99 is not supported");
}

#[test]
fn metrics_show_jobs_chunks_and_workers_in_prometheus_text_for_a_client_token() {
    let c = Coordinator::start(&[]);
    let _worker = c.worker("w1", 2);
    let api = c.api();
    let id = api.submit(&json!({"kind": "sum", "input": [1, 2, 3, 4, 5, 6], "chunks": 3}));
    assert_eq!(api.result(&id), json!(21));

    let answer = api.get("/metrics");
    assert_eq!(answer.status, 200);
    assert_eq!(answer.content_type, "text/plain; version=0.0.4");
    let (status, text) = api.call_bytes("GET", "/metrics", None);
    assert_eq!(status, 200);
    let text = String::from_utf8(text).expect("utf-8");
    let value = |series: &str| -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    };
    for (series, expected) in [
        ("muster_leader", 1.0),
        ("muster_store_info{store=\"sqlite\"}", 1.0),
        ("muster_jobs{status=\"succeeded\"}", 1.0),
        ("muster_jobs{status=\"running\"}", 0.0),
        ("muster_jobs_submitted_total", 1.0),
        ("muster_jobs_finished_total{status=\"succeeded\"}", 1.0),
        ("muster_jobs_finished_total{status=\"failed\"}", 0.0),
        ("muster_chunk_attempts_started_total", 3.0),
        ("muster_chunk_attempts_succeeded_total", 3.0),
        (
            "muster_chunk_attempts_failed_total{reason=\"worker_lost\"}",
            0.0,
        ),
        ("muster_chunks_pending", 0.0),
        ("muster_workers", 1.0),
        ("muster_worker_slots", 2.0),
        ("muster_worker_slots_busy", 0.0),
        ("muster_chunk_run_seconds_count{task=\"sum\"}", 3.0),
        ("muster_chunk_queue_seconds_count", 3.0),
    ] {
        assert_eq!(value(series), Some(expected), "{series} in:\n{text}");
    }
    assert!(
        text.contains("# TYPE muster_jobs_submitted_total counter"),
        "{text}"
    );
    // The job's insert and its end were committed and synced: in one commit or more, as the
    // writer groups whatever is queued when it starts a transaction.
    assert!(
        text.contains("# TYPE muster_store_commit_seconds histogram"),
        "{text}"
    );
    let commits = value("muster_store_commit_seconds_count").unwrap_or(0.0);
    assert!(commits >= 1.0, "{commits} commits in:\n{text}");
    assert_eq!(
        value("muster_store_commit_seconds_bucket{le=\"+Inf\"}"),
        Some(commits)
    );

    let anonymous = Api::new(&c.url, None);
    assert_problem(&anonymous.get("/metrics"), 401, "missing `Authorization");
    let worker = Api::new(&c.url, Some(WORKER_TOKEN));
    assert_problem(&worker.get("/metrics"), 403, "worker token");
}

#[test]
fn a_body_that_trickles_in_past_the_body_timeout_gets_408() {
    let c = Coordinator::start(&["--body-timeout", "0.5"]);
    let addr = c.url.trim_start_matches("http://").to_owned();
    let mut stream = TcpStream::connect(&addr).expect("connect");
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .expect("read timeout");
    let head = format!(
        "POST /v1/jobs HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {CLIENT_TOKEN}\r\n\
         Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"kind\": "
    );
    stream.write_all(head.as_bytes()).expect("send head");
    // The rest of the body never comes; the answer must.
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&answer).contains("}") {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
        }
    }
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("application/problem+json"), "{answer}");
    assert!(answer.contains("--body-timeout"), "{answer}");
}

#[test]
fn json_logs_are_one_object_a_line_with_the_job_id_as_a_field() {
    let c = Coordinator::start(&["--log-format", "json"]);
    let _worker = c.worker("w1", 1);
    let api = c.api();
    let id = api.submit(&json!({"kind": "sum", "input": [1, 2, 3]}));
    assert_eq!(api.result(&id), json!(6));
    let line = c.proc.wait_for("job finished");
    let entry: serde_json::Value = serde_json::from_str(line.trim()).expect("a JSON log line");
    assert_eq!(entry["level"], json!("INFO"), "{entry}");
    assert_eq!(entry["fields"]["message"], json!("job finished"), "{entry}");
    assert_eq!(entry["fields"]["job_id"], json!(id), "{entry}");
    assert_eq!(entry["fields"]["status"], json!("succeeded"), "{entry}");
}

#[test]
fn the_cluster_event_stream_tells_of_jobs_and_workers_and_resumes_after_an_event() {
    let c = Coordinator::start(&[]);
    let feed = c.event_feed("/v1/events", None);
    let next = |feed: &std::sync::mpsc::Receiver<muster_suite::Event>| {
        feed.recv_timeout(muster_suite::WAIT).expect("an event")
    };
    let worker = c.worker("w1", 1);
    let (name, first_id, joined) = next(&feed);
    assert_eq!(
        (name.as_str(), &joined["name"]),
        ("worker_joined", &json!("w1"))
    );
    let api = c.api();
    let id = api.submit(&json!({"kind": "sum", "input": [1, 2, 3]}));
    assert_eq!(api.result(&id), json!(6));
    let (name, _, submitted) = next(&feed);
    assert_eq!(
        (name.as_str(), &submitted["job_id"]),
        ("job_submitted", &json!(id))
    );
    let (name, _, ended) = next(&feed);
    assert_eq!(
        (name.as_str(), &ended["job_id"], &ended["status"]),
        ("job_ended", &json!(id), &json!("succeeded"))
    );
    worker.signal("TERM");
    let (name, _, draining) = next(&feed);
    assert_eq!(
        (name.as_str(), &draining["name"]),
        ("worker_draining", &json!("w1"))
    );
    let (name, _, left) = next(&feed);
    assert_eq!(
        (name.as_str(), &left["chunks_lost"]),
        ("worker_left", &json!(0))
    );
    // A reader that comes back after the first event gets the rest, from the second.
    let again = c.event_feed("/v1/events", Some(&first_id));
    let names: Vec<String> = (0..4).map(|_| next(&again).0).collect();
    assert_eq!(
        names,
        [
            "job_submitted",
            "job_ended",
            "worker_draining",
            "worker_left"
        ]
    );
}

/// The coordinator's peak memory over a 100,000-chunk job, with `readers` clients that open the
/// job's event stream and never read it.
fn peak_with_stalled_readers(readers: usize) -> u64 {
    use std::io::Write;
    let c = Coordinator::start(&[]);
    let api = c.api();
    let input: Vec<u64> = (0..100_000).collect();
    let id = api.submit(&json!({"kind": "sum", "input": input, "chunks": 100_000}));
    let address = c.url.trim_start_matches("http://").to_owned();
    let stalled: Vec<std::net::TcpStream> = (0..readers)
        .map(|_| {
            let mut stream = std::net::TcpStream::connect(&address).expect("a connection");
            let request = format!(
                "GET /v1/jobs/{id}/events HTTP/1.1\r\nHost: {address}\r\n\
                 Authorization: Bearer {}\r\n\r\n",
                muster_suite::CLIENT_TOKEN
            );
            stream.write_all(request.as_bytes()).expect("a request");
            stream
        })
        .collect();
    let _workers = [c.worker("w1", 4), c.worker("w2", 4)];
    let sum: u64 = (0..100_000).sum();
    assert_eq!(api.result(&id), json!(sum));
    let peak = muster_suite::peak_rss_mib(c.proc.pid());
    drop(stalled);
    peak
}

#[test]
fn readers_that_never_read_the_event_stream_do_not_grow_the_coordinator() {
    let alone = peak_with_stalled_readers(0);
    let stalled = peak_with_stalled_readers(10);
    eprintln!("peak RSS: {alone} MiB without readers, {stalled} MiB with 10 stalled readers");
    assert!(
        stalled <= alone + 50,
        "10 stalled readers took the coordinator from {alone} to {stalled} MiB"
    );
}

#[test]
fn a_thousand_chunk_jobs_stream_counts_up_ends_and_resumes_without_a_gap() {
    let c = Coordinator::start(&[]);
    let _w1 = c.custom_worker("c1", 4);
    let _w2 = c.custom_worker("c2", 4);
    let api = c.api();
    let chunks: Vec<serde_json::Value> = (0..1000).map(|_| json!({"ms": 2, "value": 1})).collect();
    let id = api.submit(&json!({"task": "nap", "chunks": chunks, "reduce": "sum"}));
    let path = format!("/v1/jobs/{id}/events");
    let all: Vec<muster_suite::Event> = c.event_feed(&path, None).iter().collect();
    let (last, _, end) = all.last().expect("events");
    assert_eq!(
        (last.as_str(), &end["status"]),
        ("end", &json!("succeeded"))
    );
    // Progress counts never go back, and reach the whole job.
    let progress: Vec<(u64, u64)> = all
        .iter()
        .filter(|(name, _, _)| name == "progress")
        .map(|(_, _, p)| {
            let n = |k: &str| p["chunks"][k].as_u64().expect("a count");
            (n("succeeded"), n("succeeded") + n("running") + n("pending"))
        })
        .collect();
    assert!(progress.len() > 1, "{progress:?}");
    assert!(
        progress.windows(2).all(|w| w[0].0 <= w[1].0),
        "{progress:?}"
    );
    assert!(
        progress.iter().all(|p| p.1 == 1000 || p.0 == 1000),
        "{progress:?}"
    );
    assert_eq!(progress.last().map(|p| p.0), Some(1000));
    // Every chunk's attempt started and succeeded, once each.
    let attempts = |events: &[muster_suite::Event]| -> Vec<(u64, String)> {
        events
            .iter()
            .filter(|(name, _, _)| name == "attempt")
            .map(|(_, _, a)| {
                (
                    a["chunk"].as_u64().expect("a chunk"),
                    a["state"].to_string(),
                )
            })
            .collect()
    };
    let mut seen = attempts(&all);
    seen.sort();
    let mut expected: Vec<(u64, String)> = (0..1000)
        .flat_map(|c| {
            [
                (c, "\"started\"".to_owned()),
                (c, "\"succeeded\"".to_owned()),
            ]
        })
        .collect();
    expected.sort();
    assert_eq!(seen, expected);
    // A reader that reconnects after any event gets exactly the events that followed it.
    for cut in [0, all.len() / 3, all.len() / 2, all.len() - 2] {
        let (_, last_id, _) = &all[cut];
        let rest: Vec<muster_suite::Event> = c.event_feed(&path, Some(last_id)).iter().collect();
        let mut resumed = attempts(&all[..=cut]);
        resumed.extend(attempts(&rest));
        resumed.sort();
        assert_eq!(resumed, expected, "resumed after event {cut} ({last_id})");
        assert_eq!(rest.last().map(|(name, _, _)| name.as_str()), Some("end"));
    }
}
