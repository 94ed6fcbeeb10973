//! The scoring model: a causal LM that gives per-response log-probabilities.
//!
//! - [`family`]: the architectures and what each does differently (its [`family::Design`]).
//! - [`config`]: the model's shape and design from `config.json`.
//! - [`checkpoint`]: a Hugging Face checkpoint directory (local or in object storage).
//! - [`weights`]: safetensors tensors by name, cast to the compute dtype.
//! - [`gguf`]: llama.cpp GGUF files: the container, dequantization, the model and tokenizer
//!   they describe.
//! - [`packing`]: a pair as one row, its shared prefix once; the batch the model runs.
//! - [`host_kernels`]: the steps between the matmuls as one parallel pass each, on the CPU.
//! - [`ops`]: those steps on either kernels — the host kernels or burn's.
//! - [`logprobs`]: target-token log-probs at scored positions only, vocabulary in chunks.
//! - [`reward_head`]: where a reward model reads its hidden states; ArmoRM's gated head.
//! - [`sizing`]: what a model needs in memory on a device, and the refusal when it cannot fit.
//! - [`layers`]: the named parts (attention, MLP, decoder layer, norms, rotary, embedding).
//! - [`decoder`]: the forward pass every family runs, from token ids to final hidden states.
//! - `wgpu_device` (feature `wgpu`): which Vulkan or Metal adapter `--device wgpu:N` names.
//!
//! [`load_model`] picks the burn backend for a [`DeviceSpec`] and returns a
//! [`ScoringModel`], which scores batches of packed rows ([`packing`]: a pair's prompt once,
//! both responses after it).

pub mod checkpoint;
pub mod config;
pub mod decoder;
pub mod family;
pub mod gguf;
pub mod host_kernels;
pub mod kernel_cache;
pub mod layers;
pub mod logprobs;
pub mod ops;
pub mod packing;
pub mod reward_head;
pub mod sizing;
pub mod weights;
#[cfg(feature = "wgpu")]
pub mod wgpu_device;

use burn::tensor::backend::Backend;

pub use apscore_core::model_settings::ComputeDtype;
pub use checkpoint::{Checkpoint, CheckpointError, CheckpointFormat};
pub use config::{Head, ModelConfig};
use gguf::GgufFile;
pub use weights::{Weights, WeightsError};

use decoder::Decoder;
pub use ops::Kernels;
pub use packing::{PackedBatch, PackedRow, Packing};

/// Where the forward pass runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceSpec {
    Cpu,
    /// An NVIDIA GPU by index.
    Cuda(usize),
    /// A GPU through wgpu (Vulkan; Metal on macOS) by index, discrete GPUs first.
    Wgpu(usize),
}

impl std::str::FromStr for DeviceSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let indexed = |prefix: &str| s.strip_prefix(prefix).and_then(|n| n.parse().ok());
        match s {
            "cpu" => Ok(DeviceSpec::Cpu),
            "cuda" => Ok(DeviceSpec::Cuda(0)),
            "wgpu" => Ok(DeviceSpec::Wgpu(0)),
            _ => indexed("cuda:")
                .map(DeviceSpec::Cuda)
                .or_else(|| indexed("wgpu:").map(DeviceSpec::Wgpu))
                .ok_or_else(|| {
                    format!("unknown device `{s}`: use cpu, cuda, cuda:N, wgpu or wgpu:N")
                }),
        }
    }
}

impl std::fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceSpec::Cpu => f.write_str("cpu"),
            DeviceSpec::Cuda(n) => write!(f, "cuda:{n}"),
            DeviceSpec::Wgpu(n) => write!(f, "wgpu:{n}"),
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
    #[error("--dtype {dtype} needs --device cuda; --device {device} computes in f32")]
    DtypeNeedsCuda {
        dtype: &'static str,
        device: DeviceSpec,
    },
    #[error("--device {0} needs a build with CUDA support: cargo build --release --features cuda")]
    NoCuda(DeviceSpec),
    #[error("--device {device}: the CUDA driver does not start: {reason}")]
    CudaDriver { device: DeviceSpec, reason: String },
    #[error(
        "--device {0} needs a build with wgpu (Vulkan, Metal) support: \
         cargo build --release --features wgpu"
    )]
    NoWgpu(DeviceSpec),
    #[cfg(feature = "wgpu")]
    #[error(transparent)]
    Wgpu(#[from] wgpu_device::WgpuError),
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

    /// A reward model's score of each sequence of each row (rows built by
    /// [`PackedRow::conversations`]), in order.
    fn rewards(&self, rows: &[&PackedRow]) -> Vec<Vec<f32>>;

    /// The model's config (its head says whether it is a reward model).
    fn config(&self) -> &ModelConfig;
}

impl<B: Backend> ScoringModel for Decoder<B> {
    /// The prompt once per pair with the host kernels (CPU). burn's kernels (CUDA, wgpu) get
    /// one row per response: plain causal rows run burn's attention without a mask, and the
    /// masked path has not been timed on a GPU yet (on lavapipe it is checked correct).
    fn packing(&self) -> Packing {
        match self.ops.kernels {
            Kernels::Host => Packing::SharedPrefix,
            Kernels::Burn => Packing::Separate,
        }
    }

    fn rewards(&self, rows: &[&PackedRow]) -> Vec<Vec<f32>> {
        if rows.is_empty() {
            return Vec::new();
        }
        let batch = PackedBatch::new(rows);
        let len = batch.len;
        let readouts: Vec<(i64, i64)> = rows
            .iter()
            .enumerate()
            .flat_map(|(r, row)| {
                let at = move |i: usize| (r * len + i) as i64;
                row.readouts
                    .iter()
                    .map(move |o| (at(o.score), at(o.gating)))
            })
            .collect();
        let mut rewards = Decoder::rewards(self, &batch, &readouts).into_iter();
        rows.iter()
            .map(|row| rewards.by_ref().take(row.readouts.len()).collect())
            .collect()
    }

    fn config(&self) -> &ModelConfig {
        &self.config
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
        let logps = logprobs::target_logprobs(
            hidden,
            self.lm_head(),
            &positions,
            &targets,
            self.ops.kernels,
            self.config.design.final_softcap,
        );
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

/// Loads `checkpoint` onto `device` in `dtype` (on the CPU with the host kernels, on GPUs
/// with burn's).
pub fn load_model(
    checkpoint: &Checkpoint,
    device: DeviceSpec,
    dtype: ComputeDtype,
) -> Result<Box<dyn ScoringModel>, ModelError> {
    if dtype != ComputeDtype::F32 && !matches!(device, DeviceSpec::Cuda(_)) {
        return Err(ModelError::DtypeNeedsCuda {
            dtype: dtype.name(),
            device,
        });
    }
    let config = checkpoint.config.clone();
    match device {
        DeviceSpec::Cpu => load_cpu(config, read_weights(checkpoint)?, Kernels::Host)
            .map_err(weights_error(checkpoint)),
        DeviceSpec::Cuda(index) => {
            load_cuda(config, read_weights(checkpoint)?, dtype, index, device)
        }
        DeviceSpec::Wgpu(index) => load_wgpu(checkpoint, index),
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

/// Loads `checkpoint` on the CPU with burn's kernels in `dtype`: the code path a GPU runs in
/// bf16 or f16 (weights, activations and casts as there), slowly, so that the tests can check
/// it where there is no GPU. The host kernels compute in f32 only.
#[cfg(feature = "flex")]
pub fn load_cpu_model_in(
    checkpoint: &Checkpoint,
    dtype: ComputeDtype,
) -> Result<Box<dyn ScoringModel>, ModelError> {
    use burn::backend::flex::FlexDevice;
    type Cpu = burn::backend::Flex<f32, i32>;
    let weights = read_weights(checkpoint)?;
    let mut model = Decoder::<Cpu>::load(checkpoint.config.clone(), weights, dtype, &FlexDevice)
        .map_err(weights_error(checkpoint))?;
    model.ops.kernels = Kernels::Burn;
    Ok(Box::new(model))
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
            .and_then(|g| std::sync::Arc::new(g).weights(&checkpoint.config))
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
    let mut model = Decoder::<Cpu>::load(config, weights, ComputeDtype::F32, &device)?;
    model.ops.kernels = kernels;
    Ok(Box::new(model))
}

#[cfg(feature = "cuda")]
fn load_cuda(
    config: ModelConfig,
    weights: Weights,
    dtype: ComputeDtype,
    index: usize,
    spec: DeviceSpec,
) -> Result<Box<dyn ScoringModel>, ModelError> {
    use burn::backend::Cuda;
    use burn::backend::cuda::CudaDevice;
    check_cuda_driver(index, spec)?;
    let device = CudaDevice::new(index);
    let err = |source| ModelError::Weights {
        checkpoint: "model".into(),
        source,
    };
    Ok(match dtype {
        ComputeDtype::F32 => {
            Box::new(Decoder::<Cuda<f32, i32>>::load(config, weights, dtype, &device).map_err(err)?)
        }
        ComputeDtype::Bf16 => Box::new(
            Decoder::<Cuda<half::bf16, i32>>::load(config, weights, dtype, &device).map_err(err)?,
        ),
        ComputeDtype::F16 => Box::new(
            Decoder::<Cuda<half::f16, i32>>::load(config, weights, dtype, &device).map_err(err)?,
        ),
    })
}

/// Starts the CUDA driver on device `index` before burn does, on a thread of its own: burn's
/// runtime panics on its device thread when the driver cannot start, and the job would only
/// hear that the scoring thread ended. cudarc opens `libcuda.so` (then `libcuda.so.1`) and
/// panics where there is neither.
#[cfg(feature = "cuda")]
fn check_cuda_driver(index: usize, device: DeviceSpec) -> Result<(), ModelError> {
    use cudarc::driver::sys::CUresult;
    let start = move || {
        cudarc::driver::CudaContext::new(index)
            .map(|_| ())
            .map_err(|e| e.0)
    };
    let reason = match std::thread::spawn(start).join() {
        Ok(Ok(())) => return Ok(()),
        Ok(Err(CUresult::CUDA_ERROR_STUB_LIBRARY)) => "CUDA_ERROR_STUB_LIBRARY: the libcuda.so \
            found first is the CUDA toolkit's stub, not the driver; put the driver's folder \
            (where libcuda.so.1 is: /usr/lib/x86_64-linux-gnu, /usr/local/nvidia/lib64, …) \
            before the toolkit's `stubs` folder in LD_LIBRARY_PATH"
            .to_string(),
        Ok(Err(CUresult::CUDA_ERROR_INVALID_DEVICE)) => {
            format!("there is no CUDA device {index} (nvidia-smi lists the devices)")
        }
        Ok(Err(code)) => format!("{code:?}"),
        Err(panic) => panic_message(panic.as_ref()),
    };
    Err(ModelError::CudaDriver { device, reason })
}

/// The message of a caught panic (a GPU runtime that could not start).
#[cfg(any(feature = "cuda", feature = "wgpu"))]
fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "a panic without a message".into())
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

/// f32 on a wgpu adapter, found first so that a machine without one gets an error that names
/// the device; a failure while burn starts the device (wgpu panics there) is one too.
#[cfg(feature = "wgpu")]
fn load_wgpu(checkpoint: &Checkpoint, index: usize) -> Result<Box<dyn ScoringModel>, ModelError> {
    type Gpu = burn::backend::Wgpu<f32, i32>;
    let adapter = wgpu_device::select(index)?;
    let (config, weights) = (checkpoint.config.clone(), read_weights(checkpoint)?);
    let loaded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        Decoder::<Gpu>::load(config, weights, ComputeDtype::F32, &adapter.device)
    }));
    match loaded {
        Ok(model) => Ok(Box::new(model.map_err(weights_error(checkpoint))?)),
        Err(panic) => Err(wgpu_device::WgpuError::Failed {
            device: DeviceSpec::Wgpu(index),
            adapter: adapter.to_string(),
            message: panic_message(panic.as_ref()),
        }
        .into()),
    }
}

#[cfg(not(feature = "wgpu"))]
fn load_wgpu(_checkpoint: &Checkpoint, index: usize) -> Result<Box<dyn ScoringModel>, ModelError> {
    Err(ModelError::NoWgpu(DeviceSpec::Wgpu(index)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_parse_and_print_as_the_flag_says() {
        for (text, device, printed) in [
            ("cpu", DeviceSpec::Cpu, "cpu"),
            ("cuda", DeviceSpec::Cuda(0), "cuda:0"),
            ("cuda:3", DeviceSpec::Cuda(3), "cuda:3"),
            ("wgpu", DeviceSpec::Wgpu(0), "wgpu:0"),
            ("wgpu:1", DeviceSpec::Wgpu(1), "wgpu:1"),
        ] {
            assert_eq!(text.parse::<DeviceSpec>(), Ok(device), "{text}");
            assert_eq!(device.to_string(), printed);
            assert_eq!(printed.parse::<DeviceSpec>(), Ok(device));
        }
        for bad in ["gpu", "wgpu:", "wgpu:x", "cuda:-1", "vulkan"] {
            let err = bad.parse::<DeviceSpec>().unwrap_err();
            assert!(
                err.contains(&format!("`{bad}`")) && err.contains("wgpu:N"),
                "{err}"
            );
        }
    }
}
