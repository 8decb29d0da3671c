//! Many workers in one process, each with its own WebSocket session: for scale benchmarks (S1),
//! where a thousand worker processes would measure the machine rather than the coordinator.
//!
//! ```text
//! ./target/release/examples/swarm --scheduler http://127.0.0.1:7070 --workers 1000
//! ```

use std::process::ExitCode;

use clap::Parser;
use muster_worker::{Tasks, WorkerConfig};

#[derive(Debug, Parser)]
struct Args {
    /// Coordinator URL.
    #[arg(long, env = "MUSTER_SCHEDULER")]
    scheduler: String,
    /// Workers to run.
    #[arg(long, default_value_t = 1000)]
    workers: u32,
    /// Slots per worker.
    #[arg(long, default_value_t = 1)]
    slots: u32,
}

fn main() -> ExitCode {
    muster_worker::cli::init_tracing(muster_worker::cli::LogFormat::Text);
    let args = Args::parse();
    let token = std::env::var("MUSTER_WORKER_TOKEN").ok();
    let system = actix_rt::System::new();
    let outcome = system.block_on(async move {
        // One signal handler for all the workers.
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        actix_rt::spawn(async move {
            muster_worker::cli::termination().await;
            let _ = stop_tx.send(true);
        });
        let mut handles = Vec::new();
        for i in 0..args.workers {
            let mut config = WorkerConfig::new(vec![args.scheduler.clone()]);
            config.token = token.clone();
            config.slots = args.slots;
            config.prefetch = args.slots * muster_worker::cli::PREFETCH_PER_SLOT;
            config.name = format!("swarm-{i}");
            let mut stop = stop_rx.clone();
            let shutdown = async move {
                let _ = stop.wait_for(|s| *s).await;
            };
            handles.push(actix_rt::spawn(muster_worker::run(
                config,
                Tasks::builtin(),
                shutdown,
            )));
        }
        for handle in handles {
            if let Ok(Err(e)) = handle.await {
                return Err(e);
            }
        }
        Ok(())
    });
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("swarm: {e}");
            ExitCode::FAILURE
        }
    }
}
