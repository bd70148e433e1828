//! `walden`: the archive-side command. Parses arguments and calls the library.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use walden::exit;
use walden::logging::{self, LogFormat};

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
