//! What several benchmarks share (included by `#[path]`: each benchmark is its own binary).
#![allow(dead_code)]

use hdrhistogram::Histogram;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use treeai_connectors::generated::GeneratorSource;
use treeai_dataflows::event::Position;
use treeai_dataflows::source::{PartitionPosition, Poll, RawMessage, Source, SourceError, SourceRef};

/// This process's peak RSS (VmHWM), MB.
pub fn peak_rss_mb() -> f64 {
    status_mb("self", "VmHWM:")
}

/// Process `pid`'s current RSS (VmRSS), MB.
pub fn rss_mb(pid: u32) -> f64 {
    status_mb(&pid.to_string(), "VmRSS:")
}

fn status_mb(pid: &str, field: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// Measured rounds `(ms since start, round µs)`, shared with the benchmark.
pub type Series = Arc<Mutex<Vec<(u64, u64)>>>;

/// A source that records how long each round takes (time between polls) once warm.
pub struct TimedSource {
    pub inner: GeneratorSource,
    pub rounds: Arc<Mutex<Histogram<u64>>>,
    pub last: Option<Instant>,
    pub warmup: u64,
    /// Every measured round as `(ms since the given instant, round µs)`, when
    /// asked for (`city-bench --child update --rounds-out F`: which rounds are slow, and when).
    pub series: Option<(Instant, Series)>,
}

impl Source for TimedSource {
    fn poll(&mut self, max: usize, emit: &mut dyn FnMut(RawMessage<'_>)) -> Poll {
        let now = Instant::now();
        if let Some(last) = self.last {
            if self.warmup == 0 {
                let us = now.duration_since(last).as_micros() as u64;
                let _ = self.rounds.lock().map(|mut h| h.record(us));
                if let Some((start, series)) = &self.series {
                    let at = last.duration_since(*start).as_millis() as u64;
                    let _ = series.lock().map(|mut s| s.push((at, us)));
                }
            } else {
                self.warmup -= 1;
            }
        }
        self.last = Some(now);
        self.inner.poll(max, emit)
    }
    fn source_ref(&self, pos: Position) -> SourceRef {
        self.inner.source_ref(pos)
    }
    fn positions(&self) -> Vec<PartitionPosition> {
        self.inner.positions()
    }
    fn seek(&mut self, positions: &[PartitionPosition]) -> Result<(), SourceError> {
        self.inner.seek(positions)
    }
}

/// A free loopback address.
pub fn free_addr() -> anyhow::Result<String> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    Ok(format!("127.0.0.1:{port}"))
}

/// One HTTP/1.0 request (the body is not chunked, it ends with the connection); the
/// response body when the status is 200.
pub fn http(addr: &str, method: &str, path: &str, body: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(10))).ok()?;
    let head = format!(
        "{method} {path} HTTP/1.0\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).ok()?;
    s.write_all(body.as_bytes()).ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    if out.split_whitespace().nth(1) != Some("200") {
        return None;
    }
    Some(out.split_once("\r\n\r\n")?.1.to_string())
}
