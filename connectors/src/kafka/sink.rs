//! The Kafka sinks: alerts to `treeai.alerts` (JSON keyed by `tree_id`) and
//! rejected input to `treeai.deadletter` (the raw payload under its original
//! key, with headers naming its source and the reason).
//!
//! One producer per process, shared by the workers' sinks. A full producer
//! queue makes the worker wait (backpressure), it never drops a message;
//! librdkafka retries deliveries, and failures after its retries are counted
//! in [`KafkaStats::delivery_errors`](super::KafkaStats).
//!
//! Exactly once across a crash (without Kafka transactions, which our test
//! broker lacks): every alert carries a deterministic id (header
//! `treeai.alert_id` = `tree_id/seq`, the tree's n-th alert) and every dead
//! letter its source position. At a checkpoint the sinks wait for their
//! deliveries and record the topics' end offsets; a restored run first reads
//! both topics from those offsets to their end and does not send again what
//! it finds there ([`KafkaOutput::suppress_written`]).
//!
//! Alerts are derived per completed dataflow time, and a restored run reads its
//! input in other rounds than the crashed one: a tree that the crashed run saw
//! turn critical and back may, replayed, never look critical at all. So the ids
//! found are also the topic's state: per tree, the greatest alert number in it.
//! Once the restored run has caught up, a tree whose number in the topic ran
//! ahead of this run's gets its numbering moved past it, and, where the topic
//! says critical but the tree is not (or the other way round), one alert that
//! brings the topic to the tree's band ([`KafkaOutput::reconcile_with`]). The
//! topic's alerts then alternate, never repeat an id and end with each tree's
//! band. The moves are recorded in the checkpoints beside the topic offsets
//! (keys `treeai.alert_seq_shift/<tree_id>`).

use super::{Context, KafkaClientError, KafkaConfig, KafkaStats};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::json;
use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use treeai_dataflows::alerts::AlertKind;
use treeai_dataflows::rating::Band;
use treeai_dataflows::runtime::Stats;
use treeai_dataflows::source::{Alert, DeadLetter, Sink, SinkFactory, SinkRole, SourceRef};
use treeai_dataflows::store::Catalog;
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
    /// An alert's id: `tree_id/seq` (alerts only).
    pub const ALERT_ID: &str = "treeai.alert_id";
}

/// The shared producer of the alert and dead-letter topics.
#[derive(Clone)]
pub struct KafkaOutput {
    producer: ThreadedProducer<Context>,
    alerts: Arc<str>,
    deadletter: Arc<str>,
    /// Ids of alerts and dead letters already in the topics (written after the restored
    /// checkpoint by the run that crashed): not sent again.
    written: Arc<Mutex<HashSet<String>>>,
    /// The offsets read from at the restore: while ids found there are not all derived again,
    /// checkpoints record these (not the topics' ends), so a crash before then reads them again.
    floor: Arc<Mutex<BTreeMap<String, i64>>>,
    /// The topics' end offsets at start ([`KafkaOutput::end_offsets`]).
    started: Arc<Mutex<BTreeMap<String, i64>>>,
    /// Per tree, how far the alert numbers in the topic run ahead of the derived ones.
    shift: Arc<Mutex<BTreeMap<String, u32>>>,
    /// Set at a restore: the topic's state to reconcile with once caught up.
    reconcile: Arc<Mutex<Option<Reconcile>>>,
    config: KafkaConfig,
}

/// Prefix of the checkpoint entries holding [`KafkaOutput`]'s `shift`.
const SHIFT_KEY: &str = "treeai.alert_seq_shift/";

/// What a restored run reconciles the alert topic with (see the module documentation).
struct Reconcile {
    /// Per tree, the greatest alert number found in the topic after the checkpoint.
    published: BTreeMap<String, u32>,
    /// Per tree, the newest alert number this run derived (the checkpoint's, then its own).
    derived: BTreeMap<String, u32>,
    /// Caught up: restored and ready.
    stats: Option<Arc<Stats>>,
    catalog: Option<Arc<Catalog>>,
    /// Caught up at the previous checkpoint: this one's cut was taken after that.
    armed: bool,
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
            written: Arc::default(),
            floor: Arc::default(),
            started: Arc::default(),
            shift: Arc::default(),
            reconcile: Arc::default(),
            config: config.clone(),
        })
    }

    /// Reads the alert and dead-letter topics from `offsets` (`topic/partition` → offset, as
    /// recorded by a checkpoint) to their current end and remembers the ids found, so that
    /// the restored run does not send them again. Returns how many it found.
    /// `alerts`: this process derives the alerts (process 0 of a cluster); other processes
    /// never send an alert, so they only look for dead letters.
    pub fn suppress_written(&self, offsets: &BTreeMap<String, i64>, alerts: bool) -> Result<usize, KafkaClientError> {
        *self.shift.lock().unwrap_or_else(|p| p.into_inner()) = offsets
            .iter()
            .filter_map(|(k, v)| Some((k.strip_prefix(SHIFT_KEY)?.to_string(), u32::try_from(*v).ok()?)))
            .collect();
        let timeout = Duration::from_secs(30);
        let consumer: BaseConsumer<Context> = self
            .config
            .client_config(&[
                ("group.id", "treeai-restore"),
                ("enable.auto.commit", "false"),
                ("client.id", "treeai-restore"),
            ])
            .create_with_context(Context::new(Arc::default()))
            .map_err(|source| KafkaClientError::Config { client: "consumer", source })?;
        let mut list = TopicPartitionList::new();
        let mut ends = BTreeMap::new();
        // Every partition of both topics: one without a recorded offset is read whole.
        let mut partitions = Vec::new();
        for topic in [&*self.alerts, &*self.deadletter] {
            let metadata = consumer
                .fetch_metadata(Some(topic), timeout)
                .map_err(|e| KafkaClientError::Request { what: format!("partitions of {topic}"), source: e })?;
            let count = metadata.topics().first().map_or(0, |t| t.partitions().len());
            partitions.extend((0..count as i32).map(|p| (topic.to_string(), p)));
        }
        let mut highs = BTreeMap::new();
        for (topic, partition) in partitions {
            let key = format!("{topic}/{partition}");
            let from = offsets.get(&key).copied().unwrap_or(0).max(0);
            let topic = topic.as_str();
            let (_, high) = consumer
                .fetch_watermarks(topic, partition, timeout)
                .map_err(|e| KafkaClientError::Request { what: format!("end offset of {key}"), source: e })?;
            highs.insert(key.clone(), from.min(high));
            if high > from {
                list.add_partition_offset(topic, partition, Offset::Offset(from))
                    .map_err(|e| KafkaClientError::Request { what: format!("assign {key}"), source: e })?;
                ends.insert((topic.to_string(), partition), high);
            }
        }
        if ends.is_empty() {
            return Ok(0);
        }
        consumer.assign(&list).map_err(|e| KafkaClientError::Request { what: "assign".into(), source: e })?;
        let mut found = HashSet::new();
        let mut published: BTreeMap<String, u32> = BTreeMap::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(300);
        // Read to the end offsets, then on until nothing more comes for a second (a broker's
        // end offset may lag behind the last batch it holds: Tansu 0.6 reports a batch's start).
        // A partition whose messages stop short of the end the broker gave (seen with Tansu after
        // a producer was killed mid-batch) would hold the start for the whole deadline: ten
        // seconds without any message end the reading too.
        let mut last_message = std::time::Instant::now();
        let silent = Duration::from_secs(10);
        while ((!ends.is_empty() && last_message.elapsed() < silent) || last_message.elapsed() < Duration::from_secs(1))
            && std::time::Instant::now() < deadline
        {
            let Some(message) = consumer.poll(Duration::from_millis(100)) else { continue };
            last_message = std::time::Instant::now();
            let message =
                message.map_err(|e| KafkaClientError::Request { what: "reading the outputs".into(), source: e })?;
            let header = |name: &str| {
                message.headers().and_then(|h| {
                    h.iter()
                        .find(|h| h.key == name)
                        .and_then(|h| h.value)
                        .map(|v| String::from_utf8_lossy(v).into_owned())
                })
            };
            let id = if message.topic() == &*self.alerts {
                // (Read to the end all the same: the loop ends when every partition has.)
                let id = header(headers::ALERT_ID).filter(|_| alerts);
                if let Some((tree, seq)) = id.as_deref().and_then(|id| id.rsplit_once('/')) {
                    if let Ok(seq) = seq.parse::<u32>() {
                        let max = published.entry(tree.to_string()).or_default();
                        *max = (*max).max(seq);
                    }
                }
                id
            } else {
                header(headers::SOURCE).zip(header(headers::OFFSET)).map(|(s, o)| format!("{s}#{o}"))
            };
            found.extend(id);
            let key = (message.topic().to_string(), message.partition());
            if ends.get(&key).is_some_and(|&end| message.offset() + 1 >= end) {
                ends.remove(&key);
            }
        }
        if !ends.is_empty() && std::time::Instant::now() >= deadline {
            return Err(KafkaClientError::Request {
                what: format!("reading the outputs to their end ({} partitions left)", ends.len()),
                source: KafkaError::NoMessageReceived,
            });
        }
        for ((topic, partition), end) in &ends {
            tracing::warn!(
                "kafka: {topic}/{partition}: no message for {silent:?} before the end offset {end} the broker \
                 reported; taking what was read as the partition's end"
            );
        }
        let n = found.len();
        *self.started.lock().unwrap_or_else(|p| p.into_inner()) = highs;
        if n > 0 {
            *self.floor.lock().unwrap_or_else(|p| p.into_inner()) = offsets
                .iter()
                .filter(|(k, _)| !k.starts_with(SHIFT_KEY))
                .map(|(k, v)| (k.clone(), (*v).max(0)))
                .collect();
        }
        if !published.is_empty() {
            *self.reconcile.lock().unwrap_or_else(|p| p.into_inner()) =
                Some(Reconcile { published, derived: BTreeMap::new(), stats: None, catalog: None, armed: false });
        }
        self.written.lock().unwrap_or_else(|p| p.into_inner()).extend(found);
        Ok(n)
    }

    /// After [`KafkaOutput::suppress_written`] at a restore: the alert numbers the restored
    /// checkpoint holds per tree, and where to see that the run has caught up and each tree's
    /// band. Once caught up, the egress's sink reconciles the topic at its next checkpoint.
    pub fn reconcile_with(&self, restored: &[(String, u32)], stats: Arc<Stats>, catalog: Arc<Catalog>) {
        if let Some(r) = self.reconcile.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
            r.derived = restored.iter().cloned().collect();
            r.stats = Some(stats);
            r.catalog = Some(catalog);
        }
    }

    /// The alert number a derived alert gets in the topic (and records it as derived).
    fn number(&self, alert: &Alert) -> u32 {
        if let Some(r) = self.reconcile.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
            r.derived.insert(alert.tree_id.clone(), alert.seq);
        }
        alert.seq + self.shift.lock().unwrap_or_else(|p| p.into_inner()).get(&alert.tree_id).copied().unwrap_or(0)
    }

    /// Once the restored run has caught up: moves the numbering of every tree whose alerts in
    /// the topic ran ahead past them, and sends the alert that brings the topic to the tree's
    /// band where the topic's last alert says otherwise. Then nothing is suppressed any more.
    fn reconcile_if_caught_up(&self) {
        let mut slot = self.reconcile.lock().unwrap_or_else(|p| p.into_inner());
        let Some(r) = slot.as_mut() else { return };
        let (Some(stats), Some(catalog)) = (&r.stats, &r.catalog) else { return };
        let snapshot = catalog.snapshot();
        if !(stats.restored() && snapshot.is_ready()) {
            return;
        }
        // Caught up now, but this checkpoint's cut may have been taken before: wait for the
        // next one, whose alerts include everything the replay derives.
        if !r.armed {
            r.armed = true;
            return;
        }
        let Some(r) = slot.take() else { return };
        drop(slot);
        let mut shift = self.shift.lock().unwrap_or_else(|p| p.into_inner());
        let mut sent = 0;
        for (tree, &published) in &r.published {
            let moved = shift.get(tree).copied().unwrap_or(0);
            let ours = r.derived.get(tree).copied().unwrap_or(0) + moved;
            if published <= ours {
                continue;
            }
            let mut next = published;
            if (published - ours) % 2 == 1 {
                // The topic's last alert says the opposite of this run's state (odd numbers are
                // `critical`): one alert more brings it back.
                next += 1;
                let row = snapshot.views.tree_scores.get(tree.as_str());
                let alert = Alert {
                    kind: if next % 2 == 1 { AlertKind::Critical } else { AlertKind::Resolved },
                    tree_id: tree.clone(),
                    region: row.map(|r| r.region),
                    score: row.map(|r| r.score.score.0),
                    band: row.map(|r| r.score.band),
                    previous_band: (published % 2 == 1).then_some(Band::Critical),
                    watermark: snapshot.watermark,
                    top_penalty: row.map_or("none", |r| r.score.top_penalty()),
                    seq: next,
                };
                tracing::info!(
                    "kafka: alert {} ({}) sent to bring the alert topic to the tree's band after the restore",
                    alert.id(),
                    alert.kind.as_str()
                );
                self.send_alert(&alert);
                sent += 1;
            }
            shift.insert(tree.clone(), moved + next - ours);
        }
        drop(shift);
        if sent > 0 {
            tracing::info!("kafka: {sent} alerts sent to reconcile the alert topic after the restore");
        }
        // Alert ids found at the restore and not derived again are behind the numbering now;
        // dead letters (`source#offset`) are still suppressed as they are read again.
        self.written.lock().unwrap_or_else(|p| p.into_inner()).retain(|id| id.contains('#'));
    }

    fn send_alert(&self, alert: &Alert) {
        let id = alert.id();
        let value = alert_json(alert).to_string();
        let topic = self.alerts.clone();
        let h = OwnedHeaders::new().insert(Header { key: headers::ALERT_ID, value: Some(id.as_str()) });
        self.send(BaseRecord::to(&topic).key(alert.tree_id.as_bytes()).payload(value.as_bytes()).headers(h));
    }

    /// The checkpoint entries of `shift`.
    fn shift_entries(&self) -> Vec<(String, i64)> {
        let shift = self.shift.lock().unwrap_or_else(|p| p.into_inner());
        shift.iter().map(|(tree, n)| (format!("{SHIFT_KEY}{tree}"), i64::from(*n))).collect()
    }

    /// Whether `id` was already written (then it is not sent again).
    fn already_written(&self, id: &str) -> bool {
        let mut written = self.written.lock().unwrap_or_else(|p| p.into_inner());
        !written.is_empty() && written.remove(id)
    }

    /// Where the output topics stand as far as this run knows, without asking the brokers
    /// (a checkpoint must not wait for them): per partition, the greater of its end at start
    /// and one past the last delivery. Every message sent later lands at or after it.
    fn known_offsets(&self) -> Vec<(String, i64)> {
        let mut known: BTreeMap<String, i64> = self.started.lock().unwrap_or_else(|p| p.into_inner()).clone();
        for (key, next) in self.producer.context().delivered() {
            let e = known.entry(key).or_insert(next);
            *e = (*e).max(next);
        }
        self.with_floor(known.into_iter().collect())
    }

    /// The end offsets of the output topics' partitions (`topic/partition` → offset), asked of
    /// the brokers (at start: an unreachable broker leaves them unknown, read whole on restore).
    pub fn end_offsets(&self) -> Vec<(String, i64)> {
        let timeout = Duration::from_secs(5);
        let client = self.producer.client();
        let mut out = Vec::new();
        for topic in [&*self.alerts, &*self.deadletter] {
            let partitions = match client.fetch_metadata(Some(topic), timeout) {
                Ok(m) => m.topics().first().map_or(0, |t| t.partitions().len()),
                Err(e) => {
                    tracing::warn!("kafka: partitions of {topic}: {e}");
                    0
                }
            };
            for p in 0..partitions as i32 {
                match client.fetch_watermarks(topic, p, timeout) {
                    Ok((_, high)) => out.push((format!("{topic}/{p}"), high)),
                    // Without it the restored run reads from the topic's start (more work, same result).
                    Err(e) => {
                        tracing::warn!("kafka: end offset of {topic}/{p}: {e}");
                        out.push((format!("{topic}/{p}"), 0));
                    }
                }
            }
        }
        *self.started.lock().unwrap_or_else(|p| p.into_inner()) = out.iter().cloned().collect();
        self.with_floor(out)
    }

    fn with_floor(&self, mut out: Vec<(String, i64)>) -> Vec<(String, i64)> {
        // Ids found at the restore and not derived again yet are still to be suppressed after a
        // crash: keep recording where they were read from.
        let mut floor = self.floor.lock().unwrap_or_else(|p| p.into_inner());
        if self.written.lock().unwrap_or_else(|p| p.into_inner()).is_empty() {
            floor.clear();
        }
        for (key, offset) in &mut out {
            if let Some(f) = floor.get(key) {
                *offset = (*offset).min(*f);
            }
        }
        out
    }

    /// A sink per worker and one for the egress, all sharing this producer.
    pub fn sink_factory(&self) -> SinkFactory {
        let output = self.clone();
        Arc::new(move |role| Box::new(KafkaSink(output.clone(), role == SinkRole::Egress)) as Box<dyn Sink>)
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

    /// For a checkpoint's writer: waits until everything sent so far is delivered; `Err` while
    /// the brokers do not take it (the checkpoint then fails and is retried; nothing is dropped).
    pub fn flush_for_checkpoint(&self, timeout: Duration) -> Result<(), String> {
        self.producer.flush(timeout).map_err(|e| format!("kafka outputs not delivered: {e}"))
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

/// One worker's (or, `true`, the egress's) handle on the [`KafkaOutput`].
struct KafkaSink(KafkaOutput, bool);

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
        if self.0.already_written(&format!("{source}#{offset}")) {
            return;
        }
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

    fn alert(&mut self, mut alert: Alert) {
        alert.seq = self.0.number(&alert);
        if self.0.already_written(&alert.id()) {
            return;
        }
        self.0.send_alert(&alert);
    }

    /// Records where the topics stand (the checkpoint's writer waits for the deliveries of
    /// everything sent before the cut: [`KafkaOutput::flush_for_checkpoint`]). The egress's
    /// sink first reconciles the alert topic after a restore, once caught up (every alert
    /// derived before the cut has passed it).
    fn checkpoint(&mut self, _number: u64) -> Vec<(String, i64)> {
        if !self.1 {
            return self.0.known_offsets();
        }
        // Only the egress reports the numbering moves: the parts' entries are merged by their
        // least value, and a worker's could be older than this checkpoint's reconciliation.
        self.0.reconcile_if_caught_up();
        let mut out = self.0.known_offsets();
        out.extend(self.0.shift_entries());
        out
    }

    fn close(&mut self) {
        self.0.flush(Duration::from_secs(30));
    }
}
