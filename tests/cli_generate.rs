//! `gpt2 generate` from the outside: output formats, stop strings, the interactive session,
//! and clear errors (never a panic) for bad input.

use gpt2::io::hf::save_hf_dir;
use gpt2::model::Weights;
use gpt2::tokenizer::{Tokenizer, EOT_ID};
use gpt2::{Config, Gpt};
use std::io::Write;
use std::path::PathBuf;
use std::process::{Output, Stdio};

mod common;
use common::{fixture, gpt2 as gpt2_bin, temp_dir};

/// A model directory in the temp dir, removed when dropped.
struct TempModel(PathBuf);

impl TempModel {
    fn dir(name: &str) -> Self {
        TempModel(temp_dir(&format!("cli-generate-{name}")))
    }

    /// The tiny fixture model with a character tokenizer over its 96 ids ('\n', ASCII 32..127).
    fn with_chars(name: &str) -> Self {
        let model = TempModel::dir(name);
        for file in ["config.json", "model.safetensors"] {
            std::fs::copy(fixture("tiny").join(file), model.0.join(file)).unwrap();
        }
        let chars: Vec<char> = std::iter::once('\n').chain((32u8..127).map(char::from)).collect();
        Tokenizer::char_level(chars).unwrap().save(&model.0).unwrap();
        model
    }

    /// A small model with GPT-2's vocabulary (so GPT-2's tokenizer) whose most likely next
    /// token is always <|endoftext|>: a zero final LayerNorm gain with bias 1 makes every
    /// logit the sum of its wte row, and only the row of <|endoftext|> is large.
    fn always_eot(name: &str) -> Self {
        let model = TempModel::dir(name);
        let cfg = Config::new(50257, 16, 8, 1, 2);
        let mut gpt = Gpt::new(cfg.clone(), 1).unwrap();
        let w = Weights::split(gpt.params.as_mut_slice(), &cfg);
        w.ln_f_w.fill(0.0);
        w.ln_f_b.fill(1.0);
        w.wte[EOT_ID as usize * cfg.n_embd..][..cfg.n_embd].fill(10.0);
        save_hf_dir(&gpt, &model.0).unwrap();
        model
    }

    fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for TempModel {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn gpt2(args: &[&str], stdin: &str) -> Output {
    let mut child = gpt2_bin()
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

fn json(out: &Output) -> serde_json::Value {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// One JSON object per line of stdout (an interactive session's answers).
fn json_lines(out: &Output) -> Vec<serde_json::Value> {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn ids(value: &serde_json::Value) -> Vec<u64> {
    value.as_array().unwrap().iter().map(|x| x.as_u64().unwrap()).collect()
}

#[test]
fn greedy_ids_from_the_command_line_match_hugging_face() {
    let text = std::fs::read_to_string(fixture("tiny_generate.json")).unwrap();
    let expected: serde_json::Value = serde_json::from_str(&text).unwrap();
    let prompt: Vec<String> = ids(&expected["prompt_ids"]).iter().map(u64::to_string).collect();
    let model = fixture("tiny");
    let args = [
        "generate",
        "--model",
        model.to_str().unwrap(),
        "--greedy",
        "--max-new-tokens",
        "60",
        "--json",
    ];
    let out = json(&gpt2(&[&args[..], &["--prompt-ids", &prompt.join(" ")]].concat(), ""));
    let greedy = ids(&expected["greedy_ids"]);
    assert_eq!(ids(&out["samples"][0]["ids"]), greedy[prompt.len()..]);
    assert_eq!(out["samples"][0]["finish"], "length");
}

#[test]
fn text_streams_as_in_json_and_stops_before_a_stop_string() {
    let dir = TempModel::with_chars("text");
    let model = dir.path();
    let base = [
        "generate",
        "--model",
        model,
        "--prompt",
        "Hello",
        "--max-new-tokens",
        "40",
        "--seed",
        "7",
    ];
    let out = json(&gpt2(&[&base[..], &["--json", "--num-samples", "2"]].concat(), ""));
    assert_eq!(ids(&out["prompt_ids"]), [41, 70, 77, 77, 80]);
    let texts: Vec<&str> = (0..2).map(|s| out["samples"][s]["text"].as_str().unwrap()).collect();
    assert!(texts.iter().all(|t| t.chars().count() == 40) && texts[0] != texts[1]);
    // The streamed output is the prompt and each sample's text, in order.
    let streamed = gpt2(&[&base[..], &["--num-samples", "2"]].concat(), "");
    assert!(streamed.status.success());
    let expected = format!("Hello{}\n---------------\nHello{}\n", texts[0], texts[1]);
    assert_eq!(String::from_utf8(streamed.stdout).unwrap(), expected);
    // Stop at two characters from the middle of sample 0: its text ends right before them.
    let stop: String = texts[0].chars().skip(20).take(2).collect();
    let out = json(&gpt2(&[&base[..], &["--json", "--stop", &stop]].concat(), ""));
    let cut = &texts[0][..texts[0].find(&stop).unwrap()];
    assert_eq!(out["samples"][0]["text"], cut);
    assert_eq!(out["samples"][0]["finish"], "stop_string");
}

#[test]
fn endoftext_ends_a_sample_and_is_not_printed() {
    let model = TempModel::always_eot("eot");
    let args = [
        "generate",
        "--model",
        model.path(),
        "--prompt",
        "Hello",
        "--greedy",
        "--max-new-tokens",
        "9",
    ];
    let out = json(&gpt2(&[&args[..], &["--json"]].concat(), ""));
    assert_eq!(
        ids(&out["samples"][0]["ids"]),
        [EOT_ID as u64],
        "the stop token is reported in ids, like HF"
    );
    assert_eq!(out["samples"][0]["text"], "");
    assert_eq!(out["samples"][0]["finish"], "stop_token");
    let streamed = gpt2(&args, "");
    assert_eq!(String::from_utf8(streamed.stdout).unwrap(), "Hello\n");
}

#[test]
fn interactive_answers_each_line_with_the_model_loaded_once() {
    let model = TempModel::with_chars("interactive");
    let args = [
        "generate",
        "--model",
        model.path(),
        "--interactive",
        "--greedy",
        "--max-new-tokens",
        "5",
    ];
    let out = gpt2(&[&args[..], &["--json"]].concat(), "abc\n\nxyz\né\nabc\n");
    assert_eq!(out.status.code(), Some(1), "a line failed");
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3, "the empty line is skipped, the bad one is reported");
    assert_eq!(
        lines[0]["samples"], lines[2]["samples"],
        "greedy: same prompt, same answer"
    );
    assert!(String::from_utf8(out.stderr).unwrap().contains("unknown character"));
}

#[test]
fn bad_input_is_a_clear_error_not_a_panic() {
    let dir = TempModel::with_chars("errors");
    let model = dir.path();
    let cases: [(&[&str], &str); 13] = [
        (&["--prompt", ""], "empty"),
        (
            &["--prompt", "a", "--num-samples", "18446744073709551615"],
            "--num-samples must be between 1 and 65536",
        ),
        (&["--prompt", "é"], "unknown character"),
        (&["--prompt", "a", "--top-p", "0"], "--top-p must be in (0, 1]"),
        (&["--prompt", "a", "--top-p", "1.5"], "--top-p"),
        (&["--prompt", "a", "--top-p", "-0.5"], "--top-p"),
        (&["--prompt", "a", "--temperature", "-1"], "--temperature"),
        (&["--prompt", "a", "--temperature", "inf"], "finite"),
        (&["--prompt", "a", "--repetition-penalty", "-1"], "--repetition-penalty"),
        (&["--prompt", "a", "--top-k", "0"], "--top-k"),
        (&["--prompt", "a", "--stop", ""], "--stop \"\""),
        (&["--prompt-ids", "1 x"], "not a token id"),
        (&["--prompt-ids", "1 96"], "outside the vocabulary"),
    ];
    for (args, message) in cases {
        let out = gpt2(&[&["generate", "--model", model][..], args].concat(), "");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(
            stderr.contains(message) && !stderr.contains("panicked"),
            "{args:?}: {stderr}"
        );
    }
    let src = concat!(env!("CARGO_MANIFEST_DIR"), "/src");
    let out = gpt2(&["generate", "--model", src, "--prompt", "a"], "");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr.contains("not a model") && !stderr.contains("panicked"),
        "{stderr}"
    );
    let no_tokenizer = fixture("tiny");
    let out = gpt2(
        &["generate", "--model", no_tokenizer.to_str().unwrap(), "--interactive"],
        "1 2\n",
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr.contains("--interactive reads prompts as text"), "{stderr}");
}

#[test]
fn interactive_from_a_pipe_echoes_each_prompt_and_fails_if_a_line_failed() {
    let model = TempModel::with_chars("interactive-pipe");
    let args = [
        "generate",
        "--model",
        model.path(),
        "--interactive",
        "--greedy",
        "--max-new-tokens",
        "3",
    ];
    let out = gpt2(&args, "abc\né\nxyz\n");
    let (stdout, stderr) = (
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    );
    let answers: Vec<&str> = stdout.lines().collect();
    assert_eq!(answers.len(), 2, "{stdout}");
    assert!(
        answers[0].starts_with("abc") && answers[1].starts_with("xyz"),
        "{stdout}"
    );
    assert!(
        stderr.contains("line 2") && stderr.contains("unknown character"),
        "{stderr}"
    );
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let out = gpt2(&args, "abc\n");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // A line that is not UTF-8 is reported by number, and the session goes on.
    let mut child = gpt2_bin()
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"\xff\xfe\nxyz\n").unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("reading line 1 of standard input") && stderr.contains("1 line of standard input failed"),
        "{stderr}"
    );
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("xyz"));
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn skip_unknown_leaves_out_characters_a_char_model_lacks() {
    let model = TempModel::with_chars("skip-unknown");
    let args = [
        "generate",
        "--model",
        model.path(),
        "--greedy",
        "--max-new-tokens",
        "2",
        "--json",
    ];
    let skipped = json(&gpt2(&[&args[..], &["--prompt", "aéb", "--skip-unknown"]].concat(), ""));
    let plain = json(&gpt2(&[&args[..], &["--prompt", "ab"]].concat(), ""));
    assert_eq!(skipped["prompt_ids"], plain["prompt_ids"]);
    assert_eq!(skipped["samples"], plain["samples"]);
}

#[test]
fn interactive_prompt_i_is_sampled_with_seed_plus_i() {
    let model = TempModel::with_chars("interactive-seeds");
    let args = [
        "generate",
        "--model",
        model.path(),
        "--max-new-tokens",
        "12",
        "--json",
        "--seed",
        "5",
    ];
    let out = gpt2(&[&args[..], &["--interactive"]].concat(), "abc\nabc\n");
    let lines = json_lines(&out);
    assert_eq!(
        (lines[0]["seed"].as_u64(), lines[1]["seed"].as_u64()),
        (Some(5), Some(6))
    );
    assert_ne!(lines[0]["samples"], lines[1]["samples"]);
    let single = json(&gpt2(
        &[
            "generate",
            "--model",
            model.path(),
            "--max-new-tokens",
            "12",
            "--json",
            "--seed",
            "6",
            "--prompt",
            "abc",
        ],
        "",
    ));
    assert_eq!(
        single["samples"], lines[1]["samples"],
        "the reported seed reproduces the answer"
    );
}

#[test]
fn no_new_tokens_prints_the_prompt_and_ends_by_length() {
    let model = TempModel::with_chars("zero");
    let args = [
        "generate",
        "--model",
        model.path(),
        "--prompt",
        "Hi",
        "--max-new-tokens",
        "0",
    ];
    let out = json(&gpt2(&[&args[..], &["--json"]].concat(), ""));
    assert_eq!(out["samples"][0]["finish"], "length");
    assert!(ids(&out["samples"][0]["ids"]).is_empty());
    let streamed = gpt2(&args, "");
    assert_eq!(String::from_utf8(streamed.stdout).unwrap(), "Hi\n");
}

#[test]
fn endoftext_in_a_prompt_is_the_special_token() {
    let model = TempModel::always_eot("eot-prompt");
    let args = [
        "generate",
        "--model",
        model.path(),
        "--prompt",
        "<|endoftext|>Hi",
        "--max-new-tokens",
        "1",
        "--json",
    ];
    let out = json(&gpt2(&args, ""));
    assert_eq!(ids(&out["prompt_ids"])[0], EOT_ID as u64);
}

#[test]
fn ids_beyond_the_tokenizer_print_as_replacement_characters() {
    // The tiny model has 96 ids; this tokenizer knows the first 95 (a padded vocabulary).
    let model = TempModel::dir("padded");
    for file in ["config.json", "model.safetensors"] {
        std::fs::copy(fixture("tiny").join(file), model.0.join(file)).unwrap();
    }
    let chars: Vec<char> = std::iter::once('\n').chain((32u8..126).map(char::from)).collect();
    Tokenizer::char_level(chars).unwrap().save(&model.0).unwrap();
    let args = [
        "generate",
        "--model",
        model.path(),
        "--prompt-ids",
        "95 34",
        "--max-new-tokens",
        "3",
        "--seed",
        "1",
    ];
    let out = gpt2(&args, "");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8(out.stdout).unwrap().starts_with("\u{FFFD}A"));
    assert!(json(&gpt2(&[&args[..], &["--json"]].concat(), ""))["samples"][0]["ids"].is_array());
}
