//! The SQL endpoint of `treeai run` with real clients: psql, psycopg (Python)
//! and HTTP.

use crate::common::treeai_bin;
use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A running `treeai run` with its SQL ports; interrupted when dropped. It
/// runs in a temporary directory (its default lake `./lake` lands there).
struct Server {
    child: Child,
    _dir: tempfile::TempDir,
    lines: Receiver<String>,
    pg: u16,
    http: u16,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-INT", &self.child.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    fn start(args: &[&str]) -> Server {
        let (pg, http) = (free_port(), free_port());
        let (pg_addr, http_addr) = (format!("127.0.0.1:{pg}"), format!("127.0.0.1:{http}"));
        let mut all = vec!["run", "--workers", "2", "--sql-addr", &pg_addr, "--http-addr", &http_addr];
        all.extend_from_slice(args);
        Server::spawn(&all, &[], tempfile::tempdir().unwrap(), pg, http)
    }

    /// `treeai ARGS` with `envs` in `dir`, expected to serve on `pg` and `http`.
    fn spawn(args: &[&str], envs: &[(&str, &str)], dir: tempfile::TempDir, pg: u16, http: u16) -> Server {
        let mut child = Command::new(treeai_bin())
            .args(args)
            .envs(envs.iter().copied())
            .current_dir(dir.path())
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                for part in line.split('\r') {
                    let _ = tx.send(part.to_string());
                }
            }
        });
        Server { child, _dir: dir, lines, pg, http }
    }

    fn wait_for(&self, secs: u64, want: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(secs);
        let mut seen = Vec::new();
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) if want(&line) => return line,
                Ok(line) => seen.push(line),
                Err(_) => break,
            }
        }
        panic!("no matching line within {secs}s; stderr so far:\n{}", seen.join("\n"));
    }

    /// Runs `sql` with psql; returns (success, stdout, stderr).
    fn psql(&self, sql: &str) -> (bool, String, String) {
        let out = Command::new("psql")
            .args(["-h", "127.0.0.1", "-p", &self.pg.to_string(), "-U", "treeai", "-X", "-A", "-t", "-F", "|"])
            .args(["-v", "ON_ERROR_STOP=1", "-v", "VERBOSITY=verbose", "-c", sql])
            .env("PGCONNECT_TIMEOUT", "10")
            .stdin(Stdio::null())
            .output()
            .expect("run psql (apt-get install postgresql-client)");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).trim_end().to_string(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn psql_ok(&self, sql: &str) -> String {
        let (ok, out, err) = self.psql(sql);
        assert!(ok, "psql {sql:?} failed: {err}");
        out
    }

    /// An HTTP/1.1 request; returns (status, headers, body).
    fn http(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> (u16, String, Vec<u8>) {
        crate::common::http(&format!("127.0.0.1:{}", self.http), method, path, headers, body).unwrap()
    }

    fn sql_json(&self, sql: &str) -> (u16, serde_json::Value) {
        let body = serde_json::json!({ "sql": sql }).to_string();
        let (status, _, body) = self.http("POST", "/v1/sql", &[("Content-Type", "application/json")], body.as_bytes());
        let v = serde_json::from_slice(&body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&body)));
        (status, v)
    }
}

fn one_tree() -> &'static str {
    concat!(env!("CARGO_MANIFEST_DIR"), "/data/one-tree.ndjson")
}

#[test]
fn psql_queries_every_live_view_and_gets_postgres_errors() {
    let server = Server::start(&["--input", one_tree(), "--sql-timeout-ms", "2000"]);
    server.wait_for(60, |l| l.contains("input complete"));

    // Each live view.
    assert_eq!(
        server.psql_ok("select tree_id, region, lat, baseline_sway_hz, updated_at from trees"),
        "T-1|eu-west|53.35|0.5|2026-11-25 08:00:00.000000+00"
    );
    assert_eq!(
        server.psql_ok(
            "select assessment_id, revision, failure_impact, risk_rating, assessments_total from afiss_current"
        ),
        "A-2|2|somewhat_likely|moderate|2"
    );
    assert_eq!(
        server.psql_ok("select window_end, tilt_max, sway_min, gust_max, soil_mean, readings from sensor_windows"),
        "2026-11-25 09:50:00.000000+00|4.5|0.4|18.0|41.0|5"
    );
    assert_eq!(server.psql_ok("select tree_id, score, band from tree_scores"), "T-1|42.5|poor");
    assert_eq!(server.psql_ok("select region, trees, mean_score, poor from region_summary"), "eu-west|1|42.5|1");
    assert_eq!(
        server.psql_ok("select agent_id, day, high_or_extreme from agent_activity order by agent_id"),
        "agent-03|2026-11-24|0\nagent-07|2026-11-20|1"
    );
    // Filters and aggregates.
    assert_eq!(server.psql_ok("select count(*) from tree_scores where tree_id = 'T-1' and score < 50"), "1");
    assert_eq!(
        server.psql_ok("select count(*), sum(assessments) from agent_activity where day >= '2026-11-21'"),
        "1|1"
    );
    // Consistent time: region_summary against tree_scores in one query.
    assert_eq!(
        server.psql_ok(
            "select r.region, r.trees, count(s.tree_id) from region_summary r \
             join tree_scores s on s.region = r.region group by r.region, r.trees"
        ),
        "eu-west|1|1"
    );
    // Refused writes: SQLSTATE 25006, and the server goes on.
    for write in ["insert into trees (tree_id) values ('T-9')", "create table t (a int)", "drop table trees"] {
        let (ok, _, err) = server.psql(write);
        assert!(!ok, "{write} succeeded");
        assert!(err.contains("25006") && err.contains("read-only"), "{write}: {err}");
    }
    // A query over the time limit: 57014.
    let started = Instant::now();
    let (ok, _, err) = server.psql("select count(*) from generate_series(1, 10000000000)");
    assert!(!ok, "the endless query succeeded");
    assert!(err.contains("57014") && err.contains("timeout"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(20), "timeout took {:?}", started.elapsed());
    // A syntax error, with the position of the problem.
    let (ok, _, err) = server.psql("selec 1");
    assert!(!ok && err.contains("42601"), "{err}");
    // Several statements in one simple query.
    assert_eq!(server.psql_ok("begin; select 1; commit"), "BEGIN\n1\nCOMMIT");
    assert_eq!(server.psql_ok("select count(*) from tree_scores"), "1");
}

#[test]
fn psql_backslash_commands_list_and_describe_views_and_lake_tables() {
    let server = Server::start(&["--input", one_tree()]);
    server.wait_for(60, |l| l.contains("input complete"));
    let rows =
        |out: String| out.lines().map(|l| l.split('|').map(str::to_string).collect::<Vec<_>>()).collect::<Vec<_>>();

    // \dv: the six live views (views of schema public); \dt lake.*: the lake's tables.
    let views = rows(server.psql_ok("\\dv"));
    let names: Vec<&str> = views.iter().filter(|r| r[0] == "public").map(|r| r[1].as_str()).collect();
    assert_eq!(
        names,
        ["afiss_current", "agent_activity", "region_summary", "sensor_windows", "tree_scores", "trees"],
        "{views:?}"
    );
    assert!(views.iter().all(|r| r[2] == "view"), "{views:?}");
    let lake = rows(server.psql_ok("\\dt lake.*"));
    let names: Vec<&str> = lake.iter().map(|r| r[1].as_str()).collect();
    assert_eq!(
        names,
        ["alerts", "assessments", "audit", "deadletter", "readings", "score_changes", "trees"],
        "{lake:?}"
    );
    // \d: all thirteen relations (six views, seven lake tables); \l: the database.
    assert_eq!(rows(server.psql_ok("\\d")).len(), 13);
    assert!(rows(server.psql_ok("\\l")).iter().any(|r| r[0] == "treeai"));
    // \dn: the schemas.
    let schemas = server.psql_ok("\\dn");
    assert!(schemas.contains("public") && schemas.contains("lake"), "{schemas}");
    // \d tree_scores: columns with their Postgres types.
    let columns = rows(server.psql_ok("\\d tree_scores"));
    let find = |name: &str| {
        columns.iter().find(|r| r[0] == name).unwrap_or_else(|| panic!("no column {name} in {columns:?}")).clone()
    };
    assert_eq!(find("tree_id")[1], "text");
    assert_eq!(find("score")[1], "double precision");
    let count = "select count(*) from information_schema.columns \
                 where table_name = 'tree_scores' and table_schema = 'public'";
    assert_eq!(columns.len(), server.psql_ok(count).parse::<usize>().unwrap(), "{columns:?}");
    let trees = server.psql_ok("\\d trees");
    assert!(trees.contains("updated_at|timestamp with time zone"), "{trees}");
    // \d of the lake's readings, and the connection still answers plain SQL.
    let readings = server.psql_ok("\\d lake.readings");
    assert!(readings.contains("sensor_id") && readings.contains("hour"), "{readings}");
    assert_eq!(server.psql_ok("select count(*) from tree_scores"), "1");
}

/// Runs a Python script (psycopg) with the Postgres port as its argument; it must print `psycopg ok`.
fn run_psycopg(script: &str, port: u16) {
    let out = Command::new("python3")
        .args(["-c", script, &port.to_string()])
        .output()
        .expect("python3 (scripts/test-all.sh installs psycopg)");
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && stdout.contains("psycopg ok"), "psycopg script failed:\n{stdout}\n{stderr}");
}

#[test]
fn psycopg_extended_protocol_parameters_types_and_errors() {
    let server = Server::start(&["--input", one_tree()]);
    server.wait_for(60, |l| l.contains("input complete"));
    let script = r#"
import datetime, sys
import psycopg
port = int(sys.argv[1])
with psycopg.connect(host="127.0.0.1", port=port, user="treeai", dbname="treeai", connect_timeout=10) as conn:
    cur = conn.cursor()
    # A syntax error, then good queries on the same connection.
    try:
        cur.execute("selec 1")
        raise SystemExit("syntax error not reported")
    except psycopg.errors.SyntaxError as e:
        assert e.sqlstate == "42601", e.sqlstate
    conn.rollback()
    # Parameters through the extended protocol, typed results.
    cur.execute("select s.tree_id, s.score, s.band, t.updated_at from tree_scores s join trees t on t.tree_id = s.tree_id where s.tree_id = %s", ("T-1",))
    rows = cur.fetchall()
    assert len(rows) == 1, rows
    tree_id, score, band, updated_at = rows[0]
    assert (tree_id, score, band) == ("T-1", 42.5, "poor"), rows
    assert updated_at == datetime.datetime(2026, 11, 25, 8, 0, tzinfo=datetime.timezone.utc), updated_at
    cur.execute("select day, assessments from agent_activity where agent_id = %s and assessments >= %s", ("agent-07", 1))
    assert cur.fetchall() == [(datetime.date(2026, 11, 20), 1)]
    cur.execute("select count(*) from tree_scores where score > %s", (40.0,))
    assert cur.fetchone() == (1,)
    # Binary results.
    cur = conn.cursor(binary=True)
    cur.execute("select readings, tilt_max, window_end from sensor_windows where tree_id = %s", ("T-1",))
    readings, tilt, end = cur.fetchone()
    assert (readings, tilt) == (5, 4.5), (readings, tilt)
    assert end == datetime.datetime(2026, 11, 25, 9, 50, tzinfo=datetime.timezone.utc), end
    # A refused write, then the connection still works.
    try:
        cur.execute("delete from trees")
        raise SystemExit("write not refused")
    except psycopg.errors.ReadOnlySqlTransaction as e:
        assert e.sqlstate == "25006"
    conn.rollback()
    cur.execute("select count(*) from trees")
    assert cur.fetchone() == (1,)
    # Prepared statements (describe statement).
    for _ in range(3):
        cur.execute("select band from tree_scores where tree_id = %s", ("T-1",), prepare=True)
        assert cur.fetchone() == ("poor",)
conn = psycopg.connect(host="127.0.0.1", port=port, user="anyone", dbname="x", autocommit=True)
try:
    conn.execute("select * from nowhere")
except psycopg.errors.UndefinedTable as e:
    assert e.sqlstate == "42P01"
assert conn.execute("select 1 + 1").fetchone() == (2,)
conn.close()
print("psycopg ok")
"#;
    run_psycopg(script, server.pg);
}

#[test]
fn psycopg_streams_results_beyond_the_memory_limit_and_cancels_queries() {
    let server = Server::start(&["--input", one_tree(), "--sql-memory-limit-mb", "1"]);
    server.wait_for(60, |l| l.contains("input complete"));
    let script = r#"
import sys, threading, time
import psycopg
port = int(sys.argv[1])
with psycopg.connect(host="127.0.0.1", port=port, user="treeai", dbname="treeai", autocommit=True) as conn:
    # 2 million rows (16 MB as int8) through a 1 MiB memory pool: only a streamed result fits.
    cur = conn.cursor()
    cur.execute("select value from generate_series(1, 2000000)")
    n = sum(1 for _ in cur)
    assert n == 2000000, n
    # A CancelRequest stops an endless statement; the connection stays usable.
    cancel = getattr(conn, "cancel_safe", conn.cancel)
    threading.Timer(1.0, cancel).start()
    started = time.time()
    try:
        cur.execute("select count(*) from generate_series(1, 10000000000)")
        raise SystemExit("the statement was not cancelled")
    except psycopg.errors.QueryCanceled as e:
        assert e.sqlstate == "57014", e.sqlstate
        assert "user request" in str(e), str(e)
    assert time.time() - started < 10, time.time() - started
    cur.execute("select count(*) from trees")
    assert cur.fetchone() == (1,)
    # ...and one whose rows are already streaming, by the extended and the simple protocol.
    for cursor in (conn.cursor(), psycopg.ClientCursor(conn)):
        rows, started = 0, time.time()
        try:
            for _ in cursor.stream("select value from generate_series(1, 10000000000)"):
                rows += 1
                if rows == 100000:
                    cancel()
            raise SystemExit("the streaming statement was not cancelled")
        except psycopg.errors.QueryCanceled as e:
            assert e.sqlstate == "57014", e.sqlstate
            assert "user request" in str(e), str(e)
        assert rows >= 100000, rows
        assert time.time() - started < 10, time.time() - started
        cursor.execute("select count(*) from trees")
        assert cursor.fetchone() == (1,)
print("psycopg ok")
"#;
    run_psycopg(script, server.pg);
    // The two statements cancelled while streaming are counted as cancelled when their rows end.
    let (_, _, body) = server.http("GET", "/metrics", &[], b"");
    let metrics = String::from_utf8_lossy(&body);
    assert!(metrics.contains("treeai_sql_queries_total{outcome=\"canceled\",protocol=\"pg\"} 2"), "{metrics}");
}

#[test]
fn http_sql_json_arrow_health_and_metrics() {
    let server = Server::start(&["--input", one_tree(), "--http-max-rows", "1"]);
    server.wait_for(60, |l| l.contains("input complete"));

    let (status, head, body) = server.http("GET", "/healthz", &[], b"");
    assert_eq!(status, 200, "{head}");
    assert_eq!(String::from_utf8_lossy(&body).trim(), "ok");
    let (status, _, _) = server.http("GET", "/readyz", &[], b"");
    assert_eq!(status, 200);

    let (status, v) = server.sql_json("select tree_id, score, updated_at from tree_scores join trees using (tree_id)");
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["columns"][0], serde_json::json!({"name": "tree_id", "type": "text"}));
    assert_eq!(v["columns"][1]["type"], "float8");
    assert_eq!(v["columns"][2]["type"], "timestamptz");
    assert_eq!(v["rows"], serde_json::json!([["T-1", 42.5, "2026-11-25T08:00:00.000Z"]]));
    assert_eq!(v["truncated"], false);
    assert_eq!(v["watermark"], "2026-11-25T09:50:00.000Z");

    // The row limit (1 here): two rows are cut to one and said so.
    let (status, v) = server.sql_json("select agent_id from agent_activity order by agent_id");
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["rows"], serde_json::json!([["agent-03"]]));
    assert_eq!(v["truncated"], true);

    // Errors: client's fault, with SQLSTATE.
    let (status, v) = server.sql_json("drop table trees");
    assert_eq!(status, 400);
    assert_eq!(v["error"]["sqlstate"], "25006", "{v}");
    let (status, v) = server.sql_json("select * from nowhere");
    assert_eq!(status, 400);
    assert_eq!(v["error"]["sqlstate"], "42P01", "{v}");
    let (status, _, body) = server.http("POST", "/v1/sql", &[], b"not json");
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&body));

    // Arrow IPC.
    let body = serde_json::json!({"sql": "select tree_id, band from tree_scores"}).to_string();
    let (status, head, ipc) = server.http(
        "POST",
        "/v1/sql",
        &[("Content-Type", "application/json"), ("Accept", "application/vnd.apache.arrow.stream")],
        body.as_bytes(),
    );
    assert_eq!(status, 200, "{head}");
    assert!(head.to_ascii_lowercase().contains("content-type: application/vnd.apache.arrow.stream"), "{head}");
    let reader = arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(ipc), None).unwrap();
    let batches: Vec<_> = reader.map(|b| b.unwrap()).collect();
    let rows = batches.iter().flat_map(crate::common::batch_rows).collect::<Vec<_>>();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["band"], "poor");

    // Metrics.
    let (status, _, body) = server.http("GET", "/metrics", &[], b"");
    assert_eq!(status, 200);
    let text = String::from_utf8_lossy(&body);
    for want in [
        "treeai_events_read_total{source=\"file\"} 11",
        "treeai_events_ingested_total{source=\"file\",kind=\"reading\"} 6",
        "treeai_events_rejected_total{source=\"file\",reason=\"value:out_of_range\"} 1",
        "treeai_watermark_ms 1795600200000",
        "treeai_view_rows{view=\"tree_scores\"} 1",
        "treeai_sql_queries_total{outcome=\"ok\",protocol=\"http\"}",
        "treeai_sql_queries_total{outcome=\"refused\",protocol=\"http\"} 1",
        "treeai_sql_query_seconds_bucket",
        "treeai_lake_errors_total 0",
    ] {
        assert!(text.contains(want), "metrics lack {want:?}:\n{text}");
    }
    // Freshness: one sample per applied event (10 valid events; a reading the final watermark
    // jumped past never became visible), every bucket cumulative.
    let sample = |name: &str| -> f64 {
        text.lines().find_map(|l| l.strip_prefix(name)).and_then(|v| v.trim().parse().ok()).unwrap_or(-1.0)
    };
    let count = sample("treeai_freshness_seconds_count ");
    assert!((1.0..=10.0).contains(&count), "freshness count {count}:\n{text}");
    assert_eq!(sample("treeai_freshness_seconds_bucket{le=\"+Inf\"} "), count);
    assert!(sample("treeai_freshness_seconds_bucket{le=\"3600\"} ") <= count);
    // The lake under ./lake holds the input's files once the input is complete.
    let files: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("treeai_lake_files_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no treeai_lake_files_total:\n{text}"));
    assert!(files >= 4, "lake files: {files}");
}

/// The embedded default serves SQL within seconds, and every query sees one
/// consistent time while the generator ingests.
#[test]
fn run_without_input_is_queryable_and_consistent_while_ingesting() {
    let server = Server::start(&["--trees", "3000", "--rate", "20000"]);
    let started = Instant::now();
    server.wait_for(60, |l| l.contains("SQL on postgres://"));
    // Queryable within seconds.
    let mut first = None;
    while started.elapsed() < Duration::from_secs(30) {
        let (ok, out, _) = server.psql("select count(*) from tree_scores");
        if ok && out.parse::<u64>().is_ok_and(|n| n > 0) {
            first = Some(started.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let first = first.expect("no scored trees over SQL within 30 s");
    assert!(first < Duration::from_secs(15), "first answer after {first:?}");
    // Ready once the views have a watermark.
    let deadline = Instant::now() + Duration::from_secs(30);
    while server.http("GET", "/readyz", &[], b"").0 != 200 {
        assert!(Instant::now() < deadline, "/readyz not 200 within 30 s");
        std::thread::sleep(Duration::from_millis(200));
    }

    // region_summary agrees with tree_scores and afiss_current in every query while ingesting.
    let check = "select \
        (select count(*) from region_summary r full join (select region, count(*) as n from tree_scores group by region) c \
            on c.region = r.region where r.trees is distinct from c.n) as regions_off, \
        (select count(*) from tree_scores s join afiss_current a using (tree_id) where s.risk_rating <> a.risk_rating) as ratings_off, \
        (select coalesce(sum(assessed_trees), 0) from region_summary) - (select count(*) from tree_scores where risk_rating <> 'unassessed') as assessed_off, \
        (select max(window_end) from sensor_windows) as watermark";
    let mut watermarks = std::collections::BTreeSet::new();
    for _ in 0..15 {
        let out = server.psql_ok(check);
        let cells: Vec<&str> = out.split('|').collect();
        assert_eq!(&cells[..3], &["0", "0", "0"], "inconsistent views in one query: {out}");
        watermarks.insert(cells[3].to_string());
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(watermarks.len() > 1, "the views did not move while querying: {watermarks:?}");
}

/// Addresses follow the documented precedence: config file < environment < flags.
#[test]
fn sql_addresses_from_config_file_and_environment() {
    let dir = tempfile::tempdir().unwrap();
    let (pg, http_file, http_env) = (free_port(), free_port(), free_port());
    let config = dir.path().join("treeai.toml");
    std::fs::write(
        &config,
        format!(
            "workers = 1\ninput = [{:?}]\nsql_addr = \"127.0.0.1:{pg}\"\nhttp_addr = \"127.0.0.1:{http_file}\"\n\
             sql_timeout_ms = 5000\nhttp_max_rows = 1\n",
            one_tree()
        ),
    )
    .unwrap();
    let env_addr = format!("127.0.0.1:{http_env}");
    let args = ["run", "--config", config.to_str().unwrap()];
    let server = Server::spawn(&args, &[("TREEAI_HTTP_ADDR", &env_addr)], dir, pg, http_env);
    server.wait_for(60, |l| l.contains("input complete"));
    assert_eq!(server.psql_ok("select band from tree_scores"), "poor");
    let (status, v) = server.sql_json("select agent_id from agent_activity");
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["truncated"], true, "http_max_rows from the file: {v}");
    assert!(
        TcpStream::connect(("127.0.0.1", http_file)).is_err(),
        "the file's http_addr is used despite the environment"
    );
}

/// Abuse limits (the security issue): statements whose result size an argument controls, a
/// query of 10,000 statements, a 2 MiB query text and an endless table function get errors
/// (54000, 57014) over psql and HTTP; one connection beyond `--sql-max-connections` gets
/// 53300; the process and the dataflow keep running through all of it.
#[test]
fn abusive_statements_and_connections_are_refused_and_ingestion_goes_on() {
    let server = Server::start(&["--trees", "500", "--sql-timeout-ms", "3000", "--sql-max-connections", "3"]);
    server.wait_for(60, |l| l.contains("SQL on postgres://"));
    let events = |s: &Server| -> f64 {
        let (_, _, body) = s.http("GET", "/metrics", &[], b"");
        String::from_utf8_lossy(&body)
            .lines()
            .find_map(|l| l.strip_prefix("treeai_events_read_total{")?.rsplit(' ').next()?.parse().ok())
            .unwrap_or(0.0)
    };
    let before = events(&server);
    for (sql, state) in [
        ("select length(repeat('x', 2147483647))", "54000"),
        ("select length(lpad('x', 2147483647))", "54000"),
        ("select length(rpad('x', 2147483647, 'yz'))", "54000"),
        ("select cardinality(array_repeat(1, 2147483647))", "54000"),
        ("select cardinality(range(1, 10000000000))", "54000"),
        ("select cardinality(generate_series(1, 10000000000, 1))", "54000"),
        ("select length(repeat(tree_id, 100000000)) from tree_scores", "54000"),
        ("select count(*) from generate_series(1, 100000000000)", "57014"),
    ] {
        let (ok, _, err) = server.psql(sql);
        assert!(!ok && err.contains(state), "{sql}: want {state}, got {err}");
        let (status, v) = server.sql_json(sql);
        assert_eq!(v["error"]["sqlstate"], state, "{sql}: HTTP {status} {v}");
    }
    // Bounded calls still work.
    assert_eq!(server.psql_ok("select length(repeat('ab', 1000)), cardinality(range(1, 1001))"), "2000|1000");
    let many = "select 1;".repeat(10_000);
    let (ok, _, err) = server.psql(&many);
    assert!(!ok && err.contains("54000") && err.contains("10000 statements"), "{err}");
    // A query text over 1 MiB: 54000 (HTTP bodies over 2 MB stop earlier, at 413).
    let long = format!("select '{}'", "x".repeat(3 << 19));
    let (status, v) = server.sql_json(&long);
    assert_eq!((status, v["error"]["sqlstate"].clone()), (400, serde_json::Value::from("54000")), "{v}");
    let body = serde_json::json!({ "sql": format!("select '{}'", "x".repeat(3 << 20)) }).to_string();
    let (status, _, _) = server.http("POST", "/v1/sql", &[("Content-Type", "application/json")], body.as_bytes());
    assert_eq!(status, 413);
    // Connections: 3 are taken, the 4th is refused with 53300, and one closing makes room.
    let script = r#"
import sys, psycopg
port = int(sys.argv[1])
url = f"host=127.0.0.1 port={port} user=treeai connect_timeout=10"
held = [psycopg.connect(url) for _ in range(3)]
try:
    psycopg.connect(url)
    print("4th connection accepted")
    sys.exit(1)
except psycopg.OperationalError as e:
    assert "too many connections" in str(e), str(e)
held.pop().close()
import time; time.sleep(0.5)
c = psycopg.connect(url)
assert c.execute("select 1").fetchone() == (1,)
print("psycopg ok")
"#;
    run_psycopg(script, server.pg);
    // The dataflow went on all along, and SQL still answers.
    let deadline = Instant::now() + Duration::from_secs(30);
    while events(&server) <= before {
        assert!(Instant::now() < deadline, "no events read after the abusive statements");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(server.psql_ok("select count(*) from trees").parse::<u64>().unwrap() > 0);
    assert_eq!(server.http("GET", "/healthz", &[], b"").0, 200);
}

/// The Postgres wire connection's own limits (sql/src/pg/wire.rs): a message over
/// `--sql-max-message-bytes` ends the connection with 54000 before it is read, a session idle
/// for `--sql-idle-timeout-ms` is closed with 57P05 while a busy one stays, and a client that
/// stops reading a long result has its statement ended at the time limit (counted as a
/// timeout, so its snapshot is released) and its connection closed at the idle limit.
#[test]
fn postgres_sessions_are_bounded_in_message_size_idle_time_and_slow_readers() {
    // The idle limit is never shorter than the statement limit + 5 s: 1 s + 5 s here.
    let server = Server::start(&[
        "--trees",
        "300",
        "--sql-timeout-ms",
        "1000",
        "--sql-idle-timeout-ms",
        "2000",
        "--sql-max-message-bytes",
        "65536",
    ]);
    server.wait_for(60, |l| l.contains("SQL on postgres://"));
    // A 100 kB query text: refused before it is read; a new connection works.
    let (ok, _, err) = server.psql(&format!("select length('{}')", "x".repeat(100_000)));
    assert!(!ok && err.contains("54000") && err.contains("--sql-max-message-bytes"), "{err}");
    assert_eq!(server.psql_ok(&format!("select length('{}')", "x".repeat(60_000))), "60000");
    // Idle and busy sessions, and a bound parameter over the limit (psycopg sends it in Bind).
    let script = r#"
import sys, time, psycopg
port = int(sys.argv[1])
url = f"host=127.0.0.1 port={port} user=treeai connect_timeout=10"
big = psycopg.connect(url)
try:
    big.execute("select length(%s::text)", ("y" * 100000,)).fetchone()
    print("a 100 kB Bind was taken"); sys.exit(1)
except psycopg.Error as e:
    assert "longer than the server takes" in str(e), str(e)
idle, busy = psycopg.connect(url), psycopg.connect(url)
for _ in range(8):
    time.sleep(1)
    assert busy.execute("select 1").fetchone() == (1,)
try:
    idle.execute("select 1").fetchone()
    print("an idle session outlived the idle limit"); sys.exit(1)
except psycopg.OperationalError as e:
    assert any(w in str(e) for w in ("idle-session timeout", "closed", "reset", "terminat")), str(e)
assert busy.execute("select count(*) from trees").fetchone()[0] > 0
print("psycopg ok")
"#;
    run_psycopg(script, server.pg);
    // A client that sends a query with a long result and never reads.
    let timeouts = |s: &Server| -> f64 {
        let (_, _, body) = s.http("GET", "/metrics", &[], b"");
        String::from_utf8_lossy(&body)
            .lines()
            .filter(|l| l.starts_with("treeai_sql_queries_total{") && l.contains("protocol=\"pg\""))
            .filter(|l| l.contains("outcome=\"timeout\""))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let before = timeouts(&server);
    let mut stalled = TcpStream::connect(("127.0.0.1", server.pg)).unwrap();
    let params = b"user\0treeai\0database\0treeai\0\0";
    let mut startup = ((8 + params.len()) as i32).to_be_bytes().to_vec();
    startup.extend_from_slice(&196608i32.to_be_bytes());
    startup.extend_from_slice(params);
    let sql = b"select t1.tree_id, t2.tree_id, repeat('z', 500) from trees t1, trees t2\0";
    let mut query = vec![b'Q'];
    query.extend_from_slice(&((4 + sql.len()) as i32).to_be_bytes());
    query.extend_from_slice(sql);
    std::io::Write::write_all(&mut stalled, &[startup, query].concat()).unwrap();
    let sent = Instant::now();
    let deadline = sent + Duration::from_secs(20);
    while timeouts(&server) <= before {
        assert!(Instant::now() < deadline, "the stalled statement was not ended at its time limit");
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!("stalled statement counted as timed out after {:?}", sent.elapsed());
    // The idle limit then closes the connection: reading now ends (EOF or reset).
    stalled.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut buf = vec![0u8; 1 << 16];
    let mut read = 0usize;
    let mut all = Vec::new();
    loop {
        match std::io::Read::read(&mut stalled, &mut buf) {
            Ok(0) => break,
            Ok(n) => {
                read += n;
                all.extend_from_slice(&buf[..n]);
            }
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("the stalled connection was not closed: {e} after {read} bytes"),
        }
    }
    let text = String::from_utf8_lossy(&all);
    assert!(read > 0, "the stalled client got no rows at all");
    // Its rows end with the time limit's error (never a silently short result), then the
    // idle limit's.
    assert!(text.contains("C57014"), "no 57014 after {read} bytes");
    assert!(text.contains("C57P05"), "no 57P05 after {read} bytes");
    // HTTP: a request whose headers never end (slowloris) is closed at the same idle limit.
    let mut slow = TcpStream::connect(("127.0.0.1", server.http)).unwrap();
    std::io::Write::write_all(&mut slow, b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n").unwrap();
    let opened = Instant::now();
    slow.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    match std::io::Read::read(&mut slow, &mut buf) {
        Ok(0) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("a half-sent HTTP request was answered or kept open: {other:?}"),
    }
    let held = opened.elapsed();
    assert!(held >= Duration::from_secs(5), "closed after {held:?}, before the idle limit");
    // Everything else went on.
    assert!(server.psql_ok("select count(*) from trees").parse::<u64>().unwrap() > 0);
    assert_eq!(server.http("GET", "/healthz", &[], b"").0, 200);
}

/// Raw Postgres wire bytes: a start-up message (protocol 3.0, user treeai), then `then`.
fn pg_raw(port: u16, then: &[u8]) -> TcpStream {
    let params = b"user\0treeai\0database\0treeai\0\0";
    let mut bytes = ((8 + params.len()) as i32).to_be_bytes().to_vec();
    bytes.extend_from_slice(&196608i32.to_be_bytes());
    bytes.extend_from_slice(params);
    bytes.extend_from_slice(then);
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    std::io::Write::write_all(&mut s, &bytes).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

/// pgwire reads on after it refused a start-up: a query pipelined behind a refused start-up
/// (here one connection too many, 53300) must not run.
#[test]
fn a_query_pipelined_behind_a_refused_start_up_does_not_run() {
    let server = Server::start(&["--trees", "100", "--sql-max-connections", "1"]);
    server.wait_for(60, |l| l.contains("SQL on postgres://"));
    let pg_queries = |s: &Server| -> f64 {
        let (_, _, body) = s.http("GET", "/metrics", &[], b"");
        String::from_utf8_lossy(&body)
            .lines()
            .filter(|l| l.starts_with("treeai_sql_queries_total{") && l.contains("protocol=\"pg\""))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    // The one connection allowed, logged in (ReadyForQuery) and idle.
    let mut held = pg_raw(server.pg, b"");
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.windows(6).any(|w| w == b"Z\0\0\0\x05I") {
        let n = std::io::Read::read(&mut held, &mut buf).unwrap();
        assert!(n > 0, "the first connection was closed");
        got.extend_from_slice(&buf[..n]);
    }
    let before = pg_queries(&server);
    let sql = b"select count(*) from trees\0";
    let mut query = vec![b'Q'];
    query.extend_from_slice(&((4 + sql.len()) as i32).to_be_bytes());
    query.extend_from_slice(sql);
    let mut refused = pg_raw(server.pg, &query);
    let mut answer = Vec::new();
    let _ = std::io::Read::read_to_end(&mut refused, &mut answer);
    assert!(String::from_utf8_lossy(&answer).contains("53300"), "{:?}", String::from_utf8_lossy(&answer));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(pg_queries(&server), before, "the pipelined query ran");
    drop(held);
}

/// Browsers' cross-site requests and DNS-rebinding host names are refused (403); probes,
/// Prometheus and programs (no `Origin`, an IP `Host`) pass; `--http-allowed-hosts` admits a name.
#[test]
fn http_refuses_cross_site_origins_and_rebinding_hosts() {
    let server = Server::start(&["--input", one_tree(), "--http-allowed-hosts", "treeai.example"]);
    server.wait_for(60, |l| l.contains("input complete"));
    let body = br#"{"sql": "select count(*) from trees"}"#;
    let json = ("Content-Type", "application/json");
    let port = server.http.to_string();
    let (own_host, own) = (format!("127.0.0.1:{port}"), format!("http://127.0.0.1:{port}"));
    for (headers, want) in [
        (vec![json], 200),
        (vec![json, ("Host", own_host.as_str()), ("Origin", own.as_str())], 200),
        (vec![json, ("Origin", "https://evil.example")], 403),
        (vec![json, ("Origin", "null")], 403),
        (vec![json, ("Origin", "https://treeai.example")], 200),
        (vec![json, ("Host", "evil.example:8080")], 403),
        (vec![json, ("Host", "localhost:8080")], 200),
        (vec![json, ("Host", "treeai.example")], 200),
    ] {
        let (status, _, answer) = server.http("POST", "/v1/sql", &headers, body);
        assert_eq!(status, want, "{headers:?}: {}", String::from_utf8_lossy(&answer));
    }
    // Probes and scrapes by IP pass.
    for path in ["/healthz", "/readyz", "/metrics"] {
        assert_eq!(server.http("GET", path, &[], b"").0, 200, "{path}");
    }
    let (_, _, metrics) = server.http("GET", "/metrics", &[], b"");
    let metrics = String::from_utf8_lossy(&metrics);
    assert!(metrics.contains("reason=\"cross_site\"} 2"), "{metrics}");
    assert!(metrics.contains("reason=\"host\"} 1"), "{metrics}");
}
