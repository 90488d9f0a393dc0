//! modserve-loadgen: a gRPC load generator for `modserve.v1.Moderation/Classify` (any server
//! implementing it), with HDR histograms.
//!
//! Closed loop (`--concurrency 1,8,32`): N workers each send the next request as soon as the last
//! answer arrives. Open loop (`--rate 2000`): requests are sent on a fixed schedule whatever the
//! server does, and latency is measured from the scheduled send time, so a stalled server shows
//! up in the tail instead of hiding it (no coordinated omission).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use hdrhistogram::Histogram;
use modserve::serving::grpc::pb::moderation_client::ModerationClient;
use modserve::serving::grpc::pb::{ClassifyRequest, Review};
use tokio::sync::Mutex;
use tonic::transport::{Channel, Endpoint};

#[derive(Debug, Parser)]
#[command(name = "loadgen", about = "Load generator for modserve.v1.Moderation/Classify")]
struct Args {
    /// Server address.
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    addr: String,
    /// Review texts: a JSON-lines file with a "text" field, or plain text with one review a line.
    #[arg(long, default_value = "models/eval/reviews.jsonl")]
    texts: PathBuf,
    /// Reviews per request.
    #[arg(long, default_value_t = 1)]
    reviews: usize,
    /// Tasks to request (comma-separated); empty means every task.
    #[arg(long, default_value = "", value_delimiter = ',')]
    tasks: Vec<String>,
    /// Closed-loop concurrency levels to sweep (comma-separated).
    #[arg(long, default_value = "1,8,32", value_delimiter = ',')]
    concurrency: Vec<usize>,
    /// Open loop instead: requests per second (comma-separated to sweep).
    #[arg(long, value_delimiter = ',')]
    rate: Vec<f64>,
    /// Measured time per level.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Unmeasured warm-up time per level.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// HTTP/2 connections to spread requests over.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Pad or cut every text to this many bytes (0 = as in the file), to study text length.
    #[arg(long, default_value_t = 0)]
    text_bytes: usize,
    /// Print one JSON object per level instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Default)]
struct Stats {
    latency: Option<Histogram<u64>>,
    ok: u64,
    errors: BTreeMap<String, u64>,
}

impl Stats {
    fn new() -> Stats {
        Stats {
            latency: Some(Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds")),
            ..Stats::default()
        }
    }
    fn record(&mut self, latency: Duration, result: Result<(), tonic::Code>) {
        let us = (latency.as_micros() as u64).clamp(1, 60_000_000);
        self.latency.as_mut().unwrap().saturating_record(us);
        match result {
            Ok(()) => self.ok += 1,
            Err(code) => *self.errors.entry(format!("{code:?}")).or_default() += 1,
        }
    }
}

fn load_texts(path: &PathBuf, text_bytes: usize) -> Vec<String> {
    let content = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let mut texts: Vec<String> = content
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| match serde_json::from_str::<serde_json::Value>(l) {
            Ok(v) if v.get("text").is_some() => v["text"].as_str().unwrap_or_default().to_string(),
            _ => l.to_string(),
        })
        .filter(|t| !t.trim().is_empty())
        .collect();
    assert!(!texts.is_empty(), "no texts in {}", path.display());
    if text_bytes > 0 {
        for t in &mut texts {
            let mut long = String::with_capacity(text_bytes + 64);
            while long.len() < text_bytes {
                long.push_str(t);
                long.push(' ');
            }
            let mut cut = text_bytes;
            while !long.is_char_boundary(cut) {
                cut -= 1;
            }
            long.truncate(cut);
            *t = long;
        }
    }
    texts
}

fn make_request(texts: &[String], seq: u64, reviews: usize, tasks: &[String]) -> ClassifyRequest {
    let reviews = (0..reviews)
        .map(|i| {
            let n = seq as usize * reviews + i;
            Review { id: format!("lg-{n}"), text: texts[n % texts.len()].clone(), ..Default::default() }
        })
        .collect();
    ClassifyRequest { reviews, tasks: tasks.to_vec(), request_id: String::new(), surface: None }
}

async fn call(client: &mut ModerationClient<Channel>, req: ClassifyRequest) -> Result<(), tonic::Code> {
    client.classify(req).await.map(|_| ()).map_err(|s| s.code())
}

#[tokio::main]
async fn main() {
    let mut args = Args::parse();
    // `--tasks ""` (the default) means every task, not one task named "".
    args.tasks.retain(|t| !t.is_empty());
    let texts = Arc::new(load_texts(&args.texts, args.text_bytes));
    let mut channels = Vec::new();
    for _ in 0..args.connections.max(1) {
        let endpoint = Endpoint::from_shared(args.addr.clone()).unwrap_or_else(|e| {
            eprintln!("loadgen: --addr {:?} is not a URL like http://127.0.0.1:50051: {e}", args.addr);
            std::process::exit(2);
        });
        let channel = endpoint.connect().await.unwrap_or_else(|e| {
            eprintln!("loadgen: cannot connect to {}: {e}", args.addr);
            std::process::exit(1);
        });
        channels.push(channel);
    }
    if !args.json {
        println!(
            "{:<14} {:>10} {:>11} {:>9} {:>9} {:>9} {:>9} {:>8}  errors",
            "level", "req/s", "reviews/s", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms", "ok"
        );
    }
    let levels: Vec<(String, Level)> = if args.rate.is_empty() {
        args.concurrency.iter().map(|&c| (format!("conc={c}"), Level::Closed(c))).collect()
    } else {
        args.rate.iter().map(|&r| (format!("rate={r}"), Level::Open(r))).collect()
    };
    for (name, level) in levels {
        // Warm-up, unmeasured.
        run_level(&args, &channels, &texts, level, args.warmup).await;
        let (stats, elapsed) = run_level(&args, &channels, &texts, level, args.duration).await;
        report(&args, &name, &stats, elapsed);
    }
}

#[derive(Debug, Clone, Copy)]
enum Level {
    Closed(usize),
    Open(f64),
}

async fn run_level(
    args: &Args,
    channels: &[Channel],
    texts: &Arc<Vec<String>>,
    level: Level,
    duration: Duration,
) -> (Stats, Duration) {
    let stats = Arc::new(Mutex::new(Stats::new()));
    let start = Instant::now();
    let end = start + duration;
    match level {
        Level::Closed(concurrency) => {
            let mut workers = Vec::new();
            for w in 0..concurrency {
                let mut client = ModerationClient::new(channels[w % channels.len()].clone());
                let (texts, stats, tasks, reviews) = (texts.clone(), stats.clone(), args.tasks.clone(), args.reviews);
                workers.push(tokio::spawn(async move {
                    let mut local = Stats::new();
                    let mut seq = w as u64 * 1_000_000_000;
                    while Instant::now() < end {
                        let req = make_request(&texts, seq, reviews, &tasks);
                        seq += 1;
                        let t0 = Instant::now();
                        let result = call(&mut client, req).await;
                        local.record(t0.elapsed(), result);
                    }
                    let mut all = stats.lock().await;
                    all.latency.as_mut().unwrap().add(local.latency.as_ref().unwrap()).unwrap();
                    all.ok += local.ok;
                    for (k, v) in local.errors {
                        *all.errors.entry(k).or_default() += v;
                    }
                }));
            }
            for w in workers {
                w.await.unwrap();
            }
        }
        Level::Open(rate) => {
            let interval = Duration::from_secs_f64(1.0 / rate);
            let mut tasks = Vec::new();
            let mut seq = 0u64;
            loop {
                let scheduled = start + interval.mul_f64(seq as f64);
                if scheduled >= end {
                    break;
                }
                tokio::time::sleep_until(scheduled.into()).await;
                let mut client = ModerationClient::new(channels[seq as usize % channels.len()].clone());
                let req = make_request(texts, seq, args.reviews, &args.tasks);
                let stats = stats.clone();
                tasks.push(tokio::spawn(async move {
                    let result = call(&mut client, req).await;
                    // From the scheduled time, not the actual send: no coordinated omission.
                    stats.lock().await.record(scheduled.elapsed(), result);
                }));
                seq += 1;
            }
            for t in tasks {
                t.await.unwrap();
            }
        }
    }
    let elapsed = start.elapsed();
    let stats = Arc::try_unwrap(stats).ok().expect("all workers done").into_inner();
    (stats, elapsed)
}

fn report(args: &Args, name: &str, stats: &Stats, elapsed: Duration) {
    let h = stats.latency.as_ref().unwrap();
    let q = |p: f64| h.value_at_quantile(p) as f64 / 1000.0;
    let rps = stats.ok as f64 / elapsed.as_secs_f64();
    let errors: Vec<String> = stats.errors.iter().map(|(k, v)| format!("{k}={v}")).collect();
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "level": name, "reviews_per_request": args.reviews, "requests_per_s": rps,
                "reviews_per_s": rps * args.reviews as f64, "p50_ms": q(0.5), "p90_ms": q(0.9),
                "p99_ms": q(0.99), "p999_ms": q(0.999), "ok": stats.ok, "errors": stats.errors,
            })
        );
    } else {
        println!(
            "{:<14} {:>10.0} {:>11.0} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>8}  {}",
            name,
            rps,
            rps * args.reviews as f64,
            q(0.5),
            q(0.9),
            q(0.99),
            q(0.999),
            stats.ok,
            if errors.is_empty() { "-".to_string() } else { errors.join(" ") }
        );
    }
}
