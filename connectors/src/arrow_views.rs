//! The views and dead letters as Arrow record batches, and Parquet writing.
//!
//! Column names are exactly those of DOMAIN §4. Types: ids and enums are
//! strings; counts `Int64`; measures `Float64`; timestamps
//! `Timestamp(ms, "UTC")`; `agent_activity.day` a `Date32`. Rows are sorted by
//! the view's key, so equal views give identical files.

use crate::ConnectorError;
use arrow::array::{
    ArrayRef, BinaryArray, Date32Array, Float64Array, Int64Array, StringArray, TimestampMillisecondArray,
};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use arrow::record_batch::RecordBatch;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use std::path::Path;
use std::sync::Arc;
use treeai_dataflows::source::DeadLetter;
use treeai_dataflows::store::Views;

fn ts_type() -> DataType {
    DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()))
}

fn strings<'a>(v: impl IntoIterator<Item = Option<&'a str>>) -> ArrayRef {
    Arc::new(StringArray::from_iter(v))
}
fn floats(v: impl IntoIterator<Item = Option<f64>>) -> ArrayRef {
    Arc::new(Float64Array::from_iter(v))
}
fn ints(v: impl IntoIterator<Item = i64>) -> ArrayRef {
    Arc::new(Int64Array::from_iter_values(v))
}
fn times(v: impl IntoIterator<Item = Option<i64>>) -> ArrayRef {
    Arc::new(TimestampMillisecondArray::from_iter(v).with_timezone("UTC"))
}

fn batch(fields: Vec<(&str, DataType, bool)>, columns: Vec<ArrayRef>) -> RecordBatch {
    let schema = Schema::new(fields.into_iter().map(|(n, t, null)| Field::new(n, t, null)).collect::<Vec<_>>());
    RecordBatch::try_new(Arc::new(schema), columns).expect("columns match the schema by construction")
}

use DataType::{Float64 as F, Int64 as I, Utf8 as S};

/// All six views as record batches, in [`treeai_dataflows::VIEW_NAMES`] order.
/// `watermark` fills `sensor_windows.window_end`.
pub fn view_batches(views: &Views, watermark: Option<i64>) -> Vec<(&'static str, RecordBatch)> {
    let mut trees: Vec<_> = views.trees.iter().collect();
    trees.sort_by(|a, b| a.0.cmp(b.0));
    let trees = batch(
        vec![
            ("tree_id", S, false),
            ("region", S, true),
            ("species", S, true),
            ("lat", F, false),
            ("lon", F, false),
            ("dbh_cm", F, true),
            ("height_m", F, true),
            ("target_occupancy", S, true),
            ("baseline_tilt_deg", F, false),
            ("baseline_sway_hz", F, true),
            ("updated_at", ts_type(), false),
        ],
        vec![
            strings(trees.iter().map(|(k, _)| Some(k.as_str()))),
            strings(trees.iter().map(|(_, t)| t.region.map(|r| r.as_str()))),
            strings(trees.iter().map(|(_, t)| t.species.as_deref())),
            floats(trees.iter().map(|(_, t)| Some(t.lat.0))),
            floats(trees.iter().map(|(_, t)| Some(t.lon.0))),
            floats(trees.iter().map(|(_, t)| t.dbh_cm.map(|x| x.0))),
            floats(trees.iter().map(|(_, t)| t.height_m.map(|x| x.0))),
            strings(trees.iter().map(|(_, t)| t.target_occupancy.map(|o| o.as_str()))),
            floats(trees.iter().map(|(_, t)| Some(t.baseline_tilt_deg.0))),
            floats(trees.iter().map(|(_, t)| t.baseline_sway_hz.map(|x| x.0))),
            times(trees.iter().map(|(_, t)| Some(t.updated_at))),
        ],
    );

    let mut afiss: Vec<_> = views.afiss_current.iter().collect();
    afiss.sort_by(|a, b| a.0.cmp(b.0));
    let a = |f: fn(&treeai_dataflows::views::AfissRow) -> i64| ints(afiss.iter().map(move |(_, r)| f(r)));
    let afiss_batch = batch(
        vec![
            ("tree_id", S, false),
            ("assessment_id", S, false),
            ("revision", I, false),
            ("agent_id", S, false),
            ("observed_at", ts_type(), false),
            ("likelihood_of_failure", S, false),
            ("likelihood_of_impact", S, false),
            ("consequences", S, false),
            ("failure_impact", S, false),
            ("risk_rating", S, false),
            ("defect_count", I, false),
            ("defect_severity_sum", I, false),
            ("max_defect_severity", I, false),
            ("crown_dieback_pct", F, false),
            ("assessments_total", I, false),
        ],
        vec![
            strings(afiss.iter().map(|(k, _)| Some(k.as_str()))),
            strings(afiss.iter().map(|(_, r)| Some(r.assessment.assessment_id.as_str()))),
            a(|r| i64::from(r.assessment.revision)),
            strings(afiss.iter().map(|(_, r)| Some(r.assessment.agent_id.as_str()))),
            times(afiss.iter().map(|(_, r)| Some(r.assessment.observed_at))),
            strings(afiss.iter().map(|(_, r)| Some(r.assessment.likelihood_of_failure.as_str()))),
            strings(afiss.iter().map(|(_, r)| Some(r.assessment.likelihood_of_impact.as_str()))),
            strings(afiss.iter().map(|(_, r)| Some(r.assessment.consequences.as_str()))),
            strings(afiss.iter().map(|(_, r)| Some(r.failure_impact.as_str()))),
            strings(afiss.iter().map(|(_, r)| Some(r.risk_rating.as_str()))),
            a(|r| i64::from(r.assessment.defect_count)),
            a(|r| i64::from(r.assessment.defect_severity_sum)),
            a(|r| i64::from(r.assessment.max_defect_severity)),
            floats(afiss.iter().map(|(_, r)| Some(r.assessment.crown_dieback_pct.0))),
            a(|r| i64::from(r.assessments_total)),
        ],
    );

    let mut windows: Vec<_> = views.sensor_windows.iter().collect();
    windows.sort_by(|a, b| a.0.cmp(b.0));
    let windows_batch = batch(
        vec![
            ("tree_id", S, false),
            ("window_end", ts_type(), true),
            ("tilt_max", F, true),
            ("sway_min", F, true),
            ("gust_max", F, true),
            ("soil_mean", F, true),
            ("readings", I, false),
        ],
        vec![
            strings(windows.iter().map(|(k, _)| Some(k.as_str()))),
            times(windows.iter().map(|_| watermark)),
            floats(windows.iter().map(|(_, w)| w.tilt_max.map(|x| x.0))),
            floats(windows.iter().map(|(_, w)| w.sway_min.map(|x| x.0))),
            floats(windows.iter().map(|(_, w)| w.gust_max.map(|x| x.0))),
            floats(windows.iter().map(|(_, w)| w.soil_mean.map(|x| x.0))),
            ints(windows.iter().map(|(_, w)| w.readings as i64)),
        ],
    );

    let mut scores: Vec<_> = views.tree_scores.iter().collect();
    scores.sort_by(|a, b| a.0.cmp(b.0));
    let s = |f: fn(&treeai_dataflows::rating::Score) -> f64| floats(scores.iter().map(move |(_, r)| Some(f(&r.score))));
    let scores_batch = batch(
        vec![
            ("tree_id", S, false),
            ("region", S, false),
            ("score", F, false),
            ("band", S, false),
            ("risk_rating", S, false),
            ("base", F, false),
            ("defect_penalty", F, false),
            ("dieback_penalty", F, false),
            ("tilt_penalty", F, false),
            ("sway_penalty", F, false),
            ("storm_penalty", F, false),
        ],
        vec![
            strings(scores.iter().map(|(k, _)| Some(k.as_str()))),
            strings(scores.iter().map(|(_, r)| Some(r.region.as_str()))),
            s(|x| x.score.0),
            strings(scores.iter().map(|(_, r)| Some(r.score.band.as_str()))),
            strings(scores.iter().map(|(_, r)| Some(r.score.risk_rating_str()))),
            s(|x| x.base.0),
            s(|x| x.defect_penalty.0),
            s(|x| x.dieback_penalty.0),
            s(|x| x.tilt_penalty.0),
            s(|x| x.sway_penalty.0),
            s(|x| x.storm_penalty.0),
        ],
    );

    let mut regions: Vec<_> = views.region_summary.iter().collect();
    regions.sort_by_key(|(r, _)| r.as_str());
    let r = |f: fn(&treeai_dataflows::views::RegionAgg) -> i64| ints(regions.iter().map(move |(_, a)| f(a)));
    let regions_batch = batch(
        vec![
            ("region", S, false),
            ("trees", I, false),
            ("assessed_trees", I, false),
            ("mean_score", F, false),
            ("good", I, false),
            ("fair", I, false),
            ("poor", I, false),
            ("critical", I, false),
            ("risk_low", I, false),
            ("risk_moderate", I, false),
            ("risk_high", I, false),
            ("risk_extreme", I, false),
        ],
        vec![
            strings(regions.iter().map(|(k, _)| Some(k.as_str()))),
            r(|a| a.trees),
            r(|a| a.assessed_trees),
            floats(regions.iter().map(|(_, a)| Some(a.mean_score()))),
            r(|a| a.bands[0]),
            r(|a| a.bands[1]),
            r(|a| a.bands[2]),
            r(|a| a.bands[3]),
            r(|a| a.risks[0]),
            r(|a| a.risks[1]),
            r(|a| a.risks[2]),
            r(|a| a.risks[3]),
        ],
    );

    let agents: Vec<_> = views.agent_activity.iter().collect();
    let agents_batch = batch(
        vec![
            ("agent_id", S, false),
            ("day", DataType::Date32, false),
            ("assessments", I, false),
            ("distinct_trees", I, false),
            ("high_or_extreme", I, false),
        ],
        vec![
            strings(agents.iter().map(|((agent, _), _)| Some(agent.as_str()))),
            Arc::new(Date32Array::from_iter_values(agents.iter().map(|((_, day), _)| *day))),
            ints(agents.iter().map(|(_, r)| r.assessments as i64)),
            ints(agents.iter().map(|(_, r)| r.distinct_trees as i64)),
            ints(agents.iter().map(|(_, r)| r.high_or_extreme as i64)),
        ],
    );

    vec![
        ("trees", trees),
        ("afiss_current", afiss_batch),
        ("sensor_windows", windows_batch),
        ("tree_scores", scores_batch),
        ("region_summary", regions_batch),
        ("agent_activity", agents_batch),
    ]
}

/// Dead letters as a record batch: `source, position, arrival_time, reason, rule, raw`.
pub fn deadletter_batch(letters: &[DeadLetter]) -> RecordBatch {
    batch(
        vec![
            ("source", S, false),
            ("position", I, false),
            ("arrival_time", ts_type(), false),
            ("reason", S, false),
            ("rule", S, false),
            ("raw", DataType::Binary, false),
        ],
        vec![
            strings(letters.iter().map(|d| Some(d.source.as_str()))),
            ints(letters.iter().map(|d| d.pos.offset as i64)),
            times(letters.iter().map(|d| Some(d.arrival_ms))),
            strings(letters.iter().map(|d| Some(d.reason.as_str()))),
            strings(letters.iter().map(|d| Some(d.label.as_str()))),
            Arc::new(BinaryArray::from_iter_values(letters.iter().map(|d| d.raw.as_slice()))),
        ],
    )
}

/// Parquet compression codecs offered to users.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Codec {
    /// zstd (default).
    #[default]
    Zstd,
    /// lz4 (raw).
    Lz4,
    /// none.
    None,
}

/// Writes `batch` to `path` as one Parquet file, via a temporary name and a
/// rename, so that the file is never visible half-written.
pub fn write_parquet(path: &Path, batch: &RecordBatch, codec: Codec) -> Result<(), ConnectorError> {
    let io = |e: std::io::Error| ConnectorError::Output(format!("{}: {e}", path.display()));
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let compression = match codec {
        Codec::Zstd => Compression::ZSTD(ZstdLevel::default()),
        Codec::Lz4 => Compression::LZ4_RAW,
        Codec::None => Compression::UNCOMPRESSED,
    };
    let props = WriterProperties::builder().set_compression(compression).build();
    let tmp = path.with_extension("parquet.tmp");
    let file = std::fs::File::create(&tmp).map_err(io)?;
    let pq = |e: parquet::errors::ParquetError| ConnectorError::Output(format!("{}: {e}", path.display()));
    let mut writer = ArrowWriter::try_new(file, batch.schema(), Some(props)).map_err(pq)?;
    writer.write(batch).map_err(pq)?;
    writer.close().map_err(pq)?;
    std::fs::rename(&tmp, path).map_err(io)?;
    Ok(())
}
