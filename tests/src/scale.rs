//! `treeai scale` as an operator (or the scaler CronJob) runs it: `plan` for regions and
//! seasons with `--json`; `apply --dry-run` printing the Kubernetes and pipeline calls; and
//! `plan --metrics` against a real Prometheus (Debian's) scraping a running `treeai run`, whose
//! freshness and alert rate fire the emergency triggers of a policy with low thresholds. (The
//! policy's table-driven tests are unit tests in bin/src/scale.rs.)

use crate::common::{read_http_request, treeai_bin, Running};
use crate::prometheus::Prometheus;
use serde_json::Value;
use std::io::{BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
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

/// A stand-in for the Kubernetes API server (no cluster can run on this machine): one
/// StatefulSet and its pods in one namespace, strategic-merge PATCH by the rules Kubernetes
/// has for these fields (objects merge, `null` deletes, `containers` and `env` merge by
/// `name`). A PATCH bumps `metadata.generation`; the status (`readyReplicas`,
/// `observedGeneration`) follows only at the next GET, as a controller's would, so a wait must
/// repeat. Every request is recorded: method, path and query, content type, authorization.
/// Requests without `Authorization: Bearer <token>` get a 401 `Status`.
struct FakeKubernetes {
    url: String,
    calls: Arc<Mutex<Vec<[String; 4]>>>,
    statefulset: Arc<Mutex<Value>>,
}

impl FakeKubernetes {
    fn start(namespace: &str, token: &str, statefulset: Value) -> FakeKubernetes {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let calls: Arc<Mutex<Vec<[String; 4]>>> = Arc::default();
        let sts = Arc::new(Mutex::new(statefulset));
        let (c, s, ns, token) = (calls.clone(), sts.clone(), namespace.to_string(), token.to_string());
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (calls, sts, ns, token) = (c.clone(), s.clone(), ns.clone(), token.clone());
                std::thread::spawn(move || {
                    let mut reader = BufReader::new(stream.try_clone().unwrap());
                    let mut stream = stream;
                    while let Some((request, headers, body)) = read_http_request(&mut reader) {
                        let mut words = request.split_whitespace();
                        let (method, target) =
                            (words.next().unwrap_or("").to_string(), words.next().unwrap_or("").to_string());
                        let header = |name: &str| {
                            headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()).unwrap_or_default()
                        };
                        let (kind, auth) = (header("content-type"), header("authorization"));
                        calls.lock().unwrap().push([method.clone(), target.clone(), kind, auth.clone()]);
                        let (status, answer) = Self::answer(&ns, &token, &sts, &method, &target, &auth, &body);
                        let text = answer.to_string();
                        let head = format!(
                            "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                            text.len()
                        );
                        if stream.write_all(head.as_bytes()).and_then(|_| stream.write_all(text.as_bytes())).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        FakeKubernetes { url, calls, statefulset: sts }
    }

    fn answer(
        ns: &str,
        token: &str,
        sts: &Mutex<Value>,
        method: &str,
        target: &str,
        auth: &str,
        body: &[u8],
    ) -> (u16, Value) {
        let status = |code: u16, reason: &str| {
            (
                code,
                serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": reason,
                "message": reason, "code": code}),
            )
        };
        if auth != format!("Bearer {token}") {
            return status(401, "Unauthorized");
        }
        let path = target.split('?').next().unwrap();
        let mut sts = sts.lock().unwrap();
        let name = sts["metadata"]["name"].as_str().unwrap().to_string();
        if path == format!("/apis/apps/v1/namespaces/{ns}/statefulsets/{name}") {
            match method {
                "GET" => {
                    // The controller catches up with the last PATCH between two GETs.
                    let (replicas, generation) =
                        (sts["spec"]["replicas"].clone(), sts["metadata"]["generation"].clone());
                    let answer = sts.clone();
                    sts["status"] = serde_json::json!({"replicas": replicas, "readyReplicas": replicas,
                        "observedGeneration": generation});
                    (200, answer)
                }
                "PATCH" => {
                    let Ok(patch) = serde_json::from_slice::<Value>(body) else { return status(400, "BadRequest") };
                    strategic_merge(&mut sts, &patch);
                    let generation = sts["metadata"]["generation"].as_i64().unwrap_or(1) + 1;
                    sts["metadata"]["generation"] = generation.into();
                    (200, sts.clone())
                }
                _ => status(405, "MethodNotAllowed"),
            }
        } else if path == format!("/api/v1/namespaces/{ns}/pods") && method == "GET" {
            let replicas = sts["spec"]["replicas"].as_u64().unwrap_or(0);
            let items: Vec<Value> = (0..replicas)
                .map(|i| serde_json::json!({"metadata": {"name": format!("{name}-{i}"), "namespace": ns}}))
                .collect();
            (200, serde_json::json!({"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": items}))
        } else {
            status(404, "NotFound")
        }
    }

    fn calls(&self) -> Vec<[String; 4]> {
        self.calls.lock().unwrap().clone()
    }

    /// A kubeconfig naming this server, its token and the namespace, as `kubectl` would use it.
    fn kubeconfig(&self, dir: &Path, token: &str, namespace: &str) -> PathBuf {
        let path = dir.join("kubeconfig");
        std::fs::write(
            &path,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {}\nusers:\n- name: \
                 scaler\n  user:\n    token: {token}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    \
                 user: scaler\n    namespace: {namespace}\ncurrent-context: fake\n",
                self.url
            ),
        )
        .unwrap();
        path
    }
}

/// Kubernetes' strategic merge for the fields `apply` patches.
fn strategic_merge(target: &mut Value, patch: &Value) {
    let (Some(into), Some(from)) = (target.as_object_mut(), patch.as_object()) else {
        *target = patch.clone();
        return;
    };
    for (key, value) in from {
        match value {
            Value::Null => {
                into.remove(key);
            }
            Value::Array(items) if key == "containers" || key == "env" => {
                let list = into.entry(key.clone()).or_insert_with(|| Value::Array(Vec::new()));
                let list = list.as_array_mut().unwrap();
                for item in items {
                    match list.iter_mut().find(|e| e["name"] == item["name"]) {
                        Some(existing) => strategic_merge(existing, item),
                        None => list.push(item.clone()),
                    }
                }
            }
            Value::Object(_) => {
                strategic_merge(into.entry(key.clone()).or_insert_with(|| serde_json::json!({})), value)
            }
            _ => {
                into.insert(key.clone(), value.clone());
            }
        }
    }
}

fn statefulset(namespace: &str, replicas: u32) -> Value {
    let labels = serde_json::json!({"app.kubernetes.io/name": "treeai", "app.kubernetes.io/component": "pipeline"});
    serde_json::json!({
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": {"name": "treeai", "namespace": namespace, "generation": 1, "annotations": {}},
        "spec": {
            "replicas": replicas, "serviceName": "treeai-peers", "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels}, "spec": {"containers": [{"name": "treeai", "image": "treeai",
                "env": [{"name": "TREEAI_PROCESSES", "value": replicas.to_string()},
                        {"name": "TREEAI_PEERS", "value": "treeai-{i}.treeai-peers:2101"},
                        {"name": "RUST_LOG", "value": "info"}]}]}},
        },
        "status": {"replicas": replicas, "readyReplicas": replicas, "observedGeneration": 1},
    })
}

fn apply(kubeconfig: &Path, args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(treeai_bin())
        .args(["scale", "apply"])
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("TREEAI_SCALE_KUBE_API")
        .output()
        .expect("treeai scale apply");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

#[test]
fn apply_resizes_the_statefulset_through_the_kubernetes_api_and_the_running_pipeline() {
    let dir = tempfile::tempdir().unwrap();
    let (ns, token) = ("treeai-test", "scaler-token-1");
    let kube = FakeKubernetes::start(ns, token, statefulset(ns, 1));
    let kubeconfig = kube.kubeconfig(dir.path(), token, ns);
    // The pipeline the scaler checkpoints and asks for readiness: a real one.
    let lake = dir.path().join("lake");
    let mut run = Running::start(&["run", "--workers", "1", "--trees", "500", "--lake", lake.to_str().unwrap()]);
    run.wait_for(60, |l| l.contains("SQL on postgres://"));
    let admin = format!("http://{}", run.http);
    let checkpointed = || {
        let (status, _, body) = crate::common::http(&run.http, "GET", "/metrics", &[], b"").unwrap();
        assert_eq!(status, 200);
        let line = String::from_utf8_lossy(&body)
            .lines()
            .find(|l| l.starts_with("treeai_checkpoint_last_success_timestamp_seconds"))
            .map(str::to_string);
        line.and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).unwrap_or(0.0)
    };
    let checkpoint_before = checkpointed();
    let args = ["--region", "us-east", "--at", "2026-07-01T12:00:00Z", "--namespace", ns, "--admin-url", &admin];

    // Summer in us-east: 1 → 8 processes.
    let (ok, out, err) = apply(&kubeconfig, &args);
    assert!(ok, "apply failed: {out}\n{err}");
    assert!(out.starts_with("8 processes"), "{out}");
    for step in ["POST", "PATCH", "GET", "PATCH", "GET"] {
        assert!(err.contains(&format!("done: {step} ")), "{step} in {err}");
    }
    assert!(err.contains("/v1/admin/checkpoint") && err.contains("/readyz"), "{err}");
    let calls = kube.calls();
    let sts_path = format!("/apis/apps/v1/namespaces/{ns}/statefulsets/treeai");
    let seen: Vec<(&str, &str)> = calls.iter().map(|c| (c[0].as_str(), c[1].split('?').next().unwrap())).collect();
    let pods_path = format!("/api/v1/namespaces/{ns}/pods");
    assert_eq!(seen[..4], [("GET", &*sts_path), ("PATCH", &*sts_path), ("GET", &*pods_path), ("PATCH", &*sts_path)]);
    // Waiting for ready repeats the GET until the controller caught up.
    assert!(seen.len() >= 6 && seen[4..].iter().all(|c| *c == ("GET", &*sts_path)), "{seen:?}");
    assert!(calls.iter().all(|c| c[3] == format!("Bearer {token}")), "the kubeconfig's token on every call: {calls:?}");
    for c in calls.iter().filter(|c| c[0] == "PATCH") {
        assert_eq!(c[2], "application/strategic-merge-patch+json");
    }
    assert!(calls[2][1].contains("labelSelector=app.kubernetes.io%2Fname%3Dtreeai"), "{}", calls[2][1]);
    let sts = kube.statefulset.lock().unwrap().clone();
    assert_eq!(sts["spec"]["replicas"], 8, "{sts}");
    let env = &sts["spec"]["template"]["spec"]["containers"][0]["env"];
    assert!(env.as_array().unwrap().contains(&serde_json::json!({"name": "TREEAI_PROCESSES", "value": "8"})), "{env}");
    assert!(env.as_array().unwrap().contains(&serde_json::json!({"name": "RUST_LOG", "value": "info"})), "{env}");
    let annotations = &sts["metadata"]["annotations"];
    assert_eq!(annotations["treeai.io/scaled-to"], "8", "{sts}");
    assert_eq!(annotations["treeai.io/scaled-at"], "2026-07-01T12:00:00Z", "{sts}");
    assert!(annotations.get("treeai.io/scaling-to").is_none(), "the resize finished: {sts}");
    // The pipeline was asked for a checkpoint, and it was written.
    assert!(checkpointed() > checkpoint_before, "no checkpoint written for the resize");

    // Run again at the same moment: the size is right, nothing is patched.
    let before = kube.calls().len();
    let (ok, out, err) = apply(&kubeconfig, &args);
    assert!(ok && out.starts_with("8 processes"), "{out}\n{err}");
    assert!(kube.calls()[before..].iter().all(|c| c[0] == "GET"), "{:?}", &kube.calls()[before..]);

    // Credentials the API server refuses: a clear error, nothing changed.
    let elsewhere = dir.path().join("wrong");
    std::fs::create_dir(&elsewhere).unwrap();
    let wrong = kube.kubeconfig(&elsewhere, "not-the-token", ns);
    let before = kube.calls().len();
    let (ok, _, err) = apply(&wrong, &args);
    assert!(!ok && err.contains("Unauthorized") && err.contains("statefulsets/treeai"), "{err}");
    assert_eq!(kube.calls().len(), before + 1, "one GET, then it stops");
    run.interrupt();
}
