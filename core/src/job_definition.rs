//! What a worker needs to know about a job: the definition a coordinator hands out.
//!
//! A job is defined once, at the coordinator (`apscore coordinator`/`run` flags); workers
//! receive this at registration and score shards of it. The job id names the inputs and
//! everything that changes a score, so a manifest left by another job is recognised.

use serde::{Deserialize, Serialize};

use crate::layout::DatasetLayout;
use crate::model_settings::{ComputeDtype, Profile, TruncationMode};
use crate::storage::{InputFile, StorageError};

/// A job as workers see it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobDefinition {
    pub job_id: String,
    /// The output location (local path or object-store URL).
    pub output: String,
    /// The input files; shards name theirs by position.
    pub files: Vec<JobFile>,
    pub layout: DatasetLayout,
    /// `None` when the input carries precomputed log-probs.
    pub model: Option<ModelJob>,
    /// Whether `scores/` parts carry the input's columns (`--scores-with-input`); by default
    /// they hold the row keys and the computed columns only.
    #[serde(default)]
    pub scores_with_input: bool,
}

/// One input file of a job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobFile {
    /// An absolute local path or an object-store URL.
    pub url: String,
    pub size: u64,
}

impl JobFile {
    /// The file, ready to read (credentials from this process's environment).
    pub fn open(&self) -> Result<InputFile, StorageError> {
        InputFile::from_url(&self.url, self.size)
    }
}

/// The model scoring a job and how pairs are prepared for it: what every worker must do the
/// same way. Where it runs (device, batch size, cache) is each worker's own business.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelJob {
    /// Checkpoint directory or GGUF file, local or object-store URL.
    pub source: String,
    /// The DPO reference model, when the job has one.
    pub reference: Option<String>,
    pub dtype: ComputeDtype,
    pub profile: Profile,
    pub max_length: u64,
    pub max_prompt_length: u64,
    pub truncation_mode: TruncationMode,
    /// Padded tokens per forward batch; `None` lets each worker pick for its device.
    pub batch_tokens: Option<u64>,
}
