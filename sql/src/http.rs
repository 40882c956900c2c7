//! HTTP: `POST /v1/sql`, `GET /healthz`, `GET /readyz`, `GET /metrics`.
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
//! input is finished (nothing more will come), else 503.

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
use axum::response::{IntoResponse, Response};
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
        .route("/metrics", get(metrics))
        .with_state(engine)
}

async fn healthz(State(engine): State<Arc<Engine>>) -> Response {
    match engine.metrics.liveness(engine.config.liveness_timeout) {
        Ok(()) => (StatusCode::OK, "ok\n").into_response(),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("not live: {why}\n")).into_response(),
    }
}

async fn readyz(State(engine): State<Arc<Engine>>) -> Response {
    let snap = engine.catalog().snapshot();
    if snap.watermark.is_some() || snap.frontier.is_none() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready: the views have no watermark yet\n").into_response()
    }
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

async fn sql(State(engine): State<Arc<Engine>>, headers: HeaderMap, body: Bytes) -> Response {
    let request: SqlRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            let e = SqlError::Parameter(format!("the body must be JSON {{\"sql\": \"...\"}}: {e}"));
            engine.metrics.record_query("http", Some(&e), std::time::Duration::ZERO);
            return error_response(&e);
        }
    };
    let out = match engine.query(&request.sql, Some(engine.config.http_max_rows), "http").await {
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
        for col in batch.columns() {
            for (r, row) in rows[start..].iter_mut().enumerate() {
                row.push(json_value(col.as_ref(), r));
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

macro_rules! get {
    ($col:expr, $t:ty) => {
        $col.as_any().downcast_ref::<$t>().expect("array type matches its data type")
    };
}

/// One value of an Arrow array as JSON.
pub fn json_value(col: &dyn Array, r: usize) -> Value {
    if col.is_null(r) || col.data_type() == &DataType::Null {
        return Value::Null;
    }
    match col.data_type() {
        DataType::Boolean => json!(get!(col, BooleanArray).value(r)),
        DataType::Int8 => json!(get!(col, Int8Array).value(r)),
        DataType::Int16 => json!(get!(col, Int16Array).value(r)),
        DataType::Int32 => json!(get!(col, Int32Array).value(r)),
        DataType::Int64 => json!(get!(col, Int64Array).value(r)),
        DataType::UInt8 => json!(get!(col, UInt8Array).value(r)),
        DataType::UInt16 => json!(get!(col, UInt16Array).value(r)),
        DataType::UInt32 => json!(get!(col, UInt32Array).value(r)),
        DataType::UInt64 => json!(get!(col, UInt64Array).value(r)),
        DataType::Float32 => float(f64::from(get!(col, Float32Array).value(r))),
        DataType::Float64 => float(get!(col, Float64Array).value(r)),
        DataType::Utf8 => json!(get!(col, StringArray).value(r)),
        DataType::LargeUtf8 => json!(get!(col, LargeStringArray).value(r)),
        DataType::Utf8View => json!(get!(col, StringViewArray).value(r)),
        DataType::Timestamp(TimeUnit::Millisecond, _) => {
            json!(format_ts(get!(col, TimestampMillisecondArray).value(r)))
        }
        DataType::Date32 => json!(format_day(get!(col, Date32Array).value(r))),
        DataType::Binary => {
            let bytes = get!(col, BinaryArray).value(r);
            json!(format!("\\x{}", bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()))
        }
        _ => match ArrayFormatter::try_new(col, &FormatOptions::default()) {
            Ok(f) => json!(f.value(r).to_string()),
            Err(e) => json!(format!("<{e}>")),
        },
    }
}
