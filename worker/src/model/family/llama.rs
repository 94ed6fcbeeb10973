//! Llama (`LlamaForCausalLM`: Llama 2, 3, 3.x, SmolLM2) and Mistral (`MistralForCausalLM`): the
//! plain design the other families depart from — pre-norm layers, SwiGLU, attention scaled by
//! `head_dim^-½`, optional biases (`attention_bias`, `mlp_bias`); Mistral slides a window over
//! every layer when its config sets `sliding_window`.

use serde_json::{Map, Value};

use super::{
    Activation, AttentionDesign, Defaults, Design, Family, GgufArch, LayerNorms, NormStyle,
};
use crate::model::config::{ConfigError, HfConfig, Shape};

pub const LLAMA: Family = Family {
    architecture: "LlamaForCausalLM",
    model_type: "llama",
    defaults: Defaults::LLAMA,
    design: llama,
    gguf: Some(GgufArch {
        name: "llama",
        permuted_qk: true,
        norm_shift: 0.0,
        keys: &[],
        complete: |_: &mut Map<String, Value>| {},
    }),
};

pub const MISTRAL: Family = Family {
    architecture: "MistralForCausalLM",
    model_type: "mistral",
    defaults: Defaults::LLAMA,
    design: mistral,
    // llama.cpp writes Mistral files as `llama`.
    gguf: None,
};

fn llama(c: &HfConfig, shape: &Shape) -> Result<Design, ConfigError> {
    plain(c, shape, vec![None; shape.num_layers])
}

/// `sliding_window` on every layer: MistralConfig's 4096 when absent, none when null.
fn mistral(c: &HfConfig, shape: &Shape) -> Result<Design, ConfigError> {
    let window = c.optional_number("sliding_window", Some(4096.0))?;
    plain(c, shape, vec![window.map(|w| w as usize); shape.num_layers])
}

/// The Llama design with these per-layer windows; Qwen's start from it too.
pub fn plain(
    c: &HfConfig,
    shape: &Shape,
    windows: Vec<Option<usize>>,
) -> Result<Design, ConfigError> {
    let attention_bias = c.flag_or("attention_bias", false)?;
    Ok(Design {
        embedding_scale: false,
        norm: NormStyle::Weight,
        norms: LayerNorms::PRE,
        activation: Activation::read(c, "hidden_act", "silu")?,
        mlp_bias: c.flag_or("mlp_bias", false)?,
        attention: AttentionDesign {
            qkv_bias: attention_bias,
            o_bias: attention_bias,
            qk_norm: false,
            scale: (shape.head_dim as f64).powf(-0.5),
            softcap: None,
        },
        windows,
        final_softcap: None,
    })
}
