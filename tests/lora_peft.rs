//! LoRA adapters in Hugging Face PEFT's format: an adapter PEFT wrote (scripts/make_lora_fixtures.py)
//! gives PEFT's logits, unmerged and merged, with or without a trained token embedding
//! (`modules_to_save`); ours round-trips with PEFT's names, shapes and configuration keys;
//! unsupported options and adapters for another base are clear errors; `gpt2 convert --adapter`
//! writes the merged model.

use gpt2::io::hf::load_hf_dir;
use gpt2::io::peft::{load_adapter, write_adapter_files, ADAPTER_CONFIG, ADAPTER_WEIGHTS};
use gpt2::model::Workspace;
use gpt2::Gpt;
use serde_json::Value;
use std::path::{Path, PathBuf};

mod common;
use common::{fixture, run_gpt2, temp_dir, tiny_model};

/// The input ids [B, T] of the fixture adapter `name` and PEFT's logits for them, flattened.
fn reference(name: &str) -> (Vec<u32>, usize, usize, Vec<f32>) {
    let path = fixture(&format!("{name}_reference.json"));
    let json: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let rows = json["input_ids"].as_array().unwrap();
    let (b, t) = (rows.len(), rows[0].as_array().unwrap().len());
    let ids = rows
        .iter()
        .flat_map(|r| r.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32))
        .collect();
    let logits = json["logits"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|seq| {
            seq.as_array()
                .unwrap()
                .iter()
                .flat_map(|row| row.as_array().unwrap().iter())
        })
        .map(|x| x.as_f64().unwrap() as f32)
        .collect();
    (ids, b, t, logits)
}

fn logits(model: &Gpt, ids: &[u32], b: usize, t: usize) -> Vec<f32> {
    let mut ws = Workspace::new();
    model.forward(&mut ws, ids, b, t, None, None).unwrap();
    ws.logits().to_vec()
}

/// Asserts logits equal PEFT's with the fixture adapter `name`, to the parity tests' tolerance.
fn assert_matches_peft(ours: &[f32], name: &str, what: &str) {
    let (_, _, _, expected) = reference(name);
    assert_eq!(ours.len(), expected.len());
    let err = ours
        .iter()
        .zip(&expected)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max);
    let scale = expected.iter().map(|x| x.abs()).fold(0.0, f32::max);
    assert!(err <= 1e-4 * scale.max(1.0), "{what}: logits max abs error {err}");
}

/// The fixture adapter `name` gives PEFT's logits, on the base and merged into it.
fn assert_gives_peft_logits(name: &str, targets: usize, train_wte: bool) {
    let (ids, b, t, _) = reference(name);
    let mut model = tiny_model();
    let adapter = load_adapter(&fixture(name), &model.config).unwrap();
    assert_eq!((adapter.config.r, adapter.config.alpha), (4, 8.0));
    assert_eq!(adapter.config.targets.len(), targets);
    assert_eq!(adapter.config.train_wte, train_wte);
    let mut merged = tiny_model();
    adapter.merge_into(&mut merged);
    model.adapter = Some(adapter);
    assert_matches_peft(&logits(&model, &ids, b, t), name, "unmerged");
    assert_matches_peft(&logits(&merged, &ids, b, t), name, "merged");
}

#[test]
fn a_peft_adapter_gives_peft_logits_unmerged_and_merged() {
    assert_gives_peft_logits("tiny_lora", 4, false);
}

/// PEFT's `modules_to_save = ["wte", "lm_head"]`, both copies equal: our tied embedding.
#[test]
fn a_peft_adapter_with_a_trained_embedding_gives_peft_logits() {
    assert_gives_peft_logits("tiny_lora_wte", 2, true);
}

/// The keys and tensors (names and shapes) of an adapter directory.
fn layout(dir: &Path) -> (Value, Vec<(String, Vec<usize>)>) {
    let config: Value = serde_json::from_str(&std::fs::read_to_string(dir.join(ADAPTER_CONFIG)).unwrap()).unwrap();
    let bytes = std::fs::read(dir.join(ADAPTER_WEIGHTS)).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: Vec<_> = file
        .tensors()
        .into_iter()
        .map(|(n, v)| (n, v.shape().to_vec()))
        .collect();
    tensors.sort();
    (config, tensors)
}

#[test]
fn our_adapter_files_round_trip_with_peft_names_shapes_and_keys() {
    for name in ["tiny_lora", "tiny_lora_wte"] {
        assert_round_trips(name);
    }
}

/// The fixture adapter `name`, written by us, reads back the same, with PEFT's layout.
fn assert_round_trips(name: &str) {
    let dir = temp_dir("peft-save");
    let model = tiny_model();
    let adapter = load_adapter(&fixture(name), &model.config).unwrap();
    write_adapter_files(&adapter, &model.config, Some("tests/fixtures/tiny"), &dir).unwrap();
    let again = load_adapter(&dir, &model.config).unwrap();
    assert!(again.params == adapter.params && again.config == adapter.config);

    let (ours, our_tensors) = layout(&dir);
    let (peft, peft_tensors) = layout(&fixture(name));
    assert_eq!(our_tensors, peft_tensors);
    let ours = ours.as_object().unwrap();
    for (key, value) in ours {
        assert!(peft.get(key).is_some(), "PEFT writes no key {key}");
        // Numbers may be written 8 or 8.0; target_modules is a set, in any order.
        if !matches!(key.as_str(), "lora_alpha" | "lora_dropout" | "target_modules") {
            assert_eq!(&peft[key], value, "{name}: {key}");
        }
    }
    let modules = |c: &Value| {
        let mut m: Vec<String> = serde_json::from_value(c["target_modules"].clone()).unwrap();
        m.sort();
        m
    };
    assert_eq!(modules(&Value::Object(ours.clone())), modules(&peft));
    assert_eq!(ours["lora_alpha"].as_f64(), peft["lora_alpha"].as_f64());
    let safetensors_bytes = std::fs::read(dir.join(ADAPTER_WEIGHTS)).unwrap();
    assert!(String::from_utf8_lossy(&safetensors_bytes[..200]).contains(r#""__metadata__":{"format":"pt"}"#));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn fractional_hyper_parameters_are_written_as_python_writes_them() {
    let dir = temp_dir("peft-decimals");
    let model = tiny_model();
    let mut adapter = load_adapter(&fixture("tiny_lora"), &model.config).unwrap();
    (adapter.config.dropout, adapter.config.alpha) = (0.1, 2.5);
    write_adapter_files(&adapter, &model.config, None, &dir).unwrap();
    let text = std::fs::read_to_string(dir.join(ADAPTER_CONFIG)).unwrap();
    assert!(
        text.contains(r#""lora_dropout": 0.1,"#) && text.contains(r#""lora_alpha": 2.5,"#),
        "{text}"
    );
    let again = load_adapter(&dir, &model.config).unwrap();
    assert_eq!((again.config.dropout, again.config.alpha), (0.1, 2.5));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A copy of the PEFT fixture with `edit` applied to its configuration.
fn edited(tag: &str, edit: impl FnOnce(&mut serde_json::Map<String, Value>)) -> PathBuf {
    let dir = temp_dir(tag);
    std::fs::copy(fixture("tiny_lora").join(ADAPTER_WEIGHTS), dir.join(ADAPTER_WEIGHTS)).unwrap();
    let mut config: Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("tiny_lora").join(ADAPTER_CONFIG)).unwrap()).unwrap();
    edit(config.as_object_mut().unwrap());
    std::fs::write(dir.join(ADAPTER_CONFIG), config.to_string()).unwrap();
    dir
}

#[test]
fn unsupported_options_and_another_base_are_clear_errors() {
    let model = tiny_model();
    let tolerated = edited("peft-extra", |c| {
        c.insert("a_key_from_the_future".into(), Value::from(3));
    });
    assert!(
        load_adapter(&tolerated, &model.config).is_ok(),
        "unknown keys are ignored"
    );
    for (key, value, says) in [
        ("use_dora", Value::from(true), "use_dora = true: DoRA"),
        ("use_rslora", Value::from(true), "use_rslora = true: rank-stabilised"),
        ("bias", Value::from("all"), "bias = \"all\""),
        (
            "modules_to_save",
            serde_json::json!(["lm_head"]),
            "modules_to_save = [\"lm_head\"]: of fully trained modules only the token embedding",
        ),
        (
            "modules_to_save",
            serde_json::json!(["wte"]),
            "as [\"wte\", \"lm_head\"] (this model ties the two)",
        ),
        ("peft_type", Value::from("IA3"), "only LORA adapters"),
        ("r", Value::from(0), "rank r must be at least 1"),
    ] {
        let dir = edited("peft-bad", |c| {
            c.insert(key.into(), value.clone());
        });
        let err = load_adapter(&dir, &model.config).unwrap_err().to_string();
        assert!(err.contains(says) && err.contains(ADAPTER_CONFIG), "{key}: {err}");
    }
    let dir = edited("peft-rank", |c| {
        c.insert("r".into(), Value::from(8));
    });
    let err = load_adapter(&dir, &model.config).unwrap_err().to_string();
    assert!(
        err.contains(
            "'base_model.model.transformer.h.0.attn.c_attn.lora_A.weight' has shape [4, 32], expected [8, 32]"
        ),
        "{err}"
    );
    let mut wider = model.config.clone();
    wider.n_embd = 64;
    let err = load_adapter(&fixture("tiny_lora"), &wider).unwrap_err().to_string();
    assert!(err.contains("has shape [4, 32], expected [4, 64]"), "{err}");
    let mut shallower = model.config.clone();
    shallower.n_layer = 1;
    let err = load_adapter(&fixture("tiny_lora"), &shallower).unwrap_err().to_string();
    assert!(err.contains("adapts block 1, but the base model has 1 blocks"), "{err}");
    let err = load_adapter(&fixture("tiny"), &model.config).unwrap_err().to_string();
    assert!(err.contains("not a LoRA adapter"), "{err}");
}

/// PEFT keeps separate copies of wte and lm_head; our model ties them, so they must be equal.
#[test]
fn a_trained_lm_head_unlike_the_trained_embedding_is_an_error() {
    const LM_HEAD: &str = "base_model.model.lm_head.weight";
    let bytes = std::fs::read(fixture("tiny_lora_wte").join(ADAPTER_WEIGHTS)).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut head = file.tensor(LM_HEAD).unwrap().data().to_vec();
    head[0] ^= 1; // the lowest bit of the first value
    let tensors = file.tensors().into_iter().map(|(name, view)| match name == LM_HEAD {
        true => (
            name,
            safetensors::tensor::TensorView::new(view.dtype(), view.shape().to_vec(), &head).unwrap(),
        ),
        false => (name, view),
    });
    let dir = edited("peft-untied", |c| {
        c.insert("modules_to_save".into(), serde_json::json!(["wte", "lm_head"]));
    });
    std::fs::write(
        dir.join(ADAPTER_WEIGHTS),
        safetensors::serialize(tensors, None).unwrap(),
    )
    .unwrap();
    let err = load_adapter(&dir, &tiny_model().config).unwrap_err().to_string();
    assert!(
        err.contains("'base_model.model.lm_head.weight' differs from 'base_model.model.transformer.wte.weight'"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn convert_with_an_adapter_writes_the_merged_model() {
    let dir = temp_dir("peft-convert");
    let out = dir.join("merged");
    let (tiny, lora) = (fixture("tiny"), fixture("tiny_lora"));
    let args = [
        "convert",
        "--from",
        tiny.to_str().unwrap(),
        "--adapter",
        lora.to_str().unwrap(),
    ];
    let output = run_gpt2(&[&args[..], &["--to", "hf", "--out", out.to_str().unwrap()]].concat());
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let (ids, b, t, _) = reference("tiny_lora");
    assert_matches_peft(
        &logits(&load_hf_dir(&out).unwrap(), &ids, b, t),
        "tiny_lora",
        "converted",
    );
    let output = run_gpt2(&[
        "convert",
        "--from",
        tiny.to_str().unwrap(),
        "--adapter",
        tiny.to_str().unwrap(),
        "--to",
        "hf",
        "--out",
        out.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success() && err.contains("not a LoRA adapter"), "{err}");
    let output = run_gpt2(&["generate", "--model", lora.to_str().unwrap(), "--prompt-ids", "1 2"]);
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(
        err.contains("a LoRA adapter, not a whole model") && err.contains("--adapter"),
        "{err}"
    );
    let output = run_gpt2(
        &[
            &["generate", "--model", tiny.to_str().unwrap(), "--adapter"][..],
            &[
                lora.to_str().unwrap(),
                "--prompt-ids",
                "1 2",
                "--greedy",
                "--max-new-tokens",
                "3",
            ],
        ]
        .concat(),
    );
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    std::fs::remove_dir_all(&dir).unwrap();
}
