//! Config reload end to end: the Admin RPC, the file watcher (including a Kubernetes ConfigMap
//! style symlink swap), fixed settings, bad configs, promotion, tokens, and a soak under load.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::common::*;
use modserve::config::{Config, Overrides};
use modserve::serving::grpc::pb;
use modserve::serving::grpc::pb::admin_client::AdminClient;
use tonic::Code;
use tonic::transport::Channel;

/// A config file in `dir` with absolute fixture paths; `tasks` is the `[tasks]` part.
fn write_config(path: &Path, server_extra: &str, tasks: &str) {
    let mut text = format!(
        "[server]\ngrpc_listen = \"127.0.0.1:0\"\nmetrics_listen = \"127.0.0.1:0\"\nshutdown_grace = \"5s\"\nonnxruntime_lib = {:?}\n{server_extra}\n",
        ort_lib().display().to_string()
    );
    for m in ["tiny-abuse", "tiny-abuse-v2", "tiny-fraud", "tiny-faulty", "broken-corrupt-onnx", "broken-sha256"] {
        text += &format!("[models.{m}]\npath = {:?}\n", fixture(m).display().to_string());
    }
    text += tasks;
    std::fs::write(path, unbounded_shadows(&text)).unwrap();
}

const V1: &str = "[tasks.abuse]\nlive = \"tiny-abuse\"\n";
const V1_SHADOW_V2: &str =
    "[tasks.abuse]\nlive = \"tiny-abuse\"\nshadows = [{ model = \"tiny-abuse-v2\", sample_rate = 1.0 }]\n";
const PROMOTED: &str =
    "[tasks.abuse]\nlive = \"tiny-abuse-v2\"\nshadows = [{ model = \"tiny-abuse\", sample_rate = 1.0 }]\n";

async fn start(path: &Path) -> TestServer {
    let config = Config::load(path, &Overrides::default()).expect("valid config");
    TestServer::start(config).await
}

async fn admin(channel: Channel) -> AdminClient<Channel> {
    AdminClient::new(channel)
}

async fn live_model(server: &TestServer) -> String {
    let mut client = server.client().await;
    let resp = client.classify(request(vec![review("x", "this is dumb")])).await.unwrap().into_inner();
    resp.results[0].tasks[0].model.as_ref().unwrap().name.clone()
}

async fn models(admin: &mut AdminClient<Channel>) -> Vec<(String, String)> {
    let list = admin.list_models(pb::ListModelsRequest {}).await.unwrap().into_inner();
    list.models.into_iter().map(|m| (m.name, m.role)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_reload_applies_good_configs_and_refuses_bad_ones() {
    let _guard = exclusive().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("modserve.toml");
    write_config(&path, "watch_config = false", V1);
    let server = start(&path).await;
    let base = server.scrape().await;
    let mut admin = admin(server.channel().await).await;
    assert_eq!(models(&mut admin).await, [("tiny-abuse".to_string(), "live".to_string())]);

    // Add a shadow.
    write_config(&path, "watch_config = false", V1_SHADOW_V2);
    let r = admin.reload(pb::ReloadRequest {}).await.unwrap().into_inner();
    assert!(r.applied, "{:?}", r.errors);
    assert_eq!(r.generation, 2);
    assert_eq!(
        models(&mut admin).await,
        [("tiny-abuse".into(), "live".into()), ("tiny-abuse-v2".into(), "shadow".into())]
    );
    assert_eq!(live_model(&server).await, "tiny-abuse");

    // The same file and model files again: nothing to reload, so nothing is (Reload in a loop
    // costs a stat of each package file, not a re-read and re-hash of every package).
    let again = admin.reload(pb::ReloadRequest {}).await.unwrap().into_inner();
    assert!(again.applied && again.errors.is_empty(), "{again:?}");
    assert_eq!(again.generation, 2, "an unchanged reload starts no new generation");

    // Promote the shadow, demote the live model.
    write_config(&path, "watch_config = false", PROMOTED);
    let r = admin.reload(pb::ReloadRequest {}).await.unwrap().into_inner();
    assert!(r.applied, "{:?}", r.errors);
    assert_eq!(live_model(&server).await, "tiny-abuse-v2");
    // Listed per task: the live model first, then its shadows.
    assert_eq!(
        models(&mut admin).await,
        [("tiny-abuse-v2".into(), "live".into()), ("tiny-abuse".into(), "shadow".into())]
    );

    // Bad configs: each refused with its reason; the promoted config keeps serving.
    let bad: [(&str, String, &str); 5] = [
        ("syntax error", "[tasks.abuse\nlive = 1".into(), "line 1"),
        ("unknown model", "[tasks.abuse]\nlive = \"nope\"\n".into(), "tasks.abuse.live: no model named \"nope\""),
        (
            "corrupt onnx",
            "[tasks.abuse]\nlive = \"broken-corrupt-onnx\"\n".into(),
            "ONNX Runtime cannot load the model",
        ),
        ("sha256 mismatch", "[tasks.abuse]\nlive = \"broken-sha256\"\n".into(), "sha256 mismatch"),
        ("fixed setting", String::new(), "server.grpc_listen cannot change at run time"),
    ];
    for (what, tasks, reason) in bad {
        if what == "fixed setting" {
            write_config(&path, "watch_config = false", PROMOTED);
            let text = std::fs::read_to_string(&path)
                .unwrap()
                .replace("grpc_listen = \"127.0.0.1:0\"", "grpc_listen = \"127.0.0.1:1\"");
            std::fs::write(&path, text).unwrap();
        } else if what == "syntax error" {
            std::fs::write(&path, tasks).unwrap();
        } else {
            write_config(&path, "watch_config = false", &tasks);
        }
        let r = admin.reload(pb::ReloadRequest {}).await.unwrap().into_inner();
        assert!(!r.applied, "{what} was applied");
        assert_eq!(r.generation, 3, "{what}: generation stays");
        assert!(r.errors.iter().any(|e| e.contains(reason)), "{what}: {:?} lacks {reason:?}", r.errors);
        assert_eq!(live_model(&server).await, "tiny-abuse-v2", "{what}: still serving the last good config");
        let scrape = server.scrape().await;
        assert_eq!(metric(&scrape, "modserve_config_last_reload_success", &[]), Some(0.0), "{what}");
    }
    let scrape = server.scrape().await;
    let reloads =
        |result| delta(&base, &scrape, "modserve_config_reloads_total", &[("trigger", "admin"), ("result", result)]);
    assert_eq!((reloads("success"), reloads("failure")), (2.0, 5.0));
    assert_eq!(metric(&scrape, "modserve_config_generation", &[]), Some(3.0));
    let config = admin.get_config(pb::GetConfigRequest {}).await.unwrap().into_inner();
    let json: serde_json::Value = serde_json::from_str(&config.effective_json).unwrap();
    assert_eq!(json["tasks"][0]["live"], "tiny-abuse-v2");
    assert_eq!(config.generation, 3);
    server.stop().await;
}

/// Kubernetes mounts a ConfigMap as `dir/modserve.toml -> ..data/modserve.toml` with
/// `..data -> ..<timestamp>`, and updates it by swapping the `..data` symlink atomically.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configmap_symlink_swap_triggers_exactly_one_reload() {
    let _guard = exclusive().await;
    let dir = tempfile::tempdir().unwrap();
    let v1 = dir.path().join("..2026_11_26_v1");
    let v2 = dir.path().join("..2026_11_26_v2");
    std::fs::create_dir(&v1).unwrap();
    std::fs::create_dir(&v2).unwrap();
    write_config(&v1.join("modserve.toml"), "watch_interval = \"100ms\"", V1);
    write_config(&v2.join("modserve.toml"), "watch_interval = \"100ms\"", PROMOTED);
    std::os::unix::fs::symlink(&v1, dir.path().join("..data")).unwrap();
    let path: PathBuf = dir.path().join("modserve.toml");
    std::os::unix::fs::symlink("..data/modserve.toml", &path).unwrap();
    let server = start(&path).await;
    let base = server.scrape().await;
    assert_eq!(live_model(&server).await, "tiny-abuse");

    let tmp = dir.path().join("..data_tmp");
    std::os::unix::fs::symlink(&v2, &tmp).unwrap();
    std::fs::rename(&tmp, dir.path().join("..data")).unwrap();

    let labels = [("trigger", "file"), ("result", "success")];
    assert_eq!(server.wait_for(&base, "modserve_config_reloads_total", &labels, 1.0).await, 1.0);
    assert_eq!(live_model(&server).await, "tiny-abuse-v2");
    // Ten more watch intervals: no second reload for the same content.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let scrape = server.scrape().await;
    assert_eq!(delta(&base, &scrape, "modserve_config_reloads_total", &labels), 1.0);
    assert_eq!(
        delta(&base, &scrape, "modserve_config_reloads_total", &[("trigger", "file"), ("result", "failure")]),
        0.0
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_calls_need_the_admin_token_and_can_have_their_own_port() {
    let _guard = exclusive().await;
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("admin-token");
    std::fs::write(&token, "s3cret-admin\n").unwrap();
    let path = dir.path().join("modserve.toml");
    write_config(&path, "watch_config = false", V1);
    let text = std::fs::read_to_string(&path).unwrap()
        + &format!("[admin]\nlisten = \"127.0.0.1:0\"\ntoken_file = {:?}\n", token.display().to_string());
    std::fs::write(&path, text).unwrap();
    let server = start(&path).await;
    let admin_addr = server.server.admin_addr.expect("admin has its own listener");
    let channel = Channel::from_shared(format!("http://{admin_addr}")).unwrap().connect().await.unwrap();
    let mut admin = AdminClient::new(channel.clone());
    let status = admin.list_models(pb::ListModelsRequest {}).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    let mut req = tonic::Request::new(pb::ListModelsRequest {});
    req.metadata_mut().insert("authorization", "Bearer wrong".parse().unwrap());
    assert_eq!(admin.list_models(req).await.unwrap_err().code(), Code::Unauthenticated);
    let mut req = tonic::Request::new(pb::ListModelsRequest {});
    req.metadata_mut().insert("authorization", "Bearer s3cret-admin".parse().unwrap());
    let list = admin.list_models(req).await.expect("token accepted").into_inner();
    assert_eq!(list.models.len(), 1);
    assert_eq!(list.models[0].sha256.len(), 64);
    // Admin is not served on the Moderation port when it has its own.
    let mut on_main = AdminClient::new(server.channel().await);
    assert_eq!(on_main.list_models(pb::ListModelsRequest {}).await.unwrap_err().code(), Code::Unimplemented);
    // Moderation needs no token here.
    assert_eq!(live_model(&server).await, "tiny-abuse");
    server.stop().await;
}

/// Continuous load from several clients while the config is reloaded many times, alternating
/// good configs (adding, removing and promoting shadows) and bad ones: no call fails, every
/// answer is right for one of the models that was live, and every reload is accounted for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_soak_under_load_fails_no_request() {
    let _guard = exclusive().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("modserve.toml");
    write_config(&path, "watch_config = false", V1);
    let server = start(&path).await;
    let base = server.scrape().await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut clients = Vec::new();
    for c in 0..4 {
        let mut client = server.client().await;
        let stop = stop.clone();
        clients.push(tokio::spawn(async move {
            let mut n = 0u64;
            // Bounded: stops when told, or after 100k calls at most.
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && n < 100_000 {
                let resp = client
                    .classify(request(vec![review(&format!("{c}-{n}"), "this is dumb"), review("b", "great product")]))
                    .await
                    .expect("no call fails during reloads")
                    .into_inner();
                let t = &resp.results[0].tasks[0];
                // v1 says REVIEW for "this is dumb", v2 says REJECT: the answer matches the model named.
                let model = t.model.as_ref().unwrap().name.as_str();
                let expected = match model {
                    "tiny-abuse" => "REVIEW",
                    "tiny-abuse-v2" => "REJECT",
                    other => panic!("unexpected live model {other}"),
                };
                assert_eq!(decision_name(t.decision), expected);
                assert_eq!(decision_name(resp.results[1].tasks[0].decision), "ALLOW");
                n += 1;
            }
            n
        }));
    }
    let mut admin = admin(server.channel().await).await;
    let cycle: [(&str, bool); 6] = [
        (V1_SHADOW_V2, true),
        (PROMOTED, true),
        ("[tasks.abuse]\nlive = \"broken-corrupt-onnx\"\n", false),
        (V1, true),
        ("[tasks.abuse]\nlive = \"nope\"\n", false),
        ("[tasks.abuse]\nlive = \"broken-sha256\"\n", false),
    ];
    let (mut good, mut bad) = (0.0, 0.0);
    for round in 0..4 {
        for (tasks, ok) in cycle {
            write_config(&path, "watch_config = false", tasks);
            let r = admin.reload(pb::ReloadRequest {}).await.unwrap().into_inner();
            assert_eq!(r.applied, ok, "round {round}: {tasks} -> {:?}", r.errors);
            if ok { good += 1.0 } else { bad += 1.0 }
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut calls = 0;
    for c in clients {
        calls += c.await.unwrap();
    }
    assert!(calls > 0);
    let scrape = server.scrape().await;
    assert_eq!(
        delta(&base, &scrape, "modserve_config_reloads_total", &[("trigger", "admin"), ("result", "success")]),
        good
    );
    assert_eq!(
        delta(&base, &scrape, "modserve_config_reloads_total", &[("trigger", "admin"), ("result", "failure")]),
        bad
    );
    assert_eq!(
        delta(&base, &scrape, "modserve_requests_total", &[("method", "Classify"), ("code", "OK")]),
        calls as f64
    );
    server.stop().await;
}

/// A reload that only adds a shadow keeps the live model's running workers (same load time), and
/// a Moderation token, when configured, is required on Classify.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unchanged_models_keep_their_workers_and_moderation_can_require_a_token() {
    let _guard = exclusive().await;
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("moderation-token");
    std::fs::write(&token, "ingest-token").unwrap();
    let path = dir.path().join("modserve.toml");
    let server_extra = format!("watch_config = false\nmoderation_token_file = {:?}", token.display().to_string());
    write_config(&path, &server_extra, V1);
    // Admin open while Moderation is guarded must be asked for explicitly.
    let open_admin = |path: &Path| {
        let text = std::fs::read_to_string(path).unwrap() + "[admin]\nallow_unauthenticated = true\n";
        std::fs::write(path, text).unwrap();
    };
    open_admin(&path);
    let server = start(&path).await;
    let mut admin = admin(server.channel().await).await;
    let loaded_at = |list: pb::ListModelsResponse, name: &str| {
        list.models.into_iter().find(|m| m.name == name).map(|m| (m.loaded_at, m.role)).unwrap()
    };
    let before = loaded_at(admin.list_models(pb::ListModelsRequest {}).await.unwrap().into_inner(), "tiny-abuse");
    write_config(&path, &server_extra, V1_SHADOW_V2);
    open_admin(&path);
    assert!(admin.reload(pb::ReloadRequest {}).await.unwrap().into_inner().applied);
    let after = loaded_at(admin.list_models(pb::ListModelsRequest {}).await.unwrap().into_inner(), "tiny-abuse");
    assert_eq!(before, after, "the live model was not reloaded");
    // Promotion changes the role, so that model is rebuilt.
    write_config(&path, &server_extra, PROMOTED);
    open_admin(&path);
    assert!(admin.reload(pb::ReloadRequest {}).await.unwrap().into_inner().applied);
    let promoted = loaded_at(admin.list_models(pb::ListModelsRequest {}).await.unwrap().into_inner(), "tiny-abuse");
    assert_eq!(promoted.1, "shadow");
    assert_ne!(promoted.0, before.0);

    let mut client = server.client().await;
    let status = client.classify(request(vec![review("a", "great product")])).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert!(status.message().contains("modserve.v1.Moderation"), "{}", status.message());
    let mut req = tonic::Request::new(request(vec![review("a", "great product")]));
    req.metadata_mut().insert("authorization", "Bearer ingest-token".parse().unwrap());
    client.classify(req).await.expect("token accepted");
    server.stop().await;
}

/// The Moderation token presented to Admin is PERMISSION_DENIED (a known caller, not allowed
/// there), not UNAUTHENTICATED; the admin token opens Admin, and neither token is echoed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_moderation_token_is_denied_on_admin() {
    let _guard = exclusive().await;
    let dir = tempfile::tempdir().unwrap();
    let (moderation_token, admin_token) = (dir.path().join("moderation-token"), dir.path().join("admin-token"));
    std::fs::write(&moderation_token, "ingest-token").unwrap();
    std::fs::write(&admin_token, "admin-token").unwrap();
    let path = dir.path().join("modserve.toml");
    write_config(
        &path,
        &format!("watch_config = false\nmoderation_token_file = {:?}", moderation_token.display().to_string()),
        V1,
    );
    let text = std::fs::read_to_string(&path).unwrap()
        + &format!("[admin]\ntoken_file = {:?}\n", admin_token.display().to_string());
    std::fs::write(&path, text).unwrap();
    let server = start(&path).await;
    let mut admin = AdminClient::new(server.channel().await);
    let call = |token: &str| {
        let mut req = tonic::Request::new(pb::ListModelsRequest {});
        req.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
        req
    };
    let status = admin.list_models(call("ingest-token")).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(!status.message().contains("ingest-token"), "{}", status.message());
    assert_eq!(admin.list_models(call("nope")).await.unwrap_err().code(), Code::Unauthenticated);
    assert_eq!(admin.list_models(call("admin-token")).await.expect("admin token").into_inner().models.len(), 1);
    server.stop().await;
}

/// Policies reload like shadows: a policy-only shadow appears, then its policy is promoted to
/// live, and answers follow each step; a policy that names a label the model lacks is refused
/// and the running config keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policies_and_policy_only_shadows_reload() {
    let _guard = exclusive().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("modserve.toml");
    let policy =
        "[policies.strict-2]\nversion = \"2\"\n[policies.strict-2.thresholds.insult]\nreview = 0.3\nreject = 0.6\n";
    write_config(&path, "watch_config = false", V1);
    let server = start(&path).await;
    let mut admin = admin(server.channel().await).await;
    let mut client = server.client().await;
    let answer = |reply: pb::ClassifyResponse| {
        let t = &reply.results[0].tasks[0];
        let m = t.model.as_ref().unwrap();
        (m.policy_name.clone(), m.policy_version.clone(), decision_name(t.decision))
    };

    let shadowed = format!(
        "{policy}[tasks.abuse]\nlive = \"tiny-abuse\"\nshadows = [{{ model = \"tiny-abuse\", policy = \"strict-2\", sample_rate = 1.0 }}]\n"
    );
    write_config(&path, "watch_config = false", &shadowed);
    let r = admin.reload(pb::ReloadRequest {}).await.unwrap().into_inner();
    assert!(r.applied, "{:?}", r.errors);
    let list = admin.list_models(pb::ListModelsRequest {}).await.unwrap().into_inner().models;
    let listed: Vec<_> = list.iter().map(|m| (m.name.as_str(), m.role.as_str(), m.policy_name.as_str())).collect();
    assert_eq!(listed, [("tiny-abuse", "live", "default"), ("tiny-abuse", "shadow", "strict-2")]);
    // "this is dumb" scores 0.622 on insult: REVIEW under the manifest (0.5/0.9), REJECT under strict-2.
    let reply = client.classify(request(vec![review("p1", "this is dumb")])).await.unwrap().into_inner();
    assert_eq!(answer(reply), ("default".into(), "1".into(), "REVIEW"));

    let promoted = format!("{policy}[tasks.abuse]\nlive = \"tiny-abuse\"\npolicy = \"strict-2\"\n");
    write_config(&path, "watch_config = false", &promoted);
    let r = admin.reload(pb::ReloadRequest {}).await.unwrap().into_inner();
    assert!(r.applied, "{:?}", r.errors);
    let reply = client.classify(request(vec![review("p2", "this is dumb")])).await.unwrap().into_inner();
    assert_eq!(answer(reply), ("strict-2".into(), "2".into(), "REJECT"));

    let misfit = promoted.replace("thresholds.insult]", "thresholds.spam]");
    write_config(&path, "watch_config = false", &misfit);
    let r = admin.reload(pb::ReloadRequest {}).await.unwrap().into_inner();
    assert!(!r.applied);
    assert!(r.errors.iter().any(|e| e.starts_with("tasks.abuse.policy: policies.strict-2")), "{:?}", r.errors);
    let reply = client.classify(request(vec![review("p3", "this is dumb")])).await.unwrap().into_inner();
    assert_eq!(answer(reply), ("strict-2".into(), "2".into(), "REJECT"), "the running policy keeps serving");
    server.stop().await;
}
