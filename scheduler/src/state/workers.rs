//! The coordinator's view of connected workers: capacity, what they run, what they can run.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, Utc};
use muster_shared::ids::WorkerId;
use muster_shared::protocol::{ChunkRef, Hello, MAX_PREFETCH_PER_SLOT};
use serde::Serialize;

use super::health::Health;
use super::job::JobMeta;

/// Payload bytes of assigned, unfinished chunks past which a worker gets no more than its slots
/// can run: its queue stays a few milliseconds of transfer deep however large the chunks, so that
/// a worker lost with a full queue leaves little to send again, and the rest of a job goes to
/// whichever worker frees room first.
pub const MAX_QUEUED_BYTES: u64 = 8 << 20;

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
    /// When its quarantine ends, while it is quarantined (see `health`): it gets no new chunks.
    pub quarantined_until: Option<Instant>,
    /// Attempts it runs or holds queued now, with their payload sizes.
    pub running: HashMap<ChunkRef, u64>,
    /// Sum of the payload sizes in `running`.
    pub running_bytes: u64,
    /// Attempts of `running` waiting for sub-jobs: they hold no slot meanwhile.
    pub waiting: HashSet<ChunkRef>,
    /// When it registered.
    pub connected_at: DateTime<Utc>,
    /// When it was last heard from.
    pub last_heartbeat: DateTime<Utc>,
}

impl WorkerEntry {
    /// A freshly registered worker.
    pub fn new(id: WorkerId, hello: Hello, address: String) -> Self {
        let now = Utc::now();
        let running = hello.running.into_iter().map(|c| (c, 0)).collect();
        Self {
            id,
            name: hello.name.into(),
            address,
            slots: hello.slots,
            prefetch: most_prefetch(hello.slots, hello.prefetch),
            tasks: hello.tasks.into_iter().collect(),
            labels: hello.labels,
            draining: false,
            quarantined_until: None,
            running,
            running_bytes: 0,
            waiting: HashSet::new(),
            connected_at: now,
            last_heartbeat: now,
        }
    }

    /// Chunks it can still take: free slots plus room in its prefetch queue, none beyond its
    /// slots once it holds [`MAX_QUEUED_BYTES`] of payloads.
    pub fn free(&self) -> u32 {
        let held = u32::try_from(self.held()).unwrap_or(u32::MAX);
        if held >= self.slots && self.running_bytes >= MAX_QUEUED_BYTES {
            return 0;
        }
        self.slots
            .saturating_add(self.prefetch)
            .saturating_sub(held)
    }

    /// Attempts that hold a slot or a place in its prefetch queue: those it runs or holds,
    /// but those waiting for sub-jobs.
    pub fn held(&self) -> usize {
        self.running.len() - self.waiting.len()
    }

    /// True unless it is draining or quarantined.
    pub fn takes_chunks(&self) -> bool {
        !self.draining && self.quarantined_until.is_none()
    }

    /// True when the worker could run this job's chunks now (task and labels), busy or not.
    pub fn suits(&self, meta: &JobMeta) -> bool {
        self.takes_chunks()
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
            quarantined_until: self.quarantined_until.map(|until| {
                let left = until.saturating_duration_since(Instant::now());
                Utc::now() + chrono::Duration::from_std(left).unwrap_or_default()
            }),
            connected_at: self.connected_at,
            last_heartbeat: self.last_heartbeat,
        }
    }
}

/// `GET /v1/workers` entry.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
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
    /// Given no new chunks until then: it lost or corrupted chunks again and again.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quarantined_until: Option<DateTime<Utc>>,
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
    /// Every worker name's strikes and quarantines, connected or not.
    health: Health,
}

/// The prefetch a worker of `slots` slots asking for `prefetch` gets: at most
/// [`MAX_PREFETCH_PER_SLOT`] per slot, so what one worker may hold is bounded by its slots.
fn most_prefetch(slots: u32, prefetch: u32) -> u32 {
    prefetch.min(slots.saturating_mul(MAX_PREFETCH_PER_SLOT))
}

/// Where a worker sits in the ready index, if it is there: load in millionths of its slots.
fn ready_key(w: &WorkerEntry) -> Option<(u64, WorkerId)> {
    (w.takes_chunks() && w.free() > 0).then(|| {
        (
            w.held() as u64 * 1_000_000 / u64::from(w.slots.max(1)),
            w.id,
        )
    })
}

fn free_of(w: &WorkerEntry) -> u64 {
    if w.takes_chunks() {
        u64::from(w.free())
    } else {
        0
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

    /// Adds a worker (quarantined still if its name is); refuses a second connection under an
    /// id already connected.
    pub fn add(&mut self, mut entry: WorkerEntry) -> Result<(), String> {
        if self.by_id.contains_key(&entry.id) {
            return Err(format!("worker id {} is already connected", entry.id));
        }
        entry.quarantined_until = self.health.quarantined_until(&entry.name, Instant::now());
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

    /// The worker now runs (or holds) this attempt, whose payload is `bytes` long.
    pub fn occupy(&mut self, id: WorkerId, chunk: ChunkRef, bytes: u64) {
        self.update(id, |w| {
            if let Some(old) = w.running.insert(chunk, bytes) {
                w.running_bytes -= old;
            }
            w.running_bytes += bytes;
        });
    }

    /// The worker no longer runs this attempt.
    pub fn release(&mut self, id: WorkerId, chunk: &ChunkRef) {
        self.update(id, |w| {
            if let Some(bytes) = w.running.remove(chunk) {
                w.running_bytes -= bytes;
            }
            w.waiting.remove(chunk);
        });
    }

    /// The attempt, running on the worker, waits for sub-jobs (`true`: its slot is free
    /// meanwhile) or takes its slot back (`false`).
    pub fn set_waiting(&mut self, id: WorkerId, chunk: ChunkRef, waiting: bool) {
        self.update(id, |w| {
            if !waiting {
                w.waiting.remove(&chunk);
            } else if w.running.contains_key(&chunk) {
                w.waiting.insert(chunk);
            }
        });
    }

    /// The worker holds this many chunks queued beyond its slots.
    pub fn set_prefetch(&mut self, id: WorkerId, prefetch: u32) {
        self.update(id, |w| w.prefetch = most_prefetch(w.slots, prefetch));
    }

    /// Counts a strike against the worker's name (see `health`); returns the end of the
    /// quarantine it starts, which applies to every connection under that name.
    pub fn strike(&mut self, name: &Arc<str>, now: Instant) -> Option<Instant> {
        let until = self.health.strike(name, now)?;
        let ids: Vec<WorkerId> = self
            .iter()
            .filter(|w| w.name == *name)
            .map(|w| w.id)
            .collect();
        for id in ids {
            self.update(id, |w| w.quarantined_until = Some(until));
        }
        self.publish();
        Some(until)
    }

    /// Ends the quarantines over by `now`.
    pub fn end_quarantines(&mut self, now: Instant) {
        let over: Vec<WorkerId> = self
            .iter()
            .filter(|w| w.quarantined_until.is_some_and(|u| u <= now))
            .map(|w| w.id)
            .collect();
        for id in &over {
            self.update(*id, |w| w.quarantined_until = None);
        }
        if !over.is_empty() {
            self.publish();
        }
    }

    /// When the first quarantine of a connected worker ends.
    pub fn next_quarantine_end(&self) -> Option<Instant> {
        self.iter().filter_map(|w| w.quarantined_until).min()
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
            .filter(|w| w.takes_chunks())
            .map(|w| u64::from(w.slots))
            .sum()
    }

    /// True when some connected worker advertises `task`.
    pub fn knows_task(&self, task: &str) -> bool {
        self.iter().any(|w| w.tasks.contains(task))
    }

    /// Picks the least-loaded worker with room that suits the job, avoiding `avoid` (names of workers whose
    /// attempts at this chunk failed) whenever any other suitable worker is connected, even a busy
    /// one: the chunk then waits for it rather than return to a worker that failed it. Walks the
    /// ready index from the least loaded, so the usual cost is one step, not one per worker.
    /// An `exec` batch goes only to a free slot, never to a prefetch queue: a batch queued
    /// behind a long one would wait there while other slots idle.
    pub fn place(&self, meta: &JobMeta, avoid: &[Arc<str>]) -> Option<WorkerId> {
        let avoided = |w: &WorkerEntry| avoid.contains(&w.name);
        let avoid_any = !avoid.is_empty() && self.iter().any(|w| w.suits(meta) && !avoided(w));
        let slot_free = |w: &WorkerEntry| !meta.is_exec() || w.held() < w.slots as usize;
        self.ready
            .iter()
            .filter_map(|(_, id)| self.by_id.get(id))
            .find(|w| w.suits(meta) && !(avoid_any && avoided(w)) && slot_free(w))
            .map(|w| w.id)
    }
}

#[cfg(test)]
mod tests {
    use muster_shared::ids::{Attempt, ChunkIndex, JobId};

    use super::*;

    fn worker(slots: u32, prefetch: u32) -> WorkerEntry {
        let hello = Hello {
            protocol: muster_shared::protocol::PROTOCOL_VERSION,
            name: "w".into(),
            slots,
            prefetch,
            tasks: vec!["sum".into()],
            labels: BTreeMap::new(),
            running: Vec::new(),
        };
        WorkerEntry::new(WorkerId::new(), hello, "127.0.0.1:1".into())
    }

    fn chunk(job: JobId, i: u32) -> ChunkRef {
        ChunkRef {
            job,
            chunk: ChunkIndex(i),
            attempt: Attempt(1),
        }
    }

    #[test]
    fn exec_batches_wait_for_a_free_slot_instead_of_a_prefetch_queue() {
        let mut workers = Workers::default();
        let mut w = worker(1, 4);
        w.tasks.insert("exec:sh".into());
        let id = w.id;
        workers.add(w).unwrap();
        let mut meta = JobMeta::sum_for_tests(3);
        workers.occupy(id, chunk(JobId::new(), 0), 10);
        assert_eq!(workers.place(&meta, &[]), Some(id), "a sum chunk may queue");
        meta.task = "exec:sh".into();
        meta.timings_key = Some("sh".into());
        assert_eq!(workers.place(&meta, &[]), None, "an exec batch may not");
    }

    #[test]
    fn large_payloads_fill_a_queue_by_bytes_small_ones_by_count() {
        let mut workers = Workers::default();
        let w = worker(2, 100);
        let id = w.id;
        workers.add(w).unwrap();
        let job = JobId::new();
        let big = MAX_QUEUED_BYTES / 4;
        for i in 0..3 {
            workers.occupy(id, chunk(job, i), big);
            assert!(
                workers.get(id).unwrap().free() > 0,
                "after {} chunks",
                i + 1
            );
        }
        workers.occupy(id, chunk(job, 3), big);
        assert_eq!(workers.get(id).unwrap().free(), 0);
        assert_eq!(workers.free_slots(), 0);
        assert!(workers.place(&JobMeta::sum_for_tests(3), &[]).is_none());
        // An outcome frees room again.
        workers.release(id, &chunk(job, 0));
        assert_eq!(workers.get(id).unwrap().running_bytes, 3 * big);
        assert_eq!(workers.place(&JobMeta::sum_for_tests(3), &[]), Some(id));

        // Its slots always take a chunk, however large.
        let mut workers = Workers::default();
        let w = worker(2, 100);
        let id = w.id;
        workers.add(w).unwrap();
        workers.occupy(id, chunk(job, 0), 2 * MAX_QUEUED_BYTES);
        assert!(workers.get(id).unwrap().free() > 0);
        workers.occupy(id, chunk(job, 1), 2 * MAX_QUEUED_BYTES);
        assert_eq!(workers.get(id).unwrap().free(), 0);

        // Tiny payloads stop only at slots plus prefetch.
        let mut workers = Workers::default();
        let w = worker(1, 3);
        let id = w.id;
        workers.add(w).unwrap();
        for i in 0..4 {
            assert!(workers.get(id).unwrap().free() > 0);
            workers.occupy(id, chunk(job, i), 10);
        }
        assert_eq!(workers.get(id).unwrap().free(), 0);
    }
}
