//! `gpt2 eval`: sliding-window perplexity against `score` and a direct computation, multiple
//! choice against each ending's loss computed by hand, prompts and exact match end to end, and
//! the errors of bad input.

use gpt2::eval::choice::{read_choices, score_choices};
use gpt2::eval::{perplexity, score_tokens};
use gpt2::io::load_model_with_tokenizer;
use gpt2::ops::cross_entropy::IGNORE_INDEX;
use gpt2::tokenizer::Tokenizer;
use gpt2::{Gpt, Workspace};
use std::path::{Path, PathBuf};

mod common;
use common::server::CharModel;
use common::{fixture, run_gpt2, temp_dir};

const SHAKESPEARE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/data/tinyshakespeare.txt");

/// Runs `gpt2` with the words of `line` (the tests' paths hold no spaces).
fn run_line(line: &str) -> std::process::Output {
    run_gpt2(&line.split_whitespace().collect::<Vec<_>>())
}

/// [`run_line`], which must succeed; its standard output.
fn succeeds(line: &str) -> Vec<u8> {
    let out = run_line(line);
    assert!(out.status.success(), "{line}: {}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

/// The trained char-level fixture (64 positions) and its tokenizer.
fn trained() -> (Gpt, Tokenizer) {
    let loaded = load_model_with_tokenizer(&fixture("shakespeare_char")).unwrap();
    (loaded.model, loaded.tokenizer.unwrap())
}

/// The first `chars` characters of Tiny Shakespeare, written to a file of the test's directory.
fn shakespeare(dir: &Path, chars: usize) -> (PathBuf, String) {
    let text: String = std::fs::read_to_string(SHAKESPEARE)
        .unwrap()
        .chars()
        .take(chars)
        .collect();
    let path = dir.join("text.txt");
    std::fs::write(&path, &text).unwrap();
    (path, text)
}

/// Each scored token's loss computed directly: token j (from 1) predicted from the window of
/// n_positions tokens that starts at the last multiple of `stride` that both reaches j and lies
/// beyond the windows before; this is the window that first covers j.
fn direct_loss(model: &Gpt, ids: &[u32], stride: usize) -> (f64, usize) {
    let n = model.config.n_positions;
    let mut ws = Workspace::new();
    let (mut total, mut count) = (0.0f64, 0);
    for j in 1..ids.len() {
        // The first window [b, b + n) with b a multiple of stride and b < j < b + n.
        let begin = (0..).step_by(stride).find(|&b| j < b + n).unwrap();
        let window = &ids[begin..(begin + n).min(ids.len())];
        let targets: Vec<i32> = (0..window.len())
            .map(|i| {
                if begin + i + 1 == j {
                    ids[j] as i32
                } else {
                    IGNORE_INDEX
                }
            })
            .collect();
        total += model
            .forward(&mut ws, window, 1, window.len(), Some(&targets), None)
            .unwrap()
            .unwrap() as f64;
        count += 1;
    }
    (total / count as f64, count)
}

#[test]
fn perplexity_at_the_context_stride_is_score_and_smaller_strides_score_every_token_once() {
    let dir = temp_dir("eval-ppl");
    let (path, text) = shakespeare(&dir, 1000);
    let model_dir = fixture("shakespeare_char");
    let (model, tokenizer) = (trained().0, trained().1);
    let ids = tokenizer.encode(&text).unwrap();

    // The CLI: eval perplexity without --stride prints exactly what score prints.
    let (model_arg, text_arg) = (model_dir.to_str().unwrap(), path.to_str().unwrap());
    let args =
        |cmd: &[&'static str]| -> Vec<&str> { [cmd, &["--model", model_arg, "--text", text_arg, "--json"]].concat() };
    let score = run_gpt2(&args(&["score"]));
    let eval = run_gpt2(&args(&["eval", "perplexity"]));
    assert!(eval.status.success(), "{}", String::from_utf8_lossy(&eval.stderr));
    assert_eq!(score.stdout, eval.stdout);
    assert_eq!(
        perplexity(&model, &ids, 64).unwrap(),
        score_tokens(&model, &ids).unwrap()
    );

    // Stride 32: every token but the first is scored once, with at least 32 tokens of context
    // past the first window: as a direct computation, and no worse than without overlap.
    let sliding = perplexity(&model, &ids, 32).unwrap();
    assert_eq!((sliding.tokens, sliding.predictions), (ids.len(), ids.len() - 1));
    let (loss, count) = direct_loss(&model, &ids, 32);
    assert_eq!(count, sliding.predictions);
    assert!((sliding.loss - loss).abs() < 1e-5, "{} vs {loss}", sliding.loss);
    let whole = score_tokens(&model, &ids).unwrap();
    assert!(sliding.loss <= whole.loss, "{} > {}", sliding.loss, whole.loss);
    // Non-overlapping windows lose the first token of each window: 1000 tokens, 16 windows.
    assert_eq!(whole.predictions, ids.len() - ids.len().div_ceil(64));
    let out = run_gpt2(&[&args(&["eval", "perplexity"])[..], &["--stride", "32"]].concat());
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["predictions"], ids.len() - 1);
    assert!((json["loss"].as_f64().unwrap() - sliding.loss).abs() < 1e-12);

    for bad in ["0", "65"] {
        let out = run_gpt2(&[&args(&["eval", "perplexity"])[..], &["--stride", bad]].concat());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains("between 1 and the model's context of 64"),
            "{err}"
        );
    }
}

#[test]
fn choice_picks_the_endings_of_least_summed_and_mean_loss() {
    let dir = temp_dir("eval-choice");
    let (model, tokenizer) = trained();
    let file = dir.join("items.jsonl");
    std::fs::write(
        &file,
        concat!(
            r#"{"ctx": "ROMEO: I love", "endings": ["thee, my lord", "zzqx", "xqzj", "qqqqqqqqqq"], "label": 0}"#,
            "\n\n",
            r#"{"ctx": "First Citizen:", "endings": ["Speak, speak.", "xq"], "label": "1"}"#,
            "\n",
        ),
    )
    .unwrap();
    let items = read_choices(&file).unwrap();
    let score = score_choices(&model, &tokenizer, &items).unwrap();
    // Each ending's summed and mean loss by hand: the context and " " + ending as one sequence.
    let mut ws = Workspace::new();
    let mut right = [0usize; 2];
    for (item, prediction) in items.iter().zip(&score.predictions) {
        let ctx = tokenizer.encode(&item.ctx).unwrap();
        let losses: Vec<(f64, f64)> = item
            .endings
            .iter()
            .map(|ending| {
                let ending = tokenizer.encode(&format!(" {ending}")).unwrap();
                let ids: Vec<u32> = ctx.iter().chain(&ending).copied().collect();
                let targets: Vec<i32> = (1..=ids.len())
                    .map(|i| {
                        if i >= ctx.len() && i < ids.len() {
                            ids[i] as i32
                        } else {
                            IGNORE_INDEX
                        }
                    })
                    .collect();
                let mean = model
                    .forward(&mut ws, &ids, 1, ids.len(), Some(&targets), None)
                    .unwrap()
                    .unwrap() as f64;
                (mean * ending.len() as f64, mean)
            })
            .collect();
        let argmin = |f: fn(&(f64, f64)) -> f64| {
            (0..losses.len())
                .min_by(|&a, &b| f(&losses[a]).total_cmp(&f(&losses[b])))
                .unwrap()
        };
        assert_eq!(
            (prediction.pred, prediction.pred_norm),
            (argmin(|l| l.0), argmin(|l| l.1))
        );
        assert_eq!(prediction.label, item.label);
        right[0] += (prediction.pred == item.label) as usize;
        right[1] += (prediction.pred_norm == item.label) as usize;
    }
    assert_eq!(score.items, 2);
    assert_eq!(
        (score.acc, score.acc_norm),
        (right[0] as f64 / 2.0, right[1] as f64 / 2.0)
    );
    // The Shakespeare model prefers English to "zzqx" by its mean loss.
    assert_eq!(score.predictions[0].pred_norm, 0);

    let out = run_gpt2(&[
        "eval",
        "choice",
        "--model",
        fixture("shakespeare_char").to_str().unwrap(),
        "--file",
        file.to_str().unwrap(),
        "--json",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json, serde_json::to_value(&score).unwrap());
}

#[test]
fn bad_input_is_a_clear_error() {
    let dir = temp_dir("eval-bad");
    let model = fixture("shakespeare_char");
    let model = model.to_str().unwrap();
    let write = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path.to_str().unwrap().to_string()
    };
    let fails = |args: &[&str], says: &[&str]| {
        let out = run_gpt2(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(says.iter().all(|s| err.contains(s)), "{args:?}: {err}");
    };
    let empty = write("empty.jsonl", "\n\n");
    fails(
        &["eval", "choice", "--model", model, "--file", &empty],
        &["empty.jsonl", "no items"],
    );
    let label = write(
        "label.jsonl",
        "{\"ctx\": \"a\", \"endings\": [\"b\", \"c\"], \"label\": 2}\n",
    );
    fails(
        &["eval", "choice", "--model", model, "--file", &label],
        &["label.jsonl: line 1", "label 2 is out of range", "2 endings"],
    );
    let long = write(
        "long.jsonl",
        &format!(
            "{{\"ctx\": \"{}\", \"endings\": [\"b\", \"c\"], \"label\": 0}}\n",
            "a".repeat(70)
        ),
    );
    fails(
        &["eval", "choice", "--model", model, "--file", &long],
        &["item 1", "more than the model's context of 64"],
    );

    let prompts = write("prompts.txt", &format!("ROMEO:\n{}\n", "a".repeat(64)));
    fails(
        &["eval", "prompts", "--model", model, "--file", &prompts],
        &[
            "prompt 2",
            "is 64 tokens: it must be at least one and shorter than the model's context of 64",
        ],
    );
    fails(
        &[
            "eval",
            "prompts",
            "--model",
            model,
            "--file",
            &prompts,
            "--strategies",
            "greedy,beam=4",
        ],
        &["--strategies", "beam=4", "unknown setting"],
    );

    let missing = write(
        "missing.json",
        r#"[{"instruction": "Say hi.", "output": "hi"}, {"instruction": "Say no."}]"#,
    );
    fails(
        &["eval", "exact", "--model", model, "--file", &missing],
        &["missing.json: record 2", "\"output\" is missing"],
    );
    let fine = write("fine.json", r#"[{"instruction": "Say hi.", "output": "hi"}]"#);
    // A char-level vocabulary has no <|endoftext|> to end a response.
    fails(
        &["eval", "exact", "--model", model, "--file", &fine],
        &["record 1", "<|endoftext|>"],
    );
}

#[test]
fn exact_match_and_prompts_report_what_they_generated() {
    let dir = temp_dir("eval-exact");
    // A small random model with GPT-2's vocabulary and tokenizer (it has <|endoftext|>).
    let tokenizer = Tokenizer::gpt2();
    let model = Gpt::new(gpt2::Config::new(tokenizer.vocab_size(), 128, 16, 1, 2), 3).unwrap();
    gpt2::io::hf::save_hf_dir(&model, &dir.join("model")).unwrap();
    tokenizer.save(&dir.join("model")).unwrap();
    let model_dir = dir.join("model");
    let file = dir.join("test.jsonl");
    std::fs::write(
        &file,
        "{\"instruction\": \"Reverse the word.\", \"input\": \"cat\", \"output\": \"tac\"}\n{\"instruction\": \"Say hi.\", \"input\": \"\", \"output\": \"hi\"}\n",
    )
    .unwrap();
    let (model_dir, file) = (model_dir.display(), file.display());
    let out = succeeds(&format!(
        "eval exact --model {model_dir} --file {file} --max-new-tokens 5 --json"
    ));
    let json: serde_json::Value = serde_json::from_slice(&out).unwrap();
    let records = gpt2::data::instructions::read_instructions(dir.join("test.jsonl").as_path()).unwrap();
    let expected = gpt2::eval::exact::exact_match(&model, &tokenizer, &records, 5).unwrap();
    assert_eq!(json, serde_json::to_value(&expected).unwrap());
    assert_eq!(json["items"], 2);
    let response = &json["responses"][0];
    assert_eq!(response["expected"], "tac");

    let prompts = dir.join("prompts.txt");
    std::fs::write(&prompts, "Hello, I am\nThe sky is\n").unwrap();
    let line = format!(
        "eval prompts --model {model_dir} --file {} --max-new-tokens 6 --seed 7 --json",
        prompts.display()
    );
    let out = succeeds(&line);
    let json: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(json["continuations"].as_array().unwrap().len(), 6);
    assert_eq!(json["summary"].as_array().unwrap().len(), 3);
    for c in json["continuations"].as_array().unwrap() {
        assert!(c["tokens"].as_f64().unwrap() <= 6.0, "{c}");
        assert!(c["mean_loss"].as_f64().unwrap() > 0.0);
    }
    // The same seed gives the same report.
    assert_eq!(out, succeeds(&line));
}

#[test]
fn instruction_tuning_learns_the_responses_that_exact_and_generate_then_give() {
    let dir = temp_dir("eval-instruct");
    let words = [
        "apple", "river", "stone", "cloud", "green", "house", "light", "table", "water", "night",
    ];
    let records: Vec<String> = words
        .iter()
        .map(|w| format!(r#"{{"instruction": "Is this a word?", "input": "{w}", "output": "yes"}}"#))
        .collect();
    let data = dir.join("set.jsonl");
    std::fs::write(&data, records.join("\n")).unwrap();
    // A byte-level BPE of 300 ids (it has <|endoftext|>), learned on the template's words.
    let prompt = gpt2::data::instructions::prompt("Is this a word?", "apple");
    Tokenizer::train_bpe(&prompt.repeat(20), 300)
        .unwrap()
        .save(&dir)
        .unwrap();
    let (data, run) = (data.display(), dir.join("run"));
    let (tokenizer, run) = (format!("bpe:{}", dir.join("tokenizer.json").display()), run.display());
    let log = succeeds(&format!(
        "train --data {data} --tokenizer {tokenizer} --out-dir {run} --n-layer 1 --n-head 2 --n-embd 16 \
         --block-size 128 --batch-size 4 --lr 1e-2 --warmup-iters 5 --eval-interval 20 --eval-iters 1 \
         --val-fraction 0.2 --sample-tokens 4 --threads 2 --max-iters 40"
    ));
    let log = String::from_utf8_lossy(&log);
    assert!(log.contains("train 8 / val 2"), "{log}");
    // Resumed, the run finds the same records.
    succeeds(&format!("train --resume {run} --max-iters 60 --threads 2"));
    // Each step counts its 4 records' tokens, not their padding, and the count goes on
    // through the resume.
    let examples = {
        let records = gpt2::data::instructions::read_instructions(dir.join("set.jsonl").as_path()).unwrap();
        let tokenizer = Tokenizer::load_file(&dir.join("tokenizer.json")).unwrap();
        gpt2::data::instructions::encode_examples(&records, &tokenizer, 128, &dir).unwrap()
    };
    let lengths: Vec<u64> = examples.iter().map(|e| e.tokens.len() as u64 - 1).collect();
    let (shortest, longest) = (*lengths.iter().min().unwrap(), *lengths.iter().max().unwrap());
    assert!(shortest < longest, "{lengths:?}");
    let metrics = std::fs::read_to_string(dir.join("run/metrics.jsonl")).unwrap();
    let steps: Vec<serde_json::Value> = metrics
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|r| r.get("grad_norm").is_some())
        .collect();
    assert_eq!(steps.len(), 60);
    for (step, next) in steps.iter().zip(&steps[1..]) {
        let tokens = next["tokens"].as_u64().unwrap() - step["tokens"].as_u64().unwrap();
        assert!((4 * shortest..=4 * longest).contains(&tokens), "{step} {next}");
        let rate = tokens as f64 / step["step_s"].as_f64().unwrap();
        assert!(
            (rate / step["tokens_per_s"].as_f64().unwrap() - 1.0).abs() < 1e-9,
            "{step}"
        );
    }
    let out = succeeds(&format!("eval exact --model {run} --file {data} --json"));
    let json: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(
        (json["items"].as_u64(), json["correct"].as_u64()),
        (Some(10), Some(10)),
        "{json}"
    );
    // generate --instruction: the same template, and the response ends at <|endoftext|>.
    let out = run_gpt2(&[
        "generate",
        "--model",
        &run.to_string(),
        "--instruction",
        "Is this a word?",
        "--input",
        "apple",
        "--greedy",
        "--json",
    ]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (&json["samples"][0]["text"], &json["samples"][0]["finish"]),
        (&"yes".into(), &"stop_token".into())
    );

    // --val-data: another file validates, all of --data trains; a text corpus takes none.
    let val = dir.join("val.jsonl");
    std::fs::write(&val, records[..3].join("\n")).unwrap();
    let log = succeeds(&format!(
        "train --data {data} --val-data {} --tokenizer {tokenizer} --out-dir {} --n-layer 1 --n-head 2 \
         --n-embd 16 --block-size 128 --batch-size 4 --max-iters 1 --eval-iters 1 --sample-tokens 1",
        val.display(),
        dir.join("run-val").display()
    ));
    assert!(String::from_utf8_lossy(&log).contains("train 10 / val 3"));
    let out = run_line(&format!("train --data {SHAKESPEARE} --val-data {}", val.display()));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--val-data") && err.contains("is for instruction data"),
        "{err}"
    );

    // The records must fit the block, and a char-level vocabulary cannot end a response.
    let out = run_line(&format!("train --data {data} --tokenizer {tokenizer} --block-size 32"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("set.jsonl: record 1 is") && err.contains("--block-size"),
        "{err}"
    );
    let char_run = dir.join("char");
    let out = run_line(&format!("train --data {data} --out-dir {}", char_run.display()));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("<|endoftext|>") && !char_run.exists(), "{err}");
}

/// tests/fixtures/eval_reference.json (scripts/make_eval_fixtures.py): Hugging Face's
/// perplexity-guide loop and hellaswag.py's scoring, run by PyTorch on the same model.
#[test]
fn perplexity_and_choice_match_the_pytorch_references() {
    let reference: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("eval_reference.json")).unwrap()).unwrap();
    let (model, tokenizer) = trained();
    let text: String = std::fs::read_to_string(SHAKESPEARE)
        .unwrap()
        .chars()
        .take(1000)
        .collect();
    let ids = tokenizer.encode(&text).unwrap();
    assert_eq!(ids.len() as u64, reference["tokens"].as_u64().unwrap());
    for (stride, expected) in reference["perplexity"].as_object().unwrap() {
        let score = perplexity(&model, &ids, stride.parse().unwrap()).unwrap();
        assert_eq!(
            score.predictions as u64,
            expected["predictions"].as_u64().unwrap(),
            "stride {stride}"
        );
        let loss = expected["loss"].as_f64().unwrap();
        assert!(
            (score.loss - loss).abs() < 1e-5,
            "stride {stride}: {} vs {loss}",
            score.loss
        );
    }

    let dir = temp_dir("eval-choice-ref");
    let file = dir.join("items.jsonl");
    let lines: Vec<String> = reference["choice_items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i.to_string())
        .collect();
    std::fs::write(&file, lines.join("\n")).unwrap();
    let items = read_choices(&file).unwrap();
    let mut ws = Workspace::new();
    for (item, expected) in items.iter().zip(reference["choice"].as_array().unwrap()) {
        let losses = gpt2::eval::choice::ending_losses(&model, &tokenizer, item, &mut ws).unwrap();
        for (e, (sum, mean)) in losses.iter().enumerate() {
            let (want_sum, want_mean) = (
                expected["sums"][e].as_f64().unwrap(),
                expected["means"][e].as_f64().unwrap(),
            );
            assert!(
                (sum - want_sum).abs() < 1e-4 && (mean - want_mean).abs() < 1e-5,
                "{item:?} ending {e}"
            );
        }
    }
    let score = score_choices(&model, &tokenizer, &items).unwrap();
    for (prediction, expected) in score.predictions.iter().zip(reference["choice"].as_array().unwrap()) {
        assert_eq!(prediction.pred as u64, expected["pred"].as_u64().unwrap());
        assert_eq!(prediction.pred_norm as u64, expected["pred_norm"].as_u64().unwrap());
    }
}

/// --adapter and --dtype reach eval: perplexity with the PEFT fixture adapter merged (bf16
/// weights) is what score prints with the same flags, and not the base model's.
#[test]
fn eval_takes_the_adapter_and_dtype_that_score_takes() {
    let model = CharModel::tiny("eval-adapter");
    let dir = temp_dir("eval-adapter");
    let (path, _) = shakespeare(&dir, 300);
    let base = format!("--model {} --text {} --json --dtype bf16", model.path(), path.display());
    let adapted = format!("{base} --adapter {}", fixture("tiny_lora").display());
    let eval = succeeds(&format!("eval perplexity {adapted}"));
    assert_eq!(eval, succeeds(&format!("score {adapted}")));
    assert_ne!(
        eval,
        succeeds(&format!("eval perplexity {base}")),
        "the adapter changes the loss"
    );
}
