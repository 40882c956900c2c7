//! The lake tables as the schema `lake` (`lake.readings`, `lake.assessments`,
//! `lake.trees`, `lake.score_changes`, `lake.alerts`, `lake.deadletter`).
//!
//! Each is a DataFusion `ListingTable` over the table's folder under the lake
//! root, with the Hive partition columns of INTERFACES.md as `Utf8` columns
//! (`date` as `YYYY-MM-DD`, `hour` as `HH`). Pushdown: projection, and
//! filters on `date`/`hour` prune whole partitions before any file is opened
//! (partition pruning); other filters are pushed into the Parquet scan
//! (row-group statistics). Files are listed at every scan, so files landed
//! since the last query are seen (the engine turns DataFusion's list-files
//! cache off: its entries never expire).

use crate::error::SqlError;
use arrow::datatypes::DataType;
use datafusion::catalog::{MemorySchemaProvider, SchemaProvider};
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl};
use datafusion::execution::runtime_env::RuntimeEnv;
use std::sync::Arc;
use treeai_schema::lake::{open_store, Table};

/// Builds the `lake` schema over the lake at `url`, registering its object
/// store in `runtime` when it is not on the local disk.
pub fn lake_schema(
    url: &str,
    options: &[(String, String)],
    runtime: &RuntimeEnv,
) -> Result<Arc<dyn SchemaProvider>, SqlError> {
    let internal = |e: String| SqlError::Internal(format!("lake {url}: {e}"));
    let (store, prefix) = open_store(url, options).map_err(|e| internal(e.to_string()))?;
    let base = if url.contains("://") && !url.starts_with("file://") {
        let parsed = url::Url::parse(url).map_err(|e| internal(e.to_string()))?;
        let root = url::Url::parse(&format!("{}://{}", parsed.scheme(), parsed.host_str().unwrap_or_default()))
            .map_err(|e| internal(e.to_string()))?;
        runtime.register_object_store(&root, store);
        format!("{}/{}", root.as_str().trim_end_matches('/'), prefix.as_ref())
    } else {
        let dir = url.strip_prefix("file://").unwrap_or(url);
        let abs = std::fs::canonicalize(dir).map_err(|e| internal(e.to_string()))?;
        format!("file://{}", abs.display())
    };
    let schema = MemorySchemaProvider::new();
    for table in Table::ALL {
        if !url.contains("://") || url.starts_with("file://") {
            let dir = url.strip_prefix("file://").unwrap_or(url);
            std::fs::create_dir_all(std::path::Path::new(dir).join(table.name()))
                .map_err(|e| internal(e.to_string()))?;
        }
        let table_url = ListingTableUrl::parse(format!("{}/{}/", base.trim_end_matches('/'), table.name()))
            .map_err(|e| internal(e.to_string()))?;
        let options = ListingOptions::new(Arc::new(ParquetFormat::default()))
            .with_file_extension(".parquet")
            .with_table_partition_cols(
                table.partition_columns().iter().map(|c| (c.to_string(), DataType::Utf8)).collect(),
            );
        let config = ListingTableConfig::new(table_url).with_listing_options(options).with_schema(table.schema());
        let provider = ListingTable::try_new(config).map_err(|e| internal(e.to_string()))?;
        schema.register_table(table.name().to_string(), Arc::new(provider)).map_err(|e| internal(e.to_string()))?;
    }
    Ok(Arc::new(schema))
}
