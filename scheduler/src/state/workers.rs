//! The coordinator's view of connected workers: capacity, what they run, what they can run.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use muster_shared::ids::WorkerId;
use muster_shared::protocol::{ChunkRef, Hello};
use serde::Serialize;

use super::job::JobMeta;

/// One connected worker.
#[derive(Debug, Clone)]
pub struct WorkerEntry {
    /// Its id.
    pub id: WorkerId,
    /// Its name (shared with the records of the attempts it runs).
    pub name: Arc<str>,
    /// Peer address of its connection.
    pub address: String,
    /// Chunks it runs at once.
    pub slots: u32,
    /// Chunks it holds queued beyond its slots.
    pub prefetch: u32,
    /// Tasks it can run.
    pub tasks: HashSet<String>,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// True once it announced shutdown: it gets no new chunks.
    pub draining: bool,
    /// Attempts it runs now.
    pub running: HashSet<ChunkRef>,
    /// When it registered.
    pub connected_at: DateTime<Utc>,
    /// When it was last heard from.
    pub last_heartbeat: DateTime<Utc>,
}

impl WorkerEntry {
    /// A freshly registered worker.
    pub fn new(id: WorkerId, hello: Hello, address: String) -> Self {
        let now = Utc::now();
        let running = hello.running.into_iter().collect();
        Self {
            id,
            name: hello.name.into(),
            address,
            slots: hello.slots,
            prefetch: hello.prefetch,
            tasks: hello.tasks.into_iter().collect(),
            labels: hello.labels,
            draining: false,
            running,
            connected_at: now,
            last_heartbeat: now,
        }
    }

    /// Chunks it can still take: free slots plus room in its prefetch queue.
    pub fn free(&self) -> u32 {
        (self.slots + self.prefetch).saturating_sub(self.running.len() as u32)
    }

    /// True when the worker could ever run this job's chunks (task and labels), busy or not.
    pub fn suits(&self, meta: &JobMeta) -> bool {
        !self.draining
            && self.tasks.contains(&meta.task)
            && meta
                .labels
                .iter()
                .all(|(k, v)| self.labels.get(k) == Some(v))
    }

    /// The public view.
    pub fn view(&self) -> WorkerView {
        let mut tasks: Vec<String> = self.tasks.iter().cloned().collect();
        tasks.sort();
        WorkerView {
            id: self.id,
            name: self.name.to_string(),
            address: self.address.clone(),
            slots: self.slots,
            running: self.running.len() as u32,
            tasks,
            labels: self.labels.clone(),
            draining: self.draining,
            connected_at: self.connected_at,
            last_heartbeat: self.last_heartbeat,
        }
    }
}

/// `GET /v1/workers` entry.
#[derive(Debug, Clone, Serialize)]
pub struct WorkerView {
    /// Worker id.
    pub id: WorkerId,
    /// Name.
    pub name: String,
    /// Peer address.
    pub address: String,
    /// Slots.
    pub slots: u32,
    /// Chunks running now.
    pub running: u32,
    /// Tasks it can run.
    pub tasks: Vec<String>,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Shutting down.
    pub draining: bool,
    /// Registered at.
    pub connected_at: DateTime<Utc>,
    /// Last heard from.
    pub last_heartbeat: DateTime<Utc>,
}

/// Connected workers by id, with an index of those that can take a chunk, least loaded first, so
/// that placing a chunk does not look at every worker.
#[derive(Debug, Default)]
pub struct Workers {
    by_id: HashMap<WorkerId, WorkerEntry>,
    /// `(load, id)` of every worker that takes chunks and has room for one.
    ready: BTreeSet<(u64, WorkerId)>,
    /// Sum of `free()` over workers that take chunks.
    free_total: u64,
    /// [`Workers::capacity`], kept where request handlers can read it without asking the
    /// coordinator (they size jobs that leave the chunk count open).
    published: Arc<AtomicU64>,
}

/// Where a worker sits in the ready index, if it is there: load in millionths of its slots.
fn ready_key(w: &WorkerEntry) -> Option<(u64, WorkerId)> {
    (!w.draining && w.free() > 0).then(|| {
        (
            w.running.len() as u64 * 1_000_000 / u64::from(w.slots.max(1)),
            w.id,
        )
    })
}

fn free_of(w: &WorkerEntry) -> u64 {
    if w.draining {
        0
    } else {
        u64::from(w.free())
    }
}

impl Workers {
    /// Changes a worker through `f`, keeping the index and the free count right.
    fn update(&mut self, id: WorkerId, f: impl FnOnce(&mut WorkerEntry)) {
        let Some(w) = self.by_id.get_mut(&id) else {
            return;
        };
        if let Some(key) = ready_key(w) {
            self.ready.remove(&key);
        }
        self.free_total -= free_of(w);
        f(w);
        self.free_total += free_of(w);
        if let Some(key) = ready_key(w) {
            self.ready.insert(key);
        }
    }

    /// Adds a worker; refuses a second connection under an id already connected.
    pub fn add(&mut self, entry: WorkerEntry) -> Result<(), String> {
        if self.by_id.contains_key(&entry.id) {
            return Err(format!("worker id {} is already connected", entry.id));
        }
        self.free_total += free_of(&entry);
        if let Some(key) = ready_key(&entry) {
            self.ready.insert(key);
        }
        self.by_id.insert(entry.id, entry);
        self.publish();
        Ok(())
    }

    /// Removes a worker, returning what it was running.
    pub fn remove(&mut self, id: WorkerId) -> Option<WorkerEntry> {
        let entry = self.by_id.remove(&id)?;
        if let Some(key) = ready_key(&entry) {
            self.ready.remove(&key);
        }
        self.free_total -= free_of(&entry);
        self.publish();
        Some(entry)
    }

    /// The worker, if connected.
    pub fn get(&self, id: WorkerId) -> Option<&WorkerEntry> {
        self.by_id.get(&id)
    }

    /// Notes that a worker is alive.
    pub fn heard_from(&mut self, id: WorkerId) {
        if let Some(w) = self.by_id.get_mut(&id) {
            w.last_heartbeat = chrono::Utc::now();
        }
    }

    /// The worker now runs (or holds) this attempt.
    pub fn occupy(&mut self, id: WorkerId, chunk: ChunkRef) {
        self.update(id, |w| {
            w.running.insert(chunk);
        });
    }

    /// The worker no longer runs this attempt.
    pub fn release(&mut self, id: WorkerId, chunk: &ChunkRef) {
        self.update(id, |w| {
            w.running.remove(chunk);
        });
    }

    /// The worker holds this many chunks queued beyond its slots.
    pub fn set_prefetch(&mut self, id: WorkerId, prefetch: u32) {
        self.update(id, |w| w.prefetch = prefetch);
    }

    /// The worker takes no new chunks.
    pub fn set_draining(&mut self, id: WorkerId) {
        self.update(id, |w| w.draining = true);
        self.publish();
    }

    fn publish(&self) {
        self.published.store(self.capacity(), Ordering::Relaxed);
    }

    /// Keeps `cell` equal to [`Workers::capacity`] from now on.
    pub fn publish_capacity_to(&mut self, cell: Arc<AtomicU64>) {
        self.published = cell;
        self.publish();
    }

    /// Every connected worker.
    pub fn iter(&self) -> impl Iterator<Item = &WorkerEntry> {
        self.by_id.values()
    }

    /// Chunks all workers that take chunks can still take (free slots and prefetch room).
    pub fn free_slots(&self) -> u64 {
        self.free_total
    }

    /// Total slots (not counting prefetch) over workers that take chunks.
    pub fn capacity(&self) -> u64 {
        self.iter()
            .filter(|w| !w.draining)
            .map(|w| u64::from(w.slots))
            .sum()
    }

    /// True when some connected worker advertises `task`.
    pub fn knows_task(&self, task: &str) -> bool {
        self.iter().any(|w| w.tasks.contains(task))
    }

    /// Picks the least-loaded worker with room that suits the job, avoiding `avoid` (workers whose
    /// attempts at this chunk failed) whenever any other suitable worker is connected, even a busy
    /// one: the chunk then waits for it rather than return to a worker that failed it. Walks the
    /// ready index from the least loaded, so the usual cost is one step, not one per worker.
    pub fn place(&self, meta: &JobMeta, avoid: &[WorkerId]) -> Option<WorkerId> {
        let avoid_any =
            !avoid.is_empty() && self.iter().any(|w| w.suits(meta) && !avoid.contains(&w.id));
        self.ready
            .iter()
            .filter_map(|(_, id)| self.by_id.get(id))
            .find(|w| w.suits(meta) && !(avoid_any && avoid.contains(&w.id)))
            .map(|w| w.id)
    }
}
