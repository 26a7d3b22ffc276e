//! `/metrics`, `/healthz` and `/readyz` over HTTP/1.1 (hyper), optionally
//! over TLS (rustls) and with basic auth, configured by a file in the format
//! of Prometheus' exporter-toolkit `web.config.file` (see [`WebConfig`]), so
//! that existing scrape configurations work unchanged.
//!
//! Every connection is bounded: at most [`MAX_CONNECTIONS`] at once, the TLS
//! handshake and the request head within [`READ_TIMEOUT`], the whole
//! exchange within [`READ_TIMEOUT`] + [`WRITE_TIMEOUT`], one request per
//! connection.

use std::collections::{BTreeMap, HashSet};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, bail};
use base64::Engine as _;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue, WWW_AUTHENTICATE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus::{Encoder, Registry, TextEncoder};
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{self, RootCertStore, ServerConfig};
use tracing::{debug, warn};

/// The TLS handshake and the request head must arrive within this.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// A slow reader of a large `/metrics` body gets this long.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once. Prometheus and a probe or two need a handful;
/// beyond this, connections wait in the kernel's accept queue and hold no
/// descriptor of ours, so a flood cannot take the file descriptors that
/// snapshots and Kafka need.
pub const MAX_CONNECTIONS: usize = 32;
/// Request head buffer (hyper's smallest allowed): more is answered 431.
const MAX_HEAD: usize = 8 * 1024;
/// Credentials that passed bcrypt are remembered (as the header that carried
/// them), so a scrape every few seconds does not cost a bcrypt each time.
const AUTH_CACHE: usize = 16;

/// What the endpoints report, and how they are protected.
#[derive(Clone)]
pub struct Endpoints {
    pub registry: Registry,
    /// `/readyz` answers 200 once this is set.
    pub ready: Arc<AtomicBool>,
    pub web: Arc<WebConfig>,
}

/// TLS and basic auth of the endpoint: none by default (plain HTTP, open),
/// or as a `web.config.file` sets them. `/healthz` and `/readyz` stay open
/// (an orchestrator's probes carry no credentials; they reveal only whether
/// the process is up); `/metrics` needs the credentials when users are set.
pub struct WebConfig {
    tls: Option<TlsAcceptor>,
    /// User name -> bcrypt hash.
    users: BTreeMap<String, String>,
    /// `Authorization` values already verified.
    verified: Mutex<HashSet<Vec<u8>>>,
    /// One bcrypt at a time: a flood of wrong passwords costs one core at most.
    bcrypt: tokio::sync::Semaphore,
}

/// exporter-toolkit's `web.config.file`, the part termwatch reads. A key it
/// does not know is an error that names it: a security setting must not be
/// silently ignored.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WebConfigFile {
    tls_server_config: Option<TlsFile>,
    #[serde(default)]
    basic_auth_users: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TlsFile {
    cert_file: PathBuf,
    key_file: PathBuf,
    /// `NoClientCert` (default), `VerifyClientCertIfGiven` or `RequireAndVerifyClientCert`.
    client_auth_type: Option<String>,
    client_ca_file: Option<PathBuf>,
    /// `TLS12` (default) or `TLS13`.
    min_version: Option<String>,
    max_version: Option<String>,
}

/// A bcrypt hash of nothing anyone knows: an unknown user costs what a known
/// one does, so timing does not tell which user names exist.
const DUMMY_HASH: &str = "$2b$10$QtGj6nTGcjvN3s3IkqBzHOhD5vk9MzhW7j0DNEoI6Eu2WvpgBEcDi";

impl Default for WebConfig {
    fn default() -> Self {
        WebConfig {
            tls: None,
            users: BTreeMap::new(),
            verified: Mutex::new(HashSet::new()),
            bcrypt: tokio::sync::Semaphore::new(1),
        }
    }
}

impl WebConfig {
    /// Reads a `web.config.file`. Relative paths in it are relative to its
    /// directory, as in exporter-toolkit. Errors name the file, the line and
    /// the key, never a value.
    pub fn load(path: &Path) -> anyhow::Result<WebConfig> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read metrics web config file {}", path.display()))?;
        let file: WebConfigFile = serde_yaml::from_str(&text).map_err(|e| {
            let line = e.location().map(|l| format!(", line {}", l.line())).unwrap_or_default();
            let message = e.to_string();
            let message = message.split(" at line ").next().unwrap_or("");
            anyhow::anyhow!(
                "metrics web config file {}{line}: {}",
                path.display(),
                crate::config::without_values(message)
            )
        })?;
        let dir = path.parent().unwrap_or(Path::new("."));
        let tls = match &file.tls_server_config {
            Some(t) => {
                Some(tls_acceptor(t, dir).with_context(|| format!("metrics web config file {}", path.display()))?)
            }
            None => None,
        };
        for (user, hash) in &file.basic_auth_users {
            if bcrypt::verify("", hash).is_err() {
                bail!("metrics web config file {}: basic_auth_users.{user} is not a bcrypt hash", path.display());
            }
        }
        Ok(WebConfig { tls, users: file.basic_auth_users, ..WebConfig::default() })
    }

    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    pub fn has_users(&self) -> bool {
        !self.users.is_empty()
    }

    /// `None` when the request may see `/metrics`; otherwise the 401 to send.
    async fn authorize(&self, header: Option<&HeaderValue>) -> Option<Response<Full<Bytes>>> {
        if self.users.is_empty() {
            return None;
        }
        let denied = || {
            let mut r = text(StatusCode::UNAUTHORIZED, "unauthorized\n");
            r.headers_mut().insert(WWW_AUTHENTICATE, HeaderValue::from_static("Basic realm=\"termwatch\""));
            Some(r)
        };
        let Some(value) = header else { return denied() };
        let raw = value.as_bytes().to_vec();
        if self.verified.lock().is_ok_and(|v| v.contains(&raw)) {
            return None;
        }
        let Some((user, password)) = basic_credentials(value.as_bytes()) else { return denied() };
        let hash = self.users.get(&user).cloned();
        let Ok(_one_at_a_time) = self.bcrypt.acquire().await else { return denied() };
        let known = hash.is_some();
        let hash = hash.unwrap_or_else(|| DUMMY_HASH.to_string());
        let ok = tokio::task::spawn_blocking(move || bcrypt::verify(password, &hash).unwrap_or(false))
            .await
            .unwrap_or(false);
        if !(ok && known) {
            return denied();
        }
        if let Ok(mut v) = self.verified.lock() {
            if v.len() >= AUTH_CACHE {
                v.clear();
            }
            v.insert(raw);
        }
        None
    }
}

fn tls_acceptor(t: &TlsFile, dir: &Path) -> anyhow::Result<TlsAcceptor> {
    let at = |p: &Path| if p.is_absolute() { p.to_path_buf() } else { dir.join(p) };
    let (cert_file, key_file) = (at(&t.cert_file), at(&t.key_file));
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert_file)
        .and_then(|certs| certs.collect::<Result<_, _>>())
        .map_err(|e| anyhow::anyhow!("tls_server_config.cert_file {}: {e}", cert_file.display()))?;
    if certs.is_empty() {
        bail!("tls_server_config.cert_file {}: no certificate in it", cert_file.display());
    }
    let key = PrivateKeyDer::from_pem_file(&key_file)
        .map_err(|e| anyhow::anyhow!("tls_server_config.key_file {}: {e}", key_file.display()))?;
    let version = |v: &Option<String>, default: u8| match v.as_deref() {
        None | Some("") => Ok(default),
        Some("TLS12") => Ok(12),
        Some("TLS13") => Ok(13),
        Some(other) => bail!("tls_server_config: version {other:?} is not supported (TLS12 or TLS13)"),
    };
    let (min, max) = (version(&t.min_version, 12)?, version(&t.max_version, 13)?);
    let versions: Vec<&'static rustls::SupportedProtocolVersion> =
        [(12, &rustls::version::TLS12), (13, &rustls::version::TLS13)]
            .into_iter()
            .filter(|(v, _)| (min..=max).contains(v))
            .map(|(_, p)| p)
            .collect();
    if versions.is_empty() {
        bail!("tls_server_config: min_version is above max_version");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&versions)
        .context("tls_server_config")?;
    let client_auth = t.client_auth_type.as_deref().unwrap_or("NoClientCert");
    let builder = match client_auth {
        "" | "NoClientCert" => builder.with_no_client_auth(),
        "VerifyClientCertIfGiven" | "RequireAndVerifyClientCert" => {
            let Some(ca) = &t.client_ca_file else {
                bail!("tls_server_config.client_auth_type {client_auth} needs client_ca_file");
            };
            let ca = at(ca);
            let mut roots = RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(&ca)
                .map_err(|e| anyhow::anyhow!("tls_server_config.client_ca_file {}: {e}", ca.display()))?
            {
                let cert =
                    cert.map_err(|e| anyhow::anyhow!("tls_server_config.client_ca_file {}: {e}", ca.display()))?;
                roots.add(cert).with_context(|| format!("tls_server_config.client_ca_file {}", ca.display()))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier =
                if client_auth == "VerifyClientCertIfGiven" { verifier.allow_unauthenticated() } else { verifier };
            builder.with_client_cert_verifier(verifier.build().context("tls_server_config.client_ca_file")?)
        }
        other => bail!(
            "tls_server_config.client_auth_type {other:?} is not supported (NoClientCert, VerifyClientCertIfGiven, \
             RequireAndVerifyClientCert)"
        ),
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|e| anyhow::anyhow!("tls_server_config: the key does not fit the certificate: {e}"))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// `Basic base64(user:password)` -> (user, password).
fn basic_credentials(value: &[u8]) -> Option<(String, String)> {
    let encoded = value.strip_prefix(b"Basic ").or_else(|| value.strip_prefix(b"basic "))?;
    let decoded = base64::engine::general_purpose::STANDARD.decode(encoded.trim_ascii()).ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_string(), password.to_string()))
}

/// Binds `addr`; errors name the address.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(|e| anyhow::anyhow!("cannot listen for metrics on {addr}: {e}"))
}

/// Serves until the task is dropped, at most [`MAX_CONNECTIONS`] at once.
pub async fn serve(listener: TcpListener, endpoints: Endpoints) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else { return };
        match listener.accept().await {
            Ok((stream, peer)) => {
                let endpoints = endpoints.clone();
                tokio::spawn(async move {
                    let exchange = async {
                        match endpoints.web.tls.clone() {
                            Some(tls) => {
                                let stream = tokio::time::timeout(READ_TIMEOUT, tls.accept(stream))
                                    .await
                                    .map_err(|_| "TLS handshake timed out".to_string())?
                                    .map_err(|e| format!("TLS handshake failed: {e}"))?;
                                connection(TokioIo::new(stream), endpoints.clone()).await
                            }
                            None => connection(TokioIo::new(stream), endpoints.clone()).await,
                        }
                    };
                    match tokio::time::timeout(READ_TIMEOUT + WRITE_TIMEOUT, exchange).await {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => debug!(%peer, error = %e, "metrics connection ended early"),
                        Err(_) => debug!(%peer, "metrics connection closed: too slow"),
                    }
                    drop(slot);
                });
            }
            Err(e) => {
                // Out of file descriptors and the like: back off, keep serving.
                warn!(error = %e, "accepting a metrics connection failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// One request on one connection, plain or TLS.
async fn connection<I>(io: I, endpoints: Endpoints) -> Result<(), String>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let service = service_fn(move |request: Request<Incoming>| {
        let endpoints = endpoints.clone();
        async move { Ok::<_, Infallible>(respond(&request, &endpoints).await) }
    });
    http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(READ_TIMEOUT)
        .keep_alive(false)
        .max_buf_size(MAX_HEAD)
        .serve_connection(io, service)
        .await
        .map_err(|e| e.to_string())
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    r
}

async fn respond(request: &Request<Incoming>, endpoints: &Endpoints) -> Response<Full<Bytes>> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n");
    }
    match request.uri().path() {
        "/metrics" => {
            if let Some(denied) = endpoints.web.authorize(request.headers().get(AUTHORIZATION)).await {
                return denied;
            }
            let mut body = Vec::with_capacity(16 * 1024);
            match TextEncoder::new().encode(&endpoints.registry.gather(), &mut body) {
                Ok(()) => {
                    let mut r = Response::new(Full::new(Bytes::from(body)));
                    r.headers_mut()
                        .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"));
                    r
                }
                Err(e) => {
                    warn!(error = %e, "encoding metrics failed");
                    text(StatusCode::INTERNAL_SERVER_ERROR, "encoding metrics failed\n")
                }
            }
        }
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" if endpoints.ready.load(Ordering::Relaxed) => text(StatusCode::OK, "ready\n"),
        "/readyz" => text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n"),
        _ => text(StatusCode::NOT_FOUND, "not found: try /metrics, /healthz or /readyz\n"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;
    use tokio_rustls::TlsConnector;
    use tokio_rustls::rustls::ClientConfig;
    use tokio_rustls::rustls::pki_types::ServerName;

    fn fixtures() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/web")
    }

    async fn start(web: WebConfig, ready: bool) -> (SocketAddr, Registry) {
        let registry = Registry::new();
        let c = prometheus::IntCounter::new("termwatch_test_total", "A test counter.").expect("counter");
        registry.register(Box::new(c.clone())).expect("register");
        c.inc_by(7);
        let listener = bind("127.0.0.1:0".parse().expect("addr")).await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let endpoints =
            Endpoints { registry: registry.clone(), ready: Arc::new(AtomicBool::new(ready)), web: Arc::new(web) };
        tokio::spawn(serve(listener, endpoints));
        (addr, registry)
    }

    async fn get(addr: SocketAddr, request: &[u8]) -> String {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(request).await.expect("write");
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out).await;
        String::from_utf8_lossy(&out).into_owned()
    }

    fn tls_client() -> TlsConnector {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(fixtures().join("ca.pem")).expect("ca.pem") {
            roots.add(cert.expect("cert")).expect("root");
        }
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        TlsConnector::from(Arc::new(config))
    }

    async fn get_tls(addr: SocketAddr, path: &str, auth: Option<(&str, &str)>) -> String {
        let tcp = TcpStream::connect(addr).await.expect("connect");
        let name = ServerName::try_from("localhost").expect("name");
        let mut s = tls_client().connect(name, tcp).await.expect("TLS handshake");
        let auth = auth
            .map(|(u, p)| {
                let token = base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"));
                format!("Authorization: Basic {token}\r\n")
            })
            .unwrap_or_default();
        let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n{auth}\r\n");
        s.write_all(request.as_bytes()).await.expect("write");
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out).await;
        String::from_utf8_lossy(&out).into_owned()
    }

    #[tokio::test]
    async fn serves_metrics_health_and_readiness() {
        let registry = Registry::new();
        let c = prometheus::IntCounter::new("termwatch_test_total", "A test counter.").expect("counter");
        registry.register(Box::new(c.clone())).expect("register");
        c.inc_by(7);
        let ready = Arc::new(AtomicBool::new(false));
        let listener = bind("127.0.0.1:0".parse().expect("addr")).await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let web = Arc::new(WebConfig::default());
        tokio::spawn(serve(listener, Endpoints { registry, ready: Arc::clone(&ready), web }));

        let m = get(addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(m.starts_with("HTTP/1.1 200 OK\r\n"), "{m}");
        assert!(m.contains("termwatch_test_total 7"), "{m}");
        assert!(get(addr, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await.starts_with("HTTP/1.1 200"));
        assert!(get(addr, b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n").await.starts_with("HTTP/1.1 503"));
        ready.store(true, Ordering::Relaxed);
        assert!(get(addr, b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n").await.starts_with("HTTP/1.1 200"));
        assert!(get(addr, b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n").await.starts_with("HTTP/1.1 404"));
        assert!(get(addr, b"POST /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await.starts_with("HTTP/1.1 405"));
        let huge = [b"GET /metrics HTTP/1.1\r\nX-Big: ".as_slice(), &vec![b'a'; MAX_HEAD * 4]].concat();
        assert!(get(addr, &huge).await.starts_with("HTTP/1.1 431"), "a head past the limit is refused");
        assert!(get(addr, b"\x16\x03\x01 not http\r\n\r\n").await.starts_with("HTTP/1.1 400"));
    }

    /// Idle connections hold at most MAX_CONNECTIONS slots: the next one
    /// waits in the accept queue (no descriptor of ours) until a slot frees.
    #[tokio::test]
    async fn idle_connections_are_bounded() {
        let (addr, _) = start(WebConfig::default(), true).await;
        let mut idle = Vec::new();
        for _ in 0..MAX_CONNECTIONS {
            idle.push(TcpStream::connect(addr).await.expect("connect"));
        }
        let waiting = tokio::spawn(get(addr, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"));
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(!waiting.is_finished(), "answered although every slot was taken");
        idle.clear();
        let answer = tokio::time::timeout(Duration::from_secs(3), waiting).await.expect("answered").expect("task");
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }

    /// A connection that sends nothing is closed after READ_TIMEOUT, TLS or not.
    #[tokio::test]
    async fn a_silent_connection_is_closed_after_the_read_timeout() {
        for web in [WebConfig::default(), WebConfig::load(&fixtures().join("web.yml")).expect("web.yml")] {
            let (addr, _) = start(web, true).await;
            let mut s = TcpStream::connect(addr).await.expect("connect");
            let mut buf = Vec::new();
            let closed = tokio::time::timeout(READ_TIMEOUT + Duration::from_secs(3), s.read_to_end(&mut buf)).await;
            assert!(closed.is_ok(), "still open after {READ_TIMEOUT:?} of silence");
        }
    }

    #[tokio::test]
    async fn tls_and_basic_auth_from_a_web_config_file() {
        let web = WebConfig::load(&fixtures().join("web.yml")).expect("web.yml");
        assert!(web.is_tls() && web.has_users());
        let (addr, _) = start(web, true).await;
        let password = std::fs::read_to_string(fixtures().join("password.txt")).expect("password.txt");

        let denied = get_tls(addr, "/metrics", None).await;
        assert!(denied.starts_with("HTTP/1.1 401"), "{denied}");
        assert!(denied.contains("www-authenticate: Basic realm=\"termwatch\""), "{denied}");
        let wrong = get_tls(addr, "/metrics", Some(("prometheus", "not-it"))).await;
        assert!(wrong.starts_with("HTTP/1.1 401"), "{wrong}");
        let stranger = get_tls(addr, "/metrics", Some(("mallory", password.trim()))).await;
        assert!(stranger.starts_with("HTTP/1.1 401"), "{stranger}");
        for _ in 0..2 {
            // The second time from the cache of verified credentials.
            let ok = get_tls(addr, "/metrics", Some(("prometheus", password.trim()))).await;
            assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
            assert!(ok.contains("termwatch_test_total 7"), "{ok}");
        }
        // Probes need no credentials.
        assert!(get_tls(addr, "/healthz", None).await.starts_with("HTTP/1.1 200"));
        // Plain HTTP to the TLS port gets no metrics.
        let plain = get(addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(!plain.contains("termwatch_test_total"), "{plain}");
    }

    #[test]
    fn web_config_errors_name_the_file_and_key_never_the_value() {
        let dir = tempfile::tempdir().expect("tempdir");
        let write = |name: &str, text: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, text).expect("write");
            p
        };
        let cases = [
            (
                "unknown.yml",
                "tls_server_config:\n  cert_file: a\n  key_file: b\n  cipher_suitez: [x]\n",
                "cipher_suitez",
            ),
            ("hash.yml", "basic_auth_users:\n  alice: hunter2\n", "basic_auth_users.alice"),
            ("missing.yml", "tls_server_config:\n  cert_file: nowhere.pem\n  key_file: nowhere-key.pem\n", "cert_file"),
            ("type.yml", "basic_auth_users: hunter2\n", "line 1"),
        ];
        for (name, text, named) in cases {
            let p = write(name, text);
            let err = format!("{:#}", WebConfig::load(&p).err().expect("refused"));
            assert!(err.contains(named), "{name}: {err}");
            assert!(err.contains(&p.display().to_string()), "{name}: {err}");
            assert!(!err.contains("hunter2"), "{name}: the value is echoed: {err}");
        }
    }
}
