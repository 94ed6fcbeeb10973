//! burn's CUDA backend on an NVIDIA GPU against the transformers goldens of every fixture
//! model: the policy families (Llama with grouped-query attention, Qwen2 with tied embeddings,
//! a bf16 Llama, Qwen3, Gemma 2 with soft-capping and windows, Mistral's window) and the
//! reward models, in f32 and bf16, a row per response and packed pairs.
//!
//! These need a GPU, which CI does not have: build them where Rust is and run them on a GPU
//! host, as `benches/gpu.sh` does:
//!
//! ```text
//! CUDARC_CUDA_VERSION=12080 cargo test --release -p apscore-worker --features cuda \
//!     --test cuda --no-run
//! <the test binary> --include-ignored --test-threads 1 --nocapture
//! ```
//!
//! Every comparison is printed before any is asserted, so one run on a borrowed GPU gives the
//! whole table even when something is off.
#![cfg(feature = "cuda")]

use apscore_worker::model::{
    ComputeDtype, DeviceSpec, Packing, ScoringModel, kernel_cache, load_model,
};
use apscore_worker::scorer::{PairScores, ScorerProgress, score_pairs, score_rewards};

mod common;
use common::*;

/// f32 on CUDA: burn may run f32 matrix products on the tensor cores in TF32 (a 10-bit
/// mantissa), so a sum over tens of tokens is held to 1e-3, not the CPU's 1e-4.
const F32_TOLERANCE: f64 = 1e-3;

/// bf16 weights and activations against transformers in f32, relative to the sum: transformers
/// itself in bf16 lands up to 0.2 % away on these fixtures (measured on the CPU;
/// `benches/gpu_parity.py` compares the two on one GPU).
const BF16_RELATIVE_TOLERANCE: f64 = 0.01;

fn on_cuda(
    name: &str,
    checkpoint: &apscore_worker::model::Checkpoint,
    dtype: ComputeDtype,
) -> Box<dyn ScoringModel> {
    // The kernel tuning where the command line keeps it, when a run names the folder.
    if let Some(dir) = std::env::var_os("APSCORE_KERNEL_CACHE") {
        kernel_cache::keep_in(std::path::Path::new(&dir)).unwrap();
    }
    load_model(checkpoint, DeviceSpec::Cuda(0), dtype).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// `difference` under `limit`; a NaN is not.
fn within(difference: f64, limit: f64) -> bool {
    difference < limit
}

/// One comparison's outcome: what, the largest absolute and relative differences, and the
/// first failure, if any.
struct Outcome {
    what: String,
    worst: f64,
    worst_relative: f64,
    failure: Option<String>,
}

fn compare_sums(
    what: String,
    scores: &[PairScores],
    wanted: &[serde_json::Value],
    dtype: ComputeDtype,
) -> Outcome {
    let mut outcome = Outcome {
        what,
        worst: 0.0,
        worst_relative: 0.0,
        failure: None,
    };
    for (i, (got, want)) in scores.iter().zip(wanted).enumerate() {
        for (side, g) in [("chosen", got.chosen), ("rejected", got.rejected)] {
            let expected = want[side].as_f64().unwrap();
            let tokens = want[format!("{side}_tokens")].as_u64().unwrap();
            let diff = (g.sum - expected).abs();
            let relative = diff / expected.abs().max(1e-9);
            outcome.worst = outcome.worst.max(diff);
            outcome.worst_relative = outcome.worst_relative.max(relative);
            let fails = match dtype {
                ComputeDtype::F32 => !within(diff, F32_TOLERANCE),
                _ => !within(relative, BF16_RELATIVE_TOLERANCE),
            };
            if outcome.failure.is_none() && (fails || g.tokens != tokens) {
                outcome.failure = Some(format!(
                    "pair {i} {side}: {} ({} tokens) vs transformers {expected} ({tokens} tokens)",
                    g.sum, g.tokens
                ));
            }
        }
    }
    if scores.len() != wanted.len() {
        outcome.failure = Some(format!("{} pairs scored of {}", scores.len(), wanted.len()));
    }
    outcome
}

/// Prints the outcome at once (a later panic must not take the earlier figures with it) and
/// keeps it for [`report`].
fn record(outcomes: &mut Vec<Outcome>, o: Outcome) {
    eprintln!(
        "{:<48} largest |Δ| {:9.2e}  relative {:9.2e}  {}",
        o.what,
        o.worst,
        o.worst_relative,
        if o.failure.is_some() { "FAILED" } else { "ok" }
    );
    outcomes.push(o);
}

/// Fails with every failure.
fn report(outcomes: &[Outcome]) {
    let failures: Vec<String> = outcomes
        .iter()
        .filter_map(|o| o.failure.as_ref().map(|f| format!("{}: {f}", o.what)))
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
#[ignore = "needs an NVIDIA GPU: see benches/gpu.sh"]
fn cuda_scores_every_policy_fixture_like_transformers() {
    let mut outcomes = Vec::new();
    for name in MODELS.into_iter().chain(FAMILIES) {
        let (checkpoint, golden) = open_family(name);
        let (pairs, wanted) = golden_pairs(&checkpoint, &golden);
        for dtype in [ComputeDtype::F32, ComputeDtype::Bf16] {
            let model = on_cuda(name, &checkpoint, dtype);
            for packing in [Packing::Separate, Packing::SharedPrefix] {
                // A small budget: several padded batches of mixed lengths.
                let scores = score_pairs(
                    model.as_ref(),
                    &pairs,
                    400,
                    packing,
                    &ScorerProgress::default(),
                );
                let what = format!("{name}, cuda {}, {packing:?}", dtype.name());
                record(&mut outcomes, compare_sums(what, &scores, &wanted, dtype));
            }
        }
    }
    report(&outcomes);
}

#[test]
#[ignore = "needs an NVIDIA GPU: see benches/gpu.sh"]
fn cuda_scores_every_reward_fixture_like_transformers() {
    let mut outcomes = Vec::new();
    for name in REWARD_MODELS {
        let (checkpoint, golden) = open(name);
        let cases = golden["cases"].as_array().unwrap();
        let pairs = reward_pairs(&golden);
        let model = on_cuda(name, &checkpoint, ComputeDtype::F32);
        for packing in [Packing::Separate, Packing::SharedPrefix] {
            let got = score_rewards(model.as_ref(), &pairs, 160, packing);
            let mut outcome = Outcome {
                what: format!("{name}, cuda f32, {packing:?}"),
                worst: 0.0,
                worst_relative: 0.0,
                failure: None,
            };
            for (i, ((chosen, rejected), case)) in got.scores.iter().zip(cases).enumerate() {
                for (side, value) in [("chosen", chosen), ("rejected", rejected)] {
                    let want = case[side].as_f64().unwrap();
                    let diff = (value - want).abs();
                    outcome.worst = outcome.worst.max(diff);
                    outcome.worst_relative =
                        outcome.worst_relative.max(diff / want.abs().max(1e-9));
                    if !within(diff, F32_TOLERANCE) && outcome.failure.is_none() {
                        outcome.failure =
                            Some(format!("pair {i} {side}: {value} vs transformers {want}"));
                    }
                }
            }
            record(&mut outcomes, outcome);
        }
    }
    report(&outcomes);
}
