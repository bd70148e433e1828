//! `walden-restore`: the database-side command (restore, wal-fetch). Parses arguments and
//! calls the library.

// The field documentation is clap's `--help` text, where `<cluster>` is a placeholder, not
// HTML.
#![allow(rustdoc::invalid_html_tags)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use walden::exit;
use walden::logging::{self, LogFormat};
use walden::restore::extract::TablespaceMapping;
use walden::restore::plan::{
    BackupChoice, PlanRequest, RecoveryTarget, RestorePointName, TargetAction, TargetTimeline,
    TargetXid,
};
use walden::restore::wal_fetch;
use walden::restore::{RestoreOptions, Source, restore};
use walden::store::ClusterName;
use walden::wal::{Lsn, UtcTime};

#[derive(Parser)]
#[command(
    name = "walden-restore",
    version,
    about = "Restore a PostgreSQL data directory from a walden store"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Rebuild a data directory from a backup and configure recovery to a target: plan
    /// first (backup, WAL, timelines; refused with the reason when the store cannot reach the
    /// target), then extract, then write the recovery settings.
    Restore(Box<RestoreArgs>),
    /// PostgreSQL's restore_command: copy WAL file FILE from the store to DEST. Exit 0 when
    /// delivered, 1 when the store does not have it, 255 on a fault that must stop recovery.
    WalFetch(WalFetchArgs),
    /// Internal: fill the prefetch spool after FILE (started by wal-fetch --prefetch).
    #[command(hide = true)]
    WalPrefetch(WalPrefetchArgs),
}

#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("target").multiple(false)))]
struct RestoreArgs {
    #[command(flatten)]
    from: FromArgs,
    /// Name of the cluster in the store.
    #[arg(long, value_name = "NAME", default_value = "main")]
    cluster: ClusterName,
    /// The data directory to create (absent or empty; see --force).
    #[arg(long, value_name = "DIR")]
    pgdata: PathBuf,
    /// The backup to restore: latest (the newest that can reach the target) or an id.
    #[arg(long, value_name = "latest|ID", default_value = "latest")]
    backup: BackupChoice,
    /// Stop at the first commit after this time (`2026-11-22 19:30:00[.ffffff][+01]`; UTC
    /// when no offset is given).
    #[arg(long, value_name = "TS", group = "target")]
    target_time: Option<UtcTime>,
    /// Stop at this WAL position.
    #[arg(long, value_name = "LSN", group = "target")]
    target_lsn: Option<Lsn>,
    /// Stop at the commit of this transaction.
    #[arg(long, value_name = "XID", group = "target")]
    target_xid: Option<TargetXid>,
    /// Stop at this restore point (pg_create_restore_point).
    #[arg(long, value_name = "NAME", group = "target")]
    target_name: Option<RestorePointName>,
    /// Stop as soon as the backup is consistent.
    #[arg(long, group = "target")]
    target_immediate: bool,
    /// Recover everything the store holds (the default).
    #[arg(long, group = "target")]
    target_latest: bool,
    /// What the server does at the target: pause (PostgreSQL's default), promote, shutdown.
    #[arg(long, value_name = "ACTION")]
    target_action: Option<TargetAction>,
    /// Stop just before the target instead of just after it (time, LSN and xid targets).
    #[arg(long)]
    target_exclusive: bool,
    /// The timeline to recover along: latest, current (the backup's) or a number.
    #[arg(long, value_name = "latest|current|N", default_value = "latest")]
    target_timeline: TargetTimeline,
    /// Start as a standby (standby.signal) that keeps fetching WAL (and streams with
    /// --primary-conninfo).
    #[arg(long)]
    standby: bool,
    /// primary_conninfo for --standby.
    #[arg(long, value_name = "CONNINFO", requires = "standby")]
    primary_conninfo: Option<String>,
    /// primary_slot_name for --standby.
    #[arg(long, value_name = "SLOT", requires = "standby")]
    primary_slot_name: Option<String>,
    /// Put a tablespace (by oid or name) into another directory; repeatable.
    #[arg(long, value_name = "OID_OR_NAME=DIR")]
    tablespace_map: Vec<TablespaceMapping>,
    /// The major version of the server that will run it (default: the backup's).
    #[arg(long, value_name = "N")]
    pg_version: Option<u32>,
    /// When run as root: who owns the files (default: the owner of PGDATA, or of its parent).
    #[arg(long, value_name = "USER[:GROUP]")]
    owner: Option<String>,
    /// restore_command prefetches this many segments ahead (wal-fetch --prefetch).
    #[arg(long, value_name = "N", default_value_t = 0)]
    prefetch: u32,
    /// The prefetch spool (default: .<PGDATA name>.walden-spool beside PGDATA).
    #[arg(long, value_name = "DIR", requires = "prefetch")]
    spool: Option<PathBuf>,
    /// Print the plan and stop.
    #[arg(long)]
    dry_run: bool,
    /// Empty a non-empty PGDATA first.
    #[arg(long)]
    force: bool,
    /// Print the plan as JSON (with --dry-run: only that).
    #[arg(long)]
    json: bool,
    /// Log format on standard error.
    #[arg(long, value_enum, default_value = "human")]
    log_format: LogFormat,
}

/// Where the store is: a directory, or a walden server's URL with its token.
#[derive(clap::Args, Clone)]
struct FromArgs {
    /// The store: a directory, or http(s)://HOST:PORT of `walden serve` / `walden run`.
    #[arg(long, value_name = "STORE|URL")]
    from: String,
    /// With a URL: the file holding the server's bearer token (default: $WALDEN_TOKEN).
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// With an https URL: CA certificates (PEM) to verify the server with (default: the
    /// system's).
    #[arg(long, value_name = "FILE", env = "WALDEN_CA_FILE")]
    ca_file: Option<PathBuf>,
}

impl FromArgs {
    fn source(&self) -> Result<Source, walden::store::StoreError> {
        Source::new(&self.from, self.token_file.clone(), self.ca_file.clone())
    }
}

#[derive(clap::Args)]
struct WalFetchArgs {
    #[command(flatten)]
    from: FromArgs,
    /// Name of the cluster in the store.
    #[arg(long, value_name = "NAME", default_value = "main")]
    cluster: ClusterName,
    /// Copy the next N segments into a spool directory in the background.
    #[arg(long, value_name = "N", default_value_t = 0)]
    prefetch: u32,
    /// The spool directory (default: $TMPDIR/walden-spool-<cluster>-<uid>-<hash>).
    #[arg(long, value_name = "DIR")]
    spool: Option<PathBuf>,
    /// The file PostgreSQL asks for (%f).
    file: String,
    /// Where to put it (%p).
    dest: PathBuf,
}

#[derive(clap::Args)]
struct WalPrefetchArgs {
    #[command(flatten)]
    from: FromArgs,
    #[arg(long)]
    cluster: ClusterName,
    #[arg(long)]
    spool: PathBuf,
    #[arg(long)]
    count: u32,
    file: String,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(&e),
    };
    match cli.command {
        Command::Restore(args) => ExitCode::from(run_restore(*args)),
        Command::WalFetch(args) => ExitCode::from(wal_fetch(&args)),
        Command::WalPrefetch(args) => {
            // Nobody reads this process's output or exit code: a failure only means the next
            // calls fetch from the store themselves.
            let _ = wal_prefetch(&args);
            ExitCode::SUCCESS
        }
    }
}

/// Prints clap's message. A bad `wal-fetch` command line exits 255 like any other fault: it
/// is the server's restore_command, and clap's usual 2 would tell the server "not found",
/// ending recovery early instead of stopping it.
fn usage_error(e: &clap::Error) -> ExitCode {
    let _ = e.print();
    if !e.use_stderr() {
        // --help, --version.
        return ExitCode::SUCCESS;
    }
    if std::env::args_os().nth(1).is_some_and(|a| a == "wal-fetch") {
        ExitCode::from(exit::FETCH_FAULT)
    } else {
        ExitCode::from(exit::USAGE)
    }
}

fn run_restore(args: RestoreArgs) -> u8 {
    logging::init(args.log_format, 0);
    let target = if let Some(t) = args.target_time {
        RecoveryTarget::Time(t)
    } else if let Some(l) = args.target_lsn {
        RecoveryTarget::Lsn(l)
    } else if let Some(x) = args.target_xid {
        RecoveryTarget::Xid(x)
    } else if let Some(n) = args.target_name {
        RecoveryTarget::Name(n)
    } else if args.target_immediate {
        RecoveryTarget::Immediate
    } else {
        RecoveryTarget::Latest
    };
    let source = match args.from.source() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("walden-restore: error: {e}");
            return exit::USAGE;
        }
    };
    let options = RestoreOptions {
        source,
        cluster: args.cluster,
        pgdata: args.pgdata,
        request: PlanRequest {
            target,
            inclusive: !args.target_exclusive,
            timeline: args.target_timeline,
            backup: args.backup,
        },
        action: args.target_action,
        standby: args.standby,
        primary_conninfo: args.primary_conninfo,
        primary_slot_name: args.primary_slot_name,
        tablespace_map: args.tablespace_map,
        pg_version: args.pg_version,
        owner: args.owner,
        prefetch: args.prefetch,
        spool: args.spool,
        dry_run: args.dry_run,
        force: args.force,
        progress: std::io::IsTerminal::is_terminal(&std::io::stdout()),
    };
    let mut stdout = std::io::stdout();
    let mut sink = std::io::sink();
    let out: &mut dyn std::io::Write = if args.json { &mut sink } else { &mut stdout };
    match restore(&options, out) {
        Ok(restored) => {
            if args.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&restored.plan).unwrap_or_default()
                );
            }
            print!("{}", restored.summary(&options));
            exit::OK
        }
        Err(e) => {
            eprintln!("walden-restore: error: {e}");
            e.exit_code()
        }
    }
}

/// `wal-fetch`: no runtime, no logger; nothing on stdout, one line on stderr for a fault.
fn wal_fetch(args: &WalFetchArgs) -> u8 {
    let fault = |e: &dyn std::fmt::Display| {
        eprintln!("walden-restore wal-fetch {}: {e}", args.file);
        exit::FETCH_FAULT
    };
    let source = match args.from.source() {
        Ok(s) => s,
        Err(e) => return fault(&e),
    };
    let call = wal_fetch::Call {
        source: &source,
        cluster: &args.cluster,
        file: &args.file,
        dest: &args.dest,
        prefetch: args.prefetch,
        spool: args.spool.as_deref(),
    };
    match wal_fetch::answer(&call) {
        Ok(answer) => {
            for note in &answer.notes {
                eprintln!("walden-restore wal-fetch: {note}");
            }
            if answer.delivered {
                exit::OK
            } else {
                exit::NOT_FOUND
            }
        }
        Err(e) => fault(&e),
    }
}

fn wal_prefetch(args: &WalPrefetchArgs) -> Result<u32, String> {
    let source = args.from.source().map_err(|e| e.to_string())?;
    wal_fetch::prefetch_after(&source, &args.cluster, &args.spool, args.count, &args.file)
        .map_err(|e| e.to_string())
}
