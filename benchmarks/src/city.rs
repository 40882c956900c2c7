//! City-scale benchmark (issue 11): a million trees at the speed we have for ten thousand.
//!
//! ```text
//! cargo build --release -p treeai-benchmarks
//! target/release/city-bench [--events 10000000] [--trees 1000000] [--workers 1,2] [--compare-events 3000000]
//! ```
//!
//! Every measurement runs in a child process of its own (this binary again), so each
//! reports its own peak RSS (VmHWM) and no run warms or fragments the next one's heap.
//!
//! 1. Generates `--events` events over `--trees` trees (the built-in generator: the
//!    registry first, as a city's inventory, then ≈97 % readings, assessments with
//!    revisions, registry updates); the first `--compare-events` of them are the
//!    comparison input (3M events over 1M trees), and as many events over 10,000 trees
//!    are the small-city reference.
//! 2. Baseline: parse + validate the big file only, 2 threads.
//! 3. The pipeline (all six views to their final state, what `treeai backfill` computes
//!    without writing Parquet) over the big file with each of `--workers`: events/s,
//!    peak RSS, bytes of RSS per tree.
//! 4. The comparison input: the pipeline with 2 workers beside DuckDB computing the same
//!    six views in SQL (`benchmarks/duckdb/views.py`, when `python3 -c 'import duckdb'`
//!    works), and the same number of events over 10,000 trees (events/s at 1M trees
//!    against events/s at 10k).
//! 5. Update latency: rounds of 10,000 events (≈97 % readings) into the warm views of
//!    all `--trees` trees, 2 workers, p50/p99. When each slow round came, by hand:
//!    `city-bench --child update [--trees T] [--update-events N] --rounds-out F` writes every
//!    measured round to F (CSV: worker, ms since the child started, round µs).
//!
//! 6. Live (`--live-hours H`, default 3; 0 skips): `treeai run` (the release binary beside this
//!    one) with the generator at `--trees` trees and 10,000 events per second of event time,
//!    event time running `--speedup` (default 30) times the wall clock, no lake, no
//!    checkpoints: its RSS at each event-time hour, and — the same at 10,000 events/s of wall
//!    clock for a minute after the inventory is loaded — the freshness its
//!    `treeai_freshness_seconds` histogram reports (arrival → visible to SQL), p50/p99.
//!
//! To scale the workers elsewhere: `--workers 1,2,4,8,16`. Phase 6 alone:
//! `city-bench --child live [--trees T] [--live-hours H] [--speedup S]`.

#[path = "shared.rs"]
mod shared;

use anyhow::{bail, Context};
use hdrhistogram::Histogram;
use shared::{free_addr, peak_rss_mb, rss_mb, TimedSource};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use treeai_connectors::file::FileSource;
use treeai_connectors::generated::GeneratorSource;
use treeai_connectors::generator::{Generator, GeneratorConfig};
use treeai_connectors::pipeline::{run_bounded, PipelineBuilder, BATCH_ROUND};
use treeai_connectors::SourceSpec;
use treeai_dataflows::parse::parse_event;
use treeai_dataflows::runtime::RuntimeConfig;
use treeai_dataflows::source::{Poll, Source, SourceFactory};

fn opt(args: &[String], name: &str) -> Option<String> {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned()
}

fn arg(args: &[String], name: &str, default: &str) -> String {
    opt(args, name).unwrap_or_else(|| default.to_string())
}

fn num(args: &[String], name: &str, default: u64) -> anyhow::Result<u64> {
    arg(args, name, &default.to_string()).parse().with_context(|| format!("{name}: a number"))
}

/// The generator's configuration for `trees` trees (as `ingest-bench`).
fn generator(trees: u64) -> GeneratorConfig {
    GeneratorConfig { trees, bad_fraction: 0.001, ..Default::default() }
}

/// Writes `events` generator events over `trees` trees to `path`; also the first `prefix`
/// of them to `prefix_path`.
fn generate(path: &Path, trees: u64, events: u64, prefix: Option<(&Path, u64)>) -> anyhow::Result<()> {
    let mut out = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
    let mut head = match prefix {
        Some((p, n)) => Some((std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(p)?), n)),
        None => None,
    };
    for (i, e) in Generator::new(generator(trees), 0, 1).take(events as usize).enumerate() {
        out.write_all(&e.json)?;
        out.write_all(b"\n")?;
        if let Some((h, n)) = &mut head {
            if (i as u64) < *n {
                h.write_all(&e.json)?;
                h.write_all(b"\n")?;
            }
        }
    }
    out.flush()?;
    if let Some((mut h, _)) = head {
        h.flush()?;
    }
    Ok(())
}

/// One measurement in a child process: `(seconds, peak RSS MB, extra)` from its last line.
fn child(args: &[&str]) -> anyhow::Result<(f64, f64, String)> {
    let exe = std::env::current_exe()?;
    let out = Command::new(exe).arg("--child").args(args).output()?;
    if !out.status.success() {
        bail!("city-bench --child {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().last().context("no output")?;
    let mut parts = line.splitn(3, ' ');
    let secs = parts.next().context("seconds")?.parse()?;
    let rss = parts.next().context("rss")?.parse()?;
    Ok((secs, rss, parts.next().unwrap_or_default().to_string()))
}

/// The child's side: runs one measurement and prints `seconds rss_mb extra`.
fn run_child(args: &[String]) -> anyhow::Result<()> {
    let what = arg(args, "--child", "");
    let workers = num(args, "--workers", 2)? as usize;
    let input = PathBuf::from(arg(args, "--input", ""));
    match what.as_str() {
        // Phase 6 alone: `city-bench --child live [--trees T] [--live-hours H] [--speedup S]`.
        "live" => {
            let trees = num(args, "--trees", 1_000_000)?;
            live(trees, num(args, "--live-hours", 3)?.max(1), num(args, "--speedup", 30)?)?;
        }
        "parse" => {
            let t = Instant::now();
            let valid: u64 = std::thread::scope(|s| {
                let handles: Vec<_> = (0..workers)
                    .map(|w| {
                        let input = input.clone();
                        s.spawn(move || {
                            let mut src = FileSource::new(vec![input], w, workers).expect("open");
                            let mut valid = 0u64;
                            while src
                                .poll(16_384, &mut |m| valid += u64::from(parse_event(m.bytes, m.kind, m.pos).is_ok()))
                                != Poll::Done
                            {}
                            valid
                        })
                    })
                    .collect();
                handles.into_iter().map(|h| h.join().unwrap_or(0)).sum()
            });
            println!("{} {} {valid}", t.elapsed().as_secs_f64(), peak_rss_mb());
        }
        "pipeline" => {
            let config = RuntimeConfig { workers, batch: BATCH_ROUND, ..Default::default() };
            let t = Instant::now();
            let result = run_bounded(SourceSpec::Files(vec![input]), config)?;
            let secs = t.elapsed().as_secs_f64();
            println!("{secs} {} {:?}", peak_rss_mb(), result.views.sizes());
        }
        "update" => {
            let trees = num(args, "--trees", 1_000_000)?;
            let rounds = Arc::new(Mutex::new(Histogram::<u64>::new(3)?));
            let per_worker = 10_000 / workers;
            // The registry (trees / 10,000 rounds) and 20 rounds more warm the views up.
            let warmup = trees / 10_000 + 20;
            let count = trees + num(args, "--update-events", 2_000_000)?;
            // `--rounds-out F`: every measured round, `worker,ms since start,round µs` (CSV).
            let rounds_out = opt(args, "--rounds-out");
            let start = Instant::now();
            let series: Vec<shared::Series> = (0..workers).map(|_| Arc::default()).collect();
            let factory: SourceFactory = {
                let rounds = rounds.clone();
                let series = series.clone();
                let keep = rounds_out.is_some();
                Arc::new(move |w, peers| {
                    Ok(Box::new(TimedSource {
                        inner: GeneratorSource::new(generator(trees), w, peers, false, Some(count)),
                        rounds: rounds.clone(),
                        last: None,
                        warmup,
                        series: keep.then(|| (start, series[w % series.len()].clone())),
                    }) as Box<dyn Source>)
                })
            };
            let config = RuntimeConfig { workers, batch: per_worker, ..Default::default() };
            let t = Instant::now();
            PipelineBuilder::new(SourceSpec::Custom(factory), config).start()?.join()?;
            let h = rounds.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
            if let Some(path) = rounds_out {
                let mut out = std::io::BufWriter::new(std::fs::File::create(&path)?);
                writeln!(out, "worker,ms,us")?;
                for (w, s) in series.iter().enumerate() {
                    for (at, us) in s.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.iter() {
                        writeln!(out, "{w},{at},{us}")?;
                    }
                }
            }
            println!(
                "{} {} p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms over {} rounds",
                t.elapsed().as_secs_f64(),
                peak_rss_mb(),
                h.value_at_quantile(0.5) as f64 / 1000.0,
                h.value_at_quantile(0.99) as f64 / 1000.0,
                h.max() as f64 / 1000.0,
                h.len()
            );
        }
        "generate" => {
            // The input alone, for profiling a child by hand:
            // `city-bench --child generate --input F --trees T --events N`.
            let t = Instant::now();
            generate(&input, num(args, "--trees", 1_000_000)?, num(args, "--events", 3_000_000)?, None)?;
            println!("{} {}", t.elapsed().as_secs_f64(), peak_rss_mb());
        }
        other => bail!("unknown --child {other}"),
    }
    Ok(())
}

/// DuckDB over `input` (seconds, peak RSS MB), if python3 has duckdb.
fn duckdb(input: &Path) -> Option<(f64, f64)> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("duckdb/views.py");
    let have = Command::new("python3").args(["-c", "import duckdb"]).output().ok()?.status.success();
    if !have || !script.exists() {
        println!("  duckdb: not measured (pip install duckdb; {} needed)", script.display());
        return None;
    }
    let out = Command::new("python3")
        .arg(&script)
        .args(["--input", input.to_str()?, "--threads", "2", "--no-duplicate-check"])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    // `duckdb: N events, X.XX s, peak RSS M MB, rows: ...`
    let line = text.lines().find(|l| l.starts_with("duckdb:"))?;
    let secs = line.split(", ").find_map(|p| p.strip_suffix(" s")?.parse().ok())?;
    let rss = line.split(", ").find_map(|p| p.strip_prefix("peak RSS ")?.strip_suffix(" MB")?.parse().ok())?;
    println!("  {line}");
    Some((secs, rss))
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--child") {
        return run_child(&args);
    }
    let events = num(&args, "--events", 10_000_000)?;
    let trees = num(&args, "--trees", 1_000_000)?;
    let compare = num(&args, "--compare-events", 3_000_000)?.min(events);
    let workers: Vec<usize> = arg(&args, "--workers", "1,2")
        .split(',')
        .map(|w| w.trim().parse().context("--workers: numbers"))
        .collect::<anyhow::Result<_>>()?;
    println!(
        "city-bench: {events} events over {trees} trees; comparison {compare} events; workers {workers:?}; {} cores",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    let dir = tempfile::tempdir()?;
    let (big, head, small) =
        (dir.path().join("city.ndjson"), dir.path().join("compare.ndjson"), dir.path().join("small.ndjson"));
    let t = Instant::now();
    generate(&big, trees, events, Some((&head, compare)))?;
    generate(&small, 10_000, compare, None)?;
    println!("  generated {:.0} MB in {:.1} s", std::fs::metadata(&big)?.len() as f64 / 1e6, t.elapsed().as_secs_f64());
    let big_s = big.to_str().context("path")?;

    // 2. Parse-only baseline.
    let (secs, rss, _) = child(&["parse", "--input", big_s, "--workers", "2"])?;
    let parse_rate = events as f64 / secs;
    println!("  parse-only, 2 threads:      {parse_rate:>10.0} events/s  peak RSS {rss:.0} MB");

    // 3. The pipeline over the whole city, per worker count.
    for w in &workers {
        let (secs, rss, sizes) = child(&["pipeline", "--input", big_s, "--workers", &w.to_string()])?;
        println!(
            "  pipeline, {w} worker(s):      {:>10.0} events/s  ({:.2} of parse-only)  {secs:.1} s  peak RSS {rss:.0} MB \
             ({:.0} bytes per tree)  views {sizes}",
            events as f64 / secs,
            events as f64 / secs / parse_rate,
            rss * 1024.0 * 1024.0 / trees as f64
        );
    }

    // 4. The comparison: DuckDB, and the same events over 10,000 trees.
    let head_s = head.to_str().context("path")?;
    let (secs, rss, _) = child(&["pipeline", "--input", head_s, "--workers", "2"])?;
    let city_rate = compare as f64 / secs;
    println!(
        "  {compare} events, {trees} trees, 2 workers: {secs:.2} s, {city_rate:.0} events/s, peak RSS {rss:.0} MB"
    );
    if let Some((duck_secs, duck_rss)) = duckdb(&head) {
        println!(
            "  against DuckDB: {:.2}x its speed (target >= 3), {:.2}x its memory",
            duck_secs / secs,
            rss / duck_rss
        );
    }
    let (small_secs, small_rss, _) =
        child(&["pipeline", "--input", small.to_str().context("path")?, "--workers", "2"])?;
    let small_rate = compare as f64 / small_secs;
    println!(
        "  {compare} events, 10000 trees, 2 workers: {small_rate:.0} events/s, peak RSS {small_rss:.0} MB; \
         1M trees run at {:.2} of it (target >= 0.5)",
        city_rate / small_rate
    );

    // 5. Update latency into the warm city.
    let (_, rss, latency) = child(&["update", "--trees", &trees.to_string(), "--workers", "2"])?;
    println!("  10k-event rounds into {trees} warm trees: {latency} (target p99 < 10 ms); peak RSS {rss:.0} MB");

    // 6. Live.
    let hours = num(&args, "--live-hours", 3)?;
    let speedup = num(&args, "--speedup", 30)?;
    if hours > 0 {
        live(trees, hours, speedup)?;
    }
    Ok(())
}

/// A running `treeai run` (killed when dropped).
struct Run {
    child: std::process::Child,
    http: String,
}

impl Drop for Run {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `treeai run --trees T --rate R --speedup S`, no lake, no checkpoints.
fn start_run(trees: u64, rate: u64, speedup: u64) -> anyhow::Result<Run> {
    let exe = std::env::current_exe()?.with_file_name("treeai");
    if !exe.exists() {
        bail!("{} missing: cargo build --release -p treeai", exe.display());
    }
    let http = free_addr()?;
    let child = Command::new(&exe)
        .args(["run", "--workers", "2", "--no-lake", "--no-checkpoint", "--trees", &trees.to_string()])
        .args(["--rate", &rate.to_string(), "--speedup", &speedup.to_string()])
        .args(["--http-addr", &http, "--sql-addr", &free_addr()?])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    Ok(Run { child, http })
}

/// The `/metrics` text of `addr`.
fn metrics(addr: &str) -> Option<String> {
    shared::http(addr, "GET", "/metrics", "")
}

/// A sample of `name` (the first line naming it exactly, or with `{labels}` when given).
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// The freshness histogram: (upper bound s, cumulative count) per bucket, `+Inf` last.
fn freshness(text: &str) -> Vec<(f64, f64)> {
    text.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("treeai_freshness_seconds_bucket{le=\"")?;
            let (le, n) = rest.split_once("\"} ")?;
            let le = if le == "+Inf" { f64::INFINITY } else { le.parse().ok()? };
            Some((le, n.trim().parse().ok()?))
        })
        .collect()
}

/// The quantile `q` of the difference of two cumulative histograms (its bucket's upper bound).
fn quantile(before: &[(f64, f64)], after: &[(f64, f64)], q: f64) -> f64 {
    let diff: Vec<(f64, f64)> = after.iter().zip(before).map(|((le, a), (_, b))| (*le, a - b)).collect();
    let total = diff.last().map_or(0.0, |d| d.1);
    diff.iter().find(|(_, n)| *n >= q * total).map_or(f64::NAN, |(le, _)| *le)
}

/// Phase 6: RSS per event-time hour, and freshness at the real rate.
fn live(trees: u64, hours: u64, speedup: u64) -> anyhow::Result<()> {
    // `treeai run`'s generator starts its event time at the wall clock of its start.
    let start_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis() as f64;
    let run = start_run(trees, 10_000 * speedup, speedup)?;
    let started = Instant::now();
    let mut next = 1;
    while next <= hours {
        if started.elapsed().as_secs() > 3600 * hours / speedup * 4 + 600 {
            bail!("live: event-time hour {next} not reached in {:?}", started.elapsed());
        }
        let watermark = metrics(&run.http).and_then(|m| sample(&m, "treeai_watermark_ms"));
        if watermark.is_some_and(|w| w >= start_ms + next as f64 * 3_600_000.0) {
            println!(
                "  live, {trees} trees, 10k events per event-time second, x{speedup}: RSS {:.0} MB at event-time \
                 hour {next} ({:.0} s of wall clock)",
                rss_mb(run.child.id()),
                started.elapsed().as_secs_f64()
            );
            next += 1;
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    drop(run);

    // Freshness at the real rate: a minute after the inventory is in the views.
    let run = start_run(trees, 10_000, 1)?;
    let deadline = Instant::now() + std::time::Duration::from_secs(600);
    while metrics(&run.http).and_then(|m| sample(&m, "treeai_view_rows{view=\"trees\"}")).unwrap_or(0.0) < trees as f64
    {
        if Instant::now() > deadline {
            bail!("live: the inventory of {trees} trees not in the views within 600 s");
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    std::thread::sleep(std::time::Duration::from_secs(10));
    let before = freshness(&metrics(&run.http).context("metrics")?);
    std::thread::sleep(std::time::Duration::from_secs(60));
    let after = freshness(&metrics(&run.http).context("metrics")?);
    println!(
        "  freshness at 10,000 events/s, {trees} trees, over a minute: p50 <= {} s, p99 <= {} s (histogram bucket \
         bounds; target p99 < 0.1 s)",
        quantile(&before, &after, 0.5),
        quantile(&before, &after, 0.99)
    );
    Ok(())
}
