//! Scoring one shard: read its rows, score every pair or give the reason it cannot be scored,
//! and write the shard result.
//!
//! The result is two files in the attempt's own folder under the job's output location
//! (`_work/attempts/shard-NNNNN/lease-…/`, named by the lease, so no two attempts ever write the
//! same file): `scores.parquet` (the scored rows, original columns untouched, score columns
//! appended, in input order) and `rejected.parquet` (row ids and reasons). Both appear only once
//! complete. The partial statistics of the shard's margins go back to the coordinator in the
//! [`ShardResult`]; the coordinator moves the files of the attempt it accepts to their final
//! places (`scores/part-NNNNN.parquet`, `_work/rejected/shard-NNNNN.parquet`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use apscore_core::columns;
use apscore_core::layout::DatasetLayout;
use apscore_core::outputs::{ScorePartColumns, rejected_schema, scores_schema};
use apscore_core::pairs::{PairColumns, PrecomputedColumns, ResponseLogps, RowProblem};
use apscore_core::parquet_io::{self, ParquetIoError, ParquetSink};
use apscore_core::shard::{Shard, ShardResult};
use apscore_core::stats::MarginStats;
use apscore_core::storage::{InputFile, Location};
use arrow::array::{
    ArrayRef, BooleanBuilder, Float64Array, Float64Builder, Int64Array, Int64Builder, RecordBatch,
    StringArray,
};
use arrow::compute::filter_record_batch;
use arrow::error::ArrowError;
use futures::TryStreamExt;
use tracing::debug;

use crate::model::ResponseScore;
use crate::reward_tokenization::{RewardPair, RewardTokenizer};
use crate::scorer::{Scorer, ScorerGone};
use crate::tokenization::{PairTokenizer, TokenizedPair};

/// A shard could not be scored (the whole shard: row problems are not errors).
#[derive(Debug, thiserror::Error)]
pub enum ShardError {
    #[error(transparent)]
    Parquet(#[from] ParquetIoError),
    #[error("{file}: {source}")]
    Arrow {
        file: String,
        #[source]
        source: ArrowError,
    },
    #[error("{file}: the input has no log-prob columns and no model was given to compute them")]
    NoLogProbs { file: String },
    #[error(transparent)]
    Scorer(#[from] ScorerGone),
    #[error("tokenizing failed: {0}")]
    Tokenize(#[from] tokio::task::JoinError),
    #[error("{0}")]
    BadShard(String),
    #[error("cannot open the input: {0}")]
    Open(String),
}

impl ShardError {
    /// Whether another try could succeed: reading and writing storage can fail for a while
    /// (and a corrupt file fails every try, until the attempts run out); a shard that does
    /// not fit the job cannot.
    pub fn is_retryable(&self) -> bool {
        !matches!(
            self,
            ShardError::NoLogProbs { .. } | ShardError::BadShard(_)
        )
    }
}

/// The model that computes log-probs, with the tokenizer that prepares its input.
#[derive(Clone)]
pub struct ModelScoring {
    pub tokenizer: Arc<PairTokenizer>,
    pub scorer: Scorer,
    /// The scorer also runs a reference model: `scores/` gets the DPO columns.
    pub with_reference: bool,
    /// The scorer also runs a reward model, which reads conversations through this: `scores/`
    /// gets its scores, and its margin is the explicit one.
    pub reward_tokenizer: Option<Arc<RewardTokenizer>>,
}

impl std::fmt::Debug for ModelScoring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ModelScoring")
    }
}

/// What every shard of a job shares.
#[derive(Debug, Clone)]
pub struct ShardContext {
    /// Which columns hold what.
    pub layout: DatasetLayout,
    /// The job's output location; shard results go under it.
    pub output: Location,
    /// Facts about the job written into each result file's key-value metadata.
    pub key_values: Vec<(String, String)>,
    /// The model; `None` when the input carries precomputed log-probs.
    pub model: Option<ModelScoring>,
    /// Whether the scored rows carry every input column (else the row keys and the
    /// computed columns only, and only the columns the layout needs are read).
    pub scores_with_input: bool,
}

/// How far a shard's scoring has come, for heartbeats.
#[derive(Debug, Default)]
pub struct ShardProgress {
    /// Rows scored or rejected so far.
    pub rows: AtomicU64,
    /// Response tokens scored so far.
    pub tokens: AtomicU64,
}

/// Scores `shard` of `file` and writes its result; see the module documentation.
pub async fn score_shard(
    ctx: &ShardContext,
    file: &InputFile,
    shard: &Shard,
    lease: u64,
    progress: &ShardProgress,
) -> Result<ShardResult, ShardError> {
    let arrow_err = |source| ShardError::Arrow {
        file: file.display.clone(),
        source,
    };
    let footer = parquet_io::read_footer(file).await?;
    // Read what the layout needs, and with a full copy every column.
    let needed = ctx.layout.needed_columns();
    let needed: Vec<&str> = needed.iter().map(String::as_str).collect();
    let projection = (!ctx.scores_with_input).then_some(needed.as_slice());
    let input_schema = match projection {
        Some(names) => Arc::new(
            footer
                .schema()
                .project(
                    &names
                        .iter()
                        .filter_map(|n| footer.schema().index_of(n).ok())
                        .collect::<Vec<_>>(),
                )
                .map_err(arrow_err)?,
        ),
        None => Arc::clone(footer.schema()),
    };
    let passthrough: Vec<usize> = input_schema
        .fields()
        .iter()
        .enumerate()
        .filter(|(_, f)| ctx.scores_with_input && !columns::is_score_column(f.name()))
        .map(|(i, _)| i)
        .collect();
    let reward_model = ctx
        .model
        .as_ref()
        .is_some_and(|m| m.reward_tokenizer.is_some());
    let extra = ScorePartColumns {
        // Log-probs the input carries stay there, unless the part copies the input.
        logps: ctx.model.is_some() || ctx.scores_with_input,
        reference: ctx.model.as_ref().is_some_and(|m| m.with_reference),
        reward_model,
        data_margin: reward_model && ctx.layout.explicit.is_some(),
    };
    let output_schema = scores_schema(&input_schema, &passthrough, extra);

    let scores_path = shard.attempt_scores_part(lease);
    let mut sink = ParquetSink::create(
        ctx.output.store(),
        ctx.output.path_of(&scores_path),
        ctx.output.display_of(&ctx.output.path_of(&scores_path)),
        Arc::clone(&output_schema),
        &ctx.key_values,
    )?;

    let mut rejected = RejectedRows::default();
    let mut margins = Margins::default();
    let mut tokens = TokenCounts::default();
    let mut next_source_row = shard.first_source_row;
    // Without a model, the messages' contents are only checked for nulls: where the file's
    // statistics prove there is none in this shard, they are not read (nor decompressed) at all.
    let left_out = match (&ctx.model, projection) {
        (None, Some(_)) => {
            let contents: Vec<usize> = ctx
                .layout
                .message_list_columns()
                .into_iter()
                .flat_map(|name| footer.leaves_named(name, "content"))
                .collect();
            match footer.has_no_nulls(&contents, shard.row_groups.clone()) {
                true => contents,
                false => Vec::new(),
            }
        }
        _ => Vec::new(),
    };
    let mut stream = parquet_io::read_rows_without(
        file,
        &footer,
        shard.row_groups.clone(),
        projection,
        &left_out,
    )
    .await?;
    while let Some(batch) = stream.try_next().await? {
        let rows = batch.num_rows();
        let first_source_row = next_source_row;
        next_source_row += rows as u64;
        let first_row_id = shard.first_row_id + (first_source_row - shard.first_source_row);

        let pairs = PairColumns::new(&batch, &ctx.layout).map_err(arrow_err)?;
        let precomputed = match ctx.model {
            None => pairs.precomputed_columns(),
            Some(_) => None,
        };
        // The rows kept (all of them when scored a column at a time) and their scores.
        let (kept, scored) = if let Some(columns) = precomputed {
            let scored = ScoreColumns::precomputed(columns, first_row_id, first_source_row, extra);
            margins.extend(&scored);
            (batch, scored)
        } else {
            let rows_scored = match &ctx.model {
                Some(model) => {
                    let (scores, batch_tokens) = score_rows_with_model(model, pairs, rows).await?;
                    tokens.add(batch_tokens);
                    scores
                }
                None => score_rows_precomputed(&pairs, rows, &file.display)?,
            };
            let mut keep = BooleanBuilder::with_capacity(rows);
            let mut scored = ScoreColumns::with_capacity(rows, extra);
            for (row, outcome) in rows_scored.into_iter().enumerate() {
                let row_id = first_row_id + row as u64;
                let source_row = first_source_row + row as u64;
                match outcome {
                    Ok(s) => {
                        keep.append_value(true);
                        scored.push(row_id, source_row, &s);
                        margins.push(&scored);
                    }
                    Err(problem) => {
                        keep.append_value(false);
                        rejected.push(row_id, source_row, problem.0);
                    }
                }
            }
            let kept = filter_record_batch(&batch, &keep.finish()).map_err(arrow_err)?;
            (kept, scored)
        };
        progress.rows.fetch_add(rows as u64, Ordering::Relaxed);
        progress.tokens.store(tokens.policy, Ordering::Relaxed);
        if scored.len() == 0 {
            continue;
        }
        let mut arrays: Vec<ArrayRef> = passthrough
            .iter()
            .map(|&i| Arc::clone(kept.column(i)))
            .collect();
        arrays.extend(scored.finish(&file.display));
        let out = RecordBatch::try_new(Arc::clone(&output_schema), arrays).map_err(arrow_err)?;
        sink.write(&out).await?;
    }
    let scored_rows = sink.finish().await?;
    let rejected_rows = rejected
        .write(ctx, &shard.attempt_rejected_part(lease), &file.display)
        .await?;
    debug!(
        shard = shard.index,
        scored_rows, rejected_rows, "shard scored"
    );
    Ok(ShardResult {
        index: shard.index,
        scored: scored_rows,
        rejected: rejected_rows,
        stats: margins.stats(),
        tokens: tokens.policy,
        padded_tokens: tokens.padded,
        reward_tokens: tokens.reward,
        attempt: None,
        reused: false,
    })
}

/// Tokens through the models: the policy's without and with batch padding, the reward
/// model's.
#[derive(Debug, Default, Clone, Copy)]
struct TokenCounts {
    policy: u64,
    padded: u64,
    reward: u64,
}

impl TokenCounts {
    fn add(&mut self, other: TokenCounts) {
        self.policy += other.policy;
        self.padded += other.padded;
        self.reward += other.reward;
    }
}

/// What a scored row contributes to the score columns.
struct RowScores {
    /// The explicit margin the ranking uses: the reward model's, else the data's.
    rm_margin: f64,
    /// The reward model's scores of chosen and rejected, and the data's own margin beside
    /// them (`None` where it has none, or none usable), when the job has a reward model.
    reward: Option<((f64, f64), Option<f64>)>,
    chosen: ResponseLogps,
    rejected: ResponseLogps,
    /// `None` when unknown (precomputed log-probs).
    truncated: Option<bool>,
    /// Log-prob sums of chosen and rejected under the reference model.
    reference: Option<(f64, f64)>,
}

/// Rows scored from the input's precomputed log-prob columns, after checking each row's
/// conversation (when the data has text).
fn score_rows_precomputed(
    pairs: &PairColumns,
    rows: usize,
    file: &str,
) -> Result<RowOutcomes, ShardError> {
    let mut out = Vec::with_capacity(rows);
    for row in 0..rows {
        let outcome = (|| {
            if let Some(conversation) = pairs.conversation(row) {
                conversation?;
            }
            let rm_margin = pairs
                .rm_margin(row)?
                .ok_or_else(|| RowProblem("the data has no explicit margin".into()))?;
            let Some(logps) = pairs.logps(row) else {
                return Ok(None);
            };
            let (chosen, rejected) = logps?;
            Ok(Some(RowScores {
                rm_margin,
                reward: None,
                chosen,
                rejected,
                truncated: None,
                reference: None,
            }))
        })();
        match outcome {
            Ok(Some(s)) => out.push(Ok(s)),
            Ok(None) => {
                return Err(ShardError::NoLogProbs {
                    file: file.to_string(),
                });
            }
            Err(problem) => out.push(Err(problem)),
        }
    }
    Ok(out)
}

/// The outcome of each row of a batch.
type RowOutcomes = Vec<Result<RowScores, RowProblem>>;

/// A row ready for the scorer: the data's margin, and the pair as the policy and the reward
/// model read it.
struct PreparedRow {
    data_margin: Option<f64>,
    policy: TokenizedPair,
    reward: Option<RewardPair>,
}

/// Rows scored by the model: each row's conversation is tokenized (off the async threads),
/// the pairs that tokenized go to the scorer in one request. Also returns the tokens through
/// the models.
///
/// Without a reward model the data's margin is the explicit margin, and a row whose margin is
/// unusable is rejected; with one, the reward model's margin is, and the data's is kept beside
/// it where usable.
async fn score_rows_with_model(
    model: &ModelScoring,
    pairs: PairColumns,
    rows: usize,
) -> Result<(RowOutcomes, TokenCounts), ShardError> {
    let tokenizer = Arc::clone(&model.tokenizer);
    let reward_tokenizer = model.reward_tokenizer.clone();
    let prepared = tokio::task::spawn_blocking(move || {
        (0..rows)
            .map(|row| {
                let conversation = pairs.conversation(row).unwrap_or_else(|| {
                    Err(RowProblem("the row has no prompt or responses".into()))
                })?;
                let data_margin = match &reward_tokenizer {
                    None => Some(
                        pairs
                            .rm_margin(row)?
                            .ok_or_else(|| RowProblem("the data has no explicit margin".into()))?,
                    ),
                    Some(_) => pairs.rm_margin(row).ok().flatten(),
                };
                let policy = tokenizer.tokenize(&conversation)?;
                let reward = reward_tokenizer
                    .as_ref()
                    .map(|t| t.tokenize(&conversation))
                    .transpose()?;
                Ok(PreparedRow {
                    data_margin,
                    policy,
                    reward,
                })
            })
            .collect::<Vec<Result<PreparedRow, RowProblem>>>()
    })
    .await?;
    let (to_score, rewards): (Vec<TokenizedPair>, Vec<Option<RewardPair>>) = prepared
        .iter()
        .filter_map(|p| p.as_ref().ok())
        .map(|p| (p.policy.clone(), p.reward.clone()))
        .unzip();
    let rewards = rewards.into_iter().flatten().collect();
    let scored = model.scorer.score(to_score, rewards).await?;
    let mut scores = scored.pairs.into_iter();
    let outcomes = prepared
        .into_iter()
        .map(|p| {
            let p = p?;
            let s = scores.next().expect("one score per tokenized pair");
            let logps = |r: ResponseScore| ResponseLogps {
                sum: r.sum,
                mean: r.sum / r.tokens as f64,
                tokens: Some(r.tokens),
            };
            let (rm_margin, reward) = match s.reward {
                Some((chosen, rejected)) if !(chosen - rejected).is_finite() => {
                    return Err(RowProblem(format!(
                        "the reward model's scores are not finite (chosen {chosen}, rejected \
                         {rejected})"
                    )));
                }
                Some((chosen, rejected)) => {
                    (chosen - rejected, Some(((chosen, rejected), p.data_margin)))
                }
                None => (p.data_margin.expect("checked while preparing"), None),
            };
            Ok(RowScores {
                rm_margin,
                reward,
                chosen: logps(s.chosen),
                rejected: logps(s.rejected),
                truncated: Some(p.policy.truncated),
                reference: s.reference.map(|(c, r)| (c.sum, r.sum)),
            })
        })
        .collect();
    let tokens = TokenCounts {
        policy: scored.tokens,
        padded: scored.padded_tokens,
        reward: scored.reward_tokens,
    };
    Ok((outcomes, tokens))
}

/// Score columns of the scored rows of one batch, built row by row.
struct ScoreColumns {
    chosen: Vec<f64>,
    rejected: Vec<f64>,
    chosen_norm: Vec<f64>,
    rejected_norm: Vec<f64>,
    chosen_tokens: Int64Builder,
    rejected_tokens: Int64Builder,
    rm_margin: Vec<f64>,
    truncated: BooleanBuilder,
    chosen_ref: Vec<f64>,
    rejected_ref: Vec<f64>,
    rm_chosen: Vec<f64>,
    rm_rejected: Vec<f64>,
    data_margin: Float64Builder,
    row_id: Vec<i64>,
    source_row: Vec<i64>,
    extra: ScorePartColumns,
}

impl ScoreColumns {
    fn with_capacity(n: usize, extra: ScorePartColumns) -> Self {
        ScoreColumns {
            chosen: Vec::with_capacity(n),
            rejected: Vec::with_capacity(n),
            chosen_norm: Vec::with_capacity(n),
            rejected_norm: Vec::with_capacity(n),
            chosen_tokens: Int64Builder::with_capacity(n),
            rejected_tokens: Int64Builder::with_capacity(n),
            rm_margin: Vec::with_capacity(n),
            truncated: BooleanBuilder::with_capacity(n),
            chosen_ref: Vec::new(),
            rejected_ref: Vec::new(),
            rm_chosen: Vec::new(),
            rm_rejected: Vec::new(),
            data_margin: Float64Builder::new(),
            row_id: Vec::with_capacity(n),
            source_row: Vec::with_capacity(n),
            extra,
        }
    }

    fn len(&self) -> usize {
        self.row_id.len()
    }

    /// The score columns of a batch whose rows are all usable, from its columns: the values
    /// [`ScoreColumns::push`] would hold, row by row.
    fn precomputed(
        columns: PrecomputedColumns,
        first_row_id: u64,
        first_source_row: u64,
        extra: ScorePartColumns,
    ) -> Self {
        let n = columns.rm_margin.len();
        let [chosen, rejected, chosen_norm, rejected_norm] = columns.logps;
        let mut scored = ScoreColumns::with_capacity(0, extra);
        scored.chosen = chosen.to_vec();
        scored.rejected = rejected.to_vec();
        scored.chosen_norm = chosen_norm.to_vec();
        scored.rejected_norm = rejected_norm.to_vec();
        scored.rm_margin = columns.rm_margin;
        let counts = |v: &[f64]| -> Int64Builder {
            let mut builder = Int64Builder::with_capacity(n);
            builder.extend(v.iter().map(|&t| Some(t as u64 as i64)));
            builder
        };
        match columns.tokens {
            Some([c, r]) => {
                scored.chosen_tokens = counts(c);
                scored.rejected_tokens = counts(r);
            }
            None => {
                scored.chosen_tokens.append_nulls(n);
                scored.rejected_tokens.append_nulls(n);
            }
        }
        scored.truncated.append_nulls(n);
        scored.row_id = (first_row_id..first_row_id + n as u64)
            .map(|id| id as i64)
            .collect();
        scored.source_row = (first_source_row..first_source_row + n as u64)
            .map(|row| row as i64)
            .collect();
        scored
    }

    fn push(&mut self, row_id: u64, source_row: u64, scores: &RowScores) {
        let (c, r) = (scores.chosen, scores.rejected);
        self.chosen.push(c.sum);
        self.rejected.push(r.sum);
        self.chosen_norm.push(c.mean);
        self.rejected_norm.push(r.mean);
        self.chosen_tokens.append_option(c.tokens.map(|t| t as i64));
        self.rejected_tokens
            .append_option(r.tokens.map(|t| t as i64));
        self.rm_margin.push(scores.rm_margin);
        self.truncated.append_option(scores.truncated);
        if let Some((c_ref, r_ref)) = scores.reference {
            self.chosen_ref.push(c_ref);
            self.rejected_ref.push(r_ref);
        }
        if let Some(((c_rm, r_rm), data_margin)) = scores.reward {
            self.rm_chosen.push(c_rm);
            self.rm_rejected.push(r_rm);
            self.data_margin.append_option(data_margin);
        }
        self.row_id.push(row_id as i64);
        self.source_row.push(source_row as i64);
    }

    fn finish(mut self, source_file: &str) -> Vec<ArrayRef> {
        let n = self.len();
        let diff =
            |a: &[f64], b: &[f64]| -> Vec<f64> { a.iter().zip(b).map(|(x, y)| x - y).collect() };
        let abs = |v: &[f64]| -> Vec<f64> { v.iter().map(|x| x.abs()).collect() };
        let logp_margin = diff(&self.chosen, &self.rejected);
        let logp_margin_norm = diff(&self.chosen_norm, &self.rejected_norm);
        let logp_margin_abs = abs(&logp_margin);
        let logp_margin_norm_abs = abs(&logp_margin_norm);
        let f64s = |v: Vec<f64>| -> ArrayRef { Arc::new(Float64Array::from(v)) };
        let dpo = self.dpo_margins();
        let mut arrays = Vec::with_capacity(24);
        if self.extra.logps {
            arrays.extend([
                f64s(self.chosen),
                f64s(self.rejected),
                f64s(self.chosen_norm),
                f64s(self.rejected_norm),
            ]);
        }
        arrays.extend([
            Arc::new(self.chosen_tokens.finish()) as ArrayRef,
            Arc::new(self.rejected_tokens.finish()),
            f64s(logp_margin),
            f64s(logp_margin_norm),
            f64s(logp_margin_abs),
            f64s(logp_margin_norm_abs),
            f64s(self.rm_margin),
            Arc::new(self.truncated.finish()),
            Arc::new(Int64Array::from(self.row_id)),
            Arc::new(StringArray::from_iter_values(std::iter::repeat_n(
                source_file,
                n,
            ))),
            Arc::new(Int64Array::from(self.source_row)),
        ]);
        if self.extra.reference {
            let dpo = dpo.unwrap_or_default();
            arrays.extend([f64s(self.chosen_ref), f64s(self.rejected_ref), f64s(dpo)]);
        }
        if self.extra.reward_model {
            arrays.extend([f64s(self.rm_chosen), f64s(self.rm_rejected)]);
            if self.extra.data_margin {
                arrays.push(Arc::new(self.data_margin.finish()));
            }
        }
        arrays
    }
}

impl ScoreColumns {
    /// `(S_c − S_c_ref) − (S_r − S_r_ref)` per row, when there is a reference model.
    fn dpo_margins(&self) -> Option<Vec<f64>> {
        if self.chosen_ref.len() != self.chosen.len() || self.chosen.is_empty() {
            return None;
        }
        Some(
            (0..self.chosen.len())
                .map(|i| {
                    (self.chosen[i] - self.chosen_ref[i])
                        - (self.rejected[i] - self.rejected_ref[i])
                })
                .collect(),
        )
    }
}

/// The margins of the shard's scored rows, for its partial statistics.
#[derive(Default)]
struct Margins {
    rm_margin: Vec<f64>,
    logp_margin: Vec<f64>,
    logp_margin_norm: Vec<f64>,
    dpo_margin: Vec<f64>,
}

impl Margins {
    fn push(&mut self, last: &ScoreColumns) {
        let i = last.len() - 1;
        self.rm_margin.push(last.rm_margin[i]);
        self.logp_margin.push(last.chosen[i] - last.rejected[i]);
        self.logp_margin_norm
            .push(last.chosen_norm[i] - last.rejected_norm[i]);
        if let (Some(c_ref), Some(r_ref)) = (last.chosen_ref.get(i), last.rejected_ref.get(i)) {
            self.dpo_margin
                .push((last.chosen[i] - c_ref) - (last.rejected[i] - r_ref));
        }
    }

    /// Every row of `scored` (precomputed: no reference model).
    fn extend(&mut self, scored: &ScoreColumns) {
        let diff = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x - y).collect::<Vec<_>>();
        self.rm_margin.extend_from_slice(&scored.rm_margin);
        self.logp_margin
            .extend(diff(&scored.chosen, &scored.rejected));
        self.logp_margin_norm
            .extend(diff(&scored.chosen_norm, &scored.rejected_norm));
    }

    fn stats(&self) -> MarginStats {
        let stats =
            MarginStats::from_columns(&self.rm_margin, &self.logp_margin, &self.logp_margin_norm);
        if self.dpo_margin.is_empty() {
            stats
        } else {
            stats.with_dpo(&self.dpo_margin)
        }
    }
}

/// Rows of the shard that could not be scored.
#[derive(Default)]
struct RejectedRows {
    row_id: Vec<i64>,
    source_row: Vec<i64>,
    reason: Vec<String>,
}

impl RejectedRows {
    fn push(&mut self, row_id: u64, source_row: u64, reason: String) {
        self.row_id.push(row_id as i64);
        self.source_row.push(source_row as i64);
        self.reason.push(reason);
    }

    /// Writes the shard's rejected rows (an empty file when there are none, so the
    /// coordinator can tell "none" from "not written").
    async fn write(
        self,
        ctx: &ShardContext,
        relative: &str,
        source_file: &str,
    ) -> Result<u64, ShardError> {
        let n = self.row_id.len();
        let path = ctx.output.path_of(relative);
        let display = ctx.output.display_of(&path);
        let batch = RecordBatch::try_new(
            rejected_schema(),
            vec![
                Arc::new(Int64Array::from(self.row_id)),
                Arc::new(StringArray::from_iter_values(std::iter::repeat_n(
                    source_file,
                    n,
                ))),
                Arc::new(Int64Array::from(self.source_row)),
                Arc::new(StringArray::from(self.reason)),
            ],
        )
        .map_err(|source| ShardError::Arrow {
            file: display.clone(),
            source,
        })?;
        let mut sink = ParquetSink::create(
            ctx.output.store(),
            path,
            display,
            batch.schema(),
            &ctx.key_values,
        )?;
        sink.write(&batch).await?;
        sink.finish().await?;
        Ok(n as u64)
    }
}
