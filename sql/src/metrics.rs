//! Prometheus metrics (`GET /metrics`), prefix `treeai_`.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `treeai_events_read_total` | counter | `source` |
//! | `treeai_events_ingested_total` (valid events) | counter | `source`, `kind` (tree, assessment, reading) |
//! | `treeai_events_rejected_total` | counter | `source`, `reason` (`field:rule`) |
//! | `treeai_readings_late_total`, `treeai_readings_expired_total` | counter | |
//! | `treeai_alerts_total` | counter | |
//! | `treeai_watermark_ms` (of the views SQL reads) | gauge | |
//! | `treeai_input_watermark_ms` (reached by the inputs) | gauge | |
//! | `treeai_watermark_lag_seconds` (wall clock − views' watermark) | gauge | |
//! | `treeai_view_rows` | gauge | `view` |
//! | `treeai_critical_trees` (trees in the critical band: `region_summary`'s `critical`) | gauge | `region` |
//! | `treeai_freshness_seconds` (an event's arrival → its effect visible to SQL; a reading waits for the watermark) | histogram | |
//! | `treeai_source_lag` (Kafka: messages behind the partition's high watermark) | gauge | `topic`, `partition` |
//! | `treeai_source_gaps_total`, `treeai_source_gap_messages_total` (Kafka: resumed offsets retention deleted) | counter | |
//! | `treeai_sql_queries_total` | counter | `protocol` (pg, http), `outcome` (ok, error, refused, timeout, internal_error) |
//! | `treeai_sql_query_seconds` | histogram | `protocol` |
//! | `treeai_sql_view_rows_scanned_total` (rows the live views' scans produced) | counter | `view` |
//! | `treeai_auth_failures_total` (refused logins and requests, with `--auth-file`) | counter | `protocol` (pgwire, http), `reason` (unknown_user, wrong_password, role, protocol, mechanism, no_user, no_tls, no_token, bad_token, cross_site, host) |
//!
//! | `treeai_lake_files_total`, `treeai_lake_bytes_total`, `treeai_lake_errors_total` (with a lake) | counter | |
//! | `treeai_kafka_errors_total`, `treeai_kafka_delivered_total`, `treeai_kafka_delivery_errors_total` (with Kafka) | counter | |
//!
//! | `treeai_cluster_info` (always 1) | gauge | `process`, `processes`, `workers` (per process) |
//!
//! In a cluster every process exports its own: the event, lake and Kafka
//! counters count its own workers' share (sum them over the processes), the
//! views and watermarks are every process's copy of the whole cluster's
//! (take any one, or `max`), and `treeai_alerts_total` is counted by process 0,
//! which derives and sends the alerts (sum works).
//!
//! The event counters are read from the runtime's `Stats` at scrape time; the
//! lake and Kafka counters from the atomics their connectors keep, registered
//! by each component in the runtime's `Stats::components`.

use crate::SqlError;
use prometheus::{Encoder, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry, TextEncoder};
use std::fmt::Write;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use treeai_dataflows::runtime::Stats;
use treeai_dataflows::store::Catalog;
use treeai_dataflows::VIEW_NAMES;

/// The metrics of one process.
pub struct Metrics {
    registry: Registry,
    queries: IntCounterVec,
    query_seconds: HistogramVec,
    rows_scanned: IntCounterVec,
    auth_failures: IntCounterVec,
    stats: Arc<Stats>,
    catalog: Arc<Catalog>,
    source: String,
    /// When these metrics were created, epoch ms (liveness before the first round).
    started_ms: i64,
}

impl Metrics {
    /// The pipeline's counters.
    pub fn stats(&self) -> &Arc<Stats> {
        &self.stats
    }

    /// The kind of source (`generator`, `kafka`, `file`).
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Readiness (`/readyz`): the views have a watermark (or the bounded input is finished)
    /// and, after a restore, every worker has caught up with its source.
    pub fn readiness(&self) -> Result<(), &'static str> {
        if !self.stats.restored() {
            return Err("restoring from a checkpoint: catching up with the sources");
        }
        if !self.catalog.snapshot().is_ready() {
            return Err("the views have no watermark yet");
        }
        Ok(())
    }

    /// Metrics reading `stats` and `catalog`; `source` labels the event counters (`file`, `generator`).
    pub fn new(stats: Arc<Stats>, catalog: Arc<Catalog>, source: &str) -> Self {
        let registry = Registry::new();
        let queries = IntCounterVec::new(
            Opts::new("treeai_sql_queries_total", "SQL statements run, by protocol and outcome"),
            &["protocol", "outcome"],
        )
        .expect("valid metric");
        let query_seconds = HistogramVec::new(
            HistogramOpts::new("treeai_sql_query_seconds", "SQL statement latency, seconds").buckets(vec![
                0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ]),
            &["protocol"],
        )
        .expect("valid metric");
        let rows_scanned = IntCounterVec::new(
            Opts::new("treeai_sql_view_rows_scanned_total", "Rows the scans of the live views produced, by view"),
            &["view"],
        )
        .expect("valid metric");
        let auth_failures = IntCounterVec::new(
            Opts::new("treeai_auth_failures_total", "Logins and requests refused, by protocol and reason"),
            &["protocol", "reason"],
        )
        .expect("valid metric");
        registry.register(Box::new(auth_failures.clone())).expect("registered once");
        registry.register(Box::new(queries.clone())).expect("registered once");
        registry.register(Box::new(query_seconds.clone())).expect("registered once");
        registry.register(Box::new(rows_scanned.clone())).expect("registered once");
        let started_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
        Metrics {
            registry,
            queries,
            query_seconds,
            rows_scanned,
            auth_failures,
            stats,
            catalog,
            source: source.to_string(),
            started_ms,
        }
    }

    /// Liveness (`/healthz`): the dataflow completed a round within `timeout`, or has stopped.
    pub fn liveness(&self, timeout: Duration) -> Result<(), String> {
        self.stats.alive(timeout, self.started_ms)
    }

    /// The counter of rows the scans of `view` produce (see [`crate::scan`]).
    pub fn rows_scanned_counter(&self, view: &str) -> prometheus::IntCounter {
        self.rows_scanned.with_label_values(&[view])
    }

    /// Rows the scans of `view` have produced so far.
    pub fn rows_scanned(&self, view: &str) -> u64 {
        self.rows_scanned.with_label_values(&[view]).get()
    }

    /// Counts one refused login or request (`reason` is one of a fixed set of words).
    pub fn auth_failure(&self, protocol: &'static str, reason: &'static str) {
        self.auth_failures.with_label_values(&[protocol, reason]).inc();
    }

    /// Counts one statement and its latency.
    pub fn record_query(&self, protocol: &str, error: Option<&SqlError>, elapsed: Duration) {
        let outcome = error.map_or("ok", SqlError::outcome);
        self.queries.with_label_values(&[protocol, outcome]).inc();
        self.query_seconds.with_label_values(&[protocol]).observe(elapsed.as_secs_f64());
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let s = &self.stats;
        let src = escape(&self.source);
        let counter = |out: &mut String, name: &str, help: &str| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        };
        counter(&mut out, "treeai_events_read_total", "Messages read from the sources.");
        let _ = writeln!(out, "treeai_events_read_total{{source=\"{src}\"}} {}", s.events_read.load(Ordering::Relaxed));
        counter(&mut out, "treeai_events_ingested_total", "Valid events applied, by kind.");
        for (i, kind) in ["tree", "assessment", "reading"].iter().enumerate() {
            let v = s.events_valid[i].load(Ordering::Relaxed);
            let _ = writeln!(out, "treeai_events_ingested_total{{source=\"{src}\",kind=\"{kind}\"}} {v}");
        }
        counter(&mut out, "treeai_events_rejected_total", "Messages rejected, by reason (field:rule).");
        let mut reasons: Vec<(String, u64)> = s
            .rejected_by_label
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        reasons.sort();
        for (reason, v) in reasons {
            let _ =
                writeln!(out, "treeai_events_rejected_total{{source=\"{src}\",reason=\"{}\"}} {v}", escape(&reason));
        }
        for (name, help, v) in [
            (
                "treeai_readings_late_total",
                "Readings applied late (ts <= watermark, inside the window).",
                &s.readings_late,
            ),
            (
                "treeai_readings_expired_total",
                "Readings that arrived after their window had passed.",
                &s.readings_expired,
            ),
            ("treeai_alerts_total", "Alerts raised.", &s.alerts),
        ] {
            counter(&mut out, name, help);
            let _ = writeln!(out, "{name} {}", v.load(Ordering::Relaxed));
        }
        {
            let layout = s.layout.lock().unwrap_or_else(|p| p.into_inner());
            let _ = writeln!(
                out,
                "# HELP treeai_cluster_info This process's place in the cluster.\n# TYPE treeai_cluster_info gauge\n\
                 treeai_cluster_info{{process=\"{}\",processes=\"{}\",workers=\"{}\"}} 1",
                layout.process,
                layout.processes.max(1),
                layout.workers
            );
        }
        let snap = self.catalog.snapshot();
        let gauge = |out: &mut String, name: &str, help: &str, v: Option<f64>| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
            if let Some(v) = v {
                let _ = writeln!(out, "{name} {v}");
            }
        };
        gauge(
            &mut out,
            "treeai_watermark_ms",
            "Watermark of the views SQL reads, epoch ms.",
            snap.watermark.map(|w| w as f64),
        );
        gauge(
            &mut out,
            "treeai_input_watermark_ms",
            "Watermark the inputs reached, epoch ms.",
            s.watermark().map(|w| w as f64),
        );
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
        gauge(
            &mut out,
            "treeai_watermark_lag_seconds",
            "Wall-clock time minus the views' watermark, seconds.",
            snap.watermark.map(|w| (now - w) as f64 / 1000.0),
        );
        // Freshness: arrival → visible to SQL, per applied event.
        const FRESHNESS_LE: [f64; 16] =
            [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0];
        let bounds: Vec<u64> = FRESHNESS_LE.iter().map(|s| (s * 1000.0) as u64).collect();
        let (below, count, sum_ms) = s.freshness.buckets(&bounds);
        let _ = writeln!(
            out,
            "# HELP treeai_freshness_seconds Time from an event's arrival to its effect being visible to SQL.\n\
             # TYPE treeai_freshness_seconds histogram"
        );
        for (le, n) in FRESHNESS_LE.iter().zip(below) {
            let _ = writeln!(out, "treeai_freshness_seconds_bucket{{le=\"{le}\"}} {n}");
        }
        let _ = writeln!(out, "treeai_freshness_seconds_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(out, "treeai_freshness_seconds_sum {}", sum_ms / 1000.0);
        let _ = writeln!(out, "treeai_freshness_seconds_count {count}");
        let _ = writeln!(out, "# HELP treeai_view_rows Rows per live view.\n# TYPE treeai_view_rows gauge");
        for (view, n) in VIEW_NAMES.iter().zip(snap.views.sizes()) {
            let _ = writeln!(out, "treeai_view_rows{{view=\"{view}\"}} {n}");
        }
        let _ = writeln!(
            out,
            "# HELP treeai_critical_trees Trees in the critical band, by region.\n# TYPE treeai_critical_trees gauge"
        );
        for (region, agg) in snap.views.region_summary.iter() {
            let _ = writeln!(out, "treeai_critical_trees{{region=\"{}\"}} {}", escape(region.as_str()), agg.bands[3]);
        }
        s.components.each(|name, help, value| {
            counter(&mut out, name, help);
            let _ = writeln!(out, "{name} {value}");
        });
        out.push_str(&s.components.texts());
        let mut buf = Vec::new();
        if TextEncoder::new().encode(&self.registry.gather(), &mut buf).is_ok() {
            out.push_str(&String::from_utf8_lossy(&buf));
        }
        out
    }
}

/// Escapes a label value.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}
