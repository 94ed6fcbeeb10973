//! The decoder every family is: token embeddings, decoder layers, a final RMSNorm and the LM
//! head ([`super::layers`] for the parts, [`super::family`] for what each family changes), in
//! burn, faithful to transformers' modeling files.
//!
//! The head is not applied here: [`super::logprobs`] applies the LM head (and the family's
//! final soft-capping) only at the positions that are scored; a reward model's score head is
//! applied only at each sequence's readout position ([`Decoder::rewards`]).
//!
//! The input is a [`PackedBatch`]: rows right-padded to one length, each token with its own
//! rotary position and the tokens it may see (a causal sequence, or a pair's shared prompt
//! and its two branches: [`super::packing`]). The outputs at padded positions are never read.

use burn::tensor::Tensor;
use burn::tensor::backend::Backend;

use burn::tensor::{DType, Int, TensorData};

use super::config::{Head, ModelConfig};
use super::layers::{DecoderLayer, Embedding, Loader, RmsNorm, Rotary};
use super::ops::{Kernels, Ops};
use super::packing::PackedBatch;
use super::reward_head::{Gating, GatingDesign, HostLinear};
use super::weights::{Weights, WeightsError};
use apscore_core::model_settings::ComputeDtype;

/// A loaded model on one device.
pub struct Decoder<B: Backend> {
    pub config: ModelConfig,
    pub device: B::Device,
    /// The kernels and dtype every part runs with.
    pub ops: Ops,
    embedding: Embedding<B>,
    layers: Vec<DecoderLayer<B>>,
    norm: RmsNorm<B>,
    /// The LM head `[vocab, hidden]` (the embedding table when the embeddings are tied), or a
    /// reward model's score head `[1, hidden]` (ArmoRM's regression layer
    /// `[objectives, hidden]`).
    head: Tensor<B, 2>,
    /// ArmoRM's gating network, on the host.
    gating: Option<Gating>,
    rotary: Rotary,
}

impl<B: Backend> Decoder<B> {
    /// Builds the model from `weights`, which must hold exactly the tensors it needs; it runs
    /// with burn's kernels until told otherwise.
    pub fn load(
        config: ModelConfig,
        mut weights: Weights,
        dtype: ComputeDtype,
        device: &B::Device,
    ) -> Result<Self, WeightsError> {
        let c = &config;
        let mut load = Loader::<B> {
            weights: &mut weights,
            dtype,
            device: device.clone(),
        };
        let embedding = Embedding::load(&mut load, c)?;
        let layers = (0..c.num_layers)
            .map(|i| DecoderLayer::load(&mut load, c, i))
            .collect::<Result<Vec<_>, _>>()?;
        let norm = RmsNorm::load(
            &mut load,
            "model.norm.weight",
            c.hidden_size,
            c.rms_norm_eps,
            c.design.norm,
        )?;
        let mut gating = None;
        let head = match c.head {
            // transformers' `score` layer: `nn.Linear(hidden, labels, bias=False)`.
            Head::Score { .. } => load.matrix("score.weight", 1, c.hidden_size)?,
            Head::Gated { gating: g, .. } => {
                gating = Some(load_gating(&mut load, g, c.hidden_size)?);
                load.matrix("regression_layer.weight", g.objectives, c.hidden_size)?
            }
            // Some tied checkpoints still carry a copy of the head; it is the same tensor.
            Head::LanguageModel
                if c.tie_word_embeddings && !load.weights.contains("lm_head.weight") =>
            {
                embedding.table.clone()
            }
            Head::LanguageModel => load.matrix("lm_head.weight", c.vocab_size, c.hidden_size)?,
        };
        weights.finish()?;
        let rotary = Rotary::new(&config);
        Ok(Decoder {
            config,
            device: device.clone(),
            ops: Ops {
                kernels: Kernels::Burn,
                dtype,
            },
            embedding,
            layers,
            norm,
            head,
            gating,
            rotary,
        })
    }

    /// The LM head, `[vocab, hidden]` (a reward model's is its score head, `[1, hidden]`).
    pub fn lm_head(&self) -> &Tensor<B, 2> {
        &self.head
    }

    /// A reward model's scores: the score head applied to the final hidden states at
    /// `positions` (indices into the batch's `rows × len` tokens), in the compute dtype as
    /// transformers' `score` layer runs, returned in f32.
    pub fn rewards(&self, input: &PackedBatch, readouts: &[(i64, i64)]) -> Vec<f32> {
        if readouts.is_empty() {
            return Vec::new();
        }
        let hidden = self.hidden_states(input);
        let rows = |positions: Vec<i64>| {
            let index = Tensor::<B, 1, Int>::from_data(
                TensorData::new(positions.clone(), [positions.len()]),
                &self.device,
            );
            hidden.clone().select(0, index)
        };
        let to_host = |t: Tensor<B, 2>| {
            t.cast(DType::F32)
                .into_data()
                .convert::<f32>()
                .to_vec::<f32>()
                .expect("f32 data")
        };
        let scores = to_host(
            rows(readouts.iter().map(|r| r.0).collect()).matmul(self.head.clone().transpose()),
        );
        let Some(gating) = &self.gating else {
            return scores;
        };
        // ArmoRM: one reward per objective at the score position, mixed by the gating
        // network from the hidden state at the gating position.
        let prompt = to_host(rows(readouts.iter().map(|r| r.1).collect()));
        let h = self.config.hidden_size;
        scores
            .chunks_exact(gating.objectives)
            .zip(prompt.chunks_exact(h))
            .map(|(rewards, prompt)| gating.score(rewards, prompt))
            .collect()
    }

    /// Final hidden states `[rows * len, hidden]` of `input`.
    pub fn hidden_states(&self, input: &PackedBatch) -> Tensor<B, 2> {
        let c = &self.config;
        let batch = self.ops.batch(
            input,
            self.rotary.tables(input),
            [c.num_heads, c.num_kv_heads, c.head_dim],
            &c.design.windows,
            &self.device,
        );
        let mut x = self.embedding.forward(&input.ids, &self.device);
        for layer in &self.layers {
            x = layer.forward(x, &batch, self.ops);
        }
        self.norm.forward(x, self.ops)
    }
}

/// ArmoRM's gating network and reward transform (`gating.layers.N`, `gating.logit_scale`,
/// `reward_transform_matrix`), in f32 on the host.
fn load_gating<B: Backend>(
    load: &mut Loader<'_, B>,
    g: GatingDesign,
    hidden: usize,
) -> Result<Gating, WeightsError> {
    let mut layers = Vec::with_capacity(g.n_hidden + 1);
    let mut inputs = hidden;
    for i in 0..=g.n_hidden {
        let outputs = if i == g.n_hidden {
            g.objectives
        } else {
            g.hidden_dim
        };
        layers.push(HostLinear {
            weight: load.host(&format!("gating.layers.{i}.weight"), &[outputs, inputs])?,
            bias: load.host(&format!("gating.layers.{i}.bias"), &[outputs])?,
            inputs,
        });
        inputs = outputs;
    }
    Ok(Gating {
        layers,
        temperature: g.temperature as f32,
        logit_scale: load.host("gating.logit_scale", &[1])?[0],
        transform: load.host("reward_transform_matrix", &[g.objectives, g.objectives])?,
        objectives: g.objectives,
    })
}
