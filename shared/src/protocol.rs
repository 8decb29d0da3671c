//! The worker protocol: versioned, binary (MessagePack), batched.
//!
//! A worker opens a WebSocket on `GET /v1/workers/connect` with its worker token and the
//! [`PROTOCOL_HEADER`] naming its [`PROTOCOL_VERSION`]. A coordinator that speaks another version
//! still completes the upgrade but then closes at once with a close reason saying which versions
//! differ, so both sides can log a clear message. After the upgrade the worker sends
//! [`WorkerMessage::Hello`] and the coordinator answers [`CoordinatorMessage::Welcome`].
//!
//! Every binary frame carries one [`Frame`]: the worker it concerns plus a batch of messages, so a
//! busy coordinator sends many assignments per frame and a busy worker many outcomes. Chunk-level
//! messages name the job, chunk index and attempt through [`ChunkRef`].

use std::collections::BTreeMap;

use bytes::Bytes;
use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::ids::{Attempt, ChunkIndex, JobId, WorkerId};

/// Version of this protocol; both sides must speak the same one.
pub const PROTOCOL_VERSION: u32 = 1;

/// HTTP header in the upgrade request that names the worker's protocol version.
pub const PROTOCOL_HEADER: &str = "muster-protocol";

/// Largest frame either side accepts (a batch of large chunk payloads).
pub const MAX_FRAME_BYTES: usize = 512 * 1024 * 1024;

/// WebSocket close code (application range) for a protocol version mismatch.
pub const CLOSE_VERSION_MISMATCH: u16 = 4001;
/// WebSocket close code for a refused hello (bad slots, duplicate worker id).
pub const CLOSE_REFUSED: u16 = 4002;
/// WebSocket close code when the coordinator stopped hearing from the worker; the worker reconnects.
pub const CLOSE_HEARTBEAT_TIMEOUT: u16 = 4003;

/// One binary WebSocket message: the worker it is from or to, and a batch of messages.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Frame<M> {
    /// The worker that sent it (worker → coordinator) or that it is for (coordinator → worker).
    pub worker: WorkerId,
    /// The batch, handled in order.
    pub messages: Vec<M>,
}

/// Names one attempt of one chunk of one job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ChunkRef {
    /// The job.
    pub job: JobId,
    /// The chunk within the job.
    pub chunk: ChunkIndex,
    /// Which attempt of that chunk.
    pub attempt: Attempt,
}

impl std::fmt::Display for ChunkRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}#{}", self.job, self.chunk, self.attempt)
    }
}

/// What a worker announces when it connects.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Hello {
    /// The worker's protocol version (also sent in [`PROTOCOL_HEADER`]).
    pub protocol: u32,
    /// Human-readable name, for listings and logs.
    pub name: String,
    /// Chunks the worker runs at once.
    pub slots: u32,
    /// Chunks the worker holds, queued, beyond its slots, so that a new chunk is at hand the moment
    /// a slot frees (no round trip to the coordinator in between).
    pub prefetch: u32,
    /// Task names the worker can run.
    pub tasks: Vec<String>,
    /// Labels jobs may require.
    pub labels: BTreeMap<String, String>,
    /// Attempts still running from an earlier connection. The coordinator re-queued them when that
    /// connection dropped, so their outcomes will be ignored; until they arrive, their slots are busy.
    pub running: Vec<ChunkRef>,
}

/// Messages from a worker to the coordinator.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum WorkerMessage {
    /// First message of every connection.
    Hello(Hello),
    /// Proof of life, sent every heartbeat interval.
    Heartbeat,
    /// Finished attempts (results and failures).
    Outcome(ChunkOutcome),
    /// The worker is shutting down: assign it nothing more.
    Draining,
    /// The worker now holds this many chunks queued beyond its slots (its chunks are short).
    Capacity {
        /// New prefetch.
        prefetch: u32,
    },
}

/// Messages from the coordinator to a worker.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum CoordinatorMessage {
    /// The hello was accepted.
    Welcome {
        /// How often the worker must send a heartbeat, in milliseconds.
        heartbeat_interval_ms: u64,
    },
    /// Run this chunk.
    Assign(Assignment),
    /// Stop this attempt and free its slot; its outcome is no longer wanted.
    Cancel(ChunkRef),
    /// Proof of life.
    Heartbeat,
}

/// One chunk to run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Assignment {
    /// Which attempt of which chunk.
    pub chunk: ChunkRef,
    /// Task name.
    pub task: String,
    /// The chunk payload, JSON.
    pub input: Bytes,
}

/// The end of one attempt on a worker.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChunkOutcome {
    /// Which attempt.
    pub chunk: ChunkRef,
    /// What happened.
    pub result: Outcome,
}

/// Success with the partial result, or a classified failure.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Outcome {
    /// The partial result, JSON.
    Succeeded(Bytes),
    /// The attempt failed.
    Failed(Failure),
}

/// Why an attempt failed, as seen by the worker; the coordinator decides what to do about it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Failure {
    /// The failure's class.
    pub class: FailureClass,
    /// Lowercase description.
    pub message: String,
}

/// Failure classes a worker reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FailureClass {
    /// The task returned an error that another attempt may not hit.
    TaskError,
    /// The task said its input can never succeed.
    Permanent,
    /// The worker does not know the task.
    UnknownTask,
    /// The worker gave the chunk back unfinished (it is shutting down).
    HandedBack,
}

/// Why a frame could not be decoded.
#[derive(Debug, thiserror::Error)]
#[error("undecodable frame: {0}")]
pub struct CodecError(#[from] rmp_serde::decode::Error);

/// The bytes a message carries besides its fixed fields (a chunk's input, a partial result), to
/// size a frame's buffer up front.
pub trait PayloadLen {
    /// Payload bytes.
    fn payload_len(&self) -> usize;
}

impl PayloadLen for CoordinatorMessage {
    fn payload_len(&self) -> usize {
        match self {
            Self::Assign(a) => a.input.len(),
            _ => 0,
        }
    }
}

impl PayloadLen for WorkerMessage {
    fn payload_len(&self) -> usize {
        match self {
            Self::Outcome(ChunkOutcome {
                result: Outcome::Succeeded(partial),
                ..
            }) => partial.len(),
            _ => 0,
        }
    }
}

/// Encodes a frame as MessagePack, into a buffer sized for it up front (a frame of large
/// payloads is not copied again and again as its buffer grows).
pub fn encode<M: Serialize + PayloadLen>(frame: &Frame<M>) -> Bytes {
    // Fixed fields: ids, names and numbers, well under this per message.
    const PER_MESSAGE: usize = 128;
    let room = frame
        .messages
        .iter()
        .map(|m| m.payload_len() + PER_MESSAGE)
        .sum::<usize>()
        + PER_MESSAGE;
    let mut out = Vec::with_capacity(room);
    // Encoding plain data into a Vec cannot fail.
    let _ = rmp_serde::encode::write(&mut out, frame);
    Bytes::from(out)
}

/// Decodes a frame.
pub fn decode<M: DeserializeOwned>(bytes: &[u8]) -> Result<Frame<M>, CodecError> {
    Ok(rmp_serde::from_slice(bytes)?)
}

/// [`CoordinatorMessage`] as decoded in place: the same variants, in the same order, with an
/// assignment's input borrowed from the frame.
#[derive(Deserialize)]
enum MessageInPlace<'a> {
    Welcome { heartbeat_interval_ms: u64 },
    Assign(#[serde(borrow)] AssignmentInPlace<'a>),
    Cancel(ChunkRef),
    Heartbeat,
}

/// [`Assignment`] with its input borrowed from the frame.
#[derive(Deserialize)]
struct AssignmentInPlace<'a> {
    chunk: ChunkRef,
    task: String,
    #[serde(borrow)]
    input: &'a [u8],
}

/// Decodes a frame from the coordinator with each chunk's input a slice of `bytes`, not a copy:
/// a frame of large chunks is not copied again on the worker.
pub fn decode_in_place(bytes: &Bytes) -> Result<Frame<CoordinatorMessage>, CodecError> {
    let frame: Frame<MessageInPlace<'_>> = rmp_serde::from_slice(bytes)?;
    let messages = frame
        .messages
        .into_iter()
        .map(|m| match m {
            MessageInPlace::Welcome {
                heartbeat_interval_ms,
            } => CoordinatorMessage::Welcome {
                heartbeat_interval_ms,
            },
            MessageInPlace::Assign(a) => CoordinatorMessage::Assign(Assignment {
                chunk: a.chunk,
                task: a.task,
                input: bytes.slice_ref(a.input),
            }),
            MessageInPlace::Cancel(chunk) => CoordinatorMessage::Cancel(chunk),
            MessageInPlace::Heartbeat => CoordinatorMessage::Heartbeat,
        })
        .collect();
    Ok(Frame {
        worker: frame.worker,
        messages,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip() {
        let worker = WorkerId::new();
        let chunk = ChunkRef {
            job: JobId::new(),
            chunk: ChunkIndex(3),
            attempt: Attempt(2),
        };
        let frame = Frame {
            worker,
            messages: vec![
                CoordinatorMessage::Assign(Assignment {
                    chunk,
                    task: "sum".into(),
                    input: Bytes::from_static(b"[1,2]"),
                }),
                CoordinatorMessage::Cancel(chunk),
            ],
        };
        let back: Frame<CoordinatorMessage> = decode(&encode(&frame)).unwrap();
        assert_eq!(back.worker, worker);
        assert!(
            matches!(&back.messages[0], CoordinatorMessage::Assign(a) if a.chunk == chunk && &a.input[..] == b"[1,2]")
        );
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(decode::<CoordinatorMessage>(b"\xc1\xc1").is_err());
        assert!(decode_in_place(&Bytes::from_static(b"\xc1\xc1")).is_err());
    }

    #[test]
    fn frames_decoded_in_place_match_and_borrow_their_inputs() {
        let chunk = |i| ChunkRef {
            job: JobId::new(),
            chunk: ChunkIndex(i),
            attempt: Attempt(1),
        };
        let messages = vec![
            CoordinatorMessage::Welcome {
                heartbeat_interval_ms: 250,
            },
            CoordinatorMessage::Assign(Assignment {
                chunk: chunk(0),
                task: "sum".into(),
                input: Bytes::from(vec![7u8; 100_000]),
            }),
            CoordinatorMessage::Cancel(chunk(1)),
            CoordinatorMessage::Heartbeat,
            CoordinatorMessage::Assign(Assignment {
                chunk: chunk(2),
                task: "wordcount".into(),
                input: Bytes::new(),
            }),
        ];
        // Every variant is here: a new one must be added to `MessageInPlace` too.
        for m in &messages {
            match m {
                CoordinatorMessage::Welcome { .. }
                | CoordinatorMessage::Assign(_)
                | CoordinatorMessage::Cancel(_)
                | CoordinatorMessage::Heartbeat => {}
            }
        }
        let frame = Frame {
            worker: WorkerId::new(),
            messages,
        };
        let bytes = encode(&frame);
        let copied: Frame<CoordinatorMessage> = decode(&bytes).unwrap();
        let in_place = decode_in_place(&bytes).unwrap();
        assert_eq!(format!("{copied:?}"), format!("{in_place:?}"));
        let CoordinatorMessage::Assign(a) = &in_place.messages[1] else {
            panic!("an assignment");
        };
        assert!(bytes.as_ptr_range().contains(&a.input.as_ptr()));
    }
}
