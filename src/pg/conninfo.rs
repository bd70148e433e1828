//! Connection strings as libpq takes them, resolved against the environment as libpq does.
//!
//! Two steps:
//! 1. [`ConnParams::parse`] reads a `key=value` string or a `postgresql://` URI into the
//!    keywords it sets. It is pure: no environment, no files.
//! 2. [`ConnConfig::resolve`] fills in what the string left out from `PG*` environment
//!    variables and libpq's defaults (through an [`Environment`], so tests are
//!    deterministic) and validates the result into [`ConnConfig`]: a list of [`Target`]s
//!    to try in order, the user, database, TLS settings and so on.
//!
//! Keywords walden does not implement fall in three groups: harmless ones are accepted and
//! ignored (e.g. `keepalives`, `client_encoding`); ones that only make sense at their
//! default accept that default and refuse the rest (e.g. `target_session_attrs=any`,
//! `sslnegotiation=postgres`); and ones that would change security if silently dropped
//! (e.g. `require_auth`, `sslcrl`, `requirepeer`, `service`) are refused whenever set. The
//! same rules apply to the corresponding environment variables.
//!
//! Passwords never appear in errors, `Debug` or `Display` output.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::modes::{ChannelBinding, SslMode};
use super::pgpass;

/// The default port, as libpq's `DEF_PGPORT`.
pub const DEFAULT_PORT: u16 = 5432;

/// Where a value came from, for error messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Origin(Option<&'static str>);

impl Origin {
    const STRING: Origin = Origin(None);
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(var) => write!(f, " (from environment variable {var})"),
            None => Ok(()),
        }
    }
}

/// Why a connection string or its environment could not be turned into a [`ConnConfig`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConnInfoError {
    #[error("missing \"=\" after {0} in connection info string")]
    MissingEquals(Word),
    #[error("unterminated quoted string in connection info string")]
    UnterminatedQuote,
    #[error("invalid connection option {0}")]
    InvalidOption(Word),
    #[error("invalid URI query parameter: {0}")]
    InvalidUriParameter(Word),
    #[error("missing key/value separator \"=\" in URI query parameter: {0}")]
    UriMissingEquals(Word),
    #[error("extra key/value separator \"=\" in URI query parameter: {0}")]
    UriExtraEquals(Word),
    #[error("end of string reached when looking for matching \"]\" in IPv6 host address in URI")]
    UriUnclosedBracket,
    #[error("IPv6 host address may not be empty in URI")]
    UriEmptyIpv6,
    #[error(
        "unexpected character {found:?} at position {position} in URI (expected \":\" or \"/\")"
    )]
    UriUnexpectedChar { found: char, position: usize },
    #[error("invalid percent-encoded token in the {part} of the URI{}", shown(.text))]
    UriBadPercent {
        part: &'static str,
        text: Option<String>,
    },
    #[error("forbidden value %00 in the {part} of the URI{}", shown(.text))]
    UriPercentNul {
        part: &'static str,
        text: Option<String>,
    },
    #[error("the {part} of the URI is not valid UTF-8 once percent-decoded")]
    UriNotUtf8 { part: &'static str },
    #[error("invalid {keyword} value: {value:?}{origin}: expected {expected}")]
    InvalidValue {
        keyword: &'static str,
        value: String,
        origin: Origin,
        expected: &'static str,
    },
    #[error("invalid port number: {value:?}{origin}: expected 1 to 65535")]
    InvalidPort { value: String, origin: Origin },
    #[error("invalid integer value {value:?} for connection option \"{keyword}\"{origin}")]
    InvalidInteger {
        keyword: &'static str,
        value: String,
        origin: Origin,
    },
    #[error(
        "could not parse network address {value:?}{origin}: hostaddr takes numeric IP addresses"
    )]
    InvalidHostaddr { value: String, origin: Origin },
    #[error("could not match {hosts} host names to {hostaddrs} hostaddr values")]
    HostCountMismatch { hosts: usize, hostaddrs: usize },
    #[error("could not match {ports} port numbers to {hosts} hosts")]
    PortCountMismatch { ports: usize, hosts: usize },
    #[error(
        "hostaddr {hostaddr:?} cannot be combined with the Unix-socket host {host:?}: give a host name or leave host empty"
    )]
    HostaddrWithSocket { host: String, hostaddr: String },
    #[error("{keyword}{} is not supported by walden: {reason}{origin}", shown_value(.value))]
    Unsupported {
        keyword: &'static str,
        /// `None` for secret values, which are never shown.
        value: Option<String>,
        origin: Origin,
        reason: &'static str,
    },
    #[error(
        "weak sslmode {sslmode:?} may not be used with sslrootcert=system (use \"verify-full\")"
    )]
    WeakSslModeWithSystemRoots { sslmode: String },
    #[error(
        "could not determine the local user name: give user= in the connection string or set PGUSER"
    )]
    NoUser,
}

fn shown(text: &Option<String>) -> String {
    match text {
        Some(t) => format!(": {t:?}"),
        None => String::new(),
    }
}

fn shown_value(value: &Option<String>) -> String {
    match value {
        Some(v) => format!("={v:?}"),
        None => String::new(),
    }
}

/// A word of the input quoted in an error, or a placeholder when it may be part of a
/// password (it followed an unquoted password value, or looked like a URI).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Word {
    Shown(String),
    /// Text that followed a secret value: quote values that contain spaces or `&`.
    AfterSecret,
    /// Text that looks like a URI but is not at the very start of the string.
    Uri,
}

impl fmt::Display for Word {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Word::Shown(w) => write!(f, "\"{w}\""),
            Word::AfterSecret => f.write_str(
                "(the text after a password value, not shown; quote values that contain spaces or percent-encode them in URIs)",
            ),
            Word::Uri => f.write_str(
                "(a URI, not shown; a URI must start the string with postgresql:// or postgres://)",
            ),
        }
    }
}

/// What walden does with a libpq keyword.
#[derive(Clone, Copy)]
enum Use {
    /// Resolved into [`ConnConfig`].
    Used,
    /// Accepted and ignored: it cannot weaken anything.
    Ignored,
    /// Only the listed values are accepted (and ignored); the other valid values are
    /// refused as unsupported, anything else is invalid.
    Only {
        ok: &'static [&'static str],
        refused: &'static [&'static str],
        expected: &'static str,
        reason: &'static str,
    },
    /// Refused whenever set to a non-empty value.
    Refused { reason: &'static str },
}

struct Keyword {
    name: &'static str,
    env: Option<&'static str>,
    usage: Use,
}

const fn kw(name: &'static str, env: Option<&'static str>, usage: Use) -> Keyword {
    Keyword { name, env, usage }
}

/// libpq's keywords (through PostgreSQL 18), with their environment variables.
const KEYWORDS: &[Keyword] = &[
    kw(
        "service",
        Some("PGSERVICE"),
        Use::Refused {
            reason: "connection service files are not read; spell the options out",
        },
    ),
    kw("user", Some("PGUSER"), Use::Used),
    kw("password", Some("PGPASSWORD"), Use::Used),
    kw("passfile", Some("PGPASSFILE"), Use::Used),
    kw("channel_binding", Some("PGCHANNELBINDING"), Use::Used),
    kw("connect_timeout", Some("PGCONNECT_TIMEOUT"), Use::Used),
    kw("dbname", Some("PGDATABASE"), Use::Used),
    kw("host", Some("PGHOST"), Use::Used),
    kw("hostaddr", Some("PGHOSTADDR"), Use::Used),
    kw("port", Some("PGPORT"), Use::Used),
    kw("client_encoding", Some("PGCLIENTENCODING"), Use::Ignored),
    kw("options", Some("PGOPTIONS"), Use::Used),
    kw("application_name", Some("PGAPPNAME"), Use::Used),
    kw("fallback_application_name", None, Use::Used),
    kw("keepalives", None, Use::Ignored),
    kw("keepalives_idle", None, Use::Ignored),
    kw("keepalives_interval", None, Use::Ignored),
    kw("keepalives_count", None, Use::Ignored),
    kw("tcp_user_timeout", None, Use::Ignored),
    kw("sslmode", Some("PGSSLMODE"), Use::Used),
    kw(
        "sslnegotiation",
        Some("PGSSLNEGOTIATION"),
        Use::Only {
            ok: &["postgres"],
            refused: &["direct"],
            expected: "postgres or direct",
            reason: "only the standard SSLRequest negotiation is implemented",
        },
    ),
    kw("sslcompression", Some("PGSSLCOMPRESSION"), Use::Ignored),
    kw("sslcert", Some("PGSSLCERT"), Use::Used),
    kw("sslkey", Some("PGSSLKEY"), Use::Used),
    kw(
        "sslcertmode",
        Some("PGSSLCERTMODE"),
        Use::Only {
            ok: &["allow"],
            refused: &["disable", "require"],
            expected: "disable, allow or require",
            reason: "the client certificate is sent whenever one is configured",
        },
    ),
    kw(
        "sslpassword",
        None,
        Use::Refused {
            reason: "encrypted client keys are not supported; decrypt the key file",
        },
    ),
    kw("sslkeylogfile", None, Use::Ignored),
    kw("sslrootcert", Some("PGSSLROOTCERT"), Use::Used),
    kw(
        "sslcrl",
        Some("PGSSLCRL"),
        Use::Refused {
            reason: "certificate revocation lists are not checked",
        },
    ),
    kw(
        "sslcrldir",
        Some("PGSSLCRLDIR"),
        Use::Refused {
            reason: "certificate revocation lists are not checked",
        },
    ),
    kw("sslsni", Some("PGSSLSNI"), Use::Ignored),
    kw(
        "requirepeer",
        Some("PGREQUIREPEER"),
        Use::Refused {
            reason: "the peer of a Unix socket is not checked",
        },
    ),
    kw(
        "require_auth",
        Some("PGREQUIREAUTH"),
        Use::Refused {
            reason: "restricting authentication methods is not implemented",
        },
    ),
    kw(
        "min_protocol_version",
        Some("PGMINPROTOCOLVERSION"),
        Use::Only {
            ok: &["3.0"],
            refused: &["3.2", "latest"],
            expected: "3.0, 3.2 or latest",
            reason: "walden speaks protocol 3.0",
        },
    ),
    kw(
        "max_protocol_version",
        Some("PGMAXPROTOCOLVERSION"),
        Use::Only {
            ok: &["3.0", "3.2", "latest"],
            refused: &[],
            expected: "3.0, 3.2 or latest",
            reason: "",
        },
    ),
    kw(
        "ssl_min_protocol_version",
        Some("PGSSLMINPROTOCOLVERSION"),
        Use::Only {
            ok: &["TLSv1", "TLSv1.1", "TLSv1.2"],
            refused: &["TLSv1.3"],
            expected: "TLSv1, TLSv1.1, TLSv1.2 or TLSv1.3",
            reason: "walden always allows TLS 1.2 and 1.3",
        },
    ),
    kw(
        "ssl_max_protocol_version",
        Some("PGSSLMAXPROTOCOLVERSION"),
        Use::Only {
            ok: &["TLSv1.2", "TLSv1.3"],
            refused: &["TLSv1", "TLSv1.1"],
            expected: "TLSv1, TLSv1.1, TLSv1.2 or TLSv1.3",
            reason: "walden never uses TLS older than 1.2",
        },
    ),
    kw(
        "gssencmode",
        Some("PGGSSENCMODE"),
        Use::Only {
            ok: &["disable", "prefer"],
            refused: &["require"],
            expected: "disable, prefer or require",
            reason: "GSSAPI encryption is not implemented",
        },
    ),
    kw("krbsrvname", Some("PGKRBSRVNAME"), Use::Ignored),
    kw("gsslib", Some("PGGSSLIB"), Use::Ignored),
    kw("gssdelegation", Some("PGGSSDELEGATION"), Use::Ignored),
    kw("replication", None, Use::Used),
    kw(
        "target_session_attrs",
        Some("PGTARGETSESSIONATTRS"),
        Use::Only {
            ok: &["any"],
            refused: &[
                "read-write",
                "read-only",
                "primary",
                "standby",
                "prefer-standby",
            ],
            expected: "any, read-write, read-only, primary, standby or prefer-standby",
            reason: "hosts are tried in order and the first that accepts is used",
        },
    ),
    kw(
        "load_balance_hosts",
        Some("PGLOADBALANCEHOSTS"),
        Use::Only {
            ok: &["disable"],
            refused: &["random"],
            expected: "disable or random",
            reason: "hosts are always tried in the order given",
        },
    ),
    kw(
        "oauth_issuer",
        None,
        Use::Refused {
            reason: "OAuth authentication is not implemented",
        },
    ),
    kw(
        "oauth_client_id",
        None,
        Use::Refused {
            reason: "OAuth authentication is not implemented",
        },
    ),
    kw(
        "oauth_client_secret",
        None,
        Use::Refused {
            reason: "OAuth authentication is not implemented",
        },
    ),
    kw(
        "oauth_scope",
        None,
        Use::Refused {
            reason: "OAuth authentication is not implemented",
        },
    ),
];

fn find_keyword(name: &str) -> Option<&'static Keyword> {
    KEYWORDS.iter().find(|k| k.name == name)
}

/// Keywords whose values are secrets: never shown anywhere.
fn is_secret(keyword: &str) -> bool {
    matches!(keyword, "password" | "sslpassword" | "oauth_client_secret")
}

/// C's `isspace` in the C locale, which libpq uses to split a connection string.
fn is_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\x0b' | '\x0c' | '\r')
}

/// The keywords a connection string sets, before any environment or default is applied.
///
/// Keywords are libpq's canonical names (the legacy `requiressl` and the URI parameter
/// `ssl=true` are stored as `sslmode`). A keyword given twice keeps its last value.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ConnParams {
    values: BTreeMap<&'static str, String>,
}

impl fmt::Debug for ConnParams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.values.iter().map(|(k, v)| {
                let v = if is_secret(k) {
                    "<redacted>"
                } else {
                    v.as_str()
                };
                (k, v)
            }))
            .finish()
    }
}

impl ConnParams {
    /// Parses a libpq connection string: a URI if it starts with `postgresql://` or
    /// `postgres://`, else whitespace-separated `keyword=value` pairs.
    pub fn parse(s: &str) -> Result<Self, ConnInfoError> {
        let mut params = ConnParams::default();
        if let Some(rest) = s
            .strip_prefix("postgresql://")
            .or_else(|| s.strip_prefix("postgres://"))
        {
            params.parse_uri(rest, s.len() - rest.len())?;
        } else {
            params.parse_keyword_values(s)?;
        }
        Ok(params)
    }

    /// The value set for `keyword`, if any.
    pub fn get(&self, keyword: &str) -> Option<&str> {
        self.values.get(keyword).map(String::as_str)
    }

    /// The keywords set, in keyword order, with their values (secrets included).
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, &str)> {
        self.values.iter().map(|(k, v)| (*k, v.as_str()))
    }

    /// Stores `value` for `name`, checking that the keyword exists and the value is one
    /// walden can honour. `after_secret` says whether `name` may be part of a password
    /// (so it must not be shown in an error).
    fn store(
        &mut self,
        name: &str,
        value: String,
        uri: bool,
        after_secret: bool,
    ) -> Result<(), ConnInfoError> {
        let (name, value) = match (name, value.as_str()) {
            // libpq's compatibility spellings.
            ("requiressl", v) => (
                "sslmode",
                if v.starts_with('1') {
                    "require"
                } else {
                    "prefer"
                }
                .to_string(),
            ),
            ("ssl", "true") if uri => ("sslmode", "require".to_string()),
            _ => (name, value),
        };
        let Some(keyword) = find_keyword(name) else {
            let word = if after_secret {
                Word::AfterSecret
            } else if name.contains("://") {
                Word::Uri
            } else {
                Word::Shown(name.to_string())
            };
            return Err(if uri {
                ConnInfoError::InvalidUriParameter(word)
            } else {
                ConnInfoError::InvalidOption(word)
            });
        };
        check_value(keyword, &value, Origin::STRING)?;
        self.values.insert(keyword.name, value);
        Ok(())
    }

    fn parse_keyword_values(&mut self, s: &str) -> Result<(), ConnInfoError> {
        let mut chars = s.chars().peekable();
        // Whether the previous value was an unquoted secret: a space in it would make the
        // rest of it look like the next keyword, which must then not be shown.
        let mut after_secret = false;
        loop {
            while chars.next_if(|&c| is_space(c)).is_some() {}
            if chars.peek().is_none() {
                return Ok(());
            }
            let mut name = String::new();
            while let Some(c) = chars.next_if(|&c| c != '=' && !is_space(c)) {
                name.push(c);
            }
            while chars.next_if(|&c| is_space(c)).is_some() {}
            if chars.next_if_eq(&'=').is_none() {
                let word = if after_secret {
                    Word::AfterSecret
                } else if name.contains("://") {
                    Word::Uri
                } else {
                    Word::Shown(name)
                };
                return Err(ConnInfoError::MissingEquals(word));
            }
            while chars.next_if(|&c| is_space(c)).is_some() {}
            let mut value = String::new();
            let quoted = chars.next_if_eq(&'\'').is_some();
            if quoted {
                loop {
                    match chars.next() {
                        None => return Err(ConnInfoError::UnterminatedQuote),
                        Some('\\') => {
                            if let Some(c) = chars.next() {
                                value.push(c);
                            }
                        }
                        Some('\'') => break,
                        Some(c) => value.push(c),
                    }
                }
            } else {
                while let Some(c) = chars.next() {
                    match c {
                        c if is_space(c) => break,
                        '\\' => {
                            if let Some(c) = chars.next() {
                                value.push(c);
                            }
                        }
                        c => value.push(c),
                    }
                }
            }
            let secret = is_secret(&name);
            self.store(&name, value, false, after_secret)?;
            after_secret = secret && !quoted;
        }
    }

    /// `rest` is the URI after its `postgresql://` designator, which is `prefix_len` long.
    fn parse_uri(&mut self, rest: &str, prefix_len: usize) -> Result<(), ConnInfoError> {
        let mut p = rest;
        // Credentials come before the first '@' that precedes any '/'.
        if let Some(at) = p
            .find(['@', '/'])
            .filter(|&i| p.as_bytes().get(i) == Some(&b'@'))
        {
            let userinfo = &p[..at];
            let (user, password) = match userinfo.split_once(':') {
                Some((u, pw)) => (u, Some(pw)),
                None => (userinfo, None),
            };
            if !user.is_empty() {
                let user = percent_decode(user, "user name", true)?;
                self.store("user", user, false, false)?;
            }
            if let Some(pw) = password.filter(|pw| !pw.is_empty()) {
                let pw = percent_decode(pw, "password", false)?;
                self.store("password", pw, false, false)?;
            }
            p = &p[at + 1..];
        }

        // netloc[:port][,netloc[:port]...], joined into host and port lists.
        let mut hosts = String::new();
        let mut ports = String::new();
        let terminator = loop {
            let host;
            if let Some(after) = p.strip_prefix('[') {
                let close = after.find(']').ok_or(ConnInfoError::UriUnclosedBracket)?;
                host = &after[..close];
                if host.is_empty() {
                    return Err(ConnInfoError::UriEmptyIpv6);
                }
                p = &after[close + 1..];
                if let Some(c) = p
                    .chars()
                    .next()
                    .filter(|c| !matches!(c, ':' | '/' | '?' | ','))
                {
                    let position = prefix_len + (rest.len() - p.len()) + 1;
                    return Err(ConnInfoError::UriUnexpectedChar { found: c, position });
                }
            } else {
                let end = p.find([':', '/', '?', ',']).unwrap_or(p.len());
                host = &p[..end];
                p = &p[end..];
            }
            hosts.push_str(host);
            let mut term = p.chars().next();
            if term == Some(':') {
                let port_text = &p[1..];
                let end = port_text.find(['/', '?', ',']).unwrap_or(port_text.len());
                ports.push_str(&port_text[..end]);
                p = &port_text[end..];
                term = p.chars().next();
            }
            if term != Some(',') {
                break term;
            }
            p = &p[1..];
            hosts.push(',');
            ports.push(',');
        };
        if !hosts.is_empty() {
            let hosts = percent_decode(&hosts, "host", true)?;
            self.store("host", hosts, false, false)?;
        }
        if !ports.is_empty() {
            let ports = percent_decode(&ports, "port", true)?;
            self.store("port", ports, false, false)?;
        }

        let mut query = None;
        match terminator {
            Some('/') => {
                let after = &p[1..];
                let (db, q) = match after.split_once('?') {
                    Some((db, q)) => (db, Some(q)),
                    None => (after, None),
                };
                if !db.is_empty() {
                    let db = percent_decode(db, "database name", true)?;
                    self.store("dbname", db, false, false)?;
                }
                query = q;
            }
            Some('?') => query = Some(&p[1..]),
            _ => {}
        }
        if let Some(query) = query {
            self.parse_uri_query(query)?;
        }
        Ok(())
    }

    fn parse_uri_query(&mut self, query: &str) -> Result<(), ConnInfoError> {
        let mut after_secret = false;
        let mut params = query.split('&').peekable();
        while let Some(param) = params.next() {
            // A trailing '&' ends the list without an empty parameter (as libpq).
            if param.is_empty() && params.peek().is_none() {
                break;
            }
            let shown = |text: &str| {
                if after_secret {
                    Word::AfterSecret
                } else {
                    Word::Shown(text.to_string())
                }
            };
            let Some((name, value)) = param.split_once('=') else {
                return Err(ConnInfoError::UriMissingEquals(shown(param)));
            };
            if value.contains('=') {
                return Err(ConnInfoError::UriExtraEquals(shown(name)));
            }
            let name = percent_decode(name, "query parameter name", !after_secret)?;
            let secret = is_secret(&name);
            let value = percent_decode(value, "query parameter value", !secret)?;
            self.store(&name, value, true, after_secret)?;
            after_secret = secret;
        }
        Ok(())
    }
}

/// Decodes `%xx` escapes. `show` says whether `text` may be quoted in an error.
fn percent_decode(text: &str, part: &'static str, show: bool) -> Result<String, ConnInfoError> {
    let shown = || show.then(|| text.to_string());
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b != b'%' {
            out.push(b);
            i += 1;
            continue;
        }
        let hex = |j: usize| bytes.get(j).and_then(|&d| (d as char).to_digit(16));
        let (Some(hi), Some(lo)) = (hex(i + 1), hex(i + 2)) else {
            return Err(ConnInfoError::UriBadPercent {
                part,
                text: shown(),
            });
        };
        let byte = (hi * 16 + lo) as u8;
        if byte == 0 {
            return Err(ConnInfoError::UriPercentNul {
                part,
                text: shown(),
            });
        }
        out.push(byte);
        i += 3;
    }
    String::from_utf8(out).map_err(|_| ConnInfoError::UriNotUtf8 { part })
}

/// Quotes `value` for a `keyword=value` connection string, only when it needs quoting.
pub fn quote(value: &str) -> String {
    if !value.is_empty() && !value.chars().any(|c| is_space(c) || c == '\'' || c == '\\') {
        return value.to_string();
    }
    let mut out = String::with_capacity(value.len() + 2);
    out.push('\'');
    for c in value.chars() {
        if c == '\'' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('\'');
    out
}

/// Checks a value that libpq would accept for `keyword` and that walden honours. Empty
/// values mean "not set" for every keyword checked here.
fn check_value(keyword: &Keyword, value: &str, origin: Origin) -> Result<(), ConnInfoError> {
    let invalid = |expected| ConnInfoError::InvalidValue {
        keyword: keyword.name,
        value: value.to_string(),
        origin,
        expected,
    };
    match keyword.usage {
        Use::Ignored => Ok(()),
        Use::Refused { reason } => {
            if value.is_empty() {
                return Ok(());
            }
            Err(ConnInfoError::Unsupported {
                keyword: keyword.name,
                value: (!is_secret(keyword.name)).then(|| value.to_string()),
                origin,
                reason,
            })
        }
        Use::Only {
            ok,
            refused,
            expected,
            reason,
        } => {
            // libpq compares TLS version names case-insensitively, the rest exactly.
            let same = |a: &&str| {
                if keyword.name.starts_with("ssl_") {
                    a.eq_ignore_ascii_case(value)
                } else {
                    *a == value
                }
            };
            if value.is_empty() || ok.iter().any(same) {
                Ok(())
            } else if refused.iter().any(same) {
                Err(ConnInfoError::Unsupported {
                    keyword: keyword.name,
                    value: Some(value.to_string()),
                    origin,
                    reason,
                })
            } else {
                Err(invalid(expected))
            }
        }
        Use::Used => match keyword.name {
            "sslmode" => parse_sslmode(value, origin).map(drop),
            "channel_binding" => parse_channel_binding(value, origin).map(drop),
            "connect_timeout" => parse_connect_timeout(value, origin).map(drop),
            "port" => {
                for port in value.split(',') {
                    parse_port(port, origin)?;
                }
                Ok(())
            }
            "hostaddr" => {
                for addr in value.split(',') {
                    parse_hostaddr(addr, origin)?;
                }
                Ok(())
            }
            "host" => {
                if let Some(h) = value.split(',').find(|h| h.starts_with('@')) {
                    return Err(ConnInfoError::Unsupported {
                        keyword: "host",
                        value: Some(h.to_string()),
                        origin,
                        reason: "abstract Unix sockets are not supported",
                    });
                }
                Ok(())
            }
            "replication" => parse_replication(value, origin).map(drop),
            _ => Ok(()),
        },
    }
}

fn parse_sslmode(value: &str, origin: Origin) -> Result<SslMode, ConnInfoError> {
    value.parse().map_err(|_| ConnInfoError::InvalidValue {
        keyword: "sslmode",
        value: value.to_string(),
        origin,
        expected: "disable, allow, prefer, require, verify-ca or verify-full",
    })
}

fn parse_channel_binding(value: &str, origin: Origin) -> Result<ChannelBinding, ConnInfoError> {
    value.parse().map_err(|_| ConnInfoError::InvalidValue {
        keyword: "channel_binding",
        value: value.to_string(),
        origin,
        expected: "disable, prefer or require",
    })
}

/// An integer as libpq's `pqParseIntParam` reads it: surrounding whitespace allowed, an
/// optional sign, decimal digits, within the range of a C `int`.
fn parse_c_int(value: &str) -> Option<i32> {
    let t = value.trim_matches(is_space);
    let digits = t.strip_prefix(['+', '-']).unwrap_or(t);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    t.strip_prefix('+').unwrap_or(t).parse().ok()
}

/// libpq: zero or less waits forever; a positive value under 2 seconds is raised to 2.
fn parse_connect_timeout(value: &str, origin: Origin) -> Result<Option<Duration>, ConnInfoError> {
    let secs = parse_c_int(value).ok_or_else(|| ConnInfoError::InvalidInteger {
        keyword: "connect_timeout",
        value: value.to_string(),
        origin,
    })?;
    Ok((secs > 0).then(|| Duration::from_secs(secs.max(2).unsigned_abs().into())))
}

/// One element of a port list; an empty element means the default port.
fn parse_port(value: &str, origin: Origin) -> Result<u16, ConnInfoError> {
    if value.is_empty() {
        return Ok(DEFAULT_PORT);
    }
    let n = parse_c_int(value).ok_or_else(|| ConnInfoError::InvalidInteger {
        keyword: "port",
        value: value.to_string(),
        origin,
    })?;
    u16::try_from(n)
        .ok()
        .filter(|&p| p != 0)
        .ok_or_else(|| ConnInfoError::InvalidPort {
            value: value.to_string(),
            origin,
        })
}

/// One element of a hostaddr list; an empty element means "use the host name".
fn parse_hostaddr(value: &str, origin: Origin) -> Result<Option<IpAddr>, ConnInfoError> {
    if value.is_empty() {
        return Ok(None);
    }
    value
        .parse()
        .map(Some)
        .map_err(|_| ConnInfoError::InvalidHostaddr {
            value: value.to_string(),
            origin,
        })
}

/// A replication connection, as the `replication` keyword asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Replication {
    /// `replication=true` (or on, yes, 1): a physical (WAL-streaming) connection. The
    /// startup packet says `replication=true`.
    Physical,
    /// `replication=database`: a logical replication connection to `dbname`.
    Logical,
}

impl Replication {
    /// The value for the startup packet's `replication` parameter.
    pub fn startup_value(self) -> &'static str {
        match self {
            Replication::Physical => "true",
            Replication::Logical => "database",
        }
    }
}

/// The server accepts the boolean spellings and `database`; false means a normal session.
fn parse_replication(value: &str, origin: Origin) -> Result<Option<Replication>, ConnInfoError> {
    match value.to_ascii_lowercase().as_str() {
        "" | "false" | "off" | "no" | "0" => Ok(None),
        "true" | "on" | "yes" | "1" => Ok(Some(Replication::Physical)),
        "database" => Ok(Some(Replication::Logical)),
        _ => Err(ConnInfoError::InvalidValue {
            keyword: "replication",
            value: value.to_string(),
            origin,
            expected: "true, false, on, off, yes, no, 1, 0 or database",
        }),
    }
}

/// What resolution needs to know about the process's surroundings.
pub trait Environment {
    /// An environment variable; a variable that is set but empty is `Some("")`.
    fn var(&self, name: &str) -> Option<String>;
    /// The user's home directory (`$HOME`, else the password database).
    fn home_dir(&self) -> Option<PathBuf>;
    /// The name of the effective OS user.
    fn os_user(&self) -> Option<String>;
    /// Whether `path` is a directory (following symbolic links).
    fn is_dir(&self, path: &Path) -> bool;
    /// Whether `path` is a regular file (following symbolic links).
    fn is_file(&self, path: &Path) -> bool;
}

/// The real process environment and file system.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemEnvironment;

impl SystemEnvironment {
    /// The `/etc/passwd` entry (name, home) of the effective user, from `/proc`.
    fn passwd_entry() -> Option<(String, PathBuf)> {
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let uid_line = status.lines().find_map(|l| l.strip_prefix("Uid:"))?;
        // Real, effective, saved, filesystem.
        let euid = uid_line.split_whitespace().nth(1)?;
        let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
        passwd.lines().find_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            match fields.as_slice() {
                [name, _, uid, _, _, home, ..] if *uid == euid => {
                    Some((name.to_string(), PathBuf::from(home)))
                }
                _ => None,
            }
        })
    }
}

impl Environment for SystemEnvironment {
    /// A variable that is not valid Unicode is read lossily.
    fn var(&self, name: &str) -> Option<String> {
        std::env::var_os(name).map(|v| v.to_string_lossy().into_owned())
    }

    fn home_dir(&self) -> Option<PathBuf> {
        match std::env::var_os("HOME") {
            Some(home) if !home.is_empty() => Some(PathBuf::from(home)),
            _ => Self::passwd_entry().map(|(_, home)| home),
        }
    }

    /// The effective user's name from `/etc/passwd`, else `$USER` (for directory-service
    /// users that `/etc/passwd` does not list).
    fn os_user(&self) -> Option<String> {
        Self::passwd_entry()
            .map(|(name, _)| name)
            .or_else(|| std::env::var("USER").ok().filter(|u| !u.is_empty()))
    }

    fn is_dir(&self, path: &Path) -> bool {
        path.is_dir()
    }

    fn is_file(&self, path: &Path) -> bool {
        path.is_file()
    }
}

/// Where to reach a server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Host {
    /// A host name or IP address as written (without URI brackets).
    Tcp(String),
    /// The directory holding the server's Unix socket.
    Unix(PathBuf),
}

/// One server to try.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// The host. When only `hostaddr` was given this is the address as written (libpq's
    /// `PQhost` does the same).
    pub host: Host,
    /// With `hostaddr`, connect over TCP to this address without a name lookup; `host` is
    /// then only the name to verify the certificate against and to look up in `.pgpass`.
    pub hostaddr: Option<IpAddr>,
    pub port: u16,
}

impl Target {
    /// The socket file for a Unix-socket target: `DIR/.s.PGSQL.PORT`.
    pub fn socket_path(&self) -> Option<PathBuf> {
        match (&self.host, self.hostaddr) {
            (Host::Unix(dir), None) => Some(dir.join(format!(".s.PGSQL.{}", self.port))),
            _ => None,
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.host {
            Host::Unix(dir) => write!(
                f,
                "{}",
                dir.join(format!(".s.PGSQL.{}", self.port)).display()
            ),
            Host::Tcp(name) => {
                if name.contains(':') {
                    write!(f, "[{name}]")?;
                } else {
                    f.write_str(name)?;
                }
                if let Some(addr) = self.hostaddr.filter(|a| a.to_string() != *name) {
                    write!(f, " ({addr})")?;
                }
                write!(f, ":{}", self.port)
            }
        }
    }
}

/// A fully resolved connection configuration: what libpq would use to connect.
#[derive(Clone, PartialEq, Eq)]
pub struct ConnConfig {
    /// Servers to try, in order (comma-separated `host`/`hostaddr`/`port` lists).
    pub targets: Vec<Target>,
    pub user: String,
    pub dbname: String,
    /// `password` or `PGPASSWORD`; an empty one counts as none (libpq).
    password: Option<String>,
    /// The password file to consult when no password is given: `passfile`, `PGPASSFILE`,
    /// else `~/.pgpass` (`None` only when there is no home directory).
    pub passfile: Option<PathBuf>,
    pub sslmode: SslMode,
    /// The root certificate: as given, or `~/.postgresql/root.crt` if that file exists.
    /// `system` is kept literally: it means the platform's trusted roots.
    pub sslrootcert: Option<PathBuf>,
    /// The client certificate: as given, or `~/.postgresql/postgresql.crt` if it exists.
    pub sslcert: Option<PathBuf>,
    /// The client key: as given, or `~/.postgresql/postgresql.key` if it exists.
    pub sslkey: Option<PathBuf>,
    pub channel_binding: ChannelBinding,
    pub application_name: Option<String>,
    pub fallback_application_name: Option<String>,
    /// `None` waits forever (libpq: zero or negative); positive values are at least 2 s.
    pub connect_timeout: Option<Duration>,
    /// Command-line options for the server (`-c name=value ...`).
    pub options: Option<String>,
    pub replication: Option<Replication>,
    /// The default socket directory at resolution time: a socket target in it is
    /// `localhost` to `.pgpass`.
    default_socket_dir: PathBuf,
}

impl fmt::Debug for ConnConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnConfig")
            .field("targets", &self.targets)
            .field("user", &self.user)
            .field("dbname", &self.dbname)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("passfile", &self.passfile)
            .field("sslmode", &self.sslmode)
            .field("sslrootcert", &self.sslrootcert)
            .field("sslcert", &self.sslcert)
            .field("sslkey", &self.sslkey)
            .field("channel_binding", &self.channel_binding)
            .field("application_name", &self.application_name)
            .field("fallback_application_name", &self.fallback_application_name)
            .field("connect_timeout", &self.connect_timeout)
            .field("options", &self.options)
            .field("replication", &self.replication)
            .finish_non_exhaustive()
    }
}

/// A redacted one-line summary, itself a valid connection string (without the password).
impl fmt::Display for ConnConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let join = |part: &dyn Fn(&Target) -> String| {
            self.targets.iter().map(part).collect::<Vec<_>>().join(",")
        };
        let hosts = join(&|t| match &t.host {
            Host::Tcp(h) => h.clone(),
            Host::Unix(d) => d.display().to_string(),
        });
        write!(f, "host={}", quote(&hosts))?;
        if self.targets.iter().any(|t| t.hostaddr.is_some()) {
            let addrs = join(&|t| t.hostaddr.map(|a| a.to_string()).unwrap_or_default());
            write!(f, " hostaddr={}", quote(&addrs))?;
        }
        write!(
            f,
            " port={} user={} dbname={} sslmode={}",
            join(&|t| t.port.to_string()),
            quote(&self.user),
            quote(&self.dbname),
            self.sslmode
        )?;
        if let Some(r) = self.replication {
            write!(f, " replication={}", r.startup_value())?;
        }
        Ok(())
    }
}

impl ConnConfig {
    /// Parses and resolves `s` against the real environment.
    pub fn parse(s: &str) -> Result<Self, ConnInfoError> {
        Self::parse_with(s, &SystemEnvironment)
    }

    /// Parses and resolves `s` against `env`.
    pub fn parse_with(s: &str, env: &dyn Environment) -> Result<Self, ConnInfoError> {
        Self::resolve(&ConnParams::parse(s)?, env)
    }

    /// Fills in what `params` leaves out from the environment and defaults, as libpq does:
    /// explicit keywords win over `PG*` variables, which win over defaults. A keyword set
    /// to the empty string counts as set (so its variable is not consulted) and then means
    /// the default.
    pub fn resolve(params: &ConnParams, env: &dyn Environment) -> Result<Self, ConnInfoError> {
        let mut values: BTreeMap<&'static str, (String, Origin)> = params
            .iter()
            .map(|(k, v)| (k, (v.to_string(), Origin::STRING)))
            .collect();
        for keyword in KEYWORDS {
            let Some(var) = keyword.env else { continue };
            if values.contains_key(keyword.name) {
                continue;
            }
            if let Some(value) = env.var(var) {
                let origin = Origin(Some(var));
                check_value(keyword, &value, origin)?;
                values.insert(keyword.name, (value, origin));
            }
        }
        // The deprecated PGREQUIRESSL, below PGSSLMODE.
        if !values.contains_key("sslmode")
            && env.var("PGREQUIRESSL").is_some_and(|v| v.starts_with('1'))
        {
            values.insert(
                "sslmode",
                ("require".to_string(), Origin(Some("PGREQUIRESSL"))),
            );
        }
        let get = |k: &str| values.get(k).map(|(v, o)| (v.as_str(), *o));
        let non_empty = |k: &str| get(k).map(|(v, _)| v).filter(|v| !v.is_empty());

        let home = env.home_dir();
        let home_file = |name: &str| {
            home.as_ref()
                .map(|h| h.join(".postgresql").join(name))
                .filter(|p| env.is_file(p))
        };

        let sslrootcert = non_empty("sslrootcert")
            .map(PathBuf::from)
            .or_else(|| home_file("root.crt"));
        let system_roots = non_empty("sslrootcert") == Some("system");
        let sslmode = match get("sslmode") {
            Some((v, origin)) => {
                let mode = parse_sslmode(v, origin)?;
                if system_roots && mode != SslMode::VerifyFull {
                    return Err(ConnInfoError::WeakSslModeWithSystemRoots {
                        sslmode: v.to_string(),
                    });
                }
                mode
            }
            None if system_roots => SslMode::VerifyFull,
            None => SslMode::default(),
        };
        let channel_binding = match get("channel_binding") {
            Some((v, origin)) => parse_channel_binding(v, origin)?,
            None => ChannelBinding::default(),
        };

        let user = match non_empty("user") {
            Some(u) => u.to_string(),
            None => env
                .os_user()
                .filter(|u| !u.is_empty())
                .ok_or(ConnInfoError::NoUser)?,
        };
        let dbname = non_empty("dbname").map_or_else(|| user.clone(), str::to_string);

        let default_socket_dir = if env.is_dir(Path::new("/var/run/postgresql")) {
            PathBuf::from("/var/run/postgresql")
        } else {
            PathBuf::from("/tmp")
        };
        let targets = resolve_targets(
            get("host"),
            get("hostaddr"),
            get("port"),
            &default_socket_dir,
        )?;

        let connect_timeout = match get("connect_timeout") {
            Some((v, origin)) => parse_connect_timeout(v, origin)?,
            None => None,
        };
        let replication = match get("replication") {
            Some((v, origin)) => parse_replication(v, origin)?,
            None => None,
        };
        let owned = |k: &str| non_empty(k).map(str::to_string);

        Ok(ConnConfig {
            targets,
            user,
            dbname,
            password: owned("password"),
            passfile: non_empty("passfile")
                .map(PathBuf::from)
                .or_else(|| home.as_ref().map(|h| h.join(".pgpass"))),
            sslmode,
            sslrootcert,
            sslcert: non_empty("sslcert")
                .map(PathBuf::from)
                .or_else(|| home_file("postgresql.crt")),
            sslkey: non_empty("sslkey")
                .map(PathBuf::from)
                .or_else(|| home_file("postgresql.key")),
            channel_binding,
            application_name: owned("application_name"),
            fallback_application_name: owned("fallback_application_name"),
            connect_timeout,
            options: owned("options"),
            replication,
            default_socket_dir,
        })
    }

    /// The password given with `password` or `PGPASSWORD`, if any.
    pub fn password(&self) -> Option<&str> {
        self.password.as_deref()
    }

    /// Sets or clears the explicit password.
    pub fn set_password(&mut self, password: Option<String>) {
        self.password = password.filter(|p| !p.is_empty());
    }

    /// The password to use for `target`: the explicit one, else the first matching line of
    /// the password file. Reads the file on each call.
    ///
    /// The file is matched as libpq does, with two details: a Unix socket in the default
    /// directory is `localhost`; and for a physical replication connection the database
    /// field is matched against `replication`, as pg_basebackup and pg_receivewal do.
    pub fn password_for(&self, target: &Target) -> Option<String> {
        if let Some(pw) = &self.password {
            return Some(pw.clone());
        }
        let passfile = self.passfile.as_ref()?;
        let host = match &target.host {
            Host::Unix(dir) if *dir == self.default_socket_dir => "localhost".to_string(),
            Host::Unix(dir) => dir.display().to_string(),
            Host::Tcp(name) => name.clone(),
        };
        let dbname = match self.replication {
            Some(Replication::Physical) => "replication",
            _ => &self.dbname,
        };
        pgpass::lookup_file(passfile, &host, target.port, dbname, &self.user)
    }

    /// Whether `sslrootcert=system`: verify against the platform's trusted roots.
    pub fn uses_system_roots(&self) -> bool {
        self.sslrootcert.as_deref() == Some(Path::new("system"))
    }
}

/// Splits the host, hostaddr and port lists into targets (libpq's `pqConnectOptions2`).
fn resolve_targets(
    host: Option<(&str, Origin)>,
    hostaddr: Option<(&str, Origin)>,
    port: Option<(&str, Origin)>,
    default_socket_dir: &Path,
) -> Result<Vec<Target>, ConnInfoError> {
    fn list(v: Option<(&str, Origin)>) -> Option<(&str, Origin)> {
        v.filter(|(s, _)| !s.is_empty())
    }
    let hosts: Vec<&str> = list(host)
        .map(|(s, _)| s.split(',').collect())
        .unwrap_or_default();
    let mut addrs: Vec<Option<IpAddr>> = Vec::new();
    let mut addr_texts: Vec<&str> = Vec::new();
    if let Some((s, origin)) = list(hostaddr) {
        for a in s.split(',') {
            addrs.push(parse_hostaddr(a, origin)?);
            addr_texts.push(a);
        }
    }
    let count = if !addrs.is_empty() {
        addrs.len()
    } else {
        hosts.len().max(1)
    };
    if !addrs.is_empty() && !hosts.is_empty() && hosts.len() != addrs.len() {
        return Err(ConnInfoError::HostCountMismatch {
            hosts: hosts.len(),
            hostaddrs: addrs.len(),
        });
    }
    let ports: Vec<u16> = match list(port) {
        Some((s, origin)) => {
            let ports = s
                .split(',')
                .map(|p| parse_port(p, origin))
                .collect::<Result<Vec<_>, _>>()?;
            match ports.as_slice() {
                [one] => vec![*one; count],
                all if all.len() == count => ports,
                all => {
                    return Err(ConnInfoError::PortCountMismatch {
                        ports: all.len(),
                        hosts: count,
                    });
                }
            }
        }
        None => vec![DEFAULT_PORT; count],
    };
    let mut targets = Vec::with_capacity(count);
    for (i, port) in ports.into_iter().enumerate() {
        let name = hosts.get(i).copied().unwrap_or("");
        let hostaddr = addrs.get(i).copied().flatten();
        let host = match (name, hostaddr) {
            ("", Some(_)) => Host::Tcp(addr_texts.get(i).copied().unwrap_or_default().to_string()),
            (name, Some(_)) if name.starts_with('/') => {
                return Err(ConnInfoError::HostaddrWithSocket {
                    host: name.to_string(),
                    hostaddr: addr_texts.get(i).copied().unwrap_or_default().to_string(),
                });
            }
            ("", None) => Host::Unix(default_socket_dir.to_path_buf()),
            (name, _) if name.starts_with('/') => Host::Unix(PathBuf::from(name)),
            (name, _) => Host::Tcp(name.to_string()),
        };
        targets.push(Target {
            host,
            hostaddr,
            port,
        });
    }
    Ok(targets)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{HashMap, HashSet};

    /// A deterministic environment: OS user `osuser`, home `/home/osuser`.
    #[derive(Default)]
    struct FakeEnv {
        vars: HashMap<String, String>,
        dirs: HashSet<PathBuf>,
        files: HashSet<PathBuf>,
        no_user: bool,
        no_home: bool,
    }

    impl FakeEnv {
        fn with_vars(vars: &[(&str, &str)]) -> Self {
            FakeEnv {
                vars: vars
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                ..FakeEnv::default()
            }
        }
    }

    impl Environment for FakeEnv {
        fn var(&self, name: &str) -> Option<String> {
            self.vars.get(name).cloned()
        }
        fn home_dir(&self) -> Option<PathBuf> {
            (!self.no_home).then(|| PathBuf::from("/home/osuser"))
        }
        fn os_user(&self) -> Option<String> {
            (!self.no_user).then(|| "osuser".to_string())
        }
        fn is_dir(&self, path: &Path) -> bool {
            self.dirs.contains(path)
        }
        fn is_file(&self, path: &Path) -> bool {
            self.files.contains(path)
        }
    }

    fn unix(dir: &str, port: u16) -> Target {
        Target {
            host: Host::Unix(PathBuf::from(dir)),
            hostaddr: None,
            port,
        }
    }

    fn tcp(host: &str, port: u16) -> Target {
        Target {
            host: Host::Tcp(host.to_string()),
            hostaddr: None,
            port,
        }
    }

    /// What an empty string resolves to in an empty [`FakeEnv`].
    fn defaults() -> ConnConfig {
        ConnConfig {
            targets: vec![unix("/tmp", 5432)],
            user: "osuser".into(),
            dbname: "osuser".into(),
            password: None,
            passfile: Some(PathBuf::from("/home/osuser/.pgpass")),
            sslmode: SslMode::Prefer,
            sslrootcert: None,
            sslcert: None,
            sslkey: None,
            channel_binding: ChannelBinding::Prefer,
            application_name: None,
            fallback_application_name: None,
            connect_timeout: None,
            options: None,
            replication: None,
            default_socket_dir: PathBuf::from("/tmp"),
        }
    }

    type Case = (
        &'static str,
        &'static [(&'static str, &'static str)],
        fn(&mut ConnConfig),
    );

    const CASES: &[Case] = &[
        // Defaults.
        ("", &[], |_| {}),
        ("   \t\n ", &[], |_| {}),
        // key=value basics, spaces around '=', quoting and escapes.
        ("host=db port=5433 user=walden dbname=app", &[], |c| {
            c.targets = vec![tcp("db", 5433)];
            c.user = "walden".into();
            c.dbname = "app".into();
        }),
        ("host = db   user\t=\twalden", &[], |c| {
            c.targets = vec![tcp("db", 5432)];
            c.user = "walden".into();
            c.dbname = "walden".into();
        }),
        (
            "user='o\\'brien' dbname='my db' options='-c search_path=x\\\\y'",
            &[],
            |c| {
                c.user = "o'brien".into();
                c.dbname = "my db".into();
                c.options = Some("-c search_path=x\\y".into());
            },
        ),
        ("user=o\\'brien dbname=a\\ b", &[], |c| {
            c.user = "o'brien".into();
            c.dbname = "a b".into();
        }),
        ("user=u dbname=''", &[("PGDATABASE", "envdb")], |c| {
            // An explicit empty value counts as set: the variable is not consulted.
            c.user = "u".into();
            c.dbname = "u".into();
        }),
        ("user='x'dbname=y", &[], |c| {
            c.user = "x".into();
            c.dbname = "y".into();
        }),
        ("dbname=a dbname=b", &[], |c| c.dbname = "b".into()),
        (
            "application_name=walden fallback_application_name=fb options='-c a=b'",
            &[],
            |c| {
                c.application_name = Some("walden".into());
                c.fallback_application_name = Some("fb".into());
                c.options = Some("-c a=b".into());
            },
        ),
        // Ignored keywords and defaults of the refused-unless-default ones.
        (
            "keepalives=1 keepalives_idle=5 client_encoding=UTF8 target_session_attrs=any \
             gssencmode=disable sslnegotiation=postgres load_balance_hosts=disable \
             sslcompression=1 sslsni=0 krbsrvname=pg require_auth='' sslcrl=''",
            &[],
            |_| {},
        ),
        // TLS settings.
        (
            "sslmode=verify-full sslrootcert=/etc/ca.pem sslcert=c.pem sslkey=k.pem channel_binding=require",
            &[],
            |c| {
                c.sslmode = SslMode::VerifyFull;
                c.sslrootcert = Some("/etc/ca.pem".into());
                c.sslcert = Some("c.pem".into());
                c.sslkey = Some("k.pem".into());
                c.channel_binding = ChannelBinding::Require;
            },
        ),
        ("sslrootcert=system", &[], |c| {
            c.sslmode = SslMode::VerifyFull;
            c.sslrootcert = Some("system".into());
        }),
        ("requiressl=1", &[], |c| c.sslmode = SslMode::Require),
        ("requiressl=0", &[], |c| c.sslmode = SslMode::Prefer),
        // Timeouts.
        ("connect_timeout=10", &[], |c| {
            c.connect_timeout = Some(Duration::from_secs(10))
        }),
        ("connect_timeout=1", &[], |c| {
            c.connect_timeout = Some(Duration::from_secs(2))
        }),
        ("connect_timeout=' 0 '", &[], |_| {}),
        ("connect_timeout=-5", &[], |_| {}),
        // Replication.
        ("replication=true", &[], |c| {
            c.replication = Some(Replication::Physical)
        }),
        ("replication=database dbname=app", &[], |c| {
            c.replication = Some(Replication::Logical);
            c.dbname = "app".into();
        }),
        ("replication=off", &[], |_| {}),
        // Hosts: sockets, multi-host, ports, hostaddr.
        ("host=/var/lib/pg port=6000", &[], |c| {
            c.targets = vec![unix("/var/lib/pg", 6000)]
        }),
        ("host=a,b,c port=5433", &[], |c| {
            c.targets = vec![tcp("a", 5433), tcp("b", 5433), tcp("c", 5433)];
        }),
        ("host=a,b port=5433,", &[], |c| {
            c.targets = vec![tcp("a", 5433), tcp("b", 5432)]
        }),
        ("host=a,,/s port=1,2,3", &[], |c| {
            c.targets = vec![tcp("a", 1), unix("/tmp", 2), unix("/s", 3)];
        }),
        ("hostaddr=127.0.0.1", &[], |c| {
            c.targets = vec![Target {
                host: Host::Tcp("127.0.0.1".into()),
                hostaddr: Some("127.0.0.1".parse().unwrap()),
                port: 5432,
            }];
        }),
        ("host=db.example,other hostaddr=10.0.0.1,", &[], |c| {
            c.targets = vec![
                Target {
                    host: Host::Tcp("db.example".into()),
                    hostaddr: Some("10.0.0.1".parse().unwrap()),
                    port: 5432,
                },
                tcp("other", 5432),
            ];
        }),
        ("port=' 5433 '", &[], |c| {
            c.targets = vec![unix("/tmp", 5433)]
        }),
        // URIs.
        ("postgresql://", &[], |_| {}),
        ("postgres://", &[], |_| {}),
        ("postgresql://db", &[], |c| {
            c.targets = vec![tcp("db", 5432)]
        }),
        (
            "postgresql://walden:s3cret@db.example:5433/app?sslmode=require&application_name=w",
            &[],
            |c| {
                c.targets = vec![tcp("db.example", 5433)];
                c.user = "walden".into();
                c.dbname = "app".into();
                c.password = Some("s3cret".into());
                c.sslmode = SslMode::Require;
                c.application_name = Some("w".into());
            },
        ),
        ("postgresql://us%40er:p%3Aw%40d@h/d%20b", &[], |c| {
            c.targets = vec![tcp("h", 5432)];
            c.user = "us@er".into();
            c.password = Some("p:w@d".into());
            c.dbname = "d b".into();
        }),
        (
            "postgresql://[::1]:5433,[fe80::1%25eth0],h2:7/db",
            &[],
            |c| {
                c.targets = vec![tcp("::1", 5433), tcp("fe80::1%eth0", 5432), tcp("h2", 7)];
                c.dbname = "db".into();
            },
        ),
        ("postgresql://%2Fvar%2Frun%2Fpostgresql/db", &[], |c| {
            c.targets = vec![unix("/var/run/postgresql", 5432)];
            c.dbname = "db".into();
        }),
        ("postgresql:///db?host=/sock&port=6543", &[], |c| {
            c.targets = vec![unix("/sock", 6543)];
            c.dbname = "db".into();
        }),
        ("postgresql://h1/db?host=h2&dbname=other&user=u", &[], |c| {
            c.targets = vec![tcp("h2", 5432)];
            c.dbname = "other".into();
            c.user = "u".into();
        }),
        ("postgresql://@/?", &[], |_| {}),
        ("postgresql://user@", &[], |c| {
            c.user = "user".into();
            c.dbname = "user".into();
        }),
        ("postgresql://:pw@h", &[], |c| {
            c.targets = vec![tcp("h", 5432)];
            c.password = Some("pw".into());
        }),
        ("postgresql://h?ssl=true&requiressl=0", &[], |c| {
            c.targets = vec![tcp("h", 5432)];
            c.sslmode = SslMode::Prefer;
        }),
        ("postgresql://h?ssl=true&", &[], |c| {
            c.targets = vec![tcp("h", 5432)];
            c.sslmode = SslMode::Require;
        }),
        ("postgresql://h:/", &[], |c| {
            c.targets = vec![tcp("h", 5432)]
        }),
        ("postgresql://a:1,b:2?replication=true", &[], |c| {
            c.targets = vec![tcp("a", 1), tcp("b", 2)];
            c.replication = Some(Replication::Physical);
        }),
        // Environment, and its precedence below the string.
        (
            "",
            &[
                ("PGHOST", "envhost"),
                ("PGPORT", "6000"),
                ("PGUSER", "envuser"),
                ("PGDATABASE", "envdb"),
                ("PGPASSWORD", "envpw"),
                ("PGPASSFILE", "/etc/pgpass"),
                ("PGSSLMODE", "require"),
                ("PGSSLROOTCERT", "/ca"),
                ("PGSSLCERT", "/cert"),
                ("PGSSLKEY", "/key"),
                ("PGCHANNELBINDING", "disable"),
                ("PGAPPNAME", "envapp"),
                ("PGCONNECT_TIMEOUT", "30"),
                ("PGOPTIONS", "-c x=y"),
            ],
            |c| {
                c.targets = vec![tcp("envhost", 6000)];
                c.user = "envuser".into();
                c.dbname = "envdb".into();
                c.password = Some("envpw".into());
                c.passfile = Some("/etc/pgpass".into());
                c.sslmode = SslMode::Require;
                c.sslrootcert = Some("/ca".into());
                c.sslcert = Some("/cert".into());
                c.sslkey = Some("/key".into());
                c.channel_binding = ChannelBinding::Disable;
                c.application_name = Some("envapp".into());
                c.connect_timeout = Some(Duration::from_secs(30));
                c.options = Some("-c x=y".into());
            },
        ),
        (
            "host=h port=1 user=u dbname=d sslmode=disable",
            &[
                ("PGHOST", "eh"),
                ("PGPORT", "2"),
                ("PGUSER", "eu"),
                ("PGDATABASE", "ed"),
                ("PGSSLMODE", "require"),
            ],
            |c| {
                c.targets = vec![tcp("h", 1)];
                c.user = "u".into();
                c.dbname = "d".into();
                c.sslmode = SslMode::Disable;
            },
        ),
        (
            "postgresql://h/",
            &[("PGDATABASE", "envdb"), ("PGUSER", "eu")],
            |c| {
                // An empty URI database or user is not set, so the environment applies.
                c.targets = vec![tcp("h", 5432)];
                c.user = "eu".into();
                c.dbname = "envdb".into();
            },
        ),
        ("", &[("PGHOST", "a,b"), ("PGPORT", "1,2")], |c| {
            c.targets = vec![tcp("a", 1), tcp("b", 2)]
        }),
        ("", &[("PGHOST", "")], |_| {}),
        ("", &[("PGREQUIRESSL", "1")], |c| {
            c.sslmode = SslMode::Require
        }),
        ("", &[("PGREQUIRESSL", "1"), ("PGSSLMODE", "allow")], |c| {
            c.sslmode = SslMode::Allow
        }),
        ("", &[("PGSSLROOTCERT", "system")], |c| {
            c.sslmode = SslMode::VerifyFull;
            c.sslrootcert = Some("system".into());
        }),
        ("password=''", &[("PGPASSWORD", "envpw")], |_| {}),
        ("passfile=''", &[("PGPASSFILE", "/x")], |_| {}),
        (
            "",
            &[
                ("PGTARGETSESSIONATTRS", "any"),
                ("PGCLIENTENCODING", "LATIN1"),
            ],
            |_| {},
        ),
    ];

    #[test]
    fn resolution_table() {
        for (input, vars, edit) in CASES {
            let env = FakeEnv::with_vars(vars);
            let got = ConnConfig::parse_with(input, &env)
                .unwrap_or_else(|e| panic!("{input:?} with {vars:?}: {e}"));
            let mut want = defaults();
            edit(&mut want);
            assert_eq!(got, want, "{input:?} with {vars:?}");
            assert_eq!(got.password(), want.password.as_deref(), "{input:?}");
        }
    }

    #[test]
    fn adjacent_quoted_values() {
        // After a closing quote the next keyword may start at once; "'s'" is not a name.
        let env = FakeEnv::default();
        let err = ConnConfig::parse_with("user='it''s'", &env).unwrap_err();
        assert_eq!(
            err.to_string(),
            "missing \"=\" after \"'s'\" in connection info string"
        );
    }

    #[test]
    fn default_socket_dir_and_home_files() {
        let mut env = FakeEnv::default();
        env.dirs.insert("/var/run/postgresql".into());
        for f in ["root.crt", "postgresql.crt", "postgresql.key"] {
            env.files
                .insert(PathBuf::from("/home/osuser/.postgresql").join(f));
        }
        let c = ConnConfig::parse_with("", &env).unwrap();
        assert_eq!(c.targets, vec![unix("/var/run/postgresql", 5432)]);
        assert_eq!(
            c.targets[0].socket_path(),
            Some("/var/run/postgresql/.s.PGSQL.5432".into())
        );
        assert_eq!(
            c.sslrootcert,
            Some("/home/osuser/.postgresql/root.crt".into())
        );
        assert_eq!(
            c.sslcert,
            Some("/home/osuser/.postgresql/postgresql.crt".into())
        );
        assert_eq!(
            c.sslkey,
            Some("/home/osuser/.postgresql/postgresql.key".into())
        );
        assert!(!c.uses_system_roots());

        // Explicit values win over the files in ~/.postgresql.
        let c = ConnConfig::parse_with("sslrootcert=system sslkey=/k", &env).unwrap();
        assert!(c.uses_system_roots());
        assert_eq!(c.sslkey, Some("/k".into()));

        // No home: no default files, no default password file.
        let env = FakeEnv {
            no_home: true,
            ..FakeEnv::default()
        };
        let c = ConnConfig::parse_with("", &env).unwrap();
        assert_eq!(c.passfile, None);
        assert_eq!(c.sslrootcert, None);
    }

    #[test]
    fn no_os_user() {
        let env = FakeEnv {
            no_user: true,
            ..FakeEnv::default()
        };
        assert_eq!(
            ConnConfig::parse_with("", &env).unwrap_err(),
            ConnInfoError::NoUser
        );
        let c = ConnConfig::parse_with("user=u", &env).unwrap();
        assert_eq!((c.user.as_str(), c.dbname.as_str()), ("u", "u"));
    }

    /// Input, environment variables, expected error text.
    type BadCase = (
        &'static str,
        &'static [(&'static str, &'static str)],
        &'static str,
    );

    const BAD: &[BadCase] = &[
        (
            "host",
            &[],
            "missing \"=\" after \"host\" in connection info string",
        ),
        (
            "host db",
            &[],
            "missing \"=\" after \"host\" in connection info string",
        ),
        (
            "user='abc",
            &[],
            "unterminated quoted string in connection info string",
        ),
        ("foo=bar", &[], "invalid connection option \"foo\""),
        ("=x", &[], "invalid connection option \"\""),
        ("Host=db", &[], "invalid connection option \"Host\""),
        (
            "sslmode=verify",
            &[],
            "invalid sslmode value: \"verify\": expected disable, allow, prefer, require, verify-ca or verify-full",
        ),
        (
            "sslmode=''",
            &[],
            "invalid sslmode value: \"\": expected disable, allow, prefer, require, verify-ca or verify-full",
        ),
        (
            "",
            &[("PGSSLMODE", "bogus")],
            "invalid sslmode value: \"bogus\" (from environment variable PGSSLMODE): expected disable, allow, prefer, require, verify-ca or verify-full",
        ),
        (
            "channel_binding=yes",
            &[],
            "invalid channel_binding value: \"yes\": expected disable, prefer or require",
        ),
        (
            "port=0",
            &[],
            "invalid port number: \"0\": expected 1 to 65535",
        ),
        (
            "port=65536",
            &[],
            "invalid port number: \"65536\": expected 1 to 65535",
        ),
        (
            "port=54x",
            &[],
            "invalid integer value \"54x\" for connection option \"port\"",
        ),
        (
            "port=5432,abc",
            &[],
            "invalid integer value \"abc\" for connection option \"port\"",
        ),
        (
            "",
            &[("PGPORT", "x")],
            "invalid integer value \"x\" for connection option \"port\" (from environment variable PGPORT)",
        ),
        (
            "connect_timeout=soon",
            &[],
            "invalid integer value \"soon\" for connection option \"connect_timeout\"",
        ),
        (
            "connect_timeout=''",
            &[],
            "invalid integer value \"\" for connection option \"connect_timeout\"",
        ),
        (
            "connect_timeout=99999999999",
            &[],
            "invalid integer value \"99999999999\" for connection option \"connect_timeout\"",
        ),
        (
            "hostaddr=db.example",
            &[],
            "could not parse network address \"db.example\": hostaddr takes numeric IP addresses",
        ),
        (
            "host=a,b hostaddr=1.1.1.1",
            &[],
            "could not match 2 host names to 1 hostaddr values",
        ),
        (
            "host=a,b,c port=1,2",
            &[],
            "could not match 2 port numbers to 3 hosts",
        ),
        (
            "host=a port=1,2",
            &[],
            "could not match 2 port numbers to 1 hosts",
        ),
        (
            "host=/tmp hostaddr=127.0.0.1",
            &[],
            "hostaddr \"127.0.0.1\" cannot be combined with the Unix-socket host \"/tmp\": give a host name or leave host empty",
        ),
        (
            "replication=maybe",
            &[],
            "invalid replication value: \"maybe\": expected true, false, on, off, yes, no, 1, 0 or database",
        ),
        (
            "sslrootcert=system sslmode=require",
            &[],
            "weak sslmode \"require\" may not be used with sslrootcert=system (use \"verify-full\")",
        ),
        (
            "sslrootcert=system",
            &[("PGSSLMODE", "verify-ca")],
            "weak sslmode \"verify-ca\" may not be used with sslrootcert=system (use \"verify-full\")",
        ),
        (
            "require_auth=scram-sha-256",
            &[],
            "require_auth=\"scram-sha-256\" is not supported by walden: restricting authentication methods is not implemented",
        ),
        (
            "",
            &[("PGREQUIREAUTH", "password")],
            "require_auth=\"password\" is not supported by walden: restricting authentication methods is not implemented (from environment variable PGREQUIREAUTH)",
        ),
        (
            "sslnegotiation=direct",
            &[],
            "sslnegotiation=\"direct\" is not supported by walden: only the standard SSLRequest negotiation is implemented",
        ),
        (
            "sslnegotiation=fast",
            &[],
            "invalid sslnegotiation value: \"fast\": expected postgres or direct",
        ),
        (
            "target_session_attrs=read-write",
            &[],
            "target_session_attrs=\"read-write\" is not supported by walden: hosts are tried in order and the first that accepts is used",
        ),
        (
            "sslcrl=/crl.pem",
            &[],
            "sslcrl=\"/crl.pem\" is not supported by walden: certificate revocation lists are not checked",
        ),
        (
            "requirepeer=postgres",
            &[],
            "requirepeer=\"postgres\" is not supported by walden: the peer of a Unix socket is not checked",
        ),
        (
            "",
            &[("PGSERVICE", "prod")],
            "service=\"prod\" is not supported by walden: connection service files are not read; spell the options out (from environment variable PGSERVICE)",
        ),
        (
            "sslpassword=hunter2",
            &[],
            "sslpassword is not supported by walden: encrypted client keys are not supported; decrypt the key file",
        ),
        (
            "gssencmode=require",
            &[],
            "gssencmode=\"require\" is not supported by walden: GSSAPI encryption is not implemented",
        ),
        (
            "host=@abstract",
            &[],
            "host=\"@abstract\" is not supported by walden: abstract Unix sockets are not supported",
        ),
        // URIs.
        (
            "postgresql://[::1",
            &[],
            "end of string reached when looking for matching \"]\" in IPv6 host address in URI",
        ),
        (
            "postgresql://[]/db",
            &[],
            "IPv6 host address may not be empty in URI",
        ),
        (
            "postgresql://[::1]x/db",
            &[],
            "unexpected character 'x' at position 19 in URI (expected \":\" or \"/\")",
        ),
        (
            "postgresql://h/db?sslmode",
            &[],
            "missing key/value separator \"=\" in URI query parameter: \"sslmode\"",
        ),
        (
            "postgresql://h/db?sslmode=require&&b=2",
            &[],
            "missing key/value separator \"=\" in URI query parameter: \"\"",
        ),
        (
            "postgresql://h/db?sslmode=a=b",
            &[],
            "extra key/value separator \"=\" in URI query parameter: \"sslmode\"",
        ),
        (
            "postgresql://h/db?foo=1",
            &[],
            "invalid URI query parameter: \"foo\"",
        ),
        (
            "postgresql://h/db?ssl=false",
            &[],
            "invalid URI query parameter: \"ssl\"",
        ),
        (
            "postgresql://h/d%zz",
            &[],
            "invalid percent-encoded token in the database name of the URI: \"d%zz\"",
        ),
        (
            "postgresql://h/d%2",
            &[],
            "invalid percent-encoded token in the database name of the URI: \"d%2\"",
        ),
        (
            "postgresql://h/d%00",
            &[],
            "forbidden value %00 in the database name of the URI: \"d%00\"",
        ),
        (
            "postgresql://h/d%ff",
            &[],
            "the database name of the URI is not valid UTF-8 once percent-decoded",
        ),
        (
            "postgresql://h:x/db",
            &[],
            "invalid integer value \"x\" for connection option \"port\"",
        ),
        (
            "postgresql://h:99999/db",
            &[],
            "invalid port number: \"99999\": expected 1 to 65535",
        ),
        (
            "postgresql://h/db?sslmode=bad",
            &[],
            "invalid sslmode value: \"bad\": expected disable, allow, prefer, require, verify-ca or verify-full",
        ),
        (
            "postgresql://h/db?service=x",
            &[],
            "service=\"x\" is not supported by walden: connection service files are not read; spell the options out",
        ),
        (
            " postgresql://u@h/db?sslmode=require",
            &[],
            "invalid connection option (a URI, not shown; a URI must start the string with postgresql:// or postgres://)",
        ),
        (
            "mysql://h/db",
            &[],
            "missing \"=\" after (a URI, not shown; a URI must start the string with postgresql:// or postgres://) in connection info string",
        ),
    ];

    #[test]
    fn error_table() {
        for (input, vars, want) in BAD {
            let env = FakeEnv::with_vars(vars);
            match ConnConfig::parse_with(input, &env) {
                Ok(c) => panic!("{input:?} with {vars:?} parsed: {c:?}"),
                Err(e) => assert_eq!(e.to_string(), *want, "{input:?} with {vars:?}"),
            }
        }
    }

    /// Passwords never appear in error messages, `Debug` or `Display`.
    #[test]
    fn passwords_are_never_shown() {
        let env = FakeEnv::default();
        let secret = "Zq9secret";
        let bad = [
            format!("password={secret} junk"),
            format!("password={secret} junk=1"),
            format!("password={secret}\tjunk"),
            format!("postgresql://u:{secret}%zz@h/db"),
            format!("postgresql://u:{secret}%00@h/db"),
            format!("postgresql://h/db?password={secret}%zz"),
            format!("postgresql://h/db?password={secret}&junk"),
            format!("postgresql://h/db?password={secret}&junk=1"),
            format!(" postgresql://u:{secret}@h/db"),
            format!("postgresql://u:{secret}@h/db?sslmode=x=y"),
            format!("sslpassword={secret}"),
            format!("oauth_client_secret={secret}"),
        ];
        for input in &bad {
            let err = ConnConfig::parse_with(input, &env).unwrap_err();
            assert!(!err.to_string().contains(secret), "{input:?}: {err}");
            assert!(!format!("{err:?}").contains(secret), "{input:?}: {err:?}");
        }
        for input in [
            format!("host=h password={secret} user=u"),
            format!("postgresql://u:{secret}@h/db?replication=true"),
        ] {
            let params = ConnParams::parse(&input).unwrap();
            assert_eq!(params.get("password"), Some(secret));
            assert!(!format!("{params:?}").contains(secret));
            let config = ConnConfig::parse_with(&input, &env).unwrap();
            assert_eq!(config.password(), Some(secret));
            assert!(!format!("{config:?}").contains(secret), "{config:?}");
            assert!(!config.to_string().contains(secret), "{config}");
        }
    }

    #[test]
    fn display_is_a_redacted_connection_string() {
        let env = FakeEnv::default();
        let c = ConnConfig::parse_with(
            "host=db,/sock port=5433,5434 hostaddr=10.0.0.1, user='o b' password=pw replication=1 sslmode=require",
            &env,
        )
        .unwrap();
        let shown = c.to_string();
        assert_eq!(
            shown,
            "host=db,/sock hostaddr=10.0.0.1, port=5433,5434 user='o b' dbname='o b' sslmode=require replication=true"
        );
        let again = ConnConfig::parse_with(&shown, &env).unwrap();
        assert_eq!(again.targets, c.targets);
        assert_eq!(again.password(), None);
        assert_eq!(c.targets[0].to_string(), "db (10.0.0.1):5433");
        assert_eq!(c.targets[1].to_string(), "/sock/.s.PGSQL.5434");
        assert_eq!(tcp("::1", 5432).to_string(), "[::1]:5432");
    }

    #[cfg(unix)]
    #[test]
    fn password_for_uses_pgpass_as_libpq() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let passfile = dir.path().join("pgpass");
        std::fs::write(
            &passfile,
            "localhost:5432:app:u:local-pw\n\
             /other:5432:app:u:socket-pw\n\
             db:5433:app:u:tcp-pw\n\
             db:5433:replication:u:repl-pw\n\
             10.0.0.1:5432:app:u:addr-pw\n",
        )
        .unwrap();
        std::fs::set_permissions(&passfile, std::fs::Permissions::from_mode(0o600)).unwrap();
        let mut env = FakeEnv::with_vars(&[("PGPASSFILE", passfile.to_str().unwrap())]);
        env.dirs.insert("/var/run/postgresql".into());

        let c = ConnConfig::parse_with(
            "user=u dbname=app host=,/var/run/postgresql,/other,db:5433",
            &env,
        );
        // A port inside host is not a thing in key=value form: "db:5433" is a host name.
        let c = c.unwrap();
        assert_eq!(c.password_for(&c.targets[0]).as_deref(), Some("local-pw"));
        assert_eq!(c.password_for(&c.targets[1]).as_deref(), Some("local-pw"));
        assert_eq!(c.password_for(&c.targets[2]).as_deref(), Some("socket-pw"));
        assert_eq!(c.password_for(&c.targets[3]), None);

        let mut c = ConnConfig::parse_with("user=u dbname=app host=db port=5433", &env).unwrap();
        assert_eq!(c.password_for(&c.targets[0]).as_deref(), Some("tcp-pw"));
        c.replication = Some(Replication::Physical);
        assert_eq!(c.password_for(&c.targets[0]).as_deref(), Some("repl-pw"));
        c.replication = Some(Replication::Logical);
        assert_eq!(c.password_for(&c.targets[0]).as_deref(), Some("tcp-pw"));

        let c = ConnConfig::parse_with("user=u dbname=app hostaddr=10.0.0.1", &env).unwrap();
        assert_eq!(c.password_for(&c.targets[0]).as_deref(), Some("addr-pw"));

        // An explicit password wins; an empty one does not count.
        let mut c =
            ConnConfig::parse_with("user=u dbname=app host=db port=5433 password=given", &env)
                .unwrap();
        assert_eq!(c.password_for(&c.targets[0]).as_deref(), Some("given"));
        c.set_password(Some(String::new()));
        assert_eq!(c.password_for(&c.targets[0]).as_deref(), Some("tcp-pw"));

        // A world-readable file is ignored.
        std::fs::set_permissions(&passfile, std::fs::Permissions::from_mode(0o644)).unwrap();
        let c = ConnConfig::parse_with("user=u dbname=app host=db port=5433", &env).unwrap();
        assert_eq!(c.password_for(&c.targets[0]), None);
    }

    #[test]
    fn keyword_table_is_consistent() {
        let mut names: Vec<_> = KEYWORDS.iter().map(|k| k.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), KEYWORDS.len(), "duplicate keyword");
        // Every keyword is accepted in both forms, with an empty value.
        let env = FakeEnv::default();
        for k in KEYWORDS {
            let kv = ConnConfig::parse_with(&format!("{}=''", k.name), &env);
            let uri = ConnConfig::parse_with(&format!("postgresql://h?{}=", k.name), &env);
            match k.name {
                // Empty values of these are invalid in libpq too.
                "sslmode" | "channel_binding" | "connect_timeout" => {
                    assert!(kv.is_err() && uri.is_err(), "{}", k.name)
                }
                _ => assert!(kv.is_ok() && uri.is_ok(), "{}: {kv:?} {uri:?}", k.name),
            }
        }
        assert!(ConnParams::parse("ssl_min_protocol_version=tlsv1.2").is_ok());
        assert!(ConnParams::parse("ssl_min_protocol_version=tlsv1.3").is_err());
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn system_environment_knows_the_user() {
        let env = SystemEnvironment;
        assert!(env.os_user().is_some_and(|u| !u.is_empty()));
        assert!(env.home_dir().is_some());
        assert!(env.is_dir(Path::new("/")));
        assert!(!env.is_file(Path::new("/")));
    }

    #[test]
    fn params_keep_canonical_keywords() {
        let p = ConnParams::parse("requiressl=1 host=a host=b").unwrap();
        assert_eq!(
            p.iter().collect::<Vec<_>>(),
            vec![("host", "b"), ("sslmode", "require")]
        );
        let p = ConnParams::parse("postgresql://h?ssl=true").unwrap();
        assert_eq!(p.get("sslmode"), Some("require"));
    }

    #[test]
    fn quoting() {
        assert_eq!(quote("plain"), "plain");
        assert_eq!(quote(""), "''");
        assert_eq!(quote("a b"), "'a b'");
        assert_eq!(quote("it's"), "'it\\'s'");
        assert_eq!(quote("back\\slash"), "'back\\\\slash'");
        assert_eq!(quote("a=b"), "a=b");
    }

    fn keyword_names() -> Vec<&'static str> {
        KEYWORDS
            .iter()
            .filter(|k| {
                matches!(k.usage, Use::Ignored)
                    || matches!(
                        k.name,
                        "user"
                            | "dbname"
                            | "password"
                            | "passfile"
                            | "options"
                            | "application_name"
                            | "fallback_application_name"
                            | "sslcert"
                            | "sslkey"
                            | "host"
                    )
            })
            .map(|k| k.name)
            .collect()
    }

    proptest::proptest! {
        /// Any map of free-text keywords, rendered with quoting, parses back to itself.
        #[test]
        fn rendered_maps_round_trip(
            entries in proptest::collection::btree_map(
                proptest::sample::select(keyword_names()),
                "[^@,]{0,16}",
                0..8,
            ),
            seps in proptest::collection::vec("[ \t\n]{1,3}", 8),
        ) {
            let rendered: Vec<String> = entries.iter().map(|(k, v)| format!("{k}={}", quote(v))).collect();
            let mut s = String::new();
            for (i, part) in rendered.iter().enumerate() {
                s.push_str(part);
                s.push_str(&seps[i % seps.len()]);
            }
            let parsed = ConnParams::parse(&s).unwrap();
            let want: Vec<(&str, &str)> = entries.iter().map(|(k, v)| (*k, v.as_str())).collect();
            proptest::prop_assert_eq!(parsed.iter().collect::<Vec<_>>(), want);
        }

        /// Percent-encoding every byte of the URI parts gives them back decoded.
        #[test]
        fn uri_parts_round_trip(user in "[^\u{0}]{1,12}", pw in "[^\u{0}]{1,12}", db in "[^\u{0}]{1,12}", host in "[a-z][a-z0-9.-]{0,10}", port in 1u16..) {
            let enc = |s: &str| s.bytes().map(|b| format!("%{b:02X}")).collect::<String>();
            let uri = format!("postgresql://{}:{}@{host}:{port}/{}", enc(&user), enc(&pw), enc(&db));
            let p = ConnParams::parse(&uri).unwrap();
            proptest::prop_assert_eq!(p.get("user"), Some(user.as_str()));
            proptest::prop_assert_eq!(p.get("password"), Some(pw.as_str()));
            proptest::prop_assert_eq!(p.get("dbname"), Some(db.as_str()));
            proptest::prop_assert_eq!(p.get("host"), Some(host.as_str()));
            let port_text = port.to_string();
            proptest::prop_assert_eq!(p.get("port"), Some(port_text.as_str()));
        }

        /// Arbitrary input never panics the parser or the resolver.
        #[test]
        fn arbitrary_input_never_panics(s in ".*") {
            let env = FakeEnv::default();
            let _ = ConnConfig::parse_with(&s, &env);
            let _ = ConnConfig::parse_with(&format!("postgresql://{s}"), &env);
        }

        #[test]
        fn uri_shaped_input_never_panics(s in "[a-z0-9:/@?&=%\\[\\],. ]{0,40}") {
            let env = FakeEnv::default();
            let _ = ConnConfig::parse_with(&format!("postgresql://{s}"), &env);
            let _ = ConnConfig::parse_with(&s, &env);
        }
    }
}
