//! Tracing (`--otlp-endpoint`): spans reach an OTLP/HTTP receiver (the webhook test's local
//! HTTP server, taking the JSON bodies) — an HTTP SQL request's span and its statement's, in
//! the trace its W3C `traceparent` names and under its span; a checkpoint's span; dataflow
//! rounds' spans when `TREEAI_OTLP_FILTER` asks for them.

use crate::common::{http, Running};
use crate::webhook::Receiver;
use serde_json::Value;
use std::time::{Duration, Instant};

/// Every span in the OTLP/JSON bodies: (traceId, spanId, parentSpanId, name, attributes).
fn spans(bodies: &[Value]) -> Vec<(String, String, String, String, Value)> {
    let mut out = Vec::new();
    for body in bodies {
        for rs in body["resourceSpans"].as_array().into_iter().flatten() {
            for ss in rs["scopeSpans"].as_array().into_iter().flatten() {
                for span in ss["spans"].as_array().into_iter().flatten() {
                    let text = |k: &str| span[k].as_str().unwrap_or_default().to_string();
                    out.push((
                        text("traceId"),
                        text("spanId"),
                        text("parentSpanId"),
                        text("name"),
                        span["attributes"].clone(),
                    ));
                }
            }
        }
    }
    out
}

#[test]
fn spans_of_http_sql_checkpoints_and_rounds_reach_an_otlp_receiver_in_the_callers_trace() {
    let receiver = Receiver::start(0);
    let base = receiver.url.trim_end_matches("/hook").to_string();
    let mut run = Running::start_with_env(
        &["run", "--workers", "1", "--no-lake", "--trees", "200", "--otlp-endpoint", &base],
        &[("OTEL_BSP_SCHEDULE_DELAY", "200"), ("TREEAI_OTLP_FILTER", "info,treeai_dataflows=debug")],
    );
    run.wait_for(60, |l| l.contains("SQL on postgres://"));
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let parent = "00f067aa0ba902b7";
    let traceparent = format!("00-{trace}-{parent}-01");
    let (status, _, body) = http(
        &run.http,
        "POST",
        "/v1/sql",
        &[("Content-Type", "application/json"), ("traceparent", &traceparent)],
        br#"{"sql": "select count(*) from trees"}"#,
    )
    .unwrap();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let (status, _, body) = http(&run.http, "POST", "/v1/admin/checkpoint", &[], b"").unwrap();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));

    let deadline = Instant::now() + Duration::from_secs(30);
    let (request, statement) = loop {
        let all = spans(&receiver.bodies());
        let request = all.iter().find(|s| s.0 == trace && s.3 == "POST /v1/sql").cloned();
        let statement = all.iter().find(|s| s.0 == trace && s.3 == "sql.statement").cloned();
        let checkpoint = all.iter().any(|s| s.3 == "checkpoint");
        let round = all.iter().any(|s| s.3 == "dataflow.round");
        if let (Some(request), Some(statement), true, true) = (request, statement, checkpoint, round) {
            break (request, statement);
        }
        let names: std::collections::BTreeSet<&str> = all.iter().map(|s| s.3.as_str()).collect();
        assert!(Instant::now() < deadline, "spans so far: {names:?} ({} bodies)", receiver.bodies().len());
        std::thread::sleep(Duration::from_millis(200));
    };
    // The request's span is the caller's span's child; the statement's is the request's.
    assert_eq!(request.2, parent, "the request span's parent");
    assert_eq!(statement.2, request.1, "the statement span's parent");
    let text = statement.4.to_string();
    assert!(text.contains("select count(*) from trees"), "statement attributes: {text}");
    // Without a traceparent a request starts a trace of its own.
    let (status, _, _) = http(&run.http, "GET", "/healthz", &[], b"").unwrap();
    assert_eq!(status, 200);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !spans(&receiver.bodies()).iter().any(|s| s.3 == "GET /healthz" && s.0 != trace && s.2.is_empty()) {
        assert!(Instant::now() < deadline, "no root span for GET /healthz");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(run.interrupt().success());
}
