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

/// Things the user may have at a path that a command writes, which it must not replace: each
/// path made in `dir`, with the words an error uses for it. The symbolic link points at a file
/// of ours that stands for `/dev/null` (a link to the real one must not be risked in a test).
#[cfg(unix)]
pub fn foreign_entries(dir: &std::path::Path) -> Vec<(PathBuf, &'static str)> {
    let fifo = dir.join("fifo");
    let name = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a NUL-terminated path that outlives the call.
    assert_eq!(unsafe { libc::mkfifo(name.as_ptr(), 0o644) }, 0, "mkfifo");
    std::fs::write(dir.join("device"), "stands for /dev/null").unwrap();
    std::os::unix::fs::symlink(dir.join("device"), dir.join("link")).unwrap();
    std::fs::write(dir.join("notes.txt"), "the user's notes").unwrap();
    std::fs::create_dir(dir.join("folder")).unwrap();
    std::fs::write(dir.join("folder/data.csv"), "1,2,3").unwrap();
    vec![
        (fifo, "a FIFO"),
        (dir.join("link"), "a symbolic link"),
        (dir.join("notes.txt"), "a file of another kind"),
        (dir.join("folder"), "a directory"),
    ]
}

/// Asserts that the entries of [`foreign_entries`] in `dir` are as they were made.
#[cfg(unix)]
pub fn assert_foreign_entries_intact(dir: &std::path::Path) {
    use std::os::unix::fs::FileTypeExt;
    let kind = |name: &str| std::fs::symlink_metadata(dir.join(name)).unwrap().file_type();
    assert!(kind("fifo").is_fifo(), "the FIFO is left alone");
    assert!(kind("link").is_symlink(), "the link is not replaced");
    let read = |name: &str| std::fs::read_to_string(dir.join(name)).unwrap();
    assert_eq!(
        read("device"),
        "stands for /dev/null",
        "nothing is written through the link"
    );
    assert_eq!(read("notes.txt"), "the user's notes");
    assert_eq!(read("folder/data.csv"), "1,2,3");
}
pub mod server;
