//! Everything the coordinator and the workers must agree on.
//!
//! # Layout
//! - [`ids`]: typed identifiers (`JobId`, `WorkerId`, `ChunkIndex`, `Attempt`).
//! - [`body`]: reading a job request body, with a shortcut for large integer inputs.
//! - [`ints`]: the fast path for arrays of 64-bit integers: checked, cut and packed in one pass.
//! - [`packed`]: the binary form of integer chunks and sorted integer runs.
//! - [`exec`]: `exec` jobs: a program run over batches of items on the workers that allow it.
//! - [`junit`]: merging the JUnit reports of an `exec` job's batches into one.
//! - [`job`]: the job request body, parsed raw and then validated into a [`job::JobSpec`].
//! - [`split`]: how a built-in job's input becomes chunk payloads.
//! - [`task`]: the built-in chunk tasks every stock worker runs, and the task error type.
//! - [`reduce`]: the reducers that merge partial results into one result.
//! - [`protocol`]: the versioned, binary, batched worker protocol and its codec.
//!
//! Chunk payloads and partial results travel as bytes held in [`bytes::Bytes`]: JSON text, or
//! packed integers for built-in kinds over integer arrays. The coordinator cuts a chunk once when
//! it accepts a job and never parses it again, workers decode only the chunks they run, and a
//! store keeps the bytes as they are.

pub mod body;
pub mod exec;
mod helpers;
pub mod ids;
pub mod ints;
pub mod job;
pub mod junit;
pub mod packed;
pub mod protocol;
pub mod reduce;
pub mod split;
pub mod task;
