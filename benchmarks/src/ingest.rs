//! Ingest benchmark: events/s through parse → all six views, beside a
//! parse-only baseline of the same file measured in the same run.
//!
//! ```text
//! cargo run --release -p treeai-benchmarks --bin ingest-bench -- [--events N] [--trees N] [--workers N]
//! ```
//!
//! Phases (one process, one run):
//! 1. generate an NDJSON file of N events over T trees (the built-in generator);
//! 2. baseline: read + parse + validate the file with W threads, nothing else;
//! 3. the pipeline over the file with W workers (all six views, final state),
//!    interleaved `--pairs` times (default 3) with the same run landing the lake
//!    on local disk (the lake's cost: median of the pairs), beside a plain
//!    `ArrowWriter` of the same readings;
//! 4. the pipeline over the generator directly (no file);
//! 5. update latency: rounds of 10,000 readings into warm views, p50/p99.
//!
//! Prints events/s, the ratio pipeline / parse-only, and peak memory (VmHWM).

#[path = "shared.rs"]
mod shared;

use anyhow::{bail, Context};
use hdrhistogram::Histogram;
use shared::{peak_rss_mb, TimedSource};
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use treeai_connectors::file::FileSource;
use treeai_connectors::generated::GeneratorSource;
use treeai_connectors::generator::{Generator, GeneratorConfig};
use treeai_connectors::pipeline::{run_bounded, PipelineBuilder};
use treeai_connectors::SourceSpec;
use treeai_dataflows::parse::parse_event;
use treeai_dataflows::runtime::RuntimeConfig;
use treeai_dataflows::source::{Poll, Source, SourceFactory};

fn arg(args: &[String], name: &str, default: u64) -> anyhow::Result<u64> {
    match args.iter().position(|a| a == name) {
        Some(i) => {
            args.get(i + 1).with_context(|| format!("{name} needs a value"))?.parse().with_context(|| name.to_string())
        }
        None => Ok(default),
    }
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let events = arg(&args, "--events", 1_000_000)?;
    let trees = arg(&args, "--trees", 10_000)?;
    let workers = arg(&args, "--workers", 2)? as usize;
    if workers == 0 || events == 0 {
        bail!("--workers and --events must be positive");
    }
    let gen_config = GeneratorConfig { trees, bad_fraction: 0.001, ..Default::default() };
    println!("ingest-bench: {events} events, {trees} trees, {workers} workers");

    // 1. The input file.
    let dir = tempfile_dir()?;
    let path = dir.join("events.ndjson");
    let t = Instant::now();
    {
        let mut out = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(&path)?);
        for e in Generator::new(gen_config.clone(), 0, 1).take(events as usize) {
            out.write_all(&e.json)?;
            out.write_all(b"\n")?;
        }
        out.flush()?;
    }
    let bytes = std::fs::metadata(&path)?.len();
    println!("generated {:.1} MB in {:.2}s", bytes as f64 / 1e6, t.elapsed().as_secs_f64());

    // 2. Baseline: parse + validate only, same threads, same file split.
    let t = Instant::now();
    let parsed: u64 = std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers)
            .map(|w| {
                let path = path.clone();
                s.spawn(move || {
                    let mut src = FileSource::new(vec![path], w, workers).expect("open");
                    let mut valid = 0u64;
                    while src.poll(16_384, &mut |m| valid += u64::from(parse_event(m.bytes, m.kind, m.pos).is_ok()))
                        != Poll::Done
                    {}
                    valid
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or(0)).sum()
    });
    let parse_secs = t.elapsed().as_secs_f64();
    let parse_rate = events as f64 / parse_secs;
    println!("parse-only:          {:>12.0} events/s ({parsed} valid)   peak RSS {:.0} MB", parse_rate, peak_rss_mb());

    let batch = arg(&args, "--batch", treeai_connectors::pipeline::BATCH_ROUND as u64)? as usize;
    let config = RuntimeConfig { workers, batch, ..Default::default() };
    // 3. The pipeline from the file, and 3b. the same with the lake on local disk: `--pairs` runs
    //    of each, interleaved (without, with, without, …) so that a noisy moment hits both; the
    //    lake's cost is the median of the pairs' ratios.
    let pairs = arg(&args, "--pairs", 3)?.max(1);
    let (mut file_secs_all, mut lake_secs_all, mut adds) = (Vec::new(), Vec::new(), Vec::new());
    let mut lake_bytes = 0;
    for pair in 0..pairs {
        let t = Instant::now();
        let result = run_bounded(SourceSpec::Files(vec![path.clone()]), config.clone())?;
        let file_secs = t.elapsed().as_secs_f64();
        let sizes = result.views.sizes();
        drop(result);
        if pair == 0 {
            println!(
                "pipeline (file):     {:>12.0} events/s   ratio to parse-only {:.2}   peak RSS {:.0} MB   views {:?}",
                events as f64 / file_secs,
                events as f64 / file_secs / parse_rate,
                peak_rss_mb(),
                sizes
            );
        }
        let lake_dir = dir.join(format!("lake-{pair}"));
        let lake =
            treeai_connectors::lake::LakeConfig { url: lake_dir.to_string_lossy().into_owned(), ..Default::default() };
        let t = Instant::now();
        let result = treeai_connectors::pipeline::run_bounded_to_lake(
            SourceSpec::Files(vec![path.clone()]),
            config.clone(),
            Some(lake),
        )?;
        let lake_secs = t.elapsed().as_secs_f64();
        drop(result);
        lake_bytes = walk(&lake_dir).iter().map(|p| std::fs::metadata(p).map_or(0, |m| m.len())).sum::<u64>();
        let _ = std::fs::remove_dir_all(&lake_dir);
        println!(
            "pair {pair}: without lake {:>10.0} events/s, with lake {:>10.0} events/s: lake adds {:.0}%",
            events as f64 / file_secs,
            events as f64 / lake_secs,
            (lake_secs / file_secs - 1.0) * 100.0
        );
        adds.push(lake_secs / file_secs - 1.0);
        file_secs_all.push(file_secs);
        lake_secs_all.push(lake_secs);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (file_secs, lake_secs) = (median(&mut file_secs_all), median(&mut lake_secs_all));
    println!(
        "pipeline + lake:     {:>12.0} events/s   lake adds {:.0}% to ingest time (median of {pairs} pairs)   {:.1} MB of Parquet   peak RSS {:.0} MB",
        events as f64 / lake_secs,
        median(&mut adds) * 100.0,
        lake_bytes as f64 / 1e6,
        peak_rss_mb()
    );
    // Baseline: the same readings through one plain ArrowWriter to local disk, zstd.
    let (plain_secs, plain_bytes, plain_rows) = plain_arrow_writer(&path, &dir.join("plain.parquet"))?;
    let lake_rows = events as f64; // every event lands once (events, dead letters), plus score changes
    println!(
        "parquet landing:     lake {:.0} rows/s in pipeline vs plain ArrowWriter {:.0} rows/s ({:.1} MB) alone",
        lake_rows / (lake_secs - file_secs).max(1e-3),
        plain_rows as f64 / plain_secs,
        plain_bytes as f64 / 1e6
    );

    // 4. The pipeline from the generator.
    let t = Instant::now();
    let result = run_bounded(
        SourceSpec::Generator { config: gen_config.clone(), paced: false, count: Some(events), speedup: 1.0 },
        config.clone(),
    )?;
    let gen_rate = events as f64 / t.elapsed().as_secs_f64();
    drop(result);
    println!("pipeline (generator):{:>12.0} events/s   peak RSS {:.0} MB", gen_rate, peak_rss_mb());

    // 5. Update latency: rounds of 10,000 events (readings, ~97%) per worker into warm views.
    let rounds = Arc::new(Mutex::new(Histogram::<u64>::new(3)?));
    let per_worker = 10_000 / workers;
    let factory: SourceFactory = {
        let (rounds, gen_config) = (rounds.clone(), gen_config.clone());
        Arc::new(move |w, peers| {
            Ok(Box::new(TimedSource {
                inner: GeneratorSource::new(gen_config.clone(), w, peers, false, Some(events.min(2_000_000))),
                rounds: rounds.clone(),
                last: None,
                warmup: 20,
                series: None,
            }) as Box<dyn Source>)
        })
    };
    PipelineBuilder::new(SourceSpec::Custom(factory), RuntimeConfig { batch: per_worker, ..config }).start()?.join()?;
    let h = rounds.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
    println!(
        "10k-event update rounds: p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms  ({} rounds)",
        h.value_at_quantile(0.5) as f64 / 1000.0,
        h.value_at_quantile(0.99) as f64 / 1000.0,
        h.max() as f64 / 1000.0,
        h.len()
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

fn walk(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = entry.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// Parses the file's readings into one record batch per 64k rows and writes them with a
/// plain `ArrowWriter` (zstd) to local disk: the limit for landing Parquet. Times only the writing.
fn plain_arrow_writer(input: &std::path::Path, out: &std::path::Path) -> anyhow::Result<(f64, u64, usize)> {
    use arrow::array::{Float64Array, StringArray, TimestampMillisecondArray};
    use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
    use arrow::record_batch::RecordBatch;
    use treeai_dataflows::event::Event;
    let schema = Arc::new(Schema::new(vec![
        Field::new("tree_id", DataType::Utf8, false),
        Field::new("sensor_id", DataType::Utf8, false),
        Field::new("metric", DataType::Utf8, false),
        Field::new("value", DataType::Float64, false),
        Field::new("ts", DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())), false),
    ]));
    let mut readings = Vec::new();
    let mut src = FileSource::new(vec![input.to_path_buf()], 0, 1)?;
    while src.poll(65_536, &mut |m| {
        if let Ok(Event::Reading(r)) = parse_event(m.bytes, m.kind, m.pos) {
            readings.push(r);
        }
    }) != Poll::Done
    {}
    let batches: Vec<RecordBatch> = readings
        .chunks(65_536)
        .map(|c| {
            RecordBatch::try_new(
                schema.clone(),
                vec![
                    Arc::new(StringArray::from_iter_values(c.iter().map(|r| r.tree_id.as_str()))),
                    Arc::new(StringArray::from_iter_values(c.iter().map(|r| r.sensor_id.as_str()))),
                    Arc::new(StringArray::from_iter_values(c.iter().map(|r| r.metric.as_str()))),
                    Arc::new(Float64Array::from_iter_values(c.iter().map(|r| r.value.0))),
                    Arc::new(TimestampMillisecondArray::from_iter_values(c.iter().map(|r| r.ts)).with_timezone("UTC")),
                ],
            )
        })
        .collect::<Result<_, _>>()?;
    let t = Instant::now();
    let props = parquet::file::properties::WriterProperties::builder()
        .set_compression(parquet::basic::Compression::ZSTD(parquet::basic::ZstdLevel::default()))
        .build();
    let mut writer = parquet::arrow::ArrowWriter::try_new(std::fs::File::create(out)?, schema, Some(props))?;
    for b in &batches {
        writer.write(b)?;
    }
    writer.close()?;
    Ok((t.elapsed().as_secs_f64(), std::fs::metadata(out)?.len(), readings.len()))
}

fn tempfile_dir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("treeai-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
