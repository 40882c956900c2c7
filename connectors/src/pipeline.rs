//! The one pipeline builder: a source, the sinks and a runtime configuration
//! become a running pipeline with a handle (catalog, stats, shutdown, join).
//! `treeai run`, `treeai backfill`, the benchmarks and the tests all start the
//! pipeline here, so the catalog, the sinks and their metrics are wired in
//! one place:
//!
//! ```text
//! SourceSpec ──► workers (parse, validate, views) ──► egress ──► catalog (SQL)
//!                  │ events, dead letters                 │ score changes, alerts
//!                  ▼                                      ▼
//!             worker sinks: lake event tables,       egress sink: lake score_changes
//!             dead letters (lake, Kafka, collect)    and alerts, Kafka alerts, collect
//! ```

use crate::checkpoint::{
    restore_lake, CheckpointConfig, CheckpointMetrics, CheckpointStore, Checkpointer, RestoreFrom,
};
use crate::kafka::sink::KafkaOutput;
use crate::kafka::{KafkaConfig, KafkaStats};
use crate::lake::{Lake, LakeConfig};
use crate::parquet_out::{write_parquet, Codec};
use crate::sinks::{CollectSink, Collected, Tee};
use crate::{ConnectorError, SourceSpec};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use treeai_dataflows::checkpoint::{Captured, Cut, EgressState, WorkerState};
use treeai_dataflows::runtime::{self, Running, RuntimeConfig, Stats};
use treeai_dataflows::source::{NullSink, Sink, SinkFactory};
use treeai_dataflows::store::{Catalog, Views};
use treeai_dataflows::time::DataflowTime;
use treeai_schema::views::{deadletter_batch, view_batches};

/// Messages per worker per round for batch runs: large rounds amortise the
/// per-round work of the reductions (intermediate states of a batch run are
/// never observed, only the final views).
pub const BATCH_ROUND: usize = 262_144;

/// Messages a worker takes from Kafka per round (kafka-bench: 16,384 gave
/// 0.35-0.40 M events/s end to end on 2 cores, 131,072 gave 0.55 M).
pub const KAFKA_ROUND: usize = 131_072;

/// How long a cluster's process waits for process 0 to decide where the cluster resumes.
const AGREE_TIMEOUT: Duration = Duration::from_secs(600);

/// What process 0 of a cluster tells the others before the dataflow starts.
#[derive(serde::Serialize, serde::Deserialize)]
struct Agreement {
    /// The folder of the checkpoint every process resumes from.
    restore: Option<String>,
    /// The checkpoint the run starts from (a fresh start's first, empty, checkpoint).
    base: u64,
}

/// Assembles a pipeline.
pub struct PipelineBuilder {
    source: SourceSpec,
    runtime: RuntimeConfig,
    lake: Option<LakeConfig>,
    kafka_output: Option<KafkaConfig>,
    collect: bool,
    shutdown: Option<Arc<AtomicBool>>,
    checkpoints: Option<CheckpointConfig>,
    ingest: Option<Arc<crate::ingest::IngestLog>>,
    webhook: Option<crate::webhook::WebhookConfig>,
}

impl PipelineBuilder {
    /// A pipeline reading `source` with `runtime`'s settings, without sinks.
    pub fn new(source: SourceSpec, runtime: RuntimeConfig) -> Self {
        PipelineBuilder {
            source,
            runtime,
            lake: None,
            kafka_output: None,
            collect: false,
            shutdown: None,
            checkpoints: None,
            ingest: None,
            webhook: None,
        }
    }

    /// Posts critical and resolved alerts to a webhook (when given; see [`crate::webhook`]).
    pub fn webhook(mut self, config: Option<crate::webhook::WebhookConfig>) -> Self {
        self.webhook = config;
        self
    }

    /// Worker 0 also reads the local ingest log (`POST /v1/events` without Kafka; see
    /// [`crate::ingest`]), beside the source.
    pub fn ingest(mut self, log: Option<Arc<crate::ingest::IngestLog>>) -> Self {
        self.ingest = log;
        self
    }

    /// Takes checkpoints (and resumes from one) as `config` says (when given); the lake
    /// then publishes its files with each checkpoint (see [`crate::checkpoint`]).
    pub fn checkpoints(mut self, config: Option<CheckpointConfig>) -> Self {
        self.checkpoints = config;
        self
    }

    /// Lands events, score changes, alerts and dead letters in the lake (when given).
    pub fn lake(mut self, lake: Option<LakeConfig>) -> Self {
        self.lake = lake;
        self
    }

    /// Sends alerts and dead letters to the Kafka topics of `kafka` (when given).
    pub fn kafka_output(mut self, kafka: Option<KafkaConfig>) -> Self {
        self.kafka_output = kafka;
        self
    }

    /// Keeps dead letters and alerts in memory, for [`Pipeline::join`]'s result (batch runs, tests).
    pub fn collect(mut self) -> Self {
        self.collect = true;
        self
    }

    /// Stops the pipeline when `flag` is set (a Ctrl-C handler's flag); by default a flag of its own.
    pub fn shutdown(mut self, flag: Arc<AtomicBool>) -> Self {
        self.shutdown = Some(flag);
        self
    }

    /// Starts the workers, the egress and every sink. The catalog is sized and
    /// the sinks' counters registered here.
    pub fn start(self) -> Result<Pipeline, ConnectorError> {
        let started = Instant::now();
        let stats = Arc::new(Stats::new());
        let catalog = Arc::new(Catalog::new());
        let shutdown = self.shutdown.unwrap_or_default();
        let source_kind = match &self.source {
            SourceSpec::Files(_) => "files",
            SourceSpec::Generator { .. } => "generator",
            SourceSpec::Kafka { .. } => "kafka",
            SourceSpec::Custom(_) => "custom",
        };
        // A cluster: connect to every peer first. Process 0 decides where the cluster resumes
        // (and repairs the lake); the others wait for its decision.
        let (process, processes) = self.runtime.process();
        let local_workers = self.runtime.workers.max(1);
        let total_workers = local_workers * processes;
        let mut links = match &self.runtime.cluster {
            Some(cluster) => {
                Some(runtime::cluster::connect(cluster, local_workers).map_err(runtime::RuntimeError::Cluster)?)
            }
            None => None,
        };
        let agreed: Option<Agreement> =
            match (&mut links, process) {
                (Some(links), p) if p > 0 => {
                    let bytes = links.agree(p, &[], AGREE_TIMEOUT).map_err(runtime::RuntimeError::Cluster)?;
                    Some(serde_json::from_slice(&bytes).map_err(|e| {
                        runtime::RuntimeError::Cluster(format!("process 0's decision is unreadable: {e}"))
                    })?)
                }
                _ => None,
            };
        // The checkpoint to resume from, checked against this run.
        let checkpoint_metrics = Arc::new(CheckpointMetrics::default());
        let (checkpoint_store, loaded) = match &self.checkpoints {
            None => (None, None),
            Some(config) => {
                let store = CheckpointStore::open(&config.url, &config.options)?.inject(self.runtime.fault);
                let loaded = match (&agreed, &config.restore) {
                    (Some(agreed), _) => match &agreed.restore {
                        Some(folder) => Some(CheckpointStore::open(folder, &config.options)?.load_here()?),
                        None => None,
                    },
                    (None, RestoreFrom::Nothing) => None,
                    (None, RestoreFrom::Newest) => store.load_newest(&checkpoint_metrics.skipped)?,
                    (None, RestoreFrom::Folder(url)) => Some(CheckpointStore::open(url, &config.options)?.load_here()?),
                };
                if let Some(loaded) = &loaded {
                    let m = &loaded.manifest;
                    let incompatible = |message: String| {
                        ConnectorError::Checkpoint(crate::checkpoint::CheckpointError::Incompatible {
                            number: m.number,
                            message,
                        })
                    };
                    if m.source != source_kind {
                        return Err(incompatible(format!(
                            "it was written reading {}, this run reads {source_kind}",
                            m.source
                        )));
                    }
                    let workers = total_workers;
                    if matches!(source_kind, "files" | "generator") && m.workers != workers {
                        return Err(incompatible(format!(
                            "{} input is split by worker count: it resumes only with {} workers in all (not {workers})",
                            source_kind, m.workers
                        )));
                    }
                    if process == 0 {
                        store.drop_after(m.number)?;
                    }
                    tracing::info!(
                        "resuming from checkpoint {} ({}, {} workers, {} rows of state)",
                        m.number,
                        loaded.folder,
                        m.workers,
                        m.parts.iter().map(|p| p.rows).sum::<u64>()
                    );
                }
                (Some(store), loaded)
            }
        };
        // The checkpoint this run starts from: the restored one, or on a fresh start the first
        // checkpoint (of the empty state), numbered after every one already there.
        let base = match (&loaded, &checkpoint_store, &agreed) {
            (Some(l), _, _) => l.manifest.number,
            (None, Some(_), Some(agreed)) => agreed.base,
            (None, Some(store), None) => store.numbers()?.last().copied().unwrap_or(0) + 1,
            (None, None, _) => 0,
        };
        let mut sinks: Vec<SinkFactory> = Vec::new();
        let collected = self.collect.then(|| Arc::new(Mutex::new(Collected::default())));
        if let Some(collected) = &collected {
            sinks.push(CollectSink::factory(collected.clone()));
        }
        let lake = match self.lake {
            Some(config) => {
                let lake = match &checkpoint_store {
                    None => Lake::open(config)?,
                    Some(_) => {
                        // Files are staged and published by the checkpoints: those written from
                        // now on by the first checkpoint after `base`.
                        let lake = Lake::open_with(config, Some(base + 1))?;
                        if process == 0 {
                            restore_lake(&lake, loaded.as_ref().map(|l| &l.manifest))?;
                        }
                        lake
                    }
                };
                lake.number_files_for_process(process);
                lake.register_metrics(&stats.components);
                sinks.push(lake.sink_factory());
                Some(lake)
            }
            None => None,
        };
        let kafka_stats = match (&self.source, &self.kafka_output) {
            (SourceSpec::Kafka { stats, .. }, _) => Some(stats.clone()),
            (_, Some(_)) => Some(Arc::new(KafkaStats::default())),
            _ => None,
        };
        if let Some(kafka_stats) = &kafka_stats {
            KafkaStats::register_metrics(kafka_stats, &stats.components);
        }
        let kafka_output = match (&self.kafka_output, &kafka_stats) {
            (Some(config), Some(kafka_stats)) => {
                let output = KafkaOutput::new(config, kafka_stats.clone())?;
                if let Some(loaded) = &loaded {
                    // What the crashed run wrote after the checkpoint is not sent again.
                    let offsets = loaded.sink_offsets();
                    let found = output.suppress_written(&offsets, process == 0)?;
                    if process == 0 {
                        let seqs: Vec<(String, u32)> =
                            loaded.egress.alert_seqs.iter().map(|(tree, n)| (tree.to_string(), *n)).collect();
                        output.reconcile_with(&seqs, stats.clone(), catalog.clone());
                    }
                    tracing::info!(
                        "kafka: {found} alerts and dead letters written after checkpoint {}",
                        loaded.manifest.number
                    );
                }
                sinks.push(output.sink_factory());
                Some(output)
            }
            _ => None,
        };
        // The webhook: alerts of process 0's egress (the only one that derives alerts).
        let webhook = match self.webhook.clone() {
            Some(config) if process == 0 => {
                let webhook = crate::webhook::Webhook::start(config)?;
                webhook.register_metrics(&stats.components);
                sinks.push(webhook.sink_factory());
                Some(webhook)
            }
            _ => None,
        };
        let sinks: SinkFactory = match sinks.len() {
            0 => Arc::new(|_| Box::new(NullSink) as Box<dyn Sink>),
            1 => sinks.remove(0),
            _ => Tee::factory(sinks),
        };
        let mut loaded_folder = None;
        let checkpointer = match (checkpoint_store, &self.checkpoints) {
            (Some(store), Some(config)) => {
                if loaded.is_none() && process == 0 {
                    // A fresh start writes a first checkpoint of the empty state before reading
                    // anything: a crash before the first interval resumes from it, and it records
                    // where the output topics ended before this run wrote to them (so what the
                    // crashed run wrote is not sent again).
                    let number = base;
                    let workers = total_workers;
                    let cut = Cut {
                        number,
                        time: DataflowTime(0),
                        watermark: None,
                        workers: (0..workers)
                            .map(|worker| {
                                Captured::complete(WorkerState { worker, peers: workers, ..Default::default() })
                            })
                            .collect(),
                        egress: EgressState {
                            alert_seqs: Vec::new(),
                            sink_offsets: kafka_output.as_ref().map(|o| o.end_offsets()).unwrap_or_default(),
                        },
                        started: Instant::now(),
                    };
                    store.write(number, cut, source_kind, Vec::new())?;
                }
                loaded_folder = loaded.as_ref().map(|l| l.folder.clone());
                let restore = loaded.map(|l| l.restore());
                if restore.is_some() {
                    stats.catching_up.store(self.runtime.workers.max(1), Ordering::SeqCst);
                }
                let checkpointer = Checkpointer::start(
                    config,
                    store,
                    restore,
                    crate::checkpoint::CommitTargets {
                        lake: lake.clone(),
                        outputs: {
                            let (kafka, hook) = (kafka_output.clone(), webhook.clone());
                            (kafka.is_some() || hook.is_some()).then(|| {
                                Box::new(move || {
                                    if let Some(o) = &kafka {
                                        o.flush_for_checkpoint(Duration::from_secs(30))?;
                                    }
                                    if let Some(w) = &hook {
                                        w.flush_for_checkpoint(Duration::from_secs(120))?;
                                    }
                                    Ok(())
                                }) as crate::checkpoint::OutputsFlush
                            })
                        },
                    },
                    source_kind,
                    checkpoint_metrics.clone(),
                    shutdown.clone(),
                    self.runtime.cluster.as_ref().map(|c| (c.process, c.processes, local_workers)),
                );
                checkpointer.register_metrics(&stats.components);
                Some(checkpointer)
            }
            _ => None,
        };
        if let (Some(links), 0) = (&mut links, process) {
            // The lake is repaired and the first checkpoint written: tell the others where to resume.
            let decision = Agreement { restore: loaded_folder, base };
            let bytes = serde_json::to_vec(&decision).map_err(|e| ConnectorError::Output(e.to_string()))?;
            links.agree(0, &bytes, AGREE_TIMEOUT).map_err(runtime::RuntimeError::Cluster)?;
        }
        let running = runtime::start(
            self.runtime,
            match self.ingest {
                Some(log) => self.source.factory_with_ingest(log),
                None => self.source.factory(),
            },
            sinks,
            catalog.clone(),
            stats.clone(),
            shutdown.clone(),
            checkpointer.as_ref().map(|c| c.hub.clone()),
            links,
        )?;
        if checkpointer.as_ref().is_some_and(|c| c.hub.restore().is_some()) {
            // treeai_restore_seconds: from the start to the restored views published and caught up.
            let (catalog, stats, metrics) = (catalog.clone(), stats.clone(), checkpoint_metrics.clone());
            let _ = std::thread::Builder::new().name("treeai-restore-watch".into()).spawn(move || {
                let done =
                    || stats.stopped.load(Ordering::SeqCst) || (stats.restored() && catalog.snapshot().is_ready());
                while !done() {
                    std::thread::sleep(Duration::from_millis(20));
                }
                metrics.restored(started.elapsed());
                tracing::info!("restored and caught up in {:.2} s", started.elapsed().as_secs_f64());
            });
        }
        Ok(Pipeline {
            catalog,
            stats,
            shutdown,
            running,
            finished: Arc::new(AtomicBool::new(false)),
            checkpointer,
            lake,
            kafka_output,
            kafka_stats,
            collected,
            webhook,
        })
    }
}

/// A running pipeline.
pub struct Pipeline {
    catalog: Arc<Catalog>,
    stats: Arc<Stats>,
    shutdown: Arc<AtomicBool>,
    running: Running,
    finished: Arc<AtomicBool>,
    checkpointer: Option<Checkpointer>,
    lake: Option<Arc<Lake>>,
    kafka_output: Option<KafkaOutput>,
    kafka_stats: Option<Arc<KafkaStats>>,
    collected: Option<Arc<Mutex<Collected>>>,
    webhook: Option<crate::webhook::Webhook>,
}

/// What a pipeline leaves when it has stopped.
pub struct Finished {
    /// The final views.
    pub views: Views,
    /// The final watermark.
    pub watermark: Option<i64>,
    /// Dead letters and alerts, if the pipeline was built with [`PipelineBuilder::collect`].
    pub collected: Collected,
    /// Counters.
    pub stats: Arc<Stats>,
}

impl Pipeline {
    /// The live views.
    pub fn catalog(&self) -> &Arc<Catalog> {
        &self.catalog
    }

    /// The counters (also every component's, in `stats.components`).
    pub fn stats(&self) -> &Arc<Stats> {
        &self.stats
    }

    /// The Kafka clients' counters, with a Kafka source or output.
    pub fn kafka_stats(&self) -> Option<&Arc<KafkaStats>> {
        self.kafka_stats.as_ref()
    }

    /// Set once the dataflow has stopped (its input ended, or it was stopped).
    pub fn finished_flag(&self) -> &Arc<AtomicBool> {
        &self.finished
    }

    /// Ready to serve: the views have a watermark, or the input is finished; after a
    /// restore, once every worker has caught up with its source.
    pub fn is_ready(&self) -> bool {
        self.stats.restored() && self.catalog.snapshot().is_ready()
    }

    /// The checkpoint coordinator, when checkpoints are on (`POST /v1/admin/checkpoint`).
    pub fn checkpoints(&self) -> Option<Arc<treeai_dataflows::checkpoint::Checkpoints>> {
        self.checkpointer.as_ref().map(|c| c.hub.clone())
    }

    /// Asks the pipeline to stop.
    pub fn stop(&self) {
        self.shutdown.store(true, Ordering::SeqCst);
    }

    /// Waits for the dataflow to end (bounded input done, or stopped), then
    /// for the lake's files and Kafka's deliveries.
    pub fn join(self) -> Result<Finished, ConnectorError> {
        let result = self.running.join();
        self.finished.store(true, Ordering::SeqCst);
        if let Some(lake) = &self.lake {
            lake.wait();
        }
        if let Some(output) = &self.kafka_output {
            output.flush(Duration::from_secs(10));
        }
        // The webhook: on a stop it gets a few seconds for its queue (what is left is
        // dead-lettered), so the stop keeps its deadline; at the end of a bounded input the final
        // checkpoint waits for its deliveries, retries included.
        let stopped = self.shutdown.load(Ordering::SeqCst);
        if let (Some(webhook), true) = (&self.webhook, stopped) {
            webhook.close(Duration::from_secs(5));
        }
        let checkpointed = match self.checkpointer {
            Some(c) => c.finish(Duration::from_secs(600)),
            None => Ok(()),
        };
        if let Some(webhook) = &self.webhook {
            webhook.close(Duration::from_secs(if stopped { 5 } else { 300 }));
        }
        result?;
        checkpointed.map_err(|e| ConnectorError::Output(format!("final checkpoint: {e}")))?;
        let snapshot = self.catalog.snapshot();
        let collected = match &self.collected {
            Some(c) => std::mem::take(&mut *c.lock().unwrap_or_else(|p| p.into_inner())),
            None => Collected::default(),
        };
        Ok(Finished { views: snapshot.views.clone(), watermark: snapshot.watermark, collected, stats: self.stats })
    }
}

/// Runs the dataflow over a bounded source to its end, collecting dead letters and alerts.
pub fn run_bounded(source: SourceSpec, config: RuntimeConfig) -> Result<Finished, ConnectorError> {
    run_bounded_to_lake(source, config, None)
}

/// As [`run_bounded`], also landing every event, score change, alert and dead
/// letter in the lake at `lake` (when given); returns once all files are written.
pub fn run_bounded_to_lake(
    source: SourceSpec,
    config: RuntimeConfig,
    lake: Option<LakeConfig>,
) -> Result<Finished, ConnectorError> {
    PipelineBuilder::new(source, config).lake(lake).collect().start()?.join()
}

/// Writes every view to `dir/<view>/part-00000.parquet` and the dead letters to
/// `dir/deadletter/part-00000.parquet`; returns the rows written per view.
pub fn write_views(dir: &Path, result: &Finished, codec: Codec) -> Result<Vec<(&'static str, usize)>, ConnectorError> {
    let mut rows = Vec::new();
    for (name, batch) in view_batches(&result.views, result.watermark) {
        write_parquet(&dir.join(name).join("part-00000.parquet"), &batch, codec)?;
        rows.push((name, batch.num_rows()));
    }
    let mut letters = result.collected.dead_letters.clone();
    letters.sort_by(|a, b| (&a.source, a.pos).cmp(&(&b.source, b.pos)));
    let batch = deadletter_batch(&letters);
    write_parquet(&dir.join("deadletter").join("part-00000.parquet"), &batch, codec)?;
    rows.push(("deadletter", batch.num_rows()));
    Ok(rows)
}
