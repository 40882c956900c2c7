//! The lake tables (INTERFACES.md, Lake): names, Arrow schemas of their
//! Parquet files, the Hive partition layout, and the object store of a lake URL.
//!
//! | table | path under the root |
//! |---|---|
//! | readings | `readings/date=YYYY-MM-DD/hour=HH/` (of `ts`) |
//! | assessments | `assessments/date=YYYY-MM-DD/` (of `observed_at`) |
//! | trees | `trees/date=YYYY-MM-DD/` (of `updated_at`) |
//! | score_changes | `score_changes/date=YYYY-MM-DD/` (of the change's watermark) |
//! | alerts | `alerts/date=YYYY-MM-DD/` (of the alert's watermark) |
//! | deadletter | `deadletter/date=YYYY-MM-DD/` (of arrival) |
//! | audit | `audit/date=YYYY-MM-DD/` (of the record's time; written by the SQL servers, see `treeai_sql::audit`) |
//!
//! Partition columns live in the path only, as Hive does. Timestamps are
//! `Timestamp(ms, UTC)`.

use crate::views::{deadletter_schema, scores_columns, trees_columns, ts_type, view_schema};
use crate::SchemaError;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use object_store::path::Path as StorePath;
use object_store::ObjectStore;
use std::sync::Arc;
use treeai_dataflows::time::{day_of, format_day, HOUR_MS};

/// The lake tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Table {
    /// `readings`
    Readings,
    /// `assessments`
    Assessments,
    /// `trees`
    Trees,
    /// `score_changes`
    ScoreChanges,
    /// `alerts`
    Alerts,
    /// `deadletter`
    Deadletter,
    /// `audit`: the audit log's records (logins, statements, ingest and admin calls).
    Audit,
}

impl Table {
    /// Every table.
    pub const ALL: [Table; 7] = [
        Table::Readings,
        Table::Assessments,
        Table::Trees,
        Table::ScoreChanges,
        Table::Alerts,
        Table::Deadletter,
        Table::Audit,
    ];
    /// Folder name under the root.
    pub fn name(self) -> &'static str {
        match self {
            Table::Readings => "readings",
            Table::Assessments => "assessments",
            Table::Trees => "trees",
            Table::ScoreChanges => "score_changes",
            Table::Alerts => "alerts",
            Table::Deadletter => "deadletter",
            Table::Audit => "audit",
        }
    }

    /// The Arrow schema of the table's files (partition columns excluded: they are in the path).
    /// `trees` and `score_changes` start with the columns of the views `trees` and `tree_scores`;
    /// `deadletter` is the dead-letter file of `backfill`.
    pub fn schema(self) -> SchemaRef {
        use DataType::{Boolean as B, Float64 as F, Int64 as I, Utf8 as S};
        let field = |(name, data_type, nullable): (&str, DataType, bool)| Field::new(name, data_type, nullable);
        let columns = |list: Vec<(&str, DataType, bool)>| list.into_iter().map(field).collect::<Vec<_>>();
        let view = |schema: SchemaRef| schema.fields().iter().map(|f| f.as_ref().clone()).collect::<Vec<_>>();
        let position = || columns(vec![("source", I, false), ("offset", I, false)]);
        let fields: Vec<Field> = match self {
            Table::Readings => [
                columns(vec![
                    ("tree_id", S, false),
                    ("sensor_id", S, false),
                    ("metric", S, false),
                    ("value", F, false),
                    ("ts", ts_type(), false),
                ]),
                position(),
            ]
            .concat(),
            Table::Assessments => [
                columns(vec![
                    ("assessment_id", S, false),
                    ("revision", I, false),
                    ("tree_id", S, false),
                    ("agent_id", S, false),
                    ("observed_at", ts_type(), false),
                    ("likelihood_of_failure", S, false),
                    ("likelihood_of_impact", S, false),
                    ("consequences", S, false),
                    ("defect_count", I, false),
                    ("defect_severity_sum", I, false),
                    ("max_defect_severity", I, false),
                    ("crown_dieback_pct", F, false),
                    ("notes", S, true),
                    ("withdrawn", B, false),
                ]),
                position(),
            ]
            .concat(),
            Table::Trees => {
                [view(view_schema(&trees_columns())), columns(vec![("deleted", B, false)]), position()].concat()
            }
            Table::ScoreChanges => [
                view(view_schema(&scores_columns())),
                columns(vec![("diff", I, false), ("watermark", ts_type(), true), ("dataflow_time", I, false)]),
            ]
            .concat(),
            Table::Alerts => columns(vec![
                ("kind", S, false),
                ("tree_id", S, false),
                ("region", S, true),
                ("score", F, true),
                ("band", S, false),
                ("previous_band", S, true),
                ("watermark", ts_type(), true),
                ("top_penalty", S, false),
            ]),
            Table::Deadletter => return deadletter_schema(),
            Table::Audit => columns(vec![
                ("time", ts_type(), false),
                ("user", S, true),
                ("role", S, true),
                ("client", S, true),
                ("action", S, false),
                ("statement", S, true),
                ("request", S, true),
                ("reason", S, true),
                ("events", I, true),
                ("outcome", S, false),
                ("duration_ms", F, false),
            ]),
        };
        Arc::new(Schema::new(fields))
    }

    /// The Hive partition columns of the table, outermost first.
    pub fn partition_columns(self) -> &'static [&'static str] {
        match self {
            Table::Readings => &["date", "hour"],
            _ => &["date"],
        }
    }
}

/// Hive's spelling of a null partition value (a change at a time with no watermark yet).
pub const NULL_PARTITION: &str = "__HIVE_DEFAULT_PARTITION__";

/// The `date=` partition of a row whose partitioning time is `ms` (epoch ms, UTC).
pub fn date_part(ms: Option<i64>) -> String {
    match ms {
        Some(ms) => format!("date={}", format_day(day_of(ms))),
        None => format!("date={NULL_PARTITION}"),
    }
}

/// The partition (under `readings/`) of a reading at `ts`: `date=YYYY-MM-DD/hour=HH`.
pub fn hour_part(ts: i64) -> String {
    format!("{}/hour={:02}", date_part(Some(ts)), ts.rem_euclid(86_400_000) / HOUR_MS)
}

/// Opens the object store of a lake URL: the store and the path prefix inside it.
///
/// A local path or `file://` URL is created if missing. Other schemes go to
/// `object_store::parse_url_opts` with the `AWS_*`, `GOOGLE_*`, `AZURE_*`
/// environment variables (lower-cased) and then `options` (which win).
pub fn open_store(url: &str, options: &[(String, String)]) -> Result<(Arc<dyn ObjectStore>, StorePath), SchemaError> {
    let bad = |message: String| SchemaError::Store { url: url.to_string(), message };
    let has_scheme = url.contains("://");
    if !has_scheme || url.starts_with("file://") {
        let dir = url.strip_prefix("file://").unwrap_or(url);
        std::fs::create_dir_all(dir).map_err(|e| bad(e.to_string()))?;
        let store = object_store::local::LocalFileSystem::new_with_prefix(dir).map_err(|e| bad(e.to_string()))?;
        return Ok((Arc::new(store), StorePath::default()));
    }
    let parsed = url::Url::parse(url).map_err(|e| bad(e.to_string()))?;
    let mut opts: Vec<(String, String)> = std::env::vars()
        .filter(|(k, _)| k.starts_with("AWS_") || k.starts_with("GOOGLE_") || k.starts_with("AZURE_"))
        .map(|(k, v)| (k.to_ascii_lowercase(), v))
        .collect();
    opts.extend(options.iter().cloned());
    let (store, path) = object_store::parse_url_opts(&parsed, opts).map_err(|e| bad(e.to_string()))?;
    Ok((Arc::from(store), path))
}
