//! decode(encode(x)) == x for both alphabets, and the strict decoders (the `base64` crate's
//! engines behind `postern::proto::base64`) accept one spelling only: whatever they accept
//! re-encodes to the same text.
#![no_main]

use libfuzzer_sys::fuzz_target;
use postern::proto::base64;

fuzz_target!(|data: &[u8]| {
    assert_eq!(base64::decode(&base64::encode(data)).as_deref(), Ok(data));
    assert_eq!(
        base64::decode_url(&base64::encode_url(data)).as_deref(),
        Ok(data)
    );
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(bytes) = base64::decode(text) {
        assert_eq!(base64::encode(&bytes), text);
    }
    if let Ok(bytes) = base64::decode_url(text) {
        assert_eq!(base64::encode_url(&bytes), text);
    }
    if let Ok(bytes) = base64::decode_lenient_ws(text) {
        let compact: String = text.chars().filter(|c| !c.is_ascii_whitespace()).collect();
        assert_eq!(base64::encode(&bytes), compact);
    }
});
