//! Working from a finished job's outputs, without scoring anything again.
//!
//! - [`run_select_job`] (`apscore select`): another metric, weight or selection size over the
//!   same scores; a new output location with the same outputs a `rank` with those parameters
//!   would have written (its `scores/` and `rejected_rows.parquet` are copied over).
//! - [`run_report_job`] (`apscore report`): draws a job's report again.
//!
//! The job-wide statistics are merged from each `scores/` part's, exactly as `rank` merged its
//! shards' (one part per shard, same values, same order), so the ranking is the same to the
//! last bit.

use std::time::Instant;

use apscore_core::outputs::{REJECTED_FILE, REPORT_FILE, SCORES_DIR, SUMMARY_FILE};
use apscore_core::parquet_io;
use apscore_core::storage::{InputFile, Location};
use tracing::{Instrument, info, info_span};

use crate::earlier_run::{clear_earlier_run, refuse_finished_job};
use crate::error::{JobError, OutputError};
use crate::finish::{FinishParams, finish};
use crate::output_lock::OutputLock;
use crate::plan::SourceFile;
use crate::ranking::{self, ImplicitMargin, RankingParams};
use crate::scored::{Scored, ScoredPart, load_rank_rows, part_stats};
use crate::selected::SelectedWriting;
use crate::summary::{Counts, Summary, Timings};
use crate::{explicit_margin, report};

/// Everything that defines a re-selection.
#[derive(Debug, Clone)]
pub struct SelectJobSpec {
    /// The finished job's output location.
    pub from: String,
    /// Where the new outputs go (not `from`).
    pub output: String,
    pub ranking: RankingParams,
    /// How `selected/` is written.
    pub selected: SelectedWriting,
    /// Replace the outputs of a finished job at `output`.
    pub overwrite: bool,
}

/// Ranks and selects again from the scores of the finished job at `spec.from`.
pub async fn run_select_job(spec: SelectJobSpec) -> Result<Summary, JobError> {
    let started = Instant::now();
    let from = Location::parse(&spec.from)?;
    let output = Location::parse(&spec.output)?;
    if from.display() == output.display() {
        return Err(JobError::SameLocation {
            location: output.display().into(),
        });
    }
    output.check_folder()?;
    let span = info_span!("select", from = %from.display(), output = %output.display());
    async move {
        let earlier = read_summary(&from).await?;
        let parts = list_parts(&from, &earlier).await?;
        if spec.ranking.implicit == ImplicitMargin::Dpo && !has_dpo_margin(&from, &parts).await? {
            return Err(JobError::NoDpoMargin {
                from: from.display().into(),
            });
        }
        refuse_finished_job(&output, spec.overwrite).await?;
        let lock = OutputLock::acquire(&output, "select").await?;
        let result = select_into(&spec, &from, &output, &parts, earlier, started, &lock).await;
        lock.release().await;
        result
    }
    .instrument(span)
    .await
}

/// `select` once its output is locked: copy the scores, rank and write.
async fn select_into(
    spec: &SelectJobSpec,
    from: &Location,
    output: &Location,
    parts: &[String],
    earlier: Summary,
    started: Instant,
    lock: &OutputLock,
) -> Result<Summary, JobError> {
    clear_earlier_run(output).await?;

    // The scores and the rejected rows do not change: copy them.
    for part in parts {
        output.copy_from(from, part).await?;
    }
    output.copy_from(from, REJECTED_FILE).await?;
    info!(parts = parts.len(), "copied the earlier job's scores");
    // selected/ takes the input's columns: from the input files unless the parts copy them.
    let scored = load_scored(output, parts, &earlier, true).await?;
    let copy_time = started.elapsed();

    let mut facts = earlier.facts.clone();
    facts.command = "select".into();
    facts.job_id = String::new();
    facts.output = output.display().into();
    facts.ranking = spec.ranking;
    facts.implicit_margin = spec.ranking.implicit.column().into();
    facts.counts = Counts {
        input_files: earlier.facts.counts.input_files,
        shards: earlier.facts.counts.shards,
        input_rows: earlier.facts.counts.input_rows,
        ..Counts::default()
    };
    let params = FinishParams {
        ranking: spec.ranking,
        selected: spec.selected,
        scoring: earlier.scoring,
        shards: None,
        reused: None,
    };
    let timings = Timings {
        plan: copy_time.as_secs_f64(),
        ..Timings::default()
    };
    lock.check()?;
    finish(output, scored, facts, params, timings, started).await
}

/// Draws the report of the finished job at `from` again (`report.html`, `report/`).
pub async fn run_report_job(from: &str) -> Result<String, JobError> {
    let from = Location::parse(from)?;
    let earlier = read_summary(&from).await?;
    let parts = list_parts(&from, &earlier).await?;
    // The report shows text: from the input files unless the parts copy them.
    let needs_text = earlier.facts.layout.text.is_some();
    let scored = load_scored(&from, &parts, &earlier, needs_text).await?;
    let (rows, reasons) = load_rank_rows(
        &from,
        &scored.parts,
        earlier.facts.ranking.implicit,
        earlier.facts.counts.input_rows,
    )
    .await?;
    let stats = part_stats(&rows, &scored.parts);
    let ranking = ranking::rank(&rows, &stats, &earlier.facts.ranking)?;
    let (explicit, data_margins) =
        explicit_margin::explicit_margin(&from, &scored, &rows, &earlier.facts).await?;
    report::write_report(
        &from,
        &scored,
        &rows,
        &ranking,
        &earlier.facts,
        &reasons,
        (&explicit, data_margins.as_ref()),
    )
    .await?;
    Ok(from.display_of(&from.path_of(REPORT_FILE)))
}

/// The summary of a finished job; its absence means there is no finished job there.
async fn read_summary(from: &Location) -> Result<Summary, JobError> {
    let not_a_job = |reason: String| JobError::NotAJob {
        from: from.display().into(),
        reason,
    };
    let bytes = from.get_if_exists(SUMMARY_FILE).await?.ok_or_else(|| {
        not_a_job(format!(
            "it has no {SUMMARY_FILE} (an unfinished job, or no job at all)"
        ))
    })?;
    serde_json::from_slice(&bytes)
        .map_err(|e| not_a_job(format!("its {SUMMARY_FILE} cannot be read: {e}")))
}

/// The `scores/` parts of a job, in row order (by the shard number in their names): one per
/// shard the job recorded, or the scores are not the job's.
async fn list_parts(from: &Location, earlier: &Summary) -> Result<Vec<String>, JobError> {
    let mut parts: Vec<(u64, String)> = from
        .join(SCORES_DIR)
        .list_all()
        .await?
        .into_iter()
        .filter_map(|meta| {
            let name = meta.location.filename()?.to_string();
            let number = name
                .strip_prefix("part-")?
                .strip_suffix(".parquet")?
                .parse()
                .ok()?;
            Some((number, format!("{SCORES_DIR}/{name}")))
        })
        .collect();
    parts.sort();
    let shards = earlier.facts.counts.shards;
    if parts.len() as u64 != shards {
        return Err(JobError::NotAJob {
            from: from.display().into(),
            reason: format!(
                "{SCORES_DIR}/ holds {} parts, but the job that wrote it had {shards} shards \
                 (a part missing or extra)",
                parts.len()
            ),
        });
    }
    Ok(parts.into_iter().map(|(_, path)| path).collect())
}

/// Whether the job's `scores/` parts carry the DPO margin (it ran with a reference model).
async fn has_dpo_margin(from: &Location, parts: &[String]) -> Result<bool, JobError> {
    let Some(first) = parts.first() else {
        return Ok(false);
    };
    let footer = parquet_io::read_footer(&from.input_file(first).await?)
        .await
        .map_err(OutputError::from)?;
    Ok(footer
        .schema()
        .field_with_name(apscore_core::columns::DPO_MARGIN)
        .is_ok())
}

/// The parts at `location` with their row counts (from their footers). Their statistics are
/// derived from the rows once they are read (see [`crate::scored::part_stats`]).
/// `reads_input`: the caller reads rows of the input files, which must then be unchanged.
async fn load_scored(
    location: &Location,
    parts: &[String],
    earlier: &Summary,
    reads_input: bool,
) -> Result<Scored, JobError> {
    let mut scored_parts = Vec::with_capacity(parts.len());
    let mut bytes_per_row = 0.0f64;
    let mut reference = false;
    for path in parts {
        let file = location.input_file(path).await?;
        let footer = parquet_io::read_footer(&file)
            .await
            .map_err(OutputError::from)?;
        bytes_per_row = bytes_per_row.max(footer.bytes_per_row());
        reference = footer
            .schema()
            .field_with_name(apscore_core::columns::REF_CHOSEN_LOGPS)
            .is_ok();
        scored_parts.push(ScoredPart {
            path: path.clone(),
            rows: footer.row_group_rows().iter().sum(),
        });
    }
    let inputs_in_scores = earlier
        .facts
        .scoring_setup
        .as_ref()
        .is_none_or(|setup| setup.scores_with_input);
    // Without a model the log-probs are the input's (parts of earlier versions repeat them).
    let logps_in_input = earlier
        .facts
        .scoring_setup
        .as_ref()
        .is_some_and(|setup| setup.model.is_none());
    if reads_input && !inputs_in_scores {
        inputs_unchanged(&earlier.facts.inputs).await?;
    }
    Ok(Scored {
        sources: earlier.facts.inputs.clone(),
        parts: scored_parts,
        input_columns: earlier.facts.input_columns.clone(),
        reference,
        // Jobs that predate lean scores/ copied the input into every part.
        inputs_in_scores,
        logps_in_input,
        stats: None,
        bytes_per_row,
    })
}

/// The job's `scores/` do not copy its input: `selected/` and the report read the input files,
/// which must be the very files the job scored (size and version, as its job id has them).
async fn inputs_unchanged(inputs: &[SourceFile]) -> Result<(), JobError> {
    for source in inputs {
        let problem = match InputFile::stat(&source.path).await? {
            None => "is gone".to_string(),
            Some(now) if now.size != source.size || now.version != source.version => format!(
                "changed since the job read it (size {} → {}, version {:?} → {:?})",
                source.size, now.size, source.version, now.version
            ),
            Some(_) => continue,
        };
        return Err(JobError::InputChanged {
            file: source.path.clone(),
            problem,
        });
    }
    Ok(())
}
