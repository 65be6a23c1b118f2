//! Encode throughput of our GPT-2 tokenizer against tiktoken-rs, measured in the same run.
//!
//!     cargo bench --bench tokenize
//!
//! Texts: Tiny Shakespeare (1.1 MB, English) and a mixed-Unicode text (~1 MB: the fixture texts
//! of every category — code, numbers, whitespace, CJK, emoji, RTL, ... — in a shuffled
//! order). Single thread: one `encode` call. Parallel: ours `encode_parallel`; tiktoken-rs
//! `encode_ordinary` over the same chunks on the same rayon pool. MB/s = 1e6 bytes per second,
//! median of 7 runs after a warm-up. Also times BPE training to 4096 tokens.

use std::path::Path;
use std::time::{Duration, Instant};

use gpt2::tokenizer::{pretokenize, SpecialTokens, Tokenizer};
use rayon::prelude::*;

const RUNS: usize = 7;

fn median_time(mut f: impl FnMut() -> Vec<u32>) -> (Duration, Vec<u32>) {
    let ids = f();
    let mut times: Vec<Duration> = (0..RUNS)
        .map(|_| {
            let start = Instant::now();
            std::hint::black_box(f());
            start.elapsed()
        })
        .collect();
    times.sort();
    (times[RUNS / 2], ids)
}

fn mixed_unicode_text() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tokenizer/gpt2_cases.json");
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let texts: Vec<&str> = json["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["text"].as_str().unwrap())
        .collect();
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut out = String::new();
    while out.len() < 1_000_000 {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        out.push_str(texts[(state >> 33) as usize % texts.len()]);
        out.push('\n');
    }
    out
}

fn main() {
    let shakespeare =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("data/tinyshakespeare.txt")).unwrap();
    let mixed = mixed_unicode_text();
    let ours = Tokenizer::gpt2();
    let theirs = tiktoken_rs::r50k_base().unwrap();
    let threads = rayon::current_num_threads();
    println!("encode throughput, MB/s (median of {RUNS}); parallel = {threads} threads");
    println!(
        "{:<18} {:>10} {:>12} {:>10} {:>12}",
        "text", "ours 1t", "tiktoken 1t", "ours par", "tiktoken par"
    );
    for (name, text) in [("tiny shakespeare", &shakespeare), ("mixed unicode", &mixed)] {
        let mb = text.len() as f64 / 1e6;
        let (ours_1, ids) = median_time(|| ours.encode_with_special(text, SpecialTokens::AsText).unwrap());
        let (theirs_1, their_ids) = median_time(|| theirs.encode_ordinary(text));
        let (ours_par, par_ids) =
            median_time(|| ours.encode_parallel_with_special(text, SpecialTokens::AsText).unwrap());
        let chunks = pretokenize::chunks(text, 64 * 1024);
        let (theirs_par, their_par_ids) = median_time(|| {
            chunks
                .par_iter()
                .map(|c| theirs.encode_ordinary(c))
                .collect::<Vec<_>>()
                .concat()
        });
        assert!(
            ids == their_ids && ids == par_ids && ids == their_par_ids,
            "{name}: results differ"
        );
        let rate = |t: Duration| mb / t.as_secs_f64();
        println!(
            "{name:<18} {:>10.1} {:>12.1} {:>10.1} {:>12.1}",
            rate(ours_1),
            rate(theirs_1),
            rate(ours_par),
            rate(theirs_par)
        );
    }
    let start = Instant::now();
    let trained = Tokenizer::train_bpe(&shakespeare, 4096).unwrap();
    println!(
        "BPE training on tiny shakespeare to {} tokens: {:.2?}",
        trained.vocab_size(),
        start.elapsed()
    );
}
