//! The proxy-wasm wire format of a header map, read and written without copying each pair.
//!
//! Layout (little endian): pair count `n` as u32, then `n` times (key length u32, value length
//! u32), then each key and each value followed by a NUL byte. The host hands the whole map over
//! in one buffer; reading the pairs in place keeps a request to one host call and no allocation
//! per header.

/// Iterates the (name, value) pairs of a serialized header map. Stops at the first pair that
/// does not fit the buffer, so a malformed buffer yields fewer pairs, never a panic.
pub fn pairs(buf: &[u8]) -> Pairs<'_> {
    let count = read_u32(buf, 0).unwrap_or(0);
    let data_start = (count as usize).saturating_mul(8).saturating_add(4);
    Pairs {
        buf,
        count,
        index: 0,
        data: data_start,
    }
}

pub struct Pairs<'a> {
    buf: &'a [u8],
    count: u32,
    index: u32,
    data: usize,
}

impl<'a> Iterator for Pairs<'a> {
    type Item = (&'a [u8], &'a [u8]);

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        if self.index >= self.count {
            return None;
        }
        let sizes_at = (self.index as usize).checked_mul(8)?.checked_add(4)?;
        let key_len = read_u32(self.buf, sizes_at)? as usize;
        let value_len = read_u32(self.buf, sizes_at + 4)? as usize;
        let key = self.buf.get(self.data..self.data.checked_add(key_len)?)?;
        let value_at = self.data.checked_add(key_len)?.checked_add(1)?;
        let value = self.buf.get(value_at..value_at.checked_add(value_len)?)?;
        self.data = value_at.checked_add(value_len)?.checked_add(1)?;
        self.index += 1;
        Some((key, value))
    }
}

fn read_u32(buf: &[u8], at: usize) -> Option<u32> {
    let bytes: [u8; 4] = buf.get(at..at.checked_add(4)?)?.try_into().ok()?;
    Some(u32::from_le_bytes(bytes))
}

/// Serializes pairs into the same format (a local reply's headers; a native host's header map).
pub fn serialize<K: AsRef<[u8]>, V: AsRef<[u8]>>(pairs: &[(K, V)]) -> Vec<u8> {
    let data: usize = pairs
        .iter()
        .map(|(k, v)| k.as_ref().len() + v.as_ref().len() + 2)
        .sum();
    let mut out = Vec::with_capacity(4 + pairs.len() * 8 + data);
    out.extend_from_slice(&(pairs.len() as u32).to_le_bytes());
    for (k, v) in pairs {
        out.extend_from_slice(&(k.as_ref().len() as u32).to_le_bytes());
        out.extend_from_slice(&(v.as_ref().len() as u32).to_le_bytes());
    }
    for (k, v) in pairs {
        out.extend_from_slice(k.as_ref());
        out.push(0);
        out.extend_from_slice(v.as_ref());
        out.push(0);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let map = [
            (":path", "/function/env"),
            ("x-call-id", ""),
            ("a", "b\u{e9}"),
        ];
        let buf = serialize(&map);
        let read: Vec<_> = pairs(&buf).collect();
        assert_eq!(read.len(), 3);
        for ((k, v), (rk, rv)) in map.iter().zip(read) {
            assert_eq!(k.as_bytes(), rk);
            assert_eq!(v.as_bytes(), rv);
        }
    }

    #[test]
    fn truncated_or_lying_buffers_yield_what_fits() {
        let buf = serialize(&[("a", "1"), ("b", "2")]);
        for cut in 0..buf.len() {
            let n = pairs(buf.get(..cut).unwrap_or_default()).count();
            assert!(n <= 2);
        }
        let mut lying = buf.clone();
        lying[0] = 0xff; // claims 255 pairs
        assert!(pairs(&lying).count() <= 2);
        assert_eq!(pairs(&[]).count(), 0);
        let huge_len = [1, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0];
        assert_eq!(pairs(&huge_len).count(), 0);
    }
}
