//! Element-wise steps of the CPU forward pass, each done in one parallel pass over host memory.
//!
//! On burn-flex every tensor operation is a pass of its own, and its `exp` (inside SiLU and
//! softmax) is glibc's scalar `expf`, SiLU on one thread. The steps here borrow the tensor's
//! buffer (on a host backend `into_data`/`from_data` move it without a copy), do the whole
//! step in one pass split over rayon's threads, with an `exp` the compiler vectorizes, and
//! write the result in place or, where the shape changes, into one new buffer:
//!
//! - [`gated`]: `act(gate) · up` (the MLP's activation: SwiGLU, or GeGLU with tanh);
//! - [`split_qkv`] (with the per-head q/k norm and the rotary embedding) and [`heads_last`]:
//!   the layout moves around attention;
//! - [`attention_weights`]: `softmax(softcap(scores · scale))` over the keys a query may see;
//! - [`rms_norm`]: transformers' RMSNorm in f32 (the weight given as applied: `w`, or Gemma's
//!   `1 + w`);
//! - [`log_sum_exp_update`]: the log-sum-exp over the vocabulary, chunk by chunk, of logits
//!   soft-capped when the model caps them.
//!
//! [`exp`] is Cephes' `expf` (range reduction by ln 2 in two parts, a degree-6 polynomial;
//! within 2 ulp of the exact value), [`tanh`] Cephes' `tanhf` (a polynomial near 0, `exp`
//! beyond); no fused multiply-add is used, so every machine gives the same bits whichever
//! vector width it runs.

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use rayon::prelude::*;

use super::family::Activation;

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
    p = p * r + 0.5;
    let y = p * r * r + r + 1.0;
    // 2^k in two factors, so that k down to −159 (subnormal results, then 0) stays exact.
    let half = ki >> 1;
    let scale = |e: i32| f32::from_bits(((e + 127).clamp(0, 255) as u32) << 23);
    y * scale(half) * scale(ki - half)
}

/// `tanh(x)` for f32: Cephes' `tanhf` — an odd polynomial for |x| < 0.625, `1 − 2 / (e^2|x| + 1)`
/// beyond (with [`exp`]), the sign put back; ±1 from |x| > 9 on. Both branches are computed and
/// one is picked, so that a loop over it vectorizes.
#[inline(always)]
pub fn tanh(x: f32) -> f32 {
    let z = x * x;
    let mut p = -5.704_988_7e-3f32;
    p = p * z + 2.063_909e-2;
    p = p * z - 5.373_971_6e-2;
    p = p * z + 1.333_144_2e-1;
    p = p * z - 3.333_328e-1;
    let small = p * z * x + x;
    let a = x.abs();
    let large = 1.0 - 2.0 / (exp(2.0 * a.min(9.0)) + 1.0);
    let large = if a > 9.0 { 1.0 } else { large }.copysign(x);
    if a < 0.625 { small } else { large }
}

/// `cap · tanh(x / cap)`: scores and logits soft-capped as Gemma 2 caps them.
#[inline(always)]
pub fn softcap(x: f32, cap: f32) -> f32 {
    cap * tanh(x / cap)
}

/// GELU with the tanh approximation, as torch computes `gelu(x, approximate="tanh")` in f32:
/// `0.5 · x · (1 + tanh(√(2/π) · (x + 0.044715 · x³)))`.
#[inline(always)]
pub fn gelu_tanh(x: f32) -> f32 {
    const BETA: f32 = 0.797_884_6; // √2 · (2/√π) · ½
    const KAPPA: f32 = 0.044_715;
    let inner = BETA * (x + KAPPA * (x * x * x));
    0.5 * x * (1.0 + tanh(inner))
}

/// Defines `fn $name` whose body is compiled three times — for AVX-512, for AVX2 and for
/// the baseline — and runs the best this CPU has. The arithmetic is the same on every path
/// (no fused multiply-add), so the results are too; only the vector width differs. Helpers
/// the body calls must be `#[inline(always)]` to be compiled for the wider units.
macro_rules! vectorized_fn {
    ($(#[$doc:meta])* fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$doc])*
        fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn body($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f")]
                fn avx512($($arg: $ty),*) $(-> $ret)? {
                    body($($arg),*)
                }
                #[target_feature(enable = "avx2")]
                fn avx2($($arg: $ty),*) $(-> $ret)? {
                    body($($arg),*)
                }
                if std::is_x86_feature_detected!("avx512f") {
                    // SAFETY: the CPU has AVX-512F.
                    return unsafe { avx512($($arg),*) };
                }
                if std::is_x86_feature_detected!("avx2") {
                    // SAFETY: the CPU has AVX2.
                    return unsafe { avx2($($arg),*) };
                }
            }
            body($($arg),*)
        }
    };
}

/// Runs `step` on the f32 buffer of `tensor` in place (on a host backend the buffer moves
/// out and back without a copy).
fn in_place<B: Backend, const D: usize>(
    tensor: Tensor<B, D>,
    step: impl FnOnce(&mut [f32], [usize; D]),
) -> Tensor<B, D> {
    let (device, dims) = (tensor.device(), tensor.dims());
    let mut data = tensor.into_data();
    step(
        data.as_mut_slice::<f32>()
            .expect("the host kernels run on f32 tensors"),
        dims,
    );
    Tensor::from_data(data, &device)
}

/// `act(gate) · up` from the fused gate/up projection's output `[tokens, 2 · size]` (gate
/// first), giving `[tokens, size]` (transformers: `act_fn(gate_proj(x)) * up_proj(x)`), with
/// `silu(x) = x / (1 + e^−x)` or [`gelu_tanh`].
pub fn gated<B: Backend>(gate_up: Tensor<B, 2>, activation: Activation) -> Tensor<B, 2> {
    let device = gate_up.device();
    let [tokens, width] = gate_up.dims();
    let size = width / 2;
    let data = gate_up.into_data();
    let input = data
        .as_slice::<f32>()
        .expect("the host kernels run on f32 tensors");
    let rows_per_task = (TASK_ELEMENTS / size).max(1);
    let mut out = vec![0.0f32; tokens * size];
    out.par_chunks_mut(size * rows_per_task)
        .zip(input.par_chunks(width * rows_per_task))
        .for_each(|(out, input)| {
            for (out, row) in out.chunks_exact_mut(size).zip(input.chunks_exact(width)) {
                let (gate, up) = row.split_at(size);
                match activation {
                    Activation::Silu => swiglu_row(out, gate, up),
                    Activation::GeluTanh => geglu_row(out, gate, up),
                }
            }
        });
    Tensor::from_data(TensorData::new(out, [tokens, size]), &device)
}

vectorized_fn! {
    fn swiglu_row(out: &mut [f32], gate: &[f32], up: &[f32]) {
        for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
            *o = g / (1.0 + exp(-g)) * u;
        }
    }
}

vectorized_fn! {
    fn geglu_row(out: &mut [f32], gate: &[f32], up: &[f32]) {
        for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
            *o = gelu_tanh(g) * u;
        }
    }
}

/// Rotary position embedding tables (`[positions, dim]`, the sin signed as `rotate_half`
/// needs: negative over the first half) and each token's position.
#[derive(Clone, Copy)]
pub struct Rotation<'a> {
    pub cos: &'a [f32],
    pub signed_sin: &'a [f32],
    pub positions: &'a [u32],
}

/// The per-head RMSNorm of queries and keys before rotation (Qwen3): each weight over one
/// head's dimensions, as applied.
#[derive(Clone, Copy)]
pub struct QkNorm<'a> {
    pub q: &'a [f32],
    pub k: &'a [f32],
    pub eps: f32,
}

/// The fused q/k/v projection's output, `[batch · len, (heads + 2 · kv_heads) · dim]`, split
/// into queries `[batch, heads, len, dim]`, keys and values `[batch, kv_heads, len, dim]`;
/// queries and keys normalized per head when `norm` is given, then rotated by each token's
/// position (transformers: `x · cos + rotate_half(x) · sin`).
pub fn split_qkv<B: Backend>(
    qkv: Tensor<B, 2>,
    [batch, len, dim]: [usize; 3],
    [heads, kv_heads]: [usize; 2],
    rotation: Rotation<'_>,
    norm: Option<QkNorm<'_>>,
) -> [Tensor<B, 4>; 3] {
    let device = qkv.device();
    let data = qkv.into_data();
    let input = data
        .as_slice::<f32>()
        .expect("the host kernels run on f32 tensors");
    let width = (heads + 2 * kv_heads) * dim;
    let part = |first_head: usize, heads: usize, rotated: Option<Option<&[f32]>>| {
        let mut out = vec![0.0f32; batch * heads * len * dim];
        out.par_chunks_mut(len * dim)
            .enumerate()
            .for_each(|(plane, out)| {
                let (b, h) = (plane / heads, plane % heads);
                let mut normed = vec![0.0f32; dim];
                for (t, out) in out.chunks_exact_mut(dim).enumerate() {
                    let token = b * len + t;
                    let at = token * width + (first_head + h) * dim;
                    let mut x = &input[at..at + dim];
                    let Some(weight) = rotated else {
                        out.copy_from_slice(x);
                        continue;
                    };
                    if let (Some(weight), Some(norm)) = (weight, norm) {
                        normed.copy_from_slice(x);
                        rms_norm_rows(&mut normed, dim, weight, norm.eps);
                        x = &normed;
                    }
                    let p = rotation.positions[token] as usize * dim;
                    let (cos, sin) = (&rotation.cos[p..p + dim], &rotation.signed_sin[p..p + dim]);
                    rotate_half(out, x, cos, sin);
                }
            });
        Tensor::from_data(TensorData::new(out, [batch, heads, len, dim]), &device)
    };
    [
        part(0, heads, Some(norm.map(|n| n.q))),
        part(heads, kv_heads, Some(norm.map(|n| n.k))),
        part(heads + kv_heads, kv_heads, None),
    ]
}

vectorized_fn! {
    /// `out = x · cos + rotate_half(x) · signed_sin` for one head.
    fn rotate_half(out: &mut [f32], x: &[f32], cos: &[f32], signed_sin: &[f32]) {
        let half = x.len() / 2;
        let (out_first, out_second) = out.split_at_mut(half);
        let (x_first, x_second) = x.split_at(half);
        for j in 0..half {
            out_first[j] = x_first[j] * cos[j] + x_second[j] * signed_sin[j];
            out_second[j] = x_second[j] * cos[half + j] + x_first[j] * signed_sin[half + j];
        }
    }
}

/// `[batch, heads, len, dim]` (attention's output) → `[batch · len, heads · dim]`.
pub fn heads_last<B: Backend>(x: Tensor<B, 4>) -> Tensor<B, 2> {
    let device = x.device();
    let [batch, heads, len, dim] = x.dims();
    let data = x.into_data();
    let input = data
        .as_slice::<f32>()
        .expect("the host kernels run on f32 tensors");
    let mut out = vec![0.0f32; batch * len * heads * dim];
    out.par_chunks_mut(heads * dim)
        .enumerate()
        .for_each(|(token, out)| {
            let (b, t) = (token / len, token % len);
            for (h, out) in out.chunks_exact_mut(dim).enumerate() {
                let at = ((b * heads + h) * len + t) * dim;
                out.copy_from_slice(&input[at..at + dim]);
            }
        });
    Tensor::from_data(TensorData::new(out, [batch * len, heads * dim]), &device)
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

/// How raw attention scores become logits: `q·k · scale`, then soft-capped when `softcap`
/// (`cap · tanh(s / cap)`, Gemma 2), before any key is hidden.
#[derive(Clone, Copy)]
pub struct ScoreScale {
    pub scale: f32,
    pub softcap: Option<f32>,
}

/// `softmax(softcap(scores · scale))` over the last dimension of `scores` (`[n, kv, groups ·
/// len, len]`, the query heads of a key/value group stacked along the rows), counting only the
/// keys `mask` lets each query see; hidden keys get weight 0.
pub fn attention_weights<B: Backend>(
    scores: Tensor<B, 4>,
    scale: ScoreScale,
    mask: KeyMask<'_>,
) -> Tensor<B, 4> {
    in_place(scores, |values, [_, kv_heads, stacked, len]| {
        let rows_per_task = (TASK_ELEMENTS / len).max(1);
        values
            .par_chunks_mut(len * rows_per_task)
            .enumerate()
            .for_each(|(task, rows)| {
                let first = task * rows_per_task;
                softmax_rows(rows, first, len, kv_heads * stacked, mask, scale)
            })
    })
}

vectorized_fn! {
    /// Softmax of the score rows `rows` (`len` keys each), the first being row `first` of
    /// the block; `per_sequence` rows make up one sequence.
    fn softmax_rows(
        rows: &mut [f32],
        first: usize,
        len: usize,
        per_sequence: usize,
        mask: KeyMask<'_>,
        scale: ScoreScale,
    ) {
        for (k, row) in rows.chunks_exact_mut(len).enumerate() {
            // Row r is query i of sequence r / per_sequence.
            let r = first + k;
            let i = r % len;
            match mask {
                KeyMask::Causal => softmax_prefix(row, i + 1, scale),
                KeyMask::PerRow { hidden, first_row } => {
                    // Keys after the query are hidden in every row: only 0..=i can be seen.
                    let at = ((first_row + r / per_sequence) * len + i) * len;
                    let (seen, after) = row.split_at_mut(i + 1);
                    softmax_visible(seen, &hidden[at..=at + i], scale);
                    after.iter_mut().for_each(|v| *v = 0.0);
                }
            }
        }
    }
}

/// Softmax of the scaled (and capped) `row[..visible]`; the rest of the row gets 0.
#[inline(always)]
fn softmax_prefix(row: &mut [f32], visible: usize, scale: ScoreScale) {
    let (seen, hidden) = row.split_at_mut(visible);
    scale_scores(seen, scale);
    softmax(seen);
    hidden.iter_mut().for_each(|v| *v = 0.0);
}

/// Softmax of the scaled (and capped) `row` over the keys not `hidden`; hidden keys get 0.
#[inline(always)]
fn softmax_visible(row: &mut [f32], hidden: &[bool], scale: ScoreScale) {
    scale_scores(row, scale);
    for (v, &h) in row.iter_mut().zip(hidden) {
        *v = if h { f32::NEG_INFINITY } else { *v };
    }
    softmax(row);
}

/// `softcap(row · scale)` in place, as transformers' eager attention: multiply, then divide by
/// the cap, tanh, multiply by the cap.
#[inline(always)]
fn scale_scores(row: &mut [f32], scale: ScoreScale) {
    for v in row.iter_mut() {
        *v *= scale.scale;
    }
    if let Some(cap) = scale.softcap {
        for v in row.iter_mut() {
            *v = softcap(*v, cap);
        }
    }
}

/// `softmax(row)` in place (`−∞` entries get 0).
#[inline(always)]
fn softmax(row: &mut [f32]) {
    let max = lane_max(row);
    for v in row.iter_mut() {
        *v = exp(*v - max);
    }
    let inv = 1.0 / lane_sum(row);
    row.iter_mut().for_each(|v| *v *= inv);
}

/// Folds the log-sum-exp of each row of `logits` (`[rows, vocab chunk]`), soft-capped first
/// when `softcap` is given, into `running` (`(max, Σ e^(x − max))` per row, starting from
/// `(−∞, 0)`): the vocabulary in chunks, each read once.
pub fn log_sum_exp_update<B: Backend>(
    logits: Tensor<B, 2>,
    running: &mut [(f32, f32)],
    softcap: Option<f32>,
) {
    let [_, width] = logits.dims();
    let mut data = logits.into_data();
    let values = data
        .as_mut_slice::<f32>()
        .expect("the host kernels run on f32 tensors");
    running
        .par_iter_mut()
        .zip(values.par_chunks_mut(width))
        .for_each(|((max, sum), row)| {
            if let Some(cap) = softcap {
                softcap_row(row, cap);
            }
            let (row_max, row_sum) = max_and_exp_sum(row);
            let new_max = max.max(row_max);
            *sum = *sum * exp(*max - new_max) + row_sum * exp(row_max - new_max);
            *max = new_max;
        });
}

vectorized_fn! {
    /// `cap · tanh(v / cap)` for every value of `row`.
    fn softcap_row(row: &mut [f32], cap: f32) {
        for v in row.iter_mut() {
            *v = softcap(*v, cap);
        }
    }
}

vectorized_fn! {
    /// `(max, Σ e^(v − max))` of `row`.
    fn max_and_exp_sum(row: &[f32]) -> (f32, f32) {
        let max = lane_max(row);
        let mut lanes = [0.0f32; 16];
        let mut blocks = row.chunks_exact(16);
        for block in &mut blocks {
            for (lane, &v) in lanes.iter_mut().zip(block) {
                *lane += exp(v - max);
            }
        }
        let tail: f32 = blocks.remainder().iter().map(|&v| exp(v - max)).sum();
        (max, lanes.iter().sum::<f32>() + tail)
    }
}

/// transformers' RMSNorm on `[tokens, hidden]` f32: `x / √(mean(x²) + eps) · weight`, with
/// the weight as the model applies it (Llama's `w`; Gemma's `1 + w`, its product in f32 too).
pub fn rms_norm<B: Backend>(x: Tensor<B, 2>, weight: &[f32], eps: f32) -> Tensor<B, 2> {
    in_place(x, |values, [_, hidden]| {
        values
            .par_chunks_mut(hidden * (TASK_ELEMENTS / hidden).max(1))
            .for_each(|rows| rms_norm_rows(rows, hidden, weight, eps))
    })
}

vectorized_fn! {
    fn rms_norm_rows(rows: &mut [f32], hidden: usize, weight: &[f32], eps: f32) {
        for row in rows.chunks_exact_mut(hidden) {
            let mut lanes = [0.0f32; 16];
            let mut blocks = row.chunks_exact(16);
            for block in &mut blocks {
                for (lane, &v) in lanes.iter_mut().zip(block) {
                    *lane += v * v;
                }
            }
            let tail: f32 = blocks.remainder().iter().map(|v| v * v).sum();
            let mean = (lanes.iter().sum::<f32>() + tail) / hidden as f32;
            let inv = 1.0 / (mean + eps).sqrt();
            for (v, &w) in row.iter_mut().zip(weight) {
                *v = w * (*v * inv);
            }
        }
    }
}

/// The largest of `values` (`−∞` for none), in 16 lanes the compiler vectorizes.
#[inline(always)]
fn lane_max(values: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; 16];
    let mut blocks = values.chunks_exact(16);
    for block in &mut blocks {
        for (lane, &v) in lanes.iter_mut().zip(block) {
            *lane = if v > *lane { v } else { *lane };
        }
    }
    let tail = blocks
        .remainder()
        .iter()
        .fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    lanes.iter().fold(tail, |m, &v| m.max(v))
}

/// `Σ values` in 16 interleaved partial sums (vectorizable, and closer to a pairwise sum
/// than one running total).
#[inline(always)]
fn lane_sum(values: &[f32]) -> f32 {
    let mut lanes = [0.0f32; 16];
    let mut blocks = values.chunks_exact(16);
    for block in &mut blocks {
        for (lane, &v) in lanes.iter_mut().zip(block) {
            *lane += v;
        }
    }
    let tail: f32 = blocks.remainder().iter().sum();
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

    #[cfg(feature = "flex")]
    #[test]
    fn log_sum_exp_over_chunks_equals_the_whole_row() {
        use burn::backend::Flex;
        let row: Vec<f32> = (0..100)
            .map(|i| ((i * 37) % 23) as f32 * 0.7 - 5.0)
            .collect();
        let exact = row.iter().map(|&v| (v as f64).exp()).sum::<f64>().ln();
        let mut running = [(f32::NEG_INFINITY, 0.0f32)];
        for chunk in row.chunks(30) {
            let logits = Tensor::<Flex<f32, i32>, 2>::from_data(
                burn::tensor::TensorData::new(chunk.to_vec(), [1, chunk.len()]),
                &Default::default(),
            );
            log_sum_exp_update(logits, &mut running, None);
        }
        let (max, sum) = running[0];
        assert!((max as f64 + (sum as f64).ln() - exact).abs() < 1e-5);
    }

    #[test]
    fn tanh_and_gelu_are_within_a_few_ulp() {
        let mut worst = 0;
        let mut x = -12.0f32;
        while x < 12.0 {
            let exact = (x as f64).tanh() as f32;
            if exact.abs() > 1e-30 {
                worst = worst.max(ulps(tanh(x), exact));
            }
            x += 0.000_37;
        }
        assert!(worst <= 3, "tanh: worst error {worst} ulp");
        assert_eq!(tanh(0.0), 0.0);
        assert_eq!((tanh(30.0), tanh(-30.0)), (1.0, -1.0));
        // GELU(tanh) against the formula in f64.
        for x in [-6.0f32, -1.5, -0.3, 0.0, 0.2, 1.0, 3.7] {
            let x64 = x as f64;
            let inner = (2.0 / std::f64::consts::PI).sqrt() * (x64 + 0.044715 * x64.powi(3));
            let exact = 0.5 * x64 * (1.0 + inner.tanh());
            assert!((gelu_tanh(x) as f64 - exact).abs() <= 2e-7 * exact.abs().max(1.0));
        }
        assert!((softcap(100.0, 5.0) - 5.0).abs() < 1e-6 && softcap(0.5, 50.0) < 0.5);
    }

    #[test]
    fn soft_capping_comes_before_the_mask() {
        // Capped at 1: scores 0.5 and 8 become tanh(0.5) and ~1; the hidden key stays hidden.
        let mut row = [0.5f32, 8.0, -100.0];
        let scale = ScoreScale {
            scale: 1.0,
            softcap: Some(1.0),
        };
        softmax_visible(&mut row, &[false, false, true], scale);
        let (a, b) = ((0.5f64).tanh().exp(), (8.0f64).tanh().exp());
        assert!((row[0] as f64 - a / (a + b)).abs() < 1e-6, "{row:?}");
        assert_eq!(row[2], 0.0);
    }

    #[test]
    fn softmax_counts_only_visible_keys() {
        let plain = |scale| ScoreScale {
            scale,
            softcap: None,
        };
        let mut row = [1.0f32, 2.0, 3.0, 100.0];
        softmax_prefix(&mut row, 3, plain(0.5));
        let z: f64 = [0.5f64, 1.0, 1.5].iter().map(|v| v.exp()).sum();
        for (got, v) in row.iter().zip([0.5f64, 1.0, 1.5]) {
            assert!((*got as f64 - v.exp() / z).abs() < 1e-7);
        }
        assert_eq!(row[3], 0.0);
        let mut row = [1.0f32, 100.0, 3.0];
        softmax_visible(&mut row, &[false, true, false], plain(1.0));
        assert_eq!(row[1], 0.0);
        assert!((row[0] + row[2] - 1.0).abs() < 1e-6);
    }
}
