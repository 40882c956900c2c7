//! The live views and dead letters as Arrow record batches.
//!
//! Column names are exactly those of DOMAIN §4. Types: ids and enums are
//! strings; counts `Int64`; measures `Float64`; timestamps
//! `Timestamp(ms, "UTC")`; `agent_activity.day` a `Date32`. Rows are sorted by
//! the view's key, so equal views give identical files.

use arrow::array::{
    ArrayRef, BinaryArray, Date32Array, Float64Array, Int64Array, StringArray, TimestampMillisecondArray,
};
use arrow::datatypes::SchemaRef;
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use arrow::record_batch::{RecordBatch, RecordBatchOptions};
use std::sync::Arc;
use treeai_dataflows::event::{Id, Region, TreeEvent};
use treeai_dataflows::source::DeadLetter;
use treeai_dataflows::store::Views;
use treeai_dataflows::views::{AfissRow, AgentDayRow, RegionAgg, ScoreRow, WindowRow};
use treeai_dataflows::View;

pub fn ts_type() -> DataType {
    DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()))
}

pub fn strings<'a>(v: impl IntoIterator<Item = Option<&'a str>>) -> ArrayRef {
    Arc::new(StringArray::from_iter(v))
}
pub fn floats(v: impl IntoIterator<Item = Option<f64>>) -> ArrayRef {
    Arc::new(Float64Array::from_iter(v))
}
pub fn ints(v: impl IntoIterator<Item = i64>) -> ArrayRef {
    Arc::new(Int64Array::from_iter_values(v))
}
pub fn times(v: impl IntoIterator<Item = Option<i64>>) -> ArrayRef {
    Arc::new(TimestampMillisecondArray::from_iter(v).with_timezone("UTC"))
}

use DataType::{Float64 as F, Int64 as I, Utf8 as S};

/// Builds one column from rows `(key, value)` and the watermark.
pub type ColumnBuilder<K, V> = fn(&[(&K, &V)], Option<i64>) -> ArrayRef;

/// One column of a view: its name, type and nullability, and how to build it
/// from rows `(key, value)` of the view's map. `watermark` is the watermark the
/// views are read at (it fills `sensor_windows.window_end`).
pub struct ViewColumn<K: 'static, V: 'static> {
    /// Column name (DOMAIN §4).
    pub name: &'static str,
    /// Arrow type.
    pub data_type: DataType,
    /// Whether the column may hold NULL.
    pub nullable: bool,
    build: ColumnBuilder<K, V>,
}

fn col<K, V>(name: &'static str, data_type: DataType, nullable: bool, build: ColumnBuilder<K, V>) -> ViewColumn<K, V> {
    ViewColumn { name, data_type, nullable, build }
}

/// The schema of a view given its columns.
pub fn view_schema<K, V>(columns: &[ViewColumn<K, V>]) -> SchemaRef {
    Arc::new(Schema::new(
        columns.iter().map(|c| Field::new(c.name, c.data_type.clone(), c.nullable)).collect::<Vec<_>>(),
    ))
}

/// A record batch of `rows` with the columns `projection` (indices into
/// `columns`; `None`: all). Only the projected columns are built; an empty
/// projection gives a batch that has only a row count (for `count(*)`).
pub fn view_rows_batch<K, V>(
    columns: &[ViewColumn<K, V>],
    rows: &[(&K, &V)],
    watermark: Option<i64>,
    projection: Option<&[usize]>,
) -> RecordBatch {
    let all: Vec<usize>;
    let projection = match projection {
        Some(p) => p,
        None => {
            all = (0..columns.len()).collect();
            &all
        }
    };
    let fields: Vec<Field> = projection
        .iter()
        .map(|&i| Field::new(columns[i].name, columns[i].data_type.clone(), columns[i].nullable))
        .collect();
    let arrays: Vec<ArrayRef> = projection.iter().map(|&i| (columns[i].build)(rows, watermark)).collect();
    let options = RecordBatchOptions::new().with_row_count(Some(rows.len()));
    RecordBatch::try_new_with_options(Arc::new(Schema::new(fields)), arrays, &options)
        .expect("columns match the schema by construction")
}

/// Columns of `trees` (key: tree_id).
pub fn trees_columns() -> Vec<ViewColumn<Id, TreeEvent>> {
    vec![
        col("tree_id", S, false, |r, _| strings(r.iter().map(|(k, _)| Some(k.as_str())))),
        col("region", S, true, |r, _| strings(r.iter().map(|(_, t)| t.region.map(|r| r.as_str())))),
        col("species", S, true, |r, _| strings(r.iter().map(|(_, t)| t.species.as_deref()))),
        col("lat", F, false, |r, _| floats(r.iter().map(|(_, t)| Some(t.lat.0)))),
        col("lon", F, false, |r, _| floats(r.iter().map(|(_, t)| Some(t.lon.0)))),
        col("dbh_cm", F, true, |r, _| floats(r.iter().map(|(_, t)| t.dbh_cm.map(|x| x.0)))),
        col("height_m", F, true, |r, _| floats(r.iter().map(|(_, t)| t.height_m.map(|x| x.0)))),
        col("target_occupancy", S, true, |r, _| strings(r.iter().map(|(_, t)| t.target_occupancy.map(|o| o.as_str())))),
        col("baseline_tilt_deg", F, false, |r, _| floats(r.iter().map(|(_, t)| Some(t.baseline_tilt_deg.0)))),
        col("baseline_sway_hz", F, true, |r, _| floats(r.iter().map(|(_, t)| t.baseline_sway_hz.map(|x| x.0)))),
        col("updated_at", ts_type(), false, |r, _| times(r.iter().map(|(_, t)| Some(t.updated_at)))),
    ]
}

/// Columns of `afiss_current` (key: tree_id).
pub fn afiss_columns() -> Vec<ViewColumn<Id, AfissRow>> {
    vec![
        col("tree_id", S, false, |r, _| strings(r.iter().map(|(k, _)| Some(k.as_str())))),
        col("assessment_id", S, false, |r, _| {
            strings(r.iter().map(|(_, a)| Some(a.assessment.assessment_id.as_str())))
        }),
        col("revision", I, false, |r, _| ints(r.iter().map(|(_, a)| i64::from(a.assessment.revision)))),
        col("agent_id", S, false, |r, _| strings(r.iter().map(|(_, a)| Some(a.assessment.agent_id.as_str())))),
        col("observed_at", ts_type(), false, |r, _| times(r.iter().map(|(_, a)| Some(a.assessment.observed_at)))),
        col("likelihood_of_failure", S, false, |r, _| {
            strings(r.iter().map(|(_, a)| Some(a.assessment.likelihood_of_failure.as_str())))
        }),
        col("likelihood_of_impact", S, false, |r, _| {
            strings(r.iter().map(|(_, a)| Some(a.assessment.likelihood_of_impact.as_str())))
        }),
        col("consequences", S, false, |r, _| strings(r.iter().map(|(_, a)| Some(a.assessment.consequences.as_str())))),
        col("failure_impact", S, false, |r, _| strings(r.iter().map(|(_, a)| Some(a.failure_impact.as_str())))),
        col("risk_rating", S, false, |r, _| strings(r.iter().map(|(_, a)| Some(a.risk_rating.as_str())))),
        col("defect_count", I, false, |r, _| ints(r.iter().map(|(_, a)| i64::from(a.assessment.defect_count)))),
        col("defect_severity_sum", I, false, |r, _| {
            ints(r.iter().map(|(_, a)| i64::from(a.assessment.defect_severity_sum)))
        }),
        col("max_defect_severity", I, false, |r, _| {
            ints(r.iter().map(|(_, a)| i64::from(a.assessment.max_defect_severity)))
        }),
        col("crown_dieback_pct", F, false, |r, _| {
            floats(r.iter().map(|(_, a)| Some(a.assessment.crown_dieback_pct.0)))
        }),
        col("assessments_total", I, false, |r, _| ints(r.iter().map(|(_, a)| i64::from(a.assessments_total)))),
    ]
}

/// Columns of `sensor_windows` (key: tree_id); `window_end` is the watermark.
pub fn windows_columns() -> Vec<ViewColumn<Id, WindowRow>> {
    vec![
        col("tree_id", S, false, |r, _| strings(r.iter().map(|(k, _)| Some(k.as_str())))),
        col("window_end", ts_type(), true, |r, w| times(r.iter().map(|_| w))),
        col("tilt_max", F, true, |r, _| floats(r.iter().map(|(_, w)| w.tilt_max.map(|x| x.0)))),
        col("sway_min", F, true, |r, _| floats(r.iter().map(|(_, w)| w.sway_min.map(|x| x.0)))),
        col("gust_max", F, true, |r, _| floats(r.iter().map(|(_, w)| w.gust_max.map(|x| x.0)))),
        col("soil_mean", F, true, |r, _| floats(r.iter().map(|(_, w)| w.soil_mean.map(|x| x.0)))),
        col("readings", I, false, |r, _| ints(r.iter().map(|(_, w)| w.readings as i64))),
    ]
}

/// Columns of `tree_scores` (key: tree_id).
pub fn scores_columns() -> Vec<ViewColumn<Id, ScoreRow>> {
    vec![
        col("tree_id", S, false, |r, _| strings(r.iter().map(|(k, _)| Some(k.as_str())))),
        col("region", S, false, |r, _| strings(r.iter().map(|(_, s)| Some(s.region.as_str())))),
        col("score", F, false, |r, _| floats(r.iter().map(|(_, s)| Some(s.score.score.0)))),
        col("band", S, false, |r, _| strings(r.iter().map(|(_, s)| Some(s.score.band.as_str())))),
        col("risk_rating", S, false, |r, _| strings(r.iter().map(|(_, s)| Some(s.score.risk_rating_str())))),
        col("base", F, false, |r, _| floats(r.iter().map(|(_, s)| Some(s.score.base.0)))),
        col("defect_penalty", F, false, |r, _| floats(r.iter().map(|(_, s)| Some(s.score.defect_penalty.0)))),
        col("dieback_penalty", F, false, |r, _| floats(r.iter().map(|(_, s)| Some(s.score.dieback_penalty.0)))),
        col("tilt_penalty", F, false, |r, _| floats(r.iter().map(|(_, s)| Some(s.score.tilt_penalty.0)))),
        col("sway_penalty", F, false, |r, _| floats(r.iter().map(|(_, s)| Some(s.score.sway_penalty.0)))),
        col("storm_penalty", F, false, |r, _| floats(r.iter().map(|(_, s)| Some(s.score.storm_penalty.0)))),
    ]
}

/// Columns of `region_summary` (key: region).
pub fn regions_columns() -> Vec<ViewColumn<Region, RegionAgg>> {
    vec![
        col("region", S, false, |r, _| strings(r.iter().map(|(k, _)| Some(k.as_str())))),
        col("trees", I, false, |r, _| ints(r.iter().map(|(_, a)| a.trees))),
        col("assessed_trees", I, false, |r, _| ints(r.iter().map(|(_, a)| a.assessed_trees))),
        col("mean_score", F, false, |r, _| floats(r.iter().map(|(_, a)| Some(a.mean_score())))),
        col("good", I, false, |r, _| ints(r.iter().map(|(_, a)| a.bands[0]))),
        col("fair", I, false, |r, _| ints(r.iter().map(|(_, a)| a.bands[1]))),
        col("poor", I, false, |r, _| ints(r.iter().map(|(_, a)| a.bands[2]))),
        col("critical", I, false, |r, _| ints(r.iter().map(|(_, a)| a.bands[3]))),
        col("risk_low", I, false, |r, _| ints(r.iter().map(|(_, a)| a.risks[0]))),
        col("risk_moderate", I, false, |r, _| ints(r.iter().map(|(_, a)| a.risks[1]))),
        col("risk_high", I, false, |r, _| ints(r.iter().map(|(_, a)| a.risks[2]))),
        col("risk_extreme", I, false, |r, _| ints(r.iter().map(|(_, a)| a.risks[3]))),
    ]
}

/// Columns of `agent_activity` (key: agent_id and day number).
pub fn agents_columns() -> Vec<ViewColumn<(Id, i32), AgentDayRow>> {
    vec![
        col("agent_id", S, false, |r, _| strings(r.iter().map(|((agent, _), _)| Some(agent.as_str())))),
        col("day", DataType::Date32, false, |r, _| {
            Arc::new(Date32Array::from_iter_values(r.iter().map(|((_, day), _)| *day)))
        }),
        col("assessments", I, false, |r, _| ints(r.iter().map(|(_, a)| a.assessments as i64))),
        col("distinct_trees", I, false, |r, _| ints(r.iter().map(|(_, a)| a.distinct_trees as i64))),
        col("high_or_extreme", I, false, |r, _| ints(r.iter().map(|(_, a)| a.high_or_extreme as i64))),
    ]
}

/// The Arrow schema of `view`.
pub fn schema_of(view: View) -> SchemaRef {
    match view {
        View::Trees => view_schema(&trees_columns()),
        View::Afiss => view_schema(&afiss_columns()),
        View::Windows => view_schema(&windows_columns()),
        View::Scores => view_schema(&scores_columns()),
        View::Regions => view_schema(&regions_columns()),
        View::Agents => view_schema(&agents_columns()),
    }
}

fn sorted<'a, K: Ord, V>(rows: impl Iterator<Item = (&'a K, &'a V)>) -> Vec<(&'a K, &'a V)> {
    let mut rows: Vec<_> = rows.collect();
    rows.sort_by(|a, b| a.0.cmp(b.0));
    rows
}

/// All six views as record batches, in [`treeai_dataflows::VIEW_NAMES`] order,
/// rows sorted by key. `watermark` fills `sensor_windows.window_end`.
pub fn view_batches(views: &Views, watermark: Option<i64>) -> Vec<(&'static str, RecordBatch)> {
    let w = watermark;
    let mut regions: Vec<_> = views.region_summary.iter().collect();
    regions.sort_by_key(|(r, _)| r.as_str());
    vec![
        ("trees", view_rows_batch(&trees_columns(), &sorted(views.trees.iter().map(|(k, v)| (k, &**v))), w, None)),
        (
            "afiss_current",
            view_rows_batch(&afiss_columns(), &sorted(views.afiss_current.iter().map(|(k, v)| (k, &**v))), w, None),
        ),
        (
            "sensor_windows",
            view_rows_batch(&windows_columns(), &sorted(views.sensor_windows.iter().map(|(k, v)| (k, &**v))), w, None),
        ),
        (
            "tree_scores",
            view_rows_batch(&scores_columns(), &sorted(views.tree_scores.iter().map(|(k, v)| (k, &**v))), w, None),
        ),
        ("region_summary", view_rows_batch(&regions_columns(), &regions, w, None)),
        ("agent_activity", view_rows_batch(&agents_columns(), &sorted(views.agent_activity.iter()), w, None)),
    ]
}

/// The schema of dead-letter files: `source, position, arrival_time, reason, rule, raw`
/// (`backfill`'s `deadletter/part-00000.parquet` and the lake table `deadletter`).
pub fn deadletter_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("source", S, false),
        Field::new("position", I, false),
        Field::new("arrival_time", ts_type(), false),
        Field::new("reason", S, false),
        Field::new("rule", S, false),
        Field::new("raw", DataType::Binary, false),
    ]))
}

/// Dead letters as a record batch of [`deadletter_schema`].
pub fn deadletter_batch(letters: &[DeadLetter]) -> RecordBatch {
    RecordBatch::try_new(
        deadletter_schema(),
        vec![
            Arc::new(StringArray::from_iter_values(letters.iter().map(|d| d.source.to_string()))),
            ints(letters.iter().map(|d| d.pos.offset as i64)),
            times(letters.iter().map(|d| Some(d.arrival_ms))),
            strings(letters.iter().map(|d| Some(d.reason.as_str()))),
            strings(letters.iter().map(|d| Some(d.label.as_str()))),
            Arc::new(BinaryArray::from_iter_values(letters.iter().map(|d| d.raw.as_slice()))),
        ],
    )
    .expect("columns match the schema by construction")
}
