//! The model's shape, read from a checkpoint's `config.json`.
//!
//! Two layouts are seen in the wild and both load: Hub configs with a top-level `rope_theta`
//! (and `rope_scaling` for Llama 3.1+) and `torch_dtype`; and transformers-5 configs with
//! `rope_parameters` and `dtype`.

use serde::Deserialize;
use serde_json::Value;

/// The architectures apscore can score with, as `config.json` names them.
pub const SUPPORTED_ARCHITECTURES: &[&str] =
    &["LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM"];

/// A `config.json` that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: not a valid config.json: {message}")]
    Invalid { path: String, message: String },
    #[error(
        "{path}: architecture `{found}` is not supported; supported: {}",
        SUPPORTED_ARCHITECTURES.join(", ")
    )]
    Architecture { path: String, found: String },
    #[error(
        "{path}: rope scaling type `{found}` is not supported; supported: default, linear, llama3"
    )]
    RopeScaling { path: String, found: String },
}

/// How rotary position frequencies are scaled (`rope_scaling` / `rope_parameters`).
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    None,
    /// Positions divided by `factor`.
    Linear {
        factor: f64,
    },
    /// Llama 3.1's frequency-dependent scaling.
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: f64,
    },
}

/// Everything the forward pass needs to know about the model's shape.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    pub architecture: String,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: RopeScaling,
    pub tie_word_embeddings: bool,
    /// q/k/v projections carry a bias (Qwen2; Llama's `attention_bias`).
    pub qkv_bias: bool,
    /// The output projection carries a bias (Llama's `attention_bias`).
    pub o_bias: bool,
    /// The MLP projections carry a bias (Llama's `mlp_bias`).
    pub mlp_bias: bool,
    /// Keys further back than this are not attended to (Mistral), when set.
    pub sliding_window: Option<usize>,
    /// The dtype the weights were saved in, as the config says (`torch_dtype` or `dtype`).
    pub stored_dtype: Option<String>,
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Option<u32>,
}

#[derive(Deserialize)]
struct RawConfig {
    #[serde(default)]
    architectures: Vec<String>,
    model_type: Option<String>,
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    #[serde(default = "default_eps")]
    rms_norm_eps: f64,
    rope_theta: Option<f64>,
    rope_scaling: Option<Value>,
    rope_parameters: Option<Value>,
    #[serde(default)]
    tie_word_embeddings: bool,
    #[serde(default)]
    attention_bias: bool,
    #[serde(default)]
    mlp_bias: bool,
    sliding_window: Option<usize>,
    use_sliding_window: Option<bool>,
    torch_dtype: Option<String>,
    dtype: Option<String>,
    bos_token_id: Option<Value>,
    eos_token_id: Option<Value>,
}

fn default_eps() -> f64 {
    1e-6
}

impl ModelConfig {
    /// Parses the text of a `config.json`; `path` names it in errors.
    pub fn parse(text: &str, path: &str) -> Result<Self, ConfigError> {
        let invalid = |message: String| ConfigError::Invalid {
            path: path.to_string(),
            message,
        };
        let raw: RawConfig = serde_json::from_str(text).map_err(|e| invalid(e.to_string()))?;
        let architecture = match raw.architectures.first() {
            Some(a) => a.clone(),
            None => match raw.model_type.as_deref() {
                Some("llama") => "LlamaForCausalLM".into(),
                Some("mistral") => "MistralForCausalLM".into(),
                Some("qwen2") => "Qwen2ForCausalLM".into(),
                other => other.unwrap_or("(none)").to_string(),
            },
        };
        if !SUPPORTED_ARCHITECTURES.contains(&architecture.as_str()) {
            return Err(ConfigError::Architecture {
                path: path.to_string(),
                found: architecture,
            });
        }
        let qwen2 = architecture == "Qwen2ForCausalLM";
        let mistral = architecture == "MistralForCausalLM";
        if raw.num_attention_heads == 0 || !raw.hidden_size.is_multiple_of(raw.num_attention_heads)
        {
            return Err(invalid(format!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                raw.hidden_size, raw.num_attention_heads
            )));
        }
        let num_kv_heads = raw.num_key_value_heads.unwrap_or(raw.num_attention_heads);
        if num_kv_heads == 0 || !raw.num_attention_heads.is_multiple_of(num_kv_heads) {
            return Err(invalid(format!(
                "num_attention_heads {} is not a multiple of num_key_value_heads {num_kv_heads}",
                raw.num_attention_heads
            )));
        }

        // transformers 5 keeps theta and scaling together in `rope_parameters`.
        let rope = raw.rope_parameters.as_ref().or(raw.rope_scaling.as_ref());
        let rope_theta = raw
            .rope_theta
            .or_else(|| {
                rope.and_then(|r| r.get("rope_theta"))
                    .and_then(Value::as_f64)
            })
            .unwrap_or(10_000.0);
        let rope_scaling = parse_rope_scaling(rope, path)?;

        // Qwen2 configs carry a sliding window that is off unless `use_sliding_window`.
        let sliding_window = if mistral || (qwen2 && raw.use_sliding_window == Some(true)) {
            raw.sliding_window
        } else {
            None
        };
        Ok(ModelConfig {
            architecture,
            vocab_size: raw.vocab_size,
            hidden_size: raw.hidden_size,
            intermediate_size: raw.intermediate_size,
            num_layers: raw.num_hidden_layers,
            num_heads: raw.num_attention_heads,
            num_kv_heads,
            head_dim: raw
                .head_dim
                .unwrap_or(raw.hidden_size / raw.num_attention_heads),
            rms_norm_eps: raw.rms_norm_eps,
            rope_theta,
            rope_scaling,
            tie_word_embeddings: raw.tie_word_embeddings,
            qkv_bias: qwen2 || raw.attention_bias,
            o_bias: !qwen2 && raw.attention_bias,
            mlp_bias: raw.mlp_bias,
            sliding_window,
            stored_dtype: raw.torch_dtype.or(raw.dtype),
            bos_token_id: first_id(raw.bos_token_id.as_ref()),
            eos_token_id: first_id(raw.eos_token_id.as_ref()),
        })
    }

    /// Parameters of the model (for logs and throughput figures).
    pub fn parameter_count(&self) -> u64 {
        let h = self.hidden_size as u64;
        let kv = (self.num_kv_heads * self.head_dim) as u64;
        let q = (self.num_heads * self.head_dim) as u64;
        let i = self.intermediate_size as u64;
        let layer = h * q + 2 * h * kv + q * h + 3 * h * i + 2 * h;
        let embed = self.vocab_size as u64 * h;
        let head = if self.tie_word_embeddings { 0 } else { embed };
        embed + head + self.num_layers as u64 * layer + h
    }
}

/// Some configs give a list of eos ids (Llama 3.1); the first one is the tokenizer's.
fn first_id(value: Option<&Value>) -> Option<u32> {
    match value? {
        Value::Number(n) => n.as_u64().map(|n| n as u32),
        Value::Array(ids) => ids.first().and_then(Value::as_u64).map(|n| n as u32),
        _ => None,
    }
}

fn parse_rope_scaling(rope: Option<&Value>, path: &str) -> Result<RopeScaling, ConfigError> {
    let Some(rope) = rope.filter(|r| !r.is_null()) else {
        return Ok(RopeScaling::None);
    };
    let kind = rope
        .get("rope_type")
        .or_else(|| rope.get("type"))
        .and_then(Value::as_str)
        .unwrap_or("default");
    let number = |key: &str, default: f64| rope.get(key).and_then(Value::as_f64).unwrap_or(default);
    match kind {
        "default" => Ok(RopeScaling::None),
        "linear" => Ok(RopeScaling::Linear {
            factor: number("factor", 1.0),
        }),
        "llama3" => Ok(RopeScaling::Llama3 {
            factor: number("factor", 8.0),
            low_freq_factor: number("low_freq_factor", 1.0),
            high_freq_factor: number("high_freq_factor", 4.0),
            original_max_position_embeddings: number("original_max_position_embeddings", 8192.0),
        }),
        other => Err(ConfigError::RopeScaling {
            path: path.to_string(),
            found: other.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HUB_LLAMA31: &str = r#"{
        "architectures": ["LlamaForCausalLM"], "vocab_size": 128256, "hidden_size": 4096,
        "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
        "num_key_value_heads": 8, "rms_norm_eps": 1e-05, "rope_theta": 500000.0,
        "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                         "original_max_position_embeddings": 8192, "rope_type": "llama3"},
        "torch_dtype": "bfloat16", "bos_token_id": 128000, "eos_token_id": [128001, 128008]
    }"#;

    #[test]
    fn hub_layout_with_llama3_scaling() {
        let c = ModelConfig::parse(HUB_LLAMA31, "config.json").unwrap();
        assert_eq!(c.head_dim, 128);
        assert_eq!(c.num_kv_heads, 8);
        assert_eq!(c.rope_theta, 500000.0);
        assert!(matches!(c.rope_scaling, RopeScaling::Llama3 { factor, .. } if factor == 8.0));
        assert_eq!(c.stored_dtype.as_deref(), Some("bfloat16"));
        assert_eq!(c.eos_token_id, Some(128001));
        assert!(!c.qkv_bias && !c.tie_word_embeddings);
    }

    #[test]
    fn transformers5_layout_with_rope_parameters() {
        let text = r#"{"architectures": ["Qwen2ForCausalLM"], "vocab_size": 100,
            "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "tie_word_embeddings": true,
            "rope_parameters": {"rope_theta": 1000000.0, "rope_type": "default"},
            "sliding_window": 4096, "use_sliding_window": false, "dtype": "float32"}"#;
        let c = ModelConfig::parse(text, "config.json").unwrap();
        assert_eq!(c.rope_theta, 1_000_000.0);
        assert_eq!(c.rope_scaling, RopeScaling::None);
        assert!(c.qkv_bias && !c.o_bias && c.tie_word_embeddings);
        assert_eq!(c.sliding_window, None);
        assert_eq!(c.stored_dtype.as_deref(), Some("float32"));
    }

    #[test]
    fn unsupported_architecture_lists_the_supported_ones() {
        let text = HUB_LLAMA31.replace("LlamaForCausalLM", "GPTNeoXForCausalLM");
        let err = ModelConfig::parse(&text, "m/config.json")
            .unwrap_err()
            .to_string();
        assert!(err.contains("m/config.json"), "{err}");
        assert!(err.contains("GPTNeoXForCausalLM"), "{err}");
        assert!(err.contains("Qwen2ForCausalLM"), "{err}");
    }

    #[test]
    fn unsupported_rope_scaling_is_named() {
        let text = HUB_LLAMA31.replace("\"llama3\"", "\"yarn\"");
        let err = ModelConfig::parse(&text, "config.json")
            .unwrap_err()
            .to_string();
        assert!(err.contains("yarn"), "{err}");
    }
}
