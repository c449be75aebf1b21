//! Time values written into headers.

/// `X-Duration-Seconds` as the OpenFaaS watchdog writes it: Go's `%f`, seconds with six
/// decimals, rounded to the nearest microsecond.
pub fn duration_seconds(nanos: u64) -> String {
    let micros = nanos / 1_000 + u64::from(nanos % 1_000 >= 500);
    let mut out = decimal(micros / 1_000_000);
    out.push('.');
    let fraction = micros % 1_000_000;
    let mut divisor = 100_000;
    while divisor > 0 {
        out.push(digit(fraction / divisor));
        divisor /= 10;
    }
    out
}

/// `n` in decimal, as `n.to_string()` writes it, without `core::fmt` (on every request: the
/// start time and the duration).
pub fn decimal(mut n: u64) -> String {
    let mut digits = [b'0'; 20];
    let mut start = digits.len();
    loop {
        start -= 1;
        if let Some(d) = digits.get_mut(start) {
            *d = b'0' + (n % 10) as u8;
        }
        n /= 10;
        if n == 0 || start == 0 {
            break;
        }
    }
    digits
        .get(start..)
        .unwrap_or_default()
        .iter()
        .map(|&d| char::from(d))
        .collect()
}

/// The decimal digit of `n % 10`.
fn digit(n: u64) -> char {
    char::from(b'0' + (n % 10) as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_like_go_percent_f() {
        assert_eq!(duration_seconds(0), "0.000000");
        assert_eq!(duration_seconds(499), "0.000000");
        assert_eq!(duration_seconds(500), "0.000001");
        assert_eq!(duration_seconds(1_234_567), "0.001235");
        assert_eq!(duration_seconds(2_000_000_000), "2.000000");
        assert_eq!(duration_seconds(61_999_999_600), "62.000000");
        assert_eq!(duration_seconds(u64::MAX), "18446744073.709552");
    }

    #[test]
    fn decimal_is_to_string() {
        for n in [
            0,
            1,
            9,
            10,
            99,
            100,
            1_764_000_000_123_456_789,
            u64::MAX - 1,
            u64::MAX,
        ] {
            assert_eq!(decimal(n), n.to_string());
        }
    }
}
