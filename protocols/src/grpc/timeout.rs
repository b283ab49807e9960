//! The `grpc-timeout` header: `TimeoutValue TimeoutUnit`, where the value is
//! 1 to 8 ASCII digits and the unit one of `H` (hours), `M` (minutes), `S`
//! (seconds), `m` (milliseconds), `u` (microseconds), `n` (nanoseconds).

use std::time::Duration;

/// The most digits a `grpc-timeout` value may have.
pub const MAX_TIMEOUT_DIGITS: usize = 8;

const MAX_TIMEOUT_VALUE: u64 = 99_999_999;
const NANOS_PER_SEC: u64 = 1_000_000_000;

/// The longest timeout `grpc-timeout` can express: 99 999 999 hours.
/// [`format_timeout`] saturates to it.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(MAX_TIMEOUT_VALUE * 3600);

/// Units from finest to coarsest, with their length in nanoseconds.
const UNITS: [(u8, u64); 6] = [(b'n', 1), (b'u', 1_000), (b'm', 1_000_000), (b'S', NANOS_PER_SEC), (b'M', 60 * NANOS_PER_SEC), (b'H', 3600 * NANOS_PER_SEC)];

/// Why a `grpc-timeout` header value is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TimeoutError {
    /// The value is empty.
    #[error("grpc-timeout value is empty")]
    Empty,
    /// The unit is not one of `H M S m u n`.
    #[error("grpc-timeout unit {0:#04x} is not one of H, M, S, m, u, n")]
    UnknownUnit(u8),
    /// There are no digits before the unit.
    #[error("grpc-timeout value has no digits before the unit")]
    NoDigits,
    /// There are more than [`MAX_TIMEOUT_DIGITS`] digits.
    #[error("grpc-timeout value has {0} digits, more than the 8 allowed")]
    TooManyDigits(usize),
    /// A byte before the unit is not an ASCII digit.
    #[error("grpc-timeout value has a non-digit byte {0:#04x} before the unit")]
    NotDigits(u8),
}

/// Parses a `grpc-timeout` header value; any invalid value is `None`.
pub fn parse_timeout(value: &[u8]) -> Option<Duration> {
    try_parse_timeout(value).ok()
}

/// Parses a `grpc-timeout` header value, saying why it is invalid.
pub fn try_parse_timeout(value: &[u8]) -> Result<Duration, TimeoutError> {
    let (&unit, digits) = value.split_last().ok_or(TimeoutError::Empty)?;
    let nanos_per_unit = UNITS.iter().find(|(u, _)| *u == unit).map(|&(_, n)| n).ok_or(TimeoutError::UnknownUnit(unit))?;
    if digits.is_empty() {
        return Err(TimeoutError::NoDigits);
    }
    if digits.len() > MAX_TIMEOUT_DIGITS {
        return Err(TimeoutError::TooManyDigits(digits.len()));
    }
    let mut n: u64 = 0;
    for &b in digits {
        if !b.is_ascii_digit() {
            return Err(TimeoutError::NotDigits(b));
        }
        // At most 8 digits: n stays below 10^8, no overflow.
        n = n * 10 + u64::from(b - b'0');
    }
    Ok(from_units(n, nanos_per_unit))
}

/// `n` units of `nanos_per_unit` each, without overflow: `n < 10^8` and the
/// largest unit is 3.6e12 ns, so whole seconds fit easily in a `u64`.
fn from_units(n: u64, nanos_per_unit: u64) -> Duration {
    if nanos_per_unit >= NANOS_PER_SEC {
        Duration::from_secs(n.saturating_mul(nanos_per_unit / NANOS_PER_SEC))
    } else {
        Duration::from_nanos(n.saturating_mul(nanos_per_unit))
    }
}

/// Formats a duration as a `grpc-timeout` value: the finest unit whose count
/// fits in 8 digits, rounding up so the peer never sees a shorter deadline
/// (grpc-go's `encodeTimeout`). A zero duration is `"0n"`; a duration longer
/// than [`MAX_TIMEOUT`] is formatted as `MAX_TIMEOUT` (`"99999999H"`).
pub fn format_timeout(d: Duration) -> String {
    let nanos = d.as_nanos();
    for (unit, nanos_per_unit) in UNITS {
        let count = nanos.div_ceil(u128::from(nanos_per_unit));
        if count <= u128::from(MAX_TIMEOUT_VALUE) {
            return format!("{count}{}", char::from(unit));
        }
    }
    format!("{MAX_TIMEOUT_VALUE}H")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use test_case::test_case;

    #[test_case(b"1H", Duration::from_secs(3600); "hour")]
    #[test_case(b"2M", Duration::from_secs(120); "minutes")]
    #[test_case(b"30S", Duration::from_secs(30); "seconds")]
    #[test_case(b"100m", Duration::from_millis(100); "millis")]
    #[test_case(b"5u", Duration::from_micros(5); "micros")]
    #[test_case(b"7n", Duration::from_nanos(7); "nanos")]
    #[test_case(b"0S", Duration::ZERO; "zero")]
    #[test_case(b"00000001S", Duration::from_secs(1); "leading zeros")]
    #[test_case(b"99999999H", MAX_TIMEOUT; "largest")]
    #[test_case(b"99999999n", Duration::from_nanos(99_999_999); "largest nanos")]
    fn valid(value: &[u8], expected: Duration) {
        assert_eq!(parse_timeout(value), Some(expected));
    }

    #[test_case(b"", TimeoutError::Empty; "empty")]
    #[test_case(b"S", TimeoutError::NoDigits; "unit only")]
    #[test_case(b"10", TimeoutError::UnknownUnit(b'0'); "no unit")]
    #[test_case(b"10s", TimeoutError::UnknownUnit(b's'); "lowercase s")]
    #[test_case(b"10h", TimeoutError::UnknownUnit(b'h'); "lowercase h")]
    #[test_case(b"123456789S", TimeoutError::TooManyDigits(9); "nine digits")]
    #[test_case(b"-1S", TimeoutError::NotDigits(b'-'); "negative")]
    #[test_case(b"+1S", TimeoutError::NotDigits(b'+'); "plus")]
    #[test_case(b" 1S", TimeoutError::NotDigits(b' '); "space")]
    #[test_case(b"1.5S", TimeoutError::NotDigits(b'.'); "fraction")]
    #[test_case(b"1S ", TimeoutError::UnknownUnit(b' '); "trailing space")]
    fn invalid(value: &[u8], err: TimeoutError) {
        assert_eq!(try_parse_timeout(value), Err(err));
        assert_eq!(parse_timeout(value), None);
    }

    #[test_case(Duration::ZERO, "0n"; "zero")]
    #[test_case(Duration::from_nanos(1), "1n"; "one nano")]
    #[test_case(Duration::from_nanos(99_999_999), "99999999n"; "max nanos")]
    #[test_case(Duration::from_nanos(100_000_000), "100000u"; "switches to micros")]
    #[test_case(Duration::from_nanos(100_000_001), "100001u"; "rounds up")]
    #[test_case(Duration::from_secs(1), "1000000u"; "one second")]
    #[test_case(Duration::from_secs(100), "100000m"; "hundred seconds")]
    #[test_case(Duration::from_secs(100_000), "100000S"; "seconds")]
    #[test_case(Duration::from_secs(100_000_000), "1666667M"; "minutes")]
    #[test_case(Duration::from_secs(6_000_000_000), "1666667H"; "hours")]
    #[test_case(MAX_TIMEOUT, "99999999H"; "max")]
    #[test_case(Duration::MAX, "99999999H"; "saturates")]
    fn formats(d: Duration, expected: &str) {
        assert_eq!(format_timeout(d), expected);
    }

    #[test]
    fn error_messages_say_what_went_wrong() {
        assert_eq!(TimeoutError::TooManyDigits(9).to_string(), "grpc-timeout value has 9 digits, more than the 8 allowed");
        assert_eq!(TimeoutError::UnknownUnit(b's').to_string(), "grpc-timeout unit 0x73 is not one of H, M, S, m, u, n");
    }

    fn unit_len(value: &str) -> Duration {
        let unit = *value.as_bytes().last().unwrap();
        let (_, nanos) = UNITS.iter().find(|(u, _)| *u == unit).unwrap();
        Duration::from_nanos(*nanos)
    }

    proptest! {
        #[test]
        fn arbitrary_values_never_panic(value in prop::collection::vec(any::<u8>(), 0..16)) {
            let _ = parse_timeout(&value);
        }

        #[test]
        fn well_formed_values_parse(n in 0u64..=MAX_TIMEOUT_VALUE, unit in prop::sample::select(&UNITS[..])) {
            let value = format!("{n}{}", char::from(unit.0));
            let d = parse_timeout(value.as_bytes()).unwrap();
            prop_assert_eq!(d.as_nanos(), u128::from(n) * u128::from(unit.1));
        }

        #[test]
        fn format_round_trips_within_one_unit(secs in 0..=MAX_TIMEOUT.as_secs(), nanos in 0u32..1_000_000_000) {
            let d = Duration::new(secs, nanos).min(MAX_TIMEOUT);
            let value = format_timeout(d);
            prop_assert!(value.len() <= MAX_TIMEOUT_DIGITS + 1, "{value}");
            let parsed = parse_timeout(value.as_bytes()).unwrap();
            prop_assert!(parsed >= d, "{value}: {parsed:?} < {d:?}");
            prop_assert!(parsed - d < unit_len(&value), "{value}: {parsed:?} - {d:?}");
        }

        #[test]
        fn short_durations_round_trip(nanos in 0u64..10_000_000_000) {
            let d = Duration::from_nanos(nanos);
            let value = format_timeout(d);
            let parsed = parse_timeout(value.as_bytes()).unwrap();
            prop_assert!(parsed >= d);
            prop_assert!(parsed - d < unit_len(&value));
        }
    }
}
