//! The alert webhook (`--webhook-url`) against a local HTTP receiver: every critical alert
//! arrives as a PagerDuty-Events-v2 trigger (and every resolve as a resolve) with its stable
//! `dedup_key`; a receiver that fails 3 times still gets each alert; across a kill -9 every
//! alert arrives at least once with the same key and body; a receiver that never takes them
//! leaves them in the dead letters and the failure counter.

use crate::common::{free_addr, http, read_http_request, Running};
use crate::kafka::{generated, metric};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufReader, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A local HTTP receiver: answers 500 to the first `fail_first` requests (all of them with
/// `usize::MAX`), 202 after; keeps the JSON bodies it accepted.
pub(crate) struct Receiver {
    pub(crate) url: String,
    accepted: Arc<Mutex<Vec<Value>>>,
    requests: Arc<AtomicUsize>,
}

impl Receiver {
    pub(crate) fn start(fail_first: usize) -> Receiver {
        let addr = free_addr();
        let listener = TcpListener::bind(&addr).unwrap();
        let accepted: Arc<Mutex<Vec<Value>>> = Arc::default();
        let requests: Arc<AtomicUsize> = Arc::default();
        let (acc, req) = (accepted.clone(), requests.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (acc, req) = (acc.clone(), req.clone());
                std::thread::spawn(move || {
                    let mut reader = BufReader::new(stream.try_clone().unwrap());
                    let mut stream = stream;
                    // One request per turn of a kept-alive connection.
                    while let Some((_, _, body)) = read_http_request(&mut reader) {
                        let n = req.fetch_add(1, Ordering::SeqCst);
                        let answer = if n < fail_first {
                            "HTTP/1.1 500 Internal Server Error\r\nContent-Length: 4\r\n\r\nbusy"
                        } else {
                            acc.lock().unwrap().push(serde_json::from_slice(&body).unwrap_or(Value::Null));
                            "HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n"
                        };
                        if stream.write_all(answer.as_bytes()).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Receiver { url: format!("http://{addr}/hook"), accepted, requests }
    }

    pub(crate) fn bodies(&self) -> Vec<Value> {
        self.accepted.lock().unwrap().clone()
    }
}

fn input(dir: &std::path::Path) -> std::path::PathBuf {
    let text = generated(&["--count", "30000", "--trees", "300", "--season", "emergency", "--rate", "2000"]);
    let path = dir.join("events.ndjson");
    std::fs::write(&path, text).unwrap();
    path
}

fn start(
    input: &std::path::Path,
    lake: &std::path::Path,
    data: &std::path::Path,
    hook: &str,
    extra: &[&str],
) -> Running {
    let mut args = vec!["run", "--workers", "2", "--input", input.to_str().unwrap(), "--lake", lake.to_str().unwrap()];
    args.extend(["--lake-roll-ms", "1000", "--data-dir", data.to_str().unwrap(), "--webhook-url", hook]);
    args.extend_from_slice(extra);
    Running::start(&args)
}

/// Per tree, the watermarks of its critical alerts in the lake, in order (committed by a
/// checkpoint asked for first).
fn lake_criticals(run: &Running) -> BTreeMap<String, Vec<Value>> {
    let (status, _, body) = http(&run.http, "POST", "/v1/admin/checkpoint", &[], b"").unwrap();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let rows = crate::recovery::sql(
        run,
        "select tree_id, watermark from lake.alerts where kind = 'critical' order by tree_id, watermark",
    );
    let mut out: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for r in rows {
        out.entry(r[0].as_str().unwrap().to_string()).or_default().push(r[1].clone());
    }
    out
}

/// Checks the received triggers against the lake: for each tree, its n-th critical alert
/// arrived with `dedup_key` `tree/(2n-1)`, the lake's watermark, and every copy of one key
/// has the same body. Returns the number of trigger messages received.
fn check_triggers(bodies: &[Value], lake: &BTreeMap<String, Vec<Value>>) -> usize {
    let mut by_key: BTreeMap<String, Value> = BTreeMap::new();
    let mut triggers = 0;
    for b in bodies.iter().filter(|b| b["event_action"] == "trigger") {
        triggers += 1;
        let key = b["dedup_key"].as_str().expect("dedup_key").to_string();
        assert_eq!(b["payload"]["custom_details"]["alert_id"], Value::from(key.clone()), "{b}");
        assert_eq!(b["payload"]["severity"], "critical");
        assert!(b["text"].as_str().unwrap().contains("is critical"), "{b}");
        if let Some(old) = by_key.insert(key.clone(), b.clone()) {
            assert_eq!(old, *b, "two different messages with dedup_key {key}");
        }
    }
    let mut want = BTreeSet::new();
    for (tree, watermarks) in lake {
        for (n, w) in watermarks.iter().enumerate() {
            let key = format!("{tree}/{}", 2 * n + 1);
            let got = by_key.get(&key).unwrap_or_else(|| panic!("critical alert {key} never arrived"));
            // The lake's timestamp as the payload renders it (RFC 3339).
            let want_ts = match w.as_i64() {
                Some(ms) => Value::from(treeai_dataflows::time::format_ts(ms)),
                None => w.clone(),
            };
            assert_eq!(got["payload"]["timestamp"], want_ts, "{key}");
            want.insert(key);
        }
    }
    let got: BTreeSet<String> = by_key.keys().cloned().collect();
    assert_eq!(got, want, "trigger keys vs the lake's critical alerts");
    assert!(!want.is_empty(), "a meaningful input has critical alerts");
    // Every resolve closes the incident of the tree's critical alert before it.
    for b in bodies.iter().filter(|b| b["event_action"] == "resolve") {
        let key = b["dedup_key"].as_str().unwrap();
        let id = b["payload"]["custom_details"]["alert_id"].as_str().unwrap();
        let (tree, seq) = id.rsplit_once('/').unwrap();
        assert_eq!(key, format!("{tree}/{}", seq.parse::<u32>().unwrap() - 1), "{b}");
        assert!(got.contains(key), "resolve of {key}, which never triggered");
    }
    triggers
}

fn wait_complete(run: &mut Running) {
    run.wait_for(240, |l| l.contains("input complete"));
}

#[test]
fn a_receiver_that_fails_three_times_still_gets_every_alert_once() {
    let dir = tempfile::tempdir().unwrap();
    let input = input(dir.path());
    let receiver = Receiver::start(3);
    let mut run = start(&input, &dir.path().join("lake"), &dir.path().join("data"), &receiver.url, &[]);
    wait_complete(&mut run);
    let lake = lake_criticals(&run);
    let bodies = receiver.bodies();
    let triggers = check_triggers(&bodies, &lake);
    // No crash: exactly once.
    assert_eq!(triggers, lake.values().map(Vec::len).sum::<usize>());
    assert_eq!(metric(&run.http, "treeai_webhook_retries_total"), Some(3.0));
    assert_eq!(metric(&run.http, "treeai_webhook_sent_total"), Some(bodies.len() as f64));
    assert_eq!(metric(&run.http, "treeai_webhook_failures_total"), Some(0.0));
    assert_eq!(receiver.requests.load(Ordering::SeqCst), bodies.len() + 3);
    assert!(run.interrupt().success());
}

#[test]
fn across_a_kill_9_every_alert_arrives_at_least_once_with_a_stable_key() {
    let dir = tempfile::tempdir().unwrap();
    let input = input(dir.path());
    let receiver = Receiver::start(0);
    let (lake, data) = (dir.path().join("lake"), dir.path().join("data"));
    let pace = ["--checkpoint-interval-ms", "300"];
    let mut run = start(&input, &lake, &data, &receiver.url, &pace);
    // Kill once some alerts went out (mid-input).
    let deadline = Instant::now() + Duration::from_secs(120);
    while receiver.bodies().len() < 20 {
        assert!(Instant::now() < deadline, "no alerts at the receiver");
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = run.child.kill();
    let _ = run.child.wait();
    let before = receiver.bodies().len();
    let mut run = start(&input, &lake, &data, &receiver.url, &pace);
    run.wait_for(60, |l| l.contains("resumed from checkpoint"));
    wait_complete(&mut run);
    let lake = lake_criticals(&run);
    let bodies = receiver.bodies();
    let triggers = check_triggers(&bodies, &lake);
    eprintln!("{before} messages before the kill, {} in all; {triggers} triggers", bodies.len());
    assert!(triggers >= lake.values().map(Vec::len).sum::<usize>());
    assert!(run.interrupt().success());
}

#[test]
fn alerts_a_receiver_never_takes_go_to_the_dead_letters() {
    let dir = tempfile::tempdir().unwrap();
    let input = input(dir.path());
    let receiver = Receiver::start(usize::MAX);
    let data = dir.path().join("data");
    let extra = ["--webhook-max-attempts", "2", "--webhook-routing-key", "R0UT1NG"];
    let mut run = start(&input, &dir.path().join("lake"), &data, &receiver.url, &extra);
    wait_complete(&mut run);
    let lake = lake_criticals(&run);
    let alerts: usize = crate::recovery::sql(&run, "select count(*) from lake.alerts")[0][0].as_i64().unwrap() as usize;
    assert!(alerts >= lake.values().map(Vec::len).sum::<usize>() && alerts > 0);
    let letters = std::fs::read_to_string(data.join("webhook/deadletter.ndjson")).expect("dead letters");
    let letters: Vec<Value> = letters.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(letters.len(), alerts, "one dead letter per alert");
    for l in &letters {
        assert!(l["error"].as_str().unwrap().contains("HTTP 500"), "{l}");
        assert_eq!(l["payload"]["routing_key"], "R0UT1NG");
        assert!(l["payload"]["dedup_key"].as_str().is_some(), "{l}");
    }
    assert_eq!(metric(&run.http, "treeai_webhook_failures_total"), Some(alerts as f64));
    assert_eq!(receiver.requests.load(Ordering::SeqCst), 2 * alerts, "two attempts each");
    assert!(receiver.bodies().is_empty());
    assert!(run.interrupt().success());
}
