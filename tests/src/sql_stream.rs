//! Scans of the live views stream: over a 1M-row `tree_scores` (built directly
//! in a catalog, without the dataflow) a query's memory grows by a few
//! batches, not by the view; operators that hold rows are bounded by the
//! memory pool; dropping a query (what the time limit and a Postgres
//! CancelRequest do) stops its scan between two batches; `EXPLAIN` shows what
//! reached the scan.

use std::future::Future;
use std::process::Command;
use std::sync::{Arc, OnceLock};
use std::task::Poll;
use treeai_dataflows::event::{Id, Region, RiskRating};
use treeai_dataflows::rating::{tree_score, ScoreInputs};
use treeai_dataflows::runtime::egress::{Completed, CompletedTime};
use treeai_dataflows::runtime::Stats;
use treeai_dataflows::store::{Catalog, ViewChange};
use treeai_dataflows::time::DataflowTime;
use treeai_dataflows::views::ScoreRow;
use treeai_schema::views::{scores_columns, view_rows_batch};
use treeai_sql::metrics::Metrics;
use treeai_sql::provider::BATCH_ROWS;
use treeai_sql::{Action, Engine, SqlConfig};

/// Rows of the large view.
const ROWS: usize = 1_000_000;

/// Set in the child process that measures memory.
const PROBE: &str = "TREEAI_SCAN_MEMORY_PROBE";

fn score_row(i: usize) -> ScoreRow {
    let risks =
        [None, Some(RiskRating::Low), Some(RiskRating::Moderate), Some(RiskRating::High), Some(RiskRating::Extreme)];
    let inputs = ScoreInputs {
        risk: risks[i % 5],
        defect_severity_sum: (i % 7) as u32,
        crown_dieback_pct: (i % 50) as f64,
        tilt_max: Some((i % 9) as f64),
        ..Default::default()
    };
    ScoreRow { region: [Region::UsEast, Region::EuWest, Region::ApSoutheast][i % 3], score: tree_score(&inputs) }
}

/// A catalog whose `tree_scores` holds `n` rows (`T-0000000`, …), published as one completed time.
fn scores_catalog(n: usize) -> Arc<Catalog> {
    let catalog = Catalog::new();
    let changes = (0..n).map(|i| (ViewChange::Score(Id::from(format!("T-{i:07}")), score_row(i).into()), 1)).collect();
    catalog.publish(&Completed {
        times: vec![CompletedTime { time: DataflowTime(1), changes }],
        frontier: Some(DataflowTime(2)),
        watermark: Some(1_795_600_200_000),
    });
    Arc::new(catalog)
}

/// The 1M-row catalog, built once per process.
fn large() -> Arc<Catalog> {
    static LARGE: OnceLock<Arc<Catalog>> = OnceLock::new();
    LARGE.get_or_init(|| scores_catalog(ROWS)).clone()
}

fn engine(catalog: Arc<Catalog>, config: SqlConfig) -> Engine {
    let metrics = Arc::new(Metrics::new(Arc::new(Stats::default()), catalog.clone(), "test"));
    Engine::new(catalog, config, metrics).unwrap()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

/// A field of `/proc/self/status`, kB.
fn status_kb(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with(field)).unwrap_or_else(|| panic!("no {field} in {status}"));
    line[field.len()..].trim().trim_end_matches("kB").trim().parse().unwrap()
}

/// Resets the peak resident set size (`VmHWM`) to the current one.
fn reset_peak() {
    std::fs::write("/proc/self/clear_refs", "5").expect("write /proc/self/clear_refs");
}

/// How much the peak resident set grows while `f` runs, kB, and its result.
fn peak_growth<T>(f: impl FnOnce() -> T) -> (u64, T) {
    let before = status_kb("VmRSS:");
    reset_peak();
    let out = f();
    (status_kb("VmHWM:").saturating_sub(before), out)
}

/// Measures, in a process of its own (no other test's threads allocating),
/// the memory of `select sum(score) from tree_scores` over 1M rows and of
/// materialising the same rows as record batches; prints one `probe:` line.
#[test]
#[ignore = "run in a process of its own by sum_over_a_large_view_streams_in_a_few_batches"]
fn scan_memory_probe() {
    if std::env::var_os(PROBE).is_none() {
        return;
    }
    let catalog = scores_catalog(ROWS);
    let engine = engine(catalog.clone(), SqlConfig::default());
    let rt = runtime();
    let sum = "select sum(score) from tree_scores";
    // Warm-up on one row: what every query allocates once (functions, planner, runtime).
    rt.block_on(engine.query(&format!("{sum} where tree_id = 'T-0000001'"), None, "test")).unwrap();

    let (query_kb, out) = peak_growth(|| rt.block_on(engine.query(sum, None, "test")).unwrap());
    let got = treeai_sql::http::json_value(out.batches[0].column(0).as_ref(), 0).as_f64().unwrap();
    drop(out);
    let snapshot = catalog.snapshot();
    let want: f64 = snapshot.views.tree_scores.values().map(|s| s.score.score.0).sum();
    assert!((got - want).abs() < 1e-6 * want, "sum {got}, want {want}");

    // The same rows and column materialised as batches (what a scan did before it streamed).
    let columns = scores_columns();
    let (materialised_kb, batches) = peak_growth(|| {
        let rows: Vec<_> = snapshot.views.tree_scores.iter().map(|(k, v)| (k, &**v)).collect();
        rows.chunks(BATCH_ROWS).map(|c| view_rows_batch(&columns, c, None, Some(&[2]))).collect::<Vec<_>>()
    });
    let score_bytes: usize = batches.iter().map(|b| b.get_array_memory_size()).sum();
    drop(batches);
    // The whole view's Arrow size, and one full-width batch.
    let mut view_bytes = 0;
    let mut batch_bytes = 0;
    let rows: Vec<_> = snapshot.views.tree_scores.iter().map(|(k, v)| (k, &**v)).collect();
    for chunk in rows.chunks(BATCH_ROWS) {
        let size = view_rows_batch(&columns, chunk, None, None).get_array_memory_size();
        view_bytes += size;
        batch_bytes = batch_bytes.max(size);
    }
    println!(
        "\nprobe: query_kb={query_kb} materialised_kb={materialised_kb} score_column_kb={} view_kb={} batch_kb={}",
        score_bytes / 1024,
        view_bytes / 1024,
        batch_bytes / 1024
    );
}

/// `select sum(score)` over a 1M-row view grows the process by a few batches,
/// not by the view: measured in a child process (`scan_memory_probe`).
#[test]
fn sum_over_a_large_view_streams_in_a_few_batches() {
    let exe = std::env::current_exe().unwrap();
    let out = Command::new(exe)
        .args(["--exact", "sql_stream::scan_memory_probe", "--ignored", "--nocapture", "--test-threads", "1"])
        .env(PROBE, "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "probe failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let line =
        stdout.lines().find_map(|l| l.strip_prefix("probe: ")).unwrap_or_else(|| panic!("no probe line:\n{stdout}"));
    println!("{line}");
    let value = |name: &str| -> u64 {
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {line}"))
    };
    let (query, materialised, column, view) =
        (value("query_kb"), value("materialised_kb"), value("score_column_kb"), value("view_kb"));
    // The summed column alone is 8 MB; the whole view about 115 MB; materialising the
    // column as batches (what the scan did before it streamed) grows the process by about 22 MB.
    assert!(column >= 7_000 && view > column, "{line}");
    assert!(query * 4 < view, "the query grew by {query} kB, the view is {view} kB: {line}");
    assert!(query * 2 < column, "the query grew by {query} kB, the column it sums is {column} kB: {line}");
    assert!(
        query * 4 < materialised,
        "the query grew by {query} kB, materialising its rows by {materialised} kB: {line}"
    );
}

/// Sorting 1M rows needs far more than a 1 MiB pool: SQLSTATE 53200. The same
/// rows streamed (as the Postgres protocol sends them) need a batch at a time.
#[test]
fn a_query_holding_rows_exceeds_a_small_pool_and_a_streamed_one_does_not() {
    let engine = engine(large(), SqlConfig { memory_limit: 1 << 20, ..Default::default() });
    let rt = runtime();
    let err = rt.block_on(engine.query("select * from tree_scores order by score", None, "test")).unwrap_err();
    assert_eq!(err.sqlstate(), "53200", "{err}");
    assert!(err.client_fault(), "{err}");

    let before = engine.metrics.rows_scanned("tree_scores");
    let rows = rt.block_on(async {
        let Action::Query(statement) = engine.parse("select tree_id, score from tree_scores").unwrap().remove(0) else {
            panic!("not a query")
        };
        let (_, mut stream) = engine.start_query(statement, None).await.unwrap();
        let mut rows = 0;
        while let Some(batch) = futures::StreamExt::next(&mut stream).await {
            rows += batch.unwrap().num_rows();
        }
        rows
    });
    assert_eq!(rows, ROWS);
    assert_eq!(engine.metrics.rows_scanned("tree_scores") - before, ROWS as u64);
}

/// Dropping a running query — what the statement time limit and a Postgres
/// CancelRequest before the first row do — stops its scan at the batch it is
/// at: `sum(score)` consumes its whole input in what used to be one poll.
#[test]
fn dropping_a_query_stops_its_scan_after_a_batch() {
    let engine = engine(large(), SqlConfig::default());
    let scanned = || engine.metrics.rows_scanned("tree_scores");
    let rt = runtime();
    rt.block_on(async {
        let mut query = std::pin::pin!(engine.query("select sum(score) from tree_scores", None, "test"));
        // Poll the query one step at a time until its scan has produced a batch.
        while scanned() == 0 {
            let step = std::future::poll_fn(|cx| Poll::Ready(query.as_mut().poll(cx))).await;
            assert!(
                step.is_pending(),
                "the query ended before its scan produced a batch: {:?}",
                step.map(|r| r.map(|o| o.rows))
            );
            tokio::task::yield_now().await;
        }
    });
    // The query's future is dropped; give tasks it spawned a chance to run on.
    for _ in 0..100 {
        rt.block_on(tokio::task::yield_now());
    }
    let at_cancel = scanned();
    assert!(at_cancel > 0 && at_cancel <= 4 * BATCH_ROWS as u64, "a dropped query scanned {at_cancel} of {ROWS} rows");

    // Run to its end, the same query scans every row.
    let out = rt.block_on(engine.query("select sum(score) from tree_scores", None, "test")).unwrap();
    assert_eq!(out.rows, 1);
    assert_eq!(scanned() - at_cancel, ROWS as u64);
}

/// A Postgres CancelRequest while the rows of a 1M-row scan stream stops the
/// scan: the server scanned far fewer rows than the view holds.
#[test]
fn a_postgres_cancel_request_stops_a_streaming_scan() {
    let config = SqlConfig { pg_addr: "127.0.0.1:0".into(), http_addr: "127.0.0.1:0".into(), ..Default::default() };
    let engine = Arc::new(engine(large(), config));
    let server = treeai_sql::server::start(engine.clone()).unwrap();
    let script = r#"
import sys
import psycopg
port = int(sys.argv[1])
with psycopg.connect(host="127.0.0.1", port=port, user="treeai", dbname="treeai", autocommit=True) as conn:
    cancel = getattr(conn, "cancel_safe", conn.cancel)
    cur = conn.cursor()
    rows = 0
    try:
        for _ in cur.stream("select tree_id, score from tree_scores"):
            rows += 1
            if rows == 1:
                cancel()
        raise SystemExit(f"the scan was not cancelled ({rows} rows)")
    except psycopg.errors.QueryCanceled as e:
        assert e.sqlstate == "57014", e.sqlstate
    print("rows", rows)
    cur.execute("select count(*) from tree_scores")
    assert cur.fetchone() == (1000000,)
print("psycopg ok")
"#;
    let out = Command::new("python3")
        .args(["-c", script, &server.pg_addr.port().to_string()])
        .output()
        .expect("python3 with psycopg");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("psycopg ok"),
        "psycopg script failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let received: u64 = stdout.lines().find_map(|l| l.strip_prefix("rows ")).unwrap().parse().unwrap();
    let scanned = engine.metrics.rows_scanned("tree_scores");
    println!("received {received} rows, the server scanned {scanned}");
    assert!(received <= scanned, "received {received}, scanned {scanned}");
    assert!(scanned < ROWS as u64 / 2, "a cancelled scan produced {scanned} of {ROWS} rows");
}

/// `EXPLAIN` shows the projection, the key look-ups, the secondary filter and
/// the limit on the scan; `count(*)` of a view is answered from its statistics.
#[test]
fn explain_shows_the_pushdown_and_count_reads_statistics() {
    let engine = engine(scores_catalog(1000), SqlConfig::default());
    let rt = runtime();
    let plan = |sql: &str| -> String {
        let out = rt.block_on(engine.query(&format!("explain {sql}"), None, "test")).unwrap();
        let batch = &out.batches[0];
        (0..batch.num_rows())
            .map(|r| treeai_sql::http::json_value(batch.column(1).as_ref(), r).as_str().unwrap().to_string())
            .collect::<Vec<_>>()
            .join("\n")
    };
    let p = plan(
        "select tree_id, score from tree_scores where tree_id in ('T-0000002', 'T-0000001') and region = 'eu-west'",
    );
    let scan = "ViewScanExec: view=tree_scores, projection=[tree_id, region, score], \
                keys=[T-0000001, T-0000002], region IN (eu-west)";
    assert!(p.contains(scan), "{p}");
    let p = plan("select tree_id from tree_scores limit 3");
    assert!(p.contains("ViewScanExec: view=tree_scores, projection=[tree_id], limit=3"), "{p}");

    let out = rt.block_on(engine.query("select count(*) from tree_scores", None, "test")).unwrap();
    assert_eq!(crate::sqllogic::output_lines(&out), ["1000"]);
    assert_eq!(engine.metrics.rows_scanned("tree_scores"), 0, "count(*) scanned the view");
    let out =
        rt.block_on(engine.query("select count(*) from tree_scores where region = 'eu-west'", None, "test")).unwrap();
    let eu = (0..1000).filter(|i| i % 3 == 1).count();
    assert_eq!(crate::sqllogic::output_lines(&out), [eu.to_string()]);
}
