//! The `muster` command line: `serve`, `up`, and the client commands.
//!
//! Flags are parsed raw by clap (with `MUSTER_*` environment fallbacks), validated into settings,
//! and any error ends as one line on stderr with a non-zero exit: 2 for bad usage, 1 for a failed
//! job or a refused request.

mod client;
mod serve;
mod submit;
mod watch;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

pub use client::{Client, ClientArgs};

/// `muster`.
#[derive(Debug, Parser)]
#[command(
    name = "muster",
    version,
    about = "Muster: a distributed job scheduler"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log lines as text, or as JSON objects for a log collector.
    #[arg(
        long,
        global = true,
        env = "MUSTER_LOG_FORMAT",
        value_enum,
        default_value_t
    )]
    log_format: muster_worker::cli::LogFormat,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a coordinator.
    Serve(serve::ServeArgs),
    /// Run a coordinator plus local workers: a whole cluster in one command.
    Up(serve::UpArgs),
    /// Submit a job (and with --wait, print its result).
    Submit(submit::SubmitArgs),
    /// Show a job's status.
    Status(client::IdArgs),
    /// Print a job's result.
    Result(client::ResultArgs),
    /// Cancel a job.
    Cancel(client::IdArgs),
    /// Follow a job as it runs: progress with an ETA, retries, an exec job's lines, its end.
    Watch(client::IdArgs),
    /// List jobs, newest first.
    Jobs(client::JobsArgs),
    /// List connected workers.
    Workers(client::ClientOnly),
    /// Print the REST API's OpenAPI 3.1 document (what `GET /v1/openapi.json` serves).
    Openapi,
}

/// How a command failed: bad usage (exit 2) or a failure (exit 1).
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The command line or its input files are wrong.
    #[error("{0}")]
    Usage(String),
    /// The request or the job failed.
    #[error("{0}")]
    Failed(String),
    /// An `exec` job could not run to its verdict (it failed or was cancelled): exit 2, apart
    /// from exit 1 for a program that ran and failed.
    #[error("{0}")]
    NotRun(String),
    /// Standard output's reader went away (`| head`): the command ends quietly, as `cat` does.
    #[error("standard output closed")]
    OutputClosed,
}

/// Writes `text` and a newline to standard output. A reader that went away ends the command
/// quietly ([`CliError::OutputClosed`]) instead of a panic, so `muster ... | head` behaves.
pub fn say(text: &str) -> Result<(), CliError> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let written = out
        .write_all(text.as_bytes())
        .and_then(|()| out.write_all(b"\n"))
        .and_then(|()| out.flush());
    match written {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Err(CliError::OutputClosed),
        Err(e) => Err(CliError::Failed(format!(
            "cannot write to standard output: {e}"
        ))),
    }
}

/// A line an `exec` batch printed, as the CLI prints it: prefixed by its batch.
pub fn batch_line(batch: impl std::fmt::Display, text: &str) -> String {
    format!("[batch {batch}] {text}")
}

/// [`batch_line`] of a line as the coordinator sends it (`{"batch", "text", ...}`).
pub fn live_line(line: &serde_json::Value) -> String {
    batch_line(&line["batch"], line["text"].as_str().unwrap_or_default())
}

impl From<anyhow::Error> for CliError {
    fn from(e: anyhow::Error) -> Self {
        CliError::Usage(format!("{e:#}"))
    }
}

/// The whole `main` of the `muster` binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    muster_worker::cli::init_tracing(cli.log_format);
    let outcome = match cli.command {
        Command::Serve(args) => serve::serve(args),
        Command::Up(args) => serve::up(args),
        Command::Submit(args) => submit::submit(args),
        Command::Status(args) => client::status(args),
        Command::Result(args) => client::result(args),
        Command::Cancel(args) => client::cancel(args),
        Command::Watch(args) => watch::watch(args),
        Command::Jobs(args) => client::jobs(args),
        Command::Workers(args) => client::workers(args),
        Command::Openapi => say(crate::api::openapi::document_json()),
    };
    match outcome {
        Ok(()) | Err(CliError::OutputClosed) => ExitCode::SUCCESS,
        Err(CliError::Usage(e) | CliError::NotRun(e)) => {
            eprintln!("muster: {e}");
            ExitCode::from(2)
        }
        Err(CliError::Failed(e)) => {
            eprintln!("muster: {e}");
            ExitCode::FAILURE
        }
    }
}
