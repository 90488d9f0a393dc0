//! The inference worker through its library API: deadlines checked before inference, and token
//! ids reused across models that share a tokenizer.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::*;
use modserve::error::Error;
use modserve::inference::backend::Backends;
use modserve::inference::batch::BatchPolicy;
use modserve::inference::model::Package;
use modserve::inference::tokenize::{Encoder, TokenRows};
use modserve::inference::worker::{self, WorkerPool, WorkerSettings};
use modserve::metrics::Role;
use modserve::request::{Caller, ReviewInput};

fn pool(model: &str) -> WorkerPool {
    pool_with(model, &Arc::new(Faults::default()))
}

/// A pool whose backend injects the faults armed in `faults`.
fn pool_with(model: &str, faults: &Arc<Faults>) -> WorkerPool {
    let env = modserve::inference::runtime::environment(&ort_lib()).expect("ONNX Runtime loads");
    let backends = Backends::wrapped(env, faults.wrap());
    let package = Package::load(&fixture(model)).expect("fixture loads");
    let settings = WorkerSettings {
        batch: BatchPolicy { max_batch_size: 8, max_wait: Duration::ZERO },
        queue_capacity: 4,
        threads: 1,
        intra_threads: 1,
        nice: 0,
        idle: false,
        cpus: None,
        long_job_nice: 0,
        long_job_scheduling: modserve::config::ThreadScheduling::Nice,
    };
    worker::start(&backends, &package, Role::Shadow, settings, None).expect("workers start")
}

fn reviews(texts: &[&str]) -> Arc<[ReviewInput]> {
    texts
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
        .collect()
}

/// Work that is already queued when its deadline passes is dropped by the worker, answered
/// DEADLINE_EXCEEDED and counted, and never reaches the session.
#[test]
fn queued_work_past_its_deadline_is_dropped_before_inference() {
    let _shared = shared_blocking();
    let pool = pool("tiny-abuse");
    let reviews = reviews(&["you idiot"]);
    let expired = Instant::now() - Duration::from_millis(1);
    let rx = pool.handle.submit(reviews.clone(), Some(expired), None, Caller::SERVER).expect("queued");
    match rx.blocking_wait() {
        Err(Error::DeadlineExceeded(where_)) => {
            assert!(where_.contains("before inference on model tiny-abuse"), "{where_}")
        }
        other => panic!("expected DeadlineExceeded, got {other:?}"),
    }
    // The same review with time to spare is scored.
    let rx = pool
        .handle
        .submit(reviews, Some(Instant::now() + Duration::from_secs(10)), None, Caller::SERVER)
        .expect("queued");
    let scores = rx.blocking_wait().expect("scored").scores;
    assert!(scores[0] > 0.9, "insult score {scores:?}");
    drop(pool.handle);
    for t in pool.threads {
        t.join().expect("worker exits cleanly when its handle is dropped");
    }
}

/// A shadow given the live model's token ids scores those ids, not a second tokenization of the
/// text: proven by handing it ids that disagree with the text.
#[test]
fn token_ids_from_a_shared_tokenizer_are_used_as_given() {
    let _shared = shared_blocking();
    let live = pool("tiny-abuse");
    let shadow = pool("tiny-abuse-v2");
    // Live keeps its token ids.
    let texts = reviews(&["you idiot", "great product"]);
    let out = live
        .handle
        .submit(texts.clone(), None, Some(Arc::new(modserve::inference::worker::TokenSlot::new())), Caller::SERVER)
        .unwrap()
        .blocking_wait()
        .unwrap();
    let kept = out.tokens.expect("token ids kept");
    let package = Package::load(&fixture("tiny-abuse")).unwrap();
    let encoder = Encoder::new(package.tokenizer.clone(), package.spec.max_sequence_length).unwrap();
    let mut expected = TokenRows::default();
    encoder.encode_rows(["you idiot", "great product"], &mut expected).unwrap();
    assert_eq!(*kept, expected);
    // Swap the rows: the shadow must score "great product" for review 0 and "you idiot" for 1.
    let mut swapped = TokenRows::default();
    swapped.extend_from(&kept, 1..2);
    swapped.extend_from(&kept, 0..1);
    let (tx, rx) = std::sync::mpsc::channel();
    shadow
        .handle
        .submit_with(texts, Some(Arc::new(swapped)), None, Box::new(move |result, _| tx.send(result).unwrap()))
        .unwrap();
    let scores = rx.recv().unwrap().unwrap().scores;
    assert!(scores[0] < 0.1 && scores[2] > 0.9, "insult scores follow the given ids: {scores:?}");
    for p in [live, shadow] {
        drop(p.handle);
        p.threads.into_iter().for_each(|t| t.join().unwrap());
    }
}

/// A job whose caller went away while it was queued is dropped before inference and counted.
#[test]
fn abandoned_jobs_are_dropped_before_inference_and_counted() {
    let _guard = exclusive_blocking();
    let prometheus = modserve::metrics::install().unwrap();
    let faults = Arc::new(Faults::default());
    let pool = pool_with("tiny-fraud", &faults);
    let count = |reason: &str| {
        metric(
            &prometheus.render(),
            "modserve_dropped_total",
            &[("model", "tiny-fraud"), ("role", "shadow"), ("reason", reason)],
        )
        .unwrap_or(0.0)
    };
    // Reviews that reached the session, over every batch.
    let inferred = || {
        metric(&prometheus.render(), "modserve_batch_size_sum", &[("model", "tiny-fraud"), ("role", "shadow")])
            .unwrap_or(0.0)
    };
    let before = (count("cancelled"), inferred());
    // The first job holds the only worker (a fault injected through its backend), so the
    // second waits queued. The second is submitted only once the worker holds the first batch:
    // submitted earlier, the batcher could take both into one batch.
    faults.on_word("tiny-fraud", "huge", Action::Hold);
    let begun = faults.begun();
    let busy = pool.handle.submit(reviews(&["huge call me"]), None, None, Caller::SERVER).unwrap();
    faults.wait_begun_blocking(begun + 1);
    let abandoned = pool.handle.submit(reviews(&["win a free prize"]), None, None, Caller::SERVER).unwrap();
    drop(abandoned);
    let after = pool.handle.submit(reviews(&["great product"]), None, None, Caller::SERVER).unwrap();
    faults.release();
    busy.blocking_wait().unwrap();
    after.blocking_wait().unwrap();
    assert_eq!(count("cancelled") - before.0, 1.0);
    assert_eq!(inferred() - before.1, 2.0, "the abandoned review never reached the session");
    drop(pool.handle);
    pool.threads.into_iter().for_each(|t| t.join().unwrap());
}
