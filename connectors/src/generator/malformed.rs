//! Bad input (DOMAIN.md §2.4): a malformed event is a valid event of a random
//! kind, re-parsed with serde_json and corrupted in one way (truncated, not an
//! object, missing field, wrong type, unknown enum value, out-of-range or
//! non-finite number, bad id, bad timestamp, over-long string, too many or
//! broken defects, or over 64 KiB).

use rand::Rng;
use rand_pcg::Pcg64Mcg;
use serde_json::{Map, Value};
use treeai_dataflows::event::EventKind;

use super::agents::{DEFECT_KINDS, NOTES};
use super::json::{write_assessment, write_reading, write_tree};
use super::sensors::JITTER_MS;
use super::{Emitted, Generator};

/// Share of malformed events that are over 64 KiB.
const HUGE_SHARE: f64 = 0.002;

/// A placeholder string replaced by `1e999` or `-1e999` after serialization
/// (serde_json cannot write a non-finite number).
const NONFINITE: &str = "@@NONFINITE@@";

/// How an event is corrupted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Bad {
    /// Over 64 KiB, otherwise valid.
    Huge,
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

/// The fields of one kind of event that the corruptions pick from.
struct Fields {
    required: &'static [&'static str],
    ids: &'static [&'static str],
    ts: &'static str,
    numbers: &'static [&'static str],
    /// The corruptions that apply (a repeated one is picked more often).
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

impl Generator {
    /// Writes a malformed event about a random tree into `self.buf`.
    pub(super) fn malformed_event(&mut self, now: i64) -> Emitted {
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
        self.last_bad = Some(self.corrupt(kind, idx, &valid));
        (kind, idx, now)
    }

    /// Writes a corrupted version of the valid event `valid` into `self.buf`;
    /// returns how it was corrupted.
    fn corrupt(&mut self, kind: EventKind, idx: u64, valid: &[u8]) -> Bad {
        let mut map: Map<String, Value> = serde_json::from_slice(valid).expect("generator output is a JSON object");
        let buf = &mut self.buf;
        let rng = &mut self.rng;
        if rng.random::<f64>() < HUGE_SHARE {
            // Everything is fine except the size.
            let len = rng.random_range(65_600..70_000);
            let blob: String = "0123456789abcdef".chars().cycle().take(len).collect();
            map.insert("debug_trace".into(), Value::String(blob));
            serde_json::to_writer(&mut *buf, &map).expect("write to Vec");
            return Bad::Huge;
        }
        let fields = Fields::of(kind);
        let rule = fields.rules[rng.random_range(0..fields.rules.len())];
        let mut nonfinite = false;
        match rule {
            Bad::Huge => unreachable!("not in any rule list"),
            Bad::Truncate => {
                let cut = rng.random_range(1..valid.len());
                buf.extend_from_slice(&valid[..cut]);
                return rule;
            }
            Bad::NotObject => {
                let v = match rng.random_range(0..3) {
                    0 => Value::Array(map.into_iter().map(|(_, v)| v).collect()),
                    1 => Value::String(String::from_utf8_lossy(valid).into_owned()), // double-encoded
                    _ => Value::from(idx),
                };
                serde_json::to_writer(&mut *buf, &v).expect("write to Vec");
                return rule;
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
        rule
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

/// A field of `kind` and a value of the wrong JSON type for it.
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

/// An enumerated field of `kind` and a value outside its enumeration.
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

/// A numeric field of `kind` and a finite value outside its range.
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
