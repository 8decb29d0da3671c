//! Bad coordinator and client invocations end with one line on stderr and a non-zero exit.

use std::process::Command;

fn muster(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_muster"))
        .args(args)
        .env_remove("MUSTER_SCHEDULER")
        .output()
        .expect("run muster");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn insecure_on_a_public_address_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (code, err) = muster(&[
        "serve",
        "--bind",
        "0.0.0.0:0",
        "--insecure",
        "--data-dir",
        dir.path().to_str().unwrap(),
    ]);
    assert_eq!(code, Some(2));
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("--insecure is refused"), "{err}");
}

#[test]
fn unknown_config_file_keys_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("muster.toml");
    std::fs::write(&file, "heartbeat = 3\n").unwrap();
    let (code, err) = muster(&["serve", "--config", file.to_str().unwrap()]);
    assert_eq!(code, Some(2));
    assert!(err.contains("unknown field `heartbeat`"), "{err}");
}

#[test]
fn client_without_a_reachable_coordinator_fails_in_one_line() {
    let (code, err) = muster(&[
        "status",
        "01939f3e-0000-7000-8000-000000000000",
        "--scheduler",
        "http://127.0.0.1:9",
    ]);
    assert_eq!(code, Some(1));
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("cannot reach http://127.0.0.1:9"), "{err}");
}
