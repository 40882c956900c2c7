//! The audit log (with `--auth-file`): one JSON line per login, SQL statement,
//! HTTP request that needs a role (admin calls, `/v1/sql`, subscriptions) and
//! refusal, to `--audit-log` (a file, appended to; `-` is standard output).
//!
//! ```json
//! {"time":"2026-11-30T01:02:03.456Z","user":"grafana","role":"reader","client":"10.0.0.7:51234",
//!  "action":"sql","statement":"select count(*) from tree_scores","outcome":"ok","duration_ms":3.1}
//! ```
//!
//! `action` is `login`, `sql`, `ingest` (with `events`, the lines posted),
//! `http` (with the method and path in `request`) or `admin`; `outcome` is `ok`, `error` (the statement failed) or `refused`
//! (with the reason in `detail`). A statement whose rows stream is logged when
//! its first rows are ready (its `duration_ms` is the time to them). A
//! statement longer than 8 KiB is cut (`"statement_truncated": true`).
//! Lines are written whole under a lock; a write error is logged once and
//! does not stop the request.
//!
//! With a lake, the same records also land in it as the table `audit`
//! (`audit/date=YYYY-MM-DD/part-<ms>-<tag>.parquet`, queryable as
//! `lake.audit`): buffered, and written every few seconds and when the server
//! stops ([`Audit::flush`]). A file that cannot be written is retried with the
//! next; each process of a cluster writes its own files.

use crate::auth::Role;
use object_store::ObjectStoreExt;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Longest statement text kept in a line.
const MAX_STATEMENT: usize = 8 << 10;

/// One audited action.
pub struct AuditEvent<'a> {
    /// Who (the user or token name; `None` when unknown).
    pub user: Option<&'a str>,
    /// Their role, when authenticated.
    pub role: Option<Role>,
    /// The client's address.
    pub client: Option<SocketAddr>,
    /// `login`, `sql`, `http`, `admin`.
    pub action: &'a str,
    /// The statement (`sql`), the request line (`http`, `admin`) or the reason of a refusal.
    pub detail: Option<&'a str>,
    /// Events in an ingest request.
    pub events: Option<u64>,
    /// `ok`, `error`, `refused`.
    pub outcome: &'a str,
    /// When the action began.
    pub started: Instant,
}

/// Where audit lines go.
pub struct Audit {
    out: Option<Mutex<Box<dyn Write + Send>>>,
    failed: AtomicBool,
    lake: std::sync::OnceLock<LakeOut>,
}

/// One record as the lake's `audit` table holds it.
struct Row {
    time_ms: i64,
    user: Option<String>,
    role: Option<&'static str>,
    client: Option<String>,
    action: String,
    statement: Option<String>,
    request: Option<String>,
    reason: Option<String>,
    events: Option<i64>,
    outcome: String,
    duration_ms: f64,
}

/// The records waiting for the lake, and where they go.
struct LakeOut {
    pending: Mutex<Vec<Row>>,
    store: Arc<dyn object_store::ObjectStore>,
    prefix: object_store::path::Path,
    /// Keeps this process's file names apart from other processes'.
    tag: String,
    files: std::sync::atomic::AtomicU64,
}

impl Audit {
    /// No audit log.
    pub fn off() -> Arc<Audit> {
        Arc::new(Audit { out: None, failed: AtomicBool::new(false), lake: std::sync::OnceLock::new() })
    }

    /// Appends to `path` (`-`: standard output).
    pub fn open(path: &str) -> std::io::Result<Arc<Audit>> {
        let out: Box<dyn Write + Send> = if path == "-" {
            Box::new(std::io::stdout())
        } else {
            Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|e| std::io::Error::new(e.kind(), format!("audit log {path}: {e}")))?,
            )
        };
        Ok(Arc::new(Audit {
            out: Some(Mutex::new(out)),
            failed: AtomicBool::new(false),
            lake: std::sync::OnceLock::new(),
        }))
    }

    /// Lands the records in the lake at `url` too (table `audit`), every `interval`.
    pub fn land_in(
        self: &Arc<Self>,
        url: &str,
        options: &[(String, String)],
        interval: std::time::Duration,
    ) -> Result<(), String> {
        let (store, prefix) = treeai_schema::lake::open_store(url, options).map_err(|e| e.to_string())?;
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let tag = format!("{:x}", (now as u64) ^ (u64::from(std::process::id()) << 40));
        let out = LakeOut { pending: Mutex::default(), store, prefix, tag, files: Default::default() };
        if self.lake.set(out).is_err() {
            return Ok(());
        }
        let weak = Arc::downgrade(self);
        std::thread::Builder::new()
            .name("treeai-audit".into())
            .spawn(move || loop {
                std::thread::sleep(interval);
                match weak.upgrade() {
                    Some(audit) => audit.flush(),
                    None => return,
                }
            })
            .map_err(|e| e.to_string())?;
        Ok(())
    }

    /// Writes the records buffered for the lake (also called by the timer).
    pub fn flush(&self) {
        let Some(lake) = self.lake.get() else { return };
        let rows = std::mem::take(&mut *lake.pending.lock().unwrap_or_else(|p| p.into_inner()));
        if rows.is_empty() {
            return;
        }
        let mut by_day: std::collections::BTreeMap<String, Vec<Row>> = std::collections::BTreeMap::new();
        for row in rows {
            by_day.entry(treeai_schema::lake::date_part(Some(row.time_ms))).or_default().push(row);
        }
        let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(r) => r,
            Err(e) => return tracing::error!("audit: {e}"),
        };
        for (day, rows) in by_day {
            let n = lake.files.fetch_add(1, Ordering::Relaxed);
            let ms = rows.first().map_or(0, |r| r.time_ms);
            let name = format!("audit/{day}/part-{ms}-{}-{n}.parquet", lake.tag);
            let path: object_store::path::Path =
                lake.prefix.parts().chain(object_store::path::Path::from(name.as_str()).parts()).collect();
            let written = encode(&rows).and_then(|bytes| {
                runtime.block_on(lake.store.put(&path, bytes.into())).map(|_| ()).map_err(|e| e.to_string())
            });
            if let Err(e) = written {
                tracing::error!("audit: writing {name}: {e}; retried with the next file");
                lake.pending.lock().unwrap_or_else(|p| p.into_inner()).extend(rows);
            }
        }
    }

    /// Whether lines are written.
    pub fn enabled(&self) -> bool {
        self.out.is_some()
    }

    /// Writes one line.
    pub fn record(&self, e: AuditEvent<'_>) {
        let Some(out) = &self.out else { return };
        let mut line = serde_json::Map::new();
        let time = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        line.insert("time".into(), time.into());
        line.insert("user".into(), e.user.map_or(serde_json::Value::Null, Into::into));
        line.insert("role".into(), e.role.map_or(serde_json::Value::Null, |r| r.name().into()));
        line.insert("client".into(), e.client.map_or(serde_json::Value::Null, |a| a.to_string().into()));
        line.insert("action".into(), e.action.into());
        if let Some(d) = e.detail {
            let key = match (e.action, e.outcome) {
                ("sql", _) => "statement",
                (_, "refused") => "reason",
                _ => "request",
            };
            if d.len() > MAX_STATEMENT {
                let mut cut = MAX_STATEMENT;
                while !d.is_char_boundary(cut) {
                    cut -= 1;
                }
                line.insert(key.into(), d[..cut].into());
                line.insert(format!("{key}_truncated"), true.into());
            } else {
                line.insert(key.into(), d.into());
            }
        }
        if let Some(n) = e.events {
            line.insert("events".into(), n.into());
        }
        line.insert("outcome".into(), e.outcome.into());
        let ms = (e.started.elapsed().as_secs_f64() * 1e4).round() / 10.0;
        line.insert("duration_ms".into(), ms.into());
        if let Some(lake) = self.lake.get() {
            let field = |k: &str| line.get(k).and_then(|v| v.as_str()).map(str::to_string);
            let row = Row {
                time_ms: std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as i64),
                user: e.user.map(str::to_string),
                role: e.role.map(|r| r.name()),
                client: e.client.map(|a| a.to_string()),
                action: e.action.to_string(),
                statement: field("statement"),
                request: field("request"),
                reason: field("reason"),
                events: e.events.map(|n| n as i64),
                outcome: e.outcome.to_string(),
                duration_ms: ms,
            };
            lake.pending.lock().unwrap_or_else(|p| p.into_inner()).push(row);
        }
        let mut text = serde_json::Value::Object(line).to_string();
        text.push('\n');
        let mut out = out.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(err) = out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
            if !self.failed.swap(true, Ordering::Relaxed) {
                tracing::error!("audit log: {err} (further write errors are not logged)");
            }
        }
    }
}

/// The rows as one Parquet file of the `audit` table's schema.
fn encode(rows: &[Row]) -> Result<Vec<u8>, String> {
    use datafusion::arrow::array::{ArrayRef, Float64Array, Int64Array, StringArray, TimestampMillisecondArray};
    let schema = treeai_schema::lake::Table::Audit.schema();
    let text = |f: &dyn Fn(&Row) -> Option<&str>| -> ArrayRef {
        Arc::new(StringArray::from(rows.iter().map(f).collect::<Vec<_>>()))
    };
    let ts_type = schema.field(0).data_type().clone();
    let time = TimestampMillisecondArray::from(rows.iter().map(|r| r.time_ms).collect::<Vec<_>>());
    let time: ArrayRef = datafusion::arrow::compute::cast(&time, &ts_type).map_err(|e| e.to_string())?;
    let columns: Vec<ArrayRef> = vec![
        time,
        text(&|r| r.user.as_deref()),
        text(&|r| r.role),
        text(&|r| r.client.as_deref()),
        text(&|r| Some(r.action.as_str())),
        text(&|r| r.statement.as_deref()),
        text(&|r| r.request.as_deref()),
        text(&|r| r.reason.as_deref()),
        Arc::new(Int64Array::from(rows.iter().map(|r| r.events).collect::<Vec<_>>())),
        text(&|r| Some(r.outcome.as_str())),
        Arc::new(Float64Array::from(rows.iter().map(|r| r.duration_ms).collect::<Vec<_>>())),
    ];
    let batch =
        datafusion::arrow::record_batch::RecordBatch::try_new(schema.clone(), columns).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    let mut writer =
        datafusion::parquet::arrow::ArrowWriter::try_new(&mut out, schema, None).map_err(|e| e.to_string())?;
    writer.write(&batch).map_err(|e| e.to_string())?;
    writer.close().map_err(|e| e.to_string())?;
    Ok(out)
}
