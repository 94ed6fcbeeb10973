//! Log-probabilities of target tokens, computed only where a token is scored.
//!
//! `log π(y | h) = h·w_y − logsumexp_v(h·w_v)`. The logsumexp runs over the vocabulary in
//! chunks with a running maximum, so memory is `positions × chunk`, never
//! `batch × sequence × vocab`. Logits are computed in the compute dtype (as the LM head of
//! transformers does), soft-capped when the family caps them (`cap · tanh(x / cap)`, Gemma 2),
//! and reduced in f32.

use burn::tensor::backend::Backend;
use burn::tensor::{DType, Int, Tensor, TensorData};

use super::host_kernels;
use super::ops::Kernels;

/// Elements of one `[positions, vocab chunk]` logits block (64 MiB in f32).
pub(crate) const CHUNK_ELEMENTS: usize = 1 << 20;

/// Log-probs of `targets` at the rows `positions` of `hidden` (`[tokens, hidden]`), under
/// the LM head `head` (`[vocab, hidden]`), logits capped at `softcap` when given. Returns one
/// value per position, in order. With host kernels each logits chunk is read once, by
/// [`host_kernels::log_sum_exp_update`].
pub fn target_logprobs<B: Backend>(
    hidden: Tensor<B, 2>,
    head: &Tensor<B, 2>,
    positions: &[i64],
    targets: &[i64],
    kernels: Kernels,
    softcap: Option<f64>,
) -> Vec<f32> {
    let n = positions.len();
    if n == 0 {
        return Vec::new();
    }
    let device = hidden.device();
    let index =
        |v: &[i64]| Tensor::<B, 1, Int>::from_data(TensorData::new(v.to_vec(), [v.len()]), &device);
    let h = hidden.select(0, index(positions));
    let [vocab, _] = head.dims();

    // The target logits, as dot products in f32.
    let target_rows = head.clone().select(0, index(targets));
    let target_logit = (h.clone().cast(DType::F32) * target_rows.cast(DType::F32))
        .sum_dim(1)
        .reshape([n]);

    let chunk = (CHUNK_ELEMENTS / n).clamp(256, vocab.max(256)).min(vocab);
    // burn's kernels cap the logits in the compute dtype, as transformers' head does; the host
    // kernels (f32) cap them while reducing.
    let capped = |logits: Tensor<B, 2>| match softcap {
        Some(cap) if kernels == Kernels::Burn => logits.div_scalar(cap).tanh().mul_scalar(cap),
        _ => logits,
    };
    let chunk_logits = |start: usize, len: usize| {
        capped(
            h.clone()
                .matmul(head.clone().narrow(0, start, len).transpose()),
        )
        .cast(DType::F32)
    };
    if kernels == Kernels::Host {
        let cap = softcap.map(|c| c as f32);
        let mut running = vec![(f32::NEG_INFINITY, 0.0f32); n];
        let mut start = 0;
        while start < vocab {
            let len = chunk.min(vocab - start);
            host_kernels::log_sum_exp_update(chunk_logits(start, len), &mut running, cap);
            start += len;
        }
        let target = target_logit
            .into_data()
            .convert::<f32>()
            .to_vec::<f32>()
            .expect("f32 data");
        return target
            .iter()
            .map(|&t| cap.map_or(t, |cap| host_kernels::softcap(t, cap)))
            .zip(&running)
            .map(|(t, (max, sum))| t - (max + sum.ln()))
            .collect();
    }
    let target_logit = capped(target_logit.reshape([n, 1])).reshape([n]);
    let mut max: Option<Tensor<B, 1>> = None;
    let mut sum: Option<Tensor<B, 1>> = None;
    let mut start = 0;
    while start < vocab {
        let len = chunk.min(vocab - start);
        let logits = chunk_logits(start, len);
        let chunk_max = logits.clone().max_dim(1);
        let chunk_sum = (logits - chunk_max.clone()).exp().sum_dim(1).reshape([n]);
        let chunk_max = chunk_max.reshape([n]);
        (max, sum) = match (max, sum) {
            (Some(m), Some(s)) => {
                let new_max = m.clone().max_pair(chunk_max.clone());
                let s = s * (m - new_max.clone()).exp()
                    + chunk_sum * (chunk_max - new_max.clone()).exp();
                (Some(new_max), Some(s))
            }
            _ => (Some(chunk_max), Some(chunk_sum)),
        };
        start += len;
    }
    let lse = max.unwrap() + sum.unwrap().log();
    (target_logit - lse)
        .into_data()
        .convert::<f32>()
        .to_vec::<f32>()
        .expect("f32 data")
}
