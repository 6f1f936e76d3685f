//! Public key lines come from anyone holding an app token (the body of
//! `/cdn-cgi/access/cert_sign`): the OpenSSH key parser, the certificate parser and the
//! private key file reader never panic, only refuse, and a key they accept re-encodes to
//! the same blob.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    postern::proto::sshkey::fuzz_public_key(data);
});
