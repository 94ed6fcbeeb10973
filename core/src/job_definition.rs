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
    /// A chat template in force instead of the checkpoint's (`--chat-template FILE`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chat_template: Option<ChatTemplateOverride>,
    /// The reward model that gives the explicit margin (`--reward-model`), when the job has
    /// one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reward_model: Option<RewardModelJob>,
}

/// What precedes the reward model's `source (sha256:…)` in a job's model identity (the policy's
/// identity comes first, then the reference's, then the reward model's).
pub const REWARD_MODEL_IDENTITY: &str = "; reward model ";

/// A reward model (a `*ForSequenceClassification` checkpoint with one label) scoring each
/// conversation as transformers does for a batch of one: the conversation rendered by its own
/// chat template, the score head's logit at the last token that is not the pad token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RewardModelJob {
    /// Checkpoint directory, local or object-store URL.
    pub source: String,
    /// Longest conversation in tokens; a longer one rejects its row (`--reward-max-length`).
    pub max_length: u64,
}

/// A chat template that replaces the checkpoint's: a Jinja file, as SimPO's training configs
/// hold one (`chat_template:`). Its text travels with the job to every worker; its identity
/// (the file's name and the sha256 of its bytes) names it in job ids and summaries. Two
/// overrides are the same when their bytes are.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChatTemplateOverride {
    /// The file as given.
    pub name: String,
    /// `sha256:<hex>` of the text's bytes.
    pub sha256: String,
    /// The template itself: sent to the workers, not written into summaries.
    #[serde(skip)]
    pub text: String,
}

/// A chat template file that cannot be read.
#[derive(Debug, thiserror::Error)]
#[error("cannot read the chat template {path}: {source}")]
pub struct ChatTemplateFileError {
    pub path: String,
    #[source]
    pub source: std::io::Error,
}

impl ChatTemplateOverride {
    /// The template `text`, known as `name`.
    pub fn new(name: impl Into<String>, text: String) -> Self {
        use sha2::{Digest, Sha256};
        let digest = Sha256::digest(text.as_bytes());
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        ChatTemplateOverride {
            name: name.into(),
            sha256: format!("sha256:{hex}"),
            text,
        }
    }

    /// The template in the local file `path`.
    pub fn read(path: &str) -> Result<Self, ChatTemplateFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| ChatTemplateFileError {
            path: path.to_string(),
            source,
        })?;
        Ok(Self::new(path, text))
    }

    /// `name (sha256:…)`, for logs, identities and summaries.
    pub fn identity(&self) -> String {
        format!("{} ({})", self.name, self.sha256)
    }
}

impl PartialEq for ChatTemplateOverride {
    fn eq(&self, other: &Self) -> bool {
        self.sha256 == other.sha256
    }
}

impl Eq for ChatTemplateOverride {}

#[cfg(test)]
mod chat_template_tests {
    use super::*;

    #[test]
    fn an_override_is_named_by_its_bytes_and_summaries_leave_its_text_out() {
        let a = ChatTemplateOverride::new("a.jinja", "{{ messages }}".into());
        let b = ChatTemplateOverride::new("elsewhere/b.jinja", "{{ messages }}".into());
        let c = ChatTemplateOverride::new("a.jinja", "{{ messages }}\n".into());
        assert_eq!(a, b);
        assert_ne!(a, c);
        // sha256 of "{{ messages }}".
        assert_eq!(a.sha256.len(), "sha256:".len() + 64);
        let json = serde_json::to_string(&a).unwrap();
        assert!(!json.contains("messages"), "{json}");
        let back: ChatTemplateOverride = serde_json::from_str(&json).unwrap();
        assert_eq!(back, a);
        assert!(
            ChatTemplateOverride::read("/nonexistent/t.jinja")
                .unwrap_err()
                .to_string()
                .contains("/nonexistent/t.jinja")
        );
    }
}
