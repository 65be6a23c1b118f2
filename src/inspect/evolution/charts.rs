//! The two charts of `inspect --evolution`: the parameter statistics of a run over its steps
//! (`evolution.<ext>`), and a histogram of how much each row of the token embedding turned
//! (`embedding_change.<ext>`).

use super::analysis::EmbeddingChange;
use crate::error::Result;
use crate::plot::{short_number, write_chart, Chart, DrawResult, ImageFormat, FONT};
use crate::runlog::param_stats::{ParamStatsRecord, TensorStats};
use plotters::coord::Shift;
use plotters::prelude::*;
use std::path::Path;

/// Draws [`EvolutionChart`] of `records` (as [`super::read_param_stats`] returns them) to `path`.
pub fn write_evolution_chart(records: &[ParamStatsRecord], path: &Path, format: ImageFormat) -> Result<()> {
    write_chart(&EvolutionChart(records), path, format)
}

/// Draws [`EmbeddingChart`] of the change between the models `from` and `to` to `path`.
pub fn write_embedding_chart(
    change: &EmbeddingChange,
    (from, to): (&Path, &Path),
    path: &Path,
    format: ImageFormat,
) -> Result<()> {
    write_chart(&EmbeddingChart { change, from, to }, path, format)
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

    #[test]
    fn tensor_names_split_into_kind_and_layer() {
        assert_eq!(kind_and_layer("h.11.mlp.c_fc.bias"), ("mlp.c_fc.bias", Some(11)));
        assert_eq!(kind_and_layer("wte.weight"), ("wte.weight", None));
        assert!(is_vector("ln_f.weight") && is_vector("attn.c_attn.bias") && !is_vector("mlp.c_proj.weight"));
    }
}
