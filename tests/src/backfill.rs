//! The `treeai` binary end to end: produce → backfill, against the naive
//! implementation, identical whatever `--workers`; `run` streams and stays up.

use crate::common::{batch_rows, diff_views, treeai_bin, Running};
use crate::naive::{naive_views, NaiveInput};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

fn read_parquet(path: &Path) -> Vec<Map<String, Value>> {
    let file = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let reader = ParquetRecordBatchReaderBuilder::try_new(file).unwrap().build().unwrap();
    reader.flat_map(|b| batch_rows(&b.unwrap())).collect()
}

fn read_views(dir: &Path) -> BTreeMap<&'static str, Vec<Map<String, Value>>> {
    treeai_dataflows::VIEW_NAMES.iter().map(|v| (*v, read_parquet(&dir.join(v).join("part-00000.parquet")))).collect()
}

fn treeai(args: &[&str]) -> String {
    let out = Command::new(treeai_bin()).args(args).output().expect("run treeai");
    assert!(out.status.success(), "treeai {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn produce_then_backfill_matches_the_spec_and_ignores_worker_count() {
    let dir = tempfile::tempdir().unwrap();
    let events = dir.path().join("e.ndjson");
    let e = events.to_str().unwrap();
    treeai(&["produce", "--count", "40000", "--trees", "500", "--seed", "1", "--bad-fraction", "0.01", "--output", e]);

    let mut outputs = Vec::new();
    for workers in ["1", "2", "4"] {
        let out = dir.path().join(format!("out{workers}"));
        let summary = treeai(&["backfill", "--input", e, "--output", out.to_str().unwrap(), "--workers", workers]);
        assert!(summary.starts_with("backfill: 40000 events read"), "{summary}");
        outputs.push(read_views(&out));
        let dead = read_parquet(&out.join("deadletter").join("part-00000.parquet"));
        assert!(dead.len() > 200, "dead letters: {}", dead.len());
        assert!(dead.iter().all(|d| d["reason"].as_str().is_some_and(|r| !r.is_empty())));
        assert!(dead.iter().all(|d| d["source"].as_str().is_some_and(|s| s.contains("e.ndjson:"))));
    }
    for (name, rows) in &outputs[0] {
        assert!(!rows.is_empty(), "view {name} is empty");
    }
    assert_eq!(outputs[0], outputs[1], "1 vs 2 workers");
    assert_eq!(outputs[0], outputs[2], "1 vs 4 workers");

    let text = std::fs::read(&events).unwrap();
    let lines: Vec<&[u8]> = text.split(|b| *b == b'\n').filter(|l| !l.is_empty()).collect();
    let inputs: Vec<NaiveInput> =
        lines.iter().enumerate().map(|(i, l)| NaiveInput { order: i as u64 + 1, line: l }).collect();
    let want = naive_views(&inputs);
    if let Some(diff) = diff_views(&outputs[0], &want.views) {
        panic!("backfill differs from the naive implementation:\n{diff}");
    }
    let dead = read_parquet(&dir.path().join("out1").join("deadletter").join("part-00000.parquet"));
    assert_eq!(dead.len(), want.rejected);
}

#[test]
fn backfill_reports_bad_arguments_with_one_line() {
    let out = Command::new(treeai_bin())
        .args(["backfill", "--input", "/nonexistent.ndjson", "--output", "/tmp/x"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent.ndjson"), "{err}");
}

#[test]
fn run_streams_files_then_stays_up_until_interrupted() {
    let data = concat!(env!("CARGO_MANIFEST_DIR"), "/data/one-tree.ndjson");
    let lake = tempfile::tempdir().unwrap();
    let mut run = Running::start(&["run", "--input", data, "--workers", "2", "--lake", lake.path().to_str().unwrap()]);
    let done = run.wait_for(60, |l| l.contains("input complete"));
    // The lake is written when the input is complete: 5 valid readings in hours 07 and 09.
    let readings: Vec<_> = ["hour=07", "hour=09"]
        .iter()
        .map(|h| lake.path().join("readings/date=2026-11-25").join(h))
        .filter(|p| p.is_dir())
        .collect();
    assert_eq!(readings.len(), 2, "readings partitions in {}", lake.path().display());
    assert!(done.contains("events 11 (rejected 1)"), "{done}");
    assert!(done.contains("watermark 2026-11-25T09:50:00.000Z"), "{done}");
    assert!(done.contains("tree_scores=1"), "{done}");
    std::thread::sleep(Duration::from_millis(300));
    assert!(run.child.try_wait().unwrap().is_none(), "run exited instead of staying up");
    assert!(run.interrupt().success());
}

#[test]
fn run_without_arguments_shows_live_progress() {
    let mut run = Running::start(&["run", "--workers", "2", "--trees", "2000", "--rate", "20000", "--no-lake"]);
    let line = run.wait_for(60, |l| l.contains("ev/s") && !l.contains("events 0 "));
    assert!(line.contains("watermark 20"), "{line}");
    assert!(run.interrupt().success());
}
