//! `/metrics`, `/healthz` and `/readyz` over HTTP/1.1.
//!
//! Three fixed GET endpoints read by Prometheus and an orchestrator's probes
//! do not need a web framework: a request head is read (bounded in size and
//! time), answered, and the connection closed.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use prometheus::{Encoder, Registry, TextEncoder};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, warn};

const MAX_HEAD: usize = 8 * 1024;
const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// A slow reader of a large `/metrics` body gets this long.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once. Prometheus and a probe or two need a handful;
/// beyond this, connections wait in the kernel's accept queue and hold no
/// descriptor of ours, so a flood cannot take the file descriptors that
/// snapshots and Kafka need.
pub const MAX_CONNECTIONS: usize = 32;

/// What the endpoints report.
#[derive(Clone)]
pub struct Endpoints {
    pub registry: Registry,
    /// `/readyz` answers 200 once this is set.
    pub ready: Arc<AtomicBool>,
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
                    if let Err(e) = handle(stream, &endpoints).await {
                        debug!(%peer, error = %e, "metrics connection ended early");
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

async fn handle(mut stream: TcpStream, endpoints: &Endpoints) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    let complete = tokio::time::timeout(READ_TIMEOUT, async {
        loop {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                return Ok::<bool, std::io::Error>(false);
            }
            head.extend_from_slice(&buf[..n]);
            if head.windows(4).any(|w| w == b"\r\n\r\n") {
                return Ok(true);
            }
            if head.len() > MAX_HEAD {
                return Ok(false);
            }
        }
    })
    .await;
    let (status, content_type, body) = match complete {
        Ok(Ok(true)) => route(&head, endpoints),
        Ok(Ok(false)) => (400, "text/plain", b"bad request\n".to_vec()),
        Ok(Err(e)) => return Err(e),
        Err(_) => (408, "text/plain", b"request timeout\n".to_vec()),
    };
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        500 => "Internal Server Error",
        _ => "Service Unavailable",
    };
    let header = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let written = tokio::time::timeout(WRITE_TIMEOUT, async {
        stream.write_all(header.as_bytes()).await?;
        stream.write_all(&body).await?;
        stream.shutdown().await
    })
    .await;
    written.unwrap_or_else(|_| Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "response not read in time")))
}

fn route(head: &[u8], endpoints: &Endpoints) -> (u16, &'static str, Vec<u8>) {
    let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
    let mut parts = line.split(|&b| b == b' ');
    let (method, target) = (parts.next().unwrap_or_default(), parts.next().unwrap_or_default());
    let path = target.split(|&b| b == b'?').next().unwrap_or_default();
    if method != b"GET" && method != b"HEAD" {
        return (405, "text/plain", b"only GET\n".to_vec());
    }
    match path {
        b"/metrics" => {
            let encoder = TextEncoder::new();
            let mut body = Vec::with_capacity(16 * 1024);
            match encoder.encode(&endpoints.registry.gather(), &mut body) {
                Ok(()) => (200, "text/plain; version=0.0.4; charset=utf-8", body),
                Err(e) => (500, "text/plain", format!("encoding metrics failed: {e}\n").into_bytes()),
            }
        }
        b"/healthz" => (200, "text/plain", b"ok\n".to_vec()),
        b"/readyz" if endpoints.ready.load(Ordering::Relaxed) => (200, "text/plain", b"ready\n".to_vec()),
        b"/readyz" => (503, "text/plain", b"not ready\n".to_vec()),
        _ => (404, "text/plain", b"not found: try /metrics, /healthz or /readyz\n".to_vec()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn get(addr: SocketAddr, request: &[u8]) -> String {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(request).await.expect("write");
        let mut out = String::new();
        s.read_to_string(&mut out).await.expect("read");
        out
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
        tokio::spawn(serve(listener, Endpoints { registry, ready: Arc::clone(&ready) }));

        let m = get(addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(m.starts_with("HTTP/1.1 200 OK\r\n"), "{m}");
        assert!(m.contains("termwatch_test_total 7"), "{m}");
        assert!(get(addr, b"GET /healthz HTTP/1.1\r\n\r\n").await.starts_with("HTTP/1.1 200"));
        assert!(get(addr, b"GET /readyz HTTP/1.1\r\n\r\n").await.starts_with("HTTP/1.1 503"));
        ready.store(true, Ordering::Relaxed);
        assert!(get(addr, b"GET /readyz HTTP/1.1\r\n\r\n").await.starts_with("HTTP/1.1 200"));
        assert!(get(addr, b"GET /nope HTTP/1.1\r\n\r\n").await.starts_with("HTTP/1.1 404"));
        assert!(get(addr, b"POST /metrics HTTP/1.1\r\n\r\n").await.starts_with("HTTP/1.1 405"));
        let huge = vec![b'a'; MAX_HEAD + 2048];
        assert!(get(addr, &huge).await.starts_with("HTTP/1.1 400"));
    }

    /// Idle connections hold at most MAX_CONNECTIONS slots: the next one
    /// waits in the accept queue (no descriptor of ours) until a slot frees.
    #[tokio::test]
    async fn idle_connections_are_bounded() {
        let listener = bind("127.0.0.1:0".parse().expect("addr")).await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let endpoints = Endpoints { registry: Registry::new(), ready: Arc::new(AtomicBool::new(true)) };
        tokio::spawn(serve(listener, endpoints));
        let mut idle = Vec::new();
        for _ in 0..MAX_CONNECTIONS {
            idle.push(TcpStream::connect(addr).await.expect("connect"));
        }
        let waiting = tokio::spawn(get(addr, b"GET /healthz HTTP/1.1\r\n\r\n"));
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(!waiting.is_finished(), "answered although every slot was taken");
        idle.clear();
        let answer = tokio::time::timeout(Duration::from_secs(3), waiting).await.expect("answered").expect("task");
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }
}
