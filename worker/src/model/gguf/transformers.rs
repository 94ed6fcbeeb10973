//! The model a GGUF file describes, in transformers' terms: its config from the metadata and
//! its weights under transformers' names, with the Q and K rows that llama.cpp's converter
//! permutes for its rotary layout put back.

use std::collections::BTreeMap;

use super::{GgufError, GgufFile, MetaValue};
use crate::model::config::{ModelConfig, RopeScaling};
use crate::model::weights::Weights;

impl GgufFile {
    /// The model's shape from the `llama.*` metadata.
    pub fn config(&self) -> Result<ModelConfig, GgufError> {
        let arch = self.architecture();
        if arch != "llama" {
            return Err(GgufError::Architecture {
                path: self.path.clone(),
                found: arch.to_string(),
            });
        }
        let key = |k: &str| format!("{arch}.{k}");
        let heads = self.int(&key("attention.head_count"))?;
        let hidden = self.int(&key("embedding_length"))?;
        let vocab = match self.meta(&key("vocab_size")).and_then(MetaValue::as_int) {
            Some(v) => v as usize,
            None => self
                .meta("tokenizer.ggml.tokens")
                .and_then(MetaValue::as_array)
                .map(<[MetaValue]>::len)
                .ok_or_else(|| GgufError::Metadata {
                    path: self.path.clone(),
                    key: key("vocab_size"),
                })?,
        };
        let float = |k: &str, default: f64| {
            self.meta(&key(k))
                .and_then(MetaValue::as_float)
                .unwrap_or(default)
        };
        let rope_scaling = match self
            .meta(&key("rope.scaling.type"))
            .and_then(MetaValue::as_str)
        {
            Some("linear") => RopeScaling::Linear {
                factor: float("rope.scaling.factor", 1.0),
            },
            _ => RopeScaling::None,
        };
        Ok(ModelConfig {
            architecture: "LlamaForCausalLM".into(),
            vocab_size: vocab,
            hidden_size: hidden,
            intermediate_size: self.int(&key("feed_forward_length"))?,
            num_layers: self.int(&key("block_count"))?,
            num_heads: heads,
            num_kv_heads: self
                .meta(&key("attention.head_count_kv"))
                .and_then(MetaValue::as_int)
                .map_or(heads, |v| v as usize),
            head_dim: self
                .meta(&key("attention.key_length"))
                .and_then(MetaValue::as_int)
                .map_or(hidden / heads.max(1), |v| v as usize),
            rms_norm_eps: float("attention.layer_norm_rms_epsilon", 1e-6),
            rope_theta: float("rope.freq_base", 10_000.0),
            rope_scaling,
            tie_word_embeddings: !self.tensors.iter().any(|t| t.name == "output.weight"),
            qkv_bias: self.tensors.iter().any(|t| t.name.ends_with("attn_q.bias")),
            o_bias: self
                .tensors
                .iter()
                .any(|t| t.name.ends_with("attn_output.bias")),
            mlp_bias: false,
            sliding_window: None,
            stored_dtype: Some("gguf".into()),
            bos_token_id: self
                .meta("tokenizer.ggml.bos_token_id")
                .and_then(MetaValue::as_int)
                .map(|v| v as u32),
            eos_token_id: self
                .meta("tokenizer.ggml.eos_token_id")
                .and_then(MetaValue::as_int)
                .map(|v| v as u32),
        })
    }

    /// Every tensor dequantized to f32 under transformers' names, Q/K rows unpermuted.
    pub fn weights(&self, config: &ModelConfig) -> Result<Weights, GgufError> {
        let mut tensors = BTreeMap::new();
        for t in &self.tensors {
            let mut values = self.tensor_f32(t)?;
            let name = hf_name(&t.name);
            let heads = if t.name.ends_with("attn_q.weight") || t.name.ends_with("attn_q.bias") {
                Some(config.num_heads)
            } else if t.name.ends_with("attn_k.weight") || t.name.ends_with("attn_k.bias") {
                Some(config.num_kv_heads)
            } else {
                None
            };
            if let Some(heads) = heads {
                let rows = t.shape[0];
                let cols = t.shape.get(1).copied().unwrap_or(1);
                if heads == 0 || !rows.is_multiple_of(2 * heads) {
                    return Err(GgufError::Shape {
                        path: self.path.clone(),
                        name: t.name.clone(),
                        shape: t.shape.clone(),
                    });
                }
                values = unpermute_rows(&values, rows, cols, heads);
            }
            tensors.insert(name, (t.shape.clone(), values));
        }
        Ok(Weights::from_f32(tensors))
    }
}

/// Undoes llama.cpp's Q/K permutation: within each head, GGUF interleaves the two rotary
/// halves row by row (`2i + j`); transformers keeps them as halves (`j · half + i`).
fn unpermute_rows(values: &[f32], rows: usize, cols: usize, heads: usize) -> Vec<f32> {
    let head_dim = rows / heads;
    let half = head_dim / 2;
    let mut out = vec![0f32; values.len()];
    for h in 0..heads {
        for j in 0..2 {
            for i in 0..half {
                let to = h * head_dim + j * half + i;
                let from = h * head_dim + 2 * i + j;
                out[to * cols..(to + 1) * cols]
                    .copy_from_slice(&values[from * cols..(from + 1) * cols]);
            }
        }
    }
    out
}

/// llama.cpp's tensor names to transformers'.
fn hf_name(name: &str) -> String {
    match name {
        "token_embd.weight" => return "model.embed_tokens.weight".into(),
        "output_norm.weight" => return "model.norm.weight".into(),
        "output.weight" => return "lm_head.weight".into(),
        _ => {}
    }
    let Some(rest) = name.strip_prefix("blk.") else {
        return name.to_string();
    };
    let Some((layer, part)) = rest.split_once('.') else {
        return name.to_string();
    };
    let (module, suffix) = part.rsplit_once('.').unwrap_or((part, ""));
    let hf = match module {
        "attn_q" => "self_attn.q_proj",
        "attn_k" => "self_attn.k_proj",
        "attn_v" => "self_attn.v_proj",
        "attn_output" => "self_attn.o_proj",
        "ffn_gate" => "mlp.gate_proj",
        "ffn_up" => "mlp.up_proj",
        "ffn_down" => "mlp.down_proj",
        "attn_norm" => "input_layernorm",
        "ffn_norm" => "post_attention_layernorm",
        // Kept as is: the model will refuse it by name as an unused tensor.
        _ => return name.to_string(),
    };
    format!("model.layers.{layer}.{hf}.{suffix}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q_rows_unpermute_like_transformers() {
        // One head of dim 4: GGUF rows (r0, r2, r1, r3) come back as (r0, r1, r2, r3).
        let gguf = [0.0, 2.0, 1.0, 3.0];
        assert_eq!(unpermute_rows(&gguf, 4, 1, 1), vec![0.0, 1.0, 2.0, 3.0]);
    }

    #[test]
    fn names_map_to_transformers() {
        assert_eq!(
            hf_name("blk.3.attn_q.weight"),
            "model.layers.3.self_attn.q_proj.weight"
        );
        assert_eq!(
            hf_name("blk.0.ffn_norm.weight"),
            "model.layers.0.post_attention_layernorm.weight"
        );
        assert_eq!(hf_name("token_embd.weight"), "model.embed_tokens.weight");
    }
}
