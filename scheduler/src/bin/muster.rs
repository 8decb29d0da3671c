//! `muster`: the coordinator and the command-line client.

fn main() -> std::process::ExitCode {
    muster_scheduler::cli::main()
}
