//! Instruction counts for the tokenization stage, for callgrind: unlike wall time, the count is the
//! same run to run whatever else the machine is doing, so a change shows as a ratio even on a noisy
//! machine. `benches/callgrind.sh` runs it; it only counts inside `tokenize_pass`.
//!
//! Tokenizes the eval suite's reviews (`models/eval/reviews.jsonl`) `PASSES` times with the tokenizer of
//! each bundled model given on the command line (default `models/abuse-v1`), one review at a time,
//! as the inference workers do.

use std::path::PathBuf;

use modserve::inference::model::Package;
use modserve::inference::tokenize::{Encoder, TokenRows};

const PASSES: usize = 10;

/// The server's allocator (`src/main.rs`): with the system one, allocation was 45% of the count.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[inline(never)]
fn tokenize_pass(encoder: &Encoder, texts: &[String], rows: &mut TokenRows) -> usize {
    let mut tokens = 0;
    for text in texts {
        rows.clear();
        encoder.encode_rows([text.as_str()], rows).expect("tokenizes");
        tokens += rows.row(0).len();
    }
    tokens
}

fn main() {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let file = std::fs::read_to_string(repo.join("models/eval/reviews.jsonl")).expect("models/eval/reviews.jsonl");
    let texts: Vec<String> = file
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["text"].as_str().map(str::to_string))
        .collect();
    // `cargo bench` passes `--bench`; only plain arguments name packages.
    let mut packages: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    if packages.is_empty() {
        packages.push("models/abuse-v1".into());
    }
    for name in packages {
        let package = Package::load(&repo.join(&name)).expect("package loads");
        let encoder = Encoder::new(package.tokenizer.clone(), package.spec.max_sequence_length).expect("encoder");
        let mut rows = TokenRows::default();
        let mut tokens = 0;
        for _ in 0..PASSES {
            tokens += tokenize_pass(&encoder, &texts, &mut rows);
        }
        println!("{name}: {} reviews, {tokens} tokens", texts.len() * PASSES);
    }
}
