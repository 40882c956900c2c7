//! The configuration file (`--config treeai.toml`) — these structs are its documentation.
//!
//! Precedence, lowest first: built-in defaults < the config file < `TREEAI_*`
//! environment variables < command-line flags. Unknown keys are an error.
//!
//! ```toml
//! workers = 2                 # timely worker threads (default: number of cores)
//! input = ["events.ndjson"]   # NDJSON files; absent = the built-in generator
//! allowed_lateness_ms = 5000  # DOMAIN §3
//! idle_timeout_ms = 30000     # DOMAIN §3
//! sql_addr = "127.0.0.1:6875" # Postgres wire protocol (`treeai run`)
//! http_addr = "127.0.0.1:8080" # HTTP: /v1/sql, /metrics, /healthz, /readyz
//! sql_timeout_ms = 30000      # time limit of one SQL statement
//! sql_memory_limit_mb = 1024  # memory pool of all running SQL queries
//! http_max_rows = 100000      # most rows of one HTTP /v1/sql answer
//! sql_max_connections = 256   # Postgres wire connections at once (53300 beyond)
//! sql_idle_timeout_ms = 3600000 # close Postgres sessions idle this long (57P05); 0: never
//! sql_max_message_bytes = 4194304 # longest Postgres wire message (54000 beyond)
//! shutdown_timeout_ms = 25000 # SIGTERM: drain and flush, exit 0 within this
//! liveness_timeout_ms = 30000 # /healthz fails without a dataflow round for this long
//!
//! [checkpoint]                # consistent checkpoints (OPERATIONS.md)
//! url = "./lake/_checkpoints"  # flag --checkpoint-url; default <lake>/_checkpoints
//! interval_ms = 30000         # flag --checkpoint-interval-ms
//! kept = 3                    # flag --checkpoints-kept
//! enabled = true              # false = --no-checkpoint
//!
//! [cluster]                   # a cluster of processes (OPERATIONS.md)
//! processes = 3               # flag --processes, env TREEAI_PROCESSES
//! process = "auto"            # this one's index, or "auto" (a StatefulSet pod's ordinal)
//! peers = ["treeai-{i}.treeai-peers:7000"]  # or one host:port per process, in order
//! peer_timeout_ms = 60000     # start-up wait for every peer
//!
//! [webhook]                   # critical and resolved alerts to PagerDuty or Slack
//! url = "https://events.pagerduty.com/v2/enqueue"
//! routing_key = "…"           # PagerDuty integration key (better: env TREEAI_WEBHOOK_ROUTING_KEY)
//! max_attempts = 6            # then the alert goes to <data_dir>/webhook/deadletter.ndjson
//!
//! [generator]                 # the embedded default source
//! trees = 10000
//! agents = 30
//! rate = 10000                # events per second
//! season = "moderate"         # peak | moderate | low | emergency
//! bad_fraction = 0.001
//! seed = 1
//!
//! [kafka]                     # present with `brokers`: read Kafka instead of the generator
//! brokers = "127.0.0.1:9092"  # flag --brokers, env TREEAI_BROKERS
//! start = "earliest"          # earliest | latest: partitions without a stored offset
//! metadata_refresh_ms = 5000  # how often new partitions are looked for
//! [kafka.topics]              # the spec's names by default
//! trees = "treeai.trees"
//! assessments = "treeai.assessments"
//! readings = "treeai.readings"
//! alerts = "treeai.alerts"
//! deadletter = "treeai.deadletter"
//! [kafka.properties]          # any librdkafka property
//! "security.protocol" = "SASL_SSL"
//! "sasl.mechanisms" = "PLAIN"
//! ```

use anyhow::Context;
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// The whole file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Timely worker threads in this process (flag `--workers`, env `TREEAI_WORKERS`).
    pub workers: Option<usize>,
    /// NDJSON input files (flag `--input`); absent: the built-in generator.
    pub input: Option<Vec<PathBuf>>,
    /// Allowed lateness of readings in ms (flag `--allowed-lateness-ms`); default 5000.
    pub allowed_lateness_ms: Option<i64>,
    /// A partition with no readings for this long is idle, ms (flag `--idle-timeout-ms`); default 30000.
    pub idle_timeout_ms: Option<u64>,
    /// On SIGTERM/SIGINT/SIGHUP, `treeai run` drains, flushes and exits 0 within this many ms
    /// (flag `--shutdown-timeout-ms`, env `TREEAI_SHUTDOWN_TIMEOUT_MS`); default 25000.
    pub shutdown_timeout_ms: Option<u64>,
    /// `/healthz` fails when no dataflow round completed for this many ms (flag
    /// `--liveness-timeout-ms`, env `TREEAI_LIVENESS_TIMEOUT_MS`); default 30000.
    pub liveness_timeout_ms: Option<u64>,
    /// Postgres wire protocol listen address of `treeai run` (flag `--sql-addr`,
    /// env `TREEAI_SQL_ADDR`); default `127.0.0.1:6875`.
    pub sql_addr: Option<String>,
    /// HTTP listen address of `treeai run` (flag `--http-addr`, env
    /// `TREEAI_HTTP_ADDR`); default `127.0.0.1:8080`.
    pub http_addr: Option<String>,
    /// Time limit of one SQL statement in ms (flag `--sql-timeout-ms`); default 30000.
    pub sql_timeout_ms: Option<u64>,
    /// Memory pool of all running SQL queries in MiB (flag `--sql-memory-limit-mb`); default 1024.
    pub sql_memory_limit_mb: Option<usize>,
    /// Most rows one HTTP `/v1/sql` answer carries (flag `--http-max-rows`); default 100000.
    pub http_max_rows: Option<usize>,
    /// Postgres wire connections open at once (flag `--sql-max-connections`); default 256.
    pub sql_max_connections: Option<usize>,
    /// A Postgres wire session with no traffic for this long is closed, ms (flag
    /// `--sql-idle-timeout-ms`); 0: never; default 3600000.
    pub sql_idle_timeout_ms: Option<u64>,
    /// Longest Postgres wire message in bytes (flag `--sql-max-message-bytes`); default 4194304.
    pub sql_max_message_bytes: Option<usize>,
    /// Host names HTTP answers to besides IP addresses and `localhost` (flag
    /// `--http-allowed-hosts`); e.g. the Service's `treeai.treeai-us-east.svc`.
    pub http_allowed_hosts: Option<Vec<String>>,
    /// Local state that is not a checkpoint, e.g. the ingest log (flag `--data-dir`, env
    /// `TREEAI_DATA_DIR`); default `./data`.
    pub data_dir: Option<PathBuf>,
    /// Events a second one token may post to `POST /v1/events` (flag `--ingest-rate`); default 1000.
    pub ingest_rate: Option<f64>,
    /// Largest `POST /v1/events` body in bytes (flag `--ingest-max-bytes`); default 4194304.
    pub ingest_max_bytes: Option<usize>,
    /// Users and tokens (`treeai auth`); with it SQL and HTTP need credentials (flag
    /// `--auth-file`, env `TREEAI_AUTH_FILE`).
    pub auth_file: Option<PathBuf>,
    /// PEM certificate chain for TLS on both endpoints (flag `--tls-cert`, env `TREEAI_TLS_CERT`).
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `tls_cert` (flag `--tls-key`, env `TREEAI_TLS_KEY`).
    pub tls_key: Option<PathBuf>,
    /// Audit log file, `-` for standard output (flag `--audit-log`); default `-` with an auth file.
    pub audit_log: Option<String>,
    /// `/metrics` needs a token too (flag `--metrics-auth`); default false.
    pub metrics_auth: Option<bool>,
    /// Allow listening on a non-loopback address without an auth file (flag
    /// `--insecure-no-auth`); default false.
    pub insecure_no_auth: Option<bool>,
    /// The built-in generator, used when there is no input.
    #[serde(default)]
    pub generator: GeneratorFile,
    /// The Parquet lake.
    #[serde(default)]
    pub lake: LakeFile,
    /// Kafka: the input topics (instead of the generator) and the alert and dead-letter topics.
    #[serde(default)]
    pub kafka: KafkaFile,
    /// Checkpoints.
    #[serde(default)]
    pub checkpoint: CheckpointFile,
    /// A cluster of processes.
    #[serde(default)]
    pub cluster: ClusterFile,
    /// Alert routing to a webhook.
    #[serde(default)]
    pub webhook: WebhookFile,
}

/// `[webhook]`: critical and resolved alerts posted to PagerDuty (Events v2) or Slack.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookFile {
    /// Where alerts are posted (flag `--webhook-url`, env `TREEAI_WEBHOOK_URL`); absent: none.
    pub url: Option<String>,
    /// PagerDuty integration key (flag `--webhook-routing-key`, env `TREEAI_WEBHOOK_ROUTING_KEY`).
    pub routing_key: Option<String>,
    /// Attempts per alert before it is dead-lettered (flag `--webhook-max-attempts`); default 6.
    pub max_attempts: Option<u32>,
}

/// `[cluster]`: this process's place in a cluster of processes (OPERATIONS.md "Cluster").
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterFile {
    /// Processes (flag `--processes`, env `TREEAI_PROCESSES`); default 1.
    pub processes: Option<usize>,
    /// This process's index or `"auto"` (flag `--process`, env `TREEAI_PROCESS`); default 0.
    pub process: Option<String>,
    /// Every process's peer address `host:port`, in process order; one entry with `{i}`
    /// stands for all (flag `--peers`, env `TREEAI_PEERS`).
    pub peers: Option<Vec<String>>,
    /// A file of peer addresses, one per line (flag `--peers-file`, env `TREEAI_PEERS_FILE`).
    pub peers_file: Option<PathBuf>,
    /// Start-up wait for every peer, ms (flag `--peer-timeout-ms`); default 60000.
    pub peer_timeout_ms: Option<u64>,
}

/// `[checkpoint]`: where and how often `treeai run` writes checkpoints.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointFile {
    /// Where checkpoints go (flag `--checkpoint-url`, env `TREEAI_CHECKPOINT_URL`); default
    /// `<lake>/_checkpoints`, or `./checkpoints` without a lake.
    pub url: Option<String>,
    /// Time between checkpoints, ms (flag `--checkpoint-interval-ms`); default 30000.
    pub interval_ms: Option<u64>,
    /// Checkpoints kept (flag `--checkpoints-kept`); default 3.
    pub kept: Option<usize>,
    /// `false`: no checkpoints (flag `--no-checkpoint`); default true.
    pub enabled: Option<bool>,
    /// `object_store` options of the checkpoint store; default the lake's.
    pub options: Option<std::collections::BTreeMap<String, String>>,
}

/// `[kafka]`: a Kafka cluster as the source, and the alert and dead-letter topics.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaFile {
    /// Bootstrap servers `HOST:PORT[,HOST:PORT...]` (flag `--brokers`, env `TREEAI_BROKERS`).
    pub brokers: Option<String>,
    /// `earliest` (default) or `latest`: where partitions without a stored offset start (flag `--kafka-start`).
    pub start: Option<String>,
    /// How often to look for new partitions, ms (default 5000).
    pub metadata_refresh_ms: Option<u64>,
    /// Topic names (flags `--trees-topic`, ...).
    #[serde(default)]
    pub topics: TopicsFile,
    /// librdkafka properties (flag `--kafka-property KEY=VALUE` adds to them).
    #[serde(default)]
    pub properties: std::collections::BTreeMap<String, String>,
}

/// `[kafka.topics]`: topic names; the defaults are INTERFACES.md's.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicsFile {
    /// Tree events (default `treeai.trees`).
    pub trees: Option<String>,
    /// Assessment events (default `treeai.assessments`).
    pub assessments: Option<String>,
    /// Readings (default `treeai.readings`).
    pub readings: Option<String>,
    /// Alerts, output (default `treeai.alerts`).
    pub alerts: Option<String>,
    /// Rejected input, output (default `treeai.deadletter`).
    pub deadletter: Option<String>,
}

/// `[lake]`: where and how events, score changes, alerts and dead letters land.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LakeFile {
    /// Lake root: a local path or `file://`, `s3://`, `gs://`, `az://` URL (flag `--lake`,
    /// env `TREEAI_LAKE`); default `./lake`.
    pub url: Option<String>,
    /// `zstd` (default), `lz4` or `none` (flag `--lake-compression`).
    pub compression: Option<String>,
    /// Roll a file after this many bytes of input (flag `--lake-roll-bytes`); default 64 MiB.
    pub roll_bytes: Option<usize>,
    /// Roll a file after this many ms (flag `--lake-roll-ms`); default 60000.
    pub roll_ms: Option<u64>,
    /// `object_store` options, e.g. `aws_endpoint`, `aws_region`, `aws_allow_http`
    /// (the `AWS_*`, `GOOGLE_*`, `AZURE_*` environment variables are read too).
    #[serde(default)]
    pub options: std::collections::BTreeMap<String, String>,
}

/// `[generator]`: the embedded default source of `treeai run`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GeneratorFile {
    /// Trees (default 10,000).
    pub trees: Option<u64>,
    /// Field agents at normal capacity (default 30).
    pub agents: Option<u32>,
    /// Events per second, held in wall-clock time (default 10,000).
    pub rate: Option<f64>,
    /// `peak`, `moderate`, `low` or `emergency` (default `moderate`).
    pub season: Option<String>,
    /// Share of malformed events (default 0.001 for `run`).
    pub bad_fraction: Option<f64>,
    /// Random seed (default 1).
    pub seed: Option<u64>,
    /// Event time runs this many times faster than the wall clock (flag `--speedup`); default 1.
    pub speedup: Option<f64>,
}

impl FileConfig {
    /// Reads `path`, or the defaults when there is none.
    pub fn load(path: Option<&Path>) -> anyhow::Result<Self> {
        let Some(path) = path else {
            return Ok(FileConfig::default());
        };
        let text = std::fs::read_to_string(path).with_context(|| format!("reading config {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("config {}", path.display()))
    }
}
