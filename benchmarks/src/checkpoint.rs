//! Checkpoint benchmark (the durability issue): what checkpoints cost and how
//! fast a restart is back, beside the same run without checkpoints.
//!
//! ```text
//! cargo run --release -p treeai-benchmarks --bin checkpoint-bench -- \
//!     [--events 2000000] [--trees 100000] [--workers 2] [--interval-ms 1000] [--pairs 3] [--rss-minutes 0]
//! ```
//!
//! Phases (one process):
//! 1. generate an NDJSON file of N events over T trees whose event time spans
//!    ~67 minutes, so the final windows are full (one hour of readings);
//! 2. `--pairs` interleaved runs of the pipeline over the file without and with
//!    checkpoints every `--interval-ms` (to a local folder): events/s, the ratio,
//!    checkpoints taken, their mean duration and the newest one's size;
//! 3. recovery: a new pipeline restoring the last run's final checkpoint (every
//!    tree, every window) — time from start to restored and caught up (`/readyz`
//!    would answer 200), and to the end of the input; the views are compared with
//!    the uninterrupted run's;
//! 4. with `--rss-minutes M` (> 3): the embedded default (`treeai run`, the binary
//!    beside this one) with `--speedup 60`, resident memory after 1 and 3
//!    event-time hours (1 and 3 wall-clock minutes) and at M minutes.

#[path = "shared.rs"]
mod shared;
use anyhow::{bail, Context};
use shared::rss_mb;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use treeai_connectors::checkpoint::{CheckpointConfig, RestoreFrom};
use treeai_connectors::generator::{Generator, GeneratorConfig};
use treeai_connectors::pipeline::{PipelineBuilder, BATCH_ROUND};
use treeai_connectors::SourceSpec;
use treeai_dataflows::runtime::RuntimeConfig;

fn arg(args: &[String], name: &str, default: u64) -> anyhow::Result<u64> {
    match args.iter().position(|a| a == name) {
        Some(i) => {
            args.get(i + 1).with_context(|| format!("{name} needs a value"))?.parse().with_context(|| name.to_string())
        }
        None => Ok(default),
    }
}

/// A value of a metric line `name value` in Prometheus text.
fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

struct Run {
    secs: f64,
    views: usize,
    checkpoints: f64,
    mean_checkpoint_secs: f64,
    checkpoint_bytes: f64,
}

fn run(path: &Path, config: &RuntimeConfig, checkpoints: Option<CheckpointConfig>) -> anyhow::Result<Run> {
    let t = Instant::now();
    let pipeline = PipelineBuilder::new(SourceSpec::Files(vec![path.to_path_buf()]), config.clone())
        .checkpoints(checkpoints)
        .start()?;
    let stats = pipeline.stats().clone();
    let finished = pipeline.join()?;
    let secs = t.elapsed().as_secs_f64();
    let text = stats.components.texts();
    let count = metric(&text, "treeai_checkpoint_seconds_count").unwrap_or(0.0);
    let sum = metric(&text, "treeai_checkpoint_seconds_sum").unwrap_or(0.0);
    Ok(Run {
        secs,
        views: finished.views.sizes().iter().sum(),
        checkpoints: count,
        mean_checkpoint_secs: if count > 0.0 { sum / count } else { f64::NAN },
        checkpoint_bytes: metric(&text, "treeai_checkpoint_bytes").unwrap_or(f64::NAN),
    })
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let events = arg(&args, "--events", 2_000_000)?;
    let trees = arg(&args, "--trees", 100_000)?;
    let workers = arg(&args, "--workers", 2)? as usize;
    let interval = Duration::from_millis(arg(&args, "--interval-ms", 1000)?);
    let pairs = arg(&args, "--pairs", 3)?.max(1);
    let rss_minutes = arg(&args, "--rss-minutes", 0)?;
    if workers == 0 || events == 0 {
        bail!("--workers and --events must be positive");
    }
    println!("checkpoint-bench: {events} events, {trees} trees, {workers} workers, checkpoints every {interval:?}");

    // 1. The input: event time over ~67 minutes, so the windows at the end hold an hour.
    let dir = std::env::temp_dir().join(format!("treeai-checkpoint-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("events.ndjson");
    let gen_config =
        GeneratorConfig { trees, bad_fraction: 0.001, rate: events as f64 / 4_000.0, ..Default::default() };
    {
        let mut out = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(&path)?);
        for e in Generator::new(gen_config, 0, 1).take(events as usize) {
            out.write_all(&e.json)?;
            out.write_all(b"\n")?;
        }
        out.flush()?;
    }
    println!("input: {:.0} MB", std::fs::metadata(&path)?.len() as f64 / 1e6);

    // 2. Without and with checkpoints, interleaved.
    let config = RuntimeConfig { workers, batch: BATCH_ROUND, ..Default::default() };
    let store = |n: u64| CheckpointConfig {
        url: dir.join(format!("checkpoints-{n}")).display().to_string(),
        options: Vec::new(),
        interval,
        kept: 3,
        restore: RestoreFrom::Nothing,
    };
    let (mut ratios, mut last) = (Vec::new(), None);
    for pair in 0..pairs {
        let without = run(&path, &config, None)?;
        let with = run(&path, &config, Some(store(pair)))?;
        if with.views != without.views {
            bail!("the views differ with checkpoints: {} rows vs {}", with.views, without.views);
        }
        let ratio = without.secs / with.secs;
        println!(
            "pair {}: without {:.0} events/s, with {:.0} events/s (ratio {ratio:.3}); {} checkpoints, mean {:.3} s, newest {:.1} MB",
            pair + 1,
            events as f64 / without.secs,
            events as f64 / with.secs,
            with.checkpoints,
            with.mean_checkpoint_secs,
            with.checkpoint_bytes / 1e6,
        );
        ratios.push(ratio);
        last = Some((pair, with));
    }
    ratios.sort_by(f64::total_cmp);
    println!("throughput with / without checkpoints: median {:.3} over {pairs} pairs", ratios[ratios.len() / 2]);

    // 3. Recovery from the final checkpoint of the last run (every tree, full windows).
    let (pair, reference) = last.context("no run")?;
    let t = Instant::now();
    let restore = CheckpointConfig { restore: RestoreFrom::Newest, ..store(pair) };
    let pipeline = PipelineBuilder::new(SourceSpec::Files(vec![path.clone()]), config.clone())
        .checkpoints(Some(restore))
        .start()?;
    while !pipeline.is_ready() {
        std::thread::sleep(Duration::from_millis(2));
        if t.elapsed() > Duration::from_secs(600) {
            bail!("not ready after 10 minutes");
        }
    }
    let ready = t.elapsed().as_secs_f64();
    let restored = pipeline.join()?;
    let done = t.elapsed().as_secs_f64();
    let rows: usize = restored.views.sizes().iter().sum();
    if rows != reference.views {
        bail!("the restored views have {rows} rows, the uninterrupted run's {}", reference.views);
    }
    println!(
        "recovery: restored and caught up in {ready:.2} s, input re-checked and done in {done:.2} s \
         ({:.1} MB checkpoint; a full run takes {:.2} s)",
        reference.checkpoint_bytes / 1e6,
        reference.secs
    );

    // 4. Resident memory of the embedded default over event-time hours.
    if rss_minutes > 0 {
        rss(rss_minutes.max(3), &dir)?;
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

fn free_port() -> anyhow::Result<String> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.to_string())
}

fn rss(minutes: u64, dir: &Path) -> anyhow::Result<()> {
    let bin: PathBuf = std::env::current_exe()?.with_file_name("treeai");
    let mut child = std::process::Command::new(&bin)
        .args(["run", "--speedup", "60", "--no-lake", "--sql-addr", &free_port()?, "--http-addr", &free_port()?])
        .arg("--checkpoint-url")
        .arg(dir.join("rss-checkpoints"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .with_context(|| format!("starting {} (build it with --release)", bin.display()))?;
    let start = Instant::now();
    let mut samples = Vec::new();
    for m in [1, 3, minutes] {
        let at = Duration::from_secs(m * 60);
        if let Some(wait) = at.checked_sub(start.elapsed()) {
            std::thread::sleep(wait);
        }
        if let Some(status) = child.try_wait()? {
            bail!("treeai run exited early: {status}");
        }
        samples.push((m, rss_mb(child.id())));
    }
    let _ = child.kill();
    let _ = child.wait();
    for (m, mb) in &samples {
        println!("embedded default, --speedup 60: RSS after {m} event-time hour(s): {mb:.0} MB");
    }
    let (one, three) = (samples[0].1, samples[1].1);
    println!("RSS after 3 h / after 1 h: {:.3}", three / one);
    Ok(())
}
