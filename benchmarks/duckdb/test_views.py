#!/usr/bin/env python3
"""Small self-checks of views.py: the validation cases of tests/src/naive.rs (adjusted where the
pipeline's parse.rs differs), the DOMAIN.md §6 worked example and the version/withdrawal rules.

    python3 benchmarks/duckdb/test_views.py
"""

import os
import sys
import tempfile

import duckdb

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import views  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
EXAMPLE = os.path.join(HERE, "..", "..", "..", "shared", "spec", "examples", "one-tree.ndjson")
if not os.path.exists(EXAMPLE):
    EXAMPLE = "/work/shared/spec/examples/one-tree.ndjson"


def run_lines(lines):
    with tempfile.NamedTemporaryFile("w", suffix=".ndjson", delete=False, encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
        path = f.name
    try:
        con = duckdb.connect()
        con.execute("SET threads = 1")
        views.run(con, [path])
        return con
    finally:
        os.unlink(path)


def valid_positions(con):
    q = "SELECT pos FROM tree_ev UNION ALL SELECT pos FROM assessment_ev UNION ALL SELECT pos FROM reading_ev"
    return {r[0] for r in con.execute(q).fetchall()}


def validation_cases():
    tree = '{"type":"tree","tree_id":"T-1","region":"eu-west","lat":1,"lon":2,"updated_at":946684800000'
    asm = ('{"type":"assessment","assessment_id":"A","tree_id":"T","agent_id":"g",'
           '"observed_at":"2026-01-01T00:00:00Z","likelihood_of_failure":"possible",'
           '"likelihood_of_impact":"low","consequences":"minor"')
    rd = '{"type":"reading","sensor_id":"S","tree_id":"T","ts":"2026-01-01T00:00:00Z"'
    d33 = ",".join(['{"kind":"decay","severity":1}'] * 33)
    d32 = ",".join(['{"kind":"decay","severity":1}'] * 32)
    base = f'{rd},"metric":"tilt_deg","value":1,"p":""}}'
    pad = lambda n: f'{rd},"metric":"tilt_deg","value":1,"p":"{"x" * (n - len(base))}"}}'  # noqa: E731
    return [
        (f"{tree}}}", True),
        (f'{tree},"extra":[1,2]}}', True),
        (f'{tree},"dbh_cm":0}}', False),
        (f'{tree},"dbh_cm":1500}}', True),
        (f'{tree},"lat":90.0001}}', False),
        (f'{tree},"region":"mars"}}', False),
        (f'{tree},"species":"{"é" * 129}"}}', False),
        (f'{tree},"species":"{"é" * 128}"}}', True),
        (f'{tree},"species":"\\u00e9{"é" * 127}"}}', True),
        (f'{tree},"species":12}}', False),
        (f'{tree},"species":null}}', True),
        ('{"type":"tree","tree_id":"' + "a" * 65 + '","region":"eu-west","lat":1,"lon":2,"updated_at":946684800000}', False),
        ('{"type":"tree","tree_id":"a b","region":"eu-west","lat":1,"lon":2,"updated_at":946684800000}', False),
        ('{"type":"tree","tree_id":"T","region":"eu-west","lat":1,"lon":2,"updated_at":946684799999}', False),
        ('{"type":"tree","tree_id":"T","region":"eu-west","lat":1,"lon":2,"updated_at":946684800000.0}', True),
        ('{"type":"tree","tree_id":"T","region":"eu-west","lat":1,"lon":2,"updated_at":946684800000.5}', False),
        ('{"type":"tree","tree_id":"T","region":"eu-west","lat":1,"lon":2,"updated_at":"2100-01-01T00:00:00Z"}', False),
        ('{"type":"tree","tree_id":"T","region":"eu-west","lat":1,"lon":2,"updated_at":"2099-12-31T23:30:00-01:00"}', False),
        ('{"type":"tree","tree_id":"T","region":"eu-west","lat":1,"lon":2,"updated_at":"1795564800000"}', False),
        ('{"type":"tree","tree_id":"T","region":"eu-west","lat":"1","lon":2,"updated_at":946684800000}', False),
        ('{"type":"tree","tree_id":"T","region":"eu-west","lon":2,"updated_at":946684800000}', False),
        ('{"type":"tree","tree_id":"T-1","deleted":true,"updated_at":"2026-01-01T00:00:00Z"}', True),
        ('{"type":"tree","tree_id":"T-1","deleted":true,"lat":100,"updated_at":"2026-01-01T00:00:00Z"}', False),
        ('{"type":"tree","tree_id":"T-1","deleted":"yes","updated_at":"2026-01-01T00:00:00Z"}', False),
        ('{"type":"tree","tree_id":"T-1","deleted":false,"updated_at":"2026-01-01T00:00:00Z"}', False),
        ('{"tree_id":"T-1"}', False),
        ('{"type":"weather"}', False),
        ('[1,2]', False),
        ('"a string"', False),
        ("not json", False),
        ('{"type":"tree","tree_id":"T-1","region":"eu-west","lat":1,"lon":2,"updated_at":946684800000', False),
        # duplicate field (parse.rs: rule `duplicate`)
        (f'{tree},"lat":3}}', False),
        (f"{asm}}}", True),
        (f'{asm},"revision":2.0}}', True),
        (f'{asm},"revision":0}}', False),
        (f'{asm},"revision":1.5}}', False),
        (f'{asm},"revision":"2"}}', False),
        (f'{asm},"defects":[{{"kind":"decay","severity":6}}]}}', False),
        (f'{asm},"defects":[{{"kind":"rot","severity":1}}]}}', False),
        (f'{asm},"defects":[{{"kind":"decay"}}]}}', False),
        (f'{asm},"defects":[{{"severity":3}}]}}', False),
        (f'{asm},"defects":["crack"]}}', False),
        (f'{asm},"defects":[{{"kind":"crack","severity":"high"}}]}}', False),
        (f'{asm},"defects":"decay, crack"}}', False),
        (f'{asm},"defects":[]}}', True),
        (f'{asm},"defects":[{d33}]}}', False),
        (f'{asm},"defects":[{d32}]}}', True),
        (f'{asm},"crown_dieback_pct":100.5}}', False),
        (f'{asm},"crown_dieback_pct":"15%"}}', False),
        (f'{asm},"notes":"{"x" * 4097}"}}', False),
        (f'{asm},"notes":"{"x" * 4096}"}}', True),
        (f'{asm},"withdrawn":true}}', True),
        (f'{asm},"withdrawn":1}}', False),
        (f'{rd},"metric":"sway_hz","value":20}}', True),
        (f'{rd},"metric":"sway_hz","value":0}}', False),
        (f'{rd},"metric":"tilt_deg","value":0}}', True),
        (f'{rd},"metric":"wind_gust_ms","value":120.1}}', False),
        (f'{rd},"metric":"wind_gust_ms","value":1e999}}', False),
        (f'{rd},"metric":"rain","value":1}}', False),
        (f'{rd},"metric":2,"value":1}}', False),
        (f'{rd},"metric":"tilt_deg","value":"1"}}', False),
        (pad(65536), True),
        (pad(65537), False),
        # timestamps (time.rs: T, t or space; seconds up to 60; fraction truncated to ms)
        ('{"type":"reading","sensor_id":"S","tree_id":"T","metric":"tilt_deg","value":1,"ts":"2026-11-25 10:00:00Z"}', True),
        ('{"type":"reading","sensor_id":"S","tree_id":"T","metric":"tilt_deg","value":1,"ts":"2026-11-25t04:30:01.2509-05:30"}', True),
        ('{"type":"reading","sensor_id":"S","tree_id":"T","metric":"tilt_deg","value":1,"ts":"2023-02-29T00:00:00Z"}', False),
        ('{"type":"reading","sensor_id":"S","tree_id":"T","metric":"tilt_deg","value":1,"ts":"2026-13-01T00:00:00Z"}', False),
        ('{"type":"reading","sensor_id":"S","tree_id":"T","metric":"tilt_deg","value":1,"ts":"2026-11-25T24:00:00Z"}', False),
        ('{"type":"reading","sensor_id":"S","tree_id":"T","metric":"tilt_deg","value":1,"ts":"2026-11-25T10:00:00"}', False),
        ('{"type":"reading","sensor_id":"S","tree_id":"T","metric":"tilt_deg","value":1,"ts":"2026-11-25T10:00:00.Z"}', False),
        ('{"type":"reading","sensor_id":"S","tree_id":"T","metric":"tilt_deg","value":1,"ts":"yesterday"}', False),
        ('{"type":"reading","sensor_id":"S","tree_id":"T","metric":"tilt_deg","value":1,"ts":true}', False),
        ('{"type":"reading","sensor_id":"S","tree_id":"T","metric":"tilt_deg","value":1,"ts":1795564800}', False),
    ]


def test_validation():
    cases = validation_cases()
    con = run_lines([line for line, _ in cases])
    valid = valid_positions(con)
    bad = [(i + 1, ok, line[:100]) for i, (line, ok) in enumerate(cases) if ((i + 1) in valid) != ok]
    for pos, ok, line in bad:
        print(f"  line {pos}: expected {'valid' if ok else 'rejected'}: {line}")
    assert not bad, f"{len(bad)} validation cases disagree"


def test_timestamps():
    cases = [
        ("2026-11-25T10:00:01.250Z", 1_795_600_801_250),
        ("2026-11-25T11:00:01.25+01:00", 1_795_600_801_250),
        ("2026-11-25t04:30:01.2509-05:30", 1_795_600_801_250),
        ("2026-11-25T09:00:00Z", 1_795_597_200_000),
        ("2000-01-01T00:00:00Z", 946_684_800_000),
        ("2026-11-25T10:00:00.123999Z", 1_795_600_800_123),
    ]
    lines = [
        '{"type":"reading","sensor_id":"S","tree_id":"T%d","metric":"tilt_deg","value":1,"ts":"%s"}' % (i, s)
        for i, (s, _) in enumerate(cases)
    ]
    con = run_lines(lines)
    got = dict(con.execute("SELECT tree_id, ts FROM reading_ev").fetchall())
    for i, (s, want) in enumerate(cases):
        assert got.get(f"T{i}") == want, (s, got.get(f"T{i}"), want)


def test_worked_example():
    con = duckdb.connect()
    views.run(con, [EXAMPLE])
    w = con.execute("SELECT w FROM watermark").fetchone()[0]
    assert w == 1_795_600_200_000
    assert con.execute("SELECT count(*) FROM lines").fetchone()[0] - len(valid_positions(con)) == 1
    sw = con.execute("SELECT tilt_max, sway_min, gust_max, soil_mean, readings FROM sensor_windows").fetchall()
    assert sw == [(4.5, 0.4, 18.0, 41.0, 5)], sw
    a = con.execute("SELECT assessment_id, revision, failure_impact, risk_rating, defect_count, "
                    "defect_severity_sum, max_defect_severity, crown_dieback_pct, assessments_total "
                    "FROM afiss_current").fetchall()
    assert a == [("A-2", 2, "somewhat_likely", "moderate", 1, 4, 4, 10.0, 2)], a
    s = con.execute("SELECT score, band, base, defect_penalty, dieback_penalty, tilt_penalty, sway_penalty, "
                    "storm_penalty FROM tree_scores").fetchone()
    assert s[:2] == (42.5, "poor") and all(abs(x - y) < 1e-9 for x, y in zip(s[2:], (65, 8, 2, 7.5, 5, 0))), s
    r = con.execute("SELECT * FROM region_summary").fetchall()
    assert r == [("eu-west", 1, 1, 42.5, 0, 0, 1, 0, 0, 1, 0, 0)], r
    aa = con.execute("SELECT agent_id, day::VARCHAR, assessments, distinct_trees, high_or_extreme "
                     "FROM agent_activity ORDER BY ALL").fetchall()
    assert aa == [("agent-03", "2026-11-24", 1, 1, 0), ("agent-07", "2026-11-20", 1, 1, 1)], aa


def test_versions_withdrawals_deletions():
    text = [
        '{"type":"tree","tree_id":"T","region":"us-east","lat":0,"lon":0,"updated_at":"2026-01-02T00:00:00Z"}',
        '{"type":"tree","tree_id":"T","deleted":true,"updated_at":"2026-01-01T00:00:00Z"}',
        '{"type":"tree","tree_id":"U","region":"us-east","lat":0,"lon":0,"updated_at":"2026-01-01T00:00:00Z"}',
        '{"type":"tree","tree_id":"U","deleted":true,"updated_at":"2026-01-01T00:00:00Z"}',
        '{"type":"assessment","assessment_id":"A","revision":3,"tree_id":"T","agent_id":"g","observed_at":"2026-01-01T00:00:00Z","likelihood_of_failure":"imminent","likelihood_of_impact":"high","consequences":"severe","withdrawn":true}',
        '{"type":"assessment","assessment_id":"A","revision":2,"tree_id":"T","agent_id":"g","observed_at":"2026-01-01T00:00:00Z","likelihood_of_failure":"imminent","likelihood_of_impact":"high","consequences":"severe"}',
        '{"type":"assessment","assessment_id":"B","tree_id":"U","agent_id":"g","observed_at":"2026-01-01T23:59:59.999Z","likelihood_of_failure":"imminent","likelihood_of_impact":"high","consequences":"severe"}',
        # equal revision: the later line wins (C moves to tree V)
        '{"type":"assessment","assessment_id":"C","tree_id":"T","agent_id":"h","observed_at":"2026-01-03T00:00:00Z","likelihood_of_failure":"improbable","likelihood_of_impact":"low","consequences":"minor"}',
        '{"type":"assessment","assessment_id":"C","tree_id":"V","agent_id":"h","observed_at":"2026-01-03T00:00:00Z","likelihood_of_failure":"improbable","likelihood_of_impact":"low","consequences":"minor"}',
    ]
    con = run_lines(text)
    assert con.execute("SELECT tree_id FROM trees").fetchall() == [("T",)]
    assert con.execute("SELECT w FROM watermark").fetchone()[0] is None
    afiss = con.execute("SELECT tree_id, assessment_id, risk_rating FROM afiss_current ORDER BY 1").fetchall()
    assert afiss == [("U", "B", "extreme"), ("V", "C", "low")], afiss
    assert con.execute("SELECT count(*) FROM sensor_windows").fetchone()[0] == 0
    ts = con.execute("SELECT risk_rating, score, band FROM tree_scores").fetchall()
    assert ts == [("unassessed", 75.0, "fair")], ts
    assert con.execute("SELECT assessed_trees FROM region_summary").fetchall() == [(0,)]
    aa = con.execute("SELECT agent_id, day::VARCHAR, high_or_extreme FROM agent_activity ORDER BY 1").fetchall()
    assert aa == [("g", "2026-01-01", 1), ("h", "2026-01-03", 0)], aa


def test_current_assessment_tie():
    # equal observed_at: the greater assessment_id (byte-wise: "B" < "a") is current
    mk = lambda aid: ('{"type":"assessment","assessment_id":"%s","tree_id":"T","agent_id":"g",'  # noqa: E731
                      '"observed_at":"2026-01-01T00:00:00Z","likelihood_of_failure":"possible",'
                      '"likelihood_of_impact":"low","consequences":"minor"}' % aid)
    con = run_lines([mk("a"), mk("B")])
    assert con.execute("SELECT assessment_id, assessments_total FROM afiss_current").fetchall() == [("a", 2)]


def main():
    tests = [v for k, v in sorted(globals().items()) if k.startswith("test_")]
    failed = 0
    for t in tests:
        try:
            t()
            print(f"ok   {t.__name__}")
        except AssertionError as e:
            failed += 1
            print(f"FAIL {t.__name__}: {e}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
