//! The serving state: every task and the model that answers it, behind one pointer that is
//! swapped whole (at start-up today, on reload later). Requests load it once and keep their
//! `Arc` for their whole life, so a swap never changes a request half-way.

use std::sync::Arc;

use arc_swap::ArcSwapOption;

use crate::shadow::ShadowPair;
use crate::worker::ModelHandle;

/// One task, its live model and its shadows.
pub struct TaskEntry {
    pub name: String,
    pub live: ModelHandle,
    pub shadows: Vec<Arc<ShadowPair>>,
}

/// Everything a request needs to be answered.
pub struct ServingState {
    /// In config order; the order of results when a request names no tasks.
    pub tasks: Vec<TaskEntry>,
}

impl ServingState {
    pub fn task(&self, name: &str) -> Option<&TaskEntry> {
        self.tasks.iter().find(|t| t.name == name)
    }

    pub fn task_names(&self) -> Vec<&str> {
        self.tasks.iter().map(|t| t.name.as_str()).collect()
    }
}

/// A cheap, cloneable handle to the current serving state; `None` until models are loaded.
#[derive(Clone, Default)]
pub struct Registry {
    current: Arc<ArcSwapOption<ServingState>>,
}

impl Registry {
    pub fn load(&self) -> Option<Arc<ServingState>> {
        self.current.load_full()
    }

    pub fn store(&self, state: Option<Arc<ServingState>>) {
        self.current.store(state);
    }
}
