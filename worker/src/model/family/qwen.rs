//! Qwen2 (`Qwen2ForCausalLM`, Qwen2 and 2.5) and Qwen3 (`Qwen3ForCausalLM`): Llama's design with
//! q/k/v biases (Qwen2), or with per-head RMSNorm of queries and keys before the rotary embedding
//! and an explicit `head_dim` (Qwen3, no biases unless `attention_bias`). Both slide a window
//! only with `use_sliding_window`, and then on the layers `layer_types` names, else from
//! `max_window_layers` on.

use serde_json::{Map, Value};

use super::{Defaults, Design, Family, GgufArch, llama, windows};
use crate::model::config::{ConfigError, HfConfig, Shape};

pub const QWEN2: Family = Family {
    architecture: "Qwen2ForCausalLM",
    model_type: "qwen2",
    defaults: Defaults::LLAMA,
    design: qwen2,
    gguf: Some(GgufArch {
        name: "qwen2",
        permuted_qk: false,
        norm_shift: 0.0,
        keys: &[],
        complete: |_: &mut Map<String, Value>| {},
    }),
};

pub const QWEN3: Family = Family {
    architecture: "Qwen3ForCausalLM",
    model_type: "qwen3",
    // Qwen3Config's head_dim is 128 whatever the hidden size.
    defaults: Defaults {
        head_dim: Some(128),
        ..Defaults::LLAMA
    },
    design: qwen3,
    gguf: Some(GgufArch {
        name: "qwen3",
        permuted_qk: false,
        norm_shift: 0.0,
        keys: &[],
        complete: |_: &mut Map<String, Value>| {},
    }),
};

/// Biases on q, k and v (not on the output projection).
fn qwen2(c: &HfConfig, shape: &Shape) -> Result<Design, ConfigError> {
    let mut design = llama::plain(c, shape, sliding_windows(c, shape)?)?;
    design.attention.qkv_bias = true;
    design.attention.o_bias = false;
    Ok(design)
}

/// Queries and keys normalized per head.
fn qwen3(c: &HfConfig, shape: &Shape) -> Result<Design, ConfigError> {
    let mut design = llama::plain(c, shape, sliding_windows(c, shape)?)?;
    design.attention.qk_norm = true;
    Ok(design)
}

/// The window (only with `use_sliding_window`; 4096 when unset) on the layers that slide.
fn sliding_windows(c: &HfConfig, shape: &Shape) -> Result<Vec<Option<usize>>, ConfigError> {
    let window = match c.flag_or("use_sliding_window", false)? {
        true => c.optional_number("sliding_window", Some(4096.0))?,
        false => None,
    };
    let sliding = match c.sliding_layers(shape.num_layers)? {
        Some(sliding) => sliding,
        None => {
            let from = c.count_or("max_window_layers", 28)?;
            (0..shape.num_layers).map(|i| i >= from).collect()
        }
    };
    Ok(windows(&sliding, window.map(|w| w as usize)))
}
