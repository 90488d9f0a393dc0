//! Faults injected through the inference backend seam: `TestServer::start_faulty` wraps every
//! model's real ONNX Runtime session (`Server::start_wrapped`), and a test arms what a model's
//! backend does: panic, stall or burn CPU on the rows that hold a marker word, or stall while
//! the next reviews are tokenized. The server has no fault hooks of its own.

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use modserve::inference::InferenceError;
use modserve::inference::backend::{Backend, Wrap};
use modserve::inference::cpu::thread_cpu_time;
use modserve::inference::model::{ModelSpec, Package};
use modserve::inference::tokenize::TokenBatch;

use super::fixture;

/// What a faulty backend does, once per marked row, before it runs a batch.
#[derive(Debug, Clone, Copy)]
pub enum Action {
    /// Panics, as a runtime bug would; the worker must catch it.
    Panic,
    /// Sleeps: a stalled runtime.
    Sleep(Duration),
    /// Spins for this much thread CPU time: a model heavier than live, which a sleep is not.
    Spin(Duration),
    /// Waits until the test calls `Faults::release` (30 s at most): a stall that lasts exactly
    /// as long as the test needs to see what it waits for, however slow the machine.
    Hold,
}

pub struct Faults {
    /// Actions begun so far, so a test can wait for a stall to start instead of sleeping.
    begun: tokio::sync::watch::Sender<usize>,
    /// model -> (marker token id, action).
    on_token: Mutex<HashMap<String, Vec<(i64, Action)>>>,
    /// model -> (action, batches left to do it on).
    on_batches: Mutex<HashMap<String, (Action, usize)>>,
    /// model -> (stall, reviews left to stall).
    tokenizing: Mutex<HashMap<String, (Duration, usize)>>,
    /// Opened once by `release`; `Action::Hold` waits for it.
    released: (Mutex<bool>, Condvar),
}

impl Default for Faults {
    fn default() -> Faults {
        Faults {
            begun: tokio::sync::watch::Sender::new(0),
            on_token: Mutex::default(),
            on_batches: Mutex::default(),
            tokenizing: Mutex::default(),
            released: (Mutex::new(false), Condvar::new()),
        }
    }
}

impl Faults {
    /// How many actions have begun, on every model.
    pub fn begun(&self) -> usize {
        *self.begun.borrow()
    }

    /// Waits until `n` actions have begun (counted as `begun` counts), e.g. until a call's stall
    /// holds its worker.
    pub async fn wait_begun(&self, n: usize) {
        let mut begun = self.begun.subscribe();
        tokio::time::timeout(Duration::from_secs(30), begun.wait_for(|&b| b >= n))
            .await
            .expect("the fault began")
            .expect("the faults outlive the server");
    }

    /// `wait_begun` for a test without a runtime, e.g. one that drives a worker pool directly.
    pub fn wait_begun_blocking(&self, n: usize) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build().expect("a runtime");
        runtime.block_on(self.wait_begun(n));
    }

    /// Ends every `Action::Hold`, now and from now on (until `hold_again`).
    pub fn release(&self) {
        *self.released.0.lock().unwrap() = true;
        self.released.1.notify_all();
    }

    /// Makes `Action::Hold` wait again, until the next `release`: for a test that holds a worker
    /// more than once.
    pub fn hold_again(&self) {
        *self.released.0.lock().unwrap() = false;
    }

    fn hold(&self) {
        let released = self.released.0.lock().unwrap();
        let _ = self.released.1.wait_timeout_while(released, Duration::from_secs(30), |open| !*open).unwrap();
    }

    /// Every row of a `model` batch that holds `word` (a word of the fixtures' vocabulary) does
    /// `action` before the batch runs (replacing what the same word was armed with before).
    pub fn on_word(&self, model: &str, word: &str, action: Action) {
        let package = Package::load(&fixture(model)).expect("fixture loads");
        let id =
            package.tokenizer.token_to_id(word).unwrap_or_else(|| panic!("{word:?} is not in {model}'s vocabulary"));
        let mut on_token = self.on_token.lock().unwrap();
        let rules = on_token.entry(model.to_string()).or_default();
        // Arming the same word again replaces its action.
        rules.retain(|(marker, _)| *marker != i64::from(id));
        rules.push((i64::from(id), action));
    }

    /// The next `batches` batches `model` runs (its warm-up at load included) each do `action`
    /// first, once.
    pub fn on_batches(&self, model: &str, batches: usize, action: Action) {
        self.on_batches.lock().unwrap().insert(model.to_string(), (action, batches));
    }

    /// The next `reviews` reviews `model` tokenizes each stall `stall` first.
    pub fn slow_tokenizing(&self, model: &str, stall: Duration, reviews: usize) {
        self.tokenizing.lock().unwrap().insert(model.to_string(), (stall, reviews));
    }

    pub fn wrap(self: &Arc<Self>) -> Wrap {
        let faults = self.clone();
        Arc::new(move |spec: &ModelSpec, inner: Box<dyn Backend>| -> Box<dyn Backend> {
            Box::new(Faulty { inner, model: spec.name.clone(), faults: faults.clone() })
        })
    }

    fn actions(&self, model: &str, tokens: &TokenBatch) -> Vec<Action> {
        let rules = self.on_token.lock().unwrap().get(model).cloned().unwrap_or_default();
        let rows = tokens.ids.chunks(tokens.seq.max(1)).take(tokens.rows);
        let mut actions: Vec<Action> = rows
            .flat_map(|row| rules.iter().filter(|(id, _)| row.contains(id)).map(|(_, a)| *a).collect::<Vec<_>>())
            .collect();
        if let Some((action, left)) = self.on_batches.lock().unwrap().get_mut(model).filter(|(_, left)| *left > 0) {
            *left -= 1;
            actions.push(*action);
        }
        actions
    }

    fn tokenizing_stall(&self, model: &str) -> Option<Duration> {
        let mut tokenizing = self.tokenizing.lock().unwrap();
        let (stall, left) = tokenizing.get_mut(model)?;
        if *left == 0 {
            return None;
        }
        *left -= 1;
        Some(*stall)
    }
}

struct Faulty {
    inner: Box<dyn Backend>,
    model: String,
    faults: Arc<Faults>,
}

impl Backend for Faulty {
    fn run(&mut self, tokens: &TokenBatch, features: Option<&[f32]>, out: &mut Vec<f32>) -> Result<(), InferenceError> {
        for action in self.faults.actions(&self.model, tokens) {
            self.faults.begun.send_modify(|b| *b += 1);
            match action {
                Action::Panic => panic!("injected fault for model {}", self.model),
                Action::Sleep(d) => std::thread::sleep(d),
                Action::Spin(d) => spin(d),
                Action::Hold => self.faults.hold(),
            }
        }
        self.inner.run(tokens, features, out)
    }

    fn before_tokenizing(&mut self) {
        if let Some(stall) = self.faults.tokenizing_stall(&self.model) {
            std::thread::sleep(stall);
        }
    }
}

/// Busy work for `d` of this thread's CPU time.
fn spin(d: Duration) {
    let start = thread_cpu_time();
    let mut x = 0u64;
    while thread_cpu_time() - start < d {
        x = std::hint::black_box(x.wrapping_add(1));
    }
}
