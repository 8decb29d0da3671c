//! Data at rest: the data dir and everything in it are private to the coordinator's user, and a
//! token file other users can read is refused, as ssh refuses such a private key.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use muster_suite::{bin, listening_url, Api, Proc, CLIENT_TOKEN, WORKER_TOKEN};
use serde_json::json;

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

#[test]
fn the_data_dir_and_every_file_in_it_are_private_to_the_coordinator() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("data");
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut serve = Command::new(bin("muster"));
    serve
        .args(["serve", "--bind", "127.0.0.1:0", "--data-dir"])
        .arg(&dir)
        .env_remove("MUSTER_CLIENT_TOKEN")
        .env_remove("MUSTER_WORKER_TOKEN");
    let coordinator = Proc::spawn("coordinator", serve);
    let url = listening_url(&coordinator);
    coordinator.wait_for("client token: ");
    let token = std::fs::read_to_string(dir.join("client.token")).unwrap();
    // A job large enough for its payloads to go to a file of their own; no worker runs it.
    let input: Vec<u64> = (0..300_000).collect();
    Api::new(&url, Some(token.trim())).submit(&json!({"kind": "sum", "input": input, "chunks": 2}));

    assert_eq!(mode(&dir), 0o700, "the data dir");
    let mut files = 0;
    for entry in walk(&dir) {
        let expected = if entry.is_dir() { 0o700 } else { 0o600 };
        assert_eq!(mode(&entry), expected, "{}", entry.display());
        files += 1;
    }
    for name in [
        "muster.db",
        "muster.db-wal",
        "client.token",
        "worker.token",
        "payloads",
    ] {
        assert!(dir.join(name).exists(), "{name} is missing");
    }
    assert!(files >= 6, "{files} entries");
}

/// Every file and directory under `dir`.
fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).expect("readable dir") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            out.extend(walk(&path));
        }
        out.push(path);
    }
    out
}

#[test]
fn a_token_file_other_users_can_read_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("client.token");
    std::fs::write(&token, format!("{CLIENT_TOKEN}\n")).unwrap();
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = Command::new(bin("muster"))
        .args(["serve", "--bind", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .arg("--client-token-file")
        .arg(&token)
        .env_remove("MUSTER_CLIENT_TOKEN")
        .env("MUSTER_WORKER_TOKEN", WORKER_TOKEN)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("chmod 600"), "{stderr}");

    let worker = Command::new(bin("muster-worker"))
        .args(["--scheduler", "http://127.0.0.1:9", "--token-file"])
        .arg(&token)
        .env_remove("MUSTER_WORKER_TOKEN")
        .output()
        .unwrap();
    assert!(!worker.status.success());
    assert!(
        String::from_utf8_lossy(&worker.stderr).contains("chmod 600"),
        "{}",
        String::from_utf8_lossy(&worker.stderr)
    );
}
