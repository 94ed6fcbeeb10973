//! Shared-prefix packing: the rows the forward pass runs, and what it scores in them.
//!
//! The chosen and rejected sequences of a pair start with the same prompt. Run separately
//! (as the reference pipeline does), the prompt goes through the model twice. A packed row
//! holds their common prefix once, then the rest of the chosen sequence, then the rest of the
//! rejected one:
//!
//! ```text
//! ids        p0 p1 p2 p3 | c4 c5 c6 | r4 r5
//! positions   0  1  2  3 |  4  5  6 |  4  5     (each branch continues the prefix)
//! branch      0  0  0  0 |  1  1  1 |  2  2
//! ```
//!
//! A token sees the tokens before it in the row that are in the prefix or in its own branch
//! (and within the sliding window, by position). With the same positions and the same visible
//! tokens, every hidden state equals the one the separate sequence would give — the packed
//! row computes the same log-probs with the prompt's share of the work done once.
//!
//! A [`PackedBatch`] right-pads rows to a common length; padding sees everything before it
//! (so no attention row is empty) and nothing real sees padding.

use super::config::Head;
use super::reward_head::{self, Readout};
use crate::tokenization::{TokenizedPair, TokenizedResponse};

/// How the pairs become rows of the forward pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Packing {
    /// One row per pair: the common prefix once, then each response (the CPU's default).
    SharedPrefix,
    /// One row per response, the prompt in each (the reference pipeline's layout: what runs
    /// on CUDA, and what the tests compare sharing against).
    Separate,
}

/// The branch of a padding token.
const PADDING: u8 = u8::MAX;

/// One row of the forward pass.
#[derive(Debug, Clone, PartialEq)]
pub struct PackedRow {
    pub ids: Vec<u32>,
    /// The rotary position of each token.
    pub positions: Vec<u32>,
    /// 0 for the shared prefix, then 1, 2 … for each response's own tokens.
    pub branch: Vec<u8>,
    /// What is scored: `(row index of the hidden state that predicts it, target token,
    /// response)`, responses numbered from 0 in the order they were packed.
    pub scored: Vec<ScoredToken>,
    /// How many responses the row scores.
    pub responses: usize,
    /// For a reward model, the row indices each sequence is read at (one per sequence).
    pub readouts: Vec<Readout>,
}

/// Where each sequence's tokens are in a packed row.
struct BranchIndex {
    /// Tokens in the shared prefix.
    common: usize,
    /// The row index where each sequence's own branch starts.
    starts: Vec<usize>,
}

impl BranchIndex {
    /// The row index of position `t` of sequence `k`: itself in the prefix, in the sequence's
    /// branch after it.
    fn at(&self, k: usize, t: usize) -> usize {
        if t < self.common {
            t
        } else {
            self.starts[k] + t - self.common
        }
    }
}

/// A token whose log-prob is taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScoredToken {
    /// The row index whose logits score `target` (the token before it in its sequence).
    pub at: usize,
    pub target: u32,
    pub response: usize,
}

impl PackedRow {
    /// Both responses of `pair` in one row, their common prefix once.
    pub fn pair(pair: &TokenizedPair) -> Self {
        Self::shared(&[&pair.chosen, &pair.rejected])
    }

    /// One response in a row of its own (no sharing: what the reference pipeline runs).
    pub fn single(response: &TokenizedResponse) -> Self {
        Self::shared(&[response])
    }

    /// `responses` in one row after the longest prefix common to all of them, each answer
    /// token scored.
    fn shared(responses: &[&TokenizedResponse]) -> Self {
        let sequences: Vec<Vec<u32>> = responses
            .iter()
            .map(|r| r.prompt.iter().chain(&r.answer).copied().collect())
            .collect();
        let (mut row, index) = Self::branches(&sequences);
        for (k, response) in responses.iter().enumerate() {
            for (j, &target) in response.answer.iter().enumerate() {
                // The logits at position t score token t + 1 (docs/models.md#tokenization, step 6).
                let t = response.prompt.len() + j;
                debug_assert!(t > 0, "a scored token needs a token before it");
                row.scored.push(ScoredToken {
                    at: index.at(k, t - 1),
                    target,
                    response: k,
                });
            }
        }
        row
    }

    /// Whole conversations for a reward model with `head`, in one row after their common
    /// prefix; each read where the head reads it ([`reward_head::readout`]). The conversations
    /// must be readable (the reward tokenizer rejects those that are not).
    pub fn conversations(sequences: &[Vec<u32>], head: &Head) -> Self {
        let (mut row, index) = Self::branches(sequences);
        row.readouts = sequences
            .iter()
            .enumerate()
            .map(|(k, s)| {
                let at = reward_head::readout(head, s).expect("checked when tokenized");
                Readout {
                    score: index.at(k, at.score),
                    gating: index.at(k, at.gating),
                }
            })
            .collect();
        row
    }

    /// The row of `sequences`: their common prefix, then the rest of each as its own branch;
    /// nothing scored yet.
    fn branches(sequences: &[Vec<u32>]) -> (Self, BranchIndex) {
        let common = common_prefix(sequences);
        let mut row = PackedRow {
            ids: sequences[0][..common].to_vec(),
            positions: (0..common as u32).collect(),
            branch: vec![0; common],
            scored: Vec::new(),
            responses: sequences.len(),
            readouts: Vec::new(),
        };
        let mut starts = Vec::with_capacity(sequences.len());
        for (k, sequence) in sequences.iter().enumerate() {
            starts.push(row.ids.len());
            let rest = &sequence[common..];
            row.ids.extend_from_slice(rest);
            row.positions
                .extend((common..sequence.len()).map(|p| p as u32));
            row.branch
                .extend(std::iter::repeat_n(k as u8 + 1, rest.len()));
        }
        (row, BranchIndex { common, starts })
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

/// The length of the prefix all `sequences` share.
fn common_prefix(sequences: &[Vec<u32>]) -> usize {
    let first = &sequences[0];
    sequences[1..].iter().fold(first.len(), |common, s| {
        first
            .iter()
            .zip(s)
            .take(common)
            .take_while(|(a, b)| a == b)
            .count()
    })
}

/// Rows right-padded to one length, flattened for the model.
#[derive(Debug, Clone)]
pub struct PackedBatch {
    pub rows: usize,
    pub len: usize,
    /// `rows × len` token ids (padding: 0).
    pub ids: Vec<u32>,
    /// `rows × len` rotary positions.
    pub positions: Vec<u32>,
    branch: Vec<u8>,
}

impl PackedBatch {
    pub fn new(rows: &[&PackedRow]) -> Self {
        let len = rows.iter().map(|r| r.len()).max().unwrap_or(0);
        let mut batch = PackedBatch {
            rows: rows.len(),
            len,
            ids: vec![0; rows.len() * len],
            positions: Vec::with_capacity(rows.len() * len),
            branch: Vec::with_capacity(rows.len() * len),
        };
        for (r, row) in rows.iter().enumerate() {
            batch.ids[r * len..r * len + row.len()].copy_from_slice(&row.ids);
            batch.positions.extend(&row.positions);
            // Padding continues the positions (any value works: nothing reads it).
            let last = row.positions.last().map_or(0, |&p| p + 1);
            batch
                .positions
                .extend((0..(len - row.len()) as u32).map(|p| last + p));
            batch.branch.extend(&row.branch);
            batch
                .branch
                .extend(std::iter::repeat_n(PADDING, len - row.len()));
        }
        batch
    }

    /// Whether token `i` of `row` attends to token `j` of the same row: `j` comes no later
    /// in the row, is in the shared prefix or in `i`'s branch, and (with a sliding window)
    /// is fewer than `window` positions back. Padding sees every token before it.
    pub fn sees(&self, row: usize, i: usize, j: usize, window: usize) -> bool {
        let at = row * self.len;
        if j > i {
            return false;
        }
        let (bi, bj) = (self.branch[at + i], self.branch[at + j]);
        if bi == PADDING {
            return true;
        }
        let (pi, pj) = (self.positions[at + i], self.positions[at + j]);
        (bj == 0 || bj == bi) && ((pi - pj) as usize) < window
    }

    /// Which keys each query may not see, `[rows, len, len]` (row, query, key), true =
    /// hidden: the negation of [`PackedBatch::sees`].
    pub fn hidden_keys(&self, window: usize) -> Vec<bool> {
        let mut hidden = Vec::with_capacity(self.rows * self.len * self.len);
        for r in 0..self.rows {
            for i in 0..self.len {
                hidden.extend((0..self.len).map(|j| !self.sees(r, i, j, window)));
            }
        }
        hidden
    }

    /// Whether every row is a plain causal sequence (no branches, no window to apply): the
    /// model can then share one causal mask between all rows.
    pub fn is_plain_causal(&self, window: usize) -> bool {
        self.branch.iter().all(|&b| b == 0 || b == PADDING) && self.len <= window
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(prompt: &[u32], answer: &[u32]) -> TokenizedResponse {
        TokenizedResponse {
            prompt: prompt.to_vec(),
            answer: answer.to_vec(),
        }
    }

    #[test]
    fn a_pair_shares_its_prompt_and_scores_each_answer_from_its_own_branch() {
        let pair = TokenizedPair {
            chosen: response(&[1, 2, 3], &[7, 8, 9]),
            rejected: response(&[1, 2, 3], &[7, 5]),
            truncated: false,
        };
        let row = PackedRow::pair(&pair);
        // The answers agree on their first token: it is part of the prefix.
        assert_eq!(row.ids, vec![1, 2, 3, 7, 8, 9, 5]);
        assert_eq!(row.positions, vec![0, 1, 2, 3, 4, 5, 4]);
        assert_eq!(row.branch, vec![0, 0, 0, 0, 1, 1, 2]);
        let scored: Vec<(usize, u32, usize)> = row
            .scored
            .iter()
            .map(|s| (s.at, s.target, s.response))
            .collect();
        // Chosen: 7 from index 2, 8 from 3, 9 from 4. Rejected: 7 from 2, 5 from 3 (its 7).
        assert_eq!(
            scored,
            vec![(2, 7, 0), (3, 8, 0), (4, 9, 0), (2, 7, 1), (3, 5, 1)]
        );
    }

    #[test]
    fn prompts_cut_differently_share_only_what_is_equal() {
        let pair = TokenizedPair {
            chosen: response(&[1, 2, 3], &[4]),
            rejected: response(&[1, 9], &[4]),
            truncated: true,
        };
        let row = PackedRow::pair(&pair);
        assert_eq!(row.ids, vec![1, 2, 3, 4, 9, 4]);
        assert_eq!(row.positions, vec![0, 1, 2, 3, 1, 2]);
        assert_eq!(row.scored[1].at, 4);
    }

    #[test]
    fn conversations_are_read_at_their_last_token_that_is_not_padding() {
        // pad = 9: the chosen ends with two pad tokens (a template that ends turns with the
        // pad-equal EOS), the rejected is a prefix of the chosen's start.
        let chosen = vec![1, 2, 3, 4, 9, 9];
        let rejected = vec![1, 2, 5];
        let head = |pad| Head::Score { pad_token_id: pad };
        let at = |row: &PackedRow| row.readouts.iter().map(|r| r.score).collect::<Vec<_>>();
        let row = PackedRow::conversations(&[chosen.clone(), rejected.clone()], &head(Some(9)));
        assert_eq!(row.ids, vec![1, 2, 3, 4, 9, 9, 5]);
        assert_eq!(row.positions, vec![0, 1, 2, 3, 4, 5, 2]);
        assert_eq!(at(&row), vec![3, 6]);
        assert!(row.scored.is_empty());
        // Without a pad token: the last token; a sequence inside the prefix is read there.
        let row = PackedRow::conversations(&[chosen.clone(), chosen[..3].to_vec()], &head(None));
        assert_eq!(at(&row), vec![5, 2]);
        // Only pad tokens: transformers' argmax of zeros reads position 0.
        let row = PackedRow::conversations(&[vec![9, 9], vec![9]], &head(Some(9)));
        assert_eq!(at(&row), vec![0, 0]);
    }

    #[test]
    fn visibility_follows_branches_padding_and_the_window() {
        let pair = TokenizedPair {
            chosen: response(&[1, 2], &[3, 4]),
            rejected: response(&[1, 2], &[5]),
            truncated: false,
        };
        let long = PackedRow::pair(&pair);
        let short = PackedRow::single(&response(&[1], &[2]));
        let batch = PackedBatch::new(&[&long, &short]);
        assert_eq!(batch.len, 5);
        let unlimited = usize::MAX;
        // Row 0: [1 2 | 3 4 | 5]. The rejected token sees the prompt, not the chosen branch.
        assert!(batch.sees(0, 4, 1, unlimited));
        assert!(!batch.sees(0, 4, 2, unlimited));
        assert!(!batch.sees(0, 4, 3, unlimited));
        assert!(batch.sees(0, 3, 2, unlimited));
        assert!(!batch.sees(0, 2, 3, unlimited));
        // Row 1: [1 2 pad pad pad]: real tokens never see padding, padding sees all before it.
        assert!(!batch.sees(1, 1, 2, unlimited));
        assert!(batch.sees(1, 4, 0, unlimited));
        assert!(batch.sees(1, 4, 3, unlimited));
        // A window of 2 positions: the chosen token at position 3 no longer sees position 1.
        assert!(!batch.sees(0, 3, 1, 2));
        assert!(batch.sees(0, 3, 2, 2));
        assert!(!batch.is_plain_causal(unlimited));
        let plain = PackedBatch::new(&[&short]);
        assert!(plain.is_plain_causal(unlimited));
        assert!(!plain.is_plain_causal(1));
    }
}
