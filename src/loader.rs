//! Builds a `ServingState` from a validated `Config`: loads and verifies every package a task
//! uses, checks it against the config, starts its workers. Blocking: run it off the runtime.
//! Every problem is collected, so one run reports all of them.

use std::collections::BTreeMap;
use std::thread::JoinHandle;
use std::time::Instant;

use ort::environment::Environment;

use crate::config::Config;
use crate::metrics::Role;
use crate::model::Package;
use crate::registry::{ServingState, TaskEntry};
use crate::worker::{self, WorkerPool};

/// A loaded state and the worker threads behind it (joined after the state is dropped).
pub struct Loaded {
    pub state: ServingState,
    pub threads: Vec<JoinHandle<()>>,
}

/// Loads the live model of every task. With `all_models`, also loads models no task uses
/// (what `check-config` wants: every configured package must be sound).
pub fn load(config: &Config, env: &Environment, all_models: bool) -> Result<Loaded, Vec<String>> {
    let mut errors = Vec::new();
    let mut pools: BTreeMap<&str, WorkerPool> = BTreeMap::new();
    let used: Vec<&str> = config.tasks.iter().map(|t| t.live.as_str()).collect();
    for (name, model) in &config.models {
        if !used.contains(&name.as_str()) && !all_models {
            tracing::warn!(model = %name, "models.{name} is not used by any task; not loaded");
            continue;
        }
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
        match worker::start(env, &package, Role::Live, model.workers) {
            Ok(pool) => {
                tracing::info!(
                    model = %name,
                    version = %package.spec.version,
                    task = %package.spec.task,
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
        tasks.push(TaskEntry {
            name: task.name.clone(),
            live: pool.handle.clone(),
        });
    }
    let threads = pools.into_values().flat_map(|p| p.threads).collect();
    if !errors.is_empty() {
        // Dropping the handles closes the queues, so these threads exit promptly.
        drop(tasks);
        join_all(threads);
        return Err(errors);
    }
    Ok(Loaded {
        state: ServingState { tasks },
        threads,
    })
}

/// Waits for worker threads to finish (their queues must be closed first).
pub fn join_all(threads: Vec<JoinHandle<()>>) {
    for t in threads {
        let _ = t.join();
    }
}
