//! `report.html`: the margin landscape of a job at a glance, for analysts.
//!
//! One self-contained page (plots embedded as PNG data, no script, nothing fetched from the
//! network) and the same plots as files under `report/`:
//!
//! - explicit margin vs |implicit margin|, coloured by selection (the paper's picture),
//!   down-sampled on large jobs (the plot says so);
//! - the alignment-potential histogram, selected rows highlighted, with the cutoff;
//! - the distributions of both margins and of response lengths in tokens;
//! - with a reward model, where the explicit margin came from and, when the data has a margin
//!   of its own, how they agree (Spearman, sign disagreement) with a scatter plot of the two;
//! - rows per source file and per rejection reason;
//! - the top and bottom pairs with their margins and (truncated) text.
//!
//! This module gathers what the report shows; [`plots`] draws the pictures and [`page`] lays
//! out the HTML from its template (`coordinator/templates/report.html`).

mod page;
mod plots;

use std::collections::BTreeMap;

use apscore_core::columns;
use apscore_core::outputs::{PLOTS_DIR, REPORT_FILE};
use apscore_core::pairs::PairColumns;
use apscore_core::parquet_io::read_whole;
use apscore_core::storage::Location;
use arrow::array::AsArray;
use arrow::datatypes::Int64Type;
use futures::TryStreamExt;

use crate::error::OutputError;
use crate::explicit_margin::{DataMargins, ExplicitMarginFacts};
use crate::picking::RowPicker;
use crate::plan::locate;
use crate::ranking::{RankRows, Ranking, alignment_potential};
use crate::scored::Scored;
use crate::summary::KeyFacts;
use plots::{
    CHOSEN_COLOUR, Drawn, OTHER_COLOUR, REJECTED_COLOUR, agreement_plot, ap_histogram, draw_png,
    histograms, scatter_caption, scatter_plot,
};

/// Pairs in each of the top and bottom tables.
const TABLE_PAIRS: usize = 10;

/// Writes `report.html` and `report/*.png` for a ranked job.
pub async fn write_report(
    output: &Location,
    scored: &Scored,
    rows: &RankRows,
    ranking: &Ranking,
    facts: &KeyFacts,
    reasons: &BTreeMap<String, u64>,
    (explicit, data_margins): (&ExplicitMarginFacts, Option<&DataMargins>),
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
    let plots: Vec<(&str, &str, Drawn)> = vec![
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
    let agreement = match data_margins {
        Some(data) => Some((
            "reward_vs_data.png",
            "The reward model's margin against the data's own",
            draw_png(|area| agreement_plot(area, &rows.rm_margin, &data.0)).map_err(report_err)?,
        )),
        None => None,
    };
    for (name, _, drawn) in plots.iter().chain(&agreement) {
        if let Drawn::Png(png) = drawn {
            output
                .put(&format!("{PLOTS_DIR}/{name}"), png.clone())
                .await?;
        }
    }

    let html = page::render(
        facts,
        scored,
        rows,
        &selected,
        reasons,
        &plots,
        (explicit, agreement.as_ref()),
        &extremes,
        ranking,
    )
    .map_err(|e| OutputError::Report(e.to_string()))?;
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
        let positions: Vec<u64> = wanted.iter().map(|&(p, _)| u64::from(p)).collect();
        // The text is in the scores/ parts when they copy the input, else in the input.
        let mut picker = if scored.inputs_in_scores {
            RowPicker::scores(output, &scored.parts, positions.into(), &names)
        } else {
            let row_ids: Vec<u64> = positions.iter().map(|&p| rows.row_id(p as usize)).collect();
            RowPicker::inputs(output, &scored.sources, row_ids.into(), &names)
        };
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
