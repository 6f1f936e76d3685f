//! Origin credentials (`cert.pem`) are files a user copies around and may mangle: the PEM
//! reader and the credential parser never panic, whatever the text, only refuse.
#![no_main]

use libfuzzer_sys::fuzz_target;
use postern::pki::{pem_sections, OriginCredential, MAX_PEM_SECTIONS};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(sections) = pem_sections(&text) {
        assert!(sections.len() <= MAX_PEM_SECTIONS);
    }
    let _ = OriginCredential::parse(&text);
});
