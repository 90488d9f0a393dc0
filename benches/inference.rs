//! In-process stages of the request path, without gRPC: tokenization, inference per batch size,
//! and decision + response building. Runs on the default live model (`models/abuse-v1`) with real
//! ONNX Runtime. `cargo bench --bench inference`; `scripts/setup` fetches ONNX Runtime first.

use std::path::PathBuf;
use std::sync::Arc;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use modserve::inference::model::Package;
use modserve::inference::model::session::ModelSession;
use modserve::inference::tokenize::{Encoder, TokenBatch};
use modserve::request::{ClassifyInput, ReviewInput};
use modserve::serving::classify::{ClassifyOutput, TaskOutput};
use modserve::serving::grpc::convert;

const BATCH_SIZES: [usize; 4] = [1, 8, 32, 64];

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Held-out realistic reviews: the eval suite's texts.
fn texts() -> Vec<String> {
    let file = std::fs::read_to_string(repo().join("models/eval/reviews.jsonl")).expect("models/eval/reviews.jsonl");
    file.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["text"].as_str().map(str::to_string))
        .filter(|t| !t.trim().is_empty())
        .collect()
}

fn batch(texts: &[String], n: usize) -> Vec<&str> {
    texts.iter().cycle().take(n).map(String::as_str).collect()
}

fn benches(c: &mut Criterion) {
    let lib = std::env::var_os("MODSERVE_ONNXRUNTIME_LIB")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join(".ort/libonnxruntime.so.1.31.1"));
    let env = modserve::inference::runtime::environment(&lib).expect("ONNX Runtime (run scripts/setup)");
    let package = Package::load(&repo().join("models/abuse-v1")).expect("models/abuse-v1 loads");
    let encoder = Encoder::new(package.tokenizer.clone(), package.spec.max_sequence_length).unwrap();
    let mut session = ModelSession::build(&env, &package, 1).expect("session");
    let texts = texts();

    let mut group = c.benchmark_group("tokenize");
    for n in BATCH_SIZES {
        let input = batch(&texts, n);
        let mut tokens = TokenBatch::default();
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::from_parameter(n), &input, |b, input| {
            b.iter(|| encoder.encode_into(input.iter().copied(), &mut tokens).unwrap())
        });
    }
    group.finish();

    let mut group = c.benchmark_group("inference");
    for n in BATCH_SIZES {
        let mut tokens = TokenBatch::default();
        encoder.encode_into(batch(&texts, n), &mut tokens).unwrap();
        let mut out = Vec::new();
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::from_parameter(n), &tokens, |b, tokens| {
            b.iter(|| {
                out.clear();
                session.run(tokens, None, &mut out).unwrap()
            })
        });
    }
    group.finish();

    let mut group = c.benchmark_group("decide_and_respond");
    for n in BATCH_SIZES {
        let reviews: Arc<[ReviewInput]> = batch(&texts, n)
            .iter()
            .enumerate()
            .map(|(i, t)| ReviewInput {
                id: format!("r{i}"),
                model_text: t.to_string(),
                rating: None,
                signals: Default::default(),
                language: None,
                text_cut: false,
            })
            .collect();
        let input = ClassifyInput { reviews, tasks: vec![], request_id: String::new(), surface: None };
        let scores: Vec<f32> = (0..n * package.spec.labels.len()).map(|i| (i % 100) as f32 / 100.0).collect();
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::from_parameter(n), &scores, |b, scores| {
            b.iter(|| {
                let spec = package.spec.clone();
                let decisions = scores.chunks_exact(spec.labels.len()).map(|s| spec.policy.decide(s)).collect();
                let policy = std::sync::Arc::new(spec.policy.clone());
                let output = ClassifyOutput {
                    tasks: vec![TaskOutput {
                        task: "abuse".into(),
                        surface: None,
                        model: spec,
                        policy,
                        scores: scores.clone(),
                        decisions,
                    }],
                };
                convert::response(&input, &output)
            })
        });
    }
    group.finish();
}

criterion_group!(inference, benches);
criterion_main!(inference);
