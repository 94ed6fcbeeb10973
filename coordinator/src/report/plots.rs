//! The report's plots, drawn with plotters on a bitmap and encoded as PNG.
//!
//! Text uses a font embedded in the binary (DejaVu Sans), so nothing depends on the fonts of
//! the machine that runs the job.

use std::sync::OnceLock;

use plotters::coord::Shift;
use plotters::coord::types::{RangedCoordf64, RangedCoordu64};
use plotters::prelude::*;

use crate::ranking::{Metric, RankRows, Ranking};

/// Points drawn in the scatter plot at most.
const SCATTER_POINTS: usize = 20_000;
const BINS: usize = 60;
const WIDTH: u32 = 900;
const HEIGHT: u32 = 480;

const SELECTED_COLOUR: RGBColor = RGBColor(31, 119, 180);
pub(super) const OTHER_COLOUR: RGBColor = RGBColor(170, 170, 170);
const CUTOFF_COLOUR: RGBColor = RGBColor(214, 39, 40);
pub(super) const CHOSEN_COLOUR: RGBColor = RGBColor(44, 160, 44);
pub(super) const REJECTED_COLOUR: RGBColor = RGBColor(255, 127, 14);

pub(super) type DrawResult = Result<(), Box<dyn std::error::Error>>;

/// A plot these values cannot make: the report says why in its place.
#[derive(Debug)]
struct Unplottable(String);

impl std::fmt::Display for Unplottable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Unplottable {}

/// A drawn plot, or why it was not drawn.
pub(super) enum Drawn {
    Png(Vec<u8>),
    Skipped(String),
}

fn font_ready() {
    static REGISTERED: OnceLock<()> = OnceLock::new();
    REGISTERED.get_or_init(|| {
        // The font is compiled in; registering it cannot fail for a valid TrueType file.
        let _ = plotters::style::register_font(
            "sans-serif",
            FontStyle::Normal,
            dejavu::sans::regular(),
        );
    });
}

/// Draws into a white bitmap and encodes it as PNG; a plot the values cannot make is
/// [`Drawn::Skipped`] with the reason.
pub(super) fn draw_png(
    draw: impl FnOnce(&DrawingArea<BitMapBackend<'_>, Shift>) -> DrawResult,
) -> Result<Drawn, String> {
    font_ready();
    let mut pixels = vec![0u8; (WIDTH * HEIGHT * 3) as usize];
    {
        let area = BitMapBackend::with_buffer(&mut pixels, (WIDTH, HEIGHT)).into_drawing_area();
        area.fill(&WHITE).map_err(|e| e.to_string())?;
        if let Err(e) = draw(&area) {
            return match e.downcast::<Unplottable>() {
                Ok(reason) => Ok(Drawn::Skipped(reason.0)),
                Err(e) => Err(e.to_string()),
            };
        }
        area.present().map_err(|e| e.to_string())?;
    }
    let mut png_bytes = Vec::new();
    {
        let mut encoder = png::Encoder::new(&mut png_bytes, WIDTH, HEIGHT);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        let mut writer = encoder.write_header().map_err(|e| e.to_string())?;
        writer
            .write_image_data(&pixels)
            .map_err(|e| e.to_string())?;
    }
    Ok(Drawn::Png(png_bytes))
}

/// Up to 100,000 evenly spaced values of `value(0..n)`: enough to place a histogram.
fn sample(n: usize, value: impl Fn(usize) -> f64) -> Vec<f64> {
    let step = (n / 100_000).max(1);
    (0..n)
        .step_by(step)
        .map(value)
        .filter(|v| v.is_finite())
        .collect()
}

/// A range that holds all but the most extreme 0.5 % of `sample` (finite values of `what`) on
/// each side (outliers go in the end bins), widened when the values are (nearly) equal. Values
/// that span more than an f64 can measure (`hi − lo` overflows) cannot be plotted.
fn robust_range(mut sample: Vec<f64>, what: &str) -> Result<(f64, f64), Unplottable> {
    if sample.is_empty() {
        return Ok((0.0, 1.0));
    }
    sample.sort_unstable_by(f64::total_cmp);
    let at = |q: f64| sample[((sample.len() - 1) as f64 * q).round() as usize];
    let (mut lo, mut hi) = (at(0.005), at(0.995));
    // Equal values, or a span lost in their rounding: a range around them.
    let magnitude = lo.abs().max(hi.abs());
    if hi - lo <= magnitude * 1e-9 {
        let pad = if magnitude > 0.0 {
            magnitude * 1e-3
        } else {
            0.5
        };
        (lo, hi) = (lo - pad, hi + pad);
    }
    if (hi - lo).is_finite() && hi > lo {
        Ok((lo, hi))
    } else {
        Err(Unplottable(format!(
            "{what} spans {:e} to {:e}, more than a plot axis can hold",
            sample[0],
            sample[sample.len() - 1]
        )))
    }
}

fn bin_counts(values: impl Iterator<Item = f64>, lo: f64, hi: f64) -> Vec<u64> {
    let mut counts = vec![0u64; BINS];
    for v in values {
        counts[bin_of(v, lo, hi)] += 1;
    }
    counts
}

/// The bin of `v` among [`BINS`] equal bins over `lo..hi`; values outside fall in the first or
/// the last bin, NaN in the first. (A cast truncates: on non-negative numbers that is `floor`.)
fn bin_of(v: f64, lo: f64, hi: f64) -> usize {
    let x = (v - lo) / ((hi - lo) / BINS as f64);
    if x > 0.0 {
        (x as usize).min(BINS - 1)
    } else {
        0
    }
}

fn caption_font() -> TextStyle<'static> {
    ("sans-serif", 20).into_font().into()
}

type HistogramChart<'a, 'b> =
    ChartContext<'a, BitMapBackend<'b>, Cartesian2d<RangedCoordf64, RangedCoordu64>>;

/// Axes for histograms over `lo..hi` with bars up to `top` pairs.
fn histogram_chart<'a, 'b>(
    area: &'a DrawingArea<BitMapBackend<'b>, Shift>,
    caption: Option<String>,
    x_label: &str,
    (lo, hi): (f64, f64),
    top: u64,
) -> Result<HistogramChart<'a, 'b>, Box<dyn std::error::Error>> {
    let mut builder = ChartBuilder::on(area);
    if let Some(caption) = caption {
        builder.caption(caption, caption_font());
    }
    let mut chart = builder
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(lo..hi, 0u64..top + top / 10)?;
    chart
        .configure_mesh()
        .x_desc(x_label)
        .y_desc("pairs")
        .light_line_style(WHITE)
        .draw()?;
    Ok(chart)
}

/// The bars of one histogram (`counts` over `lo..hi`).
fn bars(
    counts: &[u64],
    (lo, hi): (f64, f64),
    colour: ShapeStyle,
) -> impl Iterator<Item = Rectangle<(f64, u64)>> + '_ {
    let width = (hi - lo) / BINS as f64;
    counts.iter().enumerate().map(move |(b, &c)| {
        let x0 = lo + b as f64 * width;
        Rectangle::new([(x0, 0), (x0 + width, c)], colour)
    })
}

/// One or more overlaid histograms sharing a range.
pub(super) fn histograms(
    area: &DrawingArea<BitMapBackend<'_>, Shift>,
    x_label: &str,
    series: &[(&str, &[f64], RGBColor)],
) -> DrawResult {
    let all: Vec<f64> = series
        .iter()
        .flat_map(|(_, v, _)| sample(v.len(), |i| v[i]))
        .collect();
    let (lo, hi) = robust_range(all, x_label)?;
    let binned: Vec<Vec<u64>> = series
        .iter()
        .map(|(_, v, _)| bin_counts(v.iter().copied(), lo, hi))
        .collect();
    let top = binned.iter().flatten().copied().max().unwrap_or(1).max(1);
    let mut chart = histogram_chart(area, None, x_label, (lo, hi), top)?;
    for ((name, _, colour), counts) in series.iter().zip(&binned) {
        let colour = *colour;
        chart
            .draw_series(bars(counts, (lo, hi), colour.mix(0.6).filled()))?
            .label(*name)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], colour.filled()));
    }
    if series.len() > 1 {
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;
    }
    Ok(())
}

pub(super) fn ap_histogram(
    area: &DrawingArea<BitMapBackend<'_>, Shift>,
    ap: &dyn Fn(usize) -> f64,
    selected: &[bool],
    ranking: &Ranking,
    rows: &RankRows,
) -> DrawResult {
    let n = selected.len();
    let (lo, hi) = robust_range(sample(n, ap), "the alignment potential")?;
    // One pass: each row's alignment potential is computed once, for both histograms.
    let (mut all_counts, mut picked_counts) = (vec![0u64; BINS], vec![0u64; BINS]);
    for (i, &picked) in selected.iter().enumerate() {
        let bin = bin_of(ap(i), lo, hi);
        all_counts[bin] += 1;
        picked_counts[bin] += u64::from(picked);
    }
    let top = all_counts.iter().copied().max().unwrap_or(1).max(1);
    let title = match ranking.params.metric {
        Metric::Ap => "pairs by M_AP; selected in blue, cutoff in red".to_string(),
        other => format!(
            "pairs by M_AP; blue: selected by the `{}` metric",
            other.name()
        ),
    };
    let x_label = format!(
        "alignment potential M_AP = z(rm_margin) − {} · z(|{}|)",
        ranking.params.implicit_weight,
        ranking.params.implicit.column()
    );
    let mut chart = histogram_chart(area, Some(title), &x_label, (lo, hi), top)?;
    for (counts, colour) in [
        (&all_counts, OTHER_COLOUR),
        (&picked_counts, SELECTED_COLOUR),
    ] {
        chart.draw_series(bars(counts, (lo, hi), colour.filled()))?;
    }
    if ranking.params.metric == Metric::Ap
        && let Some(cutoff) = ranking.cutoff(rows).filter(|c| c.is_finite())
    {
        let x = cutoff.clamp(lo, hi);
        chart.draw_series(LineSeries::new(
            [(x, 0), (x, top + top / 10)],
            CUTOFF_COLOUR.stroke_width(2),
        ))?;
    }
    Ok(())
}

/// What the scatter plot shows of `n` pairs: all of them, or every k-th.
pub(super) fn scatter_caption(n: usize) -> String {
    let step = n.div_ceil(SCATTER_POINTS).max(1);
    if step > 1 {
        format!(
            "{} of {n} pairs shown (every {step}th); selected in blue",
            n.div_ceil(step)
        )
    } else {
        format!("all {n} pairs; selected in blue")
    }
}

pub(super) fn scatter_plot(
    area: &DrawingArea<BitMapBackend<'_>, Shift>,
    rows: &RankRows,
    selected: &[bool],
) -> DrawResult {
    let n = rows.len();
    let step = n.div_ceil(SCATTER_POINTS).max(1);
    let abs = |i: usize| rows.implicit(i).abs();
    let (x_lo, x_hi) = robust_range(sample(n, |i| rows.rm_margin[i]), "rm_margin")?;
    let (_, y_hi) = robust_range(sample(n, abs), "the implicit margin")?;
    let mut chart = ChartBuilder::on(area)
        .caption(scatter_caption(n), caption_font())
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(x_lo..x_hi, 0.0..y_hi)?;
    chart
        .configure_mesh()
        .x_desc("rm_margin (explicit reward margin)")
        .y_desc(if rows.dpo_margin.is_empty() {
            "|logp_margin_norm| (implicit margin)"
        } else {
            "|dpo_margin| (implicit margin)"
        })
        .light_line_style(WHITE)
        .draw()?;
    for (want, colour) in [(false, OTHER_COLOUR), (true, SELECTED_COLOUR)] {
        chart.draw_series(
            (0..n)
                .step_by(step)
                .filter(|&i| selected[i] == want)
                .map(|i| {
                    Circle::new(
                        (rows.rm_margin[i].clamp(x_lo, x_hi), abs(i).min(y_hi)),
                        2,
                        colour.mix(0.5).filled(),
                    )
                }),
        )?;
    }
    Ok(())
}

/// The reward model's margin against the data's own, one point per pair where both are known
/// (down-sampled like the landscape).
pub(super) fn agreement_plot(
    area: &DrawingArea<BitMapBackend<'_>, Shift>,
    reward: &[f64],
    data: &[f64],
) -> DrawResult {
    let n = reward.len();
    let step = n.div_ceil(SCATTER_POINTS).max(1);
    let known = |i: &usize| data[*i].is_finite();
    let (x_lo, x_hi) = robust_range(
        (0..n)
            .step_by(step)
            .filter(known)
            .map(|i| data[i])
            .collect(),
        "data_rm_margin",
    )?;
    let (y_lo, y_hi) = robust_range(sample(n, |i| reward[i]), "rm_margin")?;
    let mut chart = ChartBuilder::on(area)
        .caption(scatter_caption(n), caption_font())
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(x_lo..x_hi, y_lo..y_hi)?;
    chart
        .configure_mesh()
        .x_desc("data_rm_margin (the data's own margin)")
        .y_desc("rm_margin (reward model)")
        .light_line_style(WHITE)
        .draw()?;
    chart.draw_series((0..n).step_by(step).filter(known).map(|i| {
        Circle::new(
            (data[i].clamp(x_lo, x_hi), reward[i].clamp(y_lo, y_hi)),
            2,
            SELECTED_COLOUR.mix(0.4).filled(),
        )
    }))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bins are `floor((v − lo) / width)` clamped to the histogram, NaN in the first.
    #[test]
    fn a_value_falls_in_the_bin_below_it() {
        let (lo, hi) = (-3.0, 2.0);
        let width = (hi - lo) / BINS as f64;
        let floor_clamped = |v: f64| ((v - lo) / width).floor().clamp(0.0, (BINS - 1) as f64);
        let edges = (0..=BINS).map(|b| lo + b as f64 * width);
        let near_edges = edges.flat_map(|e| [e, e.next_down(), e.next_up()]);
        let others = [
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            -1e300,
            1e300,
            0.0,
            -0.0,
        ];
        for v in near_edges.chain(others) {
            let expected = if v.is_nan() {
                0
            } else {
                floor_clamped(v) as usize
            };
            assert_eq!(bin_of(v, lo, hi), expected, "{v}");
        }
        assert_eq!(bin_of(lo, lo, hi), 0);
        assert_eq!(
            bin_of(hi, lo, hi),
            BINS - 1,
            "the top edge is in the last bin"
        );
    }

    #[test]
    fn every_finite_range_plots_or_says_why_not() {
        // Ordinary, equal, equal at a huge magnitude, tiny and empty samples: a range with room.
        for sample in [
            vec![1.0, 2.0, 3.0],
            vec![5.0; 10],
            vec![1e300; 10],
            vec![-1e-310, 1e-310],
            vec![0.0; 3],
            vec![],
        ] {
            let (lo, hi) = robust_range(sample.clone(), "v").unwrap();
            assert!(lo < hi && (hi - lo).is_finite(), "{sample:?}: {lo}..{hi}");
            assert!(sample.iter().all(|v| (lo..=hi).contains(v)), "{sample:?}");
        }
        // A span f64 cannot measure: not plotted, with the reason.
        let err = robust_range(vec![-1.5e308, 1.5e308], "the alignment potential").unwrap_err();
        assert!(err.0.contains("the alignment potential spans"), "{}", err.0);
        // Drawing it ends at once with the reason instead of spinning.
        let drawn = draw_png(|area| {
            histograms(
                area,
                "x",
                &[("all", &[-1.5e308, 0.0, 1.5e308], OTHER_COLOUR)],
            )
        })
        .unwrap();
        assert!(matches!(drawn, Drawn::Skipped(_)));
    }
}
