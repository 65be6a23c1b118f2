//! Charts as image files: a [`Chart`] draws itself on any plotters backend, and
//! [`write_chart`] renders it to a PNG or an SVG file, atomically, with the bundled font.

use crate::error::{Error, Result};
use crate::io::atomic::write_file;
use plotters::coord::Shift;
use plotters::prelude::*;
use std::error::Error as StdError;
use std::path::Path;

/// The font family of every chart: DejaVu Sans, bundled so that charts need no system fonts
/// (licence in assets/), registered under this name by [`write_chart`].
pub const FONT: &str = "sans-serif";

/// What drawing on a plotters backend returns.
pub type DrawResult = std::result::Result<(), Box<dyn StdError>>;

/// A chart, drawn on a white area of [`Chart::size`] pixels.
pub trait Chart {
    /// Width and height in pixels.
    fn size(&self) -> (u32, u32);

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult
    where
        DB::ErrorType: 'static;
}

/// The image formats of [`write_chart`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageFormat {
    Png,
    Svg,
}

impl ImageFormat {
    /// The file extension, without the dot.
    pub fn extension(self) -> &'static str {
        match self {
            ImageFormat::Png => "png",
            ImageFormat::Svg => "svg",
        }
    }
}

fn register_font() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = plotters::style::register_font(FONT, FontStyle::Normal, include_bytes!("../assets/DejaVuSans.ttf"));
    });
}

/// The largest chart drawn, in pixels (a 10,000 × 10,000 image: 300 MB of RGB).
pub const MAX_PIXELS: u64 = 100_000_000;

/// Draws `chart` and writes it to `path` (replaced atomically) as `format`.
pub fn write_chart(chart: &impl Chart, path: &Path, format: ImageFormat) -> Result<()> {
    register_font();
    let size = chart.size();
    let pixels = size.0 as u64 * size.1 as u64;
    if pixels > MAX_PIXELS {
        return Err(Error::Input(format!(
            "{}: a chart of {} × {} pixels is too large to draw (at most {MAX_PIXELS} pixels)",
            path.display(),
            size.0,
            size.1
        )));
    }
    let failed = |e: Box<dyn StdError>| Error::io(path, std::io::Error::other(format!("drawing the chart: {e}")));
    fn render<DB: DrawingBackend>(chart: &impl Chart, root: DrawingArea<DB, Shift>) -> DrawResult
    where
        DB::ErrorType: 'static,
    {
        root.fill(&WHITE)?;
        chart.draw(&root)?;
        root.present()?;
        Ok(())
    }
    match format {
        ImageFormat::Svg => {
            let mut svg = String::new();
            render(chart, SVGBackend::with_string(&mut svg, size).into_drawing_area()).map_err(failed)?;
            write_file(path, |w| w.write_all(svg.as_bytes()))
        }
        ImageFormat::Png => {
            let mut rgb = vec![0u8; pixels as usize * 3];
            render(chart, BitMapBackend::with_buffer(&mut rgb, size).into_drawing_area()).map_err(failed)?;
            write_file(path, |w| {
                let mut encoder = png::Encoder::new(w, size.0, size.1);
                encoder.set_color(png::ColorType::Rgb);
                encoder.set_depth(png::BitDepth::Eight);
                let mut writer = encoder.write_header()?;
                writer.write_image_data(&rgb)?;
                writer.finish().map_err(std::io::Error::other)
            })
        }
    }
}

/// Whether the file `path` is a chart of `size` pixels as [`write_chart`] writes it in
/// `format`: a PNG of that size, or an SVG whose root element has that view box.
pub fn is_chart_file(path: &Path, format: ImageFormat, size: (u32, u32)) -> bool {
    let mut head = [0u8; 256];
    let Ok(n) = std::fs::File::open(path).and_then(|mut f| std::io::Read::read(&mut f, &mut head)) else {
        return false;
    };
    let head = &head[..n];
    match format {
        // The signature, then the IHDR chunk: length, "IHDR", width and height (big-endian).
        ImageFormat::Png => {
            let dims = (size.0.to_be_bytes(), size.1.to_be_bytes());
            n >= 24
                && head.starts_with(b"\x89PNG\r\n\x1a\n")
                && &head[12..16] == b"IHDR"
                && head[16..20] == dims.0
                && head[20..24] == dims.1
        }
        ImageFormat::Svg => {
            let view_box = format!("viewBox=\"0 0 {} {}\"", size.0, size.1);
            let text = String::from_utf8_lossy(head);
            text.starts_with("<svg ") && text.contains(&view_box)
        }
    }
}

/// 200, 1.5K, 12M: an axis label.
pub fn short_number(x: f64) -> String {
    match x.abs() {
        a if a >= 1e6 => format!("{}M", x / 1e6),
        a if a >= 1e3 => format!("{}K", x / 1e3),
        _ => format!("{x}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_shortened_with_k_and_m() {
        assert_eq!(
            [short_number(200.0), short_number(1500.0), short_number(1.2e6)],
            ["200", "1.5K", "1.2M"]
        );
    }
}
