//! `gpt2 serve`: GPT-2 behind an OpenAI-compatible HTTP API, many clients decoded together.
//!
//! [`engine`] owns the decoding: one thread, a batch of requests that grows and shrinks step by
//! step (continuous batching), each request with its own KV cache. [`http`] is the API on axum
//! and the web page that shows each token's probability, its alternatives, the attention of a
//! layer's heads and the logit lens.

pub mod engine;
pub mod http;

use crate::error::{Error, Result};
use crate::memory::{product, Need};
use crate::model::{Gpt, KvCache, StepBuffers};
use crate::tokenizer::Tokenizer;
use engine::{Engine, Limits};
use http::{ApiLimits, App};
use std::future::Future;
use std::sync::Arc;
use std::thread::JoinHandle;

/// A started engine and the routes over it.
pub struct Server {
    pub router: axum::Router,
    /// The engine thread: it ends once the router (every handle on the engine) is dropped and
    /// the last request has ended.
    pub engine: JoinHandle<()>,
}

impl Server {
    /// Starts the engine over `model` on a thread pool of its own, as many workers as the
    /// global pool (`--threads`), and builds the routes of the API.
    pub fn start(
        model: Gpt,
        tokenizer: Tokenizer,
        model_name: String,
        limits: Limits,
        api: ApiLimits,
    ) -> Result<Server> {
        let threads = rayon::current_num_threads();
        // The most a full batch holds: a cache of the whole context per request, the buffers of
        // one step over all of them (a token of each, and prompts of at most a context
        // together), and their logits.
        let cfg = &model.config;
        let (batch, context) = (limits.max_batch, cfg.n_positions);
        let step = StepBuffers::floats(cfg, batch.saturating_add(context), batch);
        Need::new()
            .floats(
                "KV caches",
                KvCache::cache_floats(cfg, batch, context, model.kv_dtype()),
            )
            .floats("step buffers", step)
            .floats("next-token logits", product(&[batch, cfg.vocab_size]))
            .check(
                &format!("serving {batch} requests at once with a context of {context} tokens"),
                "use a smaller --max-batch",
            )?;
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("gpt2-serve-{i}"))
            .build()
            .map_err(|e| Error::Input(format!("cannot start {threads} threads: {e}")))?;
        let (model, tokenizer, pool) = (Arc::new(model), Arc::new(tokenizer), Arc::new(pool));
        let (engine, thread) = Engine::start(model.clone(), tokenizer.clone(), limits, pool.clone())?;
        let app = App::new(engine, model, tokenizer, pool, model_name, api);
        Ok(Server {
            router: http::router(Arc::new(app)),
            engine: thread,
        })
    }

    /// The runtime [`Server::run`] runs on: two workers, as the connections need little next
    /// to the decoding.
    pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
    }

    /// Serves on `listener` until `shutdown` completes; requests in flight then end first.
    pub async fn run(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        axum::serve(listener, self.router)
            .with_graceful_shutdown(shutdown)
            .await?;
        tokio::task::spawn_blocking(move || self.engine.join())
            .await
            .ok()
            .and_then(|joined| joined.ok())
            .ok_or_else(|| std::io::Error::other("the engine thread failed"))
    }
}
