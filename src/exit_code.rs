//! The process's exit status, by what went wrong, so that schedulers and scripts can tell a
//! bad input (fix the data or the flags) from a failed job (look at the report) from an
//! interruption (run the same command again: it resumes).
//!
//! | code | meaning |
//! |---|---|
//! | 0 | done, or already complete (the output holds this job, finished) |
//! | 1 | any other error (storage unreachable, a bug) |
//! | 2 | bad command line (clap) |
//! | 3 | bad input: unreadable or mismatched inputs, a model that cannot load, an output that holds another job, a worker refused by its coordinator |
//! | 4 | the job failed: a shard ran out of attempts (the report names it) |
//! | 5 | interrupted (SIGINT or SIGTERM): the finished shards are kept; the same command resumes |

use apscore_coordinator::JobError;
use apscore_coordinator::error::OutputError;
use apscore_core::storage::StorageError;
use apscore_worker::job_model::LoadError;
use apscore_worker::runner::WorkerError;

pub const FAILURE: u8 = 1;
pub const BAD_INPUT: u8 = 3;
pub const JOB_FAILED: u8 = 4;
pub const INTERRUPTED: u8 = 5;

/// The job was interrupted by a signal.
#[derive(Debug, thiserror::Error)]
#[error(
    "interrupted: the finished shards are kept at the output; run the same command again to \
     resume"
)]
pub struct Interrupted;

/// The exit status for `error`: the first cause that says what kind of failure it is.
pub fn of(error: &anyhow::Error) -> u8 {
    for cause in error.chain() {
        if cause.downcast_ref::<Interrupted>().is_some() {
            return INTERRUPTED;
        }
        if let Some(e) = cause.downcast_ref::<JobError>() {
            return match e {
                JobError::ShardsFailed { .. } => JOB_FAILED,
                JobError::Plan(_)
                | JobError::OtherJob { .. }
                | JobError::AlreadyComplete { .. }
                | JobError::NotAJob { .. }
                | JobError::NoDpoMargin { .. }
                | JobError::SameLocation { .. }
                | JobError::Ranking(_)
                | JobError::Lock(_)
                | JobError::OutputConflict { .. }
                | JobError::InputChanged { .. }
                | JobError::Security(_) => BAD_INPUT,
                // Scores that are not the job's own: the input of `select` or `report` is bad.
                JobError::Output(
                    OutputError::RowIds { .. }
                    | OutputError::RowsMissing { .. }
                    | OutputError::RowCount { .. },
                ) => BAD_INPUT,
                JobError::Storage(e) => storage(e),
                _ => FAILURE,
            };
        }
        if let Some(e) = cause.downcast_ref::<WorkerError>() {
            return match e {
                WorkerError::JobFailed(_) => JOB_FAILED,
                WorkerError::Refused { .. }
                | WorkerError::BadJob(_)
                | WorkerError::Model(_)
                | WorkerError::BadUrl { .. }
                | WorkerError::TlsSetup { .. } => BAD_INPUT,
                _ => FAILURE,
            };
        }
        if cause.downcast_ref::<LoadError>().is_some()
            || cause
                .downcast_ref::<apscore_proto::security::SecurityError>()
                .is_some()
        {
            return BAD_INPUT;
        }
        if let Some(e) = cause.downcast_ref::<StorageError>() {
            return storage(e);
        }
    }
    FAILURE
}

fn storage(e: &StorageError) -> u8 {
    match e {
        StorageError::Store { .. } => FAILURE,
        _ => BAD_INPUT,
    }
}
