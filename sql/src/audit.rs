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

use crate::auth::Role;
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
}

impl Audit {
    /// No audit log.
    pub fn off() -> Arc<Audit> {
        Arc::new(Audit { out: None, failed: AtomicBool::new(false) })
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
        Ok(Arc::new(Audit { out: Some(Mutex::new(out)), failed: AtomicBool::new(false) }))
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
