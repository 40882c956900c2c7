//! A real Prometheus over a running pipeline (issue 14): Debian's `prometheus`
//! package (installed when missing) scrapes `treeai run` reading Kafka (Tansu,
//! see [`crate::kafka::Broker`]) with the lake and checkpoints on. Its
//! configuration is deploy/prometheus/prometheus-static.yml with 1 s intervals
//! and this test's addresses, its rules deploy/prometheus/rules.yml as they are.
//!
//! - `promtool check rules` and `promtool check config` pass;
//! - every recording rule (its expression and its recorded series) and every
//!   panel query of deploy/grafana/treeai-dashboard.json answers a number
//!   through `/api/v1/query`, except those over a metric of [`ABSENT`], which
//!   must answer nothing (so an exclusion cannot go stale unnoticed);
//! - alerts fire because the test causes them: source lag (the consumer stopped
//!   while its topics fill, then throttled), checkpoint failing (the checkpoint
//!   folder replaced by a file), pipeline down (the process killed).

use crate::common::{free_addr, http, signal, treeai_bin, Running};
use crate::kafka::Broker;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Metrics the rules or the dashboard use that this setup does not have, and why. A rule or
/// panel query over one of them (directly or through a recording rule) must return nothing.
const ABSENT: [(&str, &str); 0] = [];

/// Events written to the input topics while the consumer is stopped: enough to put the readings
/// topic more than TreeAISourceLagGrowing's 100 000 messages behind.
const BACKLOG: u64 = 200_000;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf()
}

fn works(bin: &str) -> bool {
    Command::new(bin).arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
}

/// Installs Debian's `prometheus` package (the server and promtool) when either is missing.
fn ensure_prometheus() {
    if works("prometheus") && works("promtool") {
        return;
    }
    let root = Command::new("id").arg("-u").output().is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    let apt = |args: &[&str]| {
        let mut command = Command::new(if root { "env" } else { "sudo" });
        if !root {
            command.arg("env");
        }
        command.args(["DEBIAN_FRONTEND=noninteractive", "apt-get"]).args(args);
        command.status().is_ok_and(|s| s.success())
    };
    let install = ["install", "-y", "-qq", "--no-install-recommends", "prometheus"];
    if !apt(&install) {
        apt(&["update", "-qq"]);
        assert!(apt(&install), "apt-get install prometheus failed");
    }
    assert!(works("prometheus") && works("promtool"), "prometheus and promtool after apt-get install prometheus");
}

/// Percent-encodes a query parameter.
fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => char::from(b).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Polls `check` every 500 ms until it is `Ok`, for at most `secs`; panics with its last error.
fn wait_for<T>(secs: u64, mut check: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        match check() {
            Ok(v) => return v,
            Err(e) if Instant::now() >= deadline => panic!("not within {secs} s: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(500)),
        }
    }
}

/// A child process killed when dropped.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Lets a process run `on` out of every `on + off` (SIGCONT, SIGSTOP) until dropped; then it runs.
struct Throttle {
    pid: u32,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Throttle {
    fn start(pid: u32, on: Duration, off: Duration) -> Throttle {
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    signal(pid, "CONT");
                    std::thread::sleep(on);
                    signal(pid, "STOP");
                    std::thread::sleep(off);
                }
            })
        };
        Throttle { pid, stop, thread: Some(thread) }
    }
}

impl Drop for Throttle {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        signal(self.pid, "CONT");
    }
}

/// A Prometheus server on a free loopback port with its storage in a temporary folder.
pub(crate) struct Prometheus {
    child: Child,
    pub(crate) addr: String,
    dir: tempfile::TempDir,
}

impl Prometheus {
    pub(crate) fn start(config: &Path) -> Prometheus {
        let dir = tempfile::tempdir().expect("tempdir");
        let addr = free_addr();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).expect("prometheus log");
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("prometheus (Debian's prometheus package)");
        let mut prom = Prometheus { child, addr, dir };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if matches!(http(&prom.addr, "GET", "/-/ready", &[], b""), Ok((200, _, _))) {
                return prom;
            }
            if let Ok(Some(status)) = prom.child.try_wait() {
                panic!("prometheus exited ({status}):\n{}", prom.log());
            }
            assert!(Instant::now() < deadline, "prometheus not ready within 30 s:\n{}", prom.log());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The end of its log.
    fn log(&self) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// The `data` of `GET /api/v1/<path>`.
    fn api(&self, path: &str) -> Value {
        let (status, _, body) =
            http(&self.addr, "GET", &format!("/api/v1/{path}"), &[], b"").expect("Prometheus HTTP API");
        let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        assert!(status == 200 && v["status"] == "success", "GET /api/v1/{path}: {status} {v}");
        v["data"].clone()
    }

    /// The samples of an instant query: (labels, value).
    pub(crate) fn query(&self, expr: &str) -> Vec<(Value, f64)> {
        let data = self.api(&format!("query?query={}", urlencode(expr)));
        let number = |v: &Value| v[1].as_str().and_then(|s| s.parse().ok()).unwrap_or(f64::NAN);
        match data["resultType"].as_str() {
            Some("vector") => data["result"]
                .as_array()
                .expect("result")
                .iter()
                .map(|s| (s["metric"].clone(), number(&s["value"])))
                .collect(),
            Some("scalar") => vec![(Value::Null, number(&data["result"]))],
            other => panic!("{expr}: result type {other:?}"),
        }
    }

    /// Every rule Prometheus loaded, as `/api/v1/rules` describes it.
    fn rules(&self) -> Vec<Value> {
        let groups = self.api("rules")["groups"].as_array().cloned().unwrap_or_default();
        groups.iter().flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default()).collect()
    }

    /// The expression of the alerting rule `name`.
    fn alert_expr(&self, name: &str) -> String {
        let rules = self.rules();
        let rule = rules.iter().find(|r| r["type"] == "alerting" && r["name"] == name);
        rule.and_then(|r| r["query"].as_str()).unwrap_or_else(|| panic!("no alerting rule {name}")).to_string()
    }

    /// The state (`pending`, `firing`) of alert `name` now, if it is active.
    fn alert_state(&self, name: &str) -> Option<String> {
        let alerts = self.api("alerts")["alerts"].as_array().cloned().unwrap_or_default();
        let states = alerts.iter().filter(|a| a["labels"]["alertname"] == name).filter_map(|a| a["state"].as_str());
        // Firing wins over pending when several series are active.
        states.max_by_key(|s| *s == "firing").map(str::to_string)
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// deploy/prometheus/prometheus-static.yml with 1 s intervals, `target` as the treeai address and
/// the repository's rules file, written to `dir`.
fn prometheus_config(target: &str, dir: &Path) -> PathBuf {
    let deploy = repo().join("deploy/prometheus");
    let mut config = std::fs::read_to_string(deploy.join("prometheus-static.yml")).expect("prometheus-static.yml");
    let rules = deploy.join("rules.yml").canonicalize().expect("rules.yml");
    let replacements = [
        ("scrape_interval: 2s", "scrape_interval: 1s".to_string()),
        ("evaluation_interval: 2s", "evaluation_interval: 1s".to_string()),
        ("\"127.0.0.1:8080\"", format!("\"{target}\"")),
        ("  - rules.yml", format!("  - \"{}\"", rules.display())),
    ];
    for (from, to) in replacements {
        assert!(config.contains(from), "prometheus-static.yml no longer has {from:?}: adapt this test");
        config = config.replacen(from, &to, 1);
    }
    let path = dir.join("prometheus.yml");
    std::fs::write(&path, config).expect("write prometheus.yml");
    path
}

/// Runs promtool; asserts it succeeds.
fn promtool(args: &[&str]) {
    let out = Command::new("promtool").args(args).output().expect("promtool");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && text.contains("SUCCESS"), "promtool {args:?}:\n{text}");
}

/// Every panel query of the Grafana dashboard: (panel title, expression with the dashboard's
/// variables set as for this test's one region: `$cluster` = local, `$__rate_interval` = 1m).
fn panel_queries() -> Vec<(String, String)> {
    fn walk(panels: &Value, out: &mut Vec<(String, String)>) {
        for panel in panels.as_array().into_iter().flatten() {
            let title = panel["title"].as_str().unwrap_or_default();
            for target in panel["targets"].as_array().into_iter().flatten() {
                let Some(expr) = target["expr"].as_str() else { continue };
                let set = expr
                    .replace("$__rate_interval", "1m")
                    .replace("$__interval", "1m")
                    .replace("${cluster}", "local")
                    .replace("$cluster", "local");
                assert!(!set.contains('$'), "panel {title:?}: a Grafana variable this test does not set: {expr}");
                out.push((title.to_string(), set));
            }
            walk(&panel["panels"], out);
        }
    }
    let path = repo().join("deploy/grafana/treeai-dashboard.json");
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(path).expect("dashboard")).expect("JSON");
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    out
}

/// One SQL statement over HTTP, so that the SQL metrics have samples.
fn sql_statement(run: &Running) {
    let body = serde_json::json!({ "sql": "select count(*) from tree_scores" }).to_string();
    let _ = http(&run.http, "POST", "/v1/sql", &[("Content-Type", "application/json")], body.as_bytes());
}

/// The value of every finite sample of `expr`, or why there is none.
fn numbers(prom: &Prometheus, expr: &str) -> Result<Vec<f64>, String> {
    let samples = prom.query(expr);
    let finite: Vec<f64> = samples.iter().map(|(_, v)| *v).filter(|v| v.is_finite()).collect();
    if finite.is_empty() {
        Err(format!("{expr} -> {samples:?}"))
    } else {
        Ok(finite)
    }
}

#[test]
fn prometheus_scrapes_treeai_evaluates_every_rule_and_panel_and_alerts_fire() {
    let started = Instant::now();
    ensure_prometheus();
    let rules_file = repo().join("deploy/prometheus/rules.yml");
    promtool(&["check", "rules", rules_file.to_str().unwrap()]);

    // Kafka in and out, the lake, a checkpoint every 500 ms; a producer at 2000 events/s
    // (1 % malformed, so there are dead letters) for as long as the test runs.
    let broker = Broker::for_test();
    let prefix = format!("prom-{}", std::process::id());
    let flags = broker.topics(&prefix, 3);
    let produce = |extra: &[&str]| {
        let mut command = Command::new(treeai_bin());
        command.args(["produce", "--trees", "2000", "--start", "now"]).args(extra).args(&flags);
        command.stdout(Stdio::null());
        command
    };
    let _producer = Killed(
        produce(&["--rate", "2000", "--bad-fraction", "0.01"]).stderr(Stdio::null()).spawn().expect("treeai produce"),
    );
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("lake");
    let mut args = vec!["run", "--workers", "2", "--idle-timeout-ms", "1000", "--lake", lake.to_str().unwrap()];
    args.extend(["--lake-roll-ms", "1000", "--checkpoint-interval-ms", "500"]);
    args.extend(flags.iter().map(String::as_str));
    let mut run = Running::start(&args);

    let config = prometheus_config(&run.http, dir.path());
    promtool(&["check", "config", config.to_str().unwrap()]);
    let prom = Prometheus::start(&config);
    wait_for(30, || {
        let targets = prom.api("targets")["activeTargets"].as_array().cloned().unwrap_or_default();
        let up = targets.iter().any(|t| t["labels"]["job"] == "treeai" && t["health"] == "up");
        if up {
            Ok(())
        } else {
            Err(format!("the treeai target is not up: {targets:?}"))
        }
    });

    // Every rule of the file is loaded and evaluates without error.
    let text = std::fs::read_to_string(&rules_file).unwrap();
    let in_file = |key: &str| text.lines().filter(|l| l.trim_start().starts_with(key)).count();
    let rules = wait_for(10, || {
        let rules = prom.rules();
        match rules.iter().find(|r| r["health"] != "ok") {
            None => Ok(rules),
            Some(r) => Err(format!("rule not (yet) evaluated cleanly: {r}")),
        }
    });
    let recording: Vec<(String, String)> = rules
        .iter()
        .filter(|r| r["type"] == "recording")
        .map(|r| (r["name"].as_str().unwrap().to_string(), r["query"].as_str().unwrap().to_string()))
        .collect();
    assert_eq!(recording.len(), in_file("- record:"), "recording rules loaded");
    assert_eq!(rules.len() - recording.len(), in_file("- alert:"), "alerting rules loaded");

    // What cannot have data here, and why: the absent metrics and the recording rules over them.
    let mut absent: BTreeMap<String, String> = ABSENT.iter().map(|(m, why)| (m.to_string(), why.to_string())).collect();
    for (name, expr) in &recording {
        let over = absent.iter().find(|(m, _)| expr.contains(m.as_str()));
        if let Some(why) = over.map(|(m, why)| format!("over {m}, {why}")) {
            absent.insert(name.clone(), why);
        }
    }
    let excluded = |expr: &str| absent.iter().find(|(m, _)| expr.contains(m.as_str())).map(|(_, why)| why.clone());

    // Queries that must answer a number: each recording rule's expression and its recorded
    // series, and each panel query. Panels over ALERTS are checked once alerts fire (below).
    let panels = panel_queries();
    assert!(panels.len() > 20, "panel queries found: {panels:?}");
    let processes_up = panels.iter().find(|(t, _)| t == "Processes up").expect("the Processes up panel").1.clone();
    let (alert_panels, panels): (Vec<_>, Vec<_>) = panels.into_iter().partition(|(_, e)| e.contains("ALERTS"));
    let mut checks: Vec<(String, String)> = Vec::new();
    let mut skipped: Vec<(String, String, String)> = Vec::new();
    let queries = recording
        .iter()
        .flat_map(|(name, expr)| [(format!("rule {name}"), expr.clone()), (format!("series {name}"), name.clone())]);
    for (what, expr) in queries.chain(panels.into_iter().map(|(title, expr)| (format!("panel {title:?}"), expr))) {
        match excluded(&expr) {
            Some(why) => skipped.push((what, expr, why)),
            None => checks.push((what, expr)),
        }
    }
    for must in ["treeai:freshness_seconds:p50_5m", "treeai:freshness_seconds:p99_5m", "treeai:source_lag:sum"] {
        assert!(checks.iter().any(|(w, _)| w == &format!("rule {must}")), "{must} is checked");
    }
    let values = wait_for(60, || {
        sql_statement(&run);
        let mut missing = Vec::new();
        let mut values = Vec::new();
        for (what, expr) in &checks {
            match numbers(&prom, expr) {
                Ok(v) => values.push((what.clone(), v)),
                Err(e) => missing.push(format!("{what}: {e}")),
            }
        }
        if missing.is_empty() {
            Ok(values)
        } else {
            Err(format!("{} of {} queries without a number:\n{}", missing.len(), checks.len(), missing.join("\n")))
        }
    });
    for (what, v) in &values {
        eprintln!("{what}: {v:?}");
    }
    let freshness = numbers(&prom, "treeai:freshness_seconds:p99_5m").unwrap();
    assert!(freshness.iter().all(|s| *s >= 0.0), "freshness p99 {freshness:?}");
    // The excluded ones answer nothing, for the reason given.
    for (what, expr, why) in &skipped {
        let samples = prom.query(expr);
        assert!(samples.is_empty(), "{what} has data ({samples:?}): remove its exclusion ({why})");
        eprintln!("excluded {what} ({expr}): {why}");
    }
    eprintln!("{} queries answered after {:?}", checks.len(), started.elapsed());

    // (c) Source lag: the consumer stops (SIGSTOP) while BACKLOG events are written, then runs
    // 10 % of the time, so it stays over 100 000 messages behind on the readings topic while
    // Prometheus scrapes it: TreeAISourceLagGrowing (lag over 100k and growing over 15
    // minutes) becomes pending. TreeAISourceLagHigh (over a million for 5 minutes) would need
    // five times as many messages and five minutes: not caused here.
    let lag_growing = prom.alert_expr("TreeAISourceLagGrowing");
    let lag_alert = r#"max_over_time(ALERTS{alertname="TreeAISourceLagGrowing"}[5m])"#;
    assert!(prom.query(lag_alert).is_empty(), "TreeAISourceLagGrowing active before the consumer stopped");
    run.signal("STOP");
    let sent = Instant::now();
    let out = produce(&["--count", &BACKLOG.to_string(), "--no-pacing", "--rate", "100000", "--seed", "2"])
        .stderr(Stdio::piped())
        .output()
        .expect("treeai produce");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stderr.contains(&format!("{BACKLOG} delivered")), "{stderr}");
    eprintln!("{BACKLOG} events produced in {:?} while treeai was stopped", sent.elapsed());
    let throttle = Throttle::start(run.child.id(), Duration::from_millis(50), Duration::from_millis(450));
    wait_for(40, || {
        let pending = prom.query(lag_alert);
        if pending.is_empty() {
            Err(format!(
                "TreeAISourceLagGrowing never active; {lag_growing} -> {:?}; lag {:?}",
                prom.query(&lag_growing),
                prom.query("treeai:source_lag:sum")
            ))
        } else {
            Ok(())
        }
    });
    let lag = numbers(&prom, "max_over_time(treeai:source_lag:sum[5m])").unwrap();
    eprintln!("source lag alert pending; greatest lag per topic {lag:?}");
    assert!(lag.iter().any(|l| *l > 100_000.0), "{lag:?}");
    drop(throttle);

    // (a) Checkpoint failing: the checkpoint folder becomes a file, so every write fails.
    assert_eq!(prom.alert_state("TreeAICheckpointFailing"), None, "checkpoints failed before the test broke them");
    let store = lake.join("_checkpoints");
    std::fs::rename(&store, dir.path().join("checkpoints-moved")).unwrap();
    std::fs::write(&store, b"not a folder").unwrap();
    let failing = prom.alert_expr("TreeAICheckpointFailing");
    wait_for(30, || match prom.alert_state("TreeAICheckpointFailing") {
        Some(s) if s == "firing" => Ok(()),
        other => Err(format!("TreeAICheckpointFailing {other:?}; {failing} -> {:?}", prom.query(&failing))),
    });
    assert!(!prom.query(&failing).is_empty(), "{failing}");
    // Now the panels over ALERTS have data: the firing alert is among it.
    for (title, expr) in &alert_panels {
        let samples = prom.query(expr);
        assert!(!samples.is_empty(), "panel {title:?}: {expr} answers nothing while an alert fires");
        // A table of ALERTS series names it; a count of firing alerts counts it.
        let shows = samples.iter().any(|(labels, v)| match labels.get("alertname") {
            Some(name) => name == "TreeAICheckpointFailing" && labels["alertstate"] == "firing",
            None => *v >= 1.0,
        });
        assert!(shows, "panel {title:?}: {expr} does not show the firing alert: {samples:?}");
    }

    // (b) Pipeline down: the process killed (after it is scraped again since its throttling).
    let down = prom.alert_expr("TreeAIPipelineDown");
    wait_for(30, || {
        let up = prom.query(r#"up{job="treeai"}"#);
        match prom.alert_state("TreeAIPipelineDown") {
            None if up.iter().all(|(_, v)| *v == 1.0) && !up.is_empty() => Ok(()),
            state => Err(format!("before the kill: up {up:?}, TreeAIPipelineDown {state:?}")),
        }
    });
    run.child.kill().unwrap();
    run.child.wait().unwrap();
    // Its `for: 1m` keeps it pending for a minute: pending is the proof here.
    let state = wait_for(20, || {
        prom.alert_state("TreeAIPipelineDown").ok_or_else(|| format!("not active; {down} -> {:?}", prom.query(&down)))
    });
    assert!(state == "pending" || state == "firing", "{state}");
    assert!(!prom.query(&down).is_empty(), "{down}");
    let up = numbers(&prom, &processes_up).unwrap();
    assert_eq!(up, vec![0.0], "the dashboard's processes up");
    eprintln!("done in {:?}", started.elapsed());
}
