//! Integration tests against real PostgreSQL servers (15, 16, 18), one test per scenario and
//! version (`name::pg15`, ...). See `harness` for the servers, roles and TLS files they get.

mod harness;
mod support;

mod backup;
mod basebackup_protocol;
mod check_config;
mod daemon;
mod harness_smoke;
mod http;
mod identify;
mod quickstart;
mod receive;
mod replication_commands;
mod restore;
