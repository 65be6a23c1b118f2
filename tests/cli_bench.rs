//! `gpt2 bench train --rounds`: medians over rounds, and the speed-up as the median of the
//! rounds' own ratios. A stand-in for Python prints a fixed PyTorch result, so the arithmetic is
//! checked without torch (no timing is asserted: only how the figures relate).

use std::os::unix::fs::PermissionsExt;

mod common;
use common::{gpt2, temp_dir};

fn bench(extra: &[&str]) -> std::process::Output {
    let tiny = [
        "bench",
        "train",
        "--preset",
        "shakespeare-char",
        "--n-layer",
        "1",
        "--n-head",
        "2",
        "--n-embd",
        "16",
        "--vocab-size",
        "11",
        "--batch-size",
        "2",
        "--block-size",
        "8",
        "--steps",
        "3",
        "--warmup",
        "0",
    ];
    gpt2().args(tiny).args(extra).output().unwrap()
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

#[test]
fn rounds_report_the_median_of_the_rounds_ratios() {
    let dir = temp_dir("cli-bench");
    let python = dir.join("python");
    let peer = r#"{"step_ms_median": 250.0, "tokens_per_s": 64.0, "peak_rss_mb": 1.0}"#;
    std::fs::write(&python, format!("#!/bin/sh\necho '{peer}'\n")).unwrap();
    std::fs::set_permissions(&python, std::fs::Permissions::from_mode(0o755)).unwrap();

    let out = bench(&["--rounds", "3", "--json", "--pytorch", python.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["rounds"], 3);
    assert_eq!(json["pytorch_step_ms_median"], 250.0);
    let ratios: Vec<f64> = json["speedup_per_round"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_f64().unwrap())
        .collect();
    assert_eq!(ratios.len(), 3);
    assert_eq!(json["speedup_vs_pytorch"].as_f64().unwrap(), median(ratios.clone()));
    // Each round's ratio is PyTorch's time over ours, so ours was 250 / ratio; the reported
    // step time is the median of those, and tokens/s follows from it.
    let ours_ms = json["step_ms_median"].as_f64().unwrap();
    let expected_ms = median(ratios.iter().map(|r| 250.0 / r).collect());
    assert!(
        (ours_ms - expected_ms).abs() <= 1e-9 * expected_ms,
        "{ours_ms} vs {expected_ms}"
    );
    let tokens_per_s = json["tokens_per_s"].as_f64().unwrap();
    assert!((tokens_per_s - 16.0 * 1000.0 / ours_ms).abs() <= 1e-6 * tokens_per_s);

    let text = bench(&["--rounds", "2", "--pytorch", python.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert_eq!(
        text.matches("speed-up").count(),
        3,
        "one per round and the summary:\n{text}"
    );
    assert!(
        text.contains("median of 2 rounds") && text.contains("median of the rounds' ratios"),
        "{text}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn zero_rounds_is_an_error() {
    let out = bench(&["--rounds", "0"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--rounds must be at least 1"));
}
