//! The `modserve` binary: parse the command line, set up logging, then serve, check a config,
//! build a launch report, evaluate or tune offline.

use std::process::ExitCode;

use clap::Parser;
use modserve::app::Server;
use modserve::cli::{Cli, Command};
use modserve::config::{Config, LogFormat};
use modserve::control::loader;
use modserve::inference::backend::Backends;
use modserve::inference::runtime;
use modserve::offline::{report, tune};
use modserve::shutdown;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    modserve::app::release_freed_memory_at_once();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // A usage error exits 1, not clap's 2: scripts read 2 as NO-GO (`eval`, `report`) or
        // "not enough evidence" (`tune`), never as a typo in the command line.
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { ExitCode::FAILURE } else { ExitCode::SUCCESS };
        }
    };
    match cli.command {
        Some(Command::CheckConfig { ref file }) => check_config(file, &cli),
        Some(Command::Report { .. }) => launch_report(&cli),
        Some(Command::Eval { ref labels, ref surface, ref out }) => eval(labels, surface.as_deref(), out, &cli),
        Some(Command::Tune { .. }) => tune(&cli),
        None | Some(Command::Serve) => serve(&cli),
    }
}

/// `modserve report`: exit 0 for GO, 2 for NO-GO, 1 when no report could be built.
fn launch_report(cli: &Cli) -> ExitCode {
    let Some(Command::Report {
        prometheus,
        access,
        task,
        candidate,
        policy,
        surface,
        window,
        end,
        disagreement_log,
        out,
    }) = &cli.command
    else {
        unreachable!("called for the report subcommand only");
    };
    let mut fetch = report::FetchArgs::new(prometheus, task, candidate);
    fetch.access = access.access();
    fetch.policy = policy.clone();
    fetch.surface = surface.clone();
    fetch.window = *window;
    fetch.end = end.unwrap_or_else(std::time::SystemTime::now);
    fetch.disagreement_log = disagreement_log.clone();
    // The config supplies the launch criteria; its models are not loaded.
    let config = match Config::load(&cli.flags.config, &cli.flags.overrides()) {
        Ok(c) => c,
        Err(errors) => {
            report_config_errors(&cli.flags.config, &errors);
            return ExitCode::from(report::EXIT_ERROR);
        }
    };
    match report::run(&report::RunArgs { fetch, out: out.clone() }, &config.launch) {
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
    // h2 warns once per connection it closes for misbehaving, which a rapid-reset flood turns
    // into ~40 lines a second; the transport counts and logs those closes itself, sparsely.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,ort=warn,h2=error"));
    // Colour only on a terminal: escape codes in a log file or collector are noise.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

fn serve(cli: &Cli) -> ExitCode {
    let config = match Config::load(&cli.flags.config, &cli.flags.overrides()) {
        Ok(c) => c,
        Err(errors) => return report_config_errors(&cli.flags.config, &errors),
    };
    init_logging(config.server.log_format);
    // Every call is read, validated and answered on these threads: like a live model's short-job
    // workers, they preempt long work when they wake (`cpu::LATENCY_SLICE`).
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .on_thread_start(modserve::inference::cpu::shorten_slice)
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("modserve: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // The OTLP exporter's gRPC client runs on the runtime.
    let exporter = match runtime.block_on(async { modserve::otel::init() }) {
        Ok(exporter) => exporter,
        Err(e) => {
            tracing::error!(error = %e, "cannot export OpenTelemetry traces");
            eprintln!("modserve: cannot export OpenTelemetry traces: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(exporter) = &exporter {
        tracing::info!(endpoint = %exporter.endpoint, protocol = exporter.protocol.as_str(), "exporting OpenTelemetry traces over OTLP");
    }
    let result = runtime.block_on(async move {
        let server = Server::start(config).await?;
        server
            .run_until(async {
                let name = shutdown::os_signal().await;
                tracing::info!(signal = name, "received signal");
            })
            .await
    });
    if let Some(exporter) = exporter {
        // The spans of the last calls: sent while the runtime still runs the client.
        let _inside = runtime.enter();
        exporter.shutdown(std::time::Duration::from_secs(5));
    }
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
    init_logging(cli.flags.log_format.unwrap_or(LogFormat::Text));
    let config = match Config::load(file, &cli.flags.overrides()) {
        Ok(c) => c,
        Err(errors) => return report_config_errors(file, &errors),
    };
    let env = match runtime::environment(&config.server.onnxruntime_lib) {
        Ok(env) => env,
        Err(e) => return report_config_errors(file, &[e.to_string()]),
    };
    match loader::load(&std::sync::Arc::new(config.clone()), &Backends::new(env), true, None, None) {
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

/// `modserve eval`: every model of the config over a labelled file, one launch report per shadow.
/// Exit 0 when every shadow is GO, 2 when any is NO-GO, 1 when it could not run.
fn eval(labels: &std::path::Path, surface: Option<&str>, out: &std::path::Path, cli: &Cli) -> ExitCode {
    init_logging(cli.flags.log_format.unwrap_or(LogFormat::Text));
    let failed = || ExitCode::from(report::EXIT_ERROR);
    let path = &cli.flags.config;
    let Some((config, loaded)) = load_models(cli) else { return failed() };
    let state = loaded.state;
    let result = (|| {
        let (mut labelled, runtime) = labelled_and_runtime(labels, &state)?;
        if let Some(surface) = surface {
            labelled = modserve::offline::eval::on_surface(labelled, &state, surface)?;
        }
        let mut inputs = runtime
            .block_on(modserve::offline::eval::evaluate(
                &state,
                &labelled,
                labels,
                modserve::offline::eval::progress_bar(),
            ))
            .map_err(|e| e.to_string())?;
        if inputs.is_empty() {
            let offered = surface.map_or_else(String::new, |s| format!(" offered surface {s}"));
            return Err(format!(
                "no shadow to evaluate: no task of {} with labelled reviews has shadows{offered}",
                path.display()
            ));
        }
        if let Some(surface) = surface {
            for input in &mut inputs {
                input.notes.push(format!("surface {surface} only: the labelled lines on it"));
            }
        }
        let mut all_go = true;
        for input in inputs {
            let dir = modserve::offline::eval::report_dir(out, &input);
            let report = report::Report::build(input, &config.launch);
            report.write(&dir).map_err(|e| e.to_string())?;
            all_go &= report.decision == report::Decision::Go;
            let failed = if report.failed.is_empty() {
                String::new()
            } else {
                format!(" (failed: {})", report.failed.join(", "))
            };
            println!(
                "{}: {}{failed}  -> {}",
                dir.display(),
                report.decision.as_str(),
                dir.join(report::MARKDOWN_FILE).display()
            );
        }
        Ok(all_go)
    })();
    drop(state);
    loader::join_all(loaded.threads);
    match result {
        Ok(true) => ExitCode::from(report::EXIT_GO),
        Ok(false) => ExitCode::from(report::EXIT_NO_GO),
        Err(e) => {
            eprintln!("modserve eval: {e}");
            failed()
        }
    }
}

/// The labelled file read against `state`, and a runtime to score it on: what `eval` starts with.
fn labelled_and_runtime(
    labels: &std::path::Path,
    state: &modserve::control::registry::ServingState,
) -> Result<(Vec<modserve::offline::eval::Labelled>, tokio::runtime::Runtime), String> {
    let labelled = modserve::offline::eval::read_labels(labels, state).map_err(|errors| errors.join("\n  "))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    Ok((labelled, runtime))
}

/// The config (with the shadows' serving limits lifted: `Config::offline`) and every model its
/// tasks use, for the offline subcommands; `None` once the errors are printed.
fn load_models(cli: &Cli) -> Option<(std::sync::Arc<Config>, loader::Loaded)> {
    let path = &cli.flags.config;
    let config = match Config::load(path, &cli.flags.overrides()) {
        Ok(c) => std::sync::Arc::new(c.offline()),
        Err(errors) => {
            report_config_errors(path, &errors);
            return None;
        }
    };
    let env = match runtime::environment(&config.server.onnxruntime_lib) {
        Ok(env) => env,
        Err(e) => {
            report_config_errors(path, &[e.to_string()]);
            return None;
        }
    };
    match loader::load(&config, &Backends::new(env), false, None, None) {
        Ok(loaded) => Some((config, loaded)),
        Err(errors) => {
            report_config_errors(path, &errors);
            None
        }
    }
}

/// `modserve tune`: thresholds for a task's live model from a labelled file or from the verdict
/// scores in Prometheus. Exit 0 when every label got a proposal, 2 when some did not, 1 when it
/// could not run.
fn tune(cli: &Cli) -> ExitCode {
    let Some(Command::Tune {
        labels,
        prometheus,
        window,
        end,
        task,
        surface,
        target,
        name,
        min_verdicts,
        out,
        apply,
        reload,
        access,
    }) = &cli.command
    else {
        unreachable!("called for the tune subcommand only");
    };
    init_logging(cli.flags.log_format.unwrap_or(LogFormat::Text));
    let failed = || ExitCode::from(tune::EXIT_ERROR);
    let Some((config, loaded)) = load_models(cli) else { return failed() };
    let state = loaded.state;
    let evidence = match (labels, prometheus) {
        (Some(path), _) => tune::Evidence::File(path.clone()),
        (None, Some(url)) => tune::Evidence::Prometheus {
            url: url.clone(),
            window: *window,
            end: end.unwrap_or_else(std::time::SystemTime::now),
        },
        (None, None) => unreachable!("clap requires --labels or --prometheus"),
    };
    let args = tune::TuneArgs {
        task: task.clone(),
        target: *target,
        name: name.clone(),
        min_verdicts: min_verdicts.unwrap_or(config.launch.min_verdicts),
        surface: surface.clone(),
        evidence,
    };
    let result = (|| -> Result<bool, String> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the async runtime: {e}"))?;
        let tuning = match &args.evidence {
            tune::Evidence::File(path) => {
                let labelled =
                    modserve::offline::eval::read_labels(path, &state).map_err(|errors| errors.join("\n  "))?;
                runtime
                    .block_on(tune::tune(&state, &labelled, &args, modserve::offline::eval::progress_bar()))
                    .map_err(|e| e.to_string())?
            }
            tune::Evidence::Prometheus { url, window, end } => {
                let live = tune::live_model(&state, &args).map_err(|e| e.to_string())?;
                let mut fetch = report::FetchArgs::new(url, task, &live.name);
                fetch.access = access.access();
                fetch.surface = surface.clone();
                fetch.window = *window;
                fetch.end = *end;
                // A week of raw samples is a large answer.
                fetch.timeout = std::time::Duration::from_secs(60);
                let scores = report::verdict_scores(&fetch, &live.name, &live.version).map_err(|e| e.to_string())?;
                tune::tune_from_histograms(&state, &scores, &args).map_err(|e| e.to_string())?
            }
        };
        if let Some(dir) = out {
            tune::write(&tuning, dir).map_err(|e| e.to_string())?;
        }
        print!("{}", tune::toml(&tuning));
        for l in &tuning.labels {
            if let Some(message) = tune::refusal_message(&tuning, l) {
                eprintln!("modserve tune: {message}");
            }
        }
        if *apply && tuning.complete() {
            apply_tuning(cli, &config, &tuning, reload.as_deref(), &runtime)?;
        } else if *apply {
            eprintln!("modserve tune: not applied: {}", tune::ApplyError::Incomplete);
        }
        Ok(tuning.complete())
    })();
    drop(state);
    loader::join_all(loaded.threads);
    match result {
        Ok(true) => ExitCode::from(tune::EXIT_PROPOSED),
        Ok(false) => ExitCode::from(tune::EXIT_NOT_PROPOSED),
        Err(e) => {
            eprintln!("modserve tune: {e}");
            failed()
        }
    }
}

/// `tune --apply` and `--reload`: the proposal into the config file, then into the server.
fn apply_tuning(
    cli: &Cli,
    config: &Config,
    tuning: &tune::Tuning,
    reload: Option<&str>,
    runtime: &tokio::runtime::Runtime,
) -> Result<(), String> {
    let path = &cli.flags.config;
    let applied = tune::apply(path, tuning, &cli.flags.overrides()).map_err(|e| e.to_string())?;
    eprintln!(
        "modserve tune: applied to {}: [policies.{}]{} (sha256 {})",
        path.display(),
        tuning.name,
        if applied.shadow_added {
            let on = tuning.surface.as_ref().map_or_else(String::new, |s| format!(" on surface {s}"));
            format!(" and a policy-only shadow of task {} at sample_rate 1.0{on}", tuning.task)
        } else {
            format!("; task {} already had its policy-only shadow", tuning.task)
        },
        applied.sha256
    );
    if let Some(addr) = reload {
        let generation = runtime.block_on(tune::reload(addr, config)).map_err(|e| e.to_string())?;
        eprintln!("modserve tune: {addr} reloaded it: config generation {generation} is serving");
    }
    Ok(())
}

fn report_config_errors(file: &std::path::Path, errors: &[String]) -> ExitCode {
    eprintln!("{}: {} error(s):", file.display(), errors.len());
    for e in errors {
        eprintln!("  - {e}");
    }
    ExitCode::FAILURE
}
