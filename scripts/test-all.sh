#!/usr/bin/env bash
# Runs every check and test of the project, from a clean clone on a fresh machine.
# Installs what it needs itself. Called by .ci/run and named in the README.
set -euo pipefail
cd "$(dirname "$0")/.."

# Reuse a target directory outside the clone (kept between sessions when it exists).
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/treeai-target}"
mkdir -p "$CARGO_TARGET_DIR"
export CARGO_TERM_COLOR=never

step() { printf '\n==> %s\n' "$*"; }

step "cargo fmt --check"
cargo fmt --all -- --check

step "deploy/ and Dockerfile: render, validate, policy, promtool, dashboard (scripts/check-deploy.sh)"
scripts/check-deploy.sh

step "cargo clippy (all targets, warnings are errors)"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "cargo build (the treeai binary is used by the end-to-end tests)"
cargo build --workspace --all-targets --locked

step "SQL test clients: psql and psycopg"
command -v psql >/dev/null || { apt-get update -qq && apt-get install -y -qq postgresql-client; }
python3 -c 'import psycopg' 2>/dev/null \
  || python3 -m pip install --quiet 'psycopg[binary]' \
  || python3 -m pip install --quiet --break-system-packages 'psycopg[binary]'

step "S3-compatible server for the lake tests: moto"
python3 -c 'import moto.server, boto3' 2>/dev/null \
  || python3 -m pip install --quiet 'moto[server]' \
  || python3 -m pip install --quiet --break-system-packages 'moto[server]'

step "DuckDB baseline of the city-scale benchmark: its own tests, and the same views as treeai backfill"
python3 -c 'import duckdb' 2>/dev/null \
  || python3 -m pip install --quiet duckdb \
  || python3 -m pip install --quiet --break-system-packages duckdb
python3 benchmarks/duckdb/test_views.py
duck_input="$(mktemp -d)"
"$CARGO_TARGET_DIR/debug/treeai" produce --count 50000 --trees 1000 --seed 3 --bad-fraction 0.01 \
  --output "$duck_input/events.ndjson" >/dev/null
python3 benchmarks/duckdb/compare.py --input "$duck_input/events.ndjson" --treeai "$CARGO_TARGET_DIR/debug/treeai"
rm -rf "$duck_input"

step "Kafka: Tansu broker (installed once) and kcat"
# cargo install keeps its build outside the clone too, so a reinstall is incremental.
CARGO_TARGET_DIR=/var/tmp/tansu-target scripts/kafka.sh install
export KAFKA_ADDR="${KAFKA_ADDR:-127.0.0.1:9092}" KAFKA_STATE=/tmp/treeai-kafka-ci
if ! scripts/kafka.sh status >/dev/null 2>&1; then
  scripts/kafka.sh start
  trap 'scripts/kafka.sh stop' EXIT
fi
export TREEAI_TEST_BROKERS="$KAFKA_ADDR"

step "cargo test"
cargo test --workspace --locked

step "all checks passed"
