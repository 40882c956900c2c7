//! A cluster of processes (OPERATIONS.md "Cluster"): timely's own networking
//! between `P` processes of `W` workers each, with the connection set-up done
//! here so that it is bounded and says what is wrong.
//!
//! Timely's `Config::Cluster` binds the address string it is given and
//! retries connecting forever. Here instead:
//!
//! - a process listens on its own address's port; on **all interfaces** when
//!   the address is a host name (a StatefulSet pod's `treeai-0.treeai:7000`
//!   does not resolve to the pod's own interface before the pod is ready), on
//!   the address itself when it is an IP literal (`127.0.0.1:7000` stays on
//!   loopback);
//! - it connects to every lower-numbered process and accepts every
//!   higher-numbered one, retrying until [`ClusterConfig::connect_timeout`],
//!   then fails with the processes it could not reach;
//! - both ends of a link first exchange a hello (`TREEAI\0\x01`, process
//!   index, processes, workers per process), so a peer started with other
//!   `--processes` or `--workers`, or a stranger on the port, is a clear error
//!   rather than a garbled dataflow;
//! - the links are then handed to timely
//!   (`initialize_networking_from_sockets`), wrapped so that a link that
//!   breaks later — a peer killed — is named in the error the workers stop
//!   with ([`Links::lost`]).
//!
//! The links are plain TCP without authentication or encryption, as timely
//! makes them: confine them to the cluster's own network (the deploy's
//! NetworkPolicy admits the peer port only from the StatefulSet's own pods).

use std::io::{self, Read, Write};
use std::net::{IpAddr, Shutdown, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The processes of a cluster and this one's place in it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterConfig {
    /// Processes in the cluster (`--processes`).
    pub processes: usize,
    /// This process's index, `0..processes` (`--process`).
    pub process: usize,
    /// Every process's peer address `host:port`, in process order (`--peers`, `--peers-file`).
    pub peers: Vec<String>,
    /// How long to wait for every peer at start-up (default 60 s).
    pub connect_timeout: Duration,
}

impl ClusterConfig {
    /// Checks the configuration: as many addresses as processes, an index in range.
    pub fn validate(&self) -> Result<(), String> {
        if self.processes < 2 {
            return Err(format!("a cluster needs at least 2 processes (got {})", self.processes));
        }
        if self.process >= self.processes {
            return Err(format!("--process {} is out of range for --processes {}", self.process, self.processes));
        }
        if self.peers.len() != self.processes {
            return Err(format!(
                "{} peer addresses for {} processes: give one host:port per process, in process order",
                self.peers.len(),
                self.processes
            ));
        }
        for p in &self.peers {
            port_of(p)?;
        }
        Ok(())
    }
}

fn port_of(address: &str) -> Result<u16, String> {
    address
        .rsplit_once(':')
        .and_then(|(_, port)| port.parse().ok())
        .ok_or_else(|| format!("peer address {address:?} is not host:port"))
}

/// Where a process listens: the address itself when its host is an IP literal, else every
/// interface on its port.
fn listen_address(address: &str) -> Result<String, String> {
    let port = port_of(address)?;
    let host = address.rsplit_once(':').map_or("", |(h, _)| h).trim_start_matches('[').trim_end_matches(']');
    Ok(match host.parse::<IpAddr>() {
        Ok(IpAddr::V6(ip)) => format!("[{ip}]:{port}"),
        Ok(ip) => format!("{ip}:{port}"),
        Err(_) => format!("0.0.0.0:{port}"),
    })
}

const MAGIC: &[u8; 8] = b"TREEAI\0\x01";

fn hello(process: usize, config: &ClusterConfig, workers: usize) -> [u8; 32] {
    let mut out = [0u8; 32];
    out[..8].copy_from_slice(MAGIC);
    out[8..16].copy_from_slice(&(process as u64).to_be_bytes());
    out[16..24].copy_from_slice(&(config.processes as u64).to_be_bytes());
    out[24..32].copy_from_slice(&(workers as u64).to_be_bytes());
    out
}

/// Reads a peer's hello; `Ok(process)` if it belongs to this cluster.
fn read_hello(stream: &mut TcpStream, config: &ClusterConfig, workers: usize, who: &str) -> Result<usize, String> {
    let mut buf = [0u8; 32];
    stream.read_exact(&mut buf).map_err(|e| format!("{who}: no hello ({e}); is it a treeai process?"))?;
    if &buf[..8] != MAGIC {
        return Err(format!("{who}: not a treeai peer of this version"));
    }
    let field = |i: usize| u64::from_be_bytes(buf[i..i + 8].try_into().unwrap_or([0; 8])) as usize;
    let (process, processes, peer_workers) = (field(8), field(16), field(24));
    if processes != config.processes || peer_workers != workers {
        return Err(format!(
            "process {process} ({who}) runs with --processes {processes} --workers {peer_workers}; this process \
             with --processes {} --workers {workers}: every process of a cluster needs the same",
            config.processes
        ));
    }
    if process >= config.processes || process == config.process {
        return Err(format!("{who} says it is process {process}: every process needs its own --process index"));
    }
    Ok(process)
}

/// A broken link: which process, and why.
pub type Lost = Arc<Mutex<Option<String>>>;

/// A link to one peer, as timely uses it; records the first failure in [`Links::lost`].
pub struct Link {
    stream: TcpStream,
    peer: usize,
    address: Arc<str>,
    lost: Lost,
}

impl Link {
    fn note<T>(&self, result: io::Result<T>, eof: bool) -> io::Result<T> {
        let why = match &result {
            Err(e) => Some(e.to_string()),
            Ok(_) if eof => Some("connection closed".to_string()),
            Ok(_) => None,
        };
        if let Some(why) = why {
            let mut lost = self.lost.lock().unwrap_or_else(|p| p.into_inner());
            if lost.is_none() {
                *lost = Some(format!("lost process {} ({}): {why}", self.peer, self.address));
            }
        }
        result
    }
}

impl Read for Link {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let result = self.stream.read(buf);
        let eof = matches!(result, Ok(0)) && !buf.is_empty();
        self.note(result, eof)
    }
}

impl Write for Link {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let result = self.stream.write(buf);
        self.note(result, false)
    }
    fn flush(&mut self) -> io::Result<()> {
        let result = self.stream.flush();
        self.note(result, false)
    }
}

impl timely::communication::allocator::zero_copy::stream::Stream for Link {
    fn try_clone(&self) -> io::Result<Self> {
        Ok(Link {
            stream: self.stream.try_clone()?,
            peer: self.peer,
            address: self.address.clone(),
            lost: self.lost.clone(),
        })
    }
    fn set_nonblocking(&self, nonblocking: bool) -> io::Result<()> {
        self.stream.set_nonblocking(nonblocking)
    }
    fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        self.stream.shutdown(how)
    }
}

/// The links of one process to all the others, in process order (`None` at its own index).
pub struct Links {
    /// One per process.
    pub links: Vec<Option<Link>>,
    /// The first link that broke, with why (a clean shutdown of the whole cluster breaks none
    /// before the workers are done).
    pub lost: Lost,
}

impl Links {
    /// Before the dataflow starts: process 0 sends `decision` to every peer; every other process
    /// receives it from process 0 (within `timeout`). Used to agree on the checkpoint to resume
    /// from and the first checkpoint number, which process 0 decides.
    pub fn agree(&mut self, process: usize, decision: &[u8], timeout: Duration) -> Result<Vec<u8>, String> {
        if process == 0 {
            for link in self.links.iter_mut().flatten() {
                let mut message = (decision.len() as u64).to_be_bytes().to_vec();
                message.extend_from_slice(decision);
                link.stream.write_all(&message).map_err(|e| format!("sending to process {}: {e}", link.peer))?;
            }
            return Ok(decision.to_vec());
        }
        let link = self.links.first_mut().and_then(|l| l.as_mut()).ok_or("no link to process 0")?;
        let read = |stream: &mut TcpStream| -> io::Result<Vec<u8>> {
            stream.set_read_timeout(Some(timeout))?;
            let mut len = [0u8; 8];
            stream.read_exact(&mut len)?;
            let mut out = vec![0u8; u64::from_be_bytes(len).min(1 << 20) as usize];
            stream.read_exact(&mut out)?;
            stream.set_read_timeout(None)?;
            Ok(out)
        };
        read(&mut link.stream).map_err(|e| format!("waiting for process 0 to decide where to resume: {e}"))
    }
}

/// Connects this process to every other one: dials the lower-numbered, accepts the
/// higher-numbered, within `config.connect_timeout`.
pub fn connect(config: &ClusterConfig, workers: usize) -> Result<Links, String> {
    config.validate()?;
    let me = config.process;
    let deadline = Instant::now() + config.connect_timeout;
    let listen = listen_address(&config.peers[me])?;
    let listener = TcpListener::bind(&listen).map_err(|e| format!("cannot listen for peers on {listen}: {e}"))?;
    listener.set_nonblocking(true).map_err(|e| e.to_string())?;
    let lost: Lost = Arc::default();
    let mut streams: Vec<Option<TcpStream>> = (0..config.processes).map(|_| None).collect();
    let mut last_error: Vec<Option<String>> = vec![None; config.processes];
    let ours = hello(me, config, workers);
    let mut next_dial = Instant::now();
    loop {
        // Dial the lower-numbered processes not connected yet (every 250 ms).
        if Instant::now() >= next_dial {
            next_dial = Instant::now() + Duration::from_millis(250);
            for peer in 0..me {
                if streams[peer].is_some() {
                    continue;
                }
                match dial(&config.peers[peer], &ours, config, workers) {
                    Ok(stream) => streams[peer] = Some(stream),
                    Err(DialError::Retry(e)) => last_error[peer] = Some(e),
                    Err(DialError::Fatal(e)) => return Err(e),
                }
            }
        }
        // Accept the higher-numbered ones.
        loop {
            match listener.accept() {
                Ok((mut stream, from)) => {
                    let who = from.to_string();
                    stream.set_nonblocking(false).map_err(|e| e.to_string())?;
                    stream.set_read_timeout(Some(Duration::from_secs(5))).map_err(|e| e.to_string())?;
                    // Both ends send their hello before reading the other's, so both can say what differs.
                    if let Err(e) = stream.write_all(&ours) {
                        tracing::warn!("ignoring a connection to the peer port from {who}: {e}");
                        continue;
                    }
                    let peer = match read_hello(&mut stream, config, workers, &who) {
                        Ok(peer) if peer > me => peer,
                        Ok(peer) => {
                            return Err(format!(
                                "{who} connected as process {peer}, which this process dials: two processes \
                                 have the same --process index"
                            ))
                        }
                        Err(e) if e.contains("no hello") || e.contains("not a treeai peer") => {
                            tracing::warn!("ignoring a connection to the peer port: {e}");
                            continue;
                        }
                        Err(e) => return Err(e),
                    };
                    stream.set_read_timeout(None).map_err(|e| e.to_string())?;
                    stream.set_nodelay(true).map_err(|e| e.to_string())?;
                    if streams[peer].replace(stream).is_some() {
                        return Err(format!("process {peer} connected twice: two processes have the same --process"));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(format!("accepting peers on {listen}: {e}")),
            }
        }
        let missing: Vec<usize> = (0..config.processes).filter(|&p| p != me && streams[p].is_none()).collect();
        if missing.is_empty() {
            break;
        }
        if Instant::now() >= deadline {
            let list = missing
                .iter()
                .map(|&p| match &last_error[p] {
                    Some(e) => format!("process {p} at {} ({e})", config.peers[p]),
                    None => format!("process {p} at {} (it did not connect)", config.peers[p]),
                })
                .collect::<Vec<_>>()
                .join(", ");
            return Err(format!(
                "cluster: not every peer was reachable within {:.0} s: {list}",
                config.connect_timeout.as_secs_f64()
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let links = streams
        .into_iter()
        .enumerate()
        .map(|(peer, s)| {
            s.map(|stream| Link { stream, peer, address: Arc::from(config.peers[peer].as_str()), lost: lost.clone() })
        })
        .collect();
    tracing::info!("cluster: process {me} of {} connected to every peer", config.processes);
    Ok(Links { links, lost })
}

enum DialError {
    Retry(String),
    Fatal(String),
}

fn dial(address: &str, ours: &[u8; 32], config: &ClusterConfig, workers: usize) -> Result<TcpStream, DialError> {
    let addrs: Vec<_> = address.to_socket_addrs().map_err(|e| DialError::Retry(e.to_string()))?.collect();
    let mut last = "no address".to_string();
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
            Ok(mut stream) => {
                let setup = (|| {
                    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
                    stream.write_all(ours)
                })();
                if let Err(e) = setup {
                    last = e.to_string();
                    continue;
                }
                let peer = match read_hello(&mut stream, config, workers, address) {
                    Ok(peer) => peer,
                    // The peer may have refused us for a reason it logs; a half-open dial is retried.
                    Err(e) if e.contains("no hello") => {
                        last = e;
                        continue;
                    }
                    Err(e) => return Err(DialError::Fatal(e)),
                };
                if peer >= config.process {
                    return Err(DialError::Fatal(format!(
                        "{address} answered as process {peer}: the peer list is not in process order"
                    )));
                }
                stream.set_read_timeout(None).map_err(|e| DialError::Retry(e.to_string()))?;
                stream.set_nodelay(true).map_err(|e| DialError::Retry(e.to_string()))?;
                return Ok(stream);
            }
            Err(e) => last = e.to_string(),
        }
    }
    Err(DialError::Retry(last))
}

/// The process index from a StatefulSet pod's host name (`treeai-2` → 2): `--process auto`.
pub fn ordinal_from_hostname(hostname: &str) -> Result<usize, String> {
    let short = hostname.split('.').next().unwrap_or(hostname);
    short.rsplit_once('-').and_then(|(_, n)| n.parse().ok()).ok_or_else(|| {
        format!("--process auto: host name {hostname:?} does not end in -N (a StatefulSet pod's ordinal)")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(process: usize, ports: &[u16]) -> ClusterConfig {
        ClusterConfig {
            processes: ports.len(),
            process,
            peers: ports.iter().map(|p| format!("127.0.0.1:{p}")).collect(),
            connect_timeout: Duration::from_secs(5),
        }
    }

    fn free_ports(n: usize) -> Vec<u16> {
        let held: Vec<_> = (0..n).map(|_| TcpListener::bind("127.0.0.1:0").unwrap()).collect();
        held.iter().map(|l| l.local_addr().unwrap().port()).collect()
    }

    #[test]
    fn three_processes_connect_and_name_their_peers() {
        let ports = free_ports(3);
        let handles: Vec<_> = (0..3)
            .map(|i| {
                let c = config(i, &ports);
                std::thread::spawn(move || {
                    connect(&c, 2).map(|l| l.links.iter().map(|x| x.is_some()).collect::<Vec<_>>())
                })
            })
            .collect();
        let got: Vec<_> = handles.into_iter().map(|h| h.join().unwrap().unwrap()).collect();
        assert_eq!(got, vec![vec![false, true, true], vec![true, false, true], vec![true, true, false]]);
    }

    #[test]
    fn a_missing_peer_is_an_error_within_the_timeout() {
        let ports = free_ports(2);
        let mut c = config(1, &ports);
        c.connect_timeout = Duration::from_millis(600);
        let started = Instant::now();
        let err = connect(&c, 1).err().unwrap();
        assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
        assert!(err.contains("process 0 at 127.0.0.1:"), "{err}");
    }

    #[test]
    fn peers_with_other_sizes_are_refused() {
        let ports = free_ports(2);
        let (a, b) = (config(0, &ports), config(1, &ports));
        let h = std::thread::spawn(move || connect(&a, 1).map(|_| ()));
        let err = connect(&b, 2).err().unwrap();
        assert!(err.contains("--workers"), "{err}");
        let err0 = h.join().unwrap().err().unwrap();
        assert!(err0.contains("--workers") || err0.contains("not every peer"), "{err0}");
    }

    #[test]
    fn configuration_errors_and_ordinals() {
        let mut c = config(0, &[1, 2, 3]);
        c.peers.pop();
        assert!(c.validate().unwrap_err().contains("2 peer addresses for 3 processes"));
        assert_eq!(listen_address("treeai-1.treeai.ns.svc:7000").unwrap(), "0.0.0.0:7000");
        assert_eq!(listen_address("127.0.0.1:7000").unwrap(), "127.0.0.1:7000");
        assert!(listen_address("nohost").is_err());
        assert_eq!(ordinal_from_hostname("treeai-12").unwrap(), 12);
        assert_eq!(ordinal_from_hostname("treeai-west-3.treeai").unwrap(), 3);
        assert!(ordinal_from_hostname("laptop").is_err());
    }
}
