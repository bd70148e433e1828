//! TLS for PostgreSQL connections with libpq's `sslmode` semantics, plus the
//! `tls-server-end-point` channel-binding data SCRAM-SHA-256-PLUS needs.
//!
//! This module owns the rustls client configuration (trust anchors, server certificate
//! verification, client certificate) and the TLS handshake over a stream on which the caller
//! has already negotiated TLS with an SSLRequest. The only files it reads are the ones libpq
//! reads: the root certificate file, the client certificate and its private key.
//!
//! What is verified, as in libpq (`fe-secure-openssl.c`):
//! * a root certificate file is used when one exists (`sslrootcert`, else
//!   `~/.postgresql/root.crt`); then the chain is verified in *every* mode, including
//!   `require`, `prefer` and `allow`;
//! * without one, `require`/`prefer`/`allow` encrypt without verifying the certificate (the
//!   handshake signatures are still checked), and `verify-ca`/`verify-full` fail;
//! * `verify-full` also checks the host name the way libpq does: subjectAltName DNS names
//!   (case-insensitive, a leading `*.` matches one label) and IP addresses, falling back to the
//!   subject Common Name when no SAN of the host's kind (DNS or IP) is present;
//! * `sslrootcert=system` loads the operating system's CA bundle and requires `verify-full`.
//!
//! Use: build a [`TlsConnector`] from [`TlsSettings`] when TLS is about to be used, call
//! [`TlsConnector::handshake`] right after the server's `S`, and map errors from the first
//! reads with [`TlsConnector::explain`]. For SCRAM-SHA-256-PLUS, feed [`server_certificate`]
//! to [`channel_binding_hash`]; `None` means no channel binding is possible.

use std::fmt;
use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ring::digest::{self as ring_digest, SHA256, SHA384, SHA512};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{WebPkiSupportedAlgorithms, ring as ring_provider};
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    AlertDescription, CertificateError, ClientConfig, DigitallySignedStruct, Error as RustlsError,
    InconsistentKeys, OtherError, RootCertStore, SignatureScheme,
};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::client::TlsStream;
use x509_cert::Certificate;
use x509_cert::der::asn1::{Any, ContextSpecific, ObjectIdentifier};
use x509_cert::der::{Decode, Reader, SliceReader, TagNumber};
use x509_cert::ext::pkix::SubjectAltName;
use x509_cert::ext::pkix::name::GeneralName;

use super::SslMode;

/// The ALPN protocol name PostgreSQL 17+ registers; libpq 17+ always offers it. Older servers
/// ignore it; newer ones accept it on SSLRequest-negotiated connections and require it for
/// direct TLS.
const ALPN_POSTGRESQL: &[u8] = b"postgresql";

/// Bundles tried, in order, for `sslrootcert=system` when `SSL_CERT_FILE` is not set: the
/// default OpenSSL CA file of the common Linux and BSD distributions.
const SYSTEM_CA_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/pki/tls/cacert.pem",
    "/etc/ssl/cert.pem",
];

/// The files and mode for one connection's TLS, as given by the connection string.
///
/// `root_cert`, `client_cert` and `client_key` are the user's `sslrootcert`, `sslcert` and
/// `sslkey`; `None` means libpq's default in `~/.postgresql/` (`root.crt`, `postgresql.crt`,
/// `postgresql.key`), each used only if it exists. A root certificate path of exactly `system`
/// means the operating system's trust store. An explicitly given `client_cert` that does not
/// exist is an error (libpq silently ignores it; we do not).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsSettings {
    pub mode: SslMode,
    pub root_cert: Option<PathBuf>,
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
}

/// The `sslmode` libpq uses when none is given: `verify-full` with `sslrootcert=system`,
/// `prefer` otherwise.
pub fn default_sslmode(root_cert: Option<&Path>) -> SslMode {
    if root_cert.is_some_and(is_system) {
        SslMode::VerifyFull
    } else {
        SslMode::Prefer
    }
}

fn is_system(path: &Path) -> bool {
    path.as_os_str() == "system"
}

/// Why TLS could not be set up or the handshake failed.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error(
        "root certificate file \"{0}\" does not exist; provide the file (sslrootcert=FILE), use the system's trusted roots with sslrootcert=system, or change sslmode to disable server certificate verification"
    )]
    RootCertMissing(String),
    #[error(
        "could not get home directory to locate root certificate file; provide the file with sslrootcert=FILE, use sslrootcert=system, or change sslmode to disable server certificate verification"
    )]
    NoHomeForRootCert,
    #[error("could not read root certificate file \"{path}\": {reason}")]
    RootCertRead { path: String, reason: String },
    #[error("weak sslmode \"{0}\" may not be used with sslrootcert=system (use \"verify-full\")")]
    WeakModeWithSystemRoots(SslMode),
    #[error(
        "sslrootcert=system: no system CA bundle found (looked at $SSL_CERT_FILE and {looked}); set SSL_CERT_FILE or give sslrootcert a file"
    )]
    NoSystemRoots { looked: String },
    #[error(
        "certificate file \"{0}\" does not exist; fix sslcert or remove it to connect without a client certificate"
    )]
    ClientCertMissing(String),
    #[error("could not read certificate file \"{path}\": {reason}")]
    ClientCertRead { path: String, reason: String },
    #[error("certificate present, but not private key file \"{0}\"; set sslkey to the key file")]
    KeyMissing(String),
    #[error(
        "certificate present, but no private key file: the home directory is unknown, so set sslkey"
    )]
    NoHomeForKey,
    #[error("private key file \"{0}\" is not a regular file")]
    KeyNotRegularFile(String),
    #[error(
        "private key file \"{0}\" has group or world access; file must have permissions u=rw (0600) or less if owned by the current user, or permissions u=rw,g=r (0640) or less if owned by root"
    )]
    KeyPermissions(String),
    #[error("could not load private key file \"{path}\": {reason}")]
    KeyRead { path: String, reason: String },
    #[error("certificate file \"{cert}\" does not match private key file \"{key}\"")]
    KeyMismatch { cert: String, key: String },
    #[error("could not set up TLS: {0}")]
    Config(RustlsError),
    #[error("host name \"{0}\" is neither a valid DNS name nor an IP address; TLS needs one")]
    InvalidHostName(String),
    #[error(
        "server certificate for host \"{host}\" is not signed by a trusted certificate authority ({trust}); check sslrootcert"
    )]
    NotTrusted { host: String, trust: Trust },
    #[error("{}", name_mismatch(.presented, .host))]
    NameMismatch {
        host: String,
        presented: Vec<String>,
    },
    #[error(
        "server certificate for host \"{0}\" has expired or is not yet valid; renew it on the server or check this machine's clock"
    )]
    CertificateTime(String),
    #[error("server certificate for host \"{host}\" was rejected: {reason}")]
    CertificateRejected { host: String, reason: String },
    #[error(
        "server \"{0}\" requires a client certificate; set sslcert and sslkey (or install ~/.postgresql/postgresql.crt and postgresql.key)"
    )]
    ClientCertRequired(String),
    #[error(
        "server \"{host}\" refused our client certificate (TLS alert {alert:?}); check that sslcert is signed by a CA the server trusts"
    )]
    ClientCertRefused {
        host: String,
        alert: AlertDescription,
    },
    #[error("TLS handshake with \"{host}\" failed: {reason}")]
    Handshake { host: String, reason: String },
}

impl TlsError {
    /// True when the cause is in the settings or files the user gave (retrying cannot help),
    /// false when it came from the server or the network during the handshake.
    pub fn is_config(&self) -> bool {
        matches!(
            self,
            TlsError::RootCertMissing(_)
                | TlsError::NoHomeForRootCert
                | TlsError::RootCertRead { .. }
                | TlsError::WeakModeWithSystemRoots(_)
                | TlsError::NoSystemRoots { .. }
                | TlsError::ClientCertMissing(_)
                | TlsError::ClientCertRead { .. }
                | TlsError::KeyMissing(_)
                | TlsError::NoHomeForKey
                | TlsError::KeyNotRegularFile(_)
                | TlsError::KeyPermissions(_)
                | TlsError::KeyRead { .. }
                | TlsError::KeyMismatch { .. }
                | TlsError::InvalidHostName(_)
                | TlsError::Config(_)
        )
    }
}

fn name_mismatch(presented: &[String], host: &str) -> String {
    match presented {
        [] => format!(
            "could not get server's host name from server certificate (connecting to \"{host}\"); use a certificate naming the host, or sslmode=verify-ca"
        ),
        [one] => format!("server certificate for \"{one}\" does not match host name \"{host}\""),
        [first, rest @ ..] => format!(
            "server certificate for \"{first}\" (and {} other name{}) does not match host name \"{host}\"",
            rest.len(),
            if rest.len() == 1 { "" } else { "s" }
        ),
    }
}

/// Which trust anchors verified (or would have verified) the server certificate; used in
/// error messages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Trust {
    /// No root certificate: the chain is not verified.
    None,
    /// The root certificate file.
    File(PathBuf),
    /// `sslrootcert=system`, read from this bundle.
    System(PathBuf),
}

impl fmt::Display for Trust {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Trust::None => f.write_str("no root certificate file"),
            Trust::File(p) => write!(f, "root certificate file \"{}\"", p.display()),
            Trust::System(p) => write!(f, "sslrootcert=system, read from \"{}\"", p.display()),
        }
    }
}

/// A TLS client for one set of [`TlsSettings`]: the rustls configuration plus what error
/// messages need to know. Cheap to clone; build it when TLS is about to be used (as libpq
/// reads the files only then).
#[derive(Clone, Debug)]
pub struct TlsConnector {
    config: Arc<ClientConfig>,
    trust: Trust,
    client_cert: Option<PathBuf>,
}

impl TlsConnector {
    /// Reads the root certificate(s), client certificate and key the settings name (or
    /// libpq's defaults under `$HOME/.postgresql`) and builds the client configuration.
    pub fn new(settings: &TlsSettings) -> Result<Self, TlsError> {
        Self::with_home(settings, std::env::home_dir().as_deref())
    }

    fn with_home(settings: &TlsSettings, home: Option<&Path>) -> Result<Self, TlsError> {
        let provider = Arc::new(ring_provider::default_provider());
        let trust = load_trust(settings, home)?;
        let algorithms = provider.signature_verification_algorithms;
        let chain = match &trust {
            Trust::None => None,
            Trust::File(path) | Trust::System(path) => {
                let roots = read_roots(path)?;
                let verifier =
                    WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                        .build()
                        .map_err(|e| TlsError::Config(RustlsError::General(e.to_string())))?;
                Some(verifier)
            }
        };
        let verifier = PgServerVerifier {
            check_host: chain.is_some() && settings.mode == SslMode::VerifyFull,
            chain,
            algorithms,
        };
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(TlsError::Config)?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier));
        let client_cert = client_cert_path(settings, home)?;
        let mut config = match &client_cert {
            None => builder.with_no_client_auth(),
            Some(cert_path) => {
                let key_path = match (&settings.client_key, home) {
                    (Some(key), _) => key.clone(),
                    (None, Some(home)) => home.join(".postgresql/postgresql.key"),
                    (None, None) => return Err(TlsError::NoHomeForKey),
                };
                let chain = read_client_chain(cert_path)?;
                let key = read_private_key(&key_path)?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| match e {
                        RustlsError::InconsistentKeys(InconsistentKeys::KeyMismatch) => {
                            TlsError::KeyMismatch {
                                cert: cert_path.display().to_string(),
                                key: key_path.display().to_string(),
                            }
                        }
                        other => TlsError::KeyRead {
                            path: key_path.display().to_string(),
                            reason: other.to_string(),
                        },
                    })?
            }
        };
        config.alpn_protocols = vec![ALPN_POSTGRESQL.to_vec()];
        Ok(TlsConnector {
            config: Arc::new(config),
            trust,
            client_cert,
        })
    }

    /// The rustls configuration (TLS 1.2 and 1.3, ALPN `postgresql`, our verifier).
    pub fn config(&self) -> &Arc<ClientConfig> {
        &self.config
    }

    /// What the server certificate is verified against.
    pub fn trust(&self) -> &Trust {
        &self.trust
    }

    /// Runs the TLS handshake on `stream` (on which the server has just answered `S` to an
    /// SSLRequest, with nothing read past that byte). `host` is the host name or IP literal
    /// from the connection string: it is sent as SNI when it is a name and checked against the
    /// certificate under `verify-full`.
    pub async fn handshake<S>(&self, stream: S, host: &str) -> Result<TlsStream<S>, TlsError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let name = ServerName::try_from(host.to_owned())
            .map_err(|_| TlsError::InvalidHostName(host.to_owned()))?;
        tokio_rustls::TlsConnector::from(self.config.clone())
            .connect(name, stream)
            .await
            .map_err(|e| self.explain(host, e))
    }

    /// Turns an I/O error from the handshake or from the first reads on the TLS stream into a
    /// readable [`TlsError`]. Under TLS 1.3 a server refuses a client certificate only after the
    /// client considers the handshake done, so the refusal arrives on the first read: pass such
    /// errors here.
    pub fn explain(&self, host: &str, err: io::Error) -> TlsError {
        let host = host.to_owned();
        let Some(tls) = err.get_ref().and_then(|e| e.downcast_ref::<RustlsError>()) else {
            return TlsError::Handshake {
                host,
                reason: err.to_string(),
            };
        };
        match tls {
            RustlsError::InvalidCertificate(cert) => match cert {
                CertificateError::UnknownIssuer => TlsError::NotTrusted {
                    host,
                    trust: self.trust.clone(),
                },
                CertificateError::NotValidForNameContext { presented, .. } => {
                    TlsError::NameMismatch {
                        host,
                        presented: presented.clone(),
                    }
                }
                CertificateError::NotValidForName => TlsError::NameMismatch {
                    host,
                    presented: Vec::new(),
                },
                CertificateError::Expired
                | CertificateError::ExpiredContext { .. }
                | CertificateError::NotValidYet
                | CertificateError::NotValidYetContext { .. } => TlsError::CertificateTime(host),
                other => TlsError::CertificateRejected {
                    host,
                    reason: other.to_string(),
                },
            },
            RustlsError::AlertReceived(AlertDescription::CertificateRequired) => {
                TlsError::ClientCertRequired(host)
            }
            RustlsError::AlertReceived(AlertDescription::HandshakeFailure)
                if self.client_cert.is_none() =>
            {
                // TLS 1.2 servers (OpenSSL) answer a missing required certificate this way.
                TlsError::Handshake {
                    host,
                    reason: "server sent alert HandshakeFailure (it may require a client certificate: set sslcert and sslkey)".to_owned(),
                }
            }
            RustlsError::AlertReceived(
                alert @ (AlertDescription::BadCertificate
                | AlertDescription::UnknownCA
                | AlertDescription::CertificateUnknown
                | AlertDescription::CertificateExpired
                | AlertDescription::CertificateRevoked
                | AlertDescription::UnsupportedCertificate),
            ) if self.client_cert.is_some() => TlsError::ClientCertRefused {
                host,
                alert: *alert,
            },
            other => TlsError::Handshake {
                host,
                reason: other.to_string(),
            },
        }
    }
}

/// The server's end-entity certificate (DER) of an established TLS stream, for channel
/// binding; `None` if the server sent none.
pub fn server_certificate<S>(stream: &TlsStream<S>) -> Option<&[u8]> {
    let (_, conn) = stream.get_ref();
    conn.peer_certificates()
        .and_then(|chain| chain.first())
        .map(|cert| cert.as_ref())
}

/// RFC 5929 `tls-server-end-point` channel-binding data: the hash of the server's end-entity
/// certificate, with the hash function of its signature algorithm, MD5 and SHA-1 promoted to
/// SHA-256 (as PostgreSQL's server and libpq compute it). `None` when that hash is undefined
/// (Ed25519, Ed448), not available here (SHA-224, SHA-3, MD2) or the certificate is unreadable;
/// then SCRAM must run without channel binding.
pub fn channel_binding_hash(end_entity_der: &[u8]) -> Option<Vec<u8>> {
    let cert = Certificate::from_der(end_entity_der).ok()?;
    let signature = &cert.signature_algorithm;
    let algorithm = signature_hash(&signature.oid, signature.parameters.as_ref())?;
    Some(
        ring_digest::digest(algorithm, end_entity_der)
            .as_ref()
            .to_vec(),
    )
}

fn signature_hash(
    oid: &ObjectIdentifier,
    params: Option<&Any>,
) -> Option<&'static ring_digest::Algorithm> {
    Some(match oid.to_string().as_str() {
        // md5WithRSA, sha1WithRSA, sha1WithRSA (OIW), ecdsa-with-SHA1, dsa-with-SHA1 → SHA-256
        "1.2.840.113549.1.1.4"
        | "1.2.840.113549.1.1.5"
        | "1.3.14.3.2.29"
        | "1.2.840.10045.4.1"
        | "1.2.840.10040.4.3" => &SHA256,
        // sha256WithRSA, ecdsa-with-SHA256, dsa-with-sha256
        "1.2.840.113549.1.1.11" | "1.2.840.10045.4.3.2" | "2.16.840.1.101.3.4.3.2" => &SHA256,
        // sha384WithRSA, ecdsa-with-SHA384
        "1.2.840.113549.1.1.12" | "1.2.840.10045.4.3.3" => &SHA384,
        // sha512WithRSA, ecdsa-with-SHA512
        "1.2.840.113549.1.1.13" | "1.2.840.10045.4.3.4" => &SHA512,
        // RSASSA-PSS: the hash is in the parameters
        "1.2.840.113549.1.1.10" => return pss_hash(params?),
        _ => return None,
    })
}

/// The hash of RSASSA-PSS parameters (RFC 4055): `[0] EXPLICIT AlgorithmIdentifier`, SHA-1
/// (promoted to SHA-256) when absent.
fn pss_hash(params: &Any) -> Option<&'static ring_digest::Algorithm> {
    let mut reader = SliceReader::new(params.value()).ok()?;
    let Some(hash) = ContextSpecific::<Any>::decode_explicit(&mut reader, TagNumber::N0).ok()?
    else {
        return Some(&SHA256);
    };
    let oid: ObjectIdentifier = SliceReader::new(hash.value.value()).ok()?.decode().ok()?;
    Some(match oid.to_string().as_str() {
        "1.3.14.3.2.26" | "2.16.840.1.101.3.4.2.1" => &SHA256,
        "2.16.840.1.101.3.4.2.2" => &SHA384,
        "2.16.840.1.101.3.4.2.3" => &SHA512,
        _ => return None,
    })
}

/// Decides where the trust anchors come from, libpq's way.
fn load_trust(settings: &TlsSettings, home: Option<&Path>) -> Result<Trust, TlsError> {
    let path = match (&settings.root_cert, home) {
        (Some(path), _) => Some(path.clone()),
        (None, Some(home)) => Some(home.join(".postgresql/root.crt")),
        (None, None) => None,
    };
    match path {
        Some(path) if is_system(&path) => {
            if settings.mode != SslMode::VerifyFull {
                return Err(TlsError::WeakModeWithSystemRoots(settings.mode));
            }
            Ok(Trust::System(system_bundle()?))
        }
        Some(path) if std::fs::metadata(&path).is_ok() => Ok(Trust::File(path)),
        Some(path) if settings.mode.verifies() => {
            Err(TlsError::RootCertMissing(path.display().to_string()))
        }
        None if settings.mode.verifies() => Err(TlsError::NoHomeForRootCert),
        Some(path) => {
            if settings.root_cert.is_some() {
                tracing::warn!(
                    "root certificate file \"{}\" does not exist; with sslmode={} the server certificate is not verified",
                    path.display(),
                    settings.mode
                );
            }
            Ok(Trust::None)
        }
        None => Ok(Trust::None),
    }
}

pub(crate) fn system_bundle() -> Result<PathBuf, TlsError> {
    if let Some(file) = std::env::var_os("SSL_CERT_FILE").filter(|f| !f.is_empty()) {
        return Ok(PathBuf::from(file));
    }
    SYSTEM_CA_BUNDLES
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .ok_or_else(|| TlsError::NoSystemRoots {
            looked: SYSTEM_CA_BUNDLES.join(", "),
        })
}

fn read_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let read_error = |reason: String| TlsError::RootCertRead {
        path: path.display().to_string(),
        reason,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| read_error(pem_reason(e)))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| read_error(pem_reason(e)))?;
    let mut roots = RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(read_error("no usable PEM certificate in it".to_owned()));
    }
    Ok(roots)
}

fn pem_reason(err: pem::Error) -> String {
    match err {
        pem::Error::Io(io) => io.to_string(),
        other => format!("not a valid PEM file ({other})"),
    }
}

/// The client certificate to present: the explicit one (which must exist) or libpq's default
/// if it exists.
fn client_cert_path(
    settings: &TlsSettings,
    home: Option<&Path>,
) -> Result<Option<PathBuf>, TlsError> {
    if let Some(path) = &settings.client_cert {
        return match std::fs::metadata(path) {
            Ok(_) => Ok(Some(path.clone())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                Err(TlsError::ClientCertMissing(path.display().to_string()))
            }
            Err(e) => Err(TlsError::ClientCertRead {
                path: path.display().to_string(),
                reason: e.to_string(),
            }),
        };
    }
    let Some(home) = home else { return Ok(None) };
    let path = home.join(".postgresql/postgresql.crt");
    match std::fs::metadata(&path) {
        Ok(_) => Ok(Some(path)),
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
            ) =>
        {
            Ok(None)
        }
        Err(e) => Err(TlsError::ClientCertRead {
            path: path.display().to_string(),
            reason: e.to_string(),
        }),
    }
}

fn read_client_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let read_error = |reason: String| TlsError::ClientCertRead {
        path: path.display().to_string(),
        reason,
    };
    let chain = CertificateDer::pem_file_iter(path)
        .map_err(|e| read_error(pem_reason(e)))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| read_error(pem_reason(e)))?;
    if chain.is_empty() {
        return Err(read_error("no PEM certificate in it".to_owned()));
    }
    Ok(chain)
}

/// Loads a PEM private key (PKCS#8, PKCS#1 or SEC1) after libpq's file checks.
fn read_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let shown = || path.display().to_string();
    let meta = match std::fs::metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(TlsError::KeyMissing(shown()));
        }
        Err(e) => {
            return Err(TlsError::KeyRead {
                path: shown(),
                reason: e.to_string(),
            });
        }
    };
    if !meta.is_file() {
        return Err(TlsError::KeyNotRegularFile(shown()));
    }
    if key_too_open(&meta) {
        return Err(TlsError::KeyPermissions(shown()));
    }
    PrivateKeyDer::from_pem_file(path).map_err(|e| TlsError::KeyRead {
        path: shown(),
        reason: match e {
            pem::Error::NoItemsFound => "no unencrypted PEM private key (PKCS#8, PKCS#1 or SEC1) in it; encrypted keys (sslpassword) are not supported".to_owned(),
            other => pem_reason(other),
        },
    })
}

/// libpq's rule: root-owned keys may be u=rw,g=r (0640); others at most u=rw (0600).
#[cfg(unix)]
fn key_too_open(meta: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::MetadataExt;
    let mode = meta.mode();
    if meta.uid() == 0 {
        mode & 0o037 != 0
    } else {
        mode & 0o077 != 0
    }
}

#[cfg(not(unix))]
fn key_too_open(_meta: &std::fs::Metadata) -> bool {
    false
}

/// The server certificate verifier for every sslmode: optionally the chain (webpki, host name
/// ignored), optionally libpq's host-name check, and always the handshake signatures.
#[derive(Debug)]
struct PgServerVerifier {
    chain: Option<Arc<WebPkiServerVerifier>>,
    check_host: bool,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for PgServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, RustlsError> {
        if let Some(chain) = &self.chain {
            // webpki checks the name only after the chain, so a name error means the chain
            // is good; the name is then checked our (libpq's) way, or not at all.
            match chain.verify_server_cert(
                end_entity,
                intermediates,
                server_name,
                ocsp_response,
                now,
            ) {
                Ok(_)
                | Err(RustlsError::InvalidCertificate(
                    CertificateError::NotValidForName
                    | CertificateError::NotValidForNameContext { .. },
                )) => {}
                Err(e) => return Err(e),
            }
        }
        if self.check_host {
            check_host_name(end_entity, server_name)?;
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, RustlsError> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, RustlsError> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// A certificate name problem that is not a mismatch.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct CertNameError(&'static str);

fn name_error(text: &'static str) -> RustlsError {
    RustlsError::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(
        CertNameError(text),
    ))))
}

/// libpq's `verify-full` host-name check (`pgtls_verify_peer_name_matches_certificate_guts`).
fn check_host_name(
    end_entity: &CertificateDer<'_>,
    server_name: &ServerName<'_>,
) -> Result<(), RustlsError> {
    let (host, host_ip) = match server_name {
        ServerName::DnsName(name) => (name.as_ref().to_owned(), None),
        ServerName::IpAddress(ip) => {
            let ip = IpAddr::from(*ip);
            (ip.to_string(), Some(ip))
        }
        _ => return Err(name_error("unsupported kind of server name")),
    };
    let cert = Certificate::from_der(end_entity.as_ref())
        .map_err(|_| RustlsError::InvalidCertificate(CertificateError::BadEncoding))?;
    let mut examined = Vec::new();
    let mut check_cn = true;
    for general in subject_alt_names(&cert)? {
        match general {
            GeneralName::DnsName(dns) => {
                if host_ip.is_none() {
                    check_cn = false;
                }
                let name = cert_text(dns.as_bytes())?;
                let matched = dns_name_matches(&name, &host);
                examined.push(name);
                if matched {
                    return Ok(());
                }
            }
            GeneralName::IpAddress(octets) => {
                if host_ip.is_some() {
                    check_cn = false;
                }
                let addr = match *octets.as_bytes() {
                    [a, b, c, d] => IpAddr::from([a, b, c, d]),
                    ref bytes => match <[u8; 16]>::try_from(bytes) {
                        Ok(v6) => IpAddr::from(v6),
                        Err(_) => {
                            return Err(name_error(
                                "certificate contains IP address with invalid length",
                            ));
                        }
                    },
                };
                examined.push(addr.to_string());
                if host_ip == Some(addr) {
                    return Ok(());
                }
            }
            _ => {}
        }
    }
    if check_cn && let Some(cn) = common_name(&cert)? {
        let matched = dns_name_matches(&cn, &host);
        examined.push(cn);
        if matched {
            return Ok(());
        }
    }
    Err(RustlsError::InvalidCertificate(
        CertificateError::NotValidForNameContext {
            expected: server_name.to_owned(),
            presented: examined,
        },
    ))
}

fn subject_alt_names(cert: &Certificate) -> Result<Vec<GeneralName>, RustlsError> {
    let san_oid = x509_cert::der::oid::db::rfc5280::ID_CE_SUBJECT_ALT_NAME;
    let Some(ext) = cert
        .tbs_certificate
        .extensions
        .iter()
        .flatten()
        .find(|ext| ext.extn_id == san_oid)
    else {
        return Ok(Vec::new());
    };
    SubjectAltName::from_der(ext.extn_value.as_bytes())
        .map(|san| san.0)
        .map_err(|_| RustlsError::InvalidCertificate(CertificateError::BadEncoding))
}

/// The first subject Common Name, as libpq takes it.
fn common_name(cert: &Certificate) -> Result<Option<String>, RustlsError> {
    let cn_oid = x509_cert::der::oid::db::rfc4519::CN;
    let value = cert
        .tbs_certificate
        .subject
        .0
        .iter()
        .flat_map(|rdn| rdn.0.iter())
        .find(|atv| atv.oid == cn_oid)
        .map(|atv| atv.value.value());
    value.map(cert_text).transpose()
}

/// A name from the certificate as text; embedded NULs are refused (CVE-2009-4034).
fn cert_text(bytes: &[u8]) -> Result<String, RustlsError> {
    if bytes.contains(&0) {
        return Err(name_error("SSL certificate's name contains embedded null"));
    }
    Ok(String::from_utf8_lossy(bytes).into_owned())
}

/// Exact (case-insensitive) match, or a `*.` wildcard standing for exactly one leading label.
fn dns_name_matches(name: &str, host: &str) -> bool {
    if name.eq_ignore_ascii_case(host) {
        return true;
    }
    let Some(suffix) = name.strip_prefix('*') else {
        return false;
    };
    if !suffix.starts_with('.') || suffix.len() < 2 || suffix.len() >= host.len() {
        return false;
    }
    let (label, rest) = host.split_at(host.len() - suffix.len());
    rest.eq_ignore_ascii_case(suffix) && !label.contains('.')
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::os::unix::fs::PermissionsExt;
    use std::process::Command;

    use rustls::ServerConfig;
    use rustls::server::WebPkiClientVerifier;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};
    use tokio::task::JoinHandle;

    use super::*;

    const OPENSSL_CNF: &str = "\
[req]
distinguished_name = dn
[dn]
[ca]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
[server]
basicConstraints = CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost
[server_ip]
basicConstraints = CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = DNS:db.example.com, IP:127.0.0.1
[server_cn_only]
basicConstraints = CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = serverAuth
[client]
basicConstraints = CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = clientAuth
";

    /// Certificates made with the openssl CLI in a temporary directory: CAs `ca` and
    /// `other_ca`; `server` (SAN DNS:localhost), `cn_only` (CN=localhost, no SAN) and `client`
    /// (CN=walden), all signed by `ca`.
    struct Pki {
        dir: tempfile::TempDir,
    }

    impl Pki {
        fn new() -> Pki {
            let pki = Pki {
                dir: tempfile::tempdir().expect("tempdir"),
            };
            std::fs::write(pki.path("openssl.cnf"), OPENSSL_CNF).expect("write openssl.cnf");
            pki.ca("ca");
            pki.ca("other_ca");
            pki.leaf("server", "localhost", "server", "-sha256");
            pki.leaf("cn_only", "localhost", "server_cn_only", "-sha256");
            pki.leaf("client", "walden", "client", "-sha256");
            for name in ["server", "cn_only", "client"] {
                pki.chmod(&format!("{name}.key"), 0o600);
            }
            pki
        }

        fn path(&self, name: &str) -> PathBuf {
            self.dir.path().join(name)
        }

        /// Runs `openssl` with whitespace-separated `args` in the directory.
        fn openssl(&self, args: &str) {
            let out = Command::new("openssl")
                .args(args.split_whitespace())
                .current_dir(self.dir.path())
                .output()
                .expect("run openssl");
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }

        fn ca(&self, name: &str) {
            self.openssl(&format!(
                "req -config openssl.cnf -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 \
                -nodes -keyout {name}.key -out {name}.crt -days 30 -subj /CN={name} -extensions \
                ca -sha256"
            ));
        }

        fn leaf(&self, name: &str, cn: &str, extensions: &str, digest: &str) {
            self.openssl(&format!(
                "req -config openssl.cnf -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
                -keyout {name}.key -out {name}.csr -subj /CN={cn}"
            ));
            self.openssl(&format!(
                "x509 -req -in {name}.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out \
                {name}.crt -days 30 -extfile openssl.cnf -extensions {extensions} {digest}"
            ));
        }

        fn chmod(&self, name: &str, mode: u32) {
            std::fs::set_permissions(self.path(name), std::fs::Permissions::from_mode(mode))
                .expect("chmod");
        }

        fn der(&self, name: &str) -> Vec<u8> {
            CertificateDer::from_pem_file(self.path(name))
                .expect("read certificate")
                .as_ref()
                .to_vec()
        }

        /// An empty home directory, so no `~/.postgresql` default applies.
        fn home(&self) -> PathBuf {
            let home = self.path("home");
            std::fs::create_dir_all(&home).expect("mkdir home");
            home
        }
    }

    #[derive(Default)]
    struct ServerOptions {
        client_ca: Option<PathBuf>,
        alpn: bool,
        tls12_only: bool,
    }

    /// What the test server saw of the client.
    #[derive(Debug)]
    struct Seen {
        alpn: Option<Vec<u8>>,
        client_cert: bool,
    }

    /// A TLS server on 127.0.0.1 for one connection: it writes `ok` after the handshake.
    async fn serve(
        pki: &Pki,
        cert: &str,
        options: ServerOptions,
    ) -> (SocketAddr, JoinHandle<io::Result<Seen>>) {
        let provider = Arc::new(ring_provider::default_provider());
        let builder = ServerConfig::builder_with_provider(provider.clone());
        let builder = if options.tls12_only {
            builder.with_protocol_versions(&[&rustls::version::TLS12])
        } else {
            builder.with_safe_default_protocol_versions()
        }
        .expect("protocol versions");
        let builder = match &options.client_ca {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let mut roots = RootCertStore::empty();
                roots
                    .add(CertificateDer::from_pem_file(ca).expect("client CA"))
                    .expect("add client CA");
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                        .build()
                        .expect("client verifier");
                builder.with_client_cert_verifier(verifier)
            }
        };
        let chain =
            vec![CertificateDer::from_pem_file(pki.path(&format!("{cert}.crt"))).expect("cert")];
        let key = PrivateKeyDer::from_pem_file(pki.path(&format!("{cert}.key"))).expect("key");
        let mut config = builder.with_single_cert(chain, key).expect("server config");
        if options.alpn {
            config.alpn_protocols = vec![b"postgresql".to_vec()];
        }
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let task = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await?;
            let mut tls = acceptor.accept(tcp).await?;
            tls.write_all(b"ok").await?;
            tls.flush().await?;
            let (_, conn) = tls.get_ref();
            Ok(Seen {
                alpn: conn.alpn_protocol().map(<[u8]>::to_vec),
                client_cert: conn.peer_certificates().is_some_and(|c| !c.is_empty()),
            })
        });
        (addr, task)
    }

    /// Connects with `settings` (home: the PKI's empty home), completes the handshake and
    /// reads the server's `ok`.
    async fn connect(
        pki: &Pki,
        settings: &TlsSettings,
        addr: SocketAddr,
        host: &str,
    ) -> Result<TlsStream<TcpStream>, TlsError> {
        let connector = TlsConnector::with_home(settings, Some(&pki.home()))?;
        let tcp = TcpStream::connect(addr).await.expect("connect");
        let mut tls = connector.handshake(tcp, host).await?;
        let mut buf = [0u8; 2];
        tls.read_exact(&mut buf)
            .await
            .map_err(|e| connector.explain(host, e))?;
        assert_eq!(&buf, b"ok");
        Ok(tls)
    }

    fn settings(mode: SslMode, root: Option<PathBuf>) -> TlsSettings {
        TlsSettings {
            mode,
            root_cert: root,
            client_cert: None,
            client_key: None,
        }
    }

    #[tokio::test]
    async fn require_accepts_an_untrusted_certificate_and_offers_alpn() {
        let pki = Pki::new();
        let (addr, server) = serve(
            &pki,
            "server",
            ServerOptions {
                alpn: true,
                ..Default::default()
            },
        )
        .await;
        let tls = connect(&pki, &settings(SslMode::Require, None), addr, "127.0.0.1")
            .await
            .expect("require must not verify");
        assert_eq!(
            server_certificate(&tls),
            Some(pki.der("server.crt").as_slice())
        );
        let seen = server.await.expect("join").expect("server side");
        assert_eq!(seen.alpn.as_deref(), Some(&b"postgresql"[..]));
        assert!(!seen.client_cert);
    }

    #[tokio::test]
    async fn require_works_over_tls12_with_a_server_without_alpn() {
        let pki = Pki::new();
        let (addr, server) = serve(
            &pki,
            "server",
            ServerOptions {
                tls12_only: true,
                ..Default::default()
            },
        )
        .await;
        let tls = connect(&pki, &settings(SslMode::Prefer, None), addr, "localhost")
            .await
            .expect("TLS 1.2 handshake");
        assert_eq!(
            tls.get_ref().1.protocol_version(),
            Some(rustls::ProtocolVersion::TLSv1_2)
        );
        assert_eq!(server.await.expect("join").expect("server side").alpn, None);
    }

    #[tokio::test]
    async fn require_with_a_root_certificate_verifies_the_chain() {
        let pki = Pki::new();
        let root = pki.path("other_ca.crt");
        let (addr, _server) = serve(&pki, "server", ServerOptions::default()).await;
        let err = connect(
            &pki,
            &settings(SslMode::Require, Some(root.clone())),
            addr,
            "localhost",
        )
        .await
        .expect_err("chain from another CA");
        assert!(matches!(err, TlsError::NotTrusted { .. }), "{err:?}");
        assert_eq!(
            err.to_string(),
            format!(
                "server certificate for host \"localhost\" is not signed by a trusted certificate authority (root certificate file \"{}\"); check sslrootcert",
                root.display()
            )
        );
    }

    #[tokio::test]
    async fn default_root_certificate_in_home_is_used() {
        let pki = Pki::new();
        let home = pki.home();
        std::fs::create_dir_all(home.join(".postgresql")).expect("mkdir");
        std::fs::copy(pki.path("other_ca.crt"), home.join(".postgresql/root.crt")).expect("copy");
        let connector = TlsConnector::with_home(&settings(SslMode::Require, None), Some(&home))
            .expect("config");
        assert_eq!(
            connector.trust(),
            &Trust::File(home.join(".postgresql/root.crt"))
        );
        let (addr, _server) = serve(&pki, "server", ServerOptions::default()).await;
        let tcp = TcpStream::connect(addr).await.expect("connect");
        let err = connector
            .handshake(tcp, "localhost")
            .await
            .expect_err("root.crt names another CA");
        assert!(matches!(err, TlsError::NotTrusted { .. }), "{err:?}");
    }

    #[tokio::test]
    async fn verify_ca_ignores_the_host_name_but_not_the_issuer() {
        let pki = Pki::new();
        let (addr, _server) = serve(&pki, "server", ServerOptions::default()).await;
        connect(
            &pki,
            &settings(SslMode::VerifyCa, Some(pki.path("ca.crt"))),
            addr,
            "127.0.0.1",
        )
        .await
        .expect("verify-ca must not check the name");

        let (addr, _server) = serve(&pki, "server", ServerOptions::default()).await;
        let err = connect(
            &pki,
            &settings(SslMode::VerifyCa, Some(pki.path("other_ca.crt"))),
            addr,
            "localhost",
        )
        .await
        .expect_err("untrusted CA");
        assert!(matches!(err, TlsError::NotTrusted { .. }), "{err:?}");
    }

    #[tokio::test]
    async fn verify_full_checks_the_host_name() {
        let pki = Pki::new();
        let full = settings(SslMode::VerifyFull, Some(pki.path("ca.crt")));
        let (addr, _server) = serve(&pki, "server", ServerOptions::default()).await;
        let err = connect(&pki, &full, addr, "127.0.0.1")
            .await
            .expect_err("certificate names only localhost");
        // Like libpq: for an IP host without IP SANs the CN is examined too.
        assert_eq!(
            err.to_string(),
            "server certificate for \"localhost\" (and 1 other name) does not match host name \"127.0.0.1\""
        );

        let (addr, server) = serve(&pki, "server", ServerOptions::default()).await;
        let tls = connect(&pki, &full, addr, "LocalHost")
            .await
            .expect("name matches, case-insensitively");
        let leaf = server_certificate(&tls).expect("server certificate");
        assert_eq!(
            channel_binding_hash(leaf),
            Some(sha(&pki, "server.crt", "-sha256"))
        );
        server.await.expect("join").expect("server side");

        pki.leaf("ip", "db.example.com", "server_ip", "-sha256");
        pki.chmod("ip.key", 0o600);
        let (addr, _server) = serve(&pki, "ip", ServerOptions::default()).await;
        connect(&pki, &full, addr, "127.0.0.1")
            .await
            .expect("IP SAN matches the IP host");
        let (addr, _server) = serve(&pki, "ip", ServerOptions::default()).await;
        let err = connect(&pki, &full, addr, "localhost")
            .await
            .expect_err("DNS SAN present, so the CN is ignored");
        assert_eq!(
            err.to_string(),
            "server certificate for \"db.example.com\" (and 1 other name) does not match host name \"localhost\""
        );
    }

    #[tokio::test]
    async fn verify_full_falls_back_to_the_common_name_without_san() {
        let pki = Pki::new();
        let full = settings(SslMode::VerifyFull, Some(pki.path("ca.crt")));
        let (addr, _server) = serve(&pki, "cn_only", ServerOptions::default()).await;
        connect(&pki, &full, addr, "localhost")
            .await
            .expect("CN=localhost matches like libpq");
        let (addr, _server) = serve(&pki, "cn_only", ServerOptions::default()).await;
        let err = connect(&pki, &full, addr, "127.0.0.1")
            .await
            .expect_err("CN does not match");
        assert_eq!(
            err.to_string(),
            "server certificate for \"localhost\" does not match host name \"127.0.0.1\""
        );
    }

    #[test]
    fn verification_without_a_root_certificate_is_an_error() {
        let pki = Pki::new();
        let home = pki.home();
        for mode in [SslMode::VerifyCa, SslMode::VerifyFull] {
            let err = TlsConnector::with_home(&settings(mode, None), Some(&home))
                .expect_err("no root.crt");
            assert_eq!(
                err.to_string(),
                format!(
                    "root certificate file \"{}\" does not exist; provide the file (sslrootcert=FILE), use the system's trusted roots with sslrootcert=system, or change sslmode to disable server certificate verification",
                    home.join(".postgresql/root.crt").display()
                )
            );
        }
        let missing = pki.path("nope.crt");
        let err =
            TlsConnector::with_home(&settings(SslMode::VerifyCa, Some(missing.clone())), None)
                .expect_err("explicit root missing");
        assert!(err.to_string().starts_with(&format!(
            "root certificate file \"{}\" does not exist;",
            missing.display()
        )));
        let err = TlsConnector::with_home(&settings(SslMode::VerifyFull, None), None)
            .expect_err("no home");
        assert!(matches!(err, TlsError::NoHomeForRootCert));
        // Like libpq, require with a missing root file just does not verify.
        let connector = TlsConnector::with_home(&settings(SslMode::Require, Some(missing)), None)
            .expect("require");
        assert_eq!(connector.trust(), &Trust::None);
    }

    #[test]
    fn system_roots_require_verify_full() {
        assert_eq!(
            default_sslmode(Some(Path::new("system"))),
            SslMode::VerifyFull
        );
        assert_eq!(
            default_sslmode(Some(Path::new("/x/root.crt"))),
            SslMode::Prefer
        );
        assert_eq!(default_sslmode(None), SslMode::Prefer);
        for mode in [SslMode::Prefer, SslMode::Require, SslMode::VerifyCa] {
            let err = TlsConnector::with_home(&settings(mode, Some("system".into())), None)
                .expect_err("weak mode");
            assert_eq!(
                err.to_string(),
                format!(
                    "weak sslmode \"{mode}\" may not be used with sslrootcert=system (use \"verify-full\")"
                )
            );
        }
    }

    fn with_client(pki: &Pki, cert: &str, key: &str) -> TlsSettings {
        TlsSettings {
            mode: SslMode::VerifyFull,
            root_cert: Some(pki.path("ca.crt")),
            client_cert: Some(pki.path(cert)),
            client_key: Some(pki.path(key)),
        }
    }

    #[tokio::test]
    async fn client_certificate_is_presented() {
        let pki = Pki::new();
        let options = || ServerOptions {
            client_ca: Some(pki.path("ca.crt")),
            ..Default::default()
        };
        let (addr, server) = serve(&pki, "server", options()).await;
        connect(
            &pki,
            &with_client(&pki, "client.crt", "client.key"),
            addr,
            "localhost",
        )
        .await
        .expect("client certificate accepted");
        assert!(
            server
                .await
                .expect("join")
                .expect("server side")
                .client_cert
        );

        // The same key in SEC1 form works too.
        pki.openssl("ec -in client.key -out client.sec1.key");
        pki.chmod("client.sec1.key", 0o600);
        let (addr, server) = serve(&pki, "server", options()).await;
        connect(
            &pki,
            &with_client(&pki, "client.crt", "client.sec1.key"),
            addr,
            "localhost",
        )
        .await
        .expect("SEC1 key");
        assert!(
            server
                .await
                .expect("join")
                .expect("server side")
                .client_cert
        );

        let (addr, _server) = serve(&pki, "server", options()).await;
        let err = connect(&pki, &settings(SslMode::Require, None), addr, "localhost")
            .await
            .expect_err("server requires a certificate");
        assert!(matches!(err, TlsError::ClientCertRequired(_)), "{err:?}");
    }

    #[test]
    fn private_key_files_are_checked_like_libpq() {
        let pki = Pki::new();
        let key = pki.path("client.key");
        pki.chmod("client.key", 0o644);
        let err = TlsConnector::with_home(&with_client(&pki, "client.crt", "client.key"), None)
            .expect_err("world-readable key");
        assert_eq!(
            err.to_string(),
            format!(
                "private key file \"{}\" has group or world access; file must have permissions u=rw (0600) or less if owned by the current user, or permissions u=rw,g=r (0640) or less if owned by root",
                key.display()
            )
        );
        pki.chmod("client.key", 0o600);
        TlsConnector::with_home(&with_client(&pki, "client.crt", "client.key"), None)
            .expect("0600 key");

        let err = TlsConnector::with_home(&with_client(&pki, "client.crt", "server.key"), None)
            .expect_err("key of another certificate");
        assert_eq!(
            err.to_string(),
            format!(
                "certificate file \"{}\" does not match private key file \"{}\"",
                pki.path("client.crt").display(),
                pki.path("server.key").display()
            )
        );

        let err = TlsConnector::with_home(&with_client(&pki, "nope.crt", "client.key"), None)
            .expect_err("missing certificate");
        assert!(matches!(err, TlsError::ClientCertMissing(_)), "{err:?}");
        let err = TlsConnector::with_home(&with_client(&pki, "client.crt", "nope.key"), None)
            .expect_err("missing key");
        assert_eq!(
            err.to_string(),
            format!(
                "certificate present, but not private key file \"{}\"; set sslkey to the key file",
                pki.path("nope.key").display()
            )
        );
        let err = TlsConnector::with_home(&with_client(&pki, "client.crt", "ca.crt"), None);
        assert!(
            matches!(
                err,
                Err(TlsError::KeyPermissions(_) | TlsError::KeyRead { .. })
            ),
            "{err:?}"
        );
    }

    #[test]
    fn private_keys_in_pkcs1_and_sec1_form_are_read() {
        let pki = Pki::new();
        pki.openssl("genrsa -traditional -out rsa.key 2048");
        pki.openssl("ec -in client.key -out ec.key");
        pki.chmod("rsa.key", 0o600);
        pki.chmod("ec.key", 0o600);
        assert!(matches!(
            read_private_key(&pki.path("rsa.key")),
            Ok(PrivateKeyDer::Pkcs1(_))
        ));
        assert!(matches!(
            read_private_key(&pki.path("ec.key")),
            Ok(PrivateKeyDer::Sec1(_))
        ));
        assert!(matches!(
            read_private_key(&pki.path("client.key")),
            Ok(PrivateKeyDer::Pkcs8(_))
        ));
    }

    /// The digest of a certificate's DER, computed by openssl.
    fn sha(pki: &Pki, cert: &str, digest: &str) -> Vec<u8> {
        let der = format!("{cert}.der");
        pki.openssl(&format!("x509 -in {cert} -outform der -out {der}"));
        let out = Command::new("openssl")
            .args(["dgst", digest, "-binary", &der])
            .current_dir(pki.dir.path())
            .output()
            .expect("openssl dgst");
        assert!(out.status.success());
        out.stdout
    }

    #[test]
    fn channel_binding_hash_follows_the_signature_hash() {
        let pki = Pki::new();
        pki.leaf("sha384", "localhost", "server", "-sha384");
        pki.leaf("sha512", "localhost", "server", "-sha512");
        pki.leaf("sha1", "localhost", "server", "-sha1");
        for (cert, digest) in [
            ("server.crt", "-sha256"),
            ("sha384.crt", "-sha384"),
            ("sha512.crt", "-sha512"),
            ("sha1.crt", "-sha256"),
        ] {
            let hash = channel_binding_hash(&pki.der(cert)).expect("hash defined");
            assert_eq!(hash, sha(&pki, cert, digest), "{cert}");
        }

        pki.openssl(
            "req -config openssl.cnf -x509 -new -newkey rsa:2048 -nodes -keyout pss.key -out \
            pss.crt -subj /CN=pss -sha384 -sigopt rsa_padding_mode:pss",
        );
        assert_eq!(
            channel_binding_hash(&pki.der("pss.crt")),
            Some(sha(&pki, "pss.crt", "-sha384"))
        );

        pki.openssl(
            "req -config openssl.cnf -x509 -new -newkey ed25519 -nodes -keyout ed.key -out ed.crt \
            -subj /CN=ed",
        );
        assert_eq!(channel_binding_hash(&pki.der("ed.crt")), None);
        assert_eq!(channel_binding_hash(b"not a certificate"), None);
    }

    #[test]
    fn wildcards_match_one_label() {
        assert!(dns_name_matches("*.example.com", "db.example.com"));
        assert!(dns_name_matches("*.Example.COM", "DB.example.com"));
        assert!(!dns_name_matches("*.example.com", "example.com"));
        assert!(!dns_name_matches("*.example.com", "a.db.example.com"));
        assert!(!dns_name_matches("*.example.com", ".example.com"));
        assert!(!dns_name_matches("db*.example.com", "db1.example.com"));
        assert!(!dns_name_matches("*", "localhost"));
        assert!(dns_name_matches("db.example.com", "DB.EXAMPLE.COM"));
    }

    #[test]
    fn name_mismatch_messages_count_the_other_names() {
        let err = |presented: &[&str]| TlsError::NameMismatch {
            host: "h".to_owned(),
            presented: presented.iter().map(|s| s.to_string()).collect(),
        };
        assert_eq!(
            err(&["a", "b"]).to_string(),
            "server certificate for \"a\" (and 1 other name) does not match host name \"h\""
        );
        assert_eq!(
            err(&["a", "b", "c"]).to_string(),
            "server certificate for \"a\" (and 2 other names) does not match host name \"h\""
        );
        assert!(
            err(&[])
                .to_string()
                .starts_with("could not get server's host name")
        );
    }
}
