//! What an earlier run left at a job's output location: a finished job is never replaced by
//! accident, and only apscore's own outputs are ever deleted there.

use apscore_core::outputs::{JOB_OUTPUTS, SUMMARY_FILE};
use apscore_core::storage::Location;
use tracing::info;

use crate::error::JobError;

/// Refuses to touch a finished job's outputs unless asked to.
pub async fn refuse_finished_job(output: &Location, overwrite: bool) -> Result<(), JobError> {
    if output.get_if_exists(SUMMARY_FILE).await?.is_some() && !overwrite {
        return Err(JobError::AlreadyComplete {
            output: output.display().into(),
        });
    }
    Ok(())
}

/// Removes what an earlier run left at the output location (and nothing else there).
pub async fn clear_earlier_run(output: &Location) -> Result<(), JobError> {
    for name in JOB_OUTPUTS {
        let removed = output.delete_all(name).await?;
        if removed > 0 {
            info!(removed, what = name, "cleared an earlier run's output");
        }
    }
    Ok(())
}
