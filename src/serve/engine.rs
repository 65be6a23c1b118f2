//! The engine: one thread owns the decoding of every request (continuous batching).
//!
//! Requests arrive over a channel. At each step the engine admits waiting requests while the
//! batch has room (each gets a KV cache of its own), samples the next token of every running
//! request whose prompt has been read, sends it to that request's receiver, and runs the
//! batch's new tokens through the model in one [`Gpt::decode_step`]: the next token of each
//! decoding request and the whole prompt of each admitted one (chunked prefill), so every
//! weight is read once per step for all of them and a prompt never runs alone between steps.
//! A request leaves the batch as soon as it ends (stop token, stop string, max_tokens) or its
//! receiver is dropped (the client went away), and its cache is freed at once.
//!
//! Admission is bounded: at most `max_batch` requests decode at once and at most `max_queue`
//! more wait; beyond that [`Engine::submit`] refuses at once ([`Busy`]), which the HTTP layer
//! answers with 503 and Retry-After. The prompts joining one step hold at most a context of
//! tokens together (a longer wait for the next step), which bounds the step's buffers.

use crate::error::{Error, Result};
use crate::generate::{Finish, Sampling, TextStream};
use crate::inspect::token_piece;
use crate::model::{Gpt, KvCache, StepBuffers};
use crate::ops;
use crate::rng::Rng;
use crate::tokenizer::Tokenizer;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use tokio::sync::mpsc::UnboundedSender;

/// How many requests the engine takes.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Requests decoded side by side, each with its own KV cache.
    pub max_batch: usize,
    /// Requests waiting for a place in the batch, beyond which new ones are refused.
    pub max_queue: usize,
}

/// One sequence to generate: a completion choice.
pub struct Job {
    pub prompt: Vec<u32>,
    /// New tokens at most; prompt + max_tokens must fit the model's context.
    pub max_tokens: usize,
    pub sampling: Sampling,
    /// Text at which the sequence ends (not included in its text).
    pub stops: Vec<String>,
    /// Token ids that end the sequence (the tokenizer's <|endoftext|>).
    pub stop_tokens: Vec<u32>,
    pub rng: Rng,
    /// Report this many most likely alternatives (and the chosen token's log-probability).
    pub logprobs: Option<usize>,
    /// Which choice of its request this is; events carry it back.
    pub choice: usize,
    /// Where the events go; when its receiver is dropped the job ends at the next step.
    pub events: UnboundedSender<Event>,
}

/// What the engine tells a request, choice by choice.
#[derive(Debug, Clone)]
pub enum Event {
    Token {
        choice: usize,
        token: GeneratedToken,
    },
    /// The choice ended; no more events for it.
    Done {
        choice: usize,
        finish: Finish,
        completion_tokens: usize,
    },
    Failed {
        choice: usize,
        message: String,
    },
}

/// One generated token.
#[derive(Debug, Clone)]
pub struct GeneratedToken {
    pub id: u32,
    /// The token as text for display (bytes that are not UTF-8 on their own as `\xNN`).
    pub piece: String,
    /// Text of the choice that became final with this token (see [`TextStream::push`]).
    pub text: String,
    /// With `logprobs`: the token's log-probability under the model and the alternatives.
    pub logprobs: Option<TokenLogprobs>,
}

/// Log-probabilities under the model's own distribution, log softmax of its logits (before
/// repetition penalty, temperature, top-k or top-p).
#[derive(Debug, Clone)]
pub struct TokenLogprobs {
    pub logprob: f32,
    /// The most likely tokens, most likely first: (id, piece, log-probability).
    pub top: Vec<(u32, String, f32)>,
}

/// Refused because the batch and the queue are full.
#[derive(Debug)]
pub struct Busy;

/// The handle the HTTP layer holds: submits jobs to the engine thread.
#[derive(Clone)]
pub struct Engine {
    jobs: Sender<Job>,
    /// Jobs submitted and not yet ended (running or waiting).
    admitted: Arc<AtomicUsize>,
    limits: Limits,
}

impl Engine {
    /// Starts the engine thread over `model`, its steps on `pool`. The thread ends once
    /// every handle is dropped and the last job has ended.
    pub fn start(
        model: Arc<Gpt>,
        tokenizer: Arc<Tokenizer>,
        limits: Limits,
        pool: Arc<rayon::ThreadPool>,
    ) -> Result<(Engine, std::thread::JoinHandle<()>)> {
        if limits.max_batch == 0 {
            return Err(Error::Input("the batch must hold at least one request".into()));
        }
        let (jobs, inbox) = mpsc::channel();
        let admitted = Arc::new(AtomicUsize::new(0));
        let mut state = Batch {
            model,
            tokenizer,
            limits,
            inbox,
            admitted: admitted.clone(),
            waiting: VecDeque::new(),
            running: Vec::new(),
            bufs: StepBuffers::new(),
            pool,
        };
        let thread = std::thread::Builder::new()
            .name("gpt2-engine".into())
            .spawn(move || state.run())
            .map_err(|e| Error::Input(format!("cannot start the engine thread: {e}")))?;
        Ok((Engine { jobs, admitted, limits }, thread))
    }

    /// Hands `jobs` (the choices of one request) to the engine, all or none: refused when they
    /// would take the running and waiting requests beyond the limits.
    pub fn submit(&self, jobs: Vec<Job>) -> std::result::Result<(), Busy> {
        let bound = self.limits.max_batch + self.limits.max_queue;
        let n = jobs.len();
        self.admitted
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |now| {
                (now + n <= bound).then_some(now + n)
            })
            .map_err(|_| Busy)?;
        for (sent, job) in jobs.into_iter().enumerate() {
            if self.jobs.send(job).is_err() {
                // The engine has stopped: the jobs not sent were never admitted. (Those sent
                // end with the request's receiver.)
                self.admitted.fetch_sub(n - sent, Ordering::SeqCst);
                return Err(Busy);
            }
        }
        Ok(())
    }

    /// Requests running or waiting now.
    pub fn load(&self) -> usize {
        self.admitted.load(Ordering::SeqCst)
    }
}

/// A request in the batch.
struct Running {
    job: Job,
    cache: KvCache,
    /// Prompt and generated ids: the repetition penalty's history.
    tokens: Vec<u32>,
    /// Next-token logits [V], fresh after the step that read the prompt or the last token;
    /// empty until the prompt has been read.
    logits: Vec<f32>,
    produced: usize,
    text: TextStream,
}

/// The engine thread's state.
struct Batch {
    model: Arc<Gpt>,
    tokenizer: Arc<Tokenizer>,
    limits: Limits,
    inbox: Receiver<Job>,
    admitted: Arc<AtomicUsize>,
    waiting: VecDeque<Job>,
    running: Vec<Running>,
    bufs: StepBuffers,
    pool: Arc<rayon::ThreadPool>,
}

impl Batch {
    fn run(&mut self) {
        loop {
            if self.running.is_empty() && self.waiting.is_empty() {
                match self.inbox.recv() {
                    Ok(job) => self.waiting.push_back(job),
                    Err(_) => return, // every handle is gone and nothing is left to do
                }
            }
            self.waiting.extend(self.inbox.try_iter());
            // The work of a step runs on the pool (parallel loops started from one of its
            // workers); between steps the pool is free for inspections.
            let pool = self.pool.clone();
            let stepped = pool.install(|| {
                self.admit();
                self.sample();
                self.step()
            });
            if let Err(e) = stepped {
                // A step fails only on a bug (the jobs were checked on admission): end the batch
                // with the error rather than loop on it.
                for running in std::mem::take(&mut self.running) {
                    self.fail(running.job, &e.to_string());
                }
            }
        }
    }

    /// Moves waiting jobs into the batch while it has room and their prompts fit the step's
    /// prompt tokens (a context; the first prompt always joins).
    fn admit(&mut self) {
        let mut prompt_tokens = 0;
        while self.running.len() < self.limits.max_batch {
            let Some(job) = self.waiting.pop_front() else { return };
            if job.events.is_closed() {
                self.release();
                continue;
            }
            if job.max_tokens == 0 {
                self.finish(job, Finish::Length, 0);
                continue;
            }
            if prompt_tokens > 0 && prompt_tokens + job.prompt.len() > self.model.config.n_positions {
                self.waiting.push_front(job);
                return;
            }
            match self.model.kv_cache(1, job.prompt.len() + job.max_tokens) {
                Ok(cache) => {
                    prompt_tokens += job.prompt.len();
                    self.running.push(Running {
                        tokens: job.prompt.clone(),
                        text: TextStream::new(&job.stops),
                        job,
                        cache,
                        logits: Vec::new(),
                        produced: 0,
                    })
                }
                Err(e) => self.fail(job, &e.to_string()),
            }
        }
    }

    /// Samples the next token of every running request, sends it, and retires the requests
    /// that ended or whose client went away.
    fn sample(&mut self) {
        let tokenizer = self.tokenizer.clone();
        let mut ended = Vec::new();
        for (i, r) in self.running.iter_mut().enumerate() {
            if r.job.events.is_closed() {
                ended.push((i, None));
                continue;
            }
            if r.logits.is_empty() {
                continue; // admitted this step: its prompt is read first
            }
            let logprobs = r.job.logprobs.map(|k| logprobs(&r.logits, k, &tokenizer));
            let id = r.job.sampling.sample(&mut r.logits, &r.tokens, &mut r.job.rng);
            let logprobs = logprobs.map(|(log_probs, top)| TokenLogprobs {
                logprob: log_probs[id as usize],
                top,
            });
            r.tokens.push(id);
            r.produced += 1;
            let mut finish = if r.job.stop_tokens.contains(&id) {
                Some(Finish::StopToken)
            } else if r.produced == r.job.max_tokens {
                Some(Finish::Length)
            } else {
                None
            };
            // The stop token (<|endoftext|>) ends the text; it is not part of it.
            let mut text = match finish {
                Some(Finish::StopToken) => String::new(),
                _ => r.text.push(&tokenizer.decode_bytes_lossy(&[id])).to_string(),
            };
            if r.text.is_stopped() {
                finish = Some(Finish::StopString);
            }
            if finish.is_some() {
                text.push_str(r.text.finish());
            }
            let token = GeneratedToken {
                id,
                piece: token_piece(Some(tokenizer.as_ref()), id),
                text,
                logprobs,
            };
            let sent = r.job.events.send(Event::Token {
                choice: r.job.choice,
                token,
            });
            if sent.is_err() {
                ended.push((i, None));
            } else if finish.is_some() {
                ended.push((i, finish));
            }
        }
        for (i, finish) in ended.into_iter().rev() {
            let r = self.running.swap_remove(i);
            match finish {
                Some(finish) => self.finish(r.job, finish, r.produced),
                None => self.release(),
            }
        }
    }

    /// Runs every running request's new tokens (its last sampled token, or its prompt)
    /// through the model, one step for all.
    fn step(&mut self) -> Result<()> {
        if self.running.is_empty() {
            return Ok(());
        }
        let (mut caches, tokens): (Vec<&mut KvCache>, Vec<&[u32]>) = self
            .running
            .iter_mut()
            .map(|r| {
                // The prompt until the cache holds it, then the token sampled last.
                let tokens = match r.cache.len() {
                    0 => &r.tokens[..],
                    _ => &r.tokens[r.tokens.len() - 1..],
                };
                (&mut r.cache, tokens)
            })
            .unzip();
        let logits = self.model.decode_step(&mut self.bufs, &mut caches, &tokens)?;
        let v = self.model.config.vocab_size;
        for (r, row) in self.running.iter_mut().zip(logits.chunks_exact(v)) {
            r.logits.clear();
            r.logits.extend_from_slice(row);
        }
        Ok(())
    }

    fn finish(&self, job: Job, finish: Finish, completion_tokens: usize) {
        let _ = job.events.send(Event::Done {
            choice: job.choice,
            finish,
            completion_tokens,
        });
        self.release();
    }

    fn fail(&self, job: Job, message: &str) {
        let _ = job.events.send(Event::Failed {
            choice: job.choice,
            message: message.to_string(),
        });
        self.release();
    }

    /// One job fewer running or waiting.
    fn release(&self) {
        self.admitted.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The log-probabilities log softmax(`logits`) [V] and the `k` most likely tokens among them.
fn logprobs(logits: &[f32], k: usize, tokenizer: &Tokenizer) -> (Vec<f32>, Vec<(u32, String, f32)>) {
    let max = ops::max(logits);
    let log_total = logits.iter().map(|&z| ((z - max) as f64).exp()).sum::<f64>().ln() as f32;
    let log_probs: Vec<f32> = logits.iter().map(|&z| z - max - log_total).collect();
    let mut ids: Vec<u32> = (0..logits.len() as u32).collect();
    let k = k.min(ids.len());
    let by_logprob = |a: &u32, b: &u32| log_probs[*b as usize].total_cmp(&log_probs[*a as usize]).then(a.cmp(b));
    if k < ids.len() {
        ids.select_nth_unstable_by(k, by_logprob);
        ids.truncate(k);
    }
    ids.sort_unstable_by(by_logprob);
    let top = ids
        .into_iter()
        .map(|id| (id, token_piece(Some(tokenizer), id), log_probs[id as usize]))
        .collect();
    (log_probs, top)
}
