//! Property: for any input and any chunk count, splitting, running the chunk tasks and reducing
//! gives exactly the single-chunk result. Seeded, so every run checks the same cases.

use bytes::Bytes;
use muster_shared::ints::pack_chunks;
use muster_shared::job::{Chunking, Input, Kind};
use muster_shared::split::{chunk_count, split};
use muster_shared::task::BUILTIN_TASKS;
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed};
use serde_json::Value;

fn task_of(kind: &Kind) -> fn(&[u8]) -> Result<Bytes, muster_shared::task::TaskError> {
    BUILTIN_TASKS
        .iter()
        .find(|(name, _)| *name == kind.task())
        .map(|(_, f)| *f)
        .expect("built-in task")
}

/// Runs every chunk through the kind's task and reduces the partial results.
fn run_chunks(kind: &Kind, chunks: &[Bytes]) -> String {
    let task = task_of(kind);
    let partials: Vec<Bytes> = chunks
        .iter()
        .map(|c| task(c).expect("task succeeds"))
        .collect();
    kind.reducer().reduce(&partials).expect("reduce succeeds")
}

fn run(kind: &Kind, input: &Input, chunks: u64) -> String {
    run_chunks(kind, &split(kind, input, Chunking::Count(chunks), 1))
}

/// Cuts an integer array the way the coordinator does (packed) and runs it.
fn run_ints(kind: &Kind, items: &[i64], chunks: u64) -> String {
    let text = serde_json::to_string(items).expect("json");
    let descending = matches!(kind, Kind::Sort { descending: true });
    let packed = pack_chunks(
        &Bytes::from(text),
        |len| chunk_count(len, Chunking::Count(chunks), 1),
        descending,
    )
    .expect("integers");
    run_chunks(kind, &packed)
}

fn config() -> Config {
    Config {
        cases: 200,
        rng_seed: RngSeed::Fixed(0x6d75_7374),
        failure_persistence: None,
        ..Config::default()
    }
}

fn number() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<i64>().prop_map(Value::from),
        (-1e6f64..1e6).prop_map(Value::from),
        (0i64..5).prop_map(Value::from),
        (0i64..5).prop_map(|i| Value::from(i as f64)),
    ]
}

fn text() -> impl Strategy<Value = String> {
    proptest::collection::vec(
        prop_oneof![
            Just("a"),
            Just("B"),
            Just("ab"),
            Just("Ünï"),
            Just("ünï"),
            Just("x1"),
            Just(" "),
            Just("  "),
            Just("\n"),
            Just(","),
            Just("-"),
            Just("\t"),
            Just("日本")
        ],
        0..200,
    )
    .prop_map(|parts| parts.concat())
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn sum_is_the_same_for_any_chunking(items in proptest::collection::vec(any::<i64>(), 0..300), n in 1u64..40) {
        let expected: i128 = items.iter().map(|&v| i128::from(v)).sum();
        prop_assert_eq!(run_ints(&Kind::Sum, &items, n), expected.to_string());
        prop_assert_eq!(run_ints(&Kind::Sum, &items, n), run_ints(&Kind::Sum, &items, 1));
    }

    #[test]
    fn sort_is_the_same_for_any_chunking(items in proptest::collection::vec(number(), 0..300), n in 1u64..40, descending: bool) {
        let kind = Kind::Sort { descending };
        let input = Input::Items(items);
        prop_assert_eq!(run(&kind, &input, n), run(&kind, &input, 1));
    }

    #[test]
    fn string_sort_is_the_same_for_any_chunking(items in proptest::collection::vec("[a-c]{0,3}", 0..200), n in 1u64..30, descending: bool) {
        let kind = Kind::Sort { descending };
        let input = Input::Items(items.into_iter().map(Value::String).collect());
        prop_assert_eq!(run(&kind, &input, n), run(&kind, &input, 1));
    }

    #[test]
    fn wordcount_is_the_same_for_any_chunking(text in text(), n in 1u64..40, top in proptest::option::of(1usize..5)) {
        let kind = Kind::Wordcount { top };
        let input = Input::Text(text);
        prop_assert_eq!(run(&kind, &input, n), run(&kind, &input, 1));
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn integer_sort_is_the_same_for_any_chunking(items in proptest::collection::vec(any::<i64>(), 0..300), n in 1u64..40, descending: bool) {
        let kind = Kind::Sort { descending };
        let mut expected = items.clone();
        expected.sort();
        if descending {
            expected.reverse();
        }
        prop_assert_eq!(run_ints(&kind, &items, n), serde_json::to_string(&expected).unwrap());
    }
}

/// The ordinary way to read a body: serde, then validation.
fn parse_slowly(body: &[u8]) -> String {
    match serde_json::from_slice::<muster_shared::job::RawJob>(body) {
        Ok(raw) => format!("{:?}", raw.validate(3).map_err(|e| e.0)),
        Err(e) => format!("{:?}", Err::<(), _>(e.to_string())),
    }
}

fn member() -> impl Strategy<Value = String> {
    let fixed = |m: &str| Just(m.to_owned());
    prop_oneof![
        3 => fixed(r#""kind": "sum""#),
        1 => fixed(r#""kind": "sort""#),
        3 => fixed(r#""task": "t""#),
        1 => fixed(r#""reduce": "sum""#),
        3 => fixed(r#""chunks": 2"#),
        3 => fixed(r#""chunks": [[1], "]", {"a": [2]}]"#),
        1 => fixed(r#""descending": true"#),
        1 => fixed(r#""inp\u0075t": [7, 8]"#),
        1 => fixed(r#""input": [1, [2]]"#),
        1 => fixed(r#""input": [1.5, 2]"#),
        1 => fixed(r#""input": ["b", "a"]"#),
        1 => fixed(r#""input": "words here""#),
        1 => fixed(r#""input": [01]"#),
        1 => fixed(r#""input": [-0, 3]"#),
        1 => fixed(r#""unknown": 1"#),
        3 => proptest::collection::vec(-1000i64..1000, 0..20)
            .prop_map(|v| format!(r#""input": {}"#, serde_json::to_string(&v).expect("json"))),
    ]
}

proptest! {
    #![proptest_config(Config { cases: 2000, ..config() })]

    #[test]
    fn the_body_shortcut_answers_as_the_ordinary_parse_does(
        members in proptest::collection::vec(member(), 0..6),
        spaced in any::<bool>(),
        trailing in prop_oneof![Just(""), Just(" "), Just(","), Just("x")],
    ) {
        let sep = if spaced { " ,\n " } else { "," };
        let body = format!("{{{}}}{trailing}", members.join(sep));
        let fast = format!(
            "{:?}",
            muster_shared::body::parse_job(&Bytes::from(body.clone()), 3).map_err(|e| e.to_string())
        );
        prop_assert_eq!(fast, parse_slowly(body.as_bytes()), "{}", body);
    }
}
