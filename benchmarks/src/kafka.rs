//! Kafka benchmark: end-to-end events/s from Kafka into the six views, beside
//! the raw batched consume rate of the same topics (rdkafka doing nothing
//! else, same partitions per thread), measured in the same run; and the rate
//! `treeai produce` holds against the broker.
//!
//! ```text
//! scripts/kafka.sh start
//! cargo run --release -p treeai-benchmarks --bin kafka-bench -- --brokers 127.0.0.1:9092 \
//!     [--events 3000000] [--partitions 4] [--workers 2] [--trees 10000] [--paced-rate 100000] [--paced-secs 5]
//!     [--batch 131072] [--property KEY=VALUE]...
//! ```
//!
//! Phases:
//! 1. create fresh topics and produce N generator events as fast as the broker takes them;
//! 2. produce at `--paced-rate` for `--paced-secs` to other topics: the achieved rate;
//! 3. raw consume: W threads, each assigned the partitions worker w would read, poll
//!    every message (touching its payload) until all N are read;
//! 4. end to end: the pipeline with W workers on the same topics until the views have
//!    applied the final watermark (quiet-stream rule with a 100 ms idle timeout, subtracted).

use anyhow::{bail, Context as _};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use treeai_connectors::generator::{Generator, GeneratorConfig};
use treeai_connectors::kafka::source::owner;
use treeai_connectors::kafka::{create_topics, produce::produce, KafkaConfig, KafkaStats, Topics};
use treeai_connectors::pipeline::PipelineBuilder;
use treeai_connectors::SourceSpec;
use treeai_dataflows::event::EventKind;
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

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let brokers = arg(&args, "--brokers", "127.0.0.1:9092");
    let events: u64 = arg(&args, "--events", "3000000").parse().context("--events")?;
    let partitions: i32 = arg(&args, "--partitions", "4").parse().context("--partitions")?;
    let workers: usize = arg(&args, "--workers", "2").parse().context("--workers")?;
    let trees: u64 = arg(&args, "--trees", "10000").parse().context("--trees")?;
    let paced_rate: f64 = arg(&args, "--paced-rate", "100000").parse().context("--paced-rate")?;
    let paced_secs: f64 = arg(&args, "--paced-secs", "5").parse().context("--paced-secs")?;
    let prefix = format!("bench-{}-{}", std::process::id(), Instant::now().elapsed().as_nanos());
    let mut config = KafkaConfig::new(brokers.clone());
    config.topics = topics(&prefix);
    // librdkafka properties for the consumers of both phases: --property KEY=VALUE (repeatable).
    for (i, a) in args.iter().enumerate() {
        if a == "--property" {
            let kv = args.get(i + 1).context("--property needs KEY=VALUE")?;
            let (k, v) = kv.split_once('=').context("--property needs KEY=VALUE")?;
            config.properties.push((k.to_string(), v.to_string()));
        }
    }
    let t = &config.topics;
    create_topics(&config, &[&t.trees, &t.assessments, &t.readings], partitions).map_err(anyhow::Error::msg)?;
    println!("kafka-bench: {events} events, {trees} trees, {partitions} partitions per topic, {workers} workers, broker {brokers}");

    // 1. Produce N events, unpaced.
    let gen = GeneratorConfig { trees, rate: 100_000.0, ..GeneratorConfig::default() };
    let mut max_ts = i64::MIN;
    let stop = AtomicBool::new(false);
    let stream = Generator::new(gen.clone(), 0, 1).take(events as usize).inspect(|e| {
        if e.kind == EventKind::Reading {
            max_ts = max_ts.max(e.ts_ms);
        }
    });
    let report = produce(&config, stream, None, &stop, |_| {}).map_err(anyhow::Error::msg)?;
    if report.delivered != events {
        bail!("only {} of {events} events delivered", report.delivered);
    }
    println!("produce, unpaced:         {:>10.0} events/s ({events} in {:.2}s)", report.rate(), report.seconds);

    // 2. Produce at a held rate.
    let mut paced = config.clone();
    paced.topics = topics(&format!("{prefix}-paced"));
    let p = &paced.topics;
    create_topics(&paced, &[&p.trees, &p.assessments, &p.readings], partitions).map_err(anyhow::Error::msg)?;
    let n = (paced_rate * paced_secs) as usize;
    let r = produce(&paced, Generator::new(gen, 0, 1).take(n), Some(paced_rate), &stop, |_| {})
        .map_err(anyhow::Error::msg)?;
    println!(
        "produce, paced:           {:>10.0} events/s sent (target {paced_rate:.0}; {:.3} of target), \
         {:.0} acknowledged/s, {} delivery errors",
        r.send_rate(),
        r.send_rate() / paced_rate,
        r.rate(),
        r.failed
    );

    // 3. Raw consume: the limit.
    let raw = raw_consume(&config, workers, events)?;
    println!("raw consume (baseline):   {raw:>10.0} events/s");

    // 4. End to end into the views.
    let batch: usize = arg(&args, "--batch", "131072").parse().context("--batch")?;
    let e2e = pipeline(&config, workers, events, max_ts, batch)?;
    println!("end to end, into views:   {e2e:>10.0} events/s");
    println!("ratio end-to-end / raw:   {:>10.3}", e2e / raw);
    Ok(())
}

fn raw_consume(config: &KafkaConfig, workers: usize, events: u64) -> anyhow::Result<f64> {
    let read = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let threads: Vec<_> = (0..workers)
        .map(|w| {
            let (config, read) = (config.clone(), read.clone());
            std::thread::spawn(move || -> anyhow::Result<u64> {
                let mut client = ClientConfig::new();
                client
                    .set("bootstrap.servers", &config.brokers)
                    .set("group.id", "treeai-bench")
                    .set("enable.auto.commit", "false")
                    .set("queued.min.messages", "200000")
                    .set("fetch.wait.max.ms", "5");
                for (k, v) in &config.properties {
                    client.set(k, v);
                }
                let consumer: BaseConsumer = client.create()?;
                let mut tpl = TopicPartitionList::new();
                for (t, (topic, _)) in config.topics.inputs().iter().enumerate() {
                    let md = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
                    let count = md.topics().first().map_or(0, |m| m.partitions().len() as i32);
                    for p in (0..count).filter(|&p| owner(t, p, workers) == w) {
                        tpl.add_partition_offset(topic, p, Offset::Beginning)?;
                    }
                }
                consumer.assign(&tpl)?;
                let mut bytes = 0u64;
                let mut local = 0u64;
                while read.load(Ordering::Relaxed) < events {
                    match consumer.poll(Duration::from_millis(100)) {
                        Some(Ok(m)) => {
                            bytes += m.payload().map_or(0, |p| p.len() as u64);
                            local += 1;
                            if local.is_multiple_of(1024) {
                                read.fetch_add(1024, Ordering::Relaxed);
                            }
                        }
                        Some(Err(e)) => eprintln!("raw consume: {e}"),
                        None => {
                            read.fetch_add(local % 1024, Ordering::Relaxed);
                            local -= local % 1024;
                        }
                    }
                }
                Ok(bytes)
            })
        })
        .collect();
    for t in threads {
        t.join().map_err(|_| anyhow::anyhow!("raw consumer panicked"))??;
    }
    Ok(events as f64 / started.elapsed().as_secs_f64())
}

fn pipeline(config: &KafkaConfig, workers: usize, events: u64, max_ts: i64, batch: usize) -> anyhow::Result<f64> {
    let idle = Duration::from_millis(100);
    let runtime = RuntimeConfig { workers, idle_timeout: idle, batch, ..RuntimeConfig::default() };
    let spec = SourceSpec::Kafka { config: config.clone(), stats: Arc::new(KafkaStats::default()) };
    let started = Instant::now();
    let pipeline = PipelineBuilder::new(spec, runtime).start()?;
    let (catalog, stats) = (pipeline.catalog().clone(), pipeline.stats().clone());
    let deadline = Instant::now() + Duration::from_secs(600);
    let settled = loop {
        if stats.events_read.load(Ordering::Relaxed) >= events && catalog.snapshot().watermark >= Some(max_ts) {
            break started.elapsed();
        }
        if Instant::now() > deadline || pipeline.finished_flag().load(Ordering::SeqCst) {
            pipeline.stop();
            bail!("pipeline did not settle: read {}", stats.events_read.load(Ordering::Relaxed));
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    pipeline.stop();
    pipeline.join()?;
    let sizes = catalog.snapshot().views.sizes();
    println!("views: {sizes:?}, read {}", stats.events_read.load(Ordering::Relaxed));
    Ok(events as f64 / (settled.saturating_sub(idle)).as_secs_f64())
}
