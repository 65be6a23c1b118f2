//! Helpers shared by the integration tests: scratch directories, the `gpt2` binary, the
//! fixtures. Each test file compiles this module on its own and uses part of it.
#![allow(dead_code)]

use gpt2::io::hf::load_hf_dir;
use gpt2::Gpt;
use std::path::PathBuf;
use std::process::{Command, Output};

/// The committed fixtures (tests/fixtures).
pub const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

/// A file or directory under tests/fixtures.
pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(FIXTURES).join(name)
}

/// The tiny random GPT-2 of the Hugging Face fixtures (tests/fixtures/tiny).
pub fn tiny_model() -> Gpt {
    load_hf_dir(&fixture("tiny")).unwrap()
}

/// A new, empty directory for one test: `<tmp>/gpt2-<tag>-<pid>`, emptied if it exists.
pub fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("gpt2-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The `gpt2` binary built for these tests.
pub fn gpt2() -> Command {
    Command::new(env!("CARGO_BIN_EXE_gpt2"))
}

/// Runs `gpt2 args` to the end.
pub fn run_gpt2(args: &[&str]) -> Output {
    gpt2().args(args).output().unwrap()
}
