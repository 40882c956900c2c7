//! HTTP: `POST /v1/sql`, `POST /v1/events` ([`crate::ingest`]), `GET /healthz`, `GET /readyz`, `GET /metrics`.
//!
//! `GET /healthz` answers 200 while the dataflow completes rounds (or has
//! stopped: a finished bounded input), 503 when no round completed for
//! `SqlConfig::liveness_timeout` — a hung pipeline fails the liveness probe.
//!
//! `POST /v1/sql` takes `{"sql": "..."}` (one statement) and answers
//!
//! ```json
//! {"columns": [{"name": "tree_id", "type": "text"}, ...],
//!  "rows": [["T-1", 42.5, ...], ...],
//!  "row_count": 1, "truncated": false, "watermark": "2026-11-25T09:50:00.000Z"}
//! ```
//!
//! Rows are arrays in column order. Values: integers and floats as JSON
//! numbers (a non-finite float as the string `"NaN"`, `"Infinity"`,
//! `"-Infinity"`), timestamps as RFC 3339 strings in UTC with milliseconds,
//! dates as `YYYY-MM-DD`, bytes as `\x` + hex, NULL as `null`, other types as
//! their text. `type` is the Postgres type name the wire protocol uses too. At
//! most [`crate::SqlConfig::http_max_rows`] rows are returned; `truncated`
//! says whether more were cut. `watermark` is the watermark of the snapshot
//! the query read.
//!
//! With `Accept: application/vnd.apache.arrow.stream` the answer is an Arrow
//! IPC stream of the same rows; the headers `x-treeai-truncated` and
//! `x-treeai-watermark` carry the rest.
//!
//! Errors: `{"error": {"message": "...", "sqlstate": "42601", "client_fault": true}}`
//! with status 400 (the statement's fault: syntax, unknown table, refused
//! write, bad JSON), 408 (time limit), 413 (memory limit) or 500 (ours).
//!
//! `GET /readyz` answers 200 once the views have a watermark, or the bounded
//! input is finished (nothing more will come), and — after a restore from a
//! checkpoint — every worker has caught up with its source; else 503. It is
//! 503 too while checkpoints are stuck: none became durable for three
//! checkpoint intervals plus 10 s (the store fails, or Kafka does not take the
//! alerts the checkpoint waits for); the body says why.
//!
//! `GET /v1/admin/cluster` answers the cluster's shape as this process sees it:
//! `process`, `processes`, `workers_per_process`, `workers`, the source
//! partitions each of this process's workers reads (`partitions_per_worker`,
//! by global worker index), and `checkpoints` (`restored_from`,
//! `newest_durable`).
//!
//! `POST /v1/admin/checkpoint` asks for a checkpoint and answers once it is
//! durable: 200 `{"checkpoint": N}`; 503 with the reason if it failed or took
//! longer than two minutes; 409 when checkpoints are off.
//!
//! With `--auth-file` every route but `/healthz`, `/readyz` and (unless
//! `--metrics-auth`) `/metrics` needs `Authorization: Bearer <token>` of a
//! role that may use it ([`required_role`]): none or an unknown token is 401
//! (with `WWW-Authenticate: Bearer`), a token of another role 403; both are
//! counted (`treeai_auth_failures_total{protocol="http"}`) and audited, and so
//! is every request let through (a `/v1/sql` statement with its text).

use crate::audit::AuditEvent;
use crate::auth::{Principal, Role};
use crate::{Engine, QueryOutput, SqlError};
use arrow::array::{
    Array, BinaryArray, BooleanArray, Date32Array, Float32Array, Float64Array, Int16Array, Int32Array, Int64Array,
    Int8Array, LargeStringArray, StringArray, StringViewArray, TimestampMillisecondArray, UInt16Array, UInt32Array,
    UInt64Array, UInt8Array,
};
use arrow::datatypes::{DataType, TimeUnit};
use arrow::util::display::{ArrayFormatter, FormatOptions};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;
use treeai_dataflows::time::{format_day, format_ts};

/// The media type of Arrow IPC streams.
pub const ARROW_STREAM: &str = "application/vnd.apache.arrow.stream";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SqlRequest {
    sql: String,
}

/// The HTTP routes over `engine`.
pub fn router(engine: Arc<Engine>) -> Router {
    Router::new()
        .route("/v1/sql", post(sql))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/v1/admin/checkpoint", post(checkpoint))
        .route("/v1/admin/cluster", get(cluster))
        .route("/metrics", get(metrics))
        .route(
            "/v1/events",
            post(crate::ingest::post_events)
                .layer(axum::extract::DefaultBodyLimit::max(engine.ingest_limits.max_bytes)),
        )
        .layer(axum::middleware::from_fn_with_state(engine.clone(), authorize))
        .layer(axum::middleware::from_fn_with_state(engine.clone(), same_site))
        .layer(axum::middleware::from_fn(traced))
        .with_state(engine)
}

/// One span per request (`METHOD /path`, kind server; exported with `--otlp-endpoint`), in
/// the trace of the request's W3C `traceparent` when it has one (the propagator the binary
/// installs reads it; without one nothing is read). Its status is recorded at the end.
async fn traced(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    use tracing::Instrument;
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    // The connection is answering a request: not idle however long this takes.
    struct Answering(Option<crate::idle::Busy>);
    impl Drop for Answering {
        fn drop(&mut self) {
            if let Some(busy) = &self.0 {
                busy.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
    }
    let busy = request.extensions().get::<axum::extract::ConnectInfo<ClientAddr>>().map(|c| c.0 .1.clone());
    if let Some(busy) = &busy {
        busy.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    let _answering = Answering(busy);
    let (method, path) = (request.method().clone(), request.uri().path().to_string());
    let span = tracing::info_span!(
        "http.request",
        otel.name = format!("{method} {path}"),
        otel.kind = "server",
        http.request.method = %method,
        url.path = path,
        http.response.status_code = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
    );
    let parent = opentelemetry::global::get_text_map_propagator(|p| {
        p.extract(&opentelemetry_http::HeaderExtractor(request.headers()))
    });
    if opentelemetry::trace::TraceContextExt::has_active_span(&parent) {
        // Fails only when no OpenTelemetry layer is installed: then there is nothing to join.
        let _ = span.set_parent(parent);
    }
    let response = next.run(request).instrument(span.clone()).await;
    span.record("http.response.status_code", response.status().as_u16());
    if response.status().is_server_error() {
        span.record("otel.status_code", "ERROR");
    }
    response
}

/// The client's address (the connection's peer), for the audit log.
#[derive(Clone, Debug)]
pub struct ClientAddr(pub std::net::SocketAddr, pub crate::idle::Busy);

impl<L> axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, crate::idle::IdleListener<L>>>
    for ClientAddr
where
    L: axum::serve::Listener<Addr = std::net::SocketAddr>,
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, crate::idle::IdleListener<L>>) -> Self {
        ClientAddr(*stream.remote_addr(), stream.io().busy())
    }
}

/// The role a path needs with `--auth-file` (`None`: open to all).
pub fn required_role(path: &str, metrics_auth: bool) -> Option<Role> {
    match path {
        "/healthz" | "/readyz" => None,
        "/metrics" => metrics_auth.then_some(Role::Reader), // (any role's token passes)
        "/v1/events" => Some(Role::Ingest),
        p if p.starts_with("/v1/admin/") => Some(Role::Admin),
        _ => Some(Role::Reader),
    }
}

/// The host part of a `Host` or `Origin` value (`http://a.b:8080` → `a.b`, `[::1]:80` → `::1`).
fn host_of(value: &str) -> &str {
    let rest = value.split_once("://").map_or(value, |(_, r)| r);
    let rest = rest.split('/').next().unwrap_or(rest);
    if let Some(v6) = rest.strip_prefix('[') {
        return v6.split(']').next().unwrap_or(v6);
    }
    rest.rsplit_once(':').map_or(rest, |(h, _)| h)
}

/// Whether `host` may be named in `Host` without being listed: an IP address or `localhost`.
fn plain_host(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost") || host.parse::<std::net::IpAddr>().is_ok()
}

/// Browsers' requests from other sites are refused (403), whatever the route:
/// - a request with an `Origin` header (a browser's cross-site `fetch` or form post) passes only
///   when the origin's host is the request's own `Host` or listed in `--http-allowed-hosts`;
/// - without `--auth-file` (an open server, as on a laptop), `Host` must be an IP address,
///   `localhost` or a listed name: a DNS-rebinding page's host name is refused. (With
///   credentials a rebinding page has no token to send.)
///
/// Probes, Prometheus, curl and programs send no `Origin` and name the address they reach.
async fn same_site(
    State(engine): State<Arc<Engine>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    match refused_site(&engine, request.headers()) {
        Some(refusal) => refusal,
        None => next.run(request).await,
    }
}

/// The refusal [`same_site`] answers, if any.
fn refused_site(engine: &Engine, headers: &HeaderMap) -> Option<Response> {
    let header_str = |name: header::HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
    let host = header_str(header::HOST).map(host_of).unwrap_or("");
    let allowed = |h: &str| engine.config.allowed_hosts.iter().any(|a| a.eq_ignore_ascii_case(h));
    if let Some(origin) = header_str(header::ORIGIN) {
        let from = host_of(origin);
        if origin == "null" || !(from.eq_ignore_ascii_case(host) || allowed(from)) {
            engine.metrics.auth_failure("http", "cross_site");
            return Some(
                (StatusCode::FORBIDDEN, format!("cross-site request from {origin} refused\n")).into_response(),
            );
        }
    }
    if engine.credentials.is_none() && !host.is_empty() && !plain_host(host) && !allowed(host) {
        engine.metrics.auth_failure("http", "host");
        return Some(
            (StatusCode::FORBIDDEN, format!("Host {host} is not this server's (name it in --http-allowed-hosts)\n"))
                .into_response(),
        );
    }
    None
}

async fn authorize(
    State(engine): State<Arc<Engine>>,
    mut request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let Some(credentials) = engine.credentials.clone() else { return next.run(request).await };
    let Some(needed) = required_role(request.uri().path(), engine.metrics_auth) else {
        return next.run(request).await;
    };
    let started = std::time::Instant::now();
    let client = request.extensions().get::<axum::extract::ConnectInfo<ClientAddr>>().map(|c| c.0 .0);
    let line = format!("{} {}", request.method(), request.uri().path());
    let admin = needed == Role::Admin;
    let refuse = |status: StatusCode, reason: &'static str, user: Option<&str>, message: &str| {
        engine.metrics.auth_failure("http", reason);
        engine.audit.record(AuditEvent {
            user,
            role: None,
            client,
            action: if admin { "admin" } else { "http" },
            detail: Some(reason),
            events: None,
            outcome: "refused",
            started,
        });
        let mut r = (status, Json(json!({"error": {"message": message, "client_fault": true}}))).into_response();
        if status == StatusCode::UNAUTHORIZED {
            r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"treeai\""));
        }
        r
    };
    let token = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(str::trim);
    let Some(token) = token else {
        return refuse(StatusCode::UNAUTHORIZED, "no_token", None, "this endpoint needs Authorization: Bearer <token>");
    };
    let Some(who) = credentials.token(token) else {
        return refuse(StatusCode::UNAUTHORIZED, "bad_token", None, "unknown or revoked token");
    };
    // `/metrics` (with `--metrics-auth`) takes a token of any role.
    if !who.role.allows(needed) && line != "GET /metrics" {
        let message = format!("token {:?} has role {}; {line} needs {}", who.name, who.role.name(), needed.name());
        return refuse(StatusCode::FORBIDDEN, "role", Some(&who.name), &message);
    }
    request.extensions_mut().insert(who.clone());
    let response = next.run(request).await;
    // `/v1/sql` and `/v1/events` write their own lines (the statement, the event count).
    if line != "POST /v1/sql" && line != "POST /v1/events" {
        engine.audit.record(AuditEvent {
            user: Some(&who.name),
            role: Some(who.role),
            client,
            action: if admin { "admin" } else { "http" },
            detail: Some(&line),
            events: None,
            outcome: if response.status().is_success() { "ok" } else { "error" },
            started,
        });
    }
    response
}

async fn healthz(State(engine): State<Arc<Engine>>) -> Response {
    match engine.metrics.liveness(engine.config.liveness_timeout) {
        Ok(()) => (StatusCode::OK, "ok\n").into_response(),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("not live: {why}\n")).into_response(),
    }
}

async fn readyz(State(engine): State<Arc<Engine>>) -> Response {
    let checkpoints = engine.checkpoints.as_ref().map_or(Ok(()), |hub| hub.health());
    match engine.metrics.readiness().map_err(String::from).and(checkpoints) {
        Ok(()) => (StatusCode::OK, "ready\n").into_response(),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {why}\n")).into_response(),
    }
}

async fn checkpoint(State(engine): State<Arc<Engine>>) -> Response {
    let Some(hub) = engine.checkpoints.clone() else {
        return (StatusCode::CONFLICT, "checkpoints are off (--no-checkpoint)\n").into_response();
    };
    let result = tokio::task::spawn_blocking(move || {
        let n = hub.request();
        hub.wait_durable(n, std::time::Duration::from_secs(120)).map(|()| n)
    })
    .await;
    match result {
        Ok(Ok(n)) => Json(serde_json::json!({ "checkpoint": n })).into_response(),
        Ok(Err(why)) => (StatusCode::SERVICE_UNAVAILABLE, format!("checkpoint failed: {why}\n")).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("checkpoint: {e}\n")).into_response(),
    }
}

/// `GET /v1/admin/cluster`: the cluster's shape as this process sees it — processes,
/// workers, the partitions each of this process's workers reads — and the checkpoints in use.
async fn cluster(State(engine): State<Arc<Engine>>) -> Response {
    let layout = engine.metrics.stats().layout.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let checkpoints = engine.checkpoints.as_ref().map(|hub| {
        json!({
            "restored_from": hub.restore().map(|r| r.number),
            "newest_durable": hub.durable_number(),
        })
    });
    Json(json!({
        "process": layout.process,
        "processes": layout.processes,
        "workers_per_process": layout.workers,
        "workers": layout.workers * layout.processes,
        "partitions_per_worker": layout.partitions,
        "source": engine.metrics.source(),
        "checkpoints": checkpoints,
    }))
    .into_response()
}

async fn metrics(State(engine): State<Arc<Engine>>) -> Response {
    let mut r = engine.metrics.render().into_response();
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"));
    r
}

fn error_response(e: &SqlError) -> Response {
    let status = match e {
        SqlError::Timeout(_) => StatusCode::REQUEST_TIMEOUT,
        SqlError::ResourcesExhausted(_) => StatusCode::PAYLOAD_TOO_LARGE,
        SqlError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        _ => StatusCode::BAD_REQUEST,
    };
    let body = json!({"error": {"message": e.to_string(), "sqlstate": e.sqlstate(), "client_fault": e.client_fault()}});
    (status, axum::Json(body)).into_response()
}

async fn sql(
    State(engine): State<Arc<Engine>>,
    who: Option<axum::Extension<Principal>>,
    client: Option<axum::Extension<axum::extract::ConnectInfo<ClientAddr>>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let started = std::time::Instant::now();
    let request: SqlRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            let e = SqlError::Parameter(format!("the body must be JSON {{\"sql\": \"...\"}}: {e}"));
            engine.metrics.record_query("http", Some(&e), std::time::Duration::ZERO);
            return error_response(&e);
        }
    };
    let result = engine.query(&request.sql, Some(engine.config.http_max_rows), "http").await;
    engine.audit.record(AuditEvent {
        user: who.as_ref().map(|w| w.name.as_str()),
        role: who.as_ref().map(|w| w.role),
        client: client.map(|c| c.0 .0 .0),
        action: "sql",
        detail: Some(&request.sql),
        events: None,
        outcome: if result.is_ok() { "ok" } else { "error" },
        started,
    });
    let out = match result {
        Ok(out) => out,
        Err(e) => return error_response(&e),
    };
    let arrow = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|p| p.trim().starts_with(ARROW_STREAM)));
    if arrow {
        arrow_response(&out)
    } else {
        json_response(&out)
    }
}

fn arrow_response(out: &QueryOutput) -> Response {
    let mut buf = Vec::new();
    let written = (|| {
        let mut w = arrow::ipc::writer::StreamWriter::try_new(&mut buf, &out.schema)?;
        for b in &out.batches {
            w.write(b)?;
        }
        w.finish()
    })();
    if let Err(e) = written {
        return error_response(&SqlError::Internal(format!("writing Arrow IPC: {e}")));
    }
    let mut r = (StatusCode::OK, buf).into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(ARROW_STREAM));
    h.insert("x-treeai-truncated", HeaderValue::from_static(if out.truncated { "true" } else { "false" }));
    if let Some(w) = out.watermark.and_then(|w| HeaderValue::from_str(&format_ts(w)).ok()) {
        h.insert("x-treeai-watermark", w);
    }
    r
}

fn json_response(out: &QueryOutput) -> Response {
    let columns: Vec<Value> = out
        .schema
        .fields()
        .iter()
        .map(|f| json!({"name": f.name(), "type": crate::pg::pg_type(f.data_type()).name()}))
        .collect();
    let mut rows: Vec<Vec<Value>> = Vec::with_capacity(out.rows);
    for batch in &out.batches {
        let start = rows.len();
        rows.extend((0..batch.num_rows()).map(|_| Vec::with_capacity(batch.num_columns())));
        // Column by column: the column's type is matched once, then its cells are walked.
        for col in batch.columns() {
            let values = JsonColumn::new(col.as_ref());
            for (r, row) in rows[start..].iter_mut().enumerate() {
                row.push(values.value(r));
            }
        }
    }
    let body = json!({
        "columns": columns,
        "rows": rows,
        "row_count": out.rows,
        "truncated": out.truncated,
        "watermark": out.watermark.map(format_ts),
    });
    axum::Json(body).into_response()
}

fn float(v: f64) -> Value {
    if v.is_finite() {
        json!(v)
    } else if v.is_nan() {
        json!("NaN")
    } else if v > 0.0 {
        json!("Infinity")
    } else {
        json!("-Infinity")
    }
}

/// One column of a batch as JSON values: its Arrow type matched and its array
/// downcast once ([`JsonColumn::new`]), then [`JsonColumn::value`] per cell.
pub struct JsonColumn<'a> {
    array: &'a dyn Array,
    cells: Cells<'a>,
}

enum Cells<'a> {
    Null,
    Bool(&'a BooleanArray),
    Int8(&'a Int8Array),
    Int16(&'a Int16Array),
    Int32(&'a Int32Array),
    Int64(&'a Int64Array),
    UInt8(&'a UInt8Array),
    UInt16(&'a UInt16Array),
    UInt32(&'a UInt32Array),
    UInt64(&'a UInt64Array),
    Float32(&'a Float32Array),
    Float64(&'a Float64Array),
    Utf8(&'a StringArray),
    LargeUtf8(&'a LargeStringArray),
    Utf8View(&'a StringViewArray),
    TimestampMs(&'a TimestampMillisecondArray),
    Date32(&'a Date32Array),
    Binary(&'a BinaryArray),
    /// Any other type, as Arrow's text, or the error saying it has none.
    Text(Result<ArrayFormatter<'a>, String>),
}

fn array<T: 'static>(col: &dyn Array) -> &T {
    col.as_any().downcast_ref::<T>().expect("array type matches its data type")
}

impl<'a> JsonColumn<'a> {
    /// The values of `col`.
    pub fn new(col: &'a dyn Array) -> Self {
        let cells = match col.data_type() {
            DataType::Null => Cells::Null,
            DataType::Boolean => Cells::Bool(array(col)),
            DataType::Int8 => Cells::Int8(array(col)),
            DataType::Int16 => Cells::Int16(array(col)),
            DataType::Int32 => Cells::Int32(array(col)),
            DataType::Int64 => Cells::Int64(array(col)),
            DataType::UInt8 => Cells::UInt8(array(col)),
            DataType::UInt16 => Cells::UInt16(array(col)),
            DataType::UInt32 => Cells::UInt32(array(col)),
            DataType::UInt64 => Cells::UInt64(array(col)),
            DataType::Float32 => Cells::Float32(array(col)),
            DataType::Float64 => Cells::Float64(array(col)),
            DataType::Utf8 => Cells::Utf8(array(col)),
            DataType::LargeUtf8 => Cells::LargeUtf8(array(col)),
            DataType::Utf8View => Cells::Utf8View(array(col)),
            DataType::Timestamp(TimeUnit::Millisecond, _) => Cells::TimestampMs(array(col)),
            DataType::Date32 => Cells::Date32(array(col)),
            DataType::Binary => Cells::Binary(array(col)),
            _ => Cells::Text(ArrayFormatter::try_new(col, &FormatOptions::default()).map_err(|e| e.to_string())),
        };
        JsonColumn { array: col, cells }
    }

    /// The value of row `r`.
    pub fn value(&self, r: usize) -> Value {
        if matches!(self.cells, Cells::Null) || self.array.is_null(r) {
            return Value::Null;
        }
        match &self.cells {
            Cells::Null => Value::Null,
            Cells::Bool(a) => json!(a.value(r)),
            Cells::Int8(a) => json!(a.value(r)),
            Cells::Int16(a) => json!(a.value(r)),
            Cells::Int32(a) => json!(a.value(r)),
            Cells::Int64(a) => json!(a.value(r)),
            Cells::UInt8(a) => json!(a.value(r)),
            Cells::UInt16(a) => json!(a.value(r)),
            Cells::UInt32(a) => json!(a.value(r)),
            Cells::UInt64(a) => json!(a.value(r)),
            Cells::Float32(a) => float(f64::from(a.value(r))),
            Cells::Float64(a) => float(a.value(r)),
            Cells::Utf8(a) => json!(a.value(r)),
            Cells::LargeUtf8(a) => json!(a.value(r)),
            Cells::Utf8View(a) => json!(a.value(r)),
            Cells::TimestampMs(a) => json!(format_ts(a.value(r))),
            Cells::Date32(a) => json!(format_day(a.value(r))),
            Cells::Binary(a) => {
                let bytes = a.value(r);
                json!(format!("\\x{}", bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()))
            }
            Cells::Text(Ok(f)) => json!(f.value(r).to_string()),
            Cells::Text(Err(e)) => json!(format!("<{e}>")),
        }
    }
}

/// One value of an Arrow array as JSON (a [`JsonColumn`] of one cell; to
/// read many cells of a column, make the `JsonColumn` once).
pub fn json_value(col: &dyn Array, r: usize) -> Value {
    JsonColumn::new(col).value(r)
}

#[cfg(test)]
mod tests {
    /// Every type's JSON, per column, as `json_value` gave it cell by cell
    /// before the columns' types were matched once.
    #[test]
    fn every_type_gives_the_json_of_the_cell_by_cell_encoder() {
        let batch = crate::pg::encode::tests::every_type();
        let want = [
            "[true,null,false]",
            "[-128,0,null]",
            "[null,32767,-1]",
            "[255,null,0]",
            "[-2147483648,7,null]",
            "[65535,null,1]",
            "[9223372036854775807,-42,null]",
            "[null,4294967295,3]",
            "[18446744073709551615,null,5]",
            "[1.5,\"NaN\",null]",
            "[42.5,\"Infinity\",-0.1]",
            "[\"T-1\",null,\"é ü\"]",
            "[\"\",\"x\",null]",
            "[\"a longer string than twelve\",null,\"b\"]",
            "[\"\\\\x00ff\",null,\"\\\\x\"]",
            "[null,\"6162\",\"01\"]",
            "[\"2025-11-20\",null,\"1969-12-31\"]",
            "[\"2026-11-25T09:50:00Z\",null,\"1970-01-01T00:00:00Z\"]",
            "[\"2026-11-25T09:50:00.123Z\",\"1969-12-31T23:59:59.999Z\",null]",
            "[\"2026-11-25T09:50:00.123456\",null,\"1970-01-01T00:00:00.000001\"]",
            "[null,\"2026-11-25T11:50:00.123456789+02:00\",\"1970-01-01T02:00:00.000000999+02:00\"]",
            "[null,null,null]",
            "[\"123.45\",null,\"-0.05\"]",
        ];
        let got: Vec<String> = batch
            .columns()
            .iter()
            .map(|col| {
                let values = super::JsonColumn::new(col.as_ref());
                serde_json::to_string(&(0..batch.num_rows()).map(|r| values.value(r)).collect::<Vec<_>>()).unwrap()
            })
            .collect();
        assert_eq!(got, want);
    }
}
