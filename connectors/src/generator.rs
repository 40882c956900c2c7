//! The built-in event generator: realistic TreeAI input as raw NDJSON bytes.
//!
//! A [`Generator`] simulates one city-scale urban forest spread over the three
//! primary regions (`us-east`, `eu-west`, `ap-southeast`):
//!
//! * **the tree registry** — first one `tree` event per tree, then rare updates
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

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;
use std::fmt;
use std::str::FromStr;

use rand::{Rng, SeedableRng};
use rand_pcg::Pcg64Mcg;
use serde_json::{Map, Value};

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

/// Which kind of event a [`GeneratedEvent`] is (or, for a malformed event,
/// pretends to be). It selects the Kafka topic: `treeai.trees`,
/// `treeai.assessments` or `treeai.readings`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// A tree registry upsert (`"type": "tree"`).
    Tree,
    /// An AFISS assessment record (`"type": "assessment"`).
    Assessment,
    /// A sensor reading (`"type": "reading"`).
    Reading,
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
}

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

        let mult = config.season.activity_multiplier();
        let active_agents = if config.agents == 0 { 0 } else { ((config.agents as f64 * mult).round() as u32).max(1) };
        let p_assess = if active_agents == 0 {
            0.0
        } else {
            (BASE_ASSESSMENT_SHARE * mult * config.agents as f64 / NORMAL_AGENTS).min(MAX_ASSESSMENT_SHARE)
        };

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
            p_registry: REGISTRY_UPDATE_SHARE,
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
            cfg: config,
        }
    }

    /// Number of events generated so far (named so as not to clash with
    /// [`Iterator::count`]).
    pub fn generated(&self) -> u64 {
        self.count
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

    /// Recomputes the regional weather once per second of event time.
    fn tick(&mut self, now: i64) {
        let start = self.cfg.start_ms;
        let aligned = start + (now - start).div_euclid(1000) * 1000;
        self.env = self.weather.env_at(aligned);
        self.next_tick_ms = aligned + 1000;
    }

    fn schedule(&mut self, due_ms: i64, what: PendingWhat) {
        if self.pending.len() >= MAX_PENDING {
            return;
        }
        self.pending_seq += 1;
        self.pending.push(Reverse(Pending { due_ms, seq: self.pending_seq, what }));
    }

    // -- trees ---------------------------------------------------------------

    fn emit_tree(&mut self, j: usize, now: i64) -> (EventKind, u64, i64) {
        let idx = self.tree_index(j);
        let int = self.ts_as_int();
        write_tree(&mut self.buf, idx, &self.trees[j], now, int, false);
        (EventKind::Tree, idx, now)
    }

    fn registry_update(&mut self, now: i64) -> (EventKind, u64, i64) {
        let j = self.rng.random_range(0..self.trees.len());
        let u = self.unit();
        let t = &mut self.trees[j];
        if t.deleted {
            // A removed tree shows up in the inventory again.
            t.deleted = false;
        } else if u < DELETE_SHARE {
            t.deleted = true;
            let delay = self.rng.random_range(60_000..=3_600_000);
            self.schedule(now + delay, PendingWhat::Reregister(j as u32));
        } else {
            // A re-survey: the tree has grown, baselines re-measured.
            t.dbh = (t.dbh + self.rng.random_range(0.1..1.5)).min(400.0);
            t.height = (t.height + self.rng.random_range(0.0..0.3)).min(60.0);
            t.base_tilt = (t.base_tilt + self.rng.random_range(-0.2..0.3)).clamp(0.0, 5.0);
            t.base_sway = (t.base_sway * self.rng.random_range(0.97..1.02)).clamp(0.3, 1.5);
            if self.rng.random::<f64>() < 0.2 {
                t.occupancy = pick_weighted(&mut self.rng, &OCCUPANCY_WEIGHTS) as u8;
            }
            if t.fields & F_SPECIES == 0 && self.rng.random::<f64>() < 0.5 {
                t.fields |= F_SPECIES; // species identified on the re-survey
            }
        }
        self.emit_tree(j, now)
    }

    fn reregister(&mut self, j: usize, now: i64) -> (EventKind, u64, i64) {
        let u = self.unit();
        let seed = self.rng.random::<u64>();
        let t = &mut self.trees[j];
        t.deleted = false;
        if u < 0.5 {
            // Replanted: a young tree at the same spot.
            let mut r = Pcg64Mcg::seed_from_u64(seed);
            t.dbh = r.random_range(4.0..12.0);
            t.height = r.random_range(2.0..5.0);
            t.base_tilt = r.random_range(0.0..0.8);
            t.base_sway = r.random_range(1.3..1.5);
            t.weakness = r.random_range(0.0..0.1);
            t.tilt_drift = 0.0;
            t.species = r.random_range(0..SPECIES[t.region as usize].len()) as u8;
            t.fields = F_ALL;
        }
        self.emit_tree(j, now)
    }

    // -- readings ------------------------------------------------------------

    fn reading_value(&mut self, j: usize, metric: usize) -> f64 {
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

    fn reading(&mut self, now: i64) -> (EventKind, u64, i64) {
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

    // -- assessments ---------------------------------------------------------

    fn pick_assessment_tree(&mut self) -> usize {
        let n = self.trees.len();
        for attempt in 0..4 {
            let j = self.rng.random_range(0..n);
            let t = &self.trees[j];
            let mut accept = 0.35 + 0.65 * t.weakness as f64;
            if self.env[t.region as usize].recent > 0.3 {
                accept += 0.5; // post-storm inspections
            }
            if attempt == 3 || self.unit() < accept {
                return j;
            }
        }
        unreachable!()
    }

    fn pick_agent(&mut self, region: u8) -> u32 {
        let a = self.active_agents;
        let r = region as u32;
        let in_region = if a > r { (a - r).div_ceil(3) } else { 0 };
        if in_region == 0 {
            self.rng.random_range(1..=a)
        } else {
            r + 3 * self.rng.random_range(0..in_region) + 1
        }
    }

    /// Fills the ratings of `rec` from the tree's condition and the weather.
    fn rate(&mut self, rec: &mut AssessmentRec) {
        let t = &self.trees[rec.tree as usize];
        let (w, occ, dbh) = (t.weakness as f64, t.occupancy as i32, t.dbh);
        let recent = self.env[t.region as usize].recent;
        let f = w + 0.25 * (self.unit() - 0.5) + 0.2 * recent;
        rec.lof = if f < 0.3 {
            0
        } else if f < 0.55 {
            1
        } else if f < 0.8 {
            2
        } else {
            3
        };
        let shift = match self.unit() {
            u if u < 0.25 => -1,
            u if u < 0.75 => 0,
            _ => 1,
        };
        rec.loi = (occ + shift).clamp(0, 3) as u8;
        let c = 0.5 * w + 0.25 * (dbh / 150.0).min(1.0) + 0.35 * self.unit();
        rec.cons = if c < 0.35 {
            0
        } else if c < 0.6 {
            1
        } else if c < 0.82 {
            2
        } else {
            3
        };
        let ndef = ((w * 4.0 + self.unit() * 1.2) as usize).min(4);
        rec.ndef = 0;
        while (rec.ndef as usize) < ndef {
            let kind = self.rng.random_range(0..DEFECT_KINDS.len()) as u8;
            if rec.defects[..rec.ndef as usize].iter().any(|d| d.0 == kind) {
                continue;
            }
            let sev = (1.0 + 3.0 * w + (self.unit() - 0.5) * 2.0).round().clamp(1.0, 5.0) as u8;
            rec.defects[rec.ndef as usize] = (kind, sev);
            rec.ndef += 1;
        }
        rec.dieback = if self.unit() < 0.15 { -1.0 } else { (w * 50.0 + self.unit() * 10.0).min(100.0) as f32 };
        rec.notes = if self.unit() < 0.35 { self.rng.random_range(0..NOTES.len()) as u8 } else { NO_NOTES };
    }

    fn new_assessment_rec(&mut self, j: usize, now: i64, agent: u32, n: u64) -> AssessmentRec {
        let mut rec = AssessmentRec {
            tree: j as u32,
            agent,
            n,
            revision: 1,
            explicit_revision: self.unit() < 0.5,
            observed_at: now,
            ts_int: self.ts_as_int(),
            lof: 0,
            loi: 0,
            cons: 0,
            ndef: 0,
            defects: [(0, 0); 4],
            dieback: -1.0,
            notes: NO_NOTES,
            withdrawn: false,
        };
        self.rate(&mut rec);
        rec
    }

    fn assessment(&mut self, now: i64) -> (EventKind, u64, i64) {
        let j = self.pick_assessment_tree();
        let agent = self.pick_agent(self.trees[j].region);
        let counter = &mut self.agent_counters[agent as usize - 1];
        let n = *counter * self.shards as u64 + self.shard as u64 + 1;
        *counter += 1;
        let rec = self.new_assessment_rec(j, now, agent, n);
        let u = self.unit();
        if u < REVISE_SHARE {
            let delay = self.rng.random_range(300_000..=7_200_000);
            self.schedule(now + delay, PendingWhat::Revise(rec));
        } else if u < REVISE_SHARE + WITHDRAW_SHARE {
            let delay = self.rng.random_range(600_000..=10_800_000);
            self.schedule(now + delay, PendingWhat::Withdraw(rec));
        }
        let idx = self.tree_index(j);
        write_assessment(&mut self.buf, idx, &rec);
        (EventKind::Assessment, idx, rec.observed_at)
    }

    fn revise(&mut self, mut rec: AssessmentRec, now: i64) -> (EventKind, u64, i64) {
        let old = rec.lof;
        rec.revision += 1;
        rec.explicit_revision = true;
        rec.ts_int = self.ts_as_int();
        self.rate(&mut rec);
        if rec.lof == old {
            // A correction always changes the rating.
            rec.lof = if old == 3 || (old > 0 && self.unit() < 0.5) { old - 1 } else { old + 1 };
        }
        if self.unit() < 0.04 {
            let delay = self.rng.random_range(600_000..=10_800_000);
            self.schedule(now + delay, PendingWhat::Withdraw(rec));
        }
        let idx = self.tree_index(rec.tree as usize);
        write_assessment(&mut self.buf, idx, &rec);
        (EventKind::Assessment, idx, rec.observed_at)
    }

    fn withdraw(&mut self, mut rec: AssessmentRec) -> (EventKind, u64, i64) {
        rec.revision += 1;
        rec.explicit_revision = true;
        rec.withdrawn = true;
        rec.ts_int = self.ts_as_int();
        let idx = self.tree_index(rec.tree as usize);
        write_assessment(&mut self.buf, idx, &rec);
        (EventKind::Assessment, idx, rec.observed_at)
    }

    // -- malformed events ----------------------------------------------------

    fn malformed_event(&mut self, now: i64) -> (EventKind, u64, i64) {
        self.malformed += 1;
        let j = self.rng.random_range(0..self.trees.len());
        let idx = self.tree_index(j);
        let u = self.unit();
        let kind = if u < 0.6 {
            EventKind::Reading
        } else if u < 0.85 {
            EventKind::Assessment
        } else {
            EventKind::Tree
        };
        // A valid event first (without side effects on the simulation).
        let int = self.ts_as_int();
        match kind {
            EventKind::Reading => {
                let metric = self.rng.random_range(0..4);
                let value = self.reading_value(j, metric);
                let ts = now - self.rng.random_range(0..=JITTER_MS);
                write_reading(&mut self.buf, idx, metric, value, ts, int);
            }
            EventKind::Tree => {
                let mut t = self.trees[j].clone();
                t.deleted = false;
                write_tree(&mut self.buf, idx, &t, now, int, true);
            }
            EventKind::Assessment => {
                let agent = self.rng.random_range(1..=self.active_agents.max(1));
                let n = self.rng.random_range(1..1_000_000);
                let mut rec = self.new_assessment_rec(j, now, agent, n);
                if rec.ndef == 0 {
                    rec.defects[0] = (self.rng.random_range(0..DEFECT_KINDS.len()) as u8, 2);
                    rec.ndef = 1;
                }
                write_assessment(&mut self.buf, idx, &rec);
            }
        }
        let valid = self.buf.clone();
        self.buf.clear();
        self.corrupt(kind, idx, &valid);
        (kind, idx, now)
    }

    /// Writes a corrupted version of the valid event `valid` into `self.buf`.
    fn corrupt(&mut self, kind: EventKind, idx: u64, valid: &[u8]) {
        let mut map: Map<String, Value> = serde_json::from_slice(valid).expect("generator output is a JSON object");
        let buf = &mut self.buf;
        let rng = &mut self.rng;
        if rng.random::<f64>() < HUGE_SHARE {
            // Everything is fine except the size.
            let len = rng.random_range(65_600..70_000);
            let blob: String = "0123456789abcdef".chars().cycle().take(len).collect();
            map.insert("debug_trace".into(), Value::String(blob));
            serde_json::to_writer(&mut *buf, &map).expect("write to Vec");
            return;
        }
        let fields = Fields::of(kind);
        let rule = fields.rules[rng.random_range(0..fields.rules.len())];
        let mut nonfinite = false;
        match rule {
            Bad::Truncate => {
                let cut = rng.random_range(1..valid.len());
                buf.extend_from_slice(&valid[..cut]);
                return;
            }
            Bad::NotObject => {
                let v = match rng.random_range(0..3) {
                    0 => Value::Array(map.into_iter().map(|(_, v)| v).collect()),
                    1 => Value::String(String::from_utf8_lossy(valid).into_owned()), // double-encoded
                    _ => Value::from(idx),
                };
                serde_json::to_writer(&mut *buf, &v).expect("write to Vec");
                return;
            }
            Bad::Missing => {
                let k = fields.required[rng.random_range(0..fields.required.len())];
                map.remove(k);
            }
            Bad::WrongType => {
                let (k, v) = wrong_type(rng, kind, &map);
                set_field(&mut map, k, v);
            }
            Bad::UnknownEnum => {
                let (k, v) = unknown_enum(rng, kind);
                set_field(&mut map, k, Value::from(v));
            }
            Bad::OutOfRange => {
                let (k, v) = out_of_range(rng, kind, &map);
                set_field(&mut map, k, v);
            }
            Bad::Id => {
                let k = fields.ids[rng.random_range(0..fields.ids.len())];
                let id = map.get(k).and_then(Value::as_str).unwrap_or("X-1").to_string();
                let bad = match rng.random_range(0..3) {
                    0 => {
                        let extra = rng.random_range(65usize..100).saturating_sub(id.len()).max(1);
                        format!("{id}-{}", "x".repeat(extra))
                    }
                    1 => {
                        const BAD: [&str; 8] = [" ", "/", "#", "é", "*", "?", "\t", "\""];
                        let c = BAD[rng.random_range(0..BAD.len())];
                        let at = rng.random_range(0..=id.len());
                        format!("{}{c}{}", &id[..at], &id[at..])
                    }
                    _ => String::new(),
                };
                map.insert(k.into(), Value::String(bad));
            }
            Bad::Timestamp => {
                let k = fields.ts;
                let v = match rng.random_range(0..12) {
                    0 => Value::from("yesterday"),
                    1 => Value::from("2026-13-01T00:00:00Z"),
                    2 => Value::from("2026-11-31T10:00:00.000Z"),
                    3 => Value::from("1999-12-31T23:59:59.999Z"),
                    4 => Value::from("2100-01-01T00:00:00.000Z"),
                    5 => Value::from("25/11/2026 10:00"),
                    6 => Value::from("2026-11-25T25:00:00Z"),
                    7 => Value::from(""),
                    8 => Value::from(946_684_799_999i64), // 1999-12-31T23:59:59.999Z
                    9 => Value::from(4_102_444_800_000i64), // 2100-01-01
                    10 => Value::from(1_795_564_800i64),  // seconds instead of ms: 1970
                    _ => Value::from("1795564800000"),    // digits in a string
                };
                map.insert(k.into(), v);
            }
            Bad::NonFinite => {
                let k = fields.numbers[rng.random_range(0..fields.numbers.len())];
                map.insert(k.into(), Value::from(NONFINITE));
                nonfinite = true;
            }
            Bad::LongString => {
                let (k, min, max) = if kind == EventKind::Tree { ("species", 129, 400) } else { ("notes", 4097, 6000) };
                let len = rng.random_range(min..max);
                let s: String = NOTES[0].chars().chain(std::iter::once(' ')).cycle().take(len).collect();
                map.insert(k.into(), Value::String(s));
            }
            Bad::TooManyDefects => {
                let n = rng.random_range(33..=40);
                let defects = (0..n)
                    .map(|i| defect_value(DEFECT_KINDS[i % DEFECT_KINDS.len()], Value::from(rng.random_range(1..=5))))
                    .collect();
                map.insert("defects".into(), Value::Array(defects));
            }
            Bad::DefectItem => {
                let item = match rng.random_range(0..4) {
                    0 => Value::Object(Map::from_iter([("kind".to_string(), Value::from("crack"))])),
                    1 => Value::Object(Map::from_iter([("severity".to_string(), Value::from(3))])),
                    2 => Value::from("crack"),
                    _ => defect_value("crack", Value::from("high")),
                };
                let mut defects = vec![defect_value("decay", Value::from(2))];
                defects.insert(rng.random_range(0..=1), item);
                map.insert("defects".into(), Value::Array(defects));
            }
        }
        serde_json::to_writer(&mut *buf, &map).expect("write to Vec");
        if nonfinite {
            let quoted = format!("\"{NONFINITE}\"");
            if let Some(at) = buf.windows(quoted.len()).position(|w| w == quoted.as_bytes()) {
                let with: &[u8] = if rng.random::<bool>() { b"1e999" } else { b"-1e999" };
                buf.splice(at..at + quoted.len(), with.iter().copied());
            }
        }
    }
}

impl Iterator for Generator {
    type Item = GeneratedEvent;

    fn next(&mut self) -> Option<GeneratedEvent> {
        if self.trees.is_empty() {
            return None;
        }
        let now = self.cfg.start_ms + (self.count as f64 * self.ms_per_event) as i64;
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
        } else if self.pending.peek().is_some_and(|p| p.0.due_ms <= now) {
            let Reverse(p) = self.pending.pop().expect("peeked");
            match p.what {
                PendingWhat::Revise(rec) => self.revise(rec, now),
                PendingWhat::Withdraw(rec) => self.withdraw(rec),
                PendingWhat::Reregister(j) => self.reregister(j as usize, now),
            }
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
        Some(GeneratedEvent { kind, key: tree_key(idx), ts_ms, json: self.buf.clone() })
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        if self.trees.is_empty() {
            (0, Some(0))
        } else {
            (usize::MAX, None)
        }
    }
}

// ---------------------------------------------------------------------------
// Tuning constants
// ---------------------------------------------------------------------------

/// Agents of the normal capacity the shares below are relative to.
const NORMAL_AGENTS: f64 = 30.0;
/// Share of assessments in the stream at normal activity (moderate, 30 agents).
const BASE_ASSESSMENT_SHARE: f64 = 0.005;
const MAX_ASSESSMENT_SHARE: f64 = 0.05;
/// Share of registry updates after the initial registration.
const REGISTRY_UPDATE_SHARE: f64 = 0.0002;
/// Share of registry updates that remove the tree (re-registered later).
const DELETE_SHARE: f64 = 0.03;
/// Share of assessments revised later / withdrawn later.
const REVISE_SHARE: f64 = 0.05;
const WITHDRAW_SHARE: f64 = 0.008;
/// Readings arrive up to this much behind the current event time…
const JITTER_MS: i64 = 2_500;
/// …and this share arrives minutes to 2 hours late.
const LATE_SHARE: f64 = 0.001;
/// Share of timestamps written as integer epoch ms instead of RFC 3339.
const INT_TS_SHARE: f64 = 0.2;
/// Share of malformed events that are over 64 KiB.
const HUGE_SHARE: f64 = 0.002;
/// Bound on scheduled revisions/withdrawals/re-registrations (memory bound).
const MAX_PENDING: usize = 100_000;

const HOUR_MS: i64 = 3_600_000;
const MIN_MS: i64 = 60_000;

// ---------------------------------------------------------------------------
// Reference data
// ---------------------------------------------------------------------------

const REGIONS: [&str; 3] = ["us-east", "eu-west", "ap-southeast"];
const REGION_WEIGHTS: [f64; 3] = [0.40, 0.35, 0.25];
const METRICS: [&str; 4] = ["tilt_deg", "sway_hz", "soil_moisture_pct", "wind_gust_ms"];
const METRIC_SUFFIX: [u8; 4] = [b't', b's', b'm', b'w'];
const METRIC_DECIMALS: [usize; 4] = [2, 3, 2, 2];
const OCCUPANCY: [&str; 4] = ["rare", "occasional", "frequent", "constant"];
const OCCUPANCY_WEIGHTS: [f64; 4] = [0.15, 0.35, 0.35, 0.15];
const LOF: [&str; 4] = ["improbable", "possible", "probable", "imminent"];
const LOI: [&str; 4] = ["very_low", "low", "medium", "high"];
const CONSEQUENCES: [&str; 4] = ["negligible", "minor", "significant", "severe"];
const DEFECT_KINDS: [&str; 9] =
    ["decay", "crack", "lean", "deadwood", "root_damage", "cavity", "canker", "included_bark", "hanger"];

/// A city box: (lat_min, lat_max, lon_min, lon_max, weight).
type City = (f64, f64, f64, f64, f64);

/// City boxes per region.
const CITIES: [&[City]; 3] = [
    &[
        (40.55, 40.88, -74.05, -73.75, 0.45), // New York
        (42.28, 42.39, -71.15, -71.00, 0.15), // Boston
        (39.90, 40.10, -75.25, -75.02, 0.20), // Philadelphia
        (38.82, 38.98, -77.10, -76.92, 0.20), // Washington, DC
    ],
    &[
        (51.36, 51.62, -0.40, 0.20, 0.40),  // London
        (53.29, 53.41, -6.38, -6.13, 0.15), // Dublin
        (48.82, 48.90, 2.25, 2.42, 0.25),   // Paris
        (52.30, 52.42, 4.78, 5.00, 0.20),   // Amsterdam
    ],
    &[
        (-33.98, -33.72, 151.00, 151.28, 0.35), // Sydney
        (-37.92, -37.72, 144.88, 145.10, 0.30), // Melbourne
        (1.28, 1.44, 103.70, 103.98, 0.20),     // Singapore
        (-36.95, -36.80, 174.68, 174.84, 0.15), // Auckland
    ],
];

const SPECIES: [&[&str]; 3] = [
    &[
        "Platanus x acerifolia",
        "Acer rubrum",
        "Acer saccharinum",
        "Acer platanoides",
        "Quercus palustris",
        "Quercus rubra",
        "Gleditsia triacanthos",
        "Tilia cordata",
        "Ginkgo biloba",
        "Pyrus calleryana",
        "Zelkova serrata",
        "Ulmus americana",
        "Fraxinus pennsylvanica",
        "Liquidambar styraciflua",
        "Celtis occidentalis",
        "Styphnolobium japonicum",
    ],
    &[
        "Platanus x acerifolia",
        "Tilia x europaea",
        "Acer pseudoplatanus",
        "Acer platanoides",
        "Quercus robur",
        "Fraxinus excelsior",
        "Betula pendula",
        "Aesculus hippocastanum",
        "Carpinus betulus",
        "Prunus avium",
        "Sorbus aria",
        "Ulmus x hollandica",
        "Fagus sylvatica",
        "Alnus glutinosa",
        "Corylus colurna",
    ],
    &[
        "Lophostemon confertus",
        "Eucalyptus camaldulensis",
        "Corymbia maculata",
        "Jacaranda mimosifolia",
        "Ficus microcarpa",
        "Melaleuca quinquenervia",
        "Angophora costata",
        "Platanus x acerifolia",
        "Samanea saman",
        "Tabebuia rosea",
        "Khaya senegalensis",
        "Pterocarpus indicus",
        "Metrosideros excelsa",
        "Ulmus parvifolia",
    ],
];

const NOTES: [&str; 16] = [
    "Deadwood over footpath, prune within 30 days.",
    "Fungal fruiting bodies at base (possible Ganoderma); recommend resistograph test.",
    "Crack in codominant union, consider cabling.",
    "Root plate heave visible on the windward side.",
    "Hanger lodged in upper crown over the road.",
    "Minor deadwood only, routine inspection.",
    "Cavity at 2 m with sound shell wall.",
    "Lean increased since last visit; check the tilt sensor trend.",
    "Canker on the south side of the trunk.",
    "Included bark at the main fork.",
    "Soil compaction from construction nearby.",
    "Tree in good condition.",
    "Storm damage: broken limbs, area cordoned off.",
    "Photos attached in the app.",
    "Girdling root at the root collar.",
    "Crown thinning, possible drought stress.",
];
const NO_NOTES: u8 = u8::MAX;

// ---------------------------------------------------------------------------
// Simulation state
// ---------------------------------------------------------------------------

const F_SPECIES: u8 = 1;
const F_DBH: u8 = 2;
const F_HEIGHT: u8 = 4;
const F_OCCUPANCY: u8 = 8;
const F_TILT: u8 = 16;
const F_SWAY: u8 = 32;
const F_ALL: u8 = 63;

/// One tree and its sensors.
#[derive(Clone, Debug)]
struct TreeState {
    lat: f64,
    lon: f64,
    dbh: f64,
    height: f64,
    base_tilt: f64,
    base_sway: f64,
    /// 0 (sound) … 1 (very weak): drives ratings, storm response, defects.
    weakness: f32,
    /// Offset of this spot's soil moisture from the regional level.
    soil_offset: f32,
    /// Slow random walk of the tilt around its baseline.
    tilt_drift: f32,
    species: u8,
    region: u8,
    occupancy: u8,
    /// Optional fields present in its registry entry (F_* bits).
    fields: u8,
    deleted: bool,
}

impl TreeState {
    /// The attributes of tree `idx`, a pure function of (seed, idx).
    fn new(seed: u64, idx: u64) -> TreeState {
        let mut r = Pcg64Mcg::seed_from_u64(mix64(seed ^ mix64(idx.wrapping_add(0x7EE5_0000_0000_0000))));
        let region = pick_weighted(&mut r, &REGION_WEIGHTS);
        let cities = CITIES[region];
        let weights: Vec<f64> = cities.iter().map(|c| c.4).collect();
        let c = cities[pick_weighted(&mut r, &weights)];
        let lat = c.0 + (c.1 - c.0) * r.random::<f64>();
        let lon = c.2 + (c.3 - c.2) * r.random::<f64>();
        let species = r.random_range(0..SPECIES[region].len()) as u8;
        let mut dbh = 8.0 + 110.0 * r.random::<f64>().powf(1.6);
        if r.random::<f64>() < 0.03 {
            dbh = r.random_range(120.0..250.0); // veterans
        }
        let height = (1.3 + 28.0 * (1.0 - (-dbh / 55.0).exp()) * (0.8 + 0.4 * r.random::<f64>())).clamp(2.0, 45.0);
        let base_tilt = 5.0 * r.random::<f64>().powf(2.5);
        let base_sway = (1.55 - dbh / 110.0 + (r.random::<f64>() - 0.5) * 0.3).clamp(0.3, 1.5);
        let weakness = (r.random::<f64>().powi(3) + if dbh > 100.0 { 0.1 } else { 0.0 }).min(1.0) as f32;
        let occupancy = pick_weighted(&mut r, &OCCUPANCY_WEIGHTS) as u8;
        let soil_offset = ((r.random::<f64>() - 0.5) * 30.0) as f32;
        let mut fields = 0;
        for (bit, p) in [(F_SPECIES, 0.95), (F_DBH, 0.97), (F_HEIGHT, 0.93), (F_OCCUPANCY, 0.95), (F_SWAY, 0.97)] {
            if r.random::<f64>() < p {
                fields |= bit;
            }
        }
        // A missing baseline tilt means 0, so only omit it where it is about 0.
        if base_tilt >= 0.3 || r.random::<f64>() < 0.5 {
            fields |= F_TILT;
        }
        TreeState {
            lat,
            lon,
            dbh,
            height,
            base_tilt,
            base_sway,
            weakness,
            soil_offset,
            tilt_drift: 0.0,
            species,
            region: region as u8,
            occupancy,
            fields,
            deleted: false,
        }
    }
}

/// The contents of one assessment (one revision).
#[derive(Clone, Copy, Debug)]
struct AssessmentRec {
    tree: u32,
    agent: u32,
    n: u64,
    revision: u32,
    explicit_revision: bool,
    observed_at: i64,
    ts_int: bool,
    lof: u8,
    loi: u8,
    cons: u8,
    ndef: u8,
    defects: [(u8, u8); 4],
    /// Crown dieback in %, negative when omitted.
    dieback: f32,
    notes: u8,
    withdrawn: bool,
}

#[derive(Debug)]
enum PendingWhat {
    Revise(AssessmentRec),
    Withdraw(AssessmentRec),
    Reregister(u32),
}

/// Something to emit later, ordered by due event time then creation.
#[derive(Debug)]
struct Pending {
    due_ms: i64,
    seq: u64,
    what: PendingWhat,
}

impl PartialEq for Pending {
    fn eq(&self, other: &Self) -> bool {
        (self.due_ms, self.seq) == (other.due_ms, other.seq)
    }
}
impl Eq for Pending {}
impl PartialOrd for Pending {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Pending {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.due_ms, self.seq).cmp(&(other.due_ms, other.seq))
    }
}

/// The weather of one region at one second of event time.
#[derive(Clone, Copy, Debug, Default)]
struct RegionEnv {
    /// Storm strength 0 (none) … 1 (full).
    storm: f64,
    /// Extra soil moisture from storm rain, in percentage points.
    rain: f64,
    /// Typical wind speed (m/s) that ordinary gusts scale from.
    wind: f64,
    /// Regional soil moisture level (%), before the rain.
    soil: f64,
    /// 1 during a storm, decaying over hours afterwards.
    recent: f64,
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
struct Weather {
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
    fn new(seed: u64, season: Season, start_ms: i64) -> Weather {
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

    fn env_at(&mut self, t: i64) -> [RegionEnv; 3] {
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

fn pick_weighted(rng: &mut Pcg64Mcg, weights: &[f64]) -> usize {
    let total: f64 = weights.iter().sum();
    let mut u = rng.random::<f64>() * total;
    for (i, w) in weights.iter().enumerate() {
        if u < *w {
            return i;
        }
        u -= w;
    }
    weights.len() - 1
}

/// SplitMix64 finalizer, to derive independent seeds.
fn mix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

// ---------------------------------------------------------------------------
// Malformed-event helpers
// ---------------------------------------------------------------------------

const NONFINITE: &str = "@@NONFINITE@@";

#[derive(Clone, Copy, Debug)]
enum Bad {
    Truncate,
    NotObject,
    Missing,
    WrongType,
    UnknownEnum,
    OutOfRange,
    Id,
    Timestamp,
    NonFinite,
    LongString,
    TooManyDefects,
    DefectItem,
}

struct Fields {
    required: &'static [&'static str],
    ids: &'static [&'static str],
    ts: &'static str,
    numbers: &'static [&'static str],
    rules: &'static [Bad],
}

impl Fields {
    fn of(kind: EventKind) -> &'static Fields {
        const COMMON: [Bad; 9] = [
            Bad::Truncate,
            Bad::NotObject,
            Bad::Missing,
            Bad::WrongType,
            Bad::UnknownEnum,
            Bad::OutOfRange,
            Bad::Id,
            Bad::Timestamp,
            Bad::NonFinite,
        ];
        const READING: Fields = Fields {
            required: &["sensor_id", "tree_id", "metric", "value", "ts"],
            ids: &["sensor_id", "tree_id"],
            ts: "ts",
            numbers: &["value"],
            rules: &[
                COMMON[0], COMMON[1], COMMON[2], COMMON[3], COMMON[4], COMMON[5], COMMON[5], COMMON[6], COMMON[7],
                COMMON[8],
            ],
        };
        const TREE: Fields = Fields {
            required: &["tree_id", "region", "lat", "lon", "updated_at"],
            ids: &["tree_id"],
            ts: "updated_at",
            numbers: &["lat", "lon", "dbh_cm", "height_m", "baseline_tilt_deg", "baseline_sway_hz"],
            rules: &[
                COMMON[0],
                COMMON[1],
                COMMON[2],
                COMMON[3],
                COMMON[4],
                COMMON[5],
                COMMON[6],
                COMMON[7],
                COMMON[8],
                Bad::LongString,
            ],
        };
        const ASSESSMENT: Fields = Fields {
            required: &[
                "assessment_id",
                "tree_id",
                "agent_id",
                "observed_at",
                "likelihood_of_failure",
                "likelihood_of_impact",
                "consequences",
            ],
            ids: &["assessment_id", "tree_id", "agent_id"],
            ts: "observed_at",
            numbers: &["crown_dieback_pct"],
            rules: &[
                COMMON[0],
                COMMON[1],
                COMMON[2],
                COMMON[3],
                COMMON[4],
                COMMON[5],
                COMMON[6],
                COMMON[7],
                COMMON[8],
                Bad::LongString,
                Bad::TooManyDefects,
                Bad::DefectItem,
            ],
        };
        match kind {
            EventKind::Reading => &READING,
            EventKind::Tree => &TREE,
            EventKind::Assessment => &ASSESSMENT,
        }
    }
}

/// A field path: a top-level key, or `defects.0.severity` / `defects.0.kind`.
fn set_field(map: &mut Map<String, Value>, key: &str, v: Value) {
    if let Some(sub) = key.strip_prefix("defects.0.") {
        let defects = map.entry("defects").or_insert_with(|| Value::Array(Vec::new()));
        if !defects.is_array() || defects.as_array().is_some_and(Vec::is_empty) {
            *defects = Value::Array(vec![defect_value("decay", Value::from(2))]);
        }
        if let Some(Value::Object(item)) = defects.as_array_mut().and_then(|a| a.first_mut()) {
            item.insert(sub.to_string(), v);
        }
    } else {
        map.insert(key.to_string(), v);
    }
}

fn defect_value(kind: &str, severity: Value) -> Value {
    Value::Object(Map::from_iter([("kind".to_string(), Value::from(kind)), ("severity".to_string(), severity)]))
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

fn wrong_type(rng: &mut Pcg64Mcg, kind: EventKind, map: &Map<String, Value>) -> (&'static str, Value) {
    let num_str = |k: &str| Value::String(map.get(k).map(|v| v.to_string()).unwrap_or_else(|| "12.5".into()));
    match kind {
        EventKind::Reading => match rng.random_range(0..5) {
            0 | 1 => ("value", num_str("value")),
            2 => ("tree_id", Value::from(42)),
            3 => ("ts", Value::Bool(true)),
            _ => ("metric", Value::from(2)),
        },
        EventKind::Tree => match rng.random_range(0..8) {
            0 => ("lat", num_str("lat")),
            1 => ("lon", num_str("lon")),
            2 => {
                ("dbh_cm", Value::from(format!("{} cm", map.get("dbh_cm").map(|v| v.to_string()).unwrap_or_default())))
            }
            3 => ("height_m", Value::Bool(true)),
            4 => ("baseline_tilt_deg", num_str("baseline_tilt_deg")),
            5 => ("deleted", Value::from("false")),
            6 => ("region", Value::from(2)),
            _ => ("target_occupancy", Value::Bool(true)),
        },
        EventKind::Assessment => match rng.random_range(0..10) {
            0 => ("revision", Value::from("2")),
            1 => ("revision", Value::from(1.5)),
            2 => ("crown_dieback_pct", Value::from("15%")),
            3 => ("defects", Value::from("decay, crack")),
            4 => ("withdrawn", Value::from("yes")),
            5 => ("notes", Value::from(42)),
            6 => ("likelihood_of_failure", Value::from(2)),
            7 => ("agent_id", Value::from(7)),
            8 => ("defects.0.severity", Value::from("3")),
            _ => ("defects", Value::Object(Map::from_iter([("kind".to_string(), Value::from("decay"))]))),
        },
    }
}

fn unknown_enum(rng: &mut Pcg64Mcg, kind: EventKind) -> (&'static str, &'static str) {
    fn one(rng: &mut Pcg64Mcg, xs: &[&'static str]) -> &'static str {
        xs[rng.random_range(0..xs.len())]
    }
    match kind {
        EventKind::Reading => ("metric", one(rng, &["humidity_pct", "tilt", "TILT_DEG", "wind_speed_ms", ""])),
        EventKind::Tree => {
            if rng.random::<f64>() < 0.7 {
                ("region", one(rng, &["us-west", "eu-central", "EU-WEST", "ap-northeast", "mars-1", ""]))
            } else {
                ("target_occupancy", one(rng, &["sometimes", "never", "Frequent", "high"]))
            }
        }
        EventKind::Assessment => match rng.random_range(0..4) {
            0 => ("likelihood_of_failure", one(rng, &["likely", "very_likely", "high", "unknown"])),
            1 => ("likelihood_of_impact", one(rng, &["none", "extreme", "moderate", "HIGH"])),
            2 => ("consequences", one(rng, &["catastrophic", "none", "moderate", "minor "])),
            _ => ("defects.0.kind", one(rng, &["termites", "rot", "lightning", "graffiti"])),
        },
    }
}

fn out_of_range(rng: &mut Pcg64Mcg, kind: EventKind, map: &Map<String, Value>) -> (&'static str, Value) {
    /// One of the too-low values `lo_bad`, or a too-high one in `hi`.
    fn pick(rng: &mut Pcg64Mcg, lo_bad: &[f64], hi: (f64, f64)) -> Value {
        let i = rng.random_range(0..lo_bad.len() + 2);
        if i < lo_bad.len() {
            Value::from(lo_bad[i])
        } else {
            Value::from(round2(rng.random_range(hi.0..hi.1)))
        }
    }
    match kind {
        EventKind::Reading => {
            let v = match map.get("metric").and_then(Value::as_str) {
                Some("tilt_deg") => pick(rng, &[-0.5, -3.2], (90.01, 135.0)),
                Some("sway_hz") => pick(rng, &[0.0, -0.3], (20.01, 40.0)),
                Some("soil_moisture_pct") => pick(rng, &[-1.0, -12.5], (100.01, 150.0)),
                _ => pick(rng, &[-0.5, -2.0], (120.01, 200.0)),
            };
            ("value", v)
        }
        EventKind::Tree => match rng.random_range(0..6) {
            0 => ("lat", pick(rng, &[-90.5, -120.0], (90.01, 135.0))),
            1 => ("lon", pick(rng, &[-180.5, -200.0], (180.01, 360.0))),
            2 => ("dbh_cm", pick(rng, &[0.0, -5.0], (1500.01, 3000.0))),
            3 => ("height_m", pick(rng, &[0.0, -1.0], (150.01, 400.0))),
            4 => ("baseline_tilt_deg", pick(rng, &[-0.5, -10.0], (90.01, 180.0))),
            _ => ("baseline_sway_hz", pick(rng, &[0.0, -0.5], (20.01, 50.0))),
        },
        EventKind::Assessment => match rng.random_range(0..3) {
            0 => ("revision", Value::from([0, -1][rng.random_range(0..2)])),
            1 => ("crown_dieback_pct", pick(rng, &[-0.5, -50.0], (100.01, 300.0))),
            _ => ("defects.0.severity", Value::from([0, 6, 10][rng.random_range(0..3)])),
        },
    }
}

// ---------------------------------------------------------------------------
// Fast writers (no allocation; output is ASCII JSON)
// ---------------------------------------------------------------------------

fn tree_key(idx: u64) -> String {
    let mut s = Vec::with_capacity(12);
    push_tree_id(&mut s, idx);
    String::from_utf8(s).expect("ASCII id")
}

fn push_u64(buf: &mut Vec<u8>, v: u64) {
    push_padded(buf, v, 1);
}

/// `v` in decimal, left-padded with zeros to at least `width` digits.
fn push_padded(buf: &mut Vec<u8>, mut v: u64, width: usize) {
    let mut tmp = [b'0'; 20];
    let mut i = tmp.len();
    loop {
        i -= 1;
        tmp[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    let start = i.min(tmp.len() - width.min(tmp.len()));
    buf.extend_from_slice(&tmp[start..]);
}

fn push_i64(buf: &mut Vec<u8>, v: i64) {
    if v < 0 {
        buf.push(b'-');
    }
    push_u64(buf, v.unsigned_abs());
}

const POW10: [u64; 6] = [1, 10, 100, 1_000, 10_000, 100_000];

/// `v` rounded to `decimals` (≤ 5) decimals, trailing zeros trimmed, always
/// with a fraction part (`12.0`, `0.25`).
fn push_fixed(buf: &mut Vec<u8>, v: f64, decimals: usize) {
    let scale = POW10[decimals];
    let n = (v * scale as f64).round() as i64;
    if n < 0 {
        buf.push(b'-');
    }
    let n = n.unsigned_abs();
    push_u64(buf, n / scale);
    buf.push(b'.');
    let mut frac = n % scale;
    if frac == 0 {
        buf.push(b'0');
        return;
    }
    let mut d = decimals;
    while frac.is_multiple_of(10) {
        frac /= 10;
        d -= 1;
    }
    push_padded(buf, frac, d);
}

/// Days since 1970-01-01 → (year, month, day) (proleptic Gregorian).
fn civil_from_days(z: i64) -> (i64, u64, u64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097) as u64;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe as i64 + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// Epoch ms as RFC 3339 UTC with milliseconds: `2026-11-25T10:00:01.250Z`.
fn push_rfc3339(buf: &mut Vec<u8>, ms: i64) {
    let days = ms.div_euclid(86_400_000);
    let rem = ms.rem_euclid(86_400_000) as u64;
    let (y, m, d) = civil_from_days(days);
    if (0..=9999).contains(&y) {
        push_padded(buf, y as u64, 4);
    } else {
        push_i64(buf, y);
    }
    buf.push(b'-');
    push_padded(buf, m, 2);
    buf.push(b'-');
    push_padded(buf, d, 2);
    buf.push(b'T');
    push_padded(buf, rem / 3_600_000, 2);
    buf.push(b':');
    push_padded(buf, rem / 60_000 % 60, 2);
    buf.push(b':');
    push_padded(buf, rem / 1000 % 60, 2);
    buf.push(b'.');
    push_padded(buf, rem % 1000, 3);
    buf.push(b'Z');
}

fn push_ts(buf: &mut Vec<u8>, ms: i64, as_int: bool) {
    if as_int {
        push_i64(buf, ms);
    } else {
        buf.push(b'"');
        push_rfc3339(buf, ms);
        buf.push(b'"');
    }
}

fn push_tree_id(buf: &mut Vec<u8>, idx: u64) {
    buf.extend_from_slice(b"T-");
    push_padded(buf, idx, 6);
}

fn push_agent_id(buf: &mut Vec<u8>, agent: u32) {
    buf.extend_from_slice(b"agent-");
    push_padded(buf, agent as u64, 2);
}

/// A string known to need no escaping (our reference data).
fn push_plain_str(buf: &mut Vec<u8>, s: &str) {
    debug_assert!(s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\' && b < 0x80));
    buf.push(b'"');
    buf.extend_from_slice(s.as_bytes());
    buf.push(b'"');
}

fn write_reading(buf: &mut Vec<u8>, idx: u64, metric: usize, value: f64, ts: i64, ts_int: bool) {
    buf.extend_from_slice(b"{\"type\":\"reading\",\"sensor_id\":\"S-");
    push_padded(buf, idx, 6);
    buf.push(b'-');
    buf.push(METRIC_SUFFIX[metric]);
    buf.extend_from_slice(b"\",\"tree_id\":\"");
    push_tree_id(buf, idx);
    buf.extend_from_slice(b"\",\"metric\":\"");
    buf.extend_from_slice(METRICS[metric].as_bytes());
    buf.extend_from_slice(b"\",\"value\":");
    push_fixed(buf, value, METRIC_DECIMALS[metric]);
    buf.extend_from_slice(b",\"ts\":");
    push_ts(buf, ts, ts_int);
    buf.push(b'}');
}

/// A registry upsert; with `all_fields` every optional field is written and
/// `deleted` is ignored.
fn write_tree(buf: &mut Vec<u8>, idx: u64, t: &TreeState, ts: i64, ts_int: bool, all_fields: bool) {
    buf.extend_from_slice(b"{\"type\":\"tree\",\"tree_id\":\"");
    push_tree_id(buf, idx);
    buf.push(b'"');
    if t.deleted && !all_fields {
        buf.extend_from_slice(b",\"deleted\":true,\"updated_at\":");
        push_ts(buf, ts, ts_int);
        buf.push(b'}');
        return;
    }
    let f = if all_fields { F_ALL } else { t.fields };
    buf.extend_from_slice(b",\"region\":");
    push_plain_str(buf, REGIONS[t.region as usize]);
    if f & F_SPECIES != 0 {
        buf.extend_from_slice(b",\"species\":");
        push_plain_str(buf, SPECIES[t.region as usize][t.species as usize]);
    }
    buf.extend_from_slice(b",\"lat\":");
    push_fixed(buf, t.lat, 5);
    buf.extend_from_slice(b",\"lon\":");
    push_fixed(buf, t.lon, 5);
    if f & F_DBH != 0 {
        buf.extend_from_slice(b",\"dbh_cm\":");
        push_fixed(buf, t.dbh, 1);
    }
    if f & F_HEIGHT != 0 {
        buf.extend_from_slice(b",\"height_m\":");
        push_fixed(buf, t.height, 1);
    }
    if f & F_OCCUPANCY != 0 {
        buf.extend_from_slice(b",\"target_occupancy\":");
        push_plain_str(buf, OCCUPANCY[t.occupancy as usize]);
    }
    if f & F_TILT != 0 {
        buf.extend_from_slice(b",\"baseline_tilt_deg\":");
        push_fixed(buf, t.base_tilt, 2);
    }
    if f & F_SWAY != 0 {
        buf.extend_from_slice(b",\"baseline_sway_hz\":");
        push_fixed(buf, t.base_sway, 2);
    }
    buf.extend_from_slice(b",\"updated_at\":");
    push_ts(buf, ts, ts_int);
    buf.push(b'}');
}

fn write_assessment(buf: &mut Vec<u8>, idx: u64, a: &AssessmentRec) {
    buf.extend_from_slice(b"{\"type\":\"assessment\",\"assessment_id\":\"A-");
    push_agent_id(buf, a.agent);
    buf.push(b'-');
    push_u64(buf, a.n);
    buf.push(b'"');
    if a.explicit_revision || a.revision != 1 {
        buf.extend_from_slice(b",\"revision\":");
        push_u64(buf, a.revision as u64);
    }
    buf.extend_from_slice(b",\"tree_id\":\"");
    push_tree_id(buf, idx);
    buf.extend_from_slice(b"\",\"agent_id\":\"");
    push_agent_id(buf, a.agent);
    buf.extend_from_slice(b"\",\"observed_at\":");
    push_ts(buf, a.observed_at, a.ts_int);
    buf.extend_from_slice(b",\"likelihood_of_failure\":");
    push_plain_str(buf, LOF[a.lof as usize]);
    buf.extend_from_slice(b",\"likelihood_of_impact\":");
    push_plain_str(buf, LOI[a.loi as usize]);
    buf.extend_from_slice(b",\"consequences\":");
    push_plain_str(buf, CONSEQUENCES[a.cons as usize]);
    if a.ndef > 0 {
        buf.extend_from_slice(b",\"defects\":[");
        for (i, (kind, sev)) in a.defects[..a.ndef as usize].iter().enumerate() {
            if i > 0 {
                buf.push(b',');
            }
            buf.extend_from_slice(b"{\"kind\":");
            push_plain_str(buf, DEFECT_KINDS[*kind as usize]);
            buf.extend_from_slice(b",\"severity\":");
            push_u64(buf, *sev as u64);
            buf.push(b'}');
        }
        buf.push(b']');
    }
    if a.dieback >= 0.0 {
        buf.extend_from_slice(b",\"crown_dieback_pct\":");
        push_fixed(buf, a.dieback as f64, 1);
    }
    if a.notes != NO_NOTES {
        buf.extend_from_slice(b",\"notes\":");
        serde_json::to_writer(&mut *buf, NOTES[a.notes as usize]).expect("write to Vec");
    }
    if a.withdrawn {
        buf.extend_from_slice(b",\"withdrawn\":true");
    }
    buf.push(b'}');
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeMap, BTreeSet, HashMap};

    // -- a small validator of DOMAIN.md §2 -----------------------------------

    const MIN_TS: i64 = 946_684_800_000; // 2000-01-01
    const MAX_TS: i64 = 4_102_444_800_000; // 2100-01-01

    fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
        let y = if m <= 2 { y - 1 } else { y };
        let era = y.div_euclid(400);
        let yoe = y - era * 400;
        let mp = (m + 9) % 12;
        let doy = (153 * mp + 2) / 5 + d - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        era * 146_097 + doe - 719_468
    }

    fn parse_rfc3339(s: &str) -> Option<i64> {
        let b = s.as_bytes();
        let num = |r: std::ops::Range<usize>| -> Option<i64> {
            let part = b.get(r)?;
            if part.iter().all(u8::is_ascii_digit) {
                std::str::from_utf8(part).ok()?.parse().ok()
            } else {
                None
            }
        };
        if b.len() < 20
            || b[4] != b'-'
            || b[7] != b'-'
            || !matches!(b[10], b'T' | b't')
            || b[13] != b':'
            || b[16] != b':'
        {
            return None;
        }
        let (y, mo, d, h, mi, se) = (num(0..4)?, num(5..7)?, num(8..10)?, num(11..13)?, num(14..16)?, num(17..19)?);
        let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
        let mdays = [31, if leap { 29 } else { 28 }, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
        if !(1..=12).contains(&mo) || d < 1 || d > mdays[mo as usize - 1] || h > 23 || mi > 59 || se > 59 {
            return None;
        }
        let mut i = 19;
        let mut ms = 0;
        if b.get(i) == Some(&b'.') {
            i += 1;
            let start = i;
            while b.get(i).is_some_and(u8::is_ascii_digit) {
                i += 1;
            }
            if i == start {
                return None;
            }
            let frac = &s[start..i.min(start + 3)];
            ms = frac.parse::<i64>().ok()? * 10i64.pow(3 - frac.len() as u32);
        }
        let offset_min = match b.get(i)? {
            b'Z' | b'z' if i + 1 == b.len() => 0,
            c @ (b'+' | b'-') if i + 6 == b.len() && b[i + 3] == b':' => {
                let (oh, om) = (num(i + 1..i + 3)?, num(i + 4..i + 6)?);
                if oh > 23 || om > 59 {
                    return None;
                }
                let o = oh * 60 + om;
                if *c == b'-' {
                    -o
                } else {
                    o
                }
            }
            _ => return None,
        };
        Some(days_from_civil(y, mo, d) * 86_400_000 + ((h * 60 + mi - offset_min) * 60 + se) * 1000 + ms)
    }

    type Obj = Map<String, Value>;

    fn ts_field(o: &Obj, k: &str) -> Result<i64, String> {
        let v = o.get(k).ok_or(format!("{k} missing"))?;
        let ms = match v {
            Value::String(s) => parse_rfc3339(s).ok_or(format!("{k} not RFC 3339"))?,
            Value::Number(n) => n.as_i64().ok_or(format!("{k} not an integer"))?,
            _ => return Err(format!("{k} wrong type")),
        };
        if !(MIN_TS..MAX_TS).contains(&ms) {
            return Err(format!("{k} out of range"));
        }
        Ok(ms)
    }

    fn id_field(o: &Obj, k: &str) -> Result<(), String> {
        let s = o.get(k).ok_or(format!("{k} missing"))?.as_str().ok_or(format!("{k} not a string"))?;
        let ok = (1..=64).contains(&s.len())
            && s.bytes().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b':' | b'-'));
        if ok {
            Ok(())
        } else {
            Err(format!("{k} bad id"))
        }
    }

    fn enum_field(o: &Obj, k: &str, allowed: &[&str], required: bool) -> Result<(), String> {
        match o.get(k) {
            None if !required => Ok(()),
            None => Err(format!("{k} missing")),
            Some(Value::String(s)) if allowed.contains(&s.as_str()) => Ok(()),
            Some(_) => Err(format!("{k} not one of {allowed:?}")),
        }
    }

    /// `lo`/`hi` with inclusivity flags.
    fn num_field(o: &Obj, k: &str, required: bool, lo: (f64, bool), hi: (f64, bool)) -> Result<Option<f64>, String> {
        let Some(v) = o.get(k) else {
            return if required { Err(format!("{k} missing")) } else { Ok(None) };
        };
        let x = v.as_f64().ok_or(format!("{k} not a number"))?;
        let above = if lo.1 { x >= lo.0 } else { x > lo.0 };
        let below = if hi.1 { x <= hi.0 } else { x < hi.0 };
        if x.is_finite() && above && below {
            Ok(Some(x))
        } else {
            Err(format!("{k} out of range: {x}"))
        }
    }

    fn bool_field(o: &Obj, k: &str) -> Result<Option<bool>, String> {
        match o.get(k) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(_) => Err(format!("{k} not a bool")),
        }
    }

    fn str_field(o: &Obj, k: &str, max: usize) -> Result<(), String> {
        match o.get(k) {
            None => Ok(()),
            Some(Value::String(s)) if s.chars().count() <= max => Ok(()),
            Some(_) => Err(format!("{k} not a string of at most {max} chars")),
        }
    }

    /// Validates one event per DOMAIN.md §2; returns its type.
    fn validate(line: &[u8]) -> Result<String, String> {
        if line.len() > 65_536 {
            return Err("message over 64 KiB".into());
        }
        let v: Value = serde_json::from_slice(line).map_err(|e| format!("invalid JSON: {e}"))?;
        let o = v.as_object().ok_or("not an object")?;
        let ty = o.get("type").and_then(Value::as_str).ok_or("type missing")?;
        match ty {
            "tree" => {
                id_field(o, "tree_id")?;
                ts_field(o, "updated_at")?;
                let deleted = bool_field(o, "deleted")? == Some(true);
                enum_field(o, "region", &REGIONS, !deleted)?;
                str_field(o, "species", 128)?;
                num_field(o, "lat", !deleted, (-90.0, true), (90.0, true))?;
                num_field(o, "lon", !deleted, (-180.0, true), (180.0, true))?;
                num_field(o, "dbh_cm", false, (0.0, false), (1500.0, true))?;
                num_field(o, "height_m", false, (0.0, false), (150.0, true))?;
                enum_field(o, "target_occupancy", &OCCUPANCY, false)?;
                num_field(o, "baseline_tilt_deg", false, (0.0, true), (90.0, true))?;
                num_field(o, "baseline_sway_hz", false, (0.0, false), (20.0, true))?;
            }
            "assessment" => {
                for k in ["assessment_id", "tree_id", "agent_id"] {
                    id_field(o, k)?;
                }
                if let Some(r) = o.get("revision") {
                    let r = r.as_i64().ok_or("revision not an integer")?;
                    if r < 1 {
                        return Err("revision < 1".into());
                    }
                }
                ts_field(o, "observed_at")?;
                enum_field(o, "likelihood_of_failure", &LOF, true)?;
                enum_field(o, "likelihood_of_impact", &LOI, true)?;
                enum_field(o, "consequences", &CONSEQUENCES, true)?;
                if let Some(d) = o.get("defects") {
                    let d = d.as_array().ok_or("defects not an array")?;
                    if d.len() > 32 {
                        return Err("too many defects".into());
                    }
                    for item in d {
                        let item = item.as_object().ok_or("defect not an object")?;
                        enum_field(item, "kind", &DEFECT_KINDS, true)?;
                        let sev = item.get("severity").ok_or("severity missing")?.as_i64().ok_or("severity type")?;
                        if !(1..=5).contains(&sev) {
                            return Err("severity out of range".into());
                        }
                    }
                }
                num_field(o, "crown_dieback_pct", false, (0.0, true), (100.0, true))?;
                str_field(o, "notes", 4096)?;
                bool_field(o, "withdrawn")?;
            }
            "reading" => {
                id_field(o, "sensor_id")?;
                id_field(o, "tree_id")?;
                ts_field(o, "ts")?;
                let metric = o.get("metric").ok_or("metric missing")?.as_str().ok_or("metric type")?;
                let (lo, hi) = match metric {
                    "tilt_deg" => ((0.0, true), (90.0, true)),
                    "sway_hz" => ((0.0, false), (20.0, true)),
                    "soil_moisture_pct" => ((0.0, true), (100.0, true)),
                    "wind_gust_ms" => ((0.0, true), (120.0, true)),
                    _ => return Err("unknown metric".into()),
                };
                num_field(o, "value", true, lo, hi)?;
            }
            _ => return Err("unknown type".into()),
        }
        Ok(ty.to_string())
    }

    fn small(season: Season, bad_fraction: f64) -> GeneratorConfig {
        GeneratorConfig { trees: 300, agents: 30, rate: 1_000.0, season, bad_fraction, seed: 7, ..Default::default() }
    }

    fn kind_name(k: EventKind) -> &'static str {
        match k {
            EventKind::Tree => "tree",
            EventKind::Assessment => "assessment",
            EventKind::Reading => "reading",
        }
    }

    // -- tests ----------------------------------------------------------------

    #[test]
    fn generator_season_parse_and_display() {
        for s in Season::ALL {
            assert_eq!(s.to_string().parse::<Season>(), Ok(s));
        }
        assert_eq!("Emergency".parse::<Season>(), Ok(Season::Emergency));
        assert!("winter".parse::<Season>().is_err());
    }

    #[test]
    fn generator_timestamp_formatting() {
        let fmt = |ms: i64| {
            let mut b = Vec::new();
            push_rfc3339(&mut b, ms);
            String::from_utf8(b).unwrap()
        };
        assert_eq!(fmt(1_795_564_800_000), "2026-11-25T00:00:00.000Z");
        assert_eq!(fmt(1_795_597_200_000 + 1_250), "2026-11-25T09:00:01.250Z");
        assert_eq!(fmt(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(fmt(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(fmt(MAX_TS - 1), "2099-12-31T23:59:59.999Z");
        let mut r = Pcg64Mcg::seed_from_u64(3);
        for _ in 0..10_000 {
            let ms = r.random_range(MIN_TS..MAX_TS);
            assert_eq!(parse_rfc3339(&fmt(ms)), Some(ms));
        }
        let num = |v: f64, d: usize| {
            let mut b = Vec::new();
            push_fixed(&mut b, v, d);
            String::from_utf8(b).unwrap()
        };
        assert_eq!(num(4.5, 2), "4.5");
        assert_eq!(num(18.0, 2), "18.0");
        assert_eq!(num(0.05, 3), "0.05");
        assert_eq!(num(-6.26011, 5), "-6.26011");
        assert_eq!(num(-0.0001, 2), "0.0");
        assert_eq!(num(53.349999, 2), "53.35");
        assert_eq!(tree_key(42), "T-000042");
        assert_eq!(tree_key(1_234_567), "T-1234567");
    }

    #[test]
    fn generator_is_deterministic() {
        for season in [Season::Moderate, Season::Emergency] {
            let a: Vec<_> = Generator::new(small(season, 0.1), 1, 2).take(30_000).collect();
            let b: Vec<_> = Generator::new(small(season, 0.1), 1, 2).take(30_000).collect();
            assert!(a == b, "same config must give the same events");
            let c: Vec<_> =
                Generator::new(GeneratorConfig { seed: 8, ..small(season, 0.1) }, 1, 2).take(30_000).collect();
            assert!(a != c, "another seed must give other events");
        }
    }

    #[test]
    fn generator_shards_partition_the_trees() {
        let cfg = GeneratorConfig { trees: 1_000, ..small(Season::Peak, 0.0) };
        let tree_ids = |shard: u32, shards: u32| -> BTreeMap<String, Value> {
            let mut g = Generator::new(cfg.clone(), shard, shards);
            let mut ids = BTreeMap::new();
            for e in g.by_ref().take(3_000) {
                if e.kind == EventKind::Tree {
                    let v: Value = serde_json::from_slice(&e.json).unwrap();
                    assert_eq!(v["tree_id"].as_str(), Some(e.key.as_str()));
                    ids.entry(e.key).or_insert(v);
                }
            }
            assert_eq!(g.generated(), 3_000);
            ids
        };
        let whole = tree_ids(0, 1);
        assert_eq!(whole.len(), 1_000);
        let parts: Vec<_> = (0..3).map(|s| tree_ids(s, 3)).collect();
        let mut union = BTreeSet::new();
        for (s, part) in parts.iter().enumerate() {
            for (id, v) in part {
                let n: u64 = id[2..].parse().unwrap();
                assert_eq!(n % 3, s as u64, "{id} in shard {s}");
                assert!(union.insert(id.clone()), "{id} in two shards");
                // Same tree, same attributes, whatever the sharding.
                let w = &whole[id];
                for k in ["region", "species", "lat", "lon", "dbh_cm", "baseline_sway_hz"] {
                    assert_eq!(v.get(k), w.get(k), "{id}.{k}");
                }
            }
        }
        assert_eq!(union, whole.keys().cloned().collect::<BTreeSet<_>>());
    }

    #[test]
    fn generator_valid_events_follow_the_spec() {
        for season in Season::ALL {
            let cfg = GeneratorConfig { trees: 500, rate: 20.0, ..small(season, 0.0) };
            let mut g = Generator::new(cfg.clone(), 0, 1);
            let mut kinds: HashMap<&str, u64> = HashMap::new();
            let (mut int_ts, mut late, mut revised, mut withdrawn, mut deleted) = (0u64, 0u64, 0, 0, 0);
            let mut agents = BTreeSet::new();
            let n = 200_000;
            for (i, e) in g.by_ref().take(n).enumerate() {
                assert!(!e.json.contains(&b'\n'));
                let ty = validate(&e.json).unwrap_or_else(|err| panic!("{err}: {}", String::from_utf8_lossy(&e.json)));
                assert_eq!(ty, kind_name(e.kind));
                let v: Value = serde_json::from_slice(&e.json).unwrap();
                assert_eq!(v["tree_id"].as_str(), Some(e.key.as_str()));
                *kinds.entry(kind_name(e.kind)).or_default() += 1;
                let ts_key = match e.kind {
                    EventKind::Tree => "updated_at",
                    EventKind::Assessment => "observed_at",
                    EventKind::Reading => "ts",
                };
                assert_eq!(ts_field(v.as_object().unwrap(), ts_key), Ok(e.ts_ms));
                int_ts += v[ts_key].is_number() as u64;
                // Event time advances with the rate.
                let now = cfg.start_ms + (i as f64 * 1000.0 / cfg.rate) as i64;
                match e.kind {
                    EventKind::Reading => {
                        assert!(e.ts_ms <= now && e.ts_ms >= now - 2 * HOUR_MS, "reading ts {} at {now}", e.ts_ms);
                        late += (e.ts_ms < now - 60_000) as u64;
                    }
                    EventKind::Tree => {
                        assert_eq!(e.ts_ms, now);
                        deleted += (v["deleted"] == Value::Bool(true)) as u64;
                    }
                    EventKind::Assessment => {
                        assert!(e.ts_ms <= now);
                        agents.insert(v["agent_id"].as_str().unwrap().to_string());
                        let rev = v.get("revision").and_then(Value::as_i64).unwrap_or(1);
                        revised += (rev > 1) as u64;
                        withdrawn += (v["withdrawn"] == Value::Bool(true)) as u64;
                    }
                }
            }
            let stream = (n - 500) as f64;
            let share = |k: &str| *kinds.get(k).unwrap_or(&0) as f64 / stream;
            let mult = season.activity_multiplier();
            assert!(share("reading") > 0.97, "{season}: {kinds:?}");
            let expect = BASE_ASSESSMENT_SHARE * mult;
            let a = share("assessment");
            assert!(a > expect * 0.8 && a < expect * 1.3, "{season}: assessment share {a}, {kinds:?}");
            assert!(agents.len() as f64 <= (30.0 * mult).round(), "{season}: {} agents", agents.len());
            assert!(agents.len() >= 5, "{season}: {agents:?}");
            assert!(revised > 0, "{season}: no revisions");
            let ti = int_ts as f64 / n as f64;
            assert!((0.17..0.23).contains(&ti), "integer timestamps {ti}");
            assert!(late > 50 && late < 400, "{season}: {late} late readings");
            assert!(kinds["tree"] > 500, "{season}: no registry updates");
            if season == Season::Emergency {
                assert!(withdrawn > 0, "no withdrawals");
            }
            let _ = deleted;
        }
    }

    #[test]
    fn generator_bad_fraction() {
        let count_bad = |bad_fraction: f64, season: Season| {
            let mut g = Generator::new(GeneratorConfig { rate: 500.0, ..small(season, bad_fraction) }, 0, 1);
            let mut bad = 0u64;
            let mut reasons = BTreeMap::<String, u64>::new();
            for e in g.by_ref().take(20_000) {
                assert!(!e.json.contains(&b'\n'));
                if let Err(reason) = validate(&e.json) {
                    bad += 1;
                    let key = reason.split(':').next().unwrap().to_string();
                    *reasons.entry(key).or_default() += 1;
                }
            }
            // Every malformed event is rejected, every other event accepted.
            assert_eq!(bad, g.malformed, "{reasons:?}");
            (bad, reasons)
        };
        assert_eq!(count_bad(0.0, Season::Moderate).0, 0);
        for season in [Season::Moderate, Season::Emergency] {
            let (bad, reasons) = count_bad(0.2, season);
            let share = bad as f64 / 20_000.0;
            assert!((0.15..=0.25).contains(&share), "bad share {share}");
            assert!(reasons.len() > 25, "too little variety: {reasons:?}");
            for needle in ["invalid JSON", "not an object", "missing", "out of range", "bad id", "not RFC 3339"] {
                assert!(reasons.keys().any(|r| r.contains(needle)), "no {needle}: {reasons:?}");
            }
        }
    }

    #[test]
    fn generator_malformed_kinds_cover_the_spec() {
        let cfg = GeneratorConfig { bad_fraction: 1.0, ..small(Season::Moderate, 0.0) };
        let mut seen = BTreeSet::new();
        let mut huge = 0;
        for e in Generator::new(cfg, 0, 1).take(10_000) {
            let err = validate(&e.json).expect_err("must be rejected");
            assert!(!e.json.contains(&b'\n'));
            huge += (e.json.len() > 65_536) as u32;
            for (needle, tag) in [
                ("invalid JSON", "json"),
                ("number out of range", "nonfinite"),
                ("too many defects", "defects"),
                ("notes not a string", "notes"),
                ("species not a string", "species"),
                ("not one of", "enum"),
                ("not a number", "type"),
                ("out of range", "range"),
                ("bad id", "id"),
                ("missing", "missing"),
                ("over 64 KiB", "huge"),
            ] {
                if err.contains(needle) {
                    seen.insert(tag);
                }
            }
        }
        assert!(huge > 0 && huge < 100, "{huge} huge messages");
        assert_eq!(seen.len(), 11, "{seen:?}");
    }

    #[test]
    fn generator_storms_raise_gusts() {
        // Moderate season: storms are occasional, so run 11 hours of event time.
        let cfg = GeneratorConfig { trees: 50, rate: 5.0, ..small(Season::Moderate, 0.0) };
        let mut strong = 0;
        let mut calm_max: f64 = 0.0;
        for e in Generator::new(cfg, 0, 1).take(200_000) {
            if e.kind == EventKind::Reading {
                let v: Value = serde_json::from_slice(&e.json).unwrap();
                if v["metric"] == "wind_gust_ms" {
                    let g = v["value"].as_f64().unwrap();
                    if g >= 20.0 {
                        strong += 1;
                    } else {
                        calm_max = calm_max.max(g);
                    }
                }
            }
        }
        assert!(strong > 20, "{strong} gusts >= 20 m/s");
        // In an emergency, storms come within minutes.
        let cfg = GeneratorConfig { trees: 50, rate: 50.0, ..small(Season::Emergency, 0.0) };
        let strong = Generator::new(cfg, 0, 1)
            .take(100_000)
            .filter(|e| {
                let v: Value = serde_json::from_slice(&e.json).unwrap();
                v["metric"] == "wind_gust_ms" && v["value"].as_f64().unwrap() >= 20.0
            })
            .count();
        assert!(strong > 200, "{strong} gusts >= 20 m/s in an emergency");
    }

    /// Scores trees from readings alone (as unassessed trees, base 75) over
    /// sliding 1 h windows: storms must push some trees into `critical`, and
    /// they must recover afterwards. Also checks removals and re-registrations.
    #[test]
    fn generator_storms_make_trees_critical_and_back() {
        let cfg = GeneratorConfig { trees: 60, rate: 30.0, ..small(Season::Emergency, 0.0) };
        let id = |key: &str| key[2..].parse::<usize>().unwrap();
        let mut baselines: HashMap<usize, (f64, Option<f64>)> = HashMap::new();
        let mut readings: Vec<(i64, usize, usize, f64)> = Vec::new();
        let mut deleted = BTreeSet::new();
        let mut reregistered = 0;
        for e in Generator::new(cfg, 0, 1).take(6 * 3600 * 30) {
            let v: Value = serde_json::from_slice(&e.json).unwrap();
            match e.kind {
                EventKind::Tree if v["deleted"] == Value::Bool(true) => {
                    deleted.insert(id(&e.key));
                }
                EventKind::Tree => {
                    reregistered += deleted.remove(&id(&e.key)) as u32;
                    let tilt = v.get("baseline_tilt_deg").and_then(Value::as_f64).unwrap_or(0.0);
                    baselines.insert(id(&e.key), (tilt, v.get("baseline_sway_hz").and_then(Value::as_f64)));
                }
                EventKind::Reading => {
                    let m = METRICS.iter().position(|m| v["metric"] == *m).unwrap();
                    readings.push((e.ts_ms, id(&e.key), m, v["value"].as_f64().unwrap()));
                }
                EventKind::Assessment => {}
            }
        }
        assert!(reregistered > 0, "no tree removed and registered again");
        readings.sort_by_key(|r| r.0);
        let start = readings[0].0;
        let mut was_critical: BTreeSet<usize> = BTreeSet::new();
        let (mut crossings_in, mut crossings_out) = (0, 0);
        let mut w = start + HOUR_MS;
        while w <= readings.last().unwrap().0 {
            let lo = readings.partition_point(|r| r.0 <= w - HOUR_MS);
            let hi = readings.partition_point(|r| r.0 <= w);
            // tilt_max, sway_min, gust_max, soil sum, soil n
            let mut agg: BTreeMap<usize, (f64, f64, f64, f64, f64)> = BTreeMap::new();
            for &(_, tree, m, x) in &readings[lo..hi] {
                let a = agg.entry(tree).or_insert((f64::MIN, f64::MAX, f64::MIN, 0.0, 0.0));
                match m {
                    0 => a.0 = a.0.max(x),
                    1 => a.1 = a.1.min(x),
                    2 => {
                        a.3 += x;
                        a.4 += 1.0
                    }
                    _ => a.2 = a.2.max(x),
                }
            }
            let mut critical = BTreeSet::new();
            for (tree, (tilt_max, sway_min, gust_max, soil_sum, soil_n)) in agg {
                let (bt, bs) = baselines[&tree];
                let tilt = if tilt_max > f64::MIN { (5.0 * (tilt_max - bt - 1.0).max(0.0)).min(30.0) } else { 0.0 };
                let sway = match bs {
                    Some(bs) if sway_min < f64::MAX => (50.0 * ((bs - sway_min) / bs - 0.1).max(0.0)).min(15.0),
                    _ => 0.0,
                };
                let soil_mean = if soil_n > 0.0 { soil_sum / soil_n } else { 0.0 };
                let storm = if gust_max >= 20.0 { 10.0 + if soil_mean >= 40.0 { 10.0 } else { 0.0 } } else { 0.0 };
                if 75.0 - tilt - sway - storm < 40.0 {
                    critical.insert(tree);
                }
            }
            crossings_in += critical.difference(&was_critical).count();
            crossings_out += was_critical.difference(&critical).count();
            was_critical = critical;
            w += 5 * MIN_MS;
        }
        assert!(crossings_in >= 3 && crossings_out >= 3, "into critical {crossings_in}, back {crossings_out}");
        assert!(crossings_in < 200, "too many crossings: {crossings_in}");
    }

    #[test]
    fn generator_empty_shard_and_event_time() {
        let cfg = GeneratorConfig { trees: 2, ..Default::default() };
        assert_eq!(Generator::new(cfg.clone(), 2, 3).next(), None);
        // Each of 4 shards advances at rate/4: event i at start + i * 4 / rate s.
        let cfg = GeneratorConfig { trees: 100, rate: 1_000.0, ..Default::default() };
        let events: Vec<_> = Generator::new(cfg.clone(), 3, 4).take(10).collect();
        for (i, e) in events.iter().enumerate() {
            assert_eq!(e.kind, EventKind::Tree);
            assert_eq!(e.ts_ms, cfg.start_ms + i as i64 * 4);
        }
    }
}
