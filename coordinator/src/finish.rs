//! Finishing a job once every input row is scored (in `scores/`) or rejected (in
//! `rejected_rows.parquet`): rank with the job-wide statistics and write what depends on the
//! ranking — `ranking.parquet`, `selected/`, the report — then `summary.json`, last.
//!
//! `rank` gets here after scoring its shards; `select` gets here from an earlier job's
//! `scores/`, without scoring anything. Both therefore rank and write the same way.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use apscore_core::memory::log_memory;
use apscore_core::outputs::{
    RANKING_FILE, REJECTED_FILE, REPORT_FILE, SCORES_DIR, SELECTED_DIR, SUMMARY_FILE, WORK_DIR,
};
use apscore_core::storage::Location;
use tracing::{debug, info};

use crate::error::JobError;
use crate::ranking::{self, RankingParams};
use crate::reuse::Reused;
use crate::scored::{Scored, load_rank_rows, part_stats};
use crate::selected::SelectedWriting;
use crate::summary::{self, KeyFacts, ScoringFigures, ShardFigures, Summary, Timings};
use crate::{explicit_margin, ranking_file, report, selected};

/// Rejection reasons listed in the summary (the most frequent first).
const SUMMARY_REASONS: usize = 20;

/// How the ranking and its outputs are made.
#[derive(Debug, Clone)]
pub struct FinishParams {
    pub ranking: RankingParams,
    /// How `selected/` is written.
    pub selected: SelectedWriting,
    /// What the model did, when the job ran one.
    pub scoring: Option<ScoringFigures>,
    /// How the shards went, when this job scored them.
    pub shards: Option<ShardFigures>,
    /// What an incremental run took from an earlier job.
    pub reused: Option<Reused>,
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
    let (rows, reasons) = load_rank_rows(
        output,
        &scored.parts,
        params.ranking.implicit,
        facts.counts.input_rows,
    )
    .await?;
    log_memory("margins loaded");
    let stats = scored
        .stats
        .unwrap_or_else(|| part_stats(&rows, &scored.parts));
    let ranking = ranking::rank(&rows, &stats, &params.ranking)?;
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
            let started = Instant::now();
            let written =
                ranking_file::write_ranking(&output, &scored.sources, &rows, &ranking, &kv).await;
            debug!(seconds = started.elapsed().as_secs_f64(), "ranking written");
            written
        })
    };
    let selected_task = {
        let (output, scored, rows, ranking, kv) = (
            output.clone(),
            Arc::clone(&scored),
            Arc::clone(&rows),
            Arc::clone(&ranking),
            Arc::clone(&key_values),
        );
        let writing = params.selected;
        tokio::spawn(async move {
            let started = Instant::now();
            let written =
                selected::write_selected(&output, &scored, &rows, &ranking, writing, &kv).await;
            debug!(
                seconds = started.elapsed().as_secs_f64(),
                "selected rows written"
            );
            written
        })
    };
    let report_started = Instant::now();
    let (explicit, data_margins) =
        explicit_margin::explicit_margin(output, &scored, &rows, &facts).await?;
    let report_written = report::write_report(
        output,
        &scored,
        &rows,
        &ranking,
        &facts,
        &reasons,
        (&explicit, data_margins.as_ref()),
    )
    .await;
    debug!(
        seconds = report_started.elapsed().as_secs_f64(),
        "report written"
    );
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
        reused: params.reused,
        explicit_margin: Some(explicit),
        outputs: written_outputs(!scored.parts.is_empty(), selected_files.len()),
        facts,
    };
    // Writes of `scores/` parts cut short (a worker killed mid-write, on a local disk) must not
    // be found by readers of the folder.
    let leftovers = output.remove_staging_files(SCORES_DIR);
    if leftovers > 0 {
        info!(leftovers, "removed unfinished writes from scores/");
    }
    let json = serde_json::to_vec_pretty(&summary).expect("summary serialises");
    output.put(SUMMARY_FILE, json).await?;
    // The job's manifest and intermediate files go only now: a coordinator that dies before
    // this point resumes the job from them.
    output.delete_all(WORK_DIR).await?;
    info!(
        scored = summary.facts.counts.scored_rows,
        rejected = summary.facts.counts.rejected_rows,
        selected = summary.facts.counts.selected_rows,
        seconds = summary.timings_s.total,
        "job complete"
    );
    Ok(summary)
}

/// The outputs the job wrote, each where it is: a folder without files (no row scored, or none
/// selected) is not there, so it is not listed.
fn written_outputs(has_scores: bool, selected_files: usize) -> BTreeMap<String, String> {
    let mut outputs = BTreeMap::from([
        ("ranking".to_string(), RANKING_FILE.to_string()),
        ("rejected_rows".to_string(), REJECTED_FILE.to_string()),
        ("report".to_string(), REPORT_FILE.to_string()),
    ]);
    if has_scores {
        outputs.insert("scores".into(), format!("{SCORES_DIR}/"));
    }
    if selected_files > 0 {
        outputs.insert(
            "selected".into(),
            format!("{SELECTED_DIR}/ ({selected_files} files)"),
        );
    }
    outputs
}

fn top_reasons(reasons: BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    let mut by_count: Vec<_> = reasons.into_iter().collect();
    by_count.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    by_count.into_iter().take(SUMMARY_REASONS).collect()
}
