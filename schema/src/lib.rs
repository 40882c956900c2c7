//! The table registry: every live view and every lake table defined once.
//!
//! - [`views`]: the six live views (DOMAIN §4) — columns with their Arrow
//!   types, how rows of the catalog's maps become a `RecordBatch`, the
//!   dead-letter file shape. Used by the SQL providers, `backfill`'s Parquet
//!   output and the tests.
//! - [`lake`]: the lake tables (INTERFACES.md, Lake) — names, Arrow schemas,
//!   Hive partition layout — and [`lake::open_store`], the object store of a
//!   lake URL. Used by the lake sink (connectors) and the `lake` SQL schema.
//!
//! Depends on `treeai-dataflows`, arrow and object_store only, so the SQL
//! crate can read the registry without the connectors (librdkafka, the
//! generator).

pub mod lake;
pub mod views;

/// Errors of the registry.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    /// A lake URL or its options cannot be turned into an object store (the
    /// user's configuration; retrying does not help).
    #[error("lake {url}: {message}")]
    Store {
        /// The lake URL as given.
        url: String,
        /// What is wrong.
        message: String,
    },
}
