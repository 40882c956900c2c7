//! `POST /v1/events`: NDJSON batches from field apps.
//!
//! The body holds one event per line (blank lines are skipped), each
//! validated as the pipeline validates (DOMAIN §2.4). Every line is handed to
//! the [`IngestTarget`] — the Kafka input topics (acknowledged by all
//! replicas) or the local ingest log (`fsync`ed) — and the answer comes once
//! they are durable: 202 with one result per line,
//!
//! ```json
//! {"accepted": 1, "rejected": 1, "results": [
//!   {"line": 1, "status": "accepted"},
//!   {"line": 2, "status": "rejected", "field": "value", "rule": "out_of_range", "reason": "…"}]}
//! ```
//!
//! A rejected line goes the way of any rejected input: the pipeline sends it
//! to the dead letters with its reason. Limits: the body size
//! ([`IngestLimits::max_bytes`], 413), a token bucket per token (or per client
//! address without `--auth-file`) of [`IngestLimits::rate`] events a second
//! with a burst of ten seconds' worth (429 with `Retry-After`, in seconds; a
//! batch larger than the burst is 413). An `Idempotency-Key` header (1 to 255
//! printable ASCII characters) makes a retry a no-op: within 24 h the same key
//! gets the first answer again (with `Idempotent-Replayed: true`), its events
//! ingested once; keys are durable with the events. A target that cannot make
//! the batch durable answers 503 (retry with the same key).

use crate::audit::AuditEvent;
use crate::auth::Principal;
use crate::http::ClientAddr;
use crate::Engine;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use treeai_dataflows::event::Position;
use treeai_dataflows::parse::parse_event;

/// Where posted events go; durable when [`IngestTarget::submit`] returns.
pub trait IngestTarget: Send + Sync {
    /// Makes `lines` durable, and with `key` remembers `answer` for it. If `key` was
    /// used already, ingests nothing and returns the earlier answer. Blocking.
    fn submit(&self, lines: &[&[u8]], key: Option<(&str, &str)>) -> Result<Option<String>, String>;
    /// The answer given earlier for `key`, if any.
    fn replay(&self, key: &str) -> Option<String>;
}

/// Limits of `POST /v1/events`.
#[derive(Clone, Copy, Debug)]
pub struct IngestLimits {
    /// Largest body, bytes (default 4 MiB).
    pub max_bytes: usize,
    /// Events a second per token (default 1000); the burst is ten seconds' worth.
    pub rate: f64,
}

impl Default for IngestLimits {
    fn default() -> Self {
        IngestLimits { max_bytes: 4 << 20, rate: 1000.0 }
    }
}

/// Token buckets, one per caller.
#[derive(Default)]
pub struct RateLimiter {
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

impl RateLimiter {
    /// Takes `n` events of `who`'s bucket: `Ok`, or `Err(seconds to wait)` (`None`: never fits).
    fn take(&self, who: &str, n: f64, rate: f64) -> Result<(), Option<u64>> {
        let burst = (rate * 10.0).max(1.0);
        if n > burst {
            return Err(None);
        }
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() > 100_000 {
            buckets.retain(|_, (_, at)| at.elapsed().as_secs() < 60);
        }
        let now = Instant::now();
        let (tokens, at) = buckets.entry(who.to_owned()).or_insert((burst, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * rate).min(burst);
        *at = now;
        if *tokens >= n {
            *tokens -= n;
            Ok(())
        } else {
            Err(Some(((n - *tokens) / rate).ceil().max(1.0) as u64))
        }
    }
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, axum::Json(json!({"error": {"message": message, "client_fault": status.is_client_error()}})))
        .into_response()
}

fn accepted(answer: String, replayed: bool) -> Response {
    let mut r = (StatusCode::ACCEPTED, answer).into_response();
    let h = r.headers_mut();
    h.insert(axum::http::header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if replayed {
        h.insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    r
}

/// The lines of an NDJSON body: split at `\n`, a trailing `\r` cut, blank lines skipped.
fn lines(body: &[u8]) -> Vec<&[u8]> {
    body.split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .filter(|l| !l.iter().all(u8::is_ascii_whitespace))
        .collect()
}

/// `POST /v1/events`.
pub async fn post_events(
    State(engine): State<Arc<Engine>>,
    who: Option<axum::Extension<Principal>>,
    client: Option<axum::Extension<axum::extract::ConnectInfo<ClientAddr>>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let started = Instant::now();
    let client = client.map(|c| c.0 .0 .0);
    let Some(target) = engine.ingest.clone() else {
        return error(
            StatusCode::CONFLICT,
            "this pipeline takes no posted events: it reads a bounded input (--input); run it on the generator or Kafka",
        );
    };
    let key = match headers.get("idempotency-key").map(|v| v.to_str()) {
        None => None,
        Some(Ok(k)) if (1..=255).contains(&k.len()) && k.bytes().all(|b| b.is_ascii_graphic()) => Some(k.to_owned()),
        Some(_) => {
            return error(StatusCode::BAD_REQUEST, "Idempotency-Key must be 1 to 255 printable ASCII characters")
        }
    };
    if let Some(answer) = key.as_deref().and_then(|k| target.replay(k)) {
        return accepted(answer, true);
    }
    let found = lines(&body);
    if found.is_empty() {
        return error(StatusCode::BAD_REQUEST, "the body holds no events: send NDJSON, one JSON event per line");
    }
    let caller =
        who.as_ref().map_or_else(|| client.map_or_else(String::new, |c| c.ip().to_string()), |w| w.name.clone());
    match engine.ingest_rate.take(&caller, found.len() as f64, engine.ingest_limits.rate) {
        Ok(()) => {}
        Err(None) => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!(
                    "{} events in one request exceed the burst of {} (--ingest-rate × 10): split the batch",
                    found.len(),
                    (engine.ingest_limits.rate * 10.0) as u64
                ),
            )
        }
        Err(Some(wait)) => {
            let mut r = error(
                StatusCode::TOO_MANY_REQUESTS,
                &format!("more than {} events a second; retry in {wait} s", engine.ingest_limits.rate),
            );
            r.headers_mut().insert(axum::http::header::RETRY_AFTER, HeaderValue::from(wait));
            return r;
        }
    }
    let (mut ok, mut bad) = (0u64, 0u64);
    let results: Vec<serde_json::Value> = found
        .iter()
        .enumerate()
        .map(|(i, line)| match parse_event(line, None, Position { source: 0, offset: i as u64 + 1 }) {
            Ok(_) => {
                ok += 1;
                json!({"line": i + 1, "status": "accepted"})
            }
            Err(r) => {
                bad += 1;
                json!({"line": i + 1, "status": "rejected", "field": r.field.as_str(), "rule": r.rule.as_str(), "reason": r.detail})
            }
        })
        .collect();
    let answer = json!({"accepted": ok, "rejected": bad, "results": results}).to_string();
    let n = found.len() as u64;
    drop(found);
    let submitted = {
        let (key, answer) = (key.clone(), answer.clone());
        tokio::task::spawn_blocking(move || {
            let found = lines(&body);
            target.submit(&found, key.as_deref().map(|k| (k, answer.as_str())))
        })
        .await
        .unwrap_or_else(|e| Err(format!("ingest task: {e}")))
    };
    let outcome = if submitted.is_ok() { "ok" } else { "error" };
    engine.audit.record(AuditEvent {
        user: who.as_ref().map(|w| w.name.as_str()),
        role: who.as_ref().map(|w| w.role),
        client,
        action: "ingest",
        detail: None,
        events: Some(n),
        outcome,
        started,
    });
    match submitted {
        Ok(None) => accepted(answer, false),
        Ok(Some(earlier)) => accepted(earlier, true),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, &format!("the events could not be made durable: {e}; retry")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_bucket_refuses_beyond_the_rate_and_says_how_long_to_wait() {
        let limiter = RateLimiter::default();
        assert_eq!(limiter.take("a", 100.0, 10.0), Ok(()));
        assert_eq!(limiter.take("a", 1.0, 10.0), Err(Some(1)));
        assert_eq!(limiter.take("b", 50.0, 10.0), Ok(()), "buckets are per caller");
        assert_eq!(limiter.take("c", 101.0, 10.0), Err(None), "larger than the burst");
        assert_eq!(lines(b"{}\r\n\n  \n{\"a\":1}"), vec![&b"{}"[..], &b"{\"a\":1}"[..]]);
    }
}
