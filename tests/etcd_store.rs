//! The etcd `Store` against a real etcd (Debian's `etcd-server`, started by the harness): what
//! the edges of a pool must agree on holds when several stores race on one cluster.
//!
//! Each store here is what one edge's store worker holds; threads released by a barrier stand
//! for edges acting at the same moment.

use crate::support;

use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use postern::limits::MAX_HOSTNAMES_PER_CERTIFICATE;
use postern::store::{
    Change, EtcdStore, EtcdUrl, Expect, HostOwner, HostnameRecord, PendingLoginRecord, Revocation,
    Store, StoreError, TunnelRecord,
};
use support::etcd::Etcd;
use support::{temp_dir, wait_until};

fn store(url: &str) -> EtcdStore {
    EtcdStore::connect(&EtcdUrl::parse(url).unwrap().into())
        .unwrap_or_else(|e| panic!("{url}: {e}"))
}

fn cert_owner(fp: &str) -> HostnameRecord {
    HostnameRecord {
        owner: HostOwner::Certificate(fp.to_owned()),
        zone: "example.com".into(),
        first_registered: 1,
    }
}

/// Runs `f(i, store)` on `n` threads, each with its own store, released together.
fn race<T: Send + 'static>(
    url: &str,
    n: usize,
    f: impl Fn(usize, &mut EtcdStore) -> T + Send + Sync + 'static,
) -> Vec<T> {
    let barrier = Arc::new(Barrier::new(n));
    let f = Arc::new(f);
    let threads: Vec<_> = (0..n)
        .map(|i| {
            let (barrier, f, url) = (barrier.clone(), f.clone(), url.to_owned());
            thread::spawn(move || {
                let mut s = store(&url);
                barrier.wait();
                f(i, &mut s)
            })
        })
        .collect();
    threads.into_iter().map(|t| t.join().unwrap()).collect()
}

#[test]
fn edges_racing_to_claim_one_hostname_give_it_to_exactly_one_owner() {
    let dir = temp_dir("etcd-claim");
    let etcd = Etcd::start(dir.path());
    let url = etcd.url("pool");
    let results = race(&url, 8, |i, s| {
        s.claim_hostname(
            "race.example.com",
            cert_owner(&format!("{i:064x}")),
            Expect::Absent,
        )
    });
    let winners: Vec<_> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    assert_eq!(winners.len(), 1, "exactly one claim wins: {results:?}");
    let won = winners[0].record.clone();
    assert!(winners[0].new);
    for r in &results {
        match r {
            Ok(_) => {}
            Err(StoreError::Owned(cur)) => assert_eq!(cur, &won, "losers see the winner"),
            Err(e) => panic!("a losing claim says it is owned, not: {e:?}"),
        }
    }

    // Every edge sees the one owner; the owner claiming again changes nothing.
    let mut other = store(&url);
    let snapshot = other.snapshot().unwrap();
    assert_eq!(snapshot.hostnames["race.example.com"], won);
    let again = other
        .claim_hostname("race.example.com", won.value.clone(), Expect::Absent)
        .unwrap();
    assert!(!again.new);
    assert_eq!(again.record, won);

    // A takeover is compare-and-swap on the revision: a stale one fails and changes nothing.
    let taker = cert_owner(&"f".repeat(64));
    let stale = other.claim_hostname(
        "race.example.com",
        taker.clone(),
        Expect::Revision(won.revision - 1),
    );
    assert!(
        matches!(stale, Err(StoreError::Changed(Some(ref c))) if *c == won),
        "{stale:?}"
    );
    let taken = other
        .claim_hostname(
            "race.example.com",
            taker.clone(),
            Expect::Revision(won.revision),
        )
        .unwrap();
    assert!(taken.new && taken.record.value == taker);
    // The loser's released index lets it claim elsewhere; a release at an old revision fails.
    assert!(matches!(
        other.release_hostname("race.example.com", Expect::Revision(won.revision)),
        Err(StoreError::Changed(_))
    ));
    other
        .release_hostname("race.example.com", Expect::Revision(taken.record.revision))
        .unwrap();
    assert!(other.snapshot().unwrap().hostnames.is_empty());
}

#[test]
fn a_certificate_claims_at_most_the_cap_even_through_racing_edges() {
    let dir = temp_dir("etcd-cap");
    let etcd = Etcd::start(dir.path());
    let url = etcd.url("pool");
    let fp = "a".repeat(64);
    let per_thread = MAX_HOSTNAMES_PER_CERTIFICATE / 4 + 3;
    let results = race(&url, 4, move |i, s| {
        (0..per_thread)
            .map(|j| {
                s.claim_hostname(
                    &format!("h{i}-{j}.example.com"),
                    cert_owner(&fp),
                    Expect::Absent,
                )
            })
            .collect::<Vec<_>>()
    });
    let all: Vec<_> = results.into_iter().flatten().collect();
    let won = all.iter().filter(|r| r.is_ok()).count();
    assert_eq!(won, MAX_HOSTNAMES_PER_CERTIFICATE, "{all:?}");
    assert!(all
        .iter()
        .filter_map(|r| r.as_ref().err())
        .all(|e| *e == StoreError::TooMany));
    assert_eq!(
        store(&url).snapshot().unwrap().hostnames.len(),
        MAX_HOSTNAMES_PER_CERTIFICATE
    );
}

#[test]
fn a_pending_login_is_taken_by_one_edge_only_and_expires_with_its_lease() {
    let dir = temp_dir("etcd-login");
    let etcd = Etcd::start(dir.path());
    let url = etcd.url("pool");
    let mut a = store(&url);
    a.put_login("k1", PendingLoginRecord(b"login one".to_vec()), 60)
        .unwrap();
    assert!(matches!(
        a.put_login("k1", PendingLoginRecord(b"again".to_vec()), 60),
        Err(StoreError::Exists(_))
    ));
    let taken = race(&url, 8, |_, s| s.take_login("k1").unwrap());
    let got: Vec<_> = taken.into_iter().flatten().collect();
    assert_eq!(got, [PendingLoginRecord(b"login one".to_vec())]);
    assert_eq!(a.take_login("k1").unwrap(), None);

    // An empty record round-trips (the gateway leaves empty values out).
    a.put_login("empty", PendingLoginRecord(Vec::new()), 60)
        .unwrap();
    assert_eq!(
        store(&url).take_login("empty").unwrap(),
        Some(PendingLoginRecord(Vec::new()))
    );

    // The lease ends the login: its key becomes free again without anyone taking it.
    a.put_login("short", PendingLoginRecord(b"x".to_vec()), 1)
        .unwrap();
    let start = Instant::now();
    wait_until(
        Duration::from_secs(10),
        "the login's lease to expire",
        || {
            a.put_login("short", PendingLoginRecord(b"y".to_vec()), 60)
                .is_ok()
        },
    );
    eprintln!("a 1 s login expired after {:?}", start.elapsed());
}

#[test]
fn tokens_and_revocations_made_through_one_edge_reach_another_by_its_poll() {
    let dir = temp_dir("etcd-changes");
    let etcd = Etcd::start(dir.path());
    let url = etcd.url("pool");
    let (mut a, mut b) = (store(&url), store(&url));
    let (old, _) = a.create_service_token("old", None).unwrap();
    b.snapshot().unwrap();
    b.poll().unwrap();
    assert!(b.changes().is_empty(), "nothing new since the snapshot");

    let start = Instant::now();
    let (new, secret) = a.create_service_token("new", None).unwrap();
    assert!(matches!(
        b.create_service_token("new", None),
        Err(StoreError::Exists(_))
    ));
    // A lookup finds a token created elsewhere at once; the poll reports it too.
    let found = b.service_token(&new.client_id).unwrap().unwrap();
    assert!(found.matches(secret.expose(), 0));
    a.revoke(Revocation::ServiceToken {
        client_id: old.client_id.clone(),
        reason: "test".into(),
    })
    .unwrap();
    a.revoke(Revocation::Certificate {
        sha256: "B".repeat(64),
        serial: Some("0a".into()),
        reason: "test".into(),
    })
    .unwrap();
    // A kill by email at one edge: that email's zone sessions, for every edge.
    let zone_kill = Revocation::ZoneSessions {
        zone: "site.com".into(),
        email: "alice@site.com".into(),
        before: 1_700_000_000,
        reason: "test".into(),
    };
    a.revoke(zone_kill.clone()).unwrap();
    b.poll().unwrap();
    let changes = b.changes();
    eprintln!(
        "changes seen by the other store {:?} after",
        start.elapsed()
    );
    assert!(changes.contains(&Change::ServiceToken {
        client_id: new.client_id.clone(),
        record: Some(new.clone()),
    }));
    assert!(changes.contains(&Change::Revoked(Revocation::ServiceToken {
        client_id: old.client_id.clone(),
        reason: "test".into(),
    })));
    assert!(changes.iter().any(|c| matches!(c,
        Change::Revoked(Revocation::Certificate { sha256, serial, .. })
            if *sha256 == "b".repeat(64) && serial.as_deref() == Some("0a"))));
    assert!(changes.contains(&Change::Revoked(zone_kill)), "{changes:?}");
    b.poll().unwrap();
    assert!(b.changes().is_empty(), "each change is reported once");

    // Revoking again keeps the first record and is no news.
    a.revoke(Revocation::ServiceToken {
        client_id: old.client_id.clone(),
        reason: "second".into(),
    })
    .unwrap();
    let snapshot = store(&url).snapshot().unwrap();
    assert_eq!(
        snapshot.revocations.service_tokens[&old.client_id].reason,
        "test"
    );
    assert_eq!(snapshot.service_tokens.len(), 2);
    assert_eq!(snapshot.service_tokens[0].name, "old", "creation order");
    assert!(snapshot
        .revocations
        .zone_sessions
        .contains_key(&postern::store::zone_sessions_key(
            "site.com",
            "alice@site.com",
            1_700_000_000
        )));
}

#[test]
fn a_rotation_through_one_edge_reaches_another_with_both_secrets_for_the_overlap() {
    let dir = temp_dir("etcd-rotate");
    let etcd = Etcd::start(dir.path());
    let url = etcd.url("pool");
    let (mut a, mut b) = (store(&url), store(&url));
    let (token, old) = a.create_service_token("ci", Some(u64::MAX)).unwrap();
    b.snapshot().unwrap();
    let (rotated, new) = a.rotate_service_token("ci", 60).unwrap();
    assert_eq!(rotated.client_id, token.client_id);
    assert_eq!(
        rotated.expires,
        Some(u64::MAX),
        "a rotation keeps the expiry"
    );
    b.poll().unwrap();
    let seen = b.changes().into_iter().find_map(|c| match c {
        Change::ServiceToken { client_id, record } if client_id == token.client_id => record,
        _ => None,
    });
    let seen = seen.expect("the other store sees the rotation");
    let now = rotated.previous.as_ref().unwrap().until - 60;
    assert!(seen.matches(new.expose(), now) && seen.matches(old.expose(), now));
    assert!(!seen.matches(old.expose(), now + 60));
    assert!(matches!(
        a.rotate_service_token("nobody", 60),
        Err(StoreError::Invalid(m)) if m.contains("no service token named")
    ));
}

#[test]
fn tunnels_are_unique_by_id_and_name_and_their_routes_go_with_them() {
    let dir = temp_dir("etcd-tunnels");
    let etcd = Etcd::start(dir.path());
    let url = etcd.url("pool");
    let mut s = store(&url);
    let tunnel = TunnelRecord {
        name: "web".into(),
        zone: "example.com".into(),
        cert_sha256: "c".repeat(64),
        created: 1,
    };
    s.create_tunnel("t1", tunnel.clone()).unwrap();
    assert!(matches!(
        store(&url).create_tunnel(
            "t1",
            TunnelRecord {
                name: "other".into(),
                ..tunnel.clone()
            }
        ),
        Err(StoreError::Exists(_))
    ));
    assert!(matches!(
        store(&url).create_tunnel("t2", tunnel.clone()),
        Err(StoreError::Exists(ref m)) if m.contains("named web")
    ));
    let routed = |t: &str| HostnameRecord {
        owner: HostOwner::Tunnel(t.into()),
        zone: "example.com".into(),
        first_registered: 1,
    };
    for h in ["b.example.com", "a.example.com"] {
        s.claim_hostname(h, routed("t1"), Expect::Absent).unwrap();
    }
    s.claim_hostname("gone.example.com", routed("t-gone"), Expect::Absent)
        .unwrap();
    assert_eq!(
        s.release_orphaned_routes().unwrap(),
        ["gone.example.com"],
        "a route to a tunnel that does not exist is released"
    );
    assert_eq!(
        s.unroute_tunnel("t1").unwrap(),
        ["a.example.com", "b.example.com"]
    );
    s.delete_tunnel("t1").unwrap();
    let snapshot = s.snapshot().unwrap();
    assert!(snapshot.tunnels.is_empty() && snapshot.hostnames.is_empty());
    // Its name is free again.
    s.create_tunnel("t2", tunnel).unwrap();
}

#[test]
fn a_dead_endpoint_is_skipped_and_an_unreachable_cluster_is_named() {
    let dir = temp_dir("etcd-endpoints");
    let etcd = Etcd::start(dir.path());
    let dead = format!("127.0.0.1:{}", support::free_port());
    let mut s = store(&format!("etcd://{dead},{}/pool", etcd.addr));
    s.create_service_token("via-second", None).unwrap();
    let err = EtcdStore::connect(
        &EtcdUrl::parse(&format!("etcd://{dead}/pool"))
            .unwrap()
            .into(),
    )
    .err()
    .expect("nothing listens there");
    let text = err.to_string();
    assert!(
        text.contains(&format!("etcd at {dead} unreachable")),
        "{text}"
    );
    // Prefixes keep pools apart on one cluster.
    assert!(store(&etcd.url("other"))
        .service_tokens()
        .unwrap()
        .is_empty());
}

#[test]
fn routes_and_tunnels_changed_through_one_edge_reach_another_by_its_poll() {
    let dir = temp_dir("etcd-route-changes");
    let etcd = Etcd::start(dir.path());
    let url = etcd.url("pool");
    let (mut a, mut b) = (store(&url), store(&url));
    let tunnel = TunnelRecord {
        name: "web".into(),
        zone: "example.com".into(),
        cert_sha256: "c".repeat(64),
        created: 1,
    };
    a.create_tunnel(
        "kept",
        TunnelRecord {
            name: "kept".into(),
            ..tunnel.clone()
        },
    )
    .unwrap();
    a.claim_hostname(
        "kept.example.com",
        cert_owner(&"d".repeat(64)),
        Expect::Absent,
    )
    .unwrap();
    b.snapshot().unwrap();

    a.create_tunnel("t1", tunnel.clone()).unwrap();
    let route = HostnameRecord {
        owner: HostOwner::Tunnel("t1".into()),
        zone: "example.com".into(),
        first_registered: 1,
    };
    let routed = a
        .claim_hostname("www.example.com", route, Expect::Absent)
        .unwrap();
    b.poll().unwrap();
    let changes = b.changes();
    assert!(changes.contains(&Change::Tunnel {
        id: "t1".into(),
        record: Some(tunnel.clone()),
    }));
    assert!(changes.contains(&Change::Hostname {
        hostname: "www.example.com".into(),
        record: Some(routed.record.clone()),
    }));
    assert_eq!(changes.len(), 2, "only what changed: {changes:?}");

    // Deletes are seen too (a range past a revision does not show them).
    assert_eq!(a.unroute_tunnel("t1").unwrap(), ["www.example.com"]);
    a.delete_tunnel("t1").unwrap();
    b.poll().unwrap();
    let changes = b.changes();
    assert!(changes.contains(&Change::Tunnel {
        id: "t1".into(),
        record: None,
    }));
    assert!(changes.contains(&Change::Hostname {
        hostname: "www.example.com".into(),
        record: None,
    }));
    assert_eq!(changes.len(), 2, "only what changed: {changes:?}");
    b.poll().unwrap();
    assert!(b.changes().is_empty());
}
