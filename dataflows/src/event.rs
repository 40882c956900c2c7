//! The three kinds of input events (DOMAIN §2) in their validated form.

use compact_str::CompactString;
use serde::{Deserialize, Serialize};
use std::cmp::Ordering;
use std::fmt;
use std::hash::{Hash, Hasher};

/// An identifier (`tree_id`, `agent_id`, ...): 1–64 chars of `[A-Za-z0-9_.:-]`, stored inline.
pub type Id = CompactString;

/// A finite `f64` with a total order, so that it can live in dataflow records.
#[derive(Clone, Copy, Default, Serialize, Deserialize)]
pub struct F64(pub f64);

impl F64 {
    fn key(self) -> u64 {
        // Normalise -0.0 to 0.0 so that equal numbers are equal records.
        let x = if self.0 == 0.0 { 0.0f64 } else { self.0 };
        x.to_bits()
    }
}
impl PartialEq for F64 {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}
impl Eq for F64 {}
impl PartialOrd for F64 {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for F64 {
    fn cmp(&self, other: &Self) -> Ordering {
        if self == other {
            Ordering::Equal
        } else {
            self.0.total_cmp(&other.0)
        }
    }
}
impl Hash for F64 {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.key().hash(state);
    }
}
impl fmt::Debug for F64 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Where an event came from: the source order used for tie-breaks (DOMAIN §2.1, §2.2)
/// and, later, the positions stored in checkpoints.
///
/// `source` is the file's index in the input list (or a Kafka topic-partition, or a
/// generator shard); `offset` the 1-based line in that file (or the Kafka offset, or
/// the generator's sequence number). Source order is `(source, offset)`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Position {
    /// File index, topic-partition id or generator shard.
    pub source: u32,
    /// Line number, Kafka offset or sequence number.
    pub offset: u64,
}

macro_rules! string_enum {
    ($(#[$m:meta])* $name:ident { $($variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        pub enum $name { $($variant),+ }
        impl $name {
            /// Every value, in order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];
            /// The spec's spelling.
            pub fn as_str(self) -> &'static str { match self { $($name::$variant => $text),+ } }
            /// Parses the spec's spelling.
            pub fn parse(s: &str) -> Option<Self> { match s { $($text => Some($name::$variant),)+ _ => None } }
            /// The allowed spellings, for error messages.
            pub fn expected() -> &'static str { concat!("one of", $(" ", $text),+) }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result { f.write_str(self.as_str()) }
        }
    };
}

string_enum!(
    /// The regions of the seed design.
    Region { UsEast = "us-east", EuWest = "eu-west", ApSoutheast = "ap-southeast" }
);
string_enum!(
    /// Who is near the tree (target occupancy, ISA TRAQ).
    Occupancy { Rare = "rare", Occasional = "occasional", Frequent = "frequent", Constant = "constant" }
);
string_enum!(
    /// Likelihood of failure (TRAQ).
    Failure { Improbable = "improbable", Possible = "possible", Probable = "probable", Imminent = "imminent" }
);
string_enum!(
    /// Likelihood of impacting a target (TRAQ).
    Impact { VeryLow = "very_low", Low = "low", Medium = "medium", High = "high" }
);
string_enum!(
    /// Consequences of failure (TRAQ).
    Consequences { Negligible = "negligible", Minor = "minor", Significant = "significant", Severe = "severe" }
);
string_enum!(
    /// Matrix 1: likelihood of failure and impact.
    FailureImpact { Unlikely = "unlikely", SomewhatLikely = "somewhat_likely", Likely = "likely", VeryLikely = "very_likely" }
);
string_enum!(
    /// Matrix 2: the risk rating.
    RiskRating { Low = "low", Moderate = "moderate", High = "high", Extreme = "extreme" }
);
string_enum!(
    /// Kinds of defect an agent records.
    DefectKind {
        Decay = "decay", Crack = "crack", Lean = "lean", Deadwood = "deadwood", RootDamage = "root_damage",
        Cavity = "cavity", Canker = "canker", IncludedBark = "included_bark", Hanger = "hanger",
    }
);
string_enum!(
    /// Sensor metrics.
    Metric { TiltDeg = "tilt_deg", SwayHz = "sway_hz", SoilMoisturePct = "soil_moisture_pct", WindGustMs = "wind_gust_ms" }
);
string_enum!(
    /// Event kinds (the `type` field).
    EventKind { Tree = "tree", Assessment = "assessment", Reading = "reading" }
);

/// A registry upsert (DOMAIN §2.1), validated.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TreeEvent {
    /// Epoch ms; orders versions (with `pos` for ties).
    pub updated_at: i64,
    /// Source position; the tie-break among equal `updated_at`.
    pub pos: Position,
    /// The tree.
    pub tree_id: Id,
    /// `true` removes the tree; then the fields below may be absent (`None`/defaults).
    pub deleted: bool,
    /// Region (absent only on deletions).
    pub region: Option<Region>,
    /// Species.
    pub species: Option<CompactString>,
    /// Latitude (0 on deletions without it).
    pub lat: F64,
    /// Longitude (0 on deletions without it).
    pub lon: F64,
    /// Diameter at breast height, cm.
    pub dbh_cm: Option<F64>,
    /// Height, m.
    pub height_m: Option<F64>,
    /// Target occupancy.
    pub target_occupancy: Option<Occupancy>,
    /// Baseline tilt, degrees (default 0).
    pub baseline_tilt_deg: F64,
    /// Baseline sway frequency, Hz.
    pub baseline_sway_hz: Option<F64>,
}

/// An AFISS assessment (DOMAIN §2.2), validated. Defects are kept as their
/// summary, which is all the views use; `notes` only go to the lake.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct AssessmentEvent {
    /// Assessment id.
    pub assessment_id: Id,
    /// Revision (default 1).
    pub revision: u32,
    /// Source position; the tie-break among equal revisions.
    pub pos: Position,
    /// The tree assessed.
    pub tree_id: Id,
    /// The agent.
    pub agent_id: Id,
    /// Epoch ms.
    pub observed_at: i64,
    /// TRAQ likelihood of failure.
    pub likelihood_of_failure: Failure,
    /// TRAQ likelihood of impact.
    pub likelihood_of_impact: Impact,
    /// TRAQ consequences.
    pub consequences: Consequences,
    /// Number of defects.
    pub defect_count: u32,
    /// Sum of defect severities.
    pub defect_severity_sum: u32,
    /// Greatest defect severity (0 if none).
    pub max_defect_severity: u32,
    /// Crown dieback, percent (default 0).
    pub crown_dieback_pct: F64,
    /// `true` withdraws the assessment.
    pub withdrawn: bool,
}

/// A sensor reading (DOMAIN §2.3), validated.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Reading {
    /// The tree.
    pub tree_id: Id,
    /// The sensor.
    pub sensor_id: Id,
    /// Which metric.
    pub metric: Metric,
    /// The value, inside the metric's range.
    pub value: F64,
    /// Event time, epoch ms.
    pub ts: i64,
}

/// A validated event of any kind.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// Registry upsert.
    Tree(TreeEvent),
    /// Assessment, with its `notes` (lake only).
    Assessment(AssessmentEvent, Option<String>),
    /// Sensor reading.
    Reading(Reading),
}

impl Event {
    /// The tree this event is about (the Kafka key).
    pub fn tree_id(&self) -> &Id {
        match self {
            Event::Tree(t) => &t.tree_id,
            Event::Assessment(a, _) => &a.tree_id,
            Event::Reading(r) => &r.tree_id,
        }
    }
}

impl Metric {
    /// Whether `v` lies in the metric's range (DOMAIN §2.3).
    pub fn in_range(self, v: f64) -> bool {
        match self {
            Metric::TiltDeg => (0.0..=90.0).contains(&v),
            Metric::SwayHz => v > 0.0 && v <= 20.0,
            Metric::SoilMoisturePct => (0.0..=100.0).contains(&v),
            Metric::WindGustMs => (0.0..=120.0).contains(&v),
        }
    }
    /// The range as the spec writes it.
    pub fn range(self) -> &'static str {
        match self {
            Metric::TiltDeg => "[0, 90]",
            Metric::SwayHz => "(0, 20]",
            Metric::SoilMoisturePct => "[0, 100]",
            Metric::WindGustMs => "[0, 120]",
        }
    }
}
