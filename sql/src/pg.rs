//! The Postgres wire protocol (pgwire): simple and extended query protocols.
//!
//! Any user name and no password are accepted (no authentication; the
//! endpoint listens on localhost by default). Arrow types map to Postgres
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
//! re-armed the connection's cancel handle ([`arm_cancel`]) and the streaming
//! task ends the result with the error.
//!
//! Errors become `ErrorResponse`s with the SQLSTATE of [`SqlError::sqlstate`];
//! the connection stays usable. `psql`'s backslash commands read `pg_catalog`
//! (see the crate docs).

use crate::{Action, Engine, QueryOutput, SqlError};
use arrow::array::{
    Array, BinaryArray, BooleanArray, Date32Array, Float32Array, Float64Array, Int16Array, Int32Array, Int64Array,
    Int8Array, LargeBinaryArray, LargeStringArray, StringArray, StringViewArray, TimestampMicrosecondArray,
    TimestampMillisecondArray, TimestampNanosecondArray, TimestampSecondArray, UInt16Array, UInt32Array, UInt8Array,
};
use arrow::datatypes::{DataType, TimeUnit};
use arrow::record_batch::RecordBatch;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use async_trait::async_trait;
use chrono::{DateTime, NaiveDate};
use datafusion::common::{ParamValues, ScalarValue};
use datafusion::execution::SessionState;
use datafusion::logical_expr::LogicalPlan;
use datafusion::physical_plan::SendableRecordBatchStream;
use futures::future::{select, Either};
use futures::{stream, Sink, StreamExt};
use pgwire::api::auth::noop::NoopStartupHandler;
use pgwire::api::auth::StartupHandler;
use pgwire::api::cancel::{CancelHandler, DefaultCancelHandler};
use pgwire::api::portal::PortalExecutionState;
use pgwire::api::portal::{Format, Portal};
use pgwire::api::query::{send_execution_response, send_query_response};
use pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use pgwire::api::results::{
    DataRowEncoder, DescribePortalResponse, DescribeResponse, DescribeStatementResponse, FieldInfo, QueryResponse,
    Response, Tag,
};
use pgwire::api::stmt::{NoopQueryParser, StoredStatement};
use pgwire::api::store::Entry;
use pgwire::api::store::PortalStore;
use pgwire::api::{ClientInfo, ClientPortalStore, PgWireServerHandlers, Type};
use pgwire::api::{ConnectionHandle, ConnectionManager, PgWireConnectionState, DEFAULT_NAME};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::data::DataRow;
use pgwire::messages::extendedquery::Execute;
use pgwire::messages::PgWireBackendMessage;
use std::fmt::Debug;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::watch;

/// Set to `true` when the client cancels the statements of one request whose
/// rows still stream.
type CancelSignal = watch::Receiver<bool>;

/// Resolves when `signal` says cancelled; never when its sender is gone
/// without a cancel.
async fn cancelled(mut signal: CancelSignal) {
    if signal.wait_for(|c| *c).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Re-arms the connection's cancel handle for rows that stream after the
/// handler returns, when a response holds `signal`'s receivers.
///
/// pgwire races the handler's future against a cancel receiver it installed
/// before calling the handler; that future ends when the response is built,
/// before streamed rows are sent. Installing a new receiver drops pgwire's
/// sender, which is harmless only because this is the handler's last step:
/// `futures::select` polls the handler first, and it is ready in that same poll.
async fn arm_cancel<C: ClientInfo>(client: &C, signal: watch::Sender<bool>) {
    if signal.receiver_count() == 0 {
        return;
    }
    if let Some(handle) = client.session_extensions().get::<Arc<ConnectionHandle>>() {
        let request = handle.start_query().await;
        // Ends when a cancel comes or the next statement replaces the receiver.
        tokio::spawn(async move {
            if request.await.is_ok() {
                let _ = signal.send(true);
            }
        });
    }
}

/// The Postgres type a column of `data_type` is sent as.
pub fn pg_type(data_type: &DataType) -> Type {
    match data_type {
        DataType::Boolean => Type::BOOL,
        DataType::Int8 | DataType::Int16 | DataType::UInt8 => Type::INT2,
        DataType::Int32 | DataType::UInt16 => Type::INT4,
        DataType::Int64 | DataType::UInt32 => Type::INT8,
        DataType::Float16 | DataType::Float32 => Type::FLOAT4,
        DataType::Float64 => Type::FLOAT8,
        DataType::Timestamp(_, Some(_)) => Type::TIMESTAMPTZ,
        DataType::Timestamp(_, None) => Type::TIMESTAMP,
        DataType::Date32 => Type::DATE,
        DataType::Binary | DataType::LargeBinary => Type::BYTEA,
        _ => Type::TEXT,
    }
}

/// The Arrow type a parameter of Postgres type `t` is read as.
fn arrow_type(t: &Type) -> Option<DataType> {
    Some(match *t {
        Type::BOOL => DataType::Boolean,
        Type::INT2 | Type::INT4 | Type::INT8 | Type::OID => DataType::Int64,
        Type::FLOAT4 | Type::FLOAT8 | Type::NUMERIC => DataType::Float64,
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME => DataType::Utf8,
        Type::TIMESTAMPTZ => DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
        Type::TIMESTAMP => DataType::Timestamp(TimeUnit::Millisecond, None),
        Type::DATE => DataType::Date32,
        Type::BYTEA => DataType::Binary,
        _ => return None,
    })
}

/// `e` as a Postgres error response.
pub fn pg_error(e: &SqlError) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new("ERROR".to_owned(), e.sqlstate().to_owned(), e.to_string())))
}

fn fields(out_schema: &arrow::datatypes::Schema, format: &Format) -> Result<Vec<FieldInfo>, SqlError> {
    if let Format::Individual(codes) = format {
        if codes.len() != out_schema.fields().len() {
            return Err(SqlError::Parameter(format!(
                "{} result format codes for {} columns",
                codes.len(),
                out_schema.fields().len()
            )));
        }
    }
    Ok(out_schema
        .fields()
        .iter()
        .enumerate()
        .map(|(i, f)| FieldInfo::new(f.name().clone(), None, None, pg_type(f.data_type()), format.format_for(i)))
        .collect())
}

macro_rules! arr {
    ($col:expr, $t:ty) => {
        $col.as_any().downcast_ref::<$t>().ok_or_else(|| PgWireError::ApiError("array type mismatch".into()))?
    };
}

fn encode_value(enc: &mut DataRowEncoder, col: &dyn Array, r: usize) -> PgWireResult<()> {
    if col.is_null(r) || col.data_type() == &DataType::Null {
        return enc.encode_field(&None::<i64>);
    }
    let micros = |v: i64, unit: &TimeUnit| match unit {
        TimeUnit::Second => v.saturating_mul(1_000_000),
        TimeUnit::Millisecond => v.saturating_mul(1000),
        TimeUnit::Microsecond => v,
        TimeUnit::Nanosecond => v / 1000,
    };
    match col.data_type() {
        DataType::Boolean => enc.encode_field(&arr!(col, BooleanArray).value(r)),
        DataType::Int8 => enc.encode_field(&i16::from(arr!(col, Int8Array).value(r))),
        DataType::Int16 => enc.encode_field(&arr!(col, Int16Array).value(r)),
        DataType::UInt8 => enc.encode_field(&i16::from(arr!(col, UInt8Array).value(r))),
        DataType::Int32 => enc.encode_field(&arr!(col, Int32Array).value(r)),
        DataType::UInt16 => enc.encode_field(&i32::from(arr!(col, UInt16Array).value(r))),
        DataType::Int64 => enc.encode_field(&arr!(col, Int64Array).value(r)),
        DataType::UInt32 => enc.encode_field(&i64::from(arr!(col, UInt32Array).value(r))),
        DataType::Float32 => enc.encode_field(&arr!(col, Float32Array).value(r)),
        DataType::Float64 => enc.encode_field(&arr!(col, Float64Array).value(r)),
        DataType::Utf8 => enc.encode_field(&arr!(col, StringArray).value(r)),
        DataType::LargeUtf8 => enc.encode_field(&arr!(col, LargeStringArray).value(r)),
        DataType::Utf8View => enc.encode_field(&arr!(col, StringViewArray).value(r)),
        DataType::Binary => enc.encode_field(&arr!(col, BinaryArray).value(r)),
        DataType::LargeBinary => enc.encode_field(&arr!(col, LargeBinaryArray).value(r)),
        DataType::Date32 => {
            let days = arr!(col, Date32Array).value(r);
            let date = NaiveDate::from_ymd_opt(1970, 1, 1)
                .and_then(|d| d.checked_add_signed(chrono::Duration::days(i64::from(days))))
                .ok_or_else(|| PgWireError::ApiError("date out of range".into()))?;
            enc.encode_field(&date)
        }
        DataType::Timestamp(unit, tz) => {
            let v = match unit {
                TimeUnit::Second => arr!(col, TimestampSecondArray).value(r),
                TimeUnit::Millisecond => arr!(col, TimestampMillisecondArray).value(r),
                TimeUnit::Microsecond => arr!(col, TimestampMicrosecondArray).value(r),
                TimeUnit::Nanosecond => arr!(col, TimestampNanosecondArray).value(r),
            };
            let t = DateTime::from_timestamp_micros(micros(v, unit))
                .ok_or_else(|| PgWireError::ApiError("timestamp out of range".into()))?;
            if tz.is_some() {
                enc.encode_field(&t)
            } else {
                enc.encode_field(&t.naive_utc())
            }
        }
        _ => {
            let f = ArrayFormatter::try_new(col, &FormatOptions::default())
                .map_err(|e| PgWireError::ApiError(Box::new(e)))?;
            enc.encode_field(&f.value(r).to_string())
        }
    }
}

/// The rows of `out` as a pgwire query response.
fn query_response(out: QueryOutput, format: &Format) -> Result<QueryResponse, SqlError> {
    let fields = Arc::new(fields(&out.schema, format)?);
    let rows: Vec<PgWireResult<DataRow>> = out.batches.iter().flat_map(|b| encode_batch(&fields, b)).collect();
    // The rows keep their share of the memory pool until they are sent.
    let reservation = out.reservation;
    Ok(QueryResponse::new(
        fields,
        stream::iter(rows).map(move |row| {
            let _held = &reservation;
            row
        }),
    ))
}

/// Rows encoded ahead of the client, in chunks of one batch.
const CHUNKS_AHEAD: usize = 4;

/// The next batch of `stream`, unless the deadline passes first.
async fn next_batch(
    stream: &mut SendableRecordBatchStream,
    deadline: tokio::time::Instant,
    limit: std::time::Duration,
) -> Result<Option<RecordBatch>, SqlError> {
    match tokio::time::timeout_at(deadline, stream.next()).await {
        Err(_) => Err(SqlError::Timeout(limit)),
        Ok(None) => Ok(None),
        Ok(Some(batch)) => Ok(Some(batch?)),
    }
}

/// The rows of one batch.
fn encode_batch(fields: &Arc<Vec<FieldInfo>>, batch: &RecordBatch) -> Vec<PgWireResult<DataRow>> {
    let mut enc = DataRowEncoder::new(fields.clone());
    (0..batch.num_rows())
        .map(|r| {
            batch.columns().iter().try_for_each(|c| encode_value(&mut enc, c.as_ref(), r))?;
            Ok(enc.take_row())
        })
        .collect()
}

/// A query response that streams `stream`'s rows, starting with `first`; a
/// task encodes batches ahead of the client and stops when the client goes
/// away or the deadline passes.
fn streamed_response(
    fields: Arc<Vec<FieldInfo>>,
    first: RecordBatch,
    mut stream: SendableRecordBatchStream,
    deadline: tokio::time::Instant,
    limit: std::time::Duration,
    cancel: CancelSignal,
    record: impl FnOnce(Option<&SqlError>) + Send + 'static,
) -> QueryResponse {
    let (tx, rx) = tokio::sync::mpsc::channel::<Vec<PgWireResult<DataRow>>>(CHUNKS_AHEAD);
    let encoder_fields = fields.clone();
    tokio::spawn(async move {
        let end = async {
            // The client is gone (or the response was dropped): dropping the stream stops the query.
            tx.send(encode_batch(&encoder_fields, &first)).await.map_err(|_| SqlError::Canceled)?;
            loop {
                let next = tokio::select! {
                    biased;
                    // The response was dropped (cancelled before it was sent, a send failed, the
                    // client went away): stop the query now rather than at the next batch.
                    () = tx.closed() => Err(SqlError::Canceled),
                    () = cancelled(cancel.clone()) => Err(SqlError::Canceled),
                    next = next_batch(&mut stream, deadline, limit) => next,
                };
                let chunk = match next {
                    Ok(Some(batch)) => encode_batch(&encoder_fields, &batch),
                    Ok(None) => return Ok(()),
                    Err(e) => {
                        let _ = tx.send(vec![Err(pg_error(&e))]).await;
                        return Err(e);
                    }
                };
                tx.send(chunk).await.map_err(|_| SqlError::Canceled)?;
            }
        }
        .await;
        record(end.as_ref().err());
    });
    let rows =
        stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|chunk| (chunk, rx)) }).flat_map(stream::iter);
    QueryResponse::new(fields, rows)
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
            None => Ok((Response::Query(QueryResponse::new(fields, stream::empty())), false)),
            Some(first) => {
                let metrics = self.engine.metrics.clone();
                let record = move |e: Option<&SqlError>| metrics.record_query("pg", e, started.elapsed());
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

/// `$1`, `$2`, … types DataFusion inferred, by position.
fn param_types(plan: &LogicalPlan) -> Result<Vec<Option<DataType>>, SqlError> {
    let types = plan.get_parameter_types()?;
    let mut out = Vec::new();
    for (name, t) in types {
        let Some(i) = name.strip_prefix('$').and_then(|n| n.parse::<usize>().ok()).filter(|i| *i >= 1 && *i <= 65_535)
        else {
            continue;
        };
        if out.len() < i {
            out.resize(i, None);
        }
        out[i - 1] = t;
    }
    Ok(out)
}

fn param_value(
    portal: &Portal<String>,
    i: usize,
    client: Option<&Type>,
    target: Option<&DataType>,
) -> Result<ScalarValue, SqlError> {
    let bad = |e: PgWireError| SqlError::Parameter(format!("${}: {e}", i + 1));
    let raw = portal.parameters.get(i).cloned().flatten();
    let value = match raw {
        None => {
            return Ok(target.map_or(ScalarValue::Utf8(None), |t| ScalarValue::try_from(t).unwrap_or(ScalarValue::Null)))
        }
        Some(bytes) if portal.parameter_format.is_binary(i) => {
            let t = client.cloned().unwrap_or(Type::TEXT);
            match t {
                Type::BOOL => ScalarValue::Boolean(portal.parameter::<bool>(i, &t).map_err(bad)?),
                Type::INT2 => ScalarValue::Int64(portal.parameter::<i16>(i, &t).map_err(bad)?.map(i64::from)),
                Type::INT4 => ScalarValue::Int64(portal.parameter::<i32>(i, &t).map_err(bad)?.map(i64::from)),
                Type::INT8 => ScalarValue::Int64(portal.parameter::<i64>(i, &t).map_err(bad)?),
                Type::FLOAT4 => ScalarValue::Float64(portal.parameter::<f32>(i, &t).map_err(bad)?.map(f64::from)),
                Type::FLOAT8 => ScalarValue::Float64(portal.parameter::<f64>(i, &t).map_err(bad)?),
                Type::BYTEA => ScalarValue::Binary(Some(bytes.to_vec())),
                Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME => ScalarValue::Utf8(Some(
                    String::from_utf8(bytes.to_vec()).map_err(|e| SqlError::Parameter(format!("${}: {e}", i + 1)))?,
                )),
                other => {
                    return Err(SqlError::Parameter(format!(
                        "${}: binary parameters of type {} are not supported; send text",
                        i + 1,
                        other.name()
                    )))
                }
            }
        }
        Some(bytes) => ScalarValue::Utf8(Some(
            String::from_utf8(bytes.to_vec()).map_err(|e| SqlError::Parameter(format!("${}: {e}", i + 1)))?,
        )),
    };
    match target {
        Some(t) if value.data_type() != *t => {
            value.cast_to(t).map_err(|e| SqlError::Parameter(format!("${}: cannot read {value} as {t}: {e}", i + 1)))
        }
        _ => Ok(value),
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
        let started = Instant::now();
        let actions = match self.engine.parse(query) {
            Ok(a) => a,
            Err(e) => return self.timed(started, Err(e)).map(|r| vec![r]),
        };
        let mut responses = Vec::with_capacity(actions.len());
        let (cancel_tx, cancel) = watch::channel(false);
        for action in actions {
            let started = Instant::now();
            match self.timed(started, self.respond(action, None, &Format::UnifiedText, &cancel, started).await) {
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
        let started = Instant::now();
        let (cancel_tx, cancel) = watch::channel(false);
        let format = &portal.result_column_format;
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
        .await;
        drop(cancel);
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
        _client: &mut C,
        target: &StoredStatement<Self::Statement>,
    ) -> PgWireResult<DescribeStatementResponse>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
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
        _client: &mut C,
        portal: &Portal<Self::Statement>,
    ) -> PgWireResult<DescribePortalResponse>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
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

/// The pgwire server handlers.
pub struct PgHandlers(pub Arc<PgHandler>);

impl PgWireServerHandlers for PgHandlers {
    fn simple_query_handler(&self) -> Arc<impl SimpleQueryHandler> {
        self.0.clone()
    }

    fn extended_query_handler(&self) -> Arc<impl ExtendedQueryHandler> {
        self.0.clone()
    }

    fn startup_handler(&self) -> Arc<impl StartupHandler> {
        self.0.clone()
    }

    fn cancel_handler(&self) -> Arc<impl CancelHandler> {
        Arc::new(DefaultCancelHandler::new(self.0.connections.clone()))
    }
}
