//! What `inspect --evolution` finds: the first and last parameter statistics of a run's
//! `param_stats.jsonl`, and how the token embedding `wte` changed between two models (the cosine
//! similarity of each row before and after, and the nearest neighbours of chosen tokens).

use crate::error::{Error, Result};
use crate::inspect::token_piece;
use crate::model::Gpt;
use crate::runlog::jsonl;
use crate::runlog::param_stats::{self, Moments, ParamStatsRecord};
use crate::tokenizer::{SpecialTokens, Tokenizer};
use rayon::prelude::*;
use serde::Serialize;
use std::path::Path;

/// Nearest neighbours shown per chosen token.
pub const NEIGHBOURS: usize = 5;
/// Rows listed as the most changed.
pub const MOST_CHANGED: usize = 10;
/// The quantiles reported of the rows' cosine similarities.
pub const QUANTILES: [f32; 6] = [0.01, 0.1, 0.25, 0.5, 0.75, 0.9];
/// Candidates for the default chosen tokens, most frequent in English first; the first
/// [`DEFAULT_TOKEN_COUNT`] that are single tokens of the vocabulary are taken (GPT-2: " the",
/// " and", "e", "t", " "; a char-level Shakespeare: "e", "t", " ", "\n", "A").
pub const DEFAULT_TOKENS: [&str; 9] = [" the", " and", "e", "t", " ", "\n", "A", ",", "."];
pub const DEFAULT_TOKEN_COUNT: usize = 5;
/// The first and last evaluations of a run, tensor by tensor.
#[derive(Debug, Clone, Serialize)]
pub struct StatsSummary {
    pub evaluations: usize,
    pub first_step: usize,
    pub last_step: usize,
    pub tensors: Vec<TensorSummary>,
}

/// One tensor at the first and at the last evaluation.
#[derive(Debug, Clone, Serialize)]
pub struct TensorSummary {
    pub name: String,
    pub first: Moments,
    pub last: Moments,
    /// The last update and its update:data ratio, at the last evaluation.
    pub update: Option<Moments>,
    pub update_ratio: Option<f32>,
}

/// How the rows of `wte` changed: the cosine similarity of each token's row before and after.
#[derive(Debug, Clone, Serialize)]
pub struct EmbeddingChange {
    /// Rows compared: the tokenizer's ids (a padded vocabulary's unused rows are left out).
    pub rows: usize,
    pub width: usize,
    pub mean_cosine: f32,
    pub min_cosine: f32,
    pub max_cosine: f32,
    /// [`QUANTILES`] of the rows' cosines.
    pub quantiles: Vec<Quantile>,
    /// The [`MOST_CHANGED`] rows with the lowest cosine, lowest first.
    pub most_changed: Vec<TokenCosine>,
    /// Every row's cosine, by id (for the histogram).
    #[serde(skip)]
    pub cosines: Vec<f32>,
}

/// The cosine that a fraction `q` of the rows are at or below.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Quantile {
    pub q: f32,
    pub cosine: f32,
}

/// A token and a cosine similarity (to its own row elsewhere, or to another token).
#[derive(Debug, Clone, Serialize)]
pub struct TokenCosine {
    pub id: u32,
    pub token: String,
    pub cosine: f32,
}

/// A chosen token's nearest neighbours in the embedding before and after.
#[derive(Debug, Clone, Serialize)]
pub struct TokenNeighbours {
    pub id: u32,
    pub token: String,
    pub before: Vec<TokenCosine>,
    pub after: Vec<TokenCosine>,
}

/// The records of `run_dir/param_stats.jsonl`: at least one, each with the same tensors.
pub fn read_param_stats(run_dir: &Path) -> Result<Vec<ParamStatsRecord>> {
    if !run_dir.is_dir() {
        return Err(Error::Input(format!("{}: no such run directory", run_dir.display())));
    }
    let path = run_dir.join(param_stats::FILE);
    if !path.is_file() {
        return Err(Error::Input(format!(
            "{}: no {}: not a training run, or one from before parameter statistics were logged",
            run_dir.display(),
            param_stats::FILE
        )));
    }
    let records: Vec<ParamStatsRecord> = jsonl::read(&path)?;
    let first = records
        .first()
        .ok_or_else(|| Error::Input(format!("{}: no evaluation logged yet", path.display())))?;
    let names = |r: &ParamStatsRecord| r.tensors.iter().map(|t| t.name.clone()).collect::<Vec<_>>();
    if let Some(other) = records.iter().find(|r| names(r) != names(first)) {
        return Err(Error::Input(format!(
            "{}: the tensors of step {} are not those of step {}",
            path.display(),
            other.step,
            first.step
        )));
    }
    Ok(records)
}

/// Each tensor at the first and the last evaluation (`records` as [`read_param_stats`] returns them).
pub fn summarize(records: &[ParamStatsRecord]) -> StatsSummary {
    let (first, last) = (&records[0], &records[records.len() - 1]);
    StatsSummary {
        evaluations: records.len(),
        first_step: first.step,
        last_step: last.step,
        tensors: first
            .tensors
            .iter()
            .zip(&last.tensors)
            .map(|(a, b)| TensorSummary {
                name: a.name.clone(),
                first: a.param,
                last: b.param,
                update: b.update,
                update_ratio: b.update_ratio,
            })
            .collect(),
    }
}

/// The first `rows` rows of a model's token embedding.
fn wte(model: &Gpt, rows: usize) -> &[f32] {
    &model.weights().wte[..rows * model.config.n_embd]
}

/// The cosine similarity of each row of `wte` in `before` and `after` (the rows of the
/// tokenizer's ids), and its summary. `paths` name the models in errors.
pub fn embedding_change(
    before: &Gpt,
    after: &Gpt,
    tokenizer: Option<&Tokenizer>,
    paths: (&Path, &Path),
) -> Result<EmbeddingChange> {
    let shape = |m: &Gpt| (m.config.vocab_size, m.config.n_embd);
    if shape(before) != shape(after) {
        return Err(Error::Input(format!(
            "{} and {}: the token embeddings have different shapes ({:?} and {:?}): compare two versions of the same model",
            paths.0.display(),
            paths.1.display(),
            shape(before),
            shape(after)
        )));
    }
    let (rows, width) = (
        tokenizer.map_or(before.config.vocab_size, Tokenizer::vocab_size),
        before.config.n_embd,
    );
    if rows == 0 {
        return Err(Error::Input(format!("{}: the vocabulary is empty", paths.1.display())));
    }
    let cosines = row_cosines(wte(before, rows), wte(after, rows), width);
    let mut order: Vec<u32> = (0..rows as u32).collect();
    order.sort_by(|&a, &b| cosines[a as usize].total_cmp(&cosines[b as usize]));
    let at = |q: f32| cosines[order[(q * (rows - 1) as f32).round() as usize] as usize];
    Ok(EmbeddingChange {
        rows,
        width,
        mean_cosine: (cosines.iter().map(|&c| c as f64).sum::<f64>() / rows as f64) as f32,
        min_cosine: at(0.0),
        max_cosine: at(1.0),
        quantiles: QUANTILES.iter().map(|&q| Quantile { q, cosine: at(q) }).collect(),
        most_changed: order
            .iter()
            .take(MOST_CHANGED)
            .map(|&id| TokenCosine {
                id,
                token: token_piece(tokenizer, id),
                cosine: cosines[id as usize],
            })
            .collect(),
        cosines,
    })
}

/// `cos(u, v) = u·v / (|u| |v|)` in f64; 1 for two zero vectors (they are equal), 0 for a zero
/// vector and another, NaN when a vector holds NaN or infinity. A vector with itself gives
/// exactly 1.
fn cosine(u: &[f32], v: &[f32]) -> f32 {
    let (mut uv, mut uu, mut vv) = (0.0f64, 0.0f64, 0.0f64);
    for (&a, &b) in u.iter().zip(v) {
        let (a, b) = (a as f64, b as f64);
        uv += a * b;
        uu += a * a;
        vv += b * b;
    }
    if !(uv.is_finite() && uu.is_finite() && vv.is_finite()) {
        return f32::NAN;
    }
    match (uu > 0.0, vv > 0.0) {
        (true, true) => (uv / (uu * vv).sqrt()).clamp(-1.0, 1.0) as f32,
        (false, false) => 1.0,
        _ => 0.0,
    }
}

/// The cosine similarity of row i of `before` with row i of `after`, for each row (matrices
/// [rows, width]).
pub fn row_cosines(before: &[f32], after: &[f32], width: usize) -> Vec<f32> {
    before
        .par_chunks(width)
        .zip(after.par_chunks(width))
        .map(|(u, v)| cosine(u, v))
        .collect()
}

/// The `k` rows of `wte` [rows, width] most similar (by cosine) to row `id`, most similar
/// first, `id` itself left out.
pub fn nearest_neighbours(wte: &[f32], width: usize, id: u32, k: usize) -> Vec<(u32, f32)> {
    let row = &wte[id as usize * width..][..width];
    let mut all: Vec<(u32, f32)> = wte
        .par_chunks(width)
        .map(|other| cosine(row, other))
        .enumerate()
        .map(|(i, c)| (i as u32, c))
        .filter(|&(i, _)| i != id)
        .collect();
    all.sort_by(|a, b| b.1.total_cmp(&a.1));
    all.truncate(k);
    all
}

/// Token `id`'s [`NEIGHBOURS`] nearest neighbours in the first `rows` rows of `wte` in `before`
/// and in `after`.
pub fn token_neighbours(
    id: u32,
    (before, after): (&Gpt, &Gpt),
    rows: usize,
    tokenizer: Option<&Tokenizer>,
) -> TokenNeighbours {
    let near = |model: &Gpt| -> Vec<TokenCosine> {
        nearest_neighbours(wte(model, rows), model.config.n_embd, id, NEIGHBOURS)
            .into_iter()
            .map(|(id, cosine)| TokenCosine {
                id,
                token: token_piece(tokenizer, id),
                cosine,
            })
            .collect()
    };
    TokenNeighbours {
        id,
        token: token_piece(tokenizer, id),
        before: near(before),
        after: near(after),
    }
}

/// The ids of `tokens`, each of which must be one token of the vocabulary (special tokens such
/// as `<|endoftext|>` included).
pub fn chosen_tokens(tokenizer: &Tokenizer, tokens: &[String]) -> Result<Vec<u32>> {
    tokens
        .iter()
        .map(|token| {
            let ids = tokenizer
                .encode_with_special(token, SpecialTokens::Allow)
                .map_err(|e| Error::Input(format!("the token {token:?}: {e}")))?;
            match ids[..] {
                [id] => Ok(id),
                _ => Err(Error::Input(format!(
                    "{token:?} is not one token of this vocabulary but {} ({}): name single tokens",
                    ids.len(),
                    ids.iter()
                        .map(|&id| format!("{:?}", tokenizer.token_text(id)))
                        .collect::<Vec<_>>()
                        .join(", ")
                ))),
            }
        })
        .collect()
}

/// The first [`DEFAULT_TOKEN_COUNT`] of [`DEFAULT_TOKENS`] that are single tokens.
pub fn default_tokens(tokenizer: &Tokenizer) -> Vec<u32> {
    let mut ids: Vec<u32> = Vec::new();
    for token in DEFAULT_TOKENS {
        if let Ok([id]) = tokenizer.encode(token).as_deref() {
            if !ids.contains(id) {
                ids.push(*id);
            }
        }
    }
    ids.truncate(DEFAULT_TOKEN_COUNT);
    ids
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn a_model_compared_with_itself_has_every_cosine_1() {
        let model = Gpt::new(Config::new(20, 8, 16, 1, 2), 7).unwrap();
        let paths = (Path::new("a"), Path::new("a"));
        let change = embedding_change(&model, &model, None, paths).unwrap();
        assert_eq!((change.rows, change.width), (20, 16));
        assert!(change.cosines.iter().all(|&c| c == 1.0), "{:?}", change.cosines);
        assert_eq!(
            (change.mean_cosine, change.min_cosine, change.max_cosine),
            (1.0, 1.0, 1.0)
        );
        assert_eq!(change.most_changed.len(), MOST_CHANGED);
        assert_eq!(change.most_changed[0].token, "#0");

        let other = Gpt::new(Config::new(21, 8, 16, 1, 2), 7).unwrap();
        let err = embedding_change(&model, &other, None, paths).unwrap_err().to_string();
        assert!(err.contains("(20, 16) and (21, 16)"), "{err}");
    }

    #[test]
    fn a_diverged_row_is_not_counted_as_unchanged() {
        assert!(cosine(&[f32::NAN, 1.0], &[f32::NAN, 1.0]).is_nan());
        assert_eq!(cosine(&[0.0, 0.0], &[0.0, 0.0]), 1.0);
        assert_eq!(cosine(&[0.0, 0.0], &[1.0, 0.0]), 0.0);
    }

    #[test]
    fn neighbours_and_row_cosines_on_a_hand_made_embedding() {
        // Rows 0 and 1 point almost the same way, 2 is at 45 degrees, 3 is opposite to 0,
        // 4 is zero.
        let wte = [1.0, 0.0, 0.9, 0.1, 1.0, 1.0, -2.0, 0.0, 0.0, 0.0];
        let near = nearest_neighbours(&wte, 2, 0, 3);
        assert_eq!(near.iter().map(|n| n.0).collect::<Vec<_>>(), [1, 2, 4]);
        assert!((near[1].1 - 0.5f32.sqrt()).abs() < 1e-6);
        assert_eq!(near[2].1, 0.0, "a zero row is orthogonal to everything");
        let near = nearest_neighbours(&wte, 2, 3, 1);
        assert_eq!(near[0].0, 4, "the zero row is nearer to 3 than its opposite");

        let after = [2.0, 0.0, 0.1, 0.9, 1.0, 1.0, 2.0, 0.0, 0.0, 0.0];
        let cosines = row_cosines(&wte, &after, 2);
        assert_eq!(cosines[0], 1.0, "scaling a row does not change its direction");
        assert!(cosines[1] > 0.2 && cosines[1] < 0.3);
        assert_eq!((cosines[2], cosines[3], cosines[4]), (1.0, -1.0, 1.0));
    }

    #[test]
    fn chosen_tokens_must_be_single_tokens() {
        let chars = Tokenizer::char_level_from_text("The cat sat.\n");
        let gpt2 = Tokenizer::gpt2();
        let text = |t: &Tokenizer, ids: Vec<u32>| ids.into_iter().map(|id| t.token_text(id)).collect::<Vec<_>>();
        assert_eq!(text(&chars, default_tokens(&chars)), ["e", "t", " ", "\n", "."]);
        assert_eq!(text(&gpt2, default_tokens(&gpt2)), [" the", " and", "e", "t", " "]);
        let tokens = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            chosen_tokens(&gpt2, &tokens(&[" cat", "<|endoftext|>"])).unwrap(),
            [3797, 50256]
        );
        let err = chosen_tokens(&chars, &tokens(&["at"])).unwrap_err().to_string();
        assert!(
            err.contains("\"at\" is not one token of this vocabulary but 2 (\"a\", \"t\")"),
            "{err}"
        );
        let err = chosen_tokens(&chars, &tokens(&["Z"])).unwrap_err().to_string();
        assert!(
            err.contains("the token \"Z\"") && err.contains("unknown character 'Z'"),
            "{err}"
        );
        let err = chosen_tokens(&chars, &tokens(&[""])).unwrap_err().to_string();
        assert!(err.contains("but 0 ()"), "{err}");
    }
}
