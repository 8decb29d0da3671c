//! `muster watch JOB`: a job as it runs, from its event stream (`GET /v1/jobs/{id}/events`):
//! its progress with an ETA and its retries as they happen (a progress bar on a terminal, a
//! line per change otherwise), the lines an `exec` job's batches print, and its end. Exit 0 when
//! the job succeeded, 1 when it failed or was cancelled.

use std::io::IsTerminal;
use std::time::Duration;

use futures_util::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::Value;

use super::client::{block_on, Client, IdArgs};
use super::{live_line, say, CliError};

/// How long a stream that broke off is retried (a new leader being chosen, say).
const RECONNECT_FOR: Duration = Duration::from_secs(15);

/// One event of the stream.
#[derive(Debug, Default)]
struct Event {
    name: String,
    id: Option<String>,
    data: String,
}

/// Splits the complete events off the front of `buf` (the stream so far), leaving a partial
/// one; comments and unknown fields are skipped.
fn take_events(buf: &mut String) -> Vec<Event> {
    let mut events = Vec::new();
    while let Some(end) = buf.find("\n\n") {
        let block: String = buf.drain(..end + 2).collect();
        let mut event = Event::default();
        for line in block.lines() {
            if let Some(v) = line.strip_prefix("event: ") {
                event.name = v.to_owned();
            } else if let Some(v) = line.strip_prefix("id: ") {
                event.id = Some(v.trim().to_owned());
            } else if let Some(v) = line.strip_prefix("data: ") {
                event.data.push_str(v);
            }
        }
        if !event.name.is_empty() {
            events.push(event);
        }
    }
    events
}

/// What a person sees of one event.
pub(super) struct View {
    /// A progress bar on stderr, when it is a terminal.
    bar: Option<ProgressBar>,
    /// Without a bar: a line on stdout for each progress, and the end (`muster watch`); or
    /// nothing but retries, on stderr, so that stdout keeps the result (`muster submit --wait`).
    lines_on_stdout: bool,
}

impl View {
    /// `muster watch`'s: a bar on a terminal, else a line per change on stdout.
    pub(super) fn watching() -> Self {
        Self {
            bar: terminal_bar(),
            lines_on_stdout: true,
        }
    }

    /// `muster submit --wait`'s: a bar on a terminal, retries on stderr, stdout left for the
    /// result.
    pub(super) fn waiting() -> Self {
        Self {
            bar: terminal_bar(),
            lines_on_stdout: false,
        }
    }

    /// A line above the bar, or on its own without one.
    fn line(&self, line: String) -> Result<(), CliError> {
        match &self.bar {
            Some(bar) => bar.println(line),
            None if self.lines_on_stdout => say(&line)?,
            None => eprintln!("{line}"),
        }
        Ok(())
    }

    /// Shows `event`; the job's status once it is the end.
    fn show(&self, event: &Event) -> Result<Option<String>, CliError> {
        let data: Value = serde_json::from_str(&event.data).unwrap_or(Value::Null);
        match event.name.as_str() {
            "log" => self.line(live_line(&data))?,
            "progress" => {
                let c = &data["chunks"];
                let n = |k: &str| c[k].as_u64().unwrap_or(0);
                let mut text = format!(
                    "{}: {}/{} chunks done, {} running, {} failed, {} retried",
                    data["status"].as_str().unwrap_or("?"),
                    n("succeeded"),
                    n("total"),
                    n("running"),
                    n("failed"),
                    data["retried"].as_u64().unwrap_or(0)
                );
                if let Some(eta) = data["eta_seconds"].as_f64() {
                    text.push_str(&format!(", ETA {eta:.1}s"));
                }
                match &self.bar {
                    Some(bar) => {
                        bar.set_length(n("total"));
                        bar.set_position(n("succeeded"));
                        bar.set_message(text);
                    }
                    None if self.lines_on_stdout => say(&text)?,
                    None => {}
                }
            }
            // A failed attempt is a retry about to happen (or the job's end): said as it comes.
            "attempt" if data["state"] == "failed" => {
                let line = format!(
                    "chunk {} attempt {} on {} failed: {}",
                    data["chunk"],
                    data["attempt"],
                    data["worker"].as_str().unwrap_or("?"),
                    data["reason"].as_str().unwrap_or("?")
                );
                self.line(line)?;
            }
            "end" => {
                if let Some(bar) = &self.bar {
                    bar.finish_and_clear();
                }
                let status = data["status"].as_str().unwrap_or("?").to_owned();
                if self.lines_on_stdout {
                    let line = match data["error"].as_str() {
                        Some(error) => format!("{status}: {error}"),
                        None => status.clone(),
                    };
                    say(&line)?;
                }
                return Ok(Some(status));
            }
            _ => {}
        }
        Ok(None)
    }
}

/// A progress bar on stderr when it is a terminal.
fn terminal_bar() -> Option<ProgressBar> {
    std::io::stderr().is_terminal().then(|| {
        let bar = ProgressBar::new(0);
        bar.set_style(
            ProgressStyle::with_template("{spinner} [{bar:30}] {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar.enable_steady_tick(Duration::from_millis(100));
        bar
    })
}

/// `muster watch`.
pub fn watch(args: IdArgs) -> Result<(), CliError> {
    block_on(async move {
        let client = Client::new(&args.client)?;
        match follow_job(&client, &args.id, View::watching())
            .await?
            .as_str()
        {
            "succeeded" => Ok(()),
            _ => Err(CliError::Failed(format!("job {} did not succeed", args.id))),
        }
    })
}

/// Follows job `id`'s event stream to its end, shown through `view`, resuming where it broke
/// off (on the new leader, after a failover); the job's final status.
pub(super) async fn follow_job(client: &Client, id: &str, view: View) -> Result<String, CliError> {
    let path = format!("/v1/jobs/{id}/events");
    let mut after: Option<String> = None;
    let mut broke_off_at: Option<std::time::Instant> = None;
    loop {
        let mut stream = match client.stream(&path, after.as_deref()).await {
            Ok(stream) => stream,
            // No coordinator answers after the stream broke off: one may be taking over.
            Err(CliError::NotRun(_))
                if broke_off_at.is_some_and(|at| at.elapsed() <= RECONNECT_FOR) =>
            {
                actix_rt::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
            Err(CliError::NotRun(e)) => return Err(CliError::Failed(e)),
            // A job that is not there, a wrong token: said at once.
            Err(e) => return Err(e),
        };
        broke_off_at = None;
        let mut buf = String::new();
        while let Some(chunk) = stream.next().await {
            let Ok(chunk) = chunk else {
                break;
            };
            buf.push_str(&String::from_utf8_lossy(&chunk));
            for event in take_events(&mut buf) {
                if event.id.is_some() {
                    after = event.id.clone();
                }
                if let Some(status) = view.show(&event)? {
                    return Ok(status);
                }
            }
        }
        // The stream broke off before the end: go on where it stopped.
        broke_off_at.get_or_insert_with(std::time::Instant::now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_split_off_whole_and_a_partial_one_waits() {
        let mut buf = String::from(
            "id: 3\nevent: log\ndata: {\"text\":\"a\"}\n\n: keep-alive\n\nid: 3\nevent: prog",
        );
        let events = take_events(&mut buf);
        assert_eq!(events.len(), 1);
        assert_eq!(
            (events[0].name.as_str(), events[0].id.as_deref()),
            ("log", Some("3"))
        );
        assert_eq!(events[0].data, "{\"text\":\"a\"}");
        assert_eq!(buf, "id: 3\nevent: prog");
    }
}
