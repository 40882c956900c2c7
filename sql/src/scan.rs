//! The scan of one live view: [`ViewScanExec`], a DataFusion leaf
//! `ExecutionPlan` that builds record batches lazily, while the query runs.
//!
//! Planning only records what the scan reads: the query's `Arc<Snapshot>`,
//! the view, the projection, the pushed-down key and secondary restrictions
//! and the limit (see [`crate::provider`] for which filters reach it). No row
//! is touched until [`ExecutionPlan::execute`]'s stream is polled; then each
//! poll builds one batch of at most [`BATCH_ROWS`] rows from the snapshot's
//! maps, walking them with an iterator that shares their nodes
//! (a consuming iterator over an O(1) clone of the map, or look-ups of
//! the restricted keys), so a scan holds one batch, never a copy of the view.
//!
//! - **Interruptible**: after each batch the stream yields to the runtime
//!   once before building the next, so the statement's time limit, a
//!   Postgres CancelRequest or a client that goes away (all of which drop the
//!   query's future or stream) stop a scan between two batches, even under an
//!   operator such as an aggregate that consumes its whole input in one poll.
//! - **Accounted**: the batch a scan has produced is reserved in the query's
//!   memory pool (a `MemoryConsumer` `ViewScan[view]`, resized to each batch's
//!   `get_array_memory_size` before it is yielded, freed at the end or when
//!   the stream is dropped). Operators that keep rows (sorts, joins,
//!   aggregates) reserve what they keep themselves, so such a query fails with
//!   `ResourcesExhausted` (SQLSTATE 53200) when the pool is too small, while a
//!   streamed result can be larger than the pool.
//! - **Statistics**: the row count is exact when no secondary restriction
//!   applies (the map's length, or the keys found), an upper bound otherwise;
//!   non-nullable columns have no NULLs. `count(*)` of a view is answered from
//!   them without a scan.
//! - **Metrics**: `EXPLAIN ANALYZE` shows the scan's output rows and build
//!   time; `treeai_sql_view_rows_scanned_total{view}` counts the rows scans
//!   produced.
//!
//! `EXPLAIN` shows what reached the scan, e.g. `ViewScanExec:
//! view=tree_scores, projection=[tree_id, score], keys=[T-1, T-2], region IN
//! (eu-west), limit=10`.

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use datafusion::common::stats::Precision;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{ColumnStatistics, Statistics};
use datafusion::error::Result as DfResult;
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryReservation};
use datafusion::execution::{RecordBatchStream, SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::coop::cooperative;
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType, SchedulingType};
use datafusion::physical_plan::metrics::{BaselineMetrics, ExecutionPlanMetricsSet, MetricsSet};
use datafusion::physical_plan::{
    ChildrenPropertiesMode, DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties,
    ReplaceChildrenOptions, StatisticsArgs,
};
use futures::Stream;
use std::borrow::Borrow;
use std::collections::BTreeSet;
use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use treeai_dataflows::event::Id;
use treeai_dataflows::layered::LayeredMap;
use treeai_dataflows::store::Snapshot;
use treeai_dataflows::View;
use treeai_schema::views::{
    afiss_columns, agents_columns, regions_columns, scores_columns, trees_columns, view_rows_batch, windows_columns,
    ViewColumn,
};

/// Rows per record batch of a scan.
pub const BATCH_ROWS: usize = 8192;

/// A restriction of a column to a set of values (`column = 'v'`, `IN (...)`, `OR`s of those).
pub type Values = BTreeSet<String>;

/// The scan of one live view at one snapshot (see the module docs).
pub struct ViewScanExec {
    snapshot: Arc<Snapshot>,
    view: View,
    /// Indices into the view's columns; `None`: all.
    projection: Option<Vec<usize>>,
    /// Values of the view's key column: rows are looked up, not scanned.
    keys: Option<Values>,
    /// A column whose values are checked on each row before columns are built.
    secondary: Option<(&'static str, Values)>,
    /// Most rows the scan produces.
    limit: Option<usize>,
    /// The projected schema.
    schema: SchemaRef,
    properties: Arc<PlanProperties>,
    metrics: ExecutionPlanMetricsSet,
    /// `treeai_sql_view_rows_scanned_total`, when the session has the process' metrics.
    counter: Option<prometheus::IntCounter>,
}

impl ViewScanExec {
    /// A scan of `view` in `snapshot`. `schema` is the view's schema with
    /// `projection` applied; `secondary` names its column.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        snapshot: Arc<Snapshot>,
        view: View,
        schema: SchemaRef,
        projection: Option<Vec<usize>>,
        keys: Option<Values>,
        secondary: Option<(&'static str, Values)>,
        limit: Option<usize>,
        metrics: Option<&crate::metrics::Metrics>,
    ) -> Self {
        let properties = PlanProperties::new(
            EquivalenceProperties::new(schema.clone()),
            Partitioning::UnknownPartitioning(1),
            EmissionType::Incremental,
            Boundedness::Bounded,
        )
        .with_scheduling_type(SchedulingType::Cooperative);
        ViewScanExec {
            snapshot,
            view,
            projection,
            keys,
            secondary,
            limit,
            schema,
            properties: Arc::new(properties),
            metrics: ExecutionPlanMetricsSet::new(),
            counter: metrics.map(|m| m.rows_scanned_counter(view.name())),
        }
    }

    /// The view scanned.
    pub fn view(&self) -> View {
        self.view
    }

    /// The key values the scan looks up, if restricted.
    pub fn keys(&self) -> Option<&Values> {
        self.keys.as_ref()
    }

    /// The limit that reached the scan.
    pub fn limit(&self) -> Option<usize> {
        self.limit
    }

    /// Rows the scan yields, exactly when no secondary restriction applies
    /// (`Inexact`, an upper bound, otherwise).
    fn row_count(&self) -> Precision<usize> {
        let views = &self.snapshot.views;
        let found = |len: usize, has: &dyn Fn(&str) -> bool| match &self.keys {
            None => len,
            Some(keys) => keys.iter().filter(|k| has(k)).count(),
        };
        let n = match self.view {
            View::Trees => found(views.trees.len(), &|k| views.trees.contains_key(k)),
            View::Afiss => found(views.afiss_current.len(), &|k| views.afiss_current.contains_key(k)),
            View::Windows => found(views.sensor_windows.len(), &|k| views.sensor_windows.contains_key(k)),
            View::Scores => found(views.tree_scores.len(), &|k| views.tree_scores.contains_key(k)),
            View::Regions => match &self.keys {
                None => views.region_summary.len(),
                Some(keys) => views.region_summary.keys().filter(|r| keys.contains(r.as_str())).count(),
            },
            View::Agents => match &self.keys {
                None => views.agent_activity.len(),
                Some(agents) => agents.iter().map(|a| agent_days(&views.agent_activity, a).count()).sum(),
            },
        };
        let n = self.limit.map_or(n, |l| n.min(l));
        if self.secondary.is_some() {
            Precision::Inexact(n)
        } else {
            Precision::Exact(n)
        }
    }

    /// The stream of `columns` over `rows`.
    fn stream<K, V, R>(
        &self,
        columns: Vec<ViewColumn<K, V>>,
        rows: Rows<K, R>,
        context: &TaskContext,
    ) -> SendableRecordBatchStream
    where
        K: Send + 'static,
        V: Send + 'static,
        R: Borrow<V> + Send + 'static,
    {
        let reservation =
            MemoryConsumer::new(format!("ViewScan[{}]", self.view.name())).register(context.memory_pool());
        let rows = match self.limit {
            Some(limit) => Box::new(rows.take(limit)),
            None => rows,
        };
        Box::pin(cooperative(ViewStream {
            rows,
            columns,
            projection: self.projection.clone(),
            watermark: self.snapshot.watermark,
            schema: self.schema.clone(),
            reservation,
            baseline: BaselineMetrics::new(&self.metrics, 0),
            counter: self.counter.clone(),
            yield_next: false,
            done: false,
        }))
    }
}

impl fmt::Debug for ViewScanExec {
    // The snapshot is not printed: it holds whole views.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ViewScanExec")
            .field("view", &self.view.name())
            .field("projection", &self.projection)
            .field("keys", &self.keys)
            .field("secondary", &self.secondary)
            .field("limit", &self.limit)
            .finish()
    }
}

impl DisplayAs for ViewScanExec {
    fn fmt_as(&self, t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        let names: Vec<&str> = self.schema.fields().iter().map(|c| c.name().as_str()).collect();
        let list = |v: &Values| v.iter().map(String::as_str).collect::<Vec<_>>().join(", ");
        match t {
            DisplayFormatType::Default | DisplayFormatType::Verbose => {
                write!(f, "ViewScanExec: view={}, projection=[{}]", self.view.name(), names.join(", "))?;
                if let Some(keys) = &self.keys {
                    write!(f, ", keys=[{}]", list(keys))?;
                }
                if let Some((column, values)) = &self.secondary {
                    write!(f, ", {column} IN ({})", list(values))?;
                }
                if let Some(limit) = self.limit {
                    write!(f, ", limit={limit}")?;
                }
                Ok(())
            }
            DisplayFormatType::TreeRender => {
                write!(f, "view={}", self.view.name())?;
                if let Some(keys) = &self.keys {
                    write!(f, "\nkeys=[{}]", list(keys))?;
                }
                if let Some((column, values)) = &self.secondary {
                    write!(f, "\n{column}=[{}]", list(values))?;
                }
                if let Some(limit) = self.limit {
                    write!(f, "\nlimit={limit}")?;
                }
                Ok(())
            }
        }
    }
}

impl ExecutionPlan for ViewScanExec {
    fn name(&self) -> &'static str {
        "ViewScanExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> DfResult<TreeNodeRecursion>,
    ) -> DfResult<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn replace_children(
        self: Arc<Self>,
        _children: Vec<Arc<dyn ExecutionPlan>>,
        _options: ReplaceChildrenOptions,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        Ok(self)
    }

    fn with_new_children(self: Arc<Self>, children: Vec<Arc<dyn ExecutionPlan>>) -> DfResult<Arc<dyn ExecutionPlan>> {
        self.replace_children(children, ReplaceChildrenOptions::new(ChildrenPropertiesMode::Recompute))
    }

    fn execute(&self, partition: usize, context: Arc<TaskContext>) -> DfResult<SendableRecordBatchStream> {
        if partition != 0 {
            return Err(datafusion::error::DataFusionError::Internal(format!(
                "ViewScanExec has one partition, asked for {partition}"
            )));
        }
        let views = &self.snapshot.views;
        let keys = self.keys.clone();
        let second = self.secondary.as_ref().map(|(_, values)| values.clone());
        let ctx = context.as_ref();
        Ok(match self.view {
            View::Trees => {
                let rows = tree_rows(&views.trees, keys, move |t| contains(&second, t.region.map(|r| r.as_str())));
                self.stream(trees_columns(), rows, ctx)
            }
            View::Afiss => {
                let rows = tree_rows(&views.afiss_current, keys, move |a| {
                    contains(&second, Some(a.assessment.agent_id.as_str()))
                });
                self.stream(afiss_columns(), rows, ctx)
            }
            View::Windows => self.stream(windows_columns(), tree_rows(&views.sensor_windows, keys, |_| true), ctx),
            View::Scores => {
                let rows = tree_rows(&views.tree_scores, keys, move |s| contains(&second, Some(s.region.as_str())));
                self.stream(scores_columns(), rows, ctx)
            }
            View::Regions => {
                // Three regions: walked in order (the map's), filtered by the keys.
                let rows =
                    views.region_summary.clone().into_iter().filter(move |(r, _)| contains(&keys, Some(r.as_str())));
                self.stream(regions_columns(), Box::new(rows), ctx)
            }
            View::Agents => {
                let map = views.agent_activity.clone();
                let rows: Rows<(Id, i32), _> = match keys {
                    // An agent's days, one agent at a time.
                    Some(agents) => Box::new(agents.into_iter().flat_map(move |a| {
                        agent_days(&map, &a).map(|(k, v)| (k.clone(), v.clone())).collect::<Vec<_>>()
                    })),
                    None => Box::new(map.into_iter()),
                };
                self.stream(agents_columns(), rows, ctx)
            }
        })
    }

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }

    fn statistics_from_inputs(&self, _inputs: &[Arc<Statistics>], _args: &StatisticsArgs) -> DfResult<Arc<Statistics>> {
        let rows = self.row_count();
        let exact = matches!(rows, Precision::Exact(_));
        let columns = self
            .schema
            .fields()
            .iter()
            .map(|f| ColumnStatistics {
                null_count: if exact && !f.is_nullable() { Precision::Exact(0) } else { Precision::Absent },
                ..ColumnStatistics::new_unknown()
            })
            .collect();
        Ok(Arc::new(Statistics { num_rows: rows, total_byte_size: Precision::Absent, column_statistics: columns }))
    }
}

/// Owned rows `(key, value)` of a view, in the order the scan yields them.
type Rows<K, V> = Box<dyn Iterator<Item = (K, V)> + Send>;

/// Whether `value` is in `set` (`None`: unrestricted).
fn contains(set: &Option<Values>, value: Option<&str>) -> bool {
    match set {
        None => true,
        Some(set) => value.is_some_and(|v| set.contains(v)),
    }
}

/// Rows of a tree-keyed map: looked up when `keys` is set, else every row
/// (a consuming iterator over an O(1) clone of the map: it copies the rows of
/// one part of the map, a shard of its base or a layer, at a time). `keep` skips rows.
fn tree_rows<V>(
    map: &LayeredMap<Id, V>,
    keys: Option<Values>,
    keep: impl Fn(&V) -> bool + Send + 'static,
) -> Rows<Id, V>
where
    V: Clone + Send + Sync + 'static,
{
    let map = map.clone();
    match keys {
        Some(keys) => Box::new(
            keys.into_iter()
                .filter_map(move |k| map.get_key_value(k.as_str()).map(|(k, v)| (k.clone(), v.clone())))
                .filter(move |(_, v)| keep(v)),
        ),
        None => Box::new(map.into_rows().filter(move |(_, v)| keep(v))),
    }
}

/// The rows of `agent` in `agent_activity`, by day.
fn agent_days<'a, V>(
    map: &'a imbl::OrdMap<(Id, i32), V>,
    agent: &str,
) -> impl Iterator<Item = (&'a (Id, i32), &'a V)> + 'a {
    let agent = Id::from(agent);
    map.range((agent.clone(), i32::MIN)..=(agent, i32::MAX))
}

/// The batches of one scan (see the module docs).
/// Rows are owned values `R` (a view's row, or an `Arc` of it) borrowed as the `V` its columns read.
struct ViewStream<K: 'static, V: 'static, R: 'static = V> {
    rows: Rows<K, R>,
    columns: Vec<ViewColumn<K, V>>,
    projection: Option<Vec<usize>>,
    watermark: Option<i64>,
    schema: SchemaRef,
    /// The batch last yielded.
    reservation: MemoryReservation,
    baseline: BaselineMetrics,
    counter: Option<prometheus::IntCounter>,
    /// Yield to the runtime before the next batch.
    yield_next: bool,
    done: bool,
}

impl<K: 'static, V: 'static, R: Borrow<V> + 'static> ViewStream<K, V, R> {
    fn next_batch(&mut self) -> DfResult<Option<RecordBatch>> {
        let _timer = self.baseline.elapsed_compute().timer();
        let chunk: Vec<(K, R)> = self.rows.by_ref().take(BATCH_ROWS).collect();
        if chunk.is_empty() {
            return Ok(None);
        }
        let rows: Vec<(&K, &V)> = chunk.iter().map(|(k, v)| (k, v.borrow())).collect();
        let batch = view_rows_batch(&self.columns, &rows, self.watermark, self.projection.as_deref())
            .with_schema(self.schema.clone())?;
        // The batch replaces the previous one in the pool: what the consumer keeps of that,
        // it has reserved itself.
        self.reservation.try_resize(batch.get_array_memory_size())?;
        if let Some(counter) = &self.counter {
            counter.inc_by(batch.num_rows() as u64);
        }
        Ok(Some(batch))
    }
}

impl<K: 'static, V: 'static, R: Borrow<V> + 'static> Stream for ViewStream<K, V, R> {
    type Item = DfResult<RecordBatch>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        if this.yield_next {
            // Let the runtime run the statement's timer and cancel before the next batch.
            this.yield_next = false;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        let next = this.next_batch();
        match &next {
            Ok(Some(_)) => this.yield_next = true,
            _ => {
                this.done = true;
                this.reservation.free();
            }
        }
        this.baseline.record_poll(Poll::Ready(next.transpose()))
    }
}

impl<K: 'static, V: 'static, R: Borrow<V> + 'static> RecordBatchStream for ViewStream<K, V, R> {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }
}
