//! `gpt2 score`: the CLI tokenizes with the model's own tokenizer and reports the mean
//! next-token loss over non-overlapping windows, as the library computes it.

use gpt2::eval::score_tokens;
use gpt2::io::hf::save_hf_dir;
use gpt2::tokenizer::Tokenizer;
use gpt2::{Config, Gpt};
use std::path::PathBuf;

mod common;
use common::run_gpt2;

const VERDICT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/data/the-verdict.txt");

/// A small random char-level model of the-verdict's alphabet, saved with its tokenizer.
fn char_model(name: &str) -> (PathBuf, Gpt, Tokenizer) {
    let text = std::fs::read_to_string(VERDICT).unwrap();
    let tokenizer = Tokenizer::char_level_from_text(&text);
    let model = Gpt::new(Config::new(tokenizer.vocab_size(), 64, 16, 1, 2), 5).unwrap();
    let dir = std::env::temp_dir().join(format!("gpt2-cli-score-{}-{name}", std::process::id()));
    save_hf_dir(&model, &dir).unwrap();
    tokenizer.save(&dir).unwrap();
    (dir, model, tokenizer)
}

#[test]
fn score_text_matches_the_library_over_windows() {
    let (dir, model, tokenizer) = char_model("windows");
    let out = run_gpt2(&["score", "--model", dir.to_str().unwrap(), "--text", VERDICT, "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let ids = tokenizer.encode(&std::fs::read_to_string(VERDICT).unwrap()).unwrap();
    let expected = score_tokens(&model, &ids).unwrap();
    assert_eq!(json["tokens"], ids.len());
    // 64-token windows: every window but a trailing single token predicts len - 1 tokens.
    let windows = ids.len().div_ceil(64);
    let last = ids.len() - (windows - 1) * 64;
    assert_eq!(json["predictions"], (windows - 1) * 63 + last.saturating_sub(1));
    assert!((json["loss"].as_f64().unwrap() - expected.loss).abs() < 1e-9);
    assert!((json["perplexity"].as_f64().unwrap() - expected.loss.exp()).abs() < 1e-6);
    // A random model of a ~60-character alphabet is close to uniform: loss ≈ ln(V).
    assert!((expected.loss - (tokenizer.vocab_size() as f64).ln()).abs() < 0.5);
}

#[test]
fn score_errors_are_clear() {
    let (dir, _, _) = char_model("errors");
    let model = dir.to_str().unwrap();
    let out = run_gpt2(&["score", "--model", model]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("--text"));
    let out = run_gpt2(&["score", "--model", model, "--text", "/nonexistent/file.txt"]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("/nonexistent/file.txt"));
    let out = run_gpt2(&["score", "--model", "/nonexistent-model", "--text", VERDICT]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("no such file"));
}

#[test]
fn a_character_outside_a_char_model_names_the_file_and_offset_or_is_skipped() {
    let (dir, _, _) = char_model("unknown");
    let model = dir.to_str().unwrap();
    let text = dir.join("text.txt");
    std::fs::write(&text, "I had always thought ☃ Jack").unwrap();
    let out = run_gpt2(&["score", "--model", model, "--text", text.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    for expected in [text.to_str().unwrap(), "at byte 21", "--skip-unknown"] {
        assert!(stderr.contains(expected), "missing {expected:?} in {stderr}");
    }
    let out = run_gpt2(&[
        "score",
        "--model",
        model,
        "--text",
        text.to_str().unwrap(),
        "--skip-unknown",
        "--json",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["tokens"], "I had always thought  Jack".len());
    std::fs::remove_dir_all(&dir).unwrap();
}
