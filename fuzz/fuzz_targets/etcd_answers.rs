//! The etcd gateway's answers (ranges, transactions, lease grants) reach the edge over the
//! network: parsing them and the records in them never panics, whatever the bytes; nor does
//! parsing an `etcd://` URL.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    postern::store::etcd::fuzz_answers(data);
});
