//! The model of a job and how pairs are tokenized and batched for it.

use apscore_core::job_definition::{
    ChatTemplateFileError, ChatTemplateOverride, ModelJob, RewardModelJob,
};
use apscore_core::model_settings::{ComputeDtype, Profile, TruncationMode};
use clap::{Args, ValueEnum};

/// The model and how pairs are tokenized and batched for it: part of the job, the same on
/// every worker.
#[derive(Debug, Args)]
#[command(next_help_heading = "Model")]
pub struct ModelArgs {
    /// Hugging Face checkpoint directory (config.json, *.safetensors, tokenizer.json,
    /// tokenizer_config.json or chat_template.jinja) or a llama.cpp GGUF file (*.gguf); local
    /// or in object storage (s3://, gs://, az://), downloaded once into --model-cache.
    /// Llama (and SmolLM2), Mistral, Qwen2, Qwen3 and Gemma 2 families. Required by `run`; a
    /// coordinator without it ranks precomputed log-probs, like `rank`.
    #[arg(long, short)]
    pub model: Option<String>,

    /// A second checkpoint scored as the DPO reference model (same tokenizer as --model):
    /// adds ref_chosen_logps, ref_rejected_logps and
    /// dpo_margin = (chosen_logps − ref_chosen_logps) − (rejected_logps − ref_rejected_logps)
    /// to scores/; rank by it with --implicit dpo.
    #[arg(long)]
    pub reference_model: Option<String>,

    /// A reward model that gives the explicit margin: a Hugging Face
    /// `*ForSequenceClassification` checkpoint with one label (Llama, Mistral, Qwen2, Qwen3,
    /// Gemma 2; Skywork-Reward, GRM and the like), local or in object storage. Each
    /// conversation (the prompt, then the response as an assistant turn) is rendered by the
    /// reward model's own chat template and scored as transformers scores a batch of one.
    /// Adds rm_chosen and rm_rejected to scores/; rm_margin = rm_chosen − rm_rejected is then
    /// the explicit margin the ranking uses, and the data's own margin, when it has one, is
    /// kept as data_rm_margin and compared in summary.json and the report. Needs --model.
    #[arg(long, value_name = "DIR")]
    pub reward_model: Option<String>,

    /// Longest conversation the reward model reads, in tokens: a longer one rejects its row
    /// (with the reason in rejected_rows.parquet), never truncated.
    #[arg(long, default_value_t = 4096, value_parser = clap::value_parser!(u64).range(1..))]
    pub reward_max_length: u64,

    /// A Jinja chat template that replaces the checkpoint's (as SimPO's training configs
    /// replace Gemma 2's): a local file, read once here and sent to every worker. Its name and
    /// sha256 go into the job id and summary.json.
    #[arg(long, value_name = "FILE")]
    pub chat_template: Option<String>,

    /// Compute dtype: `f32`, or `bf16`/`f16` on CUDA. Weights are cast to it when loaded.
    #[arg(long, default_value = "f32")]
    pub dtype: ComputeDtype,

    /// Padded tokens per forward batch (sequences × longest sequence); sequences of similar
    /// length are batched together, and a longer sequence goes alone. Default: 512 on CPU
    /// (small batches stay in cache: measured fastest), 32768 on CUDA (large batches fill the
    /// GPU), 8192 on wgpu (one activation must fit one Vulkan or Metal buffer).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub batch_tokens: Option<u64>,

    /// Tokenization profile: `simpo` (the reference code's preprocessing: prompt and
    /// response rendered separately, BOS/EOS added) or `conversation` (prompt + response
    /// rendered as one conversation; scores what follows the generation prompt).
    #[arg(long, value_enum, default_value_t = ProfileArg::Simpo)]
    pub profile: ProfileArg,

    /// Longest prompt + response in tokens; longer pairs are truncated (and flagged).
    #[arg(long, default_value_t = 2048)]
    pub max_length: usize,

    /// Prompt tokens kept when a pair is longer than --max-length.
    #[arg(long, default_value_t = 1800)]
    pub max_prompt_length: usize,

    /// Which end of a too-long prompt is kept.
    #[arg(long, value_enum, default_value_t = TruncationArg::KeepEnd)]
    pub truncation_mode: TruncationArg,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ProfileArg {
    Simpo,
    Conversation,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum TruncationArg {
    KeepEnd,
    KeepStart,
}

impl ModelArgs {
    /// The model part of the job, if there is a model; fails when the chat template file
    /// cannot be read.
    pub fn job(&self) -> Result<Option<ModelJob>, ChatTemplateFileError> {
        let Some(source) = self.model.clone() else {
            return Ok(None);
        };
        let chat_template = self
            .chat_template
            .as_deref()
            .map(ChatTemplateOverride::read)
            .transpose()?;
        Ok(Some(ModelJob {
            source,
            reference: self.reference_model.clone(),
            dtype: self.dtype,
            profile: match self.profile {
                ProfileArg::Simpo => Profile::Simpo,
                ProfileArg::Conversation => Profile::Conversation,
            },
            max_length: self.max_length as u64,
            max_prompt_length: self.max_prompt_length as u64,
            truncation_mode: match self.truncation_mode {
                TruncationArg::KeepEnd => TruncationMode::KeepEnd,
                TruncationArg::KeepStart => TruncationMode::KeepStart,
            },
            batch_tokens: self.batch_tokens,
            chat_template,
            reward_model: self.reward_model.clone().map(|source| RewardModelJob {
                source,
                max_length: self.reward_max_length,
            }),
        }))
    }
}
