//! `walden`: the archive-side command. Parses arguments and calls the library.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use clap::{Parser, Subcommand};
use walden::backup::{BackupCompression, BackupOptions};
use walden::daemon::http::{HttpError, StoreStatus};
use walden::daemon::{config, status};
use walden::exit;
use walden::logging::{self, LogFormat};
use walden::pg::SlotName;
use walden::receive::{ReceiveOptions, StopAt};
use walden::store::{ClusterName, Compression, RetentionPolicy};
use walden::wal::Lsn;

#[derive(Parser)]
#[command(
    name = "walden",
    version,
    about = "Archive PostgreSQL WAL and base backups over the replication protocol"
)]
struct Cli {
    /// Log line format on standard error.
    #[arg(long, global = true, value_enum, default_value_t)]
    log_format: LogFormat,
    /// More log detail (-v debug, -vv trace). RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Connect to a server over the replication protocol and print who it is.
    Identify {
        /// libpq connection string or URI (passwords from PGPASSWORD or ~/.pgpass).
        #[arg(long, value_name = "CONNINFO")]
        source: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Stream WAL from a server into the store until stopped (SIGINT/SIGTERM).
    Receive(ReceiveArgs),
    /// Take a base backup of the whole cluster into the store.
    Backup(BackupArgs),
    /// Show what the store holds for a cluster.
    List(StoreArgs),
    /// Re-check everything the store holds for a cluster; exit 4 if anything is wrong.
    Verify(StoreArgs),
    /// Delete old backups, then the WAL only they needed; exit 5 if a backup is running.
    Prune(PruneArgs),
    /// Run the daemon: receive, back up and prune every configured cluster until SIGTERM;
    /// SIGHUP reloads the configuration.
    Run {
        /// The configuration file.
        #[arg(long, value_name = "FILE", default_value = config::DEFAULT_PATH)]
        config: PathBuf,
    },
    /// Show each cluster's receiver, slot, backups and store; exit 6 if one is unhealthy.
    Status(StatusArgs),
    /// Serve the store over HTTP(S) until SIGINT/SIGTERM: /healthz, /status, /metrics and the
    /// read-only store API that `walden-restore --from http(s)://HOST:PORT` restores from.
    Serve(ServeArgs),
    /// Validate the daemon's configuration file and print what it says; exit 2 if invalid.
    CheckConfig {
        /// The configuration file.
        #[arg(long, value_name = "FILE", default_value = config::DEFAULT_PATH)]
        config: PathBuf,
    },
}

/// The server and the store a command works between.
#[derive(clap::Args)]
struct ServerAndStore {
    /// libpq connection string or URI of the server (passwords from PGPASSWORD or ~/.pgpass).
    #[arg(long, value_name = "CONNINFO")]
    source: String,
    /// The store directory (created if missing).
    #[arg(long, value_name = "DIR")]
    store: PathBuf,
    /// Name of this cluster in the store.
    #[arg(long, value_name = "NAME", default_value = "main")]
    cluster: ClusterName,
}

#[derive(clap::Args)]
struct BackupArgs {
    #[command(flatten)]
    target: ServerAndStore,
    /// Label written into backup_label and backup.json.
    #[arg(long, value_name = "TEXT")]
    label: Option<String>,
    /// fast: an immediate checkpoint; spread: wait for the server's next paced one.
    #[arg(long, value_name = "MODE", default_value = "fast", value_parser = ["fast", "spread"])]
    checkpoint: String,
    /// none, zstd[:LEVEL] (by walden) or server-zstd[:LEVEL] (by the server, 15+).
    #[arg(long, value_name = "METHOD", default_value = "none")]
    compress: BackupCompression,
    /// Most bytes per second the server may send (e.g. 50M, 512k).
    #[arg(long, value_name = "RATE", value_parser = parse_rate)]
    max_rate: Option<u64>,
    /// How long to wait for `walden receive` to store the backup's WAL.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = humantime::parse_duration)]
    wait_for_wal: Duration,
    /// Carry the backup's WAL inside the backup (no receiver needed).
    #[arg(long)]
    include_wal: bool,
    /// Do not have the server verify data page checksums.
    #[arg(long)]
    no_verify: bool,
}

/// `10M`, `512k`, `1G` or plain bytes per second.
fn parse_rate(s: &str) -> Result<u64, String> {
    let (digits, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("invalid rate {s:?}: expected bytes per second like 50M or 512k"))?;
    let factor = match unit {
        "" => 1,
        "k" | "K" => 1 << 10,
        "M" => 1 << 20,
        "G" => 1 << 30,
        _ => return Err(format!("invalid rate {s:?}: the unit must be k, M or G")),
    };
    n.checked_mul(factor)
        .ok_or_else(|| format!("invalid rate {s:?}: too large"))
}

#[derive(clap::Args)]
struct StoreArgs {
    /// The store directory.
    #[arg(long, value_name = "DIR")]
    store: PathBuf,
    /// Name of the cluster in the store.
    #[arg(long, value_name = "NAME", default_value = "main")]
    cluster: ClusterName,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct StatusArgs {
    /// The daemon's configuration file (the default without --store); also asks each
    /// primary about its replication slot.
    #[arg(long, value_name = "FILE", conflicts_with = "store")]
    config: Option<PathBuf>,
    /// Read the store directly: status.json as the daemon wrote it, and the store.
    #[arg(long, value_name = "DIR")]
    store: Option<PathBuf>,
    /// Only this cluster.
    #[arg(long, value_name = "NAME")]
    cluster: Option<ClusterName>,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct PruneArgs {
    #[command(flatten)]
    target: StoreArgs,
    /// Keep the newest N complete backups.
    #[arg(long, value_name = "N")]
    keep_backups: Option<usize>,
    /// Keep every backup needed to restore to any point of the last DURATION (e.g. 14d, 36h).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    recovery_window: Option<Duration>,
    /// Only print what would be deleted.
    #[arg(long)]
    dry_run: bool,
}

#[derive(clap::Args)]
struct ServeArgs {
    /// The store directory.
    #[arg(long, value_name = "DIR")]
    store: PathBuf,
    /// Address and port to listen on.
    #[arg(long, value_name = "ADDR:PORT", default_value = "127.0.0.1:7480")]
    listen: std::net::SocketAddr,
    /// File holding the bearer token every request but /healthz must carry.
    #[arg(long, value_name = "FILE")]
    token_file: PathBuf,
    /// Serve HTTPS with this certificate chain (PEM); needs --tls-key.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
}

#[derive(clap::Args)]
struct ReceiveArgs {
    #[command(flatten)]
    target: ServerAndStore,
    /// Physical replication slot to stream from, so the server keeps WAL while walden is down.
    #[arg(long, value_name = "NAME")]
    slot: Option<SlotName>,
    /// Create the slot (reserving WAL at once) if it does not exist.
    #[arg(long, requires = "slot")]
    create_slot: bool,
    /// fsync every received batch and report it at once, so the server can wait for walden
    /// at commit (name walden in synchronous_standby_names).
    #[arg(long)]
    synchronous: bool,
    /// How often to send status updates to the server.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = humantime::parse_duration)]
    status_interval: Duration,
    /// Compress completed segments: none, zstd or zstd:LEVEL.
    #[arg(long, value_name = "METHOD", default_value = "none")]
    compress: Compression,
    /// Stop once all WAL before this position is stored.
    #[arg(long, value_name = "LSN", conflicts_with = "once")]
    until: Option<Lsn>,
    /// Stop once all WAL the server had when walden started is stored.
    #[arg(long)]
    once: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    logging::init(cli.log_format, cli.verbose);
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("walden: error: cannot start the async runtime: {e}");
            return ExitCode::from(exit::FAILURE);
        }
    };
    let code = runtime.block_on(async {
        match cli.command {
            Command::Identify { source, json } => identify(&source, json).await,
            Command::Receive(args) => receive(args).await,
            Command::Backup(args) => backup(args).await,
            Command::List(args) => list(&args),
            Command::Verify(args) => verify(&args),
            Command::Prune(args) => prune(&args),
            Command::Run { config } => run(&config).await,
            Command::Status(args) => status(args).await,
            Command::Serve(args) => serve(args).await,
            Command::CheckConfig { config } => check_config(&config),
        }
    });
    ExitCode::from(code)
}

async fn identify(source: &str, json: bool) -> u8 {
    match walden::identify::identify(source).await {
        Ok(identity) => {
            if json {
                println!("{}", identity.to_json());
            } else {
                print!("{identity}");
            }
            exit::OK
        }
        Err(e) => {
            eprintln!("walden: error: {e}");
            exit::for_pg_error(&e)
        }
    }
}

async fn receive(args: ReceiveArgs) -> u8 {
    let options = ReceiveOptions {
        source: args.target.source,
        store: args.target.store,
        cluster: args.target.cluster,
        slot: args.slot,
        create_slot: args.create_slot,
        synchronous: args.synchronous,
        status_interval: args.status_interval,
        compression: args.compress,
        stop: match (args.once, args.until) {
            (true, _) => StopAt::CurrentEnd,
            (false, Some(lsn)) => StopAt::Lsn(lsn),
            (false, None) => StopAt::Never,
        },
        max_backoff: Duration::from_secs(30),
        status: None,
    };
    let shutdown = match walden::signals::shutdown_on_signal() {
        Ok(rx) => rx,
        Err(e) => {
            eprintln!("walden: error: cannot install signal handlers: {e}");
            return exit::FAILURE;
        }
    };
    match walden::receive::run(&options, shutdown).await {
        Ok(()) => exit::OK,
        Err(e) => {
            eprintln!("walden: error: {e}");
            e.exit_code()
        }
    }
}

async fn serve(args: ServeArgs) -> u8 {
    let tls = match (args.tls_cert, args.tls_key) {
        (Some(cert), Some(key)) => Some(config::TlsFiles { cert, key }),
        _ => None,
    };
    if tls.is_none() && !args.listen.ip().is_loopback() {
        tracing::warn!(
            "listening on {} without TLS: the token and the backups cross the network in clear (use --tls-cert and --tls-key)",
            args.listen
        );
    }
    let http = config::HttpConfig {
        listen: args.listen,
        token_file: args.token_file,
        tls,
    };
    if !args.store.is_dir() {
        eprintln!(
            "walden: error: store {} is not a directory: check --store",
            args.store.display()
        );
        return exit::USAGE;
    }
    let shutdown = match walden::signals::shutdown_on_signal() {
        Ok(rx) => rx,
        Err(e) => {
            eprintln!("walden: error: cannot install signal handlers: {e}");
            return exit::FAILURE;
        }
    };
    let status = std::sync::Arc::new(StoreStatus::new(&args.store));
    match walden::daemon::http::serve(&http, args.store, status, shutdown).await {
        Ok(()) => exit::OK,
        Err(e) => {
            eprintln!("walden: error: {e}");
            match e {
                HttpError::Bind { .. } => exit::FAILURE,
                _ => exit::USAGE,
            }
        }
    }
}

fn list(args: &StoreArgs) -> u8 {
    match walden::inspect::list(&args.store, &args.cluster) {
        Ok(listing) => {
            if args.json {
                println!("{}", json(&listing));
            } else {
                print!("{}", listing.to_text());
            }
            exit::OK
        }
        Err(e) => store_error(&e),
    }
}

fn verify(args: &StoreArgs) -> u8 {
    match walden::inspect::verify(&args.store, &args.cluster) {
        Ok(report) => {
            if args.json {
                println!("{}", json(&report));
            } else {
                print!("{}", report.to_text());
            }
            if report.is_ok() {
                exit::OK
            } else {
                exit::FAILURE
            }
        }
        Err(e) => store_error(&e),
    }
}

async fn run(path: &std::path::Path) -> u8 {
    let signals = walden::signals::shutdown_on_signal()
        .and_then(|s| Ok((s, walden::signals::reload_on_hangup()?)));
    let (shutdown, reload) = match signals {
        Ok(s) => s,
        Err(e) => {
            eprintln!("walden: error: cannot install signal handlers: {e}");
            return exit::FAILURE;
        }
    };
    match walden::daemon::supervisor::run(path, shutdown, reload).await {
        Ok(()) => exit::OK,
        Err(e) => {
            eprintln!("walden: error: {e}");
            e.exit_code()
        }
    }
}

async fn status(args: StatusArgs) -> u8 {
    let now = SystemTime::now();
    let report = match (&args.store, &args.config) {
        (Some(store), _) => match status::from_store(store, args.cluster.as_ref(), now) {
            Ok(report) => report,
            Err(e) => {
                eprintln!("walden: error: {e}");
                return exit::FAILURE;
            }
        },
        (None, config) => {
            let path = config
                .clone()
                .unwrap_or_else(|| PathBuf::from(config::DEFAULT_PATH));
            let mut loaded = match config::load(&path) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("walden: error: {e}");
                    return exit::USAGE;
                }
            };
            if let Some(only) = &args.cluster {
                loaded.clusters.retain(|c| &c.name == only);
                if loaded.clusters.is_empty() {
                    eprintln!("walden: error: {} has no [cluster.{only}]", path.display());
                    return exit::USAGE;
                }
            }
            status::from_config(&loaded, now).await
        }
    };
    if args.json {
        println!("{}", json(&report));
    } else {
        print!("{}", report.to_text());
    }
    if report.healthy {
        exit::OK
    } else {
        exit::UNHEALTHY
    }
}

fn check_config(path: &std::path::Path) -> u8 {
    match config::load(path) {
        Ok(config) => {
            print!("{}", config.summary());
            exit::OK
        }
        Err(e) => {
            eprintln!("walden: error: {e}");
            exit::USAGE
        }
    }
}

fn prune(args: &PruneArgs) -> u8 {
    let policy = RetentionPolicy {
        keep_backups: args.keep_backups,
        recovery_window: args.recovery_window,
    };
    let store = &args.target;
    match walden::store::prune(
        &store.store,
        &store.cluster,
        &policy,
        args.dry_run,
        SystemTime::now(),
    ) {
        Ok(report) => {
            if store.json {
                println!("{}", json(&report));
            } else {
                print!("{}", report.to_text());
            }
            exit::OK
        }
        Err(e) => {
            eprintln!("walden: error: {e}");
            e.exit_code()
        }
    }
}

fn json(value: &impl serde::Serialize) -> String {
    serde_json::to_string_pretty(value).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
}

fn store_error(e: &walden::store::StoreError) -> u8 {
    eprintln!("walden: error: {e}");
    if e.is_config() {
        exit::USAGE
    } else {
        exit::FAILURE
    }
}

async fn backup(args: BackupArgs) -> u8 {
    let options = BackupOptions {
        source: args.target.source,
        store: args.target.store,
        cluster: args.target.cluster,
        label: args.label,
        fast_checkpoint: args.checkpoint == "fast",
        compression: args.compress,
        max_rate: args.max_rate,
        wait_for_wal: args.wait_for_wal,
        include_wal: args.include_wal,
        verify_checksums: !args.no_verify,
        progress_bar: std::io::IsTerminal::is_terminal(&std::io::stdout()),
    };
    let shutdown = match walden::signals::shutdown_on_signal() {
        Ok(rx) => rx,
        Err(e) => {
            eprintln!("walden: error: cannot install signal handlers: {e}");
            return exit::FAILURE;
        }
    };
    match walden::backup::take_backup(&options, shutdown).await {
        Ok(record) => {
            println!("{}", record.summary());
            exit::OK
        }
        Err(e) => {
            eprintln!("walden: error: {e}");
            e.exit_code()
        }
    }
}
