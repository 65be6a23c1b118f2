//! Figures as PNG or SVG files, drawn with `plotters` in the bundled DejaVu Sans font (so no
//! system fonts are needed; licence in assets/). A figure implements [`Figure`] once and is
//! written in either format by [`write_figure`], atomically.

use crate::error::{Error, Result};
use crate::io::atomic::write_file;
use plotters::coord::Shift;
use plotters::prelude::*;
use std::error::Error as StdError;
use std::path::Path;

/// The font family every figure uses.
pub const FONT: &str = "sans-serif";

/// What a drawing call returns: plotters' errors boxed.
pub type DrawResult = std::result::Result<(), Box<dyn StdError>>;

/// Something that draws itself on any plotters backend.
pub trait Figure {
    /// Width and height in pixels.
    fn size(&self) -> (u32, u32);
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult
    where
        DB::ErrorType: 'static;
}

/// The two image formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageFormat {
    Png,
    Svg,
}

impl ImageFormat {
    pub fn extension(self) -> &'static str {
        match self {
            ImageFormat::Png => "png",
            ImageFormat::Svg => "svg",
        }
    }
}

fn register_font() {
    static FONT_ONCE: std::sync::Once = std::sync::Once::new();
    FONT_ONCE.call_once(|| {
        let _ = plotters::style::register_font(FONT, FontStyle::Normal, include_bytes!("../assets/DejaVuSans.ttf"));
    });
}

/// Draws `figure` and writes it to `path` (atomically) as a PNG or an SVG.
pub fn write_figure(figure: &impl Figure, path: &Path, format: ImageFormat) -> Result<()> {
    register_font();
    let size = figure.size();
    let failed = |e: Box<dyn StdError>| Error::io(path, std::io::Error::other(format!("drawing the figure: {e}")));
    match format {
        ImageFormat::Svg => {
            let mut svg = String::new();
            figure
                .draw(&SVGBackend::with_string(&mut svg, size).into_drawing_area())
                .map_err(failed)?;
            write_file(path, |w| w.write_all(svg.as_bytes()))
        }
        ImageFormat::Png => {
            let mut rgb = vec![0u8; size.0 as usize * size.1 as usize * 3];
            figure
                .draw(&BitMapBackend::with_buffer(&mut rgb, size).into_drawing_area())
                .map_err(failed)?;
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
