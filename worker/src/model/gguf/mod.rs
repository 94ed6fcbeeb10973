//! llama.cpp's GGUF files: the container (typed metadata and tensors), mapped, not read: the
//! header is parsed when the file is opened, and each tensor's bytes are paged in (and
//! released) only when it is dequantized.
//!
//! A GGUF file (versions 2 and 3) holds typed key-value metadata — the architecture's shape
//! under `<arch>.*`, the tokenizer under `tokenizer.ggml.*`, the chat template — and tensors,
//! possibly quantized. [`GgufFile`] parses it and hands out each tensor as f32:
//!
//! - [`dequantize`]: ggml's tensor types and their dequantization to f32;
//! - [`transformers`]: the model the file describes, in transformers' terms (its config and
//!   its weights under transformers' names, Q/K rows unpermuted), so the same
//!   [`crate::model::decoder::Decoder`] runs it;
//! - [`tokenizer`]: the tokenizer rebuilt from `tokenizer.ggml.*` as transformers rebuilds it.

pub mod dequantize;
pub mod tokenizer;
pub mod transformers;

use std::collections::BTreeMap;
use std::path::Path;

use dequantize::{block_layout, dequantize, type_name};

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
        "{path}: architecture `{found}` is not supported; supported: {}",
        transformers::SUPPORTED_GGUF_ARCHITECTURES.join(", ")
    )]
    Architecture { path: String, found: String },
    #[error(transparent)]
    Config(#[from] crate::model::config::ConfigError),
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

/// A parsed GGUF file: its header in memory, its tensors' bytes where they are.
pub struct GgufFile {
    pub path: String,
    pub version: u32,
    pub metadata: BTreeMap<String, MetaValue>,
    pub tensors: Vec<TensorInfo>,
    bytes: Contents,
    data_start: usize,
}

/// The file's bytes: mapped (a file on disk) or owned (built in memory, by tests).
enum Contents {
    Mapped(memmap2::Mmap),
    #[cfg(test)]
    Owned(Vec<u8>),
}

impl std::ops::Deref for Contents {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Contents::Mapped(map) => map,
            #[cfg(test)]
            Contents::Owned(bytes) => bytes,
        }
    }
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
    /// Maps a GGUF file and parses its header.
    pub fn read(path: &Path) -> Result<Self, GgufError> {
        let shown = path.display().to_string();
        let io = |source| GgufError::Io {
            path: shown.clone(),
            source,
        };
        let file = std::fs::File::open(path).map_err(io)?;
        // SAFETY: read-only; a file rewritten under a running load is as wrong as one
        // rewritten under a read.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io)?;
        Self::from_contents(Contents::Mapped(map), shown)
    }

    /// Parses a GGUF file held in memory.
    #[cfg(test)]
    fn parse(bytes: Vec<u8>, path: String) -> Result<Self, GgufError> {
        Self::from_contents(Contents::Owned(bytes), path)
    }

    fn from_contents(bytes: Contents, path: String) -> Result<Self, GgufError> {
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

    /// Each tensor's ggml type and count (for `inspect-model`).
    pub fn tensor_types(&self) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for t in &self.tensors {
            *counts.entry(type_name(t.kind)).or_insert(0) += 1;
        }
        counts
    }

    /// Tensor `t` dequantized to f32.
    pub fn tensor_f32(&self, t: &TensorInfo) -> Result<Vec<f32>, GgufError> {
        let (block, size) = block_layout(t.kind).ok_or_else(|| GgufError::TensorType {
            path: self.path.clone(),
            name: t.name.clone(),
            kind: type_name(t.kind),
        })?;
        let elements: usize = t.shape.iter().product();
        let start = self.data_start + t.offset;
        let end = start + elements / block * size;
        let values = dequantize(t.kind, &self.bytes[start..end], elements);
        // The f32 values are what is kept: the file's pages go back to the kernel.
        #[allow(irrefutable_let_patterns)]
        if let Contents::Mapped(map) = &self.bytes {
            crate::model::weights::release(map, start, end);
        }
        Ok(values)
    }

    /// Whether apscore can dequantize tensor `t` (else the error naming its type).
    pub fn check_type(&self, t: &TensorInfo) -> Result<(), GgufError> {
        block_layout(t.kind)
            .map(|_| ())
            .ok_or_else(|| GgufError::TensorType {
                path: self.path.clone(),
                name: t.name.clone(),
                kind: type_name(t.kind),
            })
    }
}
