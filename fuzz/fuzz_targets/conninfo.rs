//! Connection strings and `PG*` variables: `ConnParams::parse`, then `ConnConfig::resolve`
//! against a fake environment.
//!
//! Input: UTF-8 text; before the first NUL is the connection string, after it one
//! `NAME=value` environment variable per line (e.g. `PGPORT=x`).
//!
//! Invariants: every error has a message; the parsed keywords, written back as
//! `keyword='value'` pairs with `quote`, parse to the same keywords; a resolved config's
//! one-line summary (documented as a valid connection string) resolves again to the same
//! servers, user, database, sslmode and replication mode.
#![no_main]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use libfuzzer_sys::fuzz_target;
use walden::pg::{ConnConfig, ConnParams, Environment, quote};

struct FakeEnv {
    vars: BTreeMap<String, String>,
}

impl Environment for FakeEnv {
    fn var(&self, name: &str) -> Option<String> {
        self.vars.get(name).cloned()
    }
    fn home_dir(&self) -> Option<PathBuf> {
        Some(PathBuf::from("/home/fuzz"))
    }
    fn os_user(&self) -> Option<String> {
        Some("fuzz".to_string())
    }
    fn is_dir(&self, path: &Path) -> bool {
        path == Path::new("/var/run/postgresql")
    }
    fn is_file(&self, path: &Path) -> bool {
        path == Path::new("/home/fuzz/.postgresql/root.crt")
    }
}

fuzz_target!(|input: &[u8]| {
    let Ok(text) = std::str::from_utf8(input) else {
        return;
    };
    let (conninfo, vars) = text.split_once('\0').unwrap_or((text, ""));
    let env = FakeEnv {
        vars: vars
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    };

    let params = match ConnParams::parse(conninfo) {
        Ok(p) => p,
        Err(e) => {
            assert!(!e.to_string().is_empty());
            return;
        }
    };
    let _ = format!("{params:?}");
    let written: Vec<String> = params
        .iter()
        .map(|(k, v)| format!("{k}={}", quote(v)))
        .collect();
    let written = written.join(" ");
    let reparsed = ConnParams::parse(&written)
        .unwrap_or_else(|e| panic!("{written:?} (from {conninfo:?}) does not parse: {e}"));
    assert_eq!(
        reparsed, params,
        "{written:?} parses differently from {conninfo:?}"
    );

    let config = match ConnConfig::resolve(&params, &env) {
        Ok(c) => c,
        Err(e) => {
            assert!(!e.to_string().is_empty());
            return;
        }
    };
    let _ = format!("{config:?}");
    for target in &config.targets {
        let _ = (target.to_string(), target.socket_path());
    }
    let summary = config.to_string();
    let again = ConnConfig::parse_with(&summary, &env)
        .unwrap_or_else(|e| panic!("summary {summary:?} of {conninfo:?} does not resolve: {e}"));
    assert_eq!(again.targets, config.targets, "{summary:?} vs {conninfo:?}");
    assert_eq!(again.user, config.user, "{summary:?} vs {conninfo:?}");
    assert_eq!(again.dbname, config.dbname, "{summary:?} vs {conninfo:?}");
    assert_eq!(again.sslmode, config.sslmode, "{summary:?} vs {conninfo:?}");
    assert_eq!(
        again.replication, config.replication,
        "{summary:?} vs {conninfo:?}"
    );
});
