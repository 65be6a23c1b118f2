//! Generation end to end: greedy parity with Hugging Face `generate()`, context cropping as in
//! nanoGPT, stop tokens, batched samples and seeds.

use gpt2::generate::{generate_ids, Finish, GenerateOptions, Generator, Sampling, Token};
use gpt2::rng::Rng;
use gpt2::{Config, Gpt, Workspace};
use std::path::Path;

mod common;
use common::{tiny_model, FIXTURES};

fn ids(value: &serde_json::Value) -> Vec<u32> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn options(max_new_tokens: usize, num_samples: usize, sampling: Sampling) -> GenerateOptions {
    GenerateOptions {
        max_new_tokens,
        num_samples,
        sampling,
        stop_tokens: Vec::new(),
    }
}

/// Runs a generator to the end; returns every token it yielded.
fn run(model: &Gpt, prompt: &[u32], options: GenerateOptions, seed: u64) -> Vec<Token> {
    Generator::new(model, prompt, options, &mut Rng::new(seed))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

fn sample_ids(tokens: &[Token], sample: usize) -> Vec<u32> {
    tokens.iter().filter(|t| t.sample == sample).map(|t| t.id).collect()
}

#[test]
fn greedy_matches_hugging_face_generate() {
    let text = std::fs::read_to_string(Path::new(FIXTURES).join("tiny_generate.json")).unwrap();
    let fixture: serde_json::Value = serde_json::from_str(&text).unwrap();
    let (prompt, expected) = (ids(&fixture["prompt_ids"]), ids(&fixture["greedy_ids"]));
    let new = fixture["max_new_tokens"].as_u64().unwrap() as usize;
    assert_eq!(expected.len(), prompt.len() + new);
    let model = tiny_model();
    let got = generate_ids(&model, &prompt, new, &Sampling::greedy(), &mut Rng::new(0)).unwrap();
    assert_eq!(
        got,
        expected[prompt.len()..],
        "all {new} greedy tokens must equal transformers' generate()"
    );
}

/// nanoGPT's sample.py, greedy: each step runs the full model over the last n_positions tokens.
fn naive_greedy(model: &Gpt, prompt: &[u32], new: usize) -> Vec<u32> {
    let (n_pos, v) = (model.config.n_positions, model.config.vocab_size);
    let (mut seq, mut ws) = (prompt.to_vec(), Workspace::new());
    for _ in 0..new {
        let window = &seq[seq.len().saturating_sub(n_pos)..];
        model.forward(&mut ws, window, 1, window.len(), None, None).unwrap();
        let last = &ws.logits()[(window.len() - 1) * v..];
        seq.push(gpt2::generate::sampling::argmax(last));
    }
    seq[prompt.len()..].to_vec()
}

#[test]
fn context_overflow_crops_to_the_last_n_positions_like_nanogpt() {
    let mut cfg = Config::new(50, 16, 32, 2, 4);
    cfg.n_inner = 64;
    let model = Gpt::new(cfg, 7).unwrap();
    let mut rng = Rng::new(3);
    for prompt_len in [5, 16, 23] {
        // 5 + 30 and 16 + 30 outgrow 16 positions mid-generation; 23 is too long from the start.
        let prompt: Vec<u32> = (0..prompt_len).map(|_| rng.below(50) as u32).collect();
        let got = generate_ids(&model, &prompt, 30, &Sampling::greedy(), &mut Rng::new(0)).unwrap();
        assert_eq!(got, naive_greedy(&model, &prompt, 30), "prompt of {prompt_len} tokens");
    }
}

#[test]
fn two_threads_generate_from_one_shared_model_each_as_if_alone() {
    let model = tiny_model();
    let sampling = Sampling {
        temperature: 0.8,
        top_k: Some(20),
        ..Sampling::default()
    };
    let requests = [(vec![3u32, 14, 15], 2, 7u64), (vec![92, 65, 35, 89, 79], 3, 8)];
    let alone: Vec<Vec<Token>> = requests
        .iter()
        .map(|(prompt, samples, seed)| run(&model, prompt, options(40, *samples, sampling.clone()), *seed))
        .collect();
    // Both threads read the one model while the other decodes: each owns only its KV cache.
    let start = std::sync::Barrier::new(requests.len());
    let together: Vec<Vec<Token>> = std::thread::scope(|scope| {
        let threads: Vec<_> = requests
            .iter()
            .map(|(prompt, samples, seed)| {
                let (model, start, sampling) = (&model, &start, sampling.clone());
                scope.spawn(move || {
                    start.wait();
                    run(model, prompt, options(40, *samples, sampling), *seed)
                })
            })
            .collect();
        threads.into_iter().map(|thread| thread.join().unwrap()).collect()
    });
    assert_eq!(together, alone);
    assert_ne!(alone[0], alone[1]);
}

#[test]
fn same_seed_same_samples_and_each_sample_is_independent_of_the_batch() {
    let model = tiny_model();
    let prompt = [3, 14, 15, 92, 65];
    let sampling = Sampling {
        temperature: 0.9,
        top_k: Some(40),
        top_p: 0.95,
        repetition_penalty: 1.1,
    };
    let batch = run(&model, &prompt, options(25, 3, sampling.clone()), 42);
    assert_eq!(
        batch,
        run(&model, &prompt, options(25, 3, sampling.clone()), 42),
        "same seed, same output"
    );
    let samples: Vec<Vec<u32>> = (0..3).map(|s| sample_ids(&batch, s)).collect();
    assert!(samples.iter().all(|s| s.len() == 25));
    assert!(
        samples[0] != samples[1] && samples[1] != samples[2],
        "samples must differ"
    );
    // Sample 0 of a batch of 3 is the single sample of a batch of 1 with the same seed.
    assert_eq!(
        sample_ids(&run(&model, &prompt, options(25, 1, sampling.clone()), 42), 0),
        samples[0]
    );
    assert_ne!(
        sample_ids(&run(&model, &prompt, options(25, 1, sampling), 43), 0),
        samples[0],
        "another seed"
    );
}

#[test]
fn a_stop_token_ends_its_sample_only() {
    let model = tiny_model();
    let prompt = [35, 43, 81, 92, 9, 24, 63, 15];
    let sampling = Sampling {
        temperature: 1.5,
        ..Sampling::default()
    };
    let free = run(&model, &prompt, options(40, 4, sampling.clone()), 9);
    // Stop at the first token that sample 0 generates (its first draw is the same either way).
    let stop = sample_ids(&free, 0)[0];
    let stopped = run(
        &model,
        &prompt,
        GenerateOptions {
            stop_tokens: vec![stop],
            ..options(40, 4, sampling)
        },
        9,
    );
    for s in 0..4 {
        let (ids, all) = (sample_ids(&stopped, s), sample_ids(&free, s));
        let end = all.iter().position(|&id| id == stop).map_or(all.len(), |i| i + 1);
        assert_eq!(
            ids,
            all[..end],
            "sample {s} runs until its own stop token, which it reports"
        );
        let last = stopped.iter().rfind(|t| t.sample == s).unwrap();
        let expected = if all.contains(&stop) {
            Finish::StopToken
        } else {
            Finish::Length
        };
        assert_eq!(last.finish, Some(expected));
        assert_eq!(
            stopped.iter().filter(|t| t.sample == s && t.finish.is_some()).count(),
            1
        );
    }
    assert_eq!(sample_ids(&stopped, 0), [stop]);
}

#[test]
fn stop_sample_ends_one_sample_and_the_others_go_on() {
    let model = tiny_model();
    let sampling = Sampling {
        temperature: 1.0,
        ..Sampling::default()
    };
    let free = run(&model, &[1, 2, 3], options(12, 3, sampling.clone()), 5);
    let mut generator = Generator::new(&model, &[1, 2, 3], options(12, 3, sampling), &mut Rng::new(5)).unwrap();
    let mut seen = 0;
    while let Some(token) = generator.next() {
        let token = token.unwrap();
        if token.sample == 1 {
            seen += 1;
            if seen == 4 {
                generator.stop_sample(1).unwrap();
            }
        }
    }
    assert!(generator.is_finished(1));
    assert_eq!(generator.new_tokens(1), &sample_ids(&free, 1)[..4]);
    assert_eq!(generator.new_tokens(0), sample_ids(&free, 0));
    assert_eq!(generator.new_tokens(2), sample_ids(&free, 2));
}

#[test]
fn bad_requests_are_errors_not_panics() {
    let model = tiny_model();
    let mut rng = Rng::new(0);
    let greedy = Sampling::greedy();
    assert!(generate_ids(&model, &[], 5, &greedy, &mut rng).is_err(), "empty prompt");
    assert!(
        generate_ids(&model, &[1, 96], 5, &greedy, &mut rng).is_err(),
        "id outside the vocabulary"
    );
    let bad_top_p = Sampling {
        top_p: 0.0,
        ..Sampling::default()
    };
    assert!(generate_ids(&model, &[1], 5, &bad_top_p, &mut rng).is_err());
    assert!(
        Generator::new(&model, &[1], options(5, 0, greedy), &mut rng).is_err(),
        "zero samples"
    );
    assert_eq!(
        generate_ids(&model, &[1], 0, &Sampling::greedy(), &mut rng).unwrap(),
        Vec::<u32>::new()
    );
}
