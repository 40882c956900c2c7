//! SQL behaviour from data files: `tests/data/sql/*.slt`, run through the
//! SQL engine (`treeai_sql::Engine`) over views computed by the real dataflow.
//!
//! Format (a small sqllogictest dialect):
//!
//! ```text
//! load one-tree.ndjson             # first: the input (a file in tests/data/) …
//! generate trees=300 count=20000 seed=3   # … or generator events
//!
//! query [rowsort]                  # SQL lines, then ----, then the rows
//! select tree_id, band from tree_scores
//! ----
//! T-1|poor
//!
//! statement ok                     # SQL that must succeed
//! begin
//!
//! statement error 25006            # must fail: a SQLSTATE, or a message fragment
//! insert into trees (tree_id) values ('x')
//! ```
//!
//! Values print as: strings raw, numbers as JSON numbers, timestamps RFC 3339,
//! NULL as `NULL`, columns joined by `|`. Blocks end at a blank line.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use treeai_connectors::generator::{Generator, GeneratorConfig, Season};
use treeai_connectors::pipeline::PipelineBuilder;
use treeai_connectors::SourceSpec;
use treeai_dataflows::runtime::{RuntimeConfig, Stats};
use treeai_dataflows::store::Catalog;
use treeai_sql::metrics::Metrics;
use treeai_sql::{Engine, QueryOutput, SqlConfig};

fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("data")
}

/// Runs the dataflow over `input` to its end; the catalog holds the final views.
fn load(input: &Path) -> (Arc<Catalog>, Arc<Stats>) {
    let pipeline = PipelineBuilder::new(
        SourceSpec::Files(vec![input.to_path_buf()]),
        RuntimeConfig { workers: 2, ..Default::default() },
    )
    .start()
    .expect("dataflow start");
    let (catalog, stats) = (pipeline.catalog().clone(), pipeline.stats().clone());
    pipeline.join().expect("dataflow run");
    (catalog, stats)
}

fn generate(dir: &Path, spec: &str) -> PathBuf {
    let mut config = GeneratorConfig {
        trees: 300,
        agents: 10,
        rate: 10_000.0,
        season: Season::Peak,
        bad_fraction: 0.0,
        seed: 1,
        start_ms: 1_795_564_800_000,
    };
    let mut count = 10_000usize;
    for kv in spec.split_whitespace() {
        let (k, v) = kv.split_once('=').unwrap_or_else(|| panic!("generate: {kv:?} is not key=value"));
        match k {
            "trees" => config.trees = v.parse().unwrap(),
            "count" => count = v.parse().unwrap(),
            "seed" => config.seed = v.parse().unwrap(),
            "bad" => config.bad_fraction = v.parse().unwrap(),
            other => panic!("generate: unknown key {other}"),
        }
    }
    let path = dir.join("generated.ndjson");
    let mut text = Vec::new();
    for e in Generator::new(config, 0, 1).take(count) {
        text.extend_from_slice(&e.json);
        text.push(b'\n');
    }
    std::fs::write(&path, text).unwrap();
    path
}

/// A query result as `|`-joined lines.
pub fn output_lines(out: &QueryOutput) -> Vec<String> {
    let mut lines = Vec::new();
    for batch in &out.batches {
        for r in 0..batch.num_rows() {
            let cells: Vec<String> = batch
                .columns()
                .iter()
                .map(|c| match treeai_sql::http::json_value(c.as_ref(), r) {
                    serde_json::Value::Null => "NULL".to_string(),
                    serde_json::Value::String(s) => s,
                    v => v.to_string(),
                })
                .collect();
            lines.push(cells.join("|"));
        }
    }
    lines
}

struct Block {
    line: usize,
    header: String,
    sql: String,
    expected: Vec<String>,
}

fn blocks(text: &str) -> (String, Vec<Block>) {
    let mut lines = text.lines().enumerate().peekable();
    let mut input = None;
    let mut out = Vec::new();
    while let Some((n, line)) = lines.next() {
        let line = line.trim_end();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if line.starts_with("load ") || line.starts_with("generate") {
            input = Some(line.to_string());
            continue;
        }
        assert!(
            line.starts_with("query") || line.starts_with("statement"),
            "line {}: expected query or statement, got {line:?}",
            n + 1
        );
        let mut block = Block { line: n + 1, header: line.to_string(), sql: String::new(), expected: vec![] };
        let mut in_result = false;
        while let Some((_, l)) = lines.peek() {
            let l = l.trim_end();
            if l.is_empty() {
                break;
            }
            lines.next();
            if l == "----" {
                in_result = true;
            } else if in_result {
                block.expected.push(l.to_string());
            } else {
                block.sql.push_str(l);
                block.sql.push('\n');
            }
        }
        out.push(block);
    }
    (input.expect("the file names its input with load or generate"), out)
}

fn run_file(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap();
    let (input, blocks) = blocks(&text);
    let dir = tempfile::tempdir().unwrap();
    let file = match input.split_once(' ') {
        Some(("load", name)) => data_dir().join(name.trim()),
        _ => generate(dir.path(), input.trim_start_matches("generate")),
    };
    let (catalog, stats) = load(&file);
    let metrics = Arc::new(Metrics::new(stats, catalog.clone(), "file"));
    let engine = Engine::new(catalog, SqlConfig::default(), metrics).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let mut failures = Vec::new();
    let name = path.file_name().unwrap().to_string_lossy().to_string();
    for b in blocks {
        let result = rt.block_on(engine.query(&b.sql, None, "test"));
        let words: Vec<&str> = b.header.split_whitespace().collect();
        let at = format!("{name}:{}", b.line);
        match (words.as_slice(), result) {
            (["statement", "ok"], Ok(_)) => {}
            (["statement" | "query", "error", want @ ..], Err(e)) => {
                let want = want.join(" ");
                let is_code = want.len() == 5 && want.chars().all(|c| c.is_ascii_alphanumeric());
                let ok = if is_code { e.sqlstate() == want } else { e.to_string().contains(&want) };
                if !ok {
                    failures.push(format!("{at}: want error {want:?}, got {} {e}", e.sqlstate()));
                }
            }
            (["query", opts @ ..], Ok(out)) if !opts.contains(&"error") => {
                let mut got = output_lines(&out);
                let mut want = b.expected.clone();
                if opts.contains(&"rowsort") {
                    got.sort();
                    want.sort();
                }
                if got != want {
                    failures.push(format!(
                        "{at}:\n{}  got:\n    {}\n  want:\n    {}",
                        b.sql,
                        got.join("\n    "),
                        want.join("\n    ")
                    ));
                }
            }
            (_, Ok(_)) => failures.push(format!("{at}: {} succeeded, want an error", b.sql.trim())),
            (_, Err(e)) => failures.push(format!("{at}: {} failed: {} {e}", b.sql.trim(), e.sqlstate())),
        }
    }
    failures
}

#[test]
fn sql_logic_files() {
    let dir = data_dir().join("sql");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "slt"))
        .collect();
    files.sort();
    assert!(files.len() >= 2, "no .slt files in {}", dir.display());
    let failures: Vec<String> = files.iter().flat_map(|f| run_file(f)).collect();
    assert!(failures.is_empty(), "{} failing block(s):\n{}", failures.len(), failures.join("\n"));
}

fn engine_over(input: &str, config: SqlConfig) -> Engine {
    let dir = tempfile::tempdir().unwrap();
    let file = generate(dir.path(), input);
    let (catalog, stats) = load(&file);
    let metrics = Arc::new(Metrics::new(stats, catalog.clone(), "file"));
    Engine::new(catalog, config, metrics).unwrap()
}

/// A point lookup on the key is a map look-up: the scan itself yields only
/// the matching rows (DataFusion's filter above it would hide a full copy).
#[test]
fn key_filters_reach_the_scan_as_lookups() {
    use datafusion::catalog::TableProvider;
    use datafusion::prelude::{col, lit};
    use treeai_dataflows::View;
    use treeai_sql::provider::ViewTable;
    let engine = engine_over("trees=300 count=20000 seed=2", SqlConfig::default());
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let (snapshot, state) = engine.state_now();
    assert_eq!(snapshot.views.tree_scores.len(), 300);
    let rows = |view: View, filters: Vec<datafusion::prelude::Expr>, projection: Option<Vec<usize>>| -> usize {
        rt.block_on(async {
            let table = ViewTable::new(view);
            let plan = table.scan(&state, projection.as_ref(), &filters, None).await.unwrap();
            let batches = datafusion::physical_plan::collect(plan, state.task_ctx()).await.unwrap();
            batches.iter().map(|b| b.num_rows()).sum()
        })
    };
    assert_eq!(rows(View::Scores, vec![], None), 300);
    assert_eq!(rows(View::Scores, vec![col("tree_id").eq(lit("T-000007"))], None), 1);
    assert_eq!(
        rows(
            View::Scores,
            vec![col("tree_id").in_list(vec![lit("T-000007"), lit("T-000008"), lit("nope")], false)],
            Some(vec![0, 2])
        ),
        2
    );
    assert_eq!(
        rows(
            View::Trees,
            vec![col("tree_id").eq(lit("T-000001")).or(col("tree_id").eq(lit("T-000002")))],
            Some(vec![])
        ),
        2
    );
    assert_eq!(rows(View::Windows, vec![col("tree_id").eq(lit("nope"))], None), 0);
    let eu = snapshot.views.tree_scores.values().filter(|s| s.region.as_str() == "eu-west").count();
    assert_eq!(rows(View::Scores, vec![col("region").eq(lit("eu-west"))], None), eu);
    assert_eq!(rows(View::Regions, vec![col("region").eq(lit("eu-west"))], None), 1);
    let agent = snapshot.views.agent_activity.keys().next().unwrap().0.clone();
    let days = snapshot.views.agent_activity.keys().filter(|(a, _)| *a == agent).count();
    assert_eq!(rows(View::Agents, vec![col("agent_id").eq(lit(agent.as_str()))], None), days);
    // Pushdown answers: Inexact on the key, Unsupported elsewhere.
    let table = ViewTable::new(View::Scores);
    let key = col("tree_id").eq(lit("x"));
    let other = col("score").gt(lit(1.0));
    let answers = table.supports_filters_pushdown(&[&key, &other]).unwrap();
    assert_eq!(format!("{answers:?}"), "[Inexact, Unsupported]");
}

/// The memory pool and the time limit stop a query with the right SQLSTATE,
/// and the engine answers the next query.
#[test]
fn memory_and_time_limits_stop_queries() {
    let config =
        SqlConfig { memory_limit: 4 << 20, query_timeout: std::time::Duration::from_secs(1), ..Default::default() };
    let engine = engine_over("trees=50 count=2000 seed=1", config);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let err = rt
        .block_on(engine.query(
            "select v, count(*) from generate_series(1, 3000000) t(v) group by v order by 2 desc, 1 limit 1",
            None,
            "test",
        ))
        .unwrap_err();
    assert_eq!(err.sqlstate(), "53200", "{err}");
    // A result larger than the pool: refused too, not held in memory.
    let err = rt.block_on(engine.query("select v from generate_series(1, 3000000) t(v)", None, "test")).unwrap_err();
    assert_eq!(err.sqlstate(), "53200", "{err}");
    let err =
        rt.block_on(engine.query("select count(*) from generate_series(1, 100000000000)", None, "test")).unwrap_err();
    assert_eq!(err.sqlstate(), "57014", "{err}");
    let out = rt.block_on(engine.query("select count(*) from tree_scores", None, "test")).unwrap();
    assert_eq!(output_lines(&out), vec!["50"]);
}
