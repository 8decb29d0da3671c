//! The README's path: `muster up --workers 2`, then `muster submit ... --wait` with no token flags.

use std::process::Command;

use muster_suite::{bin, listening_url, Proc};

#[test]
fn up_then_submit_with_wait_prints_the_sum() {
    let dir = tempfile::tempdir().unwrap();
    let mut up = Command::new(bin("muster"));
    up.args(["up", "--workers", "2", "--bind", "127.0.0.1:0"])
        .current_dir(dir.path())
        .env_remove("MUSTER_CLIENT_TOKEN")
        .env_remove("MUSTER_WORKER_TOKEN");
    let mut cluster = Proc::spawn("muster up", up);
    let url = listening_url(&cluster);
    cluster.wait_for("client token: ");
    cluster.wait_for_nth("registered with coordinator", 2);

    let numbers: Vec<String> = (1..=100_000).map(|n| n.to_string()).collect();
    std::fs::write(dir.path().join("numbers.txt"), numbers.join("\n")).unwrap();
    let out = Command::new(bin("muster"))
        .args([
            "submit",
            "sum",
            "--input-file",
            "numbers.txt",
            "--chunks",
            "10",
            "--wait",
            "--scheduler",
            &url,
        ])
        .current_dir(dir.path())
        .env_remove("MUSTER_TOKEN")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "5000050000");

    let jobs = Command::new(bin("muster"))
        .args(["jobs", "--json", "--scheduler", &url])
        .current_dir(dir.path())
        .output()
        .unwrap();
    let page: serde_json::Value = serde_json::from_slice(&jobs.stdout).unwrap();
    assert_eq!(page["jobs"][0]["status"], "succeeded");

    cluster.signal("TERM");
    assert_eq!(cluster.wait_exit(), Some(0));
}
