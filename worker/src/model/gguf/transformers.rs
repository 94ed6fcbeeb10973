//! The model a GGUF file describes, in transformers' terms: its config from the metadata and
//! its weights under transformers' names, with the Q and K rows that llama.cpp's converter
//! permutes for its rotary layout put back.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{Map, Value, json};

use super::{GgufError, GgufFile, MetaValue};
use crate::model::config::ModelConfig;
use crate::model::family;
use crate::model::weights::{Deferred, Weights};

/// The GGUF architectures apscore reads (`general.architecture`).
pub const SUPPORTED_GGUF_ARCHITECTURES: &[&str] = &["llama", "qwen2", "qwen3", "gemma2"];

impl GgufFile {
    /// The `config.json` the file's `<arch>.*` metadata describes, as transformers' GGUF loader
    /// rebuilds it; the family ([`crate::model::family::GgufArch`]) names its extra keys and
    /// what llama.cpp leaves implied.
    pub fn config_json(&self) -> Result<Map<String, Value>, GgufError> {
        let arch = self.architecture();
        let (family, gguf) = family::by_gguf_architecture(arch)
            .and_then(|f| f.gguf.as_ref().map(|g| (f, g)))
            .filter(|_| SUPPORTED_GGUF_ARCHITECTURES.contains(&arch))
            .ok_or_else(|| GgufError::Architecture {
                path: self.path.clone(),
                found: arch.to_string(),
            })?;
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
        let has = |suffix: &str| self.tensors.iter().any(|t| t.name.ends_with(suffix));
        let mut c = Map::new();
        c.insert("architectures".into(), json!([family.architecture]));
        c.insert("model_type".into(), json!(family.model_type));
        c.insert("vocab_size".into(), json!(vocab));
        c.insert("hidden_size".into(), json!(hidden));
        c.insert(
            "intermediate_size".into(),
            json!(self.int(&key("feed_forward_length"))?),
        );
        c.insert(
            "num_hidden_layers".into(),
            json!(self.int(&key("block_count"))?),
        );
        c.insert("num_attention_heads".into(), json!(heads));
        let int = |k: &str| self.meta(&key(k)).and_then(MetaValue::as_int);
        let float = |k: &str| self.meta(&key(k)).and_then(MetaValue::as_float);
        c.insert(
            "num_key_value_heads".into(),
            json!(int("attention.head_count_kv").unwrap_or(heads as i64)),
        );
        c.insert(
            "head_dim".into(),
            json!(int("attention.key_length").unwrap_or((hidden / heads.max(1)) as i64)),
        );
        if let Some(eps) = float("attention.layer_norm_rms_epsilon") {
            c.insert("rms_norm_eps".into(), json!(eps));
        }
        if let Some(theta) = float("rope.freq_base") {
            c.insert("rope_theta".into(), json!(theta));
        }
        if let Some("linear") = self
            .meta(&key("rope.scaling.type"))
            .and_then(MetaValue::as_str)
        {
            let factor = float("rope.scaling.factor").unwrap_or(1.0);
            c.insert(
                "rope_scaling".into(),
                json!({"rope_type": "linear", "factor": factor}),
            );
        }
        let head = self.tensors.iter().any(|t| t.name == "output.weight");
        c.insert("tie_word_embeddings".into(), json!(!head));
        if arch == "llama" {
            c.insert(
                "attention_bias".into(),
                json!(has("attn_q.bias") || has("attn_output.bias")),
            );
        }
        for (meta, name) in gguf.keys {
            if let Some(v) = float(meta) {
                c.insert((*name).into(), json!(v));
            }
        }
        (gguf.complete)(&mut c);
        c.insert("dtype".into(), json!("gguf"));
        for (meta, name) in [
            ("tokenizer.ggml.bos_token_id", "bos_token_id"),
            ("tokenizer.ggml.eos_token_id", "eos_token_id"),
        ] {
            if let Some(id) = self.meta(meta).and_then(MetaValue::as_int) {
                c.insert(name.into(), json!(id));
            }
        }
        Ok(c)
    }

    /// The model's config from the metadata ([`Self::config_json`]).
    pub fn config(&self) -> Result<ModelConfig, GgufError> {
        let json = Value::Object(self.config_json()?);
        Ok(ModelConfig::from_json(&json, &self.path)?)
    }

    /// Every tensor under transformers' names, dequantized to f32 (Q/K rows unpermuted,
    /// Gemma's norms unshifted) only when the model takes it: one tensor at a time is ever
    /// held in f32 beside the weights already placed.
    pub fn weights(self: &Arc<Self>, config: &ModelConfig) -> Result<Weights, GgufError> {
        let gguf = config
            .family()
            .gguf
            .as_ref()
            .expect("a config read from GGUF has a GGUF architecture");
        let mut tensors = BTreeMap::new();
        for t in &self.tensors {
            self.check_type(t)?;
            let name = hf_name(&t.name, gguf.name);
            // Gemma's converter stored every norm weight as 1 + w.
            let shift = (gguf.norm_shift != 0.0 && t.name.ends_with("norm.weight"))
                .then_some(gguf.norm_shift);
            let permuted = gguf.permuted_qk;
            let heads = if !permuted {
                None
            } else if t.name.ends_with("attn_q.weight") || t.name.ends_with("attn_q.bias") {
                Some(config.num_heads)
            } else if t.name.ends_with("attn_k.weight") || t.name.ends_with("attn_k.bias") {
                Some(config.num_kv_heads)
            } else {
                None
            };
            let (rows, cols) = (t.shape[0], t.shape.get(1).copied().unwrap_or(1));
            if let Some(heads) = heads
                && (heads == 0 || !rows.is_multiple_of(2 * heads))
            {
                return Err(GgufError::Shape {
                    path: self.path.clone(),
                    name: t.name.clone(),
                    shape: t.shape.clone(),
                });
            }
            let (file, tensor) = (Arc::clone(self), t.clone());
            let values = move || {
                let mut values = file.tensor_f32(&tensor).expect("its type was checked");
                if let Some(shift) = shift {
                    values.iter_mut().for_each(|v| *v -= shift);
                }
                match heads {
                    Some(heads) => unpermute_rows(&values, rows, cols, heads),
                    None => values,
                }
            };
            tensors.insert(name, (t.shape.clone(), Box::new(values) as Deferred));
        }
        Ok(Weights::deferred(tensors))
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

/// llama.cpp's tensor names to transformers', for the GGUF architecture `arch`.
fn hf_name(name: &str, arch: &str) -> String {
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
        "attn_q_norm" => "self_attn.q_norm",
        "attn_k_norm" => "self_attn.k_norm",
        "attn_norm" => "input_layernorm",
        // Gemma 2's four norms: llama.cpp's `ffn_norm` is the one before the MLP.
        "ffn_norm" if arch == "gemma2" => "pre_feedforward_layernorm",
        "ffn_norm" => "post_attention_layernorm",
        "post_attention_norm" => "post_attention_layernorm",
        "post_ffw_norm" => "post_feedforward_layernorm",
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
            hf_name("blk.3.attn_q.weight", "llama"),
            "model.layers.3.self_attn.q_proj.weight"
        );
        assert_eq!(
            hf_name("blk.0.ffn_norm.weight", "llama"),
            "model.layers.0.post_attention_layernorm.weight"
        );
        assert_eq!(
            hf_name("blk.0.ffn_norm.weight", "gemma2"),
            "model.layers.0.pre_feedforward_layernorm.weight"
        );
        assert_eq!(
            hf_name("blk.1.post_ffw_norm.weight", "gemma2"),
            "model.layers.1.post_feedforward_layernorm.weight"
        );
        assert_eq!(
            hf_name("blk.0.attn_k_norm.weight", "qwen3"),
            "model.layers.0.self_attn.k_norm.weight"
        );
        assert_eq!(
            hf_name("token_embd.weight", "llama"),
            "model.embed_tokens.weight"
        );
    }
}
