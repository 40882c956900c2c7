#!/usr/bin/env python3
"""Compares the DuckDB baseline's views with the pipeline's final views of the same input.

    python3 benchmarks/duckdb/compare.py --input FILE.ndjson \
        [--backfill-dir DIR | --treeai /var/tmp/treeai-target/debug/treeai] [--threads 2]

With --treeai it first runs `treeai backfill --input FILE --output DIR` (DIR: --backfill-dir or a
temporary folder); otherwise DIR must already hold a backfill's output
(DIR/<view>/part-00000.parquet). The DuckDB views are computed in-process by views.py.

For every view it reports: rows on each side, keys only on one side, and per column the number
of rows whose values differ (floats: by more than 1e-9, `score` and `mean_score` also by more
than 0.1, the tolerance of DOMAIN.md §4.4) and the largest difference. It also compares the set
of rejected lines (the pipeline's dead letters) with the lines the SQL validation rejects.
Exit status 0 when all row sets agree exactly and every column agrees within the tolerances.
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time

import duckdb

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import views  # noqa: E402

KEYS = {
    "trees": ["tree_id"],
    "afiss_current": ["tree_id"],
    "sensor_windows": ["tree_id"],
    "tree_scores": ["tree_id"],
    "region_summary": ["region"],
    "agent_activity": ["agent_id", "day"],
}
# Columns compared with a tolerance of 0.1 besides the exact (1e-9) comparison.
SCORE_COLUMNS = {"score", "mean_score"}
FLOAT_TOL = 1e-9


def sql_str(s):
    return "'" + s.replace("'", "''") + "'"


def run_backfill(treeai, input_path, out_dir, threads):
    cmd = [treeai, "backfill", "--input", input_path, "--output", out_dir, "--workers", str(threads)]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=out_dir)  # cwd: any ./lake or ./data stays there
    if p.returncode != 0:
        sys.exit(f"compare: {' '.join(cmd)} failed ({p.returncode}): {p.stderr.strip()[-2000:]}")
    line = [x for x in p.stdout.splitlines() if x.startswith("backfill:")]
    print(line[-1] if line else p.stdout.strip(), f"(wall {time.perf_counter() - t0:.2f} s)")


def column_types(con, rel):
    return {name: typ for name, typ in con.execute(f"SELECT column_name, column_type FROM (DESCRIBE {rel})").fetchall()}


def normalize(col, typ):
    """A SQL expression that makes values of both sides comparable."""
    t = typ.upper()
    if t.startswith("TIMESTAMP"):
        return f"epoch_ms({col})"
    if t == "DATE":
        return f"{col}::VARCHAR"
    return col


def compare_view(con, view, pipeline_path):
    keys = KEYS[view]
    con.execute(f"CREATE OR REPLACE TEMP VIEW p_{view} AS SELECT * FROM read_parquet({sql_str(pipeline_path)})")
    dcols = column_types(con, view)
    pcols = column_types(con, f"p_{view}")
    problems = []
    if list(dcols) != list(pcols):
        problems.append(f"columns differ: duckdb {list(dcols)} vs pipeline {list(pcols)}")
    common = [c for c in dcols if c in pcols]
    sel = lambda rel, types: ", ".join(f"{normalize(c, types[c])} AS {c}" for c in common)  # noqa: E731
    con.execute(f"CREATE OR REPLACE TEMP TABLE d_n AS SELECT {sel(view, dcols)} FROM {view}")
    con.execute(f"CREATE OR REPLACE TEMP TABLE p_n AS SELECT {sel('p_' + view, pcols)} FROM p_{view}")
    n_d = con.execute("SELECT count(*) FROM d_n").fetchone()[0]
    n_p = con.execute("SELECT count(*) FROM p_n").fetchone()[0]
    on = " AND ".join(f"d.{k} = p.{k}" for k in keys)
    only_d = con.execute(f"SELECT count(*) FROM d_n d ANTI JOIN p_n p ON {on}").fetchone()[0]
    only_p = con.execute(f"SELECT count(*) FROM p_n p ANTI JOIN d_n d ON {on}").fetchone()[0]
    dup_d = n_d - con.execute(f"SELECT count(*) FROM (SELECT DISTINCT {', '.join(keys)} FROM d_n)").fetchone()[0]
    if only_d or only_p or dup_d:
        problems.append(f"row sets differ: {only_d} keys only in duckdb, {only_p} only in the pipeline,"
                        f" {dup_d} duplicate keys in duckdb")
    details = []
    for c in common:
        if c in keys:
            continue
        typ = dcols[c].upper()
        if typ in ("DOUBLE", "FLOAT") or typ.startswith("DECIMAL"):
            q = f"""SELECT count(*) FILTER (WHERE (d.{c} IS NULL) <> (p.{c} IS NULL)
                                           OR abs(d.{c} - p.{c}) > {FLOAT_TOL}),
                           count(*) FILTER (WHERE (d.{c} IS NULL) <> (p.{c} IS NULL)
                                           OR abs(d.{c} - p.{c}) > 0.1 + 1e-9),
                           coalesce(max(abs(d.{c} - p.{c})), 0)
                    FROM d_n d JOIN p_n p ON {on}"""
            diff, diff_tol, maxdiff = con.execute(q).fetchone()
            if c in SCORE_COLUMNS:
                details.append(f"{c}: {diff} differ by >1e-9, {diff_tol} by >0.1 (max {maxdiff:.3g})")
                if diff_tol:
                    problems.append(f"{c}: {diff_tol} rows differ by more than 0.1")
            else:
                if diff:
                    details.append(f"{c}: {diff} differ by >1e-9 (max {maxdiff:.3g})")
                    problems.append(f"{c}: {diff} rows differ by more than 1e-9 (max {maxdiff:.3g})")
        else:
            diff = con.execute(f"SELECT count(*) FILTER (WHERE d.{c} IS DISTINCT FROM p.{c}) "
                               f"FROM d_n d JOIN p_n p ON {on}").fetchone()[0]
            if diff:
                details.append(f"{c}: {diff} differ")
                problems.append(f"{c}: {diff} rows differ")
    status = "OK  " if not problems else "DIFF"
    print(f"{status} {view}: duckdb {n_d} rows, pipeline {n_p} rows, keys only-duckdb {only_d}, only-pipeline {only_p}"
          + ("; " + "; ".join(details) if details else ""))
    for p in problems:
        print(f"       {p}")
    if problems and (only_d or only_p):
        ex = con.execute(f"(SELECT 'duckdb' AS side, * FROM d_n d ANTI JOIN p_n p ON {on} LIMIT 3) UNION ALL "
                         f"(SELECT 'pipeline', * FROM p_n p ANTI JOIN d_n d ON {on} LIMIT 3)").fetchall()
        for row in ex:
            print(f"       e.g. {row}")
    return not problems


def compare_rejections(con, backfill_dir):
    path = os.path.join(backfill_dir, "deadletter", "part-00000.parquet")
    if not os.path.exists(path):
        print("(no deadletter file in the backfill output)")
        return True
    ours = con.execute("SELECT pos FROM lines EXCEPT (SELECT pos FROM tree_ev UNION ALL SELECT pos FROM assessment_ev "
                       "UNION ALL SELECT pos FROM reading_ev)").fetchall()
    ours = {r[0] for r in ours}
    theirs = {r[0] for r in con.execute(f"SELECT position FROM read_parquet({sql_str(path)})").fetchall()}
    # positions may be counted from 0 or 1: use the offset that matches best
    diff, _, k = min((len(ours ^ {p + k for p in theirs}), abs(k), k) for k in (-1, 0, 1))
    status = "OK  " if diff == 0 else "DIFF"
    print(f"{status} rejected lines: duckdb {len(ours)}, pipeline {len(theirs)}, "
          f"{diff} lines rejected by only one side (position offset {k})")
    if diff:
        shifted = {p + k for p in theirs}
        only_d = sorted(ours - shifted)[:5]
        only_p = sorted(shifted - ours)[:5]
        if only_d:
            print(f"       only duckdb rejects lines {only_d}")
        if only_p:
            print(f"       only the pipeline rejects lines {only_p}")
    return diff == 0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--input", required=True)
    ap.add_argument("--backfill-dir", help="output folder of `treeai backfill` (created with --treeai)")
    ap.add_argument("--treeai", help="treeai binary: run the backfill first")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    out = args.backfill_dir or tempfile.mkdtemp(prefix="treeai-backfill-")
    if args.treeai:
        os.makedirs(out, exist_ok=True)
        run_backfill(args.treeai, os.path.abspath(args.input), out, args.threads)
    elif not args.backfill_dir:
        sys.exit("compare: give --backfill-dir or --treeai")

    con = duckdb.connect()
    con.execute(f"SET threads = {args.threads}")
    t0 = time.perf_counter()
    events, rejected, w, _ = views.run(con, [args.input])
    print(f"duckdb: {events} events, {rejected} rejected, watermark {w}, {time.perf_counter() - t0:.2f} s")

    ok = True
    for view in views.VIEWS:
        path = os.path.join(out, view, "part-00000.parquet")
        if not os.path.exists(path):
            print(f"MISSING {path}")
            ok = False
            continue
        ok &= compare_view(con, view, path)
    ok &= compare_rejections(con, out)
    print("AGREE" if ok else "DISAGREE")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
