//! Alerts (DOMAIN §5): one per transition into or out of the `critical` band
//! in the `tree_scores` change stream of one completed dataflow time.

use crate::event::{Id, Region};
use crate::rating::Band;
use crate::views::ScoreRow;

/// Which way a band changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AlertKind {
    /// The tree's band became `critical`.
    Critical,
    /// The tree's band left `critical`.
    Resolved,
}

impl AlertKind {
    /// The spec's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            AlertKind::Critical => "critical",
            AlertKind::Resolved => "resolved",
        }
    }
}

/// An alert (DOMAIN §5).
#[derive(Clone, Debug, PartialEq)]
pub struct Alert {
    /// critical or resolved.
    pub kind: AlertKind,
    /// The tree.
    pub tree_id: String,
    /// Its region (the last known one if it was unregistered).
    pub region: Option<Region>,
    /// The new score; `None` when the tree was unregistered.
    pub score: Option<f64>,
    /// The new band; `None` when the tree was removed from the registry.
    pub band: Option<Band>,
    /// The previous band, `None` on first scoring.
    pub previous_band: Option<Band>,
    /// The watermark of the change, epoch ms.
    pub watermark: Option<i64>,
    /// Name of the largest penalty of the new score (of the old one if unregistered).
    pub top_penalty: &'static str,
    /// The tree's alert number (1, 2, ...): with `tree_id`, the alert's id, the same when a
    /// restored run derives the alert again (Kafka's copy is then suppressed). Set by the egress.
    pub seq: u32,
}

impl Alert {
    /// The alert's id: `tree_id/seq`.
    pub fn id(&self) -> String {
        format!("{}/{}", self.tree_id, self.seq)
    }
}

impl Alert {
    /// The new band as the spec spells it: `unregistered` when the tree was removed.
    pub fn band_str(&self) -> &'static str {
        self.band.map_or("unregistered", Band::as_str)
    }
}

/// Turns the `tree_scores` changes of one completed time into alerts, in
/// `tree_id` order. Within a time each tree has at most one row retracted
/// (`diff` < 0) and one inserted (`diff` > 0).
pub fn alerts_of(changes: &mut [(Id, ScoreRow, isize)], watermark: Option<i64>) -> Vec<Alert> {
    changes.sort_by(|a, b| a.0.cmp(&b.0));
    let mut out = Vec::new();
    for per_tree in changes.chunk_by(|a, b| a.0 == b.0) {
        let old = per_tree.iter().find(|c| c.2 < 0).map(|c| &c.1);
        let new = per_tree.iter().find(|c| c.2 > 0).map(|c| &c.1);
        let was = old.map(|o| o.score.band);
        let is = new.map(|n| n.score.band);
        let kind = match (was, is) {
            (w, Some(Band::Critical)) if w != Some(Band::Critical) => AlertKind::Critical,
            (Some(Band::Critical), i) if i != Some(Band::Critical) => AlertKind::Resolved,
            _ => continue,
        };
        let basis = new.or(old);
        out.push(Alert {
            kind,
            tree_id: per_tree[0].0.to_string(),
            region: basis.map(|r| r.region),
            score: new.map(|n| n.score.score.0),
            band: is,
            previous_band: was,
            watermark,
            top_penalty: basis.map_or("none", |r| r.score.top_penalty()),
            seq: 0,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rating::{tree_score, ScoreInputs};

    fn row(inputs: ScoreInputs) -> ScoreRow {
        ScoreRow { region: Region::EuWest, score: tree_score(&inputs) }
    }

    #[test]
    fn one_alert_per_transition_into_or_out_of_critical() {
        use crate::event::RiskRating;
        // High risk (base 35) with one defect: 33, critical. Unassessed with a 30 tilt penalty: 45, poor.
        let critical = row(ScoreInputs { risk: Some(RiskRating::High), defect_severity_sum: 1, ..Default::default() });
        let poor = row(ScoreInputs { tilt_max: Some(7.0), ..Default::default() });
        let good = row(ScoreInputs { risk: Some(RiskRating::Low), ..Default::default() });
        let worse = row(ScoreInputs { risk: Some(RiskRating::High), defect_severity_sum: 3, ..Default::default() });
        assert_eq!(
            (critical.score.band.as_str(), poor.score.band.as_str(), good.score.band.as_str()),
            ("critical", "poor", "good")
        );
        let id = |s: &str| Id::from(s);
        let mut changes = vec![
            (id("T-1"), poor.clone(), -1),
            (id("T-1"), critical.clone(), 1), // poor -> critical
            (id("T-2"), critical.clone(), 1), // first scoring, critical
            (id("T-3"), critical.clone(), -1),
            (id("T-3"), good.clone(), 1), // critical -> good
            (id("T-4"), poor.clone(), -1),
            (id("T-4"), good.clone(), 1),      // poor -> good: no alert
            (id("T-5"), critical.clone(), -1), // unregistered while critical
            (id("T-6"), critical.clone(), -1),
            (id("T-6"), worse, 1), // critical -> critical: no alert
        ];
        let alerts = alerts_of(&mut changes, Some(42));
        let got: Vec<(&str, &str, &str, Option<&str>)> = alerts
            .iter()
            .map(|a| (a.tree_id.as_str(), a.kind.as_str(), a.band_str(), a.previous_band.map(Band::as_str)))
            .collect();
        assert_eq!(
            got,
            vec![
                ("T-1", "critical", "critical", Some("poor")),
                ("T-2", "critical", "critical", None),
                ("T-3", "resolved", "good", Some("critical")),
                ("T-5", "resolved", "unregistered", Some("critical")),
            ]
        );
        assert!(alerts.iter().all(|a| a.watermark == Some(42)));
        assert_eq!(alerts[0].top_penalty, "defect");
        assert_eq!(alerts[0].score, Some(33.0));
        assert_eq!(alerts[2].top_penalty, "none");
    }
}
