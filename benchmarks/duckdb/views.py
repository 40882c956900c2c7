#!/usr/bin/env python3
"""DuckDB batch baseline for the TreeAI city-scale benchmark (issue 11).

Loads an NDJSON event file (as written by `treeai produce`) into DuckDB,
validates every line with the rules of DOMAIN.md §2 (as implemented by
dataflows/src/parse.rs; see README.md for what is and is not checked), and
computes the six live views of DOMAIN.md §4 at the end of the input, as the
pipeline's `treeai backfill` does:

    trees, afiss_current, sensor_windows, tree_scores, region_summary, agent_activity

    python3 benchmarks/duckdb/views.py --input FILE.ndjson [--threads 2] [--out DIR]

Prints one line

    duckdb: N events, X.XX s, peak RSS M MB, rows: trees=.. afiss_current=.. ...

where the time covers loading, validation and materializing all six views
(writing --out is timed separately, on stderr). With --out every view is
written to DIR/<view>.parquet (or .csv with --format csv).
"""

import argparse
import os
import resource
import sys
import time

import duckdb

VIEWS = ["trees", "afiss_current", "sensor_windows", "tree_scores", "region_summary", "agent_activity"]

MAX_LINE_BYTES = 65536
DELIM = chr(31)  # unit separator: never inside valid JSON (control characters must be escaped)
HOUR_MS = 3_600_000
MIN_TS_MS = 946_684_800_000  # 2000-01-01T00:00:00Z
MAX_TS_MS = 4_102_444_800_000  # 2100-01-01T00:00:00Z (excluded)

# Every top-level field of the three event kinds. json_transform with all of them typed JSON
# parses each line once and gives a struct `j` holding the normalized JSON text of each field
# (NULL when the field is absent or JSON null, which parse.rs also treats as absent).
FIELDS = [
    "type", "tree_id", "region", "species", "lat", "lon", "dbh_cm", "height_m", "target_occupancy",
    "baseline_tilt_deg", "baseline_sway_hz", "updated_at", "deleted",
    "assessment_id", "revision", "agent_id", "observed_at", "likelihood_of_failure",
    "likelihood_of_impact", "consequences", "defects", "crown_dieback_pct", "notes", "withdrawn",
    "sensor_id", "metric", "value", "ts",
]


def j(name):
    """The JSON text of a field of the current line (NULL: absent or JSON null)."""
    assert name in FIELDS, name
    return f"j.{name}::VARCHAR"  # as text: casts from JSON would parse JSON strings ('"1"' -> 1)


def sql_list(values):
    return "[" + ", ".join(f"'{v}'" for v in values) + "]"


REGIONS = ["us-east", "eu-west", "ap-southeast"]
OCCUPANCIES = ["rare", "occasional", "frequent", "constant"]
FAILURES = ["improbable", "possible", "probable", "imminent"]
IMPACTS = ["very_low", "low", "medium", "high"]
CONSEQUENCES = ["negligible", "minor", "significant", "severe"]
DEFECT_KINDS = ["decay", "crack", "lean", "deadwood", "root_damage", "cavity", "canker", "included_bark", "hanger"]
METRICS = ["tilt_deg", "sway_hz", "soil_moisture_pct", "wind_gust_ms"]

RFC3339 = (
    r'^"(\d{4}-\d{2}-\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?(?:([Zz])|([+-])(\d{2}):(\d{2}))"$'
)

# Scalar macros over the raw JSON text of one value. Each returns the typed
# value, or NULL when the value is absent or has the wrong type/shape; the
# callers turn "present but NULL after conversion" into a rejection.
MACROS = f"""
-- An identifier: a JSON string of 1-64 characters of [A-Za-z0-9_.:-] (these need no escapes,
-- so the JSON text is the quoted identifier).
CREATE OR REPLACE TEMP MACRO jid(v) AS
    CASE WHEN regexp_full_match(v, '"[A-Za-z0-9_.:-]{{1,64}}"') THEN v[2:-2] END;
-- The values below are the JSON text of one field as json_extract writes it: normalized (strings
-- with minimal escapes, numbers as written or with '.0' for integral floats), so the JSON type
-- can be told from the first character and plain casts parse the numbers.
-- A string enum value: the string if it is one of `allowed` (none needs escaping), else NULL.
CREATE OR REPLACE TEMP MACRO jenum(v, allowed) AS
    CASE WHEN left(v, 1) = '"' AND list_contains(allowed, v[2:-2]) THEN v[2:-2] END;
-- A string (any characters), unescaped.
CREATE OR REPLACE TEMP MACRO jstr(v) AS CASE WHEN left(v, 1) = '"' THEN json_extract_string(v, '$') END;
-- A JSON number as DOUBLE (+-inf for 1e999: callers check isfinite); NULL for other JSON types.
CREATE OR REPLACE TEMP MACRO jnum(v) AS TRY_CAST(v AS DOUBLE);
-- A finite JSON number in [lo, hi] / (lo, hi].
CREATE OR REPLACE TEMP MACRO in_closed(x, lo, hi) AS isfinite(x) AND x >= lo AND x <= hi;
CREATE OR REPLACE TEMP MACRO in_open_closed(x, lo, hi) AS isfinite(x) AND x > lo AND x <= hi;
-- An integer: a JSON integer that fits in i64, or a float without fraction (|x| < 9e15), as parse.rs.
CREATE OR REPLACE TEMP MACRO jint(v) AS
    CASE WHEN regexp_full_match(v, '-?[0-9]+') THEN TRY_CAST(v AS BIGINT)
         -- (a one-element list_transform binds the cast once: macro arguments are substituted textually)
         ELSE list_transform([TRY_CAST(v AS DOUBLE)], lambda x:
                  CASE WHEN isfinite(x) AND x = trunc(x) AND abs(x) < 9.0e15 THEN x::BIGINT END)[1]
    END;
CREATE OR REPLACE TEMP MACRO jbool(v) AS CASE v WHEN 'true' THEN true WHEN 'false' THEN false END;
-- RFC 3339 (parse.rs / time.rs): T, t or space; seconds up to 60; any number of fraction digits
-- truncated to ms; Z, z or +-HH:MM (HH <= 23, MM <= 59).
CREATE OR REPLACE TEMP MACRO rfc_ms(p) AS
    CASE WHEN p.d <> '' AND TRY_CAST(p.h AS INT) <= 23 AND TRY_CAST(p.mi AS INT) <= 59
              AND TRY_CAST(p.s AS INT) <= 60
              AND (p.z <> '' OR (TRY_CAST(p.oh AS INT) <= 23 AND TRY_CAST(p.om AS INT) <= 59))
    THEN ((TRY_CAST(p.d AS DATE) - DATE '1970-01-01')::BIGINT * 86400
          + TRY_CAST(p.h AS BIGINT) * 3600 + TRY_CAST(p.mi AS BIGINT) * 60 + TRY_CAST(p.s AS BIGINT)
          - CASE WHEN p.z <> '' THEN 0
                 ELSE (CASE p.sg WHEN '-' THEN -1 ELSE 1 END)
                      * (TRY_CAST(p.oh AS BIGINT) * 60 + TRY_CAST(p.om AS BIGINT)) * 60 END) * 1000
         + CASE WHEN p.f = '' THEN 0 ELSE TRY_CAST(rpad(left(p.f, 3), 3, '0') AS BIGINT) END
    END;
-- A timestamp: RFC 3339 string or integer epoch ms, in [2000-01-01, 2100-01-01).
CREATE OR REPLACE TEMP MACRO jts_raw(v) AS
    CASE WHEN left(v, 1) = '"'
         THEN list_transform([regexp_extract(v, '{RFC3339}', ['d', 'h', 'mi', 's', 'f', 'z', 'sg', 'oh', 'om'])],
                             lambda p: rfc_ms(p))[1]
         ELSE jint(v) END;
-- Epoch ms as TIMESTAMPTZ (UTC: run() sets the session time zone), like the pipeline's Timestamp(ms, "UTC").
CREATE OR REPLACE TEMP MACRO ms_ts(ms) AS make_timestamp(ms * 1000)::TIMESTAMPTZ;
CREATE OR REPLACE TEMP MACRO ts_ok(ms) AS ms >= {MIN_TS_MS} AND ms < {MAX_TS_MS};
-- TRAQ matrix 1 and 2 (DOMAIN.md §2.2).
CREATE OR REPLACE TEMP MACRO matrix1(f, i) AS
    CASE
        WHEN f = 'imminent' THEN CASE i WHEN 'very_low' THEN 'unlikely' WHEN 'low' THEN 'somewhat_likely'
                                        WHEN 'medium' THEN 'likely' ELSE 'very_likely' END
        WHEN f = 'probable' THEN CASE i WHEN 'medium' THEN 'somewhat_likely' WHEN 'high' THEN 'likely'
                                        ELSE 'unlikely' END
        WHEN f = 'possible' THEN CASE i WHEN 'high' THEN 'somewhat_likely' ELSE 'unlikely' END
        ELSE 'unlikely'
    END;
CREATE OR REPLACE TEMP MACRO matrix2(fi, c) AS
    CASE
        WHEN fi = 'very_likely' THEN CASE c WHEN 'negligible' THEN 'low' WHEN 'minor' THEN 'moderate'
                                            WHEN 'significant' THEN 'high' ELSE 'extreme' END
        WHEN fi = 'likely' THEN CASE c WHEN 'negligible' THEN 'low' WHEN 'minor' THEN 'moderate' ELSE 'high' END
        WHEN fi = 'somewhat_likely' THEN CASE WHEN c IN ('significant', 'severe') THEN 'moderate' ELSE 'low' END
        ELSE 'low'
    END;
"""


def load_sql(files, check_duplicates, skip_bad_utf8=False):
    """Stage 1: every non-blank line with its source position and its fields as JSON text."""
    spec = "{" + ", ".join(f'"{f}": "JSON"' for f in FIELDS) + "}"
    file_list = "[" + ", ".join("'" + f.replace("'", "''") + "'" for f in files) + "]"
    # A field given twice makes the line invalid (parse.rs rule `duplicate`).
    keys = "CASE WHEN ok THEN json_keys(line) END" if check_duplicates else "NULL::VARCHAR[]"
    dup = "coalesce(len(k) <> list_unique(k), false)" if check_duplicates else "false"
    # read_csv with a delimiter that cannot occur in valid JSON (a raw 0x1F control character; a
    # line holding one is cut there, which leaves invalid JSON), no quoting and no escaping gives
    # one VARCHAR per line; row_number() OVER () on the order-preserving scan is the line's
    # position in the input (files in the order given), used for the "later in source order" ties.
    return f"""
CREATE OR REPLACE TEMP TABLE lines AS
WITH numbered AS (
    SELECT row_number() OVER () AS pos, line
    FROM read_csv({file_list}, columns = {{'line': 'VARCHAR'}}, header = false, auto_detect = false,
                  delim = '{DELIM}', quote = '', escape = '', strict_mode = false,
                  max_line_size = 16777216{", ignore_errors = true" if skip_bad_utf8 else ""})
),
checked AS (
    SELECT pos, line, strlen(line) <= {MAX_LINE_BYTES} AND json_valid(line) AS ok
    FROM numbered
    WHERE line IS NOT NULL AND trim(line) <> ''   -- blank lines are skipped (connectors/src/file.rs)
),
keyed AS (
    SELECT *, {keys} AS k FROM checked
)
SELECT pos,
       -- NULL for a line that is too large, not JSON, or has a duplicate field: rejected.
       -- (A JSON value that is not an object gives a struct of NULLs: no type, rejected.)
       CASE WHEN ok AND NOT {dup} THEN json_transform(line, '{spec}') END AS j
FROM keyed;
"""


def trees_sql():
    """Stage 2a: valid tree events (DOMAIN.md §2.1; rules of parse.rs)."""
    regions, occ = sql_list(REGIONS), sql_list(OCCUPANCIES)
    opt = lambda name, conv: f"({j(name)} IS NULL OR {conv} IS NOT NULL)"  # noqa: E731
    return f"""
CREATE OR REPLACE TEMP TABLE tree_ev AS
SELECT * EXCLUDE (ok) FROM (
    SELECT pos,
           jid({j('tree_id')}) AS tree_id,
           jts_raw({j('updated_at')}) AS updated_at,
           coalesce(jbool({j('deleted')}), false) AS deleted,
           jenum({j('region')}, {regions}) AS region,
           jstr({j('species')}) AS species,
           jnum({j('lat')}) AS lat, jnum({j('lon')}) AS lon,
           jnum({j('dbh_cm')}) AS dbh_cm, jnum({j('height_m')}) AS height_m,
           jenum({j('target_occupancy')}, {occ}) AS target_occupancy,
           coalesce(jnum({j('baseline_tilt_deg')}), 0.0) AS baseline_tilt_deg,
           jnum({j('baseline_sway_hz')}) AS baseline_sway_hz,
           {opt('deleted', f"jbool({j('deleted')})")}
           AND {opt('region', f"jenum({j('region')}, {regions})")}
           AND ({j('species')} IS NULL OR length(jstr({j('species')})) <= 128)
           AND ({j('lat')} IS NULL OR in_closed(jnum({j('lat')}), -90, 90))
           AND ({j('lon')} IS NULL OR in_closed(jnum({j('lon')}), -180, 180))
           AND ({j('dbh_cm')} IS NULL OR in_open_closed(jnum({j('dbh_cm')}), 0, 1500))
           AND ({j('height_m')} IS NULL OR in_open_closed(jnum({j('height_m')}), 0, 150))
           AND {opt('target_occupancy', f"jenum({j('target_occupancy')}, {occ})")}
           AND ({j('baseline_tilt_deg')} IS NULL OR in_closed(jnum({j('baseline_tilt_deg')}), 0, 90))
           AND ({j('baseline_sway_hz')} IS NULL OR in_open_closed(jnum({j('baseline_sway_hz')}), 0, 20))
           AS ok
    FROM lines WHERE {j('type')} = '"tree"'
)
WHERE coalesce(ok, false) AND tree_id IS NOT NULL AND ts_ok(updated_at)
  AND (deleted OR (region IS NOT NULL AND lat IS NOT NULL AND lon IS NOT NULL));
"""


def assessments_sql():
    """Stage 2b: valid assessment events (DOMAIN.md §2.2)."""
    fails, imps, cons = sql_list(FAILURES), sql_list(IMPACTS), sql_list(CONSEQUENCES)
    kinds = sql_list(DEFECT_KINDS)
    opt = lambda name, conv: f"({j(name)} IS NULL OR {conv} IS NOT NULL)"  # noqa: E731
    return f"""
CREATE OR REPLACE TEMP TABLE assessment_ev AS
WITH a AS (
    SELECT pos,
           jid({j('assessment_id')}) AS assessment_id,
           CASE WHEN {j('revision')} IS NULL THEN 1 ELSE jint({j('revision')}) END AS revision,
           jid({j('tree_id')}) AS tree_id,
           jid({j('agent_id')}) AS agent_id,
           jts_raw({j('observed_at')}) AS observed_at,
           jenum({j('likelihood_of_failure')}, {fails}) AS likelihood_of_failure,
           jenum({j('likelihood_of_impact')}, {imps}) AS likelihood_of_impact,
           jenum({j('consequences')}, {cons}) AS consequences,
           {j('defects')} AS defects_json,
           CASE WHEN json_type({j('defects')}) = 'ARRAY'
                THEN json_extract({j('defects')}, '$[*]')::VARCHAR[] END AS items,
           coalesce(jnum({j('crown_dieback_pct')}), 0.0) AS crown_dieback_pct,
           coalesce(jbool({j('withdrawn')}), false) AS withdrawn,
           ({j('crown_dieback_pct')} IS NULL OR in_closed(jnum({j('crown_dieback_pct')}), 0, 100))
           AND ({j('notes')} IS NULL OR length(jstr({j('notes')})) <= 4096)
           AND {opt('withdrawn', f"jbool({j('withdrawn')})")}
           AS ok
    FROM lines WHERE {j('type')} = '"assessment"'
),
d AS (
    SELECT *,
           -- each defect item: an object with a known kind and an integer severity in 1..5
           list_transform(items, lambda it:
               CASE WHEN json_type(it) = 'OBJECT'
                         AND jenum(nullif(json_extract(it, '$.kind')::VARCHAR, 'null'), {kinds}) IS NOT NULL
                    THEN jint(nullif(json_extract(it, '$.severity')::VARCHAR, 'null')) END) AS sev
    FROM a
)
SELECT pos, assessment_id, revision, tree_id, agent_id, observed_at,
       likelihood_of_failure, likelihood_of_impact, consequences,
       coalesce(len(sev), 0)::BIGINT AS defect_count,
       coalesce(list_sum(sev), 0)::BIGINT AS defect_severity_sum,
       coalesce(list_max(sev), 0)::BIGINT AS max_defect_severity,
       crown_dieback_pct, withdrawn
FROM d
WHERE coalesce(ok, false)
  AND assessment_id IS NOT NULL AND revision IS NOT NULL AND revision BETWEEN 1 AND 4294967295
  AND tree_id IS NOT NULL AND agent_id IS NOT NULL AND ts_ok(observed_at)
  AND likelihood_of_failure IS NOT NULL AND likelihood_of_impact IS NOT NULL AND consequences IS NOT NULL
  AND (defects_json IS NULL
       OR (items IS NOT NULL AND len(items) <= 32
           AND coalesce(list_bool_and(list_transform(sev, lambda s: s IS NOT NULL AND s BETWEEN 1 AND 5)), true)));
"""


def readings_sql():
    """Stage 2c: valid readings (DOMAIN.md §2.3)."""
    metrics = sql_list(METRICS)
    return f"""
CREATE OR REPLACE TEMP TABLE reading_ev AS
-- MATERIALIZED: converts each field once (the optimizer would otherwise inline the conversions
-- into both the filter and the projection).
WITH r AS MATERIALIZED (
    SELECT pos,
           jid({j('sensor_id')}) AS sensor_id,
           jid({j('tree_id')}) AS tree_id,
           jenum({j('metric')}, {metrics}) AS metric,
           jnum({j('value')}) AS value,
           jts_raw({j('ts')}) AS ts
    FROM lines WHERE {j('type')} = '"reading"'
)
SELECT pos, tree_id, metric, value, ts FROM r
WHERE sensor_id IS NOT NULL AND tree_id IS NOT NULL AND ts_ok(ts) AND isfinite(value)
  AND CASE metric
        WHEN 'tilt_deg' THEN value >= 0 AND value <= 90
        WHEN 'sway_hz' THEN value > 0 AND value <= 20
        WHEN 'soil_moisture_pct' THEN value >= 0 AND value <= 100
        WHEN 'wind_gust_ms' THEN value >= 0 AND value <= 120
        ELSE false END;
"""


def views_sql():
    """Stage 3: the six views at the end of the input (DOMAIN.md §3, §4)."""
    return f"""
-- Current registry entry: greatest (updated_at, source position); a deletion unregisters.
CREATE OR REPLACE TEMP TABLE trees AS
SELECT tree_id, region, species, lat, lon, dbh_cm, height_m, target_occupancy,
       baseline_tilt_deg, baseline_sway_hz, ms_ts(updated_at) AS updated_at
FROM (
    SELECT * FROM tree_ev
    QUALIFY row_number() OVER (PARTITION BY tree_id ORDER BY updated_at DESC, pos DESC) = 1
)
WHERE NOT deleted;

-- Live assessments: per assessment_id the greatest (revision, source position), unless withdrawn.
CREATE OR REPLACE TEMP TABLE live_assessments AS
SELECT *, matrix1(likelihood_of_failure, likelihood_of_impact) AS failure_impact,
       matrix2(matrix1(likelihood_of_failure, likelihood_of_impact), consequences) AS risk_rating
FROM (
    SELECT * FROM assessment_ev
    QUALIFY row_number() OVER (PARTITION BY assessment_id ORDER BY revision DESC, pos DESC) = 1
)
WHERE NOT withdrawn;

-- Current assessment per tree: greatest (observed_at, assessment_id byte-wise).
CREATE OR REPLACE TEMP TABLE afiss_current AS
SELECT tree_id, assessment_id, revision, agent_id, ms_ts(observed_at) AS observed_at,
       likelihood_of_failure, likelihood_of_impact, consequences, failure_impact, risk_rating,
       defect_count, defect_severity_sum, max_defect_severity, crown_dieback_pct,
       count(*) OVER (PARTITION BY tree_id) AS assessments_total
FROM live_assessments
QUALIFY row_number() OVER (PARTITION BY tree_id ORDER BY observed_at DESC, assessment_id DESC) = 1;

-- End of input: W = greatest valid reading ts (lateness does not apply at the end, DOMAIN.md §3);
-- the window holds the readings with W - 1h < ts <= W. (Every reading the pipeline expires on
-- arrival has ts <= W_then - 1h <= W - 1h, so it is outside this window anyway.)
CREATE OR REPLACE TEMP TABLE watermark AS SELECT max(ts) AS w FROM reading_ev;

CREATE OR REPLACE TEMP TABLE sensor_windows AS
SELECT r.tree_id, ms_ts(any_value(w.w)) AS window_end,
       max(value) FILTER (WHERE metric = 'tilt_deg') AS tilt_max,
       min(value) FILTER (WHERE metric = 'sway_hz') AS sway_min,
       max(value) FILTER (WHERE metric = 'wind_gust_ms') AS gust_max,
       avg(value) FILTER (WHERE metric = 'soil_moisture_pct') AS soil_mean,
       count(*) AS readings
FROM reading_ev r, watermark w
WHERE r.ts > w.w - {HOUR_MS} AND r.ts <= w.w
GROUP BY r.tree_id;

-- TreeScore (DOMAIN.md §4.4), evaluated in the same order of operations as rating.rs.
CREATE OR REPLACE TEMP TABLE tree_scores AS
WITH parts AS (
    SELECT t.tree_id, t.region,
           coalesce(a.risk_rating, 'unassessed') AS risk_rating,
           CASE a.risk_rating WHEN 'low' THEN 90.0 WHEN 'moderate' THEN 65.0 WHEN 'high' THEN 35.0
                              WHEN 'extreme' THEN 10.0 ELSE 75.0 END::DOUBLE AS base,
           CASE WHEN a.tree_id IS NULL THEN 0.0
                ELSE least(20.0, 2.0 * a.defect_severity_sum) END::DOUBLE AS defect_penalty,
           CASE WHEN a.tree_id IS NULL THEN 0.0 ELSE 0.2 * a.crown_dieback_pct END::DOUBLE AS dieback_penalty,
           CASE WHEN w.tilt_max IS NULL THEN 0.0
                ELSE least(30.0, 5.0 * greatest(0.0, w.tilt_max - t.baseline_tilt_deg - 1.0)) END::DOUBLE
               AS tilt_penalty,
           CASE WHEN w.sway_min IS NULL OR t.baseline_sway_hz IS NULL OR t.baseline_sway_hz <= 0 THEN 0.0
                ELSE least(15.0, 50.0 * greatest(0.0, (t.baseline_sway_hz - w.sway_min) / t.baseline_sway_hz - 0.10))
           END::DOUBLE AS sway_penalty,
           CASE WHEN w.gust_max >= 20.0
                THEN 10.0 + CASE WHEN w.soil_mean >= 40.0 THEN 10.0 ELSE 0.0 END
                ELSE 0.0 END::DOUBLE AS storm_penalty
    FROM trees t
    LEFT JOIN afiss_current a USING (tree_id)
    LEFT JOIN sensor_windows w USING (tree_id)
),
scored AS (
    SELECT *,
           -- clamp to [0, 100], round half away from zero to one decimal
           round(greatest(0.0, least(100.0,
               base - defect_penalty - dieback_penalty - tilt_penalty - sway_penalty - storm_penalty)) * 10.0)
           / 10.0 AS score
    FROM parts
)
SELECT tree_id, region, score,
       CASE WHEN score >= 80 THEN 'good' WHEN score >= 60 THEN 'fair' WHEN score >= 40 THEN 'poor'
            ELSE 'critical' END AS band,
       risk_rating, base, defect_penalty, dieback_penalty, tilt_penalty, sway_penalty, storm_penalty
FROM scored;

CREATE OR REPLACE TEMP TABLE region_summary AS
SELECT region, count(*) AS trees,
       count(*) FILTER (WHERE risk_rating <> 'unassessed') AS assessed_trees,
       avg(score) AS mean_score,
       count(*) FILTER (WHERE band = 'good') AS good,
       count(*) FILTER (WHERE band = 'fair') AS fair,
       count(*) FILTER (WHERE band = 'poor') AS poor,
       count(*) FILTER (WHERE band = 'critical') AS critical,
       count(*) FILTER (WHERE risk_rating = 'low') AS risk_low,
       count(*) FILTER (WHERE risk_rating = 'moderate') AS risk_moderate,
       count(*) FILTER (WHERE risk_rating = 'high') AS risk_high,
       count(*) FILTER (WHERE risk_rating = 'extreme') AS risk_extreme
FROM tree_scores
GROUP BY region;

-- Per (agent, UTC day of observed_at): live assessments.
CREATE OR REPLACE TEMP TABLE agent_activity AS
SELECT agent_id, (DATE '1970-01-01' + (observed_at // 86400000)::INTEGER) AS day,
       count(*) AS assessments, count(DISTINCT tree_id) AS distinct_trees,
       count(*) FILTER (WHERE risk_rating IN ('high', 'extreme')) AS high_or_extreme
FROM live_assessments
GROUP BY ALL;
"""


def run(con, files, check_duplicates=True):
    """Runs all stages; returns (events, rejected, watermark_ms, per-stage seconds)."""
    con.execute("SET TimeZone = 'UTC'")
    con.execute("SET preserve_insertion_order = true")  # row_number() OVER () = line order
    con.execute(MACROS)
    timings = {}
    t0 = time.perf_counter()
    skipped = 0
    try:
        con.execute(load_sql(files, check_duplicates))
    except duckdb.InvalidInputException as e:
        if "unicode" not in str(e).lower():
            raise
        # A line that is not UTF-8 stops read_csv; such a line is rejected by the pipeline too
        # (serde_json), so skip those lines and count them as rejected.
        con.execute(load_sql(files, check_duplicates, skip_bad_utf8=True))
        nonblank = 0
        for f in files:
            with open(f, "rb") as fh:
                nonblank += sum(1 for line in fh if line.strip())
        skipped = nonblank - con.execute("SELECT count(*) FROM lines").fetchone()[0]
        print(f"duckdb: {skipped} lines that are not UTF-8 skipped (counted as rejected)", file=sys.stderr)
    timings["load+parse"] = time.perf_counter() - t0
    for name, sql in [("validate", events_sql()), ("views", views_sql())]:
        t0 = time.perf_counter()
        con.execute(sql)
        timings[name] = time.perf_counter() - t0
    events = con.execute("SELECT count(*) FROM lines").fetchone()[0] + skipped
    valid = con.execute(
        "SELECT (SELECT count(*) FROM tree_ev) + (SELECT count(*) FROM assessment_ev) + (SELECT count(*) FROM reading_ev)"
    ).fetchone()[0]
    w = con.execute("SELECT w FROM watermark").fetchone()[0]
    return events, events - valid, w, timings


def events_sql():
    return trees_sql() + assessments_sql() + readings_sql()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--input", required=True, nargs="+", help="NDJSON file(s), in source order")
    ap.add_argument("--threads", type=int, default=2, help="DuckDB worker threads (default 2)")
    ap.add_argument("--memory-limit", default=None, help="DuckDB memory_limit, e.g. 8GB (default: DuckDB's)")
    ap.add_argument("--out", default=None, help="write each view to DIR/<view>.parquet (or .csv)")
    ap.add_argument("--format", choices=["parquet", "csv"], default="parquet")
    ap.add_argument("--no-duplicate-check", action="store_true",
                    help="skip the duplicate-key check (saves one JSON parse per line)")
    args = ap.parse_args()

    for f in args.input:
        if not os.path.isfile(f):
            sys.exit(f"duckdb: input {f} not found")

    t0 = time.perf_counter()
    con = duckdb.connect(":memory:")
    con.execute(f"SET threads = {int(args.threads)}")
    if args.memory_limit:
        con.execute(f"SET memory_limit = '{args.memory_limit}'")
    events, rejected, w, timings = run(con, args.input, check_duplicates=not args.no_duplicate_check)
    elapsed = time.perf_counter() - t0
    rows = {v: con.execute(f"SELECT count(*) FROM {v}").fetchone()[0] for v in VIEWS}
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    print(
        f"duckdb: {events} events, {elapsed:.2f} s, peak RSS {peak_mb:.0f} MB, rows: "
        + " ".join(f"{v}={rows[v]}" for v in VIEWS),
        flush=True,
    )
    w_text = "none" if w is None else con.execute(f"SELECT strftime(make_timestamp({w} * 1000), '%Y-%m-%dT%H:%M:%S.%gZ')").fetchone()[0]
    print(
        f"duckdb {duckdb.__version__}, threads {args.threads}: {rejected} rejected, watermark {w_text}; "
        + ", ".join(f"{k} {v:.2f} s" for k, v in timings.items()),
        file=sys.stderr,
    )

    if args.out:
        t1 = time.perf_counter()
        os.makedirs(args.out, exist_ok=True)
        order = {
            "trees": "tree_id", "afiss_current": "tree_id", "sensor_windows": "tree_id",
            "tree_scores": "tree_id", "region_summary": "region", "agent_activity": "agent_id, day",
        }
        for v in VIEWS:
            path = os.path.join(args.out, f"{v}.{args.format}").replace("'", "''")
            fmt = "(FORMAT parquet)" if args.format == "parquet" else "(FORMAT csv, HEADER true)"
            con.execute(f"COPY (SELECT * FROM {v} ORDER BY {order[v]}) TO '{path}' {fmt}")
        print(f"duckdb: views written to {args.out} in {time.perf_counter() - t1:.2f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
