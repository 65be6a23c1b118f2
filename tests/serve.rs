//! `gpt2 serve` from the outside: the completions equal `gpt2 generate`'s with the same seed,
//! streamed or whole; /v1/inspect equals `gpt2 inspect --json`; bad requests get OpenAI's
//! error object; a full server answers 503; a client that goes away frees its place; Ctrl-C
//! lets the requests in flight end.

use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

mod common;
use common::server::{CharModel, Server};
use common::{fixture, run_gpt2};

/// `gpt2 generate ... --json` with the given flags.
fn generate(model: &CharModel, flags: &[&str]) -> Value {
    let out = run_gpt2(&[&["generate", "--model", model.path(), "--json"], flags].concat());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The data lines of a server-sent event stream.
fn events(text: &str) -> Vec<&str> {
    text.lines().filter_map(|l| l.strip_prefix("data: ")).collect()
}

#[test]
fn completions_equal_generate_with_the_same_seed_streamed_or_whole() {
    let model = CharModel::tiny("same-seed");
    let server = Server::start(&model, &[]);
    let settings = json!({"prompt": "Hello", "max_tokens": 40, "seed": 7, "temperature": 0.9, "top_k": 30,
                          "top_p": 0.95, "repetition_penalty": 1.1, "n": 2, "stop": ["\n\n"]});
    let flags = [
        "--prompt",
        "Hello",
        "--max-new-tokens",
        "40",
        "--seed",
        "7",
        "--temperature",
        "0.9",
        "--top-k",
        "30",
        "--top-p",
        "0.95",
        "--repetition-penalty",
        "1.1",
        "--num-samples",
        "2",
        "--stop",
        "\\n\\n",
    ];
    let expected = generate(&model, &flags);
    let (status, whole) = server.post_json("/v1/completions", &settings);
    assert_eq!(status, 200, "{whole}");
    assert_eq!(whole["object"], "text_completion");
    let mut completion_tokens = 0;
    for i in 0..2 {
        let (choice, sample) = (&whole["choices"][i], &expected["samples"][i]);
        assert_eq!(choice["index"], i);
        assert_eq!(choice["text"], sample["text"], "choice {i}");
        let finish = if sample["finish"] == "length" { "length" } else { "stop" };
        assert_eq!(choice["finish_reason"], finish);
        completion_tokens += sample["ids"].as_array().unwrap().len();
    }
    let usage = &whole["usage"];
    assert_eq!(usage["prompt_tokens"], 5);
    assert_eq!(usage["completion_tokens"], completion_tokens);
    assert_eq!(usage["total_tokens"], 5 + completion_tokens);

    // The same request streamed: the chunks add up to the same texts, then usage and [DONE].
    let mut streamed = settings.clone();
    streamed["stream"] = json!(true);
    let (status, _, text) = server.post("/v1/completions", streamed.to_string());
    assert_eq!(status, 200);
    let data = events(&text);
    assert_eq!(data.last(), Some(&"[DONE]"));
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    let mut texts = [String::new(), String::new()];
    for chunk in &chunks {
        for choice in chunk["choices"].as_array().unwrap() {
            texts[choice["index"].as_u64().unwrap() as usize].push_str(choice["text"].as_str().unwrap());
        }
    }
    assert_eq!(texts[0], whole["choices"][0]["text"].as_str().unwrap());
    assert_eq!(texts[1], whole["choices"][1]["text"].as_str().unwrap());
    assert_eq!(chunks.last().unwrap()["usage"], whole["usage"]);

    // echo puts the prompt first; logprobs lists each token with its alternatives.
    let (_, echoed) = server.post_json(
        "/v1/completions",
        &json!({"prompt": "Hi", "max_tokens": 5, "seed": 1, "echo": true, "logprobs": 3}),
    );
    let choice = &echoed["choices"][0];
    assert!(choice["text"].as_str().unwrap().starts_with("Hi"), "{choice}");
    let logprobs = &choice["logprobs"];
    assert_eq!(logprobs["tokens"].as_array().unwrap().len(), 5);
    assert_eq!(
        logprobs["text_offset"][0], 2,
        "the first token follows the echoed prompt"
    );
    for (lp, top) in logprobs["token_logprobs"]
        .as_array()
        .unwrap()
        .iter()
        .zip(logprobs["top_logprobs"].as_array().unwrap())
    {
        let best = top
            .as_object()
            .unwrap()
            .values()
            .map(|v| v.as_f64().unwrap())
            .fold(f64::MIN, f64::max);
        assert!(lp.as_f64().unwrap() <= best + 1e-6 && best <= 0.0);
    }
}

#[test]
fn inspect_endpoint_equals_inspect_json() {
    let model = CharModel::tiny("inspect");
    let server = Server::start(&model, &[]);
    let (status, served) = server.post_json("/v1/inspect", &json!({"prompt": "Hello there", "layer": 1}));
    assert_eq!(status, 200, "{served}");
    let out = run_gpt2(&[
        "inspect",
        "--model",
        model.path(),
        "--prompt",
        "Hello there",
        "--layer",
        "1",
        "--logit-lens",
        "--json",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let expected: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(served, expected);
    let heads = served["blocks"][0]["heads"].as_array().unwrap();
    assert_eq!(heads.len(), 4);
    assert_eq!(heads[0]["weights"].as_array().unwrap().len(), 11);
    // Token ids work as a prompt too, and a layer beyond the model is a 400.
    let (status, by_ids) = server.post_json("/v1/inspect", &json!({"prompt": [40, 69], "layer": 0}));
    assert_eq!(status, 200);
    assert_eq!(by_ids["tokens"].as_array().unwrap().len(), 2);
    let (status, error) = server.post_json("/v1/inspect", &json!({"prompt": "Hi", "layer": 2}));
    assert_eq!(status, 400);
    assert!(
        error["error"]["message"].as_str().unwrap().contains("layer 2"),
        "{error}"
    );
}

#[test]
fn the_other_endpoints_answer() {
    let model = CharModel::tiny("endpoints");
    let server = Server::start(&model, &[]);
    let (status, health) = server.get("/health");
    assert_eq!((status, health.contains("ok")), (200, true));
    let (status, models) = server.get("/v1/models");
    let models: Value = serde_json::from_str(&models).unwrap();
    assert_eq!(status, 200);
    assert_eq!(models["data"][0]["object"], "model");
    assert_eq!(models["data"][0]["config"]["n_layer"], 2);
    let (status, page) = server.get("/");
    assert_eq!(status, 200);
    assert!(page.contains("<title>gpt2 serve</title>") && !page.contains("http://") && !page.contains("https://"));
    let (_, ids) = server.post_json("/tokenize", &json!({"prompt": "Hi!"}));
    assert_eq!(ids["count"], 3);
    let (_, text) = server.post_json("/detokenize", &json!({"tokens": ids["tokens"]}));
    assert_eq!(text["prompt"], "Hi!");
}

/// The status and the error object of a bad request.
fn refused(server: &Server, path: &str, body: impl AsRef<[u8]>) -> (u16, Value) {
    let (status, _, text) = server.post(path, body);
    let error: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    let object = &error["error"];
    assert!(object["message"].is_string() && object["type"].is_string(), "{error}");
    assert!(object.get("param").is_some() && object.get("code").is_some(), "{error}");
    (status, error["error"].clone())
}

#[test]
fn bad_requests_get_openai_errors_and_the_server_keeps_serving() {
    let model = CharModel::tiny("bad");
    let server = Server::start(
        &model,
        &["--max-n", "4", "--max-tokens", "50", "--max-body-bytes", "4096"],
    );
    let completions = |body: &str| refused(&server, "/v1/completions", body);
    assert_eq!(completions("{\"prompt\": ").0, 400, "malformed JSON");
    assert_eq!(completions("[1, 2]").0, 400, "not an object");
    let (status, error) = completions(r#"{"prompt": "Hi", "max_tokens": "many"}"#);
    assert_eq!((status, error["param"].as_str()), (400, Some("max_tokens")), "{error}");
    let (status, error) = completions(r#"{"prompt": 5}"#);
    assert_eq!((status, error["param"].as_str()), (400, Some("prompt")), "{error}");
    assert_eq!(completions(r#"{"max_tokens": 5}"#).0, 400, "no prompt");
    assert_eq!(completions(r#"{"prompt": ""}"#).0, 400, "empty prompt");
    assert_eq!(
        completions(r#"{"prompt": [1, 96]}"#).0,
        400,
        "id outside the vocabulary"
    );
    assert_eq!(
        completions(r#"{"prompt": "Hi", "max_tokens": 51}"#).0,
        400,
        "beyond --max-tokens"
    );
    assert_eq!(completions(r#"{"prompt": "Hi", "n": 5}"#).0, 400, "beyond --max-n");
    assert_eq!(completions(r#"{"prompt": "Hi", "n": 0}"#).0, 400);
    assert_eq!(
        completions(r#"{"prompt": "Hi", "temperature": -1}"#).1["param"],
        "temperature"
    );
    assert_eq!(completions(r#"{"prompt": "Hi", "top_p": 0}"#).1["param"], "top_p");
    assert_eq!(completions(r#"{"prompt": "Hi", "stop": [""]}"#).1["param"], "stop");
    assert_eq!(
        completions(r#"{"prompt": "Hi", "logprobs": 99}"#).1["param"],
        "logprobs"
    );
    // A prompt that leaves no room for max_tokens in the 128-token context is refused.
    let long = json!({"prompt": "x".repeat(100), "max_tokens": 40}).to_string();
    let (status, error) = completions(&long);
    assert_eq!(
        (status, error["code"].as_str()),
        (400, Some("context_length_exceeded")),
        "{error}"
    );
    // Invalid UTF-8 inside a string, and a body over the limit.
    assert_eq!(
        refused(&server, "/v1/completions", b"{\"prompt\": \"\xff\xfe\"}").0,
        400
    );
    let big = format!("{{\"prompt\": \"{}\"}}", "a".repeat(5000));
    assert_eq!(refused(&server, "/v1/completions", big).0, 413);
    assert_eq!(refused(&server, "/tokenize", "{\"prompt\": 3}").0, 400);
    assert_eq!(refused(&server, "/detokenize", "{\"tokens\": [-1]}").0, 400);
    assert_eq!(refused(&server, "/no/such/thing", "{}").0, 404);
    // Unknown fields are ignored, as OpenAI does; the server still answers.
    let (status, ok) = server.post_json(
        "/v1/completions",
        &json!({"prompt": "Hi", "max_tokens": 3, "model": "whatever", "frequency_penalty": 0.5}),
    );
    assert_eq!(status, 200, "{ok}");
    assert_eq!(ok["usage"]["completion_tokens"], 3);
}

/// Sends a streaming completion over a raw connection and reads until its first token event.
fn start_stream(server: &Server, max_tokens: usize) -> TcpStream {
    let address = server.url.trim_start_matches("http://");
    let mut stream = TcpStream::connect(address).unwrap();
    let body = json!({"prompt": "Once", "max_tokens": max_tokens, "stream": true, "seed": 1}).to_string();
    write!(
        stream,
        "POST /v1/completions HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains("\"finish_reason\":null") {
        let n = stream.read(&mut buf).unwrap();
        assert!(n > 0, "the stream ended early: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buf[..n]);
    }
    assert!(String::from_utf8_lossy(&seen).starts_with("HTTP/1.1 200"));
    stream
}

fn load(server: &Server) -> u64 {
    let (_, health) = server.get("/health");
    serde_json::from_str::<Value>(&health).unwrap()["requests"]
        .as_u64()
        .unwrap()
}

#[test]
fn a_full_server_answers_503_and_a_client_that_leaves_frees_its_place() {
    let model = CharModel::slow("busy");
    let server = Server::start(&model, &["--max-batch", "1", "--max-queue", "1"]);
    // One request decoding, one waiting: the third is refused with Retry-After.
    let running = start_stream(&server, 1000);
    let address = server.url.trim_start_matches("http://").to_string();
    let mut waiting = TcpStream::connect(&address).unwrap();
    let body = json!({"prompt": "Twice", "max_tokens": 1000, "stream": true}).to_string();
    write!(
        waiting,
        "POST /v1/completions HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    while load(&server) < 2 {
        std::thread::sleep(Duration::from_millis(20));
    }
    let (status, retry, text) = server.post("/v1/completions", json!({"prompt": "Hi", "max_tokens": 2}).to_string());
    assert_eq!((status, retry.as_deref()), (503, Some("1")), "{text}");
    let error: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(error["error"]["type"], "server_busy");
    // Both clients go away: their places are freed (long before 1000 tokens each), and the
    // server answers again.
    drop(running);
    drop(waiting);
    while load(&server) > 0 {
        std::thread::sleep(Duration::from_millis(20));
    }
    let (status, done) = server.post_json("/v1/completions", &json!({"prompt": "Hi", "max_tokens": 2}));
    assert_eq!(status, 200, "{done}");
    // A client waiting for a whole (not streamed) completion that goes away frees it too.
    let mut whole = TcpStream::connect(&address).unwrap();
    let body = json!({"prompt": "Thrice", "max_tokens": 1000}).to_string();
    write!(
        whole,
        "POST /v1/completions HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    while load(&server) < 1 {
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(whole);
    while load(&server) > 0 {
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn ctrl_c_lets_the_requests_in_flight_end() {
    let model = CharModel::slow("ctrl-c");
    let mut server = Server::start(&model, &[]);
    let mut stream = start_stream(&server, 200);
    server.interrupt();
    let mut rest = String::new();
    stream.read_to_string(&mut rest).unwrap();
    assert!(rest.contains("data: [DONE]"), "the stream was cut: {rest}");
    assert!(rest.contains("\"finish_reason\":\"length\""));
    assert!(server.child.wait().unwrap().success());
}

#[test]
fn a_batch_beyond_the_machine_is_refused_before_serving() {
    let model = CharModel::tiny("huge-batch");
    let out = run_gpt2(&[
        "serve",
        "--model",
        model.path(),
        "--port",
        "0",
        "--max-batch",
        "100000000",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("KV caches") && stderr.contains("--max-batch"),
        "{stderr}"
    );
}

#[test]
fn a_server_with_an_adapter_completes_as_generate_with_it() {
    let model = CharModel::tiny("adapter");
    let lora = fixture("tiny_lora");
    let adapter = ["--adapter", lora.to_str().unwrap(), "--dtype", "bf16"];
    let server = Server::start(&model, &adapter);
    let request = json!({"prompt": "Hello", "max_tokens": 30, "seed": 3, "temperature": 0.8});
    let (status, served) = server.post_json("/v1/completions", &request);
    assert_eq!(status, 200, "{served}");
    let flags = [
        "--prompt",
        "Hello",
        "--max-new-tokens",
        "30",
        "--seed",
        "3",
        "--temperature",
        "0.8",
    ];
    let expected = generate(&model, &[&flags[..], &adapter[..]].concat());
    assert_eq!(served["choices"][0]["text"], expected["samples"][0]["text"]);
    let base = generate(&model, &[&flags[..], &["--dtype", "bf16"]].concat());
    assert_ne!(
        served["choices"][0]["text"], base["samples"][0]["text"],
        "the adapter changes the text"
    );
}
