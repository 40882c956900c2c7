//! `treeai run`'s SQL endpoint: flags, and starting the servers.

use crate::config::FileConfig;
use anyhow::Context;
use clap::Args;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use treeai_dataflows::runtime::Stats;
use treeai_dataflows::store::Catalog;
use treeai_sql::ingest::{IngestLimits, IngestTarget};
use treeai_sql::metrics::Metrics;
use treeai_sql::{Engine, SqlConfig};

/// `POST /v1/events` into the local ingest log.
pub struct LogTarget(pub Arc<treeai_connectors::ingest::IngestLog>);

impl IngestTarget for LogTarget {
    fn submit(&self, lines: &[&[u8]], key: Option<(&str, &str)>) -> Result<Option<String>, String> {
        self.0.append(lines, key).map_err(|e| e.to_string())
    }

    fn replay(&self, key: &str) -> Option<String> {
        self.0.replay(key)
    }
}

/// `POST /v1/events` into the Kafka input topics.
pub struct KafkaTarget(pub treeai_connectors::kafka::ingest::KafkaIngest);

impl IngestTarget for KafkaTarget {
    fn submit(&self, lines: &[&[u8]], key: Option<(&str, &str)>) -> Result<Option<String>, String> {
        self.0.submit(lines, key)
    }

    fn replay(&self, key: &str) -> Option<String> {
        self.0.replay(key)
    }
}

/// Flags of the SQL endpoint (each also a config key and a `TREEAI_*` variable).
#[derive(Args)]
pub struct SqlArgs {
    /// Postgres wire protocol address (psql -h HOST -p PORT) [default: 127.0.0.1:6875].
    #[arg(long, env = "TREEAI_SQL_ADDR")]
    sql_addr: Option<String>,
    /// HTTP address: POST /v1/sql, GET /metrics, /healthz, /readyz [default: 127.0.0.1:8080].
    #[arg(long, env = "TREEAI_HTTP_ADDR")]
    http_addr: Option<String>,
    /// Time limit of one SQL statement, ms [default: 30000].
    #[arg(long, env = "TREEAI_SQL_TIMEOUT_MS")]
    sql_timeout_ms: Option<u64>,
    /// Memory pool of all running SQL queries, MiB [default: 1024].
    #[arg(long, env = "TREEAI_SQL_MEMORY_LIMIT_MB")]
    sql_memory_limit_mb: Option<usize>,
    /// Most rows one HTTP /v1/sql answer carries [default: 100000].
    #[arg(long, env = "TREEAI_HTTP_MAX_ROWS")]
    http_max_rows: Option<usize>,
    /// Postgres wire connections open at once; one more is refused (53300) [default: 256].
    #[arg(long, env = "TREEAI_SQL_MAX_CONNECTIONS")]
    sql_max_connections: Option<usize>,
    /// Close a Postgres wire session with no traffic either way for this long (57P05), ms;
    /// 0: never. Never shorter than --sql-timeout-ms + 5 s [default: 3600000].
    #[arg(long, env = "TREEAI_SQL_IDLE_TIMEOUT_MS")]
    sql_idle_timeout_ms: Option<u64>,
    /// Longest Postgres wire message, bytes; a longer one ends the connection (54000) before
    /// it is read [default: 4194304].
    #[arg(long, env = "TREEAI_SQL_MAX_MESSAGE_BYTES")]
    sql_max_message_bytes: Option<usize>,
    /// Host names HTTP answers to besides IP addresses and localhost (without --auth-file others
    /// are refused: DNS rebinding), and the hosts of browser origins it takes besides its own.
    #[arg(long, env = "TREEAI_HTTP_ALLOWED_HOSTS", value_delimiter = ',')]
    http_allowed_hosts: Vec<String>,
    /// Users and tokens (made by `treeai auth`): SQL then needs a SCRAM-SHA-256 login and HTTP a
    /// bearer token of the right role. The file is re-read when it changes.
    #[arg(long, env = "TREEAI_AUTH_FILE")]
    auth_file: Option<PathBuf>,
    /// PEM certificate chain: TLS on the Postgres endpoint and HTTPS (re-read when it changes).
    #[arg(long, env = "TREEAI_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "TREEAI_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Audit log (JSON lines) with --auth-file: a file to append to, or - for stdout [default: -].
    #[arg(long, env = "TREEAI_AUDIT_LOG")]
    audit_log: Option<String>,
    /// With --auth-file, GET /metrics needs a token too (any role).
    #[arg(long, env = "TREEAI_METRICS_AUTH")]
    metrics_auth: bool,
    /// POST /v1/events: events a second per token (per client address without --auth-file);
    /// bursts of ten seconds' worth [default: 1000].
    #[arg(long, env = "TREEAI_INGEST_RATE")]
    ingest_rate: Option<f64>,
    /// POST /v1/events: the largest body, bytes [default: 4194304].
    #[arg(long, env = "TREEAI_INGEST_MAX_BYTES")]
    ingest_max_bytes: Option<usize>,
    /// Allow --sql-addr or --http-addr on a non-loopback address without --auth-file.
    #[arg(long, env = "TREEAI_INSECURE_NO_AUTH")]
    insecure_no_auth: bool,
}

/// Whether `addr` (HOST:PORT) listens on loopback only.
fn is_loopback(addr: &str) -> bool {
    use std::net::ToSocketAddrs;
    match addr.to_socket_addrs() {
        Ok(mut addrs) => addrs.all(|a| a.ip().is_loopback()),
        Err(_) => false,
    }
}

/// Starts the SQL servers over `catalog`; they serve until the process ends.
#[allow(clippy::too_many_arguments)]
pub fn start(
    args: &SqlArgs,
    file: &FileConfig,
    catalog: &Arc<Catalog>,
    stats: &Arc<Stats>,
    source: &str,
    lake: Option<&treeai_connectors::lake::LakeConfig>,
    liveness_timeout: Duration,
    checkpoints: Option<Arc<treeai_dataflows::checkpoint::Checkpoints>>,
    ingest: Option<Arc<dyn IngestTarget>>,
) -> anyhow::Result<treeai_sql::server::SqlServer> {
    let d = SqlConfig::default();
    let config = SqlConfig {
        pg_addr: args.sql_addr.clone().or(file.sql_addr.clone()).unwrap_or(d.pg_addr),
        http_addr: args.http_addr.clone().or(file.http_addr.clone()).unwrap_or(d.http_addr),
        query_timeout: args.sql_timeout_ms.or(file.sql_timeout_ms).map_or(d.query_timeout, Duration::from_millis),
        memory_limit: args.sql_memory_limit_mb.or(file.sql_memory_limit_mb).map_or(d.memory_limit, |mb| mb << 20),
        http_max_rows: args.http_max_rows.or(file.http_max_rows).unwrap_or(d.http_max_rows),
        liveness_timeout,
        max_connections: args.sql_max_connections.or(file.sql_max_connections).unwrap_or(d.max_connections),
        idle_timeout: match args.sql_idle_timeout_ms.or(file.sql_idle_timeout_ms) {
            None => d.idle_timeout,
            Some(0) => None,
            Some(ms) => Some(Duration::from_millis(ms)),
        },
        max_message_bytes: args.sql_max_message_bytes.or(file.sql_max_message_bytes).unwrap_or(d.max_message_bytes),
        allowed_hosts: if args.http_allowed_hosts.is_empty() {
            file.http_allowed_hosts.clone().unwrap_or_default()
        } else {
            args.http_allowed_hosts.clone()
        },
    };
    let auth_file = args.auth_file.clone().or(file.auth_file.clone());
    let insecure = args.insecure_no_auth || file.insecure_no_auth.unwrap_or(false);
    if auth_file.is_none() && !insecure {
        for addr in [&config.pg_addr, &config.http_addr] {
            if !is_loopback(addr) {
                anyhow::bail!(
                    "{addr} is not a loopback address and there is no --auth-file: anyone who reaches it could \
                     query and administer the pipeline. Create users with `treeai auth add-user` and pass \
                     --auth-file, or say --insecure-no-auth"
                );
            }
        }
    }
    let metrics = Arc::new(Metrics::new(stats.clone(), catalog.clone(), source));
    let mut engine = Engine::new(catalog.clone(), config, metrics.clone()).context("starting the SQL engine")?;
    if let Some(lake) = lake {
        engine = engine.with_lake(&lake.url, &lake.options).context("opening the lake for SQL")?;
    }
    if let Some(hub) = checkpoints {
        engine = engine.with_checkpoints(hub);
    }
    if let Some(path) = auth_file {
        let credentials = treeai_sql::auth::Credentials::open(&path)?;
        let audit_to = args.audit_log.clone().or(file.audit_log.clone()).unwrap_or_else(|| "-".into());
        let audit = treeai_sql::audit::Audit::open(&audit_to)?;
        if let Some(lake) = lake {
            // The records also land in the lake as `lake.audit`.
            audit
                .land_in(&lake.url, &lake.options, Duration::from_secs(5))
                .map_err(|e| anyhow::anyhow!("audit table in the lake {}: {e}", lake.url))?;
        }
        let metrics_auth = args.metrics_auth || file.metrics_auth.unwrap_or(false);
        engine = engine.with_auth(credentials, audit, metrics_auth);
    }
    if let Some(target) = ingest {
        let d = IngestLimits::default();
        let limits = IngestLimits {
            max_bytes: args.ingest_max_bytes.or(file.ingest_max_bytes).unwrap_or(d.max_bytes),
            rate: args.ingest_rate.or(file.ingest_rate).unwrap_or(d.rate),
        };
        if !(limits.rate.is_finite() && limits.rate > 0.0) {
            anyhow::bail!("--ingest-rate must be a positive number");
        }
        engine = engine.with_ingest(target, limits);
    }
    match (args.tls_cert.clone().or(file.tls_cert.clone()), args.tls_key.clone().or(file.tls_key.clone())) {
        (Some(cert), Some(key)) => engine = engine.with_tls(treeai_sql::tls::TlsFiles { cert, key }),
        (None, None) => {}
        _ => anyhow::bail!("TLS needs both a certificate and a key (--tls-cert and --tls-key)"),
    }
    let engine = Arc::new(engine);
    treeai_sql::server::start(engine).context("starting the SQL servers")
}
