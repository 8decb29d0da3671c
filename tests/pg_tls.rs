//! The PostgreSQL store over TLS: `sslmode` and `sslrootcert` in the store URL, as libpq reads
//! them.

use muster_suite::{wait_role, Coordinator, Postgres};
use serde_json::json;

#[test]
fn a_postgres_store_over_verified_tls_runs_jobs_and_an_unverifiable_server_is_refused() {
    let pg = Postgres::start_tls();
    let cert = pg.tls_cert.clone().expect("a TLS server");
    let url = format!(
        "{}?sslmode=verify-full&sslrootcert={}",
        pg.url(),
        cert.display()
    );
    let c = Coordinator::start(&["--store", &url, "--lease", "1"]);
    wait_role(&c.url, "leader");
    let _worker = c.worker("w1", 1);
    let api = c.api();
    let id = api.submit(&json!({"kind": "sum", "input": [1, 2, 3], "chunks": 3}));
    assert_eq!(api.result(&id), json!(6));
    let log = pg.log();
    let sessions: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("connection authorized"))
        .collect();
    assert!(!sessions.is_empty(), "{log}");
    assert!(
        sessions.iter().all(|l| l.contains("SSL enabled")),
        "a connection in the clear:\n{log}"
    );

    // Without the CA, the web's public roots do not vouch for a self-signed certificate.
    let untrusting = Coordinator::start(&[
        "--store",
        &format!("{}?sslmode=verify-full", pg.url()),
        "--lease",
        "1",
    ]);
    let line = untrusting.proc.wait_for("cannot reach postgres");
    assert!(line.contains("certificate"), "{line}");
    // `require` to a server without TLS is refused too.
    let plain = Postgres::start();
    let insisting = Coordinator::start(&[
        "--store",
        &format!("{}?sslmode=require", plain.url()),
        "--lease",
        "1",
    ]);
    let line = insisting.proc.wait_for("cannot reach postgres");
    assert!(line.contains("TLS"), "{line}");
}
