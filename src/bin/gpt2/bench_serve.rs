//! `gpt2 bench serve`: a load test of `gpt2 serve` on loopback. A server runs in this process
//! on a free port of 127.0.0.1; for each client count, that many threads send streaming
//! completions one after another for a fixed time, and the figures are the aggregate decode
//! throughput, each request's latency, the time to its first token and between tokens, the
//! 503s (a full queue) and the errors; then the process's peak RSS.

use crate::adapter_arg::load_merged;
use anyhow::{bail, Context, Result};
use clap::Args;
use gpt2::bench::peak_rss_mb;
use gpt2::io::{load_model_with_tokenizer, Loaded};
use gpt2::rng::Rng;
use gpt2::serve::engine::Limits;
use gpt2::serve::http::ApiLimits;
use gpt2::serve::Server;
use gpt2::tokenizer::Tokenizer;
use gpt2::{Config, Gpt};
use serde::Serialize;
use serde_json::json;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(Args)]
pub struct ServeBenchArgs {
    /// A model to serve (any format, with a tokenizer) instead of a preset.
    #[arg(long, conflicts_with = "preset")]
    model: Option<PathBuf>,
    /// Model size with random weights and GPT-2's tokenizer: gpt2, gpt2-medium, ...
    #[arg(long, default_value = "gpt2")]
    preset: String,
    /// Concurrent streaming clients of each run, comma-separated.
    #[arg(long, default_value = "1,4,16,64", value_delimiter = ',')]
    clients: Vec<usize>,
    /// Seconds each run sends new requests (requests under way then finish).
    #[arg(long, default_value_t = 20.0)]
    seconds: f64,
    /// Length of each (random) prompt, in tokens.
    #[arg(long, default_value_t = 16)]
    prompt_tokens: usize,
    /// New tokens per request.
    #[arg(long, default_value_t = 32)]
    max_tokens: usize,
    /// The server's --max-batch.
    #[arg(long, default_value_t = 16)]
    max_batch: usize,
    /// The server's --max-queue.
    #[arg(long, default_value_t = 32)]
    max_queue: usize,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

/// The figures of one client count.
#[derive(Serialize)]
struct RunResult {
    clients: usize,
    seconds: f64,
    completed: usize,
    busy_503: usize,
    errors: usize,
    tokens: usize,
    tokens_per_s: f64,
    latency_ms_median: f64,
    latency_ms_p90: f64,
    first_token_ms_median: f64,
    /// Median time between two tokens of one request.
    token_gap_ms_median: f64,
}

/// What one client saw.
#[derive(Default)]
struct ClientLog {
    latencies: Vec<f64>,
    first_tokens: Vec<f64>,
    gaps: Vec<f64>,
    tokens: usize,
    busy: usize,
    errors: Vec<String>,
}

pub fn run(args: &ServeBenchArgs) -> Result<()> {
    if args.clients.is_empty() || args.clients.contains(&0) || args.max_tokens == 0 {
        bail!("--clients needs counts >= 1 and --max-tokens must be positive");
    }
    if !(args.seconds > 0.0 && args.seconds <= 3600.0) {
        bail!("--seconds must be in (0, 3600], got {}", args.seconds);
    }
    let (model, tokenizer, name) = match &args.model {
        Some(path) => {
            let Loaded { model, tokenizer, .. } = load_merged(path, None, load_model_with_tokenizer)?;
            let tokenizer = tokenizer.with_context(|| format!("{} has no tokenizer", path.display()))?;
            (model, tokenizer, path.display().to_string())
        }
        None => {
            let config = Config::preset(&args.preset)?;
            (
                Gpt::new(config, 1)?,
                Tokenizer::gpt2(),
                format!("{} (random weights)", args.preset),
            )
        }
    };
    if args.prompt_tokens == 0 || args.prompt_tokens + args.max_tokens > model.config.n_positions {
        bail!(
            "--prompt-tokens (at least 1) + --max-tokens must fit the context of {} tokens",
            model.config.n_positions
        );
    }
    let vocab = tokenizer.vocab_size().min(model.config.vocab_size);
    let limits = Limits {
        max_batch: args.max_batch,
        max_queue: args.max_queue,
    };
    let api = ApiLimits {
        max_tokens: args.max_tokens,
        max_n: 1,
        body_bytes: 1 << 20,
    };
    let server = Server::start(model, tokenizer, name.clone(), limits, api)?;
    let runtime = Server::runtime().context("starting the HTTP runtime")?;
    let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
    let url = format!("http://{}/v1/completions", listener.local_addr()?);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = runtime.spawn(server.run(listener, async move {
        let _ = stopped.await;
    }));
    if !args.json {
        println!(
            "serving {name} on {url}: max batch {}, queue {}; {} prompt + {} new tokens per request, {} s per run",
            args.max_batch, args.max_queue, args.prompt_tokens, args.max_tokens, args.seconds
        );
    }
    let mut results = Vec::new();
    for &clients in &args.clients {
        let result = load(&url, clients, args, vocab);
        if !args.json {
            println!(
                "{clients:>3} clients: {:>7.1} tokens/s; {} requests done, {} got 503, {} errors; latency median {:.0} ms \
                 (p90 {:.0}), first token {:.0} ms, between tokens {:.1} ms",
                result.tokens_per_s,
                result.completed,
                result.busy_503,
                result.errors,
                result.latency_ms_median,
                result.latency_ms_p90,
                result.first_token_ms_median,
                result.token_gap_ms_median
            );
        }
        results.push(result);
    }
    let _ = stop.send(());
    runtime.block_on(serving)??;
    let peak = peak_rss_mb();
    let base = results.first().map_or(0.0, |r| r.tokens_per_s);
    if args.json {
        println!("{}", json!({"model": name, "runs": results, "peak_rss_mb": peak}));
    } else {
        for r in &results[1..] {
            println!(
                "{} clients: {:.2}x the throughput of {}",
                r.clients,
                r.tokens_per_s / base,
                results[0].clients
            );
        }
        println!("peak RSS {peak:.0} MiB");
    }
    Ok(())
}

/// `clients` threads sending requests until the time is up; their figures together.
fn load(url: &str, clients: usize, args: &ServeBenchArgs, vocab: usize) -> RunResult {
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(args.seconds);
    let logs: Vec<ClientLog> = std::thread::scope(|scope| {
        let threads: Vec<_> = (0..clients)
            .map(|client| scope.spawn(move || client_loop(url, client as u64, deadline, args, vocab)))
            .collect();
        threads.into_iter().map(|t| t.join().unwrap_or_default()).collect()
    });
    let seconds = start.elapsed().as_secs_f64();
    let latencies: Vec<f64> = logs.iter().flat_map(|l| l.latencies.iter().copied()).collect();
    let first: Vec<f64> = logs.iter().flat_map(|l| l.first_tokens.iter().copied()).collect();
    let gaps: Vec<f64> = logs.iter().flat_map(|l| l.gaps.iter().copied()).collect();
    let tokens: usize = logs.iter().map(|l| l.tokens).sum();
    for error in logs.iter().flat_map(|l| &l.errors).take(3) {
        eprintln!("error: {error}");
    }
    RunResult {
        clients,
        seconds,
        completed: latencies.len(),
        busy_503: logs.iter().map(|l| l.busy).sum(),
        errors: logs.iter().map(|l| l.errors.len()).sum(),
        tokens,
        tokens_per_s: tokens as f64 / seconds,
        latency_ms_median: quantile(&latencies, 0.5),
        latency_ms_p90: quantile(&latencies, 0.9),
        first_token_ms_median: quantile(&first, 0.5),
        token_gap_ms_median: quantile(&gaps, 0.5),
    }
}

/// One client: streaming requests back to back until `deadline`; after a 503 it waits the
/// Retry-After second.
fn client_loop(url: &str, client: u64, deadline: Instant, args: &ServeBenchArgs, vocab: usize) -> ClientLog {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(600)))
        .build()
        .into();
    let mut rng = Rng::new(client);
    let mut log = ClientLog::default();
    while Instant::now() < deadline {
        let prompt: Vec<usize> = (0..args.prompt_tokens).map(|_| rng.below(vocab)).collect();
        let body = json!({"prompt": prompt, "max_tokens": args.max_tokens, "stream": true, "seed": rng.next_u64()});
        match request(&agent, url, &body.to_string(), &mut log) {
            Ok(true) => {}
            Ok(false) => {
                log.busy += 1;
                std::thread::sleep(Duration::from_secs(1));
            }
            Err(e) => log.errors.push(format!("{e:#}")),
        }
    }
    log
}

/// One streaming request; false when it was refused with 503.
fn request(agent: &ureq::Agent, url: &str, body: &str, log: &mut ClientLog) -> Result<bool> {
    let start = Instant::now();
    let response = agent.post(url).header("content-type", "application/json").send(body)?;
    match response.status().as_u16() {
        200 => {}
        503 => return Ok(false),
        status => bail!("HTTP {status}"),
    }
    let (mut last, mut tokens, mut done) = (None::<Instant>, 0, false);
    for line in BufReader::new(response.into_body().into_reader()).lines() {
        let line = line?;
        let Some(data) = line.strip_prefix("data: ") else {
            continue;
        };
        if data == "[DONE]" {
            done = true;
            break;
        }
        let chunk: serde_json::Value = serde_json::from_str(data)?;
        if let Some(error) = chunk.get("error") {
            bail!("{error}");
        }
        let is_token = chunk["choices"]
            .as_array()
            .is_some_and(|c| c.iter().any(|c| c["finish_reason"].is_null()));
        if is_token {
            let now = Instant::now();
            match last {
                None => log.first_tokens.push(ms(now - start)),
                Some(before) => log.gaps.push(ms(now - before)),
            }
            last = Some(now);
            tokens += 1;
        }
    }
    if !done {
        bail!("the stream ended without [DONE]");
    }
    log.tokens += tokens;
    log.latencies.push(ms(start.elapsed()));
    Ok(true)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The q-quantile (nearest rank) of `values`; 0 when there are none.
fn quantile(values: &[f64], q: f64) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => 0.0,
        n => sorted[((n - 1) as f64 * q).round() as usize],
    }
}
