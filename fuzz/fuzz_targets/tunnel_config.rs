//! A named tunnel's config file (`tunnel run --config`) and credentials file: whatever they
//! hold, parsing them and matching hostnames against the ingress rules never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    postern::tunnel::config::fuzz_config(data);
});
