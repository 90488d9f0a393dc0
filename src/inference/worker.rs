//! Inference workers: dedicated OS threads, each owning one backend of a model (an ONNX Runtime
//! session in the server, `backend::fake` in tests), pulling jobs from the model's bounded
//! queue, batching them (`batch::BatchPolicy`), tokenizing, running the batch and replying per
//! job.
//!
//! `ModelHandle` is the cheap, cloneable front door. When the last handle is dropped the queue
//! closes; workers finish the jobs already queued and exit.

use std::collections::BTreeSet;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::{Notify, oneshot};

pub use crate::config::WorkerSettings;
use crate::error::Error;
use crate::inference::InferenceError;
use crate::inference::backend::{Backend, Backends};
use crate::inference::batch::{Admit, BatchPolicy, RunCost};
use crate::inference::cpu;
use crate::inference::model::{ModelSpec, Package, PackageError};
use crate::inference::queue::{self, Caller, Consumer, Producer, Refused};
use crate::inference::tokenize::{Encoder, TokenBatch, TokenRows};
use crate::metrics::{DropReason, ModelMetrics, Role};
use crate::request::{ReviewInput, text_bytes};
use crate::shadow::budget::{ModelCpu, ShadowCpu};

/// Token ids shared between models that tokenize identically (same tokenizer file, same length
/// limit): the first worker to tokenize a request's reviews publishes them, later ones reuse them.
/// Nobody waits on it: a worker that finds it empty tokenizes itself.
pub type TokenSlot = std::sync::OnceLock<Arc<TokenRows>>;

/// What a job produced.
#[derive(Debug)]
pub struct JobOutput {
    /// `reviews.len() * labels.len()` probabilities, row-major.
    pub scores: Vec<f32>,
    /// The reviews' token ids, when the job shared a token slot (for shadows and other tasks
    /// that tokenize the same way).
    pub tokens: Option<Arc<TokenRows>>,
    /// When the job's batch was tokenized and run (the call's trace shows them).
    pub timing: BatchTiming,
}

/// When a batch was tokenized and run. Tokenizing ahead (long jobs) is counted from its start;
/// short batches it let run in between fall inside that span.
#[derive(Debug, Clone, Copy)]
pub struct BatchTiming {
    pub tokenize_start: Instant,
    pub infer_start: Instant,
    pub infer_end: Instant,
    /// Reviews in the batch (this job's and others').
    pub rows: usize,
}

impl BatchTiming {
    fn at(now: Instant) -> BatchTiming {
        BatchTiming { tokenize_start: now, infer_start: now, infer_end: now, rows: 0 }
    }
}

pub type JobResult = Result<JobOutput, Error>;

/// Called with a job's outcome and the run time of the batch it was in (zero if it never ran).
pub type Callback = Box<dyn FnOnce(JobResult, Duration) + Send>;

/// Where a job's outcome goes.
pub enum Reply {
    /// A caller awaiting the scores (live work).
    Caller(oneshot::Sender<JobResult>),
    /// Fire-and-forget work (shadows): nobody waits; the callback records the outcome on the
    /// worker thread.
    Callback(Callback),
}

impl Reply {
    fn is_closed(&self) -> bool {
        match self {
            Reply::Caller(tx) => tx.is_closed(),
            Reply::Callback(_) => false,
        }
    }

    fn send(self, result: JobResult, elapsed: Duration) {
        match self {
            // The caller may have gone; nothing to do then.
            Reply::Caller(tx) => drop(tx.send(result)),
            Reply::Callback(f) => {
                // A failing callback must not take the worker thread down.
                if let Err(panic) = catch_unwind(AssertUnwindSafe(|| f(result, elapsed))) {
                    tracing::error!(panic = %panic_message(&panic), "job callback panicked");
                }
            }
        }
    }
}

/// One request's reviews for one model.
pub struct Job {
    pub reviews: Arc<[ReviewInput]>,
    /// Token ids already computed by another model with the same tokenizer and length limit;
    /// used instead of tokenizing again.
    pub tokens: Option<Arc<TokenRows>>,
    /// Where to find or publish this request's token ids; see `TokenSlot`.
    pub share: Option<Arc<TokenSlot>>,
    /// Past this instant nobody wants the answer; the job is dropped unrun.
    pub deadline: Option<Instant>,
    pub enqueued_at: Instant,
    pub reply: Reply,
    /// The job's text counted against the large lane's byte budget, given back when it is dropped.
    charge: Option<Charge>,
}

impl Job {
    /// Token ids of all the job's reviews computed elsewhere: given with the job, or published
    /// by another worker with the same tokenizer.
    fn known_tokens(&self) -> Option<&Arc<TokenRows>> {
        let n = self.reviews.len();
        self.tokens.as_ref().or_else(|| self.share.as_ref().and_then(|s| s.get())).filter(|t| t.len() == n)
    }

    /// Offers the job's ids to the workers sharing its tokenizer.
    fn publish(&self, rows: &Arc<TokenRows>) {
        if let Some(slot) = &self.share {
            // Another worker may have published first; its ids are the same.
            let _ = slot.set(rows.clone());
        }
    }
}

/// Bytes of a queued job's text, held against a lane's budget until the job is dropped (answered,
/// expired or discarded), so the budget bounds the text that queued and running jobs keep alive.
struct Charge {
    bytes: usize,
    held: Arc<AtomicUsize>,
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.held.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

/// Jobs with at most this many bytes of review text go to the small lane, which workers take
/// from first: a caller sending long or crafted texts (or large batches) then delays a short
/// call by at most the job already running, not by everything it has queued.
const SMALL_JOB_BYTES: usize = 8 * 1024;
/// Review text that may wait in a live model's large lane, in bytes, besides its job count: jobs
/// there hold up to `limits.max_message_bytes` each. Short jobs never wait for this budget, so a
/// caller sending maximal requests cannot get a short call refused.
const LIVE_LARGE_LANE_BYTES: usize = 32 * 1024 * 1024;
/// The same for a shadow model, which runs behind live and so fills its queue under load: 256
/// queued 2 MiB requests kept about 230 MiB resident in the attack suite's run i.
const SHADOW_LARGE_LANE_BYTES: usize = 8 * 1024 * 1024;
/// After this many batches in a row from the small lane while large jobs wait, one large job
/// goes next: large jobs are delayed under load, never starved.
const SMALL_BATCHES_BEFORE_LARGE: u32 = 8;

/// CPU a shadow batch is sized to, from the model's measured cost per review. The budget is
/// checked before a batch starts, and a started batch runs to its end: a 32-review batch of a
/// transformer (~10 ms a review) spent 300 ms at once, three periods of a one-CPU cgroup quota,
/// throttling live with it. Batches of about this much keep the budget's hold fine-grained.
const SHADOW_BATCH_CPU: Duration = Duration::from_millis(10);

/// Reviews in a shadow batch: as many as `SHADOW_BATCH_CPU` buys at the model's mean cost so far
/// (`(cpu ns, reviews)`), at least one; no cap before anything is measured.
fn shadow_batch_cap((ns, reviews): (u64, u64)) -> usize {
    if reviews == 0 || ns == 0 {
        return usize::MAX;
    }
    let per_review = ns / reviews;
    (SHADOW_BATCH_CPU.as_nanos() as u64 / per_review.max(1)).max(1) as usize
}

/// Lane indices.
const SMALL: usize = 0;
const LARGE: usize = 1;

/// Which lanes a worker takes jobs from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Serves {
    /// Short jobs first, long ones between (shadows, and live with `long_job_nice = 0`).
    Both,
    /// A live model's normal-priority workers when long jobs have threads of their own.
    Short,
    /// Those threads, at `long_job_nice`: when the CPU is busy the kernel favours short calls,
    /// so a caller sending maximal requests cannot take the cores from everyone else.
    Long,
}

/// The front door to a model's workers. Clone freely.
#[derive(Clone)]
pub struct ModelHandle {
    spec: Arc<ModelSpec>,
    /// The small and the large lane, each bounded and shared fairly between callers; a full lane
    /// is an immediate `QueueFull`, never a wait.
    queue: Producer<Job>,
    capacity: usize,
    /// Bytes of review text held by large-lane jobs, and the most they may hold
    /// (`LIVE_LARGE_LANE_BYTES`, `SHADOW_LARGE_LANE_BYTES`).
    large_bytes: Arc<AtomicUsize>,
    large_budget: usize,
    metrics: Arc<ModelMetrics>,
    /// CPU used by this model's workers, when they are shadow workers under a `ShadowCpu`.
    cpu: Option<Arc<ModelCpu>>,
    /// Signalled each time a worker takes jobs off the queue (`wait_below`).
    taken: Arc<Notify>,
}

impl ModelHandle {
    pub fn spec(&self) -> &Arc<ModelSpec> {
        &self.spec
    }

    pub fn metrics(&self) -> &ModelMetrics {
        &self.metrics
    }

    /// The CPU this model's workers have used, for shadow workers (see `start`).
    pub fn cpu(&self) -> Option<&Arc<ModelCpu>> {
        self.cpu.as_ref()
    }

    /// Jobs waiting in the queue now (both lanes).
    pub fn queue_len(&self) -> usize {
        self.queue.queued()
    }

    /// Queues `reviews` for inference on behalf of `caller` (whose jobs take turns with other
    /// callers', `queue`); `Scoring::wait` yields the scores (and, with a `share` slot, the token
    /// ids). Every caller that awaits scores (classify, feedback, eval) goes through here.
    pub fn submit(
        &self,
        reviews: Arc<[ReviewInput]>,
        deadline: Option<Instant>,
        share: Option<Arc<TokenSlot>>,
        caller: Caller,
    ) -> Result<Scoring, Error> {
        let (reply, rx) = oneshot::channel();
        let job = Job {
            reviews,
            tokens: None,
            share,
            deadline,
            enqueued_at: Instant::now(),
            reply: Reply::Caller(reply),
            charge: None,
        };
        self.enqueue(job, caller)?;
        Ok(Scoring { rx, spec: self.spec.clone() })
    }

    /// Waits until fewer than `jobs` jobs are queued, woken by the workers as they take jobs
    /// (no polling). False if `deadline` came first.
    pub async fn wait_below(&self, jobs: usize, deadline: Instant) -> bool {
        loop {
            let taken = self.taken.notified();
            tokio::pin!(taken);
            // Registered before the check, so a job taken in between still wakes us.
            taken.as_mut().enable();
            if self.queue_len() < jobs {
                return true;
            }
            if tokio::time::timeout_at(deadline.into(), taken).await.is_err() {
                return false;
            }
        }
    }

    /// Queues `reviews` (with their token ids, if already known) without waiting: `callback`
    /// gets the outcome on the worker thread. On `Err` the callback was not queued and will not
    /// be called.
    pub fn submit_with(
        &self,
        reviews: Arc<[ReviewInput]>,
        tokens: Option<Arc<TokenRows>>,
        deadline: Option<Instant>,
        callback: Callback,
    ) -> Result<(), Error> {
        let job = Job {
            reviews,
            tokens,
            share: None,
            deadline,
            enqueued_at: Instant::now(),
            reply: Reply::Callback(callback),
            charge: None,
        };
        // Shadow copies of every caller's reviews share one queue position: a shadow samples
        // traffic, and taking turns by caller would bias the sample towards light callers.
        self.enqueue(job, Caller::SERVER)
    }

    fn enqueue(&self, mut job: Job, caller: Caller) -> Result<(), Error> {
        let bytes = text_bytes(&job.reviews);
        let lane = if bytes <= SMALL_JOB_BYTES { SMALL } else { LARGE };
        if lane == LARGE {
            let held = self.large_bytes.fetch_add(bytes, Ordering::Relaxed);
            job.charge = Some(Charge { bytes, held: self.large_bytes.clone() });
            // One job alone is always admitted, whatever its size: the message limit bounds it.
            if held > 0 && held + bytes > self.large_budget {
                self.metrics.dropped(DropReason::QueueFull).increment(1);
                let limit = format!("{} MiB of long reviews", self.large_budget >> 20);
                return Err(Error::QueueFull { model: self.spec.name.clone(), limit });
            }
        }
        match self.queue.push(lane, caller, job) {
            Ok(pushed_out) => {
                if let Some(job) = pushed_out {
                    self.metrics.dropped(DropReason::FairShare).increment(1);
                    let limit = format!("{} requests, and this caller held the most of them", self.capacity);
                    job.reply.send(Err(Error::QueueFull { model: self.spec.name.clone(), limit }), Duration::ZERO);
                }
                // Set here as well as when a worker takes jobs, so the gauge rises while every
                // worker is busy with a long batch.
                self.metrics.queue_depth.set(self.queue_len() as f64);
                Ok(())
            }
            Err(Refused::Full(_)) => {
                self.metrics.dropped(DropReason::QueueFull).increment(1);
                Err(Error::QueueFull { model: self.spec.name.clone(), limit: format!("{} requests", self.capacity) })
            }
            Err(Refused::Closed(_)) => Err(Error::Unavailable("the model is shutting down")),
        }
    }
}

/// Scores being computed for a caller (`ModelHandle::submit`).
pub struct Scoring {
    rx: oneshot::Receiver<JobResult>,
    spec: Arc<ModelSpec>,
}

impl Scoring {
    /// The job's outcome; a worker that stopped without answering is an inference error naming
    /// the model.
    pub async fn wait(self) -> JobResult {
        let spec = self.spec;
        self.rx
            .await
            .map_err(|_| Error::Inference { model: spec.name.clone(), reason: InferenceError::WorkerStopped })?
    }

    /// `wait` for a caller outside the async runtime (a plain thread).
    pub fn blocking_wait(self) -> JobResult {
        let spec = self.spec;
        self.rx
            .blocking_recv()
            .map_err(|_| Error::Inference { model: spec.name.clone(), reason: InferenceError::WorkerStopped })?
    }
}

/// A running model: its handle plus the worker threads to join on shutdown.
pub struct WorkerPool {
    pub handle: ModelHandle,
    pub threads: Vec<JoinHandle<()>>,
}

/// Builds one session per worker thread from the verified package, warms each up, and starts
/// the threads. Fails (naming the model file) if any session cannot be built or warmed.
/// With `shadow_cpu`, every batch's thread CPU time is recorded there and no batch starts while
/// its budget is spent.
pub fn start(
    backends: &Backends,
    package: &Package,
    role: Role,
    settings: WorkerSettings,
    shadow_cpu: Option<&Arc<ShadowCpu>>,
) -> Result<WorkerPool, PackageError> {
    let encoder = encoder(package)?;
    // With long-job threads, a live model has twice the sessions: its long jobs run beside its
    // short ones, not in their place.
    let n = settings.threads.max(1) * if long_job_threads(role, &settings) { 2 } else { 1 };
    let mut sessions: Vec<Box<dyn Backend>> = Vec::with_capacity(n);
    let mut run_cost = RunCost::default();
    for i in 0..n {
        let mut session = backends.build(package, settings.intra_threads)?;
        warm_up(session.as_mut(), &package.spec, &encoder)
            .map_err(|reason| PackageError::WarmUp { path: package.model_path(), reason })?;
        if i == 0 {
            run_cost = measure_run_cost(session.as_mut(), &package.spec, &encoder)
                .map_err(|reason| PackageError::WarmUp { path: package.model_path(), reason })?;
        }
        sessions.push(session);
    }
    start_with(package, encoder, role, settings, shadow_cpu, sessions, run_cost)
}

/// Whether a model's long jobs run on threads of their own (`Serves::Long`).
fn long_job_threads(role: Role, settings: &WorkerSettings) -> bool {
    role == Role::Live && settings.long_job_nice > 0
}

/// The package's tokenizer, checked against its cost budget.
fn encoder(package: &Package) -> Result<Encoder, PackageError> {
    let spec = &package.spec;
    Encoder::new(package.tokenizer.clone(), spec.max_sequence_length)
        .and_then(|encoder| check_cost_once(&encoder, &spec.tokenizer_sha256).map(|()| encoder))
        .map_err(|reason| PackageError::Tokenizer { path: spec.dir.join("tokenizer.json"), reason })
}

/// Starts one worker thread per backend given (unit tests, with `backend::fake`; the server goes
/// through `start`).
#[cfg(test)]
fn start_backends(
    package: &Package,
    role: Role,
    settings: WorkerSettings,
    backends: Vec<Box<dyn Backend>>,
    run_cost: RunCost,
) -> Result<WorkerPool, PackageError> {
    start_with(package, encoder(package)?, role, settings, None, backends, run_cost)
}

fn start_with(
    package: &Package,
    encoder: Encoder,
    role: Role,
    settings: WorkerSettings,
    shadow_cpu: Option<&Arc<ShadowCpu>>,
    backends: Vec<Box<dyn Backend>>,
    run_cost: RunCost,
) -> Result<WorkerPool, PackageError> {
    let spec = package.spec.clone();
    let (producer, consumer) = queue::queue(settings.queue_capacity.max(1));
    let metrics = Arc::new(ModelMetrics::new(&spec, role));
    let cpu = shadow_cpu.map(|_| Arc::new(ModelCpu::new(&spec.name)));
    let taken = Arc::new(Notify::new());
    let mut threads = Vec::with_capacity(backends.len());
    let (isolated_tx, isolated_rx) = std::sync::mpsc::channel::<()>();
    // With long-job threads the second half of the sessions (see `start`) serves long jobs.
    let short_threads = if long_job_threads(role, &settings) && backends.len() >= 2 { backends.len() / 2 } else { 0 };
    for (i, backend) in backends.into_iter().enumerate() {
        let serves = match short_threads {
            0 => Serves::Both,
            n if i < n => Serves::Short,
            _ => Serves::Long,
        };
        let worker = Worker {
            backend,
            spec: spec.clone(),
            encoder: encoder.clone(),
            queue: consumer.clone(),
            serves,
            small_streak: 0,
            policy: settings.batch,
            metrics: metrics.clone(),
            rows: TokenRows::default(),
            tokens: TokenBatch::default(),
            features: Vec::new(),
            scores: Vec::new(),
            accounting: shadow_cpu.zip(cpu.as_ref()).map(|(b, m)| (b.clone(), m.clone())),
            taken: taken.clone(),
            tokenized_ahead: Duration::ZERO,
            timing: BatchTiming::at(Instant::now()),
            run_cost,
            group_rows: TokenRows::default(),
            group_features: Vec::new(),
            group_scores: Vec::new(),
        };
        let name = match serves {
            Serves::Long => format!("long-{}-{}", spec.name, i - short_threads),
            _ => format!("infer-{}-{i}", spec.name),
        };
        let model = spec.name.clone();
        let isolated = isolated_tx.clone();
        let thread = std::thread::Builder::new()
            .name(name.chars().take(15).collect())
            .spawn(move || {
                match serves {
                    Serves::Long => lower_long_job_thread(&model, &settings),
                    // A short call waits on a live model's workers: they preempt long work.
                    _ if role == Role::Live => cpu::shorten_slice(),
                    _ => cpu::default_slice(),
                }
                isolate(&model, &settings);
                let _ = isolated.send(());
                drop(isolated);
                worker.run()
            })
            .map_err(|e| PackageError::WarmUp {
                path: spec.dir.clone(),
                reason: format!("cannot start worker thread: {e}"),
            })?;
        threads.push(thread);
    }
    // The scheduling policy each thread got is exported before the model is reported loaded,
    // so the gauge never shows a previous load's policy while this one serves.
    drop(isolated_tx);
    while isolated_rx.recv().is_ok() {}
    let handle = ModelHandle {
        spec,
        queue: producer,
        capacity: settings.queue_capacity.max(1),
        large_bytes: Arc::new(AtomicUsize::new(0)),
        large_budget: if role == Role::Shadow { SHADOW_LARGE_LANE_BYTES } else { LIVE_LARGE_LANE_BYTES },
        metrics,
        cpu,
        taken: taken.clone(),
    };
    Ok(WorkerPool { handle, threads })
}

/// `Encoder::check_cost`, measured once per tokenizer file and length: reloads and models that
/// share a tokenizer do not measure again. Only a pass is remembered, so a refusal is measured
/// afresh next time.
fn check_cost_once(encoder: &Encoder, tokenizer_sha256: &str) -> Result<(), String> {
    static PASSED: Mutex<BTreeSet<(String, usize)>> = Mutex::new(BTreeSet::new());
    let key = (tokenizer_sha256.to_string(), encoder.max_chars);
    if PASSED.lock().unwrap_or_else(|e| e.into_inner()).contains(&key) {
        return Ok(());
    }
    encoder.check_cost()?;
    PASSED.lock().unwrap_or_else(|e| e.into_inner()).insert(key);
    Ok(())
}

/// The review a model runs at load: to warm it up and to measure its `RunCost`.
const WARM_UP_REVIEW: &str = "modserve warm-up review: great product, fast delivery.";

/// Runs one tiny batch so the first real request does not pay for lazy initialisation, and so a
/// model that loads but cannot run is refused at start-up.
fn warm_up(session: &mut dyn Backend, spec: &ModelSpec, encoder: &Encoder) -> Result<(), String> {
    let mut tokens = TokenBatch::default();
    encoder.encode_into([WARM_UP_REVIEW], &mut tokens)?;
    let features: Vec<f32> = spec.features.iter().map(|f| f.default).collect();
    let features = (!features.is_empty()).then_some(features.as_slice());
    let mut out = Vec::new();
    session.run(&tokens, features, &mut out).map_err(|e| e.to_string())
}

/// Measures `RunCost` on a warmed session: one row the length of the warm-up review, then a few
/// rows of `LONG_ROW` tokens, the fastest of a few tries each. Load time grows by these runs (for
/// a transformer, tens of milliseconds).
fn measure_run_cost(backend: &mut dyn Backend, spec: &ModelSpec, encoder: &Encoder) -> Result<RunCost, String> {
    const TRIES: usize = 3;
    const LONG_ROWS: usize = 4;
    const LONG_ROW: usize = 32;
    let mut rows = TokenRows::default();
    encoder.encode_rows([WARM_UP_REVIEW], &mut rows)?;
    let short: Vec<i64> = rows.row(0).to_vec();
    if short.is_empty() {
        return Ok(RunCost::default());
    }
    let width = LONG_ROW.min(spec.max_sequence_length).max(short.len());
    let long: Vec<i64> = short.iter().copied().cycle().take(width).collect();
    let mut one = TokenRows::default();
    one.push(short.iter().copied());
    let mut many = TokenRows::default();
    for _ in 0..LONG_ROWS {
        many.push(long.iter().copied());
    }
    let features: Vec<f32> = spec.features.iter().map(|f| f.default).collect();
    let mut fastest = |rows: &TokenRows| -> Result<f64, String> {
        let mut batch = TokenBatch::default();
        batch.pad_from(rows);
        let features: Vec<f32> = features.iter().copied().cycle().take(features.len() * rows.len()).collect();
        let features = (!features.is_empty()).then_some(features.as_slice());
        let mut out = Vec::new();
        let mut best = f64::INFINITY;
        for _ in 0..TRIES {
            out.clear();
            let started = Instant::now();
            backend.run(&batch, features, &mut out).map_err(|e| e.to_string())?;
            best = best.min(started.elapsed().as_nanos() as f64);
        }
        Ok(best)
    };
    let (t_one, t_many) = (fastest(&one)?, fastest(&many)?);
    let (tokens_one, tokens_many) = (short.len() as f64, (LONG_ROWS * width) as f64);
    let per_token_ns = ((t_many - t_one) / (tokens_many - tokens_one)).max(0.0);
    let per_run_ns = (t_one - per_token_ns * tokens_one).max(0.0);
    tracing::debug!(model = %spec.name, per_run_us = per_run_ns / 1e3, per_token_us = per_token_ns / 1e3, "measured run cost");
    Ok(RunCost { per_run_ns, per_token_ns })
}

/// The state one worker thread owns.
struct Worker {
    backend: Box<dyn Backend>,
    spec: Arc<ModelSpec>,
    encoder: Encoder,
    /// Shared with the model's other workers; closes when every `ModelHandle` is dropped.
    queue: Consumer<Job>,
    serves: Serves,
    /// Batches taken from the small lane in a row while the large lane had jobs.
    small_streak: u32,
    policy: BatchPolicy,
    metrics: Arc<ModelMetrics>,
    /// Buffers reused across batches.
    rows: TokenRows,
    tokens: TokenBatch,
    features: Vec<f32>,
    scores: Vec<f32>,
    /// Shadow workers: the budget every batch is charged to, and this model's share of it.
    accounting: Option<(Arc<ShadowCpu>, Arc<ModelCpu>)>,
    /// Shared with the handles; see `ModelHandle::wait_below`.
    taken: Arc<Notify>,
    /// Time spent tokenizing the next batch's reviews ahead of it (`tokenize_ahead`), counted
    /// in that batch's tokenize stage.
    tokenized_ahead: Duration,
    /// The last batch's, handed to its jobs.
    timing: BatchTiming,
    /// Measured at load; decides whether a batch runs whole or as groups of similar length.
    run_cost: RunCost,
    /// Buffers for running a batch as groups (`run_grouped`).
    group_rows: TokenRows,
    group_features: Vec<f32>,
    group_scores: Vec<f32>,
}

impl Worker {
    fn run(mut self) {
        let mut carried: Option<(Job, usize)> = None;
        loop {
            let Some((first, lane)) = carried.take().or_else(|| self.next_job()) else {
                return; // every handle dropped and the queue drained
            };
            let (mut jobs, deferred) = self.fill(first, lane, true);
            let taken = Instant::now();
            carried = deferred.map(|job| (job, lane));
            if lane == LARGE && self.accounting.is_none() && self.serves == Serves::Both {
                self.tokenize_ahead(&mut jobs);
            }
            self.run_batch(jobs, taken);
            self.tokenized_ahead = Duration::ZERO;
        }
    }

    /// A batch that starts with `first`, filled from `first`'s lane only, waiting up to the batch
    /// policy's `max_wait` for more when `wait`; and the job that came next but did not fit, if any.
    fn fill(&mut self, first: Job, lane: usize, wait: bool) -> (Vec<Job>, Option<Job>) {
        let mut reviews = first.reviews.len();
        let mut jobs = vec![first];
        let mut deferred = None;
        let wait_until = self.policy.wait_until(Instant::now()).filter(|_| wait);
        let cap = self.accounting.as_ref().map_or(usize::MAX, |(_, model)| shadow_batch_cap(model.totals()));
        while !self.policy.is_full(reviews) && reviews < cap {
            let next = match self.queue.try_pop(lane) {
                Ok(Some(job)) => job,
                Err(queue::Closed) => break,
                Ok(None) => match wait_until.and_then(|until| self.queue.pop(&[lane], Some(until))) {
                    Some((job, _)) => job,
                    None => break,
                },
            };
            match self.policy.admit(reviews, next.reviews.len()) {
                Admit::Join if reviews + next.reviews.len() <= cap => {
                    reviews += next.reviews.len();
                    jobs.push(next);
                }
                Admit::Join => {
                    deferred = Some(next);
                    break;
                }
                Admit::Defer => {
                    deferred = Some(next);
                    break;
                }
            }
        }
        self.metrics.queue_depth.set(self.queue.total() as f64);
        self.taken.notify_waiters();
        (jobs, deferred)
    }

    /// Runs `jobs`, taken off the queue at `taken`, as one batch; a shadow worker's batch waits
    /// for and is charged to the shadow CPU budget.
    fn run_batch(&mut self, jobs: Vec<Job>, taken: Instant) {
        match self.accounting.clone() {
            None => {
                self.process(jobs, taken);
            }
            Some((budget, model)) => {
                wait_for_budget(&budget, &jobs);
                // The callbacks (comparison, logging) are shadow work too: measure all of it.
                let before = cpu::thread_cpu_time();
                // A shadow batch's wait for the budget counts as queueing, as it always has.
                let reviews = self.process(jobs, Instant::now());
                budget.record(&model, cpu::thread_cpu_time().saturating_sub(before), reviews);
            }
        }
    }

    /// Tokenizes a batch of large jobs one review at a time before it runs, and between reviews
    /// runs a batch of short jobs if any wait: tokenizing long reviews is nearly all of a large
    /// batch's time (55 of 55.4 ms for 64 reviews of 32 KiB before the prefix read), so a short
    /// call then waits for one review, not for the whole batch. The large batch is slowed by at
    /// most one short batch per review. A job whose deadline passes or whose caller leaves is
    /// left untokenized, for `process` to drop; a review the tokenizer fails on is left for
    /// `infer`, which reports the error as before.
    fn tokenize_ahead(&mut self, jobs: &mut [Job]) {
        let mut spent = Duration::ZERO;
        for job in jobs.iter_mut() {
            if job.known_tokens().is_some() {
                continue;
            }
            let mut mine = TokenRows::default();
            for review in job.reviews.iter() {
                if self.queue.len(SMALL) > 0 {
                    self.run_one_small_batch();
                }
                if job.deadline.is_some_and(|d| d <= Instant::now()) || job.reply.is_closed() {
                    break;
                }
                let started = Instant::now();
                let encoded = self.encode_review(review, &mut mine);
                spent += started.elapsed();
                if encoded.is_err() {
                    break;
                }
            }
            if mine.len() == job.reviews.len() {
                let mine = Arc::new(mine);
                job.publish(&mine);
                job.tokens = Some(mine);
            }
        }
        self.tokenized_ahead = spent;
    }

    /// Appends `review`'s token ids to `rows`.
    fn encode_review(&mut self, review: &ReviewInput, rows: &mut TokenRows) -> Result<(), String> {
        self.backend.before_tokenizing();
        self.encoder.encode_rows([review.model_text.as_str()], rows)
    }

    /// One batch from the small lane, if it has a job, without waiting for more.
    fn run_one_small_batch(&mut self) {
        let Ok(Some(first)) = self.queue.try_pop(SMALL) else {
            return;
        };
        let (jobs, deferred) = self.fill(first, SMALL, false);
        self.run_batch(jobs, Instant::now());
        if let Some(job) = deferred {
            self.run_batch(vec![job], Instant::now());
        }
    }

    /// The next job to start a batch with, and its lane: the small lane first, unless it has
    /// gone first `SMALL_BATCHES_BEFORE_LARGE` times while large jobs waited. Blocks while both
    /// are empty; `None` once every handle is dropped and both are drained. A worker that serves
    /// one lane (`Serves::Short`, `Serves::Long`) takes from that lane alone.
    fn next_job(&mut self) -> Option<(Job, usize)> {
        let only = match self.serves {
            Serves::Both => None,
            Serves::Short => Some(SMALL),
            Serves::Long => Some(LARGE),
        };
        if let Some(lane) = only {
            return self.queue.pop(&[lane], None);
        }
        let large_waiting = self.queue.len(LARGE) > 0;
        let order = if large_waiting && self.small_streak >= SMALL_BATCHES_BEFORE_LARGE {
            [LARGE, SMALL]
        } else {
            [SMALL, LARGE]
        };
        let (job, lane) = self.queue.pop(&order, None)?;
        self.small_streak = if lane == SMALL && large_waiting { self.small_streak + 1 } else { 0 };
        Some((job, lane))
    }

    /// Drops expired and abandoned jobs, runs the rest as one batch and replies to each.
    /// Returns the reviews run.
    fn process(&mut self, jobs: Vec<Job>, taken: Instant) -> usize {
        let now = Instant::now();
        let mut live = Vec::with_capacity(jobs.len());
        for job in jobs {
            // Up to when the batch was taken off the queue: tokenizing ahead is not waiting.
            self.metrics.queue_wait.record(taken.duration_since(job.enqueued_at).as_secs_f64());
            if job.deadline.is_some_and(|d| d <= now) {
                self.metrics.dropped(DropReason::Deadline).increment(1);
                let model = &self.spec.name;
                let error = Error::DeadlineExceeded(format!("before inference on model {model}"));
                job.reply.send(Err(error), Duration::ZERO);
            } else if job.reply.is_closed() {
                self.metrics.dropped(DropReason::Cancelled).increment(1);
            } else {
                live.push(job);
            }
        }
        if live.is_empty() {
            return 0;
        }
        // A panic inside tokenization or ONNX Runtime must not take the thread down with the
        // jobs' reply channels: catch it and answer every job with an error.
        let started = Instant::now();
        let waited_before = self.accounting.as_ref().and_then(|_| cpu::thread_run_delay());
        let mut expired = vec![false; live.len()];
        let outcome = catch_unwind(AssertUnwindSafe(|| self.infer(&live, &mut expired)))
            .unwrap_or_else(|panic| Err(InferenceError::Panicked(panic_message(&panic))));
        let elapsed = own_time(started.elapsed(), waited_before);
        let model = self.spec.name.clone();
        let (live, late): (Vec<_>, Vec<_>) = live.into_iter().zip(expired).partition(|(_, late)| !late);
        for (job, _) in late {
            // Its deadline passed while the batch was being tokenized: the job never ran.
            self.metrics.dropped(DropReason::Deadline).increment(1);
            let error = Error::DeadlineExceeded(format!("while tokenizing for model {model}"));
            job.reply.send(Err(error), Duration::ZERO);
        }
        let reviews = live.iter().map(|(job, _)| job.reviews.len()).sum();
        match outcome {
            Ok(()) => {
                let n_labels = self.spec.labels.len();
                let mut row = 0;
                for (job, _) in live {
                    let n = job.reviews.len();
                    let scores = self.scores[row * n_labels..(row + n) * n_labels].to_vec();
                    let tokens = job.share.as_ref().and_then(|slot| slot.get().cloned());
                    job.reply.send(Ok(JobOutput { scores, tokens, timing: self.timing }), elapsed);
                    row += n;
                }
            }
            Err(reason) => {
                self.metrics.errors.increment(1);
                tracing::error!(model = %model, error = %reason, jobs = live.len(), "inference failed");
                for (job, _) in live {
                    let error = Error::Inference { model: model.clone(), reason: reason.clone() };
                    job.reply.send(Err(error), elapsed);
                }
            }
        }
        reviews
    }

    /// Input-quality counters for the batch in `self.rows`: tokens, unknown tokens, and reviews
    /// that filled the model's length (their end was cut).
    fn count_tokens(&self) {
        let (mut tokens, mut unknown, mut full) = (0, 0, 0);
        for r in 0..self.rows.len() {
            let row = self.rows.row(r);
            tokens += row.len();
            if let Some(unk) = self.encoder.unknown_id {
                unknown += row.iter().filter(|&&id| id == unk).count();
            }
            if row.len() >= self.encoder.max_sequence_length {
                full += 1;
            }
        }
        self.metrics.tokens.increment(tokens as u64);
        self.metrics.unknown_tokens.increment(unknown as u64);
        self.metrics.at_max_tokens.increment(full);
    }

    /// Tokenizes and runs `jobs` as one batch, leaving the scores in `self.scores`. A job whose
    /// deadline passes while the batch is tokenized is marked in `expired` and left out, so one
    /// slow text cannot make the rest of the batch run for callers who have given up.
    fn infer(&mut self, jobs: &[Job], expired: &mut [bool]) -> Result<(), InferenceError> {
        let spec = self.spec.clone();
        let t0 = Instant::now();
        self.rows.clear();
        for (j, job) in jobs.iter().enumerate() {
            let n = job.reviews.len();
            if let Some(known) = job.known_tokens() {
                self.rows.extend_from(known, 0..n);
                continue;
            }
            let mut mine = TokenRows::default();
            for review in job.reviews.iter() {
                if job.deadline.is_some_and(|d| d <= Instant::now()) {
                    expired[j] = true;
                    break;
                }
                self.encode_review(review, &mut mine).map_err(InferenceError::Tokenizer)?;
            }
            if expired[j] {
                continue;
            }
            self.rows.extend_from(&mine, 0..n);
            job.publish(&Arc::new(mine));
        }
        if self.rows.is_empty() {
            return Ok(());
        }
        self.count_tokens();
        self.features.clear();
        if !spec.features.is_empty() {
            let kept = jobs.iter().zip(expired.iter()).filter(|(_, late)| !**late);
            for review in kept.flat_map(|(j, _)| j.reviews.iter()) {
                for feature in &spec.features {
                    self.features.push(review.signal(&feature.name).unwrap_or(feature.default));
                }
            }
        }
        let t1 = Instant::now();
        let ahead = std::mem::take(&mut self.tokenized_ahead);
        self.timing = BatchTiming {
            tokenize_start: t0.checked_sub(ahead).unwrap_or(t0),
            infer_start: t1,
            infer_end: t1,
            rows: self.rows.len(),
        };
        self.metrics.tokenize.record((t1.duration_since(t0) + ahead).as_secs_f64());
        self.metrics.batch_size.record(self.rows.len() as f64);
        self.metrics.batches.increment(1);
        self.scores.clear();
        let lengths: Vec<usize> = (0..self.rows.len()).map(|r| self.rows.row(r).len()).collect();
        let groups = self.run_cost.split_by_length(&lengths);
        let result = if groups.len() == 1 {
            self.tokens.pad_from(&self.rows);
            let features = (!spec.features.is_empty()).then_some(self.features.as_slice());
            self.backend.run(&self.tokens, features, &mut self.scores)
        } else {
            self.run_grouped(&groups)
        };
        self.timing.infer_end = Instant::now();
        self.metrics.inference.record(self.timing.infer_end.duration_since(t1).as_secs_f64());
        result
    }

    /// Runs the batch in `self.rows` (and `self.features`) as `groups` of row indices, each
    /// padded to its own longest row, and puts the scores back in row order in `self.scores`.
    fn run_grouped(&mut self, groups: &[Vec<usize>]) -> Result<(), InferenceError> {
        let n_labels = self.spec.labels.len();
        let n_features = self.spec.features.len();
        self.scores.resize(self.rows.len() * n_labels, 0.0);
        for group in groups {
            self.group_rows.clear();
            self.group_features.clear();
            for &r in group {
                self.group_rows.push(self.rows.row(r).iter().copied());
                self.group_features.extend_from_slice(&self.features[r * n_features..(r + 1) * n_features]);
            }
            self.tokens.pad_from(&self.group_rows);
            let features = (n_features > 0).then_some(self.group_features.as_slice());
            self.group_scores.clear();
            self.backend.run(&self.tokens, features, &mut self.group_scores)?;
            if self.group_scores.len() != group.len() * n_labels {
                let shape = vec![self.group_scores.len() as i64];
                return Err(InferenceError::Shape {
                    output: "scores".into(),
                    shape,
                    rows: group.len(),
                    labels: n_labels,
                });
            }
            for (k, &r) in group.iter().enumerate() {
                self.scores[r * n_labels..(r + 1) * n_labels]
                    .copy_from_slice(&self.group_scores[k * n_labels..(k + 1) * n_labels]);
            }
        }
        Ok(())
    }
}

/// Puts a live model's long-job thread behind short calls: `SCHED_IDLE` (`long_job_scheduling =
/// "idle"`), else `long_job_nice`. Best effort: what could not be applied is logged, and the
/// thread runs at what did take effect (normal priority at worst, as long jobs did before).
fn lower_long_job_thread(model: &str, settings: &WorkerSettings) {
    let idle = settings.long_job_scheduling == crate::config::ThreadScheduling::Idle;
    let nice = settings.long_job_nice;
    match cpu::lower_thread_priority(idle, nice) {
        (_, None) => {}
        (policy, Some(e)) => tracing::warn!(
            model,
            policy = policy.as_str(),
            nice,
            error = %e,
            "cannot put the long-job worker below short calls as configured (batching.long_job_scheduling); long jobs run at this policy"
        ),
    }
}

/// Applies a worker thread's scheduling and CPU placement (shadows: `SCHED_IDLE` or `nice`,
/// and `shadow.cpus`). Best effort: what could not be applied is logged, and the policy in
/// effect is exported, so a dashboard shows a shadow that is not behind live.
fn isolate(model: &str, settings: &WorkerSettings) {
    if let Some(cpus) = &settings.cpus
        && let Err(e) = cpu::set_thread_affinity(cpus)
    {
        tracing::warn!(model, cpus = %cpus.to_list(), error = %e, "cannot keep shadow worker on shadow.cpus");
    }
    if !settings.idle && settings.nice == 0 {
        return;
    }
    let (policy, error) = cpu::lower_thread_priority(settings.idle, settings.nice);
    crate::metrics::shadow_scheduling(model, policy);
    let error = error.map(|e| e.to_string());
    match policy {
        cpu::SchedPolicy::Idle => tracing::debug!(model, "shadow worker runs under SCHED_IDLE"),
        _ => tracing::warn!(
            model,
            policy = policy.as_str(),
            nice = settings.nice,
            error = error.as_deref().unwrap_or(""),
            "shadow worker could not use SCHED_IDLE; live work has priority only by niceness"
        ),
    }
}

/// Waits, before a shadow batch, while the shadow CPU budget is spent. Stops waiting once every
/// job is past its deadline: `process` then drops them unrun.
fn wait_for_budget(budget: &ShadowCpu, jobs: &[Job]) {
    loop {
        let wait = budget.wait();
        if wait.is_zero() {
            return;
        }
        let now = Instant::now();
        let latest = jobs.iter().map(|j| j.deadline).try_fold(now, |acc, d| d.map(|d| acc.max(d)));
        let mut nap = wait.min(Duration::from_millis(50));
        if let Some(latest) = latest {
            if latest <= now {
                return;
            }
            nap = nap.min(latest - now);
        }
        std::thread::sleep(nap);
    }
}

/// A batch's own run time: wall time minus the time its thread waited for a CPU (runnable, not
/// running). A shadow behind live work under `SCHED_IDLE` or a throttled quota waits a lot, and
/// that wait is not the model being slow; the circuit breaker judges this figure.
fn own_time(wall: Duration, waited_before: Option<Duration>) -> Duration {
    match (waited_before, waited_before.and(cpu::thread_run_delay())) {
        (Some(before), Some(after)) => wall.saturating_sub(after.saturating_sub(before)),
        _ => wall,
    }
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".to_string()
    }
}

/// The workers' own behaviour, on a scripted backend (no model runtime): what every caller of a
/// batch gets when the backend fails or panics, and that late work never reaches it.
#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::*;
    use crate::inference::backend::fake::FakeBackend;

    fn package() -> Package {
        Package::load(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-abuse")).unwrap()
    }

    fn pool(backend: &FakeBackend) -> WorkerPool {
        pool_as(backend, Role::Live)
    }

    fn pool_as(backend: &FakeBackend, role: Role) -> WorkerPool {
        pool_costing(backend, role, RunCost::default())
    }

    /// One worker of batches up to 8, every lane on it.
    fn settings() -> WorkerSettings {
        WorkerSettings {
            batch: BatchPolicy { max_batch_size: 8, max_wait: Duration::ZERO },
            queue_capacity: 8,
            threads: 1,
            intra_threads: 1,
            nice: 0,
            idle: false,
            cpus: None,
            long_job_nice: 0,
            long_job_scheduling: crate::config::ThreadScheduling::Nice,
        }
    }

    fn pool_costing(backend: &FakeBackend, role: Role, run_cost: RunCost) -> WorkerPool {
        start_backends(&package(), role, settings(), vec![Box::new(backend.clone())], run_cost).unwrap()
    }

    /// A backend that holds each batch until the test lets it go, and says when a batch began.
    fn gated() -> (FakeBackend, std::sync::mpsc::Receiver<()>, std::sync::mpsc::Sender<()>) {
        let (began_tx, began) = std::sync::mpsc::channel();
        let (release, release_rx) = std::sync::mpsc::channel::<()>();
        let (began_tx, release_rx) = (Mutex::new(began_tx), Mutex::new(release_rx));
        let fake = FakeBackend::new(move |_| {
            let _ = began_tx.lock().unwrap().send(());
            let _ = release_rx.lock().unwrap().recv();
            Ok(vec![0.5, 0.5])
        });
        (fake, began, release)
    }

    fn reviews(texts: &[&str]) -> Arc<[ReviewInput]> {
        let review = |(i, t): (usize, &&str)| ReviewInput {
            id: format!("r{i}"),
            model_text: t.to_string(),
            rating: None,
            signals: Default::default(),
            language: None,
            text_cut: false,
        };
        texts.iter().enumerate().map(review).collect()
    }

    fn stop(pool: WorkerPool) {
        drop(pool.handle);
        pool.threads.into_iter().for_each(|t| t.join().unwrap());
    }

    #[test]
    fn each_review_gets_its_own_row_of_scores() {
        // Scores from the row's first token id, so rows cannot be mixed up unnoticed.
        let fake = FakeBackend::new(|ids| Ok(vec![(ids[1] % 100) as f32 / 100.0, 0.5]));
        let pool = pool(&fake);
        let texts = ["you idiot", "great product", "fast delivery"];
        let out = pool.handle.submit(reviews(&texts), None, None, Caller::SERVER).unwrap().blocking_wait().unwrap();
        let encoder = encoder(&package()).unwrap();
        let mut expected = Vec::new();
        for text in texts {
            let mut rows = TokenRows::default();
            encoder.encode_rows([text], &mut rows).unwrap();
            expected.extend([(rows.row(0)[1] % 100) as f32 / 100.0, 0.5]);
        }
        assert_eq!(out.scores, expected);
        assert_eq!(fake.rows.load(Ordering::SeqCst), 3);
        stop(pool);
    }

    #[test]
    fn a_batch_of_mixed_lengths_runs_as_groups_and_each_review_keeps_its_scores() {
        // A transformer-like cost: nearly all per token, so padding short rows to a long one is
        // worth avoiding. Each row's score is its own token count, and every run's width is kept.
        let widths = Arc::new(Mutex::new(Vec::new()));
        let seen = widths.clone();
        let fake = FakeBackend::new(move |ids| {
            seen.lock().unwrap().push(ids.len());
            Ok(vec![ids.iter().filter(|&&id| id != 0).count() as f32 / 100.0, 0.5])
        });
        let cost = RunCost { per_run_ns: 2_000_000.0, per_token_ns: 100_000.0 };
        let pool = pool_costing(&fake, Role::Live, cost);
        let long = "great product fast delivery ".repeat(6);
        let texts = ["you idiot", long.as_str(), "great product", long.as_str(), "fast delivery"];
        let out = pool.handle.submit(reviews(&texts), None, None, Caller::SERVER).unwrap().blocking_wait().unwrap();
        let encoder = encoder(&package()).unwrap();
        let mut expected = Vec::new();
        let mut short_max = 0;
        for text in texts {
            let mut rows = TokenRows::default();
            encoder.encode_rows([text], &mut rows).unwrap();
            expected.extend([rows.row(0).len() as f32 / 100.0, 0.5]);
            if text.len() < 20 {
                short_max = short_max.max(rows.row(0).len());
            }
        }
        assert_eq!(out.scores, expected, "scores back in the order of the reviews");
        assert_eq!(fake.batches.load(Ordering::SeqCst), 2, "one run for the short rows, one for the long");
        let widths = widths.lock().unwrap().clone();
        assert_eq!(
            widths.iter().filter(|&&w| w == short_max).count(),
            3,
            "short rows padded to {short_max}: {widths:?}"
        );
        stop(pool);
    }

    #[test]
    fn a_backend_that_panics_fails_its_batch_and_the_worker_goes_on() {
        let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let seen = calls.clone();
        let fake = FakeBackend::new(move |_| {
            if seen.fetch_add(1, Ordering::SeqCst) == 0 {
                panic!("runtime blew up");
            }
            Ok(vec![0.1, 0.2])
        });
        let pool = pool(&fake);
        match pool.handle.submit(reviews(&["first"]), None, None, Caller::SERVER).unwrap().blocking_wait() {
            Err(Error::Inference { model, reason: InferenceError::Panicked(message) }) => {
                assert_eq!(model, "tiny-abuse");
                assert!(message.contains("runtime blew up"), "{message}");
            }
            other => panic!("expected a panic answered as an inference error, got {other:?}"),
        }
        let out =
            pool.handle.submit(reviews(&["second"]), None, None, Caller::SERVER).unwrap().blocking_wait().unwrap();
        assert_eq!(out.scores, [0.1, 0.2], "the same thread serves the next batch");
        stop(pool);
    }

    #[test]
    fn a_backend_error_reaches_the_caller_naming_model_and_reason() {
        let fake =
            FakeBackend::new(|_| Err(InferenceError::NotProbability { output: "probs".into(), value: f32::NAN }));
        let pool = pool(&fake);
        let error =
            pool.handle.submit(reviews(&["a", "b"]), None, None, Caller::SERVER).unwrap().blocking_wait().unwrap_err();
        assert_eq!(
            error.to_string(),
            "inference failed on model tiny-abuse: output \"probs\" holds NaN, not a probability in [0, 1]"
        );
        stop(pool);
    }

    #[test]
    fn a_shadow_holds_a_bounded_amount_of_long_text_and_short_jobs_still_get_in() {
        let (fake, began, release) = gated();
        let pool = pool_as(&fake, Role::Shadow);
        let long = "great product ".repeat(3 * 1024 * 1024 / 14);
        // The first long job runs (held at the backend) and the second waits: 6 MiB held.
        let first = pool.handle.submit(reviews(&[&long]), None, None, Caller::SERVER).unwrap();
        began.recv().unwrap();
        let second = pool.handle.submit(reviews(&[&long]), None, None, Caller::SERVER).unwrap();
        match pool.handle.submit(reviews(&[&long]), None, None, Caller::SERVER) {
            Err(Error::QueueFull { model, limit }) => {
                assert_eq!((model.as_str(), limit.as_str()), ("tiny-abuse", "8 MiB of long reviews"));
            }
            Err(other) => panic!("expected the byte budget to refuse the third, got {other}"),
            Ok(_) => panic!("a third 3 MiB job was queued beyond the shadow's 8 MiB"),
        }
        let short = pool
            .handle
            .submit(reviews(&["short review"]), None, None, Caller::SERVER)
            .expect("short jobs are not held to it");
        drop(release);
        for scoring in [first, second, short] {
            scoring.blocking_wait().unwrap();
        }
        // Answered jobs give their bytes back.
        pool.handle.submit(reviews(&[&long]), None, None, Caller::SERVER).unwrap().blocking_wait().unwrap();
        pool.handle.submit(reviews(&[&long]), None, None, Caller::SERVER).unwrap().blocking_wait().unwrap();
        stop(pool);
    }

    #[test]
    fn a_short_job_runs_between_the_reviews_of_a_long_batch_being_tokenized() {
        // Every review takes 300 ms to tokenize; five of 2 KiB make a long job.
        let fake = FakeBackend::new(|_| Ok(vec![0.5, 0.5])).slow_tokenizing(Duration::from_millis(300));
        let pool = pool(&fake);
        let slow = "great product ".repeat(150);
        let long =
            pool.handle.submit(reviews(&[&slow, &slow, &slow, &slow, &slow]), None, None, Caller::SERVER).unwrap();
        while pool.handle.queue_len() > 0 {
            std::thread::yield_now();
        }
        let short = pool.handle.submit(reviews(&["you idiot"]), None, None, Caller::SERVER).unwrap();
        let Scoring { mut rx, .. } = long;
        short.blocking_wait().expect("the short job is answered");
        assert!(
            matches!(rx.try_recv(), Err(oneshot::error::TryRecvError::Empty)),
            "the short job waited for the whole long batch"
        );
        rx.blocking_recv().unwrap().expect("the long job is answered too");
        stop(pool);
    }

    /// The calling thread's niceness and scheduling policy (0 normal, 5 idle), from /proc, and
    /// its scheduler slice.
    fn own_scheduling() -> (i64, u32, Duration) {
        let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
        // Fields 19 and 41; the fields after the command name's closing parenthesis start at field 3.
        let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
        (fields[19 - 3].parse().unwrap(), fields[41 - 3].parse().unwrap(), cpu::thread_slice(0).unwrap())
    }

    /// Runs one long job (held at the backend) and one short job beside it on a live model with
    /// long-job threads at niceness 10 and `scheduling`; returns the scheduling each ran under.
    fn long_and_short_under(
        scheduling: crate::config::ThreadScheduling,
    ) -> ((i64, u32, Duration), (i64, u32, Duration)) {
        // Rows longer than a short review are held inside the runtime until the test lets them
        // go; every row reports the scheduling of the thread that ran it.
        let (began_tx, began) = std::sync::mpsc::channel();
        let (release, release_rx) = std::sync::mpsc::channel::<()>();
        let (began_tx, release_rx) = (Mutex::new(began_tx), Mutex::new(release_rx));
        let ran_short_at = Arc::new(Mutex::new(Vec::new()));
        let ran = ran_short_at.clone();
        let fake = FakeBackend::new(move |row| {
            if row.len() > 16 {
                let _ = began_tx.lock().unwrap().send(own_scheduling());
                let _ = release_rx.lock().unwrap().recv();
            } else {
                ran.lock().unwrap().push(own_scheduling());
            }
            Ok(vec![0.5, 0.5])
        });
        let settings = WorkerSettings { long_job_nice: 10, long_job_scheduling: scheduling, ..settings() };
        let backends: Vec<Box<dyn Backend>> = vec![Box::new(fake.clone()), Box::new(fake.clone())];
        let pool = start_backends(&package(), Role::Live, settings, backends, RunCost::default()).unwrap();
        // Over 8 KiB of text: a long job.
        let long_text = "great product ".repeat(700);
        let long = pool.handle.submit(reviews(&[&long_text]), None, None, Caller::SERVER).unwrap();
        let long_ran = began.recv_timeout(Duration::from_secs(30)).expect("the long batch started");
        let short = pool.handle.submit(reviews(&["you idiot"]), None, None, Caller::SERVER).unwrap();
        short.blocking_wait().expect("the short job is answered while the long one is held");
        release.send(()).unwrap();
        long.blocking_wait().expect("the long job is answered once let go");
        stop(pool);
        let short_ran = ran_short_at.lock().unwrap().clone();
        assert_eq!(short_ran.len(), 1, "{short_ran:?}");
        (long_ran, short_ran[0])
    }

    #[test]
    fn a_live_models_long_jobs_run_on_their_own_thread_below_short_calls() {
        use crate::config::ThreadScheduling;
        // Linux 6.12 and later report every normal thread's slice; older ones report none.
        let slices = cpu::thread_slice(0).unwrap() > Duration::ZERO;
        for (scheduling, want_policy) in [(ThreadScheduling::Idle, 5), (ThreadScheduling::Nice, 0)] {
            let ((long_nice, long_policy, _), (short_nice, short_policy, short_slice)) =
                long_and_short_under(scheduling);
            assert_eq!(
                (long_nice, long_policy),
                (10, want_policy),
                "{scheduling:?}: the long job ran below short calls"
            );
            assert_eq!((short_nice, short_policy), (0, 0), "{scheduling:?}: the short job ran at normal priority");
            if slices {
                assert_eq!(short_slice, cpu::LATENCY_SLICE, "the short job's thread asked for the short slice");
            } else {
                eprintln!("this kernel reports no scheduler slices (before 6.12): slice not checked");
            }
        }
    }

    #[test]
    fn a_shadow_batch_is_sized_to_its_cpu_at_the_measured_cost() {
        assert_eq!(shadow_batch_cap((0, 0)), usize::MAX, "nothing measured yet");
        // 10 ms a review (a transformer): one at a time.
        assert_eq!(shadow_batch_cap((100_000_000, 10)), 1);
        // 30 ms a review: still one.
        assert_eq!(shadow_batch_cap((300_000_000, 10)), 1);
        // 2.5 ms a review: four.
        assert_eq!(shadow_batch_cap((25_000_000, 10)), 4);
        // 50 us a review (a bag-of-words model): 200, so `max_batch_size` is what limits it.
        assert_eq!(shadow_batch_cap((500_000, 10)), 200);
    }

    #[test]
    fn work_past_its_deadline_never_reaches_the_backend() {
        let fake = FakeBackend::new(|_| Ok(vec![0.0, 0.0]));
        let pool = pool(&fake);
        let late = Instant::now() - Duration::from_millis(1);
        let error = pool
            .handle
            .submit(reviews(&["late"]), Some(late), None, Caller::SERVER)
            .unwrap()
            .blocking_wait()
            .unwrap_err();
        assert!(matches!(error, Error::DeadlineExceeded(_)), "{error:?}");
        assert_eq!(fake.batches.load(Ordering::SeqCst), 0);
        stop(pool);
    }
}
