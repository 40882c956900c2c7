//! The live views as DataFusion tables, all read from one [`Snapshot`].
//!
//! The tables ([`LiveSchema`], [`ViewTable`]) are created once; a query's
//! session carries the one `Arc<Snapshot>` taken when the query started
//! ([`with_snapshot`], a session config extension), and every scan of that
//! query reads it, so every view a query reads is at the same dataflow time
//! (see `treeai_dataflows::store`). A query thus plans on a clone of one
//! prepared session instead of a freshly built one.
//!
//! # Pushdown (what [`ViewTable`] does itself)
//!
//! - **Projection**: only the projected columns are built from the view's map;
//!   `count(*)` builds none (a batch with only a row count).
//! - **Filters** (`supports_filters_pushdown` answers `Inexact`, so DataFusion
//!   still applies them above the scan):
//!   - `key = 'literal'`, `key IN ('a', 'b')` and `OR`s of those on the view's
//!     key column — `tree_id` for `trees`, `afiss_current`, `sensor_windows`,
//!     `tree_scores`; `region` for `region_summary`; `agent_id` for
//!     `agent_activity` — become map look-ups (`get`, or a range of the
//!     ordered map for `agent_activity`): a point query never copies the view.
//!   - the same shapes on `region` (`trees`, `tree_scores`) and `agent_id`
//!     (`afiss_current`) skip non-matching rows before any column is built.
//!   - anything else: `Unsupported` (DataFusion filters the rows).
//! - **Limit**: DataFusion passes a limit only when no filter remains above
//!   the scan; the scan then stops after that many rows.
//!
//! Rows come in the maps' order (not sorted); batches hold at most
//! [`BATCH_ROWS`] rows.

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use datafusion::catalog::{SchemaProvider, Session, TableProvider};
use datafusion::common::ScalarValue;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::datasource::TableType;
use datafusion::error::Result as DfResult;
use datafusion::logical_expr::{BinaryExpr, Expr, Operator, TableProviderFilterPushDown};
use datafusion::physical_plan::ExecutionPlan;
use std::collections::BTreeSet;
use std::sync::Arc;
use treeai_dataflows::store::Snapshot;
use treeai_dataflows::{View, VIEW_NAMES};
use treeai_schema::views::{
    afiss_columns, agents_columns, regions_columns, schema_of, scores_columns, trees_columns, view_rows_batch,
    windows_columns, ViewColumn,
};

/// Rows per record batch of a scan.
pub const BATCH_ROWS: usize = 8192;

/// A column whose filters are applied while walking the rows (not a map key).
fn secondary_column(view: View) -> Option<&'static str> {
    match view {
        View::Trees | View::Scores => Some("region"),
        View::Afiss => Some("agent_id"),
        _ => None,
    }
}

/// The string values `expr` restricts `column` to, if it has the shape
/// `column = 'v'`, `'v' = column`, `column IN ('a', ...)` or an `OR` of those.
pub fn column_values(expr: &Expr, column: &str) -> Option<BTreeSet<String>> {
    fn is_col(e: &Expr, column: &str) -> bool {
        matches!(e, Expr::Column(c) if c.name == column)
    }
    fn lit(e: &Expr) -> Option<String> {
        match e {
            Expr::Literal(
                ScalarValue::Utf8(Some(s)) | ScalarValue::Utf8View(Some(s)) | ScalarValue::LargeUtf8(Some(s)),
                _,
            ) => Some(s.clone()),
            _ => None,
        }
    }
    match expr {
        Expr::BinaryExpr(BinaryExpr { left, op: Operator::Eq, right }) => {
            if is_col(left, column) {
                lit(right).map(|v| BTreeSet::from([v]))
            } else if is_col(right, column) {
                lit(left).map(|v| BTreeSet::from([v]))
            } else {
                None
            }
        }
        Expr::BinaryExpr(BinaryExpr { left, op: Operator::Or, right }) => {
            let mut a = column_values(left, column)?;
            a.extend(column_values(right, column)?);
            Some(a)
        }
        Expr::InList(list) if !list.negated && is_col(&list.expr, column) => list.list.iter().map(lit).collect(),
        _ => None,
    }
}

/// Intersects the value sets that `filters` put on `column` (`None`: unrestricted).
fn restriction(filters: &[Expr], column: Option<&str>) -> Option<BTreeSet<String>> {
    let column = column?;
    let mut out: Option<BTreeSet<String>> = None;
    for f in filters {
        if let Some(vals) = column_values(f, column) {
            out = Some(match out {
                None => vals,
                Some(prev) => prev.intersection(&vals).cloned().collect(),
            });
        }
    }
    out
}

/// Gives `config` the snapshot its queries read.
pub fn with_snapshot(config: &mut datafusion::prelude::SessionConfig, snapshot: Arc<Snapshot>) {
    config.set_extension(snapshot);
}

/// The snapshot of a query's session (set by [`with_snapshot`]).
fn snapshot_of(state: &dyn Session) -> DfResult<Arc<Snapshot>> {
    state
        .config()
        .get_extension::<Snapshot>()
        .ok_or_else(|| datafusion::error::DataFusionError::Internal("the session has no snapshot of the views".into()))
}

/// A live view, read from the snapshot of the query's session.
#[derive(Debug)]
pub struct ViewTable {
    view: View,
    schema: SchemaRef,
}

impl ViewTable {
    /// `view`.
    pub fn new(view: View) -> Self {
        ViewTable { view, schema: schema_of(view) }
    }
}

fn batches<K, V>(
    columns: &[ViewColumn<K, V>],
    rows: &[(&K, &V)],
    watermark: Option<i64>,
    projection: Option<&[usize]>,
) -> Vec<RecordBatch> {
    rows.chunks(BATCH_ROWS).map(|chunk| view_rows_batch(columns, chunk, watermark, projection)).collect()
}

fn contains(set: &Option<BTreeSet<String>>, value: Option<&str>) -> bool {
    match set {
        None => true,
        Some(set) => value.is_some_and(|v| set.contains(v)),
    }
}

/// Rows of a tree-keyed map: by look-up when `keys` is set, else every row.
fn tree_rows<'a, V>(
    map: &'a imbl::HashMap<treeai_dataflows::event::Id, V>,
    keys: &Option<BTreeSet<String>>,
    keep: impl Fn(&V) -> bool,
    limit: usize,
) -> Vec<(&'a treeai_dataflows::event::Id, &'a V)> {
    match keys {
        Some(keys) => {
            keys.iter().filter_map(|k| map.get_key_value(k.as_str())).filter(|(_, v)| keep(v)).take(limit).collect()
        }
        None => map.iter().filter(|(_, v)| keep(v)).take(limit).collect(),
    }
}

#[async_trait]
impl TableProvider for ViewTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::View
    }

    fn supports_filters_pushdown(&self, filters: &[&Expr]) -> DfResult<Vec<TableProviderFilterPushDown>> {
        let columns = [Some(self.view.key_column()), secondary_column(self.view)];
        Ok(filters
            .iter()
            .map(|f| {
                if columns.iter().flatten().any(|c| column_values(f, c).is_some()) {
                    TableProviderFilterPushDown::Inexact
                } else {
                    TableProviderFilterPushDown::Unsupported
                }
            })
            .collect())
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let snapshot = snapshot_of(state)?;
        let keys = restriction(filters, Some(self.view.key_column()));
        let second = restriction(filters, secondary_column(self.view));
        let limit = limit.unwrap_or(usize::MAX);
        let proj = projection.map(|p| p.as_slice());
        let views = &snapshot.views;
        let w = snapshot.watermark;
        let parts = match self.view {
            View::Trees => {
                let rows = tree_rows(&views.trees, &keys, |t| contains(&second, t.region.map(|r| r.as_str())), limit);
                batches(&trees_columns(), &rows, w, proj)
            }
            View::Afiss => {
                let rows = tree_rows(
                    &views.afiss_current,
                    &keys,
                    |a| contains(&second, Some(a.assessment.agent_id.as_str())),
                    limit,
                );
                batches(&afiss_columns(), &rows, w, proj)
            }
            View::Windows => {
                batches(&windows_columns(), &tree_rows(&views.sensor_windows, &keys, |_| true, limit), w, proj)
            }
            View::Scores => {
                let rows = tree_rows(&views.tree_scores, &keys, |s| contains(&second, Some(s.region.as_str())), limit);
                batches(&scores_columns(), &rows, w, proj)
            }
            View::Regions => {
                let rows: Vec<_> = views
                    .region_summary
                    .iter()
                    .filter(|(r, _)| contains(&keys, Some(r.as_str())))
                    .take(limit)
                    .collect();
                batches(&regions_columns(), &rows, w, proj)
            }
            View::Agents => {
                let map = &views.agent_activity;
                let rows: Vec<_> = match &keys {
                    Some(agents) => agents
                        .iter()
                        .flat_map(|a| {
                            let a = treeai_dataflows::event::Id::from(a.as_str());
                            map.range((a.clone(), i32::MIN)..=(a, i32::MAX))
                        })
                        .take(limit)
                        .collect(),
                    None => map.iter().take(limit).collect(),
                };
                batches(&agents_columns(), &rows, w, proj)
            }
        };
        let schema = match projection {
            Some(p) => Arc::new(self.schema.project(p)?),
            None => self.schema.clone(),
        };
        let exec: Arc<dyn ExecutionPlan> = MemorySourceConfig::try_new_exec(&[parts], schema, None)?;
        Ok(exec)
    }
}

/// The six live views as a schema (`public`).
#[derive(Debug)]
pub struct LiveSchema {
    tables: Vec<Arc<dyn TableProvider>>,
}

impl LiveSchema {
    /// The views' tables.
    pub fn new() -> Self {
        LiveSchema {
            tables: View::ALL.into_iter().map(|v| Arc::new(ViewTable::new(v)) as Arc<dyn TableProvider>).collect(),
        }
    }
}

impl Default for LiveSchema {
    fn default() -> Self {
        Self::new()
    }
}

#[async_trait]
impl SchemaProvider for LiveSchema {
    fn table_names(&self) -> Vec<String> {
        VIEW_NAMES.iter().map(|s| s.to_string()).collect()
    }

    async fn table(&self, name: &str) -> DfResult<Option<Arc<dyn TableProvider>>> {
        Ok(View::from_name(name).map(|v| self.tables[v as usize].clone()))
    }

    fn table_exist(&self, name: &str) -> bool {
        View::from_name(name).is_some()
    }
}
