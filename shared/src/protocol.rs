//! The worker protocol: versioned, binary (MessagePack), batched.
//!
//! A worker opens a WebSocket on `GET /v1/workers/connect` with its worker token and the
//! [`PROTOCOL_HEADER`] naming its [`PROTOCOL_VERSION`]. A coordinator that speaks another version
//! still completes the upgrade but then closes at once with a close reason saying which versions
//! differ, so both sides can log a clear message. After the upgrade the worker sends
//! [`WorkerMessage::Hello`] and the coordinator answers [`CoordinatorMessage::Welcome`] in a frame
//! that names the worker id the coordinator gave this connection: a worker never chooses its own
//! id, so no connection can take over another's.
//!
//! Every binary frame carries one [`Frame`]: the worker it concerns plus a batch of messages, so a
//! busy coordinator sends many assignments per frame and a busy worker many outcomes. Chunk-level
//! messages name the job, chunk index and attempt through [`ChunkRef`].

use std::collections::BTreeMap;

use bytes::Bytes;
use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::ids::{Attempt, ChunkIndex, JobId, WorkerId};

/// Version of this protocol; both sides must speak the same one.
pub const PROTOCOL_VERSION: u32 = 4;

/// HTTP header in the upgrade request that names the worker's protocol version.
pub const PROTOCOL_HEADER: &str = "muster-protocol";

/// Largest frame a worker accepts (a batch of large chunk payloads). What a worker may send is the
/// coordinator's to say, in its [`CoordinatorMessage::Welcome`].
pub const MAX_FRAME_BYTES: usize = 512 * 1024 * 1024;

/// Most messages one frame may hold: decoding allocates per message, so the count is bounded as
/// well as the bytes (a frame of empty messages would otherwise take ~10x its size to decode).
pub const MAX_MESSAGES_PER_FRAME: usize = 16_384;

/// Most chunks a worker may hold queued per slot beyond its slots (its `prefetch`); the
/// coordinator counts no more than this whatever a worker announces.
pub const MAX_PREFETCH_PER_SLOT: u32 = 512;

/// Most jobs one [`WorkerMessage::AwaitJobs`] may wait for (a parent's most children).
pub const MAX_AWAITED_JOBS: usize = 10_000;

/// Most tasks a hello may list.
pub const MAX_HELLO_TASKS: usize = 1024;

/// Most labels a hello (or a job) may carry.
pub const MAX_LABELS: usize = 64;

/// Longest name, task name, label key or label value, in bytes.
pub const MAX_NAME_BYTES: usize = 256;

/// Longest failure message kept, in bytes; a longer one is cut.
pub const MAX_MESSAGE_BYTES: usize = 4096;

/// Fixed bytes a message takes in a frame besides its payload, at most: ids, names, numbers.
pub const MESSAGE_OVERHEAD: usize = 128;

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
    /// The batch, handled in order; at most [`MAX_MESSAGES_PER_FRAME`].
    #[serde(
        deserialize_with = "bounded::<_, _, MAX_MESSAGES_PER_FRAME>",
        bound(deserialize = "M: Deserialize<'de>")
    )]
    pub messages: Vec<M>,
}

/// Deserializes a sequence of at most `N` elements, refusing a longer one as soon as it says so,
/// and reserving room for no more than a few elements ahead of their bytes.
fn bounded<'de, D, T, const N: usize>(deserializer: D) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    struct Bounded<T, const N: usize>(std::marker::PhantomData<T>);

    impl<'de, T: Deserialize<'de>, const N: usize> serde::de::Visitor<'de> for Bounded<T, N> {
        type Value = Vec<T>;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "a sequence of at most {N} elements")
        }

        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
            let hint = seq.size_hint().unwrap_or(0);
            if hint > N {
                return Err(serde::de::Error::invalid_length(hint, &self));
            }
            let mut out = Vec::with_capacity(hint.min(256));
            while let Some(item) = seq.next_element()? {
                if out.len() == N {
                    return Err(serde::de::Error::invalid_length(N + 1, &self));
                }
                out.push(item);
            }
            Ok(out)
        }
    }

    deserializer.deserialize_seq(Bounded::<T, N>(std::marker::PhantomData))
}

/// Deserializes a map of at most [`MAX_LABELS`] entries.
fn bounded_labels<'de, D>(deserializer: D) -> Result<BTreeMap<String, String>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    struct Labels;

    impl<'de> serde::de::Visitor<'de> for Labels {
        type Value = BTreeMap<String, String>;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "a map of at most {MAX_LABELS} labels")
        }

        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            mut map: A,
        ) -> Result<Self::Value, A::Error> {
            let mut out = BTreeMap::new();
            while let Some((k, v)) = map.next_entry()? {
                if out.len() == MAX_LABELS {
                    return Err(serde::de::Error::invalid_length(MAX_LABELS + 1, &self));
                }
                out.insert(k, v);
            }
            Ok(out)
        }
    }

    deserializer.deserialize_map(Labels)
}

/// Splits messages into batches of at most [`MAX_MESSAGES_PER_FRAME`] whose payloads (plus
/// [`MESSAGE_OVERHEAD`] each) stay within `bytes`, in order; a message larger than that alone
/// goes in a batch of its own.
pub fn batches<M: PayloadLen>(messages: Vec<M>, bytes: usize) -> Vec<Vec<M>> {
    let mut out = Vec::new();
    let mut batch = Vec::new();
    let mut size = MESSAGE_OVERHEAD;
    for message in messages {
        let len = message.payload_len() + MESSAGE_OVERHEAD;
        if !batch.is_empty() && (size + len > bytes || batch.len() == MAX_MESSAGES_PER_FRAME) {
            out.push(std::mem::take(&mut batch));
            size = MESSAGE_OVERHEAD;
        }
        size += len;
        batch.push(message);
    }
    if !batch.is_empty() {
        out.push(batch);
    }
    out
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
    /// Task names the worker can run; at most [`MAX_HELLO_TASKS`].
    #[serde(deserialize_with = "bounded::<_, _, MAX_HELLO_TASKS>")]
    pub tasks: Vec<String>,
    /// Labels jobs may require; at most [`MAX_LABELS`].
    #[serde(deserialize_with = "bounded_labels")]
    pub labels: BTreeMap<String, String>,
    /// Attempts still running from an earlier connection. The coordinator re-queued them when that
    /// connection dropped, so their outcomes will be ignored; until they arrive, their slots are busy.
    /// At most [`MAX_MESSAGES_PER_FRAME`].
    #[serde(deserialize_with = "bounded::<_, _, MAX_MESSAGES_PER_FRAME>")]
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
    /// Output a running attempt printed (an `exec` batch's program), whole lines as a rule,
    /// sent as it comes; the attempt's outcome follows it.
    Output {
        /// The attempt.
        chunk: ChunkRef,
        /// The text.
        text: String,
    },
    /// A running attempt submits a job of its own (a sub-job), answered by
    /// [`CoordinatorMessage::Submitted`]. It is idempotent per (parent chunk, `key`): a retried
    /// attempt that submits again under the same key gets the job the first one made.
    SubmitJob {
        /// The worker's number for this request, named in the answer.
        request: u64,
        /// The attempt asking, which must be running on this worker.
        parent: ChunkRef,
        /// The sub-job's key within its parent chunk.
        key: String,
        /// The job body, as `POST /v1/jobs` takes it (JSON).
        body: Bytes,
    },
    /// A running attempt waits for sub-jobs of its job to end, answered by
    /// [`CoordinatorMessage::JobsEnded`] once they all have. Until then its slot is free for
    /// other chunks (the attempt takes it back with the answer).
    AwaitJobs {
        /// The worker's number for this request.
        request: u64,
        /// The attempt waiting, which must be running on this worker.
        parent: ChunkRef,
        /// The jobs, sub-jobs of the attempt's job; at most [`MAX_AWAITED_JOBS`].
        #[serde(deserialize_with = "bounded::<_, _, MAX_AWAITED_JOBS>")]
        jobs: Vec<JobId>,
    },
    /// A running attempt cancels a sub-job of its job.
    CancelJob {
        /// The attempt asking, which must be running on this worker.
        parent: ChunkRef,
        /// The sub-job.
        job: JobId,
    },
}

/// How a job a worker waited for ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobEnded {
    /// The job.
    pub job: JobId,
    /// `succeeded`, `failed` or `cancelled`.
    pub status: String,
    /// Its result (JSON) when it succeeded.
    pub result: Option<Bytes>,
    /// Why it failed, when it did.
    pub error: Option<String>,
}

/// Messages from the coordinator to a worker.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum CoordinatorMessage {
    /// The hello was accepted; the frame names the worker id this connection has.
    Welcome {
        /// How often the worker must send a heartbeat, in milliseconds.
        heartbeat_interval_ms: u64,
        /// The largest frame the coordinator accepts from the worker: larger ones close the
        /// connection, so the worker splits its batches to fit and fails a chunk whose result
        /// alone would not.
        max_frame_bytes: u64,
    },
    /// Run this chunk.
    Assign(Assignment),
    /// Stop this attempt and free its slot; its outcome is no longer wanted.
    Cancel(ChunkRef),
    /// Proof of life.
    Heartbeat,
    /// The answer to [`WorkerMessage::SubmitJob`]: the job's id, or why it was refused.
    Submitted {
        /// The worker's number for the request.
        request: u64,
        /// The sub-job, or the refusal.
        result: Result<JobId, String>,
    },
    /// The answer to [`WorkerMessage::AwaitJobs`]: how each job ended, in the order asked, or
    /// why the wait was refused.
    JobsEnded {
        /// The worker's number for the request.
        request: u64,
        /// The ends, or the refusal.
        result: Result<Vec<JobEnded>, String>,
    },
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
            Self::JobsEnded {
                result: Ok(ends), ..
            } => ends
                .iter()
                .map(|e| e.result.as_ref().map_or(0, Bytes::len) + MESSAGE_OVERHEAD)
                .sum(),
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
            Self::Output { text, .. } => text.len(),
            Self::SubmitJob { body, key, .. } => body.len() + key.len(),
            Self::AwaitJobs { jobs, .. } => jobs.len() * 20,
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
    Welcome {
        heartbeat_interval_ms: u64,
        max_frame_bytes: u64,
    },
    Assign(#[serde(borrow)] AssignmentInPlace<'a>),
    Cancel(ChunkRef),
    Heartbeat,
    Submitted {
        request: u64,
        result: Result<JobId, String>,
    },
    JobsEnded {
        request: u64,
        result: Result<Vec<JobEnded>, String>,
    },
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
                max_frame_bytes,
            } => CoordinatorMessage::Welcome {
                heartbeat_interval_ms,
                max_frame_bytes,
            },
            MessageInPlace::Assign(a) => CoordinatorMessage::Assign(Assignment {
                chunk: a.chunk,
                task: a.task,
                input: bytes.slice_ref(a.input),
            }),
            MessageInPlace::Cancel(chunk) => CoordinatorMessage::Cancel(chunk),
            MessageInPlace::Heartbeat => CoordinatorMessage::Heartbeat,
            MessageInPlace::Submitted { request, result } => {
                CoordinatorMessage::Submitted { request, result }
            }
            MessageInPlace::JobsEnded { request, result } => {
                CoordinatorMessage::JobsEnded { request, result }
            }
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
    fn a_frame_of_too_many_messages_or_a_hello_of_too_many_labels_is_refused() {
        let frame = |n: usize| Frame {
            worker: WorkerId::new(),
            messages: vec![WorkerMessage::Heartbeat; n],
        };
        let ok = decode::<WorkerMessage>(&encode(&frame(MAX_MESSAGES_PER_FRAME)));
        assert_eq!(ok.unwrap().messages.len(), MAX_MESSAGES_PER_FRAME);
        let err = decode::<WorkerMessage>(&encode(&frame(MAX_MESSAGES_PER_FRAME + 1)));
        assert!(err.unwrap_err().to_string().contains("at most"));
        let hello = |labels: usize| Frame {
            worker: WorkerId::new(),
            messages: vec![WorkerMessage::Hello(Hello {
                protocol: PROTOCOL_VERSION,
                name: "w".into(),
                slots: 1,
                prefetch: 0,
                tasks: vec!["sum".into()],
                labels: (0..labels)
                    .map(|i| (i.to_string(), String::new()))
                    .collect(),
                running: Vec::new(),
            })],
        };
        assert!(decode::<WorkerMessage>(&encode(&hello(MAX_LABELS))).is_ok());
        assert!(decode::<WorkerMessage>(&encode(&hello(MAX_LABELS + 1))).is_err());
        let split = batches(vec![WorkerMessage::Heartbeat; 40_000], usize::MAX);
        let sizes: Vec<usize> = split.iter().map(Vec::len).collect();
        assert_eq!(sizes, [16_384, 16_384, 7_232]);
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
                max_frame_bytes: 1 << 20,
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
            CoordinatorMessage::Submitted {
                request: 7,
                result: Ok(JobId::new()),
            },
            CoordinatorMessage::Submitted {
                request: 8,
                result: Err("too deep".into()),
            },
            CoordinatorMessage::JobsEnded {
                request: 9,
                result: Ok(vec![JobEnded {
                    job: JobId::new(),
                    status: "succeeded".into(),
                    result: Some(Bytes::from_static(b"[1,2]")),
                    error: None,
                }]),
            },
        ];
        // Every variant is here: a new one must be added to `MessageInPlace` too.
        for m in &messages {
            match m {
                CoordinatorMessage::Welcome { .. }
                | CoordinatorMessage::Assign(_)
                | CoordinatorMessage::Cancel(_)
                | CoordinatorMessage::Heartbeat
                | CoordinatorMessage::Submitted { .. }
                | CoordinatorMessage::JobsEnded { .. } => {}
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
