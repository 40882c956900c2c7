//! The Parquet lake: layout, row counts equal to the valid input, score
//! changes that add up to the final `tree_scores`, idempotent rewrites, and the
//! S3 path against a real S3-compatible server (moto, installed by
//! `scripts/test-all.sh`).

use crate::common::{batch_rows, files_under, treeai_bin, Running};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde_json::{Map, Value};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use treeai_dataflows::event::{Event, Position};
use treeai_dataflows::parse::parse_event;
use treeai_dataflows::time::{day_of, format_day};

fn rows(path: &Path) -> Vec<Map<String, Value>> {
    let reader = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(path).unwrap()).unwrap().build().unwrap();
    reader.flat_map(|b| batch_rows(&b.unwrap())).collect()
}

/// Rows of one lake table, each with its partition path (relative to the table folder).
type TableRows = Vec<(String, Map<String, Value>)>;

/// Rows per table.
fn read_lake(root: &Path) -> BTreeMap<String, TableRows> {
    let mut tables: BTreeMap<String, TableRows> = BTreeMap::new();
    for file in files_under(root) {
        let rel = file.strip_prefix(root).unwrap().to_str().unwrap().to_string();
        assert!(rel.ends_with(".parquet"), "unexpected file in the lake: {rel}");
        let (table, rest) = rel.split_once('/').unwrap();
        let partition = rest.rsplit_once('/').unwrap().0.to_string();
        for row in rows(&file) {
            tables.entry(table.to_string()).or_default().push((partition.clone(), row));
        }
    }
    tables
}

fn backfill(input: &Path, out: &Path, lake: &str, envs: &[(&str, String)]) {
    let output = Command::new(treeai_bin())
        .args(["backfill", "--workers", "2", "--input", input.to_str().unwrap(), "--output", out.to_str().unwrap()])
        .args(["--lake-output", lake])
        .envs(envs.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .unwrap();
    assert!(output.status.success(), "backfill failed: {}", String::from_utf8_lossy(&output.stderr));
}

fn produce(path: &Path, count: &str) {
    let status = Command::new(treeai_bin())
        .args(["produce", "--count", count, "--trees", "300", "--seed", "3", "--bad-fraction", "0.02"])
        .args(["--start", "2026-11-25T23:59:00Z", "--rate", "500", "--output", path.to_str().unwrap()])
        .status()
        .unwrap();
    assert!(status.success());
}

#[test]
fn lake_holds_every_valid_event_in_its_partition() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("e.ndjson");
    produce(&input, "20000"); // 40 s of event time across midnight: two dates
    let lake = dir.path().join("lake");
    backfill(&input, &dir.path().join("out"), lake.to_str().unwrap(), &[]);
    let tables = read_lake(&lake);

    // Count the valid events of each kind with the validator itself.
    let text = std::fs::read(&input).unwrap();
    let mut want: HashMap<&str, usize> = HashMap::new();
    for line in text.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        let kind = match parse_event(line, None, Position::default()) {
            Ok(Event::Tree(_)) => "trees",
            Ok(Event::Assessment(..)) => "assessments",
            Ok(Event::Reading(_)) => "readings",
            Err(_) => "deadletter",
        };
        *want.entry(kind).or_default() += 1;
    }
    for table in ["trees", "assessments", "readings", "deadletter"] {
        assert_eq!(tables.get(table).map_or(0, Vec::len), want.get(table).copied().unwrap_or(0), "rows of {table}");
    }

    // Partitions: readings by date and hour of ts, trees by date of updated_at.
    let mut dates = std::collections::BTreeSet::new();
    for (partition, row) in &tables["readings"] {
        let ts = row["ts"].as_i64().unwrap();
        let hour = ts.rem_euclid(86_400_000) / 3_600_000;
        assert_eq!(partition, &format!("date={}/hour={hour:02}", format_day(day_of(ts))));
        dates.insert(partition.clone());
    }
    assert!(dates.len() >= 2, "expected readings on both sides of midnight: {dates:?}");
    for (partition, row) in &tables["trees"] {
        assert_eq!(partition, &format!("date={}", format_day(day_of(row["updated_at"].as_i64().unwrap()))));
    }

    // Score changes add up to the final tree_scores view.
    let mut net: BTreeMap<String, i64> = BTreeMap::new();
    for (_, row) in &tables["score_changes"] {
        let key = format!("{}|{}|{}", row["tree_id"], row["score"], row["band"]);
        *net.entry(key).or_default() += row["diff"].as_i64().unwrap();
    }
    net.retain(|_, d| *d != 0);
    let final_scores = rows(&dir.path().join("out/tree_scores/part-00000.parquet"));
    let mut want_net: BTreeMap<String, i64> = BTreeMap::new();
    for row in &final_scores {
        want_net.insert(format!("{}|{}|{}", row["tree_id"], row["score"], row["band"]), 1);
    }
    assert_eq!(net, want_net, "score changes do not add up to the final tree_scores");

    // Writing the same input again replaces the event tables' files instead of duplicating them
    // (their names come from source positions). Derived tables (score_changes, alerts) are named
    // by the dataflow time of their first change, which depends on how rounds fall with several
    // workers: they become exactly-once with checkpoints, which will record the roll points.
    let event_files = |files: Vec<PathBuf>| -> Vec<PathBuf> {
        let derived = ["score_changes", "alerts"].map(|t| lake.join(t));
        files.into_iter().filter(|f| !derived.iter().any(|d| f.starts_with(d))).collect()
    };
    let before = event_files(files_under(&lake));
    backfill(&input, &dir.path().join("out2"), lake.to_str().unwrap(), &[]);
    assert_eq!(event_files(files_under(&lake)), before);
    let again = read_lake(&lake);
    for table in ["trees", "assessments", "readings", "deadletter"] {
        assert_eq!(again.get(table).map(Vec::len), tables.get(table).map(Vec::len), "{table} after a rewrite");
    }
}

struct Moto(std::process::Child);
impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn python(script: &str, envs: &[(&str, String)]) -> String {
    let out = Command::new("python3")
        .args(["-c", script])
        .envs(envs.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .expect("python3");
    assert!(out.status.success(), "python failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn lake_on_s3_compatible_storage() {
    let port = free_port();
    let child = Command::new("python3")
        .args(["-m", "moto.server", "-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("moto server (pip install 'moto[server]'; scripts/test-all.sh does)");
    let _moto = Moto(child);
    let endpoint = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "moto did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    let envs = [
        ("AWS_ENDPOINT", endpoint.clone()),
        ("AWS_ALLOW_HTTP", "true".to_string()),
        ("AWS_ACCESS_KEY_ID", "test".to_string()),
        ("AWS_SECRET_ACCESS_KEY", "test".to_string()),
        ("AWS_REGION", "us-east-1".to_string()),
    ];
    let boto = "import boto3, os\ns3 = boto3.client('s3', endpoint_url=os.environ['AWS_ENDPOINT'], region_name='us-east-1', aws_access_key_id='test', aws_secret_access_key='test')\n";
    python(&format!("{boto}s3.create_bucket(Bucket='treeai')"), &envs);

    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("e.ndjson");
    produce(&input, "3000");
    backfill(&input, &dir.path().join("out"), "s3://treeai/lake", &envs);
    let listing = python(
        &format!(
            "{boto}for o in s3.list_objects_v2(Bucket='treeai', Prefix='lake/').get('Contents', []): print(o['Key'])"
        ),
        &envs,
    );
    let keys: Vec<&str> = listing.lines().collect();
    for table in ["readings", "trees", "score_changes", "deadletter"] {
        assert!(keys.iter().any(|k| k.starts_with(&format!("lake/{table}/date="))), "no {table} files in {keys:?}");
    }
    assert!(keys.iter().all(|k| k.ends_with(".parquet")), "{keys:?}");
    assert!(keys.iter().any(|k| k.contains("/hour=")), "{keys:?}");
}

fn psql(port: &str, sql: &str) -> String {
    let out = Command::new("psql")
        .args(["-h", "127.0.0.1", "-p", port, "-U", "treeai", "-At", "-c", sql])
        .output()
        .expect("psql");
    assert!(out.status.success(), "psql {sql}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn lake_tables_in_sql_with_partition_filters_and_a_live_join() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("e.ndjson");
    produce(&input, "6000");
    let lake = dir.path().join("lake");
    let mut run = Running::start(&[
        "run",
        "--workers",
        "2",
        "--input",
        input.to_str().unwrap(),
        "--lake",
        lake.to_str().unwrap(),
    ]);
    run.wait_for(60, |l| l.contains("input complete"));
    let port = run.pg.rsplit_once(':').unwrap().1.to_string();

    let text = std::fs::read(&input).unwrap();
    let readings: Vec<i64> = text
        .split(|b| *b == b'\n')
        .filter_map(|l| match parse_event(l, None, Position::default()) {
            Ok(Event::Reading(r)) => Some(r.ts),
            _ => None,
        })
        .collect();
    assert_eq!(psql(&port, "select count(*) from lake.readings"), readings.len().to_string());
    let ts = readings[0];
    let (date, hour) = (format_day(day_of(ts)), ts.rem_euclid(86_400_000) / 3_600_000);
    let in_hour =
        readings.iter().filter(|t| day_of(**t) == day_of(ts) && t.rem_euclid(86_400_000) / 3_600_000 == hour).count();
    assert_eq!(
        psql(&port, &format!("select count(*) from lake.readings where date = '{date}' and hour = '{hour:02}'")),
        in_hour.to_string()
    );
    // A live view joined with a lake table, in one query.
    let joined = psql(
        &port,
        "select count(distinct s.tree_id) from tree_scores s join lake.trees t on s.tree_id = t.tree_id where not t.deleted",
    );
    let live = psql(&port, "select count(*) from tree_scores");
    assert_eq!(joined, live, "every scored tree has its registry events in the lake");
    assert!(run.interrupt().success());
}

/// A lake table lists its files at every scan: files landed after a query are counted by the
/// next one. (DataFusion 55 caches a table's listing, without expiry, unless told not to.)
#[test]
fn files_landed_after_a_query_are_seen_by_the_next_one() {
    use std::sync::Arc;
    use treeai_dataflows::runtime::Stats;
    use treeai_dataflows::store::Catalog;
    use treeai_sql::metrics::Metrics;
    use treeai_sql::{Engine, SqlConfig};

    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("e.ndjson");
    produce(&input, "6000");
    let written = dir.path().join("written");
    backfill(&input, &dir.path().join("out"), written.to_str().unwrap(), &[]);
    let files = files_under(&written.join("readings"));
    assert!(files.len() >= 2, "want two readings files or more, got {files:?}");

    // An engine over an empty lake; the files land one at a time between its queries.
    let lake = dir.path().join("lake");
    std::fs::create_dir_all(&lake).unwrap();
    let catalog = Arc::new(Catalog::new());
    let metrics = Arc::new(Metrics::new(Arc::new(Stats::default()), catalog.clone(), "test"));
    let engine =
        Engine::new(catalog, SqlConfig::default(), metrics).unwrap().with_lake(lake.to_str().unwrap(), &[]).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let count = || {
        let out = rt.block_on(engine.query("select count(*) from lake.readings", None, "test")).unwrap();
        batch_rows(&out.batches[0])[0]["count(*)"].as_i64().unwrap()
    };
    let mut landed = 0;
    for file in &files {
        let to = lake.join(file.strip_prefix(&written).unwrap());
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(file, &to).unwrap();
        landed += rows(file).len() as i64;
        assert_eq!(count(), landed, "readings after landing {}", to.display());
    }
}
