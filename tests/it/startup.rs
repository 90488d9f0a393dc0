//! Start-up as an orchestrator sees it: the listeners answer while the models load (health
//! NOT_SERVING, Classify UNAVAILABLE, /health/ready 503, /health/live 200), then SERVING.

use crate::common::*;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listeners_answer_not_serving_while_models_load() {
    let _shared = shared().await;
    // Each model's warm-up batch sleeps 3 s (a fault injected through its backend), so loading
    // is still under way while the listeners answer.
    let faults = std::sync::Arc::new(Faults::default());
    for model in ["tiny-abuse", "tiny-fraud"] {
        faults.on_batches(model, 1, Action::Sleep(std::time::Duration::from_secs(3)));
    }
    let server =
        modserve::app::Server::start_wrapped(config(BASIC), Some(faults.wrap())).await.expect("listeners bind");
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", server.grpc_addr))
        .unwrap()
        .connect()
        .await
        .expect("gRPC answers during loading");
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    let check = health.check(HealthCheckRequest { service: modserve::app::MODERATION_SERVICE.into() }).await;
    let status = check.expect("health answers during loading").into_inner().status;
    // Each model sleeps 3 s in its warm-up: loading is still under way.
    assert_eq!(status, ServingStatus::NotServing as i32);
    let mut client = modserve::serving::grpc::pb::moderation_client::ModerationClient::new(channel.clone());
    let refused = client.classify(request(vec![review("r1", "you idiot")])).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    assert!(refused.message().contains("loading"), "{refused:?}");
    assert_eq!(http_get(server.metrics_addr, "/health/ready").await.0, 503);
    assert_eq!(http_get(server.metrics_addr, "/health/live").await.0, 200);

    wait_serving(channel).await;
    let answered = client.classify(request(vec![review("r1", "you idiot")])).await.expect("served once loaded");
    assert_eq!(decision_name(answered.into_inner().results[0].tasks[0].decision), "REJECT");
    assert_eq!(http_get(server.metrics_addr, "/health/ready").await.0, 200);
    server.shutdown();
    server.wait().await.unwrap();
}
