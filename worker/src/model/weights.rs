//! Named weight tensors read from safetensors files, handed out one by one to the model.
//!
//! [`Weights`] indexes every tensor of a checkpoint (one `model.safetensors` or the shards of
//! a sharded one), converts each to the compute dtype on the host when the model takes it,
//! and remembers which were taken: a checkpoint with a tensor the model does not use, or
//! without one it needs, is an error that lists the names.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use apscore_core::model_settings::ComputeDtype;
use burn::tensor::TensorData;
use half::{bf16, f16};
use serde_json::Value;

/// Weights that cannot be read or do not fit the model.
#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a safetensors file: {message}")]
    Format { path: String, message: String },
    #[error("{path}: tensor `{name}` has dtype {dtype}; supported: F32, BF16, F16")]
    Dtype {
        path: String,
        name: String,
        dtype: String,
    },
    #[error("the checkpoint has no tensor `{name}`, which the model needs")]
    Missing { name: String },
    #[error("tensor `{name}` has shape {found:?}; the config implies {expected:?}")]
    Shape {
        name: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    #[error("the checkpoint has tensors the model does not use: {}", names.join(", "))]
    Unused { names: Vec<String> },
    #[error("the checkpoint lacks tensors the model needs: {}", names.join(", "))]
    MissingMany { names: Vec<String> },
}

/// Where one tensor's values are.
struct Entry {
    shape: Vec<usize>,
    source: Source,
}

enum Source {
    /// Little-endian values in one of the files.
    Bytes {
        file: usize,
        dtype: StoredDtype,
        start: usize,
        end: usize,
    },
    /// Values already in memory (dequantized from a GGUF file).
    Owned(Vec<f32>),
}

#[derive(Debug, Clone, Copy)]
enum StoredDtype {
    F32,
    Bf16,
    F16,
}

/// Every tensor of a checkpoint, by name.
pub struct Weights {
    files: Vec<(PathBuf, Vec<u8>)>,
    entries: BTreeMap<String, Entry>,
    taken: BTreeSet<String>,
    missing: Vec<String>,
}

impl Weights {
    /// Reads the safetensors files of a checkpoint.
    pub fn read_safetensors(paths: &[PathBuf]) -> Result<Self, WeightsError> {
        let mut weights = Weights {
            files: Vec::new(),
            entries: BTreeMap::new(),
            taken: BTreeSet::new(),
            missing: Vec::new(),
        };
        for path in paths {
            let bytes = std::fs::read(path).map_err(|source| WeightsError::Io {
                path: path.display().to_string(),
                source,
            })?;
            let index = weights.files.len();
            weights.index_file(index, path, &bytes)?;
            weights.files.push((path.clone(), bytes));
        }
        Ok(weights)
    }

    fn index_file(&mut self, file: usize, path: &Path, bytes: &[u8]) -> Result<(), WeightsError> {
        let format = |message: String| WeightsError::Format {
            path: path.display().to_string(),
            message,
        };
        if bytes.len() < 8 {
            return Err(format("shorter than its 8-byte header length".into()));
        }
        let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        let data_start = 8usize
            .checked_add(header_len)
            .filter(|&end| end <= bytes.len())
            .ok_or_else(|| format(format!("header length {header_len} exceeds the file")))?;
        let header: BTreeMap<String, Value> = serde_json::from_slice(&bytes[8..data_start])
            .map_err(|e| format(format!("header is not JSON: {e}")))?;
        for (name, info) in header {
            if name == "__metadata__" {
                continue;
            }
            let dtype_name = info["dtype"].as_str().unwrap_or("?").to_string();
            let dtype = match dtype_name.as_str() {
                "F32" => StoredDtype::F32,
                "BF16" => StoredDtype::Bf16,
                "F16" => StoredDtype::F16,
                _ => {
                    return Err(WeightsError::Dtype {
                        path: path.display().to_string(),
                        name,
                        dtype: dtype_name,
                    });
                }
            };
            let shape: Vec<usize> = info["shape"]
                .as_array()
                .map(|dims| {
                    dims.iter()
                        .filter_map(Value::as_u64)
                        .map(|d| d as usize)
                        .collect()
                })
                .ok_or_else(|| format(format!("tensor `{name}` has no shape")))?;
            let offsets: Vec<usize> = info["data_offsets"]
                .as_array()
                .map(|o| {
                    o.iter()
                        .filter_map(Value::as_u64)
                        .map(|d| d as usize)
                        .collect()
                })
                .unwrap_or_default();
            let [start, end] = offsets[..] else {
                return Err(format(format!("tensor `{name}` has no data_offsets")));
            };
            let elem = match dtype {
                StoredDtype::F32 => 4,
                _ => 2,
            };
            let (start, end) = (data_start + start, data_start + end);
            if end > bytes.len()
                || start > end
                || end - start != shape.iter().product::<usize>() * elem
            {
                return Err(format(format!(
                    "tensor `{name}`'s bytes do not match its shape {shape:?}"
                )));
            }
            self.entries.insert(
                name,
                Entry {
                    shape,
                    source: Source::Bytes {
                        file,
                        dtype,
                        start,
                        end,
                    },
                },
            );
        }
        Ok(())
    }

    /// Tensors already in memory as f32, by name: `(shape, values)`.
    pub fn from_f32(tensors: BTreeMap<String, (Vec<usize>, Vec<f32>)>) -> Self {
        Weights {
            files: Vec::new(),
            entries: tensors
                .into_iter()
                .map(|(name, (shape, values))| {
                    (
                        name,
                        Entry {
                            shape,
                            source: Source::Owned(values),
                        },
                    )
                })
                .collect(),
            taken: BTreeSet::new(),
            missing: Vec::new(),
        }
    }

    /// Whether the checkpoint holds `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }

    /// Takes tensor `name`, checks its shape and converts it to `dtype`. A missing tensor is
    /// recorded (all are reported together by [`Weights::finish`]) and `None` returned.
    pub fn take(
        &mut self,
        name: &str,
        shape: &[usize],
        dtype: ComputeDtype,
    ) -> Result<Option<TensorData>, WeightsError> {
        let Some(entry) = self.entries.get(name) else {
            self.missing.push(name.to_string());
            return Ok(None);
        };
        if entry.shape != shape {
            return Err(WeightsError::Shape {
                name: name.to_string(),
                expected: shape.to_vec(),
                found: entry.shape.clone(),
            });
        }
        let data = match &entry.source {
            Source::Bytes {
                file,
                dtype: stored,
                start,
                end,
            } => convert(
                &self.files[*file].1[*start..*end],
                *stored,
                dtype,
                shape.to_vec(),
            ),
            Source::Owned(values) => match dtype {
                ComputeDtype::F32 => TensorData::new(values.clone(), shape.to_vec()),
                ComputeDtype::Bf16 => TensorData::new(
                    values
                        .iter()
                        .map(|&v| bf16::from_f32(v))
                        .collect::<Vec<_>>(),
                    shape.to_vec(),
                ),
                ComputeDtype::F16 => TensorData::new(
                    values.iter().map(|&v| f16::from_f32(v)).collect::<Vec<_>>(),
                    shape.to_vec(),
                ),
            },
        };
        self.taken.insert(name.to_string());
        Ok(Some(data))
    }

    /// Ends loading: every tensor must have been taken and none be missing.
    pub fn finish(self) -> Result<(), WeightsError> {
        if !self.missing.is_empty() {
            return Err(WeightsError::MissingMany {
                names: self.missing,
            });
        }
        let unused: Vec<String> = self
            .entries
            .keys()
            .filter(|name| !self.taken.contains(*name))
            .cloned()
            .collect();
        if !unused.is_empty() {
            return Err(WeightsError::Unused { names: unused });
        }
        Ok(())
    }
}

/// Little-endian stored values converted to the compute dtype.
fn convert(bytes: &[u8], from: StoredDtype, to: ComputeDtype, shape: Vec<usize>) -> TensorData {
    let as_f32 = || -> Vec<f32> {
        match from {
            StoredDtype::F32 => bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                .collect(),
            StoredDtype::Bf16 => bytes
                .chunks_exact(2)
                .map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            StoredDtype::F16 => bytes
                .chunks_exact(2)
                .map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
        }
    };
    match (from, to) {
        (_, ComputeDtype::F32) => TensorData::new(as_f32(), shape),
        (StoredDtype::Bf16, ComputeDtype::Bf16) => TensorData::new(
            bytes
                .chunks_exact(2)
                .map(|b| bf16::from_le_bytes([b[0], b[1]]))
                .collect::<Vec<_>>(),
            shape,
        ),
        (StoredDtype::F16, ComputeDtype::F16) => TensorData::new(
            bytes
                .chunks_exact(2)
                .map(|b| f16::from_le_bytes([b[0], b[1]]))
                .collect::<Vec<_>>(),
            shape,
        ),
        (_, ComputeDtype::Bf16) => TensorData::new(
            as_f32().into_iter().map(bf16::from_f32).collect::<Vec<_>>(),
            shape,
        ),
        (_, ComputeDtype::F16) => TensorData::new(
            as_f32().into_iter().map(f16::from_f32).collect::<Vec<_>>(),
            shape,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes a safetensors file (tests build small checkpoints with it).
    pub fn write_safetensors_f32(
        path: &Path,
        tensors: &[(&str, Vec<usize>, Vec<f32>)],
    ) -> std::io::Result<()> {
        let mut header = serde_json::Map::new();
        let mut offset = 0usize;
        for (name, shape, values) in tensors {
            let len = values.len() * 4;
            header.insert(
                name.to_string(),
                serde_json::json!({"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + len]}),
            );
            offset += len;
        }
        let header = serde_json::to_vec(&header)?;
        let mut bytes = Vec::with_capacity(8 + header.len() + offset);
        bytes.extend((header.len() as u64).to_le_bytes());
        bytes.extend(header);
        for (_, _, values) in tensors {
            for v in values {
                bytes.extend(v.to_le_bytes());
            }
        }
        std::fs::write(path, bytes)
    }

    #[test]
    fn unused_and_missing_tensors_are_listed_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.safetensors");
        write_safetensors_f32(
            &path,
            &[
                ("a", vec![2], vec![1.0, 2.0]),
                ("extra.bias", vec![1], vec![0.5]),
            ],
        )
        .unwrap();
        let mut w = Weights::read_safetensors(std::slice::from_ref(&path)).unwrap();
        let a = w.take("a", &[2], ComputeDtype::F32).unwrap().unwrap();
        assert_eq!(a.to_vec::<f32>().unwrap(), vec![1.0, 2.0]);
        let err = w.finish().unwrap_err().to_string();
        assert!(err.contains("extra.bias"), "{err}");

        let mut w = Weights::read_safetensors(std::slice::from_ref(&path)).unwrap();
        assert!(w.take("b", &[2], ComputeDtype::F32).unwrap().is_none());
        let err = w.finish().unwrap_err().to_string();
        assert!(err.contains("lacks") && err.contains('b'), "{err}");

        let mut w = Weights::read_safetensors(&[path]).unwrap();
        let err = w
            .take("a", &[3], ComputeDtype::F32)
            .unwrap_err()
            .to_string();
        assert!(err.contains("[3]") && err.contains("[2]"), "{err}");
    }

    #[test]
    fn sixteen_bit_values_convert_to_the_compute_dtype() {
        let bytes: Vec<u8> = [1.5f32, -2.25]
            .iter()
            .flat_map(|v| bf16::from_f32(*v).to_le_bytes())
            .collect();
        let data = convert(&bytes, StoredDtype::Bf16, ComputeDtype::F32, vec![2]);
        assert_eq!(data.to_vec::<f32>().unwrap(), vec![1.5, -2.25]);
        let data = convert(&bytes, StoredDtype::Bf16, ComputeDtype::F16, vec![2]);
        assert_eq!(
            data.to_vec::<f16>().unwrap(),
            vec![f16::from_f32(1.5), f16::from_f32(-2.25)]
        );
    }
}
