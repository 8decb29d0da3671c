//! One actor per connected worker: decodes its frames, forwards them to the coordinator, sends it
//! assignments, and watches its heartbeats.
//!
//! The session registers the worker on its hello and reports the end of the connection (closed,
//! broken, or silent past the heartbeat timeout) so the coordinator re-queues the worker's chunks.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix::prelude::*;
use actix_ws::{CloseCode, CloseReason, Message, ProtocolError};
use bytes::Bytes;
use muster_shared::ids::WorkerId;
use muster_shared::protocol::{
    batches, decode, encode, CoordinatorMessage, Frame, WorkerMessage, CLOSE_HEARTBEAT_TIMEOUT,
    CLOSE_REFUSED, CLOSE_VERSION_MISMATCH, PROTOCOL_VERSION,
};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::api::frame_limit::TooLarge;
use crate::coordinator::{Coordinator, FromWorker, RegisterWorker, WorkerDisconnected};
use crate::state::job::FailReason;

/// Payload bytes of assignments sent in one frame, about (one larger chunk goes alone).
const FRAME_PAYLOAD_BYTES: usize = 1 << 20;

/// What the writer task sends on the socket, in order.
#[derive(Debug)]
pub enum Outgoing {
    /// A frame of messages to encode and send.
    Frame(Frame<CoordinatorMessage>),
    /// An answer to a ping.
    Pong(Bytes),
    /// Close the connection with this reason; nothing is sent after it.
    Close(Option<CloseReason>),
}

/// Spawns the task that owns the socket's sending half and writes frames in order. Frames are
/// encoded here, one at a time, and after a large one the task steps aside so the connection
/// writes it out: the worker starts on the first chunks of a large batch while the rest are
/// still being encoded.
pub fn spawn_writer(mut session: actix_ws::Session) -> mpsc::UnboundedSender<Outgoing> {
    let (tx, mut rx) = mpsc::unbounded_channel::<Outgoing>();
    actix_rt::spawn(async move {
        let mut reason = None;
        while let Some(out) = rx.recv().await {
            let sent = match out {
                Outgoing::Frame(frame) => {
                    let bytes = encode(&frame);
                    let large = bytes.len() >= FRAME_PAYLOAD_BYTES / 4;
                    let sent = session.binary(bytes).await;
                    if large {
                        tokio::task::yield_now().await;
                    }
                    sent
                }
                Outgoing::Pong(bytes) => session.pong(&bytes).await,
                Outgoing::Close(r) => {
                    reason = r;
                    break;
                }
            };
            if sent.is_err() {
                return;
            }
        }
        let _ = session.close(reason).await;
    });
    tx
}

/// Closes with an application close code and a reason the worker will print.
pub fn close_reason(code: u16, text: &str) -> Option<CloseReason> {
    // Close reasons are limited to 123 bytes on the wire.
    let mut text = text.to_owned();
    while text.len() > 120 {
        text.pop();
    }
    Some(CloseReason {
        code: CloseCode::Other(code),
        description: Some(text),
    })
}

/// The session actor.
pub struct WorkerSession {
    serial: u64,
    address: String,
    coordinator: Addr<Coordinator>,
    out: mpsc::UnboundedSender<Outgoing>,
    heartbeat_timeout: Duration,
    /// Set once the hello is accepted.
    worker: Option<WorkerId>,
    last_heard: Instant,
    /// Why the session ended, reported to the coordinator when it stops.
    end: FailReason,
    /// The coordinator already dropped this session; report nothing.
    evicted: bool,
    /// Largest frame the worker may send.
    max_frame_bytes: usize,
    /// Set when a frame's header declared more than that: the connection ends with the reason.
    oversize: Arc<Mutex<Option<TooLarge>>>,
}

impl WorkerSession {
    /// A session for a fresh connection.
    pub fn new(
        serial: u64,
        address: String,
        coordinator: Addr<Coordinator>,
        out: mpsc::UnboundedSender<Outgoing>,
        heartbeat_timeout: Duration,
        max_frame_bytes: usize,
        oversize: Arc<Mutex<Option<TooLarge>>>,
    ) -> Self {
        Self {
            max_frame_bytes,
            oversize,
            serial,
            address,
            coordinator,
            out,
            heartbeat_timeout,
            worker: None,
            last_heard: Instant::now(),
            end: FailReason::WorkerLost,
            evicted: false,
        }
    }

    /// Sends messages in as few frames as their payloads allow: large assignments go a few per
    /// frame (about [`FRAME_PAYLOAD_BYTES`] each), so the worker starts on the first chunk while the
    /// others are still on the way.
    fn send(&self, worker: WorkerId, messages: Vec<CoordinatorMessage>) {
        for messages in batches(messages, FRAME_PAYLOAD_BYTES) {
            let _ = self.out.send(Outgoing::Frame(Frame { worker, messages }));
        }
    }

    fn close(&mut self, ctx: &mut Context<Self>, reason: Option<CloseReason>) {
        let _ = self.out.send(Outgoing::Close(reason));
        ctx.stop();
    }

    fn on_frame(&mut self, bytes: &[u8], ctx: &mut Context<Self>) {
        let frame: Frame<WorkerMessage> = match decode(bytes) {
            Ok(frame) => frame,
            Err(e) => {
                warn!(address = %self.address, error = %e, "closing worker connection");
                return self.close(ctx, close_reason(CLOSE_REFUSED, &e.to_string()));
            }
        };
        match self.worker {
            Some(id) if id == frame.worker => self.coordinator.do_send(FromWorker {
                id,
                serial: self.serial,
                messages: frame.messages,
            }),
            Some(id) => {
                warn!(worker = %id, claimed = %frame.worker, "frame names another worker");
                self.close(
                    ctx,
                    close_reason(CLOSE_REFUSED, "frame names another worker id"),
                );
            }
            None => self.on_hello(frame, ctx),
        }
    }

    fn on_hello(&mut self, frame: Frame<WorkerMessage>, ctx: &mut Context<Self>) {
        let mut messages = frame.messages.into_iter();
        let Some(WorkerMessage::Hello(hello)) = messages.next() else {
            return self.close(
                ctx,
                close_reason(CLOSE_REFUSED, "the first message must be a hello"),
            );
        };
        if hello.protocol != PROTOCOL_VERSION {
            let text = format!(
                "protocol version {} is not supported: this coordinator speaks version {PROTOCOL_VERSION}",
                hello.protocol
            );
            warn!(address = %self.address, "{text}");
            return self.close(ctx, close_reason(CLOSE_VERSION_MISMATCH, &text));
        }
        // The coordinator names the connection: an id the worker chose could be another's.
        let id = WorkerId::new();
        let rest: Vec<WorkerMessage> = messages.collect();
        let register = RegisterWorker {
            id,
            serial: self.serial,
            hello,
            address: self.address.clone(),
            session: ctx.address(),
        };
        // `wait` holds back further frames until the worker is registered.
        self.coordinator
            .send(register)
            .into_actor(self)
            .map(move |answer, act, ctx| match answer {
                Ok(Ok(interval)) => {
                    act.worker = Some(id);
                    act.send(
                        id,
                        vec![CoordinatorMessage::Welcome {
                            heartbeat_interval_ms: interval.as_millis() as u64,
                            max_frame_bytes: act.max_frame_bytes as u64,
                        }],
                    );
                    if !rest.is_empty() {
                        act.coordinator.do_send(FromWorker {
                            id,
                            serial: act.serial,
                            messages: rest,
                        });
                    }
                    act.start_heartbeat(ctx, interval);
                }
                Ok(Err(reason)) => {
                    warn!(worker = %id, %reason, "refused worker");
                    act.close(ctx, close_reason(CLOSE_REFUSED, &reason));
                }
                Err(_) => act.close(ctx, None),
            })
            .wait(ctx);
    }

    fn start_heartbeat(&mut self, ctx: &mut Context<Self>, interval: Duration) {
        ctx.run_interval(interval, |act, ctx| {
            let Some(id) = act.worker else { return };
            if act.last_heard.elapsed() > act.heartbeat_timeout {
                warn!(worker = %id, silent_ms = act.last_heard.elapsed().as_millis() as u64, "worker missed its heartbeats");
                act.end = FailReason::HeartbeatTimeout;
                act.close(ctx, close_reason(CLOSE_HEARTBEAT_TIMEOUT, "heartbeat timeout"));
                return;
            }
            act.send(id, vec![CoordinatorMessage::Heartbeat]);
        });
    }
}

impl Actor for WorkerSession {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        // A connection that never says hello is dropped after the heartbeat timeout.
        let timeout = self.heartbeat_timeout;
        ctx.run_later(timeout, |act, ctx| {
            if act.worker.is_none() {
                debug!(address = %act.address, "no hello; closing");
                act.close(ctx, close_reason(CLOSE_REFUSED, "no hello received"));
            }
        });
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        let _ = self.out.send(Outgoing::Close(None));
        if let (Some(id), false) = (self.worker, self.evicted) {
            info!(worker = %id, reason = %self.end, "worker connection ended");
            self.coordinator.do_send(WorkerDisconnected {
                id,
                serial: self.serial,
                reason: self.end.clone(),
            });
        }
    }
}

impl StreamHandler<Result<Message, ProtocolError>> for WorkerSession {
    fn handle(&mut self, msg: Result<Message, ProtocolError>, ctx: &mut Context<Self>) {
        self.last_heard = Instant::now();
        match msg {
            Ok(Message::Binary(bytes)) => self.on_frame(&bytes, ctx),
            Ok(Message::Ping(bytes)) => {
                let _ = self.out.send(Outgoing::Pong(bytes));
            }
            Ok(Message::Close(reason)) => {
                debug!(?reason, "worker closed the connection");
                ctx.stop();
            }
            Ok(Message::Pong(_) | Message::Nop) => {}
            Ok(Message::Text(_) | Message::Continuation(_)) => {
                self.close(
                    ctx,
                    close_reason(CLOSE_REFUSED, "only binary frames are spoken here"),
                );
            }
            Err(e) => {
                let oversize = self.oversize.lock().map(|mut o| o.take()).unwrap_or(None);
                if let Some(TooLarge { declared }) = oversize {
                    let text = format!(
                        "a frame of {declared} bytes is over this coordinator's limit of {} bytes",
                        self.max_frame_bytes
                    );
                    warn!(address = %self.address, worker = ?self.worker, "closing worker connection: {text}");
                    return self.close(ctx, close_reason(CLOSE_REFUSED, &text));
                }
                warn!(address = %self.address, error = %e, "worker connection error");
                ctx.stop();
            }
        }
    }

    fn finished(&mut self, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}

/// Send these messages to the worker in one frame.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Deliver(pub Vec<CoordinatorMessage>);

impl Handler<Deliver> for WorkerSession {
    type Result = ();

    fn handle(&mut self, msg: Deliver, _ctx: &mut Context<Self>) {
        if let Some(id) = self.worker {
            self.send(id, msg.0);
        }
    }
}

/// The coordinator dropped this session (replaced by a reconnect, or shutting down): close quietly.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Evict;

impl Handler<Evict> for WorkerSession {
    type Result = ();

    fn handle(&mut self, _msg: Evict, ctx: &mut Context<Self>) {
        self.evicted = true;
        self.close(ctx, None);
    }
}
