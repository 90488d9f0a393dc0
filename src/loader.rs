//! Builds a `ServingState` from a validated `Config`: loads and verifies every package a task
//! uses, checks it against the config, starts its workers. Blocking: run it off the runtime.
//! Every problem is collected, so one run reports all of them.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use ort::environment::Environment;

use crate::config::Config;
use crate::disagreement::DisagreementLog;
use crate::metrics::Role;
use crate::model::Package;
use crate::registry::{ServingState, TaskEntry};
use crate::shadow::ShadowPair;
use crate::worker::{self, WorkerPool};

/// A loaded state and the worker threads behind it (joined after the state is dropped).
pub struct Loaded {
    pub state: ServingState,
    pub threads: Vec<JoinHandle<()>>,
}

/// Loads the live model of every task. With `all_models`, also loads models no task uses
/// (what `check-config` wants: every configured package must be sound).
pub fn load(
    config: &Config,
    env: &Environment,
    all_models: bool,
    log: Option<&DisagreementLog>,
) -> Result<Loaded, Vec<String>> {
    let mut errors = Vec::new();
    let mut pools: BTreeMap<&str, WorkerPool> = BTreeMap::new();
    let live: Vec<&str> = config.tasks.iter().map(|t| t.live.as_str()).collect();
    let shadows: Vec<&str> = config.tasks.iter().flat_map(|t| t.shadows.iter().map(|s| s.model.as_str())).collect();
    for (name, model) in &config.models {
        let role = if live.contains(&name.as_str()) {
            Role::Live
        } else if shadows.contains(&name.as_str()) {
            Role::Shadow
        } else if all_models {
            Role::Live
        } else {
            tracing::warn!(model = %name, "models.{name} is not used by any task; not loaded");
            continue;
        };
        let started = Instant::now();
        let package = match Package::load(&model.path) {
            Ok(p) => p,
            Err(e) => {
                errors.push(format!("models.{name}: {e}"));
                continue;
            }
        };
        if package.spec.name != *name {
            errors.push(format!(
                "models.{name}: the package at {} is named {:?} in its manifest; use that name as the key",
                model.path.display(),
                package.spec.name
            ));
            continue;
        }
        let mut settings = model.workers;
        if role == Role::Shadow {
            settings.nice = config.shadow_nice;
        }
        match worker::start(env, &package, role, settings) {
            Ok(pool) => {
                tracing::info!(
                    model = %name,
                    version = %package.spec.version,
                    task = %package.spec.task,
                    role = role.as_str(),
                    sha256 = %package.spec.sha256_prefix(),
                    threads = pool.threads.len(),
                    load_ms = started.elapsed().as_millis() as u64,
                    "model loaded and warmed up"
                );
                pools.insert(name, pool);
            }
            Err(e) => errors.push(format!("models.{name}: {e}")),
        }
    }
    let mut tasks = Vec::new();
    for task in &config.tasks {
        let Some(pool) = pools.get(task.live.as_str()) else {
            continue;
        };
        if pool.handle.spec().task != task.name {
            errors.push(format!(
                "tasks.{}.live: model {:?} answers task {:?} (its manifest says so), not {:?}",
                task.name,
                task.live,
                pool.handle.spec().task,
                task.name
            ));
            continue;
        }
        let mut pairs = Vec::new();
        for sh in &task.shadows {
            let Some(shadow_pool) = pools.get(sh.model.as_str()) else { continue };
            if shadow_pool.handle.spec().task != task.name {
                errors.push(format!(
                    "tasks.{}.shadows: model {:?} answers task {:?} (its manifest says so), not {:?}",
                    task.name,
                    sh.model,
                    shadow_pool.handle.spec().task,
                    task.name
                ));
                continue;
            }
            pairs.push(Arc::new(ShadowPair::new(
                &task.name,
                pool.handle.clone(),
                shadow_pool.handle.clone(),
                sh.sample_rate,
                sh.salt.clone(),
                config.shadow,
                log.cloned(),
            )));
        }
        tasks.push(TaskEntry { name: task.name.clone(), live: pool.handle.clone(), shadows: pairs });
    }
    let threads = pools.into_values().flat_map(|p| p.threads).collect();
    if !errors.is_empty() {
        // Dropping the handles closes the queues, so these threads exit promptly.
        drop(tasks);
        join_all(threads);
        return Err(errors);
    }
    Ok(Loaded { state: ServingState { tasks }, threads })
}

/// Waits for worker threads to finish (their queues must be closed first).
pub fn join_all(threads: Vec<JoinHandle<()>>) {
    for t in threads {
        let _ = t.join();
    }
}
