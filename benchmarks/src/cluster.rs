//! Cluster benchmark (issue 13): what a cluster of processes costs and how long a rescale
//! takes, reading Kafka (Tansu).
//!
//! ```text
//! scripts/kafka.sh start
//! cargo run --release -p treeai-benchmarks --bin cluster-bench -- --brokers 127.0.0.1:9092 \
//!     [--events 1000000] [--trees 10000] [--rescale-trees 1000000] [--partitions 8]
//! ```
//!
//! The "processes" of a cluster here are threads of this one OS process, each with its own
//! pipeline (catalog, Kafka consumers, checkpoint writer) and linked to the others over loopback
//! TCP by timely's networking — the code path of separate processes, minus separate address
//! spaces. All share this machine's cores.
//!
//! Phases:
//! 1. throughput: N generator events over T trees, produced once; then read into the views by
//!    1 process × 2 workers (the baseline: the same two workers without the network), 2 × 1,
//!    3 × 1 and 1 × 1, each until every process has read its share and every process's views
//!    reached the final watermark. Events/s, the ratio to the baseline, and the cost of the
//!    cross-process exchange per event (2 × 1 against 1 × 2: the same workers, one link).
//! 2. rescale downtime: R tree registrations (and a few readings) read by 1 × 2 with
//!    checkpoints, then stopped (final checkpoint) and restored as 2 × 1: the time from the
//!    stop request (the old cluster's last answer) to the new cluster's first answer (every
//!    process ready: restored and caught up), and the restored tree count.
//! 3. emergency scale-out: the same checkpoint restored from 1 × 1 onto 5 × 1 (500 %) of real
//!    OS processes — five `treeai run --processes 5` (the release binary beside this one) — from
//!    the trigger (the stop request) to every one of the 5 answering SQL over HTTP with the whole
//!    restored registry (`select count(*) from trees`).

#[path = "shared.rs"]
mod shared;

use anyhow::{bail, Context as _};
use shared::free_addr;
use std::os::unix::process::CommandExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use treeai_connectors::checkpoint::{CheckpointConfig, RestoreFrom};
use treeai_connectors::generator::{Generator, GeneratorConfig};
use treeai_connectors::kafka::{create_topics, produce::produce, KafkaConfig, KafkaStats, Topics};
use treeai_connectors::pipeline::{Pipeline, PipelineBuilder, KAFKA_ROUND};
use treeai_connectors::SourceSpec;
use treeai_dataflows::event::EventKind;
use treeai_dataflows::runtime::cluster::ClusterConfig;
use treeai_dataflows::runtime::RuntimeConfig;

fn arg(args: &[String], name: &str, default: &str) -> String {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned().unwrap_or_else(|| default.to_string())
}

fn topics(prefix: &str) -> Topics {
    Topics {
        trees: format!("{prefix}.trees"),
        assessments: format!("{prefix}.assessments"),
        readings: format!("{prefix}.readings"),
        alerts: format!("{prefix}.alerts"),
        deadletter: format!("{prefix}.deadletter"),
    }
}

/// Produces `events` generator events over `trees` trees to fresh topics; the topics and the
/// greatest reading time.
fn produce_topics(
    base: &KafkaConfig,
    prefix: &str,
    trees: u64,
    events: u64,
    partitions: i32,
) -> anyhow::Result<(KafkaConfig, i64)> {
    let mut config = base.clone();
    config.topics = topics(prefix);
    let t = &config.topics;
    create_topics(&config, &[&t.trees, &t.assessments, &t.readings], partitions).map_err(anyhow::Error::msg)?;
    let gen = GeneratorConfig { trees, rate: 100_000.0, ..GeneratorConfig::default() };
    let mut max_ts = i64::MIN;
    let stream = Generator::new(gen, 0, 1).take(events as usize).inspect(|e| {
        if e.kind == EventKind::Reading {
            max_ts = max_ts.max(e.ts_ms);
        }
    });
    let report = produce(&config, stream, None, &AtomicBool::new(false), |_| {}).map_err(anyhow::Error::msg)?;
    if report.delivered != events {
        bail!("only {} of {events} events delivered", report.delivered);
    }
    println!("  produced {events} events ({trees} trees) in {:.1} s", report.seconds);
    Ok((config, max_ts))
}

/// Starts a cluster of `processes` × `workers` (threads of this process) on `config`'s topics.
fn start(
    config: &KafkaConfig,
    processes: usize,
    workers: usize,
    checkpoints: Option<&CheckpointConfig>,
) -> anyhow::Result<Vec<Pipeline>> {
    let peers: Vec<String> = (0..processes).map(|_| free_addr()).collect::<anyhow::Result<_>>()?;
    let handles: Vec<_> = (0..processes)
        .map(|process| {
            let runtime = RuntimeConfig {
                workers,
                idle_timeout: Duration::from_millis(100),
                batch: KAFKA_ROUND,
                cluster: (processes > 1).then(|| ClusterConfig {
                    processes,
                    process,
                    peers: peers.clone(),
                    connect_timeout: Duration::from_secs(60),
                }),
                ..RuntimeConfig::default()
            };
            let spec = SourceSpec::Kafka { config: config.clone(), stats: Arc::new(KafkaStats::default()) };
            let checkpoints = checkpoints.cloned();
            std::thread::spawn(move || PipelineBuilder::new(spec, runtime).checkpoints(checkpoints).start())
        })
        .collect();
    handles.into_iter().map(|h| h.join().map_err(|_| anyhow::anyhow!("start panicked"))?.map_err(Into::into)).collect()
}

fn stop(cluster: Vec<Pipeline>) -> anyhow::Result<()> {
    for p in &cluster {
        p.stop();
    }
    let joins: Vec<_> = cluster.into_iter().map(|p| std::thread::spawn(move || p.join().map(|_| ()))).collect();
    for j in joins {
        j.join().map_err(|_| anyhow::anyhow!("join panicked"))??;
    }
    Ok(())
}

/// Events/s of one cluster shape reading all `events` into views at `max_ts` on every process.
fn throughput(config: &KafkaConfig, processes: usize, workers: usize, events: u64, max_ts: i64) -> anyhow::Result<f64> {
    let started = Instant::now();
    let cluster = start(config, processes, workers, None)?;
    let deadline = Instant::now() + Duration::from_secs(900);
    let settled = loop {
        let read: u64 = cluster.iter().map(|p| p.stats().events_read.load(Ordering::Relaxed)).sum();
        if read >= events && cluster.iter().all(|p| p.catalog().snapshot().watermark >= Some(max_ts)) {
            break started.elapsed();
        }
        if Instant::now() > deadline {
            stop(cluster)?;
            bail!("{processes} x {workers} did not settle: read {read} of {events}");
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    stop(cluster)?;
    Ok(events as f64 / settled.saturating_sub(Duration::from_millis(100)).as_secs_f64())
}

/// Waits until every process of `cluster` is ready (restored, caught up, views with a watermark).
fn wait_ready(cluster: &[Pipeline], secs: u64) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !cluster.iter().all(|p| p.is_ready()) {
        if Instant::now() > deadline {
            bail!("not ready within {secs} s");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}

/// Stops `old` (final checkpoint) and restores it as `processes` × `workers`: the seconds from
/// the stop request to every new process ready, the stop alone, and the new cluster.
fn rescale(
    old: Vec<Pipeline>,
    config: &KafkaConfig,
    checkpoints: &CheckpointConfig,
    processes: usize,
    workers: usize,
) -> anyhow::Result<(f64, f64, Vec<Pipeline>)> {
    let trigger = Instant::now();
    stop(old)?;
    let stopped = trigger.elapsed().as_secs_f64();
    let new = start(config, processes, workers, Some(checkpoints))?;
    wait_ready(&new, 600)?;
    Ok((trigger.elapsed().as_secs_f64(), stopped, new))
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let brokers = arg(&args, "--brokers", "127.0.0.1:9092");
    let events: u64 = arg(&args, "--events", "1000000").parse().context("--events")?;
    let trees: u64 = arg(&args, "--trees", "10000").parse().context("--trees")?;
    let rescale_trees: u64 = arg(&args, "--rescale-trees", "1000000").parse().context("--rescale-trees")?;
    let partitions: i32 = arg(&args, "--partitions", "8").parse().context("--partitions")?;
    let prefix = format!("cluster-bench-{}", std::process::id());
    let base = KafkaConfig::new(brokers.clone());
    println!(
        "cluster-bench: {events} events over {trees} trees, rescale at {rescale_trees} trees, {partitions} partitions, \
         broker {brokers}, {} cores",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );

    // 1. Throughput by cluster shape.
    let (config, max_ts) = produce_topics(&base, &format!("{prefix}-t"), trees, events, partitions)?;
    let mut baseline = None;
    for (processes, workers) in [(1, 2), (2, 1), (3, 1), (1, 1)] {
        let eps = throughput(&config, processes, workers, events, max_ts)?;
        let base_eps = *baseline.get_or_insert(eps);
        println!(
            "  {processes} x {workers}: {eps:>10.0} events/s  ({:.2} of 1 x 2){}",
            eps / base_eps,
            if (processes, workers) == (2, 1) {
                format!(", exchange cost {:.2} µs/event", (1.0 / eps - 1.0 / base_eps) * 1e6)
            } else {
                String::new()
            }
        );
    }

    // 2. Rescale downtime at city scale: 1 x 2 -> 2 x 1.
    let registrations = rescale_trees + rescale_trees / 2;
    let (config, _) = produce_topics(&base, &format!("{prefix}-r"), rescale_trees, registrations, partitions)?;
    let dir = tempfile::tempdir()?;
    let checkpoints = CheckpointConfig {
        url: dir.path().join("checkpoints").to_string_lossy().into_owned(),
        options: Vec::new(),
        interval: Duration::ZERO,
        kept: 2,
        restore: RestoreFrom::Newest,
    };
    let loaded = Instant::now();
    let old = start(&config, 1, 2, Some(&checkpoints))?;
    let count = |cluster: &[Pipeline]| cluster[0].catalog().snapshot().views.trees.len() as u64;
    let deadline = Instant::now() + Duration::from_secs(900);
    while count(&old) < rescale_trees || !old[0].is_ready() {
        if Instant::now() > deadline {
            bail!("1 x 2 did not register {rescale_trees} trees: {}", count(&old));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    println!("  1 x 2 read {registrations} events, {} trees, in {:.1} s", count(&old), loaded.elapsed().as_secs_f64());
    let (downtime, stopped, new) = rescale(old, &config, &checkpoints, 2, 1)?;
    let restored = count(&new);
    println!(
        "  rescale 1 x 2 -> 2 x 1 at {restored} trees: downtime {downtime:.2} s (stop with final checkpoint \
         {stopped:.2} s, start and restore {:.2} s)",
        downtime - stopped
    );
    if restored != count(&new[1..]) {
        bail!("process 1 serves {} trees, process 0 {restored}", count(&new[1..]));
    }

    // 3. Emergency scale-out: 1 x 1 -> 5 OS processes x 1.
    let (_, _, one) = rescale(new, &config, &checkpoints, 1, 1)?;
    let trigger = Instant::now();
    stop(one)?;
    let stopped = trigger.elapsed().as_secs_f64();
    let mut five = Processes::start(&config, &checkpoints.url, 5)?;
    let answered = five.wait_answer(restored, Duration::from_secs(600))?;
    println!(
        "  emergency scale-out 1 x 1 -> 5 OS processes x 1: {:.2} s from the trigger to all 5 answering SQL \
         with {restored} trees (stop {stopped:.2} s; first answers after {:.2?} s)",
        trigger.elapsed().as_secs_f64(),
        answered.iter().map(|d| d.as_secs_f64()).collect::<Vec<_>>()
    );
    five.stop()?;
    Ok(())
}

/// A cluster of `treeai run` OS processes on loopback (the release binary beside this one).
struct Processes {
    children: Vec<std::process::Child>,
    http: Vec<String>,
    started: Instant,
}

impl Processes {
    /// Starts `n` × 1 worker on `config`'s topics, restoring the newest checkpoint of `url`.
    fn start(config: &KafkaConfig, url: &str, n: usize) -> anyhow::Result<Processes> {
        let exe = std::env::current_exe()?.with_file_name("treeai");
        if !exe.exists() {
            bail!("{} missing: cargo build --release -p treeai", exe.display());
        }
        let peers: Vec<String> = (0..n).map(|_| free_addr()).collect::<anyhow::Result<_>>()?;
        let t = &config.topics;
        let started = Instant::now();
        let mut children = Vec::new();
        let mut http = Vec::new();
        for i in 0..n {
            let addr = free_addr()?;
            let child = std::process::Command::new(&exe)
                .args(["run", "--workers", "1", "--no-lake", "--checkpoint-url", url, "--idle-timeout-ms", "100"])
                .args(["--processes", &n.to_string(), "--process", &i.to_string(), "--peers", &peers.join(",")])
                .args(["--brokers", &config.brokers, "--trees-topic", &t.trees, "--assessments-topic", &t.assessments])
                .args(["--readings-topic", &t.readings, "--alerts-topic", &t.alerts])
                .args(["--deadletter-topic", &t.deadletter, "--http-addr", &addr, "--sql-addr", &free_addr()?])
                .stdout(std::process::Stdio::null())
                // A group of its own: a signal to the benchmark's group (a terminal's Ctrl-C, a
                // job control stop) does not stop the cluster behind the benchmark's back.
                .process_group(0)
                .stderr(std::fs::File::create(std::env::temp_dir().join(format!("cluster-bench-process-{i}.log")))?)
                .spawn()
                .with_context(|| format!("spawning {}", exe.display()))?;
            children.push(child);
            http.push(addr);
        }
        Ok(Processes { children, http, started })
    }

    /// Waits until every process answers `select count(*) from trees` with `trees`; the time
    /// each first did, from the start.
    fn wait_answer(&mut self, trees: u64, timeout: Duration) -> anyhow::Result<Vec<Duration>> {
        let mut answered = vec![None; self.http.len()];
        while answered.iter().any(Option::is_none) {
            if self.started.elapsed() > timeout {
                bail!("not every process answered within {timeout:?}: {answered:?}");
            }
            for (i, addr) in self.http.iter().enumerate() {
                if let Some(status) = self.children[i].try_wait()? {
                    bail!("process {i} exited: {status}\n{}", self.report());
                }
                if answered[i].is_none() && count_trees(addr) == Some(trees) {
                    answered[i] = Some(self.started.elapsed());
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(answered.into_iter().flatten().collect())
    }

    /// Every process's state and the end of its log (`$TMPDIR/cluster-bench-process-N.log`), for
    /// a failure's message.
    fn report(&mut self) -> String {
        let mut out = String::new();
        for (i, child) in self.children.iter_mut().enumerate() {
            let state = match child.try_wait() {
                Ok(Some(status)) => format!("exited: {status}"),
                Ok(None) => "running".to_string(),
                Err(e) => format!("unknown: {e}"),
            };
            let log = std::env::temp_dir().join(format!("cluster-bench-process-{i}.log"));
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(8).collect();
            out += &format!("--- process {i}: {state}; the end of {}:\n", log.display());
            for line in tail.iter().rev() {
                out += &format!("    {line}\n");
            }
        }
        out
    }

    /// SIGTERM to every process (a final checkpoint), then waits for them.
    fn stop(mut self) -> anyhow::Result<()> {
        for child in &self.children {
            std::process::Command::new("kill").args(["-TERM", &child.id().to_string()]).status()?;
        }
        for child in &mut self.children {
            child.wait()?;
        }
        Ok(())
    }
}

impl Drop for Processes {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `select count(*) from trees` over HTTP; `None` until the process answers.
fn count_trees(addr: &str) -> Option<u64> {
    let body = shared::http(addr, "POST", "/v1/sql", r#"{"sql":"select count(*) from trees"}"#)?;
    let json: serde_json::Value = serde_json::from_str(&body).ok()?;
    json["rows"][0][0].as_u64()
}
