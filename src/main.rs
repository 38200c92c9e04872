//! The `wsss` binary: parse arguments, set up logging, dispatch, map errors to exit codes.

use std::io::IsTerminal;

use clap::Parser;
use tracing_subscriber::EnvFilter;

fn main() {
    wsss::util::alloc::retain_freed_memory();
    let cli = wsss::cli::Cli::parse();
    let default = if cli.quiet { "warn" } else { "info" };
    let filter = EnvFilter::try_from_env("WSSS_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let code = match wsss::cli::dispatch(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            e.exit_code()
        }
    };
    std::process::exit(code);
}
