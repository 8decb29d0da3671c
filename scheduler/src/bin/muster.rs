//! `muster`: the coordinator and the command-line client.

/// jemalloc instead of the system allocator: the coordinator allocates and frees many small
/// objects per chunk, and glibc's allocator (with the page faults of its heap shrinking and
/// growing again) took about a sixth of the coordinator's time on W1 (see BENCHMARKS.md).
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    muster_scheduler::cli::main()
}
