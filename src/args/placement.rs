//! Where a process runs the model: its device and its local model cache.

use apscore_worker::job_model::Placement;
use apscore_worker::model::{DeviceSpec, Packing};
use clap::{Args, ValueEnum};

/// Where this process runs the model.
#[derive(Debug, Args)]
#[command(next_help_heading = "Device")]
pub struct PlacementArgs {
    /// Where the forward pass runs: `cpu`, `cuda` or `cuda:N` (NVIDIA; a build with
    /// `--features cuda`), `wgpu` or `wgpu:N` (Vulkan or Metal GPUs, discrete first; a build
    /// with `--features wgpu`).
    #[arg(long, default_value = "cpu")]
    pub device: DeviceSpec,

    /// How pairs become rows of the forward pass: `shared-prefix` runs a pair's prompt once,
    /// both responses after it, behind an attention mask; `separate` gives each response a
    /// row of its own, prompt included, with plain causal attention. The scores are the same;
    /// only the speed differs. `auto`: shared-prefix on the CPU, separate on GPUs
    /// (docs/performance.md has the figures).
    #[arg(long, value_enum, default_value_t = PackingChoice::Auto)]
    pub packing: PackingChoice,

    /// Local folder for checkpoints downloaded from object storage.
    /// Default: $XDG_CACHE_HOME/apscore or ~/.cache/apscore.
    #[arg(long, env = "APSCORE_CACHE")]
    pub model_cache: Option<std::path::PathBuf>,

    /// GPUs: the folder where kernel tuning is kept between processes. A fresh process times
    /// candidate kernels for each new shape before it scores (minutes at 8B layer shapes on
    /// CUDA); with the results here, the next one skips that. Keep it on a volume that
    /// outlives workers, one per GPU model. Default: `kernels` in the model cache.
    #[arg(long, env = "APSCORE_KERNEL_CACHE")]
    pub kernel_cache: Option<std::path::PathBuf>,
}

/// `--packing`: the device's default, or one layout for every model of the job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PackingChoice {
    Auto,
    SharedPrefix,
    Separate,
}

impl PlacementArgs {
    pub fn placement(&self, batch_tokens: Option<u64>) -> Placement {
        Placement {
            device: self.device,
            batch_tokens,
            packing: match self.packing {
                PackingChoice::Auto => None,
                PackingChoice::SharedPrefix => Some(Packing::SharedPrefix),
                PackingChoice::Separate => Some(Packing::Separate),
            },
            cache_dir: cache_dir(self.model_cache.as_deref()),
            kernel_cache: self
                .kernel_cache
                .clone()
                .unwrap_or_else(|| kernel_cache_dir(&cache_dir(self.model_cache.as_deref()))),
        }
    }
}

/// The local model cache: `dir` when given, else $XDG_CACHE_HOME/apscore or ~/.cache/apscore.
pub fn cache_dir(dir: Option<&std::path::Path>) -> std::path::PathBuf {
    if let Some(dir) = dir {
        return dir.to_path_buf();
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("apscore")
}

/// The default GPU kernel cache: `kernels` in the model cache.
pub fn kernel_cache_dir(model_cache: &std::path::Path) -> std::path::PathBuf {
    model_cache.join("kernels")
}
