//! Micro-benchmarks of the hot paths that do not need a network: the frame codec, the integer
//! fast path, and the reducers. `cargo bench -p muster-shared`.

use bytes::Bytes;
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use muster_shared::body::parse_job;
use muster_shared::ids::{Attempt, ChunkIndex, JobId, WorkerId};
use muster_shared::ints::{pack_chunks, parse_ints};
use muster_shared::protocol::{decode, encode, Assignment, ChunkRef, CoordinatorMessage, Frame};
use muster_shared::reduce::{Fold, Reducer};

fn frame(chunks: usize, payload: &Bytes) -> Frame<CoordinatorMessage> {
    let job = JobId::new();
    Frame {
        worker: WorkerId::new(),
        messages: (0..chunks as u32)
            .map(|i| {
                CoordinatorMessage::Assign(Assignment {
                    chunk: ChunkRef {
                        job,
                        chunk: ChunkIndex(i),
                        attempt: Attempt(1),
                    },
                    task: "sum".into(),
                    input: payload.clone(),
                })
            })
            .collect(),
    }
}

fn codec(c: &mut Criterion) {
    let tiny = Bytes::from_static(b"[1,2,3,4,5,6,7,8,9,10]");
    let batch = frame(64, &tiny);
    let mut g = c.benchmark_group("codec");
    g.throughput(Throughput::Elements(64));
    g.bench_function("encode 64 tiny assignments", |b| {
        b.iter(|| encode(black_box(&batch)))
    });
    let bytes = encode(&batch);
    g.bench_function("decode 64 tiny assignments", |b| {
        b.iter(|| decode::<CoordinatorMessage>(black_box(&bytes)).map(|f| f.messages.len()))
    });
    g.finish();
}

fn ints(c: &mut Criterion) {
    let values: Vec<i64> = (0..1_000_000)
        .map(|v| v * 4_294_967 % 4_294_967_296)
        .collect();
    let text = serde_json::to_string(&values).unwrap_or_default();
    let mut g = c.benchmark_group("ints");
    g.throughput(Throughput::Bytes(text.len() as u64));
    let shared = Bytes::from(text.clone());
    g.bench_function("check, cut into 100 chunks and pack 1M integers", |b| {
        b.iter(|| pack_chunks(black_box(&shared), |_| 100, false).map(|c| c.len()))
    });
    let body = Bytes::from(format!(
        r#"{{"kind": "sum", "chunks": 100, "input": {text}}}"#
    ));
    g.bench_function(
        "read a job body of 1M integers: locate, check, cut into 100 and pack",
        |b| b.iter(|| parse_job(black_box(&body), 2).is_ok()),
    );
    g.bench_function("parse 1M integers from JSON", |b| {
        b.iter(|| parse_ints(black_box(text.as_bytes())).map(|v| v.len()))
    });
    // As Python's `json.dumps` writes arrays by default.
    let spaced = Bytes::from(text.replace(',', ", "));
    g.throughput(Throughput::Bytes(spaced.len() as u64));
    g.bench_function("check, cut and pack 1M integers separated by \", \"", |b| {
        b.iter(|| pack_chunks(black_box(&spaced), |_| 100, false).map(|c| c.len()))
    });
    g.finish();
}

/// `n` seeded random integers below 2^32 (xorshift from `seed`).
fn random_below_2_32(seed: &mut u64, n: usize) -> Vec<i64> {
    (0..n)
        .map(|_| {
            *seed ^= *seed << 13;
            *seed ^= *seed >> 7;
            *seed ^= *seed << 17;
            (*seed >> 32) as i64
        })
        .collect()
}

fn reducers(c: &mut Criterion) {
    let partials: Vec<Bytes> = (0..100)
        .map(|i| Bytes::from(format!("{}", i * 1_000_003)))
        .collect();
    let runs: Vec<Bytes> = (0..16)
        .map(|r| {
            let run: Vec<i64> = (0..10_000).map(|v| v * 16 + r).collect();
            Bytes::from(serde_json::to_vec(&run).unwrap_or_default())
        })
        .collect();
    // W3's shape: 16 packed sorted runs of 125k seeded random integers below 2^32.
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let w3_runs: Vec<Bytes> = (0..16)
        .map(|_| {
            let mut run = random_below_2_32(&mut seed, 125_000);
            run.sort_unstable();
            muster_shared::packed::pack(&run, false)
        })
        .collect();
    let counts: Vec<Bytes> = (0..16)
        .map(|r| Bytes::from(format!(r#"{{"a": {r}, "b{r}": 2, "c": 3}}"#)))
        .collect();
    let mut g = c.benchmark_group("reduce");
    g.bench_function("sum of 100 partials", |b| {
        b.iter(|| Reducer::Sum.reduce(black_box(&partials)))
    });
    g.throughput(Throughput::Elements(160_000));
    g.bench_function("merge 16 sorted runs of 10k integers", |b| {
        b.iter(|| Reducer::MergeSorted { descending: false }.reduce(black_box(&runs)))
    });
    g.throughput(Throughput::Elements(2_000_000));
    g.sample_size(10);
    g.bench_function("merge 16 packed sorted runs of 125k random integers", |b| {
        b.iter(|| Reducer::MergeSorted { descending: false }.reduce(black_box(&w3_runs)))
    });
    // The same merge's end when the first 15 runs were folded while the last chunk ran: what is
    // left once the last run arrives.
    g.bench_function(
        "end of a fold of 16 packed sorted runs of 125k random integers",
        |b| {
            b.iter_batched(
                || {
                    let fold = Fold::for_reducer(Reducer::MergeSorted { descending: false })
                        .expect("merge_sorted folds");
                    for run in &w3_runs[..15] {
                        fold.push(run.clone());
                    }
                    // Time for the fold's thread to take them in (it is not measured).
                    std::thread::sleep(std::time::Duration::from_millis(400));
                    fold
                },
                |fold| {
                    fold.push(w3_runs[15].clone());
                    fold.finish(16)
                },
                criterion::BatchSize::PerIteration,
            )
        },
    );
    // A W3 chunk as a worker gets it: 125k random integers below 2^32, packed, not sorted.
    let chunk = muster_shared::packed::pack(&random_below_2_32(&mut seed, 125_000), false);
    g.throughput(Throughput::Elements(125_000));
    g.bench_function("sort a packed chunk of 125k random integers", |b| {
        b.iter(|| muster_shared::packed::Packed::read(black_box(&chunk)).map(|run| run.sorted()))
    });
    g.throughput(Throughput::Elements(16));
    g.bench_function("count_map of 16 partials", |b| {
        b.iter(|| Reducer::CountMap { top: Some(2) }.reduce(black_box(&counts)))
    });
    g.finish();
}

criterion_group!(benches, codec, ints, reducers);
criterion_main!(benches);
