//! What a model needs in memory on a device: its weights, the working memory of one forward
//! batch of `--batch-tokens` padded tokens, and the total — so that `inspect-model` can say
//! how to size a pod and `run`/`worker` can refuse at start-up, with the arithmetic, a device
//! that cannot hold the job, instead of failing mid-job.
//!
//! The estimate follows what the forward pass keeps alive (`docs/operations.md#sizing`):
//!
//! - **weights**: every parameter in the compute dtype (f32 on the CPU);
//! - **activations**: at the widest point of a decoder layer, for `T` batch tokens — the
//!   residual stream and its normed copy (`2·T·hidden`), the fused gate and up projections and
//!   their product (`3·T·intermediate`), the q/k/v projections and the attention output
//!   (`T·(2·heads + 2·kv_heads)·head_dim`); plus, where burn's generic attention runs (Gemma 2
//!   on a GPU: its flash kernel has no soft-cap), the score blocks, `heads·T·max_length`;
//! - **log-softmax**: the LM head runs only at scored positions (at most `T`), over the
//!   vocabulary in chunks of `max(2^20, 256·T)` logits (three f32 copies live: logits, their
//!   exponentials, the running sums), and the target rows of the head (`T·hidden`);
//! - a fixed allowance for the process (runtime, tokenizer, buffers): 256 MiB.
//!
//! A model that does not fit one device is out of scope: apscore has no tensor parallelism.

use super::config::{Head, ModelConfig};
use super::logprobs::CHUNK_ELEMENTS;
use super::{ComputeDtype, DeviceSpec};

/// The process's own allowance beside the model.
const PROCESS_BYTES: u64 = 256 << 20;

/// Bytes a model needs on one device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryNeeds {
    pub weights: u64,
    pub activations: u64,
    pub log_softmax: u64,
    pub process: u64,
}

impl MemoryNeeds {
    pub fn total(&self) -> u64 {
        self.weights + self.activations + self.log_softmax + self.process
    }

    /// `weights 15.0 GiB + activations 1.2 GiB + log-softmax 102 MiB + process 256 MiB =
    /// 16.5 GiB`.
    pub fn arithmetic(&self) -> String {
        format!(
            "weights {} + activations {} + log-softmax {} + process {} = {}",
            gib(self.weights),
            gib(self.activations),
            gib(self.log_softmax),
            gib(self.process),
            gib(self.total())
        )
    }
}

/// `n` bytes in GiB with one decimal, or in MiB below 1 GiB.
pub fn gib(n: u64) -> String {
    if n < 1 << 30 {
        format!("{} MiB", n.div_ceil(1 << 20))
    } else {
        format!("{:.1} GiB", n as f64 / (1u64 << 30) as f64)
    }
}

/// What `config` needs on `device` in `dtype`, batches of `batch_tokens` padded tokens,
/// sequences of at most `max_length` tokens.
pub fn memory_needs(
    config: &ModelConfig,
    device: DeviceSpec,
    dtype: ComputeDtype,
    batch_tokens: u64,
    max_length: u64,
) -> MemoryNeeds {
    let e = match dtype {
        ComputeDtype::F32 => 4,
        ComputeDtype::Bf16 | ComputeDtype::F16 => 2,
    };
    let t = batch_tokens;
    let (h, i) = (config.hidden_size as u64, config.intermediate_size as u64);
    let (heads, kv) = (config.num_heads as u64, config.num_kv_heads as u64);
    let d = config.head_dim as u64;
    let mut activations = t * (2 * h + 3 * i + (2 * heads + 2 * kv) * d) * e;
    // burn's generic attention keeps every score block where its flash kernel cannot run.
    let attention = &config.design.attention;
    let default_scale = 1.0 / (d as f64).sqrt();
    let generic_attention = !matches!(device, DeviceSpec::Cpu)
        && (attention.softcap.is_some() || (attention.scale - default_scale).abs() > 1e-12);
    if generic_attention {
        activations += heads * t * max_length.min(t) * e;
    }
    let log_softmax = match config.head {
        Head::LanguageModel => {
            let vocab = config.vocab_size as u64;
            let block = (CHUNK_ELEMENTS as u64).max(256 * t).min(t * vocab);
            3 * block * 4 + t * h * e
        }
        // A reward head reads two positions per conversation: nothing vocabulary-sized.
        Head::Score { .. } | Head::Gated { .. } => 0,
    };
    MemoryNeeds {
        weights: config.parameter_count() * e,
        activations,
        log_softmax,
        process: PROCESS_BYTES,
    }
}

/// Memory this machine has for a CPU job: `MemAvailable` of `/proc/meminfo` (Linux), or the
/// cgroup's limit less its usage when that is smaller (a container's own ceiling).
pub fn available_host_memory() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let available = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)?;
    let cgroup = || -> Option<u64> {
        let read = |f: &str| std::fs::read_to_string(format!("/sys/fs/cgroup/{f}")).ok();
        let limit: u64 = read("memory.max")?.trim().parse().ok()?;
        let used: u64 = read("memory.current")?.trim().parse().ok()?;
        Some(limit.saturating_sub(used))
    };
    Some(cgroup().map_or(available, |c| c.min(available)))
}

/// The device cannot hold the model.
#[derive(Debug, thiserror::Error)]
#[error(
    "{what}: {need} needed on {device} ({arithmetic}) but {have} available; use a larger \
     machine{batch_hint} (apscore has no tensor parallelism: a model must fit one device)",
    need = gib(needs.total()),
    arithmetic = needs.arithmetic(),
    have = gib(*available),
    batch_hint = if needs.activations + needs.log_softmax > needs.weights / 10 {
        " or a smaller --batch-tokens"
    } else {
        ""
    }
)]
pub struct DoesNotFit {
    pub what: String,
    pub device: DeviceSpec,
    pub needs: MemoryNeeds,
    pub available: u64,
}

/// Free memory of CUDA device `index` now (what other processes hold is not free), from the
/// driver; `None` when it cannot tell (no driver, no such device: loading the model then says
/// why). Asked on a thread of its own, so that no thread of the job is left bound to the
/// context opened for the question.
#[cfg(feature = "cuda")]
pub fn available_cuda_memory(index: usize) -> Option<u64> {
    let ask = move || -> Option<u64> {
        let context = cudarc::driver::CudaContext::new(index).ok()?;
        let (free, _total) = context.mem_get_info().ok()?;
        Some(free as u64)
    };
    // The driver library is opened on first use and panics where it is missing.
    std::thread::spawn(ask).join().ok().flatten()
}

/// Without the `cuda` feature there is no CUDA device to ask.
#[cfg(not(feature = "cuda"))]
pub fn available_cuda_memory(_index: usize) -> Option<u64> {
    None
}

/// Refuses `needs` on `device` when it has less memory available: the CPU's from the machine
/// ([`available_host_memory`]), a CUDA device's from its driver ([`available_cuda_memory`]).
/// Other devices are not asked.
pub fn check_fits(what: &str, device: DeviceSpec, needs: MemoryNeeds) -> Result<(), DoesNotFit> {
    let available = match device {
        DeviceSpec::Cpu => available_host_memory(),
        DeviceSpec::Cuda(index) => available_cuda_memory(index),
        DeviceSpec::Wgpu(_) => None,
    };
    match available {
        Some(available) if available < needs.total() => Err(DoesNotFit {
            what: what.to_string(),
            device,
            needs,
            available,
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> ModelConfig {
        ModelConfig::parse(text, "config.json").unwrap()
    }

    /// Llama-3-8B's config.json shape.
    pub const LLAMA3_8B: &str = r#"{"architectures": ["LlamaForCausalLM"], "hidden_size": 4096,
        "intermediate_size": 14336, "num_attention_heads": 32, "num_hidden_layers": 32,
        "num_key_value_heads": 8, "vocab_size": 128256, "rope_theta": 500000.0,
        "rms_norm_eps": 1e-05, "tie_word_embeddings": false}"#;

    #[test]
    fn an_8b_model_needs_its_weights_and_a_bounded_working_set() {
        let c = config(LLAMA3_8B);
        assert_eq!(c.parameter_count(), 8_030_261_248);
        let cpu = memory_needs(&c, DeviceSpec::Cpu, ComputeDtype::F32, 512, 2048);
        assert_eq!(cpu.weights, 8_030_261_248 * 4);
        // 512 tokens: T·(2h + 3i + (2·32 + 2·8)·128)·4 bytes.
        assert_eq!(cpu.activations, 512 * (2 * 4096 + 3 * 14336 + 80 * 128) * 4);
        // The vocabulary block is bounded by the batch, not the vocabulary.
        assert_eq!(cpu.log_softmax, 3 * (1 << 20) * 4 + 512 * 4096 * 4);
        let gpu = memory_needs(&c, DeviceSpec::Cuda(0), ComputeDtype::Bf16, 32768, 2048);
        assert_eq!(gpu.weights, 8_030_261_248 * 2);
        assert_eq!(gpu.log_softmax, 3 * 256 * 32768 * 4 + 32768 * 4096 * 2);
        assert!(gpu.total() < 24 << 30, "{}", gpu.arithmetic());
        // Doubling the batch doubles the working memory, never the weights.
        let twice = memory_needs(&c, DeviceSpec::Cuda(0), ComputeDtype::Bf16, 65536, 2048);
        assert_eq!(twice.weights, gpu.weights);
        assert_eq!(twice.activations, 2 * gpu.activations);
    }

    /// Gemma-2-9B's and Qwen2.5-7B's config.json shapes.
    const GEMMA2_9B: &str = r#"{"architectures": ["Gemma2ForCausalLM"], "hidden_size": 3584,
        "intermediate_size": 14336, "num_attention_heads": 16, "num_hidden_layers": 42,
        "num_key_value_heads": 8, "head_dim": 256, "vocab_size": 256000,
        "query_pre_attn_scalar": 256, "attn_logit_softcapping": 50.0,
        "final_logit_softcapping": 30.0, "sliding_window": 4096}"#;
    const QWEN25_7B: &str = r#"{"architectures": ["Qwen2ForCausalLM"], "hidden_size": 3584,
        "intermediate_size": 18944, "num_attention_heads": 28, "num_hidden_layers": 28,
        "num_key_value_heads": 4, "vocab_size": 152064, "tie_word_embeddings": false}"#;

    /// The table of `docs/operations.md#sizing`: each suggested `--batch-tokens` fits its
    /// GPU with a tenth to spare (`cargo test -p apscore-worker sizing -- --nocapture` prints
    /// the figures).
    #[test]
    fn the_documented_batch_sizes_fit_their_gpus() {
        for (name, text, suggested) in [
            (
                "Llama-3-8B",
                LLAMA3_8B,
                [(24u64, 8192u64), (40, 32768), (80, 65536)],
            ),
            (
                "Gemma-2-9B",
                GEMMA2_9B,
                [(24, 2048), (40, 8192), (80, 16384)],
            ),
            (
                "Qwen2.5-7B",
                QWEN25_7B,
                [(24, 8192), (40, 32768), (80, 65536)],
            ),
        ] {
            let c = config(text);
            let cpu = memory_needs(&c, DeviceSpec::Cpu, ComputeDtype::F32, 512, 2048);
            println!(
                "{name}: {:.2} B parameters; CPU f32 at 512: {}",
                c.parameter_count() as f64 / 1e9,
                cpu.arithmetic()
            );
            for (gpu, batch) in suggested {
                let needs = memory_needs(&c, DeviceSpec::Cuda(0), ComputeDtype::Bf16, batch, 2048);
                println!(
                    "  {gpu} GB GPU, bf16, --batch-tokens {batch}: {}",
                    needs.arithmetic()
                );
                assert!(
                    needs.total() as f64 <= 0.9 * (gpu as f64) * 1e9,
                    "{name} on {gpu} GB: {}",
                    needs.arithmetic()
                );
            }
        }
    }

    #[test]
    fn a_device_too_small_is_refused_with_the_arithmetic() {
        let c = config(LLAMA3_8B);
        let needs = memory_needs(&c, DeviceSpec::Cpu, ComputeDtype::F32, 512, 2048);
        let err = DoesNotFit {
            what: "the model m".into(),
            device: DeviceSpec::Cpu,
            needs,
            available: 8 << 30,
        }
        .to_string();
        assert!(
            err.contains("the model m: 30.3 GiB needed on cpu")
                && err.contains("weights 29.9 GiB + activations 120 MiB + log-softmax 20 MiB")
                && err.contains("8.0 GiB available")
                && err.contains("tensor parallelism"),
            "{err}"
        );
    }

    #[test]
    fn only_a_device_that_says_what_it_has_can_refuse() {
        let c = config(LLAMA3_8B);
        let huge = MemoryNeeds {
            weights: u64::MAX / 4,
            ..memory_needs(&c, DeviceSpec::Cpu, ComputeDtype::F32, 512, 2048)
        };
        let err = check_fits("the job's models", DeviceSpec::Cpu, huge).unwrap_err();
        assert_eq!(err.device, DeviceSpec::Cpu);
        // wgpu adapters are not asked; a CUDA device answers only through its driver.
        assert!(check_fits("m", DeviceSpec::Wgpu(0), huge).is_ok());
        if available_cuda_memory(0).is_none() {
            assert!(check_fits("m", DeviceSpec::Cuda(0), huge).is_ok());
        } else {
            assert!(check_fits("m", DeviceSpec::Cuda(0), huge).is_err());
        }
    }
}
