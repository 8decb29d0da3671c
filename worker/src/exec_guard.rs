//! The guard between a worker and its `exec` programs: `muster-exec-guard`, one per worker.
//!
//! A program a worker starts must not outlive the worker, even one killed by SIGKILL, and neither
//! may what the program starts. So the worker does not start programs itself: when it starts (with
//! programs allowed) it starts the guard, in a process group of its own, with one end of a Unix socket pair as the
//! guard's standard input, and keeps the other end. Over that socket the worker asks the guard to
//! start each batch's program (argv, environment, directory, and the write ends of the output
//! pipes, passed as file descriptors); the guard starts it as the leader of a new process group,
//! answers with its pid, and reports its exit status when it ends, after ending whatever the
//! program left in its group. When the worker dies, however it dies, the kernel closes its end:
//! the guard reads the end of the stream, ends every group it started (SIGTERM, then SIGKILL after
//! a grace period) and exits. No signal handler: a closed socket is the signal.
//!
//! One long-lived guard, rather than one per batch, keeps a batch's start to one process start
//! (the program's) from a small process. When the guard is gone (killed on its own), the batches
//! it was running fail as retryable, their groups are ended by the worker, and the next batch
//! starts a new guard. Without a guard installed beside the worker, programs start directly (and
//! the worker warns once that they would outlive a killed worker).
//!
//! The messages are JSON, each framed by its length (4 bytes, little-endian).

use std::collections::{HashMap, HashSet, VecDeque};
use std::ffi::OsString;
use std::io::{self, IoSlice, IoSliceMut, Write};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Child, Command, ExitCode, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use rustix::net::{
    recvmsg, sendmsg, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};
use rustix::process::{kill_process_group, Pid, Signal};
use serde::{Deserialize, Serialize};

/// Between SIGTERM and SIGKILL when the worker is gone.
const GRACE: Duration = Duration::from_secs(1);

/// Largest message either side accepts.
const MAX_FRAME: usize = 64 << 20;

/// What a program is started with.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Spawn {
    /// The program (a name looked up in the `PATH` of `env`, or a path).
    pub program: OsString,
    /// Its arguments, verbatim.
    pub args: Vec<OsString>,
    /// Its whole environment.
    pub env: Vec<(OsString, OsString)>,
    /// Its working directory.
    pub dir: PathBuf,
}

impl Spawn {
    /// The command that starts it: its own process group, standard input empty, output to the
    /// given pipes.
    fn command(&self, stdout: Stdio, stderr: Stdio) -> Command {
        let mut command = Command::new(&self.program);
        command
            .args(&self.args)
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .process_group(0);
        command
    }
}

/// Worker to guard.
#[derive(Debug, Serialize, Deserialize)]
struct Request {
    id: u64,
    spawn: Spawn,
}

/// Guard to worker.
#[derive(Debug, Serialize, Deserialize)]
enum Reply {
    /// Started, as the leader of process group `pid`.
    Started { id: u64, pid: i32 },
    /// Could not start.
    Failed { id: u64, error: String },
    /// Ended, with this raw wait status; its group has been ended too.
    Exited { id: u64, status: i32 },
}

/// Writes one frame, with `fds` riding along with its first byte.
fn write_frame(socket: &UnixStream, body: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    let len = u32::try_from(body.len())
        .map_err(|_| io::Error::other("message too long"))?
        .to_le_bytes();
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(2))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(io::Error::other("too many descriptors for one message"));
    }
    let sent = loop {
        match sendmsg(
            socket,
            &[IoSlice::new(&len), IoSlice::new(body)],
            &mut control,
            SendFlags::NOSIGNAL,
        ) {
            Err(rustix::io::Errno::INTR) => continue,
            other => break other?,
        }
    };
    let mut writer = socket;
    if sent < len.len() {
        writer.write_all(&len[sent..])?;
        writer.write_all(body)
    } else {
        writer.write_all(&body[sent - len.len()..])
    }
}

/// Reads frames, and keeps the descriptors that come with them in the order they came.
struct FrameReader {
    socket: UnixStream,
    buf: Vec<u8>,
    fds: VecDeque<OwnedFd>,
}

impl FrameReader {
    fn new(socket: UnixStream) -> Self {
        Self {
            socket,
            buf: Vec::new(),
            fds: VecDeque::new(),
        }
    }

    /// The next frame; `None` at the end of the stream.
    fn next(&mut self) -> io::Result<Option<Vec<u8>>> {
        loop {
            if let Some(head) = self.buf.first_chunk::<4>() {
                let len = u32::from_le_bytes(*head) as usize;
                if len > MAX_FRAME {
                    return Err(io::Error::other(format!("a message of {len} bytes")));
                }
                if self.buf.len() >= 4 + len {
                    let frame = self.buf[4..4 + len].to_vec();
                    self.buf.drain(..4 + len);
                    return Ok(Some(frame));
                }
            }
            let mut chunk = [0u8; 64 * 1024];
            let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(8))];
            let mut control = RecvAncillaryBuffer::new(&mut space);
            let got = match recvmsg(
                &self.socket,
                &mut [IoSliceMut::new(&mut chunk)],
                &mut control,
                RecvFlags::CMSG_CLOEXEC,
            ) {
                Err(rustix::io::Errno::INTR) => continue,
                other => other?,
            };
            for message in control.drain() {
                if let RecvAncillaryMessage::ScmRights(fds) = message {
                    self.fds.extend(fds);
                }
            }
            if got.bytes == 0 {
                return Ok(None);
            }
            self.buf.extend_from_slice(&chunk[..got.bytes]);
        }
    }
}

/// Sends `reply` to the worker; a worker that is gone is noticed by the reading side.
fn send(socket: &Mutex<UnixStream>, reply: &Reply) {
    let body = serde_json::to_vec(reply).unwrap_or_default();
    let socket = socket.lock().unwrap_or_else(|p| p.into_inner());
    let _ = write_frame(&socket, &body, &[]);
}

/// The guard's whole `main`: its standard input is the worker's socket.
pub fn main() -> ExitCode {
    let socket = match io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .map(UnixStream::from)
    {
        Ok(socket) => socket,
        Err(e) => {
            eprintln!("muster-exec-guard: standard input: {e}");
            return ExitCode::from(2);
        }
    };
    let writer = match socket.try_clone() {
        Ok(writer) => Arc::new(Mutex::new(writer)),
        Err(e) => {
            eprintln!("muster-exec-guard: {e}");
            return ExitCode::from(2);
        }
    };
    let live: Arc<Mutex<HashSet<i32>>> = Arc::default();
    let mut reader = FrameReader::new(socket);
    // Until the worker's end closes (or speaks nonsense, which only a worker that is not ours
    // would).
    while let Ok(Some(frame)) = reader.next() {
        let Ok(Request { id, spawn }) = serde_json::from_slice::<Request>(&frame) else {
            eprintln!("muster-exec-guard: a message that is not a request");
            break;
        };
        let (Some(stdout), Some(stderr)) = (reader.fds.pop_front(), reader.fds.pop_front()) else {
            send(
                &writer,
                &Reply::Failed {
                    id,
                    error: "no output pipes came with the request".into(),
                },
            );
            continue;
        };
        let mut child = match spawn.command(stdout.into(), stderr.into()).spawn() {
            Ok(child) => child,
            Err(e) => {
                send(
                    &writer,
                    &Reply::Failed {
                        id,
                        error: e.to_string(),
                    },
                );
                continue;
            }
        };
        let pid = child.id() as i32;
        live.lock().unwrap_or_else(|p| p.into_inner()).insert(pid);
        send(&writer, &Reply::Started { id, pid });
        let (writer, live) = (writer.clone(), live.clone());
        std::thread::spawn(move || {
            let status = child.wait().map(|s| s.into_raw()).unwrap_or(1 << 8);
            // Whatever the program left in its group goes with it.
            signal(pid, Signal::KILL);
            live.lock().unwrap_or_else(|p| p.into_inner()).remove(&pid);
            send(&writer, &Reply::Exited { id, status });
        });
    }
    let groups: Vec<i32> = live
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .copied()
        .collect();
    if !groups.is_empty() {
        for &group in &groups {
            signal(group, Signal::TERM);
        }
        std::thread::sleep(GRACE);
        for &group in &groups {
            signal(group, Signal::KILL);
        }
    }
    ExitCode::SUCCESS
}

/// Signals the process group led by `pid`; one already gone is fine.
pub(crate) fn signal(pid: i32, signal: Signal) {
    if let Some(group) = Pid::from_raw(pid) {
        let _ = kill_process_group(group, signal);
    }
}

/// A started program.
pub(crate) struct Started {
    /// It leads a process group of this id.
    pub pid: i32,
    /// What is said of it after its start: its end (and its group's) comes as
    /// [`Reply::Exited`]; closed without one when track of it was lost.
    replies: Receiver<Reply>,
}

impl Started {
    /// Its exit status once it has ended, waiting up to `timeout`; `Disconnected` when track of
    /// it was lost.
    pub fn ended_within(&self, timeout: Duration) -> Result<ExitStatus, RecvTimeoutError> {
        loop {
            if let Reply::Exited { status, .. } = self.replies.recv_timeout(timeout)? {
                return Ok(ExitStatus::from_raw(status));
            }
        }
    }
}

/// Why a program did not start.
pub(crate) enum StartError {
    /// The program could not start (not found, not executable...).
    Program(String),
    /// The guard could not be reached: nothing to do with the program.
    Guard(String),
}

/// The worker's side of its guard.
struct Guard {
    socket: Mutex<UnixStream>,
    /// Where each request's replies go; the guard being gone closes them all.
    pending: Mutex<HashMap<u64, Sender<Reply>>>,
    alive: AtomicBool,
    next_id: AtomicU64,
}

impl Guard {
    /// Starts the guard at `path`, with a thread that hands its replies out.
    fn start(path: &PathBuf) -> io::Result<Arc<Guard>> {
        let (ours, theirs) = UnixStream::pair()?;
        let mut child = Command::new(path)
            .env_clear()
            .stdin(OwnedFd::from(theirs))
            .stdout(Stdio::null())
            .process_group(0)
            .spawn()?;
        let guard = Arc::new(Guard {
            socket: Mutex::new(ours.try_clone()?),
            pending: Mutex::default(),
            alive: AtomicBool::new(true),
            next_id: AtomicU64::new(1),
        });
        let replies = guard.clone();
        std::thread::Builder::new()
            .name("exec-guard".into())
            .spawn(move || replies.hand_out(FrameReader::new(ours), &mut child))?;
        Ok(guard)
    }

    /// Hands each reply to its request, until the guard is gone.
    fn hand_out(&self, mut reader: FrameReader, child: &mut Child) {
        while let Ok(Some(frame)) = reader.next() {
            let Ok(reply) = serde_json::from_slice::<Reply>(&frame) else {
                break;
            };
            let (id, last) = match reply {
                Reply::Started { id, .. } => (id, false),
                Reply::Failed { id, .. } | Reply::Exited { id, .. } => (id, true),
            };
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(to) = pending.get(&id) {
                let _ = to.send(reply);
            }
            if last {
                pending.remove(&id);
            }
        }
        {
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            self.alive.store(false, Ordering::SeqCst);
            pending.clear();
        }
        tracing::warn!("muster-exec-guard ended; the next exec batch starts a new one");
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Asks the guard to start `spawn`.
    fn spawn(
        &self,
        spawn: &Spawn,
        stdout: OwnedFd,
        stderr: OwnedFd,
    ) -> Result<Started, StartError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (to, replies) = channel();
        {
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            if !self.alive.load(Ordering::SeqCst) {
                return Err(StartError::Guard("muster-exec-guard has ended".into()));
            }
            pending.insert(id, to);
        }
        let body = serde_json::to_vec(&Request {
            id,
            spawn: spawn.clone(),
        })
        .map_err(|e| StartError::Guard(e.to_string()))?;
        let sent = write_frame(
            &self.socket.lock().unwrap_or_else(|p| p.into_inner()),
            &body,
            &[stdout.as_fd(), stderr.as_fd()],
        );
        // The guard holds its own copies now (or never will): the pipes end when the program does.
        drop((stdout, stderr));
        if let Err(e) = sent {
            self.pending
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&id);
            return Err(StartError::Guard(format!(
                "cannot reach muster-exec-guard: {e}"
            )));
        }
        match replies.recv() {
            Ok(Reply::Started { pid, .. }) => Ok(Started { pid, replies }),
            Ok(Reply::Failed { error, .. }) => Err(StartError::Program(error)),
            Ok(Reply::Exited { .. }) | Err(_) => Err(StartError::Guard(
                "muster-exec-guard ended while starting the program".into(),
            )),
        }
    }
}

/// `muster-exec-guard` beside this executable (or one directory up, where examples live), if it
/// is installed; without it a program would outlive a worker that is killed, and the worker says
/// so once.
fn guard_path() -> Option<&'static PathBuf> {
    static PATH: OnceLock<Option<PathBuf>> = OnceLock::new();
    PATH.get_or_init(|| {
        let exe = std::env::current_exe().ok()?;
        let dir = exe.parent()?;
        let found = [Some(dir), dir.parent()]
            .into_iter()
            .flatten()
            .map(|d| d.join("muster-exec-guard"))
            .find(|p| p.is_file());
        if found.is_none() {
            tracing::warn!(
                "muster-exec-guard is not installed beside the worker: an exec program would outlive a worker that is killed"
            );
        }
        found
    })
    .as_ref()
}

/// This worker's guard, started now if there is none (or the last one ended); `None` when none is
/// installed.
fn guard() -> Result<Option<Arc<Guard>>, StartError> {
    static GUARD: Mutex<Option<Arc<Guard>>> = Mutex::new(None);
    let Some(path) = guard_path() else {
        return Ok(None);
    };
    let mut current = GUARD.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(guard) = current.as_ref().filter(|g| g.alive.load(Ordering::SeqCst)) {
        return Ok(Some(guard.clone()));
    }
    let guard = Guard::start(path)
        .map_err(|e| StartError::Guard(format!("cannot start muster-exec-guard: {e}")))?;
    *current = Some(guard.clone());
    Ok(Some(guard))
}

/// Starts the guard ahead of the first batch, so that batch does not wait for it.
pub(crate) fn warm() {
    if let Err(StartError::Guard(e) | StartError::Program(e)) = guard() {
        tracing::warn!("{e}");
    }
}

/// Starts `spawn` with its output to the given pipes: through the guard when one is installed,
/// else directly.
pub(crate) fn start(
    spawn: &Spawn,
    stdout: OwnedFd,
    stderr: OwnedFd,
) -> Result<Started, StartError> {
    if let Some(guard) = guard()? {
        return guard.spawn(spawn, stdout, stderr);
    }
    let mut child = spawn
        .command(stdout.into(), stderr.into())
        .spawn()
        .map_err(|e| StartError::Program(e.to_string()))?;
    let pid = child.id() as i32;
    let (to, replies) = channel();
    std::thread::spawn(move || {
        if let Ok(status) = child.wait() {
            let _ = to.send(Reply::Exited {
                id: 0,
                status: status.into_raw(),
            });
        }
    });
    Ok(Started { pid, replies })
}
