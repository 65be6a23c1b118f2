//! Training evolution: how a run's weights moved. The per-tensor statistics the trainer logs at
//! each evaluation (`param_stats.jsonl`, see [`crate::runlog::param_stats`]) drawn over the
//! steps, and how the token embedding `wte` changed between two models: the cosine similarity
//! of each row before and after, and the nearest neighbours of chosen tokens in each.
//!
//! The two models can be any that [`crate::io::detect`] takes: by default a run's `init/` (the
//! model before training) and `latest/`, but as well OpenAI's GPT-2 and a model fine-tuned from
//! it.

pub use crate::runlog::param_stats::{Moments, ParamStatsRecord, TensorStats};

use super::token_piece;
use crate::error::{Error, Result};
use crate::io::{load_model_with_tokenizer, Loaded};
use crate::model::Gpt;
use crate::plot::{short_number, write_chart, Chart, DrawResult, ImageFormat, FONT};
use crate::runlog::{jsonl, param_stats, INIT_DIR};
use crate::tokenizer::{SpecialTokens, Tokenizer};
use plotters::coord::Shift;
use plotters::prelude::*;
use rayon::prelude::*;
use serde::Serialize;
use std::path::{Path, PathBuf};

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

/// Reads the statistics, compares the embeddings and writes the charts: `evolution.<ext>` (with
/// a run) and `embedding_change.<ext>`. Every input is checked before anything is written.
pub fn evolution(options: &EvolutionOptions) -> Result<Evolution> {
    let run = options.run.as_deref();
    let default_model = |name: &str| {
        run.map(|run| run.join(name)).ok_or_else(|| {
            Error::Input("the evolution of a run needs --run DIR, or two models to compare with --from and --to".into())
        })
    };
    let records = run.map(read_param_stats).transpose()?;
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
    let before = load_model_with_tokenizer(&from)?;
    let after = load_model_with_tokenizer(&to)?;
    let tokenizer = after.tokenizer.as_ref().or(before.tokenizer.as_ref());
    let embedding = embedding_change(&before.model, &after.model, tokenizer, (&from, &to))?;
    let ids = match (&options.tokens, tokenizer) {
        (Some(tokens), Some(tokenizer)) => chosen_tokens(tokenizer, tokens)?,
        (Some(_), None) => {
            return Err(Error::Input(format!(
                "{} and {} have no tokenizer, so tokens cannot be named",
                from.display(),
                to.display()
            )))
        }
        (None, Some(tokenizer)) => default_tokens(tokenizer),
        (None, None) => Vec::new(),
    };
    let neighbours = ids
        .iter()
        .map(|&id| {
            let near = |loaded: &Loaded| -> Vec<TokenCosine> {
                let wte = wte(&loaded.model, embedding.rows);
                nearest_neighbours(wte, embedding.width, id, NEIGHBOURS)
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
                before: near(&before),
                after: near(&after),
            }
        })
        .collect();

    let out = options.out.as_deref().or(run).unwrap_or(Path::new("."));
    std::fs::create_dir_all(out)
        .map_err(|e| Error::Input(format!("{}: cannot create the output directory: {e}", out.display())))?;
    let chart_path = |name: &str| out.join(format!("{name}.{}", options.format.extension()));
    let mut charts = Vec::new();
    if let Some(records) = &records {
        let path = chart_path(EVOLUTION_CHART);
        write_chart(&EvolutionChart(records), &path, options.format)?;
        charts.push(path);
    }
    let path = chart_path(EMBEDDING_CHART);
    let chart = EmbeddingChart {
        change: &embedding,
        from: &from,
        to: &to,
    };
    write_chart(&chart, &path, options.format)?;
    charts.push(path);
    Ok(Evolution {
        run: run.map(Path::to_path_buf),
        from,
        to,
        stats: records.as_deref().map(summarize),
        embedding,
        neighbours,
        charts,
    })
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

/// `h.3.attn.c_proj.weight` → (`attn.c_proj.weight`, Some(3)); `wte.weight` → (`wte.weight`, None).
fn kind_and_layer(name: &str) -> (&str, Option<usize>) {
    name.strip_prefix("h.")
        .and_then(|rest| rest.split_once('.'))
        .and_then(|(layer, kind)| Some((kind, Some(layer.parse().ok()?))))
        .unwrap_or((name, None))
}

/// Biases and LayerNorm parameters, as opposed to the matrices and embeddings.
fn is_vector(kind: &str) -> bool {
    kind.ends_with(".bias") || kind.starts_with("ln_")
}

/// One tensor's values over the steps.
struct Line<'a> {
    kind: &'a str,
    layer: Option<usize>,
    points: Vec<(f64, f64)>,
}

/// `evolution.<ext>`: the update:data ratio (log10, top) and the weight norm (bottom) of each
/// tensor over the steps; matrices and embeddings on the left, biases and LayerNorm parameters
/// on the right. A colour per kind of tensor, darker for deeper layers.
struct EvolutionChart<'a>(&'a [ParamStatsRecord]);

impl EvolutionChart<'_> {
    /// The lines of the matrices (or the `vectors`) for `value` of each tensor.
    fn lines(&self, vectors: bool, value: impl Fn(&TensorStats) -> Option<f64>) -> Vec<Line<'_>> {
        self.0[0]
            .tensors
            .iter()
            .enumerate()
            .filter(|(_, t)| is_vector(kind_and_layer(&t.name).0) == vectors)
            .map(|(i, t)| {
                let (kind, layer) = kind_and_layer(&t.name);
                let points = self
                    .0
                    .iter()
                    .filter_map(|r| Some((r.step as f64, value(&r.tensors[i])?)))
                    .filter(|p| p.1.is_finite())
                    .collect();
                Line { kind, layer, points }
            })
            .collect()
    }
}

impl Chart for EvolutionChart<'_> {
    fn size(&self) -> (u32, u32) {
        (1400, 1000)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult
    where
        DB::ErrorType: 'static,
    {
        let root = root.titled("darker lines: deeper layers", (FONT, 14))?;
        let areas = root.split_evenly((2, 2));
        let log_ratio = |t: &TensorStats| t.update_ratio.filter(|&r| r > 0.0).map(|r| (r as f64).log10());
        let norm = |t: &TensorStats| Some(t.param.norm as f64);
        let ratio_axis = "log10(update std / weight std)";
        for (area, vectors) in areas[..2].iter().zip([false, true]) {
            let title = ["update:data ratio, matrices", "update:data ratio, biases and LayerNorm"][vectors as usize];
            panel(area, title, ratio_axis, &self.lines(vectors, log_ratio), Some(-3.0))?;
        }
        for (area, vectors) in areas[2..].iter().zip([false, true]) {
            let title = ["weight norm, matrices", "weight norm, biases and LayerNorm"][vectors as usize];
            panel(area, title, "L2 norm", &self.lines(vectors, norm), None)?;
        }
        Ok(())
    }
}

/// One panel of [`EvolutionChart`]: `lines` against the step, with a legend of their kinds and a
/// dashed horizontal line at `reference`.
fn panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    title: &str,
    y_desc: &str,
    lines: &[Line],
    reference: Option<f64>,
) -> DrawResult
where
    DB::ErrorType: 'static,
{
    let points = || lines.iter().flat_map(|l| &l.points);
    let x_max = points().map(|p| p.0).fold(1.0, f64::max);
    let (lo, hi) = points()
        .map(|p| p.1)
        .chain(reference)
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), y| (lo.min(y), hi.max(y)));
    let (lo, hi) = if lo < hi {
        (lo, hi)
    } else if lo.is_finite() {
        (lo - 1.0, lo + 1.0)
    } else {
        (0.0, 1.0)
    };
    let pad = 0.05 * (hi - lo);
    let mut chart = ChartBuilder::on(area)
        .caption(title, (FONT, 18))
        .margin(12)
        .x_label_area_size(35)
        .y_label_area_size(55)
        .build_cartesian_2d(0.0..x_max, lo - pad..hi + pad)?;
    chart
        .configure_mesh()
        .x_desc("step")
        .y_desc(y_desc)
        .x_label_formatter(&|x| short_number(*x))
        .label_style((FONT, 12))
        .draw()?;
    if let Some(y) = reference {
        let grey = BLACK.mix(0.5).stroke_width(1);
        chart
            .draw_series(DashedLineSeries::new([(0.0, y), (x_max, y)], 6, 4, grey))?
            .label(format!("1e{y}: rule of thumb"))
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], grey));
    }
    let mut kinds: Vec<&str> = Vec::new();
    for line in lines {
        if !kinds.contains(&line.kind) {
            kinds.push(line.kind);
        }
    }
    let layers = lines.iter().filter_map(|l| l.layer).max().map_or(1, |l| l + 1);
    let mut labelled = vec![false; kinds.len()];
    for line in lines {
        let k = kinds.iter().position(|&kind| kind == line.kind).expect("listed above");
        let hue = 0.9 * k as f64 / kinds.len() as f64;
        // Layer 0 light, the last layer dark; tensors outside the blocks in between.
        let lightness = line
            .layer
            .map_or(0.45, |l| 0.65 - 0.35 * l as f64 / (layers - 1).max(1) as f64);
        let style = HSLColor(hue, 0.75, lightness).stroke_width(2);
        let series = chart.draw_series(LineSeries::new(line.points.iter().copied(), style))?;
        if !std::mem::replace(&mut labelled[k], true) {
            let legend = HSLColor(hue, 0.75, 0.45).stroke_width(3);
            series
                .label(line.kind)
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], legend));
        }
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font((FONT, 11))
        .draw()?;
    Ok(())
}

/// `embedding_change.<ext>`: a histogram of the rows' cosine similarities before and after.
struct EmbeddingChart<'a> {
    change: &'a EmbeddingChange,
    from: &'a Path,
    to: &'a Path,
}

impl Chart for EmbeddingChart<'_> {
    fn size(&self) -> (u32, u32) {
        (1000, 500)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult
    where
        DB::ErrorType: 'static,
    {
        const BINS: usize = 50;
        let change = self.change;
        // From a multiple of 0.05 below the lowest cosine up to 1.
        let lo = ((change.min_cosine as f64 * 20.0).floor() / 20.0).min(0.95);
        let width = (1.0 - lo) / BINS as f64;
        let mut counts = [0u32; BINS];
        for &c in &change.cosines {
            counts[(((c as f64 - lo) / width) as usize).min(BINS - 1)] += 1;
        }
        let top = counts.iter().copied().max().unwrap_or(0) + 1;
        let mut chart = ChartBuilder::on(root)
            .caption(
                format!(
                    "token embedding rows, {} → {}: mean cosine {:.3}",
                    self.from.display(),
                    self.to.display(),
                    change.mean_cosine
                ),
                (FONT, 16),
            )
            .margin(15)
            .x_label_area_size(40)
            .y_label_area_size(55)
            .build_cartesian_2d(lo..1.0, 0..top)?;
        chart
            .configure_mesh()
            .x_desc("cosine similarity of a token's row before and after")
            .y_desc(format!("rows (of {})", change.rows))
            .label_style((FONT, 12))
            .draw()?;
        chart.draw_series(counts.iter().enumerate().map(|(i, &n)| {
            let x = lo + i as f64 * width;
            Rectangle::new([(x, 0), (x + width, n)], BLUE.mix(0.6).filled())
        }))?;
        Ok(())
    }
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

    #[test]
    fn tensor_names_split_into_kind_and_layer() {
        assert_eq!(kind_and_layer("h.11.mlp.c_fc.bias"), ("mlp.c_fc.bias", Some(11)));
        assert_eq!(kind_and_layer("wte.weight"), ("wte.weight", None));
        assert!(is_vector("ln_f.weight") && is_vector("attn.c_attn.bias") && !is_vector("mlp.c_proj.weight"));
    }
}
