//! The Postgres wire protocol (pgwire): simple and extended query protocols.
//!
//! Without `--auth-file` any user name and no password are accepted (the
//! endpoint listens on localhost by default); with it, users log in with
//! SCRAM-SHA-256 ([`startup`]). With TLS on, a client must ask for it. Arrow types map to Postgres
//! types by [`pg_type`]: text, int2/int4/int8, float4/float8, bool,
//! timestamptz (timestamp without zone for zone-less columns), date, bytea;
//! other types are sent as text. Both text and binary result formats work.
//!
//! Extended protocol: `$1`, `$2`, … parameters take their type from the
//! client's Parse message, else from DataFusion's inference, else text; text
//! parameters are cast to the inferred type. Describe plans the statement
//! (no execution) to answer with its columns.
//!
//! Results are streamed: rows are encoded and sent batch by batch as DataFusion
//! produces them (a bounded channel gives backpressure), so a result may be
//! larger than the memory limit. The time limit covers the whole statement,
//! streaming included; a client that goes away stops it. A Postgres
//! CancelRequest (psql's Ctrl-C, psycopg's `conn.cancel()`) stops a statement
//! at any point, SQLSTATE 57014: before its first rows pgwire's connection
//! manager drops the handler's future; while rows stream, the handler has
//! re-armed the connection's cancel handle ([`stream::arm_cancel`]) and the streaming
//! task ends the result with the error.
//!
//! Errors become `ErrorResponse`s with the SQLSTATE of [`SqlError::sqlstate`];
//! the connection stays usable. `psql`'s backslash commands read `pg_catalog`
//! (see the crate docs).
//!
//! Modules: [`types`] (Arrow and Postgres types, `$n` parameters),
//! [`encode`] (rows of record batches as `DataRow`s, column by column),
//! [`stream`] (streamed responses, the time limit and cancel while rows
//! stream); this module holds the handlers and their wiring.

pub mod encode;
pub mod startup;
pub mod stream;
pub mod types;
pub mod wire;

pub use types::pg_type;

use crate::{Action, Engine, SqlError};
use arrow::datatypes::DataType;
use async_trait::async_trait;
use datafusion::common::ParamValues;
use datafusion::execution::SessionState;
use datafusion::logical_expr::LogicalPlan;
use encode::query_response;
use futures::future::{select, Either};
use futures::{stream as futures_stream, Sink};
use pgwire::api::auth::noop::NoopStartupHandler;
use pgwire::api::auth::StartupHandler;
use pgwire::api::cancel::{CancelHandler, DefaultCancelHandler};
use pgwire::api::portal::PortalExecutionState;
use pgwire::api::portal::{Format, Portal};
use pgwire::api::query::{send_execution_response, send_query_response};
use pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use pgwire::api::results::{
    DescribePortalResponse, DescribeResponse, DescribeStatementResponse, QueryResponse, Response, Tag,
};
use pgwire::api::stmt::{NoopQueryParser, StoredStatement};
use pgwire::api::store::Entry;
use pgwire::api::store::PortalStore;
use pgwire::api::{ClientInfo, ClientPortalStore, PgWireServerHandlers, Type};
use pgwire::api::{ConnectionHandle, ConnectionManager, PgWireConnectionState, DEFAULT_NAME};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::extendedquery::Execute;
use pgwire::messages::PgWireBackendMessage;
use std::fmt::Debug;
use std::sync::Arc;
use std::time::Instant;
use stream::{arm_cancel, next_batch, streamed_response, CancelSignal};
use tokio::sync::watch;
use tracing::Instrument;
use types::{arrow_type, fields, param_types, param_value};

/// `e` as a Postgres error response.
pub fn pg_error(e: &SqlError) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new("ERROR".to_owned(), e.sqlstate().to_owned(), e.to_string())))
}

/// A response, and whether its outcome is recorded in the metrics later (a
/// streamed result records itself when its rows end).
type Answer = (Response, bool);

/// A query to start: a statement to plan at a fresh snapshot, or a plan made
/// on a session already (an extended-protocol portal's, planned once).
enum Query {
    Statement(datafusion::sql::parser::Statement, Option<ParamValues>),
    Planned(Box<SessionState>, LogicalPlan),
}

/// The pgwire handlers over an [`Engine`].
pub struct PgHandler {
    engine: Arc<Engine>,
    parser: Arc<NoopQueryParser>,
    connections: Arc<ConnectionManager>,
}

impl PgHandler {
    /// Handlers over `engine`.
    pub fn new(engine: Arc<Engine>) -> Self {
        PgHandler { engine, parser: Arc::new(NoopQueryParser::new()), connections: Arc::new(ConnectionManager::new()) }
    }

    /// Runs a query, answering with its first batch ready: errors before the
    /// first row (most of them, time limit included) come as plain errors.
    async fn query(
        &self,
        query: Query,
        format: &Format,
        cancel: &CancelSignal,
        started: Instant,
    ) -> Result<Answer, SqlError> {
        let limit = self.engine.config.query_timeout;
        let deadline = tokio::time::Instant::now() + limit;
        let (schema, mut stream) = match query {
            Query::Statement(statement, params) => self.engine.start_query(statement, params).await?,
            Query::Planned(state, plan) => self.engine.with_timeout(self.engine.start_plan(&state, plan)).await?,
        };
        let fields = Arc::new(fields(&schema, format)?);
        match next_batch(&mut stream, deadline, limit).await? {
            None => Ok((Response::Query(QueryResponse::new(fields, futures_stream::empty())), false)),
            Some(first) => {
                let metrics = self.engine.metrics.clone();
                // The statement's span (when there is one) ends with its streamed rows.
                let span = tracing::Span::current();
                let record = move |e: Option<&SqlError>| {
                    metrics.record_query("pg", e, started.elapsed());
                    crate::end_statement_span(&span, e);
                };
                let rows = streamed_response(fields, first, stream, deadline, limit, cancel.clone(), record);
                Ok((Response::Query(rows), true))
            }
        }
    }

    /// Runs one action, giving the response to send (an error too).
    async fn respond(
        &self,
        action: Action,
        params: Option<ParamValues>,
        format: &Format,
        cancel: &CancelSignal,
        started: Instant,
    ) -> Result<Answer, SqlError> {
        let response = match action {
            Action::Query(statement) => {
                return self.query(Query::Statement(statement, params), format, cancel, started).await
            }
            Action::Begin => Response::TransactionStart(Tag::new("BEGIN")),
            Action::Commit => Response::TransactionEnd(Tag::new("COMMIT")),
            Action::Rollback => Response::TransactionEnd(Tag::new("ROLLBACK")),
            Action::Ignored(tag) => Response::Execution(Tag::new(tag)),
            action => match self.engine.run_action(action, params, None).await? {
                Some(out) => Response::Query(query_response(out, format)?),
                None => Response::Execution(Tag::new("OK")),
            },
        };
        Ok((response, false))
    }

    /// Records the outcome of a statement (unless its streamed rows record it) and turns errors
    /// into Postgres errors.
    fn timed(&self, started: Instant, result: Result<Answer, SqlError>) -> PgWireResult<Response> {
        match result {
            Ok((response, true)) => Ok(response),
            result => {
                let result = result.map(|(response, _)| response);
                self.engine.metrics.record_query("pg", result.as_ref().err(), started.elapsed());
                result.map_err(|e| pg_error(&e))
            }
        }
    }

    /// Writes a statement's audit line (with `--auth-file`).
    fn audit<C: ClientInfo>(&self, client: &C, sql: &str, ok: bool, started: Instant) {
        if !self.engine.audit.enabled() {
            return;
        }
        let metadata = client.metadata();
        self.engine.audit.record(crate::audit::AuditEvent {
            user: metadata.get("user").map(String::as_str),
            role: metadata.get(startup::ROLE_KEY).and_then(|r| r.parse().ok()),
            client: client.session_extensions().get::<wire::Peer>().map(|p| p.addr),
            action: "sql",
            detail: Some(sql),
            events: None,
            outcome: if ok { "ok" } else { "error" },
            started,
        });
    }

    /// The single statement of an extended-protocol query.
    fn one_action(&self, sql: &str) -> Result<Action, SqlError> {
        let mut actions = self.engine.parse(sql)?;
        match actions.len() {
            1 => Ok(actions.remove(0)),
            n => Err(SqlError::Syntax(format!("a prepared statement holds one statement, got {n}"))),
        }
    }

    /// Plans `sql` (without running it): its parameter types and result schema.
    async fn describe(&self, sql: &str) -> Result<Option<(Vec<Option<DataType>>, arrow::datatypes::Schema)>, SqlError> {
        match self.one_action(sql)? {
            Action::Query(statement) => {
                let (_, state) = self.engine.state_now();
                let plan = self.engine.with_timeout(self.engine.plan(&state, statement, None)).await?;
                let types = param_types(&plan)?;
                Ok(Some((types, plan.schema().as_arrow().clone())))
            }
            Action::Show(name, value) => {
                let out = crate::show_output(&name, &value);
                Ok(Some((vec![], out.schema.as_ref().clone())))
            }
            _ => Ok(None),
        }
    }

    /// The query of `portal` planned once at a fresh snapshot, with its `$n` parameters read as
    /// the types DataFusion inferred (else the client's); `None` when it holds no query.
    async fn portal_plan(&self, portal: &Portal<String>) -> Result<Option<(SessionState, LogicalPlan)>, SqlError> {
        let Action::Query(statement) = self.one_action(&portal.statement.statement)? else {
            return Ok(None);
        };
        let (_, state) = self.engine.state_now();
        let plan = self.engine.with_timeout(self.engine.plan(&state, statement, None)).await?;
        if portal.parameter_len() == 0 {
            return Ok(Some((state, plan)));
        }
        let inferred = param_types(&plan)?;
        let mut values = Vec::with_capacity(portal.parameter_len());
        for i in 0..portal.parameter_len() {
            let client = portal.statement.parameter_types.get(i).cloned().flatten().filter(|t| *t != Type::UNKNOWN);
            let target = inferred.get(i).cloned().flatten().or_else(|| client.as_ref().and_then(arrow_type));
            values.push(param_value(portal, i, client.as_ref(), target.as_ref())?);
        }
        let plan = plan.with_param_values(ParamValues::from(values))?;
        Ok(Some((state, plan)))
    }
}

#[async_trait]
impl NoopStartupHandler for PgHandler {
    fn connection_manager(&self) -> Option<Arc<ConnectionManager>> {
        Some(self.connections.clone())
    }
}

#[async_trait]
impl SimpleQueryHandler for PgHandler {
    async fn do_query<C>(&self, client: &mut C, query: &str) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        startup::logged_in(client)?;
        let started = Instant::now();
        let actions = match self.engine.parse(query) {
            Ok(a) => a,
            Err(e) => {
                self.audit(client, query, false, started);
                return self.timed(started, Err(e)).map(|r| vec![r]);
            }
        };
        let mut responses = Vec::with_capacity(actions.len());
        let (cancel_tx, cancel) = watch::channel(false);
        let span = crate::statement_span("pg", query);
        for action in actions {
            let started = Instant::now();
            let response = self.respond(action, None, &Format::UnifiedText, &cancel, started).instrument(span.clone());
            match self.timed(started, response.await) {
                Ok(r) => responses.push(r),
                Err(PgWireError::UserError(info)) => {
                    // Postgres stops a multi-statement query at its first error.
                    responses.push(Response::Error(info));
                    break;
                }
                Err(e) => return Err(e),
            }
        }
        drop(cancel);
        let ok = !responses.iter().any(|r| matches!(r, Response::Error(_)));
        span.record("treeai.outcome", if ok { "ok" } else { "error" });
        if !ok {
            span.record("otel.status_code", "ERROR");
        }
        self.audit(client, query, ok, started);
        arm_cancel(client, cancel_tx).await;
        Ok(responses)
    }
}

#[async_trait]
impl ExtendedQueryHandler for PgHandler {
    type Statement = String;
    type QueryParser = NoopQueryParser;

    fn query_parser(&self) -> Arc<Self::QueryParser> {
        self.parser.clone()
    }

    async fn do_query<C>(
        &self,
        client: &mut C,
        portal: &Portal<Self::Statement>,
        _max_rows: usize,
    ) -> PgWireResult<Response>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        startup::logged_in(client)?;
        let started = Instant::now();
        let (cancel_tx, cancel) = watch::channel(false);
        let format = &portal.result_column_format;
        let span = crate::statement_span("pg", &portal.statement.statement);
        let result = async {
            match self.portal_plan(portal).await? {
                Some((state, plan)) => {
                    self.query(Query::Planned(Box::new(state), plan), format, &cancel, started).await
                }
                None => {
                    let action = self.one_action(&portal.statement.statement)?;
                    self.respond(action, None, format, &cancel, started).await
                }
            }
        }
        .instrument(span.clone())
        .await;
        if !matches!(result, Ok((_, true))) {
            // (Streamed rows end the span themselves.)
            crate::end_statement_span(&span, result.as_ref().err());
        }
        drop(cancel);
        self.audit(client, &portal.statement.statement, result.is_ok(), started);
        arm_cancel(client, cancel_tx).await;
        self.timed(started, result)
    }

    /// pgwire's default gathers every row of a portal in memory before sending any when the
    /// client asks for all rows (`max_rows` 0, what drivers send), so a large result would grow
    /// without bound outside the memory pool. Such an Execute sends rows as they come instead;
    /// portals read in pieces (`max_rows` > 0), empty portals and portals already started keep
    /// pgwire's handling.
    async fn on_execute<C>(&self, client: &mut C, message: Execute) -> PgWireResult<()>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let name = message.name.as_deref().unwrap_or(DEFAULT_NAME);
        let portal = match client.portal_store().get_portal(name) {
            Some(Entry::Value(portal))
                if message.max_rows == 0
                    && matches!(client.state(), PgWireConnectionState::ReadyForQuery)
                    && matches!(*portal.state.lock().await, PortalExecutionState::Initial) =>
            {
                portal
            }
            _ => return self._on_execute(client, message).await,
        };
        let mut status = client.transaction_status();
        client.set_state(PgWireConnectionState::QueryInProgress);
        // A CancelRequest before the response is ready drops the handler's future (as pgwire does).
        let cancel = match client.session_extensions().get::<Arc<ConnectionHandle>>() {
            Some(handle) => Some(handle.start_query().await),
            None => None,
        };
        let response = match cancel {
            Some(cancel) => {
                match select(std::pin::pin!(ExtendedQueryHandler::do_query(self, client, &portal, 0)), cancel).await {
                    // A cancel that came as the response was ready: the response (and the
                    // query behind its rows) is dropped rather than streamed to its end.
                    Either::Left((response, mut cancel)) => match cancel.try_recv() {
                        Ok(Some(())) => Err(PgWireError::QueryCanceled),
                        _ => response,
                    },
                    Either::Right(_) => Err(PgWireError::QueryCanceled),
                }
            }
            None => ExtendedQueryHandler::do_query(self, client, &portal, 0).await,
        }?;
        match response {
            Response::Query(rows) => {
                *portal.state.lock().await = PortalExecutionState::Finished;
                send_query_response(client, rows, false).await?
            }
            Response::Execution(tag) => send_execution_response(client, tag).await?,
            Response::TransactionStart(tag) => {
                send_execution_response(client, tag).await?;
                status = status.to_in_transaction_state();
            }
            Response::TransactionEnd(tag) => {
                send_execution_response(client, tag).await?;
                status = status.to_idle_state();
                client.portal_store().rm_portal(DEFAULT_NAME);
            }
            _ => return Err(PgWireError::ApiError("unexpected response to an Execute".into())),
        }
        client.set_state(PgWireConnectionState::ReadyForQuery);
        client.set_transaction_status(status);
        Ok(())
    }

    async fn do_describe_statement<C>(
        &self,
        client: &mut C,
        target: &StoredStatement<Self::Statement>,
    ) -> PgWireResult<DescribeStatementResponse>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        startup::logged_in(client)?;
        let Some((inferred, schema)) = self.describe(&target.statement).await.map_err(|e| pg_error(&e))? else {
            return Ok(DescribeStatementResponse::no_data());
        };
        let n = inferred.len().max(target.parameter_types.len());
        let params = (0..n)
            .map(|i| {
                target
                    .parameter_types
                    .get(i)
                    .cloned()
                    .flatten()
                    .filter(|t| *t != Type::UNKNOWN)
                    .or_else(|| inferred.get(i).cloned().flatten().map(|t| pg_type(&t)))
                    .unwrap_or(Type::TEXT)
            })
            .collect();
        let fields = fields(&schema, &Format::UnifiedText).map_err(|e| pg_error(&e))?;
        Ok(DescribeStatementResponse::new(params, fields))
    }

    async fn do_describe_portal<C>(
        &self,
        client: &mut C,
        portal: &Portal<Self::Statement>,
    ) -> PgWireResult<DescribePortalResponse>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        startup::logged_in(client)?;
        let result = async {
            let schema = match self.portal_plan(portal).await? {
                Some((_, plan)) => Some(plan.schema().as_arrow().clone()),
                None => self.describe(&portal.statement.statement).await?.map(|(_, schema)| schema),
            };
            schema.map(|schema| fields(&schema, &portal.result_column_format)).transpose()
        }
        .await;
        match result.map_err(|e| pg_error(&e))? {
            Some(fields) => Ok(DescribePortalResponse::new(fields)),
            None => Ok(DescribePortalResponse::no_data()),
        }
    }
}

/// The pgwire server handlers of one connection.
pub struct PgHandlers {
    /// Queries (shared by all connections).
    pub handler: Arc<PgHandler>,
    /// The connection's start-up (login).
    pub startup: Arc<startup::PgStartup>,
}

impl PgWireServerHandlers for PgHandlers {
    fn simple_query_handler(&self) -> Arc<impl SimpleQueryHandler> {
        self.handler.clone()
    }

    fn extended_query_handler(&self) -> Arc<impl ExtendedQueryHandler> {
        self.handler.clone()
    }

    fn startup_handler(&self) -> Arc<impl StartupHandler> {
        self.startup.clone()
    }

    fn cancel_handler(&self) -> Arc<impl CancelHandler> {
        Arc::new(DefaultCancelHandler::new(self.handler.connections.clone()))
    }
}
