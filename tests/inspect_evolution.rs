//! Training evolution end to end: the parameter statistics a tiny run logs (and a resumed run
//! rewrites exactly), the model it saves before training, and `gpt2 inspect --evolution` on
//! char-level runs and on OpenAI GPT-2 weights, with its bad inputs.

use gpt2::io::load_model;
use gpt2::model::param_specs;
use gpt2::train::{Overrides, RunOptions, TrainConfig, Trainer};
use std::path::Path;
use std::process::Output;

mod common;
use common::{gpt2, temp_dir};

/// A tiny char-level run on a small corpus: 2 layers, width 16, context 16, 12 steps,
/// evaluations at steps 0, 5, 10 and 12.
fn tiny(dir: &Path, corpus: &str) -> TrainConfig {
    let path = dir.join("corpus.txt");
    std::fs::write(&path, corpus.repeat(40)).unwrap();
    TrainConfig {
        data: vec![path],
        cache_dir: Some(dir.join("cache")),
        out_dir: Some(dir.join("run")),
        n_layer: Some(2),
        n_head: Some(2),
        n_embd: Some(16),
        block_size: Some(16),
        batch_size: 4,
        max_iters: 12,
        warmup_iters: 2,
        lr: 3e-3,
        eval_interval: 5,
        eval_iters: 2,
        sample_tokens: 4,
        ..TrainConfig::default()
    }
}

const CORPUS: &str = "the cat sat on the mat.\nA dog ran in the fog!\nwe see the sea, you see?\n";

fn train(config: TrainConfig, stop_at: Option<usize>) {
    let options = RunOptions {
        stop_at,
        interrupt: None,
    };
    Trainer::new(config).unwrap().run(&options, &mut |_| {}).unwrap();
}

fn param_stats(run: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run.join("param_stats.jsonl"))
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

fn inspect(args: &[&str]) -> Output {
    gpt2()
        .args(["--threads", "1", "inspect", "--evolution"])
        .args(args)
        .output()
        .unwrap()
}

fn text(output: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn a_run_logs_statistics_of_every_tensor_at_each_evaluation_and_saves_its_initial_model() {
    let dir = temp_dir("log");
    let config = tiny(&dir, CORPUS);
    train(config, None);
    let run = dir.join("run");
    let records = param_stats(&run);
    assert_eq!(
        records.iter().map(|r| r["step"].as_u64().unwrap()).collect::<Vec<_>>(),
        [0, 5, 10, 12],
        "one line per evaluation"
    );
    let init = load_model(&run.join("init")).unwrap();
    let names: Vec<String> = param_specs(&init.config).into_iter().map(|s| s.name).collect();
    for record in &records {
        let tensors = record["tensors"].as_array().unwrap();
        assert_eq!(
            tensors.iter().map(|t| t["name"].as_str().unwrap()).collect::<Vec<_>>(),
            names
        );
        let first = record["step"] == 0;
        for t in tensors {
            for key in ["norm", "mean", "std"] {
                assert!(t["param"][key].as_f64().unwrap().is_finite(), "{t}");
                if first {
                    assert!(t["update"].is_null() && t["update_ratio"].is_null(), "{t}");
                } else {
                    assert!(t["update"][key].as_f64().unwrap().is_finite(), "{t}");
                }
            }
            if !first {
                let ratio = t["update_ratio"].as_f64().unwrap();
                assert!(ratio > 0.0 && ratio < 1.0, "{t}");
            }
        }
    }
    // init/ holds the model before training, with its tokenizer; training moved it.
    assert!(run.join("init/tokenizer.json").is_file());
    let latest = load_model(&run).unwrap();
    assert!(init.params != latest.params);
    let wte_norm = |record: &serde_json::Value| record["tensors"][0]["param"]["norm"].as_f64().unwrap();
    let norm = init
        .weights()
        .wte
        .iter()
        .map(|&x| x as f64 * x as f64)
        .sum::<f64>()
        .sqrt();
    assert!((wte_norm(&records[0]) - norm).abs() < 1e-5 * norm);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_resumed_run_rewrites_the_lines_after_its_checkpoint_exactly() {
    let dir = temp_dir("resume");
    let straight = tiny(&dir, CORPUS);
    train(straight.clone(), None);
    let crashed = dir.join("crashed");
    train(
        TrainConfig {
            out_dir: Some(crashed.clone()),
            ..straight
        },
        Some(5),
    );
    // As if the run had gone on past its step-5 checkpoint, logging up to step 12, and crashed
    // in the middle of a line.
    let mut log = std::fs::read_to_string(dir.join("run/param_stats.jsonl")).unwrap();
    assert_eq!(log.lines().count(), 4);
    log.push_str("{\"step\":13,\"tens");
    std::fs::write(crashed.join("param_stats.jsonl"), log).unwrap();
    let init = std::fs::read(crashed.join("init/model.safetensors")).unwrap();
    let mut resumed = Trainer::resume(&crashed, &Overrides::new()).unwrap();
    let kept = std::fs::read_to_string(crashed.join("param_stats.jsonl")).unwrap();
    assert_eq!(
        kept.lines().count(),
        1,
        "the lines of steps 5 and after, and the torn line, are dropped on resuming"
    );
    resumed.run(&RunOptions::default(), &mut |_| {}).unwrap();
    assert_eq!(
        std::fs::read_to_string(crashed.join("param_stats.jsonl")).unwrap(),
        std::fs::read_to_string(dir.join("run/param_stats.jsonl")).unwrap(),
        "the resumed run logs what the straight run logged"
    );
    assert!(
        std::fs::read(crashed.join("init/model.safetensors")).unwrap() == init,
        "resuming leaves init/ as it was"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_evolution_command_draws_charts_and_prints_the_embedding_change_and_neighbours() {
    let dir = temp_dir("cli");
    train(tiny(&dir, CORPUS), None);
    let run = dir.join("run");
    let run_arg = run.to_str().unwrap();

    let output = inspect(&["--run", run_arg]);
    let (stdout, stderr) = text(&output);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    for expected in [
        "4 evaluations, steps 0 to 12",
        "h.1.mlp.c_fc.weight",
        "token embedding: ",
        "most changed: ",
        "nearest neighbours (cosine similarity):",
        "\"e\"",
        "\"\\n\"",
        "after: ",
    ] {
        assert!(stdout.contains(expected), "missing {expected:?} in\n{stdout}");
    }
    for chart in ["evolution.png", "embedding_change.png"] {
        let png = std::fs::read(run.join(chart)).unwrap();
        assert!(png.len() > 1000 && png.starts_with(b"\x89PNG\r\n\x1a\n"), "{chart}");
        assert!(stdout.contains(&format!("chart: {}", run.join(chart).display())));
    }

    let out = dir.join("charts");
    let output = inspect(&[
        "--run",
        run_arg,
        "--svg",
        "--json",
        "--out",
        out.to_str().unwrap(),
        "--tokens",
        "a,\\n, ,\\,",
    ]);
    let (stdout, stderr) = text(&output);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    let svg = std::fs::read_to_string(out.join("evolution.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("update:data ratio") && svg.contains("mlp.c_fc.weight"));
    assert!(std::fs::read_to_string(out.join("embedding_change.svg"))
        .unwrap()
        .contains("<svg"));
    let json: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(json["stats"]["evaluations"], 4);
    let tensors = json["stats"]["tensors"].as_array().unwrap();
    assert_eq!(tensors.len(), 2 + 2 * 12 + 2);
    assert!(tensors[0]["update_ratio"].as_f64().unwrap() > 0.0 && tensors[0]["first"]["norm"].is_number());
    let embedding = &json["embedding"];
    let mean = embedding["mean_cosine"].as_f64().unwrap();
    assert!(mean > -1.0 && mean < 1.0, "training changed the rows: {embedding}");
    assert_eq!(embedding["rows"], 24);
    assert!(embedding["quantiles"].as_array().unwrap().len() == 6 && embedding["most_changed"][0]["token"].is_string());
    let neighbours = json["neighbours"].as_array().unwrap();
    assert_eq!(
        neighbours
            .iter()
            .map(|n| n["token"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["a", "\n", " ", ","]
    );
    for n in neighbours {
        for side in ["before", "after"] {
            let near = n[side].as_array().unwrap();
            assert_eq!(near.len(), 5);
            assert!(
                near.iter().all(|m| m["token"] != n["token"]),
                "a token is not its own neighbour"
            );
            let cosines: Vec<f64> = near.iter().map(|m| m["cosine"].as_f64().unwrap()).collect();
            assert!(cosines.windows(2).all(|w| w[0] >= w[1]), "nearest first: {cosines:?}");
        }
    }
    assert_eq!(json["charts"].as_array().unwrap().len(), 2);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_run_fine_tuned_from_openai_weights_and_two_models_without_a_run() {
    let dir = temp_dir("openai");
    let openai = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny_openai");
    // The fixture's BPE has no newline.
    let config = TrainConfig {
        init: Some(openai.clone()),
        prompt: "the".into(),
        n_layer: None,
        n_head: None,
        n_embd: None,
        ..tiny(&dir, "the cat sat on the mat. a dog ran in the fog! ")
    };
    train(config, None);
    let run = dir.join("run");
    assert!(load_model(&run.join("init")).unwrap().params == load_model(&openai).unwrap().params);
    let output = inspect(&["--run", run.to_str().unwrap(), "--json", "--tokens", "a, ,e"]);
    let (stdout, stderr) = text(&output);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    let json: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(json["embedding"]["rows"], 96);
    assert_eq!(json["neighbours"][1]["token"], " ");
    assert_eq!(json["neighbours"][2]["before"].as_array().unwrap().len(), 5);

    // Two models and no run: the embedding change alone, here of the same weights in two formats.
    let out = dir.join("out");
    let output = inspect(&[
        "--from",
        openai.to_str().unwrap(),
        "--to",
        run.join("init").to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    let (stdout, stderr) = text(&output);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("mean 1.000, min 1.000, max 1.000") && !stdout.contains("evaluations"),
        "{stdout}"
    );
    assert!(out.join("embedding_change.png").is_file() && !out.join("evolution.png").exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_input_is_a_clear_error_with_exit_code_1() {
    let dir = temp_dir("bad");
    train(
        TrainConfig {
            max_iters: 2,
            ..tiny(&dir, CORPUS)
        },
        None,
    );
    let run = dir.join("run");
    let run_arg = run.to_str().unwrap();
    std::fs::write(dir.join("file"), "a regular file").unwrap();
    let (missing, cache, under_a_file) = (dir.join("missing"), dir.join("cache"), dir.join("file/charts"));
    let cases: [(Vec<&str>, String); 6] = [
        (
            vec!["--run", missing.to_str().unwrap()],
            format!("{}: no such run directory", missing.display()),
        ),
        (
            vec!["--run", cache.to_str().unwrap()],
            "no param_stats.jsonl: not a training run".into(),
        ),
        (
            vec!["--run", run_arg, "--out", under_a_file.to_str().unwrap()],
            format!("{}: cannot create the output directory", under_a_file.display()),
        ),
        (
            vec!["--run", run_arg, "--tokens", "e,%"],
            "the token \"%\": tokenizer: unknown character '%'".into(),
        ),
        (
            vec!["--run", run_arg, "--tokens", "the"],
            "\"the\" is not one token of this vocabulary but 3".into(),
        ),
        (
            vec!["--from", run_arg],
            "needs --run DIR, or two models to compare with --from and --to".into(),
        ),
    ];
    for (args, expected) in cases {
        let output = inspect(&args);
        let (stdout, stderr) = text(&output);
        assert_eq!(output.status.code(), Some(1), "{args:?}: {stdout}\n{stderr}");
        assert!(
            stderr.starts_with("error: ") && stderr.contains(&expected) && !stderr.contains("panicked"),
            "{args:?}: expected {expected:?} in\n{stderr}"
        );
    }
    assert!(
        !under_a_file.exists() && !run.join("evolution.png").exists(),
        "nothing written"
    );
    // A run without the model from before training (as runs from before init/ was saved).
    std::fs::remove_dir_all(run.join("init")).unwrap();
    let output = inspect(&["--run", run_arg]);
    let (_, stderr) = text(&output);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr.contains("the run has no init/") && stderr.contains("--from"),
        "{stderr}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
