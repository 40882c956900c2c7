//! Security with real clients: TLS on the Postgres endpoint (psql `verify-full`
//! with our own CA, psycopg `require`) and HTTPS (curl), SCRAM-SHA-256 logins
//! against the credentials file `treeai auth` writes, bearer tokens and roles,
//! refusals counted and audited, revocation and certificate rotation without a
//! restart, and the start-up refusal of an open non-loopback address.

use crate::common::{free_addr, treeai_bin, Running};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Our test CA and a server certificate for `localhost` and 127.0.0.1 signed by it.
pub(crate) struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    pub(crate) fn new() -> Pki {
        let pki = Pki { dir: tempfile::tempdir().unwrap() };
        pki.openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=treeai test CA",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
        ]);
        pki.issue("server", "1001");
        pki
    }

    fn openssl(&self, args: &[&str]) {
        let out = Command::new("openssl").args(args).current_dir(self.dir.path()).output().expect("openssl");
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// A key and a certificate `<name>.key`, `<name>.pem` with serial `serial` (hex).
    fn issue(&self, name: &str, serial: &str) {
        std::fs::write(self.dir.path().join("san.ext"), "subjectAltName=DNS:localhost,IP:127.0.0.1\n").unwrap();
        let (key, csr, pem) = (format!("{name}.key"), format!("{name}.csr"), format!("{name}.pem"));
        self.openssl(&[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-subj",
            "/CN=localhost",
            "-keyout",
            &key,
            "-out",
            &csr,
        ]);
        self.openssl(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-set_serial",
            &format!("0x{serial}"),
            "-days",
            "2",
            "-extfile",
            "san.ext",
            "-out",
            &pem,
        ]);
    }

    pub(crate) fn path(&self, f: &str) -> PathBuf {
        self.dir.path().join(f)
    }
}

/// `treeai auth …`, with `stdin`; returns stdout.
fn auth(args: &[&str], stdin: &str) -> String {
    let mut child = Command::new(treeai_bin())
        .arg("auth")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "treeai auth {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// psql with a connection string; returns (success, stdout, stderr).
fn psql(conninfo: &str, password: &str, sql: &str) -> (bool, String, String) {
    let out = Command::new("psql")
        .args([conninfo, "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .env("PGPASSWORD", password)
        .env("PGCONNECT_TIMEOUT", "10")
        .stdin(Stdio::null())
        .output()
        .expect("psql");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// curl over HTTPS with our CA; returns (status, body).
fn curl(ca: &Path, method: &str, url: &str, token: Option<&str>, body: Option<&str>) -> (u16, String) {
    let mut c = Command::new("curl");
    c.args(["-sS", "--max-time", "30", "--cacert"]).arg(ca).args(["-X", method, "-w", "\n%{http_code}"]);
    if let Some(t) = token {
        c.args(["-H", &format!("Authorization: Bearer {t}")]);
    }
    if let Some(b) = body {
        c.args(["-H", "Content-Type: application/json", "--data-binary", b]);
    }
    let out = c.arg(url).output().expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

fn serial_served(port: &str) -> String {
    let mut s = Command::new("openssl")
        .args(["s_client", "-connect", &format!("127.0.0.1:{port}"), "-servername", "localhost"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
        .wait_with_output()
        .unwrap()
        .stdout;
    let mut x = Command::new("openssl")
        .args(["x509", "-noout", "-serial"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    x.stdin.take().unwrap().write_all(&std::mem::take(&mut s)).unwrap();
    String::from_utf8_lossy(&x.wait_with_output().unwrap().stdout).trim().to_string()
}

#[test]
fn tls_scram_logins_bearer_tokens_roles_revocation_rotation_and_audit() {
    let pki = Pki::new();
    let creds = pki.path("auth.toml");
    let file = creds.to_str().unwrap();
    auth(&["add-user", "ana", "--role", "reader", "--file", file], "correct horse battery\n");
    auth(&["add-user", "feeder", "--role", "ingest", "--file", file], "feeder-pw\n");
    let reader = auth(&["add-token", "grafana", "--role", "reader", "--file", file], "");
    let admin = auth(&["add-token", "ops", "--role", "admin", "--file", file], "");
    assert!(reader.starts_with("treeai_") && reader != admin, "{reader} {admin}");
    let stored = std::fs::read_to_string(&creds).unwrap();
    assert!(!stored.contains("correct horse") && !stored.contains(&reader) && stored.contains("SCRAM-SHA-256$4096:"));

    let audit = pki.path("audit.log");
    let (cert, key) = (pki.path("server.pem"), pki.path("server.key"));
    let mut run = Running::start(&[
        "run",
        "--workers",
        "1",
        "--rate",
        "300",
        "--no-lake",
        "--auth-file",
        file,
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
        "--audit-log",
        audit.to_str().unwrap(),
    ]);
    run.wait_for(60, |l| l.contains("SQL on"));
    let pg_port = run.pg.rsplit(':').next().unwrap().to_string();
    let http_port = run.http.rsplit(':').next().unwrap().to_string();
    let ca = pki.path("ca.pem");
    let conn = |user: &str, mode: &str| {
        format!("host=localhost port={pg_port} user={user} dbname=treeai sslmode={mode} sslrootcert={}", ca.display())
    };

    // Postgres wire: TLS verified against our CA, the right password, SQL runs.
    let (ok, out, err) = psql(&conn("ana", "verify-full"), "correct horse battery", "select 40 + 2 as answer");
    assert!(ok && out == "42", "verify-full login failed: {out} {err}");
    // A wrong password, an unknown user (same answer), a role that may not run SQL, no TLS.
    let (ok, _, err) = psql(&conn("ana", "verify-full"), "wrong", "select 1");
    assert!(!ok && err.contains("password authentication failed for user \"ana\""), "{err}");
    let (ok, _, err) = psql(&conn("nobody", "require"), "whatever", "select 1");
    assert!(!ok && err.contains("password authentication failed for user \"nobody\""), "{err}");
    let (ok, _, err) = psql(&conn("feeder", "require"), "feeder-pw", "select 1");
    assert!(!ok && err.contains("may not run SQL"), "{err}");
    let (ok, _, err) = psql(&conn("ana", "disable"), "correct horse battery", "select 1");
    assert!(!ok && err.contains("TLS connections only"), "{err}");

    // psycopg: sslmode=require, SCRAM, the extended protocol; a wrong password is refused.
    let script = r#"
import sys, psycopg
port = sys.argv[1]
with psycopg.connect(f"host=127.0.0.1 port={port} user=ana password='correct horse battery' dbname=treeai sslmode=require") as c:
    assert c.pgconn.ssl_in_use
    assert c.execute("select %s::bigint * 2", (21,)).fetchone()[0] == 42
try:
    psycopg.connect(f"host=127.0.0.1 port={port} user=ana password=nope dbname=treeai sslmode=require")
    raise SystemExit("a wrong password was accepted")
except psycopg.OperationalError as e:
    assert "password authentication failed" in str(e), e
print("psycopg ok")
"#;
    let out = Command::new("python3").args(["-c", script, &pg_port]).output().expect("python3");
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("psycopg ok"),
        "psycopg: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // HTTPS: no token 401, a reader's token runs SQL but may not call admin endpoints (403),
    // an admin's may; probes and metrics stay open.
    let base = format!("https://localhost:{http_port}");
    let sql = r#"{"sql": "select 7 as seven"}"#;
    assert_eq!(curl(&ca, "POST", &format!("{base}/v1/sql"), None, Some(sql)).0, 401);
    assert_eq!(curl(&ca, "POST", &format!("{base}/v1/sql"), Some("treeai_forged"), Some(sql)).0, 401);
    let (status, body) = curl(&ca, "POST", &format!("{base}/v1/sql"), Some(&reader), Some(sql));
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"rows\":[[7]]"), "{body}");
    assert_eq!(curl(&ca, "POST", &format!("{base}/v1/admin/checkpoint"), Some(&reader), None).0, 403);
    let (status, body) = curl(&ca, "POST", &format!("{base}/v1/admin/checkpoint"), Some(&admin), None);
    assert_eq!(status, 200, "{body}");
    assert_eq!(curl(&ca, "GET", &format!("{base}/healthz"), None, None).0, 200);
    let (status, metrics) = curl(&ca, "GET", &format!("{base}/metrics"), None, None);
    assert_eq!(status, 200);
    for want in [
        r#"treeai_auth_failures_total{protocol="pgwire",reason="wrong_password"} 2"#,
        r#"treeai_auth_failures_total{protocol="pgwire",reason="unknown_user"} 1"#,
        r#"treeai_auth_failures_total{protocol="pgwire",reason="role"} 1"#,
        r#"treeai_auth_failures_total{protocol="http",reason="no_token"} 1"#,
        r#"treeai_auth_failures_total{protocol="http",reason="bad_token"} 1"#,
        r#"treeai_auth_failures_total{protocol="http",reason="role"} 1"#,
    ] {
        assert!(metrics.contains(want), "{want} missing from /metrics:\n{metrics}");
    }
    // Plain HTTP to the HTTPS port gets nothing.
    assert!(crate::common::http(&run.http, "GET", "/healthz", &[], b"").map_or(true, |(s, _, _)| s != 200));

    // Revoking a token and a user takes effect without a restart.
    auth(&["remove", "grafana", "--file", file], "");
    auth(&["remove", "ana", "--file", file], "");
    assert_eq!(curl(&ca, "POST", &format!("{base}/v1/sql"), Some(&reader), Some(sql)).0, 401);
    let (ok, _, err) = psql(&conn("ana", "verify-full"), "correct horse battery", "select 1");
    assert!(!ok && err.contains("password authentication failed"), "{err}");

    // A rotated certificate is served to new connections without a restart.
    assert_eq!(serial_served(&http_port), "serial=1001");
    pki.issue("server", "2002");
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while serial_served(&http_port) != "serial=2002" {
        assert!(std::time::Instant::now() < deadline, "the rotated certificate is not served");
        std::thread::sleep(std::time::Duration::from_millis(300));
    }

    // The audit log: one JSON line per login, statement, refusal and admin call.
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&audit)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("audit line not JSON ({e}): {l}")))
        .collect();
    let has = |f: &dyn Fn(&serde_json::Value) -> bool, what: &str| {
        assert!(lines.iter().any(f), "no audit line for {what}:\n{lines:#?}");
    };
    has(
        &|l| l["action"] == "login" && l["user"] == "ana" && l["outcome"] == "ok" && l["role"] == "reader",
        "ana's login",
    );
    has(&|l| l["action"] == "login" && l["user"] == "ana" && l["reason"] == "wrong_password", "the wrong password");
    has(
        &|l| l["action"] == "sql" && l["user"] == "ana" && l["statement"] == "select 40 + 2 as answer",
        "psql's statement",
    );
    has(
        &|l| l["action"] == "sql" && l["user"] == "grafana" && l["statement"] == "select 7 as seven",
        "the HTTP statement",
    );
    has(&|l| l["action"] == "admin" && l["user"] == "ops" && l["outcome"] == "ok", "the admin call");
    has(&|l| l["action"] == "admin" && l["outcome"] == "refused" && l["reason"] == "role", "the reader's admin call");
    has(&|l| l["outcome"] == "refused" && l["reason"] == "no_token", "the request without a token");
    assert!(lines
        .iter()
        .all(|l| l["time"].is_string() && l["client"].as_str().is_some_and(|c| c.starts_with("127.0.0.1:"))));
    drop(run);
}

#[test]
fn an_open_non_loopback_address_is_a_start_up_error() {
    let port = free_addr().rsplit(':').next().unwrap().to_string();
    let out = Command::new(treeai_bin())
        .args(["run", "--no-lake", "--no-checkpoint", "--sql-addr", &format!("0.0.0.0:{port}")])
        .args(["--http-addr", &free_addr()])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("--auth-file") && stderr.contains("--insecure-no-auth"),
        "{stderr}"
    );
}

/// With a lake, the audit records also land in it: `lake.audit` answers who logged in, ran
/// what and was refused, as the JSON lines do; the rest is written when the server stops.
#[test]
fn audit_records_land_in_the_lake_as_lake_audit() {
    let dir = tempfile::tempdir().unwrap();
    let creds = dir.path().join("auth.toml");
    let file = creds.to_str().unwrap();
    auth(&["add-user", "ana", "--role", "reader", "--file", file], "pw-of-ana\n");
    let admin = auth(&["add-token", "ops", "--role", "admin", "--file", file], "");
    let (lake, audit) = (dir.path().join("lake"), dir.path().join("audit.log"));
    let mut run = Running::start(&[
        "run",
        "--workers",
        "1",
        "--rate",
        "300",
        "--no-checkpoint",
        "--lake",
        lake.to_str().unwrap(),
        "--auth-file",
        file,
        "--audit-log",
        audit.to_str().unwrap(),
    ]);
    run.wait_for(60, |l| l.contains("SQL on"));
    let port = run.pg.rsplit(':').next().unwrap().to_string();
    let conn = |user: &str| format!("host=127.0.0.1 port={port} user={user} dbname=treeai sslmode=disable");
    let (ok, out, err) = psql(&conn("ana"), "pw-of-ana", "select 40 + 2 as answer");
    assert!(ok && out == "42", "{out} {err}");
    let (ok, _, _) = psql(&conn("ana"), "not her password", "select 1");
    assert!(!ok);
    let bearer = format!("Bearer {admin}");
    let sql = |q: &str| -> serde_json::Value {
        let body = serde_json::json!({ "sql": q }).to_string();
        let headers = [("Authorization", bearer.as_str()), ("Content-Type", "application/json")];
        let (status, _, body) = crate::common::http(&run.http, "POST", "/v1/sql", &headers, body.as_bytes()).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(status, 200, "{q}: {v}");
        v
    };
    // The records reach the lake within the flush interval (5 s).
    let query = "select action, outcome, \"user\", coalesce(statement, reason, request) from lake.audit \
                 where \"user\" = 'ana' order by time";
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let rows = loop {
        let rows = sql(query)["rows"].as_array().cloned().unwrap_or_default();
        if rows.len() >= 3 || std::time::Instant::now() > deadline {
            break rows;
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    };
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| r.as_array().unwrap().iter().map(|c| c.as_str().unwrap_or("").to_string()).collect())
        .collect();
    let has = |want: [&str; 4]| rows.iter().any(|r| r == &want.map(String::from).to_vec());
    assert!(rows.iter().any(|r| r[0] == "login" && r[1] == "ok"), "{rows:?}");
    assert!(has(["sql", "ok", "ana", "select 40 + 2 as answer"]), "{rows:?}");
    assert!(has(["login", "refused", "ana", "wrong_password"]), "{rows:?}");
    // Every JSON line is a row once the server has stopped (the last ones are flushed then).
    run.signal("TERM");
    assert_eq!(run.wait_exit(30).and_then(|s| s.code()), Some(0));
    let lines = std::fs::read_to_string(&audit).unwrap().lines().count();
    let mut rows = 0;
    for f in crate::common::files_under(&lake.join("audit")) {
        let reader =
            parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(&f).unwrap())
                .unwrap()
                .build()
                .unwrap();
        rows += reader.map(|b| b.unwrap().num_rows()).sum::<usize>();
        assert!(f.to_str().unwrap().contains("/audit/date="), "{}", f.display());
    }
    assert_eq!(rows, lines, "lake.audit rows vs audit log lines");
}

/// Encryption at rest: with `AWS_SERVER_SIDE_ENCRYPTION` (and `AWS_SSE_KMS_KEY_ID` for SSE-KMS;
/// or the same keys in `[lake.options]`) every object the pipeline writes to S3 — lake files,
/// staged and then published by copy, checkpoints and their manifests — is stored encrypted, as
/// the S3 server (moto) reports for each object. Both SSE-S3 and SSE-KMS with a KMS key of moto's.
#[test]
fn lake_and_checkpoints_on_s3_are_encrypted_at_rest() {
    let moto = crate::common::Moto::start();
    moto.create_bucket("treeai");
    let envs: Vec<(&str, String)> = moto.envs.clone();
    let python = |script: &str, extra: &[(&str, String)]| -> String {
        let boto = "import boto3, os\nkw = dict(endpoint_url=os.environ['AWS_ENDPOINT'], region_name='us-east-1', \
                    aws_access_key_id='test', aws_secret_access_key='test')\n";
        let out = Command::new("python3")
            .args(["-c", &format!("{boto}{script}")])
            .envs(envs.iter().chain(extra).map(|(k, v)| (*k, v.as_str())))
            .output()
            .expect("python3");
        assert!(out.status.success(), "python: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let key_id = python("print(boto3.client('kms', **kw).create_key()['KeyMetadata']['KeyId'])", &[]);
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("events.ndjson");
    crate::kafka::produce_file(&input, &["--count", "4000", "--trees", "100", "--bad-fraction", "0.01"]);
    let lines = std::fs::read_to_string(&input).unwrap().lines().count() as f64;
    for (mode, kms) in [("AES256", None), ("aws:kms", Some(key_id.as_str()))] {
        let prefix = if kms.is_some() { "kms" } else { "sse-s3" };
        let mut run_envs: Vec<(&str, String)> = envs.clone();
        run_envs.push(("AWS_SERVER_SIDE_ENCRYPTION", mode.to_string()));
        if let Some(key) = kms {
            run_envs.push(("AWS_SSE_KMS_KEY_ID", key.to_string()));
        }
        let lake = format!("s3://treeai/{prefix}");
        let env_refs: Vec<(&str, &str)> = run_envs.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let mut run = Running::start_with_env(
            &[
                "run",
                "--workers",
                "1",
                "--input",
                input.to_str().unwrap(),
                "--lake",
                &lake,
                "--lake-roll-ms",
                "500",
                "--checkpoint-interval-ms",
                "500",
            ],
            &env_refs,
        );
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
        while crate::kafka::metric(&run.http, "treeai_events_read_total") != Some(lines) {
            assert!(std::time::Instant::now() < deadline, "{mode}: input not read");
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        // A clean stop: the final checkpoint and the lake files it publishes.
        assert!(run.interrupt().success(), "{mode}: clean stop");
        let listing = python(
            &format!(
                "s3 = boto3.client('s3', **kw)\n\
                 for o in s3.get_paginator('list_objects_v2').paginate(Bucket='treeai', Prefix='{prefix}/'):\n\
                 \x20   for c in o.get('Contents', []):\n\
                 \x20       h = s3.head_object(Bucket='treeai', Key=c['Key'])\n\
                 \x20       print(c['Key'], h.get('ServerSideEncryption'), h.get('SSEKMSKeyId'))\n"
            ),
            &[],
        );
        let objects: Vec<Vec<&str>> = listing.lines().map(|l| l.split(' ').collect()).collect();
        let has = |part: &str| objects.iter().any(|o| o[0].contains(part));
        assert!(has("/readings/date=") && has(".parquet"), "{mode}: no lake files in {listing}");
        assert!(has("/_checkpoints/") && has("MANIFEST.json"), "{mode}: no checkpoints in {listing}");
        for o in &objects {
            assert_eq!(o.get(1), Some(&mode), "{mode}: {} is not encrypted so: {o:?}", o[0]);
            if let Some(key) = kms {
                assert!(o.get(2).is_some_and(|k| k.contains(key)), "{}: KMS key {:?}, want {key}", o[0], o.get(2));
            }
        }
        eprintln!("{mode}: {} objects, all encrypted", objects.len());
    }
}
