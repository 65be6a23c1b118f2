//! Fuzzing every loader: each test feeds each file of a format a thousand deterministic
//! mutations of a valid fixture (bit flips, bytes set to extremes, truncations, 4- and 8-byte
//! length fields set to 0 / the maximum / past the end, duplicated and reordered bytes and
//! lines, numbers in text replaced by extremes) and asserts that loading gives an error or a
//! model, never a panic. Allocations above [`ALLOC_LIMIT`] (bar faer's page-aligned buffers,
//! see [`refused`]) are refused by this binary's allocator, so a loader that trusts a size it
//! read fails here (with an error when it asks with `try_reserve`, an abort otherwise) instead
//! of taking the machine's memory.
//!
//! `FUZZ_ITERS=N` sets the mutations per format (default [`DEFAULT_ITERS`]); run with
//! `--nocapture` to see the counts, `FUZZ_VERBOSE=1` to see each mutation before it loads.

use gpt2::rng::Rng;
use gpt2::tokenizer::Tokenizer;
use gpt2::train::{RunOptions, TrainConfig, Trainer};
use std::alloc::{GlobalAlloc, Layout, System};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

mod common;
use common::{fixture, temp_dir};

/// Mutations per format unless FUZZ_ITERS says otherwise.
const DEFAULT_ITERS: usize = 3000;

/// The largest single allocation this binary grants: 64 MB, far beyond what the fixtures (at
/// most a few hundred kB) can need.
const ALLOC_LIMIT: usize = 64 << 20;

/// The system allocator, refusing requests above [`ALLOC_LIMIT`].
struct Bounded;

/// Whether a request of `size` bytes aligned to `align` is refused. faer's matrix product keeps
/// a page-aligned packing buffer per thread of twice the L3 cache, which it reserves but never
/// fills (960 MiB on a Xeon reporting 480 MiB of L3): page-aligned requests are its, not a
/// loader's, and pass.
fn refused(size: usize, align: usize) -> bool {
    size > ALLOC_LIMIT && align < 4096
}

// SAFETY: every call is passed on to the system allocator unchanged, or refused with null,
// which the GlobalAlloc contract allows.
unsafe impl GlobalAlloc for Bounded {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        match refused(layout.size(), layout.align()) {
            true => std::ptr::null_mut(),
            false => System.alloc(layout),
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        match refused(layout.size(), layout.align()) {
            true => std::ptr::null_mut(),
            false => System.alloc_zeroed(layout),
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        match refused(new_size, layout.align()) {
            true => std::ptr::null_mut(),
            false => System.realloc(ptr, layout, new_size),
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static ALLOCATOR: Bounded = Bounded;

fn iters() -> usize {
    std::env::var("FUZZ_ITERS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(DEFAULT_ITERS)
}

/// A seed from a name (FNV-1a), so that each format has its own fixed sequence of mutations.
fn seed(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    })
}

/// A position in `len` bytes: half the time among the first kilobyte, where headers and
/// their length fields are.
fn position(rng: &mut Rng, len: usize) -> usize {
    match rng.below(2) {
        0 => rng.below(len.clamp(1, 1024)),
        _ => rng.below(len.max(1)),
    }
}

/// Writes `value`'s first `width` little-endian bytes at `at`, if they fit.
fn put(bytes: &mut [u8], at: usize, value: u64, width: usize) {
    if let Some(dst) = bytes.get_mut(at..at + width) {
        dst.copy_from_slice(&value.to_le_bytes()[..width]);
    }
}

/// The lines of `text` with their newlines.
fn lines(text: &[u8]) -> Vec<Vec<u8>> {
    text.split_inclusive(|&b| b == b'\n').map(<[u8]>::to_vec).collect()
}

/// A mutation of `orig` and what it was. `text` bytes at the start are text (a JSON header,
/// a whole text file), where numbers and lines are mutated too.
fn mutate(orig: &[u8], text: usize, rng: &mut Rng) -> (Vec<u8>, &'static str) {
    let mut b = orig.to_vec();
    let len = b.len();
    let kinds = if text > 0 { 10 } else { 7 };
    let kind = match rng.below(kinds) {
        0 => {
            for _ in 0..=rng.below(4) {
                let at = position(rng, len);
                b[at] ^= 1 << rng.below(8);
            }
            "bit flips"
        }
        1 => {
            let at = position(rng, len);
            b[at] = [0x00, 0xff, 0x7f, 0x80, b'"', b'{', b'\n'][rng.below(7)];
            "byte set"
        }
        2 => {
            b.truncate(rng.below(len));
            "truncation"
        }
        3 | 4 => {
            let width = if rng.below(2) == 0 { 4 } else { 8 };
            let max = if width == 4 { u32::MAX as u64 } else { u64::MAX };
            let values = [0, max, max / 2, len as u64 + 1, 2 * len as u64, 1 << 31, 16_777_215];
            let at = position(rng, len);
            put(&mut b, at, values[rng.below(values.len())], width);
            "length field"
        }
        5 => {
            let (from, at) = (rng.below(len), position(rng, len));
            let chunk = b[from..(from + 1 + rng.below(64)).min(len)].to_vec();
            b.splice(at..at, chunk);
            "duplicated bytes"
        }
        6 => {
            let at = position(rng, len);
            let end = (at + 1 + rng.below(64)).min(len);
            b.drain(at..end);
            "deleted bytes"
        }
        7 => mutate_number(&mut b, text, rng),
        _ => mutate_lines(&mut b, text, rng),
    };
    (b, kind)
}

/// Replaces a number in the first `text` bytes with an extreme one.
fn mutate_number(b: &mut Vec<u8>, text: usize, rng: &mut Rng) -> &'static str {
    let starts: Vec<usize> = (0..text.min(b.len()))
        .filter(|&i| b[i].is_ascii_digit() && (i == 0 || !b[i - 1].is_ascii_digit()))
        .collect();
    if starts.is_empty() {
        return "no number";
    }
    let start = starts[rng.below(starts.len())];
    let end = (start..b.len()).find(|&i| !b[i].is_ascii_digit()).unwrap_or(b.len());
    let values = [
        "0",
        "-1",
        "16777215",
        "4294967296",
        "18446744073709551615",
        "99999999999999999999999",
        "1e309",
        "NaN",
    ];
    b.splice(start..end, values[rng.below(values.len())].bytes());
    "number"
}

/// Duplicates, deletes or swaps lines within the first `text` bytes.
fn mutate_lines(b: &mut Vec<u8>, text: usize, rng: &mut Rng) -> &'static str {
    let text = text.min(b.len());
    let mut ls = lines(&b[..text]);
    let n = ls.len();
    if n < 2 {
        return "one line";
    }
    let (i, j) = (rng.below(n), rng.below(n));
    let kind = match rng.below(3) {
        0 => {
            let line = ls[i].clone();
            ls.insert(j, line);
            "duplicated line"
        }
        1 => {
            ls.remove(i);
            "deleted line"
        }
        _ => {
            ls.swap(i, j);
            "reordered lines"
        }
    };
    let rest = b.split_off(text);
    *b = ls.concat();
    b.extend(rest);
    kind
}

/// The message of a caught panic.
fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    match payload.downcast::<String>() {
        Ok(s) => *s,
        Err(payload) => payload.downcast_ref::<&str>().map_or("?", |s| s).to_string(),
    }
}

/// Loads `dir` with `file` replaced by mutation after mutation; every load must end in Ok or
/// Err, never a panic. `text`: how many leading bytes of the file are text.
fn fuzz(name: &str, dir: &Path, file: &str, text: fn(&[u8]) -> usize, load: &dyn Fn(&Path) -> Result<(), String>) {
    let path = dir.join(file);
    let orig = std::fs::read(&path).unwrap();
    load(dir).unwrap_or_else(|e| panic!("{name}: the fixture itself does not load: {e}"));
    let verbose = std::env::var_os("FUZZ_VERBOSE").is_some();
    let mut rng = Rng::new(seed(name));
    let (mut loaded, mut errors, mut panics) = (0, 0, Vec::new());
    let n = iters();
    for i in 0..n {
        let (bytes, kind) = mutate(&orig, text(&orig), &mut rng);
        std::fs::write(&path, &bytes).unwrap();
        if verbose {
            eprintln!("{name} #{i}: {kind}");
        }
        match catch_unwind(AssertUnwindSafe(|| load(dir))) {
            Ok(Ok(())) => loaded += 1,
            Ok(Err(_)) => errors += 1,
            Err(payload) => panics.push(format!("#{i} ({kind}): {}", panic_message(payload))),
        }
    }
    std::fs::write(&path, &orig).unwrap();
    eprintln!(
        "fuzz {name}: {n} mutations: {loaded} loaded, {errors} errors, {} panics",
        panics.len()
    );
    assert!(panics.is_empty(), "{name}: panics:\n{}", panics.join("\n"));
}

/// A copy of the fixture directory `name` in a scratch directory of its own.
fn copy_fixture(name: &str, tag: &str) -> PathBuf {
    let dir = temp_dir(&format!("fuzz-{tag}"));
    for entry in std::fs::read_dir(fixture(name)).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.join(entry.file_name())).unwrap();
    }
    dir
}

fn all_text(bytes: &[u8]) -> usize {
    bytes.len()
}

fn binary(_: &[u8]) -> usize {
    0
}

/// A safetensors file's text: its 8-byte length and the JSON header after it.
fn safetensors_header(bytes: &[u8]) -> usize {
    let len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    (8 + len).min(bytes.len())
}

fn model(load: fn(&Path) -> gpt2::Result<gpt2::Gpt>) -> impl Fn(&Path) -> Result<(), String> {
    move |path| load(path).map(|_| ()).map_err(|e| e.to_string())
}

/// A tokenizer that loads must also encode and decode.
fn use_tokenizer(tokenizer: gpt2::Result<Option<Tokenizer>>) -> Result<(), String> {
    let tokenizer = tokenizer.map_err(|e| e.to_string())?.ok_or("no tokenizer")?;
    if let Ok(ids) = tokenizer.encode("Hello, world! 123") {
        let _ = tokenizer.decode(&ids);
    }
    Ok(())
}

#[test]
fn safetensors_weights() {
    let dir = copy_fixture("tiny", "safetensors");
    fuzz(
        "model.safetensors",
        &dir,
        "model.safetensors",
        safetensors_header,
        &model(gpt2::io::hf::load_hf_dir),
    );
}

/// A PEFT LoRA adapter's two files, loaded for the tiny model and merged into it.
#[test]
fn peft_adapter_files() {
    let dir = copy_fixture("tiny_lora", "peft");
    let base = common::tiny_model();
    let load = |dir: &Path| -> Result<(), String> {
        let mut model = gpt2::Gpt::from_params(base.config.clone(), base.params.clone());
        gpt2::io::peft::merge_adapter(&mut model, dir).map_err(|e| e.to_string())
    };
    fuzz("adapter_config.json", &dir, "adapter_config.json", all_text, &load);
    fuzz(
        "adapter_model.safetensors",
        &dir,
        "adapter_model.safetensors",
        safetensors_header,
        &load,
    );
}

#[test]
fn hugging_face_config_json() {
    let dir = copy_fixture("tiny", "config");
    fuzz(
        "config.json",
        &dir,
        "config.json",
        all_text,
        &model(gpt2::io::hf::load_hf_dir),
    );
}

#[test]
fn sharded_safetensors_index() {
    let dir = copy_fixture("tiny_sharded", "sharded");
    let load = model(gpt2::io::load_model);
    fuzz(
        "model.safetensors.index.json",
        &dir,
        "model.safetensors.index.json",
        all_text,
        &load,
    );
    fuzz(
        "model-00002-of-00003.safetensors",
        &dir,
        "model-00002-of-00003.safetensors",
        safetensors_header,
        &load,
    );
}

#[test]
fn openai_tensorflow_checkpoint() {
    let dir = copy_fixture("tiny_openai", "openai");
    let load = model(gpt2::io::tf_checkpoint::load_openai_dir);
    fuzz("model.ckpt.index", &dir, "model.ckpt.index", binary, &load);
    fuzz(
        "model.ckpt.data-00000-of-00001",
        &dir,
        "model.ckpt.data-00000-of-00001",
        binary,
        &load,
    );
    fuzz("hparams.json", &dir, "hparams.json", all_text, &load);
}

#[test]
fn llmc_file() {
    let dir = temp_dir("fuzz-llmc");
    std::fs::copy(fixture("tiny_llmc.bin"), dir.join("model.bin")).unwrap();
    let load = |dir: &Path| {
        gpt2::io::llmc::load_llmc(&dir.join("model.bin"))
            .map(|_| ())
            .map_err(|e| e.to_string())
    };
    fuzz("llm.c model.bin", &dir, "model.bin", binary, &load);
}

#[test]
fn tokenizer_files() {
    let dir = temp_dir("fuzz-tokenizer-files");
    let files = [
        ("shakespeare_char/tokenizer.json", "ours.json"),
        ("tokenizer/hf_small/tokenizer.json", "hf.json"),
        ("tokenizer/small.tiktoken", "small.tiktoken"),
    ];
    for (from, to) in files {
        std::fs::copy(fixture(from), dir.join(to)).unwrap();
        let load = |dir: &Path| use_tokenizer(Tokenizer::load_file(&dir.join(to)).map(Some));
        fuzz(from, &dir, to, all_text, &load);
    }
}

#[test]
fn tokenizer_directories() {
    let load = |dir: &Path| use_tokenizer(Tokenizer::load_dir(dir));
    let openai = temp_dir("fuzz-tokenizer-openai");
    for file in ["encoder.json", "vocab.bpe"] {
        std::fs::copy(fixture("tiny_openai").join(file), openai.join(file)).unwrap();
    }
    let hf = copy_fixture("tokenizer/openai_small", "tokenizer-hf");
    fuzz("encoder.json", &openai, "encoder.json", all_text, &load);
    fuzz("vocab.bpe", &openai, "vocab.bpe", all_text, &load);
    fuzz("vocab.json", &hf, "vocab.json", all_text, &load);
    fuzz("merges.txt", &hf, "merges.txt", all_text, &load);
}

/// A run of two steps of a tiny model, with a checkpoint and logs.
fn tiny_run(tag: &str) -> PathBuf {
    let dir = temp_dir(tag);
    let corpus = dir.join("corpus.txt");
    std::fs::write(&corpus, "to be or not to be, that is the question.\n".repeat(50)).unwrap();
    let config = TrainConfig {
        data: vec![corpus],
        cache_dir: Some(dir.join("cache")),
        out_dir: Some(dir.join("run")),
        n_layer: Some(1),
        n_head: Some(1),
        n_embd: Some(8),
        block_size: Some(8),
        batch_size: 2,
        max_iters: 2,
        eval_interval: 1,
        eval_iters: 1,
        sample_tokens: 2,
        data_parallel: Some(1),
        ..Default::default()
    };
    Trainer::new(config)
        .unwrap()
        .run(&RunOptions::default(), &mut |_| {})
        .unwrap();
    dir.join("run")
}

#[test]
fn training_run_files() {
    let run = tiny_run("fuzz-run");
    let read_metrics = |run: &Path| {
        gpt2::runlog::jsonl::read::<gpt2::train::metrics::Record>(&run.join("metrics.jsonl"))
            .map(|_| ())
            .map_err(|e| e.to_string())
    };
    fuzz("metrics.jsonl", &run, "metrics.jsonl", all_text, &read_metrics);
    let read_stats = |run: &Path| {
        gpt2::inspect::evolution::read_param_stats(run)
            .map(|records| {
                gpt2::inspect::evolution::summarize(&records);
            })
            .map_err(|e| e.to_string())
    };
    fuzz("param_stats.jsonl", &run, "param_stats.jsonl", all_text, &read_stats);
    let load_checkpoint = |latest: &Path| {
        gpt2::train::checkpoint::load(latest)
            .map(|_| ())
            .map_err(|e| e.to_string())
    };
    let latest = run.join("latest");
    fuzz("trainer.json", &latest, "trainer.json", all_text, &load_checkpoint);
    fuzz(
        "optimizer.safetensors",
        &latest,
        "optimizer.safetensors",
        safetensors_header,
        &load_checkpoint,
    );
}
