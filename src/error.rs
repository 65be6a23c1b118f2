//! One error type for the library: every failure says what was wrong and where.

use std::path::PathBuf;

/// Errors returned by the library. Bad user input never panics; it ends up here.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A configuration that cannot describe a GPT-2 model (e.g. n_embd not divisible by n_head).
    #[error("invalid config: {0}")]
    Config(String),
    /// Input that the model cannot take (sequence too long, token id out of range, ...).
    #[error("invalid input: {0}")]
    Input(String),
    /// A weight file that is missing, truncated, foreign or holds the wrong tensors.
    #[error("{path}: {msg}")]
    Weights { path: PathBuf, msg: String },
    /// A tokenizer failure (unknown character, bad vocabulary file, ...).
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// A training run that cannot go on (its loss diverged).
    #[error("training: {0}")]
    Training(String),
    /// A download that failed: an HTTP error, a broken connection, a file that does not match
    /// what the server announced.
    #[error("{url}: {msg}")]
    Download { url: String, msg: String },
    /// An I/O failure, with the file it concerns. The cause is part of the message and not a
    /// `source()`, so that a printed error chain does not say it twice.
    #[error("{path}: {cause}")]
    Io { path: PathBuf, cause: std::io::Error },
    /// This process of a run over several stops because another one failed, which says why.
    #[error("{0}")]
    Stopped(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// Wraps an I/O error with the path it happened on.
    pub fn io(path: impl Into<PathBuf>, cause: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            cause,
        }
    }

    /// A download error naming the URL.
    pub fn download(url: impl Into<String>, msg: impl Into<String>) -> Self {
        Error::Download {
            url: url.into(),
            msg: msg.into(),
        }
    }

    /// A weight-file error naming the file.
    pub fn weights(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Error::Weights {
            path: path.into(),
            msg: msg.into(),
        }
    }
}
