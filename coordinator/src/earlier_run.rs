//! What an earlier run left at a job's output location: a finished job is never replaced by
//! accident, only apscore's own outputs are ever deleted there, and an incremental run's next
//! job takes the finished one's place only once complete.

use apscore_core::outputs::{JOB_OUTPUTS, NEXT_DIR, SUMMARY_FILE};
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

/// Marks a next job whose move into place has begun: the earlier outputs are gone.
const MOVING_MARKER: &str = "_moving";

/// Puts the complete next job (`OUT/_next/`) in the place of the finished one at `output`:
/// the earlier summary goes first (the output no longer holds a finished job), then the
/// earlier outputs, then the next job's files move up, its `summary.json` last. Cut short, the
/// same command finds the next job complete and finishes the move.
pub async fn replace_with_next(output: &Location) -> Result<(), JobError> {
    let next = output.join(NEXT_DIR);
    if next.get_if_exists(MOVING_MARKER).await?.is_none() {
        output.delete_all(SUMMARY_FILE).await?;
        for name in JOB_OUTPUTS.iter().filter(|&&name| name != NEXT_DIR) {
            output.delete_all(name).await?;
        }
        next.put(MOVING_MARKER, Vec::new()).await?;
    }
    let prefix = format!("{}/", next.display());
    for meta in next.list_all().await? {
        let shown = next.display_of(&meta.location);
        let relative = shown.strip_prefix(&prefix).unwrap_or(&shown);
        if relative != SUMMARY_FILE && relative != MOVING_MARKER {
            output
                .rename(&format!("{NEXT_DIR}/{relative}"), relative)
                .await?;
        }
    }
    output
        .rename(&format!("{NEXT_DIR}/{SUMMARY_FILE}"), SUMMARY_FILE)
        .await?;
    output.delete_all(NEXT_DIR).await?;
    info!("the next job took the finished one's place");
    Ok(())
}
