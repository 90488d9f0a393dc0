//! Builds a `ServingState` from a validated `Config`: loads and verifies every package a task
//! uses, checks it against the config, and starts its workers, or keeps the running workers of
//! a previous state when nothing about the model changed. Blocking: run it off the runtime.
//! Every problem is collected, so one run reports all of them.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Instant, SystemTime};

use crate::config::{Config, ModelConfig, ShadowPolicy, TaskConfig};
use crate::control::registry::{LoadedModel, ServingState, SurfaceEntry, TaskEntry};
use crate::inference::backend::Backends;
use crate::inference::model::{ModelSpec, Package};
use crate::inference::worker::{self, WorkerSettings};
use crate::journal::Journal;
use crate::metrics::{self, InputMetrics, Role, TaskMetrics, VerdictMetrics};
use crate::policy::Policy;
use crate::shadow::budget::ShadowCpu;
use crate::shadow::disagreement::DisagreementLog;
use crate::shadow::headroom::Limits;
use crate::shadow::labelling::LabellingQueue;
use crate::shadow::{PairSpec, ShadowPair, SurfaceSpec};

/// The files shadows (and, for the journal, live decisions) write to, started once per process
/// and shared by every state.
#[derive(Clone, Copy, Default)]
pub struct Writers<'a> {
    pub log: Option<&'a DisagreementLog>,
    pub labelling: Option<&'a LabellingQueue>,
    /// The decision journal: the serving state's, for live decisions, and its shadows'.
    pub journal: Option<&'a Journal>,
}

/// A loaded state and the threads of the workers it started (joined at shutdown).
pub struct Loaded {
    pub state: ServingState,
    pub threads: Vec<JoinHandle<()>>,
}

/// Loads every model a task uses (with `all_models`, every configured model: what
/// `check-config` wants). Models whose fingerprint matches one in `previous` keep its workers.
/// The returned state has generation 0 and no config hash: the caller sets them.
pub fn load(
    config: &Arc<Config>,
    backends: &Backends,
    all_models: bool,
    log: Option<&DisagreementLog>,
    previous: Option<&ServingState>,
) -> Result<Loaded, Vec<String>> {
    load_with(config, backends, all_models, Writers { log, labelling: None, journal: None }, previous)
}

/// `load`, with every writer the shadows may use (the labelling queue too).
pub fn load_with(
    config: &Arc<Config>,
    backends: &Backends,
    all_models: bool,
    writers: Writers<'_>,
    previous: Option<&ServingState>,
) -> Result<Loaded, Vec<String>> {
    let mut errors = Vec::new();
    let mut models: BTreeMap<String, LoadedModel> = BTreeMap::new();
    let mut threads = Vec::new();
    // One budget per server, kept across reloads: reused shadow workers keep charging it.
    let shadow_cpu = previous.map(|p| p.shadow_cpu.clone()).unwrap_or_else(|| Arc::new(ShadowCpu::new()));
    for (name, model) in &config.models {
        let Some((role, sample_rate)) = role_of(config, name, all_models) else {
            tracing::warn!(model = %name, "models.{name} is not used by any task; not loaded");
            continue;
        };
        let running = previous.and_then(|p| p.models.get(name));
        match start_model(backends, config, model, role, running, &shadow_cpu) {
            Ok((loaded, started)) => {
                threads.extend(started);
                models.insert(name.clone(), LoadedModel { sample_rate, ..loaded });
            }
            Err(e) => errors.push(format!("models.{name}: {e}")),
        }
    }
    let tasks: Vec<TaskEntry> = config
        .tasks
        .iter()
        .filter_map(|task| task_entry(&mut errors, config, task, &models, &shadow_cpu, writers))
        .collect();
    if !errors.is_empty() {
        // Dropping the new handles closes their queues, so new threads exit promptly; reused
        // workers keep serving the previous state.
        drop(tasks);
        drop(models);
        join_all(threads);
        return Err(errors);
    }
    configure_budget(&shadow_cpu, config, &models);
    crate::shadow::offload::place(crate::shadow::offload::Placement {
        idle: config.shadow_scheduling == crate::config::ThreadScheduling::Idle,
        nice: config.shadow_nice,
        cpus: config.shadow_cpus,
    });
    let state = ServingState {
        generation: 0,
        shadow_cpu,
        config: config.clone(),
        config_sha256: String::new(),
        tasks,
        models,
        input: InputMetrics::new(&config.monitoring.languages),
        journal: writers.journal.cloned(),
    };
    Ok(Loaded { state, threads })
}

/// A model's role and the highest rate it is sampled at: live for a task's live model, shadow
/// for a model only shadows use (a policy-only shadow runs on the live model's workers, so it
/// adds no role); with `all_models`, live for an unused one. `None` = not needed.
fn role_of(config: &Config, name: &str, all_models: bool) -> Option<(Role, f64)> {
    if config.tasks.iter().any(|t| t.live == name) {
        return Some((Role::Live, 1.0));
    }
    let shadow_rate = config
        .tasks
        .iter()
        .flat_map(|t| &t.shadows)
        .filter(|s| s.model == name)
        .map(|s| s.sample_rate)
        .reduce(f64::max);
    match shadow_rate {
        Some(rate) => Some((Role::Shadow, rate)),
        None => all_models.then_some((Role::Live, 1.0)),
    }
}

/// Loads and verifies one model's package and starts its workers, or keeps `running`'s workers
/// when nothing about the model changed. Returns the model and the threads it started.
fn start_model(
    backends: &Backends,
    config: &Config,
    model: &ModelConfig,
    role: Role,
    running: Option<&LoadedModel>,
    shadow_cpu: &Arc<ShadowCpu>,
) -> Result<(LoadedModel, Vec<JoinHandle<()>>), String> {
    let started = Instant::now();
    let name = &model.name;
    let package = Package::load(&model.path).map_err(|e| e.to_string())?;
    if package.spec.name != *name {
        return Err(format!(
            "the package at {} is named {:?} in its manifest; use that name as the key",
            model.path.display(),
            package.spec.name
        ));
    }
    let mut settings = model.workers;
    if role == Role::Shadow {
        settings.nice = config.shadow_nice;
        settings.idle = config.shadow_scheduling == crate::config::ThreadScheduling::Idle;
        settings.cpus = config.shadow_cpus;
    }
    let fingerprint = Fingerprint::new(&package, role, settings);
    if let Some(running) = running.filter(|m| m.fingerprint == fingerprint) {
        return Ok((running.clone(), Vec::new()));
    }
    let budget = (role == Role::Shadow).then_some(shadow_cpu);
    let pool = worker::start(backends, &package, role, settings, budget).map_err(|e| e.to_string())?;
    let load_seconds = started.elapsed().as_secs_f64();
    metrics::model_loaded(name, load_seconds);
    tracing::info!(
        model = %name,
        version = %package.spec.version,
        task = %package.spec.task,
        role = role.as_str(),
        sha256 = %package.spec.sha256_prefix(),
        threads = pool.threads.len(),
        load_ms = (load_seconds * 1000.0) as u64,
        "model loaded and warmed up"
    );
    let loaded = LoadedModel {
        handle: pool.handle,
        role,
        fingerprint,
        loaded_at: SystemTime::now(),
        load_seconds,
        sample_rate: 1.0,
    };
    Ok((loaded, pool.threads))
}

/// One task's live model, its policy and its shadow pairs, checked against the loaded models.
/// `None` after recording the problems (models that failed to load are already reported).
fn task_entry(
    errors: &mut Vec<String>,
    config: &Config,
    task: &TaskConfig,
    models: &BTreeMap<String, LoadedModel>,
    shadow_cpu: &Arc<ShadowCpu>,
    writers: Writers<'_>,
) -> Option<TaskEntry> {
    let answers = |errors: &mut Vec<String>, key: &str, model: &str| answering(errors, task, models, key, model);
    let live = answers(errors, "live", &task.live)?;
    let live_policy = policy(errors, config, &format!("tasks.{}.policy", task.name), &task.policy, live.handle.spec())?;
    let surfaces = surface_policies(errors, config, task, live.handle.spec())?;
    let mut pairs = Vec::new();
    for (i, sh) in task.shadows.iter().enumerate() {
        let Some(shadow) = answers(errors, "shadows", &sh.model) else { continue };
        let key = format!("tasks.{}.shadows[{i}].policy", task.name);
        let Some(shadow_policy) = policy(errors, config, &key, &sh.policy, shadow.handle.spec()) else {
            continue;
        };
        let spec = PairSpec {
            live: live.handle.clone(),
            live_policy: live_policy.clone(),
            shadow: shadow.handle.clone(),
            shadow_policy,
            sample_rate: sh.sample_rate,
            salt: sh.salt.clone(),
            record_scores: !task.shadows[..i].iter().any(|o| o.model == sh.model),
            verdict_sources: config.feedback.sources.clone(),
            shadow_cpu: Some(shadow_cpu.clone()),
            labelling: writers.labelling.cloned(),
            journal: writers.journal.cloned(),
            surfaces: surface_specs(&surfaces, sh.surfaces.as_deref()),
            default_surface: sh.surfaces.is_none(),
        };
        pairs.push(Arc::new(ShadowPair::new(&task.name, spec, config.shadow, writers.log.cloned())));
    }
    let spec = live.handle.spec();
    let sources = &config.feedback.sources;
    Some(TaskEntry {
        name: task.name.clone(),
        live: live.handle.clone(),
        metrics: TaskMetrics::new(&task.name, spec, &live_policy),
        verdicts: VerdictMetrics::new(&task.name, spec, Role::Live, &live_policy, sources),
        policy: live_policy,
        surfaces: surfaces
            .into_iter()
            .map(|(name, policy)| SurfaceEntry {
                metrics: TaskMetrics::on_surface(&task.name, spec, &policy, &name),
                verdicts: VerdictMetrics::on_surface(&task.name, spec, Role::Live, &policy, sources, Some(&name)),
                name,
                policy,
            })
            .collect(),
        unknown_surface: task.unknown_surface,
        surface_fallbacks: metrics::surface_fallbacks(&task.name),
        shadows: pairs,
    })
}

/// The loaded `model` when it answers `task`; a model for another task is refused here.
fn answering<'a>(
    errors: &mut Vec<String>,
    task: &TaskConfig,
    models: &'a BTreeMap<String, LoadedModel>,
    key: &str,
    model: &str,
) -> Option<&'a LoadedModel> {
    let m = models.get(model)?;
    if m.handle.spec().task == task.name {
        return Some(m);
    }
    errors.push(format!(
        "tasks.{}.{key}: model {model:?} answers task {:?} (its manifest says so), not {:?}",
        task.name,
        m.handle.spec().task,
        task.name
    ));
    None
}

/// The task's surfaces as one shadow sees them: offered unless its `surfaces` list leaves them out.
fn surface_specs(surfaces: &[(String, Arc<Policy>)], offered: Option<&[String]>) -> Vec<SurfaceSpec> {
    surfaces
        .iter()
        .map(|(name, policy)| SurfaceSpec {
            name: name.clone(),
            live_policy: policy.clone(),
            offered: offered.is_none_or(|list| list.contains(name)),
        })
        .collect()
}

/// Each of the task's surfaces with the live policy there, resolved against the live model's
/// labels (a policy used on several surfaces is resolved once). `None` after recording the
/// problems.
fn surface_policies(
    errors: &mut Vec<String>,
    config: &Config,
    task: &TaskConfig,
    live: &ModelSpec,
) -> Option<Vec<(String, Arc<Policy>)>> {
    let mut resolved: BTreeMap<&str, Arc<Policy>> = BTreeMap::new();
    let mut surfaces = Vec::with_capacity(task.surfaces.len());
    let mut ok = true;
    for (surface, name) in &task.surfaces {
        if !resolved.contains_key(name.as_str()) {
            let key = format!("tasks.{}.surfaces.{surface}", task.name);
            match policy(errors, config, &key, &Some(name.clone()), live) {
                Some(p) => resolved.insert(name, p),
                None => {
                    ok = false;
                    continue;
                }
            };
        }
        surfaces.push((surface.clone(), resolved[name.as_str()].clone()));
    }
    ok.then_some(surfaces)
}

/// Sets the shadow CPU budget from `shadow.max_cpu_fraction` and the process's CPU capacity,
/// shared by the shadow models now loaded.
fn configure_budget(shadow_cpu: &Arc<ShadowCpu>, config: &Config, models: &BTreeMap<String, LoadedModel>) {
    use crate::inference::cpu::{self, CapacitySource};
    let capacity = cpu::process_capacity();
    metrics::process_cpu_capacity(capacity);
    let shadow_models = models.values().filter(|m| m.role == Role::Shadow).count();
    let allowed = cpu::allowed_cpus().ok();
    let one_cpu = allowed.as_ref().is_some_and(|cpus| cpus.count() == 1);
    let fraction = budget_fraction(&config.shadow, one_cpu);
    let budget = fraction * capacity.cpus;
    shadow_cpu.configure(budget, shadow_models);
    let reserve = config.shadow.cpu_reserve;
    // Without shadow models there is nothing to hold back: no sampler thread, no log lines.
    let headroom = allowed.filter(|_| shadow_models > 0 && reserve > 0.0).map(|cpus| {
        let limits = Limits { capacity: capacity.cpus, quota: capacity.source != CapacitySource::Affinity, reserve };
        (limits, cpus)
    });
    shadow_cpu.set_headroom(headroom);
    if shadow_models == 0 {
        return;
    }
    tracing::info!(
        cpus = capacity.cpus,
        source = capacity.source.as_str(),
        max_cpu_fraction = fraction,
        budget_cpu_per_second = budget,
        cpu_reserve = reserve,
        "shadow CPU budget"
    );
    if fraction < config.shadow.max_cpu_fraction {
        tracing::info!(
            max_cpu_fraction = config.shadow.max_cpu_fraction,
            max_cpu_fraction_on_one_cpu = config.shadow.max_cpu_fraction_on_one_cpu,
            "the process may run on one CPU only, which shadows share with live: their budget is \
             shadow.max_cpu_fraction_on_one_cpu (docs/shadow.md, \"Sizing the budget\")"
        );
    }
}

/// The share of the CPU capacity shadows may spend: `max_cpu_fraction`, at most
/// `max_cpu_fraction_on_one_cpu` when the process may run on one CPU only. There every shadow
/// batch runs on live's core, and even under `SCHED_IDLE` leaves live's caches cold: the cost
/// to live follows the shadow's CPU share, not its priority.
fn budget_fraction(shadow: &ShadowPolicy, one_cpu: bool) -> f64 {
    let f = shadow.max_cpu_fraction;
    if one_cpu { f.min(shadow.max_cpu_fraction_on_one_cpu) } else { f }
}

/// The policy a model decides with: the named `[policies]` entry resolved against its labels,
/// or its manifest's own. `None` after recording the problem (under `key`).
fn policy(
    errors: &mut Vec<String>,
    config: &Config,
    key: &str,
    name: &Option<String>,
    model: &ModelSpec,
) -> Option<Arc<Policy>> {
    let Some(name) = name else { return Some(Arc::new(model.policy.clone())) };
    // Validation already checked the name exists.
    let spec = config.policies.get(name)?;
    match spec.resolve(&model.labels) {
        Ok(p) => Some(Arc::new(p)),
        Err(unknown) => {
            errors.push(format!(
                "{key}: policies.{name} has thresholds for {unknown:?}, which model {:?} does not output (its labels: {:?})",
                model.name, model.labels
            ));
            None
        }
    }
}

/// What must be equal for a reload to keep a model's running workers: where the package is,
/// what is in it, the role and the worker settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Fingerprint {
    dir: std::path::PathBuf,
    manifest_sha256: String,
    model_sha256: String,
    tokenizer_sha256: String,
    role: Role,
    settings: WorkerSettings,
}

impl Fingerprint {
    fn new(package: &Package, role: Role, settings: WorkerSettings) -> Fingerprint {
        let spec = &package.spec;
        Fingerprint {
            dir: spec.dir.clone(),
            manifest_sha256: spec.manifest_sha256.clone(),
            model_sha256: spec.model_sha256.clone(),
            tokenizer_sha256: spec.tokenizer_sha256.clone(),
            role,
            settings,
        }
    }
}

/// Waits for worker threads to finish (their queues must be closed first).
pub fn join_all(threads: Vec<JoinHandle<()>>) {
    for t in threads {
        let _ = t.join();
    }
}
