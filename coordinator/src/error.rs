//! The coordinator's errors: [`JobError`] for a job as a whole, [`OutputError`] for one
//! output file. Every message names the file, location or shard it is about.

use apscore_core::outputs::SUMMARY_FILE;
use apscore_core::parquet_io::ParquetIoError;
use apscore_core::storage::StorageError;
use apscore_proto::security::SecurityError;
use arrow::error::ArrowError;

use crate::manifest::ManifestError;
use crate::output_lock::LockError;
use crate::plan::PlanError;
use crate::ranking::RankingError;

/// The job could not complete.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error("{failed} of {shards} shards could not be scored:\n{report}")]
    ShardsFailed {
        failed: usize,
        shards: usize,
        report: String,
    },
    #[error(
        "{output} holds another unfinished job (id {found}, this one is {expected}): pass \
         --overwrite to discard it and start this one, or choose another --output"
    )]
    OtherJob {
        output: String,
        found: String,
        expected: String,
    },
    #[error("cannot serve workers: {0}")]
    Serve(#[from] tonic::transport::Error),
    #[error(transparent)]
    Security(#[from] SecurityError),
    #[error(transparent)]
    Output(#[from] OutputError),
    #[error(
        "{output} already holds a finished job ({SUMMARY_FILE} exists) with other inputs or \
         parameters; choose another --output, pass --overwrite (or --force) to replace it, or \
         re-rank it with `apscore select --from`"
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
    #[error(transparent)]
    Ranking(#[from] RankingError),
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error("{reason}")]
    OutputConflict { reason: String },
    #[error(
        "the input file {file} {problem}: the job's scores/ hold no copy of the input (run it \
         with --scores-with-input to keep one), so its rows cannot be read back"
    )]
    InputChanged { file: String, problem: String },
    #[error("a background task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// An output could not be written.
#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    #[error(transparent)]
    Parquet(#[from] ParquetIoError),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("{file}: {source}")]
    Arrow {
        file: String,
        #[source]
        source: ArrowError,
    },
    #[error("drawing the report: {0}")]
    Report(String),
    #[error("{file}: expected {expected} scored rows, found {found}")]
    RowCount {
        file: String,
        expected: u64,
        found: u64,
    },
    #[error(
        "{file}, row {row}: row_id {found}, where the job's row {expected} belongs: the scores do \
         not match the job that wrote them (a part missing, duplicated or altered)"
    )]
    RowIds {
        file: String,
        row: u64,
        found: i64,
        expected: u64,
    },
    #[error(
        "{location}: {scored} scored and {rejected} rejected rows, but the job read {input_rows} \
         input rows: the scores do not match the job that wrote them (a part missing or extra)"
    )]
    RowsMissing {
        location: String,
        scored: u64,
        rejected: u64,
        input_rows: u64,
    },
    #[error(
        "{file}: piece {piece} of this sort run is not what the job wrote ({problem}); was the \
         job's work folder changed while it ran?"
    )]
    RunChanged {
        file: String,
        piece: usize,
        problem: String,
    },
    #[error("a background task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

pub(crate) fn arrow_err(file: &str) -> impl Fn(ArrowError) -> OutputError + '_ {
    move |source| OutputError::Arrow {
        file: file.to_string(),
        source,
    }
}
