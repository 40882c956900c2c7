#!/usr/bin/env bash
# A local Kafka-protocol broker for tests and for trying treeai: Tansu with in-memory storage.
#
#   scripts/kafka.sh install          # cargo install tansu (skipped when installed), kcat and
#                                     # stunnel4 (apt: the TLS test puts stunnel in front of
#                                     # Tansu) and the librdkafka scripts/kcat runs it with
#   scripts/kafka.sh start            # start Tansu on $KAFKA_ADDR, create the topics
#   scripts/kafka.sh topics           # (re)create the topics
#   scripts/kafka.sh stop             # stop the broker started by `start`
#   scripts/kafka.sh status
#
# Environment: KAFKA_ADDR (default 127.0.0.1:9092), KAFKA_PARTITIONS (default 4),
# KAFKA_STATE (pid and log files, default /tmp/treeai-kafka).
set -euo pipefail

ADDR="${KAFKA_ADDR:-127.0.0.1:9092}"
PARTITIONS="${KAFKA_PARTITIONS:-4}"
STATE="${KAFKA_STATE:-/tmp/treeai-kafka}"
TOPICS=(treeai.trees treeai.assessments treeai.readings treeai.alerts treeai.deadletter)
export PATH="$HOME/.cargo/bin:$PATH"

say() { echo "kafka.sh: $*" >&2; }

# Tansu's storage engines: memory (dynostore) for the broker below, and libsql (SQLite) for the
# retention-gap test (tests/src/retention.rs): with SQLite storage Tansu applies a topic's
# retention.ms (cleanup.policy=delete), deleting the head of a partition as Kafka does.
TANSU_FEATURES="dynostore,libsql"

tansu_installed() {
    command -v tansu >/dev/null || return 1
    # cargo records the features of what it installed; an older install lacks libsql.
    local crates="${CARGO_HOME:-$HOME/.cargo}/.crates2.json"
    [ ! -f "$crates" ] || python3 - "$crates" <<'EOF'
import json, sys
installs = json.load(open(sys.argv[1])).get("installs", {})
sys.exit(0 if any(k.startswith("tansu ") and "libsql" in v.get("features", []) for k, v in installs.items()) else 1)
EOF
}

install() {
    if ! tansu_installed; then
        say "installing Tansu (cargo install tansu --locked --features $TANSU_FEATURES; several minutes on 2 cores)"
        cargo install tansu --locked --features "$TANSU_FEATURES"
    fi
    local missing=()
    command -v kcat >/dev/null || missing+=(kcat)
    command -v stunnel4 >/dev/null || missing+=(stunnel4)
    [ -f /usr/include/zstd.h ] || missing+=(libzstd-dev)
    [ -f /usr/include/openssl/ssl.h ] || missing+=(libssl-dev)
    if [ "${#missing[@]}" -gt 0 ]; then
        say "installing ${missing[*]} (Debian packages)"
        local sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
        $sudo apt-get install -y -q "${missing[@]}" >/dev/null \
            || { $sudo apt-get update -qq && $sudo apt-get install -y -q "${missing[@]}" >/dev/null; }
    fi
    librdkafka
}

# Debian 12's kcat links librdkafka 2.0.2, which cannot parse Tansu's ApiVersions
# response (and older protocol versions do not work either). scripts/kcat runs
# the same Debian kcat binary with the librdkafka that rdkafka-sys bundles (same
# ABI, librdkafka.so.1), built here once as a shared library.
LIBRDKAFKA_DIR="${TREEAI_LIBRDKAFKA:-/var/tmp/treeai-librdkafka}"
librdkafka() {
    # Rebuilt when an older build lacks TLS or zstd (the features file says what it has).
    [ -f "$LIBRDKAFKA_DIR/lib/librdkafka.so.1" ] && [ "$(cat "$LIBRDKAFKA_DIR/lib/features" 2>/dev/null)" = "ssl zstd" ] \
        && return 0
    local root src
    root="$(cd "$(dirname "$0")/.." && pwd)"
    src="$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/rdkafka-sys-*/librdkafka 2>/dev/null | sort -V | tail -1)"
    if [ -z "$src" ]; then
        (cd "$root" && cargo fetch --locked >/dev/null)
        src="$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/rdkafka-sys-*/librdkafka | sort -V | tail -1)"
    fi
    say "building librdkafka.so.1 for kcat from $src (about a minute)"
    rm -rf "$LIBRDKAFKA_DIR/build" && mkdir -p "$LIBRDKAFKA_DIR/lib" && cp -r "$src" "$LIBRDKAFKA_DIR/build"
    (cd "$LIBRDKAFKA_DIR/build" \
        && ./configure --enable-ssl --enable-zstd --disable-gssapi --disable-curl --disable-lz4-ext --disable-sasl >/dev/null \
        && make -j"$(nproc)" -C src librdkafka.so.1 >/dev/null)
    cp "$LIBRDKAFKA_DIR/build/src/librdkafka.so.1" "$LIBRDKAFKA_DIR/lib/"
    echo "ssl zstd" >"$LIBRDKAFKA_DIR/lib/features"
}

running() {
    [ -f "$STATE/pid" ] && kill -0 "$(cat "$STATE/pid")" 2>/dev/null
}

listening() {
    local host="${ADDR%:*}" port="${ADDR##*:}"
    (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null
}

wait_ready() {
    for _ in $(seq 1 100); do
        if ! kill -0 "$(cat "$STATE/pid")" 2>/dev/null; then break; fi
        if listening; then return 0; fi
        sleep 0.1
    done
    say "broker did not listen on $ADDR; log: $STATE/broker.log"
    tail -20 "$STATE/broker.log" >&2 || true
    return 1
}

topics() {
    for t in "${TOPICS[@]}"; do
        tansu topic delete "$t" --broker "tcp://$ADDR" >/dev/null 2>&1 || true
        tansu topic create "$t" --broker "tcp://$ADDR" --partitions "$PARTITIONS" >/dev/null
    done
    say "topics ${TOPICS[*]} with $PARTITIONS partitions each"
}

start() {
    install
    mkdir -p "$STATE"
    if running; then
        say "already running (pid $(cat "$STATE/pid")) on $ADDR"
        return 0
    fi
    if listening; then
        say "something already listens on $ADDR: using it as the broker (not started here)"
        topics
        return 0
    fi
    nohup tansu broker --storage-engine memory://tansu/ \
        --listener-url "tcp://$ADDR" --advertised-listener-url "tcp://$ADDR" \
        >"$STATE/broker.log" 2>&1 &
    echo $! >"$STATE/pid"
    wait_ready
    topics
    say "Tansu on $ADDR (pid $(cat "$STATE/pid")), memory storage"
}

stop() {
    if running; then
        kill "$(cat "$STATE/pid")" && say "stopped"
    fi
    rm -f "$STATE/pid"
}

case "${1:-}" in
    install) install ;;
    start) start ;;
    topics) topics ;;
    stop) stop ;;
    status) if running; then echo "running on $ADDR (pid $(cat "$STATE/pid"))"; else echo "not running"; exit 1; fi ;;
    *) echo "usage: $0 install|start|topics|stop|status" >&2; exit 2 ;;
esac
