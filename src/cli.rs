//! The command line: the subcommands and the flags that override the config file, every flag
//! also an environment variable (clap). `config` never sees clap: `Flags::overrides` hands it
//! plain settings.

use std::path::PathBuf;
use std::time::Duration;

use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap::{Args, Parser, Subcommand};

use crate::config::{LogFormat, Overrides, defaults};
use crate::offline::report::{Access, Credentials, Secret};

#[derive(Debug, Parser)]
#[command(name = "modserve", version, about = "Content-moderation inference server with shadow mode")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub flags: Flags,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server (what `modserve` with no subcommand does).
    Serve,
    /// Validate a config file and load every model it names; print every error and exit
    /// non-zero if there is any.
    CheckConfig {
        /// The config file to check.
        file: PathBuf,
    },
    /// Run every model of the config (each task's live model and every shadow, every policy) over
    /// a labelled JSON-lines file and write a launch report per shadow, with the labels standing
    /// in for moderator verdicts, judged by the config's `[launch]` criteria.
    ///
    /// Exit status: 0 every shadow GO, 2 any NO-GO, 1 the evaluation could not run.
    Eval {
        /// JSON lines, one review each: "id", "text", optional "title", "rating", "language",
        /// "signals" (as in Classify), "task", and the human "decision" (allow, review or reject).
        #[arg(long)]
        labels: PathBuf,
        /// Judge on one surface: only the lines whose `surface` is this one (a name under
        /// [tasks.TASK.surfaces] of their task) count, and only shadows offered it report.
        #[arg(long)]
        surface: Option<String>,
        /// Folder for the reports: one subfolder per shadow, TASK-MODEL[-POLICY], each with
        /// launch-report.{md,html,json}.
        #[arg(long, default_value = ".")]
        out: PathBuf,
    },
    /// Solve per-label thresholds of a task's live model from moderator verdicts (a labelled
    /// file as `eval` reads, or the live scores on verdicts in Prometheus) for a target, and print them as a `[policies.NAME]` table to try as a policy-only shadow,
    /// with the verdict counts and Wilson 95% interval behind each threshold.
    ///
    /// For label L, a review is flagged at threshold t when its score for L is at least t.
    /// Positives are reviews a moderator decided REVIEW or REJECT (review-precision,
    /// review-volume) or REJECT (reject-precision); a line that lists `labels` is a positive only
    /// for the labels it lists. The target sets one threshold per label; the other keeps the live
    /// policy's value, and review must stay <= reject.
    ///
    /// Exit status: 0 a threshold proposed for every label, 2 some label got none (fewer labelled
    /// reviews than --min-verdicts, or no threshold meets the target; the counts are printed),
    /// 1 it could not run.
    Tune {
        /// JSON lines, as `eval --labels` reads: every line is checked as eval checks it (its task
        /// must be configured); only the lines of --task are tuned on. Or --prometheus.
        #[arg(long, required_unless_present = "prometheus", conflicts_with = "prometheus")]
        labels: Option<PathBuf>,
        /// Read the verdicts from Prometheus instead of a file: the live model's scores on the
        /// reviews moderators judged (modserve_verdict_scores of the live model and version in
        /// --config), over --window. Scores are known to their 0.05 bucket there, so proposed
        /// thresholds are bucket edges. http or https, a path prefix allowed.
        #[arg(long)]
        prometheus: Option<String>,
        /// With --prometheus: how far back from --end to read verdicts, e.g. 1d, 7d.
        #[arg(long, default_value = "7d", value_parser = humantime::parse_duration, requires = "prometheus")]
        window: Duration,
        /// With --prometheus: end of the window, RFC 3339 or unix seconds. Default: now.
        #[arg(long, value_parser = crate::offline::report::parse_end, requires = "prometheus")]
        end: Option<std::time::SystemTime>,
        /// The task whose live model is tuned.
        #[arg(long)]
        task: String,
        /// Tune the live policy of one surface of the task (a name under [tasks.TASK.surfaces]):
        /// only verdicts on that surface count, live's figures are its policy there, and --apply
        /// offers the policy-only shadow that surface alone.
        #[arg(long)]
        surface: Option<String>,
        /// What to solve for (0 < P < 1):
        ///
        /// review-precision=P: the lowest REVIEW threshold whose precision (share of the reviews
        /// it flags that a moderator decided REVIEW or REJECT) has a Wilson 95% lower bound >= P.
        ///
        /// reject-precision=P: the same for REJECT (positives: moderator decided REJECT).
        ///
        /// review-volume=live: the REVIEW threshold flagging as many reviews as live's does on
        /// the verdicts (at most), with its recall beside live's.
        #[arg(long, value_parser = parse_target)]
        target: crate::offline::tune::Target,
        /// The policy's name (default: <live model>-tuned, or <live model>-tuned-<surface>).
        #[arg(long, value_parser = crate::offline::tune::parse_name)]
        name: Option<String>,
        /// Labelled reviews of the task needed to propose anything (default: [launch].min_verdicts).
        #[arg(long)]
        min_verdicts: Option<u64>,
        /// Also write policy.toml (the snippet) and tune.json into this folder.
        #[arg(long)]
        out: Option<PathBuf>,
        /// When every label got a proposal, add it to the --config file: the [policies.NAME]
        /// table and a policy-only shadow of the task at sample_rate 1.0 (on --surface only,
        /// when given). The edited file is checked as the server checks a reload before it
        /// replaces the old one (by a rename); comments and formatting elsewhere are kept. A
        /// running server with server.watch_config loads it on its next look at the file.
        #[arg(long)]
        apply: bool,
        /// With --apply: then ask the server at HOST:PORT (its admin.listen, else its
        /// server.grpc_listen) to load it now with Admin/Reload, with the admin token the config
        /// names (admin.token_env or admin.token_file). Plaintext only.
        #[arg(long, value_name = "HOST:PORT", requires = "apply")]
        reload: Option<String>,
        // Last, so that only its flags fall under its help heading.
        #[command(flatten)]
        access: Box<PrometheusAccess>,
    },
    /// Build the launch-readiness report on one shadow candidate against the live model, from
    /// Prometheus, and decide GO or NO-GO against the launch criteria (`[launch]` in --config).
    ///
    /// Prints the report as Markdown and writes launch-report.md, launch-report.html and
    /// launch-report.json into --out.
    ///
    /// Exit status: 0 GO (every checked criterion passed), 2 NO-GO (at least one failed),
    /// 1 the report could not be built (the cause is printed to stderr).
    Report {
        /// Prometheus base URL, http or https, a path prefix allowed, e.g. http://127.0.0.1:9090
        /// or https://prom.internal/prom (Thanos and Mimir query endpoints work too).
        #[arg(long, env = "MODSERVE_REPORT_PROMETHEUS")]
        prometheus: String,
        /// The task whose shadow is reported on.
        #[arg(long)]
        task: String,
        /// The shadow model (the candidate).
        #[arg(long)]
        candidate: String,
        /// The shadow policy. Required when --candidate is the live model (a policy-only
        /// shadow); otherwise needed only if the model shadows the task under several policies.
        #[arg(long)]
        policy: Option<String>,
        /// Judge the candidate on one surface of the task (a name under [tasks.TASK.surfaces]):
        /// its comparisons, verdicts and disagreement log lines there only. Shadow outcomes, score
        /// deltas and latency are not kept per surface and still cover all of its traffic.
        #[arg(long)]
        surface: Option<String>,
        /// How far back from --end to look, e.g. 1h, 30m, 7d.
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        window: Duration,
        /// End of the window: RFC 3339 (2026-11-26T13:00:00Z) or unix seconds. Default: now.
        #[arg(long, value_parser = crate::offline::report::parse_end)]
        end: Option<std::time::SystemTime>,
        /// The disagreement log to summarise (its rotated files PATH.1, PATH.2, ... too).
        #[arg(long)]
        disagreement_log: Option<PathBuf>,
        /// Folder for launch-report.{md,html,json} (created if missing).
        #[arg(long, default_value = ".")]
        out: PathBuf,
        // Last, so that only its flags fall under its help heading. Boxed: the largest
        // variant by far, and `Command` is moved by value.
        #[command(flatten)]
        access: Box<PrometheusAccess>,
    },
}

/// How `report` reaches a Prometheus behind TLS or authentication. Secrets are never flag
/// values: each is read from a file or from a named environment variable.
#[derive(Debug, Clone, Default, Args)]
#[command(next_help_heading = "Prometheus TLS and credentials")]
pub struct PrometheusAccess {
    /// PEM file with the CA certificate(s) to trust for an https --prometheus, instead of the
    /// Mozilla roots built in.
    #[arg(long, value_name = "PATH")]
    pub prometheus_ca_file: Option<PathBuf>,
    /// File holding a bearer token, sent as `Authorization: Bearer <token>` (one line; a
    /// trailing newline is cut).
    #[arg(long, value_name = "PATH", conflicts_with_all = ["prometheus_bearer_token_env", "prometheus_user"])]
    pub prometheus_bearer_token_file: Option<PathBuf>,
    /// Name of the environment variable holding the bearer token.
    #[arg(long, value_name = "NAME", conflicts_with = "prometheus_user")]
    pub prometheus_bearer_token_env: Option<String>,
    /// User for basic auth; the password comes from --prometheus-password-file or
    /// --prometheus-password-env.
    #[arg(long, value_name = "USER", requires = "prometheus_password")]
    pub prometheus_user: Option<String>,
    /// File holding the basic-auth password (one line; a trailing newline is cut).
    #[arg(long, value_name = "PATH", group = "prometheus_password", requires = "prometheus_user")]
    pub prometheus_password_file: Option<PathBuf>,
    /// Name of the environment variable holding the basic-auth password.
    #[arg(long, value_name = "NAME", group = "prometheus_password", requires = "prometheus_user")]
    pub prometheus_password_env: Option<String>,
}

impl PrometheusAccess {
    /// The flags as the report's access settings (nothing is read yet).
    pub fn access(&self) -> Access {
        let secret = |file: &Option<PathBuf>, env: &Option<String>| match (file, env) {
            (Some(path), _) => Some(Secret::File(path.clone())),
            (None, Some(name)) => Some(Secret::Env(name.clone())),
            (None, None) => None,
        };
        let credentials =
            match (&self.prometheus_user, secret(&self.prometheus_password_file, &self.prometheus_password_env)) {
                (Some(user), Some(password)) => Some(Credentials::Basic { user: user.clone(), password }),
                _ => secret(&self.prometheus_bearer_token_file, &self.prometheus_bearer_token_env)
                    .map(Credentials::Bearer),
            };
        Access { ca_file: self.prometheus_ca_file.clone(), credentials }
    }
}

/// Flags that override the config file; each is also read from the environment.
#[derive(Debug, Clone, Default, Args)]
pub struct Flags {
    /// Config file (TOML). Relative paths inside it are relative to its folder.
    #[arg(long, env = "MODSERVE_CONFIG", default_value = defaults::CONFIG_FILE, global = true)]
    pub config: PathBuf,
    /// gRPC listen address, overriding `server.grpc_listen`.
    #[arg(long, env = "MODSERVE_GRPC_LISTEN", global = true)]
    pub grpc_listen: Option<String>,
    /// Prometheus /metrics listen address, overriding `server.metrics_listen`.
    #[arg(long, env = "MODSERVE_METRICS_LISTEN", global = true)]
    pub metrics_listen: Option<String>,
    /// HTTP/JSON API listen address, overriding `server.http_listen` (which is off when unset).
    #[arg(long, env = "MODSERVE_HTTP_LISTEN", global = true)]
    pub http_listen: Option<String>,
    /// Admin service listen address, overriding `admin.listen` (so replicas sharing one config
    /// file can each have their own port).
    #[arg(long, env = "MODSERVE_ADMIN_LISTEN", global = true)]
    pub admin_listen: Option<String>,
    /// Log format, overriding `server.log_format`.
    #[arg(long, env = "MODSERVE_LOG_FORMAT", global = true, value_parser = log_format())]
    pub log_format: Option<LogFormat>,
    /// ONNX Runtime shared library, overriding `server.onnxruntime_lib` (relative to the
    /// current directory).
    #[arg(long, env = "MODSERVE_ONNXRUNTIME_LIB", global = true)]
    pub onnxruntime_lib: Option<PathBuf>,
}

impl Flags {
    /// The flags as config overrides.
    pub fn overrides(&self) -> Overrides {
        Overrides {
            config: self.config.clone(),
            grpc_listen: self.grpc_listen.clone(),
            metrics_listen: self.metrics_listen.clone(),
            http_listen: self.http_listen.clone(),
            admin_listen: self.admin_listen.clone(),
            log_format: self.log_format,
            onnxruntime_lib: self.onnxruntime_lib.clone(),
        }
    }
}

/// `--target`, parsed by `Target`'s own rules (clap names the flag in the error).
fn parse_target(s: &str) -> Result<crate::offline::tune::Target, crate::offline::tune::TargetError> {
    s.parse()
}

/// `text` or `json`, listed in `--help` and in the error for anything else.
fn log_format() -> impl TypedValueParser<Value = LogFormat> {
    PossibleValuesParser::new(["text", "json"]).map(|v| if v == "json" { LogFormat::Json } else { LogFormat::Text })
}
