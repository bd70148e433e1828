//! The connection-security settings shared by connection strings and the TLS layer.

use std::fmt;
use std::str::FromStr;

/// libpq's `sslmode`: whether to use TLS and how much of the server certificate to check.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SslMode {
    /// Never use TLS.
    Disable,
    /// Plain first; TLS only if the server insists (we retry with TLS after a refusal).
    Allow,
    /// TLS if the server supports it, plain otherwise. libpq's default.
    #[default]
    Prefer,
    /// TLS or fail; the certificate is not checked (unless a root certificate is given,
    /// in which case libpq behaves as `verify-ca`).
    Require,
    /// TLS, and the certificate chain must lead to a trusted root.
    VerifyCa,
    /// As `verify-ca`, and the certificate must name the host we connected to.
    VerifyFull,
}

impl SslMode {
    /// Whether a certificate chain check is asked for.
    pub fn verifies(self) -> bool {
        matches!(self, SslMode::VerifyCa | SslMode::VerifyFull)
    }
}

impl FromStr for SslMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "disable" => SslMode::Disable,
            "allow" => SslMode::Allow,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => {
                return Err(format!(
                    "invalid sslmode value {other:?}: expected disable, allow, prefer, require, verify-ca or verify-full"
                ));
            }
        })
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SslMode::Disable => "disable",
            SslMode::Allow => "allow",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        })
    }
}

/// libpq's `channel_binding`: whether SCRAM must bind the authentication to the TLS channel.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ChannelBinding {
    Disable,
    #[default]
    Prefer,
    Require,
}

impl FromStr for ChannelBinding {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "disable" => ChannelBinding::Disable,
            "prefer" => ChannelBinding::Prefer,
            "require" => ChannelBinding::Require,
            other => {
                return Err(format!(
                    "invalid channel_binding value {other:?}: expected disable, prefer or require"
                ));
            }
        })
    }
}

impl fmt::Display for ChannelBinding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ChannelBinding::Disable => "disable",
            ChannelBinding::Prefer => "prefer",
            ChannelBinding::Require => "require",
        })
    }
}
