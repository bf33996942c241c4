//! `porchlight-loadtest`: parses the command line (`cli.rs`), runs the
//! plan (`run.rs`) and writes the outputs (`report.rs`). Exit codes: 0
//! done, 64 bad flags or scenario, 1 the run itself failed.

use clap::Parser;
use porchlight_loadtest::{cli::Cli, error::LoadError, report, run};

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let (plan, options, outputs) = match cli.plan() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("porchlight-loadtest: {e}");
            return std::process::ExitCode::from(64);
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("porchlight-loadtest: cannot start the runtime: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    let summary = match runtime.block_on(run::run(plan, options)) {
        Ok(s) => s,
        Err(e @ LoadError::Invalid(_)) => {
            eprintln!("porchlight-loadtest: {e}");
            return std::process::ExitCode::from(64);
        }
        Err(e) => {
            eprintln!("porchlight-loadtest: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    print!("{}", report::table(&summary));
    let written = outputs
        .json
        .as_deref()
        .map(|p| report::write_json(&summary, p))
        .transpose()
        .and_then(|_| {
            outputs
                .report
                .as_deref()
                .map(|d| report::write_report(&summary, d))
                .transpose()
        });
    if let Err(e) = written {
        eprintln!("porchlight-loadtest: {e}");
        return std::process::ExitCode::from(1);
    }
    std::process::ExitCode::SUCCESS
}
