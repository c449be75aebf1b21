//! Any bytes handed over as a header map: iterating never panics or reads out of bounds, and a
//! serialized map reads back as written.
#![no_main]
use faas_mesh_filter::header_map::{pairs, serialize};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let count = pairs(data).count();
    assert!(count <= data.len());
    let text = String::from_utf8_lossy(data);
    let items: Vec<(&str, &str)> = text
        .split('\n')
        .filter_map(|line| line.split_once(':'))
        .collect();
    let wire = serialize(&items);
    let back: Vec<(&[u8], &[u8])> = pairs(&wire).collect();
    assert_eq!(back.len(), items.len());
    for ((k, v), (bk, bv)) in items.iter().zip(back) {
        assert_eq!((k.as_bytes(), v.as_bytes()), (bk, bv));
    }
});
