#!/usr/bin/env bash
# Checkpoint benchmark (issue 10): checkpoint size and duration, ingest with and
# without checkpoints, recovery time, and the embedded default's RSS after 1 and
# 3 event-time hours. Every figure is printed beside its baseline from the same run.
#
#   cargo build --release -p treeai
#   benchmarks/checkpoint.sh [TREES] [EVENTS] [WORKERS]      # defaults 100000 4000000 2
#
# TREEAI_BIN overrides the binary (default target/release/treeai under
# CARGO_TARGET_DIR or ./target).
set -euo pipefail
trees=${1:-100000} events=${2:-4000000} workers=${3:-2}
target=${CARGO_TARGET_DIR:-$(dirname "$0")/../target}
bin=${TREEAI_BIN:-$target/release/treeai}
dir=$(mktemp -d /var/tmp/treeai-ckpt-bench.XXXXXX)
trap 'pkill -P $$ 2>/dev/null || true; rm -rf "$dir"' EXIT
http=127.0.0.1:18181 pg=127.0.0.1:16181

now() { date +%s.%N; }
metric() { curl -s "http://$http/metrics" | awk -v m="$1" '$1 == m { print $2 }'; }
wait_http() { until curl -s -o /dev/null "http://$http/healthz"; do sleep 0.05; done; }
stop() { kill -TERM "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }

# Event time spans one hour, so at the end every tree's window is full (all readings in it).
rate=$(( events / 3600 ))
echo "== input: $events events over $trees trees, one event-time hour ($rate events/s), $workers workers"
"$bin" produce --count "$events" --trees "$trees" --rate "$rate" --output "$dir/events.ndjson" 2>&1 | tail -1

# Time from start to every event read (polled), for a run with the given extra flags.
ingest() {
  local start; start=$(now)
  "$bin" run --workers "$workers" --input "$dir/events.ndjson" --sql-addr $pg --http-addr $http "$@" 2>"$dir/run.log" &
  local pid=$!
  wait_http
  until [ "$(metric treeai_events_read_total)" = "$events" ]; do sleep 0.05; done
  local read; read=$(now)
  until grep -q "input complete" "$dir/run.log"; do sleep 0.05; done
  echo "$(echo "$read - $start" | bc) $(echo "$(now) - $start" | bc) $pid"
}

echo "== ingest: no checkpoints vs a checkpoint every 30 s (and every 5 s), 2 interleaved rounds"
for round in 1 2; do
  rm -rf "$dir/ck" "$dir/lake"
  set -- $(ingest --no-lake --no-checkpoint); base=$1; stop "$3"
  rm -rf "$dir/ck"
  set -- $(ingest --no-lake --checkpoint-url "$dir/ck" --checkpoint-interval-ms 30000); c30=$1; c30_done=$2; stop "$3"
  rm -rf "$dir/ck"
  set -- $(ingest --no-lake --checkpoint-url "$dir/ck" --checkpoint-interval-ms 5000); c5=$1; c5_done=$2
  bytes=$(metric treeai_checkpoint_bytes); count=$(metric treeai_checkpoint_seconds_count)
  sum=$(metric treeai_checkpoint_seconds_sum)
  stop "$3"
  printf 'round %s: read all in %.2f s (no checkpoints) | %.2f s (every 30 s, ratio %.2f) | %.2f s (every 5 s, ratio %.2f, %s checkpoints, mean %.2f s, last %s bytes); with final checkpoint %.2f / %.2f s\n' \
    "$round" "$base" "$c30" "$(echo "$base / $c30" | bc -l)" "$c5" "$(echo "$base / $c5" | bc -l)" \
    "$count" "$(echo "$sum / $count" | bc -l)" "$bytes" "$c30_done" "$c5_done"
done

echo "== recovery: restart from the final checkpoint (nothing to replay) vs a cold start replaying the input"
ls "$dir/ck"
start=$(now)
"$bin" run --workers "$workers" --input "$dir/events.ndjson" --no-lake --checkpoint-url "$dir/ck" --sql-addr $pg --http-addr $http 2>"$dir/run.log" &
pid=$!
wait_http
until curl -sf -o /dev/null "http://$http/readyz"; do sleep 0.02; done
restored=$(echo "$(now) - $start" | bc)
printf 'restore from the final checkpoint to ready: %.2f s (treeai_restore_seconds %s); state %s\n' \
  "$restored" "$(metric treeai_restore_seconds)" "$(grep -o 'resumed from checkpoint.*' "$dir/run.log")"
stop $pid
printf 'baseline, replaying the whole input instead: %.2f s\n' "$base"

echo "== crash mid-stream: kill -9 after a checkpoint, restart: start to ready (restored and caught up)"
rm -rf "$dir/ck"
"$bin" run --workers "$workers" --input "$dir/events.ndjson" --no-lake --checkpoint-url "$dir/ck" --checkpoint-interval-ms 3000 --sql-addr $pg --http-addr $http 2>"$dir/run.log" &
pid=$!
wait_http
until [ "$(metric treeai_checkpoint_number)" -ge 2 ] 2>/dev/null; do sleep 0.05; done
kill -9 $pid; wait $pid 2>/dev/null || true
start=$(now)
"$bin" run --workers "$workers" --input "$dir/events.ndjson" --no-lake --checkpoint-url "$dir/ck" --sql-addr $pg --http-addr $http 2>"$dir/run.log" &
pid=$!
wait_http
until curl -sf -o /dev/null "http://$http/readyz"; do sleep 0.02; done
printf 'kill -9 after checkpoint 2, restart to ready: %.2f s (%s)\n' "$(echo "$(now) - $start" | bc)" \
  "$(grep -o 'resumed from checkpoint.*' "$dir/run.log")"
stop $pid

echo "== embedded default, RSS after 1 and 3 event-time hours (--speedup 120, no lake, no checkpoints)"
"$bin" run --workers "$workers" --trees 10000 --rate 20000 --speedup 120 --no-lake --no-checkpoint --sql-addr $pg --http-addr $http 2>"$dir/run.log" &
pid=$!
wait_http
first=""
for hour in 1 3; do
  while :; do
    w=$(metric treeai_input_watermark_ms); w=${w%.*}
    [ -n "$w" ] && [ -z "$first" ] && first=$w
    [ -n "$w" ] && [ "$w" -ge $(( first + hour * 3600000 )) ] && break
    sleep 0.5
  done
  rss=$(awk '/VmRSS/ { print $2 }' /proc/$pid/status)
  echo "after $hour event-time hour(s): RSS $(( rss / 1024 )) MB"
done
stop $pid
