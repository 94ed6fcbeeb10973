//! A whole ranking job, from input files to every output of SPEC §3.
//!
//! ```text
//!   resolve inputs ─▶ plan shards ─▶ score shards (concurrently) ─▶ merge shard statistics
//!        ─▶ read margins back ─▶ rank ─▶ ranking.parquet ┐
//!                                        selected/        ├─▶ summary.json (last: "complete")
//!                                        rejected_rows    ┘
//! ```
//!
//! Today the shards are scored in this process by the worker library; the distributed job
//! hands the same shards to worker processes over gRPC and keeps every other step.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use apscore_core::layout::LayoutOptions;
use apscore_core::shard::{ShardResult, WORK_DIR};
use apscore_core::stats::MarginStats;
use apscore_core::storage::{Location, StorageError, resolve_inputs};
use apscore_worker::{ShardContext, ShardError, score_shard};
use futures::StreamExt;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::outputs::{self, OutputError, RANKING_FILE, REJECTED_FILE, SELECTED_DIR};
use crate::plan::{PlanError, plan_job};
use crate::ranking::{self, RankingParams};
use crate::summary::{self, Counts, KeyFacts, SUMMARY_FILE, Summary, Timings};

/// Outputs a job may have left at its output location; cleared before a new run.
const JOB_OUTPUTS: [&str; 6] = [
    "scores",
    SELECTED_DIR,
    WORK_DIR,
    RANKING_FILE,
    REJECTED_FILE,
    SUMMARY_FILE,
];

/// Rejection reasons listed in the summary (the most frequent first).
const SUMMARY_REASONS: usize = 20;

/// Everything that defines a ranking job.
#[derive(Debug, Clone)]
pub struct RankJobSpec {
    /// Input files, directories/prefixes or globs.
    pub inputs: Vec<String>,
    /// Output location (local path or object-store URL).
    pub output: String,
    pub layout: LayoutOptions,
    pub ranking: RankingParams,
    /// Target rows per shard.
    pub shard_rows: u64,
    /// Shards scored at once.
    pub concurrency: usize,
    /// Replace the outputs of a finished job at `output`.
    pub overwrite: bool,
    /// Memory for putting the selected rows in rank order (bytes).
    pub sort_memory_bytes: u64,
}

/// The job could not complete.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error("shard {index} ({file}, row groups {row_groups:?}): {source}")]
    Shard {
        index: u32,
        file: String,
        row_groups: std::ops::Range<usize>,
        #[source]
        source: ShardError,
    },
    #[error(transparent)]
    Output(#[from] OutputError),
    #[error(
        "{output} already holds a finished job ({SUMMARY_FILE} exists); choose another --output \
         or pass --overwrite to replace it"
    )]
    AlreadyComplete { output: String },
    #[error("a background task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// Runs a ranking job over inputs that carry precomputed log-probs; returns its summary.
pub async fn run_rank_job(spec: RankJobSpec) -> Result<Summary, JobError> {
    let started = Instant::now();
    let output = Location::parse(&spec.output)?;
    let span = info_span!("job", output = %output.display());
    async move {
        refuse_finished_job(&output, spec.overwrite).await?;
        let files = resolve_inputs(&spec.inputs).await?;
        let mut layout_options = spec.layout.clone();
        layout_options.require_logps = true;
        let plan = Arc::new(plan_job(files, &layout_options, spec.shard_rows).await?);
        info!(
            files = plan.files.len(),
            rows = plan.input_rows,
            shards = plan.shards.len(),
            "planned: {}",
            plan.layout.describe()
        );
        let logp_inputs = plan.layout.needed_columns();
        let replaced: Vec<_> = plan
            .replaced_columns
            .iter()
            .filter(|c| !logp_inputs.contains(c))
            .collect();
        if !replaced.is_empty() {
            warn!(
                columns = ?replaced,
                "input columns named like score columns are replaced by apscore's values in scores/"
            );
        }
        log_memory("planned");
        // Only now that the inputs are known to be good is the output touched.
        clear_earlier_run(&output).await?;
        let plan_time = started.elapsed();

        let mut facts = KeyFacts {
            apscore_version: apscore_core::VERSION.into(),
            command: "rank".into(),
            inputs: plan.files.iter().map(|f| f.file.display.clone()).collect(),
            output: output.display().into(),
            ranking: spec.ranking,
            implicit_margin: "logp_margin_norm".into(),
            model: "none: log-probs precomputed in the input columns".into(),
            tokenization_profile: None,
            layout: plan.layout.clone(),
            counts: Counts {
                input_files: plan.files.len() as u64,
                shards: plan.shards.len() as u64,
                input_rows: plan.input_rows,
                ..Counts::default()
            },
            statistics: BTreeMap::new(),
        };

        // Score every shard.
        let score_started = Instant::now();
        let context = Arc::new(ShardContext {
            layout: plan.layout.clone(),
            output: output.clone(),
            key_values: facts.key_values(),
        });
        let results = score_all(&plan, &context, spec.concurrency.max(1)).await?;
        let score_time = score_started.elapsed();
        log_memory("shards scored");

        // Merge the shards' statistics and rank.
        let rank_started = Instant::now();
        let mut stats = MarginStats::default();
        for r in &results {
            stats.merge(&r.stats);
        }
        let scored: Vec<u64> = results.iter().map(|r| r.scored).collect();
        let scored_total: u64 = scored.iter().sum();
        let rejected_total: u64 = results.iter().map(|r| r.rejected).sum();
        let rows = outputs::load_rank_rows(&output, &plan.shards, &scored).await?;
        log_memory("margins loaded");
        let ranking = ranking::rank(&rows, &stats, &spec.ranking);
        let rank_time = rank_started.elapsed();
        log_memory("ranked");

        facts.counts.scored_rows = scored_total;
        facts.counts.rejected_rows = rejected_total;
        facts.counts.selected_rows = ranking.selected as u64;
        facts.statistics = summary::statistics(&stats);
        let key_values = facts.key_values();

        // Write the outputs: the three files are independent, so each gets its own task (and
        // its own core: encoding Parquet is CPU-bound).
        let write_started = Instant::now();
        let rows = Arc::new(rows);
        let ranking = Arc::new(ranking);
        let key_values = Arc::new(key_values);
        let scored = Arc::new(scored);
        let ranking_task = {
            let (output, plan, rows, ranking, kv) = (
                output.clone(),
                Arc::clone(&plan),
                Arc::clone(&rows),
                Arc::clone(&ranking),
                Arc::clone(&key_values),
            );
            let weight = spec.ranking.implicit_weight;
            tokio::spawn(async move {
                outputs::write_ranking(&output, &plan, &rows, &ranking, weight, &kv).await
            })
        };
        let sort_budget = spec.sort_memory_bytes;
        let selected_task = {
            let (output, plan, scored, ranking, kv) = (
                output.clone(),
                Arc::clone(&plan),
                Arc::clone(&scored),
                Arc::clone(&ranking),
                Arc::clone(&key_values),
            );
            tokio::spawn(async move {
                crate::selected::write_selected(&output, &plan, &scored, &ranking, sort_budget, &kv)
                    .await
            })
        };
        let rejected_written = outputs::write_rejected(&output, &plan.shards, &key_values).await;
        ranking_task.await??;
        let selected_files = selected_task.await??;
        let (rejected_rows, reasons) = rejected_written?;
        debug_assert_eq!(rejected_rows, rejected_total);
        output.delete_all(WORK_DIR).await?;
        let write_time = write_started.elapsed();
        log_memory("outputs written");

        let total = started.elapsed();
        let summary = Summary {
            selection_cutoff: ranking.cutoff(&rows),
            rejection_reasons: top_reasons(reasons),
            timings_s: Timings {
                plan: plan_time.as_secs_f64(),
                score: score_time.as_secs_f64(),
                rank: rank_time.as_secs_f64(),
                write: write_time.as_secs_f64(),
                total: total.as_secs_f64(),
            },
            rows_per_second: plan.input_rows as f64 / total.as_secs_f64().max(1e-9),
            peak_memory_bytes: apscore_core::memory::peak_rss_bytes(),
            outputs: BTreeMap::from([
                ("scores".to_string(), "scores/".to_string()),
                ("ranking".to_string(), RANKING_FILE.to_string()),
                (
                    "selected".to_string(),
                    format!("{SELECTED_DIR}/ ({} files)", selected_files.len()),
                ),
                ("rejected_rows".to_string(), REJECTED_FILE.to_string()),
            ]),
            facts,
        };
        let json = serde_json::to_vec_pretty(&summary).expect("summary serialises");
        output.put(SUMMARY_FILE, json).await?;
        info!(
            scored = scored_total,
            rejected = rejected_total,
            selected = ranking.selected,
            seconds = total.as_secs_f64(),
            "job complete"
        );
        Ok(summary)
    }
    .instrument(span)
    .await
}

/// Refuses to touch a finished job's outputs unless asked to.
async fn refuse_finished_job(output: &Location, overwrite: bool) -> Result<(), JobError> {
    if output.get_if_exists(SUMMARY_FILE).await?.is_some() && !overwrite {
        return Err(JobError::AlreadyComplete {
            output: output.display().into(),
        });
    }
    Ok(())
}

/// Removes what an earlier run left at the output location (and nothing else there).
async fn clear_earlier_run(output: &Location) -> Result<(), JobError> {
    for name in JOB_OUTPUTS {
        let removed = output.delete_all(name).await?;
        if removed > 0 {
            info!(removed, what = name, "cleared an earlier run's output");
        }
    }
    Ok(())
}

/// Scores every shard, `concurrency` at a time, logging progress; results in shard order.
async fn score_all(
    plan: &Arc<crate::plan::Plan>,
    context: &Arc<ShardContext>,
    concurrency: usize,
) -> Result<Vec<ShardResult>, JobError> {
    let total_rows = plan.input_rows;
    let total_shards = plan.shards.len();
    let tasks = plan.shards.iter().cloned().map(|shard| {
        let plan = Arc::clone(plan);
        let context = Arc::clone(context);
        let span = info_span!("shard", index = shard.index);
        tokio::spawn(
            async move {
                let file = &plan.files[shard.file_index as usize].file;
                score_shard(&context, file, &shard)
                    .await
                    .map_err(|source| JobError::Shard {
                        index: shard.index,
                        file: file.display.clone(),
                        row_groups: shard.row_groups.clone(),
                        source,
                    })
            }
            .instrument(span),
        )
    });
    let mut stream = futures::stream::iter(tasks).buffer_unordered(concurrency);
    let mut results = Vec::with_capacity(total_shards);
    let started = Instant::now();
    let mut last_report = Instant::now();
    let mut rows_done = 0u64;
    while let Some(joined) = stream.next().await {
        let result = joined??;
        rows_done += result.scored + result.rejected;
        results.push(result);
        if last_report.elapsed() >= Duration::from_secs(2) || results.len() == total_shards {
            last_report = Instant::now();
            let rate = rows_done as f64 / started.elapsed().as_secs_f64().max(1e-9);
            let eta = (total_rows - rows_done) as f64 / rate.max(1e-9);
            info!(
                "scored {}/{} shards, {}/{} rows ({:.0} rows/s, ETA {:.0}s)",
                results.len(),
                total_shards,
                rows_done,
                total_rows,
                rate,
                eta
            );
        }
    }
    results.sort_by_key(|r| r.index);
    Ok(results)
}

fn top_reasons(reasons: BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    let mut by_count: Vec<_> = reasons.into_iter().collect();
    by_count.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    by_count.into_iter().take(SUMMARY_REASONS).collect()
}

fn log_memory(phase: &str) {
    debug!(
        rss_mib = apscore_core::memory::rss_bytes().unwrap_or(0) >> 20,
        peak_mib = apscore_core::memory::peak_rss_bytes().unwrap_or(0) >> 20,
        "memory after: {phase}"
    );
}
