//! Log lines and OpenTelemetry spans.
//!
//! Log lines go to stderr (text or `--log-format json`) under `TREEAI_LOG`
//! (default `warn`). With `--otlp-endpoint URL` (`TREEAI_OTLP_ENDPOINT`), the
//! spans are also exported as OTLP over HTTP with JSON bodies to
//! `URL/v1/traces` — what Jaeger (its OTLP port 4318), Tempo and the
//! OpenTelemetry Collector take — in batches from a thread of their own
//! (`OTEL_BSP_SCHEDULE_DELAY`, `OTEL_BSP_MAX_QUEUE_SIZE` tune them; a full
//! queue drops spans, never blocks the pipeline). Which spans go is
//! `TREEAI_OTLP_FILTER` (default `info`):
//!
//! | span | level | what |
//! |---|---|---|
//! | `METHOD /path` | info | an HTTP request, child of its W3C `traceparent` |
//! | `sql.statement` | info | a SQL statement (Postgres wire or HTTP), its text |
//! | `checkpoint` | info | writing one checkpoint (number, bytes) |
//! | `dataflow.round` | debug | a dataflow round that read events (`TREEAI_OTLP_FILTER=info,treeai_dataflows=debug`) |
//!
//! The W3C trace-context propagator is installed, so an incoming
//! `traceparent` makes the request's spans part of the caller's trace.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// The span exporter, flushed and stopped by [`Telemetry::shutdown`].
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Sends what is still queued (at most a few seconds) and stops the exporter.
    pub fn shutdown(self) {
        if let Some(provider) = self.provider {
            if let Err(e) = provider.shutdown() {
                eprintln!("treeai: OTLP exporter: {e}");
            }
        }
    }
}

/// Installs the log lines (`json`: one JSON object per line) and, with `otlp_endpoint`, the
/// span exporter. An endpoint that is not a URL is an error here, at start-up.
pub fn init(json: bool, otlp_endpoint: Option<&str>) -> anyhow::Result<Telemetry> {
    let filter = || EnvFilter::try_from_env("TREEAI_LOG").unwrap_or_else(|_| "warn".into());
    let logs = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let logs = if json { logs.json().with_filter(filter()).boxed() } else { logs.with_filter(filter()).boxed() };
    let Some(endpoint) = otlp_endpoint else {
        tracing_subscriber::registry().with(logs).init();
        return Ok(Telemetry { provider: None });
    };
    let base = reqwest::Url::parse(endpoint)
        .map_err(|e| anyhow::anyhow!("--otlp-endpoint {endpoint:?} is not a URL (http://collector:4318): {e}"))?;
    let traces = format!("{}/v1/traces", base.as_str().trim_end_matches('/'));
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpJson)
        .with_endpoint(traces)
        .with_timeout(std::time::Duration::from_secs(10))
        .build()?;
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name("treeai")
        .with_attribute(opentelemetry::KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
        .build();
    let provider = SdkTracerProvider::builder().with_batch_exporter(exporter).with_resource(resource).build();
    opentelemetry::global::set_text_map_propagator(opentelemetry_sdk::propagation::TraceContextPropagator::new());
    let spans_filter = EnvFilter::try_from_env("TREEAI_OTLP_FILTER").unwrap_or_else(|_| "info".into());
    let spans = tracing_opentelemetry::layer().with_tracer(provider.tracer("treeai")).with_filter(spans_filter);
    tracing_subscriber::registry().with(logs).with(spans).init();
    Ok(Telemetry { provider: Some(provider) })
}
