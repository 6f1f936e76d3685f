//! Discovery documents and JWKS come from the identity provider over the network: parsing
//! them never panics, whatever the JSON.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    postern::oidc::fuzz_documents(data);
});
