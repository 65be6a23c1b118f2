//! The append-only logs of a run (`metrics.jsonl`, `param_stats.jsonl`): one JSON record per
//! line, each about a step. Each line is one write, so a crash can only cut the last line
//! short; readers skip such a line. A resumed run first drops the lines of the steps it redoes.

use crate::error::{Error, Result};
use crate::io::atomic::write_file;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};

/// JSON has no NaN or infinity: serde_json writes them as `null`, which this reads back as NaN
/// (`#[serde(deserialize_with = "null_as_nan")]` on an f32 field that can be non-finite).
pub fn null_as_nan<'de, D: serde::Deserializer<'de>>(deserializer: D) -> std::result::Result<f32, D::Error> {
    Ok(Option::<f32>::deserialize(deserializer)?.unwrap_or(f32::NAN))
}

/// A record of a log.
pub trait LogRecord: Serialize + DeserializeOwned {
    /// What a record is, for error messages ("metrics record").
    const WHAT: &'static str;

    /// The step the record is about.
    fn step(&self) -> usize;
}

/// An open log, appended to.
pub struct JsonLines<R> {
    path: PathBuf,
    file: File,
    record: PhantomData<R>,
}

impl<R: LogRecord> JsonLines<R> {
    /// Opens `path` for appending (creating it). Lines of steps at or after `from_step` (written
    /// after the checkpoint being resumed from) are dropped first, so the log continues the
    /// checkpoint. Returns the log and the records kept.
    pub fn open(path: &Path, from_step: usize) -> Result<(JsonLines<R>, Vec<R>)> {
        let mut kept = Vec::new();
        if path.exists() {
            let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
            let mut kept_text = String::new();
            for (line, record) in parse::<R>(path, &text)? {
                if record.step() < from_step {
                    kept_text.push_str(line);
                    kept_text.push('\n');
                    kept.push(record);
                }
            }
            if kept_text.len() != text.len() {
                write_file(path, |w| w.write_all(kept_text.as_bytes()))?;
            }
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| Error::io(path, e))?;
        let log = JsonLines {
            path: path.to_path_buf(),
            file,
            record: PhantomData,
        };
        Ok((log, kept))
    }

    /// Appends a record as one line, in one write.
    pub fn append(&mut self, record: &R) -> Result<()> {
        let mut line = serde_json::to_string(record).map_err(|e| Error::Input(e.to_string()))?;
        line.push('\n');
        self.file
            .write_all(line.as_bytes())
            .map_err(|e| Error::io(&self.path, e))
    }
}

/// Whether the file `path` is a log as [`JsonLines`] writes it (so a run may rewrite it): UTF-8
/// lines that each hold a JSON object with a `step`, the last one perhaps cut short (then it
/// starts as an object does).
pub fn is_log(path: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string(path) else {
        return false;
    };
    let (complete, torn) = text.split_at(text.rfind('\n').map_or(0, |end| end + 1));
    let is_record = |line: &str| {
        serde_json::from_str::<serde_json::Value>(line).is_ok_and(|v| v.get("step").is_some_and(|s| s.is_u64()))
    };
    complete.lines().all(is_record) && (torn.is_empty() || torn.starts_with('{'))
}

/// The records of the log at `path` (read while a run may still be appending to it).
pub fn read<R: LogRecord>(path: &Path) -> Result<Vec<R>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    Ok(parse(path, &text)?.into_iter().map(|(_, record)| record).collect())
}

/// The complete lines of `text` with their records; a last line without its newline (a write
/// cut short) is left out.
fn parse<'t, R: LogRecord>(path: &Path, text: &'t str) -> Result<Vec<(&'t str, R)>> {
    let complete = text.rfind('\n').map_or("", |end| &text[..=end]);
    complete
        .lines()
        .enumerate()
        .map(|(i, line)| {
            let record = serde_json::from_str(line)
                .map_err(|e| Error::Input(format!("{}: line {}: not a {}: {e}", path.display(), i + 1, R::WHAT)))?;
            Ok((line, record))
        })
        .collect()
}
