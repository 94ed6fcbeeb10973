//! The job's state at its output location, so that a restarted coordinator resumes the job
//! instead of starting over.
//!
//! - `_work/manifest.json`: the job id, the shard count, the model identity once known.
//! - `_work/done/shard-NNNNN.json`: one per finished shard, its [`ShardResult`]; written
//!   before the coordinator acknowledges the completion, so a finished shard is never lost
//!   and never recomputed.
//!
//! Both go away with the rest of `_work/` once `summary.json` is written.

use apscore_core::shard::ShardResult;
use apscore_core::storage::{Location, StorageError};
use futures::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};

/// The manifest's path under the output location.
pub const MANIFEST_FILE: &str = "_work/manifest.json";

/// Folder of the finished shards' records.
pub const DONE_DIR: &str = "_work/done";

/// Records read at once when resuming.
const READ_CONCURRENCY: usize = 32;

/// The manifest could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("{path} is not an apscore manifest: {source}")]
    Corrupt {
        path: String,
        #[source]
        source: serde_json::Error,
    },
}

/// What identifies the job whose state this is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub job_id: String,
    pub apscore_version: String,
    pub shards: u32,
    /// The model the workers loaded, as the first registered worker reported it.
    pub model_identity: Option<String>,
}

/// The manifest at `output`, if a job left one.
pub async fn read(output: &Location) -> Result<Option<Manifest>, ManifestError> {
    let Some(bytes) = output.get_if_exists(MANIFEST_FILE).await? else {
        return Ok(None);
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|source| ManifestError::Corrupt {
            path: output.display_of(&output.path_of(MANIFEST_FILE)),
            source,
        })
}

pub async fn write(output: &Location, manifest: &Manifest) -> Result<(), ManifestError> {
    let json = serde_json::to_vec_pretty(manifest).expect("a manifest serialises");
    Ok(output.put(MANIFEST_FILE, json).await?)
}

/// Where a finished shard's record lives.
pub fn done_record(shard: u32) -> String {
    format!("{DONE_DIR}/shard-{shard:05}.json")
}

/// Records a finished shard (one atomic put; a repeat replaces it with the same content).
pub async fn record_done(output: &Location, result: &ShardResult) -> Result<(), ManifestError> {
    let json = serde_json::to_vec(result).expect("a shard result serialises");
    Ok(output.put(&done_record(result.index), json).await?)
}

/// Every finished shard recorded at `output`.
pub async fn read_done(output: &Location) -> Result<Vec<ShardResult>, ManifestError> {
    let records = output.join(DONE_DIR).list_all().await?;
    futures::stream::iter(records.into_iter().map(|meta| async move {
        let path = output.display_of(&meta.location);
        let relative = path
            .strip_prefix(output.display())
            .unwrap_or(&path)
            .trim_start_matches('/')
            .to_string();
        let bytes = output.get_if_exists(&relative).await?.unwrap_or_default();
        serde_json::from_slice::<ShardResult>(&bytes)
            .map_err(|source| ManifestError::Corrupt { path, source })
    }))
    .buffer_unordered(READ_CONCURRENCY)
    .try_collect()
    .await
}
