//! The unit of work: a shard is a run of whole row groups of one input file.
//!
//! The coordinator plans shards; a worker scores one and writes its result under the job's
//! output location at names derived from the shard index alone, so a retried shard replaces
//! its earlier result instead of adding to it.

use std::ops::Range;

use serde::{Deserialize, Serialize};

use crate::outputs::{SCORES_DIR, WORK_DIR};
use crate::stats::MarginStats;

/// A run of whole row groups of one input file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shard {
    /// Position in the plan; shard results are named by it.
    pub index: u32,
    /// Position of the input file in the job's file list.
    pub file_index: u32,
    /// The row groups of that file this shard covers.
    pub row_groups: Range<usize>,
    /// Global input position (`row_id`) of the shard's first row.
    pub first_row_id: u64,
    /// Row number of the shard's first row within its file (`source_row`).
    pub first_source_row: u64,
    /// Rows in the shard.
    pub rows: u64,
}

impl Shard {
    /// The shard's scored rows: `scores/part-NNNNN.parquet` under the output location.
    pub fn scores_part(&self) -> String {
        format!("{SCORES_DIR}/part-{:05}.parquet", self.index)
    }

    /// The shard's rejected rows, kept until the job's `rejected_rows.parquet` is written.
    pub fn rejected_part(&self) -> String {
        format!("{WORK_DIR}/rejected/shard-{:05}.parquet", self.index)
    }

    /// The folder the attempt that holds lease `lease` writes its files in. Every attempt has
    /// its own: a worker presumed dead that wakes up writes only there, never over the files
    /// of the attempt the coordinator accepted, which it moves to [`Shard::scores_part`] and
    /// [`Shard::rejected_part`].
    pub fn attempt_dir(&self, lease: u64) -> String {
        format!(
            "{WORK_DIR}/attempts/shard-{:05}/lease-{lease:016x}",
            self.index
        )
    }

    /// The scored rows of the attempt that holds lease `lease`.
    pub fn attempt_scores_part(&self, lease: u64) -> String {
        format!("{}/scores.parquet", self.attempt_dir(lease))
    }

    /// The rejected rows of the attempt that holds lease `lease`.
    pub fn attempt_rejected_part(&self, lease: u64) -> String {
        format!("{}/rejected.parquet", self.attempt_dir(lease))
    }
}

/// What a worker reports for a finished shard.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardResult {
    pub index: u32,
    pub scored: u64,
    pub rejected: u64,
    /// Partial statistics of the shard's scored rows, merged by the coordinator.
    pub stats: MarginStats,
    /// Tokens through the policy model, prompts and responses (0 when log-probs were
    /// precomputed).
    pub tokens: u64,
    /// Tokens through the policy model including batch padding (0 without a model).
    #[serde(default)]
    pub padded_tokens: u64,
    /// Tokens through the reward model (0 without one).
    #[serde(default)]
    pub reward_tokens: u64,
    /// The lease of the attempt whose files the coordinator accepted (set by the coordinator;
    /// `None` in manifests of versions that wrote the final files directly).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u64>,
    /// Filled from an earlier job's scores instead of scored (incremental runs).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub reused: bool,
}
