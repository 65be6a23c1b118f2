//! `gpt2 download` against a local HTTP server on 127.0.0.1 that serves the tiny fixture model
//! in the layouts of the Hugging Face hub and of OpenAI's release, and misbehaves on request:
//! a dropped connection, corrupted bytes, a lie about a size, HTTP errors, ignored ranges.

use gpt2::io::cache::Source;
use gpt2::io::download::{download, Event, Request};
use gpt2::io::load_model;
use sha1::Sha1;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

mod common;
use common::{gpt2, temp_dir, FIXTURES};

/// Ways for the server to misbehave on one URL path.
#[derive(Clone, Copy, Debug)]
enum Fault {
    /// Announce the whole body, send this many bytes, hang up (once).
    CutAfter(usize),
    /// Send the file with one byte flipped (its announced hash stays the true one).
    Corrupt,
    /// Announce (in HEAD) a size this many bytes larger than the file.
    LieSize(u64),
    /// Answer every request with this status.
    Status(u16),
    /// Ignore Range headers and always send the whole file.
    IgnoreRange,
    /// Announce no size and send spaces until the client hangs up (at most 64 MB).
    Endless,
}

/// One file the server holds, by URL path.
struct Served {
    bytes: Vec<u8>,
    /// Hugging Face LFS: HEAD and GET redirect to `/cdn{path}`, with X-Linked-Size/-Etag.
    lfs: bool,
    /// The ETag header, if any.
    etag: Option<String>,
}

#[derive(Default)]
struct State {
    files: HashMap<String, Served>,
    faults: HashMap<String, Vec<Fault>>,
    /// "METHOD path [range]" of every request, in order.
    log: Vec<String>,
}

struct Server {
    url: String,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    fn start(files: HashMap<String, Served>) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(Mutex::new(State {
            files,
            ..State::default()
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st) = (state.clone(), stop.clone());
        // At most 200 connections, one at a time; the test's client is sequential.
        let thread = std::thread::spawn(move || {
            for stream in listener.incoming().take(200) {
                if st.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(stream) = stream {
                    let _ = handle(stream, &s);
                }
            }
        });
        Server {
            url,
            state,
            stop,
            thread: Some(thread),
        }
    }

    fn fault(&self, path: &str, fault: Fault) {
        self.state
            .lock()
            .unwrap()
            .faults
            .entry(path.into())
            .or_default()
            .push(fault);
    }

    fn clear_faults(&self) {
        self.state.lock().unwrap().faults.clear();
    }

    fn log(&self) -> Vec<String> {
        self.state.lock().unwrap().log.clone()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.url.trim_start_matches("http://")); // wake the accept
        let _ = self.thread.take().unwrap().join();
    }
}

fn respond(stream: &mut TcpStream, status: u16, headers: &[(&str, String)], body: &[u8]) -> std::io::Result<()> {
    let mut head = format!("HTTP/1.1 {status} X\r\nConnection: close\r\n");
    for (name, value) in headers {
        head += &format!("{name}: {value}\r\n");
    }
    stream.write_all(format!("{head}\r\n").as_bytes())?;
    stream.write_all(body)
}

fn handle(mut stream: TcpStream, state: &Mutex<State>) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let mut range_start = None;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line)?;
        if line.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("range") {
                range_start = value
                    .trim()
                    .strip_prefix("bytes=")
                    .and_then(|r| r.trim_end_matches('-').parse().ok());
            }
        }
    }
    let mut parts = request_line.split_whitespace();
    let (method, path) = (
        parts.next().unwrap_or("").to_string(),
        parts.next().unwrap_or("").to_string(),
    );
    let mut state = state.lock().unwrap();
    state.log.push(match range_start {
        Some(r) => format!("{method} {path} bytes={r}-"),
        None => format!("{method} {path}"),
    });
    let (file_path, via_cdn) = match path.strip_prefix("/cdn") {
        Some(p) => (p.to_string(), true),
        None => (path.clone(), false),
    };
    let faults = state.faults.get(&file_path).cloned().unwrap_or_default();
    if let Some(&Fault::Status(code)) = faults.iter().find(|f| matches!(f, Fault::Status(_))) {
        return respond(&mut stream, code, &[("Content-Length", "0".into())], b"");
    }
    let Some(file) = state.files.get(&file_path) else {
        return respond(&mut stream, 404, &[("Content-Length", "0".into())], b"");
    };
    let mut bytes = file.bytes.clone();
    let lie = faults
        .iter()
        .find_map(|f| if let Fault::LieSize(n) = f { Some(*n) } else { None })
        .unwrap_or(0);
    let announced = bytes.len() as u64 + lie;
    if file.lfs && !via_cdn {
        let sha = format!("\"{:x}\"", Sha256::digest(&file.bytes));
        let headers = [
            ("Location", format!("/cdn{file_path}")),
            ("X-Linked-Size", announced.to_string()),
            ("X-Linked-Etag", sha),
            ("Content-Length", "0".into()),
        ];
        return respond(&mut stream, 302, &headers, b"");
    }
    if faults.iter().any(|f| matches!(f, Fault::Endless)) {
        drop(state);
        respond(&mut stream, 200, &[], b"")?;
        if method == "GET" {
            for _ in 0..64 {
                stream.write_all(&[b' '; 1 << 20])?;
            }
        }
        return Ok(());
    }
    let mut headers = Vec::new();
    if let Some(etag) = &file.etag {
        headers.push(("ETag", etag.clone()));
    }
    if method == "HEAD" {
        headers.push(("Content-Length", announced.to_string()));
        return respond(&mut stream, 200, &headers, b"");
    }
    if faults.iter().any(|f| matches!(f, Fault::Corrupt)) {
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x40;
    }
    let total = bytes.len();
    let mut status = 200;
    let mut start = 0;
    if let Some(r) = range_start.filter(|_| !faults.iter().any(|f| matches!(f, Fault::IgnoreRange))) {
        if r >= total {
            return respond(&mut stream, 416, &[("Content-Length", "0".into())], b"");
        }
        status = 206;
        start = r;
        headers.push(("Content-Range", format!("bytes {r}-{}/{total}", total - 1)));
    }
    headers.push(("Content-Length", (total - start).to_string()));
    let cut = faults.iter().position(|f| matches!(f, Fault::CutAfter(_)));
    let end = match cut {
        Some(i) => {
            let Fault::CutAfter(n) = state.faults.get_mut(&file_path).unwrap().remove(i) else {
                unreachable!()
            };
            (start + n).min(total)
        }
        None => total,
    };
    drop(state);
    respond(&mut stream, status, &headers, &bytes[start..end])
}

/// The tiny fixture as the Hugging Face hub serves a model (config.json and the tokenizer files
/// are in git, the weights in LFS; the tokenizer is the OpenAI fixture's 96 tokens).
fn hub_files(model: &str) -> HashMap<String, Served> {
    let tiny = Path::new(FIXTURES).join("tiny");
    let vocab = Path::new(FIXTURES).join("tiny_openai");
    let mut files = HashMap::new();
    let small = [
        ("config.json", fs::read(tiny.join("config.json")).unwrap()),
        ("vocab.json", fs::read(vocab.join("encoder.json")).unwrap()),
        ("merges.txt", fs::read(vocab.join("vocab.bpe")).unwrap()),
    ];
    for (name, bytes) in small {
        let mut git = Sha1::new();
        git.update(format!("blob {}\0", bytes.len()));
        git.update(&bytes);
        let etag = Some(format!("\"{:x}\"", git.finalize()));
        let path = format!("/openai-community/{model}/resolve/main/{name}");
        files.insert(
            path,
            Served {
                bytes,
                lfs: false,
                etag,
            },
        );
    }
    files.insert(
        format!("/openai-community/{model}/resolve/main/model.safetensors"),
        Served {
            bytes: fs::read(tiny.join("model.safetensors")).unwrap(),
            lfs: true,
            etag: None,
        },
    );
    files
}

const HUB_WEIGHTS: &str = "/openai-community/gpt2/resolve/main/model.safetensors";
const OPENAI_DATA: &str = "/gpt-2/models/124M/model.ckpt.data-00000-of-00001";

/// The tiny OpenAI-layout fixture as OpenAI's server serves gpt2 (124M).
fn openai_files() -> HashMap<String, Served> {
    let dir = Path::new(FIXTURES).join("tiny_openai");
    fs::read_dir(&dir)
        .unwrap()
        .map(|entry| {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            let served = Served {
                bytes: fs::read(&path).unwrap(),
                lfs: false,
                etag: Some("\"0x8DC3A1B2C3D4E5F\"".into()), // Azure's opaque version tag
            };
            (format!("/gpt-2/models/124M/{name}"), served)
        })
        .collect()
}

/// A scratch root holding only the cache directory, so a test can see what was written where.
fn scratch(name: &str) -> (PathBuf, PathBuf) {
    let root = temp_dir(&format!("download-{name}"));
    (root.clone(), root.join("cache"))
}

fn fetch(server: &Server, cache: &Path, source: Source, events: &mut Vec<String>) -> gpt2::Result<PathBuf> {
    let req = Request {
        model: "gpt2",
        source,
        cache_dir: cache,
        base_url: Some(&server.url),
    };
    download(&req, &mut |e| match e {
        Event::Progress { .. } => {}
        other => events.push(format!("{other:?}")),
    })
}

fn tiny_params() -> Vec<f32> {
    load_model(&Path::new(FIXTURES).join("tiny")).unwrap().params
}

/// Every file under `dir`, relative to it.
fn files_under(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).into_iter().flatten() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path.strip_prefix(dir).unwrap().to_string_lossy().into_owned());
            }
        }
    }
    out.sort();
    out
}

#[test]
fn a_hub_download_is_verified_and_placed_in_the_cache() {
    let server = Server::start(hub_files("gpt2"));
    let (root, cache) = scratch("hub");
    let mut events = Vec::new();
    let dir = fetch(&server, &cache, Source::HuggingFace, &mut events).unwrap();
    assert_eq!(dir, cache.join("hf/gpt2"));
    assert_eq!(
        files_under(&root),
        [
            "cache/hf/gpt2/config.json",
            "cache/hf/gpt2/merges.txt",
            "cache/hf/gpt2/model.safetensors",
            "cache/hf/gpt2/vocab.json"
        ]
    );
    assert!(load_model(&dir).unwrap().params == tiny_params());
    let checks: Vec<&String> = events.iter().filter(|e| e.starts_with("Verified")).collect();
    assert!(
        checks[0].contains("config.json") && checks[0].contains("git sha1"),
        "{checks:?}"
    );
    assert!(
        checks[3].contains("model.safetensors") && checks[3].contains("sha256"),
        "{checks:?}"
    );

    // A second download finds it cached and asks the server nothing.
    let requests = server.log().len();
    let mut events = Vec::new();
    fetch(&server, &cache, Source::HuggingFace, &mut events).unwrap();
    assert_eq!(events, ["Cached"]);
    assert_eq!(server.log().len(), requests);
}

#[test]
fn an_openai_download_checks_every_tensor() {
    let server = Server::start(openai_files());
    let (_, cache) = scratch("openai");
    let mut events = Vec::new();
    let dir = fetch(&server, &cache, Source::OpenAi, &mut events).unwrap();
    assert!(load_model(&dir).unwrap().params == tiny_params());
    assert!(
        events.iter().any(|e| e.contains("crc32c of every tensor")),
        "{events:?}"
    );
    assert!(!dir.join("model.ckpt.meta").exists(), "only the files the model needs");

    // Bytes changed in transit: sizes match, OpenAI publishes no hash, the crc32c catch it.
    server.fault(OPENAI_DATA, Fault::Corrupt);
    let (root, cache) = scratch("openai-corrupt");
    let err = fetch(&server, &cache, Source::OpenAi, &mut Vec::new())
        .unwrap_err()
        .to_string();
    assert!(err.contains("corrupt") && err.contains("crc32c"), "{err}");
    assert!(files_under(&root).is_empty(), "nothing kept: {:?}", files_under(&root));
}

#[test]
fn an_interrupted_transfer_resumes_where_it_stopped() {
    let server = Server::start(hub_files("gpt2"));
    let (root, cache) = scratch("resume");
    server.fault(HUB_WEIGHTS, Fault::CutAfter(50_000));
    let err = fetch(&server, &cache, Source::HuggingFace, &mut Vec::new())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("interrupted after 50000 bytes") && err.contains("resume"),
        "{err}"
    );
    assert!(!cache.join("hf/gpt2").exists(), "no incomplete model in the cache");
    let partial = cache.join(".partial/hf/gpt2/model.safetensors");
    assert_eq!(fs::metadata(&partial).unwrap().len(), 50_000);

    let mut events = Vec::new();
    let dir = fetch(&server, &cache, Source::HuggingFace, &mut events).unwrap();
    assert!(server.log().contains(&format!("GET /cdn{HUB_WEIGHTS} bytes=50000-")));
    assert!(events.iter().any(|e| e.contains("resumed_from: 50000")), "{events:?}");
    assert!(load_model(&dir).unwrap().params == tiny_params());
    assert!(files_under(&root).iter().all(|f| f.starts_with("cache/hf/gpt2/")));
}

#[test]
fn a_server_that_ignores_the_range_restarts_the_file() {
    let server = Server::start(hub_files("gpt2"));
    let (_, cache) = scratch("no-range");
    server.fault(HUB_WEIGHTS, Fault::CutAfter(10_000));
    server.fault(HUB_WEIGHTS, Fault::IgnoreRange);
    assert!(fetch(&server, &cache, Source::HuggingFace, &mut Vec::new()).is_err());
    let dir = fetch(&server, &cache, Source::HuggingFace, &mut Vec::new()).unwrap();
    assert!(load_model(&dir).unwrap().params == tiny_params());
}

#[test]
fn a_corrupted_file_is_rejected_and_deleted() {
    let server = Server::start(hub_files("gpt2"));
    let (root, cache) = scratch("corrupt");
    server.fault(HUB_WEIGHTS, Fault::Corrupt);
    let err = fetch(&server, &cache, Source::HuggingFace, &mut Vec::new())
        .unwrap_err()
        .to_string();
    assert!(err.contains("sha256 mismatch"), "{err}");
    assert!(files_under(&root).iter().all(|f| !f.contains("model.safetensors")));
    assert!(!cache.join("hf/gpt2").exists());

    server.clear_faults();
    let dir = fetch(&server, &cache, Source::HuggingFace, &mut Vec::new()).unwrap();
    assert!(load_model(&dir).unwrap().params == tiny_params());
}

#[test]
fn a_server_that_lies_about_a_size_is_refused() {
    let server = Server::start(hub_files("gpt2"));
    let (root, cache) = scratch("lie");
    server.fault(HUB_WEIGHTS, Fault::LieSize(1000));
    let err = fetch(&server, &cache, Source::HuggingFace, &mut Vec::new())
        .unwrap_err()
        .to_string();
    assert!(err.contains("announced") && err.contains("bytes"), "{err}");
    assert!(files_under(&root).iter().all(|f| !f.contains("model.safetensors")));
    assert!(!cache.join("hf/gpt2").exists());
}

#[test]
fn a_file_of_no_announced_size_is_cut_at_the_bound_for_its_kind() {
    let server = Server::start(hub_files("gpt2"));
    let (root, cache) = scratch("endless");
    server.fault("/openai-community/gpt2/resolve/main/config.json", Fault::Endless);
    let err = fetch(&server, &cache, Source::HuggingFace, &mut Vec::new())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("config.json: the server sent more than 1000000 bytes"),
        "{err}"
    );
    assert!(files_under(&root).iter().all(|f| !f.contains("config.json")));
    assert!(!cache.join("hf/gpt2").exists());
}

#[test]
fn http_errors_are_reported_and_nothing_is_placed() {
    let server = Server::start(hub_files("gpt2"));
    let (_, cache) = scratch("http");
    server.fault("/openai-community/gpt2/resolve/main/config.json", Fault::Status(500));
    let err = fetch(&server, &cache, Source::HuggingFace, &mut Vec::new())
        .unwrap_err()
        .to_string();
    assert!(err.contains("config.json") && err.contains("HTTP 500"), "{err}");
    assert!(!cache.join("hf/gpt2").exists());

    let err = download(
        &Request {
            model: "gpt2-medium",
            source: Source::HuggingFace,
            cache_dir: &cache,
            base_url: Some(&server.url),
        },
        &mut |_| {},
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("HTTP 404"), "{err}");

    let url = server.url.clone();
    drop(server);
    let req = Request {
        model: "gpt2",
        source: Source::HuggingFace,
        cache_dir: &cache,
        base_url: Some(&url),
    };
    let err = download(&req, &mut |_| {}).unwrap_err().to_string();
    assert!(err.contains(&url), "connection refused names the URL: {err}");
}

#[test]
fn the_cli_downloads_and_then_finds_the_model_by_name() {
    let server = Server::start(hub_files("gpt2"));
    let (root, cache) = scratch("cli");
    let out = gpt2()
        .args(["download", "gpt2", "--cache-dir"])
        .arg(&cache)
        .args(["--base-url", &server.url])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        cache.join("hf/gpt2").to_string_lossy()
    );

    // `--model gpt2` (here `--from gpt2`) is the cached copy, from any working directory.
    let converted = root.join("gpt2.bin");
    let out = gpt2()
        .current_dir(&root)
        .env("GPT2_CACHE_DIR", &cache)
        .args(["convert", "--from", "gpt2", "--to", "llmc", "--out"])
        .arg(&converted)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("tokenizer: bpe"));
    assert!(load_model(&converted).unwrap().params == tiny_params());

    let out = gpt2()
        .current_dir(&root)
        .env("GPT2_CACHE_DIR", root.join("empty-cache"))
        .args(["convert", "--from", "gpt2-xl", "--to", "hf", "--out", "x"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("gpt2 download gpt2-xl"));
}

#[test]
fn an_incomplete_cached_model_is_replaced_only_by_a_complete_one() {
    let server = Server::start(hub_files("gpt2"));
    let (_, cache) = scratch("incomplete");
    let dir = fetch(&server, &cache, Source::HuggingFace, &mut Vec::new()).unwrap();
    fs::remove_file(dir.join("merges.txt")).unwrap();
    // The next attempt fails: the damaged copy stays as it was, nothing half-written replaces it.
    server.fault(
        "/openai-community/gpt2/resolve/main/model.safetensors",
        Fault::Status(503),
    );
    assert!(fetch(&server, &cache, Source::HuggingFace, &mut Vec::new()).is_err());
    assert!(dir.join("config.json").is_file() && !dir.join("merges.txt").exists());
    server.clear_faults();
    fetch(&server, &cache, Source::HuggingFace, &mut Vec::new()).unwrap();
    assert!(dir.join("merges.txt").is_file());
    assert!(load_model(&dir).unwrap().params == tiny_params());
}
