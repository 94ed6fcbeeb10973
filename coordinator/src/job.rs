//! A whole ranking job (`apscore rank`), from input files to every output of SPEC §3.
//!
//! ```text
//!   resolve inputs ─▶ plan shards ─▶ score shards (concurrently) ─▶ rejected_rows.parquet
//!        ─▶ merge shard statistics ─▶ finish (rank, ranking.parquet, selected/, report,
//!           summary.json last)
//! ```
//!
//! Today the shards are scored in this process by the worker library; the distributed job
//! hands the same shards to worker processes over gRPC and keeps every other step. See
//! `docs/architecture.md`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use apscore_core::layout::LayoutOptions;
use apscore_core::shard::{SCORES_DIR, ShardResult, WORK_DIR};
use apscore_core::stats::MarginStats;
use apscore_core::storage::{Location, StorageError, resolve_inputs};
use apscore_worker::shard_scoring::ModelScoring;
use apscore_worker::{ShardContext, ShardError, score_shard};
use futures::StreamExt;
use tracing::{Instrument, info, info_span, warn};

use crate::finish::{FinishParams, Scored, ScoredPart, finish, log_memory};
use crate::outputs::{self, OutputError, RANKING_FILE, REJECTED_FILE, SELECTED_DIR};
use crate::plan::{PlanError, plan_job};
use crate::ranking::RankingParams;
use crate::report::{PLOTS_DIR, REPORT_FILE};
use crate::summary::{Counts, KeyFacts, SUMMARY_FILE, ScoringFigures, Summary, Timings};

/// Outputs a job may have left at its output location; cleared before a new run.
pub(crate) const JOB_OUTPUTS: [&str; 8] = [
    SCORES_DIR,
    SELECTED_DIR,
    WORK_DIR,
    RANKING_FILE,
    REJECTED_FILE,
    REPORT_FILE,
    PLOTS_DIR,
    SUMMARY_FILE,
];

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
    /// The model that computes log-probs; `None` when the input carries them (`rank`).
    pub model: Option<JobModel>,
}

/// A model scoring the job's pairs, and how it is described in the summary.
#[derive(Debug, Clone)]
pub struct JobModel {
    pub scoring: ModelScoring,
    /// The model's path or URL and content hash.
    pub identity: String,
    /// The tokenization profile's name.
    pub profile: String,
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
    #[error("{from} holds no finished apscore job: {reason}")]
    NotAJob { from: String, reason: String },
    #[error(
        "the job at {from} has no dpo_margin (it ran without --reference-model): it cannot be \
         ranked with --implicit dpo"
    )]
    NoDpoMargin { from: String },
    #[error("the new outputs must go to another location than the job they come from ({location})")]
    SameLocation { location: String },
    #[error("a background task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// Runs a ranking job: scores every pair with the model (`run`) or from the input's
/// precomputed log-probs (`rank`), then ranks and writes the outputs; returns the summary.
pub async fn run_rank_job(spec: RankJobSpec) -> Result<Summary, JobError> {
    let started = Instant::now();
    let output = Location::parse(&spec.output)?;
    let span = info_span!("job", output = %output.display());
    async move {
        refuse_finished_job(&output, spec.overwrite).await?;
        let files = resolve_inputs(&spec.inputs).await?;
        let mut layout_options = spec.layout.clone();
        layout_options.require_logps = spec.model.is_none();
        layout_options.require_text = spec.model.is_some();
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

        let facts = KeyFacts {
            apscore_version: apscore_core::VERSION.into(),
            command: if spec.model.is_some() { "run" } else { "rank" }.into(),
            inputs: plan.sources(),
            input_columns: plan.input_columns.clone(),
            output: output.display().into(),
            ranking: spec.ranking,
            implicit_margin: spec.ranking.implicit.column().into(),
            model: match &spec.model {
                Some(m) => m.identity.clone(),
                None => "none: log-probs precomputed in the input columns".into(),
            },
            tokenization_profile: spec.model.as_ref().map(|m| m.profile.clone()),
            layout: plan.layout.clone(),
            counts: Counts {
                input_files: plan.files.len() as u64,
                shards: plan.shards.len() as u64,
                input_rows: plan.input_rows,
                ..Counts::default()
            },
            statistics: BTreeMap::new(),
        };

        // Score every shard, then gather their rejected rows.
        let score_started = Instant::now();
        let context = Arc::new(ShardContext {
            layout: plan.layout.clone(),
            output: output.clone(),
            key_values: facts.key_values(),
            model: spec.model.as_ref().map(|m| m.scoring.clone()),
        });
        let results = score_all(&plan, &context, spec.concurrency.max(1)).await?;
        outputs::write_rejected(&output, &plan.shards, &context.key_values).await?;
        let score_time = score_started.elapsed();
        log_memory("shards scored");

        let mut stats = MarginStats::default();
        for r in &results {
            stats.merge(&r.stats);
        }
        let scored = Scored {
            sources: plan.sources(),
            parts: plan
                .shards
                .iter()
                .zip(&results)
                .map(|(shard, r)| ScoredPart {
                    path: shard.scores_part(),
                    rows: r.scored,
                })
                .collect(),
            input_columns: plan.input_columns.clone(),
            stats: Some(stats),
            bytes_per_row: plan
                .files
                .iter()
                .map(|f| f.bytes_per_row)
                .fold(0.0, f64::max),
        };
        let scoring = context.model.as_ref().map(|m| {
            let p = &m.scorer.progress;
            let tokens = p.tokens.load(std::sync::atomic::Ordering::Relaxed);
            let padded_tokens = p.padded_tokens.load(std::sync::atomic::Ordering::Relaxed);
            let seconds = score_time.as_secs_f64().max(1e-9);
            ScoringFigures {
                tokens,
                padded_tokens,
                padding_waste: 1.0 - tokens as f64 / padded_tokens.max(1) as f64,
                tokens_per_second: tokens as f64 / seconds,
                pairs_per_second: p.pairs.load(std::sync::atomic::Ordering::Relaxed) as f64
                    / seconds,
            }
        });
        let params = FinishParams {
            ranking: spec.ranking,
            sort_memory_bytes: spec.sort_memory_bytes,
            scoring,
        };
        let timings = Timings {
            plan: plan_time.as_secs_f64(),
            score: score_time.as_secs_f64(),
            ..Timings::default()
        };
        finish(&output, scored, facts, params, timings, started).await
    }
    .instrument(span)
    .await
}

/// Refuses to touch a finished job's outputs unless asked to.
pub(crate) async fn refuse_finished_job(
    output: &Location,
    overwrite: bool,
) -> Result<(), JobError> {
    if output.get_if_exists(SUMMARY_FILE).await?.is_some() && !overwrite {
        return Err(JobError::AlreadyComplete {
            output: output.display().into(),
        });
    }
    Ok(())
}

/// Removes what an earlier run left at the output location (and nothing else there).
pub(crate) async fn clear_earlier_run(output: &Location) -> Result<(), JobError> {
    for name in JOB_OUTPUTS {
        let removed = output.delete_all(name).await?;
        if removed > 0 {
            info!(removed, what = name, "cleared an earlier run's output");
        }
    }
    Ok(())
}

/// Scores every shard, `concurrency` at a time, showing progress; results in shard order.
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
    let mut progress = Progress::new(total_rows, context.model.as_ref());
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    let mut rows_done = 0u64;
    loop {
        tokio::select! {
            joined = stream.next() => {
                let Some(joined) = joined else { break };
                let result = joined??;
                rows_done += result.scored + result.rejected;
                results.push(result);
                progress.update(rows_done, results.len(), total_shards, true);
            }
            _ = ticker.tick() => progress.update(rows_done, results.len(), total_shards, false),
        }
    }
    progress.finish();
    results.sort_by_key(|r| r.index);
    Ok(results)
}

/// Progress of the scoring phase: a bar (pairs, tokens/s, ETA) on a terminal, a log line
/// every few seconds otherwise. Pairs count from the model's own counter while it runs, so
/// the figure moves within a shard.
struct Progress {
    total_rows: u64,
    model: Option<Arc<apscore_worker::scorer::ScorerProgress>>,
    bar: Option<indicatif::ProgressBar>,
    started: Instant,
    last_log: Instant,
}

impl Progress {
    fn new(total_rows: u64, model: Option<&ModelScoring>) -> Self {
        let bar = std::io::IsTerminal::is_terminal(&std::io::stderr()).then(|| {
            let bar = indicatif::ProgressBar::new(total_rows);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{bar:30} {pos}/{len} pairs  {msg}  ETA {eta}",
                )
                .expect("a valid progress template"),
            );
            bar
        });
        Progress {
            total_rows,
            model: model.map(|m| Arc::clone(&m.scorer.progress)),
            bar,
            started: Instant::now(),
            last_log: Instant::now(),
        }
    }

    fn update(&mut self, rows_done: u64, shards_done: usize, shards: usize, shard_finished: bool) {
        let elapsed = self.started.elapsed().as_secs_f64().max(1e-9);
        let (pairs, tokens) = match &self.model {
            Some(m) => (
                m.pairs
                    .load(std::sync::atomic::Ordering::Relaxed)
                    .max(rows_done),
                Some(m.tokens.load(std::sync::atomic::Ordering::Relaxed)),
            ),
            None => (rows_done, None),
        };
        let pairs = pairs.min(self.total_rows);
        let rate = pairs as f64 / elapsed;
        let tokens_text = tokens
            .map(|t| format!(", {:.0} tokens/s", t as f64 / elapsed))
            .unwrap_or_default();
        if let Some(bar) = &self.bar {
            bar.set_position(pairs);
            bar.set_message(format!("{rate:.1} pairs/s{tokens_text}"));
            return;
        }
        let every = if self.model.is_some() { 10 } else { 2 };
        let due = self.last_log.elapsed() >= Duration::from_secs(every);
        if due && (shard_finished || self.model.is_some())
            || shards_done == shards && shard_finished
        {
            self.last_log = Instant::now();
            let eta = (self.total_rows - pairs) as f64 / rate.max(1e-9);
            info!(
                "scored {shards_done}/{shards} shards, {pairs}/{} rows ({rate:.0} rows/s{tokens_text}, ETA {eta:.0}s)",
                self.total_rows
            );
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
