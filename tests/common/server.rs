//! A `gpt2 serve` child process for the tests of the HTTP API and the web page.

use super::{fixture, gpt2, temp_dir};
use gpt2::io::hf::save_hf_dir;
use gpt2::tokenizer::Tokenizer;
use gpt2::{Config, Gpt};
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::Duration;

/// A model directory with a character tokenizer over 96 ids ('\n', ASCII 32..127), removed
/// when dropped.
pub struct CharModel(pub PathBuf);

impl CharModel {
    /// The tiny fixture model (2 layers, 4 heads, 128 positions).
    pub fn tiny(tag: &str) -> Self {
        let dir = temp_dir(&format!("serve-{tag}"));
        for file in ["config.json", "model.safetensors"] {
            std::fs::copy(fixture("tiny").join(file), dir.join(file)).unwrap();
        }
        Self::with_tokenizer(dir)
    }

    /// A random model large enough that a long completion takes seconds (4 layers of 512,
    /// 1024 positions): something to hold the batch busy with.
    pub fn slow(tag: &str) -> Self {
        let dir = temp_dir(&format!("serve-{tag}"));
        save_hf_dir(&Gpt::new(Config::new(96, 1024, 512, 4, 8), 3).unwrap(), &dir).unwrap();
        Self::with_tokenizer(dir)
    }

    fn with_tokenizer(dir: PathBuf) -> Self {
        let chars: Vec<char> = std::iter::once('\n').chain((32u8..127).map(char::from)).collect();
        Tokenizer::char_level(chars).unwrap().save(&dir).unwrap();
        CharModel(dir)
    }

    pub fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for CharModel {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `gpt2 serve` on a free loopback port, stopped (SIGINT, as Ctrl-C) when dropped.
pub struct Server {
    pub child: Child,
    /// http://127.0.0.1:PORT
    pub url: String,
}

impl Server {
    /// Starts `gpt2 --threads 1 serve --model MODEL --port 0 EXTRA...` and waits for its URL.
    pub fn start(model: &CharModel, extra: &[&str]) -> Self {
        let mut child = gpt2()
            .args(["--threads", "1", "serve", "--model", model.path(), "--port", "0"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let start = line.find("http://").unwrap_or_else(|| panic!("no URL in {line:?}"));
        let url = line[start..]
            .split_whitespace()
            .next()
            .unwrap()
            .trim_end_matches('/')
            .to_string();
        Server { child, url }
    }

    /// Sends SIGINT (Ctrl-C).
    pub fn interrupt(&self) {
        // SAFETY: a signal to our own child process.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
    }

    /// POSTs `body` to `path`: (status, the Retry-After header, the body as text).
    pub fn post(&self, path: &str, body: impl AsRef<[u8]>) -> (u16, Option<String>, String) {
        let response = agent()
            .post(format!("{}{path}", self.url))
            .header("content-type", "application/json")
            .send(body.as_ref())
            .unwrap();
        let status = response.status().as_u16();
        let retry = response
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap().to_string());
        (status, retry, response.into_body().read_to_string().unwrap())
    }

    /// POSTs a JSON value and reads a JSON answer: (status, body).
    pub fn post_json(&self, path: &str, body: &serde_json::Value) -> (u16, serde_json::Value) {
        let (status, _, text) = self.post(path, body.to_string());
        (
            status,
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}")),
        )
    }

    pub fn get(&self, path: &str) -> (u16, String) {
        let response = agent().get(format!("{}{path}", self.url)).call().unwrap();
        (
            response.status().as_u16(),
            response.into_body().read_to_string().unwrap(),
        )
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.interrupt();
        for _ in 0..100 {
            if self.child.try_wait().unwrap().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(120)))
        .build()
        .into()
}
