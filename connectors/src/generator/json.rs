//! The hand-written JSON writers: each event is appended straight into a
//! `Vec<u8>` without allocating. The output is ASCII JSON.

use treeai_dataflows::time::civil_from_days;

use super::agents::{AssessmentRec, CONSEQUENCES, DEFECT_KINDS, LOF, LOI, NOTES, NO_NOTES};
use super::sensors::{METRICS, METRIC_DECIMALS, METRIC_SUFFIX};
use super::world::{
    TreeState, F_ALL, F_DBH, F_HEIGHT, F_OCCUPANCY, F_SPECIES, F_SWAY, F_TILT, OCCUPANCY, REGIONS, SPECIES,
};

/// The `tree_id` of tree `idx`: `T-000042`.
pub(super) fn tree_key(idx: u64) -> String {
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
pub(super) fn push_fixed(buf: &mut Vec<u8>, v: f64, decimals: usize) {
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

/// Epoch ms as RFC 3339 UTC with milliseconds: `2026-11-25T10:00:01.250Z`
/// (for years 0–9999 the same text as `treeai_dataflows::time::format_ts`,
/// without allocating).
pub(super) fn push_rfc3339(buf: &mut Vec<u8>, ms: i64) {
    let days = ms.div_euclid(86_400_000);
    let rem = ms.rem_euclid(86_400_000) as u64;
    let (y, m, d) = civil_from_days(days);
    if (0..=9999).contains(&y) {
        push_padded(buf, y as u64, 4);
    } else {
        push_i64(buf, y);
    }
    buf.push(b'-');
    push_padded(buf, u64::from(m), 2);
    buf.push(b'-');
    push_padded(buf, u64::from(d), 2);
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

/// A timestamp as integer epoch ms or as an RFC 3339 string.
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

/// A reading of `METRICS[metric]` from the sensor of tree `idx`.
pub(super) fn write_reading(buf: &mut Vec<u8>, idx: u64, metric: usize, value: f64, ts: i64, ts_int: bool) {
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
pub(super) fn write_tree(buf: &mut Vec<u8>, idx: u64, t: &TreeState, ts: i64, ts_int: bool, all_fields: bool) {
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

/// One revision of an assessment of tree `idx`.
pub(super) fn write_assessment(buf: &mut Vec<u8>, idx: u64, a: &AssessmentRec) {
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
