//! `treeai`: the TreeAI pipeline's one binary.

mod checkpoint_args;
mod cluster_args;
mod config;
mod kafka_args;
mod lake_args;
mod scale;
mod sql;
mod telemetry;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use config::FileConfig;
use serde_json::Value;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use treeai_connectors::generator::{Generator, GeneratorConfig, Season};
use treeai_connectors::pipeline::{run_bounded_to_lake, write_views, PipelineBuilder, KAFKA_ROUND};
use treeai_connectors::SourceSpec;
use treeai_dataflows::runtime::{RuntimeConfig, Stats};
use treeai_dataflows::store::Catalog;
use treeai_dataflows::time::{format_ts, parse_rfc3339};
use treeai_dataflows::VIEW_NAMES;

/// TreeAI: live urban-forest risk views (AFISS, TreeScore) from tree registry,
/// field assessments and IoT sensor streams.
#[derive(Parser)]
#[command(name = "treeai", version, about)]
struct Cli {
    /// Log lines (warnings, errors; more with `TREEAI_LOG=info`) on stderr as text, or as
    /// one JSON object per line for log collectors. The progress line stays text.
    #[arg(long, global = true, env = "TREEAI_LOG_FORMAT", value_enum, default_value = "text")]
    log_format: LogFormat,
    /// Export spans (HTTP requests, SQL statements, checkpoints; dataflow rounds with
    /// TREEAI_OTLP_FILTER=info,treeai_dataflows=debug) as OTLP/HTTP to this base URL, e.g.
    /// http://jaeger:4318 (sent to URL/v1/traces). Off by default.
    #[arg(long, global = true, env = "TREEAI_OTLP_ENDPOINT")]
    otlp_endpoint: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the pipeline. With no options: the embedded default (a built-in
    /// generator of trees, agents and sensors), until Ctrl-C. With --input: stream
    /// the files, then stay up with the final views until Ctrl-C.
    Run(Box<RunArgs>),
    /// Write the generator's events to Kafka (--brokers), or as NDJSON to stdout or --output.
    Produce(ProduceArgs),
    /// Run the dataflow over NDJSON files to their end and write the final views as Parquet.
    Backfill(BackfillArgs),
    /// Manage the users and bearer tokens of --auth-file.
    #[command(subcommand)]
    Auth(AuthCommand),
    /// The seasonal scaling policy (OPERATIONS.md): plan a region's cluster size, or apply it on Kubernetes.
    #[command(subcommand)]
    Scale(ScaleCommand),
}

/// `treeai scale`.
#[derive(Subcommand)]
enum ScaleCommand {
    /// Print the desired process count of a region at a time, and why.
    Plan(scale::PlanArgs),
    /// Resize the region's cluster on Kubernetes to the planned size (checkpoint, stop, start at the
    /// new size, wait until restored and ready); --dry-run prints the API calls instead.
    Apply(scale::ApplyArgs),
}

/// `treeai auth`: the credentials file holds SCRAM-SHA-256 verifiers and token hashes only.
#[derive(Subcommand)]
enum AuthCommand {
    /// Add (or replace) a user who logs in to SQL with a password, read from stdin (one line).
    AddUser {
        /// The user name (Postgres `user`).
        name: String,
        /// reader (SQL), ingest (POST /v1/events) or admin (everything, admin endpoints).
        #[arg(long)]
        role: treeai_sql::auth::Role,
        /// The credentials file (created if missing, written owner-only).
        #[arg(long)]
        file: PathBuf,
    },
    /// Add (or replace) a bearer token for HTTP; prints the token once on stdout.
    AddToken {
        /// A name for the token: who holds it (shown in the audit log).
        name: String,
        /// reader, ingest or admin.
        #[arg(long)]
        role: treeai_sql::auth::Role,
        /// The credentials file.
        #[arg(long)]
        file: PathBuf,
    },
    /// Remove the user and the token called NAME.
    Remove {
        /// The name.
        name: String,
        /// The credentials file.
        #[arg(long)]
        file: PathBuf,
    },
}

fn auth(command: AuthCommand) -> anyhow::Result<()> {
    use treeai_sql::auth::AuthFile;
    match command {
        AuthCommand::AddUser { name, role, file } => {
            let mut creds = AuthFile::load(&file)?;
            let mut password = String::new();
            if std::io::stdin().is_terminal() {
                eprint!("password for {name}: ");
            }
            std::io::stdin().read_line(&mut password).context("reading the password from stdin")?;
            let password = password.trim_end_matches(['\n', '\r']);
            creds.set_user(&name, role, password)?;
            creds.save(&file)?;
            eprintln!("user {name:?} ({}) saved in {}", role.name(), file.display());
        }
        AuthCommand::AddToken { name, role, file } => {
            let mut creds = AuthFile::load(&file)?;
            let token = creds.add_token(&name, role)?;
            creds.save(&file)?;
            println!("{token}");
            eprintln!("token {name:?} ({}) saved in {}; it is shown only now", role.name(), file.display());
        }
        AuthCommand::Remove { name, file } => {
            let mut creds = AuthFile::load(&file)?;
            if creds.remove(&name) == 0 {
                bail!("{}: no user or token called {name:?}", file.display());
            }
            creds.save(&file)?;
            eprintln!("{name:?} removed from {}", file.display());
        }
    }
    Ok(())
}

/// Flags shared by `run` and `backfill`. Each can also be set in the config
/// file and by the `TREEAI_*` environment variable named below.
#[derive(Args)]
struct CommonArgs {
    /// Timely worker threads in this process [default: number of cores].
    #[arg(long, env = "TREEAI_WORKERS")]
    workers: Option<usize>,
    /// Configuration file (TOML); see the README.
    #[arg(long, env = "TREEAI_CONFIG")]
    config: Option<PathBuf>,
    /// Allowed lateness of readings, ms [default: 5000].
    #[arg(long, env = "TREEAI_ALLOWED_LATENESS_MS")]
    allowed_lateness_ms: Option<i64>,
    /// A partition with no readings for this long is idle, ms [default: 30000].
    #[arg(long, env = "TREEAI_IDLE_TIMEOUT_MS")]
    idle_timeout_ms: Option<u64>,
}

#[derive(Args)]
struct RunArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// NDJSON files to stream instead of the generator.
    #[arg(long, num_args = 1.., env = "TREEAI_INPUT", value_delimiter = ',')]
    input: Vec<PathBuf>,
    /// Generator: trees [default: 10000].
    #[arg(long)]
    trees: Option<u64>,
    /// Generator: field agents at normal capacity [default: 30].
    #[arg(long)]
    agents: Option<u32>,
    /// Generator: events per second [default: 10000].
    #[arg(long)]
    rate: Option<f64>,
    /// Generator: season (peak, moderate, low, emergency) [default: moderate].
    #[arg(long)]
    season: Option<Season>,
    /// Generator: share of malformed events [default: 0.001].
    #[arg(long)]
    bad_fraction: Option<f64>,
    /// Generator: random seed [default: 1].
    #[arg(long)]
    seed: Option<u64>,
    /// Generator: event time runs this many times faster than the wall clock (60: one
    /// event-time hour per minute), at --rate events per wall-clock second [default: 1].
    #[arg(long)]
    speedup: Option<f64>,
    #[command(flatten)]
    sql: sql::SqlArgs,
    /// Local state that is not a checkpoint: the ingest log of POST /v1/events without Kafka
    /// (under DIR/ingest, created at the first post) [default: ./data].
    #[arg(long, env = "TREEAI_DATA_DIR")]
    data_dir: Option<PathBuf>,
    #[command(flatten)]
    lake: lake_args::LakeArgs,
    #[command(flatten)]
    kafka: kafka_args::KafkaArgs,
    #[command(flatten)]
    checkpoint: checkpoint_args::CheckpointArgs,
    #[command(flatten)]
    cluster: cluster_args::ClusterArgs,
    /// Post every critical and resolved alert to this URL (PagerDuty Events v2 and Slack
    /// incoming-webhook compatible JSON; retried with backoff, then dead-lettered under
    /// --data-dir/webhook/).
    #[arg(long, env = "TREEAI_WEBHOOK_URL")]
    webhook_url: Option<String>,
    /// PagerDuty integration key, sent as `routing_key` with each alert.
    #[arg(long, env = "TREEAI_WEBHOOK_ROUTING_KEY", hide_env_values = true)]
    webhook_routing_key: Option<String>,
    /// Attempts per alert before it is dead-lettered [default: 6].
    #[arg(long, env = "TREEAI_WEBHOOK_MAX_ATTEMPTS")]
    webhook_max_attempts: Option<u32>,
    /// SIGTERM, SIGINT or SIGHUP: stop the sources, drain, flush the lake and Kafka, write a final
    /// checkpoint, exit 0 within this many ms (else exit 1); a second signal exits at once
    /// [default: 25000].
    #[arg(long, env = "TREEAI_SHUTDOWN_TIMEOUT_MS")]
    shutdown_timeout_ms: Option<u64>,
    /// GET /healthz fails (503) when no dataflow round has completed for this many ms while the
    /// pipeline runs [default: 30000].
    #[arg(long, env = "TREEAI_LIVENESS_TIMEOUT_MS")]
    liveness_timeout_ms: Option<u64>,
}

#[derive(Args)]
struct ProduceArgs {
    /// Trees in the population.
    #[arg(long, default_value_t = 10_000)]
    trees: u64,
    /// Field agents at normal capacity.
    #[arg(long, default_value_t = 30)]
    agents: u32,
    /// Events per second of event time (timestamps advance at this rate; files are written as fast as possible).
    #[arg(long, default_value_t = 10_000.0)]
    rate: f64,
    /// Season: peak, moderate, low, emergency.
    #[arg(long, default_value = "moderate")]
    season: Season,
    /// Event-time span to produce, in seconds (count = rate × duration).
    #[arg(long, conflicts_with = "count")]
    duration: Option<f64>,
    /// Number of events to produce.
    #[arg(long)]
    count: Option<u64>,
    /// Share of malformed events in [0, 1].
    #[arg(long, default_value_t = 0.0)]
    bad_fraction: f64,
    /// Random seed: the same flags and seed give the same bytes.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Event time of the first event: RFC 3339, epoch ms, or `now`.
    #[arg(long, default_value = "2026-11-25T00:00:00Z")]
    start: String,
    /// Output file [default: stdout].
    #[arg(long, short, conflicts_with = "brokers")]
    output: Option<PathBuf>,
    /// With --brokers: send as fast as the brokers take the events instead of holding --rate
    /// in wall-clock time (timestamps still advance at --rate).
    #[arg(long)]
    no_pacing: bool,
    /// Kafka: with --brokers, events go to the input topics (keyed by tree_id) at --rate events/s
    /// of wall-clock time; without --count or --duration, until Ctrl-C.
    #[command(flatten)]
    kafka: kafka_args::KafkaArgs,
}

#[derive(Args)]
struct BackfillArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// NDJSON files (history).
    #[arg(long, num_args = 1.., required = true, value_delimiter = ',')]
    input: Vec<PathBuf>,
    /// Output directory: one folder per view, plus deadletter/.
    #[arg(long)]
    output: PathBuf,
    /// Also write the lake tables (events, score changes, alerts, dead letters) under this root:
    /// a local path or a file://, s3://, gs://, az:// URL.
    #[arg(long)]
    lake_output: Option<String>,
    /// Parquet compression: zstd, lz4 or none.
    #[arg(long, default_value = "zstd")]
    compression: String,
}

fn runtime_config(common: &CommonArgs, file: &FileConfig) -> anyhow::Result<RuntimeConfig> {
    let defaults = RuntimeConfig::default();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let workers = common.workers.or(file.workers).unwrap_or(cores);
    if workers == 0 {
        bail!("--workers must be at least 1");
    }
    let fault = match std::env::var("TREEAI_FAULT") {
        Ok(f) => Some(f.parse().map_err(|e| anyhow::anyhow!("TREEAI_FAULT: {e}"))?),
        Err(_) => None,
    };
    Ok(RuntimeConfig {
        fault,
        workers,
        allowed_lateness_ms: common
            .allowed_lateness_ms
            .or(file.allowed_lateness_ms)
            .unwrap_or(defaults.allowed_lateness_ms),
        idle_timeout: common
            .idle_timeout_ms
            .or(file.idle_timeout_ms)
            .map_or(defaults.idle_timeout, Duration::from_millis),
        ..defaults
    })
}

/// A flag that the first SIGINT, SIGTERM or SIGHUP sets (stop cleanly); a
/// second one exits at once (130). With `deadline`, a process that has not
/// stopped that long after the first signal exits with 1 and says so.
fn stop_on_signal(deadline: Option<Duration>) -> anyhow::Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    // Signals are counted apart from the stop flag: in a cluster the flag is also set when
    // another process is stopping, and this process's own first signal is still a first.
    let signaled = AtomicBool::new(false);
    ctrlc::set_handler(move || {
        flag.store(true, Ordering::SeqCst);
        if signaled.swap(true, Ordering::SeqCst) {
            eprintln!("\ntreeai: second signal: exiting at once");
            std::process::exit(130);
        }
        // Said, so a log shows why a process stopped (in a cluster its peers log whose stop
        // they follow).
        eprintln!(
            "\ntreeai: signal received (SIGINT, SIGTERM or SIGHUP): stopping cleanly; a second one exits at once"
        );
        if let Some(deadline) = deadline {
            std::thread::spawn(move || {
                std::thread::sleep(deadline);
                eprintln!("\ntreeai: did not stop within {} ms of the signal; exiting", deadline.as_millis());
                std::process::exit(1);
            });
        }
    })
    .context("installing the signal handler")?;
    Ok(stop)
}

/// A panic on a pipeline thread (a timely worker or communication thread,
/// the egress, the lake's threads) ends the process at once with one line
/// and exit code 70: the pipeline cannot go on without it, and waiting for it
/// would hang. A panic in a task of the SQL servers (threads `treeai-sql`: one
/// connection or request, which tokio catches) is logged and ends that task
/// only — a malformed client message must not stop the pipeline.
fn exit_on_pipeline_panic() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let name = std::thread::current().name().unwrap_or("").to_string();
        let message = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_default();
        if name == "treeai-sql" {
            // A task of the SQL servers (one connection, one request): tokio catches the panic and
            // ends that task only; the pipeline and the other clients go on.
            let at = info.location().map(|l| format!(" at {}:{}", l.file(), l.line())).unwrap_or_default();
            tracing::error!("a SQL or HTTP connection's task panicked{at}: {message}; that connection is closed");
            return;
        }
        if let Some(peer) = name.strip_prefix("timely:recv-").or(name.strip_prefix("timely:send-")) {
            // A link to another process of the cluster broke: it died, or the network failed.
            eprintln!(
                "\ntreeai: fatal: lost the link to cluster process {peer} ({message}); stopping — restart the \
                 cluster to resume from its newest checkpoint"
            );
            std::process::exit(70);
        }
        if name.starts_with("timely:") || name.starts_with("treeai-") {
            let at = info.location().map(|l| format!(" at {}:{}", l.file(), l.line())).unwrap_or_default();
            eprintln!("\ntreeai: fatal: thread '{name}' panicked{at}: {message}");
            std::process::exit(70);
        }
        default(info);
    }));
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

fn main() {
    let cli = Cli::parse();
    let telemetry = match telemetry::init(matches!(cli.log_format, LogFormat::Json), cli.otlp_endpoint.as_deref()) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("treeai: {e:#}");
            std::process::exit(1);
        }
    };
    exit_on_pipeline_panic();
    let result = match cli.command {
        Command::Run(args) => run(*args),
        Command::Produce(args) => produce(args),
        Command::Backfill(args) => backfill(args),
        Command::Auth(command) => auth(command),
        Command::Scale(command) => scale_command(command),
    };
    telemetry.shutdown();
    if let Err(e) = result {
        eprintln!("treeai: {e:#}");
        std::process::exit(1);
    }
}

fn run(args: RunArgs) -> anyhow::Result<()> {
    let file = FileConfig::load(args.common.config.as_deref())?;
    let mut config = runtime_config(&args.common, &file)?;
    config.cluster = args.cluster.config(&file.cluster)?;
    if let Some(c) = &config.cluster {
        eprintln!(
            "treeai run: process {} of a cluster of {} ({} workers each, {} in all); peers {}",
            c.process,
            c.processes,
            config.workers,
            config.workers * c.processes,
            c.peers.join(",")
        );
    }
    let input = if args.input.is_empty() { file.input.clone().unwrap_or_default() } else { args.input.clone() };
    let kafka = args.kafka.config(&file.kafka)?;
    if kafka.is_some() && !input.is_empty() {
        bail!("give either --input files or --brokers, not both");
    }
    let source_label = if kafka.is_some() {
        "kafka"
    } else if input.is_empty() {
        "generator"
    } else {
        "file"
    };
    let source = if let Some(kafka) = &kafka {
        eprintln!(
            "treeai run: Kafka at {} — topics {}, {}, {} from the {:?} offsets, {} workers; Ctrl-C stops",
            kafka.brokers,
            kafka.topics.trees,
            kafka.topics.assessments,
            kafka.topics.readings,
            kafka.start,
            config.workers
        );
        SourceSpec::Kafka { config: kafka.clone(), stats: Default::default() }
    } else if input.is_empty() {
        let g = &file.generator;
        let season = match (&args.season, &g.season) {
            (Some(s), _) => *s,
            (None, Some(s)) => s.parse().map_err(|e| anyhow::anyhow!("config generator.season: {e:?}"))?,
            (None, None) => Season::Moderate,
        };
        let speedup = args.speedup.or(g.speedup).unwrap_or(1.0);
        if !(speedup.is_finite() && speedup > 0.0) {
            bail!("--speedup must be a positive number");
        }
        let gen = GeneratorConfig {
            trees: args.trees.or(g.trees).unwrap_or(10_000),
            agents: args.agents.or(g.agents).unwrap_or(30),
            // Events per second of event time: the wall-clock rate spread over `speedup` times the time.
            rate: args.rate.or(g.rate).unwrap_or(10_000.0) / speedup,
            season,
            bad_fraction: args.bad_fraction.or(g.bad_fraction).unwrap_or(0.001),
            seed: args.seed.or(g.seed).unwrap_or(1),
            start_ms: now_ms(),
        };
        if !(gen.rate.is_finite() && gen.rate > 0.0) {
            bail!("--rate must be a positive number");
        }
        eprintln!(
            "treeai run: embedded default — generator of {} trees, {} agents, {} events/s ({} season){}, {} workers; Ctrl-C stops",
            gen.trees,
            gen.agents,
            gen.rate * speedup,
            gen.season,
            if speedup == 1.0 { String::new() } else { format!(", event time ×{speedup}") },
            config.workers
        );
        SourceSpec::Generator { config: gen, paced: true, count: None, speedup }
    } else {
        for p in &input {
            std::fs::metadata(p).with_context(|| format!("input {}", p.display()))?;
        }
        eprintln!("treeai run: streaming {} file(s) with {} workers; Ctrl-C stops", input.len(), config.workers);
        SourceSpec::Files(input)
    };

    let shutdown_timeout =
        Duration::from_millis(args.shutdown_timeout_ms.or(file.shutdown_timeout_ms).unwrap_or(25_000));
    let shutdown = stop_on_signal(Some(shutdown_timeout))?;
    let lake_config = args.lake.config(&file.lake, None)?;
    if let Some(lake) = &lake_config {
        eprintln!("treeai run: lake at {}", lake.url);
    }
    if let Some(kafka) = &kafka {
        eprintln!("treeai run: alerts to {}, dead letters to {}", kafka.topics.alerts, kafka.topics.deadletter);
    }
    // Kafka: a backlog is worked off in large rounds (a live stream's rounds hold what arrived).
    let config = if kafka.is_some() { RuntimeConfig { batch: KAFKA_ROUND, ..config } } else { config };
    let checkpoints = args.checkpoint.config(&file.checkpoint, lake_config.as_ref());
    match &checkpoints {
        Some(c) => {
            eprintln!("treeai run: checkpoints every {} ms to {} (keeping {})", c.interval.as_millis(), c.url, c.kept)
        }
        None => eprintln!("treeai run: no checkpoints (a restart replays the sources)"),
    }
    // POST /v1/events: into the local ingest log, read beside the generator; with Kafka into
    // the input topics; a bounded input takes none.
    let mut ingest_log = None;
    let ingest: Option<Arc<dyn treeai_sql::ingest::IngestTarget>> = match &source {
        // The local ingest log is read by worker 0 of process 0 only: a cluster takes posts through Kafka.
        SourceSpec::Generator { count: None, .. } if config.cluster.is_some() => None,
        SourceSpec::Generator { count: None, .. } => {
            let dir = args.data_dir.clone().or(file.data_dir.clone()).unwrap_or_else(|| PathBuf::from("data"));
            let log = treeai_connectors::ingest::IngestLog::new(&dir.join("ingest"))?;
            ingest_log = Some(log.clone());
            Some(Arc::new(sql::LogTarget(log)))
        }
        SourceSpec::Kafka { config, stats } => {
            let dir = args.data_dir.clone().or(file.data_dir.clone()).unwrap_or_else(|| PathBuf::from("data"));
            // Not under ingest/: that folder holds the local ingest log's segments.
            let keys = dir.join("kafka-ingest-keys.ndjson");
            let producer = treeai_connectors::kafka::ingest::KafkaIngest::new(config, stats.clone(), Some(keys))
                .map_err(|e| anyhow::anyhow!(e))?;
            Some(Arc::new(sql::KafkaTarget(producer)))
        }
        _ => None,
    };
    let data_dir = args.data_dir.clone().or(file.data_dir.clone()).unwrap_or_else(|| PathBuf::from("data"));
    let webhook = match args.webhook_url.clone().or(file.webhook.url.clone()) {
        Some(url) => {
            let mut w = treeai_connectors::webhook::WebhookConfig::new(url, &data_dir);
            w.routing_key = args.webhook_routing_key.clone().or(file.webhook.routing_key.clone());
            if let Some(n) = args.webhook_max_attempts.or(file.webhook.max_attempts) {
                w.max_attempts = n.max(1);
            }
            eprintln!("treeai run: alerts to the webhook {}", w.url);
            Some(w)
        }
        None => None,
    };
    let clustered = config.cluster.as_ref().is_some_and(|c| c.processes > 1);
    let pipeline = PipelineBuilder::new(source, config)
        .webhook(webhook)
        .ingest(ingest_log)
        .lake(lake_config.clone())
        .kafka_output(kafka.clone())
        .checkpoints(checkpoints)
        .shutdown(shutdown.clone())
        .start()?;
    if let Some(restore) = pipeline.checkpoints().as_ref().and_then(|h| h.restore().cloned()) {
        let rows: usize = restore.workers.iter().map(|w| w.rows()).sum();
        eprintln!(
            "treeai run: resumed from checkpoint {} ({} workers, {rows} rows of state)",
            restore.number,
            restore.workers.len()
        );
    }
    let (catalog, stats) = (pipeline.catalog().clone(), pipeline.stats().clone());
    let liveness = Duration::from_millis(args.liveness_timeout_ms.or(file.liveness_timeout_ms).unwrap_or(30_000));
    let server = sql::start(
        &args.sql,
        &file,
        &catalog,
        &stats,
        source_label,
        lake_config.as_ref(),
        liveness,
        pipeline.checkpoints(),
        ingest,
    )
    .inspect_err(|e| {
        if clustered {
            // A clean stop would spread to the peers, which would then exit 0 as if asked to
            // stop: leave instead, so they fail fast on the lost peer and the cluster is
            // restarted from its last checkpoint.
            eprintln!("treeai run: {e:#}; leaving the cluster");
            std::process::exit(1);
        }
        pipeline.stop()
    })?;
    eprintln!(
        "treeai run: SQL on postgres://treeai@{} (psql -h {} -p {} -U treeai), HTTP on http://{}",
        server.pg_addr,
        server.pg_addr.ip(),
        server.pg_addr.port(),
        server.http_addr
    );
    let progress = {
        let (catalog, stats, shutdown, finished) =
            (catalog.clone(), stats.clone(), shutdown.clone(), pipeline.finished_flag().clone());
        let kafka_stats = pipeline.kafka_stats().cloned();
        std::thread::spawn(move || progress_loop(&catalog, &stats, kafka_stats.as_deref(), &shutdown, &finished))
    };
    pipeline.join()?;
    if !shutdown.load(Ordering::SeqCst) {
        eprintln!("\ntreeai run: input complete — {}; staying up (Ctrl-C stops)", summary(&catalog, &stats));
        while !shutdown.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let _ = progress.join();
    server.audit.flush();
    eprintln!("\ntreeai run: stopped — {}", summary(&catalog, &stats));
    Ok(())
}

fn summary(catalog: &Catalog, stats: &Stats) -> String {
    let snap = catalog.snapshot();
    let sizes = snap.views.sizes();
    let views: Vec<String> = VIEW_NAMES.iter().zip(sizes).map(|(n, s)| format!("{n}={s}")).collect();
    format!(
        "events {} (rejected {}), watermark {}, alerts {}, rows: {}",
        stats.events_read.load(Ordering::Relaxed),
        stats.events_rejected.load(Ordering::Relaxed),
        snap.watermark.map_or("none".into(), format_ts),
        stats.alerts.load(Ordering::Relaxed),
        views.join(" ")
    )
}

fn progress_loop(
    catalog: &Catalog,
    stats: &Stats,
    kafka: Option<&treeai_connectors::kafka::KafkaStats>,
    shutdown: &AtomicBool,
    finished: &AtomicBool,
) {
    let tty = std::io::stderr().is_terminal();
    let every = if tty { Duration::from_secs(1) } else { Duration::from_secs(2) };
    let mut last = (Instant::now(), 0u64);
    while !shutdown.load(Ordering::SeqCst) && !finished.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(100));
        if last.0.elapsed() < every {
            continue;
        }
        let read = stats.events_read.load(Ordering::Relaxed);
        let rate = (read - last.1) as f64 / last.0.elapsed().as_secs_f64();
        last = (Instant::now(), read);
        let mut line = format!("{:>9.0} ev/s | {}", rate, summary(catalog, stats));
        if let Some(k) = kafka {
            let errors = k.errors.load(Ordering::Relaxed);
            if errors > 0 {
                let last = k.last_error.lock().unwrap_or_else(|p| p.into_inner()).clone().unwrap_or_default();
                line.push_str(&format!(" | kafka errors {errors} (last: {last})"));
            }
        }
        let mut err = std::io::stderr();
        if tty {
            let _ = write!(err, "\r\x1b[2K{line}");
        } else {
            let _ = writeln!(err, "{line}");
        }
        let _ = err.flush();
    }
}

fn produce(args: ProduceArgs) -> anyhow::Result<()> {
    if !(args.rate.is_finite() && args.rate > 0.0) {
        bail!("--rate must be a positive number");
    }
    if !(0.0..=1.0).contains(&args.bad_fraction) {
        bail!("--bad-fraction must lie in [0, 1]");
    }
    let start_ms = match args.start.as_str() {
        "now" => now_ms(),
        s => s
            .parse::<i64>()
            .ok()
            .or_else(|| parse_rfc3339(s))
            .with_context(|| format!("--start {s:?} is not RFC 3339, epoch ms or now"))?,
    };
    let count = match (args.count, args.duration) {
        (Some(c), _) => Some(c),
        (None, Some(d)) if d >= 0.0 => Some((d * args.rate) as u64),
        (None, Some(_)) => bail!("--duration must not be negative"),
        (None, None) => None,
    };
    let kafka = args.kafka.config(&config::KafkaFile::default())?;
    let config = GeneratorConfig {
        trees: args.trees,
        agents: args.agents,
        rate: args.rate,
        season: args.season,
        bad_fraction: args.bad_fraction,
        seed: args.seed,
        start_ms,
    };
    if let Some(kafka) = kafka {
        return produce_kafka(&kafka, config, count, (!args.no_pacing).then_some(args.rate));
    }
    let Some(count) = count else { bail!("give --count or --duration (or --brokers to produce until Ctrl-C)") };
    let out: Box<dyn Write> = match &args.output {
        Some(p) => Box::new(std::fs::File::create(p).with_context(|| format!("creating {}", p.display()))?),
        None => Box::new(std::io::stdout().lock()),
    };
    let mut out = std::io::BufWriter::with_capacity(1 << 20, out);
    let started = Instant::now();
    for event in Generator::new(config, 0, 1).take(count as usize) {
        out.write_all(&event.json)?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    if args.output.is_some() {
        let secs = started.elapsed().as_secs_f64();
        eprintln!("treeai produce: {count} events in {secs:.2}s ({:.0} events/s)", count as f64 / secs.max(1e-9));
    }
    Ok(())
}

fn produce_kafka(
    kafka: &treeai_connectors::kafka::KafkaConfig,
    config: GeneratorConfig,
    count: Option<u64>,
    rate: Option<f64>,
) -> anyhow::Result<()> {
    let stop = stop_on_signal(None)?;
    let target = rate.map_or("as fast as possible".to_string(), |r| format!("{r:.0} events/s"));
    eprintln!(
        "treeai produce: {} events to {} ({}, {}, {}), {target}",
        count.map_or("unbounded".to_string(), |c| c.to_string()),
        kafka.brokers,
        kafka.topics.trees,
        kafka.topics.assessments,
        kafka.topics.readings
    );
    let events = Generator::new(config, 0, 1).take(count.map_or(usize::MAX, |c| c as usize));
    let report = treeai_connectors::kafka::produce::produce(kafka, events, rate, &stop, |r| {
        eprintln!(
            "treeai produce: sent {}, delivered {} ({:.0} events/s), delivery errors {}",
            r.sent,
            r.delivered,
            r.rate(),
            r.failed
        );
    })
    .map_err(anyhow::Error::msg)?;
    eprintln!(
        "treeai produce: {} sent, {} delivered; sent at {:.0} events/s (target {target}), \
         all acknowledged after {:.2}s ({:.0} events/s); {} delivery errors",
        report.sent,
        report.delivered,
        report.send_rate(),
        report.seconds,
        report.rate(),
        report.failed
    );
    if report.failed > 0 || report.delivered < report.sent {
        bail!("{} of {} events were not delivered", report.sent - report.delivered, report.sent);
    }
    Ok(())
}

fn backfill(args: BackfillArgs) -> anyhow::Result<()> {
    let file = FileConfig::load(args.common.config.as_deref())?;
    let config =
        RuntimeConfig { batch: treeai_connectors::pipeline::BATCH_ROUND, ..runtime_config(&args.common, &file)? };
    let codec = lake_args::codec(&args.compression)?;
    for p in &args.input {
        std::fs::metadata(p).with_context(|| format!("input {}", p.display()))?;
    }
    let started = Instant::now();
    let lake = args.lake_output.as_ref().map(|url| treeai_connectors::lake::LakeConfig {
        url: url.clone(),
        compression: codec,
        options: file.lake.options.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        ..Default::default()
    });
    let result = run_bounded_to_lake(SourceSpec::Files(args.input.clone()), config, lake)?;
    let rows = write_views(&args.output, &result, codec)?;
    let rows: Vec<String> = rows.iter().map(|(n, r)| format!("{n}={r}")).collect();
    println!(
        "backfill: {} events read, {} rejected, watermark {}, {:.2}s; rows: {}",
        result.stats.events_read.load(Ordering::Relaxed),
        result.stats.events_rejected.load(Ordering::Relaxed),
        result.watermark.map_or("none".into(), format_ts),
        started.elapsed().as_secs_f64(),
        rows.join(" ")
    );
    Ok(())
}

/// What `treeai scale` talks through, made once per command: one runtime (also for kube-rs)
/// and one HTTP client for Prometheus and the pipeline.
struct ScaleIo {
    runtime: tokio::runtime::Runtime,
    http: reqwest::Client,
}

impl ScaleIo {
    fn new() -> anyhow::Result<Self> {
        Ok(ScaleIo {
            runtime: tokio::runtime::Builder::new_current_thread().enable_all().build()?,
            http: reqwest::Client::builder().timeout(Duration::from_secs(30)).build().context("HTTP client")?,
        })
    }

    /// One HTTP call to Prometheus or to the pipeline: `(status, body as JSON or Null)`;
    /// `bearer` is the pipeline's admin token. (Kubernetes calls go through kube-rs:
    /// [`kube_call`].)
    fn http(&self, method: &str, url: &str, bearer: Option<&str>) -> anyhow::Result<(u16, Value)> {
        self.runtime.block_on(async {
            let method = reqwest::Method::from_bytes(method.as_bytes()).context("HTTP method")?;
            let mut request = self.http.request(method, url);
            if let Some(token) = bearer {
                request = request.bearer_auth(token);
            }
            let response = request.send().await.with_context(|| url.to_string())?;
            let status = response.status().as_u16();
            let bytes = response.bytes().await.with_context(|| url.to_string())?;
            Ok((status, serde_json::from_slice(&bytes).unwrap_or(Value::Null)))
        })
    }
}

/// The Kubernetes client of `treeai scale apply` (kube-rs). Without `--kube-api`, kube's
/// `Config::infer`: the kubeconfig (`KUBECONFIG` or `~/.kube/config`, with its contexts and auth
/// plugins), else in a pod its service account (token, cluster CA, `KUBERNETES_SERVICE_HOST`).
/// `--kube-api URL` names an API server that needs no credentials of ours instead, such as
/// `kubectl proxy`'s `http://127.0.0.1:8001`.
async fn kube_client(api: Option<&str>) -> anyhow::Result<kube::Client> {
    let config = match api {
        Some(url) => kube::Config::new(url.parse().with_context(|| format!("--kube-api {url}"))?),
        None => kube::Config::infer().await.context(
            "no Kubernetes configuration: neither a kubeconfig (KUBECONFIG, ~/.kube/config) nor a pod's \
             service account; give --kube-api (e.g. `kubectl proxy` and http://127.0.0.1:8001)",
        )?,
    };
    kube::Client::try_from(config).context("Kubernetes client")
}

/// One Kubernetes call of `apply`, made with kube-rs' typed API (the request `--dry-run` prints
/// for the step): `(status, the object or list as JSON)`. An answer of the API server that is
/// an error (403, 404, 409, ...) is `(its code, Null)`, so a wait repeats and a call stops
/// with the code; a failure to reach the server is an error.
async fn kube_call(
    client: &kube::Client,
    target: &scale::ApplyTarget,
    step: &scale::Step,
) -> anyhow::Result<(u16, Value)> {
    use k8s_openapi::api::{apps::v1::StatefulSet, core::v1::Pod};
    use kube::api::{Api, ListParams, Patch, PatchParams};
    let sets: Api<StatefulSet> = Api::namespaced(client.clone(), &target.namespace);
    let answer = match step.kind {
        scale::StepKind::Stop | scale::StepKind::Start => {
            let body = step.body.as_ref().context("a PATCH without a body")?;
            sets.patch(&target.statefulset, &PatchParams::default(), &Patch::Strategic(body))
                .await
                .map(|sts| serde_json::to_value(sts).unwrap_or(Value::Null))
        }
        scale::StepKind::WaitStopped => {
            let pods: Api<Pod> = Api::namespaced(client.clone(), &target.namespace);
            pods.list(&ListParams::default().labels(&target.pod_selector))
                .await
                .map(|list| serde_json::json!({ "items": list.items }))
        }
        scale::StepKind::WaitReady => {
            sets.get(&target.statefulset).await.map(|sts| serde_json::to_value(sts).unwrap_or(Value::Null))
        }
        scale::StepKind::Checkpoint | scale::StepKind::CheckReady => bail!("{step}: not a Kubernetes call"),
    };
    match answer {
        Ok(body) => Ok((200, body)),
        Err(kube::Error::Api(status)) => Ok((status.code, Value::Null)),
        Err(e) => Err(anyhow::Error::new(e).context(format!("{} {}", step.method, step.url))),
    }
}

/// The signals of the plan: the flags, then what Prometheus (`--metrics`) says.
fn scale_signals(io: &ScaleIo, args: &scale::PlanArgs, policy: &scale::Policy) -> anyhow::Result<scale::Signals> {
    let mut signals = args.signals();
    if let Some(url) = &args.metrics {
        let mut answers = Vec::new();
        for (signal, query) in scale::prometheus_queries(policy, Some(&args.namespace())) {
            let (status, body) = io.http("GET", &scale::prometheus_query_url(url, &query, Some(args.at())), None)?;
            if status != 200 && body.is_null() {
                bail!("prometheus: {signal}: HTTP {status}");
            }
            answers.push((signal, body));
        }
        signals = signals.merge(scale::signals_from_prometheus(&answers)?);
    }
    Ok(signals)
}

fn scale_command(command: ScaleCommand) -> anyhow::Result<()> {
    match command {
        ScaleCommand::Plan(args) => {
            let policy = args.load_policy()?;
            let signals = scale_signals(&ScaleIo::new()?, &args, &policy)?;
            let decision = scale::plan(&policy, args.at(), &args.region, &signals)?;
            if args.json {
                println!("{}", serde_json::to_string(&decision)?);
            } else {
                println!("{decision}");
            }
        }
        ScaleCommand::Apply(args) => {
            let policy = args.plan.load_policy()?;
            let target = args.target();
            let io = ScaleIo::new()?;
            let runtime = &io.runtime;
            // The StatefulSet (current size, last change, storm flag); a dry run given --current
            // plans without asking Kubernetes.
            let mut client = None;
            let (current, signals) = match (args.dry_run, args.plan.current) {
                (true, Some(current)) => (current, scale_signals(&io, &args.plan, &policy)?),
                _ => {
                    let kube = runtime.block_on(kube_client(args.kube_api.as_deref()))?;
                    let sets: kube::Api<k8s_openapi::api::apps::v1::StatefulSet> =
                        kube::Api::namespaced(kube.clone(), &target.namespace);
                    let sts = runtime
                        .block_on(sets.get(&target.statefulset))
                        .with_context(|| format!("GET {}", target.statefulset_url()))?;
                    let state = scale::StatefulSetState::from_json(&serde_json::to_value(sts)?, &target)?;
                    if let Some(why) = state.problem(&target) {
                        bail!("not resizing {}: {why}", target.statefulset);
                    }
                    client = Some(kube);
                    (state.replicas, state.signals().merge(scale_signals(&io, &args.plan, &policy)?))
                }
            };
            let decision = scale::plan(&policy, args.plan.at(), &args.plan.region, &signals)?;
            let steps = scale::apply_steps(&decision, current, &target);
            if args.dry_run {
                print!("{}", scale::dry_run_text(&decision, current, &steps));
                return Ok(());
            }
            let client = client.context("no Kubernetes client")?;
            println!("{decision}");
            let started = Instant::now();
            for step in &steps {
                let deadline = Instant::now() + Duration::from_secs(540);
                loop {
                    let (status, body) = match step.api {
                        scale::Api::Kubernetes => runtime.block_on(kube_call(&client, &target, step)),
                        scale::Api::Pipeline => io.http(step.method, &step.url, args.token.as_deref()),
                    }
                    .with_context(|| format!("{step}"))?;
                    if step.done(status, &body) {
                        break;
                    }
                    if step.until.is_none() || Instant::now() > deadline {
                        bail!("{step}: HTTP {status} {body}");
                    }
                    std::thread::sleep(Duration::from_secs(2));
                }
                eprintln!("treeai scale: {:.1} s: done: {step}", started.elapsed().as_secs_f64());
            }
        }
    }
    Ok(())
}
