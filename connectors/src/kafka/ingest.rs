//! `POST /v1/events` with Kafka as the source: each posted line goes to its
//! input topic (by its `type`; a line without a known type to the trees
//! topic, where the pipeline rejects it into the dead letters with its
//! reason), keyed by its `tree_id`, from an idempotent producer with
//! `acks=all`; [`KafkaIngest::submit`] returns once every line of the batch
//! is acknowledged (or fails with the first delivery error, after
//! librdkafka's retries within `message.timeout.ms`, 30 s).
//!
//! `Idempotency-Key`s are remembered for 24 h: each with its answer is
//! appended and `fsync`ed to `kafka-ingest-keys.ndjson` in `--data-dir` once
//! its batch is acknowledged, before the answer, and read
//! back at start (expired ones dropped), so a retry after a restart is a
//! no-op too. (A crash between the acknowledgement and that write leaves the
//! key unknown: the retry is ingested again. Each process keeps its own keys,
//! as each pod has its own volume.)

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
    /// Key → (epoch ms, the answer given).
    keys: Mutex<HashMap<String, (i64, String)>>,
    /// Where keys are kept across restarts (`None`: memory only).
    keys_file: Option<std::path::PathBuf>,
    /// One batch at a time (keys are checked and recorded in order).
    sending: Mutex<()>,
}

const KEY_TTL: Duration = Duration::from_secs(24 * 3600);

/// One remembered key, a line of the keys file.
#[derive(serde::Serialize, serde::Deserialize)]
struct KeyLine {
    key: String,
    at_ms: i64,
    answer: String,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

fn live(at_ms: i64) -> bool {
    now_ms() - at_ms < KEY_TTL.as_millis() as i64
}

/// The keys of `path` still live; the file is rewritten with only those.
fn load_keys(path: &std::path::Path) -> Result<HashMap<String, (i64, String)>, String> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(HashMap::new()),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    // A torn last line (a crash mid-write) is skipped: its batch was not answered.
    let keys: HashMap<String, (i64, String)> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<KeyLine>(l).ok())
        .filter(|k| live(k.at_ms))
        .map(|k| (k.key, (k.at_ms, k.answer)))
        .collect();
    let kept: String = keys
        .iter()
        .filter_map(|(key, (at_ms, answer))| {
            serde_json::to_string(&KeyLine { key: key.clone(), at_ms: *at_ms, answer: answer.clone() }).ok()
        })
        .map(|l| l + "\n")
        .collect();
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, kept)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(keys)
}

/// Appends `line` to `path` and syncs it.
fn append_key(path: &std::path::Path, line: &KeyLine) -> Result<(), String> {
    use std::io::Write;
    let text = serde_json::to_string(line).map_err(|e| e.to_string())? + "\n";
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    file.write_all(text.as_bytes()).and_then(|()| file.sync_data()).map_err(|e| format!("{}: {e}", path.display()))
}

impl KafkaIngest {
    /// A producer for `config`'s input topics; idempotency keys kept in `keys_file` (read now).
    pub fn new(
        config: &KafkaConfig,
        stats: Arc<KafkaStats>,
        keys_file: Option<std::path::PathBuf>,
    ) -> Result<KafkaIngest, String> {
        let keys = match &keys_file {
            Some(path) => load_keys(path)?,
            None => HashMap::new(),
        };
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
            keys: Mutex::new(keys),
            keys_file,
            sending: Mutex::new(()),
        })
    }

    /// The answer given earlier for `key`.
    pub fn replay(&self, key: &str) -> Option<String> {
        let keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        keys.get(key).filter(|(at, _)| live(*at)).map(|(_, a)| a.clone())
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
            let at_ms = now_ms();
            if let Some(path) = &self.keys_file {
                // Durable before the answer; if it cannot be written, the events are in the
                // topics all the same: say so, the key is kept in memory.
                let line = KeyLine { key: k.to_owned(), at_ms, answer: answer.to_owned() };
                if let Err(e) = append_key(path, &line) {
                    tracing::warn!("ingest: idempotency key not kept across restarts: {e}");
                }
            }
            let mut keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
            keys.retain(|_, (at, _)| live(*at));
            keys.insert(k.to_owned(), (at_ms, answer.to_owned()));
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
