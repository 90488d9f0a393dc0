//! Per-surface policies end to end: a request's surface picks the live policy its task maps it
//! to (and the answer names it), the decision, comparison and verdict series of a named surface
//! carry it while the default surface's keep their old label set, an unknown surface is refused
//! or falls back as the task says, a policy-only shadow kept to one surface sees that surface's
//! traffic only, and surface policies are checked at load and applied by a reload. Expected
//! decisions are computed here from the returned scores and the thresholds written below.

use std::collections::HashMap;
use std::time::Duration;

use crate::common::*;
use modserve::config::{Config, Overrides};
use modserve::serving::grpc::pb;
use modserve::serving::grpc::pb::admin_client::AdminClient;
use modserve::serving::grpc::pb::feedback_client::FeedbackClient;
use tonic::Code;

/// Two surfaces with their own policies, a model shadow on all traffic, a policy-only shadow on
/// the kids surface only, and a task that lists no surfaces.
const SURFACES: &str = r#"
[models.tiny-abuse]
path = "tests/fixtures/tiny-abuse"
[models.tiny-abuse-v2]
path = "tests/fixtures/tiny-abuse-v2"
[models.tiny-fraud]
path = "tests/fixtures/tiny-fraud"
[policies.strict-2]
version = "2"
[policies.strict-2.thresholds.insult]
review = 0.3
reject = 0.6
[policies.kids-tighter]
version = "1"
[policies.kids-tighter.thresholds.insult]
review = 0.2
reject = 0.4
[policies.forum-lenient]
version = "3"
[policies.forum-lenient.thresholds.insult]
review = 0.8
reject = 0.95
[tasks.abuse]
live = "tiny-abuse"
shadows = [
  { model = "tiny-abuse-v2", sample_rate = 1.0 },
  { model = "tiny-abuse", policy = "kids-tighter", sample_rate = 1.0, surfaces = ["kids"] },
]
[tasks.abuse.surfaces]
kids = "strict-2"
forum = "forum-lenient"
[tasks.fraud]
live = "tiny-fraud"
"#;

const TEXTS: [&str; 6] = ["you idiot", "this is dumb", "you are stupid", "great product", "i will hurt you", "nice"];

/// The decision index (0 allow, 1 review, 2 reject) the policy named `policy` gives a
/// tiny-abuse score row (insult, threat), from the thresholds of `SURFACES` and the manifest.
fn decide(policy: &str, scores: &[f32]) -> usize {
    let insult_only = |review: f32, reject: f32| match scores[0] {
        s if s >= reject => 2,
        s if s >= review => 1,
        _ => 0,
    };
    match policy {
        // The manifest: insult 0.5 / 0.9, threat 0.3 / 0.7.
        "default" => {
            let insult = insult_only(0.5, 0.9);
            let threat = match scores[1] {
                s if s >= 0.7 => 2,
                s if s >= 0.3 => 1,
                _ => 0,
            };
            insult.max(threat)
        }
        "strict-2" => insult_only(0.3, 0.6),
        "kids-tighter" => insult_only(0.2, 0.4),
        "forum-lenient" => insult_only(0.8, 0.95),
        other => panic!("no thresholds for {other}"),
    }
}

fn on(surface: Option<&str>, tasks: &[&str], reviews: Vec<pb::Review>) -> pb::ClassifyRequest {
    pb::ClassifyRequest {
        surface: surface.map(str::to_string),
        tasks: tasks.iter().map(|t| t.to_string()).collect(),
        ..request(reviews)
    }
}

/// The sum of `name{labels}` over series without a `surface` label: the default surface's.
fn sum_default(scrape: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    series(scrape, name)
        .into_iter()
        .filter(|(l, _)| {
            !l.contains_key("surface") && labels.iter().all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|(_, v)| v)
        .sum()
}

fn grown(base: &str, now: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    sum_where(now, name, labels) - sum_where(base, name, labels)
}

/// Polls until the sum of `name{labels}` has grown by `want` since `base`; 30 s at most.
async fn wait_sum(server: &TestServer, base: &str, name: &str, labels: &[(&str, &str)], want: f64) -> f64 {
    let mut last = 0.0;
    for _ in 0..600 {
        last = grown(base, &server.scrape().await, name, labels);
        if last >= want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    last
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_surface_picks_its_policy_and_its_series_carry_it() {
    let _guard = exclusive().await;
    let server = TestServer::start(config(SURFACES)).await;
    let base = server.scrape().await;
    let mut client = server.client().await;
    let calls = 12;
    // (surface, decision) -> live reviews; live x kids-tighter decisions on kids.
    let mut decided: HashMap<(&str, usize), f64> = HashMap::new();
    let mut tighter: HashMap<(usize, usize), f64> = HashMap::new();
    for (surface, policy, version) in
        [(None, "default", "1"), (Some("kids"), "strict-2", "2"), (Some("forum"), "forum-lenient", "3")]
    {
        for i in 0..calls {
            let id = format!("{}-{i}", surface.unwrap_or("none"));
            let reply = client
                .classify(on(surface, &["abuse"], vec![review(&id, TEXTS[i % TEXTS.len()])]))
                .await
                .unwrap()
                .into_inner();
            let task = &reply.results[0].tasks[0];
            let model = task.model.as_ref().unwrap();
            assert_eq!((model.policy_name.as_str(), model.policy_version.as_str()), (policy, version), "{surface:?}");
            let scores: Vec<f32> = task.scores.iter().map(|s| s.score).collect();
            let live = decision_index(decision_name(task.decision));
            assert_eq!(live, decide(policy, &scores), "{surface:?} {id}: {scores:?}");
            *decided.entry((surface.unwrap_or(""), live)).or_default() += 1.0;
            if surface == Some("kids") {
                *tighter.entry((live, decide("kids-tighter", &scores))).or_default() += 1.0;
            }
        }
    }
    let n = calls as f64;
    // Every review reaches the model shadow; only kids reviews reach the policy-only one.
    let v2 = [("task", "abuse"), ("shadow_model", "tiny-abuse-v2"), ("outcome", "compared")];
    assert_eq!(wait_sum(&server, &base, "modserve_shadow_reviews_total", &v2, 3.0 * n).await, 3.0 * n);
    let only = [("task", "abuse"), ("shadow_policy", "kids-tighter")];
    assert_eq!(wait_sum(&server, &base, "modserve_shadow_policy_only_reviews_total", &only, n).await, n);
    let now = server.scrape().await;

    for (surface, policy) in [("", "default"), ("kids", "strict-2"), ("forum", "forum-lenient")] {
        for (d, name) in DECISIONS.iter().enumerate() {
            let labels = [("task", "abuse"), ("policy", policy), ("decision", name)];
            let got = if surface.is_empty() {
                sum_default(&now, "modserve_reviews_total", &labels)
                    - sum_default(&base, "modserve_reviews_total", &labels)
            } else {
                grown(&base, &now, "modserve_reviews_total", &[labels.as_slice(), &[("surface", surface)]].concat())
            };
            assert_eq!(got, decided.get(&(surface, d)).copied().unwrap_or(0.0), "{surface:?} {name}");
        }
    }
    // The default surface's series keep the label set they had before surfaces.
    for (labels, _) in series(&now, "modserve_reviews_total") {
        if labels.get("task").map(String::as_str) == Some("abuse") && !labels.contains_key("surface") {
            let mut keys: Vec<&str> = labels.keys().map(String::as_str).collect();
            keys.sort_unstable();
            assert_eq!(keys, ["decision", "model", "policy", "policy_version", "role", "task", "version"]);
        }
    }
    // The model shadow's comparisons, per surface, against the live policy there.
    let v2_cmp = [("task", "abuse"), ("shadow_model", "tiny-abuse-v2")];
    let comparisons = "modserve_shadow_comparisons_total";
    assert_eq!(sum_default(&now, comparisons, &v2_cmp) - sum_default(&base, comparisons, &v2_cmp), n);
    for (surface, policy) in [("kids", "strict-2"), ("forum", "forum-lenient")] {
        let labels = [v2_cmp.as_slice(), &[("surface", surface), ("live_policy", policy)]].concat();
        assert_eq!(grown(&base, &now, comparisons, &labels), n, "{surface}");
    }
    // The policy-only shadow: kids traffic only, live strict-2 against kids-tighter.
    let pair = [("task", "abuse"), ("shadow_model", "tiny-abuse"), ("shadow_policy", "kids-tighter")];
    for (l, live) in DECISIONS.iter().enumerate() {
        for (s, shadow) in DECISIONS.iter().enumerate() {
            let cell = [
                pair.as_slice(),
                &[
                    ("surface", "kids"),
                    ("live_policy", "strict-2"),
                    ("live_decision", live),
                    ("shadow_decision", shadow),
                ],
            ]
            .concat();
            let want = tighter.get(&(l, s)).copied().unwrap_or(0.0);
            assert_eq!(grown(&base, &now, comparisons, &cell), want, "live {live} / kids-tighter {shadow}");
        }
    }
    assert_eq!(grown(&base, &now, comparisons, &pair), n, "only the kids reviews were compared");
    assert!(
        !series(&now, comparisons).iter().any(|(l, _)| {
            l.get("shadow_policy").map(String::as_str) == Some("kids-tighter") && !l.contains_key("surface")
        }),
        "a shadow kept to kids has no default-surface comparison series"
    );
    let offered = [("task", "abuse"), ("shadow_model", "tiny-abuse"), ("shadow_policy", "kids-tighter")];
    assert_eq!(grown(&base, &now, "modserve_shadow_reviews_total", &offered), n, "nothing else was offered to it");
    server.stop().await;
}

/// ListModels names the live policy on each surface, and the surfaces each shadow is offered
/// under its own policy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_models_names_each_surfaces_policy() {
    let _shared = shared().await;
    let server = TestServer::start(config(SURFACES)).await;
    let mut admin = AdminClient::new(server.channel().await);
    let models = admin.list_models(pb::ListModelsRequest {}).await.expect("ListModels").into_inner().models;
    let surfaces = |task: &str, role: &str, name: &str, policy: &str| {
        let model = models
            .iter()
            .find(|m| m.task == task && m.role == role && m.name == name && m.policy_name == policy)
            .unwrap_or_else(|| panic!("no {role} {name} under {policy} in {models:?}"));
        let mut on: Vec<(String, String, String)> = model
            .surfaces
            .iter()
            .map(|s| (s.surface.clone(), s.policy_name.clone(), s.policy_version.clone()))
            .collect();
        on.sort();
        on
    };
    let own =
        |surface: &str, policy: &str, version: &str| (surface.to_string(), policy.to_string(), version.to_string());
    assert_eq!(
        surfaces("abuse", "live", "tiny-abuse", "default"),
        [own("forum", "forum-lenient", "3"), own("kids", "strict-2", "2")]
    );
    assert_eq!(
        surfaces("abuse", "shadow", "tiny-abuse-v2", "default"),
        [own("forum", "default", "1"), own("kids", "default", "1")],
        "a shadow listing no surfaces is offered every one"
    );
    assert_eq!(surfaces("abuse", "shadow", "tiny-abuse", "kids-tighter"), [own("kids", "kids-tighter", "1")]);
    assert_eq!(surfaces("fraud", "live", "tiny-fraud", "default"), [], "a task without surfaces");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_surface_is_refused_or_falls_back_as_the_task_says() {
    let _guard = exclusive().await;
    let server = TestServer::start(config(SURFACES)).await;
    let mut client = server.client().await;
    let status = client.classify(on(Some("nope"), &[], vec![review("u1", "nice")])).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().starts_with("surface"), "{}", status.message());
    assert!(status.message().contains("\"nope\"") && status.message().contains("kids"), "{}", status.message());
    let status = client.classify(on(Some(""), &["abuse"], vec![review("u2", "nice")])).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().starts_with("surface"), "{}", status.message());
    // A task that lists no surfaces decides every surface alike.
    let reply = client.classify(on(Some("nope"), &["fraud"], vec![review("u3", "nice")])).await.unwrap().into_inner();
    assert_eq!(reply.results[0].tasks[0].model.as_ref().unwrap().policy_name, "default");
    server.stop().await;

    let fallback =
        SURFACES.replace("live = \"tiny-abuse\"\n", "live = \"tiny-abuse\"\nunknown_surface = \"default\"\n");
    let server = TestServer::start(config(&fallback)).await;
    let base = server.scrape().await;
    let mut client = server.client().await;
    let reviews = vec![review("f1", "this is dumb"), review("f2", "great product")];
    let reply = client.classify(on(Some("nope"), &["abuse"], reviews)).await.unwrap().into_inner();
    for result in &reply.results {
        let task = &result.tasks[0];
        let scores: Vec<f32> = task.scores.iter().map(|s| s.score).collect();
        assert_eq!(task.model.as_ref().unwrap().policy_name, "default");
        assert_eq!(decision_index(decision_name(task.decision)), decide("default", &scores));
    }
    let now = server.scrape().await;
    let abuse = [("task", "abuse")];
    assert_eq!(grown(&base, &now, "modserve_surface_fallbacks_total", &abuse), 2.0);
    let default = [("task", "abuse"), ("policy", "default")];
    assert_eq!(
        sum_default(&now, "modserve_reviews_total", &default) - sum_default(&base, "modserve_reviews_total", &default),
        2.0
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verdicts_are_judged_under_each_models_policy_on_their_surface() {
    let _guard = exclusive().await;
    let server = TestServer::start(config(SURFACES)).await;
    let mut client = server.client().await;
    let mut feedback = FeedbackClient::new(server.channel().await);
    let verdict = |id: String, text: &str, surface: Option<&str>, human: pb::Decision| pb::Verdict {
        review: Some(review(&id, text)),
        task: "abuse".into(),
        decision: human as i32,
        surface: surface.map(str::to_string),
        ..Default::default()
    };
    let status = feedback
        .submit_verdicts(pb::SubmitVerdictsRequest {
            verdicts: vec![verdict("x".into(), "nice", Some("nope"), pb::Decision::Allow)],
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().starts_with("verdicts[0].surface"), "{}", status.message());

    let base = server.scrape().await;
    let humans = [pb::Decision::Allow, pb::Decision::Review, pb::Decision::Reject];
    // (surface, policy, model decision, human decision) -> verdicts.
    let mut expected: HashMap<(&str, &str, usize, usize), f64> = HashMap::new();
    let mut verdicts = Vec::new();
    for (t, text) in TEXTS.iter().enumerate() {
        let reply = client.classify(on(None, &["abuse"], vec![review("s", text)])).await.unwrap().into_inner();
        let scores: Vec<f32> = reply.results[0].tasks[0].scores.iter().map(|s| s.score).collect();
        for (h, human) in humans.iter().enumerate() {
            for (surface, live_policy) in [("kids", "strict-2"), ("forum", "forum-lenient"), ("", "default")] {
                let id = format!("{surface}-{t}-{h}");
                verdicts.push(verdict(id, text, Some(surface).filter(|s| !s.is_empty()), *human));
                *expected.entry((surface, live_policy, decide(live_policy, &scores), h)).or_default() += 1.0;
                if surface == "kids" {
                    *expected.entry((surface, "kids-tighter", decide("kids-tighter", &scores), h)).or_default() += 1.0;
                }
            }
        }
    }
    let per_surface = (TEXTS.len() * humans.len()) as f64;
    let answer = feedback.submit_verdicts(pb::SubmitVerdictsRequest { verdicts }).await.unwrap().into_inner();
    assert_eq!(answer.accepted as f64, 3.0 * per_surface);
    let counted = [("task", "abuse"), ("outcome", "counted")];
    assert_eq!(
        wait_sum(&server, &base, "modserve_verdicts_received_total", &counted, 3.0 * per_surface).await,
        3.0 * per_surface
    );
    let now = server.scrape().await;
    let verdicts_total = "modserve_verdicts_total";
    for ((surface, policy, model, human), want) in &expected {
        let role = if *policy == "kids-tighter" { "shadow" } else { "live" };
        let labels = [
            ("task", "abuse"),
            ("model", "tiny-abuse"),
            ("role", role),
            ("policy", policy),
            ("model_decision", DECISIONS[*model]),
            ("human_decision", DECISIONS[*human]),
        ];
        let got = if surface.is_empty() {
            sum_default(&now, verdicts_total, &labels) - sum_default(&base, verdicts_total, &labels)
        } else {
            grown(&base, &now, verdicts_total, &[labels.as_slice(), &[("surface", surface)]].concat())
        };
        assert_eq!(got, *want, "{surface:?} {policy} model {model} human {human}");
    }
    // The policy-only shadow kept to kids is judged on kids verdicts only; the model shadow on all.
    let tighter = [("task", "abuse"), ("role", "shadow"), ("policy", "kids-tighter")];
    assert_eq!(grown(&base, &now, verdicts_total, &tighter), per_surface);
    let v2 = [("task", "abuse"), ("model", "tiny-abuse-v2")];
    assert_eq!(grown(&base, &now, verdicts_total, &[v2.as_slice(), &[("surface", "forum")]].concat()), per_surface);
    assert_eq!(sum_default(&now, verdicts_total, &v2) - sum_default(&base, verdicts_total, &v2), per_surface);
    server.stop().await;
}

#[tokio::test]
async fn a_surface_policy_that_does_not_fit_the_model_is_refused_at_load() {
    let _shared = shared().await;
    let text =
        SURFACES.replace("[policies.forum-lenient.thresholds.insult]", "[policies.forum-lenient.thresholds.spam]");
    let config = std::sync::Arc::new(config(&text));
    let env = modserve::inference::runtime::environment(&ort_lib()).unwrap();
    let backends = modserve::inference::backend::Backends::new(env);
    let errors = match modserve::control::loader::load(&config, &backends, false, None, None) {
        Ok(_) => panic!("a surface policy with a label the model lacks must not load"),
        Err(errors) => errors,
    };
    assert!(
        errors
            .iter()
            .any(|e| e.starts_with("tasks.abuse.surfaces.forum: policies.forum-lenient") && e.contains("\"spam\"")),
        "{errors:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn surfaces_are_applied_by_a_reload_and_a_bad_one_is_refused() {
    let _guard = exclusive().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("modserve.toml");
    let write = |body: &str| {
        let text = format!(
            "[server]\ngrpc_listen = \"127.0.0.1:0\"\nmetrics_listen = \"127.0.0.1:0\"\nshutdown_grace = \"5s\"\nwatch_config = false\nonnxruntime_lib = {:?}\n{}",
            ort_lib().display().to_string(),
            body.replace("path = \"tests/fixtures/", &format!("path = \"{}/", fixture("").display()))
        );
        std::fs::write(&path, text).unwrap();
    };
    let without = SURFACES
        .replace("[tasks.abuse.surfaces]\nkids = \"strict-2\"\nforum = \"forum-lenient\"\n", "")
        .replace(", surfaces = [\"kids\"]", "");
    write(&without);
    let server = TestServer::start(Config::load(&path, &Overrides::default()).expect("valid config")).await;
    let mut admin = AdminClient::new(server.channel().await);
    let mut client = server.client().await;
    // Before: no surfaces, so a named one changes nothing.
    let kids = || on(Some("kids"), &["abuse"], vec![review("r1", "this is dumb")]);
    let policy_of = |reply: pb::ClassifyResponse| reply.results[0].tasks[0].model.as_ref().unwrap().policy_name.clone();
    assert_eq!(policy_of(client.classify(kids()).await.unwrap().into_inner()), "default");

    write(SURFACES);
    let r = admin.reload(pb::ReloadRequest {}).await.unwrap().into_inner();
    assert!(r.applied, "{:?}", r.errors);
    assert_eq!(policy_of(client.classify(kids()).await.unwrap().into_inner()), "strict-2");

    write(&SURFACES.replace("kids = \"strict-2\"", "kids = \"missing\""));
    let r = admin.reload(pb::ReloadRequest {}).await.unwrap().into_inner();
    assert!(!r.applied);
    assert!(
        r.errors.iter().any(|e| e.starts_with("tasks.abuse.surfaces.kids: no policy named \"missing\"")),
        "{:?}",
        r.errors
    );
    assert_eq!(
        policy_of(client.classify(kids()).await.unwrap().into_inner()),
        "strict-2",
        "the running surfaces keep serving"
    );
    server.stop().await;
}
