//! Every weight format in and out. The same tiny model, written by transformers (plain and
//! sharded safetensors), by TensorFlow (OpenAI's checkpoint layout) and by llm.c's exporter
//! (scripts/make_weight_fixtures.py), must give the Hugging Face logits; damaged files must give
//! errors that say what is wrong, never a panic.

use gpt2::io::dtype::to_f32;
use gpt2::io::llmc::{save_llmc, LlmcDtype};
use gpt2::io::mapped::MappedFile;
use gpt2::io::{detect, load_model, load_model_with_tokenizer, save_model, ExportFormat, Format};
use gpt2::{Gpt, Workspace};
use std::fs;
use std::path::{Path, PathBuf};

mod common;
use common::{fixture, gpt2, temp_dir};

/// A copy of a fixture directory that a test may damage.
fn copy_dir(from: &Path, name: &str) -> PathBuf {
    let dir = temp_dir(name);
    for entry in fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        fs::copy(&path, dir.join(path.file_name().unwrap())).unwrap();
    }
    dir
}

fn hf_model() -> Gpt {
    load_model(&fixture("tiny")).unwrap()
}

fn load_err(path: &Path) -> String {
    match load_model(path) {
        Ok(_) => panic!("loading {} should fail", path.display()),
        Err(e) => e.to_string(),
    }
}

/// Asserts that the model's logits on the fixture batch are Hugging Face's, to 1e-5.
fn assert_reference_logits(model: &Gpt, what: &str) {
    let file = MappedFile::open(&fixture("tiny_reference.safetensors")).unwrap();
    let tensors = file.tensors().unwrap();
    let ids: Vec<u32> = tensors
        .tensor("input_ids")
        .unwrap()
        .data()
        .chunks_exact(4)
        .map(|b| i32::from_le_bytes(b.try_into().unwrap()) as u32)
        .collect();
    let view = tensors.tensor("logits").unwrap();
    let mut expected = vec![0.0; view.shape().iter().product()];
    to_f32(view.dtype(), view.data(), &mut expected).unwrap();
    let mut ws = Workspace::new();
    model.forward(&mut ws, &ids, 2, 16, None, None).unwrap();
    let diff = ws
        .logits()
        .iter()
        .zip(&expected)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert_eq!(ws.logits().len(), expected.len());
    assert!(diff <= 1e-5, "{what}: logits differ from Hugging Face's by {diff}");
}

#[test]
fn every_format_gives_the_hugging_face_logits() {
    let reference = hf_model();
    for name in ["tiny", "tiny_sharded", "tiny_openai", "tiny_llmc.bin"] {
        let model = load_model(&fixture(name)).unwrap();
        assert_eq!(model.config, reference.config, "{name}");
        assert!(model.params == reference.params, "{name}: the weights differ");
        assert_reference_logits(&model, name);
    }
}

/// f32 -> bf16 -> f32, rounding to nearest even like torch.
fn bf16_round(x: f32) -> f32 {
    let b = x.to_bits();
    f32::from_bits(((b + 0x7fff + ((b >> 16) & 1)) >> 16) << 16)
}

#[test]
fn a_bf16_llmc_file_holds_the_rounded_weights() {
    let reference = hf_model();
    let model = load_model(&fixture("tiny_llmc_bf16.bin")).unwrap();
    let rounded: Vec<f32> = reference.params.iter().map(|&x| bf16_round(x)).collect();
    assert!(model.params == rounded);
}

#[test]
fn our_llmc_writer_matches_llm_c_byte_for_byte() {
    let model = hf_model();
    let dir = temp_dir("llmc-bytes");
    for (dtype, fixture_name) in [
        (LlmcDtype::F32, "tiny_llmc.bin"),
        (LlmcDtype::Bf16, "tiny_llmc_bf16.bin"),
    ] {
        let out = dir.join(fixture_name);
        save_llmc(&model, &out, dtype).unwrap();
        assert!(
            fs::read(&out).unwrap() == fs::read(fixture(fixture_name)).unwrap(),
            "{dtype:?}"
        );
    }
}

#[test]
fn formats_are_detected_from_contents_not_names() {
    let cases = [
        (fixture("tiny"), Format::HuggingFace(fixture("tiny"))),
        (fixture("tiny/model.safetensors"), Format::HuggingFace(fixture("tiny"))),
        (fixture("tiny_sharded"), Format::HuggingFace(fixture("tiny_sharded"))),
        (fixture("tiny_openai"), Format::OpenAi(fixture("tiny_openai"))),
        (
            fixture("tiny_openai/model.ckpt.index"),
            Format::OpenAi(fixture("tiny_openai")),
        ),
        (fixture("tiny_llmc.bin"), Format::Llmc(fixture("tiny_llmc.bin"))),
    ];
    for (path, format) in cases {
        assert_eq!(detect(&path).unwrap(), format, "{}", path.display());
    }
    // A misleading extension changes nothing.
    let dir = temp_dir("detect");
    let disguised = dir.join("model.safetensors");
    fs::copy(fixture("tiny_llmc.bin"), &disguised).unwrap();
    assert_eq!(detect(&disguised).unwrap(), Format::Llmc(disguised.clone()));
    fs::write(dir.join("notes.bin"), b"not a model at all").unwrap();
    assert!(load_err(&dir.join("notes.bin")).contains("not a model file"));
    assert!(load_err(&dir).contains("not a model"));
    assert!(load_err(&dir.join("missing")).contains("no such file"));
    // A safetensors file that its directory does not read is not taken for the directory's model.
    let other = copy_dir(&fixture("tiny"), "detect-other");
    fs::copy(
        fixture("shakespeare_char/model.safetensors"),
        other.join("char.safetensors"),
    )
    .unwrap();
    assert!(load_err(&other.join("char.safetensors")).contains("not the model.safetensors"));
}

#[test]
fn a_model_directory_replaces_only_a_model_directory() {
    let model = hf_model();
    let dir = temp_dir("replace");
    let out = dir.join("hf");
    save_model(&model, None, ExportFormat::HuggingFace, &out).unwrap();
    save_model(&model, None, ExportFormat::HuggingFace, &out).unwrap(); // a model again: replaced
    fs::write(out.join("notes.txt"), "mine").unwrap();
    let err = save_model(&model, None, ExportFormat::HuggingFace, &out)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("notes.txt") && err.contains("new or empty directory"),
        "{err}"
    );
    assert_eq!(fs::read_to_string(out.join("notes.txt")).unwrap(), "mine");
    fs::write(dir.join("file"), "mine").unwrap();
    let err = save_model(&model, None, ExportFormat::HuggingFace, &dir.join("file"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("not a directory"), "{err}");
    assert_eq!(fs::read_to_string(dir.join("file")).unwrap(), "mine");
}

#[cfg(unix)]
#[test]
fn an_llmc_file_replaces_only_an_llmc_file() {
    let model = hf_model();
    let dir = temp_dir("llmc-out");
    for (path, what) in common::foreign_entries(&dir) {
        let err = save_llmc(&model, &path, LlmcDtype::F32).unwrap_err().to_string();
        let expected = format!("exists and is {what}");
        assert!(
            err.contains(&expected) && err.contains("not an llm.c checkpoint: refusing to replace it"),
            "{err}"
        );
        let failed = gpt2()
            .args(["convert", "--from"])
            .arg(fixture("tiny"))
            .args(["--to", "llmc", "--out"])
            .arg(&path)
            .output()
            .unwrap();
        assert_eq!(failed.status.code(), Some(1));
        let stderr = String::from_utf8_lossy(&failed.stderr);
        assert!(stderr.contains(&expected), "{stderr}");
    }
    common::assert_foreign_entries_intact(&dir);
    // A new path is written, and an llm.c file replaced.
    let out = dir.join("model.bin");
    save_llmc(&model, &out, LlmcDtype::F32).unwrap();
    save_llmc(&model, &out, LlmcDtype::Bf16).unwrap();
    assert!(fs::read(&out).unwrap() == fs::read(fixture("tiny_llmc_bf16.bin")).unwrap());
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn conversions_round_trip_exactly() {
    let reference = hf_model();
    let dir = temp_dir("convert");
    let openai = load_model(&fixture("tiny_openai")).unwrap();
    save_model(
        &openai,
        None,
        ExportFormat::Llmc(LlmcDtype::F32),
        &dir.join("sub/model.bin"),
    )
    .unwrap();
    let llmc = load_model(&dir.join("sub/model.bin")).unwrap();
    save_model(&llmc, None, ExportFormat::HuggingFace, &dir.join("hf")).unwrap();
    let back = load_model(&dir.join("hf")).unwrap();
    assert_eq!(back.config, reference.config);
    assert!(back.params == reference.params);
}

#[test]
fn the_convert_command_reads_any_format() {
    let dir = temp_dir("cli");
    let out = dir.join("from-openai.bin");
    let status = gpt2()
        .args(["convert", "--from"])
        .arg(fixture("tiny_openai"))
        .args(["--to", "llmc", "--dtype", "bf16", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));
    assert!(fs::read(&out).unwrap() == fs::read(fixture("tiny_llmc_bf16.bin")).unwrap());
    let status = gpt2()
        .args(["convert", "--from"])
        .arg(fixture("tiny_llmc.bin"))
        .args(["--to", "hf", "--out"])
        .arg(dir.join("hf"))
        .output()
        .unwrap();
    assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));
    assert!(load_model(&dir.join("hf")).unwrap().params == hf_model().params);

    let failed = gpt2()
        .args(["convert", "--from"])
        .arg(dir.join("nothing-here"))
        .args(["--to", "hf", "--out"])
        .arg(dir.join("never"))
        .output()
        .unwrap();
    assert_eq!(failed.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&failed.stderr).contains("no such file"));
    assert!(!dir.join("never").exists());
}

// --- OpenAI checkpoints: damaged files ----------------------------------------------------------

/// A copy of the OpenAI fixture with `edit` applied to one of its files.
fn damaged_openai(name: &str, file: &str, edit: impl FnOnce(&mut Vec<u8>)) -> PathBuf {
    let dir = copy_dir(&fixture("tiny_openai"), name);
    let mut bytes = fs::read(dir.join(file)).unwrap();
    edit(&mut bytes);
    fs::write(dir.join(file), bytes).unwrap();
    dir
}

fn with_hparams(name: &str, key: &str, value: serde_json::Value) -> PathBuf {
    damaged_openai(name, "hparams.json", |bytes| {
        let mut json: serde_json::Value = serde_json::from_slice(bytes).unwrap();
        json[key] = value;
        *bytes = json.to_string().into_bytes();
    })
}

#[test]
fn damaged_openai_checkpoints_are_named_errors() {
    let index = "model.ckpt.index";
    let data = "model.ckpt.data-00000-of-00001";

    let err = load_err(&damaged_openai("trunc-index", index, |b| b.truncate(b.len() - 10)));
    assert!(err.contains("truncated"), "{err}");
    let err = load_err(&damaged_openai("crc-index", index, |b| b[100] ^= 1));
    assert!(err.contains("crc32c mismatch"), "{err}");
    let err = load_err(&damaged_openai("crc-data", data, |b| b[5000] ^= 1));
    assert!(err.contains("crc32c mismatch") && err.contains("model/"), "{err}");
    let err = load_err(&damaged_openai("trunc-data", data, |b| b.truncate(b.len() - 4)));
    assert!(err.contains("truncated"), "{err}");

    let err = load_err(&with_hparams("more-layers", "n_layer", 3.into()));
    assert!(err.contains("missing tensor 'model/h2/ln_1/g'"), "{err}");
    let err = load_err(&with_hparams("fewer-layers", "n_layer", 1.into()));
    assert!(err.contains("unexpected tensor 'model/h1/"), "{err}");
    let err = load_err(&with_hparams("ctx", "n_ctx", 64.into()));
    assert!(
        err.contains("'model/wpe' has shape [128, 32], expected [64, 32] from hparams.json"),
        "{err}"
    );
    let err = load_err(&with_hparams("huge", "n_embd", 65536.into()));
    assert!(err.contains("need at least"), "{err}");
    let err = load_err(&with_hparams("no-heads", "n_head", serde_json::Value::Null));
    assert!(err.contains("'n_head'"), "{err}");

    let dir = copy_dir(&fixture("tiny_openai"), "no-data");
    fs::remove_file(dir.join(data)).unwrap();
    assert!(load_err(&dir).contains(data));
}

// --- llm.c files: damaged headers and sizes -----------------------------------------------------

fn damaged_llmc(name: &str, edit: impl FnOnce(&mut Vec<u8>)) -> PathBuf {
    let path = temp_dir(name).join("model.bin");
    let mut bytes = fs::read(fixture("tiny_llmc.bin")).unwrap();
    edit(&mut bytes);
    fs::write(&path, bytes).unwrap();
    path
}

fn set_header(bytes: &mut [u8], field: usize, value: i32) {
    bytes[4 * field..4 * field + 4].copy_from_slice(&value.to_le_bytes());
}

#[test]
fn damaged_llmc_files_are_named_errors() {
    let err = load_err(&damaged_llmc("trunc", |b| b.truncate(b.len() - 1)));
    assert!(err.contains("truncated"), "{err}");
    let err = load_err(&damaged_llmc("header-only", |b| b.truncate(100)));
    assert!(err.contains("header"), "{err}");
    let err = load_err(&damaged_llmc("version", |b| set_header(b, 1, 4)));
    assert!(err.contains("version 4 is not supported"), "{err}");
    let err = load_err(&damaged_llmc("heads", |b| set_header(b, 5, 5)));
    assert!(err.contains("divisible"), "{err}");
    let err = load_err(&damaged_llmc("vp", |b| set_header(b, 7, 64)));
    assert!(err.contains("smaller than V"), "{err}");
    let err = load_err(&damaged_llmc("layers", |b| set_header(b, 4, 3)));
    assert!(err.contains("header") && err.contains("L=3"), "{err}");
    let err = load_err(&damaged_llmc("huge", |b| set_header(b, 6, 1 << 30)));
    assert!(err.contains("implausibly large"), "{err}");
    let err = load_err(&damaged_llmc("negative", |b| set_header(b, 3, -1)));
    assert!(err.contains("negative"), "{err}");
}

// --- safetensors: hostile headers and shards ----------------------------------------------------

/// A safetensors file from a raw JSON header and data.
fn raw_safetensors(header: &str, data: &[u8]) -> Vec<u8> {
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend_from_slice(data);
    bytes
}

#[test]
fn hostile_safetensors_headers_are_refused() {
    let dir = copy_dir(&fixture("tiny"), "hostile");
    let file = dir.join("model.safetensors");
    let overlapping = r#"{"wte.weight":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"wpe.weight":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#;
    let huge_shape = r#"{"wte.weight":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,8]}}"#;
    let past_the_end = r#"{"wte.weight":{"dtype":"F32","shape":[1000],"data_offsets":[0,4000]}}"#;
    for header in [overlapping, huge_shape, past_the_end] {
        fs::write(&file, raw_safetensors(header, &[0u8; 12])).unwrap();
        let err = load_err(&dir);
        assert!(err.contains("not a valid safetensors file"), "{header}: {err}");
    }
}

#[test]
fn sharded_directories_need_every_shard_exactly_once() {
    let dir = copy_dir(&fixture("tiny_sharded"), "shards");
    let index_path = dir.join("model.safetensors.index.json");
    let mut index: serde_json::Value = serde_json::from_slice(&fs::read(&index_path).unwrap()).unwrap();
    // Every tensor of shard 1 listed again in a copy: the loader must notice.
    fs::copy(
        dir.join("model-00001-of-00003.safetensors"),
        dir.join("model-copy.safetensors"),
    )
    .unwrap();
    index["weight_map"]["extra"] = "model-copy.safetensors".into();
    fs::write(&index_path, index.to_string()).unwrap();
    assert!(load_err(&dir).contains("appears twice"));

    index["weight_map"]["extra"] = "model-gone.safetensors".into();
    fs::write(&index_path, index.to_string()).unwrap();
    assert!(load_err(&dir).contains("model-gone.safetensors"));

    index["weight_map"]["extra"] = "../escape.safetensors".into();
    fs::write(&index_path, index.to_string()).unwrap();
    assert!(load_err(&dir).contains("plain file name"));
}

// --- tokenizers -----------------------------------------------------------------------------------

#[test]
fn tokenizers_come_with_their_models() {
    // OpenAI's directory: encoder.json + vocab.bpe (the fixture's: bytes 0x20..0x7f, no merges).
    let loaded = load_model_with_tokenizer(&fixture("tiny_openai")).unwrap();
    let tokenizer = loaded.tokenizer.expect("the OpenAI directory has a tokenizer");
    assert_eq!(tokenizer.vocab_size(), 96);
    assert_eq!(
        tokenizer.encode("Hi!").unwrap(),
        [b'H' as u32 - 32, b'i' as u32 - 32, 1]
    );
    // It travels into a Hugging Face directory...
    let dir = temp_dir("tokenizers");
    save_model(
        &loaded.model,
        Some(&tokenizer),
        ExportFormat::HuggingFace,
        &dir.join("hf"),
    )
    .unwrap();
    let again = load_model_with_tokenizer(&dir.join("hf")).unwrap().tokenizer.unwrap();
    assert_eq!(again.encode("Hi!").unwrap(), tokenizer.encode("Hi!").unwrap());
    // ...but not into llm.c's format, which has no room for it.
    assert!(load_model_with_tokenizer(&fixture("tiny_llmc.bin"))
        .unwrap()
        .tokenizer
        .is_none());
    assert!(load_model_with_tokenizer(&fixture("tiny")).unwrap().tokenizer.is_none());

    // An llm.c file with GPT-2's vocabulary, plain or padded, gets GPT-2's tokenizer.
    for vocab in [50257, 50304] {
        let model = Gpt::new(gpt2::Config::new(vocab, 4, 4, 1, 1), 0).unwrap();
        let path = dir.join(format!("v{vocab}.bin"));
        save_llmc(&model, &path, LlmcDtype::Bf16).unwrap();
        let tokenizer = load_model_with_tokenizer(&path).unwrap().tokenizer.unwrap();
        assert_eq!(tokenizer.kind(), "gpt2");
    }

    // A vocabulary larger than the model's embedding is refused.
    let bigger = copy_dir(&fixture("tiny_openai"), "big-vocab");
    let mut encoder: serde_json::Value =
        serde_json::from_slice(&fs::read(bigger.join("encoder.json")).unwrap()).unwrap();
    encoder["ġĠ"] = 96.into();
    fs::write(bigger.join("encoder.json"), encoder.to_string()).unwrap();
    fs::write(bigger.join("vocab.bpe"), "#version: 0.2\nġ Ġ\n").unwrap();
    let err = load_model_with_tokenizer(&bigger).err().unwrap().to_string();
    assert!(err.contains("97 tokens, the model only 96"), "{err}");
}
