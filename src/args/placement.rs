//! Where a process runs the model: its device and its local model cache.

use apscore_worker::job_model::Placement;
use apscore_worker::model::DeviceSpec;
use clap::Args;

/// Where this process runs the model.
#[derive(Debug, Args)]
#[command(next_help_heading = "Device")]
pub struct PlacementArgs {
    /// Where the forward pass runs: `cpu`, `cuda` or `cuda:N` (NVIDIA; a build with
    /// `--features cuda`), `wgpu` or `wgpu:N` (Vulkan or Metal GPUs, discrete first; a build
    /// with `--features wgpu`).
    #[arg(long, default_value = "cpu")]
    pub device: DeviceSpec,

    /// Local folder for checkpoints downloaded from object storage.
    /// Default: $XDG_CACHE_HOME/apscore or ~/.cache/apscore.
    #[arg(long, env = "APSCORE_CACHE")]
    pub model_cache: Option<std::path::PathBuf>,
}

impl PlacementArgs {
    pub fn placement(&self, batch_tokens: Option<u64>) -> Placement {
        Placement {
            device: self.device,
            batch_tokens,
            cache_dir: cache_dir(self.model_cache.as_deref()),
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
