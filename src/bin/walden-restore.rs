//! `walden-restore`: the database-side command (restore, wal-fetch). Parses arguments and
//! calls the library.

use std::path::{Path, PathBuf};
use std::process::{Command as Process, ExitCode, Stdio};

use clap::{Parser, Subcommand};
use walden::exit;
use walden::restore::wal_fetch::{Spool, WalFetcher, WalRequest};
use walden::store::ClusterName;

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
    /// PostgreSQL's restore_command: copy WAL file FILE from the store to DEST. Exit 0 when
    /// delivered, 1 when the store does not have it, 255 on a fault that must stop recovery.
    WalFetch(WalFetchArgs),
    /// Internal: fill the prefetch spool after FILE (started by wal-fetch --prefetch).
    #[command(hide = true)]
    WalPrefetch(WalPrefetchArgs),
}

#[derive(clap::Args)]
struct WalFetchArgs {
    /// The store directory.
    #[arg(long, value_name = "STORE")]
    from: PathBuf,
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
    #[arg(long)]
    from: PathBuf,
    #[arg(long)]
    cluster: ClusterName,
    #[arg(long)]
    spool: PathBuf,
    #[arg(long)]
    count: u32,
    file: String,
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::WalFetch(args) => ExitCode::from(wal_fetch(&args)),
        Command::WalPrefetch(args) => {
            // Nobody reads this process's output or exit code: a failure only means the next
            // calls fetch from the store themselves.
            let _ = wal_prefetch(&args);
            ExitCode::SUCCESS
        }
    }
}

/// `wal-fetch`: no runtime, no logger; nothing on stdout, one line on stderr for a fault.
fn wal_fetch(args: &WalFetchArgs) -> u8 {
    let fault = |e: &dyn std::fmt::Display| {
        eprintln!("walden-restore wal-fetch {}: {e}", args.file);
        exit::FETCH_FAULT
    };
    let fetcher = match WalFetcher::open(&args.from, &args.cluster) {
        Ok(f) => f,
        Err(e) => return fault(&e),
    };
    let Some(request) = fetcher.request(&args.file) else {
        return exit::NOT_FOUND;
    };
    let spool = match (args.prefetch, request) {
        (1.., WalRequest::Segment { .. }) => {
            let dir = args
                .spool
                .clone()
                .unwrap_or_else(|| fetcher.default_spool_dir());
            match Spool::open(&dir) {
                Ok(s) => Some(s),
                Err(e) => {
                    eprintln!("walden-restore wal-fetch: not prefetching: {e}");
                    None
                }
            }
        }
        _ => None,
    };
    match fetcher.fetch(request, &args.dest, spool.as_ref()) {
        Ok(None) => exit::NOT_FOUND,
        Ok(Some(_)) => {
            if let Some(spool) = &spool {
                start_prefetch(args, spool.dir());
            }
            exit::OK
        }
        Err(e) => fault(&e),
    }
}

/// Starts `wal-prefetch` detached: its own process group, no standard streams, not waited
/// for, so this call returns at once. A failure to start it only costs speed.
fn start_prefetch(args: &WalFetchArgs, spool: &Path) {
    use std::os::unix::process::CommandExt;
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    let spawned = Process::new(exe)
        .arg("wal-prefetch")
        .arg("--from")
        .arg(&args.from)
        .arg("--cluster")
        .arg(args.cluster.as_str())
        .arg("--spool")
        .arg(spool)
        .arg("--count")
        .arg(args.prefetch.to_string())
        .arg(&args.file)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn();
    if let Err(e) = spawned {
        eprintln!("walden-restore wal-fetch: not prefetching: cannot start a worker: {e}");
    }
}

fn wal_prefetch(args: &WalPrefetchArgs) -> Result<u32, String> {
    let fetcher = WalFetcher::open(&args.from, &args.cluster).map_err(|e| e.to_string())?;
    let Some(WalRequest::Segment { tli, segno }) = fetcher.request(&args.file) else {
        return Ok(0);
    };
    let spool = Spool::open(&args.spool).map_err(|e| e.to_string())?;
    fetcher
        .fill_spool(&spool, tli, segno, args.count)
        .map_err(|e| e.to_string())
}
