//! UTC calendar times from Unix time, without a date library: the S3
//! signature's dates, the page's times and the access log's timestamps.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian
/// (Howard Hinnant's algorithm).
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// Appends `time` as `2026-12-02T03:20:55.798798Z`, the form of
/// tracing's own log timestamps.
pub fn push_rfc3339_micros(out: &mut Vec<u8>, time: SystemTime) {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    let secs = since.as_secs();
    let (y, m, d) = civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    push_padded(out, y.max(0) as u64, 4);
    out.push(b'-');
    push_padded(out, m.into(), 2);
    out.push(b'-');
    push_padded(out, d.into(), 2);
    out.push(b'T');
    push_padded(out, rem / 3600, 2);
    out.push(b':');
    push_padded(out, rem % 3600 / 60, 2);
    out.push(b':');
    push_padded(out, rem % 60, 2);
    out.push(b'.');
    push_padded(out, since.subsec_micros().into(), 6);
    out.push(b'Z');
}

/// Appends `n` in decimal, with leading zeros to at least `width` digits.
pub fn push_padded(out: &mut Vec<u8>, mut n: u64, width: usize) {
    let mut digits = [b'0'; 20];
    let mut at = digits.len();
    while n > 0 || at == digits.len() {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
    }
    let start = at.min(digits.len() - width.min(digits.len()));
    out.extend_from_slice(&digits[start..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_read_as_rfc3339_with_microseconds() {
        let mut out = Vec::new();
        push_rfc3339_micros(
            &mut out,
            UNIX_EPOCH + Duration::from_micros(951_825_599_000_042),
        );
        assert_eq!(out, b"2000-02-29T11:59:59.000042Z");
        out.clear();
        push_rfc3339_micros(&mut out, UNIX_EPOCH);
        assert_eq!(out, b"1970-01-01T00:00:00.000000Z");
    }

    #[test]
    fn numbers_are_padded_not_cut() {
        for (n, width, text) in [
            (0, 1, "0"),
            (7, 2, "07"),
            (123_456, 2, "123456"),
            (u64::MAX, 1, "18446744073709551615"),
        ] {
            let mut out = Vec::new();
            push_padded(&mut out, n, width);
            assert_eq!(String::from_utf8(out).unwrap(), text);
        }
    }
}
