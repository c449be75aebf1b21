//! Call ids: when a caller's `X-Call-Id` may be kept, and fresh UUIDv4 ids.

/// The most bytes a caller's call id may have and still be kept.
pub const MAX_CALL_ID_LEN: usize = 128;

/// A caller's call id is kept only if it is a safe token: 1 to 128 visible ASCII characters
/// (no space, no control characters, nothing beyond ASCII), so it can be logged, echoed and
/// forwarded without escaping.
pub fn is_safe_token(value: &[u8]) -> bool {
    !value.is_empty() && value.len() <= MAX_CALL_ID_LEN && value.iter().all(u8::is_ascii_graphic)
}

/// Formats 16 random bytes as a version 4, variant 1 UUID, lowercase, as the OpenFaaS gateway
/// (Go's google/uuid) writes it.
pub fn uuid_v4(mut bytes: [u8; 16]) -> String {
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let mut out = String::with_capacity(36);
    for (i, b) in bytes.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            out.push('-');
        }
        out.push(hex_digit(b >> 4));
        out.push(hex_digit(b & 0x0f));
    }
    out
}

fn hex_digit(nibble: u8) -> char {
    char::from_digit(u32::from(nibble), 16).unwrap_or('0')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_has_version_and_variant_bits_set() {
        assert_eq!(uuid_v4([0; 16]), "00000000-0000-4000-8000-000000000000");
        assert_eq!(uuid_v4([0xff; 16]), "ffffffff-ffff-4fff-bfff-ffffffffffff");
        let id = uuid_v4([
            0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0xde, 0xf0, 0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc,
            0xde, 0xf0,
        ]);
        assert_eq!(id, "12345678-9abc-4ef0-9234-56789abcdef0");
    }
}
