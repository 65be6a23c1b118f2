//! `gpt2 serve`: the OpenAI-compatible API and the web page, until Ctrl-C.

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::adapter_arg::InferenceModel;
use gpt2::serve::engine::Limits;
use gpt2::serve::http::ApiLimits;
use gpt2::serve::Server;
use std::net::{IpAddr, SocketAddr};

#[derive(Args)]
pub struct ServeArgs {
    /// The model (it needs a tokenizer), its weights' dtype and a LoRA adapter.
    #[command(flatten)]
    model: InferenceModel,
    /// Address to listen on. The default takes connections from this machine only.
    #[arg(long, default_value = "127.0.0.1")]
    host: IpAddr,
    /// Port to listen on (0: any free port; the URL printed says which).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Requests decoded side by side, each with its own KV cache (continuous batching).
    #[arg(long, default_value_t = 8)]
    max_batch: usize,
    /// Requests that may wait for a place in the batch; beyond that the answer is 503.
    #[arg(long, default_value_t = 64)]
    max_queue: usize,
    /// Largest max_tokens a request may ask for [default: the model's context].
    #[arg(long)]
    max_tokens: Option<usize>,
    /// Largest n (choices per request).
    #[arg(long, default_value_t = 8)]
    max_n: usize,
    /// Largest request body in bytes (beyond: 413).
    #[arg(long, default_value_t = 1 << 20)]
    max_body_bytes: usize,
}

pub fn run(args: &ServeArgs) -> Result<()> {
    if args.max_batch == 0 || args.max_n == 0 {
        bail!("--max-batch and --max-n must be at least 1");
    }
    let (model, tokenizer) = args.model.load_with_tokenizer("the API reads and writes text")?;
    let api = ApiLimits {
        max_tokens: args.max_tokens.unwrap_or(model.config.n_positions),
        max_n: args.max_n,
        body_bytes: args.max_body_bytes,
    };
    let limits = Limits {
        max_batch: args.max_batch,
        max_queue: args.max_queue,
    };
    let name = args.model.model.display().to_string();
    let server = Server::start(model, tokenizer, name.clone(), limits, api)?;
    let runtime = Server::runtime().context("starting the HTTP runtime")?;
    runtime.block_on(async {
        let address = SocketAddr::new(args.host, args.port);
        let listener = tokio::net::TcpListener::bind(address)
            .await
            .with_context(|| format!("cannot listen on {address}"))?;
        let bound = listener.local_addr()?;
        let reach = match args.host.is_loopback() {
            true => "this machine only",
            false => "the network",
        };
        println!("serving {name} at http://{bound}/ (open to {reach}; Ctrl-C stops)");
        let shutdown = async {
            let _ = tokio::signal::ctrl_c().await;
            eprintln!("stopping: finishing the requests in flight");
        };
        server.run(listener, shutdown).await.context("serving")
    })
}
