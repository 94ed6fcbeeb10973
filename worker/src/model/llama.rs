//! The Hugging Face Llama architecture in burn, faithful to transformers' `LlamaModel`.
//!
//! Token embeddings, then per layer: RMSNorm → grouped-query self-attention with rotary
//! positions (`rotate_half` convention) → residual, RMSNorm → SwiGLU MLP → residual; a final
//! RMSNorm. Covers Llama 2/3/3.x, Mistral (sliding window), Qwen2 (q/k/v bias) and SmolLM2.
//! The LM head is not applied here: [`crate::model::logprobs`] applies it only at the
//! positions that are scored.
//!
//! The input is a [`PackedBatch`]: rows right-padded to one length, each token with its own
//! rotary position and the tokens it may see (a causal sequence, or a pair's shared prompt
//! and its two branches: [`crate::model::packing`]). The outputs at padded positions are
//! never read.

use burn::tensor::activation::silu;
use burn::tensor::backend::Backend;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Bool, DType, Int, Tensor, TensorData};

use super::config::{ModelConfig, RopeScaling};
use super::host_kernels::{self, KeyMask};
use super::packing::PackedBatch;
use super::weights::{Weights, WeightsError};
use apscore_core::model_settings::ComputeDtype;

/// A linear layer stored as `[in, out]` (transformers stores `[out, in]`).
struct Linear<B: Backend> {
    weight: Tensor<B, 2>,
    bias: Option<Tensor<B, 1>>,
}

impl<B: Backend> Linear<B> {
    /// Layers that read the same input as one: their outputs side by side.
    fn fused(parts: Vec<Linear<B>>) -> Self {
        let bias = parts
            .iter()
            .map(|p| p.bias.clone())
            .collect::<Option<Vec<_>>>()
            .map(|b| Tensor::cat(b, 0));
        let weight = Tensor::cat(parts.into_iter().map(|p| p.weight).collect(), 1);
        Linear { weight, bias }
    }

    fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        let y = x.matmul(self.weight.clone());
        match &self.bias {
            Some(b) => y + b.clone().unsqueeze_dim(0),
            None => y,
        }
    }
}

/// One decoder layer. The projections that read the same input are fused into one matmul
/// each: q, k and v (`[hidden, q + 2 · kv]`), gate and up (`[hidden, 2 · intermediate]`).
struct Layer<B: Backend> {
    input_norm: Tensor<B, 1>,
    qkv: Linear<B>,
    o: Linear<B>,
    post_attention_norm: Tensor<B, 1>,
    gate_up: Linear<B>,
    down: Linear<B>,
}

/// A loaded model on one device.
pub struct Llama<B: Backend> {
    pub config: ModelConfig,
    pub dtype: ComputeDtype,
    pub device: B::Device,
    embed: Tensor<B, 2>,
    layers: Vec<Layer<B>>,
    norm: Tensor<B, 1>,
    /// `[vocab, hidden]`; the embedding table when the embeddings are tied.
    lm_head: Tensor<B, 2>,
    inv_freq: Vec<f32>,
    /// How the steps other than matmuls are computed on this backend.
    pub kernels: Kernels,
}

/// How attention, normalisation and the MLP activation are computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernels {
    /// burn's operations throughout, attention by burn's fused `attention` (flash attention
    /// on CUDA).
    Burn,
    /// For tensors in host memory (the CPU backend): attention as batched matmuls with a
    /// one-pass masked softmax, parallel over sequences and heads (burn-flex 0.21's fused
    /// kernel runs its heads one after another on one thread); RMSNorm and SwiGLU as one
    /// parallel pass each ([`host_kernels`]).
    Host,
}

/// Rotary tables by position, `[positions, head_dim]`; the sin carries `rotate_half`'s sign
/// (negative over the first half of the head dimension).
struct RopeRows {
    cos: Vec<f32>,
    signed_sin: Vec<f32>,
}

/// Which keys each query of a batch sees.
enum Visibility<B: Backend> {
    /// Every row is a plain causal sequence and no sliding window applies.
    Causal,
    /// Each row its own, `[rows, heads, len, len]`, true = hidden (burn's fused attention).
    Mask(Tensor<B, 4, Bool>),
    /// Each row its own, `[rows, len, len]` in host memory, true = hidden (host kernels).
    Hidden(Vec<bool>),
}

/// Elements of one `[sequences, heads, len, len]` score block of the batched kernel.
const SCORE_BLOCK_ELEMENTS: usize = 32 << 20;

/// Reads a tensor of `shape` out of the weights onto `device` (missing ones are recorded by
/// [`Weights`] and stand in as zeros until [`Weights::finish`] reports them all).
struct Loader<'w, B: Backend> {
    weights: &'w mut Weights,
    dtype: ComputeDtype,
    device: B::Device,
}

impl<B: Backend> Loader<'_, B> {
    fn data(&mut self, name: &str, shape: &[usize]) -> Result<TensorData, WeightsError> {
        Ok(self
            .weights
            .take(name, shape, self.dtype)?
            .unwrap_or_else(|| TensorData::zeros::<f32, _>(shape.to_vec())))
    }

    fn vector(&mut self, name: &str, len: usize) -> Result<Tensor<B, 1>, WeightsError> {
        let data = self.data(name, &[len])?;
        Ok(Tensor::from_data(data, &self.device))
    }

    fn matrix(
        &mut self,
        name: &str,
        rows: usize,
        cols: usize,
    ) -> Result<Tensor<B, 2>, WeightsError> {
        let data = self.data(name, &[rows, cols])?;
        Ok(Tensor::from_data(data, &self.device))
    }

    /// A transformers `nn.Linear` (`[out, in]`), transposed to `[in, out]`.
    fn linear(
        &mut self,
        prefix: &str,
        input: usize,
        output: usize,
        bias: bool,
    ) -> Result<Linear<B>, WeightsError> {
        let weight = self
            .matrix(&format!("{prefix}.weight"), output, input)?
            .transpose();
        // A contiguous [in, out] copy: matmuls read it row-major.
        let weight = Tensor::from_data(weight.into_data(), &self.device);
        let bias = if bias {
            Some(self.vector(&format!("{prefix}.bias"), output)?)
        } else {
            None
        };
        Ok(Linear { weight, bias })
    }
}

impl<B: Backend> Llama<B> {
    /// Builds the model from `weights`, which must hold exactly the tensors it needs.
    pub fn load(
        config: ModelConfig,
        mut weights: Weights,
        dtype: ComputeDtype,
        device: &B::Device,
    ) -> Result<Self, WeightsError> {
        let c = &config;
        let (h, q_dim, kv_dim) = (
            c.hidden_size,
            c.num_heads * c.head_dim,
            c.num_kv_heads * c.head_dim,
        );
        let mut load = Loader::<B> {
            weights: &mut weights,
            dtype,
            device: device.clone(),
        };
        let embed = load.matrix("model.embed_tokens.weight", c.vocab_size, h)?;
        let mut layers = Vec::with_capacity(c.num_layers);
        for i in 0..c.num_layers {
            let p = format!("model.layers.{i}");
            layers.push(Layer {
                input_norm: load.vector(&format!("{p}.input_layernorm.weight"), h)?,
                qkv: Linear::fused(vec![
                    load.linear(&format!("{p}.self_attn.q_proj"), h, q_dim, c.qkv_bias)?,
                    load.linear(&format!("{p}.self_attn.k_proj"), h, kv_dim, c.qkv_bias)?,
                    load.linear(&format!("{p}.self_attn.v_proj"), h, kv_dim, c.qkv_bias)?,
                ]),
                o: load.linear(&format!("{p}.self_attn.o_proj"), q_dim, h, c.o_bias)?,
                post_attention_norm: load
                    .vector(&format!("{p}.post_attention_layernorm.weight"), h)?,
                gate_up: Linear::fused(vec![
                    load.linear(
                        &format!("{p}.mlp.gate_proj"),
                        h,
                        c.intermediate_size,
                        c.mlp_bias,
                    )?,
                    load.linear(
                        &format!("{p}.mlp.up_proj"),
                        h,
                        c.intermediate_size,
                        c.mlp_bias,
                    )?,
                ]),
                down: load.linear(
                    &format!("{p}.mlp.down_proj"),
                    c.intermediate_size,
                    h,
                    c.mlp_bias,
                )?,
            });
        }
        let norm = load.vector("model.norm.weight", h)?;
        // Some tied checkpoints still carry a copy of the head; it is the same tensor.
        let lm_head = if c.tie_word_embeddings && !load.weights.contains("lm_head.weight") {
            embed.clone()
        } else {
            load.matrix("lm_head.weight", c.vocab_size, h)?
        };
        weights.finish()?;
        let inv_freq = inverse_frequencies(&config);
        Ok(Llama {
            config,
            dtype,
            device: device.clone(),
            embed,
            layers,
            norm,
            lm_head,
            inv_freq,
            kernels: Kernels::Burn,
        })
    }

    /// The LM head, `[vocab, hidden]`.
    pub fn lm_head(&self) -> &Tensor<B, 2> {
        &self.lm_head
    }

    /// Final hidden states `[rows * len, hidden]` of `input`.
    pub fn hidden_states(&self, input: &PackedBatch) -> Tensor<B, 2> {
        let (batch, len) = (input.rows, input.len);
        let visibility = self.visibility(input);
        let rope = self.rope_rows(input);
        let burn_rope = (self.kernels == Kernels::Burn).then(|| {
            let c = &self.config;
            (
                self.rope_tables(&rope, input, c.num_heads),
                self.rope_tables(&rope, input, c.num_kv_heads),
            )
        });
        let ids: Vec<i64> = input.ids.iter().map(|&id| id as i64).collect();
        let ids = Tensor::<B, 1, Int>::from_data(TensorData::new(ids, [batch * len]), &self.device);
        let mut x = self.embed.clone().select(0, ids);
        for layer in &self.layers {
            let h = self.rms_norm(x.clone(), &layer.input_norm);
            let a = match &burn_rope {
                Some((q_rope, k_rope)) => {
                    self.burn_attention(layer, h, input, q_rope, k_rope, &visibility)
                }
                None => self.host_attention(layer, h, input, &rope, &visibility),
            };
            x = x + layer.o.forward(a);

            let h = self.rms_norm(x.clone(), &layer.post_attention_norm);
            let gate_up = layer.gate_up.forward(h);
            let gated = match self.kernels {
                Kernels::Burn => {
                    let size = self.config.intermediate_size;
                    silu(gate_up.clone().narrow(1, 0, size)) * gate_up.narrow(1, size, size)
                }
                Kernels::Host => host_kernels::swiglu(gate_up),
            };
            x = x + layer.down.forward(gated);
        }
        self.rms_norm(x, &self.norm)
    }

    /// Self-attention with burn's operations: `[tokens, hidden]` → `[tokens, heads · dim]`.
    fn burn_attention(
        &self,
        layer: &Layer<B>,
        h: Tensor<B, 2>,
        input: &PackedBatch,
        (q_cos, q_sin): &(Tensor<B, 4>, Tensor<B, 4>),
        (k_cos, k_sin): &(Tensor<B, 4>, Tensor<B, 4>),
        visibility: &Visibility<B>,
    ) -> Tensor<B, 2> {
        let c = &self.config;
        let (batch, len) = (input.rows, input.len);
        // Each part of [tokens, (heads + 2 · kv) · dim] → [batch, len, heads, dim]. Rotary
        // positions are applied in this layout (contiguous, so element-wise work is cheap),
        // then heads move ahead of positions for attention.
        let qkv = layer.qkv.forward(h);
        let (q_dim, kv_dim) = (c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim);
        let split = |first: usize, n: usize| {
            qkv.clone()
                .narrow(1, first, n * c.head_dim)
                .reshape([batch, len, n, c.head_dim])
        };
        let q = rotate(split(0, c.num_heads), q_cos, q_sin);
        let k = rotate(split(q_dim, c.num_kv_heads), k_cos, k_sin);
        let v = split(q_dim + kv_dim, c.num_kv_heads);
        let q = q.swap_dims(1, 2);
        let k = self.repeat_kv(k).swap_dims(1, 2);
        let v = self.repeat_kv(v).swap_dims(1, 2);
        let mask = match visibility {
            Visibility::Mask(masked) => Some(masked.clone()),
            _ => None,
        };
        // A mask hides the later keys itself; the causal flag goes only without one. burn's
        // flash kernel (CubeCL, seen on wgpu) given both hides wrong keys past the first 64.
        let options = AttentionModuleOptions {
            scale: None,
            softcap: None,
            is_causal: mask.is_none(),
        };
        attention(q, k, v, mask, None, options)
            .swap_dims(1, 2)
            .reshape([batch * len, c.num_heads * c.head_dim])
    }

    /// Self-attention with host kernels: the rotation writes queries and keys straight into
    /// the heads-first layout the matmuls read, and the output is moved back in one pass.
    fn host_attention(
        &self,
        layer: &Layer<B>,
        h: Tensor<B, 2>,
        input: &PackedBatch,
        rope: &RopeRows,
        visibility: &Visibility<B>,
    ) -> Tensor<B, 2> {
        let c = &self.config;
        let (batch, len) = (input.rows, input.len);
        let rotation = host_kernels::Rotation {
            cos: &rope.cos,
            signed_sin: &rope.signed_sin,
            positions: &input.positions,
        };
        let [q, k, v] = host_kernels::split_qkv(
            layer.qkv.forward(h),
            [batch, len, c.head_dim],
            [c.num_heads, c.num_kv_heads],
            rotation,
        );
        host_kernels::heads_last(self.batched_attention(q, k, v, visibility))
    }

    /// Which keys each query sees, as the attention kernel wants it; built once per batch.
    fn visibility(&self, input: &PackedBatch) -> Visibility<B> {
        let window = self.config.sliding_window.unwrap_or(usize::MAX);
        if input.is_plain_causal(window) {
            return Visibility::Causal;
        }
        let hidden = input.hidden_keys(window);
        match self.kernels {
            Kernels::Burn => Visibility::Mask(burn_attention_mask(
                hidden,
                input,
                self.config.num_heads,
                &self.device,
            )),
            Kernels::Host => Visibility::Hidden(hidden),
        }
    }

    /// `softmax(q·kᵀ / √d) · v` over the keys each query sees, with batched matmuls, in
    /// blocks of sequences so the scores stay within [`SCORE_BLOCK_ELEMENTS`]. `k` and `v`
    /// keep their own head count: the query heads that share a key/value head (`h / groups`,
    /// as transformers' `repeat_kv`) are stacked along the rows of one matmul, so nothing is
    /// repeated. The scaling, the mask and the softmax are one host pass.
    fn batched_attention(
        &self,
        q: Tensor<B, 4>,
        k: Tensor<B, 4>,
        v: Tensor<B, 4>,
        visibility: &Visibility<B>,
    ) -> Tensor<B, 4> {
        let [batch, heads, len, d] = q.dims();
        let kv_heads = k.dims()[1];
        let groups = heads / kv_heads;
        let scale = 1.0 / (d as f32).sqrt();
        let per_sequence = (heads * len * len).max(1);
        let block = (SCORE_BLOCK_ELEMENTS / per_sequence).clamp(1, batch);
        let mut outputs = Vec::new();
        let mut start = 0;
        while start < batch {
            let n = block.min(batch - start);
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

    /// transformers' `LlamaRMSNorm`: the mean square is taken in f32, the weight applied in
    /// the compute dtype.
    fn rms_norm(&self, x: Tensor<B, 2>, weight: &Tensor<B, 1>) -> Tensor<B, 2> {
        let eps = self.config.rms_norm_eps;
        if self.kernels == Kernels::Host && self.dtype == ComputeDtype::F32 {
            let weight = weight
                .clone()
                .into_data()
                .into_vec::<f32>()
                .expect("f32 weights");
            return host_kernels::rms_norm(x, &weight, eps as f32);
        }
        let normed = if self.dtype == ComputeDtype::F32 {
            let rms = (x.clone().square().mean_dim(1) + eps).sqrt().recip();
            x * rms
        } else {
            let x32 = x.cast(DType::F32);
            let rms = (x32.clone().square().mean_dim(1) + eps).sqrt().recip();
            (x32 * rms).cast(self.float_dtype())
        };
        normed * weight.clone().unsqueeze_dim(0)
    }

    fn float_dtype(&self) -> DType {
        match self.dtype {
            ComputeDtype::F32 => DType::F32,
            ComputeDtype::Bf16 => DType::BF16,
            ComputeDtype::F16 => DType::F16,
        }
    }

    /// Each key/value head repeated for the query heads that share it (transformers'
    /// `repeat_kv`: query head `h` reads key/value head `h / groups`), in the
    /// `[batch, len, heads, dim]` layout: `[b, l, kv, d]` → `[b, l, kv * groups, d]`.
    fn repeat_kv(&self, t: Tensor<B, 4>) -> Tensor<B, 4> {
        let groups = self.config.num_heads / self.config.num_kv_heads;
        if groups == 1 {
            return t;
        }
        let [b, l, kv, d] = t.dims();
        t.unsqueeze_dim::<5>(3)
            .repeat_dim(3, groups)
            .reshape([b, l, kv * groups, d])
    }

    /// cos and sin of every token's position × frequency, computed in f32 as transformers
    /// does and then cast to the compute dtype, laid out as `[rows, len, heads, head_dim]` in
    /// full (element-wise products of same-shape contiguous tensors are the backends' fast
    /// path; a broadcast over positions is not). The sin table carries `rotate_half`'s sign:
    /// negative over the first half of the head dimension.
    fn rope_tables(
        &self,
        rope: &RopeRows,
        input: &PackedBatch,
        heads: usize,
    ) -> (Tensor<B, 4>, Tensor<B, 4>) {
        let d = self.config.head_dim;
        let (batch, len) = (input.rows, input.len);
        // Position rows → every head of every token.
        let spread = |rows: &[f32]| {
            let mut out = Vec::with_capacity(batch * len * heads * d);
            for &t in &input.positions {
                let t = t as usize;
                for _ in 0..heads {
                    out.extend_from_slice(&rows[t * d..(t + 1) * d]);
                }
            }
            Tensor::<B, 4>::from_data(TensorData::new(out, [batch, len, heads, d]), &self.device)
        };
        (spread(&rope.cos), spread(&rope.signed_sin))
    }

    /// cos and signed sin of every position up to the batch's largest, `[positions, dim]`.
    fn rope_rows(&self, input: &PackedBatch) -> RopeRows {
        let d = self.config.head_dim;
        let positions = input.positions.iter().max().map_or(0, |&p| p as usize + 1);
        let mut cos = Vec::with_capacity(positions * d);
        let mut signed_sin = Vec::with_capacity(positions * d);
        for t in 0..positions {
            for j in 0..d {
                // The angle is an f32 product, as in transformers; its cos and sin are
                // taken in f64 and rounded (closer to torch's f32 kernels than f32 libm).
                let angle = (t as f32 * self.inv_freq[j % (d / 2)]) as f64;
                let (sin_a, cos_a) = (angle.sin() as f32, angle.cos() as f32);
                cos.push(cos_a);
                signed_sin.push(if j < d / 2 { -sin_a } else { sin_a });
            }
        }
        RopeRows { cos, signed_sin }
    }
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

/// `x * cos + rotate_half(x) * sin` on `[batch, len, heads, dim]`, where `rotate_half`
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

/// The rotary inverse frequencies, scaled as the config says (transformers'
/// `_compute_default_rope_parameters` and `_compute_llama3_parameters`, in f32).
pub fn inverse_frequencies(config: &ModelConfig) -> Vec<f32> {
    let d = config.head_dim;
    let base = config.rope_theta as f32;
    // torch evaluates `base ** x` on f32 tensors as a correctly rounded f32 (a power taken in
    // f64 and rounded), then `1 / p` in f32; an f32 `powf` differs in the last bit for some
    // frequencies, a phase error that grows with the position.
    let plain: Vec<f32> = (0..d / 2)
        .map(|i| {
            let exponent = (2 * i) as f32 / d as f32;
            let power = (base as f64).powf(exponent as f64) as f32;
            1.0 / power
        })
        .collect();
    match config.rope_scaling {
        RopeScaling::None => plain,
        RopeScaling::Linear { factor } => plain.iter().map(|f| f / factor as f32).collect(),
        RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings: old_len,
        } => {
            let low_freq_wavelen = old_len / low_freq_factor;
            let high_freq_wavelen = old_len / high_freq_factor;
            plain
                .iter()
                .map(|&f| {
                    let f = f as f64;
                    let wavelen = 2.0 * std::f64::consts::PI / f;
                    let scaled = if wavelen > low_freq_wavelen {
                        f / factor
                    } else {
                        f
                    };
                    // transformers: not (wavelen < high) and not (wavelen > low); wavelengths are finite.
                    let medium = wavelen >= high_freq_wavelen && wavelen <= low_freq_wavelen;
                    if medium {
                        let smooth = (old_len / wavelen - low_freq_factor)
                            / (high_freq_factor - low_freq_factor);
                        ((1.0 - smooth) * scaled / factor + smooth * scaled) as f32
                    } else {
                        scaled as f32
                    }
                })
                .collect()
        }
    }
}
