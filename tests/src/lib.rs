//! TreeAI integration tests: one crate, one module per area.
//!
//! - [`naive`]: the independent batch reference implementation of the spec.
//! - `equivalence`: the incremental dataflow against `naive` over random inputs,
//!   orders, batch boundaries and worker counts.
//! - `validation`: every rule of DOMAIN §2, accepted and rejected.
//! - `backfill`: the `treeai` binary end to end.

pub mod common;
pub mod naive;

#[cfg(test)]
mod backfill;
#[cfg(test)]
mod equivalence;
#[cfg(test)]
mod validation;
