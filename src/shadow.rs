//! Shadow mode: candidate models scored on the same reviews as the live model, after the live
//! answer is known, never awaited by the request and never able to change it.
//!
//! For each task's shadow the request path (`ShadowPair::offer`) samples reviews by a stable hash
//! of their id, sheds the work when the shadow is paused or live work is queueing, and otherwise
//! `try_send`s it to the shadow's own bounded queue and worker threads. The shadow's worker then
//! calls `ShadowPair::record`, which compares the two models (`compare`) and records metrics.
//!
//! A task that lists surfaces decides each with its own live policy; a pair compares against
//! the live policy of the request's surface and counts comparisons and verdicts per surface, and
//! a shadow may be kept to some surfaces (`offered_on`).
//!
//! Two controls keep a shadow behind live work and its comparison a uniform sample: the shadow
//! CPU budget (`budget`: no shadow batch starts while it is spent) and the effective sample rate
//! (`rate`: lowered, on the same hash, while the budget or the queues cannot take the
//! configured one), updated once per `TICK` by whichever request gets there first.

pub mod breaker;
pub mod budget;
pub mod compare;
pub mod disagreement;
pub mod headroom;
pub mod labelling;
pub mod offload;
pub mod rate;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use budget::ShadowCpu;
use rate::{RateController, Tick};

pub use crate::config::ShadowPolicy;
use crate::error::Error;
use crate::inference::model::ModelSpec;
use crate::inference::tokenize::TokenRows;
use crate::inference::worker::{JobResult, ModelHandle};
use crate::journal::{ComparedReview, Decider, Journal};
use crate::metrics::{LabelledVerdictMetrics, Role, ShadowMetrics, ShadowOutcome, VerdictMetrics};
use crate::otel::ShadowLink;
use crate::policy::{Confusion, Decision, Policy};
use crate::request::{ReviewInput, Surface, text_bytes};
use crate::shadow::breaker::Breaker;
use compare::Direction;
use disagreement::DisagreementLog;
use labelling::{Design, LabellingQueue, Stratum};

/// How often a shadow's effective sample rate is reconsidered.
pub const TICK: Duration = Duration::from_secs(1);

/// One shadow of one task, with everything needed to feed and judge it.
pub struct ShadowPair {
    pub task: String,
    /// The live model it is compared against (for labels and the queue-pressure check).
    live: ModelHandle,
    live_policy: Arc<Policy>,
    /// The shadow's own workers; for a policy-only shadow, the live model (never sent work).
    pub shadow: ModelHandle,
    /// The thresholds the shadow decides with.
    pub decision_policy: Arc<Policy>,
    /// The shadow is the live model under `decision_policy`: decided from the live scores.
    pub policy_only: bool,
    pub sample_rate: f64,
    salt: String,
    policy: ShadowPolicy,
    breaker: Breaker,
    metrics: ShadowMetrics,
    /// Moderator verdicts counted against this shadow's decisions on the default surface
    /// (registered, at 0, even when the shadow is not offered it: `verdicts_on` says).
    pub verdicts: VerdictMetrics,
    /// Per surface of the task (`TaskEntry::surfaces` order): the live policy and this pair's
    /// series there; `None` where the shadow is not offered that surface.
    on_surfaces: Vec<Option<OnSurface>>,
    /// Offered the default surface's reviews: the shadow lists no `surfaces`.
    on_default: bool,
    log: Option<DisagreementLog>,
    /// The decision journal, when `[journal]` is set: compared decisions are written to it.
    journal: Option<Journal>,
    /// The labelling queue, this pair's design for it, and the verdicts on reviews it picks.
    labelling: Option<Labelling>,
    /// Live and shadow tokenize identically (same tokenizer file, same length limit), so the
    /// shadow reuses the live token ids.
    reuse_tokens: bool,
    /// The process's shadow CPU budget (`None` for policy-only shadows, which run no inference).
    cpu: Option<Arc<ShadowCpu>>,
    /// The effective sample rate now, as f64 bits: read by every offer, written by the tick.
    effective: AtomicU64,
    /// Reviews offered, and sampled reviews shed, since the last tick.
    offered: AtomicU64,
    sampled_now: AtomicU64,
    shed: AtomicU64,
    /// Locked only by the tick (`try_lock`: a request that finds it busy just goes on).
    controller: Mutex<Controller>,
}

/// A pair's part in the labelling queue.
struct Labelling {
    queue: LabellingQueue,
    design: Design,
    verdicts: LabelledVerdictMetrics,
}

impl Labelling {
    /// The pair's design for the queue (its sample rate and the queue's strata rates), and its
    /// weighted verdict series.
    fn new(
        task: &str,
        queue: LabellingQueue,
        sample_rate: f64,
        (live, live_policy): (&ModelHandle, &Policy),
        (shadow, shadow_policy): (&ModelHandle, &Policy),
    ) -> Labelling {
        let design = Design::new(sample_rate, &queue.config);
        let sides = ((live.spec().as_ref(), live_policy), (shadow.spec().as_ref(), shadow_policy));
        let verdicts = LabelledVerdictMetrics::new(task, sides, |agree| {
            design.inclusion_probability(if agree { Stratum::Agreement } else { Stratum::Disagreement })
        });
        Labelling { queue, design, verdicts }
    }
}

/// A pair on one named surface.
struct OnSurface {
    name: String,
    live_policy: Arc<Policy>,
    comparisons: Confusion<::metrics::Counter>,
    verdicts: VerdictMetrics,
}

impl OnSurface {
    /// The pair's comparison and verdict series on surface `s`.
    fn new(
        task: &str,
        s: SurfaceSpec,
        live: &ModelHandle,
        (shadow, shadow_policy): (&ModelHandle, &Policy),
        verdict_sources: &[String],
    ) -> OnSurface {
        OnSurface {
            comparisons: crate::metrics::comparisons(
                task,
                (live.spec(), &s.live_policy),
                (shadow.spec(), shadow_policy),
                Some(&s.name),
            ),
            verdicts: VerdictMetrics::on_surface(
                task,
                shadow.spec(),
                Role::Shadow,
                shadow_policy,
                verdict_sources,
                Some(&s.name),
            ),
            name: s.name,
            live_policy: s.live_policy,
        }
    }
}

/// The live side of one of the task's surfaces, as a pair is built with it.
pub struct SurfaceSpec {
    pub name: String,
    pub live_policy: Arc<Policy>,
    /// The shadow is offered this surface's reviews.
    pub offered: bool,
}

/// The rate controller and the cumulative figures its last tick saw.
struct Controller {
    rate: RateController,
    last: Instant,
    /// This model's (CPU ns, reviews run) and all shadows' CPU ns at the last tick.
    model: (u64, u64),
    total_ns: u64,
}

/// What `ShadowPair::new` needs besides the task name.
pub struct PairSpec {
    pub live: ModelHandle,
    pub live_policy: Arc<Policy>,
    pub shadow: ModelHandle,
    pub shadow_policy: Arc<Policy>,
    pub sample_rate: f64,
    pub salt: String,
    /// Record the shadow model's score histograms in this pair (one pair per shadow model does).
    pub record_scores: bool,
    /// `feedback.sources`, for the verdict series.
    pub verdict_sources: Vec<String>,
    /// The server's shadow CPU budget and accounting.
    pub shadow_cpu: Option<Arc<ShadowCpu>>,
    /// The labelling queue, when `[labelling]` is set.
    pub labelling: Option<LabellingQueue>,
    /// The decision journal, when `[journal]` is set.
    pub journal: Option<Journal>,
    /// The task's surfaces, in `TaskEntry::surfaces` order.
    pub surfaces: Vec<SurfaceSpec>,
    /// The shadow is offered the default surface's reviews (it lists no `surfaces`).
    pub default_surface: bool,
}

/// Salt of the disagreement log's own sampling, independent of every shadow's.
const DISAGREEMENT_LOG_SALT: &str = "modserve-disagreement-log";

/// True when `review_id` is in the sample of a shadow with this salt and rate: a stable 64-bit
/// hash (FNV-1a, then a mixing step), so the answer is the same on every retry and replica.
pub fn sampled(review_id: &str, salt: &str, rate: f64) -> bool {
    if rate >= 1.0 {
        return true;
    }
    if rate <= 0.0 {
        return false;
    }
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in salt.bytes().chain([0xff]).chain(review_id.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // splitmix64 finaliser: FNV alone leaves the high bits poorly mixed for short ids.
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^= h >> 31;
    (h as f64) < rate * (u64::MAX as f64)
}

impl ShadowPair {
    pub fn new(task: &str, spec: PairSpec, policy: ShadowPolicy, log: Option<DisagreementLog>) -> ShadowPair {
        let PairSpec {
            live,
            live_policy,
            shadow,
            shadow_policy,
            sample_rate,
            salt,
            record_scores,
            verdict_sources,
            shadow_cpu,
            labelling,
            journal,
            surfaces,
            default_surface,
        } = spec;
        let policy_only = Arc::ptr_eq(live.spec(), shadow.spec());
        let metrics = ShadowMetrics::new(
            task,
            (live.spec(), &live_policy),
            (shadow.spec(), &shadow_policy),
            policy_only,
            record_scores && !policy_only,
            default_surface,
        );
        let verdicts = VerdictMetrics::new(task, shadow.spec(), Role::Shadow, &shadow_policy, &verdict_sources);
        let labelling = labelling
            .map(|queue| Labelling::new(task, queue, sample_rate, (&live, &live_policy), (&shadow, &shadow_policy)));
        let on_surfaces = surfaces
            .into_iter()
            .map(|s| s.offered.then(|| OnSurface::new(task, s, &live, (&shadow, &shadow_policy), &verdict_sources)))
            .collect();
        let reuse_tokens = live.spec().tokenizer_sha256 == shadow.spec().tokenizer_sha256
            && live.spec().max_sequence_length == shadow.spec().max_sequence_length;
        metrics.rate_configured.set(sample_rate);
        metrics.rate_effective.set(sample_rate);
        let model = shadow.cpu().map(|m| m.totals()).unwrap_or_default();
        let controller = Controller {
            rate: RateController::new(sample_rate, policy.min_sample_rate),
            last: Instant::now(),
            model,
            total_ns: shadow_cpu.as_ref().map_or(0, |c| c.total_ns()),
        };
        ShadowPair {
            task: task.to_string(),
            live,
            live_policy,
            shadow,
            decision_policy: shadow_policy,
            policy_only,
            sample_rate,
            salt,
            policy,
            breaker: Breaker::new(policy.breaker),
            metrics,
            verdicts,
            on_surfaces,
            on_default: default_surface,
            log,
            journal,
            labelling,
            reuse_tokens,
            cpu: shadow_cpu.filter(|_| !policy_only),
            effective: AtomicU64::new(sample_rate.to_bits()),
            offered: AtomicU64::new(0),
            sampled_now: AtomicU64::new(0),
            shed: AtomicU64::new(0),
            controller: Mutex::new(controller),
        }
    }

    /// The share of reviews this shadow takes now (at most `sample_rate`).
    pub fn effective_rate(&self) -> f64 {
        f64::from_bits(self.effective.load(Ordering::Relaxed))
    }

    /// Counts sampled reviews shed for want of room, for the rate controller and the metrics.
    fn shed(&self, outcome: ShadowOutcome, reviews: usize) {
        self.shed.fetch_add(reviews as u64, Ordering::Relaxed);
        self.metrics.outcome(outcome, reviews);
    }

    /// Reconsiders the effective rate once per `TICK`, on whichever request gets here first.
    fn maybe_tick(&self) {
        let Ok(mut c) = self.controller.try_lock() else { return };
        let now = Instant::now();
        let seconds = now.duration_since(c.last).as_secs_f64();
        if seconds < TICK.as_secs_f64() {
            return;
        }
        let model = self.shadow.cpu().map(|m| m.totals()).unwrap_or_default();
        let total_ns = self.cpu.as_ref().map_or(0, |b| b.total_ns());
        let (own_ns, run) = (model.0.saturating_sub(c.model.0), model.1.saturating_sub(c.model.1));
        // This shadow's share: an equal part of the budget, or whatever the others leave.
        let target_cpu = self.cpu.as_ref().and_then(|b| {
            let budget = b.in_force()?;
            let others = total_ns.saturating_sub(c.total_ns).saturating_sub(own_ns) as f64 / 1e9 / seconds;
            Some((budget / b.models() as f64).max(budget - others))
        });
        let tick = Tick {
            seconds,
            offered: self.offered.swap(0, Ordering::Relaxed),
            sampled: self.sampled_now.swap(0, Ordering::Relaxed),
            shed: self.shed.swap(0, Ordering::Relaxed),
            cpu_ns: own_ns,
            reviews_run: run,
            target_cpu,
        };
        let before = c.rate.effective();
        let rate = c.rate.tick(tick);
        c.last = now;
        c.model = model;
        c.total_ns = total_ns;
        drop(c);
        self.effective.store(rate.to_bits(), Ordering::Relaxed);
        self.metrics.rate_effective.set(rate);
        if let Some(b) = &self.cpu {
            b.usage();
        }
        if rate != before {
            tracing::info!(
                task = %self.task,
                shadow = %self.display_name(),
                configured = self.sample_rate,
                effective = rate,
                shed = tick.shed,
                "shadow effective sample rate changed"
            );
        }
    }

    /// The shadow's name as logs and errors show it: the model, and the policy when it is
    /// policy-only.
    pub fn display_name(&self) -> String {
        if self.policy_only {
            format!("{} (policy {})", self.shadow.spec().name, self.decision_policy.name)
        } else {
            self.shadow.spec().name.clone()
        }
    }

    /// True when this shadow is offered the reviews of `surface` (its `surfaces`, if it lists
    /// any).
    pub fn offered_on(&self, surface: Surface) -> bool {
        match surface {
            None => self.on_default,
            Some(i) => self.on_surfaces.get(i).is_some_and(Option::is_some),
        }
    }

    /// The named surfaces this shadow is offered.
    pub fn offered_surfaces(&self) -> impl Iterator<Item = &str> {
        self.on_surfaces.iter().flatten().map(|s| s.name.as_str())
    }

    /// This shadow's verdict counts on `surface`; `None` where it is not offered that surface.
    pub fn verdicts_on(&self, surface: Surface) -> Option<&VerdictMetrics> {
        match surface {
            None => self.on_default.then_some(&self.verdicts),
            Some(i) => self.on_surfaces.get(i)?.as_ref().map(|s| &s.verdicts),
        }
    }

    /// True when this shadow reuses the live model's token ids.
    pub fn reuses_tokens(&self) -> bool {
        self.reuse_tokens
    }

    /// Offers a request's reviews, with the live scores and decisions, to this shadow. Never
    /// blocks and never fails: anything that cannot run now is counted and dropped.
    /// `tokens` are the live model's token ids for `reviews`, reused when `reuses_tokens`.
    /// `surface` is the request's on this task: a shadow kept to other surfaces is not offered
    /// the reviews at all (nothing is counted for it), and comparisons are counted per surface.
    pub fn offer(
        self: &Arc<Self>,
        surface: Surface,
        reviews: &Arc<[ReviewInput]>,
        tokens: Option<&Arc<TokenRows>>,
        live_scores: &[f32],
        live_decisions: &[Decision],
        link: &ShadowLink,
    ) {
        if !self.offered_on(surface) {
            return;
        }
        let picked = self.pick(reviews);
        if picked.is_empty() {
            return;
        }
        if self.policy_only {
            self.offer_policy_only(surface, reviews, picked, live_scores, live_decisions, link);
            return;
        }
        if let Some(refusal) = self.refusal() {
            match refusal {
                ShadowOutcome::BreakerOpen => self.metrics.outcome(refusal, picked.len()),
                shed => self.shed(shed, picked.len()),
            }
            return;
        }
        let tokens = tokens.filter(|_| self.reuse_tokens);
        let offered =
            Offered::select(&picked, reviews, tokens, live_scores, live_decisions, self.live.spec().labels.len());
        let count = offered.reviews.len();
        let pair = self.clone();
        let Offered { reviews, tokens, live_scores, live_decisions } = offered;
        let logged = reviews.clone();
        let (link, offered_at) = (link.clone(), Instant::now());
        let callback = Box::new(move |result: JobResult, elapsed: Duration| {
            let outcome = match &result {
                Ok(_) => ShadowOutcome::Compared,
                Err(Error::DeadlineExceeded(_)) => ShadowOutcome::Deadline,
                Err(_) => ShadowOutcome::Error,
            };
            pair.record(surface, &logged, &live_scores, &live_decisions, result, elapsed);
            link.finished("modserve.shadow", offered_at, || pair.trace_attributes(outcome, logged.len()));
        });
        match self.shadow.submit_with(reviews, tokens, Some(Instant::now() + self.policy.max_delay), callback) {
            Ok(()) => {}
            Err(Error::QueueFull { .. }) => self.shed(ShadowOutcome::QueueFull, count),
            // Only while shutting down; nothing to compare any more.
            Err(_) => {}
        }
    }

    /// What a shadow span says: task, shadow (model or policy), outcome, reviews.
    fn trace_attributes(&self, outcome: ShadowOutcome, reviews: usize) -> Vec<opentelemetry::KeyValue> {
        use opentelemetry::KeyValue;
        vec![
            KeyValue::new("modserve.task", self.task.clone()),
            KeyValue::new("modserve.shadow", self.display_name()),
            KeyValue::new("modserve.outcome", outcome.as_str()),
            KeyValue::new("modserve.reviews", reviews as i64),
        ]
    }

    /// The indices of the reviews in this shadow's sample, at its effective rate; the rest
    /// counted as sampled out or throttled.
    fn pick(&self, reviews: &[ReviewInput]) -> Vec<usize> {
        let mut picked: Vec<usize> =
            (0..reviews.len()).filter(|&i| sampled(&reviews[i].id, &self.salt, self.sample_rate)).collect();
        self.metrics.outcome(ShadowOutcome::SampledOut, reviews.len() - picked.len());
        if !self.policy_only {
            // The effective rate samples a subset of the same hash: the reviews it leaves out are
            // a uniform share of the configured sample, unlike work shed when it arrives.
            self.offered.fetch_add(reviews.len() as u64, Ordering::Relaxed);
            self.maybe_tick();
            let effective = self.effective_rate();
            if effective < self.sample_rate {
                let before = picked.len();
                picked.retain(|&i| sampled(&reviews[i].id, &self.salt, effective));
                self.metrics.outcome(ShadowOutcome::Throttled, before - picked.len());
            }
            self.sampled_now.fetch_add(picked.len() as u64, Ordering::Relaxed);
        }
        picked
    }

    /// Why sampled work cannot be queued on the candidate now, if it cannot.
    fn refusal(&self) -> Option<ShadowOutcome> {
        let open = self.breaker.is_open();
        self.metrics.breaker_open.set(if open { 1.0 } else { 0.0 });
        if open {
            Some(ShadowOutcome::BreakerOpen)
        } else if self.live.queue_len() >= self.policy.live_pressure_jobs {
            Some(ShadowOutcome::LivePressure)
        } else if self.cpu.as_ref().is_some_and(|b| b.exhausted()) {
            Some(ShadowOutcome::Budget)
        } else {
            None
        }
    }

    /// Compares a finished shadow job with the live answers it was offered with. Runs on the
    /// shadow's worker thread.
    fn record(
        &self,
        surface: Surface,
        reviews: &[ReviewInput],
        live_scores: &[f32],
        live_decisions: &[Decision],
        result: JobResult,
        elapsed: Duration,
    ) {
        let n = reviews.len();
        let scores = match result {
            Ok(output) => output.scores,
            Err(Error::DeadlineExceeded(_)) => return self.metrics.outcome(ShadowOutcome::Deadline, n),
            Err(e) => {
                self.metrics.outcome(ShadowOutcome::Error, n);
                self.trip_check(true, elapsed, Some(&e));
                return;
            }
        };
        self.trip_check(false, elapsed, None);
        self.compare(surface, reviews, live_scores, live_decisions, &scores);
        self.metrics.outcome(ShadowOutcome::Compared, n);
    }

    /// A policy-only shadow's comparison of the `picked` reviews: the live scores are its
    /// scores, so there is no inference, and the comparison runs off this request's task
    /// (`offload`).
    fn offer_policy_only(
        self: &Arc<Self>,
        surface: Surface,
        reviews: &Arc<[ReviewInput]>,
        picked: Vec<usize>,
        live_scores: &[f32],
        live_decisions: &[Decision],
        link: &ShadowLink,
    ) {
        let n_labels = self.live.spec().labels.len();
        let (link, offered_at) = (link.clone(), Instant::now());
        let (pair, reviews, count) = (self.clone(), reviews.clone(), picked.len());
        let bytes = text_bytes(&reviews);
        let (live_scores, live_decisions) = (live_scores.to_vec(), live_decisions.to_vec());
        let work = Box::new(move || {
            for &i in &picked {
                let i = i..i + 1;
                let scores = &live_scores[i.start * n_labels..i.end * n_labels];
                pair.compare(surface, &reviews[i.clone()], scores, &live_decisions[i], scores);
            }
            pair.metrics.outcome(ShadowOutcome::Compared, count);
            if let Some(c) = &pair.metrics.policy_only_reviews {
                c.increment(count as u64);
            }
            link.finished("modserve.shadow", offered_at, || pair.trace_attributes(ShadowOutcome::Compared, count));
        });
        if !offload::submit(work, bytes) {
            self.shed(ShadowOutcome::QueueFull, count);
        }
    }

    /// Compares the shadow's scores for `reviews` with the live answers and records the result:
    /// the decision matrix, score deltas, flips, (sampled) disagreement log lines and, with the
    /// journal on, one journal line per review.
    fn compare(
        &self,
        surface: Surface,
        reviews: &[ReviewInput],
        live_scores: &[f32],
        live_decisions: &[Decision],
        scores: &[f32],
    ) {
        let on_surface = surface.and_then(|i| self.on_surfaces.get(i)?.as_ref());
        let live_policy = on_surface.map_or(&self.live_policy, |s| &s.live_policy);
        let live = self.live.spec();
        let shadow = self.shadow.spec();
        let (ln, sn) = (live.labels.len(), shadow.labels.len());
        let journal = self.journal.as_ref().filter(|j| j.config.include_shadows);
        let mut journaled = Vec::with_capacity(if journal.is_some() { reviews.len() } else { 0 });
        for i in 0..reviews.len() {
            let (l_scores, s_scores) = (&live_scores[i * ln..(i + 1) * ln], &scores[i * sn..(i + 1) * sn]);
            let s_decision = self.decision_policy.decide(s_scores);
            if journal.is_some() {
                journaled.push(ComparedReview {
                    review_id: reviews[i].id.clone(),
                    text: reviews[i].model_text.clone(),
                    live_decision: live_decisions[i],
                    decision: s_decision,
                    scores: s_scores.to_vec(),
                });
            }
            match on_surface {
                Some(s) => s.comparisons[(live_decisions[i], s_decision)].increment(1),
                None => self.metrics.compared(live_decisions[i], s_decision),
            }
            self.metrics.scores(s_scores);
            for (index, (_, delta)) in
                compare::score_deltas(&live.labels, l_scores, &shadow.labels, s_scores).into_iter().enumerate()
            {
                if let Some(h) = self.metrics.delta(index) {
                    h.record(f64::from(delta));
                }
            }
            if !self.policy_only && compare::top_label_flipped(&live.labels, l_scores, &shadow.labels, s_scores) {
                self.metrics.flips.increment(1);
            }
            let direction = Direction::of(live_decisions[i], s_decision);
            if direction != Direction::Agree
                && let Some(log) = &self.log
                && sampled(&reviews[i].id, DISAGREEMENT_LOG_SALT, log.config.sample_rate)
            {
                let text = &reviews[i].model_text;
                log.write(&disagreement::Entry {
                    time: disagreement::now_rfc3339(),
                    task: &self.task,
                    review_id: &reviews[i].id,
                    direction: if direction == Direction::Stricter { "stricter" } else { "more_lenient" },
                    surface: on_surface.map(|s| s.name.as_str()),
                    live: side(live, live_policy, live_decisions[i], l_scores),
                    shadow: side(shadow, &self.decision_policy, s_decision, s_scores),
                    text_sha256: crate::inference::model::package::sha256_hex(text.as_bytes()),
                    text: log.config.include_text.then_some(text.as_str()),
                });
            }
            let surface = on_surface.map(|s| s.name.as_str());
            let sides = ((live_policy.as_ref(), live_decisions[i], l_scores), (s_decision, s_scores));
            self.queue_for_labelling(&reviews[i], surface, sides, direction);
        }
        if let Some(journal) = journal {
            let decider =
                |model: &Arc<ModelSpec>, policy: &Arc<Policy>| Decider { model: model.clone(), policy: policy.clone() };
            let surface = on_surface.map(|s| s.name.as_str());
            journal.compared(
                &self.task,
                surface,
                decider(live, live_policy),
                decider(shadow, &self.decision_policy),
                journaled,
            );
        }
    }

    /// Writes a compared review to the labelling queue when the pair's design picks it.
    fn queue_for_labelling(
        &self,
        review: &ReviewInput,
        surface: Option<&str>,
        ((live_policy, l_decision, l_scores), (s_decision, s_scores)): LoggedSides<'_>,
        direction: Direction,
    ) {
        let Some(labelling) = &self.labelling else { return };
        let stratum = Stratum::of(direction);
        if !labelling.design.picks(&review.id, &self.salt, stratum) {
            return;
        }
        let text = &review.model_text;
        labelling.queue.write(&labelling::Entry {
            time: disagreement::now_rfc3339(),
            task: &self.task,
            review_id: &review.id,
            stratum: stratum.as_str(),
            inclusion_probability: labelling.design.inclusion_probability(stratum),
            direction: labelling::direction_name(direction),
            surface,
            live: side(self.live.spec(), live_policy, l_decision, l_scores),
            shadow: side(self.shadow.spec(), &self.decision_policy, s_decision, s_scores),
            text_sha256: crate::inference::model::package::sha256_hex(text.as_bytes()),
            text: labelling.queue.config.include_text.then_some(text.as_str()),
        });
    }

    /// Counts a verdict on `review_id` against this pair's labelling design, given live's and
    /// this shadow's decisions on it (scored by the feedback path): only when the queue would
    /// have picked the review, so the count is a sample with known inclusion probabilities.
    pub fn count_labelled(&self, review_id: &str, live: Decision, shadow: Decision, human: Decision) {
        let Some(labelling) = &self.labelling else { return };
        let stratum = Stratum::of(Direction::of(live, shadow));
        if labelling.design.picks(review_id, &self.salt, stratum) {
            labelling.verdicts.count(live, shadow, human);
        }
    }

    fn trip_check(&self, failed: bool, elapsed: Duration, error: Option<&Error>) {
        if self.breaker.record(failed, elapsed) {
            self.metrics.breaker_trips.increment(1);
            self.metrics.breaker_open.set(1.0);
            tracing::warn!(
                task = %self.task,
                shadow = %self.display_name(),
                cooldown = ?self.policy.breaker.cooldown,
                last_error = error.map(|e| e.to_string()).unwrap_or_else(|| "over the latency budget".into()),
                "shadow paused by its circuit breaker"
            );
        }
    }
}

/// The sampled part of a request, with the live answers to compare it with.
struct Offered {
    reviews: Arc<[ReviewInput]>,
    tokens: Option<Arc<TokenRows>>,
    live_scores: Vec<f32>,
    live_decisions: Vec<Decision>,
}

impl Offered {
    /// Rows `picked` of the request; the request's own buffers when every review was picked.
    fn select(
        picked: &[usize],
        reviews: &Arc<[ReviewInput]>,
        tokens: Option<&Arc<TokenRows>>,
        live_scores: &[f32],
        live_decisions: &[Decision],
        n_labels: usize,
    ) -> Offered {
        if picked.len() == reviews.len() {
            return Offered {
                reviews: reviews.clone(),
                tokens: tokens.cloned(),
                live_scores: live_scores.to_vec(),
                live_decisions: live_decisions.to_vec(),
            };
        }
        Offered {
            reviews: picked.iter().map(|&i| reviews[i].clone()).collect(),
            tokens: tokens.map(|t| {
                let mut rows = TokenRows::default();
                for &i in picked {
                    rows.extend_from(t, i..i + 1);
                }
                Arc::new(rows)
            }),
            live_scores: picked
                .iter()
                .flat_map(|&i| live_scores[i * n_labels..(i + 1) * n_labels].iter().copied())
                .collect(),
            live_decisions: picked.iter().map(|&i| live_decisions[i]).collect(),
        }
    }
}

/// Live's policy (the surface's, on a named surface), decision and scores, then the shadow's
/// decision and scores: what a queued comparison records.
type LoggedSides<'a> = ((&'a Policy, Decision, &'a [f32]), (Decision, &'a [f32]));

/// One model's side of a logged comparison.
fn side<'a>(spec: &'a ModelSpec, policy: &'a Policy, decision: Decision, scores: &[f32]) -> disagreement::Side<'a> {
    disagreement::Side {
        model: &spec.name,
        version: &spec.version,
        policy: &policy.name,
        policy_version: &policy.version,
        decision: decision.as_str(),
        scores: spec.labels.iter().map(String::as_str).zip(scores.iter().copied()).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampling_is_deterministic_and_salted() {
        let ids: Vec<String> = (0..2000).map(|i| format!("review-{i}")).collect();
        let a: Vec<bool> = ids.iter().map(|id| sampled(id, "abuse-v2", 0.3)).collect();
        let again: Vec<bool> = ids.iter().map(|id| sampled(id, "abuse-v2", 0.3)).collect();
        let other_salt: Vec<bool> = ids.iter().map(|id| sampled(id, "abuse-minilm", 0.3)).collect();
        assert_eq!(a, again);
        assert_ne!(a, other_salt);
    }

    #[test]
    fn sampling_rate_is_respected() {
        for rate in [0.01, 0.1, 0.5, 0.9] {
            let n = 20_000;
            let hits = (0..n).filter(|i| sampled(&format!("r{i}"), "s", rate)).count();
            let got = hits as f64 / n as f64;
            // Binomial standard deviation is at most 0.0036 here; allow 4 of them.
            assert!((got - rate).abs() < 0.015, "rate {rate}: sampled {got}");
        }
    }

    #[test]
    fn rate_bounds_are_exact() {
        assert!(sampled("x", "s", 1.0));
        assert!(!sampled("x", "s", 0.0));
    }

    #[test]
    fn a_lower_rate_samples_a_subset() {
        // The same hash against a lower threshold: lowering a rate never adds reviews.
        for i in 0..5000 {
            let id = format!("r{i}");
            if sampled(&id, "s", 0.1) {
                assert!(sampled(&id, "s", 0.5));
            }
        }
    }
}
