//! Independent, naive batch reference implementation ("oracle") of
//! `/work/shared/spec/DOMAIN.md` §2–§4 for a *bounded* input.
//!
//! This module deliberately uses nothing from the project's other crates: only
//! `std` and `serde_json`. It is written for obviousness, not speed: every
//! event is validated, the winning versions are picked with plain comparisons,
//! and the views are recomputed from scratch with simple loops over BTreeMaps.
//!
//! Choices made where the spec is silent (each is also noted where it is
//! implemented):
//! - A JSON `null` for a field is treated exactly like an absent field (so it
//!   is fine for an optional field and a "missing required field" for a
//!   required one).
//! - Integer fields (`revision`, defect `severity`, epoch-ms timestamps) accept
//!   a JSON integer, or a JSON float with no fractional part (`2.0` is `2`);
//!   `2.5` is rejected as a wrong type.
//! - A tree event with `deleted: true` needs only `tree_id` and `updated_at`;
//!   every other field may be absent, but if present it is validated exactly as
//!   for an upsert and an invalid value rejects the event.
//! - `withdrawn: true` does NOT relax anything: a withdrawal must still be a
//!   complete, valid assessment (the spec only relaxes tree deletions).
//! - RFC 3339: `YYYY-MM-DD(T|t)HH:MM:SS[.fraction](Z|z|+HH:MM|-HH:MM)`; at least
//!   one fraction digit after `.`, any number of them, truncated to whole
//!   milliseconds; second 60 (leap second) is rejected; a space instead of `T`
//!   is rejected. The range [2000-01-01, 2100-01-01) is checked on the UTC
//!   instant after applying the offset.
//! - The 64 KiB limit is on the bytes given as `line` (65536 bytes accepted,
//!   65537 rejected). Every line given is an event: an empty/blank line is
//!   "not JSON" and counts as rejected (callers that skip blank lines must not
//!   pass them).
//! - Every valid reading counts, even an exact duplicate line (no dedup).
//! - `sensor_windows` has rows for trees with readings in the window whether or
//!   not the tree is registered; `afiss_current` and `agent_activity` likewise
//!   cover assessments of unregistered trees. `tree_scores` and
//!   `region_summary` only cover registered trees.
//! - `base` in `tree_scores` is emitted as a float (65.0), like the penalties.
//!   Penalties are not rounded; only `score` is rounded to 1 decimal, with
//!   `f64::round` on `x * 10` (half away from zero). The band uses the rounded
//!   score. `mean_score` is the plain (unrounded) mean of the rounded scores.

use serde_json::{Map, Value};
use std::collections::{BTreeMap, BTreeSet};

/// One input event in source order: `order` is its global source-order rank (greater = later in source order), `line` the raw bytes of one NDJSON line.
pub struct NaiveInput<'a> {
    pub order: u64,
    pub line: &'a [u8],
}

/// Final views of a bounded input, DOMAIN §3 end-of-input rule (W = greatest ts of valid readings; windows empty if none).
pub struct NaiveViews {
    pub watermark: Option<i64>, // epoch ms
    pub rejected: usize,        // number of rejected lines
    pub views: BTreeMap<&'static str, Vec<Map<String, Value>>>,
}

// ---------------------------------------------------------------------------
// Constants of the spec
// ---------------------------------------------------------------------------

const MAX_LINE_BYTES: usize = 65536;
const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 86_400_000;

const REGIONS: &[&str] = &["us-east", "eu-west", "ap-southeast"];
const OCCUPANCIES: &[&str] = &["rare", "occasional", "frequent", "constant"];
const FAILURES: &[&str] = &["improbable", "possible", "probable", "imminent"];
const IMPACTS: &[&str] = &["very_low", "low", "medium", "high"];
const CONSEQUENCES: &[&str] = &["negligible", "minor", "significant", "severe"];
const DEFECT_KINDS: &[&str] =
    &["decay", "crack", "lean", "deadwood", "root_damage", "cavity", "canker", "included_bark", "hanger"];
const METRICS: &[&str] = &["tilt_deg", "sway_hz", "soil_moisture_pct", "wind_gust_ms"];

// ---------------------------------------------------------------------------
// Calendar (proleptic Gregorian, UTC), written by hand
// ---------------------------------------------------------------------------

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 => {
            if is_leap(y) {
                29
            } else {
                28
            }
        }
        _ => 0,
    }
}

/// Days since 1970-01-01 of a civil date. Plain loops: count whole years, then
/// whole months. Only used for years 0..=9999, so the loops are short enough.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let mut days: i64 = 0;
    if y >= 1970 {
        for yy in 1970..y {
            days += if is_leap(yy) { 366 } else { 365 };
        }
    } else {
        for yy in y..1970 {
            days -= if is_leap(yy) { 366 } else { 365 };
        }
    }
    for mm in 1..m {
        days += days_in_month(y, mm);
    }
    days + (d - 1)
}

/// Civil date (year, month, day) of a day number since 1970-01-01.
fn civil_from_days(mut days: i64) -> (i64, i64, i64) {
    let mut y: i64 = 1970;
    if days >= 0 {
        loop {
            let len = if is_leap(y) { 366 } else { 365 };
            if days < len {
                break;
            }
            days -= len;
            y += 1;
        }
    } else {
        while days < 0 {
            y -= 1;
            days += if is_leap(y) { 366 } else { 365 };
        }
    }
    let mut m: i64 = 1;
    loop {
        let len = days_in_month(y, m);
        if days < len {
            break;
        }
        days -= len;
        m += 1;
    }
    (y, m, days + 1)
}

/// "YYYY-MM-DD" of the UTC day containing `ms`.
fn utc_day(ms: i64) -> String {
    let (y, m, d) = civil_from_days(ms.div_euclid(DAY_MS));
    format!("{y:04}-{m:02}-{d:02}")
}

fn digits(b: &[u8], from: usize, n: usize) -> Option<i64> {
    let mut v: i64 = 0;
    for i in from..from + n {
        let c = *b.get(i)?;
        if !c.is_ascii_digit() {
            return None;
        }
        v = v * 10 + i64::from(c - b'0');
    }
    Some(v)
}

/// RFC 3339 date-time → epoch milliseconds (UTC). `None` if malformed.
fn parse_rfc3339(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    // YYYY-MM-DDTHH:MM:SS is 19 bytes.
    if b.len() < 20 {
        return None;
    }
    let year = digits(b, 0, 4)?;
    if b[4] != b'-' {
        return None;
    }
    let month = digits(b, 5, 2)?;
    if b[7] != b'-' {
        return None;
    }
    let day = digits(b, 8, 2)?;
    if b[10] != b'T' && b[10] != b't' {
        return None;
    }
    let hour = digits(b, 11, 2)?;
    if b[13] != b':' {
        return None;
    }
    let minute = digits(b, 14, 2)?;
    if b[16] != b':' {
        return None;
    }
    let second = digits(b, 17, 2)?;
    if !(1..=12).contains(&month) {
        return None;
    }
    if day < 1 || day > days_in_month(year, month) {
        return None;
    }
    // Leap second 60 is not accepted (choice).
    if hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    let mut i = 19;
    let mut millis: i64 = 0;
    if b[i] == b'.' {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            // Keep the first three digits (truncate the rest).
            let pos = i - start;
            if pos < 3 {
                millis = millis * 10 + i64::from(b[i] - b'0');
            }
            i += 1;
        }
        let n = i - start;
        if n == 0 {
            return None;
        }
        if n == 1 {
            millis *= 100;
        } else if n == 2 {
            millis *= 10;
        }
    }
    // Offset.
    let offset_minutes: i64;
    let rest = &b[i..];
    if rest == b"Z" || rest == b"z" {
        offset_minutes = 0;
    } else if rest.len() == 6 && (rest[0] == b'+' || rest[0] == b'-') && rest[3] == b':' {
        let oh = digits(rest, 1, 2)?;
        let om = digits(rest, 4, 2)?;
        if oh > 23 || om > 59 {
            return None;
        }
        let sign = if rest[0] == b'-' { -1 } else { 1 };
        offset_minutes = sign * (oh * 60 + om);
    } else {
        return None;
    }
    let days = days_from_civil(year, month, day);
    let local_ms = days * DAY_MS + hour * HOUR_MS + minute * 60_000 + second * 1000 + millis;
    // local = utc + offset  =>  utc = local - offset
    Some(local_ms - offset_minutes * 60_000)
}

// ---------------------------------------------------------------------------
// Validated events
// ---------------------------------------------------------------------------

#[derive(Clone, Debug)]
struct Tree {
    tree_id: String,
    region: Option<String>,
    species: Option<String>,
    lat: Option<f64>,
    lon: Option<f64>,
    dbh_cm: Option<f64>,
    height_m: Option<f64>,
    target_occupancy: Option<String>,
    baseline_tilt_deg: Option<f64>,
    baseline_sway_hz: Option<f64>,
    updated_at: i64,
    deleted: bool,
}

#[derive(Clone, Debug)]
struct Assessment {
    assessment_id: String,
    revision: u64,
    tree_id: String,
    agent_id: String,
    observed_at: i64,
    likelihood_of_failure: String,
    likelihood_of_impact: String,
    consequences: String,
    defect_severities: Vec<i64>,
    crown_dieback_pct: f64,
    withdrawn: bool,
}

#[derive(Clone, Debug)]
struct Reading {
    tree_id: String,
    metric: String,
    value: f64,
    ts: i64,
}

#[derive(Clone, Debug)]
enum Event {
    Tree(Tree),
    Assessment(Assessment),
    Reading(Reading),
}

type Obj = Map<String, Value>;

/// A field's value; JSON `null` counts as absent (choice).
fn field<'a>(o: &'a Obj, key: &str) -> Option<&'a Value> {
    match o.get(key) {
        None | Some(Value::Null) => None,
        Some(v) => Some(v),
    }
}

fn missing(key: &str) -> String {
    format!("{key}: missing required field")
}

/// An integer: a JSON integer, or a JSON float without fractional part
/// (`2.0` is accepted as `2`; choice). Anything else is `None` (wrong type).
fn as_integer(v: &Value) -> Option<i128> {
    if let Some(i) = v.as_i64() {
        return Some(i128::from(i));
    }
    if let Some(u) = v.as_u64() {
        return Some(i128::from(u));
    }
    if let Some(f) = v.as_f64() {
        if f.is_finite() && f.fract() == 0.0 && f.abs() < 1e30 {
            return Some(f as i128);
        }
    }
    None
}

fn check_id(key: &str, v: &Value) -> Result<String, String> {
    let s = v.as_str().ok_or_else(|| format!("{key}: not a string"))?;
    let n = s.chars().count();
    if !(1..=64).contains(&n) {
        return Err(format!("{key}: length must be 1..64"));
    }
    for c in s.chars() {
        let ok = c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == ':' || c == '-';
        if !ok {
            return Err(format!("{key}: character outside [A-Za-z0-9_.:-]"));
        }
    }
    Ok(s.to_string())
}

fn req_id(o: &Obj, key: &str) -> Result<String, String> {
    match field(o, key) {
        None => Err(missing(key)),
        Some(v) => check_id(key, v),
    }
}

fn check_enum(key: &str, v: &Value, allowed: &[&str]) -> Result<String, String> {
    let s = v.as_str().ok_or_else(|| format!("{key}: not a string"))?;
    if allowed.contains(&s) {
        Ok(s.to_string())
    } else {
        Err(format!("{key}: unknown value"))
    }
}

fn req_enum(o: &Obj, key: &str, allowed: &[&str]) -> Result<String, String> {
    match field(o, key) {
        None => Err(missing(key)),
        Some(v) => check_enum(key, v, allowed),
    }
}

fn opt_enum(o: &Obj, key: &str, allowed: &[&str]) -> Result<Option<String>, String> {
    match field(o, key) {
        None => Ok(None),
        Some(v) => check_enum(key, v, allowed).map(Some),
    }
}

fn opt_string(o: &Obj, key: &str, max_chars: usize) -> Result<Option<String>, String> {
    match field(o, key) {
        None => Ok(None),
        Some(v) => {
            let s = v.as_str().ok_or_else(|| format!("{key}: not a string"))?;
            if s.chars().count() > max_chars {
                return Err(format!("{key}: longer than {max_chars} characters"));
            }
            Ok(Some(s.to_string()))
        }
    }
}

/// A numeric range; `lo_closed`/`hi_closed` say whether the ends are included.
#[derive(Clone, Copy)]
struct Range {
    lo: f64,
    lo_closed: bool,
    hi: f64,
    hi_closed: bool,
}

const fn closed(lo: f64, hi: f64) -> Range {
    Range { lo, lo_closed: true, hi, hi_closed: true }
}

const fn open_closed(lo: f64, hi: f64) -> Range {
    Range { lo, lo_closed: false, hi, hi_closed: true }
}

fn in_range(x: f64, r: Range) -> bool {
    if !x.is_finite() {
        return false;
    }
    let lo_ok = if r.lo_closed { x >= r.lo } else { x > r.lo };
    let hi_ok = if r.hi_closed { x <= r.hi } else { x < r.hi };
    lo_ok && hi_ok
}

fn check_number(key: &str, v: &Value, r: Range) -> Result<f64, String> {
    if !v.is_number() {
        return Err(format!("{key}: not a number"));
    }
    let x = v.as_f64().ok_or_else(|| format!("{key}: not a number"))?;
    if !x.is_finite() {
        return Err(format!("{key}: not finite"));
    }
    if !in_range(x, r) {
        return Err(format!("{key}: out of range"));
    }
    Ok(x)
}

fn req_number(o: &Obj, key: &str, r: Range) -> Result<f64, String> {
    match field(o, key) {
        None => Err(missing(key)),
        Some(v) => check_number(key, v, r),
    }
}

fn opt_number(o: &Obj, key: &str, r: Range) -> Result<Option<f64>, String> {
    match field(o, key) {
        None => Ok(None),
        Some(v) => check_number(key, v, r).map(Some),
    }
}

fn opt_bool(o: &Obj, key: &str) -> Result<Option<bool>, String> {
    match field(o, key) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(format!("{key}: not a bool")),
    }
}

/// Epoch ms of 2000-01-01T00:00:00Z and 2100-01-01T00:00:00Z.
fn ts_bounds() -> (i64, i64) {
    (days_from_civil(2000, 1, 1) * DAY_MS, days_from_civil(2100, 1, 1) * DAY_MS)
}

fn req_ts(o: &Obj, key: &str) -> Result<i64, String> {
    let v = field(o, key).ok_or_else(|| missing(key))?;
    let ms: i64 = match v {
        Value::String(s) => parse_rfc3339(s).ok_or_else(|| format!("{key}: not RFC 3339"))?,
        Value::Number(_) => {
            let i = as_integer(v).ok_or_else(|| format!("{key}: not an integer of epoch ms"))?;
            i64::try_from(i).map_err(|_| format!("{key}: out of range"))?
        }
        _ => return Err(format!("{key}: not a timestamp")),
    };
    let (lo, hi) = ts_bounds();
    if ms < lo || ms >= hi {
        return Err(format!("{key}: outside [2000-01-01, 2100-01-01)"));
    }
    Ok(ms)
}

fn parse_tree(o: &Obj) -> Result<Tree, String> {
    let tree_id = req_id(o, "tree_id")?;
    let updated_at = req_ts(o, "updated_at")?;
    let deleted = opt_bool(o, "deleted")?.unwrap_or(false);
    // For a deletion the other fields may be absent; if present they are
    // validated like an upsert's (choice).
    let region = if deleted { opt_enum(o, "region", REGIONS)? } else { Some(req_enum(o, "region", REGIONS)?) };
    let species = opt_string(o, "species", 128)?;
    let lat_r = closed(-90.0, 90.0);
    let lon_r = closed(-180.0, 180.0);
    let (lat, lon) = if deleted {
        (opt_number(o, "lat", lat_r)?, opt_number(o, "lon", lon_r)?)
    } else {
        (Some(req_number(o, "lat", lat_r)?), Some(req_number(o, "lon", lon_r)?))
    };
    let dbh_cm = opt_number(o, "dbh_cm", open_closed(0.0, 1500.0))?;
    let height_m = opt_number(o, "height_m", open_closed(0.0, 150.0))?;
    let target_occupancy = opt_enum(o, "target_occupancy", OCCUPANCIES)?;
    let baseline_tilt_deg = opt_number(o, "baseline_tilt_deg", closed(0.0, 90.0))?;
    let baseline_sway_hz = opt_number(o, "baseline_sway_hz", open_closed(0.0, 20.0))?;
    Ok(Tree {
        tree_id,
        region,
        species,
        lat,
        lon,
        dbh_cm,
        height_m,
        target_occupancy,
        baseline_tilt_deg,
        baseline_sway_hz,
        updated_at,
        deleted,
    })
}

fn parse_assessment(o: &Obj) -> Result<Assessment, String> {
    let assessment_id = req_id(o, "assessment_id")?;
    let revision: u64 = match field(o, "revision") {
        None => 1,
        Some(v) => {
            let i = as_integer(v).ok_or_else(|| "revision: not an integer".to_string())?;
            if i < 1 {
                return Err("revision: must be >= 1".to_string());
            }
            u64::try_from(i).map_err(|_| "revision: too large".to_string())?
        }
    };
    let tree_id = req_id(o, "tree_id")?;
    let agent_id = req_id(o, "agent_id")?;
    let observed_at = req_ts(o, "observed_at")?;
    let likelihood_of_failure = req_enum(o, "likelihood_of_failure", FAILURES)?;
    let likelihood_of_impact = req_enum(o, "likelihood_of_impact", IMPACTS)?;
    let consequences = req_enum(o, "consequences", CONSEQUENCES)?;
    let mut defect_severities = Vec::new();
    if let Some(v) = field(o, "defects") {
        let items = v.as_array().ok_or_else(|| "defects: not an array".to_string())?;
        if items.len() > 32 {
            return Err("defects: more than 32 items".to_string());
        }
        for item in items {
            let d = item.as_object().ok_or_else(|| "defects[]: not an object".to_string())?;
            req_enum(d, "kind", DEFECT_KINDS).map_err(|e| format!("defects[].{e}"))?;
            let sv = field(d, "severity").ok_or_else(|| "defects[].severity: missing".to_string())?;
            let s = as_integer(sv).ok_or_else(|| "defects[].severity: not an integer".to_string())?;
            if !(1..=5).contains(&s) {
                return Err("defects[].severity: out of 1..5".to_string());
            }
            defect_severities.push(s as i64);
        }
    }
    let crown_dieback_pct = opt_number(o, "crown_dieback_pct", closed(0.0, 100.0))?.unwrap_or(0.0);
    opt_string(o, "notes", 4096)?;
    let withdrawn = opt_bool(o, "withdrawn")?.unwrap_or(false);
    Ok(Assessment {
        assessment_id,
        revision,
        tree_id,
        agent_id,
        observed_at,
        likelihood_of_failure,
        likelihood_of_impact,
        consequences,
        defect_severities,
        crown_dieback_pct,
        withdrawn,
    })
}

fn metric_range(metric: &str) -> Range {
    match metric {
        "tilt_deg" => closed(0.0, 90.0),
        "sway_hz" => open_closed(0.0, 20.0),
        "soil_moisture_pct" => closed(0.0, 100.0),
        _ => closed(0.0, 120.0), // wind_gust_ms
    }
}

fn parse_reading(o: &Obj) -> Result<Reading, String> {
    req_id(o, "sensor_id")?;
    let tree_id = req_id(o, "tree_id")?;
    let metric = req_enum(o, "metric", METRICS)?;
    let value = req_number(o, "value", metric_range(&metric))?;
    let ts = req_ts(o, "ts")?;
    Ok(Reading { tree_id, metric, value, ts })
}

/// Validate one NDJSON line (DOMAIN §2). `Err` carries a reason.
fn parse_line(line: &[u8]) -> Result<Event, String> {
    if line.len() > MAX_LINE_BYTES {
        return Err("message larger than 64 KiB".to_string());
    }
    let v: Value = serde_json::from_slice(line).map_err(|e| format!("not JSON: {e}"))?;
    let o = match v {
        Value::Object(o) => o,
        _ => return Err("not a JSON object".to_string()),
    };
    let t = field(&o, "type").ok_or_else(|| missing("type"))?;
    match t.as_str() {
        Some("tree") => parse_tree(&o).map(Event::Tree),
        Some("assessment") => parse_assessment(&o).map(Event::Assessment),
        Some("reading") => parse_reading(&o).map(Event::Reading),
        Some(_) => Err("type: unknown value".to_string()),
        None => Err("type: not a string".to_string()),
    }
}

// ---------------------------------------------------------------------------
// TRAQ matrices and TreeScore
// ---------------------------------------------------------------------------

fn matrix1(failure: &str, impact: &str) -> &'static str {
    match (failure, impact) {
        ("imminent", "very_low") => "unlikely",
        ("imminent", "low") => "somewhat_likely",
        ("imminent", "medium") => "likely",
        ("imminent", "high") => "very_likely",
        ("probable", "medium") => "somewhat_likely",
        ("probable", "high") => "likely",
        ("possible", "high") => "somewhat_likely",
        _ => "unlikely",
    }
}

fn matrix2(failure_impact: &str, consequences: &str) -> &'static str {
    match (failure_impact, consequences) {
        ("very_likely", "minor") => "moderate",
        ("very_likely", "significant") => "high",
        ("very_likely", "severe") => "extreme",
        ("likely", "minor") => "moderate",
        ("likely", "significant") => "high",
        ("likely", "severe") => "high",
        ("somewhat_likely", "significant") => "moderate",
        ("somewhat_likely", "severe") => "moderate",
        _ => "low",
    }
}

fn risk_rating(a: &Assessment) -> &'static str {
    matrix2(matrix1(&a.likelihood_of_failure, &a.likelihood_of_impact), &a.consequences)
}

fn base_score(rating: &str) -> f64 {
    match rating {
        "low" => 90.0,
        "moderate" => 65.0,
        "high" => 35.0,
        "extreme" => 10.0,
        _ => 75.0, // unassessed
    }
}

fn band(score: f64) -> &'static str {
    if score >= 80.0 {
        "good"
    } else if score >= 60.0 {
        "fair"
    } else if score >= 40.0 {
        "poor"
    } else {
        "critical"
    }
}

/// Aggregates of one tree's readings inside the window.
#[derive(Default, Clone, Debug)]
struct WindowAgg {
    tilt_max: Option<f64>,
    sway_min: Option<f64>,
    gust_max: Option<f64>,
    soil_sum: f64,
    soil_n: u64,
    readings: u64,
}

impl WindowAgg {
    fn soil_mean(&self) -> Option<f64> {
        if self.soil_n == 0 {
            None
        } else {
            Some(self.soil_sum / self.soil_n as f64)
        }
    }
}

fn opt_f(x: Option<f64>) -> Value {
    match x {
        Some(v) => Value::from(v),
        None => Value::Null,
    }
}

fn opt_s(x: &Option<String>) -> Value {
    match x {
        Some(s) => Value::from(s.as_str()),
        None => Value::Null,
    }
}

// ---------------------------------------------------------------------------
// The oracle
// ---------------------------------------------------------------------------

pub fn naive_views(inputs: &[NaiveInput]) -> NaiveViews {
    // 1. Validate; keep valid events with their source order.
    let mut rejected = 0usize;
    let mut events: Vec<(u64, Event)> = Vec::new();
    for input in inputs {
        match parse_line(input.line) {
            Ok(e) => events.push((input.order, e)),
            Err(_reason) => rejected += 1,
        }
    }

    // 2. Current tree versions: greatest (updated_at, order).
    let mut tree_versions: BTreeMap<String, (i64, u64, Tree)> = BTreeMap::new();
    // 3. Assessment versions: greatest (revision, order) per assessment_id.
    let mut assessment_versions: BTreeMap<String, (u64, u64, Assessment)> = BTreeMap::new();
    // 4. Readings, and W = greatest ts of the valid readings.
    let mut readings: Vec<Reading> = Vec::new();
    let mut watermark: Option<i64> = None;

    for (order, e) in &events {
        let order = *order;
        match e {
            Event::Tree(t) => {
                let replace = match tree_versions.get(&t.tree_id) {
                    None => true,
                    Some((u, o, _)) => (t.updated_at, order) > (*u, *o),
                };
                if replace {
                    tree_versions.insert(t.tree_id.clone(), (t.updated_at, order, t.clone()));
                }
            }
            Event::Assessment(a) => {
                let replace = match assessment_versions.get(&a.assessment_id) {
                    None => true,
                    Some((r, o, _)) => (a.revision, order) > (*r, *o),
                };
                if replace {
                    assessment_versions.insert(a.assessment_id.clone(), (a.revision, order, a.clone()));
                }
            }
            Event::Reading(r) => {
                watermark = Some(match watermark {
                    None => r.ts,
                    Some(w) => w.max(r.ts),
                });
                readings.push(r.clone());
            }
        }
    }

    // Registered trees: current version not deleted.
    let mut registered: BTreeMap<String, Tree> = BTreeMap::new();
    for (id, (_, _, t)) in &tree_versions {
        if !t.deleted {
            registered.insert(id.clone(), t.clone());
        }
    }

    // Live assessments: winning version not withdrawn.
    let mut live: Vec<Assessment> = Vec::new();
    for (_, _, a) in assessment_versions.values() {
        if !a.withdrawn {
            live.push(a.clone());
        }
    }

    // Current assessment per tree: greatest (observed_at, assessment_id bytes);
    // also count the live assessments per tree.
    let mut current: BTreeMap<String, Assessment> = BTreeMap::new();
    let mut live_count: BTreeMap<String, u64> = BTreeMap::new();
    for a in &live {
        *live_count.entry(a.tree_id.clone()).or_insert(0) += 1;
        let replace = match current.get(&a.tree_id) {
            None => true,
            Some(c) => (a.observed_at, a.assessment_id.as_bytes()) > (c.observed_at, c.assessment_id.as_bytes()),
        };
        if replace {
            current.insert(a.tree_id.clone(), a.clone());
        }
    }

    // Sensor window: W - 1h < ts <= W.
    let mut windows: BTreeMap<String, WindowAgg> = BTreeMap::new();
    if let Some(w) = watermark {
        for r in &readings {
            if r.ts > w - HOUR_MS && r.ts <= w {
                let agg = windows.entry(r.tree_id.clone()).or_default();
                agg.readings += 1;
                match r.metric.as_str() {
                    "tilt_deg" => {
                        agg.tilt_max = Some(match agg.tilt_max {
                            None => r.value,
                            Some(m) => m.max(r.value),
                        })
                    }
                    "sway_hz" => {
                        agg.sway_min = Some(match agg.sway_min {
                            None => r.value,
                            Some(m) => m.min(r.value),
                        })
                    }
                    "wind_gust_ms" => {
                        agg.gust_max = Some(match agg.gust_max {
                            None => r.value,
                            Some(m) => m.max(r.value),
                        })
                    }
                    _ => {
                        agg.soil_sum += r.value;
                        agg.soil_n += 1;
                    }
                }
            }
        }
    }

    // ---- view: trees
    let mut trees_rows = Vec::new();
    for t in registered.values() {
        let mut row = Map::new();
        row.insert("tree_id".into(), Value::from(t.tree_id.as_str()));
        row.insert("region".into(), opt_s(&t.region));
        row.insert("species".into(), opt_s(&t.species));
        row.insert("lat".into(), opt_f(t.lat));
        row.insert("lon".into(), opt_f(t.lon));
        row.insert("dbh_cm".into(), opt_f(t.dbh_cm));
        row.insert("height_m".into(), opt_f(t.height_m));
        row.insert("target_occupancy".into(), opt_s(&t.target_occupancy));
        row.insert("baseline_tilt_deg".into(), Value::from(t.baseline_tilt_deg.unwrap_or(0.0)));
        row.insert("baseline_sway_hz".into(), opt_f(t.baseline_sway_hz));
        row.insert("updated_at".into(), Value::from(t.updated_at));
        trees_rows.push(row);
    }

    // ---- view: afiss_current
    let mut afiss_rows = Vec::new();
    for (tree_id, a) in &current {
        let fi = matrix1(&a.likelihood_of_failure, &a.likelihood_of_impact);
        let rr = matrix2(fi, &a.consequences);
        let mut sum: i64 = 0;
        let mut max: i64 = 0;
        for s in &a.defect_severities {
            sum += *s;
            if *s > max {
                max = *s;
            }
        }
        let mut row = Map::new();
        row.insert("tree_id".into(), Value::from(tree_id.as_str()));
        row.insert("assessment_id".into(), Value::from(a.assessment_id.as_str()));
        row.insert("revision".into(), Value::from(a.revision));
        row.insert("agent_id".into(), Value::from(a.agent_id.as_str()));
        row.insert("observed_at".into(), Value::from(a.observed_at));
        row.insert("likelihood_of_failure".into(), Value::from(a.likelihood_of_failure.as_str()));
        row.insert("likelihood_of_impact".into(), Value::from(a.likelihood_of_impact.as_str()));
        row.insert("consequences".into(), Value::from(a.consequences.as_str()));
        row.insert("failure_impact".into(), Value::from(fi));
        row.insert("risk_rating".into(), Value::from(rr));
        row.insert("defect_count".into(), Value::from(a.defect_severities.len() as u64));
        row.insert("defect_severity_sum".into(), Value::from(sum));
        row.insert("max_defect_severity".into(), Value::from(max));
        row.insert("crown_dieback_pct".into(), Value::from(a.crown_dieback_pct));
        row.insert("assessments_total".into(), Value::from(*live_count.get(tree_id).unwrap_or(&0)));
        afiss_rows.push(row);
    }

    // ---- view: sensor_windows
    let mut window_rows = Vec::new();
    if let Some(w) = watermark {
        for (tree_id, agg) in &windows {
            let mut row = Map::new();
            row.insert("tree_id".into(), Value::from(tree_id.as_str()));
            row.insert("window_end".into(), Value::from(w));
            row.insert("tilt_max".into(), opt_f(agg.tilt_max));
            row.insert("sway_min".into(), opt_f(agg.sway_min));
            row.insert("gust_max".into(), opt_f(agg.gust_max));
            row.insert("soil_mean".into(), opt_f(agg.soil_mean()));
            row.insert("readings".into(), Value::from(agg.readings));
            window_rows.push(row);
        }
    }

    // ---- view: tree_scores (registered trees only)
    let mut score_rows = Vec::new();
    // (region, score, band, risk_rating) per registered tree, for region_summary.
    let mut scored: Vec<(String, f64, &'static str, &'static str)> = Vec::new();
    let empty = WindowAgg::default();
    for t in registered.values() {
        let agg = windows.get(&t.tree_id).unwrap_or(&empty);
        let cur = current.get(&t.tree_id);
        let rating: &'static str = match cur {
            Some(a) => risk_rating(a),
            None => "unassessed",
        };
        let base = base_score(rating);
        let (defect_penalty, dieback_penalty) = match cur {
            Some(a) => {
                let sum: i64 = a.defect_severities.iter().sum();
                (f64::min(20.0, 2.0 * sum as f64), 0.2 * a.crown_dieback_pct)
            }
            None => (0.0, 0.0),
        };
        let baseline_tilt = t.baseline_tilt_deg.unwrap_or(0.0);
        let tilt_penalty = match agg.tilt_max {
            Some(tm) => f64::min(30.0, 5.0 * f64::max(0.0, tm - baseline_tilt - 1.0)),
            None => 0.0,
        };
        let sway_penalty = match (t.baseline_sway_hz, agg.sway_min) {
            (Some(b), Some(sm)) => f64::min(15.0, 50.0 * f64::max(0.0, (b - sm) / b - 0.10)),
            _ => 0.0,
        };
        let storm_penalty = match agg.gust_max {
            Some(g) if g >= 20.0 => {
                let soil_wet = match agg.soil_mean() {
                    Some(s) => s >= 40.0,
                    None => false,
                };
                if soil_wet {
                    20.0
                } else {
                    10.0
                }
            }
            _ => 0.0,
        };
        let raw = base - defect_penalty - dieback_penalty - tilt_penalty - sway_penalty - storm_penalty;
        let clamped = raw.clamp(0.0, 100.0);
        let score = (clamped * 10.0).round() / 10.0;
        let b = band(score);

        let mut row = Map::new();
        row.insert("tree_id".into(), Value::from(t.tree_id.as_str()));
        row.insert("region".into(), opt_s(&t.region));
        row.insert("score".into(), Value::from(score));
        row.insert("band".into(), Value::from(b));
        row.insert("risk_rating".into(), Value::from(rating));
        row.insert("base".into(), Value::from(base));
        row.insert("defect_penalty".into(), Value::from(defect_penalty));
        row.insert("dieback_penalty".into(), Value::from(dieback_penalty));
        row.insert("tilt_penalty".into(), Value::from(tilt_penalty));
        row.insert("sway_penalty".into(), Value::from(sway_penalty));
        row.insert("storm_penalty".into(), Value::from(storm_penalty));
        score_rows.push(row);

        // A registered tree always has a region (required unless deleted).
        let region = t.region.clone().unwrap_or_default();
        scored.push((region, score, b, rating));
    }

    // ---- view: region_summary
    let mut regions: BTreeSet<String> = BTreeSet::new();
    for (r, _, _, _) in &scored {
        regions.insert(r.clone());
    }
    let mut region_rows = Vec::new();
    for region in &regions {
        let mut trees = 0u64;
        let mut assessed = 0u64;
        let mut score_sum = 0.0f64;
        let mut bands: BTreeMap<&str, u64> = BTreeMap::new();
        let mut risks: BTreeMap<&str, u64> = BTreeMap::new();
        for (r, score, b, rating) in &scored {
            if r != region {
                continue;
            }
            trees += 1;
            score_sum += *score;
            *bands.entry(b).or_insert(0) += 1;
            if *rating != "unassessed" {
                assessed += 1;
                *risks.entry(rating).or_insert(0) += 1;
            }
        }
        let count = |m: &BTreeMap<&str, u64>, k: &str| *m.get(k).unwrap_or(&0);
        let mut row = Map::new();
        row.insert("region".into(), Value::from(region.as_str()));
        row.insert("trees".into(), Value::from(trees));
        row.insert("assessed_trees".into(), Value::from(assessed));
        row.insert("mean_score".into(), Value::from(score_sum / trees as f64));
        row.insert("good".into(), Value::from(count(&bands, "good")));
        row.insert("fair".into(), Value::from(count(&bands, "fair")));
        row.insert("poor".into(), Value::from(count(&bands, "poor")));
        row.insert("critical".into(), Value::from(count(&bands, "critical")));
        row.insert("risk_low".into(), Value::from(count(&risks, "low")));
        row.insert("risk_moderate".into(), Value::from(count(&risks, "moderate")));
        row.insert("risk_high".into(), Value::from(count(&risks, "high")));
        row.insert("risk_extreme".into(), Value::from(count(&risks, "extreme")));
        region_rows.push(row);
    }

    // ---- view: agent_activity, per (agent_id, UTC day of observed_at)
    // value: (assessments, distinct tree ids, high_or_extreme)
    let mut activity: BTreeMap<(String, String), (u64, BTreeSet<String>, u64)> = BTreeMap::new();
    for a in &live {
        let key = (a.agent_id.clone(), utc_day(a.observed_at));
        let entry = activity.entry(key).or_insert((0, BTreeSet::new(), 0));
        entry.0 += 1;
        entry.1.insert(a.tree_id.clone());
        let rr = risk_rating(a);
        if rr == "high" || rr == "extreme" {
            entry.2 += 1;
        }
    }
    let mut activity_rows = Vec::new();
    for ((agent, day), (n, trees, hx)) in &activity {
        let mut row = Map::new();
        row.insert("agent_id".into(), Value::from(agent.as_str()));
        row.insert("day".into(), Value::from(day.as_str()));
        row.insert("assessments".into(), Value::from(*n));
        row.insert("distinct_trees".into(), Value::from(trees.len() as u64));
        row.insert("high_or_extreme".into(), Value::from(*hx));
        activity_rows.push(row);
    }

    let mut views = BTreeMap::new();
    views.insert("trees", trees_rows);
    views.insert("afiss_current", afiss_rows);
    views.insert("sensor_windows", window_rows);
    views.insert("tree_scores", score_rows);
    views.insert("region_summary", region_rows);
    views.insert("agent_activity", activity_rows);
    NaiveViews { watermark, rejected, views }
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;

    /// Copy of /work/shared/spec/examples/one-tree.ndjson (DOMAIN §6).
    const ONE_TREE: &str = r#"{"type":"tree","tree_id":"T-1","region":"eu-west","lat":53.35,"lon":-6.26,"baseline_tilt_deg":2.0,"baseline_sway_hz":0.5,"updated_at":"2026-11-25T08:00:00Z"}
{"type":"assessment","assessment_id":"A-1","tree_id":"T-1","agent_id":"agent-07","observed_at":"2026-11-20T09:30:00Z","likelihood_of_failure":"probable","likelihood_of_impact":"high","consequences":"significant","defects":[{"kind":"decay","severity":3},{"kind":"deadwood","severity":2}],"crown_dieback_pct":15}
{"type":"assessment","assessment_id":"A-2","tree_id":"T-1","agent_id":"agent-03","observed_at":"2026-11-24T10:00:00Z","likelihood_of_failure":"possible","likelihood_of_impact":"medium","consequences":"minor"}
{"type":"assessment","assessment_id":"A-2","revision":2,"tree_id":"T-1","agent_id":"agent-03","observed_at":"2026-11-24T10:00:00Z","likelihood_of_failure":"possible","likelihood_of_impact":"high","consequences":"significant","defects":[{"kind":"crack","severity":4}],"crown_dieback_pct":10}
{"type":"reading","sensor_id":"S-1","tree_id":"T-1","metric":"tilt_deg","value":4.5,"ts":"2026-11-25T09:10:00Z"}
{"type":"reading","sensor_id":"S-1","tree_id":"T-1","metric":"tilt_deg","value":9.0,"ts":"2026-11-25T07:00:00Z"}
{"type":"reading","sensor_id":"S-2","tree_id":"T-1","metric":"sway_hz","value":0.4,"ts":1795597200000}
{"type":"reading","sensor_id":"S-3","tree_id":"T-1","metric":"wind_gust_ms","value":18.0,"ts":"2026-11-25T09:50:00Z"}
{"type":"reading","sensor_id":"S-4","tree_id":"T-1","metric":"soil_moisture_pct","value":35.0,"ts":"2026-11-25T09:20:00Z"}
{"type":"reading","sensor_id":"S-4","tree_id":"T-1","metric":"soil_moisture_pct","value":47.0,"ts":"2026-11-25T09:40:00Z"}
{"type":"reading","sensor_id":"S-9","tree_id":"T-1","metric":"sway_hz","value":0,"ts":"2026-11-25T09:45:00Z"}
"#;

    fn run(text: &str) -> NaiveViews {
        let inputs: Vec<NaiveInput> =
            text.lines().enumerate().map(|(i, l)| NaiveInput { order: i as u64, line: l.as_bytes() }).collect();
        naive_views(&inputs)
    }

    fn f(row: &Map<String, Value>, k: &str) -> f64 {
        row[k].as_f64().unwrap_or_else(|| panic!("{k} not a number: {:?}", row[k]))
    }

    fn i(row: &Map<String, Value>, k: &str) -> i64 {
        row[k].as_i64().unwrap_or_else(|| panic!("{k} not an integer: {:?}", row[k]))
    }

    fn s<'a>(row: &'a Map<String, Value>, k: &str) -> &'a str {
        row[k].as_str().unwrap_or_else(|| panic!("{k} not a string: {:?}", row[k]))
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn naive_worked_example_domain_6() {
        assert_eq!(ONE_TREE.lines().count(), 11);
        let v = run(ONE_TREE);

        // One line rejected: sway_hz reading with value 0.
        assert_eq!(v.rejected, 1);

        // W = 2026-11-25T09:50:00Z.
        let w = parse_rfc3339("2026-11-25T09:50:00Z").unwrap();
        assert_eq!(w, 1_795_600_200_000);
        assert_eq!(v.watermark, Some(w));
        // The integer ts of the sway reading is 09:00Z.
        assert_eq!(parse_rfc3339("2026-11-25T09:00:00Z"), Some(1_795_597_200_000));

        // trees
        let trees = &v.views["trees"];
        assert_eq!(trees.len(), 1);
        assert_eq!(s(&trees[0], "tree_id"), "T-1");
        assert_eq!(s(&trees[0], "region"), "eu-west");
        assert!(trees[0]["species"].is_null());
        assert!(trees[0]["dbh_cm"].is_null());
        assert!(close(f(&trees[0], "baseline_tilt_deg"), 2.0));
        assert!(close(f(&trees[0], "baseline_sway_hz"), 0.5));
        assert_eq!(i(&trees[0], "updated_at"), parse_rfc3339("2026-11-25T08:00:00Z").unwrap());
        assert_eq!(trees[0].len(), 11);

        // afiss_current
        let afiss = &v.views["afiss_current"];
        assert_eq!(afiss.len(), 1);
        let a = &afiss[0];
        assert_eq!(a.len(), 15);
        assert_eq!(s(a, "tree_id"), "T-1");
        assert_eq!(s(a, "assessment_id"), "A-2");
        assert_eq!(i(a, "revision"), 2);
        assert_eq!(s(a, "agent_id"), "agent-03");
        assert_eq!(i(a, "observed_at"), parse_rfc3339("2026-11-24T10:00:00Z").unwrap());
        assert_eq!(s(a, "likelihood_of_failure"), "possible");
        assert_eq!(s(a, "likelihood_of_impact"), "high");
        assert_eq!(s(a, "consequences"), "significant");
        assert_eq!(s(a, "failure_impact"), "somewhat_likely");
        assert_eq!(s(a, "risk_rating"), "moderate");
        assert_eq!(i(a, "defect_count"), 1);
        assert_eq!(i(a, "defect_severity_sum"), 4);
        assert_eq!(i(a, "max_defect_severity"), 4);
        assert!(close(f(a, "crown_dieback_pct"), 10.0));
        assert_eq!(i(a, "assessments_total"), 2);

        // sensor_windows
        let sw = &v.views["sensor_windows"];
        assert_eq!(sw.len(), 1);
        let r = &sw[0];
        assert_eq!(r.len(), 7);
        assert_eq!(s(r, "tree_id"), "T-1");
        assert_eq!(i(r, "window_end"), w);
        assert!(close(f(r, "tilt_max"), 4.5));
        assert!(close(f(r, "sway_min"), 0.4));
        assert!(close(f(r, "gust_max"), 18.0));
        assert!(close(f(r, "soil_mean"), 41.0));
        assert_eq!(i(r, "readings"), 5);

        // tree_scores
        let ts = &v.views["tree_scores"];
        assert_eq!(ts.len(), 1);
        let t = &ts[0];
        assert_eq!(t.len(), 11);
        assert_eq!(s(t, "tree_id"), "T-1");
        assert_eq!(s(t, "region"), "eu-west");
        assert!(close(f(t, "score"), 42.5));
        assert_eq!(s(t, "band"), "poor");
        assert_eq!(s(t, "risk_rating"), "moderate");
        assert!(close(f(t, "base"), 65.0));
        assert!(close(f(t, "defect_penalty"), 8.0));
        assert!(close(f(t, "dieback_penalty"), 2.0));
        assert!(close(f(t, "tilt_penalty"), 7.5));
        assert!(close(f(t, "sway_penalty"), 5.0));
        assert!(close(f(t, "storm_penalty"), 0.0));

        // region_summary
        let rs = &v.views["region_summary"];
        assert_eq!(rs.len(), 1);
        let r = &rs[0];
        assert_eq!(r.len(), 12);
        assert_eq!(s(r, "region"), "eu-west");
        assert_eq!(i(r, "trees"), 1);
        assert_eq!(i(r, "assessed_trees"), 1);
        assert!(close(f(r, "mean_score"), 42.5));
        assert_eq!((i(r, "good"), i(r, "fair"), i(r, "poor"), i(r, "critical")), (0, 0, 1, 0));
        assert_eq!((i(r, "risk_low"), i(r, "risk_moderate"), i(r, "risk_high"), i(r, "risk_extreme")), (0, 1, 0, 0));

        // agent_activity, sorted by (agent_id, day)
        let aa = &v.views["agent_activity"];
        assert_eq!(aa.len(), 2);
        assert_eq!(s(&aa[0], "agent_id"), "agent-03");
        assert_eq!(s(&aa[0], "day"), "2026-11-24");
        assert_eq!(i(&aa[0], "assessments"), 1);
        assert_eq!(i(&aa[0], "distinct_trees"), 1);
        assert_eq!(i(&aa[0], "high_or_extreme"), 0);
        assert_eq!(s(&aa[1], "agent_id"), "agent-07");
        assert_eq!(s(&aa[1], "day"), "2026-11-20");
        assert_eq!(i(&aa[1], "assessments"), 1);
        assert_eq!(i(&aa[1], "distinct_trees"), 1);
        assert_eq!(i(&aa[1], "high_or_extreme"), 1);
    }

    #[test]
    fn naive_worked_example_order_independent() {
        // Reversing line order but keeping each line's source-order rank must
        // not change anything.
        let lines: Vec<&str> = ONE_TREE.lines().collect();
        let mut inputs: Vec<NaiveInput> =
            lines.iter().enumerate().map(|(i, l)| NaiveInput { order: i as u64, line: l.as_bytes() }).collect();
        let a = naive_views(&inputs);
        inputs.reverse();
        let b = naive_views(&inputs);
        assert_eq!(a.rejected, b.rejected);
        assert_eq!(a.watermark, b.watermark);
        assert_eq!(a.views, b.views);
    }

    #[test]
    fn naive_rfc3339_and_days() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_rfc3339("2000-01-01T00:00:00Z"), Some(946_684_800_000));
        assert_eq!(parse_rfc3339("2100-01-01T00:00:00Z"), Some(4_102_444_800_000));
        assert_eq!(
            parse_rfc3339("2026-11-25T10:00:01.250Z"),
            Some(parse_rfc3339("2026-11-25T10:00:01Z").unwrap() + 250)
        );
        assert_eq!(parse_rfc3339("2026-11-25T11:30:00+01:30"), parse_rfc3339("2026-11-25T10:00:00Z"));
        assert_eq!(parse_rfc3339("2026-11-25T05:00:00-05:00"), parse_rfc3339("2026-11-25T10:00:00z"));
        assert_eq!(parse_rfc3339("2026-11-25T10:00:00.5Z"), Some(parse_rfc3339("2026-11-25T10:00:00Z").unwrap() + 500));
        assert_eq!(
            parse_rfc3339("2026-11-25T10:00:00.123999Z"),
            Some(parse_rfc3339("2026-11-25T10:00:00Z").unwrap() + 123)
        );
        assert_eq!(parse_rfc3339("2024-02-29T00:00:00Z").map(utc_day).as_deref(), Some("2024-02-29"));
        assert_eq!(parse_rfc3339("2023-02-29T00:00:00Z"), None);
        assert_eq!(parse_rfc3339("2026-11-25 10:00:00Z"), None);
        assert_eq!(parse_rfc3339("2026-11-25T10:00:00"), None);
        assert_eq!(parse_rfc3339("2026-11-25T10:00:00.Z"), None);
        assert_eq!(parse_rfc3339("2026-11-25T24:00:00Z"), None);
        for ms in [0i64, 946_684_800_000, 951_782_400_000, 1_795_600_200_000, 4_102_444_799_999] {
            let day = utc_day(ms);
            let back = parse_rfc3339(&format!("{day}T00:00:00Z")).unwrap();
            assert!(back <= ms && ms < back + DAY_MS, "{ms} {day}");
        }
        assert_eq!(utc_day(1_795_600_200_000), "2026-11-25");
    }

    #[test]
    fn naive_validation_rules() {
        let ok = |l: &str| parse_line(l.as_bytes()).is_ok();
        let tree = r#"{"type":"tree","tree_id":"T-1","region":"eu-west","lat":1,"lon":2,"updated_at":946684800000"#;
        assert!(ok(&format!("{tree}}}")));
        assert!(ok(&format!("{tree},\"extra\":[1,2]}}")));
        assert!(!ok(&format!("{tree},\"dbh_cm\":0}}")));
        assert!(ok(&format!("{tree},\"dbh_cm\":1500}}")));
        assert!(!ok(&format!("{tree},\"lat\":90.0001}}")));
        assert!(!ok(&format!("{tree},\"region\":\"mars\"}}")));
        assert!(!ok(&format!("{tree},\"species\":\"{}\"}}", "é".repeat(129))));
        assert!(ok(&format!("{tree},\"species\":\"{}\"}}", "é".repeat(128))));
        assert!(!ok(&format!("{tree},\"tree_id\":\"{}\"}}", "a".repeat(65))));
        assert!(!ok(&format!("{tree},\"tree_id\":\"a b\"}}")));
        assert!(!ok(&format!("{tree},\"updated_at\":946684799999}}")));
        assert!(ok(&format!("{tree},\"updated_at\":946684800000.0}}")));
        assert!(!ok(&format!("{tree},\"updated_at\":946684800000.5}}")));
        assert!(!ok(&format!("{tree},\"updated_at\":\"2100-01-01T00:00:00Z\"}}")));
        assert!(!ok(&format!("{tree},\"updated_at\":\"2099-12-31T23:30:00-01:00\"}}")));
        assert!(ok(r#"{"type":"tree","tree_id":"T-1","deleted":true,"updated_at":"2026-01-01T00:00:00Z"}"#));
        assert!(!ok(r#"{"type":"tree","tree_id":"T-1","deleted":true,"lat":100,"updated_at":"2026-01-01T00:00:00Z"}"#));
        assert!(!ok(r#"{"type":"tree","tree_id":"T-1","deleted":"yes","updated_at":"2026-01-01T00:00:00Z"}"#));
        assert!(!ok(r#"{"tree_id":"T-1"}"#));
        assert!(!ok(r#"{"type":"weather"}"#));
        assert!(!ok("[1,2]"));
        assert!(!ok("not json"));
        assert!(!ok(""));

        let asm = r#"{"type":"assessment","assessment_id":"A","tree_id":"T","agent_id":"g","observed_at":"2026-01-01T00:00:00Z","likelihood_of_failure":"possible","likelihood_of_impact":"low","consequences":"minor""#;
        assert!(ok(&format!("{asm}}}")));
        assert!(ok(&format!("{asm},\"revision\":2.0}}")));
        assert!(!ok(&format!("{asm},\"revision\":0}}")));
        assert!(!ok(&format!("{asm},\"revision\":1.5}}")));
        assert!(!ok(&format!("{asm},\"revision\":\"2\"}}")));
        assert!(!ok(&format!("{asm},\"defects\":[{{\"kind\":\"decay\",\"severity\":6}}]}}")));
        assert!(!ok(&format!("{asm},\"defects\":[{{\"kind\":\"rot\",\"severity\":1}}]}}")));
        assert!(!ok(&format!("{asm},\"defects\":[{{\"kind\":\"decay\"}}]}}")));
        let d = vec![r#"{"kind":"decay","severity":1}"#; 33].join(",");
        assert!(!ok(&format!("{asm},\"defects\":[{d}]}}")));
        let d = vec![r#"{"kind":"decay","severity":1}"#; 32].join(",");
        assert!(ok(&format!("{asm},\"defects\":[{d}]}}")));
        assert!(!ok(&format!("{asm},\"crown_dieback_pct\":100.5}}")));
        assert!(!ok(&format!("{asm},\"notes\":\"{}\"}}", "x".repeat(4097))));

        let rd = r#"{"type":"reading","sensor_id":"S","tree_id":"T","ts":"2026-01-01T00:00:00Z""#;
        assert!(ok(&format!("{rd},\"metric\":\"sway_hz\",\"value\":20}}")));
        assert!(!ok(&format!("{rd},\"metric\":\"sway_hz\",\"value\":0}}")));
        assert!(ok(&format!("{rd},\"metric\":\"tilt_deg\",\"value\":0}}")));
        assert!(!ok(&format!("{rd},\"metric\":\"wind_gust_ms\",\"value\":120.1}}")));
        assert!(!ok(&format!("{rd},\"metric\":\"wind_gust_ms\",\"value\":1e999}}")));
        assert!(!ok(&format!("{rd},\"metric\":\"rain\",\"value\":1}}")));

        // 64 KiB limit on the line's bytes.
        let pad = |n: usize| {
            let base = format!("{rd},\"metric\":\"tilt_deg\",\"value\":1,\"p\":\"\"}}");
            format!("{rd},\"metric\":\"tilt_deg\",\"value\":1,\"p\":\"{}\"}}", "x".repeat(n - base.len()))
        };
        assert!(ok(&pad(65536)));
        assert!(!ok(&pad(65537)));
    }

    #[test]
    fn naive_versions_withdrawals_and_deletions() {
        let text = r#"{"type":"tree","tree_id":"T","region":"us-east","lat":0,"lon":0,"updated_at":"2026-01-02T00:00:00Z"}
{"type":"tree","tree_id":"T","deleted":true,"updated_at":"2026-01-01T00:00:00Z"}
{"type":"tree","tree_id":"U","region":"us-east","lat":0,"lon":0,"updated_at":"2026-01-01T00:00:00Z"}
{"type":"tree","tree_id":"U","deleted":true,"updated_at":"2026-01-01T00:00:00Z"}
{"type":"assessment","assessment_id":"A","revision":3,"tree_id":"T","agent_id":"g","observed_at":"2026-01-01T00:00:00Z","likelihood_of_failure":"imminent","likelihood_of_impact":"high","consequences":"severe","withdrawn":true}
{"type":"assessment","assessment_id":"A","revision":2,"tree_id":"T","agent_id":"g","observed_at":"2026-01-01T00:00:00Z","likelihood_of_failure":"imminent","likelihood_of_impact":"high","consequences":"severe"}
{"type":"assessment","assessment_id":"B","tree_id":"U","agent_id":"g","observed_at":"2026-01-01T23:59:59.999Z","likelihood_of_failure":"imminent","likelihood_of_impact":"high","consequences":"severe"}
"#;
        let v = run(text);
        assert_eq!(v.rejected, 0);
        assert_eq!(v.watermark, None);
        // T registered (newer upsert beats older delete), U deleted (tie -> later line).
        let trees = &v.views["trees"];
        assert_eq!(trees.len(), 1);
        assert_eq!(trees[0]["tree_id"], "T");
        // A withdrawn at rev 3; B is live on unregistered U.
        let afiss = &v.views["afiss_current"];
        assert_eq!(afiss.len(), 1);
        assert_eq!(afiss[0]["tree_id"], "U");
        assert_eq!(afiss[0]["risk_rating"], "extreme");
        assert!(v.views["sensor_windows"].is_empty());
        let ts = &v.views["tree_scores"];
        assert_eq!(ts.len(), 1);
        assert_eq!(ts[0]["risk_rating"], "unassessed");
        assert!(close(ts[0]["score"].as_f64().unwrap(), 75.0));
        assert_eq!(ts[0]["band"], "fair");
        let rs = &v.views["region_summary"];
        assert_eq!(rs[0]["assessed_trees"], 0);
        let aa = &v.views["agent_activity"];
        assert_eq!(aa.len(), 1);
        assert_eq!(aa[0]["day"], "2026-01-01");
        assert_eq!(aa[0]["high_or_extreme"], 1);
    }
}
