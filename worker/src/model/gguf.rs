//! llama.cpp's GGUF files: metadata, tensors, dequantization, and the model they describe.
//!
//! A GGUF file (versions 2 and 3) holds typed key-value metadata — the architecture's shape
//! under `llama.*`, the tokenizer under `tokenizer.ggml.*`, the chat template — and tensors,
//! possibly quantized. [`GgufFile`] parses it; [`GgufFile::weights`] dequantizes every tensor
//! to f32 (F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K, Q5_K, Q6_K), renames it to transformers'
//! names and undoes the row permutation llama.cpp's converter applies to the Q and K
//! projections, so the same [`crate::model::llama::Llama`] runs it.

use std::collections::BTreeMap;
use std::path::Path;

use half::{bf16, f16};

use super::config::{ModelConfig, RopeScaling};
use super::weights::Weights;

/// A GGUF file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a GGUF file: {message}")]
    Format { path: String, message: String },
    #[error("{path}: GGUF version {version} is not supported (2 and 3 are)")]
    Version { path: String, version: u32 },
    #[error(
        "{path}: tensor `{name}` has type {kind}, which apscore cannot dequantize; supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K, Q5_K, Q6_K"
    )]
    TensorType {
        path: String,
        name: String,
        kind: String,
    },
    #[error(
        "{path}: architecture `{found}` is not supported; supported: llama (Llama, SmolLM2, Mistral-style)"
    )]
    Architecture { path: String, found: String },
    #[error("{path}: metadata `{key}` is missing or has the wrong type")]
    Metadata { path: String, key: String },
    #[error("{path}: tensor `{name}` ({shape:?}) does not fit the metadata")]
    Shape {
        path: String,
        name: String,
        shape: Vec<usize>,
    },
}

/// One metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum MetaValue {
    Int(i64),
    Float(f64),
    Bool(bool),
    Str(String),
    Array(Vec<MetaValue>),
}

impl MetaValue {
    pub fn as_int(&self) -> Option<i64> {
        match self {
            MetaValue::Int(v) => Some(*v),
            _ => None,
        }
    }
    pub fn as_float(&self) -> Option<f64> {
        match self {
            MetaValue::Float(v) => Some(*v),
            MetaValue::Int(v) => Some(*v as f64),
            _ => None,
        }
    }
    pub fn as_str(&self) -> Option<&str> {
        match self {
            MetaValue::Str(s) => Some(s),
            _ => None,
        }
    }
    pub fn as_array(&self) -> Option<&[MetaValue]> {
        match self {
            MetaValue::Array(v) => Some(v),
            _ => None,
        }
    }
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            MetaValue::Bool(b) => Some(*b),
            MetaValue::Int(v) => Some(*v != 0),
            _ => None,
        }
    }
}

/// A tensor's place in the file.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    pub name: String,
    /// Dimensions in torch order (slowest first): GGUF stores them fastest first.
    pub shape: Vec<usize>,
    pub kind: u32,
    offset: usize,
}

/// A parsed GGUF file held in memory.
pub struct GgufFile {
    pub path: String,
    pub version: u32,
    pub metadata: BTreeMap<String, MetaValue>,
    pub tensors: Vec<TensorInfo>,
    bytes: Vec<u8>,
    data_start: usize,
}

/// ggml type ids and names.
const F32: u32 = 0;
const F16: u32 = 1;
const Q4_0: u32 = 2;
const Q4_1: u32 = 3;
const Q8_0: u32 = 8;
const Q4_K: u32 = 12;
const Q5_K: u32 = 13;
const Q6_K: u32 = 14;
const BF16: u32 = 30;

/// A ggml tensor type's name, for messages.
pub fn type_name(kind: u32) -> String {
    match kind {
        F32 => "F32".into(),
        F16 => "F16".into(),
        Q4_0 => "Q4_0".into(),
        Q4_1 => "Q4_1".into(),
        6 => "Q5_0".into(),
        7 => "Q5_1".into(),
        Q8_0 => "Q8_0".into(),
        9 => "Q8_1".into(),
        10 => "Q2_K".into(),
        11 => "Q3_K".into(),
        Q4_K => "Q4_K".into(),
        Q5_K => "Q5_K".into(),
        Q6_K => "Q6_K".into(),
        15 => "Q8_K".into(),
        BF16 => "BF16".into(),
        other => format!("type {other}"),
    }
}

/// (elements per block, bytes per block) of the supported types.
fn block_layout(kind: u32) -> Option<(usize, usize)> {
    Some(match kind {
        F32 => (1, 4),
        F16 | BF16 => (1, 2),
        Q8_0 => (32, 34),
        Q4_0 => (32, 18),
        Q4_1 => (32, 20),
        Q4_K => (256, 144),
        Q5_K => (256, 176),
        Q6_K => (256, 210),
        _ => return None,
    })
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], String> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&e| e <= self.bytes.len())
            .ok_or_else(|| format!("truncated at byte {}", self.at))?;
        let out = &self.bytes[self.at..end];
        self.at = end;
        Ok(out)
    }
    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }
    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }
    fn string(&mut self) -> Result<String, String> {
        let len = self.u64()? as usize;
        Ok(String::from_utf8_lossy(self.take(len)?).into_owned())
    }
    fn value(&mut self, kind: u32) -> Result<MetaValue, String> {
        let b = |r: &mut Self, n| -> Result<Vec<u8>, String> { Ok(r.take(n)?.to_vec()) };
        Ok(match kind {
            0 => MetaValue::Int(b(self, 1)?[0] as i64),
            1 => MetaValue::Int(b(self, 1)?[0] as i8 as i64),
            2 => MetaValue::Int(u16::from_le_bytes(b(self, 2)?.try_into().unwrap()) as i64),
            3 => MetaValue::Int(i16::from_le_bytes(b(self, 2)?.try_into().unwrap()) as i64),
            4 => MetaValue::Int(self.u32()? as i64),
            5 => MetaValue::Int(self.u32()? as i32 as i64),
            6 => MetaValue::Float(f32::from_le_bytes(b(self, 4)?.try_into().unwrap()) as f64),
            7 => MetaValue::Bool(b(self, 1)?[0] != 0),
            8 => MetaValue::Str(self.string()?),
            9 => {
                let item = self.u32()?;
                let n = self.u64()? as usize;
                let mut items = Vec::with_capacity(n.min(1 << 20));
                for _ in 0..n {
                    items.push(self.value(item)?);
                }
                MetaValue::Array(items)
            }
            10 => MetaValue::Int(self.u64()? as i64),
            11 => MetaValue::Int(self.u64()? as i64),
            12 => MetaValue::Float(f64::from_le_bytes(b(self, 8)?.try_into().unwrap())),
            other => return Err(format!("unknown metadata value type {other}")),
        })
    }
}

impl GgufFile {
    /// Reads and parses a GGUF file.
    pub fn read(path: &Path) -> Result<Self, GgufError> {
        let shown = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|source| GgufError::Io {
            path: shown.clone(),
            source,
        })?;
        Self::parse(bytes, shown)
    }

    fn parse(bytes: Vec<u8>, path: String) -> Result<Self, GgufError> {
        let format = |message: String| GgufError::Format {
            path: path.clone(),
            message,
        };
        let mut r = Reader {
            bytes: &bytes,
            at: 0,
        };
        if r.take(4).map_err(&format)? != b"GGUF" {
            return Err(format("it does not start with `GGUF`".into()));
        }
        let version = r.u32().map_err(&format)?;
        if !(2..=3).contains(&version) {
            return Err(GgufError::Version { path, version });
        }
        let tensor_count = r.u64().map_err(&format)? as usize;
        let kv_count = r.u64().map_err(&format)? as usize;
        let mut metadata = BTreeMap::new();
        for _ in 0..kv_count {
            let key = r.string().map_err(&format)?;
            let kind = r.u32().map_err(&format)?;
            let value = r
                .value(kind)
                .map_err(|e| format(format!("metadata `{key}`: {e}")))?;
            metadata.insert(key, value);
        }
        let mut tensors = Vec::with_capacity(tensor_count);
        for _ in 0..tensor_count {
            let name = r.string().map_err(&format)?;
            let dims = r.u32().map_err(&format)? as usize;
            let mut shape = Vec::with_capacity(dims);
            for _ in 0..dims {
                shape.push(r.u64().map_err(&format)? as usize);
            }
            shape.reverse();
            let kind = r.u32().map_err(&format)?;
            let offset = r.u64().map_err(&format)? as usize;
            tensors.push(TensorInfo {
                name,
                shape,
                kind,
                offset,
            });
        }
        let alignment = metadata
            .get("general.alignment")
            .and_then(MetaValue::as_int)
            .unwrap_or(32)
            .max(1) as usize;
        let data_start = r.at.div_ceil(alignment) * alignment;
        let file = GgufFile {
            path,
            version,
            metadata,
            tensors,
            bytes,
            data_start,
        };
        for t in &file.tensors {
            if let Some((block, size)) = block_layout(t.kind) {
                let elements: usize = t.shape.iter().product();
                let end = file.data_start + t.offset + elements / block * size;
                if !elements.is_multiple_of(block) || end > file.bytes.len() {
                    return Err(file.format_error(format!(
                        "tensor `{}` ({:?}, {}) runs past the end of the file",
                        t.name,
                        t.shape,
                        type_name(t.kind)
                    )));
                }
            }
        }
        Ok(file)
    }

    fn format_error(&self, message: String) -> GgufError {
        GgufError::Format {
            path: self.path.clone(),
            message,
        }
    }

    fn meta(&self, key: &str) -> Option<&MetaValue> {
        self.metadata.get(key)
    }

    fn int(&self, key: &str) -> Result<usize, GgufError> {
        self.meta(key)
            .and_then(MetaValue::as_int)
            .map(|v| v as usize)
            .ok_or_else(|| GgufError::Metadata {
                path: self.path.clone(),
                key: key.into(),
            })
    }

    /// `general.architecture`.
    pub fn architecture(&self) -> &str {
        self.meta("general.architecture")
            .and_then(MetaValue::as_str)
            .unwrap_or("(none)")
    }

    /// The chat template (`tokenizer.chat_template`), when the file has one.
    pub fn chat_template(&self) -> Option<&str> {
        self.meta("tokenizer.chat_template")
            .and_then(MetaValue::as_str)
    }

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

    /// Each tensor's ggml type and count (for `inspect-model`).
    pub fn tensor_types(&self) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for t in &self.tensors {
            *counts.entry(type_name(t.kind)).or_insert(0) += 1;
        }
        counts
    }

    /// Every tensor dequantized to f32 under transformers' names, Q/K rows unpermuted.
    pub fn weights(&self, config: &ModelConfig) -> Result<Weights, GgufError> {
        let mut tensors = BTreeMap::new();
        for t in &self.tensors {
            let mut values = self.dequantize(t)?;
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

    fn dequantize(&self, t: &TensorInfo) -> Result<Vec<f32>, GgufError> {
        let (block, size) = block_layout(t.kind).ok_or_else(|| GgufError::TensorType {
            path: self.path.clone(),
            name: t.name.clone(),
            kind: type_name(t.kind),
        })?;
        let elements: usize = t.shape.iter().product();
        let start = self.data_start + t.offset;
        let data = &self.bytes[start..start + elements / block * size];
        let mut out = Vec::with_capacity(elements);
        let half = |b: &[u8]| f16::from_le_bytes([b[0], b[1]]).to_f32();
        match t.kind {
            F32 => out.extend(
                data.chunks_exact(4)
                    .map(|b| f32::from_le_bytes(b.try_into().unwrap())),
            ),
            F16 => out.extend(data.chunks_exact(2).map(half)),
            BF16 => out.extend(
                data.chunks_exact(2)
                    .map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32()),
            ),
            Q8_0 => {
                for b in data.chunks_exact(size) {
                    let d = half(b);
                    out.extend(b[2..34].iter().map(|&q| d * (q as i8) as f32));
                }
            }
            Q4_0 => {
                for b in data.chunks_exact(size) {
                    let d = half(b);
                    let qs = &b[2..18];
                    out.extend(qs.iter().map(|&q| d * ((q & 0xF) as i32 - 8) as f32));
                    out.extend(qs.iter().map(|&q| d * ((q >> 4) as i32 - 8) as f32));
                }
            }
            Q4_1 => {
                for b in data.chunks_exact(size) {
                    let (d, m) = (half(b), half(&b[2..]));
                    let qs = &b[4..20];
                    out.extend(qs.iter().map(|&q| d * (q & 0xF) as f32 + m));
                    out.extend(qs.iter().map(|&q| d * (q >> 4) as f32 + m));
                }
            }
            Q4_K => {
                for b in data.chunks_exact(size) {
                    let (d, dmin) = (half(b), half(&b[2..]));
                    let scales = &b[4..16];
                    let mut q = &b[16..144];
                    for j in 0..4 {
                        let (sc1, m1) = scale_min_k4(2 * j, scales);
                        let (sc2, m2) = scale_min_k4(2 * j + 1, scales);
                        let (d1, m1) = (d * sc1 as f32, dmin * m1 as f32);
                        let (d2, m2) = (d * sc2 as f32, dmin * m2 as f32);
                        out.extend(q[..32].iter().map(|&v| d1 * (v & 0xF) as f32 - m1));
                        out.extend(q[..32].iter().map(|&v| d2 * (v >> 4) as f32 - m2));
                        q = &q[32..];
                    }
                }
            }
            Q5_K => {
                for b in data.chunks_exact(size) {
                    let (d, dmin) = (half(b), half(&b[2..]));
                    let scales = &b[4..16];
                    let qh = &b[16..48];
                    let mut ql = &b[48..176];
                    for j in 0..4 {
                        let (sc1, m1) = scale_min_k4(2 * j, scales);
                        let (sc2, m2) = scale_min_k4(2 * j + 1, scales);
                        let (d1, m1) = (d * sc1 as f32, dmin * m1 as f32);
                        let (d2, m2) = (d * sc2 as f32, dmin * m2 as f32);
                        let (u1, u2) = (1u8 << (2 * j), 2u8 << (2 * j));
                        out.extend((0..32).map(|l| {
                            let high = if qh[l] & u1 != 0 { 16 } else { 0 };
                            d1 * ((ql[l] & 0xF) + high) as f32 - m1
                        }));
                        out.extend((0..32).map(|l| {
                            let high = if qh[l] & u2 != 0 { 16 } else { 0 };
                            d2 * ((ql[l] >> 4) + high) as f32 - m2
                        }));
                        ql = &ql[32..];
                    }
                }
            }
            Q6_K => {
                for b in data.chunks_exact(size) {
                    let d = half(&b[208..210]);
                    let mut block = [0f32; 256];
                    for n in 0..2 {
                        let ql = &b[n * 64..n * 64 + 64];
                        let qh = &b[128 + n * 32..128 + n * 32 + 32];
                        let sc = &b[192 + n * 8..192 + n * 8 + 8];
                        let y = &mut block[n * 128..n * 128 + 128];
                        for l in 0..32 {
                            let is = l / 16;
                            let q1 = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) as i32 - 32;
                            let q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
                            let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
                            let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
                            y[l] = d * (sc[is] as i8) as f32 * q1 as f32;
                            y[l + 32] = d * (sc[is + 2] as i8) as f32 * q2 as f32;
                            y[l + 64] = d * (sc[is + 4] as i8) as f32 * q3 as f32;
                            y[l + 96] = d * (sc[is + 6] as i8) as f32 * q4 as f32;
                        }
                    }
                    out.extend_from_slice(&block);
                }
            }
            _ => unreachable!("block_layout admits only the types above"),
        }
        Ok(out)
    }
}

/// ggml's `get_scale_min_k4`: the 6-bit scale and min of sub-block `j` of a K-quant block.
fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
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

    /// Every supported type against llama.cpp's reference dequantization (gguf-py), on random
    /// blocks: `tests/fixtures/make_quant_fixture.py`.
    #[test]
    fn every_type_dequantizes_like_the_reference() {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/quants.gguf");
        let file = GgufFile::read(&path).unwrap();
        let mut checked = Vec::new();
        for t in file.tensors.iter().filter(|t| t.name.starts_with("q.")) {
            let kind = &t.name[2..];
            let expected = file
                .tensors
                .iter()
                .find(|e| e.name == format!("expected.{kind}"))
                .unwrap();
            let got = file.dequantize(t).unwrap();
            let want = file.dequantize(expected).unwrap();
            assert_eq!(got.len(), want.len(), "{kind}");
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!(
                    (g - w).abs() <= 1e-6 * w.abs().max(1.0),
                    "{kind}[{i}]: {g} vs the reference {w}"
                );
            }
            checked.push(kind.to_string());
        }
        assert_eq!(
            checked,
            ["Q4_0", "Q4_1", "Q8_0", "Q4_K", "Q5_K", "Q6_K", "F16"]
        );
    }

    #[test]
    fn q8_0_and_q4_1_blocks_dequantize() {
        let mut bytes = b"GGUF".to_vec();
        bytes.extend(3u32.to_le_bytes());
        bytes.extend(2u64.to_le_bytes()); // tensors
        bytes.extend(0u64.to_le_bytes()); // metadata
        let mut info = |name: &str, kind: u32, offset: u64| {
            bytes.extend((name.len() as u64).to_le_bytes());
            bytes.extend(name.as_bytes());
            bytes.extend(1u32.to_le_bytes());
            bytes.extend(32u64.to_le_bytes());
            bytes.extend(kind.to_le_bytes());
            bytes.extend(offset.to_le_bytes());
        };
        info("a", Q8_0, 0);
        info("b", Q4_1, 64);
        while !bytes.len().is_multiple_of(32) {
            bytes.push(0);
        }
        let start = bytes.len();
        bytes.extend(f16::from_f32(0.5).to_le_bytes());
        bytes.extend((0..32).map(|i| (i as i8 - 16) as u8));
        bytes.resize(start + 64, 0);
        bytes.extend(f16::from_f32(2.0).to_le_bytes());
        bytes.extend(f16::from_f32(-1.0).to_le_bytes());
        bytes.extend((0..16).map(|i| (i as u8) | (((15 - i) as u8) << 4)));
        let file = GgufFile::parse(bytes, "t.gguf".into()).unwrap();
        let a = file.dequantize(&file.tensors[0]).unwrap();
        assert_eq!(a[0], -8.0);
        assert_eq!(a[31], 7.5);
        let b = file.dequantize(&file.tensors[1]).unwrap();
        assert_eq!(b[0], -1.0); // 2·0 − 1
        assert_eq!(b[15], 29.0); // 2·15 − 1
        assert_eq!(b[16], 29.0); // high nibble of byte 0: 15
        assert_eq!(b[31], -1.0);
    }
}
