#!/usr/bin/env bash
# Shards this repository's own test suite across three local workers with an `exec` job: lists
# every test with `cargo test -- --list`, then runs them in batches, each batch one
# `cargo test -- --exact NAME...` process, and exits with the verdict.
#
#   bash examples/ci/shard-own-tests.sh [BATCHES]
set -euo pipefail
cd "$(dirname "$0")/../.."
batches="${1:-12}"

cargo build --workspace --bins
cargo test --workspace --no-run -q

data="$(mktemp -d)"
./target/debug/muster up --workers 3 --bind 127.0.0.1:0 --data-dir "$data" --allow-exec cargo \
    >"$data/up.log" 2>&1 &
up=$!
trap 'kill "$up" 2>/dev/null; wait "$up" 2>/dev/null; rm -rf "$data"' EXIT
url=""
for _ in $(seq 600); do
    url="$(sed -n 's/^muster listening on //p' "$data/up.log")"
    [[ -n "$url" && -f "$data/client.token" ]] && break
    sleep 0.1
done
[[ -n "$url" ]] || { echo "muster up did not start:" >&2; cat "$data/up.log" >&2; exit 2; }

MUSTER_TOKEN="$(cat "$data/client.token")" ./target/debug/muster submit exec \
    --scheduler "$url" --chunks "$batches" --wait \
    --items-from "cargo test --workspace -q -- --list --format=terse 2>/dev/null | sed -n 's/: test\$//p' | sort -u" \
    -- cargo test --workspace -q -- --exact {items}
