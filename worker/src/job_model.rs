//! Loading the model a job names, on this worker's device: checkpoint (and DPO reference),
//! tokenizer (with the job's chat template in place of the checkpoint's, when it names one),
//! scorer thread, and the model's identity (path and content hash, which covers the template in
//! force) that the coordinator checks every worker against.

use std::path::PathBuf;
use std::sync::Arc;

use apscore_core::job_definition::ModelJob;
use tracing::info;

use crate::model::{Checkpoint, CheckpointError, ComputeDtype, DeviceSpec, ModelError};
use crate::scorer::{Scorer, ScorerOptions};
use crate::shard_scoring::ModelScoring;
use crate::tokenization::TokenizationParams;

/// Where this worker runs the model: its own business, unlike the [`ModelJob`].
#[derive(Debug, Clone)]
pub struct Placement {
    pub device: DeviceSpec,
    /// Padded tokens per forward batch; `None`: the job's, else the device's default.
    pub batch_tokens: Option<u64>,
    /// Local folder for checkpoints downloaded from object storage.
    pub cache_dir: PathBuf,
}

/// Default padded tokens per batch: small batches stay in cache on a CPU (measured fastest),
/// large ones fill a GPU. Through wgpu a quarter of CUDA's: Vulkan and Metal limit one
/// buffer's size (often to 2 GiB), and a batch's largest activation (the MLP's, tokens × 2 ×
/// intermediate size in f32) must fit one.
pub fn default_batch_tokens(device: DeviceSpec) -> u64 {
    match device {
        DeviceSpec::Cpu => 512,
        DeviceSpec::Cuda(_) => 32_768,
        DeviceSpec::Wgpu(_) => 8_192,
    }
}

/// A model loaded for a job.
#[derive(Clone)]
pub struct LoadedModel {
    pub scoring: ModelScoring,
    /// `source (sha256:…)`, and the reference's the same way.
    pub identity: String,
    pub dtype: ComputeDtype,
    /// The job's model this was loaded for.
    pub job: ModelJob,
}

/// The model could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot open the model {source_url}: {error}")]
    Open {
        source_url: String,
        #[source]
        error: Box<CheckpointError>,
    },
    #[error(
        "the reference model {reference} has a vocabulary of {reference_vocab} tokens, the model \
         {model} one of {model_vocab}: they must share the tokenizer"
    )]
    VocabMismatch {
        reference: String,
        reference_vocab: usize,
        model: String,
        model_vocab: usize,
    },
    #[error("cannot load the model {source_url}: {error}")]
    Load {
        source_url: String,
        #[source]
        error: Box<ModelError>,
    },
    #[error("loading the model stopped: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// The tokenization parameters a job names.
pub fn tokenization(job: &ModelJob) -> TokenizationParams {
    TokenizationParams {
        profile: job.profile,
        max_length: job.max_length as usize,
        max_prompt_length: job.max_prompt_length as usize,
        truncation_mode: job.truncation_mode,
    }
}

/// Opens the job's checkpoint (and reference), loads them on `placement.device` and sets up
/// the tokenizer.
pub async fn load_job_model(
    job: &ModelJob,
    placement: &Placement,
) -> Result<LoadedModel, LoadError> {
    let dtype = job.dtype;
    let params = tokenization(job);
    let open = |source: &str| {
        let source = source.to_string();
        let cache = placement.cache_dir.clone();
        async move {
            Checkpoint::open(&source, &cache)
                .await
                .map_err(|error| LoadError::Open {
                    source_url: source,
                    error: Box::new(error),
                })
        }
    };
    let mut checkpoint = open(&job.source).await?;
    if let Some(template) = &job.chat_template {
        info!(template = %template.identity(), "the job's chat template replaces the checkpoint's");
        checkpoint.chat_template = template.text.clone();
    }
    let reference = match &job.reference {
        Some(source) => {
            let reference = open(source).await?;
            if reference.config.vocab_size != checkpoint.config.vocab_size {
                return Err(LoadError::VocabMismatch {
                    reference: source.clone(),
                    reference_vocab: reference.config.vocab_size,
                    model: job.source.clone(),
                    model_vocab: checkpoint.config.vocab_size,
                });
            }
            Some(reference)
        }
        None => None,
    };
    let load_error = |error: ModelError| LoadError::Load {
        source_url: job.source.clone(),
        error: Box::new(error),
    };
    let tokenizer = checkpoint
        .pair_tokenizer(params)
        .map_err(|e| load_error(e.into()))?;
    let c = &checkpoint.config;
    info!(
        model = %job.source,
        architecture = %c.architecture,
        parameters = c.parameter_count(),
        layers = c.num_layers,
        hidden = c.hidden_size,
        vocab = c.vocab_size,
        device = %placement.device,
        dtype = dtype.name(),
        "loading the model"
    );
    let (hash_checkpoint, hash_reference) = (checkpoint.clone(), reference.clone());
    let hash = tokio::task::spawn_blocking(move || {
        let model = hash_checkpoint.content_hash()?;
        let reference = hash_reference.map(|r| r.content_hash()).transpose()?;
        Ok::<_, CheckpointError>((model, reference))
    });
    let with_reference = reference.is_some();
    let options = ScorerOptions {
        device: placement.device,
        dtype,
        batch_tokens: placement
            .batch_tokens
            .or(job.batch_tokens)
            .unwrap_or_else(|| default_batch_tokens(placement.device))
            as usize,
    };
    let scorer = tokio::task::spawn_blocking(move || Scorer::start(checkpoint, reference, options))
        .await?
        .map_err(load_error)?;
    let (model_hash, reference_hash) = hash.await?.map_err(|e| load_error(e.into()))?;
    let mut identity = format!("{} ({model_hash})", job.source);
    if let Some(template) = &job.chat_template {
        identity.push_str(&format!("; chat template {}", template.identity()));
    }
    if let (Some(source), Some(hash)) = (&job.reference, reference_hash) {
        identity.push_str(&format!("; reference {source} ({hash})"));
    }
    info!(%identity, "model loaded");
    Ok(LoadedModel {
        scoring: ModelScoring {
            tokenizer: Arc::new(tokenizer),
            scorer,
            with_reference,
        },
        identity,
        dtype,
        job: job.clone(),
    })
}
