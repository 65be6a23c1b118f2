//! Training evolution: how a run's weights moved. The per-tensor statistics the trainer logs at
//! each evaluation (`param_stats.jsonl`, see [`crate::runlog::param_stats`]) drawn over the
//! steps, and how the token embedding `wte` changed between two models: the cosine similarity
//! of each row before and after, and the nearest neighbours of chosen tokens in each.
//!
//! The two models can be any that [`crate::io::detect`] takes: by default a run's `init/` (the
//! model before training) and `latest/`, but as well OpenAI's GPT-2 and a model fine-tuned from
//! it.
//!
//! `analysis.rs` finds, `charts.rs` draws; [`evolution`] runs both on the run's statistics
//! ([`read_param_stats`]) and the two models (found by [`model_paths`]), read by the caller in
//! that order, and says what it found and wrote.

mod analysis;
mod charts;

pub use crate::runlog::param_stats::{Moments, ParamStatsRecord, TensorStats};
pub use analysis::{
    chosen_tokens, default_tokens, embedding_change, nearest_neighbours, read_param_stats, row_cosines, summarize,
    token_neighbours, EmbeddingChange, Quantile, StatsSummary, TensorSummary, TokenCosine, TokenNeighbours,
    DEFAULT_TOKENS, DEFAULT_TOKEN_COUNT, MOST_CHANGED, NEIGHBOURS, QUANTILES,
};

use crate::error::{Error, Result};
use crate::io::Loaded;
use crate::plot::ImageFormat;
use crate::runlog::INIT_DIR;
use crate::tokenizer::Tokenizer;
use serde::Serialize;
use std::path::{Path, PathBuf};

/// The file names of the charts, before the extension.
pub const EVOLUTION_CHART: &str = "evolution";
pub const EMBEDDING_CHART: &str = "embedding_change";

/// What to look at.
#[derive(Debug, Clone)]
pub struct EvolutionOptions {
    /// A training run directory: its `param_stats.jsonl`, and the default models.
    pub run: Option<PathBuf>,
    /// The model before [default: `run/init`].
    pub from: Option<PathBuf>,
    /// The model after [default: `run/latest`].
    pub to: Option<PathBuf>,
    /// Tokens whose nearest neighbours to show, each a single token of the vocabulary
    /// [default: [`DEFAULT_TOKENS`]].
    pub tokens: Option<Vec<String>>,
    /// Where the charts are written [default: `run`, else the current directory].
    pub out: Option<PathBuf>,
    pub format: ImageFormat,
}

/// What [`evolution`] found and wrote.
#[derive(Debug, Clone, Serialize)]
pub struct Evolution {
    pub run: Option<PathBuf>,
    pub from: PathBuf,
    pub to: PathBuf,
    /// The parameter statistics of the run (with `run` only).
    pub stats: Option<StatsSummary>,
    pub embedding: EmbeddingChange,
    pub neighbours: Vec<TokenNeighbours>,
    /// The charts written.
    pub charts: Vec<PathBuf>,
}

/// Compares the embeddings of `before` (the model at `from`) and `after` (at `to`), sums up the
/// run's statistics `records` ([`read_param_stats`], read first) and writes the charts:
/// `evolution.<ext>` (with a run) and `embedding_change.<ext>`. Every input is checked before
/// anything is written.
pub fn evolution(
    options: &EvolutionOptions,
    records: Option<&[ParamStatsRecord]>,
    (from, before): (PathBuf, &Loaded),
    (to, after): (PathBuf, &Loaded),
) -> Result<Evolution> {
    let models = (&before.model, &after.model);
    let tokenizer = after.tokenizer.as_ref().or(before.tokenizer.as_ref());
    let embedding = embedding_change(models.0, models.1, tokenizer, (&from, &to))?;
    let neighbours = token_ids(options.tokens.as_deref(), tokenizer, (&from, &to))?
        .into_iter()
        .map(|id| token_neighbours(id, models, embedding.rows, tokenizer))
        .collect();
    let charts = write_charts(options, records, &embedding, (&from, &to))?;
    Ok(Evolution {
        run: options.run.clone(),
        from,
        to,
        stats: records.map(summarize),
        embedding,
        neighbours,
        charts,
    })
}

/// The models to compare: `--from` and `--to`, by default the run's `init/` and `latest/`.
pub fn model_paths(options: &EvolutionOptions) -> Result<(PathBuf, PathBuf)> {
    let default_model = |name: &str| {
        options.run.as_deref().map(|run| run.join(name)).ok_or_else(|| {
            Error::Input("the evolution of a run needs --run DIR, or two models to compare with --from and --to".into())
        })
    };
    let from = match &options.from {
        Some(path) => path.clone(),
        None => {
            let init = default_model(INIT_DIR)?;
            if !init.exists() {
                return Err(Error::Input(format!(
                    "{}: not found: the run has no {INIT_DIR}/ (the model before training); name the model to compare with --from",
                    init.display()
                )));
            }
            init
        }
    };
    let to = match &options.to {
        Some(path) => path.clone(),
        None => default_model("latest")?,
    };
    Ok((from, to))
}

/// The ids of the tokens whose neighbours to show: those named (which needs a tokenizer), else
/// the defaults of the tokenizer, else none. `paths` name the models in errors.
fn token_ids(tokens: Option<&[String]>, tokenizer: Option<&Tokenizer>, paths: (&Path, &Path)) -> Result<Vec<u32>> {
    match (tokens, tokenizer) {
        (Some(tokens), Some(tokenizer)) => chosen_tokens(tokenizer, tokens),
        (Some(_), None) => Err(Error::Input(format!(
            "{} and {} have no tokenizer, so tokens cannot be named",
            paths.0.display(),
            paths.1.display()
        ))),
        (None, Some(tokenizer)) => Ok(default_tokens(tokenizer)),
        (None, None) => Ok(Vec::new()),
    }
}

/// Writes the charts into `--out` (by default the run, else the current directory), which is
/// made if need be: the run's statistics if there are `records`, and the embedding's change.
/// Returns their paths.
fn write_charts(
    options: &EvolutionOptions,
    records: Option<&[ParamStatsRecord]>,
    embedding: &EmbeddingChange,
    models: (&Path, &Path),
) -> Result<Vec<PathBuf>> {
    let out = options
        .out
        .as_deref()
        .or(options.run.as_deref())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(out)
        .map_err(|e| Error::Input(format!("{}: cannot create the output directory: {e}", out.display())))?;
    let chart_path = |name: &str| out.join(format!("{name}.{}", options.format.extension()));
    let mut charts = Vec::new();
    if let Some(records) = records {
        let path = chart_path(EVOLUTION_CHART);
        charts::write_evolution_chart(records, &path, options.format)?;
        charts.push(path);
    }
    let path = chart_path(EMBEDDING_CHART);
    charts::write_embedding_chart(embedding, models, &path, options.format)?;
    charts.push(path);
    Ok(charts)
}
