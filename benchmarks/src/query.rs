//! Query benchmark: SQL latency on the live views while ingesting.
//!
//! ```text
//! cargo run --release -p treeai-benchmarks --bin query-bench -- [--trees 1000000] [--rate 20000] [--seconds 10]
//! ```
//!
//! Starts the pipeline on the generator (`--trees` trees, 2 workers), paced at
//! max(`--rate`, trees / 5) events/s so that the registry loads in about five
//! seconds (that pace goes on while querying), waits until every tree is scored, then
//! for `--seconds` while ingest goes on runs, round-robin:
//! - a point lookup `SELECT * FROM tree_scores WHERE tree_id = '<random>'`,
//! - `SELECT * FROM region_summary`,
//!
//! through the SQL engine (planning + execution, in process, no network), and
//! reports p50/p99 (hdrhistogram) beside the baseline of the same lookup done
//! directly on a catalog snapshot (the limit: one map lookup).

use anyhow::Context;
use hdrhistogram::Histogram;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use treeai_connectors::generator::GeneratorConfig;
use treeai_connectors::pipeline::PipelineBuilder;
use treeai_connectors::SourceSpec;
use treeai_dataflows::event::Id;
use treeai_dataflows::runtime::RuntimeConfig;
use treeai_sql::{metrics::Metrics, Engine, SqlConfig};

fn arg(args: &[String], name: &str, default: u64) -> anyhow::Result<u64> {
    match args.iter().position(|a| a == name) {
        Some(i) => {
            args.get(i + 1).with_context(|| format!("{name} needs a value"))?.parse().with_context(|| name.to_string())
        }
        None => Ok(default),
    }
}

fn ms(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let trees = arg(&args, "--trees", 1_000_000)?;
    let rate = arg(&args, "--rate", 20_000)? as f64;
    let seconds = arg(&args, "--seconds", 10)?;
    println!("query-bench: {trees} trees, ingest at {} events/s, 2 workers", rate.max(trees as f64 / 5.0));

    // The registry arrives first at the generator's pace: fast enough to load it in ~5 s.
    let gen = GeneratorConfig {
        trees,
        rate: rate.max(trees as f64 / 5.0),
        start_ms: 1_795_564_800_000,
        ..Default::default()
    };
    let pipeline = PipelineBuilder::new(
        SourceSpec::Generator { config: gen, paced: true, count: None, speedup: 1.0 },
        RuntimeConfig { workers: 2, ..Default::default() },
    )
    .start()?;
    let (catalog, stats) = (pipeline.catalog().clone(), pipeline.stats().clone());
    let started = Instant::now();
    while catalog.snapshot().views.tree_scores.len() < trees as usize {
        anyhow::ensure!(started.elapsed() < Duration::from_secs(600), "views did not reach {trees} trees");
        std::thread::sleep(Duration::from_millis(200));
    }
    println!("loaded {trees} scored trees in {:.1}s", started.elapsed().as_secs_f64());

    let metrics = Arc::new(Metrics::new(stats.clone(), catalog.clone(), "generator"));
    let engine = Engine::new(catalog.clone(), SqlConfig::default(), metrics)?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let mut point = Histogram::<u64>::new(3)?;
    let mut region = Histogram::<u64>::new(3)?;
    let mut direct = Histogram::<u64>::new(3)?;
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let events_before = stats.events_read.load(Ordering::Relaxed);
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(seconds) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let id = format!("T-{:06}", x % trees);
        let q = Instant::now();
        let out =
            rt.block_on(engine.query(&format!("SELECT * FROM tree_scores WHERE tree_id = '{id}'"), None, "bench"))?;
        point.record(q.elapsed().as_micros() as u64)?;
        anyhow::ensure!(out.batches.iter().map(|b| b.num_rows()).sum::<usize>() == 1, "lookup of {id} found no row");
        let q = Instant::now();
        rt.block_on(engine.query("SELECT * FROM region_summary", None, "bench"))?;
        region.record(q.elapsed().as_micros() as u64)?;
        let q = Instant::now();
        let found = catalog.snapshot().views.tree_scores.get(&Id::from(id.as_str())).is_some();
        direct.record(q.elapsed().as_nanos().max(1) as u64)?;
        anyhow::ensure!(found);
    }
    let ingested = stats.events_read.load(Ordering::Relaxed) - events_before;
    println!("while ingesting {:.0} events/s:", ingested as f64 / t.elapsed().as_secs_f64());
    println!(
        "point lookup (SQL):   p50 {:.3} ms  p99 {:.3} ms  ({} queries)   baseline map lookup p50 {:.4} ms  ratio p50 {:.0}x",
        ms(&point, 0.5),
        ms(&point, 0.99),
        point.len(),
        direct.value_at_quantile(0.5) as f64 / 1e6,
        point.value_at_quantile(0.5) as f64 * 1000.0 / direct.value_at_quantile(0.5) as f64
    );
    println!(
        "region_summary (SQL): p50 {:.3} ms  p99 {:.3} ms  ({} queries)",
        ms(&region, 0.5),
        ms(&region, 0.99),
        region.len()
    );
    pipeline.stop();
    pipeline.join()?;
    Ok(())
}
