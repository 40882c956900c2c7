//! The IoT sensors: four per tree, whose readings follow the tree's baselines
//! and the regional weather, with small out-of-order jitter and a few very
//! late arrivals.

use rand::Rng;
use treeai_dataflows::event::EventKind;

use super::json::write_reading;
use super::{Emitted, Generator};

/// The metrics, in sensor order; `METRIC_SUFFIX` ends the sensor ids, and
/// values are written with `METRIC_DECIMALS` decimals.
pub(super) const METRICS: [&str; 4] = ["tilt_deg", "sway_hz", "soil_moisture_pct", "wind_gust_ms"];
pub(super) const METRIC_SUFFIX: [u8; 4] = [b't', b's', b'm', b'w'];
pub(super) const METRIC_DECIMALS: [usize; 4] = [2, 3, 2, 2];

/// Readings arrive up to this much behind the current event time…
pub(super) const JITTER_MS: i64 = 2_500;
/// …and this share arrives minutes to 2 hours late.
const LATE_SHARE: f64 = 0.001;

impl Generator {
    /// The next value of `metric` of the sensors of tree `j`.
    pub(super) fn reading_value(&mut self, j: usize, metric: usize) -> f64 {
        let r1 = self.rng.random::<f64>();
        let r2 = self.rng.random::<f64>();
        let t = &mut self.trees[j];
        let env = self.env[t.region as usize];
        let w = t.weakness as f64;
        match metric {
            0 => {
                // Tilt: baseline plus a slow mean-reverting drift; in a storm weak
                // trees lean with the gusts.
                t.tilt_drift = (t.tilt_drift * 0.995 + (r1 as f32 - 0.5) * 0.04).clamp(-0.8, 0.8);
                let storm = env.storm * w * 12.0 * (0.6 + 0.4 * r2);
                (t.base_tilt + t.tilt_drift as f64 + storm + (r2 - 0.5) * 0.1).clamp(0.0, 90.0)
            }
            1 => {
                // Sway: natural frequency, a little lower for weakened trees and
                // clearly lower for weak trees in a storm.
                let f = t.base_sway * (1.0 - 0.12 * w) * (1.0 - 0.35 * w * env.storm) * (1.0 + (r1 + r2 - 1.0) * 0.03);
                f.clamp(0.05, 20.0)
            }
            2 => {
                let base = (env.soil + t.soil_offset as f64).clamp(10.0, 80.0);
                (base + env.rain + (r1 - 0.5) * 2.0).clamp(0.0, 100.0)
            }
            _ => {
                let normal = (env.wind * (0.6 + 1.2 * r1 * r1)).min(15.0);
                let storm = env.storm * (20.0 + 25.0 * r2);
                normal.max(storm).clamp(0.0, 120.0)
            }
        }
    }

    pub(super) fn reading(&mut self, now: i64) -> Emitted {
        let pick = self.rng.random_range(0..self.trees.len() * 4);
        let (j, metric) = (pick >> 2, pick & 3);
        let lag = if self.unit() < LATE_SHARE {
            self.rng.random_range(120_000..=7_200_000)
        } else {
            self.rng.random_range(0..=JITTER_MS)
        };
        let ts = now - lag;
        let value = self.reading_value(j, metric);
        let int = self.ts_as_int();
        let idx = self.tree_index(j);
        write_reading(&mut self.buf, idx, metric, value, ts, int);
        (EventKind::Reading, idx, ts)
    }
}
