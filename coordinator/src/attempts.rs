//! Each shard's outputs written exactly once: every attempt writes in a folder of its own,
//! named by its lease (`Shard::attempt_dir`), and only the attempt the coordinator accepts is
//! moved to the final places, `scores/part-NNNNN.parquet` and `_work/rejected/shard-NNNNN.parquet`.
//!
//! ```text
//!   worker, lease L      writes _work/attempts/shard-N/lease-L/{scores,rejected}.parquet
//!   Complete(L)          coordinator: move L's files to their final places, record the shard
//!                        done (naming L), then acknowledge
//!   a later attempt      (a worker presumed dead that wakes up) writes only in its own folder,
//!                        which it removes when its completion is refused; `_work/` goes with
//!                        the rest when the job completes
//! ```
//!
//! A coordinator that dies between the move and the record finds, on resume, the recorded
//! attempt's files where they are and finishes the move ([`settle`]).

use apscore_core::shard::{Shard, ShardResult};
use apscore_core::storage::{Location, StorageError};

/// Moves the files of the attempt that held `lease` to the shard's final places. `false` when
/// the attempt's files are not there (then nothing is moved and the shard is not done).
pub async fn accept(output: &Location, shard: &Shard, lease: u64) -> Result<bool, StorageError> {
    let files = moves(shard, lease);
    for (attempt, _) in &files {
        if !output.exists(attempt).await? {
            return Ok(false);
        }
    }
    for (attempt, final_place) in &files {
        output.rename(attempt, final_place).await?;
    }
    // On a local disk the attempt's folders stay behind, empty.
    output.delete_all(&shard.attempt_dir(lease)).await?;
    Ok(true)
}

/// On resume: finishes the move of a recorded attempt's files if a coordinator died during it;
/// `true` when the shard's final files are in place (otherwise its record does not hold and
/// the shard is scored again).
pub async fn settle(
    output: &Location,
    shard: &Shard,
    result: &ShardResult,
) -> Result<bool, StorageError> {
    if let Some(lease) = result.attempt {
        for (attempt, final_place) in moves(shard, lease) {
            if output.exists(&attempt).await? {
                output.rename(&attempt, &final_place).await?;
            }
        }
    }
    Ok(output.exists(&shard.scores_part()).await? && output.exists(&shard.rejected_part()).await?)
}

/// (the attempt's file, its final place) for each file a shard's attempt writes.
fn moves(shard: &Shard, lease: u64) -> [(String, String); 2] {
    [
        (shard.attempt_scores_part(lease), shard.scores_part()),
        (shard.attempt_rejected_part(lease), shard.rejected_part()),
    ]
}
