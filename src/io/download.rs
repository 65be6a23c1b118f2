//! Downloading OpenAI's GPT-2 from the Hugging Face hub or from OpenAI's original release into
//! the [cache](super::cache), resuming interrupted transfers and verifying what arrives.
//!
//! For each file:
//! 1. HEAD, without following redirects: Hugging Face answers an LFS file with a redirect whose
//!    `X-Linked-Size` and `X-Linked-Etag` headers give its size and sha256; a small file's
//!    `ETag` is its git blob sha1. OpenAI's server gives the size (`Content-Length`).
//! 2. GET into `{cache}/.partial/...`, asking with `Range: bytes=N-` for the rest when an
//!    earlier attempt left N bytes. A server that ignores the range (200) restarts the file.
//! 3. Check the size and the hash. A wrong hash deletes the file; an interrupted transfer keeps
//!    it for the next attempt.
//!
//! OpenAI publishes no hashes, but its checkpoint holds a crc32c of every tensor: all of them
//! are verified. Only then is the folder moved into place, in one rename, so a model in the
//! cache is always complete; nothing is written outside the cache directory.

use super::atomic::write_dir;
use super::cache::{model_dir, partial_dir, Source, MODELS};
use super::tf_checkpoint::{read_hparams, Bundle};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::model::num_params;
use sha1::Sha1;
use sha2::{Digest, Sha256};
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// What to download, from where, to where.
pub struct Request<'a> {
    /// One of [`MODELS`].
    pub model: &'a str,
    pub source: Source,
    pub cache_dir: &'a Path,
    /// Replaces `https://huggingface.co` or `https://openaipublic.blob.core.windows.net` (a
    /// mirror; the tests' local server).
    pub base_url: Option<&'a str>,
}

/// Progress reports, for a progress bar.
#[derive(Debug, Clone, PartialEq)]
pub enum Event<'a> {
    /// The model is already in the cache: nothing to do.
    Cached,
    /// A file's transfer starts: its size if known, and the bytes kept from an earlier attempt.
    Start {
        file: &'a str,
        size: Option<u64>,
        resumed_from: u64,
    },
    /// `bytes` more bytes of the current file arrived.
    Progress { bytes: u64 },
    /// The file is complete; `check` says how it was verified.
    Verified { file: &'a str, check: String },
}

/// The files of a model, in download order (small ones first).
pub fn files(source: Source) -> &'static [&'static str] {
    match source {
        Source::HuggingFace => &["config.json", "vocab.json", "merges.txt", "model.safetensors"],
        Source::OpenAi => &[
            "hparams.json",
            "encoder.json",
            "vocab.bpe",
            "model.ckpt.index",
            "model.ckpt.data-00000-of-00001",
        ],
    }
}

fn url(req: &Request, file: &str) -> String {
    match req.source {
        Source::HuggingFace => format!(
            "{}/openai-community/{}/resolve/main/{file}",
            req.base_url.unwrap_or("https://huggingface.co"),
            req.model
        ),
        Source::OpenAi => {
            // OpenAI names its models by parameter count.
            let size = match req.model {
                "gpt2" => "124M",
                "gpt2-medium" => "355M",
                "gpt2-large" => "774M",
                _ => "1558M",
            };
            format!(
                "{}/gpt-2/models/{size}/{file}",
                req.base_url.unwrap_or("https://openaipublic.blob.core.windows.net")
            )
        }
    }
}

/// The most bytes `file` of `model` may have, whatever a server says: a server that announces
/// no size (or a larger one) cannot fill the disk. Generous: the settings and vocabularies are
/// a few kB to 1.5 MB, the weights 4 bytes per parameter (plus a header or an index).
fn size_bound(model: &str, file: &str) -> u64 {
    const MB: u64 = 1_000_000;
    match file {
        "config.json" | "hparams.json" => MB,
        "vocab.json" | "merges.txt" | "encoder.json" | "vocab.bpe" | "model.ckpt.index" => 64 * MB,
        _ => {
            let params = Config::preset(model).map_or(0, |cfg| num_params(&cfg) as u64);
            params * 4 * 5 / 4 + 64 * MB
        }
    }
}

/// What the server says a file should be.
#[derive(Debug, Default)]
struct Expected {
    size: Option<u64>,
    /// The hex sha256 (Hugging Face LFS files).
    sha256: Option<String>,
    /// The hex git blob sha1 (Hugging Face files in git).
    git_sha1: Option<String>,
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_connect(Some(Duration::from_secs(30)))
        .timeout_recv_response(Some(Duration::from_secs(60)))
        .timeout_per_read(Some(Duration::from_secs(60)))
        .build()
        .into()
}

fn header(resp: &ureq::http::Response<ureq::Body>, name: &str) -> Option<String> {
    resp.headers().get(name)?.to_str().ok().map(str::to_string)
}

/// `location` (a redirect target) made absolute against `base`.
fn join_url(base: &str, location: &str) -> String {
    if location.contains("://") {
        return location.to_string();
    }
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    if let Some(rest) = location.strip_prefix("//") {
        return format!("{}{rest}", &base[..scheme_end]);
    }
    let host_end = base[scheme_end..].find('/').map_or(base.len(), |i| scheme_end + i);
    if location.starts_with('/') {
        return format!("{}{location}", &base[..host_end]);
    }
    let dir_end = base.rfind('/').filter(|&i| i >= host_end).map_or(base.len(), |i| i + 1);
    format!("{}{location}", &base[..dir_end])
}

fn http_error(url: &str, status: u16) -> Error {
    let hint = match status {
        401 | 403 => " (access denied)",
        404 => " (not found: check the model name, or --base-url)",
        429 => " (rate limited: try again later)",
        500..=599 => " (server error: try again later)",
        _ => "",
    };
    Error::download(url, format!("HTTP {status}{hint}"))
}

/// The size and hash the server announces for `url` (step 1).
fn metadata(agent: &ureq::Agent, source: Source, url: &str) -> Result<Expected> {
    let mut current = url.to_string();
    let mut expected = Expected::default();
    let mut etag = None;
    for _ in 0..10 {
        let resp = agent
            .head(&current)
            .config()
            .max_redirects(0)
            .build()
            .call()
            .map_err(|e| Error::download(&current, e.to_string()))?;
        // The first response that names them wins: Hugging Face's redirect carries them.
        expected.size = expected
            .size
            .or(header(&resp, "x-linked-size").and_then(|s| s.parse().ok()));
        etag = etag.or(header(&resp, "x-linked-etag"));
        let status = resp.status().as_u16();
        match status {
            300..=399 => {
                let location = header(&resp, "location")
                    .ok_or_else(|| Error::download(&current, format!("HTTP {status} without a Location")))?;
                current = join_url(&current, &location);
            }
            200..=299 => {
                expected.size = expected
                    .size
                    .or(header(&resp, "content-length").and_then(|s| s.parse().ok()));
                let etag = etag.or(header(&resp, "etag")).unwrap_or_default();
                // Only the hub's ETags are hashes; elsewhere an ETag is an opaque version tag.
                let tag = etag.trim_start_matches("W/").trim_matches('"').to_ascii_lowercase();
                if source == Source::HuggingFace && tag.bytes().all(|b| b.is_ascii_hexdigit()) {
                    match tag.len() {
                        64 => expected.sha256 = Some(tag),
                        40 => expected.git_sha1 = Some(tag),
                        _ => {}
                    }
                }
                return Ok(expected);
            }
            _ => return Err(http_error(&current, status)),
        }
    }
    Err(Error::download(url, "more than 10 redirects"))
}

/// The first, last and total of a `Content-Range: bytes first-last/total` header.
fn parse_content_range(value: &str) -> Option<(u64, Option<u64>)> {
    let (range, total) = value.strip_prefix("bytes ")?.split_once('/')?;
    let first = range.split_once('-')?.0.parse().ok()?;
    Some((first, total.parse().ok()))
}

/// Downloads `url` (`file` of `model`) into `part`, continuing after the bytes already there
/// (step 2).
fn fetch(
    agent: &ureq::Agent,
    url: &str,
    model: &str,
    file: &str,
    part: &Path,
    expected: &Expected,
    on_event: &mut dyn FnMut(Event),
) -> Result<()> {
    let have = kept_bytes(part, expected);
    if have > 0 && expected.size == Some(have) {
        return Ok(()); // complete from an earlier attempt: verified next
    }
    let mut request = agent.get(url);
    if have > 0 {
        request = request.header("Range", format!("bytes={have}-"));
    }
    let resp = request.call().map_err(|e| Error::download(url, e.to_string()))?;
    let (start, total) = body_range(url, part, have, &resp)?;
    if let (Some(total), Some(size)) = (total, expected.size) {
        if total != size {
            let _ = fs::remove_file(part);
            return Err(Error::download(
                url,
                format!("the server announced {size} bytes, then sent a file of {total} bytes"),
            ));
        }
    }
    let size = expected.size.or(total);
    let bound = size_bound(model, file);
    if size.is_some_and(|size| size > bound) {
        return Err(Error::download(
            url,
            format!("the server announced {size:?} bytes, more than a {file} of {model} can be ({bound} at most)"),
        ));
    }
    on_event(Event::Start {
        file,
        size,
        resumed_from: start,
    });
    write_body(resp, url, part, (start, size.unwrap_or(bound)), on_event)
}

/// The bytes of `part` that an earlier attempt left; none when there are more than the file
/// has (they are not a prefix of it).
fn kept_bytes(part: &Path, expected: &Expected) -> u64 {
    let have = fs::metadata(part).map(|m| m.len()).unwrap_or(0);
    if expected.size.is_some_and(|size| have > size) {
        0
    } else {
        have
    }
}

/// Where the response's body starts in the file, and the file's size if the server gives it:
/// at `have` when the server resumes (206, its range checked), at 0 when it sends the whole
/// file (200). A refusal to resume (416) deletes `part`.
fn body_range(
    url: &str,
    part: &Path,
    have: u64,
    resp: &ureq::http::Response<ureq::Body>,
) -> Result<(u64, Option<u64>)> {
    let status = resp.status().as_u16();
    match status {
        206 => {
            let range = header(resp, "content-range").unwrap_or_default();
            match parse_content_range(&range) {
                Some((first, total)) if first == have => Ok((have, total)),
                _ => Err(Error::download(
                    url,
                    format!("asked for bytes {have}-, the server sent Content-Range '{range}'"),
                )),
            }
        }
        200 => Ok((0, header(resp, "content-length").and_then(|s| s.parse().ok()))),
        // The kept bytes are no prefix of the file any more: start again next time.
        416 => {
            fs::remove_file(part).map_err(|e| Error::io(part, e))?;
            Err(Error::download(
                url,
                "the server refused to resume (HTTP 416); the partial file was deleted, run again",
            ))
        }
        _ => Err(http_error(url, status)),
    }
}

/// Writes the body, which starts at byte `start` of the file, into `part`: after the kept
/// bytes, or over them when `start` is 0. An interrupted transfer keeps what arrived (synced);
/// more bytes than the file's `size` (the announced size, else the bound) delete it.
fn write_body(
    resp: ureq::http::Response<ureq::Body>,
    url: &str,
    part: &Path,
    (start, size): (u64, u64),
    on_event: &mut dyn FnMut(Event),
) -> Result<()> {
    let mut out = OpenOptions::new()
        .create(true)
        .write(true)
        .append(start > 0)
        .truncate(start == 0)
        .open(part)
        .map_err(|e| Error::io(part, e))?;
    let mut body = resp.into_body().into_reader();
    let mut buf = vec![0u8; 1 << 20];
    let mut len = start;
    loop {
        let n = match body.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) => {
                out.sync_all().map_err(|e| Error::io(part, e))?;
                return Err(Error::download(
                    url,
                    format!("transfer interrupted after {len} bytes ({e}); run the command again to resume"),
                ));
            }
        };
        len += n as u64;
        if len > size {
            drop(out);
            let _ = fs::remove_file(part);
            return Err(Error::download(
                url,
                format!("the server sent more than {size} bytes, more than it announced or such a file can be"),
            ));
        }
        out.write_all(&buf[..n]).map_err(|e| Error::io(part, e))?;
        on_event(Event::Progress { bytes: n as u64 });
    }
    out.sync_all().map_err(|e| Error::io(part, e))
}

/// The hex digest of `prefix` followed by the file's bytes.
fn hash_file<D: Digest>(path: &Path, prefix: &[u8]) -> Result<String> {
    let mut hasher = D::new();
    hasher.update(prefix);
    let mut file = File::open(path).map_err(|e| Error::io(path, e))?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match file.read(&mut buf).map_err(|e| Error::io(path, e))? {
            0 => return Ok(hasher.finalize().iter().map(|b| format!("{b:02x}")).collect()),
            n => hasher.update(&buf[..n]),
        }
    }
}

/// Checks a downloaded file against what the server announced (step 3).
fn verify(url: &str, part: &Path, expected: &Expected) -> Result<String> {
    let len = fs::metadata(part).map_err(|e| Error::io(part, e))?.len();
    if let Some(size) = expected.size {
        if len != size {
            return Err(Error::download(
                url,
                format!("incomplete: {len} of {size} bytes; run the command again to resume"),
            ));
        }
    }
    let (kind, want, got) = match (&expected.sha256, &expected.git_sha1) {
        (Some(want), _) => ("sha256", want, hash_file::<Sha256>(part, b"")?),
        // git hashes a blob as "blob <length>\0" + its bytes.
        (None, Some(want)) => (
            "git sha1",
            want,
            hash_file::<Sha1>(part, format!("blob {len}\0").as_bytes())?,
        ),
        (None, None) => return Ok(format!("{len} bytes")),
    };
    if &got != want {
        fs::remove_file(part).map_err(|e| Error::io(part, e))?;
        return Err(Error::download(
            url,
            format!("{kind} mismatch: expected {want}, got {got}; the corrupt download was deleted, run again"),
        ));
    }
    Ok(format!("{len} bytes, {kind} {}", &got[..12]))
}

/// Downloads a model into the cache (unless it is there already) and returns its folder. An
/// incomplete folder in the cache is replaced only once a complete, verified one is ready.
pub fn download(req: &Request, on_event: &mut dyn FnMut(Event)) -> Result<PathBuf> {
    if !MODELS.contains(&req.model) {
        return Err(Error::Input(format!(
            "unknown model '{}' (expected one of: {})",
            req.model,
            MODELS.join(", ")
        )));
    }
    let target = model_dir(req.cache_dir, req.source, req.model);
    if files(req.source).iter().all(|f| target.join(f).is_file()) {
        on_event(Event::Cached);
        return Ok(target);
    }
    let partial = partial_dir(req.cache_dir, req.source, req.model);
    fs::create_dir_all(&partial).map_err(|e| Error::io(&partial, e))?;
    let agent = agent();
    for &file in files(req.source) {
        let url = url(req, file);
        let part = partial.join(file);
        let expected = metadata(&agent, req.source, &url)?;
        fetch(&agent, &url, req.model, file, &part, &expected, on_event)?;
        let check = verify(&url, &part, &expected)?;
        on_event(Event::Verified { file, check });
    }
    if req.source == Source::OpenAi {
        let checked = read_hparams(&partial.join("hparams.json"))
            .and_then(|_| Bundle::open(&partial.join("model.ckpt"))?.verify());
        if let Err(e) = checked {
            fs::remove_dir_all(&partial).map_err(|e| Error::io(&partial, e))?;
            return Err(Error::download(
                url(req, "model.ckpt.index"),
                format!("the downloaded checkpoint is corrupt ({e}); it was deleted, run again"),
            ));
        }
        on_event(Event::Verified {
            file: "model.ckpt",
            check: "crc32c of every tensor".into(),
        });
    }
    write_dir(&target, |tmp| {
        files(req.source).iter().try_for_each(|file| {
            let (from, to) = (partial.join(file), tmp.join(file));
            fs::rename(&from, &to).map_err(|e| Error::io(&from, e))
        })
    })?;
    fs::remove_dir_all(&partial).map_err(|e| Error::io(&partial, e))?;
    Ok(target)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirect_targets() {
        let base = "https://huggingface.co/openai-community/gpt2/resolve/main/config.json";
        assert_eq!(join_url(base, "https://cdn.example/x"), "https://cdn.example/x");
        assert_eq!(join_url(base, "//cdn.example/x"), "https://cdn.example/x");
        assert_eq!(
            join_url(base, "/api/resolve-cache/x"),
            "https://huggingface.co/api/resolve-cache/x"
        );
        assert_eq!(
            join_url(base, "other.json"),
            "https://huggingface.co/openai-community/gpt2/resolve/main/other.json"
        );
        assert_eq!(join_url("http://host", "/a"), "http://host/a");
    }

    #[test]
    fn content_ranges() {
        assert_eq!(parse_content_range("bytes 100-199/200"), Some((100, Some(200))));
        assert_eq!(parse_content_range("bytes 5-9/*"), Some((5, None)));
        assert_eq!(parse_content_range("items 0-1/2"), None);
    }
}
