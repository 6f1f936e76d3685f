//! The protocols, sans-IO: each module turns bytes (and the time, passed in) into events,
//! decisions and bytes to send, and never touches a file, a socket, the clock or a thread.
//! That is what lets each parser be fuzzed on its own and each state machine be tested in
//! memory; the drivers in `edge`, `tunnel`, `access` and `io` do the IO.

pub mod base64;
pub mod buf;
pub mod carrier;
pub mod destination;
pub mod dns;
pub mod http;
pub mod idmap;
pub mod jwt;
pub mod mux;
pub mod policy;
pub mod proxy;
pub mod reader;
pub mod resume;
pub mod sshkey;
pub mod token_transfer;
pub mod url;
pub mod ws;
pub mod yaml;

/// ALPN of the edge's administration API (`edge::admin`), offered on the tunnels' port and
/// spoken by `tunnel::admin`: named here so neither role imports the other for it.
pub const ADMIN_ALPN: &[u8] = b"postern-admin/1";

#[cfg(test)]
mod tests {
    /// What a sans-IO module must not name outside its tests and fuzz entry points.
    const FORBIDDEN: &[&str] = &[
        "std::fs",
        "std::net::Tcp",
        "std::net::Udp",
        "mio::",
        "Instant::now",
        "SystemTime::now",
        "std::thread",
        "std::process",
        "std::env",
        "ureq::",
    ];

    use crate::layout_tests::shipped;

    #[test]
    fn proto_modules_touch_no_files_sockets_clock_or_threads() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/proto");
        let mut offences = Vec::new();
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let text = std::fs::read_to_string(&path).unwrap();
            let code = if path.ends_with("mod.rs") {
                text.split("#[cfg(test)]")
                    .next()
                    .unwrap_or_default()
                    .to_owned()
            } else {
                shipped(&text)
            };
            for word in FORBIDDEN {
                if code.contains(word) {
                    offences.push(format!("{} names {word}", path.display()));
                }
            }
        }
        assert!(
            offences.is_empty(),
            "sans-IO broken:\n{}",
            offences.join("\n")
        );
    }
}
