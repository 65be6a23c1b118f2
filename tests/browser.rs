//! The web page of `gpt2 serve` in headless Chromium, driven over WebDriver (chromedriver):
//! type a prompt, watch the continuation stream in, open the attention view of a token and
//! check what the page shows against the API. Without chromedriver and chromium the test says
//! it is skipped (Debian: `apt-get install chromium chromium-driver`).
//!
//! `GPT2_SCREENSHOT=docs/serve.png cargo test --release --test browser` also saves a screenshot.

use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{json, Value};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::server::{CharModel, Server};

/// The first of `candidates` that exists, or the program of that name on PATH.
fn find_program(env: &str, candidates: &[&str]) -> Option<PathBuf> {
    if let Some(path) = std::env::var_os(env) {
        return Some(PathBuf::from(path));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    candidates.iter().find_map(|name| {
        std::env::split_paths(&path)
            .chain([PathBuf::from("/usr/bin")])
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    })
}

/// chromedriver on a free port, killed when dropped.
struct Driver {
    child: Child,
    url: String,
}

impl Driver {
    fn start(program: &PathBuf) -> Driver {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new(program)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Driver {
            child,
            url: format!("http://127.0.0.1:{port}"),
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `script` (a function body that returns a value) in the page until it returns something
/// other than null.
async fn wait_for(client: &Client, what: &str, script: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let value = client.execute(script, vec![]).await.unwrap();
        if !value.is_null() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn set_input(client: &Client, id: &str, value: &str) {
    let input = client.find(Locator::Id(id)).await.unwrap();
    input.clear().await.unwrap();
    input.send_keys(value).await.unwrap();
}

/// The heatmap's cells as [head][position] weights, once it shows `ready` ("token:layer").
async fn heatmap(client: &Client, ready: &str) -> Vec<Vec<f64>> {
    let script = format!(
        "const h = document.getElementById('heatmap');
         if (h.dataset.ready !== '{ready}') return null;
         const rows = [];
         for (const c of h.querySelectorAll('td.cell')) {{
           (rows[Number(c.dataset.head)] ||= [])[Number(c.dataset.pos)] = Number(c.dataset.weight);
         }}
         return rows;"
    );
    serde_json::from_value(wait_for(client, "the attention view", &script).await).unwrap()
}

/// The page's heatmap equals the API's attention weights for that layer, head by head.
fn assert_same_attention(page: &[Vec<f64>], report: &Value) {
    let heads = report["blocks"][0]["heads"].as_array().unwrap();
    assert_eq!(page.len(), heads.len());
    for (row, head) in page.iter().zip(heads) {
        let weights: Vec<f64> = serde_json::from_value(head["weights"].clone()).unwrap();
        assert_eq!(row.len(), weights.len());
        for (a, b) in row.iter().zip(&weights) {
            assert!((a - b).abs() <= 1e-6, "page {a} vs API {b}");
        }
    }
}

#[tokio::test(flavor = "current_thread")]
async fn the_page_streams_a_continuation_and_shows_attention_as_the_api_does() {
    let (Some(driver), Some(chromium)) = (
        find_program("CHROMEDRIVER", &["chromedriver"]),
        find_program("CHROMIUM", &["chromium", "chromium-browser", "google-chrome"]),
    ) else {
        eprintln!(
            "SKIPPED tests/browser.rs: chromedriver or chromium not found (Debian: apt-get install chromium \
             chromium-driver; or set CHROMEDRIVER and CHROMIUM)"
        );
        return;
    };
    let model = CharModel::tiny("browser");
    let server = Server::start(&model, &[]);
    let driver = Driver::start(&driver);
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({"binary": chromium, "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                                            "--disable-dev-shm-usage", "--window-size=1400,900"]}),
    );
    let client = ClientBuilder::new(HttpConnector::new())
        .capabilities(caps)
        .connect(&driver.url)
        .await
        .expect("a session of headless chromium");

    client.goto(&format!("{}/", server.url)).await.unwrap();
    wait_for(&client, "the page", "return document.body.dataset.ready || null;").await;
    set_input(&client, "prompt", "To be, or not").await;
    set_input(&client, "max_tokens", "24").await;
    set_input(&client, "seed", "11").await;
    client
        .find(Locator::Id("generate"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let status = wait_for(
        &client,
        "the end of the stream",
        "const s = document.getElementById('status').textContent; return s.startsWith('done') || s.startsWith('error') ? s : null;",
    )
    .await;
    assert!(status.as_str().unwrap().starts_with("done: 24 tokens"), "{status}");

    // What streamed in is the API's completion for the same settings, token by token.
    let tokens = client
        .execute(
            "return [...document.querySelectorAll('.tok')].map(s => [s.textContent, Number(s.dataset.id), Number(s.dataset.prob)]);",
            vec![],
        )
        .await
        .unwrap();
    let tokens: Vec<(String, u32, f64)> = serde_json::from_value(tokens).unwrap();
    let (status, api) = server.post_json(
        "/v1/completions",
        &json!({"prompt": "To be, or not", "max_tokens": 24, "seed": 11, "logprobs": 5}),
    );
    assert_eq!(status, 200);
    let logprobs = &api["choices"][0]["logprobs"];
    assert_eq!(tokens.len(), 24);
    for (i, (piece, id, prob)) in tokens.iter().enumerate() {
        assert_eq!(piece, logprobs["tokens"][i].as_str().unwrap());
        assert_eq!(*id as u64, logprobs["token_ids"][i].as_u64().unwrap());
        assert!((prob - logprobs["token_logprobs"][i].as_f64().unwrap().exp()).abs() <= 1e-6);
    }
    let page_text: String = tokens.iter().map(|t| t.0.as_str()).collect();
    assert_eq!(page_text, api["choices"][0]["text"].as_str().unwrap());

    // Token 5's attention view: the pass over the prompt and the 5 tokens before it.
    let (_, prompt_ids) = server.post_json("/tokenize", &json!({"prompt": "To be, or not"}));
    let mut context: Vec<u32> = serde_json::from_value(prompt_ids["tokens"].clone()).unwrap();
    context.extend(tokens[..5].iter().map(|t| t.1));
    client
        .find(Locator::Css(".tok[data-index=\"5\"]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let page = heatmap(&client, "5:0").await;
    let (_, report) = server.post_json("/v1/inspect", &json!({"prompt": context, "layer": 0}));
    assert_same_attention(&page, &report);
    // The logit lens: one row per depth, the top guess after each layer.
    let lens = client
        .execute(
            "return [...document.querySelectorAll('#lens tr')].map(r => r.dataset.text);",
            vec![],
        )
        .await
        .unwrap();
    let expected: Vec<Value> = report["logit_lens"]["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| row["guesses"].as_array().unwrap().last().unwrap()["text"].clone())
        .collect();
    assert_eq!(lens, Value::Array(expected));
    // The pass's next-token candidates give the chosen token the probability the page shows.
    let candidates = report["next"].as_array().unwrap();
    if let Some(chosen) = candidates.iter().find(|p| p["id"].as_u64() == Some(tokens[5].1 as u64)) {
        assert!((chosen["prob"].as_f64().unwrap() - tokens[5].2).abs() <= 1e-5);
    }

    // Another layer.
    client
        .find(Locator::Id("layer"))
        .await
        .unwrap()
        .select_by_value("1")
        .await
        .unwrap();
    let page = heatmap(&client, "5:1").await;
    let (_, report) = server.post_json("/v1/inspect", &json!({"prompt": context, "layer": 1}));
    assert_same_attention(&page, &report);

    if let Some(path) = std::env::var_os("GPT2_SCREENSHOT") {
        std::fs::write(&path, client.screenshot().await.unwrap()).unwrap();
        eprintln!("wrote {}", PathBuf::from(path).display());
    }
    client.close().await.unwrap();
}
