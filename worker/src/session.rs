//! One connection to a coordinator: upgrade, hello, then assignments in and outcomes out until the
//! connection drops or the worker has drained.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix_rt::net::TcpStream;
use actix_rt::time::{interval, sleep_until, Instant};
use actix_tls::connect::{ConnectError, ConnectInfo, Connection, Connector, Resolver};
use awc::error::WsClientError;
use awc::http::Uri;
use awc::ws;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use muster_shared::ids::WorkerId;
use muster_shared::protocol::{
    batches, decode_in_place, encode, Assignment, ChunkOutcome, ChunkRef, CoordinatorMessage,
    Failure, FailureClass, Frame, Hello, Outcome, WorkerMessage, CLOSE_REFUSED,
    CLOSE_VERSION_MISMATCH, MAX_FRAME_BYTES, MAX_PREFETCH_PER_SLOT, MESSAGE_OVERHEAD,
    PROTOCOL_HEADER, PROTOCOL_VERSION,
};
use tokio::sync::mpsc;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::daemon::WorkerError;
use crate::tasks::{Answer, Ask, TaskBody, TaskContext, TaskFn};
use crate::TaskError;
use crate::{Tasks, WorkerConfig};

/// Heartbeat interval used until the coordinator's welcome names one.
const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(1);
/// Chunks shorter than this on average are run several per blocking hand-off.
const SHORT_CHUNK: Duration = Duration::from_micros(200);
/// What a worker may send before the coordinator's welcome names its limit: enough for a hello.
const HELLO_FRAME_BYTES: usize = 64 * 1024;
/// Most chunks one blocking hand-off runs.
const MAX_CHUNKS_PER_HANDOFF: usize = 128;
/// Queued work an adaptive prefetch aims to hold per slot.
const PREFETCH_QUEUE_TIME: Duration = Duration::from_millis(5);
/// Longest an outcome is held back to share a frame with others.
const HOLD_OUTCOMES_FOR: Duration = Duration::from_millis(1);
/// Most outcomes held back before a frame goes anyway.
const MAX_HELD_OUTCOMES: usize = 256;
/// A chunk of a built-in task at most this large runs on the session's thread when a slot is free
/// (a sum of this many bytes takes a few microseconds, a sort or a word count some tens).
const INLINE_MAX_BYTES: usize = 4096;
/// How long the coordinator has to answer a hello.
const WELCOME_TIMEOUT: Duration = Duration::from_secs(10);

/// How a session ended.
pub(crate) enum SessionEnd {
    /// The connection failed or dropped: reconnect. `welcomed` says whether it got as far as a
    /// welcome, which resets the reconnect backoff.
    Disconnected { reason: String, welcomed: bool },
    /// Reconnecting cannot help.
    Fatal(WorkerError),
    /// Shutdown finished.
    Drained,
}

type Socket = actix_codec::Framed<awc::BoxedSocket, ws::Codec>;

/// Connects with `TCP_NODELAY` set: a worker's frames are often small and back to back (an
/// outcome, then a capacity change), and Nagle's algorithm held the second one back until the
/// coordinator acknowledged the first, which a delayed acknowledgement made 40 ms.
fn nodelay_connector() -> impl actix_service::Service<
    ConnectInfo<Uri>,
    Response = Connection<Uri, TcpStream>,
    Error = ConnectError,
> + Clone {
    use actix_service::ServiceExt;
    Connector::new(Resolver::default())
        .service()
        .map(|connection: Connection<Uri, TcpStream>| {
            if let Err(e) = connection.io_ref().set_nodelay(true) {
                warn!(error = %e, "cannot set TCP_NODELAY on the connection to the coordinator");
            }
            connection
        })
}

/// State that outlives one connection.
pub(crate) struct Worker {
    /// The id the coordinator gave the current connection (named in its welcome).
    pub(crate) id: WorkerId,
    /// The largest frame the coordinator accepts from this worker (named in its welcome).
    max_frame_bytes: usize,
    /// True once the current connection is welcomed: before, frames could carry no id the
    /// coordinator knows, so only the hello is sent.
    welcomed: bool,
    pub(crate) config: WorkerConfig,
    tasks: Tasks,
    /// Attempts running now, with their cancel flags.
    running: HashMap<ChunkRef, Arc<AtomicBool>>,
    /// Running attempts waiting for sub-jobs: their slots are free meanwhile.
    waiting: HashSet<ChunkRef>,
    /// Asks of running attempts sent to the coordinator and not answered yet, by request number.
    pending: HashMap<u64, Pending>,
    /// The next request number.
    next_request: u64,
    /// Attempts received beyond the slots, started in order as slots free.
    queued: VecDeque<Assignment>,
    /// Finished outcomes not yet sent (the connection dropped); sent after the next hello.
    outbox: Vec<ChunkOutcome>,
    /// Output of running attempts, sent before anything else they report.
    live: Vec<WorkerMessage>,
    outcomes_tx: mpsc::UnboundedSender<Done>,
    outcomes_rx: mpsc::UnboundedReceiver<Done>,
    /// Blocking hand-offs in flight: each holds one slot while it runs its chunks.
    busy: usize,
    /// Moving average of how long a chunk runs, for the adaptive prefetch.
    run_time: Option<Duration>,
    pub(crate) shutdown: watch::Receiver<bool>,
    /// Whom to trust over TLS, made at the first connection.
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl Worker {
    pub(crate) fn new(config: WorkerConfig, tasks: Tasks, shutdown: watch::Receiver<bool>) -> Self {
        let (outcomes_tx, outcomes_rx) = mpsc::unbounded_channel();
        Self {
            id: WorkerId::new(),
            max_frame_bytes: HELLO_FRAME_BYTES,
            welcomed: false,
            config,
            tasks,
            running: HashMap::new(),
            waiting: HashSet::new(),
            pending: HashMap::new(),
            next_request: 0,
            queued: VecDeque::new(),
            outbox: Vec::new(),
            live: Vec::new(),
            outcomes_tx,
            outcomes_rx,
            busy: 0,
            run_time: None,
            shutdown,
            tls: None,
        }
    }

    pub(crate) fn shutting_down(&self) -> bool {
        *self.shutdown.borrow()
    }

    /// Runs one connection to `base` until it ends.
    pub(crate) async fn session(&mut self, base: &str) -> SessionEnd {
        self.forget_connection();
        let mut socket = match self.connect(base).await {
            Ok(socket) => socket,
            Err(end) => return end,
        };
        // Chunks still running when the connection drops go on running: their outcomes are sent
        // after the next hello (the coordinator has re-queued them and will ignore them, but their
        // slots stay honestly busy until then).
        let end = self.serve(&mut socket, base).await;
        // Queued chunks never started; the coordinator re-queues them with the connection.
        self.queued.clear();
        // Asks die with the connection: their tasks learn it, and their attempts' outcomes are
        // no longer wanted (the coordinator re-queued them).
        for request in self.pending.keys().copied().collect::<Vec<_>>() {
            self.answer(request, None);
        }
        if matches!(end, SessionEnd::Drained) {
            close_handshake(&mut socket).await;
        }
        let _ = socket.close().await;
        end
    }

    async fn connect(&mut self, base: &str) -> Result<Socket, SessionEnd> {
        let url = format!("{}/v1/workers/connect", base.trim_end_matches('/'));
        let tls = match &self.tls {
            Some(tls) => tls.clone(),
            None => {
                let tls = crate::tls::client_config(self.config.ca_cert.as_deref())
                    .map_err(|e| SessionEnd::Fatal(WorkerError::Tls(e)))?;
                self.tls.insert(tls).clone()
            }
        };
        let client = awc::Client::builder()
            .connector(
                awc::Connector::new()
                    .connector(nodelay_connector())
                    .rustls_0_23(tls),
            )
            .timeout(Duration::from_secs(10))
            .finish();
        let mut request = client
            .ws(&url)
            .set_header(PROTOCOL_HEADER, PROTOCOL_VERSION.to_string())
            .max_frame_size(MAX_FRAME_BYTES);
        if let Some(token) = &self.config.token {
            request = request.bearer_auth(token);
        }
        let (_, mut socket) = request.connect().await.map_err(|e| match e {
            WsClientError::InvalidResponseStatus(status) if status == 401 || status == 403 => {
                SessionEnd::Fatal(WorkerError::Unauthorized {
                    url: url.clone(),
                    status: status.as_u16(),
                })
            }
            other => SessionEnd::Disconnected {
                reason: format!("cannot connect to {url}: {other}"),
                welcomed: false,
            },
        })?;
        let hello = WorkerMessage::Hello(Hello {
            protocol: PROTOCOL_VERSION,
            name: self.config.name.clone(),
            slots: self.config.slots,
            prefetch: self.config.prefetch,
            tasks: self.tasks.names(),
            labels: self.config.labels.clone(),
            running: self.running.keys().copied().collect(),
        });
        self.send(&mut socket, vec![hello])
            .await
            .map_err(|reason| SessionEnd::Disconnected {
                reason,
                welcomed: false,
            })?;
        Ok(socket)
    }

    /// Sends messages in frames within the coordinator's limit; a result too large for any frame
    /// is sent as its chunk's permanent failure instead (another worker's would be as large).
    /// Before the welcome only a hello goes out: outcomes wait in the outbox (sent once the
    /// welcome comes), the rest is dropped.
    async fn send(
        &mut self,
        socket: &mut Socket,
        mut messages: Vec<WorkerMessage>,
    ) -> Result<(), String> {
        if !self.welcomed {
            let (hello, rest): (Vec<_>, Vec<_>) = messages
                .into_iter()
                .partition(|m| matches!(m, WorkerMessage::Hello(_)));
            self.outbox.extend(rest.into_iter().filter_map(|m| match m {
                WorkerMessage::Outcome(o) => Some(o),
                _ => None,
            }));
            messages = hello;
            if messages.is_empty() {
                return Ok(());
            }
        }
        let limit = self.max_frame_bytes;
        let messages = messages.into_iter().map(|m| fit(m, limit)).collect();
        for messages in batches(messages, limit) {
            let frame = encode(&Frame {
                worker: self.id,
                messages,
            });
            socket
                .send(ws::Message::Binary(frame))
                .await
                .map_err(|e| format!("cannot send to coordinator: {e}"))?;
        }
        Ok(())
    }

    async fn serve(&mut self, socket: &mut Socket, base: &str) -> SessionEnd {
        let mut heartbeat_every = DEFAULT_HEARTBEAT;
        let mut ticker = interval(heartbeat_every);
        let mut last_heard = Instant::now();
        let welcome_deadline = Instant::now() + WELCOME_TIMEOUT;
        let mut drain_deadline: Option<Instant> = None;
        // Outcomes held back briefly while plenty of queued work remains, so that tiny chunks are
        // reported several to a frame; `flush_at` is when they must go at the latest.
        let mut held: Vec<ChunkOutcome> = Vec::new();
        let mut flush_at: Option<Instant> = None;
        let disconnected = |reason: String, welcomed| SessionEnd::Disconnected { reason, welcomed };
        loop {
            if drain_deadline.is_some()
                && self.running.is_empty()
                && self.queued.is_empty()
                && self.outbox.is_empty()
            {
                info!(worker = %self.id, "drained: no chunks left");
                return SessionEnd::Drained;
            }
            let far = Instant::now() + Duration::from_secs(3600);
            let deadline = drain_deadline.unwrap_or(far);
            let mut shutdown = self.shutdown.clone();
            tokio::select! {
                frame = socket.next() => {
                    last_heard = Instant::now();
                    let frame = match frame {
                        None => return disconnected("coordinator closed the connection".into(), self.welcomed),
                        Some(Err(e)) => return disconnected(format!("connection error: {e}"), self.welcomed),
                        Some(Ok(frame)) => frame,
                    };
                    match frame {
                        ws::Frame::Binary(bytes) => {
                            let mut replies = match self.handle(&bytes, &mut heartbeat_every) {
                                Ok(replies) => replies,
                                Err(reason) => return disconnected(reason, self.welcomed),
                            };
                            // Chunks run inline tell how short chunks are, too.
                            if let Some(prefetch) = self.grow_prefetch() {
                                replies.push(WorkerMessage::Capacity { prefetch });
                            }
                            if heartbeat_every != ticker.period() {
                                ticker = interval(heartbeat_every);
                            }
                            if self.welcomed && !self.outbox.is_empty() {
                                let backlog = std::mem::take(&mut self.outbox);
                                info!(count = backlog.len(), "sending outcomes held while disconnected");
                                let msgs = backlog.into_iter().map(WorkerMessage::Outcome).collect();
                                if let Err(reason) = self.send(socket, msgs).await {
                                    return disconnected(reason, self.welcomed);
                                }
                            }
                            if !replies.is_empty() {
                                if let Err(reason) = self.send(socket, replies).await {
                                    return disconnected(reason, self.welcomed);
                                }
                            }
                        }
                        ws::Frame::Ping(payload) => {
                            if socket.send(ws::Message::Pong(payload)).await.is_err() {
                                return disconnected("cannot answer ping".into(), self.welcomed);
                            }
                        }
                        ws::Frame::Close(reason) => {
                            return self.closed_by_coordinator(reason, base, self.welcomed);
                        }
                        ws::Frame::Pong(_) | ws::Frame::Text(_) | ws::Frame::Continuation(_) => {}
                    }
                }
                Some(done) = self.outcomes_rx.recv() => {
                    let mut batch = Vec::new();
                    self.collect(done, &mut batch);
                    while let Ok(more) = self.outcomes_rx.try_recv() {
                        self.collect(more, &mut batch);
                    }
                    for refusal in self.start_queued() {
                        batch.push(refusal);
                    }
                    // Output goes at once, and before the outcomes of its attempts.
                    let live = std::mem::take(&mut self.live);
                    if !live.is_empty() {
                        if let Err(reason) = self.send(socket, live).await {
                            return disconnected(reason, self.welcomed);
                        }
                    }
                    if let Some(prefetch) = self.grow_prefetch() {
                        if let Err(reason) = self.send(socket, vec![WorkerMessage::Capacity { prefetch }]).await {
                            return disconnected(reason, self.welcomed);
                        }
                    }
                    held.extend(batch);
                    if held.is_empty() {
                        continue;
                    }
                    let plenty_queued = self.queued.len() > self.config.prefetch as usize / 2;
                    if plenty_queued && held.len() < MAX_HELD_OUTCOMES && drain_deadline.is_none() {
                        flush_at.get_or_insert_with(|| Instant::now() + HOLD_OUTCOMES_FOR);
                        continue;
                    }
                    flush_at = None;
                    if let Err(reason) = self.send_outcomes(socket, &mut held).await {
                        return disconnected(reason, self.welcomed);
                    }
                }
                _ = sleep_until(flush_at.unwrap_or(far)), if flush_at.is_some() => {
                    flush_at = None;
                    if let Err(reason) = self.send_outcomes(socket, &mut held).await {
                        return disconnected(reason, self.welcomed);
                    }
                }
                _ = ticker.tick() => {
                    if !self.welcomed && Instant::now() > welcome_deadline {
                        return disconnected("coordinator did not answer the hello".into(), false);
                    }
                    if last_heard.elapsed() > self.config.coordinator_timeout {
                        return disconnected("coordinator went silent".into(), self.welcomed);
                    }
                    if let Err(reason) = self.send(socket, vec![WorkerMessage::Heartbeat]).await {
                        return disconnected(reason, self.welcomed);
                    }
                }
                _ = shutdown.wait_for(|stop| *stop), if drain_deadline.is_none() => {
                    info!(worker = %self.id, running = self.running.len(), "draining: taking no new chunks");
                    drain_deadline = Some(Instant::now() + self.config.drain_timeout);
                    let mut msgs = vec![WorkerMessage::Draining];
                    // Chunks not started yet go back at once.
                    msgs.extend(self.queued.drain(..).map(|a| {
                        WorkerMessage::Outcome(failure(a.chunk, FailureClass::HandedBack, "worker shut down before the chunk started"))
                    }));
                    if let Err(reason) = self.send(socket, msgs).await {
                        warn!(%reason, "could not announce draining");
                        return SessionEnd::Drained;
                    }
                }
                _ = sleep_until(deadline), if drain_deadline.is_some() => {
                    let handed: Vec<WorkerMessage> = self.running.drain().map(|(chunk, flag)| {
                        flag.store(true, Ordering::Relaxed);
                        WorkerMessage::Outcome(failure(chunk, FailureClass::HandedBack, "worker shut down before the chunk finished"))
                    }).collect();
                    warn!(count = handed.len(), "drain timeout: handing back unfinished chunks");
                    let _ = self.send(socket, handed).await;
                    return SessionEnd::Drained;
                }
            }
        }
    }

    /// With an adaptive prefetch, holds enough queued chunks for about [`PREFETCH_QUEUE_TIME`] of
    /// work per slot when chunks turn out to be short; returns the new prefetch to announce. It
    /// only grows, so the coordinator never has to take chunks back.
    fn grow_prefetch(&mut self) -> Option<u32> {
        if !self.config.adaptive_prefetch {
            return None;
        }
        let avg = self.run_time?.max(Duration::from_micros(1));
        let per_slot = (PREFETCH_QUEUE_TIME.as_nanos() / avg.as_nanos())
            .min(MAX_PREFETCH_PER_SLOT as u128) as u32;
        let wanted = per_slot.saturating_mul(self.config.slots);
        // Announce only clear growth, so a few fast chunks do not cause a message per outcome.
        if wanted >= self.config.prefetch.saturating_mul(2) {
            info!(
                prefetch = wanted,
                avg_us = avg.as_micros() as u64,
                "short chunks: holding more queued"
            );
            self.config.prefetch = wanted;
            return Some(wanted);
        }
        None
    }

    /// Sends held outcomes in one frame; on failure they wait in the outbox for the next session.
    async fn send_outcomes(
        &mut self,
        socket: &mut Socket,
        held: &mut Vec<ChunkOutcome>,
    ) -> Result<(), String> {
        let batch = std::mem::take(held);
        let msgs: Vec<WorkerMessage> = batch.iter().cloned().map(WorkerMessage::Outcome).collect();
        let sent = self.send(socket, msgs).await;
        if sent.is_err() {
            self.outbox.extend(batch);
        }
        sent
    }

    /// The welcome's limit is forgotten with its connection.
    fn forget_connection(&mut self) {
        self.max_frame_bytes = HELLO_FRAME_BYTES;
        self.welcomed = false;
    }

    fn closed_by_coordinator(
        &self,
        reason: Option<ws::CloseReason>,
        base: &str,
        welcomed: bool,
    ) -> SessionEnd {
        let code: u16 = reason.as_ref().map_or(1000, |r| r.code.into());
        let text = reason
            .and_then(|r| r.description)
            .unwrap_or_else(|| "no reason given".into());
        if code == CLOSE_VERSION_MISMATCH || code == CLOSE_REFUSED {
            return SessionEnd::Fatal(WorkerError::Refused {
                url: base.to_owned(),
                reason: text,
            });
        }
        SessionEnd::Disconnected {
            reason: format!("coordinator closed the connection: {text}"),
            welcomed,
        }
    }

    /// Takes a report of a blocking thread: a freed slot, or an outcome. Outcomes of attempts that
    /// were cancelled meanwhile are dropped: nobody wants them.
    fn collect(&mut self, done: Done, batch: &mut Vec<ChunkOutcome>) {
        let (outcome, took) = match done {
            Done::SlotFree => {
                self.busy = self.busy.saturating_sub(1);
                return;
            }
            Done::Outcome(outcome, took) => (outcome, took),
            Done::Output(chunk, text) => {
                if self.running.contains_key(&chunk) {
                    self.live.push(WorkerMessage::Output { chunk, text });
                }
                return;
            }
            Done::Ask { chunk, ask, reply } => {
                self.ask(chunk, ask, reply);
                return;
            }
        };
        self.note_run_time(took);
        if self.running.remove(&outcome.chunk).is_some() {
            batch.push(outcome);
        } else {
            debug!(chunk = %outcome.chunk, "dropped outcome of a cancelled attempt");
        }
    }

    /// Sends a running attempt's ask to the coordinator (with the output, ahead of outcomes).
    /// A wait frees the attempt's slot until its answer comes.
    fn ask(
        &mut self,
        chunk: ChunkRef,
        ask: Ask,
        reply: Option<tokio::sync::oneshot::Sender<Answer>>,
    ) {
        if !self.running.contains_key(&chunk) {
            // The attempt was cancelled meanwhile: dropping `reply` tells the task.
            return;
        }
        let request = self.next_request;
        self.next_request += 1;
        let waits = matches!(ask, Ask::Await { .. });
        self.live.push(match ask {
            Ask::Submit { key, body } => WorkerMessage::SubmitJob {
                request,
                parent: chunk,
                key,
                body,
            },
            Ask::Await { jobs } => WorkerMessage::AwaitJobs {
                request,
                parent: chunk,
                jobs,
            },
            Ask::Cancel { job } => WorkerMessage::CancelJob { parent: chunk, job },
        });
        if let Some(reply) = reply {
            if waits && self.waiting.insert(chunk) {
                self.busy = self.busy.saturating_sub(1);
            }
            self.pending.insert(
                request,
                Pending {
                    chunk,
                    reply,
                    waits,
                },
            );
        }
    }

    /// Hands an ask its answer (`None`: it will never come); a waiting attempt takes its slot
    /// back, even beyond the slots for a moment: its sub-jobs are done, so it will end soon.
    fn answer(&mut self, request: u64, answer: Option<Answer>) {
        let Some(pending) = self.pending.remove(&request) else {
            return;
        };
        if pending.waits && self.waiting.remove(&pending.chunk) {
            self.busy += 1;
        }
        if let Some(answer) = answer {
            let _ = pending.reply.send(answer);
        }
    }

    /// Drops the asks of an attempt that was cancelled.
    fn forget_asks(&mut self, chunk: ChunkRef) {
        let requests: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| p.chunk == chunk)
            .map(|(r, _)| *r)
            .collect();
        for request in requests {
            self.answer(request, None);
        }
    }

    /// Adds a chunk's run time to the moving average.
    fn note_run_time(&mut self, took: Duration) {
        self.run_time = Some(match self.run_time {
            None => took,
            Some(avg) => (avg * 7 + took) / 8,
        });
    }

    /// Handles one frame from the coordinator; returns immediate replies.
    fn handle(
        &mut self,
        bytes: &Bytes,
        heartbeat_every: &mut Duration,
    ) -> Result<Vec<WorkerMessage>, String> {
        let frame = decode_in_place(bytes).map_err(|e| e.to_string())?;
        if !self.welcomed {
            // The welcome's frame names the id the coordinator gave this connection.
            self.id = frame.worker;
        } else if frame.worker != self.id {
            return Err(format!(
                "frame addressed to worker {} reached worker {}",
                frame.worker, self.id
            ));
        }
        let mut replies = Vec::new();
        for message in frame.messages {
            match message {
                CoordinatorMessage::Welcome {
                    heartbeat_interval_ms,
                    max_frame_bytes,
                } => {
                    self.welcomed = true;
                    self.max_frame_bytes = usize::try_from(max_frame_bytes).unwrap_or(usize::MAX);
                    *heartbeat_every = Duration::from_millis(heartbeat_interval_ms.max(10));
                    info!(worker = %self.id, name = %self.config.name, slots = self.config.slots, "registered with coordinator");
                }
                CoordinatorMessage::Assign(assignment) => {
                    if let Some(refusal) = self.start(assignment) {
                        replies.push(WorkerMessage::Outcome(refusal));
                    }
                }
                CoordinatorMessage::Cancel(chunk) => {
                    self.forget_asks(chunk);
                    if let Some(flag) = self.running.remove(&chunk) {
                        flag.store(true, Ordering::Relaxed);
                        info!(job_id = %chunk.job, chunk = chunk.chunk.0, attempt = chunk.attempt.0, "cancelled chunk");
                        replies.extend(self.start_queued().into_iter().map(WorkerMessage::Outcome));
                    } else if let Some(at) = self.queued.iter().position(|a| a.chunk == chunk) {
                        self.queued.remove(at);
                        info!(job_id = %chunk.job, chunk = chunk.chunk.0, attempt = chunk.attempt.0, "cancelled chunk before it started");
                    }
                }
                CoordinatorMessage::Heartbeat => {}
                CoordinatorMessage::Submitted { request, result } => {
                    self.answer(request, Some(Answer::Submitted(result)));
                }
                CoordinatorMessage::JobsEnded { request, result } => {
                    self.answer(request, Some(Answer::Ended(result)));
                    // Its slot is back: queued chunks wait for the next free one.
                }
            }
        }
        Ok(replies)
    }

    /// Starts queued attempts while slots are free; returns failures to report at once. When
    /// chunks are short, one slot takes several queued chunks in a single blocking hand-off.
    fn start_queued(&mut self) -> Vec<ChunkOutcome> {
        let mut refusals = Vec::new();
        let slots = self.config.slots as usize;
        while self.busy < slots && !self.queued.is_empty() {
            let short = self.run_time.is_some_and(|t| t < SHORT_CHUNK);
            let share = self.queued.len().div_ceil(slots - self.busy);
            let take = if short {
                share.min(MAX_CHUNKS_PER_HANDOFF)
            } else {
                1
            };
            let batch: Vec<Assignment> = self.queued.drain(..take).collect();
            refusals.extend(self.launch(batch));
        }
        refusals
    }

    /// Runs an attempt now if a slot is free, queues it if the prefetch allows, or refuses it;
    /// returns an outcome to send at once (a refusal, or the result of a chunk run inline).
    fn start(&mut self, assignment: Assignment) -> Option<ChunkOutcome> {
        if self.shutting_down() {
            return Some(failure(
                assignment.chunk,
                FailureClass::HandedBack,
                "worker is shutting down",
            ));
        }
        if self.busy < self.config.slots as usize {
            if assignment.input.len() <= INLINE_MAX_BYTES && self.tasks.is_bounded(&assignment.task)
            {
                if let Some(f) = self.tasks.get_blocking(&assignment.task).cloned() {
                    return Some(self.run_inline(assignment, f));
                }
            }
            return self.launch(vec![assignment]).pop();
        }
        // The coordinator counts a chunk as outstanding until it hears its outcome; counting the
        // same way here (a finished chunk whose slot is not yet marked free no longer counts)
        // means an assignment that crossed an outcome on the wire is never refused.
        let outstanding = self.running.len() + self.queued.len() - self.waiting.len();
        if outstanding < (self.config.slots + self.config.prefetch) as usize {
            self.queued.push_back(assignment);
            return None;
        }
        Some(failure(
            assignment.chunk,
            FailureClass::HandedBack,
            "worker has no free slot",
        ))
    }

    /// Runs attempts one after another on one blocking thread (one slot); returns failures to
    /// send at once for those it cannot run.
    fn launch(&mut self, assignments: Vec<Assignment>) -> Vec<ChunkOutcome> {
        let mut refusals = Vec::new();
        let mut work = Vec::with_capacity(assignments.len());
        for Assignment { chunk, task, input } in assignments {
            let Some(body) = self.tasks.get(&task) else {
                refusals.push(failure(
                    chunk,
                    FailureClass::UnknownTask,
                    &format!("worker does not know task `{task}`"),
                ));
                continue;
            };
            debug!(job_id = %chunk.job, chunk = chunk.chunk.0, attempt = chunk.attempt.0, %task, "running chunk");
            let flag = Arc::new(AtomicBool::new(false));
            self.running.insert(chunk, flag.clone());
            let ctx = TaskContext::new(chunk, flag, Some(self.outcomes_tx.clone()));
            match body {
                TaskBody::Blocking(f) => work.push((ctx, task, f, input)),
                TaskBody::Async(f) => self.launch_async(ctx, task, f, input),
            }
        }
        if work.is_empty() {
            return refusals;
        }
        self.busy += 1;
        let tx = self.outcomes_tx.clone();
        // Detached: the thread reports through the channel, and a freed slot last.
        drop(tokio::task::spawn_blocking(move || {
            for (ctx, task, f, input) in work {
                if ctx.is_cancelled() {
                    continue;
                }
                let started = std::time::Instant::now();
                let outcome = run_attempt(&ctx, &task, &f, &input);
                let _ = tx.send(Done::Outcome(outcome, started.elapsed()));
            }
            let _ = tx.send(Done::SlotFree);
        }));
        refusals
    }

    /// Runs an attempt of an `async` task on the session's own thread; it holds a slot until it
    /// ends (but not while it waits for sub-jobs).
    fn launch_async(
        &mut self,
        ctx: TaskContext,
        task: String,
        f: crate::tasks::AsyncTaskFn,
        input: Bytes,
    ) {
        use futures_util::FutureExt;
        self.busy += 1;
        let tx = self.outcomes_tx.clone();
        actix_rt::spawn(async move {
            let started = std::time::Instant::now();
            let chunk = ctx.chunk();
            let result = std::panic::AssertUnwindSafe(f(ctx, input))
                .catch_unwind()
                .await
                .unwrap_or_else(|panic| Err(panicked(&task, panic)));
            let _ = tx.send(Done::Outcome(outcome_of(chunk, result), started.elapsed()));
            let _ = tx.send(Done::SlotFree);
        });
    }

    /// Runs a small chunk of a built-in task on the session's own thread: it takes microseconds,
    /// less than handing it to a blocking thread and hearing back.
    fn run_inline(&mut self, assignment: Assignment, f: TaskFn) -> ChunkOutcome {
        let Assignment { chunk, task, input } = assignment;
        debug!(job_id = %chunk.job, chunk = chunk.chunk.0, attempt = chunk.attempt.0, %task, "running small chunk inline");
        let ctx = TaskContext::new(chunk, Arc::new(AtomicBool::new(false)), None);
        let started = std::time::Instant::now();
        let outcome = run_attempt(&ctx, &task, &f, &input);
        self.note_run_time(started.elapsed());
        outcome
    }
}

/// Runs one attempt, a panic included, and words its outcome.
fn run_attempt(ctx: &TaskContext, task: &str, f: &TaskFn, input: &[u8]) -> ChunkOutcome {
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(ctx, input)))
        .unwrap_or_else(|panic| Err(panicked(task, panic)));
    outcome_of(ctx.chunk(), result)
}

/// A task's panic as its retryable error.
fn panicked(task: &str, panic: Box<dyn std::any::Any + Send>) -> TaskError {
    let what = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_default();
    TaskError::retryable(format!("task `{task}` panicked: {what}"))
}

/// What a task returned, as its attempt's outcome.
fn outcome_of(chunk: ChunkRef, result: Result<Bytes, TaskError>) -> ChunkOutcome {
    let result = match result {
        Ok(output) => Outcome::Succeeded(output),
        Err(e) => Outcome::Failed(Failure {
            class: if e.permanent {
                FailureClass::Permanent
            } else {
                FailureClass::TaskError
            },
            message: e.message,
        }),
    };
    ChunkOutcome { chunk, result }
}

/// An ask waiting for its answer.
struct Pending {
    /// The attempt that asked.
    chunk: ChunkRef,
    /// Where the answer goes.
    reply: tokio::sync::oneshot::Sender<Answer>,
    /// True for a wait: the attempt's slot is free until the answer.
    waits: bool,
}

/// What a blocking thread reports to the session loop.
pub enum Done {
    /// One attempt ended, after running this long.
    Outcome(ChunkOutcome, Duration),
    /// The hand-off finished: its slot is free.
    SlotFree,
    /// A running attempt printed this.
    Output(ChunkRef, String),
    /// A running attempt asks the coordinator (see [`crate::tasks::Cluster`]).
    Ask {
        /// The attempt.
        chunk: ChunkRef,
        /// What it asks.
        ask: Ask,
        /// Where the answer goes (none for a cancel).
        reply: Option<tokio::sync::oneshot::Sender<Answer>>,
    },
}

/// Sends a close frame and waits (briefly) for the coordinator's: once it answers, it has handled
/// every frame sent before, so the last outcomes of a draining worker are not lost to a reset.
async fn close_handshake(socket: &mut Socket) {
    const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
    let reason = ws::CloseReason {
        code: ws::CloseCode::Normal,
        description: Some("worker shut down".into()),
    };
    if socket.send(ws::Message::Close(Some(reason))).await.is_err() {
        return;
    }
    let answered = async {
        while let Some(Ok(frame)) = socket.next().await {
            if matches!(frame, ws::Frame::Close(_)) {
                break;
            }
        }
    };
    if actix_rt::time::timeout(CLOSE_TIMEOUT, answered)
        .await
        .is_err()
    {
        warn!("coordinator did not answer the close frame");
    }
}

fn failure(chunk: ChunkRef, class: FailureClass, message: &str) -> ChunkOutcome {
    ChunkOutcome {
        chunk,
        result: Outcome::Failed(Failure {
            class,
            message: message.to_owned(),
        }),
    }
}

/// `message`, or, for a result too large for a frame of `limit` bytes, its chunk's permanent
/// failure saying so.
fn fit(message: WorkerMessage, limit: usize) -> WorkerMessage {
    match message {
        WorkerMessage::Outcome(ChunkOutcome {
            chunk,
            result: Outcome::Succeeded(partial),
        }) if partial.len() + 2 * MESSAGE_OVERHEAD > limit => {
            warn!(job_id = %chunk.job, chunk = chunk.chunk.0, attempt = chunk.attempt.0, bytes = partial.len(), limit, "result too large to send");
            WorkerMessage::Outcome(ChunkOutcome {
                chunk,
                result: Outcome::Failed(Failure {
                    class: FailureClass::Permanent,
                    message: format!(
                        "the chunk's result of {} bytes is over the coordinator's frame limit of {limit} bytes: use more, smaller chunks",
                        partial.len()
                    ),
                }),
            })
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn worker() -> Worker {
        let (_tx, rx) = watch::channel(false);
        Worker::new(
            WorkerConfig::new(vec!["http://x".into()]),
            Tasks::builtin(),
            rx,
        )
    }

    #[test]
    fn a_version_refusal_is_fatal_and_keeps_the_coordinators_reason() {
        let reason = ws::CloseReason {
            code: ws::CloseCode::Other(CLOSE_VERSION_MISMATCH),
            description: Some("protocol version 2 is not supported".into()),
        };
        match worker().closed_by_coordinator(Some(reason), "http://c", true) {
            SessionEnd::Fatal(e) => assert!(
                e.to_string()
                    .contains("protocol version 2 is not supported"),
                "{e}"
            ),
            _ => panic!("a version mismatch must stop the worker"),
        }
    }

    #[test]
    fn short_chunks_grow_the_prefetch_once_and_only_when_adaptive() {
        let mut w = worker();
        w.config.slots = 2;
        w.config.prefetch = 8;
        w.run_time = Some(Duration::from_micros(50));
        assert_eq!(w.grow_prefetch(), Some(200));
        assert_eq!(
            w.grow_prefetch(),
            None,
            "no second announcement without further growth"
        );
        let mut slow = worker();
        slow.run_time = Some(Duration::from_millis(20));
        assert_eq!(slow.grow_prefetch(), None);
        let mut fixed = worker();
        fixed.config.adaptive_prefetch = false;
        fixed.run_time = Some(Duration::from_micros(50));
        assert_eq!(fixed.grow_prefetch(), None);
    }

    #[test]
    fn an_assignment_crossing_an_outcome_is_queued_not_refused() {
        let mut w = worker();
        w.config.slots = 1;
        w.config.prefetch = 1;
        // The only slot's chunk has reported, but its thread has not yet marked the slot free.
        w.busy = 1;
        let assignment = |n| Assignment {
            chunk: ChunkRef {
                job: muster_shared::ids::JobId::new(),
                chunk: muster_shared::ids::ChunkIndex(n),
                attempt: muster_shared::ids::Attempt(1),
            },
            task: "sum".into(),
            input: Bytes::from_static(b"[1]"),
        };
        assert!(w.start(assignment(0)).is_none());
        assert!(w.start(assignment(1)).is_none());
        assert!(
            w.start(assignment(2)).is_some(),
            "past slots + prefetch outstanding, a chunk is handed back"
        );
    }

    fn assignment(task: &str, input: Vec<u8>) -> Assignment {
        Assignment {
            chunk: ChunkRef {
                job: muster_shared::ids::JobId::new(),
                chunk: muster_shared::ids::ChunkIndex(0),
                attempt: muster_shared::ids::Attempt(1),
            },
            task: task.into(),
            input: Bytes::from(input),
        }
    }

    #[actix_rt::test]
    async fn only_small_chunks_of_built_in_tasks_run_inline() {
        let mut w = worker();
        let small = w.start(assignment("sum", b"[1, 2, 3]".to_vec()));
        match small.map(|o| o.result) {
            Some(Outcome::Succeeded(sum)) => assert_eq!(&sum[..], b"6"),
            other => panic!("a small sum runs at once: {other:?}"),
        }
        assert!(w.running.is_empty() && w.busy == 0);
        let mut large = b"[1".to_vec();
        large.extend(b", 1".repeat(INLINE_MAX_BYTES / 3));
        large.push(b']');
        assert!(w.start(assignment("sum", large)).is_none());
        assert_eq!(w.busy, 1, "a large chunk goes to a blocking thread");
        let mut custom = worker();
        custom
            .tasks
            .register_raw("sum", |_ctx, _input| Ok(Bytes::from_static(b"0")));
        assert!(custom.start(assignment("sum", b"[1]".to_vec())).is_none());
        assert_eq!(
            custom.busy, 1,
            "a task registered by the embedder is never inline"
        );
    }

    #[test]
    fn a_heartbeat_timeout_close_means_reconnect() {
        let reason = ws::CloseReason {
            code: ws::CloseCode::Other(muster_shared::protocol::CLOSE_HEARTBEAT_TIMEOUT),
            description: Some("heartbeat timeout".into()),
        };
        assert!(matches!(
            worker().closed_by_coordinator(Some(reason), "http://c", true),
            SessionEnd::Disconnected { welcomed: true, .. }
        ));
    }
}
