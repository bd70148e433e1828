//! One connection to one server: the socket (TCP, Unix or TLS), SSL negotiation, the startup
//! packet, authentication (trust, cleartext, md5, SCRAM-SHA-256 with or without channel
//! binding), and the message primitives everything else in `pg` is built from.
//!
//! The socket is read into one buffer that only ever loses whole messages (see
//! [`super::frame`]), so [`Connection::recv`] is cancel-safe.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use fallible_iterator::FallibleIterator;
use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{self, ScramSha256};
use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpStream, UnixStream};

use super::conninfo::{ConnConfig, Host, Replication, Target};
use super::copy_stream::{CopyStream, SyncIo};
use super::error::{Error, ServerError};
use super::frame::{self, Frame, message_name};
use super::tls::{self, TlsConnector, TlsSettings};
use super::{ChannelBinding, SslMode};

/// What kind of session the startup packet asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionKind {
    /// A physical WAL sender (`replication=true`): replication commands only, no SQL.
    Physical,
    /// A logical WAL sender (`replication=database`): replication commands and SQL.
    Database,
    /// An ordinary SQL session.
    Sql,
}

/// Waited for a server to finish the connection handshake when `connect_timeout` is unset.
/// libpq waits forever; an unattended archiver must not.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(60);

/// The application name sent when the connection string gives none.
pub const DEFAULT_APPLICATION_NAME: &str = "walden";

/// How much the read buffer asks the socket for at least, per read.
const READ_CHUNK: usize = 256 * 1024;

/// The server's version, as `server_version_num` would give it (e.g. 150018).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ServerVersion(pub u32);

impl ServerVersion {
    /// Parses the `server_version` parameter (`15.18 (Debian ...)`, `16.11`, `18beta1`,
    /// `9.6.24`) the way libpq does.
    pub fn parse(text: &str) -> Option<ServerVersion> {
        let numeric: String = text
            .chars()
            .take_while(|c| c.is_ascii_digit() || *c == '.')
            .collect();
        let mut parts = numeric.split('.').filter(|p| !p.is_empty());
        let major: u32 = parts.next()?.parse().ok()?;
        let minor: u32 = parts.next().map_or(Some(0), |p| p.parse().ok())?;
        if major >= 10 {
            return major
                .checked_mul(10000)?
                .checked_add(minor)
                .map(ServerVersion);
        }
        let patch: u32 = parts.next().map_or(Some(0), |p| p.parse().ok())?;
        major
            .checked_mul(10000)?
            .checked_add(minor.checked_mul(100)?)?
            .checked_add(patch)
            .map(ServerVersion)
    }

    /// The major version: 15 for 15.18, 9 for 9.6 (callers only support 10 and later).
    pub fn major(self) -> u32 {
        self.0 / 10000
    }
}

/// The transport under the protocol.
enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_flush(cx),
            Stream::Unix(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Unix(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// An authenticated session with a server, ready for commands.
pub struct Connection {
    stream: Stream,
    rbuf: BytesMut,
    wbuf: BytesMut,
    peer: String,
    parameters: HashMap<String, String>,
    backend_pid: i32,
    version: ServerVersion,
}

impl Connection {
    /// Connects to the first target of `config` that accepts us, as libpq would: each host in
    /// turn, each address of a host in turn, with `sslmode` deciding TLS.
    pub async fn connect(config: &ConnConfig, kind: SessionKind) -> Result<Connection, Error> {
        // The session kind decides which database name a .pgpass line must match.
        let mut config = config.clone();
        config.replication = match kind {
            SessionKind::Physical => Some(Replication::Physical),
            SessionKind::Database => Some(Replication::Logical),
            SessionKind::Sql => None,
        };
        let config = &config;
        let timeout = config.connect_timeout.unwrap_or(DEFAULT_CONNECT_TIMEOUT);
        let mut last_error = None;
        for target in &config.targets {
            let attempt = connect_target(config, target, kind);
            let result = match tokio::time::timeout(timeout, attempt).await {
                Ok(result) => result,
                Err(_) => Err(Error::ConnectTimeout {
                    target: target.to_string(),
                    seconds: timeout.as_secs(),
                }),
            };
            match result {
                Ok(conn) => return Ok(conn),
                Err(e) if e.is_config() => return Err(e),
                Err(e) => {
                    tracing::debug!("connection attempt failed: {e}");
                    last_error = Some(e);
                }
            }
        }
        Err(last_error.unwrap_or_else(|| Error::Auth("the connection string names no host".into())))
    }

    /// Where this connection goes, for messages (`127.0.0.1:5432`, a socket path).
    pub fn peer(&self) -> &str {
        &self.peer
    }

    pub fn server_version(&self) -> ServerVersion {
        self.version
    }

    /// A parameter the server reported (`server_version`, `in_hot_standby`, ...).
    pub fn parameter(&self, name: &str) -> Option<&str> {
        self.parameters.get(name).map(String::as_str)
    }

    /// The server process serving this session.
    pub fn backend_pid(&self) -> i32 {
        self.backend_pid
    }

    /// Whether the session is encrypted.
    pub fn is_tls(&self) -> bool {
        matches!(self.stream, Stream::Tls(_))
    }

    /// Sends a simple query (the only kind a WAL sender takes) without waiting for a reply.
    pub async fn send_query(&mut self, sql: &str) -> Result<(), Error> {
        self.wbuf.clear();
        frontend::query(sql, &mut self.wbuf).map_err(|e| Error::Protocol {
            peer: self.peer.clone(),
            reason: format!("cannot encode query: {e}"),
        })?;
        self.flush_wbuf().await
    }

    /// Sends one CopyData message.
    pub async fn send_copy_data(&mut self, data: &[u8]) -> Result<(), Error> {
        self.wbuf.clear();
        frontend::CopyData::new(data)
            .map_err(|e| Error::Protocol {
                peer: self.peer.clone(),
                reason: format!("cannot encode CopyData: {e}"),
            })?
            .write(&mut self.wbuf);
        self.flush_wbuf().await
    }

    /// Sends CopyDone.
    pub async fn send_copy_done(&mut self) -> Result<(), Error> {
        self.wbuf.clear();
        frontend::copy_done(&mut self.wbuf);
        self.flush_wbuf().await
    }

    /// Ends the session politely.
    pub async fn close(mut self) {
        self.wbuf.clear();
        frontend::terminate(&mut self.wbuf);
        let _ = self.flush_wbuf().await;
        let _ = self.stream.shutdown().await;
    }

    /// The next message that matters to the caller. Notices are logged and parameter
    /// changes recorded here, wherever they arrive (they may come at any time, even in COPY).
    pub async fn recv(&mut self) -> Result<Frame, Error> {
        loop {
            let frame = self.recv_raw().await?;
            if let Some(frame) = self.filter(frame) {
                return Ok(frame);
            }
        }
    }

    /// The next message if one is already complete in the read buffer, without reading the
    /// socket: lets a caller handle everything that arrived in one read before it waits again.
    pub fn try_recv_buffered(&mut self) -> Result<Option<Frame>, Error> {
        loop {
            let decoded = frame::decode(&mut self.rbuf).map_err(|source| Error::Frame {
                peer: self.peer.clone(),
                source,
            })?;
            match decoded {
                None => return Ok(None),
                Some(frame) => {
                    if let Some(frame) = self.filter(frame) {
                        return Ok(Some(frame));
                    }
                }
            }
        }
    }

    /// Handles notices and parameter changes; gives back every other frame.
    fn filter(&mut self, frame: Frame) -> Option<Frame> {
        filter_frame(frame, &self.peer, Some(&mut self.parameters))
    }

    async fn recv_raw(&mut self) -> Result<Frame, Error> {
        loop {
            match frame::decode(&mut self.rbuf) {
                Ok(Some(frame)) => return Ok(frame),
                Ok(None) => {}
                Err(source) => {
                    return Err(Error::Frame {
                        peer: self.peer.clone(),
                        source,
                    });
                }
            }
            // Read in large pieces: fewer wake-ups when the server sends many small messages.
            if self.rbuf.capacity() - self.rbuf.len() < READ_CHUNK / 2 {
                self.rbuf.reserve(READ_CHUNK);
            }
            let n = self
                .stream
                .read_buf(&mut self.rbuf)
                .await
                .map_err(|source| Error::Io {
                    peer: self.peer.clone(),
                    source,
                })?;
            if n == 0 {
                return Err(Error::Io {
                    peer: self.peer.clone(),
                    source: std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "server closed the connection",
                    ),
                });
            }
        }
    }

    async fn flush_wbuf(&mut self) -> Result<(), Error> {
        let result = async {
            self.stream.write_all(&self.wbuf).await?;
            self.stream.flush().await
        }
        .await;
        result.map_err(|source| Error::Io {
            peer: self.peer.clone(),
            source,
        })
    }

    /// Hands a connection inside CopyBoth (after [`Connection::start_replication`] answered
    /// [`StartReply::Streaming`](super::StartReply::Streaming)) to blocking code: the socket
    /// leaves the async runtime, and what was already read goes along. Must be called inside
    /// the runtime.
    pub fn into_copy_stream(self) -> Result<CopyStream, Error> {
        let peer = self.peer;
        let io_error = |source| Error::Io {
            peer: peer.clone(),
            source,
        };
        let io = match self.stream {
            Stream::Tcp(s) => SyncIo::Tcp(s.into_std().map_err(io_error)?),
            Stream::Unix(s) => SyncIo::Unix(s.into_std().map_err(io_error)?),
            Stream::Tls(s) => {
                let (tcp, session) = s.into_inner();
                let tcp = tcp.into_std().map_err(io_error)?;
                SyncIo::Tls(Box::new(rustls::StreamOwned::new(session, tcp)))
            }
        };
        CopyStream::new(io, self.rbuf, peer)
    }

    /// A protocol violation error naming this peer.
    pub(crate) fn protocol_error(&self, reason: impl Into<String>) -> Error {
        Error::Protocol {
            peer: self.peer.clone(),
            reason: reason.into(),
        }
    }
}

async fn connect_target(
    config: &ConnConfig,
    target: &Target,
    kind: SessionKind,
) -> Result<Connection, Error> {
    match &target.host {
        Host::Unix(dir) => {
            // libpq never negotiates TLS over a Unix socket, whatever sslmode says.
            let path = dir.join(format!(".s.PGSQL.{}", target.port));
            let peer = path.display().to_string();
            let stream = UnixStream::connect(&path)
                .await
                .map_err(|source| Error::Connect {
                    target: peer.clone(),
                    hint: connect_hint(&source, false),
                    source,
                })?;
            startup((Stream::Unix(stream), None), peer, config, target, kind).await
        }
        Host::Tcp(name) => {
            let addrs: Vec<SocketAddr> = match target.hostaddr {
                Some(ip) => vec![SocketAddr::new(ip, target.port)],
                None => tokio::net::lookup_host((name.as_str(), target.port))
                    .await
                    .map_err(|source| Error::Connect {
                        target: target.to_string(),
                        hint: "; check the host name",
                        source,
                    })?
                    .collect(),
            };
            let mut last_error = None;
            for addr in addrs {
                match connect_addr(config, target, name, addr, kind).await {
                    Ok(conn) => return Ok(conn),
                    Err(e) if e.is_config() => return Err(e),
                    Err(e) => last_error = Some(e),
                }
            }
            Err(last_error.unwrap_or_else(|| Error::Connect {
                target: target.to_string(),
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "the host name resolved to no address",
                ),
                hint: "",
            }))
        }
    }
}

fn connect_hint(e: &std::io::Error, tcp: bool) -> &'static str {
    match e.kind() {
        std::io::ErrorKind::ConnectionRefused if tcp => {
            "; is the server running on that host and accepting TCP/IP connections?"
        }
        std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::NotFound => {
            "; is the server running locally and accepting connections on that socket?"
        }
        _ => "",
    }
}

/// One TCP address, with `sslmode` deciding whether and how to try TLS.
async fn connect_addr(
    config: &ConnConfig,
    target: &Target,
    host_name: &str,
    addr: SocketAddr,
    kind: SessionKind,
) -> Result<Connection, Error> {
    let peer = addr.to_string();
    match config.sslmode {
        SslMode::Disable => {
            let tcp = tcp_connect(addr).await?;
            startup((Stream::Tcp(tcp), None), peer, config, target, kind).await
        }
        SslMode::Allow => {
            let tcp = tcp_connect(addr).await?;
            match startup((Stream::Tcp(tcp), None), peer.clone(), config, target, kind).await {
                Err(Error::Server(_)) => {
                    // The server may insist on TLS (a hostssl-only pg_hba entry): try again.
                    let stream = negotiate_tls(config, host_name, addr, false).await?;
                    startup(stream, peer, config, target, kind).await
                }
                other => other,
            }
        }
        SslMode::Prefer => match negotiate_tls(config, host_name, addr, false).await {
            Ok(stream) => startup(stream, peer, config, target, kind).await,
            Err(Error::Tls { source, .. }) if !source.is_config() => {
                tracing::debug!("TLS failed with sslmode=prefer, retrying without: {source}");
                let tcp = tcp_connect(addr).await?;
                startup((Stream::Tcp(tcp), None), peer, config, target, kind).await
            }
            Err(e) => Err(e),
        },
        SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
            let stream = negotiate_tls(config, host_name, addr, true).await?;
            startup(stream, peer, config, target, kind).await
        }
    }
}

async fn tcp_connect(addr: SocketAddr) -> Result<TcpStream, Error> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|source| Error::Connect {
            target: addr.to_string(),
            hint: connect_hint(&source, true),
            source,
        })?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// What is needed to explain a TLS failure that shows up after the handshake: under TLS 1.3
/// a server refuses a client certificate only on our first read.
type TlsContext = (TlsConnector, String);

/// Sends SSLRequest and, if the server agrees, performs the TLS handshake. With `required`
/// false a refusal gives back the plain connection.
async fn negotiate_tls(
    config: &ConnConfig,
    host_name: &str,
    addr: SocketAddr,
    required: bool,
) -> Result<(Stream, Option<TlsContext>), Error> {
    let peer = addr.to_string();
    let settings = TlsSettings {
        mode: config.sslmode,
        root_cert: config.sslrootcert.clone(),
        client_cert: config.sslcert.clone(),
        client_key: config.sslkey.clone(),
    };
    // Build the TLS configuration first: a missing certificate file is the user's error and
    // must be reported as such, before any network traffic.
    let connector = TlsConnector::new(&settings).map_err(|source| Error::Tls {
        target: peer.clone(),
        source,
    })?;
    let mut tcp = tcp_connect(addr).await?;
    let mut request = BytesMut::new();
    frontend::ssl_request(&mut request);
    let io_error = |source| Error::Io {
        peer: peer.clone(),
        source,
    };
    tcp.write_all(&request).await.map_err(io_error)?;
    // Exactly one byte: anything the server sends after it must go through TLS, never be
    // taken as plaintext (CVE-2021-23222).
    let answer = tcp.read_u8().await.map_err(|source| Error::Io {
        peer: peer.clone(),
        source,
    })?;
    match answer {
        b'S' => {
            let stream = connector
                .handshake(tcp, host_name)
                .await
                .map_err(|source| Error::Tls {
                    target: peer.clone(),
                    source,
                })?;
            Ok((
                Stream::Tls(Box::new(stream)),
                Some((connector, host_name.to_string())),
            ))
        }
        b'N' if required => Err(Error::Auth(format!(
            "{peer}: server does not support SSL, but sslmode={} requires it",
            config.sslmode
        ))),
        b'N' => Ok((Stream::Tcp(tcp), None)),
        // Do not show an unauthenticated ErrorResponse's text (CVE-2024-10977).
        b'E' => Err(Error::Protocol {
            peer,
            reason:
                "server answered the SSL request with an error; it may be too old for this client"
                    .into(),
        }),
        other => Err(Error::Protocol {
            peer,
            reason: format!(
                "server answered the SSL request with byte 0x{other:02x}; is this a PostgreSQL server?"
            ),
        }),
    }
}

/// Startup packet, authentication, and the parameters up to the first ReadyForQuery.
async fn startup(
    (stream, tls_context): (Stream, Option<TlsContext>),
    peer: String,
    config: &ConnConfig,
    target: &Target,
    kind: SessionKind,
) -> Result<Connection, Error> {
    let mut conn = Connection {
        stream,
        rbuf: BytesMut::with_capacity(READ_CHUNK),
        wbuf: BytesMut::with_capacity(1024),
        peer,
        parameters: HashMap::new(),
        backend_pid: 0,
        version: ServerVersion(0),
    };
    let application_name = config
        .application_name
        .as_deref()
        .or(config.fallback_application_name.as_deref())
        .unwrap_or(DEFAULT_APPLICATION_NAME);
    let mut params: Vec<(&str, &str)> = vec![("user", &config.user)];
    match kind {
        SessionKind::Physical => {
            params.push(("database", "replication"));
            params.push(("replication", "true"));
        }
        SessionKind::Database => {
            params.push(("database", &config.dbname));
            params.push(("replication", "database"));
        }
        SessionKind::Sql => params.push(("database", &config.dbname)),
    }
    params.push(("application_name", application_name));
    if let Some(options) = &config.options {
        params.push(("options", options));
    }
    conn.wbuf.clear();
    frontend::startup_message(params, &mut conn.wbuf)
        .map_err(|e| conn.protocol_error(format!("cannot encode startup packet: {e}")))?;
    conn.flush_wbuf().await?;

    match authenticate(&mut conn, config, target).await {
        Ok(()) => {}
        Err(Error::Io { peer, source }) => {
            return Err(match &tls_context {
                Some((connector, host)) => Error::Tls {
                    target: peer,
                    source: connector.explain(host, source),
                },
                None => Error::Io { peer, source },
            });
        }
        Err(e) => return Err(e),
    }

    loop {
        match conn.recv().await? {
            Frame::Message(Message::BackendKeyData(body)) => conn.backend_pid = body.process_id(),
            Frame::Message(Message::ReadyForQuery(_)) => break,
            Frame::Message(Message::ErrorResponse(body)) => {
                return Err(Error::Server(ServerError::from_fields(body.fields())));
            }
            Frame::NegotiateProtocolVersion { .. } => {}
            other => {
                return Err(
                    conn.protocol_error(format!("unexpected {other:?} during connection startup",))
                );
            }
        }
    }
    let version_text = conn.parameter("server_version").unwrap_or_default();
    conn.version = ServerVersion::parse(version_text).ok_or_else(|| {
        conn.protocol_error(format!("unparsable server_version {version_text:?}"))
    })?;
    if conn.parameter("integer_datetimes") == Some("off") {
        return Err(conn.protocol_error(
            "the server uses floating-point timestamps (integer_datetimes=off), which walden does not support",
        ));
    }
    Ok(conn)
}

async fn authenticate(
    conn: &mut Connection,
    config: &ConnConfig,
    target: &Target,
) -> Result<(), Error> {
    let require_binding = config.channel_binding == ChannelBinding::Require;
    let mut scram: Option<ScramSha256> = None;
    let mut bound = false;
    loop {
        let message = match conn.recv().await? {
            Frame::Message(m) => m,
            Frame::NegotiateProtocolVersion { .. } => continue,
            Frame::CopyBothResponse => {
                return Err(
                    conn.protocol_error("unexpected CopyBothResponse during authentication")
                );
            }
        };
        match message {
            Message::AuthenticationOk => {
                if require_binding && !bound {
                    return Err(Error::Auth(format!(
                        "{}: channel_binding=require, but the server authenticated us without channel binding (it must use scram-sha-256 over TLS)",
                        conn.peer
                    )));
                }
                if scram.is_some() {
                    return Err(conn.protocol_error(
                        "server ended SCRAM authentication without its final message",
                    ));
                }
                return Ok(());
            }
            Message::ErrorResponse(body) => {
                return Err(Error::Server(ServerError::from_fields(body.fields())));
            }
            Message::AuthenticationCleartextPassword => {
                refuse_unbound(conn, require_binding, "a cleartext password")?;
                let password = password(conn, config, target)?;
                conn.wbuf.clear();
                frontend::password_message(password.as_bytes(), &mut conn.wbuf)
                    .map_err(|e| conn.protocol_error(e.to_string()))?;
                conn.flush_wbuf().await?;
            }
            Message::AuthenticationMd5Password(body) => {
                refuse_unbound(conn, require_binding, "an md5 password")?;
                let password = password(conn, config, target)?;
                let hash = md5_hash(config.user.as_bytes(), password.as_bytes(), body.salt());
                conn.wbuf.clear();
                frontend::password_message(hash.as_bytes(), &mut conn.wbuf)
                    .map_err(|e| conn.protocol_error(e.to_string()))?;
                conn.flush_wbuf().await?;
            }
            Message::AuthenticationSasl(body) => {
                let mut offers_plain = false;
                let mut offers_plus = false;
                let mut mechanisms = body.mechanisms();
                while let Some(mechanism) = mechanisms
                    .next()
                    .map_err(|e| conn.protocol_error(e.to_string()))?
                {
                    match mechanism {
                        sasl::SCRAM_SHA_256 => offers_plain = true,
                        sasl::SCRAM_SHA_256_PLUS => offers_plus = true,
                        _ => {}
                    }
                }
                let end_point_hash = if config.channel_binding == ChannelBinding::Disable {
                    None
                } else {
                    conn.server_certificate_hash()
                };
                let (mechanism, binding) = match (end_point_hash, offers_plus) {
                    (Some(hash), true) => {
                        bound = true;
                        (
                            sasl::SCRAM_SHA_256_PLUS,
                            sasl::ChannelBinding::tls_server_end_point(hash),
                        )
                    }
                    _ if require_binding => {
                        let why = if !conn.is_tls() {
                            "the connection is not encrypted (use sslmode=require or stronger)"
                        } else if offers_plus {
                            "the server certificate's signature algorithm has no channel-binding hash"
                        } else {
                            "the server did not offer SCRAM-SHA-256-PLUS"
                        };
                        return Err(Error::Auth(format!(
                            "{}: channel_binding=require, but {why}",
                            conn.peer
                        )));
                    }
                    _ if !offers_plain => {
                        return Err(conn.protocol_error(
                            "server offered no SASL mechanism walden supports (SCRAM-SHA-256)",
                        ));
                    }
                    // We could bind but the server did not offer it: say so ("y"), which
                    // lets a server that does support it detect a downgrade.
                    (Some(_), false) => (sasl::SCRAM_SHA_256, sasl::ChannelBinding::unrequested()),
                    (None, _) => (sasl::SCRAM_SHA_256, sasl::ChannelBinding::unsupported()),
                };
                let password = password(conn, config, target)?;
                let state = ScramSha256::new(password.as_bytes(), binding);
                conn.wbuf.clear();
                frontend::sasl_initial_response(mechanism, state.message(), &mut conn.wbuf)
                    .map_err(|e| conn.protocol_error(e.to_string()))?;
                conn.flush_wbuf().await?;
                scram = Some(state);
            }
            Message::AuthenticationSaslContinue(body) => {
                let state = scram
                    .as_mut()
                    .ok_or_else(|| conn.protocol_error("SASL continue without SASL start"))?;
                state.update(body.data()).map_err(|e| {
                    Error::Auth(format!("{}: SCRAM authentication failed: {e}", conn.peer))
                })?;
                conn.wbuf.clear();
                frontend::sasl_response(state.message(), &mut conn.wbuf)
                    .map_err(|e| conn.protocol_error(e.to_string()))?;
                conn.flush_wbuf().await?;
            }
            Message::AuthenticationSaslFinal(body) => {
                let mut state = scram
                    .take()
                    .ok_or_else(|| conn.protocol_error("SASL final without SASL start"))?;
                state.finish(body.data()).map_err(|e| {
                    Error::Auth(format!(
                        "{}: the server's SCRAM signature is invalid ({e}): it does not know the password, refusing it",
                        conn.peer
                    ))
                })?;
            }
            Message::AuthenticationGss
            | Message::AuthenticationGssContinue(_)
            | Message::AuthenticationSspi
            | Message::AuthenticationKerberosV5
            | Message::AuthenticationScmCredential => {
                return Err(Error::Auth(format!(
                    "{}: the server asks for GSSAPI/SSPI/Kerberos authentication, which walden does not support; use scram-sha-256 for this role in pg_hba.conf",
                    conn.peer
                )));
            }
            other => {
                return Err(conn.protocol_error(format!(
                    "unexpected {} during authentication",
                    message_name(&other)
                )));
            }
        }
    }
}

fn refuse_unbound(conn: &Connection, require_binding: bool, what: &str) -> Result<(), Error> {
    if require_binding {
        return Err(Error::Auth(format!(
            "{}: channel_binding=require, but the server asked for {what}",
            conn.peer
        )));
    }
    Ok(())
}

fn password(conn: &Connection, config: &ConnConfig, target: &Target) -> Result<String, Error> {
    config.password_for(target).ok_or_else(|| {
        Error::Auth(format!(
            "{}: the server asks for a password for user {:?}, but none was given: set PGPASSWORD, add a line to the password file ({}), or put password=... in the connection string",
            conn.peer,
            config.user,
            config
                .passfile
                .as_ref()
                .map_or_else(|| "~/.pgpass".to_string(), |p| p.display().to_string())
        ))
    })
}

impl Connection {
    /// RFC 5929 `tls-server-end-point` hash of the server's certificate, for SCRAM-PLUS.
    fn server_certificate_hash(&self) -> Option<Vec<u8>> {
        let Stream::Tls(tls) = &self.stream else {
            return None;
        };
        tls::channel_binding_hash(tls::server_certificate(tls)?)
    }
}

/// Logs a notice and records a parameter change (in `parameters`, when kept): both may come
/// at any time, even in COPY. Gives back every other frame.
pub(super) fn filter_frame(
    frame: Frame,
    peer: &str,
    parameters: Option<&mut HashMap<String, String>>,
) -> Option<Frame> {
    match frame {
        Frame::Message(Message::NoticeResponse(body)) => {
            let notice = ServerError::from_fields(body.fields());
            tracing::info!(peer = %peer, "{}: {}", notice.severity, notice.message);
            None
        }
        Frame::Message(Message::ParameterStatus(body)) => {
            if let (Some(parameters), Ok(name), Ok(value)) = (parameters, body.name(), body.value())
            {
                parameters.insert(name.to_string(), value.to_string());
            }
            None
        }
        other => Some(other),
    }
}

/// Reads the values of a DataRow as byte strings (`None` for SQL NULL).
pub(crate) fn data_row_values(
    body: &postgres_protocol::message::backend::DataRowBody,
) -> std::io::Result<Vec<Option<Bytes>>> {
    let buffer = body.buffer_bytes();
    let mut values = Vec::new();
    let mut ranges = body.ranges();
    while let Some(range) = ranges.next()? {
        values.push(match range {
            Some(r) => Some(
                buffer
                    .get(r.clone())
                    .map(|_| buffer.slice(r))
                    .ok_or_else(|| {
                        std::io::Error::new(
                            std::io::ErrorKind::InvalidData,
                            "DataRow value out of range",
                        )
                    })?,
            ),
            None => None,
        });
    }
    Ok(values)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_versions() {
        for (text, num) in [
            ("15.18 (Debian 15.18-0+deb12u1)", 150018),
            ("16.11", 160011),
            ("18.6", 180006),
            ("18beta1", 180000),
            ("19devel", 190000),
            ("9.6.24", 90624),
            ("10.23", 100023),
        ] {
            assert_eq!(
                ServerVersion::parse(text),
                Some(ServerVersion(num)),
                "{text}"
            );
        }
        assert_eq!(ServerVersion::parse("x"), None);
        // Found by fuzzing: absurd versions from a broken server must not overflow.
        for absurd in ["429497", "9.42949673", "10.4294967295", "4294967295.1"] {
            assert_eq!(ServerVersion::parse(absurd), None, "{absurd}");
        }
        assert_eq!(ServerVersion(150018).major(), 15);
    }
}
