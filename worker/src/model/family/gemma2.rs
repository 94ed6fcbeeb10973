//! Gemma 2 (`Gemma2ForCausalLM`), as transformers' `modeling_gemma2.py`:
//!
//! - embeddings multiplied by √hidden, the factor rounded to the compute dtype (√3584 is 59.75
//!   in bf16);
//! - RMSNorm multiplying by `1 + w`, in f32;
//! - four norms per layer: before and after attention, before and after the MLP;
//! - GeGLU: the MLP's gate through GELU with the tanh approximation;
//! - attention scores scaled by `query_pre_attn_scalar^-½` (not always `head_dim`), then
//!   soft-capped, `cap · tanh(s / cap)`, before the mask;
//! - sliding-window attention on the layers `layer_types` names, else on even layers (what
//!   older Hub configs mean);
//! - the LM head's logits soft-capped before the log-softmax; embeddings tied.
//!
//! llama.cpp's converter stores every norm weight as `1 + w` and no LM head; it keeps no
//! `query_pre_attn_scalar`, and scales by `head_dim` except on Gemma-2-27B (46 layers), where it
//! takes hidden size / heads — the values the real configs hold.

use serde_json::{Map, Value};

use super::{
    Activation, AttentionDesign, Defaults, Design, Family, GgufArch, LayerNorms, NormStyle, windows,
};
use crate::model::config::{ConfigError, HfConfig, Shape};

pub const GEMMA2: Family = Family {
    architecture: "Gemma2ForCausalLM",
    model_type: "gemma2",
    defaults: Defaults {
        head_dim: Some(256),
        tie_word_embeddings: true,
        rms_norm_eps: 1e-6,
        rope_theta: 10_000.0,
    },
    design,
    gguf: Some(GgufArch {
        name: "gemma2",
        permuted_qk: false,
        norm_shift: 1.0,
        keys: &[
            ("attention.sliding_window", "sliding_window"),
            ("attn_logit_softcapping", "attn_logit_softcapping"),
            ("final_logit_softcapping", "final_logit_softcapping"),
        ],
        complete: query_scale_as_llama_cpp,
    }),
};

/// The four norms, named as Gemma 2 checkpoints name them.
const SANDWICH: LayerNorms = LayerNorms {
    input: "input_layernorm",
    post_attention: Some("post_attention_layernorm"),
    pre_mlp: "pre_feedforward_layernorm",
    post_mlp: Some("post_feedforward_layernorm"),
};

fn design(c: &HfConfig, shape: &Shape) -> Result<Design, ConfigError> {
    let sliding = match c.sliding_layers(shape.num_layers)? {
        Some(sliding) => sliding,
        None => (0..shape.num_layers).map(|i| i % 2 == 0).collect(),
    };
    let window = c.optional_number("sliding_window", Some(4096.0))?;
    let attention_bias = c.flag_or("attention_bias", false)?;
    Ok(Design {
        embedding_scale: true,
        norm: NormStyle::OnePlusWeight,
        norms: SANDWICH,
        activation: Activation::read(c, "hidden_activation", "gelu_pytorch_tanh")?,
        mlp_bias: false,
        attention: AttentionDesign {
            qkv_bias: attention_bias,
            o_bias: attention_bias,
            qk_norm: false,
            scale: c.number_or("query_pre_attn_scalar", 256.0)?.powf(-0.5),
            softcap: c.optional_number("attn_logit_softcapping", Some(50.0))?,
        },
        windows: windows(&sliding, window.map(|w| w as usize)),
        final_softcap: c.optional_number("final_logit_softcapping", Some(30.0))?,
    })
}

/// llama.cpp's query scale for a Gemma 2 file: hidden size / heads on the 27B model (46
/// layers), `head_dim` otherwise.
fn query_scale_as_llama_cpp(config: &mut Map<String, Value>) {
    let count = |key: &str| config.get(key).and_then(Value::as_u64);
    let scalar = if count("num_hidden_layers") == Some(46) {
        count("hidden_size")
            .zip(count("num_attention_heads"))
            .map(|(h, n)| h / n.max(1))
    } else {
        count("head_dim")
    };
    if let Some(scalar) = scalar {
        config.insert("query_pre_attn_scalar".into(), scalar.into());
    }
}
