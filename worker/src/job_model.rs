//! Loading the model a job names, on this worker's device: checkpoint (and DPO reference, and
//! reward model), tokenizers (with the job's chat template in place of the policy's, when it
//! names one; the reward model always reads with its own), scorer thread, and the models'
//! identity (path and content hash, which covers the template in force) that the coordinator
//! checks every worker against.

use std::path::PathBuf;
use std::sync::Arc;

use apscore_core::job_definition::{ModelJob, REWARD_MODEL_IDENTITY};
use tracing::info;

use crate::model::kernel_cache::{self, KernelCacheError};
use crate::model::sizing::{DoesNotFit, MemoryNeeds, check_fits, memory_needs};
use crate::model::{Checkpoint, CheckpointError, ComputeDtype, DeviceSpec, ModelError, Packing};
use crate::scorer::{Scorer, ScorerOptions};
use crate::shard_scoring::ModelScoring;
use crate::tokenization::TokenizationParams;

/// Where this worker runs the model: its own business, unlike the [`ModelJob`].
#[derive(Debug, Clone)]
pub struct Placement {
    pub device: DeviceSpec,
    /// Padded tokens per forward batch; `None`: the job's, else the device's default.
    pub batch_tokens: Option<u64>,
    /// How pairs become rows of the forward pass; `None`: the kernels' default (the prompt
    /// once per pair on the CPU, a row per response on GPUs). The scores are the same either
    /// way, so this is the worker's business, not the job's.
    pub packing: Option<Packing>,
    /// Local folder for checkpoints downloaded from object storage.
    pub cache_dir: PathBuf,
    /// Where a GPU's kernel tuning is kept between processes ([`crate::model::kernel_cache`]).
    pub kernel_cache: PathBuf,
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
    #[error("{flag} {source_url} is {found} ({architecture}); {expected}")]
    WrongHead {
        flag: &'static str,
        source_url: String,
        found: &'static str,
        architecture: String,
        expected: &'static str,
    },
    #[error("cannot load the model {source_url}: {error}")]
    Load {
        source_url: String,
        #[source]
        error: Box<ModelError>,
    },
    #[error(transparent)]
    DoesNotFit(#[from] DoesNotFit),
    #[error(transparent)]
    KernelCache(#[from] KernelCacheError),
    #[error("loading the model stopped: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// What models loaded side by side need: all their weights, and the working memory of the
/// largest (they run one after the other on the same batch).
fn together(needs: impl Iterator<Item = MemoryNeeds>) -> MemoryNeeds {
    needs
        .reduce(|a, b| MemoryNeeds {
            weights: a.weights + b.weights,
            activations: a.activations.max(b.activations),
            log_softmax: a.log_softmax.max(b.log_softmax),
            process: a.process.max(b.process),
        })
        .expect("a job has a model")
}

/// Refuses a reward model given as the policy or reference, and a causal LM given as the
/// reward model, by the flag that named it.
fn check_head(
    flag: &'static str,
    checkpoint: &Checkpoint,
    reward_wanted: bool,
) -> Result<(), LoadError> {
    let is_reward = checkpoint.config.is_reward_model();
    if is_reward == reward_wanted {
        return Ok(());
    }
    let gguf = matches!(
        checkpoint.format,
        crate::model::CheckpointFormat::Gguf { .. }
    );
    Err(LoadError::WrongHead {
        flag,
        source_url: checkpoint.source.clone(),
        architecture: checkpoint.config.architecture.clone(),
        found: if is_reward {
            "a reward model"
        } else {
            "a causal language model"
        },
        expected: match (reward_wanted, gguf) {
            (true, true) => {
                "a reward model is a Hugging Face *ForSequenceClassification checkpoint \
                 directory (GGUF files carry no score head)"
            }
            (true, false) => {
                "--reward-model takes a *ForSequenceClassification checkpoint with one label"
            }
            (false, _) => "give it as --reward-model; this flag takes a *ForCausalLM checkpoint",
        },
    })
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
    // Before any download: a kernel cache that cannot be used is refused at once.
    if placement.device != DeviceSpec::Cpu {
        let dir = kernel_cache::keep_in(&placement.kernel_cache)?;
        info!(dir = %dir.display(), "GPU kernel tuning is read from and kept in this folder");
    }
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
    check_head("--model", &checkpoint, false)?;
    if let Some(reference) = &reference {
        check_head("--reference-model", reference, false)?;
    }
    let reward = match &job.reward_model {
        Some(reward) => {
            let checkpoint = open(&reward.source).await?;
            check_head("--reward-model", &checkpoint, true)?;
            Some(checkpoint)
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
    let reward_tokenizer = match (&reward, &job.reward_model) {
        (Some(checkpoint), Some(settings)) => Some(Arc::new(
            checkpoint
                .reward_tokenizer(settings.max_length as usize)
                .map_err(|e| LoadError::Load {
                    source_url: settings.source.clone(),
                    error: Box::new(e.into()),
                })?,
        )),
        _ => None,
    };
    if let Some(r) = &reward {
        info!(
            reward_model = %r.source,
            architecture = %r.config.architecture,
            parameters = r.config.parameter_count(),
            "loading the reward model beside the policy"
        );
    }
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
    let (hash_checkpoint, hash_reference, hash_reward) =
        (checkpoint.clone(), reference.clone(), reward.clone());
    let hash = tokio::task::spawn_blocking(move || {
        let model = hash_checkpoint.content_hash()?;
        let reference = hash_reference.map(|r| r.content_hash()).transpose()?;
        let reward = hash_reward.map(|r| r.content_hash()).transpose()?;
        Ok::<_, CheckpointError>((model, reference, reward))
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
        packing: placement.packing,
    };
    // Refused here, with the arithmetic, rather than failing mid-job: the CPU's memory, or the
    // CUDA device's free memory.
    let models = [
        Some((&checkpoint, job.max_length)),
        reference.as_ref().map(|r| (r, job.max_length)),
        reward
            .as_ref()
            .zip(job.reward_model.as_ref())
            .map(|(r, s)| (r, s.max_length)),
    ];
    let needs = models.into_iter().flatten().map(|(c, max_length)| {
        memory_needs(
            &c.config,
            placement.device,
            dtype,
            options.batch_tokens as u64,
            max_length,
        )
    });
    check_fits("the job's models", placement.device, together(needs))?;
    let scorer =
        tokio::task::spawn_blocking(move || Scorer::start(checkpoint, reference, reward, options))
            .await?
            .map_err(load_error)?;
    let (model_hash, reference_hash, reward_hash) =
        hash.await?.map_err(|e| load_error(e.into()))?;
    let mut identity = format!("{} ({model_hash})", job.source);
    if let Some(template) = &job.chat_template {
        identity.push_str(&format!("; chat template {}", template.identity()));
    }
    if let (Some(source), Some(hash)) = (&job.reference, reference_hash) {
        identity.push_str(&format!("; reference {source} ({hash})"));
    }
    if let (Some(reward), Some(hash)) = (&job.reward_model, reward_hash) {
        identity.push_str(&format!(
            "{REWARD_MODEL_IDENTITY}{} ({hash})",
            reward.source
        ));
    }
    info!(%identity, "model loaded");
    Ok(LoadedModel {
        scoring: ModelScoring {
            tokenizer: Arc::new(tokenizer),
            scorer,
            with_reference,
            reward_tokenizer,
        },
        identity,
        dtype,
        job: job.clone(),
    })
}
