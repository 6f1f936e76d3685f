//! A real etcd (Debian's `etcd-server`) for the edge-pool tests: one member on random loopback
//! ports, its data in the test's temp dir, stopped on drop.
//!
//! ```text
//! etcd --data-dir D --listen-client-urls http://127.0.0.1:P --advertise-client-urls http://127.0.0.1:P
//!      --listen-peer-urls http://127.0.0.1:Q (one member: --initial-cluster NAME=http://127.0.0.1:Q)
//! ```
//!
//! [`Etcd::start_tls`] serves clients over TLS only (`https://127.0.0.1:P`, `--client-cert-auth`,
//! certificates made here with rcgen: [`EtcdTls`]) and `/health` on a plain metrics port;
//! [`Etcd::enable_auth`] turns etcd's auth on through the JSON gateway, as `etcdctl user add`,
//! `role grant-permission` and `auth enable` would (Debian's etcd-server ships no etcdctl).

use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{free_port, require, try_http_get, Child, STARTUP};

/// A running etcd member. Dropping it stops it (SIGTERM, then SIGKILL).
pub struct Etcd {
    /// `127.0.0.1:P`: its client (and JSON gateway) address.
    pub addr: SocketAddr,
    data: PathBuf,
    peer: u16,
    dir: PathBuf,
    child: Option<Child>,
    /// With [`Etcd::start_tls`]: the certificates, and the plain port of `/health`.
    pub tls: Option<EtcdTls>,
    metrics: u16,
    /// More flags (e.g. `--auth-token-ttl 1`), kept across [`Etcd::restart`].
    extra: Vec<String>,
    /// The root user's token, once [`Etcd::enable_auth`] made one.
    root_token: Option<String>,
}

/// A CA, etcd's server certificate (SAN 127.0.0.1, server and client use: the JSON gateway
/// presents it to etcd's own gRPC server) and a client certificate without a CommonName, as
/// PEM files; keys 0600.
pub struct EtcdTls {
    pub ca: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    /// Another CA, which signed nothing etcd presents.
    pub other_ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
}

impl EtcdTls {
    fn make(dir: &Path) -> EtcdTls {
        use rcgen::{
            BasicConstraints, CertificateParams, DistinguishedName, DnType,
            ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
        };
        std::fs::create_dir_all(dir).unwrap();
        let write = |name: &str, text: &str, mode: u32| {
            let path = dir.join(name);
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(mode)
                .open(&path)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            f.write_all(text.as_bytes()).unwrap();
            path
        };
        let ca = |name: &str| {
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.distinguished_name.push(DnType::CommonName, name);
            params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
            let cert = params.self_signed(&key).unwrap();
            (cert.pem(), Issuer::new(params, key))
        };
        let (ca_pem, issuer) = ca("etcd test CA");
        let (other_pem, _) = ca("a CA etcd does not use");
        let leaf = |cn: Option<&str>, sans: Vec<SanType>, usages: Vec<ExtendedKeyUsagePurpose>| {
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.distinguished_name = DistinguishedName::new();
            if let Some(cn) = cn {
                params.distinguished_name.push(DnType::CommonName, cn);
            }
            params.subject_alt_names = sans;
            params.extended_key_usages = usages;
            let cert = params.signed_by(&key, &issuer).unwrap();
            (cert.pem(), key.serialize_pem())
        };
        let ip = SanType::IpAddress("127.0.0.1".parse().unwrap());
        let (server_pem, server_key) = leaf(
            Some("etcd"),
            vec![ip],
            vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
        );
        // No CommonName: with auth on, etcd 3.4's JSON gateway refuses a client certificate
        // that has one ("CommonName of client sending a request against gateway will be
        // ignored").
        let (client_pem, client_key) = leaf(
            None,
            vec![SanType::DnsName("postern-edge".try_into().unwrap())],
            vec![ExtendedKeyUsagePurpose::ClientAuth],
        );
        EtcdTls {
            ca: write("ca.pem", &ca_pem, 0o644),
            other_ca: write("other-ca.pem", &other_pem, 0o644),
            server_cert: write("server.pem", &server_pem, 0o644),
            server_key: write("server.key", &server_key, 0o600),
            client_cert: write("client.pem", &client_pem, 0o644),
            client_key: write("client.key", &client_key, 0o600),
        }
    }
}

impl Etcd {
    /// Starts etcd with its data under `dir` and waits until `/health` says it is healthy.
    pub fn start(dir: &Path) -> Etcd {
        Etcd::start_with(dir, false, &[])
    }

    /// Starts etcd serving clients over TLS only, with `--client-cert-auth`, and `extra` flags.
    pub fn start_tls(dir: &Path, extra: &[&str]) -> Etcd {
        Etcd::start_with(dir, true, extra)
    }

    fn start_with(dir: &Path, tls: bool, extra: &[&str]) -> Etcd {
        let tls = tls.then(|| EtcdTls::make(&dir.join("etcd-tls")));
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let mut tls = tls;
        let mut attempts = 0;
        loop {
            attempts += 1;
            let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
            let peer = free_port();
            let data = dir.join(format!("etcd-data-{attempts}"));
            let mut etcd = Etcd {
                addr,
                data,
                peer,
                dir: dir.to_path_buf(),
                child: None,
                tls: tls.take(),
                metrics: free_port(),
                extra: extra.clone(),
                root_token: None,
            };
            match etcd.launch() {
                Ok(()) => return etcd,
                // The ports were free a moment ago; another test may have taken one since.
                Err(e) if attempts < 3 => {
                    eprintln!("etcd did not start, trying other ports: {e}");
                    tls = etcd.tls.take();
                }
                Err(e) => panic!("etcd did not start: {e}"),
            }
        }
    }

    fn launch(&mut self) -> Result<(), String> {
        let bin = require("etcd");
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let client = format!("{scheme}://{}", self.addr);
        let peer = format!("http://127.0.0.1:{}", self.peer);
        let mut cmd = Command::new(bin);
        cmd.arg("--name")
            .arg("postern-test")
            .arg("--data-dir")
            .arg(&self.data)
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("postern-test={peer}")])
            .args(["--log-level", "warn"]);
        // Health over plain HTTP on its own port; the client port speaks only TLS.
        let health = match &self.tls {
            None => self.addr,
            Some(tls) => {
                cmd.arg("--cert-file")
                    .arg(&tls.server_cert)
                    .arg("--key-file")
                    .arg(&tls.server_key)
                    .arg("--trusted-ca-file")
                    .arg(&tls.ca)
                    .arg("--client-cert-auth")
                    .arg("--listen-metrics-urls")
                    .arg(format!("http://127.0.0.1:{}", self.metrics));
                SocketAddr::from(([127, 0, 0, 1], self.metrics))
            }
        };
        cmd.args(&self.extra);
        let child = Child::spawn("etcd", cmd, &self.dir);
        let start = Instant::now();
        loop {
            if let Ok((200, body)) = try_http_get(&health, "/health") {
                if body.contains("true") {
                    self.child = Some(child);
                    return Ok(());
                }
            }
            if let Some(status) = child.try_wait() {
                return Err(format!("etcd exited ({status}): {}", child.stderr_text()));
            }
            if start.elapsed() > STARTUP {
                return Err(format!(
                    "etcd not healthy after {STARTUP:?}: {}",
                    child.stderr_text()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `etcd://127.0.0.1:P/PREFIX` (`etcds://` with TLS), as `--state` takes it.
    pub fn url(&self, prefix: &str) -> String {
        let scheme = if self.tls.is_some() { "etcds" } else { "etcd" };
        format!("{scheme}://{}/{prefix}", self.addr)
    }

    /// POSTs `body` to the JSON gateway (over TLS with the client certificate, and as root once
    /// auth is on): (status, answer).
    pub fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        self.request(path, body, self.root_token.as_deref())
    }

    /// [`Etcd::post`] with `token` as the `Authorization` header.
    pub fn post_as(&self, path: &str, body: &Value, token: &str) -> (u16, Value) {
        self.request(path, body, Some(token))
    }

    fn request(&self, path: &str, body: &Value, token: Option<&str>) -> (u16, Value) {
        use ureq::tls::{Certificate, ClientCert, PrivateKey, RootCerts, TlsConfig, TlsProvider};
        let mut config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(10)));
        if let Some(tls) = &self.tls {
            let pem = |p: &Path| std::fs::read(p).unwrap();
            let ca = Certificate::from_pem(&pem(&tls.ca)).unwrap();
            let cert = Certificate::from_pem(&pem(&tls.client_cert)).unwrap();
            let key = PrivateKey::from_pem(&pem(&tls.client_key)).unwrap();
            config = config.tls_config(
                TlsConfig::builder()
                    .provider(TlsProvider::Rustls)
                    .root_certs(RootCerts::Specific(Arc::new(vec![ca])))
                    .client_cert(Some(ClientCert::new_with_certs(&[cert], key)))
                    .unversioned_rustls_crypto_provider(Arc::new(
                        rustls::crypto::ring::default_provider(),
                    ))
                    .build(),
            );
        }
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let mut req = config
            .build()
            .new_agent()
            .post(format!("{scheme}://{}{path}", self.addr));
        if let Some(token) = token {
            req = req.header("Authorization", token);
        }
        let mut resp = req
            .send(body.to_string())
            .unwrap_or_else(|e| panic!("etcd {path}: {e}"));
        let status = resp.status().as_u16();
        let text = resp.body_mut().read_to_string().unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    fn admin(&self, path: &str, body: Value) -> Value {
        let (status, answer) = self.post(path, &body);
        assert_eq!(status, 200, "etcd {path}: {answer}");
        answer
    }

    /// Turns etcd's auth on: a root user, and `user` (password `password`) with readwrite on
    /// `PREFIX/` only. Later [`Etcd::post`] calls go as root.
    pub fn enable_auth(&mut self, prefix: &str, user: &str, password: &str) {
        let b64 = |s: &str| postern::proto::base64::encode(s.as_bytes());
        self.admin(
            "/v3/auth/user/add",
            json!({"name": "root", "password": "root-pw"}),
        );
        self.admin("/v3/auth/role/add", json!({"name": "root"}));
        self.admin(
            "/v3/auth/user/grant",
            json!({"user": "root", "role": "root"}),
        );
        self.admin(
            "/v3/auth/user/add",
            json!({"name": user, "password": password}),
        );
        self.admin("/v3/auth/role/add", json!({"name": "postern"}));
        self.admin(
            "/v3/auth/role/grant",
            json!({"name": "postern", "perm": {
                "permType": "READWRITE", "key": b64(&format!("{prefix}/")),
                "range_end": b64(&format!("{prefix}0"))}}),
        );
        self.admin(
            "/v3/auth/user/grant",
            json!({"user": user, "role": "postern"}),
        );
        self.admin("/v3/auth/enable", json!({}));
        self.authenticate_root();
    }

    fn authenticate_root(&mut self) {
        self.root_token = None;
        let answer = self.admin(
            "/v3/auth/authenticate",
            json!({"name": "root", "password": "root-pw"}),
        );
        self.root_token = answer["token"].as_str().map(str::to_owned);
    }

    /// A token for `user`, as `/v3/auth/authenticate` gives it.
    pub fn token(&self, user: &str, password: &str) -> String {
        let answer = self.admin(
            "/v3/auth/authenticate",
            json!({"name": user, "password": password}),
        );
        answer["token"].as_str().expect("a token").to_owned()
    }

    /// Stops it (SIGTERM, then SIGKILL); [`Etcd::restart`] starts it again on its data.
    pub fn stop(&mut self) {
        if let Some(c) = self.child.take() {
            c.stop();
        }
    }

    /// Starts it again on the same ports and data (after [`Etcd::stop`]).
    pub fn restart(&mut self) {
        self.stop();
        let start = Instant::now();
        loop {
            match self.launch() {
                Ok(()) => {
                    // etcd forgets its simple tokens when it stops.
                    if self.root_token.is_some() {
                        self.authenticate_root();
                    }
                    return;
                }
                Err(e) if start.elapsed() < Duration::from_secs(10) => {
                    eprintln!("etcd restart failed, retrying: {e}")
                }
                Err(e) => panic!("etcd did not restart: {e}"),
            }
        }
    }

    pub fn child(&self) -> &Child {
        self.child.as_ref().expect("etcd running")
    }
}
