//! LoRA training end to end on a tiny model: the base frozen, checkpoints that hold only the
//! adapter (in PEFT's files; with the trained token embedding if asked), exact resume, kept
//! step checkpoints, and bad settings.

use gpt2::io::load_model;
use gpt2::io::peft::load_adapter;
use gpt2::train::{Overrides, RunOptions, Summary, TrainConfig, Trainer};
use std::path::Path;

mod common;
use common::{run_gpt2, temp_dir};

/// A tiny base model trained briefly on a small corpus, in `dir/base`; returns a LoRA run's
/// settings on it (rank 2 on every target, adapter dropout on), writing into `dir/run`.
fn lora_run(dir: &Path) -> TrainConfig {
    let text: String = (0..60)
        .map(|i| ["the cat sat.\n", "a dog ran!\n", "we see it?\n"][i % 3])
        .collect();
    std::fs::write(dir.join("corpus.txt"), text).unwrap();
    let base = TrainConfig {
        data: vec![dir.join("corpus.txt")],
        cache_dir: Some(dir.join("cache")),
        out_dir: Some(dir.join("base")),
        n_layer: Some(2),
        n_head: Some(2),
        n_embd: Some(16),
        block_size: Some(16),
        batch_size: 4,
        max_iters: 3,
        eval_interval: 3,
        eval_iters: 1,
        sample_tokens: 4,
        ..TrainConfig::default()
    };
    train(base.clone(), None);
    TrainConfig {
        init: Some(dir.join("base")),
        n_layer: None,
        n_head: None,
        n_embd: None,
        out_dir: Some(dir.join("run")),
        lora_r: Some(2),
        lora_alpha: Some(4.0),
        lora_dropout: 0.1,
        lora_targets: Some("c_attn,attn.c_proj,c_fc,mlp.c_proj".into()),
        grad_accum: 2,
        max_iters: 12,
        eval_interval: 5,
        lr: 1e-2,
        ..base
    }
}

fn train(config: TrainConfig, stop_at: Option<usize>) -> Summary {
    let options = RunOptions {
        stop_at,
        interrupt: None,
    };
    Trainer::new(config).unwrap().run(&options, &mut |_| {}).unwrap()
}

fn read(path: impl AsRef<Path>) -> Vec<u8> {
    std::fs::read(path.as_ref()).unwrap_or_else(|e| panic!("{}: {e}", path.as_ref().display()))
}

#[test]
fn a_lora_run_trains_the_adapter_alone_and_resumes_bit_for_bit() {
    assert_trains_the_adapter_alone_and_resumes("lora-resume", false);
}

#[test]
fn a_lora_run_with_the_embedding_trains_it_too_and_resumes_bit_for_bit() {
    assert_trains_the_adapter_alone_and_resumes("lora-wte-resume", true);
}

/// A LoRA run (training the token embedding too if `train_wte`) changes the adapter alone,
/// checkpoints it with its moments only, and resumes bit for bit.
fn assert_trains_the_adapter_alone_and_resumes(tag: &str, train_wte: bool) {
    let dir = temp_dir(tag);
    let config = TrainConfig {
        lora_train_wte: train_wte,
        ..lora_run(&dir)
    };
    let base = load_model(&dir.join("base")).unwrap();
    let trainer = Trainer::new(config.clone()).unwrap();
    let pairs = 2 * (2 * 16 + 48 * 2 + 2 * 16 + 16 * 2 + 2 * 16 + 64 * 2 + 2 * 64 + 16 * 2);
    let adapter_len = pairs + if train_wte { base.config.vocab_size * 16 } else { 0 };
    assert_eq!(trainer.info().trainable, adapter_len);
    drop(trainer);
    std::fs::remove_dir_all(dir.join("run")).unwrap();
    train(config.clone(), None);

    // The checkpoint holds the adapter and its moments, not the base.
    let latest = dir.join("run/latest");
    assert!(!latest.join("model.safetensors").exists() && latest.join("adapter_model.safetensors").is_file());
    let adapter = load_adapter(&latest, &base.config).unwrap();
    assert!(adapter.params.iter().any(|&x| x != 0.0), "the adapter learned");
    assert_eq!(adapter.config.train_wte, train_wte);
    if let Some(wte) = adapter.wte(&base.config) {
        assert!(wte != base.weights().wte, "the embedding learned");
    }
    let moments = std::fs::metadata(latest.join("optimizer.safetensors")).unwrap().len() as usize;
    assert!(
        moments < 2 * 4 * adapter_len + 1024,
        "moments for the adapter only: {moments} bytes"
    );
    // The base is untouched.
    assert!(load_model(&dir.join("base")).unwrap().params == base.params);

    let stopped = TrainConfig {
        out_dir: Some(dir.join("stopped")),
        ..config
    };
    train(stopped, Some(7));
    let resumed = Trainer::resume(&dir.join("stopped"), &Overrides::new())
        .unwrap()
        .run(&RunOptions::default(), &mut |_| {})
        .unwrap();
    assert_eq!(resumed.step, 12);
    for file in [
        "adapter_model.safetensors",
        "optimizer.safetensors",
        "adapter_config.json",
    ] {
        assert!(
            read(latest.join(file)) == read(dir.join("stopped/latest").join(file)),
            "{file} differs"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_lora_run_given_as_the_model_is_its_base_with_the_adapter() {
    let dir = temp_dir("lora-as-model");
    train(
        TrainConfig {
            max_iters: 4,
            ..lora_run(&dir)
        },
        None,
    );
    let generate = |model: &[&str]| {
        let prompt = [
            "--prompt-ids",
            "1 2",
            "--greedy",
            "--max-new-tokens",
            "4",
            "--threads",
            "1",
        ];
        let output = run_gpt2(&[&["generate"][..], model, &prompt].concat());
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        output.stdout
    };
    let (run, latest, base) = (dir.join("run"), dir.join("run/latest"), dir.join("base"));
    let merged = generate(&["--model", base.to_str().unwrap(), "--adapter", latest.to_str().unwrap()]);
    assert_eq!(generate(&["--model", run.to_str().unwrap()]), merged);
    assert_eq!(generate(&["--model", latest.to_str().unwrap()]), merged);
    let summary = run_gpt2(&["inspect", "--summary", "--model", run.to_str().unwrap(), "--json"]);
    assert!(summary.status.success(), "{}", String::from_utf8_lossy(&summary.stderr));
    // inspect --evolution: the model before is the base; the adapter's B left zero and moved,
    // and the token embedding, frozen, did not.
    let evolution = run_gpt2(&["inspect", "--evolution", run.to_str().unwrap(), "--json"]);
    assert!(
        evolution.status.success(),
        "{}",
        String::from_utf8_lossy(&evolution.stderr)
    );
    let evolution: serde_json::Value = serde_json::from_slice(&evolution.stdout).unwrap();
    assert_eq!(evolution["from"], base.to_str().unwrap());
    assert!(
        evolution["embedding"]["min_cosine"].as_f64().unwrap() > 0.99999,
        "{evolution}"
    );
    let b = evolution["stats"]["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "base_model.model.transformer.h.0.attn.c_attn.lora_B.weight")
        .unwrap();
    assert!(
        b["first"]["norm"] == 0.0 && b["last"]["norm"].as_f64().unwrap() > 0.0,
        "{b}"
    );
    let twice = [
        "generate",
        "--model",
        run.to_str().unwrap(),
        "--adapter",
        latest.to_str().unwrap(),
    ];
    let output = run_gpt2(&[&twice[..], &["--prompt-ids", "1"]].concat());
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success() && err.contains("brings its own adapter"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_changed_base_is_refused_on_resume() {
    let dir = temp_dir("lora-base");
    let config = TrainConfig {
        max_iters: 5,
        ..lora_run(&dir)
    };
    train(config.clone(), None);
    // Train the base further: same shape, other weights.
    Trainer::resume(&dir.join("base"), &serde_json::from_str(r#"{"max_iters": 4}"#).unwrap())
        .unwrap()
        .run(&RunOptions::default(), &mut |_| {})
        .unwrap();
    let err = Trainer::resume(&dir.join("run"), &Overrides::new())
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("not the base model the LoRA run") && err.contains("weights changed"),
        "{err}"
    );
    // and as a model to run
    let output = run_gpt2(&[
        "generate",
        "--model",
        dir.join("run").to_str().unwrap(),
        "--prompt-ids",
        "1",
    ]);
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success() && err.contains("weights changed"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn keep_checkpoints_keeps_the_last_k_steps() {
    let dir = temp_dir("lora-keep");
    let config = TrainConfig {
        keep_checkpoints: 2,
        ..lora_run(&dir)
    };
    std::fs::create_dir_all(dir.join("run/step-000001")).unwrap(); // not a checkpoint: left alone
    train(config, None);
    let mut kept: Vec<String> = std::fs::read_dir(dir.join("run"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("step-"))
        .collect();
    kept.sort();
    assert_eq!(kept, ["step-000001", "step-000010", "step-000012"]);
    assert!(dir.join("run/step-000012/trainer.json").is_file());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_lora_settings_are_clear_errors() {
    let dir = temp_dir("lora-bad");
    let config = lora_run(&dir);
    let error = |config: TrainConfig| Trainer::new(config).err().unwrap().to_string();
    let err = error(TrainConfig {
        lora_r: Some(0),
        ..config.clone()
    });
    assert!(err.contains("rank r must be at least 1"), "{err}");
    let err = error(TrainConfig {
        lora_targets: Some("c_attn,k_proj".into()),
        ..config.clone()
    });
    assert!(
        err.contains("\"k_proj\"") && err.contains("c_attn, attn.c_proj, c_fc, mlp.c_proj"),
        "{err}"
    );
    let err = error(TrainConfig {
        init: None,
        ..config.clone()
    });
    assert!(err.contains("give it with --init"), "{err}");
    let err = error(TrainConfig {
        lora_r: None,
        ..config.clone()
    });
    assert!(err.contains("lora_alpha is for LoRA"), "{err}");
    let err = error(TrainConfig {
        lora_r: None,
        lora_alpha: None,
        lora_dropout: 0.0,
        lora_targets: None,
        lora_train_wte: true,
        ..config.clone()
    });
    assert!(err.contains("lora_train_wte is for LoRA"), "{err}");
    assert!(!dir.join("run").exists(), "nothing written");
    // A folder of the user's where init/ goes is not replaced.
    std::fs::create_dir_all(dir.join("run/init")).unwrap();
    std::fs::write(dir.join("run/init/notes.txt"), "mine").unwrap();
    let err = error(config);
    assert!(err.contains("not the init/ adapter of a training run"), "{err}");
    assert_eq!(std::fs::read_to_string(dir.join("run/init/notes.txt")).unwrap(), "mine");
    std::fs::remove_dir_all(&dir).unwrap();
}
