//! TreeAI connectors: sources (NDJSON files, the generator, Kafka) and sinks
//! (the Parquet lake, Kafka alerts and dead letters, Parquet output of views). Every source is registered in
//! [`SourceSpec`], the one place that turns a configuration into per-worker
//! sources.

pub mod arrow_views;
pub mod file;
pub mod generated;
pub mod generator;
pub mod kafka;
pub mod lake;
pub mod pipeline;
pub mod sinks;

use std::path::PathBuf;
use std::sync::Arc;
use treeai_dataflows::source::{Source, SourceFactory};

/// Errors of the connectors, by whose fault they are.
#[derive(Debug, thiserror::Error)]
pub enum ConnectorError {
    /// The user's input cannot be read (missing file, bad path).
    #[error("input: {0}")]
    Input(String),
    /// Output cannot be written (disk full, permissions).
    #[error("output: {0}")]
    Output(String),
}

/// Every source the pipeline can read, as configured by the user.
#[derive(Clone, Debug)]
pub enum SourceSpec {
    /// NDJSON files, a bounded input.
    Files(Vec<PathBuf>),
    /// The built-in generator.
    Generator {
        /// Its settings.
        config: generator::GeneratorConfig,
        /// Hold `config.rate` in wall-clock time (else as fast as possible).
        paced: bool,
        /// Stop after this many events (a bounded input); `None` = forever.
        count: Option<u64>,
    },
    /// The three input topics of a Kafka cluster, an unbounded input.
    Kafka {
        /// Brokers, topics, librdkafka properties.
        config: kafka::KafkaConfig,
        /// Error counters of the consumers.
        stats: Arc<kafka::KafkaStats>,
    },
}

impl SourceSpec {
    /// The per-worker source factory for the runtime.
    pub fn factory(self) -> SourceFactory {
        Arc::new(move |worker, peers| -> Result<Box<dyn Source>, String> {
            match &self {
                SourceSpec::Files(paths) => file::FileSource::new(paths.clone(), worker, peers)
                    .map(|s| Box::new(s) as Box<dyn Source>)
                    .map_err(|e| e.to_string()),
                SourceSpec::Generator { config, paced, count } => {
                    Ok(Box::new(generated::GeneratorSource::new(config.clone(), worker, peers, *paced, *count)))
                }
                SourceSpec::Kafka { config, stats } => {
                    kafka::source::KafkaSource::new(config, stats.clone(), worker, peers)
                        .map(|s| Box::new(s) as Box<dyn Source>)
                }
            }
        })
    }
}
