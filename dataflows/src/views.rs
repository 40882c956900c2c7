//! The view dataflows (DOMAIN §4): each a pure function from input collections
//! to an output collection, in the style of differential-dataflow's `bfs`.
//!
//! Inputs are insert-only event collections (every version ever received);
//! "current" and "live" are computed by reductions, so a correction that arrives
//! late or out of order retracts exactly what it replaces. The reductions are
//! [`HashReduce::hash_reduce`]: `reduce`'s contract for rounds (a total order), with each
//! key's present in a hash map instead of arrangements (see [`crate::reduce`]). Readings are the
//! exception: the runtime's window driver inserts the aggregates of each tree's
//! readings per pane of the window ([`PaneAgg`]) as the watermark makes readings
//! visible, and replaces or retracts them as readings leave the window (see
//! [`crate::time`]).

use crate::event::{AssessmentEvent, Id, Metric, RiskRating, TreeEvent, F64};
use crate::rating::{failure_impact, risk_rating, tree_score, Score, ScoreInputs};
use crate::reduce::HashReduce;
use crate::time::day_of;
use differential_dataflow::difference::{Abelian, IsZero, Monoid, Multiply, Semigroup};
use differential_dataflow::lattice::Lattice;
use differential_dataflow::VecCollection;
use serde::{Deserialize, Serialize};
use timely::order::TotalOrder;
use timely::progress::Timestamp;

/// A collection keyed by `K` with `isize` multiplicities.
pub type Keyed<'s, T, K, V> = VecCollection<'s, T, (K, V), isize>;

/// A row of `afiss_current` (key: tree_id).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct AfissRow {
    /// The current assessment.
    pub assessment: AssessmentEvent,
    /// Matrix 1.
    pub failure_impact: crate::event::FailureImpact,
    /// Matrix 2.
    pub risk_rating: RiskRating,
    /// Live assessments of the tree.
    pub assessments_total: u32,
}

/// A row of `sensor_windows` (key: tree_id); `window_end` is the watermark of the read time.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct WindowRow {
    /// Greatest tilt in the window.
    pub tilt_max: Option<F64>,
    /// Least sway frequency.
    pub sway_min: Option<F64>,
    /// Greatest gust.
    pub gust_max: Option<F64>,
    /// Mean soil moisture.
    pub soil_mean: Option<F64>,
    /// Readings of all four metrics.
    pub readings: u64,
}

/// A row of `tree_scores` (key: tree_id).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ScoreRow {
    /// The tree's region.
    pub region: crate::event::Region,
    /// The score and its parts.
    pub score: Score,
}

/// A row of `agent_activity` (key: (agent_id, day number)).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct AgentDayRow {
    /// Live assessments by the agent observed that day.
    pub assessments: u64,
    /// Distinct trees among them.
    pub distinct_trees: u64,
    /// Those rated high or extreme.
    pub high_or_extreme: u64,
}

/// The aggregates of `region_summary`, kept as a difference type so that a
/// tree's change updates its region in O(1) instead of rescanning the region.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RegionAgg {
    /// Registered trees.
    pub trees: i64,
    /// Registered trees with a current assessment.
    pub assessed_trees: i64,
    /// Sum of scores × 10 (scores have one decimal, so this is exact).
    pub score_x10_sum: i64,
    /// Trees per band: good, fair, poor, critical.
    pub bands: [i64; 4],
    /// Trees per risk rating: low, moderate, high, extreme.
    pub risks: [i64; 4],
}

impl RegionAgg {
    /// Mean score of the region's trees.
    pub fn mean_score(&self) -> f64 {
        if self.trees == 0 {
            0.0
        } else {
            self.score_x10_sum as f64 / 10.0 / self.trees as f64
        }
    }
    fn of(score: &Score) -> Self {
        let mut agg = RegionAgg {
            trees: 1,
            assessed_trees: i64::from(score.risk_rating.is_some()),
            score_x10_sum: (score.score.0 * 10.0).round() as i64,
            ..Default::default()
        };
        agg.bands[score.band as usize] = 1;
        if let Some(r) = score.risk_rating {
            agg.risks[r as usize] = 1;
        }
        agg
    }
}

impl IsZero for RegionAgg {
    fn is_zero(&self) -> bool {
        *self == RegionAgg::default()
    }
}
impl Semigroup for RegionAgg {
    fn plus_equals(&mut self, rhs: &Self) {
        self.trees += rhs.trees;
        self.assessed_trees += rhs.assessed_trees;
        self.score_x10_sum += rhs.score_x10_sum;
        for i in 0..4 {
            self.bands[i] += rhs.bands[i];
            self.risks[i] += rhs.risks[i];
        }
    }
}
impl Monoid for RegionAgg {
    fn zero() -> Self {
        RegionAgg::default()
    }
}
impl Abelian for RegionAgg {
    fn negate(&mut self) {
        *self = self.multiply(&-1);
    }
}
impl Multiply<isize> for RegionAgg {
    type Output = RegionAgg;
    fn multiply(self, rhs: &isize) -> RegionAgg {
        let k = *rhs as i64;
        let mut out = self;
        out.trees *= k;
        out.assessed_trees *= k;
        out.score_x10_sum *= k;
        for i in 0..4 {
            out.bands[i] *= k;
            out.risks[i] *= k;
        }
        out
    }
}

/// Current registry entries: for each tree the version with the greatest
/// `(updated_at, source position)`, unless that version is a deletion.
pub fn current_trees<'s, T>(versions: Keyed<'s, T, Id, TreeEvent>) -> Keyed<'s, T, Id, TreeEvent>
where
    T: Timestamp + Lattice + TotalOrder,
{
    // Values arrive sorted; TreeEvent orders by (updated_at, pos) first, so the last one wins.
    versions.hash_reduce("CurrentTrees", |_tree, versions, out| {
        let (latest, _) = versions[versions.len() - 1];
        if !latest.deleted {
            out.push((latest.clone(), 1));
        }
    })
}

/// Live assessments keyed by tree: for each assessment id the revision with the
/// greatest `(revision, source position)`, unless it withdraws the assessment.
pub fn live_assessments<'s, T>(revisions: Keyed<'s, T, Id, AssessmentEvent>) -> Keyed<'s, T, Id, AssessmentEvent>
where
    T: Timestamp + Lattice + TotalOrder,
{
    // Per assessment id: AssessmentEvent orders by (assessment_id, revision, pos) first, so the last one wins.
    revisions
        .hash_reduce("LiveAssessments", |_id, revisions, out| {
            let (latest, _) = revisions[revisions.len() - 1];
            if !latest.withdrawn {
                out.push((latest.clone(), 1));
            }
        })
        // Re-key by the tree (a revision may move an assessment to another tree).
        .map(|(_id, a)| (a.tree_id.clone(), a))
}

/// `afiss_current`: per tree, the live assessment with the greatest
/// `(observed_at, assessment_id)`, rated with the TRAQ matrices, and the count of live ones.
pub fn afiss_current<'s, T>(live: Keyed<'s, T, Id, AssessmentEvent>) -> Keyed<'s, T, Id, AfissRow>
where
    T: Timestamp + Lattice + TotalOrder,
{
    live.hash_reduce("AfissCurrent", |_tree, live, out| {
        let total: isize = live.iter().map(|(_, n)| *n).sum();
        let current = live
            .iter()
            .map(|(a, _)| *a)
            .max_by(|x, y| (x.observed_at, &x.assessment_id).cmp(&(y.observed_at, &y.assessment_id)));
        if let Some(a) = current {
            let fi = failure_impact(a.likelihood_of_failure, a.likelihood_of_impact);
            out.push((
                AfissRow {
                    assessment: a.clone(),
                    failure_impact: fi,
                    risk_rating: risk_rating(fi, a.consequences),
                    assessments_total: total as u32,
                },
                1,
            ));
        }
    })
}

/// The aggregates of a set of one tree's readings: of those in one pane of the window
/// (a slice of event time [`PANE_MS`] long) inside the window driver, and of all its
/// readings in the window on one worker as the dataflow's input to `sensor_windows`. The
/// driver keeps the readings themselves and recomputes a tree's row when the window's edge
/// passes its oldest, so the window is exact to the millisecond.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PaneAgg {
    /// Greatest tilt.
    pub tilt_max: Option<F64>,
    /// Least sway frequency.
    pub sway_min: Option<F64>,
    /// Greatest gust.
    pub gust_max: Option<F64>,
    /// Sum of the soil moisture readings in fixed point (units of 2^-60; see [`PaneAgg::add`]),
    /// an `i128` kept as its high and low halves: an `i128` field would align every pane row
    /// (in the window driver and the dataflow) to 16 bytes. Read it with [`PaneAgg::soil_sum`].
    soil_sum_halves: (i64, u64),
    /// Soil moisture readings.
    pub soil_n: u32,
    /// Readings of all four metrics.
    pub readings: u32,
}

/// The length of a pane of the window, ms (a divisor of the hour).
pub const PANE_MS: i64 = 60_000;

impl PaneAgg {
    /// Adds one reading. The soil sum is an integer (the value times 2^60, exact for
    /// values of at least 2^-8, truncated below), so sums are associative: the mean is
    /// the same bit for bit whatever the order of the readings, the panes and the
    /// workers that read them (floating-point sums are not).
    pub fn add(&mut self, metric: Metric, value: F64) {
        self.readings += 1;
        match metric {
            Metric::TiltDeg => self.tilt_max = self.tilt_max.max(Some(value)),
            Metric::SwayHz => self.sway_min = Some(self.sway_min.map_or(value, |m| m.min(value))),
            Metric::WindGustMs => self.gust_max = self.gust_max.max(Some(value)),
            Metric::SoilMoisturePct => {
                let sum = self.soil_sum() + (value.0 * SOIL_SCALE) as i128;
                self.soil_sum_halves = ((sum >> 64) as i64, sum as u64);
                self.soil_n += 1;
            }
        }
    }

    /// Adds the readings of `other` (of the same tree, disjoint from these).
    pub fn merge(&mut self, other: &PaneAgg) {
        self.readings += other.readings;
        self.tilt_max = self.tilt_max.max(other.tilt_max);
        self.sway_min = match (self.sway_min, other.sway_min) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.gust_max = self.gust_max.max(other.gust_max);
        let sum = self.soil_sum() + other.soil_sum();
        self.soil_sum_halves = ((sum >> 64) as i64, sum as u64);
        self.soil_n += other.soil_n;
    }

    /// The sum of the soil moisture readings in fixed point (units of 2^-60).
    pub fn soil_sum(&self) -> i128 {
        (i128::from(self.soil_sum_halves.0) << 64) | i128::from(self.soil_sum_halves.1)
    }
}

/// The fixed-point scale of [`PaneAgg::soil_sum`]: 2^60.
const SOIL_SCALE: f64 = (1u64 << 60) as f64;

/// A tree's `sensor_windows` row from its window rows (one per worker holding readings of
/// the tree: mostly one, as a source partitions by tree), if it has readings.
fn window_row<'a>(rows: impl Iterator<Item = (&'a PaneAgg, isize)>) -> Option<WindowRow> {
    let mut all = PaneAgg::default();
    for (row, n) in rows {
        for _ in 0..n {
            all.merge(row);
        }
    }
    (all.readings > 0).then(|| WindowRow {
        tilt_max: all.tilt_max,
        sway_min: all.sway_min,
        gust_max: all.gust_max,
        soil_mean: (all.soil_n > 0).then(|| F64(all.soil_sum() as f64 / SOIL_SCALE / f64::from(all.soil_n))),
        readings: u64::from(all.readings),
    })
}

/// One tree's inputs to its window and score, tagged by where they come from: only the
/// fields the score reads (the reduction keeps these parts, one row per tree and part, so
/// whole registry rows and assessments here cost hundreds of bytes per tree at a city's scale).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
enum TreePart {
    /// Region, baseline tilt, baseline sway.
    Tree(crate::event::Region, F64, Option<F64>),
    /// Risk rating, defect severity sum, crown dieback.
    Afiss(RiskRating, u32, F64),
    /// The aggregates of the tree's readings in the window on one worker.
    Window(PaneAgg),
}

/// The two rows a tree's reduction yields.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
enum TreeOut {
    Window(WindowRow),
    Score(ScoreRow),
}

/// `sensor_windows` and `tree_scores`, in one reduction per tree:
///
/// - `sensor_windows`: per tree, aggregates of the readings currently in the window,
///   combined from the window rows of the workers holding readings of it;
/// - `tree_scores`: the TreeScore of every registered tree from its registry entry, its
///   current assessment (if any) and its window (if any).
///
/// One reduction, not two: at a city's scale a reading's tree is rarely touched by another
/// reading of its round, so each stage costs a hash lookup in a table of a million trees and
/// an exchange per reading; the window row is a fold over one or two rows either way.
pub fn windows_and_scores<'s, T>(
    trees: Keyed<'s, T, Id, TreeEvent>,
    afiss: Keyed<'s, T, Id, AfissRow>,
    window: Keyed<'s, T, Id, PaneAgg>,
) -> (Keyed<'s, T, Id, WindowRow>, Keyed<'s, T, Id, ScoreRow>)
where
    T: Timestamp + Lattice + TotalOrder,
{
    // A three-way left outer join from trees, done as one reduction over the tagged parts;
    // the window's row whether or not the tree is registered.
    let out = trees
        .flat_map(|(id, t)| t.region.map(|r| (id, TreePart::Tree(r, t.baseline_tilt_deg, t.baseline_sway_hz))))
        .concat(afiss.map(|(id, a)| {
            let part = TreePart::Afiss(a.risk_rating, a.assessment.defect_severity_sum, a.assessment.crown_dieback_pct);
            (id, part)
        }))
        .concat(window.map(|(id, w)| (id, TreePart::Window(w))))
        .hash_reduce("WindowsAndScores", |_tree, parts, out| {
            let mut inputs = ScoreInputs::default();
            let mut region = None;
            for (part, n) in parts {
                match part {
                    TreePart::Tree(r, tilt, sway) if *n > 0 => {
                        region = Some(*r);
                        inputs.baseline_tilt_deg = tilt.0;
                        inputs.baseline_sway_hz = sway.map(|b| b.0);
                    }
                    TreePart::Afiss(risk, severity, dieback) if *n > 0 => {
                        inputs.risk = Some(*risk);
                        inputs.defect_severity_sum = *severity;
                        inputs.crown_dieback_pct = dieback.0;
                    }
                    _ => {}
                }
            }
            let windows = parts.iter().filter_map(|(p, n)| match p {
                TreePart::Window(w) => Some((w, *n)),
                _ => None,
            });
            if let Some(w) = window_row(windows) {
                inputs.tilt_max = w.tilt_max.map(|v| v.0);
                inputs.sway_min = w.sway_min.map(|v| v.0);
                inputs.gust_max = w.gust_max.map(|v| v.0);
                inputs.soil_mean = w.soil_mean.map(|v| v.0);
                out.push((TreeOut::Window(w), 1));
            }
            if let Some(region) = region {
                out.push((TreeOut::Score(ScoreRow { region, score: tree_score(&inputs) }), 1));
            }
        });
    let windows = out.clone().flat_map(|(id, o)| match o {
        TreeOut::Window(w) => Some((id, w)),
        TreeOut::Score(_) => None,
    });
    let scores = out.flat_map(|(id, o)| match o {
        TreeOut::Score(s) => Some((id, s)),
        TreeOut::Window(_) => None,
    });
    (windows, scores)
}

/// `region_summary`: per region, counts and mean score of its registered trees.
pub fn region_summary<'s, T>(scores: Keyed<'s, T, Id, ScoreRow>) -> Keyed<'s, T, crate::event::Region, RegionAgg>
where
    T: Timestamp + Lattice + TotalOrder,
{
    // Each tree contributes its aggregate as a difference; `count` sums them per region.
    scores.explode(|(_tree, row)| Some((row.region, RegionAgg::of(&row.score)))).count()
}

/// `agent_activity`: per (agent, UTC day of `observed_at`), the agent's live assessments.
pub fn agent_activity<'s, T>(live: Keyed<'s, T, Id, AssessmentEvent>) -> Keyed<'s, T, (Id, i32), AgentDayRow>
where
    T: Timestamp + Lattice + TotalOrder,
{
    live.map(|(tree, a)| {
        let fi = failure_impact(a.likelihood_of_failure, a.likelihood_of_impact);
        let high = matches!(risk_rating(fi, a.consequences), RiskRating::High | RiskRating::Extreme);
        ((a.agent_id.clone(), day_of(a.observed_at)), (tree, a.assessment_id, high))
    })
    .hash_reduce("AgentActivity", |_agent_day, assessments, out| {
        // Values sorted by tree first, so distinct trees are runs.
        let mut row = AgentDayRow { assessments: 0, distinct_trees: 0, high_or_extreme: 0 };
        let mut last_tree: Option<&Id> = None;
        for ((tree, _id, high), n) in assessments {
            if *n <= 0 {
                continue;
            }
            row.assessments += *n as u64;
            if *high {
                row.high_or_extreme += *n as u64;
            }
            if last_tree != Some(tree) {
                row.distinct_trees += 1;
                last_tree = Some(tree);
            }
        }
        if row.assessments > 0 {
            out.push((row, 1));
        }
    })
}
