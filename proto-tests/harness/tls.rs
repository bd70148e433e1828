//! TLS material for the test servers and clients, made once per test process with the
//! `openssl` CLI: a CA, a server certificate for `DNS:localhost` only (connecting to
//! 127.0.0.1 with verify-full is a name mismatch), an unrelated second CA, and a client
//! certificate for CN=u_cert. RSA 2048, SHA-256. Keys are 0600 and owned by `postgres`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use super::server::{chown_postgres, process_dir};
use super::{U_CERT, run_ok};

/// Paths of the process-wide TLS files (all PEM).
#[derive(Debug)]
pub struct TlsFiles {
    /// The directory holding them.
    pub dir: PathBuf,
    /// CA that signed the server and client certificates (`ssl_ca_file` of the servers).
    pub ca_cert: PathBuf,
    /// Key of that CA.
    pub ca_key: PathBuf,
    /// Server certificate: CN=localhost, SAN `DNS:localhost` only.
    pub server_cert: PathBuf,
    /// Server key.
    pub server_key: PathBuf,
    /// A second CA that signed nothing here (for "untrusted CA" tests).
    pub other_ca_cert: PathBuf,
    /// Client certificate with CN=u_cert, signed by the CA.
    pub client_cert: PathBuf,
    /// Client key (PKCS#8), mode 0600.
    pub client_key: PathBuf,
}

/// The TLS files, generated on first use.
pub fn tls_files() -> &'static TlsFiles {
    static FILES: OnceLock<TlsFiles> = OnceLock::new();
    FILES.get_or_init(|| generate(&process_dir().join("tls")))
}

const CONFIG: &str = "\
[req]
distinguished_name = dn
prompt = no

[dn]
CN = placeholder

[ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash

[server]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid

[client]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
";

fn generate(dir: &Path) -> TlsFiles {
    std::fs::create_dir_all(dir).expect("create the TLS directory");
    let cnf = dir.join("openssl.cnf");
    std::fs::write(&cnf, CONFIG).expect("write openssl.cnf");
    let files = TlsFiles {
        dir: dir.to_path_buf(),
        ca_cert: dir.join("ca.crt"),
        ca_key: dir.join("ca.key"),
        server_cert: dir.join("server.crt"),
        server_key: dir.join("server.key"),
        other_ca_cert: dir.join("other-ca.crt"),
        client_cert: dir.join("client.crt"),
        client_key: dir.join("client.key"),
    };
    self_signed_ca(&cnf, "walden test CA", &files.ca_key, &files.ca_cert);
    self_signed_ca(
        &cnf,
        "walden other CA",
        &dir.join("other-ca.key"),
        &files.other_ca_cert,
    );
    signed_leaf(
        &cnf,
        &files,
        "localhost",
        "server",
        1001,
        &files.server_key,
        &files.server_cert,
    );
    signed_leaf(
        &cnf,
        &files,
        U_CERT,
        "client",
        1002,
        &files.client_key,
        &files.client_cert,
    );
    run_ok(Command::new("chmod").arg("-R").arg("go-rwx,u+rwX").arg(dir));
    run_ok(
        Command::new("chmod")
            .arg("0644")
            .args([&files.ca_cert, &files.server_cert, &files.other_ca_cert])
            .arg(&files.client_cert),
    );
    run_ok(Command::new("chmod").arg("0755").arg(dir));
    chown_postgres(dir);
    files
}

fn openssl() -> Command {
    Command::new("openssl")
}

fn self_signed_ca(cnf: &Path, cn: &str, key: &Path, cert: &Path) {
    run_ok(
        openssl()
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-sha256", "-days", "3650",
            ])
            .args(["-noenc", "-extensions", "ca", "-subj"])
            .arg(format!("/CN={cn}"))
            .arg("-config")
            .arg(cnf)
            .arg("-keyout")
            .arg(key)
            .arg("-out")
            .arg(cert),
    );
}

fn signed_leaf(
    cnf: &Path,
    ca: &TlsFiles,
    cn: &str,
    section: &str,
    serial: u32,
    key: &Path,
    cert: &Path,
) {
    let csr = cert.with_extension("csr");
    run_ok(
        openssl()
            .args(["req", "-new", "-newkey", "rsa:2048", "-noenc", "-subj"])
            .arg(format!("/CN={cn}"))
            .arg("-config")
            .arg(cnf)
            .arg("-keyout")
            .arg(key)
            .arg("-out")
            .arg(&csr),
    );
    run_ok(
        openssl()
            .args(["x509", "-req", "-sha256", "-days", "3650", "-set_serial"])
            .arg(serial.to_string())
            .arg("-in")
            .arg(&csr)
            .arg("-CA")
            .arg(&ca.ca_cert)
            .arg("-CAkey")
            .arg(&ca.ca_key)
            .arg("-extfile")
            .arg(cnf)
            .args(["-extensions", section])
            .arg("-out")
            .arg(cert),
    );
}
