//! The operations between the matmuls, on one backend: the one place that picks apscore's host
//! kernels or burn's.
//!
//! The model's parts ([`super::layers`]) call these with their weights and never ask which
//! kernels run. [`Kernels::Host`] works on tensors in host memory (the CPU backend) with
//! [`super::host_kernels`], one parallel pass per step; [`Kernels::Burn`] uses burn's tensor
//! operations and its fused attention — what runs on CUDA and wgpu, and on the CPU in the tests.
//! The head's log-softmax is the one other kernel-specific step ([`super::logprobs`]).
//!
//! - [`Ops::batch`]: what attention needs to know about a batch, built once per forward pass:
//!   rotary tables and, per sliding window in use, which keys each query sees;
//! - [`Ops::rms_norm`], [`Ops::gated`] (the MLP's activation), [`Ops::attention`] (from the
//!   fused q/k/v projection to the heads' output, with per-head q/k norm, rotation, scaling,
//!   soft-capping and the mask).

use burn::tensor::activation::{gelu_approximate, silu};
use burn::tensor::backend::Backend;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Bool, DType, Tensor, TensorData};

use super::family::{Activation, NormStyle};
use super::host_kernels::{self, KeyMask, QkNorm, ScoreScale};
use super::packing::PackedBatch;
use apscore_core::model_settings::ComputeDtype;

/// How attention, normalisation and the MLP activation are computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernels {
    /// burn's operations throughout, attention by burn's fused `attention` (flash attention
    /// on CUDA).
    Burn,
    /// For tensors in host memory (the CPU backend): attention as batched matmuls with a
    /// one-pass masked softmax, parallel over sequences and heads (burn-flex 0.21's fused
    /// kernel runs its heads one after another on one thread); RMSNorm and the gated
    /// activation as one parallel pass each ([`host_kernels`]).
    Host,
}

/// The kernels and the compute dtype: everything an operation needs besides its inputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ops {
    pub kernels: Kernels,
    pub dtype: ComputeDtype,
}

/// An RMSNorm's weight as the model applies it: a tensor for burn's kernels (`w` in the compute
/// dtype, or `1 + w` in f32 for [`NormStyle::OnePlusWeight`]) and the same values in f32 for the
/// host kernels.
pub struct NormWeights<'a, B: Backend> {
    pub tensor: &'a Tensor<B, 1>,
    pub host: &'a [f32],
    pub eps: f64,
    pub style: NormStyle,
}

/// One layer's self-attention, as far as the kernels are concerned.
pub struct AttentionSpec<'a, B: Backend> {
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    /// Scores are `q·k · scale`.
    pub scale: f64,
    /// `cap · tanh(scores / cap)` before the mask.
    pub softcap: Option<f64>,
    /// Keys this many positions back or further are hidden.
    pub window: Option<usize>,
    /// Per-head RMSNorm of queries and keys (Qwen3).
    pub qk_norm: Option<[NormWeights<'a, B>; 2]>,
}

/// Rotary tables by position, `[positions, head_dim]`, computed on the host; the sin carries
/// `rotate_half`'s sign (negative over the first half of the head dimension).
pub struct RopeRows {
    pub cos: Vec<f32>,
    pub signed_sin: Vec<f32>,
}

/// What attention needs to know about one batch, built once per forward pass.
pub struct Batch<B: Backend> {
    rows: usize,
    len: usize,
    positions: Vec<u32>,
    rope: RopeRows,
    /// burn's kernels: cos and signed sin for every token and head, queries then keys.
    burn_rope: Option<[(Tensor<B, 4>, Tensor<B, 4>); 2]>,
    /// Which keys each query sees, per window in use (`None`: no window).
    visibility: Vec<(Option<usize>, Visibility<B>)>,
}

impl<B: Backend> Batch<B> {
    fn visibility(&self, window: Option<usize>) -> &Visibility<B> {
        &self
            .visibility
            .iter()
            .find(|(w, _)| *w == window)
            .expect("the batch knows every layer's window")
            .1
    }
}

/// Which keys each query of a batch sees.
enum Visibility<B: Backend> {
    /// Every row is a plain causal sequence and the window (if any) hides nothing.
    Causal,
    /// Each row its own, `[rows, heads, len, len]`, true = hidden (burn's fused attention).
    Mask(Tensor<B, 4, Bool>),
    /// Each row its own, `[rows, len, len]` in host memory, true = hidden (host kernels).
    Hidden(Vec<bool>),
}

/// Elements of one `[sequences, heads, len, len]` score block of the batched kernel.
const SCORE_BLOCK_ELEMENTS: usize = 32 << 20;

impl Ops {
    /// What attention needs for `input`: the rotary tables `rope` (spread over the heads for
    /// burn's kernels) and the keys each query sees under each of `windows`.
    pub fn batch<B: Backend>(
        &self,
        input: &PackedBatch,
        rope: RopeRows,
        [heads, kv_heads, head_dim]: [usize; 3],
        windows: &[Option<usize>],
        device: &B::Device,
    ) -> Batch<B> {
        let burn_rope = (self.kernels == Kernels::Burn).then(|| {
            [heads, kv_heads]
                .map(|n| rope_tables::<B>(&rope, input, n, head_dim, (device, self.dtype)))
        });
        let mut visibility: Vec<(Option<usize>, Visibility<B>)> = Vec::new();
        for &window in windows {
            if visibility.iter().all(|(w, _)| *w != window) {
                visibility.push((window, self.visibility(input, window, heads, device)));
            }
        }
        Batch {
            rows: input.rows,
            len: input.len,
            positions: input.positions.clone(),
            rope,
            burn_rope,
            visibility,
        }
    }

    /// Which keys each query sees under `window`, as the attention kernel wants it.
    fn visibility<B: Backend>(
        &self,
        input: &PackedBatch,
        window: Option<usize>,
        heads: usize,
        device: &B::Device,
    ) -> Visibility<B> {
        let window = window.unwrap_or(usize::MAX);
        if input.is_plain_causal(window) {
            return Visibility::Causal;
        }
        let hidden = input.hidden_keys(window);
        match self.kernels {
            Kernels::Burn => Visibility::Mask(burn_attention_mask(hidden, input, heads, device)),
            Kernels::Host => Visibility::Hidden(hidden),
        }
    }

    /// transformers' RMSNorm: the mean square in f32; Llama's weight applied in the compute
    /// dtype after the cast, Gemma's `1 + w` in f32 before it.
    pub fn rms_norm<B: Backend>(
        &self,
        x: Tensor<B, 2>,
        weights: NormWeights<'_, B>,
    ) -> Tensor<B, 2> {
        if self.kernels == Kernels::Host && self.dtype == ComputeDtype::F32 {
            return host_kernels::rms_norm(x, weights.host, weights.eps as f32);
        }
        burn_rms_norm(x, &weights, self.dtype)
    }

    /// `act(gate) · up` from the fused gate/up projection's output `[tokens, 2 · size]`.
    pub fn gated<B: Backend>(&self, gate_up: Tensor<B, 2>, activation: Activation) -> Tensor<B, 2> {
        match self.kernels {
            Kernels::Host => host_kernels::gated(gate_up, activation),
            Kernels::Burn => {
                let size = gate_up.dims()[1] / 2;
                let gate = gate_up.clone().narrow(1, 0, size);
                let gate = match activation {
                    Activation::Silu => silu(gate),
                    Activation::GeluTanh => gelu_approximate(gate),
                };
                gate * gate_up.narrow(1, size, size)
            }
        }
    }

    /// Self-attention from the fused q/k/v projection's output `[tokens, (heads + 2 · kv) ·
    /// dim]` to the heads' output `[tokens, heads · dim]` (before the output projection).
    pub fn attention<B: Backend>(
        &self,
        qkv: Tensor<B, 2>,
        spec: &AttentionSpec<'_, B>,
        batch: &Batch<B>,
    ) -> Tensor<B, 2> {
        let visibility = batch.visibility(spec.window);
        match self.kernels {
            Kernels::Host => host_attention(qkv, spec, batch, visibility),
            Kernels::Burn => self.burn_attention(qkv, spec, batch, visibility),
        }
    }

    /// Self-attention with burn's operations.
    fn burn_attention<B: Backend>(
        &self,
        qkv: Tensor<B, 2>,
        spec: &AttentionSpec<'_, B>,
        batch: &Batch<B>,
        visibility: &Visibility<B>,
    ) -> Tensor<B, 2> {
        let (rows, len, d) = (batch.rows, batch.len, spec.head_dim);
        let [(q_cos, q_sin), (k_cos, k_sin)] = batch
            .burn_rope
            .as_ref()
            .expect("burn's kernels get burn's tables");
        // Each part of [tokens, (heads + 2 · kv) · dim] → [rows, len, heads, dim]. Rotary
        // positions are applied in this layout (contiguous, so element-wise work is cheap),
        // then heads move ahead of positions for attention.
        let split = |first: usize, n: usize| {
            qkv.clone()
                .narrow(1, first * d, n * d)
                .reshape([rows, len, n, d])
        };
        let mut q = split(0, spec.heads);
        let mut k = split(spec.heads, spec.kv_heads);
        let v = split(spec.heads + spec.kv_heads, spec.kv_heads);
        if let Some([q_norm, k_norm]) = &spec.qk_norm {
            q = burn_rms_norm(q, q_norm, self.dtype);
            k = burn_rms_norm(k, k_norm, self.dtype);
        }
        let q = rotate(q, q_cos, q_sin).swap_dims(1, 2);
        let groups = spec.heads / spec.kv_heads;
        let k = repeat_kv(rotate(k, k_cos, k_sin), groups).swap_dims(1, 2);
        let v = repeat_kv(v, groups).swap_dims(1, 2);
        let mask = match visibility {
            Visibility::Mask(masked) => Some(masked.clone()),
            _ => None,
        };
        // A mask hides the later keys itself; the causal flag goes only without one. burn's
        // flash kernel (CubeCL, seen on wgpu) given both hides wrong keys past the first 64.
        // The scale goes only when it is not 1/√d: burn's flash kernel is chosen without one.
        let default_scale = (d as f64).powf(-0.5);
        let options = AttentionModuleOptions {
            scale: (spec.scale != default_scale).then_some(spec.scale),
            softcap: spec.softcap,
            is_causal: mask.is_none(),
        };
        attention(q, k, v, mask, None, options)
            .swap_dims(1, 2)
            .reshape([rows * len, spec.heads * d])
    }
}

/// Self-attention with host kernels: the rotation (after the per-head norm) writes queries
/// and keys straight into the heads-first layout the matmuls read, and the output is moved
/// back in one pass.
fn host_attention<B: Backend>(
    qkv: Tensor<B, 2>,
    spec: &AttentionSpec<'_, B>,
    batch: &Batch<B>,
    visibility: &Visibility<B>,
) -> Tensor<B, 2> {
    let rotation = host_kernels::Rotation {
        cos: &batch.rope.cos,
        signed_sin: &batch.rope.signed_sin,
        positions: &batch.positions,
    };
    let norm = spec.qk_norm.as_ref().map(|[q, k]| QkNorm {
        q: q.host,
        k: k.host,
        eps: q.eps as f32,
    });
    let [q, k, v] = host_kernels::split_qkv(
        qkv,
        [batch.rows, batch.len, spec.head_dim],
        [spec.heads, spec.kv_heads],
        rotation,
        norm,
    );
    let scale = ScoreScale {
        scale: spec.scale as f32,
        softcap: spec.softcap.map(|c| c as f32),
    };
    host_kernels::heads_last(batched_attention(q, k, v, visibility, scale))
}

/// `softmax(softcap(q·kᵀ · scale)) · v` over the keys each query sees, with batched matmuls, in
/// blocks of sequences so the scores stay within [`SCORE_BLOCK_ELEMENTS`]. `k` and `v` keep
/// their own head count: the query heads that share a key/value head (`h / groups`, as
/// transformers' `repeat_kv`) are stacked along the rows of one matmul, so nothing is repeated.
/// The scaling, capping, mask and softmax are one host pass.
fn batched_attention<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    visibility: &Visibility<B>,
    scale: ScoreScale,
) -> Tensor<B, 4> {
    let [rows, heads, len, d] = q.dims();
    let kv_heads = k.dims()[1];
    let groups = heads / kv_heads;
    let per_sequence = (heads * len * len).max(1);
    let block = (SCORE_BLOCK_ELEMENTS / per_sequence).clamp(1, rows);
    let mut outputs = Vec::new();
    let mut start = 0;
    while start < rows {
        let n = block.min(rows - start);
        // [n, heads, len, d] → [n, kv_heads, groups · len, d]: query head h = kv · groups + g.
        let q = q
            .clone()
            .narrow(0, start, n)
            .reshape([n, kv_heads, groups * len, d]);
        let (k, v) = (k.clone().narrow(0, start, n), v.clone().narrow(0, start, n));
        let mask = match visibility {
            Visibility::Causal => KeyMask::Causal,
            Visibility::Hidden(hidden) => KeyMask::PerRow {
                hidden,
                first_row: start,
            },
            Visibility::Mask(_) => unreachable!("host kernels get a host mask"),
        };
        let weights = host_kernels::attention_weights(q.matmul(k.swap_dims(2, 3)), scale, mask);
        outputs.push(weights.matmul(v).reshape([n, heads, len, d]));
        start += n;
    }
    Tensor::cat(outputs, 0)
}

/// RMSNorm over the last dimension with burn's operations, the statistics in f32.
fn burn_rms_norm<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    weights: &NormWeights<'_, B>,
    dtype: ComputeDtype,
) -> Tensor<B, D> {
    let weight = weights.tensor.clone().unsqueeze::<D>();
    let normed = |x: Tensor<B, D>| {
        let rms = (x.clone().square().mean_dim(D - 1) + weights.eps)
            .sqrt()
            .recip();
        x * rms
    };
    match (weights.style, dtype) {
        (_, ComputeDtype::F32) => normed(x) * weight,
        (NormStyle::Weight, _) => normed(x.cast(DType::F32)).cast(float_dtype(dtype)) * weight,
        (NormStyle::OnePlusWeight, _) => {
            (normed(x.cast(DType::F32)) * weight).cast(float_dtype(dtype))
        }
    }
}

/// burn's dtype for a compute dtype.
pub fn float_dtype(dtype: ComputeDtype) -> DType {
    match dtype {
        ComputeDtype::F32 => DType::F32,
        ComputeDtype::Bf16 => DType::BF16,
        ComputeDtype::F16 => DType::F16,
    }
}

/// Each key/value head repeated for the query heads that share it (transformers'
/// `repeat_kv`: query head `h` reads key/value head `h / groups`), in the
/// `[rows, len, heads, dim]` layout: `[r, l, kv, d]` → `[r, l, kv · groups, d]`.
fn repeat_kv<B: Backend>(t: Tensor<B, 4>, groups: usize) -> Tensor<B, 4> {
    if groups == 1 {
        return t;
    }
    let [r, l, kv, d] = t.dims();
    t.unsqueeze_dim::<5>(3)
        .repeat_dim(3, groups)
        .reshape([r, l, kv * groups, d])
}

/// cos and sin of every token's position × frequency (computed in f32 as transformers does,
/// uploaded in the compute dtype as it casts them), laid out as `[rows, len, heads, head_dim]`
/// in full (element-wise products of same-shape contiguous tensors are the backends' fast
/// path; a broadcast over positions is not).
fn rope_tables<B: Backend>(
    rope: &RopeRows,
    input: &PackedBatch,
    heads: usize,
    d: usize,
    (device, dtype): (&B::Device, ComputeDtype),
) -> (Tensor<B, 4>, Tensor<B, 4>) {
    let (rows, len) = (input.rows, input.len);
    // Position rows → every head of every token.
    let spread = |table: &[f32]| {
        let mut out = Vec::with_capacity(rows * len * heads * d);
        for &t in &input.positions {
            let t = t as usize;
            for _ in 0..heads {
                out.extend_from_slice(&table[t * d..(t + 1) * d]);
            }
        }
        Tensor::<B, 4>::from_data(
            TensorData::new(out, [rows, len, heads, d]),
            (device, float_dtype(dtype)),
        )
    };
    (spread(&rope.cos), spread(&rope.signed_sin))
}

/// `x * cos + rotate_half(x) * sin` on `[rows, len, heads, dim]`, where `rotate_half`
/// swaps the two halves of the head dimension and negates the new first half (the negation
/// is in `signed_sin`: the values are the same, one pass fewer).
fn rotate<B: Backend>(
    x: Tensor<B, 4>,
    cos: &Tensor<B, 4>,
    signed_sin: &Tensor<B, 4>,
) -> Tensor<B, 4> {
    let [_, _, _, d] = x.dims();
    let first = x.clone().narrow(3, 0, d / 2);
    let second = x.clone().narrow(3, d / 2, d / 2);
    let swapped = Tensor::cat(vec![second, first], 3);
    x * cos.clone() + swapped * signed_sin.clone()
}

/// The mask burn's fused attention gets for `input`, from its `[rows, len, len]` hidden keys
/// ([`PackedBatch::hidden_keys`]): `[rows, heads, len, len]`, true = hidden, repeated over
/// the heads in host memory and uploaded whole. burn-cubecl's flash kernel finds a head's
/// mask at (row · heads + head) · stride(1): a `[rows, 1, len, len]` mask would be read
/// wrongly for every head but the first, and one repeated on the device with `repeat_dim`
/// was read (on wgpu) as if every row had the first row's mask.
pub fn burn_attention_mask<B: Backend>(
    hidden: Vec<bool>,
    input: &PackedBatch,
    heads: usize,
    device: &B::Device,
) -> Tensor<B, 4, Bool> {
    let (rows, len) = (input.rows, input.len);
    let square = len * len;
    let mut repeated = Vec::with_capacity(rows * heads * square);
    for row in hidden.chunks(square.max(1)).take(rows) {
        for _ in 0..heads {
            repeated.extend_from_slice(row);
        }
    }
    Tensor::<B, 4, Bool>::from_data(TensorData::new(repeated, [rows, heads, len, len]), device)
}
