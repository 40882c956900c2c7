//! `treeai run`'s SQL endpoint: flags, and starting the servers.

use crate::config::FileConfig;
use anyhow::Context;
use clap::Args;
use std::sync::Arc;
use std::time::Duration;
use treeai_dataflows::runtime::Stats;
use treeai_dataflows::store::Catalog;
use treeai_sql::metrics::Metrics;
use treeai_sql::{Engine, SqlConfig};

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
) -> anyhow::Result<treeai_sql::server::SqlServer> {
    let d = SqlConfig::default();
    let config = SqlConfig {
        pg_addr: args.sql_addr.clone().or(file.sql_addr.clone()).unwrap_or(d.pg_addr),
        http_addr: args.http_addr.clone().or(file.http_addr.clone()).unwrap_or(d.http_addr),
        query_timeout: args.sql_timeout_ms.or(file.sql_timeout_ms).map_or(d.query_timeout, Duration::from_millis),
        memory_limit: args.sql_memory_limit_mb.or(file.sql_memory_limit_mb).map_or(d.memory_limit, |mb| mb << 20),
        http_max_rows: args.http_max_rows.or(file.http_max_rows).unwrap_or(d.http_max_rows),
        liveness_timeout,
    };
    let metrics = Arc::new(Metrics::new(stats.clone(), catalog.clone(), source));
    let mut engine = Engine::new(catalog.clone(), config, metrics.clone()).context("starting the SQL engine")?;
    if let Some(lake) = lake {
        engine = engine.with_lake(&lake.url, &lake.options).context("opening the lake for SQL")?;
    }
    if let Some(hub) = checkpoints {
        engine = engine.with_checkpoints(hub);
    }
    let engine = Arc::new(engine);
    treeai_sql::server::start(engine).context("starting the SQL servers")
}
