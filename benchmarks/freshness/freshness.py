#!/usr/bin/env python3
"""Freshness as a user sees it (issue 11): the time from an assessment produced to Kafka to
the moment `afiss_current` shows it over psycopg, while `treeai produce` keeps the broker busy
at --rate events/s; beside the baseline measured in the same run, on the same broker and load:
a bare produce -> consume round trip of the same message through a topic of its own.

    scripts/kafka.sh start
    python3 -m pip install 'psycopg[binary]' confluent-kafka
    python3 benchmarks/freshness/freshness.py --treeai target/release/treeai \
        [--brokers 127.0.0.1:9092] [--trees 10000] [--rate 10000] [--probes 300] [--workers 2]

One probe is: produce one message (the time starts before the produce call), then poll until
it is seen -- for the pipeline, `select assessment_id from afiss_current where tree_id =
'T-PROBE'` over one psycopg connection every 0.5 ms until it returns the probe's id; for the
baseline, a consumer assigned to the end of the probe topic, fetching as the pipeline's source
does (fetch.wait.max.ms=5). Pipeline and baseline probes
alternate, 40-90 ms apart (random, so that they do not lock to the pipeline's rounds). Both use
the same producer (librdkafka through confluent-kafka, linger.ms=0), so its latency is in both.

Prints p50/p90/p99 of both, their ratio (target: pipeline p50 within 2x of the round trip,
pipeline p99 < 50 ms at 10k trees, < 100 ms at 1M trees), and the pipeline's own
`treeai_freshness_seconds` over the measurement (arrival at the source -> visible to SQL).
"""

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

import psycopg
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic


def free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def quantiles(xs):
    xs = sorted(xs)
    q = lambda p: xs[min(len(xs) - 1, int(p * len(xs)))]  # noqa: E731
    return q(0.5), q(0.9), q(0.99)


def metrics(http):
    with urllib.request.urlopen(f"http://{http}/metrics", timeout=5) as r:
        return r.read().decode()


def freshness_buckets(text):
    """{le: cumulative count} of treeai_freshness_seconds (le in seconds; inf for +Inf)."""
    out = {}
    for line in text.splitlines():
        if line.startswith("treeai_freshness_seconds_bucket{"):
            le = line.split('le="', 1)[1].split('"', 1)[0]
            out[float("inf") if le == "+Inf" else float(le)] = float(line.rsplit(" ", 1)[1])
    return out


def bucket_quantile(before, after, p):
    """Prometheus' histogram_quantile over the increase between two scrapes (linear within a bucket)."""
    les = sorted(after)
    inc = [after[le] - before.get(le, 0.0) for le in les]
    total = inc[-1]
    if total <= 0:
        return float("nan")
    rank, prev_le, prev_n = p * total, 0.0, 0.0
    for le, n in zip(les, inc):
        if n >= rank:
            if le == float("inf"):
                return prev_le
            return prev_le + (le - prev_le) * (rank - prev_n) / max(n - prev_n, 1e-9)
        prev_le, prev_n = le, n
    return les[-2]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--treeai", required=True, help="the treeai binary (release)")
    ap.add_argument("--brokers", default="127.0.0.1:9092")
    ap.add_argument("--trees", type=int, default=10_000)
    ap.add_argument("--rate", type=float, default=10_000.0, help="background events/s (treeai produce)")
    ap.add_argument("--probes", type=int, default=300, help="probes of each kind")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--run-arg", action="append", default=[],
                    help="one more argument for `treeai run` (repeatable), e.g. --run-arg=--kafka-property=fetch.wait.max.ms=10")
    args = ap.parse_args()
    rnd = random.Random(args.seed)

    prefix = f"fresh{os.getpid()}"
    topics = {k: f"{prefix}.{k}" for k in ("trees", "assessments", "readings", "alerts", "deadletter", "probe")}
    admin = AdminClient({"bootstrap.servers": args.brokers})
    futures = admin.create_topics([NewTopic(t, args.partitions, 1) for t in topics.values()])
    for t, f in futures.items():
        f.result(timeout=30)
    topic_flags = [
        f"--{k}-topic={topics[k]}" for k in ("trees", "assessments", "readings", "alerts", "deadletter")
    ]
    work = tempfile.mkdtemp(prefix="freshness-bench-")
    sql, http = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    procs = []

    def stop_all():
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()

    try:
        # The background load: the generator's registry, then readings and assessments at --rate
        # events/s of wall clock, event time starting now.
        produce_log = open(os.path.join(work, "produce.log"), "w")
        procs.append(
            subprocess.Popen(
                [args.treeai, "produce", "--brokers", args.brokers, "--trees", str(args.trees),
                 "--rate", str(args.rate), "--start", "now", "--seed", str(args.seed), *topic_flags],
                stdout=produce_log, stderr=subprocess.STDOUT,
            )
        )
        run_log = open(os.path.join(work, "run.log"), "w")
        procs.append(
            subprocess.Popen(
                [args.treeai, "run", "--brokers", args.brokers, "--workers", str(args.workers),
                 "--no-lake", "--no-checkpoint", "--sql-addr", sql, "--http-addr", http,
                 "--data-dir", os.path.join(work, "data"), *topic_flags, *args.run_arg],
                stdout=run_log, stderr=subprocess.STDOUT, cwd=work,
            )
        )

        producer = Producer({"bootstrap.servers": args.brokers, "linger.ms": 0, "acks": "all"})
        # The probe tree, registered like any other (its region and baseline are ordinary).
        now_ms = int(time.time() * 1000)
        tree = {"type": "tree", "tree_id": "T-PROBE", "region": "eu-west", "lat": 51.5, "lon": -0.12,
                "baseline_tilt_deg": 1.0, "updated_at": now_ms}
        producer.produce(topics["trees"], json.dumps(tree).encode(), key=b"T-PROBE")
        producer.flush(10)

        host, port = sql.split(":")
        deadline = time.time() + 600
        conn = None
        while True:
            if any(p.poll() is not None for p in procs):
                raise SystemExit(f"a child exited; logs in {work}")
            try:
                conn = conn or psycopg.connect(f"host={host} port={port} user=bench dbname=treeai", autocommit=True)
                row = conn.execute("select count(*) from trees").fetchone()
                probe_tree = conn.execute("select count(*) from trees where tree_id = 'T-PROBE'").fetchone()
                if row[0] >= args.trees and probe_tree[0] == 1:
                    break
            except psycopg.OperationalError:
                conn = None
            if time.time() > deadline:
                raise SystemExit(f"the registry did not load within 600 s; logs in {work}")
            time.sleep(0.5)
        print(f"freshness-bench: {args.trees} trees loaded; background load {args.rate:.0f} events/s; "
              f"{args.probes} probes of each kind", flush=True)

        # The baseline consumer fetches as the pipeline's source does (connectors/src/kafka/source.rs).
        consumer = Consumer({"bootstrap.servers": args.brokers, "group.id": prefix, "enable.auto.commit": False,
                             "fetch.wait.max.ms": 5, "enable.partition.eof": False})
        consumer.assign([TopicPartition(topics["probe"], 0, -1)])  # OFFSET_END
        consumer.poll(1.0)

        cur = conn.cursor()
        query = "select assessment_id from afiss_current where tree_id = 'T-PROBE'"
        before = freshness_buckets(metrics(http))
        pipeline, baseline = [], []
        for i in range(2 * args.probes + 10):
            time.sleep(rnd.uniform(0.04, 0.09))
            if i % 2 == 0:
                aid = f"PROBE-{i}"
                a = {"type": "assessment", "assessment_id": aid, "tree_id": "T-PROBE", "agent_id": "agent-probe",
                     "observed_at": int(time.time() * 1000), "likelihood_of_failure": "possible",
                     "likelihood_of_impact": "low", "consequences": "minor"}
                body = json.dumps(a).encode()
                t0 = time.perf_counter()
                producer.produce(topics["assessments"], body, key=b"T-PROBE")
                producer.poll(0)
                while True:
                    got = cur.execute(query).fetchone()
                    if got and got[0] == aid:
                        break
                    if time.perf_counter() - t0 > 30:
                        raise SystemExit(f"probe {aid} not visible after 30 s; logs in {work}")
                    time.sleep(0.0005)
                if i >= 10:
                    pipeline.append(time.perf_counter() - t0)
            else:
                body = f"probe-{i}".encode()
                t0 = time.perf_counter()
                producer.produce(topics["probe"], body, partition=0)
                producer.poll(0)
                while True:
                    m = consumer.poll(0.001)
                    if m is not None and m.error() is None and m.value() == body:
                        break
                    if time.perf_counter() - t0 > 30:
                        raise SystemExit(f"baseline probe {i} not consumed after 30 s")
                if i >= 10:
                    baseline.append(time.perf_counter() - t0)
        after = freshness_buckets(metrics(http))
        consumer.close()
        producer.flush(10)

        bp, pp = quantiles(baseline), quantiles(pipeline)
        ms = lambda q: " / ".join(f"{x * 1000:.1f}" for x in q)  # noqa: E731
        print(f"  produce -> consume round trip (baseline), p50 / p90 / p99: {ms(bp)} ms")
        print(f"  produce -> visible in afiss_current over psycopg, p50 / p90 / p99: {ms(pp)} ms")
        print(f"  ratio of p50s: {pp[0] / bp[0]:.2f} (target <= 2); pipeline p99 {pp[2] * 1000:.1f} ms "
              f"(target < 50 ms at 10k trees, < 100 ms at 1M)")
        inner = [bucket_quantile(before, after, p) for p in (0.5, 0.99)]
        n = after.get(float("inf"), 0) - before.get(float("inf"), 0)
        print(f"  treeai_freshness_seconds over the same minutes ({n:.0f} events, from the bucket bounds): "
              f"p50 ~{inner[0] * 1000:.0f} ms, p99 ~{inner[1] * 1000:.0f} ms")
    finally:
        stop_all()
        admin.delete_topics(list(topics.values()))


if __name__ == "__main__":
    sys.exit(main())
