//! `muster-exec-guard`: what a worker starts an `exec` program through, so that the program's
//! process group ends when the worker does, even when the worker is killed (see
//! `muster_worker::exec_guard`). Installed beside `muster-worker`.

fn main() -> std::process::ExitCode {
    muster_worker::exec_guard::main()
}
