//! `modserve tune --apply`: the proposal written into the config file itself, as its
//! `[policies.NAME]` table and a policy-only shadow of the task at `sample_rate = 1.0` (offered
//! only the surface tuned for, with `--surface`), so the running server judges it on live
//! traffic by the same `[launch]` criteria as any candidate.
//!
//! The edited text is checked as a whole (`Config::parse`, as the server does on reload) before
//! the file is replaced, and replaced by a rename, so a server watching the file never reads half
//! of it. The rest of the file (comments, order, formatting) is kept: only the two additions
//! change. `--reload` then asks a running server to load it at once (`Admin/Reload`).

use std::path::{Path, PathBuf};

use toml_edit::{Array, DocumentMut, InlineTable, Item, Table, Value};

use super::{Tuning, render};
use crate::config::{Config, Overrides};

/// Why `--apply` left the config as it was.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("not every label got a proposal, so there is nothing to apply (see the messages above)")]
    Incomplete,
    #[error("{path} already has [policies.{name}]: pick another --name (a policy's thresholds never change in place)")]
    NameTaken { path: PathBuf, name: String },
    #[error("{path}: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error("{path}: tasks.{task}.shadows is neither an array nor an array of tables")]
    ShadowsShape { path: PathBuf, task: String },
    #[error("{path}: the edited config would not load, so it was not written:\n  - {}", .errors.join("\n  - "))]
    Invalid { path: PathBuf, errors: Vec<String> },
    #[error(
        "{path}: cannot write it ({source}); a config mounted read-only (a ConfigMap) is edited where it is kept, with the snippet printed above"
    )]
    Write { path: PathBuf, source: std::io::Error },
}

/// What was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// sha256 of the new file, as `modserve_config_info` and Admin/Reload report it.
    pub sha256: String,
    /// False when the task already had this policy-only shadow (only the table was added).
    pub shadow_added: bool,
}

/// Adds the tuned policy and its policy-only shadow to the config at `path`.
pub fn apply(path: &Path, tuning: &Tuning, overrides: &Overrides) -> Result<Applied, ApplyError> {
    if !tuning.complete() {
        return Err(ApplyError::Incomplete);
    }
    let read_error = |reason: String| ApplyError::Read { path: path.to_path_buf(), reason };
    let text = std::fs::read_to_string(path).map_err(|e| read_error(e.to_string()))?;
    let mut doc: DocumentMut = text.parse().map_err(|e: toml_edit::TomlError| read_error(e.to_string()))?;
    add_policy(&mut doc, path, tuning)?;
    let shadow_added = add_shadow(&mut doc, path, tuning)?;
    let edited = doc.to_string();
    if let Err(errors) = Config::parse(&edited, path, overrides) {
        return Err(ApplyError::Invalid { path: path.to_path_buf(), errors });
    }
    replace(path, &edited).map_err(|source| ApplyError::Write { path: path.to_path_buf(), source })?;
    Ok(Applied { sha256: crate::config::sha256_hex(edited.as_bytes()), shadow_added })
}

/// `[policies.NAME]` as `modserve tune` prints it, evidence comments included.
fn add_policy(doc: &mut DocumentMut, path: &Path, tuning: &Tuning) -> Result<(), ApplyError> {
    let snippet: DocumentMut =
        render::toml(tuning).parse().expect("modserve tune renders valid TOML (tested in render)");
    let table = snippet["policies"][&tuning.name].clone();
    let policies = doc.entry("policies").or_insert_with(|| {
        let mut t = Table::new();
        t.set_implicit(true);
        Item::Table(t)
    });
    let Some(policies) = policies.as_table_like_mut() else {
        return Err(ApplyError::Read { path: path.to_path_buf(), reason: "`policies` is not a table".into() });
    };
    if policies.contains_key(&tuning.name) {
        return Err(ApplyError::NameTaken { path: path.to_path_buf(), name: tuning.name.clone() });
    }
    policies.insert(&tuning.name, table);
    Ok(())
}

/// `{ model = LIVE, policy = NAME, sample_rate = 1.0 }` in `tasks.TASK.shadows`, unless there.
fn add_shadow(doc: &mut DocumentMut, path: &Path, tuning: &Tuning) -> Result<bool, ApplyError> {
    let shape = || ApplyError::ShadowsShape { path: path.to_path_buf(), task: tuning.task.clone() };
    let Some(task) = doc.get_mut("tasks").and_then(|t| t.get_mut(&tuning.task)).and_then(Item::as_table_like_mut)
    else {
        // The task was found in this config by `tune`, so it is there unless it is defined in a
        // shape toml_edit cannot edit; Config::parse then says what is wrong.
        return Err(ApplyError::Read { path: path.to_path_buf(), reason: format!("no [tasks.{}] table", tuning.task) });
    };
    let is_ours = |model: Option<&str>, policy: Option<&str>| {
        model == Some(tuning.model.as_str()) && policy == Some(tuning.name.as_str())
    };
    let shadows = task.entry("shadows").or_insert(Item::Value(Value::Array(Array::new())));
    match shadows {
        Item::Value(Value::Array(list)) => {
            let listed = list
                .iter()
                .filter_map(Value::as_inline_table)
                .any(|t| is_ours(t.get("model").and_then(Value::as_str), t.get("policy").and_then(Value::as_str)));
            if listed {
                return Ok(false);
            }
            let mut entry = InlineTable::new();
            entry.insert("model", tuning.model.as_str().into());
            entry.insert("policy", tuning.name.as_str().into());
            entry.insert("sample_rate", 1.0.into());
            if let Some(surfaces) = surfaces(tuning) {
                entry.insert("surfaces", Value::Array(surfaces));
            }
            list.push(entry);
        }
        Item::ArrayOfTables(list) => {
            let listed = list
                .iter()
                .any(|t| is_ours(t.get("model").and_then(Item::as_str), t.get("policy").and_then(Item::as_str)));
            if listed {
                return Ok(false);
            }
            let mut entry = Table::new();
            entry.insert("model", toml_edit::value(tuning.model.as_str()));
            entry.insert("policy", toml_edit::value(tuning.name.as_str()));
            entry.insert("sample_rate", toml_edit::value(1.0));
            if let Some(surfaces) = surfaces(tuning) {
                entry.insert("surfaces", toml_edit::value(surfaces));
            }
            list.push(entry);
        }
        _ => return Err(shape()),
    }
    Ok(true)
}

/// `["SURFACE"]` for a policy tuned on one surface: its shadow is tried there only.
fn surfaces(tuning: &Tuning) -> Option<Array> {
    tuning.surface.as_ref().map(|s| Array::from_iter([s.as_str()]))
}

/// Writes `text` beside `path` and renames it over `path`: a reader sees the old file or the new.
fn replace(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let temp = dir.join(format!(".{name}.tune-{}", std::process::id()));
    let mut file = std::fs::File::create(&temp)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()?;
    if let Ok(meta) = std::fs::metadata(path) {
        std::fs::set_permissions(&temp, meta.permissions())?;
    }
    std::fs::rename(&temp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&temp);
    })
}

/// Why `--reload` did not load the applied config.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error(
        "--reload: the config has [tls], which --reload does not speak; the server's file watch (server.watch_config) or SIGHUP loads the applied file"
    )]
    Tls,
    #[error("admin.token: {0}")]
    Token(String),
    #[error("--reload {addr}: {reason}")]
    Call { addr: String, reason: String },
    #[error("--reload {addr}: the server refused the new config and keeps serving the old one:\n  - {}", .errors.join("\n  - "))]
    Refused { addr: String, errors: Vec<String> },
}

/// Asks the server at `addr` (its Admin listener: `admin.listen`, else `server.grpc_listen`) to
/// load its config file now, with the admin token `config` names. Returns the generation now
/// serving.
pub async fn reload(addr: &str, config: &Config) -> Result<u64, ReloadError> {
    use crate::serving::grpc::pb::{ReloadRequest, admin_client::AdminClient};
    if config.tls.is_some() {
        return Err(ReloadError::Tls);
    }
    let call = |reason: String| ReloadError::Call { addr: addr.to_string(), reason };
    let token = config.admin.token.as_ref().map(|t| t.read()).transpose().map_err(ReloadError::Token)?;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| call(e.to_string()))?
        .connect_timeout(std::time::Duration::from_secs(5))
        .timeout(std::time::Duration::from_secs(60))
        .connect()
        .await
        .map_err(|e| call(format!("cannot connect ({e})")))?;
    let mut request = tonic::Request::new(ReloadRequest {});
    if let Some(token) = token {
        let value =
            format!("Bearer {token}").parse().map_err(|_| ReloadError::Token("not a valid header value".into()))?;
        request.metadata_mut().insert("authorization", value);
    }
    let answer = AdminClient::new(channel)
        .reload(request)
        .await
        .map_err(|s| call(format!("{:?}: {}", s.code(), s.message())))?
        .into_inner();
    if !answer.applied {
        return Err(ReloadError::Refused { addr: addr.to_string(), errors: answer.errors });
    }
    Ok(answer.generation)
}
