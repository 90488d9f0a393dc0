//! The `modserve` binary: parse the command line, set up logging, then serve, check a config or
//! build a launch report.

use std::process::ExitCode;

use clap::Parser;
use modserve::app::Server;
use modserve::config::{Cli, Command, Config, LogFormat};
use modserve::{loader, report, runtime, shutdown};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::CheckConfig { ref file }) => check_config(file, &cli),
        Some(Command::Report { .. }) => launch_report(&cli),
        None | Some(Command::Serve) => serve(&cli),
    }
}

/// `modserve report`: exit 0 for GO, 2 for NO-GO, 1 when no report could be built.
fn launch_report(cli: &Cli) -> ExitCode {
    let Some(Command::Report { prometheus, task, candidate, policy, window, end, disagreement_log, out }) =
        &cli.command
    else {
        unreachable!("called for the report subcommand only");
    };
    let mut fetch = report::FetchArgs::new(prometheus, task, candidate);
    fetch.policy = policy.clone();
    fetch.window = *window;
    fetch.end = end.unwrap_or_else(std::time::SystemTime::now);
    fetch.disagreement_log = disagreement_log.clone();
    // TODO(wire): config.launch — read `[launch]` from `cli.overrides.config` once `Config` has it.
    let criteria = report::LaunchCriteria::default();
    match report::run(&report::RunArgs { fetch, out: out.clone() }, &criteria) {
        Ok(report::Decision::Go) => ExitCode::from(report::EXIT_GO),
        Ok(report::Decision::NoGo) => ExitCode::from(report::EXIT_NO_GO),
        Err(e) => {
            eprintln!("modserve report: {e}");
            ExitCode::from(report::EXIT_ERROR)
        }
    }
}

fn init_logging(format: LogFormat) {
    // Panics (caught per batch by the inference workers) go to the structured log, not raw
    // stderr, so on-call sees them with the rest.
    std::panic::set_hook(Box::new(|info| tracing::error!(panic = %info, "panic")));
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,ort=warn"));
    // Colour only on a terminal: escape codes in a log file or collector are noise.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

fn serve(cli: &Cli) -> ExitCode {
    let config = match Config::load(&cli.overrides.config, &cli.overrides) {
        Ok(c) => c,
        Err(errors) => return report_config_errors(&cli.overrides.config, &errors),
    };
    init_logging(config.server.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("modserve: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        let server = Server::start(config).await?;
        server
            .run_until(async {
                let name = shutdown::os_signal().await;
                tracing::info!(signal = name, "received signal");
            })
            .await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("modserve: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn check_config(file: &std::path::Path, cli: &Cli) -> ExitCode {
    init_logging(cli.overrides.log_format.unwrap_or(LogFormat::Text));
    let config = match Config::load(file, &cli.overrides) {
        Ok(c) => c,
        Err(errors) => return report_config_errors(file, &errors),
    };
    let env = match runtime::environment(&config.server.onnxruntime_lib) {
        Ok(env) => env,
        Err(e) => return report_config_errors(file, &[e.to_string()]),
    };
    match loader::load(&std::sync::Arc::new(config.clone()), &env, true, None, None) {
        Ok(loaded) => {
            let models = config.models.len();
            let tasks = loaded.state.tasks.len();
            drop(loaded.state);
            loader::join_all(loaded.threads);
            println!("{}: OK ({models} models, {tasks} tasks)", file.display());
            ExitCode::SUCCESS
        }
        Err(errors) => report_config_errors(file, &errors),
    }
}

fn report_config_errors(file: &std::path::Path, errors: &[String]) -> ExitCode {
    eprintln!("{}: {} error(s):", file.display(), errors.len());
    for e in errors {
        eprintln!("  - {e}");
    }
    ExitCode::FAILURE
}
