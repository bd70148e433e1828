//! The password file (`~/.pgpass`, `PGPASSFILE`, `passfile=`), matched as libpq matches it.
//!
//! Each line is `hostname:port:database:username:password`. A field that is exactly `*`
//! matches anything; `\:` and `\\` stand for a literal colon and backslash; lines starting
//! with `#` are comments; the first matching line wins. The caller passes the host key
//! libpq would use (`localhost` for the default Unix-socket directory, else the host name,
//! socket directory or `hostaddr` as given).
//!
//! Reading the file follows libpq too: a missing file is silently ignored, and a file that
//! is not a regular file or that grants any group or world permission is ignored with a
//! warning.

use std::path::Path;

/// The password for `host`, `port`, `dbname` and `user` in password-file `contents`, or
/// `None` when no line matches.
pub fn lookup(contents: &str, host: &str, port: u16, dbname: &str, user: &str) -> Option<String> {
    if dbname.is_empty() || user.is_empty() {
        return None;
    }
    let port = port.to_string();
    for line in contents.split('\n') {
        if line.starts_with('#') {
            continue;
        }
        let line = line.trim_end_matches(['\r', '\n']);
        if line.is_empty() {
            continue;
        }
        let rest = Some(line)
            .and_then(|t| match_field(t, host))
            .and_then(|t| match_field(t, &port))
            .and_then(|t| match_field(t, dbname))
            .and_then(|t| match_field(t, user));
        if let Some(password) = rest {
            return Some(unescape_password(password));
        }
    }
    None
}

/// Matches the leading field of `line` against `token`; on a match returns the text after
/// the field's terminating colon. A field that is exactly `*` matches any token.
fn match_field<'a>(line: &'a str, token: &str) -> Option<&'a str> {
    if let Some(rest) = line.strip_prefix("*:") {
        return Some(rest);
    }
    let mut chars = line.char_indices();
    let mut want = token.chars();
    loop {
        let (i, c) = chars.next()?;
        let (c, escaped) = if c == '\\' {
            match chars.next() {
                Some((_, next)) => (next, true),
                // A trailing backslash can match nothing.
                None => return None,
            }
        } else {
            (c, false)
        };
        if c == ':' && !escaped {
            // End of the field: it matches if the token is used up too.
            return match want.next() {
                None => line.get(i + 1..),
                Some(_) => None,
            };
        }
        if want.next() != Some(c) {
            return None;
        }
    }
}

/// The password field: `\x` stands for `x`, and an unescaped colon ends the field.
fn unescape_password(field: &str) -> String {
    let mut out = String::with_capacity(field.len());
    let mut chars = field.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            ':' => break,
            '\\' => match chars.next() {
                Some(next) => out.push(next),
                None => out.push('\\'),
            },
            c => out.push(c),
        }
    }
    out
}

/// Looks the password up in the file at `path`, as libpq does: a file that cannot be read
/// gives `None`; one that is not a regular file, or is group- or world-accessible, is
/// ignored with a warning.
pub fn lookup_file(path: &Path, host: &str, port: u16, dbname: &str, user: &str) -> Option<String> {
    let meta = std::fs::metadata(path).ok()?;
    if !meta.is_file() {
        tracing::warn!(
            "password file {:?} is not a plain file; ignoring it",
            path.display().to_string()
        );
        return None;
    }
    if insecure_permissions(&meta) {
        tracing::warn!(
            "password file {:?} has group or world access; permissions should be u=rw (0600) or less; ignoring it",
            path.display().to_string()
        );
        return None;
    }
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) => {
            tracing::debug!("could not read password file {}: {e}", path.display());
            return None;
        }
    };
    let Ok(contents) = String::from_utf8(bytes) else {
        tracing::warn!(
            "password file {:?} is not valid UTF-8; ignoring it",
            path.display().to_string()
        );
        return None;
    };
    lookup(&contents, host, port, dbname, user)
}

#[cfg(unix)]
fn insecure_permissions(meta: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::PermissionsExt;
    meta.permissions().mode() & 0o077 != 0
}

#[cfg(not(unix))]
fn insecure_permissions(_meta: &std::fs::Metadata) -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "\
# a comment line: *:*:*:*:never
db.example:5432:app:alice:first
db.example:5432:app:alice:second
db.example:*:*:bob:bob-any
*:5433:*:*:any-5433
localhost:5432:replication:walden:repl-pw
h\\:colon:5432:app:carol:esc-host
back\\\\slash:5432:app:carol:esc-backslash
db.example:5432:app:dave:pw\\:with\\:colons\\\\x:ignored-field
db.example:5432:app:erin:
db.example:5432:app:frank
/tmp:5432:app:gina:socket-pw
  db.example:5432:app:henry:leading-space-host
db.example:5432:app:ivan:crlf\r
db.example:5432:app:judy:trailing\\
";

    #[test]
    fn matching_table() {
        let cases: &[(&str, u16, &str, &str, Option<&str>)] = &[
            ("db.example", 5432, "app", "alice", Some("first")),
            ("db.example", 5432, "other", "bob", Some("bob-any")),
            ("db.example", 9999, "app", "bob", Some("bob-any")),
            ("DB.example", 5432, "app", "alice", None), // case-sensitive
            ("anything", 5433, "x", "y", Some("any-5433")),
            ("anything", 5434, "x", "y", None),
            ("localhost", 5432, "replication", "walden", Some("repl-pw")),
            ("localhost", 5432, "walden", "walden", None),
            ("h:colon", 5432, "app", "carol", Some("esc-host")),
            ("back\\slash", 5432, "app", "carol", Some("esc-backslash")),
            ("db.example", 5432, "app", "dave", Some("pw:with:colons\\x")),
            ("db.example", 5432, "app", "erin", Some("")),
            ("db.example", 5432, "app", "frank", None), // no password field
            ("/tmp", 5432, "app", "gina", Some("socket-pw")),
            ("db.example", 5432, "app", "henry", None), // whitespace is significant
            (
                "  db.example",
                5432,
                "app",
                "henry",
                Some("leading-space-host"),
            ),
            ("db.example", 5432, "app", "ivan", Some("crlf")),
            ("db.example", 5432, "app", "judy", Some("trailing\\")),
            ("db.example", 5432, "", "alice", None), // empty dbname never matches
            ("db.example", 5432, "app", "", None),   // empty user never matches
        ];
        for &(host, port, db, user, want) in cases {
            assert_eq!(
                lookup(FILE, host, port, db, user).as_deref(),
                want,
                "{host}:{port}:{db}:{user}"
            );
        }
    }

    #[test]
    fn star_is_a_wildcard_only_as_a_whole_field() {
        let f = "db*:5432:app:u:literal-star\n";
        assert_eq!(
            lookup(f, "db*", 5432, "app", "u").as_deref(),
            Some("literal-star")
        );
        assert_eq!(lookup(f, "dbx", 5432, "app", "u"), None);
        let f = "\\*:5432:app:u:escaped-star\n";
        assert_eq!(
            lookup(f, "*", 5432, "app", "u").as_deref(),
            Some("escaped-star")
        );
        assert_eq!(lookup(f, "x", 5432, "app", "u"), None);
    }

    #[test]
    fn prefix_of_a_field_does_not_match() {
        let f = "db:5432:app:user:pw\n";
        assert_eq!(lookup(f, "d", 5432, "app", "user"), None);
        assert_eq!(lookup(f, "dbx", 5432, "app", "user"), None);
        assert_eq!(lookup(f, "db", 543, "app", "user"), None);
        assert_eq!(lookup(f, "db", 5432, "app", "use"), None);
    }

    #[test]
    fn comment_only_at_column_zero() {
        let f = "#db:5432:app:u:commented\n #db:5432:app:u:not-a-comment\n";
        assert_eq!(lookup(f, "#db", 5432, "app", "u"), None);
        assert_eq!(
            lookup(f, " #db", 5432, "app", "u").as_deref(),
            Some("not-a-comment")
        );
    }

    #[cfg(unix)]
    #[test]
    fn file_permissions_and_type_as_libpq() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pgpass");
        std::fs::write(&path, "h:5432:d:u:secret\n").unwrap();

        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(
            lookup_file(&path, "h", 5432, "d", "u").as_deref(),
            Some("secret")
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o400)).unwrap();
        assert_eq!(
            lookup_file(&path, "h", 5432, "d", "u").as_deref(),
            Some("secret")
        );

        for mode in [0o640, 0o604, 0o610, 0o666] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            assert_eq!(
                lookup_file(&path, "h", 5432, "d", "u"),
                None,
                "mode {mode:o}"
            );
        }

        // A directory is not a plain file; a missing file is no password.
        assert_eq!(lookup_file(dir.path(), "h", 5432, "d", "u"), None);
        assert_eq!(
            lookup_file(&dir.path().join("absent"), "h", 5432, "d", "u"),
            None
        );
    }

    proptest::proptest! {
        #[test]
        fn lookup_never_panics(contents in ".*", host in ".*", db in ".*", user in ".*", port: u16) {
            let _ = lookup(&contents, &host, port, &db, &user);
        }

        #[test]
        fn escaped_fields_round_trip(
            host in "[^\n\r]{1,12}", db in "[^\n\r]{1,12}", user in "[^\n\r]{1,12}",
            pw in "[^\n\r]{0,12}", port: u16,
        ) {
            let esc = |s: &str| s.replace('\\', "\\\\").replace(':', "\\:");
            // A field of exactly `*` is a wildcard; escape it so it is literal.
            let field = |s: &str| if s == "*" { "\\*".to_string() } else { esc(s) };
            let line = format!("{}:{port}:{}:{}:{}\n", field(&host), field(&db), field(&user), esc(&pw));
            let contents = if line.starts_with('#') { format!("\\{line}") } else { line };
            proptest::prop_assert_eq!(lookup(&contents, &host, port, &db, &user), Some(pw));
        }
    }
}
