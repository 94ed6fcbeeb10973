//! `report.html`: the margin landscape of a job at a glance, for analysts.
//!
//! One self-contained page (plots embedded as PNG data, no script, nothing fetched from the
//! network) and the same plots as files under `report/`:
//!
//! - explicit margin vs |implicit margin|, coloured by selection (the paper's picture),
//!   down-sampled on large jobs (the plot says so);
//! - the alignment-potential histogram, selected rows highlighted, with the cutoff;
//! - the distributions of both margins and of response lengths in tokens;
//! - rows per source file and per rejection reason;
//! - the top and bottom pairs with their margins and (truncated) text.
//!
//! Plots are drawn with plotters on a bitmap and a font embedded in the binary (DejaVu Sans),
//! so nothing depends on the fonts of the machine that runs the job.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::OnceLock;

use apscore_core::columns;
use apscore_core::pairs::PairColumns;
use apscore_core::storage::Location;
use arrow::array::AsArray;
use arrow::datatypes::Int64Type;
use base64::Engine;
use futures::TryStreamExt;
use plotters::coord::Shift;
use plotters::coord::types::{RangedCoordf64, RangedCoordu64};
use plotters::prelude::*;

use crate::finish::Scored;
use crate::outputs::{OutputError, read_whole};
use crate::picking::RowPicker;
use crate::plan::locate;
use crate::ranking::{Metric, RankRows, Ranking, alignment_potential};
use crate::summary::KeyFacts;

/// The report's file name under the output location.
pub const REPORT_FILE: &str = "report.html";
/// The folder of the report's plots under the output location.
pub const PLOTS_DIR: &str = "report";

/// Points drawn in the scatter plot at most.
const SCATTER_POINTS: usize = 20_000;
/// Pairs in each of the top and bottom tables.
const TABLE_PAIRS: usize = 10;
/// Characters of text shown per cell.
const TEXT_CHARS: usize = 160;
const BINS: usize = 60;
const WIDTH: u32 = 900;
const HEIGHT: u32 = 480;

const SELECTED_COLOUR: RGBColor = RGBColor(31, 119, 180);
const OTHER_COLOUR: RGBColor = RGBColor(170, 170, 170);
const CUTOFF_COLOUR: RGBColor = RGBColor(214, 39, 40);
const CHOSEN_COLOUR: RGBColor = RGBColor(44, 160, 44);
const REJECTED_COLOUR: RGBColor = RGBColor(255, 127, 14);

/// Writes `report.html` and `report/*.png` for a ranked job.
pub async fn write_report(
    output: &Location,
    scored: &Scored,
    rows: &RankRows,
    ranking: &Ranking,
    facts: &KeyFacts,
    reasons: &BTreeMap<String, u64>,
) -> Result<(), OutputError> {
    let n = rows.len();
    let mut selected = vec![false; n];
    for &position in &ranking.order[..ranking.selected] {
        selected[position as usize] = true;
    }
    let ap = |i: usize| {
        alignment_potential(
            ranking.z_rm.apply(rows.rm_margin[i]),
            ranking.z_implicit.apply(rows.implicit(i).abs()),
            ranking.params.implicit_weight,
        )
    };
    let (chosen_tokens, rejected_tokens) = read_token_counts(output, scored).await?;
    let extremes = read_extreme_pairs(output, scored, rows, ranking, facts).await?;

    let report_err = |e: String| OutputError::Report(e);
    let scatter_title = format!(
        "Explicit margin vs |implicit margin|: {}",
        scatter_caption(n)
    );
    let plots: Vec<(&str, &str, Vec<u8>)> = vec![
        (
            "margins.png",
            &scatter_title,
            draw_png(|area| scatter_plot(area, rows, &selected)).map_err(report_err)?,
        ),
        (
            "alignment_potential.png",
            "Alignment potential",
            draw_png(|area| ap_histogram(area, &ap, &selected, ranking, rows))
                .map_err(report_err)?,
        ),
        (
            "rm_margin.png",
            "Explicit margin distribution",
            draw_png(|area| {
                histograms(
                    area,
                    "rm_margin (explicit reward margin)",
                    &[("all pairs", &rows.rm_margin, OTHER_COLOUR)],
                )
            })
            .map_err(report_err)?,
        ),
        (
            "logp_margin_norm.png",
            "Implicit margin distribution",
            draw_png(|area| {
                histograms(
                    area,
                    "logp_margin_norm (implicit margin: mean log-prob, chosen − rejected)",
                    &[("all pairs", &rows.logp_margin_norm, OTHER_COLOUR)],
                )
            })
            .map_err(report_err)?,
        ),
    ];
    let mut plots = plots;
    if !chosen_tokens.is_empty() {
        plots.push((
            "tokens.png",
            "Response lengths",
            draw_png(|area| {
                histograms(
                    area,
                    "response length (tokens)",
                    &[
                        ("chosen", &chosen_tokens, CHOSEN_COLOUR),
                        ("rejected", &rejected_tokens, REJECTED_COLOUR),
                    ],
                )
            })
            .map_err(report_err)?,
        ));
    }
    for (name, _, png) in &plots {
        output
            .put(&format!("{PLOTS_DIR}/{name}"), png.clone())
            .await?;
    }

    let html = render_html(
        facts, scored, rows, &selected, reasons, &plots, &extremes, ranking,
    );
    output.put(REPORT_FILE, html.into_bytes()).await?;
    Ok(())
}

/// Response lengths of the scored rows, when known (not for precomputed log-probs).
async fn read_token_counts(
    output: &Location,
    scored: &Scored,
) -> Result<(Vec<f64>, Vec<f64>), OutputError> {
    let mut chosen = Vec::new();
    let mut rejected = Vec::new();
    for part in &scored.parts {
        let file = output.input_file(&part.path).await?;
        let mut stream = read_whole(
            &file,
            Some(&[columns::CHOSEN_TOKENS, columns::REJECTED_TOKENS]),
        )
        .await?;
        while let Some(batch) = stream.try_next().await? {
            for (column, target) in [(0, &mut chosen), (1, &mut rejected)] {
                let values = batch.column(column).as_primitive::<Int64Type>();
                target.extend(values.iter().flatten().map(|v| v as f64));
            }
        }
    }
    Ok((chosen, rejected))
}

/// One row of the top/bottom tables.
struct PairRow {
    rank: usize,
    row_id: u64,
    source: String,
    rm_margin: f64,
    logp_margin_norm: f64,
    ap: f64,
    prompt: String,
    chosen: String,
    rejected: String,
}

/// The top and bottom pairs by rank, with their text when the data has text.
async fn read_extreme_pairs(
    output: &Location,
    scored: &Scored,
    rows: &RankRows,
    ranking: &Ranking,
    facts: &KeyFacts,
) -> Result<(Vec<PairRow>, Vec<PairRow>), OutputError> {
    let n = ranking.order.len();
    let top: Vec<usize> = (0..n.min(TABLE_PAIRS)).collect();
    let bottom: Vec<usize> = (n.saturating_sub(TABLE_PAIRS).max(top.len())..n).collect();
    let mut wanted: Vec<(u32, usize)> = top
        .iter()
        .chain(&bottom)
        .map(|&rank| (ranking.order[rank], rank))
        .collect();
    wanted.sort_unstable();

    let mut texts: BTreeMap<usize, (String, String, String)> = BTreeMap::new();
    if facts.layout.text.is_some() {
        let needed = facts.layout.needed_columns();
        let names: Vec<&str> = needed.iter().map(String::as_str).collect();
        let positions: Vec<u32> = wanted.iter().map(|&(position, _)| position).collect();
        let mut picker = RowPicker::new(output, &scored.parts, &positions, &names);
        while let Some((picked, range)) = picker.next_batch().await? {
            let pairs = PairColumns::new(&picked, &facts.layout)
                .map_err(|e| OutputError::Report(e.to_string()))?;
            for (row, &(_, rank)) in wanted[range].iter().enumerate() {
                if let Some(Ok(c)) = pairs.conversation(row) {
                    let prompt = c
                        .prompt
                        .last()
                        .map(|m| m.content.clone())
                        .unwrap_or_default();
                    texts.insert(rank, (prompt, c.chosen.content, c.rejected.content));
                }
            }
        }
    }

    let row = |rank: usize| {
        let position = ranking.order[rank] as usize;
        let row_id = rows.row_id(position);
        let (source, source_row) = locate(&scored.sources, row_id);
        let (prompt, chosen, rejected) = texts.get(&rank).cloned().unwrap_or_default();
        PairRow {
            rank: rank + 1,
            row_id,
            source: format!(
                "{}#{}",
                source.path.rsplit('/').next().unwrap_or(&source.path),
                source_row
            ),
            rm_margin: rows.rm_margin[position],
            logp_margin_norm: rows.logp_margin_norm[position],
            ap: alignment_potential(
                ranking.z_rm.apply(rows.rm_margin[position]),
                ranking.z_implicit.apply(rows.implicit(position).abs()),
                ranking.params.implicit_weight,
            ),
            prompt,
            chosen,
            rejected,
        }
    };
    Ok((
        top.into_iter().map(row).collect(),
        bottom.into_iter().map(row).collect(),
    ))
}

// ---------------------------------------------------------------------------------------------
// Plots

type DrawResult = Result<(), Box<dyn std::error::Error>>;

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

/// Draws into a white bitmap and encodes it as PNG.
fn draw_png(
    draw: impl FnOnce(&DrawingArea<BitMapBackend<'_>, Shift>) -> DrawResult,
) -> Result<Vec<u8>, String> {
    font_ready();
    let mut pixels = vec![0u8; (WIDTH * HEIGHT * 3) as usize];
    {
        let area = BitMapBackend::with_buffer(&mut pixels, (WIDTH, HEIGHT)).into_drawing_area();
        area.fill(&WHITE).map_err(|e| e.to_string())?;
        draw(&area).map_err(|e| e.to_string())?;
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
    Ok(png_bytes)
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

/// A range that holds all but the most extreme 0.5 % of `sample` on each side (outliers go in
/// the end bins), widened when all values are equal.
fn robust_range(mut sample: Vec<f64>) -> (f64, f64) {
    if sample.is_empty() {
        return (0.0, 1.0);
    }
    sample.sort_unstable_by(f64::total_cmp);
    let at = |q: f64| sample[((sample.len() - 1) as f64 * q).round() as usize];
    let (lo, hi) = (at(0.005), at(0.995));
    if hi > lo {
        (lo, hi)
    } else {
        (lo - 0.5, hi + 0.5)
    }
}

fn bin_counts(values: impl Iterator<Item = f64>, lo: f64, hi: f64) -> Vec<u64> {
    let mut counts = vec![0u64; BINS];
    let width = (hi - lo) / BINS as f64;
    for v in values {
        let b = ((v - lo) / width).floor().clamp(0.0, (BINS - 1) as f64) as usize;
        counts[b] += 1;
    }
    counts
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
fn histograms(
    area: &DrawingArea<BitMapBackend<'_>, Shift>,
    x_label: &str,
    series: &[(&str, &[f64], RGBColor)],
) -> DrawResult {
    let all: Vec<f64> = series
        .iter()
        .flat_map(|(_, v, _)| sample(v.len(), |i| v[i]))
        .collect();
    let (lo, hi) = robust_range(all);
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

fn ap_histogram(
    area: &DrawingArea<BitMapBackend<'_>, Shift>,
    ap: &dyn Fn(usize) -> f64,
    selected: &[bool],
    ranking: &Ranking,
    rows: &RankRows,
) -> DrawResult {
    let n = selected.len();
    let (lo, hi) = robust_range(sample(n, ap));
    let all_counts = bin_counts((0..n).map(ap), lo, hi);
    let picked_counts = bin_counts((0..n).filter(|&i| selected[i]).map(ap), lo, hi);
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
        && let Some(cutoff) = ranking.cutoff(rows)
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
fn scatter_caption(n: usize) -> String {
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

fn scatter_plot(
    area: &DrawingArea<BitMapBackend<'_>, Shift>,
    rows: &RankRows,
    selected: &[bool],
) -> DrawResult {
    let n = rows.len();
    let step = n.div_ceil(SCATTER_POINTS).max(1);
    let abs = |i: usize| rows.implicit(i).abs();
    let (x_lo, x_hi) = robust_range(sample(n, |i| rows.rm_margin[i]));
    let (_, y_hi) = robust_range(sample(n, abs));
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

// ---------------------------------------------------------------------------------------------
// The page

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn truncate(text: &str) -> String {
    let flat: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.chars().count() > TEXT_CHARS {
        format!("{}…", flat.chars().take(TEXT_CHARS).collect::<String>())
    } else {
        flat
    }
}

#[allow(clippy::too_many_arguments)]
fn render_html(
    facts: &KeyFacts,
    scored: &Scored,
    rows: &RankRows,
    selected: &[bool],
    reasons: &BTreeMap<String, u64>,
    plots: &[(&str, &str, Vec<u8>)],
    extremes: &(Vec<PairRow>, Vec<PairRow>),
    ranking: &Ranking,
) -> String {
    let c = &facts.counts;
    let mut html = String::new();
    let _ = write!(
        html,
        r#"<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>apscore report</title>
<style>
body {{ font-family: "DejaVu Sans", Arial, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }}
h1 {{ font-size: 1.6em; }} h2 {{ font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ddd; }}
table {{ border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0; }}
td, th {{ border: 1px solid #ddd; padding: 3px 6px; vertical-align: top; text-align: left; }}
td.n {{ text-align: right; font-variant-numeric: tabular-nums; }}
.facts td:first-child {{ color: #666; }} img {{ max-width: 100%; border: 1px solid #eee; }}
.grid {{ display: grid; grid-template-columns: 1fr 1fr; gap: 1em; }}
</style></head><body>
<h1>apscore: {selected} of {scored} pairs selected by {metric}</h1>
<table class="facts">
<tr><td>input rows</td><td class="n">{input}</td></tr>
<tr><td>scored / rejected</td><td class="n">{scored} / {rejected}</td></tr>
<tr><td>selected</td><td class="n">{selected} ({selection})</td></tr>
<tr><td>metric</td><td>{metric}, w = {w}</td></tr>
<tr><td>layout</td><td>{layout}</td></tr>
<tr><td>log-probs</td><td>{model}</td></tr>
<tr><td>output</td><td>{output}</td></tr>
<tr><td>apscore</td><td>{version}</td></tr>
</table>
"#,
        selected = c.selected_rows,
        scored = c.scored_rows,
        rejected = c.rejected_rows,
        input = c.input_rows,
        metric = ranking.params.metric.name(),
        w = ranking.params.implicit_weight,
        selection = match ranking.params.selection {
            crate::ranking::Selection::Ratio(r) => format!("ratio {r}"),
            crate::ranking::Selection::TopK(k) => format!("top {k}"),
        },
        layout = escape(&facts.layout.describe()),
        model = escape(&facts.model),
        output = escape(&facts.output),
        version = escape(&facts.apscore_version),
    );

    let image = |(name, title, png): &(&str, &str, Vec<u8>)| {
        format!(
            "<figure><figcaption>{}</figcaption><img alt=\"{}\" src=\"data:image/png;base64,{}\"></figure>\n",
            escape(title),
            escape(name),
            base64::engine::general_purpose::STANDARD.encode(png)
        )
    };
    html.push_str("<h2>The margin landscape</h2>\n");
    for plot in plots.iter().take(2) {
        html.push_str(&image(plot));
    }
    html.push_str("<h2>Distributions</h2>\n<div class=\"grid\">\n");
    for plot in plots.iter().skip(2) {
        html.push_str(&image(plot));
    }
    if plots.len() < 5 {
        html.push_str("<p>Response lengths are not known: the log-probs were precomputed.</p>\n");
    }
    html.push_str("</div>\n");

    // Per source file.
    let mut per_file: Vec<[u64; 3]> = vec![[0; 3]; scored.sources.len()];
    let file_of = |row_id: u64| {
        scored
            .sources
            .partition_point(|s| s.first_row_id <= row_id)
            .max(1)
            - 1
    };
    for (position, &is_selected) in selected.iter().enumerate() {
        let f = file_of(rows.row_id(position));
        per_file[f][0] += 1;
        per_file[f][2] += u64::from(is_selected);
    }
    for &id in &rows.rejected_row_ids {
        per_file[file_of(id)][1] += 1;
    }
    html.push_str("<h2>Rows per source file</h2>\n<table><tr><th>file</th><th>rows</th><th>scored</th><th>rejected</th><th>selected</th></tr>\n");
    for (source, [s, r, k]) in scored.sources.iter().zip(&per_file) {
        let _ = writeln!(
            html,
            "<tr><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{s}</td><td class=\"n\">{r}</td><td class=\"n\">{k}</td></tr>",
            escape(&source.path),
            source.rows
        );
    }
    html.push_str("</table>\n");

    html.push_str("<h2>Rejected rows by reason</h2>\n");
    if reasons.is_empty() {
        html.push_str("<p>No row was rejected.</p>\n");
    } else {
        let mut by_count: Vec<_> = reasons.iter().collect();
        by_count.sort_by(|a, b| b.1.cmp(a.1).then_with(|| a.0.cmp(b.0)));
        html.push_str("<table><tr><th>reason</th><th>rows</th></tr>\n");
        for (reason, count) in by_count.iter().take(30) {
            let _ = writeln!(
                html,
                "<tr><td>{}</td><td class=\"n\">{count}</td></tr>",
                escape(reason)
            );
        }
        if by_count.len() > 30 {
            let rest: u64 = by_count.iter().skip(30).map(|(_, c)| **c).sum();
            let _ = writeln!(
                html,
                "<tr><td>(other reasons)</td><td class=\"n\">{rest}</td></tr>"
            );
        }
        html.push_str("</table>\n<p>Every rejected row, with its file and row: <code>rejected_rows.parquet</code>.</p>\n");
    }

    for (title, pairs) in [("Top pairs", &extremes.0), ("Bottom pairs", &extremes.1)] {
        let _ = writeln!(html, "<h2>{title}</h2>");
        html.push_str("<table><tr><th>rank</th><th>row</th><th>rm_margin</th><th>logp_margin_norm</th><th>M_AP</th><th>prompt</th><th>chosen</th><th>rejected</th></tr>\n");
        for p in pairs {
            let _ = writeln!(
                html,
                "<tr><td class=\"n\">{}</td><td>{} <small>({})</small></td><td class=\"n\">{:.3}</td><td class=\"n\">{:.3}</td><td class=\"n\">{:.3}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                p.rank,
                p.row_id,
                escape(&p.source),
                p.rm_margin,
                p.logp_margin_norm,
                p.ap,
                escape(&truncate(&p.prompt)),
                escape(&truncate(&p.chosen)),
                escape(&truncate(&p.rejected)),
            );
        }
        html.push_str("</table>\n");
    }
    html.push_str("</body></html>\n");
    html
}
