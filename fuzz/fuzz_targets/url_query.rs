//! Query strings and form bodies come from anyone on the internet (login links, the
//! browser's confirmation form): never panic, never more than `MAX_QUERY_PARAMS` pairs, and
//! what `with_query` writes reads back exactly.
#![no_main]

use libfuzzer_sys::fuzz_target;
use postern::proto::url::{parse_query, with_query, MAX_QUERY_PARAMS};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Some(params) = parse_query(text) else {
        return;
    };
    assert!(params.len() <= MAX_QUERY_PARAMS);
    let pairs: Vec<(&str, &str)> = params
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let written = with_query("", &pairs);
    let again = parse_query(written.trim_start_matches('?')).expect("our own query parses");
    assert_eq!(again, params);
});
