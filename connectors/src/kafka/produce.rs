//! `treeai produce --brokers`: the generator's events to the three input
//! topics, keyed by `tree_id`, held at a target rate in wall-clock time.

use super::{Context, KafkaConfig, KafkaStats};
use crate::generator::GeneratedEvent;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What a produce run did.
#[derive(Clone, Debug, Default)]
pub struct ProduceReport {
    /// Events handed to the producer.
    pub sent: u64,
    /// Events the brokers acknowledged.
    pub delivered: u64,
    /// Events that could not be delivered.
    pub failed: u64,
    /// Wall-clock seconds from the first send to the last acknowledgement.
    pub seconds: f64,
    /// Wall-clock seconds from the first send to the last.
    pub send_seconds: f64,
}

impl ProduceReport {
    /// Achieved rate: acknowledged events per second, up to the last acknowledgement.
    pub fn rate(&self) -> f64 {
        self.delivered as f64 / self.seconds.max(1e-9)
    }
    /// The rate events were sent at (what pacing holds).
    pub fn send_rate(&self) -> f64 {
        self.sent as f64 / self.send_seconds.max(1e-9)
    }
}

/// Sends `events` at `rate` events/s (`None`: as fast as the brokers take
/// them) until they run out or `stop` is set; calls `progress` about every second.
pub fn produce(
    config: &KafkaConfig,
    events: impl Iterator<Item = GeneratedEvent>,
    rate: Option<f64>,
    stop: &AtomicBool,
    mut progress: impl FnMut(&ProduceReport),
) -> Result<ProduceReport, String> {
    let stats = Arc::new(KafkaStats::default());
    let producer: BaseProducer<Context> = config
        .client_config(&[
            ("client.id", "treeai-produce"),
            ("linger.ms", "10"),
            ("batch.num.messages", "10000"),
            ("batch.size", "1000000"),
            ("queue.buffering.max.messages", "1000000"),
            ("queue.buffering.max.kbytes", "1048576"),
            ("enable.idempotence", "false"),
            ("reconnect.backoff.ms", "100"),
            ("reconnect.backoff.max.ms", "5000"),
        ])
        .create_with_context(Context::new(stats.clone()))
        .map_err(|e| format!("kafka producer: {e}"))?;
    let started = Instant::now();
    let mut report = ProduceReport::default();
    let mut last_progress = Instant::now();
    let mut send_seconds = None;
    let snapshot = |sent: u64, send_seconds: Option<f64>| {
        let seconds = started.elapsed().as_secs_f64();
        ProduceReport {
            sent,
            delivered: stats.delivered.load(Ordering::Relaxed),
            failed: stats.delivery_errors.load(Ordering::Relaxed),
            seconds,
            send_seconds: send_seconds.unwrap_or(seconds),
        }
    };
    for event in events {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        if let Some(rate) = rate {
            // Hold the rate: event n is due at n / rate seconds.
            let due = Duration::from_secs_f64(report.sent as f64 / rate);
            let elapsed = started.elapsed();
            if due > elapsed + Duration::from_millis(1) {
                producer.poll(Duration::ZERO);
                std::thread::sleep(due - elapsed);
            }
        }
        let topic = config.topics.of_kind(event.kind);
        let mut record = BaseRecord::to(topic).key(event.key.as_bytes()).payload(event.json.as_slice());
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    producer.poll(Duration::from_millis(10));
                }
                Err((e, _)) => {
                    stats.delivery_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!("cannot produce to {topic}: {e}");
                    break;
                }
            }
        }
        report.sent += 1;
        if report.sent.is_multiple_of(1024) {
            producer.poll(Duration::ZERO);
            if last_progress.elapsed() >= Duration::from_secs(1) {
                last_progress = Instant::now();
                progress(&snapshot(report.sent, send_seconds));
            }
        }
    }
    send_seconds = Some(started.elapsed().as_secs_f64());
    // Wait for every acknowledgement (librdkafka retries until message.timeout.ms).
    while producer.in_flight_count() > 0 && !stop.load(Ordering::Relaxed) {
        producer.poll(Duration::from_millis(100));
        if last_progress.elapsed() >= Duration::from_secs(1) {
            last_progress = Instant::now();
            progress(&snapshot(report.sent, send_seconds));
        }
    }
    let _ = producer.flush(Duration::from_secs(5));
    Ok(snapshot(report.sent, send_seconds))
}
