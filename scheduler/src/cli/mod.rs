//! The `muster` command line: `serve`, `up`, and the client commands.
//!
//! Flags are parsed raw by clap (with `MUSTER_*` environment fallbacks), validated into settings,
//! and any error ends as one line on stderr with a non-zero exit: 2 for bad usage, 1 for a failed
//! job or a refused request.

mod client;
mod serve;
mod submit;

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
    /// List jobs, newest first.
    Jobs(client::JobsArgs),
    /// List connected workers.
    Workers(client::ClientOnly),
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
}

impl From<anyhow::Error> for CliError {
    fn from(e: anyhow::Error) -> Self {
        CliError::Usage(format!("{e:#}"))
    }
}

/// The whole `main` of the `muster` binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    muster_worker::cli::init_tracing();
    let outcome = match cli.command {
        Command::Serve(args) => serve::serve(args),
        Command::Up(args) => serve::up(args),
        Command::Submit(args) => submit::submit(args),
        Command::Status(args) => client::status(args),
        Command::Result(args) => client::result(args),
        Command::Cancel(args) => client::cancel(args),
        Command::Jobs(args) => client::jobs(args),
        Command::Workers(args) => client::workers(args),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(CliError::Usage(e)) => {
            eprintln!("muster: {e}");
            ExitCode::from(2)
        }
        Err(CliError::Failed(e)) => {
            eprintln!("muster: {e}");
            ExitCode::FAILURE
        }
    }
}
