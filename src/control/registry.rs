//! The serving state: every task, the model that answers it and its shadows, behind one pointer
//! that is swapped whole (at start-up and on each reload). Requests load it once and keep their
//! `Arc` for their whole life, so a swap never changes a request half-way; old models are
//! released when the last request using them finishes.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwapOption;

use crate::config::{Config, UnknownSurface};
use crate::error::Error;
use crate::inference::worker::ModelHandle;
use crate::metrics::{InputMetrics, Role, TaskMetrics, VerdictMetrics};
use crate::policy::{Decision, Policy};
use crate::shadow::ShadowPair;

/// One task, its live model and policy, and its shadows.
pub struct TaskEntry {
    pub name: String,
    pub live: ModelHandle,
    /// The live decision policy: `tasks.NAME.policy`, or the live model's manifest policy.
    pub policy: Arc<Policy>,
    pub metrics: TaskMetrics,
    /// Moderator verdicts counted against the live decisions.
    pub verdicts: VerdictMetrics,
    /// `[tasks.NAME.surfaces]`, by name: a `Surface` indexes it.
    pub surfaces: Vec<SurfaceEntry>,
    pub unknown_surface: UnknownSurface,
    /// Reviews on a surface not in `surfaces`, decided under `policy` (`UnknownSurface::Default`).
    pub surface_fallbacks: ::metrics::Counter,
    pub shadows: Vec<Arc<ShadowPair>>,
}

/// One of a task's surfaces: the live policy there and the live series on it.
pub struct SurfaceEntry {
    pub name: String,
    pub policy: Arc<Policy>,
    /// The live decisions on this surface.
    pub metrics: TaskMetrics,
    pub verdicts: VerdictMetrics,
}

pub use crate::request::Surface;

impl TaskEntry {
    /// True when the live model or a shadow outputs `label`.
    pub fn has_label(&self, label: &str) -> bool {
        self.live
            .spec()
            .labels
            .iter()
            .chain(self.shadows.iter().flat_map(|s| &s.shadow.spec().labels))
            .any(|l| l == label)
    }

    /// The surface `asked` names on this task; `field` names the request field in the error for
    /// an unknown one. The bool is true when an unknown surface fell back to the default.
    pub fn surface(&self, field: &str, asked: Option<&str>) -> Result<(Surface, bool), Error> {
        let Some(asked) = asked.filter(|_| !self.surfaces.is_empty()) else { return Ok((None, false)) };
        if let Some(i) = self.surfaces.iter().position(|s| s.name == asked) {
            return Ok((Some(i), false));
        }
        match self.unknown_surface {
            UnknownSurface::Default => Ok((None, true)),
            UnknownSurface::Reject => Err(Error::invalid(
                field,
                format!(
                    "unknown surface {} for task {}; its surfaces are {:?}",
                    crate::error::excerpt(asked),
                    self.name,
                    self.surfaces.iter().map(|s| s.name.as_str()).collect::<Vec<_>>()
                ),
            )),
        }
    }

    /// The surface named `name`, as a verdict resolved it (`None` when a reload removed it).
    pub fn surface_named(&self, name: Option<&str>) -> Surface {
        name.and_then(|n| self.surfaces.iter().position(|s| s.name == n))
    }

    /// The live policy on `surface`.
    pub fn policy_on(&self, surface: Surface) -> &Arc<Policy> {
        surface.map_or(&self.policy, |i| &self.surfaces[i].policy)
    }

    /// Records one review's live scores and its decision on `surface`.
    pub fn answered(&self, surface: Surface, scores: &[f32], decision: Decision) {
        match surface {
            None => self.metrics.answered(scores, decision),
            Some(i) => {
                self.metrics.scores(scores);
                self.surfaces[i].metrics.decided(decision);
            }
        }
    }

    /// The live model's verdict counts on `surface`.
    pub fn verdicts_on(&self, surface: Surface) -> &VerdictMetrics {
        surface.map_or(&self.verdicts, |i| &self.surfaces[i].verdicts)
    }
}

/// A loaded model and where it came from.
#[derive(Clone)]
pub struct LoadedModel {
    pub handle: ModelHandle,
    pub role: Role,
    /// Package content, role and worker settings: equal fingerprints let a reload keep the
    /// running workers instead of building new ones.
    pub fingerprint: crate::control::loader::Fingerprint,
    pub loaded_at: SystemTime,
    pub load_seconds: f64,
    /// For shadows, the share of reviews sampled; 1 for live models.
    pub sample_rate: f64,
}

/// Everything a request needs to be answered.
pub struct ServingState {
    /// 1 for the config loaded at start-up, +1 per applied reload.
    pub generation: u64,
    pub config: Arc<Config>,
    /// sha256 of the config file's bytes.
    pub config_sha256: String,
    /// In config order; the order of results when a request names no tasks.
    pub tasks: Vec<TaskEntry>,
    /// Every loaded model by name.
    pub models: BTreeMap<String, LoadedModel>,
    pub input: InputMetrics,
    /// The server's shadow CPU budget and use, handed from state to state on reload.
    pub shadow_cpu: Arc<crate::shadow::budget::ShadowCpu>,
    /// The decision journal (started once, handed to every state); `None` when off.
    pub journal: Option<crate::journal::Journal>,
}

impl ServingState {
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

    /// Replaces the state; returns the previous one.
    pub fn swap(&self, state: Option<Arc<ServingState>>) -> Option<Arc<ServingState>> {
        self.current.swap(state)
    }
}
