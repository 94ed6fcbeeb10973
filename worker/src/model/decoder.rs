//! The decoder every family is: token embeddings, decoder layers, a final RMSNorm and the LM
//! head ([`super::layers`] for the parts, [`super::family`] for what each family changes), in
//! burn, faithful to transformers' modeling files.
//!
//! The LM head is not applied here: [`super::logprobs`] applies it (and the family's final
//! soft-capping) only at the positions that are scored.
//!
//! The input is a [`PackedBatch`]: rows right-padded to one length, each token with its own
//! rotary position and the tokens it may see (a causal sequence, or a pair's shared prompt
//! and its two branches: [`super::packing`]). The outputs at padded positions are never read.

use burn::tensor::Tensor;
use burn::tensor::backend::Backend;

use super::config::ModelConfig;
use super::layers::{DecoderLayer, Embedding, Loader, RmsNorm, Rotary};
use super::ops::{Kernels, Ops};
use super::packing::PackedBatch;
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
    /// `[vocab, hidden]`; the embedding table when the embeddings are tied.
    lm_head: Tensor<B, 2>,
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
        // Some tied checkpoints still carry a copy of the head; it is the same tensor.
        let lm_head = if c.tie_word_embeddings && !load.weights.contains("lm_head.weight") {
            embedding.table.clone()
        } else {
            load.matrix("lm_head.weight", c.vocab_size, c.hidden_size)?
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
            lm_head,
            rotary,
        })
    }

    /// The LM head, `[vocab, hidden]`.
    pub fn lm_head(&self) -> &Tensor<B, 2> {
        &self.lm_head
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
