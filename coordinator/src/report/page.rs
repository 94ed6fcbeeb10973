//! The report's HTML page: what it shows, laid out by the template
//! `coordinator/templates/report.html` (askama: checked when apscore is compiled, every value
//! HTML-escaped unless marked safe).

use std::collections::BTreeMap;

use askama::Template;
use base64::Engine;

use super::PairRow;
use super::plots::Drawn;
use crate::explicit_margin::ExplicitMarginFacts;
use crate::ranking::{RankRows, Ranking, Selection};
use crate::scored::Scored;
use crate::summary::KeyFacts;

/// Characters of text shown per cell.
const TEXT_CHARS: usize = 160;
/// Rejection reasons listed one by one; the others are summed in one row.
const LISTED_REASONS: usize = 30;

#[derive(Template)]
#[template(path = "report.html")]
struct Page<'a> {
    input: u64,
    scored: u64,
    rejected: u64,
    selected: u64,
    selection: String,
    metric: &'a str,
    implicit_weight: f64,
    layout: String,
    model: &'a str,
    output: &'a str,
    version: &'a str,
    /// The scatter plot and the alignment-potential histogram.
    landscape: Vec<Figure>,
    /// The margins' (and response lengths') distributions.
    distributions: Vec<Figure>,
    /// Whether the response lengths are known (a model ran).
    lengths_known: bool,
    /// Where the explicit margin came from and how it agrees with the data's: (fact, value).
    explicit: Vec<(&'static str, String)>,
    /// The reward model's margin against the data's own.
    agreement: Option<Figure>,
    files: Vec<FileRow<'a>>,
    /// Rejection reasons, the most frequent first.
    reasons: Vec<(&'a str, u64)>,
    /// Rows rejected for the reasons not listed one by one.
    other_reasons: Option<u64>,
    tables: [(&'static str, Vec<PairCells>); 2],
}

/// One embedded plot, or why it is not drawn.
struct Figure {
    title: String,
    name: String,
    /// The PNG, base64-encoded; `None` when the values could not be plotted.
    png_base64: Option<String>,
    /// Why the plot is not drawn.
    note: String,
}

/// One row of the table of source files.
struct FileRow<'a> {
    path: &'a str,
    rows: u64,
    scored: u64,
    rejected: u64,
    selected: u64,
}

/// One row of the top/bottom tables, as shown.
struct PairCells {
    rank: usize,
    row_id: u64,
    source: String,
    rm_margin: String,
    logp_margin_norm: String,
    ap: String,
    prompt: String,
    chosen: String,
    rejected: String,
}

/// The page for a ranked job. `plots` are (file name, title, PNG), the first two of the
/// landscape, the others distributions.
#[allow(clippy::too_many_arguments)]
pub(super) fn render(
    facts: &KeyFacts,
    scored: &Scored,
    rows: &RankRows,
    selected: &[bool],
    reasons: &BTreeMap<String, u64>,
    plots: &[(&str, &str, Drawn)],
    (explicit, agreement): (&ExplicitMarginFacts, Option<&(&str, &str, Drawn)>),
    extremes: &(Vec<PairRow>, Vec<PairRow>),
    ranking: &Ranking,
) -> Result<String, askama::Error> {
    let c = &facts.counts;
    let figure = |(name, title, drawn): &(&str, &str, Drawn)| Figure {
        title: title.to_string(),
        name: name.to_string(),
        png_base64: match drawn {
            Drawn::Png(png) => Some(base64::engine::general_purpose::STANDARD.encode(png)),
            Drawn::Skipped(_) => None,
        },
        note: match drawn {
            Drawn::Png(_) => String::new(),
            Drawn::Skipped(reason) => reason.clone(),
        },
    };
    let mut by_count: Vec<(&str, u64)> = reasons.iter().map(|(r, &n)| (r.as_str(), n)).collect();
    by_count.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
    let other_reasons = (by_count.len() > LISTED_REASONS)
        .then(|| by_count[LISTED_REASONS..].iter().map(|(_, n)| n).sum());
    by_count.truncate(LISTED_REASONS);
    let page = Page {
        input: c.input_rows,
        scored: c.scored_rows,
        rejected: c.rejected_rows,
        selected: c.selected_rows,
        selection: match ranking.params.selection {
            Selection::Ratio(r) => format!("ratio {r}"),
            Selection::TopK(k) => format!("top {k}"),
        },
        metric: ranking.params.metric.name(),
        implicit_weight: ranking.params.implicit_weight,
        layout: facts.layout.describe(),
        model: &facts.model,
        output: &facts.output,
        version: &facts.apscore_version,
        landscape: plots.iter().take(2).map(figure).collect(),
        distributions: plots.iter().skip(2).map(figure).collect(),
        lengths_known: plots.len() >= 5,
        explicit: explicit_rows(explicit),
        agreement: agreement.map(figure),
        files: file_rows(scored, rows, selected),
        reasons: by_count,
        other_reasons,
        tables: [
            ("Top pairs", extremes.0.iter().map(cells).collect()),
            ("Bottom pairs", extremes.1.iter().map(cells).collect()),
        ],
    };
    page.render()
}

/// The explicit margin's facts as shown.
fn explicit_rows(e: &ExplicitMarginFacts) -> Vec<(&'static str, String)> {
    let percent = |share: f64| format!("{:.1} %", share * 100.0);
    let mut rows = vec![(
        "source",
        match &e.reward_model {
            Some(model) => format!("reward model {model}"),
            None => "the data's own columns".into(),
        },
    )];
    rows.push((
        "pairs preferring the rejected response",
        percent(e.prefers_rejected_share),
    ));
    if let Some(a) = &e.agreement {
        rows.push(("pairs with the data's own margin", a.rows.to_string()));
        rows.push((
            "Spearman correlation with the data's margin",
            a.spearman.map_or_else(
                || "undefined (a constant margin)".into(),
                |r| format!("{r:.4}"),
            ),
        ));
        rows.push((
            "data's margin preferring the rejected response",
            percent(a.data_prefers_rejected_share),
        ));
        rows.push((
            "pairs where the two margins disagree in sign",
            percent(a.sign_disagreement_share),
        ));
    }
    rows
}

/// Rows, scored, rejected and selected rows per source file.
fn file_rows<'a>(scored: &'a Scored, rows: &RankRows, selected: &[bool]) -> Vec<FileRow<'a>> {
    let mut files: Vec<FileRow> = scored
        .sources
        .iter()
        .map(|s| FileRow {
            path: &s.path,
            rows: s.rows,
            scored: 0,
            rejected: 0,
            selected: 0,
        })
        .collect();
    let file_of = |row_id: u64| {
        scored
            .sources
            .partition_point(|s| s.first_row_id <= row_id)
            .max(1)
            - 1
    };
    for (position, &is_selected) in selected.iter().enumerate() {
        let f = &mut files[file_of(rows.row_id(position))];
        f.scored += 1;
        f.selected += u64::from(is_selected);
    }
    for &id in &rows.rejected_row_ids {
        files[file_of(id)].rejected += 1;
    }
    files
}

fn cells(p: &PairRow) -> PairCells {
    PairCells {
        rank: p.rank,
        row_id: p.row_id,
        source: p.source.clone(),
        rm_margin: format!("{:.3}", p.rm_margin),
        logp_margin_norm: format!("{:.3}", p.logp_margin_norm),
        ap: format!("{:.3}", p.ap),
        prompt: truncate(&p.prompt),
        chosen: truncate(&p.chosen),
        rejected: truncate(&p.rejected),
    }
}

/// The text on one line, cut to [`TEXT_CHARS`] characters.
fn truncate(text: &str) -> String {
    let flat: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.chars().count() > TEXT_CHARS {
        format!("{}…", flat.chars().take(TEXT_CHARS).collect::<String>())
    } else {
        flat
    }
}
