//! Threads kept for the parallel parts of reading a large body (locating an integer array,
//! cutting and packing it) and of merging large sorted results. They are started once and reused:
//! a thread started for each request took its allocations from a fresh allocator arena every
//! time, so the chunks it packed (half of a W2 job's 40 MB) were faulted in anew on every request.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{mpsc, Arc, Mutex, OnceLock};

type Task = Box<dyn FnOnce() + Send>;

/// Most helper threads kept (one fewer than the cores, as a caller works on its own share too).
const MOST: usize = 3;

/// The helpers' queue, started on first use; `None` when no thread could be started.
fn helpers() -> Option<&'static mpsc::Sender<Task>> {
    static HELPERS: OnceLock<Option<mpsc::Sender<Task>>> = OnceLock::new();
    HELPERS
        .get_or_init(|| {
            let (tx, rx) = mpsc::channel::<Task>();
            let rx = Arc::new(Mutex::new(rx));
            let n = std::thread::available_parallelism()
                .map_or(1, usize::from)
                .saturating_sub(1)
                .clamp(1, MOST);
            let started = (0..n)
                .filter(|k| {
                    let rx = rx.clone();
                    std::thread::Builder::new()
                        .name(format!("muster-cut-{k}"))
                        .spawn(move || loop {
                            // The lock is held only while waiting, not while a task runs.
                            let task = rx.lock().unwrap_or_else(|p| p.into_inner()).recv();
                            match task {
                                Ok(task) => task(),
                                Err(_) => return,
                            }
                        })
                        .is_ok()
                })
                .count();
            (started > 0).then_some(tx)
        })
        .as_ref()
}

/// A share is waiting for a helper.
const WAITING: u8 = 0;
/// A helper took the share.
const TAKEN: u8 = 1;
/// The calling thread took the share back.
const TAKEN_BACK: u8 = 2;

/// Runs `f(0)` on this thread and `f(1)` to `f(n - 1)` on helper threads, and gives the results
/// in that order. A share no helper has started by the time this thread finished its own is run
/// here instead (the helpers may be busy with another request), so no call waits on another's
/// work. A share that panicked on a helper gives `None`; a panic here unwinds as usual. When this
/// returns, no helper holds `f` any more.
pub(crate) fn run_shares<T, F>(n: usize, f: F) -> Vec<Option<T>>
where
    T: Send + 'static,
    F: Fn(usize) -> T + Send + Sync + 'static,
{
    let f = Arc::new(f);
    let mut others = Vec::with_capacity(n.saturating_sub(1));
    for k in 1..n {
        let state = Arc::new(AtomicU8::new(WAITING));
        let (done_tx, done_rx) = mpsc::sync_channel(1);
        // Helpers hold `f` (and what it holds, a request's body say) only while they run it: a
        // task left queued, its share taken back, must not keep the body from being reused.
        let (share, taken) = (Arc::downgrade(&f), state.clone());
        let task: Task = Box::new(move || {
            if taken
                .compare_exchange(WAITING, TAKEN, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                // The caller holds `f` until every share a helper took has answered.
                let result = share.upgrade().and_then(|share| {
                    let result = catch_unwind(AssertUnwindSafe(|| share(k))).ok();
                    drop(share);
                    result
                });
                let _ = done_tx.send(result);
            }
        });
        // Without helpers, or if the queue is gone, the share stays waiting and is run here.
        let _ = helpers().map(|tx| tx.send(task));
        others.push((k, state, done_rx));
    }
    let mut out = Vec::with_capacity(n.max(1));
    out.push(Some(f(0)));
    for (k, state, done) in others {
        let mine = state
            .compare_exchange(WAITING, TAKEN_BACK, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        out.push(if mine {
            Some(f(k))
        } else {
            done.recv().ok().flatten()
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_share_runs_once_in_order_even_when_many_callers_compete() {
        let callers: Vec<_> = (0..8)
            .map(|c| {
                std::thread::spawn(move || {
                    for round in 0..50 {
                        let got = run_shares(4, move |k| (c, round, k));
                        let want: Vec<_> = (0..4).map(|k| Some((c, round, k))).collect();
                        assert_eq!(got, want);
                    }
                })
            })
            .collect();
        for caller in callers {
            caller.join().expect("caller");
        }
    }

    #[test]
    fn a_share_that_panics_on_a_helper_gives_none_and_the_helpers_go_on() {
        let started = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let seen = started.clone();
        let got = run_shares(3, move |k| {
            let on_helper = std::thread::current()
                .name()
                .is_some_and(|n| n.starts_with("muster-cut"));
            if k == 0 {
                // Holds this thread until a helper has taken share 2 (bounded).
                let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
                while !seen.load(Ordering::Acquire) && std::time::Instant::now() < deadline {
                    std::thread::yield_now();
                }
            }
            if k == 2 && on_helper {
                seen.store(true, Ordering::Release);
                panic!("share 2 fails on a helper");
            }
            k
        });
        assert_eq!(got, vec![Some(0), Some(1), None]);
        assert!(started.load(Ordering::Acquire));
        assert_eq!(run_shares(3, |k| k * 10), vec![Some(0), Some(10), Some(20)]);
    }

    #[test]
    fn nothing_a_share_holds_outlives_the_call() {
        for _ in 0..50 {
            let held = Arc::new(());
            let inside = held.clone();
            let got = run_shares(3, move |k| {
                let _ = &inside;
                k
            });
            assert_eq!(got, vec![Some(0), Some(1), Some(2)]);
            assert_eq!(
                Arc::strong_count(&held),
                1,
                "a helper still holds the share"
            );
        }
    }
}
