//! Shadow isolation end to end: the scheduling policy shadow threads really run under, the
//! shadow CPU budget measured against the threads' own CPU clocks, and the effective sample
//! rate lowered under pressure and raised back.
//!
//! The server runs in this test process, so its worker threads are `/proc/self/task/*`; every test
//! that reads them or their CPU holds `exclusive()`, so no other test's server runs beside it.

use std::time::{Duration, Instant};

use crate::common::*;

/// One `/proc/self/task` entry of an inference worker.
#[derive(Debug)]
struct WorkerThread {
    #[allow(dead_code)] // shown in assertion messages
    comm: String,
    /// `stat` field 41: 0 SCHED_OTHER, 5 SCHED_IDLE.
    policy: u32,
    /// `stat` field 19.
    nice: i64,
    /// `schedstat` field 1: CPU time in ns.
    cpu_ns: u64,
    /// `Cpus_allowed_list` of `status`, e.g. "0-1".
    cpus: String,
    /// The scheduler slice the kernel reports (zero before Linux 6.12).
    slice: Duration,
}

const SCHED_OTHER: u32 = 0;
const SCHED_IDLE: u32 = 5;

/// Every thread of this process whose name starts with `infer-`.
fn worker_threads() -> Vec<WorkerThread> {
    threads_named("infer-")
}

/// Every thread of this process whose name starts with `prefix`.
fn threads_named(prefix: &str) -> Vec<WorkerThread> {
    threads_of("self", prefix)
}

/// Every thread of process `pid` ("self" or a number) whose name starts with `prefix`.
fn threads_of(pid: &str, prefix: &str) -> Vec<WorkerThread> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let dir = entry.unwrap().path();
        let tid: i32 = dir.file_name().unwrap().to_str().unwrap().parse().unwrap();
        let Ok(stat) = std::fs::read_to_string(dir.join("stat")) else { continue };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else { continue };
        let comm = stat[open + 1..close].to_string();
        if !comm.starts_with(prefix) {
            continue;
        }
        // Fields after the command start at field 3.
        let fields: Vec<&str> = stat[close + 2..].split_whitespace().collect();
        let field = |n: usize| fields[n - 3];
        let schedstat = std::fs::read_to_string(dir.join("schedstat")).unwrap_or_default();
        let status = std::fs::read_to_string(dir.join("status")).unwrap_or_default();
        let cpus = status.lines().find_map(|l| l.strip_prefix("Cpus_allowed_list:")).unwrap_or("").trim().to_string();
        out.push(WorkerThread {
            comm,
            policy: field(41).parse().unwrap(),
            nice: field(19).parse().unwrap(),
            cpu_ns: schedstat.split_whitespace().next().and_then(|v| v.parse().ok()).unwrap_or(0),
            cpus,
            slice: modserve::inference::cpu::thread_slice(tid).unwrap_or_default(),
        });
    }
    out
}

/// A budget of 5% of the process's CPUs and nothing else: the headroom (`cpu_reserve`) is off,
/// so what these tests see is the budget alone, whatever else the machine runs.
const BUDGET_ONLY: &str = "max_cpu_fraction = 0.05\ncpu_reserve = 0";

fn heavy_config(shadow: &str) -> modserve::config::Config {
    config(&format!(
        r#"
[shadow]
live_pressure_jobs = 1000
{shadow}
[models.tiny-abuse]
path = "tests/fixtures/tiny-abuse"
[models.tiny-abuse-v2]
path = "tests/fixtures/tiny-abuse-v2"
[models.tiny-abuse-v2.batching]
max_batch_size = 1
inference_threads = 2
[tasks.abuse]
live = "tiny-abuse"
shadows = [{{ model = "tiny-abuse-v2", sample_rate = 1.0 }}]
"#
    ))
}

/// The shadow's worker threads run under the policy the gauge reports, and live ones do not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scheduling_policy_in_effect_is_the_one_reported() {
    let _guard = exclusive().await;
    for (setting, want_gauge, want_policy) in
        [("scheduling = \"idle\"", "idle", SCHED_IDLE), ("scheduling = \"nice\"", "nice", SCHED_OTHER)]
    {
        let server = TestServer::start(heavy_config(setting)).await;
        let scrape = server.scrape().await;
        for policy in ["idle", "nice", "normal"] {
            let want = if policy == want_gauge { 1.0 } else { 0.0 };
            let got = metric(&scrape, "modserve_shadow_scheduling", &[("model", "tiny-abuse-v2"), ("policy", policy)]);
            assert_eq!(got, Some(want), "{setting}: policy {policy}");
        }
        // Live threads are never lowered; shadow threads are at shadow.nice (10) under their
        // policy. Names are cut to 15 bytes, so tell them apart by niceness.
        let threads = worker_threads();
        let shadow: Vec<&WorkerThread> = threads.iter().filter(|t| t.nice == 10).collect();
        let live: Vec<&WorkerThread> = threads.iter().filter(|t| t.nice == 0).collect();
        assert_eq!(shadow.len(), 2, "two shadow worker threads: {threads:?}");
        assert!(shadow.iter().all(|t| t.policy == want_policy), "{setting}: {threads:?}");
        assert!(!live.is_empty() && live.iter().all(|t| t.policy == SCHED_OTHER), "{threads:?}");
        server.stop().await;
    }
}

/// In the real binary, the threads a short call waits on (the async runtime's and the live
/// model's short-job worker) ask for the short scheduler slice, and the live model's long-job
/// thread runs under `SCHED_IDLE` at `long_job_nice` (`long_job_scheduling = "idle"`, the
/// default) or at `long_job_nice` alone (`"nice"`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_calls_threads_preempt_and_long_jobs_wait_below_them() {
    let _shared = shared().await;
    // Linux 6.12 and later report every normal thread's slice; older ones report none.
    let slices = modserve::inference::cpu::thread_slice(0).unwrap() > Duration::ZERO;
    for (setting, want_policy) in [("", SCHED_IDLE), ("long_job_scheduling = \"nice\"", SCHED_OTHER)] {
        let server = ChildServer::start(&format!(
            "[batching]\nlong_job_nice = 7\n{setting}\n[models.tiny-abuse]\npath = \"tests/fixtures/tiny-abuse\"\n\
             [tasks.abuse]\nlive = \"tiny-abuse\"\n"
        ))
        .await;
        let pid = server.pid().to_string();
        let runtime = threads_of(&pid, "tokio-rt-worker");
        let short = threads_of(&pid, "infer-tiny-abu");
        let long = threads_of(&pid, "long-tiny-abus");
        assert!(!runtime.is_empty() && short.len() == 1 && long.len() == 1, "{runtime:?} {short:?} {long:?}");
        for t in runtime.iter().chain(&short) {
            assert_eq!((t.policy, t.nice), (SCHED_OTHER, 0), "{setting:?}: {t:?}");
            if slices {
                assert_eq!(t.slice, modserve::inference::cpu::LATENCY_SLICE, "{t:?}");
            }
        }
        assert_eq!((long[0].policy, long[0].nice), (want_policy, 7), "{setting:?}: {long:?}");
        if !slices {
            eprintln!("this kernel reports no scheduler slices (before 6.12): slices not checked");
        }
        server.stop().await;
    }
}

/// The shadow's CPU time per heavy review (`send_heavy`).
const SPIN: Duration = Duration::from_millis(20);

/// A server on `config` (a `heavy_config`) whose shadow spends `SPIN` of CPU on each review that
/// holds the word "huge" (a fault injected through its backend).
async fn heavy_server(config: modserve::config::Config) -> TestServer {
    let (server, faults) = TestServer::start_faulty(config).await;
    faults.on_word("tiny-abuse-v2", "huge", Action::Spin(SPIN));
    server
}

/// The thread that runs policy-only shadows' comparisons is placed like the shadow workers, by
/// the config being served: `shadow.scheduling`, `shadow.nice` and `shadow.cpus`, re-applied
/// when a new config changes them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_policy_only_shadow_thread_follows_the_shadow_settings() {
    let _guard = exclusive().await;
    let first = modserve::inference::cpu::allowed_cpus().unwrap().iter().next().unwrap();
    let all = modserve::inference::cpu::allowed_cpus().unwrap().to_list();
    for (shadow, want_policy, want_cpus) in [
        (format!("scheduling = \"nice\"\nnice = 7\ncpus = \"{first}\""), SCHED_OTHER, first.to_string()),
        ("scheduling = \"idle\"\nnice = 7".to_string(), SCHED_IDLE, all.clone()),
    ] {
        let server = TestServer::start(config(&format!(
            r#"
[shadow]
{shadow}
[policies.strict]
version = "1"
[policies.strict.thresholds.insult]
review = 0.1
reject = 0.2
[models.tiny-abuse]
path = "tests/fixtures/tiny-abuse"
[tasks.abuse]
live = "tiny-abuse"
shadows = [{{ model = "tiny-abuse", policy = "strict", sample_rate = 1.0 }}]
"#
        )))
        .await;
        let base = server.scrape().await;
        let mut client = server.client().await;
        client.classify(request(vec![review("r", "you idiot")])).await.expect("answered");
        // Compared on the comparison thread, which applies the placement before its next work.
        let compared = [("outcome", "compared")];
        for _ in 0..600 {
            if sum_where(&server.scrape().await, "modserve_shadow_reviews_total", &compared)
                > sum_where(&base, "modserve_shadow_reviews_total", &compared)
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let thread = threads_named("shadow-offload");
        assert_eq!(thread.len(), 1, "{thread:?}");
        assert_eq!((thread[0].policy, thread[0].nice), (want_policy, 7), "{shadow}: {thread:?}");
        assert_eq!(thread[0].cpus, want_cpus, "{shadow}: {thread:?}");
        server.stop().await;
    }
}

/// Sends single-review requests for `time`, heavy for the shadow (`SPIN` of CPU each, see
/// `heavy_server`) when `heavy`; returns how many were sent.
async fn send_heavy(server: &TestServer, prefix: &str, heavy: bool, time: Duration) -> usize {
    let mut client = server.client().await;
    let text = if heavy { "you idiot huge" } else { "you idiot" };
    let start = Instant::now();
    let mut n = 0;
    while start.elapsed() < time {
        let resp = client.classify(request(vec![review(&format!("{prefix}-{n}"), text)])).await.expect("live answers");
        assert_eq!(decision_name(resp.into_inner().results[0].tasks[0].decision), "REJECT");
        n += 1;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    n
}

const OUTCOMES: [&str; 9] = [
    "compared",
    "sampled_out",
    "queue_full",
    "live_pressure",
    "deadline",
    "breaker_open",
    "error",
    "budget",
    "throttled",
];

fn outcome(base: &str, now: &str, o: &str) -> f64 {
    delta(base, now, "modserve_shadow_reviews_total", &[("shadow_model", "tiny-abuse-v2"), ("outcome", o)])
}

/// Polls until every review sent has an outcome (shadow work finishes after the answers).
async fn settled(server: &TestServer, base: &str, n: usize) -> String {
    let mut scrape = server.scrape().await;
    for _ in 0..200 {
        let total: f64 = OUTCOMES.iter().map(|o| outcome(base, &scrape, o)).sum();
        if total >= n as f64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        scrape = server.scrape().await;
    }
    scrape
}

/// A shadow that spends 20 ms of CPU per review, far more than its budget of 5% of the
/// process's CPUs: the CPU its threads use (by the metric and by the kernel's own count) stays
/// within the budget over the run, and the work it could not afford is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_heavy_shadow_stays_within_its_cpu_budget() {
    let _guard = exclusive().await;
    let server = heavy_server(heavy_config(BUDGET_ONLY)).await;
    let base = server.scrape().await;
    let budget = metric(&base, "modserve_shadow_cpu_budget", &[]).expect("budget gauge");
    let capacity: f64 = modserve::inference::cpu::process_capacity().cpus;
    // On a one-CPU machine the budget is the one-CPU share (0.01), below this config's 0.05.
    let one_cpu = modserve::inference::cpu::allowed_cpus().unwrap().count() == 1;
    let fraction = if one_cpu { 0.01 } else { 0.05 };
    assert!((budget - fraction * capacity).abs() < 1e-9, "budget {budget} for {capacity} CPUs");
    let cpu_before: u64 = worker_threads().iter().filter(|t| t.nice == 10).map(|t| t.cpu_ns).sum();
    let started = Instant::now();
    let n = send_heavy(&server, "h", true, Duration::from_secs(4)).await;
    let scrape = settled(&server, &base, n).await;
    let elapsed = started.elapsed().as_secs_f64();
    let cpu_after: u64 = worker_threads().iter().filter(|t| t.nice == 10).map(|t| t.cpu_ns).sum();

    let total: f64 = OUTCOMES.iter().map(|o| outcome(&base, &scrape, o)).sum();
    assert_eq!(total, n as f64, "every review has one outcome: {scrape}");
    let compared = outcome(&base, &scrape, "compared");
    let unaffordable = outcome(&base, &scrape, "budget") + outcome(&base, &scrape, "throttled");
    // Unlimited, the shadow would have needed n * 20 ms; the test only means something if that
    // is well over the budget.
    let wanted = n as f64 * SPIN.as_secs_f64();
    assert!(wanted > 3.0 * budget * elapsed, "{n} reviews in {elapsed:.1}s are not enough load");
    assert!(compared >= 1.0, "the shadow still compares some reviews");
    assert!(unaffordable >= n as f64 / 2.0, "the rest is counted as budget or throttled: {scrape}");

    // Tolerance: the 100 ms burst, plus one 20 ms batch per worker thread started just before the
    // budget ran out, plus 20% for the comparison and tokenization around each spin.
    let bound = (budget * (elapsed + 0.1) + 2.0 * SPIN.as_secs_f64()) * 1.2;
    let by_metric = delta(&base, &scrape, "modserve_shadow_batch_cpu_seconds_sum", &[("model", "tiny-abuse-v2")]);
    let by_kernel = (cpu_after - cpu_before) as f64 / 1e9;
    eprintln!(
        "{n} reviews in {elapsed:.2}s; budget {budget:.3} CPU/s; shadow CPU: metric {by_metric:.3}s, kernel {by_kernel:.3}s, \
         bound {bound:.3}s, unlimited would need {wanted:.2}s; compared {compared}, budget+throttled {unaffordable}"
    );
    assert!(by_metric > 0.0 && by_metric <= bound, "metric: {by_metric:.3} CPU-s over {elapsed:.1}s, bound {bound:.3}");
    assert!(by_kernel <= bound, "kernel: {by_kernel:.3} CPU-s over {elapsed:.1}s, bound {bound:.3}");
    // The two measures agree (the kernel also counts the idle loop between batches).
    assert!((by_kernel - by_metric).abs() <= 0.05 + 0.1 * by_kernel, "kernel {by_kernel:.3} vs metric {by_metric:.3}");
    server.stop().await;
}

/// On one CPU every shadow batch runs on live's core, where it costs live through the caches
/// whatever its priority: the budget's share is then `max_cpu_fraction_on_one_cpu` (0.01 unless
/// set), and the log says so. With the process on more CPUs, `max_cpu_fraction` holds. Left
/// out, it is 0.05.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_one_cpu_the_shadow_budget_is_the_one_cpu_share() {
    let _guard = exclusive().await;
    let allowed = modserve::inference::cpu::allowed_cpus().unwrap();
    let cpu = allowed.iter().next().unwrap();
    let models = LIVE_AND_SHADOW;
    async fn budget(server: &ChildServer) -> Option<f64> {
        metric(&server.scrape().await, "modserve_shadow_cpu_budget", &[])
    }
    // On every CPU the process may use: the budget is `share` of them; returns the server's log.
    async fn on_all_cpus(body: &str, share: f64) -> String {
        let all = ChildServer::start(body).await;
        let capacity = modserve::inference::cpu::process_capacity().cpus;
        let got = budget(&all).await.unwrap();
        assert!((got - share * capacity).abs() < 1e-9, "{got}: {share} of {capacity} CPUs");
        all.stop().await
    }
    let default_share = format!("[shadow]\nmax_cpu_fraction = 0.25\n{models}");
    let one = ChildServer::start_on_cpu(cpu, &default_share).await;
    assert_eq!(budget(&one).await, Some(0.01), "0.01 of one CPU");
    let logs = one.stop().await;
    assert!(
        logs.contains("may run on one CPU only") && logs.contains("max_cpu_fraction_on_one_cpu"),
        "the log says why the budget is lower than configured:\n{logs}"
    );
    let set = format!("[shadow]\nmax_cpu_fraction = 0.25\nmax_cpu_fraction_on_one_cpu = 0.05\n{models}");
    let one = ChildServer::start_on_cpu(cpu, &set).await;
    assert_eq!(budget(&one).await, Some(0.05), "the key, set");
    one.stop().await;
    if allowed.count() > 1 {
        let logs = on_all_cpus(&default_share, 0.25).await;
        assert!(!logs.contains("may run on one CPU only"), "{logs}");
    }
    // Left out, the budget is 0.05 of the CPUs (`cpu_reserve`, set to its default, keeps the
    // test helpers' unbounded shadows out of this config).
    let left_out = format!("[shadow]\ncpu_reserve = 0.5\n{models}");
    if allowed.count() > 1 {
        let logs = on_all_cpus(&left_out, 0.05).await;
        assert!(logs.contains("shadow CPU budget") && logs.contains("\"max_cpu_fraction\":0.05"), "{logs}");
    }
    let one = ChildServer::start_on_cpu(cpu, &left_out).await;
    assert_eq!(budget(&one).await, Some(0.01), "left out, on one CPU: the one-CPU share");
    one.stop().await;
}

/// Under a budget the heavy shadow cannot meet, its effective sample rate drops below the
/// configured one; once its reviews are cheap again, the rate climbs back to the configured one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_effective_rate_drops_under_pressure_and_comes_back() {
    let _guard = exclusive().await;
    let server = heavy_server(heavy_config(BUDGET_ONLY)).await;
    let labels = [("shadow_model", "tiny-abuse-v2")];
    let rate = |scrape: &str| metric(scrape, "modserve_shadow_sample_rate_effective", &labels).expect("rate gauge");
    let base = server.scrape().await;
    assert_eq!(metric(&base, "modserve_shadow_sample_rate_configured", &labels), Some(1.0));
    assert_eq!(rate(&base), 1.0);
    let n = send_heavy(&server, "p", true, Duration::from_secs(4)).await;
    let scrape = settled(&server, &base, n).await;
    let lowered = rate(&scrape);
    eprintln!("effective rate after {n} heavy reviews: {lowered}");
    assert!(lowered < 0.5, "effective rate under pressure: {lowered}");
    assert!(outcome(&base, &scrape, "throttled") >= 1.0);

    // Cheap reviews: the measured cost per review falls and the rate is raised step by step.
    let mut raised = lowered;
    for round in 0..20 {
        send_heavy(&server, &format!("c{round}"), false, Duration::from_secs(1)).await;
        raised = rate(&server.scrape().await);
        if raised == 1.0 {
            break;
        }
    }
    assert_eq!(raised, 1.0, "the rate came back after the pressure lifted (from {lowered})");
    server.stop().await;
}

/// A heavy shadow on a busy node gets no CPU at all, whatever its budget: with live work (here
/// threads spinning in this process, which count both as the process's own CPU under a quota
/// and as busy CPUs without one) taking more than `1 - cpu_reserve` of the CPUs, the budget in
/// force drops to 0 and no shadow work starts; once the node is quiet the room comes back and
/// the shadow compares again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_node_leaves_shadows_no_cpu_and_a_quiet_one_gives_it_back() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let _guard = exclusive().await;
    let server = heavy_server(heavy_config("max_cpu_fraction = 1.0\ncpu_reserve = 0.5")).await;
    let allowed = |scrape: &str| metric(scrape, "modserve_shadow_cpu_allowed", &[]).expect("allowed gauge");
    let until = |want: fn(f64) -> bool, what: &'static str| {
        let server = &server;
        async move {
            for _ in 0..200 {
                let scrape = server.scrape().await;
                if want(allowed(&scrape)) {
                    return scrape;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            panic!("{what}: allowed stayed {}", allowed(&server.scrape().await));
        }
    };
    until(|a| a > 0.0, "a quiet node gives shadows room").await;

    let stop = Arc::new(AtomicBool::new(false));
    let capacity = modserve::inference::cpu::process_capacity().cpus;
    let spinners: Vec<_> = (0..capacity.ceil() as usize + 1)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::hint::spin_loop();
                }
            })
        })
        .collect();
    let busy = until(|a| a == 0.0, "a busy node leaves shadows none").await;
    let n = send_heavy(&server, "busy", true, Duration::from_secs(1)).await;
    let during = server.scrape().await;
    let still_busy = allowed(&during) == 0.0;
    stop.store(true, Ordering::Relaxed);
    for s in spinners {
        s.join().unwrap();
    }
    assert!(still_busy, "the node stayed busy through the heavy reviews");
    assert_eq!(outcome(&busy, &during, "compared"), 0.0, "no shadow work while none is allowed: {during}");
    let unaffordable = outcome(&busy, &during, "budget") + outcome(&busy, &during, "throttled");
    assert!(unaffordable >= 1.0 && n >= 1, "{n} reviews counted as budget or throttled: {during}");

    let quiet = until(|a| a > 0.0, "room comes back on a quiet node").await;
    let mut compared = 0.0;
    for round in 0..20 {
        send_heavy(&server, &format!("quiet{round}"), true, Duration::from_millis(500)).await;
        compared = outcome(&quiet, &server.scrape().await, "compared");
        if compared >= 1.0 {
            break;
        }
    }
    assert!(compared >= 1.0, "the shadow compares again once the node is quiet");
    server.stop().await;
}

/// `shadow.cpus` outside the process's CPUs is refused, naming the key.
#[test]
fn shadow_cpus_must_be_cpus_the_process_may_use() {
    let _shared = shared_blocking();
    let text = |cpus: &str| {
        format!(
            "[shadow]\ncpus = {cpus:?}\n[models.tiny-abuse]\npath = \"tests/fixtures/tiny-abuse\"\n[tasks.abuse]\nlive = \"tiny-abuse\"\n"
        )
    };
    let parse = |cpus: &str| {
        modserve::config::Config::parse(&text(cpus), &repo().join("t.toml"), &Default::default()).map(|c| c.shadow_cpus)
    };
    let allowed = modserve::inference::cpu::allowed_cpus().unwrap();
    let first = allowed.iter().next().unwrap();
    assert_eq!(parse(&first.to_string()).unwrap().map(|c| c.to_list()), Some(first.to_string()));
    let errors = parse("1000").unwrap_err();
    assert!(errors.iter().any(|e| e.starts_with("shadow.cpus \"1000\": CPU 1000 not in")), "{errors:?}");
    let errors = parse("3-1").unwrap_err();
    assert!(errors.iter().any(|e| e.starts_with("shadow.cpus \"3-1\"")), "{errors:?}");
}

/// Two replicas given the same reviews under the same pressure compare exactly the same ones:
/// both lower their effective rate to the floor (`min_sample_rate = 0.3`), and at that rate each
/// compares exactly the reviews `shadow::sampled` picks at 0.3, read back from each one's
/// disagreement log (every review here is a disagreement: "this is dumb" is REVIEW live and
/// REJECT in the shadow).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_at_the_same_effective_rate_compare_the_same_reviews() {
    let _guard = exclusive().await;
    let dir = tempfile::tempdir().unwrap();
    let log = |name: &str| dir.path().join(format!("{name}.jsonl"));
    let start = |name: &str| {
        let table = format!(
            "{BUDGET_ONLY}\nmin_sample_rate = 0.3\nmax_delay = \"500ms\"\n[shadow.disagreement_log]\npath = {:?}\n",
            log(name).display().to_string()
        );
        heavy_server(heavy_config(&table))
    };
    let (a, b) = (start("a").await, start("b").await);
    // Heat: 20 ms of shadow CPU per review against a budget of a few per second drives both to
    // the floor at their first tick.
    let (na, nb) = tokio::join!(
        send_heavy(&a, "heat", true, Duration::from_secs(3)),
        send_heavy(&b, "heat", true, Duration::from_secs(3))
    );
    assert!(na > 100 && nb > 100, "{na} {nb}");
    // Let queued heat work run or expire (max_delay) and the budget refill; no offers, no ticks.
    // A clock by design: both are timers, and a probe to see whether they ran would be an offer.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // The same cheap reviews to both, in lockstep, quickly: the smoothed cost per review is still
    // far above what the budget pays for at a higher rate, so both stay at the floor.
    let ids: Vec<String> = (0..200).map(|i| format!("same-{i}")).collect();
    let (mut ca, mut cb) = (a.client().await, b.client().await);
    let (base_a, base_b) = (a.scrape().await, b.scrape().await);
    for id in &ids {
        ca.classify(request(vec![review(id, "this is dumb")])).await.unwrap();
        cb.classify(request(vec![review(id, "this is dumb")])).await.unwrap();
    }
    tokio::join!(settled(&a, &base_a, ids.len()), settled(&b, &base_b, ids.len()));
    a.stop().await;
    b.stop().await;
    let compared = |name: &str| -> Vec<String> {
        let text = std::fs::read_to_string(log(name)).unwrap();
        let mut ids: Vec<String> = text
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["review_id"].as_str().unwrap().to_string())
            .filter(|id| id.starts_with("same-"))
            .collect();
        ids.sort();
        ids
    };
    let mut expected: Vec<String> =
        ids.iter().filter(|id| modserve::shadow::sampled(id, "tiny-abuse-v2", 0.3)).cloned().collect();
    expected.sort();
    assert!(expected.len() > 30 && expected.len() < 100, "{}", expected.len());
    assert_eq!(compared("a"), expected, "replica a compared the reviews sampled at 0.3");
    assert_eq!(compared("b"), expected, "replica b compared the same reviews");
}
