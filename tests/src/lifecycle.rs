//! The process lifecycle of `treeai run`: a graceful stop on SIGTERM, a
//! second signal, a panicking worker, a stalled dataflow and `/healthz`.
//! Faults are injected with `TREEAI_FAULT` (see `RuntimeConfig::fault`).

use crate::common::{files_under, http, Running};

/// Parquet files under `dir`, recursively.
fn parquet_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    files_under(dir).into_iter().filter(|p| p.extension().is_some_and(|e| e == "parquet")).collect()
}

fn healthz(run: &Running) -> (u16, String) {
    let (status, _, body) = http(&run.http, "GET", "/healthz", &[], b"").expect("GET /healthz");
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// Waits for the injected stall (its log line: on a loaded machine a slow round can fail
/// `/healthz` before it, and a stop then drains), then for `/healthz` to fail; its answer.
fn wait_for_stall(run: &mut Running) -> (u16, String) {
    run.wait_for(60, |l| l.contains("injected fault: worker 0 stalls"));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        if let Ok((status, _, body)) = http(&run.http, "GET", "/healthz", &[], b"") {
            if status != 200 || std::time::Instant::now() > deadline {
                return (status, String::from_utf8_lossy(&body).into_owned());
            }
        }
        assert!(std::time::Instant::now() < deadline, "no answer from /healthz");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

#[test]
fn sigterm_drains_flushes_the_lake_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("lake");
    // Files roll only at the stop: the lake holds files afterwards only if the stop flushed them.
    let mut run = Running::start(&[
        "run",
        "--workers",
        "2",
        "--rate",
        "20000",
        "--lake",
        lake.to_str().unwrap(),
        "--lake-roll-ms",
        "3600000",
    ]);
    run.wait_for(60, |l| l.contains("ev/s") && !l.contains("events 0 "));
    assert_eq!(healthz(&run).0, 200, "a running pipeline is live");
    assert!(parquet_files(&lake).is_empty(), "nothing rolled before the stop");
    run.signal("TERM");
    let status = run.wait_exit(25).expect("treeai did not exit within its shutdown timeout");
    assert_eq!(status.code(), Some(0), "exit status after SIGTERM");
    let files = parquet_files(&lake);
    assert!(files.iter().any(|f| f.to_string_lossy().contains("/readings/")), "readings flushed: {files:?}");
    run.wait_for(5, |l| l.contains("treeai run: stopped"));
}

#[test]
fn a_worker_panic_ends_the_process_with_a_reason() {
    let mut run = Running::start_with_env(
        &["run", "--workers", "2", "--rate", "5000", "--no-lake"],
        &[("TREEAI_FAULT", "panic-after-rounds:30")],
    );
    let line = run.wait_for(60, |l| l.contains("fatal"));
    assert!(line.contains("thread 'timely:work-0' panicked") && line.contains("injected fault"), "{line}");
    // Never a hang: the process is gone within seconds of the panic.
    let status = run.wait_exit(5).expect("treeai still running 5 s after a worker panic");
    assert_eq!(status.code(), Some(70), "exit status after a worker panic");
}

#[test]
fn a_stalled_dataflow_fails_liveness_and_the_shutdown_deadline() {
    let mut run = Running::start_with_env(
        &[
            "run",
            "--workers",
            "2",
            "--rate",
            "5000",
            "--no-lake",
            "--liveness-timeout-ms",
            "1000",
            "--shutdown-timeout-ms",
            "1500",
        ],
        &[("TREEAI_FAULT", "stall-after-rounds:30")],
    );
    let (status, body) = wait_for_stall(&mut run);
    assert_eq!(status, 503, "a stalled dataflow fails /healthz: {body}");
    assert!(body.contains("no dataflow round"), "{body}");
    // A stop that cannot drain ends at the deadline, with a non-zero status and a reason.
    run.signal("TERM");
    let status = run.wait_exit(20).expect("treeai ignored its shutdown deadline");
    assert_eq!(status.code(), Some(1), "exit status when the stop misses its deadline");
    run.wait_for(5, |l| l.contains("did not stop within 1500 ms"));
}

#[test]
fn a_second_signal_exits_at_once() {
    let mut run = Running::start_with_env(
        &[
            "run",
            "--workers",
            "2",
            "--rate",
            "5000",
            "--no-lake",
            "--shutdown-timeout-ms",
            "600000",
            "--liveness-timeout-ms",
            "1000",
        ],
        &[("TREEAI_FAULT", "stall-after-rounds:30")],
    );
    // Only once the dataflow has stalled (on a slow machine round 30 may come late, and a
    // drain before it would finish).
    let (status, body) = wait_for_stall(&mut run);
    assert_eq!(status, 503, "the injected stall did not fail /healthz: {body}");
    run.signal("TERM");
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(run.wait_exit(0).is_none(), "the first signal waits for the (stalled) drain");
    run.signal("INT");
    let status = run.wait_exit(10).expect("treeai did not exit on the second signal");
    assert_eq!(status.code(), Some(130));
}

#[test]
fn log_lines_as_json() {
    let mut run = Running::start_with_env(
        &[
            "run",
            "--workers",
            "1",
            "--rate",
            "2000",
            "--no-lake",
            "--checkpoint-interval-ms",
            "200",
            "--log-format",
            "json",
        ],
        &[("TREEAI_FAULT", "hang-before-manifest:3")],
    );
    let line = run.wait_for(60, |l| l.contains("injected fault"));
    let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
    assert_eq!(v["level"], "WARN", "{v}");
    assert!(v["fields"]["message"].as_str().is_some_and(|m| m.starts_with("checkpoint 3: parts written")), "{v}");
    assert!(v["timestamp"].is_string(), "{v}");
}
