//! HTTPS: a coordinator with a certificate serves clients, the CLI and workers that trust it, and
//! nothing else.

use std::process::Command;

use muster_suite::{bin, self_signed_certificate, Api, Coordinator, CLIENT_TOKEN, WORKER_TOKEN};
use serde_json::json;

#[test]
fn workers_clients_and_the_cli_that_trust_the_certificate_run_jobs_over_https() {
    let c = Coordinator::start_tls(&[]);
    assert!(c.url.starts_with("https://127.0.0.1:"), "{}", c.url);
    let _worker = c.worker("w1", 2);
    let api = c.api();
    let id =
        api.submit(&json!({"kind": "sum", "input": (1..=1000).collect::<Vec<i64>>(), "chunks": 4}));
    assert_eq!(api.result(&id), json!(500_500));

    let (cert, _) = c.tls.clone().expect("a certificate");
    let out = Command::new(bin("muster"))
        .args(["result", &id, "--scheduler", &c.url, "--ca-cert"])
        .arg(&cert)
        .env("MUSTER_TOKEN", CLIENT_TOKEN)
        .output()
        .expect("muster result");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "500500");
}

#[test]
fn connections_that_do_not_trust_the_certificate_or_speak_plain_http_are_refused() {
    let c = Coordinator::start_tls(&[]);
    let plain = Api::new(&c.url.replace("https://", "http://"), Some(CLIENT_TOKEN));
    assert!(
        plain.try_call("GET", "/healthz", None, &[]).is_err(),
        "plain HTTP got an answer"
    );

    // Another certificate than the one served: the worker cannot verify the coordinator.
    let other = tempfile::tempdir().expect("temp dir");
    let (stranger, _) = self_signed_certificate(other.path());
    let mut worker = Command::new(bin("muster-worker"));
    worker
        .args(["--scheduler", &c.url, "--name", "untrusting", "--ca-cert"])
        .arg(&stranger)
        .env("MUSTER_WORKER_TOKEN", WORKER_TOKEN)
        .env_remove("MUSTER_SCHEDULER");
    let worker = muster_suite::Proc::spawn("untrusting", worker);
    let line = worker.wait_for("cannot connect to");
    assert!(line.to_lowercase().contains("certificate"), "{line}");
    let trusting = Api::trusting(&c.url, Some(CLIENT_TOKEN), &stranger);
    assert!(
        trusting.try_call("GET", "/healthz", None, &[]).is_err(),
        "an untrusted certificate was accepted"
    );
    assert_eq!(c.api().get("/v1/workers").body["workers"], json!([]));

    let out = Command::new(bin("muster"))
        .args(["workers", "--scheduler", &c.url, "--ca-cert"])
        .arg(&stranger)
        .env("MUSTER_TOKEN", CLIENT_TOKEN)
        .output()
        .expect("muster workers");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
}

#[test]
fn a_certificate_without_its_key_or_an_unreadable_one_is_refused_at_start() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (cert, key) = self_signed_certificate(dir.path());
    let serve = |args: &[&std::ffi::OsStr]| {
        Command::new(bin("muster"))
            .args(["serve", "--bind", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path())
            .args(args)
            .env("MUSTER_CLIENT_TOKEN", CLIENT_TOKEN)
            .env("MUSTER_WORKER_TOKEN", WORKER_TOKEN)
            .output()
            .expect("muster serve")
    };
    let missing = dir.path().join("missing.pem");
    for (args, says) in [
        (vec![cert.as_os_str()], "--tls-cert needs --tls-key"),
        (vec![key.as_os_str()], "--tls-key needs --tls-cert"),
        (
            vec![missing.as_os_str(), key.as_os_str()],
            "cannot read certificates from",
        ),
        (
            vec![cert.as_os_str(), cert.as_os_str()],
            "cannot read a private key from",
        ),
    ] {
        let flags: Vec<&std::ffi::OsStr> = match args.as_slice() {
            [one] if *one == cert.as_os_str() => vec!["--tls-cert".as_ref(), one],
            [one] => vec!["--tls-key".as_ref(), one],
            [c, k] => vec!["--tls-cert".as_ref(), c, "--tls-key".as_ref(), k],
            _ => unreachable!("one or two files"),
        };
        let out = serve(&flags);
        assert!(!out.status.success(), "{says}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(says), "`{says}` not in: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    }
}

#[test]
fn muster_up_with_a_certificate_has_its_local_workers_trust_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (cert, key) = self_signed_certificate(dir.path());
    let mut up = Command::new(bin("muster"));
    up.args([
        "up",
        "--workers",
        "2",
        "--bind",
        "127.0.0.1:0",
        "--tls-cert",
    ])
    .arg(&cert)
    .arg("--tls-key")
    .arg(&key)
    .current_dir(dir.path())
    .env_remove("MUSTER_CA_CERT")
    .env_remove("MUSTER_CLIENT_TOKEN")
    .env_remove("MUSTER_WORKER_TOKEN");
    let mut cluster = muster_suite::Proc::spawn("muster up", up);
    let url = muster_suite::listening_url(&cluster);
    assert!(url.starts_with("https://"), "{url}");
    cluster.wait_for_nth("registered with coordinator", 2);
    let out = Command::new(bin("muster"))
        .args([
            "submit",
            "sum",
            "--items",
            "1",
            "2",
            "3",
            "--wait",
            "--scheduler",
            &url,
            "--ca-cert",
        ])
        .arg(&cert)
        .current_dir(dir.path())
        .env_remove("MUSTER_TOKEN")
        .output()
        .expect("muster submit");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "6");
    cluster.signal("TERM");
    assert_eq!(cluster.wait_exit(), Some(0));
}
