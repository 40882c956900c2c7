//! The configuration file (`--config treeai.toml`) — these structs are its documentation.
//!
//! Precedence, lowest first: built-in defaults < the config file < `TREEAI_*`
//! environment variables < command-line flags. Unknown keys are an error.
//!
//! ```toml
//! workers = 2                 # timely worker threads (default: number of cores)
//! input = ["events.ndjson"]   # NDJSON files; absent = the built-in generator
//! allowed_lateness_ms = 5000  # DOMAIN §3
//! idle_timeout_ms = 30000     # DOMAIN §3
//!
//! [generator]                 # the embedded default source
//! trees = 10000
//! agents = 30
//! rate = 10000                # events per second
//! season = "moderate"         # peak | moderate | low | emergency
//! bad_fraction = 0.001
//! seed = 1
//! ```

use anyhow::Context;
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// The whole file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Timely worker threads in this process (flag `--workers`, env `TREEAI_WORKERS`).
    pub workers: Option<usize>,
    /// NDJSON input files (flag `--input`); absent: the built-in generator.
    pub input: Option<Vec<PathBuf>>,
    /// Allowed lateness of readings in ms (flag `--allowed-lateness-ms`); default 5000.
    pub allowed_lateness_ms: Option<i64>,
    /// A partition with no readings for this long is idle, ms (flag `--idle-timeout-ms`); default 30000.
    pub idle_timeout_ms: Option<u64>,
    /// The built-in generator, used when there is no input.
    #[serde(default)]
    pub generator: GeneratorFile,
}

/// `[generator]`: the embedded default source of `treeai run`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GeneratorFile {
    /// Trees (default 10,000).
    pub trees: Option<u64>,
    /// Field agents at normal capacity (default 30).
    pub agents: Option<u32>,
    /// Events per second, held in wall-clock time (default 10,000).
    pub rate: Option<f64>,
    /// `peak`, `moderate`, `low` or `emergency` (default `moderate`).
    pub season: Option<String>,
    /// Share of malformed events (default 0.001 for `run`).
    pub bad_fraction: Option<f64>,
    /// Random seed (default 1).
    pub seed: Option<u64>,
}

impl FileConfig {
    /// Reads `path`, or the defaults when there is none.
    pub fn load(path: Option<&Path>) -> anyhow::Result<Self> {
        let Some(path) = path else {
            return Ok(FileConfig::default());
        };
        let text = std::fs::read_to_string(path).with_context(|| format!("reading config {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("config {}", path.display()))
    }
}
