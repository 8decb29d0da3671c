//! Unit tests of the cluster state, driven without an actor system.

use std::collections::BTreeMap;

use muster_shared::job::RawJob;
use muster_shared::protocol::{CoordinatorMessage, Failure};

use super::*;

fn state() -> ClusterState {
    ClusterState::new(Policy {
        retry_backoff: Duration::ZERO,
        ..Policy::default()
    })
}

fn spec(v: serde_json::Value) -> JobSpec {
    serde_json::from_value::<RawJob>(v)
        .unwrap()
        .validate(1)
        .unwrap()
}

fn worker(state: &mut ClusterState, slots: u32) -> WorkerId {
    let id = WorkerId::new();
    let hello = Hello {
        protocol: 1,
        name: id.to_string(),
        slots,
        prefetch: 0,
        tasks: vec!["sum".into()],
        labels: BTreeMap::new(),
        running: Vec::new(),
    };
    state.add_worker(id, hello, "test".into()).unwrap();
    id
}

fn assignments(state: &mut ClusterState) -> Vec<(WorkerId, ChunkRef)> {
    state
        .take_effects()
        .into_iter()
        .filter_map(|e| match e {
            Effect::Assign { worker, assignment } => Some((worker, assignment.chunk)),
            _ => None,
        })
        .collect()
}

#[test]
fn a_worker_cannot_claim_more_slots_or_prefetch_than_the_coordinator_allows() {
    let mut s = state();
    let hello = |slots: u32, prefetch: u32, name: String| Hello {
        protocol: 1,
        name,
        slots,
        prefetch,
        tasks: vec!["sum".into()],
        labels: BTreeMap::new(),
        running: Vec::new(),
    };
    let refused = s
        .add_worker(
            WorkerId::new(),
            hello(u32::MAX, u32::MAX, "greedy".into()),
            "t".into(),
        )
        .unwrap_err();
    assert!(refused.contains("--max-worker-slots"), "{refused}");
    let long = s
        .add_worker(
            WorkerId::new(),
            hello(1, 0, "n".repeat(MAX_NAME_BYTES + 1)),
            "t".into(),
        )
        .unwrap_err();
    assert!(long.contains("worker name"), "{long}");
    // The largest hello allowed, with the largest prefetch there is: it holds at most
    // slots x (1 + MAX_PREFETCH_PER_SLOT) chunks, however many are queued.
    let most = Policy::default().max_worker_slots;
    let id = WorkerId::new();
    s.add_worker(id, hello(most, u32::MAX, "big".into()), "t".into())
        .unwrap();
    s.worker_prefetch(id, u32::MAX);
    let cap = u64::from(most) * (1 + u64::from(muster_shared::protocol::MAX_PREFETCH_PER_SLOT));
    assert_eq!(s.workers().free_slots(), cap);
    let chunks: Vec<Vec<i64>> = (0..cap as i64 + 100).map(|i| vec![i]).collect();
    s.submit(
        spec(serde_json::json!({"task": "sum", "chunks": chunks, "reduce": "sum"})),
        None,
        0,
    )
    .unwrap();
    s.dispatch();
    assert_eq!(assignments(&mut s).len() as u64, cap);
}

#[test]
fn higher_priority_jobs_are_placed_first() {
    let mut s = state();
    let low = s
        .submit(
            spec(serde_json::json!({"kind": "sum", "input": [1], "priority": 1})),
            None,
            0,
        )
        .unwrap();
    let high = s
        .submit(
            spec(serde_json::json!({"kind": "sum", "input": [1], "priority": 5})),
            None,
            0,
        )
        .unwrap();
    worker(&mut s, 1);
    s.dispatch();
    let placed = assignments(&mut s);
    assert_eq!(placed.len(), 1);
    assert_eq!(placed[0].1.job, high.id);
    assert_ne!(placed[0].1.job, low.id);
}

#[test]
fn a_forgotten_job_frees_its_slots_and_its_idempotency_key() {
    let mut s = state();
    let w = worker(&mut s, 2);
    let key = Some(("k".to_owned(), [7u8; 32]));
    let job = s
        .submit(
            spec(serde_json::json!({"kind": "sum", "input": [1, 2], "chunks": 2})),
            key.clone(),
            0,
        )
        .unwrap();
    s.dispatch();
    assert_eq!(assignments(&mut s).len(), 2);
    s.forget(job.id);
    let cancelled = s
        .take_effects()
        .into_iter()
        .filter(|e| matches!(e, Effect::Cancel { worker, .. } if *worker == w))
        .count();
    assert_eq!(cancelled, 2);
    assert!(s.job(job.id).is_none());
    assert!(s.workers().get(w).unwrap().running.is_empty());
    let again = s
        .submit(
            spec(serde_json::json!({"kind": "sum", "input": [1, 2], "chunks": 2})),
            key,
            0,
        )
        .unwrap();
    assert!(again.created, "the key no longer names the forgotten job");
    assert_ne!(again.id, job.id);
}

#[test]
fn a_lost_workers_chunk_is_retried_at_once_and_a_task_error_waits() {
    let mut s = ClusterState::new(Policy {
        retry_backoff: Duration::from_secs(60),
        ..Policy::default()
    });
    let first = worker(&mut s, 1);
    let job = s
        .submit(
            spec(serde_json::json!({"kind": "sum", "input": [1]})),
            None,
            0,
        )
        .unwrap();
    s.dispatch();
    assert_eq!(assignments(&mut s)[0].0, first);
    let second = worker(&mut s, 1);
    s.worker_gone(first, FailReason::WorkerLost);
    s.dispatch();
    let placed = assignments(&mut s);
    assert_eq!(placed.len(), 1, "no backoff after a lost worker");
    assert_eq!(placed[0].0, second);
    s.outcome(
        second,
        ChunkOutcome {
            chunk: placed[0].1,
            result: Outcome::Failed(Failure {
                class: FailureClass::TaskError,
                message: "boom".into(),
            }),
        },
    );
    worker(&mut s, 1);
    s.dispatch();
    assert!(
        assignments(&mut s).is_empty(),
        "a task error waits the backoff"
    );
    assert_eq!(s.job(job.id).unwrap().counts.pending, 1);
}

#[test]
fn a_large_merge_is_left_to_an_effect_and_a_cancel_before_it_ends_wins() {
    let mut s = state();
    let w = worker(&mut s, 2);
    // A number a reducer takes, padded to a large partial.
    let large = Bytes::from(" ".repeat(REDUCE_OFF_THREAD_BYTES) + "1");
    let mut reduces = Vec::new();
    for cancel in [false, true] {
        let job = s
            .submit(
                spec(serde_json::json!({"kind": "sum", "input": [1, 2], "chunks": 2})),
                None,
                0,
            )
            .unwrap();
        s.dispatch();
        for (i, (_, chunk)) in assignments(&mut s).into_iter().enumerate() {
            let result = if i == 0 {
                large.clone()
            } else {
                Bytes::from_static(b"2")
            };
            s.outcome(
                w,
                ChunkOutcome {
                    chunk,
                    result: Outcome::Succeeded(result),
                },
            );
        }
        let effects = s.take_effects();
        assert!(
            !effects.iter().any(|e| matches!(e, Effect::JobDone(_))),
            "the job waits for its merge"
        );
        let Some(Effect::Reduce { partials, .. }) = effects
            .into_iter()
            .find(|e| matches!(e, Effect::Reduce { job: j, .. } if *j == job.id))
        else {
            panic!("no merge asked for");
        };
        assert_eq!(partials.len(), 2);
        assert_eq!(s.job(job.id).unwrap().state.name(), "running");
        if cancel {
            s.cancel(job.id).unwrap();
        }
        s.reduced(job.id, Ok("3".into()));
        reduces.push(s.job(job.id).unwrap().state.name());
    }
    assert_eq!(reduces, ["succeeded", "cancelled"]);
}

#[test]
fn least_loaded_worker_gets_the_chunk() {
    let mut s = state();
    let small = worker(&mut s, 1);
    let big = worker(&mut s, 4);
    s.submit(
        spec(serde_json::json!({"kind": "sum", "input": [1, 2, 3], "chunks": 3})),
        None,
        0,
    )
    .unwrap();
    s.dispatch();
    let placed = assignments(&mut s);
    assert_eq!(placed.len(), 3);
    // 3 chunks on slots 1 + 4: the big worker ends at 2/4 or 3/4, the small one at most 1/1.
    assert!(placed.iter().filter(|(w, _)| *w == big).count() >= 2);
    assert!(placed.iter().filter(|(w, _)| *w == small).count() <= 1);
}

#[test]
fn a_result_that_does_not_fit_the_reducer_fails_only_its_attempt_and_shows_as_a_retry_after_the_end(
) {
    let mut s = state();
    let bad = worker(&mut s, 1);
    let job = s
        .submit(
            spec(serde_json::json!({"kind": "sum", "input": [1, 2, 3], "chunks": 1})),
            None,
            0,
        )
        .unwrap();
    s.dispatch();
    let placed = assignments(&mut s);
    s.outcome(
        bad,
        ChunkOutcome {
            chunk: placed[0].1,
            result: Outcome::Succeeded(Bytes::from_static(b"\"six\"")),
        },
    );
    let good = worker(&mut s, 1);
    s.dispatch();
    let retry = assignments(&mut s);
    assert_eq!(retry.len(), 1);
    assert_eq!(
        retry[0].0, good,
        "the retry avoids the worker that sent the bad result"
    );
    s.outcome(
        good,
        ChunkOutcome {
            chunk: retry[0].1,
            result: Outcome::Succeeded(Bytes::from_static(b"6")),
        },
    );
    let done = s.job(job.id).unwrap();
    assert!(matches!(&done.state, JobState::Succeeded { result } if &result[..] == b"6"));
    assert!(done.chunks.is_empty(), "an ended job keeps no chunk table");
    let view = views::JobView::of(done);
    assert_eq!(view.retries.len(), 1);
    let first = &view.retries[0].attempts[0];
    assert_eq!(first.worker, bad);
    assert!(matches!(first.error, Some(FailReason::BadResult(_))));
}

#[test]
fn past_the_retained_count_the_oldest_ended_jobs_are_pruned_with_their_keys() {
    let mut s = ClusterState::new(Policy {
        retain_ended_jobs: 2,
        ..Policy::default()
    });
    let ids: Vec<JobId> = (0..5)
        .map(|i| {
            let key = (format!("key-{i}"), [i as u8; 32]);
            let job = s.submit(
                spec(serde_json::json!({"kind": "sum", "input": [i]})),
                Some(key),
                0,
            );
            let id = job.unwrap().id;
            s.cancel(id).unwrap();
            id
        })
        .collect();
    // The count is kept within a little slack as jobs end, and exactly on the timer.
    assert!(ids.iter().filter(|id| s.job(**id).is_some()).count() <= 3);
    s.prune_ended(Utc::now());
    let kept: Vec<JobId> = ids
        .iter()
        .copied()
        .filter(|id| s.job(*id).is_some())
        .collect();
    assert_eq!(kept, ids[3..]);
    let again = s
        .submit(
            spec(serde_json::json!({"kind": "sum", "input": [0]})),
            Some(("key-0".into(), [0; 32])),
            0,
        )
        .unwrap();
    assert!(
        again.created,
        "a pruned job's idempotency key no longer matches"
    );
}

#[test]
fn a_retry_waits_for_a_worker_other_than_the_one_that_failed_it() {
    let mut s = state();
    let a = worker(&mut s, 1);
    let b = worker(&mut s, 1);
    s.submit(
        spec(serde_json::json!({"kind": "sum", "input": [1, 2], "chunks": 2})),
        None,
        0,
    )
    .unwrap();
    s.dispatch();
    let placed = assignments(&mut s);
    let (on_a, on_b) = if placed[0].0 == a {
        (placed[0].1, placed[1].1)
    } else {
        (placed[1].1, placed[0].1)
    };
    let failure = Outcome::Failed(Failure {
        class: FailureClass::TaskError,
        message: "boom".into(),
    });
    s.outcome(
        a,
        ChunkOutcome {
            chunk: on_a,
            result: failure,
        },
    );
    s.dispatch();
    // `a` is free but failed the chunk; `b` is busy: the retry waits for `b`.
    assert!(assignments(&mut s).is_empty());
    s.outcome(
        b,
        ChunkOutcome {
            chunk: on_b,
            result: Outcome::Succeeded(Bytes::from_static(b"2")),
        },
    );
    s.dispatch();
    let placed = assignments(&mut s);
    assert_eq!(
        placed,
        vec![(
            b,
            ChunkRef {
                attempt: Attempt(2),
                ..on_a
            }
        )]
    );
}

#[test]
fn a_larger_prefetch_lets_a_worker_take_more_chunks() {
    let mut s = state();
    let w = worker(&mut s, 1);
    s.submit(
        spec(serde_json::json!({"kind": "sum", "input": [1, 2, 3, 4, 5], "chunks": 5})),
        None,
        0,
    )
    .unwrap();
    s.dispatch();
    assert_eq!(assignments(&mut s).len(), 1);
    s.worker_prefetch(w, 3);
    s.dispatch();
    assert_eq!(assignments(&mut s).len(), 3);
    assert_eq!(s.workers().free_slots(), 0);
}

#[test]
fn duplicate_outcomes_count_once() {
    let mut s = state();
    let w = worker(&mut s, 1);
    let job = s
        .submit(
            spec(serde_json::json!({"kind": "sum", "input": [7]})),
            None,
            0,
        )
        .unwrap();
    s.dispatch();
    let (_, chunk) = assignments(&mut s)[0];
    let ok = || ChunkOutcome {
        chunk,
        result: Outcome::Succeeded(Bytes::from_static(b"7")),
    };
    s.outcome(w, ok());
    s.outcome(w, ok());
    assert_eq!(s.counters.outcomes_ignored, 1);
    assert!(
        matches!(&s.job(job.id).unwrap().state, JobState::Succeeded { result } if &result[..] == b"7")
    );
}

/// A speculating state: any attempt slower than the median is a straggler at once.
fn speculating() -> ClusterState {
    ClusterState::new(Policy {
        retry_backoff: Duration::ZERO,
        speculate_at_least: Duration::ZERO,
        speculate_every: Duration::ZERO,
        ..Policy::default()
    })
}

/// A job of two one-element sum chunks (with `speculation` or not), on two one-slot workers; the
/// chunk on the second worker succeeds, so that worker is free and the job is in its tail.
/// Returns the state, the job, the workers and the attempt the first one still runs.
fn a_tail(speculation: bool) -> (ClusterState, JobId, WorkerId, WorkerId, ChunkRef) {
    let mut s = speculating();
    let a = worker(&mut s, 1);
    let b = worker(&mut s, 1);
    let job = s
        .submit(
            spec(
                serde_json::json!({"kind": "sum", "input": [1, 2], "chunks": 2,
                "speculation": speculation}),
            ),
            None,
            0,
        )
        .unwrap();
    s.dispatch();
    let placed = assignments(&mut s);
    let on_a = placed.iter().find(|(w, _)| *w == a).unwrap().1;
    let first_b = placed.iter().find(|(w, _)| *w == b).unwrap().1;
    s.outcome(
        b,
        ChunkOutcome {
            chunk: first_b,
            result: Outcome::Succeeded(Bytes::from(first_b.chunk.0.to_string())),
        },
    );
    (s, job.id, a, b, on_a)
}

/// The assignment of a backup the state placed now, if any: its worker and chunk.
fn backup(s: &mut ClusterState) -> Option<(WorkerId, ChunkRef)> {
    std::thread::sleep(Duration::from_millis(2));
    s.dispatch();
    assignments(s).pop()
}

#[test]
fn a_backup_that_finishes_first_wins_and_the_straggler_is_stopped() {
    let (mut s, job, a, b, straggler) = a_tail(true);
    let (on, copy) = backup(&mut s).expect("a backup");
    assert_eq!((on, copy.chunk), (b, straggler.chunk));
    assert!(copy.attempt > straggler.attempt);
    // Only one backup per chunk.
    assert!(backup(&mut s).is_none());
    s.outcome(
        b,
        ChunkOutcome {
            chunk: copy,
            result: Outcome::Succeeded(Bytes::from(straggler.chunk.0.to_string())),
        },
    );
    let cancels: Vec<ChunkRef> = s
        .take_effects()
        .into_iter()
        .filter_map(|e| match e {
            Effect::Cancel { worker, chunk } if worker == a => Some(chunk),
            _ => None,
        })
        .collect();
    assert_eq!(cancels, [straggler]);
    // The straggler's late result is ignored: each chunk counted once.
    s.outcome(
        a,
        ChunkOutcome {
            chunk: straggler,
            result: Outcome::Succeeded(Bytes::from_static(b"1000")),
        },
    );
    let job = s.job(job).unwrap();
    assert!(matches!(&job.state, JobState::Succeeded { result } if &result[..] == b"1"));
    assert_eq!(job.backups, job::BackupCounts { started: 1, won: 1 });
    assert_eq!((s.counters.backups_started, s.counters.backups_won), (1, 1));
}

#[test]
fn a_straggler_that_finishes_first_stops_its_backup() {
    let (mut s, job, a, b, straggler) = a_tail(true);
    let (_, copy) = backup(&mut s).expect("a backup");
    s.outcome(
        a,
        ChunkOutcome {
            chunk: straggler,
            result: Outcome::Succeeded(Bytes::from(straggler.chunk.0.to_string())),
        },
    );
    let stopped = s
        .take_effects()
        .into_iter()
        .any(|e| matches!(e, Effect::Cancel { worker, chunk } if worker == b && chunk == copy));
    assert!(stopped);
    let job = s.job(job).unwrap();
    assert!(matches!(&job.state, JobState::Succeeded { result } if &result[..] == b"1"));
    assert_eq!(job.backups, job::BackupCounts { started: 1, won: 0 });
}

#[test]
fn when_the_straggler_fails_its_backup_goes_on_as_the_chunks_attempt() {
    let (mut s, job, a, b, straggler) = a_tail(true);
    let (_, copy) = backup(&mut s).expect("a backup");
    s.worker_gone(a, FailReason::WorkerLost);
    // Nothing is queued again: the backup carries the chunk.
    s.dispatch();
    assert!(assignments(&mut s).is_empty());
    assert_eq!(s.job(job).unwrap().counts.pending, 0);
    s.outcome(
        b,
        ChunkOutcome {
            chunk: copy,
            result: Outcome::Succeeded(Bytes::from(straggler.chunk.0.to_string())),
        },
    );
    let job = s.job(job).unwrap();
    assert!(matches!(&job.state, JobState::Succeeded { result } if &result[..] == b"1"));
}

#[test]
fn a_job_without_speculation_gets_no_backup() {
    let (mut s, ..) = a_tail(false);
    assert!(backup(&mut s).is_none());
}

mod restore_tests {

    use chrono::Utc;

    use super::*;
    use crate::records::{AttemptRecord, JobMeta, StoredChunk, StoredJob};

    #[test]
    fn a_job_whose_results_were_all_stored_but_not_its_end_finishes_on_restore() {
        let id = JobId::new();
        let chunks = [b"1", b"2"]
            .iter()
            .map(|result| StoredChunk {
                input: Bytes::from_static(b"[1]"),
                result: Some(Bytes::from_static(*result)),
                attempts: vec![AttemptRecord {
                    attempt: Attempt(1),
                    worker: WorkerId::new(),
                    worker_name: "w".into(),
                    started_at: Utc::now(),
                    finished_at: Some(Utc::now()),
                    error: None,
                    backup: false,
                    seq: None,
                }],
            })
            .collect();
        let snapshot = Snapshot {
            jobs: vec![StoredJob {
                id,
                meta: JobMeta::sum_for_tests(3),
                created_at: Utc::now(),
                end: None,
                chunks,
            }],
            idempotency: Vec::new(),
            timings: Vec::new(),
        };
        let mut state = ClusterState::new(Policy {
            retry_backoff: Duration::ZERO,
            ..Policy::default()
        });
        state.restore(snapshot);
        assert!(
            matches!(&state.job(id).unwrap().state, JobState::Succeeded { result } if &result[..] == b"3")
        );
        let ended = state.take_writes().into_iter().any(
            |w| matches!(w, Write::Finish { job, end: JobEnd::Succeeded(_), .. } if job == id),
        );
        assert!(ended, "the merged end is written back");
    }
}

#[test]
fn a_waiting_parent_frees_its_slot_for_its_child_and_takes_it_back_with_the_answer() {
    let mut s = state();
    let w = worker(&mut s, 1);
    let parent = s
        .submit(
            spec(serde_json::json!({"kind": "sum", "input": [1]})),
            None,
            0,
        )
        .unwrap()
        .id;
    s.dispatch();
    let [(_, running)] = assignments(&mut s)[..] else {
        panic!("the parent's chunk runs");
    };
    let child = s
        .submit_child(
            w,
            running,
            "c",
            spec(serde_json::json!({"kind": "sum", "input": [5]})),
            [0; 32],
            0,
        )
        .unwrap()
        .id;
    // The same key again (a retried attempt, say) finds the same job.
    let again = s.submit_child(
        w,
        running,
        "c",
        spec(serde_json::json!({"kind": "sum", "input": [5]})),
        [0; 32],
        0,
    );
    assert_eq!(again.map(|a| (a.id, a.created)), Ok((child, false)));
    s.dispatch();
    assert!(
        assignments(&mut s).is_empty(),
        "one slot, held by the parent"
    );
    // Waiting frees the slot: the child's chunk goes to the same worker.
    s.await_jobs(w, running, 7, vec![child]).unwrap();
    assert_eq!(s.workers().get(w).map(WorkerEntry::held), Some(0));
    s.dispatch();
    let [(_, child_chunk)] = assignments(&mut s)[..] else {
        panic!("the child's chunk runs on the freed slot");
    };
    assert_eq!(child_chunk.job, child);
    s.outcome(
        w,
        ChunkOutcome {
            chunk: child_chunk,
            result: Outcome::Succeeded(Bytes::from_static(b"5")),
        },
    );
    // The child's end answers the wait, and the parent holds its slot again.
    let answers: Vec<CoordinatorMessage> = s
        .take_effects()
        .into_iter()
        .filter_map(|e| match e {
            Effect::Send { message, .. } => Some(message),
            _ => None,
        })
        .collect();
    match &answers[..] {
        [CoordinatorMessage::JobsEnded {
            request: 7,
            result: Ok(ends),
        }] => {
            assert_eq!(ends[0].status, "succeeded");
            assert_eq!(ends[0].result.as_deref(), Some(&b"5"[..]));
        }
        other => panic!("one answer: {other:?}"),
    }
    assert_eq!(s.workers().get(w).map(WorkerEntry::held), Some(1));
    // A job that is not a child, and an attempt that is not running, are refused.
    assert!(s.await_jobs(w, running, 8, vec![parent]).is_err());
    let stranger = ChunkRef {
        attempt: Attempt(9),
        ..running
    };
    assert!(s.await_jobs(w, stranger, 9, vec![child]).is_err());
}
