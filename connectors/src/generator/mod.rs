//! The built-in event generator: realistic TreeAI input as raw NDJSON bytes.
//!
//! A [`Generator`] simulates one city-scale urban forest spread over the three
//! primary regions (`us-east`, `eu-west`, `ap-southeast`):
//!
//! * **the tree registry** — first one `tree` event per tree, all at the start
//!   time (the city's existing inventory: these events do not advance event
//!   time, and the live source emits them unpaced), then rare updates
//!   (growth, re-surveyed baselines) and, very rarely, a removal
//!   (`"deleted": true`) followed later by a re-registration;
//! * **IoT sensors** — four per tree (`tilt_deg`, `sway_hz`,
//!   `soil_moisture_pct`, `wind_gust_ms`), the bulk of the stream, with small
//!   out-of-order jitter and a few very late readings;
//! * **field agents** — AFISS assessments with TRAQ ratings, defects and notes,
//!   some later revised or withdrawn; their activity follows the [`Season`];
//! * **weather** — storm episodes that hit one region for tens of minutes of
//!   event time, raising gusts and soil moisture and making weak trees lean and
//!   sway, so that TreeScores fall into `critical` and recover afterwards;
//! * optionally **bad input** of every kind listed in DOMAIN.md §2.4.
//!
//! The generator never sleeps: it produces events as fast as it is asked, with
//! event times advancing at `rate` events per second. Pacing to wall-clock time
//! is the caller's job. For a given `(config, shard, shards)` the byte sequence
//! is fully deterministic; tree attributes and the weather depend only on the
//! seed, so the shards of one configuration describe one consistent world.
//!
//! This file holds the public API and the main loop (the `Iterator` impl); the
//! parts of the simulation live in the submodules:
//!
//! * `world` — the trees (reference data, per-tree state) and registry events;
//! * `sensors` — sensor readings;
//! * `agents` — field agents: assessments, revisions and withdrawals;
//! * `weather` — storms and the regional weather;
//! * `schedule` — events scheduled for later event time (the pending queue);
//! * `malformed` — corrupting valid events into bad input;
//! * `json` — the allocation-free JSON writers.

mod agents;
mod json;
mod malformed;
mod schedule;
mod sensors;
mod weather;
mod world;

#[cfg(test)]
mod tests;

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fmt;
use std::str::FromStr;

use rand::{Rng, SeedableRng};
use rand_pcg::Pcg64Mcg;
use treeai_dataflows::event::EventKind;

use self::malformed::Bad;
use self::schedule::Pending;
use self::weather::{RegionEnv, Weather};
use self::world::TreeState;

// ---------------------------------------------------------------------------
// Public API
// ---------------------------------------------------------------------------

/// The operating season, which sets how busy the field agents are and how
/// often storms come (OPERATIONS.md, "Seasonal scaling").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Season {
    /// Spring and summer: 200% of the normal assessment activity.
    Peak,
    /// Autumn: the normal activity (100%).
    Moderate,
    /// Winter: 30% of the normal activity.
    Low,
    /// Storms and backlog: 500% of the normal activity, and storms are frequent.
    Emergency,
}

impl Season {
    /// All seasons, in the order of the OPERATIONS.md table.
    pub const ALL: [Season; 4] = [Season::Peak, Season::Moderate, Season::Low, Season::Emergency];

    /// The lower-case name (`peak`, `moderate`, `low`, `emergency`).
    pub fn as_str(self) -> &'static str {
        match self {
            Season::Peak => "peak",
            Season::Moderate => "moderate",
            Season::Low => "low",
            Season::Emergency => "emergency",
        }
    }

    /// Assessment activity relative to normal: peak 2, moderate 1, low 0.3,
    /// emergency 5.
    pub fn activity_multiplier(self) -> f64 {
        match self {
            Season::Peak => 2.0,
            Season::Moderate => 1.0,
            Season::Low => 0.3,
            Season::Emergency => 5.0,
        }
    }
}

impl fmt::Display for Season {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error of parsing a [`Season`] from a string.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown season {0:?} (expected one of: peak, moderate, low, emergency)")]
pub struct ParseSeasonError(pub String);

impl FromStr for Season {
    type Err = ParseSeasonError;

    /// Parses `peak`, `moderate`, `low` or `emergency` (case-insensitive).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        Season::ALL
            .into_iter()
            .find(|season| season.as_str().eq_ignore_ascii_case(t))
            .ok_or_else(|| ParseSeasonError(s.to_string()))
    }
}

/// Generator settings (the flags of `treeai produce` and the embedded default
/// source of `treeai run`).
#[derive(Clone, Debug)]
pub struct GeneratorConfig {
    /// Number of trees in the whole population (all shards together), with ids
    /// `T-000000`, `T-000001`, … Each tree carries four sensors. Default 10,000.
    pub trees: u64,
    /// Normal number of field agents (`agent-01`, `agent-02`, …). The season
    /// multiplies it: at most `agents × multiplier` distinct agents are active
    /// (30 normally gives 60 at peak, 9 in low season, 150 in an emergency),
    /// and the share of assessments in the stream scales the same way.
    /// 0 disables assessments. Default 30.
    pub agents: u32,
    /// Events per second of *event time* for the whole population (each of
    /// `shards` shards advances at `rate / shards`). It sets how fast the
    /// timestamps advance, not how fast events are produced: the generator
    /// never sleeps. Must be positive and finite. Default 10,000.
    pub rate: f64,
    /// Season: assessment activity (peak ×2, moderate ×1, low ×0.3,
    /// emergency ×5) and storm frequency (frequent in an emergency).
    /// Default moderate.
    pub season: Season,
    /// Share of malformed events in [0, 1], each of them one of the kinds of bad
    /// input of DOMAIN.md §2.4 (invalid JSON, missing field, wrong type, unknown
    /// enum value, out-of-range or non-finite number, bad id, bad timestamp,
    /// over-long string, too many defects, message over 64 KiB). Malformed events
    /// are inserted between the valid ones. Default 0.
    pub bad_fraction: f64,
    /// Random seed; the same configuration, seed and sharding give the same
    /// bytes. Default 1.
    pub seed: u64,
    /// Event time of the first event, in epoch milliseconds.
    /// Default 1795564800000 (2026-11-25T00:00:00Z).
    pub start_ms: i64,
}

impl Default for GeneratorConfig {
    fn default() -> Self {
        GeneratorConfig {
            trees: 10_000,
            agents: 30,
            rate: 10_000.0,
            season: Season::Moderate,
            bad_fraction: 0.0,
            seed: 1,
            start_ms: 1_795_564_800_000,
        }
    }
}

/// One generated event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GeneratedEvent {
    /// The kind of event (for a malformed event, the kind it pretends to be).
    /// It selects the Kafka topic: `treeai.trees`, `treeai.assessments` or
    /// `treeai.readings`.
    pub kind: EventKind,
    /// The Kafka key: the `tree_id` the event is about (for a malformed event,
    /// the tree id of the valid event it was derived from).
    pub key: String,
    /// The event's own timestamp in epoch ms: `ts` of a reading, `observed_at`
    /// of an assessment, `updated_at` of a tree; the current event time for a
    /// malformed event.
    pub ts_ms: i64,
    /// One JSON object (or, if malformed, whatever bytes were produced), without
    /// a trailing newline and never containing a raw newline.
    pub json: Vec<u8>,
}

/// An infinite, deterministic stream of [`GeneratedEvent`]s (see the module
/// documentation).
pub struct Generator {
    cfg: GeneratorConfig,
    shard: u32,
    shards: u32,
    rng: Pcg64Mcg,
    trees: Vec<TreeState>,
    count: u64,
    ms_per_event: f64,
    bad_fraction: f64,
    p_assess: f64,
    p_registry: f64,
    registry_cursor: usize,
    active_agents: u32,
    agent_counters: Vec<u64>,
    pending: BinaryHeap<Reverse<Pending>>,
    pending_seq: u64,
    weather: Weather,
    env: [RegionEnv; 3],
    next_tick_ms: i64,
    buf: Vec<u8>,
    /// Malformed events generated so far (used by the tests).
    malformed: u64,
    /// How the last malformed event was corrupted (used by the tests).
    #[cfg_attr(not(test), allow(dead_code))]
    last_bad: Option<Bad>,
}

/// What an event step wrote into `Generator::buf`: its kind, the index of the
/// tree it is about, and its own timestamp (epoch ms).
type Emitted = (EventKind, u64, i64);

/// Share of timestamps written as integer epoch ms instead of RFC 3339.
const INT_TS_SHARE: f64 = 0.2;

impl Generator {
    /// Shard `shard` of `shards` (0-based): generates only the trees with
    /// index % shards == shard, at rate/shards, so that the union of all shards
    /// is the whole population; deterministic for (config, shard, shards).
    ///
    /// Tree attributes and the weather (storms) depend only on the seed, so
    /// every shard of one configuration sees the same trees and storms. A shard
    /// that owns no tree (`trees <= shard`) yields no events.
    ///
    /// # Panics
    /// If `shards == 0`, `shard >= shards`, or `rate` is not a positive finite
    /// number.
    pub fn new(config: GeneratorConfig, shard: u32, shards: u32) -> Generator {
        assert!(shards > 0, "generator: shards must be at least 1");
        assert!(shard < shards, "generator: shard {shard} out of range 0..{shards}");
        assert!(
            config.rate.is_finite() && config.rate > 0.0,
            "generator: rate must be a positive number of events per second, got {}",
            config.rate
        );
        let bad_fraction = if config.bad_fraction.is_nan() { 0.0 } else { config.bad_fraction.clamp(0.0, 1.0) };

        let (s, n) = (shard as u64, shards as u64);
        let local = if config.trees > s { (config.trees - s).div_ceil(n) } else { 0 };
        let trees: Vec<TreeState> = (0..local).map(|j| TreeState::new(config.seed, s + j * n)).collect();

        let (active_agents, p_assess) = agents::activity(&config);

        let rng = Pcg64Mcg::seed_from_u64(mix64(config.seed ^ mix64(0x5EED_0000_0000 ^ (n << 32 | s))));
        let weather = Weather::new(config.seed, config.season, config.start_ms);
        let ms_per_event = 1000.0 * shards as f64 / config.rate;
        Generator {
            shard,
            shards,
            rng,
            trees,
            count: 0,
            ms_per_event,
            bad_fraction,
            p_assess,
            p_registry: world::REGISTRY_UPDATE_SHARE,
            registry_cursor: 0,
            active_agents,
            agent_counters: vec![0; active_agents as usize],
            pending: BinaryHeap::new(),
            pending_seq: 0,
            weather,
            env: [RegionEnv::default(); 3],
            next_tick_ms: i64::MIN,
            buf: Vec::with_capacity(512),
            malformed: 0,
            last_bad: None,
            cfg: config,
        }
    }

    /// Number of events generated so far (named so as not to clash with
    /// [`Iterator::count`]).
    pub fn generated(&self) -> u64 {
        self.count
    }

    /// The trees of this shard: its first events register them (the inventory, at `start_ms`).
    pub fn local_trees(&self) -> u64 {
        self.trees.len() as u64
    }

    fn tree_index(&self, local: usize) -> u64 {
        self.shard as u64 + local as u64 * self.shards as u64
    }

    fn unit(&mut self) -> f64 {
        self.rng.random::<f64>()
    }

    fn ts_as_int(&mut self) -> bool {
        self.unit() < INT_TS_SHARE
    }
}

impl Iterator for Generator {
    type Item = GeneratedEvent;

    fn next(&mut self) -> Option<GeneratedEvent> {
        if self.trees.is_empty() {
            return None;
        }
        // The registry comes first as the city's existing inventory, all at `start_ms`: its
        // events do not advance event time, so sensors report from the first second.
        let clock = self.count - self.registry_cursor as u64;
        let now = self.cfg.start_ms + (clock as f64 * self.ms_per_event) as i64;
        if now >= self.next_tick_ms {
            self.tick(now);
        }
        self.buf.clear();
        let (kind, idx, ts_ms) = if self.bad_fraction > 0.0 && self.unit() < self.bad_fraction {
            self.malformed_event(now)
        } else if self.registry_cursor < self.trees.len() {
            let j = self.registry_cursor;
            self.registry_cursor += 1;
            self.emit_tree(j, now)
        } else if let Some(due) = self.pop_due(now) {
            self.run_pending(due, now)
        } else {
            let u = self.unit();
            if u < self.p_assess {
                self.assessment(now)
            } else if u < self.p_assess + self.p_registry {
                self.registry_update(now)
            } else {
                self.reading(now)
            }
        };
        self.count += 1;
        Some(GeneratedEvent { kind, key: json::tree_key(idx), ts_ms, json: self.buf.clone() })
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        if self.trees.is_empty() {
            (0, Some(0))
        } else {
            (usize::MAX, None)
        }
    }
}

/// SplitMix64 finalizer, to derive independent seeds.
fn mix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}
