//! The edge's core driven in memory: sockets are pipes, the clock is an `Instant` the test
//! moves forward.

use super::*;

#[test]
fn hostnames_and_ports() {
    assert!(valid_hostname("ssh.site.com"));
    assert!(!valid_hostname("ssh..site.com"));
    assert!(!valid_hostname("../etc"));
    assert!(!valid_hostname("-a.b"));
}
