//! `muster-worker`: the stock worker daemon, running the built-in tasks.

use std::process::ExitCode;

use clap::Parser;
use muster_worker::cli::{main_with, WorkerArgs};
use muster_worker::Tasks;

/// jemalloc, as the coordinator: many small frames and payloads per second.
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    main_with(Tasks::builtin(), WorkerArgs::parse())
}
