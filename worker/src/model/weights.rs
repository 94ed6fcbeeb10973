//! Named weight tensors read from safetensors files, handed out one by one to the model.
//!
//! [`Weights`] indexes every tensor of a checkpoint (one `model.safetensors` or the shards of
//! a sharded one), converts each to the compute dtype on the host when the model takes it,
//! and remembers which were taken: a checkpoint with a tensor the model does not use, or
//! without one it needs, is an error that lists the names.
//!
//! The files are mapped, not read: a tensor's bytes are paged in when the model takes it,
//! converted (on every core) straight into the buffer the model keeps, and their pages are
//! released at once. A checkpoint therefore never sits in memory beside its converted weights:
//! the peak is the converted weights plus about one tensor.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::path::{Path, PathBuf};

use apscore_core::model_settings::ComputeDtype;
use burn::tensor::TensorData;
use half::{bf16, f16};
use memmap2::Mmap;
use rayon::prelude::*;
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
    /// Values computed when the model takes them (dequantized from a GGUF file); `None`
    /// once taken.
    Deferred(Option<Deferred>),
}

/// A tensor's f32 values, computed when taken.
pub type Deferred = Box<dyn FnOnce() -> Vec<f32> + Send>;

#[derive(Debug, Clone, Copy)]
enum StoredDtype {
    F32,
    Bf16,
    F16,
}

/// Every tensor of a checkpoint, by name.
pub struct Weights {
    /// The safetensors files, mapped read-only.
    files: Vec<(PathBuf, Mmap)>,
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
            let io = |source| WeightsError::Io {
                path: path.display().to_string(),
                source,
            };
            let file = std::fs::File::open(path).map_err(io)?;
            // SAFETY: the mapping is read-only and lives as long as the loading; a checkpoint
            // rewritten under a running load is as wrong as one rewritten under a read.
            let bytes = unsafe { Mmap::map(&file) }.map_err(io)?;
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

    /// Tensors whose f32 values are computed when taken, by name: `(shape, values)`.
    pub fn deferred(tensors: BTreeMap<String, (Vec<usize>, Deferred)>) -> Self {
        Weights {
            files: Vec::new(),
            entries: tensors
                .into_iter()
                .map(|(name, (shape, values))| {
                    let source = Source::Deferred(Some(values));
                    (name, Entry { shape, source })
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
        self.take_as(name, shape, dtype, false)
    }

    /// Takes the matrix `name` (`[rows, cols]`) as [`Weights::take`] does, transposed to
    /// `[cols, rows]` while it is converted (one pass, on every core).
    pub fn take_transposed(
        &mut self,
        name: &str,
        [rows, cols]: [usize; 2],
        dtype: ComputeDtype,
    ) -> Result<Option<TensorData>, WeightsError> {
        self.take_as(name, &[rows, cols], dtype, true)
    }

    fn take_as(
        &mut self,
        name: &str,
        shape: &[usize],
        dtype: ComputeDtype,
        transposed: bool,
    ) -> Result<Option<TensorData>, WeightsError> {
        let layout = Layout::of(shape, transposed);
        let Some(entry) = self.entries.get_mut(name) else {
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
        let data = match &mut entry.source {
            Source::Bytes {
                file,
                dtype: stored,
                start,
                end,
            } => {
                let (map, start) = (&self.files[*file].1, *start);
                let done = |r: Range<usize>| release(map, start + r.start, start + r.end);
                convert(&map[start..*end], *stored, dtype, layout, &done)
            }
            // Taken once: the values move into the model.
            Source::Deferred(values) => {
                let values = values.take().expect("a tensor is taken once")();
                let f32s = |values: Vec<f32>| match layout.transposed {
                    None => values,
                    Some((rows, cols)) => transpose(rows, cols, |r, c| values[r * cols + c]),
                };
                let values = f32s(values);
                match dtype {
                    ComputeDtype::F32 => TensorData::new(values, layout.shape),
                    ComputeDtype::Bf16 => TensorData::new(
                        values.into_iter().map(bf16::from_f32).collect::<Vec<_>>(),
                        layout.shape,
                    ),
                    ComputeDtype::F16 => TensorData::new(
                        values.into_iter().map(f16::from_f32).collect::<Vec<_>>(),
                        layout.shape,
                    ),
                }
            }
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

/// Gives the pages of `start..end` of a mapped file back to the kernel (they are read again
/// from the file if ever touched): the converted copy is what the model keeps. Best effort.
pub(crate) fn release(map: &Mmap, start: usize, end: usize) {
    #[cfg(unix)]
    // SAFETY: the mapping is private and read-only: dropped pages are re-read from the file.
    unsafe {
        let _ = map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, end - start);
    }
    #[cfg(not(unix))]
    let _ = (map, start, end);
}

/// How a tensor's values are laid out once taken.
struct Layout {
    /// The shape handed out.
    shape: Vec<usize>,
    /// `Some((rows, cols))`: the stored `[rows, cols]` matrix is handed out as `[cols, rows]`.
    transposed: Option<(usize, usize)>,
}

impl Layout {
    fn of(stored: &[usize], transpose: bool) -> Self {
        match (transpose, stored) {
            (true, &[rows, cols]) => Layout {
                shape: vec![cols, rows],
                transposed: Some((rows, cols)),
            },
            _ => Layout {
                shape: stored.to_vec(),
                transposed: None,
            },
        }
    }
}

/// The `[cols, rows]` transpose of the `[rows, cols]` matrix whose element (r, c) is
/// `at(r, c)`: blocks of output rows on every core, each filled tile by tile (64 × 64, in
/// cache) so that reads and writes both run along rows.
fn transpose<T: Copy + Default + Send>(
    rows: usize,
    cols: usize,
    at: impl Fn(usize, usize) -> T + Sync,
) -> Vec<T> {
    const TILE: usize = 64;
    let mut out = vec![T::default(); rows * cols];
    out.par_chunks_mut(TILE * rows)
        .enumerate()
        .for_each(|(block, dst)| {
            let first = block * TILE;
            let width = dst.len() / rows;
            for r0 in (0..rows).step_by(TILE) {
                let r1 = (r0 + TILE).min(rows);
                for k in 0..width {
                    let c = first + k;
                    for (o, r) in dst[k * rows + r0..k * rows + r1].iter_mut().zip(r0..r1) {
                        *o = at(r, c);
                    }
                }
            }
        });
    out
}

/// The stored values of `bytes` (`W` bytes each, decoded by `decode`) in `layout`, on every
/// core. `done(range)` is told each range of `bytes` that is no longer needed: a tensor kept
/// as stored is converted 32 MiB at a time, so that its source pages go as its values come.
fn decode<const W: usize, T: Copy + Default + Send>(
    bytes: &[u8],
    layout: &Layout,
    decode: impl Fn([u8; W]) -> T + Sync + Send,
    done: &Done,
) -> Vec<T> {
    // Values per parallel task: large tensors are split, small ones stay on this thread.
    const TASK: usize = 1 << 16;
    const STEP_BYTES: usize = 32 << 20;
    let value = |b: &[u8]| decode(b.try_into().unwrap());
    if let Some((rows, cols)) = layout.transposed {
        // Every output block reads every source row: the source stays until the end.
        let values = transpose(rows, cols, |r, c| value(&bytes[(r * cols + c) * W..][..W]));
        done(0..bytes.len());
        return values;
    }
    let mut values = Vec::with_capacity(bytes.len() / W);
    for start in (0..bytes.len()).step_by(STEP_BYTES) {
        let end = (start + STEP_BYTES).min(bytes.len());
        let step = &bytes[start..end];
        if step.len() <= TASK * W {
            values.extend(step.chunks_exact(W).map(value));
        } else {
            values.par_extend(step.par_chunks_exact(W).with_min_len(TASK).map(value));
        }
        done(start..end);
    }
    values
}

/// What [`decode`] tells of the source bytes it no longer needs.
type Done<'a> = dyn Fn(Range<usize>) + Sync + 'a;

/// The stored values as `T`, each read as f32 and cast (exact for a value stored in `T`'s own
/// 16-bit type): straight into the buffer the model keeps, with no copy in between.
fn values<T: Copy + Default + Send>(
    bytes: &[u8],
    from: StoredDtype,
    layout: &Layout,
    cast: impl Fn(f32) -> T + Sync + Send,
    done: &Done,
) -> Vec<T> {
    match from {
        StoredDtype::F32 => decode::<4, T>(bytes, layout, |b| cast(f32::from_le_bytes(b)), done),
        StoredDtype::Bf16 => decode::<2, T>(
            bytes,
            layout,
            |b| cast(bf16::from_le_bytes(b).to_f32()),
            done,
        ),
        StoredDtype::F16 => decode::<2, T>(
            bytes,
            layout,
            |b| cast(f16::from_le_bytes(b).to_f32()),
            done,
        ),
    }
}

/// Little-endian stored values converted to the compute dtype in `layout`, on every core.
fn convert(
    bytes: &[u8],
    from: StoredDtype,
    to: ComputeDtype,
    layout: Layout,
    done: &Done,
) -> TensorData {
    let shape = layout.shape.clone();
    match to {
        ComputeDtype::F32 => TensorData::new(values(bytes, from, &layout, |v| v, done), shape),
        ComputeDtype::Bf16 => {
            TensorData::new(values(bytes, from, &layout, bf16::from_f32, done), shape)
        }
        ComputeDtype::F16 => {
            TensorData::new(values(bytes, from, &layout, f16::from_f32, done), shape)
        }
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
    fn matrices_transpose_while_they_convert() {
        // A 3 × 130 matrix: more columns than one block of output rows.
        let (rows, cols) = (3, 130);
        let values: Vec<f32> = (0..rows * cols).map(|v| v as f32).collect();
        let bytes: Vec<u8> = values
            .iter()
            .flat_map(|v| bf16::from_f32(*v).to_le_bytes())
            .collect();
        let layout = Layout::of(&[rows, cols], true);
        let data = convert(
            &bytes,
            StoredDtype::Bf16,
            ComputeDtype::F32,
            layout,
            &|_| (),
        );
        assert_eq!(data.shape, vec![cols, rows].into());
        let got = data.to_vec::<f32>().unwrap();
        for r in 0..rows {
            for c in 0..cols {
                assert_eq!(
                    got[c * rows + r],
                    bf16::from_f32(values[r * cols + c]).to_f32()
                );
            }
        }
    }

    #[test]
    fn sixteen_bit_values_convert_to_the_compute_dtype() {
        let bytes: Vec<u8> = [1.5f32, -2.25]
            .iter()
            .flat_map(|v| bf16::from_f32(*v).to_le_bytes())
            .collect();
        let plain = || Layout::of(&[2], false);
        let data = convert(
            &bytes,
            StoredDtype::Bf16,
            ComputeDtype::F32,
            plain(),
            &|_| (),
        );
        assert_eq!(data.to_vec::<f32>().unwrap(), vec![1.5, -2.25]);
        let data = convert(
            &bytes,
            StoredDtype::Bf16,
            ComputeDtype::F16,
            plain(),
            &|_| (),
        );
        assert_eq!(
            data.to_vec::<f16>().unwrap(),
            vec![f16::from_f32(1.5), f16::from_f32(-2.25)]
        );
    }
}
