//! Parsing and validation of raw JSON events (DOMAIN §2).
//!
//! A message is parsed once into borrowed JSON values ([`Val`]), then each field
//! is checked against the rules of its table. The first failing rule becomes a
//! [`Rejection`] that names the field and the rule; a rejection never panics.
//!
//! Choices where the spec is silent:
//! - `null` for an optional field means "absent"; `null` for a required field is `missing`.
//! - An integer field (`revision`, `severity`, an epoch-ms timestamp) accepts a JSON number
//!   with no fractional part (`2.0`); `2.5` is `wrong_type`.
//! - A field given twice in one object is `duplicate`.
//! - A tree event with `deleted: true` needs only `tree_id` and `updated_at`; other
//!   fields, when present, are still validated.
//! - A withdrawal (`withdrawn: true`) is a full assessment record: its required fields
//!   are required.
//! - On a Kafka topic the topic gives the kind; a `type` field that disagrees is rejected.

use crate::event::*;
use crate::time::{parse_rfc3339, MAX_TS_MS, MIN_TS_MS};
use compact_str::CompactString;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use std::borrow::Cow;
use std::fmt;

/// Largest accepted message, in bytes.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;

/// The rule an event broke.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Rule {
    /// Larger than 64 KiB.
    TooLarge,
    /// Not valid JSON.
    InvalidJson,
    /// Valid JSON but not an object.
    NotObject,
    /// A field appears twice.
    Duplicate,
    /// A required field is absent or null.
    Missing,
    /// A field has the wrong JSON type.
    WrongType,
    /// A string is not one of the allowed values.
    UnknownValue,
    /// A number or timestamp is outside its range.
    OutOfRange,
    /// A number is not finite.
    NotFinite,
    /// A string is longer than allowed.
    TooLong,
    /// An identifier is empty, too long or has characters outside `[A-Za-z0-9_.:-]`.
    BadId,
    /// A timestamp string is not RFC 3339.
    BadTimestamp,
    /// An array has too many items.
    TooMany,
}

impl Rule {
    /// Stable snake_case name (metrics label, dead-letter reason).
    pub fn as_str(self) -> &'static str {
        match self {
            Rule::TooLarge => "too_large",
            Rule::InvalidJson => "invalid_json",
            Rule::NotObject => "not_object",
            Rule::Duplicate => "duplicate",
            Rule::Missing => "missing",
            Rule::WrongType => "wrong_type",
            Rule::UnknownValue => "unknown_value",
            Rule::OutOfRange => "out_of_range",
            Rule::NotFinite => "not_finite",
            Rule::TooLong => "too_long",
            Rule::BadId => "bad_id",
            Rule::BadTimestamp => "bad_timestamp",
            Rule::TooMany => "too_many",
        }
    }
}

/// Why an event was rejected: the field (empty for the whole message), the rule, a detail.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    /// The offending field, e.g. `value` or `defects[2].severity`; empty for the whole message.
    pub field: CompactString,
    /// The rule broken.
    pub rule: Rule,
    /// A human explanation.
    pub detail: String,
}

impl Rejection {
    fn new(field: impl Into<CompactString>, rule: Rule, detail: impl Into<String>) -> Self {
        Rejection { field: field.into(), rule, detail: detail.into() }
    }
    /// A short low-cardinality label `field:rule` for metrics.
    pub fn label(&self) -> String {
        // Array indices would explode the label set: `defects[3].kind` -> `defects.kind`.
        let field: String = match self.field.find('[') {
            Some(i) => {
                let rest = self.field[i..].split_once(']').map_or("", |(_, r)| r);
                format!("{}{}", &self.field[..i], rest)
            }
            None => self.field.to_string(),
        };
        // Only the fields events have: any other key (a duplicated unknown one) is `other`, so a
        // sender cannot make up metric labels.
        let base = field.split(['.', '[']).next().unwrap_or("");
        let field = if FIELD_NAMES.contains(&base) { field.as_str() } else { "other" };
        if field.is_empty() || base.is_empty() {
            self.rule.as_str().to_string()
        } else {
            format!("{field}:{}", self.rule.as_str())
        }
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            write!(f, "{}: {}", self.rule.as_str(), self.detail)
        } else {
            write!(f, "field `{}`: {}: {}", self.field, self.rule.as_str(), self.detail)
        }
    }
}

/// A JSON value that borrows strings from the input where it can.
#[derive(Clone, Debug, PartialEq)]
pub enum Val<'a> {
    /// `null`
    Null,
    /// `true`/`false`
    Bool(bool),
    /// An integer that fits `i64`.
    Int(i64),
    /// An integer above `i64::MAX`.
    UInt(u64),
    /// Any other number.
    Float(f64),
    /// A string.
    Str(Cow<'a, str>),
    /// An array.
    Array(Vec<Val<'a>>),
    /// An object, keys in input order.
    Object(Vec<(Cow<'a, str>, Val<'a>)>),
}

impl Val<'_> {
    fn type_name(&self) -> &'static str {
        match self {
            Val::Null => "null",
            Val::Bool(_) => "a boolean",
            Val::Int(_) | Val::UInt(_) | Val::Float(_) => "a number",
            Val::Str(_) => "a string",
            Val::Array(_) => "an array",
            Val::Object(_) => "an object",
        }
    }
}

struct ValVisitor;

impl<'de> Visitor<'de> for ValVisitor {
    type Value = Val<'de>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_unit<E>(self) -> Result<Val<'de>, E> {
        Ok(Val::Null)
    }
    fn visit_none<E>(self) -> Result<Val<'de>, E> {
        Ok(Val::Null)
    }
    fn visit_bool<E>(self, v: bool) -> Result<Val<'de>, E> {
        Ok(Val::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Val<'de>, E> {
        Ok(Val::Int(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Val<'de>, E> {
        Ok(i64::try_from(v).map_or(Val::UInt(v), Val::Int))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Val<'de>, E> {
        Ok(Val::Float(v))
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Val<'de>, E> {
        Ok(Val::Str(Cow::Borrowed(v)))
    }
    fn visit_str<E>(self, v: &str) -> Result<Val<'de>, E> {
        Ok(Val::Str(Cow::Owned(v.to_owned())))
    }
    fn visit_string<E>(self, v: String) -> Result<Val<'de>, E> {
        Ok(Val::Str(Cow::Owned(v)))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Val<'de>, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(ValSeed)? {
            items.push(item);
        }
        Ok(Val::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Val<'de>, A::Error> {
        let mut entries = Vec::new();
        while let Some(key) = map.next_key_seed(KeySeed)? {
            entries.push((key, map.next_value_seed(ValSeed)?));
        }
        Ok(Val::Object(entries))
    }
}

struct ValSeed;
impl<'de> de::DeserializeSeed<'de> for ValSeed {
    type Value = Val<'de>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Val<'de>, D::Error> {
        d.deserialize_any(ValVisitor)
    }
}

struct KeySeed;
impl<'de> de::DeserializeSeed<'de> for KeySeed {
    type Value = Cow<'de, str>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Cow<'de, str>, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Cow<'de, str>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a key")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Cow<'de, str>, E> {
                Ok(Cow::Borrowed(v))
            }
            fn visit_str<E>(self, v: &str) -> Result<Cow<'de, str>, E> {
                Ok(Cow::Owned(v.to_owned()))
            }
        }
        d.deserialize_str(KeyVisitor)
    }
}

/// The fields of all event kinds, as raw values. Unknown fields are skipped unparsed.
#[derive(Default)]
struct RawEvent<'a> {
    fields: [Option<Val<'a>>; FIELD_NAMES.len()],
    duplicate: Option<&'static str>,
}

const FIELD_NAMES: [&str; 28] = [
    "type",
    "tree_id",
    "region",
    "species",
    "lat",
    "lon",
    "dbh_cm",
    "height_m",
    "target_occupancy",
    "baseline_tilt_deg",
    "baseline_sway_hz",
    "updated_at",
    "deleted",
    "assessment_id",
    "revision",
    "agent_id",
    "observed_at",
    "likelihood_of_failure",
    "likelihood_of_impact",
    "consequences",
    "defects",
    "crown_dieback_pct",
    "notes",
    "withdrawn",
    "sensor_id",
    "metric",
    "value",
    "ts",
];

/// The index of a known field in [`FIELD_NAMES`] (a `match`, not a scan: this runs for every field of every event).
fn field_index(name: &str) -> Option<usize> {
    match name {
        "type" => Some(0),
        "tree_id" => Some(1),
        "region" => Some(2),
        "species" => Some(3),
        "lat" => Some(4),
        "lon" => Some(5),
        "dbh_cm" => Some(6),
        "height_m" => Some(7),
        "target_occupancy" => Some(8),
        "baseline_tilt_deg" => Some(9),
        "baseline_sway_hz" => Some(10),
        "updated_at" => Some(11),
        "deleted" => Some(12),
        "assessment_id" => Some(13),
        "revision" => Some(14),
        "agent_id" => Some(15),
        "observed_at" => Some(16),
        "likelihood_of_failure" => Some(17),
        "likelihood_of_impact" => Some(18),
        "consequences" => Some(19),
        "defects" => Some(20),
        "crown_dieback_pct" => Some(21),
        "notes" => Some(22),
        "withdrawn" => Some(23),
        "sensor_id" => Some(24),
        "metric" => Some(25),
        "value" => Some(26),
        "ts" => Some(27),
        _ => None,
    }
}

struct RawVisitor;
impl<'de> Visitor<'de> for RawVisitor {
    type Value = Option<RawEvent<'de>>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut raw = RawEvent::default();
        while let Some(key) = map.next_key_seed(KeySeed)? {
            match field_index(&key) {
                Some(i) => {
                    let v = map.next_value_seed(ValSeed)?;
                    if raw.fields[i].is_some() && raw.duplicate.is_none() {
                        raw.duplicate = Some(FIELD_NAMES[i]);
                    }
                    raw.fields[i] = Some(v);
                }
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(Some(raw))
    }
    // Any non-object top level value: report "not an object" (not a JSON error).
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(None)
    }
    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
}

impl<'a> RawEvent<'a> {
    fn take(&mut self, name: &'static str) -> Option<Val<'a>> {
        let i = field_index(name)?;
        match self.fields[i].take() {
            Some(Val::Null) | None => None,
            some => some,
        }
    }
}

type Res<T> = std::result::Result<T, Rejection>;

fn wrong_type(field: &str, expected: &str, got: &Val) -> Rejection {
    Rejection::new(field, Rule::WrongType, format!("expected {expected}, got {}", got.type_name()))
}

fn required<T>(field: &str, v: Option<T>) -> Res<T> {
    v.ok_or_else(|| Rejection::new(field, Rule::Missing, "required field is absent"))
}

fn id(field: &str, v: Option<Val>) -> Res<Option<Id>> {
    let Some(v) = v else { return Ok(None) };
    let Val::Str(s) = &v else {
        return Err(wrong_type(field, "a string", &v));
    };
    let n = s.len();
    if n == 0 || n > 64 {
        return Err(Rejection::new(field, Rule::BadId, format!("must be 1-64 characters, got {n}")));
    }
    if let Some(c) = s.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '-'))) {
        return Err(Rejection::new(field, Rule::BadId, format!("character {c:?} is not in [A-Za-z0-9_.:-]")));
    }
    Ok(Some(CompactString::from(s.as_ref())))
}

fn string(field: &str, v: Option<Val>, max_chars: usize) -> Res<Option<String>> {
    let Some(v) = v else { return Ok(None) };
    let Val::Str(s) = v else {
        return Err(wrong_type(field, "a string", &v));
    };
    let n = s.chars().count();
    if n > max_chars {
        return Err(Rejection::new(field, Rule::TooLong, format!("at most {max_chars} characters, got {n}")));
    }
    Ok(Some(s.into_owned()))
}

fn enumeration<T>(field: &str, v: Option<Val>, parse: fn(&str) -> Option<T>, expected: &str) -> Res<Option<T>> {
    let Some(v) = v else { return Ok(None) };
    let Val::Str(s) = &v else {
        return Err(wrong_type(field, "a string", &v));
    };
    match parse(s) {
        Some(t) => Ok(Some(t)),
        None => {
            let shown: String = s.chars().take(40).collect();
            Err(Rejection::new(field, Rule::UnknownValue, format!("{shown:?} is not {expected}")))
        }
    }
}

fn number(field: &str, v: Option<Val>) -> Res<Option<f64>> {
    let x = match v {
        None => return Ok(None),
        Some(Val::Int(i)) => i as f64,
        Some(Val::UInt(u)) => u as f64,
        Some(Val::Float(f)) => f,
        Some(other) => return Err(wrong_type(field, "a number", &other)),
    };
    if !x.is_finite() {
        return Err(Rejection::new(field, Rule::NotFinite, "number is not finite"));
    }
    Ok(Some(x))
}

/// Checks `x` against a range whose ends are open or closed, as the tables write it.
fn ranged(field: &str, x: Option<f64>, lo: f64, lo_open: bool, hi: f64, hi_open: bool) -> Res<Option<f64>> {
    let Some(x) = x else { return Ok(None) };
    let ok_lo = if lo_open { x > lo } else { x >= lo };
    let ok_hi = if hi_open { x < hi } else { x <= hi };
    if ok_lo && ok_hi {
        Ok(Some(x))
    } else {
        let (l, r) = (if lo_open { '(' } else { '[' }, if hi_open { ')' } else { ']' });
        Err(Rejection::new(field, Rule::OutOfRange, format!("{x} is not in {l}{lo}, {hi}{r}")))
    }
}

fn integer(field: &str, v: Option<Val>) -> Res<Option<i64>> {
    match v {
        None => Ok(None),
        Some(Val::Int(i)) => Ok(Some(i)),
        Some(Val::UInt(u)) => Err(Rejection::new(field, Rule::OutOfRange, format!("{u} is too large"))),
        Some(Val::Float(f)) if f.is_finite() && f.fract() == 0.0 && f.abs() < 9.0e15 => Ok(Some(f as i64)),
        Some(Val::Float(f)) if !f.is_finite() => Err(Rejection::new(field, Rule::NotFinite, "number is not finite")),
        Some(other) => Err(wrong_type(field, "an integer", &other)),
    }
}

fn boolean(field: &str, v: Option<Val>) -> Res<Option<bool>> {
    match v {
        None => Ok(None),
        Some(Val::Bool(b)) => Ok(Some(b)),
        Some(other) => Err(wrong_type(field, "a boolean", &other)),
    }
}

fn timestamp(field: &str, v: Option<Val>) -> Res<Option<i64>> {
    let ms = match v {
        None => return Ok(None),
        Some(Val::Str(s)) => parse_rfc3339(&s).ok_or_else(|| {
            let shown: String = s.chars().take(40).collect();
            Rejection::new(field, Rule::BadTimestamp, format!("{shown:?} is not an RFC 3339 date-time"))
        })?,
        Some(v @ (Val::Int(_) | Val::UInt(_) | Val::Float(_))) => match integer(field, Some(v)) {
            Ok(Some(ms)) => ms,
            Ok(None) => return Ok(None),
            Err(e) if e.rule == Rule::OutOfRange => i64::MAX,
            Err(e) => {
                return Err(Rejection::new(field, e.rule, format!("{} (epoch milliseconds)", e.detail)));
            }
        },
        Some(other) => return Err(wrong_type(field, "an RFC 3339 string or epoch milliseconds", &other)),
    };
    if !(MIN_TS_MS..MAX_TS_MS).contains(&ms) {
        return Err(Rejection::new(field, Rule::OutOfRange, "must lie in [2000-01-01, 2100-01-01)"));
    }
    Ok(Some(ms))
}

/// Parses and validates one message.
///
/// `kind` is the kind implied by the channel (a Kafka topic), or `None` for files,
/// where the `type` field says it. `pos` is the message's source position.
pub fn parse_event(bytes: &[u8], kind: Option<EventKind>, pos: Position) -> Res<Event> {
    if bytes.len() > MAX_MESSAGE_BYTES {
        return Err(Rejection::new(
            "",
            Rule::TooLarge,
            format!("message has {} bytes, the limit is {MAX_MESSAGE_BYTES}", bytes.len()),
        ));
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let raw = de.deserialize_any(RawVisitor).and_then(|raw| de.end().map(|()| raw));
    let mut raw = match raw {
        Ok(Some(raw)) => raw,
        Ok(None) => return Err(Rejection::new("", Rule::NotObject, "the message is not a JSON object")),
        Err(e) => return Err(json_error(bytes, &e)),
    };
    if let Some(field) = raw.duplicate {
        return Err(Rejection::new(field, Rule::Duplicate, "field appears more than once"));
    }
    let declared = enumeration("type", raw.take("type"), EventKind::parse, EventKind::expected())?;
    let kind = match (kind, declared) {
        (Some(k), Some(d)) if k != d => {
            return Err(Rejection::new("type", Rule::UnknownValue, format!("a {d} event on the {k} channel")));
        }
        (Some(k), _) => k,
        (None, d) => required("type", d)?,
    };
    match kind {
        EventKind::Tree => tree(raw, pos).map(Event::Tree),
        EventKind::Assessment => assessment(raw, pos),
        EventKind::Reading => reading(raw).map(Event::Reading),
    }
}

/// A serde_json error as a rejection: numbers too large for `f64` are `not_finite`
/// (JSON has no other way to write a non-finite number) and name their field.
fn json_error(bytes: &[u8], e: &serde_json::Error) -> Rejection {
    let msg = e.to_string();
    if msg.starts_with("number out of range") {
        let field = field_before(bytes, e.column()).unwrap_or_default();
        return Rejection::new(field, Rule::NotFinite, "number is not finite (out of the f64 range)");
    }
    Rejection::new("", Rule::InvalidJson, msg)
}

/// The key of the member whose value ends near `column` (1-based) of a one-line message.
fn field_before(bytes: &[u8], column: usize) -> Option<String> {
    let upto = &bytes[..column.min(bytes.len())];
    let colon = upto.iter().rposition(|&b| b == b':')?;
    let before = &upto[..colon];
    let end = before.iter().rposition(|&b| b == b'"')?;
    let start = before[..end].iter().rposition(|&b| b == b'"')?;
    std::str::from_utf8(&before[start + 1..end]).ok().map(str::to_owned)
}

fn tree(mut raw: RawEvent, pos: Position) -> Res<TreeEvent> {
    let tree_id = required("tree_id", id("tree_id", raw.take("tree_id"))?)?;
    let updated_at = required("updated_at", timestamp("updated_at", raw.take("updated_at"))?)?;
    let deleted = boolean("deleted", raw.take("deleted"))?.unwrap_or(false);
    let region = enumeration("region", raw.take("region"), Region::parse, Region::expected())?;
    let species = string("species", raw.take("species"), 128)?;
    let lat = ranged("lat", number("lat", raw.take("lat"))?, -90.0, false, 90.0, false)?;
    let lon = ranged("lon", number("lon", raw.take("lon"))?, -180.0, false, 180.0, false)?;
    let dbh_cm = ranged("dbh_cm", number("dbh_cm", raw.take("dbh_cm"))?, 0.0, true, 1500.0, false)?;
    let height_m = ranged("height_m", number("height_m", raw.take("height_m"))?, 0.0, true, 150.0, false)?;
    let target_occupancy =
        enumeration("target_occupancy", raw.take("target_occupancy"), Occupancy::parse, Occupancy::expected())?;
    let tilt = ranged(
        "baseline_tilt_deg",
        number("baseline_tilt_deg", raw.take("baseline_tilt_deg"))?,
        0.0,
        false,
        90.0,
        false,
    )?;
    let sway =
        ranged("baseline_sway_hz", number("baseline_sway_hz", raw.take("baseline_sway_hz"))?, 0.0, true, 20.0, false)?;
    let (region, lat, lon) = if deleted {
        (region, lat.unwrap_or(0.0), lon.unwrap_or(0.0))
    } else {
        (Some(required("region", region)?), required("lat", lat)?, required("lon", lon)?)
    };
    Ok(TreeEvent {
        updated_at,
        pos,
        tree_id,
        deleted,
        region,
        species: species.map(CompactString::from),
        lat: F64(lat),
        lon: F64(lon),
        dbh_cm: dbh_cm.map(F64),
        height_m: height_m.map(F64),
        target_occupancy,
        baseline_tilt_deg: F64(tilt.unwrap_or(0.0)),
        baseline_sway_hz: sway.map(F64),
    })
}

fn assessment(mut raw: RawEvent, pos: Position) -> Res<Event> {
    let assessment_id = required("assessment_id", id("assessment_id", raw.take("assessment_id"))?)?;
    let revision = integer("revision", raw.take("revision"))?.unwrap_or(1);
    if !(1..=i64::from(u32::MAX)).contains(&revision) {
        return Err(Rejection::new("revision", Rule::OutOfRange, format!("{revision} is not >= 1")));
    }
    let tree_id = required("tree_id", id("tree_id", raw.take("tree_id"))?)?;
    let agent_id = required("agent_id", id("agent_id", raw.take("agent_id"))?)?;
    let observed_at = required("observed_at", timestamp("observed_at", raw.take("observed_at"))?)?;
    let lof = required(
        "likelihood_of_failure",
        enumeration("likelihood_of_failure", raw.take("likelihood_of_failure"), Failure::parse, Failure::expected())?,
    )?;
    let loi = required(
        "likelihood_of_impact",
        enumeration("likelihood_of_impact", raw.take("likelihood_of_impact"), Impact::parse, Impact::expected())?,
    )?;
    let consequences = required(
        "consequences",
        enumeration("consequences", raw.take("consequences"), Consequences::parse, Consequences::expected())?,
    )?;
    let (mut count, mut sum, mut max) = (0u32, 0u32, 0u32);
    match raw.take("defects") {
        None => {}
        Some(Val::Array(items)) => {
            if items.len() > 32 {
                return Err(Rejection::new("defects", Rule::TooMany, format!("at most 32 items, got {}", items.len())));
            }
            for (i, item) in items.into_iter().enumerate() {
                let severity = defect(i, item)?;
                count += 1;
                sum += severity;
                max = max.max(severity);
            }
        }
        Some(other) => return Err(wrong_type("defects", "an array", &other)),
    }
    let dieback = ranged(
        "crown_dieback_pct",
        number("crown_dieback_pct", raw.take("crown_dieback_pct"))?,
        0.0,
        false,
        100.0,
        false,
    )?;
    let notes = string("notes", raw.take("notes"), 4096)?;
    let withdrawn = boolean("withdrawn", raw.take("withdrawn"))?.unwrap_or(false);
    Ok(Event::Assessment(
        AssessmentEvent {
            assessment_id,
            revision: revision as u32,
            pos,
            tree_id,
            agent_id,
            observed_at,
            likelihood_of_failure: lof,
            likelihood_of_impact: loi,
            consequences,
            defect_count: count,
            defect_severity_sum: sum,
            max_defect_severity: max,
            crown_dieback_pct: F64(dieback.unwrap_or(0.0)),
            withdrawn,
        },
        notes,
    ))
}

/// Validates one item of `defects`; returns its severity.
fn defect(i: usize, item: Val) -> Res<u32> {
    let Val::Object(entries) = item else {
        return Err(wrong_type(&format!("defects[{i}]"), "an object", &item));
    };
    let (mut kind, mut severity) = (None, None);
    for (k, v) in entries {
        match k.as_ref() {
            "kind" if kind.is_some() => {
                return Err(Rejection::new(
                    format!("defects[{i}].kind"),
                    Rule::Duplicate,
                    "field appears more than once",
                ))
            }
            "severity" if severity.is_some() => {
                return Err(Rejection::new(
                    format!("defects[{i}].severity"),
                    Rule::Duplicate,
                    "field appears more than once",
                ))
            }
            "kind" => kind = Some(v),
            "severity" => severity = Some(v),
            _ => {}
        }
    }
    let kind = kind.filter(|v| *v != Val::Null);
    let severity = severity.filter(|v| *v != Val::Null);
    let kind_field = format!("defects[{i}].kind");
    required(&kind_field, enumeration(&kind_field, kind, DefectKind::parse, DefectKind::expected())?)?;
    let sev_field = format!("defects[{i}].severity");
    let s = required(&sev_field, integer(&sev_field, severity)?)?;
    if !(1..=5).contains(&s) {
        return Err(Rejection::new(sev_field, Rule::OutOfRange, format!("{s} is not in [1, 5]")));
    }
    Ok(s as u32)
}

fn reading(mut raw: RawEvent) -> Res<Reading> {
    let sensor_id = required("sensor_id", id("sensor_id", raw.take("sensor_id"))?)?;
    let tree_id = required("tree_id", id("tree_id", raw.take("tree_id"))?)?;
    let metric = required("metric", enumeration("metric", raw.take("metric"), Metric::parse, Metric::expected())?)?;
    let value = required("value", number("value", raw.take("value"))?)?;
    if !metric.in_range(value) {
        return Err(Rejection::new(
            "value",
            Rule::OutOfRange,
            format!("{value} is not in {} for metric {metric}", metric.range()),
        ));
    }
    let ts = required("ts", timestamp("ts", raw.take("ts"))?)?;
    Ok(Reading { tree_id, sensor_id, metric, value: F64(value), ts })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_index_agrees_with_field_names() {
        for (i, name) in FIELD_NAMES.iter().enumerate() {
            assert_eq!(field_index(name), Some(i), "{name}");
        }
        assert_eq!(field_index("firmware"), None);
    }

    #[test]
    fn labels_name_only_the_events_fields() {
        let label = |field: &str| Rejection::new(field.to_string(), Rule::Duplicate, "").label();
        assert_eq!(label("defects[3].kind"), "defects.kind:duplicate");
        assert_eq!(label("tree_id"), "tree_id:duplicate");
        assert_eq!(label("x-made-up-by-a-sender"), "other:duplicate");
        assert_eq!(label(""), "duplicate");
    }
}
