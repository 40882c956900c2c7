//! Cluster flags of `treeai run` (INTERFACES.md: `--processes`, `--process I|auto`,
//! `--peers H:P,...`, `--peers-file F`; OPERATIONS.md "Cluster").

use crate::config::ClusterFile;
use anyhow::{bail, Context};
use clap::Args;
use std::path::PathBuf;
use std::time::Duration;
use treeai_dataflows::runtime::cluster::{ordinal_from_hostname, ClusterConfig};

#[derive(Args, Debug, Default)]
pub struct ClusterArgs {
    /// Processes in the cluster, each running `--workers` workers [default: 1]. Every process
    /// is started with the same --processes, --workers, peers, source, lake and checkpoint URL.
    #[arg(long, env = "TREEAI_PROCESSES")]
    pub processes: Option<usize>,
    /// This process's index, 0 to P-1, or `auto`: the ordinal at the end of the host name, as
    /// a Kubernetes StatefulSet pod has it (`treeai-2` → 2) [default: 0].
    #[arg(long, env = "TREEAI_PROCESS")]
    pub process: Option<String>,
    /// The peer address host:port of every process, in process order (timely's links between
    /// the processes). One entry holding `{i}` stands for all P: `treeai-{i}.treeai-peers:7000`.
    #[arg(long, env = "TREEAI_PEERS", value_delimiter = ',')]
    pub peers: Vec<String>,
    /// A file with one peer address per line, in process order (instead of --peers).
    #[arg(long, env = "TREEAI_PEERS_FILE", conflicts_with = "peers")]
    pub peers_file: Option<PathBuf>,
    /// How long a process waits at start-up for every peer to connect, ms [default: 60000].
    #[arg(long, env = "TREEAI_PEER_TIMEOUT_MS")]
    pub peer_timeout_ms: Option<u64>,
}

impl ClusterArgs {
    /// The cluster configuration (flags/env over the file); `None` for a single process.
    pub fn config(&self, file: &ClusterFile) -> anyhow::Result<Option<ClusterConfig>> {
        let processes = self.processes.or(file.processes).unwrap_or(1);
        if processes == 0 {
            bail!("--processes must be at least 1");
        }
        let process = match self.process.clone().or(file.process.clone()) {
            None => 0,
            Some(p) if p == "auto" => {
                let host = std::env::var("HOSTNAME")
                    .ok()
                    .filter(|h| !h.is_empty())
                    .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
                    .unwrap_or_default();
                ordinal_from_hostname(host.trim()).map_err(|e| anyhow::anyhow!(e))?
            }
            Some(p) => p.parse().with_context(|| format!("--process {p:?}: expected a number or `auto`"))?,
        };
        if processes == 1 {
            if process != 0 {
                bail!("--process {process} needs --processes greater than {process}");
            }
            return Ok(None);
        }
        let listed = if !self.peers.is_empty() { self.peers.clone() } else { file.peers.clone().unwrap_or_default() };
        let peers_file = self.peers_file.clone().or(file.peers_file.clone());
        let mut peers: Vec<String> = match (listed.is_empty(), peers_file) {
            (false, _) => listed,
            (true, Some(path)) => std::fs::read_to_string(&path)
                .with_context(|| format!("--peers-file {}", path.display()))?
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(String::from)
                .collect(),
            (true, None) => bail!("--processes {processes} needs the peers' addresses: --peers or --peers-file"),
        };
        if peers.len() == 1 && peers[0].contains("{i}") {
            let pattern = peers.remove(0);
            peers = (0..processes).map(|i| pattern.replace("{i}", &i.to_string())).collect();
        }
        let config = ClusterConfig {
            processes,
            process,
            peers,
            connect_timeout: Duration::from_millis(self.peer_timeout_ms.or(file.peer_timeout_ms).unwrap_or(60_000)),
        };
        config.validate().map_err(|e| anyhow::anyhow!(e))?;
        Ok(Some(config))
    }
}
