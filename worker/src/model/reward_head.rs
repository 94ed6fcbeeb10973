//! Reward heads: where a reward model reads its final hidden states, and how ArmoRM's gated
//! head turns them into a score.
//!
//! - `*ForSequenceClassification` ([`Head::Score`]): transformers'
//!   `GenericForSequenceClassification` reads the `score` layer's logit at the last token whose
//!   id is not `pad_token_id` (the last token without a pad token; position 0 when every token
//!   is the pad token).
//! - ArmoRM (`LlamaForRewardModelWithGating`, [`Head::Gated`]), as its public
//!   `modeling_custom.py` does: the regression layer (one reward per objective) reads position
//!   `first index of pad_token_id − 1`, modulo the length (the last token when the pad token
//!   does not occur); the gating network reads the position where the last occurrence of
//!   Llama 3's `<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n` starts (the end of
//!   the prompt: a conversation without it cannot be scored); the score is
//!   `Σ_k gating_k · (rewards · transform)_k`, where the gating network is `n_hidden` ReLU layers
//!   and a last linear layer, softmax at a temperature, times `logit_scale`.

use super::config::Head;

/// ArmoRM's transformers class.
pub const ARMORM_ARCHITECTURE: &str = "LlamaForRewardModelWithGating";

/// The token ids ArmoRM's code searches for (its `token_pattern`, Llama 3's tokenizer):
/// `<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n`.
pub const ARMORM_GATING_PATTERN: [u32; 5] = [128009, 128006, 78191, 128007, 271];

/// ArmoRM's head settings from its config.json (`num_objectives`, `gating_hidden_dim`,
/// `gating_n_hidden`, `gating_temperature`; its code's defaults 19, 1024, 3 and 10).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GatingDesign {
    pub objectives: usize,
    pub hidden_dim: usize,
    pub n_hidden: usize,
    pub temperature: f64,
}

/// The positions of one conversation a reward head reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Readout {
    /// The score (or the rewards, for ArmoRM).
    pub score: usize,
    /// ArmoRM's gating network; equal to `score` for other heads.
    pub gating: usize,
}

/// Where `head` reads the conversation `ids`, or why it cannot.
pub fn readout(head: &Head, ids: &[u32]) -> Result<Readout, String> {
    match *head {
        Head::LanguageModel | Head::Score { .. } => {
            let pad = match *head {
                Head::Score { pad_token_id } => pad_token_id,
                _ => None,
            };
            let at = ids.iter().rposition(|&id| Some(id) != pad).unwrap_or(0);
            Ok(Readout {
                score: at,
                gating: at,
            })
        }
        Head::Gated { pad_token_id, .. } => {
            let first_pad = pad_token_id.and_then(|pad| ids.iter().position(|&id| id == pad));
            // `argmax(ids == pad) − 1`, modulo the length: argmax is 0 when there is no pad.
            let score = (first_pad.unwrap_or(0) + ids.len() - 1) % ids.len().max(1);
            let pattern = ARMORM_GATING_PATTERN.len();
            let gating = (0..=ids.len().saturating_sub(pattern))
                .rev()
                .find(|&j| ids[j..].starts_with(&ARMORM_GATING_PATTERN))
                .ok_or_else(|| {
                    "ArmoRM's gating reads the end of the prompt, marked by Llama 3's \
                     <|eot_id|><|start_header_id|>assistant<|end_header_id|> tokens, which the \
                     conversation does not contain"
                        .to_string()
                })?;
            Ok(Readout { score, gating })
        }
    }
}

/// One linear layer of the gating network, on the host: `[out, in]` weights and a bias.
#[derive(Debug, Clone)]
pub struct HostLinear {
    pub weight: Vec<f32>,
    pub bias: Vec<f32>,
    pub inputs: usize,
}

impl HostLinear {
    fn forward(&self, x: &[f32]) -> Vec<f32> {
        self.weight
            .chunks_exact(self.inputs)
            .zip(&self.bias)
            .map(|(row, b)| row.iter().zip(x).map(|(w, v)| w * v).sum::<f32>() + b)
            .collect()
    }
}

/// ArmoRM's gating network and reward transform, on the host (they are small: a few MB at
/// 8B).
#[derive(Debug, Clone)]
pub struct Gating {
    /// `n_hidden` layers followed by ReLU, then the output layer (one weight per objective).
    pub layers: Vec<HostLinear>,
    pub temperature: f32,
    pub logit_scale: f32,
    /// `[objectives, objectives]`, row-major.
    pub transform: Vec<f32>,
    pub objectives: usize,
}

impl Gating {
    /// The score from the objectives' `rewards` and the hidden state at the gating position.
    pub fn score(&self, rewards: &[f32], prompt: &[f32]) -> f32 {
        let last = self.layers.len() - 1;
        let mut x = prompt.to_vec();
        for (i, layer) in self.layers.iter().enumerate() {
            x = layer.forward(&x);
            if i < last {
                x.iter_mut().for_each(|v| *v = v.max(0.0));
            }
        }
        // softmax(x / temperature) · logit_scale
        let scaled: Vec<f32> = x.iter().map(|v| v / self.temperature).collect();
        let max = scaled.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let exp: Vec<f32> = scaled.iter().map(|v| (v - max).exp()).collect();
        let sum: f32 = exp.iter().sum();
        let k = self.objectives;
        (0..k)
            .map(|j| {
                let adjusted: f32 = (0..k).map(|i| rewards[i] * self.transform[i * k + j]).sum();
                exp[j] / sum * self.logit_scale * adjusted
            })
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readouts_follow_each_heads_code() {
        let score = Head::Score {
            pad_token_id: Some(9),
        };
        assert_eq!(readout(&score, &[1, 2, 9, 9]).unwrap().score, 1);
        assert_eq!(readout(&score, &[9, 9]).unwrap().score, 0);
        let gated = |pad| Head::Gated {
            pad_token_id: pad,
            gating: GatingDesign {
                objectives: 2,
                hidden_dim: 2,
                n_hidden: 1,
                temperature: 10.0,
            },
        };
        let p = ARMORM_GATING_PATTERN;
        // Two occurrences of the pattern: the last one counts; no pad: the last token.
        let ids: Vec<u32> = [&[1][..], &p, &[5], &p, &[6, 7]].concat();
        assert_eq!(
            readout(&gated(Some(9)), &ids).unwrap(),
            Readout {
                score: ids.len() - 1,
                gating: 7
            }
        );
        // ArmoRM reads before the *first* pad token, unlike the generic head.
        let padded: Vec<u32> = [&p[..], &[5, 9, 6, 9]].concat();
        assert_eq!(readout(&gated(Some(9)), &padded).unwrap().score, 5);
        assert_eq!(readout(&gated(None), &padded).unwrap().score, 8);
        assert!(
            readout(&gated(Some(9)), &[1, 2, 3])
                .unwrap_err()
                .contains("<|eot_id|>")
        );
    }
}
