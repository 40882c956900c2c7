//! Event time, the watermark, and the dataflow's logical time.
//!
//! # Dataflow time
//!
//! The dataflow runs on `u64` logical times that encode a pair `(W, seq)`
//! ordered lexicographically: `W` is the watermark (DOMAIN §3) and `seq`
//! counts the batches applied while the watermark stands still. Registry and
//! assessment events are applied at once (at the next `seq`); readings enter
//! and leave the windows when `W` moves. So the state of every view at a
//! dataflow time `t` is the state of the spec at watermark [`DataflowTime::watermark`]
//! of `t`, and "read the views at a chosen dataflow time" means exactly that.
//!
//! Layout: the high 42 bits hold `W − 2000-01-01 + 1` in milliseconds (0 when
//! no watermark exists yet), the low 22 bits hold `seq`. Valid timestamps lie
//! in [2000-01-01, 2100-01-01), about 3.16e12 ms, which fits in 42 bits.
//! When more than 4,194,303 batches are applied at one watermark, later
//! batches share the last `seq` (they become visible together at the next
//! watermark step or the next flush with a new `seq`); the order of updates
//! within one time never matters to the views.

use serde::{Deserialize, Serialize};

/// Epoch milliseconds of 2000-01-01T00:00:00Z, the earliest valid timestamp.
pub const MIN_TS_MS: i64 = 946_684_800_000;
/// Epoch milliseconds of 2100-01-01T00:00:00Z, the first invalid timestamp.
pub const MAX_TS_MS: i64 = 4_102_444_800_000;
/// One hour in milliseconds: the window length.
pub const HOUR_MS: i64 = 3_600_000;

const SEQ_BITS: u32 = 22;
const SEQ_MAX: u64 = (1 << SEQ_BITS) - 1;

/// A dataflow logical time: a watermark and a sequence number at that watermark.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct DataflowTime(pub u64);

impl DataflowTime {
    /// The time for watermark `w` (epoch ms; `None` before any reading) and batch `seq`.
    pub fn new(w: Option<i64>, seq: u64) -> Self {
        let w_part = match w {
            None => 0,
            Some(w) => (w.clamp(MIN_TS_MS, MAX_TS_MS) - MIN_TS_MS + 1) as u64,
        };
        DataflowTime((w_part << SEQ_BITS) | seq.min(SEQ_MAX))
    }

    /// The watermark of this time (epoch ms), `None` if no reading was seen yet.
    pub fn watermark(self) -> Option<i64> {
        let w_part = self.0 >> SEQ_BITS;
        (w_part > 0).then(|| w_part as i64 - 1 + MIN_TS_MS)
    }

    /// The batch number at this watermark.
    pub fn seq(self) -> u64 {
        self.0 & SEQ_MAX
    }

    /// The next time at the same watermark (saturating, see the module docs).
    pub fn next_seq(self) -> Self {
        Self::new(self.watermark(), self.seq() + 1)
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let m = m as i64;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The (year, month, day) of a day number since 1970-01-01.
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// The UTC day number (days since 1970-01-01) of an epoch-ms timestamp.
pub fn day_of(ts_ms: i64) -> i32 {
    ts_ms.div_euclid(86_400_000) as i32
}

/// `YYYY-MM-DD` of a day number.
pub fn format_day(day: i32) -> String {
    let (y, m, d) = civil_from_days(day as i64);
    format!("{y:04}-{m:02}-{d:02}")
}

/// RFC 3339 with milliseconds and `Z` of an epoch-ms timestamp.
pub fn format_ts(ts_ms: i64) -> String {
    let day = ts_ms.div_euclid(86_400_000);
    let ms = ts_ms.rem_euclid(86_400_000);
    let (y, m, d) = civil_from_days(day);
    let (h, mi, s, milli) = (ms / 3_600_000, ms / 60_000 % 60, ms / 1000 % 60, ms % 1000);
    format!("{y:04}-{m:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{milli:03}Z")
}

fn digits(b: &[u8]) -> Option<u32> {
    if b.is_empty() || !b.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(b.iter().fold(0u32, |acc, c| acc * 10 + u32::from(c - b'0')))
}

fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        _ => 28,
    }
}

/// Parses an RFC 3339 date-time (`2026-11-25T10:00:01.250Z`, any offset,
/// `T`/`t`/space separator, any number of fraction digits, truncated to
/// milliseconds) into epoch milliseconds. Returns `None` if it is not one.
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || b[13] != b':' || b[16] != b':' {
        return None;
    }
    if !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    let year = digits(&b[0..4])? as i64;
    let month = digits(&b[5..7])?;
    let day = digits(&b[8..10])?;
    let hour = digits(&b[11..13])?;
    let minute = digits(&b[14..16])?;
    let second = digits(&b[17..19])?;
    if !(1..=12).contains(&month) || day == 0 || day > days_in_month(year, month) {
        return None;
    }
    if hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let mut rest = &b[19..];
    let mut millis = 0i64;
    if rest.first() == Some(&b'.') {
        let n = rest[1..].iter().take_while(|c| c.is_ascii_digit()).count();
        if n == 0 {
            return None;
        }
        let frac = &rest[1..1 + n];
        for i in 0..3 {
            millis = millis * 10 + frac.get(i).map_or(0, |c| i64::from(c - b'0'));
        }
        rest = &rest[1 + n..];
    }
    let offset_min: i64 = match rest {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let oh = digits(&[*h1, *h2])? as i64;
            let om = digits(&[*m1, *m2])? as i64;
            if oh > 23 || om > 59 {
                return None;
            }
            let off = oh * 60 + om;
            if *sign == b'-' {
                -off
            } else {
                off
            }
        }
        _ => return None,
    };
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + i64::from(hour) * 3600 + i64::from(minute) * 60 + i64::from(second);
    Some((secs - offset_min * 60) * 1000 + millis)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_forms() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_rfc3339("2026-11-25T09:00:00Z"), Some(1_795_597_200_000));
        assert_eq!(parse_rfc3339("2026-11-25T10:00:01.250Z"), Some(1_795_600_801_250));
        assert_eq!(parse_rfc3339("2026-11-25T11:00:01.25+01:00"), Some(1_795_600_801_250));
        assert_eq!(parse_rfc3339("2026-11-25t04:30:01.2509-05:30"), Some(1_795_600_801_250));
        assert!(parse_rfc3339("2024-02-29T00:00:00Z").is_some());
        assert_eq!(parse_rfc3339("2023-02-29T00:00:00Z"), None);
        assert_eq!(parse_rfc3339("2026-13-01T00:00:00Z"), None);
        assert_eq!(parse_rfc3339("2026-11-25T24:00:00Z"), None);
        assert_eq!(parse_rfc3339("2026-11-25T10:00:00"), None);
        assert_eq!(parse_rfc3339("2026-11-25T10:00:00.Z"), None);
        assert_eq!(parse_rfc3339("yesterday"), None);
    }

    #[test]
    fn civil_round_trip() {
        for day in [-1000, 0, 1, 10_957, 20_417, 47_482] {
            let (y, m, d) = civil_from_days(day);
            assert_eq!(days_from_civil(y, m, d), day);
        }
        assert_eq!(format_day(day_of(1_795_600_801_250)), "2026-11-25");
        assert_eq!(format_ts(1_795_600_801_250), "2026-11-25T10:00:01.250Z");
        assert_eq!(days_from_civil(2000, 1, 1) * 86_400_000, MIN_TS_MS);
        assert_eq!(days_from_civil(2100, 1, 1) * 86_400_000, MAX_TS_MS);
    }

    #[test]
    fn dataflow_time_orders_watermark_then_seq() {
        let a = DataflowTime::new(None, 7);
        let b = DataflowTime::new(Some(MIN_TS_MS), 0);
        let c = DataflowTime::new(Some(1_795_600_801_250), 3);
        let d = DataflowTime::new(Some(1_795_600_801_251), 0);
        assert!(a < b && b < c && c < d);
        assert_eq!(a.watermark(), None);
        assert_eq!(b.watermark(), Some(MIN_TS_MS));
        assert_eq!(c.watermark(), Some(1_795_600_801_250));
        assert_eq!(c.seq(), 3);
        assert_eq!(c.next_seq().seq(), 4);
        let top = DataflowTime::new(Some(MAX_TS_MS - 1), u64::MAX);
        assert_eq!(top.seq(), SEQ_MAX);
        assert_eq!(top.next_seq(), top);
    }
}
