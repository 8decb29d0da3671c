//! `muster-worker`: the stock worker daemon, running the built-in tasks.

use std::process::ExitCode;

use clap::Parser;
use muster_worker::cli::{main_with, WorkerArgs};
use muster_worker::Tasks;

fn main() -> ExitCode {
    main_with(Tasks::builtin(), WorkerArgs::parse())
}
