//! A worker connection written by hand, byte by byte, for tests that play a hostile or broken
//! worker: it says and sends whatever a test tells it to, including what no real worker would
//! (frames over the limit, another worker's id, results of the wrong type).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use muster_shared::ids::WorkerId;
use muster_shared::protocol::{
    decode, encode, Assignment, ChunkOutcome, CoordinatorMessage, Frame, Hello, Outcome,
    WorkerMessage, PROTOCOL_HEADER, PROTOCOL_VERSION,
};

use crate::WORKER_TOKEN;

/// What the coordinator sent.
#[derive(Debug)]
pub enum Received {
    /// A binary frame, decoded.
    Frame(Frame<CoordinatorMessage>),
    /// A close frame: its code and reason.
    Close(u16, String),
    /// The connection ended without a close frame, or nothing came in time.
    Nothing,
}

/// One raw WebSocket connection to `/v1/workers/connect`.
pub struct RawWorker {
    stream: TcpStream,
    /// The id the coordinator's welcome named, once welcomed.
    pub id: Option<WorkerId>,
    /// Bytes read past the last frame.
    pending: Vec<u8>,
}

impl RawWorker {
    /// Opens the connection and completes the upgrade (panics if it is refused).
    pub fn connect(url: &str) -> Self {
        let addr = url.trim_start_matches("http://");
        let mut stream = TcpStream::connect(addr).expect("connect to the coordinator");
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("read timeout");
        let request = format!(
            "GET /v1/workers/connect HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Version: 13\r\nAuthorization: Bearer {WORKER_TOKEN}\r\n\
             {PROTOCOL_HEADER}: {PROTOCOL_VERSION}\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).expect("send upgrade");
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            stream.read_exact(&mut byte).expect("read upgrade answer");
            head.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&head);
        assert!(head.starts_with("HTTP/1.1 101"), "upgrade refused: {head}");
        Self {
            stream,
            id: None,
            pending: Vec::new(),
        }
    }

    /// A masked frame header for a client frame of `len` payload bytes (binary, final).
    pub fn header(len: u64) -> Vec<u8> {
        let mut out = vec![0x82];
        if len < 126 {
            out.push(0x80 | len as u8);
        } else if len <= u64::from(u16::MAX) {
            out.push(0x80 | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            out.push(0x80 | 127);
            out.extend_from_slice(&len.to_be_bytes());
        }
        // A zero mask leaves the payload as it is.
        out.extend_from_slice(&[0, 0, 0, 0]);
        out
    }

    /// Writes raw bytes; false once the coordinator has closed the connection.
    pub fn write_raw(&mut self, bytes: &[u8]) -> bool {
        self.stream.write_all(bytes).is_ok()
    }

    /// Sends one frame of messages under `worker`.
    pub fn send(&mut self, worker: WorkerId, messages: Vec<WorkerMessage>) -> bool {
        let payload = encode(&Frame { worker, messages });
        let mut bytes = Self::header(payload.len() as u64);
        bytes.extend_from_slice(&payload);
        self.write_raw(&bytes)
    }

    /// A hello as a stock worker sends it, with these slots and tasks.
    pub fn hello(name: &str, slots: u32, tasks: &[&str]) -> Hello {
        Hello {
            protocol: PROTOCOL_VERSION,
            name: name.to_owned(),
            slots,
            prefetch: 0,
            tasks: tasks.iter().map(|t| t.to_string()).collect(),
            labels: Default::default(),
            running: Vec::new(),
        }
    }

    /// Says `hello` (under the id `claimed`) and returns what came back first.
    pub fn say_hello(&mut self, claimed: WorkerId, hello: Hello) -> Received {
        self.send(claimed, vec![WorkerMessage::Hello(hello)]);
        let answer = self.receive(Duration::from_secs(10));
        if let Received::Frame(frame) = &answer {
            if matches!(
                frame.messages.first(),
                Some(CoordinatorMessage::Welcome { .. })
            ) {
                self.id = Some(frame.worker);
            }
        }
        answer
    }

    /// The next frame from the coordinator within `limit` (pings and heartbeats included).
    pub fn receive(&mut self, limit: Duration) -> Received {
        let deadline = Instant::now() + limit;
        loop {
            if let Some((opcode, payload)) = self.parse_frame() {
                match opcode {
                    0x2 => match decode(&payload) {
                        Ok(frame) => return Received::Frame(frame),
                        Err(e) => panic!("undecodable frame from the coordinator: {e}"),
                    },
                    0x8 => {
                        let code = payload
                            .get(..2)
                            .map_or(1005, |c| u16::from_be_bytes([c[0], c[1]]));
                        let reason = String::from_utf8_lossy(payload.get(2..).unwrap_or(&[]));
                        return Received::Close(code, reason.into_owned());
                    }
                    _ => continue,
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Received::Nothing;
            }
            let _ = self.stream.set_read_timeout(Some(left));
            let mut buf = [0u8; 64 * 1024];
            match self.stream.read(&mut buf) {
                Ok(0) | Err(_) => return Received::Nothing,
                Ok(n) => self.pending.extend_from_slice(&buf[..n]),
            }
        }
    }

    /// Takes one whole server frame (unmasked) off the read buffer, if there is one.
    fn parse_frame(&mut self) -> Option<(u8, Vec<u8>)> {
        let b = &self.pending;
        if b.len() < 2 {
            return None;
        }
        let (len, at) = match b[1] & 0x7f {
            126 if b.len() >= 4 => (u64::from(u16::from_be_bytes([b[2], b[3]])), 4),
            127 if b.len() >= 10 => {
                let mut be = [0u8; 8];
                be.copy_from_slice(&b[2..10]);
                (u64::from_be_bytes(be), 10)
            }
            126 | 127 => return None,
            n => (u64::from(n), 2),
        };
        let end = at + len as usize;
        if b.len() < end {
            return None;
        }
        let opcode = b[0] & 0x0f;
        let payload = b[at..end].to_vec();
        self.pending.drain(..end);
        Some((opcode, payload))
    }

    /// Assignments received within `limit`, waiting for at least one.
    pub fn assignments(&mut self, limit: Duration) -> Vec<Assignment> {
        let deadline = Instant::now() + limit;
        let mut out = Vec::new();
        while out.is_empty() && Instant::now() < deadline {
            match self.receive(deadline.saturating_duration_since(Instant::now())) {
                Received::Frame(frame) => {
                    out.extend(frame.messages.into_iter().filter_map(|m| match m {
                        CoordinatorMessage::Assign(a) => Some(a),
                        _ => None,
                    }))
                }
                Received::Close(..) | Received::Nothing => break,
            }
        }
        out
    }

    /// Answers an assignment with `result` as its partial result.
    pub fn answer(&mut self, assignment: &Assignment, result: &[u8]) -> bool {
        let id = self.id.expect("welcomed");
        let outcome = WorkerMessage::Outcome(ChunkOutcome {
            chunk: assignment.chunk,
            result: Outcome::Succeeded(bytes::Bytes::copy_from_slice(result)),
        });
        self.send(id, vec![outcome])
    }
}
