//! The loss curves of a run, `loss.png` and `loss.svg`: train and validation loss against
//! steps (left) and against tokens seen (right). The right-hand axis of each reads the same
//! curves as perplexity, e^loss.

use super::metrics::{EvalRecord, History, StepRecord};
use crate::error::Result;
use crate::plot::{is_chart_file, short_number, write_chart, Chart, DrawResult, ImageFormat, FONT};
use plotters::coord::Shift;
use plotters::prelude::*;
use std::path::{Path, PathBuf};

/// Writes `loss.png` and `loss.svg` into `dir` (each atomically); returns their paths.
pub fn write_plots(history: &History, dir: &Path) -> Result<[PathBuf; 2]> {
    let path = |format: ImageFormat| dir.join(format!("loss.{}", format.extension()));
    let (png, svg) = (path(ImageFormat::Png), path(ImageFormat::Svg));
    write_chart(&LossChart(history), &png, ImageFormat::Png)?;
    write_chart(&LossChart(history), &svg, ImageFormat::Svg)?;
    Ok([png, svg])
}

/// Whether `path` is a loss chart that [`write_plots`] wrote in `format` (which a run may
/// replace).
pub fn is_loss_plot(path: &Path, format: ImageFormat) -> bool {
    is_chart_file(path, format, LossChart(&History::default()).size())
}

/// The two loss panels side by side.
struct LossChart<'a>(&'a History);

impl Chart for LossChart<'_> {
    fn size(&self) -> (u32, u32) {
        (1200, 450)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult
    where
        DB::ErrorType: 'static,
    {
        let (left, right) = root.split_horizontally(self.size().0 / 2);
        panel(&left, self.0, "step", |s| s.step as f64, |e| e.step as f64)?;
        panel(&right, self.0, "tokens seen", |s| s.tokens as f64, |e| e.tokens as f64)
    }
}

/// One chart: the per-step batch loss (thin), and the evaluated train and val losses (points
/// joined by lines), against the x that `step_x` / `eval_x` pick.
fn panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    history: &History,
    x_name: &str,
    step_x: impl Fn(&StepRecord) -> f64,
    eval_x: impl Fn(&EvalRecord) -> f64,
) -> DrawResult
where
    DB::ErrorType: 'static,
{
    let batch: Vec<(f64, f64)> = history.steps.iter().map(|s| (step_x(s), s.train_loss as f64)).collect();
    let train: Vec<(f64, f64)> = history.evals.iter().map(|e| (eval_x(e), e.train_loss as f64)).collect();
    let val: Vec<(f64, f64)> = history.evals.iter().map(|e| (eval_x(e), e.val_loss as f64)).collect();
    let points = || batch.iter().chain(&train).chain(&val).filter(|p| p.1.is_finite());
    let x_max = points().map(|p| p.0).fold(1.0, f64::max);
    let (y_min, y_max) = points().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), p| {
        (lo.min(p.1), hi.max(p.1))
    });
    let (y_min, y_max) = match (y_min < y_max, y_min.is_finite()) {
        (true, _) => (y_min, y_max),
        (false, true) => (y_min.min(0.0) - 0.5, y_min.max(0.0) + 0.5), // a single value
        (false, false) => (0.0, 1.0),                                  // no finite loss yet
    };
    let pad = 0.05 * (y_max - y_min);

    let y_range = (y_min - pad).max(0.0)..y_max + pad;
    let mut chart = ChartBuilder::on(area)
        .caption(format!("loss vs {x_name}"), (FONT, 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(55)
        .right_y_label_area_size(55)
        .build_cartesian_2d(0.0..x_max, y_range.clone())?
        .set_secondary_coord(0.0..x_max, y_range);
    chart
        .configure_mesh()
        .x_desc(x_name)
        .y_desc("loss (nats per token)")
        .x_label_formatter(&|x| short_number(*x))
        .label_style((FONT, 13))
        .draw()?;
    // The same y as perplexity: a loss of y nats per token is a perplexity of e^y.
    chart
        .configure_secondary_axes()
        .y_desc("perplexity (e^loss)")
        .y_label_formatter(&|y| match y.exp() {
            p if p >= 1e3 => short_number(p.round()),
            p if p >= 10.0 => format!("{p:.1}"),
            p => format!("{p:.2}"),
        })
        .label_style((FONT, 13))
        .draw()?;
    let faint = RGBColor(160, 190, 235);
    chart
        .draw_series(LineSeries::new(batch.iter().copied(), faint.stroke_width(1)))?
        .label("train batch")
        .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], faint.stroke_width(2)));
    for (series, color, name) in [(&train, BLUE, "train (eval)"), (&val, RED, "val (eval)")] {
        chart
            .draw_series(LineSeries::new(series.iter().copied(), color.stroke_width(2)).point_size(3))?
            .label(name)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font((FONT, 13))
        .draw()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_a_png_and_an_svg_with_both_curves() {
        let dir = std::env::temp_dir().join(format!("gpt2-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut history = History::default();
        for step in 0..20 {
            let loss = 4.0 - step as f32 * 0.1;
            history.steps.push(StepRecord {
                step,
                train_loss: loss,
                lr: 1e-3,
                grad_norm: 1.0,
                tokens: step as u64 * 64,
                tokens_per_s: 1e4,
                step_s: 0.0064,
                elapsed_s: 0.0,
            });
        }
        for step in [0, 10, 20] {
            let (train_loss, val_loss) = (4.0 - step as f32 * 0.1, 4.1 - step as f32 * 0.09);
            history.evals.push(EvalRecord {
                step,
                train_loss,
                val_loss,
                train_perplexity: train_loss.exp(),
                val_perplexity: val_loss.exp(),
                lr: 1e-3,
                tokens: step as u64 * 64,
                elapsed_s: 0.0,
                sample: String::new(),
            });
        }
        let [png, svg] = write_plots(&history, &dir).unwrap();
        assert!(std::fs::read(&png).unwrap().starts_with(b"\x89PNG"));
        let svg = std::fs::read_to_string(&svg).unwrap();
        assert!(svg.contains("val (eval)") && svg.contains("tokens seen") && svg.contains("perplexity"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_history_without_a_finite_loss_still_plots() {
        // The y range once fell back to -0.5..inf here, and plotters looped for ever on it.
        let dir = std::env::temp_dir().join(format!("gpt2-plot-nan-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut history = History::default();
        history.steps.push(StepRecord {
            step: 0,
            train_loss: f32::NAN,
            lr: 1e-3,
            grad_norm: f32::NAN,
            tokens: 0,
            tokens_per_s: 1e4,
            step_s: 0.0064,
            elapsed_s: 0.0,
        });
        let [png, _] = write_plots(&history, &dir).unwrap();
        assert!(std::fs::read(&png).unwrap().starts_with(b"\x89PNG"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
