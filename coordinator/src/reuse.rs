//! Incremental runs: an earlier finished job's scores reused for the input files that did not
//! change, so that a nightly run over a growing bucket scores only what arrived.
//!
//! A file's scores are reused when the earlier job read the very same file (path, size and
//! version: ETag or modification time) and scored it the same way: the same dataset layout and
//! input columns, the same shard size (so the file's shards are the same row groups), the same
//! model settings (source, reference, dtype, tokenization profile, lengths, truncation) and the
//! same model identity (the weights' and tokenizer's hash, which the first worker reports).
//!
//! A reused shard is copied, not scored: the coordinator reads the earlier part, gives its rows
//! their `row_id` in the new job (files before it may have come or gone) and writes the new
//! part, with the file's rejected rows. Its statistics are derived from the copied margins,
//! exactly as a worker derives them, so the ranking equals a fresh run's.

use std::collections::BTreeMap;
use std::sync::Arc;

use apscore_core::columns;
use apscore_core::job_definition::ModelJob;
use apscore_core::outputs::{REJECTED_FILE, SCORES_DIR, SUMMARY_FILE, rejected_schema};
use apscore_core::parquet_io::{ParquetSink, read_whole};
use apscore_core::shard::{Shard, ShardResult};
use apscore_core::stats::MarginStats;
use apscore_core::storage::Location;
use arrow::array::{ArrayRef, AsArray, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{Float64Type, Int64Type};
use futures::TryStreamExt;
use serde::{Deserialize, Serialize};
use tracing::info;

use crate::error::{JobError, OutputError, arrow_err};
use crate::plan::Plan;
use crate::summary::Summary;

/// Where an incremental run takes the earlier job from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReuseFrom {
    /// The job's own output location (`--incremental`): the new job is built beside the
    /// finished one and replaces it only once complete.
    Output,
    /// Another output location (`--reuse-from OUT`).
    Location(String),
}

/// How a job scores its pairs, recorded in its summary so that a later job can tell whether
/// its scores still hold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScoringSetup {
    /// The model and how pairs are prepared for it (`None`: log-probs from the input).
    pub model: Option<ModelJob>,
    pub shard_rows: u64,
    /// Whether `scores/` parts carry the input's columns.
    #[serde(default)]
    pub scores_with_input: bool,
    /// Which columns the parts have, as [`SCORES_COLUMNS_VERSION`] numbers them (0: before
    /// they were numbered). Parts with other columns are not reused: a job's parts share one
    /// schema.
    #[serde(default)]
    pub scores_columns: u32,
}

/// The columns `scores/` parts have: 1 since parts leave precomputed log-probs in the input.
pub const SCORES_COLUMNS_VERSION: u32 = 1;

impl ScoringSetup {
    /// Whether scores made under `self` hold under `other` (the batch size only changes how
    /// rows are grouped for the forward pass, not what is computed).
    fn same_scores_as(&self, other: &ScoringSetup) -> bool {
        let without_batch = |m: &Option<ModelJob>| {
            m.clone().map(|m| ModelJob {
                batch_tokens: None,
                ..m
            })
        };
        self.shard_rows == other.shard_rows
            && self.scores_with_input == other.scores_with_input
            && self.scores_columns == other.scores_columns
            && without_batch(&self.model) == without_batch(&other.model)
    }
}

/// What a job reused, for its summary.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Reused {
    /// Input files whose scores were reused.
    pub files: u64,
    /// Their rows (scored and rejected).
    pub rows: u64,
    /// The job they came from.
    pub from_job: String,
}

/// The shards of a new job that an earlier job's outputs can fill.
pub struct ReusePlan {
    /// Where the earlier job's outputs are.
    pub from: Location,
    /// The earlier job's model identity: reuse holds only if this job's model is the same.
    pub model_identity: String,
    /// New shard index → the earlier job's part for the same rows.
    pub shards: BTreeMap<u32, ReusedShard>,
    pub reused: Reused,
    /// The earlier job's rejected rows of the reused files, by file: (source_row, reason).
    rejected: BTreeMap<String, Vec<(u64, String)>>,
}

/// One shard filled from an earlier job's part.
#[derive(Debug, Clone)]
pub struct ReusedShard {
    /// The earlier part, relative to [`ReusePlan::from`].
    pub part: String,
    /// The file's first `row_id` in the new job minus in the earlier one.
    pub row_id_shift: i64,
    /// The file as its rows name it (`source_file`).
    pub source_file: String,
}

/// What of `plan`'s shards the finished job at `from` can fill, if any: `None` (with the reason
/// in the log) when there is no finished job there or it scored otherwise.
pub async fn plan_reuse(
    from: &Location,
    plan: &Plan,
    setup: &ScoringSetup,
) -> Result<Option<ReusePlan>, JobError> {
    let Some(bytes) = from.get_if_exists(SUMMARY_FILE).await? else {
        info!(from = %from.display(), "no finished job to reuse scores from: every file is scored");
        return Ok(None);
    };
    let Ok(earlier) = serde_json::from_slice::<Summary>(&bytes) else {
        info!(from = %from.display(), "the earlier job's summary cannot be read: every file is scored");
        return Ok(None);
    };
    let facts = &earlier.facts;
    let why_not = match &facts.scoring_setup {
        _ if facts.command != "run" && facts.command != "rank" => {
            Some(format!("it was made by `apscore {}`", facts.command))
        }
        None => Some("it predates incremental runs".to_string()),
        Some(earlier_setup) if !earlier_setup.same_scores_as(setup) => Some(
            "it scored with another model, tokenization or shard size, or its scores/ \
                 have other columns"
                .to_string(),
        ),
        Some(_) if facts.layout != plan.layout => Some("its dataset layout differs".to_string()),
        Some(_) if facts.input_columns != plan.input_columns => {
            Some("its input columns differ".to_string())
        }
        Some(_) => None,
    };
    if let Some(reason) = why_not {
        info!(from = %from.display(), "the earlier job's scores are not reused: {reason}");
        return Ok(None);
    }

    let mut reuse = ReusePlan {
        from: from.clone(),
        model_identity: facts.model.clone(),
        shards: BTreeMap::new(),
        reused: Reused {
            from_job: facts.job_id.clone(),
            ..Reused::default()
        },
        rejected: BTreeMap::new(),
    };
    for file in &plan.files {
        let Some(old) = facts.inputs.iter().find(|old| {
            old.path == file.file.display
                && old.size == file.file.size
                && old.version.is_some()
                && old.version == file.file.version
                && old.rows == file.rows
                && old.shards == file.shards
        }) else {
            continue;
        };
        for k in 0..file.shards {
            reuse.shards.insert(
                file.first_shard + k,
                ReusedShard {
                    part: format!("{SCORES_DIR}/part-{:05}.parquet", old.first_shard + k),
                    row_id_shift: file.first_row_id as i64 - old.first_row_id as i64,
                    source_file: old.path.clone(),
                },
            );
        }
        reuse.rejected.insert(old.path.clone(), Vec::new());
        reuse.reused.files += 1;
        reuse.reused.rows += file.rows;
    }
    if reuse.shards.is_empty() {
        info!(from = %from.display(), "no input file is unchanged since the earlier job: every file is scored");
        return Ok(None);
    }
    read_rejected(from, &mut reuse.rejected)
        .await
        .map_err(JobError::from)?;
    info!(
        files = reuse.reused.files,
        rows = reuse.reused.rows,
        from_job = %reuse.reused.from_job,
        "reusing the scores of the files that did not change"
    );
    Ok(Some(reuse))
}

/// The earlier job's rejected rows of the files in `by_file`.
async fn read_rejected(
    from: &Location,
    by_file: &mut BTreeMap<String, Vec<(u64, String)>>,
) -> Result<(), OutputError> {
    let file = from.input_file(REJECTED_FILE).await?;
    let mut stream = read_whole(
        &file,
        Some(&[columns::SOURCE_FILE, columns::SOURCE_ROW, columns::REASON]),
    )
    .await?;
    while let Some(batch) = stream.try_next().await? {
        let (files, rows, reasons) = (
            batch.column(0).as_string::<i32>(),
            batch.column(1).as_primitive::<Int64Type>(),
            batch.column(2).as_string::<i32>(),
        );
        for i in 0..batch.num_rows() {
            if let Some(rejected) = by_file.get_mut(files.value(i)) {
                rejected.push((rows.value(i) as u64, reasons.value(i).to_string()));
            }
        }
    }
    Ok(())
}

/// Fills `shard` of the new job at `to` from the earlier job's part: the scored rows with
/// their new `row_id`s, and the file's rejected rows in the shard's range; returns what a
/// worker would have reported (no model tokens: nothing was scored).
pub async fn copy_shard(
    reuse: &ReusePlan,
    to: &Location,
    shard: &Shard,
    key_values: &[(String, String)],
) -> Result<ShardResult, OutputError> {
    let source = &reuse.shards[&shard.index];
    let shift = |ids: &Int64Array| -> ArrayRef {
        Arc::new(Int64Array::from_iter_values(
            ids.values().iter().map(|&id| id + source.row_id_shift),
        ))
    };

    let part = reuse.from.input_file(&source.part).await?;
    let path = to.path_of(&shard.scores_part());
    let display = to.display_of(&path);
    let mut batches = read_whole(&part, None).await?;
    let mut sink: Option<ParquetSink> = None;
    let mut margins = [Vec::new(), Vec::new(), Vec::new(), Vec::new()];
    let mut dpo = false;
    while let Some(batch) = batches.try_next().await? {
        let schema = batch.schema();
        let row_id = schema
            .index_of(columns::ROW_ID)
            .map_err(arrow_err(&part.display))?;
        let mut arrays = batch.columns().to_vec();
        arrays[row_id] = shift(batch.column(row_id).as_primitive::<Int64Type>());
        let batch =
            RecordBatch::try_new(Arc::clone(&schema), arrays).map_err(arrow_err(&part.display))?;
        let names = [
            columns::RM_MARGIN,
            columns::LOGP_MARGIN,
            columns::LOGP_MARGIN_NORM,
            columns::DPO_MARGIN,
        ];
        for (values, name) in margins.iter_mut().zip(names) {
            if let Some(column) = batch.column_by_name(name) {
                values.extend_from_slice(column.as_primitive::<Float64Type>().values());
                dpo |= name == columns::DPO_MARGIN;
            }
        }
        if sink.is_none() {
            sink = Some(ParquetSink::create(
                to.store(),
                path.clone(),
                display.clone(),
                schema,
                key_values,
            )?);
        }
        sink.as_mut().expect("created above").write(&batch).await?;
    }
    let sink = match sink {
        Some(sink) => sink,
        // An empty part: its schema from its footer.
        None => {
            let footer = apscore_core::parquet_io::read_footer(&part).await?;
            ParquetSink::create(
                to.store(),
                path,
                display,
                Arc::clone(footer.schema()),
                key_values,
            )?
        }
    };
    let scored = sink.finish().await?;
    let [rm, lm, lmn, dpo_margin] = margins;
    let stats = MarginStats::from_columns(&rm, &lm, &lmn);
    let stats = if dpo && !dpo_margin.is_empty() {
        stats.with_dpo(&dpo_margin)
    } else {
        stats
    };

    let rows = shard.first_source_row..shard.first_source_row + shard.rows;
    let rejected: Vec<&(u64, String)> = reuse.rejected[&source.source_file]
        .iter()
        .filter(|(row, _)| rows.contains(row))
        .collect();
    let first_row_id = shard.first_row_id as i64 - shard.first_source_row as i64;
    let batch = RecordBatch::try_new(
        rejected_schema(),
        vec![
            Arc::new(Int64Array::from_iter_values(
                rejected.iter().map(|(row, _)| first_row_id + *row as i64),
            )),
            Arc::new(StringArray::from_iter_values(
                rejected.iter().map(|_| source.source_file.as_str()),
            )),
            Arc::new(Int64Array::from_iter_values(
                rejected.iter().map(|(row, _)| *row as i64),
            )),
            Arc::new(StringArray::from_iter_values(
                rejected.iter().map(|(_, reason)| reason.as_str()),
            )),
        ],
    )
    .map_err(arrow_err(&source.source_file))?;
    let path = to.path_of(&shard.rejected_part());
    let mut sink = ParquetSink::create(
        to.store(),
        path.clone(),
        to.display_of(&path),
        rejected_schema(),
        key_values,
    )?;
    sink.write(&batch).await?;
    sink.finish().await?;
    Ok(ShardResult {
        index: shard.index,
        scored,
        rejected: rejected.len() as u64,
        stats,
        tokens: 0,
        padded_tokens: 0,
        reward_tokens: 0,
        attempt: None,
        reused: true,
    })
}
