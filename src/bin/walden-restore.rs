//! `walden-restore`: the database-side command (restore, wal-fetch). Parses arguments and
//! calls the library.

use std::process::ExitCode;

use clap::Parser;

#[derive(Parser)]
#[command(
    name = "walden-restore",
    version,
    about = "Restore a PostgreSQL data directory from a walden store"
)]
struct Cli {}

fn main() -> ExitCode {
    let _cli = Cli::parse();
    eprintln!("walden-restore: no command yet; see walden-restore --help");
    ExitCode::from(walden::exit::USAGE)
}
