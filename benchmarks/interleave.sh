#!/usr/bin/env bash
# Runs two builds of one benchmark alternately (old, new, old, new, ...), so a
# noisy machine hits both alike, and prints each run's output under a header.
#
#   benchmarks/interleave.sh OLD_BINARY NEW_BINARY ROUNDS [ARGS...]
#
# Build the old binary from an earlier commit first, e.g.
#   git worktree add --detach /tmp/old <commit>
#   (cd /tmp/old && cargo build --release -p treeai-benchmarks) && cp target/release/ingest-bench /tmp/ingest-bench-old
set -euo pipefail
old=$1 new=$2 rounds=$3
shift 3
for i in $(seq 1 "$rounds"); do
  for which in old new; do
    bin=$old; [ "$which" = new ] && bin=$new
    echo "=== round $i: $which ($bin $*)"
    "$bin" "$@"
  done
done
