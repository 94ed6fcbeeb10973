//! Where a GPU's kernel tuning is kept between processes.
//!
//! burn's GPU backends (CubeCL) autotune: the first time a process meets a new shape of
//! matmul, attention or reduction (shapes are rounded to powers of two), it compiles and
//! times every candidate kernel and keeps the fastest. On CUDA that is most of a fresh
//! process's first batches — minutes at 8B layer shapes (docs/performance.md, "On a GPU").
//! The results are written to a cache on disk as they come, and a later process reads them
//! and skips the tuning. CubeCL's own default for that cache is the `target/` folder of the
//! Cargo project above the working directory, else `~/.cache/cubecl`; apscore names a folder
//! of its own (`--kernel-cache`), so a cluster can keep it on a volume that outlives pods.
//!
//! Only the cache's place is set here: every other CubeCL setting still comes from a
//! `cubecl.toml` or its environment variables (`CUBECL_AUTOTUNE_LEVEL=minimal` tunes less).
//! The place is fixed once per process, before the first GPU model loads.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use thiserror::Error;

/// The folder this process keeps its tuning in, once chosen.
static CHOSEN: OnceLock<PathBuf> = OnceLock::new();

#[derive(Debug, Error)]
pub enum KernelCacheError {
    #[error("--kernel-cache {dir}: cannot {action}: {source}")]
    Unusable {
        dir: PathBuf,
        action: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// Keeps this process's GPU kernel tuning in `dir`, created if missing, and returns the
/// folder in use. A folder that cannot be created or written is refused here, at start-up:
/// CubeCL would only log the failure and tune again in every process. The first call decides;
/// a later call with another folder is told which one is in use.
pub fn keep_in(dir: &Path) -> Result<&'static Path, KernelCacheError> {
    let unusable = |action| {
        move |source| KernelCacheError::Unusable {
            dir: dir.to_path_buf(),
            action,
            source,
        }
    };
    std::fs::create_dir_all(dir).map_err(unusable("create the folder"))?;
    tempfile::NamedTempFile::new_in(dir).map_err(unusable("write in the folder"))?;
    let chosen = CHOSEN.get_or_init(|| set_cubecl_cache(dir));
    if chosen != dir {
        tracing::warn!(
            asked = %dir.display(),
            in_use = %chosen.display(),
            "the GPU kernel cache is chosen once per process; keeping the one in use"
        );
    }
    Ok(chosen)
}

/// Moves CubeCL's autotune cache to `dir`; returns where it is.
#[cfg(any(feature = "cuda", feature = "wgpu"))]
fn set_cubecl_cache(dir: &Path) -> PathBuf {
    use burn_cubecl::cubecl::config::{CubeClRuntimeConfig, RuntimeConfig, cache::CacheConfig};
    use std::sync::Arc;
    // The settings CubeCL would read itself (a cubecl.toml above the working directory, then
    // its environment variables), with the autotune cache moved.
    let mut config = CubeClRuntimeConfig::from_current_dir().override_from_env();
    config.autotune.cache = CacheConfig::File(dir.to_path_buf());
    // Written under CubeCL's own lock, unless a GPU has read the settings already (only a
    // model loaded before the first call, outside `load_job_model`, would have).
    let mut settings = CubeClRuntimeConfig::storage().lock();
    match settings.as_ref() {
        Some(in_force) => in_force.autotune.cache.root(),
        None => {
            *settings = Some(Arc::new(config));
            dir.to_path_buf()
        }
    }
}

/// Without a GPU backend there is nothing to tune.
#[cfg(not(any(feature = "cuda", feature = "wgpu")))]
fn set_cubecl_cache(dir: &Path) -> PathBuf {
    dir.to_path_buf()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_folder_that_cannot_be_made_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a-file");
        std::fs::write(&file, b"").unwrap();
        let error = keep_in(&file.join("kernels")).unwrap_err().to_string();
        assert!(
            error.starts_with("--kernel-cache ")
                && error.contains("a-file/kernels")
                && error.contains("cannot create the folder"),
            "{error}"
        );
        assert!(CHOSEN.get().is_none(), "a refused folder is not kept");
    }
}
