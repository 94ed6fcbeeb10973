//! Fidelity against transformers: token ids (docs/models.md#tokenization) and per-response log-prob sums of the
//! fixture checkpoints must equal the goldens that `tests/fixtures/make_fixtures.py` computed
//! with transformers on the same files.

use std::sync::atomic::Ordering;

use apscore_worker::model::{
    Checkpoint, ComputeDtype, DeviceSpec, Kernels, Packing, load_cpu_model, load_model,
};
use apscore_worker::scorer::{ScorerProgress, score_pairs};

mod common;
use common::*;

#[test]
fn token_ids_equal_the_reference_preprocessing() {
    for name in MODELS {
        let (checkpoint, golden) = open(name);
        for case in golden["tokenization"].as_array().unwrap() {
            let params = params(case);
            let tokenizer = checkpoint.pair_tokenizer(params).unwrap();
            let rows = case["rows"].as_array().unwrap();
            let at = format!("{name}, {params:?}");
            let pairs = assert_tokenization_case(&at, &tokenizer, rows);
            let truncated = pairs.iter().filter(|p| p.truncated).count();
            if params.max_length == 128 {
                assert!(truncated > 0, "{name}: the short case truncates some pairs");
            }
        }
    }
}

#[test]
fn logprob_sums_equal_transformers_within_1e4() {
    for name in MODELS {
        let (checkpoint, golden) = open(name);
        let (pairs, wanted) = golden_pairs(&checkpoint, &golden);
        let model = load_model(&checkpoint, DeviceSpec::Cpu, ComputeDtype::F32).unwrap();
        // A small token budget: several padded batches of mixed lengths.
        let progress = ScorerProgress::default();
        let scores = score_pairs(
            model.as_ref(),
            &pairs,
            400,
            Packing::SharedPrefix,
            &progress,
        );
        assert_eq!(progress.pairs.load(Ordering::Relaxed), pairs.len() as u64);
        // The prompt once per pair: the same results as each response on its own row.
        let separate = ScorerProgress::default();
        let unshared = score_pairs(model.as_ref(), &pairs, 400, Packing::Separate, &separate);
        let saved =
            separate.tokens.load(Ordering::Relaxed) - progress.tokens.load(Ordering::Relaxed);
        assert!(saved > 0, "{name}: sharing the prompt runs fewer tokens");
        for (i, (shared, alone)) in scores.iter().zip(&unshared).enumerate() {
            for (side, a, b) in [
                ("chosen", shared.chosen, alone.chosen),
                ("rejected", shared.rejected, alone.rejected),
            ] {
                assert_eq!(a.tokens, b.tokens, "{name} pair {i} {side}");
                // Equal up to f32 rounding: other batch shapes, other partial sums.
                assert!(
                    (a.sum - b.sum).abs() <= 1e-5f64.max(1e-7 * b.sum.abs()),
                    "{name} pair {i} {side}: shared prefix {} vs separate {}",
                    a.sum,
                    b.sum
                );
            }
        }
        let worst = assert_equal_to_goldens(name, &scores, &wanted);
        eprintln!("{name}: largest difference from transformers {worst:.2e}");
    }
}

/// burn's own kernels (fused attention with each packed row's mask, burn's softmax, SiLU and
/// RMSNorm) are what runs on CUDA; on the CPU they check that code path against the goldens.
#[test]
fn burn_kernels_score_packed_pairs_like_transformers() {
    for name in MODELS {
        let (checkpoint, golden) = open(name);
        let (pairs, wanted) = golden_pairs(&checkpoint, &golden);
        let model = load_cpu_model(&checkpoint, Kernels::Burn).unwrap();
        // On CUDA these kernels get a row per response; the packed rows' masks are checked here.
        assert_eq!(model.packing(), Packing::Separate);
        let progress = ScorerProgress::default();
        let scores = score_pairs(
            model.as_ref(),
            &pairs,
            400,
            Packing::SharedPrefix,
            &progress,
        );
        let worst = assert_equal_to_goldens(&format!("{name}, burn kernels"), &scores, &wanted);
        eprintln!("{name}, burn kernels: largest difference from transformers {worst:.2e}");
    }
}

#[test]
fn a_checkpoint_with_an_extra_tensor_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let source = fixtures().join("models/qwen2-tied");
    for entry in std::fs::read_dir(&source).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
    }
    // Qwen2 has no o_proj bias: a checkpoint carrying one must not load silently.
    let config = std::fs::read_to_string(dir.path().join("config.json")).unwrap();
    std::fs::write(
        dir.path().join("config.json"),
        config.replace("Qwen2ForCausalLM", "LlamaForCausalLM"),
    )
    .unwrap();
    let checkpoint = Checkpoint::open_dir(dir.path()).unwrap();
    let err = load_model(&checkpoint, DeviceSpec::Cpu, ComputeDtype::F32)
        .err()
        .expect("q/k/v biases are not used by a plain Llama")
        .to_string();
    assert!(err.contains("q_proj.bias"), "{err}");
}
