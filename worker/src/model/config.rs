//! The model's shape and design, read from a checkpoint's `config.json`.
//!
//! Two layouts are seen in the wild and both load: Hub configs with a top-level `rope_theta`
//! (and `rope_scaling` for Llama 3.1+) and `torch_dtype`; and transformers-5 configs with
//! `rope_parameters`, `dtype` and `layer_types`. The shape (sizes, rotary positions, special
//! ids) is read the same way for every family; what a family does differently — its
//! [`Design`] — is declared by the family itself ([`super::family`]), with the defaults of its
//! transformers config class for keys a file leaves out.

use serde_json::{Map, Value};

use super::family::{self, Design, Family};
use super::reward_head::{ARMORM_ARCHITECTURE, GatingDesign};

/// A `config.json` that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: not a valid config.json: {message}")]
    Invalid { path: String, message: String },
    #[error(
        "{path}: architecture `{found}` is not supported; supported: {} (and, as reward \
         models, their *ForSequenceClassification classes with one label, and ArmoRM's \
         LlamaForRewardModelWithGating)",
        family::supported_architectures().join(", ")
    )]
    Architecture { path: String, found: String },
    #[error(
        "{path}: rope scaling type `{found}` is not supported; supported: default, linear, llama3"
    )]
    RopeScaling { path: String, found: String },
    #[error(
        "{path}: `{architecture}` with {labels} labels is not a reward model apscore can use: \
         the explicit margin needs one score per response (num_labels 1)"
    )]
    Labels {
        path: String,
        architecture: String,
        labels: usize,
    },
    #[error("{path}: {what} `{found}` is not supported; supported: {supported}")]
    Unsupported {
        path: String,
        what: &'static str,
        found: String,
        supported: &'static str,
    },
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

/// Everything the forward pass needs to know about the model.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    /// transformers' class (`LlamaForCausalLM`, `Gemma2ForCausalLM`, …): names the family.
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
    /// What this family's decoder does differently, as the family declares it.
    pub design: Design,
    /// The dtype the weights were saved in, as the config says (`torch_dtype` or `dtype`).
    pub stored_dtype: Option<String>,
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Option<u32>,
    /// What the model's last hidden states feed: the LM head, or a reward model's score head.
    pub head: Head,
}

/// The head on top of the decoder.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Head {
    /// `*ForCausalLM`: `lm_head` (or the tied embeddings) gives next-token log-probs.
    LanguageModel,
    /// `*ForSequenceClassification` with one label, a reward model: `score.weight`
    /// `[1, hidden]` read at the last token whose id is not `pad_token_id` (the last token
    /// when the config has none), as transformers' sequence classification does.
    Score { pad_token_id: Option<u32> },
    /// ArmoRM's `LlamaForRewardModelWithGating`: rewards per objective, mixed by a gating
    /// network ([`super::reward_head`]).
    Gated {
        pad_token_id: Option<u32>,
        gating: GatingDesign,
    },
}

/// The class-name suffix of reward models (`LlamaForSequenceClassification`, …).
pub const SEQUENCE_CLASSIFICATION: &str = "ForSequenceClassification";

/// The sizes every family has, read before the family's design (which may depend on them).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Shape {
    pub hidden_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub head_dim: usize,
}

/// The keys of a `config.json`, with the distinctions the config classes make: a key that is
/// absent takes the class default, a key set to `null` means "none".
pub struct HfConfig<'a> {
    keys: &'a Map<String, Value>,
    path: &'a str,
}

impl HfConfig<'_> {
    fn invalid(&self, message: String) -> ConfigError {
        ConfigError::Invalid {
            path: self.path.to_string(),
            message,
        }
    }

    /// The raw value of `key`, when present.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.keys.get(key)
    }

    /// A required count.
    pub fn count(&self, key: &str) -> Result<usize, ConfigError> {
        self.get(key)
            .and_then(Value::as_u64)
            .map(|v| v as usize)
            .ok_or_else(|| self.invalid(format!("`{key}` is missing or not a count")))
    }

    /// A count, or `default` when absent or null.
    pub fn count_or(&self, key: &str, default: usize) -> Result<usize, ConfigError> {
        match self.get(key) {
            None | Some(Value::Null) => Ok(default),
            Some(_) => self.count(key),
        }
    }

    /// A number, or `default` when absent or null.
    pub fn number_or(&self, key: &str, default: f64) -> Result<f64, ConfigError> {
        Ok(self.optional_number(key, Some(default))?.unwrap_or(default))
    }

    /// A number that may be switched off: `default` when absent, `None` when null.
    pub fn optional_number(
        &self,
        key: &str,
        default: Option<f64>,
    ) -> Result<Option<f64>, ConfigError> {
        match self.get(key) {
            None => Ok(default),
            Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| self.invalid(format!("`{key}` is not a number"))),
        }
    }

    /// A flag, or `default` when absent or null.
    pub fn flag_or(&self, key: &str, default: bool) -> Result<bool, ConfigError> {
        match self.get(key) {
            None | Some(Value::Null) => Ok(default),
            Some(v) => v
                .as_bool()
                .ok_or_else(|| self.invalid(format!("`{key}` is not true or false"))),
        }
    }

    /// A string, or `default` when absent or null.
    pub fn text_or<'k>(&'k self, key: &str, default: &'k str) -> Result<&'k str, ConfigError> {
        match self.get(key) {
            None | Some(Value::Null) => Ok(default),
            Some(v) => v
                .as_str()
                .ok_or_else(|| self.invalid(format!("`{key}` is not a string"))),
        }
    }

    /// A sequence-classification checkpoint whose head gives more than one score.
    fn unsupported_labels(&self, architecture: &str, labels: usize) -> ConfigError {
        ConfigError::Labels {
            path: self.path.to_string(),
            architecture: architecture.to_string(),
            labels,
        }
    }

    /// A refusal naming the unsupported `found` value of a setting.
    pub fn unsupported(
        &self,
        what: &'static str,
        found: &str,
        supported: &'static str,
    ) -> ConfigError {
        ConfigError::Unsupported {
            path: self.path.to_string(),
            what,
            found: found.to_string(),
            supported,
        }
    }

    /// `layer_types` (transformers 5 writes it) as "does layer i slide": `None` when the file
    /// has none, so that the family's own rule applies.
    pub fn sliding_layers(&self, layers: usize) -> Result<Option<Vec<bool>>, ConfigError> {
        let Some(types) = self.get("layer_types").filter(|v| !v.is_null()) else {
            return Ok(None);
        };
        let types = types
            .as_array()
            .filter(|t| t.len() == layers)
            .ok_or_else(|| {
                self.invalid(format!(
                    "`layer_types` is not a list of {layers} layer types"
                ))
            })?;
        types
            .iter()
            .map(|t| match t.as_str() {
                Some("full_attention") => Ok(false),
                Some("sliding_attention") => Ok(true),
                other => Err(self.unsupported(
                    "layer type",
                    &other.map_or_else(|| t.to_string(), str::to_string),
                    "full_attention, sliding_attention",
                )),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }
}

impl ModelConfig {
    /// Parses the text of a `config.json`; `path` names it in errors.
    pub fn parse(text: &str, path: &str) -> Result<Self, ConfigError> {
        let value: Value = serde_json::from_str(text).map_err(|e| ConfigError::Invalid {
            path: path.to_string(),
            message: e.to_string(),
        })?;
        Self::from_json(&value, path)
    }

    /// The config from parsed JSON (a `config.json`, or the one a GGUF file's metadata
    /// describes: [`super::gguf`]).
    pub fn from_json(value: &Value, path: &str) -> Result<Self, ConfigError> {
        let empty = Map::new();
        let c = HfConfig {
            keys: value.as_object().unwrap_or(&empty),
            path,
        };
        if !value.is_object() {
            return Err(c.invalid("not a JSON object".into()));
        }
        let family = identify(&c)?;
        let defaults = &family.defaults;
        let hidden_size = c.count("hidden_size")?;
        let num_heads = c.count("num_attention_heads")?;
        let num_layers = c.count("num_hidden_layers")?;
        if num_heads == 0 || (defaults.head_dim.is_none() && !hidden_size.is_multiple_of(num_heads))
        {
            return Err(c.invalid(format!(
                "hidden_size {hidden_size} is not a multiple of num_attention_heads {num_heads}"
            )));
        }
        let num_kv_heads = c.count_or("num_key_value_heads", num_heads)?;
        if num_kv_heads == 0 || !num_heads.is_multiple_of(num_kv_heads) {
            return Err(c.invalid(format!(
                "num_attention_heads {num_heads} is not a multiple of num_key_value_heads {num_kv_heads}"
            )));
        }
        let head_dim = c.count_or(
            "head_dim",
            defaults.head_dim.unwrap_or(hidden_size / num_heads),
        )?;
        if head_dim == 0 || !head_dim.is_multiple_of(2) {
            return Err(c.invalid(format!("head_dim {head_dim} is not even")));
        }

        // transformers 5 keeps theta and scaling together in `rope_parameters`.
        let rope = c
            .get("rope_parameters")
            .or_else(|| c.get("rope_scaling"))
            .filter(|r| !r.is_null());
        let rope_theta = match c.get("rope_theta").and_then(Value::as_f64) {
            Some(theta) => theta,
            None => rope
                .and_then(|r| r.get("rope_theta"))
                .and_then(Value::as_f64)
                .unwrap_or(defaults.rope_theta),
        };
        let rope_scaling = parse_rope_scaling(rope, path)?;
        let shape = Shape {
            hidden_size,
            num_layers,
            num_heads,
            head_dim,
        };
        let design = (family.design)(&c, &shape)?;
        let (architecture, head) = head(&c, family)?;
        Ok(ModelConfig {
            architecture,
            vocab_size: c.count("vocab_size")?,
            hidden_size,
            intermediate_size: c.count("intermediate_size")?,
            num_layers,
            num_heads,
            num_kv_heads,
            head_dim,
            rms_norm_eps: c.number_or("rms_norm_eps", defaults.rms_norm_eps)?,
            rope_theta,
            rope_scaling,
            tie_word_embeddings: c.flag_or("tie_word_embeddings", defaults.tie_word_embeddings)?,
            design,
            stored_dtype: ["torch_dtype", "dtype"]
                .iter()
                .find_map(|k| c.get(k).and_then(Value::as_str))
                .map(str::to_string),
            bos_token_id: first_id(c.get("bos_token_id")),
            eos_token_id: first_id(c.get("eos_token_id")),
            head,
        })
    }

    /// Whether this is a reward model (a score head, not an LM head).
    pub fn is_reward_model(&self) -> bool {
        !matches!(self.head, Head::LanguageModel)
    }

    /// The family this config belongs to.
    pub fn family(&self) -> &'static Family {
        family::by_architecture(&self.architecture).expect("a parsed config names its family")
    }

    /// Parameters of the model (for logs and throughput figures).
    pub fn parameter_count(&self) -> u64 {
        let h = self.hidden_size as u64;
        let d = self.head_dim as u64;
        let kv = self.num_kv_heads as u64 * d;
        let q = self.num_heads as u64 * d;
        let i = self.intermediate_size as u64;
        let norms = self.design.norms.per_layer() as u64 * h
            + if self.design.attention.qk_norm {
                2 * d
            } else {
                0
            };
        let layer = h * q + 2 * h * kv + q * h + 3 * h * i + norms;
        let embed = self.vocab_size as u64 * h;
        let head = match self.head {
            Head::Score { .. } => h,
            Head::Gated { gating: g, .. } => {
                let (k, d) = (g.objectives as u64, g.hidden_dim as u64);
                let gating = h * d + d + (g.n_hidden as u64 - 1) * (d * d + d) + d * k + k + 1;
                k * h + k * k + gating
            }
            Head::LanguageModel if self.tie_word_embeddings => 0,
            Head::LanguageModel => embed,
        };
        embed + head + self.num_layers as u64 * layer + h
    }
}

/// The family `config.json` names: its `architectures`, else its `model_type`.
fn identify(c: &HfConfig) -> Result<&'static Family, ConfigError> {
    let named = c
        .get("architectures")
        .and_then(Value::as_array)
        .and_then(|a| a.first())
        .and_then(Value::as_str);
    let found = match named {
        Some(architecture) => family::by_architecture(architecture),
        None => c
            .get("model_type")
            .and_then(Value::as_str)
            .and_then(family::by_model_type),
    };
    found.ok_or_else(|| ConfigError::Architecture {
        path: c.path.to_string(),
        found: named
            .or_else(|| c.get("model_type").and_then(Value::as_str))
            .unwrap_or("(none)")
            .to_string(),
    })
}

/// The class config.json names and its head: a family's causal LM, or its sequence
/// classification model with exactly one label (transformers' default is two labels, when the
/// file names neither `id2label` nor `num_labels`).
fn head(c: &HfConfig, family: &Family) -> Result<(String, Head), ConfigError> {
    let named = c
        .get("architectures")
        .and_then(Value::as_array)
        .and_then(|a| a.first())
        .and_then(Value::as_str);
    let pad_token_id = c
        .get("pad_token_id")
        .and_then(Value::as_u64)
        .map(|n| n as u32);
    if named == Some(ARMORM_ARCHITECTURE) {
        let gating = GatingDesign {
            objectives: c.count_or("num_objectives", 19)?,
            hidden_dim: c.count_or("gating_hidden_dim", 1024)?,
            n_hidden: c.count_or("gating_n_hidden", 3)?.max(1),
            temperature: c.number_or("gating_temperature", 10.0)?,
        };
        let head = Head::Gated {
            pad_token_id,
            gating,
        };
        return Ok((ARMORM_ARCHITECTURE.to_string(), head));
    }
    let Some(named) = named.filter(|n| n.ends_with(SEQUENCE_CLASSIFICATION)) else {
        return Ok((family.architecture.to_string(), Head::LanguageModel));
    };
    let labels = match c.get("id2label").and_then(Value::as_object) {
        Some(labels) => labels.len(),
        None => c.count_or("num_labels", 2)?,
    };
    if labels != 1 {
        return Err(c.unsupported_labels(named, labels));
    }
    let pad_token_id = c
        .get("pad_token_id")
        .and_then(Value::as_u64)
        .map(|n| n as u32);
    Ok((named.to_string(), Head::Score { pad_token_id }))
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
    let Some(rope) = rope else {
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
    use crate::model::family::{Activation, NormStyle};

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
        assert!(!c.design.attention.qkv_bias && !c.tie_word_embeddings);
        assert_eq!(c.design.windows, vec![None; 32]);
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
        let a = &c.design.attention;
        assert!(a.qkv_bias && !a.o_bias && c.tie_word_embeddings);
        assert_eq!(c.design.windows, vec![None, None]);
        assert_eq!(c.stored_dtype.as_deref(), Some("float32"));
    }

    /// google/gemma-2-9b-it's config.json (older Hub layout: no layer_types).
    const HUB_GEMMA2_9B: &str = r#"{
        "architectures": ["Gemma2ForCausalLM"], "attention_bias": false, "attention_dropout": 0.0,
        "attn_logit_softcapping": 50.0, "bos_token_id": 2, "cache_implementation": "hybrid",
        "eos_token_id": 1, "final_logit_softcapping": 30.0, "head_dim": 256,
        "hidden_act": "gelu_pytorch_tanh", "hidden_activation": "gelu_pytorch_tanh",
        "hidden_size": 3584, "initializer_range": 0.02, "intermediate_size": 14336,
        "max_position_embeddings": 8192, "model_type": "gemma2", "num_attention_heads": 16,
        "num_hidden_layers": 42, "num_key_value_heads": 8, "pad_token_id": 0,
        "query_pre_attn_scalar": 256, "rms_norm_eps": 1e-06, "rope_theta": 10000.0,
        "sliding_window": 4096, "sliding_window_size": 4096, "torch_dtype": "bfloat16",
        "transformers_version": "4.42.0.dev0", "use_cache": true, "vocab_size": 256000
    }"#;

    #[test]
    fn gemma2_hub_config_slides_on_even_layers_and_caps_logits() {
        let c = ModelConfig::parse(HUB_GEMMA2_9B, "config.json").unwrap();
        let d = &c.design;
        assert_eq!((c.head_dim, c.num_kv_heads), (256, 8));
        assert!(
            c.tie_word_embeddings,
            "Gemma 2 ties its embeddings unless told otherwise"
        );
        assert_eq!(d.norm, NormStyle::OnePlusWeight);
        assert_eq!(d.activation, Activation::GeluTanh);
        assert!(d.embedding_scale && d.norms.post_attention.is_some());
        assert_eq!(d.attention.scale, 1.0 / 16.0);
        assert_eq!(
            (d.attention.softcap, d.final_softcap),
            (Some(50.0), Some(30.0))
        );
        assert_eq!(d.windows.len(), 42);
        for (i, w) in d.windows.iter().enumerate() {
            assert_eq!(*w, (i % 2 == 0).then_some(4096), "layer {i}");
        }
        // Gemma-2-27B scales queries by its query_pre_attn_scalar, not by head_dim.
        let text = HUB_GEMMA2_9B.replace(
            r#""query_pre_attn_scalar": 256"#,
            r#""query_pre_attn_scalar": 144"#,
        );
        let c = ModelConfig::parse(&text, "config.json").unwrap();
        assert_eq!(c.design.attention.scale, 1.0 / 12.0);
        // Soft-capping switched off by null.
        let text = HUB_GEMMA2_9B.replace(
            r#""attn_logit_softcapping": 50.0"#,
            r#""attn_logit_softcapping": null"#,
        );
        let c = ModelConfig::parse(&text, "config.json").unwrap();
        assert_eq!(c.design.attention.softcap, None);
    }

    #[test]
    fn layer_types_win_over_the_family_rule() {
        let text = HUB_GEMMA2_9B.replace(
            r#""num_hidden_layers": 42"#,
            r#""num_hidden_layers": 3, "layer_types": ["full_attention", "sliding_attention", "full_attention"]"#,
        );
        let c = ModelConfig::parse(&text, "config.json").unwrap();
        assert_eq!(c.design.windows, vec![None, Some(4096), None]);
        let bad = text.replace(r#""sliding_attention""#, r#""chunked_attention""#);
        let err = ModelConfig::parse(&bad, "config.json")
            .unwrap_err()
            .to_string();
        assert!(err.contains("chunked_attention"), "{err}");
    }

    #[test]
    fn mistral_windows_every_layer_unless_null() {
        let mistral = |window: &str| {
            format!(
                r#"{{"architectures": ["MistralForCausalLM"], "vocab_size": 10, "hidden_size": 8,
                "intermediate_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2{window}}}"#
            )
        };
        let windows = |text: String| ModelConfig::parse(&text, "c").unwrap().design.windows;
        assert_eq!(
            windows(mistral(r#", "sliding_window": 12"#)),
            vec![Some(12); 2]
        );
        assert_eq!(
            windows(mistral(r#", "sliding_window": null"#)),
            vec![None; 2]
        );
        // MistralConfig's default when the key is absent.
        assert_eq!(windows(mistral("")), vec![Some(4096); 2]);
    }

    #[test]
    fn qwen_windows_only_from_max_window_layers_on() {
        let text = r#"{"architectures": ["Qwen2ForCausalLM"], "vocab_size": 10, "hidden_size": 8,
            "intermediate_size": 16, "num_hidden_layers": 4, "num_attention_heads": 2,
            "use_sliding_window": true, "sliding_window": 32, "max_window_layers": 2}"#;
        let c = ModelConfig::parse(text, "c").unwrap();
        assert_eq!(c.design.windows, vec![None, None, Some(32), Some(32)]);
    }

    #[test]
    fn qwen3_normalizes_queries_and_keys_per_head() {
        let text = r#"{"architectures": ["Qwen3ForCausalLM"], "vocab_size": 10, "hidden_size": 48,
            "intermediate_size": 16, "num_hidden_layers": 1, "num_attention_heads": 4,
            "num_key_value_heads": 2, "head_dim": 16}"#;
        let c = ModelConfig::parse(text, "c").unwrap();
        assert_eq!(c.head_dim, 16);
        let a = &c.design.attention;
        assert!(a.qk_norm && !a.qkv_bias && !a.o_bias);
        assert_eq!(a.scale, 0.25);
        // Without head_dim, Qwen3Config's default (128), not hidden / heads.
        let c = ModelConfig::parse(&text.replace(r#", "head_dim": 16"#, ""), "c").unwrap();
        assert_eq!(c.head_dim, 128);
    }

    #[test]
    fn unsupported_architecture_lists_the_supported_ones() {
        let text = HUB_LLAMA31.replace("LlamaForCausalLM", "GPTNeoXForCausalLM");
        let err = ModelConfig::parse(&text, "m/config.json")
            .unwrap_err()
            .to_string();
        assert!(err.contains("m/config.json"), "{err}");
        assert!(err.contains("GPTNeoXForCausalLM"), "{err}");
        for supported in [
            "LlamaForCausalLM",
            "MistralForCausalLM",
            "Qwen2ForCausalLM",
            "Qwen3ForCausalLM",
            "Gemma2ForCausalLM",
        ] {
            assert!(err.contains(supported), "{err}");
        }
    }

    #[test]
    fn unsupported_settings_are_named() {
        let text = HUB_LLAMA31.replace("\"llama3\"", "\"yarn\"");
        let err = ModelConfig::parse(&text, "config.json")
            .unwrap_err()
            .to_string();
        assert!(err.contains("yarn"), "{err}");
        let text = HUB_LLAMA31.replace(
            r#""torch_dtype""#,
            r#""hidden_act": "relu2", "torch_dtype""#,
        );
        let err = ModelConfig::parse(&text, "config.json")
            .unwrap_err()
            .to_string();
        assert!(err.contains("relu2") && err.contains("silu"), "{err}");
    }
}
