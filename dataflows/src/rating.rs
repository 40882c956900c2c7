//! The ISA TRAQ matrices (DOMAIN §2.2) and the TreeScore formula (DOMAIN §4.4).

use crate::event::{Consequences, Failure, FailureImpact, Impact, RiskRating, F64};
use serde::{Deserialize, Serialize};
use std::fmt;

/// Matrix 1: likelihood of failure × likelihood of impact.
pub fn failure_impact(f: Failure, i: Impact) -> FailureImpact {
    use FailureImpact::*;
    let row = match f {
        Failure::Imminent => [Unlikely, SomewhatLikely, Likely, VeryLikely],
        Failure::Probable => [Unlikely, Unlikely, SomewhatLikely, Likely],
        Failure::Possible => [Unlikely, Unlikely, Unlikely, SomewhatLikely],
        Failure::Improbable => [Unlikely, Unlikely, Unlikely, Unlikely],
    };
    row[i as usize]
}

/// Matrix 2: (failure & impact) × consequences → risk rating.
pub fn risk_rating(fi: FailureImpact, c: Consequences) -> RiskRating {
    use RiskRating::*;
    let row = match fi {
        FailureImpact::VeryLikely => [Low, Moderate, High, Extreme],
        FailureImpact::Likely => [Low, Moderate, High, High],
        FailureImpact::SomewhatLikely => [Low, Low, Moderate, Moderate],
        FailureImpact::Unlikely => [Low, Low, Low, Low],
    };
    row[c as usize]
}

/// TreeScore bands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Band {
    /// score >= 80
    Good,
    /// score >= 60
    Fair,
    /// score >= 40
    Poor,
    /// otherwise
    Critical,
}

impl Band {
    /// The band of a (rounded) score.
    pub fn of(score: f64) -> Band {
        if score >= 80.0 {
            Band::Good
        } else if score >= 60.0 {
            Band::Fair
        } else if score >= 40.0 {
            Band::Poor
        } else {
            Band::Critical
        }
    }
    /// The spec's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Band::Good => "good",
            Band::Fair => "fair",
            Band::Poor => "poor",
            Band::Critical => "critical",
        }
    }
}

impl fmt::Display for Band {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the score of one tree depends on.
#[derive(Clone, Debug, Default)]
pub struct ScoreInputs {
    /// Risk rating of the current assessment, `None` if unassessed.
    pub risk: Option<RiskRating>,
    /// Sum of defect severities of the current assessment.
    pub defect_severity_sum: u32,
    /// Crown dieback of the current assessment.
    pub crown_dieback_pct: f64,
    /// Registry baseline tilt (default 0).
    pub baseline_tilt_deg: f64,
    /// Registry baseline sway, if known.
    pub baseline_sway_hz: Option<f64>,
    /// Window aggregates (None: no reading of that metric in the window).
    pub tilt_max: Option<f64>,
    /// Minimum sway in the window.
    pub sway_min: Option<f64>,
    /// Maximum gust in the window.
    pub gust_max: Option<f64>,
    /// Mean soil moisture in the window.
    pub soil_mean: Option<f64>,
}

/// A TreeScore and its parts (DOMAIN §4.4).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Score {
    /// clamp(base − penalties, 0, 100) rounded to one decimal.
    pub score: F64,
    /// Band of `score`.
    pub band: Band,
    /// Risk rating, `None` = 'unassessed'.
    pub risk_rating: Option<RiskRating>,
    /// Base from the risk rating.
    pub base: F64,
    /// min(20, 2 × defect severity sum).
    pub defect_penalty: F64,
    /// 0.2 × crown dieback.
    pub dieback_penalty: F64,
    /// Tilt beyond baseline + 1°.
    pub tilt_penalty: F64,
    /// Sway drop beyond 10 % of baseline.
    pub sway_penalty: F64,
    /// Storm: gusts ≥ 20 m/s, and wet soil.
    pub storm_penalty: F64,
}

/// Names of the penalties, in the order used to break ties for `top_penalty`.
pub const PENALTY_NAMES: [&str; 5] = ["defect", "dieback", "tilt", "sway", "storm"];

impl Score {
    /// The penalties in [`PENALTY_NAMES`] order.
    pub fn penalties(&self) -> [f64; 5] {
        [self.defect_penalty.0, self.dieback_penalty.0, self.tilt_penalty.0, self.sway_penalty.0, self.storm_penalty.0]
    }
    /// The name of the largest penalty (first in [`PENALTY_NAMES`] order on ties), `none` if all are 0.
    pub fn top_penalty(&self) -> &'static str {
        let p = self.penalties();
        let mut best = None;
        for (i, &v) in p.iter().enumerate() {
            if v > 0.0 && best.is_none_or(|b: usize| v > p[b]) {
                best = Some(i);
            }
        }
        best.map_or("none", |i| PENALTY_NAMES[i])
    }
    /// `risk_rating` as the view shows it.
    pub fn risk_rating_str(&self) -> &'static str {
        self.risk_rating.map_or("unassessed", RiskRating::as_str)
    }
}

/// Computes the TreeScore of one tree.
pub fn tree_score(x: &ScoreInputs) -> Score {
    let base = match x.risk {
        Some(RiskRating::Low) => 90.0,
        Some(RiskRating::Moderate) => 65.0,
        Some(RiskRating::High) => 35.0,
        Some(RiskRating::Extreme) => 10.0,
        None => 75.0,
    };
    let (defect, dieback) = match x.risk {
        Some(_) => ((2.0 * f64::from(x.defect_severity_sum)).min(20.0), 0.2 * x.crown_dieback_pct),
        None => (0.0, 0.0),
    };
    let tilt = x.tilt_max.map_or(0.0, |t| (5.0 * (t - x.baseline_tilt_deg - 1.0).max(0.0)).min(30.0));
    let sway = match (x.sway_min, x.baseline_sway_hz) {
        (Some(s), Some(b)) if b > 0.0 => (50.0 * ((b - s) / b - 0.10).max(0.0)).min(15.0),
        _ => 0.0,
    };
    let storm = match x.gust_max {
        Some(g) if g >= 20.0 => 10.0 + if x.soil_mean.is_some_and(|s| s >= 40.0) { 10.0 } else { 0.0 },
        _ => 0.0,
    };
    let raw = (base - defect - dieback - tilt - sway - storm).clamp(0.0, 100.0);
    let score = (raw * 10.0).round() / 10.0;
    Score {
        score: F64(score),
        band: Band::of(score),
        risk_rating: x.risk,
        base: F64(base),
        defect_penalty: F64(defect),
        dieback_penalty: F64(dieback),
        tilt_penalty: F64(tilt),
        sway_penalty: F64(sway),
        storm_penalty: F64(storm),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// All 64 cells of the two matrices, written out as the spec's tables.
    #[test]
    fn traq_matrices_all_cells() {
        let m1 = [
            ("imminent", ["unlikely", "somewhat_likely", "likely", "very_likely"]),
            ("probable", ["unlikely", "unlikely", "somewhat_likely", "likely"]),
            ("possible", ["unlikely", "unlikely", "unlikely", "somewhat_likely"]),
            ("improbable", ["unlikely", "unlikely", "unlikely", "unlikely"]),
        ];
        let impacts = ["very_low", "low", "medium", "high"];
        for (f, row) in m1 {
            for (i, want) in impacts.iter().zip(row) {
                let got = failure_impact(Failure::parse(f).unwrap(), Impact::parse(i).unwrap());
                assert_eq!(got.as_str(), want, "{f} x {i}");
            }
        }
        let m2 = [
            ("very_likely", ["low", "moderate", "high", "extreme"]),
            ("likely", ["low", "moderate", "high", "high"]),
            ("somewhat_likely", ["low", "low", "moderate", "moderate"]),
            ("unlikely", ["low", "low", "low", "low"]),
        ];
        let cons = ["negligible", "minor", "significant", "severe"];
        for (fi, row) in m2 {
            for (c, want) in cons.iter().zip(row) {
                let got = risk_rating(FailureImpact::parse(fi).unwrap(), Consequences::parse(c).unwrap());
                assert_eq!(got.as_str(), want, "{fi} x {c}");
            }
        }
    }

    #[test]
    fn worked_example_score() {
        let s = tree_score(&ScoreInputs {
            risk: Some(RiskRating::Moderate),
            defect_severity_sum: 4,
            crown_dieback_pct: 10.0,
            baseline_tilt_deg: 2.0,
            baseline_sway_hz: Some(0.5),
            tilt_max: Some(4.5),
            sway_min: Some(0.4),
            gust_max: Some(18.0),
            soil_mean: Some(41.0),
        });
        assert_eq!(s.score.0, 42.5);
        assert_eq!(s.band, Band::Poor);
        for (got, want) in s.penalties().iter().zip([8.0, 2.0, 7.5, 5.0, 0.0]) {
            assert!((got - want).abs() < 1e-9, "{:?}", s.penalties());
        }
        assert_eq!(s.top_penalty(), "defect");
    }

    #[test]
    fn penalty_caps_and_missing_inputs() {
        let unassessed =
            tree_score(&ScoreInputs { defect_severity_sum: 30, crown_dieback_pct: 100.0, ..Default::default() });
        assert_eq!((unassessed.base.0, unassessed.defect_penalty.0, unassessed.dieback_penalty.0), (75.0, 0.0, 0.0));
        assert_eq!(unassessed.risk_rating_str(), "unassessed");
        assert_eq!(unassessed.top_penalty(), "none");
        let capped = tree_score(&ScoreInputs {
            risk: Some(RiskRating::Low),
            defect_severity_sum: 11,
            tilt_max: Some(90.0),
            sway_min: Some(0.01),
            baseline_sway_hz: Some(1.0),
            ..Default::default()
        });
        assert_eq!(capped.defect_penalty.0, 20.0);
        assert_eq!(capped.tilt_penalty.0, 30.0);
        assert_eq!(capped.sway_penalty.0, 15.0);
        assert_eq!(capped.score.0, 25.0);
        assert_eq!(capped.band, Band::Critical);
        // No baseline sway: no sway penalty. Tilt exactly baseline + 1: no penalty.
        let s = tree_score(&ScoreInputs { sway_min: Some(0.01), tilt_max: Some(1.0), ..Default::default() });
        assert_eq!((s.sway_penalty.0, s.tilt_penalty.0), (0.0, 0.0));
        // Storm: gust exactly 20 counts; soil exactly 40 counts; soil missing does not.
        let st =
            |g, s| tree_score(&ScoreInputs { gust_max: Some(g), soil_mean: s, ..Default::default() }).storm_penalty.0;
        assert_eq!(st(19.99, Some(90.0)), 0.0);
        assert_eq!(st(20.0, Some(39.99)), 10.0);
        assert_eq!(st(20.0, Some(40.0)), 20.0);
        assert_eq!(st(45.0, None), 10.0);
        // Clamp at 0.
        let floor = tree_score(&ScoreInputs {
            risk: Some(RiskRating::Extreme),
            defect_severity_sum: 10,
            gust_max: Some(30.0),
            ..Default::default()
        });
        assert_eq!(floor.score.0, 0.0);
    }

    #[test]
    fn band_boundaries() {
        assert_eq!(Band::of(80.0), Band::Good);
        assert_eq!(Band::of(79.9), Band::Fair);
        assert_eq!(Band::of(60.0), Band::Fair);
        assert_eq!(Band::of(59.9), Band::Poor);
        assert_eq!(Band::of(40.0), Band::Poor);
        assert_eq!(Band::of(39.9), Band::Critical);
        // Rounding to one decimal happens before banding: 79.96 rounds to 80.0, good.
        let s = tree_score(&ScoreInputs { risk: Some(RiskRating::Low), crown_dieback_pct: 50.2, ..Default::default() });
        assert_eq!(s.score.0, 80.0);
        assert_eq!(s.band, Band::Good);
    }
}
