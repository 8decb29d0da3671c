//! The Muster worker daemon, as a library.
//!
//! A worker connects to a coordinator, announces the tasks it can run, runs up to `slots` chunks at
//! once on blocking threads (never on the async executor), reports results and classified failures,
//! heartbeats, honours cancels, and reconnects with backoff for ever. On shutdown it drains: it
//! tells the coordinator, finishes or hands back what it holds, and returns.
//!
//! Build your own worker by registering tasks on [`Tasks`] and calling [`run`]:
//!
//! ```no_run
//! use muster_worker::{Tasks, TaskContext, TaskError, WorkerConfig};
//!
//! let mut tasks = Tasks::builtin();
//! tasks.register("double", |_ctx: &TaskContext, n: i64| -> Result<i64, TaskError> { Ok(2 * n) });
//! let config = WorkerConfig::new(vec!["http://127.0.0.1:7070".into()]);
//! actix_rt::System::new().block_on(muster_worker::run(config, tasks, std::future::pending()))
//!     .expect("worker failed");
//! ```
//!
//! # Layout
//! - [`tasks`]: the task registry and the context a task gets.
//! - [`config`]: the worker's validated settings.
//! - `exec`: running the programs of `exec` jobs that the worker's allowlist names.
//! - [`exec_guard`]: the guard process that ends a program's group when the worker dies.
//! - `session`: one connection to a coordinator, from hello to close.
//! - `daemon`: the reconnect loop around sessions, and shutdown.

pub mod cli;
pub mod config;
mod daemon;
mod exec;
pub mod exec_guard;
mod session;
pub mod tasks;
pub mod tls;

pub use config::WorkerConfig;
pub use daemon::{run, WorkerError};
pub use exec::ExecSettings;
pub use muster_shared::task::TaskError;
pub use tasks::{OutputSink, TaskContext, Tasks};
