//! Time on the recording's timeline: 48 kHz sample indices relative to the recording start, and
//! UTC calendar formatting (for paths, tags and the sidecar) without a date library.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The sample rate of every internal signal and of the FLAC archive.
pub const SAMPLE_RATE: u32 = 48_000;
const NANOS_PER_SEC: i128 = 1_000_000_000;

/// Signed nanoseconds from `from` to `to` (negative when `to` is earlier), saturating.
pub fn signed_nanos(from: SystemTime, to: SystemTime) -> i128 {
    match to.duration_since(from) {
        Ok(d) => d.as_nanos() as i128,
        Err(e) => -(e.duration().as_nanos() as i128),
    }
}

/// The timeline sample index of `t` for a recording that started at `start` (rounded down;
/// negative before the start).
pub fn sample_index(start: SystemTime, t: SystemTime) -> i64 {
    let ns = signed_nanos(start, t);
    let s = (ns * SAMPLE_RATE as i128).div_euclid(NANOS_PER_SEC);
    s.clamp(i64::MIN as i128, i64::MAX as i128) as i64
}

/// The offset of a (non-negative) sample index as a duration.
pub fn samples_to_duration(samples: i64) -> Duration {
    let s = samples.max(0) as u128;
    let nanos = s * NANOS_PER_SEC as u128 / SAMPLE_RATE as u128;
    Duration::from_nanos(nanos.min(u64::MAX as u128) as u64)
}

/// A duration as a sample count (rounded to nearest).
pub fn duration_to_samples(d: Duration) -> i64 {
    let s =
        (d.as_nanos() * SAMPLE_RATE as u128 + NANOS_PER_SEC as u128 / 2) / NANOS_PER_SEC as u128;
    s.min(i64::MAX as u128) as i64
}

/// `t` as signed nanoseconds since the Unix epoch (the journal's time format).
pub fn to_unix_nanos(t: SystemTime) -> i64 {
    signed_nanos(UNIX_EPOCH, t).clamp(i64::MIN as i128, i64::MAX as i128) as i64
}

/// The inverse of [`to_unix_nanos`].
pub fn from_unix_nanos(ns: i64) -> SystemTime {
    if ns >= 0 {
        UNIX_EPOCH + Duration::from_nanos(ns as u64)
    } else {
        UNIX_EPOCH - Duration::from_nanos(ns.unsigned_abs())
    }
}

/// Rounds to the nearest integer and saturates to i16 (no libm call: `as` saturates).
#[inline]
pub fn to_i16(x: f32) -> i16 {
    (x + 0.5f32.copysign(x)) as i16
}

/// A UTC civil date and time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Civil {
    pub year: i64,
    pub month: u32,
    pub day: u32,
    pub hour: u32,
    pub minute: u32,
    pub second: u32,
    pub millis: u32,
}

/// The UTC calendar date and time of `t` (proleptic Gregorian; times before 1970 work too).
pub fn civil(t: SystemTime) -> Civil {
    let ns = signed_nanos(UNIX_EPOCH, t);
    let secs = ns.div_euclid(NANOS_PER_SEC) as i64;
    let millis = (ns.rem_euclid(NANOS_PER_SEC) / 1_000_000) as u32;
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400) as u32;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    Civil {
        year,
        month,
        day,
        hour: sod / 3600,
        minute: (sod / 60) % 60,
        second: sod % 60,
        millis,
    }
}

/// RFC 3339 UTC with milliseconds, e.g. `2025-11-24T06:24:00.123Z`.
pub fn rfc3339(t: SystemTime) -> String {
    let c = civil(t);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        c.year, c.month, c.day, c.hour, c.minute, c.second, c.millis
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        // 2024-02-29T12:34:56.789Z
        let t = UNIX_EPOCH + Duration::from_millis(1_709_210_096_789);
        assert_eq!(rfc3339(t), "2024-02-29T12:34:56.789Z");
        let t = UNIX_EPOCH + Duration::from_secs(1_735_689_599); // last second of 2024
        assert_eq!(rfc3339(t), "2024-12-31T23:59:59.000Z");
        let t = UNIX_EPOCH - Duration::from_secs(1);
        assert_eq!(rfc3339(t), "1969-12-31T23:59:59.000Z");
    }

    #[test]
    fn sample_indices() {
        let s = UNIX_EPOCH + Duration::from_secs(100);
        assert_eq!(sample_index(s, s + Duration::from_millis(20)), 960);
        assert_eq!(sample_index(s, s - Duration::from_millis(20)), -960);
        assert_eq!(samples_to_duration(48_000), Duration::from_secs(1));
        assert_eq!(duration_to_samples(Duration::from_millis(15)), 720);
        let t = s + Duration::from_nanos(123_456_789);
        assert_eq!(from_unix_nanos(to_unix_nanos(t)), t);
    }
}
