//! `POST /v1/events` end to end: per-line answers, events in the views,
//! rejected lines in the dead letters, roles, the rate limit, idempotency keys,
//! and a kill -9 right after a 202 (the events are in the views after the
//! restart, read once from the local ingest log).

use crate::common::{http, treeai_bin, Running};
use std::path::Path;
use std::process::{Command, Stdio};

fn token(file: &Path, name: &str, role: &str) -> String {
    let out = Command::new(treeai_bin())
        .args(["auth", "add-token", name, "--role", role, "--file", file.to_str().unwrap()])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn post(run: &Running, token: &str, key: Option<&str>, body: &str) -> (u16, String, serde_json::Value) {
    let auth = format!("Bearer {token}");
    let mut headers = vec![("Authorization", auth.as_str()), ("Content-Type", "application/x-ndjson")];
    if let Some(k) = key {
        headers.push(("Idempotency-Key", k));
    }
    let (status, head, body) = http(&run.http, "POST", "/v1/events", &headers, body.as_bytes()).unwrap();
    let v = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
    (status, head, v)
}

fn sql_rows(run: &Running, token: &str, sql: &str) -> Vec<serde_json::Value> {
    let auth = format!("Bearer {token}");
    let body = serde_json::json!({ "sql": sql }).to_string();
    let (status, _, out) = http(&run.http, "POST", "/v1/sql", &[("Authorization", &auth)], body.as_bytes()).unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(status, 200, "{v}");
    v["rows"].as_array().unwrap().clone()
}

fn wait_rows(run: &Running, token: &str, sql: &str, want: usize) -> Vec<serde_json::Value> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let rows = sql_rows(run, token, sql);
        if rows.len() >= want {
            return rows;
        }
        assert!(std::time::Instant::now() < deadline, "{sql}: {} rows, want {want}", rows.len());
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

fn tree(id: &str) -> String {
    format!(
        r#"{{"type":"tree","tree_id":"{id}","region":"eu-west","lat":53.35,"lon":-6.26,"baseline_tilt_deg":2.0,"baseline_sway_hz":0.5,"updated_at":"2026-11-25T08:00:00Z"}}"#
    )
}

fn log_lines(data: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(data.join("ingest")).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "ndjson") {
            out.extend(std::fs::read_to_string(p).unwrap().lines().map(String::from));
        }
    }
    out
}

#[test]
fn posted_events_reach_the_views_once_with_roles_limits_keys_and_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let creds = dir.path().join("auth.toml");
    let app = token(&creds, "field-app", "ingest");
    let reader = token(&creds, "grafana", "reader");
    let data = dir.path().join("data");
    let checkpoints = dir.path().join("checkpoints");
    let audit = dir.path().join("audit.log");
    let args = [
        "run",
        "--workers",
        "2",
        "--trees",
        "200",
        "--rate",
        "200",
        "--bad-fraction",
        "0",
        "--no-lake",
        "--checkpoint-url",
        checkpoints.to_str().unwrap(),
        "--checkpoint-interval-ms",
        "300",
        "--data-dir",
        data.to_str().unwrap(),
        "--auth-file",
        creds.to_str().unwrap(),
        "--audit-log",
        audit.to_str().unwrap(),
        "--ingest-rate",
        "1",
    ];
    let mut run = Running::start(&args);
    run.wait_for(60, |l| l.contains("SQL on"));
    assert!(!data.exists(), "nothing posted yet: the data dir is not created");

    // Two valid events and a bad line: one answer per line; the valid ones reach the views.
    let body = format!("{}\n{}\n\n{{\"type\":\"tree\",\"tree_id\":\"\"}}\n", tree("T-POSTED-1"), tree("T-POSTED-2"));
    let (status, _, v) = post(&run, &app, Some("batch-1"), &body);
    assert_eq!(status, 202, "{v}");
    assert_eq!((v["accepted"].as_u64(), v["rejected"].as_u64()), (Some(2), Some(1)), "{v}");
    assert_eq!(v["results"][2]["status"], "rejected", "{v}");
    assert_eq!(v["results"][2]["field"], "tree_id", "{v}");
    let rows = wait_rows(&run, &reader, "select tree_id from trees where tree_id like 'T-POSTED-%' order by 1", 2);
    assert_eq!(rows, vec![serde_json::json!(["T-POSTED-1"]), serde_json::json!(["T-POSTED-2"])]);

    // The rejected line is a dead letter like any other (counted under its reason).
    let (_, _, metrics) = http(&run.http, "GET", "/metrics", &[], b"").unwrap();
    let metrics = String::from_utf8_lossy(&metrics);
    assert!(metrics.contains("reason=\"tree_id:"), "no rejection of tree_id counted:\n{metrics}");

    // The same key again: the first answer, nothing ingested twice.
    let (status, head, again) = post(&run, &app, Some("batch-1"), &body);
    assert_eq!(status, 202);
    assert_eq!(again, v);
    assert!(head.to_ascii_lowercase().contains("idempotent-replayed: true"), "{head}");
    let logged = log_lines(&data);
    assert_eq!(logged.iter().filter(|l| !l.starts_with('#')).count(), 3, "{logged:#?}");
    assert_eq!(logged.iter().filter(|l| l.starts_with("#key ")).count(), 1, "{logged:#?}");

    // Roles: a reader may not post, no token is 401.
    assert_eq!(post(&run, &reader, None, &tree("T-X")).0, 403);
    assert_eq!(http(&run.http, "POST", "/v1/events", &[], tree("T-X").as_bytes()).unwrap().0, 401);

    // The rate (1 event/s, bursts of 10): 3 were taken; 7 more pass, the next waits; 11 never fit.
    let seven: Vec<String> = (0..7).map(|i| tree(&format!("T-RATE-{i}"))).collect();
    assert_eq!(post(&run, &app, None, &seven.join("\n")).0, 202);
    let (status, head, _) = post(&run, &app, None, &tree("T-RATE-X"));
    assert_eq!(status, 429);
    assert!(head.to_ascii_lowercase().contains("retry-after: "), "{head}");
    let eleven: Vec<String> = (0..11).map(|i| tree(&format!("T-BIG-{i}"))).collect();
    assert_eq!(post(&run, &app, None, &eleven.join("\n")).0, 413);

    // kill -9 right after a 202: after the restart the event is in the views, once.
    std::thread::sleep(std::time::Duration::from_secs(2));
    let (status, _, _) = post(&run, &app, Some("batch-crash"), &tree("T-CRASH"));
    assert_eq!(status, 202);
    run.child.kill().unwrap();
    run.child.wait().unwrap();
    drop(run);
    let mut run = Running::start(&args);
    run.wait_for(60, |l| l.contains("SQL on"));
    let rows = wait_rows(&run, &reader, "select tree_id from trees where tree_id in ('T-CRASH', 'T-POSTED-1')", 2);
    assert_eq!(rows.len(), 2, "{rows:?}");
    // The key survived the restart too.
    let (status, head, _) = post(&run, &app, Some("batch-crash"), &tree("T-CRASH"));
    assert_eq!(status, 202);
    assert!(head.to_ascii_lowercase().contains("idempotent-replayed: true"), "{head}");
    let audit = std::fs::read_to_string(&audit).unwrap();
    assert!(audit.lines().any(|l| l.contains(r#""action":"ingest""#) && l.contains(r#""events":3"#)), "{audit}");
}
