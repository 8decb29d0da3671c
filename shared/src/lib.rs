//! Everything the coordinator and the workers must agree on.
//!
//! # Layout
//! - [`ids`]: typed identifiers (`JobId`, `WorkerId`, `ChunkIndex`, `Attempt`).
//! - [`ints`]: the fast path for arrays of 64-bit integers, kept and cut as JSON text.
//! - [`job`]: the job request body, parsed raw and then validated into a [`job::JobSpec`].
//! - [`split`]: how a built-in job's input becomes chunk payloads.
//! - [`task`]: the built-in chunk tasks every stock worker runs, and the task error type.
//! - [`reduce`]: the reducers that merge partial results into one result.
//! - [`protocol`]: the versioned, binary, batched worker protocol and its codec.
//!
//! Chunk payloads and partial results travel as JSON text held in [`bytes::Bytes`]: the coordinator
//! serializes a chunk once when it splits a job and never parses it again, workers parse only the
//! chunks they run, and a store can keep the bytes as they are.

pub mod ids;
pub mod ints;
pub mod job;
pub mod protocol;
pub mod reduce;
pub mod split;
pub mod task;
