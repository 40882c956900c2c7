//! Helpers shared by the test modules.

use arrow::array::{Array, Date32Array, Float64Array, Int64Array, StringArray, TimestampMillisecondArray};
use arrow::datatypes::{DataType, TimeUnit};
use arrow::record_batch::RecordBatch;
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// Rows of a record batch as JSON objects, in the encoding of [`crate::naive`]:
/// timestamps as epoch ms, dates as `YYYY-MM-DD`.
pub fn batch_rows(batch: &RecordBatch) -> Vec<Map<String, Value>> {
    let schema = batch.schema();
    let mut rows = vec![Map::new(); batch.num_rows()];
    for (i, field) in schema.fields().iter().enumerate() {
        let col = batch.column(i);
        for (r, row) in rows.iter_mut().enumerate() {
            let v = if col.is_null(r) {
                Value::Null
            } else {
                match field.data_type() {
                    DataType::Utf8 => Value::from(col.as_any().downcast_ref::<StringArray>().unwrap().value(r)),
                    DataType::Int64 => Value::from(col.as_any().downcast_ref::<Int64Array>().unwrap().value(r)),
                    DataType::Float64 => Value::from(col.as_any().downcast_ref::<Float64Array>().unwrap().value(r)),
                    DataType::Timestamp(TimeUnit::Millisecond, _) => {
                        Value::from(col.as_any().downcast_ref::<TimestampMillisecondArray>().unwrap().value(r))
                    }
                    DataType::Date32 => Value::from(treeai_dataflows::time::format_day(
                        col.as_any().downcast_ref::<Date32Array>().unwrap().value(r),
                    )),
                    DataType::Boolean => {
                        Value::from(col.as_any().downcast_ref::<arrow::array::BooleanArray>().unwrap().value(r))
                    }
                    DataType::Binary => Value::from(String::from_utf8_lossy(
                        col.as_any().downcast_ref::<arrow::array::BinaryArray>().unwrap().value(r),
                    )),
                    other => panic!("unexpected column type {other:?}"),
                }
            };
            row.insert(field.name().clone(), v);
        }
    }
    rows
}

/// Compares two sets of views; floats within 1e-6, except `score`/`mean_score`
/// within the spec's 0.1, and a `band` may differ only next to a band boundary.
/// Returns a description of the first differences.
pub fn diff_views(
    got: &BTreeMap<&'static str, Vec<Map<String, Value>>>,
    want: &BTreeMap<&'static str, Vec<Map<String, Value>>>,
) -> Option<String> {
    let mut out = String::new();
    for (view, want_rows) in want {
        let Some(got_rows) = got.get(view) else {
            out += &format!("view {view} missing\n");
            continue;
        };
        if got_rows.len() != want_rows.len() {
            out += &format!("{view}: {} rows, want {}\n", got_rows.len(), want_rows.len());
        }
        for (g, w) in got_rows.iter().zip(want_rows) {
            if !rows_match(g, w) {
                out += &format!("{view}:\n  got  {}\n  want {}\n", Value::Object(g.clone()), Value::Object(w.clone()));
            }
        }
        if out.len() > 4000 {
            break;
        }
    }
    (!out.is_empty()).then_some(out)
}

fn near_band_boundary(row: &Map<String, Value>) -> bool {
    let s = row.get("score").and_then(Value::as_f64).unwrap_or(-1.0);
    [40.0, 60.0, 80.0].iter().any(|b| (s - b).abs() <= 0.1 + 1e-9)
}

fn rows_match(g: &Map<String, Value>, w: &Map<String, Value>) -> bool {
    if g.len() != w.len() {
        return false;
    }
    for (k, wv) in w {
        let Some(gv) = g.get(k) else { return false };
        let ok = match (gv, wv) {
            (Value::Number(a), Value::Number(b)) => {
                let (a, b) = (a.as_f64().unwrap_or(f64::NAN), b.as_f64().unwrap_or(f64::NAN));
                let tol = if k == "score" || k == "mean_score" { 0.1 + 1e-9 } else { 1e-6 };
                (a - b).abs() <= tol
            }
            (Value::String(a), Value::String(b)) if k == "band" => a == b || near_band_boundary(w),
            _ => gv == wv,
        };
        if !ok {
            return false;
        }
    }
    true
}

/// Every file under `dir`, recursively, sorted.
pub fn files_under(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = entry.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// The `treeai` binary next to this test executable (built by `cargo build` first).
pub fn treeai_bin() -> PathBuf {
    if let Ok(p) = std::env::var("TREEAI_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
    let bin = dir.join(format!("treeai{}", std::env::consts::EXE_SUFFIX));
    assert!(bin.exists(), "{} not found: run `cargo build -p treeai` first (or set TREEAI_BIN)", bin.display());
    bin
}

/// A free loopback address (tests run in parallel, so never a fixed port).
pub fn free_addr() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    format!("127.0.0.1:{port}")
}

/// A running `treeai` process on free SQL and HTTP ports, with its stderr lines.
pub struct Running {
    /// The process.
    pub child: std::process::Child,
    /// Its stderr, line by line (progress updates split at `\r`).
    pub lines: std::sync::mpsc::Receiver<String>,
    /// Its Postgres wire address.
    pub pg: String,
    /// Its HTTP address.
    pub http: String,
    /// Where its checkpoints go when it runs without a lake (not the working directory).
    _checkpoints: Option<tempfile::TempDir>,
}

impl Running {
    /// Starts `treeai <args> --sql-addr <free> --http-addr <free>`.
    pub fn start(args: &[&str]) -> Running {
        Running::start_with_env(args, &[])
    }

    /// As [`Running::start`], with extra environment variables.
    pub fn start_with_env(args: &[&str], envs: &[(&str, &str)]) -> Running {
        use std::io::BufRead;
        let (pg, http) = (free_addr(), free_addr());
        // Without a lake, checkpoints would go to ./checkpoints: give each process its own.
        let checkpoints = (args.contains(&"--no-lake") && !args.contains(&"--checkpoint-url"))
            .then(|| tempfile::tempdir().expect("tempdir"));
        let mut command = std::process::Command::new(treeai_bin());
        if let Some(dir) = &checkpoints {
            command.env("TREEAI_CHECKPOINT_URL", dir.path());
        }
        let mut child = command
            .args(args)
            .envs(envs.iter().copied())
            .args(["--sql-addr", &pg, "--http-addr", &http])
            .stderr(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("spawn treeai");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
                for part in line.split('\r') {
                    let _ = tx.send(part.to_string());
                }
            }
        });
        Running { child, lines, pg, http, _checkpoints: checkpoints }
    }

    /// Waits for a stderr line that satisfies `want`, for at most `secs`.
    pub fn wait_for(&mut self, secs: u64, want: impl Fn(&str) -> bool) -> String {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
        let mut seen = std::collections::VecDeque::new();
        while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) if want(&line) => return line,
                Ok(line) => {
                    seen.push_back(line);
                    if seen.len() > 10 {
                        seen.pop_front();
                    }
                }
                Err(_) => break,
            }
        }
        let seen: Vec<_> = seen.into();
        panic!("no matching line from treeai within {secs}s; its last lines:\n{}", seen.join("\n"));
    }

    /// For a failed test's output: the last 30 warnings, errors and checkpoint lines `name`
    /// printed that no wait has taken yet.
    pub fn print_notable(&self, name: &str) {
        let lines: Vec<String> = self.lines.try_iter().collect();
        let notable: Vec<&String> =
            lines.iter().filter(|l| l.contains("WARN") || l.contains("ERROR") || l.contains("checkpoint")).collect();
        eprintln!("{name}'s warnings, errors and checkpoints (last 30):");
        for line in &notable[notable.len().saturating_sub(30)..] {
            eprintln!("  {line}");
        }
    }

    /// Sends SIGINT and waits (at most 20 s) for the exit status.
    pub fn interrupt(&mut self) -> std::process::ExitStatus {
        self.signal("INT");
        self.wait_exit(20).expect("treeai did not stop on SIGINT")
    }

    /// Sends a signal (`INT`, `TERM`, ...).
    pub fn signal(&self, name: &str) {
        let _ = std::process::Command::new("kill").args([&format!("-{name}"), &self.child.id().to_string()]).status();
    }

    /// The exit status, if the process ends within `secs`.
    pub fn wait_exit(&mut self, secs: u64) -> Option<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some(status);
            }
            if std::time::Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends a signal (`STOP`, `CONT`, ...) to a process.
pub fn signal(pid: u32, name: &str) {
    let _ = std::process::Command::new("kill").args([format!("-{name}"), pid.to_string()]).status();
}

/// An S3-compatible server (moto, from PyPI) on a free port, killed when dropped.
pub struct Moto {
    child: std::process::Child,
    /// `AWS_*` variables that point S3 clients at it.
    pub envs: Vec<(&'static str, String)>,
}

impl Moto {
    /// Starts moto and waits until it listens.
    pub fn start() -> Moto {
        let addr = free_addr();
        let port = addr.rsplit(':').next().unwrap_or_default().to_string();
        let child = std::process::Command::new("python3")
            .args(["-m", "moto.server", "-H", "127.0.0.1", "-p", &port])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("moto server (pip install 'moto[server]'; scripts/test-all.sh does)");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while std::net::TcpStream::connect(&addr).is_err() {
            assert!(std::time::Instant::now() < deadline, "moto did not start");
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let envs = vec![
            ("AWS_ENDPOINT", format!("http://{addr}")),
            ("AWS_ALLOW_HTTP", "true".to_string()),
            ("AWS_ACCESS_KEY_ID", "test".to_string()),
            ("AWS_SECRET_ACCESS_KEY", "test".to_string()),
            ("AWS_REGION", "us-east-1".to_string()),
            ("AWS_DEFAULT_REGION", "us-east-1".to_string()),
        ];
        Moto { child, envs }
    }

    /// The server's process id (to pause it with `SIGSTOP`: an outage where requests hang).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Creates a bucket (with boto3, an independent client).
    pub fn create_bucket(&self, bucket: &str) {
        let script = format!(
            "import boto3, os\nboto3.client('s3', endpoint_url=os.environ['AWS_ENDPOINT'], region_name='us-east-1', \
             aws_access_key_id='test', aws_secret_access_key='test').create_bucket(Bucket='{bucket}')"
        );
        let out = std::process::Command::new("python3")
            .args(["-c", &script])
            .envs(self.envs.iter().map(|(k, v)| (*k, v.as_str())))
            .output()
            .expect("python3");
        assert!(out.status.success(), "create bucket: {}", String::from_utf8_lossy(&out.stderr));
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTP/1.1 request to `addr`; returns (status, headers, body), a chunked body decoded.
pub fn http(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<(u16, String, Vec<u8>)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr)?;
    // Longer than the longest a handler may wait (POST /v1/admin/checkpoint: 120 s, then 503
    // with the reason), so a slow answer is read rather than cut.
    s.set_read_timeout(Some(std::time::Duration::from_secs(130)))?;
    // `Host: localhost` unless the caller names one.
    let host = if headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) { "" } else { "Host: localhost\r\n" };
    let mut req = format!("{method} {path} HTTP/1.1\r\n{host}Connection: close\r\nContent-Length: {}\r\n", body.len());
    for (k, v) in headers {
        req += &format!("{k}: {v}\r\n");
    }
    req += "\r\n";
    s.write_all(req.as_bytes())?;
    s.write_all(body)?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp)?;
    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string());
    let split = resp.windows(4).position(|w| w == b"\r\n\r\n").ok_or_else(|| bad("no HTTP header end"))?;
    let head = String::from_utf8_lossy(&resp[..split]).into_owned();
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).ok_or_else(|| bad("no HTTP status"))?;
    let mut body = resp[split + 4..].to_vec();
    if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        body = dechunk(&body);
    }
    Ok((status, head, body))
}

/// Decodes a chunked HTTP body.
fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(end) = b.windows(2).position(|w| w == b"\r\n") {
        let n = usize::from_str_radix(String::from_utf8_lossy(&b[..end]).trim(), 16).unwrap_or(0);
        let Some(chunk) = b.get(end + 2..end + 2 + n).filter(|_| n > 0) else { break };
        out.extend_from_slice(chunk);
        b = b.get(end + 2 + n + 2..).unwrap_or_default();
    }
    out
}

/// An HTTP request as the tests' own receivers see it: the request line, the headers (names
/// lower-cased, values trimmed) and the body.
#[cfg(test)]
pub(crate) type HttpRequest = (String, Vec<(String, String)>, Vec<u8>);

/// One HTTP/1.1 request read from a kept-alive connection (the body is `Content-Length`
/// bytes); `None` once the peer closed.
#[cfg(test)]
pub(crate) fn read_http_request(reader: &mut impl std::io::BufRead) -> Option<HttpRequest> {
    let mut line = String::new();
    if reader.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let request = line.trim_end().to_string();
    let mut headers = Vec::new();
    loop {
        line.clear();
        if reader.read_line(&mut line).ok()? == 0 {
            return None;
        }
        if line == "\r\n" {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    let length = headers.iter().find(|(k, _)| k == "content-length").and_then(|(_, v)| v.parse().ok()).unwrap_or(0);
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body).ok()?;
    Some((request, headers, body))
}
