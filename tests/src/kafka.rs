//! Kafka end to end against a real broker (Tansu): `kcat` and `treeai
//! produce` as producers, `treeai run --brokers` as the consumer, `kcat` as
//! the consumer of the alert and dead-letter topics.
//!
//! The broker is `$TREEAI_TEST_BROKERS` when set (scripts/test-all.sh starts
//! one with scripts/kafka.sh); otherwise each test starts a private Tansu (it
//! must be installed: `scripts/kafka.sh install`). Every test uses topics of
//! its own, so tests share a broker safely.

use crate::common::{batch_rows, diff_views, free_addr, http, treeai_bin, Moto, Running};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub(crate) type Views = BTreeMap<&'static str, Vec<Map<String, Value>>>;

/// Debian's kcat with a librdkafka that talks to Tansu (see scripts/kcat).
fn kcat() -> Command {
    Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/kcat"))
}

fn tansu() -> PathBuf {
    let home = std::env::var("HOME").unwrap_or_default();
    let installed = Path::new(&home).join(".cargo/bin/tansu");
    if installed.exists() {
        installed
    } else {
        PathBuf::from("tansu")
    }
}

/// A Tansu broker: shared (from the environment) or private to one test.
pub struct Broker {
    /// `HOST:PORT`.
    pub addr: String,
    child: Option<Child>,
    storage: String,
    log: PathBuf,
    /// What the broker tells clients to connect to (`addr` unless a TLS terminator is in front).
    advertised: Option<String>,
    /// The broker's working directory (a `sqlite://` storage path is relative to it).
    dir: Option<PathBuf>,
}

impl Broker {
    /// The shared broker if there is one, else a private one with memory storage.
    pub fn for_test() -> Broker {
        match std::env::var("TREEAI_TEST_BROKERS") {
            Ok(addr) if !addr.is_empty() => {
                Broker { addr, child: None, storage: String::new(), log: PathBuf::new(), advertised: None, dir: None }
            }
            _ => Broker::private("memory://tansu/", &[]),
        }
    }

    /// A broker of this test's own on a free port.
    pub fn private(storage: &str, envs: &[(&str, String)]) -> Broker {
        Broker::private_advertising(storage, envs, None)
    }

    /// A private broker that tells clients to connect to `advertised` (a TLS terminator).
    pub fn private_advertising(storage: &str, envs: &[(&str, String)], advertised: Option<String>) -> Broker {
        let addr = free_addr();
        let log = std::env::temp_dir().join(format!("tansu-{}.log", addr.replace([':', '.'], "-")));
        let mut b = Broker { addr, child: None, storage: storage.to_string(), log, advertised, dir: None };
        b.start(envs);
        b
    }

    /// A private broker started in `dir` (for `sqlite://FILE` storage, which Tansu opens there).
    pub fn private_in(storage: &str, dir: &Path) -> Broker {
        let addr = free_addr();
        let log = dir.join("tansu.log");
        let mut b =
            Broker { addr, child: None, storage: storage.to_string(), log, advertised: None, dir: Some(dir.into()) };
        b.start(&[]);
        b
    }

    /// Starts (or restarts) a private broker and waits until it listens.
    pub fn start(&mut self, envs: &[(&str, String)]) {
        let url = format!("tcp://{}", self.addr);
        let advertised = format!("tcp://{}", self.advertised.as_deref().unwrap_or(&self.addr));
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).expect("broker log");
        let mut command = Command::new(tansu());
        if let Some(dir) = &self.dir {
            command.current_dir(dir);
        }
        let child = command
            .args(["broker", "--storage-engine", &self.storage, "--listener-url", &url])
            .args(["--advertised-listener-url", &advertised])
            .envs(envs.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("tansu (install it with scripts/kafka.sh install)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(&self.addr).is_err() {
            assert!(Instant::now() < deadline, "tansu did not listen on {}", self.addr);
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops a private broker.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Creates `topic` with `partitions` partitions.
    pub fn create_topic(&self, topic: &str, partitions: u32) {
        self.create_topic_with(topic, partitions, &[])
    }

    /// Creates `topic` with `partitions` partitions and topic configs (`KEY=VALUE`).
    pub fn create_topic_with(&self, topic: &str, partitions: u32, configs: &[&str]) {
        let out = Command::new(tansu())
            .args(["topic", "create", topic, "--broker", &format!("tcp://{}", self.addr)])
            .args(["--partitions", &partitions.to_string()])
            .args(configs.iter().flat_map(|c| ["--config", c]))
            .output()
            .expect("tansu topic create");
        assert!(out.status.success(), "creating {topic}: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// Creates the five topics under `prefix` and returns the `treeai` flags naming them.
    pub fn topics(&self, prefix: &str, partitions: u32) -> Vec<String> {
        let mut flags = vec!["--brokers".to_string(), self.addr.clone()];
        for kind in ["trees", "assessments", "readings", "alerts", "deadletter"] {
            let name = format!("{prefix}.{kind}");
            self.create_topic(&name, partitions);
            flags.push(format!("--{kind}-topic"));
            flags.push(name);
        }
        flags
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.stop();
    }
}

pub(crate) fn treeai(args: &[&str]) -> String {
    let out = Command::new(treeai_bin()).args(args).output().expect("run treeai");
    assert!(out.status.success(), "treeai {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// An NDJSON file from the generator.
pub(crate) fn produce_file(path: &Path, args: &[&str]) {
    let mut all = vec!["produce", "--output", path.to_str().unwrap()];
    all.extend_from_slice(args);
    treeai(&all);
}

/// Sends `lines` to the topics by their `type` (unreadable lines to readings) with kcat,
/// keyed by `tree_id` as the generator does.
pub(crate) fn kcat_produce(broker: &str, prefix: &str, lines: &[&str], dir: &Path) {
    kcat_produce_with(broker, prefix, lines, dir, |_| Vec::new())
}

/// [`kcat_produce`] with more kcat arguments per topic (`-X` settings, `-z` codec).
fn kcat_produce_with(broker: &str, prefix: &str, lines: &[&str], dir: &Path, extra: impl Fn(&str) -> Vec<String>) {
    let mut by_topic: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for line in lines {
        assert!(!line.contains('\t'), "a line with a tab cannot go through kcat -K: {line}");
        let v: Option<Value> = serde_json::from_str(line).ok();
        let kind = match v.as_ref().and_then(|v| v.get("type")).and_then(Value::as_str) {
            Some("tree") => "trees",
            Some("assessment") => "assessments",
            _ => "readings",
        };
        let key = key_of(v.as_ref());
        let buf = by_topic.entry(format!("{prefix}.{kind}")).or_default();
        buf.extend_from_slice(format!("{key}\t{line}\n").as_bytes());
    }
    for (topic, data) in by_topic {
        let file = dir.join(format!("{topic}.kcat"));
        std::fs::write(&file, data).unwrap();
        let out = kcat()
            .args(["-P", "-b", broker, "-t", &topic, "-K", "\t", "-l", file.to_str().unwrap()])
            .args(extra(&topic))
            .output()
            .expect("kcat (scripts/kafka.sh install)");
        assert!(out.status.success(), "kcat -P {topic}: {}", String::from_utf8_lossy(&out.stderr));
    }
}

/// The key kcat sends a line with: its `tree_id` without control characters (a
/// malformed id may hold a tab, kcat's key delimiter), `unknown` without one.
fn key_of(v: Option<&Value>) -> String {
    let key = v.and_then(|v| v.get("tree_id")).and_then(Value::as_str).unwrap_or("unknown");
    key.chars().filter(|c| !c.is_control()).collect()
}

/// Every message of `topic` as (key, headers, payload), read by kcat from the beginning.
///
/// Not `kcat -e` alone: Tansu's high watermark may stand at the start of a partition's last
/// batch, and librdkafka then reports the partition's end before handing over that batch, so
/// `-e` can miss the newest messages (seen in CI as a missing last alert). `-e` gives a lower
/// bound; a second kcat without `-e` reads until it has at least that many and nothing more
/// came for two seconds.
pub(crate) fn kcat_consume(broker: &str, topic: &str) -> Vec<(String, String, String)> {
    kcat_consume_with(broker, topic, &[])
}

/// [`kcat_consume`] with more kcat arguments (`-X` settings).
fn kcat_consume_with(broker: &str, topic: &str, extra: &[String]) -> Vec<(String, String, String)> {
    let format = ["-f", "%k\u{1}%h\u{1}%s\u{2}"];
    let out = kcat()
        .args(["-C", "-b", broker, "-t", topic, "-o", "beginning", "-e", "-q"])
        .args(extra)
        .args(format)
        .output()
        .expect("kcat -C");
    assert!(out.status.success(), "kcat -C {topic}: {}", String::from_utf8_lossy(&out.stderr));
    let at_least = out.stdout.iter().filter(|&&b| b == 2).count();
    let mut child = kcat()
        .args(["-C", "-u", "-b", broker, "-t", topic, "-o", "beginning", "-q"])
        .args(extra)
        .args(format)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("kcat -C");
    let (tx, rx) = std::sync::mpsc::channel();
    let mut stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 65536];
        while let Ok(n @ 1..) = std::io::Read::read(&mut stdout, &mut buf) {
            if tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let mut bytes = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        match rx.recv_timeout(Duration::from_secs(2)) {
            Ok(chunk) => bytes.extend(chunk),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout)
                if bytes.iter().filter(|&&b| b == 2).count() >= at_least =>
            {
                break
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => panic!("kcat -C {topic} ended"),
        }
        assert!(Instant::now() < deadline, "kcat -C {topic}: fewer than {at_least} messages in 120 s");
    }
    let _ = child.kill();
    let _ = child.wait();
    String::from_utf8_lossy(&bytes)
        .split('\u{2}')
        .filter(|m| !m.trim().is_empty())
        .map(|m| {
            let mut parts = m.splitn(3, '\u{1}');
            let mut next = || parts.next().unwrap_or_default().trim_start_matches('\n').to_string();
            (next(), next(), next())
        })
        .collect()
}

/// One HTTP POST /v1/sql answered as Arrow IPC.
fn sql_arrow(addr: &str, sql: &str) -> Vec<arrow::record_batch::RecordBatch> {
    let body = serde_json::json!({ "sql": sql }).to_string();
    let headers = [("Content-Type", "application/json"), ("Accept", "application/vnd.apache.arrow.stream")];
    let (status, head, body) = http(addr, "POST", "/v1/sql", &headers, body.as_bytes()).unwrap();
    assert_eq!(status, 200, "{sql}: {head} {}", String::from_utf8_lossy(&body));
    arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(body), None).unwrap().map(|b| b.unwrap()).collect()
}

/// A Prometheus sample of `/metrics` (summed over labels); `None` if the server does not answer.
pub(crate) fn metric(addr: &str, name: &str) -> Option<f64> {
    let (_, _, body) = http(addr, "GET", "/metrics", &[], b"").ok()?;
    let values: Vec<f64> = String::from_utf8_lossy(&body)
        .lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .collect();
    (!values.is_empty()).then(|| values.iter().sum())
}

/// Sorts rows by their non-float columns (the views' keys are among them).
fn sorted(mut rows: Vec<Map<String, Value>>) -> Vec<Map<String, Value>> {
    let key = |r: &Map<String, Value>| -> String {
        r.iter().filter(|(_, v)| !v.is_f64()).map(|(k, v)| format!("{k}={v};")).collect()
    };
    rows.sort_by_cached_key(key);
    rows
}

pub(crate) fn live_views(http: &str) -> Views {
    treeai_dataflows::VIEW_NAMES
        .iter()
        .map(|v| (*v, sorted(sql_arrow(http, &format!("select * from {v}")).iter().flat_map(batch_rows).collect())))
        .collect()
}

/// The final views of `treeai backfill` and its final watermark.
pub(crate) fn backfill_views(input: &Path, out: &Path) -> (Views, i64) {
    let summary =
        treeai(&["backfill", "--workers", "2", "--input", input.to_str().unwrap(), "--output", out.to_str().unwrap()]);
    let w = summary.split("watermark ").nth(1).and_then(|s| s.split([',', ' ']).next()).unwrap_or_default();
    let w = treeai_dataflows::time::parse_rfc3339(w).unwrap_or_else(|| panic!("no watermark in {summary}"));
    let views = treeai_dataflows::VIEW_NAMES
        .iter()
        .map(|v| {
            let file = std::fs::File::open(out.join(v).join("part-00000.parquet")).unwrap();
            let reader = ParquetRecordBatchReaderBuilder::try_new(file).unwrap().build().unwrap();
            (*v, sorted(reader.flat_map(|b| batch_rows(&b.unwrap())).collect()))
        })
        .collect();
    (views, w)
}

/// Waits until `treeai run` has read `count` messages and its views settled at watermark `w`.
fn wait_settled(run: &Running, count: usize, w: i64, secs: u64) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let read = metric(&run.http, "treeai_events_read_total");
        let wm = metric(&run.http, "treeai_watermark_ms");
        if read == Some(count as f64) && wm == Some(w as f64) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "not settled after {secs}s: read {read:?} of {count}, watermark {wm:?} of {w}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `lines` as an input file in `dir`.
pub(crate) fn input_file(dir: &Path, lines: &[&str]) -> PathBuf {
    let input = dir.join("input.ndjson");
    std::fs::write(&input, lines.join("\n") + "\n").unwrap();
    input
}

/// Streams `lines` through Kafka (`partitions` per topic, `workers` workers) and
/// checks the settled views against `treeai backfill` of the same lines.
fn stream_equals_backfill(broker: &Broker, prefix: &str, partitions: u32, workers: u32, lines: &[&str]) -> Running {
    let dir = tempfile::tempdir().unwrap();
    let input = input_file(dir.path(), lines);
    let flags = broker.topics(prefix, partitions);
    kcat_produce(&broker.addr, prefix, lines, dir.path());
    let workers = workers.to_string();
    let mut args = vec!["run", "--workers", &workers, "--no-lake", "--idle-timeout-ms", "1000"];
    args.extend(flags.iter().map(String::as_str));
    let (want, w) = backfill_views(&input, &dir.path().join("backfill"));
    let run = Running::start(&args);
    wait_settled(&run, lines.len(), w, 120);
    let got = live_views(&run.http);
    assert!(want["tree_scores"].len() > 10, "a meaningful input");
    if let Some(diff) = diff_views(&got, &want) {
        panic!("{partitions} partitions, {workers} workers: live views differ from backfill:\n{diff}");
    }
    run
}

pub(crate) fn generated(args: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.ndjson");
    produce_file(&path, args);
    std::fs::read_to_string(path).unwrap()
}

#[test]
fn kcat_to_treeai_equals_backfill_with_deadletters_and_alerts() {
    let broker = Broker::for_test();
    let text = generated(&["--count", "12000", "--trees", "300", "--bad-fraction", "0.02", "--season", "emergency"]);
    let lines: Vec<&str> = text.lines().filter(|l| !l.contains('\t')).collect();
    let prefix = format!("t1-{}", std::process::id());
    let mut run = stream_equals_backfill(&broker, &prefix, 4, 2, &lines);

    // Rejected input: every rejected message is in the dead-letter topic with its raw bytes, key and headers.
    let rejected = metric(&run.http, "treeai_events_rejected_total").unwrap() as usize;
    assert!(rejected > 50, "the input has malformed events: {rejected}");
    let dead = kcat_consume(&broker.addr, &format!("{prefix}.deadletter"));
    assert_eq!(dead.len(), rejected, "one dead letter per rejected message");
    let sent: std::collections::HashSet<&str> = lines.iter().copied().collect();
    for (key, headers, payload) in &dead {
        assert!(headers.contains("treeai.reason="), "{headers}");
        assert!(headers.contains("treeai.rule="), "{headers}");
        assert!(headers.contains(&format!("treeai.source.topic={prefix}.")), "{headers}");
        assert!(headers.contains("treeai.source.partition="), "{headers}");
        assert!(headers.contains("treeai.source.offset="), "{headers}");
        // The raw payload, cut to 64 KiB (kcat's output is read as UTF-8: skip what that mangled).
        if !payload.contains('\u{fffd}') {
            if sent.contains(payload.as_str()) {
                let want = key_of(serde_json::from_str::<Value>(payload).ok().as_ref());
                assert_eq!(key, &want, "the original key is kept");
            } else {
                let cut = payload.len() == 64 << 10 && lines.iter().any(|l| l.starts_with(payload.as_str()));
                assert!(cut, "raw payload not kept: {}", &payload[..payload.len().min(200)]);
            }
        }
    }

    // Alerts: as many as the pipeline raised, and for each tree they alternate critical/resolved.
    let alerts = kcat_consume(&broker.addr, &format!("{prefix}.alerts"));
    let raised = metric(&run.http, "treeai_alerts_total").unwrap() as usize;
    assert!(raised > 0, "an emergency season raises alerts");
    assert_eq!(alerts.len(), raised);
    let mut last: BTreeMap<String, String> = BTreeMap::new();
    for (key, _, payload) in &alerts {
        let a: Value = serde_json::from_str(payload).unwrap();
        assert_eq!(a["tree_id"].as_str(), Some(key.as_str()), "keyed by tree_id");
        for field in ["region", "score", "band", "previous_band", "watermark", "top_penalty"] {
            assert!(a.get(field).is_some(), "{field} in {payload}");
        }
        let kind = a["kind"].as_str().unwrap().to_string();
        let prev = last.insert(key.clone(), kind.clone());
        match kind.as_str() {
            "critical" => assert_ne!(prev.as_deref(), Some("critical"), "two criticals in a row for {key}"),
            "resolved" => assert_eq!(prev.as_deref(), Some("critical"), "resolved without critical for {key}"),
            other => panic!("alert kind {other}"),
        }
    }
    // Every alert and dead letter was acknowledged, and /metrics says so.
    let deadline = Instant::now() + Duration::from_secs(30);
    while metric(&run.http, "treeai_kafka_delivered_total") != Some((raised + rejected) as f64) {
        assert!(Instant::now() < deadline, "deliveries: {:?}", metric(&run.http, "treeai_kafka_delivered_total"));
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(metric(&run.http, "treeai_kafka_delivery_errors_total"), Some(0.0));
    // Everything was read: no partition lags behind its end (published once a second).
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(&run.http, "treeai_source_lag") != Some(0.0) {
        assert!(Instant::now() < deadline, "source lag: {:?}", metric(&run.http, "treeai_source_lag"));
        std::thread::sleep(Duration::from_millis(100));
    }
    // Freshness was recorded for the applied events.
    assert!(metric(&run.http, "treeai_freshness_seconds_count").is_some_and(|n| n > 0.0));
    assert!(run.interrupt().success());
}

#[test]
fn more_partitions_than_workers_and_more_workers_than_partitions() {
    let broker = Broker::for_test();
    let text = generated(&["--count", "6000", "--trees", "200", "--seed", "7"]);
    let lines: Vec<&str> = text.lines().collect();
    let pid = std::process::id();
    let mut a = stream_equals_backfill(&broker, &format!("t2a-{pid}"), 5, 2, &lines);
    assert!(a.interrupt().success());
    let mut b = stream_equals_backfill(&broker, &format!("t2b-{pid}"), 1, 3, &lines);
    assert!(b.interrupt().success());
}

#[test]
fn produce_to_kafka_holds_the_rate_and_reports_it() {
    let broker = Broker::for_test();
    let prefix = format!("t3-{}", std::process::id());
    let flags = broker.topics(&prefix, 2);
    let mut args = vec!["produce", "--count", "3000", "--rate", "2000", "--trees", "100"];
    args.extend(flags.iter().map(String::as_str));
    let started = Instant::now();
    let out = Command::new(treeai_bin()).args(&args).output().unwrap();
    let secs = started.elapsed().as_secs_f64();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("3000 sent, 3000 delivered"), "{stderr}");
    assert!(stderr.contains("0 delivery errors"), "{stderr}");
    let sent_rate: f64 = stderr
        .split("sent at ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no send rate in {stderr}"));
    assert!((1800.0..=2100.0).contains(&sent_rate), "held {sent_rate} events/s for a target of 2000: {stderr}");
    // 3000 events at 2000/s take at least 1.5 s: the rate is held, not exceeded.
    assert!(secs >= 1.4, "3000 events at 2000/s took only {secs:.2}s");
    let mut total = 0;
    for kind in ["trees", "assessments", "readings"] {
        let msgs = kcat_consume(&broker.addr, &format!("{prefix}.{kind}"));
        for (key, _, payload) in &msgs {
            let v: Value = serde_json::from_str(payload).unwrap();
            assert_eq!(v["tree_id"].as_str(), Some(key.as_str()), "keyed by tree_id");
            assert_eq!(v["type"].as_str(), Some(&kind[..kind.len() - 1]), "{kind} topic holds {payload}");
        }
        total += msgs.len();
    }
    assert_eq!(total, 3000);
}

#[test]
fn unreachable_broker_is_reported_and_retried_not_fatal() {
    // Nothing listens on this address: treeai keeps running, answers SQL, and reports the errors.
    let addr = free_addr();
    let mut run = Running::start(&["run", "--workers", "2", "--no-lake", "--brokers", &addr]);
    run.wait_for(60, |l| l.contains("kafka errors"));
    assert_eq!(metric(&run.http, "treeai_events_read_total"), Some(0.0));
    assert!(run.child.try_wait().unwrap().is_none(), "still running");
    assert!(run.interrupt().success());
}

#[test]
fn broker_stop_and_start_while_running_ends_with_the_same_views() {
    // A broker that keeps its log across restarts: Tansu on S3 storage (moto).
    let moto = Moto::start();
    moto.create_bucket("tansu");
    let mut broker = Broker::private("s3://tansu/", &moto.envs);
    let text = generated(&["--count", "8000", "--trees", "200", "--seed", "11", "--season", "peak"]);
    let lines: Vec<&str> = text.lines().collect();
    let (first, second) = lines.split_at(lines.len() / 2);
    let dir = tempfile::tempdir().unwrap();
    let (want, w) = backfill_views(&input_file(dir.path(), &lines), &dir.path().join("backfill"));
    let flags = broker.topics("restart", 3);
    kcat_produce(&broker.addr, "restart", first, dir.path());

    let mut args = vec!["run", "--workers", "2", "--no-lake", "--idle-timeout-ms", "1000"];
    args.extend(flags.iter().map(String::as_str));
    let mut run = Running::start(&args);
    wait_read(&run, first.len(), 60);

    // The broker goes away: treeai reports it, keeps running and keeps answering SQL.
    broker.stop();
    run.wait_for(60, |l| l.contains("kafka errors"));
    assert!(run.child.try_wait().unwrap().is_none(), "treeai stopped with the broker");
    assert!(!sql_arrow(&run.http, "select count(*) from trees").is_empty());

    // It comes back with its log; the second half arrives; the views end as the backfill of all of it.
    broker.start(&moto.envs);
    kcat_produce(&broker.addr, "restart", second, dir.path());
    wait_settled(&run, lines.len(), w, 120);
    if let Some(diff) = diff_views(&live_views(&run.http), &want) {
        panic!("after a broker restart the live views differ from backfill:\n{diff}");
    }
    assert!(run.interrupt().success());
}

/// Waits until `run` has read `n` messages.
fn wait_read(run: &Running, n: usize, secs: u64) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while metric(&run.http, "treeai_events_read_total") != Some(n as f64) {
        assert!(Instant::now() < deadline, "{n} messages not read within {secs} s");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The lake after a restored run settled and took a checkpoint: every valid event and
/// dead letter exactly once, `score_changes` netting to `tree_scores`, alerts consistent;
/// and the output topics: every alert and dead letter once.
pub(crate) fn check_exactly_once(run: &Running, broker: &str, prefix: &str, valid: i64, rejected: i64) {
    check_lake(run, valid, rejected);
    check_outputs(
        broker,
        prefix,
        rejected as usize,
        &crate::recovery::sql(run, "select tree_id, band from tree_scores"),
    );
}

/// The lake after a checkpoint asked of `run`: every valid event and dead letter exactly once,
/// `score_changes` netting to `tree_scores`, alerts consistent.
pub(crate) fn check_lake(run: &Running, valid: i64, rejected: i64) {
    let (status, _, body) = http(&run.http, "POST", "/v1/admin/checkpoint", &[], b"").unwrap();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let count = |q: &str| crate::recovery::sql(run, q)[0][0].as_i64().unwrap();
    let events = "select (select count(*) from lake.readings) + (select count(*) from lake.assessments) + (select count(*) from lake.trees)";
    // The files are published by the next checkpoint that reaches the store, each moved into
    // its partition (a copy and a delete on S3): after an object-store outage, on a loaded
    // machine and a slow S3 server (moto), that can take a while.
    let deadline = Instant::now() + Duration::from_secs(180);
    while count(events) < valid && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(count(events), valid, "valid events in the lake");
    for table in ["readings", "assessments", "trees"] {
        let distinct = count(&format!("select count(*) from (select distinct source, \"offset\" from lake.{table})"));
        assert_eq!(distinct, count(&format!("select count(*) from lake.{table}")), "{table} duplicated");
    }
    assert_eq!(count("select count(*) from lake.deadletter"), rejected, "dead letters in the lake");
    crate::recovery::check_derived(run);
}

#[test]
fn broker_restart_and_a_crash_while_it_is_down_lose_nothing_and_repeat_nothing() {
    // A broker that keeps its log across restarts: Tansu on S3 storage (moto).
    let moto = Moto::start();
    moto.create_bucket("tansu");
    let mut broker = Broker::private("s3://tansu/", &moto.envs);
    let text =
        generated(&["--count", "20000", "--trees", "300", "--seed", "5", "--season", "peak", "--bad-fraction", "0.01"]);
    let lines: Vec<&str> = text.lines().filter(|l| !l.contains('\t')).collect();
    let (first, second) = lines.split_at(lines.len() / 2);
    let dir = tempfile::tempdir().unwrap();
    let input = input_file(dir.path(), &lines);
    let summary =
        treeai(&["backfill", "--input", input.to_str().unwrap(), "--output", dir.path().join("bf").to_str().unwrap()]);
    let rejected: i64 = summary
        .split(", ")
        .find_map(|s| s.strip_suffix(" rejected")?.parse().ok())
        .unwrap_or_else(|| panic!("{summary}"));
    let (want, w) = backfill_views(&input, &dir.path().join("backfill"));
    let prefix = "crash";
    let flags = broker.topics(prefix, 3);
    kcat_produce(&broker.addr, prefix, first, dir.path());

    let lake = dir.path().join("lake");
    let start = || {
        let mut args = vec!["run", "--workers", "2", "--idle-timeout-ms", "1000", "--lake", lake.to_str().unwrap()];
        args.extend(["--lake-roll-ms", "1000", "--checkpoint-interval-ms", "400"]);
        args.extend(flags.iter().map(String::as_str));
        Running::start(&args)
    };
    let mut crashed = start();
    wait_read(&crashed, first.len(), 60);
    // The broker goes away, and while it is away the process is killed.
    broker.stop();
    crashed.wait_for(60, |l| l.contains("kafka errors"));
    std::thread::sleep(Duration::from_millis(1500));
    crashed.child.kill().unwrap();
    crashed.child.wait().unwrap();

    // The broker comes back with its log, the second half arrives, the process restarts.
    broker.start(&moto.envs);
    kcat_produce(&broker.addr, prefix, second, dir.path());
    let run = start();
    wait_views(&run, &want, w, 300);
    let checked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        check_exactly_once(&run, &broker.addr, prefix, lines.len() as i64 - rejected, rejected)
    }));
    if let Err(panic) = checked {
        crashed.print_notable("the killed process");
        run.print_notable("the restored process");
        std::panic::resume_unwind(panic);
    }
}

#[test]
fn kafka_settings_from_the_config_file() {
    let broker = Broker::for_test();
    let prefix = format!("t5-{}", std::process::id());
    broker.topics(&prefix, 2);
    let text = generated(&["--count", "2000", "--trees", "50", "--seed", "3"]);
    let lines: Vec<&str> = text.lines().collect();
    let dir = tempfile::tempdir().unwrap();
    kcat_produce(&broker.addr, &prefix, &lines, dir.path());
    let config = dir.path().join("treeai.toml");
    let mut toml = format!("idle_timeout_ms = 1000\n[kafka]\nbrokers = \"{}\"\nstart = \"earliest\"\n", broker.addr);
    toml += "[kafka.topics]\n";
    for kind in ["trees", "assessments", "readings", "alerts", "deadletter"] {
        toml += &format!("{kind} = \"{prefix}.{kind}\"\n");
    }
    toml += "[kafka.properties]\n\"fetch.wait.max.ms\" = \"20\"\n";
    std::fs::write(&config, toml).unwrap();
    let (want, w) = backfill_views(&input_file(dir.path(), &lines), &dir.path().join("backfill"));
    let mut run = Running::start(&["run", "--workers", "2", "--no-lake", "--config", config.to_str().unwrap()]);
    wait_settled(&run, lines.len(), w, 120);
    if let Some(diff) = diff_views(&live_views(&run.http), &want) {
        panic!("config-file Kafka source differs from backfill:\n{diff}");
    }
    assert!(run.interrupt().success());

    // An unknown librdkafka property is a clear error at start, not a crash later.
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        format!("[kafka]\nbrokers = \"{}\"\n[kafka.properties]\n\"no.such.property\" = \"1\"\n", broker.addr),
    )
    .unwrap();
    let out = Command::new(treeai_bin())
        .args(["run", "--no-lake", "--no-checkpoint", "--config", bad.to_str().unwrap(), "--sql-addr", &free_addr()])
        .args(["--http-addr", &free_addr()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "started with an unknown property: {stderr}");
    assert!(stderr.contains("no.such.property"), "{stderr}");
}

#[test]
fn topics_created_after_start_are_picked_up() {
    let broker = Broker::for_test();
    let prefix = format!("t6-{}", std::process::id());
    let mut args: Vec<String> = ["run", "--workers", "2", "--no-lake", "--idle-timeout-ms", "1000", "--brokers"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    args.push(broker.addr.clone());
    for kind in ["trees", "assessments", "readings", "alerts", "deadletter"] {
        args.push(format!("--{kind}-topic"));
        args.push(format!("{prefix}.{kind}"));
    }
    // treeai starts before its topics exist, then they appear and fill.
    let mut run = Running::start(&args.iter().map(String::as_str).collect::<Vec<_>>());
    std::thread::sleep(Duration::from_secs(2));
    broker.topics(&prefix, 3);
    let text = generated(&["--count", "3000", "--trees", "60", "--seed", "5"]);
    let lines: Vec<&str> = text.lines().collect();
    let dir = tempfile::tempdir().unwrap();
    kcat_produce(&broker.addr, &prefix, &lines, dir.path());
    let (want, w) = backfill_views(&input_file(dir.path(), &lines), &dir.path().join("backfill"));
    wait_settled(&run, lines.len(), w, 120);
    if let Some(diff) = diff_views(&live_views(&run.http), &want) {
        panic!("topics created after start: live views differ from backfill:\n{diff}");
    }
    assert!(run.interrupt().success());
}

/// Copies a directory tree.
fn copy_dir(from: &Path, to: &Path) {
    for file in crate::common::files_under(from) {
        let target = to.join(file.strip_prefix(from).unwrap());
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        std::fs::copy(&file, &target).unwrap();
    }
}

/// Waits until the live views equal `want` at watermark `w`.
pub(crate) fn wait_views(run: &Running, want: &Views, w: i64, secs: u64) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if metric(&run.http, "treeai_watermark_ms") == Some(w as f64) {
            match diff_views(&live_views(&run.http), want) {
                None => return,
                Some(diff) if Instant::now() > deadline => panic!("views differ from backfill:\n{diff}"),
                Some(_) => {}
            }
        }
        assert!(Instant::now() < deadline, "watermark {:?}, want {w}", metric(&run.http, "treeai_watermark_ms"));
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// Kill -9 of `treeai run` reading Kafka at random moments (seeds printed, `TREEAI_KILL_ROUNDS`
/// rounds, `TREEAI_KILL_SEED` replays one), then a restart: the views equal backfill's, the lake
/// holds every valid event and dead letter once, `score_changes` nets to `tree_scores`, alerts
/// never repeat. Then the final checkpoint restores under 1, 2 and 4 workers to the same views.
#[test]
fn kill_9_while_reading_kafka_then_restart_and_restore_under_other_worker_counts() {
    use rand::{Rng, SeedableRng};
    let broker = Broker::for_test();
    let text = generated(&["--count", "150000", "--trees", "2000", "--rate", "2000", "--bad-fraction", "0.01"]);
    let lines: Vec<&str> = text.lines().filter(|l| !l.contains('\t')).collect();
    let dir = tempfile::tempdir().unwrap();
    let input = input_file(dir.path(), &lines);
    let summary = treeai(
        &["backfill", "--workers", "2", "--input", input.to_str().unwrap(), "--output"]
            .into_iter()
            .chain([dir.path().join("bf").to_str().unwrap()])
            .collect::<Vec<_>>(),
    );
    let (want, w) = backfill_views(&input, &dir.path().join("backfill"));
    let rejected: i64 = summary
        .split(", ")
        .find_map(|s| s.strip_suffix(" rejected")?.parse().ok())
        .unwrap_or_else(|| panic!("{summary}"));
    let valid = lines.len() as i64 - rejected;

    for seed in crate::recovery::kill_seeds(crate::recovery::rounds()) {
        eprintln!("kafka kill -9 round: TREEAI_KILL_SEED={seed}");
        let mut rng = rand_pcg::Pcg64::seed_from_u64(seed);
        let prefix = format!("k9-{}-{seed}", std::process::id());
        let flags = broker.topics(&prefix, 4);
        kcat_produce(&broker.addr, &prefix, &lines, dir.path());
        let lake = dir.path().join(format!("lake-{seed}"));
        let start = |workers: &str, lake: &Path| {
            let mut args = vec!["run", "--workers", workers, "--idle-timeout-ms", "1000", "--lake"];
            args.extend([lake.to_str().unwrap(), "--lake-roll-ms", "1000", "--checkpoint-interval-ms", "400"]);
            args.extend(flags.iter().map(String::as_str));
            Running::start(&args)
        };
        for kill in 0..3 {
            let mut run = start("2", &lake);
            std::thread::sleep(Duration::from_millis(rng.random_range(500..3000)));
            let _ = run.child.kill();
            let _ = run.child.wait();
            eprintln!("  kill {kill}");
        }
        let mut run = start("2", &lake);
        wait_views(&run, &want, w, 300);
        // A checkpoint after the views settled commits every change up to them to the lake.
        let (status, _, body) = http(&run.http, "POST", "/v1/admin/checkpoint", &[], b"").unwrap();
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        // The lake rows are visible once a checkpoint has committed them.
        let deadline = Instant::now() + Duration::from_secs(60);
        let count = |q: &str| crate::recovery::sql(&run, q)[0][0].as_i64().unwrap();
        let events = "select (select count(*) from lake.readings) + (select count(*) from lake.assessments) + (select count(*) from lake.trees)";
        while count(events) < valid && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(200));
        }
        assert_eq!(count(events), valid, "seed {seed}: valid events in the lake");
        for (table, pos) in
            [("readings", "source, \"offset\""), ("assessments", "source, \"offset\""), ("trees", "source, \"offset\"")]
        {
            let distinct = count(&format!("select count(*) from (select distinct {pos} from lake.{table})"));
            assert_eq!(
                distinct,
                count(&format!("select count(*) from lake.{table}")),
                "seed {seed}: {table} duplicated"
            );
        }
        assert_eq!(count("select count(*) from (select distinct source, position from lake.deadletter)"), rejected);
        assert_eq!(count("select count(*) from lake.deadletter"), rejected, "seed {seed}: dead letters");
        crate::recovery::check_derived(&run);
        check_outputs(
            &broker.addr,
            &prefix,
            rejected as usize,
            &crate::recovery::sql(&run, "select tree_id, band from tree_scores"),
        );
        run.signal("TERM");
        assert_eq!(run.wait_exit(25).and_then(|s| s.code()), Some(0));

        // One checkpoint, restored under 1, 2 and 4 workers: the same views.
        for workers in ["1", "2", "4"] {
            let copy = dir.path().join(format!("lake-{seed}-w{workers}"));
            copy_dir(&lake, &copy);
            let mut run = start(workers, &copy);
            run.wait_for(60, |l| l.contains("resumed from checkpoint"));
            wait_views(&run, &want, w, 120);
            run.interrupt();
        }
    }
}

/// A header's value in kcat's `%h` rendering (`key=value,key=value`).
pub(crate) fn header<'a>(headers: &'a str, key: &str) -> Option<&'a str> {
    headers.split(',').find_map(|h| h.strip_prefix(key)?.strip_prefix('='))
}

/// The alert and dead-letter topics after crashes: every alert once (ids `tree_id/seq` with
/// no repeat and no gap), alternating critical/resolved per tree and ending with its band;
/// every dead letter once.
pub(crate) fn check_outputs(broker: &str, prefix: &str, rejected: usize, scores: &[Vec<Value>]) {
    let mut per_tree: BTreeMap<String, BTreeMap<u32, String>> = BTreeMap::new();
    for (_, headers, payload) in kcat_consume(broker, &format!("{prefix}.alerts")) {
        let id = header(&headers, "treeai.alert_id").unwrap_or_else(|| panic!("alert without an id: {headers}"));
        let (tree, seq) = id.rsplit_once('/').unwrap();
        let alert: Value = serde_json::from_str(&payload).unwrap();
        assert_eq!(alert["tree_id"], Value::from(tree));
        let kind = alert["kind"].as_str().unwrap().to_string();
        let old = per_tree.entry(tree.to_string()).or_default().insert(seq.parse().unwrap(), kind);
        assert!(old.is_none(), "alert {id} twice in the topic");
    }
    let bands: BTreeMap<String, String> =
        scores.iter().map(|r| (r[0].as_str().unwrap().to_string(), r[1].as_str().unwrap().to_string())).collect();
    for (tree, alerts) in &per_tree {
        let seqs: Vec<u32> = alerts.keys().copied().collect();
        assert_eq!(seqs, (1..=alerts.len() as u32).collect::<Vec<_>>(), "alert numbers of {tree}");
        for (seq, kind) in alerts {
            let want = if seq % 2 == 1 { "critical" } else { "resolved" };
            assert_eq!(kind, want, "alert {seq} of {tree}");
        }
        let open = alerts.len() % 2 == 1;
        assert_eq!(open, bands.get(tree).map(String::as_str) == Some("critical"), "{tree}: alerts vs final band");
    }
    let letters = kcat_consume(broker, &format!("{prefix}.deadletter"));
    let positions: std::collections::BTreeSet<_> = letters
        .iter()
        .map(|(_, h, _)| {
            (header(h, "treeai.source").map(str::to_string), header(h, "treeai.source.offset").map(str::to_string))
        })
        .collect();
    assert_eq!(positions.len(), letters.len(), "a dead letter twice in the topic");
    assert_eq!(letters.len(), rejected, "dead letters in the topic");
}

/// `POST /v1/events` with Kafka as the source: each line goes to its input topic keyed by
/// its tree, acknowledged before the 202; the pipeline reads it back into the views; a bad
/// line is a dead letter; a repeated `Idempotency-Key` sends nothing.
#[test]
fn posted_events_go_to_the_input_topics_and_reach_the_views() {
    let broker = Broker::for_test();
    let prefix = format!("t10-{}", std::process::id());
    let mut args: Vec<String> =
        ["run", "--workers", "2", "--no-lake", "--idle-timeout-ms", "1000"].iter().map(|s| s.to_string()).collect();
    args.extend(broker.topics(&prefix, 2));
    let data = tempfile::tempdir().unwrap();
    args.extend(["--data-dir".to_string(), data.path().to_str().unwrap().to_string()]);
    let mut run = Running::start(&args.iter().map(String::as_str).collect::<Vec<_>>());
    run.wait_for(60, |l| l.contains("SQL on"));
    let tree = r#"{"type":"tree","tree_id":"T-K1","region":"eu-west","lat":53.35,"lon":-6.26,"baseline_tilt_deg":2.0,"baseline_sway_hz":0.5,"updated_at":"2026-11-25T08:00:00Z"}"#;
    let reading = r#"{"type":"reading","sensor_id":"S-1","tree_id":"T-K1","metric":"tilt_deg","value":4.5,"ts":"2026-11-25T09:10:00Z"}"#;
    let body = format!("{tree}\n{reading}\n{{\"type\":\"reading\",\"tree_id\":\"T-K1\"}}\n");
    let post = |run: &Running| {
        let headers = [("Idempotency-Key", "k-1")];
        let (status, head, out) = http(&run.http, "POST", "/v1/events", &headers, body.as_bytes()).unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap_or(Value::Null);
        (status, head, v)
    };
    let (status, _, v) = post(&run);
    assert_eq!(status, 202, "{v}");
    assert_eq!((v["accepted"].as_u64(), v["rejected"].as_u64()), (Some(2), Some(1)), "{v}");
    let (status, head, again) = post(&run);
    assert_eq!((status, &again), (202, &v));
    assert!(head.to_ascii_lowercase().contains("idempotent-replayed: true"), "{head}");
    let trees = kcat_consume(&broker.addr, &format!("{prefix}.trees"));
    assert_eq!(trees.iter().map(|(k, _, p)| (k.as_str(), p.as_str())).collect::<Vec<_>>(), vec![("T-K1", tree)]);
    let readings = kcat_consume(&broker.addr, &format!("{prefix}.readings"));
    assert_eq!(readings.len(), 2, "the valid reading and the bad one: {readings:?}");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let rows: usize =
            sql_arrow(&run.http, "select tree_id from trees where tree_id = 'T-K1'").iter().map(|b| b.num_rows()).sum();
        let rejected = metric(&run.http, "treeai_events_rejected_total").unwrap_or(0.0);
        if rows == 1 && rejected >= 1.0 {
            break;
        }
        assert!(Instant::now() < deadline, "posted events not in the views ({rows} rows, {rejected} rejected)");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(run.interrupt().success());
    // After a restart (the same --data-dir) the key is still known: the retry sends nothing.
    let mut run = Running::start(&args.iter().map(String::as_str).collect::<Vec<_>>());
    run.wait_for(60, |l| l.contains("SQL on"));
    let (status, head, after) = post(&run);
    assert_eq!((status, &after), (202, &v));
    assert!(head.to_ascii_lowercase().contains("idempotent-replayed: true"), "after a restart: {head}");
    let trees = kcat_consume(&broker.addr, &format!("{prefix}.trees"));
    assert_eq!(trees.len(), 1, "a retry after a restart sent the batch again: {trees:?}");
    assert!(run.interrupt().success());
}

/// stunnel (Debian's stunnel4) terminating TLS on `accept` for a plain `connect`; stopped on drop.
struct Stunnel {
    child: Child,
    _conf: tempfile::TempDir,
}

impl Stunnel {
    fn start(accept: &str, connect: &str, cert: &Path, key: &Path) -> Stunnel {
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("stunnel.conf");
        std::fs::write(
            &conf,
            format!(
                "foreground = yes\npid =\nsslVersionMin = TLSv1.2\n[kafka]\naccept = {accept}\nconnect = {connect}\n\
                 cert = {}\nkey = {}\n",
                cert.display(),
                key.display()
            ),
        )
        .unwrap();
        let child = Command::new("stunnel4")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("stunnel4 (scripts/kafka.sh install)");
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(accept).is_err() {
            assert!(Instant::now() < deadline, "stunnel did not listen on {accept}");
            std::thread::sleep(Duration::from_millis(50));
        }
        Stunnel { child, _conf: dir }
    }
}

impl Drop for Stunnel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Kafka over TLS: Tansu behind stunnel (Tansu 0.6 parses `--cert`/`--key` but serves plain
/// TCP), advertising the TLS port. kcat produces the input over TLS compressed with zstd
/// (trees), lz4 (assessments) and snappy (readings); `treeai run` reads it with
/// `security.protocol=SSL` and our CA and ends with the views of `treeai backfill`, and its
/// alerts and dead letters reach the output topics over TLS. A client given another CA is
/// refused by its TLS handshake and says so, without stopping.
#[test]
fn kafka_over_tls_with_compressed_topics() {
    let pki = crate::security::Pki::new();
    let tls_addr = free_addr();
    let broker = Broker::private_advertising("memory://tansu/", &[], Some(tls_addr.clone()));
    let _stunnel = Stunnel::start(&tls_addr, &broker.addr, &pki.path("server.pem"), &pki.path("server.key"));
    let ca = pki.path("ca.pem").to_str().unwrap().to_string();
    let ssl = vec!["-X".to_string(), "security.protocol=SSL".into(), "-X".into(), format!("ssl.ca.location={ca}")];

    let text = generated(&["--count", "6000", "--trees", "200", "--bad-fraction", "0.02", "--season", "emergency"]);
    let lines: Vec<&str> = text.lines().filter(|l| !l.contains('\t')).collect();
    let prefix = format!("tls-{}", std::process::id());
    let dir = tempfile::tempdir().unwrap();
    let input = input_file(dir.path(), &lines);
    let mut flags = broker.topics(&prefix, 2);
    flags[1] = tls_addr.clone();
    kcat_produce_with(&tls_addr, &prefix, &lines, dir.path(), |topic| {
        let codec = if topic.ends_with(".trees") {
            "zstd"
        } else if topic.ends_with(".assessments") {
            "lz4"
        } else {
            "snappy"
        };
        [ssl.clone(), vec!["-z".into(), codec.into()]].concat()
    });
    let (want, w) = backfill_views(&input, &dir.path().join("backfill"));
    // The TLS settings from a property file and the environment, not the command line; a secret
    // there (librdkafka ignores SASL settings without SASL) never appears in the output.
    let properties = dir.path().join("client.properties");
    std::fs::write(&properties, format!("# as Kafka's client.properties\nssl.ca.location = {ca}\n")).unwrap();
    let secret = "s3cret-never-logged";
    let mut args = vec!["run", "--workers", "2", "--no-lake", "--idle-timeout-ms", "1000"];
    args.extend(flags.iter().map(String::as_str));
    args.extend(["--kafka-property-file", properties.to_str().unwrap()]);
    let mut run = Running::start_with_env(
        &args,
        &[("TREEAI_KAFKA_PROPERTY_SECURITY_PROTOCOL", "SSL"), ("TREEAI_KAFKA_PROPERTY_SASL_PASSWORD", secret)],
    );
    wait_settled(&run, lines.len(), w, 120);
    if let Some(diff) = diff_views(&live_views(&run.http), &want) {
        panic!("over TLS: live views differ from backfill:\n{diff}");
    }
    let rejected = metric(&run.http, "treeai_events_rejected_total").unwrap() as usize;
    assert!(rejected > 20, "the input has malformed events: {rejected}");
    let deadline = Instant::now() + Duration::from_secs(60);
    while metric(&run.http, "treeai_kafka_delivered_total").unwrap_or(0.0) <= rejected as f64 {
        assert!(Instant::now() < deadline, "dead letters and alerts not delivered over TLS");
        std::thread::sleep(Duration::from_millis(200));
    }
    let dead = kcat_consume_with(&tls_addr, &format!("{prefix}.deadletter"), &ssl);
    assert_eq!(dead.len(), rejected, "dead letters over TLS");
    let alerts = kcat_consume_with(&tls_addr, &format!("{prefix}.alerts"), &ssl);
    assert!(!alerts.is_empty(), "an emergency season raises alerts");
    assert!(run.interrupt().success());
    let output: Vec<String> = run.lines.try_iter().collect();
    assert!(!output.iter().any(|l| l.contains(secret)), "a Kafka secret was logged");

    // Another CA: the handshake fails, the pipeline says why and keeps running.
    let other = crate::security::Pki::new();
    let wrong = format!("ssl.ca.location={}", other.path("ca.pem").display());
    let mut run = Running::start(&[
        "run",
        "--workers",
        "1",
        "--no-lake",
        "--no-checkpoint",
        "--brokers",
        &tls_addr,
        "--kafka-property",
        "security.protocol=SSL",
        "--kafka-property",
        &wrong,
    ]);
    // The handshake's reason is logged (the progress line's last error may be librdkafka's
    // consequence, "all brokers down").
    run.wait_for(60, |l| l.contains("kafka") && (l.contains("SSL") || l.contains("certificate")));
    let deadline = Instant::now() + Duration::from_secs(30);
    let read = loop {
        match metric(&run.http, "treeai_events_read_total") {
            Some(read) => break read,
            None if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(200)),
            None => panic!("no /metrics"),
        }
    };
    assert_eq!(read, 0.0, "nothing is read through a refused handshake");
    assert!(run.child.try_wait().unwrap().is_none(), "still running");
    assert!(run.interrupt().success());
}

/// Produces `lines` to partition 0 of `topic`, keyed by `tree_id`, with the message timestamp
/// (CreateTime) `timestamp_ms` — what a broker's time-based retention goes by.
fn produce_at(broker: &str, topic: &str, lines: &[&str], timestamp_ms: i64) {
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    let producer: BaseProducer =
        rdkafka::ClientConfig::new().set("bootstrap.servers", broker).set("linger.ms", "0").create().expect("producer");
    for line in lines {
        let key = key_of(serde_json::from_str::<Value>(line).ok().as_ref());
        let record = BaseRecord::to(topic).partition(0).key(&key).payload(*line).timestamp(timestamp_ms);
        producer.send(record).map_err(|(e, _)| e).expect("send");
        producer.poll(Duration::ZERO);
    }
    producer.flush(Duration::from_secs(30)).expect("flush");
}

/// The earliest offset partition 0 of `topic` still holds (ListOffsets, as librdkafka asks it).
fn earliest_offset(broker: &str, topic: &str) -> i64 {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", broker)
        .set("group.id", "probe")
        .create()
        .expect("consumer");
    consumer.fetch_watermarks(topic, 0, Duration::from_secs(10)).expect("watermarks").0
}

/// Kafka's retention deletes the head of a partition while the pipeline is stopped, past the
/// offset its checkpoint holds (issue 10: "when a checkpointed Kafka offset is no longer
/// retained, say so clearly and count the gap"). On restart the pipeline names the partition,
/// the offsets and the number of messages lost, counts the gap in `treeai_source_gaps_total`
/// and `treeai_source_gap_messages_total`, reads on from the partition's new start and becomes
/// ready — no silent replay of something else, no failure, no hang. The broker is Tansu with
/// SQLite storage, which applies a topic's `retention.ms` (with `cleanup.policy=delete`) by
/// the messages' timestamps, as Kafka does.
#[test]
fn a_checkpointed_offset_deleted_by_retention_is_reported_counted_and_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::private_in("sqlite://tansu.db?maintenance_interval=1s", dir.path());
    let prefix = "retention";
    let mut flags = vec!["--brokers".to_string(), broker.addr.clone()];
    for kind in ["trees", "assessments", "readings", "alerts", "deadletter"] {
        let name = format!("{prefix}.{kind}");
        let retention: &[&str] = if kind == "trees" { &["cleanup.policy=delete", "retention.ms=60000"] } else { &[] };
        broker.create_topic_with(&name, 1, retention);
        flags.extend([format!("--{kind}-topic"), name]);
    }
    let topic = format!("{prefix}.trees");
    let text = generated(&["--count", "400", "--trees", "300", "--seed", "4"]);
    let trees: Vec<&str> = text.lines().take(300).collect();
    assert!(trees.iter().all(|l| l.contains(r#""type":"tree""#)), "the generator registers its trees first");
    let now = || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;

    // Offsets 0..100, written 20 s ago: retention deletes them about 40 s from now; the first
    // run reads them and stops cleanly, its final checkpoint at offset 100.
    produce_at(&broker.addr, &topic, &trees[..100], now() - 20_000);
    // One reading, so that the views have a watermark (/readyz waits for one).
    let reading = text.lines().find(|l| l.contains(r#""type":"reading""#)).expect("a reading");
    produce_at(&broker.addr, &format!("{prefix}.readings"), &[reading], now());
    let checkpoints = dir.path().join("checkpoints");
    let mut args = vec!["run", "--workers", "2", "--no-lake", "--checkpoint-url", checkpoints.to_str().unwrap()];
    args.extend(["--idle-timeout-ms", "1000"]);
    args.extend(flags.iter().map(String::as_str));
    let mut run = Running::start(&args);
    wait_read(&run, 101, 30);
    assert!(run.interrupt().success(), "the first run did not stop cleanly");

    // While it is down: offsets 100..200 arrive already older than the retention (never read),
    // 200..300 arrive new. The broker's retention then deletes 0..200.
    produce_at(&broker.addr, &topic, &trees[100..200], now() - 120_000);
    produce_at(&broker.addr, &topic, &trees[200..], now());
    let deadline = Instant::now() + Duration::from_secs(120);
    while earliest_offset(&broker.addr, &topic) < 200 {
        assert!(Instant::now() < deadline, "the broker's retention did not delete offsets 0..200 within 120 s");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(earliest_offset(&broker.addr, &topic), 200, "retention deleted a record it should keep");

    // The restart restores offset 100, finds the partition starting at 200, and says so.
    let mut run = Running::start(&args);
    let said = run.wait_for(60, |l| l.contains("no longer retained"));
    for part in [topic.as_str(), "offset 100", "starts at 200", "100 messages"] {
        assert!(said.contains(part), "the gap's log line lacks {part:?}: {said}");
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while metric(&run.http, "treeai_events_read_total") != Some(100.0) || readyz(&run).0 != 200 {
        assert!(
            Instant::now() < deadline,
            "the restored run did not read 200..300 and become ready within 60 s: read {:?}, /readyz {:?}",
            metric(&run.http, "treeai_events_read_total"),
            readyz(&run)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(metric(&run.http, "treeai_source_gaps_total"), Some(1.0));
    assert_eq!(metric(&run.http, "treeai_source_gap_messages_total"), Some(100.0));
    // The views hold the trees read before the stop and those after the gap, none of the gap.
    let rows = crate::recovery::sql(&run, "select tree_id from trees order by tree_id");
    let got: Vec<String> = rows.iter().map(|r| r[0].as_str().unwrap().to_string()).collect();
    let mut want: Vec<String> = trees[..100]
        .iter()
        .chain(&trees[200..])
        .map(|l| key_of(serde_json::from_str::<Value>(l).ok().as_ref()))
        .collect();
    want.sort();
    assert_eq!(got, want, "the trees after the gap");
    assert!(run.interrupt().success());
}

/// `/readyz`'s status and body.
fn readyz(run: &Running) -> (u16, String) {
    http(&run.http, "GET", "/readyz", &[], b"")
        .map_or((0, String::new()), |(status, _, body)| (status, String::from_utf8_lossy(&body).into_owned()))
}
