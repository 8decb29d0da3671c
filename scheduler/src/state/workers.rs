//! The coordinator's view of connected workers: capacity, what they run, what they can run.

use std::collections::{BTreeMap, HashMap, HashSet};

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
    /// Its name.
    pub name: String,
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
            name: hello.name,
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

    /// Load as a fraction of slots; placement picks the lowest.
    pub fn load(&self) -> f64 {
        self.running.len() as f64 / self.slots.max(1) as f64
    }

    /// The public view.
    pub fn view(&self) -> WorkerView {
        let mut tasks: Vec<String> = self.tasks.iter().cloned().collect();
        tasks.sort();
        WorkerView {
            id: self.id,
            name: self.name.clone(),
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

/// Connected workers by id.
#[derive(Debug, Default)]
pub struct Workers {
    by_id: HashMap<WorkerId, WorkerEntry>,
}

impl Workers {
    /// Adds a worker; refuses a second connection under an id already connected.
    pub fn add(&mut self, entry: WorkerEntry) -> Result<(), String> {
        if self.by_id.contains_key(&entry.id) {
            return Err(format!("worker id {} is already connected", entry.id));
        }
        self.by_id.insert(entry.id, entry);
        Ok(())
    }

    /// Removes a worker, returning what it was running.
    pub fn remove(&mut self, id: WorkerId) -> Option<WorkerEntry> {
        self.by_id.remove(&id)
    }

    /// The worker, if connected.
    pub fn get(&self, id: WorkerId) -> Option<&WorkerEntry> {
        self.by_id.get(&id)
    }

    /// The worker, if connected.
    pub fn get_mut(&mut self, id: WorkerId) -> Option<&mut WorkerEntry> {
        self.by_id.get_mut(&id)
    }

    /// Every connected worker.
    pub fn iter(&self) -> impl Iterator<Item = &WorkerEntry> {
        self.by_id.values()
    }

    /// Total free slots over workers that take chunks.
    pub fn free_slots(&self) -> u64 {
        self.iter()
            .filter(|w| !w.draining)
            .map(|w| u64::from(w.free()))
            .sum()
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

    /// Picks the least-loaded worker with a free slot that suits the job, avoiding `avoid` (workers
    /// whose attempts at this chunk failed) whenever any other suitable worker is connected, even a
    /// busy one: the chunk then waits for it rather than return to a worker that failed it.
    pub fn place(&self, meta: &JobMeta, avoid: &[WorkerId]) -> Option<WorkerId> {
        let avoid_any =
            !avoid.is_empty() && self.iter().any(|w| w.suits(meta) && !avoid.contains(&w.id));
        self.iter()
            .filter(|w| w.free() > 0 && w.suits(meta))
            .filter(|w| !avoid_any || !avoid.contains(&w.id))
            .min_by(|a, b| {
                a.load()
                    .total_cmp(&b.load())
                    .then_with(|| b.free().cmp(&a.free()))
                    .then_with(|| a.id.cmp(&b.id))
            })
            .map(|w| w.id)
    }
}
