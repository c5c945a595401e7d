//! Pictures of the gate: reliability diagrams, ROC curves and energy histograms, each written as
//! `NAME.png` and `NAME.svg` with plotters. Text uses an embedded DejaVu Sans, so no system
//! fonts are needed (the SVG names the family `sans-serif`).
//!
//! - [`reliability_diagram`]: accuracy per confidence bin against the diagonal, before and after
//!   temperature scaling (Guo et al. 2017, figure 1 style), with ECE in each panel's title.
//! - [`roc_curves`]: TPR (ID accepted) against FPR (OOD accepted), one curve per OOD set, with
//!   the 95% TPR line and each AUROC in the legend.
//! - [`energy_histograms`]: the energy density of the ID set and each OOD set on shared bins,
//!   with the gate's threshold marked.

use std::path::{Path, PathBuf};
use std::sync::Once;

use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::element::DashedPathElement;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::error::{Error, Result};
use crate::metrics::CalibrationMetrics;

const FONT: &str = "sans-serif";

fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // The bytes are a valid TrueType font shipped by the `dejavu` crate.
        let _ = plotters::style::register_font(FONT, FontStyle::Normal, dejavu::sans::regular());
    });
}

/// Series colours: ID first, then OOD sets.
const COLORS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

fn color(i: usize) -> RGBColor {
    COLORS[i % COLORS.len()]
}

type DrawResult<DB> = std::result::Result<(), DrawingAreaErrorKind<<DB as DrawingBackend>::ErrorType>>;

type Chart<'a, DB> = ChartContext<'a, DB, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// A titled chart over `x` by `y` with labelled axes and a light grid.
fn chart<'a, DB: DrawingBackend>(
    area: &'a DrawingArea<DB, Shift>,
    title: &str,
    (x, y): (std::ops::Range<f64>, std::ops::Range<f64>),
    (x_desc, y_desc): (&str, &str),
) -> std::result::Result<Chart<'a, DB>, DrawingAreaErrorKind<DB::ErrorType>> {
    let mut chart = ChartBuilder::on(area)
        .caption(title, (FONT, 20))
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(64)
        .build_cartesian_2d(x, y)?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc(y_desc)
        .label_style((FONT, 14))
        .axis_desc_style((FONT, 15))
        .light_line_style(TRANSPARENT)
        .draw()?;
    Ok(chart)
}

/// The legend of the series drawn so far, at `position`.
fn legend<'a, DB: DrawingBackend + 'a>(chart: &mut Chart<'a, DB>, position: SeriesLabelPosition) -> DrawResult<DB> {
    chart
        .configure_series_labels()
        .position(position)
        .label_font((FONT, 14))
        .background_style(WHITE.mix(0.85))
        .border_style(RGBColor(160, 160, 160))
        .draw()
}

/// A generic drawing function, callable for both backends.
trait Plot {
    fn plot<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult<DB>;
}

fn write_plot(dir: &Path, name: &str, size: (u32, u32), p: &impl Plot) -> Result<Vec<PathBuf>> {
    register_font();
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let svg = dir.join(format!("{name}.svg"));
    let png = dir.join(format!("{name}.png"));
    let fail = |p: &Path, e: String| Error::Invalid(format!("cannot draw {}: {e}", p.display()));
    {
        let root = SVGBackend::new(&svg, size).into_drawing_area();
        root.fill(&WHITE).map_err(|e| fail(&svg, e.to_string()))?;
        p.plot(&root).map_err(|e| fail(&svg, e.to_string()))?;
        root.present().map_err(|e| fail(&svg, e.to_string()))?;
    }
    let mut buf = vec![0u8; size.0 as usize * size.1 as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut buf, size).into_drawing_area();
        root.fill(&WHITE).map_err(|e| fail(&png, e.to_string()))?;
        p.plot(&root).map_err(|e| fail(&png, e.to_string()))?;
        root.present().map_err(|e| fail(&png, e.to_string()))?;
    }
    let img = image::RgbImage::from_raw(size.0, size.1, buf).ok_or_else(|| fail(&png, "bad buffer size".into()))?;
    img.save(&png).map_err(|e| fail(&png, e.to_string()))?;
    Ok(vec![png, svg])
}

struct Reliability<'a> {
    panels: [(&'a CalibrationMetrics, String); 2],
}

impl Plot for Reliability<'_> {
    fn plot<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult<DB> {
        let (panels, foot) = root.split_vertically(root.dim_in_pixel().1 - 26);
        foot.draw_text(
            "Bars: accuracy in each of 15 equal-width confidence bins; numbers: frames per bin.",
            &(FONT, 14).into_text_style(&foot),
            (70, 4),
        )?;
        let areas = panels.split_evenly((1, 2));
        for (area, (m, title)) in areas.iter().zip(&self.panels) {
            let mut chart = chart(
                area,
                title,
                (0f64..1f64, 0f64..1f64),
                ("Confidence (top-class probability)", "Accuracy in bin"),
            )?;
            let filled = m.bins.iter().filter(|b| b.count > 0).collect::<Vec<_>>();
            let blue = color(0);
            chart
                .draw_series(
                    filled
                        .iter()
                        .map(|b| Rectangle::new([(b.lower, 0.0), (b.upper, b.accuracy)], blue.mix(0.75).filled())),
                )?
                .label("Accuracy")
                .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 16, y + 6)], blue.mix(0.75).filled()));
            let red = color(1);
            let gap = |b: &&crate::metrics::ReliabilityBin| {
                [(b.lower, b.accuracy.min(b.confidence)), (b.upper, b.accuracy.max(b.confidence))]
            };
            chart.draw_series(filled.iter().map(|b| Rectangle::new(gap(b), red.mix(0.25).filled())))?;
            chart
                .draw_series(filled.iter().map(|b| Rectangle::new(gap(b), red.stroke_width(1))))?
                .label("Gap, over-confident (above a bar)")
                .legend(move |(x, y)| {
                    EmptyElement::at((x, y))
                        + Rectangle::new([(0, -6), (16, 6)], red.mix(0.25).filled())
                        + Rectangle::new([(0, -6), (16, 6)], red.stroke_width(1))
                });
            chart
                .draw_series(std::iter::empty::<Rectangle<(f64, f64)>>())?
                .label("Gap, under-confident (inside a bar)")
                .legend(move |(x, y)| {
                    EmptyElement::at((x, y))
                        + Rectangle::new([(0, -6), (16, 6)], blue.mix(0.75).filled())
                        + Rectangle::new([(0, -6), (16, 6)], red.mix(0.25).filled())
                        + Rectangle::new([(0, -6), (16, 6)], red.stroke_width(1))
                });
            chart
                .draw_series(filled.iter().map(|b| {
                    PathElement::new(vec![(b.lower, b.confidence), (b.upper, b.confidence)], red.stroke_width(3))
                }))?
                .label("Mean confidence in bin")
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], red.stroke_width(3)));
            chart.draw_series(filled.iter().map(|b| {
                let style = TextStyle::from((FONT, 11).into_font())
                    .pos(Pos::new(HPos::Center, VPos::Center))
                    .color(if b.accuracy > 0.08 { &WHITE } else { &BLACK });
                Text::new(format!("{}", b.count), ((b.lower + b.upper) / 2.0, 0.04), style)
            }))?;
            chart
                .draw_series(DashedLineSeries::new(vec![(0.0, 0.0), (1.0, 1.0)], 6, 4, BLACK.stroke_width(1)))?
                .label("Perfect calibration")
                .legend(|(x, y)| DashedPathElement::new(vec![(x, y), (x + 18, y)], 4, 3, BLACK));
            legend(&mut chart, SeriesLabelPosition::UpperLeft)?;
        }
        Ok(())
    }
}

/// Writes `dir/reliability.png` and `.svg`: the reliability diagram of `before` (left) and
/// `after` (right) temperature scaling, ECE and MCE in each title. Returns the paths written.
///
/// # Errors
/// [`Error::Io`] or [`Error::Invalid`] naming the file that could not be written.
pub fn reliability_diagram(
    dir: &Path,
    before: &CalibrationMetrics,
    after: &CalibrationMetrics,
) -> Result<Vec<PathBuf>> {
    let title = |m: &CalibrationMetrics| {
        format!("T = {:.3}: ECE {:.2}%, MCE {:.2}%, n = {}", m.temperature, 100.0 * m.ece, 100.0 * m.mce, m.n)
    };
    let plot = Reliability {
        panels: [(before, format!("Before  {}", title(before))), (after, format!("After  {}", title(after)))],
    };
    write_plot(dir, "reliability", (1200, 540), &plot)
}

/// One ROC curve: a name, its AUROC, and its `(fpr, tpr)` points.
#[derive(Debug, Clone, PartialEq)]
pub struct RocSeries {
    /// Legend name, for example `"tinyimagenet (energy)"`.
    pub name: String,
    /// Area under the curve.
    pub auroc: f64,
    /// False-positive rates (OOD accepted), ascending.
    pub fpr: Vec<f64>,
    /// True-positive rates (ID accepted).
    pub tpr: Vec<f64>,
}

struct Roc<'a> {
    series: &'a [RocSeries],
    title: &'a str,
}

impl Plot for Roc<'_> {
    fn plot<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult<DB> {
        let mut chart = chart(
            root,
            self.title,
            (0f64..1f64, 0f64..1.0001f64),
            ("False positive rate (OOD frames accepted)", "True positive rate (ID frames accepted)"),
        )?;
        chart
            .draw_series(DashedLineSeries::new(
                vec![(0.0, 0.0), (1.0, 1.0)],
                6,
                4,
                RGBColor(150, 150, 150).stroke_width(1),
            ))?
            .label("Chance")
            .legend(|(x, y)| DashedPathElement::new(vec![(x, y), (x + 18, y)], 4, 3, RGBColor(150, 150, 150)));
        chart
            .draw_series(DashedLineSeries::new(vec![(0.0, 0.95), (1.0, 0.95)], 3, 3, BLACK.stroke_width(1)))?
            .label("TPR = 95%")
            .legend(|(x, y)| DashedPathElement::new(vec![(x, y), (x + 18, y)], 3, 3, BLACK));
        for (i, s) in self.series.iter().enumerate() {
            let c = color(i + 1);
            chart
                .draw_series(LineSeries::new(s.fpr.iter().copied().zip(s.tpr.iter().copied()), c.stroke_width(2)))?
                .label(format!("{}: AUROC {:.4}", s.name, s.auroc))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], c.stroke_width(2)));
        }
        legend(&mut chart, SeriesLabelPosition::LowerRight)?;
        Ok(())
    }
}

/// Writes `dir/roc.png` and `.svg`: one ROC curve per series (ID positive). Returns the paths.
///
/// # Errors
/// [`Error::Io`] or [`Error::Invalid`] naming the file that could not be written.
pub fn roc_curves(dir: &Path, title: &str, series: &[RocSeries]) -> Result<Vec<PathBuf>> {
    write_plot(dir, "roc", (760, 640), &Roc { series, title })
}

struct Hist<'a> {
    sets: &'a [(String, Vec<f32>)],
    threshold: Option<(f32, String)>,
    title: &'a str,
}

/// Shared bin edges over the 0.5%..99.5% range of all finite values.
fn bin_edges(sets: &[(String, Vec<f32>)], bins: usize) -> (f64, f64) {
    let mut all: Vec<f32> = sets.iter().flat_map(|(_, v)| v.iter().copied()).filter(|v| v.is_finite()).collect();
    if all.is_empty() {
        return (0.0, 1.0);
    }
    all.sort_by(f32::total_cmp);
    let q = |f: f64| all[((all.len() - 1) as f64 * f).round() as usize] as f64;
    let (lo, hi) = (q(0.005), q(0.995));
    if hi > lo {
        let pad = (hi - lo) / bins as f64;
        (lo - pad, hi + pad)
    } else {
        (lo - 0.5, hi + 0.5)
    }
}

impl Plot for Hist<'_> {
    fn plot<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult<DB> {
        let bins = 60usize;
        let (lo, mut hi) = bin_edges(self.sets, bins);
        if let Some((t, _)) = &self.threshold {
            hi = hi.max(*t as f64 + (hi - lo) / bins as f64);
        }
        let width = (hi - lo) / bins as f64;
        let densities: Vec<Vec<f64>> = self
            .sets
            .iter()
            .map(|(_, v)| {
                let mut h = vec![0.0f64; bins];
                for &e in v.iter().filter(|e| e.is_finite()) {
                    let b = ((e as f64 - lo) / width).floor();
                    if b >= 0.0 && (b as usize) < bins {
                        h[b as usize] += 1.0;
                    }
                }
                let n = v.len().max(1) as f64;
                h.iter().map(|c| c / (n * width)).collect()
            })
            .collect();
        let ymax = densities.iter().flatten().copied().fold(0.0f64, f64::max) * 1.1 + 1e-9;
        let mut chart = chart(
            root,
            self.title,
            (lo..hi, 0f64..ymax),
            (
                "Free energy E(x) = -T logsumexp(f(x)/T), lower = more in-distribution (central 99% of frames shown)",
                "Density (fraction of frames per unit energy)",
            ),
        )?;
        for (i, ((name, v), d)) in self.sets.iter().zip(&densities).enumerate() {
            let c = color(i);
            let mut pts = vec![(lo, 0.0)];
            for (b, &h) in d.iter().enumerate() {
                pts.push((lo + b as f64 * width, h));
                pts.push((lo + (b + 1) as f64 * width, h));
            }
            pts.push((hi, 0.0));
            chart
                .draw_series(AreaSeries::new(pts, 0.0, c.mix(0.22)).border_style(c.stroke_width(2)))?
                .label(format!("{name} (n = {})", v.len()))
                .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 16, y + 6)], c.mix(0.5).filled()));
        }
        if let Some((t, label)) = &self.threshold {
            let t = *t as f64;
            chart
                .draw_series(DashedLineSeries::new(vec![(t, 0.0), (t, ymax)], 6, 4, BLACK.stroke_width(2)))?
                .label(label.clone())
                .legend(|(x, y)| DashedPathElement::new(vec![(x, y), (x + 18, y)], 4, 3, BLACK.stroke_width(2)));
        }
        legend(&mut chart, SeriesLabelPosition::UpperLeft)?;
        Ok(())
    }
}

/// Writes `dir/energy_histogram.png` and `.svg`: the energy density of each named set (the ID
/// set first) on shared bins, and the threshold as a dashed line with its label. Returns the
/// paths written.
///
/// # Errors
/// [`Error::Io`] or [`Error::Invalid`] naming the file that could not be written.
pub fn energy_histograms(
    dir: &Path,
    title: &str,
    sets: &[(String, Vec<f32>)],
    threshold: Option<(f32, String)>,
) -> Result<Vec<PathBuf>> {
    write_plot(dir, "energy_histogram", (1000, 560), &Hist { sets, threshold, title })
}
