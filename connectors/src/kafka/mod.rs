//! Kafka: the source of the three input topics, the sinks of alerts and dead
//! letters, and the producer behind `treeai produce --brokers` (rdkafka with
//! its bundled librdkafka).
//!
//! # Partitions and offsets
//!
//! The pipeline does not use a consumer group for correctness: every worker
//! computes the same assignment from the topics' metadata and reads its share
//! with `assign` (never `subscribe`). Partition `p` of topic number `t` (trees
//! 0, assessments 1, readings 2) belongs to worker `(t + p) mod workers`, so
//! every partition is read by exactly one worker, each topic is spread evenly,
//! and a partition added later lands on a worker without moving any other.
//! Each worker keeps the next offset of each of its partitions
//! ([`source::KafkaSource::offsets`]); checkpoints will store them. Partitions
//! present at start begin at [`StartOffset`] (earliest by default); partitions
//! that appear while running are read from their beginning, so nothing
//! produced to them is missed. Metadata is refreshed every
//! [`KafkaConfig::metadata_refresh`] on a background thread.
//!
//! # Positions and watermark partitions
//!
//! A message's [`Position`](treeai_dataflows::event::Position) is
//! `source = topic << 24 | partition` and `offset` = its Kafka offset. The same
//! number is its watermark partition (DOMAIN §3): each partition of
//! `treeai.readings` holds the watermark back until it is idle.
//!
//! # Failures
//!
//! librdkafka reconnects to brokers by itself, with backoff
//! (`reconnect.backoff.ms`, `reconnect.backoff.max.ms`); a broker that is down
//! or restarts is reported (a warning at most every 10 s, and
//! [`KafkaStats::errors`]) and never stops the pipeline. Sinks wait when the
//! producer queue is full rather than drop anything.

pub mod ingest;
pub mod produce;
pub mod sink;
pub mod source;

use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::ConsumerContext;
use rdkafka::error::KafkaError;
use rdkafka::message::DeliveryResult;
use rdkafka::producer::ProducerContext;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use treeai_dataflows::event::EventKind;

/// Topic names (INTERFACES.md, Kafka); the defaults are the spec's names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Topics {
    /// Tree registry events (input), default `treeai.trees`.
    pub trees: String,
    /// Assessment events (input), default `treeai.assessments`.
    pub assessments: String,
    /// Sensor readings (input), default `treeai.readings`.
    pub readings: String,
    /// Alerts (output), default `treeai.alerts`.
    pub alerts: String,
    /// Rejected input (output), default `treeai.deadletter`.
    pub deadletter: String,
}

impl Default for Topics {
    fn default() -> Self {
        Topics {
            trees: "treeai.trees".into(),
            assessments: "treeai.assessments".into(),
            readings: "treeai.readings".into(),
            alerts: "treeai.alerts".into(),
            deadletter: "treeai.deadletter".into(),
        }
    }
}

impl Topics {
    /// The input topics in topic-number order, with the event kind each carries.
    pub fn inputs(&self) -> [(&str, EventKind); 3] {
        [
            (&self.trees, EventKind::Tree),
            (&self.assessments, EventKind::Assessment),
            (&self.readings, EventKind::Reading),
        ]
    }
    /// The input topic that carries `kind`.
    pub fn of_kind(&self, kind: EventKind) -> &str {
        match kind {
            EventKind::Tree => &self.trees,
            EventKind::Assessment => &self.assessments,
            EventKind::Reading => &self.readings,
        }
    }
}

/// Where a partition without a stored offset starts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum StartOffset {
    /// The oldest message the broker still has (default).
    #[default]
    Earliest,
    /// Only messages produced after the pipeline started.
    Latest,
}

impl std::str::FromStr for StartOffset {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "earliest" => Ok(StartOffset::Earliest),
            "latest" => Ok(StartOffset::Latest),
            _ => Err(format!("{s:?} is neither earliest nor latest")),
        }
    }
}

/// Kafka settings shared by the source, the sinks and the producer. Its `Debug` shows the
/// properties' names only: their values may be secrets.
#[derive(Clone)]
pub struct KafkaConfig {
    /// Bootstrap servers, `HOST:PORT[,HOST:PORT...]`.
    pub brokers: String,
    /// Topic names.
    pub topics: Topics,
    /// Where partitions start when there is no stored offset.
    pub start: StartOffset,
    /// Any librdkafka property (`security.protocol`, `sasl.*`, `ssl.*`,
    /// `fetch.max.bytes`, ...); applied after ours, so they win.
    pub properties: Vec<(String, String)>,
    /// How often the source looks for new partitions (default 5 s).
    pub metadata_refresh: Duration,
}

impl std::fmt::Debug for KafkaConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaConfig")
            .field("brokers", &self.brokers)
            .field("topics", &self.topics)
            .field("start", &self.start)
            .field("properties", &self.properties.iter().map(|(k, _)| format!("{k}=…")).collect::<Vec<_>>())
            .field("metadata_refresh", &self.metadata_refresh)
            .finish()
    }
}

impl KafkaConfig {
    /// Settings with the default topics for `brokers`.
    pub fn new(brokers: impl Into<String>) -> Self {
        KafkaConfig {
            brokers: brokers.into(),
            topics: Topics::default(),
            start: StartOffset::Earliest,
            properties: Vec::new(),
            metadata_refresh: Duration::from_secs(5),
        }
    }

    /// A librdkafka configuration: the brokers, `defaults`, then the user's properties.
    fn client_config(&self, defaults: &[(&str, &str)]) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.brokers);
        for (k, v) in defaults {
            config.set(*k, *v);
        }
        for (k, v) in &self.properties {
            config.set(k, v);
        }
        config
    }
}

/// Counters of one Kafka client (shared by all workers' clients of a process).
#[derive(Debug, Default)]
pub struct KafkaStats {
    /// Client errors: broker connections lost or refused, fetch errors.
    pub errors: AtomicU64,
    /// Messages the producer could not deliver (after librdkafka's retries).
    pub delivery_errors: AtomicU64,
    /// Messages delivered by the producer.
    pub delivered: AtomicU64,
    /// The last error, for the progress line.
    pub last_error: Mutex<Option<String>>,
    /// Resumed partitions whose checkpointed offset was gone (retention) or past the end.
    pub gaps: AtomicU64,
    /// Messages skipped because retention had deleted them before a resume could read them.
    pub gap_messages: AtomicU64,
    /// Per input `(topic, partition)`: messages between the next offset to read and
    /// the partition's end (its high watermark as the last fetch saw it).
    pub lag: Mutex<std::collections::BTreeMap<(Arc<str>, i32), i64>>,
}

impl KafkaStats {
    /// Registers the Kafka clients' counters for `/metrics`: `treeai_kafka_errors_total`,
    /// `treeai_kafka_delivered_total`, `treeai_kafka_delivery_errors_total`.
    pub fn register_metrics(self: &Arc<Self>, counters: &treeai_dataflows::runtime::Counters) {
        type Counter = (&'static str, &'static str, fn(&KafkaStats) -> &AtomicU64);
        const COUNTERS: [Counter; 3] = [
            ("treeai_kafka_errors_total", "Kafka client errors (broker down, fetch errors).", |s| &s.errors),
            ("treeai_kafka_delivered_total", "Alerts and dead letters delivered to Kafka.", |s| &s.delivered),
            ("treeai_kafka_delivery_errors_total", "Alerts and dead letters Kafka did not take.", |s| {
                &s.delivery_errors
            }),
        ];
        for (name, help, counter) in COUNTERS {
            let stats = self.clone();
            counters.add(name, help, move || counter(&stats).load(Ordering::Relaxed));
        }
        let stats = self.clone();
        counters.add_text(move || {
            use std::fmt::Write;
            let mut out = String::new();
            let _ = writeln!(
                out,
                "# HELP treeai_source_gaps_total Resumed Kafka partitions whose checkpointed offset was no longer \
                 retained (or past the partition's end).\n# TYPE treeai_source_gaps_total counter\n\
                 treeai_source_gaps_total {}",
                stats.gaps.load(Ordering::Relaxed)
            );
            let _ = writeln!(
                out,
                "# HELP treeai_source_gap_messages_total Kafka messages deleted by retention before a resumed \
                 run could read them.\n# TYPE treeai_source_gap_messages_total counter\n\
                 treeai_source_gap_messages_total {}",
                stats.gap_messages.load(Ordering::Relaxed)
            );
            let lag = stats.lag.lock().unwrap_or_else(|p| p.into_inner());
            let _ = writeln!(
                out,
                "# HELP treeai_source_lag Messages behind the partition's end (high watermark), per input partition.\n\
                 # TYPE treeai_source_lag gauge"
            );
            for ((topic, partition), n) in lag.iter() {
                let _ = writeln!(out, "treeai_source_lag{{topic=\"{topic}\",partition=\"{partition}\"}} {n}");
            }
            out
        });
    }
}

/// Our librdkafka context: logs through `tracing`, counts errors, and reports
/// them at most every 10 seconds so that a broker down for an hour does not flood the log.
pub struct Context {
    stats: Arc<KafkaStats>,
    last_report: Mutex<Option<Instant>>,
    /// Producers: per `topic/partition`, one past the greatest offset delivered to.
    delivered: Mutex<std::collections::BTreeMap<String, i64>>,
}

impl Context {
    /// A context counting into `stats`.
    pub fn new(stats: Arc<KafkaStats>) -> Self {
        Context { stats, last_report: Mutex::new(None), delivered: Mutex::default() }
    }

    /// Per `topic/partition`, one past the greatest offset delivered to so far.
    pub fn delivered(&self) -> std::collections::BTreeMap<String, i64> {
        self.delivered.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn record_error(&self, what: &str) {
        let n = self.stats.errors.fetch_add(1, Ordering::Relaxed) + 1;
        *self.stats.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(what.to_string());
        let mut last = self.last_report.lock().unwrap_or_else(|p| p.into_inner());
        if last.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
            *last = Some(Instant::now());
            tracing::warn!("kafka: {what} ({n} errors so far; librdkafka keeps retrying)");
        }
    }
}

impl ClientContext for Context {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        match level {
            RDKafkaLogLevel::Emerg | RDKafkaLogLevel::Alert | RDKafkaLogLevel::Critical => {
                tracing::error!(target: "librdkafka", "{fac} {message}")
            }
            // Connection failures also arrive through `error` below, counted and rate-limited.
            RDKafkaLogLevel::Error | RDKafkaLogLevel::Warning => {
                tracing::debug!(target: "librdkafka", "{fac} {message}")
            }
            _ => tracing::trace!(target: "librdkafka", "{fac} {message}"),
        }
    }
    fn error(&self, error: KafkaError, reason: &str) {
        self.record_error(&format!("{error}: {reason}"));
    }
}

impl ConsumerContext for Context {}

impl ProducerContext for Context {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(message) => {
                self.stats.delivered.fetch_add(1, Ordering::Relaxed);
                use rdkafka::Message as _;
                let key = format!("{}/{}", message.topic(), message.partition());
                let mut delivered = self.delivered.lock().unwrap_or_else(|p| p.into_inner());
                let next = delivered.entry(key).or_insert(0);
                *next = (*next).max(message.offset() + 1);
            }
            Err((e, _)) => {
                self.stats.delivery_errors.fetch_add(1, Ordering::Relaxed);
                self.record_error(&format!("delivery failed: {e}"));
            }
        }
    }
}

/// Errors of the Kafka clients, by whose fault they are.
#[derive(Debug, thiserror::Error)]
pub enum KafkaClientError {
    /// A client cannot be created from the configuration (a bad librdkafka property): the user's fault.
    #[error("kafka {client}: {source}")]
    Config {
        /// Which client.
        client: &'static str,
        /// librdkafka's error.
        #[source]
        source: KafkaError,
    },
    /// The brokers refused a request or did not answer: retry later.
    #[error("kafka {what}: {source}")]
    Broker {
        /// The request.
        what: &'static str,
        /// librdkafka's error.
        #[source]
        source: KafkaError,
    },
    /// A request of a restore (reading back what an earlier run wrote) failed: retry later.
    #[error("kafka {what}: {source}")]
    Request {
        /// The request.
        what: String,
        /// librdkafka's error.
        #[source]
        source: KafkaError,
    },
    /// The brokers refused to create a topic.
    #[error("kafka: create topic {topic}: {code}")]
    Topic {
        /// The topic.
        topic: String,
        /// The broker's answer.
        code: rdkafka::types::RDKafkaErrorCode,
    },
    /// A local resource (a thread, a runtime) could not be started.
    #[error("kafka {what}: {source}")]
    Local {
        /// What could not be started.
        what: &'static str,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

impl KafkaClientError {
    /// Whose fault the error is.
    pub fn fault(&self) -> treeai_dataflows::source::Fault {
        use treeai_dataflows::source::Fault;
        match self {
            KafkaClientError::Config { .. } => Fault::User,
            KafkaClientError::Broker { .. }
            | KafkaClientError::Request { .. }
            | KafkaClientError::Topic { .. }
            | KafkaClientError::Local { .. } => Fault::Environment,
        }
    }
}

/// Creates `names` with `partitions` partitions each (replication factor 1,
/// for local brokers and tests); a topic that already exists is fine.
pub fn create_topics(config: &KafkaConfig, names: &[&str], partitions: i32) -> Result<(), KafkaClientError> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::types::RDKafkaErrorCode;
    let admin: AdminClient<Context> = config
        .client_config(&[])
        .create_with_context(Context::new(Arc::default()))
        .map_err(|source| KafkaClientError::Config { client: "admin client", source })?;
    let topics: Vec<NewTopic<'_>> =
        names.iter().map(|n| NewTopic::new(n, partitions, TopicReplication::Fixed(1))).collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| KafkaClientError::Local { what: "admin runtime", source })?;
    let results = runtime
        .block_on(admin.create_topics(&topics, &options))
        .map_err(|source| KafkaClientError::Broker { what: "create topics", source })?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => return Err(KafkaClientError::Topic { topic, code }),
        }
    }
    Ok(())
}
