//! SQL over the live views: a DataFusion engine ([`Engine`]) served over the
//! Postgres wire protocol ([`pg`]) and HTTP ([`http`]), with Prometheus
//! metrics ([`metrics`]).
//!
//! Every statement takes one `Arc<Snapshot>` of the catalog (O(1)), puts it
//! in its clone of the prepared session, and every table scan of the
//! statement reads that snapshot alone ([`provider`]), so a query reads all
//! six live views at one dataflow time. A scan ([`scan::ViewScanExec`])
//! builds its record batches while the query runs, one batch per poll,
//! reserved in the memory pool, yielding between batches, so a scan of a
//! large view neither copies the view nor escapes the time limit or a cancel.
//!
//! The endpoint is read-only: queries (`SELECT`, `WITH`, `VALUES`, `EXPLAIN`
//! of a query, `SHOW`) run; `BEGIN`/`COMMIT`/`ROLLBACK`, `DISCARD` and `SET` of the
//! harmless client settings that drivers send ([`HARMLESS_SETTINGS`]) are
//! accepted and do nothing; everything else is refused with SQLSTATE 25006.
//! Each statement has a time limit ([`SqlConfig::query_timeout`], SQLSTATE
//! 57014) and the engine a memory pool ([`SqlConfig::memory_limit`],
//! SQLSTATE 53200). Without `--auth-file` any user name is accepted; with it,
//! users log in with SCRAM-SHA-256 and HTTP needs bearer tokens ([`auth`]),
//! audited ([`audit`]); `--tls-cert`/`--tls-key` put both endpoints behind
//! TLS ([`tls`]).
//!
//! Postgres clients' catalog queries (psql's `\dt` and `\d`, drivers and BI
//! tools reading `pg_catalog`) work through the `datafusion-pg-catalog` crate:
//! schema `pg_catalog` (`pg_class`, `pg_namespace`, `pg_attribute`, `pg_type`,
//! …, listing the live views and the lake tables) with the functions those
//! queries call (`pg_table_is_visible`, `format_type`, …). A statement that
//! names something `pg_…`, casts `::reg…` or calls `current_setting` (in its
//! SQL, not in strings or comments) goes through that crate's
//! Postgres-compatibility parser, which rewrites what DataFusion cannot plan
//! (`OPERATOR(pg_catalog.~)`, `COLLATE`, known client queries); other
//! statements are parsed by DataFusion unchanged.

pub mod audit;
pub mod auth;
pub mod error;
pub mod http;
pub mod idle;
pub mod ingest;
pub mod lake;
pub mod limits;
pub mod metrics;
pub mod pg;
pub mod provider;
pub mod scan;
pub mod server;
pub mod tls;

pub use error::SqlError;

use arrow::array::{ArrayRef, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::record_batch::RecordBatch;
use datafusion::catalog::{CatalogProvider, CatalogProviderList, MemoryCatalogProvider, MemoryCatalogProviderList};
use datafusion::common::{ParamValues, ScalarValue};
use datafusion::execution::disk_manager::{DiskManagerBuilder, DiskManagerMode};
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryReservation};
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::execution::FunctionRegistry;
use datafusion::execution::SessionStateBuilder;
use datafusion::logical_expr::LogicalPlan;
use datafusion::logical_expr::{create_udf, ColumnarValue, Volatility};
use datafusion::physical_plan::execute_stream;
use datafusion::prelude::{SQLOptions, SessionConfig, SessionContext};
use datafusion::sql::parser::{DFParserBuilder, Statement as DfStatement};
use datafusion::sql::sqlparser::ast::{Set, Statement as AstStatement};
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion_pg_catalog::pg_catalog::context::EmptyContextProvider;
use datafusion_pg_catalog::sql::PostgresCompatibilityParser;
use futures::StreamExt;
use std::sync::Arc;
use std::time::{Duration, Instant};
use treeai_dataflows::store::{Catalog, Snapshot};

pub use datafusion::execution::SessionState;

/// Limits and addresses of the SQL endpoint.
#[derive(Clone, Debug)]
pub struct SqlConfig {
    /// Postgres wire protocol listen address (default `127.0.0.1:6875`).
    pub pg_addr: String,
    /// HTTP listen address (default `127.0.0.1:8080`).
    pub http_addr: String,
    /// Time limit of one statement, planning and execution (default 30 s).
    pub query_timeout: Duration,
    /// Memory pool of all running queries together, bytes (default 1 GiB).
    /// Operators that would spill fail instead (no temporary files). A scan
    /// of a view counts the batch it has just built.
    pub memory_limit: usize,
    /// Most rows an HTTP response carries (default 100,000); more are cut and
    /// the response says `"truncated": true`.
    pub http_max_rows: usize,
    /// `GET /healthz` fails when the running dataflow has completed no round
    /// for this long (default 30 s).
    pub liveness_timeout: Duration,
    /// Postgres wire connections open at once (default 256); one more is refused with 53300.
    pub max_connections: usize,
    /// A Postgres wire session with no byte either way for this long is closed with 57P05
    /// (default 1 h; `None`: never; never shorter than `query_timeout` + 5 s). See [`pg::wire`].
    pub idle_timeout: Option<Duration>,
    /// Longest Postgres wire message after start-up, bytes (default 4 MiB); a longer one ends
    /// the connection with 54000 before it is read.
    pub max_message_bytes: usize,
    /// Host names HTTP answers to besides IP addresses and `localhost`, and the origins of
    /// browsers' requests it takes besides its own (`--http-allowed-hosts`; see [`http`]).
    pub allowed_hosts: Vec<String>,
}

impl Default for SqlConfig {
    fn default() -> Self {
        SqlConfig {
            pg_addr: "127.0.0.1:6875".into(),
            http_addr: "127.0.0.1:8080".into(),
            query_timeout: Duration::from_secs(30),
            memory_limit: 1 << 30,
            http_max_rows: 100_000,
            liveness_timeout: Duration::from_secs(30),
            max_connections: 256,
            idle_timeout: Some(Duration::from_secs(3600)),
            max_message_bytes: 4 << 20,
            allowed_hosts: Vec::new(),
        }
    }
}

/// Client settings a `SET` may name; accepted and ignored.
pub const HARMLESS_SETTINGS: [&str; 13] = [
    "client_encoding",
    "datestyle",
    "timezone",
    "time zone",
    "extra_float_digits",
    "application_name",
    "search_path",
    "intervalstyle",
    "client_min_messages",
    "standard_conforming_strings",
    "statement_timeout",
    "lock_timeout",
    "idle_in_transaction_session_timeout",
];

/// Values `SHOW` gives for the Postgres settings clients ask about.
const PG_SETTINGS: [(&str, &str); 10] = [
    ("server_version", "16.0"),
    ("server_encoding", "UTF8"),
    ("client_encoding", "UTF8"),
    ("datestyle", "ISO, MDY"),
    ("timezone", "UTC"),
    ("transaction_isolation", "serializable"),
    ("default_transaction_read_only", "on"),
    ("standard_conforming_strings", "on"),
    ("integer_datetimes", "on"),
    ("search_path", "public"),
];

/// What one parsed statement asks for.
#[derive(Debug)]
pub enum Action {
    /// A query planned and run by DataFusion.
    Query(DfStatement),
    /// `BEGIN` / `START TRANSACTION`: accepted; every statement reads its own snapshot anyway.
    Begin,
    /// `COMMIT` / `END`: accepted.
    Commit,
    /// `ROLLBACK` / `ABORT`: accepted.
    Rollback,
    /// A harmless `SET`: accepted, no effect. Holds the command tag.
    Ignored(&'static str),
    /// `SHOW` of a Postgres setting: one row.
    Show(String, String),
}

/// The result of a query.
#[derive(Debug)]
pub struct QueryOutput {
    /// Column names and types.
    pub schema: SchemaRef,
    /// The rows.
    pub batches: Vec<RecordBatch>,
    /// Rows in `batches`.
    pub rows: usize,
    /// Whether rows were cut at the row limit.
    pub truncated: bool,
    /// The watermark of the snapshot the query read (epoch ms).
    pub watermark: Option<i64>,
    /// The rows' share of the memory pool, released when the output is dropped.
    pub reservation: Option<MemoryReservation>,
}

/// The SQL engine over one catalog.
pub struct Engine {
    catalog: Arc<Catalog>,
    /// The prepared session every query clones: functions, the catalog
    /// (`public`, `lake`, `pg_catalog`), limits.
    base: SessionState,
    /// The catalog `treeai` of `base`.
    names: Arc<MemoryCatalogProvider>,
    /// Rewrites clients' catalog queries into SQL DataFusion plans.
    compat: PostgresCompatibilityParser,
    /// Limits and addresses.
    pub config: SqlConfig,
    /// Metrics of the process.
    pub metrics: Arc<metrics::Metrics>,
    /// The checkpoint coordinator (`POST /v1/admin/checkpoint`), when checkpoints are on.
    pub checkpoints: Option<Arc<treeai_dataflows::checkpoint::Checkpoints>>,
    /// Users and tokens (`--auth-file`); `None`: open.
    pub credentials: Option<Arc<auth::Credentials>>,
    /// The audit log.
    pub audit: Arc<audit::Audit>,
    /// TLS for both endpoints (`--tls-cert`, `--tls-key`).
    pub tls: Option<tls::TlsFiles>,
    /// `GET /metrics` needs a token too.
    pub metrics_auth: bool,
    /// Where `POST /v1/events` puts events; `None`: the endpoint answers 409.
    pub ingest: Option<Arc<dyn ingest::IngestTarget>>,
    /// Limits of `POST /v1/events`.
    pub ingest_limits: ingest::IngestLimits,
    /// Its token buckets.
    pub ingest_rate: ingest::RateLimiter,
}

impl Engine {
    /// An engine over `catalog`.
    pub fn new(catalog: Arc<Catalog>, config: SqlConfig, metrics: Arc<metrics::Metrics>) -> Result<Self, SqlError> {
        // No spilling to disk: client queries stay within the memory pool. No list-files
        // cache: DataFusion's default keeps a table's listing until it is evicted (no expiry),
        // so a lake table would not see the files landed since its first scan; each scan
        // lists its table's folder again (one LIST per table and query).
        let runtime = RuntimeEnvBuilder::new()
            .with_memory_limit(config.memory_limit, 1.0)
            .with_object_list_cache_limit(0)
            .with_disk_manager_builder(DiskManagerBuilder::default().with_mode(DiskManagerMode::Disabled))
            .build_arc()
            .map_err(|e| SqlError::Internal(e.to_string()))?;
        // Scans count the rows they produce (`treeai_sql_view_rows_scanned_total`).
        let mut session = SessionConfig::new()
            .with_information_schema(true)
            .with_create_default_catalog_and_schema(false)
            .with_default_catalog_and_schema(CATALOG, "public")
            .with_extension(metrics.clone());
        session.options_mut().sql_parser.dialect = datafusion::config::Dialect::PostgreSQL;
        let names = Arc::new(MemoryCatalogProvider::new());
        names.register_schema("public", Arc::new(provider::LiveSchema::new()))?;
        let list = MemoryCatalogProviderList::new();
        list.register_catalog(CATALOG.into(), names.clone());
        let context = SessionContext::new_with_state(
            SessionStateBuilder::new()
                .with_config(session)
                .with_runtime_env(runtime)
                .with_default_features()
                .with_catalog_list(Arc::new(list))
                .build(),
        );
        datafusion_pg_catalog::setup_pg_catalog(&context, CATALOG, EmptyContextProvider).map_err(|e| *e)?;
        limits::bound_functions(&context)?;
        Ok(Engine {
            catalog,
            base: context.state(),
            names,
            compat: PostgresCompatibilityParser::new(),
            config,
            metrics,
            checkpoints: None,
            credentials: None,
            audit: audit::Audit::off(),
            tls: None,
            metrics_auth: false,
            ingest: None,
            ingest_limits: ingest::IngestLimits::default(),
            ingest_rate: ingest::RateLimiter::default(),
        })
    }

    /// Serves `POST /v1/admin/checkpoint` with `hub`.
    pub fn with_checkpoints(mut self, hub: Arc<treeai_dataflows::checkpoint::Checkpoints>) -> Self {
        self.checkpoints = Some(hub);
        self
    }

    /// Requires credentials from `credentials` on both endpoints, audited to `audit`
    /// (see [`auth`], [`audit`]); with `metrics_auth`, `GET /metrics` too.
    pub fn with_auth(
        mut self,
        credentials: Arc<auth::Credentials>,
        audit: Arc<audit::Audit>,
        metrics_auth: bool,
    ) -> Self {
        self.credentials = Some(credentials);
        self.audit = audit;
        self.metrics_auth = metrics_auth;
        self
    }

    /// Takes `POST /v1/events` into `target` within `limits` (see [`ingest`]).
    pub fn with_ingest(mut self, target: Arc<dyn ingest::IngestTarget>, limits: ingest::IngestLimits) -> Self {
        self.ingest = Some(target);
        self.ingest_limits = limits;
        self
    }

    /// Serves both endpoints over TLS only (see [`tls`]).
    pub fn with_tls(mut self, files: tls::TlsFiles) -> Self {
        self.tls = Some(files);
        self
    }

    /// Adds the lake tables as schema `lake` (see [`lake`]).
    pub fn with_lake(self, url: &str, options: &[(String, String)]) -> Result<Self, SqlError> {
        let lake = lake::lake_schema(url, options, self.base.runtime_env())?;
        self.names.register_schema("lake", lake)?;
        Ok(self)
    }

    /// The catalog the engine reads.
    pub fn catalog(&self) -> &Arc<Catalog> {
        &self.catalog
    }

    /// A session state whose tables all read `snapshot`, with the function
    /// `treeai_watermark()`: the snapshot's watermark (timestamptz, NULL before
    /// the first one).
    pub fn state_at(&self, snapshot: Arc<Snapshot>) -> SessionState {
        let watermark = snapshot.watermark;
        let mut state = self.base.clone();
        provider::with_snapshot(state.config_mut(), snapshot);
        let udf = create_udf(
            "treeai_watermark",
            vec![],
            DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
            Volatility::Stable,
            Arc::new(move |_| {
                Ok(ColumnarValue::Scalar(ScalarValue::TimestampMillisecond(watermark, Some("UTC".into()))))
            }),
        );
        state.register_udf(Arc::new(udf)).expect("registering a function");
        state
    }

    /// A session state at the catalog's current snapshot, and that snapshot.
    pub fn state_now(&self) -> (Arc<Snapshot>, SessionState) {
        let snapshot = self.catalog.snapshot();
        (snapshot.clone(), self.state_at(snapshot))
    }

    /// Parses `sql` (any number of `;`-separated statements) and classifies each.
    pub fn parse(&self, sql: &str) -> Result<Vec<Action>, SqlError> {
        if sql.len() > limits::MAX_STATEMENT_BYTES {
            return Err(SqlError::LimitExceeded(format!(
                "the query text is {} bytes; at most {} are taken",
                sql.len(),
                limits::MAX_STATEMENT_BYTES
            )));
        }
        let actions = self.parse_all(sql)?;
        if actions.len() > limits::MAX_STATEMENTS {
            return Err(SqlError::LimitExceeded(format!(
                "{} statements in one query; at most {} are taken",
                actions.len(),
                limits::MAX_STATEMENTS
            )));
        }
        Ok(actions)
    }

    fn parse_all(&self, sql: &str) -> Result<Vec<Action>, SqlError> {
        if is_catalog_query(sql) {
            let statements = self.compat.parse(sql).map_err(|e| SqlError::Syntax(strip_prefix(e.to_string())))?;
            return statements.into_iter().map(|s| classify(DfStatement::Statement(Box::new(s)))).collect();
        }
        let dialect = PostgreSqlDialect {};
        let mut parser = DFParserBuilder::new(sql)
            .with_dialect(&dialect)
            .build()
            .map_err(|e| SqlError::Syntax(strip_prefix(e.to_string())))?;
        let statements = parser.parse_statements().map_err(|e| SqlError::Syntax(strip_prefix(e.to_string())))?;
        statements.into_iter().map(classify).collect()
    }

    /// Plans one query statement against `state`, with `params` for `$1`, `$2`, ….
    /// A table that no schema holds is [`SqlError::UndefinedTable`] (checked
    /// before planning: DataFusion reports it only as a plan error's text).
    pub async fn plan(
        &self,
        state: &SessionState,
        statement: DfStatement,
        params: Option<ParamValues>,
    ) -> Result<LogicalPlan, SqlError> {
        check_tables(state, &statement).await?;
        let plan = state.statement_to_plan(statement).await?;
        SQLOptions::new()
            .with_allow_ddl(false)
            .with_allow_dml(false)
            .with_allow_statements(false)
            .verify_plan(&plan)
            .map_err(|e| SqlError::ReadOnly(strip_prefix(e.to_string())))?;
        Ok(match params {
            Some(p) => plan.with_param_values(p)?,
            None => plan,
        })
    }

    /// Runs a planned query to its end, keeping at most `max_rows` rows.
    pub async fn execute(
        &self,
        state: &SessionState,
        plan: LogicalPlan,
        max_rows: Option<usize>,
    ) -> Result<QueryOutput, SqlError> {
        let physical = state.create_physical_plan(&plan).await?;
        let schema = physical.schema();
        let mut stream = execute_stream(physical, state.task_ctx())?;
        // The result held for the client counts against the memory pool too.
        let reservation = MemoryConsumer::new("query result").register(&state.runtime_env().memory_pool);
        let (mut batches, mut rows, mut truncated) = (Vec::new(), 0usize, false);
        let max = max_rows.unwrap_or(usize::MAX);
        while let Some(batch) = stream.next().await {
            let batch = batch?;
            reservation.try_grow(batch.get_array_memory_size())?;
            if rows + batch.num_rows() > max {
                let keep = max - rows;
                batches.push(batch.slice(0, keep));
                rows += keep;
                truncated = true;
                break;
            }
            rows += batch.num_rows();
            batches.push(batch);
        }
        Ok(QueryOutput { schema, batches, rows, truncated, watermark: None, reservation: Some(reservation) })
    }

    /// Plans `statement` at a fresh snapshot and starts it, under the time
    /// limit; the rows come as a stream (the Postgres wire protocol sends them
    /// as they come, so a result may be larger than the memory limit).
    pub async fn start_query(
        &self,
        statement: DfStatement,
        params: Option<ParamValues>,
    ) -> Result<(SchemaRef, datafusion::physical_plan::SendableRecordBatchStream), SqlError> {
        let (_snapshot, state) = self.state_now();
        self.with_timeout(async {
            let plan = self.plan(&state, statement, params).await?;
            self.start_plan(&state, plan).await
        })
        .await
    }

    /// Starts a query planned by [`Engine::plan`] on `state`; the rows come as a stream.
    pub async fn start_plan(
        &self,
        state: &SessionState,
        plan: LogicalPlan,
    ) -> Result<(SchemaRef, datafusion::physical_plan::SendableRecordBatchStream), SqlError> {
        let physical = state.create_physical_plan(&plan).await?;
        let schema = physical.schema();
        Ok((schema, execute_stream(physical, state.task_ctx())?))
    }

    /// Runs `fut` under the statement time limit.
    pub async fn with_timeout<T>(
        &self,
        fut: impl std::future::Future<Output = Result<T, SqlError>>,
    ) -> Result<T, SqlError> {
        match tokio::time::timeout(self.config.query_timeout, fut).await {
            Ok(r) => r,
            Err(_) => Err(SqlError::Timeout(self.config.query_timeout)),
        }
    }

    /// Runs one action (parsed by [`Engine::parse`]) at a fresh snapshot under
    /// the time limit. Non-query actions give `None`.
    pub async fn run_action(
        &self,
        action: Action,
        params: Option<ParamValues>,
        max_rows: Option<usize>,
    ) -> Result<Option<QueryOutput>, SqlError> {
        match action {
            Action::Query(statement) => {
                let (snapshot, state) = self.state_now();
                let out = self
                    .with_timeout(async {
                        let plan = self.plan(&state, statement, params).await?;
                        self.execute(&state, plan, max_rows).await
                    })
                    .await?;
                Ok(Some(QueryOutput { watermark: snapshot.watermark, ..out }))
            }
            Action::Show(name, value) => Ok(Some(show_output(&name, &value))),
            _ => Ok(None),
        }
    }

    /// Runs `sql` (one statement; for HTTP and tests) and records the metrics
    /// under `protocol`. Accepted non-queries (`BEGIN`, a harmless `SET`) give
    /// an empty result.
    pub async fn query(&self, sql: &str, max_rows: Option<usize>, protocol: &str) -> Result<QueryOutput, SqlError> {
        let started = Instant::now();
        let span = statement_span(protocol, sql);
        let result = tracing::Instrument::instrument(
            async {
                let mut actions = self.parse(sql)?;
                if actions.len() != 1 {
                    return Err(SqlError::Plan(format!("expected exactly one statement, got {}", actions.len())));
                }
                let out = self.run_action(actions.remove(0), None, max_rows).await?;
                Ok(out.unwrap_or_else(|| QueryOutput {
                    schema: Arc::new(Schema::empty()),
                    batches: vec![],
                    rows: 0,
                    truncated: false,
                    watermark: self.catalog.snapshot().watermark,
                    reservation: None,
                }))
            },
            span.clone(),
        )
        .await;
        end_statement_span(&span, result.as_ref().err());
        self.metrics.record_query(protocol, result.as_ref().err(), started.elapsed());
        result
    }
}

/// The span of one SQL statement (`sql.statement`; exported with `--otlp-endpoint`): its
/// text (at most 4 kB), the protocol, and its outcome once known.
pub fn statement_span(protocol: &str, sql: &str) -> tracing::Span {
    let text = match sql.char_indices().nth(4096) {
        Some((cut, _)) => &sql[..cut],
        None => sql,
    };
    tracing::info_span!(
        "sql.statement",
        db.system.name = "treeai",
        db.query.text = text,
        treeai.protocol = protocol,
        treeai.outcome = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
    )
}

/// Records a statement's outcome on its span.
pub fn end_statement_span(span: &tracing::Span, error: Option<&SqlError>) {
    span.record("treeai.outcome", error.map_or("ok", SqlError::outcome));
    if error.is_some() {
        span.record("otel.status_code", "ERROR");
    }
}

/// Fails with [`SqlError::UndefinedTable`] for the first table `statement`
/// names that DataFusion would not find: the tables it resolves (CTEs left
/// out), looked up the way `SessionState::statement_to_plan` does (default
/// catalog and schema, `information_schema`), except names of table functions
/// (`generate_series(…)`), which are named like tables.
async fn check_tables(state: &SessionState, statement: &DfStatement) -> Result<(), SqlError> {
    let options = state.config_options();
    let (catalog, schema) = (&options.catalog.default_catalog, &options.catalog.default_schema);
    for reference in state.resolve_table_references(statement)? {
        if reference.schema().is_none() && state.table_functions().contains_key(reference.table()) {
            continue;
        }
        let resolved = reference.clone().resolve(catalog, schema);
        let exists = match state.schema_for_ref(resolved.clone()) {
            // `table_exist` answers cheaply; `table` is what planning asks.
            Ok(tables) => tables.table_exist(&resolved.table) || tables.table(&resolved.table).await?.is_some(),
            Err(_) => false,
        };
        if !exists {
            return Err(SqlError::UndefinedTable(reference.to_string()));
        }
    }
    Ok(())
}

/// The catalog of every query (Postgres clients see it as the database name).
const CATALOG: &str = "treeai";

/// Whether `sql` looks like a client's catalog query (see the crate docs): a
/// name (not a string or a comment) starting with `pg_`, `current_setting`,
/// or a cast `::reg…`.
fn is_catalog_query(sql: &str) -> bool {
    use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};
    let lower = sql.to_ascii_lowercase();
    if !(lower.contains("pg_") || lower.contains("::reg") || lower.contains("current_setting")) {
        return false;
    }
    let Ok(tokens) = Tokenizer::new(&PostgreSqlDialect {}, sql).tokenize() else {
        return false;
    };
    let word = |t: Option<&Token>| match t {
        Some(Token::Word(w)) => Some(w.value.to_ascii_lowercase()),
        _ => None,
    };
    tokens.iter().enumerate().any(|(i, t)| match word(Some(t)) {
        Some(w) => w.starts_with("pg_") || w == "current_setting",
        None => {
            matches!(t, Token::DoubleColon)
                && word(tokens[i + 1..].iter().find(|t| !matches!(t, Token::Whitespace(_))))
                    .is_some_and(|w| w.starts_with("reg") || w == "pg_catalog")
        }
    })
}

fn show_output(name: &str, value: &str) -> QueryOutput {
    let schema = Arc::new(Schema::new(vec![Field::new(name, DataType::Utf8, false)]));
    let column: ArrayRef = Arc::new(StringArray::from(vec![value]));
    let batch = RecordBatch::try_new(schema.clone(), vec![column]).expect("one string column");
    QueryOutput { schema, batches: vec![batch], rows: 1, truncated: false, watermark: None, reservation: None }
}

/// Drops DataFusion's "SQL error: " style prefixes from a message.
fn strip_prefix(m: String) -> String {
    for p in ["SQL error: ", "sql parser error: ", "Error during planning: "] {
        if let Some(rest) = m.strip_prefix(p) {
            return strip_prefix(rest.to_string());
        }
    }
    m
}

/// The first word(s) of a statement, for messages.
fn verb(statement: &impl std::fmt::Display) -> String {
    let text = statement.to_string();
    let words: Vec<&str> = text.split_whitespace().take(2).collect();
    words.join(" ").to_uppercase()
}

fn classify(statement: DfStatement) -> Result<Action, SqlError> {
    let ast = match &statement {
        DfStatement::Statement(ast) => ast.as_ref(),
        DfStatement::Explain(explain) => {
            return match classify((*explain.statement).clone())? {
                Action::Query(_) => Ok(Action::Query(statement)),
                _ => Err(SqlError::ReadOnly(verb(&statement))),
            };
        }
        DfStatement::Reset(_) => return Ok(Action::Ignored("RESET")),
        other => return Err(SqlError::ReadOnly(verb(other))),
    };
    match ast {
        AstStatement::Query(_) | AstStatement::ShowTables { .. } | AstStatement::ShowColumns { .. } => {
            Ok(Action::Query(statement))
        }
        AstStatement::Explain { statement: inner, .. } => match inner.as_ref() {
            AstStatement::Query(_) => Ok(Action::Query(statement)),
            _ => Err(SqlError::ReadOnly(verb(ast))),
        },
        AstStatement::ExplainTable { .. } => Ok(Action::Query(statement)),
        AstStatement::ShowVariable { variable } => {
            let name = variable.iter().map(|i| i.value.to_lowercase()).collect::<Vec<_>>().join(" ");
            match PG_SETTINGS.iter().find(|(n, _)| *n == name || (name == "time zone" && *n == "timezone")) {
                Some((n, v)) => Ok(Action::Show(n.to_string(), v.to_string())),
                None => Ok(Action::Query(statement)), // SHOW ALL, SHOW datafusion.*: information_schema
            }
        }
        AstStatement::StartTransaction { .. } => Ok(Action::Begin),
        // Connection poolers and Grafana reset sessions with it; there is no session state.
        AstStatement::Discard { .. } => Ok(Action::Ignored("DISCARD ALL")),
        AstStatement::Commit { .. } => Ok(Action::Commit),
        AstStatement::Rollback { .. } => Ok(Action::Rollback),
        AstStatement::Set(set) => {
            let name = match set {
                Set::SingleAssignment { variable, .. } => variable.to_string().to_lowercase(),
                Set::SetTimeZone { .. } => "timezone".into(),
                Set::SetNames { .. } => "client_encoding".into(),
                _ => String::new(),
            };
            if HARMLESS_SETTINGS.contains(&name.as_str()) {
                Ok(Action::Ignored("SET"))
            } else {
                Err(SqlError::ReadOnly(format!("SET {name}").trim().to_string()))
            }
        }
        other => Err(SqlError::ReadOnly(verb(other))),
    }
}

#[cfg(test)]
mod tests {
    use super::is_catalog_query;

    #[test]
    fn catalog_queries_are_told_by_their_names_not_their_strings() {
        for sql in [
            "select relname from pg_catalog.pg_class",
            "SELECT c.oid FROM PG_CLASS c WHERE pg_table_is_visible(c.oid)",
            "select 'tree_scores'::regclass",
            "select 'x' :: pg_catalog.regtype",
            "select current_setting('search_path')",
        ] {
            assert!(is_catalog_query(sql), "{sql}");
        }
        for sql in [
            "select * from tree_scores where tree_id = 'pg_1'",
            "-- pg_class\nselect count(*) from trees",
            "select 'current_setting' as x, 1::bigint",
            "select * from tree_scores",
            "select 'pg_",
        ] {
            assert!(!is_catalog_query(sql), "{sql}");
        }
    }
}
