//! The live views as DataFusion tables, all read from one [`Snapshot`].
//!
//! The tables ([`LiveSchema`], [`ViewTable`]) are created once; a query's
//! session carries the one `Arc<Snapshot>` taken when the query started
//! ([`with_snapshot`], a session config extension), and every scan of that
//! query reads it, so every view a query reads is at the same dataflow time
//! (see `treeai_dataflows::store`). A query thus plans on a clone of one
//! prepared session instead of a freshly built one.
//!
//! A scan plans nothing but a [`ViewScanExec`] (module [`crate::scan`]):
//! the snapshot, the view and what was pushed down. Rows are turned into
//! record batches only while the query runs, one batch per poll, each
//! reserved in the query's memory pool, with a yield between batches so the
//! time limit and a cancel stop a scan at any batch.
//!
//! # Pushdown (what [`ViewTable`] does itself)
//!
//! - **Projection**: only the projected columns are built from the view's map;
//!   `count(*)` builds none (a batch with only a row count), and without
//!   filters it is answered from the scan's exact row count.
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
//! `EXPLAIN` shows all three on the scan's line (`ViewScanExec: view=…,
//! projection=[…], keys=[…], region IN (…), limit=…`). Rows come in the maps'
//! order (not sorted); batches hold at most [`BATCH_ROWS`] rows.

use crate::scan::ViewScanExec;
use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use datafusion::catalog::{SchemaProvider, Session, TableProvider};
use datafusion::common::ScalarValue;
use datafusion::datasource::TableType;
use datafusion::error::Result as DfResult;
use datafusion::logical_expr::{BinaryExpr, Expr, Operator, TableProviderFilterPushDown};
use datafusion::physical_plan::ExecutionPlan;
use std::collections::BTreeSet;
use std::sync::Arc;
use treeai_dataflows::store::Snapshot;
use treeai_dataflows::{View, VIEW_NAMES};
use treeai_schema::views::schema_of;

pub use crate::scan::BATCH_ROWS;

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
        let secondary = secondary_column(self.view)
            .and_then(|column| restriction(filters, Some(column)).map(|values| (column, values)));
        let schema = match projection {
            Some(p) => Arc::new(self.schema.project(p)?),
            None => self.schema.clone(),
        };
        let metrics = state.config().get_extension::<crate::metrics::Metrics>();
        Ok(Arc::new(ViewScanExec::new(
            snapshot,
            self.view,
            schema,
            projection.cloned(),
            keys,
            secondary,
            limit,
            metrics.as_deref(),
        )))
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
