//! Error messages name the right thing: the path the user gave (not a temporary file, not twice),
//! the flag, the value as written, and what to do instead.

mod common;

use common::{fixture, gpt2, run_gpt2, temp_dir};
use std::process::Output;

/// The exit code 1 and stderr of a failed command, checked to hold each of `expected`.
fn fails_with(out: Output, expected: &[&str]) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    for e in expected {
        assert!(stderr.contains(e), "missing {e:?} in {stderr}");
    }
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
}

#[test]
fn attention_maps_into_a_file_say_it_is_not_a_directory() {
    let dir = temp_dir("msg-attention");
    let file = dir.join("notes.txt");
    std::fs::write(&file, "mine").unwrap();
    let tiny = fixture("tiny");
    let args = [
        "inspect",
        "--model",
        tiny.to_str().unwrap(),
        "--prompt-ids",
        "1 2",
        "--attention-png",
    ];
    let out = run_gpt2(&[&args[..], &[file.to_str().unwrap()]].concat());
    let stderr = fails_with(out, &["notes.txt", "not a directory"]);
    assert!(!stderr.contains("os error"), "{stderr}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "mine");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_folder_named_like_a_downloadable_model_says_both_meanings() {
    let dir = temp_dir("msg-name-clash");
    std::fs::create_dir(dir.join("gpt2")).unwrap();
    let run = |cache: &str| {
        gpt2()
            .current_dir(&dir)
            .env("GPT2_CACHE_DIR", dir.join(cache))
            .args(["score", "--model", "gpt2", "--tokens", "/dev/null"])
            .output()
            .unwrap()
    };
    fails_with(
        run("empty-cache"),
        &["not a model", "downloadable model", "gpt2 download gpt2"],
    );
    let cached = dir.join("cache/hf/gpt2");
    std::fs::create_dir_all(&cached).unwrap();
    fails_with(
        run("cache"),
        &["not a model", "downloaded model", cached.to_str().unwrap()],
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[cfg(unix)]
#[test]
fn convert_to_a_symlink_says_it_is_a_link() {
    let dir = temp_dir("msg-symlink");
    std::fs::create_dir(dir.join("run")).unwrap();
    std::os::unix::fs::symlink(dir.join("run"), dir.join("latest")).unwrap();
    let tiny = fixture("tiny");
    let out = run_gpt2(&[
        "convert",
        "--from",
        tiny.to_str().unwrap(),
        "--to",
        "hf",
        "--out",
        dir.join("latest").to_str().unwrap(),
    ]);
    fails_with(out, &["symbolic link", "run"]);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bpe_train_into_a_missing_directory_names_the_out_path() {
    let verdict = concat!(env!("CARGO_MANIFEST_DIR"), "/data/the-verdict.txt");
    let out = run_gpt2(&[
        "bpe",
        "train",
        "--file",
        verdict,
        "--vocab-size",
        "300",
        "--out",
        "/nonexistent/t5.json",
    ]);
    let stderr = fails_with(out, &["/nonexistent/t5.json", "/nonexistent is not a directory"]);
    assert!(!stderr.contains(".tmp"), "{stderr}");
}

#[test]
fn an_empty_char_vocabulary_file_says_it_is_empty() {
    let dir = temp_dir("msg-empty-chars");
    std::fs::write(dir.join("empty.txt"), "").unwrap();
    let spec = format!("char:{}", dir.join("empty.txt").display());
    let out = gpt2()
        .args(["tokenize", "--encoding", &spec])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    fails_with(out, &["empty.txt", "empty"]);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_broken_tokenizer_json_as_a_char_vocabulary_is_an_error_not_an_alphabet() {
    let dir = temp_dir("msg-broken-char-json");
    let broken = dir.join("tokenizer.json");
    std::fs::write(&broken, r#"{"type": "char", "chars": ["#).unwrap();
    let spec = format!("char:{}", broken.display());
    let out = gpt2()
        .args(["tokenize", "--encoding", &spec])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    fails_with(
        out,
        &["tokenizer.json", "looks like a tokenizer JSON file but cannot be read"],
    );
    // A text that merely starts with a brace is still an alphabet.
    let text = dir.join("braces.txt");
    std::fs::write(&text, "{ab}").unwrap();
    let out = gpt2()
        .args(["tokenize", "--encoding", &format!("char:{}", text.display())])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_tiny_validation_split_is_reported_as_given() {
    let dir = temp_dir("msg-val-fraction");
    let out = gpt2()
        .args([
            "--threads",
            "1",
            "train",
            "--max-iters",
            "1",
            "--val-fraction",
            "0.00001",
            "--cache-dir",
        ])
        .arg(dir.join("cache"))
        .arg("--out-dir")
        .arg(dir.join("run"))
        .output()
        .unwrap();
    fails_with(out, &["the last 0.001% of the corpus"]);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_bad_config_json_names_its_path_once() {
    let dir = temp_dir("msg-config");
    std::fs::write(dir.join("config.json"), "{\"model_type\": \"gpt2\"}").unwrap();
    let out = run_gpt2(&["inspect", "--summary", "--model", dir.to_str().unwrap()]);
    let stderr = fails_with(out, &["config.json: missing field"]);
    assert!(!stderr.contains("config.json: config.json"), "{stderr}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_truncated_safetensors_file_is_reported_as_cut_short() {
    let dir = temp_dir("msg-truncated");
    let bytes = std::fs::read(fixture("tiny/model.safetensors")).unwrap();
    let file = dir.join("weights.safetensors");
    std::fs::write(&file, &bytes[..200]).unwrap();
    let out = run_gpt2(&["inspect", "--summary", "--model", file.to_str().unwrap()]);
    fails_with(out, &["weights.safetensors", "cut short"]);
    std::fs::remove_dir_all(&dir).unwrap();
}
