//! Any incoming call id: kept only if it is 1-128 visible ASCII characters; any 16 bytes make a
//! well-formed UUIDv4.
#![no_main]
use faas_mesh_filter::call_id::{is_safe_token, uuid_v4};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if is_safe_token(data) {
        assert!((1..=128).contains(&data.len()));
        assert!(data.iter().all(|b| (0x21..=0x7e).contains(b)));
    }
    let mut bytes = [0u8; 16];
    for (b, d) in bytes.iter_mut().zip(data) {
        *b = *d;
    }
    let id = uuid_v4(bytes);
    assert_eq!(id.len(), 36);
    assert_eq!(id.as_bytes()[14], b'4');
    assert!(is_safe_token(id.as_bytes()));
});
