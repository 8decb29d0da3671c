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

#[test]
fn a_reader_that_goes_away_ends_the_cli_quietly() {
    use std::io::Read;

    use muster_suite::{Coordinator, CLIENT_TOKEN};

    let c = Coordinator::start(&[]);
    let _worker = c.worker("w1", 2);
    let dir = tempfile::tempdir().unwrap();
    // A sorted result of ~2 MB: far more than a pipe holds, so the CLI is still writing when its
    // reader goes away.
    let numbers: Vec<String> = (0..300_000u32)
        .map(|n| (n.wrapping_mul(2_654_435_761) % 1_000_000).to_string())
        .collect();
    std::fs::write(dir.path().join("numbers.txt"), numbers.join("\n")).unwrap();
    let mut child = Command::new(bin("muster"))
        .args(["submit", "sort", "--input-file", "numbers.txt", "--wait"])
        .args(["--scheduler", &c.url])
        .current_dir(dir.path())
        .env("MUSTER_TOKEN", CLIENT_TOKEN)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut head = [0u8; 100];
    stdout.read_exact(&mut head).unwrap();
    assert_eq!(head[0], b'[');
    drop(stdout);
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    let status = child.wait().unwrap();
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(status.code(), Some(0), "{stderr}");
}

#[test]
fn a_token_about_to_travel_over_plain_http_to_another_host_gets_a_warning() {
    // 0.0.0.0 is not a loopback address, yet reaches only this machine: no traffic leaves it.
    let out = Command::new(bin("muster"))
        .args(["workers", "--scheduler", "http://0.0.0.0:1"])
        .env("MUSTER_TOKEN", muster_suite::CLIENT_TOKEN)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("muster: warning: the token will travel unencrypted to http://0.0.0.0:1"),
        "{stderr}"
    );
    let quiet = Command::new(bin("muster"))
        .args(["workers", "--scheduler", "http://127.0.0.1:1"])
        .env("MUSTER_TOKEN", muster_suite::CLIENT_TOKEN)
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&quiet.stderr).contains("unencrypted"));

    let mut worker = Command::new(bin("muster-worker"));
    worker
        .args(["--scheduler", "http://0.0.0.0:1", "--reconnect-max", "0.2"])
        .env("MUSTER_WORKER_TOKEN", muster_suite::WORKER_TOKEN);
    let worker = Proc::spawn("worker", worker);
    worker.wait_for("the token will travel unencrypted to http://0.0.0.0:1");
}

#[test]
fn up_with_allow_exec_runs_exec_jobs_in_its_directory() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("here.txt"), "found").unwrap();
    let mut up = Command::new(bin("muster"));
    up.args([
        "up",
        "--workers",
        "1",
        "--bind",
        "127.0.0.1:0",
        "--allow-exec",
        "cat",
    ])
    .current_dir(dir.path())
    .env_remove("MUSTER_CLIENT_TOKEN")
    .env_remove("MUSTER_WORKER_TOKEN");
    let cluster = Proc::spawn("muster up", up);
    let url = listening_url(&cluster);
    cluster.wait_for("registered with coordinator");
    let out = Command::new(bin("muster"))
        .args([
            "submit",
            "exec",
            "--items",
            "here.txt",
            "--wait",
            "--scheduler",
            &url,
        ])
        .args(["--", "cat", "{items}"])
        .current_dir(dir.path())
        .env_remove("MUSTER_TOKEN")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("[batch 0] found"), "{stdout}");
}
