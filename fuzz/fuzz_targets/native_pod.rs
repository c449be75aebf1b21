//! The native module's reader of Istio's downward-API files (`key="value"` lines, Go-quoted):
//! any text parses without a panic into trimmed, non-empty keys, and what it read, quoted again
//! the way the kubelet quotes, reads back the same.
#![no_main]
use faas_mesh_filter_native::pod;
use libfuzzer_sys::fuzz_target;

/// Go's `%q` as far as the reader needs: quotes, backslashes and control characters escaped.
fn quote(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => out.push_str(&format!("\\U{:08x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let pairs = pod::parse(&text);
    let mut again = String::new();
    for (key, value) in &pairs {
        assert!(!key.is_empty(), "an empty key from {text:?}");
        assert_eq!(key.trim(), key, "an untrimmed key");
        assert!(!key.contains('\n') && !key.contains('='), "key {key:?}");
        again.push_str(&format!("{key}=\"{}\"\n", quote(value)));
    }
    assert_eq!(pod::parse(&again), pairs, "quoted again: {again:?}");
});
