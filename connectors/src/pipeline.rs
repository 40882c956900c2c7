//! Batch runs of the pipeline: the same dataflow as `treeai run`, over a
//! bounded input, to its end (`treeai backfill`, tests, benchmarks).

use crate::arrow_views::{deadletter_batch, view_batches, write_parquet, Codec};
use crate::lake::{Lake, LakeConfig};
use crate::sinks::{CollectSink, Collected, Tee};
use crate::{ConnectorError, SourceSpec};
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use treeai_dataflows::runtime::{self, RuntimeConfig, Stats};
use treeai_dataflows::store::{Catalog, Views};

/// Messages per worker per round for batch runs: large rounds amortise the
/// per-round work of the reductions (intermediate states of a batch run are
/// never observed, only the final views).
pub const BATCH_ROUND: usize = 262_144;

/// The result of a bounded run.
pub struct BatchResult {
    /// The final views.
    pub views: Views,
    /// The final watermark.
    pub watermark: Option<i64>,
    /// Dead letters and alerts.
    pub collected: Collected,
    /// Counters.
    pub stats: Arc<Stats>,
}

/// Runs the dataflow over a bounded source to its end.
pub fn run_bounded(source: SourceSpec, config: RuntimeConfig) -> Result<BatchResult, ConnectorError> {
    run_bounded_to_lake(source, config, None)
}

/// As [`run_bounded`], also landing every event, score change, alert and dead
/// letter in the lake at `lake` (when given); returns once all files are written.
pub fn run_bounded_to_lake(
    source: SourceSpec,
    config: RuntimeConfig,
    lake: Option<LakeConfig>,
) -> Result<BatchResult, ConnectorError> {
    let lake = lake.map(Lake::open).transpose()?;
    let catalog = Arc::new(Catalog::new(config.workers.max(1)));
    let stats = Arc::new(Stats::new());
    let collected = Arc::new(Mutex::new(Collected::default()));
    runtime::run(
        config,
        source.factory(),
        match &lake {
            Some(lake) => Tee::factory(vec![CollectSink::factory(collected.clone()), lake.sink_factory()]),
            None => CollectSink::factory(collected.clone()),
        },
        catalog.clone(),
        stats.clone(),
        Arc::new(AtomicBool::new(false)),
    )
    .map_err(|e| ConnectorError::Input(e.to_string()))?;
    if let Some(lake) = &lake {
        lake.wait();
    }
    let snapshot = catalog.snapshot();
    let collected = std::mem::take(&mut *collected.lock().unwrap_or_else(|p| p.into_inner()));
    Ok(BatchResult { views: snapshot.views.clone(), watermark: snapshot.watermark, collected, stats })
}

/// Writes every view to `dir/<view>/part-00000.parquet` and the dead letters to
/// `dir/deadletter/part-00000.parquet`; returns the rows written per view.
pub fn write_views(
    dir: &Path,
    result: &BatchResult,
    codec: Codec,
) -> Result<Vec<(&'static str, usize)>, ConnectorError> {
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
