//! The guard between a worker and an `exec` program: `muster-exec-guard PROGRAM ARG...`.
//!
//! A program a worker starts must not outlive the worker, even one killed by SIGKILL, and neither
//! may what the program starts. The worker starts the guard as the leader of a new process group,
//! with the write end of a pipe as the only holder of the guard's standard input; the guard starts
//! the program in its group (standard input empty, output shared) and waits. When the worker
//! dies, however it dies, the kernel closes the pipe: the guard reads its end, and ends the whole
//! group (SIGTERM, then SIGKILL after a grace period). When the program ends first, the guard ends
//! with its exit status (a signal's as 128 + its number, as shells report it) after ending what
//! the program left in the group. No `unsafe`, no signal handler: a closed pipe is the signal.

use std::io::Read;
use std::process::{Command, ExitCode, Stdio};
use std::time::Duration;

use rustix::process::{getpgrp, kill_process_group, Signal};

/// Between SIGTERM and SIGKILL when the worker is gone.
const GRACE: Duration = Duration::from_secs(1);

/// The guard's whole `main`.
pub fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let Some(program) = args.next() else {
        eprintln!("muster-exec-guard: usage: muster-exec-guard PROGRAM [ARG...]");
        return ExitCode::from(2);
    };
    let mut child = match Command::new(&program)
        .args(args)
        .stdin(Stdio::null())
        .spawn()
    {
        Ok(child) => child,
        Err(e) => {
            eprintln!(
                "muster-exec-guard: cannot start `{}`: {e}",
                program.to_string_lossy()
            );
            return ExitCode::from(127);
        }
    };
    // The worker's end of the pipe closes when the worker is gone.
    std::thread::spawn(|| {
        let mut sink = [0u8; 64];
        let mut stdin = std::io::stdin();
        while matches!(stdin.read(&mut sink), Ok(n) if n > 0) {}
        let group = getpgrp();
        let _ = kill_process_group(group, Signal::TERM);
        std::thread::sleep(GRACE);
        let _ = kill_process_group(group, Signal::KILL);
    });
    let code = match child.wait() {
        Ok(status) => match (
            status.code(),
            std::os::unix::process::ExitStatusExt::signal(&status),
        ) {
            (Some(code), _) => code,
            (None, Some(signal)) => 128 + signal,
            (None, None) => 1,
        },
        Err(_) => 1,
    };
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}
