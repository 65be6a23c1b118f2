//! The training loop end to end on a tiny model: exact resume, run directory contents,
//! fine-tuning, and every bad input of the training issue as a clear error that leaves the
//! existing checkpoint intact.

use gpt2::io::load_model;
use gpt2::train::{Overrides, RunOptions, Summary, TrainConfig, Trainer};
use std::path::{Path, PathBuf};

mod common;
use common::temp_dir;

/// A small corpus with some structure to learn (about 3,000 characters).
fn write_corpus(dir: &Path) -> PathBuf {
    let lines = [
        "the cat sat on the mat.\n",
        "a dog ran in the fog!\n",
        "we see the sea, you see?\n",
    ];
    let text: String = (0..40).map(|i| lines[i * 7 % 3]).collect::<String>() + "THE END\n";
    let path = dir.join("corpus.txt");
    std::fs::write(&path, text).unwrap();
    path
}

/// A tiny run: 2 layers, width 16, context 16, dropout and gradient accumulation on.
fn tiny(dir: &Path) -> TrainConfig {
    TrainConfig {
        data: vec![write_corpus(dir)],
        cache_dir: Some(dir.join("cache")),
        out_dir: Some(dir.join("run")),
        n_layer: Some(2),
        n_head: Some(2),
        n_embd: Some(16),
        block_size: Some(16),
        dropout: 0.1,
        batch_size: 4,
        grad_accum: 2,
        max_iters: 12,
        warmup_iters: 2,
        lr: 3e-3,
        eval_interval: 5,
        eval_iters: 2,
        sample_tokens: 8,
        ..TrainConfig::default()
    }
}

fn train(config: TrainConfig, stop_at: Option<usize>) -> Summary {
    Trainer::new(config)
        .unwrap()
        .run(
            &RunOptions {
                stop_at,
                interrupt: None,
            },
            &mut |_| {},
        )
        .unwrap()
}

fn resume(run_dir: &Path, overrides: &Overrides) -> Summary {
    Trainer::resume(run_dir, overrides)
        .unwrap()
        .run(&RunOptions::default(), &mut |_| {})
        .unwrap()
}

fn read(path: impl AsRef<Path>) -> Vec<u8> {
    std::fs::read(path.as_ref()).unwrap_or_else(|e| panic!("{}: {e}", path.as_ref().display()))
}

/// The metrics log as JSON values.
fn metrics(run_dir: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(run_dir.join("metrics.jsonl")).unwrap();
    text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// (train loss, grad norm) of each step.
type StepLosses = Vec<(f64, f64)>;
/// (step, train loss, val loss) of each evaluation.
type EvalLosses = Vec<(u64, f64, f64)>;

/// The losses in a run's metrics log.
fn losses(run_dir: &Path) -> (StepLosses, EvalLosses) {
    let records = metrics(run_dir);
    let steps = records
        .iter()
        .filter(|r| r.get("val_loss").is_none())
        .map(|r| (r["train_loss"].as_f64().unwrap(), r["grad_norm"].as_f64().unwrap()))
        .collect();
    let evals = records
        .iter()
        .filter(|r| r.get("val_loss").is_some())
        .map(|r| {
            (
                r["step"].as_u64().unwrap(),
                r["train_loss"].as_f64().unwrap(),
                r["val_loss"].as_f64().unwrap(),
            )
        })
        .collect();
    (steps, evals)
}

#[test]
fn a_run_stopped_at_any_step_and_resumed_matches_an_uninterrupted_run_bit_for_bit() {
    // Random windows stopped between evaluations; strided windows stopped at an evaluation.
    for (stride, stop) in [(None, 7), (Some(5), 10)] {
        let dir = temp_dir(&format!("resume-{stop}"));
        let straight = TrainConfig { stride, ..tiny(&dir) };
        train(straight.clone(), None);
        let stopped = TrainConfig {
            out_dir: Some(dir.join("stopped")),
            ..straight
        };
        let summary = train(stopped, Some(stop));
        assert!(summary.stopped && summary.step == stop);
        let summary = resume(&dir.join("stopped"), &Overrides::new());
        assert!(!summary.stopped && summary.step == 12);

        for file in ["model.safetensors", "optimizer.safetensors"] {
            assert!(
                read(dir.join("run/latest").join(file)) == read(dir.join("stopped/latest").join(file)),
                "{file} differs (stop at {stop})"
            );
        }
        assert_eq!(
            losses(&dir.join("run")),
            losses(&dir.join("stopped")),
            "losses differ (stop at {stop})"
        );
        let (steps, evals) = losses(&dir.join("run"));
        assert_eq!(steps.len(), 12);
        assert_eq!(evals.iter().map(|e| e.0).collect::<Vec<_>>(), [0, 5, 10, 12]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

#[test]
fn batch_shards_resume_bit_for_bit_on_another_number_of_threads() {
    let dir = temp_dir("shards");
    // 3 shards of a batch of 4 (uneven), with dropout and gradient accumulation.
    let straight = TrainConfig {
        data_parallel: Some(3),
        ..tiny(&dir)
    };
    let summary = train(straight.clone(), None);
    assert!(summary.last_eval.unwrap().val_loss.is_finite());
    let stopped = TrainConfig {
        out_dir: Some(dir.join("stopped")),
        ..straight
    };
    train(stopped, Some(6));
    let one_thread = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
    one_thread.install(|| resume(&dir.join("stopped"), &Overrides::new()));
    for file in ["model.safetensors", "optimizer.safetensors"] {
        assert!(
            read(dir.join("run/latest").join(file)) == read(dir.join("stopped/latest").join(file)),
            "{file} differs"
        );
    }
    assert_eq!(losses(&dir.join("run")), losses(&dir.join("stopped")));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_run_learns_and_leaves_checkpoints_logs_and_plots() {
    let dir = temp_dir("layout");
    let config = TrainConfig {
        max_iters: 40,
        eval_interval: 20,
        dropout: 0.0,
        ..tiny(&dir)
    };
    let mut trainer = Trainer::new(config.clone()).unwrap();
    assert!(!trainer.info().cached);
    let summary = trainer.run(&RunOptions::default(), &mut |_| {}).unwrap();
    let run = dir.join("run");
    for ckpt in ["latest", "best"] {
        for file in [
            "config.json",
            "model.safetensors",
            "optimizer.safetensors",
            "trainer.json",
            "tokenizer.json",
        ] {
            assert!(run.join(ckpt).join(file).is_file(), "{ckpt}/{file}");
        }
    }
    assert!(read(run.join("loss.png")).starts_with(b"\x89PNG"));
    assert!(String::from_utf8(read(run.join("loss.svg"))).unwrap().contains("<svg"));

    let (steps, evals) = losses(&run);
    assert_eq!(steps.len(), 40);
    let (first, last) = (evals.first().unwrap(), evals.last().unwrap());
    assert!(last.2 < first.2 - 0.5, "val loss fell from {} to {}", first.2, last.2);
    assert_eq!(summary.best_val_loss, Some(last.2 as f32));
    let record = &metrics(&run)[1];
    for key in ["step", "train_loss", "lr", "grad_norm", "tokens_per_s", "elapsed_s"] {
        assert!(record.get(key).is_some(), "step lines have {key}");
    }
    let eval = metrics(&run).into_iter().last().unwrap();
    assert!(eval["val_perplexity"].as_f64().unwrap() > 1.0 && !eval["sample"].as_str().unwrap().is_empty());

    // The checkpoint is a Hugging Face model directory, and a run directory loads as its latest.
    let loaded = load_model(&run).unwrap();
    assert!(loaded.params == trainer.model().params);
    // A second run on the same text takes the token shard from the cache.
    let again = Trainer::new(TrainConfig {
        out_dir: Some(dir.join("again")),
        ..config
    })
    .unwrap();
    assert!(again.info().cached && again.info().shard == trainer.info().shard);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn fine_tuning_starts_from_a_checkpoint_with_its_tokenizer() {
    let dir = temp_dir("init");
    train(
        TrainConfig {
            max_iters: 5,
            ..tiny(&dir)
        },
        None,
    );
    let base = load_model(&dir.join("run")).unwrap();
    let init = TrainConfig {
        init: Some(dir.join("run")),
        n_layer: None,
        n_head: None,
        n_embd: None,
        block_size: Some(8),
        out_dir: Some(dir.join("tuned")),
        max_iters: 1,
        ..tiny(&dir)
    };
    let trainer = Trainer::new(init.clone()).unwrap();
    assert!(
        trainer.model().params == base.params,
        "starts from the checkpoint's weights"
    );
    assert_eq!(
        trainer.info().tokenizer,
        format!("char:{}", dir.join("run/latest").display())
    );
    let err = Trainer::new(TrainConfig {
        n_layer: Some(3),
        out_dir: Some(dir.join("t2")),
        ..init
    })
    .err()
    .unwrap()
    .to_string();
    assert!(err.contains("n_layer = 3 does not match the --init model's 2"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The message of a failed `Trainer::new`.
fn new_error(config: TrainConfig) -> String {
    match Trainer::new(config) {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn bad_corpora_are_clear_errors_that_name_the_file() {
    let dir = temp_dir("corpus");
    let with_data = |path: PathBuf| TrainConfig {
        data: vec![path],
        ..tiny(&dir)
    };
    let err = new_error(with_data(dir.join("missing.txt")));
    assert!(err.contains("missing.txt") && err.contains("No such file"), "{err}");
    std::fs::write(dir.join("empty.txt"), "").unwrap();
    let err = new_error(with_data(dir.join("empty.txt")));
    assert!(err.contains("empty.txt: the file is empty"), "{err}");
    std::fs::write(dir.join("latin1.txt"), b"caf\xe9 au lait").unwrap();
    let err = new_error(with_data(dir.join("latin1.txt")));
    assert!(
        err.contains("latin1.txt: not UTF-8 text: byte 0xE9 at offset 3"),
        "{err}"
    );
    std::fs::write(dir.join("short.txt"), "too short").unwrap();
    let err = new_error(with_data(dir.join("short.txt")));
    assert!(
        err.contains("9 tokens long, shorter than one block") && err.contains("17 tokens"),
        "{err}"
    );
    std::fs::write(dir.join("small.txt"), "x".repeat(100)).unwrap();
    let err = new_error(with_data(dir.join("small.txt")));
    assert!(
        err.contains("validation split") && err.contains("10 tokens") && err.contains("too small to evaluate"),
        "{err}"
    );
    assert!(!dir.join("run").exists(), "no run directory is made for a bad corpus");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_prompt_outside_the_vocabulary_and_an_unusable_output_directory_are_errors() {
    let dir = temp_dir("prompt");
    let err = new_error(TrainConfig {
        prompt: "ROMEO:".into(),
        ..tiny(&dir)
    });
    assert!(err.contains("sample prompt") && err.contains("'R'"), "{err}");
    std::fs::write(dir.join("file"), "not a directory").unwrap();
    let err = new_error(TrainConfig {
        out_dir: Some(dir.join("file/run")),
        ..tiny(&dir)
    });
    assert!(err.contains("file/run"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn an_existing_run_is_never_overwritten_or_resumed_with_other_settings() {
    let dir = temp_dir("guard");
    train(
        TrainConfig {
            max_iters: 5,
            ..tiny(&dir)
        },
        None,
    );
    let run = dir.join("run");
    let before = read(run.join("latest/model.safetensors"));

    let err = new_error(tiny(&dir));
    assert!(
        err.contains("already holds a training run") && err.contains("--resume"),
        "{err}"
    );
    let resume_error = |key: &str, value: serde_json::Value| {
        let overrides = Overrides::from_iter([(key.to_string(), value)]);
        Trainer::resume(&run, &overrides)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    };
    let err = resume_error("n_layer", 3.into());
    assert!(err.contains("n_layer = 3 (the run has 2)"), "{err}");
    let err = resume_error("tokenizer", "gpt2".into());
    assert!(err.contains("tokenizer = \"gpt2\" (the run has \"char\")"), "{err}");
    assert!(
        resume_error("max_iters", 6.into()).is_empty(),
        "more steps may be asked for"
    );
    assert!(
        resume_error("cache_dir", dir.join("other-cache").to_string_lossy().as_ref().into()).is_empty(),
        "the shard cache may move"
    );
    let err = Trainer::resume(&dir.join("nothing"), &Overrides::new())
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("not a training run"), "{err}");
    let err = Trainer::resume(&run.join("best"), &Overrides::new())
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("latest/") && err.contains("--init"), "{err}");

    // The corpus changed under the run.
    let corpus = tiny(&dir).data[0].clone();
    std::fs::write(&corpus, std::fs::read_to_string(&corpus).unwrap().replace("cat", "tac")).unwrap();
    let err = Trainer::resume(&run, &Overrides::new()).err().unwrap().to_string();
    assert!(err.contains("is not the one this run was trained on"), "{err}");
    // ... with a character the run's vocabulary lacks: still that error, not the tokenizer's.
    std::fs::write(&corpus, "Zebra\n".repeat(100)).unwrap();
    let err = Trainer::resume(&run, &Overrides::new()).err().unwrap().to_string();
    assert!(err.contains("is not the one this run was trained on"), "{err}");
    assert!(
        read(run.join("latest/model.safetensors")) == before,
        "the checkpoint is untouched"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_checkpoint_that_cannot_be_written_leaves_the_previous_one_intact() {
    let dir = temp_dir("full");
    train(
        TrainConfig {
            max_iters: 5,
            ..tiny(&dir)
        },
        None,
    );
    let run = dir.join("run");
    let before = read(run.join("latest/model.safetensors"));
    // Occupy the temporary name of the next `latest/` so that writing it fails, as a full disk would.
    std::fs::write(run.join(format!(".latest.tmp-{}", std::process::id())), "in the way").unwrap();
    let overrides = Overrides::from_iter([("max_iters".to_string(), 10.into())]);
    let err = Trainer::resume(&run, &overrides)
        .unwrap()
        .run(&RunOptions::default(), &mut |_| {})
        .err()
        .unwrap();
    assert!(err.to_string().contains(".latest.tmp"), "{err}");
    assert!(read(run.join("latest/model.safetensors")) == before);
    let state: serde_json::Value = serde_json::from_slice(&read(run.join("latest/trainer.json"))).unwrap();
    assert_eq!(state["step"], 5);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_diverging_run_stops_before_it_can_replace_a_checkpoint() {
    let dir = temp_dir("diverge");
    // Warm-up at a sane rate, a checkpoint at step 2, then a learning rate of 1e30.
    let config = TrainConfig {
        lr: 1e-3,
        min_lr: 1e30,
        warmup_iters: 2,
        lr_decay_iters: Some(2),
        grad_clip: 0.0,
        eval_interval: 2,
        max_iters: 8,
        ..tiny(&dir)
    };
    let err = Trainer::new(config)
        .unwrap()
        .run(&RunOptions::default(), &mut |_| {})
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("diverged") && err.contains("checkpoint of step 2"),
        "{err}"
    );
    let run = dir.join("run");
    let state: serde_json::Value = serde_json::from_slice(&read(run.join("latest/trainer.json"))).unwrap();
    assert_eq!(state["step"], 2);
    for name in ["latest", "best"] {
        let model = load_model(&run.join(name)).unwrap();
        assert!(
            model.params.iter().all(|p| p.is_finite()),
            "{name}/ holds the model of step 2"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_run_stopped_before_its_first_checkpoint_can_be_started_again_in_place() {
    let dir = temp_dir("restart");
    let summary = train(tiny(&dir), Some(0)); // evaluates step 0 (logs, plots), saves nothing
    assert!(summary.latest.is_none());
    let err = Trainer::resume(&dir.join("run"), &Overrides::new())
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("not a training run"), "{err}");
    let summary = train(
        TrainConfig {
            max_iters: 2,
            eval_interval: 2,
            ..tiny(&dir)
        },
        None,
    );
    assert_eq!(summary.step, 2);
    assert_eq!(
        metrics(&dir.join("run")).first().unwrap()["step"],
        0,
        "the log starts again"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// What a failed `Trainer::resume` of `run` says.
fn resume_error(run: &Path) -> String {
    match Trainer::resume(run, &Overrides::new()) {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn a_run_replaces_nothing_in_its_directory_that_is_not_its_own() {
    let dir = temp_dir("owned");
    let run = dir.join("run");
    // What a user may have where a new run writes (a folder with a file in it, or a file with
    // this text), and the words of the error.
    let cases = [
        ("latest", "notes.txt", "latest exists and is a directory"),
        ("best", "data.csv", "best exists and is a directory"),
        ("metrics.jsonl", "my notes\n", "a file of another kind, not a log"),
        ("param_stats.jsonl", "no newline", "not a log"),
        ("loss.png", "a picture", "not a loss plot"),
        ("loss.svg", "<svg></svg>", "not a loss plot"),
    ];
    for (name, content, words) in cases {
        std::fs::create_dir_all(&run).unwrap();
        match name.contains('.') {
            true => std::fs::write(run.join(name), content).unwrap(),
            false => write_in(&run.join(name), content),
        }
        let before = snapshot(&run);
        let err = new_error(tiny(&dir));
        assert!(
            err.contains(words) && err.contains("refusing to replace it"),
            "{name}: {err}"
        );
        assert_eq!(snapshot(&run), before, "{name}: the directory is untouched");
        std::fs::remove_dir_all(&run).unwrap();
    }
    #[cfg(unix)]
    {
        std::fs::create_dir_all(&run).unwrap();
        std::os::unix::fs::symlink(dir.join("elsewhere"), run.join("latest")).unwrap();
        let err = new_error(tiny(&dir));
        assert!(err.contains("latest exists and is a symbolic link"), "{err}");
        std::fs::remove_dir_all(&run).unwrap();
    }
    // A resumed run: its checkpoints are its own, but not a folder that took best/'s place.
    train(
        TrainConfig {
            max_iters: 5,
            ..tiny(&dir)
        },
        None,
    );
    std::fs::remove_dir_all(run.join("best")).unwrap();
    write_in(&run.join("best"), "data.csv");
    let err = resume_error(&run);
    assert!(
        err.contains("best exists and is a directory, not a checkpoint of this run"),
        "{err}"
    );
    assert_eq!(read(run.join("best/data.csv")), b"mine");
    std::fs::remove_dir_all(run.join("best")).unwrap();
    std::fs::write(run.join("loss.png"), "a picture").unwrap();
    let err = resume_error(&run);
    assert!(err.contains("loss.png exists and is a file of another kind"), "{err}");
    std::fs::remove_file(run.join("loss.png")).unwrap();
    resume(&run, &Overrides::new());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Makes the directory `dir` with the user's file `name` in it.
fn write_in(dir: &Path, name: &str) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join(name), "mine").unwrap();
}

/// The names and contents of the files under `dir`.
fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        match path.is_dir() {
            true => files.extend(snapshot(&path)),
            false => files.push((path.clone(), read(&path))),
        }
    }
    files.sort();
    files
}

#[cfg(unix)]
#[test]
fn a_second_trainer_on_the_same_directory_is_refused_while_the_first_lives() {
    let dir = temp_dir("lock");
    let run = dir.join("run");
    let mut first = Trainer::new(tiny(&dir)).unwrap();
    let holder = format!("in use by another training run (process PID {})", std::process::id());
    let err = new_error(tiny(&dir));
    assert!(err.contains(&holder), "{err}");
    let options = RunOptions {
        stop_at: Some(5),
        interrupt: None,
    };
    first.run(&options, &mut |_| {}).unwrap();
    let err = resume_error(&run);
    assert!(err.contains(&holder), "{err}");
    drop(first);
    let summary = resume(&run, &Overrides::new());
    assert_eq!(summary.step, 12, "the lock goes with the trainer");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A PID no process has: Linux hands out PIDs up to 2^22 at most, macOS up to 99,999.
/// (Spawning a process and waiting for it, as this did, let the child hold copies of every open
/// file for a moment, among them another test's run-directory lock, which then outlived that
/// test's trainer.)
#[cfg(unix)]
fn dead_pid() -> u32 {
    i32::MAX as u32
}

#[cfg(unix)]
#[test]
fn temporaries_left_by_dead_processes_are_removed_when_a_run_starts_or_resumes() {
    let dir = temp_dir("stale");
    let (run, cache) = (dir.join("run"), dir.join("cache"));
    let (dead, alive) = (dead_pid(), std::process::id());
    // What killed runs leave: a whole old checkpoint, files cut short, a token shard.
    let leave = |pid: u32, names: &[&str]| {
        for name in names {
            match name.ends_with(".png") {
                true => std::fs::write(run.join(format!(".{name}.tmp-{pid}")), "half a png").unwrap(),
                false => write_in(&run.join(format!(".{name}.tmp-{pid}")), "model.safetensors"),
            }
        }
    };
    let shard = |pid: u32| cache.join(format!(".0123abcd.tokens.tmp-{pid}"));
    let left = |dir: &Path| {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains(".tmp-"))
            .collect();
        names.sort();
        names
    };
    // This process's are not touched (nor would a live run's be).
    let ours = [".latest.tmp-", ".loss.png.tmp-"].map(|n| format!("{n}{alive}"));
    for session in ["new", "resumed"] {
        std::fs::create_dir_all(&cache).unwrap();
        std::fs::create_dir_all(&run).unwrap();
        leave(dead, &["latest", "best", "init", "loss.png"]);
        leave(alive, &["latest", "loss.png"]);
        std::fs::write(shard(dead), "ids").unwrap();
        std::fs::write(shard(alive), "ids").unwrap();
        let trainer = match session {
            "new" => Trainer::new(tiny(&dir)).unwrap(),
            _ => Trainer::resume(&run, &Overrides::new()).unwrap(),
        };
        assert_eq!(left(&run), ours, "{session}: the dead process's are gone, ours stay");
        assert_eq!(
            left(&cache),
            [format!(".0123abcd.tokens.tmp-{alive}")],
            "{session}: the cache too"
        );
        drop(trainer);
        for name in left(&run) {
            let path = run.join(name);
            let _ = std::fs::remove_file(&path).or_else(|_| std::fs::remove_dir_all(&path));
        }
        std::fs::remove_file(shard(alive)).unwrap();
        if session == "new" {
            // Leave a checkpoint to resume from.
            train(
                TrainConfig {
                    max_iters: 5,
                    ..tiny(&dir)
                },
                None,
            );
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_bf16_run_tracks_the_f32_run_and_resumes_bit_for_bit() {
    use gpt2::ops::matmul::Precision;
    let dir = temp_dir("bf16");
    let bf16 = TrainConfig {
        precision: Precision::Bf16,
        ..tiny(&dir)
    };
    train(bf16.clone(), None);
    let stopped = TrainConfig {
        out_dir: Some(dir.join("stopped")),
        ..bf16.clone()
    };
    train(stopped, Some(7));
    resume(&dir.join("stopped"), &Overrides::new());
    for file in ["model.safetensors", "optimizer.safetensors"] {
        assert!(
            read(dir.join("run/latest").join(file)) == read(dir.join("stopped/latest").join(file)),
            "{file} differs"
        );
    }
    assert_eq!(losses(&dir.join("run")), losses(&dir.join("stopped")));

    let f32_run = TrainConfig {
        out_dir: Some(dir.join("f32")),
        ..tiny(&dir)
    };
    train(f32_run, None);
    let ((f32_steps, _), (bf16_steps, _)) = (losses(&dir.join("f32")), losses(&dir.join("run")));
    for (step, ((a, _), (b, _))) in f32_steps.iter().zip(&bf16_steps).enumerate() {
        assert!((a - b).abs() < 0.02 * a, "step {step}: f32 loss {a}, bf16 {b}");
    }
    // Where the CPU has no AVX512-BF16 the run falls back to f32 products (and says so).
    if gpt2::ops::matmul_bf16::TileKernel::accelerated() {
        assert_ne!(f32_steps, bf16_steps, "bf16 products should round differently from f32");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
