#!/usr/bin/env bash
# One CI node's part of a test suite sharded with Muster. Every node of the pipeline runs the
# same command: it starts a worker here (in the checkout), then submits the suite as one `exec`
# job under the pipeline's run id and follows it. The coordinator keeps one job per idempotency
# key, so the nodes share that one job: each node's worker takes batches from it, and each node
# prints the job's output as it comes and ends with its verdict (0: every item passed, flaky
# ones included; 1: an item failed; 2: the job could not run). Then its worker drains and stops.
#
#   shard.sh "ITEMS COMMAND" -- PROGRAM ARG... {items}
#
# For example, for pytest:
#
#   shard.sh "pytest --collect-only -q | grep :: | sort" -- pytest -q --junitxml={junit} {items}
#
# The items command must print the same lines on every node (sort them): the nodes' submissions
# must be the same job, or the coordinator refuses the later ones (409).
#
# Environment:
#   MUSTER_SCHEDULER       the coordinator's URL (a long-running `muster serve` the nodes reach)
#   MUSTER_TOKEN           a client token
#   MUSTER_WORKER_TOKEN    a worker token
#   MUSTER_RUN_ID          the same for every node of one pipeline run, new for each run
#   MUSTER_BIN             where `muster` and `muster-worker` are (default: on PATH)
#   MUSTER_JUNIT_OUT       where the merged JUnit report goes, when an argument holds {junit}
#                          (default: muster-junit.xml)
#   MUSTER_SHARD_FLAGS     more flags for `muster submit exec` (say `--retry-failed 1`)
set -euo pipefail

[[ $# -ge 3 && "$2" == "--" ]] || {
    echo "usage: shard.sh \"ITEMS COMMAND\" -- PROGRAM ARG... {items}" >&2
    exit 2
}
for var in MUSTER_SCHEDULER MUSTER_TOKEN MUSTER_WORKER_TOKEN MUSTER_RUN_ID; do
    [[ -n "${!var:-}" ]] || { echo "shard.sh: $var is not set" >&2; exit 2; }
done
items_from="$1"
shift 2
program="$1"
bin="${MUSTER_BIN:+$MUSTER_BIN/}"
name="ci-${MUSTER_RUN_ID}-$(hostname)-$$"

"${bin}muster-worker" --name "$name" --allow-exec "$program" --exec-dir "$PWD" &
worker=$!
stop_worker() {
    kill -TERM "$worker" 2>/dev/null || true
    wait "$worker" 2>/dev/null || true
}
trap stop_worker EXIT

# Submit once this node's worker is connected: a job whose program no connected worker allows
# is refused.
for _ in $(seq 300); do
    "${bin}muster" workers --json 2>/dev/null | grep -q "\"$name\"" && break
    kill -0 "$worker" 2>/dev/null || { echo "shard.sh: the worker did not start" >&2; exit 2; }
    sleep 0.1
done

# The merged JUnit report, when the program writes one.
junit=()
for arg in "$@"; do
    [[ "$arg" == *"{junit}"* ]] && junit=(--junit-out "${MUSTER_JUNIT_OUT:-muster-junit.xml}")
done

# shellcheck disable=SC2086 # MUSTER_SHARD_FLAGS is a list of flags
"${bin}muster" submit exec --idempotency-key "ci-$MUSTER_RUN_ID" --items-from "$items_from" \
    "${junit[@]}" ${MUSTER_SHARD_FLAGS:-} --wait -- "$@"
