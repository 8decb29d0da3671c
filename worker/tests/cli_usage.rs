//! Bad worker invocations end with one line on stderr and a non-zero exit.

use std::process::Command;

#[test]
fn a_scheduler_that_is_not_http_is_refused() {
    let out = Command::new(env!("CARGO_BIN_EXE_muster-worker"))
        .args(["--scheduler", "ftp://example"])
        .env_remove("MUSTER_SCHEDULER")
        .output()
        .expect("run muster-worker");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2));
    assert!(err.contains("must be an http:// or https:// URL"), "{err}");
}

#[test]
fn zero_slots_are_refused() {
    let out = Command::new(env!("CARGO_BIN_EXE_muster-worker"))
        .args(["--slots", "0"])
        .output()
        .expect("run muster-worker");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--slots"));
}
