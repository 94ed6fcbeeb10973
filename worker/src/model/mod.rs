//! The scoring model: a causal LM that gives per-response log-probabilities.
//!
//! - [`config`]: the model's shape from `config.json`.
//! - [`checkpoint`]: a Hugging Face checkpoint directory (local or in object storage).
//! - [`weights`]: safetensors tensors by name, cast to the compute dtype.
//! - [`gguf`]: llama.cpp GGUF files: the container, dequantization, the model and tokenizer
//!   they describe.
//! - [`llama`]: the Llama-family forward pass in burn.
//! - [`host_kernels`]: its element-wise steps as one parallel pass each, on the CPU.
//! - [`logprobs`]: target-token log-probs at scored positions only, vocabulary in chunks.
//! - [`packing`]: a pair as one row, its shared prefix once; the batch the model runs.
//!
//! [`load_model`] picks the burn backend for a [`DeviceSpec`] and returns a
//! [`ScoringModel`], which scores batches of packed rows ([`packing`]: a pair's prompt once,
//! both responses after it).

pub mod checkpoint;
pub mod config;
pub mod gguf;
pub mod host_kernels;
pub mod llama;
pub mod logprobs;
pub mod packing;
pub mod weights;

use burn::tensor::backend::Backend;

pub use apscore_core::model_settings::ComputeDtype;
pub use checkpoint::{Checkpoint, CheckpointError, CheckpointFormat};
pub use config::ModelConfig;
use gguf::GgufFile;
pub use weights::{Weights, WeightsError};

pub use llama::Kernels;
use llama::Llama;
pub use packing::{PackedBatch, PackedRow, Packing};

/// Where the forward pass runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceSpec {
    Cpu,
    /// An NVIDIA GPU by index.
    Cuda(usize),
}

impl std::str::FromStr for DeviceSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "cpu" => Ok(DeviceSpec::Cpu),
            "cuda" => Ok(DeviceSpec::Cuda(0)),
            other => other
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(DeviceSpec::Cuda)
                .ok_or_else(|| format!("unknown device `{other}`: use cpu, cuda or cuda:N")),
        }
    }
}

impl std::fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceSpec::Cpu => f.write_str("cpu"),
            DeviceSpec::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// The model cannot be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error("{checkpoint}: {source}")]
    Weights {
        checkpoint: String,
        #[source]
        source: WeightsError,
    },
    #[error("--dtype {0} needs --device cuda; the CPU backend computes in f32")]
    DtypeOnCpu(&'static str),
    #[error("--device {0} needs a build with CUDA support: cargo build --release --features cuda")]
    NoCuda(DeviceSpec),
}

/// Log-prob sum and token count of one scored response.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ResponseScore {
    pub sum: f64,
    pub tokens: u64,
}

/// A loaded model that scores packed rows.
pub trait ScoringModel {
    /// Scores each row's responses; one result per response of each row, in order.
    fn score(&self, rows: &[&PackedRow]) -> Vec<Vec<ResponseScore>>;

    /// How this model wants pairs packed into rows.
    fn packing(&self) -> Packing;
}

impl<B: Backend> ScoringModel for Llama<B> {
    /// The prompt once per pair with the host kernels (CPU). burn's kernels (CUDA) get one
    /// row per response: plain causal rows run burn's flash attention without a mask, and
    /// the masked path of the flash kernel has not been measured on a GPU yet.
    fn packing(&self) -> Packing {
        match self.kernels {
            Kernels::Host => Packing::SharedPrefix,
            Kernels::Burn => Packing::Separate,
        }
    }

    fn score(&self, rows: &[&PackedRow]) -> Vec<Vec<ResponseScore>> {
        if rows.is_empty() {
            return Vec::new();
        }
        let batch = PackedBatch::new(rows);
        let (positions, targets): (Vec<i64>, Vec<i64>) = rows
            .iter()
            .enumerate()
            .flat_map(|(r, row)| {
                row.scored
                    .iter()
                    .map(move |s| ((r * batch.len + s.at) as i64, s.target as i64))
            })
            .unzip();
        let hidden = self.hidden_states(&batch);
        let logps =
            logprobs::target_logprobs(hidden, self.lm_head(), &positions, &targets, self.kernels);
        let mut logps = logps.into_iter();
        rows.iter()
            .map(|row| {
                let mut scores = vec![
                    ResponseScore {
                        sum: 0.0,
                        tokens: 0
                    };
                    row.responses
                ];
                for (s, logp) in row.scored.iter().zip(logps.by_ref()) {
                    scores[s.response].sum += logp as f64;
                    scores[s.response].tokens += 1;
                }
                scores
            })
            .collect()
    }
}

/// Loads `checkpoint` onto `device` in `dtype` (on the CPU with the host kernels).
pub fn load_model(
    checkpoint: &Checkpoint,
    device: DeviceSpec,
    dtype: ComputeDtype,
) -> Result<Box<dyn ScoringModel>, ModelError> {
    let weights = read_weights(checkpoint)?;
    let config = checkpoint.config.clone();
    match device {
        DeviceSpec::Cpu => {
            if dtype != ComputeDtype::F32 {
                return Err(ModelError::DtypeOnCpu(dtype.name()));
            }
            load_cpu(config, weights, Kernels::Host).map_err(weights_error(checkpoint))
        }
        DeviceSpec::Cuda(index) => load_cuda(config, weights, dtype, index, device),
    }
}

/// Loads `checkpoint` on the CPU in f32 with `kernels`: [`Kernels::Burn`] there runs the
/// code path a GPU runs, so that the tests can check it.
pub fn load_cpu_model(
    checkpoint: &Checkpoint,
    kernels: Kernels,
) -> Result<Box<dyn ScoringModel>, ModelError> {
    let weights = read_weights(checkpoint)?;
    load_cpu(checkpoint.config.clone(), weights, kernels).map_err(weights_error(checkpoint))
}

fn weights_error(checkpoint: &Checkpoint) -> impl Fn(WeightsError) -> ModelError + '_ {
    |source| ModelError::Weights {
        checkpoint: checkpoint.source.clone(),
        source,
    }
}

fn read_weights(checkpoint: &Checkpoint) -> Result<Weights, ModelError> {
    match &checkpoint.format {
        CheckpointFormat::Safetensors { weight_files, .. } => {
            Weights::read_safetensors(weight_files).map_err(weights_error(checkpoint))
        }
        CheckpointFormat::Gguf { file } => GgufFile::read(file)
            .and_then(|g| g.weights(&checkpoint.config))
            .map_err(|e| ModelError::Checkpoint(e.into())),
    }
}

#[cfg(feature = "flex")]
fn load_cpu(
    config: ModelConfig,
    weights: Weights,
    kernels: Kernels,
) -> Result<Box<dyn ScoringModel>, WeightsError> {
    type Cpu = burn::backend::Flex<f32, i32>;
    let device = burn::backend::flex::FlexDevice;
    let mut model = Llama::<Cpu>::load(config, weights, ComputeDtype::F32, &device)?;
    model.kernels = kernels;
    Ok(Box::new(model))
}

#[cfg(feature = "cuda")]
fn load_cuda(
    config: ModelConfig,
    weights: Weights,
    dtype: ComputeDtype,
    index: usize,
    _spec: DeviceSpec,
) -> Result<Box<dyn ScoringModel>, ModelError> {
    use burn::backend::Cuda;
    use burn::backend::cuda::CudaDevice;
    let device = CudaDevice::new(index);
    let err = |source| ModelError::Weights {
        checkpoint: "model".into(),
        source,
    };
    Ok(match dtype {
        ComputeDtype::F32 => {
            Box::new(Llama::<Cuda<f32, i32>>::load(config, weights, dtype, &device).map_err(err)?)
        }
        ComputeDtype::Bf16 => Box::new(
            Llama::<Cuda<half::bf16, i32>>::load(config, weights, dtype, &device).map_err(err)?,
        ),
        ComputeDtype::F16 => Box::new(
            Llama::<Cuda<half::f16, i32>>::load(config, weights, dtype, &device).map_err(err)?,
        ),
    })
}

#[cfg(not(feature = "cuda"))]
fn load_cuda(
    _config: ModelConfig,
    _weights: Weights,
    _dtype: ComputeDtype,
    _index: usize,
    spec: DeviceSpec,
) -> Result<Box<dyn ScoringModel>, ModelError> {
    Err(ModelError::NoCuda(spec))
}
