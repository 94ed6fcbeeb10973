//! The parts of a decoder, as transformers' modeling files name them: [`Linear`],
//! [`RmsNorm`], [`Rotary`] positions, [`Attention`], [`Mlp`], the [`DecoderLayer`] around them
//! and the token [`Embedding`]. Each part loads its own weights from the checkpoint's names and
//! runs through the op layer ([`super::ops`]), whatever the kernels; what a part does comes from
//! the family's [`Design`].

use burn::tensor::backend::Backend;
use burn::tensor::{DType, Int, Tensor, TensorData};
use half::{bf16, f16};

use super::config::{ModelConfig, RopeScaling};
use super::family::{Activation, Design, NormStyle};
use super::ops::{AttentionSpec, Batch, NormWeights, Ops, RopeRows, float_dtype};
use super::packing::PackedBatch;
use super::weights::{Weights, WeightsError};
use apscore_core::model_settings::ComputeDtype;

/// Reads a tensor of `shape` out of the weights onto `device` (missing ones are recorded by
/// [`Weights`] and stand in as zeros until [`Weights::finish`] reports them all).
pub struct Loader<'w, B: Backend> {
    pub weights: &'w mut Weights,
    pub dtype: ComputeDtype,
    pub device: B::Device,
}

impl<B: Backend> Loader<'_, B> {
    /// A weight on the device in the compute dtype, named explicitly: burn's default dtype is
    /// the device's, fixed by whichever backend first made a tensor there (a process that
    /// loads an f32 model on a GPU and then a bf16 one would otherwise get f32 weights).
    fn upload<const D: usize>(&self, data: TensorData) -> Tensor<B, D> {
        Tensor::from_data(data, (&self.device, float_dtype(self.dtype)))
    }

    fn data(&mut self, name: &str, shape: &[usize]) -> Result<TensorData, WeightsError> {
        Ok(self
            .weights
            .take(name, shape, self.dtype)?
            .unwrap_or_else(|| TensorData::zeros::<f32, _>(shape.to_vec())))
    }

    fn vector(&mut self, name: &str, len: usize) -> Result<Tensor<B, 1>, WeightsError> {
        let data = self.data(name, &[len])?;
        Ok(self.upload(data))
    }

    /// The stored `[rows, cols]` matrix `name` as a contiguous `[cols, rows]` tensor.
    pub fn transposed(
        &mut self,
        name: &str,
        rows: usize,
        cols: usize,
    ) -> Result<Tensor<B, 2>, WeightsError> {
        let data = self
            .weights
            .take_transposed(name, [rows, cols], self.dtype)?
            .unwrap_or_else(|| TensorData::zeros::<f32, _>([cols, rows]));
        Ok(self.upload(data))
    }

    /// A tensor read into host memory in f32 (small heads computed on the CPU).
    pub fn host(&mut self, name: &str, shape: &[usize]) -> Result<Vec<f32>, WeightsError> {
        let data = self
            .weights
            .take(name, shape, ComputeDtype::F32)?
            .unwrap_or_else(|| TensorData::zeros::<f32, _>(shape.to_vec()));
        Ok(data.convert::<f32>().to_vec::<f32>().expect("f32 data"))
    }

    pub fn matrix(
        &mut self,
        name: &str,
        rows: usize,
        cols: usize,
    ) -> Result<Tensor<B, 2>, WeightsError> {
        let data = self.data(name, &[rows, cols])?;
        Ok(self.upload(data))
    }
}

/// A linear layer stored as `[in, out]` (transformers stores `[out, in]`).
pub struct Linear<B: Backend> {
    weight: Tensor<B, 2>,
    bias: Option<Tensor<B, 1>>,
}

impl<B: Backend> Linear<B> {
    /// A transformers `nn.Linear` named `prefix` (`prefix.weight`, `[out, in]`), transposed.
    pub fn load(
        load: &mut Loader<'_, B>,
        prefix: &str,
        [input, output]: [usize; 2],
        bias: bool,
    ) -> Result<Self, WeightsError> {
        // A contiguous [in, out] copy, transposed on the host on every core: matmuls read it
        // row-major.
        let weight = load.transposed(&format!("{prefix}.weight"), output, input)?;
        let bias = if bias {
            Some(load.vector(&format!("{prefix}.bias"), output)?)
        } else {
            None
        };
        Ok(Linear { weight, bias })
    }

    /// Layers that read the same input as one: their outputs side by side.
    pub fn fused(parts: Vec<Linear<B>>) -> Self {
        let bias = parts
            .iter()
            .map(|p| p.bias.clone())
            .collect::<Option<Vec<_>>>()
            .map(|b| Tensor::cat(b, 0));
        let weight = Tensor::cat(parts.into_iter().map(|p| p.weight).collect(), 1);
        Linear { weight, bias }
    }

    pub fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        let y = x.matmul(self.weight.clone());
        match &self.bias {
            Some(b) => y + b.clone().unsqueeze_dim(0),
            None => y,
        }
    }
}

/// RMSNorm over the last dimension, its weight kept as the model applies it.
pub struct RmsNorm<B: Backend> {
    /// `w` in the compute dtype, or `1 + w` in f32 ([`NormStyle::OnePlusWeight`]).
    tensor: Tensor<B, 1>,
    /// The same values in f32, for the host kernels.
    host: Vec<f32>,
    eps: f64,
    style: NormStyle,
}

impl<B: Backend> RmsNorm<B> {
    /// The norm weight `name` of `size`; Gemma's `1 + w` is formed in f32 from the weight in
    /// the compute dtype (transformers: `1.0 + self.weight.float()`).
    pub fn load(
        load: &mut Loader<'_, B>,
        name: &str,
        size: usize,
        eps: f64,
        style: NormStyle,
    ) -> Result<Self, WeightsError> {
        let data = load.data(name, &[size])?;
        let mut host = data
            .clone()
            .convert::<f32>()
            .into_vec::<f32>()
            .expect("f32 values");
        let tensor = match style {
            NormStyle::Weight => load.upload(data),
            NormStyle::OnePlusWeight => {
                host.iter_mut().for_each(|w| *w += 1.0);
                Tensor::from_data(
                    TensorData::new(host.clone(), [size]),
                    (&load.device, DType::F32),
                )
            }
        };
        Ok(RmsNorm {
            tensor,
            host,
            eps,
            style,
        })
    }

    fn weights(&self) -> NormWeights<'_, B> {
        NormWeights {
            tensor: &self.tensor,
            host: &self.host,
            eps: self.eps,
            style: self.style,
        }
    }

    pub fn forward(&self, x: Tensor<B, 2>, ops: Ops) -> Tensor<B, 2> {
        ops.rms_norm(x, self.weights())
    }
}

/// Rotary position embedding in transformers' `rotate_half` layout: inverse frequencies,
/// scaled as the config says, and the cos/sin tables of a batch's positions.
pub struct Rotary {
    inv_freq: Vec<f32>,
    head_dim: usize,
}

impl Rotary {
    pub fn new(config: &ModelConfig) -> Self {
        Rotary {
            inv_freq: inverse_frequencies(config),
            head_dim: config.head_dim,
        }
    }

    /// cos and signed sin of every position up to the batch's largest, `[positions, dim]`.
    pub fn tables(&self, input: &PackedBatch) -> RopeRows {
        let d = self.head_dim;
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

/// Self-attention: q, k and v fused into one projection (`[hidden, (heads + 2 · kv) · dim]`),
/// per-head q/k norms where the family has them, the output projection.
pub struct Attention<B: Backend> {
    qkv: Linear<B>,
    o: Linear<B>,
    qk_norm: Option<[RmsNorm<B>; 2]>,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    scale: f64,
    softcap: Option<f64>,
    window: Option<usize>,
}

impl<B: Backend> Attention<B> {
    /// Layer `layer`'s attention, under `prefix` (`model.layers.N.self_attn`).
    pub fn load(
        load: &mut Loader<'_, B>,
        prefix: &str,
        c: &ModelConfig,
        layer: usize,
    ) -> Result<Self, WeightsError> {
        let a = &c.design.attention;
        let (h, d) = (c.hidden_size, c.head_dim);
        let (q_dim, kv_dim) = (c.num_heads * d, c.num_kv_heads * d);
        let mut proj = |name: &str, size: usize| {
            Linear::load(load, &format!("{prefix}.{name}"), [h, size], a.qkv_bias)
        };
        let qkv = Linear::fused(vec![
            proj("q_proj", q_dim)?,
            proj("k_proj", kv_dim)?,
            proj("v_proj", kv_dim)?,
        ]);
        let o = Linear::load(load, &format!("{prefix}.o_proj"), [q_dim, h], a.o_bias)?;
        let qk_norm = if a.qk_norm {
            let mut norm = |name: &str| {
                let name = format!("{prefix}.{name}.weight");
                RmsNorm::load(load, &name, d, c.rms_norm_eps, c.design.norm)
            };
            Some([norm("q_norm")?, norm("k_norm")?])
        } else {
            None
        };
        Ok(Attention {
            qkv,
            o,
            qk_norm,
            heads: c.num_heads,
            kv_heads: c.num_kv_heads,
            head_dim: d,
            scale: a.scale,
            softcap: a.softcap,
            window: c.design.windows[layer],
        })
    }

    pub fn forward(&self, x: Tensor<B, 2>, batch: &Batch<B>, ops: Ops) -> Tensor<B, 2> {
        let spec = AttentionSpec {
            heads: self.heads,
            kv_heads: self.kv_heads,
            head_dim: self.head_dim,
            scale: self.scale,
            softcap: self.softcap,
            window: self.window,
            qk_norm: self
                .qk_norm
                .as_ref()
                .map(|[q, k]| [q.weights(), k.weights()]),
        };
        let heads = ops.attention(self.qkv.forward(x), &spec, batch);
        self.o.forward(heads)
    }
}

/// The gated MLP, `down(act(gate(x)) · up(x))`, gate and up fused into one projection
/// (`[hidden, 2 · intermediate]`).
pub struct Mlp<B: Backend> {
    gate_up: Linear<B>,
    down: Linear<B>,
    activation: Activation,
}

impl<B: Backend> Mlp<B> {
    /// The MLP under `prefix` (`model.layers.N.mlp`).
    pub fn load(
        load: &mut Loader<'_, B>,
        prefix: &str,
        c: &ModelConfig,
    ) -> Result<Self, WeightsError> {
        let (h, i, bias) = (c.hidden_size, c.intermediate_size, c.design.mlp_bias);
        let mut proj =
            |name: &str, shape| Linear::load(load, &format!("{prefix}.{name}"), shape, bias);
        Ok(Mlp {
            gate_up: Linear::fused(vec![proj("gate_proj", [h, i])?, proj("up_proj", [h, i])?]),
            down: proj("down_proj", [i, h])?,
            activation: c.design.activation,
        })
    }

    pub fn forward(&self, x: Tensor<B, 2>, ops: Ops) -> Tensor<B, 2> {
        self.down
            .forward(ops.gated(self.gate_up.forward(x), self.activation))
    }
}

/// One decoder layer: a norm before each block, and after it too where the family has one
/// (Gemma 2), each block's output added to the residual stream.
pub struct DecoderLayer<B: Backend> {
    input_norm: RmsNorm<B>,
    attention: Attention<B>,
    post_attention_norm: Option<RmsNorm<B>>,
    pre_mlp_norm: RmsNorm<B>,
    mlp: Mlp<B>,
    post_mlp_norm: Option<RmsNorm<B>>,
}

impl<B: Backend> DecoderLayer<B> {
    /// Layer `layer` (`model.layers.N`).
    pub fn load(
        load: &mut Loader<'_, B>,
        c: &ModelConfig,
        layer: usize,
    ) -> Result<Self, WeightsError> {
        let prefix = format!("model.layers.{layer}");
        let design: &Design = &c.design;
        let mut norm = |name: &str| {
            let name = format!("{prefix}.{name}.weight");
            RmsNorm::load(load, &name, c.hidden_size, c.rms_norm_eps, design.norm)
        };
        let input_norm = norm(design.norms.input)?;
        let post_attention_norm = design.norms.post_attention.map(&mut norm).transpose()?;
        let pre_mlp_norm = norm(design.norms.pre_mlp)?;
        let post_mlp_norm = design.norms.post_mlp.map(&mut norm).transpose()?;
        Ok(DecoderLayer {
            input_norm,
            attention: Attention::load(load, &format!("{prefix}.self_attn"), c, layer)?,
            post_attention_norm,
            pre_mlp_norm,
            mlp: Mlp::load(load, &format!("{prefix}.mlp"), c)?,
            post_mlp_norm,
        })
    }

    pub fn forward(&self, x: Tensor<B, 2>, batch: &Batch<B>, ops: Ops) -> Tensor<B, 2> {
        let h = self
            .attention
            .forward(self.input_norm.forward(x.clone(), ops), batch, ops);
        let x = x + after(&self.post_attention_norm, h, ops);
        let h = self
            .mlp
            .forward(self.pre_mlp_norm.forward(x.clone(), ops), ops);
        x + after(&self.post_mlp_norm, h, ops)
    }
}

/// A block's output through its post-norm, when the layer has one.
fn after<B: Backend>(norm: &Option<RmsNorm<B>>, h: Tensor<B, 2>, ops: Ops) -> Tensor<B, 2> {
    match norm {
        Some(norm) => norm.forward(h, ops),
        None => h,
    }
}

/// Token embeddings, multiplied by √hidden where the family scales them (Gemma).
pub struct Embedding<B: Backend> {
    /// `[vocab, hidden]`; also the LM head when the embeddings are tied.
    pub table: Tensor<B, 2>,
    scale: Option<f32>,
}

impl<B: Backend> Embedding<B> {
    pub fn load(load: &mut Loader<'_, B>, c: &ModelConfig) -> Result<Self, WeightsError> {
        let table = load.matrix("model.embed_tokens.weight", c.vocab_size, c.hidden_size)?;
        let scale = c
            .design
            .embedding_scale
            .then(|| embedding_scale(c.hidden_size, load.dtype));
        Ok(Embedding { table, scale })
    }

    pub fn forward(&self, ids: &[u32], device: &B::Device) -> Tensor<B, 2> {
        let ids: Vec<i64> = ids.iter().map(|&id| id as i64).collect();
        let n = ids.len();
        let ids = Tensor::<B, 1, Int>::from_data(TensorData::new(ids, [n]), device);
        let x = self.table.clone().select(0, ids);
        match self.scale {
            Some(scale) => x.mul_scalar(scale),
            None => x,
        }
    }
}

/// √hidden as transformers' Gemma applies it: a Python float made an f32 tensor, then cast to
/// the weights' dtype (√3584 is 59.75 in bf16); returned as the f32 of that value.
pub fn embedding_scale(hidden: usize, dtype: ComputeDtype) -> f32 {
    let scale = (hidden as f64).sqrt() as f32;
    match dtype {
        ComputeDtype::F32 => scale,
        ComputeDtype::Bf16 => bf16::from_f32(scale).to_f32(),
        ComputeDtype::F16 => f16::from_f32(scale).to_f32(),
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gemma_embedding_scale_rounds_to_the_compute_dtype_as_torch_does() {
        // torch.tensor(3584 ** 0.5).to(torch.bfloat16) == 59.75; 2304 → 48; 4608 → 68.
        assert_eq!(embedding_scale(3584, ComputeDtype::Bf16), 59.75);
        assert_eq!(embedding_scale(2304, ComputeDtype::Bf16), 48.0);
        assert_eq!(embedding_scale(4608, ComputeDtype::Bf16), 68.0);
        assert_eq!(
            embedding_scale(3584, ComputeDtype::F32),
            3584f64.sqrt() as f32
        );
    }
}
