//! A job's output location as both sides see it: where each output lives, and the schemas of
//! the files workers write and the coordinator reads back.
//!
//! ```text
//!   OUT/scores/part-NNNNN.parquet     one per shard, written by the worker that scored it
//!   OUT/_work/                         the job's manifest and per-shard files while it runs
//!   OUT/_lock/                         the lock of the job writing here, while it runs
//!   OUT/_next/                         an incremental run's next job, until it replaces this one
//!   OUT/rejected_rows.parquet          every row that could not be scored, with its reason
//!   OUT/ranking.parquet  OUT/selected/ OUT/report.html  OUT/report/
//!   OUT/summary.json                   written last: its presence means the job finished
//! ```
//!
//! What each column means: `docs/outputs.md`.

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef};

use crate::columns;

/// Folder of the scored rows.
pub const SCORES_DIR: &str = "scores";
/// Folder of a job's intermediate files; removed when it completes.
pub const WORK_DIR: &str = "_work";
/// The job's summary; written last, so its presence means the job completed (a worker that
/// lost its coordinator looks for it).
pub const SUMMARY_FILE: &str = "summary.json";
/// Every scored row in rank order.
pub const RANKING_FILE: &str = "ranking.parquet";
/// Every row that could not be scored, with its reason.
pub const REJECTED_FILE: &str = "rejected_rows.parquet";
/// The selected rows in rank order.
pub const SELECTED_DIR: &str = "selected";
/// The report page.
pub const REPORT_FILE: &str = "report.html";
/// The report's plots.
pub const PLOTS_DIR: &str = "report";
/// Where an incremental run builds the next job beside a finished one; moved into place (and
/// removed) once complete.
pub const NEXT_DIR: &str = "_next";
/// The lock of the job that writes here (one job per output at a time); never cleared as an
/// output.
pub const LOCK_DIR: &str = "_lock";

/// Everything a job may leave at its output location: what is cleared before a new run, and
/// nothing else there is ever touched.
pub const JOB_OUTPUTS: [&str; 9] = [
    SCORES_DIR,
    NEXT_DIR,
    SELECTED_DIR,
    WORK_DIR,
    RANKING_FILE,
    REJECTED_FILE,
    REPORT_FILE,
    PLOTS_DIR,
    SUMMARY_FILE,
];

/// Which columns a job's `scores/` parts carry besides those every part has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScorePartColumns {
    /// The log-prob columns ([`columns::LOGP_COLUMNS`]): the model's, or with `--scores-with-input`
    /// the input's. Log-probs the input carries precomputed stay there otherwise: the part
    /// joins to them by `source_file` and `source_row`.
    pub logps: bool,
    /// A reference model ran: [`columns::REFERENCE_COLUMNS`].
    pub reference: bool,
    /// A reward model ran: [`columns::REWARD_COLUMNS`].
    pub reward_model: bool,
    /// With a reward model, the data has a margin of its own: [`columns::DATA_RM_MARGIN`].
    pub data_margin: bool,
}

/// The schema of `scores/` parts: the input's own columns (less any that carry a score
/// column's name: apscore's values replace them), then the score columns (the log-probs only
/// where `parts.logps`), then with a reference model the DPO columns, then with a reward model
/// its scores (and the data's own margin, when it has one).
pub fn scores_schema(input: &Schema, passthrough: &[usize], parts: ScorePartColumns) -> SchemaRef {
    let mut fields: Vec<Field> = passthrough
        .iter()
        .map(|&i| input.field(i).clone())
        .collect();
    let f64_field = |name: &str| Field::new(name, DataType::Float64, false);
    if parts.logps {
        fields.extend(columns::LOGP_COLUMNS.map(f64_field));
    }
    fields.extend([
        Field::new(columns::CHOSEN_TOKENS, DataType::Int64, true),
        Field::new(columns::REJECTED_TOKENS, DataType::Int64, true),
        f64_field(columns::LOGP_MARGIN),
        f64_field(columns::LOGP_MARGIN_NORM),
        f64_field(columns::LOGP_MARGIN_ABS),
        f64_field(columns::LOGP_MARGIN_NORM_ABS),
        f64_field(columns::RM_MARGIN),
        Field::new(columns::TRUNCATED, DataType::Boolean, true),
        Field::new(columns::ROW_ID, DataType::Int64, false),
        Field::new(columns::SOURCE_FILE, DataType::Utf8, false),
        Field::new(columns::SOURCE_ROW, DataType::Int64, false),
    ]);
    if parts.reference {
        fields.extend(columns::REFERENCE_COLUMNS.map(f64_field));
    }
    if parts.reward_model {
        fields.extend(columns::REWARD_COLUMNS.map(f64_field));
        if parts.data_margin {
            // Null where the data's margin is not a usable number (the row is still scored).
            fields.push(Field::new(columns::DATA_RM_MARGIN, DataType::Float64, true));
        }
    }
    Arc::new(Schema::new(fields))
}

/// The schema of rejected-row files, per shard and for the job.
pub fn rejected_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new(columns::ROW_ID, DataType::Int64, false),
        Field::new(columns::SOURCE_FILE, DataType::Utf8, false),
        Field::new(columns::SOURCE_ROW, DataType::Int64, false),
        Field::new(columns::REASON, DataType::Utf8, false),
    ]))
}
