//! `modserve.v1.Admin`: reload, effective config, loaded models.

use tonic::{Request, Response, Status};

use super::pb::admin_server::Admin;
use super::pb::{
    GetConfigRequest, GetConfigResponse, ListModelsRequest, ListModelsResponse, LoadedModel, ReloadRequest,
    ReloadResponse, SurfacePolicy,
};
use crate::control::registry::Registry;
use crate::control::reload::ReloadHandle;
use crate::metrics::{ReloadTrigger, Role};
use crate::policy::Policy;

pub struct AdminService {
    registry: Registry,
    reload: ReloadHandle,
}

impl AdminService {
    pub fn new(registry: Registry, reload: ReloadHandle) -> AdminService {
        AdminService { registry, reload }
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn reload(&self, _: Request<ReloadRequest>) -> Result<Response<ReloadResponse>, Status> {
        let outcome = self.reload.reload(ReloadTrigger::Admin).await;
        Ok(Response::new(ReloadResponse {
            applied: outcome.applied,
            generation: outcome.generation,
            errors: outcome.errors,
            config_sha256: outcome.config_sha256,
        }))
    }

    async fn get_config(&self, _: Request<GetConfigRequest>) -> Result<Response<GetConfigResponse>, Status> {
        let state = self.registry.load().ok_or_else(|| Status::unavailable("models are still loading"))?;
        let effective_json = serde_json::to_string_pretty(&*state.config)
            .map_err(|e| Status::internal(format!("cannot render the config: {e}")))?;
        Ok(Response::new(GetConfigResponse {
            effective_json,
            generation: state.generation,
            config_sha256: state.config_sha256.clone(),
            source: state.config.source.display().to_string(),
        }))
    }

    async fn list_models(&self, _: Request<ListModelsRequest>) -> Result<Response<ListModelsResponse>, Status> {
        let state = self.registry.load().ok_or_else(|| Status::unavailable("models are still loading"))?;
        // One entry per use: the live model of each task with the task's policy, then each shadow
        // with its own (a policy-only shadow lists the live model again, under its policy).
        let on = |surface: &str, policy: &Policy| SurfacePolicy {
            surface: surface.to_string(),
            policy_name: policy.name.clone(),
            policy_version: policy.version.clone(),
        };
        let entry = |handle: &crate::inference::worker::ModelHandle,
                     role: &str,
                     policy: &Policy,
                     sample_rate: f64,
                     surfaces: Vec<SurfacePolicy>| {
            let spec = handle.spec();
            let loaded = state.models.get(&spec.name);
            LoadedModel {
                name: spec.name.clone(),
                version: spec.version.clone(),
                task: spec.task.clone(),
                role: role.to_string(),
                sha256: spec.model_sha256.clone(),
                tokenizer_sha256: spec.tokenizer_sha256.clone(),
                loaded_at: loaded
                    .map(|m| humantime::format_rfc3339_millis(m.loaded_at).to_string())
                    .unwrap_or_default(),
                load_seconds: loaded.map_or(0.0, |m| m.load_seconds),
                sample_rate,
                policy_name: policy.name.clone(),
                policy_version: policy.version.clone(),
                path: spec.dir.display().to_string(),
                surfaces,
            }
        };
        let mut models = Vec::new();
        for task in &state.tasks {
            let surfaces = task.surfaces.iter().map(|s| on(&s.name, &s.policy)).collect();
            models.push(entry(&task.live, Role::Live.as_str(), &task.policy, 1.0, surfaces));
            for pair in &task.shadows {
                let surfaces = pair.offered_surfaces().map(|name| on(name, &pair.decision_policy)).collect();
                let policy = &pair.decision_policy;
                models.push(entry(&pair.shadow, Role::Shadow.as_str(), policy, pair.sample_rate, surfaces));
            }
        }
        Ok(Response::new(ListModelsResponse { models, generation: state.generation }))
    }
}
