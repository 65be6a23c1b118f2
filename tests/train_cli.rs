//! `gpt2 train` as a user runs it: the defaults, a TOML config with flags over it, Ctrl-C,
//! SIGKILL at any moment, and errors on bad input.

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
    let child = train(&dir, &TINY)
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

/// A tiny run with a checkpoint every 2 steps, in `out`: started, or resumed once it has one.
#[cfg(unix)]
fn checkpointing_run(dir: &Path, out: &Path) -> Command {
    let mut cmd = gpt2();
    cmd.args(["--threads", "1", "train"]);
    if out.join("latest/trainer.json").is_file() {
        cmd.arg("--resume").arg(out);
        return cmd;
    }
    cmd.arg("--cache-dir")
        .arg(dir.join("cache"))
        .arg("--out-dir")
        .arg(out)
        .args([
            "--n-layer",
            "1",
            "--n-embd",
            "16",
            "--n-head",
            "2",
            "--block-size",
            "16",
            "--batch-size",
            "4",
            "--max-iters",
            "100",
            "--eval-interval",
            "2",
            "--eval-iters",
            "1",
            "--sample-tokens",
            "4",
        ]);
    cmd
}

/// The temporary entries (`.NAME.tmp-PID`) of the process `pid` in `dir`.
#[cfg(unix)]
fn temporaries_of(dir: &Path, pid: u32) -> Vec<String> {
    let suffix = format!(".tmp-{pid}");
    std::fs::read_dir(dir).map_or(Vec::new(), |entries| {
        entries
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|name| name.ends_with(&suffix))
            .collect()
    })
}

#[cfg(unix)]
#[test]
fn a_run_killed_at_twenty_moments_ends_with_the_parameters_of_an_uninterrupted_one() {
    use std::io::BufRead;
    let dir = temp_dir("kill");
    let (straight, killed) = (dir.join("straight"), dir.join("killed"));
    let output = checkpointing_run(&dir, &straight).output().unwrap();
    assert!(output.status.success(), "{}", text(&output).1);

    // Deterministic moments (splitmix64), each a few milliseconds after an event of the run, so
    // that every run is killed long before it could finish: even kills 0-15 ms after its 1st to 3rd
    // evaluation (then it writes checkpoints and trains), odd ones once it has begun writing a
    // checkpoint.
    let mut state = 0x6b69_6c6c_u64;
    let mut uniform = move || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        (z ^ (z >> 31)) as f64 / u64::MAX as f64
    };
    let clock = Instant::now();
    let mut during_writes = 0;
    for i in 0..20 {
        let mut child = checkpointing_run(&dir, &killed)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let pid = child.id();
        if i % 2 == 0 {
            let evals = 1 + (uniform() * 3.0) as usize;
            let stdout = std::io::BufReader::new(child.stdout.take().unwrap());
            let mut eval_lines = stdout.lines().map_while(Result::ok).filter(|l| l.contains("val loss"));
            for _ in 0..evals {
                eval_lines.next();
            }
            std::thread::sleep(Duration::from_secs_f64(0.015 * uniform()));
        } else {
            let writing = |name: &String| name.starts_with(".latest.") || name.starts_with(".best.");
            while !temporaries_of(&killed, pid).iter().any(writing) && child.try_wait().unwrap().is_none() {
                assert!(clock.elapsed() < Duration::from_secs(120), "no checkpoint write seen");
                std::thread::sleep(Duration::from_micros(200));
            }
            std::thread::sleep(Duration::from_secs_f64(0.002 * uniform()));
        }
        if let Some(status) = child.try_wait().unwrap() {
            let output = child.wait_with_output().unwrap();
            panic!("run {i} ended before its kill ({status}): {}", text(&output).1);
        }
        during_writes += usize::from(!temporaries_of(&killed, pid).is_empty());
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let latest = killed.join("latest");
        if latest.exists() {
            if let Err(e) = gpt2::train::checkpoint::load(&latest) {
                panic!("after kill {i}: the latest checkpoint does not load: {e}");
            }
        }
    }
    let output = checkpointing_run(&dir, &killed).output().unwrap();
    assert!(output.status.success(), "{}", text(&output).1);
    eprintln!("20 kills, {during_writes} of them while a temporary file was being written");
    for file in ["model.safetensors", "optimizer.safetensors"] {
        assert!(
            std::fs::read(straight.join("latest").join(file)).unwrap()
                == std::fs::read(killed.join("latest").join(file)).unwrap(),
            "{file} differs from the uninterrupted run's"
        );
    }
    let left: Vec<String> = std::fs::read_dir(&killed)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.contains(".tmp-"))
        .collect();
    assert!(left.is_empty(), "temporaries of killed runs are removed: {left:?}");
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
    let shards = ["--max-iters", "1", "--sample-tokens", "1", "--data-parallel", "8"];
    let output = train(&dir, &[&TINY[..], &shards].concat()).output().unwrap();
    let (stdout, stderr) = text(&output);
    assert!(output.status.success(), "{stderr}");
    assert!(
        stdout.contains("note: --data-parallel 8 is more shards than the batch has rows; using 2")
            && stdout.contains("in 2 batch shards"),
        "{stdout}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bf16_products_say_which_precision_runs_and_why() {
    let dir = temp_dir("precision");
    let run = |kernel: Option<&str>, precision: &str| {
        let flags = ["--max-iters", "1", "--sample-tokens", "1", "--precision", precision];
        let mut cmd = train(&dir, &[&TINY[..], &flags].concat());
        if let Some(kernel) = kernel {
            cmd.env("GPT2_KERNEL", kernel);
        }
        std::fs::remove_dir_all(dir.join("run")).ok();
        cmd.output().unwrap()
    };
    // Forced off the AVX512-BF16 kernel (or on a CPU without it), a bf16 run says it multiplies in f32.
    let output = run(Some("scalar"), "bf16");
    let (stdout, stderr) = text(&output);
    assert!(output.status.success(), "{stderr}");
    assert!(
        stdout.contains(
            "note: --precision bf16: GPT2_KERNEL=scalar rules out the amx and avx512bf16 kernels, so the products run in f32"
        ) && stdout.contains("f32 products"),
        "{stdout}"
    );
    if gpt2::ops::matmul_bf16::TileKernel::accelerated() {
        let output = run(None, "bf16");
        let (stdout, stderr) = text(&output);
        assert!(output.status.success(), "{stderr}");
        assert!(
            stdout.contains("bf16 products") && !stdout.contains("note: --precision"),
            "{stdout}"
        );
    }
    let output = run(None, "fp8");
    let (_, stderr) = text(&output);
    assert!(
        !output.status.success() && stderr.contains("unknown precision 'fp8': expected f32 or bf16"),
        "{stderr}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
