//! The heart of correctness: the incremental dataflow must end with exactly the
//! views of the naive batch implementation, for random event sets with
//! revisions, withdrawals, deletions, re-registrations, late and out-of-order
//! readings and malformed lines, fed in random orders and batch boundaries,
//! over random watermark partitions, with 1, 2 and 4 workers, and as clusters of
//! 2 and 3 processes.

use crate::common::{batch_rows, diff_views};
use crate::naive::{naive_views, NaiveInput};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_pcg::Pcg64Mcg;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use treeai_connectors::pipeline::run_bounded;
use treeai_connectors::SourceSpec;
use treeai_dataflows::event::Position;
use treeai_dataflows::runtime::RuntimeConfig;
use treeai_dataflows::source::{PartitionPosition, Poll, RawMessage, Source, SourceError, SourceFactory, SourceRef};
use treeai_schema::views::view_batches;

const BASE_MS: i64 = 1_795_564_800_000; // 2026-11-25T00:00:00Z

fn ts(rng: &mut Pcg64Mcg, ms: i64) -> Value {
    if rng.random_bool(0.5) {
        json!(ms)
    } else {
        Value::from(treeai_dataflows::time::format_ts(ms))
    }
}

/// A random event line: small id spaces so that versions collide.
fn random_line(rng: &mut Pcg64Mcg) -> String {
    let tree = format!("T-{}", rng.random_range(0..8));
    let pick = |rng: &mut Pcg64Mcg, xs: &[&str]| xs[rng.random_range(0..xs.len())].to_string();
    let roll = rng.random_range(0..100);
    let v = if roll < 15 {
        let updated = BASE_MS + rng.random_range(0..6) * 60_000;
        if rng.random_bool(0.15) {
            json!({"type": "tree", "tree_id": tree, "deleted": true, "updated_at": ts(rng, updated)})
        } else {
            let mut o = json!({
                "type": "tree", "tree_id": tree,
                "region": pick(rng, &["us-east", "eu-west", "ap-southeast"]),
                "lat": rng.random_range(-90.0..90.0f64), "lon": rng.random_range(-180.0..180.0f64),
                "updated_at": ts(rng, updated),
            });
            if rng.random_bool(0.7) {
                o["baseline_tilt_deg"] = json!((rng.random_range(0.0..4.0f64) * 10.0).round() / 10.0);
            }
            if rng.random_bool(0.7) {
                o["baseline_sway_hz"] = json!((rng.random_range(0.2..1.5f64) * 100.0).round() / 100.0);
            }
            if rng.random_bool(0.5) {
                o["species"] = json!(pick(rng, &["Quercus robur", "Tilia cordata", "Acer platanoides"]));
                o["dbh_cm"] = json!(rng.random_range(5..200));
                o["height_m"] = json!(rng.random_range(2.0..40.0f64));
                o["target_occupancy"] = json!(pick(rng, &["rare", "occasional", "frequent", "constant"]));
            }
            o
        }
    } else if roll < 40 {
        let observed = BASE_MS - rng.random_range(0..4) * 43_200_000;
        let mut o = json!({
            "type": "assessment",
            "assessment_id": format!("A-{}", rng.random_range(0..12)),
            "tree_id": tree,
            "agent_id": format!("ag-{}", rng.random_range(0..4)),
            "observed_at": ts(rng, observed),
            "likelihood_of_failure": pick(rng, &["improbable", "possible", "probable", "imminent"]),
            "likelihood_of_impact": pick(rng, &["very_low", "low", "medium", "high"]),
            "consequences": pick(rng, &["negligible", "minor", "significant", "severe"]),
        });
        if rng.random_bool(0.8) {
            o["revision"] = json!(rng.random_range(1..4));
        }
        if rng.random_bool(0.6) {
            let n = rng.random_range(0..5);
            let defects: Vec<Value> = (0..n)
                .map(|_| json!({"kind": pick(rng, &["decay", "crack", "lean", "cavity"]), "severity": rng.random_range(1..6)}))
                .collect();
            o["defects"] = json!(defects);
        }
        if rng.random_bool(0.5) {
            o["crown_dieback_pct"] = json!(rng.random_range(0..60));
        }
        if rng.random_bool(0.12) {
            o["withdrawn"] = json!(true);
        }
        o
    } else if roll < 96 {
        let (metric, lo, hi) = [
            ("tilt_deg", 0.0, 12.0),
            ("sway_hz", 0.05, 1.6),
            ("soil_moisture_pct", 0.0, 100.0),
            ("wind_gust_ms", 0.0, 40.0),
        ][rng.random_range(0..4)];
        // Mostly within ~3 hours, some far in the past (expired when they arrive late).
        let t = if rng.random_bool(0.05) { BASE_MS - 86_400_000 } else { BASE_MS + rng.random_range(0..3 * 3_600_000) };
        json!({
            "type": "reading", "sensor_id": format!("S-{}", rng.random_range(0..5)), "tree_id": tree,
            "metric": metric, "value": (rng.random_range(lo..hi) * 100.0f64).round() / 100.0 + if metric == "sway_hz" { 0.01 } else { 0.0 },
            "ts": ts(rng, t),
        })
    } else {
        // Malformed: a few kinds.
        return pick(
            rng,
            &[
                "{\"type\":\"reading\",\"tree_id\":\"T-1\"",
                "{\"type\":\"reading\",\"sensor_id\":\"S\",\"tree_id\":\"T-1\",\"metric\":\"sway_hz\",\"value\":0,\"ts\":1795564800000}",
                "{\"type\":\"tree\",\"tree_id\":\"T 1\",\"region\":\"eu-west\",\"lat\":1,\"lon\":1,\"updated_at\":1795564800000}",
                "[1,2]",
                "{\"type\":\"assessment\",\"assessment_id\":\"A-1\",\"tree_id\":\"T-1\",\"agent_id\":\"a\",\"observed_at\":\"1999-12-31T23:59:59Z\",\"likelihood_of_failure\":\"possible\",\"likelihood_of_impact\":\"low\",\"consequences\":\"minor\"}",
            ],
        );
    };
    v.to_string()
}

/// A source that replays given messages in the given order with random batch sizes.
struct VecSource {
    messages: Vec<(String, Position, u32)>,
    next: usize,
    rng: Pcg64Mcg,
    max_batch: usize,
}

impl Source for VecSource {
    fn poll(&mut self, max: usize, emit: &mut dyn FnMut(RawMessage<'_>)) -> Poll {
        if self.next >= self.messages.len() {
            return Poll::Done;
        }
        if self.rng.random_bool(0.2) {
            return Poll::Idle;
        }
        let n = self.rng.random_range(1..=self.max_batch.min(max));
        for (line, pos, partition) in self.messages.iter().skip(self.next).take(n) {
            emit(RawMessage { bytes: line.as_bytes(), kind: None, pos: *pos, partition: *partition, key: None });
        }
        self.next += n;
        Poll::Ready
    }
    fn source_ref(&self, pos: Position) -> SourceRef {
        SourceRef::Other { name: "test".into(), pos }
    }
    fn positions(&self) -> Vec<PartitionPosition> {
        Vec::new()
    }
    fn seek(&mut self, _positions: &[PartitionPosition]) -> Result<(), SourceError> {
        Err(SourceError::SeekUnsupported)
    }
}

struct Outcome {
    views: BTreeMap<&'static str, Vec<serde_json::Map<String, Value>>>,
    watermark: Option<i64>,
    rejected: usize,
}

fn run_dataflow(lines: &[String], workers: usize, seed: u64) -> Outcome {
    let mut outcomes = run_cluster(lines, 1, workers, seed);
    outcomes.pop().expect("one process")
}

/// Runs the dataflow as a cluster of `processes` processes (threads of this one, linked over
/// loopback by timely's networking as separate processes would be) of `workers` workers each;
/// the outcome of every process (its views, and the dead letters of its own workers).
fn run_cluster(lines: &[String], processes: usize, workers: usize, seed: u64) -> Vec<Outcome> {
    let mut rng = Pcg64Mcg::seed_from_u64(seed);
    let total = processes * workers;
    // Deal the lines to workers in a random order; positions keep source order.
    let mut dealt: Vec<Vec<(String, Position, u32)>> = vec![Vec::new(); total];
    let mut order: Vec<usize> = (0..lines.len()).collect();
    order.shuffle(&mut rng);
    for i in order {
        let w = rng.random_range(0..total);
        let partition = rng.random_range(0..3);
        dealt[w].push((lines[i].clone(), Position { source: 0, offset: i as u64 + 1 }, partition));
    }
    let max_batch = [1, 3, 17, 200][rng.random_range(0..4)];
    let dealt = Arc::new(Mutex::new(dealt));
    let factory: SourceFactory = Arc::new(move |w, _peers| {
        let messages = std::mem::take(&mut dealt.lock().unwrap()[w]);
        Ok(Box::new(VecSource { messages, next: 0, rng: Pcg64Mcg::seed_from_u64(seed ^ w as u64), max_batch })
            as Box<dyn Source>)
    });
    let config = RuntimeConfig {
        workers,
        allowed_lateness_ms: [0, 5_000, 600_000][rng.random_range(0..3)],
        idle_timeout: Duration::from_millis([0, 5, 30_000][rng.random_range(0..3)]),
        batch: 64,
        ..Default::default()
    };
    let peers: Vec<String> = (0..processes).map(|_| crate::common::free_addr()).collect();
    let runs: Vec<_> = (0..processes)
        .map(|process| {
            let mut config = config.clone();
            if processes > 1 {
                config.cluster = Some(treeai_dataflows::runtime::cluster::ClusterConfig {
                    processes,
                    process,
                    peers: peers.clone(),
                    connect_timeout: Duration::from_secs(20),
                });
            }
            let factory = factory.clone();
            std::thread::spawn(move || run_bounded(SourceSpec::Custom(factory), config).expect("runtime"))
        })
        .collect();
    runs.into_iter()
        .map(|run| {
            let done = run.join().expect("a process of the cluster panicked");
            let views =
                view_batches(&done.views, done.watermark).into_iter().map(|(n, b)| (n, batch_rows(&b))).collect();
            let rejected = done.collected.dead_letters.len();
            Outcome { views, watermark: done.watermark, rejected }
        })
        .collect()
}

fn check(lines: &[String], seed: u64, workers: usize) {
    let inputs: Vec<NaiveInput> =
        lines.iter().enumerate().map(|(i, l)| NaiveInput { order: i as u64 + 1, line: l.as_bytes() }).collect();
    let want = naive_views(&inputs);
    let got = run_dataflow(lines, workers, seed);
    assert_eq!(got.watermark, want.watermark, "watermark (seed {seed}, workers {workers})");
    assert_eq!(got.rejected, want.rejected, "rejected (seed {seed}, workers {workers})");
    if let Some(diff) = diff_views(&got.views, &want.views) {
        panic!("seed {seed}, workers {workers}: views differ from the naive implementation:\n{diff}");
    }
}

#[test]
fn random_inputs_match_the_naive_implementation() {
    for seed in 0..36u64 {
        let mut rng = Pcg64Mcg::seed_from_u64(seed);
        let n = rng.random_range(1..400);
        let lines: Vec<String> = (0..n).map(|_| random_line(&mut rng)).collect();
        let workers = [1, 2, 4][seed as usize % 3];
        check(&lines, seed, workers);
    }
}

#[test]
fn the_same_input_gives_the_same_views_in_any_order_and_worker_count() {
    let mut rng = Pcg64Mcg::seed_from_u64(99);
    let lines: Vec<String> = (0..600).map(|_| random_line(&mut rng)).collect();
    for (seed, workers) in [(1, 1), (2, 2), (3, 4), (4, 4), (5, 2), (6, 1)] {
        check(&lines, seed, workers);
    }
}

/// A cluster of 2 or 3 processes of 1 or 2 workers: every process ends with the naive views
/// (each receives the whole views), and the processes' dead letters add up to the naive ones.
#[test]
fn every_process_of_a_cluster_ends_with_the_naive_views() {
    for seed in 0..8u64 {
        let mut rng = Pcg64Mcg::seed_from_u64(1000 + seed);
        let n = rng.random_range(50..400);
        let lines: Vec<String> = (0..n).map(|_| random_line(&mut rng)).collect();
        let (processes, workers) = [(2, 1), (3, 1), (2, 2), (3, 2)][seed as usize % 4];
        let inputs: Vec<NaiveInput> =
            lines.iter().enumerate().map(|(i, l)| NaiveInput { order: i as u64 + 1, line: l.as_bytes() }).collect();
        let want = naive_views(&inputs);
        let got = run_cluster(&lines, processes, workers, seed);
        assert_eq!(got.iter().map(|o| o.rejected).sum::<usize>(), want.rejected, "rejected (seed {seed})");
        for (process, outcome) in got.iter().enumerate() {
            assert_eq!(outcome.watermark, want.watermark, "watermark (seed {seed}, process {process})");
            if let Some(diff) = diff_views(&outcome.views, &want.views) {
                panic!("seed {seed}, {processes}x{workers}, process {process}: views differ from naive:\n{diff}");
            }
        }
    }
}

#[test]
fn worked_example_of_the_spec() {
    let lines: Vec<String> = include_str!("../data/one-tree.ndjson").lines().map(str::to_string).collect();
    let got = run_dataflow(&lines, 2, 7);
    assert_eq!(got.rejected, 1);
    assert_eq!(got.watermark, Some(1_795_600_200_000)); // 2026-11-25T09:50:00Z
    let score = &got.views["tree_scores"][0];
    assert_eq!(score["score"], json!(42.5));
    assert_eq!(score["band"], json!("poor"));
    assert_eq!(score["risk_rating"], json!("moderate"));
    let w = &got.views["sensor_windows"][0];
    assert_eq!(
        (w["tilt_max"].clone(), w["sway_min"].clone(), w["readings"].clone()),
        (json!(4.5), json!(0.4), json!(5))
    );
    assert_eq!(w["gust_max"], json!(18.0));
    assert_eq!(w["soil_mean"], json!(41.0));
    let a = &got.views["afiss_current"][0];
    assert_eq!((a["assessment_id"].clone(), a["revision"].clone()), (json!("A-2"), json!(2)));
    assert_eq!((a["failure_impact"].clone(), a["risk_rating"].clone()), (json!("somewhat_likely"), json!("moderate")));
    assert_eq!(a["assessments_total"], json!(2));
    let agents = &got.views["agent_activity"];
    assert_eq!(agents.len(), 2);
    assert_eq!((agents[1]["agent_id"].clone(), agents[1]["day"].clone()), (json!("agent-07"), json!("2026-11-20")));
    assert_eq!(agents[1]["high_or_extreme"], json!(1));
}
