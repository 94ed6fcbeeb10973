//! GPUs through wgpu: which adapter `--device wgpu:N` names, found before burn starts it.
//!
//! burn's wgpu backend runs the same CubeCL kernels as CUDA, through Vulkan (Linux, Windows;
//! AMD, Intel and NVIDIA GPUs, or Mesa's software device lavapipe) or Metal (macOS). The
//! graphics library is opened at run time, so a binary built with the feature starts on a
//! machine without one. burn picks its adapter itself and panics when it finds none; apscore
//! lists the adapters first (Vulkan or Metal, as burn's runtime would), so that a missing
//! device is a [`WgpuError`] that names it and says what was found.
//!
//! `wgpu:N` is the N-th adapter burn can address, discrete GPUs first, then integrated,
//! virtual and software (CPU) ones, each kind in the order the driver lists them.

use std::fmt;

use burn::backend::wgpu::WgpuDevice;
use burn::backend::wgpu::graphics::{AutoGraphicsApi, GraphicsApi};
use tracing::{debug, info};

use super::DeviceSpec;

/// A wgpu device cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum WgpuError {
    #[error(
        "--device {device}: no {api} device found (install the GPU's {api} driver; on Linux \
         without a GPU, Mesa's software device: apt-get install mesa-vulkan-drivers)"
    )]
    NoAdapter { device: DeviceSpec, api: String },
    #[error("--device {device}: there are only {count} {api} devices: {found}")]
    NoSuchAdapter {
        device: DeviceSpec,
        api: String,
        count: usize,
        found: String,
    },
    #[error("--device {device} ({adapter}) could not be started: {message}")]
    Failed {
        device: DeviceSpec,
        adapter: String,
        message: String,
    },
}

/// One adapter that burn can run on.
#[derive(Debug, Clone)]
pub struct Adapter {
    pub name: String,
    pub kind: wgpu::DeviceType,
    pub backend: wgpu::Backend,
    pub driver: String,
    /// How burn's runtime addresses it.
    pub device: WgpuDevice,
}

impl fmt::Display for Adapter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            wgpu::DeviceType::DiscreteGpu => "discrete GPU",
            wgpu::DeviceType::IntegratedGpu => "integrated GPU",
            wgpu::DeviceType::VirtualGpu => "virtual GPU",
            wgpu::DeviceType::Cpu => "software, on the CPU",
            wgpu::DeviceType::Other => "other",
        };
        let api = api_name(self.backend);
        write!(f, "{} ({kind}, {api} driver {})", self.name, self.driver)
    }
}

/// The graphics API burn's runtime uses on this platform (Vulkan; Metal on macOS).
fn api() -> wgpu::Backend {
    AutoGraphicsApi::backend()
}

/// A graphics API's name as its makers spell it.
fn api_name(api: wgpu::Backend) -> String {
    match api {
        wgpu::Backend::Vulkan => "Vulkan".into(),
        wgpu::Backend::Metal => "Metal".into(),
        wgpu::Backend::Dx12 => "DirectX 12".into(),
        wgpu::Backend::Gl => "OpenGL".into(),
        other => other.to_string(),
    }
}

/// The adapters burn can address, in `wgpu:N` order.
pub fn adapters() -> Vec<Adapter> {
    let backend = api();
    let instance = wgpu::Instance::new(wgpu::InstanceDescriptor {
        backends: backend.into(),
        ..wgpu::InstanceDescriptor::new_without_display_handle()
    });
    let listed = futures::executor::block_on(instance.enumerate_adapters(backend.into()));
    // burn's runtime finds an adapter by kind and index within the kind (the first CPU one
    // only); adapters of kind `Other` it cannot address reliably.
    let mut per_kind = [0u16; 4];
    let mut found: Vec<(usize, Adapter)> = Vec::new();
    for adapter in listed {
        let info = adapter.get_info();
        let (rank, device) = match info.device_type {
            wgpu::DeviceType::DiscreteGpu => (0, WgpuDevice::DiscreteGpu(per_kind[0] as usize)),
            wgpu::DeviceType::IntegratedGpu => (1, WgpuDevice::IntegratedGpu(per_kind[1] as usize)),
            wgpu::DeviceType::VirtualGpu => (2, WgpuDevice::VirtualGpu(per_kind[2] as usize)),
            wgpu::DeviceType::Cpu if per_kind[3] == 0 => (3, WgpuDevice::Cpu),
            _ => {
                debug!(adapter = ?info, "wgpu adapter that burn cannot address, skipped");
                continue;
            }
        };
        per_kind[rank] += 1;
        found.push((
            rank,
            Adapter {
                name: info.name,
                kind: info.device_type,
                backend: info.backend,
                driver: info.driver,
                device,
            },
        ));
    }
    found.sort_by_key(|(rank, _)| *rank);
    found.into_iter().map(|(_, adapter)| adapter).collect()
}

/// The adapter `wgpu:index` names.
pub fn select(index: usize) -> Result<Adapter, WgpuError> {
    let device = DeviceSpec::Wgpu(index);
    let api = api_name(api());
    let adapters = adapters();
    if adapters.is_empty() {
        return Err(WgpuError::NoAdapter { device, api });
    }
    let count = adapters.len();
    let found = adapters
        .iter()
        .enumerate()
        .map(|(i, a)| format!("wgpu:{i} {a}"))
        .collect::<Vec<_>>()
        .join(", ");
    match adapters.into_iter().nth(index) {
        Some(adapter) => {
            info!(%device, %adapter, "wgpu adapter (of {count}: {found})");
            Ok(adapter)
        }
        None => Err(WgpuError::NoSuchAdapter {
            device,
            api,
            count,
            found,
        }),
    }
}
