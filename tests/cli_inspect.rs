//! `gpt2 inspect` as a user runs it: the step-by-step trace (text and JSON), narrowing to a
//! layer and a head, the logit lens, attention heatmaps, the parameter summary, and errors on
//! bad input. Models: the tiny Hugging Face fixture (no tokenizer), a tiny model with GPT-2's
//! tokenizer, and a char-level model from `gpt2 train`.

use gpt2::io::{save_model, ExportFormat};
use gpt2::{Config, Gpt};
use serde_json::Value;
use std::process::Output;

mod common;
use common::{gpt2 as gpt2_bin, temp_dir};

const TINY: &str = "tests/fixtures/tiny";

fn gpt2(args: &[&str]) -> Output {
    gpt2_bin().args(["--threads", "1"]).args(args).output().unwrap()
}

/// Runs `gpt2 args`, expects success, returns stdout.
fn ok(args: &[&str]) -> String {
    let out = gpt2(args);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "gpt2 {args:?} failed:\n{stdout}\n{stderr}");
    stdout.into_owned()
}

/// Runs `gpt2 args`, expects a clean failure (exit 1, no panic), returns stderr.
fn fails(args: &[&str]) -> String {
    let out = gpt2(args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "gpt2 {args:?}: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
}

fn json(args: &[&str]) -> Value {
    serde_json::from_str(&ok(args)).unwrap()
}

#[test]
fn the_trace_tells_every_step_in_order() {
    let out = ok(&["inspect", "--model", TINY, "--prompt-ids", "1 5 9 33"]);
    let steps = [
        "1. Tokens",
        "2. Embeddings: token rows wte[id] of wte [96, 32] and position rows wpe[pos] of wpe [128, 32]",
        "3. Block 0",
        "ln_1(x)",
        "4 heads × [4, 8] each",
        "head  3",
        "attn = (P·v) · c_proj",
        "x + attn (residual)",
        "ln_2(x)",
        "gelu(ln_2 · c_fc)",
        "[4, 128]",
        "of the MLP hidden values have |gelu| < 0.01",
        "mlp = hidden · c_proj",
        "x + mlp (residual)",
        "4. Block 1",
        "5. Final LayerNorm",
        "6. Next token",
    ];
    let mut from = 0;
    for step in steps {
        let at = out[from..]
            .find(step)
            .unwrap_or_else(|| panic!("{step:?} missing or out of order in\n{out}"));
        from += at + step.len();
    }
}

#[test]
fn json_gives_the_same_as_data_and_layer_and_head_narrow_it() {
    let all = json(&[
        "inspect",
        "--model",
        TINY,
        "--prompt-ids",
        "1 5 9 33",
        "--json",
        "--top-k",
        "3",
    ]);
    assert_eq!(all["tokens"].as_array().unwrap().len(), 4);
    assert_eq!(all["blocks"].as_array().unwrap().len(), 2);
    let heads = all["blocks"][1]["heads"].as_array().unwrap();
    assert_eq!(heads.len(), 4);
    for head in heads {
        let weights: f64 = head["weights"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| w.as_f64().unwrap())
            .sum();
        assert!((weights - 1.0).abs() < 1e-5);
    }
    let next = all["next"].as_array().unwrap();
    assert_eq!(next.len(), 3);
    assert!(next[0]["prob"].as_f64().unwrap() >= next[1]["prob"].as_f64().unwrap());
    assert_eq!(all["embeddings"]["sum"]["shape"], serde_json::json!([4, 32]));

    let narrowed = json(&[
        "inspect",
        "--model",
        TINY,
        "--prompt-ids",
        "1 5 9 33",
        "--json",
        "--layer",
        "1",
        "--head",
        "2",
    ]);
    let blocks = narrowed["blocks"].as_array().unwrap();
    assert_eq!(blocks.len(), 1);
    assert_eq!(blocks[0]["layer"], 1);
    assert_eq!(blocks[0]["heads"].as_array().unwrap().len(), 1);
    // The narrowed trace shows the same numbers as the full one.
    assert_eq!(blocks[0]["heads"][0], all["blocks"][1]["heads"][2]);
    assert_eq!(narrowed["next"][0], all["next"][0]);
}

#[test]
fn the_logit_lens_has_a_row_per_depth_and_ends_at_the_prediction() {
    let out = json(&[
        "inspect",
        "--model",
        TINY,
        "--prompt-ids",
        "1 5 9 33",
        "--logit-lens",
        "--json",
    ]);
    let rows = out["logit_lens"]["rows"].as_array().unwrap();
    let names: Vec<&str> = rows.iter().map(|r| r["layer"].as_str().unwrap()).collect();
    assert_eq!(names, ["embeddings", "h.0", "h.1"]);
    assert!(rows.iter().all(|r| r["guesses"].as_array().unwrap().len() == 4));
    assert_eq!(rows[2]["guesses"][3]["id"], out["next"][0]["id"]);
    let table = ok(&["inspect", "--model", TINY, "--prompt-ids", "1 5 9 33", "--logit-lens"]);
    assert!(
        table.contains("Logit lens") && table.contains("embeddings") && table.contains("h.1"),
        "{table}"
    );
}

#[test]
fn attention_maps_are_written_per_layer_as_png_and_svg() {
    let dir = temp_dir("maps");
    let (png, svg) = (dir.join("png"), dir.join("svg"));
    let out = json(&[
        "inspect",
        "--model",
        TINY,
        "--prompt-ids",
        "1 5 9 33 2",
        "--attention-png",
        png.to_str().unwrap(),
        "--attention-svg",
        svg.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(out["attention_maps"].as_array().unwrap().len(), 4);
    for layer in ["layer_00", "layer_01"] {
        let bytes = std::fs::read(png.join(format!("{layer}.png"))).unwrap();
        assert!(bytes.starts_with(b"\x89PNG") && bytes.len() > 5000);
        let text = std::fs::read_to_string(svg.join(format!("{layer}.svg"))).unwrap();
        for expected in ["head 0", "head 3", "#33", "weight", "query"] {
            assert!(text.contains(expected), "{expected:?} missing in {layer}.svg");
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_summary_counts_every_tensor_and_gpt2_small_has_124m() {
    let gpt2_small = json(&["inspect", "--preset", "gpt2", "--summary", "--json"]);
    assert_eq!(gpt2_small["total_params"], 124_439_808);
    assert_eq!(gpt2_small["tensors"].as_array().unwrap().len(), 148);
    assert_eq!(gpt2_small["tensors"][0]["name"], "wte.weight");
    assert!(gpt2_small["train_flops_per_token"].as_u64().unwrap() > 3 * 247_000_000);

    let tiny = json(&["inspect", "--model", TINY, "--summary", "--json"]);
    let counted: u64 = tiny["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["count"].as_u64().unwrap())
        .sum();
    assert_eq!(tiny["total_params"].as_u64().unwrap(), counted);
    let text = ok(&["inspect", "--preset", "gpt2", "--summary"]);
    assert!(
        text.contains("total parameters: 124,439,808") && text.contains("h.11.mlp.c_proj.weight"),
        "{text}"
    );
}

#[test]
fn text_prompts_go_through_the_gpt2_tokenizer() {
    let dir = temp_dir("bpe");
    let model = Gpt::new(Config::new(50257, 32, 16, 2, 2), 1).unwrap();
    let path = dir.join("model");
    save_model(
        &model,
        Some(&gpt2::tokenizer::Tokenizer::gpt2()),
        ExportFormat::HuggingFace,
        &path,
    )
    .unwrap();
    let out = json(&[
        "inspect",
        "--model",
        path.to_str().unwrap(),
        "--prompt",
        "Hello world",
        "--json",
    ]);
    let tokens: Vec<(u64, &str)> = out["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["id"].as_u64().unwrap(), t["text"].as_str().unwrap()))
        .collect();
    assert_eq!(tokens, [(15496, "Hello"), (995, " world")]);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_char_level_model_from_gpt2_train_can_be_inspected() {
    let dir = temp_dir("char");
    let run = dir.join("run");
    ok(&[
        "train",
        "--cache-dir",
        dir.join("cache").to_str().unwrap(),
        "--out-dir",
        run.to_str().unwrap(),
        "--max-iters",
        "2",
        "--eval-iters",
        "1",
        "--sample-tokens",
        "5",
    ]);
    let out = json(&[
        "inspect",
        "--model",
        run.to_str().unwrap(),
        "--prompt",
        "ROMEO:\\n",
        "--logit-lens",
        "--json",
    ]);
    let texts: Vec<&str> = out["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["text"].as_str().unwrap())
        .collect();
    assert_eq!(texts, ["R", "O", "M", "E", "O", ":", "\n"]);
    assert_eq!(out["blocks"].as_array().unwrap().len(), 4);
    assert_eq!(out["logit_lens"]["rows"].as_array().unwrap().len(), 5);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_input_is_a_clear_error() {
    let long: Vec<String> = (0..129).map(|i| (i % 96).to_string()).collect();
    let cases: [(&[&str], &str); 6] = [
        (
            &["--prompt-ids", "1 2", "--layer", "2"],
            "layer 2 is out of range: this model has layers 0..1",
        ),
        (
            &["--prompt-ids", "1 2", "--head", "4"],
            "head 4 is out of range: this model has heads 0..3",
        ),
        (
            &["--prompt-ids", &long.join(" ")],
            "the prompt has 129 tokens, more than the model's context of 128",
        ),
        (&["--prompt-ids", "1 96"], "token id 96 is outside the vocabulary"),
        (&["--prompt", "hi"], "has no tokenizer"),
        (&[], "give a --prompt"),
    ];
    for (args, message) in cases {
        let stderr = fails(&[&["inspect", "--model", TINY], args].concat());
        assert!(stderr.contains(message), "{args:?}: expected {message:?} in {stderr}");
    }
    let blocker = temp_dir("unwritable").join("a-file");
    std::fs::write(&blocker, "not a directory").unwrap();
    let inside = blocker.join("maps");
    let stderr = fails(&[
        "inspect",
        "--model",
        TINY,
        "--prompt-ids",
        "1 2",
        "--attention-png",
        inside.to_str().unwrap(),
    ]);
    assert!(stderr.contains("cannot write the attention maps into"), "{stderr}");
    assert!(fails(&["inspect", "--model", "no/such/model", "--summary"]).contains("no/such/model"));
    std::fs::remove_dir_all(blocker.parent().unwrap()).unwrap();
}

#[test]
fn openai_and_llmc_weights_trace_the_same_as_hugging_face() {
    let trace = |model: &str| {
        json(&[
            "inspect",
            "--model",
            model,
            "--prompt-ids",
            "1 5 9 33",
            "--logit-lens",
            "--json",
        ])
    };
    let reference = trace(TINY);
    for model in ["tests/fixtures/tiny_openai", "tests/fixtures/tiny_llmc.bin"] {
        let other = trace(model);
        let ids = |v: &Value| {
            v["tokens"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t["id"].as_u64())
                .collect::<Vec<_>>()
        };
        assert_eq!(ids(&other), ids(&reference), "{model}");
        assert_eq!(other["next"][0]["id"], reference["next"][0]["id"], "{model}");
        let prob = |v: &Value| v["next"][0]["prob"].as_f64().unwrap();
        assert!((prob(&other) - prob(&reference)).abs() < 1e-5, "{model}");
        assert_eq!(other["logit_lens"]["rows"].as_array().unwrap().len(), 3, "{model}");
    }
}

#[test]
fn attention_maps_of_the_whole_context_are_drawn_and_too_large_ones_are_an_error() {
    let dir = temp_dir("long");
    let full: Vec<String> = (0..128).map(|i| (i % 96).to_string()).collect();
    let maps = dir.join("maps");
    let out = json(&[
        "inspect",
        "--model",
        TINY,
        "--prompt-ids",
        &full.join(" "),
        "--layer",
        "1",
        "--attention-png",
        maps.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(out["attention_maps"], serde_json::json!([maps.join("layer_01.png")]));
    assert!(std::fs::read(maps.join("layer_01.png"))
        .unwrap()
        .starts_with(b"\x89PNG"));

    // 32 heads of 1024 × 1024: far more pixels than a figure may have.
    let model = Gpt::new(Config::new(96, 1024, 64, 1, 32), 1).unwrap();
    let path = dir.join("many-heads");
    save_model(&model, None, ExportFormat::HuggingFace, &path).unwrap();
    let long: Vec<String> = (0..1024).map(|i| (i % 96).to_string()).collect();
    let stderr = fails(&[
        "inspect",
        "--model",
        path.to_str().unwrap(),
        "--prompt-ids",
        &long.join(" "),
        "--attention-png",
        maps.to_str().unwrap(),
    ]);
    assert!(stderr.contains("too large to draw"), "{stderr}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn flags_of_another_mode_are_refused() {
    for args in [
        &["inspect", "--model", TINY, "--summary", "--layer", "1"][..],
        &["inspect", "--model", TINY, "--prompt-ids", "1", "--run", "runs/x"],
        &["inspect", "--model", TINY, "--prompt-ids", "1", "--svg"],
    ] {
        let out = gpt2(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
    }
}
