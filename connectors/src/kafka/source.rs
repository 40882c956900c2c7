//! The Kafka source: one consumer per worker, reading the worker's share of
//! the partitions of the three input topics (see the module documentation of
//! [`crate::kafka`] for the assignment rule).

use super::{Context, KafkaConfig, KafkaStats, StartOffset};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;
use treeai_dataflows::event::{EventKind, Position};
use treeai_dataflows::source::{PartitionPosition, Poll, RawMessage, Source, SourceError, SourceRef};

/// Topic numbers fit in the top 8 bits of a position's source.
const PARTITION_BITS: u32 = 24;

/// The position source of partition `partition` of topic number `topic`.
pub fn source_id(topic: usize, partition: i32) -> u32 {
    ((topic as u32) << PARTITION_BITS) | (partition as u32 & ((1 << PARTITION_BITS) - 1))
}

/// The worker that reads partition `partition` of topic number `topic`.
pub fn owner(topic: usize, partition: i32, workers: usize) -> usize {
    (topic + partition as usize) % workers.max(1)
}

/// One worker's consumer.
pub struct KafkaSource {
    consumer: Arc<BaseConsumer<Context>>,
    topics: [String; 3],
    kinds: [EventKind; 3],
    worker: usize,
    peers: usize,
    start: StartOffset,
    /// Partition counts seen so far, per topic.
    known: [i32; 3],
    /// Metadata from the watcher thread: partition counts per topic.
    metadata: mpsc::Receiver<[i32; 3]>,
    /// Next offset to read, per (topic number, partition) this worker owns.
    next: BTreeMap<(usize, i32), i64>,
    /// Offsets to resume at, by position source id (from [`Source::seek`]).
    resume: BTreeMap<u32, u64>,
    /// After a restore: where each resumed partition ended when it was assigned.
    resume_ends: std::cell::RefCell<BTreeMap<(usize, i32), i64>>,
    /// Topic names as dead letters carry them.
    names: [Arc<str>; 3],
    stop: Arc<AtomicBool>,
    stats: Arc<KafkaStats>,
    /// The next offsets, as last shared with the metadata thread (which measures the lag).
    shared_next: Arc<std::sync::Mutex<BTreeMap<(usize, i32), i64>>>,
    /// When `shared_next` was last updated.
    lag_published: Option<std::time::Instant>,
}

impl KafkaSource {
    /// The consumer of worker `worker` of `peers`. Does not wait for the
    /// brokers: partitions are assigned when their metadata arrives.
    pub fn new(config: &KafkaConfig, stats: Arc<KafkaStats>, worker: usize, peers: usize) -> Result<Self, SourceError> {
        let client_error =
            |message: String| SourceError::Client { input: format!("Kafka at {}", config.brokers), message };
        let client = config.client_config(&[
            // Required by librdkafka for a consumer; no group is joined (we `assign`) and nothing is committed.
            ("group.id", "treeai"),
            ("enable.auto.commit", "false"),
            ("enable.auto.offset.store", "false"),
            ("enable.partition.eof", "false"),
            ("auto.offset.reset", if config.start == StartOffset::Latest { "latest" } else { "earliest" }),
            ("client.id", &format!("treeai-worker-{worker}")),
            ("reconnect.backoff.ms", "100"),
            ("reconnect.backoff.max.ms", "5000"),
            ("queued.min.messages", "200000"),
            // How long the broker may hold a fetch that finds no new data: it bounds how late a
            // message on a quiet partition is seen. On Tansu (which holds such a fetch for the
            // whole wait) an assessment took p50 83 ms from produce to SQL with 50 ms, 23 ms with
            // 10 ms, 14 ms with 5 ms (benchmarks/README.md "Freshness"). An idle pipeline sends
            // ~200 fetches/s per worker; raise it with --kafka-property where that matters more.
            ("fetch.wait.max.ms", "5"),
        ]);
        let consumer: BaseConsumer<Context> = client
            .create_with_context(Context::new(stats.clone()))
            .map_err(|e| client_error(format!("kafka consumer: {e}")))?;
        let consumer = Arc::new(consumer);
        let topics = config.topics.inputs().map(|(t, _)| t.to_string());
        let kinds = config.topics.inputs().map(|(_, k)| k);
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::channel();
        let shared_next: Arc<std::sync::Mutex<BTreeMap<(usize, i32), i64>>> = Arc::default();
        let names: [Arc<str>; 3] = topics.clone().map(Arc::from);
        {
            let (consumer, topics, stop, refresh) =
                (consumer.clone(), topics.clone(), stop.clone(), config.metadata_refresh);
            let lag = LagWatch { next: shared_next.clone(), stats: stats.clone(), names: names.clone() };
            std::thread::Builder::new()
                .name(format!("kafka-meta-{worker}"))
                .spawn(move || watch_metadata(&consumer, &topics, &stop, refresh, &tx, &lag))
                .map_err(|e| SourceError::Unreadable {
                    input: format!("Kafka at {}", config.brokers),
                    message: format!("kafka metadata thread: {e}"),
                    fault: treeai_dataflows::source::Fault::Environment,
                })?;
        }
        Ok(KafkaSource {
            consumer,
            kinds,
            worker,
            peers,
            start: config.start,
            known: [0; 3],
            metadata: rx,
            next: BTreeMap::new(),
            resume: BTreeMap::new(),
            resume_ends: Default::default(),
            names,
            topics,
            stop,
            stats,
            shared_next,
            lag_published: None,
        })
    }

    /// Where a resumed partition starts: its checkpointed offset if Kafka still has it.
    /// Retention may have deleted it (the messages in between are lost: said and counted).
    ///
    /// A partition that seems to end before the checkpoint's offset is resumed at that
    /// offset all the same, with a warning: brokers' answers to "where does it end" are
    /// not always exact (Tansu answers with the start of its newest batch), and reading it
    /// again from its start would count every message twice. Should the topic really
    /// have been deleted and recreated, Kafka answers the fetch with "offset out of
    /// range" and librdkafka restarts the partition at its earliest offset
    /// (`auto.offset.reset`), which it logs.
    fn resume_at(&self, t: usize, p: i32, next: i64) -> (Offset, i64) {
        let topic = &self.topics[t];
        match self.consumer.fetch_watermarks(topic, p, Duration::from_secs(10)) {
            Ok((low, high)) if next < low => {
                self.resume_ends.borrow_mut().insert((t, p), high);
                let lost = low - next;
                self.stats.gaps.fetch_add(1, Ordering::Relaxed);
                self.stats.gap_messages.fetch_add(lost as u64, Ordering::Relaxed);
                tracing::error!(
                    "kafka: {topic}/{p}: the checkpoint's offset {next} is no longer retained (the partition now \
                     starts at {low}): {lost} messages were deleted before they were read; resuming at {low}"
                );
                (Offset::Offset(low), low)
            }
            Ok((_, high)) if next > high => {
                tracing::warn!(
                    "kafka: {topic}/{p}: the broker says the partition ends at offset {high}, before the \
                     checkpoint's offset {next}; resuming at {next} (if the topic was deleted and recreated, \
                     the fetch fails as out of range and the partition is read from its earliest offset)"
                );
                (Offset::Offset(next), next)
            }
            Ok((_, high)) => {
                self.resume_ends.borrow_mut().insert((t, p), high);
                (Offset::Offset(next), next)
            }
            Err(e) => {
                tracing::warn!("kafka: bounds of {topic}/{p}: {e}; resuming at the checkpoint's offset {next}");
                (Offset::Offset(next), next)
            }
        }
    }

    /// Shares the next offsets with the metadata thread, at most once a second (it asks
    /// the brokers for the partitions' ends and publishes the lag).
    fn publish_lag(&mut self) {
        if self.lag_published.is_some_and(|t| t.elapsed() < Duration::from_secs(1)) {
            return;
        }
        self.lag_published = Some(std::time::Instant::now());
        self.shared_next.lock().unwrap_or_else(|p| p.into_inner()).clone_from(&self.next);
    }

    /// Assigns the partitions this worker owns among those that just appeared.
    fn take_metadata(&mut self) {
        let mut latest = None;
        while let Ok(counts) = self.metadata.try_recv() {
            latest = Some(counts);
        }
        let Some(counts) = latest else { return };
        let mut added = TopicPartitionList::new();
        for (t, &count) in counts.iter().enumerate() {
            let first_seen = self.known[t] == 0;
            for p in self.known[t]..count {
                if owner(t, p, self.peers) != self.worker {
                    continue;
                }
                // A partition with a recorded position resumes there; others present at start follow the
                // configured start; later ones (and, after a restore, any without a record: they
                // appeared after the checkpoint) are new: read them whole. The start is made a
                // concrete offset, so a checkpoint records every assigned partition.
                let resuming = !self.resume.is_empty();
                let (offset, next) = match (self.resume.get(&source_id(t, p)), self.start) {
                    (Some(&next), _) => self.resume_at(t, p, next as i64),
                    (None, StartOffset::Latest) if first_seen && !resuming => {
                        match self.consumer.fetch_watermarks(&self.topics[t], p, Duration::from_secs(10)) {
                            Ok((_, high)) => (Offset::Offset(high), high),
                            Err(e) => {
                                tracing::warn!("kafka: end of {}/{p}: {e}; reading from its end", self.topics[t]);
                                (Offset::End, -1)
                            }
                        }
                    }
                    (None, _) => (Offset::Beginning, 0),
                };
                if added.add_partition_offset(&self.topics[t], p, offset).is_ok() {
                    self.next.insert((t, p), next);
                }
            }
            self.known[t] = self.known[t].max(count);
        }
        if added.count() > 0 {
            if let Err(e) = self.consumer.incremental_assign(&added) {
                tracing::warn!("kafka: assigning {} partitions failed: {e}", added.count());
            } else {
                tracing::info!("kafka worker {}: reading {} more partitions", self.worker, added.count());
            }
        }
    }
}

impl Drop for KafkaSource {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl Source for KafkaSource {
    fn poll(&mut self, max: usize, emit: &mut dyn FnMut(RawMessage<'_>)) -> Poll {
        self.take_metadata();
        self.publish_lag();
        let mut emitted = 0;
        while emitted < max {
            match self.consumer.poll(Duration::ZERO) {
                None => break,
                Some(Ok(m)) => {
                    let Some(t) = self.topics.iter().position(|t| t == m.topic()) else { continue };
                    let pos = Position { source: source_id(t, m.partition()), offset: m.offset() as u64 };
                    emit(RawMessage {
                        bytes: m.payload().unwrap_or_default(),
                        kind: Some(self.kinds[t]),
                        pos,
                        partition: pos.source,
                        key: m.key(),
                    });
                    self.next.insert((t, m.partition()), m.offset() + 1);
                    emitted += 1;
                }
                // Fetch and connection errors: librdkafka retries; the context counts and reports them.
                Some(Err(e)) => {
                    tracing::debug!("kafka poll: {e}");
                    break;
                }
            }
        }
        if emitted > 0 {
            Poll::Ready
        } else {
            Poll::Idle
        }
    }

    fn source_ref(&self, pos: Position) -> SourceRef {
        let topic = (pos.source >> PARTITION_BITS) as usize;
        let partition = (pos.source & ((1 << PARTITION_BITS) - 1)) as i32;
        match self.names.get(topic) {
            Some(topic) => SourceRef::Kafka { topic: topic.clone(), partition, offset: pos.offset },
            None => SourceRef::Other { name: "kafka".into(), pos },
        }
    }

    /// Partitions read so far: `next` is the Kafka offset to read next. A
    /// partition assigned but not read yet has no position (it starts as
    /// configured, or where [`Source::seek`] said).
    fn positions(&self) -> Vec<PartitionPosition> {
        self.next
            .iter()
            .filter(|(_, &o)| o >= 0)
            .map(|(&(t, p), &o)| PartitionPosition {
                source: source_id(t, p),
                start: 0,
                next: o as u64,
                finished: false,
                digest: 0,
            })
            .collect()
    }

    fn owns(&self, source: u32) -> bool {
        let (topic, partition) = ((source >> PARTITION_BITS) as usize, (source & ((1 << PARTITION_BITS) - 1)) as i32);
        topic < self.topics.len() && owner(topic, partition, self.peers) == self.worker
    }

    /// Remembers the offsets; each partition is assigned at its offset when its
    /// metadata arrives. Positions of partitions another worker owns are ignored.
    /// Caught up once the partitions are assigned and each resumed one has been read to
    /// where it ended when it was assigned.
    fn caught_up(&self) -> bool {
        if self.resume.is_empty() {
            return true;
        }
        self.known.iter().any(|&k| k > 0)
            && self.resume_ends.borrow().iter().all(|(key, end)| self.next.get(key).is_some_and(|n| n >= end))
    }

    fn seek(&mut self, positions: &[PartitionPosition]) -> Result<(), SourceError> {
        for p in positions {
            let (topic, partition) =
                ((p.source >> PARTITION_BITS) as usize, (p.source & ((1 << PARTITION_BITS) - 1)) as i32);
            if topic < self.topics.len() && owner(topic, partition, self.peers) == self.worker {
                self.resume.insert(p.source, p.next);
            }
        }
        Ok(())
    }
}

/// What the metadata thread needs to measure the source lag.
struct LagWatch {
    /// The worker's next offsets per (topic number, partition).
    next: Arc<std::sync::Mutex<BTreeMap<(usize, i32), i64>>>,
    stats: Arc<KafkaStats>,
    names: [Arc<str>; 3],
}

impl LagWatch {
    /// Publishes, per partition the worker reads, how far its next offset is behind the end.
    fn publish(&self, consumer: &BaseConsumer<Context>, topics: &[String; 3]) {
        let next = self.next.lock().unwrap_or_else(|p| p.into_inner()).clone();
        for ((t, p), next) in next {
            if next < 0 {
                continue;
            }
            if let Ok((_, high)) = consumer.fetch_watermarks(&topics[t], p, Duration::from_secs(2)) {
                let mut lag = self.stats.lag.lock().unwrap_or_else(|p| p.into_inner());
                lag.insert((self.names[t].clone(), p), (high - next).max(0));
            }
        }
    }
}

/// Sends the partition counts of the input topics whenever they grow: at
/// once (retrying every second until the brokers answer), then every `refresh`;
/// and measures the source lag every 2 seconds.
fn watch_metadata(
    consumer: &BaseConsumer<Context>,
    topics: &[String; 3],
    stop: &AtomicBool,
    refresh: Duration,
    tx: &mpsc::Sender<[i32; 3]>,
    lag: &LagWatch,
) {
    let mut lag_due = std::time::Instant::now();
    let mut sent = [0i32; 3];
    while !stop.load(Ordering::Relaxed) {
        let mut counts = sent;
        let mut complete = true;
        for (t, topic) in topics.iter().enumerate() {
            match consumer.fetch_metadata(Some(topic), Duration::from_secs(5)) {
                Ok(md) => match md.topics().iter().find(|m| m.name() == topic) {
                    Some(m) if m.error().is_none() => counts[t] = counts[t].max(m.partitions().len() as i32),
                    _ => complete = false,
                },
                Err(_) => complete = false,
            }
        }
        if counts != sent {
            if tx.send(counts).is_err() {
                return;
            }
            sent = counts;
        }
        let wait = if complete { refresh } else { Duration::from_secs(1) };
        let until = std::time::Instant::now() + wait;
        while std::time::Instant::now() < until && !stop.load(Ordering::Relaxed) {
            if std::time::Instant::now() >= lag_due {
                lag.publish(consumer, topics);
                lag_due = std::time::Instant::now() + Duration::from_secs(2);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_partition_has_one_owner_and_topics_spread_evenly() {
        for workers in 1..6 {
            for partitions in 1..9 {
                for topic in 0..3 {
                    let mut load = vec![0; workers];
                    for p in 0..partitions {
                        let w = owner(topic, p, workers);
                        assert!(w < workers);
                        load[w] += 1;
                    }
                    let (lo, hi) = (load.iter().min().unwrap(), load.iter().max().unwrap());
                    assert!(hi - lo <= 1, "{workers} workers, {partitions} partitions: {load:?}");
                }
            }
        }
        // Source ids are distinct across topics and partitions.
        let ids: std::collections::BTreeSet<u32> =
            (0..3).flat_map(|t| (0..100).map(move |p| source_id(t, p))).collect();
        assert_eq!(ids.len(), 300);
    }
}
