//! TreeAI connectors: sources (NDJSON files, the generator, Kafka) and sinks
//! (the Parquet lake, Kafka alerts and dead letters, Parquet output of views). Every source is registered in
//! [`SourceSpec`], the one place that turns a configuration into per-worker
//! sources.

pub mod checkpoint;
pub mod file;
pub mod generated;
pub mod generator;
pub mod ingest;
pub mod kafka;
pub mod lake;
pub mod parquet_out;
pub mod pipeline;
pub mod sinks;
pub mod webhook;

use std::path::PathBuf;
use std::sync::Arc;
use treeai_dataflows::source::{Fault, Source, SourceError, SourceFactory};

/// Errors of the connectors, by whose fault they are.
#[derive(Debug, thiserror::Error)]
pub enum ConnectorError {
    /// The user's input cannot be read (missing file, bad path).
    #[error("input: {0}")]
    Input(String),
    /// Output cannot be written (disk full, permissions).
    #[error("output: {0}")]
    Output(String),
    /// The lake's object store cannot be opened (its URL or options).
    #[error(transparent)]
    Store(#[from] treeai_schema::SchemaError),
    /// The dataflow could not start or failed.
    #[error(transparent)]
    Runtime(#[from] treeai_dataflows::runtime::RuntimeError),
    /// A Kafka client could not be created or a request failed.
    #[error(transparent)]
    Kafka(#[from] kafka::KafkaClientError),
    /// Checkpoints could not be read, written or resumed.
    #[error(transparent)]
    Checkpoint(checkpoint::CheckpointError),
}

impl ConnectorError {
    /// Whose fault the error is.
    pub fn fault(&self) -> Fault {
        match self {
            ConnectorError::Input(_) | ConnectorError::Store(_) => Fault::User,
            ConnectorError::Output(_) => Fault::Environment,
            ConnectorError::Runtime(e) => e.fault(),
            ConnectorError::Kafka(e) => e.fault(),
            ConnectorError::Checkpoint(e) => e.fault(),
        }
    }

    /// Whether trying again later may succeed.
    pub fn retryable(&self) -> bool {
        self.fault() == Fault::Environment
    }
}

/// Every source the pipeline can read, as configured by the user.
#[derive(Clone)]
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
        /// Paced: event time runs this many times faster than the wall clock (`--speedup`);
        /// events are produced at `config.rate × speedup` per wall-clock second.
        speedup: f64,
    },
    /// The three input topics of a Kafka cluster, an unbounded input.
    Kafka {
        /// Brokers, topics, librdkafka properties.
        config: kafka::KafkaConfig,
        /// Error counters of the consumers.
        stats: Arc<kafka::KafkaStats>,
    },
    /// Any other source (tests, benchmarks): its per-worker factory.
    Custom(SourceFactory),
}

impl std::fmt::Debug for SourceSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SourceSpec::Files(paths) => f.debug_tuple("Files").field(paths).finish(),
            SourceSpec::Generator { config, paced, count, speedup } => f
                .debug_struct("Generator")
                .field("config", config)
                .field("paced", paced)
                .field("count", count)
                .field("speedup", speedup)
                .finish(),
            SourceSpec::Kafka { config, .. } => f.debug_struct("Kafka").field("config", config).finish(),
            SourceSpec::Custom(_) => f.write_str("Custom"),
        }
    }
}

impl SourceSpec {
    /// The per-worker source factory for the runtime.
    pub fn factory(self) -> SourceFactory {
        if let SourceSpec::Custom(factory) = self {
            return factory;
        }
        Arc::new(move |worker, peers| -> Result<Box<dyn Source>, SourceError> {
            match &self {
                SourceSpec::Files(paths) => {
                    file::FileSource::new(paths.clone(), worker, peers).map(|s| Box::new(s) as Box<dyn Source>)
                }
                SourceSpec::Generator { config, paced, count, speedup } => Ok(Box::new(
                    generated::GeneratorSource::new(config.clone(), worker, peers, *paced, *count)
                        .with_speedup(*speedup),
                )),
                SourceSpec::Kafka { config, stats } => {
                    kafka::source::KafkaSource::new(config, stats.clone(), worker, peers)
                        .map(|s| Box::new(s) as Box<dyn Source>)
                }
                SourceSpec::Custom(factory) => factory(worker, peers),
            }
        })
    }
}

impl SourceSpec {
    /// As [`SourceSpec::factory`], worker 0 also reading the ingest log `log`.
    pub fn factory_with_ingest(self, log: Arc<ingest::IngestLog>) -> SourceFactory {
        let main = self.factory();
        Arc::new(move |worker, peers| -> Result<Box<dyn Source>, SourceError> {
            let source = main(worker, peers)?;
            if worker == 0 {
                Ok(Box::new(ingest::Merged::new(source, Box::new(ingest::IngestTail::new(log.clone())))))
            } else {
                Ok(source)
            }
        })
    }
}

/// The seek contract (`treeai_dataflows::source`), checked for any source.
#[cfg(test)]
pub(crate) mod seek_contract {
    use treeai_dataflows::source::{Poll, Source};

    /// `(source, offset, bytes)` of every message.
    pub type Messages = Vec<(u32, u64, Vec<u8>)>;

    /// Polls `source` in rounds of `round` until it has emitted `limit` messages or is done.
    pub fn read(source: &mut dyn Source, round: usize, limit: usize) -> Messages {
        let mut out = Vec::new();
        while out.len() < limit {
            let want = round.min(limit - out.len());
            let status = source.poll(want, &mut |m| out.push((m.pos.source, m.pos.offset, m.bytes.to_vec())));
            if status == Poll::Done {
                break;
            }
        }
        out
    }

    /// For every worker of `peers`: read `cut` messages (any worker may read
    /// fewer), record every worker's positions, then start fresh sources, seek
    /// them to the union of the positions and read on: each worker emits
    /// exactly what it would have emitted after the cut without the restart.
    pub fn check(make: &dyn Fn(usize, usize) -> Box<dyn Source>, peers: usize, cut: usize, total: usize) {
        let mut expected_rest = Vec::new();
        let mut positions = Vec::new();
        for w in 0..peers {
            let mut whole = make(w, peers);
            let all = read(whole.as_mut(), 7, total);
            let mut first = make(w, peers);
            let head = read(first.as_mut(), 5, cut);
            assert_eq!(head[..], all[..head.len()], "worker {w}: the first {cut} messages");
            positions.extend(first.positions());
            expected_rest.push(all[head.len()..].to_vec());
        }
        for (w, expected) in expected_rest.into_iter().enumerate() {
            let mut resumed = make(w, peers);
            resumed.seek(&positions).expect("seek");
            let rest = read(resumed.as_mut(), 3, total);
            assert_eq!(rest.len(), expected.len(), "worker {w} of {peers}: messages after the cut at {cut}");
            assert!(rest == expected, "worker {w} of {peers}: the stream after the cut at {cut} differs");
        }
    }
}
