use std::fs;
use std::path::Path;

use super::*;
use crate::store::tests::{mode_of, TempDir};

const A: &str = "abababababababababababababababababababababababababababababababab";
const B: &str = "cdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcd";
const TUNNEL: &str = "0f0e0d0c-0b0a-4908-8706-050403020100";

fn store(tag: &str) -> (TempDir, StateDir, FileStore) {
    let tmp = TempDir::new(tag);
    let state = StateDir::open(&tmp.0).unwrap();
    let store = FileStore::open(&state).unwrap();
    (tmp, state, store)
}

/// A copy of `tests/fixtures/state-v1` (files as edges before the trait wrote them).
fn fixture(tag: &str) -> (TempDir, StateDir) {
    let tmp = TempDir::new(tag);
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/state-v1");
    for name in ["service-tokens.json", "hostnames.json", "tunnels.json"] {
        fs::copy(src.join(name), tmp.0.join(name)).unwrap();
    }
    let state = StateDir::open(&tmp.0).unwrap();
    (tmp, state)
}

fn cert(fp: &str) -> HostnameRecord {
    HostnameRecord {
        owner: HostOwner::Certificate(fp.into()),
        zone: "example.com".into(),
        first_registered: 7,
    }
}

fn route(id: &str) -> HostnameRecord {
    HostnameRecord {
        owner: HostOwner::Tunnel(id.into()),
        zone: "example.com".into(),
        first_registered: 8,
    }
}

fn tunnel(name: &str, zone: &str) -> TunnelRecord {
    TunnelRecord {
        name: name.into(),
        zone: zone.into(),
        cert_sha256: B.into(),
        created: 1,
    }
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&fs::read(path).unwrap()).unwrap()
}

#[test]
fn files_written_before_the_trait_read_back_whole() {
    let (_tmp, state) = fixture("store-fixture-read");
    let mut store = FileStore::open(&state).unwrap();
    let snap = store.snapshot().unwrap();

    assert_eq!(snap.service_tokens.len(), 2);
    let bot = &snap.service_tokens[0];
    assert_eq!(bot.name, "ci-bot");
    assert_eq!(bot.created, 1_700_000_000);
    assert!(
        bot.matches("fixture-secret", 0),
        "upper-case hashes still verify"
    );
    assert!(!bot.matches("fixture-secreT", 0));
    assert_eq!(
        ServiceTokens::load(&state)
            .unwrap()
            .verify(&bot.client_id, "fixture-secret"),
        Some("ci-bot")
    );

    let hosts: Vec<_> = snap.hostnames.keys().cloned().collect();
    assert_eq!(
        hosts,
        ["git.example.com", "ssh.example.com", "web.example.com"],
        "hostnames are lowercased"
    );
    assert_eq!(
        snap.hostnames["git.example.com"].value,
        HostnameRecord {
            owner: HostOwner::Certificate(A.into()),
            zone: "example.com".into(),
            first_registered: 1_700_000_200,
        },
        "fingerprints are lowercased"
    );
    assert_eq!(
        snap.hostnames["web.example.com"].value.owner,
        HostOwner::Tunnel(TUNNEL.into())
    );
    let revisions: std::collections::BTreeSet<u64> =
        snap.hostnames.values().map(|r| r.revision).collect();
    assert_eq!(revisions.len(), 3, "each record has its own revision");

    assert_eq!(snap.tunnels[TUNNEL].name, "web");
    assert_eq!(snap.tunnels[TUNNEL].cert_sha256, B);
    assert_eq!(snap.revocations, Revocations::default(), "no file: none");
}

#[test]
fn files_written_by_the_store_keep_the_old_field_names() {
    let (tmp, state) = fixture("store-fixture-write");
    let mut store = FileStore::open(&state).unwrap();
    store
        .claim_hostname("new.example.com", cert(B), Expect::Absent)
        .unwrap();
    store
        .create_tunnel("t2", tunnel("api", "example.com"))
        .unwrap();
    let hosts = json(&tmp.0.join("hostnames.json"));
    assert_eq!(
        hosts["hostnames"]["git.example.com"],
        serde_json::json!({"cert_sha256": A, "zone": "example.com", "first_registered": 1_700_000_200u64})
    );
    assert_eq!(
        hosts["hostnames"]["web.example.com"],
        serde_json::json!({"tunnel": TUNNEL, "zone": "example.com", "first_registered": 1_700_000_400u64})
    );
    assert_eq!(
        hosts["hostnames"]["new.example.com"],
        serde_json::json!({"cert_sha256": B, "zone": "example.com", "first_registered": 7})
    );
    let tunnels = json(&tmp.0.join("tunnels.json"));
    assert_eq!(
        tunnels["tunnels"]["t2"],
        serde_json::json!({"name": "api", "zone": "example.com", "cert_sha256": B, "created": 1})
    );
    assert_eq!(tunnels["tunnels"][TUNNEL]["name"], "web");
    for f in ["hostnames.json", "tunnels.json"] {
        assert_eq!(mode_of(&tmp.0.join(f)), 0o600, "{f}");
    }
    // The service-token file is the CLI's: the store never rewrites it.
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/state-v1");
    assert_eq!(
        fs::read(tmp.0.join("service-tokens.json")).unwrap(),
        fs::read(src.join("service-tokens.json")).unwrap()
    );
}

#[test]
fn service_token_create_and_verify() {
    let (tmp, state, mut store) = store("store-tokens");
    let (id, secret) = ServiceTokens::create(&state, "ci-bot", None).unwrap();
    let (rec2, _secret2) = store.create_service_token("backup.job_2", None).unwrap();
    assert_ne!(id, rec2.client_id);

    let hex_part = id.strip_suffix(".access").unwrap();
    assert_eq!(hex_part.len(), 32);
    assert!(hex_part
        .bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
    assert_eq!(secret.expose().len(), 64);

    let path = tmp.0.join("service-tokens.json");
    assert_eq!(mode_of(&path), 0o600);
    let text = fs::read_to_string(&path).unwrap();
    assert!(!text.contains(secret.expose()), "secret stored in clear");

    let tokens = ServiceTokens::load(&state).unwrap();
    assert_eq!(tokens.verify(&id, secret.expose()), Some("ci-bot"));
    assert_eq!(tokens.verify(&id, "0".repeat(64).as_str()), None);
    assert_eq!(tokens.verify(&id, ""), None);
    assert_eq!(tokens.verify(&rec2.client_id, secret.expose()), None);
    assert_eq!(tokens.verify("nope.access", secret.expose()), None);
    assert_eq!(
        tokens.names().collect::<Vec<_>>(),
        ["ci-bot", "backup.job_2"]
    );
    let listed: Vec<String> = store
        .service_tokens()
        .unwrap()
        .into_iter()
        .map(|t| t.name)
        .collect();
    assert_eq!(listed, ["ci-bot", "backup.job_2"]);
}

#[test]
fn a_token_created_by_another_process_is_found_by_its_id() {
    let (_tmp, state, mut store) = store("store-token-lookup");
    assert_eq!(store.service_token("x.access").unwrap(), None);
    // `postern edge service-token create` while the edge runs.
    let (id, secret) = ServiceTokens::create(&state, "later", None).unwrap();
    let found = store
        .service_token(&id)
        .unwrap()
        .expect("found after a re-read");
    assert_eq!(found.name, "later");
    assert!(found.matches(secret.expose(), 0));
    // Unchanged file: still answered (from memory).
    assert!(store.service_token(&id).unwrap().is_some());
    assert_eq!(store.service_token("x.access").unwrap(), None);
}

#[test]
fn service_token_names_validated_and_unique() {
    let (_tmp, _state, mut store) = store("store-token-names");
    store.create_service_token("dup", None).unwrap();
    assert!(matches!(
        store.create_service_token("dup", None),
        Err(StoreError::Exists(_))
    ));
    for bad in ["", "a b", "x/y", "é", &"n".repeat(65)] {
        assert!(
            matches!(
                store.create_service_token(bad, None),
                Err(StoreError::Invalid(_))
            ),
            "{bad:?}"
        );
    }
    store.create_service_token(&"n".repeat(64), None).unwrap();
    assert_eq!(store.service_tokens().unwrap().len(), 2);
}

#[test]
fn missing_files_are_empty_and_a_corrupt_one_is_named() {
    let (tmp, state, mut store) = store("store-empty");
    let snap = store.snapshot().unwrap();
    assert!(snap.service_tokens.is_empty() && snap.hostnames.is_empty());
    assert!(snap.tunnels.is_empty());
    state.write_atomic("hostnames.json", b"{", 0o600).unwrap();
    let err = FileStore::open(&state).err().unwrap();
    assert!(err.to_string().contains("hostnames.json"), "{err}");
    drop(tmp);
}

#[test]
fn one_hostname_never_has_two_owners() {
    let (_tmp, state, mut store) = store("store-cas");
    let first = store
        .claim_hostname("SSH.example.com", cert(&A.to_uppercase()), Expect::Absent)
        .unwrap();
    assert!(first.new);
    assert_eq!(first.record.value.owner, HostOwner::Certificate(A.into()));
    // Claimed again by its owner: unchanged, whatever the expectation.
    let again = store
        .claim_hostname("ssh.example.com", cert(A), Expect::Absent)
        .unwrap();
    assert!(!again.new);
    assert_eq!(again.record, first.record);
    // Another certificate expecting it free loses, and learns who holds it.
    match store.claim_hostname("ssh.EXAMPLE.com", cert(B), Expect::Absent) {
        Err(StoreError::Owned(cur)) => assert_eq!(cur, first.record),
        other => panic!("{other:?}"),
    }
    // A route expecting a revision that is gone loses too.
    let stale = Expect::Revision(first.record.revision + 100);
    match store.claim_hostname("ssh.example.com", route("t1"), stale) {
        Err(StoreError::Changed(Some(cur))) => assert_eq!(cur, first.record),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        store.claim_hostname("free.example.com", route("t1"), Expect::Revision(1)),
        Err(StoreError::Changed(None))
    ));
    // With the revision it saw, a route takes it over (`route dns --overwrite-dns`).
    let moved = store
        .claim_hostname(
            "ssh.example.com",
            route("t1"),
            Expect::Revision(first.record.revision),
        )
        .unwrap();
    assert!(moved.record.revision > first.record.revision);
    assert_eq!(moved.record.value.owner, HostOwner::Tunnel("t1".into()));
    // ... and the certificate cannot take it back by claiming it.
    assert!(matches!(
        store.claim_hostname("ssh.example.com", cert(A), Expect::Absent),
        Err(StoreError::Owned(_))
    ));
    // What is on disk says the same after a restart.
    let snap = FileStore::open(&state).unwrap().snapshot().unwrap();
    assert_eq!(
        snap.hostnames["ssh.example.com"].value.owner,
        HostOwner::Tunnel("t1".into())
    );
    // Release needs the current revision.
    assert!(matches!(
        store.release_hostname("ssh.example.com", Expect::Revision(first.record.revision)),
        Err(StoreError::Changed(Some(_)))
    ));
    store
        .release_hostname("ssh.example.com", Expect::Revision(moved.record.revision))
        .unwrap();
    store
        .release_hostname("ssh.example.com", Expect::Absent)
        .unwrap();
    assert!(store.snapshot().unwrap().hostnames.is_empty());
}

#[test]
fn one_certificate_claims_at_most_the_cap_and_keeps_what_it_owns() {
    let (_tmp, _state, mut store) = store("store-cap");
    for i in 0..MAX_HOSTNAMES_PER_CERTIFICATE {
        let host = format!("h{i}.example.com");
        assert!(
            store
                .claim_hostname(&host, cert(A), Expect::Absent)
                .unwrap()
                .new
        );
    }
    assert_eq!(
        store.claim_hostname("one-more.example.com", cert(A), Expect::Absent),
        Err(StoreError::TooMany)
    );
    let refused = StoreError::TooMany.to_string();
    assert!(refused.contains(&MAX_HOSTNAMES_PER_CERTIFICATE.to_string()));
    assert!(refused.contains("named tunnel"), "{refused}");
    // What it owns stays its own, and another certificate is not limited by it.
    assert!(
        !store
            .claim_hostname("h0.example.com", cert(A), Expect::Absent)
            .unwrap()
            .new
    );
    assert!(
        store
            .claim_hostname("one-more.example.com", cert(B), Expect::Absent)
            .unwrap()
            .new
    );
    // A hostname it lost to a route no longer counts.
    let h1 = store.snapshot().unwrap().hostnames["h1.example.com"].revision;
    store
        .claim_hostname("h1.example.com", route("t1"), Expect::Revision(h1))
        .unwrap();
    assert!(
        store
            .claim_hostname("again.example.com", cert(A), Expect::Absent)
            .unwrap()
            .new
    );
}

#[test]
fn names_held_by_a_parent_zone_are_released_when_their_zone_is_configured() {
    let (_tmp, state, mut store) = store("store-zones");
    let zoned = |zone: &str, owner: HostOwner| HostnameRecord {
        owner,
        zone: zone.into(),
        first_registered: 1,
    };
    let c = || HostOwner::Certificate(A.into());
    let t = || HostOwner::Tunnel(TUNNEL.into());
    for (h, z, o) in [
        ("a.site.com", "site.com", c()),
        ("b.team.site.com", "site.com", c()),
        ("c.team.site.com", "site.com", t()),
        ("d.team.site.com", "team.site.com", t()),
        ("e.gone.com", "gone.com", c()),
    ] {
        store
            .claim_hostname(h, zoned(z, o), Expect::Absent)
            .unwrap();
    }
    let zones = ["site.com".to_owned(), "team.site.com".to_owned()];
    let gone = store
        .release_misfiled(&|h| crate::edge::config::zone_of(&zones, h).map(str::to_owned))
        .unwrap();
    assert_eq!(gone, ["b.team.site.com", "c.team.site.com"]);
    let hosts = FileStore::open(&state)
        .unwrap()
        .snapshot()
        .unwrap()
        .hostnames;
    let left: Vec<_> = hosts.keys().map(String::as_str).collect();
    // A name in no configured zone is kept (its zone may come back).
    assert_eq!(left, ["a.site.com", "d.team.site.com", "e.gone.com"]);
}

#[test]
fn named_tunnels_and_their_routes() {
    let (tmp, state, mut store) = store("store-tunnels");
    store
        .create_tunnel(TUNNEL, tunnel("web", "example.com"))
        .unwrap();
    assert_eq!(mode_of(&tmp.0.join("tunnels.json")), 0o600);
    assert!(matches!(
        store.create_tunnel("t2", tunnel("web", "example.com")),
        Err(StoreError::Exists(_))
    ));
    assert!(matches!(
        store.create_tunnel(TUNNEL, tunnel("other", "example.com")),
        Err(StoreError::Exists(_))
    ));
    store
        .create_tunnel("t3", tunnel("web", "other.com"))
        .unwrap();
    for h in ["ssh.example.com", "old.example.com"] {
        store
            .claim_hostname(h, route(TUNNEL), Expect::Absent)
            .unwrap();
    }
    store
        .claim_hostname("keep.example.com", route("t3"), Expect::Absent)
        .unwrap();
    // A route to a tunnel that is gone (a delete cut short) is released at start.
    store
        .claim_hostname("dead.example.com", route("gone"), Expect::Absent)
        .unwrap();
    let mut reopened = FileStore::open(&state).unwrap();
    assert_eq!(
        reopened.release_orphaned_routes().unwrap(),
        ["dead.example.com"]
    );
    assert_eq!(
        reopened.unroute_tunnel(TUNNEL).unwrap(),
        ["old.example.com", "ssh.example.com"]
    );
    reopened.delete_tunnel(TUNNEL).unwrap();
    reopened.delete_tunnel(TUNNEL).unwrap();
    let snap = FileStore::open(&state).unwrap().snapshot().unwrap();
    assert_eq!(snap.tunnels.keys().collect::<Vec<_>>(), ["t3"]);
    assert_eq!(
        snap.hostnames.keys().collect::<Vec<_>>(),
        ["keep.example.com"]
    );
    assert!(valid_tunnel_name("web-1.prod_a"));
    for bad in ["", "-x", ".x", "a b", "x/y", &"a".repeat(65)] {
        assert!(!valid_tunnel_name(bad), "{bad}");
    }
}

fn claim(host: &str, fp: &str) -> Request {
    Request::ClaimHostname {
        hostname: host.into(),
        record: cert(fp),
        expect: Expect::Absent,
    }
}

#[test]
fn a_batch_runs_in_order_and_writes_each_file_once() {
    let (tmp, state, mut store) = store("store-batch");
    let path = tmp.0.join("hostnames.json");
    let mut batch: Vec<Request> = (0..10)
        .map(|i| claim(&format!("h{i}.example.com"), A))
        .collect();
    batch.push(claim("h0.example.com", B));
    batch.push(Request::CreateTunnel {
        id: "t1".into(),
        record: tunnel("web", "example.com"),
    });
    let answers = store.execute(batch);
    assert_eq!(answers.len(), 12);
    assert!(answers[..10].iter().all(Answer::is_ok));
    assert!(
        matches!(
            &answers[10],
            Answer::Hostname {
                result: Err(StoreError::Owned(_)),
                ..
            }
        ),
        "the later claim sees the earlier one of the same batch: {:?}",
        answers[10]
    );
    assert!(answers[11].is_ok());
    let snap = FileStore::open(&state).unwrap().snapshot().unwrap();
    assert_eq!(snap.hostnames.len(), 10);
    assert!(snap.tunnels.contains_key("t1"));
    // One write per file: the inode changes with each atomic replacement.
    let ino = fs::metadata(&path).unwrap().ino();
    let answers = store.execute(vec![claim("h0.example.com", A), claim("h1.example.com", A)]);
    assert!(answers.iter().all(Answer::is_ok));
    assert_eq!(
        fs::metadata(&path).unwrap().ino(),
        ino,
        "claims that change nothing write nothing"
    );
}

#[test]
fn a_failed_group_write_fails_its_changes_and_keeps_the_others() {
    let (tmp, state, mut store) = store("store-batch-fail");
    store
        .claim_hostname("kept.example.com", cert(A), Expect::Absent)
        .unwrap();
    // A non-empty directory where hostnames.json goes: its rename fails, even for root.
    fs::remove_file(tmp.0.join("hostnames.json")).unwrap();
    fs::create_dir_all(tmp.0.join("hostnames.json").join("x")).unwrap();
    let answers = store.execute(vec![
        claim("a.example.com", A),
        Request::CreateTunnel {
            id: "t1".into(),
            record: tunnel("web", "example.com"),
        },
        claim("kept.example.com", A),
        claim("b.example.com", B),
    ]);
    match &answers[0] {
        Answer::Hostname {
            result: Err(StoreError::Unavailable(why)),
            ..
        } => assert!(why.contains("hostnames.json"), "{why}"),
        other => panic!("{other:?}"),
    }
    assert!(
        answers[1].is_ok(),
        "tunnels.json was written: {:?}",
        answers[1]
    );
    assert!(answers[2].is_ok(), "a claim that changed nothing stands");
    assert!(!answers[3].is_ok());
    // In memory, the failed claims are undone: a.example.com is free for anyone.
    let snap = store.snapshot().unwrap();
    assert!(!snap.hostnames.contains_key("a.example.com"));
    assert!(snap.hostnames.contains_key("kept.example.com"));
    assert!(snap.tunnels.contains_key("t1"));
    assert!(matches!(
        store.claim_hostname("a.example.com", cert(B), Expect::Absent),
        Err(StoreError::Unavailable(_))
    ));
    fs::remove_dir_all(tmp.0.join("hostnames.json")).unwrap();
    assert!(
        store
            .claim_hostname("a.example.com", cert(B), Expect::Absent)
            .unwrap()
            .new
    );
    let on_disk = FileStore::open(&state).unwrap().snapshot().unwrap();
    assert_eq!(
        on_disk.hostnames["a.example.com"].value.owner,
        HostOwner::Certificate(B.into())
    );
    assert!(on_disk.tunnels.contains_key("t1"));
}

#[test]
fn revocations_are_kept_for_good() {
    let (tmp, state, mut store) = store("store-revoke");
    store
        .revoke(Revocation::Certificate {
            sha256: A.to_uppercase(),
            serial: Some("01ab".into()),
            reason: "key lost".into(),
        })
        .unwrap();
    store
        .revoke(Revocation::ServiceToken {
            client_id: "x.access".into(),
            reason: "leaked".into(),
        })
        .unwrap();
    // Revoking again keeps the first record.
    store
        .revoke(Revocation::ServiceToken {
            client_id: "x.access".into(),
            reason: "again".into(),
        })
        .unwrap();
    assert_eq!(mode_of(&tmp.0.join("revocations.json")), 0o600);
    let r = FileStore::open(&state)
        .unwrap()
        .snapshot()
        .unwrap()
        .revocations;
    assert_eq!(r.certificates[A].serial.as_deref(), Some("01ab"));
    assert_eq!(r.certificates[A].reason, "key lost");
    assert_eq!(r.service_tokens["x.access"].reason, "leaked");
}

#[test]
fn pending_logins_are_taken_once_and_expire() {
    let (_tmp, _state, mut store) = store("store-logins");
    let login = PendingLoginRecord(b"sealed".to_vec());
    store.put_login("k1", login.clone(), 600).unwrap();
    assert!(matches!(
        store.put_login("k1", login.clone(), 600),
        Err(StoreError::Exists(_))
    ));
    assert_eq!(store.take_login("k1").unwrap(), Some(login.clone()));
    assert_eq!(store.take_login("k1").unwrap(), None, "taken once");
    store.put_login("k2", login.clone(), 0).unwrap();
    assert_eq!(store.take_login("k2").unwrap(), None, "expired");
    for i in 0..MAX_STORED_LOGINS {
        store
            .put_login(&format!("f{i}"), login.clone(), 600)
            .unwrap();
    }
    assert_eq!(
        store.put_login("one-more", login, 600),
        Err(StoreError::Full)
    );
}

#[test]
fn revocations_written_by_another_process_are_reported_once_when_polled() {
    let (_tmp, state, mut edge) = store("revocations-poll");
    // The edge's own revocation is no change made by someone else.
    edge.revoke(Revocation::ServiceToken {
        client_id: "own.access".into(),
        reason: String::new(),
    })
    .unwrap();
    edge.poll().unwrap();
    assert_eq!(edge.changes(), vec![]);
    // The CLI: another FileStore on the same directory.
    let mut cli = FileStore::open(&state).unwrap();
    let revoked = [
        Revocation::ServiceToken {
            client_id: "laptop.access".into(),
            reason: "service-token revoke laptop".into(),
        },
        Revocation::Certificate {
            sha256: "ab".repeat(32),
            serial: Some("4f01".into()),
            reason: "origin-cert revoke cert.pem".into(),
        },
        Revocation::Serial {
            serial: "4e02".into(),
            reason: "origin-cert revoke 4e02".into(),
        },
        // A kill by email through another edge: that email's zone sessions in the zone.
        Revocation::ZoneSessions {
            zone: "site.com".into(),
            email: "alice@site.com".into(),
            before: 1_700_000_000,
            reason: "sessions kill --email".into(),
        },
    ];
    for r in &revoked {
        cli.revoke(r.clone()).unwrap();
        // Again: revoking is idempotent, nothing is written twice.
        cli.revoke(r.clone()).unwrap();
    }
    assert_eq!(mode_of(&state.path().join(REVOCATIONS_FILE)), 0o600);
    let file: Revocations = state.load_json(REVOCATIONS_FILE).unwrap();
    assert!(file.service_tokens.contains_key("own.access"), "kept");
    assert!(file.service_tokens.contains_key("laptop.access"));
    assert_eq!(
        file.certificates[&"ab".repeat(32)].serial.as_deref(),
        Some("4f01")
    );
    assert!(file.serials.contains_key("4e02"));
    // No temporary file left behind: the write was a rename.
    let names: Vec<String> = fs::read_dir(state.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().all(|n| !n.contains(".tmp")), "{names:?}");

    assert_eq!(edge.changes(), vec![], "nothing until the edge looks");
    edge.poll().unwrap();
    let mut got = edge.changes();
    let mut want: Vec<Change> = revoked.iter().cloned().map(Change::Revoked).collect();
    let key = |c: &Change| format!("{c:?}");
    got.sort_by_key(key);
    want.sort_by_key(key);
    assert_eq!(got, want);
    edge.poll().unwrap();
    assert_eq!(edge.changes(), vec![], "each is reported once");
    assert!(edge
        .snapshot()
        .unwrap()
        .revocations
        .service_tokens
        .contains_key("laptop.access"));
}
