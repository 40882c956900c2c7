//! `treeai scale` as an operator (or the scaler CronJob) runs it: `plan` for regions and
//! seasons with `--json`; `apply --dry-run` printing the Kubernetes and pipeline calls; and
//! `plan --metrics` against a real Prometheus (Debian's) scraping a running `treeai run`, whose
//! freshness and alert rate fire the emergency triggers of a policy with low thresholds. (The
//! policy's table-driven tests are unit tests in bin/src/scale.rs.)

use crate::common::{treeai_bin, Running};
use crate::prometheus::Prometheus;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn scale(args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(treeai_bin()).arg("scale").args(args).output().expect("treeai scale");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

fn plan_json(args: &[&str]) -> Value {
    let mut all = vec!["plan", "--json"];
    all.extend_from_slice(args);
    let (ok, out, err) = scale(&all);
    assert!(ok, "treeai scale {all:?}: {err}");
    assert_eq!(out.lines().count(), 1, "one JSON object: {out}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

#[test]
fn plan_prints_the_size_and_its_reason_for_each_region_and_season() {
    let policy = repo().join("deploy/base/scale-policy.toml");
    let policy = policy.to_str().unwrap();
    for (region, at, processes, season) in [
        ("us-east", "2026-07-01T12:00:00Z", 8, "peak"),
        ("us-east", "2026-10-01T12:00:00Z", 4, "moderate"),
        ("eu-west", "2026-01-15T12:00:00Z", 2, "low"),
        ("ap-southeast", "2026-07-01T12:00:00Z", 2, "low"),
        ("ap-southeast", "2026-12-01T12:00:00Z", 8, "peak"),
        ("us-west", "2026-07-01T12:00:00Z", 8, "peak"),
    ] {
        for with_file in [false, true] {
            let mut args = vec!["--region", region, "--at", at];
            if with_file {
                args.extend(["--policy", policy]);
            }
            let d = plan_json(&args);
            assert_eq!(d["processes"], processes, "{region} {at}: {d}");
            assert_eq!(d["season"], season, "{region} {at}: {d}");
            assert_eq!(d["emergency"], false);
            assert!(d["reason"].as_str().unwrap().contains(season), "{d}");
        }
    }
    // A storm: 500 %, clamped at the policy's max.
    let d = plan_json(&["--region", "us-east", "--at", "2026-07-01T12:00:00Z", "--storm"]);
    assert_eq!((d["processes"].clone(), d["emergency"].clone()), (Value::from(20), Value::from(true)));
    // The text form and the errors.
    let (ok, out, _) = scale(&["plan", "--region", "eu-west", "--at", "2026-07-01T12:00:00Z"]);
    assert!(ok && out.starts_with("8 processes"), "{out}");
    let (ok, _, err) = scale(&["plan", "--region", "mars"]);
    assert!(!ok && err.contains("unknown region") && err.contains("us-east"), "{err}");
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "base = 4\nlag = 1\n").unwrap();
    let (ok, _, err) = scale(&["plan", "--region", "us-east", "--policy", bad.to_str().unwrap()]);
    assert!(!ok && err.contains("unknown field `lag`"), "{err}");
}

#[test]
fn apply_dry_run_prints_the_calls_of_a_resize_and_none_without_a_change() {
    let base = ["apply", "--dry-run", "--region", "us-east", "--namespace", "treeai-us-east"];
    // Winter: 4 → 2 (scale-in): checkpoint, stop, wait, start at 2, wait ready.
    let mut args = base.to_vec();
    args.extend(["--at", "2026-12-15T00:00:00Z", "--current", "4", "--admin-url", "http://treeai:8080"]);
    let (ok, out, err) = scale(&args);
    assert!(ok, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("4 → 2 processes"), "{out}");
    assert!(lines[1].starts_with("1. POST http://treeai:8080/v1/admin/checkpoint"), "{out}");
    let sts = "https://kubernetes.default.svc/apis/apps/v1/namespaces/treeai-us-east/statefulsets/treeai";
    assert!(lines[2].starts_with(&format!("2. PATCH {sts} ")) && lines[2].contains(r#""replicas":0"#), "{out}");
    assert!(lines[3].starts_with("3. GET https://kubernetes.default.svc/api/v1/namespaces/treeai-us-east/pods?"));
    assert!(lines[4].starts_with(&format!("4. PATCH {sts} ")), "{out}");
    for want in [r#""replicas":2"#, r#"{"name":"TREEAI_PROCESSES","value":"2"}"#, "treeai-{i}.treeai-peers:2101"] {
        assert!(lines[4].contains(want), "{want} in {}", lines[4]);
    }
    assert!(lines[5].starts_with(&format!("5. GET {sts}")) && lines[6].starts_with("6. GET http://treeai:8080/readyz"));
    // Already the right size: nothing to do.
    let mut args = base.to_vec();
    args.extend(["--at", "2026-07-01T00:00:00Z", "--current", "8"]);
    let (ok, out, err) = scale(&args);
    assert!(ok, "{err}");
    assert!(out.starts_with("no change"), "{out}");
    assert!(!out.contains("PATCH"), "{out}");
}

/// A policy with thresholds a running pipeline crosses at once: freshness above 1 µs and any
/// alert rate, sustained for a minute (Prometheus counts what it has of that minute).
fn eager_policy(dir: &Path) -> PathBuf {
    let text = std::fs::read_to_string(repo().join("deploy/base/scale-policy.toml")).unwrap();
    let text = text
        .replace("sustained_minutes = 3", "sustained_minutes = 1")
        .replace("freshness_p99_seconds = 60", "freshness_p99_seconds = 0.000001")
        .replace("critical_alerts_per_minute = 50", "critical_alerts_per_minute = 0.001");
    assert!(text.contains("sustained_minutes = 1") && text.contains("0.000001"), "the policy file changed");
    let path = dir.join("eager.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn plan_reads_freshness_and_alerts_from_prometheus_and_enters_the_emergency() {
    let dir = tempfile::tempdir().unwrap();
    let mut run = Running::start(&[
        "run",
        "--no-lake",
        "--no-checkpoint",
        "--workers",
        "1",
        "--trees",
        "2000",
        "--season",
        "emergency",
    ]);
    run.wait_for(60, |l| l.contains("SQL on postgres://"));
    // Prometheus scrapes the pipeline every second, its samples labelled with the namespace
    // the scaler filters on.
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: treeai\n    static_configs:\n      \
             - targets: [\"{}\"]\n        labels:\n          namespace: treeai-test\n",
            run.http
        ),
    )
    .unwrap();
    let prometheus = Prometheus::start(&config);
    let metrics = format!("http://{}", prometheus.addr);
    // Wait until Prometheus has rates of freshness and alerts at a step of the sustained
    // window's 15 s grid (what the scaler's queries read).
    let deadline = Instant::now() + Duration::from_secs(120);
    let ready = || {
        let q = |e: &str| prometheus.query(e).first().map(|(_, v)| *v).unwrap_or(f64::NAN);
        let fresh = q("min_over_time((histogram_quantile(0.99, sum by (le) (rate(treeai_freshness_seconds_bucket{namespace=\"treeai-test\"}[1m]))))[1m:15s])");
        let alerts = q("min_over_time((sum(rate(treeai_alerts_total{namespace=\"treeai-test\"}[1m])) * 60)[1m:15s])");
        fresh > 0.0 && alerts > 0.0
    };
    while !ready() {
        assert!(Instant::now() < deadline, "no freshness and alert rates in Prometheus after 120 s");
        std::thread::sleep(Duration::from_millis(500));
    }
    let now = chrono_now();
    let common = ["--region", "us-east", "--metrics", &metrics, "--namespace", "treeai-test", "--at", &now];
    // High thresholds: a healthy pipeline, no emergency. (The seed's 50 alerts a minute is
    // crossed by the generator's synthetic city, which alerts far more than a real one.)
    let calm = dir.path().join("calm.toml");
    let seed = std::fs::read_to_string(repo().join("deploy/base/scale-policy.toml")).unwrap();
    std::fs::write(&calm, seed.replace("critical_alerts_per_minute = 50", "critical_alerts_per_minute = 1000000"))
        .unwrap();
    let mut args = common.to_vec();
    args.extend(["--policy", calm.to_str().unwrap()]);
    let d = plan_json(&args);
    assert_eq!(d["emergency"], false, "{d}");
    assert_eq!(d["triggers"], Value::Array(Vec::new()), "{d}");
    // Low thresholds: freshness and the alert rate fire; 500 % clamped at max 20.
    let eager = eager_policy(dir.path());
    let mut args = common.to_vec();
    args.extend(["--policy", eager.to_str().unwrap()]);
    let d = plan_json(&args);
    assert_eq!(d["emergency"], true, "{d}");
    assert_eq!(d["processes"], 20, "{d}");
    let triggers: Vec<&str> = d["triggers"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
    assert!(triggers.iter().any(|t| t.contains("freshness")), "{triggers:?}");
    assert!(triggers.iter().any(|t| t.contains("alert")), "{triggers:?}");
    // The same plan names them in its reason.
    assert!(d["reason"].as_str().unwrap().contains("emergency"), "{d}");
    // apply --dry-run against the same policy and metrics: the calls of a scale-out to 20.
    let mut dry = vec!["apply", "--dry-run", "--current", "4"];
    dry.extend(args.iter().copied());
    let (ok, out, err) = scale(&dry);
    assert!(ok, "{err}");
    assert!(out.starts_with("4 → 20 processes"), "{out}");
    assert!(out.contains("1. POST http://treeai:8080/v1/admin/checkpoint"), "{out}");
    assert!(out.lines().any(|l| l.starts_with("4. PATCH") && l.contains(r#""replicas":20"#)), "{out}");
    // Another namespace's series do not count (a DR drill must not scale its primary).
    let mut args = args.clone();
    let ns = args.iter().position(|a| *a == "treeai-test").unwrap();
    args[ns] = "treeai-elsewhere";
    assert_eq!(plan_json(&args)["emergency"], false);
    run.interrupt();
}

/// Now as RFC 3339 (the plan reads Prometheus at its `--at`).
fn chrono_now() -> String {
    let ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    treeai_dataflows::time::format_ts(ms)
}
