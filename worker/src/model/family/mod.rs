//! Model families: where each architecture says what its decoder does differently.
//!
//! Every family apscore scores with is a decoder-only transformer of the same parts — token
//! embeddings, decoder layers of RMSNorm, self-attention with rotary positions and a gated MLP,
//! a final RMSNorm and an LM head ([`super::decoder`]). What differs between families is data,
//! a [`Design`], which each family declares from its `config.json` in a file of its own, as
//! transformers' `modeling_*.py` files differ:
//!
//! - [`llama`]: Llama (2, 3, 3.x, SmolLM2) and Mistral (a sliding window on every layer);
//! - [`qwen`]: Qwen2 (q/k/v bias) and Qwen3 (per-head q/k RMSNorm, explicit `head_dim`);
//! - [`gemma2`]: Gemma 2 (scaled embeddings, `1 + w` norms, four norms per layer, GeGLU,
//!   `query_pre_attn_scalar`, attention and final soft-capping, alternating sliding windows).
//!
//! A family also says how llama.cpp's converter stores it in a GGUF file ([`GgufArch`]), so the
//! GGUF reader ([`super::gguf`]) turns such a file into the same config and weights.

pub mod gemma2;
pub mod llama;
pub mod qwen;

use serde_json::{Map, Value};

use super::config::{ConfigError, HfConfig, Shape};

/// One architecture: its names, defaults, and what its decoder does.
pub struct Family {
    /// transformers' class, as `architectures` in config.json names it.
    pub architecture: &'static str,
    /// `model_type` in config.json.
    pub model_type: &'static str,
    /// What the family's transformers config class assumes for keys a file leaves out.
    pub defaults: Defaults,
    /// This checkpoint's design, from its config (and the sizes every family has).
    pub design: fn(&HfConfig, &Shape) -> Result<Design, ConfigError>,
    /// How llama.cpp stores this family in GGUF files, when apscore reads them.
    pub gguf: Option<GgufArch>,
}

/// Config values a family's config class defaults to.
pub struct Defaults {
    /// `head_dim` when absent; `None`: hidden size / heads.
    pub head_dim: Option<usize>,
    pub tie_word_embeddings: bool,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
}

impl Defaults {
    /// Llama's: head_dim from the hidden size, untied, eps 1e-6, theta 10,000.
    pub const LLAMA: Defaults = Defaults {
        head_dim: None,
        tie_word_embeddings: false,
        rms_norm_eps: 1e-6,
        rope_theta: 10_000.0,
    };
}

/// What a decoder does, beyond its sizes: everything the families differ in.
#[derive(Debug, Clone, PartialEq)]
pub struct Design {
    /// Token embeddings multiplied by √hidden, rounded to the compute dtype (Gemma).
    pub embedding_scale: bool,
    /// How every RMSNorm applies its weight.
    pub norm: NormStyle,
    /// A decoder layer's norms, by tensor name.
    pub norms: LayerNorms,
    /// The MLP: `down(act(gate(x)) · up(x))` with this activation.
    pub activation: Activation,
    /// The MLP projections carry a bias (Llama's `mlp_bias`).
    pub mlp_bias: bool,
    pub attention: AttentionDesign,
    /// Per layer: keys this many positions back or further are hidden (sliding-window
    /// layers), `None` for full attention.
    pub windows: Vec<Option<usize>>,
    /// `cap · tanh(logits / cap)` on the LM head's output, before the log-softmax (Gemma 2).
    pub final_softcap: Option<f64>,
}

/// What self-attention does.
#[derive(Debug, Clone, PartialEq)]
pub struct AttentionDesign {
    /// q, k and v projections carry a bias (Qwen2; Llama's `attention_bias`).
    pub qkv_bias: bool,
    /// The output projection carries a bias (Llama's `attention_bias`).
    pub o_bias: bool,
    /// Per-head RMSNorm of queries and keys before the rotary embedding (Qwen3).
    pub qk_norm: bool,
    /// Scores are `q·k · scale`: `head_dim^-½`, or Gemma 2's `query_pre_attn_scalar^-½`.
    pub scale: f64,
    /// `cap · tanh(scores / cap)` before the mask and the softmax (Gemma 2).
    pub softcap: Option<f64>,
}

/// How RMSNorm applies its weight to `x / √(mean(x²) + eps)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NormStyle {
    /// `w · normed`, the normed value cast to the compute dtype first (Llama, Qwen, Mistral).
    Weight,
    /// `(1 + w) · normed`, all in f32, then cast (Gemma).
    OnePlusWeight,
}

/// The norms of a decoder layer, named as the checkpoint names them (`model.layers.N.<name>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayerNorms {
    /// Before attention.
    pub input: &'static str,
    /// On attention's output, before the residual add (Gemma 2).
    pub post_attention: Option<&'static str>,
    /// Before the MLP.
    pub pre_mlp: &'static str,
    /// On the MLP's output, before the residual add (Gemma 2).
    pub post_mlp: Option<&'static str>,
}

impl LayerNorms {
    /// A norm before each block (Llama's `post_attention_layernorm` is the one before the MLP).
    pub const PRE: LayerNorms = LayerNorms {
        input: "input_layernorm",
        post_attention: None,
        pre_mlp: "post_attention_layernorm",
        post_mlp: None,
    };

    /// How many norms a layer has.
    pub fn per_layer(&self) -> usize {
        2 + usize::from(self.post_attention.is_some()) + usize::from(self.post_mlp.is_some())
    }
}

/// The MLP's gate activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// `x · sigmoid(x)` (SwiGLU).
    Silu,
    /// GELU with the tanh approximation, as torch's `gelu(approximate="tanh")` (GeGLU).
    GeluTanh,
}

impl Activation {
    /// The activation config key `key` names, `default` when absent.
    pub fn read(c: &HfConfig, key: &str, default: &str) -> Result<Self, ConfigError> {
        match c.text_or(key, default)? {
            "silu" | "swish" => Ok(Activation::Silu),
            "gelu_pytorch_tanh" | "gelu_new" => Ok(Activation::GeluTanh),
            other => Err(c.unsupported("activation", other, "silu, gelu_pytorch_tanh, gelu_new")),
        }
    }
}

/// Per layer, the window of the layers that slide.
pub fn windows(sliding: &[bool], window: Option<usize>) -> Vec<Option<usize>> {
    sliding.iter().map(|&s| window.filter(|_| s)).collect()
}

/// How llama.cpp's converter (`convert_hf_to_gguf.py`) stores a family in a GGUF file.
pub struct GgufArch {
    /// `general.architecture`.
    pub name: &'static str,
    /// The Q and K rows are permuted for llama.cpp's rotary layout (the `llama` architecture).
    pub permuted_qk: bool,
    /// Added to every norm weight when converting (Gemma stores `1 + w`); taken off when read.
    pub norm_shift: f32,
    /// `<name>.<key>` metadata that becomes a config.json key, beyond the shape every family
    /// has.
    pub keys: &'static [(&'static str, &'static str)],
    /// Config values the file leaves out and the architecture implies, as llama.cpp takes them.
    pub complete: fn(&mut Map<String, Value>),
}

/// Every family apscore scores with.
pub const FAMILIES: [&Family; 5] = [
    &llama::LLAMA,
    &llama::MISTRAL,
    &qwen::QWEN2,
    &qwen::QWEN3,
    &gemma2::GEMMA2,
];

/// The architectures config.json may name.
pub fn supported_architectures() -> Vec<&'static str> {
    FAMILIES.iter().map(|f| f.architecture).collect()
}

/// The family of a config.json `architectures` entry: a causal LM's class, or the family's
/// sequence-classification class (a reward model: `LlamaForSequenceClassification` is Llama).
pub fn by_architecture(architecture: &str) -> Option<&'static Family> {
    let base = architecture
        .strip_suffix(super::config::SEQUENCE_CLASSIFICATION)
        .map(|name| format!("{name}ForCausalLM"))
        .or_else(|| {
            // ArmoRM: a Llama with a gated multi-objective head.
            (architecture == super::reward_head::ARMORM_ARCHITECTURE)
                .then(|| llama::LLAMA.architecture.to_string())
        });
    let wanted = base.as_deref().unwrap_or(architecture);
    FAMILIES.into_iter().find(|f| f.architecture == wanted)
}

/// The family of a config.json `model_type`.
pub fn by_model_type(model_type: &str) -> Option<&'static Family> {
    FAMILIES.into_iter().find(|f| f.model_type == model_type)
}

/// The family of a GGUF file's `general.architecture`.
pub fn by_gguf_architecture(name: &str) -> Option<&'static Family> {
    FAMILIES
        .into_iter()
        .find(|f| f.gguf.as_ref().is_some_and(|g| g.name == name))
}

/// The GGUF architectures apscore reads.
pub fn gguf_architectures() -> Vec<&'static str> {
    FAMILIES
        .iter()
        .filter_map(|f| f.gguf.as_ref().map(|g| g.name))
        .collect()
}
