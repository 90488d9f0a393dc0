//! `modserve.v1.Admin`: reload, effective config, loaded models.

use tonic::{Request, Response, Status};

use super::pb::admin_server::Admin;
use super::pb::{
    GetConfigRequest, GetConfigResponse, ListModelsRequest, ListModelsResponse, LoadedModel, ReloadRequest,
    ReloadResponse,
};
use crate::metrics::ReloadTrigger;
use crate::registry::Registry;
use crate::reload::ReloadHandle;

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
        let models = state
            .models
            .iter()
            .map(|(name, m)| {
                let spec = m.handle.spec();
                LoadedModel {
                    name: name.clone(),
                    version: spec.version.clone(),
                    task: spec.task.clone(),
                    role: m.role.as_str().to_string(),
                    sha256: spec.model_sha256.clone(),
                    tokenizer_sha256: spec.tokenizer_sha256.clone(),
                    loaded_at: humantime::format_rfc3339_millis(m.loaded_at).to_string(),
                    load_seconds: m.load_seconds,
                    sample_rate: m.sample_rate,
                    policy_name: spec.policy.name.clone(),
                    policy_version: spec.policy.version.clone(),
                    path: spec.dir.display().to_string(),
                }
            })
            .collect();
        Ok(Response::new(ListModelsResponse { models, generation: state.generation }))
    }
}
