//! The scorer: tokenized pairs in, per-response log-probs out, on a thread of its own.
//!
//! The model lives on one dedicated OS thread (the forward pass is long, blocking work;
//! async tasks such as heartbeats and I/O never wait behind it). Shard tasks send it the
//! tokenized pairs of a batch of rows; it packs each pair into one row (the prompt once,
//! both responses after it: [`crate::model::packing`]), forms forward batches by length
//! (longest first, as many rows as fit `batch_tokens` padded tokens) and answers with one
//! [`PairScores`] per pair. With a reward model, the same thread scores each pair's two
//! conversations with it too ([`score_rewards`]: both in one row after their common prefix,
//! as the policy's pairs are packed).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::Instant;

use tokio::sync::oneshot;
use tracing::debug;

use crate::model::{
    Checkpoint, ComputeDtype, DeviceSpec, ModelError, PackedRow, Packing, ResponseScore,
    ScoringModel, load_model,
};
use crate::reward_tokenization::RewardPair;
use crate::tokenization::TokenizedPair;

/// Log-probs of both responses of a pair.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PairScores {
    pub chosen: ResponseScore,
    pub rejected: ResponseScore,
    /// The same under the reference model, when the job has one (DPO margin).
    pub reference: Option<(ResponseScore, ResponseScore)>,
    /// The reward model's scores of the chosen and the rejected conversation, when the job
    /// has one.
    pub reward: Option<(f64, f64)>,
}

/// How the model is run.
#[derive(Debug, Clone)]
pub struct ScorerOptions {
    pub device: DeviceSpec,
    pub dtype: ComputeDtype,
    /// Padded tokens per forward batch.
    pub batch_tokens: usize,
    /// How pairs become rows; `None`: each model's own choice ([`ScoringModel::packing`]).
    pub packing: Option<Packing>,
}

/// The scorer stopped (its thread ended or the model could not load).
#[derive(Debug, thiserror::Error)]
#[error("the scoring model is not available: {0}")]
pub struct ScorerGone(pub String);

struct Request {
    pairs: Arc<Vec<TokenizedPair>>,
    /// The same pairs as the reward model reads them (empty without one).
    rewards: Vec<RewardPair>,
    reply: oneshot::Sender<Scored>,
}

/// The answer to one request.
#[derive(Debug, Clone)]
pub struct Scored {
    /// One per pair, in request order.
    pub pairs: Vec<PairScores>,
    /// Tokens through the policy model for this request (a pair's shared prompt once, each
    /// response's own tokens), without and with batch padding.
    pub tokens: u64,
    pub padded_tokens: u64,
    /// Tokens through the reward model (a pair's shared start once).
    pub reward_tokens: u64,
}

/// What a call of [`score_pairs`] put through the model.
#[derive(Debug, Default)]
pub struct ScorerProgress {
    pub pairs: AtomicU64,
    /// Real (unpadded) tokens through the model.
    pub tokens: AtomicU64,
    /// Tokens including padding.
    pub padded_tokens: AtomicU64,
}

/// A handle to the scoring thread; cheap to clone.
#[derive(Clone)]
pub struct Scorer {
    sender: mpsc::Sender<Request>,
}

impl Scorer {
    /// Starts the scoring thread and loads the models on it — the policy, the reference model
    /// for the DPO margin, the reward model for the explicit margin; returns once they are
    /// loaded.
    pub fn start(
        checkpoint: Checkpoint,
        reference: Option<Checkpoint>,
        reward: Option<Checkpoint>,
        options: ScorerOptions,
    ) -> Result<Self, ModelError> {
        let (sender, receiver) = mpsc::channel::<Request>();
        let (loaded_tx, loaded_rx) = mpsc::channel::<Result<(), ModelError>>();
        std::thread::Builder::new()
            .name("apscore-scorer".into())
            .spawn(move || {
                let load = |c: &Checkpoint| load_model(c, options.device, options.dtype);
                let loaded = load(&checkpoint).and_then(|m| {
                    Ok((
                        m,
                        reference.as_ref().map(load).transpose()?,
                        reward.as_ref().map(load).transpose()?,
                    ))
                });
                let (model, reference, reward) = match loaded {
                    Ok(models) => {
                        let _ = loaded_tx.send(Ok(()));
                        models
                    }
                    Err(e) => {
                        let _ = loaded_tx.send(Err(e));
                        return;
                    }
                };
                while let Ok(request) = receiver.recv() {
                    let this_request = ScorerProgress::default();
                    let mut scores = score_pairs(
                        model.as_ref(),
                        &request.pairs,
                        options.batch_tokens,
                        options.packing.unwrap_or(model.packing()),
                        &this_request,
                    );
                    if let Some(reference) = &reference {
                        let quiet = ScorerProgress::default();
                        let reference_scores = score_pairs(
                            reference.as_ref(),
                            &request.pairs,
                            options.batch_tokens,
                            options.packing.unwrap_or(reference.packing()),
                            &quiet,
                        );
                        for (s, r) in scores.iter_mut().zip(reference_scores) {
                            s.reference = Some((r.chosen, r.rejected));
                        }
                    }
                    let mut reward_tokens = 0;
                    if let Some(reward) = &reward {
                        let rewards = score_rewards(
                            reward.as_ref(),
                            &request.rewards,
                            options.batch_tokens,
                            options.packing.unwrap_or(reward.packing()),
                        );
                        reward_tokens = rewards.tokens;
                        for (s, r) in scores.iter_mut().zip(rewards.scores) {
                            s.reward = Some(r);
                        }
                    }
                    let _ = request.reply.send(Scored {
                        pairs: scores,
                        tokens: this_request.tokens.load(Ordering::Relaxed),
                        padded_tokens: this_request.padded_tokens.load(Ordering::Relaxed),
                        reward_tokens,
                    });
                }
            })
            .expect("spawn the scoring thread");
        match loaded_rx.recv() {
            Ok(Ok(())) => Ok(Scorer { sender }),
            Ok(Err(e)) => Err(e),
            Err(_) => panic!("the scoring thread ended while loading the model"),
        }
    }

    /// Scores `pairs`, and with a reward model `rewards` (the same pairs as it reads them);
    /// waits for the model thread.
    pub async fn score(
        &self,
        pairs: Vec<TokenizedPair>,
        rewards: Vec<RewardPair>,
    ) -> Result<Scored, ScorerGone> {
        let (reply, answer) = oneshot::channel();
        self.sender
            .send(Request {
                pairs: Arc::new(pairs),
                rewards,
                reply,
            })
            .map_err(|_| ScorerGone("the scoring thread has stopped".into()))?;
        answer
            .await
            .map_err(|_| ScorerGone("the scoring thread stopped mid-batch (see the log)".into()))
    }
}

/// Scores every response of `pairs`, packed as `packing` says, in batches of rows of similar
/// length.
pub fn score_pairs(
    model: &dyn ScoringModel,
    pairs: &[TokenizedPair],
    batch_tokens: usize,
    packing: Packing,
    progress: &ScorerProgress,
) -> Vec<PairScores> {
    // Each row with the pair and the side (chosen = 0) of its first response.
    let rows: Vec<(PackedRow, usize, usize)> = match packing {
        Packing::SharedPrefix => pairs
            .iter()
            .enumerate()
            .map(|(i, p)| (PackedRow::pair(p), i, 0))
            .collect(),
        Packing::Separate => pairs
            .iter()
            .enumerate()
            .flat_map(|(i, p)| {
                [
                    (PackedRow::single(&p.chosen), i, 0),
                    (PackedRow::single(&p.rejected), i, 1),
                ]
            })
            .collect(),
    };
    let mut order: Vec<usize> = (0..rows.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(rows[i].0.len()));

    let empty = ResponseScore {
        sum: 0.0,
        tokens: 0,
    };
    let mut scores = vec![[empty; 2]; pairs.len()];
    for batch in length_buckets(&order, |i| rows[i].0.len(), batch_tokens) {
        let members: Vec<&PackedRow> = batch.iter().map(|&i| &rows[i].0).collect();
        let longest = members.iter().map(|r| r.len()).max().unwrap_or(0);
        let real: usize = members.iter().map(|r| r.len()).sum();
        let started = Instant::now();
        let scored = model.score(&members);
        // Per batch: a GPU's first batch of each new shape includes compiling (and tuning)
        // its kernels, which this shows apart from the steady state.
        debug!(
            rows = members.len(),
            len = longest,
            ms = started.elapsed().as_millis() as u64,
            "forward batch"
        );
        for (&i, responses) in batch.iter().zip(scored) {
            let (_, pair, first) = rows[i];
            for (side, score) in (first..).zip(responses) {
                scores[pair][side] = score;
            }
        }
        progress.tokens.fetch_add(real as u64, Ordering::Relaxed);
        progress
            .padded_tokens
            .fetch_add((longest * members.len()) as u64, Ordering::Relaxed);
    }
    progress
        .pairs
        .fetch_add(pairs.len() as u64, Ordering::Relaxed);
    scores
        .into_iter()
        .map(|[chosen, rejected]| PairScores {
            chosen,
            rejected,
            reference: None,
            reward: None,
        })
        .collect()
}

/// A reward model's scores of each pair's conversations, and the tokens it ran.
pub struct RewardScores {
    /// `(chosen, rejected)` per pair, in order.
    pub scores: Vec<(f64, f64)>,
    /// Tokens through the model (a pair's shared start once), without padding.
    pub tokens: u64,
}

/// Scores both conversations of every pair with a reward model, packed as `packing` says
/// (their common start once, or one row each), in batches of rows of similar length.
pub fn score_rewards(
    model: &dyn ScoringModel,
    pairs: &[RewardPair],
    batch_tokens: usize,
    packing: Packing,
) -> RewardScores {
    let head = model.config().head;
    // Each row with the pair and the side (chosen = 0) of its first conversation.
    let rows: Vec<(PackedRow, usize, usize)> = match packing {
        Packing::SharedPrefix => pairs
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let both = [p.chosen.clone(), p.rejected.clone()];
                (PackedRow::conversations(&both, &head), i, 0)
            })
            .collect(),
        Packing::Separate => pairs
            .iter()
            .enumerate()
            .flat_map(|(i, p)| {
                [(&p.chosen, 0), (&p.rejected, 1)].map(|(ids, side)| {
                    (
                        PackedRow::conversations(std::slice::from_ref(ids), &head),
                        i,
                        side,
                    )
                })
            })
            .collect(),
    };
    let mut order: Vec<usize> = (0..rows.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(rows[i].0.len()));
    let mut scores = vec![[0.0f64; 2]; pairs.len()];
    let mut tokens = 0u64;
    for batch in length_buckets(&order, |i| rows[i].0.len(), batch_tokens) {
        let members: Vec<&PackedRow> = batch.iter().map(|&i| &rows[i].0).collect();
        tokens += members.iter().map(|r| r.len() as u64).sum::<u64>();
        for (&i, rewards) in batch.iter().zip(model.rewards(&members)) {
            let (_, pair, first) = rows[i];
            for (side, reward) in (first..).zip(rewards) {
                scores[pair][side] = reward as f64;
            }
        }
    }
    RewardScores {
        scores: scores.into_iter().map(|[c, r]| (c, r)).collect(),
        tokens,
    }
}

/// Splits `order` (sorted longest first) into batches whose padded size
/// (`members × longest`) stays within `budget`; a sequence longer than the budget goes alone.
pub fn length_buckets(
    order: &[usize],
    len: impl Fn(usize) -> usize,
    budget: usize,
) -> Vec<Vec<usize>> {
    let mut batches: Vec<Vec<usize>> = Vec::new();
    let mut current: Vec<usize> = Vec::new();
    let mut longest = 0;
    for &i in order {
        let l = len(i);
        let new_longest = longest.max(l);
        if !current.is_empty() && new_longest * (current.len() + 1) > budget {
            batches.push(std::mem::take(&mut current));
            longest = 0;
        }
        longest = longest.max(l);
        current.push(i);
    }
    if !current.is_empty() {
        batches.push(current);
    }
    batches
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_respect_the_token_budget() {
        let lens = [100, 90, 50, 50, 10, 300];
        let mut order: Vec<usize> = (0..lens.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(lens[i]));
        let batches = length_buckets(&order, |i| lens[i], 200);
        assert_eq!(batches, vec![vec![5], vec![0, 1], vec![2, 3, 4]]);
        for b in &batches[1..] {
            let longest = b.iter().map(|&i| lens[i]).max().unwrap();
            assert!(longest * b.len() <= 200);
        }
    }
}
