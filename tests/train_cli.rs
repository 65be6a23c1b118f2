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

/// A one-block model that trains in milliseconds.
const TINY: [&str; 12] = [
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

#[test]
fn piped_output_logs_every_log_interval_steps() {
    let dir = temp_dir("log-interval");
    // The test's stdout is a pipe: no progress bar, so the log lines are printed.
    let output = train(&dir, &TINY)
        .args(["--max-iters", "7", "--log-interval", "3", "--sample-tokens", "5"])
        .output()
        .unwrap();
    let (stdout, stderr) = text(&output);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    let logged: Vec<&str> = stdout.lines().filter(|l| l.contains("ms/step")).collect();
    assert_eq!(logged.len(), 3, "steps 0, 3 and 6:\n{stdout}");
    for (line, step) in logged.iter().zip([0, 3, 6]) {
        assert!(line.starts_with(&format!("step {step}: loss ")), "{line}");
        assert!(line.contains(" lr ") && line.ends_with("tokens/s"), "{line}");
    }
    let quiet = train(&dir, &TINY)
        .args(["--max-iters", "2", "--log-interval", "0", "--sample-tokens", "5"])
        .output()
        .unwrap();
    assert!(!text(&quiet).0.contains("ms/step"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_run_with_nothing_to_train_says_so() {
    let dir = temp_dir("nothing-to-train");
    let output = train(&dir, &TINY)
        .args(["--max-iters", "2", "--sample-tokens", "5"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{:?}", text(&output));
    for max_iters in ["2", "1"] {
        let resumed = gpt2()
            .args(["--threads", "1", "train", "--resume"])
            .arg(dir.join("run"))
            .args(["--max-iters", max_iters])
            .output()
            .unwrap();
        let (stdout, stderr) = text(&resumed);
        assert!(resumed.status.success(), "{stdout}\n{stderr}");
        assert!(
            stdout.contains(&format!("the run is already at step 2 and --max-iters is {max_iters}"))
                && stdout.contains("--max-iters N (N > 2)"),
            "{stdout}"
        );
    }
    let fresh = temp_dir("nothing-to-train-new");
    let output = train(&fresh, &TINY).args(["--max-iters", "0"]).output().unwrap();
    let (stdout, stderr) = text(&output);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("--max-iters is 0, so nothing was trained"), "{stdout}");
    std::fs::remove_dir_all(&dir).unwrap();
    std::fs::remove_dir_all(&fresh).unwrap();
}

#[test]
fn negative_numbers_reach_the_range_checks() {
    let dir = temp_dir("negative");
    for (flag, value) in [("--lr", "-1"), ("--dropout", "-0.5"), ("--val-fraction", "-0.1")] {
        let output = train(&dir, &[flag, value]).output().unwrap();
        let (_, stderr) = text(&output);
        assert_eq!(output.status.code(), Some(1), "{flag} {value}: {stderr}");
        assert!(!stderr.contains("unexpected argument"), "{flag} {value}: {stderr}");
    }
    // An unsigned flag: clap's own message, naming the flag and the value.
    let output = train(&dir, &["--max-iters", "-1"]).output().unwrap();
    let (_, stderr) = text(&output);
    assert!(stderr.contains("--max-iters") && stderr.contains("-1"), "{stderr}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_main_job_ends_with_the_command_to_try_next() {
    let dir = temp_dir("next-command");
    let output = gpt2()
        .current_dir(&dir)
        .args([
            "--threads",
            "1",
            "train",
            "--max-iters",
            "1",
            "--sample-tokens",
            "5",
            "--cache-dir",
        ])
        .arg(dir.join("cache"))
        .args(TINY)
        .output()
        .unwrap();
    let (stdout, stderr) = text(&output);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    // The test's binary lies under target/, so the command is cargo's.
    let next = "next, try:  cargo run --release -- generate --model runs/latest --prompt \"ROMEO:\"";
    assert!(stdout.trim_end().ends_with(next), "{stdout}");
    assert!(dir.join("runs/latest/latest/model.safetensors").is_file());
    std::fs::remove_dir_all(&dir).unwrap();
}
