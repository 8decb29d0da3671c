//! The dashboard in a real browser: headless Chromium driven through chromedriver (Debian's
//! `chromium` and `chromium-driver`, which `.ci/run` installs). Screenshots land in
//! `target/tmp/dashboard/`, to be looked at.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use muster_suite::{custom_worker_bin, Coordinator, Proc, CLIENT_TOKEN, WAIT};
use serde_json::{json, Value};

/// Chromium under chromedriver, in a process group of its own that goes when this does.
struct Browser {
    client: Client,
    driver: Proc,
    shots: PathBuf,
    _profile: tempfile::TempDir,
}

impl Browser {
    async fn open() -> Self {
        // Both of rustls's providers are linked in (the client's and the harness's): pick one.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut cmd = Command::new("chromedriver");
        cmd.arg("--port=0");
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let driver = Proc::spawn("chromedriver", cmd);
        let line = driver.wait_for("was started successfully on port");
        let port = line
            .trim_end_matches('.')
            .rsplit(' ')
            .next()
            .and_then(|p| p.parse::<u16>().ok())
            .unwrap_or_else(|| panic!("no port in `{line}`"));
        let profile = tempfile::tempdir().expect("a profile dir");
        let args = [
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--window-size=1280,1000",
            &format!("--user-data-dir={}", profile.path().display()),
        ];
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".to_owned(),
            json!({"binary": "/usr/bin/chromium", "args": args}),
        );
        let client = ClientBuilder::rustls()
            .expect("a WebDriver client")
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
            .expect("a Chromium session");
        let shots = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard");
        std::fs::create_dir_all(&shots).expect("the screenshot dir");
        Self {
            client,
            driver,
            shots,
            _profile: profile,
        }
    }

    /// Waits until `script` (a function body) returns true in the page.
    async fn until(&self, what: &str, script: &str) {
        let start = Instant::now();
        loop {
            let value = self.client.execute(script, vec![]).await;
            if matches!(value, Ok(Value::Bool(true))) {
                return;
            }
            if start.elapsed() > WAIT {
                self.shot("timeout").await;
                let text = self.text("body").await;
                panic!("waited {WAIT:?} for {what}: {value:?}\npage: {text}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Goes to a view of the page (`#/jobs/ID`) as a link would: no reload.
    async fn show(&self, hash: &str) {
        self.client
            .execute(&format!("location.hash = '{hash}';"), vec![])
            .await
            .unwrap_or_else(|e| panic!("cannot show {hash}: {e}"));
    }

    async fn text(&self, css: &str) -> String {
        match self.client.find(Locator::Css(css)).await {
            Ok(element) => element.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        }
    }

    async fn click(&self, css: &str) {
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no `{css}`: {e}"))
            .click()
            .await
            .unwrap_or_else(|e| panic!("cannot click `{css}`: {e}"));
    }

    async fn type_into(&self, css: &str, text: &str) {
        let input = self.client.find(Locator::Css(css)).await.expect("an input");
        input.clear().await.expect("cleared");
        input.send_keys(text).await.expect("typed");
    }

    async fn shot(&self, name: &str) {
        if let Ok(png) = self.client.screenshot().await {
            let _ = std::fs::write(self.shots.join(format!("{name}.png")), png);
        }
    }

    /// A screenshot of a window tall enough for the whole page.
    async fn tall_shot(&self, name: &str) {
        let (width, height) = (1280, 1000);
        let _ = self.client.set_window_size(width, 2200).await;
        self.shot(name).await;
        let _ = self.client.set_window_size(width, height).await;
    }

    /// The page's time origin: the same number before and after means it never reloaded.
    async fn loaded_at(&self) -> f64 {
        let value = self
            .client
            .execute("return performance.timeOrigin;", vec![])
            .await
            .expect("a time origin");
        value.as_f64().expect("a number")
    }

    async fn close(self) {
        let _ = self.client.clone().close().await;
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Chromium is chromedriver's child, in its group: a failed test leaves neither behind.
        if let Some(group) = rustix::process::Pid::from_raw(self.driver.pid() as i32) {
            let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
        }
    }
}

/// `n` chunks of the example worker's `nap` task, each sleeping `ms` and worth 1.
fn naps(n: usize, ms: u64) -> Value {
    let chunks: Vec<Value> = (0..n).map(|_| json!({"ms": ms, "value": 1})).collect();
    json!({"task": "nap", "chunks": chunks, "reduce": "sum"})
}

#[tokio::test]
async fn an_operator_signs_in_watches_a_job_through_a_lost_worker_and_cancels_another() {
    let c = Coordinator::start(&[]);
    let _w1 = c.worker_with(custom_worker_bin(), "w1", 4, &[]);
    let w2 = c.worker_with(custom_worker_bin(), "w2", 4, &[]);
    let api = c.api();
    let browser = Browser::open().await;
    browser
        .client
        .goto(&format!("{}/", c.url))
        .await
        .expect("the dashboard");
    browser
        .until(
            "the sign-in form",
            "return !!document.querySelector('#token');",
        )
        .await;
    browser.shot("1-sign-in").await;

    // A wrong token: an error, and nothing of the cluster.
    browser.type_into("#token", "not-the-token").await;
    browser.click("#sign-in").await;
    browser
        .until(
            "the refusal",
            "const e = document.querySelector('#sign-in-error'); return !!e && !e.hidden;",
        )
        .await;
    let error = browser.text("#sign-in-error").await;
    assert!(error.contains("refused"), "{error}");
    let body = browser.text("body").await;
    assert!(!body.contains("w1") && !body.contains("Workers"), "{body}");
    assert!(browser.client.find(Locator::Css("#cards")).await.is_err());
    browser.shot("2-wrong-token").await;

    // The right token, from the keyboard alone (typed, then Enter): the overview, with both
    // workers.
    browser
        .type_into("#token", &format!("{CLIENT_TOKEN}\u{E007}"))
        .await;
    browser
        .until(
            "both workers listed",
            "return document.querySelectorAll('#workers tr[data-worker]').length === 2;",
        )
        .await;
    assert_eq!(
        browser.client.title().await.expect("a title"),
        "Overview · Muster"
    );
    let loaded = browser.loaded_at().await;

    // A 2,000-chunk job, followed from the jobs list to its page.
    let id = api.submit(&naps(2000, 15));
    browser.click("nav a[data-view=jobs]").await;
    let link = format!("#job-list tr[data-job='{id}'] a");
    browser
        .until(
            "the job in the list",
            &format!("return !!document.querySelector(\"{link}\");"),
        )
        .await;
    browser.click(&link).await;
    browser
        .until(
            "some chunks done in the grid",
            "return Number(document.querySelector('#grid')?.dataset.succeeded) >= 300;",
        )
        .await;
    browser.shot("3-job-running").await;
    // A worker killed mid-job: its chunks show as retried, with the reason and the worker.
    w2.signal("KILL");
    browser
        .until(
            "the grid at 100 %",
            "const g = document.querySelector('#grid'); \
             return g?.dataset.succeeded === '2000' && g?.dataset.total === '2000';",
        )
        .await;
    browser
        .until(
            "the retries of the lost worker's chunks",
            "return [...document.querySelectorAll('#retries tr.bad')]\
             .some(r => r.textContent.includes('worker lost') && r.textContent.includes('w2'));",
        )
        .await;
    browser
        .until(
            "the job succeeded",
            "return document.querySelector('#job-status')?.textContent === 'succeeded';",
        )
        .await;
    browser
        .until(
            "the result preview",
            "return document.querySelector('#result-preview')?.textContent === '2000';",
        )
        .await;
    browser.tall_shot("4-job-done").await;
    assert_eq!(api.result(&id), json!(2000));

    // The overview tells of the lost worker, and its row in the task stream.
    browser.click("nav a[data-view=overview]").await;
    browser
        .until(
            "the lost worker in the cluster events",
            "return [...document.querySelectorAll('#cluster-events li[data-event=worker_left]')]\
             .some(li => li.textContent.includes('w2 lost'));",
        )
        .await;
    browser
        .until(
            "one worker left",
            "return document.querySelectorAll('#workers tr[data-worker]').length === 1;",
        )
        .await;
    browser
        .until(
            "the job's attempts in the task stream",
            "return Number(document.querySelector('#task-stream')?.dataset.bars) > 0;",
        )
        .await;
    browser.tall_shot("5-overview-after-loss").await;

    // A second job, cancelled with the button.
    let long = api.submit(&naps(40, 60_000));
    browser.show(&format!("#/jobs/{long}")).await;
    browser
        .until(
            "the job running",
            "return document.querySelector('#job-status')?.textContent === 'running';",
        )
        .await;
    browser.click("#cancel").await;
    browser
        .until(
            "the job cancelled",
            "return document.querySelector('#job-status')?.textContent === 'cancelled';",
        )
        .await;
    assert_eq!(api.status(&long)["status"], json!("cancelled"));
    browser.shot("6-cancelled").await;

    // The jobs list filters by status.
    browser.click("nav a[data-view=jobs]").await;
    browser
        .client
        .find(Locator::Css("#status-filter"))
        .await
        .expect("the filter")
        .select_by_value("cancelled")
        .await
        .expect("filtered");
    browser
        .until(
            "only the cancelled job",
            &format!(
                "const rows = document.querySelectorAll('#job-list tr[data-job]'); \
                 return rows.length === 1 && rows[0].dataset.job === '{long}';"
            ),
        )
        .await;

    // A 100,000-chunk job: its grid is binned, and it follows the job to the end.
    let input: Vec<u64> = (0..100_000).collect();
    let big = api.submit(&json!({"kind": "sum", "input": input, "chunks": 100_000,
        "labels": {"size": "big"}}));
    browser.show(&format!("#/jobs/{big}")).await;
    browser
        .until(
            "the big job's grid, binned",
            "const g = document.querySelector('#grid'); \
             return g?.dataset.total === '100000' && Number(g.dataset.perCell) > 1;",
        )
        .await;
    browser.shot("7-big-job-waiting").await;
    let _big_worker = c.worker_with(
        muster_suite::bin("muster-worker"),
        "big",
        4,
        &["--label", "size=big"],
    );
    browser
        .until(
            "the big job done",
            "return document.querySelector('#grid')?.dataset.succeeded === '100000' &&              document.querySelector('#job-status')?.textContent === 'succeeded';",
        )
        .await;
    browser.shot("8-big-job-done").await;

    // In a narrow window the overview still fits: nothing wider than the window.
    browser.click("nav a[data-view=overview]").await;
    browser
        .client
        .set_window_size(420, 900)
        .await
        .expect("a narrow window");
    browser
        .until(
            "the overview in a narrow window",
            "return !!document.querySelector('#cards .card') && \
             document.documentElement.scrollWidth <= window.innerWidth;",
        )
        .await;
    browser.shot("9-narrow").await;
    // From sign-in to here, the page never reloaded.
    assert_eq!(browser.loaded_at().await, loaded);
    browser.close().await;
}

#[tokio::test]
async fn a_coordinator_without_tokens_shows_its_dashboard_without_a_sign_in() {
    let c = Coordinator::start(&["--insecure"]);
    let _w = c.worker_with(custom_worker_bin(), "w1", 1, &[]);
    let browser = Browser::open().await;
    browser
        .client
        .goto(&format!("{}/#/jobs", c.url))
        .await
        .expect("the dashboard");
    browser
        .until(
            "the jobs page, no sign-in",
            "return !!document.querySelector('#job-list') && !document.querySelector('#token');",
        )
        .await;
    assert_eq!(
        browser.client.title().await.expect("a title"),
        "Jobs · Muster"
    );
    browser.close().await;
}
