//! Attention heatmaps: one image per layer, a grid of all its heads. In each head's map, row i
//! is the query token i and column j the key token j; the colour is the weight P[i, j] that
//! token i gives token j (each row sums to 1; the masked future j > i is left blank).

use crate::error::{Error, Result};
use crate::model::workspace::Activations;
use crate::model::Gpt;
use crate::plot::{write_chart, Chart, DrawResult, ImageFormat, FONT};
use plotters::coord::Shift;
use plotters::prelude::*;
use std::path::{Path, PathBuf};

/// Longest label drawn on an axis, in characters.
const LABEL_CHARS: usize = 12;
const TITLE_HEIGHT: u32 = 44;
const CAPTION_HEIGHT: u32 = 22;
const COLOR_BAR_WIDTH: u32 = 110;
const MARGIN: u32 = 8;
/// Room for the title.
const MIN_WIDTH: u32 = 640;

/// The heads of one layer for one prompt.
struct LayerChart<'a> {
    layer: usize,
    /// [NH, T, T]: the attention probabilities of every head.
    att: Vec<f32>,
    n_head: usize,
    labels: &'a [String],
}

impl LayerChart<'_> {
    fn t(&self) -> usize {
        self.labels.len()
    }

    /// Pixels per matrix cell: maps of long prompts get smaller cells.
    fn cell(&self) -> u32 {
        (480 / self.t() as u32).clamp(2, 32)
    }

    /// Tokens labelled on each axis: all of them while a cell is tall enough for a line of
    /// text, else evenly spaced ones.
    fn labelled(&self) -> usize {
        match self.cell() {
            cell if cell >= 10 => self.t(),
            cell => (self.t() * cell as usize / 14).max(1),
        }
    }

    fn label_area(&self) -> u32 {
        let longest = self.labels.iter().map(|l| l.chars().count()).max().unwrap_or(1);
        24 + 7 * longest.min(LABEL_CHARS) as u32
    }

    /// Width and height of one head's panel.
    fn panel(&self) -> (u32, u32) {
        let side = self.t() as u32 * self.cell();
        (
            self.label_area() + side + 2 * MARGIN,
            CAPTION_HEIGHT + side + self.label_area() + 2 * MARGIN,
        )
    }

    fn grid(&self) -> (usize, usize) {
        let cols = (self.n_head as f64).sqrt().ceil() as usize;
        (cols, self.n_head.div_ceil(cols))
    }

    fn head_panel<DB: DrawingBackend>(&self, area: &DrawingArea<DB, Shift>, head: usize) -> DrawResult
    where
        DB::ErrorType: 'static,
    {
        let t = self.t() as i32;
        let p = &self.att[head * self.t() * self.t()..][..self.t() * self.t()];
        let half_cell = self.cell() as i32 / 2;
        let font_size = (self.cell() as f64 * 0.9).clamp(9.0, 13.0);
        let label = |i: &i32| match usize::try_from(*i).ok().and_then(|i| self.labels.get(i)) {
            Some(label) => label.clone(),
            None => String::new(),
        };
        let mut chart = ChartBuilder::on(area)
            .caption(format!("head {head}"), (FONT, 15))
            .margin(MARGIN)
            .x_label_area_size(self.label_area())
            .y_label_area_size(self.label_area())
            .build_cartesian_2d(0..t, t..0)?;
        chart
            .configure_mesh()
            .disable_mesh()
            .x_labels(self.labelled())
            .y_labels(self.labelled())
            .x_label_offset(half_cell)
            .y_label_offset(half_cell)
            .x_label_formatter(&label)
            .y_label_formatter(&label)
            .x_label_style(TextStyle::from((FONT, font_size)).transform(FontTransform::Rotate90))
            .y_label_style((FONT, font_size))
            .x_desc("key (attended to)")
            .y_desc("query")
            .axis_desc_style((FONT, 12))
            .draw()?;
        chart.draw_series((0..t).flat_map(|i| {
            (0..=i).map(move |j| {
                let weight = p[(i * t + j) as usize];
                Rectangle::new([(j, i), (j + 1, i + 1)], ViridisRGB.get_color(weight).filled())
            })
        }))?;
        Ok(())
    }
}

impl Chart for LayerChart<'_> {
    fn size(&self) -> (u32, u32) {
        let (panel_w, panel_h) = self.panel();
        let (cols, rows) = self.grid();
        let width = (cols as u32 * panel_w + COLOR_BAR_WIDTH).max(MIN_WIDTH);
        (width, TITLE_HEIGHT + rows as u32 * panel_h)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult
    where
        DB::ErrorType: 'static,
    {
        let (width, _) = self.size();
        let (title, body) = root.split_vertically(TITLE_HEIGHT);
        title.titled(
            &format!("layer {}: attention weights (row: query, column: key)", self.layer),
            (FONT, 18),
        )?;
        let (heads, bar) = body.split_horizontally(width - COLOR_BAR_WIDTH);
        let (cols, rows) = self.grid();
        for (head, area) in heads.split_evenly((rows, cols)).iter().enumerate().take(self.n_head) {
            self.head_panel(area, head)?;
        }
        color_bar(&bar)
    }
}

/// The colour scale: weight 0 (bottom) to 1 (top).
fn color_bar<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>) -> DrawResult
where
    DB::ErrorType: 'static,
{
    const STEPS: usize = 100;
    let mut chart = ChartBuilder::on(area)
        .margin(20)
        .margin_left(10)
        .y_label_area_size(40)
        .caption("weight", (FONT, 14))
        .build_cartesian_2d(0.0..1.0, 0.0..1.0)?;
    chart
        .configure_mesh()
        .disable_mesh()
        .disable_x_axis()
        .y_labels(6)
        .label_style((FONT, 12))
        .draw()?;
    chart.draw_series((0..STEPS).map(|s| {
        let (lo, hi) = (s as f64 / STEPS as f64, (s + 1) as f64 / STEPS as f64);
        Rectangle::new([(0.0, lo), (1.0, hi)], ViridisRGB.get_color(lo as f32).filled())
    }))?;
    Ok(())
}

/// A token as an axis label: spaces as `·`, line breaks as `↵`, at most [`LABEL_CHARS`] characters.
pub fn axis_label(text: &str) -> String {
    let visible: String = text
        .chars()
        .map(|ch| match ch {
            ' ' => '·',
            '\n' => '↵',
            '\t' => '→',
            c if c.is_control() => '?',
            c => c,
        })
        .collect();
    match visible.chars().count() > LABEL_CHARS {
        true => visible.chars().take(LABEL_CHARS - 1).chain(['…']).collect(),
        false => visible,
    }
}

/// Writes one heatmap per layer (or only `layer`), `layer_00.png` (or `.svg`) …, into `dir`
/// (created if needed), from the attention weights of a forward pass of `model`, its activations
/// `acts`, which must have been one sequence of the `tokens`' length; `tokens` are the prompt's
/// pieces as text.
pub fn write_attention_maps(
    model: &Gpt,
    acts: &Activations,
    tokens: &[String],
    layer: Option<usize>,
    dir: &Path,
    format: ImageFormat,
) -> Result<Vec<PathBuf>> {
    if acts.b != 1 || acts.t != tokens.len() {
        return Err(Error::Input(
            "attention maps need a forward pass of the prompt first".into(),
        ));
    }
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let labels: Vec<String> = tokens.iter().map(|t| axis_label(t)).collect();
    let width = model.config.n_layer.saturating_sub(1).to_string().len().max(2);
    acts.blocks
        .iter()
        .enumerate()
        .filter(|(l, _)| layer.is_none_or(|chosen| chosen == *l))
        .map(|(layer, block)| {
            let chart = LayerChart {
                layer,
                att: super::layer_attention(model, block, acts.t),
                n_head: model.config.n_head,
                labels: &labels,
            };
            let path = dir.join(format!("layer_{layer:0width$}.{}", format.extension()));
            write_chart(&chart, &path, format)?;
            Ok(path)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_show_spaces_and_line_breaks_and_are_short() {
        assert_eq!(axis_label(" sky"), "·sky");
        assert_eq!(axis_label("\n"), "↵");
        assert_eq!(axis_label("abcdefghijklmnop"), "abcdefghijk…");
    }
}
