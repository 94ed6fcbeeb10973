//! The bf16 code path that `--device cuda --dtype bf16` runs (weights and activations in bf16,
//! norms' statistics and the log-softmax in f32, Gemma's `1 + w` in f32), run by burn's kernels
//! on the CPU, against the transformers f32 goldens of every fixture model. It needs no GPU:
//! burn's CPU backend computes in bf16 too.
//!
//! Its first run on a GPU (2026-12-04) failed where this would have: a weight or rotary table
//! made without naming its dtype takes the device's default, and a float tensor of another
//! dtype than its operand's stops burn (`DTypeMismatch`).

use apscore_worker::model::{ComputeDtype, Packing, load_cpu_model_in};
use apscore_worker::scorer::{ScorerProgress, score_pairs};

mod common;
use common::*;

/// Relative to the sum: transformers itself in bf16 lands up to 0.2 % from its f32 sums on
/// these fixtures.
const BF16_RELATIVE: f64 = 0.01;

#[test]
fn bf16_on_burns_kernels_scores_within_bf16_rounding_of_transformers() {
    for name in MODELS.into_iter().chain(FAMILIES) {
        let (checkpoint, golden) = open_family(name);
        let (pairs, wanted) = golden_pairs(&checkpoint, &golden);
        let model = load_cpu_model_in(&checkpoint, ComputeDtype::Bf16).unwrap();
        for packing in [Packing::Separate, Packing::SharedPrefix] {
            let scores = score_pairs(
                model.as_ref(),
                &pairs,
                400,
                packing,
                &ScorerProgress::default(),
            );
            let mut worst = 0f64;
            for (i, (got, want)) in scores.iter().zip(&wanted).enumerate() {
                for (side, g) in [("chosen", got.chosen), ("rejected", got.rejected)] {
                    let expected = want[side].as_f64().unwrap();
                    let tokens = want[format!("{side}_tokens")].as_u64().unwrap();
                    assert_eq!(g.tokens, tokens, "{name} {packing:?} pair {i} {side}");
                    let relative = (g.sum - expected).abs() / expected.abs();
                    worst = worst.max(relative);
                    assert!(
                        relative < BF16_RELATIVE,
                        "{name} {packing:?} pair {i} {side}: {} in bf16 vs transformers {expected} in f32",
                        g.sum
                    );
                }
            }
            eprintln!("{name}, bf16, {packing:?}: largest relative difference {worst:.2e}");
        }
    }
}
