//! `gpt2 train` as a user runs it: the defaults, a TOML config with flags over it, Ctrl-C, and
//! errors on bad input.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{gpt2, temp_dir};

/// `gpt2 train` with a temporary cache and run directory, and `args`.
fn train(dir: &Path, args: &[&str]) -> Command {
    let mut cmd = gpt2();
    cmd.args(["--threads", "1", "train", "--cache-dir"])
        .arg(dir.join("cache"))
        .arg("--out-dir")
        .arg(dir.join("run"))
        .args(args);
    cmd
}

fn text(output: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn the_defaults_train_on_the_bundled_corpus_and_say_where_everything_is() {
    let dir = temp_dir("defaults");
    let output = train(
        &dir,
        &["--max-iters", "2", "--eval-iters", "1", "--sample-tokens", "20"],
    )
    .output()
    .unwrap();
    let (stdout, stderr) = text(&output);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("tokenizer char (65 ids)") && stdout.contains("4 layers, 4 heads, 128 wide, context 64"),
        "{stdout}"
    );
    for expected in ["sample at step 2:", "checkpoint: ", "loss plot:", "metrics:"] {
        assert!(stdout.contains(expected), "missing {expected:?} in\n{stdout}");
    }
    assert!(dir.join("run/latest/model.safetensors").is_file() && dir.join("run/loss.png").is_file());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_toml_config_sets_the_keys_and_flags_override_it() {
    let dir = temp_dir("toml");
    std::fs::write(
        dir.join("c.toml"),
        "n_layer = 1\nn_embd = 32\nn_head = 2\nblock_size = 16\nbatch_size = 2\nmax_iters = 50\neval_iters = 1\n",
    )
    .unwrap();
    let output = train(
        &dir,
        &[
            "--config",
            dir.join("c.toml").to_str().unwrap(),
            "--max-iters",
            "3",
            "--sample-tokens",
            "5",
        ],
    )
    .output()
    .unwrap();
    let (stdout, stderr) = text(&output);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("1 layers, 2 heads, 32 wide, context 16") && stdout.contains("sample at step 3:"),
        "{stdout}"
    );

    std::fs::write(dir.join("bad.toml"), "n_layer = 1\nlearning_rat = 0.1\n").unwrap();
    let output = train(&dir, &["--config", dir.join("bad.toml").to_str().unwrap()])
        .output()
        .unwrap();
    let (_, stderr) = text(&output);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr.contains("bad.toml") && stderr.contains("line 2") && stderr.contains("learning_rat"),
        "{stderr}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_non_utf8_corpus_is_an_error_naming_the_file_and_offset() {
    let dir = temp_dir("utf8");
    std::fs::write(dir.join("bad.txt"), b"hello\n\xff\xfe").unwrap();
    let output = train(&dir, &["--data", dir.join("bad.txt").to_str().unwrap()])
        .output()
        .unwrap();
    let (_, stderr) = text(&output);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr.starts_with("error: ") && stderr.contains("bad.txt: not UTF-8 text: byte 0xFF at offset 6"),
        "{stderr}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[cfg(unix)]
#[test]
fn ctrl_c_saves_a_checkpoint_that_resumes() {
    let dir = temp_dir("ctrlc");
    let tiny = [
        "--n-layer",
        "1",
        "--n-embd",
        "16",
        "--n-head",
        "2",
        "--block-size",
        "16",
        "--batch-size",
        "2",
        "--eval-iters",
        "1",
    ];
    let child = train(&dir, &tiny)
        .args(["--max-iters", "1000000"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until it is training (a few steps logged), then interrupt it.
    let metrics = dir.join("run/metrics.jsonl");
    let start = Instant::now();
    while std::fs::read_to_string(&metrics).map_or(0, |t| t.lines().count()) < 5 {
        assert!(start.elapsed() < Duration::from_secs(60), "training did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let killed = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let output = child.wait_with_output().unwrap();
    let (stdout, stderr) = text(&output);
    assert_eq!(output.status.code(), Some(130), "{stdout}\n{stderr}");
    assert!(stdout.contains("continue with: gpt2 train --resume"), "{stdout}");
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("run/latest/trainer.json")).unwrap()).unwrap();
    let step = state["step"].as_u64().unwrap();
    assert!(step >= 4, "saved at step {step}");

    let resumed = gpt2()
        .args(["--threads", "1", "train", "--resume"])
        .arg(dir.join("run"))
        .args(["--max-iters", &(step + 2).to_string()])
        .output()
        .unwrap();
    let (stdout, stderr) = text(&resumed);
    assert!(resumed.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains(&format!("at step {step}")) && stdout.contains(&format!("sample at step {}:", step + 2)),
        "{stdout}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn sizes_and_numbers_out_of_range_are_errors_naming_the_flag_before_anything_is_allocated() {
    let dir = temp_dir("ranges");
    let cases: [(&[&str], &str); 12] = [
        (
            &["--block-size", "100000"],
            "lower --batch-size (now 12) or --block-size (now 100000)",
        ),
        (&["--batch-size", "10000000"], "lower --batch-size (now 10000000)"),
        (
            &["--lr", "NaN"],
            "invalid value 'NaN' for '--lr <LR>': NaN is not a finite number",
        ),
        (&["--lr", "inf"], "'--lr <LR>': inf is not a finite number"),
        (&["--min-lr=-inf"], "'--min-lr <MIN_LR>': -inf is not a finite number"),
        (&["--dropout", "NaN"], "'--dropout <DROPOUT>'"),
        (&["--val-fraction", "NaN"], "'--val-fraction <VAL_FRACTION>'"),
        (&["--grad-clip", "inf"], "'--grad-clip <GRAD_CLIP>'"),
        (&["--beta2", "NaN"], "'--beta2 <BETA2>'"),
        (&["--temperature", "NaN"], "'--temperature <TEMPERATURE>'"),
        (
            &["--warmup-iters", "18446744073709551615"],
            "'--warmup-iters <WARMUP_ITERS>': 18446744073709551615 is more than the maximum of 1099511627776",
        ),
        (
            &["--data-parallel", "5000"],
            "data_parallel must be at most 1024 batch shards, got 5000",
        ),
    ];
    for (args, message) in cases {
        let output = train(&dir, args).output().unwrap();
        let (_, stderr) = text(&output);
        assert!(!output.status.success(), "{args:?}");
        assert!(
            stderr.contains(message) && !stderr.contains("panicked"),
            "{args:?}: {stderr}"
        );
        assert!(!dir.join("run").exists(), "{args:?}: no run directory");
    }
    let output = gpt2()
        .args(["--threads", "100000", "train", "--batch-size", "0"])
        .output()
        .unwrap();
    let (_, stderr) = text(&output);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr.contains("'--threads <THREADS>': 100000 is more than the maximum of"),
        "{stderr}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn more_shards_than_batch_rows_are_capped_with_a_note() {
    let dir = temp_dir("shards");
    let tiny = [
        "--n-layer",
        "1",
        "--n-embd",
        "16",
        "--n-head",
        "1",
        "--block-size",
        "8",
        "--batch-size",
        "2",
        "--max-iters",
        "1",
        "--eval-iters",
        "1",
        "--sample-tokens",
        "1",
        "--data-parallel",
        "8",
    ];
    let output = train(&dir, &tiny).output().unwrap();
    let (stdout, stderr) = text(&output);
    assert!(output.status.success(), "{stderr}");
    assert!(
        stdout.contains("note: --data-parallel 8 is more shards than the batch has rows; using 2")
            && stdout.contains("in 2 batch shards"),
        "{stdout}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
