//! The weather: storm episodes that hit one region at a time, and slow cycles
//! of wind and soil moisture. A function of the seed and event time only, so
//! every shard sees the same weather.

use rand::{Rng, SeedableRng};
use rand_pcg::Pcg64Mcg;
use treeai_dataflows::time::HOUR_MS;

use super::{mix64, Generator, Season};

/// One minute in milliseconds.
pub(super) const MIN_MS: i64 = 60_000;

/// The weather of one region at one second of event time.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct RegionEnv {
    /// Storm strength 0 (none) … 1 (full).
    pub(super) storm: f64,
    /// Extra soil moisture from storm rain, in percentage points.
    pub(super) rain: f64,
    /// Typical wind speed (m/s) that ordinary gusts scale from.
    pub(super) wind: f64,
    /// Regional soil moisture level (%), before the rain.
    pub(super) soil: f64,
    /// 1 during a storm, decaying over hours afterwards.
    pub(super) recent: f64,
}

#[derive(Clone, Copy, Debug)]
struct Storm {
    region: usize,
    start: i64,
    end: i64,
    peak: f64,
}

/// Storms and slow weather cycles: a function of the seed and event time only,
/// identical in every shard.
pub(super) struct Weather {
    rng: Pcg64Mcg,
    storms: Vec<Storm>,
    next_start: i64,
    mean_gap_ms: f64,
    duration_ms: (i64, i64),
    wind_bias: f64,
    soil_bias: f64,
    phase: [f64; 6],
}

impl Weather {
    pub(super) fn new(seed: u64, season: Season, start_ms: i64) -> Weather {
        let mut rng = Pcg64Mcg::seed_from_u64(mix64(seed ^ 0x57_0E7E_A7E2));
        let (mean_gap_h, duration_ms, wind_bias, soil_bias) = match season {
            Season::Peak => (1.5, (10 * MIN_MS, 45 * MIN_MS), -0.5, -6.0),
            Season::Moderate => (2.0, (10 * MIN_MS, 45 * MIN_MS), 0.0, 0.0),
            Season::Low => (3.0, (15 * MIN_MS, 60 * MIN_MS), 1.5, 8.0),
            Season::Emergency => (0.33, (20 * MIN_MS, 90 * MIN_MS), 2.0, 6.0),
        };
        let mean_gap_ms = mean_gap_h * HOUR_MS as f64;
        let phase = std::array::from_fn(|_| rng.random::<f64>() * std::f64::consts::TAU);
        let next_start = if season == Season::Emergency {
            start_ms + rng.random_range(0..5 * MIN_MS)
        } else {
            start_ms + exp_sample(&mut rng, mean_gap_ms)
        };
        Weather { rng, storms: Vec::new(), next_start, mean_gap_ms, duration_ms, wind_bias, soil_bias, phase }
    }

    /// The weather of the three regions at event time `t` (non-decreasing
    /// from call to call).
    pub(super) fn env_at(&mut self, t: i64) -> [RegionEnv; 3] {
        while self.next_start <= t {
            let region = self.rng.random_range(0..3);
            let start = self.next_start;
            let end = start + self.rng.random_range(self.duration_ms.0..=self.duration_ms.1);
            let peak = self.rng.random_range(0.85..1.0);
            self.storms.push(Storm { region, start, end, peak });
            self.next_start = start + exp_sample(&mut self.rng, self.mean_gap_ms).max(MIN_MS);
        }
        self.storms.retain(|s| s.end + 24 * HOUR_MS > t);
        let hours = t as f64 / HOUR_MS as f64;
        std::array::from_fn(|r| {
            let mut env = RegionEnv {
                wind: 4.5 + self.wind_bias + 2.5 * (std::f64::consts::TAU * hours / 9.0 + self.phase[r]).sin(),
                soil: 38.0 + self.soil_bias + 8.0 * (std::f64::consts::TAU * hours / 72.0 + self.phase[3 + r]).sin(),
                ..RegionEnv::default()
            };
            for s in self.storms.iter().filter(|s| s.region == r && s.start <= t) {
                if t < s.end {
                    let p = (t - s.start) as f64 / (s.end - s.start) as f64;
                    env.storm = env.storm.max(s.peak * (p / 0.2).min((1.0 - p) / 0.2).min(1.0));
                    env.rain += 35.0 * s.peak * ((t - s.start) as f64 / (15 * MIN_MS) as f64).min(1.0);
                    env.recent = 1.0;
                } else {
                    let decay = (-((t - s.end) as f64) / (6 * HOUR_MS) as f64).exp();
                    env.rain += 35.0 * s.peak * decay;
                    env.recent = env.recent.max(decay);
                }
            }
            env.rain = env.rain.min(45.0);
            env
        })
    }
}

fn exp_sample(rng: &mut Pcg64Mcg, mean: f64) -> i64 {
    (-(1.0 - rng.random::<f64>()).ln() * mean) as i64
}

impl Generator {
    /// Recomputes the regional weather once per second of event time.
    pub(super) fn tick(&mut self, now: i64) {
        let start = self.cfg.start_ms;
        let aligned = start + (now - start).div_euclid(1000) * 1000;
        self.env = self.weather.env_at(aligned);
        self.next_tick_ms = aligned + 1000;
    }
}
