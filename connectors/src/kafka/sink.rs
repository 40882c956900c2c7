//! The Kafka sinks: alerts to `treeai.alerts` (JSON keyed by `tree_id`) and
//! rejected input to `treeai.deadletter` (the raw payload under its original
//! key, with headers naming its source and the reason).
//!
//! One producer per process, shared by the workers' sinks. A full producer
//! queue makes the worker wait (backpressure), it never drops a message;
//! librdkafka retries deliveries, and failures after its retries are counted
//! in [`KafkaStats::delivery_errors`](super::KafkaStats).

use super::{Context, KafkaClientError, KafkaConfig, KafkaStats};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use treeai_dataflows::source::{Alert, DeadLetter, Sink, SinkFactory, SourceRef};
use treeai_dataflows::time::format_ts;

/// Dead-letter headers (all UTF-8 strings).
pub mod headers {
    /// Where the message came from: `topic/partition` or a file path.
    pub const SOURCE: &str = "treeai.source";
    /// The source topic, when the source is Kafka.
    pub const TOPIC: &str = "treeai.source.topic";
    /// The source partition, when the source is Kafka.
    pub const PARTITION: &str = "treeai.source.partition";
    /// The Kafka offset (or the line number of a file).
    pub const OFFSET: &str = "treeai.source.offset";
    /// Why it was rejected: names the field and the rule (DOMAIN §2.4).
    pub const REASON: &str = "treeai.reason";
    /// The `field:rule` label of the reason.
    pub const RULE: &str = "treeai.rule";
    /// Arrival time, RFC 3339.
    pub const ARRIVAL: &str = "treeai.arrival";
}

/// The shared producer of the alert and dead-letter topics.
#[derive(Clone)]
pub struct KafkaOutput {
    producer: ThreadedProducer<Context>,
    alerts: Arc<str>,
    deadletter: Arc<str>,
}

impl KafkaOutput {
    /// Creates the producer (it connects in the background).
    pub fn new(config: &KafkaConfig, stats: Arc<KafkaStats>) -> Result<Self, KafkaClientError> {
        let producer = config
            .client_config(&[
                ("client.id", "treeai-sink"),
                ("linger.ms", "20"),
                ("enable.idempotence", "false"),
                ("message.timeout.ms", "300000"),
                ("reconnect.backoff.ms", "100"),
                ("reconnect.backoff.max.ms", "5000"),
            ])
            .create_with_context(Context::new(stats))
            .map_err(|source| KafkaClientError::Config { client: "producer", source })?;
        Ok(KafkaOutput {
            producer,
            alerts: config.topics.alerts.as_str().into(),
            deadletter: config.topics.deadletter.as_str().into(),
        })
    }

    /// A sink per worker and one for the egress, all sharing this producer.
    pub fn sink_factory(&self) -> SinkFactory {
        let output = self.clone();
        Arc::new(move |_role| Box::new(KafkaSink(output.clone())) as Box<dyn Sink>)
    }

    /// Sends one record, waiting while the producer queue is full.
    fn send(&self, mut record: BaseRecord<'_, [u8], [u8]>) {
        loop {
            match self.producer.send(record) {
                Ok(()) => return,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err((e, r)) => {
                    // Not retryable (e.g. larger than message.max.bytes): count it and go on.
                    self.producer.context().stats.delivery_errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    self.producer.context().record_error(&format!("cannot produce to {}: {e}", r.topic));
                    return;
                }
            }
        }
    }

    /// Waits up to `timeout` for everything sent to be delivered.
    pub fn flush(&self, timeout: Duration) {
        if let Err(e) = self.producer.flush(timeout) {
            tracing::warn!("kafka: flushing alerts and dead letters: {e}");
        }
    }
}

/// An alert as the JSON value written to `treeai.alerts`.
pub fn alert_json(alert: &Alert) -> serde_json::Value {
    json!({
        "kind": alert.kind.as_str(),
        "tree_id": alert.tree_id,
        "region": alert.region.map(|r| r.as_str()),
        "score": alert.score,
        "band": alert.band_str(),
        "previous_band": alert.previous_band.map(|b| b.as_str()),
        "watermark": alert.watermark.map(format_ts),
        "top_penalty": alert.top_penalty,
    })
}

/// One worker's handle on the [`KafkaOutput`].
struct KafkaSink(KafkaOutput);

impl Sink for KafkaSink {
    fn dead_letter(&mut self, letter: DeadLetter) {
        let offset = letter.pos.offset.to_string();
        let arrival = format_ts(letter.arrival_ms);
        let source = letter.source.to_string();
        let mut h = OwnedHeaders::new()
            .insert(Header { key: headers::SOURCE, value: Some(source.as_str()) })
            .insert(Header { key: headers::OFFSET, value: Some(offset.as_str()) })
            .insert(Header { key: headers::REASON, value: Some(letter.reason.as_str()) })
            .insert(Header { key: headers::RULE, value: Some(letter.label.as_str()) })
            .insert(Header { key: headers::ARRIVAL, value: Some(arrival.as_str()) });
        if let SourceRef::Kafka { topic, partition, .. } = &letter.source {
            let partition = partition.to_string();
            h = h
                .insert(Header { key: headers::TOPIC, value: Some(&**topic) })
                .insert(Header { key: headers::PARTITION, value: Some(partition.as_str()) });
        }
        let topic = self.0.deadletter.clone();
        let mut record = BaseRecord::to(&topic).payload(letter.raw.as_slice()).headers(h);
        if let Some(key) = letter.key.as_deref() {
            record = record.key(key);
        }
        self.0.send(record);
    }

    fn alert(&mut self, alert: Alert) {
        let value = alert_json(&alert).to_string();
        let topic = self.0.alerts.clone();
        self.0.send(BaseRecord::to(&topic).key(alert.tree_id.as_bytes()).payload(value.as_bytes()));
    }

    /// Everything sent before the cut is delivered before the checkpoint is taken.
    fn checkpoint(&mut self, _number: u64) {
        self.0.flush(Duration::from_secs(30));
    }

    fn close(&mut self) {
        self.0.flush(Duration::from_secs(30));
    }
}
