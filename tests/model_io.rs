//! Loading and saving Hugging Face directories: round trips, and every kind of bad file gives a
//! clear error that names the problem (never a panic).

use gpt2::io::hf::{load_hf_dir, save_hf_dir};
use gpt2::io::load_model;
use gpt2::model::num_params;
use gpt2::{Config, Gpt};
use std::fs;
use std::path::{Path, PathBuf};

mod common;
use common::temp_dir;

const TINY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tiny");

/// A copy of the tiny fixture model that a test may damage.
fn tiny_copy(name: &str) -> PathBuf {
    let dir = temp_dir(name);
    for file in ["config.json", "model.safetensors"] {
        fs::copy(Path::new(TINY).join(file), dir.join(file)).unwrap();
    }
    dir
}

fn load_err(dir: &Path) -> String {
    load_hf_dir(dir).err().expect("loading should fail").to_string()
}

#[test]
fn save_then_load_round_trips_exactly_without_the_prefix() {
    let model = load_hf_dir(Path::new(TINY)).unwrap();
    let dir = temp_dir("roundtrip").join("saved");
    save_hf_dir(&model, &dir).unwrap();
    let again = load_model(&dir).unwrap();
    assert_eq!(again.config, model.config);
    assert_eq!(again.params, model.params);
    // The hub's naming: no "transformer." prefix.
    let header = fs::read(dir.join("model.safetensors")).unwrap();
    let text = String::from_utf8_lossy(&header[..4096.min(header.len())]);
    assert!(text.contains("\"wte.weight\"") && !text.contains("transformer."));
}

#[test]
fn a_run_directory_resolves_to_its_latest_checkpoint() {
    let run = temp_dir("run");
    let model = Gpt::new(Config::new(11, 8, 8, 1, 2), 3).unwrap();
    save_hf_dir(&model, &run.join("latest")).unwrap();
    assert_eq!(load_model(&run).unwrap().params, model.params);
    assert!(load_model(&temp_dir("empty"))
        .err()
        .unwrap()
        .to_string()
        .contains("not a model"));
    assert!(load_model(&run.join("nope"))
        .err()
        .unwrap()
        .to_string()
        .contains("no such file"));
}

#[test]
fn missing_and_truncated_files_are_errors() {
    let dir = tiny_copy("missing");
    fs::remove_file(dir.join("model.safetensors")).unwrap();
    assert!(load_err(&dir).contains("no model.safetensors"));
    fs::write(dir.join("pytorch_model.bin"), b"pickle").unwrap();
    assert!(load_err(&dir).contains("pickle"));

    let dir = tiny_copy("truncated");
    let bytes = fs::read(dir.join("model.safetensors")).unwrap();
    fs::write(dir.join("model.safetensors"), &bytes[..bytes.len() - 100]).unwrap();
    assert!(load_err(&dir).contains("not a valid safetensors file"));
    fs::write(dir.join("model.safetensors"), b"hello").unwrap();
    assert!(load_err(&dir).contains("not a valid safetensors file"));
    // A hostile header length.
    let mut hostile = u64::MAX.to_le_bytes().to_vec();
    hostile.extend_from_slice(b"{}");
    fs::write(dir.join("model.safetensors"), hostile).unwrap();
    assert!(load_err(&dir).contains("not a valid safetensors file"));

    let dir = tiny_copy("noconfig");
    fs::remove_file(dir.join("config.json")).unwrap();
    assert!(load_err(&dir).contains("config.json"));
}

/// Rewrites the fixture's config.json through `edit`.
fn with_config(name: &str, edit: impl FnOnce(&mut serde_json::Value)) -> PathBuf {
    let dir = tiny_copy(name);
    let mut config: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    edit(&mut config);
    fs::write(dir.join("config.json"), config.to_string()).unwrap();
    dir
}

#[test]
fn configs_that_disagree_with_the_tensors_or_the_maths_are_errors() {
    let dir = with_config("shape", |c| c["vocab_size"] = 97.into());
    let err = load_err(&dir);
    assert!(
        err.contains("wte.weight") && err.contains("[96, 32]") && err.contains("[97, 32]"),
        "{err}"
    );

    let dir = with_config("layers", |c| c["n_layer"] = 3.into());
    assert!(load_err(&dir).contains("missing tensor 'h.2.ln_1.weight'"));

    let dir = with_config("fewer", |c| c["n_layer"] = 1.into());
    assert!(load_err(&dir).contains("unexpected tensor 'transformer.h.1"));

    let dir = with_config("activation", |c| c["activation_function"] = "relu".into());
    assert!(load_err(&dir).contains("activation_function 'relu' is not supported"));

    let dir = with_config("inverse", |c| c["scale_attn_by_inverse_layer_idx"] = true.into());
    assert!(load_err(&dir).contains("scale_attn_by_inverse_layer_idx"));

    let dir = with_config("heads", |c| c["n_head"] = 5.into());
    assert!(load_err(&dir).contains("divisible"));

    let dir = with_config("nofield", |c| {
        c.as_object_mut().unwrap().remove("n_embd");
    });
    assert!(load_err(&dir).contains("missing field 'n_embd'"));

    let dir = with_config("inner", |c| c["n_inner"] = 64.into());
    let err = load_err(&dir);
    assert!(
        err.contains("mlp.c_") && err.contains("has shape"),
        "n_inner 64 disagrees with the MLP tensors: {err}"
    );
}

#[test]
fn a_wrong_dtype_is_named() {
    // One tensor stored as I32: the error names the tensor and the dtype.
    let dir = temp_dir("dtype");
    let model = Gpt::new(Config::new(5, 4, 4, 1, 1), 0).unwrap();
    save_hf_dir(&model, &dir.join("m")).unwrap();
    let path = dir.join("m/model.safetensors");
    let mut bytes = fs::read(&path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header = String::from_utf8(bytes[8..8 + n].to_vec()).unwrap();
    let patched = header.replacen(
        "\"dtype\":\"F32\",\"shape\":[5,4]",
        "\"dtype\":\"I32\",\"shape\":[5,4]",
        1,
    );
    assert_ne!(header, patched);
    bytes.splice(8..8 + n, patched.into_bytes());
    fs::write(&path, bytes).unwrap();
    let err = load_err(&dir.join("m"));
    assert!(err.contains("wte.weight") && err.contains("I32"), "{err}");
}

#[test]
fn config_json_round_trips_and_presets_are_gpt2() {
    for name in gpt2::config::PRESETS {
        let c = Config::preset(name).unwrap();
        assert_eq!(Config::from_hf_json(&c.to_hf_json()).unwrap(), c);
    }
    assert_eq!(num_params(&Config::preset("gpt2-xl").unwrap()), 1_557_611_200);
    assert!(Config::preset("gpt3").is_err());
}

/// A FIFO at `path` (reading it would block until a writer comes).
#[cfg(unix)]
fn mkfifo(path: &Path) {
    let c_path = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
}

/// FIFOs and devices in place of model, tokenizer and corpus files are errors naming the file,
/// not reads that block forever or never end.
#[cfg(unix)]
#[test]
fn only_regular_files_are_read_as_models_tokenizers_and_corpora() {
    let dir = tiny_copy("special-files");
    let weights = dir.join("model.safetensors");
    fs::remove_file(&weights).unwrap();
    std::os::unix::fs::symlink("/dev/zero", &weights).unwrap();
    // (A Hugging Face directory looks for its weights among regular files.)
    let err = load_err(&dir);
    assert!(err.contains("no model.safetensors"), "{err}");
    fs::remove_file(&weights).unwrap();
    mkfifo(&weights);
    let err = load_err(&dir);
    assert!(err.contains("no model.safetensors"), "{err}");
    let err = gpt2::io::mapped::MappedFile::open(&weights).err().unwrap().to_string();
    assert!(err.contains("not a regular file"), "{err}");

    let openai = temp_dir("special-files-openai");
    for entry in fs::read_dir(Path::new(TINY).with_file_name("tiny_openai")).unwrap() {
        let entry = entry.unwrap();
        fs::copy(entry.path(), openai.join(entry.file_name())).unwrap();
    }
    for (file, special) in [("model.ckpt.index", "zero"), ("model.ckpt.data-00000-of-00001", "fifo")] {
        let path = openai.join(file);
        let saved = fs::read(&path).unwrap();
        fs::remove_file(&path).unwrap();
        match special {
            "zero" => std::os::unix::fs::symlink("/dev/zero", &path).unwrap(),
            _ => mkfifo(&path),
        }
        let err = load_model(&openai).err().unwrap().to_string();
        assert!(
            err.contains(file) && err.contains("not a regular file"),
            "{file}: {err}"
        );
        fs::remove_file(&path).unwrap();
        fs::write(&path, saved).unwrap();
    }

    let fifo = dir.join("tokenizer.json");
    mkfifo(&fifo);
    let err = gpt2::tokenizer::Tokenizer::load_file(&fifo).unwrap_err().to_string();
    assert!(err.contains("not a regular file"), "{err}");
    let err = gpt2::data::read_corpus(&[fifo]).unwrap_err().to_string();
    assert!(err.contains("not a regular file"), "{err}");
    fs::remove_dir_all(&dir).unwrap();
    fs::remove_dir_all(&openai).unwrap();
}

#[test]
fn nan_or_infinite_weights_are_an_error_naming_the_tensor_and_a_warning_for_inspection() {
    let mut model = load_hf_dir(Path::new(TINY)).unwrap();
    let n = model.params.len();
    model.params[n - 1] = f32::NAN; // ln_f.bias
    model.params[n - 2] = f32::INFINITY;
    model.params[0] = f32::NAN; // wte
    let dir = temp_dir("nan-weights").join("model");
    save_hf_dir(&model, &dir).unwrap();
    let err = load_model(&dir).err().unwrap().to_string();
    assert!(
        err.contains("tensor 'wte.weight' holds 1 NaN or infinite value, and 1 more tensor holds some"),
        "{err}"
    );
    let err = gpt2::io::load_model_with_tokenizer(&dir).err().unwrap().to_string();
    assert!(err.contains("wte.weight"), "{err}");
    let loaded = gpt2::io::load_model_with_tokenizer_as_is(&dir).unwrap();
    let warning = gpt2::io::non_finite_weights(&loaded.model).unwrap();
    assert!(warning.starts_with("tensor 'wte.weight'"), "{warning}");
    fs::remove_dir_all(dir.parent().unwrap()).unwrap();
}
