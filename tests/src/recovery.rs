//! Crash recovery: `treeai run` killed with SIGKILL at random moments and
//! restarted resumes from its newest checkpoint, and ends exactly as a run
//! that was never interrupted — views, lake and alerts.
//!
//! `.ci/run` runs `TREEAI_KILL_ROUNDS` (default 3) rounds per source; more with
//! `TREEAI_KILL_ROUNDS=10 cargo test --workspace -- kill_9`. Each round
//! prints its seed; `TREEAI_KILL_SEED=<seed>` replays one.

use crate::common::{http, Running};
use rand::{Rng, SeedableRng};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

/// Rows of a query over HTTP, as JSON arrays.
pub(crate) fn sql(run: &Running, query: &str) -> Vec<Vec<Value>> {
    let body = serde_json::json!({ "sql": query }).to_string();
    let (status, _, body) =
        http(&run.http, "POST", "/v1/sql", &[("Content-Type", "application/json")], body.as_bytes())
            .expect("POST /v1/sql");
    let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    assert_eq!(status, 200, "{query}: {v}");
    assert_eq!(v["truncated"], Value::Bool(false), "{query}: truncated");
    v["rows"].as_array().expect("rows").iter().map(|r| r.as_array().expect("row").clone()).collect()
}

fn produce(path: &Path, count: u64, seed: u64) {
    let status = std::process::Command::new(crate::common::treeai_bin())
        .args(["produce", "--count", &count.to_string(), "--trees", "2000", "--rate", "2000"])
        .args(["--seed", &seed.to_string(), "--bad-fraction", "0.01", "--output", path.to_str().unwrap()])
        .status()
        .expect("treeai produce");
    assert!(status.success());
}

/// What a finished run shows: its views and its lake, as comparable values.
#[derive(Debug, PartialEq)]
struct Outcome {
    views: BTreeMap<&'static str, Vec<Vec<Value>>>,
    /// Per event table: rows, distinct positions.
    events: BTreeMap<&'static str, (i64, i64)>,
}

const VIEWS: [(&str, &str); 6] = [
    ("trees", "select * from trees order by tree_id"),
    ("afiss_current", "select * from afiss_current order by tree_id"),
    ("sensor_windows", "select * from sensor_windows order by tree_id"),
    ("tree_scores", "select * from tree_scores order by tree_id"),
    ("region_summary", "select * from region_summary order by region"),
    ("agent_activity", "select * from agent_activity order by agent_id, day"),
];

fn outcome(run: &Running) -> Outcome {
    let mut views = BTreeMap::new();
    for (name, q) in VIEWS {
        views.insert(name, sql(run, q));
    }
    let mut events = BTreeMap::new();
    for (table, pos) in [
        ("readings", "source, \"offset\""),
        ("assessments", "source, \"offset\""),
        ("trees", "source, \"offset\""),
        ("deadletter", "source, position"),
    ] {
        let rows = sql(run, &format!("select count(*) as n, (select count(*) from (select distinct {pos} from lake.{table})) as d from lake.{table}"));
        let n = |v: &Value| v.as_i64().unwrap_or(-1);
        events.insert(table, (n(&rows[0][0]), n(&rows[0][1])));
    }
    Outcome { views, events }
}

/// The lake's derived tables agree with the views: `score_changes` nets to exactly the final
/// `tree_scores`, and per tree the alerts never repeat and end with the final band.
pub(crate) fn check_derived(run: &Running) {
    let net = sql(
        run,
        "select tree_id, score, band, sum(diff) from lake.score_changes group by tree_id, score, band \
         having sum(diff) <> 0 order by tree_id",
    );
    let scores = sql(run, "select tree_id, score, band, 1 from tree_scores order by tree_id");
    assert_eq!(net.len(), scores.len(), "score_changes net rows vs tree_scores rows");
    if let Some((n, s)) = net.iter().zip(&scores).find(|(n, s)| n != s) {
        panic!("score_changes do not net to tree_scores: {n:?} vs {s:?}");
    }
    let dup = sql(
        run,
        "select tree_id, kind, watermark, count(*) from lake.alerts group by tree_id, kind, watermark, score \
         having count(*) > 1 limit 5",
    );
    assert!(dup.is_empty(), "repeated alerts: {dup:?}");
    let balance = sql(
        run,
        "select a.tree_id, a.opened, coalesce(s.band, 'unregistered') from \
         (select tree_id, sum(case when kind = 'critical' then 1 else -1 end) opened from lake.alerts group by tree_id) a \
         left join tree_scores s on s.tree_id = a.tree_id",
    );
    for row in balance {
        let open = row[1].as_i64().unwrap();
        let critical = row[2] == "critical";
        assert_eq!(open, i64::from(critical), "alerts of {} do not end with its band {}", row[0], row[2]);
    }
}

fn start(input: &Path, lake: &Path, extra: &[&str]) -> Running {
    start_with(input, lake.to_str().unwrap(), extra, &[])
}

fn start_with(input: &Path, lake: &str, extra: &[&str], envs: &[(&str, &str)]) -> Running {
    let mut args = vec!["run"];
    if !extra.contains(&"--workers") {
        args.extend_from_slice(&["--workers", "2"]);
    }
    args.extend_from_slice(&["--input", input.to_str().unwrap(), "--lake", lake, "--lake-roll-ms", "1000"]);
    if !extra.contains(&"--checkpoint-interval-ms") {
        args.extend_from_slice(&["--checkpoint-interval-ms", "400"]);
    }
    args.extend_from_slice(extra);
    Running::start_with_env(&args, envs)
}

fn finish(run: &mut Running) -> Outcome {
    let outcome = outcome(run);
    check_derived(run);
    outcome
}

pub(crate) fn rounds() -> u64 {
    std::env::var("TREEAI_KILL_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(3)
}

/// The seeds of `rounds` kill rounds: random, or the one in `TREEAI_KILL_SEED`.
pub(crate) fn kill_seeds(rounds: u64) -> Vec<u64> {
    match std::env::var("TREEAI_KILL_SEED") {
        Ok(seed) => vec![seed.parse().expect("TREEAI_KILL_SEED")],
        Err(_) => (0..rounds).map(|_| rand::rng().random()).collect(),
    }
}

#[test]
fn kill_9_at_random_moments_then_restart_ends_as_an_uninterrupted_run() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("events.ndjson");
    produce(&input, 500_000, 11);

    let started = Instant::now();
    let (reference, duration) = {
        let lake = dir.path().join("reference-lake");
        let mut run = start(&input, &lake, &[]);
        run.wait_for(300, |l| l.contains("input complete"));
        let duration = started.elapsed();
        let outcome = finish(&mut run);
        run.interrupt();
        (outcome, duration)
    };
    eprintln!("uninterrupted run: {duration:?}");
    assert!(reference.events["readings"].0 > 100_000, "{:?}", reference.events);

    kill_rounds(
        &input,
        &reference,
        duration,
        rounds(),
        &|seed| dir.path().join(format!("lake-{seed}")).to_string_lossy().into_owned(),
        &[],
    );
}

fn checkpoint_folders(lake: &Path) -> Vec<std::path::PathBuf> {
    let mut folders: Vec<_> = std::fs::read_dir(lake.join("_checkpoints"))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    folders.sort();
    folders
}

/// The number in a "events N (rejected ..." summary line.
fn events_in(line: &str) -> u64 {
    let rest = line.split("events ").nth(1).expect("events in the summary");
    rest.split_whitespace().next().unwrap().parse().expect("event count")
}

#[test]
fn sigterm_writes_a_final_checkpoint_and_a_restart_resumes_exactly_there() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("events.ndjson");
    produce(&input, 400_000, 5);
    let lines = std::fs::read_to_string(&input).unwrap().lines().filter(|l| !l.trim().is_empty()).count() as u64;

    let reference = {
        let mut run = start(&input, &dir.path().join("reference"), &["--checkpoint-interval-ms", "0"]);
        run.wait_for(300, |l| l.contains("input complete"));
        let outcome = finish(&mut run);
        run.interrupt();
        outcome
    };

    // Only the final checkpoint: no timer. Rounds slowed down (about 5 s for the input) so
    // that the stop comes mid-input even when the test itself is slow to send it.
    let lake = dir.path().join("lake");
    let slow = [("TREEAI_FAULT", "slow-rounds:400")];
    let mut run = start_with(&input, lake.to_str().unwrap(), &["--checkpoint-interval-ms", "0"], &slow);
    run.wait_for(120, |l| l.contains("ev/s") && !l.contains("events 0 "));
    run.signal("TERM");
    let status = run.wait_exit(25).expect("treeai did not exit within its shutdown timeout");
    assert_eq!(status.code(), Some(0), "exit status after SIGTERM");
    let stopped = run.wait_for(5, |l| l.contains("treeai run: stopped"));
    let before = events_in(&stopped);
    assert!(before > 0 && before < lines, "the stop came mid-input: {before} of {lines}");
    // The first checkpoint (of the empty state, at start) and the final one.
    let folders = checkpoint_folders(&lake);
    assert_eq!(folders.len(), 2, "the first and the final checkpoint: {folders:?}");
    assert!(folders[1].join("MANIFEST.json").exists());
    assert!(
        crate::common::files_under(&lake.join("_staging")).is_empty(),
        "every staged file published by the final checkpoint"
    );

    // The restart reads only what the first run had not: no replay beyond the checkpoint.
    let mut run = start(&input, &lake, &["--checkpoint-interval-ms", "0"]);
    run.wait_for(60, |l| l.contains("resumed from checkpoint 2 "));
    let complete = run.wait_for(300, |l| l.contains("input complete"));
    assert_eq!(before + events_in(&complete), lines, "events read before the stop and after the restart");
    let got = finish(&mut run);
    assert_eq!(got, reference, "views and lake after stop + restart");
    run.interrupt();
}

#[test]
fn a_damaged_or_incomplete_newest_checkpoint_falls_back_and_another_version_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("events.ndjson");
    produce(&input, 200_000, 7);
    let lake = dir.path().join("lake");
    let mut run = start(&input, &lake, &["--checkpoint-interval-ms", "200", "--checkpoints-kept", "10"]);
    run.wait_for(300, |l| l.contains("input complete"));
    let reference = finish(&mut run);
    // An operator's checkpoint: answered once durable.
    let (status, _, body) = http(&run.http, "POST", "/v1/admin/checkpoint", &[], b"").expect("POST checkpoint");
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    assert_eq!(status, 200, "{body}");
    let asked = body["checkpoint"].as_u64().expect("checkpoint number");
    assert!(checkpoint_folders(&lake).last().unwrap().ends_with(format!("{asked:020}")));
    let (_, _, metrics) = http(&run.http, "GET", "/metrics", &[], b"").expect("GET /metrics");
    let metrics = String::from_utf8_lossy(&metrics).into_owned();
    for name in [
        "treeai_checkpoint_seconds_count",
        "treeai_checkpoint_bytes",
        "treeai_checkpoint_last_success_timestamp_seconds",
        "treeai_checkpoint_failures_total 0",
        "treeai_restore_seconds",
    ] {
        assert!(metrics.contains(name), "{name} in /metrics");
    }
    run.interrupt();

    let folders = checkpoint_folders(&lake);
    assert!(folders.len() >= 2, "{folders:?}");
    let newest = folders[folders.len() - 1].clone();
    let previous = folders[folders.len() - 2].clone();
    // A damaged newest part (a byte flipped) and a newer folder without a manifest (a crash
    // during its upload): both skipped.
    let part = newest.join("worker-0.bin.zst");
    let mut bytes = std::fs::read(&part).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&part, bytes).unwrap();
    let incomplete = lake.join("_checkpoints").join(format!("{:020}", asked + 5));
    std::fs::create_dir_all(&incomplete).unwrap();
    std::fs::write(incomplete.join("worker-0.bin.zst"), b"partial").unwrap();
    let number = |p: &Path| p.file_name().unwrap().to_string_lossy().parse::<u64>().unwrap();
    let mut run = start(&input, &lake, &[]);
    run.wait_for(60, |l| l.contains(&format!("resumed from checkpoint {} ", number(&previous))));
    run.wait_for(300, |l| l.contains("input complete"));
    assert_eq!(finish(&mut run), reference, "views and lake restored from the previous checkpoint");
    run.interrupt();

    // A checkpoint of another format version stops the start with a clear error.
    let newest = checkpoint_folders(&lake).into_iter().rfind(|f| f.join("MANIFEST.json").exists()).unwrap();
    let mut manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(newest.join("MANIFEST.json")).unwrap()).unwrap();
    manifest["format"] = Value::from(99);
    std::fs::write(newest.join("MANIFEST.json"), serde_json::to_string_pretty(&manifest).unwrap()).unwrap();
    let mut run = start(&input, &lake, &[]);
    let line = run.wait_for(60, |l| l.contains("format version"));
    assert!(line.contains("version 99") && line.contains("--no-restore"), "{line}");
    let status = run.wait_exit(10).expect("treeai should stop on a checkpoint of another version");
    assert!(!status.success());
}

#[test]
fn kill_9_during_a_checkpoint_upload_restores_the_previous_one() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("events.ndjson");
    produce(&input, 200_000, 11);
    let mut run = start(&input, &dir.path().join("reference"), &[]);
    run.wait_for(300, |l| l.contains("input complete"));
    let reference = finish(&mut run);
    drop(run);

    // Checkpoint 3 writes its parts, then the process dies before the manifest.
    let lake = dir.path().join("lake");
    let lake_str = lake.to_str().unwrap();
    let mut run = start_with(
        &input,
        lake_str,
        &["--checkpoint-interval-ms", "200"],
        &[("TREEAI_FAULT", "hang-before-manifest:3")],
    );
    run.wait_for(300, |l| l.contains("injected fault: hanging before the manifest"));
    run.child.kill().unwrap();
    run.child.wait().unwrap();
    let folders = checkpoint_folders(&lake);
    let torn = folders.last().expect("checkpoint folders");
    assert!(torn.ends_with(format!("{:020}", 3)), "{folders:?}");
    assert!(torn.join("worker-0.bin.zst").exists() && !torn.join("MANIFEST.json").exists(), "{torn:?}");

    let mut run = start(&input, &lake, &[]);
    run.wait_for(60, |l| l.contains("resumed from checkpoint 2 "));
    run.wait_for(300, |l| l.contains("input complete"));
    assert_eq!(finish(&mut run), reference, "views and lake after a crash during a checkpoint's upload");
}

/// Polls `/readyz` until its status is `want` (at most `secs`); returns the body.
fn readyz_until(run: &Running, want: u16, secs: u64) -> String {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        // (Not listening yet counts as not ready.)
        let (status, body) = match http(&run.http, "GET", "/readyz", &[], b"") {
            Ok((status, _, body)) => (status, String::from_utf8_lossy(&body).into_owned()),
            Err(e) => (0, e.to_string()),
        };
        if status == want {
            return body;
        }
        assert!(Instant::now() < deadline, "/readyz still {status} after {secs} s: {body}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn readyz_fails_while_checkpoints_cannot_be_written_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("checkpoints");
    let mut run = Running::start(&[
        "run",
        "--workers",
        "1",
        "--rate",
        "2000",
        "--no-lake",
        "--checkpoint-interval-ms",
        "300",
        "--checkpoint-url",
        store.to_str().unwrap(),
    ]);
    readyz_until(&run, 200, 60);
    // The store breaks: its folder becomes a file, so every write fails.
    let moved = dir.path().join("moved");
    std::fs::rename(&store, &moved).unwrap();
    std::fs::write(&store, b"not a folder").unwrap();
    // Three intervals and 10 s without a durable checkpoint: not ready, and why.
    let body = readyz_until(&run, 503, 40);
    assert!(body.contains("no checkpoint became durable") && body.contains("failed"), "{body}");
    let (_, _, metrics) = http(&run.http, "GET", "/metrics", &[], b"").expect("GET /metrics");
    let metrics = String::from_utf8_lossy(&metrics).into_owned();
    let failures = metrics
        .lines()
        .find_map(|l| l.strip_prefix("treeai_checkpoint_failures_total "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .expect("treeai_checkpoint_failures_total");
    assert!(failures > 0.0, "{metrics}");
    // Repaired: the next checkpoint is durable and the pipeline is ready again.
    std::fs::remove_file(&store).unwrap();
    std::fs::rename(&moved, &store).unwrap();
    readyz_until(&run, 200, 30);
    assert!(run.interrupt().success());
}

/// The state rows and bytes of the newest checkpoint under `lake`.
fn newest_checkpoint_size(lake: &Path) -> (u64, u64) {
    let folder = checkpoint_folders(lake).pop().expect("a checkpoint");
    let manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(folder.join("MANIFEST.json")).unwrap()).unwrap();
    let parts = manifest["parts"].as_array().unwrap();
    let rows = parts.iter().map(|p| p["rows"].as_u64().unwrap()).sum();
    let bytes = parts.iter().map(|p| p["bytes"].as_u64().unwrap()).sum();
    (rows, bytes)
}

/// State follows what is live, not the history: 50 versions per tree and 20 revisions per
/// assessment leave the same state (rows of the checkpoint, its size within 10 %) and the
/// same views as one of each.
#[test]
fn history_does_not_grow_the_state() {
    let dir = tempfile::tempdir().unwrap();
    let (trees, t0) = (400, 1_795_564_800_000i64);
    let tree = |i: usize, v: i64| {
        format!(
            r#"{{"type":"tree","tree_id":"T-{i:06}","region":"eu-west","species":"Quercus robur","lat":48.8,"lon":2.3,"dbh_cm":{}.5,"height_m":9.0,"target_occupancy":"rare","updated_at":{}}}"#,
            10 + v % 40,
            t0 + v * 1000
        )
    };
    let assessment = |i: usize, r: i64| {
        format!(
            r#"{{"type":"assessment","assessment_id":"A-{i:06}","revision":{r},"tree_id":"T-{i:06}","agent_id":"agent-01","observed_at":{},"likelihood_of_failure":"{}","likelihood_of_impact":"low","consequences":"minor","defects":[]}}"#,
            t0 + r * 1000,
            if r % 2 == 0 { "possible" } else { "improbable" }
        )
    };
    let reading = |i: usize| {
        format!(
            r#"{{"type":"reading","tree_id":"T-{i:06}","sensor_id":"S-{i:06}-1","metric":"tilt_deg","value":1.5,"ts":{}}}"#,
            t0 + 60_000
        )
    };
    let write = |name: &str, versions: i64, revisions: i64| {
        let mut lines = Vec::new();
        for i in 0..trees {
            lines.extend((50 - versions..50).map(|v| tree(i, v)));
            lines.extend((21 - revisions..21).map(|r| assessment(i, r)));
            lines.push(reading(i));
        }
        let path = dir.path().join(name);
        std::fs::write(&path, lines.join("\n") + "\n").unwrap();
        path
    };
    let once = write("once.ndjson", 1, 1);
    let history = write("history.ndjson", 50, 20);
    let mut results = Vec::new();
    for input in [&once, &history] {
        let lake = dir.path().join(format!("lake-{}", input.file_stem().unwrap().to_string_lossy()));
        let mut run = start(input, &lake, &["--workers", "1", "--checkpoint-interval-ms", "0"]);
        run.wait_for(120, |l| l.contains("input complete"));
        let views: Vec<_> = VIEWS.iter().map(|(_, q)| sql(&run, q)).collect();
        run.interrupt();
        results.push((newest_checkpoint_size(&lake), views));
    }
    let ((rows_once, bytes_once), views_once) = &results[0];
    let ((rows_history, bytes_history), views_history) = &results[1];
    assert!(views_once == views_history, "the same views");
    assert_eq!(*rows_once, 3 * trees as u64, "a tree, an assessment and a reading per tree");
    assert_eq!(rows_history, rows_once, "state rows after 50 versions and 20 revisions");
    let ratio = *bytes_history as f64 / *bytes_once as f64;
    assert!((0.9..=1.1).contains(&ratio), "checkpoint bytes {bytes_history} vs {bytes_once}");
}

/// Rounds of three kills at random moments and a restart, each compared with `reference`.
fn kill_rounds(
    input: &Path,
    reference: &Outcome,
    duration: Duration,
    rounds: u64,
    lake_for: &dyn Fn(u64) -> String,
    envs: &[(&str, &str)],
) {
    for seed in kill_seeds(rounds) {
        eprintln!("kill -9 round: TREEAI_KILL_SEED={seed}");
        let mut rng = rand_pcg::Pcg64::seed_from_u64(seed);
        let lake = lake_for(seed);
        let mut resumed = 0;
        for kill in 0..3 {
            let mut run = start_with(input, &lake, &[], envs);
            // Somewhere in the first three quarters of what an uninterrupted run takes.
            let after = duration.mul_f64(rng.random_range(0.1..0.75));
            let started = Instant::now();
            let (mut complete, mut from) = (false, None);
            while started.elapsed() < after {
                if let Ok(line) = run.lines.recv_timeout(Duration::from_millis(10)) {
                    complete |= line.contains("input complete");
                    if line.contains("resumed from checkpoint") {
                        from = Some(line);
                    }
                }
            }
            let _ = run.child.kill(); // SIGKILL
            let _ = run.child.wait();
            resumed += usize::from(from.is_some());
            eprintln!("  kill {kill} after {after:?} (input complete: {complete}; {from:?})");
        }
        let mut run = start_with(input, &lake, &[], envs);
        run.wait_for(60, |l| l.contains("resumed from checkpoint"));
        run.wait_for(300, |l| l.contains("input complete"));
        let got = finish(&mut run);
        assert!(resumed >= 1, "seed {seed}: no restart resumed from a checkpoint");
        for (view, rows) in &reference.views {
            assert!(got.views[view] == *rows, "seed {seed}: view {view} differs from the uninterrupted run");
        }
        assert_eq!(got.events, reference.events, "seed {seed}: lake event tables");
        run.interrupt();
    }
}

#[test]
fn kill_9_with_the_lake_and_checkpoints_on_s3() {
    let moto = crate::common::Moto::start();
    moto.create_bucket("treeai");
    let envs: Vec<(&str, &str)> = moto.envs.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("events.ndjson");
    produce(&input, 200_000, 13);
    let started = Instant::now();
    let mut run = start_with(&input, "s3://treeai/reference", &[], &envs);
    run.wait_for(300, |l| l.contains("input complete"));
    let duration = started.elapsed();
    let reference = finish(&mut run);
    run.interrupt();
    assert!(reference.events["readings"].0 > 100_000, "{:?}", reference.events);
    kill_rounds(&input, &reference, duration, 1, &|seed| format!("s3://treeai/lake-{seed}"), &envs);
}
