//! TreeAI dataflows: events and their validation, the incremental views on
//! timely + differential dataflow, the shared view catalog and the runtime
//! that drives them. Depends on no other crate of the project.

pub mod event;
pub mod parse;
pub mod rating;
pub mod runtime;
pub mod source;
pub mod store;
pub mod time;
pub mod views;

/// The names of the six views (DOMAIN §4), in catalog order.
pub const VIEW_NAMES: [&str; 6] =
    ["trees", "afiss_current", "sensor_windows", "tree_scores", "region_summary", "agent_activity"];
