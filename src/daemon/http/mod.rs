//! The HTTP server of `walden serve` and `walden run` (`[http]`): `/healthz` for anyone,
//! and, with `Authorization: Bearer <token>`, `/status`, `/metrics` and the read-only store
//! API that `walden-restore --from http(s)://...` reads (paths in [`crate::http_api`]).
//!
//! - HTTP/1.1 (hyper), plain or TLS (rustls with the ring provider, `tls_cert`/`tls_key` PEM).
//! - The token is the token file's content, trimmed, read once at start; it is compared in
//!   constant time (both sides hashed). A missing or wrong token gets 401 with the same body
//!   whatever the path, before the path is looked at: nothing says whether a file exists.
//! - Only `GET` and `HEAD`; files are streamed in 64 KiB frames as the client reads them.
//! - Shutdown: stop accepting, let requests in flight finish for a few seconds, then cut
//!   what is left (a client retries).

mod body;
mod routes;
pub mod status;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio_rustls::TlsAcceptor;

pub use body::{Body, CHUNK};
pub use routes::{Reply, ReplyBody};
pub use status::{Metrics, StatusSource, StoreStatus, store_clusters};

use crate::daemon::config::{HttpConfig, TlsFiles};

/// The body of every 401, whatever was asked.
const UNAUTHORIZED: &str =
    "unauthorized: send Authorization: Bearer <token> with the token from the server's token_file";
/// Connections served at once; more wait to be accepted.
const MAX_CONNECTIONS: usize = 128;
/// How long a client may take for its TLS handshake and its request headers.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(15);
/// How long requests in flight may run on after shutdown was asked for.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Why the server cannot start.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("http: cannot read the token file {}: {source}", path.display())]
    TokenRead {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "http: the token file {} is empty: put a long random token in it (for example `openssl rand -hex 32 > {}`)", path.display(), path.display()
    )]
    EmptyToken { path: PathBuf },
    #[error("http: {what} {}: {reason}", path.display())]
    Tls {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("http: cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// The bearer token, kept only as its SHA-256.
#[derive(Clone)]
pub struct Token(Vec<u8>);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(..)")
    }
}

impl Token {
    /// The token file's content, trimmed; an empty one is refused.
    pub fn read(path: &Path) -> Result<Token, HttpError> {
        let text = std::fs::read_to_string(path).map_err(|source| HttpError::TokenRead {
            path: path.to_path_buf(),
            source,
        })?;
        Token::new(text.trim()).ok_or_else(|| HttpError::EmptyToken {
            path: path.to_path_buf(),
        })
    }

    /// `None` for an empty token.
    pub fn new(token: &str) -> Option<Token> {
        (!token.is_empty()).then(|| Token(Sha256::digest(token.as_bytes()).to_vec()))
    }

    /// Whether `presented` is the token; the time taken does not depend on where they differ.
    fn matches(&self, presented: &[u8]) -> bool {
        let digest = Sha256::digest(presented);
        let diff = self
            .0
            .iter()
            .zip(digest.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        diff == 0 && self.0.len() == digest.len()
    }

    /// Whether the request carries `Authorization: Bearer <token>`.
    fn authorizes(&self, headers: &HeaderMap) -> bool {
        let Some(value) = headers.get(header::AUTHORIZATION) else {
            return false;
        };
        let bytes = value.as_bytes();
        let Some((scheme, rest)) = bytes.split_at_checked(7) else {
            return false;
        };
        scheme.eq_ignore_ascii_case(b"bearer ") && self.matches(rest.trim_ascii())
    }
}

/// What every request handler shares.
struct Shared {
    store: PathBuf,
    token: Token,
    status: Arc<dyn StatusSource>,
}

/// A bound, not yet running server.
pub struct Server {
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    shared: Arc<Shared>,
}

impl Server {
    /// Reads the token and TLS files and binds `config.listen` (port 0: any free port).
    pub async fn bind(
        config: &HttpConfig,
        store: PathBuf,
        status: Arc<dyn StatusSource>,
    ) -> Result<Server, HttpError> {
        let token = Token::read(&config.token_file)?;
        Server::bind_with_token(config, token, store, status).await
    }

    /// As [`bind`](Server::bind), with the token given.
    pub async fn bind_with_token(
        config: &HttpConfig,
        token: Token,
        store: PathBuf,
        status: Arc<dyn StatusSource>,
    ) -> Result<Server, HttpError> {
        let tls = config.tls.as_ref().map(tls_acceptor).transpose()?;
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| HttpError::Bind {
                    addr: config.listen,
                    source,
                })?;
        Ok(Server {
            listener,
            tls,
            shared: Arc::new(Shared {
                store,
                token,
                status,
            }),
        })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` turns true, then lets requests in flight finish (for up to
    /// a few seconds).
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        if let Ok(addr) = self.listener.local_addr() {
            let scheme = if self.tls.is_some() { "https" } else { "http" };
            tracing::info!("HTTP server listening on {scheme}://{addr}");
        }
        let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        let mut connections = tokio::task::JoinSet::new();
        loop {
            let permit = tokio::select! {
                _ = stopped(&mut shutdown) => break,
                permit = slots.clone().acquire_owned() => match permit {
                    Ok(p) => p,
                    Err(_) => break,
                },
            };
            let accepted = tokio::select! {
                _ = stopped(&mut shutdown) => break,
                accepted = self.listener.accept() => accepted,
            };
            let (stream, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: wait a moment rather than spin.
                    tracing::warn!("HTTP server: cannot accept a connection: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let tls = self.tls.clone();
            let shared = self.shared.clone();
            let shutdown = shutdown.clone();
            connections.spawn(async move {
                connection(stream, peer, tls, shared, shutdown).await;
                drop(permit);
            });
            while connections.try_join_next().is_some() {}
        }
        let drain = async { while connections.join_next().await.is_some() {} };
        if tokio::time::timeout(SHUTDOWN_GRACE + Duration::from_secs(1), drain)
            .await
            .is_err()
        {
            connections.abort_all();
        }
        tracing::info!("HTTP server stopped");
    }
}

/// Serves the store over HTTP(S) as `config` says until `shutdown` turns true. `status`
/// answers `/healthz`, `/status` and `/metrics` ([`StoreStatus`] for a store alone).
pub async fn serve(
    config: &HttpConfig,
    store: PathBuf,
    status: Arc<dyn StatusSource>,
    shutdown: watch::Receiver<bool>,
) -> Result<(), HttpError> {
    Server::bind(config, store, status)
        .await?
        .run(shutdown)
        .await;
    Ok(())
}

/// Resolves once shutdown is asked for; never if the sender is gone without asking.
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    if shutdown.wait_for(|stop| *stop).await.is_err() {
        std::future::pending::<()>().await;
    }
}

fn tls_acceptor(files: &TlsFiles) -> Result<TlsAcceptor, HttpError> {
    let bad = |what: &'static str, path: &Path, reason: String| HttpError::Tls {
        what,
        path: path.to_path_buf(),
        reason,
    };
    let certs = CertificateDer::pem_file_iter(&files.cert)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|e| bad("tls_cert", &files.cert, e.to_string()))?;
    if certs.is_empty() {
        return Err(bad(
            "tls_cert",
            &files.cert,
            "no PEM certificate in it".into(),
        ));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| bad("tls_key", &files.key, e.to_string()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad("tls_cert", &files.cert, e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| {
            bad(
                "tls_key",
                &files.key,
                format!("does not go with tls_cert: {e}"),
            )
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    tls: Option<TlsAcceptor>,
    shared: Arc<Shared>,
    shutdown: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    match tls {
        None => serve_connection(stream, shared, shutdown).await,
        Some(acceptor) => {
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => serve_connection(tls, shared, shutdown).await,
                Ok(Err(e)) => tracing::debug!(%peer, "HTTP server: TLS handshake failed: {e}"),
                Err(_) => tracing::debug!(%peer, "HTTP server: TLS handshake timed out"),
            }
        }
    }
}

async fn serve_connection<S>(io: S, shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |req| {
        let shared = shared.clone();
        async move { Ok::<_, Infallible>(handle(req, shared).await) }
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HANDSHAKE_TIMEOUT)
        .serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(e) = result {
                tracing::debug!("HTTP connection ended: {e}");
            }
        }
        _ = stopped(&mut shutdown) => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(SHUTDOWN_GRACE, conn).await;
        }
    }
}

async fn handle<B>(req: Request<B>, shared: Arc<Shared>) -> Response<Body> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let response = answer(&method, &path, req.headers(), shared).await;
    tracing::debug!(%method, %path, status = response.status().as_u16(), "HTTP request");
    response
}

async fn answer(
    method: &Method,
    path: &str,
    headers: &HeaderMap,
    shared: Arc<Shared>,
) -> Response<Body> {
    let readable = method == Method::GET || method == Method::HEAD;
    if path == "/healthz" && readable {
        let status = shared.status.clone();
        let healthy = tokio::task::spawn_blocking(move || status.healthy())
            .await
            .unwrap_or(false);
        return if healthy {
            respond(Reply::text(StatusCode::OK, "ok"))
        } else {
            respond(Reply::text(StatusCode::SERVICE_UNAVAILABLE, "unhealthy"))
        };
    }
    if !shared.token.authorizes(headers) {
        let mut response = respond(Reply::text(StatusCode::UNAUTHORIZED, UNAUTHORIZED));
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"walden\""),
        );
        return response;
    }
    if !readable {
        let mut response = respond(Reply::text(
            StatusCode::METHOD_NOT_ALLOWED,
            "only GET and HEAD",
        ));
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    let path = path.to_string();
    let reply = tokio::task::spawn_blocking(move || {
        routes::route(&shared.store, shared.status.as_ref(), &path)
    })
    .await
    .unwrap_or_else(|e| {
        Reply::text(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("internal error: {e}"),
        )
    });
    respond(reply)
}

/// A reply as an HTTP response.
fn respond(reply: Reply) -> Response<Body> {
    let body = match reply.body {
        ReplyBody::Bytes(bytes) => Body::full(bytes),
        ReplyBody::File(file, len) => Body::file(file, len),
    };
    let mut response = Response::new(body);
    *response.status_mut() = reply.status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(reply.content_type),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    for (name, value) in reply.headers {
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(name, value);
        }
    }
    response
}

#[cfg(test)]
pub(crate) mod testing;
#[cfg(test)]
mod tests;
