//! TreeAI dataflows: events and their validation, the incremental views on
//! timely + differential dataflow, the shared view catalog and the runtime
//! that drives them. Depends on no other crate of the project.

pub mod alerts;
pub mod checkpoint;
pub mod event;
pub mod layered;
pub mod parse;
pub mod rating;
pub mod reduce;
pub mod runtime;
pub mod source;
pub mod store;
pub mod time;
pub mod views;

/// The names of the six views (DOMAIN §4), in catalog order.
pub const VIEW_NAMES: [&str; 6] =
    ["trees", "afiss_current", "sensor_windows", "tree_scores", "region_summary", "agent_activity"];

/// One of the six live views (DOMAIN §4). Their Arrow shape is defined once in
/// the table registry (`treeai-schema`); their rows in [`store::Views`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum View {
    /// `trees`
    Trees,
    /// `afiss_current`
    Afiss,
    /// `sensor_windows`
    Windows,
    /// `tree_scores`
    Scores,
    /// `region_summary`
    Regions,
    /// `agent_activity`
    Agents,
}

impl View {
    /// All views, in [`VIEW_NAMES`] order.
    pub const ALL: [View; 6] = [View::Trees, View::Afiss, View::Windows, View::Scores, View::Regions, View::Agents];

    /// The view's name (its SQL table and Parquet folder).
    pub fn name(self) -> &'static str {
        VIEW_NAMES[self as usize]
    }

    /// The view with this name.
    pub fn from_name(name: &str) -> Option<View> {
        View::ALL.into_iter().find(|v| v.name() == name)
    }

    /// The first column of the view's key (DOMAIN §4): `tree_id`, `region` for
    /// `region_summary`, `agent_id` for `agent_activity` (whose key is `(agent_id, day)`).
    pub fn key_column(self) -> &'static str {
        match self {
            View::Regions => "region",
            View::Agents => "agent_id",
            _ => "tree_id",
        }
    }
}
