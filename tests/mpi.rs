//! Training over MPI ranks (`--features mpi`; `mpirun` from Open MPI on the PATH): 2 ranks train
//! as one process does, a checkpoint resumes with another number of ranks, a killed rank leaves
//! the last checkpoint loadable, and bad starts are refused with a clear message. Without the
//! feature: mpirun's environment gets "rebuild with --features mpi".

use std::path::Path;
use std::process::Output;

mod common;
use common::{gpt2, temp_dir};

/// A two-block model with dropout and a gradient clip that binds, trained in a second.
const TINY: [&str; 20] = [
    "--n-layer",
    "2",
    "--n-embd",
    "32",
    "--n-head",
    "2",
    "--block-size",
    "16",
    "--batch-size",
    "4",
    "--dropout",
    "0.1",
    "--grad-clip",
    "0.5",
    "--eval-iters",
    "2",
    "--eval-interval",
    "10",
    "--sample-tokens",
    "5",
];

/// `gpt2 train` with the tiny model, its cache in `dir` and its run in `dir/run`; the flags of
/// `extra` replace those of [`TINY`].
fn train_args(dir: &Path, run: &str, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = ["train", "--cache-dir"].map(String::from).to_vec();
    args.push(dir.join("cache").display().to_string());
    for pair in TINY.chunks(2).filter(|pair| !extra.contains(&pair[0])) {
        args.extend(pair.iter().map(|s| s.to_string()));
    }
    args.extend(["--out-dir".into(), dir.join(run).display().to_string()]);
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

fn text(output: &Output) -> String {
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[cfg(not(feature = "mpi"))]
#[test]
fn mpirun_without_the_feature_says_to_rebuild_with_it() {
    let dir = temp_dir("mpi-missing");
    let output = gpt2()
        .args(train_args(&dir, "run", &["--max-iters", "1"]))
        .env("OMPI_COMM_WORLD_SIZE", "2")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    assert!(text(&output).contains("Rebuild with `cargo build --release --features mpi`"));
    assert!(!dir.join("run").exists(), "nothing was trained");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[cfg(feature = "mpi")]
mod ranks {
    use super::*;
    use gpt2::train::checkpoint;
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    /// The tests of this file run one at a time: each starts 2 ranks.
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

    fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
        ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `mpirun -np N gpt2 ARGS`, as CI can run it (as root, on fewer cores than ranks).
    fn mpirun(ranks: usize, args: &[String]) -> Command {
        let mut cmd = Command::new("mpirun");
        cmd.args(["--oversubscribe", "--allow-run-as-root", "-np", &ranks.to_string()])
            .arg(env!("CARGO_BIN_EXE_gpt2"))
            .args(args);
        cmd
    }

    /// One process: `gpt2 --threads 1 ARGS`.
    fn alone(args: &[String]) -> Command {
        let mut cmd = gpt2();
        cmd.args(["--threads", "1"]).args(args);
        cmd
    }

    fn run(mut cmd: Command) -> String {
        let output = cmd.output().unwrap();
        assert!(output.status.success(), "{}", text(&output));
        text(&output)
    }

    /// The step records of a run's metrics.jsonl: (step, train loss).
    fn train_losses(run: &Path) -> Vec<(u64, f64)> {
        std::fs::read_to_string(run.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap())
            .filter(|record| record.get("grad_norm").is_some())
            .map(|record| (record["step"].as_u64().unwrap(), record["train_loss"].as_f64().unwrap()))
            .collect()
    }

    /// Asserts that `a` and `b` agree within 1e-5 of their largest magnitude.
    fn assert_close(what: &str, a: &[f32], b: &[f32]) {
        assert_eq!(a.len(), b.len(), "{what}: lengths");
        let scale = a.iter().fold(0.0f32, |m, x| m.max(x.abs()));
        let (i, worst) = a
            .iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .enumerate()
            .fold((0, 0.0f32), |w, (i, d)| if d > w.1 { (i, d) } else { w });
        assert!(
            worst <= 1e-5 * scale,
            "{what}: element {i} differs by {worst} ({} vs {}), more than 1e-5 of {scale}",
            a[i],
            b[i]
        );
    }

    /// The checkpoints `latest/` of two runs hold the same model and optimizer state.
    fn assert_same_checkpoint(what: &str, a: &Path, b: &Path) {
        let (a, b) = (
            checkpoint::load(&a.join("latest")).unwrap(),
            checkpoint::load(&b.join("latest")).unwrap(),
        );
        assert_eq!(a.state.step, b.state.step, "{what}: steps");
        assert_eq!(a.state.optimizer_step, b.state.optimizer_step, "{what}: AdamW's t");
        assert_close(&format!("{what}: parameters"), &a.model.params, &b.model.params);
        assert_close(&format!("{what}: AdamW m"), &a.optimizer_m, &b.optimizer_m);
        assert_close(&format!("{what}: AdamW v"), &a.optimizer_v, &b.optimizer_v);
    }

    fn assert_same_losses(what: &str, a: &Path, b: &Path) {
        let (a, b) = (train_losses(a), train_losses(b));
        assert_eq!(a.len(), b.len(), "{what}: steps logged");
        for ((step, x), (_, y)) in a.iter().zip(&b) {
            assert!((x - y).abs() <= 1e-5 * x.abs(), "{what}: step {step}: loss {x} vs {y}");
        }
    }

    #[test]
    fn two_ranks_train_as_one_process_does_and_checkpoints_resume_with_either() {
        let _serial = one_at_a_time();
        let dir = temp_dir("mpi-same");
        let args = |run: &str, iters: &str| train_args(&dir, run, &["--max-iters", iters]);
        run(alone(&args("alone", "20")));
        let stdout = run(mpirun(2, &args("ranked", "20")));
        assert!(stdout.contains("ranks: 2 processes"), "{stdout}");
        assert_eq!(
            stdout.matches("sample at step 20").count(),
            1,
            "rank 0 alone reports\n{stdout}"
        );
        assert_same_losses("2 ranks vs 1", &dir.join("alone"), &dir.join("ranked"));
        assert_same_checkpoint("2 ranks vs 1", &dir.join("alone"), &dir.join("ranked"));

        // 2 ranks to step 10, then 1 process to 20; and the other way round.
        for (first, then, name) in [(2, 1, "2then1"), (1, 2, "1then2")] {
            let half = args(name, "10");
            match first {
                1 => run(alone(&half)),
                _ => run(mpirun(first, &half)),
            };
            let resume = [
                "train".to_string(),
                "--resume".into(),
                dir.join(name).display().to_string(),
                "--max-iters".into(),
                "20".into(),
            ];
            match then {
                1 => run(alone(&resume)),
                _ => run(mpirun(then, &resume)),
            };
            let what = format!("{first} ranks then {then}");
            assert_same_losses(&what, &dir.join("alone"), &dir.join(name));
            assert_same_checkpoint(&what, &dir.join("alone"), &dir.join(name));
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// The PID of rank `rank`, a child of mpirun `parent`.
    fn rank_pid(parent: u32, rank: usize) -> Option<u32> {
        std::fs::read_dir("/proc").ok()?.flatten().find_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
            let ppid: u32 = stat.rsplit(')').next()?.split_whitespace().nth(1)?.parse().ok()?;
            let environ = std::fs::read(entry.path().join("environ")).ok()?;
            let wanted = format!("OMPI_COMM_WORLD_RANK={rank}");
            let is_rank = environ.split(|&b| b == 0).any(|var| var == wanted.as_bytes());
            (ppid == parent && is_rank).then_some(pid)
        })
    }

    #[test]
    fn a_killed_rank_stops_the_run_and_leaves_the_last_checkpoint_loadable() {
        let _serial = one_at_a_time();
        let dir = temp_dir("mpi-kill");
        let child = mpirun(
            2,
            &train_args(&dir, "run", &["--max-iters", "1000000", "--eval-interval", "5"]),
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
        let state = dir.join("run/latest").join(checkpoint::TRAINER_FILE);
        let start = Instant::now();
        while !state.is_file() {
            assert!(start.elapsed() < Duration::from_secs(120), "no checkpoint");
            std::thread::sleep(Duration::from_millis(20));
        }
        let rank1 = rank_pid(child.id(), 1).expect("rank 1 is a child of mpirun");
        let killed = Command::new("kill")
            .args(["-KILL", &rank1.to_string()])
            .status()
            .unwrap();
        assert!(killed.success());
        let output = child.wait_with_output().unwrap();
        let all = text(&output);
        assert!(!output.status.success(), "{all}");
        assert!(
            all.contains("rank 0: stopped by mpirun") && all.contains("the last checkpoint"),
            "rank 0 says what is left:\n{all}"
        );
        let saved = checkpoint::load(&dir.join("run/latest")).unwrap();
        assert!(
            saved.state.step >= 5 && saved.state.step.is_multiple_of(5),
            "{}",
            saved.state.step
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bad_starts_are_refused_with_a_clear_message() {
        let _serial = one_at_a_time();
        let dir = temp_dir("mpi-bad");
        let refused = |cmd: &mut Command, expected: &str| {
            let output = cmd.output().unwrap();
            assert!(!output.status.success(), "{}", text(&output));
            assert!(
                text(&output).contains(expected),
                "expected {expected:?} in\n{}",
                text(&output)
            );
        };
        let uneven = train_args(&dir, "uneven", &["--max-iters", "1", "--batch-size", "3"]);
        refused(
            &mut mpirun(2, &uneven),
            "--batch-size 3 is not divisible by the 2 ranks",
        );
        let small = train_args(&dir, "small", &["--max-iters", "1", "--batch-size", "1"]);
        refused(&mut mpirun(2, &small), "2 ranks for a batch of 1 rows");
        // Two programs in one mpirun: ranks with different flags.
        let mut mixed = Command::new("mpirun");
        mixed.args(["--oversubscribe", "--allow-run-as-root"]);
        for (i, seed) in ["1", "2"].into_iter().enumerate() {
            if i > 0 {
                mixed.arg(":");
            }
            mixed.args(["-np", "1", env!("CARGO_BIN_EXE_gpt2")]).args(train_args(
                &dir,
                "mixed",
                &["--max-iters", "1", "--seed", seed],
            ));
        }
        refused(&mut mixed, "rank(s) 1 were started with other settings");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
