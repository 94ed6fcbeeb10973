//! Finishing a job once every input row is scored (in `scores/`) or rejected (in
//! `rejected_rows.parquet`): rank with the job-wide statistics and write what depends on the
//! ranking — `ranking.parquet`, `selected/`, the report — then `summary.json`, last.
//!
//! `rank` gets here after scoring its shards; `select` gets here from an earlier job's
//! `scores/`, without scoring anything. Both therefore rank and write the same way.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use apscore_core::shard::SCORES_DIR;
use apscore_core::stats::MarginStats;
use apscore_core::storage::Location;
use tracing::{debug, info};

use crate::job::JobError;
use crate::outputs::{self, RANKING_FILE, REJECTED_FILE, SELECTED_DIR};
use crate::plan::SourceFile;
use crate::ranking::{self, RankRows, RankingParams};
use crate::report::{self, REPORT_FILE};
use crate::summary::{
    self, KeyFacts, SUMMARY_FILE, ScoringFigures, ShardFigures, Summary, Timings,
};

/// Rejection reasons listed in the summary (the most frequent first).
const SUMMARY_REASONS: usize = 20;

/// One `scores/` part: its path under the output location and its rows.
#[derive(Debug, Clone)]
pub struct ScoredPart {
    pub path: String,
    pub rows: u64,
}

/// What a job knows once every row is scored or rejected.
#[derive(Debug, Clone)]
pub struct Scored {
    /// The input files in row order.
    pub sources: Vec<SourceFile>,
    /// The `scores/` parts in row order.
    pub parts: Vec<ScoredPart>,
    /// The input's columns, which `selected/` carries.
    pub input_columns: Vec<String>,
    /// Statistics of the margins of the scored rows, merged from the shards' reports; `None`
    /// derives them from the parts' rows once read ([`part_stats`]).
    pub stats: Option<MarginStats>,
    /// Uncompressed bytes per row of the input, an estimate for memory budgets.
    pub bytes_per_row: f64,
}

/// How the ranking and its outputs are made.
#[derive(Debug, Clone, Copy)]
pub struct FinishParams {
    pub ranking: RankingParams,
    /// Memory for putting the selected rows in rank order (bytes).
    pub sort_memory_bytes: u64,
    /// What the model did, when the job ran one.
    pub scoring: Option<ScoringFigures>,
    /// How the shards went, when this job scored them.
    pub shards: Option<ShardFigures>,
}

/// Ranks, writes every output that depends on the ranking, and then `summary.json`.
/// `timings` holds the seconds of the phases before this one; `started` is the job's start.
pub async fn finish(
    output: &Location,
    scored: Scored,
    mut facts: KeyFacts,
    params: FinishParams,
    mut timings: Timings,
    started: Instant,
) -> Result<Summary, JobError> {
    let rank_started = Instant::now();
    let (rows, reasons) =
        outputs::load_rank_rows(output, &scored.parts, params.ranking.implicit).await?;
    log_memory("margins loaded");
    let stats = scored
        .stats
        .unwrap_or_else(|| part_stats(&rows, &scored.parts));
    let ranking = ranking::rank(&rows, &stats, &params.ranking);
    timings.rank = rank_started.elapsed().as_secs_f64();
    log_memory("ranked");

    facts.counts.scored_rows = rows.len() as u64;
    facts.counts.rejected_rows = rows.rejected_row_ids.len() as u64;
    facts.counts.selected_rows = ranking.selected as u64;
    facts.statistics = summary::statistics(&stats);
    let key_values = Arc::new(facts.key_values());

    // `ranking.parquet` and `selected/` are independent: each gets its own task (and core:
    // encoding Parquet is CPU-bound) while this one draws the report.
    let write_started = Instant::now();
    let scored = Arc::new(scored);
    let rows = Arc::new(rows);
    let ranking = Arc::new(ranking);
    let ranking_task = {
        let (output, scored, rows, ranking, kv) = (
            output.clone(),
            Arc::clone(&scored),
            Arc::clone(&rows),
            Arc::clone(&ranking),
            Arc::clone(&key_values),
        );
        tokio::spawn(async move {
            outputs::write_ranking(&output, &scored.sources, &rows, &ranking, &kv).await
        })
    };
    let selected_task = {
        let (output, scored, ranking, kv) = (
            output.clone(),
            Arc::clone(&scored),
            Arc::clone(&ranking),
            Arc::clone(&key_values),
        );
        tokio::spawn(async move {
            crate::selected::write_selected(
                &output,
                &scored,
                &ranking,
                params.sort_memory_bytes,
                &kv,
            )
            .await
        })
    };
    let report_written =
        report::write_report(output, &scored, &rows, &ranking, &facts, &reasons).await;
    ranking_task.await??;
    let selected_files = selected_task.await??;
    report_written?;
    timings.write = write_started.elapsed().as_secs_f64();
    timings.total = started.elapsed().as_secs_f64();
    log_memory("outputs written");

    let summary = Summary {
        selection_cutoff: ranking.cutoff(&rows),
        rejection_reasons: top_reasons(reasons),
        rows_per_second: facts.counts.input_rows as f64 / timings.total.max(1e-9),
        timings_s: timings,
        peak_memory_bytes: apscore_core::memory::peak_rss_bytes(),
        scoring: params.scoring,
        shards: params.shards,
        outputs: BTreeMap::from([
            ("scores".to_string(), format!("{SCORES_DIR}/")),
            ("ranking".to_string(), RANKING_FILE.to_string()),
            (
                "selected".to_string(),
                format!("{SELECTED_DIR}/ ({} files)", selected_files.len()),
            ),
            ("rejected_rows".to_string(), REJECTED_FILE.to_string()),
            ("report".to_string(), REPORT_FILE.to_string()),
        ]),
        facts,
    };
    let json = serde_json::to_vec_pretty(&summary).expect("summary serialises");
    output.put(SUMMARY_FILE, json).await?;
    // The job's manifest and intermediate files go only now: a coordinator that dies before
    // this point resumes the job from them.
    output.delete_all(apscore_core::shard::WORK_DIR).await?;
    info!(
        scored = summary.facts.counts.scored_rows,
        rejected = summary.facts.counts.rejected_rows,
        selected = summary.facts.counts.selected_rows,
        seconds = summary.timings_s.total,
        "job complete"
    );
    Ok(summary)
}

/// The statistics of `rows` merged part by part (`rows` holds the parts' rows in order), as a
/// worker summarises each shard and the coordinator merges them: identical to the last bit.
pub fn part_stats(rows: &RankRows, parts: &[ScoredPart]) -> MarginStats {
    let mut stats = MarginStats::default();
    let mut start = 0usize;
    for part in parts {
        let end = start + part.rows as usize;
        let part = MarginStats::from_columns(
            &rows.rm_margin[start..end],
            &rows.logp_margin[start..end],
            &rows.logp_margin_norm[start..end],
        );
        stats.merge(&match rows.dpo_margin.get(start..end) {
            Some(dpo) if !dpo.is_empty() => part.with_dpo(dpo),
            _ => part,
        });
        start = end;
    }
    stats
}

pub(crate) fn log_memory(phase: &str) {
    debug!(
        rss_mib = apscore_core::memory::rss_bytes().unwrap_or(0) >> 20,
        peak_mib = apscore_core::memory::peak_rss_bytes().unwrap_or(0) >> 20,
        "memory after: {phase}"
    );
}

fn top_reasons(reasons: BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    let mut by_count: Vec<_> = reasons.into_iter().collect();
    by_count.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    by_count.into_iter().take(SUMMARY_REASONS).collect()
}
