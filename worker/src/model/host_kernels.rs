//! Element-wise steps of the CPU forward pass, each done in one parallel pass over host memory.
//!
//! On burn-flex every tensor operation is a pass of its own, and its `exp` (inside SiLU and
//! softmax) is glibc's scalar `expf`, SiLU on one thread. The steps here take the tensor's
//! buffer (on a host backend `into_data`/`from_data` move it without a copy), do the whole
//! step in one pass split over rayon's threads, with an `exp` the compiler vectorizes, and
//! hand the buffer back:
//!
//! - [`swiglu`]: `silu(gate) · up` (the MLP's activation);
//! - [`attention_weights`]: `softmax(scores · scale)` over the keys a query may see;
//! - [`rms_norm`]: transformers' `LlamaRMSNorm` in f32.
//!
//! [`exp`] is Cephes' `expf` (range reduction by ln 2 in two parts, a degree-6 polynomial;
//! within 2 ulp of the exact value); no fused multiply-add is used, so every machine gives
//! the same bits whichever vector width it runs.

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use rayon::prelude::*;

/// Elements per parallel task: large enough to amortise scheduling, small enough to split
/// a batch's work over both cores.
const TASK_ELEMENTS: usize = 1 << 14;

/// `e^x` for f32, within 2 ulp; `−∞` and anything below −110 give 0, anything above 88.7
/// gives `e^88.7` (no infinities: `1 / (1 + e^x)` stays finite).
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2_E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Adding 1.5 · 2²³ rounds to an integer held in the low mantissa bits.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-110.0, 88.7);
    let shifted = x * LOG2_E + ROUND;
    let k = shifted - ROUND;
    let ki = shifted.to_bits() as i32 - ROUND.to_bits() as i32;
    let r = x - k * LN2_HI - k * LN2_LO;
    let mut p = 1.987_569_1e-4f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 5.000_000_1e-1;
    let y = p * r * r + r + 1.0;
    // 2^k in two factors, so that k down to −159 (subnormal results, then 0) stays exact.
    let half = ki >> 1;
    let scale = |e: i32| f32::from_bits(((e + 127).clamp(0, 255) as u32) << 23);
    y * scale(half) * scale(ki - half)
}

/// Runs `body` on the best vector unit this CPU has (the same arithmetic on every path).
#[inline(always)]
fn vectorized<R>(body: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx512f")]
        fn avx512<R>(body: impl FnOnce() -> R) -> R {
            body()
        }
        #[target_feature(enable = "avx2")]
        fn avx2<R>(body: impl FnOnce() -> R) -> R {
            body()
        }
        if std::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F.
            return unsafe { avx512(body) };
        }
        if std::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2.
            return unsafe { avx2(body) };
        }
    }
    body()
}

/// The f32 buffer of `tensor` (moved out without a copy on a host backend).
fn host_buffer<B: Backend, const D: usize>(tensor: Tensor<B, D>) -> (Vec<f32>, [usize; D]) {
    let dims = tensor.dims();
    let values = tensor
        .into_data()
        .into_vec::<f32>()
        .expect("the host kernels run on f32 tensors");
    (values, dims)
}

fn tensor<B: Backend, const D: usize>(
    values: Vec<f32>,
    dims: [usize; D],
    device: &B::Device,
) -> Tensor<B, D> {
    Tensor::from_data(TensorData::new(values, dims), device)
}

/// `silu(gate) · up`, element by element (transformers: `act_fn(gate_proj(x)) * up_proj(x)`,
/// with `silu(x) = x / (1 + e^−x)`).
pub fn swiglu<B: Backend>(gate: Tensor<B, 2>, up: Tensor<B, 2>) -> Tensor<B, 2> {
    let device = gate.device();
    let (mut gate, dims) = host_buffer(gate);
    let (up, _) = host_buffer(up);
    gate.par_chunks_mut(TASK_ELEMENTS)
        .zip(up.par_chunks(TASK_ELEMENTS))
        .for_each(|(g, u)| {
            vectorized(|| {
                for (g, &u) in g.iter_mut().zip(u) {
                    *g = *g / (1.0 + exp(-*g)) * u;
                }
            })
        });
    tensor(gate, dims, &device)
}

/// Which keys each query row of an attention score block sees.
#[derive(Clone, Copy)]
pub enum KeyMask<'a> {
    /// Query `i` sees keys `0..=i`.
    Causal,
    /// `[rows, len, len]`, true = hidden; the block's sequences start at `first_row`.
    PerRow {
        hidden: &'a [bool],
        first_row: usize,
    },
}

/// `softmax(scores · scale)` over the last dimension of `scores` (`[n, kv, groups · len,
/// len]`, the query heads of a key/value group stacked along the rows), counting only the keys
/// `mask` lets each query see; hidden keys get weight 0.
pub fn attention_weights<B: Backend>(
    scores: Tensor<B, 4>,
    scale: f32,
    mask: KeyMask<'_>,
) -> Tensor<B, 4> {
    let device = scores.device();
    let (mut values, dims) = host_buffer(scores);
    let [_, kv_heads, stacked, len] = dims;
    let per_head_group = stacked * len;
    values
        .par_chunks_mut(len * (TASK_ELEMENTS / len).max(1))
        .enumerate()
        .for_each(|(task, rows)| {
            let first = task * (TASK_ELEMENTS / len).max(1);
            vectorized(|| {
                for (k, row) in rows.chunks_exact_mut(len).enumerate() {
                    let r = first + k;
                    // Row r is query i of sequence `r / (kv · groups · len)`.
                    let i = r % len;
                    let sequence = r * len / (per_head_group * kv_heads);
                    match mask {
                        KeyMask::Causal => softmax_prefix(row, i + 1, scale),
                        KeyMask::PerRow { hidden, first_row } => {
                            let at = ((first_row + sequence) * len + i) * len;
                            softmax_visible(row, &hidden[at..at + len], scale)
                        }
                    }
                }
            })
        });
    tensor(values, dims, &device)
}

/// Softmax of `row[..visible] · scale`; the rest of the row gets 0.
#[inline(always)]
fn softmax_prefix(row: &mut [f32], visible: usize, scale: f32) {
    let (seen, hidden) = row.split_at_mut(visible);
    let max = seen
        .iter()
        .fold(f32::NEG_INFINITY, |m, &v| m.max(v * scale));
    let mut sum = 0.0f32;
    for v in seen.iter_mut() {
        *v = exp(*v * scale - max);
        sum += *v;
    }
    let inv = 1.0 / sum;
    seen.iter_mut().for_each(|v| *v *= inv);
    hidden.iter_mut().for_each(|v| *v = 0.0);
}

/// Softmax of `row · scale` over the keys not `hidden`; hidden keys get 0.
#[inline(always)]
fn softmax_visible(row: &mut [f32], hidden: &[bool], scale: f32) {
    let max = row.iter().zip(hidden).fold(
        f32::NEG_INFINITY,
        |m, (&v, &h)| if h { m } else { m.max(v * scale) },
    );
    let mut sum = 0.0f32;
    for (v, &h) in row.iter_mut().zip(hidden) {
        *v = if h { 0.0 } else { exp(*v * scale - max) };
        sum += *v;
    }
    let inv = 1.0 / sum;
    row.iter_mut().for_each(|v| *v *= inv);
}

/// transformers' `LlamaRMSNorm` on `[tokens, hidden]` f32: `x / √(mean(x²) + eps) · weight`.
pub fn rms_norm<B: Backend>(x: Tensor<B, 2>, weight: &[f32], eps: f32) -> Tensor<B, 2> {
    let device = x.device();
    let (mut values, dims) = host_buffer(x);
    let hidden = dims[1];
    values
        .par_chunks_mut(hidden * (TASK_ELEMENTS / hidden).max(1))
        .for_each(|rows| {
            vectorized(|| {
                for row in rows.chunks_exact_mut(hidden) {
                    let mean = sum_of_squares(row) / hidden as f32;
                    let inv = 1.0 / (mean + eps).sqrt();
                    for (v, &w) in row.iter_mut().zip(weight) {
                        *v = w * (*v * inv);
                    }
                }
            })
        });
    tensor(values, dims, &device)
}

/// `Σ v²` in 16 interleaved partial sums (vectorizable, and closer to a pairwise sum than
/// one running total).
#[inline(always)]
fn sum_of_squares(values: &[f32]) -> f32 {
    let mut lanes = [0.0f32; 16];
    let mut blocks = values.chunks_exact(16);
    for block in &mut blocks {
        for (lane, &v) in lanes.iter_mut().zip(block) {
            *lane += v * v;
        }
    }
    let tail: f32 = blocks.remainder().iter().map(|v| v * v).sum();
    lanes.iter().sum::<f32>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Units in the last place between `a` and `b`.
    fn ulps(a: f32, b: f32) -> u32 {
        (a.to_bits() as i64 - b.to_bits() as i64).unsigned_abs() as u32
    }

    #[test]
    fn exp_is_within_two_ulp_of_the_exact_value() {
        let mut worst = 0;
        let mut x = -110.0f32;
        while x < 88.7 {
            let exact = (x as f64).exp() as f32;
            if exact.is_normal() {
                worst = worst.max(ulps(exp(x), exact));
            }
            x += 0.000_93;
        }
        assert!(worst <= 2, "worst error {worst} ulp");
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp(0.0), 1.0);
        assert!(exp(-200.0) == 0.0 && exp(100.0) > 1e38 && exp(100.0).is_finite());
    }

    #[test]
    fn softmax_counts_only_visible_keys() {
        let mut row = [1.0f32, 2.0, 3.0, 100.0];
        softmax_prefix(&mut row, 3, 0.5);
        let z: f64 = [0.5f64, 1.0, 1.5].iter().map(|v| v.exp()).sum();
        for (got, v) in row.iter().zip([0.5f64, 1.0, 1.5]) {
            assert!((*got as f64 - v.exp() / z).abs() < 1e-7);
        }
        assert_eq!(row[3], 0.0);
        let mut row = [1.0f32, 100.0, 3.0];
        softmax_visible(&mut row, &[false, true, false], 1.0);
        assert_eq!(row[1], 0.0);
        assert!((row[0] + row[2] - 1.0).abs() < 1e-6);
    }
}
