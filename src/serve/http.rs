//! The HTTP API on axum: OpenAI's completions (whole or as server-sent events), the model list,
//! tokenize / detokenize, health, the inspection endpoint behind the web page, and the page.
//!
//! Every error is a 4xx or 5xx with OpenAI's error object
//! `{"error": {"message", "type", "param", "code"}}`; nothing a client sends ends the server
//! or a worker. Unknown fields are ignored, as OpenAI does.

use super::engine::{Busy, Engine, Event, GeneratedToken, Job};
use crate::generate::{Finish, Sampling};
use crate::inspect::trace::{self, logit_lens, TraceOptions};
use crate::inspect::trace_report;
use crate::model::{Gpt, Workspace};
use crate::rng::Rng;
use crate::tokenizer::{SpecialTokens, Tokenizer};
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::StreamExt;
use serde::de::DeserializeOwned;
use serde_json::{json, Map, Value};
use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

/// The page at `/`: hand-written HTML, CSS and JavaScript, nothing fetched from elsewhere.
const PAGE: &str = include_str!("page.html");

/// Most alternatives `logprobs` may ask for.
pub const MAX_LOGPROBS: usize = 20;
/// Most stop strings in one request (OpenAI's bound).
pub const MAX_STOPS: usize = 4;
/// A request body must arrive within this time.
const BODY_TIMEOUT: Duration = Duration::from_secs(30);

/// What the API accepts.
#[derive(Debug, Clone)]
pub struct ApiLimits {
    /// Largest `max_tokens`.
    pub max_tokens: usize,
    /// Largest `n` (choices per request).
    pub max_n: usize,
    /// Largest request body, in bytes (beyond: 413).
    pub body_bytes: usize,
}

/// Everything the handlers share.
pub struct App {
    pub engine: Engine,
    pub model: Arc<Gpt>,
    pub tokenizer: Arc<Tokenizer>,
    /// The threads inspections run on (those of the engine).
    pub pool: Arc<rayon::ThreadPool>,
    /// The model's name in responses and /v1/models.
    pub model_name: String,
    pub limits: ApiLimits,
    requests: AtomicU64,
}

impl App {
    pub fn new(
        engine: Engine,
        model: Arc<Gpt>,
        tokenizer: Arc<Tokenizer>,
        pool: Arc<rayon::ThreadPool>,
        model_name: String,
        limits: ApiLimits,
    ) -> Self {
        App {
            engine,
            model,
            tokenizer,
            pool,
            model_name,
            limits,
            requests: AtomicU64::new(0),
        }
    }
}

/// The routes.
pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/", get(|| async { Html(PAGE) }))
        .route("/health", get(health))
        .route("/v1/models", get(models))
        .route("/v1/completions", post(completions))
        .route("/v1/inspect", post(inspect))
        .route("/tokenize", post(tokenize))
        .route("/detokenize", post(detokenize))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such endpoint") })
        .with_state(app)
}

/// An error in OpenAI's shape.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
    param: Option<&'static str>,
    code: Option<&'static str>,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            param: None,
            code: None,
        }
    }

    /// A 400 about one field of the request.
    fn invalid(param: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            param: Some(param),
            ..ApiError::new(StatusCode::BAD_REQUEST, message)
        }
    }

    fn body(&self) -> Value {
        let kind = match self.status {
            StatusCode::SERVICE_UNAVAILABLE => "server_busy",
            s if s.is_server_error() => "server_error",
            _ => "invalid_request_error",
        };
        json!({"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}})
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(self.body())).into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
        }
        response
    }
}

impl From<Busy> for ApiError {
    fn from(_: Busy) -> Self {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the server is busy: every place in the batch and the queue is taken; retry shortly",
        )
    }
}

type ApiResult<T> = std::result::Result<T, ApiError>;

/// The body of `request` as a JSON object: at most `limit` bytes (else 413), within
/// [`BODY_TIMEOUT`] (else 408), valid JSON and an object (else 400).
async fn json_body(request: Request, limit: usize) -> ApiResult<Map<String, Value>> {
    let mut data = request.into_body().into_data_stream();
    let mut bytes = Vec::new();
    let read = async {
        while let Some(chunk) = data.next().await {
            let chunk = chunk.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("reading the body: {e}")))?;
            if bytes.len() + chunk.len() > limit {
                return Err(ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("the request body is larger than the limit of {limit} bytes"),
                ));
            }
            bytes.extend_from_slice(&chunk);
        }
        Ok(())
    };
    tokio::time::timeout(BODY_TIMEOUT, read)
        .await
        .map_err(|_| ApiError::new(StatusCode::REQUEST_TIMEOUT, "the request body did not arrive in time"))??;
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(ApiError::new(StatusCode::BAD_REQUEST, "the body must be a JSON object")),
        Err(e) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("the body is not valid JSON: {e}"),
        )),
    }
}

/// Field `name` of the body (absent or null: `None`); a value of the wrong type is a 400
/// naming the field.
fn field<T: DeserializeOwned>(body: &Map<String, Value>, name: &'static str) -> ApiResult<Option<T>> {
    match body.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(value) => T::deserialize(value)
            .map(Some)
            .map_err(|e| ApiError::invalid(name, format!("{name}: {e}"))),
    }
}

/// A prompt: a string, a one-string array, or an array of token ids.
fn prompt_ids(app: &App, body: &Map<String, Value>, name: &'static str) -> ApiResult<Vec<u32>> {
    let value = body
        .get(name)
        .ok_or_else(|| ApiError::invalid(name, format!("{name} is required")))?;
    let text = match value {
        Value::String(text) => Some(text),
        Value::Array(items) => match items.as_slice() {
            [Value::String(text)] => Some(text),
            _ => None,
        },
        _ => None,
    };
    let ids = match text {
        Some(text) => app
            .tokenizer
            .encode_with_special(text, SpecialTokens::Allow)
            .map_err(|e| ApiError::invalid(name, e.to_string()))?,
        None => {
            let ids: Vec<u32> = field(body, name)?.unwrap_or_default();
            ids
        }
    };
    let vocab = app.model.config.vocab_size;
    if let Some(bad) = ids.iter().find(|&&id| id as usize >= vocab) {
        return Err(ApiError::invalid(
            name,
            format!("token id {bad} is outside the vocabulary [0, {vocab})"),
        ));
    }
    if ids.is_empty() {
        return Err(ApiError::invalid(
            name,
            format!("{name} is empty: give a string or at least one token id"),
        ));
    }
    Ok(ids)
}

/// `{"status": "ok", "requests": running and waiting requests}`.
async fn health(State(app): State<Arc<App>>) -> Json<Value> {
    Json(json!({"status": "ok", "requests": app.engine.load()}))
}

async fn models(State(app): State<Arc<App>>) -> Json<Value> {
    let cfg = &app.model.config;
    Json(json!({"object": "list", "data": [{
        "id": app.model_name, "object": "model", "created": 0, "owned_by": "gpt2",
        "config": {"n_layer": cfg.n_layer, "n_head": cfg.n_head, "n_embd": cfg.n_embd,
                   "n_positions": cfg.n_positions, "vocab_size": cfg.vocab_size},
    }]}))
}

async fn tokenize(State(app): State<Arc<App>>, request: Request) -> ApiResult<Json<Value>> {
    let body = json_body(request, app.limits.body_bytes).await?;
    let text: String = field(&body, "prompt")?.ok_or_else(|| ApiError::invalid("prompt", "prompt is required"))?;
    let ids = app
        .tokenizer
        .encode_with_special(&text, SpecialTokens::Allow)
        .map_err(|e| ApiError::invalid("prompt", e.to_string()))?;
    let cfg = &app.model.config;
    Ok(Json(
        json!({"tokens": ids, "count": ids.len(), "max_model_len": cfg.n_positions}),
    ))
}

async fn detokenize(State(app): State<Arc<App>>, request: Request) -> ApiResult<Json<Value>> {
    let body = json_body(request, app.limits.body_bytes).await?;
    let ids: Vec<u32> = field(&body, "tokens")?.ok_or_else(|| ApiError::invalid("tokens", "tokens is required"))?;
    let text = app
        .tokenizer
        .decode(&ids)
        .map_err(|e| ApiError::invalid("tokens", e.to_string()))?;
    Ok(Json(json!({"prompt": text})))
}

/// `POST /v1/inspect` `{"prompt", "layer"?, "top_k"?}`: the forward pass over the prompt as
/// `gpt2 inspect --json --logit-lens [--layer L] [--top-k K]` prints it (the same numbers).
async fn inspect(State(app): State<Arc<App>>, request: Request) -> ApiResult<Json<Value>> {
    let body = json_body(request, app.limits.body_bytes).await?;
    let ids = prompt_ids(&app, &body, "prompt")?;
    let options = TraceOptions {
        layer: field(&body, "layer")?,
        top_k: field(&body, "top_k")?.unwrap_or(TraceOptions::default().top_k),
        ..TraceOptions::default()
    };
    trace::check(&app.model, &ids, &options).map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.to_string()))?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    let worker = app.clone();
    app.pool.spawn(move || {
        let (model, tokenizer) = (&worker.model, Some(worker.tokenizer.as_ref()));
        let mut ws = Workspace::new();
        let report = trace::trace(model, &mut ws, &ids, tokenizer, &options)
            .and_then(|trace| Ok((trace, logit_lens(model, ws.activations(), tokenizer)?)))
            .map_err(|e| e.to_string())
            .and_then(|(trace, lens)| trace_report(&trace, Some(&lens)).map_err(|e| e.to_string()));
        let _ = tx.send(report);
    });
    let report = rx
        .await
        .unwrap_or_else(|_| Err("the inspection stopped".into()))
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e))?;
    Ok(Json(report))
}

/// A completion request, checked.
struct Completion {
    prompt: Vec<u32>,
    max_tokens: usize,
    sampling: Sampling,
    stops: Vec<String>,
    n: usize,
    seed: u64,
    logprobs: Option<usize>,
    echo: bool,
    stream: bool,
}

impl Completion {
    fn parse(app: &App, body: &Map<String, Value>) -> ApiResult<Self> {
        let prompt = prompt_ids(app, body, "prompt")?;
        let max_tokens = field(body, "max_tokens")?.unwrap_or(16);
        if max_tokens > app.limits.max_tokens {
            return Err(ApiError::invalid(
                "max_tokens",
                format!("max_tokens is {max_tokens}: at most {} here", app.limits.max_tokens),
            ));
        }
        let context = app.model.config.n_positions;
        if prompt.len() + max_tokens > context {
            return Err(ApiError {
                code: Some("context_length_exceeded"),
                ..ApiError::invalid(
                    "max_tokens",
                    format!(
                        "this model's context is {context} tokens, but {} were asked for ({} in the prompt, {max_tokens} \
                         for the completion): shorten the prompt or lower max_tokens",
                        prompt.len() + max_tokens,
                        prompt.len()
                    ),
                )
            });
        }
        let sampling = Sampling {
            temperature: field(body, "temperature")?.unwrap_or(1.0),
            top_k: field(body, "top_k")?,
            top_p: field(body, "top_p")?.unwrap_or(1.0),
            repetition_penalty: field(body, "repetition_penalty")?.unwrap_or(1.0),
        };
        sampling.validate().map_err(|e| sampling_error(&e.to_string()))?;
        let n = field(body, "n")?.unwrap_or(1);
        if !(1..=app.limits.max_n).contains(&n) {
            return Err(ApiError::invalid(
                "n",
                format!("n must be between 1 and {}, got {n}", app.limits.max_n),
            ));
        }
        let logprobs: Option<usize> = field(body, "logprobs")?;
        if logprobs.is_some_and(|k| k > MAX_LOGPROBS) {
            return Err(ApiError::invalid(
                "logprobs",
                format!("logprobs must be at most {MAX_LOGPROBS}"),
            ));
        }
        let stops = match body.get("stop") {
            Some(Value::String(stop)) => vec![stop.clone()],
            _ => field::<Vec<String>>(body, "stop")?.unwrap_or_default(),
        };
        if stops.len() > MAX_STOPS || stops.iter().any(String::is_empty) {
            return Err(ApiError::invalid(
                "stop",
                format!("stop takes up to {MAX_STOPS} non-empty strings"),
            ));
        }
        Ok(Completion {
            prompt,
            max_tokens,
            sampling,
            stops,
            n,
            seed: field(body, "seed")?.unwrap_or_else(clock_seed),
            logprobs,
            echo: field(body, "echo")?.unwrap_or(false),
            stream: field(body, "stream")?.unwrap_or(false),
        })
    }

    /// The engine jobs of the choices. Choice i samples from the i-th seed drawn from
    /// `Rng::new(seed)`, as sample i of `gpt2 generate --seed` does.
    fn jobs(&self, app: &App) -> (Vec<Job>, UnboundedReceiver<Event>) {
        let (events, receiver) = unbounded_channel();
        let mut seeds = Rng::new(self.seed);
        let jobs = (0..self.n)
            .map(|choice| Job {
                prompt: self.prompt.clone(),
                max_tokens: self.max_tokens,
                sampling: self.sampling.clone(),
                stops: self.stops.clone(),
                stop_tokens: app.tokenizer.eot_token().into_iter().collect(),
                rng: Rng::new(seeds.next_u64()),
                logprobs: self.logprobs,
                choice,
                events: events.clone(),
            })
            .collect();
        (jobs, receiver)
    }
}

/// [`Sampling::validate`]'s message, which names the command-line flag, naming the field.
fn sampling_error(message: &str) -> ApiError {
    let fields = [
        ("--temperature", "temperature"),
        ("--top-k", "top_k"),
        ("--top-p", "top_p"),
        ("--repetition-penalty", "repetition_penalty"),
    ];
    let (flag, param) = fields
        .into_iter()
        .find(|(flag, _)| message.contains(flag))
        .unwrap_or(("", "temperature"));
    ApiError::invalid(param, message.replacen(flag, param, 1))
}

fn clock_seed() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

fn unix_time() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn finish_reason(finish: Finish) -> &'static str {
    match finish {
        Finish::Length => "length",
        Finish::StopToken | Finish::StopString => "stop",
    }
}

async fn completions(State(app): State<Arc<App>>, request: Request) -> Response {
    match start_completion(&app, request).await {
        Ok((request, events)) if request.stream => stream_completion(app, request, events),
        Ok((request, events)) => whole_completion(app, request, events).await.into_response(),
        Err(e) => e.into_response(),
    }
}

/// Parses the request and hands its choices to the engine.
async fn start_completion(app: &App, request: Request) -> ApiResult<(Completion, UnboundedReceiver<Event>)> {
    let body = json_body(request, app.limits.body_bytes).await?;
    let completion = Completion::parse(app, &body)?;
    let (jobs, events) = completion.jobs(app);
    app.engine.submit(jobs)?;
    Ok((completion, events))
}

/// The `logprobs` object of OpenAI's completions for some tokens of a choice.
#[derive(Default)]
struct Logprobs {
    tokens: Vec<String>,
    token_logprobs: Vec<f32>,
    top_logprobs: Vec<Map<String, Value>>,
    text_offset: Vec<usize>,
    /// Not in OpenAI's object: the ids, for a client that inspects a token (the web page).
    token_ids: Vec<u32>,
}

impl Logprobs {
    fn push(&mut self, token: &GeneratedToken, offset: usize) {
        let Some(lp) = &token.logprobs else { return };
        self.tokens.push(token.piece.clone());
        self.token_logprobs.push(lp.logprob);
        self.top_logprobs
            .push(lp.top.iter().map(|(_, piece, lp)| (piece.clone(), json!(lp))).collect());
        self.text_offset.push(offset);
        self.token_ids.push(token.id);
    }

    fn to_json(&self) -> Value {
        json!({"tokens": self.tokens, "token_logprobs": self.token_logprobs, "top_logprobs": self.top_logprobs,
               "text_offset": self.text_offset, "token_ids": self.token_ids})
    }
}

/// One choice as it is assembled (or streamed).
struct Choice {
    text: String,
    logprobs: Logprobs,
    finish: Option<Finish>,
    completion_tokens: usize,
}

/// What a request's choices have produced so far.
struct Progress {
    id: String,
    created: u64,
    choices: Vec<Choice>,
    prompt_tokens: usize,
    logprobs: bool,
    /// Text of the prompt (echo: it starts every choice's text).
    echo: Option<String>,
}

impl Progress {
    fn new(app: &App, request: &Completion) -> Self {
        let echo = request
            .echo
            .then(|| String::from_utf8_lossy(&app.tokenizer.decode_bytes_lossy(&request.prompt)).into_owned());
        Progress {
            id: format!("cmpl-{}", app.requests.fetch_add(1, Ordering::Relaxed)),
            created: unix_time(),
            choices: (0..request.n)
                .map(|_| Choice {
                    text: echo.clone().unwrap_or_default(),
                    logprobs: Logprobs::default(),
                    finish: None,
                    completion_tokens: 0,
                })
                .collect(),
            prompt_tokens: request.prompt.len(),
            logprobs: request.logprobs.is_some(),
            echo,
        }
    }

    /// Takes in one engine event: the text it adds to its choice and the token (or the error).
    fn apply(&mut self, event: &Event) -> ApiResult<()> {
        match event {
            Event::Token { choice, token } => {
                let c = &mut self.choices[*choice];
                c.logprobs.push(token, c.text.len());
                c.text.push_str(&token.text);
            }
            Event::Done {
                choice,
                finish,
                completion_tokens,
            } => {
                let c = &mut self.choices[*choice];
                (c.finish, c.completion_tokens) = (Some(*finish), *completion_tokens);
            }
            Event::Failed { message, .. } => {
                return Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, message.clone()));
            }
        }
        Ok(())
    }

    fn done(&self) -> bool {
        self.choices.iter().all(|c| c.finish.is_some())
    }

    fn usage(&self) -> Value {
        let completion: usize = self.choices.iter().map(|c| c.completion_tokens).sum();
        json!({"prompt_tokens": self.prompt_tokens, "completion_tokens": completion,
               "total_tokens": self.prompt_tokens + completion})
    }

    fn object(&self, model: &str, choices: Vec<Value>) -> Value {
        json!({"id": self.id, "object": "text_completion", "created": self.created, "model": model, "choices": choices})
    }
}

/// Waits for every choice and answers with the whole completion.
async fn whole_completion(
    app: Arc<App>,
    request: Completion,
    mut events: UnboundedReceiver<Event>,
) -> ApiResult<Json<Value>> {
    let mut progress = Progress::new(&app, &request);
    while !progress.done() {
        let event = events
            .recv()
            .await
            .ok_or_else(|| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "the engine stopped"))?;
        progress.apply(&event)?;
    }
    let choices = progress
        .choices
        .iter()
        .enumerate()
        .map(|(index, c)| {
            json!({"text": c.text, "index": index,
                   "logprobs": progress.logprobs.then(|| c.logprobs.to_json()),
                   "finish_reason": c.finish.map(finish_reason)})
        })
        .collect();
    let mut response = progress.object(&app.model_name, choices);
    response["usage"] = progress.usage();
    Ok(Json(response))
}

/// Server-sent events: a chunk per token (per choice), each choice's last chunk with its
/// finish_reason, then a chunk with no choices and the usage, then `data: [DONE]`. An error on
/// the way is sent as an error object before `[DONE]`.
fn stream_completion(app: Arc<App>, request: Completion, events: UnboundedReceiver<Event>) -> Response {
    let progress = Progress::new(&app, &request);
    let mut out = VecDeque::new();
    if let Some(echo) = &progress.echo {
        let choices = (0..request.n)
            .map(|index| json!({"text": echo, "index": index, "logprobs": null, "finish_reason": null}))
            .collect();
        out.push_back(progress.object(&app.model_name, choices).to_string());
    }
    let state = StreamState {
        app,
        events,
        progress,
        out,
        ended: false,
    };
    let stream = futures_util::stream::unfold(state, |mut s| async move {
        loop {
            if let Some(data) = s.out.pop_front() {
                return Some((Ok::<_, Infallible>(SseEvent::default().data(data)), s));
            }
            if s.ended {
                return None;
            }
            let event = s.events.recv().await;
            s.take(event);
        }
    });
    Sse::new(stream).into_response()
}

struct StreamState {
    app: Arc<App>,
    events: UnboundedReceiver<Event>,
    progress: Progress,
    /// Data lines ready to send.
    out: VecDeque<String>,
    ended: bool,
}

impl StreamState {
    /// Turns one engine event (`None`: the engine is gone) into data lines.
    fn take(&mut self, event: Option<Event>) {
        let Some(event) = event else {
            self.fail(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "the engine stopped"));
            return;
        };
        let model = &self.app.model_name;
        match &event {
            Event::Token { choice, token } => {
                let offset = self.progress.choices[*choice].text.len();
                let logprobs = self.progress.logprobs.then(|| {
                    let mut one = Logprobs::default();
                    one.push(token, offset);
                    one.to_json()
                });
                let chunk = json!({"text": token.text, "index": choice, "logprobs": logprobs, "finish_reason": null});
                self.out.push_back(self.progress.object(model, vec![chunk]).to_string());
            }
            Event::Done { choice, finish, .. } => {
                let chunk =
                    json!({"text": "", "index": choice, "logprobs": null, "finish_reason": finish_reason(*finish)});
                self.out.push_back(self.progress.object(model, vec![chunk]).to_string());
            }
            Event::Failed { .. } => {}
        }
        if let Err(e) = self.progress.apply(&event) {
            self.fail(e);
        } else if self.progress.done() {
            let mut last = self.progress.object(model, Vec::new());
            last["usage"] = self.progress.usage();
            self.out.push_back(last.to_string());
            self.out.push_back("[DONE]".into());
            self.ended = true;
        }
    }

    fn fail(&mut self, error: ApiError) {
        self.out.push_back(error.body().to_string());
        self.out.push_back("[DONE]".into());
        self.ended = true;
    }
}
