//! Test support for Muster's cross-crate integration tests: start real coordinator and worker
//! processes on `127.0.0.1:0`, watch their output for events, and call the REST API.
//!
//! Every wait here is bounded and waits for an event (a log line, a status change) rather than
//! sleeping for a fixed time.

pub mod balance;
pub mod raw_worker;

use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Client token the harness gives every coordinator.
pub const CLIENT_TOKEN: &str = "client-token-for-tests-0123456789";
/// Worker token the harness gives every coordinator and worker.
pub const WORKER_TOKEN: &str = "worker-token-for-tests-0123456789";
/// Longest any single wait in a test may take.
pub const WAIT: Duration = Duration::from_secs(60);

/// A server-sent event: its name, id and data.
pub type Event = (String, String, Value);

/// The directory holding the built binaries (`target/debug`), found from the test's own path.
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/debug/deps/<test> -> target/debug
    exe.parent()
        .and_then(Path::parent)
        .expect("test binary lives in target/<profile>/deps")
        .to_path_buf()
}

/// Path of a workspace binary, with a clear message when it was not built.
pub fn bin(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.exists(),
        "{} is missing: run the tests with `cargo test --workspace`, which builds every binary",
        path.display()
    );
    path
}

/// A process's peak resident memory (`VmHWM`), in MiB.
pub fn peak_rss_mib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .expect("VmHWM line");
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .expect("a number of KiB");
    kib / 1024
}

/// A command-line tool from PyPI: `package` installed into a Python environment of its own,
/// made once under `target/tmp` by this suite's own setup (`python3 -m venv`,
/// then `pip install`), and the path of its `tool`.
pub fn python_tool(package: &str, tool: &str) -> PathBuf {
    // `target/tmp`, beside the binaries' `target/debug`.
    let tmp = bin_dir().parent().map_or_else(bin_dir, Path::to_path_buf);
    let venv = tmp.join("tmp").join(format!("{package}-venv"));
    let path = venv.join("bin").join(tool);
    if path.is_file() {
        return path;
    }
    let run = |program: &Path, args: &[&str]| {
        let out = Command::new(program)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", program.display()));
        assert!(
            out.status.success(),
            "{} {args:?}: {}",
            program.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let _ = std::fs::remove_dir_all(&venv);
    run(
        Path::new("python3"),
        &["-m", "venv", &venv.to_string_lossy()],
    );
    run(
        &venv.join("bin").join("pip"),
        &["install", "--quiet", "--disable-pip-version-check", package],
    );
    path
}

/// The custom worker example (`examples/custom_worker.rs`), built by `cargo test`.
pub fn custom_worker_bin() -> PathBuf {
    bin("examples/custom_worker")
}

#[derive(Default)]
struct Output {
    lines: Vec<String>,
    closed: usize,
}

/// A child process whose stdout and stderr lines are collected for [`Proc::wait_for`].
pub struct Proc {
    child: Child,
    name: String,
    output: Arc<(Mutex<Output>, Condvar)>,
}

impl Proc {
    /// Spawns `cmd` with piped output, logging at `info` unless `MUSTER_CHILD_LOG` or the
    /// command's own `RUST_LOG` says otherwise.
    pub fn spawn(name: &str, mut cmd: Command) -> Self {
        cmd.stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .stdin(Stdio::null());
        if !cmd.get_envs().any(|(key, _)| key == "RUST_LOG") {
            // `MUSTER_CHILD_LOG` (a `RUST_LOG` filter) shows more of a child's log, e.g. when
            // profiling.
            let log = std::env::var("MUSTER_CHILD_LOG").unwrap_or_else(|_| "info".into());
            cmd.env("RUST_LOG", log);
        }
        cmd.env("NO_COLOR", "1");
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let output = Arc::new((Mutex::new(Output::default()), Condvar::new()));
        let stdout = child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>);
        let stderr = child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>);
        for stream in [stdout, stderr].into_iter().flatten() {
            let output = output.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    let (lock, cv) = &*output;
                    lock.lock().expect("output lock").lines.push(line);
                    cv.notify_all();
                }
                let (lock, cv) = &*output;
                lock.lock().expect("output lock").closed += 1;
                cv.notify_all();
            });
        }
        Self {
            child,
            name: name.to_owned(),
            output,
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Every line printed so far.
    pub fn lines(&self) -> Vec<String> {
        self.output.0.lock().expect("output lock").lines.clone()
    }

    /// Waits for the first line (from the start) that contains `needle` and returns it.
    pub fn wait_for(&self, needle: &str) -> String {
        self.wait_for_nth(needle, 1)
    }

    /// Waits until `n` lines contain `needle`; returns the n-th.
    pub fn wait_for_nth(&self, needle: &str, n: usize) -> String {
        let (lock, cv) = &*self.output;
        let deadline = Instant::now() + WAIT;
        let mut out = lock.lock().expect("output lock");
        loop {
            if let Some(line) = out.lines.iter().filter(|l| l.contains(needle)).nth(n - 1) {
                return line.clone();
            }
            let now = Instant::now();
            if now >= deadline || out.closed == 2 {
                panic!(
                    "{}: no line #{n} with `{needle}` {}; output:\n{}",
                    self.name,
                    if out.closed == 2 {
                        "before it exited"
                    } else {
                        "in time"
                    },
                    out.lines.join("\n")
                );
            }
            out = cv.wait_timeout(out, deadline - now).expect("output lock").0;
        }
    }

    /// Sends a signal by name (`STOP`, `CONT`, `TERM`, `INT`, `KILL`).
    pub fn signal(&self, sig: &str) {
        use rustix::process::{kill_process, Pid, Signal};
        let signal = match sig {
            "KILL" => Signal::KILL,
            "TERM" => Signal::TERM,
            "INT" => Signal::INT,
            "STOP" => Signal::STOP,
            "CONT" => Signal::CONT,
            other => panic!("no signal {other} in the harness"),
        };
        let pid = i32::try_from(self.pid())
            .ok()
            .and_then(Pid::from_raw)
            .expect("a process id");
        kill_process(pid, signal)
            .unwrap_or_else(|e| panic!("kill -s {sig} {} failed: {e}", self.pid()));
    }

    /// Waits for the process to exit (bounded) and returns its exit code.
    pub fn wait_exit(&mut self) -> Option<i32> {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status.code();
            }
            assert!(
                Instant::now() < deadline,
                "{} did not exit in time",
                self.name
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A coordinator process with its data dir.
pub struct Coordinator {
    /// The process.
    pub proc: Proc,
    /// `http://127.0.0.1:PORT`, or `https://` for [`Coordinator::start_tls`].
    pub url: String,
    /// Its data dir (kept until the coordinator is dropped).
    pub dir: tempfile::TempDir,
    /// Its certificate and key when it serves HTTPS (the certificate is self-signed: clients and
    /// workers trust it as their CA).
    pub tls: Option<(PathBuf, PathBuf)>,
}

/// The test timings every coordinator but a benchmark's gets.
const TEST_TIMINGS: [&str; 4] = ["--heartbeat-timeout", "1", "--retry-backoff", "0.05"];

/// A self-signed certificate for 127.0.0.1 and localhost with its key, written into `dir`.
pub fn self_signed_certificate(dir: &Path) -> (PathBuf, PathBuf) {
    let made =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
            .expect("a self-signed certificate");
    let (cert, key) = (dir.join("tls-cert.pem"), dir.join("tls-key.pem"));
    std::fs::write(&cert, made.cert.pem()).expect("certificate written");
    std::fs::write(&key, made.key_pair.serialize_pem()).expect("key written");
    (cert, key)
}

impl Coordinator {
    /// Starts `muster serve` on an ephemeral port with the test tokens, a 1 s heartbeat timeout
    /// and a short retry backoff, plus `extra` flags.
    pub fn start(extra: &[&str]) -> Self {
        let mut args = TEST_TIMINGS.to_vec();
        args.extend_from_slice(extra);
        Self::start_with(&args)
    }

    /// [`Coordinator::start`] serving HTTPS with a self-signed certificate made in its data dir;
    /// its [`Coordinator::api`] and workers trust that certificate.
    pub fn start_tls(extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let tls = self_signed_certificate(dir.path());
        let proc = Self::spawn(
            dir.path(),
            "127.0.0.1:0",
            &Self::args(Some(&tls), extra),
            None,
        );
        let url = listening_url(&proc);
        Self {
            proc,
            url,
            dir,
            tls: Some(tls),
        }
    }

    /// The test timings, the TLS flags for `tls`, then `extra`.
    fn args(tls: Option<&(PathBuf, PathBuf)>, extra: &[&str]) -> Vec<String> {
        let mut args: Vec<String> = TEST_TIMINGS.iter().map(|a| a.to_string()).collect();
        if let Some((cert, key)) = tls {
            args.extend(["--tls-cert".to_owned(), cert.display().to_string()]);
            args.extend(["--tls-key".to_owned(), key.display().to_string()]);
        }
        args.extend(extra.iter().map(|a| a.to_string()));
        args
    }

    /// Starts `muster serve` on an ephemeral port with the test tokens and exactly `args` (no
    /// shortened timings): what benchmarks use.
    pub fn start_with(args: &[&str]) -> Self {
        Self::start_logging(args, None)
    }

    /// [`Coordinator::start_with`], logging with the `RUST_LOG` filter `log` when given.
    pub fn start_logging(args: &[&str], log: Option<&str>) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let proc = Self::spawn(dir.path(), "127.0.0.1:0", args, log);
        let url = listening_url(&proc);
        Self {
            proc,
            url,
            dir,
            tls: None,
        }
    }

    fn spawn(dir: &Path, bind: &str, extra: &[impl AsRef<OsStr>], log: Option<&str>) -> Proc {
        let mut cmd = Command::new(bin("muster"));
        cmd.args(["serve", "--bind", bind, "--data-dir"])
            .arg(dir)
            .args(extra)
            .env("MUSTER_CLIENT_TOKEN", CLIENT_TOKEN)
            .env("MUSTER_WORKER_TOKEN", WORKER_TOKEN);
        if let Some(log) = log {
            cmd.env("RUST_LOG", log);
        }
        Proc::spawn("coordinator", cmd)
    }

    /// Kills the coordinator with SIGKILL and starts it again (with the test timings) on the same
    /// address and data dir.
    pub fn restart(&mut self, extra: &[&str]) {
        self.proc.signal("KILL");
        self.proc.wait_exit();
        let bind = self.url.split("://").nth(1).unwrap_or_default().to_owned();
        let args = Self::args(self.tls.as_ref(), extra);
        self.proc = Self::spawn(self.dir.path(), &bind, &args, None);
        assert_eq!(listening_url(&self.proc), self.url);
    }

    /// Starts a stock worker with `slots` slots and a name.
    /// Reads the server-sent events of `path` in a thread, resuming after event `last_id`:
    /// (name, id, data) each, as they come, until the stream ends.
    pub fn event_feed(
        &self,
        path: &str,
        last_id: Option<&str>,
    ) -> std::sync::mpsc::Receiver<Event> {
        let mut request = ureq::AgentBuilder::new()
            .timeout(WAIT)
            .build()
            .get(&format!("{}{path}", self.url))
            .set("Authorization", &format!("Bearer {CLIENT_TOKEN}"));
        if let Some(id) = last_id {
            request = request.set("Last-Event-ID", id);
        }
        let response = request.call().expect("the event stream");
        assert_eq!(response.content_type(), "text/event-stream");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let (mut name, mut id) = (String::new(), String::new());
            for line in BufReader::new(response.into_reader()).lines() {
                let Ok(line) = line else { return };
                if let Some(n) = line.strip_prefix("event: ") {
                    name = n.to_owned();
                } else if let Some(n) = line.strip_prefix("id: ") {
                    id = n.to_owned();
                } else if let Some(data) = line.strip_prefix("data: ") {
                    let data = serde_json::from_str(data).unwrap_or_default();
                    if tx.send((name.clone(), id.clone(), data)).is_err() {
                        return;
                    }
                }
            }
        });
        rx
    }

    pub fn worker(&self, name: &str, slots: u32) -> Proc {
        self.worker_with(bin("muster-worker"), name, slots, &[])
    }

    /// Starts the custom worker example.
    pub fn custom_worker(&self, name: &str, slots: u32) -> Proc {
        self.worker_with(custom_worker_bin(), name, slots, &[])
    }

    /// Starts a worker binary and waits until it registered.
    pub fn worker_with(&self, binary: PathBuf, name: &str, slots: u32, extra: &[&str]) -> Proc {
        let mut cmd = Command::new(binary);
        cmd.args([
            "--scheduler",
            &self.url,
            "--name",
            name,
            "--slots",
            &slots.to_string(),
        ])
        .args(extra)
        .env("MUSTER_WORKER_TOKEN", WORKER_TOKEN)
        .env_remove("MUSTER_SCHEDULER");
        if let Some((cert, _)) = &self.tls {
            cmd.arg("--ca-cert").arg(cert);
        }
        let proc = Proc::spawn(name, cmd);
        proc.wait_for("registered with coordinator");
        proc
    }

    /// A REST client with the client token (trusting the coordinator's certificate over TLS).
    pub fn api(&self) -> Api {
        match &self.tls {
            Some((cert, _)) => Api::trusting(&self.url, Some(CLIENT_TOKEN), cert),
            None => Api::new(&self.url, Some(CLIENT_TOKEN)),
        }
    }
}

/// The lines of `GET /v1/jobs/{id}/partials?from=N` on the coordinator at `url`, read in a
/// thread as they come, until the stream ends.
pub fn partials_feed(url: &str, id: &str, from: u64) -> std::sync::mpsc::Receiver<Value> {
    let response = ureq::AgentBuilder::new()
        .timeout(WAIT)
        .build()
        .get(&format!("{url}/v1/jobs/{id}/partials?from={from}"))
        .set("Authorization", &format!("Bearer {CLIENT_TOKEN}"))
        .call()
        .expect("the partials stream");
    assert_eq!(response.content_type(), "application/x-ndjson");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(response.into_reader()).lines() {
            let Ok(line) = line else { return };
            let value = serde_json::from_str(&line).expect("a JSON line");
            if tx.send(value).is_err() {
                return;
            }
        }
    });
    rx
}

/// The URL a `muster serve` or `muster up` process announced.
pub fn listening_url(proc: &Proc) -> String {
    let line = proc.wait_for("muster listening on ");
    line.split("muster listening on ")
        .nth(1)
        .expect("url after the marker")
        .trim()
        .to_owned()
}

/// A tiny REST client for tests.
pub struct Api {
    base: String,
    token: Option<String>,
    agent: ureq::Agent,
}

/// An HTTP answer: status, content type and JSON body (`Null` when empty or not JSON).
#[derive(Debug, Clone)]
pub struct Answer {
    /// HTTP status.
    pub status: u16,
    /// `Content-Type`.
    pub content_type: String,
    /// `Retry-After`, if given.
    pub retry_after: Option<String>,
    /// Parsed body.
    pub body: Value,
}

impl Api {
    /// A client for `base` with an optional bearer token.
    pub fn new(base: &str, token: Option<&str>) -> Self {
        Self {
            base: base.to_owned(),
            token: token.map(str::to_owned),
            agent: ureq::AgentBuilder::new().timeout(WAIT).build(),
        }
    }

    /// A client for an `https://` `base` that trusts the CA certificates in `ca` (PEM) alone.
    pub fn trusting(base: &str, token: Option<&str>, ca: &Path) -> Self {
        let tls = muster_worker::tls::client_config(Some(ca)).expect("a TLS client configuration");
        Self {
            base: base.to_owned(),
            token: token.map(str::to_owned),
            agent: ureq::AgentBuilder::new()
                .timeout(WAIT)
                .tls_config(tls)
                .build(),
        }
    }

    /// Sends a request; `body` is sent as is with `application/json`. Panics if no answer comes.
    pub fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
        headers: &[(&str, &str)],
    ) -> Answer {
        self.try_call(method, path, body, headers)
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    /// POSTs `body` as JSON on a fresh connection, writing the request's head and then its body
    /// each in one `write` (as `curl --data-binary` does; `ureq` copies a body out 8 KiB at a
    /// time), and returns the status and the answer's body.
    pub fn post_whole(&self, path: &str, body: &[u8]) -> (u16, Vec<u8>) {
        use std::io::Write;
        let host = self.host();
        let mut stream = std::net::TcpStream::connect(host)
            .unwrap_or_else(|e| panic!("POST {path}: cannot connect to {host}: {e}"));
        let head = self.head("POST", path, body.len(), "close");
        let mut answer = Vec::new();
        stream
            .write_all(head.as_bytes())
            .and_then(|()| stream.write_all(body))
            .and_then(|()| stream.read_to_end(&mut answer))
            .unwrap_or_else(|e| panic!("POST {path}: {e}"));
        let split = answer
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .unwrap_or_else(|| panic!("POST {path}: no HTTP head in the answer"));
        let status = std::str::from_utf8(&answer[..split])
            .ok()
            .and_then(|h| h.split(' ').nth(1))
            .and_then(|code| code.parse().ok())
            .unwrap_or_else(|| panic!("POST {path}: no status in the answer"));
        (status, answer[split + 4..].to_vec())
    }

    /// `host:port` of the coordinator.
    fn host(&self) -> &str {
        self.base.trim_start_matches("http://")
    }

    /// A request's head with the token and a JSON body of `len` bytes.
    fn head(&self, method: &str, path: &str, len: usize, connection: &str) -> String {
        let host = self.host();
        let auth = self
            .token
            .as_ref()
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        format!(
            "{method} {path} HTTP/1.1\r\nHost: {host}\r\n{auth}Content-Type: application/json\r\nContent-Length: {len}\r\nConnection: {connection}\r\n\r\n"
        )
    }

    /// A kept-alive connection for timing small requests (see [`Connection`]).
    pub fn connect(&self) -> Connection {
        let host = self.host();
        let stream = std::net::TcpStream::connect(host)
            .unwrap_or_else(|e| panic!("cannot connect to {host}: {e}"));
        stream
            .set_nodelay(true)
            .and_then(|()| stream.set_read_timeout(Some(WAIT)))
            .unwrap_or_else(|e| panic!("cannot set up the connection to {host}: {e}"));
        Connection {
            api: Api::new(&self.base, self.token.as_deref()),
            stream,
            buf: Vec::with_capacity(8192),
        }
    }

    /// Sends a request with the token, `headers` and a JSON `body`; an error when no HTTP answer
    /// came (connection refused or closed).
    fn send(
        &self,
        agent: &ureq::Agent,
        method: &str,
        path: &str,
        body: Option<&str>,
        headers: &[(&str, &str)],
    ) -> Result<ureq::Response, String> {
        let mut req = agent.request(method, &format!("{}{path}", self.base));
        if let Some(t) = &self.token {
            req = req.set("Authorization", &format!("Bearer {t}"));
        }
        for (k, v) in headers {
            req = req.set(k, v);
        }
        let result = match body {
            Some(b) => req.set("Content-Type", "application/json").send_string(b),
            None => req.call(),
        };
        match result {
            Ok(r) => Ok(r),
            Err(ureq::Error::Status(_, r)) => Ok(r),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Status, content type and the whole body (`into_string` stops at 10 MB; results of big jobs
    /// are larger).
    fn read(response: ureq::Response) -> Result<(u16, String, Vec<u8>), String> {
        let status = response.status();
        let content_type = response.header("content-type").unwrap_or("").to_owned();
        let mut bytes = Vec::new();
        response
            .into_reader()
            .read_to_end(&mut bytes)
            .map_err(|e| format!("cannot read the answer: {e}"))?;
        Ok((status, content_type, bytes))
    }

    /// Sends a request; an error when no HTTP answer came (connection refused or closed).
    pub fn try_call(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
        headers: &[(&str, &str)],
    ) -> Result<Answer, String> {
        let response = self.send(&self.agent, method, path, body, headers)?;
        let retry_after = response.header("retry-after").map(str::to_owned);
        let (status, content_type, bytes) = Self::read(response)?;
        Ok(Answer {
            status,
            retry_after,
            content_type,
            body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        })
    }

    /// A request that does not follow redirects: status and `Location` header.
    pub fn call_raw(&self, method: &str, path: &str) -> (u16, String) {
        let agent = ureq::AgentBuilder::new().redirects(0).timeout(WAIT).build();
        let response = self
            .send(&agent, method, path, None, &[])
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let location = response.header("location").unwrap_or("").to_owned();
        (response.status(), location)
    }

    /// A request whose answer body is returned as bytes, unparsed (for timing a transfer without the
    /// client's own JSON decoding): status and body.
    pub fn call_bytes(&self, method: &str, path: &str, body: Option<&str>) -> (u16, Vec<u8>) {
        let (status, _, bytes) = self
            .send(&self.agent, method, path, body, &[])
            .and_then(Self::read)
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        (status, bytes)
    }

    /// GET.
    pub fn get(&self, path: &str) -> Answer {
        self.call("GET", path, None, &[])
    }

    /// POST a JSON value to /v1/jobs, asserting 201; returns the job id.
    pub fn submit(&self, job: &Value) -> String {
        let a = self.call("POST", "/v1/jobs", Some(&job.to_string()), &[]);
        assert_eq!(a.status, 201, "submit {job}: {:?}", a.body);
        a.body["id"].as_str().expect("job id").to_owned()
    }

    /// Long-polls until the job ends; returns the final result answer.
    pub fn wait_result(&self, id: &str) -> Answer {
        self.wait_result_within(id, WAIT)
    }

    /// Long-polls until the job ends or `limit` passes; returns the last answer.
    pub fn wait_result_within(&self, id: &str, limit: Duration) -> Answer {
        let deadline = Instant::now() + limit;
        loop {
            let a = self.get(&format!("/v1/jobs/{id}/result?wait=5"));
            let running = a.status == 409
                && matches!(a.body["job_status"].as_str(), Some("queued" | "running"));
            if !running || Instant::now() > deadline {
                return a;
            }
        }
    }

    /// Waits for the job to succeed and returns its result.
    pub fn result(&self, id: &str) -> Value {
        let a = self.wait_result(id);
        assert_eq!(
            a.status,
            200,
            "job {id} did not succeed: {:?} / {:?}",
            a.body,
            self.status(id)
        );
        a.body["result"].clone()
    }

    /// The job's status object.
    pub fn status(&self, id: &str) -> Value {
        self.get(&format!("/v1/jobs/{id}")).body
    }

    /// Polls the job's status until `pred` holds (bounded); returns that status.
    pub fn wait_status(&self, id: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            let s = self.status(id);
            if pred(&s) {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "job {id} never reached the awaited state: {s}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// One kept-alive HTTP/1.1 connection that writes each request, head and body, in one `write` (as
/// Python's `http.client` does with a small body; `ureq` writes the body apart and checks a pooled
/// connection with a `recv` first) and reads each answer by its `Content-Length`: for timing small
/// requests without a general-purpose client's own costs.
pub struct Connection {
    api: Api,
    stream: std::net::TcpStream,
    buf: Vec<u8>,
}

impl Connection {
    /// Sends a request with an optional JSON body; returns the status and the answer's body.
    /// Panics on a broken connection or an answer without `Content-Length`.
    pub fn request(&mut self, method: &str, path: &str, body: Option<&str>) -> (u16, Vec<u8>) {
        use std::io::Write;
        let body = body.unwrap_or_default();
        let mut request = self
            .api
            .head(method, path, body.len(), "keep-alive")
            .into_bytes();
        request.extend_from_slice(body.as_bytes());
        self.stream
            .write_all(&request)
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let fail = |what: &str| -> ! { panic!("{method} {path}: {what}") };
        let head_len = loop {
            if let Some(at) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            self.fill().unwrap_or_else(|e| fail(&e));
        };
        let head =
            std::str::from_utf8(&self.buf[..head_len]).unwrap_or_else(|_| fail("head not UTF-8"));
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|code| code.parse().ok())
            .unwrap_or_else(|| fail("no status in the answer"));
        let len: usize = head
            .lines()
            .find_map(|l| {
                let (name, value) = l.split_once(':')?;
                name.eq_ignore_ascii_case("content-length")
                    .then(|| value.trim().parse().ok())?
            })
            .unwrap_or_else(|| fail("no Content-Length in the answer"));
        while self.buf.len() < head_len + len {
            self.fill().unwrap_or_else(|e| fail(&e));
        }
        let answer = self.buf[head_len..head_len + len].to_vec();
        self.buf.drain(..head_len + len);
        (status, answer)
    }

    /// Reads what the connection has into the buffer.
    fn fill(&mut self) -> Result<(), String> {
        let mut chunk = [0u8; 8192];
        match self.stream.read(&mut chunk) {
            Ok(0) => Err("connection closed".into()),
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                Ok(())
            }
            Err(e) => Err(e.to_string()),
        }
    }
}

/// Two coordinators on `pg` with a 1 s lease: the first once it leads, the second once it
/// stands by.
pub fn leader_and_standby(pg: &Postgres) -> (Coordinator, Coordinator) {
    let url = pg.url();
    let store = ["--store", url.as_str(), "--lease", "1"];
    let leader = Coordinator::start(&store);
    wait_role(&leader.url, "leader");
    let standby = Coordinator::start(&store);
    wait_role(&standby.url, "standby");
    (leader, standby)
}

/// Polls `GET /healthz` until the coordinator reports `role`; returns how long that took.
pub fn wait_role(url: &str, role: &str) -> Duration {
    let start = Instant::now();
    let api = Api::new(url, None);
    loop {
        let agent = ureq::AgentBuilder::new()
            .timeout(Duration::from_secs(2))
            .build();
        let seen = agent
            .get(&format!("{}/healthz", api.base))
            .call()
            .ok()
            .and_then(|r| r.into_json::<Value>().ok());
        if seen.as_ref().is_some_and(|v| v["role"] == role) {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < WAIT,
            "{url} never became {role}: {seen:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A throwaway PostgreSQL server from the system's binaries, on a free loopback port, in a temp
/// dir; stopped and removed when dropped. As root it runs as the `postgres` user, since PostgreSQL
/// refuses to run as root.
pub struct Postgres {
    dir: tempfile::TempDir,
    port: u16,
    pg_ctl: PathBuf,
    user: Option<&'static str>,
    /// The server's self-signed certificate (PEM), when it serves TLS.
    pub tls_cert: Option<PathBuf>,
}

fn pg_binary(name: &str) -> PathBuf {
    let mut candidates: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).map(|d| d.join(name)).collect())
        .unwrap_or_default();
    if let Ok(versions) = std::fs::read_dir("/usr/lib/postgresql") {
        let mut found: Vec<PathBuf> = versions
            .filter_map(Result::ok)
            .map(|v| v.path().join("bin").join(name))
            .collect();
        found.sort();
        candidates.extend(found.into_iter().rev());
    }
    candidates.into_iter().find(|p| p.exists()).unwrap_or_else(|| {
        panic!(
            "PostgreSQL server binary `{name}` not found (looked in PATH and /usr/lib/postgresql/*/bin): \
             install Debian's `postgresql` package (apt-get install postgresql)"
        )
    })
}

fn run_as(user: Option<&str>, program: &Path, args: &[&str]) {
    let mut cmd = match user {
        Some(u) => {
            let mut c = Command::new("runuser");
            c.args(["-u", u, "--"]).arg(program);
            c
        }
        None => Command::new(program),
    };
    let out = cmd.args(args).output().expect("run a postgres tool");
    assert!(
        out.status.success(),
        "{} {args:?} failed: {}{}",
        program.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Postgres {
    /// Initializes and starts a server; panics with what to install when the binaries are missing.
    pub fn start() -> Self {
        Self::start_serving(false)
    }

    /// [`Postgres::start`] with TLS on (a self-signed certificate for 127.0.0.1, in
    /// [`Postgres::tls_cert`]) and every connection logged with whether it used TLS.
    pub fn start_tls() -> Self {
        Self::start_serving(true)
    }

    fn start_serving(tls: bool) -> Self {
        let initdb = pg_binary("initdb");
        let pg_ctl = pg_binary("pg_ctl");
        let is_root = Command::new("id")
            .arg("-u")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
            .unwrap_or(false);
        let user = is_root.then_some("postgres");
        let dir = tempfile::tempdir().expect("temp dir");
        if let Some(u) = user {
            let status = Command::new("chown")
                .arg(format!("{u}:"))
                .arg(dir.path())
                .status()
                .expect("chown");
            assert!(
                status.success(),
                "cannot give {} to {u}",
                dir.path().display()
            );
        }
        let data = dir.path().join("data");
        let data_s = data.to_str().expect("utf-8 temp path");
        run_as(
            user,
            &initdb,
            &[
                "-D",
                data_s,
                "-U",
                "muster",
                "--auth=trust",
                "--no-sync",
                "-E",
                "UTF8",
            ],
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let socket_dir = dir.path().to_str().expect("utf-8 temp path");
        let mut options = format!(
            "-p {port} -k {socket_dir} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off"
        );
        let tls_cert = tls.then(|| {
            let (cert, key) = self_signed_certificate(dir.path());
            // The server refuses a key others can read, and must own it when run as its user.
            std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))
                .expect("chmod key");
            if let Some(u) = user {
                let status = Command::new("chown")
                    .arg(format!("{u}:"))
                    .args([&cert, &key])
                    .status()
                    .expect("chown");
                assert!(status.success(), "cannot give the certificate to {u}");
            }
            options.push_str(&format!(
                " -c ssl=on -c ssl_cert_file={} -c ssl_key_file={} -c log_connections=on",
                cert.display(),
                key.display()
            ));
            cert
        });
        let log = dir.path().join("server.log");
        run_as(
            user,
            &pg_ctl,
            &[
                "-D",
                data_s,
                "-l",
                log.to_str().expect("utf-8"),
                "-w",
                "-o",
                &options,
                "start",
            ],
        );
        Self {
            dir,
            port,
            pg_ctl,
            user,
            tls_cert,
        }
    }

    /// Stops (`STOP`) or resumes (`CONT`) the server and every backend process it started: a
    /// frozen server accepts packets but answers nothing, as one behind a partition.
    pub fn signal_all(&self, stop: bool) {
        use rustix::process::{kill_process, Pid, Signal};
        let pid_file = self.dir.path().join("data").join("postmaster.pid");
        let postmaster: i32 = std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|t| t.lines().next()?.trim().parse().ok())
            .expect("the postmaster's pid");
        let mut pids = vec![postmaster];
        for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            // `pid (comm) state ppid ...`: the parent is the second field after the name.
            let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
            let parent = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<i32>().ok());
            if parent == Some(postmaster) {
                pids.push(pid);
            }
        }
        let signal = if stop { Signal::STOP } else { Signal::CONT };
        for pid in pids {
            if let Some(pid) = Pid::from_raw(pid) {
                let _ = kill_process(pid, signal);
            }
        }
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// `postgres://muster@127.0.0.1:PORT/postgres`.
    pub fn url(&self) -> String {
        format!("postgres://muster@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // A frozen server would not stop.
        self.signal_all(false);
        let data = self.dir.path().join("data");
        if let Some(data) = data.to_str() {
            let mut cmd = match self.user {
                Some(u) => {
                    let mut c = Command::new("runuser");
                    c.args(["-u", u, "--"]).arg(&self.pg_ctl);
                    c
                }
                None => Command::new(&self.pg_ctl),
            };
            let _ = cmd.args(["-D", data, "-m", "immediate", "stop"]).output();
        }
    }
}
