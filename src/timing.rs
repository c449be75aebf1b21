//! Time values written into headers.

/// `X-Duration-Seconds` as the OpenFaaS watchdog writes it: Go's `%f`, seconds with six
/// decimals, rounded to the nearest microsecond.
pub fn duration_seconds(nanos: u64) -> String {
    let micros = nanos / 1_000 + u64::from(nanos % 1_000 >= 500);
    format!("{}.{:06}", micros / 1_000_000, micros % 1_000_000)
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
}
