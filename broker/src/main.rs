//! The `porchlight` binary: parse flags, validate, set up logging, bind,
//! serve until SIGTERM/SIGINT, exit; or run the `hash-password` tool.
//! Everything else is in the library.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;
use porchlight_broker::config::{Cli, LogFormat, Subcommand};
use porchlight_broker::Server;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

/// The allocator: jemalloc, whose background thread returns freed pages to
/// the system after a burst, and whose size classes do not fragment the way
/// glibc's per-thread arenas did under large fan-outs (decision 0006).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Exit code for any configuration error, from clap or from validation
/// (sysexits' EX_USAGE, as linkerd2-proxy uses for bad configuration).
const EXIT_CONFIG: u8 = 64;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind;
            let _ = e.print();
            return match e.kind() {
                ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => ExitCode::SUCCESS,
                _ => ExitCode::from(EXIT_CONFIG),
            };
        }
    };
    match &cli.command {
        Some(Subcommand::HashPassword) => return hash_password(),
        Some(Subcommand::Ctl(args)) => return ctl(args),
        None => {}
    }
    let config = match cli.validate() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("porchlight: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let filter = match EnvFilter::try_new(&cli.log_level) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("porchlight: invalid value for --log-level: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    // rustls warns for every client that puts an IP address in its SNI
    // (many devices dial the broker by address): not worth a line each.
    // A --log-level that names rustls decides for itself.
    let filter = match "rustls::msgs::handshake=error".parse() {
        Ok(d) if !cli.log_level.contains("rustls") => filter.add_directive(d),
        _ => filter,
    };
    // Colours only for a terminal, not for log files and collectors.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()));
    match cli.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("porchlight: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "Porchlight stopped");
            // A file named by a flag that does not load is a configuration
            // error, like a bad flag.
            match e.downcast_ref::<porchlight_broker::BrokerError>() {
                Some(
                    porchlight_broker::BrokerError::Tls { .. }
                    | porchlight_broker::BrokerError::AuthFile { .. },
                ) => ExitCode::from(EXIT_CONFIG),
                _ => ExitCode::FAILURE,
            }
        }
    }
}

async fn run(config: porchlight_broker::Config) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    let drain_delay = config.drain_delay;
    let server = Server::bind(config, shutdown.clone()).await?;
    let ready = server.readiness();
    let signals = shutdown.clone();
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(porchlight_broker::BrokerError::Signal)?;
    tokio::spawn(async move {
        // The first signal starts the stop (not ready, then the drain
        // after --drain-delay); a second one skips what is left of the
        // delay.
        let mut stopping = None;
        loop {
            tokio::select! {
                _ = sigterm.recv() => tracing::info!("SIGTERM received"),
                _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
            }
            if stopping.is_some() {
                signals.cancel();
                return;
            }
            let stop = porchlight_broker::ops::server::stop_after_drain_delay(
                ready.clone(),
                drain_delay,
                signals.clone(),
            );
            stopping = Some(tokio::spawn(stop));
        }
    });
    server.run().await;
    Ok(())
}

/// `porchlight ctl`: one verb against a node's admin API.
fn ctl(args: &porchlight_broker::config::CtlArgs) -> ExitCode {
    match porchlight_broker::ctl::run(args, &mut std::io::stdout()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("porchlight ctl: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `porchlight hash-password`: one line from standard input to a PHC
/// string on standard output.
fn hash_password() -> ExitCode {
    use std::io::Read;
    let mut text = String::new();
    if let Err(e) = std::io::stdin().take(64 * 1024).read_to_string(&mut text) {
        eprintln!("porchlight hash-password: cannot read standard input: {e}");
        return ExitCode::from(EXIT_CONFIG);
    }
    let Some(password) = porchlight_broker::auth::password::from_stdin_text(&text) else {
        eprintln!("porchlight hash-password: no password on standard input (one line expected)");
        return ExitCode::from(EXIT_CONFIG);
    };
    match porchlight_broker::auth::password::hash(password.as_bytes()) {
        Ok(phc) => {
            println!("{phc}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("porchlight hash-password: {e}");
            ExitCode::FAILURE
        }
    }
}
