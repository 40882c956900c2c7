//! `POST /v1/events` with Kafka as the source: each posted line goes to its
//! input topic (by its `type`; a line without a known type to the trees
//! topic, where the pipeline rejects it into the dead letters with its
//! reason), keyed by its `tree_id`, from an idempotent producer with
//! `acks=all`; [`KafkaIngest::submit`] returns once every line of the batch
//! is acknowledged (or fails with the first delivery error, after
//! librdkafka's retries within `message.timeout.ms`, 30 s).
//!
//! `Idempotency-Key`s are remembered for 24 h in this process's memory only:
//! a retry after a restart of the pipeline is ingested again (the topics are
//! the durable record; the views are upserts, so a repeated tree or
//! assessment event changes nothing, a repeated reading is counted twice).

use super::{KafkaConfig, KafkaStats};
use rdkafka::client::ClientContext;
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One batch's deliveries still outstanding, and its first error.
#[derive(Default)]
struct Batch {
    left: AtomicUsize,
    error: Mutex<Option<String>>,
}

struct IngestContext {
    stats: Arc<KafkaStats>,
}

impl ClientContext for IngestContext {}

impl ProducerContext for IngestContext {
    type DeliveryOpaque = Arc<Batch>;
    fn delivery(&self, result: &DeliveryResult<'_>, batch: Arc<Batch>) {
        match result {
            Ok(_) => {
                self.stats.delivered.fetch_add(1, Ordering::Relaxed);
            }
            Err((e, _)) => {
                self.stats.delivery_errors.fetch_add(1, Ordering::Relaxed);
                batch.error.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert_with(|| e.to_string());
            }
        }
        batch.left.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The producer of posted events.
pub struct KafkaIngest {
    producer: BaseProducer<IngestContext>,
    topics: [String; 3],
    keys: Mutex<HashMap<String, (Instant, String)>>,
    /// One batch at a time (keys are checked and recorded in order).
    sending: Mutex<()>,
}

const KEY_TTL: Duration = Duration::from_secs(24 * 3600);

impl KafkaIngest {
    /// A producer for `config`'s input topics.
    pub fn new(config: &KafkaConfig, stats: Arc<KafkaStats>) -> Result<KafkaIngest, String> {
        let producer = config
            .client_config(&[
                ("client.id", "treeai-ingest"),
                ("acks", "all"),
                ("enable.idempotence", "true"),
                ("linger.ms", "5"),
                ("message.timeout.ms", "30000"),
            ])
            .create_with_context(IngestContext { stats })
            .map_err(|e| format!("kafka ingest producer: {e}"))?;
        let t = &config.topics;
        Ok(KafkaIngest {
            producer,
            topics: [t.trees.clone(), t.assessments.clone(), t.readings.clone()],
            keys: Mutex::new(HashMap::new()),
            sending: Mutex::new(()),
        })
    }

    /// The answer given earlier for `key`.
    pub fn replay(&self, key: &str) -> Option<String> {
        let keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        keys.get(key).filter(|(at, _)| at.elapsed() < KEY_TTL).map(|(_, a)| a.clone())
    }

    /// Sends `lines` and waits until all are acknowledged; with `key`, remembers `answer`
    /// (a key seen already sends nothing and gives the earlier answer).
    pub fn submit(&self, lines: &[&[u8]], key: Option<(&str, &str)>) -> Result<Option<String>, String> {
        let _one = self.sending.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(earlier) = key.and_then(|(k, _)| self.replay(k)) {
            return Ok(Some(earlier));
        }
        let batch = Arc::new(Batch { left: AtomicUsize::new(lines.len()), error: Mutex::new(None) });
        for line in lines {
            let head: Head = serde_json::from_slice(line).unwrap_or_default();
            let topic = match head.kind.as_deref() {
                Some("assessment") => &self.topics[1],
                Some("reading") => &self.topics[2],
                _ => &self.topics[0],
            };
            let mut record = BaseRecord::with_opaque_to(topic, batch.clone()).payload(*line);
            if let Some(id) = head.tree_id.as_deref() {
                record = record.key(id);
            }
            let deadline = Instant::now() + Duration::from_secs(30);
            let mut record = record;
            loop {
                match self.producer.send(record) {
                    Ok(()) => break,
                    Err((e, back)) => {
                        if Instant::now() > deadline {
                            let sent = lines.len() - batch.left.load(Ordering::Acquire);
                            return Err(format!("kafka: {e} ({sent} of {} lines sent)", lines.len()));
                        }
                        // The queue is full: serve deliveries, then try again.
                        self.producer.poll(Duration::from_millis(50));
                        record = back;
                    }
                }
            }
        }
        let deadline = Instant::now() + Duration::from_secs(40);
        while batch.left.load(Ordering::Acquire) > 0 {
            if Instant::now() > deadline {
                return Err("kafka: the brokers did not acknowledge the events within 40 s".into());
            }
            self.producer.poll(Duration::from_millis(20));
        }
        if let Some(e) = batch.error.lock().unwrap_or_else(|p| p.into_inner()).take() {
            return Err(format!("kafka: {e}"));
        }
        if let Some((k, answer)) = key {
            let mut keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
            keys.retain(|_, (at, _)| at.elapsed() < KEY_TTL);
            keys.insert(k.to_owned(), (Instant::now(), answer.to_owned()));
        }
        Ok(None)
    }
}

impl Drop for KafkaIngest {
    fn drop(&mut self) {
        let _ = self.producer.flush(Duration::from_secs(5));
    }
}

/// The fields that route a line.
#[derive(serde::Deserialize, Default)]
struct Head {
    #[serde(rename = "type")]
    kind: Option<String>,
    tree_id: Option<String>,
}
