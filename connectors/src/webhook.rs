//! Alert routing to a webhook (`--webhook-url`): every critical and resolved
//! alert as one HTTP POST of JSON that both PagerDuty's Events API v2 and a
//! Slack incoming webhook accept.
//!
//! ```json
//! {"routing_key": "…", "event_action": "trigger", "dedup_key": "T-42/3",
//!  "payload": {"summary": "Tree T-42 is critical: score 83.1 (us-east), top penalty tilt",
//!              "source": "treeai", "severity": "critical", "timestamp": "2026-11-30T04:00:00.000Z",
//!              "component": "T-42", "group": "us-east", "class": "tree_risk",
//!              "custom_details": {"alert_id": "T-42/3", "kind": "critical", "tree_id": "T-42", …}},
//!  "text": "Tree T-42 is critical: …"}
//! ```
//!
//! `event_action` is `trigger` for a critical alert and `resolve` for the
//! resolved one that follows it; both carry the same `dedup_key` — the id of
//! the critical alert, `tree_id/seq` (odd `seq`) — so PagerDuty closes the
//! incident it opened. `routing_key` is sent only when given
//! (`--webhook-routing-key`, PagerDuty's integration key); Slack reads `text`
//! and ignores the rest.
//!
//! # Delivery
//!
//! Alerts are queued by the egress and posted, in order, by one thread. A
//! network error, a timeout, 429 or a 5xx is retried with exponential backoff
//! (0.5 s doubling, at most 30 s, or the server's `Retry-After`) up to
//! `max_attempts`; another 4xx, or the last attempt, sends the alert to the
//! dead letters: one JSON line in `<data-dir>/webhook/deadletter.ndjson` (the
//! payload, the error, the attempts), fsynced, and
//! `treeai_webhook_failures_total`. Never dropped silently.
//!
//! Checkpoints wait until every alert queued before their cut is delivered
//! or dead-lettered (like the Kafka outputs): after a crash the restored run
//! derives again exactly the alerts after the checkpoint, with the same ids,
//! so delivery is **at least once** with a stable `dedup_key`.

use serde_json::{json, Value};
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex};
use std::time::{Duration, Instant};
use treeai_dataflows::alerts::{Alert, AlertKind};
use treeai_dataflows::runtime::Counters;
use treeai_dataflows::source::{DeadLetter, NullSink, Sink, SinkFactory, SinkRole};
use treeai_dataflows::time::format_ts;

/// Webhook settings.
#[derive(Clone, Debug)]
pub struct WebhookConfig {
    /// Where alerts are posted.
    pub url: String,
    /// PagerDuty's integration key, sent as `routing_key` (when given).
    pub routing_key: Option<String>,
    /// Attempts per alert before it is dead-lettered (default 6).
    pub max_attempts: u32,
    /// The first retry's delay (default 500 ms; doubling, at most 30 s).
    pub initial_backoff: Duration,
    /// One attempt's time limit (default 10 s).
    pub timeout: Duration,
    /// The dead-letter file of alerts that could not be delivered.
    pub dead_letters: PathBuf,
}

impl WebhookConfig {
    /// Defaults for `url`, dead letters under `data_dir/webhook/`.
    pub fn new(url: String, data_dir: &std::path::Path) -> Self {
        WebhookConfig {
            url,
            routing_key: None,
            max_attempts: 6,
            initial_backoff: Duration::from_millis(500),
            timeout: Duration::from_secs(10),
            dead_letters: data_dir.join("webhook").join("deadletter.ndjson"),
        }
    }
}

/// The JSON posted for `alert` (see the module's docs).
pub fn payload(alert: &Alert, routing_key: Option<&str>) -> Value {
    let critical = alert.kind == AlertKind::Critical;
    // A resolve closes the incident its critical alert opened: the previous alert of the tree.
    let dedup_key = if critical { alert.id() } else { format!("{}/{}", alert.tree_id, alert.seq.saturating_sub(1)) };
    let region = alert.region.map_or("unknown region", |r| r.as_str());
    let summary = if critical {
        format!(
            "Tree {} is critical: score {:.1} ({region}), top penalty {}",
            alert.tree_id,
            alert.score.unwrap_or(f64::NAN),
            alert.top_penalty
        )
    } else {
        format!("Tree {} is no longer critical: now {} ({region})", alert.tree_id, alert.band_str())
    };
    let mut details = crate::kafka::sink::alert_json(alert);
    details["alert_id"] = Value::from(alert.id());
    let mut out = json!({
        "event_action": if critical { "trigger" } else { "resolve" },
        "dedup_key": dedup_key,
        "payload": {
            "summary": summary,
            "source": "treeai",
            "severity": if critical { "critical" } else { "info" },
            "timestamp": alert.watermark.map(format_ts),
            "component": alert.tree_id,
            "group": alert.region.map(|r| r.as_str()),
            "class": "tree_risk",
            "custom_details": details,
        },
        "text": summary,
    });
    if let Some(key) = routing_key {
        out["routing_key"] = Value::from(key);
    }
    out
}

struct Job {
    seq: u64,
    alert_id: String,
    body: Value,
}

#[derive(Default)]
struct Counts {
    sent: AtomicU64,
    retries: AtomicU64,
    failures: AtomicU64,
}

struct Inner {
    tx: Mutex<Option<mpsc::Sender<Job>>>,
    /// Sequence number of the last alert queued.
    queued: AtomicU64,
    /// The queue position of the newest checkpoint's cut.
    cut: AtomicU64,
    /// Sequence number up to which every alert is delivered or dead-lettered.
    settled: Mutex<u64>,
    settled_changed: Condvar,
    counts: Counts,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Set by `close`: stop retrying (what is left is dead-lettered).
    closing: std::sync::atomic::AtomicBool,
    /// PagerDuty's integration key.
    routing_key: Option<String>,
}

/// The webhook output: one delivery thread, and the egress sink that feeds it.
#[derive(Clone)]
pub struct Webhook(Arc<Inner>);

impl Webhook {
    /// Starts the delivery thread.
    pub fn start(config: WebhookConfig) -> Result<Webhook, crate::ConnectorError> {
        if !(config.url.starts_with("http://") || config.url.starts_with("https://")) {
            return Err(crate::ConnectorError::Input(format!("--webhook-url {:?}: not an http(s) URL", config.url)));
        }
        let client = reqwest::Client::builder()
            .timeout(config.timeout)
            .build()
            .map_err(|e| crate::ConnectorError::Output(format!("webhook client: {e}")))?;
        let (tx, rx) = mpsc::channel::<Job>();
        let inner = Arc::new(Inner {
            tx: Mutex::new(Some(tx)),
            queued: AtomicU64::new(0),
            cut: AtomicU64::new(0),
            settled: Mutex::new(0),
            settled_changed: Condvar::new(),
            counts: Counts::default(),
            thread: Mutex::new(None),
            closing: std::sync::atomic::AtomicBool::new(false),
            routing_key: config.routing_key.clone(),
        });
        let weak = Arc::downgrade(&inner);
        let thread = std::thread::Builder::new()
            .name("treeai-webhook".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::error!("webhook: no runtime: {e}");
                        return;
                    }
                };
                for job in rx {
                    let Some(inner) = weak.upgrade() else { return };
                    let outcome = runtime.block_on(deliver(&client, &config, &inner, &job));
                    if let Err(error) = outcome {
                        inner.counts.failures.fetch_add(1, Ordering::Relaxed);
                        tracing::error!("webhook: alert {} not delivered: {error}", job.alert_id);
                        if let Err(e) = dead_letter(&config, &job, &error) {
                            tracing::error!("webhook: writing the dead letter of alert {}: {e}", job.alert_id);
                        }
                    }
                    *inner.settled.lock().unwrap_or_else(|p| p.into_inner()) = job.seq;
                    inner.settled_changed.notify_all();
                }
            })
            .map_err(|e| crate::ConnectorError::Output(format!("webhook thread: {e}")))?;
        *inner.thread.lock().unwrap_or_else(|p| p.into_inner()) = Some(thread);
        Ok(Webhook(inner))
    }

    /// A sink factory: the egress sink queues alerts; worker sinks do nothing.
    pub fn sink_factory(&self) -> SinkFactory {
        let me = self.clone();
        Arc::new(move |role| match role {
            SinkRole::Egress => Box::new(WebhookSink(me.clone())) as Box<dyn Sink>,
            SinkRole::Worker(_) => Box::new(NullSink),
        })
    }

    /// For the checkpoint writer: waits until every alert queued before the newest cut is
    /// delivered or dead-lettered.
    pub fn flush_for_checkpoint(&self, timeout: Duration) -> Result<(), String> {
        let want = self.0.cut.load(Ordering::SeqCst);
        self.wait_settled(want, timeout)
    }

    fn wait_settled(&self, want: u64, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        let mut settled = self.0.settled.lock().unwrap_or_else(|p| p.into_inner());
        while *settled < want {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!("webhook: {} alerts not delivered yet", want - *settled));
            }
            settled = self.0.settled_changed.wait_timeout(settled, left).unwrap_or_else(|p| p.into_inner()).0;
        }
        Ok(())
    }

    /// Registers `treeai_webhook_sent_total`, `…_retries_total`, `…_failures_total`.
    pub fn register_metrics(&self, counters: &Counters) {
        let me = self.0.clone();
        counters.add("treeai_webhook_sent_total", "Alerts delivered to the webhook.", move || {
            me.counts.sent.load(Ordering::Relaxed)
        });
        let me = self.0.clone();
        counters.add("treeai_webhook_retries_total", "Webhook attempts retried.", move || {
            me.counts.retries.load(Ordering::Relaxed)
        });
        let me = self.0.clone();
        counters.add(
            "treeai_webhook_failures_total",
            "Alerts the webhook did not take after every attempt (in its dead letters).",
            move || me.counts.failures.load(Ordering::Relaxed),
        );
    }

    /// Stops taking alerts and waits (at most `timeout`) for the queue; what is left after it is
    /// dead-lettered without more retries.
    pub fn close(&self, timeout: Duration) {
        self.0.tx.lock().unwrap_or_else(|p| p.into_inner()).take();
        let want = self.0.queued.load(Ordering::SeqCst);
        if self.wait_settled(want, timeout).is_err() {
            self.0.closing.store(true, Ordering::SeqCst);
        }
        if let Some(thread) = self.0.thread.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = thread.join();
        }
    }
}

/// Posts one alert, retrying as the module's docs say; `Err` with the last error.
async fn deliver(client: &reqwest::Client, config: &WebhookConfig, inner: &Inner, job: &Job) -> Result<(), String> {
    let body = serde_json::to_vec(&job.body).map_err(|e| e.to_string())?;
    let mut backoff = config.initial_backoff;
    let mut last = String::new();
    for attempt in 1..=config.max_attempts.max(1) {
        if inner.closing.load(Ordering::SeqCst) {
            // The pipeline stops and the receiver has not taken the queue in time.
            let why = if last.is_empty() { String::new() } else { format!("; last error: {last}") };
            return Err(format!("not delivered before the pipeline stopped{why}"));
        }
        if attempt > 1 {
            inner.counts.retries.fetch_add(1, Ordering::Relaxed);
        }
        let answer = client
            .post(&config.url)
            .header("Content-Type", "application/json")
            .header("Idempotency-Key", job.alert_id.as_str())
            .body(body.clone())
            .send()
            .await;
        let mut wait = backoff;
        match answer {
            Ok(r) if r.status().is_success() => {
                inner.counts.sent.fetch_add(1, Ordering::Relaxed);
                return Ok(());
            }
            Ok(r) => {
                let status = r.status();
                if let Some(after) = r
                    .headers()
                    .get("Retry-After")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok())
                {
                    wait = Duration::from_secs(after.min(30));
                }
                let text = r.text().await.unwrap_or_default();
                last = format!("HTTP {status}: {}", text.chars().take(200).collect::<String>());
                if status.is_client_error() && status.as_u16() != 429 && status.as_u16() != 408 {
                    return Err(last); // the receiver refuses this alert: retrying will not help
                }
            }
            Err(e) => last = e.to_string(),
        }
        if attempt == config.max_attempts {
            break;
        }
        tracing::warn!("webhook: alert {} attempt {attempt} failed ({last}); retrying in {wait:?}", job.alert_id);
        tokio::time::sleep(wait).await;
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
    Err(format!("{last} (after {} attempts)", config.max_attempts.max(1)))
}

fn dead_letter(config: &WebhookConfig, job: &Job, error: &str) -> std::io::Result<()> {
    if let Some(dir) = config.dead_letters.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&config.dead_letters)?;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
    let line = json!({
        "time": format_ts(now),
        "alert_id": job.alert_id,
        "error": error,
        "attempts": config.max_attempts,
        "payload": job.body,
    });
    writeln!(f, "{line}")?;
    f.sync_data()
}

/// The egress's handle: queues alerts.
struct WebhookSink(Webhook);

impl Sink for WebhookSink {
    fn dead_letter(&mut self, _letter: DeadLetter) {}

    fn alert(&mut self, alert: Alert) {
        let inner = &self.0 .0;
        let tx = inner.tx.lock().unwrap_or_else(|p| p.into_inner());
        let Some(tx) = tx.as_ref() else { return };
        let seq = inner.queued.fetch_add(1, Ordering::SeqCst) + 1;
        let job = Job { seq, alert_id: alert.id(), body: payload(&alert, inner.routing_key.as_deref()) };
        if tx.send(job).is_err() {
            tracing::error!("webhook: the delivery thread is gone; alert {} is not sent", alert.id());
        }
    }

    fn checkpoint(&mut self, _number: u64) -> Vec<(String, i64)> {
        let inner = &self.0 .0;
        inner.cut.store(inner.queued.load(Ordering::SeqCst), Ordering::SeqCst);
        Vec::new()
    }
}
