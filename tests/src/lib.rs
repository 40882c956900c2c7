//! TreeAI integration tests: one crate, one module per area.
//!
//! - [`naive`]: the independent batch reference implementation of the spec.
//! - `equivalence`: the incremental dataflow against `naive` over random inputs,
//!   orders, batch boundaries and worker counts.
//! - `validation`: every rule of DOMAIN §2, accepted and rejected.
//! - `backfill`: the `treeai` binary end to end.
//! - `cluster`: clusters of `treeai run` processes on loopback reading Kafka: views on every
//!   process, kill -9 of one process, rescale through checkpoints.
//! - `fuzz`: seeded mutations of valid inputs against the event parser, HTTP and the Postgres
//!   port: no panic, every request answered, the process still running.
//! - `ingest`: `POST /v1/events` into the local ingest log, through a kill -9.
//! - `kafka`: Kafka in and out against a real broker (Tansu), with kcat.
//! - `lake`: the Parquet lake on local disk and on S3 (moto).
//! - `lifecycle`: SIGTERM, a second signal, a worker panic, a stalled dataflow and `/healthz`.
//! - `otlp`: spans exported with `--otlp-endpoint` to a local OTLP/HTTP receiver, in the trace
//!   of the request's `traceparent`.
//! - `scale`: `treeai scale plan` and `apply --dry-run` as a user runs them, with a real
//!   Prometheus scraping a running pipeline for the emergency triggers.
//! - `security`: TLS, SCRAM logins, bearer tokens and roles, the audit log.
//! - `sql`: the SQL endpoint of `treeai run` with psql, psycopg and HTTP.
//! - `webhook`: critical alerts to a local HTTP receiver (PagerDuty/Slack JSON), retries,
//!   at-least-once across a kill -9, dead letters.
//! - `sqllogic`: SQL behaviour from `data/sql/*.slt` files through the engine.
//! - `sql_stream`: scans of a 1M-row view stream (memory, the memory pool,
//!   cancel, `EXPLAIN`), on a catalog built without the dataflow.

pub mod common;
pub mod naive;

#[cfg(test)]
mod backfill;
#[cfg(test)]
mod cluster;
#[cfg(test)]
mod equivalence;
#[cfg(test)]
mod fuzz;
#[cfg(test)]
mod ingest;
#[cfg(test)]
mod kafka;
#[cfg(test)]
mod lake;
#[cfg(test)]
mod lifecycle;
#[cfg(test)]
mod otlp;
#[cfg(test)]
mod prometheus;
#[cfg(test)]
mod recovery;
#[cfg(test)]
mod scale;
#[cfg(test)]
mod security;
#[cfg(test)]
mod sql;
#[cfg(test)]
mod sql_stream;
#[cfg(test)]
mod sqllogic;
#[cfg(test)]
mod validation;
#[cfg(test)]
mod webhook;
